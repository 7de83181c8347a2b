//! The commit: the apply script's steps, each a rename or a metadata change, run in order; and
//! their inverses for rollback. Every step is idempotent and detects from the filesystem alone
//! whether it already happened, so resume simply runs the whole script again (bundle-format.md,
//! "Commit steps and their crash analysis"). Steps are not journaled one by one: renames are
//! atomic on their own, and one `syncfs` per filesystem after the last step makes all of them
//! durable before `Committed` is journaled.

use crate::error::{Ctx, Error, Result};
use crate::fsx;
use crate::txn::{backup_name, staged_name, Txn};
use bundle::{BundlePath, Kind, Manifest, Meta, Op};
use rustix::fs::FileType;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};

/// Actual metadata of touched paths before the commit, saved for rollback.
pub type OldMeta = BTreeMap<BundlePath, Meta>;

fn entry_index(m: &Manifest, p: &BundlePath) -> Result<usize> {
    m.entries.binary_search_by(|e| e.path.cmp(p)).map_err(|_| Error::Internal(format!("{p}: not in NEW")))
}

fn is_dir(s: &Option<rustix::fs::Stat>) -> bool {
    s.as_ref().is_some_and(|s| fsx::file_type(s) == FileType::Directory)
}

/// Kind name of a stat, comparable with `Kind::name` / `OldKind::name`.
fn type_name(s: &rustix::fs::Stat) -> &'static str {
    match fsx::file_type(s) {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::CharacterDevice => "chardev",
        FileType::BlockDevice => "blockdev",
        _ => "other",
    }
}

fn new_type(k: &Kind) -> &'static str {
    match k {
        Kind::Hardlink { .. } => "file",
        k => k.name(),
    }
}

/// Directory handles the commit keeps open: half the process's soft `RLIMIT_NOFILE` (512 under
/// the common default of 1024), at least [`fsx::DIR_CACHE_MAX`]. The commit runs on one thread
/// and passes over the tree twice (renames, then directory metadata), so the more of the touched
/// directories stay open, the fewer lookups fall inside the commit window.
pub fn commit_dir_cache() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    usize::try_from(soft / 2).unwrap_or(usize::MAX).clamp(fsx::DIR_CACHE_MAX, 1 << 16)
}

/// State of one commit run.
pub struct Commit {
    pub dirs: fsx::DirCache,
    /// This run journaled `Staged` itself, so no step of the transaction has run yet: steps skip
    /// the checks that detect an earlier run's work (bundle-format.md §10.3). False on resume.
    pub fresh: bool,
    /// Facts of each `Place` step worked out by [`prepare`], taken by the step.
    pub facts: Vec<Option<Facts>>,
}

impl Commit {
    pub fn new(fresh: bool) -> Commit {
        Commit { dirs: fsx::DirCache::new(commit_dir_cache()), fresh, facts: Vec::new() }
    }
}

/// Everything a `Place` step (forward or reverse) needs to know about its path, from the
/// manifest and the transaction (no filesystem access but the work directory lookup).
pub struct Facts {
    /// Kind name of the NEW entry as it appears on disk (a hardlink is a file).
    new_type: &'static str,
    /// Kind name of the OLD entry, if any.
    old_type: Option<&'static str>,
    /// A locally edited config file (the conffile rule).
    kept: bool,
    /// Name of the staged object in the staging directory.
    sname: Vec<u8>,
    /// A type change involving a directory: done with `RENAME_EXCHANGE`.
    exchange: bool,
    /// Identity of the staged object (exchange protocol), or `None` (older transactions).
    id: Option<(u64, u64)>,
    /// Index of the work directory in `txn.works`.
    work: usize,
}

fn facts(root: BorrowedFd<'_>, txn: &mut Txn, dirs: &mut fsx::DirCache, p: &BundlePath) -> Result<Facts> {
    let m = &txn.head.manifest;
    let ei = entry_index(m, p)?;
    let new_type = new_type(&m.entries[ei].kind);
    let old_type = m.old_entry(p).map(|o| o.kind.name());
    let kept = txn.kept.contains(p);
    let exchange = old_type == Some("dir") || (old_type.is_some() && new_type == "dir");
    let id = match &txn.staged_ids {
        Some(ids) => Some(*ids.get(ei).ok_or_else(|| Error::Internal(format!("{p}: no staged identity")))?),
        None => None,
    };
    let dev = txn.work_for(root, dirs, p, false)?.dev;
    let work =
        txn.works.iter().position(|w| w.dev == dev).ok_or_else(|| Error::Internal("work directory vanished".into()))?;
    Ok(Facts { new_type, old_type, kept, sname: staged_name(ei), exchange, id, work })
}

