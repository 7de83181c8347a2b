//! The applier's state directory (default `TARGET/.ferry`):
//!
//! ```text
//! lock             flock()ed by the one running applier (the target root is flock()ed too)
//! state.json       installed version, channel, bundle id, time, hooks, kept config files
//! trusted          the operator's trust policy of the last apply (keys and policy lines), which
//!                  a bare `resume` re-verifies a pending transaction against
//! trust/           keys and policy lines accepted from rotations in applied bundles
//! txn/             the transaction in progress: manifest.cbor, signatures.cbor, journal,
//!                  oldmeta.cbor, base-ids.cbor, state-before.json, work/{stage,backup}/
//! prev/            the last completed transaction, kept for one-level rollback
//! trash/           retired transactions whose cleanup failed; retried by every later run
//! hooks.log        output of post-commit hooks
//! ```
//!
//! The applier runs as root and acts on what it finds here (a pending transaction is completed,
//! keys are trusted), so the directory is used only when nobody else can have written it
//! (bundle-format.md §15, "Local users"): it is opened through directory handles without
//! following symlinks; it must be a real directory owned by the applier's user and not writable by
//! group or others; and no directory above it may be writable by another user (a world-writable
//! sticky directory such as `/tmp` is accepted only where the next component is ours), as sshd's
//! `StrictModes` checks a home directory. Otherwise [`Error::UnsafeState`] refuses before anything
//! is read or written. It is created `0700`.
//!
//! Every file here is replaced atomically: written under a temporary name created exclusively
//! (`O_EXCL | O_NOFOLLOW`), fsynced, renamed, and the directory fsynced.

use crate::error::{Ctx, Error, Result};
use crate::fsx;
use rustix::fs::{self as rfs, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Version of the state file's JSON shape.
pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookResult {
    pub glob: String,
    pub command: String,
    /// "ok", "failed (exit N)", "timed out", "skipped (--no-hooks)".
    pub result: String,
    pub ok: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub state_version: u32,
    pub version: Option<u64>,
    pub channel: Option<String>,
    pub bundle_id: Option<String>,
    /// Seconds since the epoch when the installed version was committed.
    pub applied_at: Option<u64>,
    #[serde(default)]
    pub hooks: Vec<HookResult>,
    /// Config files whose local edits were kept; the bundle's version is at `PATH.ferry-new`.
    #[serde(default)]
    pub conffiles_kept: Vec<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub owners_applied: bool,
}

/// Names in the state directory.
pub const STATE_FILE: &str = "state.json";
pub const TXN: &str = "txn";
pub const PREV: &str = "prev";
pub const TRASH: &str = "trash";
pub const TRUST: &str = "trust";
pub const TRUSTED: &str = "trusted";
pub const LOCK: &str = "lock";
pub const HOOKS_LOG: &str = "hooks.log";

/// A directory of the applier's own (the state directory or one inside it), held open and
/// checked trustworthy: every access is relative to the handle, never follows a symlink, and
/// opens only regular files and directories owned by the applier's user.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn unsafe_state(path: impl std::fmt::Display, why: impl Into<String>) -> Error {
    Error::UnsafeState { path: path.to_string(), why: why.into() }
}

/// A directory of ours must be owned by us and writable by nobody else.
fn check_private(st: &rfs::Stat, path: &Path) -> Result<()> {
    if fsx::file_type(st) != FileType::Directory {
        return Err(unsafe_state(path.display(), "not a directory"));
    }
    if st.st_uid != euid() {
        return Err(unsafe_state(path.display(), format!("owned by uid {}, not by uid {}", st.st_uid, euid())));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(unsafe_state(
            path.display(),
            format!("writable by group or others (mode {:o})", st.st_mode & 0o7777),
        ));
    }
    Ok(())
}

