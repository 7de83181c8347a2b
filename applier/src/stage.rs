//! Staging: every NEW object the commit will rename into place is created in a work directory on
//! its destination's filesystem — decoded from the bundle's frames (plain or patched against the
//! OLD file), copied from an OLD file, or made (symlink, directory, FIFO, device, hardlink) — given
//! its final owner, mode and mtime, verified against the manifest's hash, and made durable with
//! one `syncfs` per filesystem. The live tree is only read.
//!
//! The bundle is read once, in order, on one thread (it may be a stream: a USB stick, stdin, a
//! split set), and every frame's hash is checked as it is read. Small frames (at most 8 MiB, and
//! 16 MiB decoded plus delta base) are then decoded by up to four threads, each writing its
//! pieces with positioned writes into staged files created beforehand; larger frames are decoded
//! on the reading thread as they stream in. Memory stays at a few small frames per thread.
//! Hashing — of slots an interrupted run left, and of every written file before it counts as
//! staged — is independent per file and runs in parallel too ([`crate::par`]).

use crate::error::{Ctx, Error, Result};
use crate::fsx;
use crate::txn::{staged_name, Txn};
use bundle::container::Reader;
use bundle::{Content, Entry, Kind, Limits, Method, Op};
use rustix::fs::FileType;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StageReport {
    /// Objects staged by this run.
    pub objects: usize,
    /// Files already staged and verified by an interrupted run, kept.
    pub reused: usize,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Bytes needed in staging, per filesystem (device number).
    pub needed: BTreeMap<u64, u64>,
}

/// Entries (by index) with a staged object, in script order: every placed entry, and every file
/// whose permission-raising metadata change is done by a staged copy
/// ([`crate::commit::setmeta_by_copy`]).
pub fn placed_entries(m: &bundle::Manifest, owners: bool) -> Vec<usize> {
    crate::commit::staged_entries(m, owners)
}

fn file_size(e: &Entry) -> u64 {
    match &e.kind {
        Kind::File { size, .. } => *size,
        _ => 0,
    }
}

