//! A transaction on disk: the saved manifest and signatures, the journal, and one work directory
//! (staging + backups) per filesystem the update touches, so every rename stays on one
//! filesystem (bundle-format.md, "Staging and work directories").
//!
//! A work directory in the target is created fresh under an unpredictable name (a `mkdir` that
//! fails on an existing name: a directory someone else put there is never adopted), `0700`, and
//! its `(st_dev, st_ino)` is journaled; every later open checks it (bundle-format.md §15, local
//! users: a pre-created or swapped work directory).

use crate::error::{Ctx, Error, Result};
use crate::fsx;
use crate::journal::{self, Journal, Record};
use crate::state::{self, Dir};
use crate::verify::Head;
use bundle::sig::TrustPolicy;
use bundle::{BundlePath, Limits};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

pub struct Work {
    pub dev: u64,
    pub stage: OwnedFd,
    pub backup: OwnedFd,
}

/// A work directory recorded in the journal.
#[derive(Clone, Debug)]
pub struct WorkLoc {
    /// Mount ([`fsx::mount_key`]).
    pub dev: u64,
    /// Relative to the target root; `None` for `TXN/work`.
    pub path: Option<BundlePath>,
    /// `(st_dev, st_ino)` of the directory as created (None: journaled by an older version).
    pub id: Option<(u64, u64)>,
}

pub struct Txn {
    /// The transaction directory (`STATE/txn` or `STATE/prev`).
    pub dir: Dir,
    pub head: Head,
    pub journal: Journal,
    pub records: Vec<Record>,
    pub works: Vec<Work>,
    /// Work-directory locations recorded in the journal.
    pub work_locs: Vec<WorkLoc>,
    /// Config files whose local edits are kept (`kept.cbor`): their NEW version goes beside them.
    pub kept: std::collections::BTreeSet<BundlePath>,
    /// `(st_dev, st_ino)` of each NEW entry's staged object (`(0, 0)` for entries with none),
    /// recorded once staging is complete (`staged-ids.cbor`, durable before `Staged`). A `Place`
    /// over an OLD entry exchanges the staged object with the live one, so the live path holds
    /// this inode exactly when the step happened. `None` for a transaction staged by an older
    /// ferry-apply, whose `Place` steps hard-link a backup and rename instead.
    pub staged_ids: Option<Vec<(u64, u64)>>,
    /// `(st_dev, st_ino, change time)` the base check saw at each OLD path a metadata step changes
    /// in place (`base-ids.cbor`): the step acts on that inode only.
    pub base_ids: std::collections::BTreeMap<BundlePath, (u64, u64, u64)>,
    /// The extended attributes this transaction sets and checks: the manifest's, minus the
    /// `--skip-xattrs` prefixes of the apply that started it (`xattr-skip.cbor`, so a resume
    /// drops exactly what the apply dropped).
    pub attrs: crate::xattrs::Attrs,
    /// Mount of each parent directory already looked up (a directory's mount does not change
    /// during an apply: type changes swap within one work directory).
    mounts: std::collections::HashMap<Option<BundlePath>, u64>,
}

/// File in the transaction directory holding [`Txn::staged_ids`].
pub const STAGED_IDS: &str = "staged-ids.cbor";
/// File in the transaction directory holding [`Txn::base_ids`].
pub const BASE_IDS: &str = "base-ids.cbor";
const MANIFEST: &str = "manifest.cbor";
const SIGNATURES: &str = "signatures.cbor";
const KEPT: &str = "kept.cbor";
/// Replace mode: the full bundle's manifest rebased on the target ([`crate::replace`]).
const REPLACE: &str = "replace.cbor";
/// Present once a run of this transaction read every frame of the bundle with its hash matching
/// and the end of the archive (bundle-format.md §7, §11); until then a resume reads the bundle
/// again, even if every staged file is complete.
const FRAMES_VERIFIED: &str = "frames-verified";
const XATTR_SKIP: &str = "xattr-skip.cbor";

/// Prefix of the name of a work directory on a filesystem other than the state directory's, at
/// the topmost directory of the target on that filesystem.
pub fn work_prefix(id: &bundle::Hash) -> String {
    format!(".ferry-work-{}-", &id.to_hex()[..16])
}

