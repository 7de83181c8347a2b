//! Bytes as a whole bundle file, read from memory the way `ferry-apply verify` and `inspect` read
//! one: canonical framing of the head, every signature, the manifest (decoded whether or not the
//! signatures hold, as `inspect` does), signers, the apply script, every frame's header, hash and
//! padding, the end of the archive. Must never panic, whatever the bytes.
#![no_main]

use bundle::container::Reader;
use bundle::{sig, Limits, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Default limits, but small enough that a lying size field cannot make one run allocate
    // gigabytes (the applier bounds the same way, with larger numbers).
    let limits = Limits { max_manifest_bytes: 1 << 20, max_frame_bytes: 1 << 20, ..Limits::default() };
    let mut r = Reader::new(data, limits.clone());
    let Ok((mb, sb)) = r.head() else { return };
    let keys = sig::verify_signatures(&mb, &sb, limits.max_signatures);
    let Ok(m) = Manifest::decode(&mb, &limits) else { return };
    if let Ok(keys) = &keys {
        let _ = sig::check_signers(&m, keys);
    }
    let _ = bundle::script::validate(&m);
    for i in 0..m.frames.len() {
        if r.check_frame(&m.frames, i).is_err() {
            return;
        }
    }
    let _ = r.end();
});
