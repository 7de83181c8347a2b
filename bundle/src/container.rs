//! The canonical tar framing of a bundle (bundle-format.md, "Container").
//!
//! tar is only framing: a reader rebuilds the one header the spec allows for each member from
//! its name and size and refuses any other byte, so no header field (mode, owner, type, a second
//! length) can ever carry meaning or smuggle data. Paths, modes and owners come only from the
//! signed manifest. Layout:
//!
//! ```text
//! [hdr "ferry-v6/manifest.cbor"]   [manifest][zero pad to 512]
//! [hdr "ferry-v6/signatures.cbor"] [signatures][pad]
//! [hdr "ferry-v6/payload.00000000"] [frame 0][frame 1]...[frame k][pad]   frames back to back
//! [hdr "ferry-v6/payload.00000001"] [frame k+1]...[pad]                   a new member every 1 GiB
//! [512 zero bytes][512 zero bytes]  EOF
//! ```
//!
//! Frames are packed into payload members greedily by [`packs`], a function of the manifest's
//! frame sizes alone, so the layout is canonical and a reader knows where every frame starts.

use crate::{Error, Hash, Limits, Manifest};
use std::io::{self, Read, Write};

pub const BLOCK: u64 = 512;
pub const MANIFEST_NAME: &str = "ferry-v6/manifest.cbor";
pub const SIGNATURES_NAME: &str = "ferry-v6/signatures.cbor";
/// Largest member size the 11-digit octal size field can hold.
pub const MAX_MEMBER: u64 = 0o77777777777;
/// Bound on the signature member (16 signatures of 64 bytes plus CBOR overhead).
pub const MAX_SIGNATURES_BYTES: u64 = 4096;

/// Payload members are filled with whole frames up to this many bytes (a frame larger than this
/// gets a member of its own).
pub const PACK_BYTES: u64 = 1 << 30;

/// Name of payload member `k`.
pub fn payload_name(k: usize) -> String {
    format!("ferry-v6/payload.{k:08}")
}

/// One payload member: frames `first..end` of the manifest, back to back, `size` bytes in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pack {
    pub first: usize,
    pub end: usize,
    pub size: u64,
}

/// The canonical packing of frames of these sizes into payload members: in order, a frame starts
/// a new member when the current one is not empty and would grow beyond [`PACK_BYTES`].
pub fn packs(sizes: impl IntoIterator<Item = u64>) -> Vec<Pack> {
    let mut out: Vec<Pack> = Vec::new();
    for (i, s) in sizes.into_iter().enumerate() {
        match out.last_mut() {
            Some(p) if p.size.saturating_add(s) <= PACK_BYTES => {
                p.end = i + 1;
                p.size += s;
            }
            _ => out.push(Pack { first: i, end: i + 1, size: s }),
        }
    }
    out
}

/// The only header a member `name` of `size` bytes may have: POSIX ustar, mode 0644, owner 0:0,
/// mtime 0, type '0', no link name, no user or group names, device fields zero.
pub fn header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn padding(size: u64) -> usize {
    ((BLOCK - size % BLOCK) % BLOCK) as usize
}

/// Write one whole member.
pub fn write_member(w: &mut impl Write, name: &str, data: &[u8]) -> io::Result<()> {
    w.write_all(&header(name, data.len() as u64))?;
    w.write_all(data)?;
    w.write_all(&[0u8; 512][..padding(data.len() as u64)])
}

/// Write a member header; the caller then writes exactly `size` bytes and calls [`end_member`].
pub fn begin_member(w: &mut impl Write, name: &str, size: u64) -> io::Result<()> {
    w.write_all(&header(name, size))
}

pub fn end_member(w: &mut impl Write, size: u64) -> io::Result<()> {
    w.write_all(&[0u8; 512][..padding(size)])
}

/// Write the payload members for frames of these sizes (in manifest order), packed by [`packs`];
/// `frame(w, i)` must write exactly the `sizes[i]` bytes of frame `i`.
pub fn write_payload<W: Write>(
    w: &mut W,
    sizes: &[u64],
    mut frame: impl FnMut(&mut W, usize) -> io::Result<()>,
) -> io::Result<()> {
    for (k, p) in packs(sizes.iter().copied()).into_iter().enumerate() {
        if p.size > MAX_MEMBER {
            return Err(io::Error::other(format!("frame {} is larger than a tar member can be", p.first)));
        }
        begin_member(w, &payload_name(k), p.size)?;
        for i in p.first..p.end {
            frame(w, i)?;
        }
        end_member(w, p.size)?;
    }
    Ok(())
}

/// Write the end-of-archive marker.
pub fn finish(w: &mut impl Write) -> io::Result<()> {
    w.write_all(&[0u8; 1024])
}

