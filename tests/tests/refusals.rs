//! Refusals of the real `ferry-apply`: every one exits with its documented code and leaves the
//! target exactly as it was (snapshot with directory mtimes before == after) with no transaction
//! left in `TARGET/.ferry/txn`.
//!
//! Corruption (a byte flipped in every region of a delta bundle, trailing data, truncation),
//! untrusted signers and thresholds, version rules, base drift, channel and expiry policy, and the
//! target lock.

use ferry_tests::forge::regions;
use ferry_tests::*;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

struct Fx {
    d: TempDir,
    secret: PathBuf,
    public: PathBuf,
    old: PathBuf,
    new: PathBuf,
}

impl Fx {
    fn p(&self, name: &str) -> PathBuf {
        self.d.path().join(name)
    }
    /// A fresh copy of OLD.
    fn target(&self, name: &str) -> PathBuf {
        let t = self.p(name);
        copy_tree(&self.old, &t);
        t
    }
}

/// OLD and NEW with several kinds of change, so a delta bundle has plain zstd frames and patch
/// frames (each with padding), deletions, new directories and metadata changes.
fn fixture() -> Fx {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keygen(d.path(), "key");
    let old = d.path().join("old");
    let new = d.path().join("new");
    for t in [&old, &new] {
        for sub in ["bin", "etc/app", "lib", "share/doc", "var/empty"] {
            fs::create_dir_all(t.join(sub)).expect("mkdir");
        }
        fs::write(t.join("etc/unchanged.conf"), b"same in both\n").expect("write");
    }
    let app = noise(60_000, 1);
    let lib = noise(90_000, 2);
    let text: Vec<u8> = b"documentation line for the refusal tests\n".iter().cycle().take(30_000).copied().collect();
    fs::write(old.join("bin/app"), &app).expect("write");
    fs::write(old.join("lib/libx.so.1"), &lib).expect("write");
    fs::write(old.join("etc/app/app.conf"), b"port = 1\n").expect("write");
    fs::write(old.join("share/doc/README"), &text).expect("write");
    fs::write(old.join("share/doc/OLD-NOTES"), b"removed in NEW\n").expect("write");
    let mut app2 = app.clone();
    app2[1000..1016].copy_from_slice(b"version 2 patch!");
    app2.extend_from_slice(b"appended");
    let mut lib2 = lib.clone();
    lib2[50_000..50_008].copy_from_slice(b"libx 2.0");
    let mut text2 = text.clone();
    text2.extend_from_slice(b"a new paragraph\n");
    fs::write(new.join("bin/app"), &app2).expect("write");
    fs::write(new.join("lib/libx.so.1"), &lib2).expect("write");
    fs::write(new.join("etc/app/app.conf"), b"port = 2\n").expect("write");
    fs::write(new.join("share/doc/README"), &text2).expect("write");
    fs::create_dir_all(new.join("share/doc/html")).expect("mkdir");
    fs::write(new.join("share/doc/html/index.html"), noise(5_000, 3)).expect("write");
    fs::write(new.join("bin/helper"), noise(7_000, 4)).expect("write");
    for t in [&old, &new] {
        let mut all = Vec::new();
        all_paths(t, &mut all);
        for p in all {
            set_mtime(&p, 1_700_000_000);
        }
    }
    set_mtime(&new.join("bin/app"), 1_700_000_100);
    Fx { d, secret, public, old, new }
}

