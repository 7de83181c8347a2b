//! Staging: every NEW object the commit will rename into place is created in a work directory on
//! its destination's filesystem — decoded from the bundle's frames (plain or patched against the
//! OLD file), copied from an OLD file, or made (symlink, directory, FIFO, device, hardlink) — given
//! its final owner, mode and mtime, verified against the manifest's hash, and made durable with
//! one `syncfs` per filesystem. The live tree is only read.
//!
//! The bundle is read once, in order, on one thread (it may be a stream: a USB stick, stdin, a
//! split set), and every frame's hash — needed by a staged file or not — and the end of the
//! archive are checked as it is read: this is the bundle's verification (§7 steps 7–8), done
//! while writing only into work directories; the commit starts only after it passed. A frame is
//! decrypted and decoded only once its hash matched. Frames of at most 8 MiB are read into
//! memory and decoded by up to four threads, each writing its pieces with positioned writes into
//! staged files created beforehand, as long as the frames in flight need at most 64 MiB to decode
//! (or one frame alone). Larger frames are spooled to an unlinked scratch file in a work
//! directory as they are read, then decoded from it on the reading thread.
//! Hashing — of slots an interrupted run left, and of every written file before it counts as
//! staged — is independent per file and runs in parallel too ([`crate::par`]).

mod frames;
mod regzip;

use crate::error::{Ctx, Error, Result};
use crate::fsx;
use crate::txn::{staged_name, Txn};
use bundle::{Content, Entry, Kind, Limits, Op};
use rustix::fs::FileType;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

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
        // The space a staged file takes: a sparse file's data only.
        Kind::File { size, extents, .. } => bundle::sparse::data_len(*size, extents.as_deref()),
        _ => 0,
    }
}

/// Where staging reads the bundle from.
pub enum Input {
    /// The bundle this run opened: its head read and verified (and its id this transaction's),
    /// the reader at the first payload member ([`crate::verify::OpenBundle`]).
    Open(Box<crate::verify::BundleReader>),
    /// A path to open if the bundle is needed (resume): its head is read and its id must be
    /// this transaction's. `None`: the path is unknown.
    Path(Option<PathBuf>),
}

/// Stage everything. The bundle (`input`) is read unless every frame was verified by an earlier
/// run of this transaction ([`Txn::frames_verified`]) and no frame content is left to stage; when
/// read, every frame's hash and the end of the archive are checked as it streams in.
pub fn stage(
    root: BorrowedFd<'_>,
    txn: &mut Txn,
    input: Input,
    limits: &Limits,
    owners: bool,
    progress: bool,
) -> Result<StageReport> {
    let m = txn.head.manifest.clone();
    let placed = placed_entries(&m, owners);
    let mut dirs = fsx::DirCache::default();
    let work_of = assign_work_dirs(root, txn, &mut dirs, &m, &placed)?;
    let s = Stager { root, txn, m: &m, work_of: &work_of, limits };
    let mut rep = StageReport::default();

    // Keep what an interrupted run already staged and verified; remove anything else.
    let (todo, reused) = s.keep_verified(&placed)?;
    rep.reused = reused;
    // Free space, per filesystem, before writing anything.
    rep.needed = s.check_space(&todo)?;
    // Frame content: the reading thread and the decoding workers.
    let (from_frames, frame_bytes) = s.stage_frames(&mut dirs, &todo, input, progress)?;
    // Everything else: empty files, local copies, symlinks, directories, special files, links.
    let rest = s.stage_rest(&mut dirs, &todo, &from_frames)?;
    rep.bytes = frame_bytes + rest.bytes;
    // Verify every file written (hashing in parallel). Each staged object counts once: the files
    // (from frames, empty, copied) here, every other object as it was made.
    let written: Vec<usize> = from_frames.iter().chain(&rest.files).copied().collect();
    s.verify(&written)?;
    rep.objects = written.len() + rest.others;
    // Give every object its final metadata, then make it all durable.
    s.set_meta(&placed, owners)?;
    s.sync()?;
    crate::failpoint::hit("stage-synced");
    Ok(rep)
}