/// Eight unpredictable bytes, hex: a work directory's name cannot be guessed (and pre-created)
/// from the public bundle id.
fn random_suffix() -> String {
    use std::io::Read;
    let mut b = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok();
    if !ok {
        // No /dev/urandom: still unique; the mkdir that fails on an existing name is what
        // keeps a pre-created directory out.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        b = blake3::hash(format!("{t}-{}", std::process::id()).as_bytes()).as_bytes()[..8].try_into().unwrap_or(b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[allow(clippy::unnecessary_cast)] // st_dev and st_ino are not u64 on every architecture
fn id_of(fd: BorrowedFd<'_>) -> std::io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev as u64, st.st_ino as u64))
}

fn cbor<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut b = Vec::new();
    ciborium::into_writer(v, &mut b).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(b)
}

fn read_cbor<T: serde::de::DeserializeOwned>(dir: &Dir, name: &str) -> Result<Option<T>> {
    match dir.read(name, state::MAX_SMALL_FILE)? {
        None => Ok(None),
        Some(b) => ciborium::from_reader(&b[..])
            .map(Some)
            .map_err(|e| Error::CorruptState { path: dir.show(name), why: e.to_string() }),
    }
}

impl Txn {
    /// Start a transaction in `STATE/txn`: save the verified head, then journal `Begin`.
    /// `rebased`: `head.manifest` is a full bundle's manifest rebased on the target (replace
    /// mode, [`crate::replace`]); it is saved beside the signed one before `Begin`.
    pub fn create(state: &Dir, head: Head, bundle_path: &std::path::Path, rebased: bool) -> Result<Txn> {
        let dir = state.subdir(state::TXN, true)?.ok_or_else(|| Error::Internal("no transaction directory".into()))?;
        let r = Self::create_inner(dir, head, bundle_path, rebased);
        if r.is_err() {
            // Nothing was staged yet: leave no half-written transaction behind.
            let _ = state.remove_tree(state::TXN);
        }
        r
    }

    fn create_inner(dir: Dir, head: Head, bundle_path: &std::path::Path, rebased: bool) -> Result<Txn> {
        dir.write_atomic(MANIFEST, &head.manifest_bytes)?;
        dir.write_atomic(SIGNATURES, &head.sig_bytes)?;
        if rebased {
            dir.write_atomic(REPLACE, &head.manifest.to_cbor())?;
        } else {
            dir.remove_tree(REPLACE)?;
        }
        let mut journal = Journal::open(&dir)?;
        dir.sync()?;
        use std::os::unix::ffi::OsStrExt;
        let abs = std::fs::canonicalize(bundle_path).unwrap_or_else(|_| bundle_path.to_path_buf());
        let rec = Record::Begin { bundle_id: head.id, bundle_path: abs.as_os_str().as_bytes().to_vec() };
        journal.append(&rec)?;
        let attrs = crate::xattrs::Attrs::new(&head.manifest, &[]);
        Ok(Txn {
            dir,
            head,
            journal,
            records: vec![rec],
            works: Vec::new(),
            work_locs: Vec::new(),
            kept: Default::default(),
            staged_ids: None,
            base_ids: Default::default(),
            attrs,
            mounts: Default::default(),
        })
    }

    /// Load transaction directory `name` of the state directory (resume, rollback, status). The
    /// saved manifest is verified again (signatures, structure, and with `trust` the trust
    /// policy), trusting no file in the state directory blindly. `None` if there is none, or its
    /// `Begin` never became durable. The saved manifest of an encrypted bundle is its outer
    /// manifest: with `keys` it is opened again ([`crate::unseal::open`]); without (status),
    /// only its public fields are known.
    pub fn load(
        state: &Dir,
        name: &str,
        limits: &Limits,
        trust: Option<&TrustPolicy>,
        keys: Option<&crate::unseal::Keyring>,
    ) -> Result<Option<Txn>> {
        let Some(dir) = state.subdir(name, false)? else { return Ok(None) };
        let records = journal::read(&dir)?;
        if !matches!(records.first(), Some(Record::Begin { .. })) {
            return Ok(None);
        }
        let missing = |f: &str| Error::CorruptState { path: dir.show(f), why: "missing".into() };
        let mb = dir.read(MANIFEST, limits.max_manifest_bytes)?.ok_or_else(|| missing(MANIFEST))?;
        let sb = dir.read(SIGNATURES, 1 << 20)?.ok_or_else(|| missing(SIGNATURES))?;
        let mut framed = Vec::new();
        bundle::container::write_member(&mut framed, bundle::container::MANIFEST_NAME, &mb)
            .ctx("buffer", "manifest")?;
        bundle::container::write_member(&mut framed, bundle::container::SIGNATURES_NAME, &sb)
            .ctx("buffer", "manifest")?;
        let mut r = bundle::container::Reader::new(&framed[..], limits.clone());
        let head = crate::verify::head(&mut r, trust, limits)?;
        let mut head = match keys {
            Some(k) => crate::unseal::open(head, k, limits)?,
            None => head,
        };
        if let Some(b) = dir.read(REPLACE, limits.max_manifest_decoded)? {
            let corrupt = |why: String| Error::CorruptState { path: dir.show(REPLACE), why };
            let rebased: bundle::Manifest = ciborium::from_reader(&b[..]).map_err(|e| corrupt(e.to_string()))?;
            crate::replace::check_rebase(&head.manifest, &rebased).map_err(corrupt)?;
            head.manifest = rebased;
        }
        if records.first() != Some(&Record::Begin { bundle_id: head.id, bundle_path: begin_path(&records) }) {
            return Err(Error::CorruptState {
                path: dir.show(journal::JOURNAL),
                why: "journal of another bundle".into(),
            });
        }
        let work_locs = records
            .iter()
            .filter_map(|r| match r {
                Record::WorkDir { dev, path, id } => Some(WorkLoc { dev: *dev, path: path.clone(), id: *id }),
                _ => None,
            })
            .collect();
        let journal = Journal::open(&dir)?;
        let kept = read_cbor(&dir, KEPT)?.unwrap_or_default();
        let staged_ids = read_cbor(&dir, STAGED_IDS)?;
        let base_ids = read_cbor(&dir, BASE_IDS)?.unwrap_or_default();
        let skip: Vec<String> = read_cbor(&dir, XATTR_SKIP)?.unwrap_or_default();
        let attrs = crate::xattrs::Attrs::new(&head.manifest, &skip);
        Ok(Some(Txn {
            dir,
            head,
            journal,
            records,
            works: Vec::new(),
            work_locs,
            kept,
            staged_ids,
            base_ids,
            attrs,
            mounts: Default::default(),
        }))
    }

    /// Record the config files whose local edits are kept (before staging starts).
    pub fn save_kept(&mut self, kept: &[BundlePath]) -> Result<()> {
        self.kept = kept.iter().cloned().collect();
        self.dir.write_atomic(KEPT, &cbor(&self.kept)?)
    }

    /// Record the operator's `--skip-xattrs` prefixes (before staging: a resume must drop exactly
    /// what this apply drops).
    pub fn save_xattr_skip(&mut self, skip: &[String]) -> Result<()> {
        if !skip.is_empty() {
            self.dir.write_atomic(XATTR_SKIP, &cbor(&skip)?)?;
        }
        self.attrs = crate::xattrs::Attrs::new(&self.head.manifest, skip);
        Ok(())
    }

    /// Record the inodes the base check verified at paths changed in place (before staging).
    pub fn save_base_ids(&mut self, ids: std::collections::BTreeMap<BundlePath, (u64, u64, u64)>) -> Result<()> {
        self.dir.write_atomic(BASE_IDS, &cbor(&ids)?)?;
        self.base_ids = ids;
        Ok(())
    }

    /// Record the identities of the staged objects (after the staging sync, before `Staged`).
    pub fn save_staged_ids(&mut self, ids: Vec<(u64, u64)>) -> Result<()> {
        self.dir.write_atomic(STAGED_IDS, &cbor(&ids)?)?;
        self.staged_ids = Some(ids);
        crate::failpoint::hit("staged-ids");
        Ok(())
    }

    /// Whether a run of this transaction verified every frame and the end of the archive
    /// ([`FRAMES_VERIFIED`]; `Staged` implies it).
    pub fn frames_verified(&self) -> Result<bool> {
        Ok(self.has(&Record::Staged) || self.dir.open_read(FRAMES_VERIFIED)?.is_some())
    }

    /// Record that every frame and the end of the archive were verified.
    pub fn mark_frames_verified(&self) -> Result<()> {
        self.dir.write_atomic(FRAMES_VERIFIED, b"")
    }

    /// Save a small file (state before, old metadata) in the transaction directory.
    pub fn save_file(&self, name: &str, data: &[u8]) -> Result<()> {
        self.dir.write_atomic(name, data)
    }

    pub fn has(&self, want: &Record) -> bool {
        self.records.iter().any(|r| r == want)
    }

    pub fn has_abort(&self) -> bool {
        self.records.iter().any(|r| matches!(r, Record::Abort { .. }))
    }

    pub fn bundle_path(&self) -> Option<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let p = begin_path(&self.records);
        (!p.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&p)))
    }

    pub fn append(&mut self, r: Record) -> Result<()> {
        self.journal.append(&r)?;
        self.records.push(r);
        Ok(())
    }

    /// Open a recorded work directory and check it is the one this applier created.
    fn open_loc(&self, root: BorrowedFd<'_>, loc: &WorkLoc) -> Result<Option<OwnedFd>> {
        let fd = match &loc.path {
            None => match self.dir.subdir("work", false)? {
                Some(d) => OwnedFd::from(d),
                None => return Ok(None),
            },
            Some(p) => match fsx::open_dir_beneath(root, Some(p)) {
                Ok(fd) => fd,
                Err(e) if fsx::errno(&e) == Some(rustix::io::Errno::NOENT) => return Ok(None),
                Err(e) if matches!(fsx::errno(&e), Some(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)) => {
                    return Err(Error::UnsafeState { path: p.to_string(), why: "work directory is a symlink".into() })
                }
                Err(e) => return Err(e).ctx("open work directory", p),
            },
        };
        check_work(fd.as_fd(), loc)?;
        Ok(Some(fd))
    }

    /// Open the work directories recorded in the journal (resume). A missing one was removed by
    /// an interrupted cleanup; with `create` (staging not finished) it is made again, fresh.
    pub fn open_works(&mut self, root: BorrowedFd<'_>, create: bool) -> Result<()> {
        self.works.clear();
        let mut seen = std::collections::HashSet::new();
        for loc in self.work_locs.clone().into_iter().rev() {
            // The last record of a mount wins (a work directory made again).
            if !seen.insert(loc.dev) {
                continue;
            }
            match self.open_loc(root, &loc)? {
                Some(base) => self.works.push(open_work(loc.dev, base.as_fd(), create)?),
                None if create => {
                    let base = self.make_work(root, loc.dev, loc.path.as_ref().and_then(|p| p.parent()))?;
                    self.works.push(open_work(loc.dev, base.as_fd(), true)?);
                }
                None => {}
            }
        }
        Ok(())
    }

    /// A recorded work directory that [`Txn::open_works`] did not find, if any.
    pub fn missing_work(&self) -> Option<String> {
        self.work_locs.iter().find(|l| !self.works.iter().any(|w| w.dev == l.dev)).map(|l| match &l.path {
            Some(p) => p.to_string(),
            None => self.dir.show("work"),
        })
    }

    /// Create a fresh work directory for mount `dev` in `top` (the target directory) or in the
    /// transaction directory (`top` = `None` and `dev` the state directory's mount), and journal
    /// it with its identity.
    fn make_work(&mut self, root: BorrowedFd<'_>, dev: u64, top: Option<BundlePath>) -> Result<OwnedFd> {
        let in_state = fsx::mount_key(self.dir.fd()).ctx("stat", self.dir.path().display())? == dev;
        let (path, fd) = if in_state && top.is_none() {
            if self.dir.exists("work")? {
                // Left by a crash before it was journaled: ours (the transaction directory is
                // private), but empty it rather than trust what is inside.
                self.dir.remove_tree("work")?;
            }
            let d = self.dir.subdir("work", true)?.ok_or_else(|| Error::Internal("work directory".into()))?;
            (None, OwnedFd::from(d))
        } else {
            let name = format!("{}{}", work_prefix(&self.head.id), random_suffix());
            let path = match &top {
                None => BundlePath::new(name.clone().into_bytes())?,
                Some(t) => t.join(name.as_bytes())?,
            };
            let parent = fsx::open_dir_beneath(root, top.as_ref()).ctx("open", path.to_string())?;
            // Fails on an existing name: never adopt a directory someone else made.
            fsx::keeping_mtime(parent.as_fd(), || fsx::mkdir_at(parent.as_fd(), name.as_bytes(), 0o700))
                .ctx("create work directory", &path)?;
            let fd = fsx::open_dir_at(parent.as_fd(), name.as_bytes()).ctx("open work directory", &path)?;
            fsx::fsync_fd(parent.as_fd()).ctx("fsync", &path)?;
            (Some(path), fd)
        };
        let id = Some(id_of(fd.as_fd()).ctx("stat", "work directory")?);
        let loc = WorkLoc { dev, path: path.clone(), id };
        self.append(Record::WorkDir { dev, path, id })?;
        self.work_locs.push(loc);
        Ok(fd)
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
            return Err(Error::CorruptState {
                path: path.to_string(),
                why: format!("the transaction has no work directory for its filesystem (mount {dev})"),
            });
        }
        let state_dev = fsx::mount_key(self.dir.fd()).ctx("stat", self.dir.path().display())?;
        let top = if state_dev == dev { None } else { Some(topmost_on(root, path, dev)?) };
        let base = self.make_work(root, dev, top.flatten())?;
        self.works.push(open_work(dev, base.as_fd(), true)?);
        let n = self.works.len() - 1;
        Ok(&self.works[n])
    }

    /// Retire transaction directory `name` (a completed `prev`, a rolled-back or refused one):
    /// move it to `STATE/trash/` in one rename, so it is no longer pending or kept, then clean
    /// it up. A cleanup failure is reported and retried by later runs ([`sweep_trash`]); it
    /// never blocks the next apply.
    pub fn retire(state: &Dir, name: &str) -> Result<()> {
        if !state.exists(name)? {
            return Ok(());
        }
        let trash = state.subdir(state::TRASH, true)?.ok_or_else(|| Error::Internal("trash".into()))?;
        let slot = format!("{name}-{}-{}", state::now(), random_suffix());
        state.rename(name, &trash, &slot)?;
        trash.sync()?;
        state.sync()
    }
}

