//! All target I/O goes through directory handles: a path from a bundle is resolved component by
//! component from the target root with `O_NOFOLLOW`, so a symlink planted anywhere in the target
//! (or created by this very apply) can never redirect a read, write, rename or delete outside it
//! (CWE-22, CWE-59). Nothing here joins a bundle path onto a filesystem path string.

use bundle::BundlePath;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

pub const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Open a directory given by the operator (a real path; the only place a path string is used).
pub fn open_dir_path(p: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(p, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

/// Open directory `name` beneath `dir` without following a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rfs::openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

/// Resolve `path` beneath `root`, every component a real directory (no symlink anywhere).
pub fn open_dir_beneath(root: BorrowedFd<'_>, path: Option<&BundlePath>) -> io::Result<OwnedFd> {
    let mut cur = rfs::openat(root, c".", DIR_FLAGS, Mode::empty())?;
    if let Some(p) = path {
        for c in p.components() {
            cur = open_dir_at(cur.as_fd(), c)?;
        }
    }
    Ok(cur)
}

/// The parent directory of `path` (resolved beneath `root`) and the last component.
pub fn parent_of<'a>(root: BorrowedFd<'_>, path: &'a BundlePath) -> io::Result<(OwnedFd, &'a [u8])> {
    let dir = open_dir_beneath(root, path.parent().as_ref())?;
    Ok((dir, path.file_name()))
}

/// lstat of `name` in `dir`; `None` if it does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Stat>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Handles a [`DirCache`] keeps by default before it evicts all but one path's ancestors. A
/// target's soft `RLIMIT_NOFILE` is often 1024, a bundle may touch far more directories than
/// that, and the applier's parallel phases give each thread its own cache (up to 8 threads): a
/// cache holds at most its bound plus the ancestors of one path. Lookups come mostly in path
/// order, so a small cache already reuses almost every handle.
pub const DIR_CACHE_MAX: usize = 64;

/// Directory handles beneath the target root by path, each resolved once (component by component
/// with `O_NOFOLLOW`, as [`open_dir_beneath`]) and reused, so that a lookup costs one `openat`
/// per directory not yet seen rather than one per path component, with a bounded number of
/// handles open ([`DirCache::new`]). A handle stays the directory it was resolved to: whoever
/// moves or removes a directory through other handles (the commit) calls [`DirCache::forget`] on
/// its path first. Failed lookups are not cached.
pub struct DirCache {
    max: usize,
    root: Option<OwnedFd>,
    dirs: std::collections::HashMap<BundlePath, OwnedFd>,
}

impl Default for DirCache {
    fn default() -> DirCache {
        DirCache::new(DIR_CACHE_MAX)
    }
}

impl DirCache {
    /// A cache that keeps up to about `max` handles open.
    pub fn new(max: usize) -> DirCache {
        DirCache { max, root: None, dirs: std::collections::HashMap::new() }
    }

    /// The directory `d` (the root for `None`), resolved beneath `root`.
    pub fn dir(&mut self, root: BorrowedFd<'_>, d: Option<&BundlePath>) -> io::Result<BorrowedFd<'_>> {
        let Some(d) = d else {
            if self.root.is_none() {
                self.root = Some(open_dir_beneath(root, None)?);
            }
            return self.root.as_ref().map(|f| f.as_fd()).ok_or_else(|| io::Error::other("no root handle"));
        };
        if !self.dirs.contains_key(d) {
            // When full, keep only `d`'s ancestors (lookups come in path order, so they are
            // what the next lookups need). Done before the ancestors are looked up, never
            // between: a cached directory's parent is always cached too, which `forget` relies
            // on, and the kept ancestors are a chain from the root.
            if self.dirs.len() >= self.max {
                self.dirs.retain(|k, _| d.is_under(k));
            }
            let fd = open_dir_at(self.dir(root, d.parent().as_ref())?, d.file_name())?;
            self.dirs.insert(d.clone(), fd);
        }
        self.dirs.get(d).map(|f| f.as_fd()).ok_or_else(|| io::Error::other("no directory handle"))
    }

    /// The parent directory of `path` and the last component (as [`parent_of`]).
    pub fn parent_of<'p>(
        &mut self,
        root: BorrowedFd<'_>,
        path: &'p BundlePath,
    ) -> io::Result<(BorrowedFd<'_>, &'p [u8])> {
        Ok((self.dir(root, path.parent().as_ref())?, path.file_name()))
    }

    /// lstat of a bundle path; `None` if it or a parent does not exist. A parent that is not a
    /// real directory (a planted symlink) is an error.
    pub fn lstat(&mut self, root: BorrowedFd<'_>, path: &BundlePath) -> io::Result<Option<Stat>> {
        match self.parent_of(root, path) {
            Ok((d, n)) => lstat_at(d, n),
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Drop the handles of `p` and of everything under it (before `p` is moved or removed).
    pub fn forget(&mut self, p: &BundlePath) {
        // Handles under `p` exist only if `p`'s own handle does (every lookup caches each
        // ancestor on its way, and eviction keeps a chain of ancestors), so most calls cost one
        // hash lookup.
        if self.dirs.remove(p).is_some() {
            self.dirs.retain(|k, _| !k.is_under(p));
        }
    }
}

pub fn file_type(s: &Stat) -> FileType {
    FileType::from_raw_mode(s.st_mode)
}

/// Open a regular file for reading without following a symlink and without blocking on a FIFO.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let fd =
        rfs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())?;
    let st = rfs::fstat(&fd)?;
    if file_type(&st) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(File::from(fd))
}

/// Open an existing regular file for writing (no create, no symlink followed).
pub fn open_write_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let fd = rfs::openat(dir, name, OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let st = rfs::fstat(&fd)?;
    if file_type(&st) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(File::from(fd))
}

pub fn readlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    Ok(rfs::readlinkat(dir, name, Vec::new())?.into_bytes())
}

