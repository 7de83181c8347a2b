//! OLD files listed by tag under one aggregate digest, and unchanged NEW files without a digest
//! of their own (bundle-format.md §4.2, §4.3): what `Manifest::tag_old_files` lists by tag, the
//! aggregate's definition, the encoding and the structural rules `Manifest::check` enforces.

use bundle::{
    BundlePath, Content, Entry, Hash, Kind, Limits, Manifest, Meta, OldEntry, OldKind, Op, Step, Tag, TaggedDigest,
    FORMAT_VERSION,
};
use proptest::prelude::*;

fn p(s: &str) -> BundlePath {
    BundlePath::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn meta(mode: u32, mtime: i64) -> Meta {
    Meta { mode, mtime_ns: mtime, ..Meta::default() }
}

fn empty() -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        version: 2,
        base: Some(bundle::Base { version: Some(1), tree: Hash([9; 32]) }),
        channel: "stable".into(),
        created: 1_700_000_000,
        expires: None,
        entries: vec![],
        old: vec![],
        tagged_digest: None,
        frames: vec![],
        script: vec![],
        hooks: vec![],
        rotation: None,
        xattr_namespaces: vec![],
        xattr_sets: vec![],
        sealed: None,
    }
}

/// What happens to one OLD file of [`delta`].
#[derive(Clone, Copy, Debug)]
enum Change {
    /// Only its mtime changes (`SetMeta`, content `Unchanged`).
    Mtime,
    /// It gains the set-user-ID bit (a permission-raising `SetMeta`).
    Setuid,
    /// It is replaced by an empty file.
    Emptied,
    /// It is deleted.
    Deleted,
}

/// A delta over OLD files `f000`, `f001`, ... of the given sizes (content digest `[i; 32]`),
/// each changed as given, the NEW ones marked `config` where asked. Sorted, valid, untagged.
fn delta(files: &[(Change, bool, u64)]) -> Manifest {
    let mut m = empty();
    for (i, &(change, config, size)) in files.iter().enumerate() {
        let path = p(&format!("f{i:03}"));
        let hash = Hash([i as u8; 32]);
        m.old.push(OldEntry { path: path.clone(), meta: meta(0o755, 1), kind: OldKind::File { size, hash } });
        let (new_meta, content, op) = match change {
            Change::Mtime => (meta(0o755, 2), Content::Unchanged, Op::SetMeta),
            Change::Setuid => (meta(0o4755, 1), Content::Unchanged, Op::SetMeta),
            Change::Emptied => (meta(0o755, 1), Content::Empty, Op::Place),
            Change::Deleted => {
                m.script.push(Step { op: Op::Delete, path });
                continue;
            }
        };
        let (size, hash) = match content {
            Content::Unchanged => (size, None),
            _ => (0, Some(Hash::of(b""))),
        };
        let kind = Kind::File { size, hash, content, config, extents: None, gzip: None };
        m.entries.push(Entry { path: path.clone(), meta: new_meta, kind });
        m.script.push(Step { op, path });
    }
    // Phases: creations and metadata first, deletions after (§6 rule 1).
    m.script.sort_by_key(|s| s.op == Op::Delete);
    m
}

/// The aggregate as bundle-format.md §4.3 writes it, computed independently of `TaggedDigest`.
fn spec_digest(records: &[(&[u8], u64, [u8; 32])]) -> Hash {
    let mut input = Vec::new();
    for (path, size, hash) in records {
        input.extend_from_slice(&(path.len() as u64).to_le_bytes());
        input.extend_from_slice(path);
        input.extend_from_slice(&size.to_le_bytes());
        input.extend_from_slice(hash);
    }
    Hash(blake3::derive_key("ferry tagged files v1", &input))
}

fn refused(m: &Manifest, needle: &str) {
    match m.check(&Limits::default()) {
        Ok(()) => panic!("accepted, expected {needle:?}"),
        Err(e) => assert!(e.to_string().contains(needle), "{e} lacks {needle:?}"),
    }
}

