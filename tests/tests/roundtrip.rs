//! Round trips through the real binaries: OLD and NEW trees, `ferry-build`, `ferry-apply`, and an
//! exact comparison of the result with NEW (content, types, modes, owners, mtimes of every entry
//! including directories, hardlink groups, symlink targets, device numbers).
//!
//! - a property test over generated trees (delta onto a copy of OLD, full onto an empty directory);
//! - every compression level;
//! - large files in chunked mode (a 5 GiB sparse file, ignored by default; a smaller one always);
//! - an unprivileged apply (setpriv to nobody), which cannot set owners and says so.

use ferry_tests::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Cases: `PROPTEST_CASES` if set, else 24. Seed: `PROPTEST_RNG_SEED` if set, else fixed, so a run
/// is deterministic and a failure names the tree seed that reproduces it.
fn config() -> Config {
    let mut c = Config::default(); // reads the PROPTEST_* variables
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 24;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(0x0f_e77e);
    }
    // A seed is not "smaller" in any useful sense: report the failing seed itself.
    c.max_shrink_iters = 0;
    c.failure_persistence = None;
    c
}

fn no_txn(target: &Path) {
    assert!(!target.join(".ferry/txn").exists(), "{}: a transaction was left behind", target.display());
}

/// One property case: trees from `seed`, a delta bundle onto a copy of OLD and a full bundle onto
/// an empty directory; both must give NEW exactly.
fn roundtrip_seed(seed: u64) {
    let d = tempfile::tempdir().expect("tempdir");
    let k = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    gen_tree(&old, seed);
    mutate(&old, &new, seed);
    mutate_more(&new, seed);
    sparsify(&old, &new, seed);
    attributize(&old, &new, seed);
    let want = snapshot(&new, true);

    let delta = d.path().join("delta.ferry");
    build(Some(&old), &new, &k.secret, 2, &delta, &[]);
    let target = d.path().join("target");
    copy_tree(&old, &target);
    apply(&delta, &target, &k.public, 0, &[]);
    assert_same(&snapshot(&target, true), &want, &format!("seed {seed}: delta bundle applied to a copy of OLD vs NEW"));
    same_allocation(&target, &new, seed);
    no_txn(&target);

    let full = d.path().join("full.ferry");
    build(None, &new, &k.secret, 2, &full, &[]);
    let empty = d.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    apply(&full, &empty, &k.public, 0, &[]);
    assert_same(
        &snapshot(&empty, true),
        &want,
        &format!("seed {seed}: full bundle applied to an empty directory vs NEW"),
    );
    same_allocation(&empty, &new, seed);
    no_txn(&empty);
}

/// The sparse files of a generated tree are sparse on the target too: allocated blocks within
/// NEW's plus, per data run, what the builder's policy may ship as zeros (holes under 64 KiB, at
/// 4 KiB granularity) and one block.
fn same_allocation(target: &Path, new: &Path, seed: u64) {
    use std::os::unix::fs::MetadataExt;
    for e in fs::read_dir(new).expect("read_dir").flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("sparse-") {
            continue;
        }
        let (w, g) = (e.metadata().expect("stat"), fs::metadata(target.join(&name)).expect("stat target"));
        let slack = 8 * (64 << 10) + 4096;
        assert!(
            g.blocks() * 512 <= w.blocks() * 512 + slack,
            "seed {seed}: {}: {} bytes allocated on the target, NEW has {} (size {})",
            name.to_string_lossy(),
            g.blocks() * 512,
            w.blocks() * 512,
            w.len()
        );
    }
}