/// Create a new file exclusively for writing.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// A scratch file in `dir`, readable and writable, that no name refers to: created as `name`
/// (`0600`, never an existing file: a leftover of a crash between the two calls is removed
/// first) and unlinked at once, so it is gone when the handle is closed, a crash included.
pub fn scratch_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    rfs::unlinkat(dir, name, AtFlags::empty())?;
    Ok(File::from(fd))
}

pub fn rename_at(fd: BorrowedFd<'_>, from: &[u8], tfd: BorrowedFd<'_>, to: &[u8]) -> io::Result<()> {
    Ok(rfs::renameat(fd, from, tfd, to)?)
}

pub fn rename_noreplace(fd: BorrowedFd<'_>, from: &[u8], tfd: BorrowedFd<'_>, to: &[u8]) -> io::Result<()> {
    Ok(rfs::renameat_with(fd, from, tfd, to, rfs::RenameFlags::NOREPLACE)?)
}

/// Atomically swap two names (any types), `renameat2(RENAME_EXCHANGE)`.
pub fn exchange(fd: BorrowedFd<'_>, a: &[u8], tfd: BorrowedFd<'_>, b: &[u8]) -> io::Result<()> {
    Ok(rfs::renameat_with(fd, a, tfd, b, rfs::RenameFlags::EXCHANGE)?)
}

/// Hard link without following a symlink at `from`.
pub fn link_at(fd: BorrowedFd<'_>, from: &[u8], tfd: BorrowedFd<'_>, to: &[u8]) -> io::Result<()> {
    Ok(rfs::linkat(fd, from, tfd, to, AtFlags::empty())?)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &[u8], is_dir: bool) -> io::Result<()> {
    Ok(rfs::unlinkat(dir, name, if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() })?)
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    Ok(rfs::mkdirat(dir, name, Mode::from_raw_mode(mode))?)
}

pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    Ok(rfs::symlinkat(target, dir, name)?)
}

pub fn mknod_at(dir: BorrowedFd<'_>, name: &[u8], ft: FileType, mode: u32, rdev: u64) -> io::Result<()> {
    Ok(rfs::mknodat(dir, name, ft, Mode::from_raw_mode(mode), rdev)?)
}

/// Passes over a tree [`remove_tree_at`] makes before it gives up (someone keeps adding to it).
const REMOVE_MAX_PASSES: usize = 100_000;

/// Remove a directory tree beneath `dir` (our own staging and backup areas only). Never follows
/// symlinks: entries are unlinked, directories opened with O_NOFOLLOW.
///
/// Iterative, with two directories open whatever the depth: every directory found below the
/// top is first moved up into the top directory (a rename within the tree), then emptied and
/// removed there. A local user who planted a chain thousands of directories deep in a tree the
/// apply removes therefore cannot make the cleanup fail with EMFILE, overflow the stack or take
/// quadratic time, and the walk never goes back up through `..` (which whoever can move a
/// directory could redirect).
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let st = match lstat_at(dir, name)? {
        None => return Ok(()),
        Some(s) => s,
    };
    if file_type(&st) != FileType::Directory {
        return unlink_at(dir, name, false);
    }
    let top = open_dir_at(dir, name)?;
    let mut flat = 0u64;
    for _ in 0..REMOVE_MAX_PASSES {
        let names = list_dir(top.as_fd())?;
        if names.is_empty() {
            drop(top);
            return unlink_at(dir, name, true);
        }
        for n in names {
            match lstat_at(top.as_fd(), &n)? {
                Some(s) if file_type(&s) == FileType::Directory => {
                    let sub = open_dir_at(top.as_fd(), &n)?;
                    for m in list_dir(sub.as_fd())? {
                        match lstat_at(sub.as_fd(), &m)? {
                            Some(s) if file_type(&s) == FileType::Directory => loop {
                                flat += 1;
                                let to = format!(".ferry-flat-{flat}");
                                match rename_noreplace(sub.as_fd(), &m, top.as_fd(), to.as_bytes()) {
                                    Err(e) if errno(&e) == Some(Errno::EXIST) => continue,
                                    r => break r?,
                                }
                            },
                            Some(_) => unlink_at(sub.as_fd(), &m, false)?,
                            None => {}
                        }
                    }
                    drop(sub);
                    match unlink_at(top.as_fd(), &n, true) {
                        // Something was added meanwhile: the next pass sees it.
                        Err(e) if errno(&e) == Some(Errno::NOTEMPTY) => {}
                        r => r?,
                    }
                }
                Some(_) => unlink_at(top.as_fd(), &n, false)?,
                None => {}
            }
        }
    }
    Err(io::Error::other("directory tree keeps changing while it is removed"))
}

/// Names in a directory, excluding `.` and `..`.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let fd = rfs::openat(dir, c".", DIR_FLAGS, Mode::empty())?;
    let mut d = rfs::Dir::read_from(&fd)?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    out.sort();
    Ok(out)
}

/// Set owner (if `owners`), permission bits, extended attributes in scope of `attrs`, and mtime
/// of `name` in `dir` without following a symlink, in that order: chown clears setuid/setgid bits
/// and file capabilities, chmod then restores the bits, the attributes come after both, and the
/// mtime last. Only what differs is changed (no needless writes, and a read-only directory that
/// already has the right metadata is no error). A regular file or directory is opened and changed
/// through its handle ([`set_meta_fd`]); symlinks, FIFOs and devices, which are never opened for
/// reading, through an `O_PATH` handle for owner and mode ([`set_meta_unopened`]).
pub fn set_meta_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    meta: &bundle::Meta,
    owners: bool,
    attrs: &crate::xattrs::Attrs,
) -> io::Result<()> {
    if let Some(fd) = open_meta_at(dir, name)? {
        return set_meta_fd(fd.as_fd(), meta, owners, attrs);
    }
    set_meta_unopened(dir, name, meta, owners, attrs, None)
}

