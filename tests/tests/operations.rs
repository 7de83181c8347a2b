//! The applier's operations beyond a single apply, through the real binaries: inbox chains,
//! post-commit hooks, rollback, key rotation, multi-signature trust and the JSON reports.

use ferry_tests::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use tempfile::TempDir;

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn status_json(target: &Path) -> Value {
    let o = run_expect(apply_cmd().arg("status").arg("--target").arg(target).arg("--json"), 0);
    let v = json(&o);
    assert_eq!(v["ferry_report"], 1, "status: {v}");
    assert_eq!(v["command"], "status");
    v
}

fn mkdir(p: &Path) -> PathBuf {
    fs::create_dir_all(p).expect("mkdir");
    p.to_path_buf()
}

fn key_id(public: &Path) -> String {
    let text = fs::read_to_string(public).expect("read key");
    text.split_whitespace().nth(1).expect("key id").to_string()
}

/// A chain of trees: T1 generated, each next one a mutation of the previous with a `version`
/// file that always differs.
fn chain(d: &TempDir, seed: u64, n: usize) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let t1 = d.path().join("t1");
    gen_tree(&t1, seed);
    fs::write(t1.join("version"), b"1\n").expect("write");
    set_mtime(&t1.join("version"), 1_600_000_001);
    set_mtime(&t1, 1_600_000_001);
    v.push(t1);
    for i in 2..=n {
        let t = d.path().join(format!("t{i}"));
        mutate(&v[i - 2], &t, seed + i as u64);
        // `mutate` may have turned it into a directory or a symlink.
        let vf = t.join("version");
        if fs::symlink_metadata(&vf).is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(&vf).expect("rm -r");
        } else if fs::symlink_metadata(&vf).is_ok() {
            fs::remove_file(&vf).expect("rm");
        }
        fs::write(&vf, format!("{i}\n")).expect("write");
        set_mtime(&t.join("version"), 1_600_000_000 + i as i64);
        v.push(t);
    }
    v
}

