//! Bytes → `Manifest::from_cbor` (the bounded CBOR pre-pass of `bundle::scan`, CBOR, canonical
//! encoding, structural checks), under the default limits and under tight ones, then the script
//! validator on whatever decodes. Must never panic; a manifest that decodes re-encodes to exactly
//! the input bytes, decodes the same through the streaming path of the manifest member
//! (`Manifest::decode` of the packed bytes), and a manifest refused under the default limits is
//! refused under tighter ones too. An encrypted bundle's outer manifest (`sealed`, §4.10) goes
//! through the same decoder; opening it with a key the fuzzer cannot know must fail, not panic.
#![no_main]

use bundle::{Limits, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    // Small enough that the fuzzer reaches every bound of the pre-pass with small inputs.
    let tight = Limits {
        max_manifest_decoded: 4096,
        max_manifest_items: 400,
        max_manifest_depth: 11,
        max_manifest_string: 256,
        max_signatures: 2,
        max_entries: 8,
        max_frames: 4,
        max_pieces: 4,
        max_hooks: 2,
        max_rotation_keys: 2,
        max_recipients: 2,
        ..Limits::default()
    };
    let tight_result = Manifest::from_cbor(data, &tight);
    match Manifest::from_cbor(data, &limits) {
        Ok(m) => {
            assert_eq!(m.to_cbor(), data, "decoded manifest is not canonical");
            let member = bundle::manifest::pack(data);
            assert_eq!(Manifest::decode(&member, &limits).ok().as_ref(), Some(&m), "streaming decode differs");
            let _ = bundle::script::validate(&m);
            // An encrypted bundle's outer manifest: opening it with a wrong key must fail cleanly.
            if m.sealed.is_some() {
                let key = bundle::seal::PayloadKey::from_bytes([0; 32]);
                assert!(bundle::seal::open(&m, &key, &limits).is_err(), "opened with an all-zero key");
            }
        }
        Err(_) => assert!(tight_result.is_err(), "refused under the default limits, accepted under tighter ones"),
    }
});
