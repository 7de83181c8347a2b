//! Crash safety, proven by killing the real `ferry-apply` (SIGKILL, like a power cut stops it):
//! after every failpoint (each journal append, staged frame and object, commit step, rollback
//! step, ...) and at random instants. After each kill the tree must satisfy guarantee 1 (before
//! the commit: exactly OLD) or 2 (during: every path complete OLD or complete NEW, nothing that
//! exists in both missing, no symlink dangling that does not dangle in OLD or NEW, and the
//! program always starts — it never finds its new binary beside an old library); then `resume`
//! must produce exactly NEW. Also: resume without the bundle once staged, rollback interrupted,
//! and failures that are not crashes (injected I/O error, RLIMIT_FSIZE, read-only mount).

use ferry_tests::*;
use rand::{Rng, SeedableRng};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    old: PathBuf,
    new: PathBuf,
    bundle: PathBuf,
    public: PathBuf,
    old_snap: Snapshot,
    new_snap: Snapshot,
}

fn gcc(args: &[&str], cwd: &Path) {
    let o =
        Command::new("gcc").args(args).current_dir(cwd).output().expect("gcc is required for the ELF ordering test");
    assert!(o.status.success(), "gcc {:?}: {}", args, String::from_utf8_lossy(&o.stderr));
}

