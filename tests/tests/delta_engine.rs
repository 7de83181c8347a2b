//! The builder's payload engine end to end, through the real binaries: solid frames of small
//! files (grouping, dedup, group boundaries, sizes against one frame per file), bsdiff for ELF
//! files, delta bases found by similarity for renamed and moved files (and their base check).

use bundle::container::Reader;
use bundle::{Content, Kind, Limits, Manifest, Method};
use ferry_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn keys(dir: &Path) -> (PathBuf, PathBuf) {
    keygen(dir, "key")
}

/// The manifest of a bundle (signatures not checked: the applier does that in these tests).
fn manifest(bundle: &Path) -> Manifest {
    let f = fs::File::open(bundle).expect("open bundle");
    let mut r = Reader::new(std::io::BufReader::new(f), Limits::default());
    let (mb, _) = r.head().expect("head");
    Manifest::decode(&mb, &Limits::default()).expect("manifest")
}

const WORDS: &[&str] = &[
    "static", "int", "return", "const", "char", "buffer", "length", "error", "if", "else", "for", "while", "struct",
    "config", "value", "default", "enable", "path", "size_t", "unsigned", "void", "NULL", "include", "define",
    "option", "server",
];

/// Text in the style of source and config files: lines of words from a small vocabulary, each file
/// with its own header, so files compress well and better together than alone.
fn text_file(rng: &mut StdRng, name: &str, ext: &str) -> Vec<u8> {
    let mut s = match ext {
        "c" | "h" => format!("/* {name}: part of the example project.\n * Copyright the authors. */\n#include <stdio.h>\n#include \"common.h\"\n\n"),
        "py" => format!("#!/usr/bin/env python3\n\"\"\"{name}: part of the example project.\"\"\"\nimport os\nimport sys\n\n"),
        "conf" => format!("# {name}: configuration of the example service\n[main]\n"),
        _ => format!("{name}\n\n"),
    };
    let lines = rng.gen_range(5..120);
    for i in 0..lines {
        let n = rng.gen_range(2..10);
        let line: Vec<&str> = (0..n).map(|_| WORDS[rng.gen_range(0..WORDS.len())]).collect();
        match ext {
            "c" | "h" => s += &format!("    {}({i});\n", line.join(" ")),
            "py" => s += &format!("    {} = {i}\n", line.join("_")),
            "conf" => s += &format!("{} = {}\n", line[0], line[1..].join(" ")),
            _ => s += &format!("{}.\n", line.join(" ")),
        }
    }
    s.into_bytes()
}

/// A tree of `n` small text files in a few directories, with deterministic mtimes. Returns the
/// files' paths.
fn small_files_tree(root: &Path, n: usize, seed: u64) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let exts = ["c", "h", "py", "conf", "txt"];
    for i in 0..n {
        let ext = exts[rng.gen_range(0..exts.len())];
        let dir = root.join(format!("d{}", i % 7)).join(["src", "etc", "doc"][i % 3]);
        fs::create_dir_all(&dir).expect("mkdir");
        let name = format!("file{i:04}.{ext}");
        let p = dir.join(&name);
        fs::write(&p, text_file(&mut rng, &name, ext)).expect("write");
        if i % 11 == 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        files.push(p);
    }
    stamp_all(root, 1_650_000_000);
    files
}

/// Deterministic mtimes on every entry (deepest first, so directory mtimes stick).
fn stamp_all(root: &Path, base: i64) {
    let mut all = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        let mut v: Vec<PathBuf> = fs::read_dir(d).expect("read_dir").map(|e| e.expect("entry").path()).collect();
        v.sort();
        for p in v {
            if fs::symlink_metadata(&p).expect("lstat").is_dir() {
                walk(&p, out);
            }
            out.push(p);
        }
    }
    walk(root, &mut all);
    for (i, p) in all.iter().enumerate() {
        // No symlinks in these trees: set the time through a file descriptor (no process each).
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs((base + i as i64) as u64);
        fs::File::open(p).and_then(|f| f.set_modified(t)).expect("set mtime");
    }
}