fn all_paths(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut v: Vec<PathBuf> = fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry").path()).collect();
    v.sort();
    for p in v {
        if fs::symlink_metadata(&p).expect("lstat").is_dir() {
            all_paths(&p, out);
        }
        out.push(p);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Apply `bundle` to `target` expecting `code`; the target must be unchanged and no transaction
/// left. Returns the output.
fn refused(bundle: &Path, target: &Path, trust: &Path, code: i32, extra: &[&str], what: &str) -> Output {
    let before = snapshot(target, true);
    let o = apply_cmd()
        .arg("apply")
        .arg(bundle)
        .arg("--target")
        .arg(target)
        .arg("--trust")
        .arg(trust)
        .args(extra)
        .output()
        .expect("spawn");
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit code\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    assert_same(&snapshot(target, true), &before, &format!("{what}: target after the refused apply vs before"));
    assert!(!target.join(".ferry/txn").exists(), "{what}: target/.ferry/txn left behind");
    o
}

/// The regions of a bundle file, from its own manifest.
fn bundle_regions(bytes: &[u8]) -> Vec<(String, std::ops::Range<usize>)> {
    let mut r = bundle::container::Reader::new(bytes, bundle::Limits::default());
    let (mb, sb) = r.head().expect("head");
    let m = bundle::Manifest::decode(&mb, &bundle::Limits::default()).expect("manifest");
    let frames: Vec<usize> = m.frames.iter().map(|f| f.size as usize).collect();
    let reg = regions(mb.len(), sb.len(), &frames);
    assert_eq!(reg.last().map(|r| r.1.end), Some(bytes.len()), "regions must tile the bundle");
    reg
}

fn delta_bundle(fx: &Fx) -> (PathBuf, Vec<u8>) {
    let b = fx.p("delta.ferry");
    build(Some(&fx.old), &fx.new, &fx.secret, 2, &b, &[]);
    let bytes = fs::read(&b).expect("read bundle");
    (b, bytes)
}

#[test]
fn flipped_byte_in_every_region_is_refused() {
    let fx = fixture();
    let (good, bytes) = delta_bundle(&fx);
    let reg = bundle_regions(&bytes);
    // The fixture must produce every kind of region the test is about.
    let names: Vec<&str> = reg.iter().map(|r| r.0.as_str()).collect();
    for want in [
        "manifest padding",
        "signatures header",
        "signatures data",
        "payload 0 header",
        "frame 0 data",
        "frame 1 data",
        "payload 0 padding",
        "end-of-archive marker",
    ] {
        assert!(names.contains(&want), "fixture bundle lacks region {want:?}: {names:?}");
    }

    // Positions: first, middle and last byte of every region, plus each field of the first header.
    let mut cases: Vec<(String, usize)> = Vec::new();
    for (name, r) in &reg {
        for (w, at) in [("first", r.start), ("middle", (r.start + r.end) / 2), ("last", r.end - 1)] {
            cases.push((format!("{name}, {w} byte (offset {at})"), at));
        }
        if name.ends_with("header") {
            for (field, off) in
                [("size field", 126), ("size field last digit", 134), ("checksum", 150), ("ustar magic", 258)]
            {
                cases.push((format!("{name}, {field}"), r.start + off));
            }
        }
    }
    for (field, off) in [
        ("first header: format magic 'f'", 0),
        ("first header: format version digit", 7),
        ("first header: member name", 12),
        ("first header: name NUL terminator", 22),
        ("first header: mode", 103),
        ("first header: size field NUL", 135),
        ("first header: checksum NUL", 154),
        ("first header: checksum space", 155),
        ("first header: type flag", 156),
        ("first header: ustar version", 263),
        ("first header: reserved zero area", 400),
    ] {
        cases.push((field.to_string(), off));
    }

    let target = fx.target("target");
    let bad = fx.p("bad.ferry");
    for (what, at) in &cases {
        let mut b = bytes.clone();
        b[*at] ^= 0x01;
        fs::write(&bad, &b).expect("write");
        let o = refused(&bad, &target, &fx.public, 3, &[], what);
        assert!(!stderr(&o).trim().is_empty(), "{what}: no error message");
    }
    for (what, tail) in [
        ("trailing garbage", b"garbage".to_vec()),
        ("a trailing zero block (tar record padding)", vec![0u8; 512]),
        ("one trailing zero byte", vec![0u8]),
    ] {
        let mut b = bytes.clone();
        b.extend_from_slice(&tail);
        fs::write(&bad, &b).expect("write");
        let o = refused(&bad, &target, &fx.public, 3, &[], what);
        assert!(stderr(&o).contains("trailing data"), "{what}: {}", stderr(&o));
    }
    // `verify` refuses them the same way.
    let mut b = bytes.clone();
    let frame = reg.iter().find(|r| r.0 == "frame 1 data").expect("frame 1").1.clone();
    b[frame.start + 3] ^= 0x80;
    fs::write(&bad, &b).expect("write");
    run_expect(apply_cmd().arg("verify").arg(&bad).arg("--trust").arg(&fx.public), 3);

    // And the untouched bundle applies, so the refusals above were about the flipped bytes.
    apply(&good, &target, &fx.public, 0, &[]);
    assert_same(&snapshot(&target, true), &snapshot(&fx.new, true), "the intact bundle");
}

#[test]
fn truncated_bundles_are_refused_with_the_offset() {
    let fx = fixture();
    let (_, bytes) = delta_bundle(&fx);
    let reg = bundle_regions(&bytes);
    let find = |n: &str| reg.iter().find(|r| r.0 == n).unwrap_or_else(|| panic!("region {n}")).1.clone();
    let (man, f0, f1) = (find("manifest data"), find("frame 0 data"), find("frame 1 data"));
    let len = bytes.len();
    let cuts = [
        ("inside the first header", 100),
        ("right after the first header", 512),
        ("inside the manifest", (man.start + man.end) / 2),
        ("inside the signature header", find("signatures header").start + 200),
        ("inside frame 0", (f0.start + f0.end) / 2),
        ("inside frame 1", f1.start + 1),
        ("inside the payload member header", find("payload 0 header").start + 10),
        ("between frame 0 and frame 1", f1.start),
        ("before the end marker", len - 1024),
        ("inside the end marker", len - 512),
        ("one byte short", len - 1),
    ];
    let target = fx.target("target");
    let bad = fx.p("short.ferry");
    for (what, cut) in cuts {
        fs::write(&bad, &bytes[..cut]).expect("write");
        let o = refused(&bad, &target, &fx.public, 3, &[], what);
        let e = stderr(&o);
        assert!(e.contains("truncated"), "{what}: message does not mention truncation: {e}");
        assert!(e.contains(&format!("at byte {cut}")), "{what}: message does not give the offset {cut}: {e}");
    }
    fs::write(&bad, b"").expect("write");
    refused(&bad, &target, &fx.public, 3, &[], "an empty file");
}

#[test]
fn untrusted_signer_and_unmet_threshold_are_refused() {
    let fx = fixture();
    let (other_secret, other_public) = keygen(fx.d.path(), "other");
    let b = fx.p("by-other.ferry");
    build(Some(&fx.old), &fx.new, &other_secret, 2, &b, &[]);
    let target = fx.target("target");
    let o = refused(&b, &target, &fx.public, 3, &[], "signed by an untrusted key");
    assert!(stderr(&o).contains("bundle has 0 trusted signatures, the policy needs 1 (short by 1)"), "{}", stderr(&o));
    assert!(stderr(&o).contains("(not trusted)"), "{}", stderr(&o));

    // Threshold 2 of {key, other}; the bundle carries one signature.
    let trust = fx.p("trust");
    fs::create_dir(&trust).expect("mkdir");
    fs::copy(&fx.public, trust.join("key.pub")).expect("copy");
    fs::copy(&other_public, trust.join("other.pub")).expect("copy");
    fs::write(trust.join("policy"), "# two of two\nthreshold 2\n").expect("write");
    let one = fx.p("one-sig.ferry");
    build(Some(&fx.old), &fx.new, &fx.secret, 2, &one, &[]);
    let o = refused(&one, &target, &trust, 3, &[], "one signature, threshold 2");
    assert!(stderr(&o).contains("bundle has 1 trusted signature, the policy needs 2 (short by 1)"), "{}", stderr(&o));
    // With both signatures it applies (so the refusal was the threshold).
    let two = fx.p("two-sig.ferry");
    build(Some(&fx.old), &fx.new, &fx.secret, 2, &two, &["--key", other_secret.to_str().expect("utf-8")]);
    apply(&two, &target, &trust, 0, &[]);
}

#[test]
fn older_version_is_refused_and_the_same_bundle_is_a_no_op() {
    let fx = fixture();
    let (v3, v2) = (fx.p("v3.ferry"), fx.p("v2.ferry"));
    build(None, &fx.new, &fx.secret, 3, &v3, &[]);
    build(None, &fx.old, &fx.secret, 2, &v2, &[]);
    let target = fx.p("target");
    fs::create_dir(&target).expect("mkdir");
    apply(&v3, &target, &fx.public, 0, &[]);
    let o = refused(&v2, &target, &fx.public, 5, &[], "version 2 after version 3");
    assert!(stderr(&o).contains("not newer than the installed version 3"), "{}", stderr(&o));
    // Equal version, different bundle: refused too.
    let v3b = fx.p("v3b.ferry");
    build(None, &fx.old, &fx.secret, 3, &v3b, &[]);
    refused(&v3b, &target, &fx.public, 5, &[], "another version-3 bundle");
    // The very bundle installed: a successful no-op.
    let before = snapshot(&target, true);
    let o = apply(&v3, &target, &fx.public, 0, &[]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("already-installed"),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = apply(&v3, &target, &fx.public, 0, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["result"], "already-installed");
    assert_eq!(v["version"], 3);
    assert_same(&snapshot(&target, true), &before, "re-applying the installed bundle");
    assert!(!target.join(".ferry/txn").exists());
}

/// The drifted paths listed on stderr (lines "  PATH: why").
fn drifted(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .map(|l| l.split(": ").next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn drifted_targets_are_refused_path_by_path() {
    let fx = fixture();
    let (b, _) = delta_bundle(&fx);

    let t = fx.target("edited");
    fs::write(t.join("etc/app/app.conf"), b"port = 1 # local edit\n").expect("write");
    let o = refused(&b, &t, &fx.public, 4, &[], "locally edited file the bundle replaces");
    assert_eq!(drifted(&o), vec!["etc/app/app.conf".to_string()], "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("content differs"), "{}", stderr(&o));

    let t = fx.target("missing");
    fs::remove_file(t.join("lib/libx.so.1")).expect("rm");
    let o = refused(&b, &t, &fx.public, 4, &[], "a file the bundle expects is missing");
    assert_eq!(drifted(&o), vec!["lib/libx.so.1".to_string()], "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));

    // An edit to a path the bundle does not touch is not drift.
    let t = fx.target("untouched-edit");
    fs::write(t.join("etc/unchanged.conf"), b"locally changed, bundle does not care\n").expect("write");
    apply(&b, &t, &fx.public, 0, &[]);
}

#[test]
fn channel_pinning_and_expiry() {
    let fx = fixture();
    let v1 = fx.p("v1-stable.ferry");
    build(None, &fx.old, &fx.secret, 1, &v1, &["--channel", "stable"]);
    let v2beta = fx.p("v2-beta.ferry");
    build(Some(&fx.old), &fx.new, &fx.secret, 2, &v2beta, &["--channel", "beta", "--base-version", "1"]);

    // A target that applied a stable bundle refuses a beta one.
    let t = fx.p("pinned");
    fs::create_dir(&t).expect("mkdir");
    apply(&v1, &t, &fx.public, 0, &[]);
    let o = refused(&v2beta, &t, &fx.public, 10, &[], "beta bundle on a stable target");
    assert!(stderr(&o).contains("channel"), "{}", stderr(&o));
    // --channel does not override the recorded channel.
    refused(&v2beta, &t, &fx.public, 10, &["--channel", "beta"], "beta bundle on a stable target with --channel beta");

    // A fresh target told to follow beta refuses a stable bundle.
    let t = fx.p("fresh");
    fs::create_dir(&t).expect("mkdir");
    let o = refused(&v1, &t, &fx.public, 10, &["--channel", "beta"], "stable bundle, apply --channel beta");
    assert!(stderr(&o).contains("\"stable\""), "{}", stderr(&o));

    // Expired long ago (`--expires 1000`; the builder wants the expiry after the creation time,
    // so this one is built with SOURCE_DATE_EPOCH=999): refused, then accepted with
    // --allow-expired.
    let exp = fx.p("expired.ferry");
    run_expect(
        build_cmd()
            .arg("build")
            .arg("--old")
            .arg(&fx.old)
            .arg("--new")
            .arg(&fx.new)
            .arg("--key")
            .arg(&fx.secret)
            .args(["--version", "2", "--expires", "1000", "--out"])
            .arg(&exp)
            .env("SOURCE_DATE_EPOCH", "999"),
        0,
    );
    let t = fx.target("expiry");
    let o = refused(&exp, &t, &fx.public, 10, &[], "expired bundle");
    assert!(stderr(&o).contains("expired"), "{}", stderr(&o));
    apply(&exp, &t, &fx.public, 0, &["--allow-expired"]);
    assert_same(&snapshot(&t, true), &snapshot(&fx.new, true), "expired bundle with --allow-expired");
    // Not yet expired: accepted without the flag.
    let later = fx.p("later.ferry");
    build(Some(&fx.old), &fx.new, &fx.secret, 2, &later, &["--expires", "99999999999"]);
    apply(&later, &fx.target("not-expired"), &fx.public, 0, &[]);
}

#[test]
fn second_apply_while_locked_exits_7_at_once() {
    let fx = fixture();
    let (b, _) = delta_bundle(&fx);
    let t = fx.target("target");
    fs::create_dir(t.join(".ferry")).expect("mkdir");
    let lock = t.join(".ferry/lock");
    // flock(1) takes the lock, then runs `cat`, which holds it until its stdin closes.
    let mut holder = Command::new("flock")
        .arg("-x")
        .arg(&lock)
        .arg("sh")
        .arg("-c")
        .arg("echo locked; exec cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn flock");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "locked");

    let t0 = Instant::now();
    let o = refused(&b, &t, &fx.public, 7, &[], "apply while another process holds the lock");
    let took = t0.elapsed();
    assert!(stderr(&o).contains("lock"), "{}", stderr(&o));
    assert!(took < Duration::from_secs(3), "a locked target should be refused at once, took {took:?}");
    // rollback and resume wait for nobody either.
    run_expect(apply_cmd().arg("rollback").arg("--target").arg(&t), 7);
    run_expect(apply_cmd().arg("resume").arg("--target").arg(&t), 7);

    // Release: close cat's stdin; then the apply goes through.
    drop(holder.stdin.take());
    let st = holder.wait().expect("wait flock");
    assert!(st.success());
    apply(&b, &t, &fx.public, 0, &[]);
    assert_same(&snapshot(&t, true), &snapshot(&fx.new, true), "apply after the lock was released");
}
