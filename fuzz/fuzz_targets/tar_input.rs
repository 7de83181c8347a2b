//! Arbitrary bytes as a tar input of `ferry-build` (`--new x.tar`): the builder's own member
//! reader (`builder::tarstream`: 512-byte blocks, pax records cut by length, GNU long names,
//! global headers, old GNU sparse maps), the pax attribute records (`builder::paxattr`: xattrs,
//! ACL text, SELinux) and the sparse maps, then the tree the archive describes. The same bytes
//! also go to the pax record parser and the ACL text parser directly. Must never panic; every
//! refusal is an error value.
#![no_main]

use builder::image::scan_tar;
use builder::progress::Progress;
use builder::scan::ContentStore;
use builder::xattr::Carry;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::{Arc, OnceLock};

fn store() -> Option<Arc<ContentStore>> {
    static STORE: OnceLock<Option<Arc<ContentStore>>> = OnceLock::new();
    STORE.get_or_init(|| ContentStore::new_in(&std::env::temp_dir()).ok().map(Arc::new)).clone()
}

fuzz_target!(|data: &[u8]| {
    let _ = builder::pax::records(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = builder::paxattr::acl_from_text(text, false);
        let _ = builder::paxattr::acl_from_text(text, true);
    }
    if let Some(st) = store() {
        let _ = scan_tar(data, Path::new("fuzz.tar"), st, false, &Carry::Auto, &Progress::silent());
    }
});
