//! Apply reads each byte of the bundle once (issue 18): the head once (its signatures checked
//! once), then every frame by staging, which checks each frame's hash and the end of the archive
//! as it reads them and writes only into work directories; the commit starts only after all of
//! it passed (bundle-format.md §7, §10.2). `apply --json` reports `bundle_bytes_read`.
//!
//! A corrupt frame found mid-staging is refused as verification always refused it (exit 3, the
//! frame and its byte range named), the target byte for byte as it was, no work directory left.
//! A resume reads the bundle again, once, and checks the hash of every frame — those whose files
//! an interrupted run already staged too — unless that run verified them all.

use ferry_tests::forge::regions;
use ferry_tests::*;
use std::fs;
use std::ops::Range;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct World {
    _tmp: tempfile::TempDir,
    d: PathBuf,
    old: PathBuf,
    new: PathBuf,
    keys: Keys,
}

/// OLD and NEW (a generated tree and its mutation, plus compressible files big enough for
/// several frames of their own), and a key pair.
fn world(seed: u64) -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path().to_path_buf();
    let (old, new) = (d.join("old"), d.join("new"));
    gen_tree(&old, seed);
    mutate(&old, &new, seed);
    for i in 0..3u64 {
        // Text-like content: compressed, so a flipped byte usually breaks the zstd stream.
        let words: Vec<u8> = noise(4_000, seed + i).iter().map(|b| b"abcdefgh \n"[(*b % 10) as usize]).collect();
        let data: Vec<u8> = words.iter().cycle().take(1_500_000 + 10_000 * i as usize).copied().collect();
        fs::write(new.join(format!("big-{i}.txt")), data).expect("write");
    }
    // Incompressible: the bundle is well over the 1 MiB the reader buffers at a time.
    fs::write(new.join("noise.bin"), noise(2_500_000, seed)).expect("write");
    let keys = keys(&d);
    World { _tmp: tmp, d, old, new, keys }
}

impl World {
    fn target(&self, name: &str) -> PathBuf {
        let t = self.d.join(name);
        if t.exists() {
            fs::remove_dir_all(&t).expect("rm");
        }
        copy_tree(&self.old, &t);
        t
    }

    fn build(&self, out: &str, extra: &[&str]) -> PathBuf {
        let b = self.d.join(out);
        // Solid frames of at most 1 MiB: the three big files (1.5 MB each) get frames of their
        // own, so the bundle has several frames of different sizes.
        let args: Vec<&str> = ["--solid-size", "1M"].iter().copied().chain(extra.iter().copied()).collect();
        build(Some(&self.old), &self.new, &self.keys.secret, 2, &b, &args);
        b
    }

    /// `ferry-apply apply BUNDLE --target T --trust K ARGS` (one decoding thread with `one_cpu`:
    /// every frame is then decoded as it streams in, before its hash can be checked).
    fn apply_cmd(&self, bundle: &Path, t: &Path, one_cpu: bool, args: &[&str]) -> Command {
        let mut c = if one_cpu {
            let mut c = Command::new("taskset");
            c.arg("-c").arg("0").arg(bin("ferry-apply"));
            c
        } else {
            apply_cmd()
        };
        c.arg("apply").arg(bundle).arg("--target").arg(t).arg("--trust").arg(&self.keys.public).args(args);
        c
    }
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("JSON report: {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn bytes_read(o: &Output) -> u64 {
    json(o)["bundle_bytes_read"].as_u64().unwrap_or_else(|| panic!("no bundle_bytes_read: {}", json(o)))
}

fn size(p: &Path) -> u64 {
    fs::metadata(p).expect("stat").len()
}

/// The byte range of every frame's data in bundle file `bytes`.
fn frames(bytes: &[u8]) -> Vec<Range<usize>> {
    let mut r = bundle::container::Reader::new(bytes, bundle::Limits::default());
    let (mb, sb) = r.head().expect("head");
    let m = bundle::Manifest::decode(&mb, &bundle::Limits::default()).expect("manifest");
    let lens: Vec<usize> = m.frames.iter().map(|f| f.size as usize).collect();
    let reg = regions(mb.len(), sb.len(), &lens);
    (0..lens.len())
        .map(|i| reg.iter().find(|r| r.0 == format!("frame {i} data")).expect("frame region").1.clone())
        .collect()
}

/// The frame holding (the first piece of) NEW file `path`.
fn frame_of(bytes: &[u8], path: &str) -> usize {
    let mut r = bundle::container::Reader::new(bytes, bundle::Limits::default());
    let (mb, _) = r.head().expect("head");
    let m = bundle::Manifest::decode(&mb, &bundle::Limits::default()).expect("manifest");
    let e = m.entries.iter().find(|e| e.path.to_string() == path).expect("entry");
    match &e.kind {
        bundle::Kind::File { content: bundle::Content::Pieces(ps), .. } => ps[0].frame as usize,
        k => panic!("{path}: {k:?}"),
    }
}

/// The message verification gives for frame `i` at `r` (bundle/src/error.rs `FrameHash`).
fn hash_message(i: usize, r: &Range<usize>) -> String {
    format!("frame {i} (bytes {}..{}) does not match its hash in the manifest", r.start, r.end)
}

/// Paths under `dir` whose name starts with `.ferry-work-`, and a transaction or a
/// non-empty trash in its state directory: what a refused apply must not leave.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = fs::read_dir(&p) else { continue };
        for e in rd {
            let e = e.expect("entry");
            if e.file_name().to_string_lossy().starts_with(".ferry-work-") {
                out.push(e.path().display().to_string());
            }
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            }
        }
    }
    if dir.join(".ferry/txn").exists() {
        out.push(".ferry/txn".into());
    }
    if fs::read_dir(dir.join(".ferry/trash")).is_ok_and(|mut r| r.next().is_some()) {
        out.push(".ferry/trash/*".into());
    }
    out
}

