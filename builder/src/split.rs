//! Split bundles: a bundle cut into numbered parts `FILE.000`, `FILE.001`, … of at most a given
//! size, e.g. to fit a FAT32 stick (4 GiB − 1 per file). The parts are plain byte ranges of the
//! bundle; `ferry-apply` reads them as one stream given the first part (or `FILE`), and names the
//! part that is missing or holds a corrupt byte.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// FAT32's largest file.
pub const FAT32_MAX: u64 = (4 << 30) - 1;

/// Name of part `i` of `bundle`.
pub fn part_name(bundle: &Path, i: usize) -> PathBuf {
    let mut s = bundle.as_os_str().to_owned();
    s.push(format!(".{i:03}"));
    PathBuf::from(s)
}

/// Cut `bundle` into parts of at most `size` bytes and remove it. Returns the part paths.
pub fn split(bundle: &Path, size: u64) -> io::Result<Vec<PathBuf>> {
    if size == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "split size must be positive"));
    }
    let mut src = File::open(bundle)?;
    let total = src.metadata()?.len();
    let n = total.div_ceil(size).max(1) as usize;
    if n > 1000 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{n} parts; at most 1000 (use a larger split size)"),
        ));
    }
    let mut parts = Vec::with_capacity(n);
    for i in 0..n {
        let p = part_name(bundle, i);
        let mut tmp = p.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut out = File::create(&tmp)?;
        let copied = io::copy(&mut (&mut src).take(size), &mut out)?;
        out.flush()?;
        out.sync_all()?;
        debug_assert!(copied > 0 || total == 0);
        fs::rename(&tmp, &p)?;
        parts.push(p);
    }
    fs::remove_file(bundle)?;
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join() {
        let d = tempfile::tempdir().expect("tmp");
        let b = d.path().join("x.ferry");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&b, &data).expect("write");
        let parts = split(&b, 4096).expect("split");
        assert_eq!(parts.len(), 3);
        assert!(!b.exists());
        let mut joined = Vec::new();
        for p in &parts {
            assert!(fs::metadata(p).expect("part").len() <= 4096);
            joined.extend(fs::read(p).expect("read"));
        }
        assert_eq!(joined, data);
    }
}
