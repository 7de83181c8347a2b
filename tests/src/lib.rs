//! Helpers for end-to-end tests of `ferry-build` and `ferry-apply` together: locating the real
//! binaries, generating trees with known edits, and snapshotting a tree to compare it exactly.
//!
//! The binaries are found through `FERRY_BIN_DIR`, else `target/debug` beside this package
//! (built once per test process with `cargo build -p ferry-builder -p ferry-applier --features
//! ferry-applier/failpoints,ferry-builder/failpoints`, a no-op after `cargo test --workspace`, which builds them with the
//! same features).

pub mod forge;
pub mod nginx;
pub mod tinyproxy;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of a ferry binary.
pub fn bin(name: &str) -> PathBuf {
    if let Ok(d) = std::env::var("FERRY_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let p = target.join("debug").join(name);
    // Build the binaries once per test process so a test never runs a stale binary (a no-op
    // when `cargo test --workspace` already built them).
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            // `failpoints`: the test-only crash and failure injection (applier/src/failpoint.rs).
            .args([
                "build",
                "-q",
                "-p",
                "ferry-builder",
                "-p",
                "ferry-applier",
                "--features",
                "ferry-applier/failpoints,ferry-builder/failpoints",
            ])
            .current_dir(&root)
            .status();
        assert!(st.map(|s| s.success()).unwrap_or(false), "building the ferry binaries failed");
    });
    p
}

/// Panic (never skip) unless running as root: a test that needs root must fail visibly when it
/// cannot run, not pass having checked nothing. CI runs as root.
pub fn require_root(why: &str) {
    use std::os::unix::fs::MetadataExt as _;
    let uid = fs::metadata("/proc/self").map(|m| m.uid()).expect("stat /proc/self");
    assert_eq!(uid, 0, "this test needs root ({why}); run it as root, as CI does");
}

pub fn build_cmd() -> Command {
    Command::new(bin("ferry-build"))
}

pub fn apply_cmd() -> Command {
    let mut c = Command::new(bin("ferry-apply"));
    c.env_remove("FERRY_CRASH_AT")
        .env_remove("FERRY_FAIL_AT")
        .env_remove("FERRY_FAILPOINT_COUNT")
        .env_remove("FERRY_PAUSE_AT");
    c
}

