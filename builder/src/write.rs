//! Encode payload frames into a temporary file, then write the bundle: manifest, signatures and
//! frames in the canonical container, to `FILE.tmp`, renamed to `FILE` only when complete.
//!
//! Frames are compressed in parallel but each one goes to the temporary file as soon as it is
//! done, so memory stays bounded by a few chunks however big the tree is; the bundle's frame
//! order is decided by the script, not by which thread finished first.

use crate::delta;
use crate::error::{Error, Result};
use bundle::container;
use bundle::{BundlePath, Frame, Hash, Method};
use rayon::prelude::*;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One NEW file whose content is encoded into frames.
#[derive(Clone, Debug)]
pub struct PayloadJob {
    pub path: BundlePath,
    pub fs_path: PathBuf,
    pub size: u64,
    pub hash: Hash,
    /// OLD file to try as delta base: bundle path, filesystem path, size.
    pub base: Option<(BundlePath, PathBuf, u64)>,
}

/// A compressed frame stored in the temporary file.
#[derive(Clone, Debug)]
pub struct StoredFrame {
    pub offset: u64,
    pub frame: Frame,
    pub method: Method,
}

/// How a file was encoded, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Patch,
    Chunked,
}

#[derive(Clone, Debug)]
pub struct EncodedFile {
    pub frames: Vec<StoredFrame>,
    pub encoding: Encoding,
}

/// Append-only store of compressed frames.
pub struct FrameStore {
    inner: Mutex<(File, u64)>,
    path_hint: PathBuf,
}

impl FrameStore {
    /// An anonymous temporary file in `dir` (next to the output, so it is on the same disk).
    pub fn new_in(dir: &Path) -> Result<FrameStore> {
        let f = tempfile::tempfile_in(dir).map_err(Error::io(dir))?;
        Ok(FrameStore {
            inner: Mutex::new((f, 0)),
            path_hint: dir.to_path_buf(),
        })
    }

    fn append(&self, bytes: &[u8]) -> Result<u64> {
        let mut g = self.inner.lock().map_err(|_| Error::Io {
            path: self.path_hint.clone(),
            source: io::Error::other("frame store lock poisoned"),
        })?;
        let at = g.1;
        g.0.write_all(bytes).map_err(Error::io(&self.path_hint))?;
        g.1 += bytes.len() as u64;
        Ok(at)
    }

    fn into_file(self) -> Result<File> {
        let (f, _) = self.inner.into_inner().map_err(|_| Error::Io {
            path: self.path_hint.clone(),
            source: io::Error::other("frame store lock poisoned"),
        })?;
        Ok(f)
    }
}

/// A patch at least this many times smaller than its input is kept without trying plain zstd.
pub const PATCH_GOOD_ENOUGH: u64 = 64;

struct Unit {
    job: usize,
    offset: u64,
    len: u64,
    /// (base path, fs path, offset, len)
    base: Option<(BundlePath, PathBuf, u64, u64)>,
    chunked: bool,
}

fn read_range(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut f = File::open(path).map_err(Error::io(path))?;
    f.seek(SeekFrom::Start(offset)).map_err(Error::io(path))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf).map_err(Error::io(path))?;
    if buf.len() as u64 != len {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank during the build"),
        });
    }
    Ok(buf)
}

fn run_unit(u: &Unit, jobs: &[PayloadJob], level: i32, store: &FrameStore) -> Result<StoredFrame> {
    let job = &jobs[u.job];
    let data = read_range(&job.fs_path, u.offset, u.len)?;
    if !u.chunked && Hash::of(&data) != job.hash {
        return Err(Error::Io {
            path: job.fs_path.clone(),
            source: io::Error::other("file changed during the build"),
        });
    }
    let cerr = |source| Error::Compress {
        path: job.path.display(),
        source,
    };
    // The smaller of plain zstd and a patch against the base; a patch that is already at least
    // 64:1 is kept without spending a (slow, high-level) plain encode to compare.
    let patch = match &u.base {
        Some((bp, bfs, off, len)) => {
            let base = read_range(bfs, *off, *len)?;
            let p = delta::compress(&data, level, Some(&base)).map_err(cerr)?;
            Some((
                p,
                Method::Patch {
                    base: bp.clone(),
                    offset: *off,
                    len: *len,
                },
                Some(base),
            ))
        }
        None => None,
    };
    let (bytes, method, base) = match patch {
        Some(p) if (p.0.len() as u64).saturating_mul(PATCH_GOOD_ENOUGH) <= u.len => p,
        p => {
            let plain = delta::compress(&data, level, None).map_err(cerr)?;
            match p {
                Some(p) if p.0.len() < plain.len() => p,
                _ => (plain, Method::Zstd, None),
            }
        }
    };
    // Check the frame decodes back to the input the way the applier will decode it.
    let back = delta::decompress(&bytes, base.as_deref(), u.len).map_err(cerr)?;
    if back != data {
        return Err(cerr(io::Error::other("frame does not decode to its input")));
    }
    let offset = store.append(&bytes)?;
    Ok(StoredFrame {
        offset,
        frame: Frame {
            size: bytes.len() as u64,
            hash: Hash::of(&bytes),
            decoded: u.len,
        },
        method,
    })
}