/// Before the first rename: work out every `Place` step's [`Facts`], so the commit window holds
/// the renames and little else.
pub fn prepare(root: BorrowedFd<'_>, txn: &mut Txn, c: &mut Commit) -> Result<()> {
    let places: Vec<(usize, BundlePath)> = txn
        .head
        .manifest
        .script
        .iter()
        .enumerate()
        .filter(|(_, s)| s.op == Op::Place)
        .map(|(i, s)| (i, s.path.clone()))
        .collect();
    c.facts = (0..txn.head.manifest.script.len()).map(|_| None).collect();
    for (i, p) in places {
        c.facts[i] = Some(facts(root, txn, &mut c.dirs, &p)?);
    }
    Ok(())
}

/// `RENAME_EXCHANGE` of a staged file with a live one; `FERRY_NO_EXCHANGE=1` (tests) makes it
/// fail as on a filesystem without it.
fn exchange_file(sd: BorrowedFd<'_>, sname: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<()> {
    if crate::failpoint::no_exchange() {
        return Err(rustix::io::Errno::INVAL.into());
    }
    fsx::exchange(sd, sname, dir, name)
}

/// The filesystem (or kernel) does not support `RENAME_EXCHANGE`.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(fsx::errno(e), Some(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS))
}

fn is_id(s: &Option<rustix::fs::Stat>, id: (u64, u64)) -> bool {
    #[allow(clippy::unnecessary_cast)] // st_dev and st_ino are not u64 on every architecture
    s.as_ref().is_some_and(|s| (s.st_dev as u64, s.st_ino as u64) == id)
}

/// `(st_dev, st_ino)` of every NEW entry's staged object, by entry index (`(0, 0)` for none):
/// recorded after staging for the exchange protocol of `Place` steps.
pub fn staged_ids(root: BorrowedFd<'_>, txn: &mut Txn) -> Result<Vec<(u64, u64)>> {
    let m = &txn.head.manifest;
    let mut ids = vec![(0u64, 0u64); m.entries.len()];
    let places: Vec<BundlePath> = m.script.iter().filter(|s| s.op == Op::Place).map(|s| s.path.clone()).collect();
    let mut dirs = fsx::DirCache::default();
    for p in &places {
        let ei = entry_index(&txn.head.manifest, p)?;
        let w = txn.work_for(root, &mut dirs, p, false)?;
        if let Some(st) = fsx::lstat_at(w.stage.as_fd(), &staged_name(ei)).ctx("stat staged", p)? {
            #[allow(clippy::unnecessary_cast)]
            let id = (st.st_dev as u64, st.st_ino as u64);
            ids[ei] = id;
        }
    }
    Ok(ids)
}