#[test]
fn a_fresh_apply_reads_each_byte_of_the_bundle_once() {
    let w = world(1801);
    let b = w.build("b.ferry", &[]);
    let n = frames(&fs::read(&b).expect("read")).len();
    assert!(n >= 5, "the bundle should have several frames, has {n}");
    for one_cpu in [false, true] {
        let t = w.target("t");
        let o = w.apply_cmd(&b, &t, one_cpu, &["--json"]).output().expect("spawn");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        // Exactly its size: every byte read (the whole bundle is verified), none twice.
        assert_eq!(bytes_read(&o), size(&b), "one_cpu {one_cpu}");
        assert_same(&snapshot(&t, true), &snapshot(&w.new, true), "applied");
        // The same bundle again: its head says it is installed; nothing more is read.
        let o = run_expect(&mut w.apply_cmd(&b, &t, false, &["--json"]), 0);
        assert_eq!(json(&o)["result"], "already-installed");
        let again = bytes_read(&o);
        let head = frames(&fs::read(&b).expect("read"))[0].start as u64;
        assert!(again >= head && again <= head + (1 << 20), "already installed: read {again}, head {head}");
    }

    // A split bundle: the parts, each byte once.
    let s = w.build("s.ferry", &["--split-size", "256K"]);
    let parts: Vec<PathBuf> =
        (0..).map(|i| PathBuf::from(format!("{}.{i:03}", s.display()))).take_while(|p| p.exists()).collect();
    assert!(parts.len() >= 3, "{} parts", parts.len());
    let t = w.target("t");
    let o = run_expect(&mut w.apply_cmd(&parts[0], &t, false, &["--json"]), 0);
    assert_eq!(bytes_read(&o), parts.iter().map(|p| size(p)).sum::<u64>());
    assert_same(&snapshot(&t, true), &snapshot(&w.new, true), "applied from parts");

    // An encrypted bundle: the outer head once (its manifest decoded once), then the frames.
    let t = w.target("t");
    let rcpt = w.d.join("t.recipient");
    run_expect(apply_cmd().arg("identity").arg("--target").arg(&t).arg("--out").arg(&rcpt), 0);
    let e = w.build("e.ferry", &["--encrypt-to", rcpt.to_str().expect("utf-8")]);
    let o = run_expect(&mut w.apply_cmd(&e, &t, false, &["--json"]), 0);
    assert_eq!(json(&o)["encrypted"], true);
    assert_eq!(bytes_read(&o), size(&e));
    assert_same(&snapshot(&t, true), &snapshot(&w.new, true), "applied encrypted");

    // The inbox reads every candidate's head to order them and applies each from there.
    let t = w.target("t");
    let inbox = w.d.join("inbox");
    fs::create_dir_all(&inbox).expect("mkdir");
    fs::copy(&b, inbox.join("b.ferry")).expect("cp");
    let mut c = apply_cmd();
    c.arg("inbox").arg(&inbox).arg("--target").arg(&t).arg("--trust").arg(&w.keys.public).arg("--json");
    let o = run_expect(&mut c, 0);
    assert_eq!(json(&o)["items"][0]["outcome"], "applied", "{}", json(&o));
    assert_same(&snapshot(&t, true), &snapshot(&w.new, true), "applied from the inbox");
}

