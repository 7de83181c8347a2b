//! The checked-in test vector: `tests/vectors/small.ferry`, signed by `tests/vectors/key.secret`,
//! with its decoded manifest in `small.manifest.json`. The code must still read it exactly, and
//! regenerating it from the tree this file describes must give the same bytes (builds are
//! deterministic). `FERRY_REGEN_VECTORS=1 cargo test -p ferry-tests --test vectors` rewrites the
//! vector after an intentional format change (and bundle-format.md's worked example with it).

use ferry_tests::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// The OLD and NEW trees of the vector.
fn trees(root: &Path) -> (PathBuf, PathBuf) {
    let old = root.join("old");
    let new = root.join("new");
    for t in [&old, &new] {
        fs::create_dir_all(t.join("etc")).expect("mkdir");
        fs::create_dir_all(t.join("bin")).expect("mkdir");
    }
    fs::write(old.join("etc/motd"), "hello from version 1\n").expect("w");
    fs::write(new.join("etc/motd"), "hello from version 2\n").expect("w");
    fs::write(old.join("bin/tool"), "#!/bin/sh\necho tool 1\n").expect("w");
    fs::write(new.join("bin/tool"), "#!/bin/sh\necho tool 2\n").expect("w");
    for t in [&old, &new] {
        fs::set_permissions(t.join("bin/tool"), fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    fs::write(old.join("etc/old-only"), "removed in 2\n").expect("w");
    // Same content, new mtime only: listed by tag (bundle-format.md §4.3), no digest of its own.
    for t in [&old, &new] {
        fs::write(t.join("etc/issue"), "ferry\n").expect("w");
    }
    symlink("tool", new.join("bin/tool-link")).expect("ln");
    fs::write(new.join("empty"), "").expect("w");
    for t in [&old, &new] {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg("find . -exec touch -h -d @1700000000 {} + && chown -hR 0:0 . 2>/dev/null; true")
            .current_dir(t)
            .status()
            .expect("touch");
        assert!(st.success());
    }
    set_mtime(&new.join("etc/issue"), 1_700_000_100);
    (old, new)
}

#[test]
fn vector_still_decodes_and_matches() {
    let d = dir();
    let bytes = fs::read(d.join("small.ferry")).expect("tests/vectors/small.ferry is checked in");
    let limits = bundle::Limits::default();
    let mut r = bundle::container::Reader::new(&bytes[..], limits.clone());
    let (mb, sb) = r.head().expect("head");
    let keys = bundle::sig::verify_signatures(&mb, &sb, limits.max_signatures).expect("signature");
    let public = bundle::sig::PublicKey::parse(&fs::read_to_string(d.join("key.pub")).expect("key.pub")).expect("pub");
    assert_eq!(keys, vec![public]);
    let m = bundle::Manifest::decode(&mb, &limits).expect("manifest");
    bundle::script::validate(&m).expect("script");
    for i in 0..m.frames.len() {
        r.check_frame(&m.frames, i).expect("frame");
    }
    r.end().expect("end");
    let json = serde_json::to_string_pretty(&m).expect("json");
    let want = fs::read_to_string(d.join("small.manifest.json")).expect("small.manifest.json is checked in");
    assert_eq!(json.trim(), want.trim(), "decoded manifest differs from tests/vectors/small.manifest.json");
    assert_eq!(m.version, 2);
    assert_eq!(m.entries.len(), 7);
    // Every OLD file is listed by tag; the mtime-only file has no digest of its own.
    assert!(m.tagged_digest.is_some());
    assert!(m
        .old
        .iter()
        .filter(|o| o.kind.file_size().is_some())
        .all(|o| matches!(o.kind, bundle::OldKind::Tagged { .. })));
    let issue = m.entries.iter().find(|e| e.path.display() == "etc/issue").expect("etc/issue listed");
    assert!(matches!(issue.kind, bundle::Kind::File { hash: None, content: bundle::Content::Unchanged, .. }));
    // The aggregate over OLD's files as `trees` writes them (bundle-format.md §4.3, §17).
    let mut agg = bundle::TaggedDigest::default();
    for (path, content) in [
        ("bin/tool", &b"#!/bin/sh\necho tool 1\n"[..]),
        ("etc/issue", b"ferry\n"),
        ("etc/motd", b"hello from version 1\n"),
        ("etc/old-only", b"removed in 2\n"),
    ] {
        let path = bundle::BundlePath::new(path).expect("path");
        let hash = bundle::Hash::of(content);
        let o = m.old_entry(&path).expect("old entry");
        assert_eq!(o.kind, bundle::OldKind::Tagged { size: content.len() as u64, tag: bundle::Tag::of(&hash) });
        agg.add(&path, content.len() as u64, &hash);
    }
    assert_eq!(m.tagged_digest, Some(agg.finish()));
}

#[test]
fn vector_regenerates_identically() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (old, new) = trees(tmp.path());
    let out = tmp.path().join("small.ferry");
    build(Some(&old), &new, &dir().join("key.secret"), 2, &out, &["--base-version", "1"]);
    let fresh = fs::read(&out).expect("built");
    if std::env::var("FERRY_REGEN_VECTORS").is_ok() {
        fs::write(dir().join("small.ferry"), &fresh).expect("write vector");
        let limits = bundle::Limits::default();
        let mut r = bundle::container::Reader::new(&fresh[..], limits.clone());
        let (mb, _) = r.head().expect("head");
        let m = bundle::Manifest::decode(&mb, &limits).expect("manifest");
        fs::write(dir().join("small.manifest.json"), serde_json::to_string_pretty(&m).expect("json") + "\n")
            .expect("write json");
        return;
    }
    require_root("the vector's owners are 0:0, so the byte comparison needs the trees chowned to root");
    let stored = fs::read(dir().join("small.ferry")).expect("vector");
    assert!(
        fresh == stored,
        "ferry-build output for the vector's trees changed; if intended, regenerate with FERRY_REGEN_VECTORS=1"
    );
}
