//! The attacker suite (issue 17): local attacks on a root `ferry-apply` by a user who owns part of
//! the target tree (an app tree owned by its service account), plants things in or around the
//! state directory, or hands the applier hostile files. The attacker's actions run for real as
//! uid 65534 (`setpriv`); races use the `FERRY_PAUSE_AT` failpoint (the applier stops itself with
//! SIGSTOP at a named point, the attacker acts, the test sends SIGCONT).
//!
//! After every attack: nothing outside the target changed (a snapshot of a victim directory:
//! content, mode, owner, existence, directory mtimes), no attacker content or permission landed,
//! the applier finished within a deadline without panicking (exit 101) or dying from a signal, the
//! target is NEW, OLD, or refused with the documented exit code, and it can still be updated
//! afterwards (resume if pending, then a normal apply of the good bundle ends at NEW).
//!
//! These tests need root, `setpriv`, the `nobody` user (uid 65534) and, for one of them, tmpfs
//! mounts: without them they panic saying so (CI runs as root, where all are available).

use ferry_tests::*;
use serde_json::Value;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The attacker's uid and gid (`nobody`).
const NOBODY: u32 = 65534;
/// Exit code: the state directory is not trustworthy (a symlink, not owned by the applier's
/// user, writable by group or others, an ancestor writable by others) or corrupt.
const EXIT_STATE_UNTRUSTED: i32 = 13;
const EXIT_BAD_BUNDLE: i32 = 3;
const EXIT_DRIFT: i32 = 4;
const EXIT_IO: i32 = 6;
const EXIT_LOCKED: i32 = 7;
const EXIT_INBOX_FAILED: i32 = 12;
/// Default deadline of one applier run.
const LIMIT: Duration = Duration::from_secs(60);
/// A fixed time for every entry of the OLD and NEW trees (no incidental mtime steps).
const EPOCH: &str = "@1650000000";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Panic (never skip) when the attacks cannot be set up.
fn require_attack_env() {
    let uid = fs::metadata("/proc/self").map(|m| m.uid()).expect("stat /proc/self");
    assert_eq!(uid, 0, "the attack tests model a root applier and must run as root (CI does)");
    let ok = Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "setpriv (util-linux) is required to run the attacker's actions as uid 65534");
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let nobody = passwd.lines().any(|l| l.split(':').nth(2) == Some("65534"));
    assert!(nobody, "the nobody user (uid 65534) is required as the attacker");
}

/// The result of one finished command.
struct Run {
    what: String,
    code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    took: Duration,
}

impl Run {
    fn text(&self) -> String {
        format!(
            "{} exited {} after {:?}\nstdout: {}\nstderr: {}",
            self.what,
            self.code,
            self.took,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }
    fn output(&self) -> String {
        format!("{}{}", String::from_utf8_lossy(&self.stdout), String::from_utf8_lossy(&self.stderr))
    }
    fn expect(self, code: i32) -> Run {
        assert_eq!(self.code, code, "{}", self.text());
        self
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Wait for `child` (stdout and stderr piped) at most `limit`; kill it and fail on overrun.
/// Fails as well if it died from a signal or panicked (exit 101).
fn finish(mut child: Child, what: &str, limit: Duration) -> Run {
    let start = Instant::now();
    let drain = |s: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut s) = s {
                let _ = s.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?} (killed): it hangs or does unbounded work");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    let Some(code) = status.code() else {
        panic!("{what}: killed by a signal ({status:?})\nstderr: {}", String::from_utf8_lossy(&stderr));
    };
    let r = Run { what: what.to_string(), code, stdout, stderr, took };
    assert_ne!(code, 101, "panicked: {}", r.text());
    r
}

/// Run a command to completion within `limit`.
fn run(cmd: &mut Command, limit: Duration) -> Run {
    let what = format!("{cmd:?}");
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    finish(child, &what, limit)
}

/// An applier stopped at a failpoint. Killed if dropped (a failing test leaves no stopped
/// process behind).
struct Paused {
    child: Option<Child>,
    what: String,
}

impl Paused {
    /// Start `cmd` with `FERRY_PAUSE_AT=failpoint`. `Err` if it finished without reaching it.
    fn start(cmd: &mut Command, failpoint: &str) -> Result<Paused, Run> {
        let what = format!("{cmd:?} (paused at {failpoint})");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = spawn_paused(cmd, failpoint);
        if is_stopped(child.id()) == Some(true) {
            Ok(Paused { child: Some(child), what })
        } else {
            Err(finish(child, &what, LIMIT))
        }
    }

    /// Like `start`, for a run that must reach the failpoint.
    fn must(cmd: &mut Command, failpoint: &str) -> Paused {
        Paused::start(cmd, failpoint)
            .unwrap_or_else(|r| panic!("never reached failpoint {failpoint}, the attack needs it: {}", r.text()))
    }

    /// SIGCONT, then wait at most `limit` from now.
    fn resume(mut self, limit: Duration) -> Run {
        let child = self.child.take().expect("child");
        resume_paused(&child);
        finish(child, &self.what, limit)
    }

    /// SIGKILL (a crash at the failpoint).
    fn crash(mut self) {
        let mut child = self.child.take().expect("child");
        child.kill().expect("kill");
        let _ = child.wait();
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `script` with `sh -c` as uid/gid 65534 without supplementary groups; `Err` with its output
/// if it failed.
fn as_attacker(script: &str) -> Result<(), String> {
    let o = Command::new("setpriv")
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "sh", "-c", script])
        .output()
        .expect("setpriv is required to run the attacker's actions (as uid 65534)");
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    }
}

/// The attacker's actions, which must succeed (else the attack was not set up: a test defect).
fn attacker(script: &str) {
    if let Err(e) = as_attacker(script) {
        panic!("the attacker's actions failed, so the attack could not be set up:\n{script}\n{e}");
    }
}

fn sh(script: &str) {
    let o = Command::new("sh").arg("-c").arg(script).output().expect("sh");
    assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
}

fn chown(p: &Path, uid: u32) {
    sh(&format!("chown -h {uid}:{uid} '{}'", p.display()));
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mkdirs(p: &Path) -> PathBuf {
    fs::create_dir_all(p).expect("mkdir");
    p.to_path_buf()
}

fn write(p: &Path, data: impl AsRef<[u8]>) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).expect("mkdir");
    }
    fs::write(p, data).expect("write");
}

/// `path` is `pattern`, or below it; a pattern ending in `*` matches every path it prefixes.
fn matches(path: &[u8], pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix.as_bytes()),
        None => path == pattern.as_bytes() || (path.starts_with(pattern.as_bytes()) && path[pattern.len()] == b'/'),
    }
}

/// A snapshot without the paths matching one of `ignore` (see [`matches`]).
fn without(mut s: Snapshot, ignore: &[&str]) -> Snapshot {
    s.retain(|k, _| !ignore.iter().any(|i| matches(k, i)));
    s
}

/// A refusal: non-zero, and neither an internal error (1) nor a usage error (2).
fn is_refusal(code: i32) -> bool {
    !matches!(code, 0..=2)
}

fn apply_args(bundle: &Path, target: &Path, trust: &Path) -> Command {
    let mut c = apply_cmd();
    c.arg("apply").arg(bundle).arg("--target").arg(target).arg("--trust").arg(trust);
    c
}

fn status_of(target: &Path, extra: &[&Path]) -> Value {
    let mut c = apply_cmd();
    c.arg("status").arg("--target").arg(target).arg("--json");
    for e in extra {
        c.arg(e);
    }
    run(&mut c, LIMIT).expect(0).json()
}

