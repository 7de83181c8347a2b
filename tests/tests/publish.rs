//! `ferry-build publish` (bundle-format.md §18.4) through the real binaries: four versions of a
//! generated tree with `--deltas-from 2` give an index that verifies and names exactly the
//! expected bundles, each of which applies with `ferry-apply apply` and gives the right tree;
//! `--refresh` bumps freshness only and refuses an unlisted key; `--prune` and `--keep-versions`;
//! a version not above `latest` is refused; and a publish killed at every step (and at random
//! instants) leaves a repository every reader reads consistently.

use bundle::index::{Index, BUNDLES_DIR, INDEX_FILE};
use bundle::sig::{PublicKey, TrustPolicy};
use ferry_tests::*;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const CH: &str = "stable";

struct World {
    _tmp: tempfile::TempDir,
    d: PathBuf,
    repo: PathBuf,
    key: (PathBuf, PathBuf),
    ts: (PathBuf, PathBuf),
    /// trees[v] is version v's tree (trees[0] unused).
    trees: Vec<PathBuf>,
}

/// Four versions of a generated tree (each a random edit of the previous), with a sparse file
/// and a `user.*` attribute where the filesystem takes one.
fn world(seed: u64) -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path().to_path_buf();
    let mut trees = vec![PathBuf::new()];
    let v1 = d.join("v1");
    gen_tree(&v1, seed);
    let sparse = fs::File::create(v1.join("disk.img")).expect("create");
    sparse.set_len(8 << 20).expect("truncate");
    {
        use std::os::unix::fs::FileExt;
        sparse.write_all_at(b"boot sector", 0).expect("w");
        sparse.write_all_at(&noise(5000, seed), 4 << 20).expect("w");
    }
    let _ =
        rustix::fs::setxattr(v1.join("disk.img").as_path(), "user.ferry-test", b"v", rustix::fs::XattrFlags::empty());
    trees.push(v1);
    for v in 2..=4u64 {
        let n = d.join(format!("v{v}"));
        mutate(&trees[v as usize - 1], &n, seed + v);
        trees.push(n);
    }
    let key = keygen(&d, "release");
    let ts = keygen(&d, "timestamp");
    World { repo: d.join("repo"), _tmp: tmp, d, key, ts, trees }
}

fn publish_cmd(w: &World, repo: &Path, v: u64, extra: &[&str]) -> Command {
    let mut c = build_cmd();
    c.arg("publish")
        .arg("--repo")
        .arg(repo)
        .arg("--channel")
        .arg(CH)
        .arg("--new")
        .arg(&w.trees[v as usize])
        .arg("--version")
        .arg(v.to_string())
        .arg("--key")
        .arg(&w.key.0)
        .arg("--timestamp-key")
        .arg(&w.ts.0)
        .arg("--level")
        .arg("fast")
        .arg("--json")
        .args(extra)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("FERRY_PUBLISH_CRASH_AT");
    c
}