/// Sparse files in a generated tree (bundle-format.md §4.2): from `seed`, up to three files of up
/// to 8 MiB with random holes and data runs, each new in NEW, sparse in OLD too with other data
/// (a delta against a sparse OLD), or dense in OLD with the same content (a layout-only change).
fn sparsify(old: &Path, new: &Path, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5ba5e);
    let write = |p: &Path, size: u64, runs: &[(u64, Vec<u8>)]| {
        let f = File::create(p).expect("create");
        f.set_len(size).expect("set_len");
        for (at, d) in runs {
            std::os::unix::fs::FileExt::write_all_at(&f, d, *at).expect("write");
        }
    };
    for i in 0..rng.gen_range(0..=3) {
        let name = format!("sparse-{i}.img");
        let size = rng.gen_range(1..=8u64 << 20);
        let runs: Vec<(u64, Vec<u8>)> = (0..rng.gen_range(0..6))
            .map(|_| {
                let len = rng.gen_range(1..200_000usize);
                let at = rng.gen_range(0..size);
                (at, noise(len.min((size - at) as usize), rng.gen()))
            })
            .collect();
        write(&new.join(&name), size, &runs);
        match rng.gen_range(0..3) {
            0 => {}
            1 => {
                let mut other = runs.clone();
                if let Some(r) = other.first_mut() {
                    r.1.iter_mut().take(100).for_each(|b| *b = b.wrapping_add(1));
                }
                write(&old.join(&name), size, &other);
            }
            _ => {
                fs::write(old.join(&name), fs::read(new.join(&name)).expect("read")).expect("write");
                let st = Command::new("touch").arg("-r").arg(new.join(&name)).arg(old.join(&name)).status();
                assert!(st.is_ok_and(|s| s.success()), "touch");
            }
        }
    }
}

/// Extended attributes in a generated tree (bundle-format.md §4.9): SELinux labels (with their
/// trailing NUL) on most paths, file capabilities as `setcap` writes them, POSIX ACLs (access on
/// files and directories, default on directories), `trusted.*`, and `user.*` with binary values
/// (NUL, newline) on files and directories. NEW starts as OLD's and changes some: a relabel, a
/// capability added or dropped, an attribute added or removed, an ACL changed.
fn attributize(old: &Path, new: &Path, seed: u64) {
    use rand::{Rng, SeedableRng};
    const LABELS: [&[u8]; 3] =
        [b"system_u:object_r:bin_t:s0\0", b"system_u:object_r:etc_t:s0\0", b"system_u:object_r:lib_t:s0\0"];
    const CAPS: [&[u8]; 2] = [
        &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // cap_net_raw+ep
        &[0, 0, 0, 2, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // cap_setuid,cap_setgid+p
    ];
    // user::rw-, user:1000:rw-, group::r--, group:50:r--, mask::rw-, other::r--
    const ACL: &[u8] = &[
        2, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 2, 0, 6, 0, 0xe8, 3, 0, 0, 4, 0, 4, 0, 255, 255, 255, 255, 8, 0, 4,
        0, 50, 0, 0, 0, 0x10, 0, 6, 0, 255, 255, 255, 255, 0x20, 0, 4, 0, 255, 255, 255, 255,
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xa77e);
    let set = |p: &Path, n: &str, v: &[u8]| {
        rustix::fs::lsetxattr(p, n, v, rustix::fs::XattrFlags::empty())
            .unwrap_or_else(|e| panic!("setxattr {n} on {}: {e}", p.display()))
    };
    let mut paths = Vec::new();
    collect_all(old, &mut paths);
    paths.sort();
    for p in paths {
        let rel = p.strip_prefix(old).expect("prefix");
        let Ok(md) = fs::symlink_metadata(&p) else { continue };
        let (file, dir) = (md.file_type().is_file(), md.file_type().is_dir());
        let mut attrs: Vec<(String, Vec<u8>)> = Vec::new();
        if rng.gen_bool(0.8) {
            attrs.push(("security.selinux".into(), LABELS[rng.gen_range(0..LABELS.len())].to_vec()));
        }
        if file && rng.gen_bool(0.1) {
            attrs.push(("security.capability".into(), CAPS[rng.gen_range(0..CAPS.len())].to_vec()));
        }
        if (file || dir) && rng.gen_bool(0.15) {
            attrs.push(("system.posix_acl_access".into(), ACL.to_vec()));
        }
        if dir && rng.gen_bool(0.15) {
            attrs.push(("system.posix_acl_default".into(), ACL.to_vec()));
        }
        if (file || dir) && rng.gen_bool(0.2) {
            attrs.push((format!("user.k{}", rng.gen_range(0..3)), vec![0, b'\n', rng.gen(), b'x']));
        }
        if rng.gen_bool(0.05) {
            attrs.push(("trusted.t".into(), b"1".to_vec()));
        }
        for (n, v) in &attrs {
            set(&p, n, v);
        }
        let q = new.join(rel);
        if fs::symlink_metadata(&q).is_err() {
            continue;
        }
        // NEW keeps OLD's attributes where the path is the same inode kind, changing some.
        let same_kind = fs::symlink_metadata(&q).is_ok_and(|m| m.file_type() == md.file_type());
        if !same_kind {
            continue;
        }
        for (n, v) in &attrs {
            match rng.gen_range(0..10) {
                0 => {
                    let _ = rustix::fs::lremovexattr(&q, n.as_str());
                }
                1 if n == "security.selinux" => set(&q, n, LABELS[rng.gen_range(0..LABELS.len())]),
                _ => set(&q, n, v),
            }
        }
        if file && rng.gen_bool(0.05) {
            set(&q, "security.capability", CAPS[0]);
        }
    }
}

#[test]
fn generated_trees_roundtrip_delta_and_full() {
    let mut runner = TestRunner::new(config());
    let res = runner.run(&any::<u64>(), |seed| {
        std::panic::catch_unwind(|| roundtrip_seed(seed)).map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            TestCaseError::fail(format!("tree seed {seed}: {msg}"))
        })
    });
    if let Err(e) = res {
        panic!("{e}");
    }
}