/// One attack's world: a temp root that uid 65534 can traverse, a key pair, OLD and NEW trees and
/// the good bundle OLD → NEW (version 2), the target (a copy of OLD), the attacker's own
/// directory `att/` (owned by 65534, same filesystem), and `out/world/`, a victim directory
/// outside the target whose snapshot must never change.
struct Lab {
    d: PathBuf,
    old: PathBuf,
    new: PathBuf,
    target: PathBuf,
    att: PathBuf,
    world: PathBuf,
    sk: PathBuf,
    pk: PathBuf,
    bundle: PathBuf,
    old_snap: Snapshot,
    new_snap: Snapshot,
    outside_before: Snapshot,
    _tmp: tempfile::TempDir,
}

impl Lab {
    /// `make(old, new)` fills the trees (as root; chown directories to model service accounts).
    fn new(make: impl FnOnce(&Path, &Path), build_extra: &[&str]) -> Lab {
        require_attack_env();
        let tmp = tempfile::Builder::new().prefix("ferry-attack").tempdir_in("/var/tmp").expect("tempdir");
        let d = tmp.path().to_path_buf();
        chmod(&d, 0o755);
        let (sk, pk) = keygen(&d, "k");
        let att = mkdirs(&d.join("att"));
        chown(&att, NOBODY);
        let world = mkdirs(&d.join("out/world"));
        write(&world.join("victim"), "victim data\n");
        write(&world.join("secret"), "root's secret\n");
        chmod(&world.join("secret"), 0o600);
        let (old, new) = (mkdirs(&d.join("old")), mkdirs(&d.join("new")));
        make(&old, &new);
        stamp(&old);
        stamp(&new);
        let bundle = d.join("b.ferry");
        build(Some(&old), &new, &sk, 2, &bundle, build_extra);
        let target = d.join("target");
        copy_tree(&old, &target);
        let mut lab = Lab {
            old_snap: snapshot(&old, false),
            new_snap: snapshot(&new, false),
            outside_before: Snapshot::new(),
            d,
            old,
            new,
            target,
            att,
            world,
            sk,
            pk,
            bundle,
            _tmp: tmp,
        };
        lab.seal();
        lab
    }

    /// Record the outside world as it is now (call after adding to it).
    fn seal(&mut self) {
        self.outside_before = snapshot(&self.d.join("out"), true);
    }

    fn assert_outside_unchanged(&self) {
        assert_same(&self.outside_before, &snapshot(&self.d.join("out"), true), "outside the target (victim)");
    }

    fn t(&self, rel: &str) -> PathBuf {
        self.target.join(rel)
    }

    /// A key pair the target does not trust.
    fn evil_key(&self) -> (PathBuf, PathBuf) {
        keygen(&self.att, "evil")
    }

    fn apply(&self, bundle: &Path) -> Command {
        apply_args(bundle, &self.target, &self.pk)
    }

    /// The target equals `want`, apart from the paths starting with `ignore`.
    fn assert_target(&self, want: &Snapshot, ignore: &[&str], what: &str) {
        assert_same(&without(want.clone(), ignore), &without(snapshot(&self.target, false), ignore), what);
    }

    fn is_old(&self, ignore: &[&str]) -> bool {
        without(self.old_snap.clone(), ignore) == without(snapshot(&self.target, false), ignore)
    }

    /// The target can still be updated: resume if something is pending, then apply the good
    /// bundle (exit 0) and compare with NEW, apart from `ignore`. `extra`: e.g. `--state-dir S`.
    fn assert_updatable(&self, ignore: &[&str], extra: &[&Path]) {
        let st = status_of(&self.target, extra);
        if !st["pending"].is_null() {
            let mut c = apply_cmd();
            c.arg("resume").arg("--target").arg(&self.target).arg("--bundle").arg(&self.bundle);
            for e in extra {
                c.arg(e);
            }
            run(&mut c, LIMIT).expect(0);
        }
        let mut c = self.apply(&self.bundle);
        for e in extra {
            c.arg(e);
        }
        run(&mut c, LIMIT).expect(0);
        self.assert_target(&self.new_snap, ignore, "after the good apply that follows the attack");
        let st = status_of(&self.target, extra);
        assert!(st["pending"].is_null(), "still pending after a good apply: {st}");
    }
}

/// Every entry of a tree gets the same mtime (only real changes become steps).
fn stamp(t: &Path) {
    sh(&format!("find '{}' -exec touch -h -d {EPOCH} {{}} +", t.display()));
}

