//! The files `fetch` keeps in `--into DIR`: `NAME.part`, the resume state `NAME.fetch` (and its
//! temporary `NAME.fetch.tmp`), and the finished `NAME`.
//!
//! It exists because ferry-apply runs as root while DIR may be writable by someone else, who can
//! plant a symlink, a hard link or a FIFO under any of these names. So every name is reached
//! through a handle of DIR (`openat`, `renameat`, `unlinkat`), never through a joined path:
//! files are created with `O_CREAT|O_EXCL|O_NOFOLLOW`; an existing one is used only if `lstat`
//! and then `fstat` of the opened handle (`O_NOFOLLOW|O_NONBLOCK`, so a FIFO cannot block) say it
//! is the same regular file, owned by the effective user, with no other hard link. Anything else
//! under the name of `NAME.part` or `NAME.fetch.tmp` is unlinked (the link, never what it points
//! to) and the file created afresh; a planted `NAME.fetch` is ignored and renamed over; a planted
//! `NAME` is never "already complete" and is renamed over. After the final rename, `NAME` must
//! still be the inode that was verified.

use super::frames::Job;
use super::{Fail, Fetcher};
use crate::error::{Ctx, Error, Result};
use bundle::container::Span;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const STATE_VERSION: u32 = 1;
/// Progress is made durable at least this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// A state file larger than this is not one of ours.
const MAX_STATE_BYTES: u64 = 64 << 20;

/// The `.fetch` progress file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub ferry_fetch: u32,
    pub url: String,
    pub total: u64,
    pub manifest_len: u64,
    pub signatures_len: u64,
    /// BLAKE3 of the manifest bytes (the bundle id), hex.
    pub manifest_blake3: String,
    /// Indices of frames whose bytes in `.part` are verified and fsynced.
    pub verified_frames: Vec<usize>,
}

/// The download directory, by handle, and the names fetch uses in it.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    pub final_: Vec<u8>,
    pub part: Vec<u8>,
    pub state: Vec<u8>,
    pub state_tmp: Vec<u8>,
}

/// Why an existing name is not a file fetch may use.
fn unsafe_kind(st: &Stat) -> Option<&'static str> {
    let euid = rustix::process::geteuid().as_raw();
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        Some(match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => "a symlink",
            FileType::Fifo => "a FIFO",
            FileType::Directory => "a directory",
            _ => "not a regular file",
        })
    } else if st.st_uid != euid {
        Some("owned by another user")
    } else if st.st_nlink != 1 {
        Some("a file with other hard links")
    } else {
        None
    }
}