/// The path of the `Begin` record.
fn begin_path(records: &[Record]) -> Vec<u8> {
    match records.first() {
        Some(Record::Begin { bundle_path, .. }) => bundle_path.clone(),
        _ => Vec::new(),
    }
}

/// A work directory must be the one journaled (when its identity was), private and ours.
fn check_work(fd: BorrowedFd<'_>, loc: &WorkLoc) -> Result<()> {
    let st = rustix::fs::fstat(fd).ctx("stat", "work directory")?;
    let show = || loc.path.as_ref().map_or("TXN/work".to_string(), |p| p.to_string());
    #[allow(clippy::unnecessary_cast)]
    let id = (st.st_dev as u64, st.st_ino as u64);
    if loc.id.is_some_and(|want| want != id) {
        return Err(Error::UnsafeState {
            path: show(),
            why: "work directory was replaced after it was created".into(),
        });
    }
    if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
        return Err(Error::UnsafeState { path: show(), why: "work directory is not private to the applier".into() });
    }
    Ok(())
}

/// Remove the work directories in the target that are the ones journaled.
fn remove_works(root: BorrowedFd<'_>, locs: &[WorkLoc]) -> Result<()> {
    for loc in locs {
        // Only a work directory by ferry's naming, whatever a (possibly forged) journal says.
        let Some(p) = loc.path.as_ref().filter(|p| p.file_name().starts_with(b".ferry-work-")) else { continue };
        let Ok((d, n)) = fsx::parent_of(root, p) else { continue };
        let Ok(fd) = fsx::open_dir_at(d.as_fd(), n) else { continue };
        if check_work(fd.as_fd(), loc).is_err() || loc.id.is_none() {
            continue; // not ours (or journaled by an older version without identity): leave it
        }
        drop(fd);
        fsx::keeping_mtime(d.as_fd(), || fsx::remove_tree_at(d.as_fd(), n)).ctx("remove work directory", p)?;
    }
    Ok(())
}

