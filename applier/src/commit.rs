//! The commit: the apply script's steps, each a rename or a metadata change, run in order; and
//! their inverses for rollback. Every step is idempotent and detects from the filesystem alone
//! whether it already happened, so resume simply runs the whole script again (bundle-format.md,
//! "Commit steps and their crash analysis"). Steps are not journaled one by one: renames are
//! atomic on their own, and one `syncfs` per filesystem after the last step makes all of them
//! durable before `Committed` is journaled.
//!
//! Each step is planned as one [`Action`], a protocol chosen from the manifest and the
//! transaction alone; each protocol is a type whose `forward` and `reverse` sit side by side:
//!
//! | step | protocol | forward | reverse |
//! |---|---|---|---|
//! | `Mkdir` | [`CreateDir`] | `mkdir` that fails on an existing name | `rmdir` if empty |
//! | `Place`, no OLD entry | [`Create`] | rename staged → path, never replacing | rename path → slot |
//! | `Place` over OLD non-directory | [`ExchangeFile`] | `RENAME_EXCHANGE`: OLD lands in the slot | exchange back |
//! | ... from an older transaction | [`LinkAndRename`] | hard-link OLD to backup, rename over | rename backup back |
//! | `Place` with a directory on either side | [`ExchangeDir`] | `RENAME_EXCHANGE` | exchange back |
//! | `Place` of a kept config file | [`BesideConfig`] | staged → `NAME.ferry-new` | move it back |
//! | `SetMeta` raising permissions | [`ExchangeFile`] of a staged copy | as above | as above |
//! | `SetMeta` | [`SetMetaInPlace`] | owner, mode, mtime through a handle of the verified inode | the saved metadata |
//! | `Delete` | [`Delete`] | rename path → backup | rename back |
//! | `DirMeta` | [`DirMeta`] | metadata through a handle | (restored after all renames) |
//!
//! After the last step, [`disarm_displaced`] drops the set-id bits and capability of every OLD
//! regular file the steps moved out that has a link outside the transaction (a user's hard link
//! to an old privileged program); they stay dropped, also after a rollback.

use crate::error::{Ctx, Error, Result};
use crate::fsx;
use crate::txn::{backup_name, staged_name, Txn};
use bundle::{BundlePath, Kind, Manifest, Meta, OldKind, Op};
use rustix::fs::{FileType, Stat};
use rustix::io::Errno;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd};

/// Actual metadata of touched paths before the commit, saved for rollback.
pub type OldMeta = BTreeMap<BundlePath, Meta>;

fn entry_index(m: &Manifest, p: &BundlePath) -> Result<usize> {
    m.entries.binary_search_by(|e| e.path.cmp(p)).map_err(|_| Error::Internal(format!("{p}: not in NEW")))
}

/// The type of a filesystem object, as the manifest's kinds and `stat` both name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Other,
}

impl Type {
    pub fn of_stat(s: &Stat) -> Type {
        match fsx::file_type(s) {
            FileType::RegularFile => Type::File,
            FileType::Directory => Type::Dir,
            FileType::Symlink => Type::Symlink,
            FileType::Fifo => Type::Fifo,
            FileType::CharacterDevice => Type::CharDev,
            FileType::BlockDevice => Type::BlockDev,
            _ => Type::Other,
        }
    }

    /// Of a NEW entry as it appears on disk (a hardlink is a file).
    pub fn of_kind(k: &Kind) -> Type {
        match k {
            Kind::File { .. } | Kind::Hardlink { .. } => Type::File,
            Kind::Dir => Type::Dir,
            Kind::Symlink { .. } => Type::Symlink,
            Kind::Fifo => Type::Fifo,
            Kind::CharDev { .. } => Type::CharDev,
            Kind::BlockDev { .. } => Type::BlockDev,
        }
    }

    pub fn of_old(k: &OldKind) -> Type {
        match k {
            OldKind::File { .. } | OldKind::Tagged { .. } => Type::File,
            OldKind::Dir => Type::Dir,
            OldKind::Symlink { .. } => Type::Symlink,
            OldKind::Fifo => Type::Fifo,
            OldKind::CharDev { .. } => Type::CharDev,
            OldKind::BlockDev { .. } => Type::BlockDev,
        }
    }
}

fn type_of(s: &Option<Stat>) -> Option<Type> {
    s.as_ref().map(Type::of_stat)
}

#[allow(clippy::unnecessary_cast)] // st_dev and st_ino are not u64 on every architecture
fn id(s: &Stat) -> (u64, u64) {
    (s.st_dev as u64, s.st_ino as u64)
}

fn is_id(s: &Option<Stat>, want: (u64, u64)) -> bool {
    s.as_ref().is_some_and(|s| id(s) == want)
}

/// Whether the `SetMeta` step at `p` is done by a staged copy (a regular file whose change
/// raises permissions).
pub fn setmeta_by_copy(m: &Manifest, p: &BundlePath, owners: bool) -> bool {
    let (Some(e), Some(o)) = (m.entry(p), m.old_entry(p)) else { return false };
    matches!(e.kind, Kind::File { .. })
        && o.kind.file_size().is_some()
        && o.meta.raises_permissions(&e.meta, owners, &m.xattr_sets)
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
    /// Apply owners (the applier runs as root).
    pub owners: bool,
    /// The action of each step, worked out by [`prepare`] before the first rename.
    pub actions: Vec<Action>,
    /// Directories this run created (`Mkdir`), by identity: `DirMeta` acts on them only.
    created: HashMap<BundlePath, (u64, u64)>,
    /// Names the script places in each directory, built on first need (a resumed `Mkdir`).
    placed: Placed,
    /// Where the steps run so far left the OLD objects they moved out ([`disarm_displaced`]).
    displaced: Vec<Displaced>,
}

/// The names the script creates directly in each directory, indexed once when first asked.
#[derive(Default)]
pub struct Placed(Option<HashMap<BundlePath, std::collections::HashSet<Vec<u8>>>>);