/// Piece lists of every file entry with pieces, by path.
fn pieces(m: &Manifest) -> BTreeMap<String, Vec<bundle::Piece>> {
    m.entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::File { content: Content::Pieces(ps), .. } => Some((e.path.display(), ps.clone())),
            _ => None,
        })
        .collect()
}

/// A solid-frame statistic of a build report, zstd and LZMA2 frames together.
fn solid_stat(rep: &serde_json::Value, key: &str) -> u64 {
    ["solid", "solid_lzma"].iter().map(|s| rep["stats"][s][key].as_u64().unwrap_or(0)).sum()
}

#[test]
fn solid_frames_roundtrip_with_dedup_and_group_boundaries() {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keys(d.path());
    let new = d.path().join("new");
    let files = small_files_tree(&new, 120, 1);
    let rel = |p: &Path| p.strip_prefix(&new).expect("in tree").to_path_buf();
    let (f0, f2, f4) = (rel(&files[0]), rel(&files[2]), rel(&files[4]));
    // Identical content under two names (one payload, shared piece) and a file just over 1 MiB
    // (its own frame, never solid).
    let dup = fs::read(new.join(&f0)).expect("read");
    fs::write(new.join("d1/dup-of-0000.c"), &dup).expect("write");
    let big: Vec<u8> = (0..(1u32 << 20) + 100).map(|i| (i % 253) as u8 ^ (i / 4096) as u8).collect();
    fs::write(new.join("big.bin"), &big).expect("write");
    stamp_all(&new, 1_650_000_000);
    let want = snapshot(&new, true);

    // Full bundle with small groups: many group boundaries.
    let full = d.path().join("full.ferry");
    let rep = build_json(None, &new, &secret, &full, &["--level", "3", "--solid-size", "16K"]);
    let solid = &rep["stats"]["solid"];
    let frames = solid["frames"].as_u64().expect("solid frames");
    assert!(frames > 5, "{rep}");
    assert_eq!(
        solid["files"].as_u64(),
        Some(120),
        "120 distinct contents (the duplicate shares a piece; big.bin is not solid): {rep}"
    );
    assert_eq!(rep["stats"]["dedup"]["files"].as_u64(), Some(1), "{rep}");
    assert_eq!(rep["stats"]["zstd"]["files"].as_u64(), Some(1), "big.bin alone: {rep}");
    let m = manifest(&full);
    let ps = pieces(&m);
    assert_eq!(ps[&f0.display().to_string()], ps["d1/dup-of-0000.c"]);
    // Frames hold several files each and are at most 16 KiB decoded (unless one file is larger).
    let mut per_frame: BTreeMap<u32, Vec<&bundle::Piece>> = BTreeMap::new();
    for p in ps.values().flatten() {
        per_frame.entry(p.frame).or_default().push(p);
    }
    assert!(per_frame.values().any(|v| v.len() > 3));
    for (f, v) in &per_frame {
        if v.len() > 1 {
            assert!(m.frames[*f as usize].decoded <= 16 << 10, "frame {f}");
        }
        assert!(v.iter().all(|p| p.method == Method::Zstd));
    }
    // Frames appear in the order of the first Place step that uses them.
    let first_use: Vec<u32> =
        m.script.iter().filter_map(|s| ps.get(&s.path.display())).flat_map(|v| v.iter().map(|p| p.frame)).fold(
            Vec::new(),
            |mut acc, f| {
                if !acc.contains(&f) {
                    acc.push(f);
                }
                acc
            },
        );
    assert_eq!(first_use, (0..m.frames.len() as u32).collect::<Vec<_>>());

    let empty = d.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    apply(&full, &empty, &public, 0, &[]);
    assert_same(&snapshot(&empty, true), &want, "full solid bundle applied to an empty directory");

    // Delta: edits, additions (solid), a patched file and a rename.
    let next = d.path().join("next");
    copy_tree(&new, &next);
    let mut rng = StdRng::seed_from_u64(2);
    for i in 0..40 {
        let name = format!("added{i:03}.c");
        fs::write(next.join("d3/src").join(&name), text_file(&mut rng, &name, "c")).expect("write");
    }
    let mut edited = fs::read(next.join(&f2)).expect("read");
    edited.extend_from_slice(b"    appended = 1\n");
    fs::write(next.join(&f2), edited).expect("write");
    fs::rename(next.join(&f4), next.join("d4/moved.conf")).expect("rename");
    fs::write(next.join("d1/dup2-of-0000.c"), &dup).expect("write");
    stamp_all(&next, 1_660_000_000);
    let want = snapshot(&next, true);
    let delta = d.path().join("delta.ferry");
    let rep = build_json(Some(&new), &next, &secret, &delta, &["--solid-size", "32K"]);
    assert!(solid_stat(&rep, "files") >= 40, "{rep}");
    let target = d.path().join("target");
    copy_tree(&new, &target);
    apply(&delta, &target, &public, 0, &[]);
    assert_same(&snapshot(&target, true), &want, "delta with solid frames applied to a copy of OLD");

    // Deterministic output.
    let again = d.path().join("again.ferry");
    build_json(Some(&new), &next, &secret, &again, &["--solid-size", "32K"]);
    assert_eq!(fs::read(&delta).expect("read"), fs::read(&again).expect("read"));
}

