//! Bytes as the two files offline signing carries (bundle-format.md §3.5), read the way
//! `ferry-build sign-request` and `sign --import` read them: a signing request (size bound,
//! canonical CBOR, format, bundle id = BLAKE3 of the manifest member, message = prefix and id,
//! then the manifest member decoded and the script validated), and the same bytes as a detached
//! signature file (one line, hex fields, the signature checked strictly). Must never panic; a
//! request that decodes re-encodes to exactly the input bytes.
#![no_main]

use bundle::request::{DetachedSignature, SigningRequest};
use bundle::{Limits, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_manifest_bytes: 1 << 20, ..Limits::default() };
    if let Ok(r) = SigningRequest::decode(data, &limits) {
        assert_eq!(r.encode(), data, "a request that decodes is canonical");
        assert_eq!(Manifest::id(&r.manifest), r.id);
        if let Ok(m) = Manifest::decode(&r.manifest, &limits) {
            let _ = bundle::script::validate(&m);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = DetachedSignature::parse(text) {
            let _ = d.verify();
            assert_eq!(DetachedSignature::parse(&d.to_text()).ok(), Some(d));
        }
    }
});
