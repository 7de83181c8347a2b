//! Sparse files end to end (bundle-format.md §4.2 "Sparse files", §5): the builder ships only
//! data extents, the applier recreates the holes (the target's allocation matches NEW's within a
//! block per extent), deltas against sparse OLD files and local copies work, a crash at any
//! failpoint resumes to the same sparse tree, and tar inputs in GNU tar's sparse formats and
//! bsdtar's give the same entries as the directory they were made from.

use bundle::{Content, Extent, Kind, Manifest, Method};
use ferry_tests::*;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Allocation granularity assumed for the tolerance (ext4, xfs, tmpfs: 4 KiB).
const FS_BLOCK: u64 = 4096;

/// A file of `size` bytes holding `data` at the given offsets and holes everywhere else.
fn sparse_file(p: &Path, size: u64, data: &[(u64, &[u8])]) {
    let f = File::create(p).expect("create");
    f.set_len(size).expect("set_len");
    for (at, d) in data {
        f.write_all_at(d, *at).expect("write");
    }
}

/// Bytes allocated on disk.
fn allocated(p: &Path) -> u64 {
    fs::metadata(p).expect("stat").blocks() * 512
}

/// BLAKE3 of a file, streamed (holes read as zeros by the kernel).
fn hash_of(p: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(p).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize()
}

fn noise(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

fn manifest(bundle_file: &Path) -> Manifest {
    let f = File::open(bundle_file).expect("open bundle");
    let mut r = bundle::container::Reader::new(std::io::BufReader::new(f), bundle::Limits::default());
    let (mb, _) = r.head().expect("head");
    Manifest::decode(&mb, &bundle::Limits::default()).expect("manifest")
}

fn kind_of<'a>(m: &'a Manifest, p: &str) -> &'a Kind {
    &m.entries.iter().find(|e| e.path.as_bytes() == p.as_bytes()).unwrap_or_else(|| panic!("{p} not listed")).kind
}

fn extents_of(m: &Manifest, p: &str) -> Option<Vec<Extent>> {
    match kind_of(m, p) {
        Kind::File { extents, .. } => extents.clone(),
        k => panic!("{p}: not a file: {k:?}"),
    }
}

/// The target file has NEW's content and about NEW's allocation: at most one filesystem block
/// more per extent (and never more than NEW's data plus that).
fn assert_same_layout(got: &Path, want: &Path, extents: usize) {
    assert_eq!(hash_of(got), hash_of(want), "{}: content", got.display());
    let (g, w) = (allocated(got), allocated(want));
    let slack = FS_BLOCK * (extents as u64 + 1);
    assert!(g <= w + slack && w <= g + slack, "{}: {g} bytes allocated, NEW has {w} (slack {slack})", got.display());
}

/// The shapes of sparse file the tests use, in `dir`.
fn shapes(dir: &Path) {
    fs::create_dir_all(dir).expect("mkdir");
    let x = noise(8192, 1);
    sparse_file(&dir.join("hole-start"), 4 * MIB, &[(4 * MIB - 8192, &x)]);
    sparse_file(&dir.join("hole-middle"), 4 * MIB, &[(0, &x), (4 * MIB - 4096, &x[..4096])]);
    sparse_file(&dir.join("hole-end"), 4 * MIB, &[(0, &x)]);
    sparse_file(&dir.join("holes-many"), 8 * MIB, &[(MIB, &x), (3 * MIB, &x), (5 * MIB + 100, b"unaligned")]);
    sparse_file(&dir.join("all-hole"), 4 * MIB, &[]);
    fs::write(dir.join("dense"), noise(100_000, 2)).expect("write");
}