/// Stage everything. `bundle` is needed only if some frame content is not yet staged.
pub fn stage(
    root: BorrowedFd<'_>,
    txn: &mut Txn,
    bundle: Option<&Path>,
    limits: &Limits,
    owners: bool,
    progress: bool,
) -> Result<StageReport> {
    let m = txn.head.manifest.clone();
    let placed = placed_entries(&m, owners);
    let mut rep = StageReport::default();
    let mut work_of: HashMap<usize, usize> = HashMap::new();
    let mut dirs = fsx::DirCache::default();
    for &i in &placed {
        let dev = txn.work_for(root, &mut dirs, &m.entries[i].path, true)?.dev;
        let w = txn
            .works
            .iter()
            .position(|w| w.dev == dev)
            .ok_or_else(|| Error::Internal("work directory vanished".into()))?;
        work_of.insert(i, w);
    }
    // A deletion moves the OLD entry into the backup area of its filesystem: create (and journal)
    // that work directory now too, or a bundle that only deletes there has none at commit time.
    for s in m.script.iter().filter(|s| s.op == Op::Delete) {
        txn.work_for(root, &mut dirs, &s.path, true)?;
    }
    fn stage_fd<'t>(txn: &'t Txn, work_of: &HashMap<usize, usize>, i: usize) -> Result<BorrowedFd<'t>> {
        let w = work_of.get(&i).ok_or_else(|| Error::Internal(format!("entry {i} has no work directory")))?;
        Ok(txn.works[*w].stage.as_fd())
    }

    // Keep what an interrupted run already staged and verified; remove anything else.
    // What is in a slot: nothing (None), a verified file (Some(true)), anything else (Some(false)).
    let shared: &Txn = txn;
    let found = crate::par::map(&placed, |&i| -> Result<Option<bool>> {
        let e = &m.entries[i];
        let sd = stage_fd(shared, &work_of, i)?;
        let name = staged_name(i);
        let Some(st) = fsx::lstat_at(sd, &name).ctx("stat staged", &e.path)? else { return Ok(None) };
        if let Kind::File { size, hash, .. } = &e.kind {
            if fsx::file_type(&st) == FileType::RegularFile && st.st_size as u64 == *size {
                let f = fsx::open_file_at(sd, &name).ctx("open staged", &e.path)?;
                return Ok(Some(crate::base::hash_reader(f).ctx("read staged", &e.path)?.0 == *hash));
            }
        }
        Ok(Some(false))
    });
    let mut done: HashSet<usize> = HashSet::new();
    for (&i, found) in placed.iter().zip(found) {
        match found? {
            None => {}
            Some(true) => {
                done.insert(i);
                rep.reused += 1;
            }
            Some(false) => fsx::remove_tree_at(stage_fd(txn, &work_of, i)?, &staged_name(i))
                .ctx("remove stale staged", &m.entries[i].path)?,
        }
    }

    // Free space, per filesystem, before writing anything.
    for &i in &placed {
        if !done.contains(&i) {
            let w = work_of[&i];
            *rep.needed.entry(txn.works[w].dev).or_default() += file_size(&m.entries[i]);
        }
    }
    for (dev, need) in &rep.needed {
        let w = txn
            .works
            .iter()
            .find(|w| w.dev == *dev)
            .ok_or_else(|| Error::Internal("work directory vanished".into()))?;
        let avail = fsx::free_bytes(w.stage.as_fd()).ctx("statvfs", "work directory")?;
        let need_margin = need + need / 100 + (1 << 20);
        if need_margin > avail {
            return Err(Error::NoSpace { need: need_margin, avail, path: format!("work directory on device {dev}") });
        }
    }

    // Frame content.
    let mut targets: Vec<Vec<(u64, u64, u64, usize)>> = vec![Vec::new(); m.frames.len()]; // (piece offset, len, file offset, entry)
                                                                                          // The files frames fill (not already staged).
    let mut fill: Vec<usize> = Vec::new();
    for &i in &placed {
        if done.contains(&i) {
            continue;
        }
        if let Kind::File { content: Content::Pieces(ps), .. } = &m.entries[i].kind {
            let mut at = 0u64;
            for p in ps {
                targets[p.frame as usize].push((p.offset, p.len, at, i));
                at += p.len;
            }
            fill.push(i);
        }
    }
    let mut written: Vec<usize> = Vec::new();
    if !fill.is_empty() {
        let path = bundle.ok_or_else(|| {
            Error::Pending("staging was interrupted and the bundle is needed to finish it; pass it with --bundle or put it back where it was".into())
        })?;
        let src = crate::source::open(path)?;
        let mut r = Reader::new(src.reader, limits.clone());
        let h = crate::verify::head(&mut r, None, limits).map_err(crate::source::explain)?;
        if h.id != txn.head.id {
            return Err(Error::Pending(format!("{} is not the bundle of the interrupted apply", path.display())));
        }
        // Every staged file that frames fill exists before any frame is decoded: decoding runs
        // on several threads, and one file's pieces may come from several frames.
        for &ei in &fill {
            let path = &m.entries[ei].path;
            fsx::create_file_at(stage_fd(txn, &work_of, ei)?, &staged_name(ei)).ctx("create staged", path)?;
            crate::failpoint::may_fail("stage-create").ctx("create staged", path)?;
        }
        let total: u64 = m.frames.iter().map(|f| f.size).sum();
        let mut prog = crate::progress::Progress::new("stage", "frames", m.frames.len() as u64, total, progress);
        let shared: &Txn = txn;
        let ctx = FrameCtx { root, txn: shared, work_of: &work_of, m: &m, limits };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(DECODE_THREADS);
        let failed: std::sync::Mutex<Vec<(usize, Error)>> = std::sync::Mutex::new(Vec::new());
        let decoded_bytes = std::sync::atomic::AtomicU64::new(0);
        let (tx, rx) = std::sync::mpsc::sync_channel::<FrameJob>(threads);
        let rx = std::sync::Mutex::new(rx);
        let main_err: Option<(usize, Error)> = std::thread::scope(|sc| {
            // Dropped when this closure returns, which lets the decoding threads finish.
            let tx = tx;
            if threads > 1 {
                for _ in 0..threads {
                    sc.spawn(|| {
                        let mut dirs = fsx::DirCache::default();
                        loop {
                            let job = match rx.lock() {
                                Ok(q) => q.recv(),
                                Err(_) => return,
                            };
                            let Ok(job) = job else { return };
                            match ctx.decode(&mut dirs, &job.bytes[..], job.fi, &job.targets) {
                                Ok(n) => {
                                    decoded_bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                                }
                                Err(e) => {
                                    if let Ok(mut f) = failed.lock() {
                                        f.push((job.fi, e));
                                    }
                                }
                            }
                        }
                    });
                }
            }
            let mut read = 0u64;
            for (fi, f) in m.frames.iter().enumerate() {
                prog.tick(fi as u64, read);
                read += f.size;
                if failed.lock().map_or(true, |v| !v.is_empty()) {
                    break; // a decoder failed: stop reading; its error is reported below
                }
                let t = std::mem::take(&mut targets[fi]);
                if t.is_empty() {
                    if let Err(e) = r.check_frame(&m.frames, fi) {
                        return Some((fi, crate::source::explain(e.into())));
                    }
                    continue;
                }
                let base_len = ctx.method(fi, &t).as_ref().and_then(base_window).map_or(0, |(_, _, len)| len);
                let small = f.size <= PAR_FRAME_MAX && f.decoded.saturating_add(base_len) <= PAR_DECODE_MAX;
                let staged: Result<()> = (|| {
                    let mut fr = r.frame(&m.frames, fi)?;
                    if threads > 1 && small {
                        // Read (and hash-check) the whole frame here; a worker decodes it.
                        let mut bytes = Vec::with_capacity(f.size as usize);
                        fr.read_to_end(&mut bytes)
                            .map_err(|e| bundle::Error::FrameDecode { index: fi as u32, what: e.to_string() })?;
                        fr.finish().map_err(|e| crate::source::explain(e.into()))?;
                        tx.send(FrameJob { fi, bytes, targets: t })
                            .map_err(|_| Error::Internal("frame decoders stopped".into()))?;
                    } else {
                        let n = ctx.decode(&mut dirs, &mut fr, fi, &t)?;
                        decoded_bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        fr.finish().map_err(|e| crate::source::explain(e.into()))?;
                    }
                    Ok(())
                })();
                if let Err(e) = staged {
                    return Some((fi, e));
                }
                crate::failpoint::hit("stage-frame");
            }
            prog.finish(m.frames.len() as u64, read);
            None
        });
        // The first failure in frame order, as a sequential run would have reported it.
        let mut errs = failed.into_inner().unwrap_or_default();
        errs.extend(main_err);
        if let Some((_, e)) = errs.into_iter().min_by_key(|(fi, _)| *fi) {
            return Err(e);
        }
        rep.bytes += decoded_bytes.into_inner();
        r.end().map_err(|e| crate::source::explain(e.into()))?;
        // Every frame was decoded: every file they fill is complete.
        written.extend_from_slice(&fill);
    }
    let from_frames: HashSet<usize> = written.iter().copied().collect();

    // Everything else: empty files, local copies, symlinks, directories, special files, links.
    for &i in &placed {
        if done.contains(&i) || from_frames.contains(&i) {
            continue;
        }
        let e = &m.entries[i];
        let sd = stage_fd(txn, &work_of, i)?;
        let name = staged_name(i);
        match &e.kind {
            Kind::File { content: Content::Empty, .. } => {
                fsx::create_file_at(sd, &name).ctx("create staged", &e.path)?;
                written.push(i);
            }
            Kind::File { content: Content::Copy { from }, size, .. } => {
                rep.bytes += copy_local(root, &mut dirs, from, None, *size, sd, &name, &e.path)?;
                written.push(i);
            }
            Kind::File { content: Content::Unchanged, size, .. } => {
                // A permission-raising metadata change: a copy of the live file (the inode the
                // base check verified), given the new metadata and exchanged in by the commit.
                let base = txn.base_ids.get(&e.path).map(|&(d, i, _)| (d, i));
                rep.bytes += copy_local(root, &mut dirs, &e.path, base, *size, sd, &name, &e.path)?;
                written.push(i);
            }
            Kind::File { .. } => return Err(Error::Internal(format!("{}: file content not staged", e.path))),
            Kind::Dir => fsx::mkdir_at(sd, &name, 0o700).ctx("stage directory", &e.path)?,
            Kind::Symlink { target } => fsx::symlink_at(target, sd, &name).ctx("stage symlink", &e.path)?,
            Kind::Fifo => fsx::mknod_at(sd, &name, FileType::Fifo, e.meta.mode, 0).ctx("stage fifo", &e.path)?,
            Kind::CharDev { rdev } => {
                fsx::mknod_at(sd, &name, FileType::CharacterDevice, e.meta.mode, *rdev).ctx("stage device", &e.path)?
            }
            Kind::BlockDev { rdev } => {
                fsx::mknod_at(sd, &name, FileType::BlockDevice, e.meta.mode, *rdev).ctx("stage device", &e.path)?
            }
            Kind::Hardlink { primary } => {
                let pi = m
                    .entries
                    .binary_search_by(|x| x.path.cmp(primary))
                    .map_err(|_| Error::Internal("hardlink primary".into()))?;
                fsx::link_at(stage_fd(txn, &work_of, pi)?, &staged_name(pi), sd, &name)
                    .ctx("stage hardlink", &e.path)?;
            }
        }
        if !matches!(e.kind, Kind::File { .. }) {
            rep.objects += 1; // files are counted once verified, below
        }
        crate::failpoint::may_fail("stage-object").ctx("stage", &e.path)?;
    }

    // Verify what was written (hashing in parallel), then give every object its final metadata.
    let shared: &Txn = txn;
    let checked = crate::par::map(&written, |&i| -> Result<()> {
        let e = &m.entries[i];
        if let Kind::File { size, hash, .. } = &e.kind {
            let f = fsx::open_file_at(stage_fd(shared, &work_of, i)?, &staged_name(i)).ctx("open staged", &e.path)?;
            let (h, n) = crate::base::hash_reader(f).ctx("read staged", &e.path)?;
            if h != *hash || n != *size {
                return Err(Error::Bundle(bundle::Error::Manifest(format!(
                    "{}: staged content does not match the manifest's hash (corrupt payload or changed delta base)",
                    e.path
                ))));
            }
        }
        Ok(())
    });
    checked.into_iter().collect::<Result<()>>()?;
    // Files (from frames, empty, copied) are counted here; other objects as they were made.
    rep.objects += written.len();
    for &i in &placed {
        let e = &m.entries[i];
        if matches!(e.kind, Kind::Hardlink { .. }) {
            continue;
        }
        let mut meta = e.meta;
        if matches!(e.kind, Kind::Dir) {
            meta.mtime_ns = 0; // set by the directory's DirMeta step after its children arrive
        }
        fsx::set_meta_at(stage_fd(txn, &work_of, i)?, &staged_name(i), &meta, owners)
            .ctx("set metadata of staged", &e.path)?;
    }
    for w in &txn.works {
        fsx::syncfs(w.stage.as_fd()).ctx("syncfs", "work directory")?;
    }
    crate::failpoint::hit("stage-synced");
    Ok(rep)
}

