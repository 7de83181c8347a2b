//! Opening a bundle: one file, or the numbered parts of a split bundle read as one stream.
//!
//! Parts are named `NAME.000`, `NAME.001`, …; given any existing path the reader uses it as is,
//! and given `NAME.000` (or `NAME` when only parts exist) it reads the parts in order, reporting
//! the first missing part by name.
//!
//! Every byte read from a bundle file (or part) is counted ([`bytes_read`]): `apply --json`
//! reports how much of the bundle an apply read (`bundle_bytes_read`; each byte once).

use crate::error::{Ctx, Error, Result};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes read from bundle files and parts by this process so far.
static BYTES_READ: AtomicU64 = AtomicU64::new(0);

/// Bytes this process has read from bundle files (and parts) so far: a command's share is the
/// difference between two calls.
pub fn bytes_read() -> u64 {
    BYTES_READ.load(Ordering::Relaxed)
}

/// A file as read from the device: every byte it returns is counted (below the buffering, so a
/// byte counts once however it is consumed).
struct Counted(File);

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        BYTES_READ.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// What a split bundle's reader has learnt, for [`explain`]: the first part not found, and the
/// parts opened so far.
#[derive(Default)]
struct PartsInfo {
    missing: Option<String>,
    /// (name, first byte's offset in the bundle, length).
    parts: Vec<(String, u64, u64)>,
}

type Info = Arc<Mutex<PartsInfo>>;

/// A bundle's reader that makes its [`PartsInfo`] the one [`explain`] consults on this thread
/// whenever it is read: several bundles may be open at once (the inbox keeps every verified
/// head's reader), and an error is explained by the one read last.
struct Tracked<R> {
    info: Info,
    inner: R,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if !c.as_ref().is_some_and(|i| Arc::ptr_eq(i, &self.info)) {
                *c = Some(self.info.clone());
            }
        });
        self.inner.read(buf)
    }
}

/// A readable bundle and the name to report it by.
pub struct Source {
    pub reader: Box<dyn Read + Send>,
    pub display: String,
}

fn part_name(base: &Path, i: usize) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(format!(".{i:03}"));
    PathBuf::from(s)
}

/// The base name of a split bundle given the path of its first part, if it is one.
fn split_base(p: &Path) -> Option<PathBuf> {
    let s = p.to_str()?;
    let base = s.strip_suffix(".000")?;
    Some(PathBuf::from(base))
}

/// Open an input file (a bundle or a part) for reading: the last component is not followed if it
/// is a symlink, a FIFO or device is never opened in a blocking way, and anything but a regular
/// file is refused before a byte is read (whoever can write an inbox or a download directory
/// could put a FIFO there and stall a boot-time apply for ever).
pub fn open_input(path: &Path) -> io::Result<File> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd =
        rustix::fs::open(path, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| match e {
            rustix::io::Errno::LOOP => io::Error::other("a symlink, not a regular file"),
            e => io::Error::from(e),
        })?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(File::from(fd))
}

pub fn open(path: &Path) -> Result<Source> {
    let display = path.display().to_string();
    // Until it is read, [`explain`] describes this bundle (an error opening it names no part).
    let info = Info::default();
    CURRENT.with(|c| *c.borrow_mut() = Some(info.clone()));
    let base = match split_base(path) {
        Some(b) => Some(b),
        None if !path.exists() && part_name(path, 0).exists() => Some(path.to_path_buf()),
        None => None,
    };
    if let Some(base) = base {
        let parts = Parts { base, next: 0, cur: None, info: info.clone() };
        return Ok(Source { reader: Box::new(Tracked { info, inner: parts }), display });
    }
    let f = open_input(path).ctx("open bundle", &display)?;
    let inner = io::BufReader::with_capacity(1 << 20, Counted(f));
    Ok(Source { reader: Box::new(Tracked { info, inner }), display })
}

struct Parts {
    base: PathBuf,
    next: usize,
    cur: Option<io::BufReader<Counted>>,
    info: Info,
}

impl Parts {
    fn info(&self) -> std::sync::MutexGuard<'_, PartsInfo> {
        // A panic elsewhere cannot leave the list half-written: take it as it is.
        self.info.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Read for Parts {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(c) = &mut self.cur {
                let n = c.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.cur = None;
            }
            let p = part_name(&self.base, self.next);
            match open_input(&p) {
                Ok(f) => {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    {
                        let mut info = self.info();
                        let start = info.parts.last().map(|(_, s, l)| s + l).unwrap_or(0);
                        info.parts.push((p.display().to_string(), start, len));
                    }
                    self.next += 1;
                    self.cur = Some(io::BufReader::with_capacity(1 << 20, Counted(f)));
                }
                // The end of the last part reads as end of file; if the bundle needed more, the
                // reader reports truncation and [`explain`] names the part that is missing. A gap
                // (a later part exists) is certainly a missing part: say so at once.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.info().missing = Some(p.display().to_string());
                    let later = part_name(&self.base, self.next + 1);
                    if std::fs::symlink_metadata(&later).is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("split bundle part {} is missing ({} exists)", p.display(), later.display()),
                        ));
                    }
                    return Ok(0);
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
            }
        }
    }
}

thread_local! {
    /// What the bundle read last on this thread knows about its parts.
    static CURRENT: std::cell::RefCell<Option<Info>> = const { std::cell::RefCell::new(None) };
}

/// [`PartsInfo`] of the bundle read last on this thread, through `f`.
fn with_current<T>(f: impl FnOnce(&PartsInfo) -> T) -> Option<T> {
    CURRENT.with(|c| c.borrow().as_ref().map(|i| f(&i.lock().unwrap_or_else(std::sync::PoisonError::into_inner))))
}

/// Names of the parts holding bundle bytes `[start, end)`, when reading a split bundle.
fn parts_of(start: u64, end: u64) -> Vec<String> {
    with_current(|i| {
        i.parts.iter().filter(|(_, s, l)| *s < end.max(start + 1) && start < s + l).map(|(n, _, _)| n.clone()).collect()
    })
    .unwrap_or_default()
}

/// After a truncation error, the name of the first part that was not found, if reading parts.
pub fn missing_part() -> Option<String> {
    with_current(|i| i.missing.clone()).flatten()
}

/// Name the split-bundle part a truncation (the missing part) or a corrupt byte is in.
///
/// A missing part ends the stream early, and the error that surfaces depends on who was reading:
/// the framing (`Truncated`), a zstd decoder (`FrameDecode` wrapping the truncation), or the
/// reader itself (`Io`, when a later part shows the gap). Each is reported as the missing part.
pub fn explain(e: Error) -> Error {
    let range = match &e {
        Error::Bundle(bundle::Error::Truncated { .. } | bundle::Error::FrameDecode { .. } | bundle::Error::Io(_)) => {
            if let Some(p) = missing_part() {
                return Error::BadPart(format!("split bundle part {p} is missing ({e})"));
            }
            None
        }
        Error::Bundle(bundle::Error::FrameHash { offset, size, .. }) => Some((*offset, offset + size)),
        Error::Bundle(bundle::Error::Framing { offset, .. })
        | Error::Bundle(bundle::Error::TrailingData { offset }) => Some((*offset, offset + 1)),
        _ => None,
    };
    match range.map(|(s, e)| parts_of(s, e)) {
        Some(parts) if !parts.is_empty() => {
            Error::BadPart(format!("{e}; corrupt data in split bundle part {}", parts.join(" or ")))
        }
        _ => e,
    }
}