impl Placed {
    fn contains(&mut self, m: &Manifest, dir: &BundlePath, name: &[u8]) -> bool {
        let map = self.0.get_or_insert_with(|| {
            let mut map: HashMap<BundlePath, std::collections::HashSet<Vec<u8>>> = HashMap::new();
            for s in m.script.iter().filter(|s| matches!(s.op, Op::Place | Op::Mkdir)) {
                if let Some(parent) = s.path.parent() {
                    map.entry(parent).or_default().insert(s.path.file_name().to_vec());
                }
            }
            map
        });
        map.get(dir).is_some_and(|names| names.contains(name))
    }
}

impl Commit {
    pub fn new(fresh: bool, owners: bool) -> Commit {
        Commit {
            dirs: fsx::DirCache::new(commit_dir_cache()),
            fresh,
            owners,
            actions: Vec::new(),
            created: HashMap::new(),
            placed: Placed::default(),
            displaced: Vec::new(),
        }
    }
}

/// A staged object: which work directory, and its name in `stage/`.
#[derive(Clone, Debug)]
pub struct Slot {
    work: usize,
    name: Vec<u8>,
}

/// What one step of the script does; see the module's table.
#[derive(Clone, Debug)]
pub enum Action {
    CreateDir(CreateDir),
    Create(Create),
    ExchangeFile(ExchangeFile),
    LinkAndRename(LinkAndRename),
    ExchangeDir(ExchangeDir),
    BesideConfig(BesideConfig),
    SetMetaInPlace(SetMetaInPlace),
    Delete(Delete),
    DirMeta(DirMeta),
    /// A `SetMeta` of a kept config file: the local file keeps its metadata.
    Nothing,
}

/// Everything a step runs against: the live parent directory and name, the step's work
/// directory, and the commit's state.
pub struct Cx<'a> {
    pub i: usize,
    pub path: &'a BundlePath,
    pub dir: BorrowedFd<'a>,
    pub name: &'a [u8],
    pub stage: BorrowedFd<'a>,
    pub backup: BorrowedFd<'a>,
    pub fresh: bool,
    pub owners: bool,
    /// The extended attributes in scope ([`crate::xattrs`]).
    pub attrs: &'a crate::xattrs::Attrs,
}

impl Cx<'_> {
    fn cur(&self) -> Result<Option<Stat>> {
        fsx::lstat_at(self.dir, self.name).ctx("stat", self.path)
    }
    fn staged(&self, s: &Slot) -> Result<Option<Stat>> {
        fsx::lstat_at(self.stage, &s.name).ctx("stat staged", self.path)
    }
}

/// `Mkdir`: a directory created fresh. An existing directory at the path (made by someone else
/// after the base check) is never adopted: it is drift. On resume, one left by the earlier run
/// is recognised by its owner and by holding only what the bundle puts in it.
#[derive(Clone, Debug)]
pub struct CreateDir {
    meta: Meta,
}

impl CreateDir {
    fn forward(
        &self,
        cx: &Cx<'_>,
        created: &mut HashMap<BundlePath, (u64, u64)>,
        m: &Manifest,
        placed: &mut Placed,
    ) -> Result<bool> {
        let mut meta = self.meta;
        meta.mtime_ns = 0; // set by the directory's DirMeta step after its children arrive
        match fsx::mkdir_at(cx.dir, cx.name, 0o700) {
            Ok(()) => {}
            Err(e) if fsx::errno(&e) == Some(Errno::EXIST) && !cx.fresh => {
                self.check_ours(cx, m, placed)?;
            }
            Err(e) if fsx::errno(&e) == Some(Errno::EXIST) => {
                return Err(Error::Drift(vec![format!(
                    "{}: exists, but the bundle creates it (made after the base check?)",
                    cx.path
                )]))
            }
            Err(e) => return Err(e).ctx("mkdir", cx.path),
        }
        let fd = fsx::open_dir_at(cx.dir, cx.name).ctx("open", cx.path)?;
        let st = rustix::fs::fstat(&fd).ctx("stat", cx.path)?;
        created.insert(cx.path.clone(), id(&st));
        fsx::set_meta_fd(fd.as_fd(), &meta, cx.owners, cx.attrs).ctx("set metadata", cx.path)?;
        Ok(false)
    }

    /// On resume: the directory at the path is the one the earlier run made.
    fn check_ours(&self, cx: &Cx<'_>, m: &Manifest, placed: &mut Placed) -> Result<()> {
        let st = cx.cur()?;
        let drift = |why: &str| Error::Drift(vec![format!("{}: {why}, but the bundle creates it", cx.path)]);
        let Some(st) = st.filter(|s| Type::of_stat(s) == Type::Dir) else { return Err(drift("not a directory")) };
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me && !(cx.owners && st.st_uid == self.meta.uid) {
            return Err(drift(&format!("exists, owned by uid {}", st.st_uid)));
        }
        let fd = fsx::open_dir_at(cx.dir, cx.name).ctx("open", cx.path)?;
        for n in fsx::list_dir(fd.as_fd()).ctx("list", cx.path)? {
            if !placed.contains(m, cx.path, &n) {
                return Err(drift(&format!(
                    "holds {:?}, which the bundle does not put there",
                    String::from_utf8_lossy(&n)
                )));
            }
        }
        Ok(())
    }

    fn reverse(&self, cx: &Cx<'_>) -> Result<()> {
        if type_of(&cx.cur()?) == Some(Type::Dir) {
            match fsx::unlink_at(cx.dir, cx.name, true) {
                // Someone else's files in it: leave the directory (and them) where they are.
                Err(e) if fsx::errno(&e) == Some(Errno::NOTEMPTY) => {}
                r => r.ctx("remove directory", cx.path)?,
            }
        }
        Ok(())
    }
}

/// `Place` of a path OLD does not have: the staged object is renamed in, never over anything.
#[derive(Clone, Debug)]
pub struct Create {
    slot: Slot,
}

impl Create {
    fn forward(&self, cx: &Cx<'_>) -> Result<bool> {
        if !cx.fresh && cx.staged(&self.slot)?.is_none() {
            return Ok(false); // renamed into place by an earlier run
        }
        fsx::rename_noreplace(cx.stage, &self.slot.name, cx.dir, cx.name).ctx("rename into place", cx.path)?;
        Ok(true)
    }