#[test]
fn holes_at_start_middle_end_and_all_hole_full_and_delta() {
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    shapes(&new);
    // OLD: the same names with other (dense) content, so the delta replaces each.
    fs::create_dir_all(&old).expect("mkdir");
    for n in ["hole-start", "hole-middle", "hole-end", "holes-many", "all-hole", "dense"] {
        fs::write(old.join(n), noise(50_000, 3)).expect("write");
    }
    let full = d.path().join("full.ferry");
    build(None, &new, &k.secret, 2, &full, &[]);
    let m = manifest(&full);
    let ext = |o: u64, l: u64| Extent { offset: o, len: l };
    assert_eq!(extents_of(&m, "hole-start"), Some(vec![ext(4 * MIB - 8192, 8192)]));
    assert_eq!(extents_of(&m, "hole-middle"), Some(vec![ext(0, 8192), ext(4 * MIB - 4096, 4096)]));
    assert_eq!(extents_of(&m, "hole-end"), Some(vec![ext(0, 8192)]));
    assert_eq!(extents_of(&m, "holes-many"), Some(vec![ext(MIB, 8192), ext(3 * MIB, 8192), ext(5 * MIB, 4096)]));
    assert_eq!(extents_of(&m, "all-hole"), Some(vec![]));
    assert!(matches!(kind_of(&m, "all-hole"), Kind::File { content: Content::Empty, size, .. } if *size == 4 * MIB));
    assert_eq!(extents_of(&m, "dense"), None);
    // The payload is the data: about 40 KiB of noise and the dense file, not 24 MiB of zeros.
    let size = fs::metadata(&full).expect("stat").len();
    assert!(size < 200 * KIB, "full bundle is {size} bytes");

    let empty = d.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    apply(&full, &empty, &k.public, 0, &[]);
    assert_same(&snapshot(&empty, true), &snapshot(&new, true), "full bundle");
    for (n, x) in [("hole-start", 1), ("hole-middle", 2), ("hole-end", 1), ("holes-many", 3), ("all-hole", 0)] {
        assert_same_layout(&empty.join(n), &new.join(n), x);
    }

    let delta = d.path().join("delta.ferry");
    build(Some(&old), &new, &k.secret, 2, &delta, &[]);
    let target = d.path().join("target");
    copy_tree(&old, &target);
    apply(&delta, &target, &k.public, 0, &[]);
    assert_same(&snapshot(&target, true), &snapshot(&new, true), "delta bundle");
    for (n, x) in [("hole-start", 1), ("hole-middle", 2), ("hole-end", 1), ("holes-many", 3), ("all-hole", 0)] {
        assert_same_layout(&target.join(n), &new.join(n), x);
    }
}

#[test]
fn large_sparse_file_costs_its_data() {
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let new = d.path().join("new");
    fs::create_dir(&new).expect("mkdir");
    let size = 2 << 30;
    sparse_file(&new.join("disk.img"), size, &[(size / 2, &noise(4096, 4))]);
    let b = d.path().join("big.ferry");
    build(None, &new, &k.secret, 1, &b, &[]);
    let bytes = fs::metadata(&b).expect("stat").len();
    assert!(bytes < 16 * KIB, "a 2 GiB file with 4 KiB of data gave a {bytes}-byte bundle");
    let m = manifest(&b);
    assert_eq!(extents_of(&m, "disk.img"), Some(vec![Extent { offset: size / 2, len: 4096 }]));
    let target = d.path().join("target");
    fs::create_dir(&target).expect("mkdir");
    apply(&b, &target, &k.public, 0, &[]);
    assert_eq!(fs::metadata(target.join("disk.img")).expect("stat").len(), size);
    assert_same_layout(&target.join("disk.img"), &new.join("disk.img"), 1);
}

