//! `ferry-apply update` against a channel repository in a local directory (the stick case;
//! bundle-format.md §18.5), through the real binaries: bundles built by `ferry-build build`,
//! the index signed here with `bundle::index` (so hostile indexes can be forged too). Targets at
//! every version reach v5 on the cheapest path; hostile indexes and mismatched bundles are refused
//! with the target unchanged; a SIGKILL between two bundles, or inside the second one, resumes.

use bundle::index::{BundleRef, Fresh, Index, Release, INDEX_FORMAT};
use bundle::sig::{SecretKey, Signatures};
use bundle::Hash;
use ferry_tests::*;
use serde_json::Value;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const CHANNEL: &str = "stable";
const LATEST: u64 = 5;
const RELEASE_SEED: u8 = 21;
const TIMESTAMP_SEED: u8 = 22;
/// A key nobody trusts or names.
const OTHER_SEED: u8 = 99;

/// Versions 1..=5 of a tree, the bundles between them, and the keys.
struct World {
    dir: PathBuf,
    /// `trees[v]` for v in 1..=5.
    trees: Vec<PathBuf>,
    /// Every bundle built: file name, from, to (files in `dir/bundles`).
    bundles: Vec<(String, Option<u64>, u64)>,
    timestamp: SecretKey,
    trust: PathBuf,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// Built once per test process: five versions, full bundles of each, deltas from the two
/// previous versions (what `publish --deltas-from 2` keeps).
fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let release = SecretKey::from_seed([RELEASE_SEED; 32]);
        let timestamp = SecretKey::from_seed([TIMESTAMP_SEED; 32]);
        let secret = dir.join("release.secret");
        fs::write(&secret, release.to_text()).expect("write secret");
        let trust = forge::write_pub(&dir.join("release.pub"), &release);
        let mut trees = vec![PathBuf::new()];
        let v1 = dir.join("v1");
        gen_tree(&v1, 1500);
        // Something large and unchanging: full bundles cost far more than deltas.
        fs::write(v1.join("blob.bin"), noise(200_000, 7)).expect("write blob");
        trees.push(v1);
        for v in 2..=LATEST {
            let t = dir.join(format!("v{v}"));
            mutate(&trees[v as usize - 1], &t, 1500 + v);
            fs::write(t.join(format!("added-in-{v}")), noise(2000 * v as usize, v)).expect("write");
            trees.push(t);
        }
        let bdir = dir.join("bundles");
        fs::create_dir_all(&bdir).expect("mkdir");
        let mut bundles = Vec::new();
        let ch = ["--channel", CHANNEL];
        for v in 1..=LATEST {
            let name = format!("v{v}.full.ferry");
            build(None, &trees[v as usize], &secret, v, &bdir.join(&name), &ch);
            bundles.push((name, None, v));
            for from in v.saturating_sub(2).max(1)..v {
                let name = format!("v{from}-v{v}.ferry");
                let bv = from.to_string();
                let extra = ["--channel", CHANNEL, "--base-version", &bv];
                build(Some(&trees[from as usize]), &trees[v as usize], &secret, v, &bdir.join(&name), &extra);
                bundles.push((name, Some(from), v));
            }
        }
        World { dir, trees, bundles, timestamp, trust }
    })
}

/// The index entry of a bundle file in the world.
fn entry(w: &World, file: &str, from: Option<u64>, to: u64) -> BundleRef {
    let p = w.dir.join("bundles").join(file);
    let bytes = fs::read(&p).expect("read bundle");
    let id = inspect_id(&p);
    BundleRef { file: file.into(), from, to, size: bytes.len() as u64, blake3: Hash::of(&bytes), id }
}

/// A bundle's id, from `ferry-apply inspect --json`.
fn inspect_id(p: &Path) -> Hash {
    let o = run_expect(apply_cmd().arg("inspect").arg(p).arg("--json"), 0);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let hex = v["bundle_id"].as_str().unwrap_or_else(|| panic!("no bundle_id in {v}"));
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    Hash(id)
}

/// What an index says, before it is signed.
#[derive(Clone)]
struct Spec {
    bundles: Vec<BundleRef>,
    seq: u64,
    fresh_seq: u64,
    expires: u64,
    /// Seeds of the keys (`SecretKey::from_seed([seed; 32])`) signing each part.
    release_keys: Vec<u8>,
    fresh_keys: Vec<u8>,
    created: u64,
}