#[test]
fn a_corrupt_frame_mid_bundle_is_refused_and_changes_nothing() {
    let w = world(1802);
    let b = w.build("b.ferry", &[]);
    let good = fs::read(&b).expect("read");
    let fr = frames(&good);
    let bad = w.d.join("bad.ferry");
    // Frames in the middle of the bundle, and the frame of a compressed text file (where a
    // flipped byte breaks decoding, which with one decoding thread runs before the frame's hash
    // is known); first, middle and last byte of each.
    let mid = (fr[fr.len() / 2].start + fr[fr.len() / 2].end) / 2;
    let mut cases = vec![(fr.len() / 2, mid)];
    let text = frame_of(&good, "big-1.txt");
    for at in [fr[text].start, (fr[text].start + fr[text].end) / 2, fr[text].end - 1] {
        cases.push((text, at));
    }
    for one_cpu in [false, true] {
        for &(i, at) in &cases {
            let what = format!("frame {i}, byte {at}, one_cpu {one_cpu}");
            let mut bytes = good.clone();
            bytes[at] ^= 0x20;
            fs::write(&bad, &bytes).expect("write");
            // `verify` (reads the whole bundle before anything else, as apply once did) names
            // the frame and its bytes; apply refuses with the same message and exit code.
            if !one_cpu {
                let v = run_expect(apply_cmd().arg("verify").arg(&bad).arg("--trust").arg(&w.keys.public), 3);
                assert!(stderr(&v).contains(&hash_message(i, &fr[i])), "{what}: verify: {}", stderr(&v));
            }
            let t = w.target("t");
            let before = snapshot(&t, true);
            let o = w.apply_cmd(&bad, &t, one_cpu, &[]).output().expect("spawn");
            assert_eq!(o.status.code(), Some(3), "{what}: {}", stderr(&o));
            assert!(stderr(&o).contains(&hash_message(i, &fr[i])), "{what}: {}", stderr(&o));
            assert_same(&snapshot(&t, true), &before, &what);
            assert_eq!(leftovers(&t), Vec::<String>::new(), "{what}");
            let st: serde_json::Value =
                serde_json::from_slice(&fs::read(t.join(".ferry/state.json")).expect("state")).expect("state JSON");
            assert!(st["last_error"].as_str().is_some_and(|e| e.contains("does not match its hash")), "{st}");
        }
    }

    // `plan` exits as apply would: 3 for the corrupt frame, but 4 on a drifted target, where
    // apply stops before it reads a frame.
    let t = w.target("t");
    let plan = |t: &Path| {
        let mut c = apply_cmd();
        c.arg("plan").arg(&bad).arg("--target").arg(t).arg("--trust").arg(&w.keys.public);
        c
    };
    run_expect(&mut plan(&t), 3);
    let changed = changed_file(&w.old, &w.new);
    fs::write(t.join(&changed), b"edited locally\n").expect("write");
    run_expect(&mut plan(&t), 4);
    run_expect(&mut w.apply_cmd(&bad, &t, false, &[]), 4);

    // And the intact bundle applies, so the refusals were about the flipped bytes.
    let t = w.target("t");
    run_expect(&mut w.apply_cmd(&b, &t, false, &[]), 0);
    assert_same(&snapshot(&t, true), &snapshot(&w.new, true), "intact bundle");
}

/// A regular file of OLD whose content NEW changes (the bundle lists it as an OLD entry).
fn changed_file(old: &Path, new: &Path) -> PathBuf {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(old.join(&rel)).expect("read_dir") {
            let e = e.expect("entry");
            let r = rel.join(e.file_name());
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file()
                && fs::symlink_metadata(new.join(&r)).is_ok_and(|m| m.is_file())
                && fs::read(old.join(&r)).ok() != fs::read(new.join(&r)).ok()
            {
                return r;
            }
        }
    }
    panic!("NEW changes no file of OLD");
}

