//! Channel repositories (issue 15, bundle-format.md §18) end to end, against a real web server:
//! a private nginx ([`ferry_tests::nginx`]) serving a repository that `ferry-build publish` made
//! of five versions, over HTTP and over HTTPS with a test CA, and `ferry-apply update` bringing
//! targets at every version to the newest by the cheapest path; the same from a local directory;
//! refused indexes (expired, rolled back, signed by the timestamp key alone); the server killed
//! mid-download and mid-chain, the applier killed between two bundles and mid-download, and
//! `publish` killed at random points; redirects and proxies (nginx's plain-HTTP one, and a real
//! tinyproxy for CONNECT tunnels, plain http, credentials and `no_proxy`).
//!
//! The repository is built once per test process ([`fx`]); tests that change it work on copies.
//! Each test starts its own nginx. Without nginx or openssl every test skips loudly, unless
//! `FERRY_REQUIRE_NGINX=1` (CI), where it fails.

use bundle::container::{layout, Reader};
use bundle::index::{fresh_message, release_message, BundleRef, Index, BUNDLES_DIR, INDEX_FILE};
use bundle::sig::{SecretKey, Signatures, TrustPolicy};
use bundle::{Hash, Limits, Manifest};
use ferry_tests::nginx::{self, Nginx};
use ferry_tests::tinyproxy::{self, Tinyproxy};
use ferry_tests::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CHANNEL: &str = "stable";
/// `/slow/`'s rate: a bundle of ~600 KB takes a few seconds.
const RATE: u64 = 200 * 1024;
/// Versions published.
const LATEST: u64 = 5;

/// The shared fixture: trees v1..v5, keys, and the repository after each publish.
struct Fx {
    /// Served by the read-only tests' nginx: `repo/` is the repository after v5.
    root: PathBuf,
    trees: Vec<PathBuf>,
    release: SecretKey,
    release_secret: PathBuf,
    ts: SecretKey,
    ts_secret: PathBuf,
    trust: PathBuf,
    repo: PathBuf,
    /// Copies of the repository and the publisher's store right after v4 was published.
    repo4: PathBuf,
    store4: PathBuf,
    /// The index right after publishing version N (`index[N]`).
    index: Vec<Vec<u8>>,
    /// The full bundle of version N, saved when it was published.
    fulls: Vec<PathBuf>,
}

impl Fx {
    fn tree(&self, v: u64) -> &Path {
        &self.trees[v as usize]
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Version `v` of the test tree: a large file that never changes (full bundles are expensive),
/// six 100 KB noise files replaced in v3 and in v5 (deltas into those versions cost ~300 KB, in
/// six frames), one replaced in v3 and in v4, and small edits in every version.
fn make_tree(dir: &Path, v: u64) {
    for d in ["etc", "bin", "lib/mover", "share"] {
        fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    fs::write(dir.join("lib/stable.bin"), noise(1_000_000, 7)).expect("write");
    let epoch = match v {
        1 | 2 => 1,
        3 | 4 => 3,
        _ => 5,
    };
    for i in 0..6u64 {
        fs::write(dir.join(format!("lib/mover/m{i}.bin")), noise(100_000, epoch * 100 + i)).expect("write");
    }
    // Changed in v3 and again in v4: from v2, the chain 2 → 3 → 5 carries it twice, 2 → 4 → 5
    // once, so the cheapest of the two-bundle chains is unique.
    let z = match v {
        1 | 2 => 1,
        3 => 3,
        _ => 4,
    };
    fs::write(dir.join("lib/z.bin"), noise(120_000, 1000 + z)).expect("write");
    let mut conf = format!("# app configuration\nversion = {v}\n");
    for i in 0..50 {
        conf.push_str(&format!("option{i} = {}\n", if i as u64 % 5 == v { "on" } else { "off" }));
    }
    fs::write(dir.join("etc/app.conf"), conf).expect("write");
    let mut tool: Vec<u8> = b"#!/bin/sh\n# the quick brown fox jumps over the lazy dog\n".repeat(400);
    tool.extend_from_slice(format!("echo tool version {v}\n").as_bytes());
    fs::write(dir.join("bin/tool"), &tool).expect("write");
    fs::set_permissions(dir.join("bin/tool"), fs::Permissions::from_mode(0o755)).expect("chmod");
    if v < 4 {
        fs::write(dir.join("share/old.txt"), "removed in version 4\n").expect("write");
    }
    if v >= 2 {
        fs::write(dir.join("share/added2.txt"), format!("added in version 2, now {v}\n")).expect("write");
    }
    symlink("app.conf", dir.join("etc/current.conf")).expect("symlink");
}

fn write_key(dir: &Path, name: &str, seed: u8) -> (SecretKey, PathBuf, PathBuf) {
    let k = forge::secret(seed);
    let secret = dir.join(format!("{name}.secret"));
    fs::write(&secret, k.to_text()).expect("write key");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod key");
    let public = forge::write_pub(&dir.join(format!("{name}.pub")), &k);
    (k, secret, public)
}

/// `ferry-build publish` of `tree` as version `v` into `repo` with `store`.
fn publish_cmd(fx: &Fx, repo: &Path, store: &Path, tree: &Path, v: u64, deltas_from: u32) -> Command {
    let mut c = build_cmd();
    c.arg("publish")
        .arg("--repo")
        .arg(repo)
        .args(["--channel", CHANNEL])
        .arg("--new")
        .arg(tree)
        .args(["--version", &v.to_string()])
        .arg("--key")
        .arg(&fx.release_secret)
        .arg("--timestamp-key")
        .arg(&fx.ts_secret)
        .args(["--deltas-from", &deltas_from.to_string()])
        .arg("--store")
        .arg(store)
        .args(["--level", "fast", "--json"]);
    c
}

fn read_index(repo: &Path) -> Index {
    let bytes = fs::read(repo.join(CHANNEL).join(INDEX_FILE)).expect("read index");
    Index::decode(&bytes).expect("decode index")
}

fn fx() -> &'static Fx {
    static FX: OnceLock<Fx> = OnceLock::new();
    FX.get_or_init(|| {
        let t0 = Instant::now();
        // One fixture per test process; those of processes that are gone are removed.
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("channels-fixture-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let root = tmp.join(format!("channels-fixture-{}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root).expect("remove the old fixture");
        }
        fs::create_dir_all(&root).expect("mkdir fixture");
        // nginx (as root, or as nobody) must be able to read what it serves.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
        let keys = root.join("keys");
        fs::create_dir_all(&keys).expect("mkdir keys");
        let (release, release_secret, trust) = write_key(&keys, "release", 41);
        let (ts, ts_secret, _) = write_key(&keys, "timestamp", 42);
        let mut trees = vec![PathBuf::new()];
        for v in 1..=LATEST + 1 {
            let t = root.join(format!("trees/v{v}"));
            make_tree(&t, v);
            trees.push(t);
        }
        let repo = root.join("repo");
        let store = root.join("store");
        let mut fx = Fx {
            root: root.clone(),
            trees,
            release,
            release_secret,
            ts,
            ts_secret,
            trust,
            repo: repo.clone(),
            repo4: root.join("repo4"),
            store4: root.join("store4"),
            index: vec![Vec::new()],
            fulls: vec![PathBuf::new()],
        };
        fs::create_dir_all(root.join("fulls")).expect("mkdir");
        for v in 1..=LATEST {
            let tree = fx.tree(v).to_path_buf();
            let o = run_expect(&mut publish_cmd(&fx, &repo, &store, &tree, v, 2), 0);
            let _: serde_json::Value = serde_json::from_slice(&o.stdout).expect("publish --json report");
            fx.index.push(fs::read(repo.join(CHANNEL).join(INDEX_FILE)).expect("read index"));
            let idx = read_index(&repo);
            assert_eq!(idx.release.latest, v, "the index after publishing {v}");
            let full = idx.release.bundles.iter().find(|b| b.from.is_none() && b.to == v).expect("a full bundle");
            let saved = root.join(format!("fulls/v{v}.ferry"));
            fs::copy(repo.join(CHANNEL).join(BUNDLES_DIR).join(&full.file), &saved).expect("save the full bundle");
            fx.fulls.push(saved);
            if v == 4 {
                copy_tree(&repo, &fx.repo4);
                copy_tree(&store, &fx.store4);
            }
        }
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("channels fixture: 5 versions published in {:.1} s\n", t0.elapsed().as_secs_f64()).as_bytes(),
        );
        fx
    })
}

