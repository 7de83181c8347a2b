//! gzip files shipped as their uncompressed data (bundle-format.md §5.3).
//!
//! A `.gz` file (Debian's man pages and changelogs, made by `gzip -9n`) hardly compresses again,
//! while its uncompressed data compresses to about half of it in a solid LZMA2 frame. When this
//! module's deflate encoders ([`bundle::deflate`]: GNU gzip's and zlib's, levels 1-9) give the
//! file back bit for bit, the job is rewritten to encode the data (from a scratch copy) and the
//! manifest tells the applier how to deflate it again. Anything else — another encoder, several
//! members, bytes after the member, data over [`MAX_RAW`] — stays a plain file.

use crate::write::PayloadJob;
use bundle::deflate::{self, Flavor};
use bundle::{Hash, Regzip, REGZIP_MAX_HEADER};
use rayon::prelude::*;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// Largest uncompressed data handled: such a file's data must fit one solid frame and be one
/// piece (a larger one is left as it is).
pub const MAX_RAW: u64 = crate::write::SOLID_MAX_FILE;

/// What [`rewrite_jobs`] did: files rewritten, their bytes, and the bytes of their data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub files: u64,
    pub bytes: u64,
    pub raw: u64,
}

/// Rewrite every job without a delta base whose file is a gzip file the encoders reproduce:
/// its data goes to a scratch file in `scratch`, and the job encodes that. Data larger than a
/// `chunk` would be cut into several pieces and is left as it is. Returns the counts.
pub fn rewrite_jobs(jobs: &mut [PayloadJob], scratch: &Path, chunk: u64) -> crate::Result<Rewritten> {
    let max_raw = MAX_RAW.min(chunk);
    let found: Vec<Option<(Regzip, Vec<u8>)>> = jobs
        .par_iter()
        .map(|j| {
            if j.base.is_some() || j.sparse.is_some() || j.size < 20 || j.size > 2 * MAX_RAW {
                return Ok(None);
            }
            let mut head = [0u8; 3];
            let mut f = File::open(&j.fs_path).map_err(crate::Error::io(&j.fs_path))?;
            if f.read_exact(&mut head).is_err() || head != [0x1f, 0x8b, 8] {
                return Ok(None);
            }
            let bytes = std::fs::read(&j.fs_path).map_err(crate::Error::io(&j.fs_path))?;
            if Hash::of(&bytes) != j.hash {
                return Err(crate::Error::Io {
                    path: j.fs_path.clone(),
                    source: io::Error::other("file changed during the build"),
                });
            }
            Ok(reproduce(&bytes).filter(|(_, raw)| raw.len() as u64 <= max_raw))
        })
        .collect::<crate::Result<_>>()?;
    let mut done = Rewritten::default();
    for (i, (j, f)) in jobs.iter_mut().zip(found).enumerate() {
        let Some((g, raw)) = f else { continue };
        let path = scratch.join(i.to_string());
        std::fs::write(&path, &raw).map_err(crate::Error::io(&path))?;
        done.files += 1;
        done.bytes += j.size;
        done.raw += raw.len() as u64;
        j.regzip = Some((g, j.hash));
        j.fs_path = path;
        j.size = raw.len() as u64;
        j.hash = Hash::of(&raw);
    }
    Ok(done)
}

/// The header length of the gzip member at the start of `b`, if it is one ([RFC 1952]: the
/// 10 fixed bytes and the optional fields the flags announce; no reserved flag set).
///
/// [RFC 1952]: https://www.rfc-editor.org/rfc/rfc1952
fn header_len(b: &[u8]) -> Option<usize> {
    if b.len() < 18 || b[..3] != [0x1f, 0x8b, 8] || b[3] & 0xe0 != 0 {
        return None;
    }
    let flg = b[3];
    let mut at = 10usize;
    if flg & 4 != 0 {
        let n = u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize;
        at += 2 + n;
    }
    for bit in [8u8, 16] {
        if flg & bit != 0 {
            at += b.get(at..)?.iter().position(|&c| c == 0)? + 1;
        }
    }
    if flg & 2 != 0 {
        at += 2;
    }
    (at <= REGZIP_MAX_HEADER && at + 8 <= b.len()).then_some(at)
}

/// Inflate the raw deflate stream at the start of `b`: (data, bytes of `b` it took), or `None`
/// if it is not one, or its data is over [`MAX_RAW`].
fn inflate(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut d = flate2::bufread::DeflateDecoder::new(b);
    let mut out = Vec::new();
    (&mut d).take(MAX_RAW + 1).read_to_end(&mut out).ok()?;
    if out.len() as u64 > MAX_RAW {
        return None;
    }
    Some((out, d.total_in() as usize))
}