#[test]
fn inbox_applies_a_chain_and_skips_foreign_and_stale_bundles() {
    let d = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = keygen(d.path(), "trusted");
    let (foreign_sk, _) = keygen(d.path(), "foreign");
    let t = chain(&d, 31, 4);
    let (t1, t2, t3, t4) = (&t[0], &t[1], &t[2], &t[3]);
    // A different version 2: T1 with another edit.
    let t2b = d.path().join("t2-stale");
    copy_tree(t2, &t2b);
    fs::write(t2b.join("version"), b"2, but not the one v3 was built on\n").expect("write");
    assert_ne!(snapshot(&t2b, true), snapshot(t2, true));

    let inbox = mkdir(&d.path().join("inbox"));
    // Names deliberately out of version order: the inbox sorts by version, then by name.
    build(None, t1, &sk, 1, &inbox.join("c-v1-full.ferry"), &[]);
    build(Some(t1), t2, &sk, 2, &inbox.join("b-v2.ferry"), &["--base-version", "1"]);
    build(Some(t2), t3, &sk, 3, &inbox.join("a-v3.ferry"), &["--base-version", "2"]);
    build(Some(t1), &t2b, &sk, 2, &inbox.join("d-v2-stale.ferry"), &["--base-version", "1"]);
    build(None, t4, &foreign_sk, 9, &inbox.join("e-foreign.ferry"), &[]);
    fs::write(inbox.join("README.txt"), b"not a bundle; ignored\n").expect("write");

    let target = mkdir(&d.path().join("target"));
    let inbox_cmd = |code: i32| {
        let o = run_expect(
            apply_cmd().arg("inbox").arg(&inbox).arg("--target").arg(&target).arg("--trust").arg(&pk).arg("--json"),
            code,
        );
        json(&o)
    };
    let r = inbox_cmd(0);
    assert_eq!(r["ferry_report"], 1, "{r}");
    assert_eq!(r["command"], "inbox");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["failed"], 0);
    assert_same(&snapshot(&target, true), &snapshot(t3, true), "target after the inbox run vs T3");
    assert_eq!(status_json(&target)["installed"]["version"], 3);

    let items = r["items"].as_array().expect("items");
    let item = |name: &str| {
        items
            .iter()
            .find(|i| i["bundle"].as_str().is_some_and(|b| b.ends_with(name)))
            .unwrap_or_else(|| panic!("{name} not in the inbox report: {r}"))
    };
    for (name, v) in [("c-v1-full.ferry", 1), ("b-v2.ferry", 2), ("a-v3.ferry", 3)] {
        assert_eq!(item(name)["outcome"], "applied", "{name}: {r}");
        assert_eq!(item(name)["version"], v);
    }
    let applied: Vec<&str> =
        items.iter().filter(|i| i["outcome"] == "applied").filter_map(|i| i["bundle"].as_str()).collect();
    assert!(
        applied.len() == 3 && applied[0].ends_with("c-v1-full.ferry") && applied[2].ends_with("a-v3.ferry"),
        "applied in version order: {applied:?}"
    );
    let foreign = item("e-foreign.ferry");
    assert_eq!(foreign["outcome"], "skipped", "{r}");
    assert!(foreign["reason"].as_str().expect("reason").contains("foreign"), "{foreign}");
    let stale = item("d-v2-stale.ferry");
    assert_eq!(stale["outcome"], "skipped", "{r}");
    assert!(stale["reason"].as_str().expect("reason").contains("stale"), "{stale}");
    assert!(!items.iter().any(|i| i["bundle"].as_str().is_some_and(|b| b.ends_with("README.txt"))), "{r}");

    // Run again: nothing new, everything skipped, exit 0.
    let r = inbox_cmd(0);
    assert!(r["items"].as_array().expect("items").iter().all(|i| i["outcome"] == "skipped"), "{r}");
    assert_same(&snapshot(&target, true), &snapshot(t3, true), "second inbox run");

    // A corrupt v4 (a byte flipped inside its last frame): the inbox fails with 12, the target
    // stays at v3, the report says which bundle failed and why.
    let v4 = d.path().join("v4.ferry");
    build(Some(t3), t4, &sk, 4, &v4, &["--base-version", "3"]);
    let mut b = fs::read(&v4).expect("read");
    let at = last_frame_middle(&b);
    b[at] ^= 0x20;
    fs::write(inbox.join("f-v4-corrupt.ferry"), &b).expect("write");
    let r = inbox_cmd(12);
    assert_eq!(r["exit_code"], 12, "{r}");
    assert_eq!(r["failed"], 1, "{r}");
    let bad = r["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["bundle"].as_str().is_some_and(|b| b.ends_with("f-v4-corrupt.ferry")))
        .cloned()
        .unwrap_or_else(|| panic!("corrupt bundle not reported: {r}"));
    assert_eq!(bad["outcome"], "failed");
    assert_eq!(bad["exit_code"], 3, "{bad}");
    assert_same(&snapshot(&target, true), &snapshot(t3, true), "target after a failed inbox bundle");
    assert!(!target.join(".ferry/txn").exists());
    assert_eq!(status_json(&target)["installed"]["version"], 3);
}

/// Offset of the middle byte of a bundle's last frame.
fn last_frame_middle(bytes: &[u8]) -> usize {
    let mut r = bundle::container::Reader::new(bytes, bundle::Limits::default());
    let (mb, sb) = r.head().expect("head");
    let m = bundle::Manifest::decode(&mb, &bundle::Limits::default()).expect("manifest");
    let frames: Vec<usize> = m.frames.iter().map(|f| f.size as usize).collect();
    assert!(!frames.is_empty(), "the bundle has no frames");
    let reg = ferry_tests::forge::regions(mb.len(), sb.len(), &frames);
    let name = format!("frame {} data", frames.len() - 1);
    let r = &reg.iter().find(|r| r.0 == name).expect("last frame region").1;
    (r.start + r.end) / 2
}