/// Seeds that once found bugs (and edge cases worth keeping whatever the proptest seed is).
#[test]
fn fixed_seeds_roundtrip() {
    for seed in [0, 1, 2, 3, 7, 42, 17100706798212434269] {
        roundtrip_seed(seed);
    }
}

#[test]
fn every_compression_level_gives_the_same_tree() {
    let d = tempfile::tempdir().expect("tempdir");
    let k = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    gen_tree(&old, 11);
    mutate(&old, &new, 11);
    // Make sure there is payload to compress at every level: a new file and an edited one.
    let text: Vec<u8> = b"level test line\n".iter().cycle().take(50_000).copied().collect();
    fs::write(new.join("added-for-levels"), &text).expect("write");
    fs::write(old.join("edited-for-levels"), &text).expect("write");
    let mut edited = text.clone();
    edited[25_000..25_010].copy_from_slice(b"0123456789");
    fs::write(new.join("edited-for-levels"), &edited).expect("write");
    let want = snapshot(&new, true);
    let mut sizes = Vec::new();
    for level in ["fast", "default", "max"] {
        let b = d.path().join(format!("{level}.ferry"));
        build(Some(&old), &new, &k.secret, 2, &b, &["--level", level]);
        sizes.push((level, fs::metadata(&b).expect("stat").len()));
        let target = d.path().join(format!("target-{level}"));
        copy_tree(&old, &target);
        apply(&b, &target, &k.public, 0, &[]);
        assert_same(&snapshot(&target, true), &want, &format!("--level {level}"));
    }
    // A numeric level is accepted too.
    let b = d.path().join("l7.ferry");
    build(Some(&old), &new, &k.secret, 2, &b, &["--level", "7"]);
    let target = d.path().join("target-7");
    copy_tree(&old, &target);
    apply(&b, &target, &k.public, 0, &[]);
    assert_same(&snapshot(&target, true), &want, "--level 7");
    eprintln!("bundle sizes by level: {sizes:?}");
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn blake3_file(p: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(p).expect("open");
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize()
}

fn write_at(p: &Path, offset: u64, data: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(p).expect("open");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(data).expect("write");
}

/// Pieces of the file `name` in a bundle's manifest (read with the format crate), and whether
/// it is described as sparse.
fn pieces_of(bundle_file: &Path, name: &[u8]) -> (u64, usize, bool) {
    let f = File::open(bundle_file).expect("open bundle");
    let mut r = bundle::container::Reader::new(std::io::BufReader::new(f), bundle::Limits::default());
    let (mb, _) = r.head().expect("head");
    let m = bundle::Manifest::decode(&mb, &bundle::Limits::default()).expect("manifest");
    let e = m.entries.iter().find(|e| e.path.as_bytes() == name).expect("entry in manifest");
    match &e.kind {
        bundle::Kind::File { size, content: bundle::Content::Pieces(ps), extents, .. } => {
            (*size, ps.len(), extents.is_some())
        }
        k => panic!("{}: expected a file with pieces, got {k:?}", String::from_utf8_lossy(name)),
    }
}

/// A sparse file of `len` bytes in OLD and NEW (with some shared data so deltas have something to
/// reference), NEW differing by a few bytes at offset 0 and at 90 % of the file; build a delta
/// bundle with `extra` flags, check it is small and chunked, apply it, compare hashes.
fn large_file_roundtrip(len: u64, extra: &[&str], max_bundle: u64) {
    let t0 = Instant::now();
    let d = tempfile::tempdir().expect("tempdir");
    let k = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    fs::create_dir_all(&old).expect("mkdir");
    let big_old = old.join("big.img");
    File::create(&big_old).expect("create").set_len(len).expect("set_len");
    // Shared non-zero content in a few places, including across the last chunk boundary.
    let noise: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for at in [len / 3, len / 2, len - noise.len() as u64] {
        write_at(&big_old, at, &noise);
    }
    fs::write(old.join("small"), b"small file").expect("write");
    copy_tree(&old, &new);
    let big_new = new.join("big.img");
    let far = len / 10 * 9;
    write_at(&big_new, 0, b"NEW HEADER");
    write_at(&big_new, far, b"changed far away");
    set_mtime(&big_new, 1_700_000_123);
    assert_eq!(fs::metadata(&big_new).expect("stat").len(), len);

    let b = d.path().join("big.ferry");
    build(Some(&old), &new, &k.secret, 2, &b, extra);
    let size = fs::metadata(&b).expect("stat").len();
    assert!(
        size < max_bundle,
        "bundle for a {len}-byte file with a few changed bytes is {size} bytes (limit {max_bundle})"
    );
    let (msize, npieces, sparse) = pieces_of(&b, b"big.img");
    assert_eq!(msize, len, "manifest size of big.img");
    // A sparse file's pieces carry only its data (bundle-format.md §4.2), here less than a chunk.
    assert!(
        sparse || npieces > 1,
        "big.img should be sparse or carried in several pieces (chunked mode), got {npieces}"
    );

    let target = d.path().join("target");
    copy_tree(&old, &target);
    apply(&b, &target, &k.public, 0, &[]);
    let got = target.join("big.img");
    assert_eq!(fs::metadata(&got).expect("stat").len(), len);
    assert_eq!(blake3_file(&got), blake3_file(&big_new), "content of big.img after apply");
    assert_same(&snapshot(&target, true), &snapshot(&new, true), "tree with a large file");
    eprintln!("large file {len} bytes: bundle {size} bytes, {npieces} pieces, {:.1} s", t0.elapsed().as_secs_f64());
}

/// Over 4 GiB: the format's sizes are u64 and large files are split into chunk-sized pieces.
/// Ignored by default: in a debug build this hashes, patches and stages 5 GiB several times (well
/// over 30 s); `same_shape_large_file_chunked` runs the same shape with a small file and 1 MiB
/// chunks on every run. Run with `cargo test -p ferry-tests --test roundtrip -- --ignored`.
#[test]
#[ignore = "5 GiB file: too slow for the default run (see same_shape_large_file_chunked)"]
fn file_over_4_gib_roundtrip() {
    large_file_roundtrip(5 * GIB, &[], 16 * MIB);
}

#[test]
fn same_shape_large_file_chunked() {
    large_file_roundtrip(9 * MIB + 12_345, &["--chunk-size", "1048576"], 2 * MIB);
}

fn collect_all(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut v: Vec<PathBuf> = fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry").path()).collect();
    v.sort();
    for p in v {
        if fs::symlink_metadata(&p).expect("lstat").is_dir() {
            collect_all(&p, out);
        }
        out.push(p);
    }
}

const NOBODY: u32 = 65534;

fn chown_tree(p: &Path, uid: u32) {
    let st = Command::new("chown").arg("-hR").arg(format!("{uid}:{uid}")).arg(p).status().expect("chown");
    assert!(st.success());
}

/// Trees for the unprivileged run: no device nodes (only root may create them).
fn strip_devices(dir: &Path) {
    let mut all = Vec::new();
    collect_all(dir, &mut all);
    for p in all {
        let ft = fs::symlink_metadata(&p).expect("lstat").file_type();
        if ft.is_char_device() || ft.is_block_device() {
            fs::remove_file(&p).expect("rm device");
        }
    }
}

fn setpriv_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={NOBODY}")).arg(format!("--regid={NOBODY}")).arg("--clear-groups");
    c.env_remove("FERRY_CRASH_AT").env_remove("FERRY_FAIL_AT").env_remove("FERRY_FAILPOINT_COUNT");
    c
}