/// Clean up retired transactions in `STATE/trash/`; returns what could not be removed (as
/// messages), to be reported and retried by the next run.
pub fn sweep_trash(root: BorrowedFd<'_>, state: &Dir) -> Vec<String> {
    let mut left = Vec::new();
    let trash = match state.subdir(state::TRASH, false) {
        Ok(Some(t)) => t,
        Ok(None) => return left,
        Err(e) => return vec![e.to_string()],
    };
    for name in trash.list().unwrap_or_default() {
        let r = (|| -> Result<()> {
            if let Some(d) = trash.subdir(&name, false)? {
                let locs: Vec<WorkLoc> = journal::read(&d)?
                    .into_iter()
                    .filter_map(|r| match r {
                        Record::WorkDir { dev, path, id } => Some(WorkLoc { dev, path, id }),
                        _ => None,
                    })
                    .collect();
                remove_works(root, &locs)?;
            }
            trash.remove_tree(&name)
        })();
        if let Err(e) = r {
            left.push(format!("cleanup of {} left for a later run: {e}", trash.show(&name)));
        }
    }
    let _ = trash.sync();
    left
}

/// The topmost directory of the target on mount `dev` above `path` (`None`: the root).
fn topmost_on(root: BorrowedFd<'_>, path: &BundlePath, dev: u64) -> Result<Option<BundlePath>> {
    let root_dev = fsx::mount_key(root).ctx("stat", "target root")?;
    if root_dev == dev {
        return Ok(None);
    }
    for a in &path.ancestors() {
        if let Ok(d) = fsx::open_dir_beneath(root, Some(a)) {
            if fsx::mount_key(d.as_fd()).ok() == Some(dev) {
                return Ok(Some(a.clone()));
            }
        }
    }
    Ok(None)
}