/// A small app tree: a program, a config, some data.
fn app_tree(old: &Path, new: &Path) {
    for (t, v) in [(old, "1"), (new, "2")] {
        write(&t.join("bin/tool"), format!("#!/bin/sh\necho tool v{v}\n"));
        chmod(&t.join("bin/tool"), 0o755);
        write(&t.join("etc/app.conf"), format!("setting = {v}\n"));
        write(&t.join("share/readme"), "unchanged\n");
        for i in 0..4 {
            write(&t.join(format!("many/f{i}")), format!("file {i} version {v}\n").repeat(40));
        }
    }
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The id of a bundle (hex), from `inspect --json`.
fn bundle_id(bundle: &Path) -> String {
    let r = run(apply_cmd().arg("inspect").arg(bundle).arg("--json"), LIMIT).expect(0);
    r.json()["bundle_id"].as_str().expect("bundle_id").to_string()
}

// ---------------------------------------------------------------------------------------------
// Attacks
// ---------------------------------------------------------------------------------------------

/// Control, not an attack: the harness's good path works on today's applier (attacker shell as
/// 65534, a pause at a failpoint and SIGCONT, the outside snapshot, updatability), so a failing
/// attack test fails because of its attack, not because of the harness.
#[test]
fn control_harness_without_attack() {
    let lab = Lab::new(app_tree, &[]);
    attacker(&format!("set -e; echo harmless > '{}/note'; test \"$(id -u)\" = {NOBODY}", lab.att.display()));
    assert_eq!(lstat(&lab.att.join("note")).uid(), NOBODY);
    assert!(as_attacker(&format!("touch '{}'", lab.t("bin/tool").display())).is_err(), "uid 65534 wrote a root file");
    let r = Paused::must(&mut lab.apply(&lab.bundle), "stage-synced").resume(LIMIT).expect(0);
    assert!(r.took < LIMIT);
    lab.assert_target(&lab.new_snap, &[], "after a plain apply");
    lab.assert_outside_unchanged();
    lab.assert_updatable(&[], &[]);
    assert!(matches(b"a/b", "a") && matches(b"a", "a") && !matches(b"ab", "a") && matches(b"ab", "a*"));
}

/// Attack 1: `TARGET/.ferry` is a planted symlink to a directory outside the target (holding an
/// unrelated `prev/important/` tree and a `state.tmp` symlink to a victim file). Defence: the
/// applier refuses an untrustworthy state directory (exit 13) before writing anything through it:
/// no lock, no state file, no deletion of `prev/`, the victim is not overwritten.
#[test]
fn attack_01_planted_state_dir_symlink() {
    let mut lab = Lab::new(app_tree, &[]);
    let elsewhere = mkdirs(&lab.world.join("elsewhere"));
    write(&elsewhere.join("prev/important/data"), "important, not ferry's\n");
    symlink("../victim", elsewhere.join("state.tmp")).expect("symlink");
    lab.seal();
    symlink(&elsewhere, lab.t(".ferry")).expect("plant .ferry");

    let (esk, _) = lab.evil_key();
    let evil = lab.d.join("untrusted.ferry");
    build(Some(&lab.old), &lab.new, &esk, 2, &evil, &[]);
    for (what, bundle) in [("untrusted bundle", &evil), ("good bundle", &lab.bundle)] {
        let r = run(&mut lab.apply(bundle), LIMIT);
        for made in ["lock", "state.json", "txn"] {
            assert!(
                fs::symlink_metadata(elsewhere.join(made)).is_err(),
                "{what}: the applier wrote {made} through the planted .ferry symlink: {}",
                r.text()
            );
        }
        lab.assert_outside_unchanged();
        assert_eq!(r.code, EXIT_STATE_UNTRUSTED, "{what}: {}", r.text());
        lab.assert_target(&lab.old_snap, &[], "after the refusal");
    }
    fs::remove_file(lab.t(".ferry")).expect("remove the planted symlink");
    lab.assert_updatable(&[], &[]);
    lab.assert_outside_unchanged();
}

/// Attack 2: the target's owner (a service account) creates `.ferry/trust/evil.pub` before root
/// ever applies, then root applies a bundle signed by the attacker's key with `--trust k.pub`.
/// Defence: a state directory not owned by root (and a target root writable by its owner) is not
/// trusted (exit 13): the planted key never authorises anything, no setuid-root file lands. The
/// documented remedy, `--state-dir` on a root-owned directory, works.
#[test]
fn attack_02_owner_plants_state_dir_with_own_key() {
    let lab = Lab::new(
        |old, new| {
            app_tree(old, new);
            chown(old, NOBODY);
            chown(new, NOBODY);
        },
        &[],
    );
    assert_eq!(lstat(&lab.target).uid(), NOBODY);
    // The attacker's bundle: OLD plus a setuid-root shell.
    let evil_tree = lab.d.join("evil-tree");
    copy_tree(&lab.old, &evil_tree);
    write(&evil_tree.join("bin/su"), "#!/bin/sh\nexec /bin/sh\n");
    chmod(&evil_tree.join("bin/su"), 0o4755);
    stamp(&evil_tree);
    let (esk, epk) = lab.evil_key();
    chown(&epk, NOBODY);
    let evil = lab.d.join("evil.ferry");
    build(Some(&lab.old), &evil_tree, &esk, 2, &evil, &[]);

    attacker(&format!(
        "set -e; mkdir -p '{t}/.ferry/trust'; cp '{epk}' '{t}/.ferry/trust/evil.pub'",
        t = lab.target.display(),
        epk = epk.display()
    ));
    let r = run(&mut lab.apply(&evil), LIMIT);
    let su = lab.t("bin/su");
    if let Ok(m) = fs::symlink_metadata(&su) {
        panic!(
            "attack succeeded: bin/su landed with mode {:o}, owner {} (a key planted by the target's owner was trusted): {}",
            m.mode() & 0o7777,
            m.uid(),
            r.text()
        );
    }
    assert_ne!(r.code, 0, "{}", r.text());
    assert_eq!(r.code, EXIT_STATE_UNTRUSTED, "{}", r.text());
    lab.assert_target(&lab.old_snap, &[], "after the refusal");
    lab.assert_outside_unchanged();

    // The remedy: a state directory the attacker cannot touch.
    let sd = mkdirs(&lab.d.join("root-state"));
    chmod(&sd, 0o700);
    let state_dir = [Path::new("--state-dir"), &sd];
    lab.assert_updatable(&[], &state_dir);
    assert!(fs::symlink_metadata(&su).is_err());
}

/// The tree of attack 3: `bin/` owned by the service account, `bin/tool` (root, 0755) becomes
/// setuid (04755) with the same content: a SetMeta step.
fn setmeta_tree(old: &Path, new: &Path) {
    app_tree(old, new);
    for t in [old, new] {
        write(&t.join("bin/tool"), "#!/bin/sh\necho same tool\n");
        chown(&t.join("bin"), NOBODY);
    }
    chmod(&old.join("bin/tool"), 0o755);
    chmod(&new.join("bin/tool"), 0o4755);
}

/// Lab for attack 3, checking that `bin/tool` is a SetMeta step; returns the attacker's file.
fn setmeta_lab() -> (Lab, PathBuf) {
    let lab = Lab::new(setmeta_tree, &[]);
    let o = run_expect(
        build_cmd()
            .arg("build")
            .arg("--old")
            .arg(&lab.old)
            .arg("--new")
            .arg(&lab.new)
            .arg("--key")
            .arg(&lab.sk)
            .arg("--version")
            .arg("2")
            .arg("--out")
            .arg(lab.d.join("dry.ferry"))
            .arg("--dry-run"),
        0,
    );
    let script = String::from_utf8_lossy(&o.stdout);
    assert!(script.lines().any(|l| l.trim() == "setmeta bin/tool"), "expected a SetMeta step for bin/tool:\n{script}");
    let mine = lab.att.join("tool");
    (lab, mine)
}

/// The attacker's hardlink swap of attack 3: their own file with OLD's content and mode, linked
/// over `bin/tool`.
fn hardlink_swap(lab: &Lab, mine: &Path) -> String {
    format!(
        "set -e; printf '#!/bin/sh\\necho same tool\\n' > '{m}'; chmod 0755 '{m}'; ln -f '{m}' '{t}'",
        m = mine.display(),
        t = lab.t("bin/tool").display()
    )
}

/// Attack 3 checks: the attacker's inode never gets setuid or root; an exit 0 means `bin/tool` is
/// a fresh root-owned 04755 inode.
fn check_setmeta_outcome(lab: &Lab, mine: &Path, r: &Run, refusals: fn(i32) -> bool) {
    let m = lstat(mine);
    assert!(
        m.mode() & 0o7777 == 0o755 && m.uid() == NOBODY,
        "attack succeeded: the attacker's inode now has mode {:o}, owner {}: {}",
        m.mode() & 0o7777,
        m.uid(),
        r.text()
    );
    lab.assert_outside_unchanged();
    let tool = lab.t("bin/tool");
    if r.code == 0 {
        let t = lstat(&tool);
        assert!(!same_inode(&tool, mine), "exit 0 but bin/tool is still the attacker's inode: {}", r.text());
        assert_eq!((t.mode() & 0o7777, t.uid()), (0o4755, 0), "bin/tool: {}", r.text());
        lab.assert_target(&lab.new_snap, &[], "exit 0");
    } else {
        assert!(refusals(r.code), "expected exit 0 or a refusal: {}", r.text());
        lab.assert_target(&lab.old_snap, &["bin/tool"], "after the refusal (only the attacker's swap)");
        // Put OLD's file back (the operator's repair) before checking updatability.
        fs::remove_file(&tool).expect("rm");
        sh(&format!("cp -a '{}' '{}'", lab.old.join("bin/tool").display(), tool.display()));
    }
    lab.assert_updatable(&[], &[]);
}

/// Attack 3: the service account owning `bin/` replaces `bin/tool` (to become setuid root by a
/// SetMeta step) with a hard link to a file of its own with the same content, before the apply.
/// Defence: the base check sees more links than expected (exit 4), or the applier gives the path
/// a fresh inode; it never chmods/chowns the attacker's inode into a setuid-root file.
#[test]
fn attack_03a_setmeta_on_planted_hardlink() {
    let (lab, mine) = setmeta_lab();
    attacker(&hardlink_swap(&lab, &mine));
    assert!(same_inode(&mine, &lab.t("bin/tool")));
    let r = run(&mut lab.apply(&lab.bundle), LIMIT);
    check_setmeta_outcome(&lab, &mine, &r, |c| c == EXIT_DRIFT);
}

/// Attack 3, variant B: the same hardlink swap while the applier is paused after staging
/// (`stage-synced`), past the base check. Defence: the commit re-checks what it changes metadata
/// on (refusal and rollback) or uses a fresh inode; the attacker's inode never gets setuid/root.
#[test]
fn attack_03b_setmeta_hardlink_swapped_during_apply() {
    let (lab, mine) = setmeta_lab();
    let p = Paused::must(&mut lab.apply(&lab.bundle), "stage-synced");
    attacker(&hardlink_swap(&lab, &mine));
    let r = p.resume(LIMIT);
    check_setmeta_outcome(&lab, &mine, &r, is_refusal);
}

/// Unmounts a mount point when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The lab of attacks 4 and 4b: `TARGET/data` is a world-writable sticky tmpfs (another
/// filesystem, so the applier stages in a work directory at its top) holding `run.sh`, which NEW
/// changes and a post-commit hook runs as root, and `notes.txt`. The bundle is built with
/// `extra_build` too. Returns the lab, `data`, its unmount guard and a world-writable directory
/// outside the target for the attacker's marker (the hook writes `hook-out` there).
fn data_on_sticky_tmpfs(extra_build: &[&str]) -> (Lab, PathBuf, Unmount, tempfile::TempDir) {
    let marker_dir = tempfile::Builder::new().prefix("ferry-attack-marker").tempdir_in("/var/tmp").expect("tmp");
    chmod(marker_dir.path(), 0o777);
    let hook_out = marker_dir.path().join("hook-out");
    // The hook's command names the target's path, which Lab::new decides: build trees first with
    // a placeholder, then rebuild the bundle with the hook below.
    let mut lab = Lab::new(
        |old, new| {
            app_tree(old, new);
            for (t, v) in [(old, "1"), (new, "2")] {
                write(&t.join("data/run.sh"), format!("#!/bin/sh\necho v{v} > '{}'\n", hook_out.display()));
                chmod(&t.join("data/run.sh"), 0o755);
                write(&t.join("data/notes.txt"), format!("notes {v}\n").repeat(20));
                write(&t.join("data/keep.txt"), "kept\n");
                chmod(&t.join("data"), 0o1777);
            }
        },
        &[],
    );
    let hook = format!("data/**=sh {}", lab.t("data/run.sh").display());
    fs::remove_file(&lab.bundle).expect("rm");
    let mut args = vec!["--hook", hook.as_str()];
    args.extend_from_slice(extra_build);
    build(Some(&lab.old), &lab.new, &lab.sk, 2, &lab.bundle, &args);
    lab.seal();

    let data = lab.t("data");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=1777,size=16m", "tmpfs"])
        .arg(&data)
        .status()
        .expect("mount");
    assert!(st.success(), "mounting a tmpfs is required for this attack (run as root with mount rights)");
    let unmount = Unmount(data.clone());
    sh(&format!(
        "cp -a '{old}/data/.' '{d}/' && chmod 1777 '{d}' && touch -h -d {EPOCH} '{d}'",
        old = lab.old.display(),
        d = data.display()
    ));
    lab.assert_target(&lab.old_snap, &[], "the target before the attack");
    assert_ne!(lstat(&data).dev(), lstat(&lab.target).dev(), "data/ must be another filesystem");

    (lab, data, unmount, marker_dir)
}

/// The outcome attacks 4 and 4b accept: nothing outside the target changed, and either exit 0
/// with the target NEW (`data/run.sh` the bundle's) or a refusal with the target OLD. Whether
/// the run applied.
fn applied_new_or_refused_old(lab: &Lab, r: &Run) -> bool {
    lab.assert_outside_unchanged();
    if r.code == 0 {
        assert_eq!(
            fs::read(lab.t("data/run.sh")).expect("read"),
            fs::read(lab.new.join("data/run.sh")).expect("read"),
            "data/run.sh is not the bundle's: {}",
            r.text()
        );
        lab.assert_target(&lab.new_snap, &[], "exit 0");
        true
    } else {
        assert!(is_refusal(r.code), "{}", r.text());
        assert!(lab.is_old(&[]), "refused, but the target is not OLD: {}", r.text());
        false
    }
}

/// Attack 4: `TARGET/data` is a world-writable sticky tmpfs (a different filesystem, so the
/// applier stages in a work directory at its top, today `.ferry-work-<16 hex of the bundle id>`).
/// The attacker pre-creates that directory (and guessable variants) with a `stage/` they own,
/// then, while the applier is paused after staging, replaces every staged file with a script of
/// their own. NEW changes `data/run.sh`, which a post-commit hook runs as root. Defence: the work
/// directory is the applier's own (created fresh, root-owned, not adopted): the hook never runs
/// attacker content.
#[test]
fn attack_04_precreated_work_directory() {
    require_attack_env();
    let (lab, data, _unmount, marker_dir) = data_on_sticky_tmpfs(&[]);
    let marker = marker_dir.path().join("pwned");
    let id16 = bundle_id(&lab.bundle)[..16].to_string();
    let full = bundle_id(&lab.bundle);
    let mut pre = String::from("set -e\n");
    for name in [
        format!(".ferry-work-{id16}"),
        format!(".ferry-work-{full}"),
        format!(".ferry-work-{id16}.tmp"),
        format!(".ferry-work-{id16}-1"),
        format!(".ferry-work-{id16}.1"),
        format!(".ferry-work-{id16}.new"),
    ] {
        pre.push_str(&format!(
            "mkdir -p '{d}/{name}/stage' '{d}/{name}/backup'; chmod 0777 '{d}/{name}' '{d}/{name}/stage' '{d}/{name}/backup'\n",
            d = data.display()
        ));
    }
    attacker(&pre);

    let evil = format!("#!/bin/sh\\ntouch '{}'\\n", marker.display());
    let swap = format!(
        "find '{d}' -path '*/.ferry-work-*/stage/*' \\( -type f -o -type l \\) 2>/dev/null | while read -r f; do \
           rm -f \"$f\" 2>/dev/null && printf '{evil}' > \"$f\" && chmod 0755 \"$f\" && echo swapped \"$f\"; \
         done; true",
        d = data.display()
    );
    let r = match Paused::start(&mut lab.apply(&lab.bundle), "stage-synced") {
        Ok(p) => {
            let _ = as_attacker(&swap);
            p.resume(LIMIT)
        }
        Err(r) => r,
    };
    assert!(
        fs::symlink_metadata(&marker).is_err(),
        "attack succeeded: the hook ran the attacker's staged content as root: {}",
        r.text()
    );
    if !applied_new_or_refused_old(&lab, &r) {
        // The operator removes the planted directories.
        sh(&format!("rm -rf '{}'/.ferry-work-*", data.display()));
    }
    lab.assert_updatable(&[], &[]);
    assert!(fs::symlink_metadata(&marker).is_err(), "the attacker's script ran");
}

/// Attack 4b: the same sticky tmpfs, attacked while staging is between frames. Staged files are
/// created as the frames that fill them are read (not all before the first frame), so when the
/// applier stops after its first frame some of `data/`'s staged files exist and others do not.
/// There the attacker plants, at every staged name the work directory could hold, a symlink to a
/// root-owned file outside the target (a create that followed it would overwrite that file) and
/// tries to overwrite the staged files that exist with a script of theirs. Defence: the work
/// directory is root's and closed to others, and staged files are created with `O_EXCL |
/// O_NOFOLLOW`: nothing is planted or swapped, the victim is untouched, the hook runs NEW's script.
#[test]
fn attack_04b_staged_names_planted_between_frames() {
    require_attack_env();
    let victim_dir = tempfile::Builder::new().prefix("ferry-attack-victim").tempdir_in("/var/tmp").expect("tmp");
    chmod(victim_dir.path(), 0o755);
    let victim = victim_dir.path().join("victim");
    write(&victim, "root's file\n");
    // One frame per file: several frames, so the pause after the first is mid-staging.
    let (lab, data, _unmount, marker_dir) = data_on_sticky_tmpfs(&["--solid-size", "0"]);
    let marker = marker_dir.path().join("pwned");

    let evil = format!("#!/bin/sh\\ntouch '{}'\\n", marker.display());
    let plant = format!(
        "hit=0; for d in '{d}'/.ferry-work-*; do for s in \"$d\" \"$d/stage\"; do i=0; while [ $i -le 64 ]; do \
           ln -s '{v}' \"$s/e$i\" 2>/dev/null && echo planted \"$s/e$i\" && hit=1; \
           printf '{evil}' > \"$s/e$i\" 2>/dev/null && echo wrote \"$s/e$i\" && hit=1; \
           i=$((i + 1)); done; done; done; exit $hit",
        d = data.display(),
        v = victim.display()
    );
    let paused = Paused::must(&mut lab.apply(&lab.bundle), "stage-frame");
    let work: Vec<PathBuf> = fs::read_dir(&data)
        .expect("read data")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".ferry-work-")))
        .collect();
    assert!(!work.is_empty(), "no work directory in data/ while staging: the attack has nothing to aim at");
    // Fails (with what it did) if any link or write got into a work directory.
    let planted = as_attacker(&plant);
    let r = paused.resume(LIMIT);
    assert!(planted.is_ok(), "the attacker planted or wrote in a work directory: {}", planted.unwrap_err());
    assert_eq!(fs::read(&victim).expect("read victim"), b"root's file\n", "the victim outside the target was written");
    assert!(
        fs::symlink_metadata(&marker).is_err(),
        "attack succeeded: the attacker's script ran as root: {}",
        r.text()
    );
    applied_new_or_refused_old(&lab, &r);
    lab.assert_updatable(&[], &[]);
}