fn spec(w: &World, leave_out: &[&str]) -> Spec {
    let mut bundles: Vec<BundleRef> = w
        .bundles
        .iter()
        .filter(|(f, _, _)| !leave_out.contains(&f.as_str()))
        .map(|(f, from, to)| entry(w, f, *from, *to))
        .collect();
    bundles.sort_by_key(|b| (b.to, b.from.map_or(0, |f| f + 1), b.file.clone()));
    Spec {
        bundles,
        seq: 5,
        fresh_seq: 5,
        expires: now() + 86_400,
        release_keys: vec![RELEASE_SEED],
        fresh_keys: vec![TIMESTAMP_SEED],
        created: 1_700_000_000,
    }
}

fn sign(s: &Spec, w: &World) -> Vec<u8> {
    let r = Release {
        format: INDEX_FORMAT,
        channel: CHANNEL.into(),
        seq: s.seq,
        created: s.created,
        expires: None,
        latest: s.bundles.iter().map(|b| b.to).max().unwrap_or(0),
        timestamp_keys: vec![serde_bytes::ByteBuf::from(w.timestamp.public().bytes.to_vec())],
        bundles: s.bundles.clone(),
    };
    let rb = r.encode();
    let mut rs = Signatures::new();
    for k in s.release_keys.iter().map(|&n| SecretKey::from_seed([n; 32])) {
        rs.insert(k.public().bytes, k.sign_message(&bundle::index::release_message(&rb)));
    }
    let f = Fresh {
        format: INDEX_FORMAT,
        channel: CHANNEL.into(),
        release: Hash::of(&rb),
        release_seq: s.seq,
        seq: s.fresh_seq,
        issued: now(),
        expires: s.expires,
    };
    let fb = f.encode();
    let mut fs_ = Signatures::new();
    for k in s.fresh_keys.iter().map(|&n| SecretKey::from_seed([n; 32])) {
        fs_.insert(k.public().bytes, k.sign_message(&bundle::index::fresh_message(&fb)));
    }
    Index::new(r, rs, f, fs_).encode()
}

/// A repository directory `REPO/stable/{index.ferry-index,bundles/}` with the index of `s`
/// (bundle files hard-linked from the world).
fn repo(w: &World, at: &Path, s: &Spec) -> PathBuf {
    let bdir = at.join(CHANNEL).join("bundles");
    fs::create_dir_all(&bdir).expect("mkdir");
    for (f, _, _) in &w.bundles {
        let _ = fs::hard_link(w.dir.join("bundles").join(f), bdir.join(f));
    }
    write_index(at, &sign(s, w));
    at.to_path_buf()
}

fn write_index(repo: &Path, bytes: &[u8]) {
    fs::write(repo.join(CHANNEL).join("index.ferry-index"), bytes).expect("write index");
}

/// A target at version `v` (0: empty), made with `ferry-apply apply` of v1's full bundle and
/// the deltas after it.
fn target(w: &World, at: &Path, v: u64) -> PathBuf {
    fs::create_dir_all(at).expect("mkdir");
    let b = |f: &str| w.dir.join("bundles").join(f);
    if v >= 1 {
        apply(&b("v1.full.ferry"), at, &w.trust, 0, &["-q"]);
    }
    for to in 2..=v {
        apply(&b(&format!("v{}-v{to}.ferry", to - 1)), at, &w.trust, 0, &["-q"]);
    }
    at.to_path_buf()
}

fn update_cmd(w: &World, repo: &Path, t: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = apply_cmd();
    c.arg("-q").arg("update").arg(repo).arg("--target").arg(t).arg("--trust").arg(&w.trust).args(extra);
    c
}