    fn reverse(&self, cx: &Cx<'_>) -> Result<()> {
        if cx.staged(&self.slot)?.is_none() && cx.cur()?.is_some() {
            fsx::rename_noreplace(cx.dir, cx.name, cx.stage, &self.slot.name).ctx("move out of the tree", cx.path)?;
        }
        Ok(())
    }
}

/// `Place` of a non-directory over an OLD non-directory (and a `SetMeta` done by a staged copy):
/// `RENAME_EXCHANGE` swaps the staged object with the live one in one syscall, and the OLD inode
/// lands in the staging slot, which is its backup. The live path holds the staged inode `id`
/// exactly when the step happened. On a filesystem without `RENAME_EXCHANGE`, the OLD inode is
/// hard-linked into the backup area first and the staged object renamed over it.
#[derive(Clone, Debug)]
pub struct ExchangeFile {
    slot: Slot,
    id: (u64, u64),
    /// A metadata change done by a staged copy: the parent directory's entries do not change in
    /// NEW, so its mtime is kept (no `DirMeta` step will set it).
    keep_parent_mtime: bool,
}

impl ExchangeFile {
    fn forward(&self, cx: &Cx<'_>) -> Result<bool> {
        if self.keep_parent_mtime {
            return fsx::keeping_mtime(cx.dir, || Ok(self.forward_inner(cx)))
                .ctx("keep the mtime of the parent of", cx.path)?;
        }
        self.forward_inner(cx)
    }

    fn reverse(&self, cx: &Cx<'_>) -> Result<()> {
        if self.keep_parent_mtime {
            return fsx::keeping_mtime(cx.dir, || Ok(self.reverse_inner(cx)))
                .ctx("keep the mtime of the parent of", cx.path)?;
        }
        self.reverse_inner(cx)
    }

    fn forward_inner(&self, cx: &Cx<'_>) -> Result<bool> {
        if !cx.fresh && is_id(&cx.cur()?, self.id) {
            return Ok(false);
        }
        match exchange_file(cx.stage, &self.slot.name, cx.dir, cx.name) {
            Ok(()) => {}
            Err(e) if unsupported(&e) => {
                // One link left by an interrupted run is fine.
                match fsx::link_at(cx.dir, cx.name, cx.backup, &backup_name(cx.i)) {
                    Err(e) if fsx::errno(&e) != Some(Errno::EXIST) => return Err(e).ctx("back up (link)", cx.path),
                    _ => {}
                }
                fsx::rename_at(cx.stage, &self.slot.name, cx.dir, cx.name).ctx("rename into place", cx.path)?;
            }
            Err(e) => return Err(e).ctx("exchange into place", cx.path),
        }
        Ok(true)
    }

    fn reverse_inner(&self, cx: &Cx<'_>) -> Result<()> {
        let (cur, staged) = (cx.cur()?, cx.staged(&self.slot)?);
        let bname = backup_name(cx.i);
        if is_id(&cur, self.id) && staged.is_some() {
            // The forward exchange happened: OLD is in the slot. Exchange back.
            fsx::exchange(cx.stage, &self.slot.name, cx.dir, cx.name).ctx("exchange back", cx.path)?;
        } else if staged.is_some() && !is_id(&staged, self.id) {
            // The slot holds OLD but the path was replaced after the apply: put OLD back over it.
            // Afterwards the slot is empty, so a rerun does nothing.
            fsx::rename_at(cx.stage, &self.slot.name, cx.dir, cx.name).ctx("restore from the staging slot", cx.path)?;
        } else if staged.is_none() && fsx::lstat_at(cx.backup, &bname).ctx("stat backup", cx.path)?.is_some() {
            // Forward used the link-and-rename fallback.
            fsx::rename_at(cx.backup, &bname, cx.dir, cx.name).ctx("restore from backup", cx.path)?;
        }
        Ok(())
    }
}

/// `Place` over an OLD entry in a transaction staged by an older ferry-apply (no staged
/// identities): hard-link the OLD inode into the backup area, then rename over it.
#[derive(Clone, Debug)]
pub struct LinkAndRename {
    slot: Slot,
}

impl LinkAndRename {
    fn forward(&self, cx: &Cx<'_>) -> Result<bool> {
        if cx.staged(&self.slot)?.is_none() {
            return Ok(false);
        }
        let bname = backup_name(cx.i);
        if fsx::lstat_at(cx.backup, &bname).ctx("stat backup", cx.path)?.is_none() {
            fsx::link_at(cx.dir, cx.name, cx.backup, &bname).ctx("back up (link)", cx.path)?;
        }
        fsx::rename_at(cx.stage, &self.slot.name, cx.dir, cx.name).ctx("rename into place", cx.path)?;
        Ok(true)
    }

    fn reverse(&self, cx: &Cx<'_>) -> Result<()> {
        let bname = backup_name(cx.i);
        if fsx::lstat_at(cx.backup, &bname).ctx("stat backup", cx.path)?.is_some() {
            if cx.staged(&self.slot)?.is_none() {
                fsx::rename_at(cx.backup, &bname, cx.dir, cx.name).ctx("restore from backup", cx.path)?;
            } else {
                fsx::unlink_at(cx.backup, &bname, false).ctx("remove unused backup", cx.path)?;
            }
        }
        Ok(())
    }
}

/// `Place` where OLD or NEW is a directory (a type change): `RENAME_EXCHANGE`; the OLD entry,
/// with any subtree, ends up in the staging slot, which is its backup.
#[derive(Clone, Debug)]
pub struct ExchangeDir {
    slot: Slot,
    new_type: Type,
    old_type: Type,
}

impl ExchangeDir {
    fn done(&self, cx: &Cx<'_>) -> Result<bool> {
        Ok(type_of(&cx.cur()?) == Some(self.new_type) && type_of(&cx.staged(&self.slot)?) == Some(self.old_type))
    }

    fn forward(&self, cx: &Cx<'_>) -> Result<bool> {
        if self.done(cx)? {
            return Ok(false);
        }
        fsx::exchange(cx.stage, &self.slot.name, cx.dir, cx.name).ctx("exchange", cx.path)?;
        Ok(true)
    }

    fn reverse(&self, cx: &Cx<'_>) -> Result<()> {
        if self.done(cx)? {
            fsx::exchange(cx.stage, &self.slot.name, cx.dir, cx.name).ctx("exchange back", cx.path)?;
        }
        Ok(())
    }
}

