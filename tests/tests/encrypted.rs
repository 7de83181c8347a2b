//! Encrypted bundles (bundle-format.md §4.10) with the real binaries: `ferry-apply identity`,
//! `ferry-build recipient-gen`, `build --encrypt-to`; a target with a matching identity applies
//! the bundle, one without refuses it with exit 16 before writing anything; any changed byte is
//! refused; `inspect` and `verify` show only what is public without an identity; the bundle
//! holds no path name or file content in clear; two recipients; resume after a crash at every
//! failpoint; `inbox` skips a bundle encrypted to other targets.

use ferry_tests::*;
use std::fs;
use std::path::{Path, PathBuf};

/// A name and a content only the NEW tree has.
const SECRET_NAME: &str = "launch-plans-q3-7c1f9e.txt";

struct World {
    _tmp: tempfile::TempDir,
    d: PathBuf,
    old: PathBuf,
    new: PathBuf,
    keys: Keys,
    /// Bytes of an incompressible file of NEW (a window of it is looked for in the bundle).
    noise: Vec<u8>,
}

fn world(seed: u64) -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path().to_path_buf();
    let (old, new) = (d.join("old"), d.join("new"));
    gen_tree(&old, seed);
    mutate(&old, &new, seed);
    let noise = noise(20_000, seed);
    fs::write(new.join("secret-noise.bin"), &noise).expect("write");
    fs::write(new.join(SECRET_NAME), b"meet at the old mill at midnight\n").expect("write");
    let keys = keys(&d);
    World { _tmp: tmp, d, old, new, keys, noise }
}

impl World {
    /// A fresh copy of OLD named `name`.
    fn target(&self, name: &str) -> PathBuf {
        let t = self.d.join(name);
        copy_tree(&self.old, &t);
        t
    }

    /// Build OLD → NEW (version 2), with `extra` arguments.
    fn build(&self, out: &str, extra: &[&str]) -> PathBuf {
        let b = self.d.join(out);
        build(Some(&self.old), &self.new, &self.keys.secret, 2, &b, extra);
        b
    }
}

/// `ferry-apply identity --target T --out OUT --json`: the report.
fn identity(target: &Path, out: &Path) -> serde_json::Value {
    let o = run_expect(apply_cmd().arg("identity").arg("--target").arg(target).arg("--out").arg(out).arg("--json"), 0);
    serde_json::from_slice(&o.stdout).expect("identity JSON")
}

/// Every file under `dir` (state directories included) with its bytes, mode and mtime.
fn raw_tree(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>, u32, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).expect("lstat");
        let content = if md.is_file() { Some(fs::read(&p).expect("read")) } else { None };
        out.push((p.clone(), content, md.mode(), md.mtime_nsec() + md.mtime() * 1_000_000_000));
        if md.is_dir() {
            for e in fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    out.sort();
    out
}

fn stdout_json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_target_with_the_identity_applies_it_and_others_refuse_before_writing() {
    let w = world(1401);
    let a = w.target("a");
    let rep = identity(&a, &w.d.join("a.recipient"));
    assert_eq!(rep["created"], true);
    // Asked again: the same identity, not a new one.
    let again = identity(&a, &w.d.join("a2.recipient"));
    assert_eq!((again["created"].clone(), again["recipient_id"].clone()), (false.into(), rep["recipient_id"].clone()));
    assert_eq!(fs::read(w.d.join("a.recipient")).ok(), fs::read(w.d.join("a2.recipient")).ok());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(a.join(".ferry/identity")).expect("identity").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let report = build_json(
        Some(&w.old),
        &w.new,
        &w.keys.secret,
        &w.d.join("enc.ferry"),
        &["--encrypt-to", w.d.join("a.recipient").to_str().expect("utf-8")],
    );
    assert_eq!(report["encrypted"], true);
    assert_eq!(report["recipients"], serde_json::json!([rep["recipient_id"].clone()]));
    let enc = w.d.join("enc.ferry");

    // The target holding the identity applies it.
    let o = apply(&enc, &a, &w.keys.public, 0, &["--json"]);
    let j = stdout_json(&o);
    assert_eq!((j["encrypted"].clone(), j["recipients"].clone()), (true.into(), 1.into()));
    assert_same(&snapshot(&a, false), &snapshot(&w.new, false), "applied with the identity");

    // A target with an identity of its own (another recipient) refuses, and nothing of it changes:
    // the tree, the state directory, the identity in it.
    let b = w.target("b");
    identity(&b, &w.d.join("b.recipient"));
    let before = raw_tree(&b);
    let o = apply(&enc, &b, &w.keys.public, 16, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("encrypted to 1 recipient(s)") && err.contains("no matching identity"), "{err}");
    assert!(err.contains(".ferry/identity"), "the message says where it looked: {err}");
    assert_eq!(raw_tree(&b), before, "a refused encrypted bundle changed the target or its state");
    // With --json the refusal is a report with the new exit code.
    let j = stdout_json(&apply(&enc, &b, &w.keys.public, 16, &["--json"]));
    assert_eq!(
        (j["exit_code"].clone(), j["exit_meaning"].clone()),
        (16.into(), "bundle is encrypted to other recipients".into())
    );
    // `plan` gives the same answer.
    run_expect(apply_cmd().arg("plan").arg(&enc).arg("--target").arg(&b).arg("--trust").arg(&w.keys.public), 16);
    assert_eq!(raw_tree(&b), before);

    // A target without any state directory: still nothing is written (no .ferry, no lock).
    let c = w.target("c");
    let before = raw_tree(&c);
    apply(&enc, &c, &w.keys.public, 16, &[]);
    assert!(!c.join(".ferry").exists(), "the refusal created the state directory");
    assert_eq!(raw_tree(&c), before);
    // The same target with the identity given on the command line applies it.
    apply(&enc, &c, &w.keys.public, 0, &["--identity", a.join(".ferry/identity").to_str().expect("utf-8")]);
    assert_same(&snapshot(&c, false), &snapshot(&w.new, false), "applied with --identity");
    // Applying the installed bundle again is a no-op, identity or not.
    let d = w.target("d");
    apply(&enc, &d, &w.keys.public, 0, &["--identity", a.join(".ferry/identity").to_str().expect("utf-8")]);
    let j = stdout_json(&apply(&enc, &d, &w.keys.public, 0, &["--json"]));
    assert_eq!(j["result"], "already-installed");
}