fn open_work(dev: u64, base: BorrowedFd<'_>, create: bool) -> Result<Work> {
    let sub = |name: &[u8]| -> Result<OwnedFd> {
        if create {
            // Inside a private directory of ours: an existing one is from our earlier run.
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
///
/// The ancestors are tried outermost first and the walk stops at the first that is not a real
/// directory: nothing beneath it can be opened either (every lookup goes component by component
/// from its parent's handle), and the cache answers the existing ones without a system call, so a
/// path costs at most one failing lookup. (Innermost first cost one per missing level: 43,000
/// failing `openat`s for rootfs-up's 5,538 staged entries under new directories.)
fn nearest_dir_dev(root: BorrowedFd<'_>, dirs: &mut fsx::DirCache, path: &BundlePath) -> Result<(u64, bool)> {
    let anc = path.ancestors();
    let mut nearest: Option<&BundlePath> = None;
    for a in &anc {
        if dirs.dir(root, Some(a)).is_err() {
            break;
        }
        nearest = Some(a);
    }
    let parent = nearest.is_some_and(|n| Some(n) == anc.last()) || anc.is_empty();
    match nearest {
        Some(a) => Ok((fsx::mount_key(dirs.dir(root, Some(a)).ctx("open", a)?).ctx("stat", a)?, parent)),
        None => Ok((fsx::mount_key(root).ctx("stat", "target root")?, parent)),
    }
}

/// Staged object name of NEW entry `i`.
pub fn staged_name(i: usize) -> Vec<u8> {
    format!("e{i}").into_bytes()
}

/// Backup name of the OLD entry replaced or deleted by step `i`.
pub fn backup_name(i: usize) -> Vec<u8> {
    format!("s{i}").into_bytes()
}
