//! Hostile bundles against the real `ferry-apply`.
//!
//! Every bundle here is forged with `ferry_tests::forge`, bypassing the builder, and most are
//! signed by the trusted key: the applier must refuse them on its own checks. Each case runs in a
//! fresh directory holding `target/` (a file and a directory with a file) and its sibling
//! `outside/` (sentinels, and a copy of `target/dir/file` so that a followed symlink would even
//! match the expected base). After a refusal the exit code is the documented one (3: bad or
//! hostile bundle, 4: target does not match the base), stderr says why, neither tree changed by a
//! single byte, mode or mtime, and no transaction is left behind.
//!
//! Needs the `ferry-apply` binary: `cargo build -p ferry-applier -p ferry-tests` first.

use bundle::sig::{SecretKey, TrustPolicy};
use bundle::{Content, Entry, Hash, Hook, Kind, Limits, Manifest, Method, OldEntry, OldKind, Op, Piece, Rotation};
use ferry_tests::forge::{self, Value};
use ferry_tests::{apply_cmd, assert_same, snapshot, Snapshot};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FILE: &[u8] = b"hello target\n";
const DIR_FILE: &[u8] = b"in dir\n";

struct Env {
    _tmp: tempfile::TempDir,
    target: PathBuf,
    outside: PathBuf,
    trust: PathBuf,
    bundle: PathBuf,
    key: SecretKey,
    before: (Snapshot, Snapshot),
}

struct Run {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

impl Env {
    fn new() -> Env {
        Env::with(|_, _| {})
    }

    /// The standard trees, changed by `prepare(target, outside)` before they are snapshotted.
    fn with(prepare: impl FnOnce(&Path, &Path)) -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let target = root.join("target");
        let outside = root.join("outside");
        fs::create_dir_all(target.join("dir")).expect("mkdir");
        fs::write(target.join("file"), FILE).expect("write");
        fs::write(target.join("dir/file"), DIR_FILE).expect("write");
        fs::create_dir_all(outside.join("dir")).expect("mkdir");
        fs::write(outside.join("sentinel"), b"outside sentinel\n").expect("write");
        fs::write(outside.join("file"), DIR_FILE).expect("write");
        fs::write(outside.join("dir/sentinel"), b"inner sentinel\n").expect("write");
        prepare(&target, &outside);
        for p in [
            "target/file",
            "target/dir/file",
            "target/dir",
            "outside/sentinel",
            "outside/file",
            "outside/dir/sentinel",
            "outside/dir",
        ] {
            ferry_tests::set_mtime(&root.join(p), 1_600_000_000);
        }
        let key = forge::secret(1);
        let trust = forge::write_pub(&root.join("trusted.pub"), &key);
        let before = (snapshot(&target, true), snapshot(&outside, true));
        Env { target, outside, trust, bundle: root.join("bundle.ferry"), key, before, _tmp: tmp }
    }

    /// Sign `m` with the trusted key and write it as the bundle.
    fn write(&self, m: &Manifest, frames: &[Vec<u8>]) {
        forge::write_bundle(&self.bundle, m, &[&self.key], frames);
    }

    fn write_raw(&self, manifest_bytes: &[u8], frames: &[Vec<u8>]) {
        forge::write_raw(&self.bundle, manifest_bytes, &[&self.key], frames);
    }

    /// `m` as an editable CBOR value (written with [`Env::write_raw`], signed by the trusted key).
    fn value(&self, m: &Manifest) -> Value {
        forge::to_value(m)
    }

    fn run(&self, args: &[&std::ffi::OsStr]) -> Run {
        let mut cmd = apply_cmd(); // may build the binaries first: not part of the timing
        cmd.args(args);
        let t = Instant::now();
        let o = cmd.output().expect("spawn ferry-apply (run `cargo build -p ferry-applier` first)");
        Run { code: o.status.code(), stderr: String::from_utf8_lossy(&o.stderr).into_owned(), took: t.elapsed() }
    }

    fn apply(&self) -> Run {
        self.run(&[
            "apply".as_ref(),
            self.bundle.as_os_str(),
            "--target".as_ref(),
            self.target.as_os_str(),
            "--trust".as_ref(),
            self.trust.as_os_str(),
        ])
    }

    fn verify(&self) -> Run {
        self.run(&["verify".as_ref(), self.bundle.as_os_str(), "--trust".as_ref(), self.trust.as_os_str()])
    }

    /// Apply must fail with `code`, name every needle on stderr, and change nothing.
    fn refused(&self, code: i32, needles: &[&str]) -> Run {
        let r = self.apply();
        check_refusal(&r, code, needles);
        self.unchanged();
        r
    }

    fn unchanged(&self) {
        assert_same(&self.before.0, &snapshot(&self.target, true), "target");
        assert_same(&self.before.1, &snapshot(&self.outside, true), "outside");
        assert!(!self.target.join(".ferry/txn").exists(), "a transaction was left behind");
        // The state file may record the refusal as `last_error`, but nothing as installed.
        if let Ok(text) = fs::read_to_string(self.target.join(".ferry/state.json")) {
            let st: serde_json::Value = serde_json::from_str(&text).expect("state.json is JSON");
            assert!(st["version"].is_null() && st["bundle_id"].is_null(), "state records an install: {text}");
        }
    }

    fn applied(&self) -> Run {
        let r = self.apply();
        assert_eq!(r.code, Some(0), "expected success; stderr: {}", r.stderr);
        r
    }
}

fn check_refusal(r: &Run, code: i32, needles: &[&str]) {
    assert_eq!(r.code, Some(code), "exit code; stderr: {}", r.stderr);
    assert!(r.stderr.contains("error:"), "no error message: {}", r.stderr);
    for n in needles {
        assert!(r.stderr.to_lowercase().contains(&n.to_lowercase()), "stderr lacks {n:?}: {}", r.stderr);
    }
}

fn p(s: &str) -> bundle::BundlePath {
    forge::path(s)
}

fn old_file(path: &str, content: &[u8]) -> OldEntry {
    OldEntry {
        path: p(path),
        meta: forge::meta(0o644),
        kind: OldKind::File { size: content.len() as u64, hash: Hash::of(content) },
    }
}

fn old_dir(path: &str) -> OldEntry {
    OldEntry { path: p(path), meta: forge::meta(0o755), kind: OldKind::Dir }
}

fn hardlink(path: &str, primary: &str) -> Entry {
    Entry { path: p(path), meta: forge::meta(0o644), kind: Kind::Hardlink { primary: p(primary) } }
}

/// `forge::minimal` creating `new/f`.
fn minimal() -> forge::Forged {
    forge::minimal(1, "new", b"new content\n")
}

/// A bundle replacing `dir/file` with new content (expects `dir/file` as in the standard target).
fn replace_dir_file() -> forge::Forged {
    let data = b"replaced\n";
    let z = forge::zstd(data);
    let mut m = forge::empty(1);
    m.frames = vec![forge::frame(&z, data.len() as u64)];
    m.entries = vec![forge::dir("dir", 0o755), forge::file("dir/file", data, 0, 0)];
    m.old = vec![old_file("dir/file", DIR_FILE)];
    m.script = vec![forge::step(Op::Place, "dir/file"), forge::step(Op::DirMeta, "dir")];
    forge::Forged { manifest: m, frames: vec![z] }
}

fn piece(m: &mut Manifest) -> &mut Piece {
    match &mut m.entries[1].kind {
        Kind::File { content: Content::Pieces(ps), .. } => &mut ps[0],
        _ => unreachable!(),
    }
}

fn size(m: &mut Manifest) -> &mut u64 {
    match &mut m.entries[1].kind {
        Kind::File { size, .. } => size,
        _ => unreachable!(),
    }
}

fn int(n: i128) -> Value {
    Value::Integer(n.try_into().expect("cbor integer"))
}

// ---------------------------------------------------------------------------------------------
// Positive controls: the forger makes bundles the applier accepts.

#[test]
fn forged_minimal_bundle_is_applied() {
    let env = Env::new();
    let f = minimal();
    env.write(&f.manifest, &f.frames);
    let v = env.verify();
    assert_eq!(v.code, Some(0), "{}", v.stderr);
    env.applied();
    assert_eq!(fs::read(env.target.join("new/f")).expect("read"), b"new content\n");
    assert_same(&env.before.1, &snapshot(&env.outside, true), "outside");
}

#[test]
fn forged_replacement_is_applied() {
    let env = Env::new();
    let f = replace_dir_file();
    env.write(&f.manifest, &f.frames);
    env.applied();
    assert_eq!(fs::read(env.target.join("dir/file")).expect("read"), b"replaced\n");
    assert_same(&env.before.1, &snapshot(&env.outside, true), "outside");
}

// ---------------------------------------------------------------------------------------------
// Paths.

/// The minimal bundle with its directory moved to `to` (raw CBOR: the types refuse it).
fn escaping(to: &[u8], needles: &[&str]) {
    let env = Env::new();
    let f = forge::minimal(1, "PLACEHOLDER", b"x\n");
    let mut v = env.value(&f.manifest);
    assert_eq!(forge::retarget_paths(&mut v, b"PLACEHOLDER", to), 5);
    env.write_raw(&forge::encode_value(&v), &f.frames);
    let mut n = vec!["malformed manifest", "unsafe path"];
    n.extend_from_slice(needles);
    env.refused(3, &n);
}

#[test]
fn dotdot_path() {
    escaping(b"../outside", &["'..' component"]);
    escaping(b"dir/../../outside", &["'..' component"]);
    escaping(b"..", &["'..' component"]);
}

#[test]
fn absolute_path() {
    let env = Env::new();
    escaping(env.outside.as_os_str().as_bytes(), &["absolute path"]);
    escaping(b"/tmp", &["absolute path"]);
}

#[test]
fn path_under_state_dir() {
    escaping(b".ferry", &["state directory"]);
    escaping(b".ferry/trust", &["state directory"]);
    escaping(b".ferry/txn", &["state directory"]);
}

#[test]
fn other_unsafe_paths() {
    escaping(b"a//b", &["empty path component"]);
    escaping(b"a/", &["empty path component"]);
    escaping(b"./a", &["'.' component"]);
    escaping(b"a\0b", &["NUL"]);
    escaping(b"", &["empty path"]);
    escaping(&[b'a'; 256], &["longer than 255"]);
}