/// Copy the live file `from` (if `want`, only the inode `(st_dev, st_ino)`) into a new staged
/// file `name` in `sd`, reading at most `size` bytes: a source swapped for a larger (or huge
/// sparse) file by a local user is refused before anything is copied, and one that grows while
/// it is read is cut at `size` + 1 bytes and refused by the hash check. Returns bytes written.
#[allow(clippy::too_many_arguments)]
fn copy_local(
    root: BorrowedFd<'_>,
    dirs: &mut fsx::DirCache,
    from: &bundle::BundlePath,
    want: Option<(u64, u64)>,
    size: u64,
    sd: BorrowedFd<'_>,
    name: &[u8],
    path: &bundle::BundlePath,
) -> Result<u64> {
    let (d, n) = dirs.parent_of(root, from).ctx("open copy source", from)?;
    let src = fsx::open_file_at(d, n).ctx("open copy source", from)?;
    let st = rustix::fs::fstat(&src).ctx("stat copy source", from)?;
    #[allow(clippy::unnecessary_cast)]
    let id = (st.st_dev as u64, st.st_ino as u64);
    if st.st_size as u64 != size || want.is_some_and(|w| w != id) {
        return Err(Error::Drift(vec![format!("{from}: changed after the base check (copy source)")]));
    }
    let mut dst = fsx::create_file_at(sd, name).ctx("create staged", path)?;
    std::io::copy(&mut src.take(size + 1), &mut dst).ctx("copy", path)
}