/// Create (and journal) the work directory of every filesystem an object is staged on; returns
/// the work directory (index in `txn.works`) of each placed entry.
fn assign_work_dirs(
    root: BorrowedFd<'_>,
    txn: &mut Txn,
    dirs: &mut fsx::DirCache,
    m: &bundle::Manifest,
    placed: &[usize],
) -> Result<HashMap<usize, usize>> {
    let mut work_of = HashMap::new();
    for &i in placed {
        let dev = txn.work_for(root, dirs, &m.entries[i].path, true)?.dev;
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
        txn.work_for(root, dirs, &s.path, true)?;
    }
    Ok(work_of)
}

/// What staging the objects needs once the work directories exist; shared by the decoding
/// threads.
#[derive(Clone, Copy)]
struct Stager<'a> {
    root: BorrowedFd<'a>,
    txn: &'a Txn,
    m: &'a bundle::Manifest,
    /// The work directory (index in `txn.works`) of each placed entry.
    work_of: &'a HashMap<usize, usize>,
    limits: &'a Limits,
}

/// The objects [`Stager::stage_rest`] made.
#[derive(Default)]
struct Rest {
    /// Files written (empty, copied), to be verified.
    files: Vec<usize>,
    /// Other objects (symlinks, directories, special files, hardlinks).
    others: usize,
    /// Bytes of file content copied.
    bytes: u64,
}

