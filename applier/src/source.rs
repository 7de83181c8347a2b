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

pub fn open(path: &Path) -> Result<Source> {
    let display = path.display().to_string();
    let base = match split_base(path) {
        Some(b) => Some(b),
        None if !path.exists() && part_name(path, 0).exists() => Some(path.to_path_buf()),
        None => None,
    };
    if let Some(base) = base {
        return Ok(Source { reader: Box::new(Parts { base, next: 0, cur: None }), display });
    }
    let f = File::open(path).ctx("open bundle", &display)?;
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
            match File::open(&p) {
                Ok(f) => {
                    self.next += 1;
                    self.cur = Some(io::BufReader::with_capacity(1 << 20, f));
                }
                // The end of the last part reads as end of file; if the bundle needed more, the
                // framing reports truncation and names the part that is missing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    MISSING.with(|m| *m.borrow_mut() = Some(p.display().to_string()));
                    return Ok(0);
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
            }
        }
    }
}

thread_local! {
    static MISSING: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// After a truncation error, the name of the first part that was not found, if reading parts.
pub fn missing_part() -> Option<String> {
    MISSING.with(|m| m.borrow().clone())
}

/// Add the missing part's name to a truncation error.
pub fn explain(e: Error) -> Error {
    match (&e, missing_part()) {
        (Error::Bundle(bundle::Error::Truncated { .. }), Some(p)) => {
            Error::Bundle(bundle::Error::Manifest(format!("{e}; split bundle part {p} is missing")))
        }
        _ => e,
    }
}
