//! Bytes as a whole bundle file, read from memory the way `ferry-apply verify` and `inspect` read
//! one: canonical framing of the head, the signature member (canonical, sorted, unique) and every
//! signature over the bundle id, a trust policy's view of the signers, the manifest (decoded
//! whether or not the signatures hold, as `inspect` does), the apply script, every frame's header,
//! hash and padding, the end of the archive. Must never panic, whatever the bytes.
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
    if let Ok(keys) = sig::verify_signatures(&mb, &sb, limits.max_signatures) {
        let policy = sig::TrustPolicy { keys: keys.iter().take(1).cloned().collect(), threshold: 2, retired: vec![] };
        let _ = policy.check(&keys).map_err(|e| e.to_string());
    }
    let Ok(m) = Manifest::decode(&mb, &limits) else { return };
    let _ = bundle::script::validate(&m);
    for i in 0..m.frames.len() {
        if r.check_frame(&m.frames, i).is_err() {
            return;
        }
    }
    let _ = r.end();
});