/// A target at version `v` (applied from its full bundle), or empty.
fn target_at(fx: &Fx, t: &Path, v: Option<u64>) -> PathBuf {
    fs::create_dir_all(t).expect("mkdir target");
    if let Some(v) = v {
        apply(&fx.fulls[v as usize], t, &fx.trust, 0, &["-q"]);
    }
    t.to_path_buf()
}

fn update_cmd(fx: &Fx, source: &str, t: &Path, extra: &[&str]) -> Command {
    let mut c = apply_cmd();
    c.arg("update")
        .arg(source)
        .arg("--target")
        .arg(t)
        .arg("--trust")
        .arg(&fx.trust)
        .args(["--channel", CHANNEL, "--json", "--retry-wait", "100", "--timeout", "10"])
        .args(extra)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY");
    c
}

fn update(fx: &Fx, source: &str, t: &Path, extra: &[&str]) -> Output {
    update_cmd(fx, source, t, extra).output().expect("spawn ferry-apply update")
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?} (signal {:?})\nstdout: {}\nstderr: {}",
        o.status.code(),
        o.status.signal(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn expect_code(o: &Output, code: i32, what: &str) {
    assert_eq!(o.status.code(), Some(code), "{what}: {}", show(o));
}

fn report(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("update --json: {e}: {}", show(o)))
}

/// The installed version (`ferry-apply status --json`).
fn installed(t: &Path) -> Option<u64> {
    let o = run_expect(apply_cmd().arg("status").arg("--target").arg(t).arg("--json"), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status --json");
    v["installed"]["version"].as_u64()
}

/// Every chain of `bundles` from `from` (None: empty target, which takes a full bundle first)
/// to `to`, with its total size; computed here by brute force, independently of the applier.
fn chains(bundles: &[BundleRef], from: Option<u64>, to: u64) -> Vec<(u64, Vec<String>)> {
    fn go(
        bundles: &[BundleRef],
        at: Option<u64>,
        to: u64,
        cost: u64,
        chain: &mut Vec<String>,
        out: &mut Vec<(u64, Vec<String>)>,
    ) {
        if at == Some(to) {
            out.push((cost, chain.clone()));
            return;
        }
        for b in bundles {
            if b.from == at && b.to <= to && at.is_none_or(|a| b.to > a) {
                chain.push(b.file.clone());
                go(bundles, Some(b.to), to, cost + b.size, chain, out);
                chain.pop();
            }
        }
    }
    let mut out = Vec::new();
    go(bundles, from, to, 0, &mut Vec::new(), &mut out);
    out
}

/// Assert the report's path is a chain of the index from `from` to `to` of the least total size
/// (and the very cheapest chain when only one has that size); returns the path's file names.
fn assert_cheapest(index: &Index, rep: &serde_json::Value, from: Option<u64>, to: u64) -> Vec<String> {
    let all = chains(&index.release.bundles, from, to);
    let min = all.iter().map(|c| c.0).min().unwrap_or_else(|| panic!("no chain from {from:?} to {to} in the index"));
    let path: Vec<String> =
        rep["path"].as_array().expect("path").iter().map(|s| s["file"].as_str().expect("file").to_string()).collect();
    let mine = all.iter().find(|c| c.1 == path);
    let Some((cost, _)) = mine else {
        panic!("from {from:?}: the report's path {path:?} is not a chain of the index to {to}: {rep}")
    };
    let best: Vec<&(u64, Vec<String>)> = all.iter().filter(|c| c.0 == min).collect();
    assert_eq!(*cost, min, "from {from:?}: path {path:?} costs {cost}, the cheapest {best:?} cost {min}");
    if best.len() == 1 {
        assert_eq!(path, best[0].1, "from {from:?}");
    }
    assert_eq!(rep["bytes_planned"].as_u64(), Some(min), "bytes_planned: {rep}");
    assert_eq!(rep["to"].as_u64(), Some(to));
    path
}

/// The tree and the state directory (every file's content) of a target, to prove a refused
/// update changed nothing.
fn everything(t: &Path) -> (Snapshot, Vec<(PathBuf, Vec<u8>)>) {
    let mut state = Vec::new();
    let mut stack = vec![t.join(".ferry")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.expect("entry").path();
            let md = fs::symlink_metadata(&p).expect("lstat");
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                let mut bytes = fs::read(&p).expect("read state file");
                // A refused update records why in `last_error` (what `status` shows); the rest
                // of the state must not change.
                if p.file_name().is_some_and(|n| n == "state.json") {
                    let mut v: serde_json::Value = serde_json::from_slice(&bytes).expect("state.json");
                    v.as_object_mut().map(|o| o.remove("last_error"));
                    bytes = serde_json::to_vec(&v).expect("json");
                }
                state.push((p.clone(), bytes));
            }
        }
    }
    state.sort();
    (snapshot(t, false), state)
}

fn assert_unchanged(t: &Path, before: &(Snapshot, Vec<(PathBuf, Vec<u8>)>), what: &str) {
    let after = everything(t);
    assert_same(&before.0, &after.0, what);
    let names = |s: &[(PathBuf, Vec<u8>)]| s.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(&before.1), names(&after.1), "{what}: the state directory's files changed");
    for ((p, a), (_, b)) in before.1.iter().zip(&after.1) {
        assert!(a == b, "{what}: {} changed", p.display());
    }
}

fn start_nginx(test: &str, root: &Path) -> Option<Nginx> {
    let n = Nginx::start(test, root, RATE)?;
    Some(n)
}

/// `TMP/served/repo`: a copy of repository `src` in a directory to serve; returns both paths.
fn served_copy(tmp: &tempfile::TempDir, src: &Path) -> (PathBuf, PathBuf) {
    let served = tmp.path().join("served");
    fs::create_dir_all(&served).expect("mkdir");
    let repo = served.join("repo");
    copy_tree(src, &repo);
    (served, repo)
}

fn tmpdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tmp");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

