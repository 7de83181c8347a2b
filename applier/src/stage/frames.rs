//! Staging frame content: the bundle is read once, in order, on the calling thread, every frame's
//! hash checked as it is read and before any byte of it is decrypted or decoded; frames read
//! into memory are decoded by worker threads within a memory budget, the largest on the reading
//! thread from a scratch file they were spooled to, each piece written at its offset in its
//! staged file (created beforehand).

use super::{Stager, DECODE_BUDGET, DECODE_THREADS, PAR_FRAME_MAX};
use crate::error::{Ctx, Error, Result};
use crate::fsx;
use crate::txn::staged_name;
use bundle::container::Reader;
use bundle::{Content, Kind, Limits, Method};
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Condvar, Mutex};

use crate::verify::BundleReader;

/// Where a piece of a frame's decoded content goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct PieceTarget {
    /// Offset of the piece in the frame's decoded content.
    pub frame_offset: u64,
    /// Length of the piece.
    pub len: u64,
    /// Offset of the piece in its staged file.
    pub file_offset: u64,
    /// Index of the entry whose staged file the piece fills.
    pub entry: usize,
}

/// A verified frame handed to a decoding thread: its index, bytes, pieces and the memory it
/// holds from the budget until it is decoded.
struct FrameJob {
    fi: usize,
    bytes: Vec<u8>,
    targets: Vec<PieceTarget>,
    memory: u64,
}

/// The decode memory of the frames handed to decoding threads and not yet decoded
/// ([`DECODE_BUDGET`]).
#[derive(Default)]
struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    /// Wait until `m` more fits in the budget (or nothing is in flight), then take it.
    fn take(&self, m: u64) {
        let Ok(mut used) = self.used.lock() else { return };
        while *used > 0 && used.saturating_add(m) > DECODE_BUDGET {
            used = match self.freed.wait(used) {
                Ok(u) => u,
                Err(_) => return,
            };
        }
        *used = used.saturating_add(m);
    }

    /// Give `m` back.
    fn give(&self, m: u64) {
        if let Ok(mut used) = self.used.lock() {
            *used = used.saturating_sub(m);
        }
        self.freed.notify_all();
    }
}

/// Gives a job's memory back to the budget when dropped: after its frame is decoded, failed,
/// or its decoder panicked (the reading thread must not wait for it forever).
struct Held<'a>(&'a Budget, u64);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.give(self.1);
    }
}

/// What the reading thread and the decoding threads report: failures (with their frame) and
/// bytes written.
#[derive(Default)]
struct Decoded {
    failed: Mutex<Vec<(usize, Error)>>,
    bytes: AtomicU64,
}

impl Decoded {
    fn record(&self, fi: usize, r: Result<u64>) {
        match r {
            Ok(n) => {
                self.bytes.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                if let Ok(mut f) = self.failed.lock() {
                    f.push((fi, e));
                }
            }
        }
    }

    fn any_failed(&self) -> bool {
        self.failed.lock().map_or(true, |v| !v.is_empty())
    }

    /// The first failure in frame order, as a sequential run would have reported it; else the
    /// bytes written.
    fn finish(self, reader_err: Option<(usize, Error)>) -> Result<u64> {
        let mut errs = self.failed.into_inner().unwrap_or_default();
        errs.extend(reader_err);
        match errs.into_iter().min_by_key(|(fi, _)| *fi) {
            Some((_, e)) => Err(e),
            None => Ok(self.bytes.into_inner()),
        }
    }
}