/// A directory above the state directory must not let another user replace `child`: owned by
/// root or us, and not writable by group or others unless it is sticky and `child` is ours.
fn check_ancestor(parent: &rfs::Stat, child: &rfs::Stat, path: &Path) -> Result<()> {
    let ours = |uid: u32| uid == 0 || uid == euid();
    if !ours(parent.st_uid) {
        return Err(unsafe_state(
            path.display(),
            format!(
                "owned by uid {}, who could replace the state directory; use --state-dir on a directory only root can write",
                parent.st_uid
            ),
        ));
    }
    if parent.st_mode & 0o022 != 0 && !(parent.st_mode & 0o1000 != 0 && ours(child.st_uid)) {
        return Err(unsafe_state(
            path.display(),
            format!(
                "writable by group or others (mode {:o}), who could replace the state directory; use --state-dir on a directory only root can write",
                parent.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

fn stat_fd(fd: BorrowedFd<'_>, path: &Path) -> Result<rfs::Stat> {
    rfs::fstat(fd).ctx("stat", path.display())
}

impl Dir {
    /// Open the state directory at `path` (an operator's path), checking it and every directory
    /// above it; create it (`0700`) if `create`. `None` if it does not exist and `!create`.
    pub fn open_state(path: &Path, create: bool) -> Result<Option<Dir>> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().ctx("current directory", ".")?.join(path)
        };
        let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
            return Err(unsafe_state(abs.display(), "not a usable state directory path"));
        };
        // The operator's path may go through symlinks (`/var/run -> /run`); what is checked is
        // the real directory chain, opened component by component without following any.
        // Missing parents (`/var/lib/ferry` of `/var/lib/ferry/app`) are created, 0755, once the
        // existing ones passed (only with `create`).
        let mut existing = parent.to_path_buf();
        let mut missing = Vec::new();
        while !existing.exists() && create {
            match (existing.parent(), existing.file_name()) {
                (Some(p), Some(n)) => {
                    missing.push(n.to_os_string());
                    existing = p.to_path_buf();
                }
                _ => break,
            }
        }
        let real = match std::fs::canonicalize(&existing) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) => return Err(e).ctx("resolve", existing.display()),
        };
        let mut cur = rfs::open("/", fsx::DIR_FLAGS, Mode::empty()).ctx("open", "/")?;
        let mut cur_st = stat_fd(cur.as_fd(), Path::new("/"))?;
        let mut at = PathBuf::from("/");
        for c in real.components() {
            let Component::Normal(c) = c else { continue };
            let next = fsx::open_dir_at(cur.as_fd(), c.as_encoded_bytes()).ctx("open", at.join(c).display())?;
            let st = stat_fd(next.as_fd(), &at)?;
            check_ancestor(&cur_st, &st, &at)?;
            at.push(c);
            (cur, cur_st) = (next, st);
        }
        for name in missing.iter().rev() {
            let c = name.as_encoded_bytes();
            match fsx::mkdir_at(cur.as_fd(), c, 0o755) {
                Err(e) if fsx::errno(&e) != Some(rustix::io::Errno::EXIST) => {
                    return Err(e).ctx("create", at.display());
                }
                _ => {}
            }
            let next = fsx::open_dir_at(cur.as_fd(), c).ctx("open", at.display())?;
            let st = stat_fd(next.as_fd(), &at)?;
            check_ancestor(&cur_st, &st, &at)?;
            at.push(name);
            (cur, cur_st) = (next, st);
        }
        let name = name.as_encoded_bytes();
        let fd = match fsx::open_dir_at(cur.as_fd(), name) {
            Ok(fd) => fd,
            Err(e) if fsx::errno(&e) == Some(rustix::io::Errno::NOENT) => {
                if !create {
                    return Ok(None);
                }
                fsx::mkdir_at(cur.as_fd(), name, 0o700).ctx("create state directory", abs.display())?;
                fsx::open_dir_at(cur.as_fd(), name).ctx("open state directory", abs.display())?
            }
            Err(e) if matches!(fsx::errno(&e), Some(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)) => {
                return Err(unsafe_state(abs.display(), "a symlink or not a directory"));
            }
            Err(e) => return Err(e).ctx("open state directory", abs.display()),
        };
        let st = stat_fd(fd.as_fd(), &abs)?;
        check_ancestor(&cur_st, &st, &at)?;
        check_private(&st, &abs)?;
        Ok(Some(Dir { fd, path: abs }))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of `name` in this directory, for messages.
    pub fn show(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    /// Subdirectory `name`, checked as private; created (`0700`) if `create`. `None` if absent.
    pub fn subdir(&self, name: &str, create: bool) -> Result<Option<Dir>> {
        let path = self.path.join(name);
        let fd = match fsx::open_dir_at(self.fd(), name.as_bytes()) {
            Ok(fd) => fd,
            Err(e) if fsx::errno(&e) == Some(rustix::io::Errno::NOENT) => {
                if !create {
                    return Ok(None);
                }
                fsx::mkdir_at(self.fd(), name.as_bytes(), 0o700).ctx("create", path.display())?;
                self.sync()?;
                fsx::open_dir_at(self.fd(), name.as_bytes()).ctx("open", path.display())?
            }
            Err(e) if matches!(fsx::errno(&e), Some(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)) => {
                return Err(unsafe_state(path.display(), "a symlink or not a directory"));
            }
            Err(e) => return Err(e).ctx("open", path.display()),
        };
        check_private(&stat_fd(fd.as_fd(), &path)?, &path)?;
        Ok(Some(Dir { fd, path }))
    }

    /// Whether `name` exists (of any type).
    pub fn exists(&self, name: &str) -> Result<bool> {
        Ok(fsx::lstat_at(self.fd(), name.as_bytes()).ctx("stat", self.show(name))?.is_some())
    }

    /// Open regular file `name` for reading: no symlink followed, no FIFO opened, ours only.
    pub fn open_read(&self, name: &str) -> Result<Option<File>> {
        match fsx::open_file_at(self.fd(), name.as_bytes()) {
            Ok(f) => {
                let st = rfs::fstat(&f).ctx("stat", self.show(name))?;
                if st.st_uid != euid() || st.st_nlink != 1 {
                    return Err(unsafe_state(self.show(name), "not a file of ours (owner or link count)"));
                }
                Ok(Some(f))
            }
            Err(e) if fsx::errno(&e) == Some(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) if matches!(fsx::errno(&e), Some(rustix::io::Errno::LOOP)) || e.raw_os_error().is_none() => {
                Err(unsafe_state(self.show(name), "a symlink or not a regular file"))
            }
            Err(e) => Err(e).ctx("open", self.show(name)),
        }
    }

    /// The content of regular file `name`, at most `max` bytes; `None` if it does not exist.
    pub fn read(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let Some(f) = self.open_read(name)? else { return Ok(None) };
        let mut v = Vec::new();
        f.take(max + 1).read_to_end(&mut v).ctx("read", self.show(name))?;
        if v.len() as u64 > max {
            return Err(Error::CorruptState { path: self.show(name), why: format!("larger than {max} bytes") });
        }
        Ok(Some(v))
    }

    /// Open `name` for appending (journal, hooks log), creating it `0600`.
    pub fn open_append(&self, name: &str) -> Result<File> {
        let fd = rfs::openat(
            self.fd(),
            name,
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        );
        let fd = match fd {
            Err(rustix::io::Errno::LOOP) => return Err(unsafe_state(self.show(name), "a symlink")),
            r => r.ctx("open", self.show(name))?,
        };
        let st = rfs::fstat(&fd).ctx("stat", self.show(name))?;
        if fsx::file_type(&st) != FileType::RegularFile || st.st_uid != euid() || st.st_nlink != 1 {
            return Err(unsafe_state(self.show(name), "not a regular file of ours"));
        }
        Ok(File::from(fd))
    }

    /// Write `data` to `name` atomically and durably.
    pub fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        let tmp = format!("{name}.tmp");
        // A leftover temporary (crash) is removed, never written through.
        match fsx::unlink_at(self.fd(), tmp.as_bytes(), false) {
            Err(e) if fsx::errno(&e) != Some(rustix::io::Errno::NOENT) => {
                return Err(e).ctx("remove", self.show(&tmp));
            }
            _ => {}
        }
        let mut f = fsx::create_file_at(self.fd(), tmp.as_bytes()).ctx("create", self.show(&tmp))?;
        f.write_all(data).ctx("write", self.show(&tmp))?;
        f.sync_all().ctx("fsync", self.show(&tmp))?;
        fsx::rename_at(self.fd(), tmp.as_bytes(), self.fd(), name.as_bytes()).ctx("rename", self.show(name))?;
        self.sync()
    }

    pub fn sync(&self) -> Result<()> {
        fsx::fsync_fd(self.fd()).ctx("fsync directory", self.path.display())
    }

    pub fn rename(&self, from: &str, to: &Dir, to_name: &str) -> Result<()> {
        fsx::rename_at(self.fd(), from.as_bytes(), to.fd(), to_name.as_bytes()).ctx("rename", to.show(to_name))
    }

    /// Remove `name` and everything under it (never following a symlink; bounded open handles).
    pub fn remove_tree(&self, name: &str) -> Result<()> {
        fsx::remove_tree_at(self.fd(), name.as_bytes()).ctx("remove", self.show(name))
    }

    /// Names in this directory.
    pub fn list(&self) -> Result<Vec<String>> {
        Ok(fsx::list_dir(self.fd())
            .ctx("list", self.path.display())?
            .into_iter()
            .filter_map(|n| String::from_utf8(n).ok())
            .collect())
    }
}

impl From<Dir> for OwnedFd {
    fn from(d: Dir) -> OwnedFd {
        d.fd
    }
}

/// The largest state or transaction bookkeeping file read (not the saved manifest).
pub const MAX_SMALL_FILE: u64 = 64 << 20;

pub fn load(d: &Dir, name: &str) -> Result<State> {
    match d.read(name, MAX_SMALL_FILE)? {
        Some(b) => {
            serde_json::from_slice(&b).map_err(|e| Error::CorruptState { path: d.show(name), why: e.to_string() })
        }
        None => Ok(State { state_version: STATE_VERSION, ..Default::default() }),
    }
}

pub fn save(d: &Dir, name: &str, s: &State) -> Result<()> {
    let mut b = serde_json::to_vec_pretty(s).map_err(|e| Error::Internal(e.to_string()))?;
    b.push(b'\n');
    d.write_atomic(name, &b)
}

/// Take the target's locks; fails at once if another applier holds either. The state directory's
/// `lock` serialises appliers sharing a state directory; a lock on the target root itself
/// serialises appliers of one target with different `--state-dir`s.
pub fn lock(d: &Dir, target_root: BorrowedFd<'_>) -> Result<(File, OwnedFd)> {
    let f = d.open_append(LOCK)?;
    let try_lock =
        |fd: BorrowedFd<'_>, what: String| match rfs::flock(fd, rfs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Locked(what)),
            Err(e) => Err(std::io::Error::from(e)).ctx("lock", what),
        };
    try_lock(f.as_fd(), d.show(LOCK))?;
    // A second handle of the root: flock belongs to the open file description.
    let root = rfs::openat(target_root, c".", fsx::DIR_FLAGS, Mode::empty()).ctx("open", "target root")?;
    try_lock(root.as_fd(), "the target directory".into())?;
    Ok((f, root))
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn refused(p: &Path) -> bool {
        matches!(Dir::open_state(p, true), Err(Error::UnsafeState { .. }))
    }

    #[test]
    fn state_directory_must_be_private_and_below_safe_directories() {
        let t = tempfile::tempdir().expect("tempdir");
        // Missing parents are created (checked like the rest); the state directory 0700.
        let nested = t.path().join("var/lib/ferry/app");
        assert!(Dir::open_state(&nested, false).expect("open").is_none());
        assert!(Dir::open_state(&nested, true).expect("open").is_some());
        assert_eq!(std::fs::metadata(&nested).expect("stat").permissions().mode() & 0o777, 0o700);
        // Created 0700 where it is missing; written files are ours.
        let ok = t.path().join("ok");
        let d = Dir::open_state(&ok, true).expect("open").expect("created");
        assert_eq!(std::fs::metadata(&ok).expect("stat").permissions().mode() & 0o777, 0o700);
        d.write_atomic("f", b"x").expect("write");
        assert_eq!(d.read("f", 10).expect("read").as_deref(), Some(&b"x"[..]));
        // A symlink where the state directory should be.
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, t.path().join("link")).expect("symlink");
        assert!(refused(&t.path().join("link")));
        // Writable by others.
        let open = t.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(refused(&open));
        // Below a directory writable by others (not sticky): someone could swap it.
        let parent = t.path().join("parent");
        std::fs::create_dir_all(parent.join("state")).expect("mkdir");
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(refused(&parent.join("state")));
        // ... but a sticky one (as /tmp) is fine when the next component is ours.
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(Dir::open_state(&parent.join("state"), true).is_ok());
        // A planted symlink inside is never written through, nor read.
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"keep").expect("write");
        std::os::unix::fs::symlink(&victim, ok.join("g.tmp")).expect("symlink");
        d.write_atomic("g", b"new").expect("write");
        std::os::unix::fs::symlink(&victim, ok.join("h")).expect("symlink");
        assert!(matches!(d.read("h", 10), Err(Error::UnsafeState { .. })));
        assert!(matches!(d.subdir("h", false), Err(Error::UnsafeState { .. })));
        assert_eq!(std::fs::read(&victim).expect("read"), b"keep");
    }
}