/// The failpoint hits of one uninterrupted apply of `bundle` onto a copy of OLD: (number, name).
fn failpoints(w: &World, bundle: &Path) -> Vec<(usize, String)> {
    let log = w.d.join("failpoints.log");
    let _ = fs::remove_file(&log);
    let t = w.target("count");
    run_expect(w.apply_cmd(bundle, &t, true, &[]).env("FERRY_FAILPOINT_COUNT", &log), 0);
    fs::read_to_string(&log)
        .expect("failpoint log (a build with the `failpoints` feature)")
        .lines()
        .map(|l| {
            let (n, name) = l.split_once(' ').expect("N NAME");
            (n.parse().expect("N"), name.to_string())
        })
        .collect()
}

/// Apply `bundle` onto a fresh copy of OLD, killed at failpoint hit `k`.
fn crash_at(w: &World, bundle: &Path, k: usize) -> PathBuf {
    let t = w.target("t");
    let o = w.apply_cmd(bundle, &t, true, &[]).env("FERRY_CRASH_AT", k.to_string()).output().expect("spawn");
    assert_eq!(o.status.signal(), Some(9), "crash point {k} did not kill: {}", stderr(&o));
    t
}

/// What `status` says a resume of `t` will do.
fn resume_will(t: &Path) -> String {
    let o = run_expect(apply_cmd().arg("status").arg("--target").arg(t).arg("--json"), 0);
    json(&o)["pending"]["resume_will"].as_str().unwrap_or_default().to_string()
}

fn resume(t: &Path) -> Command {
    let mut c = apply_cmd();
    c.arg("resume").arg("--target").arg(t).arg("--json");
    c
}

#[test]
fn resume_reads_the_bundle_once_and_checks_every_frame() {
    let w = world(1803);
    let b = w.build("b.ferry", &[]);
    let good = fs::read(&b).expect("read");
    let fr = frames(&good);
    let hits = failpoints(&w, &b);
    // One decoding thread: at the last frame's failpoint every staged file is complete, and the
    // frames have not all been verified yet (the end of the archive is read after it).
    let last_frame = hits.iter().filter(|h| h.1 == "stage-frame").map(|h| h.0).max().expect("stage-frame hits");
    let synced = hits.iter().find(|h| h.1 == "stage-synced").map(|h| h.0).expect("stage-synced hit");

    // Crashed after the last frame: resume reads the bundle again, each byte once.
    let t = crash_at(&w, &b, last_frame);
    assert!(resume_will(&t).contains("checking every frame"), "{}", resume_will(&t));
    let o = run_expect(&mut resume(&t), 0);
    assert_eq!(json(&o)["result"], "resumed");
    assert_eq!(json(&o)["staged_reused"].as_u64().map(|n| n > 0), Some(true), "{}", json(&o));
    assert_eq!(bytes_read(&o), size(&b));
    assert_same(&snapshot(&t, true), &snapshot(&w.new, true), "resumed");

    // The same crash, then frame 0 corrupted: no staged file needs it any more (its files were
    // staged by the crashed run), its hash is checked all the same, and the resume is refused
    // with the target as OLD and the staging area removed.
    let t = crash_at(&w, &b, last_frame);
    let mut bytes = good.clone();
    bytes[(fr[0].start + fr[0].end) / 2] ^= 0x01;
    fs::write(&b, &bytes).expect("write");
    let o = resume(&t).output().expect("spawn");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains(&hash_message(0, &fr[0])), "{}", stderr(&o));
    assert_same(&snapshot(&t, true), &snapshot(&w.old, true), "a refused resume");
    assert_eq!(leftovers(&t), Vec::<String>::new());
    fs::write(&b, &good).expect("write");

    // ... and without the bundle a resume there cannot finish (exit 9), every file staged or not.
    let t = crash_at(&w, &b, last_frame);
    let away = w.d.join("away.ferry");
    fs::rename(&b, &away).expect("mv");
    run_expect(&mut resume(&t), 9);
    assert_same(&snapshot(&t, true), &snapshot(&w.old, true), "waiting for the bundle");
    fs::rename(&away, &b).expect("mv");
    let o = run_expect(&mut resume(&t), 0);
    assert_eq!(bytes_read(&o), size(&b));
    assert_same(&snapshot(&t, true), &snapshot(&w.new, true), "resumed with the bundle back");

    // Crashed once staging is synced: every frame was verified and every file staged, so the
    // bundle is not read at all.
    let t = crash_at(&w, &b, synced);
    assert!(resume_will(&t).contains("only if a file is left to stage"), "{}", resume_will(&t));
    fs::rename(&b, &away).expect("mv");
    let o = run_expect(&mut resume(&t), 0);
    assert_eq!(bytes_read(&o), 0);
    assert_same(&snapshot(&t, true), &snapshot(&w.new, true), "resumed without the bundle");
    fs::rename(&away, &b).expect("mv");

    // Re-running apply resumes too: the head it reads to recognise the bundle is where staging
    // goes on reading.
    let t = crash_at(&w, &b, last_frame);
    let o = run_expect(&mut w.apply_cmd(&b, &t, false, &["--json"]), 0);
    assert_eq!(json(&o)["result"], "resumed");
    assert_eq!(bytes_read(&o), size(&b));
    assert_same(&snapshot(&t, true), &snapshot(&w.new, true), "resumed by apply");
}

