//! Arbitrary bytes as a channel index (bundle-format.md §18.2), read the way `ferry-apply update`
//! reads one from a server or a stick: `Index::decode` (size bound, canonical CBOR, structural
//! rules), then `Index::verify` against a fixed trust policy, at a fixed time, with and without a
//! record of an earlier accepted index. Must never panic; an index that decodes re-encodes to
//! exactly the input bytes; a verified index's record is what it accepted.
#![no_main]

use bundle::index::{Accepted, Index};
use bundle::sig::{PublicKey, SecretKey, TrustPolicy};
use bundle::Hash;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(index) = Index::decode(data) else { return };
    assert_eq!(index.encode(), data, "an index that decodes is canonical");
    // A fixed key, and the keys that signed the release part (so a seed with valid signatures
    // gets past the policy to the binding, expiry and rollback checks).
    let mut keys = vec![SecretKey::from_seed([7; 32]).public()];
    keys.extend(index.release_sigs.entries().iter().filter_map(|(k, _)| PublicKey::from_bytes(*k).ok()));
    let policy = TrustPolicy { keys, threshold: 1, retired: vec![] };
    let last = Accepted { channel: index.release.channel.clone(), release_seq: 2, release: Hash([1; 32]), fresh_seq: 3 };
    for (now, l) in [(1_800_000_000, None), (index.fresh.issued, None), (index.fresh.issued, Some(&last))] {
        if let Ok(v) = index.verify(&policy, now, 3600, l) {
            assert_eq!(v.accepted.release_seq, index.release.seq);
            assert_eq!(v.accepted.fresh_seq, index.fresh.seq);
        }
    }
    if let Ok(a) = Accepted::decode(data) {
        assert_eq!(a.encode(), data, "an accepted record that decodes is canonical");
    }
});
