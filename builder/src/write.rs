//! Encode payload frames into a temporary file, then write the bundle: manifest, signatures and
//! frames in the canonical container, to `FILE.tmp`, renamed to `FILE` only when complete.
//!
//! Frames are compressed in parallel but each one goes to the temporary file as soon as it is
//! done, so memory stays bounded by a few chunks however big the tree is; the bundle's frame
//! order is decided by the script, not by which thread finished first.

use crate::delta;
use crate::error::{Error, Result};
use crate::lzma;
use crate::progress::Progress;
use bundle::container;
use bundle::lzma::Bcj;
use bundle::{BundlePath, Extent, Frame, Hash, Limits, Method};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// One NEW file whose content is encoded into frames.
#[derive(Clone, Debug)]
pub struct PayloadJob {
    pub path: BundlePath,
    pub fs_path: PathBuf,
    /// Bytes to encode: the file's size, or a sparse file's data length.
    pub size: u64,
    pub hash: Hash,
    /// OLD file to try as delta base: bundle path, filesystem path, size.
    pub base: Option<(BundlePath, PathBuf, u64)>,
    /// A sparse file's logical size and data extents: what is encoded is its data stream (the
    /// extents' bytes, concatenated); the holes are never read.
    pub sparse: Option<(u64, Vec<Extent>)>,
    /// A gzip file encoded as its uncompressed data ([`crate::regzip`]): `fs_path`, `size` and
    /// `hash` then describe a scratch copy of the data; this is how to deflate it again, and the
    /// NEW file's own digest.
    pub regzip: Option<(bundle::Regzip, Hash)>,
}

impl PayloadJob {
    /// The digest of the NEW file this job fills.
    pub fn file_hash(&self) -> Hash {
        self.regzip.as_ref().map_or(self.hash, |r| r.1)
    }
}

/// A compressed frame stored in the temporary file.
#[derive(Clone, Debug)]
pub struct StoredFrame {
    pub offset: u64,
    pub frame: Frame,
    pub method: Method,
}

/// How a file was encoded, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Patch,
    Chunked,
    /// Part of a solid frame shared with other small files.
    Solid,
    /// A zstd-compressed bsdiff patch (ELF files).
    Bsdiff,
    /// An LZMA2 frame of its own, behind a BCJ filter for ELF files (bundle-format.md §5.2).
    Lzma,
}

/// A byte range of an encoded frame's decoded output that holds (part of) a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceRef {
    /// Index into [`Encoded::frames`].
    pub frame: usize,
    pub offset: u64,
    pub len: u64,
}

#[derive(Clone, Debug)]
pub struct EncodedFile {
    /// Pieces in file order.
    pub pieces: Vec<PieceRef>,
    pub encoding: Encoding,
}

/// Everything [`encode_all`] produced: frames in no particular order (the caller orders them by
/// first use) and, per job, the pieces that make up its content.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub frames: Vec<StoredFrame>,
    pub files: Vec<EncodedFile>,
    /// Solid zstd frames: (distinct files, bytes in, bytes out, frames).
    pub solid: (u64, u64, u64, u64),
    /// Solid LZMA2 frames, likewise.
    pub solid_lzma: (u64, u64, u64, u64),
}

/// How [`encode_all`] encodes.
#[derive(Clone, Copy, Debug)]
pub struct EncodeOptions {
    pub level: i32,
    /// Files larger than this are split into pieces of this size.
    pub chunk: u64,
    /// Largest decoded size of a solid frame; 0 disables solid frames.
    pub solid_size: u64,
}

/// Only files smaller than this go into solid frames; larger ones get a frame of their own.
///
/// Large new files share frames too: a root filesystem update that installs packages brings
/// dozens of executables of 1-16 MiB built from the same sources (git's 2 MiB helpers, the Perl
/// Encode tables): compressed one by one, the 24 such files of the rootfs-up corpus took 18.7 MB,
/// while one zstd -19 stream of them is 11.7 MB; all new-file frames of that corpus went from
/// 39.7 MiB (1 MiB / 8 MiB) to 32.4 MiB (16 MiB / 32 MiB groups).
pub const SOLID_MAX_FILE: u64 = 16 << 20;

/// Append-only store of compressed frames.
pub struct FrameStore {
    inner: Mutex<(File, u64)>,
    path_hint: PathBuf,
}

impl FrameStore {
    /// An anonymous temporary file in `dir` (next to the output, so it is on the same disk).
    pub fn new_in(dir: &Path) -> Result<FrameStore> {
        let f = tempfile::tempfile_in(dir).map_err(Error::io(dir))?;
        Ok(FrameStore { inner: Mutex::new((f, 0)), path_hint: dir.to_path_buf() })
    }

    fn append(&self, bytes: &[u8]) -> Result<u64> {
        let mut g = self.inner.lock().map_err(|_| Error::Io {
            path: self.path_hint.clone(),
            source: io::Error::other("frame store lock poisoned"),
        })?;
        let at = g.1;
        g.0.write_all(bytes).map_err(Error::io(&self.path_hint))?;
        g.1 += bytes.len() as u64;
        Ok(at)
    }

    /// A second handle of the store's file, for positioned reads and writes (encryption in
    /// place, [`crate::seal`]).
    pub fn file(&self) -> Result<File> {
        let g = self.inner.lock().map_err(|_| Error::Io {
            path: self.path_hint.clone(),
            source: io::Error::other("frame store lock poisoned"),
        })?;
        g.0.try_clone().map_err(Error::io(&self.path_hint))
    }

    fn into_file(self) -> Result<File> {
        let (f, _) = self.inner.into_inner().map_err(|_| Error::Io {
            path: self.path_hint.clone(),
            source: io::Error::other("frame store lock poisoned"),
        })?;
        Ok(f)
    }
}

/// A patch at least this many times smaller than its input is kept without trying plain zstd.
pub const PATCH_GOOD_ENOUGH: u64 = 64;
/// Level at which several candidate encodings of one file are ranked before the slow level is
/// spent on the promising ones.
pub const PROBE_LEVEL: i32 = 3;
/// A probed candidate is encoded at the full level if its probe is at most NUM/DEN of the best.
const PROBE_MARGIN_NUM: u64 = 5;
const PROBE_MARGIN_DEN: u64 = 4;
/// Between the two delta candidates of an ELF file (a zstd patch and bsdiff) the margin is
/// NUM/DEN: their full-level sizes keep the order of their probes beyond it. Measured on the 33
/// ELF files of pyext with both within 25 %: the full-level ratio bsdiff ÷ patch was the probes'
/// ratio minus 0.00-0.05 between 0.81 and 0.98 and above 1.07 past 1.13 (the exceptions: patches
/// of about 130 bytes); outside 15 % the loser took 4.5 s of the build's 23 s of CPU, 1.8 and 1.6
/// s of it the zstd patches of the two OpenBLAS libraries, which bsdiff beat by 23 %.
const DELTA_MARGIN_NUM: u64 = 23;
const DELTA_MARGIN_DEN: u64 = 20;
/// A probe at least this many times smaller than its input is kept as it is: the full level would
/// save a few hundred bytes at most, at the cost of indexing the whole base at the slow level
/// (measured on the wheels corpus: compress phase 1.32 s -> 0.97 s, bundle +512 bytes, 0.17 %).
const PROBE_ENOUGH: u64 = 1000;
/// A probe smaller than this is kept as it is too, unless the unit is cheap ([`PROBE_CHEAP`]): the
/// full level saves at most a few hundred bytes on it, but pays a pass over the whole base.
const PROBE_SMALL: u64 = 1024;
/// Units whose data and base together are at most this many bytes always get the full level:
/// level 19 takes about 1.5 ms on such a unit. Keeping their small probes cost 19 % of those
/// frames' bytes (npm corpus: 1,059 such files, 162 KB at level 3 -> 132 KB at level 19 for 1.6 s
/// of CPU, 0.9 % of the bundle; 10,000 changed 4 KiB files: compress phase 0.34 s -> 0.80 s
/// for 5 KB less).
const PROBE_CHEAP: u64 = 256 << 10;

struct Unit {
    job: usize,
    offset: u64,
    len: u64,
    /// (base path, fs path, offset, len)
    base: Option<(BundlePath, PathBuf, u64, u64)>,
    chunked: bool,
    /// If plain zstd wins, store nothing: the file goes into a solid frame.
    solid_ok: bool,
}