#[test]
fn every_target_reaches_the_newest_version_by_the_cheapest_path_over_http_and_https() {
    if !nginx::available("channels: http and https") {
        return;
    }
    let fx = fx();
    let Some(ng) = start_nginx("channels: http and https", &fx.root) else { return };
    let tmp = tmpdir();
    let index = read_index(&fx.repo);
    let want = snapshot(fx.tree(LATEST), false);
    let ca = ng.ca_cert().to_str().expect("utf-8 path").to_string();
    let sources = [
        ("http", ng.http("repo"), vec![]),
        ("https", ng.https("repo"), vec!["--ca-cert", ca.as_str()]),
        ("https-localhost", ng.https_localhost("repo/"), vec!["--ca-cert", ca.as_str()]),
    ];
    let mut chained = false;
    for (name, url, extra) in &sources {
        for from in [None, Some(1), Some(2), Some(3), Some(4)] {
            if *name == "https-localhost" && from != Some(2) {
                continue;
            }
            let t = target_at(fx, &tmp.path().join(format!("{name}-{from:?}")), from);
            let o = update(fx, url, &t, extra);
            expect_code(&o, 0, &format!("update {url} from {from:?}"));
            let rep = report(&o);
            let path = assert_cheapest(&index, &rep, from, LATEST);
            chained |= path.len() > 1;
            assert_eq!(rep["from"].as_u64(), from, "{rep}");
            let applied: Vec<u64> =
                rep["applied"].as_array().expect("applied").iter().filter_map(|v| v.as_u64()).collect();
            assert_eq!(applied.last(), Some(&LATEST), "{rep}");
            assert_eq!(applied.len(), path.len(), "{rep}");
            assert!(!rep["up_to_date"].as_bool().unwrap_or(true) && !rep["dry_run"].as_bool().unwrap_or(true), "{rep}");
            assert!(
                rep["bytes_downloaded"].as_u64().unwrap_or(0) >= rep["bytes_planned"].as_u64().unwrap_or(u64::MAX),
                "{rep}"
            );
            assert_eq!(rep["index"]["release_seq"].as_u64(), Some(index.release.seq), "{rep}");
            assert!(rep["index"]["by_timestamp_key"].as_bool().unwrap_or(false), "{rep}");
            assert_same(&want, &snapshot(&t, false), &format!("{name} from {from:?}"));
            assert_eq!(installed(&t), Some(LATEST));
            // Again: up to date, nothing downloaded but the index.
            let o = update(fx, url, &t, extra);
            expect_code(&o, 0, "the second update");
            let rep = report(&o);
            assert_eq!(rep["up_to_date"].as_bool(), Some(true), "{rep}");
            assert!(rep["path"].as_array().is_none_or(|p| p.is_empty()), "{rep}");
        }
    }
    assert!(chained, "no target needed a chain of deltas: the fixture does not test chains");
    // Every bundle download came whole through nginx (status 200 or 206, nothing else).
    for r in ng.requests() {
        assert!(r.status == 200 || r.status == 206, "{r:?}");
    }

    // HTTPS with a certificate of a CA the target does not trust: a network error, nothing changed.
    let t = target_at(fx, &tmp.path().join("untrusted-ca"), Some(3));
    let before = everything(&t);
    let o = update(fx, &ng.https("repo"), &t, &[]);
    expect_code(&o, 6, "https without --ca-cert");
    assert!(String::from_utf8_lossy(&o.stderr).to_lowercase().contains("certificate"), "{}", show(&o));
    assert_unchanged(&t, &before, "https without --ca-cert");
}

#[test]
fn from_a_local_directory_and_from_a_repository_without_the_newest_deltas() {
    if !nginx::available("channels: stick and fewer deltas") {
        return;
    }
    let fx = fx();
    let tmp = tmpdir();
    let index = read_index(&fx.repo);
    let want = snapshot(fx.tree(LATEST), false);
    // The stick: the repository as a directory.
    let stick = fx.repo.to_str().expect("utf-8").to_string();
    for from in [None, Some(1), Some(3)] {
        let t = target_at(fx, &tmp.path().join(format!("stick-{from:?}")), from);
        let o = update(fx, &stick, &t, &[]);
        expect_code(&o, 0, &format!("update from the stick from {from:?}"));
        assert_cheapest(&index, &report(&o), from, LATEST);
        assert_same(&want, &snapshot(&t, false), &format!("stick from {from:?}"));
    }

    // Version 5 published with deltas from version 4 only: a target at 3 takes the chain
    // 3 → 4 → 5, over HTTP and from the stick.
    let (served, repo) = served_copy(&tmp, &fx.repo4);
    let store = tmp.path().join("store");
    copy_tree(&fx.store4, &store);
    run_expect(&mut publish_cmd(fx, &repo, &store, fx.tree(LATEST), LATEST, 1), 0);
    let idx = read_index(&repo);
    assert!(
        !idx.release.bundles.iter().any(|b| b.from == Some(3) && b.to == LATEST),
        "--deltas-from 1 built a delta from 3 to 5"
    );
    let Some(ng) = start_nginx("channels: fewer deltas", &served) else { return };
    for (i, src) in [ng.http("repo"), repo.to_str().expect("utf-8").to_string()].iter().enumerate() {
        let t = target_at(fx, &tmp.path().join(format!("fewer-{i}")), Some(3));
        let o = update(fx, src, &t, &[]);
        expect_code(&o, 0, &format!("update {src} without a delta from 3 to 5"));
        let path = assert_cheapest(&idx, &report(&o), Some(3), LATEST);
        assert!(path.len() >= 2, "{path:?}");
        assert_same(&want, &snapshot(&t, false), "a chain instead of the missing delta");
    }

    // The index names the delta 3 → 5 but its file is gone (an operator deleted it; a publish
    // never leaves this): the update finds it missing (HTTP 404, no such file on the stick),
    // leaves it out and takes the cheapest chain without it, which it reports.
    let broken = served.join("broken");
    copy_tree(&fx.repo, &broken);
    let full_index = read_index(&broken);
    let gone = full_index
        .release
        .bundles
        .iter()
        .find(|b| b.from == Some(3) && b.to == LATEST)
        .expect("a delta from 3 to 5")
        .file
        .clone();
    fs::remove_file(broken.join(CHANNEL).join(BUNDLES_DIR).join(&gone)).expect("rm");
    let mut without = full_index.clone();
    without.release.bundles.retain(|b| b.file != gone);
    for (i, src) in [ng.http("broken"), broken.to_str().expect("utf-8").to_string()].iter().enumerate() {
        let t = target_at(fx, &tmp.path().join(format!("broken-{i}")), Some(3));
        let o = update(fx, src, &t, &["--retries", "1"]);
        expect_code(&o, 0, &format!("update {src} with {gone} missing"));
        let r = report(&o);
        assert_eq!(r["missing"], serde_json::json!([gone.clone()]), "{r}");
        assert_cheapest(&without, &r, Some(3), LATEST);
        assert_same(&want, &snapshot(&t, false), "around the missing bundle");
    }
    // From a directory, the files of the chosen path are looked for before anything is applied:
    // a dry run already reports the missing one and the path around it, and changes nothing.
    let t = target_at(fx, &tmp.path().join("broken-dry"), Some(3));
    let before = snapshot(&t, false);
    let o = update(fx, broken.to_str().expect("utf-8"), &t, &["--dry-run"]);
    expect_code(&o, 0, &format!("dry run with {gone} missing"));
    let r = report(&o);
    assert_eq!(r["missing"], serde_json::json!([gone.clone()]), "{r}");
    assert_cheapest(&without, &r, Some(3), LATEST);
    assert_same(&before, &snapshot(&t, false), "dry run");
}

