//! The commit: the apply script's steps, each a rename or a metadata change, run in order; and
//! their inverses for rollback. Every step is idempotent and detects from the filesystem alone
//! whether it already happened, so resume simply runs the whole script again (bundle-format.md,
//! "Commit steps and their crash analysis"). Steps are not journaled one by one: renames are
//! atomic on their own, and one `syncfs` per filesystem after the last step makes all of them
//! durable before `Committed` is journaled.

use crate::error::{Ctx, Error, Result};
use crate::fsx;
use crate::txn::{backup_name, staged_name, Txn};
use bundle::{BundlePath, Kind, Manifest, Meta, OldKind, Op};
use rustix::fs::FileType;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};

/// `NAME.ferry-new`: where the NEW version of a locally edited config file goes.
pub fn ferry_new_name(p: &BundlePath) -> Vec<u8> {
    let mut n = p.file_name().to_vec();
    n.extend_from_slice(b".ferry-new");
    n
}

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

/// Open directory handles of the commit, by path, so that each step costs one `openat` per
/// new directory rather than one per path component: the commit window is renames, not lookups.
/// A handle stays valid while its directory is not moved; steps that move a path forget every
/// handle at or under it first.
#[derive(Default)]
pub struct DirCache {
    dirs: std::collections::HashMap<BundlePath, std::os::fd::OwnedFd>,
}

impl DirCache {
    /// The parent directory of `p` (resolved beneath `root` without following symlinks).
    fn parent(&mut self, root: BorrowedFd<'_>, p: &BundlePath) -> std::io::Result<std::os::fd::OwnedFd> {
        let Some(parent) = p.parent() else {
            return fsx::open_dir_beneath(root, None);
        };
        if let Some(fd) = self.dirs.get(&parent) {
            return fd.try_clone();
        }
        let up = self.parent(root, &parent)?;
        let fd = fsx::open_dir_at(up.as_fd(), parent.file_name())?;
        let copy = fd.try_clone()?;
        self.dirs.insert(parent, fd);
        Ok(copy)
    }

    fn forget(&mut self, p: &BundlePath) {
        // Handles under `p` exist only if `p`'s own handle does (every lookup caches each
        // ancestor on its way), so most steps cost one hash lookup here.
        if self.dirs.remove(p).is_some() {
            self.dirs.retain(|k, _| !k.is_under(p));
        }
    }
}

/// Everything a `Place` step (forward or reverse) needs to know about its path.
struct Slot<'a> {
    new_kind: Kind,
    old: Option<OldKind>,
    /// A locally edited config file (the conffile rule).
    kept: bool,
    sd: BorrowedFd<'a>,
    bd: BorrowedFd<'a>,
    sname: Vec<u8>,
    /// The staged object, if still in the staging slot.
    staged: Option<rustix::fs::Stat>,
    /// A type change involving a directory: done with `RENAME_EXCHANGE`.
    exchange: bool,
}

fn slot<'a>(root: BorrowedFd<'_>, txn: &'a mut Txn, p: &BundlePath) -> Result<Slot<'a>> {
    let m = &txn.head.manifest;
    let ei = entry_index(m, p)?;
    let new_kind = m.entries[ei].kind.clone();
    let old = m.old_entry(p).map(|o| o.kind.clone());
    let kept = txn.kept.contains(p);
    let exchange = matches!(old, Some(OldKind::Dir)) || (old.is_some() && matches!(new_kind, Kind::Dir));
    let w = txn.work_for(root, p, false)?;
    let (sd, bd) = (w.stage.as_fd(), w.backup.as_fd());
    let sname = staged_name(ei);
    let staged = fsx::lstat_at(sd, &sname).ctx("stat staged", p)?;
    Ok(Slot { new_kind, old, kept, sd, bd, sname, staged, exchange })
}