#[test]
fn duplicate_paths() {
    // A NEW entry twice.
    let env = Env::new();
    let mut f = minimal();
    let dup = f.manifest.entries[1].clone();
    f.manifest.entries.push(dup);
    env.write(&f.manifest, &f.frames);
    env.refused(3, &["duplicate path new/f"]);

    // Entries out of order.
    let env = Env::new();
    let mut f = minimal();
    f.manifest.entries.swap(0, 1);
    env.write(&f.manifest, &f.frames);
    env.refused(3, &["not sorted"]);

    // An OLD entry twice.
    let env = Env::new();
    let mut f = replace_dir_file();
    f.manifest.old.push(old_file("dir/file", DIR_FILE));
    env.write(&f.manifest, &f.frames);
    env.refused(3, &["old entries not sorted or duplicate path dir/file"]);

    // Two steps for one path.
    let env = Env::new();
    let mut f = minimal();
    f.manifest.script.insert(2, forge::step(Op::Place, "new/f"));
    env.write(&f.manifest, &f.frames);
    env.refused(3, &["apply script", "more than one step"]);
}

#[test]
fn entries_under_a_symlink() {
    for target in [Env::new().outside.join("dir").as_os_str().as_bytes().to_vec(), b"../outside/dir".to_vec()] {
        let env = Env::new();
        let abs = env.outside.join("dir");
        let target = if target.starts_with(b"/") { abs.as_os_str().as_bytes().to_vec() } else { target };
        let data = b"planted through a symlink\n";
        let z = forge::zstd(data);
        let mut m = forge::empty(1);
        m.frames = vec![forge::frame(&z, data.len() as u64)];
        m.entries = vec![forge::symlink("d", &target), forge::file("d/x", data, 0, 0)];
        m.script = vec![forge::step(Op::Place, "d"), forge::step(Op::Place, "d/x")];
        env.write(&m, &[z]);
        env.refused(3, &["d/x: parent d is not a directory of NEW"]);
    }
    // A directory under a symlink, created by mkdir.
    let env = Env::new();
    let mut m = forge::empty(1);
    m.entries = vec![forge::symlink("d", b"../outside"), forge::dir("d/sub", 0o755)];
    m.script = vec![forge::step(Op::Place, "d"), forge::step(Op::Mkdir, "d/sub"), forge::step(Op::DirMeta, "d/sub")];
    env.write(&m, &[]);
    env.refused(3, &["parent d is not a directory of NEW"]);
    // A file whose parent is not in NEW at all (the target's `file`, or nothing).
    for parent in ["file", "nothere"] {
        let env = Env::new();
        let data = b"x\n";
        let z = forge::zstd(data);
        let mut m = forge::empty(1);
        m.frames = vec![forge::frame(&z, 2)];
        m.entries = vec![forge::file(&format!("{parent}/x"), data, 0, 0)];
        m.script = vec![forge::step(Op::Place, &format!("{parent}/x"))];
        env.write(&m, &[z]);
        env.refused(3, &["is not a directory of NEW"]);
    }
}

#[test]
fn hardlink_primaries() {
    let data = b"linked\n";
    let z = forge::zstd(data);
    let frames = vec![z.clone()];
    let fr = vec![forge::frame(&z, data.len() as u64)];
    type Case = (&'static str, Vec<Entry>, Vec<(Op, &'static str)>);
    let cases: Vec<Case> = vec![
        (
            "primary later in order",
            vec![hardlink("a", "b"), forge::file("b", data, 0, 0)],
            vec![(Op::Place, "b"), (Op::Place, "a")],
        ),
        (
            "primary missing",
            vec![forge::file("a", data, 0, 0), hardlink("b", "zz")],
            vec![(Op::Place, "a"), (Op::Place, "b")],
        ),
        (
            "primary is the target's OLD file, not NEW",
            vec![forge::file("a", data, 0, 0), hardlink("b", "file")],
            vec![(Op::Place, "a"), (Op::Place, "b")],
        ),
        (
            "primary is a directory",
            vec![forge::file("a", data, 0, 0), forge::dir("b", 0o755), hardlink("c", "b")],
            vec![(Op::Place, "a"), (Op::Mkdir, "b"), (Op::Place, "c")],
        ),
        (
            "primary is itself",
            vec![forge::file("a", data, 0, 0), hardlink("b", "b")],
            vec![(Op::Place, "a"), (Op::Place, "b")],
        ),
        (
            "primary is a hardlink",
            vec![forge::file("a", data, 0, 0), hardlink("b", "a"), hardlink("c", "b")],
            vec![(Op::Place, "a"), (Op::Place, "b"), (Op::Place, "c")],
        ),
    ];
    for (what, entries, script) in cases {
        let env = Env::new();
        let mut m = forge::empty(1);
        m.frames = fr.clone();
        m.entries = entries;
        m.script = script.into_iter().map(|(o, s)| forge::step(o, s)).collect();
        env.write(&m, &frames);
        eprintln!("case: {what}");
        env.refused(3, &["hardlink primary", "is not an earlier file entry"]);
    }
    // Primaries outside the target (raw CBOR).
    let env0 = Env::new();
    for primary in [
        b"../outside/sentinel".to_vec(),
        env0.outside.join("sentinel").as_os_str().as_bytes().to_vec(),
        b".ferry/lock".to_vec(),
    ] {
        let env = Env::new();
        let mut m = forge::empty(1);
        m.frames = fr.clone();
        m.entries = vec![forge::file("a", data, 0, 0), hardlink("b", "a")];
        m.script = vec![forge::step(Op::Place, "a"), forge::step(Op::Place, "b")];
        let mut v = env.value(&m);
        *forge::at(&mut v, "entries/1/kind/Hardlink/primary") = Value::Bytes(primary);
        env.write_raw(&forge::encode_value(&v), &frames);
        env.refused(3, &["malformed manifest", "unsafe path"]);
    }
}

#[test]
fn copy_and_delta_sources_outside() {
    for (field, src) in [("Copy/from", b"../outside/file".to_vec()), ("Copy/from", b"/etc/passwd".to_vec())] {
        let env = Env::new();
        let mut m = forge::empty(1);
        m.entries = vec![forge::copy("a", "dir/file", DIR_FILE)];
        m.old = vec![old_file("dir/file", DIR_FILE)];
        m.script = vec![forge::step(Op::Place, "a")];
        let mut v = env.value(&m);
        *forge::at(&mut v, &format!("entries/0/kind/File/content/{field}")) = Value::Bytes(src);
        env.write_raw(&forge::encode_value(&v), &[]);
        env.refused(3, &["unsafe path"]);
    }
    // A copy source that is not an expected OLD file.
    let env = Env::new();
    let mut m = forge::empty(1);
    m.entries = vec![forge::copy("a", "dir/file", DIR_FILE)];
    m.script = vec![forge::step(Op::Place, "a")];
    env.write(&m, &[]);
    env.refused(3, &["copy source dir/file is not an OLD file"]);
}

// ---------------------------------------------------------------------------------------------
// Payload frames.

#[test]
fn frame_decodes_to_more_than_declared() {
    let real = b"hello world, this decodes to more than declared";
    let z = forge::zstd(real);
    let env = Env::new();
    let mut m = forge::empty(1);
    m.frames = vec![forge::frame(&z, 5)];
    m.entries = vec![forge::dir("new", 0o755), forge::file("new/f", &real[..5], 0, 0)];
    m.script = vec![forge::step(Op::Mkdir, "new"), forge::step(Op::Place, "new/f"), forge::step(Op::DirMeta, "new")];
    env.write(&m, std::slice::from_ref(&z));
    env.refused(3, &["frame 0", "more than the declared 5 bytes"]);
    check_refusal(&env.verify(), 3, &["frame 0", "declared 5"]);

    // And fewer than declared.
    let env = Env::new();
    let mut long = real.to_vec();
    long.extend_from_slice(b"0123456789");
    m.frames = vec![forge::frame(&z, long.len() as u64)];
    m.entries = vec![forge::dir("new", 0o755), forge::file("new/f", &long, 0, 0)];
    env.write(&m, &[z]);
    env.refused(3, &["frame 0", &format!("decodes to {} bytes, declared {}", real.len(), long.len())]);
    check_refusal(&env.verify(), 3, &["frame 0", "declared"]);
}

/// How a forged bsdiff frame is coded: zstd (`Bsdiff`), one LZMA2 stream with a dictionary of
/// 2^n bytes (`BsdiffLzma`), or three (`BsdiffSplit`).
#[derive(Clone, Copy, Debug)]
enum BsdiffCodec {
    Zstd,
    Lzma(u8),
    Split,
}

/// A raw LZMA2 stream of `data` (dictionary 4 KiB).
fn lzma_stream(data: &[u8]) -> Vec<u8> {
    let o = bundle::lzma::EncodeOptions {
        filter: bundle::lzma::Bcj::None,
        dict_log: 12,
        preset: 6,
        nice_len: None,
        search: bundle::lzma::Search::Preset,
    };
    bundle::lzma::encode(data, o).expect("encode")
}

/// A bundle replacing `dir/file` ("in dir\n") by the output of the bsdiff patch `patch`,
/// declared as `want`, in a frame coded as `codec` says.
fn bsdiff_dir_file(patch: &[u8], want: &[u8], codec: BsdiffCodec) -> forge::Forged {
    match codec {
        BsdiffCodec::Split => {
            let [control, diff, copy] = bundle::bspatch::split(patch);
            bsdiff_split_dir_file([&control, &copy, &diff], want, |_| {})
        }
        BsdiffCodec::Zstd | BsdiffCodec::Lzma(_) => {
            let (base, len) = (p("dir/file"), DIR_FILE.len() as u64);
            let (z, method) = match codec {
                BsdiffCodec::Lzma(dict_log) => {
                    (lzma_stream(patch), Method::BsdiffLzma { base, offset: 0, len, dict_log })
                }
                _ => (forge::zstd(patch), Method::Bsdiff { base, offset: 0, len }),
            };
            bsdiff_dir_file_frame(z, patch.len() as u64, method, want)
        }
    }
}

/// As [`bsdiff_dir_file`], a `BsdiffSplit` frame of the three `parts` (headers, literals,
/// differences) with the method as `edit` leaves it.
fn bsdiff_split_dir_file(parts: [&[u8]; 3], want: &[u8], edit: impl Fn(&mut Method)) -> forge::Forged {
    let enc: Vec<Vec<u8>> = parts.iter().map(|p| lzma_stream(p)).collect();
    let mut method = Method::BsdiffSplit {
        base: p("dir/file"),
        offset: 0,
        len: DIR_FILE.len() as u64,
        dict_log: 12,
        control: parts[0].len() as u64,
        control_size: enc[0].len() as u64,
        copy: parts[1].len() as u64,
        copy_size: enc[1].len() as u64,
    };
    edit(&mut method);
    let decoded = parts.iter().map(|p| p.len() as u64).sum();
    bsdiff_dir_file_frame(enc.concat(), decoded, method, want)
}