#[test]
fn tag_old_files_tags_all_but_config_and_raising_files() {
    let mut m = delta(&[
        (Change::Mtime, false, 10),
        (Change::Setuid, false, 11),
        (Change::Emptied, false, 12),
        (Change::Deleted, false, 13),
        (Change::Mtime, true, 14),
        (Change::Emptied, true, 15),
    ]);
    m.check(&Limits::default()).unwrap_or_else(|e| panic!("{e}"));
    m.tag_old_files();
    let kinds: Vec<&str> = m
        .old
        .iter()
        .map(|o| match o.kind {
            OldKind::Tagged { .. } => "tagged",
            _ => "full",
        })
        .collect();
    // The setuid change is made on a copy checked against the OLD digest; config files are
    // compared path by path (conffile rule).
    assert_eq!(kinds, ["tagged", "full", "tagged", "tagged", "full", "full"]);
    assert_eq!(m.old[0].kind, OldKind::Tagged { size: 10, tag: Tag([0; 8]) });
    assert_eq!(m.old[3].kind, OldKind::Tagged { size: 13, tag: Tag([3; 8]) });
    let want = spec_digest(&[(b"f000", 10, [0; 32]), (b"f002", 12, [2; 32]), (b"f003", 13, [3; 32])]);
    assert_eq!(m.tagged_digest, Some(want));
    m.check(&Limits::default()).unwrap_or_else(|e| panic!("{e}"));
    bundle::script::validate(&m).unwrap_or_else(|e| panic!("{e}"));
    // The unchanged file's digest comes from its `old` entry where the applier needs one.
    assert_eq!(m.file_hash(&m.entries[1]), Some(Hash([1; 32])));
    assert_eq!(m.file_hash(&m.entries[0]), None);
    // Idempotent.
    let again = {
        let mut x = m.clone();
        x.tag_old_files();
        x
    };
    assert_eq!(again, m);
}

