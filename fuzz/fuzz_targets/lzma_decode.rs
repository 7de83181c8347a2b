//! Arbitrary bytes as the frame of `Lzma` pieces → `bundle::lzma::Decoder`, the applier's decoder
//! of LZMA2 frames (bundle-format.md §5.2), read the way staging and `verify` read a frame: at most
//! `decoded + 1` bytes. Input layout: 1 byte filter (index into `Bcj::ALL`, modulo), 1 byte
//! dictionary log (12..=22), 4 bytes declared decoded size (u32 LE, capped at 16 MiB), then the
//! stream. Must never panic, and the dictionary the decoder allocates (at most the declared size)
//! must decode every stream exactly as the declared dictionary does: whenever either decodes the
//! whole stream to at most the declared size, the other gives the same bytes.
#![no_main]

use bundle::lzma::{Bcj, Decoder};
use bundle::Limits;
use libfuzzer_sys::fuzz_target;
use std::io::Read;

/// Decode with `Decoder::new(.., decoded)`: `Some(bytes)` if the whole stream decodes to at most
/// `cap` bytes.
fn run(stream: &[u8], f: Bcj, dict_log: u8, decoded: u64, cap: u64) -> Option<Vec<u8>> {
    let d = Decoder::new(stream, f, dict_log, decoded, &Limits::default()).ok()?;
    let mut out = Vec::new();
    d.take(cap + 1).read_to_end(&mut out).ok()?;
    (out.len() as u64 <= cap).then_some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[f, dict, a, b, c, d], stream)) = data.split_first_chunk::<6>() else {
        return;
    };
    let f = Bcj::ALL[usize::from(f) % Bcj::ALL.len()];
    let dict_log = 12 + dict % 11;
    let declared = u64::from(u32::from_le_bytes([a, b, c, d])).min(16 << 20);
    // As the applier: dictionary min(2^dict_log, max(declared, 4096)).
    let small = run(stream, f, dict_log, declared, declared);
    // The full declared dictionary (a declared size far beyond it).
    let full = run(stream, f, dict_log, u64::MAX, declared);
    assert_eq!(small, full, "the bounded dictionary changed the result");
});
