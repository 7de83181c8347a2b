//! A target that spans several mounts: staging and backups for paths on another mount live in a
//! work directory on that mount (`.ferry-work-<id>` at its root), so every rename stays on one
//! filesystem; rollback removes it. Needs root and mount(2) (the CI runs as root).

use ferry_tests::*;
use std::fs;
use std::path::Path;
use std::process::Command;

fn mount_tmpfs(dir: &Path) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "ferry-test"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

struct Unmount<'a>(&'a Path);
impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn work_dirs(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".ferry-work-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn target_spanning_two_mounts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let (old, new) = (d.join("old"), d.join("new"));
    for t in [&old, &new] {
        fs::create_dir_all(t.join("data/sub")).expect("mkdir");
        fs::create_dir_all(t.join("etc")).expect("mkdir");
    }
    fs::write(old.join("data/file"), "old data\n".repeat(100)).expect("w");
    fs::write(new.join("data/file"), "new data\n".repeat(100)).expect("w");
    fs::write(old.join("data/sub/gone"), "bye").expect("w");
    fs::write(new.join("data/sub/added"), "hi").expect("w");
    fs::write(old.join("etc/conf"), "a=1\n").expect("w");
    fs::write(new.join("etc/conf"), "a=2\n").expect("w");
    let (secret, public) = keygen(d, "k");
    let b = d.join("b.ferry");
    build(Some(&old), &new, &secret, 2, &b, &[]);

    let t = d.join("t");
    fs::create_dir_all(t.join("data")).expect("mkdir");
    require_root("it mounts a tmpfs inside the target");
    assert!(
        mount_tmpfs(&t.join("data")),
        "mount -t tmpfs failed as root (is mount(8) installed, are mounts allowed here?)"
    );
    let _guard = Unmount(&t.join("data"));
    // Fill the target: data/ is the tmpfs mount, the rest is on the temp directory's filesystem.
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", old.display())).arg(&t).status().expect("cp");
    assert!(st.success());
    // cp does not carry the mode of data/ onto the mount's root directory.
    let st =
        Command::new("chmod").arg("--reference").arg(old.join("data")).arg(t.join("data")).status().expect("chmod");
    let st2 = Command::new("touch").arg("-r").arg(old.join("data")).arg(t.join("data")).status().expect("touch");
    assert!(st.success() && st2.success());
    let before = snapshot(&t, true);
    assert_same(&before, &snapshot(&old, true), "target prepared as OLD");

    apply(&b, &t, &public, 0, &[]);
    assert_same(&snapshot(&t, true), &snapshot(&new, true), "applied across two mounts");
    // Backups of the tmpfs paths are kept on the tmpfs, for rollback.
    assert_eq!(work_dirs(&t.join("data")).len(), 1, "work directory on the second mount");
    assert!(work_dirs(&t).is_empty(), "no work directory needed on the state directory's filesystem");

    run_expect(apply_cmd().arg("-q").arg("rollback").arg("--target").arg(&t), 0);
    assert_same(&snapshot(&t, true), &before, "rolled back across two mounts");
    assert!(work_dirs(&t.join("data")).is_empty(), "rollback removed the work directory");
}

/// Replace mode (bundle-format.md §10.4) on a target with a mount inside: NEW's paths on the
/// mount are compared and replaced like the others (their staging and backups on that mount);
/// what NEW lacks there is never looked at nor removed; paths NEW lacks elsewhere are removed.
#[test]
fn replace_mode_compares_new_paths_on_a_mount_and_leaves_the_rest_of_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let new = d.join("new");
    fs::create_dir_all(new.join("data/sub")).expect("mkdir");
    fs::write(new.join("data/file"), "new data\n".repeat(100)).expect("w");
    fs::write(new.join("data/same"), "same\n").expect("w");
    fs::write(new.join("data/sub/added"), "hi").expect("w");
    fs::write(new.join("top"), "top\n").expect("w");
    let (secret, public) = keygen(d, "k");
    let b = d.join("full.ferry");
    build(None, &new, &secret, 3, &b, &[]);

    let t = d.join("t");
    fs::create_dir_all(t.join("data")).expect("mkdir");
    require_root("it mounts a tmpfs inside the target");
    assert!(mount_tmpfs(&t.join("data")), "mount -t tmpfs failed as root");
    let _guard = Unmount(&t.join("data"));
    fs::write(t.join("data/file"), "old data\n").expect("w");
    let st = Command::new("cp").arg("-a").arg(new.join("data/same")).arg(t.join("data/same")).status().expect("cp");
    assert!(st.success());
    fs::write(t.join("data/db"), "precious").expect("w");
    fs::write(t.join("stale"), "from an old release").expect("w");
    let same_ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(t.join("data/same")).expect("stat"));

    let o = apply(&b, &t, &public, 0, &["--replace", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(r["replace"]["removed"], 1, "{r}");
    assert_eq!(fs::read(t.join("data/file")).expect("read"), fs::read(new.join("data/file")).expect("read"));
    assert_eq!(fs::read(t.join("data/sub/added")).expect("read"), b"hi");
    assert_eq!(fs::read(t.join("data/db")).expect("read"), b"precious", "NEW lacks it on the mount: it stays");
    assert!(!t.join("stale").exists(), "NEW lacks it on the root filesystem: removed");
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&fs::metadata(t.join("data/same")).expect("stat")), same_ino);
    assert_eq!(work_dirs(&t.join("data")).len(), 1, "staging and backups on the mount");
    run_expect(apply_cmd().arg("-q").arg("rollback").arg("--target").arg(&t), 0);
    assert_eq!(fs::read(t.join("data/file")).expect("read"), b"old data\n");
    assert_eq!(fs::read(t.join("stale")).expect("read"), b"from an old release");
    assert!(!t.join("data/sub").exists());
}
