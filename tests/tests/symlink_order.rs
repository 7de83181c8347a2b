//! Symlinks resolve mid-commit on a merged-/usr tree (bundle-format.md §6 rule 4): `bin`,
//! `sbin` and (in NEW) `lib` are symlinks into `usr`, and links reach their targets through
//! them, absolutely and relatively, with `..` after a symlink. The real `ferry-apply` is killed
//! at every failpoint; each time, every symlink in the target that has its NEW target and
//! resolves in NEW (and, if the bundle does not place it, in OLD too) must resolve — with our own
//! resolver, absolute links from the target root, never leaving it. Resume then gives exactly
//! NEW. A tree with symlink cycles builds and applies.

use ferry_tests::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Relative path (bytes) → link target, for every symlink under `root` (not `.ferry`).
fn links(root: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = fs::read_dir(root.join(&rel)) else { continue };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            if r.as_os_str() == ".ferry" {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_symlink() {
                let t = fs::read_link(root.join(&r)).expect("readlink");
                out.insert(r.as_os_str().as_bytes().to_vec(), t.as_os_str().as_bytes().to_vec());
            } else if ft.is_dir() {
                stack.push(r);
            }
        }
    }
    out
}

/// Whether the symlink at `rel` under `root` resolves as the kernel would resolve it if `root`
/// were `/`: absolute targets from `root`, `..` after symlinks, `..` at `root` stays there, at
/// most 40 links. Only `lstat` and `readlink` of paths made of real directories under `root`.
fn resolves(root: &Path, rel: &[u8]) -> bool {
    let mut budget = 40u32;
    let mut dir: Vec<Vec<u8>> = rel.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
    dir.pop();
    let Ok(t) = fs::read_link(join(root, rel_components(rel))) else { return false };
    budget -= 1;
    walk(root, dir, t.as_os_str().as_bytes(), &mut budget).is_some()
}

fn rel_components(rel: &[u8]) -> Vec<Vec<u8>> {
    rel.split(|&b| b == b'/').map(<[u8]>::to_vec).collect()
}

fn join(root: &Path, comps: Vec<Vec<u8>>) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in comps {
        p.push(std::ffi::OsStr::from_bytes(&c));
    }
    p
}

fn walk(root: &Path, mut cur: Vec<Vec<u8>>, target: &[u8], budget: &mut u32) -> Option<Vec<Vec<u8>>> {
    if target.is_empty() {
        return None;
    }
    let rel = match target.strip_prefix(b"/") {
        Some(r) => {
            cur.clear();
            r
        }
        None => target,
    };
    for c in rel.split(|&b| b == b'/') {
        if !fs::symlink_metadata(join(root, cur.clone())).ok()?.is_dir() {
            return None;
        }
        match c {
            b"" | b"." => {}
            b".." => {
                cur.pop();
            }
            name => {
                cur.push(name.to_vec());
                let p = join(root, cur.clone());
                let m = fs::symlink_metadata(&p).ok()?;
                if m.file_type().is_symlink() {
                    *budget = budget.checked_sub(1)?;
                    let t = fs::read_link(&p).ok()?;
                    cur.pop();
                    cur = walk(root, cur, t.as_os_str().as_bytes(), budget)?;
                }
            }
        }
    }
    Some(cur)
}

struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    old: PathBuf,
    new: PathBuf,
    bundle: PathBuf,
    secret: PathBuf,
    public: PathBuf,
    new_snap: Snapshot,
    /// Symlinks of NEW that must resolve whenever present with their NEW target.
    must: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).expect("mkdir");
    }
    fs::write(p, content).expect("write");
}

fn ln(root: &Path, target: &str, rel: &str) {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).expect("mkdir");
    }
    symlink(target, p).expect("symlink");
}

