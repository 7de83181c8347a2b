//! A transaction on disk: the saved manifest and signatures, the journal, and one work directory
//! (staging + backups) per filesystem the update touches, so every rename stays on one
//! filesystem (bundle-format.md, "Staging and work directories").

use crate::error::{Ctx, Error, Result};
use crate::fsx;
use crate::journal::{self, Journal, Record};
use crate::verify::Head;
use bundle::{BundlePath, Limits};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub struct Work {
    pub dev: u64,
    pub stage: OwnedFd,
    pub backup: OwnedFd,
}

pub struct Txn {
    pub dir: PathBuf,
    pub head: Head,
    pub journal: Journal,
    pub records: Vec<Record>,
    pub works: Vec<Work>,
    /// Work-directory locations recorded in the journal: (dev, path relative to the target).
    pub work_locs: Vec<(u64, Option<BundlePath>)>,
    /// Config files whose local edits are kept (`kept.cbor`): their NEW version goes beside them.
    pub kept: std::collections::BTreeSet<BundlePath>,
    /// `(st_dev, st_ino)` of each NEW entry's staged object (`(0, 0)` for entries with none),
    /// recorded once staging is complete (`staged-ids.cbor`, durable before `Staged`). A `Place`
    /// over an OLD entry exchanges the staged object with the live one, so the live path holds
    /// this inode exactly when the step happened. `None` for a transaction staged by an older
    /// ferry-apply, whose `Place` steps hard-link a backup and rename instead.
    pub staged_ids: Option<Vec<(u64, u64)>>,
    /// Mount of each parent directory already looked up (a directory's mount does not change
    /// during an apply: type changes swap within one work directory).
    mounts: std::collections::HashMap<Option<BundlePath>, u64>,
}

/// File in the transaction directory holding [`Txn::staged_ids`].
pub const STAGED_IDS: &str = "staged-ids.cbor";

/// Name of a work directory on a filesystem other than the state directory's, at the topmost
/// directory of the target on that filesystem.
pub fn work_name(id: &bundle::Hash) -> Vec<u8> {
    format!(".ferry-work-{}", &id.to_hex()[..16]).into_bytes()
}

impl Txn {
    /// Start a transaction: save the verified head, then journal `Begin`.
    pub fn create(dir: &Path, head: Head, bundle_path: &Path) -> Result<Txn> {
        Self::create_inner(dir, head, bundle_path).inspect_err(|_| {
            // Nothing was staged yet: leave no half-written transaction behind.
            let _ = std::fs::remove_dir_all(dir);
        })
    }

    fn create_inner(dir: &Path, head: Head, bundle_path: &Path) -> Result<Txn> {
        std::fs::create_dir_all(dir).ctx("create transaction directory", dir.display())?;
        crate::state::write_atomic(&dir.join("manifest.cbor"), &head.manifest_bytes)?;
        crate::state::write_atomic(&dir.join("signatures.cbor"), &head.sig_bytes)?;
        let mut journal = Journal::open(&dir.join("journal"))?;
        crate::state::fsync_dir(dir)?;
        if let Some(p) = dir.parent() {
            crate::state::fsync_dir(p)?;
        }
        use std::os::unix::ffi::OsStrExt;
        let abs = std::fs::canonicalize(bundle_path).unwrap_or_else(|_| bundle_path.to_path_buf());
        let rec = Record::Begin { bundle_id: head.id, bundle_path: abs.as_os_str().as_bytes().to_vec() };
        journal.append(&rec)?;
        Ok(Txn {
            dir: dir.to_path_buf(),
            head,
            journal,
            records: vec![rec],
            works: Vec::new(),
            work_locs: Vec::new(),
            kept: Default::default(),
            staged_ids: None,
            mounts: Default::default(),
        })
    }