fn same_file(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// An existing name that is not safe to use.
pub struct Unsafe(pub &'static str);

impl Dir {
    /// Create `path` if missing and open it; `name` is the bundle's file name.
    pub fn open(path: &Path, name: &str) -> Result<Dir> {
        std::fs::create_dir_all(path).ctx("create", path.display())?;
        let fd = crate::fsx::open_dir_path(path).ctx("open directory", path.display())?;
        let with = |ext: &str| format!("{name}{ext}").into_bytes();
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
            final_: with(""),
            part: with(".part"),
            state: with(".fetch"),
            state_tmp: with(".fetch.tmp"),
        })
    }

    /// `DIR/name` for messages.
    pub fn show(&self, name: &[u8]) -> String {
        self.path.join(String::from_utf8_lossy(name).as_ref()).display().to_string()
    }

    fn lstat(&self, name: &[u8]) -> io::Result<Option<Stat>> {
        crate::fsx::lstat_at(self.fd.as_fd(), name)
    }

    /// Open an existing `name` if it is a regular file of ours with one link; `None` if absent.
    pub fn open_existing(&self, name: &[u8], write: bool) -> io::Result<Result<Option<File>, Unsafe>> {
        let Some(before) = self.lstat(name)? else { return Ok(Ok(None)) };
        if let Some(why) = unsafe_kind(&before) {
            return Ok(Err(Unsafe(why)));
        }
        let mode = if write { OFlags::RDWR } else { OFlags::RDONLY };
        let flags = mode | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match rfs::openat(self.fd.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(Ok(None)),
            Err(Errno::LOOP) => return Ok(Err(Unsafe("a symlink"))),
            Err(e) => return Err(e.into()),
        };
        let st = rfs::fstat(&fd)?;
        if !same_file(&st, &before) {
            return Ok(Err(Unsafe("replaced while it was being opened")));
        }
        Ok(unsafe_kind(&st).map_or_else(|| Ok(Some(File::from(fd))), |why| Err(Unsafe(why))))
    }

    /// Create `name` afresh: `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600.
    pub fn create(&self, name: &[u8]) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rfs::openat(self.fd.as_fd(), name, flags, Mode::from_raw_mode(0o600))?))
    }

    /// Remove the name `name` (a symlink is removed, not followed); absent is fine.
    pub fn remove(&self, name: &[u8]) -> io::Result<()> {
        match rfs::unlinkat(self.fd.as_fd(), name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove `name` only if it still is the file `f`.
    pub fn remove_if(&self, name: &[u8], f: &File) -> io::Result<()> {
        match (self.lstat(name)?, rfs::fstat(f)) {
            (Some(a), Ok(b)) if same_file(&a, &b) => self.remove(name),
            _ => Ok(()),
        }
    }

    /// `NAME.part` to read and write: the existing one if it is safe, else a new one (whatever
    /// was planted under the name is unlinked). `say` reports a replaced name.
    pub fn open_part(&self, say: impl Fn(String)) -> Result<File> {
        let p = &self.part;
        match self.open_existing(p, true).ctx("open", self.show(p))? {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(Unsafe(why)) => {
                say(format!(
                    "fetch: {} is {why}: removing it (not following it) and starting a new file",
                    self.show(p)
                ));
                self.remove(p).ctx("remove", self.show(p))?;
            }
        }
        self.create(p).map_err(|e| self.refused(p, e))
    }

    fn refused(&self, name: &[u8], e: io::Error) -> Error {
        let why = if e.raw_os_error() == Some(Errno::EXIST.raw_os_error()) {
            io::Error::new(e.kind(), "someone else created this name at the same moment; not using it")
        } else {
            e
        };
        Error::Io { op: "create", path: self.show(name), source: why }
    }

    /// The contents of `name` if it is a safe file of at most `max` bytes.
    pub fn read_small(&self, name: &[u8], max: u64) -> Option<Vec<u8>> {
        let f = self.open_existing(name, false).ok()?.ok()??;
        let mut v = Vec::new();
        f.take(max + 1).read_to_end(&mut v).ok()?;
        (v.len() as u64 <= max).then_some(v)
    }

    /// Write `data` to `dest` atomically through `tmp` (created afresh), then fsync DIR.
    pub fn write_atomic(&self, tmp: &[u8], dest: &[u8], data: &[u8]) -> Result<()> {
        self.remove(tmp).ctx("remove", self.show(tmp))?;
        let mut f = self.create(tmp).map_err(|e| self.refused(tmp, e))?;
        f.write_all(data).ctx("write", self.show(tmp))?;
        f.sync_all().ctx("fsync", self.show(tmp))?;
        rfs::renameat(self.fd.as_fd(), tmp, self.fd.as_fd(), dest).ctx("rename", self.show(dest))?;
        self.fsync()
    }

    /// Rename `from` (which must be the open file `f`) to `to`, then check that `to` is `f`.
    pub fn rename_checked(&self, from: &[u8], to: &[u8], f: &File) -> Result<()> {
        let mine = rfs::fstat(f).ctx("stat", self.show(from))?;
        match self.lstat(from).ctx("stat", self.show(from))? {
            Some(st) if same_file(&st, &mine) => {}
            _ => return Err(replaced(self.show(from))),
        }
        rfs::renameat(self.fd.as_fd(), from, self.fd.as_fd(), to).ctx("rename", self.show(to))?;
        match self.lstat(to).ctx("stat", self.show(to))? {
            Some(st) if same_file(&st, &mine) => self.fsync(),
            _ => Err(replaced(self.show(from))),
        }
    }

    pub fn fsync(&self) -> Result<()> {
        rfs::fsync(&self.fd).ctx("fsync directory", self.path.display())
    }
}

fn replaced(what: String) -> Error {
    Error::Io {
        op: "rename",
        path: what,
        source: io::Error::other("the file was replaced by someone else during the fetch; not using it"),
    }
}

impl Fetcher<'_> {
    /// Make the verified frames durable and record them (at most once per SAVE_EVERY unless `now`).
    pub(super) fn save(&mut self, now: bool) -> Result<()> {
        if self.state.is_none() || (!now && self.last_save.elapsed() < SAVE_EVERY) {
            return Ok(());
        }
        self.part.sync_data().ctx("fsync", self.dir.show(&self.dir.part))?;
        let Some(st) = &mut self.state else {
            return Ok(());
        };
        st.verified_frames = self.verified.iter().copied().collect();
        let text = serde_json::to_vec_pretty(st).map_err(|e| Error::Internal(e.to_string()))?;
        self.dir.write_atomic(&self.dir.state_tmp, &self.dir.state, &text)?;
        self.last_save = Instant::now();
        Ok(())
    }

    pub(super) fn load_state(&self) -> Option<State> {
        let text = self.dir.read_small(&self.dir.state, MAX_STATE_BYTES)?;
        let st: State = serde_json::from_slice(&text).ok()?;
        (st.ferry_fetch == STATE_VERSION).then_some(st)
    }

    /// Re-hash frames an earlier run recorded as verified; returns those still good.
    pub(super) fn recheck(&self, ids: &[usize], spans: &[Span], frames: &[bundle::Frame]) -> BTreeSet<usize> {
        let mut good = BTreeSet::new();
        let mut buf = vec![0u8; 1 << 20];
        for &i in ids {
            let (Some(s), Some(f)) = (spans.get(i), frames.get(i)) else {
                continue;
            };
            let mut job = Job::new(s);
            let mut ok = true;
            while job.pos < s.end {
                let k = buf.len().min((s.end - job.pos) as usize);
                if self.part.read_exact_at(&mut buf[..k], job.pos).is_err() {
                    ok = false;
                    break;
                }
                job.feed(s, &buf[..k]);
            }
            if ok && job.check(s, f).is_ok() {
                good.insert(i);
            } else {
                self.say(format_args!(
                    "fetch: frame {i} in {} no longer verifies; fetching it again",
                    self.dir.show(&self.dir.part)
                ));
            }
        }
        good
    }

    /// Remove the state file (the download is finished or not worth resuming).
    pub(super) fn drop_state(&self) -> Result<(), Fail> {
        self.dir.remove(&self.dir.state).ctx("remove", self.dir.show(&self.dir.state))?;
        Ok(())
    }
}
