//! LZMA2 frames (bundle-format.md §5.2) end to end: the builder picks them, with the filter of
//! the build machine's ELF binaries, for real executables and libraries, and the applier decodes
//! them exactly (apply, verify, inspect); builds stay deterministic.

use bundle::container::Reader;
use bundle::lzma::Bcj;
use bundle::{Content, Kind, Limits, Manifest, Method, Piece};
use ferry_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The manifest of a bundle (signatures not checked: the applier does that below).
fn manifest(bundle: &Path) -> Manifest {
    let f = fs::File::open(bundle).expect("open bundle");
    let mut r = Reader::new(std::io::BufReader::new(f), Limits::default());
    let (mb, _) = r.head().expect("head");
    Manifest::decode(&mb, &Limits::default()).expect("manifest")
}

/// The filter the builder must pick for this machine's own binaries.
fn native_filter() -> Bcj {
    match std::env::consts::ARCH {
        "x86_64" | "x86" => Bcj::X86,
        "aarch64" => Bcj::Arm64,
        "riscv64" => Bcj::RiscV,
        a => panic!("no expectation for {a}: add its filter here"),
    }
}

/// Real ELF files of this machine: programs (one over 1 MiB, so it gets a frame of its own) and
/// small ones (which share solid frames), copied into `root/bin` and `root/lib`. Returns the big
/// program's path in the tree.
fn elf_tree(root: &Path) -> String {
    let lib = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("libc.so.6").exists());
    let mut small = 0;
    let mut big = None;
    fs::create_dir_all(root.join("bin")).expect("mkdir");
    fs::create_dir_all(root.join("lib")).expect("mkdir");
    let programs =
        ["bash", "ls", "cp", "mv", "cat", "tar", "gzip", "grep", "sed", "find", "sort", "date", "stat", "du"];
    for name in programs {
        let src = Path::new("/usr/bin").join(name);
        let Ok(bytes) = fs::read(&src) else { continue };
        if !bytes.starts_with(b"\x7fELF") {
            continue;
        }
        let to = root.join("bin").join(name);
        fs::write(&to, &bytes).expect("copy");
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).expect("chmod");
        if bytes.len() > 1 << 20 && big.is_none() {
            big = Some(format!("bin/{name}"));
        } else if bytes.len() >= 16 << 10 {
            small += 1;
        }
    }
    if let Some(l) = lib {
        for name in ["libc.so.6", "libz.so.1", "libacl.so.1"] {
            if let Ok(bytes) = fs::read(l.join(name)) {
                fs::write(root.join("lib").join(name), bytes).expect("copy");
            }
        }
    }
    assert!(small >= 4, "too few small ELF programs in /usr/bin");
    big.expect("no ELF program over 1 MiB in /usr/bin (bash is one on every Debian)")
}

