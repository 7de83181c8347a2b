//! Replace mode (bundle-format.md §10.4): a full bundle applied with `--replace` to a target that
//! is not empty makes it the bundle's tree — what is equal untouched (same inode), what differs
//! replaced, what the bundle lacks removed unless `--keep` names it — through the real binaries;
//! refused without `--replace`; rolled back exactly; and completed by `resume` after a SIGKILL
//! at every failpoint.

use ferry_tests::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).expect("lstat").ino()
}

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// A temporary directory with a key, the [`trees`] and the full bundle of NEW (version 7).
fn setup() -> (tempfile::TempDir, Keys, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let k = keys(tmp.path());
    let (old, new) = trees(tmp.path());
    let b = tmp.path().join("full.ferry");
    build(None, &new, &k.secret, 7, &b, &[]);
    (tmp, k, old, new, b)
}

/// What `--replace --keep data` makes of OLD: NEW, with OLD's `data/`.
fn new_with_old_data(old: &Path, new: &Path) -> Snapshot {
    let mut want = snapshot(new, false);
    want.extend(snapshot(old, false).into_iter().filter(|(p, _)| p.starts_with(b"data")));
    want
}

/// `ferry-apply rollback` of `t`, which must then equal `before` (directory mtimes included).
fn rolled_back(t: &Path, before: &Snapshot, what: &str) {
    let mut c = apply_cmd();
    c.args(["-q", "rollback", "--target"]).arg(t);
    run_expect(&mut c, 0);
    assert_same(&snapshot(t, true), before, what);
}