#[test]
fn any_changed_byte_is_refused() {
    let w = world(1402);
    let a = w.target("a");
    identity(&a, &w.d.join("a.recipient"));
    let enc =
        w.build("enc.ferry", &["--encrypt-to", w.d.join("a.recipient").to_str().expect("utf-8"), "--solid-size", "0"]);
    let bytes = fs::read(&enc).expect("read");
    let id = a.join(".ferry/identity");
    let verify = |f: &Path, code: i32| {
        run_expect(apply_cmd().arg("verify").arg(f).arg("--trust").arg(&w.keys.public).arg("--identity").arg(&id), code)
    };
    verify(&enc, 0);
    // Every 61st byte, and the first and last: header, manifest member (with the sealed inner
    // manifest and the stanzas), signatures, frames, padding and the end marker.
    let bad = w.d.join("bad.ferry");
    let mut offsets: Vec<usize> = (0..bytes.len()).step_by(61).collect();
    offsets.push(bytes.len() - 1);
    for at in offsets {
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        fs::write(&bad, &b).expect("write");
        let o = apply_cmd()
            .arg("verify")
            .arg(&bad)
            .arg("--trust")
            .arg(&w.keys.public)
            .arg("--identity")
            .arg(&id)
            .output()
            .expect("spawn");
        assert_eq!(o.status.code(), Some(3), "byte {at} flipped: {}", String::from_utf8_lossy(&o.stderr));
    }
    // A flipped byte in the last frame: `apply` refuses it and the target is as it was.
    let frames_end = bytes.len() - 1024 - 1;
    let mut b = bytes.clone();
    let at = (0..frames_end).rev().find(|&i| b[i] != 0).expect("a non-zero payload byte");
    b[at] ^= 1;
    fs::write(&bad, &b).expect("write");
    let before = snapshot(&a, true);
    apply(&bad, &a, &w.keys.public, 3, &[]);
    assert_same(&snapshot(&a, true), &before, "a corrupt encrypted bundle changed the target");
    apply(&enc, &a, &w.keys.public, 0, &[]);
    assert_same(&snapshot(&a, false), &snapshot(&w.new, false), "then the intact bundle applies");
}