/// Attack 5: a forged transaction. A state directory that was writable by an attacker receives a
/// complete, staged transaction of a bundle signed by a key the target does not trust. Defence:
/// `resume` (no arguments) and `inbox` re-verify the saved manifest against the trust policy
/// recorded at apply time: exit 3, the forged transaction is cleared, the target stays as it was.
#[test]
fn attack_05_forged_transaction() {
    let lab = Lab::new(app_tree, &[]);
    // A legitimate v1 → v2 apply records the trust policy.
    run(&mut lab.apply(&lab.bundle), LIMIT).expect(0);
    let v3 = lab.d.join("v3");
    copy_tree(&lab.new, &v3);
    write(&v3.join("share/readme"), "version 3\n");
    stamp(&v3);
    let good3 = lab.d.join("good3.ferry");
    build(Some(&lab.new), &v3, &lab.sk, 3, &good3, &[]);
    let evil_tree = lab.d.join("evil-tree");
    copy_tree(&lab.new, &evil_tree);
    write(&evil_tree.join("bin/su"), "#!/bin/sh\nexec /bin/sh\n");
    chmod(&evil_tree.join("bin/su"), 0o4755);
    write(&evil_tree.join("bin/tool"), "#!/bin/sh\necho evil\n");
    stamp(&evil_tree);
    let (esk, epk) = lab.evil_key();
    let evil = lab.d.join("evil.ferry");
    build(Some(&lab.new), &evil_tree, &esk, 3, &evil, &[]);

    // Stage the evil bundle on a scratch copy (trusting E there), crash it once staged, and move
    // its transaction (same filesystem: the staged inodes stay the same) into the real target.
    let forge = |n: usize| {
        let scratch = lab.d.join(format!("scratch{n}"));
        copy_tree(&lab.target, &scratch);
        let p = Paused::must(&mut apply_args(&evil, &scratch, &epk), "commit-step");
        p.crash();
        let txn = scratch.join(".ferry/txn");
        assert!(txn.is_dir(), "no staged transaction in {}", txn.display());
        let dst = lab.t(".ferry/txn");
        if dst.exists() {
            fs::remove_dir_all(&dst).expect("rm txn");
        }
        fs::rename(&txn, &dst).expect("plant the forged transaction");
    };
    let check = |r: &Run| {
        assert!(
            fs::symlink_metadata(lab.t("bin/su")).is_err(),
            "attack succeeded: the forged transaction was completed (bin/su installed): {}",
            r.text()
        );
        lab.assert_target(&lab.new_snap, &[], "after the forged transaction was refused");
        let st = status_of(&lab.target, &[]);
        assert!(st["pending"].is_null(), "the forged transaction is still pending: {st}\n{}", r.text());
        lab.assert_outside_unchanged();
    };

    forge(1);
    let r = run(apply_cmd().arg("resume").arg("--target").arg(&lab.target), LIMIT);
    check(&r);
    assert_eq!(r.code, EXIT_BAD_BUNDLE, "resume of a forged transaction: {}", r.text());

    forge(2);
    let empty = mkdirs(&lab.d.join("empty-inbox"));
    let r =
        run(apply_cmd().arg("inbox").arg(&empty).arg("--target").arg(&lab.target).arg("--trust").arg(&lab.pk), LIMIT);
    check(&r);
    assert!(
        [EXIT_BAD_BUNDLE, EXIT_INBOX_FAILED].contains(&r.code),
        "inbox with a forged transaction pending: {}",
        r.text()
    );

    run(&mut lab.apply(&good3), LIMIT).expect(0);
    assert_same(&snapshot(&v3, false), &snapshot(&lab.target, false), "after the good v2 → v3 apply");
}

