//! Arbitrary data → `bundle::deflate::Encoder`, the encoder the applier runs over the data of
//! re-created gzip files (bundle-format.md §5.3), which comes from untrusted bundles. Input
//! layout: 1 byte flavor (bit 7) and level (low bits, mod 9, + 1), 1 byte write size (+ 1),
//! then the data. Must never panic; the stream must not depend on how the data was cut into
//! writes, and must inflate back to the data.
#![no_main]

use bundle::deflate::{deflate, Encoder, Flavor};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};

fuzz_target!(|input: &[u8]| {
    let Some((&[how, step], data)) = input.split_first_chunk::<2>() else { return };
    let flavor = if how & 0x80 != 0 { Flavor::Gzip } else { Flavor::Zlib };
    let level = (how & 0x7f) % 9 + 1;
    let Ok(whole) = deflate(data, flavor, level) else { panic!("level {level} refused") };
    let mut enc = match Encoder::new(Vec::new(), flavor, level) {
        Ok(e) => e,
        Err(_) => panic!("level {level} refused"),
    };
    for chunk in data.chunks(usize::from(step) + 1) {
        if enc.write_all(chunk).is_err() {
            panic!("write to a Vec failed");
        }
    }
    let Ok(cut) = enc.finish() else { panic!("finish into a Vec failed") };
    assert!(cut == whole, "output depends on the write size");
    let mut back = Vec::new();
    let inflated = flate2::read::DeflateDecoder::new(&whole[..]).read_to_end(&mut back);
    assert!(inflated.is_ok() && back == data, "stream does not inflate back to the data");
});