/// [`set_meta_at`] of a symlink, FIFO or device, only if it is the object `(st_dev, st_ino)`
/// `want` (when given): owner and mode through an `O_PATH` handle of it.
pub fn set_meta_unopened(
    dir: BorrowedFd<'_>,
    name: &[u8],
    meta: &bundle::Meta,
    owners: bool,
    attrs: &crate::xattrs::Attrs,
    want: Option<(u64, u64)>,
) -> io::Result<()> {
    // Owner and mode through an `O_PATH | O_NOFOLLOW` handle of the object, never by path: a
    // user who can write `dir` may swap `name` for a symlink between two calls, and `chmod`
    // follows one (bundle-format.md §15.1).
    let fd = rfs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let st = rfs::fstat(&fd)?;
    #[allow(clippy::unnecessary_cast)]
    if want.is_some_and(|w| w != (st.st_dev as u64, st.st_ino as u64))
        || matches!(file_type(&st), FileType::RegularFile | FileType::Directory)
    {
        return Err(io::Error::other("replaced while being changed"));
    }
    let cur = meta_of(&st);
    if owners && (cur.uid != meta.uid || cur.gid != meta.gid) {
        rfs::chownat(
            &fd,
            "",
            Some(rfs::Uid::from_raw(meta.uid)),
            Some(rfs::Gid::from_raw(meta.gid)),
            AtFlags::EMPTY_PATH,
        )?;
    }
    // Linux has no symlink permissions. FIFOs and devices: `chmod` of the handle's
    // `/proc/self/fd` link reaches exactly that inode (what `fchmodat(AT_SYMLINK_NOFOLLOW)`
    // does); chown clears setuid/setgid, so compare with the mode as it is now.
    if file_type(&st) != FileType::Symlink && rfs::fstat(&fd)?.st_mode & 0o7777 != meta.mode {
        use std::os::fd::AsRawFd;
        rfs::chmod(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(), Mode::from_raw_mode(meta.mode))?;
    }
    attrs.apply_unopened(dir, name, meta)?;
    if cur.mtime_ns == meta.mtime_ns {
        return Ok(());
    }
    set_mtime_at(dir, name, meta.mtime_ns)
}

/// Open the object at `name` for a metadata change through its handle: a regular file or a
/// directory, opened without following a symlink and without blocking; `None` for the other
/// types (symlinks, FIFOs, devices are not opened).
pub fn open_meta_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<OwnedFd>> {
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let ft = file_type(&st);
    if !matches!(ft, FileType::RegularFile | FileType::Directory) {
        return Ok(None);
    }
    let fd =
        rfs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())?;
    if file_type(&rfs::fstat(&fd)?) != ft {
        return Err(io::Error::other("replaced while being opened"));
    }
    Ok(Some(fd))
}

/// Set owner (if `owners`), permission bits, extended attributes in scope of `attrs`, and mtime
/// of the open file or directory `fd`, in that order (see [`set_meta_at`]).
pub fn set_meta_fd(
    fd: BorrowedFd<'_>,
    meta: &bundle::Meta,
    owners: bool,
    attrs: &crate::xattrs::Attrs,
) -> io::Result<()> {
    let cur = meta_of(&rfs::fstat(fd)?);
    if owners && (cur.uid != meta.uid || cur.gid != meta.gid) {
        rfs::fchown(fd, Some(rfs::Uid::from_raw(meta.uid)), Some(rfs::Gid::from_raw(meta.gid)))?;
    }
    if rfs::fstat(fd)?.st_mode & 0o7777 != meta.mode {
        rfs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    }
    attrs.apply_fd(fd, meta)?;
    if cur.mtime_ns != meta.mtime_ns {
        let t = Timespec {
            tv_sec: meta.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: meta.mtime_ns.rem_euclid(1_000_000_000) as _,
        };
        rfs::futimens(fd, &Timestamps { last_access: t, last_modification: t })?;
    }
    Ok(())
}