/// Where one frame lies in a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte that belongs to this frame: its payload member's header if the frame starts
    /// the member, else the frame's first byte.
    pub start: u64,
    /// First byte of the frame.
    pub data: u64,
    /// The frame's size.
    pub size: u64,
    /// One past the last byte that belongs to this frame: after the member's padding if the
    /// frame ends its member, else `data + size`.
    pub end: u64,
    /// If the frame starts a payload member: the member's index and size (its header is
    /// `header(&payload_name(k), size)` at `start`).
    pub member: Option<(usize, u64)>,
}

/// Where each frame lies, given the manifest and the signature member sizes. Lets a reader seek
/// straight to a frame (resumable fetch, split parts). The spans tile the payload members.
pub fn layout(manifest_len: u64, sig_len: u64, frames: &[crate::Frame]) -> Vec<Span> {
    let round = |n: u64| n.div_ceil(BLOCK) * BLOCK;
    let mut at = BLOCK + round(manifest_len) + BLOCK + round(sig_len);
    let mut out = Vec::with_capacity(frames.len());
    for (k, p) in packs(frames.iter().map(|f| f.size)).into_iter().enumerate() {
        let member_start = at;
        let mut data = at + BLOCK;
        for (i, f) in frames.iter().enumerate().take(p.end).skip(p.first) {
            let first = i == p.first;
            let last = i + 1 == p.end;
            let start = if first { member_start } else { data };
            let end = if last { data + f.size + padding(p.size) as u64 } else { data + f.size };
            out.push(Span { start, data, size: f.size, end, member: first.then_some((k, p.size)) });
            data += f.size;
        }
        at = member_start + BLOCK + round(p.size);
    }
    out
}

/// Where a frame sits among the payload members: the member it starts (index, size), and the
/// size of the member it ends (whose padding follows it).
type FrameSlot = (Option<(usize, u64)>, Option<u64>);