#[test]
fn inspect_and_verify_show_only_public_fields_without_the_identity() {
    let w = world(1403);
    let a = w.target("a");
    identity(&a, &w.d.join("a.recipient"));
    let enc = w.build("enc.ferry", &["--encrypt-to", w.d.join("a.recipient").to_str().expect("utf-8")]);
    let plain = w.build("plain.ferry", &[]);
    let inspect = |f: &Path, extra: &[&str]| {
        let o = run_expect(apply_cmd().arg("inspect").arg(f).arg("--json").args(extra), 0);
        (String::from_utf8_lossy(&o.stdout).into_owned(), stdout_json(&o))
    };
    let (text, j) = inspect(&enc, &[]);
    assert_eq!(
        (j["encrypted"].clone(), j["recipients"].clone(), j["decrypted"].clone()),
        (true.into(), 1.into(), false.into())
    );
    assert_eq!((j["version"].clone(), j["channel"].clone()), (2.into(), "stable".into()));
    assert_eq!(j["script"], serde_json::json!([]));
    assert!(!text.contains(SECRET_NAME), "inspect without the identity shows a path: {text}");
    // The human text says the contents are encrypted.
    let o = run_expect(apply_cmd().arg("inspect").arg(&enc), 0);
    let human = String::from_utf8_lossy(&o.stdout);
    assert!(human.contains("contents hidden") && !human.contains(SECRET_NAME), "{human}");
    // With the identity: everything, as for the unencrypted build of the same trees.
    let id = a.join(".ferry/identity");
    let (text, j) = inspect(&enc, &["--identity", id.to_str().expect("utf-8")]);
    assert!(text.contains(SECRET_NAME), "inspect with the identity hides the paths: {text}");
    assert_eq!((j["decrypted"].clone(), j["recipient_id"].is_string()), (true.into(), true));
    let (_, p) = inspect(&plain, &[]);
    assert_eq!((j["script"].clone(), j["counts"].clone()), (p["script"].clone(), p["counts"].clone()));
    assert_eq!(p["encrypted"], false);
    // verify: the public part without an identity, everything with one.
    let verify = |extra: &[&str]| {
        stdout_json(&run_expect(
            apply_cmd().arg("verify").arg(&enc).arg("--trust").arg(&w.keys.public).arg("--json").args(extra),
            0,
        ))
    };
    let v = verify(&[]);
    assert_eq!((v["encrypted"].clone(), v["decrypted"].clone()), (true.into(), false.into()));
    let v = verify(&["--identity", id.to_str().expect("utf-8")]);
    assert_eq!((v["encrypted"].clone(), v["decrypted"].clone()), (true.into(), true.into()));
    // An identity that does not open it is refused with exit 16.
    let other = w.target("other");
    identity(&other, &w.d.join("o.recipient"));
    run_expect(apply_cmd().arg("inspect").arg(&enc).arg("--identity").arg(other.join(".ferry/identity")), 16);
}

#[test]
fn the_bundle_holds_no_path_name_or_content_in_clear() {
    let w = world(1404);
    let a = w.target("a");
    identity(&a, &w.d.join("a.recipient"));
    let enc = fs::read(w.build("enc.ferry", &["--encrypt-to", w.d.join("a.recipient").to_str().expect("utf-8")]))
        .expect("read");
    let plain = fs::read(w.build("plain.ferry", &[])).expect("read");
    let window = &w.noise[5000..5064];
    // The manifest member's CBOR: what a reader without a key decodes.
    let cbor = |bundle: &[u8]| {
        let mut r = bundle::container::Reader::new(bundle, bundle::Limits::default());
        let (mb, _) = r.head().expect("head");
        bundle::manifest::unpack(&mb, &bundle::Limits::default()).expect("manifest CBOR")
    };
    // The unencrypted build shows both, so the checks below can fail.
    assert!(contains(&plain, window), "the unencrypted bundle does not hold the content verbatim");
    assert!(contains(&cbor(&plain), SECRET_NAME.as_bytes()), "the unencrypted manifest does not name the file");
    // The encrypted one neither, raw or decoded.
    assert!(!contains(&enc, window), "file content in clear in the encrypted bundle");
    assert!(!contains(&enc, SECRET_NAME.as_bytes()), "path name in clear in the encrypted bundle");
    let outer = cbor(&enc);
    assert!(!contains(&outer, SECRET_NAME.as_bytes()), "path name in the outer manifest");
    assert!(!contains(&outer, b"secret-noise.bin"));
}