fn publish(w: &World, v: u64, extra: &[&str]) -> serde_json::Value {
    let o = run_expect(&mut publish_cmd(w, &w.repo, v, extra), 0);
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

fn policy(w: &World) -> TrustPolicy {
    let pk = PublicKey::parse(&fs::read_to_string(&w.key.1).expect("pub")).expect("parse pub");
    TrustPolicy { keys: vec![pk], threshold: 1, retired: vec![] }
}

fn index_bytes(repo: &Path) -> Vec<u8> {
    fs::read(repo.join(CH).join(INDEX_FILE)).expect("index")
}

/// The index decodes and verifies as a reader checks it, and every bundle it names is on disk
/// with its size, its BLAKE3, and a name carrying that BLAKE3.
fn check_repo(w: &World, repo: &Path) -> Index {
    let idx = Index::decode(&index_bytes(repo)).expect("index decodes");
    let v = idx.verify(&policy(w), now(), 0, None).expect("index verifies");
    assert!(v.by_timestamp_key);
    for b in &idx.release.bundles {
        let p = repo.join(CH).join(BUNDLES_DIR).join(&b.file);
        let bytes = fs::read(&p).unwrap_or_else(|e| panic!("{}: named by the index but {e}", p.display()));
        assert_eq!(bytes.len() as u64, b.size, "{}", b.file);
        let h = blake3::hash(&bytes);
        assert_eq!(h.as_bytes(), &b.blake3.0, "{}", b.file);
        assert!(b.file.contains(&h.to_hex()[..16]), "{} is not named by its BLAKE3", b.file);
    }
    idx
}

fn bundle_path(repo: &Path, idx: &Index, from: Option<u64>, to: u64) -> (PathBuf, String) {
    let b = idx
        .release
        .bundles
        .iter()
        .find(|b| b.from == from && b.to == to)
        .unwrap_or_else(|| panic!("no bundle {from:?} -> {to} in the index"));
    (repo.join(CH).join(BUNDLES_DIR).join(&b.file), b.id.to_hex())
}

/// Apply a bundle of the index; its reported bundle id must be the index's.
fn apply_from_index(w: &World, idx: &Index, from: Option<u64>, to: u64, target: &Path) {
    let (p, id) = bundle_path(&w.repo, idx, from, to);
    let o = apply(&p, target, &w.key.1, 0, &["--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("apply JSON");
    assert_eq!(r["bundle_id"], id.as_str(), "bundle id of {}", p.display());
    assert_same(&snapshot(target, false), &snapshot(&w.trees[to as usize], false), &format!("v{to} via {from:?}"));
}

fn pairs(idx: &Index) -> Vec<(Option<u64>, u64)> {
    idx.release.bundles.iter().map(|b| (b.from, b.to)).collect()
}

#[test]
fn four_versions_give_a_verifiable_index_whose_bundles_apply() {
    let w = world(11);
    let expect_new: [&[Option<u64>]; 5] =
        [&[], &[None], &[None, Some(1)], &[None, Some(2), Some(1)], &[None, Some(3), Some(2)]];
    for v in 1..=4u64 {
        let r = publish(&w, v, &["--deltas-from", "2", "--jobs", "2"]);
        assert_eq!(r["command"], "publish");
        assert_eq!(r["version"], v);
        assert_eq!(r["release_seq"], v);
        assert_eq!(r["fresh_seq"], v);
        let froms: Vec<Option<u64>> =
            r["bundles"].as_array().expect("bundles").iter().map(|b| b["from"].as_u64()).collect();
        assert_eq!(froms, expect_new[v as usize], "bundles of v{v}: {r}");
        let total: u64 = r["bundles"].as_array().expect("b").iter().map(|b| b["size"].as_u64().expect("size")).sum();
        assert_eq!(r["total_bytes"], total);
        assert!(r["wall_seconds"].as_f64().is_some());
        let idx = check_repo(&w, &w.repo);
        assert_eq!(idx.release.latest, v);
        // The store holds every version's tree so far.
        assert!(w.repo.with_file_name("repo.store").join(CH).join("trees").join(format!("v{v}.tar.zst")).is_file());
    }
    let idx = check_repo(&w, &w.repo);
    assert_eq!((idx.release.seq, idx.fresh.seq), (4, 4));
    assert_eq!(
        pairs(&idx),
        [
            (None, 1),
            (None, 2),
            (Some(1), 2),
            (None, 3),
            (Some(1), 3),
            (Some(2), 3),
            (None, 4),
            (Some(2), 4),
            (Some(3), 4)
        ]
    );
    // v1 full to an empty target, then v1 -> v2, then v2 -> v4; and v4 full; and v1 -> v3.
    let t = w.d.join("t");
    fs::create_dir(&t).expect("mkdir");
    apply_from_index(&w, &idx, None, 1, &t);
    apply_from_index(&w, &idx, Some(1), 2, &t);
    apply_from_index(&w, &idx, Some(2), 4, &t);
    let t2 = w.d.join("t2");
    fs::create_dir(&t2).expect("mkdir");
    apply_from_index(&w, &idx, None, 4, &t2);
    let t3 = w.d.join("t3");
    fs::create_dir(&t3).expect("mkdir");
    apply_from_index(&w, &idx, None, 1, &t3);
    apply_from_index(&w, &idx, Some(1), 3, &t3);
    apply_from_index(&w, &idx, Some(3), 4, &t3);
}

#[test]
fn refresh_bumps_freshness_only_and_refuses_an_unlisted_key() {
    let w = world(12);
    publish(&w, 1, &[]);
    publish(&w, 2, &[]);
    let before = Index::decode(&index_bytes(&w.repo)).expect("decode");
    let refresh = |key_flag: &str, key: &Path, code: i32| {
        run_expect(
            build_cmd()
                .arg("publish")
                .arg("--refresh")
                .arg("--repo")
                .arg(&w.repo)
                .arg("--channel")
                .arg(CH)
                .arg(key_flag)
                .arg(key)
                .arg("--expires")
                .arg("12h")
                .arg("--json"),
            code,
        )
    };
    let o = refresh("--timestamp-key", &w.ts.0, 0);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(
        (r["mode"].as_str(), r["fresh_seq"].as_u64(), r["by_timestamp_key"].as_bool()),
        (Some("refresh"), Some(3), Some(true))
    );
    let after = check_repo(&w, &w.repo);
    assert_eq!(after.release_bytes, before.release_bytes, "refresh changed the release part");
    assert_eq!(after.release_sigs, before.release_sigs);
    assert_eq!(after.fresh.seq, before.fresh.seq + 1);
    let e = after.fresh.expires.abs_diff(now() + 12 * 3600);
    assert!(e < 120, "expires {} not 12 h from now", after.fresh.expires);
    // The release keys can refresh too.
    let o = refresh("--key", &w.key.0, 0);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!((r["fresh_seq"].as_u64(), r["by_timestamp_key"].as_bool()), (Some(4), Some(false)));
    let idx = Index::decode(&index_bytes(&w.repo)).expect("decode");
    assert!(!idx.verify(&policy(&w), now(), 0, None).expect("verifies").by_timestamp_key);
    assert_eq!(idx.release_bytes, before.release_bytes);
    // A timestamp key the release part does not list: refused, index unchanged.
    let (other, _) = keygen(&w.d, "other");
    let unchanged = index_bytes(&w.repo);
    let o = refresh("--timestamp-key", &other, 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not listed"), "{err}");
    // A release key that did not sign the release part: refused too.
    let o = refresh("--key", &other, 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("did not sign"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(index_bytes(&w.repo), unchanged);
    // A publish with a version not above latest, or by a key that did not sign the index.
    let o = run_expect(&mut publish_cmd(&w, &w.repo, 2, &[]), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not above the channel's latest version 2"));
    let mut c = publish_cmd(&w, &w.repo, 3, &[]);
    let args: Vec<_> = c.get_args().map(|a| a.to_os_string()).collect();
    let mut c2 = build_cmd();
    for a in &args {
        c2.arg(if a.as_os_str() == w.key.0.as_os_str() { other.as_os_str() } else { a.as_os_str() });
    }
    c = c2;
    let o = run_expect(&mut c, 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not signed by any of the given release keys"));
    assert_eq!(index_bytes(&w.repo), unchanged);
}

#[test]
fn keep_versions_drops_old_bundles_and_prune_removes_unnamed_files() {
    let w = world(13);
    publish(&w, 1, &[]);
    publish(&w, 2, &[]);
    let r = publish(&w, 3, &["--keep-versions", "2"]);
    let idx = check_repo(&w, &w.repo);
    assert!(idx.release.bundles.iter().all(|b| b.to >= 2), "{:?}", pairs(&idx));
    assert_eq!(r["dropped"].as_array().map(Vec::len), Some(1), "{r}");
    let bundles = w.repo.join(CH).join(BUNDLES_DIR);
    let dropped = bundles.join(r["dropped"][0].as_str().expect("name"));
    assert!(dropped.is_file(), "a dropped bundle stays until --prune");
    fs::write(bundles.join("v9-v10.0000000000000000.ferry"), b"junk").expect("w");
    fs::write(bundles.join(".v3.full.1234-abcd.tmp"), b"stale").expect("w");
    let o = run_expect(build_cmd().args(["publish", "--prune", "--channel", CH, "--json", "--repo"]).arg(&w.repo), 0);
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let removed: Vec<String> = p["removed"].as_array().expect("removed").iter().map(|v| v.to_string()).collect();
    assert_eq!(removed.len(), 4, "dropped bundle, junk, stale temporary file, v1's tree: {p}");
    assert!(!dropped.exists() && !bundles.join("v9-v10.0000000000000000.ferry").exists());
    assert!(!bundles.join(".v3.full.1234-abcd.tmp").exists());
    let trees = w.repo.with_file_name("repo.store").join(CH).join("trees");
    assert!(
        !trees.join("v1.tar.zst").exists() && trees.join("v2.tar.zst").is_file() && trees.join("v3.tar.zst").is_file()
    );
    check_repo(&w, &w.repo);
    // A fourth version still gets deltas from the kept trees.
    let r = publish(&w, 4, &[]);
    let froms: Vec<Option<u64>> = r["bundles"].as_array().expect("b").iter().map(|b| b["from"].as_u64()).collect();
    assert_eq!(froms, [None, Some(3), Some(2)]);
    check_repo(&w, &w.repo);
}

#[test]
fn an_archive_input_is_stored_as_it_is() {
    let w = world(14);
    let tar = w.d.join("v1.tar");
    let st = Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&w.trees[1]).arg(".").status().expect("tar");
    assert!(st.success());
    let mut c = publish_cmd(&w, &w.repo, 1, &[]);
    let args: Vec<_> = c.get_args().map(|a| a.to_os_string()).collect();
    let mut c2 = build_cmd();
    for a in &args {
        c2.arg(if a.as_os_str() == w.trees[1].as_os_str() { tar.as_os_str() } else { a.as_os_str() });
    }
    c = c2;
    run_expect(&mut c, 0);
    publish(&w, 2, &[]);
    let idx = check_repo(&w, &w.repo);
    // The stored archive is v1 exactly as the full bundle gave it: the delta applies on it.
    let t = w.d.join("t");
    fs::create_dir(&t).expect("mkdir");
    let (full, _) = bundle_path(&w.repo, &idx, None, 1);
    apply(&full, &t, &w.key.1, 0, &[]);
    apply_from_index(&w, &idx, Some(1), 2, &t);
}

/// Every crash step of one publish (`FERRY_PUBLISH_CRASH_AT`, the builder's `failpoints`
/// feature), then SIGKILL at random instants: after each, the index (old before the rename, new
/// after) verifies and names only complete bundles; a publish again completes; prune tidies.
#[test]
fn a_publish_killed_anywhere_leaves_a_consistent_repository() {
    let w = world(15);
    publish(&w, 1, &[]);
    publish(&w, 2, &[]);
    let steps = [
        ("locked", 2),
        ("tree-temp", 2),
        ("tree-stored", 2),
        ("bundle-built", 2),
        ("bundle-signed", 2),
        ("bundle-renamed", 2),
        ("bundle-renamed:2", 2),
        ("bundles-synced", 2),
        ("index-temp", 2),
        ("index-renamed", 3),
    ];
    for (step, seq) in steps {
        let repo = w.d.join(format!("crash-{}", step.replace(':', "-")));
        copy_tree(&w.repo, &repo);
        copy_tree(&w.repo.with_file_name("repo.store"), &PathBuf::from(format!("{}.store", repo.display())));
        let o = publish_cmd(&w, &repo, 3, &[]).env("FERRY_PUBLISH_CRASH_AT", step).output().expect("spawn");
        assert_eq!(
            o.status.signal(),
            Some(6),
            "publish did not abort at {step} (is ferry-build built with the feature `failpoints`?): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let idx = check_repo(&w, &repo);
        assert_eq!(idx.release.seq, seq, "after a crash at {step}");
        if seq == 2 {
            // Run again: completes.
            run_expect(&mut publish_cmd(&w, &repo, 3, &[]), 0);
            assert_eq!(check_repo(&w, &repo).release.latest, 3);
        }
        run_expect(build_cmd().args(["publish", "--prune", "--channel", CH, "--repo"]).arg(&repo), 0);
        let idx = check_repo(&w, &repo);
        let names: Vec<String> = fs::read_dir(repo.join(CH).join(BUNDLES_DIR))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), idx.release.bundles.len(), "after prune at {step}: {names:?}");
    }
    // SIGKILL at random instants of a whole publish.
    let started = std::time::Instant::now();
    let probe = w.d.join("probe");
    copy_tree(&w.repo, &probe);
    copy_tree(&w.repo.with_file_name("repo.store"), &PathBuf::from(format!("{}.store", probe.display())));
    run_expect(&mut publish_cmd(&w, &probe, 3, &[]), 0);
    let full = started.elapsed().as_millis() as u64;
    for i in 0..6u64 {
        let repo = w.d.join(format!("kill-{i}"));
        copy_tree(&w.repo, &repo);
        copy_tree(&w.repo.with_file_name("repo.store"), &PathBuf::from(format!("{}.store", repo.display())));
        let mut child = publish_cmd(&w, &repo, 3, &[]).stdout(std::process::Stdio::null()).spawn().expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(full * (i + 1) / 7));
        let _ = child.kill();
        let _ = child.wait();
        let idx = check_repo(&w, &repo);
        assert!(idx.release.seq == 2 || idx.release.seq == 3);
        if idx.release.latest < 3 {
            run_expect(&mut publish_cmd(&w, &repo, 3, &[]), 0);
            check_repo(&w, &repo);
        }
    }
}

#[test]
fn a_second_publish_of_the_channel_is_refused_while_one_holds_the_lock() {
    let w = world(16);
    publish(&w, 1, &[]);
    // Hold the lock as a running publish would.
    let store = w.repo.with_file_name("repo.store").join(CH);
    let f = fs::File::open(store.join("lock")).expect("lock file");
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    let o = run_expect(&mut publish_cmd(&w, &w.repo, 2, &[]), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds the lock"), "{}", String::from_utf8_lossy(&o.stderr));
    drop(f);
    publish(&w, 2, &[]);
    check_repo(&w, &w.repo);
}

/// Release keys held by an external signer (OpenSSL here): it signs the bundles and both index
/// parts (no timestamp key), and the index verifies with its public key alone.
#[test]
fn an_external_signer_signs_bundles_and_index() {
    let w = world(17);
    let pem = w.d.join("hsm.pem");
    let st =
        Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&pem).status().expect("openssl");
    assert!(st.success(), "openssl genpkey");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/signers/openssl-signer.sh");
    let cmd = format!("{} {}", script.display(), pem.display());
    let public = w.d.join("hsm.pub");
    run_expect(build_cmd().args(["pubkey", "--signer-command", &cmd, "--out"]).arg(&public), 0);
    for v in 1..=2u64 {
        let mut c = build_cmd();
        c.args(["publish", "--channel", CH, "--level", "fast", "--signer-command", &cmd, "--signer-pub"])
            .arg(&public)
            .arg("--repo")
            .arg(&w.repo)
            .arg("--new")
            .arg(&w.trees[v as usize])
            .arg("--version")
            .arg(v.to_string())
            .env_remove("SOURCE_DATE_EPOCH");
        run_expect(&mut c, 0);
    }
    let pk = PublicKey::parse(&fs::read_to_string(&public).expect("pub")).expect("parse");
    let p = TrustPolicy { keys: vec![pk], threshold: 1, retired: vec![] };
    let idx = Index::decode(&index_bytes(&w.repo)).expect("decode");
    let v = idx.verify(&p, now(), 0, None).expect("verifies with the signer's key");
    assert!(!v.by_timestamp_key && idx.release.timestamp_keys.is_empty());
    // The release key of the other tests did not sign it.
    assert!(idx.verify(&policy(&w), now(), 0, None).is_err());
    let t = w.d.join("t");
    fs::create_dir(&t).expect("mkdir");
    let (full, _) = bundle_path(&w.repo, &idx, None, 1);
    apply(&full, &t, &public, 0, &[]);
    let (delta, _) = bundle_path(&w.repo, &idx, Some(1), 2);
    apply(&delta, &t, &public, 0, &[]);
    assert_same(&snapshot(&t, false), &snapshot(&w.trees[2], false), "v2 signed by the external signer");
}