/// Attack 6: after a crash once staging is durable, `.ferry/txn/work` is replaced with a symlink
/// to an outside directory holding victim files. Defence: `resume` refuses the untrustworthy
/// state directory (exit 13) and deletes or moves nothing outside; after the operator removes the
/// symlink, the target can be updated.
#[test]
fn attack_06_txn_work_symlinked_outside() {
    let mut lab = Lab::new(app_tree, &[]);
    Paused::must(&mut lab.apply(&lab.bundle), "commit-step").crash();
    let work = lab.t(".ferry/txn/work");
    assert!(lstat(&work).is_dir(), "expected the transaction's work directory at {}", work.display());
    let fake = mkdirs(&lab.world.join("fake-work"));
    for sub in ["stage", "backup"] {
        for i in 0..4 {
            write(&fake.join(format!("{sub}/{i}")), format!("victim {sub} {i}\n"));
        }
    }
    mkdirs(&fake.join("stage/d0"));
    lab.seal();
    fs::rename(&work, lab.d.join("moved-work")).expect("move the real work dir away");
    symlink(&fake, &work).expect("plant txn/work");

    let r = run(apply_cmd().arg("resume").arg("--target").arg(&lab.target), LIMIT);
    lab.assert_outside_unchanged();
    assert!(
        lab.is_old(&[]) || snapshot(&lab.target, false) == lab.new_snap,
        "the target is neither OLD nor NEW: {}",
        r.text()
    );
    assert_eq!(r.code, EXIT_STATE_UNTRUSTED, "resume through a planted txn/work symlink: {}", r.text());

    // The operator removes the planted symlink. The real work directory is gone (moved away
    // above), so the commit can neither finish nor be undone: resume discards the transaction
    // and says so (exit 14); then a good apply must work.
    if fs::symlink_metadata(&work).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(&work).expect("remove the planted symlink");
    }
    let r = run(apply_cmd().arg("resume").arg("--target").arg(&lab.target), LIMIT);
    assert_eq!(r.code, 14, "resume without its work directory: {}", r.text());
    assert!(r.text().contains("discarded"), "{}", r.text());
    lab.assert_updatable(&[], &[]);
    lab.assert_outside_unchanged();
}

/// Attack 7: FIFOs where bundle files are expected: a split bundle whose part `.001` is a FIFO,
/// and a FIFO named `c.ferry` in the inbox. Defence: the applier opens only regular files (no
/// blocking open of a FIFO): `verify` fails fast naming "not a regular file", `inbox` finishes and
/// reports the FIFO entries with a reason.
#[test]
fn attack_07_fifo_as_bundle_part() {
    let lab = Lab::new(
        |old, new| {
            app_tree(old, new);
            write(&new.join("share/blob"), noise(40_000, 7));
        },
        &[],
    );
    let inbox = mkdirs(&lab.d.join("inbox"));
    let b = inbox.join("b.ferry");
    fs::copy(&lab.bundle, &b).expect("cp");
    run_expect(build_cmd().arg("split").arg(&b).arg("--size").arg("16K"), 0);
    let _ = fs::remove_file(&b);
    let p1 = inbox.join("b.ferry.001");
    assert!(inbox.join("b.ferry.000").is_file() && p1.is_file(), "split gave fewer than two parts");
    fs::remove_file(&p1).expect("rm");
    sh(&format!("mkfifo '{}' '{}'", p1.display(), inbox.join("c.ferry").display()));

    let limit = Duration::from_secs(20);
    let r = run(apply_cmd().arg("verify").arg(inbox.join("b.ferry.000")).arg("--trust").arg(&lab.pk), limit);
    assert!([EXIT_BAD_BUNDLE, EXIT_IO].contains(&r.code), "verify of a split bundle with a FIFO part: {}", r.text());
    assert!(
        r.output().contains("not a regular file"),
        "verify should say the part is not a regular file: {}",
        r.text()
    );

    let r =
        run(apply_cmd().arg("inbox").arg(&inbox).arg("--target").arg(&lab.target).arg("--trust").arg(&lab.pk), limit);
    assert!([0, EXIT_INBOX_FAILED].contains(&r.code), "inbox with FIFOs: {}", r.text());
    let out = r.output();
    assert!(
        out.contains("c.ferry") && out.contains("b.ferry") && out.contains("not a regular file"),
        "inbox should report both FIFO entries with a reason: {}",
        r.text()
    );
    lab.assert_target(&lab.old_snap, &[], "after the inbox run");
    lab.assert_outside_unchanged();
    lab.assert_updatable(&[], &[]);
}