fn update(w: &World, repo: &Path, t: &Path, extra: &[&str], code: i32) -> Value {
    let o = run_expect(update_cmd(w, repo, t, extra).arg("--json"), code);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// Every chain from `from` to `to` in `bundles` (an independent brute force of §18.5's rule):
/// the cheapest by (bytes, count, file names).
fn cheapest(bundles: &[BundleRef], from: Option<u64>, to: u64) -> Vec<String> {
    fn go(bs: &[BundleRef], at: Option<u64>, to: u64, path: &mut Vec<usize>, all: &mut Vec<Vec<usize>>) {
        if at == Some(to) {
            all.push(path.clone());
            return;
        }
        for (i, b) in bs.iter().enumerate() {
            let ok = match at {
                None => b.from.is_none(),
                Some(v) => b.from == Some(v),
            };
            if ok && b.to <= to {
                path.push(i);
                go(bs, Some(b.to), to, path, all);
                path.pop();
            }
        }
    }
    let mut all = Vec::new();
    go(bundles, from, to, &mut Vec::new(), &mut all);
    let key = |p: &Vec<usize>| {
        let files: Vec<String> = p.iter().map(|&i| bundles[i].file.clone()).collect();
        (p.iter().map(|&i| bundles[i].size).sum::<u64>(), p.len(), files)
    };
    all.into_iter().map(|p| key(&p)).min().map(|k| k.2).unwrap_or_default()
}

fn path_files(r: &Value) -> Vec<String> {
    r["path"].as_array().expect("path").iter().map(|s| s["file"].as_str().expect("file").to_string()).collect()
}

fn installed(t: &Path) -> Option<u64> {
    let s: Value = serde_json::from_slice(&fs::read(t.join(".ferry/state.json")).ok()?).ok()?;
    s["version"].as_u64()
}

fn assert_is(w: &World, t: &Path, v: u64) {
    assert_same(&snapshot(t, false), &snapshot(&w.trees[v as usize], false), &format!("target vs v{v}"));
    assert_eq!(installed(t), Some(v));
}

#[test]
fn targets_at_every_version_reach_the_newest_on_the_cheapest_path() {
    let w = world();
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = spec(w, &[]);
    let r = repo(w, &tmp.path().join("repo"), &s);
    for v in [0, 1, 2, 3, 4] {
        let t = target(w, &tmp.path().join(format!("t{v}")), v);
        let from = (v > 0).then_some(v);
        let extra: &[&str] = if v == 0 { &["--channel", CHANNEL] } else { &[] };
        let rep = update(w, &r, &t, extra, 0);
        let want = cheapest(&s.bundles, from, LATEST);
        assert_eq!(path_files(&rep), want, "from v{v}: {rep}");
        assert_eq!(rep["from"].as_u64(), from, "{rep}");
        assert_eq!(rep["to"], LATEST);
        assert_eq!(rep["up_to_date"], false);
        let sizes: u64 = s.bundles.iter().filter(|b| want.contains(&b.file)).map(|b| b.size).sum();
        assert_eq!(rep["bytes_planned"], sizes);
        // A local directory downloads nothing.
        assert_eq!(rep["bytes_downloaded"], 0);
        let applied: Vec<u64> = rep["applied"].as_array().expect("applied").iter().filter_map(Value::as_u64).collect();
        assert_eq!(applied.last(), Some(&LATEST));
        assert_eq!(applied.len(), want.len());
        assert_eq!(rep["index"]["release_seq"], 5);
        assert_eq!(rep["index"]["by_timestamp_key"], true);
        assert_is(w, &t, LATEST);
        if v == 0 {
            assert_eq!(want.len(), 1, "an empty target takes one full bundle here: {want:?}");
            assert!(want[0].contains("full"));
        } else {
            assert!(want.iter().all(|f| !f.contains("full")), "a delta-only path from v{v}: {want:?}");
        }
        // Again: up to date, nothing applied.
        let rep = update(w, &r, &t, &[], 0);
        assert_eq!(rep["up_to_date"], true, "{rep}");
        assert_eq!(rep["applied"].as_array().map(Vec::len), Some(0));
        assert!(t.join(".ferry/index-stable.cbor").is_file());
    }
}

#[test]
fn a_missing_delta_falls_back_to_a_chain_and_a_version_without_deltas_has_no_path() {
    let w = world();
    let tmp = tempfile::tempdir().expect("tempdir");
    // No v3→v5: a target at v3 goes v3→v4→v5.
    let s = spec(w, &["v3-v5.ferry"]);
    let r = repo(w, &tmp.path().join("repo"), &s);
    let t = target(w, &tmp.path().join("t3"), 3);
    let rep = update(w, &r, &t, &[], 0);
    assert_eq!(path_files(&rep), ["v3-v4.ferry", "v4-v5.ferry"], "{rep}");
    assert_eq!(rep["applied"], serde_json::json!([4, 5]));
    assert_is(w, &t, LATEST);
    // No delta from v4 at all: a full bundle is no way for a target with a version (exit 17).
    let s = spec(w, &["v4-v5.ferry"]);
    let r = repo(w, &tmp.path().join("repo2"), &s);
    let t = target(w, &tmp.path().join("t4"), 4);
    let before = snapshot(&t, false);
    let rep = update(w, &r, &t, &[], 17);
    assert_eq!(rep["exit_code"], 17, "{rep}");
    let msg = rep["error"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("no update path") && msg.contains("full bundle applies only to an empty target"), "{msg}");
    assert_same(&snapshot(&t, false), &before, "no path: target unchanged");
    assert_eq!(installed(&t), Some(4));
}

/// A machine that missed more releases than the channel keeps deltas for: with `--replace` a
/// full bundle is a way from any older version (bundle-format.md §10.4, §18.5), and files that
/// did not change keep their inode.
#[test]
fn with_replace_a_target_without_a_delta_takes_the_full_bundle() {
    let w = world();
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = spec(w, &["v1-v2.ferry", "v1-v3.ferry"]);
    let r = repo(w, &tmp.path().join("repo"), &s);
    let t = target(w, &tmp.path().join("t1"), 1);
    let before = snapshot(&t, false);
    let rep = update(w, &r, &t, &["--dry-run"], 17);
    assert!(rep["error"].as_str().unwrap_or_default().contains("--replace"), "{rep}");
    let rep = update(w, &r, &t, &["--replace", "--dry-run"], 0);
    let want = cheapest(&s.bundles, None, LATEST);
    assert_eq!(path_files(&rep), want, "{rep}");
    assert_same(&snapshot(&t, false), &before, "dry run");
    // The regular files v1 and v5 have alike but for the mtime (`mutate` stamps every mtime
    // anew), with their inodes now: changed in place, not replaced.
    let (v1, v5) = (snapshot(&w.trees[1], false), snapshot(&w.trees[LATEST as usize], false));
    let ino = |p: &[u8]| {
        let p = t.join(std::ffi::OsStr::from_bytes(p));
        std::fs::symlink_metadata(p).map(|m| m.ino()).expect("lstat")
    };
    let alike: Vec<(Vec<u8>, u64)> = v1
        .iter()
        .filter(|(p, n)| {
            let same = |m: &Node| Node { mtime_ns: None, ..m.clone() } == Node { mtime_ns: None, ..(*n).clone() };
            n.kind == "file" && n.group.is_none() && v5.get(*p).is_some_and(same)
        })
        .map(|(p, _)| (p.clone(), ino(p)))
        .collect();
    assert!(!alike.is_empty());
    let rep = update(w, &r, &t, &["--replace"], 0);
    assert_eq!(path_files(&rep), want, "{rep}");
    assert_is(w, &t, LATEST);
    for (p, i) in alike {
        assert_eq!(ino(&p), i, "{}: an unchanged file keeps its inode", String::from_utf8_lossy(&p));
    }
}

#[test]
fn to_stops_earlier_and_dry_run_changes_nothing() {
    let w = world();
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = spec(w, &[]);
    let r = repo(w, &tmp.path().join("repo"), &s);
    let t = target(w, &tmp.path().join("t1"), 1);
    // --dry-run: the path and its bytes, nothing written (not even the accepted index).
    let state_before: Vec<(String, Vec<u8>)> = state_files(&t);
    let tree_before = snapshot(&t, false);
    let rep = update(w, &r, &t, &["--dry-run"], 0);
    assert_eq!(rep["dry_run"], true);
    assert_eq!(path_files(&rep), cheapest(&s.bundles, Some(1), LATEST));
    assert!(rep["bytes_planned"].as_u64().unwrap_or(0) > 0);
    assert_eq!(rep["applied"].as_array().map(Vec::len), Some(0));
    assert_same(&snapshot(&t, false), &tree_before, "dry run: tree unchanged");
    assert_eq!(state_files(&t), state_before, "dry run: state directory unchanged");
    // The human form names the path.
    let o = run_expect(&mut update_cmd(w, &r, &t, &["--dry-run"]), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("dry run: nothing changed"));
    // --to 3.
    let rep = update(w, &r, &t, &["--to", "3"], 0);
    assert_eq!(rep["to"], 3);
    assert_eq!(path_files(&rep), cheapest(&s.bundles, Some(1), 3));
    assert_is(w, &t, 3);
    // --to a version the index does not reach, or below the installed one.
    assert_eq!(update(w, &r, &t, &["--to", "9"], 17)["exit_code"], 17);
    assert_eq!(update(w, &r, &t, &["--to", "2"], 5)["exit_code"], 5);
    assert_eq!(update(w, &r, &t, &["--to", "3"], 0)["up_to_date"], true);
    // Another channel than the pinned one; an empty target without --channel.
    assert_eq!(update(w, &r, &t, &["--channel", "beta"], 10)["exit_code"], 10);
    let e = target(w, &tmp.path().join("empty"), 0);
    assert_eq!(update(w, &r, &e, &[], 2)["exit_code"], 2);
}

fn state_files(t: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(t.join(".ferry"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Run `update` expecting a refusal with `code`; the target (tree and installed version) must be
/// unchanged.
fn refused(w: &World, r: &Path, t: &Path, code: i32, what: &str, needle: &str) {
    let before = snapshot(t, false);
    let v = installed(t);
    let rep = update(w, r, t, &[], code);
    let msg = rep["error"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
    assert_same(&snapshot(t, false), &before, what);
    assert_eq!(installed(t), v, "{what}");
    // Recorded for `status`: an unattended update's failure is visible afterwards.
    let st: Value = serde_json::from_slice(&fs::read(t.join(".ferry/state.json")).expect("state")).expect("json");
    let last = st["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("update from") && last.contains(needle), "{what}: last_error {last:?}");
}

#[test]
fn hostile_indexes_and_mismatched_bundles_are_refused_with_the_target_unchanged() {
    let w = world();
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = spec(w, &[]);
    let r = repo(w, &tmp.path().join("repo"), &good);
    let t = target(w, &tmp.path().join("t1"), 1);

    // Expired (beyond the default allowance of an hour).
    write_index(&r, &sign(&Spec { expires: now() - 7200, ..good.clone() }, w));
    refused(w, &r, &t, 10, "expired index", "expired");
    // ... accepted within a larger --clock-allowance (dry run: nothing recorded).
    let o = update_cmd(w, &r, &t, &["--dry-run", "--clock-allowance", "86400"]).output().expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));

    // The release part signed by the timestamp key alone, or by an untrusted key.
    write_index(&r, &sign(&Spec { release_keys: vec![TIMESTAMP_SEED], ..good.clone() }, w));
    refused(w, &r, &t, 3, "release part signed by the timestamp key alone", "release part");
    write_index(&r, &sign(&Spec { release_keys: vec![OTHER_SEED], ..good.clone() }, w));
    refused(w, &r, &t, 3, "release part signed by an untrusted key", "release part");
    // Freshness signed by a key neither named nor trusted.
    write_index(&r, &sign(&Spec { fresh_keys: vec![OTHER_SEED], ..good.clone() }, w));
    refused(w, &r, &t, 3, "freshness by an unknown key", "freshness");
    // Not an index at all.
    write_index(&r, b"\x84garbage");
    refused(w, &r, &t, 3, "garbage index", "malformed");

    // Mix-and-match between an entry and its file: wrong size, wrong id, wrong versions. Each
    // index is valid (and accepted, so each needs a higher sequence number); the bundle is not.
    let mut bad = good.clone();
    // Make v1-v2 the only way on, so the path surely uses it.
    bad.bundles.retain(|b| b.from != Some(1) || b.file == "v1-v2.ferry");
    let i2 = bad.bundles.iter().position(|b| b.file == "v1-v2.ferry").expect("v1-v2");
    let mut s1 = Spec { seq: 6, fresh_seq: 6, ..bad.clone() };
    s1.bundles[i2].size += 1;
    write_index(&r, &sign(&s1, w));
    refused(w, &r, &t, 3, "entry size differs from the file", "mix-and-match");
    let mut s2 = Spec { seq: 7, fresh_seq: 7, ..bad.clone() };
    s2.bundles[i2].id = Hash([7; 32]);
    write_index(&r, &sign(&s2, w));
    refused(w, &r, &t, 3, "entry id differs from the file", "mix-and-match");
    // The entry names v2-v3's file for the step v1→v2 (its size and digests, its id).
    let mut s3 = Spec { seq: 8, fresh_seq: 8, ..bad.clone() };
    let v23 = entry(w, "v2-v3.ferry", Some(2), 3);
    s3.bundles[i2] = BundleRef { file: "v2-v3.ferry".into(), from: Some(1), to: 2, ..v23 };
    s3.bundles.retain(|b| !(b.file == "v2-v3.ferry" && b.from == Some(2)));
    s3.bundles.sort_by_key(|b| (b.to, b.from.map_or(0, |f| f + 1), b.file.clone()));
    write_index(&r, &sign(&s3, w));
    refused(w, &r, &t, 3, "entry's versions differ from the bundle's", "mix-and-match");

    // The one that was accepted last (release 8) is now below: a rollback.
    write_index(&r, &sign(&good, w));
    refused(w, &r, &t, 10, "the first index again", "rollback");
    // Accept a good index (release 9, freshness 9) by updating to v2, then roll it back.
    let good = Spec { seq: 9, fresh_seq: 9, ..good };
    write_index(&r, &sign(&good, w));
    update(w, &r, &t, &["--to", "2"], 0);
    write_index(&r, &sign(&Spec { seq: 8, fresh_seq: 10, ..good.clone() }, w));
    refused(w, &r, &t, 10, "lower release sequence", "rollback");
    write_index(&r, &sign(&Spec { fresh_seq: 8, ..good.clone() }, w));
    refused(w, &r, &t, 10, "lower freshness sequence (freeze)", "rollback");
    write_index(&r, &sign(&Spec { created: 1_700_000_001, fresh_seq: 10, ..good.clone() }, w));
    refused(w, &r, &t, 10, "same release sequence, other content", "rollback");
    // A newer freshness of the same release part is fine.
    write_index(&r, &sign(&Spec { fresh_seq: 11, ..good.clone() }, w));
    let rep = update(w, &r, &t, &[], 0);
    assert_eq!(rep["index"]["fresh_seq"], 11);
    assert_is(w, &t, LATEST);
}

#[test]
fn sigkill_between_two_bundles_or_inside_one_then_update_completes() {
    let w = world();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Only single steps: v1 reaches v5 through four bundles.
    let s = spec(w, &["v1-v3.ferry", "v2-v4.ferry", "v3-v5.ferry"]);
    let r = repo(w, &tmp.path().join("repo"), &s);

    // Killed right after the first bundle committed.
    let t = target(w, &tmp.path().join("a"), 1);
    let mut child = spawn_paused(&mut update_cmd(w, &r, &t, &[]), "update-applied:1");
    assert_eq!(is_stopped(child.id()), Some(true), "did not stop between two bundles");
    child.kill().expect("SIGKILL");
    let st = child.wait().expect("wait");
    assert_eq!(st.signal(), Some(9));
    assert_is(w, &t, 2);
    let rep = update(w, &r, &t, &[], 0);
    assert_eq!(rep["from"], 2);
    assert_eq!(rep["applied"], serde_json::json!([3, 4, 5]));
    assert_is(w, &t, LATEST);

    // Killed inside the second bundle's commit: the next update finishes it first.
    let t = target(w, &tmp.path().join("b"), 1);
    let log = tmp.path().join("points.log");
    let count = tmp.path().join("count");
    let c = target(w, &count, 1);
    run_expect(update_cmd(w, &r, &c, &[]).env("FERRY_FAILPOINT_COUNT", &log), 0);
    let points: Vec<String> = fs::read_to_string(&log).expect("log").lines().map(str::to_string).collect();
    let first = points.iter().position(|l| l.ends_with(" update-applied")).expect("update-applied hit");
    let k = points[first..].iter().position(|l| l.ends_with(" commit-step")).expect("a commit step") + first + 2;
    let o = update_cmd(w, &r, &t, &[]).env("FERRY_CRASH_AT", k.to_string()).output().expect("run");
    assert_eq!(o.status.signal(), Some(9), "crash point {k} ({}) did not kill", points[k - 1]);
    assert!(t.join(".ferry/txn").exists(), "a transaction is pending");
    let rep = update(w, &r, &t, &[], 0);
    assert_eq!(rep["resumed"], "resumed", "{rep}");
    assert_eq!(rep["from"], 3);
    assert_eq!(rep["applied"], serde_json::json!([4, 5]));
    assert_is(w, &t, LATEST);
}

/// A static file server for `root` on 127.0.0.1 with `Range` support (what nginx does for these
/// requests), logging each request's path; stops when dropped.
struct Static {
    url: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Static {
    fn start(root: &Path) -> Static {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (root, log2, stop2) = (root.to_path_buf(), log.clone(), stop.clone());
        l.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let mut r = BufReader::new(s);
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let mut range: Option<(u64, Option<u64>)> = None;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        let (a, b) = v.trim().split_once('-').unwrap_or(("0", ""));
                        range = Some((a.parse().unwrap_or(0), b.parse().ok()));
                    }
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/").to_string());
                log2.lock().expect("lock").push(path.clone());
                let mut s = r.into_inner();
                let body = if path.contains("..") { None } else { fs::read(root.join(&path[1..])).ok() };
                let Some(body) = body else {
                    let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                };
                let n = body.len() as u64;
                let (status, a, b) = match range {
                    Some((a, b)) if a < n => ("206 Partial Content", a, b.map_or(n - 1, |b| b.min(n - 1))),
                    _ => ("200 OK", 0, n.saturating_sub(1)),
                };
                let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", b + 1 - a);
                if status.starts_with("206") {
                    head += &format!("Content-Range: bytes {a}-{b}/{n}\r\n");
                }
                head += "\r\n";
                let _ = s.write_all(head.as_bytes());
                if method != "HEAD" && n > 0 {
                    let _ = s.write_all(&body[a as usize..=b as usize]);
                }
            }
        });
        Static { url, log, stop }
    }

    /// Requests for paths ending in `suffix` so far.
    fn hits(&self, suffix: &str) -> usize {
        self.log.lock().expect("lock").iter().filter(|p| p.ends_with(suffix)).count()
    }
}

impl Drop for Static {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn over_http_a_completed_download_is_never_fetched_again() {
    let w = world();
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = spec(w, &["v1-v3.ferry", "v2-v4.ferry", "v3-v5.ferry"]);
    let r = repo(w, &tmp.path().join("repo"), &s);
    let srv = Static::start(&r);
    let t = target(w, &tmp.path().join("t"), 1);
    // Killed after the first bundle was downloaded and checked, before it was applied.
    let mut child = spawn_paused(&mut update_cmd(w, Path::new(&srv.url), &t, &[]), "update-downloaded:1");
    assert_eq!(is_stopped(child.id()), Some(true), "did not stop after the download");
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert_eq!(installed(&t), Some(1));
    let cached = t.join(".ferry/updates/v1-v2.ferry");
    assert!(cached.is_file(), "the completed download is in the cache");
    let first = srv.hits("/v1-v2.ferry");
    assert!(first > 0);
    let rep = update(w, Path::new(&srv.url), &t, &[], 0);
    assert_eq!(srv.hits("/v1-v2.ferry"), first, "v1-v2 was fetched again");
    assert_eq!(rep["applied"], serde_json::json!([2, 3, 4, 5]));
    // What crossed the network: the index and the three other bundles (each exactly once:
    // heads are fetched within the file's bytes).
    let rest: u64 = s
        .bundles
        .iter()
        .filter(|b| ["v2-v3.ferry", "v3-v4.ferry", "v4-v5.ferry"].contains(&b.file.as_str()))
        .map(|b| b.size)
        .sum();
    let got = rep["bytes_downloaded"].as_u64().expect("bytes_downloaded");
    let index_len = fs::metadata(r.join(CHANNEL).join("index.ferry-index")).expect("index").len();
    assert!(got >= rest + index_len && got < rest + index_len + 64 * 1024, "{got} vs {rest} + {index_len}");
    assert_is(w, &t, LATEST);
    // Applied bundles leave the cache.
    assert!(!cached.exists());
    assert_eq!(fs::read_dir(t.join(".ferry/updates")).expect("cache").count(), 0);
    // An entry whose BLAKE3 is not its file's (all else right): refused after the download,
    // removed from the cache, the target unchanged.
    let t2 = target(w, &tmp.path().join("t2"), 3);
    let mut bad = Spec { seq: 6, fresh_seq: 6, ..s.clone() };
    for b in bad.bundles.iter_mut().filter(|b| b.file == "v3-v4.ferry") {
        b.blake3 = Hash([9; 32]);
    }
    write_index(&r, &sign(&bad, w));
    let before = snapshot(&t2, false);
    let rep = update(w, Path::new(&srv.url), &t2, &[], 3);
    assert!(rep["error"].as_str().unwrap_or_default().contains("BLAKE3"), "{rep}");
    assert_same(&snapshot(&t2, false), &before, "BLAKE3 mismatch: target unchanged");
    assert_eq!(installed(&t2), Some(3));
    assert!(!t2.join(".ferry/updates/v3-v4.ferry").exists(), "the mismatched file left the cache");
    // Killed inside the commit of a downloaded bundle: the next run finishes that apply from
    // the cache first, then the rest, and leaves nothing in the cache.
    write_index(&r, &sign(&Spec { seq: 7, fresh_seq: 7, ..s.clone() }, w));
    let t3 = target(w, &tmp.path().join("t3"), 1);
    let mut child = spawn_paused(&mut update_cmd(w, Path::new(&srv.url), &t3, &[]), "commit-step:1");
    assert_eq!(is_stopped(child.id()), Some(true), "did not stop in the commit");
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert!(t3.join(".ferry/txn").exists() && t3.join(".ferry/updates/v1-v2.ferry").is_file());
    let hits = srv.hits("/v1-v2.ferry");
    let rep = update(w, Path::new(&srv.url), &t3, &[], 0);
    assert_eq!(rep["resumed"], "resumed", "{rep}");
    assert_eq!(rep["applied"], serde_json::json!([3, 4, 5]));
    assert_eq!(srv.hits("/v1-v2.ferry"), hits, "v1-v2 was fetched again");
    assert_is(w, &t3, LATEST);
    assert_eq!(fs::read_dir(t3.join(".ferry/updates")).expect("cache").count(), 0, "cache emptied");
    // The server gone: a network failure (6), the target as it was.
    drop(srv);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let rep = update(w, Path::new("http://127.0.0.1:1"), &t, &["--retries", "0"], 6);
    assert_eq!(rep["exit_code"], 6);
    assert_is(w, &t, LATEST);
}

#[test]
fn a_repository_written_by_ferry_build_publish_updates_every_target() {
    let w = world();
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    let ts = tmp.path().join("timestamp.secret");
    fs::write(&ts, w.timestamp.to_text()).expect("write timestamp key");
    for v in 1..=LATEST {
        let mut c = build_cmd();
        c.arg("publish").arg("--repo").arg(&repo).args(["--channel", CHANNEL, "--version", &v.to_string()]);
        c.arg("--new").arg(&w.trees[v as usize]).arg("--key").arg(w.dir.join("release.secret"));
        c.arg("--timestamp-key").arg(&ts).args(["--deltas-from", "2", "--level", "fast"]);
        run_expect(&mut c, 0);
    }
    let index = Index::decode(&fs::read(repo.join(CHANNEL).join("index.ferry-index")).expect("index")).expect("decode");
    // Targets at every version, brought there by `update --to` from an empty target.
    for v in [0, 1, 2, 3, 4] {
        let t = tmp.path().join(format!("t{v}"));
        fs::create_dir_all(&t).expect("mkdir");
        if v > 0 {
            let rep = update(w, &repo, &t, &["--channel", CHANNEL, "--to", &v.to_string()], 0);
            assert_eq!(rep["to"], v);
            assert_is(w, &t, v);
        }
        let extra: &[&str] = if v == 0 { &["--channel", CHANNEL] } else { &[] };
        let rep = update(w, &repo, &t, extra, 0);
        assert_eq!(path_files(&rep), cheapest(&index.release.bundles, (v > 0).then_some(v), LATEST), "from v{v}");
        assert_eq!(rep["index"]["by_timestamp_key"], true);
        assert_is(w, &t, LATEST);
    }
}