/// OLD with bin/ and etc/; NEW_BIN changes two files in bin/, NEW_ETC only etc/.
fn hook_trees(d: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let old = d.path().join("old");
    for sub in ["bin", "etc"] {
        mkdir(&old.join(sub));
    }
    fs::write(old.join("bin/app"), b"app v1\n").expect("write");
    fs::write(old.join("bin/tool"), b"tool v1\n").expect("write");
    fs::write(old.join("etc/app.conf"), b"port = 1\n").expect("write");
    let new_bin = d.path().join("new-bin");
    copy_tree(&old, &new_bin);
    fs::write(new_bin.join("bin/app"), b"app v2\n").expect("write");
    fs::write(new_bin.join("bin/tool"), b"tool v2\n").expect("write");
    let new_etc = d.path().join("new-etc");
    copy_tree(&old, &new_etc);
    fs::write(new_etc.join("etc/app.conf"), b"port = 2\n").expect("write");
    (old, new_bin, new_etc)
}

/// The target's snapshot without the file a hook created.
fn without(mut s: Snapshot, name: &[u8]) -> Snapshot {
    s.remove(name);
    s
}

fn hook_runs(target: &Path) -> usize {
    fs::read_to_string(target.join(".ferry/hooks.log")).unwrap_or_default().matches("--- ferry hook").count()
}