/// Attack 8: a directory NEW deletes (`gone/`, owned by the service account) gets a 3,000-deep
/// directory chain after the base check (paused at the first `journal` append), and the applier
/// runs with 256 file descriptors. Defence: deleting and later discarding the kept OLD tree do
/// not recurse with one descriptor per level (no EMFILE, no stack exhaustion) and always finish:
/// apply exits 0 (or 4), nothing stays pending, and the next apply (v2 → v3) succeeds.
#[test]
fn attack_08_deep_chain_in_deleted_directory() {
    let ok = Command::new("perl").arg("-e").arg("1").status().is_ok_and(|s| s.success());
    assert!(ok, "perl is required to build the attacker's 3,000-deep directory chain");
    let lab = Lab::new(
        |old, new| {
            app_tree(old, new);
            write(&old.join("gone/a"), "a\n");
            write(&old.join("gone/sub/b"), "b\n");
            sh(&format!("chown -R {NOBODY}:{NOBODY} '{}'", old.join("gone").display()));
        },
        &[],
    );
    let v3 = lab.d.join("v3");
    copy_tree(&lab.new, &v3);
    write(&v3.join("share/readme"), "version 3\n");
    stamp(&v3);
    let b3 = lab.d.join("b3.ferry");
    build(Some(&lab.new), &v3, &lab.sk, 3, &b3, &[]);
    let low_fd = |bundle: &Path| {
        let mut c = Command::new("prlimit");
        c.arg("--nofile=256").arg("--").arg(bin("ferry-apply"));
        c.arg("apply").arg(bundle).arg("--target").arg(&lab.target).arg("--trust").arg(&lab.pk);
        c.env_remove("FERRY_CRASH_AT")
            .env_remove("FERRY_FAIL_AT")
            .env_remove("FERRY_FAILPOINT_COUNT")
            .env_remove("FERRY_PAUSE_AT");
        c
    };

    let p = Paused::must(&mut low_fd(&lab.bundle), "journal");
    attacker(&format!(
        "perl -e 'chdir \"{}\" or die \"$!\"; for (1..3000) {{ mkdir \"d\" or die \"mkdir: $!\"; chdir \"d\" or die \"chdir: $!\" }}'",
        lab.t("gone").display()
    ));
    let r = p.resume(LIMIT);
    lab.assert_outside_unchanged();
    assert!([0, EXIT_DRIFT].contains(&r.code), "apply with a deep chain in a deleted directory: {}", r.text());
    let st = status_of(&lab.target, &[]);
    assert!(st["pending"].is_null(), "still pending after exit {}: {st}", r.code);
    if r.code == EXIT_DRIFT {
        // Refused: the operator removes the attacker's chain and applies again.
        sh(&format!("rm -rf '{}'", lab.t("gone/d").display()));
        lab.assert_target(&lab.old_snap, &[], "after the refusal");
        let r = run(&mut low_fd(&lab.bundle), LIMIT);
        assert_eq!(r.code, 0, "{}", r.text());
    }
    lab.assert_target(&lab.new_snap, &[], "v2");
    let r = run(&mut low_fd(&b3), LIMIT);
    assert_eq!(r.code, 0, "the next apply (v2 → v3), which discards the kept OLD tree: {}", r.text());
    assert_same(&snapshot(&v3, false), &snapshot(&lab.target, false), "v3");
    let st = status_of(&lab.target, &[]);
    assert!(st["pending"].is_null(), "pending after v3: {st}");
}

/// Attack 11: directory adoption. NEW creates `app/newdir/` (a Mkdir step); the service account
/// owning `app/` creates `app/newdir/` first (while the applier is paused after staging), with a
/// file of its own and a symlink to a victim file. Defence: the applier never adopts a directory
/// it did not create: it refuses (rolling back to OLD, the attacker's directory left as it is,
/// still owned by the attacker) or places its own, root-owned directory without attacker files.
#[test]
fn attack_11_directory_adoption() {
    let lab = Lab::new(
        |old, new| {
            app_tree(old, new);
            for t in [old, new] {
                write(&t.join("app/old.txt"), "old\n");
                chown(&t.join("app"), NOBODY);
            }
            write(&new.join("app/newdir/conf"), "new conf\n");
            chmod(&new.join("app/newdir"), 0o755);
        },
        &[],
    );
    let secret = lab.world.join("secret");
    let p = Paused::must(&mut lab.apply(&lab.bundle), "stage-synced");
    attacker(&format!(
        "set -e; mkdir '{d}'; chmod 0755 '{d}'; echo attacker > '{d}/evil'; ln -s '{s}' '{d}/pw'",
        d = lab.t("app/newdir").display(),
        s = secret.display()
    ));
    let r = p.resume(LIMIT);
    lab.assert_outside_unchanged();
    let nd = lab.t("app/newdir");
    let m = lstat(&nd);
    if r.code == 0 {
        assert!(
            m.uid() == 0 && !nd.join("evil").exists() && fs::symlink_metadata(nd.join("pw")).is_err(),
            "attack succeeded: the applier adopted the attacker's directory (owner {}, attacker files inside): {}",
            m.uid(),
            r.text()
        );
        lab.assert_target(&lab.new_snap, &[], "exit 0");
    } else {
        assert!(is_refusal(r.code), "{}", r.text());
        assert_eq!(
            m.uid(),
            NOBODY,
            "refused, but the attacker's directory was chowned to {} (it was adopted): {}",
            m.uid(),
            r.text()
        );
        assert!(nd.join("evil").is_file(), "the attacker's own file vanished");
        lab.assert_target(&lab.old_snap, &["app/newdir"], "after the refusal (apart from the attacker's dir)");
        let app = lab.t("app");
        let want = lstat(&lab.old.join("app"));
        assert_eq!((lstat(&app).uid(), lstat(&app).mode()), (want.uid(), want.mode()), "app/ after the refusal");
        // The operator removes the attacker's directory.
        sh(&format!("rm -rf '{}'", nd.display()));
    }
    lab.assert_updatable(&[], &[]);
}

