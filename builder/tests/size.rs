//! Size regression test: on a fixed generated tree (deterministic content, modes and mtimes;
//! `SOURCE_DATE_EPOCH` set) the bundles must not grow beyond recorded figures. Sizes are
//! deterministic for a given zstd (pinned in Cargo.lock); nothing is timed.
//!
//! To update after an intended change (a better encoder, a format change): run
//! `cargo test -p ferry-builder --test size -- --nocapture`, read the printed sizes, and set the
//! `RECORDED_*` constants to them (`SIZE_KEEP=1` keeps the trees to inspect, e.g. with
//! `ferry-build build --json`). The test allows 2 % over the recorded figure (owners differ
//! between root and non-root runs by a few bytes per entry); a size well *below* the figure is
//! printed as a hint to record the improvement.

use assert_cmd::Command;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// Full bundle of NEW, `--level default`.
const RECORDED_FULL: u64 = 483_328;
/// Delta OLD → NEW, `--level default`. Every entry of NEW gets a new mtime here (`settle`), so
/// every entry has a step and sparse entries do not shrink this one. (73,216 bytes with one tar
/// header per frame.)
const RECORDED_DELTA: u64 = 62_464;
/// Delta OLD → NEW where entries the update leaves alone keep their mtimes (so the manifest
/// lists only what changes, bundle-format.md §4.2), `--level default`. (71,168 bytes when the
/// manifest still listed every entry of NEW; 61,952 before frames were packed into payload
/// members, bundle-format.md §2.2.)
const RECORDED_DELTA_SAME_MTIMES: u64 = 51_200;
const SLACK: f64 = 1.02;

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// xorshift64*: a generator whose output is fixed forever (unlike a library RNG's).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "static", "int", "return", "const", "char", "buffer", "length", "error", "if", "else", "for", "while", "struct",
    "config", "value", "default", "enable", "path", "size_t", "unsigned", "void", "NULL", "include", "define",
    "option", "server", "client", "request", "response", "timeout", "retry", "socket", "handle", "flags", "mode",
    "offset",
];

fn text(g: &mut Gen, name: &str) -> Vec<u8> {
    let mut s = format!("/* {name}: generated for the size regression test */\n#include \"common.h\"\n\n");
    for i in 0..(20 + g.below(200)) {
        let n = 2 + g.below(9);
        let words: Vec<&str> = (0..n).map(|_| WORDS[g.below(WORDS.len() as u64) as usize]).collect();
        s += &format!("    {}({i}, {});\n", words.join("_"), g.below(1000));
    }
    s.into_bytes()
}

/// Binary records: a fixed layout with small counters and some noise.
fn records(g: &mut Gen, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * 32);
    for i in 0..n {
        v.extend_from_slice(&(i as u32).to_le_bytes());
        v.extend_from_slice(&(g.below(64) as u32).to_le_bytes());
        v.extend_from_slice(b"REC:");
        v.extend_from_slice(&g.next().to_le_bytes()[..4]);
        v.extend_from_slice(&[0u8; 16]);
    }
    v
}

/// A library-like blob: repeated structured blocks with noise, 1.5 MiB.
fn blob(g: &mut Gen) -> Vec<u8> {
    let block: Vec<u8> = (0..4096).map(|_| g.below(256) as u8).collect();
    let mut v = Vec::with_capacity(3 << 19);
    while v.len() < 3 << 19 {
        let mut b = block.clone();
        for _ in 0..64 {
            let i = g.below(4096) as usize;
            b[i] = g.below(256) as u8;
        }
        v.extend_from_slice(&b);
    }
    v
}

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) -> R {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(&p, data)?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Every directory 0755 and every entry a fixed mtime, deepest first.
fn settle(root: &Path, base: u64) -> R {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) -> R {
        let mut v: Vec<PathBuf> = fs::read_dir(d)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        v.sort();
        for p in v {
            if p.is_dir() {
                walk(&p, out)?;
            }
            out.push(p);
        }
        Ok(())
    }
    let mut all = Vec::new();
    walk(root, &mut all)?;
    for (i, p) in all.iter().enumerate() {
        if p.is_dir() {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
        }
        fs::File::open(p)?.set_modified(UNIX_EPOCH + Duration::from_secs(base + i as u64))?;
    }
    Ok(())
}

