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