/// Attack 13a: the admin keeps a file of their own at `etc/app.conf.ferry-new` beside a locally
/// edited config file. Defence: the applier never overwrites (or, on rollback, deletes) a file it
/// did not create: it refuses naming it (exit 4) or puts the bundle's version under another free
/// name.
#[test]
fn attack_13a_admins_own_ferry_new_file() {
    let lab = Lab::new(app_tree, &["--config-files", "etc/**"]);
    let conf = lab.t("etc/app.conf");
    let mine = lab.t("etc/app.conf.ferry-new");
    write(&conf, "setting = local\n");
    write(&mine, "admin\n");
    let r = run(&mut lab.apply(&lab.bundle), LIMIT);
    assert_eq!(
        fs::read_to_string(&mine).ok().as_deref(),
        Some("admin\n"),
        "attack succeeded: the admin's own {} was overwritten: {}",
        mine.display(),
        r.text()
    );
    lab.assert_outside_unchanged();
    let ignore = ["etc/app.conf*"];
    if r.code == 0 {
        assert_eq!(fs::read_to_string(&conf).expect("read"), "setting = local\n");
        let placed = fs::read_dir(lab.t("etc"))
            .expect("ls")
            .map(|e| e.expect("entry").path())
            .any(|p| p != conf && p != mine && fs::read(&p).ok().as_deref() == Some(&b"setting = 2\n"[..]));
        assert!(placed, "exit 0, but the bundle's version of etc/app.conf is nowhere: {}", r.text());
        let rb = run(apply_cmd().arg("rollback").arg("--target").arg(&lab.target), LIMIT);
        assert_eq!(
            fs::read_to_string(&mine).ok().as_deref(),
            Some("admin\n"),
            "rollback deleted or changed the admin's own file: {}",
            rb.text()
        );
        assert_eq!(rb.code, 0, "{}", rb.text());
    } else {
        assert_eq!(r.code, EXIT_DRIFT, "{}", r.text());
        assert!(r.output().contains("app.conf.ferry-new"), "the refusal should name the admin's file: {}", r.text());
        assert!(lab.is_old(&ignore), "refused, but the target changed");
        // The admin moves their file away; the update then goes through.
        fs::rename(&mine, lab.t("etc/app.conf.admin")).expect("mv");
    }
    lab.assert_updatable(&ignore, &[]);
}

/// Attack 13b: a file the bundle changes is replaced (before the apply) by an 8 GiB sparse file.
/// Defence: the base check compares sizes before hashing: exit 4 in under 5 s.
#[test]
fn attack_13b_base_check_on_huge_sparse_file() {
    let lab = Lab::new(app_tree, &[]);
    let f = lab.t("many/f0");
    fs::remove_file(&f).expect("rm");
    sh(&format!("truncate -s 8G '{}'", f.display()));
    let r = run(&mut lab.apply(&lab.bundle), Duration::from_secs(5));
    assert_eq!(r.code, EXIT_DRIFT, "{}", r.text());
    lab.assert_target(&lab.old_snap, &["many/f0"], "after the refusal");
    lab.assert_outside_unchanged();
    fs::remove_file(&f).expect("rm");
    sh(&format!("cp -a '{}' '{}'", lab.old.join("many/f0").display(), f.display()));
    lab.assert_updatable(&[], &[]);
}

/// Regular files of at least 1 GiB under `dir` (found with `find`, which copes with any depth).
fn huge_files(dir: &Path) -> Vec<String> {
    let o = Command::new("find").arg(dir).args(["-type", "f", "-size", "+1G"]).output().expect("find");
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()
}

/// Attack 13c: NEW copies `a/orig.bin` to `b/copy.bin` (a Copy, no payload); after the base check
/// (paused at the first `journal` append) the service account owning `a/` swaps the copy source
/// for an 8 GiB sparse file. Defence: the copy is bounded by the expected size (and verified):
/// the apply fails within 10 s, no 8 GiB staged file remains, the target is OLD.
#[test]
fn attack_13c_copy_source_swapped_for_huge_sparse_file() {
    let lab = Lab::new(
        |old, new| {
            app_tree(old, new);
            for t in [old, new] {
                write(&t.join("a/orig.bin"), noise(64 * 1024, 3));
                chown(&t.join("a"), NOBODY);
            }
            write(&new.join("b/copy.bin"), noise(64 * 1024, 3));
        },
        &[],
    );
    let info = run(apply_cmd().arg("inspect").arg(&lab.bundle).arg("--json"), LIMIT).expect(0).json();
    assert!(info["counts"]["copies"].as_u64().unwrap_or(0) >= 1, "b/copy.bin should be shipped as a copy: {info}");
    let src = lab.t("a/orig.bin");
    let p = Paused::must(&mut lab.apply(&lab.bundle), "journal");
    attacker(&format!("set -e; rm -f '{s}'; truncate -s 8G '{s}'", s = src.display()));
    let r = p.resume(Duration::from_secs(10));
    assert_ne!(r.code, 0, "{}", r.text());
    let mut huge = huge_files(&lab.target);
    huge.retain(|p| Path::new(p) != src);
    assert!(huge.is_empty(), "8 GiB staged files remain: {huge:?}\n{}", r.text());
    lab.assert_target(&lab.old_snap, &["a/orig.bin"], "after the failure");
    lab.assert_outside_unchanged();
    // The attacker's file is put back by the operator.
    fs::remove_file(&src).expect("rm");
    sh(&format!("cp -a '{}' '{}'", lab.old.join("a/orig.bin").display(), src.display()));
    lab.assert_updatable(&[], &[]);
}