/// Run step `i` forward. Returns true if it renamed something into the live tree.
pub fn forward(root: BorrowedFd<'_>, txn: &mut Txn, i: usize, owners: bool, dirs: &mut DirCache) -> Result<bool> {
    let step = txn.head.manifest.script[i].clone();
    let p = &step.path;
    // A step that moves a directory (exchange, delete) invalidates handles under it.
    if matches!(step.op, Op::Place | Op::Delete) {
        dirs.forget(p);
    }
    let dir = match dirs.parent(root, p) {
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
    let m = &txn.head.manifest;
    let dir = dir.as_fd();
    let cur = fsx::lstat_at(dir, name).ctx("stat", p)?;
    match step.op {
        Op::Mkdir => {
            let e = &m.entries[entry_index(m, p)?];
            if !is_dir(&cur) {
                fsx::mkdir_at(dir, name, 0o700).ctx("mkdir", p)?;
            }
            let mut meta = e.meta;
            meta.mtime_ns = 0;
            fsx::set_meta_at(dir, name, &meta, owners).ctx("set metadata", p)?;
            Ok(false)
        }
        Op::Place => {
            let Slot { new_kind, old, kept, sd, bd, sname, staged, exchange } = slot(root, txn, p)?;
            if exchange {
                // Type change involving a directory: swap atomically; the OLD entry (with any
                // subtree) ends up in the staging slot, which is its backup.
                let done = cur.as_ref().is_some_and(|c| type_name(c) == new_type(&new_kind))
                    && staged.as_ref().is_some_and(|s| Some(type_name(s)) == old.as_ref().map(|o| o.name()));
                if done {
                    return Ok(false);
                }
                fsx::exchange(sd, &sname, dir, name).ctx("exchange", p)?;
                return Ok(true);
            }
            if staged.is_none() {
                return Ok(false); // renamed into place by an earlier run
            }
            if kept {
                // Conffile rule: the local edit stays; the NEW version goes beside it.
                fsx::rename_at(sd, &sname, dir, &ferry_new_name(p)).ctx("place beside the local config file", p)?;
                return Ok(true);
            }
            if old.is_some() {
                // Keep the OLD inode for rollback: a hard link, no copy.
                let bname = backup_name(i);
                if fsx::lstat_at(bd, &bname).ctx("stat backup", p)?.is_none() {
                    fsx::link_at(dir, name, bd, &bname).ctx("back up (link)", p)?;
                }
                fsx::rename_at(sd, &sname, dir, name).ctx("rename into place", p)?;
            } else {
                fsx::rename_noreplace(sd, &sname, dir, name).ctx("rename into place", p)?;
            }
            Ok(true)
        }
        Op::SetMeta if txn.kept.contains(p) => Ok(false),
        Op::SetMeta => {
            let e = &m.entries[entry_index(m, p)?];
            fsx::set_meta_at(dir, name, &e.meta, owners).ctx("set metadata", p)?;
            Ok(false)
        }
        Op::Delete => {
            if cur.is_some() {
                let w = txn.work_for(root, p, false)?;
                fsx::rename_noreplace(dir, name, w.backup.as_fd(), &backup_name(i)).ctx("move out of the tree", p)?;
                return Ok(true);
            }
            Ok(false)
        }
        Op::DirMeta => {
            let e = &m.entries[entry_index(m, p)?];
            fsx::set_meta_at(dir, name, &e.meta, owners).ctx("set metadata", p)?;
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
            let Slot { new_kind, old, kept, sd, bd, sname, staged, exchange } = slot(root, txn, p)?;
            if kept {
                let side = ferry_new_name(p);
                if staged.is_none() && fsx::lstat_at(dir, &side).ctx("stat", p)?.is_some() {
                    fsx::rename_noreplace(dir, &side, sd, &sname).ctx("move out of the tree", p)?;
                }
            } else if exchange {
                let forward_done = cur.as_ref().is_some_and(|c| type_name(c) == new_type(&new_kind))
                    && staged.as_ref().is_some_and(|s| Some(type_name(s)) == old.as_ref().map(|o| o.name()));
                if forward_done {
                    fsx::exchange(sd, &sname, dir, name).ctx("exchange back", p)?;
                }
            } else if old.is_some() {
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
            let w = txn.work_for(root, p, false)?;
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
    for s in &m.script {
        if let Ok(Some(st)) = fsx::lstat(root, &s.path) {
            out.insert(s.path.clone(), fsx::meta_of(&st));
        }
    }
    out
}