#[test]
fn solid_frames_are_smaller_than_one_frame_per_file() {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keys(d.path());
    let new = d.path().join("new");
    small_files_tree(&new, 600, 7);
    let want = snapshot(&new, true);
    let mut sizes = BTreeMap::new();
    for (name, solid) in [("per-file", "0"), ("solid", "8M")] {
        let out = d.path().join(format!("{name}.ferry"));
        let rep = build_json(None, &new, &secret, &out, &["--solid-size", solid]);
        let bytes = rep["bytes"].as_u64().expect("bytes");
        sizes.insert(name, bytes);
        if solid == "0" {
            assert!(rep["stats"].get("solid").is_none(), "{rep}");
            assert_eq!(rep["stats"]["zstd"]["files"].as_u64(), Some(600), "{rep}");
        } else {
            assert_eq!(solid_stat(&rep, "files"), 600, "{rep}");
            assert_eq!(solid_stat(&rep, "frames"), 1, "{rep}");
        }
        let target = d.path().join(format!("target-{name}"));
        fs::create_dir(&target).expect("mkdir");
        apply(&out, &target, &public, 0, &[]);
        assert_same(&snapshot(&target, true), &want, name);
    }
    let ratio = sizes["solid"] as f64 / sizes["per-file"] as f64;
    eprintln!(
        "600 small text files: per-file {} bytes, solid {} bytes, ratio {ratio:.3}",
        sizes["per-file"], sizes["solid"]
    );
    assert!(ratio < 0.6, "solid {sizes:?}");
}

/// Large new files built from the same sources (here: 2 MiB of incompressible data, three
/// copies each with a different small edit) share one solid frame by default, so the second and
/// third cost almost nothing; with `--solid-size 0` each costs its full size.
#[test]
fn large_similar_new_files_share_a_solid_frame() {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keys(d.path());
    let new = d.path().join("new");
    fs::create_dir_all(new.join("bin")).expect("mkdir");
    let mut rng = StdRng::seed_from_u64(18);
    let body: Vec<u8> = (0..2 << 20).map(|_| rng.gen()).collect();
    for (i, name) in ["tool-a", "tool-b", "tool-c"].iter().enumerate() {
        let mut b = body.clone();
        b[1000 + i * 4096..1100 + i * 4096].fill(i as u8);
        fs::write(new.join("bin").join(name), &b).expect("write");
    }
    let want = snapshot(&new, true);
    let mut sizes = BTreeMap::new();
    for solid in ["0", "default"] {
        let out = d.path().join(format!("solid-{solid}.ferry"));
        // Level 3 keeps the test fast; the solid frame's window still spans the whole group.
        let args: &[&str] = if solid == "0" { &["--level", "3", "--solid-size", "0"] } else { &["--level", "3"] };
        let rep = build_json(None, &new, &secret, &out, args);
        sizes.insert(solid, rep["bytes"].as_u64().expect("bytes"));
        if solid != "0" {
            assert_eq!(rep["stats"]["solid"]["files"].as_u64(), Some(3), "{rep}");
            assert_eq!(rep["stats"]["solid"]["frames"].as_u64(), Some(1), "{rep}");
        }
        let target = d.path().join(format!("target-{solid}"));
        fs::create_dir(&target).expect("mkdir");
        apply(&out, &target, &public, 0, &[]);
        assert_same(&snapshot(&target, true), &want, solid);
    }
    assert!(sizes["0"] > 6 << 20, "{sizes:?}");
    assert!(sizes["default"] < (2 << 20) + (256 << 10), "{sizes:?}");
}