    /// Load a transaction directory (resume, rollback, status). The saved manifest is verified
    /// again (signatures, structure), trusting no file in the state directory blindly.
    pub fn load(dir: &Path, limits: &Limits) -> Result<Option<Txn>> {
        let records = journal::read(&dir.join("journal"))?;
        if !matches!(records.first(), Some(Record::Begin { .. })) {
            return Ok(None);
        }
        let mb = std::fs::read(dir.join("manifest.cbor")).ctx("read", dir.join("manifest.cbor").display())?;
        let sb = std::fs::read(dir.join("signatures.cbor")).ctx("read", dir.join("signatures.cbor").display())?;
        let mut framed = Vec::new();
        bundle::container::write_member(&mut framed, bundle::container::MANIFEST_NAME, &mb)
            .ctx("buffer", "manifest")?;
        bundle::container::write_member(&mut framed, bundle::container::SIGNATURES_NAME, &sb)
            .ctx("buffer", "manifest")?;
        let mut r = bundle::container::Reader::new(&framed[..], limits.clone());
        let head = crate::verify::head(&mut r, None, limits)?;
        let work_locs = records
            .iter()
            .filter_map(|r| match r {
                Record::WorkDir { dev, path } => Some((*dev, path.clone())),
                _ => None,
            })
            .collect();
        let journal = Journal::open(&dir.join("journal"))?;
        let kept = match std::fs::read(dir.join("kept.cbor")) {
            Ok(b) => ciborium::from_reader(&b[..]).map_err(|e| Error::Internal(format!("kept.cbor: {e}")))?,
            Err(_) => Default::default(),
        };
        let staged_ids = match std::fs::read(dir.join(STAGED_IDS)) {
            Ok(b) => Some(ciborium::from_reader(&b[..]).map_err(|e| Error::Internal(format!("{STAGED_IDS}: {e}")))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).ctx("read", dir.join(STAGED_IDS).display()),
        };
        Ok(Some(Txn {
            dir: dir.to_path_buf(),
            head,
            journal,
            records,
            works: Vec::new(),
            work_locs,
            kept,
            staged_ids,
            mounts: Default::default(),
        }))
    }

    /// Record the config files whose local edits are kept (before staging starts).
    pub fn save_kept(&mut self, kept: &[BundlePath]) -> Result<()> {
        self.kept = kept.iter().cloned().collect();
        let mut b = Vec::new();
        ciborium::into_writer(&self.kept, &mut b).map_err(|e| Error::Internal(e.to_string()))?;
        crate::state::write_atomic(&self.dir.join("kept.cbor"), &b)
    }

    /// Record the identities of the staged objects (after the staging sync, before `Staged`).
    pub fn save_staged_ids(&mut self, ids: Vec<(u64, u64)>) -> Result<()> {
        let mut b = Vec::new();
        ciborium::into_writer(&ids, &mut b).map_err(|e| Error::Internal(e.to_string()))?;
        crate::state::write_atomic(&self.dir.join(STAGED_IDS), &b)?;
        self.staged_ids = Some(ids);
        crate::failpoint::hit("staged-ids");
        Ok(())
    }

    pub fn has(&self, want: &Record) -> bool {
        self.records.iter().any(|r| r == want)
    }

    pub fn has_abort(&self) -> bool {
        self.records.iter().any(|r| matches!(r, Record::Abort { .. }))
    }