pub fn set_mtime_at(dir: BorrowedFd<'_>, name: &[u8], mtime_ns: i64) -> io::Result<()> {
    let t = Timespec { tv_sec: mtime_ns.div_euclid(1_000_000_000), tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _ };
    let ts = Timestamps { last_access: t, last_modification: t };
    Ok(rfs::utimensat(dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// Metadata of a stat as the manifest represents it.
#[allow(clippy::unnecessary_cast)] // st_mtime is not i64 on every architecture
pub fn meta_of(s: &Stat) -> bundle::Meta {
    bundle::Meta {
        mode: s.st_mode & 0o7777,
        uid: s.st_uid,
        gid: s.st_gid,
        mtime_ns: (s.st_mtime as i64).saturating_mul(1_000_000_000).saturating_add(s.st_mtime_nsec as i64),
        xattrs: None,
    }
}

pub fn fsync_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rfs::fsync(fd)?)
}

/// Flush every dirty page and inode of the filesystem holding `fd` (one call instead of an fsync
/// per staged file; see bundle-format.md, "Durability").
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rfs::syncfs(fd)?)
}

/// Bytes available to unprivileged users... and to root, on the filesystem of `fd`.
/// A filesystem that reports no size at all (`f_blocks` 0: ramfs, some pseudo filesystems) has
/// no limit to check, so it counts as unbounded.
pub fn free_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let s = rfs::fstatvfs(fd)?;
    if s.f_blocks == 0 {
        return Ok(u64::MAX);
    }
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// True if the process can change file owners.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Convert errno from a rustix result for matching.
pub fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

/// Identity of the mount holding `fd`: the mount id (`statx` `STATX_MNT_ID`, Linux 5.8+), or the
/// device number where that is unavailable. Two bind mounts of one filesystem share `st_dev` but
/// `rename(2)` and `link(2)` between them fail with EXDEV, so work directories are per mount.
pub fn mount_key(fd: BorrowedFd<'_>) -> io::Result<u64> {
    match rfs::statx(fd, c"", AtFlags::EMPTY_PATH, rfs::StatxFlags::MNT_ID) {
        Ok(s) if s.stx_mask & rfs::StatxFlags::MNT_ID.bits() != 0 => Ok(s.stx_mnt_id),
        _ => Ok(rfs::fstat(fd)?.st_dev),
    }
}