/// Run step `i` forward. Returns true if it renamed something into the live tree.
pub fn forward(root: BorrowedFd<'_>, txn: &mut Txn, i: usize, owners: bool, c: &mut Commit) -> Result<bool> {
    let step = txn.head.manifest.script[i].clone();
    let p = &step.path;
    let fresh = c.fresh;
    // A step that moves a directory (exchange, delete) invalidates handles under it.
    if matches!(step.op, Op::Place | Op::Delete) {
        c.dirs.forget(p);
    }
    let dir = match c.dirs.dir(root, p.parent().as_ref()) {
        Ok(x) => x,
        // A deleted path whose parent was already moved out by an earlier run: done.
        Err(e)
            if step.op == Op::Delete
                && matches!(fsx::errno(&e), Some(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR)) =>
        {
            return Ok(false)
        }
        Err(e) => return Err(e).ctx("open parent of", p),
    };
    let name = p.file_name();
    let cur = || fsx::lstat_at(dir, name).ctx("stat", p);
    match step.op {
        Op::Mkdir => {
            let m = &txn.head.manifest;
            let e = &m.entries[entry_index(m, p)?];
            if !is_dir(&cur()?) {
                fsx::mkdir_at(dir, name, 0o700).ctx("mkdir", p)?;
            }
            let mut meta = e.meta;
            meta.mtime_ns = 0;
            fsx::set_meta_at(dir, name, &meta, owners).ctx("set metadata", p)?;
            Ok(false)
        }
        Op::Place => {
            let f = match c.facts.get_mut(i).and_then(Option::take) {
                Some(f) => f,
                None => facts(root, txn, &mut fsx::DirCache::default(), p)?,
            };
            let Facts { new_type, old_type, kept, sname, exchange, id, work } = f;
            let (sd, bd) = (txn.works[work].stage.as_fd(), txn.works[work].backup.as_fd());
            let staged = || fsx::lstat_at(sd, &sname).ctx("stat staged", p);
            if exchange {
                // Type change involving a directory: swap atomically; the OLD entry (with any
                // subtree) ends up in the staging slot, which is its backup.
                let cur = cur()?;
                let done = cur.as_ref().is_some_and(|c| type_name(c) == new_type)
                    && staged()?.as_ref().is_some_and(|s| Some(type_name(s)) == old_type);
                if done {
                    return Ok(false);
                }
                fsx::exchange(sd, &sname, dir, name).ctx("exchange", p)?;
                return Ok(true);
            }
            if kept {
                // Conffile rule: the local edit stays; the NEW version goes beside it.
                if !fresh && staged()?.is_none() {
                    return Ok(false); // renamed beside it by an earlier run
                }
                fsx::rename_at(sd, &sname, dir, &bundle::ferry_new_name(p))
                    .ctx("place beside the local config file", p)?;
                return Ok(true);
            }
            match (old_type, id) {
                (Some(_), Some(id)) => {
                    // Exchange the staged NEW object with the live OLD one: one atomic syscall,
                    // and the OLD inode lands in the staging slot, which is its backup. The live
                    // path holds the staged inode exactly when this happened.
                    if !fresh && is_id(&cur()?, id) {
                        return Ok(false);
                    }
                    match exchange_file(sd, &sname, dir, name) {
                        Ok(()) => {}
                        Err(e) if unsupported(&e) => {
                            // A filesystem without RENAME_EXCHANGE (NFS, older ZFS): keep the OLD
                            // inode with a hard link (one left by an interrupted run is fine),
                            // then rename over it. The live path then holds the staged inode too.
                            match fsx::link_at(dir, name, bd, &backup_name(i)) {
                                Err(e) if fsx::errno(&e) != Some(rustix::io::Errno::EXIST) => {
                                    return Err(e).ctx("back up (link)", p)
                                }
                                _ => {}
                            }
                            fsx::rename_at(sd, &sname, dir, name).ctx("rename into place", p)?;
                        }
                        Err(e) => return Err(e).ctx("exchange into place", p),
                    }
                }
                (Some(_), None) => {
                    // A transaction staged by an older ferry-apply: keep the OLD inode for
                    // rollback with a hard link, then rename over it.
                    if staged()?.is_none() {
                        return Ok(false);
                    }
                    let bname = backup_name(i);
                    if fsx::lstat_at(bd, &bname).ctx("stat backup", p)?.is_none() {
                        fsx::link_at(dir, name, bd, &bname).ctx("back up (link)", p)?;
                    }
                    fsx::rename_at(sd, &sname, dir, name).ctx("rename into place", p)?;
                }
                (None, _) => {
                    if !fresh && staged()?.is_none() {
                        return Ok(false); // renamed into place by an earlier run
                    }
                    fsx::rename_noreplace(sd, &sname, dir, name).ctx("rename into place", p)?;
                }
            }
            Ok(true)
        }
        Op::SetMeta if txn.kept.contains(p) => Ok(false),
        Op::SetMeta | Op::DirMeta => {
            let m = &txn.head.manifest;
            let e = &m.entries[entry_index(m, p)?];
            fsx::set_meta_at(dir, name, &e.meta, owners).ctx("set metadata", p)?;
            Ok(false)
        }
        Op::Delete => {
            if cur()?.is_some() {
                let w = txn.work_for(root, &mut fsx::DirCache::default(), p, false)?;
                fsx::rename_noreplace(dir, name, w.backup.as_fd(), &backup_name(i)).ctx("move out of the tree", p)?;
                return Ok(true);
            }
            Ok(false)
        }
    }
}