/// `Place` of a locally edited config file (the conffile rule): the local file stays and the NEW
/// version goes beside it as `NAME.ferry-new`. An earlier `NAME.ferry-new` that ferry wrote
/// (the base check refuses one it did not) is exchanged into the slot, its backup.
#[derive(Clone, Debug)]
pub struct BesideConfig {
    slot: Slot,
    id: Option<(u64, u64)>,
}

impl BesideConfig {
    fn forward(&self, cx: &Cx<'_>) -> Result<bool> {
        let side = bundle::ferry_new_name(cx.path);
        let cur = fsx::lstat_at(cx.dir, &side).ctx("stat", cx.path)?;
        match self.id {
            Some(id) if !cx.fresh && is_id(&cur, id) => return Ok(false),
            None if !cx.fresh && cx.staged(&self.slot)?.is_none() => return Ok(false),
            _ => {}
        }
        if cur.is_some() && self.id.is_some() {
            fsx::exchange(cx.stage, &self.slot.name, cx.dir, &side)
                .ctx("place beside the local config file", cx.path)?;
        } else {
            fsx::rename_noreplace(cx.stage, &self.slot.name, cx.dir, &side)
                .ctx("place beside the local config file", cx.path)?;
        }
        Ok(true)
    }

    fn reverse(&self, cx: &Cx<'_>) -> Result<()> {
        let side = bundle::ferry_new_name(cx.path);
        let cur = fsx::lstat_at(cx.dir, &side).ctx("stat", cx.path)?;
        let staged = cx.staged(&self.slot)?;
        let ours = match self.id {
            Some(id) => is_id(&cur, id),
            None => staged.is_none() && cur.is_some(),
        };
        if !ours {
            return Ok(());
        }
        if staged.is_some() {
            fsx::exchange(cx.stage, &self.slot.name, cx.dir, &side).ctx("exchange back", cx.path)?;
        } else {
            fsx::rename_noreplace(cx.dir, &side, cx.stage, &self.slot.name).ctx("move out of the tree", cx.path)?;
        }
        Ok(())
    }
}

/// `SetMeta` applied in place: owner, mode and mtime set through a handle of the inode the base
/// check verified (same device, inode and type), never through a path a local user could swap.
#[derive(Clone, Debug)]
pub struct SetMetaInPlace {
    meta: Meta,
    /// `(st_dev, st_ino, change time)` from the base check (absent in older transactions).
    base: Option<(u64, u64, u64)>,
}

impl SetMetaInPlace {
    fn forward(&self, cx: &Cx<'_>) -> Result<bool> {
        let ctime = self.base.map(|b| b.2).filter(|&c| c != 0);
        set_meta_verified(cx, &self.meta, self.base.map(|(d, i, _)| (d, i)), ctime)?;
        Ok(false)
    }

    fn reverse(&self, cx: &Cx<'_>, old: &OldMeta) -> Result<()> {
        if let Some(meta) = old.get(cx.path) {
            // The forward step changed the change time: the device and inode identify it here.
            set_meta_verified(cx, meta, self.base.map(|(d, i, _)| (d, i)), None)?;
        }
        Ok(())
    }
}

/// Set `meta` on the object at the step's path, through a handle, if it is the inode `want`
/// and, for a regular file, has the change time `ctime` (bundle-format.md §10.1: a file a user
/// deleted and made again after the base check may get the same inode number, never the same
/// change time). A file that already has `meta`'s owner and mode passes whatever its change
/// time: the change was made (on resume, or through another name of a hardlink group, which
/// shares the inode), and a user's own file cannot have them unless `meta` gives them to that
/// user anyway. Regular files and directories are opened (`O_NOFOLLOW | O_NONBLOCK`) and
/// changed with `fchown`/`fchmod`/`futimens`; symlinks, FIFOs and devices (which have nothing to
/// gain from a swap and must not be opened for reading) through an `O_PATH` handle after the
/// same check ([`fsx::set_meta_unopened`]).
fn set_meta_verified(cx: &Cx<'_>, meta: &Meta, want: Option<(u64, u64)>, ctime: Option<u64>) -> Result<()> {
    let drift = |why: String| Error::Drift(vec![format!("{}: {why}", cx.path)]);
    match fsx::open_meta_at(cx.dir, cx.name).ctx("open", cx.path)? {
        Some(fd) => {
            let st = rustix::fs::fstat(&fd).ctx("stat", cx.path)?;
            let cur = fsx::meta_of(&st);
            let done = (cur.uid, cur.gid, cur.mode) == (meta.uid, meta.gid, meta.mode);
            let recreated = fsx::file_type(&st) == FileType::RegularFile
                && ctime.is_some_and(|c| c != crate::base::change_time(&st))
                && !done;
            if want.is_some_and(|w| w != id(&st)) || recreated {
                return Err(drift("replaced after the base check".into()));
            }
            fsx::set_meta_fd(fd.as_fd(), meta, cx.owners, cx.attrs).ctx("set metadata", cx.path)
        }
        None => {
            let st = cx.cur()?.ok_or_else(|| drift("missing".into()))?;
            if want.is_some_and(|w| w != id(&st)) {
                return Err(drift("replaced after the base check".into()));
            }
            fsx::set_meta_unopened(cx.dir, cx.name, meta, cx.owners, cx.attrs, want.or(Some(id(&st))))
                .ctx("set metadata", cx.path)
        }
    }
}

/// `Delete`: the OLD entry (with any subtree) is moved into the backup area.
#[derive(Clone, Debug)]
pub struct Delete;

