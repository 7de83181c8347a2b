//! Operator-facing behaviour: `plan` on a drifted target lists exactly the drifted paths and
//! changes nothing; the free-space check refuses a bundle that cannot fit before staging; the
//! conffile rule keeps local edits of marked config files.

use ferry_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Trees {
    _tmp: tempfile::TempDir,
    d: PathBuf,
    old: PathBuf,
    new: PathBuf,
    secret: PathBuf,
    public: PathBuf,
}

fn trees() -> Trees {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path().to_path_buf();
    let (old, new) = (d.join("old"), d.join("new"));
    for t in [&old, &new] {
        fs::create_dir_all(t.join("etc")).expect("mkdir");
        fs::create_dir_all(t.join("bin")).expect("mkdir");
        fs::write(t.join("bin/untouched"), "same in both\n").expect("w");
        // The same mtime too (two writes can straddle a clock tick): untouched by the bundle.
        set_mtime(&t.join("bin/untouched"), 1_700_000_000);
    }
    fs::write(old.join("etc/app.conf"), "port = 1\n").expect("w");
    fs::write(new.join("etc/app.conf"), "port = 2\n").expect("w");
    fs::write(old.join("bin/tool"), "tool 1\n".repeat(20)).expect("w");
    fs::write(new.join("bin/tool"), "tool 2\n".repeat(20)).expect("w");
    fs::write(old.join("bin/gone"), "deleted in NEW\n").expect("w");
    let (secret, public) = keygen(&d, "k");
    Trees { _tmp: tmp, d, old, new, secret, public }
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).expect("one JSON object on stdout")
}

#[test]
fn plan_lists_exactly_the_drifted_paths_and_changes_nothing() {
    let w = trees();
    let b = w.d.join("b.ferry");
    build(Some(&w.old), &w.new, &w.secret, 2, &b, &[]);
    let t = w.d.join("t");
    copy_tree(&w.old, &t);
    fs::write(t.join("bin/tool"), "edited locally\n").expect("w");
    fs::write(t.join("bin/gone"), "edited too\n").expect("w");
    fs::write(t.join("bin/untouched"), "drift the bundle does not care about\n").expect("w");
    let before = snapshot(&t, true);
    let o = run_expect(
        apply_cmd().arg("plan").arg(&b).arg("--target").arg(&t).arg("--trust").arg(&w.public).arg("--json"),
        4,
    );
    let v = json(&o);
    assert_eq!(v["ferry_report"], 1);
    assert_eq!(v["would_apply"], false);
    let drifted: Vec<String> =
        v["drifted"].as_array().expect("drifted").iter().map(|x| x.as_str().unwrap_or("").to_string()).collect();
    assert_eq!(drifted.len(), 2, "{drifted:?}");
    assert!(drifted[0].starts_with("bin/gone:") && drifted[1].starts_with("bin/tool:"), "{drifted:?}");
    assert!(v["steps"].as_array().is_some_and(|s| !s.is_empty()));
    assert_same(&snapshot(&t, true), &before, "plan");
    assert!(!t.join(".ferry").exists(), "plan must not create the state directory");
    // A clean target: plan says it would apply, exit 0, and lists the space it needs.
    let t2 = w.d.join("t2");
    copy_tree(&w.old, &t2);
    let o = run_expect(
        apply_cmd().arg("plan").arg(&b).arg("--target").arg(&t2).arg("--trust").arg(&w.public).arg("--json"),
        0,
    );
    let v = json(&o);
    assert_eq!(v["would_apply"], true);
    assert!(v["filesystems"][0]["available_bytes"].as_u64().unwrap_or(0) > 0);
    assert!(v["stage_bytes"].as_u64().unwrap_or(0) > 0);
}

/// `plan` of `b` on `t` refuses for space (exit 11): the snapshot of `t` before, and the output.
fn plan_refused_for_space(w: &Trees, b: &Path, t: &Path) -> (Snapshot, std::process::Output) {
    let before = snapshot(t, true);
    let o = run_expect(
        apply_cmd().arg("plan").arg(b).arg("--target").arg(t).arg("--trust").arg(&w.public).arg("--json"),
        11,
    );
    (before, o)
}

/// `apply` of `b` on `t` refuses for space (exit 11) before staging anything: `t` as `before`.
fn apply_refused_for_space(w: &Trees, b: &Path, t: &Path, before: &Snapshot) {
    let o = apply(b, t, &w.public, 11, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not enough free space"), "{err}");
    assert_same(&snapshot(t, true), before, "refused for space");
    assert!(!t.join(".ferry/txn").exists(), "nothing staged");
}

/// Unmounts its directory when dropped.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

/// Mount a tmpfs of `size` (e.g. `2m`) on `t` as the target, unmounted when the guard drops.
fn mount_tmpfs<'a>(t: &'a Path, size: &str) -> Unmount<'a> {
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "ferry-small"])
        .arg(t)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        require_root("it mounts a small tmpfs as the target");
        panic!("mount -t tmpfs failed as root (is mount(8) installed, are mounts allowed here?)");
    }
    Unmount(t)
}