/// NEW: a small tree with one of each case; OLD (the target) the same paths in their other form,
/// plus paths NEW lacks.
fn trees(root: &Path) -> (PathBuf, PathBuf) {
    let (old, new) = (root.join("old"), root.join("new"));
    for t in [&old, &new] {
        fs::create_dir_all(t.join("etc")).expect("mkdir");
        fs::create_dir_all(t.join("lib")).expect("mkdir");
        fs::write(t.join("same.bin"), noise(50_000, 1)).expect("write");
        fs::write(t.join("mode.sh"), b"#!/bin/sh\necho hi\n").expect("write");
    }
    fs::set_permissions(old.join("mode.sh"), fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::set_permissions(new.join("mode.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    // Content that differs; a config file edited on the target.
    fs::write(old.join("lib/libx.so.1"), noise(30_000, 2)).expect("write");
    fs::write(new.join("lib/libx.so.1"), noise(30_000, 3)).expect("write");
    fs::write(old.join("etc/app.conf"), b"local = edit\n").expect("write");
    fs::write(new.join("etc/app.conf"), b"shipped = 2\n").expect("write");
    // A directory that becomes a file, a file that becomes a directory.
    fs::create_dir_all(old.join("d2f/sub")).expect("mkdir");
    fs::write(old.join("d2f/sub/x"), b"x").expect("write");
    fs::write(new.join("d2f"), b"now a file\n").expect("write");
    fs::write(old.join("f2d"), b"was a file\n").expect("write");
    fs::create_dir_all(new.join("f2d")).expect("mkdir");
    fs::write(new.join("f2d/inside"), b"in\n").expect("write");
    // NEW links two names; OLD has them as two files with the same content.
    fs::write(new.join("h1"), b"linked\n").expect("write");
    fs::hard_link(new.join("h1"), new.join("h2")).expect("link");
    fs::write(old.join("h1"), b"linked\n").expect("write");
    fs::write(old.join("h2"), b"linked\n").expect("write");
    symlink("libx.so.1", new.join("lib/libx.so")).expect("symlink");
    symlink("libold.so.0", old.join("lib/libx.so")).expect("symlink");
    // Only in OLD: a subtree, a chain of symlinks into it, data the operator keeps.
    fs::create_dir_all(old.join("junk/deep")).expect("mkdir");
    fs::write(old.join("junk/deep/f"), b"junk").expect("write");
    symlink("l2", old.join("l1")).expect("symlink");
    symlink("junk/deep/f", old.join("l2")).expect("symlink");
    fs::write(old.join("lib/libold.so.0"), b"old lib").expect("write");
    fs::create_dir_all(old.join("data/db")).expect("mkdir");
    fs::write(old.join("data/db/state"), b"precious").expect("write");
    for t in [&old, &new] {
        for p in ["same.bin", "mode.sh"] {
            set_mtime(&t.join(p), 1_650_000_000);
        }
    }
    (old, new)
}

#[test]
fn a_full_bundle_replaces_a_tree_that_is_not_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let k = keys(tmp.path());
    let (old, new) = trees(tmp.path());
    let b = tmp.path().join("full.ferry");
    build(None, &new, &k.secret, 7, &b, &["--config-files", "etc/*.conf"]);
    let t = tmp.path().join("t");
    copy_tree(&old, &t);
    // A hard link planted outside the tree to a file whose metadata NEW changes.
    fs::write(t.join("tool"), b"tool\n").expect("write");
    fs::write(new.join("tool"), b"tool\n").expect("write");
    fs::set_permissions(new.join("tool"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    set_mtime(&new.join("tool"), 1_650_000_000);
    set_mtime(&t.join("tool"), 1_650_000_000);
    fs::hard_link(t.join("tool"), tmp.path().join("planted")).expect("link");
    // Two names of one inode here, two files in NEW (equal content and metadata).
    fs::write(t.join("pair1"), b"pair\n").expect("write");
    fs::hard_link(t.join("pair1"), t.join("pair2")).expect("link");
    for n in ["pair1", "pair2"] {
        fs::write(new.join(n), b"pair\n").expect("write");
        set_mtime(&new.join(n), 1_650_000_000);
    }
    set_mtime(&t.join("pair1"), 1_650_000_000);
    // A socket of a running service, in a directory NEW lacks: both stay.
    fs::create_dir(t.join("run")).expect("mkdir");
    let _sock = std::os::unix::net::UnixListener::bind(t.join("run/app.sock")).expect("bind");
    build(None, &new, &k.secret, 7, &b, &["--config-files", "etc/*.conf"]);
    let before = snapshot(&t, true);
    let (same_ino, mode_ino) = (ino(&t.join("same.bin")), ino(&t.join("mode.sh")));

    // Without --replace: refused as drift (exit 4), saying how to mean it; nothing changes.
    let o = apply(&b, &t, &k.public, 4, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--replace") && err.contains("full bundle"), "{err}");
    assert_same(&snapshot(&t, true), &before, "refused without --replace");

    // plan --replace shows the rebased script and changes nothing.
    let mut c = apply_cmd();
    c.args(["plan", "--json", "--replace", "--keep", "data"])
        .arg(&b)
        .arg("--target")
        .arg(&t)
        .arg("--trust")
        .arg(&k.public);
    let p = json(&run_expect(&mut c, 0));
    assert_eq!(p["would_apply"], true, "{p}");
    let steps: Vec<(String, String)> = p["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| (s["op"].as_str().unwrap_or("").into(), s["path"].as_str().unwrap_or("").into()))
        .collect();
    let has = |op: &str, path: &str| steps.iter().any(|(o, q)| o == op && q == path);
    assert!(
        has("SetMeta", "mode.sh") && has("Place", "d2f") && has("Place", "f2d") && has("Delete", "junk"),
        "{steps:?}"
    );
    assert!(!steps.iter().any(|(_, q)| q == "same.bin" || q.starts_with("data")), "{steps:?}");
    // Symlinks first, each before the link it resolves through (§6 rule 6).
    let pos = |op: &str, path: &str| steps.iter().position(|(o, q)| o == op && q == path).expect("step");
    assert!(pos("Delete", "l1") < pos("Delete", "l2") && pos("Delete", "l2") < pos("Delete", "junk/deep/f"));
    let left: Vec<&str> = p["replace"]["left"].as_array().expect("left").iter().filter_map(Value::as_str).collect();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(
        left[0] == "data: kept (--keep data)"
            && left[1].starts_with("run: ")
            && left[2].starts_with("run/app.sock: a socket")
    );
    assert_same(&snapshot(&t, true), &before, "plan changes nothing");

    let r = json(&apply(&b, &t, &k.public, 0, &["--replace", "--keep", "data", "--json"]));
    assert_eq!(r["result"], "applied", "{r}");
    assert_eq!(r["replace"]["unchanged"].as_u64().map(|n| n >= 3), Some(true), "{r}");
    // junk, junk/deep, junk/deep/f, l1, l2, lib/libold.so.0
    assert_eq!(r["replace"]["removed"], 6, "{r}");
    assert_eq!(r["conffiles_kept"], serde_json::json!(["etc/app.conf.ferry-new"]), "{r}");

    // The tree is NEW, except the kept data and the locally edited config file (NEW's beside it).
    let mut want = snapshot(&new, false);
    let got = snapshot(&t, false);
    let old_snap = snapshot(&old, false);
    want.insert(b"etc/app.conf.ferry-new".to_vec(), want[&b"etc/app.conf".to_vec()].clone());
    want.insert(b"etc/app.conf".to_vec(), old_snap[&b"etc/app.conf".to_vec()].clone());
    for (p, n) in old_snap.iter().filter(|(p, _)| p.starts_with(b"data")) {
        want.insert(p.clone(), n.clone());
    }
    for (p, n) in before.iter().filter(|(p, _)| p.starts_with(b"run")) {
        want.insert(p.clone(), Node { mtime_ns: if n.kind == "dir" { None } else { n.mtime_ns }, ..n.clone() });
    }
    assert_same(&got, &want, "replaced tree");
    // What was equal was not touched: the same inodes; a mode change made in place.
    assert_eq!(ino(&t.join("same.bin")), same_ino);
    assert_eq!(ino(&t.join("mode.sh")), mode_ino);
    assert_eq!(ino(&t.join("h1")), ino(&t.join("h2")));
    assert_ne!(ino(&t.join("pair1")), ino(&t.join("pair2")));
    // The planted link's inode never got the set-user-ID bit: the file was placed anew.
    assert_ne!(ino(&t.join("tool")), ino(&tmp.path().join("planted")));
    assert_eq!(fs::metadata(tmp.path().join("planted")).expect("stat").permissions().mode() & 0o7777, 0o644);
    assert_eq!(fs::metadata(t.join("tool")).expect("stat").permissions().mode() & 0o7777, 0o4755);

    // Rollback brings back everything, removed paths included.
    rolled_back(&t, &before, "rolled back");
}

#[test]
fn a_kept_path_inside_a_directory_the_bundle_replaces_is_refused() {
    let (tmp, k, old, _new, b) = setup();
    let t = tmp.path().join("t");
    copy_tree(&old, &t);
    let before = snapshot(&t, true);
    let o = apply(&b, &t, &k.public, 4, &["--replace", "--keep", "d2f/**"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("d2f/sub") && err.contains("replaces the directory d2f"), "{err}");
    assert_same(&snapshot(&t, true), &before, "refused");
    // --keep needs --replace (a usage error).
    apply(&b, &t, &k.public, 2, &["--keep", "data"]);
}

/// Random trees: every OLD of gen_tree/mutate, replaced by the full bundle of an unrelated NEW
/// and of its own mutation, ends equal to NEW (metadata, links, devices, FIFOs included).
#[test]
fn random_trees_become_the_bundles_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let k = keys(tmp.path());
    for seed in 0..6u64 {
        let d = tmp.path().join(format!("s{seed}"));
        let (old, mutated, other) = (d.join("old"), d.join("mutated"), d.join("other"));
        gen_tree(&old, 900 + seed);
        mutate(&old, &mutated, 900 + seed);
        gen_tree(&other, 7_000 + seed);
        for (i, new) in [&mutated, &other].into_iter().enumerate() {
            let b = d.join(format!("full{i}.ferry"));
            build(None, new, &k.secret, 2, &b, &[]);
            let t = d.join(format!("t{i}"));
            copy_tree(&old, &t);
            let before = snapshot(&t, true);
            apply(&b, &t, &k.public, 0, &["-q", "--replace"]);
            assert_same(&snapshot(&t, false), &snapshot(new, false), &format!("seed {seed}, NEW {i}"));
            rolled_back(&t, &before, &format!("seed {seed}, NEW {i}: rolled back"));
        }
    }
}

#[test]
fn a_replace_killed_at_every_failpoint_resumes_to_the_bundles_tree() {
    let (tmp, k, old, new, b) = setup();
    let want = new_with_old_data(&old, &new);
    let scratch = tmp.path().join("scratch");
    fs::create_dir_all(&scratch).expect("mkdir");
    let points = crash_at_every_failpoint(
        &old,
        &scratch,
        |t| {
            let mut c = apply_cmd();
            c.args(["-q", "apply", "--replace", "--keep", "data"]).arg(&b).arg("--target").arg(t);
            c.arg("--trust").arg(&k.public);
            c
        },
        |_, _| {},
        |t, k| assert_same(&snapshot(t, false), &want, &format!("resumed after crash point {k}")),
    );
    assert!(points > 20, "{points} failpoints");
}

/// The inbox (a stick or a download directory) with `--replace`: a full bundle whose version is
/// newer than the installed one replaces the tree; without `--replace` it is refused and the
/// tree is left alone.
#[test]
fn the_inbox_applies_a_full_bundle_with_replace() {
    let (tmp, k, old, new, b) = setup();
    let inbox = tmp.path().join("inbox");
    fs::create_dir_all(&inbox).expect("mkdir");
    fs::copy(&b, inbox.join("full.ferry")).expect("copy");
    let t = tmp.path().join("t");
    copy_tree(&old, &t);
    let before = snapshot(&t, true);
    let inbox_cmd = |extra: &[&str]| {
        let mut c = apply_cmd();
        c.arg("-q").arg("inbox").arg(&inbox).arg("--target").arg(&t).arg("--trust").arg(&k.public).args(extra);
        c
    };
    let o = inbox_cmd(&[]).output().expect("spawn");
    assert_ne!(o.status.code(), Some(0), "{o:?}");
    assert_same(&snapshot(&t, true), &before, "inbox without --replace");
    run_expect(&mut inbox_cmd(&["--replace", "--keep", "data"]), 0);
    let want = new_with_old_data(&old, &new);
    assert_same(&snapshot(&t, false), &want, "inbox --replace");
}