impl Stager<'_> {
    /// Stage the files of `todo` that frames fill, reading the bundle — every frame, hash-checked,
    /// and the end of the archive — unless none is left to fill and an earlier run of this
    /// transaction verified it all. Returns those files and the bytes written.
    pub(super) fn stage_frames(
        &self,
        dirs: &mut fsx::DirCache,
        todo: &[usize],
        input: super::Input,
        progress: bool,
    ) -> Result<(Vec<usize>, u64)> {
        let (targets, fill) = self.frame_targets(todo);
        let verified = self.txn.frames_verified()?;
        if fill.is_empty() && verified {
            return Ok((fill, 0));
        }
        let mut r = self.open_bundle(input)?;
        let bytes = self.read_frames(&mut r, dirs, targets, &fill, progress)?;
        r.end().map_err(|e| crate::source::explain(e.into()))?;
        // Every frame was read and matched its hash, and the archive ended where it must: the
        // whole bundle is verified, and every file the frames fill is complete.
        if !verified {
            self.txn.mark_frames_verified()?;
        }
        Ok((fill, bytes))
    }

    /// The pieces each frame holds for the files of `todo`, and those files (in script order).
    fn frame_targets(&self, todo: &[usize]) -> (Vec<Vec<PieceTarget>>, Vec<usize>) {
        let mut targets: Vec<Vec<PieceTarget>> = vec![Vec::new(); self.m.frames.len()];
        let mut fill = Vec::new();
        for &i in todo {
            if let Kind::File { content: Content::Pieces(ps), extents, .. } = &self.m.entries[i].kind {
                // A sparse file's pieces carry its data stream: each piece is split where the
                // stream crosses from one data extent to the next, and lands at the extents'
                // offsets in the file.
                let starts = extents.as_deref().map(bundle::sparse::data_starts);
                let mut at = 0u64;
                for p in ps {
                    let runs = match (extents, &starts) {
                        (Some(x), Some(s)) => bundle::sparse::place(x, s, at, p.len),
                        _ => vec![(at, at, p.len)],
                    };
                    for (file_offset, data_offset, len) in runs {
                        targets[p.frame as usize].push(PieceTarget {
                            frame_offset: p.offset + (data_offset - at),
                            len,
                            file_offset,
                            entry: i,
                        });
                    }
                    at += p.len;
                }
                fill.push(i);
            }
        }
        (targets, fill)
    }

    /// Create the (empty) staged file of entry `ei`; a sparse file gets its size first: the
    /// extents are written into it, the rest stays holes.
    fn create_staged(&self, ei: usize) -> Result<()> {
        let path = &self.m.entries[ei].path;
        let f = fsx::create_file_at(self.stage_fd(ei)?, &staged_name(ei)).ctx("create staged", path)?;
        if let Kind::File { size, extents: Some(_), .. } = &self.m.entries[ei].kind {
            f.set_len(*size).ctx("size staged", path)?;
        }
        crate::failpoint::may_fail("stage-create").ctx("create staged", path)
    }

    /// The bundle's reader at its first payload member: the one this run opened, or the file
    /// opened now, whose head must be this transaction's (its bytes hash to the id that was
    /// verified when the transaction was loaded; nothing else of the head is needed).
    fn open_bundle(&self, input: super::Input) -> Result<BundleReader> {
        const NEEDED: &str = "staging was interrupted and the bundle is needed to finish it (its frames are read and checked again); pass it with --bundle or put it back where it was";
        let path = match input {
            super::Input::Open(r) => return Ok(*r),
            super::Input::Path(Some(p)) => p,
            super::Input::Path(None) => return Err(Error::Pending(NEEDED.into())),
        };
        // A bundle that is not there (the stick was pulled) is waited for, not a failure: the
        // transaction is kept for a resume with it.
        let src = match crate::source::open(&path) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Pending(format!("{} not found: {NEEDED}", path.display())))
            }
            r => r?,
        };
        let mut r = Reader::new(src.reader, self.limits.clone());
        let (mb, _) = r.head().map_err(|e| crate::source::explain(e.into()))?;
        if bundle::Manifest::id(&mb) != self.txn.head.id {
            return Err(Error::Pending(format!("{} is not the bundle of the interrupted apply", path.display())));
        }
        Ok(r)
    }

    /// Read every frame in order on this thread, handing those read into memory to up to
    /// [`DECODE_THREADS`] decoding threads within [`DECODE_BUDGET`] and decoding spooled ones
    /// here. The staged files of `fill` are created here too, each just before the first frame
    /// with a piece of it is handed over (one file's pieces may come from several frames,
    /// decoded on several threads), so that decoding starts after the first frame's files are
    /// created, not all of them; those without a piece after the last frame. Returns the bytes
    /// written.
    fn read_frames(
        &self,
        r: &mut BundleReader,
        dirs: &mut fsx::DirCache,
        mut targets: Vec<Vec<PieceTarget>>,
        fill: &[usize],
        progress: bool,
    ) -> Result<u64> {
        let frames = &self.m.frames;
        let total: u64 = frames.iter().map(|f| f.size).sum();
        let mut prog = crate::progress::Progress::new("stage", "frames", frames.len() as u64, total, progress);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(DECODE_THREADS);
        let decoded = Decoded::default();
        let budget = Budget::default();
        let mut created = vec![false; self.m.entries.len()];
        let mut create_once = |ei: usize| match std::mem::replace(&mut created[ei], true) {
            true => Ok(()),
            false => self.create_staged(ei),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<FrameJob>(threads);
        let rx = Mutex::new(rx);
        let reader_err: Option<(usize, Error)> = std::thread::scope(|sc| {
            // Dropped when this closure returns, which lets the decoding threads finish.
            let tx = tx;
            if threads > 1 {
                for _ in 0..threads {
                    sc.spawn(|| self.decode_worker(&rx, &decoded, &budget));
                }
            }
            let workers = (threads > 1).then_some((&tx, &budget));
            let mut read = 0u64;
            for (fi, f) in frames.iter().enumerate() {
                prog.tick(fi as u64, read);
                read += f.size;
                if decoded.any_failed() {
                    break; // a decoder failed: stop reading; its error is reported below
                }
                let t = std::mem::take(&mut targets[fi]);
                if let Err(e) = t.iter().try_for_each(|p| create_once(p.entry)) {
                    return Some((fi, e));
                }
                if let Err(e) = self.read_frame(r, dirs, fi, t, workers, &decoded) {
                    return Some((fi, e));
                }
            }
            if !decoded.any_failed() {
                if let Err(e) = fill.iter().try_for_each(|&ei| create_once(ei)) {
                    return Some((frames.len(), e));
                }
            }
            prog.finish(frames.len() as u64, read);
            None
        });
        decoded.finish(reader_err)
    }

    /// A decoding thread: decode the frames the reading thread hands over until it stops.
    fn decode_worker(&self, jobs: &Mutex<Receiver<FrameJob>>, decoded: &Decoded, budget: &Budget) {
        let mut dirs = fsx::DirCache::default();
        loop {
            let job = match jobs.lock() {
                Ok(q) => q.recv(),
                Err(_) => return,
            };
            let Ok(job) = job else { return };
            let _held = Held(budget, job.memory);
            decoded.record(job.fi, self.decode(&mut dirs, &job.bytes[..], job.fi, &job.targets));
        }
    }

    /// Read frame `fi` and check its hash; only then is it decrypted and decoded, so no byte of
    /// it is decrypted or decompressed before it is authenticated (bundle-format.md §4.10). A
    /// frame no staged file needs is only checked. One of at most [`PAR_FRAME_MAX`] bytes is
    /// read into memory, then handed to a decoding thread (if `workers`, once the memory it needs
    /// fits in their budget) or decoded here; a larger one is spooled to a scratch file in a work directory
    /// as it is read ([`Stager::spool`]) and decoded from there.
    fn read_frame(
        &self,
        r: &mut BundleReader,
        dirs: &mut fsx::DirCache,
        fi: usize,
        t: Vec<PieceTarget>,
        workers: Option<(&SyncSender<FrameJob>, &Budget)>,
        decoded: &Decoded,
    ) -> Result<()> {
        let f = &self.m.frames[fi];
        let explain = |e: bundle::Error| crate::source::explain(e.into());
        if t.is_empty() {
            // No staged file needs it (or an earlier run staged them): its hash is checked all
            // the same.
            return r.check_frame(&self.m.frames, fi).map_err(explain);
        }
        let mut fr = r.frame(&self.m.frames, fi).map_err(explain)?;
        if f.size > PAR_FRAME_MAX {
            let spool = self.spool(&mut fr, fi, &t)?;
            fr.finish().map_err(explain)?;
            let n = self.decode(dirs, std::io::BufReader::new(spool), fi, &t)?;
            decoded.bytes.fetch_add(n, Ordering::Relaxed);
        } else {
            let mut bytes = Vec::with_capacity(f.size as usize);
            fr.read_to_end(&mut bytes).map_err(|e| explain(bundle::container::unwrap_io(e, fi)))?;
            fr.finish().map_err(explain)?;
            match workers {
                Some((tx, budget)) => {
                    let memory = decode_memory(f, self.method(fi, &t).as_ref()).saturating_add(f.size);
                    budget.take(memory);
                    tx.send(FrameJob { fi, bytes, targets: t, memory })
                        .map_err(|_| Error::Internal("frame decoders stopped".into()))?
                }
                None => {
                    let n = self.decode(dirs, &bytes[..], fi, &t)?;
                    decoded.bytes.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        crate::failpoint::hit("stage-frame");
        Ok(())
    }

    /// Copy the rest of frame `fi` from `fr` (which hashes it) into a scratch file (created
    /// and unlinked at once, [`fsx::scratch_file_at`]) in the work directory of its first
    /// piece's file; returns it, positioned at its start.
    fn spool<R: Read>(&self, fr: &mut R, fi: usize, t: &[PieceTarget]) -> Result<std::fs::File> {
        let ei = t.first().map(|p| p.entry).ok_or_else(|| Error::Internal("frame without pieces".into()))?;
        let path = &self.m.entries[ei].path;
        let name = format!("frame-{fi}.spool");
        let mut spool = fsx::scratch_file_at(self.stage_fd(ei)?, name.as_bytes()).ctx("create spool for", path)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n =
                fr.read(&mut buf).map_err(|e| crate::source::explain(bundle::container::unwrap_io(e, fi).into()))?;
            if n == 0 {
                break;
            }
            spool.write_all(&buf[..n]).ctx("write spool for", path)?;
        }
        spool.seek(std::io::SeekFrom::Start(0)).ctx("rewind spool for", path)?;
        Ok(spool)
    }

    /// The frame's method (from its first piece).
    fn method(&self, fi: usize, t: &[PieceTarget]) -> Option<Method> {
        match &self.m.entries[t.first()?.entry].kind {
            Kind::File { content: Content::Pieces(ps), .. } => {
                ps.iter().find(|p| p.frame as usize == fi).map(|p| p.method.clone())
            }
            _ => None,
        }
    }

    /// Open the (already created) staged file of entry `ei` for writing.
    fn open_staged(&self, ei: usize) -> Result<std::fs::File> {
        let path = &self.m.entries[ei].path;
        fsx::open_write_at(self.stage_fd(ei)?, &staged_name(ei)).ctx("open staged", path)
    }

    /// Where the decoded bytes of entry `ei` go: its staged file, written at their offsets, or
    /// for a re-created gzip file (bundle-format.md §5.3) the encoder in front of it.
    fn open_sink(&self, ei: usize) -> Result<Sink> {
        let f = self.open_staged(ei)?;
        Ok(match &self.m.entries[ei].kind {
            Kind::File { size, gzip: Some(g), .. } => Sink::Gzip(Box::new(
                super::regzip::GzipSink::new(f, g, *size).ctx("write staged", &self.m.entries[ei].path)?,
            )),
            _ => Sink::File(f),
        })
    }

    /// Decode frame `fi` from `src` into its pieces' staged files (zstd, or LZMA2 for `Lzma`
    /// pieces). Patch and bsdiff frames hold one piece; the base is read from the live OLD file.
    /// A bsdiff frame decodes (zstd, or LZMA2 without a filter; bounded) to a patch applied as it
    /// decodes. Returns the bytes written.
    fn decode<R: Read>(&self, dirs: &mut fsx::DirCache, src: R, fi: usize, t: &[PieceTarget]) -> Result<u64> {
        let f = &self.m.frames[fi];
        let method = self.method(fi, t);
        let base = match method.as_ref().and_then(base_window) {
            Some((b, off, len)) => Some(read_base(self.root, dirs, b, off, len, self.limits)?),
            None => None,
        };
        let is_bsdiff = method.as_ref().is_some_and(Method::is_bsdiff);
        let prefix = if is_bsdiff { None } else { base.as_deref() };
        // An encrypted bundle's frame is decrypted here, after its hash was checked (§4.10).
        let src = crate::unseal::frame_reader(src, &self.txn.head, fi);
        let codec = method.as_ref().map_or(crate::verify::Codec::Zstd, crate::verify::Codec::of);
        let mut dec =
            Counted(crate::verify::decoder(src, codec, prefix, self.limits, fi, f.decoded)?.take(f.decoded + 1), 0);
        let mut open: HashMap<usize, Sink> = HashMap::new();
        let split = method.as_ref().and_then(Method::split_parts);
        let written = if is_bsdiff {
            self.apply_bsdiff(&mut open, fi, base.as_deref().unwrap_or_default(), &mut dec, split, t)?
        } else {
            self.copy_out(&mut open, fi, &mut dec, t)?
        };
        // A gzip file still open did not get all its data (its one piece is in this frame): this
        // reports it.
        for (ei, sink) in open {
            if let Sink::Gzip(g) = sink {
                g.finish().map_err(|e| gzip_error(e, fi, &self.m.entries[ei].path))?;
            }
        }
        let pos = dec.1;
        if pos > f.decoded {
            return Err(bundle::Error::FrameDecode {
                index: fi as u32,
                what: format!("decodes to more than the declared {} bytes", f.decoded),
            }
            .into());
        }
        if pos != f.decoded {
            return Err(bundle::Error::FrameDecode {
                index: fi as u32,
                what: format!("decodes to {pos} bytes, declared {}", f.decoded),
            }
            .into());
        }
        Ok(written)
    }

    /// Write frame `fi`'s decoded bytes, read from `dec` until it ends (or passes the declared
    /// size), into the pieces `t`. Returns the bytes written.
    fn copy_out<R: Read>(
        &self,
        open: &mut HashMap<usize, Sink>,
        fi: usize,
        dec: &mut Counted<R>,
        t: &[PieceTarget],
    ) -> Result<u64> {
        let decoded = self.m.frames[fi].decoded;
        let fe =
            |e: std::io::Error| Error::Bundle(bundle::Error::FrameDecode { index: fi as u32, what: e.to_string() });
        // Sized to the frame (one more byte detects a frame longer than declared): most frames
        // are small, and zeroing a large buffer per frame cost more than decoding them.
        let mut buf = vec![0u8; (decoded + 1).min(1 << 18) as usize];
        let mut written = 0u64;
        loop {
            let pos = dec.1;
            let n = dec.read(&mut buf).map_err(fe)?;
            if n == 0 || dec.1 > decoded {
                return Ok(written);
            }
            written += self.write_pieces(fi, open, &buf[..n], pos, t)?;
        }
    }

    /// Write the parts of the pieces `t` that fall in `chunk`, the frame's decoded bytes from
    /// offset `pos`, into their staged files (opened once each, kept in `open`). Returns the
    /// bytes written.
    fn write_pieces(
        &self,
        fi: usize,
        open: &mut HashMap<usize, Sink>,
        chunk: &[u8],
        pos: u64,
        t: &[PieceTarget],
    ) -> Result<u64> {
        let end = pos + chunk.len() as u64;
        let mut written = 0;
        for p in t {
            let (s, e) = (p.frame_offset.max(pos), (p.frame_offset + p.len).min(end));
            if s >= e {
                continue;
            }
            let sink = match open.entry(p.entry) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(self.open_sink(p.entry)?),
            };
            let (bytes, at) = (&chunk[(s - pos) as usize..(e - pos) as usize], p.file_offset + (s - p.frame_offset));
            let path = &self.m.entries[p.entry].path;
            match sink {
                Sink::File(f) => f.write_all_at(bytes, at).ctx("write staged", path)?,
                Sink::Gzip(g) => {
                    g.feed(at, bytes).map_err(|e| gzip_error(e, fi, path))?;
                    // Finished as soon as its data is complete: a solid frame holds hundreds of
                    // gzip files, and each encoder holds about 400 KiB until it is finished.
                    if g.complete() {
                        if let Some(Sink::Gzip(g)) = open.remove(&p.entry) {
                            g.finish().map_err(|e| gzip_error(e, fi, path))?;
                        }
                    }
                }
            }
            written += e - s;
        }
        Ok(written)
    }

    /// Apply a bsdiff frame's patch, decoded from `dec` as it is read, to the base window `old`,
    /// writing the output to its piece(s) as it comes (a sparse file's piece is split into
    /// several targets, each a part of the patch's output: `frame_offset` is the offset in it).
    /// Memory is the base window and a small buffer, whatever the file's size; for a split
    /// frame (`split`: the decoded lengths of its record headers and copied literals, which come
    /// first), also those two parts. Returns the bytes written.
    fn apply_bsdiff<R: Read>(
        &self,
        open: &mut HashMap<usize, Sink>,
        fi: usize,
        old: &[u8],
        dec: &mut Counted<R>,
        split: Option<bundle::lzma::SplitParts>,
        t: &[PieceTarget],
    ) -> Result<u64> {
        let want = t.iter().map(|p| p.frame_offset + p.len).max().unwrap_or(0);
        let mut written = 0u64;
        let mut failed: Option<Error> = None;
        let frame_error =
            |e: std::io::Error| bundle::Error::FrameDecode { index: fi as u32, what: format!("bsdiff patch: {e}") };
        let sink = |at, chunk: &[u8]| match self.write_pieces(fi, open, chunk, at, t) {
            Ok(n) => {
                written += n;
                Ok(())
            }
            Err(e) => {
                failed = Some(e);
                Err(std::io::Error::other("staging write failed"))
            }
        };
        // A split frame's first two parts are held in memory: their lengths are in the signed
        // manifest, checked against the frame's decoded size.
        let r = match split {
            Some([(control, _), (copy, _)]) => {
                bundle::bspatch::apply_split_stream(old, [control, copy], dec, want, sink)
            }
            None => bundle::bspatch::apply_stream(old, dec, want, sink),
        };
        if let Some(e) = failed {
            return Err(e);
        }
        r.map_err(frame_error)?;
        Ok(written)
    }
}

/// A re-created gzip file's failure: the bundle's ([`std::io::ErrorKind::InvalidData`], a fault of
/// frame `fi`) or the disk's.
fn gzip_error(e: std::io::Error, fi: usize, path: &bundle::BundlePath) -> Error {
    if e.kind() == std::io::ErrorKind::InvalidData {
        bundle::Error::FrameDecode { index: fi as u32, what: format!("re-creating gzip file {path}: {e}") }.into()
    } else {
        Error::Io { op: "write staged", path: path.to_string(), source: e }
    }
}

/// Where one staged file's decoded bytes go ([`Stager::open_sink`]).
enum Sink {
    File(std::fs::File),
    Gzip(Box<super::regzip::GzipSink>),
}

/// A reader counting the bytes it returned (a frame's decoded size, checked against the
/// declared one).
struct Counted<R>(R, u64);

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1 += n as u64;
        Ok(n)
    }
}

