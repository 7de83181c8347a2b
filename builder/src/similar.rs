//! Delta bases found by similarity: for a NEW file that needs a payload and has no delta base
//! from [`crate::diff`] (no OLD file at its own path, none whose path differs only in version
//! digits), the most similar OLD file anywhere in the tree.
//!
//! Renamed and moved files are common: a rebuilt shared library under a new content-hash suffix
//! (auditwheel's `libopenblas-<hex>.so`), a bundler's `chunk-<hex>.js`, a package nested one
//! level deeper after its parent moved on to another version. Compressed from scratch they cost
//! several times a patch against their OLD relative.
//!
//! Three stages, all bounded:
//!
//! 1. **Candidates by name.** OLD is indexed once by [`name_key`] of each file name (hash-like
//!    tokens, digits and separators dropped, so `libx-1a2b3c4d.so.1.2` and `libx-9f8e7d6c.so.1.3`
//!    meet; directories are ignored, so a move is found). A query looks at most
//!    [`MAX_CANDIDATES`] OLD files of its key, the closest in size, each within 2x of its size:
//!    `O(log n)` per query, whatever the number of OLD files sharing the key.
//! 2. **Candidates by content**, for an ELF file that has none by name (a library whose code
//!    is also linked statically into an OLD program: Debian's `libperl.so.5.36` and
//!    `/usr/bin/perl`). The OLD ELF files (same bounds as above) are sketched (stage 3) and
//!    indexed by their sketches' fingerprints; a query takes the [`MAX_CANDIDATES`] OLD files
//!    within 2x of its size sharing the most fingerprints with its own sketch, and needs
//!    [`MIN_CONTENT_RESEMBLANCE_NUM`]/[`MIN_CONTENT_RESEMBLANCE_DEN`]. Only ELF: machine code
//!    is where a base under another name pays (a patch of `libperl.so` against `perl`: 0.39 MB
//!    instead of 0.92 MB compressed alone), and OLD is sketched only when such a query exists,
//!    so the cost is a read of OLD's executables and libraries, not of the whole tree.
//! 3. **Content check.** The query and its candidates get a [`Sketch`]: a bottom-k min-hash of
//!    content-defined samples of 32-byte windows (a gear rolling hash, sampled where its top bits
//!    are zero, so the samples follow the content, not its offsets). The candidate with the
//!    largest estimated resemblance (shared samples over the union's k smallest) wins, if that is
//!    at least [`MIN_RESEMBLANCE_NUM`]/[`MIN_RESEMBLANCE_DEN`] and the candidate is ELF exactly
//!    when the query is; ties go to the closer size, then the smaller path. Each file is sketched
//!    at most once, in parallel.
//!
//! Only files of at least [`MIN_SIZE`] bytes are searched (below that the whole-file cost is
//! small and a solid frame shares context anyway), and at most the chunk size (a chunked file
//! patches only against its own path's OLD file). Sparse files on either side, empty files and
//! config files (NEW files marked config get no base at all; OLD files matching a config glob may
//! be edited on the target) are never searched or chosen. The chosen base is read from the OLD
//! tree like any other, so the builder lists it in the manifest's `old` and the applier checks
//! its hash before anything is written (bundle-format.md §4.3, §10.1).

use crate::diff::{is_config, Choice};
use crate::progress::Progress;
use crate::scan::{ScanEntry, Tree, Type};
use bundle::BundlePath;
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;

