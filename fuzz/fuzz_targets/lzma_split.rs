//! Arbitrary bytes as the frame of a `BsdiffSplit` piece → `bundle::lzma::SplitDecoder`, the
//! applier's decoder of a split bsdiff frame's three LZMA2 streams (bundle-format.md §5.1), read
//! as staging reads it: at most `decoded + 1` bytes. Input layout: 1 byte dictionary log
//! (12..=22), four u16 LE: the record headers' decoded and stored sizes, the copied literals'
//! decoded and stored sizes; a u32 LE declared decoded size of the whole frame (capped at
//! 16 MiB); then the frame. Must never panic; what it returns starts with exactly the two
//! declared streams' lengths when it decodes past them.
#![no_main]

use bundle::lzma::SplitDecoder;
use bundle::Limits;
use libfuzzer_sys::fuzz_target;
use std::io::Read;

fuzz_target!(|data: &[u8]| {
    let Some((head, frame)) = data.split_first_chunk::<13>() else {
        return;
    };
    let dict_log = 12 + head[0] % 11;
    let u16_at = |i: usize| u64::from(u16::from_le_bytes([head[1 + 2 * i], head[2 + 2 * i]]));
    let parts = [(u16_at(0), u16_at(1)), (u16_at(2), u16_at(3))];
    let declared = u64::from(u32::from_le_bytes([head[9], head[10], head[11], head[12]])).min(16 << 20);
    let Ok(d) = SplitDecoder::new(frame, dict_log, parts, declared, &Limits::default()) else {
        return;
    };
    let mut out = Vec::new();
    if d.take(declared + 1).read_to_end(&mut out).is_ok() {
        // The whole frame decoded: its first two streams gave exactly their lengths, and the
        // rest came from the third.
        assert!(out.len() as u64 >= parts[0].0 + parts[1].0, "first streams shorter than declared");
    }
});