/// Sign `index`'s parts again after `edit`: the release part with `release_keys` (its old
/// signatures kept if `release_keys` is empty and the part unchanged), the freshness part
/// (bound to the release part) with `fresh_keys`.
fn resign(
    index: &Index,
    release_keys: &[&SecretKey],
    fresh_keys: &[&SecretKey],
    edit: impl FnOnce(&mut bundle::index::Release, &mut bundle::index::Fresh),
) -> Vec<u8> {
    let mut release = index.release.clone();
    let mut fresh = index.fresh.clone();
    edit(&mut release, &mut fresh);
    let release_sigs = if release_keys.is_empty() {
        assert_eq!(release, index.release, "an edited release part needs signing");
        index.release_sigs.clone()
    } else {
        let mut s = Signatures::new();
        let m = release_message(&release.encode());
        for k in release_keys {
            s.insert(k.public().bytes, k.sign_message(&m));
        }
        s
    };
    fresh.release = Hash::of(&release.encode());
    fresh.release_seq = release.seq;
    let mut fresh_sigs = Signatures::new();
    let m = fresh_message(&fresh.encode());
    for k in fresh_keys {
        fresh_sigs.insert(k.public().bytes, k.sign_message(&m));
    }
    let out = Index::new(release, release_sigs, fresh, fresh_sigs).encode();
    Index::decode(&out).expect("the re-signed index decodes");
    out
}

fn bundle_id(bytes: &[u8]) -> Hash {
    let mut r = Reader::new(bytes, Limits::default());
    let (mb, _) = r.head().expect("bundle head");
    Hash::of(&mb)
}

#[test]
fn expired_rolled_back_and_timestamp_only_indexes_are_refused_and_change_nothing() {
    if !nginx::available("channels: refused indexes") {
        return;
    }
    let fx = fx();
    let tmp = tmpdir();
    let (served, repo) = served_copy(&tmp, &fx.repo);
    let index_path = repo.join(CHANNEL).join(INDEX_FILE);
    let good = fs::read(&index_path).expect("read index");
    let index = Index::decode(&good).expect("decode");
    let Some(ng) = start_nginx("channels: refused indexes", &served) else { return };
    let url = ng.http("repo");
    let t = target_at(fx, &tmp.path().join("t"), Some(3));
    // The target has accepted an index before (so the refusals below are not first contacts).
    let o = update(fx, &url, &t, &["--to", "4"]);
    expect_code(&o, 0, "update to 4");
    assert_eq!(installed(&t), Some(4));

    let refuse = |bytes: &[u8], code: i32, needle: &str, what: &str, extra: &[&str]| {
        fs::write(&index_path, bytes).expect("write index");
        let before = everything(&t);
        let o = update(fx, &url, &t, extra);
        expect_code(&o, code, what);
        assert!(String::from_utf8_lossy(&o.stderr).contains(needle), "{what}: no {needle:?} in {}", show(&o));
        assert_unchanged(&t, &before, what);
        let o = update(fx, repo.to_str().expect("utf-8"), &t, extra);
        expect_code(&o, code, &format!("{what} (from the directory)"));
        assert_unchanged(&t, &before, what);
    };
    let (r, ts) = (&fx.release, &fx.ts);
    let n = now();

    // Expired: the freshness part (signed by the timestamp key as a refresh would), beyond the
    // default allowance of an hour; then within it but with --clock-allowance 0.
    let expired = resign(&index, &[], &[ts], |_, f| {
        f.seq += 1;
        f.issued = n - 3 * 86400;
        f.expires = n - 7200;
    });
    refuse(&expired, 10, "expired", "an expired freshness part", &[]);
    let just_expired = resign(&index, &[], &[ts], |_, f| {
        f.seq += 1;
        f.expires = n - 60;
    });
    refuse(
        &just_expired,
        10,
        "expired",
        "a freshness part expired a minute ago, no clock allowance",
        &["--clock-allowance", "0"],
    );
    // The release part's own expiry bounds any refresh.
    let release_expired = resign(&index, &[r], &[ts], |rel, f| {
        rel.expires = Some(n - 7200);
        f.seq += 1;
    });
    refuse(&release_expired, 10, "expired", "an expired release part", &[]);

    // The timestamp key alone: a release part naming a new version 6 whose bundle (from 4)
    // is signed by the timestamp key, the release part signed by the timestamp key too.
    let forged = tmp.path().join("v4-v6.ferry");
    build(Some(fx.tree(4)), fx.tree(6), &fx.ts_secret, 6, &forged, &["--channel", CHANNEL, "--base-version", "4"]);
    let fb = fs::read(&forged).expect("read forged bundle");
    let name = "v4-v6.forged.ferry";
    fs::write(repo.join(CHANNEL).join(BUNDLES_DIR).join(name), &fb).expect("plant bundle");
    let add_v6 = |rel: &mut bundle::index::Release, f: &mut bundle::index::Fresh| {
        rel.seq += 1;
        rel.latest = 6;
        rel.bundles.push(BundleRef {
            file: name.into(),
            from: Some(4),
            to: 6,
            size: fb.len() as u64,
            blake3: Hash::of(&fb),
            id: bundle_id(&fb),
        });
        f.seq += 1;
    };
    let ts_only = resign(&index, &[ts], &[ts], add_v6);
    refuse(&ts_only, 3, "release part", "a release part signed by the timestamp key alone", &[]);
    // The same release part with the real release key's signature beside the timestamp key's:
    // the index is accepted, but the bundle it names is signed by no release key.
    let both = resign(&index, &[r, ts], &[ts], add_v6);
    fs::write(&index_path, &both).expect("write index");
    let before = everything(&t).0;
    let o = update(fx, &url, &t, &[]);
    expect_code(&o, 3, "a bundle signed by the timestamp key alone");
    assert_same(&before, &snapshot(&t, false), "after the bundle signed by no release key");
    assert_eq!(installed(&t), Some(4));
    // Mix-and-match: the freshness part of another index.
    let mut mixed = Index::decode(&good).expect("decode");
    let other = Index::decode(&fx.index[4]).expect("decode index 4");
    mixed.fresh = other.fresh.clone();
    mixed.fresh_bytes = other.fresh_bytes.clone();
    mixed.fresh_sigs = other.fresh_sigs.clone();

    // Rollback: back to the good index (seq 5), reach 5; then the index of version 4 (release
    // seq 4) and then the good release part with an older freshness part are refused.
    let t2 = target_at(fx, &tmp.path().join("t2"), Some(3));
    fs::write(&index_path, &good).expect("write index");
    let refreshed = resign(&index, &[], &[ts], |_, f| f.seq += 10);
    fs::write(&index_path, &refreshed).expect("write index");
    let o = update(fx, &url, &t2, &[]);
    expect_code(&o, 0, "update with the refreshed index");
    assert_eq!(installed(&t2), Some(LATEST));
    let refuse2 = |bytes: &[u8], code: i32, what: &str| {
        fs::write(&index_path, bytes).expect("write index");
        let before = everything(&t2);
        let o = update(fx, &url, &t2, &[]);
        expect_code(&o, code, what);
        assert_unchanged(&t2, &before, what);
    };
    refuse2(&fx.index[4], 10, "the index of version 4 after that of version 5");
    refuse2(&good, 10, "an older freshness part of the same release");
    refuse2(&mixed.encode(), 3, "the freshness part of another index (mix-and-match)");
}