/// Smallest NEW file searched.
pub const MIN_SIZE: u64 = 64 << 10;
/// Most OLD files whose content is compared with one NEW file.
pub const MAX_CANDIDATES: usize = 8;
/// Samples kept per sketch (bottom-k).
const SKETCH_K: usize = 256;
/// A window position is sampled when the top `SAMPLE_BITS` bits of the rolling hash are zero:
/// one position in 64 on average.
const SAMPLE_BITS: u32 = 6;
/// Least resemblance accepted: unrelated files measure below 0.01, a rebuilt library (numpy's
/// OpenBLAS) about 0.4, an edited text file above 0.9.
pub const MIN_RESEMBLANCE_NUM: usize = 1;
pub const MIN_RESEMBLANCE_DEN: usize = 20;
/// Least resemblance accepted for a candidate found by content alone (stage 1b), without a name
/// in common: small ELF files of one machine share about 1/20 of their samples whatever they do
/// (start-up code, PLT stubs, the symbol names of libc); on rootfs-up-arm64 a bound of 1/20
/// paired 82 Python extension modules with unrelated Perl modules. A library and the program it
/// is linked into measure 0.2 (`libperl.so`, `perl`).
pub const MIN_CONTENT_RESEMBLANCE_NUM: usize = 1;
pub const MIN_CONTENT_RESEMBLANCE_DEN: usize = 8;
/// A fingerprint that more OLD ELF files than this share is not counted in the search by
/// content (start-up code, padding: every file of a machine has it).
const MAX_POSTING: usize = 256;

/// Separators of a file name's tokens.
fn is_separator(b: u8) -> bool {
    matches!(b, b'-' | b'_' | b'.' | b'+' | b'~' | b'@' | b' ' | b',')
}

/// A token that looks like a content hash or a build id: at least 6 hexadecimal digits, at least
/// one of them decimal (`56d6093b`, `68440149`; not `facade`).
fn is_hash_like(t: &[u8]) -> bool {
    t.len() >= 6 && t.iter().all(u8::is_ascii_hexdigit) && t.iter().any(u8::is_ascii_digit)
}

/// The name key of a file name: its tokens (split at `-_.+~@ ,`) without the hash-like ones,
/// without decimal digits, lower-cased and concatenated. `libscipy_openblas64_-56d6093b.so` and
/// `libscipy_openblas-68440149.so` both give `libscipyopenblasso`; `dep-41cf5ffd.js` gives
/// `depjs`. Empty when nothing is left (such a name is too generic to search by).
pub fn name_key(name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len());
    for t in name.split(|&b| is_separator(b)).filter(|t| !is_hash_like(t)) {
        key.extend(t.iter().filter(|b| !b.is_ascii_digit()).map(u8::to_ascii_lowercase));
    }
    key
}

const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The gear table: one fixed pseudo-random word per byte value (the same on every machine).
const fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = splitmix64(i as u64);
        i += 1;
    }
    t
}

static GEAR: [u64; 256] = gear_table();

/// A content sketch: whether the file is ELF, and the (at most [`SKETCH_K`]) smallest distinct
/// fingerprints of its sampled windows, ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sketch {
    elf: bool,
    mins: Vec<u64>,
}

impl Sketch {
    /// Sketch the first `limit` bytes of `r`.
    pub fn of(r: impl Read, limit: u64) -> std::io::Result<Sketch> {
        let mut r = r.take(limit);
        let mut buf = vec![0u8; 64 << 10];
        let mut mins: BTreeSet<u64> = BTreeSet::new();
        let (mut h, mut head, mut head_len) = (0u64, [0u8; 4], 0usize);
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if head_len < 4 {
                    head[head_len] = b;
                    head_len += 1;
                }
                // Shifting by 2 bits: the hash depends on the last 32 bytes only.
                h = (h << 2).wrapping_add(GEAR[usize::from(b)]);
                if h >> (64 - SAMPLE_BITS) == 0 {
                    let f = splitmix64(h);
                    if mins.len() < SKETCH_K {
                        mins.insert(f);
                    } else if mins.last().is_some_and(|&m| f < m) && mins.insert(f) {
                        mins.pop_last();
                    }
                }
            }
        }
        Ok(Sketch { elf: head_len == 4 && &head == b"\x7fELF", mins: mins.into_iter().collect() })
    }

    /// Sketch the file at `path` (at most `size` bytes of it).
    pub fn of_file(path: &Path, size: u64) -> std::io::Result<Sketch> {
        Sketch::of(std::fs::File::open(path)?, size)
    }

    /// Estimated resemblance with `other` as (shared, union): of the [`SKETCH_K`] smallest
    /// fingerprints of both sketches together, how many are in both.
    pub fn resemblance(&self, other: &Sketch) -> (usize, usize) {
        let (a, b) = (&self.mins, &other.mins);
        let (mut i, mut j, mut union, mut shared) = (0, 0, 0, 0);
        while union < SKETCH_K && (i < a.len() || j < b.len()) {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x == y => {
                    shared += 1;
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x < y => i += 1,
                (Some(_), None) => i += 1,
                _ => j += 1,
            }
            union += 1;
        }
        (shared, union)
    }
}