/// Attack 13d: terminal escapes in a file name (`ESC[2J`, CR, BEL). Defence: `inspect`, `plan`
/// and `status` escape control bytes in what they print (stdout and stderr).
#[test]
fn attack_13d_terminal_escapes_in_names() {
    let weird = "weird\x1b[2J\rname\x07.txt";
    let lab = Lab::new(
        |old, new| {
            app_tree(old, new);
            write(&old.join("share").join(weird), "old\n");
            write(&new.join("share").join(weird), "new\n");
        },
        &[],
    );
    // A local edit of that file, so that plan and apply name it as drifted (and status shows the
    // last error).
    write(&lab.t("share").join(weird), "drifted\n");
    let mut outputs = Vec::new();
    outputs.push(run(apply_cmd().arg("inspect").arg(&lab.bundle), LIMIT).expect(0));
    let mut plan = apply_cmd();
    plan.arg("plan").arg(&lab.bundle).arg("--target").arg(&lab.target).arg("--trust").arg(&lab.pk);
    outputs.push(run(&mut plan, LIMIT).expect(EXIT_DRIFT));
    run(&mut lab.apply(&lab.bundle), LIMIT).expect(EXIT_DRIFT);
    outputs.push(run(apply_cmd().arg("status").arg("--target").arg(&lab.target), LIMIT).expect(0));
    for r in &outputs {
        assert!(r.output().contains("weird"), "the file's name should be shown: {}", r.text());
        for (stream, bytes) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
            for (b, name) in [(0x1b, "ESC"), (0x0d, "CR"), (0x07, "BEL")] {
                assert!(
                    !bytes.contains(&b),
                    "{}: raw {name} byte on {stream}: {:?}",
                    r.what,
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }
    fs::remove_file(lab.t("share").join(weird)).expect("rm");
    fs::copy(lab.old.join("share").join(weird), lab.t("share").join(weird)).expect("cp");
    set_mtime(&lab.t("share").join(weird), 1_650_000_000);
    lab.assert_updatable(&[], &[]);
}

/// Attack 13e: two appliers on one target with two different state directories (two locks).
/// Defence: the lock also covers the target itself: the second exits 7 while the first is
/// paused after staging; the first then completes.
#[test]
fn attack_13e_two_appliers_two_state_dirs() {
    let lab = Lab::new(app_tree, &[]);
    let s1 = mkdirs(&lab.d.join("s1"));
    let s2 = mkdirs(&lab.d.join("s2"));
    chmod(&s1, 0o700);
    chmod(&s2, 0o700);
    let first = Paused::must(lab.apply(&lab.bundle).arg("--state-dir").arg(&s1), "stage-synced");
    let second = run(lab.apply(&lab.bundle).arg("--state-dir").arg(&s2), LIMIT);
    assert_eq!(second.code, EXIT_LOCKED, "a second applier with another state dir: {}", second.text());
    lab.assert_target(&lab.old_snap, &[], "while the first applier is paused");
    let r = first.resume(LIMIT);
    assert_eq!(r.code, 0, "{}", r.text());
    lab.assert_target(&lab.new_snap, &[], "after the first applier finished");
    lab.assert_outside_unchanged();
    lab.assert_updatable(&[], &[Path::new("--state-dir"), &s1]);
}

/// `setcap cap_net_raw+ep` as the kernel stores it (VFS_CAP_REVISION_2, permitted bit 13,
/// effective).
const CAP_NET_RAW: &[u8] = &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn set_capability(p: &Path) {
    rustix::fs::lsetxattr(p, "security.capability", CAP_NET_RAW, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr security.capability on {}: {e}", p.display()));
}

fn has_capability(p: &Path) -> bool {
    xattrs_of(p).iter().any(|x| x.name == b"security.capability")
}

/// The app tree with `bin/su`, setuid root, changed.
fn su_tree(old: &Path, new: &Path) {
    app_tree(old, new);
    for (t, v) in [(old, "1"), (new, "2")] {
        write(&t.join("bin/su"), format!("#!/bin/sh\necho su {v}\n"));
        chmod(&t.join("bin/su"), 0o4755);
    }
}

/// Attack 14: a hard link to an OLD privileged program that the update replaces or removes. The
/// user links `bin/su` (setuid root), `bin/ping` (a file capability), `bin/sudo` (setuid and
/// setgid, deleted by NEW) and `libexec/h/helper` (setuid, inside a directory NEW replaces by a
/// file) into a directory of theirs, to keep the old, perhaps vulnerable, programs with their
/// privileges after the update. The kernel refuses such links where `fs.protected_hardlinks` is 1
/// (the common default, and this machine's); the test makes them as root, standing in for a user
/// on a system where it is 0. Defence: every displaced OLD file that still has another link loses
/// its set-id bits and capability (the links stay, harmless); the target is NEW; a rollback
/// brings the OLD inodes back without those privileges (never giving privileges to whatever is
/// at a path by then).
#[test]
fn attack_14_hard_link_keeps_an_old_privileged_program() {
    let lab = Lab::new(
        |old, new| {
            su_tree(old, new);
            for (t, v) in [(old, "1"), (new, "2")] {
                write(&t.join("bin/ping"), format!("#!/bin/sh\necho ping {v}\n"));
                chmod(&t.join("bin/ping"), 0o755);
                set_capability(&t.join("bin/ping"));
            }
            write(&old.join("bin/sudo"), "#!/bin/sh\necho sudo\n");
            chmod(&old.join("bin/sudo"), 0o6755);
            write(&old.join("libexec/h/helper"), "#!/bin/sh\necho helper\n");
            chmod(&old.join("libexec/h/helper"), 0o4711);
            write(&new.join("libexec/h"), "now a file\n");
        },
        &[],
    );
    let links = [("bin/su", "su", 0o4755), ("bin/ping", "ping", 0o755), ("bin/sudo", "sudo", 0o6755)];
    for (rel, name, _) in links {
        fs::hard_link(lab.t(rel), lab.att.join(name)).expect("link");
    }
    fs::hard_link(lab.t("libexec/h/helper"), lab.att.join("helper")).expect("link");
    let r = run(&mut lab.apply(&lab.bundle), LIMIT);
    assert_eq!(r.code, 0, "{}", r.text());
    lab.assert_target(&lab.new_snap, &[], "after the apply");
    lab.assert_outside_unchanged();
    for name in ["su", "ping", "sudo", "helper"] {
        let m = lstat(&lab.att.join(name));
        assert_eq!(m.mode() & 0o6000, 0, "the user's link {name} kept set-id bits: mode {:o}", m.mode() & 0o7777);
        assert_eq!(m.nlink(), 2, "{name}: its other link is the transaction's backup");
        assert!(!has_capability(&lab.att.join(name)), "the user's link {name} kept its capability");
    }
    assert!(has_capability(&lab.t("bin/ping")), "NEW's bin/ping lost its capability");

    // Rollback: the OLD inodes come back; those that had another link keep their privileges
    // dropped (the path might hold a user's file by then: nothing is given privileges there).
    let rb = run(apply_cmd().arg("rollback").arg("--target").arg(&lab.target), LIMIT);
    assert_eq!(rb.code, 0, "{}", rb.text());
    for (rel, name, mode) in links {
        assert!(same_inode(&lab.t(rel), &lab.att.join(name)), "{rel} is not the OLD inode after the rollback");
        assert_eq!(lstat(&lab.t(rel)).mode() & 0o7777, mode & 0o1777, "{rel} after the rollback");
    }
    assert!(!has_capability(&lab.t("bin/ping")), "the capability came back on a doubly linked file");
    // The operator restores them (here: back to OLD) and the target updates again.
    for (rel, _, mode) in links {
        chmod(&lab.t(rel), mode);
    }
    set_capability(&lab.t("bin/ping"));
    chmod(&lab.t("libexec/h/helper"), 0o4711);
    lab.assert_target(&lab.old_snap, &[], "after the rollback and the operator's repair");
    lab.assert_updatable(&[], &[]);
}

/// Attack 14's control: without another link, a displaced privileged file keeps its privileges
/// in the backup (the transaction's own, root-only), so a rollback needs nothing restored.
#[test]
fn attack_14b_displaced_privileged_files_without_links_are_untouched() {
    let lab = Lab::new(su_tree, &[]);
    let before = lstat(&lab.t("bin/su")).ino();
    let r = run(&mut lab.apply(&lab.bundle), LIMIT);
    assert_eq!(r.code, 0, "{}", r.text());
    lab.assert_target(&lab.new_snap, &[], "after the apply");
    let rb = run(apply_cmd().arg("rollback").arg("--target").arg(&lab.target), LIMIT);
    assert_eq!(rb.code, 0, "{}", rb.text());
    lab.assert_target(&lab.old_snap, &[], "after the rollback");
    assert_eq!(lstat(&lab.t("bin/su")).ino(), before, "bin/su is not the OLD inode after the rollback");
}

/// Attack 15 (found by a white-box review): `DirMeta` of a directory whose own metadata does not
/// change (the step only sets its mtime back after the renames in it). The service account
/// owning `app/` renames root's private `app/etc` (0700, a secret inside) into the name
/// `app/bin` right before the `DirMeta app/bin` step. Defence: the base check records every such
/// directory's identity and the step acts on that directory only (exit 4, rolled back), and
/// rollback restores directory metadata only onto recorded directories: root's `etc` keeps 0700.
#[test]
fn attack_15_directory_swapped_in_before_its_dirmeta() {
    let lab = Lab::new(
        |old, new| {
            for t in [old, new] {
                write(&t.join("app/bin/tool"), "#!/bin/sh\necho tool\n");
                chmod(&t.join("app/bin/tool"), 0o755);
                write(&t.join("app/etc/secret.conf"), "db_password=hunter2\n");
                chmod(&t.join("app/etc"), 0o700);
                chown(&t.join("app"), NOBODY);
            }
            write(&new.join("app/bin/tool"), "#!/bin/sh\necho tool v2\n");
        },
        &[],
    );
    let p = Paused::must(&mut lab.apply(&lab.bundle), "commit-step:2");
    attacker(&format!("cd '{}' && mv bin bin.real && mv etc bin", lab.t("app").display()));
    let r = p.resume(LIMIT);
    attacker(&format!("cd '{}' && mv bin etc && mv bin.real bin", lab.t("app").display()));
    let etc = lstat(&lab.t("app/etc"));
    assert_eq!((etc.mode() & 0o7777, etc.uid()), (0o700, 0), "root's etc was changed: {}", r.text());
    assert!(as_attacker(&format!("cat '{}'", lab.t("app/etc/secret.conf").display())).is_err(), "secret readable");
    assert!([0, EXIT_DRIFT].contains(&r.code), "{}", r.text());
    lab.assert_outside_unchanged();
    // The rollback ran while the names were swapped, so its renames inside `app/` (the user's
    // directory, theirs to rearrange) landed where the names pointed: the operator puts OLD's
    // `bin/tool` back before updating again.
    let _ = fs::remove_file(lab.t("app/etc/tool"));
    fs::remove_file(lab.t("app/bin/tool")).expect("rm");
    sh(&format!("cp -a '{}' '{}'", lab.old.join("app/bin/tool").display(), lab.t("app/bin/tool").display()));
    lab.assert_updatable(&[], &[]);
}