/// `tar` of a directory's contents (`-C dir .`), numeric owners, in `format`; through `zstd` if
/// `zst`.
fn make_tar(dir: &Path, out: &Path, format: &str, zst: bool) {
    let mut c = std::process::Command::new("sh");
    c.arg("-c").arg(if zst {
        r#"tar --numeric-owner --format="$1" -C "$2" -cf - . | zstd -q -f -o "$3""#
    } else {
        r#"tar --numeric-owner --format="$1" -C "$2" -cf "$3" ."#
    });
    c.arg("sh").arg(format).arg(dir).arg(out);
    let st = c.status().expect("tar");
    assert!(st.success(), "tar of {}", dir.display());
}

/// Set every entry's mtime to whole seconds (deepest first; symlinks too), for archive formats
/// that store seconds only.
fn whole_second_mtimes(root: &Path) {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"find "$1" -depth -exec touch -h -d @1690000000 {} +"#)
        .arg("sh")
        .arg(root)
        .status()
        .expect("find");
    assert!(st.success());
}

#[test]
fn tar_and_tar_zst_inputs_give_the_same_bundle_as_directories() {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keys(d.path());
    let mut kinds = std::collections::BTreeSet::new();
    for seed in [3u64, 8, 21] {
        let case = d.path().join(format!("seed{seed}"));
        let (old, new) = (case.join("old"), case.join("new"));
        gen_tree(&old, seed);
        mutate(&old, &new, seed);
        mutate_more(&new, seed);
        // Small files for solid frames and an edited larger one for a patch.
        let text: Vec<u8> = b"tarball input line\n".iter().cycle().take(40_000).copied().collect();
        fs::write(old.join("edited"), &text).expect("write");
        let mut edited = text.clone();
        edited[20_000..20_004].copy_from_slice(b"EDIT");
        fs::write(new.join("edited"), &edited).expect("write");

        for (round, format, zst) in [(0, "posix", false), (1, "gnu", true)] {
            if round == 1 {
                // GNU format stores whole seconds: make the trees representable.
                whole_second_mtimes(&old);
                whole_second_mtimes(&new);
            }
            let want = snapshot(&new, true);
            let ext = if zst { "tar.zst" } else { "tar" };
            let (old_tar, new_tar) = (case.join(format!("old{round}.{ext}")), case.join(format!("new{round}.{ext}")));
            make_tar(&old, &old_tar, format, zst);
            make_tar(&new, &new_tar, format, zst);
            let from_dirs = case.join(format!("dirs{round}.ferry"));
            let from_tars = case.join(format!("tars{round}.ferry"));
            build(Some(&old), &new, &secret, 2, &from_dirs, &["--level", "3"]);
            build(Some(&old_tar), &new_tar, &secret, 2, &from_tars, &["--level", "3"]);
            let what = format!("seed {seed}, {format} {ext}");
            // Same entries, metadata, content choices and frames: the same bytes.
            let m = manifest(&from_tars);
            kinds.extend(m.entries.iter().map(|e| e.kind.name()));
            assert_eq!(m, manifest(&from_dirs), "{what}: manifests differ");
            assert_eq!(fs::read(&from_tars).expect("read"), fs::read(&from_dirs).expect("read"), "{what}");
            let target = case.join(format!("target{round}"));
            copy_tree(&old, &target);
            apply(&from_tars, &target, &public, 0, &[]);
            assert_same(&snapshot(&target, true), &want, &format!("{what}: bundle from archives applied to OLD"));
            // A full bundle from the archive alone.
            let full = case.join(format!("full{round}.ferry"));
            build(None, &new_tar, &secret, 2, &full, &["--level", "3"]);
            let empty = case.join(format!("empty{round}"));
            fs::create_dir(&empty).expect("mkdir");
            apply(&full, &empty, &public, 0, &[]);
            assert_same(&snapshot(&empty, true), &want, &format!("{what}: full bundle from an archive"));
        }
        // No content store is left next to the output.
        let left: Vec<_> = fs::read_dir(&case)
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".ferry-build"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    eprintln!("entry kinds seen: {kinds:?}");
    for k in ["file", "dir", "symlink", "hardlink", "fifo"] {
        assert!(kinds.contains(k), "no {k} in the test trees: {kinds:?}");
    }
}

#[test]
fn archive_members_outside_the_tree_are_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, _) = keys(d.path());
    let inner = d.path().join("in");
    fs::create_dir_all(&inner).expect("mkdir");
    fs::write(d.path().join("outside"), b"x").expect("write");
    let bad = d.path().join("bad.tar");
    // -P keeps the '../' in the member name.
    let st = std::process::Command::new("tar")
        .arg("-P")
        .arg("-C")
        .arg(&inner)
        .arg("-cf")
        .arg(&bad)
        .arg("../outside")
        .status()
        .expect("tar");
    assert!(st.success());
    let o = run_expect(
        build_cmd()
            .arg("build")
            .arg("--new")
            .arg(&bad)
            .arg("--key")
            .arg(&secret)
            .arg("--version")
            .arg("1")
            .arg("--out")
            .arg(d.path().join("x.ferry")),
        1,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("../outside") && err.contains(".."), "{err}");
    // Not a directory or an archive: a usage error.
    let junk = d.path().join("junk.bin");
    fs::write(&junk, b"not a tarball").expect("write");
    let o = run_expect(
        build_cmd()
            .arg("build")
            .arg("--new")
            .arg(&junk)
            .arg("--key")
            .arg(&secret)
            .arg("--version")
            .arg("1")
            .arg("--out")
            .arg(d.path().join("y.ferry")),
        2,
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a directory, a .tar or a .tar.zst"));
}