/// Whether sizes `a` and `b` are within a factor of 2 of each other (a candidate base's bound).
fn within_2x(a: u64, b: u64) -> bool {
    a <= b.saturating_mul(2) && b <= a.saturating_mul(2)
}

/// OLD's files that may serve as a base, by name key, each list sorted by (size, path).
pub struct OldNames<'a> {
    by_key: BTreeMap<Vec<u8>, Vec<&'a ScanEntry>>,
}

impl<'a> OldNames<'a> {
    /// Index OLD once: regular files of at least half [`MIN_SIZE`], dense, not matching a config
    /// glob, with a non-empty name key.
    pub fn new(old: &'a Tree, config_globs: &[String]) -> Self {
        let mut by_key: BTreeMap<Vec<u8>, Vec<&ScanEntry>> = BTreeMap::new();
        for e in old.entries.iter().filter(|e| e.ty == Type::File && e.size >= MIN_SIZE / 2 && e.extents.is_none()) {
            let key = name_key(e.path.file_name());
            if !key.is_empty() && !is_config(config_globs, &e.path) {
                by_key.entry(key).or_default().push(e);
            }
        }
        for v in by_key.values_mut() {
            v.sort_by(|a, b| (a.size, &a.path).cmp(&(b.size, &b.path)));
        }
        OldNames { by_key }
    }

    /// The OLD files of the same name key as `name` whose size is within 2x of `size`, at most
    /// [`MAX_CANDIDATES`] of them, the closest in size first (a tie goes to the larger).
    pub fn candidates(&self, name: &[u8], size: u64) -> Vec<&'a ScanEntry> {
        let Some(v) = self.by_key.get(&name_key(name)) else {
            return Vec::new();
        };
        let fits = |e: &ScanEntry| within_2x(e.size, size);
        let mut hi = v.partition_point(|e| e.size < size);
        let mut lo = hi;
        let mut out = Vec::new();
        while out.len() < MAX_CANDIDATES {
            let up = v.get(hi).filter(|e| fits(e));
            let down = lo.checked_sub(1).and_then(|i| v.get(i)).filter(|e| fits(e));
            match (up, down) {
                (Some(u), Some(d)) if u.size - size <= size - d.size => {
                    out.push(*u);
                    hi += 1;
                }
                (Some(u), None) => {
                    out.push(*u);
                    hi += 1;
                }
                (_, Some(d)) => {
                    out.push(*d);
                    lo -= 1;
                }
                (None, None) => break,
            }
        }
        out
    }
}

/// One NEW file searched, and its candidates.
struct Query<'a> {
    path: BundlePath,
    size: u64,
    candidates: Vec<&'a ScanEntry>,
    /// The candidates were found by content (stage 1b), not by name.
    by_content: bool,
}

/// Whether the file at `path` starts with the ELF magic.
fn is_elf_file(path: &Path) -> bool {
    let mut head = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == b"\x7fELF"
}

/// OLD's ELF files that may serve as a base (as for [`OldNames`], whatever their name), sketched
/// and indexed by fingerprint (stage 1b of the module documentation).
struct OldContent<'a> {
    files: Vec<(&'a ScanEntry, Sketch)>,
    /// (fingerprint, index into `files`) of every sketch, sorted: 12 bytes a sample, with no
    /// allocation per fingerprint.
    by_fingerprint: Vec<(u64, u32)>,
}