/// OLD and NEW trees with a library and the program that needs it (NEW program needs a symbol
/// only the NEW library has), a symlink chain, every kind of type change, hardlinks, deletions,
/// metadata-only changes and many changed files.
fn world() -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let src = dir.join("src");
    fs::create_dir(&src).expect("mkdir");
    fs::write(src.join("lib1.c"), "int demo_v1(void){return 1;}\n").expect("w");
    fs::write(src.join("lib2.c"), "int demo_v1(void){return 1;}\nint demo_v2(void){return 2;}\n").expect("w");
    fs::write(src.join("app1.c"), "int demo_v1(void);\nint main(void){return demo_v1()==1?0:1;}\n").expect("w");
    fs::write(src.join("app2.c"), "int demo_v2(void);\nint main(void){return demo_v2()==2?0:1;}\n").expect("w");
    gcc(&["-shared", "-fPIC", "-Wl,-soname,libdemo.so.1", "-o", "libdemo.so.1.0", "lib1.c"], &src);
    gcc(&["-shared", "-fPIC", "-Wl,-soname,libdemo.so.1", "-o", "libdemo.so.1.1", "lib2.c"], &src);
    gcc(&["-o", "app1", "app1.c", "-L.", "-l:libdemo.so.1.0", "-Wl,-rpath,$ORIGIN/../lib"], &src);
    gcc(&["-o", "app2", "app2.c", "-L.", "-l:libdemo.so.1.1", "-Wl,-rpath,$ORIGIN/../lib"], &src);

    let old = dir.join("old");
    let new = dir.join("new");
    for t in [&old, &new] {
        for d in ["bin", "lib", "etc", "data", "share", "many"] {
            fs::create_dir_all(t.join(d)).expect("mkdir");
        }
    }
    // Library and program.
    fs::copy(src.join("app1"), old.join("bin/app")).expect("cp");
    fs::copy(src.join("libdemo.so.1.0"), old.join("lib/libdemo.so.1.0")).expect("cp");
    symlink("libdemo.so.1.0", old.join("lib/libdemo.so.1")).expect("ln");
    fs::copy(src.join("app2"), new.join("bin/app")).expect("cp");
    fs::copy(src.join("libdemo.so.1.1"), new.join("lib/libdemo.so.1.1")).expect("cp");
    symlink("libdemo.so.1.1", new.join("lib/libdemo.so.1")).expect("ln");
    // Symlink chain a -> b -> c becomes a -> b2 -> c2.
    symlink("b", old.join("etc/a")).expect("ln");
    symlink("c", old.join("etc/b")).expect("ln");
    fs::write(old.join("etc/c"), "config v1\n").expect("w");
    symlink("b2", new.join("etc/a")).expect("ln");
    symlink("c2", new.join("etc/b2")).expect("ln");
    fs::write(new.join("etc/c2"), "config v2\n").expect("w");
    // Type changes.
    fs::write(old.join("data/x"), "file that becomes a dir").expect("w");
    fs::create_dir(new.join("data/x")).expect("mkdir");
    fs::write(new.join("data/x/child"), "child").expect("w");
    fs::create_dir(old.join("data/y")).expect("mkdir");
    fs::write(old.join("data/y/inner"), "inner").expect("w");
    fs::write(new.join("data/y"), "dir that became a file").expect("w");
    symlink("x", old.join("data/z")).expect("ln");
    fs::create_dir(new.join("data/z")).expect("mkdir");
    fs::create_dir(old.join("data/w")).expect("mkdir");
    fs::write(old.join("data/w/f"), "f").expect("w");
    symlink("x", new.join("data/w")).expect("ln");
    // Hardlinks with changed content; a deleted subtree; a new deep subtree.
    fs::write(old.join("share/h1"), "linked v1").expect("w");
    fs::hard_link(old.join("share/h1"), old.join("share/h2")).expect("ln");
    fs::write(new.join("share/h1"), "linked v2").expect("w");
    fs::hard_link(new.join("share/h1"), new.join("share/h2")).expect("ln");
    fs::create_dir_all(old.join("gone/sub")).expect("mkdir");
    fs::write(old.join("gone/sub/f"), "bye").expect("w");
    symlink("sub/f", old.join("gone/link")).expect("ln");
    fs::create_dir_all(new.join("fresh/deep/er")).expect("mkdir");
    fs::write(new.join("fresh/deep/er/file"), "new").expect("w");
    // Many changed files, one metadata-only change, one unchanged.
    for i in 0..8 {
        fs::write(old.join(format!("many/f{i}")), format!("old content {i}\n").repeat(50)).expect("w");
        fs::write(new.join(format!("many/f{i}")), format!("new content {i}\n").repeat(50)).expect("w");
    }
    fs::write(old.join("share/mode"), "same").expect("w");
    fs::write(new.join("share/mode"), "same").expect("w");
    Command::new("chmod").arg("600").arg(new.join("share/mode")).status().expect("chmod");
    fs::write(old.join("share/same"), "same").expect("w");
    fs::write(new.join("share/same"), "same").expect("w");
    for t in [&old, &new] {
        let st = Command::new("sh")
            .arg("-c")
            .arg("find . -exec touch -h -d @1650000000 {} +")
            .current_dir(t)
            .status()
            .expect("touch");
        assert!(st.success());
    }
    let (secret, public) = keygen(&dir, "k");
    let bundle = dir.join("b.ferry");
    build(Some(&old), &new, &secret, 2, &bundle, &[]);
    let old_snap = snapshot(&old, true);
    let new_snap = snapshot(&new, true);
    World { _tmp: tmp, dir, old, new, bundle, public, old_snap, new_snap }
}

impl World {
    fn fresh_target(&self, name: &str) -> PathBuf {
        let t = self.dir.join(name);
        if t.exists() {
            fs::remove_dir_all(&t).expect("rm");
        }
        copy_tree(&self.old, &t);
        t
    }

    fn apply_cmd(&self, bundle: &Path, target: &Path) -> Command {
        let mut c = apply_cmd();
        c.arg("-q").arg("apply").arg(bundle).arg("--target").arg(target).arg("--trust").arg(&self.public);
        c
    }

    fn resume(&self, target: &Path) {
        run_expect(apply_cmd().arg("-q").arg("resume").arg("--target").arg(target), 0);
    }