/// A writer comparing what is written with `want`, failing at the first difference (so a wrong
/// encoder setting costs only the bytes up to where it diverges).
struct Compare<'a> {
    want: &'a [u8],
    at: usize,
}

impl Write for Compare<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.want.get(self.at..self.at + buf.len()) {
            Some(w) if w == buf => {
                self.at += buf.len();
                Ok(buf.len())
            }
            _ => Err(io::Error::other("differs")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `flavor` at `level` deflates `raw` to exactly `stream`.
fn same(raw: &[u8], stream: &[u8], flavor: Flavor, level: u8) -> bool {
    let Ok(mut enc) = deflate::Encoder::new(Compare { want: stream, at: 0 }, flavor, level) else {
        return false;
    };
    if enc.write_all(raw).is_err() {
        return false;
    }
    matches!(enc.finish(), Ok(c) if c.at == stream.len())
}

/// The encoder settings that give back the gzip file `b` exactly, and its data; `None` if the
/// file is not one gzip member, or no setting reproduces it.
pub fn reproduce(b: &[u8]) -> Option<(Regzip, Vec<u8>)> {
    let h = header_len(b)?;
    let (raw, used) = inflate(&b[h..])?;
    let end = h + used;
    // Exactly the trailer after the stream: CRC-32 and length of the data.
    if raw.is_empty() || b.len() != end + 8 {
        return None;
    }
    let crc = u32::from_le_bytes([b[end], b[end + 1], b[end + 2], b[end + 3]]);
    let len = u32::from_le_bytes([b[end + 4], b[end + 5], b[end + 6], b[end + 7]]);
    if crc != deflate::crc32(0, &raw) || len != raw.len() as u32 {
        return None;
    }
    // The level the header's XFL byte suggests first (2: best, 4: fastest), then the default.
    let levels: &[u8] = match b[8] {
        2 => &[9, 8, 7],
        4 => &[1, 2, 3],
        _ => &[6, 9, 1, 5, 4, 3, 2, 7, 8],
    };
    let stream = &b[h..end];
    for &level in levels {
        for flavor in [Flavor::Gzip, Flavor::Zlib] {
            if same(&raw, stream, flavor, level) {
                let g = Regzip { header: b[..h].to_vec(), flavor, level, raw: raw.len() as u64 };
                return Some((g, raw));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip_cli(data: &[u8], args: &[&str]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let mut c = std::process::Command::new("gzip")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        c.stdin.take().ok_or("stdin")?.write_all(data)?;
        Ok(c.wait_with_output()?.stdout)
    }

    fn text(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let mut i = 0u64;
        while v.len() < n {
            v.extend_from_slice(format!("line {i}: the quick brown fox {} jumps\n", i * 7919 % 1013).as_bytes());
            i += 1;
        }
        v.truncate(n);
        v
    }

    #[test]
    fn gzip_files_are_reproduced_with_their_header() -> Result<(), Box<dyn std::error::Error>> {
        for (n, args) in [(100, &["-9n"][..]), (300_000, &["-9n"][..]), (70_000, &["-1n"][..]), (50_000, &["-n"][..])] {
            let data = text(n);
            let gz = gzip_cli(&data, args)?;
            let (g, raw) = reproduce(&gz).ok_or("not reproduced")?;
            assert_eq!(raw, data);
            assert_eq!(g.raw, n as u64);
            assert_eq!(g.header, gz[..10]);
        }
        Ok(())
    }

    #[test]
    fn other_files_are_left_alone() -> Result<(), Box<dyn std::error::Error>> {
        let data = text(5000);
        assert!(reproduce(&data).is_none());
        // A stored name and a comment are part of the header.
        let mut gz = vec![0x1f, 0x8b, 8, 8 | 16, 0, 0, 0, 0, 0, 3];
        gz.extend_from_slice(b"name\0comment\0");
        let h = gz.len();
        gz.extend_from_slice(&deflate::deflate(&data, Flavor::Zlib, 6).map_err(|e| e.to_string())?);
        gz.extend_from_slice(&deflate::crc32(0, &data).to_le_bytes());
        gz.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let g = reproduce(&gz).map(|(g, _)| g);
        assert_eq!(g.as_ref().map(|g| g.header.len()), Some(h));
        // Trailing bytes, a wrong CRC, a truncated stream: not reproduced.
        let mut trailing = gz.clone();
        trailing.push(0);
        assert!(reproduce(&trailing).is_none());
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 1;
        assert!(reproduce(&bad_crc).is_none());
        assert!(reproduce(&gz[..gz.len() - 9]).is_none());
        Ok(())
    }
}