impl<'a> Stager<'a> {
    /// The stage directory entry `i` is staged in.
    fn stage_fd(&self, i: usize) -> Result<BorrowedFd<'a>> {
        let w = self.work_of.get(&i).ok_or_else(|| Error::Internal(format!("entry {i} has no work directory")))?;
        Ok(self.txn.works[*w].stage.as_fd())
    }

    /// Keep the files an interrupted run already staged and verified; remove anything else in
    /// the slots. Returns the entries still to stage (in script order) and how many were kept.
    fn keep_verified(&self, placed: &[usize]) -> Result<(Vec<usize>, usize)> {
        // What is in a slot: nothing (None), a verified file (Some(true)), anything else (Some(false)).
        let found = crate::par::map(placed, |&i| -> Result<Option<bool>> {
            let e = &self.m.entries[i];
            let sd = self.stage_fd(i)?;
            let name = staged_name(i);
            let Some(st) = fsx::lstat_at(sd, &name).ctx("stat staged", &e.path)? else { return Ok(None) };
            if let (Kind::File { size, .. }, Some(hash)) = (&e.kind, self.m.file_hash(e)) {
                if fsx::file_type(&st) == FileType::RegularFile && st.st_size as u64 == *size {
                    let f = fsx::open_file_at(sd, &name).ctx("open staged", &e.path)?;
                    return Ok(Some(crate::sparse::hash_file(&f, *size).ctx("read staged", &e.path)?.0 == hash));
                }
            }
            Ok(Some(false))
        });
        let (mut todo, mut reused) = (Vec::new(), 0);
        for (&i, found) in placed.iter().zip(found) {
            match found? {
                Some(true) => reused += 1,
                None => todo.push(i),
                Some(false) => {
                    fsx::remove_tree_at(self.stage_fd(i)?, &staged_name(i))
                        .ctx("remove stale staged", &self.m.entries[i].path)?;
                    todo.push(i);
                }
            }
        }
        Ok((todo, reused))
    }

    /// Check that every filesystem has room for the files still to stage (plus 1 % and 1 MiB),
    /// and for the scratch file of the largest frame staged through one (over [`PAR_FRAME_MAX`]
    /// bytes: one at a time, in the work directory of its first piece's file, counted on every
    /// filesystem that stages something); returns the bytes needed per filesystem (device
    /// number), scratch file excluded.
    fn check_space(&self, todo: &[usize]) -> Result<BTreeMap<u64, u64>> {
        let mut needed: BTreeMap<u64, u64> = BTreeMap::new();
        for &i in todo {
            let w = self.work_of[&i];
            *needed.entry(self.txn.works[w].dev).or_default() += file_size(&self.m.entries[i]);
        }
        let spool = largest_spool(self.m);
        for (dev, need) in &needed {
            let need = need.saturating_add(spool);
            let w = self
                .txn
                .works
                .iter()
                .find(|w| w.dev == *dev)
                .ok_or_else(|| Error::Internal("work directory vanished".into()))?;
            let avail = fsx::free_bytes(w.stage.as_fd()).ctx("statvfs", "work directory")?;
            let need_margin = need + need / 100 + (1 << 20);
            if need_margin > avail {
                return Err(Error::NoSpace {
                    need: need_margin,
                    avail,
                    path: format!("work directory on device {dev}"),
                });
            }
        }
        Ok(needed)
    }

    /// Stage every object in `todo` that frames do not fill (`from_frames`), in script order.
    fn stage_rest(&self, dirs: &mut fsx::DirCache, todo: &[usize], from_frames: &[usize]) -> Result<Rest> {
        let from_frames: HashSet<usize> = from_frames.iter().copied().collect();
        let mut rest = Rest::default();
        for &i in todo.iter().filter(|i| !from_frames.contains(i)) {
            match self.make(dirs, i)? {
                Some(bytes) => {
                    rest.files.push(i);
                    rest.bytes += bytes;
                }
                None => rest.others += 1,
            }
            crate::failpoint::may_fail("stage-object").ctx("stage", &self.m.entries[i].path)?;
        }
        Ok(rest)
    }

    /// Make the staged object of entry `i` (not a file frames fill). Returns the bytes written
    /// for a file, None for any other object.
    fn make(&self, dirs: &mut fsx::DirCache, i: usize) -> Result<Option<u64>> {
        let e = &self.m.entries[i];
        let sd = self.stage_fd(i)?;
        let name = staged_name(i);
        match &e.kind {
            Kind::File { content: Content::Empty, size, .. } => {
                let f = fsx::create_file_at(sd, &name).ctx("create staged", &e.path)?;
                // A sparse file without data (all hole) has a size all the same.
                if *size > 0 {
                    f.set_len(*size).ctx("size staged", &e.path)?;
                }
                return Ok(Some(0));
            }
            Kind::File { content: Content::Copy { from }, size, extents, .. } => {
                let to = (sd, &name[..], &e.path);
                return copy_local(self.root, dirs, from, None, *size, extents.as_deref(), to).map(Some);
            }
            Kind::File { content: Content::Unchanged, size, extents, .. } => {
                // A permission-raising metadata change: a copy of the live file (the inode the
                // base check verified), given the new metadata and exchanged in by the commit.
                let base = self.txn.base_ids.get(&e.path).map(|&(d, i, _)| (d, i));
                let to = (sd, &name[..], &e.path);
                return copy_local(self.root, dirs, &e.path, base, *size, extents.as_deref(), to).map(Some);
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
                let pi = self
                    .m
                    .entries
                    .binary_search_by(|x| x.path.cmp(primary))
                    .map_err(|_| Error::Internal("hardlink primary".into()))?;
                fsx::link_at(self.stage_fd(pi)?, &staged_name(pi), sd, &name).ctx("stage hardlink", &e.path)?;
            }
        }
        Ok(None)
    }

    /// Re-read every written file (in parallel) and check it against the manifest's hash (for a
    /// copy of a file with unchanged content, the digest in its `old` entry).
    fn verify(&self, written: &[usize]) -> Result<()> {
        let checked = crate::par::map(written, |&i| -> Result<()> {
            let e = &self.m.entries[i];
            if let Kind::File { size, .. } = &e.kind {
                let hash = staged_hash(self.m, e)?;
                let f = fsx::open_file_at(self.stage_fd(i)?, &staged_name(i)).ctx("open staged", &e.path)?;
                let (h, n) = crate::sparse::hash_file(&f, size + 1).ctx("read staged", &e.path)?;
                if h != hash || n != *size {
                    return Err(Error::Bundle(bundle::Error::Manifest(format!(
                        "{}: staged content does not match the manifest's hash (corrupt payload or changed delta base)",
                        e.path
                    ))));
                }
            }
            Ok(())
        });
        checked.into_iter().collect()
    }

    /// Give every staged object (kept or new) its final owner, mode and mtime.
    fn set_meta(&self, placed: &[usize], owners: bool) -> Result<()> {
        for &i in placed {
            let e = &self.m.entries[i];
            if matches!(e.kind, Kind::Hardlink { .. }) {
                continue;
            }
            let mut meta = e.meta;
            if matches!(e.kind, Kind::Dir) {
                meta.mtime_ns = 0; // set by the directory's DirMeta step after its children arrive
            }
            fsx::set_meta_at(self.stage_fd(i)?, &staged_name(i), &meta, owners, &self.txn.attrs)
                .ctx("set metadata of staged", &e.path)?;
        }
        Ok(())
    }

    /// One `syncfs` per work filesystem makes everything staged durable.
    fn sync(&self) -> Result<()> {
        for w in &self.txn.works {
            fsx::syncfs(w.stage.as_fd()).ctx("syncfs", "work directory")?;
        }
        Ok(())
    }
}