/// The frames' byte ranges of a bundle file.
fn frame_spans(bundle: &[u8]) -> Vec<(u64, u64)> {
    let mut r = Reader::new(bundle, Limits::default());
    let (mb, sb) = r.head().expect("head");
    let m = Manifest::decode(&mb, &Limits::default()).expect("manifest");
    layout(mb.len() as u64, sb.len() as u64, &m.frames).iter().map(|s| (s.start, s.end)).collect()
}

/// The frames `fetch` has verified of `file` in `cache` (its `.fetch` progress file).
fn verified_frames(cache: &Path, file: &str) -> Vec<usize> {
    let Ok(text) = fs::read(cache.join(format!("{file}.fetch"))) else { return Vec::new() };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else { return Vec::new() };
    v["verified_frames"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect())
        .unwrap_or_default()
}

/// Wait until at least `n` frames of `file` are verified in `cache`; panics after 60 s or if
/// `child` exits first.
fn wait_frames(child: &mut std::process::Child, cache: &Path, file: &str, n: usize) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = verified_frames(cache, file);
        if v.len() >= n {
            return v;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("update exited ({st}) before {n} frames of {file} were verified");
        }
        assert!(Instant::now() < deadline, "{file}: {n} frames not verified within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The byte range `[a, b)` a logged request asked for (`size` for an open end).
fn range_of(r: &nginx::Request, size: u64) -> (u64, u64) {
    let spec = r.range.as_deref().and_then(|x| x.strip_prefix("bytes=")).unwrap_or("0-");
    let (a, b) = spec.split_once('-').unwrap_or(("0", ""));
    let a = a.parse().unwrap_or(0);
    let b = b.parse::<u64>().map(|b| b + 1).unwrap_or(size);
    (a, b.min(size))
}

/// No GET of `file` logged by `ng` (since its log was last cleared) asked again for a byte of
/// a frame in `done`.
fn assert_not_refetched(ng: &Nginx, bundle: &[u8], file: &str, done: &[usize], what: &str) {
    let spans = frame_spans(bundle);
    let first = spans.first().map_or(0, |s| s.0);
    for r in ng.requests().iter().filter(|r| r.method == "GET" && r.path.ends_with(file)) {
        let (a, b) = range_of(r, bundle.len() as u64);
        let again: u64 = done.iter().map(|&i| b.min(spans[i].1).saturating_sub(a.max(spans[i].0))).sum();
        // The head (manifest and signatures, before the frames) is read again to check the
        // signatures, in reads that may run a few KiB into the first frames; a request for
        // frames must not ask for a verified one again.
        let allowed = if a < first { 8192 } else { 0 };
        assert!(again <= allowed, "{what}: {r:?} asks again for {again} bytes of frames {done:?} verified before");
    }
}

#[test]
fn the_server_killed_mid_download_and_mid_chain_and_the_applier_killed_mid_download() {
    if !nginx::available("channels: server killed") {
        return;
    }
    let fx = fx();
    let tmp = tmpdir();
    // Slow enough that the applier's progress file (saved once a second) shows a download
    // midway: a delta of ~300 KB in six frames or more takes about 3 s.
    let Some(mut ng) = Nginx::start("channels: server killed", &fx.root, 96 * 1024) else { return };
    let index = read_index(&fx.repo);
    let t = target_at(fx, &tmp.path().join("t"), Some(1));
    let cache = tmp.path().join("cache");
    let cache_s = cache.to_str().expect("utf-8").to_string();
    let url = ng.http("slow/repo");
    // The plan first: a chain with (at least) two bundles of several frames, `a` and then `b`.
    let o = update(fx, &url, &t, &["--dry-run", "--cache", &cache_s]);
    expect_code(&o, 0, "dry run");
    let path = assert_cheapest(&index, &report(&o), Some(1), LATEST);
    let bytes: Vec<Vec<u8>> =
        path.iter().map(|f| fs::read(fx.repo.join(CHANNEL).join(BUNDLES_DIR).join(f)).expect("read bundle")).collect();
    let big: Vec<usize> = (0..path.len()).filter(|&i| frame_spans(&bytes[i]).len() >= 5).collect();
    assert!(big.len() >= 2, "from 1 the path {path:?} has fewer than two large bundles; the test needs them");
    let (a, b) = (big[0], big[1]);

    // Run 1: the server is killed while bundle `a` downloads (and restarted: the same run
    // continues), then the applier is killed (SIGKILL) while bundle `b` downloads.
    let mut child = update_cmd(fx, &url, &t, &["--cache", &cache_s, "--retries", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn update");
    let done_a = wait_frames(&mut child, &cache, &path[a], 2);
    ng.kill();
    std::thread::sleep(Duration::from_millis(300));
    ng.clear_log();
    ng.restart();
    let done_b = wait_frames(&mut child, &cache, &path[b], 2);
    // Each bundle is applied before the next is downloaded.
    let version_before_b = index.release.bundles.iter().find(|x| x.file == path[b - 1]).expect("in index").to;
    assert_eq!(installed(&t), Some(version_before_b));
    assert_not_refetched(&ng, &bytes[a], &path[a], &done_a, "after the server restarted");
    assert!(
        ng.bytes_served(&path[a]) <= bytes[a].len() as u64 - span_bytes(&bytes[a], &done_a) + 8192,
        "{} downloaded again after the restart: {:?}",
        path[a],
        ng.requests()
    );
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.signal(), Some(9), "{}", show(&out));
    // The server also goes away and comes back while the applier is down.
    ng.kill();
    let done_b = {
        let now = verified_frames(&cache, &path[b]);
        assert!(now.len() >= done_b.len(), "{now:?} {done_b:?}");
        let frames = frame_spans(&bytes[b]).len();
        assert!(now.len() < frames, "{} was complete when the applier was killed: too fast to test", path[b]);
        now
    };
    ng.clear_log();
    ng.restart();

    // Run 2 completes; no bundle applied before is fetched again, nor any verified frame of `b`.
    let o = update(fx, &url, &t, &["--cache", &cache_s]);
    expect_code(&o, 0, "the update after the kills");
    let rep = report(&o);
    assert_same(&snapshot(fx.tree(LATEST), false), &snapshot(&t, false), "after the interruptions");
    for f in &path[..b] {
        assert!(
            !ng.requests().iter().any(|r| r.method == "GET" && r.path.ends_with(f.as_str())),
            "{f}, applied before, was fetched again: {:?}",
            ng.requests()
        );
    }
    assert_not_refetched(&ng, &bytes[b], &path[b], &done_b, "after the applier was killed");
    let saved = span_bytes(&bytes[b], &done_b);
    let served = ng.bytes_served(&path[b]);
    // At most the head's re-read (see assert_not_refetched) beyond what was missing.
    assert!(
        served <= bytes[b].len() as u64 - saved + 8192,
        "{served} bytes of {} served again though {saved} were verified before",
        path[b]
    );
    let rest: u64 = bytes[b + 1..].iter().map(|x| x.len() as u64).sum();
    let most = bytes[b].len() as u64 - saved + 8192 + rest + 64 * 1024;
    assert!(rep["bytes_downloaded"].as_u64().unwrap_or(u64::MAX) <= most, "more than {most} bytes: {rep}");
}

/// Bytes of the frames `done` of a bundle.
fn span_bytes(bundle: &[u8], done: &[usize]) -> u64 {
    let spans = frame_spans(bundle);
    done.iter().map(|&i| spans[i].1 - spans[i].0).sum()
}

#[test]
fn the_applier_killed_between_two_bundles_of_a_chain_resumes_without_downloading_again() {
    if !nginx::available("channels: applier killed between bundles") {
        return;
    }
    let fx = fx();
    let tmp = tmpdir();
    let Some(ng) = start_nginx("channels: applier killed between bundles", &fx.root) else { return };
    let index = read_index(&fx.repo);
    let t = target_at(fx, &tmp.path().join("t"), Some(1));
    let url = ng.http("repo");
    let mut c = update_cmd(fx, &url, &t, &[]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let child = spawn_paused(&mut c, "update-applied");
    assert_eq!(is_stopped(child.id()), Some(true), "update did not stop between two bundles");
    let mut child = child;
    child.kill().expect("SIGKILL");
    let st = child.wait().expect("wait");
    assert_eq!(st.signal(), Some(9));
    let mid = installed(&t).expect("a version after the first bundle");
    assert!(mid > 1 && mid < LATEST, "version {mid} after the first bundle of a chain");
    assert_same(&snapshot(fx.tree(mid), false), &snapshot(&t, false), "between two bundles");
    let first: Vec<String> = ng
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/bundles/"))
        .map(|r| r.path.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    ng.clear_log();
    let o = update(fx, &url, &t, &[]);
    expect_code(&o, 0, "update after the kill");
    let rep = report(&o);
    assert_eq!(rep["from"].as_u64(), Some(mid), "{rep}");
    assert_cheapest(&index, &rep, Some(mid), LATEST);
    assert_same(&snapshot(fx.tree(LATEST), false), &snapshot(&t, false), "after the resumed chain");
    for f in &first {
        assert!(
            !ng.requests().iter().any(|r| r.method == "GET" && r.path.ends_with(f.as_str())),
            "{f}, applied before the kill, was downloaded again"
        );
    }
}

/// Every reader reads `repo` consistently: the index decodes and verifies, and every bundle it
/// names is there, complete (size and BLAKE3).
fn assert_consistent(fx: &Fx, repo: &Path, what: &str) -> Index {
    let idx = read_index(repo);
    let policy = TrustPolicy { keys: vec![fx.release.public()], threshold: 1, retired: vec![] };
    idx.verify(&policy, now(), 0, None).unwrap_or_else(|e| panic!("{what}: the index does not verify: {e}"));
    for b in &idx.release.bundles {
        let p = repo.join(CHANNEL).join(BUNDLES_DIR).join(&b.file);
        let data = fs::read(&p).unwrap_or_else(|e| panic!("{what}: the index names {} which is missing: {e}", b.file));
        assert_eq!(data.len() as u64, b.size, "{what}: {} is incomplete", b.file);
        assert_eq!(Hash::of(&data), b.blake3, "{what}: {} has other bytes", b.file);
    }
    idx
}

#[test]
fn publish_killed_at_random_points_leaves_a_repository_every_reader_reads() {
    if !nginx::available("channels: publish killed") {
        return;
    }
    let fx = fx();
    let tmp = tmpdir();
    let (served, repo) = served_copy(&tmp, &fx.repo4);
    let store = tmp.path().join("store");
    copy_tree(&fx.store4, &store);
    let Some(ng) = start_nginx("channels: publish killed", &served) else { return };
    // How long an uninterrupted publish of version 5 takes, on a scratch copy.
    let (srepo, sstore) = (tmp.path().join("scratch-repo"), tmp.path().join("scratch-store"));
    copy_tree(&fx.repo4, &srepo);
    copy_tree(&fx.store4, &sstore);
    let t0 = Instant::now();
    run_expect(&mut publish_cmd(fx, &srepo, &sstore, fx.tree(LATEST), LATEST, 2), 0);
    // Updated below whenever a publish finishes before its kill: the first run may have been
    // slowed by something else on the machine, and kill points past the end interrupt nothing.
    let mut full = t0.elapsed();
    // Kill points spread over the run (deterministic pseudo-random fractions).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut interrupted = 0;
    for k in 0..10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let frac = (x % 1000) as f64 / 1000.0;
        let at = full.mul_f64(if k == 9 { 0.97 } else { frac });
        let started = Instant::now();
        let mut child = publish_cmd(fx, &repo, &store, fx.tree(LATEST), LATEST, 2)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn publish");
        while started.elapsed() < at && child.try_wait().expect("try_wait").is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().expect("try_wait").is_some() {
            full = full.min(started.elapsed());
        }
        let _ = child.kill();
        let st = child.wait().expect("wait");
        let what = format!("publish killed after {at:?} of {full:?}");
        let idx = assert_consistent(fx, &repo, &what);
        // A reader: the dry run of a target at 3 over HTTP.
        let t = target_at(fx, &tmp.path().join(format!("t{k}")), Some(3));
        let o = update(fx, &ng.http("repo"), &t, &["--dry-run"]);
        expect_code(&o, 0, &format!("{what}: a dry run"));
        assert_eq!(report(&o)["to"].as_u64(), Some(idx.release.latest), "{what}");
        if idx.release.latest == LATEST {
            // It finished (or wrote its index just before the kill): start over from version 4,
            // keeping nothing of it.
            assert!(st.success() || st.signal() == Some(9), "{what}: {st}");
            fs::remove_dir_all(&repo).expect("rm");
            fs::remove_dir_all(&store).expect("rm");
            copy_tree(&fx.repo4, &repo);
            copy_tree(&fx.store4, &store);
        } else {
            assert_eq!(st.signal(), Some(9), "{what}: exited without publishing: {st}");
            interrupted += 1;
        }
    }
    assert!(interrupted >= 4, "only {interrupted} of 10 kills interrupted a publish");
    // After the kills, publishing again completes, and --prune removes what they left.
    run_expect(&mut publish_cmd(fx, &repo, &store, fx.tree(LATEST), LATEST, 2), 0);
    run_expect(
        build_cmd()
            .arg("publish")
            .arg("--prune")
            .arg("--repo")
            .arg(&repo)
            .args(["--channel", CHANNEL])
            .arg("--store")
            .arg(&store),
        0,
    );
    let named: Vec<String> = read_index(&repo).release.bundles.iter().map(|b| b.file.clone()).collect();
    for e in fs::read_dir(repo.join(CHANNEL).join(BUNDLES_DIR)).expect("read_dir") {
        let n = e.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(named.contains(&n), "{n} is left in bundles/ after --prune");
    }
    let idx = assert_consistent(fx, &repo, "after publishing again");
    assert_eq!(idx.release.latest, LATEST);
    let t = target_at(fx, &tmp.path().join("final"), Some(3));
    let o = update(fx, &ng.http("repo"), &t, &[]);
    expect_code(&o, 0, "update from the republished repository");
    assert_same(&snapshot(fx.tree(LATEST), false), &snapshot(&t, false), "after the killed publishes");
}

#[test]
fn redirects_to_http_and_https_are_followed_to_file_refused_and_a_proxy_is_used() {
    if !nginx::available("channels: redirects") {
        return;
    }
    let fx = fx();
    let tmp = tmpdir();
    let Some(ng) = start_nginx("channels: redirects", &fx.root) else { return };
    let want = snapshot(fx.tree(LATEST), false);
    let ca = ng.ca_cert().to_str().expect("utf-8").to_string();
    for (i, (url, extra)) in [
        (ng.http("to-http/repo"), vec![]),
        (ng.http("to-https/repo"), vec!["--ca-cert", ca.as_str()]),
        (ng.https("to-http/repo"), vec!["--ca-cert", ca.as_str()]),
    ]
    .iter()
    .enumerate()
    {
        let t = target_at(fx, &tmp.path().join(format!("r{i}")), Some(3));
        let o = update(fx, url, &t, extra);
        expect_code(&o, 0, &format!("update through a redirect: {url}"));
        assert_same(&want, &snapshot(&t, false), url);
    }
    for url in [ng.http("to-file/repo"), ng.http("loop/repo")] {
        let t = target_at(fx, &tmp.path().join("refused"), Some(3));
        let before = everything(&t);
        let o = update(fx, &url, &t, &["--retries", "1"]);
        expect_code(&o, 6, &format!("update through {url}"));
        assert_unchanged(&t, &before, &url);
        fs::remove_dir_all(&t).expect("rm");
    }

    // http_proxy from the environment: every request goes through the proxy port.
    ng.clear_log();
    let t = target_at(fx, &tmp.path().join("proxied"), Some(3));
    let o = update_cmd(fx, &ng.http("repo"), &t, &[])
        .env("http_proxy", format!("http://127.0.0.1:{}", ng.proxy_port))
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .expect("spawn");
    expect_code(&o, 0, "update through the proxy");
    assert_same(&want, &snapshot(&t, false), "through the proxy");
    let reqs = ng.requests();
    let via = reqs.iter().filter(|r| r.port == ng.proxy_port).count();
    let direct = reqs.iter().filter(|r| r.port == ng.http_port).count();
    assert!(via > 0 && via == direct, "requests via the proxy {via}, served {direct}: {reqs:?}");
}

/// `update_cmd` with the proxy variables `vars` set and every other one removed.
fn proxied(mut c: Command, vars: &[(&str, &str)]) -> Output {
    for v in ["http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"] {
        c.env_remove(v);
    }
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().expect("spawn ferry-apply")
}

#[test]
fn https_and_http_through_a_real_connect_proxy_and_no_proxy_bypasses_it() {
    const NAME: &str = "channels: through tinyproxy";
    if !nginx::available(NAME) || !tinyproxy::available(NAME) {
        return;
    }
    let fx = fx();
    let tmp = tmpdir();
    let Some(ng) = start_nginx(NAME, &fx.root) else { return };
    let Some(tp) = Tinyproxy::start(NAME, &[ng.https_port], None) else { return };
    let want = snapshot(fx.tree(LATEST), false);
    let ca = ng.ca_cert().to_str().expect("utf-8").to_string();
    let tunnel = format!("127.0.0.1:{}", ng.https_port);
    let through = |tp: &Tinyproxy, what: &str| {
        let r = tp.requests();
        tp.clear_log();
        assert!(!r.is_empty(), "{what}: nothing went through the proxy: {}", tp.errors());
        r
    };

    // https: every connection is a CONNECT tunnel to nginx's https port, with the private CA.
    let t = target_at(fx, &tmp.path().join("https"), Some(3));
    let o = proxied(update_cmd(fx, &ng.https("repo"), &t, &["--ca-cert", &ca]), &[("https_proxy", &tp.url())]);
    expect_code(&o, 0, "update over https through tinyproxy");
    assert_same(&want, &snapshot(&t, false), "https through tinyproxy");
    let r = through(&tp, "update over https");
    assert!(r.iter().all(|r| r.method == "CONNECT" && r.target == tunnel), "{r:?}");
    // The same for `fetch` of one bundle (HTTPS_PROXY, upper case, works too).
    let file = &read_index(&fx.repo).release.bundles[0].file;
    let url = ng.https(&format!("repo/{CHANNEL}/{BUNDLES_DIR}/{file}"));
    let mut c = apply_cmd();
    c.arg("fetch").arg(&url).arg("--into").arg(tmp.path().join("fetched")).args(["--ca-cert", &ca, "--timeout", "10"]);
    let o = proxied(c, &[("HTTPS_PROXY", &tp.url())]);
    expect_code(&o, 0, "fetch over https through tinyproxy");
    let served = fx.repo.join(CHANNEL).join(BUNDLES_DIR).join(file);
    assert!(fs::read(tmp.path().join("fetched").join(file)).ok() == fs::read(&served).ok(), "fetched: {}", show(&o));
    let r = through(&tp, "fetch over https");
    assert!(r.iter().all(|r| r.method == "CONNECT" && r.target == tunnel), "{r:?}");

    // no_proxy naming the server's host: nothing goes through the proxy.
    let t = target_at(fx, &tmp.path().join("no-proxy"), Some(3));
    let vars = [("https_proxy", tp.url()), ("no_proxy", "localhost,127.0.0.1".to_string())];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = proxied(update_cmd(fx, &ng.https("repo"), &t, &["--ca-cert", &ca]), &vars);
    expect_code(&o, 0, "update over https with no_proxy");
    assert_same(&want, &snapshot(&t, false), "https with no_proxy");
    assert_eq!(tp.requests(), vec![], "no_proxy names 127.0.0.1: {}", tp.errors());

    // Plain http through the same proxy: absolute-form GETs, none of them a tunnel.
    let t = target_at(fx, &tmp.path().join("http"), Some(3));
    let o = proxied(update_cmd(fx, &ng.http("repo"), &t, &[]), &[("http_proxy", &tp.url())]);
    expect_code(&o, 0, "update over http through tinyproxy");
    assert_same(&want, &snapshot(&t, false), "http through tinyproxy");
    let r = through(&tp, "update over http");
    let origin = format!("http://127.0.0.1:{}/repo/{CHANNEL}/", ng.http_port);
    assert!(r.iter().all(|r| r.method != "CONNECT" && r.target.starts_with(&origin)), "{r:?}");
    assert!(
        r.iter().any(|r| r.target.ends_with(INDEX_FILE)) && r.iter().any(|r| r.target.contains(BUNDLES_DIR)),
        "{r:?}"
    );

    // A proxy that wants credentials: given in the URL (percent-encoded: `%5F` is `_`), they
    // are sent with CONNECT and with plain-http requests; wrong ones are refused (exit 6, the
    // target unchanged) and never printed.
    let Some(auth) = Tinyproxy::start(NAME, &[ng.https_port], Some(("ferry", "pass_word"))) else { return };
    let with = |user: &str| format!("http://{user}@127.0.0.1:{}", auth.port);
    for (scheme, var, url, extra) in [
        ("https", "https_proxy", ng.https("repo"), vec!["--ca-cert", ca.as_str()]),
        ("http", "http_proxy", ng.http("repo"), vec![]),
    ] {
        let t = target_at(fx, &tmp.path().join(format!("auth-{scheme}")), Some(3));
        let before = everything(&t);
        let o = proxied(
            update_cmd(fx, &url, &t, &[&["--retries", "1"][..], &extra].concat()),
            &[(var, &with("ferry:wrong_one"))],
        );
        expect_code(&o, 6, &format!("{scheme} through the proxy with a wrong password"));
        assert!(!String::from_utf8_lossy(&o.stderr).contains("wrong_one"), "the password was printed: {}", show(&o));
        assert_unchanged(&t, &before, &format!("{scheme}: wrong proxy password"));
        auth.clear_log();
        let o = proxied(update_cmd(fx, &url, &t, &extra), &[(var, &with("ferry:pass%5Fword"))]);
        expect_code(&o, 0, &format!("update over {scheme} through a proxy with credentials"));
        assert_same(&want, &snapshot(&t, false), &format!("{scheme} through the proxy with credentials"));
        through(&auth, &format!("{scheme} with credentials"));
    }
}

#[test]
fn the_test_nginx_serves_http_https_throttled_and_logs_what_it_served() {
    if !nginx::available("channels: nginx harness") {
        return;
    }
    let tmp = tmpdir();
    let served = tmp.path().join("served");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&served).expect("mkdir");
    fs::create_dir_all(&tree).expect("mkdir");
    fs::write(tree.join("noise.bin"), noise(300_000, 3)).expect("write");
    let (secret, public) = keygen(tmp.path(), "k");
    let b = served.join("b.ferry");
    build(None, &tree, &secret, 1, &b, &[]);
    let size = fs::metadata(&b).expect("stat").len();
    let Some(mut ng) = Nginx::start("channels: nginx harness", &served, 100 * 1024) else { return };
    let fetch = |url: &str, into: &str, extra: &[&str]| {
        apply_cmd()
            .arg("fetch")
            .arg(url)
            .arg("--into")
            .arg(tmp.path().join(into))
            .arg("--trust")
            .arg(&public)
            .args(["--retries", "1", "--timeout", "10"])
            .args(extra)
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .output()
            .expect("spawn fetch")
    };
    let ca = ng.ca_cert().to_str().expect("utf-8").to_string();
    let t0 = Instant::now();
    expect_code(&fetch(&ng.http("b.ferry"), "a", &[]), 0, "fetch over http");
    eprintln!("http {:?}", t0.elapsed());
    expect_code(&fetch(&ng.https("b.ferry"), "b", &["--ca-cert", &ca]), 0, "fetch over https");
    expect_code(&fetch(&ng.https_localhost("b.ferry"), "c", &["--ca-cert", &ca]), 0, "fetch over https (localhost)");
    eprintln!("https {:?}", t0.elapsed());
    let o = fetch(&ng.https("b.ferry"), "d", &[]);
    expect_code(&o, 6, "fetch over https without the CA");
    eprintln!("https no ca {:?}", t0.elapsed());
    for d in ["a", "b", "c"] {
        assert_eq!(fs::read(tmp.path().join(d).join("b.ferry")).expect("fetched"), fs::read(&b).expect("read"));
    }
    let served_bytes = ng.bytes_served("/b.ferry");
    assert!(served_bytes >= 3 * size, "{served_bytes} bytes logged for 3 fetches of {size}: {:?}", ng.requests());
    // Throttled: 300 KB at 100 KiB/s takes about 3 s; killed after 1 s, restarted, the fetch
    // resumes (it retries) and completes.
    ng.clear_log();
    let t0 = Instant::now();
    let mut child = apply_cmd()
        .arg("fetch")
        .arg(ng.http("slow/b.ferry"))
        .arg("--into")
        .arg(tmp.path().join("e"))
        .args(["--retries", "8", "--timeout", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1000));
    ng.kill();
    assert!(!ng.running());
    ng.restart();
    let st = child.wait().expect("wait");
    assert!(st.success(), "the throttled fetch across a restart: {st}\n{}", ng.errors());
    assert!(t0.elapsed() > Duration::from_secs(2), "not throttled: {:?}", t0.elapsed());
    assert_eq!(fs::read(tmp.path().join("e").join("b.ferry")).expect("fetched"), fs::read(&b).expect("read"));
    let after: Vec<_> = ng.requests().into_iter().filter(|r| r.method == "GET").collect();
    // After the restart the fetch reads the head again, then resumes past the frames it had.
    assert!(after.iter().any(|r| r.range_start() > 50_000), "after the restart the fetch did not resume: {after:?}");
    assert!(ng.bytes_served("b.ferry") < size, "{after:?}");
}

#[test]
fn a_refresh_with_a_short_expiry_lapses_and_the_next_refresh_revives_the_channel() {
    if !nginx::available("channels: refresh") {
        return;
    }
    let fx = fx();
    let tmp = tmpdir();
    let (served, repo) = served_copy(&tmp, &fx.repo4);
    let Some(ng) = start_nginx("channels: refresh", &served) else { return };
    let url = ng.http("repo");
    let refresh = |expires: &str| {
        run_expect(
            build_cmd()
                .arg("publish")
                .arg("--refresh")
                .arg("--repo")
                .arg(&repo)
                .args(["--channel", CHANNEL])
                .arg("--timestamp-key")
                .arg(&fx.ts_secret)
                .args(["--expires", expires]),
            0,
        );
    };
    let t = target_at(fx, &tmp.path().join("t"), Some(2));
    refresh("1");
    let idx = read_index(&repo);
    assert!(idx.fresh.expires <= now() + 2, "--expires 1: expires at {} (now {})", idx.fresh.expires, now());
    std::thread::sleep(Duration::from_millis(2500));
    // Expired (no clock allowance): refused, nothing changed.
    let before = everything(&t);
    let o = update(fx, &url, &t, &["--clock-allowance", "0"]);
    expect_code(&o, 10, "an index whose refresh lapsed");
    assert_unchanged(&t, &before, "an index whose refresh lapsed");
    // The next refresh (the timestamp key alone; the release part is untouched) revives it.
    refresh("1h");
    let o = update(fx, &url, &t, &["--clock-allowance", "0"]);
    expect_code(&o, 0, "after a new refresh");
    let rep = report(&o);
    assert!(rep["index"]["by_timestamp_key"].as_bool().unwrap_or(false), "{rep}");
    assert_eq!(rep["index"]["release_seq"].as_u64(), Some(idx.release.seq), "{rep}");
    assert_same(&snapshot(fx.tree(4), false), &snapshot(&t, false), "after the refresh");
}