fn read_range(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len as usize);
    read_range_into(path, offset, len, &mut buf)?;
    Ok(buf)
}

/// [`read_range`], appending to `out`.
fn read_range_into(path: &Path, offset: u64, len: u64, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    let mut f = File::open(path).map_err(Error::io(path))?;
    f.seek(SeekFrom::Start(offset)).map_err(Error::io(path))?;
    f.take(len).read_to_end(out).map_err(Error::io(path))?;
    if (out.len() - start) as u64 != len {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank during the build"),
        });
    }
    Ok(())
}

/// Read bytes `[offset, offset + len)` of what job encodes: of the file, or of a sparse file's
/// data stream (only its data extents are read).
fn read_data(job: &PayloadJob, offset: u64, len: u64) -> Result<Vec<u8>> {
    let Some((_, x)) = &job.sparse else {
        return read_range(&job.fs_path, offset, len);
    };
    let mut out = Vec::with_capacity(len as usize);
    for (at, _, n) in bundle::sparse::place(x, &bundle::sparse::data_starts(x), offset, len) {
        out.extend_from_slice(&read_range(&job.fs_path, at, n)?);
    }
    Ok(out)
}

/// Read a whole (unchunked, so dense: a sparse file is always cut into units by
/// [`sparse_units`]) job's content and check it still has the scanned hash.
fn read_job(job: &PayloadJob) -> Result<Vec<u8>> {
    let mut data = Vec::with_capacity(job.size as usize);
    read_job_into(job, &mut data)?;
    Ok(data)
}

/// [`read_job`], appending to `out` (no buffer of its own: a solid group reads its files
/// straight into the group's buffer).
fn read_job_into(job: &PayloadJob, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    read_range_into(&job.fs_path, 0, job.size, out)?;
    if Hash::of(&out[start..]) != job.hash {
        return Err(Error::Io { path: job.fs_path.clone(), source: io::Error::other("file changed during the build") });
    }
    Ok(())
}

/// The inputs of one unit's encoding: its data, the OLD bytes it may be patched against, and
/// (once the bsdiff candidate is tried) the raw bsdiff patch.
struct UnitData {
    data: Vec<u8>,
    base: Option<Vec<u8>>,
    bsdiff_raw: Option<Vec<u8>>,
}

impl UnitData {
    /// Read unit `u` of `job` and its base.
    fn read(u: &Unit, job: &PayloadJob) -> Result<UnitData> {
        let data = if u.chunked { read_data(job, u.offset, u.len)? } else { read_job(job)? };
        let base = match &u.base {
            Some((_, bfs, off, len)) => Some(read_range(bfs, *off, *len)?),
            None => None,
        };
        Ok(UnitData { data, base, bsdiff_raw: None })
    }

    /// The data encoded with `method` at `level` (for bsdiff: the raw patch, compressed), and the
    /// method (a `BsdiffSplit` one with its streams' sizes and dictionary filled in).
    fn encode(&self, method: Method, level: i32) -> io::Result<(Vec<u8>, Method)> {
        let raw = self.bsdiff_raw.as_deref().unwrap_or_default();
        let bytes = match &method {
            Method::Patch { .. } => delta::compress(&self.data, level, self.base.as_deref())?,
            Method::Zstd => delta::compress(&self.data, level, None)?,
            Method::Bsdiff { .. } => delta::compress(raw, level, None)?,
            Method::BsdiffLzma { .. } => lzma::encode_bsdiff(raw, level)?,
            Method::BsdiffSplit { base, offset, len, .. } => {
                let (bytes, dict_log, [(control, control_size), (copy, copy_size)]) =
                    lzma::encode_bsdiff_split(raw, level)?;
                let (base, offset, len) = (base.clone(), *offset, *len);
                let m = Method::BsdiffSplit { base, offset, len, dict_log, control, control_size, copy, copy_size };
                return Ok((bytes, m));
            }
            Method::Lzma { filter, .. } => lzma::encode(&self.data, *filter)?.0,
        };
        Ok((bytes, method))
    }

    /// Check that frame `bytes` of `method` decodes back to the data (of `len` bytes) the way the
    /// applier will decode it; returns the frame's decoded size.
    fn check_frame(&self, bytes: &[u8], method: &Method, len: u64) -> io::Result<u64> {
        Ok(match method {
            Method::Zstd | Method::Patch { .. } => {
                let prefix = if matches!(method, Method::Patch { .. }) { self.base.as_deref() } else { None };
                check_decodes(delta::decodes_to(bytes, prefix, &self.data)?)?;
                len
            }
            Method::BsdiffSplit { dict_log, .. } => {
                let raw = self.bsdiff_raw.as_deref().unwrap_or_default();
                let parts @ [(control, _), (copy, _)] = method.split_parts().unwrap_or_default();
                let dec =
                    bundle::lzma::SplitDecoder::new(bytes, *dict_log, parts, raw.len() as u64, &Limits::default())?;
                let mut out = Vec::with_capacity(self.data.len());
                let base = self.base.as_deref().unwrap_or_default();
                bundle::bspatch::apply_split_stream(
                    base,
                    [control, copy],
                    dec.take(raw.len() as u64 + 1),
                    len,
                    |_, c| {
                        out.extend_from_slice(c);
                        Ok(())
                    },
                )?;
                check_decodes(out == self.data)?;
                raw.len() as u64
            }
            Method::Bsdiff { .. } | Method::BsdiffLzma { .. } => {
                let patch = match method {
                    Method::BsdiffLzma { dict_log, .. } => {
                        let raw = self.bsdiff_raw.as_deref().unwrap_or_default();
                        let dec = bundle::lzma::Decoder::new(
                            bytes,
                            Bcj::None,
                            *dict_log,
                            raw.len() as u64,
                            &Limits::default(),
                        )?;
                        let mut patch = Vec::with_capacity(raw.len());
                        dec.take(raw.len() as u64 + 1).read_to_end(&mut patch)?;
                        patch
                    }
                    _ => delta::decompress(bytes, None, 2 * BSDIFF_MAX + len)?,
                };
                let out = bundle::bspatch::apply(self.base.as_deref().unwrap_or_default(), &patch, len)
                    .map_err(io::Error::other)?;
                check_decodes(out == self.data)?;
                patch.len() as u64
            }
            Method::Lzma { filter, dict_log } => {
                let dec = bundle::lzma::Decoder::new(bytes, *filter, *dict_log, len, &Limits::default())?;
                check_decodes(delta::reads_back(dec, &self.data)?)?;
                len
            }
        })
    }
}

/// Encode one unit; `None` if plain zstd won and the unit may go into a solid frame.
fn run_unit(u: &Unit, jobs: &[PayloadJob], level: i32, store: &FrameStore) -> Result<Option<StoredFrame>> {
    let job = &jobs[u.job];
    let mut input = UnitData::read(u, job)?;
    let cerr = |source| Error::Compress { path: job.path.display(), source };
    // A file with nothing to patch against, too large for a solid frame: LZMA2 first, as for a
    // solid group (run_group), and plain zstd at the full level only if LZMA2 is not sure.
    let mut lzma_done = None;
    if u.base.is_none() && !u.chunked && !u.solid_ok {
        if let Some(probe) = lzma_probe(&input.data, level).map_err(cerr)? {
            let (l, m) = lzma_whole(&input.data).map_err(cerr)?;
            if lzma_sure(l.len(), probe) {
                let decoded = input.check_frame(&l, &m, u.len).map_err(cerr)?;
                return store_frame(store, l, decoded, m).map(Some);
            }
            lzma_done = Some((l, m));
        }
    }
    let methods = candidate_methods(u, &input.data);
    let mut cands = encode_candidates(u, &mut input, methods, level).map_err(cerr)?;
    let plain = cands.iter().filter(|c| c.1 == Method::Zstd).map(|c| c.0.len()).min();
    let Some(best) = (0..cands.len()).min_by_key(|&i| cands[i].0.len()) else {
        return Err(cerr(io::Error::other("no encoding")));
    };
    let (mut bytes, mut method) = cands.swap_remove(best);
    if method == Method::Zstd && u.solid_ok {
        return Ok(None);
    }
    let lzma = match lzma_done {
        Some(done) => Some(done),
        None => lzma_candidate(u, &input.data, bytes.len(), plain, level).map_err(cerr)?,
    };
    if let Some((l, m)) = lzma {
        if l.len() < bytes.len() {
            (bytes, method) = (l, m);
        }
    }
    let decoded = input.check_frame(&bytes, &method, u.len).map_err(cerr)?;
    store_frame(store, bytes, decoded, method).map(Some)
}