/// The digest a staged file of entry `e` must have ([`bundle::Manifest::file_hash`]). Every file
/// the applier stages has one: a file listed by tag never gets a staged copy
/// ([`bundle::Manifest::needs_own_digest`]), so its absence is a malformed bundle.
pub fn staged_hash(m: &bundle::Manifest, e: &Entry) -> Result<bundle::Hash> {
    m.file_hash(e).ok_or_else(|| {
        Error::Bundle(bundle::Error::Manifest(format!("{}: no digest to check its staged file against", e.path)))
    })
}

/// Copy the live file `from` (if `want`, only the inode `(st_dev, st_ino)`) into a new staged
/// file `name` in `sd` (`to`: directory, name, and the entry's path for messages), reading at
/// most `size` bytes: a source swapped for a larger (or huge sparse) file by a local user is
/// refused before anything is copied, and one that grows while it is read is cut at `size` + 1
/// bytes and refused by the hash check. A sparse NEW file (`extents`) gets only its data extents
/// copied, its holes left holes (the hash check then proves the source had zeros there).
/// Returns bytes written.
fn copy_local(
    root: BorrowedFd<'_>,
    dirs: &mut fsx::DirCache,
    from: &bundle::BundlePath,
    want: Option<(u64, u64)>,
    size: u64,
    extents: Option<&[bundle::Extent]>,
    to: (BorrowedFd<'_>, &[u8], &bundle::BundlePath),
) -> Result<u64> {
    let (sd, name, path) = to;
    let (d, n) = dirs.parent_of(root, from).ctx("open copy source", from)?;
    let src = fsx::open_file_at(d, n).ctx("open copy source", from)?;
    let st = rustix::fs::fstat(&src).ctx("stat copy source", from)?;
    #[allow(clippy::unnecessary_cast)]
    let id = (st.st_dev as u64, st.st_ino as u64);
    if st.st_size as u64 != size || want.is_some_and(|w| w != id) {
        return Err(Error::Drift(vec![format!("{from}: changed after the base check (copy source)")]));
    }
    let mut dst = fsx::create_file_at(sd, name).ctx("create staged", path)?;
    crate::sparse::copy(&src, &mut dst, size, extents).ctx("copy", path)
}

/// Frames read from the bundle and decoded by worker threads at most this big (compressed).
const PAR_FRAME_MAX: u64 = 8 << 20;

/// The stored size of the largest frame staged through a scratch file (over [`PAR_FRAME_MAX`]
/// bytes), 0 if none: the most scratch space staging holds at once besides the staged files.
pub fn largest_spool(m: &bundle::Manifest) -> u64 {
    m.frames.iter().map(|f| f.size).filter(|&s| s > PAR_FRAME_MAX).max().unwrap_or(0)
}
/// In-memory frames are handed to the decoding threads while the memory the frames handed over
/// and not yet decoded need (compressed bytes plus what decoding holds: zstd the bytes decoded
/// plus delta base, LZMA2 its dictionary plus delta base, `frames::decode_memory`) stays within
/// this budget; a frame needing more than all of it is handed over alone. A few large delta
/// frames (a 25 MB library's bsdiff against its 22 MB predecessor) then decode side by side
/// with the small ones instead of one after another on the reading thread.
const DECODE_BUDGET: u64 = 64 << 20;
/// At most this many decoding threads.
const DECODE_THREADS: usize = 4;