/// C source of a program with many small functions; version 2 adds a function at the top (so
/// every later address shifts) and a line of output.
fn c_program(version: u32) -> String {
    let mut s = String::from("#include <stdio.h>\n#include <string.h>\n");
    if version == 2 {
        s += "static int extra(int x) { return x * 7 + 3; }\n";
    }
    for i in 0..200 {
        s += &format!("int f{i}(int x) {{ char b[64]; snprintf(b, sizeof b, \"f{i} %d\", x); return (int)strlen(b) + x * {}; }}\n", i % 13);
    }
    s += "int main(int argc, char **argv) { int t = 0; (void)argv;\n";
    for i in 0..200 {
        s += &format!("  t += f{i}(argc + {i});\n");
    }
    if version == 2 {
        s += "  t += extra(t);\n  puts(\"version 2\");\n";
    }
    s += "  printf(\"%d\\n\", t); return 0; }\n";
    s
}

fn c_library(version: u32) -> String {
    let mut s = String::new();
    for i in 0..150 {
        let k = if version == 2 && i == 3 { 99 } else { i % 7 };
        s += &format!("int lib_f{i}(int x) {{ return x * {k} + {i}; }}\n");
    }
    if version == 2 {
        s += "int lib_new(int x) { return lib_f1(x) + lib_f2(x); }\n";
    }
    s
}

fn gcc(src: &str, out: &Path, extra: &[&str]) {
    let c = out.with_extension("c");
    fs::write(&c, src).expect("write source");
    let o = std::process::Command::new("gcc").args(["-O2", "-o"]).arg(out).arg(&c).args(extra).output().expect("gcc");
    assert!(o.status.success(), "gcc: {}", String::from_utf8_lossy(&o.stderr));
    fs::remove_file(&c).expect("rm source");
}