#[test]
fn real_binaries_get_lzma_frames_and_apply_exactly() {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keygen(d.path(), "key");
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    fs::create_dir_all(old.join("etc")).expect("mkdir");
    fs::write(old.join("etc/motd"), b"old tree\n").expect("write");
    copy_tree(&old, &new);
    let big = elf_tree(&new);
    let want = snapshot(&new, true);
    let out = d.path().join("elf.ferry");
    // Solid frames capped at 1 MiB keep the big program (over 1 MiB) out of them.
    let rep = build_json(Some(&old), &new, &secret, &out, &["--solid-size", "1M"]);
    // The big program in a frame of its own, the small ones in a solid frame: both LZMA2 behind
    // this machine's filter.
    assert!(rep["stats"]["lzma"]["files"].as_u64() >= Some(1), "{rep}");
    assert!(rep["stats"]["solid_lzma"]["frames"].as_u64() >= Some(1), "{rep}");
    let m = manifest(&out);
    let piece_of = |p: &str| {
        let e = m.entries.iter().find(|e| e.path.display() == p).expect("entry");
        match &e.kind {
            Kind::File { content: Content::Pieces(ps), .. } => ps[0].clone(),
            k => panic!("{p}: {k:?}"),
        }
    };
    let want_filter = native_filter();
    assert!(
        matches!(piece_of(&big).method, Method::Lzma { filter, dict_log: 21.. } if filter == want_filter),
        "{big}: {:?}",
        piece_of(&big).method
    );
    // A small program in solid frames is cut at its code: its code behind the filter, its
    // tables (the first piece: the ELF header is not code) in a frame without one.
    let ls: Vec<Piece> = match &m.entries.iter().find(|e| e.path.display() == "bin/ls").expect("ls").kind {
        Kind::File { content: Content::Pieces(ps), .. } => ps.clone(),
        k => panic!("bin/ls: {k:?}"),
    };
    assert!(ls.len() >= 2, "{ls:?}");
    assert!(ls.iter().any(|p| matches!(p.method, Method::Lzma { filter, .. } if filter == want_filter)), "{ls:?}");
    if want_filter != Bcj::None {
        assert!(matches!(ls[0].method, Method::Lzma { filter: Bcj::None, .. }), "{ls:?}");
    }
    // inspect counts the pieces, verify decodes every LZMA2 frame, apply gives NEW exactly.
    let o = run_expect(apply_cmd().arg("inspect").arg(&out).arg("--json"), 0);
    let ins: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect JSON");
    assert!(ins["counts"]["lzma_pieces"].as_u64() >= Some(5), "{ins}");
    run_expect(apply_cmd().arg("verify").arg(&out).arg("--trust").arg(&public), 0);
    let target = d.path().join("target");
    copy_tree(&old, &target);
    apply(&out, &target, &public, 0, &[]);
    assert_same(&snapshot(&target, true), &want, "LZMA2 bundle applied to OLD");
    let run = std::process::Command::new(target.join(&big)).arg("--version").output().expect("run");
    assert!(run.status.success(), "the applied {big} does not run");
    // Same trees, same options: the same bytes.
    let again = d.path().join("again.ferry");
    build_json(Some(&old), &new, &secret, &again, &["--solid-size", "1M"]);
    assert_eq!(fs::read(&out).expect("read"), fs::read(&again).expect("read"), "build not deterministic");
}

/// Text compresses better with LZMA2 too, without a filter; random bytes never get it.
#[test]
fn text_gets_lzma_without_a_filter_and_noise_never() {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keygen(d.path(), "key");
    let new = d.path().join("new");
    fs::create_dir_all(&new).expect("mkdir");
    let mut text = String::new();
    for i in 0..40_000 {
        text += &format!("line {i}: key_{} = value {} # {}\n", i % 97, i * 7 % 1013, ["a", "bb", "ccc"][i % 3]);
    }
    fs::write(new.join("big.txt"), &text).expect("write");
    fs::write(new.join("noise.bin"), noise(2 << 20, 5)).expect("write");
    let out = d.path().join("t.ferry");
    // Both files are over 1 MiB: each in a frame of its own, not one solid frame.
    let rep = build_json(None, &new, &secret, &out, &["--solid-size", "1M"]);
    let m = manifest(&out);
    for e in &m.entries {
        if let Kind::File { content: Content::Pieces(ps), .. } = &e.kind {
            match e.path.display().as_str() {
                "big.txt" => assert_eq!(ps[0].method, Method::Lzma { filter: Bcj::None, dict_log: 21 }, "{rep}"),
                "noise.bin" => assert_eq!(ps[0].method, Method::Zstd, "{rep}"),
                p => panic!("unexpected {p}"),
            }
        }
    }
    let target = d.path().join("target");
    fs::create_dir_all(&target).expect("mkdir");
    apply(&out, &target, &public, 0, &[]);
    assert_eq!(fs::read(target.join("big.txt")).expect("read"), text.as_bytes());
}