#[test]
fn delta_against_a_sparse_old_file() {
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    fs::create_dir_all(&old).expect("mkdir");
    let size = 256 * MIB;
    let (a, b, c) = (noise(300_000, 5), noise(200_000, 6), noise(100_000, 7));
    sparse_file(&old.join("db"), size, &[(0, &a), (64 * MIB, &b), (200 * MIB, &c)]);
    copy_tree(&old, &new);
    // NEW: a few bytes changed inside the second extent, and a new extent.
    new.join("db").pipe(|p| {
        let f = fs::OpenOptions::new().write(true).open(p).expect("open");
        f.write_all_at(b"CHANGED", 64 * MIB + 1000).expect("write");
        f.write_all_at(&noise(4096, 8), 128 * MIB).expect("write");
    });
    let bundle = d.path().join("delta.ferry");
    build(Some(&old), &new, &k.secret, 2, &bundle, &["--chunk-size", "1048576"]);
    let m = manifest(&bundle);
    let Kind::File { content: Content::Pieces(ps), extents: Some(x), .. } = kind_of(&m, "db") else {
        panic!("db is not a sparse file with pieces: {:?}", kind_of(&m, "db"));
    };
    assert_eq!(x.len(), 4, "{x:?}");
    assert!(ps.iter().any(|p| matches!(p.method, Method::Patch { .. })), "no patch piece: {ps:?}");
    let bytes = fs::metadata(&bundle).expect("stat").len();
    // 600 KB of data, of which 4 KiB new noise: the patches must reference OLD.
    assert!(bytes < 100 * KIB, "delta bundle is {bytes} bytes");
    let target = d.path().join("target");
    copy_tree(&old, &target);
    apply(&bundle, &target, &k.public, 0, &[]);
    assert_same_layout(&target.join("db"), &new.join("db"), 4);
    assert_same(&snapshot(&target, true), &snapshot(&new, true), "after the delta");
}

/// A helper so a block can act on a path in place.
trait Pipe {
    fn pipe(&self, f: impl FnOnce(&Path));
}
impl Pipe for PathBuf {
    fn pipe(&self, f: impl FnOnce(&Path)) {
        f(self)
    }
}

#[test]
fn copy_of_a_sparse_file_keeps_holes_and_a_layout_change_is_a_local_copy() {
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    fs::create_dir_all(&old).expect("mkdir");
    let x = noise(20_000, 9);
    sparse_file(&old.join("vm.img"), 64 * MIB, &[(MIB, &x), (40 * MIB, &x)]);
    // Dense in OLD, sparse in NEW, same content.
    let mut zeros_then_data = vec![0u8; 4 * MIB as usize];
    zeros_then_data[3 * MIB as usize..3 * MIB as usize + 5].copy_from_slice(b"hello");
    fs::write(old.join("layout"), &zeros_then_data).expect("write");
    copy_tree(&old, &new);
    fs::remove_file(new.join("layout")).expect("rm");
    sparse_file(&new.join("layout"), 4 * MIB, &[(3 * MIB, b"hello")]);
    let st = Command::new("touch").arg("-r").arg(old.join("layout")).arg(new.join("layout")).status();
    assert!(st.is_ok_and(|s| s.success()), "touch -r");
    // A copy of the sparse file under another name.
    Command::new("cp")
        .arg("-a")
        .arg("--sparse=always")
        .arg(old.join("vm.img"))
        .arg(new.join("vm-copy.img"))
        .status()
        .expect("cp");
    let bundle = d.path().join("delta.ferry");
    build(Some(&old), &new, &k.secret, 2, &bundle, &[]);
    let m = manifest(&bundle);
    assert!(
        matches!(kind_of(&m, "vm-copy.img"), Kind::File { content: Content::Copy { .. }, extents: Some(_), .. }),
        "{:?}",
        kind_of(&m, "vm-copy.img")
    );
    // A layout change alone is placed as a copy of the file itself: no payload.
    assert!(
        matches!(kind_of(&m, "layout"), Kind::File { content: Content::Copy { from }, extents: Some(_), .. } if from.as_bytes() == b"layout"),
        "{:?}",
        kind_of(&m, "layout")
    );
    let target = d.path().join("target");
    copy_tree(&old, &target);
    apply(&bundle, &target, &k.public, 0, &[]);
    assert_same_layout(&target.join("vm-copy.img"), &new.join("vm-copy.img"), 2);
    assert!(allocated(&target.join("vm-copy.img")) < MIB);
    // The dense OLD file is sparse now, as in NEW.
    assert_same_layout(&target.join("layout"), &new.join("layout"), 1);
    assert!(allocated(&target.join("layout")) < MIB);
    assert_same(&snapshot(&target, true), &snapshot(&new, true), "after the delta");
}