/// Run and return the output; panics with both streams if the exit code is not `code`.
pub fn run_expect(c: &mut Command, code: i32) -> Output {
    let o = c.output().expect("spawn");
    assert_eq!(
        o.status.code(),
        Some(code),
        "{:?}\nstdout: {}\nstderr: {}",
        c,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Keys in `dir`: returns (secret, public).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let base = dir.join(name);
    run_expect(build_cmd().arg("keygen").arg("--unencrypted").arg("--out").arg(&base), 0);
    (base.with_extension("secret"), base.with_extension("pub"))
}

/// Build a bundle; `old` None makes a full bundle.
pub fn build(old: Option<&Path>, new: &Path, key: &Path, version: u64, out: &Path, extra: &[&str]) {
    let mut c = build_cmd();
    c.arg("build")
        .arg("--new")
        .arg(new)
        .arg("--key")
        .arg(key)
        .arg("--version")
        .arg(version.to_string())
        .arg("--out")
        .arg(out);
    if let Some(o) = old {
        c.arg("--old").arg(o);
    }
    c.args(extra).env("SOURCE_DATE_EPOCH", "1700000000");
    run_expect(&mut c, 0);
}

/// [`build`] with `--json`; returns the report. Version 2, like most tests' NEW.
pub fn build_json(old: Option<&Path>, new: &Path, key: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut c = build_cmd();
    c.arg("build").arg("--new").arg(new).arg("--key").arg(key).arg("--version").arg("2").arg("--out").arg(out);
    c.arg("--json");
    if let Some(o) = old {
        c.arg("--old").arg(o);
    }
    c.args(extra).env("SOURCE_DATE_EPOCH", "1700000000");
    let o = run_expect(&mut c, 0);
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

/// `ferry-apply apply` with the given exit code expected.
pub fn apply(bundle: &Path, target: &Path, trust: &Path, code: i32, extra: &[&str]) -> Output {
    run_expect(
        apply_cmd().arg("apply").arg(bundle).arg("--target").arg(target).arg("--trust").arg(trust).args(extra),
        code,
    )
}

/// Copy a tree exactly (hardlinks, devices, modes, owners, times).
pub fn copy_tree(src: &Path, dst: &Path) {
    let st = Command::new("cp").arg("-a").arg(src).arg(dst).status().expect("cp");
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

/// What a snapshot records of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Files and symlinks always; directories only if requested.
    pub mtime_ns: Option<i64>,
    pub content: Option<blake3::Hash>,
    pub link: Option<Vec<u8>>,
    pub rdev: u64,
    /// Smallest path of the hardlink group, if the file has other names in the tree.
    pub group: Option<Vec<u8>>,
    /// Extended attributes (every namespace readable), sorted by name.
    pub xattrs: Vec<bundle::Xattr>,
}

/// Every extended attribute of `p` (not following a symlink), sorted; empty where the filesystem
/// has none.
pub fn xattrs_of(p: &Path) -> Vec<bundle::Xattr> {
    let r = bundle::xattr::read_set(
        |buf| rustix::fs::llistxattr(p, buf).map_err(std::io::Error::from),
        |n, buf| rustix::fs::lgetxattr(p, n, buf).map_err(std::io::Error::from),
        |_| true,
    );
    match r {
        Ok((set, _)) => set,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
        Err(e) => panic!("{}: reading extended attributes: {e}", p.display()),
    }
}

pub type Snapshot = BTreeMap<Vec<u8>, Node>;

/// Snapshot a tree (without its root `.ferry`).
pub fn snapshot(root: &Path, dir_mtimes: bool) -> Snapshot {
    let mut out = Snapshot::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    walk(root, root, dir_mtimes, &mut out, &mut inodes);
    for (_, paths) in inodes {
        if paths.len() > 1 {
            let first = paths.iter().min().cloned();
            for p in paths {
                if let Some(n) = out.get_mut(&p) {
                    n.group = first.clone();
                }
            }
        }
    }
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    dir_mtimes: bool,
    out: &mut Snapshot,
    inodes: &mut BTreeMap<(u64, u64), Vec<Vec<u8>>>,
) {
    let mut names: Vec<_> = fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry").path()).collect();
    names.sort();
    for p in names {
        let rel = p.strip_prefix(root).expect("prefix").as_os_str().as_bytes().to_vec();
        // The applier's state, and work directories at the roots of other mounts (they hold the
        // backups for rollback until the next apply; bundle-format.md §10.2).
        if rel == b".ferry" || p.file_name().is_some_and(|n| n.as_bytes().starts_with(b".ferry-work-")) {
            continue;
        }
        let md = fs::symlink_metadata(&p).expect("lstat");
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else {
            "other"
        };
        let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        let node = Node {
            kind,
            mode: if ft.is_symlink() { 0 } else { md.mode() & 0o7777 },
            uid: md.uid(),
            gid: md.gid(),
            mtime_ns: if kind != "dir" || dir_mtimes { Some(mtime) } else { None },
            content: if ft.is_file() { Some(hash_file(&p)) } else { None },
            link: if ft.is_symlink() {
                Some(fs::read_link(&p).expect("readlink").as_os_str().as_bytes().to_vec())
            } else {
                None
            },
            rdev: if ft.is_char_device() || ft.is_block_device() { md.rdev() } else { 0 },
            group: None,
            xattrs: xattrs_of(&p),
        };
        if ft.is_file() && md.nlink() > 1 {
            inodes.entry((md.dev(), md.ino())).or_default().push(rel.clone());
        }
        out.insert(rel, node);
        if ft.is_dir() {
            walk(root, &p, dir_mtimes, out, inodes);
        }
    }
}

/// BLAKE3 of a file's content, streamed: a huge (sparse) file an attack test plants costs time,
/// not its size in memory.
fn hash_file(p: &Path) -> blake3::Hash {
    let f = fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut h = blake3::Hasher::new();
    h.update_reader(f).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    h.finalize()
}

/// Assert two snapshots are equal, printing the first differences.
pub fn assert_same(a: &Snapshot, b: &Snapshot, what: &str) {
    if a == b {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => diffs.push(format!("only in first: {}", String::from_utf8_lossy(k))),
            Some(w) if w != v => diffs.push(format!("differs: {}: {:?} vs {:?}", String::from_utf8_lossy(k), v, w)),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            diffs.push(format!("only in second: {}", String::from_utf8_lossy(k)));
        }
    }
    diffs.truncate(20);
    panic!("{what}: trees differ:\n{}", diffs.join("\n"));
}

/// Set a path's mtime without following symlinks.
pub fn set_mtime(p: &Path, secs: i64) {
    let st = Command::new("touch").arg("-h").arg("-d").arg(format!("@{secs}")).arg(p).status().expect("touch");
    assert!(st.success());
}

fn name(rng: &mut StdRng) -> Vec<u8> {
    let pool: &[&[u8]] =
        &[b"a", b"b", b"lib", b"etc", b"x.conf", b"data.bin", b"caf\xc3\xa9", b"\xff\xferaw", b"sp ace", b"z"];
    let mut n = pool[rng.gen_range(0..pool.len())].to_vec();
    n.extend_from_slice(rng.gen_range(0..50u32).to_string().as_bytes());
    n
}

fn content(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..4) {
        0 => Vec::new(),
        1 => (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect(),
        2 => {
            let w = b"the quick brown fox jumps over the lazy dog ";
            w.iter().cycle().take(rng.gen_range(100..20_000)).copied().collect()
        }
        _ => (0..rng.gen_range(1000..40_000)).map(|i: usize| (i % 251) as u8 ^ rng.gen_range(0..2u8)).collect(),
    }
}

/// Generate a random tree with every entry type, non-UTF-8 names, empty files and directories,
/// hardlinks, symlinks (relative, absolute, dangling), FIFOs and (as root) device nodes.
pub fn gen_tree(root: &Path, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    fs::create_dir_all(root).expect("mkdir");
    let mut dirs = vec![root.to_path_buf()];
    let mut files: Vec<PathBuf> = Vec::new();
    let n = rng.gen_range(5..40);
    for _ in 0..n {
        let d = dirs[rng.gen_range(0..dirs.len())].clone();
        let p = d.join(OsStr::from_bytes(&name(&mut rng)));
        if fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        match rng.gen_range(0..10) {
            0 | 1 => {
                fs::create_dir(&p).expect("mkdir");
                dirs.push(p);
            }
            2 if !files.is_empty() => {
                let t = &files[rng.gen_range(0..files.len())];
                fs::hard_link(t, &p).expect("link");
            }
            3 => {
                let target: Vec<u8> = match rng.gen_range(0..3) {
                    0 => b"/usr/lib/nowhere".to_vec(),
                    1 => b"../dangling".to_vec(),
                    _ => {
                        files.last().and_then(|f| f.file_name()).map(|n| n.as_bytes().to_vec()).unwrap_or(b"x".to_vec())
                    }
                };
                symlink(OsStr::from_bytes(&target), &p).expect("symlink");
            }
            4 => {
                let st = Command::new("mkfifo").arg(&p).status().expect("mkfifo");
                assert!(st.success());
            }
            _ => {
                fs::write(&p, content(&mut rng)).expect("write");
                let modes = [0o644, 0o755, 0o600, 0o4755, 0o2750, 0o1777 & 0o1755];
                fs::set_permissions(&p, fs::Permissions::from_mode(modes[rng.gen_range(0..modes.len())]))
                    .expect("chmod");
                files.push(p);
            }
        }
    }
    if rustix_is_root() && rng.gen_bool(0.5) {
        let p = root.join("null-dev");
        let _ = Command::new("mknod").arg(&p).arg("c").arg("1").arg("3").status();
    }
    stamp(root, &mut rng);
}

fn rustix_is_root() -> bool {
    // SAFETY-free check: uid 0 owns /proc/self as seen by us.
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Give every entry a deterministic, distinct mtime (so mtime handling is actually tested).
fn stamp(root: &Path, rng: &mut StdRng) {
    let mut all = Vec::new();
    collect(root, &mut all);
    for p in all {
        set_mtime(&p, 1_600_000_000 + rng.gen_range(0..10_000_000));
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut v: Vec<_> = fs::read_dir(dir).expect("read_dir").map(|e| e.expect("e").path()).collect();
    v.sort();
    for p in v {
        let md = fs::symlink_metadata(&p).expect("lstat");
        if md.is_dir() {
            collect(&p, out);
        }
        out.push(p);
    }
}

/// Make NEW from a copy of OLD with random edits: content edits, appends, deletions, additions,
/// renames, mode and mtime changes, type changes (file↔dir↔symlink), new hardlinks.
pub fn mutate(old: &Path, new: &Path, seed: u64) {
    copy_tree(old, new);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut all = Vec::new();
    collect(new, &mut all);
    let edits = rng.gen_range(1..12);
    for _ in 0..edits {
        if all.is_empty() {
            break;
        }
        let p = all[rng.gen_range(0..all.len())].clone();
        let Ok(md) = fs::symlink_metadata(&p) else { continue };
        match rng.gen_range(0..9) {
            0 if md.is_file() => {
                let mut c = fs::read(&p).expect("read");
                let len = c.len();
                if len > 0 {
                    let i = rng.gen_range(0..len);
                    c[i] ^= 0x55;
                }
                c.extend_from_slice(b"appended");
                fs::remove_file(&p).expect("rm");
                fs::write(&p, c).expect("write");
            }
            1 => {
                if md.is_dir() {
                    fs::remove_dir_all(&p).expect("rm -r");
                } else {
                    fs::remove_file(&p).expect("rm");
                }
            }
            2 if md.is_file() => {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).expect("chmod");
            }
            3 => {
                // type change to a file
                if md.is_dir() {
                    fs::remove_dir_all(&p).expect("rm -r");
                } else {
                    fs::remove_file(&p).expect("rm");
                }
                fs::write(&p, b"now a file").expect("write");
            }
            4 if !md.is_dir() => {
                // type change to a directory with a child
                fs::remove_file(&p).expect("rm");
                fs::create_dir(&p).expect("mkdir");
                fs::write(p.join("child"), b"child").expect("write");
            }
            5 if !md.is_dir() => {
                fs::remove_file(&p).expect("rm");
                symlink("child-target", &p).expect("symlink");
            }
            6 if md.is_file() => {
                let q = p.with_file_name(format!("renamed{}", rng.gen_range(0..1000)));
                if fs::symlink_metadata(&q).is_err() {
                    fs::rename(&p, &q).expect("rename");
                }
            }
            7 if md.is_file() => {
                let q = p.with_file_name(format!("hl{}", rng.gen_range(0..1000)));
                if fs::symlink_metadata(&q).is_err() {
                    fs::hard_link(&p, &q).expect("link");
                }
            }
            _ => {
                let q = p.parent().unwrap_or(new).join(format!("added{}", rng.gen_range(0..1000)));
                if fs::symlink_metadata(&q).is_err() {
                    fs::write(&q, content(&mut rng)).expect("write");
                }
            }
        }
        all = Vec::new();
        collect(new, &mut all);
    }
    // Fresh mtimes on everything that may have changed (deterministic).
    for p in &all {
        if rng.gen_bool(0.3) {
            set_mtime(p, 1_700_000_000 + rng.gen_range(0..1000));
        }
    }
}

/// Extra edits not made by `mutate`: directory modes, a directory becoming a symlink, a file
/// becoming a FIFO, setuid/setgid/sticky bits being set and cleared, a hardlink group split, an
/// empty directory becoming a file, a hardlinked file edited in place, a file becoming a hardlink
/// of another, owner changes and device number changes (as root). Deterministic in `seed`; each
/// edit is made with probability one half on the first suitable path, so every case gets a
/// different mix.
pub fn mutate_more(new: &Path, seed: u64) {
    let pick = |i: u64| (seed.rotate_left(i as u32 * 7) ^ (i * 0x9e37)) & 1 == 1;
    // The first (or last) path, in a fresh listing, whose lstat satisfies `f`.
    let find = |last: bool, f: &dyn Fn(&Path, &fs::Metadata) -> bool| -> Option<PathBuf> {
        let mut all = Vec::new();
        collect(new, &mut all);
        let ok = |p: &&PathBuf| fs::symlink_metadata(p).map(|m| f(p, &m)).unwrap_or(false);
        if last {
            all.iter().rev().find(ok).cloned()
        } else {
            all.iter().find(ok).cloned()
        }
    };
    if pick(1) {
        if let Some(p) = find(false, &|_, m| m.is_dir()) {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o750)).expect("chmod dir");
        }
    }
    if pick(2) {
        if let Some(p) =
            find(false, &|p, m| m.is_dir() && fs::read_dir(p).map(|mut r| r.next().is_none()).unwrap_or(false))
        {
            fs::remove_dir(&p).expect("rmdir");
            fs::write(&p, b"was an empty directory").expect("write");
        }
    }
    if pick(3) {
        if let Some(p) = find(true, &|_, m| m.is_dir()) {
            fs::remove_dir_all(&p).expect("rm -r");
            symlink("/etc/somewhere", &p).expect("symlink");
        }
    }
    if pick(4) {
        if let Some(p) = find(false, &|_, m| m.is_file() && m.nlink() == 1) {
            fs::remove_file(&p).expect("rm");
            let st = Command::new("mkfifo").arg(&p).status().expect("mkfifo");
            assert!(st.success());
        }
    }
    if pick(5) {
        let mut all = Vec::new();
        collect(new, &mut all);
        for (i, p) in
            all.iter().filter(|p| fs::symlink_metadata(p).map(|m| m.is_file()).unwrap_or(false)).take(3).enumerate()
        {
            let mode = [0o4711, 0o2755, 0o644][i];
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }
    if pick(6) {
        // Split a hardlink group: one name gets its own copy of the content.
        if let Some(p) = find(false, &|_, m| m.is_file() && m.nlink() > 1) {
            let c = fs::read(&p).expect("read");
            let md = fs::metadata(&p).expect("stat");
            fs::remove_file(&p).expect("rm");
            fs::write(&p, c).expect("write");
            fs::set_permissions(&p, md.permissions()).expect("chmod");
        }
    }
    if pick(7) {
        if let Some(p) = find(true, &|_, m| m.is_dir()) {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o1777)).expect("chmod sticky dir");
        }
    }
    if pick(8) {
        // Edit a hardlinked file in place: every name of the group sees the new content.
        if let Some(p) = find(false, &|_, m| m.is_file() && m.nlink() > 1) {
            let mut f = fs::OpenOptions::new().append(true).open(&p).expect("open");
            std::io::Write::write_all(&mut f, b" edited in place").expect("append");
        }
    }
    if pick(9) {
        // A file becomes another name of a different file.
        let mut files = Vec::new();
        collect(new, &mut files);
        files.retain(|p| fs::symlink_metadata(p).map(|m| m.is_file()).unwrap_or(false));
        if files.len() >= 2 {
            let (a, b) = (&files[0], &files[files.len() - 1]);
            fs::remove_file(a).expect("rm");
            fs::hard_link(b, a).expect("link");
        }
    }
    if pick(10) && rustix_is_root() {
        // Owners change (files, a directory, a symlink).
        let mut all = Vec::new();
        collect(new, &mut all);
        for (i, p) in all.iter().enumerate().filter(|(i, _)| i % 4 == 1) {
            let st = Command::new("chown")
                .arg("-h")
                .arg(format!("{}:{}", 1000 + i, 2000 + i))
                .arg(p)
                .status()
                .expect("chown");
            assert!(st.success());
        }
    }
    if pick(11) && rustix_is_root() {
        // A device node changes its number, or one appears.
        let p = new.join("null-dev");
        if fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
            fs::remove_file(&p).expect("rm");
        }
        if fs::symlink_metadata(&p).is_err() {
            let st = Command::new("mknod").arg(&p).arg("c").arg("1").arg("5").status().expect("mknod");
            assert!(st.success());
        }
    }
    // Some entries get fresh deterministic mtimes; the other directory mtimes are whatever the
    // edits left (the bundle must carry them all the same).
    let mut after = Vec::new();
    collect(new, &mut after);
    for (i, p) in after.iter().enumerate() {
        if (seed >> (i % 64)) & 1 == 1 && i % 3 == 0 {
            set_mtime(p, 1_710_000_000 + i as i64);
        }
    }
}