/// Streaming reader that accepts only canonical framing.
pub struct Reader<R> {
    inner: R,
    offset: u64,
    limits: Limits,
    /// Per frame of the manifest being read, computed on first use.
    plan: Vec<FrameSlot>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R, limits: Limits) -> Self {
        Reader { inner, offset: 0, limits, plan: Vec::new() }
    }

    fn plan_for(&mut self, frames: &[crate::Frame]) {
        if self.plan.len() == frames.len() {
            return;
        }
        self.plan = vec![(None, None); frames.len()];
        for (k, p) in packs(frames.iter().map(|f| f.size)).into_iter().enumerate() {
            self.plan[p.first].0 = Some((k, p.size));
            self.plan[p.end - 1].1 = Some(p.size);
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), Error> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => return Err(Error::Truncated { offset: self.offset + got as u64, what: what.into() }),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Read a member header, check it is exactly the canonical header for `name`, return the size.
    pub fn header(&mut self, name: &str, max: u64) -> Result<u64, Error> {
        let at = self.offset;
        let mut h = [0u8; 512];
        if at == 0 {
            // A short file is "not a ferry bundle" unless it starts like one (then it is a
            // truncated bundle): a short text file is no bundle, a cut-off copy of one is.
            let mut got = 0;
            while got < h.len() {
                match self.inner.read(&mut h[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::Io(e)),
                }
            }
            let magic = b"ferry-v";
            if got < h.len() && h[..got.min(magic.len())] == magic[..got.min(magic.len())] {
                return Err(Error::Truncated { offset: got as u64, what: format!("tar header of {name}") });
            }
            self.offset += got as u64;
        } else {
            self.fill(&mut h, &format!("tar header of {name}"))?;
        }
        if at == 0 {
            // The first header's name is the format's magic and version.
            let n = &h[..100];
            let end = n.iter().position(|&b| b == 0).unwrap_or(100);
            let n = String::from_utf8_lossy(&n[..end]).into_owned();
            match n.strip_prefix("ferry-v").and_then(|r| r.split_once('/')) {
                Some((v, _)) if v == crate::FORMAT_VERSION.to_string() => {}
                Some((v, _)) => return Err(Error::UnsupportedVersion(v.to_string())),
                None => return Err(Error::NotABundle),
            }
        }
        let field = &h[124..136];
        let size =
            std::str::from_utf8(&field[..11]).ok().and_then(|s| u64::from_str_radix(s, 8).ok()).ok_or_else(|| {
                Error::Framing { offset: at + 124, what: format!("size field of {name} is not 11 octal digits") }
            })?;
        if header(name, size) != h {
            let first = header(name, size).iter().zip(h.iter()).position(|(a, b)| a != b).unwrap_or(0);
            return Err(Error::Framing {
                offset: at + first as u64,
                what: format!("header of member {name} is not canonical"),
            });
        }
        if size > max {
            return Err(Error::TooLarge { what: name.into(), size, limit: max });
        }
        Ok(size)
    }

    /// Read the zero padding after a member of `size` bytes.
    pub fn padding(&mut self, size: u64) -> Result<(), Error> {
        let at = self.offset;
        let mut p = [0u8; 512];
        let n = padding(size);
        self.fill(&mut p[..n], "padding")?;
        if let Some(i) = p[..n].iter().position(|&b| b != 0) {
            return Err(Error::Framing { offset: at + i as u64, what: "non-zero padding".into() });
        }
        Ok(())
    }

    /// Read a whole small member into memory.
    pub fn member(&mut self, name: &str, max: u64) -> Result<Vec<u8>, Error> {
        let size = self.header(name, max)?;
        let mut v = vec![0u8; size as usize];
        self.fill(&mut v, name)?;
        self.padding(size)?;
        Ok(v)
    }

    /// Read the manifest and signature members (the first two).
    pub fn head(&mut self) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let m = self.member(MANIFEST_NAME, self.limits.max_manifest_bytes)?;
        let s = self.member(SIGNATURES_NAME, MAX_SIGNATURES_BYTES)?;
        Ok((m, s))
    }

    /// Start frame `index` of the manifest's `frames` (frames are read in order): reads the
    /// payload member header if the frame starts a member; the returned reader yields exactly the
    /// frame's bytes and hashes them. Call [`FrameReader::finish`] afterwards.
    pub fn frame(&mut self, frames: &[crate::Frame], index: usize) -> Result<FrameReader<'_, R>, Error> {
        self.plan_for(frames);
        let frame = frames.get(index).ok_or_else(|| Error::Framing {
            offset: self.offset,
            what: format!("frame {index} is not in the manifest"),
        })?;
        let (starts, ends) = self.plan[index];
        if let Some((k, want)) = starts {
            let name = payload_name(k);
            let size = self.header(&name, MAX_MEMBER)?;
            if size != want {
                return Err(Error::Framing {
                    offset: self.offset - BLOCK + 124,
                    what: format!(
                        "payload member {name} is {size} bytes, the manifest says {want} (the sum of its frames)"
                    ),
                });
            }
        }
        Ok(FrameReader {
            reader: self,
            left: frame.size,
            size: frame.size,
            index,
            expect: frame.hash,
            hasher: blake3::Hasher::new(),
            pad: ends,
        })
    }

    /// Skip one frame after checking its framing and hash (used by verification).
    pub fn check_frame(&mut self, frames: &[crate::Frame], index: usize) -> Result<(), Error> {
        let mut fr = self.frame(frames, index)?;
        io::copy(&mut fr, &mut io::sink()).map_err(|e| unwrap_io(e, index))?;
        fr.finish()
    }

    /// Read the end-of-archive marker and require end of file.
    pub fn end(&mut self) -> Result<(), Error> {
        let at = self.offset;
        let mut z = [0u8; 1024];
        self.fill(&mut z, "end-of-archive marker")?;
        if let Some(i) = z.iter().position(|&b| b != 0) {
            return Err(Error::Framing { offset: at + i as u64, what: "expected end-of-archive zero blocks".into() });
        }
        let mut one = [0u8; 1];
        loop {
            match self.inner.read(&mut one) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(Error::TrailingData { offset: self.offset }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Verify a whole bundle stream: head, every frame hash, the end marker. Returns the manifest
    /// and signature bytes (not yet decoded or checked against keys).
    pub fn verify_framing(
        mut self,
        decode: impl FnOnce(&[u8]) -> Result<Manifest, Error>,
    ) -> Result<(Vec<u8>, Vec<u8>, Manifest), Error> {
        let (mb, sb) = self.head()?;
        let m = decode(&mb)?;
        for i in 0..m.frames.len() {
            self.check_frame(&m.frames, i)?;
        }
        self.end()?;
        Ok((mb, sb, m))
    }
}

/// Turn an I/O error produced by a [`FrameReader`] back into the bundle error it carries.
pub fn unwrap_io(e: io::Error, index: usize) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        // [`FrameReader`] reports truncation as the bundle error itself, with its offset.
        return match e.into_inner().map(|i| i.downcast::<Error>()) {
            Some(Ok(inner)) => *inner,
            _ => Error::Truncated { offset: 0, what: format!("data of frame {index}") },
        };
    }
    Error::Io(e)
}

