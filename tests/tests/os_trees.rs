//! Real operating-system trees (issue 13): Unix sockets in the input trees are skipped with a
//! warning (or refused with `--fail-on-sockets`), and a target on a network or FUSE filesystem
//! is refused before anything is written (exit 10) unless `--allow-network-fs`.
//!
//! The FUSE test mounts a temporary directory with `bindfs` (packages `bindfs` and `fuse3`), as
//! root; it fails with a message saying so when either is missing, never passes silently.

use ferry_tests::*;
use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;

/// A snapshot without sockets (which `snapshot` records as "other").
fn snapshot_no_sockets(root: &Path) -> Snapshot {
    snapshot(root, false).into_iter().filter(|(_, n)| n.kind != "other").collect()
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn sockets_are_skipped_with_a_warning_or_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let (old, new) = (d.join("old"), d.join("new"));
    for t in [&old, &new] {
        fs::create_dir_all(t.join("run")).expect("mkdir");
        fs::create_dir_all(t.join("etc")).expect("mkdir");
    }
    fs::write(old.join("etc/conf"), "a=1\n").expect("w");
    fs::write(new.join("etc/conf"), "a=2\n").expect("w");
    fs::write(new.join("run/pid"), "42\n").expect("w");
    let _o = UnixListener::bind(old.join("run/old.sock")).expect("bind old socket");
    let _n1 = UnixListener::bind(new.join("run/app.sock")).expect("bind new socket");
    let _n2 = UnixListener::bind(new.join("top.sock")).expect("bind new socket");
    let (secret, public) = keygen(d, "k");

    // Skipped with a warning naming each, and counted in the JSON report.
    let b = d.join("b.ferry");
    let out = run_expect(
        build_cmd()
            .args(["build", "--version", "2", "--json", "--key"])
            .arg(&secret)
            .arg("--old")
            .arg(&old)
            .arg("--new")
            .arg(&new)
            .arg("--out")
            .arg(&b)
            .env("SOURCE_DATE_EPOCH", "1700000000"),
        0,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for s in ["run/old.sock", "run/app.sock", "top.sock"] {
        assert!(err.contains(&format!("warning: skipped socket {s}")), "no warning for {s}: {err}");
    }
    let v = json_of(&out);
    assert_eq!(v["sockets_skipped"], 3, "{v}");
    let listed: Vec<(String, String)> = v["skipped_sockets"]
        .as_array()
        .expect("skipped_sockets")
        .iter()
        .map(|s| (s["input"].as_str().unwrap_or("").into(), s["path"].as_str().unwrap_or("").into()))
        .collect();
    let want = [("old", "run/old.sock"), ("new", "run/app.sock"), ("new", "top.sock")];
    assert_eq!(listed, want.map(|(a, b)| (a.to_string(), b.to_string())));

    // It applies: the target equals NEW but for the sockets, and the target's own socket stays.
    let t = d.join("t");
    copy_tree(&old, &t);
    apply(&b, &t, &public, 0, &[]);
    assert_same(&snapshot_no_sockets(&t), &snapshot_no_sockets(&new), "applied target vs NEW");
    assert_eq!(snapshot(&t, false).get(&b"run/old.sock"[..]).map(|n| n.kind), Some("other"));
    assert!(!t.join("run/app.sock").exists() && !t.join("top.sock").exists());

    // A full bundle too.
    let full = d.join("full.ferry");
    build(None, &new, &secret, 1, &full, &[]);
    let t2 = d.join("t2");
    fs::create_dir(&t2).expect("mkdir");
    apply(&full, &t2, &public, 0, &[]);
    assert_same(&snapshot_no_sockets(&t2), &snapshot_no_sockets(&new), "full bundle vs NEW");

    // --fail-on-sockets refuses, naming the socket; nothing is written.
    let refused = d.join("refused.ferry");
    let out = run_expect(
        build_cmd()
            .args(["build", "--version", "1", "--fail-on-sockets", "--key"])
            .arg(&secret)
            .arg("--new")
            .arg(&new)
            .arg("--out")
            .arg(&refused),
        1,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".sock") && err.contains("socket") && err.contains("--fail-on-sockets"), "{err}");
    assert!(!refused.exists());
}

