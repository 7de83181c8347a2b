//! Bytes → `Manifest::decode` (CBOR, canonical encoding, structural checks), then the script
//! validator on whatever decodes. Must never panic, and a manifest that decodes re-encodes to
//! exactly the input bytes.
#![no_main]

use bundle::{Limits, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(m) = Manifest::from_cbor(data, &limits) {
        assert_eq!(m.to_cbor(), data, "decoded manifest is not canonical");
        let _ = bundle::script::validate(&m);
    }
});