fn json_of(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// As an unprivileged user (uid/gid 65534 through `setpriv`): trees owned by that user, the apply
/// succeeds, the tree equals NEW except owners, and both the apply report and `status` say owners
/// were not applied.
#[test]
fn unprivileged_apply_with_setpriv() {
    let is_root = fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    assert!(is_root, "this test runs as root and drops to uid {NOBODY} with setpriv");
    let probe = Command::new("setpriv").arg("--version").output();
    assert!(
        probe.as_ref().map(|o| o.status.success()).unwrap_or(false),
        "setpriv (util-linux) is needed to run ferry-apply as an unprivileged user: {probe:?}"
    );
    let d = tempfile::tempdir().expect("tempdir");
    // The unprivileged user must reach the binaries, the bundle, the key and the target.
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let k = keys(d.path());
    fs::set_permissions(&k.public, fs::Permissions::from_mode(0o644)).expect("chmod");
    let bin = bin("ferry-apply");
    let mut a = bin.as_path();
    while let Some(p) = a.parent() {
        let m = fs::metadata(p).expect("stat").permissions().mode();
        assert!(
            m & 0o001 != 0,
            "{} is not searchable by others: the unprivileged user cannot run {}",
            p.display(),
            bin.display()
        );
        a = p;
    }

    let (old, new) = (d.path().join("old"), d.path().join("new"));
    gen_tree(&old, 5);
    strip_devices(&old);
    mutate(&old, &new, 5);
    strip_devices(&new);
    // A few more edits that exercise modes an unprivileged owner may still set.
    fs::write(new.join("suid-tool"), b"#!/bin/sh\n").expect("write");
    fs::set_permissions(new.join("suid-tool"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    fs::create_dir_all(new.join("newdir/sub")).expect("mkdir");
    fs::write(new.join("newdir/sub/f"), b"f").expect("write");
    chown_tree(&old, NOBODY);
    chown_tree(&new, NOBODY);
    set_mtime(&new.join("newdir/sub"), 1_700_000_500);
    set_mtime(&new.join("newdir"), 1_700_000_600);

    let b = d.path().join("nobody.ferry");
    build(Some(&old), &new, &k.secret, 2, &b, &[]);
    let target = d.path().join("target");
    copy_tree(&old, &target);
    assert_eq!(fs::metadata(&target).expect("stat").uid(), NOBODY);

    let o = run_expect(
        setpriv_nobody()
            .arg(&bin)
            .arg("apply")
            .arg(&b)
            .arg("--target")
            .arg(&target)
            .arg("--trust")
            .arg(&k.public)
            .arg("--json"),
        0,
    );
    let rep = json_of(&o);
    assert_eq!(rep["ferry_report"], 1);
    assert_eq!(rep["result"], "applied");
    assert_eq!(rep["owners_applied"], false, "apply report: {rep}");

    // Equal to NEW except owners (which are nobody's in both anyway: an unprivileged apply leaves
    // every object owned by the applying user).
    let strip = |mut s: Snapshot| {
        for n in s.values_mut() {
            n.uid = 0;
            n.gid = 0;
        }
        s
    };
    assert_same(
        &strip(snapshot(&target, true)),
        &strip(snapshot(&new, true)),
        "unprivileged apply vs NEW (owners ignored)",
    );
    no_txn(&target);
    for (p, n) in snapshot(&target, false) {
        assert_eq!(
            (n.uid, n.gid),
            (NOBODY, NOBODY),
            "{} is not owned by the applying user",
            String::from_utf8_lossy(&p)
        );
    }

    let o = run_expect(setpriv_nobody().arg(&bin).arg("status").arg("--target").arg(&target).arg("--json"), 0);
    let st = json_of(&o);
    assert_eq!(st["ferry_report"], 1);
    assert_eq!(st["installed"]["version"], 2);
    assert_eq!(st["installed"]["owners_applied"], false, "status: {st}");
    let o = run_expect(setpriv_nobody().arg(&bin).arg("status").arg("--target").arg(&target), 0);
    let human = String::from_utf8_lossy(&o.stdout);
    assert!(human.contains("not root"), "human status should say owners were left alone: {human}");
}

/// Sparse manifest entries (bundle-format.md §4.2): on a tree of 2,000+ files where a handful
/// change (edits, a rename, a mode-only change, a deleted directory, a new hardlink), the delta
/// bundle lists only the entries it touches or needs, and applying it still gives NEW exactly.
#[test]
fn delta_of_a_mostly_unchanged_tree_lists_few_entries() {
    let d = tempfile::tempdir().expect("tempdir");
    let k = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    file_grid(&old, 20, 100, |i, j| (i * j) % 7);
    fs::create_dir_all(old.join("gone/sub")).expect("mkdir");
    fs::write(old.join("gone/sub/x"), b"leaves with its directory").expect("write");
    fs::write(old.join("gone/y"), b"so does this").expect("write");
    // An unchanged hardlink group: never listed.
    fs::create_dir_all(old.join("hl")).expect("mkdir");
    fs::write(old.join("hl/a"), b"two names, one inode").expect("write");
    fs::hard_link(old.join("hl/a"), old.join("hl/b")).expect("link");
    set_mtimes_under(&old, 1_600_000_000);
    set_mtime(&old, 1_600_000_000);
    copy_tree(&old, &new);

    // Edits (content and mtime).
    for (i, j) in [(1, 1), (4, 40), (9, 99), (15, 7), (19, 0)] {
        let p = new.join(format!("d{i:02}/f{j:03}"));
        fs::write(&p, format!("edited {i} {j}\n")).expect("write");
        set_mtime(&p, 1_700_000_000);
    }
    // A rename across directories (a local copy, no payload).
    fs::rename(new.join("d03/f005"), new.join("d07/renamed")).expect("rename");
    // A mode-only change.
    fs::set_permissions(new.join("d10/f010"), fs::Permissions::from_mode(0o600)).expect("chmod");
    // A deleted directory with a subdirectory.
    fs::remove_dir_all(new.join("gone")).expect("rm -r");
    // A new hardlink to an existing, otherwise unchanged file: its group is re-placed.
    fs::hard_link(new.join("d12/f000"), new.join("d12/link")).expect("link");
    for p in ["d03", "d07", "d12"] {
        set_mtime(&new.join(p), 1_700_000_000);
    }
    set_mtime(&new, 1_700_000_000);

    let bundle = d.path().join("delta.ferry");
    build(Some(&old), &new, &k.secret, 2, &bundle, &[]);

    // The manifest, as `inspect` reports it and as the bundle crate decodes it.
    let o = run_expect(apply_cmd().arg("inspect").arg("--json").arg(&bundle), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect json");
    let listed = v["counts"]["entries"].as_u64().expect("counts.entries");
    let mut tree = Vec::new();
    collect_all(&new, &mut tree);
    assert!(tree.len() > 2000, "{}", tree.len());
    eprintln!("{listed} of {} entries listed", tree.len());
    assert!(listed > 0 && listed * 50 < tree.len() as u64, "{listed} of {} entries listed", tree.len());
    assert!(v["entries_note"].as_str().is_some_and(|n| n.contains("not listed")), "{v}");

    let bytes = fs::read(&bundle).expect("read bundle");
    let limits = bundle::Limits::default();
    let mut r = bundle::container::Reader::new(&bytes[..], limits.clone());
    let (mb, _) = r.head().expect("head");
    let m = bundle::Manifest::decode(&mb, &limits).expect("manifest");
    bundle::script::validate(&m).expect("script");
    let paths: Vec<String> = m.entries.iter().map(|e| e.path.display()).collect();
    for want in
        ["d01", "d01/f001", "d03", "d07", "d07/renamed", "d10", "d10/f010", "d12", "d12/f000", "d12/link", "d19/f000"]
    {
        assert!(paths.iter().any(|p| p == want), "{want} not listed: {paths:?}");
    }
    for unlisted in ["hl", "hl/a", "hl/b", "d00", "d00/f000", "d10/f011", "gone", "gone/sub/x"] {
        assert!(!paths.iter().any(|p| p == unlisted), "{unlisted} listed: {paths:?}");
    }
    // The copy source d03/f005 is gone from NEW: in `old`, not in entries, deleted.
    assert!(m.old_entry(&forge_path("d03/f005")).is_some());
    assert!(m.script.iter().any(|s| s.op == bundle::Op::Delete && s.path.display() == "d03/f005"));
    assert!(m.entries.len() as u64 == listed);
    // Every OLD file (replaced, deleted, copy source, mode-only change) is listed by tag under one
    // aggregate digest, and the mode-only change has no digest of its own (bundle-format.md §4.3).
    assert!(m.tagged_digest.is_some());
    for o in m.old.iter().filter(|o| o.kind.file_size().is_some()) {
        assert!(matches!(o.kind, bundle::OldKind::Tagged { .. }), "{} not listed by tag", o.path);
    }
    let mode_only = m.entry(&forge_path("d10/f010")).expect("d10/f010");
    assert!(
        matches!(mode_only.kind, bundle::Kind::File { hash: None, content: bundle::Content::Unchanged, .. }),
        "{mode_only:?}"
    );

    let target = d.path().join("target");
    copy_tree(&old, &target);
    apply(&bundle, &target, &k.public, 0, &[]);
    assert_same(&snapshot(&target, true), &snapshot(&new, true), "sparse delta");
    no_txn(&target);
}

/// Files `d{i:02}/f{j:03}` under `root` for `i < dirs`, `j < files`, holding the line
/// "file i j" repeated `1 + repeat(i, j)` times.
fn file_grid(root: &Path, dirs: usize, files: usize, repeat: impl Fn(usize, usize) -> usize) {
    for i in 0..dirs {
        for j in 0..files {
            let p = root.join(format!("d{i:02}/f{j:03}"));
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(&p, format!("file {i} {j}\n").repeat(1 + repeat(i, j))).expect("write");
        }
    }
}

/// Give every entry under `root` (not `root` itself) the mtime `secs`; returns them.
fn set_mtimes_under(root: &Path, secs: i64) -> Vec<PathBuf> {
    let mut all = Vec::new();
    collect_all(root, &mut all);
    for p in &all {
        set_mtime(p, secs);
    }
    all
}

fn forge_path(p: &str) -> bundle::BundlePath {
    ferry_tests::forge::path(p)
}

/// `--keep-unchanged-mtimes`: a NEW tree in which every file got a new mtime (a rebuild, a package
/// reinstall) but few changed. The bundle lists only the real changes; after applying, content,
/// types, modes and owners equal NEW, changed files have NEW's mtimes, and files whose only change
/// was the mtime (and a symlink likewise) keep the target's. A mode change still counts.
#[test]
fn keep_unchanged_mtimes_ships_only_real_changes() {
    let d = tempfile::tempdir().expect("tempdir");
    let k = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    file_grid(&old, 10, 50, |_, j| j % 5);
    std::os::unix::fs::symlink("d00/f000", old.join("link")).expect("symlink");
    fs::hard_link(old.join("d01/f000"), old.join("d01/hard")).expect("link");
    set_mtimes_under(&old, 1_600_000_000);
    copy_tree(&old, &new);
    fs::write(new.join("d02/f007"), b"edited\n").expect("write");
    fs::set_permissions(new.join("d03/f003"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let all = set_mtimes_under(&new, 1_700_000_000);

    let exact = d.path().join("exact.ferry");
    let kept = d.path().join("kept.ferry");
    build(Some(&old), &new, &k.secret, 2, &exact, &[]);
    let o = run_expect(
        build_cmd()
            .args(["build", "--json", "--version", "2", "--keep-unchanged-mtimes", "--key"])
            .arg(&k.secret)
            .arg("--old")
            .arg(&old)
            .arg("--new")
            .arg(&new)
            .arg("--out")
            .arg(&kept),
        0,
    );
    let report = json_of(&o);
    // 500 files, the hardlink's second name and the symlink, less d01/f000 and d01/hard (a
    // hardlink group), d02/f007 (edited) and d03/f003 (chmod).
    assert_eq!(report["stats"]["mtime_kept"]["files"], 498, "{report}");
    let listed = |b: &Path| -> usize {
        let o = run_expect(apply_cmd().arg("inspect").arg("--json").arg(b), 0);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect json");
        v["counts"]["entries"].as_u64().expect("counts.entries") as usize
    };
    let (n_exact, n_kept) = (listed(&exact), listed(&kept));
    assert!(n_exact > 500 && n_kept < 30, "exact lists {n_exact}, kept lists {n_kept}");
    assert!(fs::metadata(&kept).expect("kept").len() < fs::metadata(&exact).expect("exact").len());

    let target = d.path().join("target");
    copy_tree(&old, &target);
    apply(&kept, &target, &k.public, 0, &[]);
    no_txn(&target);
    // Content, types, modes and owners as NEW (snapshot without directory mtimes, then files).
    let mtime = |p: &Path| fs::symlink_metadata(p).expect("stat").mtime();
    for p in &all {
        let rel = p.strip_prefix(&new).expect("under new");
        let t = target.join(rel);
        let (a, b) = (fs::symlink_metadata(p).expect("new"), fs::symlink_metadata(&t).expect("target"));
        assert_eq!((a.mode(), a.uid(), a.gid(), a.len()), (b.mode(), b.uid(), b.gid(), b.len()), "{}", rel.display());
        if a.is_file() {
            assert_eq!(fs::read(p).expect("read"), fs::read(&t).expect("read"), "{}", rel.display());
        } else if a.file_type().is_symlink() {
            assert_eq!(fs::read_link(p).expect("link"), fs::read_link(&t).expect("link"));
        }
        let changed = ["d02/f007", "d03/f003", "d01/f000", "d01/hard"].iter().any(|c| rel == Path::new(c));
        if a.is_dir() {
            continue;
        } else if changed {
            assert_eq!(mtime(&t), 1_700_000_000, "{} should take NEW's mtime", rel.display());
        } else {
            assert_eq!(mtime(&t), 1_600_000_000, "{} should keep the target's mtime", rel.display());
        }
    }
    // A second apply of the exact bundle to another copy gives NEW exactly, mtimes included.
    let exact_target = d.path().join("exact-target");
    copy_tree(&old, &exact_target);
    apply(&exact, &exact_target, &k.public, 0, &[]);
    assert_same(&snapshot(&exact_target, false), &snapshot(&new, false), "exact delta");
}