/// Frames read from the bundle and decoded by worker threads at most this big (compressed).
const PAR_FRAME_MAX: u64 = 8 << 20;
/// ... and at most this many bytes decoded plus delta base: larger frames are decoded on the
/// reading thread, so memory stays at a few small frames per thread.
const PAR_DECODE_MAX: u64 = 16 << 20;
/// At most this many decoding threads.
const DECODE_THREADS: usize = 4;

/// A verified frame handed to a decoding thread: its index, bytes and pieces (piece offset,
/// length, file offset, entry).
struct FrameJob {
    fi: usize,
    bytes: Vec<u8>,
    targets: Vec<(u64, u64, u64, usize)>,
}

/// What decoding a frame into staged files needs; shared by the decoding threads.
#[derive(Clone, Copy)]
struct FrameCtx<'a> {
    root: BorrowedFd<'a>,
    txn: &'a Txn,
    work_of: &'a HashMap<usize, usize>,
    m: &'a bundle::Manifest,
    limits: &'a Limits,
}

impl FrameCtx<'_> {
    /// The frame's method (from its first piece).
    fn method(&self, fi: usize, t: &[(u64, u64, u64, usize)]) -> Option<Method> {
        match &self.m.entries[t.first()?.3].kind {
            Kind::File { content: Content::Pieces(ps), .. } => {
                ps.iter().find(|p| p.frame as usize == fi).map(|p| p.method.clone())
            }
            _ => None,
        }
    }

    /// Open the (already created) staged file of entry `ei` for writing.
    fn open(&self, ei: usize) -> Result<std::fs::File> {
        let path = &self.m.entries[ei].path;
        let w = self.work_of.get(&ei).ok_or_else(|| Error::Internal(format!("entry {ei} has no work directory")))?;
        fsx::open_write_at(self.txn.works[*w].stage.as_fd(), &staged_name(ei)).ctx("open staged", path)
    }

    /// Decode frame `fi` from `src` into its pieces' staged files. Patch and bsdiff frames hold
    /// one piece; the base is read from the live OLD file. A bsdiff frame decodes (plain zstd,
    /// bounded) to a patch applied afterwards. Returns the bytes written.
    fn decode<R: Read>(
        &self,
        dirs: &mut fsx::DirCache,
        src: R,
        fi: usize,
        t: &[(u64, u64, u64, usize)],
    ) -> Result<u64> {
        let f = &self.m.frames[fi];
        let method = self.method(fi, t);
        let base = match method.as_ref().and_then(base_window) {
            Some((b, off, len)) => Some(read_base(self.root, dirs, b, off, len, self.limits)?),
            None => None,
        };
        let is_bsdiff = matches!(method, Some(Method::Bsdiff { .. }));
        let fe =
            |e: std::io::Error| Error::Bundle(bundle::Error::FrameDecode { index: fi as u32, what: e.to_string() });
        let prefix = if is_bsdiff { None } else { base.as_deref() };
        let mut dec = crate::verify::decoder(src, prefix, self.limits, fi)?.take(f.decoded + 1);
        let mut open: HashMap<usize, std::fs::File> = HashMap::new();
        let mut patch = Vec::new();
        // Sized to the frame (one more byte detects a frame longer than declared): most frames
        // are small, and zeroing a large buffer per frame cost more than decoding them.
        let mut buf = vec![0u8; (f.decoded + 1).min(1 << 18) as usize];
        let (mut pos, mut written) = (0u64, 0u64);
        loop {
            let n = dec.read(&mut buf).map_err(fe)?;
            if n == 0 {
                break;
            }
            let end = pos + n as u64;
            if end > f.decoded {
                return Err(bundle::Error::FrameDecode {
                    index: fi as u32,
                    what: format!("decodes to more than the declared {} bytes", f.decoded),
                }
                .into());
            }
            if is_bsdiff {
                patch.extend_from_slice(&buf[..n]);
                pos = end;
                continue;
            }
            for &(po, pl, fo, ei) in t {
                let (s, e) = (po.max(pos), (po + pl).min(end));
                if s >= e {
                    continue;
                }
                let file = match open.entry(ei) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => v.insert(self.open(ei)?),
                };
                file.write_all_at(&buf[(s - pos) as usize..(e - pos) as usize], fo + (s - po))
                    .ctx("write staged", &self.m.entries[ei].path)?;
                written += e - s;
            }
            pos = end;
        }
        if pos != f.decoded {
            return Err(bundle::Error::FrameDecode {
                index: fi as u32,
                what: format!("decodes to {pos} bytes, declared {}", f.decoded),
            }
            .into());
        }
        if is_bsdiff {
            let old = base.as_deref().unwrap_or_default();
            let want = t.first().map_or(0, |x| x.1);
            let out = bundle::bspatch::apply(old, &patch, want).map_err(|what| bundle::Error::FrameDecode {
                index: fi as u32,
                what: format!("bsdiff patch: {what}"),
            })?;
            for &(_, _, fo, ei) in t {
                self.open(ei)?.write_all_at(&out, fo).ctx("write staged", &self.m.entries[ei].path)?;
                written += out.len() as u64;
            }
        }
        Ok(written)
    }
}

/// The delta base window a patch or bsdiff frame reads: (path, offset, len).
fn base_window(m: &Method) -> Option<(&bundle::BundlePath, u64, u64)> {
    match m {
        Method::Patch { base, offset, len } | Method::Bsdiff { base, offset, len } => Some((base, *offset, *len)),
        Method::Zstd => None,
    }
}

fn read_base(
    root: BorrowedFd<'_>,
    dirs: &mut fsx::DirCache,
    base: &bundle::BundlePath,
    offset: u64,
    len: u64,
    limits: &Limits,
) -> Result<Vec<u8>> {
    if len > limits.max_frame_decoded {
        return Err(bundle::Error::TooLarge {
            what: format!("delta base window of {base}"),
            size: len,
            limit: limits.max_frame_decoded,
        }
        .into());
    }
    let (d, n) = dirs.parent_of(root, base).ctx("open delta base", base)?;
    let f = fsx::open_file_at(d, n).ctx("open delta base", base)?;
    let mut v = vec![0u8; len as usize];
    f.read_exact_at(&mut v, offset).ctx("read delta base", base)?;
    Ok(v)
}
