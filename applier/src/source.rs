//! Opening a bundle: one file, or the numbered parts of a split bundle read as one stream.
//!
//! Parts are named `NAME.000`, `NAME.001`, …; given any existing path the reader uses it as is,
//! and given `NAME.000` (or `NAME` when only parts exist) it reads the parts in order, reporting
//! the first missing part by name.

use crate::error::{Ctx, Error, Result};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

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
    // What [`explain`] knows describes the bundle opened last on this thread, not an earlier one
    // (an inbox opens many).
    MISSING.with(|m| *m.borrow_mut() = None);
    PARTS.with(|ps| ps.borrow_mut().clear());
    let base = match split_base(path) {
        Some(b) => Some(b),
        None if !path.exists() && part_name(path, 0).exists() => Some(path.to_path_buf()),
        None => None,
    };
    if let Some(base) = base {
        return Ok(Source { reader: Box::new(Parts { base, next: 0, cur: None }), display });
    }
    let f = open_input(path).ctx("open bundle", &display)?;
    Ok(Source { reader: Box::new(io::BufReader::with_capacity(1 << 20, f)), display })
}

struct Parts {
    base: PathBuf,
    next: usize,
    cur: Option<io::BufReader<File>>,
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
                    PARTS.with(|ps| {
                        let mut ps = ps.borrow_mut();
                        let start = ps.last().map(|(_, s, l)| s + l).unwrap_or(0);
                        ps.push((p.display().to_string(), start, len));
                    });
                    self.next += 1;
                    self.cur = Some(io::BufReader::with_capacity(1 << 20, f));
                }
                // The end of the last part reads as end of file; if the bundle needed more, the
                // reader reports truncation and [`explain`] names the part that is missing. A gap
                // (a later part exists) is certainly a missing part: say so at once.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    MISSING.with(|m| *m.borrow_mut() = Some(p.display().to_string()));
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
    static MISSING: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// Parts opened so far: (name, first byte's offset in the bundle, length).
    static PARTS: std::cell::RefCell<Vec<(String, u64, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Names of the parts holding bundle bytes `[start, end)`, when reading a split bundle.
fn parts_of(start: u64, end: u64) -> Vec<String> {
    PARTS.with(|ps| {
        ps.borrow()
            .iter()
            .filter(|(_, s, l)| *s < end.max(start + 1) && start < s + l)
            .map(|(n, _, _)| n.clone())
            .collect()
    })
}

/// After a truncation error, the name of the first part that was not found, if reading parts.
pub fn missing_part() -> Option<String> {
    MISSING.with(|m| m.borrow().clone())
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
