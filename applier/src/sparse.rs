//! Sparse files on the target (bundle-format.md §4.2 "Sparse files", §5): hashing a file
//! without reading its holes, and copying only a NEW layout's data extents.
//!
//! Why: a target file of 2 GiB with 4 KiB of data is hashed by the base check, by the staging
//! verification and again before the commit; read byte by byte, each pass would cost 2 GiB of
//! reads. Here the holes (`SEEK_DATA`/`SEEK_HOLE`) are fed to the hasher as zeros from memory
//! ([`bundle::sparse::ZeroFillHasher`]), so the digest is exactly that of the dense bytes.

use bundle::sparse::ZeroFillHasher;
use bundle::{Extent, Hash};
use rustix::fs::{seek, SeekFrom};
use rustix::io::Errno;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};

/// BLAKE3 of the first `limit` bytes of `f` and their number (as `hash_reader(f.take(limit))`),
/// reading only its data: holes are hashed as zeros. A file whose allocation covers its size
/// (dense), or on a filesystem without `SEEK_DATA`, is read sequentially.
pub fn hash_file(f: &File, limit: u64) -> io::Result<(Hash, u64)> {
    let md = f.metadata()?;
    let size = md.len().min(limit);
    if md.blocks().saturating_mul(512) >= md.len() {
        return crate::base::hash_reader(f.take(limit));
    }
    let mut h = ZeroFillHasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0u64;
    while at < size {
        let data = match seek(f, SeekFrom::Data(at)) {
            Ok(d) => d.min(size),
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => return crate::base::hash_reader(f.take(limit)),
            Err(e) => return Err(e.into()),
        };
        let hole = match seek(f, SeekFrom::Hole(data)) {
            Ok(x) => x.min(size),
            Err(e) => return Err(e.into()),
        };
        let mut pos = data;
        while pos < hole {
            let n = (hole - pos).min(buf.len() as u64) as usize;
            let k = f.read_at(&mut buf[..n], pos)?;
            if k == 0 {
                // Shrank while read: what was read is the content.
                return Ok((h.finish(pos), pos));
            }
            h.update_at(pos, &buf[..k]).map_err(io::Error::other)?;
            pos += k as u64;
        }
        at = hole.max(data + 1);
    }
    Ok((h.finish(size), size))
}

/// Copy `src` (checked to be `size` bytes) into the new, empty `dst`: with `extents` (a sparse
/// NEW file), only those ranges, at their offsets, the rest left as holes; else every byte, at
/// most `size` + 1 (a source that grew is then refused by the hash check). Returns the bytes
/// written.
pub fn copy(src: &File, dst: &mut File, size: u64, extents: Option<&[Extent]>) -> io::Result<u64> {
    let Some(extents) = extents else {
        return io::copy(&mut src.take(size + 1), dst);
    };
    dst.set_len(size)?;
    let mut buf = vec![0u8; 1 << 18];
    let mut written = 0;
    for e in extents {
        let mut at = e.offset;
        while at < e.end() {
            let n = (e.end() - at).min(buf.len() as u64) as usize;
            src.read_exact_at(&mut buf[..n], at)?;
            dst.write_all_at(&buf[..n], at)?;
            at += n as u64;
            written += n as u64;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    #[test]
    fn hashing_skips_holes_and_gives_the_dense_digest() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        let size = 5u64 << 20;
        let mut f = File::options().read(true).write(true).create_new(true).open(d.path().join("f"))?;
        f.set_len(size)?;
        f.seek(io::SeekFrom::Start(1 << 20))?;
        f.write_all(b"data")?;
        let mut dense = vec![0u8; size as usize];
        dense[1 << 20..(1 << 20) + 4].copy_from_slice(b"data");
        assert_eq!(hash_file(&f, size)?, (Hash::of(&dense), size));
        assert_eq!(hash_file(&f, size + 1)?, (Hash::of(&dense), size));
        assert_eq!(hash_file(&f, 100)?, (Hash::of(&dense[..100]), 100));
        // A sparse copy keeps the holes and the content.
        let mut g = File::options().read(true).write(true).create_new(true).open(d.path().join("g"))?;
        let x = [Extent { offset: 1 << 20, len: 4096 }];
        assert_eq!(copy(&f, &mut g, size, Some(&x))?, 4096);
        assert_eq!(hash_file(&g, size)?, (Hash::of(&dense), size));
        assert!(g.metadata()?.blocks() * 512 <= 64 << 10);
        Ok(())
    }
}