#[test]
fn nothing_to_tag_leaves_no_digest() {
    let mut m = delta(&[(Change::Setuid, false, 1), (Change::Mtime, true, 2)]);
    m.tag_old_files();
    assert_eq!(m.tagged_digest, None);
    assert!(m.old.iter().all(|o| matches!(o.kind, OldKind::File { .. })));
    m.check(&Limits::default()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn owner_and_capability_changes_keep_the_full_digest() {
    // Owners: raising when the applier applies owners, which the builder cannot know.
    let mut m = delta(&[(Change::Mtime, false, 5)]);
    m.entries[0].meta.uid = 1000;
    m.tag_old_files();
    assert!(matches!(m.old[0].kind, OldKind::File { .. }));
    // A new file capability.
    let mut m = delta(&[(Change::Mtime, false, 5)]);
    m.xattr_namespaces = vec!["security.capability".into()];
    m.xattr_sets = vec![vec![bundle::Xattr { name: b"security.capability".to_vec(), value: vec![1, 2] }]];
    m.entries[0].meta.xattrs = Some(0);
    m.check(&Limits::default()).unwrap_or_else(|e| panic!("{e}"));
    m.tag_old_files();
    assert!(matches!(m.old[0].kind, OldKind::File { .. }));
    // Clearing a set-id bit lowers permissions: taggable.
    let mut m = delta(&[(Change::Mtime, false, 5)]);
    m.old[0].meta.mode = 0o4755;
    m.tag_old_files();
    assert!(matches!(m.old[0].kind, OldKind::Tagged { .. }));
}

#[test]
fn check_refuses_inconsistent_tags_and_digests() {
    let base = {
        let mut m = delta(&[(Change::Mtime, false, 10), (Change::Setuid, false, 11), (Change::Mtime, true, 12)]);
        m.tag_old_files();
        m
    };
    base.check(&Limits::default()).unwrap_or_else(|e| panic!("{e}"));
    let tagged = |size| OldKind::Tagged { size, tag: Tag([7; 8]) };

    let mut m = base.clone();
    m.tagged_digest = None;
    refused(&m, "OLD files listed by tag, but no tagged_digest");

    let mut m = delta(&[(Change::Setuid, false, 1)]);
    m.tagged_digest = Some(Hash([1; 32]));
    refused(&m, "tagged_digest set, but no OLD file is listed by tag");

    let mut m = base.clone();
    m.old[1].kind = tagged(11);
    refused(&m, "f001: listed by tag, but its metadata change raises permissions");

    let mut m = base.clone();
    m.old[2].kind = tagged(12);
    refused(&m, "f002: listed by tag, but the NEW file is a config file");

    // An unchanged file's size must be its OLD file's, tagged or not.
    let mut m = base.clone();
    m.old[0].kind = tagged(99);
    refused(&m, "f000: unchanged content but OLD differs");

    // Digests: none for unchanged content, one for everything else.
    let mut m = base.clone();
    if let Kind::File { hash, .. } = &mut m.entries[0].kind {
        *hash = Some(Hash([0; 32]));
    }
    refused(&m, "f000: unchanged content with a digest of its own");
    let mut m = delta(&[(Change::Emptied, false, 3)]);
    if let Kind::File { hash, .. } = &mut m.entries[0].kind {
        *hash = None;
    }
    refused(&m, "f000: file without a digest");
}

#[test]
fn tagged_files_serve_as_copy_sources_and_delta_bases() {
    let mut m = delta(&[(Change::Deleted, false, 8)]);
    m.entries.push(Entry {
        path: p("g"),
        meta: meta(0o644, 1),
        kind: Kind::File {
            size: 8,
            hash: Some(Hash([0; 32])),
            content: Content::Copy { from: p("f000") },
            config: false,
            extents: None,
            gzip: None,
        },
    });
    m.script.insert(0, Step { op: Op::Place, path: p("g") });
    m.tag_old_files();
    assert!(matches!(m.old[0].kind, OldKind::Tagged { size: 8, .. }));
    m.check(&Limits::default()).unwrap_or_else(|e| panic!("{e}"));
    if let Kind::File { size, .. } = &mut m.entries[0].kind {
        *size = 9;
    }
    refused(&m, "copy source f000 is not an OLD file of that size");
}

#[test]
fn encoding_round_trips_and_stays_canonical() {
    let mut m = delta(&[(Change::Mtime, false, 10), (Change::Deleted, false, 11), (Change::Setuid, false, 12)]);
    m.tag_old_files();
    let cbor = m.to_cbor();
    let back = Manifest::from_cbor(&cbor, &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, m);
    let back = Manifest::decode(&m.encode(), &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, m);
    // The unchanged entry has no `hash` key at all; the tag is an 8-byte string; the aggregate
    // follows `old`.
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let unchanged_entry = [&b"\x64size\x0a\x67content\x69Unchanged"[..]].concat();
    assert!(find(&cbor, &unchanged_entry).is_some(), "unchanged entry encodes size, then content");
    let tagged = [&b"\x66Tagged\xa2\x64size\x0a\x63tag\x48"[..], &[0u8; 8]].concat();
    assert!(find(&cbor, &tagged).is_some(), "Tagged {{size, tag: bstr(8)}}");
    let (o, t, f) = (find(&cbor, b"\x63old"), find(&cbor, b"\x6dtagged_digest\x58\x20"), find(&cbor, b"\x66frames"));
    assert!(o < t && t < f, "tagged_digest sits between old and frames");

    // `hash: null` on an unchanged entry decodes, but is not the canonical encoding.
    let needle = b"\x64size\x0a\x67content";
    let at = find(&cbor, needle).expect("entry");
    let mut v = cbor[..at].to_vec();
    v.extend_from_slice(b"\x64size\x0a\x64hash\xf6\x67content");
    v.extend_from_slice(&cbor[at + needle.len()..]);
    // The entry's map now has one more pair: fix its head (a4 -> a5, File's fields).
    let head = v[..at].iter().rposition(|&b| b == 0xa3).expect("File map head");
    v[head] = 0xa4;
    match Manifest::from_cbor(&v, &Limits::default()) {
        Ok(_) => panic!("hash: null accepted"),
        Err(e) => assert!(e.to_string().contains("canonical"), "{e}"),
    }
    // A tag of another length does not decode.
    let mut v = cbor.clone();
    let at = find(&v, b"\x63tag\x48").expect("tag");
    v[at + 4] = 0x47;
    v.remove(at + 5);
    assert!(Manifest::from_cbor(&v, &Limits::default()).is_err());
}

#[test]
fn an_encrypted_bundles_outer_manifest_has_no_tagged_digest() {
    let mut m = empty();
    m.tagged_digest = Some(Hash([1; 32]));
    m.sealed = Some(bundle::seal::Sealed {
        recipients: vec![bundle::seal::Stanza { ephemeral: Hash([2; 32]), wrapped: vec![0; 48] }],
        commitment: Hash([3; 32]),
        manifest: vec![0; 64],
    });
    refused(&m, "outer manifest has a tagged_digest");
}

proptest! {
    /// The aggregate is the spec's, and any change of one record's path, size or digest, or of
    /// the order, changes it.
    #[test]
    fn aggregate_is_the_specs_and_binds_every_field(
        files in proptest::collection::btree_map("[a-z]{1,6}(/[a-z]{1,4})?", (any::<u64>(), any::<[u8; 32]>()), 1..12),
        which in any::<prop::sample::Index>(),
        field in 0..3u8,
    ) {
        let recs: Vec<(BundlePath, u64, Hash)> = files.iter().map(|(k, (s, h))| (p(k), *s, Hash(*h))).collect();
        let digest = |recs: &[(BundlePath, u64, Hash)]| {
            let mut d = TaggedDigest::default();
            for (path, size, hash) in recs {
                d.add(path, *size, hash);
            }
            prop_assert_eq!(d.count(), recs.len());
            Ok(d.finish())
        };
        let got = digest(&recs)?;
        let spec: Vec<(&[u8], u64, [u8; 32])> = recs.iter().map(|(a, s, h)| (a.as_bytes(), *s, h.0)).collect();
        prop_assert_eq!(got, spec_digest(&spec));
        let mut changed = recs.clone();
        let i = which.index(changed.len());
        match field {
            0 => changed[i].0 = p(&format!("{}x", changed[i].0.display())),
            1 => changed[i].1 ^= 1,
            _ => changed[i].2 .0[31] ^= 1,
        }
        prop_assert_ne!(digest(&changed)?, got);
        if recs.len() > 1 {
            let mut swapped = recs.clone();
            swapped.swap(0, 1);
            prop_assert_ne!(digest(&swapped)?, got);
        }
    }

    /// On any mix of changes, tagging lists by tag exactly the files the applier needs no own
    /// digest of, the result passes the structural checks and the script validator and
    /// survives encoding, and the aggregate is over the original digests.
    #[test]
    fn tagging_any_delta_gives_a_valid_manifest(
        files in proptest::collection::vec((0..4u8, any::<bool>(), 1..1000u64), 1..24),
    ) {
        let files: Vec<(Change, bool, u64)> = files
            .into_iter()
            .map(|(c, config, size)| {
                let c = [Change::Mtime, Change::Setuid, Change::Emptied, Change::Deleted][c as usize];
                // A deleted file has no NEW entry to mark.
                (c, config && !matches!(c, Change::Deleted), size)
            })
            .collect();
        let untagged = delta(&files);
        let mut m = untagged.clone();
        m.tag_old_files();
        let mut want = Vec::new();
        for (i, ((change, config, size), o)) in files.iter().zip(&m.old).enumerate() {
            let full = *config || matches!(change, Change::Setuid);
            prop_assert_eq!(matches!(o.kind, OldKind::File { .. }), full, "{}", o.path);
            if !full {
                prop_assert_eq!(&o.kind, &OldKind::Tagged { size: *size, tag: Tag([i as u8; 8]) });
                want.push((o.path.as_bytes(), *size, [i as u8; 32]));
            }
        }
        prop_assert_eq!(m.tagged_digest, (!want.is_empty()).then(|| spec_digest(&want)));
        m.check(&Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        bundle::script::validate(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back =
            Manifest::from_cbor(&m.to_cbor(), &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, m.clone());
        // Each tagged file saves 24 bytes of CBOR (`Tagged`/`tag`/9-byte tag for
        // `File`/`hash`/34-byte digest); the aggregate costs 33 over `null`.
        let n = want.len();
        let extra = if n > 0 { 33 } else { 0 };
        prop_assert_eq!(m.to_cbor().len() + 24 * n, untagged.to_cbor().len() + extra);
    }
}