#[test]
fn a_frame_over_8_mib_is_hash_checked_before_it_is_decoded() {
    // A frame larger than the 8 MiB staging holds in memory is spooled to an unlinked scratch
    // file in a work directory as it is read and hashed, and decoded from there.
    let w = world(1804);
    fs::write(w.new.join("large.bin"), noise(9 << 20, 1804)).expect("write");
    let b = w.build("b.ferry", &[]);
    let good = fs::read(&b).expect("read");
    let fr = frames(&good);
    let i = frame_of(&good, "large.bin");
    assert!(fr[i].len() > 8 << 20, "frame {i} is {} bytes", fr[i].len());
    let t = w.target("t");
    let o = run_expect(&mut w.apply_cmd(&b, &t, false, &["--json"]), 0);
    assert_eq!(bytes_read(&o), size(&b));
    assert_same(&snapshot(&t, true), &snapshot(&w.new, true), "applied");

    let bad = w.d.join("bad.ferry");
    let mut bytes = good.clone();
    bytes[(fr[i].start + fr[i].end) / 2] ^= 0x01;
    fs::write(&bad, &bytes).expect("write");
    let t = w.target("t");
    let before = snapshot(&t, true);
    let o = w.apply_cmd(&bad, &t, false, &[]).output().expect("spawn");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains(&hash_message(i, &fr[i])), "{}", stderr(&o));
    assert_same(&snapshot(&t, true), &before, "a corrupt spooled frame");
    assert_eq!(leftovers(&t), Vec::<String>::new());
}

/// `verify` reads a frame whole and checks its hash before it decodes it: a frame over 8 MiB
/// goes through an unnamed scratch file first, verifies and decodes from there, and a byte
/// flipped in its middle is reported as a hash mismatch (exit 3).
#[test]
fn verify_checks_a_large_frame_before_decoding_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let keys = keys(d);
    let new = d.join("new");
    fs::create_dir_all(&new).expect("mkdir");
    // Incompressible and over the largest solid file: one plain zstd frame of about 17 MiB.
    fs::write(new.join("big.bin"), noise(17 << 20, 3)).expect("write");
    fs::write(new.join("small.txt"), b"small\n").expect("write");
    let out = d.join("full.ferry");
    build(None, &new, &keys.secret, 1, &out, &["--chunk-size", "32M"]);
    run_expect(apply_cmd().arg("verify").arg(&out).arg("--trust").arg(&keys.public), 0);
    let mut bytes = fs::read(&out).expect("read");
    let big = frames(&bytes).into_iter().max_by_key(|r| r.len()).expect("frames");
    assert!(big.len() > 8 << 20, "the largest frame is {} bytes: not over the in-memory bound", big.len());
    bytes[big.start + big.len() / 2] ^= 0x40;
    let bad = d.join("bad.ferry");
    fs::write(&bad, &bytes).expect("write");
    let o = run_expect(apply_cmd().arg("verify").arg(&bad).arg("--trust").arg(&keys.public), 3);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not match its hash"), "{err}");
}