fn trees(d: &Path) -> R<(PathBuf, PathBuf)> {
    let (old, new) = (d.join("old"), d.join("new"));
    let mut g = Gen(0x5eed_f00d_1234_5678);
    for i in 0..200 {
        let name = format!("src/m{}/file{i:03}.c", i % 10);
        let t = text(&mut g, &name);
        write(&old, &name, &t, 0o644)?;
    }
    for i in 0..20 {
        let r = records(&mut g, 300 + 50 * i);
        write(&old, &format!("var/db/table{i:02}.dat"), &r, 0o600)?;
    }
    let lib = blob(&mut g);
    write(&old, "lib/libbig.so.1", &lib, 0o755)?;
    settle(&old, 1_600_000_000)?;

    let st = std::process::Command::new("cp").arg("-a").arg(&old).arg(&new).status()?;
    assert!(st.success());
    for i in (0..200).step_by(20) {
        let name = format!("src/m{}/file{i:03}.c", i % 10);
        let mut t = fs::read(new.join(&name))?;
        t.extend_from_slice(b"    appended_line(1);\n");
        let at = t.len() / 2;
        t[at] = b'#';
        write(&new, &name, &t, 0o644)?;
    }
    for i in 0..20 {
        let name = format!("src/new/added{i:02}.c");
        let t = text(&mut g, &name);
        write(&new, &name, &t, 0o644)?;
    }
    for i in [3, 33, 63, 93, 123] {
        fs::remove_file(new.join(format!("src/m{}/file{i:03}.c", i % 10)))?;
    }
    fs::rename(new.join("src/m1/file001.c"), new.join("src/m2/moved001.c"))?;
    let mut lib = fs::read(new.join("lib/libbig.so.1"))?;
    for k in 0..40 {
        let i = (k * 37_813) % lib.len();
        lib[i] ^= 0x5a;
    }
    lib.extend_from_slice(&records(&mut g, 2000));
    write(&new, "lib/libbig.so.1", &lib, 0o755)?;
    settle(&new, 1_700_000_000)?;
    Ok((old, new))
}

/// Copy `src` to `dst` and give every entry an mtime derived from its path only, so an entry
/// that is the same in OLD and NEW has the same metadata (as on real systems, where an update
/// leaves most files alone; `settle` gives every entry of NEW a new mtime instead).
fn copy_with_path_mtimes(src: &Path, dst: &Path) -> R {
    let st = std::process::Command::new("cp").arg("-a").arg(src).arg(dst).status()?;
    assert!(st.success());
    fn walk(root: &Path, d: &Path) -> R {
        let mut v: Vec<PathBuf> = fs::read_dir(d)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        v.sort();
        for p in v {
            if p.is_dir() {
                walk(root, &p)?;
            }
            // FNV-1a of the relative path: fixed forever.
            let rel = p.strip_prefix(root)?.as_os_str().as_encoded_bytes();
            let h = rel.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
            fs::File::open(&p)?.set_modified(UNIX_EPOCH + Duration::from_secs(1_600_000_000 + h % 10_000_000))?;
        }
        Ok(())
    }
    walk(dst, dst)
}

fn keygen(dir: &Path) -> R<PathBuf> {
    Command::new(env!("CARGO_BIN_EXE_ferry-build"))
        .arg("keygen")
        .arg("--unencrypted")
        .arg("--out")
        .arg(dir.join("k"))
        .assert()
        .success();
    Ok(dir.join("k.secret"))
}

fn build(old: Option<&Path>, new: &Path, key: &Path, out: &Path) -> R<u64> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-build"));
    c.env("SOURCE_DATE_EPOCH", "1700000000").args(["-q", "build", "--version", "2", "--level", "default"]);
    c.arg("--new").arg(new).arg("--key").arg(key).arg("--out").arg(out);
    if let Some(o) = old {
        c.arg("--old").arg(o);
    }
    c.assert().success();
    Ok(fs::metadata(out)?.len())
}

fn check(what: &str, size: u64, recorded: u64) {
    eprintln!("{what}: {size} bytes (recorded {recorded})");
    let limit = (recorded as f64 * SLACK) as u64;
    assert!(
        size <= limit,
        "{what} bundle grew to {size} bytes, over the recorded {recorded} + 2 % ({limit}); see builder/tests/size.rs"
    );
    if (size as f64) < recorded as f64 * 0.95 {
        eprintln!("{what}: more than 5 % below the recorded size; record the improvement in builder/tests/size.rs");
    }
}

#[test]
fn bundle_sizes_do_not_regress() -> R {
    let d = tempfile::tempdir()?;
    let key = keygen(d.path())?;
    let (old, new) = trees(d.path())?;
    let full = build(None, &new, &key, &d.path().join("full.ferry"))?;
    let delta = build(Some(&old), &new, &key, &d.path().join("delta.ferry"))?;
    let (old2, new2) = (d.path().join("old-same-mtimes"), d.path().join("new-same-mtimes"));
    copy_with_path_mtimes(&old, &old2)?;
    copy_with_path_mtimes(&new, &new2)?;
    let sparse = build(Some(&old2), &new2, &key, &d.path().join("delta-same-mtimes.ferry"))?;
    eprintln!("sizes: full {full}, delta {delta}, delta with unchanged mtimes {sparse}");
    if std::env::var_os("SIZE_KEEP").is_some() {
        let kept = d.keep();
        eprintln!("kept {}", kept.display());
    }
    check("full", full, RECORDED_FULL);
    check("delta", delta, RECORDED_DELTA);
    check("delta with unchanged mtimes", sparse, RECORDED_DELTA_SAME_MTIMES);
    Ok(())
}