/// The LZMA2 candidate of a whole-file unit whose best other encoding is `best` bytes and whose
/// plain zstd candidate (if encoded) is `plain` bytes, if worth trying ([`lzma::worth_trying`];
/// never for a chunk of a large file, nor when a patch is already under
/// [`LZMA_PATCH_NUM`]/[`LZMA_PATCH_DEN`] of plain zstd).
fn lzma_candidate(
    u: &Unit,
    data: &[u8],
    best: usize,
    plain: Option<usize>,
    level: i32,
) -> io::Result<Option<(Vec<u8>, Method)>> {
    let patch_far_ahead =
        plain.is_some_and(|p| (best as u64).saturating_mul(LZMA_PATCH_DEN) < (p as u64).saturating_mul(LZMA_PATCH_NUM));
    if u.chunked || patch_far_ahead || !lzma::worth_trying(level, u.len, best as u64) {
        return Ok(None);
    }
    lzma_whole(data).map(Some)
}

/// LZMA2 of a whole file (no base) is not tried against a patch smaller than this fraction of the
/// file's plain zstd candidate: LZMA2 came out at 0.58-0.92 of zstd's level-3 probe on every
/// input measured, and lost to the patch on every unit with a base in the pyext, npm and
/// rootfs-up corpora (53 units; e.g. esbuild's 9.6 MB binary: bsdiff 1.12 MB, plain zstd 4.07 MB,
/// LZMA2 3.03 MB after 3 s of CPU).
const LZMA_PATCH_NUM: u64 = 1;
const LZMA_PATCH_DEN: u64 = 2;

/// The LZMA2 frame of one whole file, behind the filter of its machine code.
fn lzma_whole(data: &[u8]) -> io::Result<(Vec<u8>, Method)> {
    lzma::encode(data, lzma::frame_filter(std::iter::once(data)))
}

/// The candidate methods of unit `u` whose data is `data`: a patch against the base, plain zstd,
/// and for executables and shared objects a bsdiff patch (recompiling shifts addresses all over
/// the file, which bsdiff encodes better than a zstd patch).
fn candidate_methods(u: &Unit, data: &[u8]) -> Vec<Method> {
    let mut methods: Vec<Method> = Vec::new();
    if let Some((bp, _, off, len)) = &u.base {
        methods.push(Method::Patch { base: bp.clone(), offset: *off, len: *len });
    }
    methods.push(Method::Zstd);
    let elf = !u.chunked && data.starts_with(b"\x7fELF") && u.len <= BSDIFF_MAX;
    if let Some((bp, _, off, len)) = u.base.as_ref().filter(|b| elf && b.3 <= BSDIFF_MAX) {
        methods.push(Method::Bsdiff { base: bp.clone(), offset: *off, len: *len });
    }
    methods
}

/// Encode unit `u` with each of `methods` (in order): the candidates, as (bytes, method). Plain
/// zstd is skipped when the patch is already at least 64:1, bsdiff (the slow one) when the patch
/// is already at least PROBE_ENOUGH:1.
///
/// With several candidates at a slow level, rank them first at PROBE_LEVEL (cheap) and spend
/// the full level only on those within PROBE_MARGIN of the best probe; the probes stay
/// candidates themselves.
fn encode_candidates(
    u: &Unit,
    input: &mut UnitData,
    methods: Vec<Method>,
    level: i32,
) -> io::Result<Vec<(Vec<u8>, Method)>> {
    let full_level_for_all = methods.len() == 1 || level <= PROBE_LEVEL;
    let mut cands: Vec<(Vec<u8>, Method)> = Vec::new();
    let first_level = if full_level_for_all { level } else { PROBE_LEVEL };
    for m in methods {
        let patch_ratio_at_least =
            |r: u64| cands.first().is_some_and(|(p, _)| (p.len() as u64).saturating_mul(r) <= u.len);
        match m {
            Method::Zstd if patch_ratio_at_least(PATCH_GOOD_ENOUGH) => continue,
            Method::Bsdiff { .. } if patch_ratio_at_least(PROBE_ENOUGH) => continue,
            Method::Bsdiff { .. } => {
                input.bsdiff_raw = Some(delta::bsdiff(input.base.as_deref().unwrap_or_default(), &input.data)?)
            }
            _ => {}
        }
        cands.push(input.encode(m, first_level)?);
    }
    if !full_level_for_all {
        let best = cands.iter().map(|c| c.0.len() as u64).min().unwrap_or(0);
        // A probe already this small cannot shrink by much in absolute terms: keep it, unless the
        // full level is cheap on this unit.
        let base_len = input.base.as_ref().map_or(0, |b| b.len() as u64);
        let cheap = u.len.saturating_add(base_len) <= PROBE_CHEAP;
        let keep_probe = !cheap && (best < PROBE_SMALL || best.saturating_mul(PROBE_ENOUGH) <= u.len);
        let best_is_delta = cands.iter().find(|c| c.0.len() as u64 == best).is_some_and(|c| is_delta(&c.1));
        let contenders: Vec<Method> = cands
            .iter()
            .filter(|c| {
                let (num, den) = if best_is_delta && is_delta(&c.1) {
                    (DELTA_MARGIN_NUM, DELTA_MARGIN_DEN)
                } else {
                    (PROBE_MARGIN_NUM, PROBE_MARGIN_DEN)
                };
                !keep_probe && (c.0.len() as u64) * den <= best * num
            })
            .map(|c| c.1.clone())
            .collect();
        for m in contenders {
            let m = full_level_method(m, level, input.bsdiff_raw.as_deref());
            cands.push(input.encode(m, level)?);
        }
    }
    Ok(cands)
}

/// Whether `m` is one of the two delta candidates (a zstd patch or bsdiff against a base).
fn is_delta(m: &Method) -> bool {
    matches!(m, Method::Patch { .. } | Method::Bsdiff { .. })
}

/// The method a probed candidate `m` is encoded with at the full `level`: a bsdiff patch as
/// three LZMA2 streams (`BsdiffSplit`) at a level where LZMA2 is tried ([`lzma::MIN_LEVEL`]:
/// smaller than zstd at level 19 in a fraction of its time, [`lzma::encode_bsdiff_split`]; the
/// sizes and dictionary are [`UnitData::encode`]'s to fill in); anything else unchanged.
fn full_level_method(m: Method, level: i32, bsdiff_raw: Option<&[u8]>) -> Method {
    match (m, bsdiff_raw) {
        (Method::Bsdiff { base, offset, len }, Some(raw)) if level >= lzma::MIN_LEVEL => Method::BsdiffSplit {
            base,
            offset,
            len,
            dict_log: lzma::bsdiff_dict_log(raw.len() as u64),
            control: 0,
            control_size: 0,
            copy: 0,
            copy_size: 0,
        },
        (m, _) => m,
    }
}

/// Files (and bases) up to this size get a bsdiff candidate if they are ELF. The applier
/// applies a bsdiff patch as it decodes it (the base window and a 64 KiB buffer in memory), so
/// this bounds the builder's work, not the target's memory: the suffix array of a 32 MiB base
/// and the patch of a 32 MiB file fit two at a time in the builder's memory goal. Measured on
/// pyext's two OpenBLAS libraries (25 MB against 22 MB, renamed): bsdiff 0.97 and 1.01 MB
/// against 1.15 and 1.16 MB for the best zstd patch (level 19 on the large prefix).
pub const BSDIFF_MAX: u64 = 32 << 20;

/// An error unless a frame's check found it decodes to its input.
fn check_decodes(same: bool) -> io::Result<()> {
    if !same {
        return Err(io::Error::other("frame does not decode to its input"));
    }
    Ok(())
}

fn store_frame(store: &FrameStore, bytes: Vec<u8>, decoded: u64, method: Method) -> Result<StoredFrame> {
    let offset = store.append(&bytes)?;
    Ok(StoredFrame { offset, frame: Frame { size: bytes.len() as u64, hash: Hash::of(&bytes), decoded }, method })
}