    /// Guarantee 2 (which implies nothing about guarantee 1), plus the program starts.
    fn check_mixed(&self, target: &Path, what: &str) {
        let cur = snapshot(target, false);
        let strip = |n: &Node| {
            let mut n = n.clone();
            n.group = None;
            if n.kind == "dir" {
                n = Node {
                    kind: "dir",
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    mtime_ns: None,
                    content: None,
                    link: None,
                    rdev: 0,
                    group: None,
                    xattrs: Vec::new(),
                };
            }
            n
        };
        let mut keys: Vec<&Vec<u8>> = self.old_snap.keys().chain(self.new_snap.keys()).chain(cur.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let name = String::from_utf8_lossy(k);
            let c = cur.get(k).map(strip);
            let o = self.old_snap.get(k).map(strip);
            let n = self.new_snap.get(k).map(strip);
            match (&o, &n, &c) {
                (None, None, Some(_)) => panic!("{what}: {name} exists but is in neither OLD nor NEW"),
                (Some(_), Some(_), None) => panic!("{what}: {name} is missing, but exists in OLD and NEW"),
                (_, _, Some(c)) if Some(c) != o.as_ref() && Some(c) != n.as_ref() => {
                    panic!("{what}: {name} is neither its OLD nor its NEW version: {c:?}")
                }
                _ => {}
            }
            if c.as_ref().is_some_and(|c| c.kind == "symlink") {
                let p = target.join(std::ffi::OsStr::new(&*name));
                let dangles = |root: &Path| fs::metadata(root.join(std::ffi::OsStr::new(&*name))).is_err();
                if fs::metadata(&p).is_err() && !dangles(&self.old) && !dangles(&self.new) {
                    panic!("{what}: symlink {name} dangles, and it dangles in neither OLD nor NEW");
                }
            }
        }
        let st = Command::new(target.join("bin/app")).status().expect("run app");
        assert!(st.success(), "{what}: bin/app does not start: its library is not there in the version it needs");
    }
}

fn count_failpoints(w: &World, cmd: &mut Command) -> Vec<String> {
    let log = w.dir.join("failpoints.log");
    let _ = fs::remove_file(&log);
    run_expect(cmd.env("FERRY_FAILPOINT_COUNT", &log), 0);
    fs::read_to_string(&log)
        .expect("failpoint log")
        .lines()
        .map(|l| l.split_once(' ').map(|x| x.1).unwrap_or("").to_string())
        .collect()
}