/// The manifest's structural check refuses bad extents (bundle-format.md §4.5).
#[test]
fn bad_extents_are_refused_by_the_format_check() {
    let data = b"0123456789";
    let good = |extents: Vec<Extent>, size: u64| {
        let mut f = forge::minimal(1, "d", data);
        if let Kind::File { size: s, hash, extents: x, .. } = &mut f.manifest.entries[1].kind {
            let mut dense = vec![0u8; size as usize];
            let mut at = 0usize;
            // The digest of the content the extents describe (where they make sense at all).
            for e in &extents {
                let n = e.len as usize;
                if let (Some(to), Some(from)) =
                    (dense.get_mut(e.offset as usize..e.offset as usize + n), data.get(at..at + n))
                {
                    to.copy_from_slice(from);
                }
                at += n;
            }
            *s = size;
            *hash = Some(bundle::Hash::of(&dense));
            *x = Some(extents);
        }
        f.manifest.check(&bundle::Limits::default())
    };
    let e = |o, l| Extent { offset: o, len: l };
    good(vec![e(0, 4), e(100, 6)], 1000).expect("valid extents");
    let refused = |x: Vec<Extent>, size: u64, needle: &str| match good(x, size) {
        Ok(()) => panic!("accepted, expected {needle:?}"),
        Err(err) => assert!(err.to_string().contains(needle), "{err} lacks {needle:?}"),
    };
    refused(vec![e(100, 6), e(0, 4)], 1000, "precedes");
    refused(vec![e(0, 6), e(4, 4)], 1000, "overlaps");
    refused(vec![e(0, 4), e(4, 6)], 1000, "touches");
    refused(vec![e(0, 4), e(996, 6)], 1000, "beyond the size");
    refused(vec![e(0, 10)], 10, "no hole");
    // The pieces must carry exactly the extents' bytes.
    refused(vec![e(0, 4), e(100, 5)], 1000, "pieces sum to 10");
    // Too many extents in one file.
    let mut f = forge::minimal(1, "d", data);
    if let Kind::File { size, extents, .. } = &mut f.manifest.entries[1].kind {
        *size = 1000;
        *extents = Some((0..10).map(|i| e(i * 20, 1)).collect());
    }
    let limits = bundle::Limits { max_extents_per_file: 9, ..bundle::Limits::default() };
    let err = f.manifest.check(&limits).expect_err("too many extents");
    assert!(err.to_string().contains("over the limit of 9"), "{err}");
    let limits = bundle::Limits { max_extents: 9, ..bundle::Limits::default() };
    let err = f.manifest.check(&limits).expect_err("too many extents");
    assert!(err.to_string().contains("manifest has 10 extents"), "{err}");
    // And an all-hole file is Empty, never empty pieces.
    let mut f = forge::minimal(1, "d", b"");
    if let Kind::File { size, extents, .. } = &mut f.manifest.entries[1].kind {
        *size = 1000;
        *extents = Some(vec![]);
    }
    let err = f.manifest.check(&bundle::Limits::default()).expect_err("pieces for a file without data");
    assert!(err.to_string().contains("without data"), "{err}");
}

/// Kill the applier at each failpoint while it stages and commits sparse files, resume, and
/// check the result has NEW's content and layout.
#[test]
fn crash_at_every_failpoint_with_sparse_files_then_resume() {
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    fs::create_dir_all(old.join("img")).expect("mkdir");
    let x = noise(50_000, 10);
    sparse_file(&old.join("img/a"), 32 * MIB, &[(MIB, &x), (20 * MIB, &x)]);
    sparse_file(&old.join("img/b"), 16 * MIB, &[(0, &x)]);
    copy_tree(&old, &new);
    new.join("img/a").pipe(|p| {
        let f = fs::OpenOptions::new().write(true).open(p).expect("open");
        f.write_all_at(b"NEW", 20 * MIB + 7).expect("write");
    });
    sparse_file(&new.join("img/c"), 8 * MIB, &[(4 * MIB, &x)]);
    Command::new("cp").arg("--sparse=always").arg(old.join("img/b")).arg(new.join("img/b2")).status().expect("cp");
    let bundle = d.path().join("b.ferry");
    build(Some(&old), &new, &k.secret, 2, &bundle, &[]);
    let want = snapshot(&new, false);
    let apply_cmd_for = |t: &Path| {
        let mut c = apply_cmd();
        c.arg("-q").arg("apply").arg(&bundle).arg("--target").arg(t).arg("--trust").arg(&k.public);
        c
    };
    let check = |t: &Path, what: &str| {
        assert_same(&snapshot(t, false), &want, what);
        for (n, x) in [("img/a", 2), ("img/b", 1), ("img/c", 1), ("img/b2", 1)] {
            assert_same_layout(&t.join(n), &new.join(n), x);
        }
    };
    crash_at_every_failpoint(
        &old,
        d.path(),
        apply_cmd_for,
        |_, _| {},
        |t, k| check(t, &format!("after a crash at point {k} and resume")),
    );
    check(&d.path().join("count"), "uninterrupted");
}