/// Sort key of a solid candidate: similar files sit together (same extension, then same name,
/// then nearby paths), so the compressor finds their common text within its window. A gzip file
/// shipped as its data sorts by the name without `.gz` (a man page `ls.1.gz` among `.1` pages).
fn solid_key(job: &PayloadJob) -> (&[u8], &[u8], &[u8]) {
    let p = &job.path;
    let mut name = p.file_name();
    if job.regzip.is_some() {
        name = name.strip_suffix(b".gz").unwrap_or(name);
    }
    let ext = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 => &name[i + 1..],
        _ => &[][..],
    };
    (ext, name, p.as_bytes())
}

/// A solid candidate set larger than this is cut into at least two groups even when it would fit
/// one, so that two cores can compress it (measured on small files: +0.05-0.4 % in size, half
/// the wall time). Not lower: since files up to [`SOLID_MAX_FILE`] take part, a cut can separate
/// two large files that are nearly the same, and a group of 8 MiB takes about 4 s at level 19.
pub const SOLID_SPLIT_ABOVE: u64 = 8 << 20;

/// A byte range of a job's content in a solid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub job: usize,
    pub offset: u64,
    pub len: u64,
}

/// One solid frame to be: its content class and the ranges it holds, in frame order.
#[derive(Clone, Debug)]
pub struct Group {
    pub class: lzma::Class,
    pub segs: Vec<Seg>,
}

impl Group {
    fn bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.len).sum()
    }
}

/// Pack solid candidates (job indices) into groups: first split by content class
/// ([`lzma::classify`]: machine code of one BCJ filter, one kind of other ELF content, anything
/// else; an ELF file's sections go each to its kind, [`lzma::elf_parts`]), so that a frame holds
/// one kind of content and its filter suits all of it; then each class in [`solid_key`] order (a
/// file's parts in file order) into the fewest groups of at most `solid_size` decoded bytes (at
/// least two above [`SOLID_SPLIT_ABOVE`]), cut where the running total passes an equal share, so
/// groups come out about the same size. A part larger than the bound gets a group of its own.
///
/// Measured on rootfs-up: sorted by name alone, Python's `.so` extension modules sat next to
/// `.pyc` files and executables next to extension-less scripts, so 26 MB of machine code went
/// into frames without the x86 filter and text into frames with it; split by class, its solid
/// frames shrank from 30.07 to 28.77 MB (bundle 30.51 -> 29.16 MB; rootfs-up-arm64 26.66 ->
/// 25.24 MB), at the same build time; ELF files cut into parts: see [`lzma::elf_parts`].
pub fn solid_groups(jobs: &[PayloadJob], cand: Vec<usize>, solid_size: u64) -> Vec<Group> {
    let parts: Vec<Vec<(u64, u64, lzma::Class)>> =
        cand.par_iter().map(|&j| lzma::classify(&jobs[j].fs_path, jobs[j].size)).collect();
    let mut by_class: BTreeMap<lzma::Class, Vec<Seg>> = BTreeMap::new();
    for (job, parts) in cand.into_iter().zip(parts) {
        for (offset, len, class) in parts {
            by_class.entry(class).or_default().push(Seg { job, offset, len });
        }
    }
    by_class.into_iter().flat_map(|(class, segs)| pack(jobs, class, segs, solid_size)).collect()
}

/// [`solid_groups`] of one content class.
fn pack(jobs: &[PayloadJob], class: lzma::Class, mut segs: Vec<Seg>, solid_size: u64) -> Vec<Group> {
    segs.sort_by(|a, b| (solid_key(&jobs[a.job]), a.offset).cmp(&(solid_key(&jobs[b.job]), b.offset)));
    let total: u64 = segs.iter().map(|s| s.len).sum();
    let mut n = total.div_ceil(solid_size.max(1)).max(1);
    if n == 1 && total > SOLID_SPLIT_ABOVE {
        n = 2;
    }
    let share = total.div_ceil(n).max(1);
    let mut groups: Vec<Group> = Vec::new();
    let mut cur: Vec<Seg> = Vec::new();
    let mut bytes = 0u64;
    for seg in segs {
        let s = seg.len;
        if !cur.is_empty() && (bytes + s > solid_size || bytes + s / 2 > share) {
            groups.push(Group { class, segs: std::mem::take(&mut cur) });
            bytes = 0;
        }
        cur.push(seg);
        bytes += s;
    }
    if !cur.is_empty() {
        groups.push(Group { class, segs: cur });
    }
    groups
}

/// Compress one solid group into a frame: its ranges concatenated in group order, behind the
/// filter of its class.
///
/// At a level where LZMA2 is tried ([`lzma::worth_trying`], judged on a cheap zstd probe), the
/// LZMA2 frame is encoded first and zstd at the full level only when LZMA2 did not clearly beat
/// the probe ([`LZMA_SURE_NUM`]/[`LZMA_SURE_DEN`]); otherwise plain zstd at `level`.
fn run_group(group: &Group, jobs: &[PayloadJob], level: i32, store: &FrameStore) -> Result<StoredFrame> {
    let total = group.bytes();
    let mut data = Vec::with_capacity(total as usize);
    // The file a part of an ELF file was cut from, read whole to check its hash; a group's
    // parts of one file sit side by side (sorted by file, then offset), so it is read once.
    let (mut whole, mut whole_job) = (Vec::new(), None);
    for seg in &group.segs {
        let job = &jobs[seg.job];
        if seg.offset == 0 && seg.len == job.size {
            read_job_into(job, &mut data)?;
        } else {
            if whole_job != Some(seg.job) {
                whole.clear();
                read_job_into(job, &mut whole)?;
                whole_job = Some(seg.job);
            }
            let part = usize::try_from(seg.offset)
                .ok()
                .zip(usize::try_from(seg.offset + seg.len).ok())
                .and_then(|(s, e)| whole.get(s..e))
                .ok_or_else(|| Error::Io {
                    path: job.fs_path.clone(),
                    source: io::Error::other("file changed during the build"),
                })?;
            data.extend_from_slice(part);
        }
    }
    let first = group.segs.first().map_or_else(String::new, |s| jobs[s.job].path.to_string());
    let cerr = |source| Error::Compress { path: format!("solid frame starting with {first}"), source };
    let zstd_checked = |level: i32| -> io::Result<Vec<u8>> {
        let bytes = delta::compress_solid(&data, level)?;
        check_decodes(delta::decodes_to(&bytes, None, &data)?)?;
        Ok(bytes)
    };
    let Some(probe) = lzma_probe(&data, level).map_err(cerr)? else {
        let bytes = zstd_checked(level).map_err(cerr)?;
        return store_frame(store, bytes, total, Method::Zstd);
    };
    let (l, m) = lzma::encode_checked(&data, group.class.filter()).map_err(cerr)?;
    if lzma_sure(l.len(), probe) {
        return store_frame(store, l, total, m);
    }
    let bytes = zstd_checked(level).map_err(cerr)?;
    if l.len() < bytes.len() {
        return store_frame(store, l, total, m);
    }
    store_frame(store, bytes, total, Method::Zstd)
}

/// The size of a level-3 zstd probe of `data` (with a window covering it) if LZMA2 is worth
/// trying on it at `level` ([`lzma::worth_trying`], judged on the probe); `None` otherwise.
fn lzma_probe(data: &[u8], level: i32) -> io::Result<Option<u64>> {
    let len = data.len() as u64;
    if level < lzma::MIN_LEVEL || len < lzma::MIN_LEN {
        return Ok(None);
    }
    let probe = delta::solid_len(data, PROBE_LEVEL)?;
    Ok(lzma::worth_trying(level, len, probe).then_some(probe))
}

/// Whether an LZMA2 frame of `lzma_len` bytes is kept without encoding zstd at the full level,
/// against a probe of `probe` bytes ([`LZMA_SURE_NUM`]/[`LZMA_SURE_DEN`]).
fn lzma_sure(lzma_len: usize, probe: u64) -> bool {
    (lzma_len as u64).saturating_mul(LZMA_SURE_DEN) <= probe.saturating_mul(LZMA_SURE_NUM)
}