/// The bundle of [`bsdiff_dir_file`] around frame `z` (`decoded` bytes) of `method`.
fn bsdiff_dir_file_frame(z: Vec<u8>, decoded: u64, method: Method, want: &[u8]) -> forge::Forged {
    let mut m = forge::empty(1);
    m.frames = vec![forge::frame(&z, decoded)];
    let piece = Piece { frame: 0, offset: 0, len: want.len() as u64, method };
    m.entries = vec![forge::dir("dir", 0o755), forge::file_with("dir/file", want, Content::Pieces(vec![piece]))];
    m.old = vec![old_file("dir/file", DIR_FILE)];
    m.script = vec![forge::step(Op::Place, "dir/file"), forge::step(Op::DirMeta, "dir")];
    forge::Forged { manifest: m, frames: vec![z] }
}

/// One bsdiff record: `add` differences, `copy` literal bytes, then `seek`.
fn bsdiff_record(add: &[u8], copy: &[u8], seek: i64) -> Vec<u8> {
    let mut v = (add.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(&(copy.len() as u64).to_le_bytes());
    let s = if seek < 0 { seek.unsigned_abs() | 1 << 63 } else { seek as u64 };
    v.extend_from_slice(&s.to_le_bytes());
    v.extend_from_slice(add);
    v.extend_from_slice(copy);
    v
}

#[test]
fn hostile_bsdiff_patches_are_refused_while_staging() {
    // Every codec of a bsdiff patch: zstd (`Bsdiff`), LZMA2 (`BsdiffLzma`), and three LZMA2
    // streams (`BsdiffSplit`).
    for codec in [BsdiffCodec::Zstd, BsdiffCodec::Lzma(12), BsdiffCodec::Split] {
        hostile_bsdiff_patches(codec);
    }
    hostile_split_streams();
    // A `BsdiffLzma` dictionary over the limit, or under LZMA2's minimum: refused with the
    // manifest, before anything is decoded.
    let diff: Vec<u8> = b"in dir\n".iter().zip(b"in DIR\n").map(|(o, n)| n.wrapping_sub(*o)).collect();
    for dict_log in [27, 40, 11] {
        let env = Env::new();
        let f = bsdiff_dir_file(&bsdiff_record(&diff, b"!", 0), b"in DIR\n!", BsdiffCodec::Lzma(dict_log));
        env.write(&f.manifest, &f.frames);
        env.refused(3, &["LZMA2 dictionary"]);
    }
}

fn hostile_bsdiff_patches(lzma: BsdiffCodec) {
    // The honest patch: "in dir\n" -> "in DIR\n!" (add 0x20 down to upper case, copy "!").
    let diff: Vec<u8> = b"in dir\n".iter().zip(b"in DIR\n").map(|(o, n)| n.wrapping_sub(*o)).collect();
    let good = bsdiff_record(&diff, b"!", 0);
    let env = Env::new();
    let f = bsdiff_dir_file(&good, b"in DIR\n!", lzma);
    env.write(&f.manifest, &f.frames);
    let r = env.apply();
    assert_eq!(r.code, Some(0), "{lzma:?}: {}", r.stderr);
    assert_eq!(fs::read(env.target.join("dir/file")).expect("read"), b"in DIR\n!");

    // Each hostile patch is signed and its frame's hash is right: what is wrong is inside the
    // patch, found while it is applied record by record; nothing in the target changes.
    let past_base = bsdiff_record(&[0; 9], b"", 0); // reads 9 bytes of a 7-byte base
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 1);
    let mut header_cut = good.clone();
    header_cut.extend_from_slice(&[0u8; 10]);
    let seek_out = [bsdiff_record(b"", b"", -1), good.clone()].concat();
    let cases: [(&[u8], &[u8], &str); 6] = [
        (&past_base, &[0; 9], "past the end of the 7-byte base"),
        (&truncated, b"in DIR\n!", "ends inside a record"),
        (&header_cut, b"in DIR\n!", "truncated record header"),
        (&seek_out, b"in DIR\n!", "seek moves outside the base"),
        (&good, b"in DIR\n", "past the declared 7 bytes"),
        (&good, b"in DIR\n!!", "produces 8 bytes, declared 9"),
    ];
    for (patch, want, needle) in cases {
        let env = Env::new();
        let f = bsdiff_dir_file(patch, want, lzma);
        env.write(&f.manifest, &f.frames);
        let _ = match lzma {
            // Split, a cut record header is a headers' stream of no whole number of records:
            // refused with the manifest, before any frame is read.
            BsdiffCodec::Split if needle == "truncated record header" => {
                env.refused(3, &["dir/file", "bsdiff streams do not fit frame 0"])
            }
            _ => env.refused(3, &["frame 0", "bsdiff patch", needle]),
        };
    }
}

/// A `BsdiffSplit` frame whose streams do not match what its method declares, or that has a
/// stream's bytes left over after the last record: refused while staging, the target untouched.
fn hostile_split_streams() {
    let diff: Vec<u8> = b"in dir\n".iter().zip(b"in DIR\n").map(|(o, n)| n.wrapping_sub(*o)).collect();
    let [control, d, copy] = bundle::bspatch::split(&bsdiff_record(&diff, b"!", 0));
    let want = b"in DIR\n!";
    // The honest streams with the method's (headers' stored size, literals' stored size,
    // headers' length) edited.
    let split = |edit: fn(&mut u64, &mut u64, &mut u64)| {
        bsdiff_split_dir_file([&control, &copy, &d], want, |m| {
            if let Method::BsdiffSplit { control_size, copy_size, control, .. } = m {
                edit(control_size, copy_size, control);
            }
        })
    };
    let cases: Vec<(forge::Forged, &str)> = vec![
        (split(|c, _, _| *c += 1), "data after the end"),
        (split(|c, _, _| *c -= 1), "ends before its end marker"),
        (split(|_, l, _| *l += 1), "LZMA2"),
        (split(|_, _, n| *n -= 24), "more bytes than declared"),
        (bsdiff_split_dir_file([&control, b"!?", &d], want, |_| {}), "copied literals left over"),
        (bsdiff_split_dir_file([&control, &copy, &[&d[..], &[1]].concat()], want, |_| {}), "differences left over"),
    ];
    for (f, needle) in cases {
        let env = Env::new();
        env.write(&f.manifest, &f.frames);
        env.refused(3, &["frame 0", needle]);
    }
}

/// A re-created gzip file (bundle-format.md §5.3) in a bundle of its own: `new/f.gz`, `size`
/// bytes with digest `hash`, made from `data` (one zstd piece) by `g`.
fn regzip_bundle(data: &[u8], g: bundle::Regzip, size: u64, hash: Hash) -> (Manifest, Vec<Vec<u8>>) {
    let frame = forge::zstd(data);
    let mut m = forge::empty(1);
    m.frames = vec![forge::frame(&frame, data.len() as u64)];
    let piece = Piece { frame: 0, offset: 0, len: data.len() as u64, method: Method::Zstd };
    let content = Content::Pieces(vec![piece]);
    let kind = Kind::File { size, hash: Some(hash), content, config: false, extents: None, gzip: Some(g) };
    let f = Entry { path: forge::path("new/f.gz"), meta: forge::meta(0o644), kind };
    m.entries = vec![forge::dir("new", 0o755), f];
    m.script = vec![forge::step(Op::Mkdir, "new"), forge::step(Op::Place, "new/f.gz"), forge::step(Op::DirMeta, "new")];
    (m, vec![frame])
}

#[test]
fn hostile_regzip_entries_are_refused_while_staging() {
    use bundle::deflate::{crc32, deflate, Flavor};
    let data: Vec<u8> = (0..4000u32).flat_map(|i| format!("line {} of {}\n", i % 37, i % 101).into_bytes()).collect();
    let header = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3];
    let gz = |flavor, level| {
        [
            &header[..],
            &deflate(&data, flavor, level).expect("level"),
            &crc32(0, &data).to_le_bytes(),
            &(data.len() as u32).to_le_bytes(),
        ]
        .concat()
    };
    let honest = gz(Flavor::Gzip, 9);
    let how = |flavor, level| bundle::Regzip { header: header.clone(), flavor, level, raw: data.len() as u64 };
    let env = Env::new();
    let (m, frames) = regzip_bundle(&data, how(Flavor::Gzip, 9), honest.len() as u64, Hash::of(&honest));
    env.write(&m, &frames);
    env.applied();
    assert_eq!(fs::read(env.target.join("new/f.gz")).expect("read"), honest);

    // Signed settings that do not give the signed file: another level (shorter output), a
    // declared size the output passes, one it does not reach, the same size and other bytes.
    // Level 1 compresses worse: its output passes the declared size.
    assert!(gz(Flavor::Gzip, 1).len() > honest.len());
    let mut flipped = honest.clone();
    flipped[12] ^= 0x40;
    let n = honest.len() as u64;
    let cases: [(bundle::Regzip, u64, &[u8], &[&str]); 4] = [
        (how(Flavor::Gzip, 1), n, &honest, &["frame 0", "new/f.gz", "longer than declared"]),
        (how(Flavor::Gzip, 9), n - 1, &honest[..honest.len() - 1], &["frame 0", "new/f.gz", "longer than declared"]),
        (
            how(Flavor::Gzip, 9),
            n + 1,
            &[&honest[..], b"x"].concat(),
            &["frame 0", "new/f.gz", "short of its declared size"],
        ),
        (how(Flavor::Gzip, 9), n, &flipped, &["new/f.gz", "does not match the manifest's hash"]),
    ];
    for (g, size, file, needles) in cases {
        let env = Env::new();
        let (m, frames) = regzip_bundle(&data, g, size, Hash::of(file));
        env.write(&m, &frames);
        env.refused(3, needles);
    }

    // Refused by the manifest check, before any frame is read: data of a size the piece does not
    // carry, no gzip header, level 0, a sparse gzip file.
    let structural: [(bundle::Regzip, &str); 3] = [
        (bundle::Regzip { raw: data.len() as u64 + 1, ..how(Flavor::Gzip, 9) }, "pieces sum to"),
        (bundle::Regzip { header: b"not a gzip".to_vec(), ..how(Flavor::Gzip, 9) }, "not a gzip header"),
        (how(Flavor::Zlib, 0), "level 0"),
    ];
    for (g, needle) in structural {
        let env = Env::new();
        let (m, frames) = regzip_bundle(&data, g, n, Hash::of(&honest));
        env.write(&m, &frames);
        env.refused(3, &["new/f.gz", needle]);
    }
}