/// Encode every job (in parallel across files and chunks); results are in job order.
pub fn encode_all(
    jobs: &[PayloadJob],
    level: i32,
    chunk: u64,
    store: &FrameStore,
) -> Result<Vec<EncodedFile>> {
    let chunk = chunk.max(1);
    let mut units = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        if job.size <= chunk {
            let base = job.base.as_ref().map(|(bp, bfs, blen)| {
                (
                    bp.clone(),
                    bfs.clone(),
                    0,
                    (*blen).min(chunk.saturating_mul(2)),
                )
            });
            units.push(Unit {
                job: j,
                offset: 0,
                len: job.size,
                base: base.filter(|b| b.3 > 0),
                chunked: false,
            });
        } else {
            let n = job.size.div_ceil(chunk);
            for i in 0..n {
                let offset = i * chunk;
                let len = chunk.min(job.size - offset);
                let base = job
                    .base
                    .as_ref()
                    .filter(|(bp, _, _)| bp == &job.path)
                    .and_then(|(bp, bfs, blen)| {
                        let (o, l) = delta::chunk_base_window(i, chunk, *blen);
                        (l > 0).then(|| (bp.clone(), bfs.clone(), o, l))
                    });
                units.push(Unit {
                    job: j,
                    offset,
                    len,
                    base,
                    chunked: true,
                });
            }
        }
    }
    let done: Vec<Result<StoredFrame>> = units
        .par_iter()
        .map(|u| run_unit(u, jobs, level, store))
        .collect();
    let mut out: Vec<EncodedFile> = jobs
        .iter()
        .map(|_| EncodedFile {
            frames: Vec::new(),
            encoding: Encoding::Zstd,
        })
        .collect();
    for (u, r) in units.iter().zip(done) {
        let f = r?;
        let e = &mut out[u.job];
        e.encoding = match (&f.method, u.chunked) {
            (_, true) => Encoding::Chunked,
            (Method::Patch { .. }, false) => Encoding::Patch,
            (Method::Zstd, false) => Encoding::Zstd,
        };
        e.frames.push(f);
    }
    Ok(out)
}

fn with_suffix(p: &Path, s: &str) -> PathBuf {
    let mut o = p.as_os_str().to_owned();
    o.push(s);
    PathBuf::from(o)
}

/// Write the bundle to `out` via `out.tmp`. `frames` are (offset, size) in the store, in
/// manifest order. Returns the bundle size in bytes.
pub fn write_bundle(
    out: &Path,
    manifest: &[u8],
    signatures: &[u8],
    frames: &[(u64, u64)],
    store: FrameStore,
) -> Result<u64> {
    let tmp = with_suffix(out, ".tmp");
    let result = (|| -> io::Result<u64> {
        let mut src = store
            .into_file()
            .map_err(|e| io::Error::other(e.to_string()))?;
        let f = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        container::write_member(&mut w, container::MANIFEST_NAME, manifest)?;
        container::write_member(&mut w, container::SIGNATURES_NAME, signatures)?;
        for (i, &(offset, size)) in frames.iter().enumerate() {
            container::begin_member(&mut w, &container::frame_name(i), size)?;
            src.seek(SeekFrom::Start(offset))?;
            let n = io::copy(&mut (&mut src).take(size), &mut w)?;
            if n != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "temporary frame file is short",
                ));
            }
            container::end_member(&mut w, size)?;
        }
        container::finish(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let len = f.metadata()?.len();
        drop(f);
        fs::rename(&tmp, out)?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(len)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        Error::Write {
            path: out.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_sparse_file_with_base() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let new = d.path().join("new");
        let old = d.path().join("old");
        let chunk = 64 << 10;
        {
            let f = File::create(&new)?;
            f.set_len(5 * chunk + 123)?;
            let mut f = fs::OpenOptions::new().write(true).open(&new)?;
            f.seek(SeekFrom::Start(2 * chunk + 7))?;
            f.write_all(b"changed bytes in the middle")?;
            let g = File::create(&old)?;
            g.set_len(5 * chunk)?;
        }
        let job = PayloadJob {
            path: BundlePath::new("f")?,
            fs_path: new.clone(),
            size: 5 * chunk + 123,
            hash: crate::scan::hash_file(&new)?,
            base: Some((BundlePath::new("f")?, old.clone(), 5 * chunk)),
        };
        let store = FrameStore::new_in(d.path())?;
        let enc = encode_all(std::slice::from_ref(&job), 3, chunk, &store)?;
        assert_eq!(enc[0].encoding, Encoding::Chunked);
        assert_eq!(enc[0].frames.len(), 6);
        let mut file = store.into_file()?;
        let mut rebuilt = Vec::new();
        let oldb = fs::read(&old)?;
        for (i, f) in enc[0].frames.iter().enumerate() {
            let mut bytes = vec![0u8; f.frame.size as usize];
            file.seek(SeekFrom::Start(f.offset))?;
            file.read_exact(&mut bytes)?;
            assert_eq!(Hash::of(&bytes), f.frame.hash);
            let prefix = match &f.method {
                Method::Patch { offset, len, .. } => {
                    assert_eq!(
                        (*offset, *len),
                        delta::chunk_base_window(i as u64, chunk, 5 * chunk)
                    );
                    Some(&oldb[*offset as usize..(*offset + *len) as usize])
                }
                Method::Zstd => None,
            };
            rebuilt.extend(delta::decompress(&bytes, prefix, f.frame.decoded)?);
        }
        assert_eq!(rebuilt, fs::read(&new)?);
        Ok(())
    }
}
