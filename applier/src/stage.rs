//! Staging: every NEW object the commit will rename into place is created in a work directory on
//! its destination's filesystem — decoded from the bundle's frames (plain or patched against the
//! OLD file), copied from an OLD file, or made (symlink, directory, FIFO, device, hardlink) — given
//! its final owner, mode and mtime, verified against the manifest's hash, and made durable with
//! one `syncfs` per filesystem. The live tree is only read.
//!
//! Frames are decoded in bundle order on one thread: the bundle may be a stream read once (a USB
//! stick, stdin, a split set), and one frame at a time keeps memory to one frame's working set.
//! Hashing — of slots an interrupted run left, and of every written file before it counts as
//! staged — is independent per file and runs in parallel ([`crate::par`]).

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

/// Entries (by index) that the commit places, in script order.
pub fn placed_entries(m: &bundle::Manifest) -> Vec<usize> {
    m.script
        .iter()
        .filter(|s| s.op == Op::Place)
        .filter_map(|s| m.entries.binary_search_by(|e| e.path.cmp(&s.path)).ok())
        .collect()
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
    let placed = placed_entries(&m);
    let mut rep = StageReport::default();
    let mut work_of: HashMap<usize, usize> = HashMap::new();
    for &i in &placed {
        let dev = txn.work_for(root, &m.entries[i].path, true)?.dev;
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
        txn.work_for(root, &s.path, true)?;
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
    let mut pieces_left: HashMap<usize, usize> = HashMap::new();
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
            pieces_left.insert(i, ps.len());
        }
    }
    let mut written: Vec<usize> = Vec::new();
    if !pieces_left.is_empty() {
        let path = bundle.ok_or_else(|| {
            Error::Pending("staging was interrupted and the bundle is needed to finish it; pass it with --bundle or put it back where it was".into())
        })?;
        let src = crate::source::open(path)?;
        let mut r = Reader::new(src.reader, limits.clone());
        let h = crate::verify::head(&mut r, None, limits).map_err(crate::source::explain)?;
        if h.id != txn.head.id {
            return Err(Error::Pending(format!("{} is not the bundle of the interrupted apply", path.display())));
        }
        let mut open: HashMap<usize, std::fs::File> = HashMap::new();
        let total: u64 = m.frames.iter().map(|f| f.size).sum();
        let mut prog = crate::progress::Progress::new("stage", "frames", m.frames.len() as u64, total, progress);
        let mut read = 0u64;
        for (fi, f) in m.frames.iter().enumerate() {
            prog.tick(fi as u64, read);
            read += f.size;
            let mut t = std::mem::take(&mut targets[fi]);
            if t.is_empty() {
                r.check_frame(&m.frames, fi).map_err(|e| crate::source::explain(e.into()))?;
                continue;
            }
            t.sort_unstable();
            // Patch and bsdiff frames hold one piece; its base is read from the live OLD file. A
            // bsdiff frame decodes (plain zstd, bounded) to a patch applied after the loop.
            let method = match &m.entries[t[0].3].kind {
                Kind::File { content: Content::Pieces(ps), .. } => {
                    ps.iter().find(|p| p.frame as usize == fi).map(|p| p.method.clone())
                }
                _ => None,
            };
            let base: Option<Vec<u8>> = match &method {
                Some(Method::Patch { base, offset, len }) => Some(read_base(root, base, *offset, *len, limits)?),
                _ => None,
            };
            let mut bsdiff: Option<(Vec<u8>, Vec<u8>)> = match &method {
                Some(Method::Bsdiff { base, offset, len }) => {
                    Some((read_base(root, base, *offset, *len, limits)?, Vec::new()))
                }
                _ => None,
            };
            let mut fr = r.frame(&m.frames, fi)?;
            let fe =
                |e: std::io::Error| Error::Bundle(bundle::Error::FrameDecode { index: fi as u32, what: e.to_string() });
            {
                let dec = crate::verify::decoder(&mut fr, base.as_deref(), limits, fi)?;
                let mut dec = dec.take(f.decoded + 1);
                let mut buf = vec![0u8; 1 << 18];
                let mut pos = 0u64;
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
                    if let Some((_, patch)) = bsdiff.as_mut() {
                        patch.extend_from_slice(&buf[..n]);
                        pos = end;
                        continue;
                    }
                    for &(po, pl, fo, ei) in &t {
                        let (s, e) = (po.max(pos), (po + pl).min(end));
                        if s >= e {
                            continue;
                        }
                        let file = staged_file(&mut open, stage_fd(txn, &work_of, ei)?, ei, &m.entries[ei].path)?;
                        file.write_all_at(&buf[(s - pos) as usize..(e - pos) as usize], fo + (s - po))
                            .ctx("write staged", &m.entries[ei].path)?;
                        rep.bytes += e - s;
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
            }
            if let Some((old, patch)) = bsdiff.take() {
                let out = bundle::bspatch::apply(&old, &patch, t[0].1).map_err(|what| bundle::Error::FrameDecode {
                    index: fi as u32,
                    what: format!("bsdiff patch: {what}"),
                })?;
                for &(_, _, fo, ei) in &t {
                    let file = staged_file(&mut open, stage_fd(txn, &work_of, ei)?, ei, &m.entries[ei].path)?;
                    file.write_all_at(&out, fo).ctx("write staged", &m.entries[ei].path)?;
                    rep.bytes += out.len() as u64;
                }
            }
            fr.finish().map_err(|e| crate::source::explain(e.into()))?;
            for &(_, _, _, ei) in &t {
                if let Some(c) = pieces_left.get_mut(&ei) {
                    *c -= 1;
                    if *c == 0 {
                        open.remove(&ei);
                        written.push(ei);
                    }
                }
            }
            crate::failpoint::hit("stage-frame");
        }
        r.end().map_err(|e| crate::source::explain(e.into()))?;
        prog.finish(m.frames.len() as u64, read);
        written.dedup();
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
            Kind::File { content: Content::Copy { from }, .. } => {
                let (d, n) = fsx::parent_of(root, from).ctx("open copy source", from)?;
                let mut src = fsx::open_file_at(d.as_fd(), n).ctx("open copy source", from)?;
                let mut dst = fsx::create_file_at(sd, &name).ctx("create staged", &e.path)?;
                rep.bytes += std::io::copy(&mut src, &mut dst).ctx("copy", &e.path)?;
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
        rep.objects += 1;
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

/// The open staged file of entry `ei`, created (exclusively) on first use.
fn staged_file<'a>(
    open: &'a mut HashMap<usize, std::fs::File>,
    stage: BorrowedFd<'_>,
    ei: usize,
    path: &bundle::BundlePath,
) -> Result<&'a std::fs::File> {
    Ok(match open.entry(ei) {
        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let f = fsx::create_file_at(stage, &staged_name(ei)).ctx("create staged", path)?;
            crate::failpoint::may_fail("stage-create").ctx("create staged", path)?;
            v.insert(f)
        }
    })
}

fn read_base(
    root: BorrowedFd<'_>,
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
    let (d, n) = fsx::parent_of(root, base).ctx("open delta base", base)?;
    let f = fsx::open_file_at(d.as_fd(), n).ctx("open delta base", base)?;
    let mut v = vec![0u8; len as usize];
    f.read_exact_at(&mut v, offset).ctx("read delta base", base)?;
    Ok(v)
}