impl Delete {
    fn forward(&self, cx: &Cx<'_>) -> Result<bool> {
        if cx.cur()?.is_some() {
            fsx::rename_noreplace(cx.dir, cx.name, cx.backup, &backup_name(cx.i))
                .ctx("move out of the tree", cx.path)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn reverse(&self, cx: &Cx<'_>) -> Result<()> {
        let bname = backup_name(cx.i);
        if cx.cur()?.is_none() && fsx::lstat_at(cx.backup, &bname).ctx("stat backup", cx.path)?.is_some() {
            fsx::rename_noreplace(cx.backup, &bname, cx.dir, cx.name).ctx("restore", cx.path)?;
        }
        Ok(())
    }
}

/// `DirMeta`: a NEW directory's owner, mode and mtime, last, through a handle of the directory
/// the base check saw (an OLD directory) or this run created (`Mkdir`).
#[derive(Clone, Debug)]
pub struct DirMeta {
    meta: Meta,
    base: Option<(u64, u64, u64)>,
}

impl DirMeta {
    fn forward(&self, cx: &Cx<'_>, created: &HashMap<BundlePath, (u64, u64)>) -> Result<bool> {
        let want = created.get(cx.path).copied().or(self.base.map(|(d, i, _)| (d, i)));
        // Only ever a directory (opened `O_DIRECTORY | O_NOFOLLOW`): an object of another type
        // planted at the path (a FIFO, a file of the user's) is drift, never changed.
        let drift = |why: &str| Error::Drift(vec![format!("{}: {why}", cx.path)]);
        let fd = match fsx::open_dir_at(cx.dir, cx.name) {
            Ok(fd) => fd,
            Err(e) if matches!(fsx::errno(&e), Some(Errno::NOTDIR | Errno::LOOP | Errno::NOENT)) => {
                return Err(drift("not a directory any more"))
            }
            Err(e) => return Err(e).ctx("open", cx.path),
        };
        let st = rustix::fs::fstat(&fd).ctx("stat", cx.path)?;
        if want.is_some_and(|w| w != id(&st)) {
            return Err(drift("replaced after the base check"));
        }
        fsx::set_meta_fd(fd.as_fd(), &self.meta, cx.owners, cx.attrs).ctx("set metadata", cx.path)?;
        Ok(false)
    }
    // Reverse: directory metadata is restored after every rename of a rollback, deepest first,
    // by `restore_dir_meta` (a rename changes its parent's mtime).
}

impl Action {
    /// Run forward. Returns true if it renamed something into the live tree.
    fn forward(
        &self,
        cx: &Cx<'_>,
        created: &mut HashMap<BundlePath, (u64, u64)>,
        m: &Manifest,
        placed: &mut Placed,
    ) -> Result<bool> {
        match self {
            Action::CreateDir(a) => a.forward(cx, created, m, placed),
            Action::Create(a) => a.forward(cx),
            Action::ExchangeFile(a) => a.forward(cx),
            Action::LinkAndRename(a) => a.forward(cx),
            Action::ExchangeDir(a) => a.forward(cx),
            Action::BesideConfig(a) => a.forward(cx),
            Action::SetMetaInPlace(a) => a.forward(cx),
            Action::Delete(a) => a.forward(cx),
            Action::DirMeta(a) => a.forward(cx, created),
            Action::Nothing => Ok(false),
        }
    }

    /// Where this step leaves what it moves out of the tree, if anything, as (in `stage/` (else
    /// `backup/`), name): its staging slot (an exchange) or its backup name (a delete, or the
    /// link-and-rename fallback); for an exchange both, of which at most one exists.
    fn spots(&self, i: usize) -> Vec<(bool, Vec<u8>)> {
        match self {
            Action::ExchangeFile(a) => vec![(true, a.slot.name.clone()), (false, backup_name(i))],
            Action::ExchangeDir(a) => vec![(true, a.slot.name.clone())],
            Action::LinkAndRename(_) | Action::Delete(_) => vec![(false, backup_name(i))],
            _ => Vec::new(),
        }
    }

    /// Undo, if it happened (idempotent).
    fn reverse(&self, cx: &Cx<'_>, old: &OldMeta) -> Result<()> {
        match self {
            Action::CreateDir(a) => a.reverse(cx),
            Action::Create(a) => a.reverse(cx),
            Action::ExchangeFile(a) => a.reverse(cx),
            Action::LinkAndRename(a) => a.reverse(cx),
            Action::ExchangeDir(a) => a.reverse(cx),
            Action::BesideConfig(a) => a.reverse(cx),
            Action::SetMetaInPlace(a) => a.reverse(cx, old),
            Action::Delete(a) => a.reverse(cx),
            Action::DirMeta(_) | Action::Nothing => Ok(()),
        }
    }

    /// The staging slot the action uses, if any.
    fn slot(&self) -> Option<&Slot> {
        match self {
            Action::Create(Create { slot })
            | Action::ExchangeFile(ExchangeFile { slot, .. })
            | Action::LinkAndRename(LinkAndRename { slot })
            | Action::ExchangeDir(ExchangeDir { slot, .. })
            | Action::BesideConfig(BesideConfig { slot, .. }) => Some(slot),
            _ => None,
        }
    }
}

/// How deep [`visit_tree`] looks into a displaced OLD directory: an OS tree's programs sit a
/// few levels down, and a deeper chain (which a local user can build in a directory of theirs)
/// must not make the commit window long.
const DISARM_DEPTH: usize = 32;

/// Where a step of this commit left an OLD object it moved out of the tree: a name in the
/// `stage/` or `backup/` directory of work directory `work` (root-only, the transaction's own).
#[derive(Clone, Debug)]
pub struct Displaced {
    path: BundlePath,
    work: usize,
    stage: bool,
    name: Vec<u8>,
    /// An exchanged directory: the regular files inside it count too.
    tree: bool,
}

/// After the last step: every OLD regular file the commit moved out of the tree (or one inside
/// an OLD directory that a non-directory replaces, §6 rule 9) that is set-user-ID,
/// set-group-ID or has a `security.capability` (in scope), and that has more links than the
/// transaction's own slots and backups hold, loses those privileges (bundle-format.md §10.3,
/// "Displaced privileged files"). The builder places anew or deletes every member of a hardlink
/// group that changes (§4.2), so once every step ran, a link outside the transaction is one the
/// bundle does not know: a hard link a local user made to the old program where
/// `fs.protected_hardlinks` is 0, which must not keep root's privileges once the update
/// replaced or removed it (as dpkg and rpm do). A rollback does not give them back: by then the
/// path may hold another inode (a user can put their own file there). Idempotent (runs again
/// on resume); each drop is reported on stderr.
pub fn disarm_displaced(txn: &Txn, c: &Commit) -> Result<()> {
    let mut ours: HashMap<(u64, u64), u64> = HashMap::new();
    let mut shared = false;
    visit_displaced(txn, &c.displaced, &mut |_, _, _, st| {
        *ours.entry(id(st)).or_default() += 1;
        shared |= st.st_nlink > 1;
        Ok(())
    })?;
    if !shared {
        return Ok(()); // the common case: no displaced file has a second link anywhere
    }
    visit_displaced(txn, &c.displaced, &mut |path, dir, name, st| {
        if st.st_nlink > ours.get(&id(st)).copied().unwrap_or(1) {
            disarm_file(&txn.attrs, path, dir, name, st)?;
        }
        Ok(())
    })
}

/// What [`visit_displaced`] calls on each regular file: the step's path, the directory and name
/// the file is at, and its `lstat`.
type Visit<'a> = dyn FnMut(&BundlePath, BorrowedFd<'_>, &[u8], &Stat) -> Result<()> + 'a;

/// Call `f` on every regular file at the places in `displaced` (and, for exchanged
/// directories, inside them down to [`DISARM_DEPTH`] levels, never following a symlink).
fn visit_displaced(txn: &Txn, displaced: &[Displaced], f: &mut Visit<'_>) -> Result<()> {
    for d in displaced {
        let Some(w) = txn.works.get(d.work) else { continue };
        let base = if d.stage { w.stage.as_fd() } else { w.backup.as_fd() };
        let Some(st) = fsx::lstat_at(base, &d.name).ctx("stat displaced", &d.path)? else { continue };
        match fsx::file_type(&st) {
            FileType::RegularFile => f(&d.path, base, &d.name, &st)?,
            FileType::Directory if d.tree => visit_tree(&d.path, base, &d.name, f)?,
            _ => {}
        }
    }
    Ok(())
}

fn visit_tree(path: &BundlePath, dir: BorrowedFd<'_>, name: &[u8], f: &mut Visit<'_>) -> Result<()> {
    let top = fsx::open_dir_at(dir, name).ctx("open displaced", path)?;
    let mut stack = vec![top];
    let mut todo: Vec<Vec<Vec<u8>>> = Vec::new();
    while let Some(d) = stack.last() {
        let level = stack.len();
        if todo.len() < level {
            let mut names = fsx::list_dir(d.as_fd()).ctx("list displaced", path)?;
            names.reverse();
            todo.push(names);
        }
        let Some(n) = todo.last_mut().and_then(|t| t.pop()) else {
            stack.pop();
            todo.pop();
            continue;
        };
        let d = d.as_fd();
        let Some(st) = fsx::lstat_at(d, &n).ctx("stat displaced", path)? else { continue };
        match fsx::file_type(&st) {
            FileType::RegularFile => f(path, d, &n, &st)?,
            FileType::Directory if level < DISARM_DEPTH => {
                let sub = fsx::open_dir_at(d, &n).ctx("open displaced", path)?;
                stack.push(sub);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Drop the set-id bits and capability of the displaced regular file `name` in `dir` (seen as
/// `seen`), through a handle of that very inode.
fn disarm_file(
    attrs: &crate::xattrs::Attrs,
    path: &BundlePath,
    dir: BorrowedFd<'_>,
    name: &[u8],
    seen: &Stat,
) -> Result<()> {
    let Some(fd) = fsx::open_meta_at(dir, name).ctx("open displaced", path)? else { return Ok(()) };
    let st = rustix::fs::fstat(&fd).ctx("stat displaced", path)?;
    if fsx::file_type(&st) != FileType::RegularFile || id(&st) != id(seen) {
        return Ok(());
    }
    if st.st_mode & 0o6000 != 0 {
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(st.st_mode & 0o1777))
            .ctx("drop the set-id bits of the displaced", path)?;
        eprintln!(
            "ferry-apply: {}: the OLD file it replaced or deleted has another link; its set-id bits were dropped",
            crate::text::escape(&path.to_string())
        );
    }
    attrs.drop_capability(fd.as_fd()).ctx("drop the capability of the displaced", path)
}

/// The index of the work directory for `p` in `txn.works`.
fn work_index(root: BorrowedFd<'_>, txn: &mut Txn, dirs: &mut fsx::DirCache, p: &BundlePath) -> Result<usize> {
    let dev = txn.work_for(root, dirs, p, false)?.dev;
    txn.works.iter().position(|w| w.dev == dev).ok_or_else(|| Error::Internal("work directory vanished".into()))
}

/// Plan step `i`: its protocol, from the manifest and the transaction.
pub fn plan_step(
    root: BorrowedFd<'_>,
    txn: &mut Txn,
    dirs: &mut fsx::DirCache,
    i: usize,
    owners: bool,
) -> Result<Action> {
    let m = &txn.head.manifest;
    let step = &m.script[i];
    let p = step.path.clone();
    let ei = entry_index(m, &p);
    let staged_id = |txn: &Txn, ei: usize| -> Result<Option<(u64, u64)>> {
        match &txn.staged_ids {
            Some(ids) => Ok(Some(*ids.get(ei).ok_or_else(|| Error::Internal(format!("{p}: no staged identity")))?)),
            None => Ok(None),
        }
    };
    Ok(match step.op {
        Op::Mkdir => Action::CreateDir(CreateDir { meta: m.entries[ei?].meta }),
        Op::Place => {
            let ei = ei?;
            let new_type = Type::of_kind(&m.entries[ei].kind);
            let old_type = m.old_entry(&p).map(|o| Type::of_old(&o.kind));
            let kept = txn.kept.contains(&p);
            let slot = Slot { work: work_index(root, txn, dirs, &p)?, name: staged_name(ei) };
            let id = staged_id(txn, ei)?;
            match (old_type, id) {
                _ if kept => Action::BesideConfig(BesideConfig { slot, id }),
                (Some(old_type), _) if old_type == Type::Dir || new_type == Type::Dir => {
                    Action::ExchangeDir(ExchangeDir { slot, new_type, old_type })
                }
                (Some(_), Some(id)) => Action::ExchangeFile(ExchangeFile { slot, id, keep_parent_mtime: false }),
                (Some(_), None) => Action::LinkAndRename(LinkAndRename { slot }),
                (None, _) => Action::Create(Create { slot }),
            }
        }
        Op::SetMeta if txn.kept.contains(&p) => Action::Nothing,
        Op::SetMeta => {
            let ei = ei?;
            match staged_id(txn, ei)? {
                Some(id) if setmeta_by_copy(m, &p, owners) => {
                    if id == (0, 0) {
                        return Err(Error::Internal(format!(
                            "{p}: the staged copy for a permission change is missing"
                        )));
                    }
                    let slot = Slot { work: work_index(root, txn, dirs, &p)?, name: staged_name(ei) };
                    Action::ExchangeFile(ExchangeFile { slot, id, keep_parent_mtime: true })
                }
                _ => Action::SetMetaInPlace(SetMetaInPlace {
                    meta: m.entries[ei].meta,
                    base: txn.base_ids.get(&p).copied(),
                }),
            }
        }
        Op::Delete => Action::Delete(Delete),
        Op::DirMeta => Action::DirMeta(DirMeta { meta: m.entries[ei?].meta, base: txn.base_ids.get(&p).copied() }),
    })
}

/// Before the first rename: plan every step, so the commit window holds the renames and little
/// else.
pub fn prepare(root: BorrowedFd<'_>, txn: &mut Txn, c: &mut Commit) -> Result<()> {
    let n = txn.head.manifest.script.len();
    let mut actions = Vec::with_capacity(n);
    for i in 0..n {
        actions.push(plan_step(root, txn, &mut c.dirs, i, c.owners)?);
    }
    c.actions = actions;
    Ok(())
}

/// `RENAME_EXCHANGE` of a staged file with a live one; `FERRY_NO_EXCHANGE=1` (tests) makes it
/// fail as on a filesystem without it.
fn exchange_file(sd: BorrowedFd<'_>, sname: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<()> {
    if crate::failpoint::no_exchange() {
        return Err(Errno::INVAL.into());
    }
    fsx::exchange(sd, sname, dir, name)
}

/// The filesystem (or kernel) does not support `RENAME_EXCHANGE`.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(fsx::errno(e), Some(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS))
}

/// Entries with a staged object, by index: every `Place`d entry and every `SetMeta` done by a
/// staged copy.
pub fn staged_entries(m: &Manifest, owners: bool) -> Vec<usize> {
    m.script
        .iter()
        .filter(|s| s.op == Op::Place || (s.op == Op::SetMeta && setmeta_by_copy(m, &s.path, owners)))
        .filter_map(|s| m.entries.binary_search_by(|e| e.path.cmp(&s.path)).ok())
        .collect()
}

/// `(st_dev, st_ino)` of every NEW entry's staged object, by entry index (`(0, 0)` for none):
/// recorded after staging for the exchange protocols.
pub fn staged_ids(root: BorrowedFd<'_>, txn: &mut Txn, owners: bool) -> Result<Vec<(u64, u64)>> {
    let m = &txn.head.manifest;
    let mut ids = vec![(0u64, 0u64); m.entries.len()];
    let staged = staged_entries(m, owners);
    let mut dirs = fsx::DirCache::default();
    for ei in staged {
        let p = txn.head.manifest.entries[ei].path.clone();
        let w = txn.work_for(root, &mut dirs, &p, false)?;
        if let Some(st) = fsx::lstat_at(w.stage.as_fd(), &staged_name(ei)).ctx("stat staged", &p)? {
            ids[ei] = id(&st);
        }
    }
    Ok(ids)
}

/// On resume after `Staged`: every staged object still waiting in its slot is the one recorded
/// (same inode) and, for a file, still has the manifest's content. A transaction whose staged
/// objects were swapped or forged is refused, never committed.
pub fn verify_staged(root: BorrowedFd<'_>, txn: &mut Txn, c: &mut Commit) -> Result<()> {
    let m = txn.head.manifest.clone();
    // (step, entry) of every slot still holding its staged object.
    let mut checks: Vec<(usize, usize)> = Vec::new();
    for (i, a) in c.actions.iter().enumerate() {
        let Some(slot) = a.slot() else { continue };
        let step = &m.script[i];
        let ei = entry_index(&m, &step.path)?;
        let want = txn.staged_ids.as_ref().and_then(|ids| ids.get(ei).copied());
        let st = fsx::lstat_at(txn.works[slot.work].stage.as_fd(), &slot.name).ctx("stat staged", &step.path)?;
        let Some(st) = st else { continue };
        // After an exchange the slot holds the OLD object: the live path has the staged one. A
        // transaction without recorded identities tells a done type change by the slot's type.
        if let (None, Action::ExchangeDir(x)) = (want, a) {
            if Type::of_stat(&st) != x.new_type {
                continue;
            }
        }
        if let Some(w) = want {
            if id(&st) != w {
                let (d, n) = c.dirs.parent_of(root, &step.path).ctx("open parent of", &step.path)?;
                let live = fsx::lstat_at(d, n).ctx("stat", &step.path)?;
                let side = fsx::lstat_at(d, &bundle::ferry_new_name(&step.path)).ctx("stat", &step.path)?;
                if is_id(&live, w) || is_id(&side, w) {
                    continue;
                }
                // Not ours: remove it, so the rollback that follows cannot mistake it for the
                // OLD object an exchange left in the slot and put it in place.
                fsx::remove_tree_at(txn.works[slot.work].stage.as_fd(), &slot.name).ctx("remove", &step.path)?;
                return Err(Error::UnsafeState {
                    path: step.path.to_string(),
                    why: "its staged object was replaced after staging".into(),
                });
            }
        }
        checks.push((i, ei));
    }
    let works = &txn.works;
    let res = crate::par::map(&checks, |&(i, ei)| -> Result<()> {
        let e = &m.entries[ei];
        let Kind::File { size, .. } = &e.kind else { return Ok(()) };
        let Some(slot) = c.actions[i].slot() else { return Ok(()) };
        let hash = crate::stage::staged_hash(&m, e)?;
        let f = fsx::open_file_at(works[slot.work].stage.as_fd(), &slot.name).ctx("open staged", &e.path)?;
        let (h, n) = crate::sparse::hash_file(&f, size + 1).ctx("read staged", &e.path)?;
        if h != hash || n != *size {
            return Err(Error::UnsafeState {
                path: e.path.to_string(),
                why: "staged content does not match the manifest".into(),
            });
        }
        Ok(())
    });
    res.into_iter().collect()
}

/// Where a step runs: its work directory (if it uses one), whether a missing parent means
/// "nothing to do" (reverse steps, and `Delete` forward), and the commit's flags.
struct Where {
    work: Option<usize>,
    tolerate_missing_parent: bool,
    fresh: bool,
    owners: bool,
}

/// Resolve step `i`'s parent directory and run `f` on its context (`None`: the parent is gone
/// and the step has nothing to do).
fn with_cx<T>(
    root: BorrowedFd<'_>,
    txn: &Txn,
    dirs: &mut fsx::DirCache,
    i: usize,
    at: Where,
    f: impl FnOnce(&Cx<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let step = &txn.head.manifest.script[i];
    let p = &step.path;
    let dir = match dirs.dir(root, p.parent().as_ref()) {
        Ok(x) => x,
        // Parent never created, already moved out by an earlier run, or swapped back to a
        // non-directory: nothing to do here.
        Err(e) if at.tolerate_missing_parent && matches!(fsx::errno(&e), Some(Errno::NOENT | Errno::NOTDIR)) => {
            return Ok(None)
        }
        Err(e) => return Err(e).ctx("open parent of", p),
    };
    let (stage, backup) = match at.work.and_then(|w| txn.works.get(w)) {
        Some(w) => (w.stage.as_fd(), w.backup.as_fd()),
        None => (dir, dir), // metadata steps use no work directory
    };
    let cx = Cx {
        i,
        path: p,
        dir,
        name: p.file_name(),
        stage,
        backup,
        fresh: at.fresh,
        owners: at.owners,
        attrs: &txn.attrs,
    };
    f(&cx).map(Some)
}

/// The work directory step `i` uses: its slot's, or (for `Delete`) its path's.
fn work_of(
    root: BorrowedFd<'_>,
    txn: &mut Txn,
    dirs: &mut fsx::DirCache,
    i: usize,
    a: &Action,
) -> Result<Option<usize>> {
    match (a.slot(), a) {
        (Some(s), _) => Ok(Some(s.work)),
        (None, Action::Delete(_)) => {
            let p = txn.head.manifest.script[i].path.clone();
            Ok(Some(work_index(root, txn, dirs, &p)?))
        }
        _ => Ok(None),
    }
}

/// Run step `i` forward. Returns true if it renamed something into the live tree.
pub fn forward(root: BorrowedFd<'_>, txn: &mut Txn, i: usize, c: &mut Commit) -> Result<bool> {
    let step = &txn.head.manifest.script[i];
    let (p, op) = (step.path.clone(), step.op);
    // A step that moves a directory (exchange, delete) invalidates handles under it.
    if matches!(op, Op::Place | Op::Delete) {
        c.dirs.forget(&p);
    }
    let action = match c.actions.get(i) {
        Some(a) => a.clone(),
        None => plan_step(root, txn, &mut c.dirs, i, c.owners)?,
    };
    let work = work_of(root, txn, &mut c.dirs, i, &action)?;
    let at = Where { work, tolerate_missing_parent: op == Op::Delete, fresh: c.fresh, owners: c.owners };
    let (created, placed) = (&mut c.created, &mut c.placed);
    let m = &txn.head.manifest;
    let renamed = with_cx(root, txn, &mut c.dirs, i, at, |cx| action.forward(cx, created, m, placed))?.unwrap_or(false);
    if let Some(w) = work {
        let tree = matches!(action, Action::ExchangeDir(_));
        for (stage, name) in action.spots(i) {
            c.displaced.push(Displaced { path: p.clone(), work: w, stage, name, tree });
        }
    }
    Ok(renamed)
}

/// Undo step `i` if it happened (idempotent). Directory metadata is restored separately, after
/// every rename, by [`restore_dir_meta`].
pub fn reverse(root: BorrowedFd<'_>, txn: &mut Txn, i: usize, old_meta: &OldMeta, owners: bool) -> Result<()> {
    let mut dirs = fsx::DirCache::default();
    let action = plan_step(root, txn, &mut dirs, i, owners)?;
    let work = work_of(root, txn, &mut dirs, i, &action)?;
    let at = Where { work, tolerate_missing_parent: true, fresh: false, owners };
    with_cx(root, txn, &mut dirs, i, at, |cx| action.reverse(cx, old_meta))?;
    Ok(())
}

/// Restore the saved metadata of every directory a step touched (after all renames of a
/// rollback, which change directory mtimes), deepest first: only onto the very directory the base
/// check recorded at that path (`ids`), never onto another one a user renamed into its place.
/// Directories without a recorded identity were moved back whole (an exchanged or deleted OLD
/// directory) and kept their metadata.
pub fn restore_dir_meta(
    root: BorrowedFd<'_>,
    old_meta: &OldMeta,
    owners: bool,
    attrs: &crate::xattrs::Attrs,
    ids: &BTreeMap<BundlePath, (u64, u64, u64)>,
) -> Result<()> {
    for (p, meta) in old_meta.iter().rev() {
        let Some(&(dev, ino, _)) = ids.get(p) else { continue };
        if let Ok((d, n)) = fsx::parent_of(root, p) {
            if let Ok(fd) = fsx::open_dir_at(d.as_fd(), n) {
                let st = rustix::fs::fstat(&fd).ctx("stat", p)?;
                if id(&st) != (dev, ino) {
                    continue;
                }
                fsx::set_meta_fd(fd.as_fd(), meta, owners, attrs).ctx("restore metadata", p)?;
            }
        }
    }
    Ok(())
}

/// Record the current metadata of every existing path a step touches. Extended attributes are
/// the OLD entry's (the base check found the target's equal to them, in scope).
pub fn capture_old_meta(root: BorrowedFd<'_>, m: &Manifest) -> OldMeta {
    let mut out = OldMeta::new();
    let mut dirs = fsx::DirCache::default();
    for s in &m.script {
        if let Ok(Some(st)) = dirs.lstat(root, &s.path) {
            let mut meta = fsx::meta_of(&st);
            meta.xattrs = m.old_entry(&s.path).and_then(|o| o.meta.xattrs);
            out.insert(s.path.clone(), meta);
        }
    }
    out
}