/// A solid group's (or a large new file's) LZMA2 frame at most this fraction of its level-3 zstd probe is kept without
/// encoding zstd at the full level. On rootfs-up's new files (30 MiB slices, ELF and the rest
/// apart) zstd -19 was 0.63-0.87 of the probe and LZMA2 (preset 5, 16 MiB dictionary)
/// 0.58-0.87, smaller than zstd -19 on every slice (by 0.3-12 %), while zstd -19 took 24 s
/// where LZMA2 took 19 s. What zstd's larger window can still win is long-distance repetition
/// beyond the LZMA2 dictionary, which the probe (same window) finds too: then LZMA2 stays near
/// the probe and zstd at the full level is tried.
const LZMA_SURE_NUM: u64 = 17;
const LZMA_SURE_DEN: u64 = 20;

/// Work of the compress phase: one file or chunk, or one solid frame.
enum Task<'a> {
    Unit(&'a Unit),
    Group(&'a Group),
}

enum Done {
    Unit(Result<Option<StoredFrame>>),
    Group(Result<StoredFrame>),
}

/// Run `f` on every item on rayon's threads, in order of decreasing `cost`, each thread taking
/// the next item as soon as it is done with one (longest processing time first: the largest
/// items do not end up last on one core while the others idle). Results in input order.
fn largest_first<T: Sync, R: Send>(items: &[T], cost: impl Fn(&T) -> u64, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cost(&items[i])));
    let next = AtomicUsize::new(0);
    let workers = rayon::current_num_threads().clamp(1, items.len().max(1));
    let done: Vec<Vec<(usize, R)>> = (0..workers)
        .into_par_iter()
        .map(|_| {
            let mut mine = Vec::new();
            while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                mine.push((i, f(&items[i])));
            }
            mine
        })
        .collect();
    let mut slots: Vec<Option<R>> = items.iter().map(|_| None).collect();
    for (i, r) in done.into_iter().flatten() {
        slots[i] = Some(r);
    }
    slots.into_iter().flatten().collect()
}

/// Cut the jobs into units (a whole file, or a chunk of a file larger than `opts.chunk`), except
/// the small files without a delta base: those are returned as solid candidates (job indices).
fn units_and_solid_candidates(jobs: &[PayloadJob], opts: EncodeOptions) -> (Vec<Unit>, Vec<usize>) {
    let chunk = opts.chunk.max(1);
    let solid_limit = if opts.solid_size == 0 {
        0
    } else {
        SOLID_MAX_FILE.min(opts.solid_size.saturating_add(1)).min(chunk.saturating_add(1))
    };
    let solid_ok = |size: u64| size < solid_limit;
    let mut units = Vec::new();
    let mut cand: Vec<usize> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        if let Some((_, x)) = &job.sparse {
            units.extend(sparse_units(j, job, x, chunk));
            continue;
        }
        if job.size <= chunk {
            let base = job
                .base
                .as_ref()
                .map(|(bp, bfs, blen)| (bp.clone(), bfs.clone(), 0, (*blen).min(chunk.saturating_mul(2))));
            let base = base.filter(|b| b.3 > 0);
            if base.is_none() && solid_ok(job.size) {
                cand.push(j);
                continue;
            }
            units.push(Unit { job: j, offset: 0, len: job.size, base, chunked: false, solid_ok: solid_ok(job.size) });
        } else {
            let n = job.size.div_ceil(chunk);
            for i in 0..n {
                let offset = i * chunk;
                let len = chunk.min(job.size - offset);
                let base = job.base.as_ref().filter(|(bp, _, _)| bp == &job.path).and_then(|(bp, bfs, blen)| {
                    let (o, l) = delta::chunk_base_window(i, chunk, *blen);
                    (l > 0).then(|| (bp.clone(), bfs.clone(), o, l))
                });
                units.push(Unit { job: j, offset, len, base, chunked: true, solid_ok: false });
            }
        }
    }
    (units, cand)
}

/// The units of a sparse file (job `j`, data extents `x`): runs of its data stream of at most
/// `chunk` bytes whose place in the file spans at most `chunk` bytes (consecutive extents close
/// together share a unit; a long extent is cut). Each unit's delta base is the window of the OLD
/// file around the same place, `[start - chunk/2, end + chunk/2)`, so a sparse OLD file is never
/// read beyond two chunks per unit and its data lines up with NEW's.
fn sparse_units(j: usize, job: &PayloadJob, x: &[Extent], chunk: u64) -> Vec<Unit> {
    // (data offset, data length, file start, file end)
    let mut runs: Vec<(u64, u64, u64, u64)> = Vec::new();
    let starts = bundle::sparse::data_starts(x);
    for (e, start) in x.iter().zip(starts) {
        let mut off = 0;
        while off < e.len {
            let n = (e.len - off).min(chunk);
            let (d0, l0, l1) = (start + off, e.offset + off, e.offset + off + n);
            match runs.last_mut() {
                Some(r) if l1 - r.2 <= chunk && r.1 + n <= chunk => {
                    r.1 += n;
                    r.3 = l1;
                }
                _ => runs.push((d0, n, l0, l1)),
            }
            off += n;
        }
    }
    runs.into_iter()
        .map(|(offset, len, l0, l1)| {
            let base = job.base.as_ref().and_then(|(bp, bfs, blen)| {
                let start = l0.saturating_sub(chunk / 2).min(*blen);
                let end = l1.saturating_add(chunk / 2).min(*blen);
                (end > start).then(|| (bp.clone(), bfs.clone(), start, end - start))
            });
            Unit { job: j, offset, len, base, chunked: true, solid_ok: false }
        })
        .collect()
}

impl Encoded {
    /// Add solid frame `f` holding the ranges of `group` in group order; each range's piece goes
    /// to `parts` with its offset in its file (a file's pieces are put in file order once all
    /// its frames are in, [`Encoded::place_solid`]).
    fn push_solid(&mut self, group: &Group, f: StoredFrame, parts: &mut Vec<(usize, u64, PieceRef)>) {
        let mut at = 0u64;
        for seg in &group.segs {
            parts.push((seg.job, seg.offset, PieceRef { frame: self.frames.len(), offset: at, len: seg.len }));
            at += seg.len;
        }
        let s = if matches!(f.method, Method::Lzma { .. }) { &mut self.solid_lzma } else { &mut self.solid };
        // Files counted once: by their first byte.
        s.0 += group.segs.iter().filter(|g| g.offset == 0).count() as u64;
        s.1 += f.frame.decoded;
        s.2 += f.frame.size;
        s.3 += 1;
        self.frames.push(f);
    }

    /// Give each file of the solid frames its pieces, in file order.
    fn place_solid(&mut self, mut parts: Vec<(usize, u64, PieceRef)>) {
        parts.sort_by_key(|p| (p.0, p.1));
        for (job, _, piece) in parts {
            let e = &mut self.files[job];
            if e.encoding != Encoding::Solid {
                e.pieces.clear();
                e.encoding = Encoding::Solid;
            }
            e.pieces.push(piece);
        }
    }
}

