//! Re-created gzip files (bundle-format.md §5.3) end to end: the builder ships the data of gzip
//! files made by GNU gzip and zlib (any level, with or without a stored name), leaves the others
//! (two members, appended bytes) as they are, and the applier gives every file back bit for bit.

use bundle::container::Reader;
use bundle::deflate::Flavor;
use bundle::{Kind, Limits, Manifest};
use ferry_tests::*;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn manifest(bundle: &Path) -> Manifest {
    let f = fs::File::open(bundle).expect("open bundle");
    let mut r = Reader::new(std::io::BufReader::new(f), Limits::default());
    let (mb, _) = r.head().expect("head");
    Manifest::decode(&mb, &Limits::default()).expect("manifest")
}

/// Run `cmd` with `input` on stdin; its stdout.
fn pipe(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut c = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn");
    c.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    let o = c.wait_with_output().expect("wait");
    assert!(o.status.success(), "{cmd:?} failed");
    o.stdout
}

/// A man-page-like text of about `n` bytes.
fn text(n: usize, seed: u64) -> Vec<u8> {
    let words = ["option", "file", "the", "directory", "print", "-v", "verbose", "see", "manual", "BUGS"];
    let mut v = Vec::new();
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    while v.len() < n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let w = words[(x >> 33) as usize % words.len()];
        v.extend_from_slice(w.as_bytes());
        v.push(if (x >> 20).is_multiple_of(11) { b'\n' } else { b' ' });
        if (x >> 40).is_multiple_of(53) {
            v.extend_from_slice(format!(".TP\n\\fB--flag-{}\\fR\n", x % 97).as_bytes());
        }
    }
    v.truncate(n);
    v
}

/// A gzip file of `data` made by zlib (Python's `zlib`, raw deflate) at `level`, with a minimal
/// header.
fn zlib_gz(data: &[u8], level: u8) -> Vec<u8> {
    let script = format!(
        "import sys,zlib\nd=sys.stdin.buffer.read()\nc=zlib.compressobj({level},zlib.DEFLATED,-15,8,0)\nsys.stdout.buffer.write(c.compress(d)+c.flush())"
    );
    let stream = pipe(Command::new("python3").arg("-c").arg(script), data);
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    gz.extend_from_slice(&stream);
    gz.extend_from_slice(&bundle::deflate::crc32(0, data).to_le_bytes());
    gz.extend_from_slice(&(data.len() as u32).to_le_bytes());
    gz
}

#[test]
fn gzip_files_ship_as_their_data_and_come_back_exactly() {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keygen(d.path(), "key");
    let new = d.path().join("new");
    let doc = new.join("usr/share/man/man1");
    fs::create_dir_all(&doc).expect("mkdir");
    let gzip = |args: &[&str], data: &[u8]| pipe(Command::new("gzip").args(args), data);
    // name -> (bytes, expected re-creation)
    let named = {
        // `gzip -c FILE` stores the name and mtime in the header.
        let src = d.path().join("page.1");
        fs::write(&src, text(40_000, 3)).expect("write");
        let o = Command::new("gzip").args(["-c", "-6"]).arg(&src).output().expect("gzip");
        o.stdout
    };
    let two = [gzip(&["-9n"], &text(5_000, 4)), gzip(&["-9n"], &text(5_000, 5))].concat();
    let mut appended = gzip(&["-9n"], &text(8_000, 6));
    appended.extend_from_slice(&[0; 16]);
    // (name, bytes, the encoder that re-creates it, if any)
    type Case = (&'static str, Vec<u8>, Option<(Flavor, u8)>);
    let files: Vec<Case> = vec![
        ("big.1.gz", gzip(&["-9n"], &text(300_000, 1)), Some((Flavor::Gzip, 9))),
        ("fast.1.gz", gzip(&["-1n"], &text(90_000, 2)), Some((Flavor::Gzip, 1))),
        ("named.1.gz", named, Some((Flavor::Gzip, 6))),
        ("zlib.1.gz", zlib_gz(&text(400_000, 7), 9), Some((Flavor::Zlib, 9))),
        ("two.1.gz", two, None),
        ("appended.1.gz", appended, None),
    ];
    for (name, bytes, _) in &files {
        fs::write(doc.join(name), bytes).expect("write");
    }
    fs::write(doc.join("plain.1"), text(20_000, 8)).expect("write");
    let want = snapshot(&new, true);
    let out = d.path().join("b.ferry");
    let rep = build_json(None, &new, &secret, &out, &[]);
    assert_eq!(rep["stats"]["regzip"]["files"].as_u64(), Some(4), "{rep}");
    let m = manifest(&out);
    for (name, bytes, how) in &files {
        let e = m.entries.iter().find(|e| e.path.display().ends_with(name)).expect("entry");
        let Kind::File { gzip, size, .. } = &e.kind else { panic!("{name}: {:?}", e.kind) };
        assert_eq!(*size, bytes.len() as u64);
        assert_eq!(gzip.as_ref().map(|g| (g.flavor, g.level)), *how, "{name}");
    }
    let named_header = m.entries.iter().find_map(|e| match &e.kind {
        Kind::File { gzip: Some(g), .. } if e.path.display().ends_with("named.1.gz") => Some(g.header.len()),
        _ => None,
    });
    assert_eq!(named_header, Some(10 + "page.1".len() + 1), "the stored name is part of the header");

    let o = run_expect(apply_cmd().arg("verify").arg(&out).arg("--trust").arg(&public), 0);
    assert!(o.status.success());
    let target = d.path().join("target");
    fs::create_dir_all(&target).expect("mkdir");
    apply(&out, &target, &public, 0, &[]);
    assert_same(&snapshot(&target, true), &want, "gzip files re-created");

    // Deterministic, and smaller than shipping the gzip files as they are.
    let again = d.path().join("again.ferry");
    build_json(None, &new, &secret, &again, &[]);
    assert_eq!(fs::read(&out).expect("read"), fs::read(&again).expect("read"), "build not deterministic");
    let plain = d.path().join("plain.ferry");
    let rep = build_json(None, &new, &secret, &plain, &["--no-regzip"]);
    assert!(rep["stats"]["regzip"].is_null(), "{rep}");
    assert!(manifest(&plain).entries.iter().all(|e| !matches!(&e.kind, Kind::File { gzip: Some(_), .. })));
    let (with, without) = (fs::metadata(&out).expect("stat").len(), fs::metadata(&plain).expect("stat").len());
    assert!(with < without, "re-created gzip: {with} bytes, shipped as is: {without}");
    let target2 = d.path().join("target2");
    fs::create_dir_all(&target2).expect("mkdir");
    apply(&plain, &target2, &public, 0, &[]);
    assert_same(&snapshot(&target2, true), &want, "gzip files shipped as they are");
}