#[test]
fn zstd_bomb() {
    // 4 GiB of zeros in 128 KiB of zstd, declared as 10 bytes.
    let bomb = forge::rle_bomb(32 * 1024);
    assert!(bomb.len() < 200 * 1024);
    let env = Env::new();
    let mut m = forge::empty(1);
    m.frames = vec![forge::frame(&bomb, 10)];
    m.entries = vec![forge::dir("new", 0o755), forge::file("new/f", &[0u8; 10], 0, 0)];
    m.script = vec![forge::step(Op::Mkdir, "new"), forge::step(Op::Place, "new/f"), forge::step(Op::DirMeta, "new")];
    env.write(&m, std::slice::from_ref(&bomb));
    let r = env.refused(3, &["frame 0", "more than the declared 10 bytes"]);
    assert!(r.took < Duration::from_secs(20), "bomb took {:?} to refuse", r.took);
    let v = env.verify();
    check_refusal(&v, 3, &["frame 0"]);
    assert!(v.took < Duration::from_secs(20), "verify of the bomb took {:?}", v.took);

    // A frame whose window needs 2 GiB of decoder memory.
    let mut huge_window = bomb[..6].to_vec();
    huge_window[5] = 21 << 3; // 2^31
    huge_window.extend_from_slice(&bomb[bomb.len() - 4..]); // one last RLE block
    let env = Env::new();
    m.frames = vec![forge::frame(&huge_window, 10)];
    env.write(&m, &[huge_window]);
    env.refused(3, &["frame 0"]);
}

/// A full bundle placing `new/f` (`content`) and `new/g` (`more`) from one LZMA2 frame `frame`
/// declared to decode to `decoded` bytes, both pieces with `method`.
fn lzma_bundle(content: &[u8], more: &[u8], frame: &[u8], decoded: u64, method: Method) -> Manifest {
    let mut m = forge::empty(1);
    m.frames = vec![forge::frame(frame, decoded)];
    let piece = |offset: u64, len: usize| Piece { frame: 0, offset, len: len as u64, method: method.clone() };
    m.entries = vec![
        forge::dir("new", 0o755),
        forge::file_with("new/f", content, Content::Pieces(vec![piece(0, content.len())])),
        forge::file_with("new/g", more, Content::Pieces(vec![piece(content.len() as u64, more.len())])),
    ];
    m.script = vec![
        forge::step(Op::Mkdir, "new"),
        forge::step(Op::Place, "new/f"),
        forge::step(Op::Place, "new/g"),
        forge::step(Op::DirMeta, "new"),
    ];
    m
}

#[test]
fn lzma_frames_hostile_and_valid() {
    use bundle::lzma::{encode, Bcj, EncodeOptions, Search};
    let (f, g) = (b"an LZMA2 file\n".repeat(50), b"and another\n".repeat(20));
    let data = [&f[..], &g[..]].concat();
    let o = EncodeOptions { filter: Bcj::X86, dict_log: 16, preset: 6, nice_len: None, search: Search::Preset };
    let good = encode(&data, o).expect("encode");
    let method = Method::Lzma { filter: Bcj::X86, dict_log: 16 };
    let n = data.len() as u64;
    // The valid bundle applies (the control for every refusal below).
    let env = Env::new();
    env.write(&lzma_bundle(&f, &g, &good, n, method.clone()), std::slice::from_ref(&good));
    env.applied();
    assert_eq!(fs::read(env.target.join("new/g")).expect("read"), g);
    // Decodes to more than declared (the last file one byte shorter in the manifest).
    let env = Env::new();
    env.write(&lzma_bundle(&f, &g[1..], &good, n - 1, method.clone()), std::slice::from_ref(&good));
    env.refused(3, &["frame 0", &format!("more than the declared {} bytes", n - 1)]);
    check_refusal(&env.verify(), 3, &["frame 0"]);
    // Truncated, garbage, bytes after the end marker, and the wrong filter (decodes, wrong hash).
    let mut trailing = good.clone();
    trailing.push(0);
    let cases: [(&[u8], &str); 3] = [
        (&good[..good.len() - 3], "ends before its end marker"),
        (b"\xe0garbage that is not LZMA2", "frame 0"),
        (&trailing, "data after the end of the LZMA2 stream"),
    ];
    for (bytes, needle) in cases {
        let env = Env::new();
        env.write(&lzma_bundle(&f, &g, bytes, n, method.clone()), &[bytes.to_vec()]);
        env.refused(3, &["frame 0", needle]);
    }
    // The frame of a file with call instructions, encoded behind the x86 filter but declared
    // without it: it decodes, to other bytes than the file's, and staging refuses them.
    let code = [&f[..], &[0xe8, 0x10, 0x20, 0, 0].repeat(40)].concat();
    let coded = encode(&code, o).expect("encode");
    let plain = Method::Lzma { filter: Bcj::None, dict_log: 16 };
    let env = Env::new();
    env.write(&lzma_bundle(&f, &code[f.len()..], &coded, code.len() as u64, plain.clone()), &[coded]);
    env.refused(3, &["new/g"]);
    // A dictionary over the limit, or under LZMA2's minimum: refused with the manifest.
    for dict_log in [27, 40, 11] {
        let env = Env::new();
        let m = Method::Lzma { filter: Bcj::X86, dict_log };
        env.write(&lzma_bundle(&f, &g, &good, n, m), std::slice::from_ref(&good));
        env.refused(3, &["LZMA2 dictionary"]);
    }
    // One frame, two methods: refused.
    let env = Env::new();
    let mut m = lzma_bundle(&f, &g, &good, n, method.clone());
    if let Kind::File { content: Content::Pieces(ps), .. } = &mut m.entries[2].kind {
        ps[0].method = plain;
    }
    env.write(&m, std::slice::from_ref(&good));
    env.refused(3, &["frame 0: pieces name different methods"]);
    // A bomb: 64 MiB of zeros in a few KiB, declared as the two small files.
    let zeros = encode(
        &vec![0u8; 64 << 20],
        EncodeOptions { filter: Bcj::None, dict_log: 26, preset: 0, nice_len: None, search: Search::Preset },
    )
    .expect("encode");
    assert!(zeros.len() < 64 << 10, "bomb is {} bytes", zeros.len());
    let env = Env::new();
    env.write(&lzma_bundle(&f, &g, &zeros, n, Method::Lzma { filter: Bcj::None, dict_log: 26 }), &[zeros]);
    let r = env.refused(3, &["frame 0"]);
    assert!(r.took < Duration::from_secs(20), "bomb took {:?} to refuse", r.took);
}

// ---------------------------------------------------------------------------------------------
// Apply script order.

#[test]
fn delete_directory_before_children() {
    let mut m = forge::empty(1);
    m.old = vec![old_dir("dir"), old_file("dir/file", DIR_FILE)];
    m.script = vec![forge::step(Op::Delete, "dir"), forge::step(Op::Delete, "dir/file")];
    let env = Env::new();
    env.write(&m, &[]);
    env.refused(3, &["step 0", "directory deleted before its child dir/file"]);

    // Control: children first is applied.
    m.script.reverse();
    let env = Env::new();
    env.write(&m, &[]);
    env.applied();
    assert!(!env.target.join("dir").exists());
    assert!(env.target.join("file").exists());
}

#[test]
fn symlink_placed_before_its_target() {
    let data = b"target of the link\n";
    let z = forge::zstd(data);
    let mut m = forge::empty(1);
    m.frames = vec![forge::frame(&z, data.len() as u64)];
    m.entries = vec![forge::file("a", data, 0, 0), forge::symlink("l", b"a")];
    m.script = vec![forge::step(Op::Place, "l"), forge::step(Op::Place, "a")];
    let env = Env::new();
    env.write(&m, std::slice::from_ref(&z));
    env.refused(3, &["step 0", "symlink placed before a (step 1), which its target resolves through"]);

    m.script.reverse();
    let env = Env::new();
    env.write(&m, &[z]);
    env.applied();
    assert_eq!(fs::read(env.target.join("l")).expect("read through link"), data);
}