#[test]
fn free_space_is_checked_before_staging() {
    let w = trees();
    // 4 MiB of incompressible content in NEW; the target is a 2 MiB tmpfs.
    let noise = noise(4 << 20, 0x2545f4914f6cdd1d);
    fs::write(w.new.join("bin/big"), noise).expect("w");
    let b = w.d.join("b.ferry");
    build(Some(&w.old), &w.new, &w.secret, 2, &b, &[]);
    let t = w.d.join("t");
    fs::create_dir(&t).expect("mkdir");
    let _g = mount_tmpfs(&t, "2m");
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", w.old.display())).arg(&t).status().expect("cp");
    assert!(st.success());
    let (before, o) = plan_refused_for_space(&w, &b, &t);
    assert_eq!(json(&o)["filesystems"][0]["fits"], false);
    apply_refused_for_space(&w, &b, &t, &before);
}

/// A frame over 8 MiB passes through a scratch file beside the staged files before it is
/// decoded: the space check counts it. 12 MiB of incompressible content in one frame needs about
/// 25 MiB (file + scratch), so a 20 MiB target is refused up front (`plan` says so too), with
/// nothing staged, instead of running out of space half-way.
#[test]
fn free_space_check_counts_the_scratch_file_of_a_large_frame() {
    let w = trees();
    fs::write(w.new.join("bin/big"), noise(12 << 20, 0x9e3779b97f4a7c15)).expect("w");
    let b = w.d.join("b.ferry");
    build(Some(&w.old), &w.new, &w.secret, 2, &b, &["--chunk-size", "16M"]);
    let t = w.d.join("t");
    fs::create_dir(&t).expect("mkdir");
    let _g = mount_tmpfs(&t, "20m");
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", w.old.display())).arg(&t).status().expect("cp");
    assert!(st.success());
    let (before, o) = plan_refused_for_space(&w, &b, &t);
    let need = json(&o)["filesystems"][0]["stage_bytes"].as_u64().unwrap_or(0);
    assert!(need > 24 << 20, "plan counts {need} bytes: the scratch file is missing");
    apply_refused_for_space(&w, &b, &t, &before);
    // With room for both, the same bundle applies.
    let big = w.d.join("big");
    copy_tree(&w.old, &big);
    apply(&b, &big, &w.public, 0, &[]);
    assert_eq!(fs::read(big.join("bin/big")).expect("r"), fs::read(w.new.join("bin/big")).expect("r"));
}

#[test]
fn conffile_rule_keeps_local_edits() {
    let w = trees();
    let b = w.d.join("b.ferry");
    build(Some(&w.old), &w.new, &w.secret, 2, &b, &["--config-files", "etc/**"]);
    let t = w.d.join("t");
    copy_tree(&w.old, &t);
    fs::write(t.join("etc/app.conf"), "port = 1\n# local edit\n").expect("w");
    let o = apply(&b, &t, &w.public, 0, &["--json"]);
    let v = json(&o);
    assert_eq!(v["conffiles_kept"][0], "etc/app.conf.ferry-new");
    assert_eq!(fs::read_to_string(t.join("etc/app.conf")).expect("r"), "port = 1\n# local edit\n");
    assert_eq!(fs::read_to_string(t.join("etc/app.conf.ferry-new")).expect("r"), "port = 2\n");
    assert_eq!(fs::read_to_string(t.join("bin/tool")).expect("r"), "tool 2\n".repeat(20));
    let o = run_expect(apply_cmd().arg("status").arg("--target").arg(&t).arg("--json"), 0);
    assert_eq!(json(&o)["installed"]["conffiles_kept"][0], "etc/app.conf.ferry-new");
    let o = run_expect(apply_cmd().arg("status").arg("--target").arg(&t), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("etc/app.conf.ferry-new"));
    // Rollback removes the .ferry-new file and restores the tree.
    run_expect(apply_cmd().arg("-q").arg("rollback").arg("--target").arg(&t), 0);
    assert!(!t.join("etc/app.conf.ferry-new").exists());
    assert_eq!(fs::read_to_string(t.join("etc/app.conf")).expect("r"), "port = 1\n# local edit\n");

    // Unmarked drift is still refused.
    let t2 = w.d.join("t2");
    copy_tree(&w.old, &t2);
    fs::write(t2.join("bin/tool"), "local edit of a file that is not a config file\n").expect("w");
    fs::write(t2.join("etc/app.conf"), "port = 1\n# local edit\n").expect("w");
    let before = snapshot(&t2, true);
    let o = apply(&b, &t2, &w.public, 4, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bin/tool") && !err.contains("etc/app.conf"), "{err}");
    assert_same(&snapshot(&t2, true), &before, "unmarked drift");
}