/// Undo step `i` if it happened (idempotent). Directory metadata is restored separately, after
/// every rename, by [`restore_dir_meta`].
pub fn reverse(root: BorrowedFd<'_>, txn: &mut Txn, i: usize, old_meta: &OldMeta, owners: bool) -> Result<()> {
    let m = &txn.head.manifest;
    let step = m.script[i].clone();
    let p = &step.path;
    let (dir, name) = match fsx::parent_of(root, p) {
        Ok(x) => x,
        // Parent never created, or already swapped back to a non-directory: nothing here.
        Err(e) if matches!(fsx::errno(&e), Some(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR)) => return Ok(()),
        Err(e) => return Err(e).ctx("open parent of", p),
    };
    let dir = dir.as_fd();
    let cur = fsx::lstat_at(dir, name).ctx("stat", p)?;
    match step.op {
        Op::Mkdir => {
            if is_dir(&cur) {
                fsx::unlink_at(dir, name, true).ctx("remove directory", p)?;
            }
        }
        Op::Place => {
            let Facts { new_type, old_type, kept, sname, exchange, id, work } =
                facts(root, txn, &mut fsx::DirCache::default(), p)?;
            let (sd, bd) = (txn.works[work].stage.as_fd(), txn.works[work].backup.as_fd());
            let staged = fsx::lstat_at(sd, &sname).ctx("stat staged", p)?;
            if kept {
                let side = bundle::ferry_new_name(p);
                if staged.is_none() && fsx::lstat_at(dir, &side).ctx("stat", p)?.is_some() {
                    fsx::rename_noreplace(dir, &side, sd, &sname).ctx("move out of the tree", p)?;
                }
            } else if exchange {
                let forward_done = cur.as_ref().is_some_and(|c| type_name(c) == new_type)
                    && staged.as_ref().is_some_and(|s| Some(type_name(s)) == old_type);
                if forward_done {
                    fsx::exchange(sd, &sname, dir, name).ctx("exchange back", p)?;
                }
            } else if let (Some(_), Some(id)) = (old_type, id) {
                let bname = backup_name(i);
                let backup = || fsx::lstat_at(bd, &bname).ctx("stat backup", p);
                if is_id(&cur, id) && staged.is_some() {
                    // The live path holds the staged inode: the forward exchange happened, and
                    // the OLD inode is in the staging slot. Exchange back.
                    fsx::exchange(sd, &sname, dir, name).ctx("exchange back", p)?;
                } else if staged.is_some() && !is_id(&staged, id) {
                    // The slot holds the OLD inode but the path was replaced after the apply:
                    // put OLD back over it (as a backup rename would). Afterwards the slot is
                    // empty, so a rerun does nothing.
                    fsx::rename_at(sd, &sname, dir, name).ctx("restore from the staging slot", p)?;
                } else if staged.is_none() && backup()?.is_some() {
                    // Forward used the link-and-rename fallback (no RENAME_EXCHANGE).
                    fsx::rename_at(bd, &bname, dir, name).ctx("restore from backup", p)?;
                }
            } else if old_type.is_some() {
                let bname = backup_name(i);
                if fsx::lstat_at(bd, &bname).ctx("stat backup", p)?.is_some() {
                    if staged.is_none() {
                        fsx::rename_at(bd, &bname, dir, name).ctx("restore from backup", p)?;
                    } else {
                        fsx::unlink_at(bd, &bname, false).ctx("remove unused backup", p)?;
                    }
                }
            } else if staged.is_none() && cur.is_some() {
                fsx::rename_noreplace(dir, name, sd, &sname).ctx("move out of the tree", p)?;
            }
        }
        Op::SetMeta => {
            if let Some(meta) = old_meta.get(p) {
                fsx::set_meta_at(dir, name, meta, owners).ctx("restore metadata", p)?;
            }
        }
        Op::Delete => {
            let w = txn.work_for(root, &mut fsx::DirCache::default(), p, false)?;
            let bname = backup_name(i);
            if cur.is_none() && fsx::lstat_at(w.backup.as_fd(), &bname).ctx("stat backup", p)?.is_some() {
                fsx::rename_noreplace(w.backup.as_fd(), &bname, dir, name).ctx("restore", p)?;
            }
        }
        Op::DirMeta => {}
    }
    Ok(())
}

/// Restore the saved metadata of every directory a step touched (after all renames of a
/// rollback, which change directory mtimes), deepest first.
pub fn restore_dir_meta(root: BorrowedFd<'_>, old_meta: &OldMeta, owners: bool) -> Result<()> {
    for (p, meta) in old_meta.iter().rev() {
        if let Ok((d, n)) = fsx::parent_of(root, p) {
            if is_dir(&fsx::lstat_at(d.as_fd(), n).ctx("stat", p)?) {
                fsx::set_meta_at(d.as_fd(), n, meta, owners).ctx("restore metadata", p)?;
            }
        }
    }
    Ok(())
}

/// Record the current metadata of every existing path a step touches.
pub fn capture_old_meta(root: BorrowedFd<'_>, m: &Manifest) -> OldMeta {
    let mut out = OldMeta::new();
    let mut dirs = fsx::DirCache::default();
    for s in &m.script {
        if let Ok(Some(st)) = dirs.lstat(root, &s.path) {
            out.insert(s.path.clone(), fsx::meta_of(&st));
        }
    }
    out
}
