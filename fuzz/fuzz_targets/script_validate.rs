//! Arbitrary bytes decoded straight into a `Manifest` with ciborium (no canonical-encoding check,
//! so the fuzzer reaches odd structures quickly), then `Manifest::check` and, if that passes,
//! `script::validate` and the hook globs against every step's path. Must never panic.
#![no_main]

use bundle::{Limits, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = ciborium::from_reader::<Manifest, _>(data) else { return };
    if m.check(&Limits::default()).is_err() {
        return;
    }
    let _ = bundle::script::validate(&m);
    for h in &m.hooks {
        for s in &m.script {
            let _ = bundle::glob::matches(h.glob.as_bytes(), s.path.as_bytes());
        }
    }
});