/// What decoding frame `f` of `method` holds in memory besides its compressed bytes: an LZMA2
/// frame its dictionary (the output is written as it comes); a zstd frame its window, at most
/// its decoded size, plus the delta base of a patch or bsdiff frame.
fn decode_memory(f: &bundle::Frame, method: Option<&Method>) -> u64 {
    // A split bsdiff frame also holds its first two streams' output.
    let parts = method.and_then(Method::split_parts).map_or(0, |[(a, _), (b, _)]| a.saturating_add(b));
    let base = method.and_then(base_window).map_or(0, |(_, _, len)| len).saturating_add(parts);
    match method.and_then(Method::lzma_dict_log) {
        Some(dict_log) => u64::from(bundle::lzma::decoder_dict_size(dict_log, f.decoded)).saturating_add(base),
        None => f.decoded.saturating_add(base),
    }
}

/// The delta base window a patch or bsdiff frame reads: (path, offset, len).
fn base_window(m: &Method) -> Option<(&bundle::BundlePath, u64, u64)> {
    m.delta_base()
}

fn read_base(
    root: std::os::fd::BorrowedFd<'_>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn budget_bounds_memory_in_flight_but_lets_a_large_frame_through_alone() {
        let budget = Budget::default();
        // A frame larger than the whole budget is taken when nothing else is in flight.
        budget.take(DECODE_BUDGET * 2);
        budget.give(DECODE_BUDGET * 2);
        budget.take(DECODE_BUDGET / 2);
        budget.take(DECODE_BUDGET / 2);
        let taken = AtomicU64::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                // Over the budget: waits until the first two are given back (their decoders'
                // `Held` guards dropped).
                budget.take(1);
                taken.store(1, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(taken.load(Ordering::SeqCst), 0, "took memory over the budget");
            drop(Held(&budget, DECODE_BUDGET / 2));
            drop(Held(&budget, DECODE_BUDGET / 2));
        });
        assert_eq!(taken.load(Ordering::SeqCst), 1);
        assert_eq!(budget.used.lock().map(|u| *u).unwrap_or(u64::MAX), 1);
    }
}