/// Reads exactly one frame's bytes, hashing them.
pub struct FrameReader<'a, R> {
    reader: &'a mut Reader<R>,
    left: u64,
    size: u64,
    index: usize,
    expect: Hash,
    hasher: blake3::Hasher,
    /// The frame ends a payload member of this size: its padding follows.
    pad: Option<u64>,
}

impl<R: Read> Read for FrameReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(1 << 20) as usize);
        let n = self.reader.inner.read(&mut buf[..want])?;
        if n == 0 {
            let e = Error::Truncated { offset: self.reader.offset, what: format!("data of frame {}", self.index) };
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, e));
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        self.reader.offset += n as u64;
        Ok(n)
    }
}

impl<R: Read> FrameReader<'_, R> {
    /// Consume what is left, check the hash and the padding.
    pub fn finish(mut self) -> Result<(), Error> {
        let index = self.index;
        io::copy(&mut self, &mut io::sink()).map_err(|e| unwrap_io(e, index))?;
        if Hash::from(self.hasher.finalize()) != self.expect {
            let offset = self.reader.offset - self.size;
            return Err(Error::FrameHash { index: index as u32, offset, size: self.size });
        }
        match self.pad {
            Some(member) => self.reader.padding(member),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_valid_ustar() {
        let h = header(MANIFEST_NAME, 1234);
        assert_eq!(&h[257..263], b"ustar\0");
        let sum: u32 = h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u32 }).sum();
        let field = std::str::from_utf8(&h[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(field, 8).unwrap(), sum);
    }

    #[test]
    fn packing_is_greedy_and_layout_tiles_the_payload() {
        assert_eq!(packs([]), vec![]);
        let p = packs([10, PACK_BYTES - 10, 1, PACK_BYTES + 5, 3]);
        assert_eq!(
            p,
            vec![
                Pack { first: 0, end: 2, size: PACK_BYTES },
                Pack { first: 2, end: 3, size: 1 },
                Pack { first: 3, end: 4, size: PACK_BYTES + 5 },
                Pack { first: 4, end: 5, size: 3 },
            ]
        );
        let frames: Vec<crate::Frame> =
            [700u64, 5, 1030].iter().map(|&size| crate::Frame { size, hash: Hash::of(&[]), decoded: 1 }).collect();
        let l = layout(3, 100, &frames);
        let payload = 512 + 512 + 512 + 512;
        assert_eq!(
            l[0],
            Span { start: payload, data: payload + 512, size: 700, end: payload + 1212, member: Some((0, 1735)) }
        );
        assert_eq!(l[1].start, l[0].end);
        assert_eq!((l[1].data, l[1].end, l[1].member), (payload + 1212, payload + 1217, None));
        assert_eq!((l[2].start, l[2].end), (payload + 1217, payload + 512 + 2048));
    }

    #[test]
    fn payload_roundtrip() {
        let data: Vec<Vec<u8>> = vec![b"one".to_vec(), vec![7u8; 600], b"x".to_vec()];
        let frames: Vec<crate::Frame> =
            data.iter().map(|d| crate::Frame { size: d.len() as u64, hash: Hash::of(d), decoded: 0 }).collect();
        let mut v = Vec::new();
        let sizes: Vec<u64> = frames.iter().map(|f| f.size).collect();
        write_payload(&mut v, &sizes, |w, i| w.write_all(&data[i])).unwrap();
        finish(&mut v).unwrap();
        assert_eq!(v.len(), 512 + 1024 + 1024);
        let mut r = Reader::new(&v[..], Limits::default());
        for (i, want) in data.iter().enumerate() {
            let mut fr = r.frame(&frames, i).unwrap();
            let mut got = Vec::new();
            fr.read_to_end(&mut got).unwrap();
            assert_eq!(&got, want);
            fr.finish().unwrap();
        }
        r.end().unwrap();
        // A wrong frame size in the manifest is a framing error at the member header.
        let mut bad = frames.clone();
        bad[1].size += 1;
        let mut r = Reader::new(&v[..], Limits::default());
        assert!(matches!(r.frame(&bad, 0), Err(Error::Framing { .. })));
    }

    #[test]
    fn roundtrip_and_trailing() {
        let mut v = Vec::new();
        write_member(&mut v, MANIFEST_NAME, b"abc").unwrap();
        finish(&mut v).unwrap();
        let mut r = Reader::new(&v[..], Limits::default());
        assert_eq!(r.member(MANIFEST_NAME, 10).unwrap(), b"abc");
        r.end().unwrap();
        v.push(0);
        let mut r = Reader::new(&v[..], Limits::default());
        r.member(MANIFEST_NAME, 10).unwrap();
        assert!(matches!(r.end(), Err(Error::TrailingData { .. })));
    }
}