#[test]
fn other_script_defects() {
    let f = minimal();
    type Case = (&'static str, Box<dyn Fn(&mut Manifest)>, &'static str);
    let cases: Vec<Case> = vec![
        ("file never placed", Box::new(|m| m.script.retain(|s| s.op != Op::Place)), "never placed"),
        ("child placed before its parent is made", Box::new(|m| m.script.swap(0, 1)), "parent new is created later"),
        ("dirmeta before creations", Box::new(|m| m.script.rotate_right(1)), "phase order"),
        ("mkdir of a file", Box::new(|m| m.script[1].op = Op::Mkdir), "not a new directory"),
        (
            "place and delete of one path",
            Box::new(|m| m.script.push(forge::step(Op::Delete, "new/f"))),
            "more than one step",
        ),
        (
            "delete of a NEW path",
            Box::new(|m| {
                m.entries.insert(0, forge::dir("dir", 0o755));
                m.script.insert(2, forge::step(Op::Delete, "dir"));
            }),
            "delete of a path that is in NEW",
        ),
        ("delete of an unlisted path", Box::new(|m| m.script.insert(2, forge::step(Op::Delete, "file"))), "not in OLD"),
        ("place of a path not in NEW", Box::new(|m| m.script.insert(2, forge::step(Op::Place, "file"))), "not in NEW"),
        ("setmeta of a new file", Box::new(|m| m.script[1].op = Op::SetMeta), "setmeta"),
    ];
    for (what, edit, needle) in cases {
        eprintln!("case: {what}");
        let env = Env::new();
        let mut m = f.manifest.clone();
        edit(&mut m);
        env.write(&m, &f.frames);
        env.refused(3, &[needle]);
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes and numbers.

/// A manifest of `n` directory entries `d0000000`, `d0000001`, …, spliced as bytes (fast).
fn many_entries_manifest(n: u32) -> Vec<u8> {
    let mut m = forge::empty(1);
    m.entries = vec![forge::dir("d0000000", 0o755)];
    let enc = m.to_cbor();
    let mut one = Vec::new();
    ciborium::into_writer(&m.entries[0], &mut one).expect("encode entry");
    let mut key_and_one = b"\x67entries\x81".to_vec();
    key_and_one.extend_from_slice(&one);
    let at = enc.windows(key_and_one.len()).position(|w| w == key_and_one).expect("entries in the encoding");
    let digits = one.windows(8).position(|w| w == b"d0000000").expect("path in entry") + 1;
    let mut out = Vec::with_capacity(enc.len() + one.len() * n as usize);
    out.extend_from_slice(&enc[..at]);
    out.extend_from_slice(b"\x67entries\x9a");
    out.extend_from_slice(&n.to_be_bytes());
    for i in 0..n {
        let s = out.len();
        out.extend_from_slice(&one);
        out[s + digits..s + digits + 7].copy_from_slice(format!("{i:07}").as_bytes());
    }
    out.extend_from_slice(&enc[at + key_and_one.len()..]);
    out
}

#[test]
fn million_entries_refused_by_limits() {
    let env = Env::new();
    let t = Instant::now();
    let mb = many_entries_manifest(1_000_000);
    env.write_raw(&mb, &[]);
    eprintln!("forged a {} byte manifest in {:?}", mb.len(), t.elapsed());
    let r = env.refused(3, &["manifest has 1000000 entries, over the limit of 500000"]);
    eprintln!("refused in {:?}: {}", r.took, r.stderr.trim());
    assert!(r.took < Duration::from_secs(30), "took {:?}", r.took);
}

#[test]
fn many_deletions_validate_quickly() {
    // 100k OLD files under `dir`, deleted children first: valid, so the applier reaches the base
    // check (the files are not there: exit 4). The script check must not be quadratic.
    let n = 100_000;
    let mut m = forge::empty(1);
    m.old.push(old_dir("dir"));
    for i in 0..n {
        m.old.push(old_file(&format!("dir/f{i:06}"), b""));
    }
    m.script = m.old[1..].iter().map(|o| bundle::Step { op: Op::Delete, path: o.path.clone() }).collect();
    m.script.push(forge::step(Op::Delete, "dir"));
    let env = Env::new();
    env.write(&m, &[]);
    let r = env.refused(4, &["dir/f000000: missing"]);
    eprintln!("refused in {:?}", r.took);
    assert!(r.took < Duration::from_secs(30), "took {:?}", r.took);
}

#[test]
fn many_type_changes_validate_quickly() {
    // 50k OLD directories each replaced by an empty file (an exchange each): every OLD path is
    // checked against the replaced directories, which must not be quadratic either.
    let n = 50_000;
    let mut m = forge::empty(1);
    for i in 0..n {
        let path = p(&format!("d{i:06}"));
        m.old.push(OldEntry { path: path.clone(), meta: forge::meta(0o755), kind: OldKind::Dir });
        m.entries.push(Entry {
            path: path.clone(),
            meta: forge::meta(0o644),
            kind: Kind::File {
                size: 0,
                hash: Some(Hash::of(b"")),
                content: Content::Empty,
                config: false,
                extents: None,
                gzip: None,
            },
        });
        m.script.push(bundle::Step { op: Op::Place, path });
    }
    let env = Env::new();
    env.write(&m, &[]);
    let r = env.refused(4, &["d000000: missing"]);
    eprintln!("refused in {:?}", r.took);
    assert!(r.took < Duration::from_secs(30), "took {:?}", r.took);
}

#[test]
fn out_of_range_numbers() {
    let f = minimal();
    type Edit = Box<dyn Fn(&mut Manifest)>;
    let typed: Vec<(&str, Edit, &str)> = vec![
        ("mode over 07777", Box::new(|m| m.entries[1].meta.mode = 0o10000), "bits outside 07777"),
        ("mode u32::MAX", Box::new(|m| m.entries[0].meta.mode = u32::MAX), "bits outside 07777"),
        ("frame index out of range", Box::new(|m| piece(m).frame = 1), "missing frame 1"),
        ("frame index u32::MAX", Box::new(|m| piece(m).frame = u32::MAX), "missing frame 4294967295"),
        ("piece offset+len overflows", Box::new(|m| piece(m).offset = u64::MAX), "piece outside frame 0"),
        ("piece past the frame", Box::new(|m| piece(m).offset = 1), "piece outside frame 0"),
        ("piece len u64::MAX", Box::new(|m| piece(m).len = u64::MAX), "piece outside frame 0"),
        ("empty piece", Box::new(|m| piece(m).len = 0), "piece outside frame 0"),
        ("file size u64::MAX", Box::new(|m| *size(m) = u64::MAX), "size is 18446744073709551615"),
        (
            "frame size u64::MAX",
            Box::new(|m| m.frames[0].size = u64::MAX),
            "frame is 18446744073709551615 bytes, over the limit",
        ),
        (
            "frame decoded u64::MAX",
            Box::new(|m| m.frames[0].decoded = u64::MAX),
            "decoded frame is 18446744073709551615 bytes, over the limit",
        ),
        ("frame size off by one", Box::new(|m| m.frames[0].size += 1), "the manifest says"),
        ("frame hash wrong", Box::new(|m| m.frames[0].hash.0[0] ^= 1), "frame 0 (bytes"),
        (
            "a frame no piece uses",
            Box::new(|m| {
                let fr = m.frames[0].clone();
                m.frames.push(fr);
            }),
            "frame 1: pieces do not tile the frame",
        ),
        (
            "one patch frame used with two different bases",
            Box::new(|m| {
                m.old = vec![old_file("dir/file", DIR_FILE), old_file("file", FILE)];
                piece(m).method = Method::Patch { base: p("file"), offset: 0, len: FILE.len() as u64 };
                let mut other = m.entries[1].clone();
                other.path = p("new/g");
                if let Kind::File { content: Content::Pieces(ps), .. } = &mut other.kind {
                    ps[0].method = Method::Patch { base: p("dir/file"), offset: 0, len: DIR_FILE.len() as u64 };
                }
                m.entries.push(other);
                m.script.insert(2, forge::step(Op::Place, "new/g"));
            }),
            "frame 0: pieces do not tile the frame",
        ),
        (
            "delta window overflows",
            Box::new(|m| {
                m.old = vec![old_file("file", FILE)];
                piece(m).method = Method::Patch { base: p("file"), offset: u64::MAX, len: 2 };
            }),
            "delta base file is not an OLD file of that size",
        ),
        (
            "symlink target too long",
            Box::new(|m| m.entries.push(forge::symlink("nl", &[b'x'; 4097]))),
            "symlink target empty, too long",
        ),
        ("symlink target empty", Box::new(|m| m.entries.push(forge::symlink("nl", b""))), "symlink target empty"),
        ("symlink target with NUL", Box::new(|m| m.entries.push(forge::symlink("nl", b"a\0b"))), "with NUL"),
        (
            "too many hooks",
            Box::new(|m| {
                m.hooks = (0..65).map(|_| Hook { glob: "**".into(), command: "true".into(), timeout_secs: 1 }).collect()
            }),
            "65 hooks",
        ),
        (
            "hook timeout zero",
            Box::new(|m| m.hooks = vec![Hook { glob: "**".into(), command: "true".into(), timeout_secs: 0 }]),
            "timeout must be at least 1 second",
        ),
        ("channel not printable", Box::new(|m| m.channel = "sta ble".into()), "channel"),
        ("channel too long", Box::new(|m| m.channel = "x".repeat(129)), "channel"),
    ];
    for (what, edit, needle) in typed {
        eprintln!("case: {what}");
        let env = Env::new();
        let mut m = f.manifest.clone();
        edit(&mut m);
        env.write(&m, &f.frames);
        env.refused(3, &[needle]);
    }

    // Numbers the manifest's types cannot hold, and other CBOR the types refuse (raw bytes).
    type VEdit = Box<dyn Fn(&mut Value)>;
    let raw: Vec<(&str, VEdit)> = vec![
        ("mode 2^32", Box::new(|v| *forge::at(v, "entries/1/meta/mode") = int(1 << 32))),
        ("negative uid", Box::new(|v| *forge::at(v, "entries/1/meta/uid") = int(-1))),
        ("mtime beyond i64", Box::new(|v| *forge::at(v, "entries/1/meta/mtime_ns") = int(u64::MAX as i128))),
        ("negative version", Box::new(|v| *forge::at(v, "version") = int(-1))),
        ("format 2^40", Box::new(|v| *forge::at(v, "format") = int(1 << 40))),
        ("frame index 2^32", Box::new(|v| *forge::at(v, "entries/1/kind/File/content/Pieces/0/frame") = int(1 << 32))),
        (
            "size as a 2^64 bignum",
            Box::new(|v| {
                *forge::at(v, "entries/1/kind/File/size") =
                    Value::Tag(2, Box::new(Value::Bytes(vec![1, 0, 0, 0, 0, 0, 0, 0, 0])))
            }),
        ),
        (
            "size as a negative bignum",
            Box::new(|v| {
                *forge::at(v, "frames/0/decoded") =
                    Value::Tag(3, Box::new(Value::Bytes(vec![1, 0, 0, 0, 0, 0, 0, 0, 0])))
            }),
        ),
        ("size as a float", Box::new(|v| *forge::at(v, "frames/0/size") = Value::Float(1.0))),
        ("digest of 31 bytes", Box::new(|v| *forge::at(v, "frames/0/hash") = Value::Bytes(vec![0; 31]))),
        ("path as text", Box::new(|v| *forge::at(v, "entries/1/path") = Value::Text("new/f".into()))),
        (
            "unknown field",
            Box::new(|v| {
                if let Value::Map(m) = v {
                    m.push((Value::Text("extra".into()), int(1)));
                }
            }),
        ),
        (
            "missing field",
            Box::new(|v| {
                if let Value::Map(m) = v {
                    m.retain(|(k, _)| k != &Value::Text("hooks".into()));
                }
            }),
        ),
        ("unknown op", Box::new(|v| *forge::at(v, "script/0/op") = Value::Text("Chmod".into()))),
        ("unknown kind", Box::new(|v| *forge::at(v, "entries/0/kind") = Value::Text("Socket".into()))),
        (
            "fields reordered",
            Box::new(|v| {
                if let Value::Map(m) = v {
                    m.swap(0, 1);
                }
            }),
        ),
    ];
    for (what, edit) in raw {
        eprintln!("case: {what}");
        let env = Env::new();
        let mut v = env.value(&f.manifest);
        edit(&mut v);
        env.write_raw(&forge::encode_value(&v), &f.frames);
        env.refused(3, &["malformed manifest"]);
    }

    // Byte-level encodings: non-minimal integers, a lying array length, a huge byte string, junk
    // after the manifest.
    let good = f.manifest.to_cbor();
    let splice = |from: &[u8], to: &[u8]| -> Vec<u8> {
        let at = good.windows(from.len()).position(|w| w == from).expect("pattern in manifest");
        [&good[..at], to, &good[at + from.len()..]].concat()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("non-minimal integer", splice(b"\x64mode\x19\x01\xed", b"\x64mode\x1a\x00\x00\x01\xed")),
        ("entries array claims 2^32-1 elements", splice(b"\x67entries\x82", b"\x67entries\x9a\xff\xff\xff\xff")),
        (
            "entries array claims 2^64-1 elements",
            splice(b"\x67entries\x82", b"\x67entries\x9b\xff\xff\xff\xff\xff\xff\xff\xff"),
        ),
        ("path claims 2^63 bytes", splice(b"\x64path\x43new", b"\x64path\x5b\x80\x00\x00\x00\x00\x00\x00\x00new")),
        (
            "text claims 2^63 bytes",
            splice(b"\x67channel\x66stable", b"\x67channel\x7b\x80\x00\x00\x00\x00\x00\x00\x00stable"),
        ),
        ("indefinite-length entries", splice(b"\x67entries\x82", b"\x67entries\x9f")),
        ("junk after the manifest", [&good[..], b"\x00"].concat()),
        ("truncated manifest", good[..good.len() - 1].to_vec()),
    ];
    for (what, mb) in cases {
        eprintln!("case: {what}");
        let env = Env::new();
        env.write_raw(&mb, &f.frames);
        let r = env.refused(3, &["malformed manifest"]);
        assert!(r.took < Duration::from_secs(20), "{what}: took {:?}", r.took);
    }
}

// ---------------------------------------------------------------------------------------------
// Versions, signatures, trust.

#[test]
fn unknown_format_version() {
    let f = minimal();
    let env = Env::new();
    let mut m = f.manifest.clone();
    m.format = 7;
    env.write(&m, &f.frames);
    env.refused(3, &["unsupported bundle format version 7"]);

    // The container's version: `ferry-v7/manifest.cbor`, and the previous versions' `ferry-v5`
    // and `ferry-v3`.
    for v in [7, 5, 3] {
        let env = Env::new();
        let mb = f.manifest.encode();
        let mut b = forge::raw_bundle_bytes(&mb, &[&env.key], &f.frames);
        let hdr = bundle::container::header(&format!("ferry-v{v}/manifest.cbor"), mb.len() as u64);
        b[..512].copy_from_slice(&hdr);
        fs::write(&env.bundle, &b).expect("write");
        env.refused(3, &[&format!("unsupported bundle format version {v}")]);
    }

    // Not a bundle at all: another tar, random bytes, an empty file.
    for (what, bytes) in [
        ("other tar", {
            let mut v = Vec::new();
            bundle::container::write_member(&mut v, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n").expect("tar");
            v
        }),
        ("random", (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()),
        ("empty", Vec::new()),
    ] {
        eprintln!("case: {what}");
        let env = Env::new();
        fs::write(&env.bundle, bytes).expect("write");
        let r = env.refused(3, &[]);
        assert!(r.stderr.contains("not a ferry bundle") || r.stderr.contains("truncated"), "{}", r.stderr);
    }
}

#[test]
fn signature_failures() {
    let f = minimal();
    let trusted = forge::secret(1);
    let stranger = forge::secret(2);
    let bytes = f.manifest.encode();
    let id = bundle::Manifest::id(&bytes);

    // Signed only by an untrusted key.
    let env = Env::new();
    forge::write_bundle(&env.bundle, &f.manifest, &[&stranger], &f.frames);
    let who = format!("signed by {} (not trusted)", stranger.public().id);
    env.refused(3, &["bundle has 0 trusted signatures, the policy needs 1 (short by 1)", &who]);

    // A trusted key's signature over another bundle's id.
    let env = Env::new();
    let mut other = bytes.clone();
    *other.last_mut().expect("nonempty") ^= 1;
    let sigs = forge::signatures(&other, &[&trusted]);
    fs::write(&env.bundle, forge::framed(&bytes, &sigs, &f.frames)).expect("write");
    env.refused(3, &["does not verify", &trusted.public().id]);

    // Every signature present is checked: a valid trusted one does not excuse a bad untrusted one.
    let env = Env::new();
    let mut sigs = bundle::sig::Signatures::new();
    sigs.insert(trusted.public().bytes, trusted.sign_id(&id));
    sigs.insert(stranger.public().bytes, stranger.sign_id(&bundle::Manifest::id(&other)));
    fs::write(&env.bundle, forge::framed(&bytes, &sigs.encode(), &f.frames)).expect("write");
    env.refused(3, &["does not verify", &stranger.public().id]);

    // No signatures (an unsigned bundle); the trusted key twice; two keys out of order; 17
    // signatures; not CBOR; junk after the CBOR; a short signature.
    let seventeen: Vec<SecretKey> = (10..27).map(forge::secret).collect();
    let seventeen: Vec<&SecretKey> = seventeen.iter().collect();
    let mut desc = [&trusted, &stranger];
    desc.sort_by_key(|k| std::cmp::Reverse(k.public().bytes));
    let mut junk = forge::signatures(&bytes, &[&trusted]);
    junk.push(0);
    let short_sig = forge::encode_value(&Value::Array(vec![Value::Array(vec![
        Value::Bytes(trusted.public().bytes.to_vec()),
        Value::Bytes(trusted.sign_id(&id)[..63].to_vec()),
    ])]));
    for (what, sigs, needle) in [
        ("no signatures", bundle::sig::encode_signatures(&[]), "bundle is unsigned (no signatures)"),
        ("same key twice", forge::raw_signatures(&bytes, &[&trusted, &trusted]), "signs twice"),
        ("unsorted", forge::raw_signatures(&bytes, &desc), "not sorted by public key"),
        ("17 signatures", forge::signatures(&bytes, &seventeen), "17 signatures (0 to 16 allowed)"),
        ("not cbor", b"\xff\xff".to_vec(), "malformed signature block"),
        ("junk after the cbor", junk, "malformed signature block"),
        ("short signature", short_sig, "signature must be 64 bytes"),
    ] {
        eprintln!("case: {what}");
        let env = Env::new();
        fs::write(&env.bundle, forge::framed(&bytes, &sigs, &f.frames)).expect("write");
        env.refused(3, &[needle]);
    }

    // Signed by a trusted key that the operator's policy retires.
    let env = Env::new();
    let dir = env.trust.with_extension("d");
    fs::create_dir(&dir).expect("mkdir");
    forge::write_pub(&dir.join("k.pub"), &trusted);
    fs::write(dir.join("policy"), format!("retire {}\n", trusted.public().id)).expect("write");
    env.write(&f.manifest, &f.frames);
    let r = env.run(&[
        "apply".as_ref(),
        env.bundle.as_os_str(),
        "--target".as_ref(),
        env.target.as_os_str(),
        "--trust".as_ref(),
        dir.as_os_str(),
    ]);
    check_refusal(&r, 3, &["short by 1", &format!("{} (retired)", trusted.public().id)]);
    env.unchanged();
}

#[test]
fn hostile_rotation_is_refused() {
    // A rotation the target could never load again (it would refuse every later bundle) or that
    // fails only after the commit must be refused before anything is written.
    let f = minimal();
    let bad_point = (0u8..=255)
        .map(|b| [b; 32])
        .find(|k| bundle::sig::PublicKey::from_bytes(*k).is_err())
        .expect("an invalid point");
    let cases: Vec<(&str, Rotation)> = vec![
        ("threshold 0", Rotation { add: vec![], retire: vec![], threshold: Some(0) }),
        (
            "retire id with a newline",
            Rotation { add: vec![], retire: vec!["0123456789abcdef\nthreshold 0".into()], threshold: None },
        ),
        ("retire id not hex", Rotation { add: vec![], retire: vec!["not-a-key-id".into()], threshold: None }),
        ("added key not a curve point", Rotation { add: vec![Hash(bad_point)], retire: vec![], threshold: None }),
    ];
    for (what, rot) in cases {
        eprintln!("case: {what}");
        let env = Env::new();
        let mut m = f.manifest.clone();
        m.rotation = Some(rot);
        env.write(&m, &f.frames);
        env.refused(3, &["rotation"]);
    }
    // Control: a sound rotation is applied and recorded.
    let env = Env::new();
    let mut m = f.manifest.clone();
    m.rotation = Some(Rotation {
        add: vec![Hash(forge::secret(3).public().bytes)],
        retire: vec![forge::secret(4).public().id],
        threshold: Some(1),
    });
    env.write(&m, &f.frames);
    env.applied();
    assert!(env.target.join(format!(".ferry/trust/{}.pub", forge::secret(3).public().id)).exists());
}

#[test]
fn rotation_retires_an_upper_case_key_id() {
    // The retirement must take effect whatever the case of the hex digits.
    let old_key = forge::secret(1);
    let new_key = forge::secret(3);
    let env = Env::new();
    let mut f = minimal();
    f.manifest.rotation = Some(Rotation {
        add: vec![Hash(new_key.public().bytes)],
        retire: vec![old_key.public().id.to_uppercase()],
        threshold: None,
    });
    env.write(&f.manifest, &f.frames);
    env.applied();
    let g = forge::minimal(2, "newer", b"v2\n");
    env.write(&g.manifest, &g.frames); // signed by the retired key
    check_refusal(&env.apply(), 3, &[&format!("{} (retired)", old_key.public().id), "short by 1"]);
    assert!(!env.target.join("newer").exists());
    forge::write_bundle(&env.bundle, &g.manifest, &[&new_key], &g.frames);
    env.applied();
    assert!(env.target.join("newer/f").exists());
}

#[test]
fn pathological_hook_glob_is_fast() {
    // Post-commit hook globs are matched against every changed path, even with --no-hooks; a
    // backtracking matcher would take forever on this one.
    let name = "a".repeat(200);
    let data = b"x\n";
    let z = forge::zstd(data);
    let mut m = forge::empty(1);
    m.frames = vec![forge::frame(&z, 2)];
    m.entries = vec![forge::dir("new", 0o755), forge::file(&format!("new/{name}"), data, 0, 0)];
    m.script = vec![
        forge::step(Op::Mkdir, "new"),
        forge::step(Op::Place, &format!("new/{name}")),
        forge::step(Op::DirMeta, "new"),
    ];
    m.hooks = vec![
        Hook { glob: format!("new/{}b", "*a".repeat(30)), command: "true".into(), timeout_secs: 1 },
        Hook { glob: format!("{}x", "**/".repeat(60)), command: "true".into(), timeout_secs: 1 },
    ];
    let env = Env::new();
    env.write(&m, &[z]);
    let r = env.run(&[
        "apply".as_ref(),
        env.bundle.as_os_str(),
        "--target".as_ref(),
        env.target.as_os_str(),
        "--trust".as_ref(),
        env.trust.as_os_str(),
        "--no-hooks".as_ref(),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.took < Duration::from_secs(20), "took {:?}", r.took);
}

// ---------------------------------------------------------------------------------------------
// Bit flips.

#[test]
fn bit_flip_in_every_region() {
    let f = minimal();
    let key = forge::secret(1);
    let mb = f.manifest.encode();
    let sb = forge::signatures(&mb, &[&key]);
    let good = forge::framed(&mb, &sb, &f.frames);
    let regions = forge::regions(mb.len(), sb.len(), &[f.frames[0].len()]);
    assert_eq!(regions.last().map(|r| r.1.end), Some(good.len()));
    for (name, range) in &regions {
        let mid = range.start + range.len() / 2;
        for (n, at) in [range.start, mid, range.end - 1].into_iter().enumerate() {
            eprintln!("case: flip in {name} at byte {at}");
            let env = Env::new();
            let mut b = good.clone();
            b[at] ^= 1 << ((at + n) % 8);
            fs::write(&env.bundle, &b).expect("write");
            env.refused(3, &[]);
        }
    }
    // One byte more, one byte less.
    for b in [[&good[..], b"\0"].concat(), good[..good.len() - 1].to_vec()] {
        let env = Env::new();
        fs::write(&env.bundle, &b).expect("write");
        let r = env.refused(3, &[]);
        assert!(r.stderr.contains("trailing data") || r.stderr.contains("truncated"), "{}", r.stderr);
    }
}

#[test]
fn every_single_bit_flip_fails_verification() {
    // Exhaustive over a small bundle, in process (the library the binary uses).
    let f = minimal();
    let key = forge::secret(1);
    let good = forge::bundle_bytes(&f.manifest, &[&key], &f.frames);
    let policy = TrustPolicy { keys: vec![key.public()], threshold: 1, retired: vec![] };
    let limits = Limits::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.ferry");
    fs::write(&path, &good).expect("write");
    applier::verify::bundle(&path, Some(&policy), None, &limits, true).expect("the unflipped bundle verifies");
    let stride: usize = std::env::var("FERRY_FLIP_STRIDE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let t = Instant::now();
    let mut n = 0;
    for bit in (0..good.len() * 8).step_by(stride) {
        let mut b = good.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        fs::write(&path, &b).expect("write");
        if let Ok(h) = applier::verify::bundle(&path, Some(&policy), None, &limits, true) {
            panic!("flipping bit {bit} (byte {}) still verifies: version {}", bit / 8, h.manifest.version);
        }
        n += 1;
    }
    eprintln!("{n} flips of a {} byte bundle all refused in {:?}", good.len(), t.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Planted symlinks in the target.

// ---------------------------------------------------------------------------------------------
// Files listed by tag under one aggregate digest (bundle-format.md §4.3, §10.1).

const DRIFTED: &[u8] = b"in dix\n";

/// A metadata-only update of both files of the standard target (new mtime, content unchanged),
/// as the builder writes it: OLD listed by tag, the aggregate over their whole digests, the NEW
/// entries without a digest.
fn metadata_only() -> Manifest {
    let unchanged = |path: &str, data: &[u8]| Entry {
        path: p(path),
        meta: bundle::Meta { mode: 0o644, mtime_ns: 1_750_000_000_000_000_000, ..bundle::Meta::default() },
        kind: Kind::File {
            size: data.len() as u64,
            hash: None,
            content: Content::Unchanged,
            config: false,
            extents: None,
            gzip: None,
        },
    };
    let mut m = forge::empty(1);
    m.entries = vec![forge::dir("dir", 0o755), unchanged("dir/file", DIR_FILE), unchanged("file", FILE)];
    m.old = vec![old_file("dir/file", DIR_FILE), old_file("file", FILE)];
    m.script = vec![forge::step(Op::SetMeta, "dir/file"), forge::step(Op::SetMeta, "file")];
    m.tag_old_files();
    assert!(m.old.iter().all(|o| matches!(o.kind, OldKind::Tagged { .. })) && m.tagged_digest.is_some());
    m
}

#[test]
fn metadata_only_update_by_tag_is_applied() {
    let env = Env::new();
    env.write(&metadata_only(), &[]);
    env.applied();
    for f in ["file", "dir/file"] {
        let mtime = fs::metadata(env.target.join(f)).expect("stat").modified().expect("mtime");
        assert_eq!(mtime, std::time::UNIX_EPOCH + Duration::from_secs(1_750_000_000), "{f}");
    }
    assert_eq!(fs::read(env.target.join("dir/file")).expect("read"), DIR_FILE);
}

/// A signed manifest whose aggregate does not match its own tagged entries matches no target:
/// refused at the base check, on a target that is exactly its base.
#[test]
fn aggregate_that_does_not_match_its_entries_is_refused() {
    let good = metadata_only();
    let mut wrong_digest = good.clone();
    wrong_digest.tagged_digest = Some(Hash([0x5a; 32]));
    // An aggregate over another size for `file` (the tags still match the target).
    let mut wrong_size = good.clone();
    let mut d = bundle::TaggedDigest::default();
    d.add(&p("dir/file"), DIR_FILE.len() as u64, &Hash::of(DIR_FILE));
    d.add(&p("file"), FILE.len() as u64 + 1, &Hash::of(FILE));
    wrong_size.tagged_digest = Some(d.finish());
    // Without any aggregate, or with tags but no aggregate: malformed.
    let mut none = good.clone();
    none.tagged_digest = None;
    for (what, m, code, needle) in [
        ("wrong digest", &wrong_digest, 4, "2 files listed by tag do not match the bundle's aggregate digest"),
        ("wrong size", &wrong_size, 4, "2 files listed by tag do not match the bundle's aggregate digest"),
        ("no digest", &none, 3, "OLD files listed by tag, but no tagged_digest"),
    ] {
        eprintln!("case: {what}");
        let env = Env::new();
        env.write(m, &[]);
        let r = env.refused(code, &[needle]);
        assert!(!r.stderr.contains("dir/file:") && !r.stderr.contains("\n  file:"), "names a path: {}", r.stderr);
    }
}

/// Exactly one file listed by tag drifted (same size, other content): refused, naming it and
/// only it, the target unchanged.
#[test]
fn one_drifted_tagged_file_is_named() {
    assert_eq!(DRIFTED.len(), DIR_FILE.len());
    let env = Env::with(|t, _| fs::write(t.join("dir/file"), DRIFTED).expect("write"));
    env.write(&metadata_only(), &[]);
    let r = env.refused(4, &["dir/file: content differs from the bundle's base"]);
    assert!(!r.stderr.contains("aggregate"), "named by path, not by the aggregate: {}", r.stderr);
    assert!(!r.stderr.contains(" file: "), "only dir/file drifted: {}", r.stderr);
    // A size change is named too (without hashing the file).
    let env = Env::with(|t, _| fs::write(t.join("file"), b"longer than before\n").expect("write"));
    env.write(&metadata_only(), &[]);
    env.refused(4, &["file: content differs from the bundle's base"]);
}

/// The drifted file's new content has the tag the manifest lists (a collision of the short tag,
/// forged here by writing the drifted content's tag into the manifest): the tag matches, the
/// aggregate over the OLD content does not, and the bundle is refused all the same.
#[test]
fn drift_that_keeps_the_tag_is_refused_by_the_aggregate() {
    let mut m = metadata_only();
    let o = m.old.iter_mut().find(|o| o.path == p("dir/file")).expect("dir/file");
    o.kind = OldKind::Tagged { size: DRIFTED.len() as u64, tag: bundle::Tag::of(&Hash::of(DRIFTED)) };
    // The aggregate is still over what the base really held (DIR_FILE).
    m.check(&Limits::default()).expect("structurally valid");
    let env = Env::with(|t, _| fs::write(t.join("dir/file"), DRIFTED).expect("write"));
    env.write(&m, &[]);
    env.refused(4, &["2 files listed by tag do not match the bundle's aggregate digest", "same tag"]);
    // The same manifest on the real base: that file's tag no longer matches, and it is named.
    let env = Env::new();
    env.write(&m, &[]);
    env.refused(4, &["dir/file: content differs from the bundle's base"]);
}

#[test]
fn planted_symlink_directory() {
    let f = replace_dir_file();
    for relative in [false, true] {
        let env = Env::with(|t, o| {
            fs::remove_dir_all(t.join("dir")).expect("rm");
            if relative {
                symlink("../outside", t.join("dir")).expect("symlink");
            } else {
                symlink(o, t.join("dir")).expect("symlink");
            }
        });
        env.write(&f.manifest, &f.frames);
        env.refused(4, &["does not match the bundle's base", "dir/file", "not a real directory"]);
        assert_eq!(fs::read(env.outside.join("file")).expect("read"), DIR_FILE);
    }
}

#[test]
fn planted_symlink_file() {
    let f = replace_dir_file();
    let env = Env::with(|t, o| {
        fs::remove_file(t.join("dir/file")).expect("rm");
        symlink(o.join("file"), t.join("dir/file")).expect("symlink");
    });
    env.write(&f.manifest, &f.frames);
    env.refused(4, &["dir/file: expected file, found symlink"]);
}

#[test]
fn planted_symlink_where_the_bundle_creates() {
    let f = minimal();
    // `new` is a symlink to outside/dir: mkdir new, then new/f, would land outside.
    let env = Env::with(|t, o| symlink(o.join("dir"), t.join("new")).expect("symlink"));
    env.write(&f.manifest, &f.frames);
    env.refused(4, &["new: exists as symlink, but the bundle creates it"]);
}

#[test]
fn planted_symlink_under_a_deleted_directory() {
    let mut m = forge::empty(1);
    m.old = vec![old_dir("dir"), old_file("dir/file", DIR_FILE)];
    m.script = vec![forge::step(Op::Delete, "dir/file"), forge::step(Op::Delete, "dir")];
    let env = Env::with(|t, o| {
        fs::remove_dir_all(t.join("dir")).expect("rm");
        symlink(o, t.join("dir")).expect("symlink");
    });
    env.write(&m, &[]);
    env.refused(4, &["dir: expected dir, found symlink"]);
    assert!(env.outside.join("file").exists());
}

// ---------------------------------------------------------------------------------------------
// Seed corpus of the fuzz targets in fuzz/.

/// A manifest using every entry kind, content source, piece method and optional field, valid.
fn rich() -> forge::Forged {
    let old_conf = b"old configuration\n";
    let patched = b"old configuration, patched\n";
    let solid = b"helloworld";
    let (patch_frame, solid_frame) = (forge::zstd(patched), forge::zstd(solid));
    let mut m = forge::empty(7);
    m.base = Some(bundle::Base { version: Some(6), tree: Hash::of(b"tree") });
    m.expires = Some(4_000_000_000);
    m.frames = vec![forge::frame(&patch_frame, patched.len() as u64), forge::frame(&solid_frame, solid.len() as u64)];
    let file = |path: &str, data: &[u8], content: Content| Entry {
        path: p(path),
        meta: forge::meta(0o644),
        kind: Kind::File {
            size: data.len() as u64,
            hash: (content != Content::Unchanged).then(|| Hash::of(data)),
            content,
            config: path.ends_with(".conf"),
            extents: None,
            gzip: None,
        },
    };
    let piece = |frame, offset, len, method| Piece { frame, offset, len, method };
    m.entries = vec![
        forge::dir("etc", 0o755),
        file("etc/a.conf", old_conf, Content::Copy { from: p("etc/old.conf") }),
        file("etc/b", b"", Content::Empty),
        hardlink("etc/c", "etc/b"),
        file(
            "etc/d",
            patched,
            Content::Pieces(vec![piece(
                0,
                0,
                patched.len() as u64,
                Method::Patch { base: p("etc/old.conf"), offset: 0, len: old_conf.len() as u64 },
            )]),
        ),
        file("etc/e", b"hello", Content::Pieces(vec![piece(1, 0, 5, Method::Zstd)])),
        file("etc/f", b"world", Content::Pieces(vec![piece(1, 5, 5, Method::Zstd)])),
        forge::symlink("etc/l", b"b"),
        file("etc/old.conf", old_conf, Content::Unchanged),
        Entry { path: p("etc/p"), meta: forge::meta(0o600), kind: Kind::Fifo },
        Entry { path: p("etc/z"), meta: forge::meta(0o600), kind: Kind::CharDev { rdev: 0x103 } },
    ];
    m.old = vec![old_dir("etc"), old_file("etc/gone", b"gone\n"), old_file("etc/old.conf", old_conf)];
    m.script = ["etc/a.conf", "etc/b", "etc/c", "etc/d", "etc/e", "etc/f", "etc/l", "etc/p", "etc/z"]
        .iter()
        .map(|s| forge::step(Op::Place, s))
        .chain([forge::step(Op::Delete, "etc/gone"), forge::step(Op::DirMeta, "etc")])
        .collect();
    m.hooks = vec![Hook { glob: "etc/**/*.conf".into(), command: "true".into(), timeout_secs: 5 }];
    m.rotation = Some(Rotation {
        add: vec![Hash(forge::secret(3).public().bytes)],
        retire: vec![forge::secret(4).public().id],
        threshold: Some(1),
    });
    // `etc/gone` is listed by tag; `etc/old.conf`, a config file, keeps its digest.
    m.tag_old_files();
    forge::Forged { manifest: m, frames: vec![patch_frame, solid_frame] }
}

/// Writes fuzz/corpus/{manifest_decode,script_validate,bundle_verify}/seed-*: run with
/// `cargo test -p ferry-tests --test adversarial -- --ignored write_fuzz_seeds`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let k1 = forge::secret(1);
    let k2 = forge::secret(2);
    let mut deletes = forge::empty(2);
    deletes.old = vec![old_dir("dir"), old_file("dir/file", DIR_FILE)];
    deletes.script = vec![forge::step(Op::Delete, "dir/file"), forge::step(Op::Delete, "dir")];
    let seeds: Vec<(&str, forge::Forged, Vec<&SecretKey>)> = vec![
        ("minimal", minimal(), vec![&k1]),
        ("replace", replace_dir_file(), vec![&k1]),
        ("deletes", forge::Forged { manifest: deletes, frames: vec![] }, vec![&k1]),
        ("rich", rich(), vec![&k1, &k2]),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, f, keys) in seeds {
        let m = f.manifest.clone();
        m.check(&Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        bundle::script::validate(&m).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mb = m.to_cbor();
        for target in ["manifest_decode", "script_validate"] {
            fs::create_dir_all(root.join(target)).expect("mkdir");
            fs::write(root.join(target).join(format!("seed-{name}")), &mb).expect("write seed");
        }
        fs::create_dir_all(root.join("bundle_verify")).expect("mkdir");
        fs::write(root.join("bundle_verify").join(format!("seed-{name}")), forge::bundle_bytes(&m, &keys, &f.frames))
            .expect("write seed");
        // Offline signing: the request for this manifest, and a signature file for it.
        let member = m.encode();
        let req = bundle::request::SigningRequest::new(member);
        let sig = bundle::request::DetachedSignature {
            bundle_id: req.id,
            key: k1.public().bytes,
            signature: k1.sign_id(&req.id),
        };
        fs::create_dir_all(root.join("signing_request")).expect("mkdir");
        fs::write(root.join("signing_request").join(format!("seed-{name}")), req.encode()).expect("write seed");
        fs::write(root.join("signing_request").join(format!("seed-{name}.sig")), sig.to_text()).expect("write seed");
    }
}

/// Sparse entries (bundle-format.md §4.2, §6 rules 9 and 10): an `old` path without an entry is
/// not in NEW, so it must be removed; a step's path must be listed; and nothing is listed without
/// a reason. Each defect is refused before anything is written.
#[test]
fn sparse_entries_must_be_consistent() {
    let unchanged = |path: &str, meta: u32, data: &[u8]| Entry {
        path: p(path),
        meta: forge::meta(meta),
        kind: Kind::File {
            size: data.len() as u64,
            hash: None,
            content: Content::Unchanged,
            config: false,
            extents: None,
            gzip: None,
        },
    };
    let copy = forge::copy("new/copy", "file", FILE);
    // `new/copy` is a copy of OLD `file`, which stays: `file` is in `old` (copy source), so it
    // must be listed; without its entry it would mean "deleted", yet nothing deletes it.
    let mut m = forge::empty(1);
    m.entries = vec![forge::dir("new", 0o755), copy];
    m.old = vec![old_file("file", FILE)];
    m.script = vec![forge::step(Op::Mkdir, "new"), forge::step(Op::Place, "new/copy"), forge::step(Op::DirMeta, "new")];
    let env = Env::new();
    env.write(&m, &[]);
    env.refused(3, &["file: OLD entry not in NEW (not listed in entries) is never deleted"]);

    // A step on an unlisted path.
    let mut bad = m.clone();
    bad.script.insert(2, forge::step(Op::SetMeta, "dir/file"));
    bad.old.insert(0, old_file("dir/file", DIR_FILE));
    bad.entries.insert(0, forge::dir("dir", 0o755));
    bad.entries.push(unchanged("file", 0o644, FILE));
    bad.entries.sort_by(|a, b| a.path.cmp(&b.path));
    let env = Env::new();
    env.write(&bad, &[]);
    env.refused(3, &["step 2", "SetMeta of a path that is not in NEW (not listed in entries)"]);

    // An entry listed for no reason (an unchanged directory of the target).
    let mut bad = m.clone();
    bad.entries.insert(0, forge::dir("dir", 0o755));
    bad.entries.push(unchanged("file", 0o644, FILE));
    bad.entries.sort_by(|a, b| a.path.cmp(&b.path));
    let env = Env::new();
    env.write(&bad, &[]);
    env.refused(3, &["dir: listed in entries, but it has no step"]);

    // Consistent: the copy source is listed, unchanged; everything else is untouched.
    m.entries.push(unchanged("file", 0o644, FILE));
    m.entries.sort_by(|a, b| a.path.cmp(&b.path));
    let env = Env::new();
    env.write(&m, &[]);
    env.applied();
    assert_eq!(fs::read(env.target.join("new/copy")).expect("copy"), FILE);
    assert_eq!(fs::read(env.target.join("file")).expect("source"), FILE);
    assert_eq!(fs::read(env.target.join("dir/file")).expect("untouched"), DIR_FILE);
}

// ---------------------------------------------------------------------------------------------
// Manifest memory bombs (bundle-format.md §4.6, §8): counts are bounded while decoding.

/// A manifest member of a few KB whose CBOR declares `n` `Place` steps of the one-byte path `a`
/// (17 bytes each): the CBOR is compressed as it is generated, so the test never holds it.
fn steps_bomb(n: u32) -> Vec<u8> {
    use std::io::Write;
    let mut m = forge::empty(1);
    m.script = vec![forge::step(Op::Place, "a")];
    let enc = m.to_cbor();
    let mut one = Vec::new();
    ciborium::into_writer(&m.script[0], &mut one).expect("encode step");
    let mut key_and_one = b"\x66script\x81".to_vec();
    key_and_one.extend_from_slice(&one);
    let at = enc.windows(key_and_one.len()).position(|w| w == key_and_one).expect("script in the encoding");
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
    z.write_all(&enc[..at]).expect("zstd");
    z.write_all(b"\x66script\x9a").expect("zstd");
    z.write_all(&n.to_be_bytes()).expect("zstd");
    let chunk = one.repeat(4096);
    for _ in 0..n / 4096 {
        z.write_all(&chunk).expect("zstd");
    }
    for _ in 0..n % 4096 {
        z.write_all(&one).expect("zstd");
    }
    z.write_all(&enc[at + key_and_one.len()..]).expect("zstd");
    z.finish().expect("zstd")
}

/// `ferry-apply ARGS` under an address-space limit of `mib` MiB (`ulimit -v`): an allocation
/// beyond it aborts the process instead of succeeding.
fn run_limited(mib: u64, args: &[&std::ffi::OsStr]) -> Run {
    let bin = apply_cmd();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", mib * 1024)).arg(bin.get_program()).args(args);
    for (k, v) in bin.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let t = Instant::now();
    let o = cmd.output().expect("spawn sh");
    Run { code: o.status.code(), stderr: String::from_utf8_lossy(&o.stderr).into_owned(), took: t.elapsed() }
}

/// 15.7 million steps, 267 MB of CBOR in a member of about 27 KB, signed by a key nobody trusts:
/// `inspect` decodes such a manifest (it checks no trust), and used to peak at 1.5 GB doing it.
/// The array header of the steps is refused before they are decompressed.
#[test]
fn manifest_with_millions_of_steps_is_refused_while_decoding() {
    let env = Env::new();
    let stranger = forge::secret(9);
    let n = 15_700_000;
    let mb = steps_bomb(n);
    eprintln!("manifest member: {} bytes for {} steps", mb.len(), n);
    assert!(mb.len() < 64 * 1024, "bomb is {} bytes", mb.len());
    let needle = format!("manifest has {n} script steps, over the limit of 500000");

    forge::write_raw(&env.bundle, &mb, &[&stranger], &[]);
    let r = run_limited(256, &["inspect".as_ref(), env.bundle.as_os_str()]);
    eprintln!("inspect refused in {:?}: {}", r.took, r.stderr.trim());
    check_refusal(&r, 3, &[&needle]);
    assert!(r.took < Duration::from_secs(10), "inspect took {:?}", r.took);

    // Signed by the trusted key, `apply` gets as far as decoding and refuses it the same way.
    forge::write_raw(&env.bundle, &steps_bomb(n), &[&env.key], &[]);
    let r = env.refused(3, &[&needle]);
    assert!(r.took < Duration::from_secs(10), "apply took {:?}", r.took);
}