/// Unmounts a FUSE mount when dropped.
struct Fuse(std::path::PathBuf);
impl Drop for Fuse {
    fn drop(&mut self) {
        let ok = Command::new("fusermount3").arg("-u").arg(&self.0).status().is_ok_and(|s| s.success())
            || Command::new("fusermount").arg("-u").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Mount `src` on `dst` with bindfs (FUSE); panics saying what is missing.
fn bindfs(src: &Path, dst: &Path) -> Fuse {
    let have = Command::new("bindfs").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        have,
        "this test needs bindfs and fuse3 (apt-get install bindfs fuse3) to mount a FUSE filesystem without network"
    );
    let st = Command::new("bindfs").arg(src).arg(dst).status().expect("run bindfs");
    assert!(
        st.success(),
        "bindfs {} {} failed: FUSE mounts need root and /dev/fuse (this test does not skip)",
        src.display(),
        dst.display()
    );
    Fuse(dst.to_path_buf())
}

fn fs_types(plan: &serde_json::Value) -> Vec<(String, String)> {
    plan["filesystems"]
        .as_array()
        .expect("filesystems")
        .iter()
        .map(|f| (f["example_dir"].as_str().unwrap_or("").into(), f["fs_type"].as_str().unwrap_or("").into()))
        .collect()
}

#[test]
fn a_target_on_fuse_is_refused_unless_allowed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let (old, new) = (d.join("old"), d.join("new"));
    for t in [&old, &new] {
        fs::create_dir_all(t.join("data/sub")).expect("mkdir");
        fs::create_dir_all(t.join("etc")).expect("mkdir");
    }
    fs::write(old.join("data/file"), "old data\n".repeat(100)).expect("w");
    fs::write(new.join("data/file"), "new data\n".repeat(100)).expect("w");
    fs::write(new.join("data/sub/added"), "hi").expect("w");
    fs::write(old.join("etc/conf"), "a=1\n").expect("w");
    fs::write(new.join("etc/conf"), "a=2\n").expect("w");
    let (secret, public) = keygen(d, "k");
    let b = d.join("b.ferry");
    build(Some(&old), &new, &secret, 2, &b, &[]);

    // 1. Only a subdirectory of the target is on FUSE: refused naming it.
    let t = d.join("t");
    copy_tree(&old, &t);
    let back = d.join("back");
    fs::rename(t.join("data"), &back).expect("move data aside");
    fs::create_dir(t.join("data")).expect("mkdir");
    {
        let _m = bindfs(&back, &t.join("data"));
        let before = snapshot(&t, true);
        let out = apply(&b, &t, &public, 10, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("data is on fuse (0x65735546)") && err.contains("--allow-network-fs"), "{err}");
        assert!(!err.contains(". is on"), "the local root is not refused: {err}");
        assert_same(&snapshot(&t, true), &before, "refused apply wrote nothing");

        let out = run_expect(
            apply_cmd().arg("plan").arg(&b).arg("--target").arg(&t).arg("--trust").arg(&public).arg("--json"),
            10,
        );
        let v = json_of(&out);
        let types = fs_types(&v);
        assert!(types.iter().any(|(dir, ty)| dir.starts_with("data") && ty == "fuse (0x65735546)"), "{v}");
        assert!(types.iter().any(|(dir, ty)| !dir.starts_with("data") && !ty.starts_with("fuse")), "{v}");
        assert!(v["refusal"].as_str().unwrap_or("").contains("fuse"), "{v}");
    }

    // 2. The whole target on FUSE: refused; with --allow-network-fs it applies.
    let back2 = d.join("back2");
    copy_tree(&old, &back2);
    let t2 = d.join("t2");
    fs::create_dir(&t2).expect("mkdir");
    let _m = bindfs(&back2, &t2);
    let before = snapshot(&t2, true);
    let out = apply(&b, &t2, &public, 10, &["--json"]);
    let v = json_of(&out);
    assert_eq!(v["exit_code"], 10, "{v}");
    let err = format!("{}{v}", String::from_utf8_lossy(&out.stderr));
    assert!(err.contains(". is on fuse (0x65735546)"), "{err}");
    assert_same(&snapshot(&t2, true), &before, "refused apply wrote nothing");
    let out = run_expect(
        apply_cmd()
            .arg("plan")
            .arg(&b)
            .arg("--target")
            .arg(&t2)
            .arg("--trust")
            .arg(&public)
            .args(["--json", "--allow-network-fs"]),
        0,
    );
    assert!(fs_types(&json_of(&out)).iter().all(|(_, ty)| ty == "fuse (0x65735546)"));
    // Allowed, the check passes; what happens next is the filesystem's. bindfs, like the NFS
    // client and most FUSE filesystems, has no renameat2 flags: placing a new name
    // (RENAME_NOREPLACE) fails with EINVAL at the commit, which is rolled back (exit 6).
    let out = apply_cmd()
        .arg("apply")
        .arg(&b)
        .arg("--target")
        .arg(&t2)
        .arg("--trust")
        .arg(&public)
        .arg("--allow-network-fs")
        .output()
        .expect("spawn");
    let err = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => assert_same(&snapshot(&t2, false), &snapshot(&new, false), "applied on FUSE vs NEW"),
        Some(6) => {
            assert!(err.contains("Invalid argument") && err.contains("rolled back"), "{err}");
            assert_same(&snapshot(&t2, false), &snapshot(&old, false), "rolled back on FUSE vs OLD");
            // A bundle that only replaces existing files (plain rename over) applies.
            let edit = d.join("edit");
            copy_tree(&old, &edit);
            fs::write(edit.join("data/file"), "edited data\n".repeat(100)).expect("w");
            fs::write(edit.join("etc/conf"), "a=3\n").expect("w");
            let b2 = d.join("b2.ferry");
            build(Some(&old), &edit, &secret, 3, &b2, &[]);
            apply(&b2, &t2, &public, 10, &[]);
            apply(&b2, &t2, &public, 0, &["--allow-network-fs"]);
            assert_same(&snapshot(&t2, false), &snapshot(&edit, false), "applied on FUSE vs NEW");
        }
        c => panic!("unexpected exit {c:?}: {err}"),
    }
}