    pub fn bundle_path(&self) -> Option<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        self.records.iter().find_map(|r| match r {
            Record::Begin { bundle_path, .. } => Some(PathBuf::from(std::ffi::OsStr::from_bytes(bundle_path))),
            _ => None,
        })
    }

    pub fn append(&mut self, r: Record) -> Result<()> {
        self.journal.append(&r)?;
        self.records.push(r);
        Ok(())
    }

    fn open_loc(&self, root: BorrowedFd<'_>, loc: &Option<BundlePath>, create: bool) -> Result<OwnedFd> {
        let base: OwnedFd = match loc {
            None => {
                let w = self.dir.join("work");
                if create {
                    std::fs::create_dir_all(&w).ctx("create", w.display())?;
                }
                fsx::open_dir_path(&w).ctx("open work directory", w.display())?
            }
            Some(p) => {
                if create {
                    let (d, n) = fsx::parent_of(root, p).ctx("open", p)?;
                    fsx::keeping_mtime(d.as_fd(), || match fsx::mkdir_at(d.as_fd(), n, 0o700) {
                        Err(e) if fsx::errno(&e) == Some(rustix::io::Errno::EXIST) => Ok(()),
                        r => r,
                    })
                    .ctx("create work directory", p)?;
                }
                fsx::open_dir_beneath(root, Some(p)).ctx("open work directory", p)?
            }
        };
        Ok(base)
    }

    /// Open the work directories recorded in the journal (resume).
    pub fn open_works(&mut self, root: BorrowedFd<'_>, create: bool) -> Result<()> {
        self.works.clear();
        for (dev, loc) in self.work_locs.clone() {
            let base = match self.open_loc(root, &loc, create) {
                Ok(b) => b,
                Err(e) if !create => {
                    // Already removed (cleanup interrupted): nothing staged there any more.
                    let _ = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.works.push(open_work(dev, base.as_fd(), create)?);
        }
        Ok(())
    }

    /// The work directory for objects that will live in `path`'s parent directory, created (and
    /// journaled) on first use. The filesystem is that of the nearest existing ancestor.
    /// `dirs` resolves the directories looked at (the caller's cache: see [`fsx::DirCache`]).
    pub fn work_for(
        &mut self,
        root: BorrowedFd<'_>,
        dirs: &mut fsx::DirCache,
        path: &BundlePath,
        create: bool,
    ) -> Result<&Work> {
        let parent = path.parent();
        let dev = match self.mounts.get(&parent) {
            Some(d) => *d,
            None => {
                let (d, parent_exists) = nearest_dir_dev(root, dirs, path)?;
                // Only remember directories that exist (a missing one is looked up again once
                // a step has created it).
                if parent_exists {
                    self.mounts.insert(parent, d);
                }
                d
            }
        };
        if let Some(i) = self.works.iter().position(|w| w.dev == dev) {
            return Ok(&self.works[i]);
        }
        if !create {
            return Err(Error::Internal(format!("{path}: no work directory for device {dev}")));
        }
        let txn_dir = fsx::open_dir_path(&self.dir).ctx("open", self.dir.display())?;
        let txn_dev = fsx::mount_key(txn_dir.as_fd()).ctx("stat", self.dir.display())?;
        let loc = if txn_dev == dev {
            None
        } else {
            // Topmost directory of the target on this filesystem.
            let mut top: Option<BundlePath> = None;
            let anc: Vec<BundlePath> = path.ancestors();
            let root_dev = fsx::mount_key(root).ctx("stat", "target root")?;
            if root_dev != dev {
                for a in &anc {
                    if let Ok(d) = fsx::open_dir_beneath(root, Some(a)) {
                        if fsx::mount_key(d.as_fd()).ok() == Some(dev) {
                            top = Some(a.clone());
                            break;
                        }
                    }
                }
            }
            let name = work_name(&self.head.id);
            Some(match top {
                None => BundlePath::new(name)?,
                Some(t) => t.join(&name)?,
            })
        };
        self.append(Record::WorkDir { dev, path: loc.clone() })?;
        self.work_locs.push((dev, loc.clone()));
        let base = self.open_loc(root, &loc, true)?;
        self.works.push(open_work(dev, base.as_fd(), true)?);
        let n = self.works.len() - 1;
        Ok(&self.works[n])
    }

    /// Remove every work directory and the transaction directory.
    pub fn remove(self, root: BorrowedFd<'_>) -> Result<()> {
        for (_, loc) in &self.work_locs {
            if let Some(p) = loc {
                if let Ok((d, n)) = fsx::parent_of(root, p) {
                    fsx::keeping_mtime(d.as_fd(), || fsx::remove_tree_at(d.as_fd(), n))
                        .ctx("remove work directory", p)?;
                }
            }
        }
        let parent = self.dir.parent().map(Path::to_path_buf);
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove", self.dir.display()),
        }
        if let Some(p) = parent {
            crate::state::fsync_dir(&p)?;
        }
        Ok(())
    }
}

fn open_work(dev: u64, base: BorrowedFd<'_>, create: bool) -> Result<Work> {
    let sub = |name: &[u8]| -> Result<OwnedFd> {
        if create {
            match fsx::mkdir_at(base, name, 0o700) {
                Ok(()) => {}
                Err(e) if fsx::errno(&e) == Some(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e).ctx("create work directory", String::from_utf8_lossy(name)),
            }
        }
        fsx::open_dir_at(base, name).ctx("open work directory", String::from_utf8_lossy(name))
    };
    Ok(Work { dev, stage: sub(b"stage")?, backup: sub(b"backup")? })
}

/// Mount ([`fsx::mount_key`]) of the nearest existing ancestor directory of `path` (new directories are created on
/// their parent's filesystem).
pub fn dev_of_parent(root: BorrowedFd<'_>, dirs: &mut fsx::DirCache, path: &BundlePath) -> Result<u64> {
    Ok(nearest_dir_dev(root, dirs, path)?.0)
}

/// [`dev_of_parent`], and whether that nearest existing ancestor is `path`'s parent itself.
fn nearest_dir_dev(root: BorrowedFd<'_>, dirs: &mut fsx::DirCache, path: &BundlePath) -> Result<(u64, bool)> {
    let mut anc = path.ancestors();
    let mut parent = true;
    while let Some(a) = anc.pop() {
        if let Ok(d) = dirs.dir(root, Some(&a)) {
            return Ok((fsx::mount_key(d).ctx("stat", &a)?, parent));
        }
        parent = false;
    }
    Ok((fsx::mount_key(root).ctx("stat", "target root")?, parent))
}

/// Staged object name of NEW entry `i`.
pub fn staged_name(i: usize) -> Vec<u8> {
    format!("e{i}").into_bytes()
}

/// Backup name of the OLD entry replaced or deleted by step `i`.
pub fn backup_name(i: usize) -> Vec<u8> {
    format!("s{i}").into_bytes()
}
