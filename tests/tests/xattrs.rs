//! Extended attributes end to end (issue 13; bundle-format.md §4.9): file capabilities, SELinux
//! labels, POSIX ACLs and user attributes travel with every entry, are set before a staged object
//! is renamed into place (a binary is never present without its capability), count as drift in
//! the base check, cost little when thousands of files share a label, and a target filesystem that
//! cannot hold them is refused before anything is written unless the operator drops them with
//! `--skip-xattrs`. Tar inputs made by GNU tar and bsdtar carry the same attributes.
//!
//! Attributes are written with `setxattr(2)` directly (no setcap/setfacl needed). The tests run as
//! root on a filesystem with xattrs (ext4 or tmpfs); the refusal test mounts a `ramfs`, which has
//! none.

use ferry_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `setcap cap_net_raw+ep` as the kernel stores it (VFS_CAP_REVISION_2, permitted bit 13,
/// effective).
const CAP_NET_RAW: &[u8] = &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// `setfacl -m u:1000:rw,g:50:r` on a 0644 file.
const ACL: &[u8] = &[
    2, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 2, 0, 6, 0, 0xe8, 3, 0, 0, 4, 0, 4, 0, 255, 255, 255, 255, 8, 0, 4, 0,
    50, 0, 0, 0, 0x10, 0, 6, 0, 255, 255, 255, 255, 0x20, 0, 4, 0, 255, 255, 255, 255,
];
const BIN_T: &[u8] = b"system_u:object_r:bin_t:s0\0";
const ETC_T: &[u8] = b"system_u:object_r:etc_t:s0\0";

fn setx(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

fn getx(p: &Path, name: &str) -> Option<Vec<u8>> {
    xattrs_of(p).into_iter().find(|x| x.name == name.as_bytes()).map(|x| x.value)
}

/// OLD: a labelled little system. NEW: `bin/ping` replaced and given a capability, `bin/tool`
/// unchanged in content but given a capability (a permission-raising metadata change), `etc/conf`
/// relabelled only, an ACL on `srv/data`, a default ACL on `srv/`, a user attribute on `srv/`, a
/// label on a new symlink.
fn trees(d: &Path) -> (PathBuf, PathBuf) {
    let (old, new) = (d.join("old"), d.join("new"));
    for t in [&old, &new] {
        for dir in ["bin", "etc", "srv"] {
            fs::create_dir_all(t.join(dir)).expect("mkdir");
        }
        fs::write(t.join("bin/tool"), "#!/bin/sh\necho tool\n").expect("w");
        fs::write(t.join("etc/conf"), "a=1\n").expect("w");
        fs::write(t.join("srv/data"), "data\n").expect("w");
        for f in ["bin/tool", "etc/conf", "srv/data", "bin", "etc", "srv"] {
            setx(&t.join(f), "security.selinux", if f.starts_with("etc") { ETC_T } else { BIN_T });
        }
    }
    fs::write(old.join("bin/ping"), "ping 1\n").expect("w");
    fs::write(new.join("bin/ping"), "ping 2, a new binary\n").expect("w");
    setx(&old.join("bin/ping"), "security.selinux", BIN_T);
    setx(&new.join("bin/ping"), "security.selinux", BIN_T);
    setx(&new.join("bin/ping"), "security.capability", CAP_NET_RAW);
    setx(&new.join("bin/ping"), "user.origin", b"iputils");
    setx(&new.join("bin/tool"), "security.capability", CAP_NET_RAW);
    setx(&new.join("etc/conf"), "security.selinux", b"system_u:object_r:shadow_t:s0\0");
    setx(&new.join("srv/data"), "system.posix_acl_access", ACL);
    setx(&new.join("srv"), "user.owner", b"ops");
    std::os::unix::fs::symlink("../bin/ping", new.join("srv/ping")).expect("ln");
    setx(&new.join("srv/ping"), "security.selinux", BIN_T);
    for t in [&old, &new] {
        Command::new("touch").args(["-h", "-d", "@1700000000"]).arg(t.join("bin")).status().expect("touch");
    }
    (old, new)
}

#[test]
fn capabilities_labels_acls_and_user_attributes_arrive() {
    require_root("security.* and trusted.* attributes");
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (old, new) = trees(d.path());
    let b = d.path().join("b.ferry");
    let v = build_json(Some(&old), &new, &k.secret, &b, &[]);
    assert_eq!(
        v["xattr_namespaces"],
        serde_json::json!(["security.capability", "security.selinux", "system", "user"]),
        "{v}"
    );
    let t = d.path().join("t");
    copy_tree(&old, &t);
    let out = apply(&b, &t, &k.public, 0, &["--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        r["xattr_namespaces"],
        serde_json::json!(["security.capability", "security.selinux", "system", "user"]),
        "{r}"
    );
    assert_same(&snapshot(&t, false), &snapshot(&new, false), "target vs NEW, attributes included");
    assert_eq!(getx(&t.join("bin/ping"), "security.capability").as_deref(), Some(CAP_NET_RAW));
    assert_eq!(getx(&t.join("bin/tool"), "security.capability").as_deref(), Some(CAP_NET_RAW));

    // A full bundle too.
    let full = d.path().join("full.ferry");
    build(None, &new, &k.secret, 2, &full, &[]);
    let t2 = d.path().join("t2");
    fs::create_dir(&t2).expect("mkdir");
    apply(&full, &t2, &k.public, 0, &[]);
    assert_same(&snapshot(&t2, false), &snapshot(&new, false), "full bundle vs NEW");
}

#[test]
fn changed_attributes_on_the_target_are_drift() {
    require_root("security.* attributes");
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (old, new) = trees(d.path());
    let b = d.path().join("b.ferry");
    build(Some(&old), &new, &k.secret, 2, &b, &[]);
    let t = d.path().join("t");
    copy_tree(&old, &t);
    setx(&t.join("etc/conf"), "security.selinux", b"system_u:object_r:tmp_t:s0\0");
    setx(&t.join("srv/data"), "user.planted", b"1");
    let before = snapshot(&t, false);
    let out = apply(&b, &t, &k.public, 4, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("etc/conf: extended attributes differ from the bundle's base: security.selinux differs"),
        "{err}"
    );
    assert!(err.contains("srv/data: extended attributes differ from the bundle's base: user.planted present"), "{err}");
    assert_same(&snapshot(&t, false), &before, "refused apply changed nothing");
    // Dropping the namespaces that drifted: the rest applies, and the dropped ones are untouched.
    let out = apply(&b, &t, &k.public, 0, &["--skip-xattrs", "security.selinux,user", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["xattrs_skipped"], serde_json::json!(["security.selinux", "user"]), "{r}");
    assert_eq!(getx(&t.join("etc/conf"), "security.selinux").as_deref(), Some(&b"system_u:object_r:tmp_t:s0\0"[..]));
    assert_eq!(getx(&t.join("bin/ping"), "security.capability").as_deref(), Some(CAP_NET_RAW));
    assert_eq!(getx(&t.join("bin/ping"), "user.origin"), None);
    assert_eq!(getx(&t.join("srv/data"), "system.posix_acl_access").as_deref(), Some(ACL));
}

/// A crash at every failpoint, then resume: whenever `bin/ping` or `bin/tool` holds NEW's bytes
/// it holds NEW's capability too, and the resumed target equals NEW.
#[test]
fn crash_at_every_failpoint_never_shows_a_binary_without_its_capability() {
    require_root("security.* attributes");
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (old, new) = trees(d.path());
    let b = d.path().join("b.ferry");
    build(Some(&old), &new, &k.secret, 2, &b, &[]);
    let want = snapshot(&new, false);
    let cmd = |t: &Path| {
        let mut c = apply_cmd();
        c.arg("-q").arg("apply").arg(&b).arg("--target").arg(t).arg("--trust").arg(&k.public);
        c
    };
    let new_ping = fs::read(new.join("bin/ping")).expect("r");
    let check_caps = |t: &Path, k: usize| {
        let ping = t.join("bin/ping");
        if fs::read(&ping).ok().as_ref() == Some(&new_ping) {
            assert_eq!(getx(&ping, "security.capability").as_deref(), Some(CAP_NET_RAW), "crash at {k}: ping");
        }
        // bin/tool's content never changes: its inode either is OLD's (no capability) or NEW's
        // staged copy with the capability; it is never a bare NEW inode.
        let tool = getx(&t.join("bin/tool"), "security.capability");
        assert!(tool.is_none() || tool.as_deref() == Some(CAP_NET_RAW), "crash at {k}: tool");
    };
    crash_at_every_failpoint(&old, d.path(), cmd, check_caps, |t, k| {
        assert_same(&snapshot(t, false), &want, &format!("after a crash at point {k} and resume"))
    });
}

/// A `ramfs` holds no extended attributes: refused with exit 15 before anything is written,
/// naming the path and the namespace; accepted with `--skip-xattrs`.
#[test]
fn a_filesystem_without_xattrs_is_refused_before_any_write() {
    require_root("mounting a ramfs");
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    for t in [&old, &new] {
        fs::create_dir_all(t.join("data")).expect("mkdir");
        fs::write(t.join("top"), "1\n").expect("w");
    }
    fs::write(new.join("top"), "2\n").expect("w");
    fs::write(new.join("data/f"), "new file\n").expect("w");
    setx(&new.join("data/f"), "user.kind", b"report");
    let b = d.path().join("b.ferry");
    build(Some(&old), &new, &k.secret, 2, &b, &[]);
    let t = d.path().join("t");
    copy_tree(&old, &t);
    let st = Command::new("mount").args(["-t", "ramfs", "none"]).arg(t.join("data")).status().expect("mount");
    assert!(st.success(), "mount -t ramfs failed");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(t.join("data"));
    let before = snapshot(&t, false);
    let out = apply(&b, &t, &k.public, 15, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data/f") && err.contains("cannot store user.* extended attributes"), "{err}");
    assert!(err.contains("--skip-xattrs user"), "{err}");
    assert_same(&snapshot(&t, false), &before, "refused apply wrote nothing");
    // plan says the same.
    let out = run_expect(
        apply_cmd().arg("plan").arg(&b).arg("--target").arg(&t).arg("--trust").arg(&k.public).arg("--json"),
        15,
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(p["refusal_exit_code"], 15, "{p}");
    // Explicitly dropped: applied, reported, and the file has no attribute.
    let out = apply(&b, &t, &k.public, 0, &["--skip-xattrs", "user", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["xattrs_skipped"], serde_json::json!(["user"]), "{r}");
    assert_eq!(fs::read(t.join("data/f")).expect("r"), b"new file\n");
    assert!(xattrs_of(&t.join("data/f")).is_empty());
}

/// `--xattrs`: `none` carries nothing (the target keeps its own attributes), a list carries only
/// what it names.
#[test]
fn build_option_narrows_what_is_carried() {
    require_root("security.* attributes");
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (old, new) = trees(d.path());
    for (opt, ns) in
        [("none", serde_json::json!([])), ("security.capability", serde_json::json!(["security.capability"]))]
    {
        let b = d.path().join(format!("{opt}.ferry"));
        let v = build_json(Some(&old), &new, &k.secret, &b, &["--xattrs", opt]);
        assert_eq!(v["xattr_namespaces"], ns, "{v}");
        let t = d.path().join(format!("t-{opt}"));
        copy_tree(&old, &t);
        apply(&b, &t, &k.public, 0, &[]);
        // Labels are the target's own (OLD's) either way; the capability only where carried.
        assert_eq!(getx(&t.join("etc/conf"), "security.selinux").as_deref(), Some(ETC_T));
        let cap = getx(&t.join("bin/ping"), "security.capability");
        assert_eq!(cap.is_some(), opt != "none", "{opt}");
    }
    let out = run_expect(build_cmd().args(["build", "--xattrs", "bogus", "--version", "1", "--out", "x"]), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--xattrs"));
}

/// Thousands of files with the same label: one interned set, a few bytes per entry at most.
#[test]
fn identical_labels_cost_little() {
    require_root("security.* attributes");
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (plain, labelled) = (d.path().join("plain"), d.path().join("labelled"));
    for t in [&plain, &labelled] {
        for i in 0..3000 {
            let dir = t.join(format!("d{}", i % 30));
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).expect("w");
        }
    }
    let files: Vec<PathBuf> = walk_all(&labelled);
    for p in &files {
        setx(p, "security.selinux", if p.to_string_lossy().contains("d1") { ETC_T } else { BIN_T });
    }
    // The signed manifest's size (the bundle file itself is padded to tar blocks).
    let size = |tree: &Path, name: &str| {
        let b = d.path().join(name);
        let report = build_json(None, tree, &k.secret, &b, &[]);
        let out = run_expect(apply_cmd().arg("inspect").arg(&b).arg("--json"), 0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        (v["sizes"]["manifest_bytes"].as_u64().unwrap_or_else(|| panic!("no manifest_bytes: {v}")), report)
    };
    let ((a, _), (b, report)) = (size(&plain, "plain.ferry"), size(&labelled, "labelled.ferry"));
    // Carried: two distinct sets (two labels), one namespace.
    assert_eq!(report["xattr_sets"], 2, "{report}");
    assert_eq!(report["xattr_namespaces"], serde_json::json!(["security.selinux"]), "{report}");
    let per_entry = (b as f64 - a as f64) / files.len() as f64;
    eprintln!("{} entries: {a} bytes without labels, {b} with ({per_entry:.2} bytes per entry)", files.len());
    // An interned label is a one-byte index per entry before compression; after zstd the
    // difference is within the noise of the compressor (measured: -0.2 to +0.3 bytes).
    assert!(per_entry.abs() < 1.0, "{per_entry} bytes per labelled entry");
}

fn walk_all(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk_all(&p));
        }
        out.push(p);
    }
    out
}

/// GNU tar (`--xattrs --acls --selinux --sparse`, pax format) and bsdtar archives of NEW build
/// bundles that apply to the same target as the directory input.
#[test]
fn tar_inputs_carry_the_same_attributes() {
    require_root("security.* attributes");
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (old, new) = trees(d.path());
    let gnu = d.path().join("new-gnu.tar");
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--acls", "--selinux", "--sparse", "--format=posix", "-cf"])
        .arg(&gnu)
        .arg("-C")
        .arg(&new)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "GNU tar failed");
    let bsd = d.path().join("new-bsd.tar");
    let st = Command::new("bsdtar")
        .arg("-cf")
        .arg(&bsd)
        .arg("-C")
        .arg(&new)
        .arg(".")
        .status()
        .expect("bsdtar (libarchive-tools)");
    assert!(st.success(), "bsdtar failed");
    let dir_bundle = d.path().join("dir.ferry");
    build(Some(&old), &new, &k.secret, 2, &dir_bundle, &[]);
    let t = d.path().join("t-dir");
    copy_tree(&old, &t);
    apply(&dir_bundle, &t, &k.public, 0, &[]);
    let want = snapshot(&t, false);
    for (name, archive) in [("gnu", &gnu), ("bsd", &bsd)] {
        let b = d.path().join(format!("{name}.ferry"));
        build(Some(&old), archive, &k.secret, 2, &b, &[]);
        let t = d.path().join(format!("t-{name}"));
        copy_tree(&old, &t);
        apply(&b, &t, &k.public, 0, &[]);
        // Directory mtimes and the root's own metadata come from the archive alike; compare all.
        assert_same(&snapshot(&t, false), &want, &format!("{name} tar input vs directory input"));
    }
}

/// An unprivileged applier may not set `trusted.*` attributes: the staging fails before any
/// rename with exit 15 and the target is left as it was; `--skip-xattrs trusted` applies.
#[test]
fn an_attribute_the_applier_may_not_set_is_refused_with_exit_15() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    require_root("drops to uid 65534 with setpriv");
    const NOBODY: u32 = 65534;
    let d = tempfile::tempdir().expect("tmp");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let k = keys(d.path());
    fs::set_permissions(&k.public, fs::Permissions::from_mode(0o644)).expect("chmod");
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    for t in [&old, &new] {
        fs::create_dir_all(t.join("app")).expect("mkdir");
        fs::write(t.join("app/a"), "1\n").expect("w");
    }
    fs::write(new.join("app/a"), "2\n").expect("w");
    setx(&new.join("app/a"), "trusted.origin", b"build-7");
    for t in [&old, &new] {
        let st = Command::new("chown").args(["-hR", &format!("{NOBODY}:{NOBODY}")]).arg(t).status().expect("chown");
        assert!(st.success());
    }
    let b = d.path().join("b.ferry");
    build(Some(&old), &new, &k.secret, 2, &b, &[]);
    fs::set_permissions(&b, fs::Permissions::from_mode(0o644)).expect("chmod");
    let t = d.path().join("t");
    copy_tree(&old, &t);
    assert_eq!(fs::metadata(&t).expect("stat").uid(), NOBODY);
    let as_nobody = |extra: &[&str], code: i32| {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={NOBODY}")).arg(format!("--regid={NOBODY}")).arg("--clear-groups");
        c.arg(bin("ferry-apply")).arg("apply").arg(&b).arg("--target").arg(&t).arg("--trust").arg(&k.public);
        c.args(extra);
        run_expect(&mut c, code)
    };
    let before = snapshot(&t, false);
    let out = as_nobody(&[], 15);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trusted.origin"), "{err}");
    assert_same(&snapshot(&t, false), &before, "refused apply changed nothing");
    as_nobody(&["--skip-xattrs", "trusted"], 0);
    assert_eq!(fs::read(t.join("app/a")).expect("r"), b"2\n");
}

/// A tree with file capabilities but no SELinux labels (a Debian build host) carries
/// `security.capability` only (`--xattrs auto`): applied to a labelled target, the labels are the
/// target's business, neither drift nor removed.
#[test]
fn a_capability_only_bundle_leaves_a_labelled_targets_labels_alone() {
    require_root("security.* attributes");
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    for t in [&old, &new] {
        fs::create_dir_all(t.join("bin")).expect("mkdir");
        fs::write(t.join("bin/sh"), "shell\n").expect("w");
    }
    fs::write(old.join("bin/ping"), "ping 1\n").expect("w");
    fs::write(new.join("bin/ping"), "ping 2\n").expect("w");
    setx(&new.join("bin/ping"), "security.capability", CAP_NET_RAW);
    let b = d.path().join("b.ferry");
    let v = build_json(Some(&old), &new, &k.secret, &b, &[]);
    assert_eq!(v["xattr_namespaces"], serde_json::json!(["security.capability"]), "{v}");
    let t = d.path().join("t");
    copy_tree(&old, &t);
    for p in ["bin", "bin/sh", "bin/ping"] {
        setx(&t.join(p), "security.selinux", BIN_T);
    }
    apply(&b, &t, &k.public, 0, &[]);
    assert_eq!(getx(&t.join("bin/ping"), "security.capability").as_deref(), Some(CAP_NET_RAW));
    assert_eq!(getx(&t.join("bin/sh"), "security.selinux").as_deref(), Some(BIN_T));
    assert_eq!(getx(&t.join("bin"), "security.selinux").as_deref(), Some(BIN_T));
}