/// Encode every job: large and chunked files and files with a delta base one by one (in
/// parallel across files and chunks), the small files without a base in solid frames of at most
/// `opts.solid_size` decoded bytes, all in one queue, largest first; then the small files whose
/// patch lost to plain zstd in solid frames of their own. Memory stays bounded by a few chunks
/// or solid frames per thread.
pub fn encode_all(
    jobs: &[PayloadJob],
    opts: EncodeOptions,
    store: &FrameStore,
    progress: &Progress,
) -> Result<Encoded> {
    let (units, mut cand) = units_and_solid_candidates(jobs, opts);
    let total: u64 = units.iter().map(|u| u.len).sum::<u64>() + cand.iter().map(|&j| jobs[j].size).sum::<u64>();
    progress.begin("compress", "frames", None, Some(total));
    let run_group_counted = |g: &Group| {
        let r = run_group(g, jobs, opts.level, store);
        progress.advance(1, g.bytes());
        r
    };
    // Files with a base and large files, together with the solid frames of the small files that
    // have no base, all in one queue, largest first: a big solid frame or shared library then
    // starts at once instead of after everything else.
    let groups = solid_groups(jobs, std::mem::take(&mut cand), opts.solid_size);
    let tasks: Vec<Task> = units.iter().map(Task::Unit).chain(groups.iter().map(Task::Group)).collect();
    let done = largest_first(
        &tasks,
        |t| match t {
            Task::Unit(u) => u.len,
            Task::Group(g) => g.bytes(),
        },
        |t| match t {
            Task::Unit(u) => {
                let r = run_unit(u, jobs, opts.level, store);
                progress.advance(matches!(r, Ok(Some(_))) as u64, u.len);
                Done::Unit(r)
            }
            Task::Group(g) => Done::Group(run_group_counted(g)),
        },
    );
    let mut out = Encoded {
        frames: Vec::new(),
        files: jobs.iter().map(|_| EncodedFile { pieces: Vec::new(), encoding: Encoding::Zstd }).collect(),
        solid: (0, 0, 0, 0),
        solid_lzma: (0, 0, 0, 0),
    };
    let mut solid_done = Vec::new();
    for (t, r) in tasks.iter().zip(done) {
        match (t, r) {
            (Task::Unit(u), Done::Unit(r)) => {
                let Some(f) = r? else {
                    // Plain zstd won: compressed again in a solid frame below.
                    progress.add_total(u.len);
                    cand.push(u.job);
                    continue;
                };
                let e = &mut out.files[u.job];
                e.encoding = match (&f.method, u.chunked) {
                    (_, true) => Encoding::Chunked,
                    (Method::Patch { .. }, false) => Encoding::Patch,
                    (Method::Bsdiff { .. } | Method::BsdiffLzma { .. } | Method::BsdiffSplit { .. }, false) => {
                        Encoding::Bsdiff
                    }
                    (Method::Zstd, false) => Encoding::Zstd,
                    (Method::Lzma { .. }, false) => Encoding::Lzma,
                };
                e.pieces.push(PieceRef { frame: out.frames.len(), offset: 0, len: u.len });
                out.frames.push(f);
            }
            (Task::Group(g), Done::Group(r)) => solid_done.push(((*g).clone(), r?)),
            _ => return Err(Error::Invalid(bundle::Error::Manifest("builder bug: task results out of order".into()))),
        }
    }
    // Files whose patch lost to plain zstd: solid frames of their own.
    let late = solid_groups(jobs, cand, opts.solid_size);
    let done: Vec<Result<StoredFrame>> = late.par_iter().map(run_group_counted).collect();
    for (g, r) in late.into_iter().zip(done) {
        solid_done.push((g, r?));
    }
    let mut parts = Vec::new();
    for (g, f) in solid_done {
        out.push_solid(&g, f, &mut parts);
    }
    out.place_solid(parts);
    let stored: u64 = out.frames.iter().map(|f| f.frame.size).sum();
    progress.end_with(&format!("{} compressed", crate::progress::human_bytes(stored)));
    Ok(out)
}

fn with_suffix(p: &Path, s: &str) -> PathBuf {
    let mut o = p.as_os_str().to_owned();
    o.push(s);
    PathBuf::from(o)
}