/// OLD: `bin -> usr/bin`, `sbin -> usr/sbin`, `lib` a real directory. NEW: `lib -> usr/lib`
/// (its content moved there), new systemd units reached through `/lib` and `../../../lib`,
/// links into directories the bundle creates (`usr/lib/systemd`) or turns from a file into a
/// directory (`opt/app`), `..` after a symlink, unchanged links through `lib` and `sbin`, a
/// cycle and a dangling link.
fn world() -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let old = dir.join("old");
    let new = dir.join("new");
    for t in [&old, &new] {
        for d in ["usr/bin", "usr/sbin", "usr/lib", "etc/systemd/system", "opt"] {
            fs::create_dir_all(t.join(d)).expect("mkdir");
        }
        ln(t, "usr/bin", "bin");
        ln(t, "usr/sbin", "sbin");
        write(t, "usr/bin/sh", "sh");
        write(t, "usr/sbin/init", "init");
        ln(t, "../sbin/init", "etc/init");
        ln(t, "/lib/x/libfoo.so", "etc/kept");
        ln(t, "/bin/sh", "etc/shell");
    }
    // OLD: lib is a directory; an app that is a file; an OLD cycle that NEW removes.
    write(&old, "lib/x/libfoo.so", "foo v1");
    write(&old, "lib/modules/m.ko", "module");
    write(&old, "opt/app", "a file that becomes a directory");
    ln(&old, "o2", "etc/o1");
    ln(&old, "o1", "etc/o2");
    // NEW: lib -> usr/lib, everything there; units through /lib; links into new directories.
    ln(&new, "usr/lib", "lib");
    write(&new, "usr/lib/x/libfoo.so", "foo v2");
    write(&new, "usr/lib/modules/m.ko", "module");
    write(&new, "usr/lib/systemd/system/ssh.service", "[Unit]\n");
    ln(&new, "/lib/systemd/system/ssh.service", "etc/systemd/system/sshd.service");
    ln(&new, "../../../lib/systemd/system/ssh.service", "etc/systemd/system/rel.service");
    ln(&new, "/bin/../lib/x/libfoo.so", "etc/dotdot");
    ln(&new, "../sbin/../lib/modules", "etc/modules");
    write(&new, "opt/app/bin/tool", "tool");
    ln(&new, "/opt/app/bin/tool", "usr/bin/tool");
    ln(&new, "../../opt/app/bin", "usr/lib/appbin");
    ln(&new, "/usr/lib/appbin/tool", "etc/tool");
    ln(&new, "b", "etc/a");
    ln(&new, "a", "etc/b");
    ln(&new, "nowhere/x", "etc/dangling");
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
    let old_links = links(&old);
    let must = links(&new)
        .into_iter()
        .filter(|(p, t)| resolves(&new, p) && (old_links.get(p) != Some(t) || resolves(&old, p)))
        .collect::<BTreeMap<_, _>>();
    // Our resolver agrees with the kernel on NEW (whose absolute links we read from its root).
    for p in ["etc/systemd/system/sshd.service", "etc/dotdot", "etc/tool", "usr/bin/tool", "etc/kept"] {
        assert!(must.contains_key(p.as_bytes()), "{p} does not resolve in NEW: {must:?}");
    }
    for p in ["etc/a", "etc/b", "etc/dangling"] {
        assert!(!resolves(&new, p.as_bytes()), "{p} resolves in NEW");
    }
    let new_snap = snapshot(&new, true);
    World { _tmp: tmp, dir, old, new, bundle, secret, public, new_snap, must }
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

    fn apply_cmd(&self, target: &Path) -> Command {
        let mut c = apply_cmd();
        c.arg("-q").arg("apply").arg(&self.bundle).arg("--target").arg(target).arg("--trust").arg(&self.public);
        c
    }

    /// Every symlink present with its NEW target, that must resolve, resolves.
    fn check(&self, target: &Path, what: &str) {
        for (p, t) in links(target) {
            if self.must.get(&p) == Some(&t) {
                assert!(
                    resolves(target, &p),
                    "{what}: {} -> {} dangles",
                    String::from_utf8_lossy(&p),
                    String::from_utf8_lossy(&t)
                );
            }
        }
    }
}

#[test]
fn merged_usr_links_resolve_at_every_failpoint() {
    let w = world();
    let t = w.fresh_target("count");
    let log = w.dir.join("failpoints.log");
    run_expect(w.apply_cmd(&t).env("FERRY_FAILPOINT_COUNT", &log), 0);
    assert_same(&snapshot(&t, true), &w.new_snap, "uninterrupted apply");
    w.check(&t, "after the apply");
    let n = fs::read_to_string(&log).expect("failpoint log").lines().count();
    assert!(n > 20, "too few failpoints: {n}");
    for k in 1..=n {
        let t = w.fresh_target("t");
        let o = w.apply_cmd(&t).env("FERRY_CRASH_AT", k.to_string()).output().expect("spawn");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9), "crash point {k} did not kill: {o:?}");
        w.check(&t, &format!("killed at failpoint {k}"));
        run_expect(apply_cmd().arg("-q").arg("resume").arg("--target").arg(&t), 0);
        assert_same(&snapshot(&t, true), &w.new_snap, &format!("killed at failpoint {k}, resumed"));
    }
}

#[test]
fn the_script_orders_links_after_what_they_resolve_through() {
    let w = world();
    let mut c = build_cmd();
    c.arg("build").arg("--old").arg(&w.old).arg("--new").arg(&w.new).arg("--key").arg(&w.secret);
    let o = run_expect(c.arg("--version").arg("2").arg("--out").arg(w.dir.join("dry.ferry")).arg("--dry-run"), 0);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let at = |s: &str| {
        let want = format!("place {s}");
        out.lines().position(|l| l.trim() == want).unwrap_or_else(|| panic!("{want:?} not in the dry run:\n{out}"))
    };
    let unit = at("usr/lib/systemd/system/ssh.service");
    assert!(unit < at("etc/systemd/system/sshd.service"), "{out}");
    assert!(unit < at("etc/systemd/system/rel.service"), "{out}");
    assert!(at("usr/lib/x/libfoo.so") < at("lib"), "{out}");
}

#[test]
fn symlink_cycles_build_and_apply() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let (old, new) = (dir.join("old"), dir.join("new"));
    fs::create_dir_all(old.join("d")).expect("mkdir");
    ln(&old, "y", "d/x");
    ln(&old, "x", "d/y");
    fs::create_dir_all(new.join("d")).expect("mkdir");
    ln(&new, "b", "d/a");
    ln(&new, "a", "d/b");
    ln(&new, "self", "self");
    ln(&new, "d/a/x", "through");
    let (secret, public) = keygen(dir, "k");
    for (base, name) in [(Some(old.as_path()), "delta.ferry"), (None, "full.ferry")] {
        let bundle = dir.join(name);
        build(base, &new, &secret, 2, &bundle, &[]);
        let t = dir.join(format!("t-{name}"));
        match base {
            Some(o) => copy_tree(o, &t),
            None => fs::create_dir(&t).expect("mkdir"),
        }
        apply(&bundle, &t, &public, 0, &[]);
        assert_same(&snapshot(&t, false), &snapshot(&new, false), name);
    }
}