fn tool(name: &str) -> Command {
    let ok = Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "this test needs {name} (GNU tar; bsdtar is in the libarchive-tools package)");
    Command::new(name)
}

/// The file entries of a bundle's manifest, without metadata (tar keeps whole-second mtimes).
fn file_kinds(m: &Manifest) -> Vec<(String, Kind)> {
    m.entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::File { .. }))
        .map(|e| (e.path.display(), e.kind.clone()))
        .map(|(p, k)| match k {
            // Pieces point at frames, whose order may differ; compare the layout and digest.
            Kind::File { size, hash, extents, config, .. } => {
                (p, Kind::File { size, hash, content: Content::Unchanged, config, extents, gzip: None })
            }
            k => (p, k),
        })
        .collect()
}

#[test]
fn gnu_tar_and_bsdtar_sparse_members_match_the_directory() {
    let d = tempfile::tempdir().expect("tmp");
    let k = keys(d.path());
    let new = d.path().join("new");
    shapes(&new);
    // A file larger than the old GNU header's four map entries.
    let x = noise(4096, 11);
    let many: Vec<(u64, &[u8])> = (0..9).map(|i| (i * MIB, &x[..])).collect();
    sparse_file(&new.join("nine-extents"), 10 * MIB, &many);
    let dir_bundle = d.path().join("dir.ferry");
    build(None, &new, &k.secret, 1, &dir_bundle, &[]);
    let want = file_kinds(&manifest(&dir_bundle));
    assert!(want.iter().filter(|(_, k)| matches!(k, Kind::File { extents: Some(_), .. })).count() >= 5);

    let tars: Vec<(&str, Command)> = vec![
        ("gnu-0.0-oldgnu", {
            let mut c = tool("tar");
            c.args(["--sparse", "--format=gnu"]);
            c
        }),
        ("gnu-pax-0.0", {
            let mut c = tool("tar");
            c.args(["--sparse", "--format=posix", "--sparse-version=0.0"]);
            c
        }),
        ("gnu-pax-0.1", {
            let mut c = tool("tar");
            c.args(["--sparse", "--format=posix", "--sparse-version=0.1"]);
            c
        }),
        ("gnu-pax-1.0", {
            let mut c = tool("tar");
            c.args(["--sparse", "--format=posix", "--sparse-version=1.0"]);
            c
        }),
        ("bsdtar", tool("bsdtar")),
    ];
    for (name, mut c) in tars {
        let tar = d.path().join(format!("{name}.tar"));
        let st = c.arg("-cf").arg(&tar).arg("-C").arg(&new).arg(".").status().expect("tar");
        assert!(st.success(), "{name}: tar failed");
        let tar_size = fs::metadata(&tar).expect("stat").len();
        assert!(tar_size < 2 * MIB, "{name}: archive of {tar_size} bytes is not sparse");
        let b = d.path().join(format!("{name}.ferry"));
        build(None, &tar, &k.secret, 1, &b, &[]);
        assert_eq!(file_kinds(&manifest(&b)), want, "{name}: entries differ from the directory input's");
        // And it applies to the same content and layout.
        let t = d.path().join(format!("{name}-target"));
        fs::create_dir(&t).expect("mkdir");
        apply(&b, &t, &k.public, 0, &[]);
        for (p, kind) in &want {
            let n = match kind {
                Kind::File { extents: Some(x), .. } => x.len(),
                _ => 0,
            };
            assert_same_layout(&t.join(p), &new.join(p), n);
        }
    }
}
