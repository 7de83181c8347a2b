//! Finding the holes of sparse files, and the policy that decides which files the bundle
//! describes as sparse (bundle-format.md §4.2, "Sparse files").
//!
//! Why: a 2 GiB VM image or database with a few KiB of data must cost a few KiB to hash,
//! compress and ship, not 2 GiB. The data extents come from the filesystem
//! (`lseek(SEEK_DATA/SEEK_HOLE)`) for a directory input, and from the archive's sparse map for a
//! tar input ([`crate::image`]); both go through [`normalize`], so the same tree gives the same
//! entries whichever way it is read.
//!
//! Policy ([`normalize`]): extents are widened to [`BLOCK`] boundaries, and every hole shorter
//! than [`MIN_HOLE`] (between extents, or at either end of the file) is filled, i.e. treated as
//! data (zeros that are read and shipped). A file with no hole left is dense. If more than
//! [`MAX_EXTENTS`] extents remain, the minimum hole doubles until they fit. Directory inputs are
//! only probed when their allocated blocks are at least [`MIN_HOLE`] below their size (a file
//! without that much unallocated space cannot have such a hole, so dense trees pay one `stat`
//! field per file and no extra system call). A filesystem without `SEEK_DATA` reports the whole
//! file as data: the file is dense.

use crate::error::{Error, Result};
use bundle::sparse::ZeroFillHasher;
use bundle::{Extent, Hash};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Granularity of holes: extents start and end on multiples of this (or at the file's end).
pub const BLOCK: u64 = 4096;
/// Holes shorter than this are filled with zeros and shipped as data.
pub const MIN_HOLE: u64 = 64 << 10;
/// At most this many extents per file (the format's default `max_extents_per_file`).
pub const MAX_EXTENTS: usize = 1 << 16;

/// Apply the policy to the raw data extents of a file of `size` bytes (sorted, possibly
/// unaligned, overlapping or empty, as a filesystem or an archive reports them): the extents the
/// manifest lists, or `None` if the file is dense.
pub fn normalize(size: u64, raw: &[Extent]) -> Option<Vec<Extent>> {
    let mut min_hole = MIN_HOLE;
    loop {
        let x = normalize_with(size, raw, min_hole);
        match x {
            Some(v) if v.len() > MAX_EXTENTS => min_hole = min_hole.saturating_mul(2),
            other => return other,
        }
    }
}

fn normalize_with(size: u64, raw: &[Extent], min_hole: u64) -> Option<Vec<Extent>> {
    let mut out: Vec<Extent> = Vec::new();
    for e in raw.iter().filter(|e| e.len > 0 && e.offset < size) {
        let start = e.offset / BLOCK * BLOCK;
        let end = e.end().min(size).div_ceil(BLOCK).saturating_mul(BLOCK).min(size);
        // A hole at the start shorter than `min_hole` is filled.
        let start = if start < min_hole { 0 } else { start };
        match out.last_mut() {
            Some(last) if start <= last.end().saturating_add(min_hole - 1) => {
                last.len = last.len.max(end.saturating_sub(last.offset));
            }
            _ => out.push(Extent { offset: start, len: end - start }),
        }
    }
    if let Some(last) = out.last_mut() {
        if size - last.end() < min_hole {
            last.len = size - last.offset;
        }
    }
    let data: u64 = out.iter().map(|e| e.len).sum();
    if size < min_hole || data == size {
        return None;
    }
    Some(out)
}

/// The raw data extents of an open file of `size` bytes from `SEEK_DATA`/`SEEK_HOLE`; `None`
/// if the filesystem does not support them.
pub fn data_extents(f: &File, size: u64) -> std::io::Result<Option<Vec<Extent>>> {
    use rustix::fs::{seek, SeekFrom};
    use rustix::io::Errno;
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        let data = match seek(f, SeekFrom::Data(at)) {
            Ok(d) => d,
            // No data after `at`: the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = match seek(f, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if hole <= data {
            break;
        }
        out.push(Extent { offset: data, len: hole - data });
        at = hole;
    }
    Ok(Some(out))
}

/// BLAKE3 of a file's logical content and, for a file the policy makes sparse, its extents;
/// only the data extents are read (holes are hashed as zeros from memory).
pub fn hash_file(path: &Path) -> Result<(Hash, u64, Option<Vec<Extent>>)> {
    let f = File::open(path).map_err(Error::io(path))?;
    let md = f.metadata().map_err(Error::io(path))?;
    let size = md.len();
    let allocated = md.blocks().saturating_mul(512);
    let extents = if allocated.saturating_add(MIN_HOLE) <= size {
        data_extents(&f, size).map_err(Error::io(path))?.and_then(|raw| normalize(size, &raw))
    } else {
        None
    };
    let hash = match &extents {
        None => {
            let mut h = blake3::Hasher::new();
            h.update_reader(&f).map_err(Error::io(path))?;
            h.finalize().into()
        }
        Some(x) => hash_extents(&f, size, x).map_err(Error::io(path))?,
    };
    Ok((hash, size, extents))
}

