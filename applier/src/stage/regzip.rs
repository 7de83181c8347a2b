//! Re-creating a gzip file from its uncompressed data (bundle-format.md §5.3): the header from
//! the manifest, the data through the deflate encoder the manifest names as it is decoded, then
//! the CRC-32 and length trailer. Nothing is written past the file's declared size; the staged
//! file's digest is checked afterwards like any other. What the bundle got wrong (data out of
//! order, too long or short, output past the declared size) is an [`io::ErrorKind::InvalidData`]
//! error, which the caller reports as a fault of the frame; other errors are the disk's.

use bundle::deflate::Encoder;
use bundle::Regzip;
use std::fs::File;
use std::io::{self, BufWriter, Write};

/// An error that is the bundle's fault.
fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A writer that refuses to go past `left` bytes: a manifest whose encoder settings do not give
/// the declared file costs at most its declared size on disk.
struct Capped<W> {
    inner: W,
    left: u64,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(bad("re-created gzip file is longer than declared".into()));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A staged gzip file being written: its data must arrive in order, from offset 0.
pub(super) struct GzipSink {
    enc: Encoder<Capped<BufWriter<File>>>,
    crc: u32,
    fed: u64,
    raw: u64,
}

impl GzipSink {
    /// Start the staged file `file` (empty) of a `size`-byte gzip file described by `g`.
    pub(super) fn new(file: File, g: &Regzip, size: u64) -> io::Result<GzipSink> {
        let mut out = Capped { inner: BufWriter::with_capacity(1 << 16, file), left: size };
        out.write_all(&g.header)?;
        let enc = Encoder::new(out, g.flavor, g.level).map_err(|e| bad(e.to_string()))?;
        Ok(GzipSink { enc, crc: 0, fed: 0, raw: g.raw })
    }

    /// Feed the data bytes at offset `at` of the uncompressed data.
    pub(super) fn feed(&mut self, at: u64, data: &[u8]) -> io::Result<()> {
        if at != self.fed || self.fed + data.len() as u64 > self.raw {
            return Err(bad("gzip data out of order or longer than declared".into()));
        }
        self.crc = bundle::deflate::crc32(self.crc, data);
        self.fed += data.len() as u64;
        self.enc.write_all(data)
    }

    /// Whether all the data arrived.
    pub(super) fn complete(&self) -> bool {
        self.fed == self.raw
    }

    /// End the deflate stream and write the trailer; the data must be complete. The file must
    /// then be exactly its declared size.
    pub(super) fn finish(self) -> io::Result<()> {
        if self.fed != self.raw {
            return Err(bad(format!("gzip data ends after {} of {} bytes", self.fed, self.raw)));
        }
        let mut out = self.enc.finish()?;
        out.write_all(&self.crc.to_le_bytes())?;
        out.write_all(&(self.raw as u32).to_le_bytes())?;
        out.flush()?;
        if out.left != 0 {
            return Err(bad(format!("re-created gzip file is {} bytes short of its declared size", out.left)));
        }
        Ok(())
    }
}