#[test]
fn elf_files_get_bsdiff_patches_when_smaller() {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    for (root, v) in [(&old, 1), (&new, 2)] {
        fs::create_dir_all(root.join("bin")).expect("mkdir");
        fs::create_dir_all(root.join("lib")).expect("mkdir");
        gcc(&c_program(v), &root.join("bin/prog"), &[]);
        gcc(&c_library(v), &root.join("lib/libdemo.so"), &["-shared", "-fPIC"]);
        stamp_all(root, 1_650_000_000 + u64::from(v) as i64 * 1000);
    }
    let want = snapshot(&new, true);
    let out = d.path().join("elf.ferry");
    let rep = build_json(Some(&old), &new, &secret, &out, &[]);
    let m = manifest(&out);
    let ps = pieces(&m);
    // What a zstd patch (the other candidate) would cost, for comparison.
    let zstd_patch = |p: &str| {
        let (o, n) = (fs::read(old.join(p)).expect("read"), fs::read(new.join(p)).expect("read"));
        let mut e = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 19, &o).expect("encoder");
        std::io::Write::write_all(&mut e, &n).expect("compress");
        e.finish().expect("finish").len()
    };
    let mut bsdiff_files = 0;
    for p in ["bin/prog", "lib/libdemo.so"] {
        let piece = &ps[p][0];
        let frame = m.frames[piece.frame as usize].size;
        eprintln!("{p}: {:?} frame {frame} bytes; zstd patch at level 19 {} bytes", piece.method, zstd_patch(p));
        // At the default level a bsdiff patch is three LZMA2 streams (bundle-format.md §5.1).
        assert!(!matches!(piece.method, Method::Bsdiff { .. }), "{p}: a zstd bsdiff frame at the default level");
        if let Method::BsdiffSplit { base, offset, len, .. } = &piece.method {
            assert_eq!(base.display(), p);
            assert_eq!((*offset, *len), (0, fs::metadata(old.join(p)).expect("stat").len()));
            assert_eq!(piece.len, fs::metadata(new.join(p)).expect("stat").len());
            assert!(frame as usize <= zstd_patch(p), "bsdiff kept although larger");
            bsdiff_files += 1;
        }
    }
    assert!(bsdiff_files >= 1, "no bsdiff piece: {rep}");
    assert_eq!(rep["stats"]["bsdiff"]["files"].as_u64(), Some(bsdiff_files), "{rep}");
    // `verify` decodes bsdiff frames (to their patches) without the OLD tree.
    let o = run_expect(apply_cmd().arg("verify").arg(&out).arg("--trust").arg(&public), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("OK") || String::from_utf8_lossy(&o.stderr).contains("OK"));
    let target = d.path().join("target");
    copy_tree(&old, &target);
    apply(&out, &target, &public, 0, &[]);
    assert_same(&snapshot(&target, true), &want, "bsdiff bundle applied to OLD");
    let run = std::process::Command::new(target.join("bin/prog")).output().expect("run the patched program");
    assert!(String::from_utf8_lossy(&run.stdout).contains("version 2"));
    // Hostile patches (writing past the declared length, reading outside the base window) are
    // refused by bundle::bspatch, whose unit tests cover them.
}

#[test]
fn bsdiff_pieces_obey_the_structural_rules() {
    let zstd = |base, offset, len| Method::Bsdiff { base, offset, len };
    bsdiff_rules(&zstd);
    let lzma = |base, offset, len| Method::BsdiffLzma { base, offset, len, dict_log: 20 };
    bsdiff_rules(&lzma);
    let split = |base, offset, len| Method::BsdiffSplit {
        base,
        offset,
        len,
        dict_log: 20,
        control: 48,
        control_size: 5,
        copy: 100,
        copy_size: 5,
    };
    bsdiff_rules(&split);
}

#[test]
fn split_bsdiff_streams_must_fit_their_frame() {
    use ferry_tests::forge;
    let base = forge::path("bin/prog");
    // The frame of `bsdiff_rules`: 16 stored bytes, 300 decoded.
    let split = |control, control_size, copy, copy_size| Method::BsdiffSplit {
        base: base.clone(),
        offset: 0,
        len: 1000,
        dict_log: 20,
        control,
        control_size,
        copy,
        copy_size,
    };
    bsdiff_manifest(split(48, 5, 100, 5)).check(&Limits::default()).expect("valid split piece");
    bsdiff_manifest(split(0, 1, 0, 1)).check(&Limits::default()).expect("no records: empty streams");
    for (m, what) in [
        (split(47, 5, 100, 5), "headers not a whole number of records"),
        (split(48, 5, 253, 5), "first two streams decode to more than the frame"),
        (split(48, 10, 100, 6), "first two streams stored in all of the frame (none left for the third)"),
        (split(48, 0, 100, 5), "a stream of no bytes"),
        (split(48, 5, 100, 0), "a stream of no bytes"),
        (split(u64::MAX - 23, 5, 100, 5), "overflow"),
        (split(48, u64::MAX, 100, 5), "overflow"),
    ] {
        assert!(bsdiff_manifest(m).check(&Limits::default()).is_err(), "{what} accepted");
    }
}