/// BLAKE3 of the logical content of `f` (`size` bytes), reading only `extents`.
pub fn hash_extents(f: &File, size: u64, extents: &[Extent]) -> std::io::Result<Hash> {
    let mut h = ZeroFillHasher::new();
    let mut buf = vec![0u8; 1 << 16];
    for e in extents {
        let mut at = e.offset;
        while at < e.end() {
            let n = (e.end() - at).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], at)?;
            h.update_at(at, &buf[..n]).map_err(std::io::Error::other)?;
            at += n as u64;
        }
    }
    Ok(h.finish(size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn x(v: &[(u64, u64)]) -> Vec<Extent> {
        v.iter().map(|&(offset, len)| Extent { offset, len }).collect()
    }

    #[test]
    fn policy_aligns_fills_small_holes_and_keeps_big_ones() {
        const M: u64 = 1 << 20;
        // Unaligned data widened to blocks; holes at both ends kept.
        assert_eq!(normalize(10 * M, &x(&[(M + 10, 5)])), Some(x(&[(M, BLOCK)])));
        // A small hole between two extents is filled; a small hole at the start too.
        assert_eq!(normalize(10 * M, &x(&[(4096, 4096), (3 * 4096, 4096)])), Some(x(&[(0, 4 * 4096)])));
        // A trailing hole shorter than MIN_HOLE is filled; the file ends in data.
        assert_eq!(normalize(M, &x(&[(0, 4096), (M - 8192, 100)])), Some(x(&[(0, 4096), (M - 8192, 8192)])));
        // Overlapping and empty raw extents (an archive's terminal zero-length entry).
        assert_eq!(normalize(10 * M, &x(&[(M, 8192), (M + 4096, 4096), (10 * M, 0)])), Some(x(&[(M, 8192)])));
        // All hole.
        assert_eq!(normalize(10 * M, &[]), Some(vec![]));
        // Dense: no hole of MIN_HOLE anywhere, or too small a file.
        assert_eq!(normalize(10 * M, &x(&[(0, 10 * M)])), None);
        assert_eq!(normalize(MIN_HOLE - 1, &[]), None);
        assert_eq!(normalize(M, &x(&[(0, 4096), (MIN_HOLE, M - MIN_HOLE)])), None);
        // Too many extents: the minimum hole grows until they fit.
        // Pairs of extents 2 MIN_HOLE apart, pairs 6 MIN_HOLE apart: twice the minimum hole
        // merges each pair and keeps the holes between pairs.
        let pairs = MAX_EXTENTS as u64 / 2 + 10;
        let many: Vec<Extent> = (0..pairs)
            .flat_map(|i| {
                [
                    Extent { offset: i * 6 * MIN_HOLE, len: 1 },
                    Extent { offset: i * 6 * MIN_HOLE + 2 * MIN_HOLE, len: 1 },
                ]
            })
            .collect();
        assert_eq!(normalize_with(pairs * 6 * MIN_HOLE, &many, MIN_HOLE).map(|v| v.len()), Some(many.len()));
        assert_eq!(normalize(pairs * 6 * MIN_HOLE, &many).map(|v| v.len()), Some(pairs as usize));
    }

    #[test]
    fn extents_of_a_sparse_file_and_its_digest() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let p = d.path().join("f");
        let size = 8u64 << 20;
        let mut f = File::create(&p)?;
        f.set_len(size)?;
        f.seek(SeekFrom::Start(3 << 20))?;
        f.write_all(b"middle")?;
        f.seek(SeekFrom::Start(size - 3))?;
        f.write_all(b"end")?;
        f.sync_all()?;
        let mut dense = vec![0u8; size as usize];
        dense[3 << 20..(3 << 20) + 6].copy_from_slice(b"middle");
        dense[size as usize - 3..].copy_from_slice(b"end");
        let (hash, sz, extents) = hash_file(&p)?;
        assert_eq!((hash, sz), (Hash::of(&dense), size));
        // On a filesystem with SEEK_HOLE (tmpfs, ext4, xfs, btrfs) the file is sparse.
        let raw = data_extents(&File::open(&p)?, size)?.ok_or("no SEEK_DATA")?;
        assert!(raw.iter().map(|e| e.len).sum::<u64>() < size / 2, "{raw:?}");
        assert_eq!(extents, Some(x(&[(3 << 20, BLOCK), (size - BLOCK, BLOCK)])));
        // A dense file is not probed.
        std::fs::write(&p, &dense)?;
        assert_eq!(hash_file(&p)?, (Hash::of(&dense), size, None));
        Ok(())
    }
}