/// Write the bundle to `out` via `out.tmp`. `frames` are (offset, size) in the store, in
/// manifest order. Returns the bundle size in bytes.
pub fn write_bundle(
    out: &Path,
    manifest: &[u8],
    signatures: &[u8],
    frames: &[(u64, u64)],
    store: FrameStore,
    progress: &Progress,
) -> Result<u64> {
    let tmp = with_suffix(out, ".tmp");
    let total = frames.iter().map(|f| f.1).sum::<u64>() + manifest.len() as u64;
    progress.begin("write", "frames", None, Some(total));
    progress.advance(0, manifest.len() as u64);
    let result = (|| -> io::Result<u64> {
        let mut src = store.into_file().map_err(|e| io::Error::other(e.to_string()))?;
        let f = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        container::write_member(&mut w, container::MANIFEST_NAME, manifest)?;
        container::write_member(&mut w, container::SIGNATURES_NAME, signatures)?;
        let sizes: Vec<u64> = frames.iter().map(|f| f.1).collect();
        container::write_payload(&mut w, &sizes, |w, i| {
            let (offset, size) = frames[i];
            src.seek(SeekFrom::Start(offset))?;
            let n = io::copy(&mut (&mut src).take(size), w)?;
            if n != size {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "temporary frame file is short"));
            }
            progress.advance(1, size);
            Ok(())
        })?;
        container::finish(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let len = f.metadata()?.len();
        drop(f);
        fs::rename(&tmp, out)?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(len)
    })();
    progress.end();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        Error::Write { path: out.to_path_buf(), source }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_sparse_file_with_base() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let new = d.path().join("new");
        let old = d.path().join("old");
        let chunk = 64 << 10;
        {
            let f = File::create(&new)?;
            f.set_len(5 * chunk + 123)?;
            let mut f = fs::OpenOptions::new().write(true).open(&new)?;
            f.seek(SeekFrom::Start(2 * chunk + 7))?;
            f.write_all(b"changed bytes in the middle")?;
            let g = File::create(&old)?;
            g.set_len(5 * chunk)?;
        }
        let job = PayloadJob {
            path: BundlePath::new("f")?,
            fs_path: new.clone(),
            size: 5 * chunk + 123,
            hash: crate::scan::hash_file(&new)?,
            base: Some((BundlePath::new("f")?, old.clone(), 5 * chunk)),
            sparse: None,
            regzip: None,
        };
        let store = FrameStore::new_in(d.path())?;
        let opts = EncodeOptions { level: 3, chunk, solid_size: 8 << 20 };
        let enc = encode_all(std::slice::from_ref(&job), opts, &store, &Progress::silent())?;
        assert_eq!(enc.files[0].encoding, Encoding::Chunked);
        assert_eq!(enc.files[0].pieces.len(), 6);
        let mut file = store.into_file()?;
        let mut rebuilt = Vec::new();
        let oldb = fs::read(&old)?;
        for (i, pr) in enc.files[0].pieces.iter().enumerate() {
            let f = &enc.frames[pr.frame];
            let bytes = read_stored(&mut file, f)?;
            assert_eq!(Hash::of(&bytes), f.frame.hash);
            let prefix = match &f.method {
                Method::Patch { offset, len, .. } => {
                    assert_eq!((*offset, *len), delta::chunk_base_window(i as u64, chunk, 5 * chunk));
                    Some(&oldb[*offset as usize..(*offset + *len) as usize])
                }
                _ => None,
            };
            rebuilt.extend(delta::decompress(&bytes, prefix, f.frame.decoded)?);
        }
        assert_eq!(rebuilt, fs::read(&new)?);
        Ok(())
    }

    fn job(dir: &Path, name: &str, content: &[u8]) -> Result<PayloadJob, Box<dyn std::error::Error>> {
        let fs_path = dir.join(name.replace('/', "_"));
        fs::write(&fs_path, content)?;
        Ok(PayloadJob {
            path: BundlePath::new(name)?,
            fs_path,
            size: content.len() as u64,
            hash: Hash::of(content),
            base: None,
            sparse: None,
            regzip: None,
        })
    }

    #[test]
    fn solid_groups_sort_by_extension_and_respect_the_bound() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let jobs = vec![
            job(d.path(), "b/x.txt", &[1; 3000])?,
            job(d.path(), "a/y.c", &[2; 3000])?,
            job(d.path(), "a/x.txt", &[3; 3000])?,
            job(d.path(), "Makefile", &[4; 3000])?,
            job(d.path(), "z/.hidden", &[5; 3000])?,
        ];
        let g = solid_groups(&jobs, (0..jobs.len()).collect(), 6000);
        let names = group_names(&jobs, &g);
        // No extension first (by name), then .c, then .txt (by name, then path).
        assert_eq!(names, [vec!["z/.hidden", "Makefile"], vec!["a/y.c", "a/x.txt"], vec!["b/x.txt"]]);
        // A file larger than the bound gets a group of its own.
        let g = solid_groups(&jobs, vec![0, 1], 100);
        assert_eq!(g.len(), 2);
        Ok(())
    }

    /// The compressed bytes of stored frame `f` from the store's `file`.
    fn read_stored(file: &mut File, f: &StoredFrame) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; f.frame.size as usize];
        file.seek(SeekFrom::Start(f.offset))?;
        file.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// The paths of each group's ranges.
    fn group_names(jobs: &[PayloadJob], g: &[Group]) -> Vec<Vec<String>> {
        g.iter().map(|g| g.segs.iter().map(|s| jobs[s.job].path.display()).collect()).collect()
    }

    #[test]
    fn solid_groups_keep_machine_code_apart() -> Result<(), Box<dyn std::error::Error>> {
        let Ok(native) = fs::read("/usr/bin/ls") else { return Ok(()) };
        let parts = lzma::elf_parts(&native);
        let Some(code) = parts.iter().map(|p| p.2).find(|c| matches!(c, lzma::Class::Code(_))) else {
            eprintln!("/usr/bin/ls is not ELF code here: classes not checked");
            return Ok(());
        };
        let d = tempfile::tempdir()?;
        // Sorted by name alone, the program would sit between the two scripts.
        let jobs = vec![
            job(d.path(), "bin/a", b"#!/bin/sh\necho a\n")?,
            job(d.path(), "bin/b", &native)?,
            job(d.path(), "bin/c", b"#!/bin/sh\necho c\n")?,
            job(d.path(), "lib/d.so", &[0x7f, b'E', b'L', b'F'])?,
        ];
        let g = solid_groups(&jobs, (0..jobs.len()).collect(), 32 << 20);
        // Text (and a truncated ELF header, which is not ELF) first, then the program's parts by
        // kind, its code last, each group behind the filter of its class.
        let names = group_names(&jobs, &g);
        assert_eq!(names[0], ["bin/a", "bin/c", "lib/d.so"]);
        assert!(names[1..].iter().flatten().all(|n| n == "bin/b"), "{names:?}");
        let classes: Vec<lzma::Class> = g.iter().map(|g| g.class).collect();
        let mut want: Vec<lzma::Class> = parts.iter().map(|p| p.2).collect();
        want.sort();
        want.dedup();
        want.insert(0, lzma::Class::Other);
        assert_eq!(classes, want);
        assert_eq!(classes.last(), Some(&code));
        // The program's parts tile it, each group's in file order.
        let mut segs: Vec<Seg> = g[1..].iter().flat_map(|g| g.segs.iter().copied()).collect();
        assert!(g.iter().all(|g| g.segs.windows(2).all(|w| w[0].job != w[1].job || w[0].offset < w[1].offset)));
        segs.sort_by_key(|s| s.offset);
        assert!(segs.windows(2).all(|w| w[0].offset + w[0].len == w[1].offset));
        assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), native.len() as u64);

        // Encoded and placed, the program's pieces come back in file order and give it back.
        let store = FrameStore::new_in(d.path())?;
        let opts = EncodeOptions { level: 19, chunk: 64 << 20, solid_size: 32 << 20 };
        let enc = encode_all(&jobs, opts, &store, &Progress::silent())?;
        let b = &enc.files[1];
        assert_eq!(b.encoding, Encoding::Solid);
        assert_eq!(b.pieces.len(), parts.len());
        assert_eq!(enc.solid.0 + enc.solid_lzma.0, jobs.len() as u64);
        let mut file = store.into_file()?;
        let mut got = Vec::new();
        for p in &b.pieces {
            let f = &enc.frames[p.frame];
            let bytes = read_stored(&mut file, f)?;
            let decoded = match f.method {
                Method::Lzma { filter, dict_log } => {
                    bundle::lzma::decode(&bytes, filter, dict_log, f.frame.decoded, &Limits::default())?
                }
                _ => zstd::decode_all(&bytes[..])?,
            };
            got.extend_from_slice(&decoded[p.offset as usize..(p.offset + p.len) as usize]);
        }
        assert!(got == native, "the program's pieces do not give it back");
        Ok(())
    }

    #[test]
    fn solid_groups_are_balanced_and_split_above_the_threshold() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let n = 2 * SOLID_SPLIT_ABOVE / 100_000 + 3;
        let jobs =
            (0..n).map(|i| job(d.path(), &format!("f{i:03}.bin"), &[0; 100_000])).collect::<Result<Vec<_>, _>>()?;
        // Everything fits one 32 MiB group, but it is more than SOLID_SPLIT_ABOVE: two halves.
        let g = solid_groups(&jobs, (0..jobs.len()).collect(), 32 << 20);
        let sizes: Vec<usize> = g.iter().map(|g| g.segs.len()).collect();
        assert_eq!(sizes.len(), 2);
        assert!(sizes[0].abs_diff(sizes[1]) <= 1, "{sizes:?}");
        // Below the threshold: one group.
        assert_eq!(solid_groups(&jobs, (0..10).collect(), 32 << 20).len(), 1);
        // 4.4 MB in groups of at most 2 MB: three of about 1.47 MB, not 2 + 2 + 0.4.
        let g = solid_groups(&jobs, (0..44).collect(), 2_000_000);
        let sizes: Vec<usize> = g.iter().map(|g| g.segs.len()).collect();
        assert_eq!(sizes.len(), 3);
        assert!(sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1, "{sizes:?}");
        Ok(())
    }

    #[test]
    fn largest_first_runs_everything_and_keeps_input_order() {
        let items: Vec<u64> = (0..200).map(|i| (i * 7919) % 1000).collect();
        let out = largest_first(&items, |&x| x, |&x| x * 2);
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert!(largest_first(&[] as &[u64], |&x| x, |&x| x).is_empty());
    }

    /// A small changed file whose level-3 patch is under PROBE_SMALL still gets the full level
    /// (it and its base are under PROBE_CHEAP): its frame is the level-19 patch.
    #[test]
    fn cheap_units_get_the_full_level() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let line = |i: usize| format!("export function f{i}(a, b) {{ return a * {i} + b - {}; }}\n", i * 7 % 13);
        let oldtext: String = (0..300).map(line).collect();
        let newtext = oldtext.replacen("return a * 1", "return (a|0) * 1", 12).replacen("+ b -", "+ b + 1 -", 30);
        let old = d.path().join("old.js");
        fs::write(&old, &oldtext)?;
        let mut j = job(d.path(), "lib/x.js", newtext.as_bytes())?;
        j.base = Some((BundlePath::new("lib/x.js")?, old, oldtext.len() as u64));
        let probe = delta::compress(newtext.as_bytes(), PROBE_LEVEL, Some(oldtext.as_bytes()))?;
        let full = delta::compress(newtext.as_bytes(), 19, Some(oldtext.as_bytes()))?;
        assert!((probe.len() as u64) < PROBE_SMALL && full.len() < probe.len(), "{} {}", probe.len(), full.len());
        let store = FrameStore::new_in(d.path())?;
        let opts = EncodeOptions { level: 19, chunk: 1 << 20, solid_size: 0 };
        let enc = encode_all(std::slice::from_ref(&j), opts, &store, &Progress::silent())?;
        assert_eq!(enc.frames.len(), 1);
        assert!(matches!(enc.frames[0].method, Method::Patch { .. }));
        assert_eq!(enc.frames[0].frame.size, full.len() as u64);
        Ok(())
    }

    /// At a level where LZMA2 is tried, a bsdiff candidate is encoded as split LZMA2 streams
    /// (dictionary within the bsdiff bound, sizes filled in by the encoding); below it, and for
    /// every other method, the method stays.
    #[test]
    fn bsdiff_goes_to_lzma_at_high_levels() {
        let base = BundlePath::new("bin/x").expect("path");
        let m = Method::Bsdiff { base: base.clone(), offset: 0, len: 10 };
        let big = vec![0u8; 50 << 20];
        let split = |dict_log| Method::BsdiffSplit {
            base: base.clone(),
            offset: 0,
            len: 10,
            dict_log,
            control: 0,
            control_size: 0,
            copy: 0,
            copy_size: 0,
        };
        assert_eq!(full_level_method(m.clone(), 19, Some(&big)), split(lzma::BSDIFF_MAX_DICT_LOG));
        assert_eq!(full_level_method(m.clone(), lzma::MIN_LEVEL, Some(&big[..5000])), split(13));
        assert_eq!(full_level_method(m.clone(), lzma::MIN_LEVEL - 1, Some(&big)), m);
        let p = Method::Patch { base, offset: 0, len: 10 };
        assert_eq!(full_level_method(p.clone(), 19, None), p);
        assert_eq!(full_level_method(Method::Zstd, 19, None), Method::Zstd);
    }

    /// A split bsdiff frame carries its streams' sizes, and decodes back (the applier's way) to
    /// the patch, whose records give the new file.
    #[test]
    fn split_bsdiff_frames_carry_their_sizes_and_decode_back() -> io::Result<()> {
        let old = pseudo(200_000);
        let mut new = old.clone();
        for i in (1000..150_000).step_by(64) {
            new[i] = new[i].wrapping_add(3);
        }
        new.splice(90_000..90_000, b"a literal run the base does not have".repeat(20));
        let raw = delta::bsdiff(&old, &new)?;
        let base = BundlePath::new("lib/x.so").expect("path");
        let m = full_level_method(Method::Bsdiff { base, offset: 0, len: old.len() as u64 }, 19, Some(&raw));
        let input = UnitData { data: new.clone(), base: Some(old), bsdiff_raw: Some(raw.clone()) };
        let (bytes, m) = input.encode(m, 19)?;
        let [control, _, copy] = bundle::bspatch::split(&raw);
        let Method::BsdiffSplit { control: c, copy: l, control_size, copy_size, .. } = m else {
            panic!("{m:?}");
        };
        assert_eq!((c, l), (control.len() as u64, copy.len() as u64));
        assert!(copy.len() >= 700, "the inserted run is a literal");
        assert!(control_size + copy_size < bytes.len() as u64);
        assert_eq!(input.check_frame(&bytes, &m, new.len() as u64)?, raw.len() as u64);
        // A frame whose streams do not match the method fails the check.
        let mut bad = m.clone();
        if let Method::BsdiffSplit { control_size, .. } = &mut bad {
            *control_size += 1;
        }
        assert!(input.check_frame(&bytes, &bad, new.len() as u64).is_err());
        Ok(())
    }

    /// LZMA2 of a whole file is not tried against a patch already under half of plain zstd; it
    /// is when the patch is not that far ahead, or when there is no plain candidate to judge by.
    #[test]
    fn lzma_not_tried_against_a_patch_far_ahead() -> io::Result<()> {
        let data: Vec<u8> = (0..64 << 10).map(|i: u32| (i % 251) as u8 ^ (i / 4096) as u8).collect();
        let u = Unit { job: 0, offset: 0, len: data.len() as u64, base: None, chunked: false, solid_ok: false };
        let best = 5_000; // over 1/16 of the input: lzma::worth_trying agrees
        assert!(lzma::worth_trying(19, u.len, best as u64));
        assert!(lzma_candidate(&u, &data, best, Some(2 * best + 1), 19)?.is_none());
        assert!(lzma_candidate(&u, &data, best, Some(2 * best), 19)?.is_some());
        assert!(lzma_candidate(&u, &data, best, None, 19)?.is_some());
        Ok(())
    }

    #[test]
    fn small_files_share_solid_frames() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let text = |i: usize| format!("line {i} of a config file\nkey = value {i}\n").repeat(40);
        let mut jobs = Vec::new();
        for i in 0..20 {
            jobs.push(job(d.path(), &format!("etc/f{i:02}.conf"), text(i).as_bytes())?);
        }
        // A file with a base whose patch loses to plain zstd also goes solid.
        let other = d.path().join("unrelated-old");
        fs::write(&other, pseudo(5000))?;
        let mut j = job(d.path(), "etc/zz.conf", text(99).as_bytes())?;
        j.base = Some((BundlePath::new("old")?, other, 5000));
        jobs.push(j);
        let store = FrameStore::new_in(d.path())?;
        let opts = EncodeOptions { level: 3, chunk: 1 << 20, solid_size: 16 << 10 };
        let enc = encode_all(&jobs, opts, &store, &Progress::silent())?;
        assert!(enc.files.iter().all(|f| f.encoding == Encoding::Solid));
        let total: u64 = jobs.iter().map(|j| j.size).sum();
        assert_eq!(enc.solid.0, jobs.len() as u64);
        assert_eq!(enc.solid.1, total);
        assert_eq!(enc.solid.3, enc.frames.len() as u64);
        assert!(enc.frames.len() > 1 && enc.frames.iter().all(|f| f.frame.decoded <= 16 << 10));
        let mut file = store.into_file()?;
        let decoded: Vec<Vec<u8>> = enc
            .frames
            .iter()
            .map(|f| delta::decompress(&read_stored(&mut file, f)?, None, f.frame.decoded))
            .collect::<io::Result<_>>()?;
        for (j, f) in jobs.iter().zip(&enc.files) {
            let p = f.pieces[0];
            let got = &decoded[p.frame][p.offset as usize..(p.offset + p.len) as usize];
            assert_eq!(Hash::of(got), j.hash, "{}", j.path);
        }
        // Without solid frames: one frame per file.
        let store = FrameStore::new_in(d.path())?;
        let enc = encode_all(&jobs, EncodeOptions { solid_size: 0, ..opts }, &store, &Progress::silent())?;
        assert_eq!(enc.frames.len(), jobs.len());
        assert!(enc.files.iter().all(|f| f.encoding == Encoding::Zstd));
        Ok(())
    }

    /// An x86-64 ELF header (without sections) and `n` bytes in all of calls (e8 rel32) to a few
    /// functions between runs of other instructions.
    fn elf_code(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; 64];
        v[..4].copy_from_slice(b"\x7fELF");
        (v[4], v[5], v[18]) = (2, 1, 62);
        let mut x = seed.wrapping_mul(6364136223846793005) | 1;
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 3 {
                0 => {
                    let rel = (0x1000 + (x >> 8) % 32 * 0x40) as i64 - v.len() as i64 - 5;
                    v.push(0xe8);
                    v.extend_from_slice(&(rel as i32).to_le_bytes());
                }
                _ => v.extend_from_slice(
                    &[0x48, 0x89, 0xe5, (x >> 20) as u8 & 7, 0x83, 0xec][..2 + (x >> 30) as usize % 5],
                ),
            }
        }
        v.truncate(n);
        v
    }

    #[test]
    fn machine_code_gets_lzma_frames() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let mut jobs = vec![job(d.path(), "bin/big", &elf_code(1_500_000, 1))?];
        for i in 0..6 {
            jobs.push(job(d.path(), &format!("lib/l{i}.so"), &elf_code(60_000, 10 + i))?);
        }
        // Random bytes: never LZMA2 (incompressible), and a tiny file: never tried.
        jobs.push(job(d.path(), "noise", &pseudo(1_200_000))?);
        jobs.push(job(d.path(), "tiny", &elf_code(5000, 3))?);
        let store = FrameStore::new_in(d.path())?;
        // Solid groups of at most 1 MiB: the two files over it get frames of their own.
        let opts = EncodeOptions { level: 12, chunk: 64 << 20, solid_size: 1 << 20 };
        let enc = encode_all(&jobs, opts, &store, &Progress::silent())?;
        let encodings: Vec<Encoding> = enc.files.iter().map(|f| f.encoding).collect();
        assert_eq!(encodings[0], Encoding::Lzma);
        assert_eq!(encodings[7], Encoding::Zstd);
        assert!(encodings[1..7].iter().all(|e| *e == Encoding::Solid));
        assert_eq!((enc.solid_lzma.0, enc.solid_lzma.3), (7, 1), "{:?} {:?}", enc.solid, enc.solid_lzma);
        let mut file = store.into_file()?;
        for (j, f) in jobs.iter().zip(&enc.files) {
            let p = f.pieces[0];
            let sf = &enc.frames[p.frame];
            let bytes = read_stored(&mut file, sf)?;
            let out = match sf.method {
                // The headers are not of real ELF files (no code sections): no filter.
                Method::Lzma { filter, dict_log } => {
                    assert_eq!(filter, bundle::lzma::Bcj::None, "{}", j.path);
                    bundle::lzma::decode(&bytes, filter, dict_log, sf.frame.decoded, &Limits::default())?
                }
                _ => delta::decompress(&bytes, None, sf.frame.decoded)?,
            };
            assert_eq!(Hash::of(&out[p.offset as usize..(p.offset + p.len) as usize]), j.hash, "{}", j.path);
        }
        Ok(())
    }

    /// Pseudo-random bytes from a fixed seed.
    fn pseudo(n: usize) -> Vec<u8> {
        crate::delta::tests::pseudo_random(n, 0x9e3779b97f4a7c15)
    }
}