/// A manifest patching `bin/prog` (1000 bytes in OLD, 5000 in NEW) with `method` from one frame
/// of 16 stored and 300 decoded bytes.
fn bsdiff_manifest(method: Method) -> Manifest {
    use bundle::{OldEntry, OldKind};
    use ferry_tests::forge;
    let mut m = forge::empty(2);
    m.old = vec![OldEntry {
        path: forge::path("bin/prog"),
        meta: forge::meta(0o755),
        kind: OldKind::File { size: 1000, hash: bundle::Hash::of(b"old") },
    }];
    m.frames = vec![forge::frame(b"compressed patch", 300)];
    let mut e = forge::file("bin/prog", &[7u8; 5000], 0, 0);
    if let Kind::File { content: Content::Pieces(ps), .. } = &mut e.kind {
        ps[0].method = method;
    }
    m.entries = vec![e];
    m
}

/// The structural rules of a bsdiff piece whose method `mk(base, offset, len)` makes.
fn bsdiff_rules(mk: &dyn Fn(bundle::BundlePath, u64, u64) -> Method) {
    use ferry_tests::forge;
    let base = forge::path("bin/prog");
    let m = bsdiff_manifest(mk(base.clone(), 0, 1000));
    let e = m.entries[0].clone();
    let set = |e: &mut bundle::Entry, f: &dyn Fn(&mut bundle::Piece)| {
        if let Kind::File { content: Content::Pieces(ps), .. } = &mut e.kind {
            f(&mut ps[0]);
        }
    };
    // Output (5000) larger than the decoded patch (300): fine for bsdiff.
    m.check(&Limits::default()).expect("valid bsdiff piece");
    let refused = |m: &Manifest, what: &str| {
        assert!(m.check(&Limits::default()).is_err(), "{what} accepted");
    };
    let mut bad = e.clone();
    set(&mut bad, &|p| p.offset = 1);
    refused(&Manifest { entries: vec![bad], ..m.clone() }, "bsdiff piece at offset 1");
    let mut bad = e.clone();
    set(&mut bad, &|p| p.method = mk(base.clone(), 1, 1000));
    refused(&Manifest { entries: vec![bad], ..m.clone() }, "base window past the OLD file");
    let mut bad = e.clone();
    set(&mut bad, &|p| p.method = mk(forge::path("missing"), 0, 1));
    refused(&Manifest { entries: vec![bad], ..m.clone() }, "base not in OLD");
    // Sharing the frame with a plain piece, or a patch piece of the same span, is refused.
    let plain = forge::file("other", &[1u8; 300], 0, 0);
    refused(&Manifest { entries: vec![e.clone(), plain], ..m.clone() }, "bsdiff frame shared with zstd");
    let mut patch = forge::file("zz", &[1u8; 300], 0, 0);
    set(&mut patch, &|p| p.method = Method::Patch { base: base.clone(), offset: 0, len: 10 });
    refused(&Manifest { entries: vec![e.clone(), patch], ..m.clone() }, "bsdiff frame shared with a patch");
}

/// `data` slightly edited: a few bytes overwritten, a run inserted, a run removed.
fn slightly_edited(data: &[u8], seed: u64) -> Vec<u8> {
    let mut v = data.to_vec();
    let n = v.len();
    v[n / 7..n / 7 + 200].copy_from_slice(&noise(200, seed));
    v.splice(n / 2..n / 2, noise(3000, seed + 1));
    v.drain(n * 3 / 4..n * 3 / 4 + 5000);
    v
}

/// The `Patch`/`Bsdiff` bases of the file at `p` in a manifest.
fn bases_of(m: &Manifest, p: &str) -> Vec<String> {
    pieces(m)[p].iter().filter_map(|x| x.method.base().map(|b| b.display())).collect()
}