fn killed(o: &std::process::Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

#[test]
fn crash_at_every_failpoint_then_resume() {
    let w = world();
    let t = w.fresh_target("count");
    let names = count_failpoints(&w, &mut w.apply_cmd(&w.bundle, &t));
    assert_same(&snapshot(&t, true), &w.new_snap, "uninterrupted apply");
    let first_commit = names.iter().position(|n| n == "commit-step").expect("commit steps") + 1;
    let staged = names.iter().position(|n| n == "stage-synced").expect("staging sync") + 2; // the Staged journal append
    assert!(names.len() > 40, "too few failpoints: {names:?}");
    for k in 1..=names.len() {
        let t = w.fresh_target("t");
        let bundle = w.dir.join("copy.ferry");
        fs::copy(&w.bundle, &bundle).expect("cp");
        let o = w.apply_cmd(&bundle, &t).env("FERRY_CRASH_AT", k.to_string()).output().expect("spawn");
        assert!(killed(&o), "crash point {k} ({}) did not kill: {:?}", names[k - 1], o);
        let what = format!("after crash at point {k} ({})", names[k - 1]);
        if k < first_commit {
            assert_same(&snapshot(&t, true), &w.old_snap, &format!("{what}: guarantee 1"));
        }
        w.check_mixed(&t, &what);
        run_expect(apply_cmd().arg("status").arg("--json").arg("--target").arg(&t), 0);
        if k >= staged {
            // Guarantee 3: once staging is durable the bundle is not needed.
            fs::remove_file(&bundle).expect("rm bundle");
        }
        if k % 2 == 0 || k >= staged {
            w.resume(&t);
        } else {
            // Re-running apply with the same bundle resumes too.
            run_expect(&mut w.apply_cmd(&bundle, &t), 0);
        }
        assert_same(&snapshot(&t, true), &w.new_snap, &format!("{what}: after resume"));
        assert!(!t.join(".ferry/txn").exists(), "{what}: transaction left behind");
    }
}

#[test]
fn crash_at_random_instants_then_resume() {
    let w = world();
    let trials: usize = std::env::var("FERRY_CRASH_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    // How long an apply takes: the fastest of three, since the first run of a freshly built
    // binary can take ten times as long as the next (150-500 ms against 15 ms for a debug build
    // here), which would put most kills after the end.
    let full = (0..3)
        .map(|i| {
            let t = w.fresh_target(&format!("timing{i}"));
            let t0 = Instant::now();
            run_expect(&mut w.apply_cmd(&w.bundle, &t), 0);
            t0.elapsed()
        })
        .min()
        .unwrap_or_default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut interrupted = 0;
    for trial in 0..trials {
        let t = w.fresh_target("t");
        let mut child = w.apply_cmd(&w.bundle, &t).spawn().expect("spawn");
        let wait = full.mul_f64(rng.gen_range(0.0..1.1));
        std::thread::sleep(wait);
        let _ = child.kill();
        let st = child.wait().expect("wait");
        if st.code().is_none() {
            interrupted += 1;
        }
        let what = format!("random trial {trial} (killed after {wait:?})");
        w.check_mixed(&t, &what);
        // Killed before the transaction began, there is nothing to resume: the next run of
        // apply (as inbox would do) finishes, whichever case it is.
        w.resume(&t);
        run_expect(&mut w.apply_cmd(&w.bundle, &t), 0);
        assert_same(&snapshot(&t, true), &w.new_snap, &format!("{what}: after resume"));
    }
    assert!(interrupted > trials / 4, "only {interrupted} of {trials} trials were interrupted");
}

#[test]
fn another_bundle_while_one_is_pending_is_refused() {
    let w = world();
    let t = w.fresh_target("t");
    let o = w.apply_cmd(&w.bundle, &t).env("FERRY_CRASH_AT", "12").output().expect("spawn");
    assert!(killed(&o));
    let other = w.dir.join("other.ferry");
    let (secret, _) = (w.dir.join("k.secret"), ());
    build(Some(&w.old), &w.old, &secret, 3, &other, &[]);
    let o = run_expect(&mut w.apply_cmd(&other, &t), 9);
    assert!(String::from_utf8_lossy(&o.stderr).contains("resume"), "{o:?}");
    w.resume(&t);
    assert_same(&snapshot(&t, true), &w.new_snap, "after resume");
}

#[test]
fn rollback_after_apply_survives_crashes() {
    let w = world();
    let t = w.fresh_target("count");
    run_expect(&mut w.apply_cmd(&w.bundle, &t), 0);
    let mut rb = apply_cmd();
    rb.arg("-q").arg("rollback").arg("--target").arg(&t);
    let names = count_failpoints(&w, &mut rb);
    assert_same(&snapshot(&t, true), &w.old_snap, "rollback");
    run_expect(apply_cmd().arg("-q").arg("rollback").arg("--target").arg(&t), 2);
    for k in 1..=names.len() {
        let t = w.fresh_target("t");
        run_expect(&mut w.apply_cmd(&w.bundle, &t), 0);
        let o = apply_cmd()
            .arg("-q")
            .arg("rollback")
            .arg("--target")
            .arg(&t)
            .env("FERRY_CRASH_AT", k.to_string())
            .output()
            .expect("spawn");
        assert!(killed(&o), "rollback crash point {k} did not kill");
        let what = format!("rollback crashed at point {k} ({})", names[k - 1]);
        w.check_mixed(&t, &what);
        w.resume(&t);
        assert_same(&snapshot(&t, true), &w.old_snap, &format!("{what}: after resume"));
        // The target can be updated again.
        run_expect(&mut w.apply_cmd(&w.bundle, &t), 0);
        assert_same(&snapshot(&t, true), &w.new_snap, &format!("{what}: re-apply"));
    }
}

#[test]
fn injected_commit_failure_rolls_back() {
    let w = world();
    let t = w.fresh_target("count");
    let names = count_failpoints(&w, &mut w.apply_cmd(&w.bundle, &t));
    let commit_points: Vec<usize> =
        names.iter().enumerate().filter(|(_, n)| *n == "commit-step").map(|(i, _)| i + 1).collect();
    let picks = [commit_points[0], commit_points[commit_points.len() / 2], commit_points[commit_points.len() - 1]];
    for k in picks {
        let t = w.fresh_target("t");
        let o = run_expect(w.apply_cmd(&w.bundle, &t).env("FERRY_FAIL_AT", k.to_string()), 6);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("injected failure"), "{err}");
        assert_same(&snapshot(&t, true), &w.old_snap, &format!("failure at commit point {k}: rolled back"));
        assert!(!t.join(".ferry/txn").exists());
        run_expect(&mut w.apply_cmd(&w.bundle, &t), 0);
        assert_same(&snapshot(&t, true), &w.new_snap, "apply after a rolled-back failure");
    }
    // A failure while staging: staging removed, target unchanged.
    let stage_point = names.iter().position(|n| n == "stage-object").expect("stage-object") + 1;
    let t = w.fresh_target("t");
    run_expect(w.apply_cmd(&w.bundle, &t).env("FERRY_FAIL_AT", stage_point.to_string()), 6);
    assert_same(&snapshot(&t, true), &w.old_snap, "failure while staging");
    assert!(!t.join(".ferry/txn").exists(), "staging area not removed");
}

#[test]
fn file_size_limit_while_staging_leaves_target_unchanged() {
    let w = world();
    let t = w.fresh_target("t");
    // RLIMIT_FSIZE just above the manifest's size (the state directory must hold it), below the
    // library's: writing the staged library fails with EFBIG (SIGXFSZ ignored).
    let o = run_expect(apply_cmd().arg("inspect").arg("--json").arg(&w.bundle), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    // bash's `ulimit -f` counts 1024-byte blocks.
    let blocks = v["sizes"]["manifest_bytes"].as_u64().expect("manifest_bytes") / 1024 + 2;
    assert!(fs::metadata(w.new.join("lib/libdemo.so.1.1")).expect("lib").len() > blocks * 1024);
    let script = format!(
        "trap '' XFSZ; ulimit -f {blocks}; exec {} -q apply {} --target {} --trust {}",
        bin("ferry-apply").display(),
        w.bundle.display(),
        t.display(),
        w.public.display()
    );
    let o = Command::new("bash").arg("-c").arg(&script).output().expect("bash");
    assert_eq!(o.status.code(), Some(11), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("File too large"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(&snapshot(&t, true), &w.old_snap, "RLIMIT_FSIZE");
    assert!(!t.join(".ferry/txn").exists());
}

#[test]
fn many_directories_under_a_low_open_file_limit() {
    // A bundle that touches more directories than the applier may hold open: with a soft
    // RLIMIT_NOFILE of 512 (a default soft limit is 1024), 700 directories each with a changed
    // file must still stage, commit and verify (the applier's directory handle caches are bounded).
    let d = tempfile::tempdir().expect("tempdir");
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    for i in 0..700 {
        for (root, text) in [(&old, "old"), (&new, "new")] {
            let dir = root.join(format!("d{:02}/s{i:03}", i % 10));
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(dir.join("f"), format!("{text} {i}\n")).expect("write");
        }
    }
    let (secret, public) = keygen(d.path(), "k");
    let bundle = d.path().join("b.ferry");
    build(Some(&old), &new, &secret, 2, &bundle, &[]);
    let t = d.path().join("t");
    copy_tree(&old, &t);
    let script = format!(
        "ulimit -n 512 && exec {} -q apply {} --target {} --trust {}",
        bin("ferry-apply").display(),
        bundle.display(),
        t.display(),
        public.display()
    );
    let o = Command::new("bash").arg("-c").arg(&script).output().expect("bash");
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(&snapshot(&t, false), &snapshot(&new, false), "applied under RLIMIT_NOFILE 512");
}

#[test]
fn read_only_mount_during_commit_leaves_target_unchanged() {
    let w = world();
    let t = w.fresh_target("t");
    // State on another (writable) place; the target's `many` directory read-only via a bind mount.
    let ro = t.join("many");
    let ok = Command::new("mount").arg("--bind").arg(&ro).arg(&ro).status().map(|s| s.success()).unwrap_or(false)
        && Command::new("mount")
            .args(["-o", "remount,ro,bind"])
            .arg(&ro)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !ok {
        let _ = Command::new("umount").arg(&ro).status();
        require_root("it makes a read-only bind mount");
        panic!("a read-only bind mount failed as root (is mount(8) installed, are mounts allowed here?)");
    }
    let state = w.dir.join("state");
    let o = w.apply_cmd(&w.bundle, &t).arg("--state-dir").arg(&state).output().expect("spawn");
    let _ = Command::new("umount").arg(&ro).status();
    assert_ne!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same(&snapshot(&t, true), &w.old_snap, "read-only mount");
    assert!(!state.join("txn").exists());
    let _ = Duration::from_secs(0);
}

fn commit_points(names: &[String]) -> Vec<usize> {
    names.iter().enumerate().filter(|(_, n)| *n == "commit-step").map(|(i, _)| i + 1).collect()
}

/// Files of `many/` whose OLD version is kept in a staging slot of the completed transaction.
fn old_in_stage(t: &Path) -> usize {
    fs::read_dir(t.join(".ferry/prev/work/stage"))
        .expect("staging area")
        .filter(|e| fs::read(e.as_ref().expect("entry").path()).is_ok_and(|b| b.starts_with(b"old content")))
        .count()
}

fn resume_cmd(t: &Path) -> Command {
    let mut c = apply_cmd();
    c.arg("-q").arg("resume").arg("--target").arg(t);
    c
}

/// Crash in the middle of the commit, then crash the resume at each of its commit steps: the
/// next resume tells steps exchanged by the first run (the live path holds the staged inode),
/// by the interrupted resume, and not yet done apart, and finishes to exactly NEW.
#[test]
fn crash_during_commit_then_crash_during_resume() {
    let w = world();
    let t = w.fresh_target("count");
    let names = count_failpoints(&w, &mut w.apply_cmd(&w.bundle, &t));
    let cp = commit_points(&names);
    let mid = cp[cp.len() / 2];
    let crash_mid = |t: &Path| {
        let o = w.apply_cmd(&w.bundle, t).env("FERRY_CRASH_AT", mid.to_string()).output().expect("spawn");
        assert!(killed(&o), "crash point {mid} did not kill");
    };
    let t = w.fresh_target("count2");
    crash_mid(&t);
    let rnames = count_failpoints(&w, &mut resume_cmd(&t));
    assert_same(&snapshot(&t, true), &w.new_snap, "resume after a crash mid-commit");
    assert_eq!(old_in_stage(&t), 8, "the exchange protocol keeps each OLD file in its staging slot");
    let rcp = commit_points(&rnames);
    assert!(rcp.len() == cp.len(), "resume runs the whole script: {rnames:?}");
    for k in rcp {
        let t = w.fresh_target("t");
        crash_mid(&t);
        let o = resume_cmd(&t).env("FERRY_CRASH_AT", k.to_string()).output().expect("spawn");
        assert!(killed(&o), "resume crash point {k} did not kill");
        let what = format!("crash at commit point {mid}, then resume crashed at point {k}");
        w.check_mixed(&t, &what);
        w.resume(&t);
        assert_same(&snapshot(&t, true), &w.new_snap, &format!("{what}: after resume"));
        run_expect(apply_cmd().arg("-q").arg("rollback").arg("--target").arg(&t), 0);
        assert_same(&snapshot(&t, true), &w.old_snap, &format!("{what}: rollback"));
    }
}

/// A transaction staged by an older ferry-apply has no `staged-ids.cbor`: its `Place` steps
/// over OLD entries hard-link a backup and rename (the protocol before the exchange). Resume,
/// a crash during that resume, and rollback still work.
#[test]
fn transaction_without_staged_ids_uses_link_and_rename() {
    let w = world();
    let t = w.fresh_target("count");
    let names = count_failpoints(&w, &mut w.apply_cmd(&w.bundle, &t));
    let first = commit_points(&names)[0];
    // Staged is durable, no step has run: make it look like an older applier's transaction.
    let pending = |name: &str| {
        let t = w.fresh_target(name);
        let o = w.apply_cmd(&w.bundle, &t).env("FERRY_CRASH_AT", first.to_string()).output().expect("spawn");
        assert!(killed(&o), "crash point {first} did not kill");
        fs::remove_file(t.join(".ferry/txn/staged-ids.cbor")).expect("staged-ids.cbor written before Staged");
        t
    };
    let t = pending("count2");
    let rnames = count_failpoints(&w, &mut resume_cmd(&t));
    assert_same(&snapshot(&t, true), &w.new_snap, "legacy resume");
    assert_eq!(old_in_stage(&t), 0, "the link protocol keeps OLD files in backup/, not in the staging slots");
    let rcp = commit_points(&rnames);
    for k in [rcp[rcp.len() / 3], rcp[rcp.len() / 2], rcp[rcp.len() - 1]] {
        let t = pending("t");
        let o = resume_cmd(&t).env("FERRY_CRASH_AT", k.to_string()).output().expect("spawn");
        assert!(killed(&o), "legacy resume crash point {k} did not kill");
        let what = format!("legacy resume crashed at point {k}");
        w.check_mixed(&t, &what);
        w.resume(&t);
        assert_same(&snapshot(&t, true), &w.new_snap, &format!("{what}: after resume"));
        run_expect(apply_cmd().arg("-q").arg("rollback").arg("--target").arg(&t), 0);
        assert_same(&snapshot(&t, true), &w.old_snap, &format!("{what}: rollback"));
    }
}

/// Rollback restores a replaced file's OLD inode from its staging slot even if the NEW file was
/// replaced or removed after the apply (the path no longer holds the staged inode).
#[test]
fn rollback_restores_files_replaced_or_removed_after_the_apply() {
    let w = world();
    let t = w.fresh_target("t");
    run_expect(&mut w.apply_cmd(&w.bundle, &t), 0);
    fs::write(t.join("many/f0.tmp"), "edited by hand").expect("w");
    fs::rename(t.join("many/f0.tmp"), t.join("many/f0")).expect("mv");
    fs::remove_file(t.join("many/f1")).expect("rm");
    run_expect(apply_cmd().arg("-q").arg("rollback").arg("--target").arg(&t), 0);
    assert_same(&snapshot(&t, true), &w.old_snap, "rollback after local changes");
}

/// On a filesystem without `RENAME_EXCHANGE` (forced with `FERRY_NO_EXCHANGE=1`), replacing a
/// file falls back to a hard-link backup and a rename: crashes at every commit step resume
/// (with or without the fallback) to NEW, and rollback restores OLD.
#[test]
fn without_rename_exchange_the_link_fallback_resumes_and_rolls_back() {
    let w = world();
    let t = w.fresh_target("count");
    let names = count_failpoints(&w, w.apply_cmd(&w.bundle, &t).env("FERRY_NO_EXCHANGE", "1"));
    assert_same(&snapshot(&t, true), &w.new_snap, "apply with the fallback");
    assert_eq!(old_in_stage(&t), 0, "the fallback keeps OLD files in backup/");
    run_expect(apply_cmd().arg("-q").arg("rollback").arg("--target").arg(&t), 0);
    assert_same(&snapshot(&t, true), &w.old_snap, "rollback of an apply with the fallback");
    for (n, k) in commit_points(&names).into_iter().enumerate() {
        let t = w.fresh_target("t");
        let o = w
            .apply_cmd(&w.bundle, &t)
            .env("FERRY_NO_EXCHANGE", "1")
            .env("FERRY_CRASH_AT", k.to_string())
            .output()
            .expect("spawn");
        assert!(killed(&o), "crash point {k} did not kill");
        let what = format!("fallback, crash at commit point {k}");
        w.check_mixed(&t, &what);
        let mut r = resume_cmd(&t);
        if n % 2 == 0 {
            r.env("FERRY_NO_EXCHANGE", "1");
        }
        run_expect(&mut r, 0);
        assert_same(&snapshot(&t, true), &w.new_snap, &format!("{what}: after resume"));
        run_expect(apply_cmd().arg("-q").arg("rollback").arg("--target").arg(&t), 0);
        assert_same(&snapshot(&t, true), &w.old_snap, &format!("{what}: rollback"));
    }
}