#[test]
fn hooks_run_once_when_their_paths_change() {
    let d = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = keygen(d.path(), "k");
    let (old, new_bin, new_etc) = hook_trees(&d);
    let hook = ["--hook", "bin/**=touch hook-ran"];

    // bin/ changed (two files): the hook runs once, in the target directory.
    let b = d.path().join("bin.ferry");
    build(Some(&old), &new_bin, &sk, 2, &b, &hook);
    let t = d.path().join("t-bin");
    copy_tree(&old, &t);
    let r = json(&apply(&b, &t, &pk, 0, &["--json"]));
    assert!(t.join("hook-ran").is_file(), "the hook did not run");
    assert_eq!(hook_runs(&t), 1, "hooks.log: {}", fs::read_to_string(t.join(".ferry/hooks.log")).unwrap_or_default());
    assert_eq!(r["hooks"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["hooks"][0]["ok"], true);
    assert_same(&without(snapshot(&t, false), b"hook-ran"), &snapshot(&new_bin, false), "tree after the hook");
    let st = status_json(&t);
    assert_eq!(st["installed"]["hooks"][0]["result"], "ok", "{st}");

    // Only etc/ changed: the hook does not run.
    let b = d.path().join("etc.ferry");
    build(Some(&old), &new_etc, &sk, 2, &b, &hook);
    let t = d.path().join("t-etc");
    copy_tree(&old, &t);
    let r = json(&apply(&b, &t, &pk, 0, &["--json"]));
    assert!(!t.join("hook-ran").exists(), "the hook ran although nothing under bin/ changed");
    assert_eq!(r["hooks"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(hook_runs(&t), 0);
    assert_same(&snapshot(&t, true), &snapshot(&new_etc, true), "tree without a hook run");

    // --no-hooks skips it and says so.
    let b = d.path().join("bin.ferry");
    let t = d.path().join("t-nohooks");
    copy_tree(&old, &t);
    apply(&b, &t, &pk, 0, &["--no-hooks"]);
    assert!(!t.join("hook-ran").exists(), "--no-hooks ran the hook");
    assert_eq!(hook_runs(&t), 0);
    assert_same(&snapshot(&t, true), &snapshot(&new_bin, true), "tree with --no-hooks");
    let st = status_json(&t);
    assert_eq!(st["installed"]["hooks"][0]["result"], "skipped (--no-hooks)", "{st}");
}

#[test]
fn failing_hook_exits_8_after_committing() {
    let d = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = keygen(d.path(), "k");
    let (old, new_bin, _) = hook_trees(&d);
    let b = d.path().join("false.ferry");
    build(Some(&old), &new_bin, &sk, 2, &b, &["--hook", "bin/**=false"]);
    let t = d.path().join("t");
    copy_tree(&old, &t);
    let o = apply(&b, &t, &pk, 8, &["--json"]);
    let r = json(&o);
    assert_eq!(r["exit_code"], 8, "{r}");
    assert!(stderr(&o).contains("hook"), "{}", stderr(&o));
    // Committed: the tree is NEW, the version recorded, the failure visible in status.
    assert_same(&snapshot(&t, true), &snapshot(&new_bin, true), "tree after a failed hook");
    assert!(!t.join(".ferry/txn").exists());
    let st = status_json(&t);
    let i = &st["installed"];
    assert_eq!(i["version"], 2, "{st}");
    assert_eq!(i["hooks"][0]["command"], "false");
    assert_eq!(i["hooks"][0]["ok"], false, "{st}");
    assert!(i["hooks"][0]["result"].as_str().expect("result").starts_with("failed"), "{st}");
    assert!(i["last_error"].as_str().is_some_and(|e| e.contains("hook")), "{st}");
    // The same bundle again is already installed (the hook is not retried).
    let o = apply(&b, &t, &pk, 0, &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already-installed"));
}

#[test]
fn rollback_restores_the_previous_tree_exactly_once() {
    let d = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = keygen(d.path(), "k");
    let t = chain(&d, 41, 2);
    let (t1, t2) = (&t[0], &t[1]);
    let (v1, v2) = (d.path().join("v1.ferry"), d.path().join("v2.ferry"));
    build(None, t1, &sk, 1, &v1, &[]);
    build(Some(t1), t2, &sk, 2, &v2, &["--base-version", "1"]);
    let target = mkdir(&d.path().join("target"));
    apply(&v1, &target, &pk, 0, &[]);
    apply(&v2, &target, &pk, 0, &[]);
    assert_same(&snapshot(&target, true), &snapshot(t2, true), "after v2");
    let st = status_json(&target);
    assert_eq!(st["rollback"]["version"], 2, "{st}");
    assert_eq!(st["rollback"]["rollback_restores"], "version 1", "{st}");

    let o = run_expect(apply_cmd().arg("rollback").arg("--target").arg(&target).arg("--json"), 0);
    let r = json(&o);
    assert_eq!(r["ferry_report"], 1);
    assert_eq!(r["result"], "rolled-back", "{r}");
    assert_eq!(r["version"], 1, "{r}");
    assert_same(&snapshot(&target, true), &snapshot(t1, true), "after rollback vs T1 (with directory mtimes)");
    assert!(!target.join(".ferry/txn").exists());
    let st = status_json(&target);
    assert_eq!(st["installed"]["version"], 1, "{st}");
    assert!(st["rollback"].is_null(), "nothing should be kept after a rollback: {st}");

    // A second rollback has nothing to restore: refused, tree unchanged.
    let before = snapshot(&target, true);
    let o = run_expect(apply_cmd().arg("rollback").arg("--target").arg(&target), 2);
    assert!(stderr(&o).contains("nothing to roll back"), "{}", stderr(&o));
    assert_same(&snapshot(&target, true), &before, "after a refused second rollback");

    // v2 can be applied again after the rollback.
    apply(&v2, &target, &pk, 0, &[]);
    assert_same(&snapshot(&target, true), &snapshot(t2, true), "v2 re-applied after rollback");
}

#[test]
fn rollback_of_a_first_full_apply_restores_the_empty_directory() {
    let d = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = keygen(d.path(), "k");
    let t = chain(&d, 43, 1);
    let v1 = d.path().join("v1.ferry");
    build(None, &t[0], &sk, 1, &v1, &[]);
    let target = mkdir(&d.path().join("target"));
    fs::write(target.join("local-file"), b"was here before ferry\n").expect("write");
    set_mtime(&target.join("local-file"), 1_500_000_000);
    let before = snapshot(&target, true);
    // A full bundle onto a non-empty directory is drift only where paths collide; this one does
    // not collide, so it applies beside the local file.
    apply(&v1, &target, &pk, 0, &[]);
    assert_eq!(
        status_json(&target)["rollback"]["rollback_restores"],
        "the tree as it was before the first ferry apply"
    );
    run_expect(apply_cmd().arg("rollback").arg("--target").arg(&target), 0);
    assert_same(&snapshot(&target, true), &before, "rollback of the first apply");
    assert!(status_json(&target)["installed"]["version"].is_null());
}

#[test]
fn key_rotation_moves_trust_to_the_successor() {
    let d = tempfile::tempdir().expect("tempdir");
    let (a_sk, a_pk) = keygen(d.path(), "a");
    let (b_sk, b_pk) = keygen(d.path(), "b");
    let t = chain(&d, 51, 3);
    let (t1, t2, t3) = (&t[0], &t[1], &t[2]);
    let target = mkdir(&d.path().join("target"));
    let v1 = d.path().join("v1.ferry");
    build(None, t1, &a_sk, 1, &v1, &[]);
    apply(&v1, &target, &a_pk, 0, &[]);

    // v2, signed by A, adds B and retires A.
    let v2 = d.path().join("v2.ferry");
    let a_id = key_id(&a_pk);
    build(
        Some(t1),
        t2,
        &a_sk,
        2,
        &v2,
        &["--base-version", "1", "--rotate-add", b_pk.to_str().expect("utf-8"), "--rotate-retire", &a_id],
    );
    let ins = json(&run_expect(apply_cmd().arg("inspect").arg(&v2).arg("--json"), 0));
    assert_eq!(ins["rotation"]["retire"][0], a_id.as_str(), "{ins}");
    assert_eq!(ins["rotation"]["add"][0], key_id(&b_pk).as_str(), "{ins}");
    apply(&v2, &target, &a_pk, 0, &[]);
    assert_same(&snapshot(&target, true), &snapshot(t2, true), "after the rotation bundle");

    // v3' signed by the retired A: refused although the operator still passes --trust A.pub.
    let v3a = d.path().join("v3-by-a.ferry");
    build(Some(t2), t3, &a_sk, 3, &v3a, &["--base-version", "2"]);
    let before = snapshot(&target, true);
    let o = apply(&v3a, &target, &a_pk, 3, &[]);
    assert!(
        stderr(&o).contains(&format!("{a_id} (retired)")),
        "the refusal should name the signer as retired: {}",
        stderr(&o)
    );
    assert_same(&snapshot(&target, true), &before, "after refusing a bundle by the retired key");
    assert!(!target.join(".ferry/txn").exists());

    // v3 signed by B: trusted through the rotation, with only A.pub on the command line.
    let v3b = d.path().join("v3-by-b.ferry");
    build(Some(t2), t3, &b_sk, 3, &v3b, &["--base-version", "2"]);
    apply(&v3b, &target, &a_pk, 0, &[]);
    assert_same(&snapshot(&target, true), &snapshot(t3, true), "after v3 signed by the successor key");
}

#[test]
fn two_of_two_signatures_apply() {
    let d = tempfile::tempdir().expect("tempdir");
    let (a_sk, a_pk) = keygen(d.path(), "a");
    let (b_sk, b_pk) = keygen(d.path(), "b");
    let trust = mkdir(&d.path().join("trust"));
    fs::copy(&a_pk, trust.join("a.pub")).expect("copy");
    fs::copy(&b_pk, trust.join("b.pub")).expect("copy");
    fs::write(trust.join("policy"), "threshold 2\n").expect("write");
    let t = chain(&d, 61, 1);
    let b = d.path().join("both.ferry");
    build(None, &t[0], &a_sk, 1, &b, &["--key", b_sk.to_str().expect("utf-8")]);
    let v = json(&run_expect(apply_cmd().arg("verify").arg(&b).arg("--trust").arg(&trust).arg("--json"), 0));
    assert_eq!(v["signers"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!((v["trust"]["trusted"].as_u64(), v["trust"]["threshold"].as_u64()), (Some(2), Some(2)), "{v}");
    assert_eq!(v["trust"]["met"], true, "{v}");
    let target = mkdir(&d.path().join("target"));
    apply(&b, &target, &trust, 0, &[]);
    assert_same(&snapshot(&target, true), &snapshot(&t[0], true), "bundle signed by both keys");
}

#[test]
fn json_reports_parse_and_carry_the_report_version() {
    let d = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = keygen(d.path(), "k");
    let t = chain(&d, 71, 2);
    let (v1, v2) = (d.path().join("v1.ferry"), d.path().join("v2.ferry"));
    build(None, &t[0], &sk, 1, &v1, &[]);
    build(Some(&t[0]), &t[1], &sk, 2, &v2, &["--base-version", "1"]);
    let target = mkdir(&d.path().join("target"));

    // status before anything was applied
    let st = status_json(&target);
    assert!(st["installed"]["version"].is_null(), "{st}");
    assert!(st["pending"].is_null() && st["rollback"].is_null(), "{st}");

    let r = json(&apply(&v1, &target, &pk, 0, &["--json"]));
    assert_eq!(r["ferry_report"], 1);
    assert_eq!(r["command"], "apply");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["result"], "applied");
    assert_eq!(r["version"], 1);
    assert!(r["bundle_id"].as_str().is_some_and(|s| s.len() == 64), "{r}");
    assert!(r["commit_window_ms"].is_number(), "{r}");

    let v = json(&run_expect(apply_cmd().arg("verify").arg(&v2).arg("--trust").arg(&pk).arg("--json"), 0));
    assert_eq!(v["ferry_report"], 1);
    assert_eq!(v["command"], "verify");
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["version"], 2);
    assert_eq!(v["signers"][0], key_id(&pk).as_str());

    let i = json(&run_expect(apply_cmd().arg("inspect").arg(&v2).arg("--json"), 0));
    assert_eq!(i["ferry_report"], 1);
    assert_eq!(i["command"], "inspect");
    assert_eq!(i["verified"], false, "inspect checks no key, so it must say unverified: {i}");
    assert_eq!(i["signatures_valid"], true);
    assert_eq!(i["version"], 2);
    assert_eq!(i["base"]["version"], 1);
    assert_eq!(i["bundle_id"], v["bundle_id"]);

    let r = json(&apply(&v2, &target, &pk, 0, &["--json"]));
    assert_eq!(r["version"], 2);
    let st = status_json(&target);
    assert_eq!(st["exit_code"], 0);
    assert_eq!(st["installed"]["version"], 2);
    assert_eq!(st["installed"]["channel"], "stable");
    assert_eq!(st["installed"]["bundle_id"], r["bundle_id"]);
    assert_eq!(st["rollback"]["version"], 2);

    // Failures are reported as JSON on stdout too, with the exit code.
    let o = apply(&v1, &target, &pk, 5, &["--json"]);
    let e = json(&o);
    assert_eq!(e["ferry_report"], 1);
    assert_eq!(e["exit_code"], 5, "{e}");
    assert!(e["error"].as_str().is_some_and(|s| s.contains("not newer")), "{e}");
    let o = run_expect(
        apply_cmd().arg("verify").arg(d.path().join("missing.ferry")).arg("--trust").arg(&pk).arg("--json"),
        6,
    );
    assert_eq!(json(&o)["exit_code"], 6);
}

/// `staged_objects` counts every staged object exactly once, whatever made it: files from frames,
/// an empty file, a local copy, a symlink, a hardlink and a directory replacing a file — one per
/// `Place` step. A new directory is a `Mkdir`, made by the commit, not staged.
#[test]
fn staged_objects_counts_each_place_step_once() {
    let d = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = keygen(d.path(), "k");
    let old = mkdir(&d.path().join("old"));
    fs::write(old.join("keep.txt"), b"unchanged\n").expect("write");
    fs::write(old.join("old-name.bin"), noise(5000, 7)).expect("write");
    fs::write(old.join("became-dir"), b"a file in OLD\n").expect("write");
    let new = d.path().join("new");
    copy_tree(&old, &new);
    fs::rename(new.join("old-name.bin"), new.join("new-name.bin")).expect("rename"); // shipped as a Copy
    fs::remove_file(new.join("became-dir")).expect("rm");
    mkdir(&new.join("became-dir")); // a type change: a staged directory
    fs::write(new.join("a.txt"), b"from a frame\n").expect("write");
    fs::write(new.join("b.txt"), b"from a frame too\n").expect("write");
    fs::hard_link(new.join("b.txt"), new.join("b-link")).expect("link");
    fs::write(new.join("empty"), b"").expect("write");
    std::os::unix::fs::symlink("a.txt", new.join("link")).expect("symlink");
    mkdir(&new.join("newdir"));

    let b = d.path().join("b.ferry");
    build(Some(&old), &new, &sk, 2, &b, &[]);
    let ins = json(&run_expect(apply_cmd().arg("inspect").arg(&b).arg("--json"), 0));
    let script = ins["script"].as_array().expect("script");
    let placed: Vec<&str> = script.iter().filter(|s| s["op"] == "Place").filter_map(|s| s["path"].as_str()).collect();
    assert_eq!(placed, ["a.txt", "b-link", "b.txt", "became-dir", "empty", "link", "new-name.bin"], "{ins}");
    assert!(script.iter().any(|s| s["op"] == "Mkdir" && s["path"] == "newdir"), "{ins}");
    assert_eq!(ins["counts"]["copies"], 1, "the renamed file should be a local copy: {ins}");

    let t = d.path().join("target");
    copy_tree(&old, &t);
    let r = json(&apply(&b, &t, &pk, 0, &["--json"]));
    assert_eq!(r["staged_objects"], placed.len(), "{r}");
    assert_eq!(r["staged_reused"], 0, "{r}");
    assert_same(&snapshot(&t, false), &snapshot(&new, false), "tree after the apply");
}

/// A reader that goes away (`… --json | head -c 1`, `| true`) is not a crash: both binaries
/// finish their work and exit with their own code, without a panic about a broken pipe.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let d = tempfile::tempdir().expect("tmp");
    let keys = keys(d.path());
    let new = d.path().join("new");
    gen_tree(&new, 7);
    let out = d.path().join("b.ferry");
    let q = |p: &Path| format!("'{}'", p.display());
    // bash with pipefail: the pipeline's status is ferry's; `true` has exited (closing the pipe)
    // long before the build prints its report.
    let cmds = [
        format!(
            "{} build --new {} --key {} --version 1 --out {} --json | true",
            q(&bin("ferry-build")),
            q(&new),
            q(&keys.secret),
            q(&out)
        ),
        format!("{} inspect {} --json | true", q(&bin("ferry-apply")), q(&out)),
        format!("{} verify {} --trust {} | true", q(&bin("ferry-apply")), q(&out), q(&keys.public)),
    ];
    for c in cmds {
        let o =
            std::process::Command::new("bash").arg("-c").arg(format!("set -o pipefail; {c}")).output().expect("bash");
        assert_eq!(o.status.code(), Some(0), "{c}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{c}: {}", stderr(&o));
    }
    assert!(out.exists(), "the build finished");
}