#[test]
fn renamed_file_with_a_new_hash_suffix_is_patched_against_its_old_name() {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    // Incompressible, so only a delta against the OLD library makes the bundle small.
    let lib = noise(3 << 20, 41);
    for root in [&old, &new] {
        fs::create_dir_all(root.join("pkg.libs")).expect("mkdir");
        fs::write(root.join("pkg.libs/README"), b"bundled libraries\n").expect("write");
    }
    fs::write(old.join("pkg.libs/libblob-1a2b3c4d.so"), &lib).expect("write");
    fs::write(new.join("pkg.libs/libblob-9f8e7d6c.so"), slightly_edited(&lib, 42)).expect("write");
    // An unrelated file of the same name pattern and size: not a base.
    fs::write(old.join("pkg.libs/libblob-77aa88bb.so"), noise(3 << 20, 43)).expect("write");
    stamp_all(&old, 1_650_000_000);
    stamp_all(&new, 1_660_000_000);
    let want = snapshot(&new, true);
    let out = d.path().join("renamed.ferry");
    let rep = build_json(Some(&old), &new, &secret, &out, &[]);
    let bytes = rep["bytes"].as_u64().expect("bytes");
    assert!(bytes < (3 << 20) / 20, "bundle of {bytes} bytes for a 3 MiB file with a few edits: {rep}");
    let m = manifest(&out);
    assert_eq!(bases_of(&m, "pkg.libs/libblob-9f8e7d6c.so"), ["pkg.libs/libblob-1a2b3c4d.so"]);
    let target = d.path().join("target");
    copy_tree(&old, &target);
    apply(&out, &target, &public, 0, &[]);
    assert_same(&snapshot(&target, true), &want, "renamed library patched against its old name");
    // Deterministic.
    let again = d.path().join("again.ferry");
    build_json(Some(&old), &new, &secret, &again, &[]);
    assert_eq!(fs::read(&out).expect("read"), fs::read(&again).expect("read"));
}

#[test]
fn a_base_found_elsewhere_is_base_checked_and_drift_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    // The OLD tool stays as it is; NEW adds an edited copy of it somewhere else (a package
    // nested one level deeper at an older version): the OLD tool is its base, though no step
    // touches it.
    let tool = noise(1 << 20, 51);
    for root in [&old, &new] {
        fs::create_dir_all(root.join("node_modules/@x/bin")).expect("mkdir");
        fs::write(root.join("node_modules/@x/bin/tool"), &tool).expect("write");
    }
    fs::create_dir_all(new.join("node_modules/v/node_modules/@x/bin")).expect("mkdir");
    fs::write(new.join("node_modules/v/node_modules/@x/bin/tool"), slightly_edited(&tool, 52)).expect("write");
    stamp_all(&old, 1_650_000_000);
    stamp_all(&new, 1_650_000_000);
    let want = snapshot(&new, true);
    let out = d.path().join("moved.ferry");
    let rep = build_json(Some(&old), &new, &secret, &out, &[]);
    assert!(rep["bytes"].as_u64().expect("bytes") < (1 << 20) / 10, "{rep}");
    let m = manifest(&out);
    assert_eq!(bases_of(&m, "node_modules/v/node_modules/@x/bin/tool"), ["node_modules/@x/bin/tool"]);
    assert!(m.script.iter().all(|s| s.path.display() != "node_modules/@x/bin/tool"), "the base is not touched");
    assert!(m.old.iter().any(|o| o.path.display() == "node_modules/@x/bin/tool"), "but listed in old");

    // The base drifted (same size, one byte changed): refused before anything is written.
    let drifted = d.path().join("drifted");
    copy_tree(&old, &drifted);
    let mut edited = tool.clone();
    edited[1000] ^= 0xff;
    fs::write(drifted.join("node_modules/@x/bin/tool"), &edited).expect("write");
    let before = snapshot(&drifted, true);
    let o = apply(&out, &drifted, &public, 4, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("node_modules/@x/bin/tool") && err.contains("content differs"), "{err}");
    assert_same(&snapshot(&drifted, true), &before, "target after the refused apply");

    let target = d.path().join("target");
    copy_tree(&old, &target);
    apply(&out, &target, &public, 0, &[]);
    assert_same(&snapshot(&target, true), &want, "nested copy patched against the OLD tool");
}