/// `n` pseudo-random, incompressible bytes (xorshift64; deterministic for a seed).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Whether process `pid` is stopped (state `T` or `t` in `/proc/PID/stat`); `None` once it is
/// gone or a zombie.
pub fn is_stopped(pid: u32) -> Option<bool> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses and may contain anything.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    match state {
        "Z" | "X" => None,
        s => Some(s == "T" || s == "t"),
    }
}

/// Spawn `cmd` with `FERRY_PAUSE_AT=failpoint` (`NAME` or `NAME:K`) and wait (at most 30 s, else
/// panic) until it has stopped itself there; returns early if it exited instead (check with
/// `try_wait`). Continue it with [`resume_paused`].
pub fn spawn_paused(cmd: &mut Command, failpoint: &str) -> std::process::Child {
    let mut child = cmd.env("FERRY_PAUSE_AT", failpoint).spawn().expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return child;
        }
        match is_stopped(child.id()) {
            Some(true) => return child,
            None => return child,
            Some(false) => {}
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not stop at failpoint {failpoint} within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Send SIGCONT to a child stopped by [`spawn_paused`].
pub fn resume_paused(child: &std::process::Child) {
    let st = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status().expect("kill -CONT");
    assert!(st.success(), "kill -CONT {}", child.id());
}

/// A signing key pair made by `ferry-build keygen`.
pub struct Keys {
    pub secret: PathBuf,
    pub public: PathBuf,
}

/// A key pair in `dir`.
pub fn keys(dir: &Path) -> Keys {
    let (secret, public) = keygen(dir, "k");
    Keys { secret, public }
}

/// The crash-safety loop: count the failpoints of one uninterrupted run of `cmd` on a fresh copy
/// of `old` (which `cmd` must apply, exit 0), then for every failpoint K: a fresh copy in
/// `scratch/t`, `cmd` killed at K (`FERRY_CRASH_AT`, SIGKILL), `after_crash(target, K)`,
/// `ferry-apply resume`, `after_resume(target, K)`. Returns the number of failpoints (at least 10:
/// fewer means the loop is not reaching the commit).
pub fn crash_at_every_failpoint(
    old: &Path,
    scratch: &Path,
    cmd: impl Fn(&Path) -> Command,
    after_crash: impl Fn(&Path, usize),
    after_resume: impl Fn(&Path, usize),
) -> usize {
    use std::os::unix::process::ExitStatusExt;
    let fresh = |name: &str| {
        let t = scratch.join(name);
        if t.exists() {
            fs::remove_dir_all(&t).expect("rm");
        }
        copy_tree(old, &t);
        t
    };
    let log = scratch.join("failpoints.log");
    let _ = fs::remove_file(&log);
    run_expect(cmd(&fresh("count")).env("FERRY_FAILPOINT_COUNT", &log), 0);
    let points = fs::read_to_string(&log)
        .unwrap_or_else(|_| {
            panic!(
                "no failpoint log: is {} built with the cargo feature `failpoints`? \
                 (`cargo test --workspace` enables it; a release build does not)",
                bin("ferry-apply").display()
            )
        })
        .lines()
        .count();
    assert!(points > 10, "{points} failpoints");
    for k in 1..=points {
        let t = fresh("t");
        let o = cmd(&t).env("FERRY_CRASH_AT", k.to_string()).output().expect("spawn");
        assert_eq!(o.status.signal(), Some(9), "crash point {k} did not kill: {o:?}");
        after_crash(&t, k);
        run_expect(apply_cmd().arg("-q").arg("resume").arg("--target").arg(&t), 0);
        after_resume(&t, k);
    }
    points
}

/// Wait until a server just spawned as `child` accepts connections on every port of `ports` on
/// 127.0.0.1, at most 10 s. If it exits first, `Err` with its status and `log()` (its error
/// log); on timeout it is killed. `name` names it in messages.
pub fn wait_listening(
    child: &mut Option<std::process::Child>,
    ports: &[u16],
    name: &str,
    log: &dyn Fn() -> String,
) -> Result<(), String> {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(c) = child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                *child = None;
                return Err(format!("{name} exited ({st}): {}", log()));
            }
        }
        if ports.iter().all(|&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return Err(format!("{name} did not listen within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