impl<'a> OldContent<'a> {
    fn new(old: &'a Tree, config_globs: &[String], progress: &Progress) -> Self {
        let eligible: Vec<&ScanEntry> = old
            .entries
            .iter()
            .filter(|e| e.ty == Type::File && e.size >= MIN_SIZE / 2 && e.extents.is_none())
            .filter(|e| !is_config(config_globs, &e.path))
            .collect();
        progress.begin("similar-content", "files", Some(eligible.len() as u64), None);
        let files: Vec<(&ScanEntry, Sketch)> = eligible
            .par_iter()
            .filter_map(|e| {
                let path = old.content_path(&e.path);
                let s = is_elf_file(&path).then(|| Sketch::of_file(&path, e.size).ok()).flatten();
                progress.advance(1, if s.is_some() { e.size } else { 0 });
                Some((*e, s.filter(|s| s.elf)?))
            })
            .collect();
        let mut by_fingerprint: Vec<(u64, u32)> =
            files.iter().enumerate().flat_map(|(i, (_, s))| s.mins.iter().map(move |&m| (m, i as u32))).collect();
        by_fingerprint.sort_unstable();
        OldContent { files, by_fingerprint }
    }

    /// The OLD files sharing the most fingerprints with `mine` (of a file of `size` bytes), within
    /// 2x of its size, at most [`MAX_CANDIDATES`], with their sketches: most shared first, then
    /// closest in size, then smaller path. A fingerprint more than [`MAX_POSTING`] OLD files
    /// share is not counted: it says nothing about which one is alike, and counting it would
    /// cost every query a pass over them all.
    fn candidates(&self, mine: &Sketch, size: u64) -> Vec<(&'a ScanEntry, &Sketch)> {
        let mut shared: HashMap<u32, usize> = HashMap::new();
        for m in &mine.mins {
            let from = self.by_fingerprint.partition_point(|p| p.0 < *m);
            let to = self.by_fingerprint.partition_point(|p| p.0 <= *m);
            if to - from > MAX_POSTING {
                continue;
            }
            for &(_, i) in &self.by_fingerprint[from..to] {
                *shared.entry(i).or_default() += 1;
            }
        }
        let mut c: Vec<(usize, &(&ScanEntry, Sketch))> = shared
            .into_iter()
            .filter_map(|(i, n)| Some((n, self.files.get(i as usize)?)))
            .filter(|(_, (e, _))| within_2x(e.size, size))
            .collect();
        c.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| a.1 .0.size.abs_diff(size).cmp(&b.1 .0.size.abs_diff(size)))
                .then_with(|| a.1 .0.path.cmp(&b.1 .0.path))
        });
        c.into_iter().take(MAX_CANDIDATES).map(|(_, (e, s))| (*e, s)).collect()
    }
}

/// The best candidate of `q` by resemblance (see the module documentation), if good enough, and
/// its resemblance as (shared, union).
fn best(q: &Query, mine: &Sketch, sketches: &BTreeMap<BundlePath, Sketch>) -> Option<(BundlePath, (usize, usize))> {
    let mut best: Option<(&ScanEntry, (usize, usize))> = None;
    let (num, den) = if q.by_content {
        (MIN_CONTENT_RESEMBLANCE_NUM, MIN_CONTENT_RESEMBLANCE_DEN)
    } else {
        (MIN_RESEMBLANCE_NUM, MIN_RESEMBLANCE_DEN)
    };
    for c in &q.candidates {
        let Some(s) = sketches.get(&c.path).filter(|s| s.elf == mine.elf) else { continue };
        let r = mine.resemblance(s);
        if r.1 == 0 || r.0 * den < r.1 * num {
            continue;
        }
        let better = match best {
            None => true,
            // r.0/r.1 against b.0/b.1, then closer size, then smaller path.
            Some((b, br)) => (r.0 * br.1)
                .cmp(&(br.0 * r.1))
                .then_with(|| b.size.abs_diff(q.size).cmp(&c.size.abs_diff(q.size)))
                .then_with(|| b.path.cmp(&c.path))
                .is_gt(),
        };
        if better {
            best = Some((c, r));
        }
    }
    best.map(|(b, r)| (b.path.clone(), r))
}