/// Run `f` on directory `dir` and then put back the directory's mtime: creating or removing a
/// work directory at the root of another mount must not change the tree's metadata.
pub fn keeping_mtime<T>(dir: BorrowedFd<'_>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let st = rfs::fstat(dir)?;
    let r = f()?;
    let now = rfs::fstat(dir)?;
    if (now.st_mtime, now.st_mtime_nsec) != (st.st_mtime, st.st_mtime_nsec) {
        let t = Timespec { tv_sec: st.st_mtime as _, tv_nsec: st.st_mtime_nsec as _ };
        rfs::futimens(dir, &Timestamps { last_access: t, last_modification: t })?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp(s: &str) -> BundlePath {
        BundlePath::new(s.as_bytes().to_vec()).expect("path")
    }

    #[test]
    fn scratch_files_have_no_name_and_replace_a_leftover() {
        use std::io::{Read, Seek, Write};
        let t = tempfile::tempdir().expect("tempdir");
        let d = open_dir_path(t.path()).expect("open");
        // A leftover of a crash between create and unlink is removed, not written through.
        std::fs::write(t.path().join("s.spool"), b"left over").expect("write");
        let mut f = scratch_file_at(d.as_fd(), b"s.spool").expect("scratch");
        assert!(std::fs::symlink_metadata(t.path().join("s.spool")).is_err(), "the name must be gone");
        f.write_all(b"frame bytes").expect("write");
        f.seek(std::io::SeekFrom::Start(0)).expect("seek");
        let mut back = String::new();
        f.read_to_string(&mut back).expect("read");
        assert_eq!(back, "frame bytes");
        assert_eq!(std::fs::read_dir(t.path()).expect("list").count(), 0);
        // A symlink in its place is removed, never followed.
        std::os::unix::fs::symlink(t.path().join("elsewhere"), t.path().join("s.spool")).expect("symlink");
        drop(scratch_file_at(d.as_fd(), b"s.spool").expect("scratch"));
        assert!(!t.path().join("elsewhere").exists());
        assert_eq!(std::fs::read_dir(t.path()).expect("list").count(), 0);
    }

    #[test]
    fn dir_cache_stays_bounded_and_keeps_parents() {
        let t = tempfile::tempdir().expect("tempdir");
        let n = DIR_CACHE_MAX + 40;
        for i in 0..n {
            std::fs::create_dir_all(t.path().join(format!("a/b/d{i:04}/e"))).expect("mkdir");
        }
        let root = open_dir_path(t.path()).expect("root");
        let mut c = DirCache::default();
        for i in 0..n {
            let p = bp(&format!("a/b/d{i:04}/e/f"));
            let (_, name) = c.parent_of(root.as_fd(), &p).expect("parent");
            assert_eq!(name, b"f");
            assert!(c.dirs.len() <= DIR_CACHE_MAX + 3, "{} handles after {i} lookups", c.dirs.len());
            // Every cached directory's parent is cached (what `forget` relies on).
            for k in c.dirs.keys() {
                if let Some(parent) = k.parent() {
                    assert!(c.dirs.contains_key(&parent), "{k} cached without {parent}");
                }
            }
        }
        // Forgetting a directory drops every handle under it.
        c.forget(&bp("a/b"));
        assert!(c.dirs.keys().all(|k| k == &bp("a")), "{:?}", c.dirs.keys().collect::<Vec<_>>());
    }

    #[test]
    fn remove_tree_handles_a_deep_chain_with_few_handles() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("victim"), b"keep").expect("write");
        // 3,000 levels (deeper than PATH_MAX allows by path), files and a symlink out on the way.
        let root = open_dir_path(t.path()).expect("root");
        mkdir_at(root.as_fd(), b"tree", 0o700).expect("mkdir");
        let mut cur = open_dir_at(root.as_fd(), b"tree").expect("open");
        for i in 0..3000 {
            if i % 500 == 0 {
                create_file_at(cur.as_fd(), b"f").expect("file");
                symlink_at(outside.path().as_os_str().as_encoded_bytes(), cur.as_fd(), b"out").expect("symlink");
            }
            mkdir_at(cur.as_fd(), b"d", 0o755).expect("mkdir");
            cur = open_dir_at(cur.as_fd(), b"d").expect("open");
        }
        drop(cur);
        // Far fewer handles than levels: the walk must not need one per level.
        let before = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
        remove_tree_at(root.as_fd(), b"tree").expect("remove");
        let after = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
        assert!(after <= before, "handles leaked: {before} -> {after}");
        assert!(lstat_at(root.as_fd(), b"tree").expect("stat").is_none());
        assert_eq!(std::fs::read(outside.path().join("victim")).expect("read"), b"keep");
    }

    #[test]
    fn dir_cache_never_follows_a_symlink() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(outside.path().join("x")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), t.path().join("link")).expect("symlink");
        let root = open_dir_path(t.path()).expect("root");
        let mut c = DirCache::default();
        assert!(c.dir(root.as_fd(), Some(&bp("link"))).is_err());
        assert!(c.parent_of(root.as_fd(), &bp("link/x/f")).is_err());
        assert!(c.dirs.is_empty(), "a failed lookup is not cached");
        assert!(c.lstat(root.as_fd(), &bp("missing/f")).expect("lstat").is_none());
    }
}