#[test]
fn either_of_two_recipients_applies_it_and_inbox_skips_it_elsewhere() {
    let w = world(1405);
    // Recipient 1: a target's own identity. Recipient 2: a fleet identity from recipient-gen,
    // installed in STATE/identities/ of another target.
    let a = w.target("a");
    identity(&a, &w.d.join("a.recipient"));
    let fleet = w.d.join("fleet");
    run_expect(build_cmd().arg("recipient-gen").arg("--out").arg(&fleet), 0);
    let b = w.target("b");
    fs::create_dir_all(b.join(".ferry/identities")).expect("mkdir");
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(b.join(".ferry"), fs::Permissions::from_mode(0o700)).expect("chmod");
        fs::set_permissions(b.join(".ferry/identities"), fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    fs::copy(w.d.join("fleet.identity"), b.join(".ferry/identities/fleet.identity")).expect("cp");
    let enc = w.build(
        "enc.ferry",
        &[
            "--encrypt-to",
            w.d.join("a.recipient").to_str().expect("utf-8"),
            "--encrypt-to",
            w.d.join("fleet.recipient").to_str().expect("utf-8"),
        ],
    );
    for t in [&a, &b] {
        let j = stdout_json(&apply(&enc, t, &w.keys.public, 0, &["--json"]));
        assert_eq!(j["recipients"], 2);
        assert_same(&snapshot(t, false), &snapshot(&w.new, false), "applied by one of two recipients");
    }
    // An inbox holding it on a third target: skipped (not for this target), not failed.
    let c = w.target("c");
    let inbox = w.d.join("inbox");
    fs::create_dir_all(&inbox).expect("mkdir");
    fs::copy(&enc, inbox.join("enc.ferry")).expect("cp");
    let o = run_expect(
        apply_cmd().arg("inbox").arg(&inbox).arg("--target").arg(&c).arg("--trust").arg(&w.keys.public).arg("--json"),
        0,
    );
    let j = stdout_json(&o);
    assert_eq!(j["items"][0]["outcome"], "skipped", "{j}");
    assert!(j["items"][0]["reason"].as_str().is_some_and(|r| r.contains("encrypted to 2 recipient(s)")), "{j}");
    assert_same(&snapshot(&c, false), &snapshot(&w.old, false), "inbox skipped it");
}

#[test]
fn resume_after_a_crash_at_every_failpoint_completes() {
    let w = world(1406);
    // OLD with the target's identity in its state directory: every fresh copy has it.
    let base = w.target("base");
    identity(&base, &w.d.join("a.recipient"));
    let enc = w.build("enc.ferry", &["--encrypt-to", w.d.join("a.recipient").to_str().expect("utf-8")]);
    let new_snap = snapshot(&w.new, false);
    let scratch = w.d.join("scratch");
    fs::create_dir_all(&scratch).expect("mkdir");
    let points = crash_at_every_failpoint(
        &base,
        &scratch,
        |t| {
            let mut c = apply_cmd();
            c.arg("-q").arg("apply").arg(&enc).arg("--target").arg(t).arg("--trust").arg(&w.keys.public);
            c
        },
        |t, k| {
            // The pending transaction is shown from its public fields, identity or not.
            let o = apply_cmd().arg("status").arg("--json").arg("--target").arg(t).output().expect("status");
            assert_eq!(o.status.code(), Some(0), "status after crash {k}: {o:?}");
        },
        |t, k| assert_same(&snapshot(t, false), &new_snap, &format!("resumed after crash point {k}")),
    );
    assert!(points > 20, "{points} failpoints");
}

#[test]
fn a_pending_encrypted_transaction_needs_the_identity_to_resume() {
    let w = world(1407);
    let a = w.target("a");
    let id_report = identity(&a, &w.d.join("a.recipient"));
    assert!(id_report["identity"].as_str().is_some_and(|p| p.ends_with(".ferry/identity")));
    let enc = w.build("enc.ferry", &["--encrypt-to", w.d.join("a.recipient").to_str().expect("utf-8")]);
    let apply_at = |t: &Path| {
        let mut c = apply_cmd();
        c.arg("-q").arg("apply").arg(&enc).arg("--target").arg(t).arg("--trust").arg(&w.keys.public);
        c
    };
    // Which failpoint is the staging sync (an uninterrupted run on a copy).
    let count = w.d.join("count");
    copy_tree(&a, &count);
    let log = w.d.join("failpoints.log");
    run_expect(apply_at(&count).env("FERRY_FAILPOINT_COUNT", &log), 0);
    let names: Vec<String> = fs::read_to_string(&log)
        .expect("failpoint log")
        .lines()
        .map(|l| l.split_once(' ').map(|x| x.1).unwrap_or("").to_string())
        .collect();
    let k = names.iter().position(|n| n == "stage-synced").expect("staging sync") + 1;
    // Crash there, then take the identity away.
    let o = apply_at(&a).env("FERRY_CRASH_AT", k.to_string()).output().expect("spawn");
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9), "{o:?}");
    }
    let moved = w.d.join("moved.identity");
    fs::rename(a.join(".ferry/identity"), &moved).expect("mv identity");
    let o = run_expect(apply_cmd().arg("resume").arg("--target").arg(&a), 16);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no matching identity"));
    assert!(a.join(".ferry/txn").exists(), "the pending transaction was discarded");
    // Given back on the command line, the resume completes.
    run_expect(apply_cmd().arg("resume").arg("--target").arg(&a).arg("--identity").arg(&moved), 0);
    assert_same(&snapshot(&a, false), &snapshot(&w.new, false), "resumed with --identity");
    // And rollback opens the kept transaction the same way.
    run_expect(apply_cmd().arg("rollback").arg("--target").arg(&a).arg("--identity").arg(&moved), 0);
    assert_same(&snapshot(&a, false), &snapshot(&w.old, false), "rolled back");
}