/// Give NEW files that need a payload and have no delta base the most similar OLD file as base
/// (module documentation). `max_size`: the largest file searched (the chunk size). Returns how
/// many got one. A file that cannot be read is simply not a candidate (the encoder reports it if
/// it needs it).
pub fn find_bases(
    old: &Tree,
    new: &Tree,
    choices: &mut BTreeMap<BundlePath, Choice>,
    config_globs: &[String],
    max_size: u64,
    progress: &Progress,
) -> usize {
    // The NEW files to search: a payload without a base, dense, not config, of MIN_SIZE to
    // max_size bytes. OLD is indexed only if there is one (the usual update of a large tree has
    // none: no index of every OLD file).
    let todo: Vec<&ScanEntry> = choices
        .iter()
        .filter(|(_, c)| matches!(c, Choice::Payload { base: None }))
        .filter_map(|(p, _)| new.get(p))
        .filter(|n| n.ty == Type::File && n.extents.is_none() && (MIN_SIZE..=max_size).contains(&n.size))
        .filter(|n| !is_config(config_globs, &n.path))
        .collect();
    if todo.is_empty() {
        return 0;
    }
    let names = OldNames::new(old, config_globs);
    let (mut qs, unnamed): (Vec<Query>, Vec<Query>) = todo
        .iter()
        .map(|n| Query {
            path: n.path.clone(),
            size: n.size,
            candidates: names.candidates(n.path.file_name(), n.size),
            by_content: false,
        })
        .partition(|q| !q.candidates.is_empty());
    let old_files: BTreeSet<&BundlePath> = qs.iter().flat_map(|q| q.candidates.iter().map(|c| &c.path)).collect();
    let unnamed: Vec<Query> = unnamed.into_iter().filter(|q| is_elf_file(&new.content_path(&q.path))).collect();
    let work: Vec<(bool, &BundlePath, u64)> = qs
        .iter()
        .chain(&unnamed)
        .map(|q| (true, &q.path, q.size))
        .chain(old_files.iter().filter_map(|p| old.get(p).map(|e| (false, *p, e.size))))
        .collect();
    if work.is_empty() {
        return 0;
    }
    progress.begin("similar", "files", Some(work.len() as u64), None);
    let sketched: Vec<Option<Sketch>> = work
        .par_iter()
        .map(|(is_new, p, size)| {
            let path = if *is_new { new.content_path(p) } else { old.content_path(p) };
            let s = Sketch::of_file(&path, *size).ok();
            progress.advance(1, *size);
            s
        })
        .collect();
    let (mut mine, mut theirs) = (BTreeMap::new(), BTreeMap::new());
    for ((is_new, p, _), s) in work.into_iter().zip(sketched) {
        if let Some(s) = s {
            if is_new {
                mine.insert(p.clone(), s)
            } else {
                theirs.insert(p.clone(), s)
            };
        }
    }
    // Stage 1b: the ELF files without a candidate by name look for one by content.
    let content = (!unnamed.is_empty()).then(|| OldContent::new(old, config_globs, progress));
    if let Some(content) = &content {
        for mut q in unnamed {
            let Some(s) = mine.get(&q.path) else { continue };
            let found = content.candidates(s, q.size);
            for (e, s) in &found {
                theirs.entry(e.path.clone()).or_insert_with(|| (*s).clone());
            }
            q.candidates = found.into_iter().map(|(e, _)| e).collect();
            q.by_content = true;
            if !q.candidates.is_empty() {
                qs.push(q);
            }
        }
    }
    let mut found = 0;
    for q in &qs {
        let base = mine.get(&q.path).and_then(|s| best(q, s, &theirs));
        if let (Some((b, (shared, union))), Some(c)) = (base, choices.get_mut(&q.path)) {
            progress.note(&format!("similar: {} <- {b} ({shared}/{union} samples shared)", q.path));
            *c = Choice::Payload { base: Some(b) };
            found += 1;
        }
    }
    progress.end_with(&format!("{found} of {} files got a delta base by similarity", qs.len()));
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::tests::pseudo_random;
    use crate::diff::tests::file;
    use crate::scan::Source;

    /// `data` with a few small edits: bytes overwritten, inserted and removed here and there.
    fn edited(data: &[u8], seed: u64) -> Vec<u8> {
        let mut v = data.to_vec();
        let noise = pseudo_random(64, seed);
        for (i, k) in [(v.len() / 5, 0), (v.len() / 2, 1), (v.len() * 4 / 5, 2)] {
            match k {
                0 => v[i..i + 64].copy_from_slice(&noise),
                1 => drop(v.splice(i..i, noise.iter().copied())),
                _ => drop(v.drain(i..i + 100)),
            }
        }
        v
    }

    /// A tree in a temporary directory: the files are written there, the entries point at them.
    fn disk_tree(files: &[(&str, &[u8])]) -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut entries = Vec::new();
        for (p, data) in files {
            let fs = dir.path().join(p);
            if let Some(parent) = fs.parent() {
                std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
            }
            std::fs::write(&fs, data).unwrap_or_else(|e| panic!("{e}"));
            entries.push(file(p, data));
        }
        let t = Tree::from_entries(Source::Dir(dir.path().to_path_buf()), entries);
        (dir, t)
    }

    /// Every NEW file as a payload without base, then the search; the base each one got.
    fn search(old: &Tree, new: &Tree, globs: &[String]) -> BTreeMap<String, Option<String>> {
        let mut choices: BTreeMap<BundlePath, Choice> =
            new.entries.iter().map(|e| (e.path.clone(), Choice::Payload { base: None })).collect();
        find_bases(old, new, &mut choices, globs, 64 << 20, &Progress::new(crate::progress::Verbosity::Quiet));
        choices
            .into_iter()
            .map(|(p, c)| match c {
                Choice::Payload { base } => (p.to_string(), base.map(|b| b.to_string())),
                other => panic!("{p}: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn name_keys() {
        let k = |s: &str| String::from_utf8_lossy(&name_key(s.as_bytes())).into_owned();
        assert_eq!(k("libscipy_openblas64_-56d6093b.so"), "libscipyopenblasso");
        assert_eq!(k("libscipy_openblas-68440149.so"), "libscipyopenblasso");
        assert_eq!(k("dep-41cf5ffd.js"), "depjs");
        assert_eq!(k("libfoo.so.1.2.3"), k("libfoo.so.2"));
        assert_eq!(k("Esbuild"), "esbuild");
        // Hex words without a digit are words, short hex tokens are kept.
        assert_eq!(k("facade-1.js"), "facadejs");
        assert_eq!(k("a1b2c.js"), "abcjs");
        assert_eq!(k("1234567"), "");
    }

    #[test]
    fn sketch_resemblance() {
        let a = pseudo_random(300_000, 1);
        let s = |d: &[u8]| Sketch::of(d, d.len() as u64).unwrap_or_else(|e| panic!("{e}"));
        let (sa, sb, sc) = (s(&a), s(&edited(&a, 2)), s(&pseudo_random(300_000, 3)));
        assert_eq!(sa.mins.len(), SKETCH_K);
        assert!(sa.mins.windows(2).all(|w| w[0] < w[1]));
        let (shared, union) = sa.resemblance(&sb);
        assert!(shared * 10 >= union * 9, "{shared}/{union}");
        let (shared, union) = sa.resemblance(&sc);
        assert!(shared * MIN_RESEMBLANCE_DEN < union * MIN_RESEMBLANCE_NUM, "{shared}/{union}");
        assert_eq!(sa.resemblance(&sa), (SKETCH_K, SKETCH_K));
        // The limit bounds what is read; the ELF magic is seen.
        let mut elf = b"\x7fELF".to_vec();
        elf.extend(&a);
        assert!(s(&elf).elf && !sa.elf);
        assert_eq!(Sketch::of(&a[..], 1000).ok(), Some(s(&a[..1000])));
    }

    #[test]
    fn renamed_with_hash_suffix() {
        let lib = pseudo_random(200_000, 7);
        let (_o, old) = disk_tree(&[("pkg.libs/libblas-1a2b3c4d.so", &lib), ("pkg.libs/libother-99aa88bb.so", &lib)]);
        let (_n, new) = disk_tree(&[("pkg.libs/libblas-9f8e7d6c.so", &edited(&lib, 8))]);
        assert_eq!(
            search(&old, &new, &[])["pkg.libs/libblas-9f8e7d6c.so"].as_deref(),
            Some("pkg.libs/libblas-1a2b3c4d.so")
        );
    }

    #[test]
    fn moved_to_another_directory() {
        let bin = pseudo_random(150_000, 9);
        let (_o, old) = disk_tree(&[("node_modules/@x/linux/bin/tool", &bin)]);
        let (_n, new) = disk_tree(&[("node_modules/v/node_modules/@x/linux/bin/tool", &edited(&bin, 10))]);
        let got = search(&old, &new, &[]);
        assert_eq!(
            got["node_modules/v/node_modules/@x/linux/bin/tool"].as_deref(),
            Some("node_modules/@x/linux/bin/tool")
        );
    }

    #[test]
    fn elf_under_another_name_found_by_content() {
        let mut prog = b"\x7fELF".to_vec();
        prog.extend(pseudo_random(300_000, 21));
        let mut text = pseudo_random(100_000, 22);
        text[..4].copy_from_slice(b"text");
        let (_o, old) = disk_tree(&[
            ("usr/bin/perl", &prog),
            ("usr/bin/other", &[&b"\x7fELF"[..], &pseudo_random(300_000, 23)].concat()),
            ("usr/share/a.txt", &text),
        ]);
        let lib = edited(&prog, 24);
        let (_n, new) = disk_tree(&[("usr/lib/libperl.so.5.36", &lib), ("usr/share/doc/b.md", &edited(&text, 25))]);
        let got = search(&old, &new, &[]);
        // No name in common: the library finds the program by content; a text file is not
        // searched by content.
        assert_eq!(got["usr/lib/libperl.so.5.36"].as_deref(), Some("usr/bin/perl"));
        assert_eq!(got["usr/share/doc/b.md"], None);
        // An unrelated ELF file under another name gets nothing.
        let (_n, new) = disk_tree(&[("usr/lib/libz.so.1", &[&b"\x7fELF"[..], &pseudo_random(300_000, 26)].concat())]);
        assert_eq!(search(&old, &new, &[])["usr/lib/libz.so.1"], None);
    }

    #[test]
    fn unrelated_same_size_file_not_chosen() {
        let (_o, old) = disk_tree(&[("chunks/dep-1234abcd.js", &pseudo_random(100_000, 11))]);
        let (_n, new) = disk_tree(&[("chunks/dep-99887766.js", &pseudo_random(100_000, 12))]);
        assert_eq!(search(&old, &new, &[])["chunks/dep-99887766.js"], None);
    }

    #[test]
    fn config_files_neither_searched_nor_chosen() {
        let data = pseudo_random(100_000, 13);
        let (_o, old) = disk_tree(&[("etc/big-1234abcd.conf", &data)]);
        let (_n, new) = disk_tree(&[("etc/big-99887766.conf", &edited(&data, 14)), ("usr/big-99887766.conf", &data)]);
        let got = search(&old, &new, &["etc/*.conf".into()]);
        // The NEW config file gets no base; the other may not use the OLD config file.
        assert_eq!(got["etc/big-99887766.conf"], None);
        assert_eq!(got["usr/big-99887766.conf"], None);
        // Without the glob, both find it (so the glob is what keeps it out).
        let got = search(&old, &new, &[]);
        assert_eq!(got["etc/big-99887766.conf"].as_deref(), Some("etc/big-1234abcd.conf"));
        assert_eq!(got["usr/big-99887766.conf"].as_deref(), Some("etc/big-1234abcd.conf"));
    }

    #[test]
    fn most_similar_wins_deterministically() {
        let data = pseudo_random(120_000, 15);
        let closer = edited(&data, 16);
        let mut farther = pseudo_random(120_000, 17);
        farther[..60_000].copy_from_slice(&data[..60_000]);
        let (_o, old) = disk_tree(&[
            ("a/lib-11111111.so", &farther),
            ("b/lib-22222222.so", &closer),
            ("c/lib-33333333.so", &closer),
            ("d/lib-44444444.so", &data[..50_000]),
        ]);
        let (_n, new) = disk_tree(&[("z/lib-55555555.so", &data)]);
        // b and c are equally similar and of the same size: the smaller path, every time.
        for _ in 0..3 {
            assert_eq!(search(&old, &new, &[])["z/lib-55555555.so"].as_deref(), Some("b/lib-22222222.so"));
        }
    }

    #[test]
    fn small_sparse_and_elf_mismatch_not_searched() {
        let data = pseudo_random(100_000, 18);
        let mut elf = b"\x7fELF".to_vec();
        elf.extend(&data[4..]);
        let (_o, old) = disk_tree(&[
            ("x/small-1234abcd.bin", &data[..40_000]),
            ("x/prog-1234abcd", &elf),
            ("x/img-1234abcd.raw", &data),
        ]);
        let (_n, mut new) = disk_tree(&[
            ("y/small-4321abcd.bin", &data[..40_001]),
            ("y/prog-4321abcd", &data),
            ("y/img-4321abcd.raw", &data),
            ("y/disk-4321abcd.raw", &data),
        ]);
        let got = search(&old, &new, &[]);
        assert_eq!(got["y/small-4321abcd.bin"], None);
        assert_eq!(got["y/prog-4321abcd"], None);
        assert_eq!(got["y/img-4321abcd.raw"].as_deref(), Some("x/img-1234abcd.raw"));
        assert_eq!(got["y/disk-4321abcd.raw"], None);
        // A sparse NEW file is not searched, a sparse OLD file not chosen.
        let sparse = Some(vec![bundle::Extent { offset: 0, len: 100_000 }]);
        let mut o2 = old.clone();
        for t in [&mut new, &mut o2] {
            t.entries
                .iter_mut()
                .filter(|e| e.path.file_name().starts_with(b"img"))
                .for_each(|e| e.extents = sparse.clone().map(Vec::into_boxed_slice));
        }
        assert_eq!(search(&old, &new, &[])["y/img-4321abcd.raw"], None);
        let (_n2, new2) = disk_tree(&[("y/img-4321abcd.raw", &data)]);
        assert_eq!(search(&o2, &new2, &[])["y/img-4321abcd.raw"], None);
    }

    #[test]
    fn candidates_are_bounded_and_closest_in_size() {
        let mut entries: Vec<ScanEntry> = Vec::new();
        for i in 0..100u64 {
            let mut e = file(&format!("d{i}/__init__.py"), b"");
            e.size = 100_000 + i * 1000;
            entries.push(e);
        }
        let mut far = file("e/__init__.py", b"");
        far.size = 1_000_000;
        entries.push(far);
        let old = crate::diff::tests::tree(entries);
        let names = OldNames::new(&old, &[]);
        let c = names.candidates(b"__init__.py", 150_500);
        let sizes: Vec<u64> = c.iter().map(|e| e.size).collect();
        assert_eq!(sizes, [151_000, 150_000, 152_000, 149_000, 153_000, 148_000, 154_000, 147_000]);
        assert!(names.candidates(b"__init__.py", 10_000).is_empty());
        assert_eq!(names.candidates(b"__init__.py", 600_000).len(), 1);
        assert!(names.candidates(b"other.py", 150_000).is_empty());
    }
}
