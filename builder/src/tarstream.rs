//! The members of a tar stream, read with their extension headers applied: pax `x` (this
//! member) and `g` (all following members) records, GNU `L`/`K` long names and links, and the
//! sparse map of an old GNU `S` member.
//!
//! Why not the `tar` crate's `Entries`: it cuts pax data into records by line (see [`crate::pax`]),
//! so multi-line ACL text and binary attribute values failed or vanished — and the crate took the
//! member's `size`, `uid` and `gid` from that same lossy parse, so a record it skipped could make
//! it read a different data length than another reader. Its raw mode cannot stand in either: it
//! positions the next header by the header's size, which is wrong for an `S` member with
//! extension sparse blocks. So the stream is walked here, 512-byte block by block, and the crate
//! only decodes header fields (`tar::Header`, `GnuHeader`, `GnuExtSparseHeader`).
//!
//! One length decides where a member's data ends: a pax `size` record when present, else the
//! header's. A header size that is neither that value, 0 nor the all-sevens placeholder writers
//! use for sizes the field cannot hold is refused, since readers that trust the other field would
//! see a different archive (tar-rs `pax_size_smuggled_symlink`). Data cut short by the end of the
//! stream is an error, not a short file.

use crate::pax::{self, Record};
use bundle::Extent;
use std::io::{self, Read};

const BLOCK: u64 = 512;

/// Largest data of an `x`, `g`, `L` or `K` member held in memory (a hostile archive must not make
/// the builder allocate without bound; attribute values are at most 64 KiB each on Linux).
pub const MAX_EXTENSION: u64 = 16 << 20;

/// Most data extents in an old GNU sparse map (the builder's policy keeps far fewer anyway).
pub const MAX_GNU_EXTENTS: usize = 1 << 21;

/// The largest value of an 11-digit octal size field, which writers put there when the real
/// size (then a pax `size` record) does not fit.
const OCTAL_SIZE_MAX: u64 = 0o777_7777_7777;

/// Why a member could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Reading the stream failed.
    Io(io::Error),
    /// The archive is malformed at the member (or extension header) `name`.
    Bad { name: Vec<u8>, what: String },
}

/// One member, as its extension headers describe it.
pub struct Member {
    /// The member's own header (type, mode, uid/gid before pax, devices, mtime before pax).
    pub header: tar::Header,
    /// pax `path`, else the GNU long name, else the header's name (with the ustar prefix).
    pub name: Vec<u8>,
    /// pax `linkpath`, else the GNU long link, else the header's link name.
    pub link: Option<Vec<u8>>,
    /// The pax records in force: the global ones, then the member's own (the last for a key wins).
    pub records: Vec<Record>,
    /// Bytes of data the member has in the archive.
    pub size: u64,
    /// An old GNU sparse member (`S`): its real size and its data extents in map order, unchecked
    /// (the data are the extents' bytes back to back).
    pub gnu_sparse: Option<(u64, Vec<Extent>)>,
}

/// A tar stream read member by member. After [`Members::next_member`], [`Members::data`] reads
/// that member's data; whatever is left unread is skipped by the next call.
pub struct Members<R> {
    r: R,
    /// Bytes consumed from `r`, for error messages.
    pos: u64,
    /// Data of the current member not yet read, then its padding to a block.
    left: u64,
    pad: u64,
    global: Vec<Record>,
    ended: bool,
}

/// Extension headers read for the member that follows them.
#[derive(Default)]
struct Pending {
    /// pax `x` records.
    local: Option<Vec<Record>>,
    /// GNU `L` long name.
    long_name: Option<Vec<u8>>,
    /// GNU `K` long link name.
    long_link: Option<Vec<u8>>,
}

fn pad_of(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

impl<R: Read> Members<R> {
    pub fn new(r: R) -> Members<R> {
        Members { r, pos: 0, left: 0, pad: 0, global: Vec::new(), ended: false }
    }

    /// The data of the member last returned by [`Members::next_member`].
    pub fn data(&mut self) -> Data<'_, R> {
        Data { m: self }
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let got = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        self.pos += got;
        if got != n {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive ends inside a member's data"));
        }
        Ok(())
    }

    /// The next 512-byte block, or `None` at the end of the stream.
    fn block(&mut self) -> io::Result<Option<[u8; BLOCK as usize]>> {
        let mut b = [0u8; BLOCK as usize];
        let mut n = 0;
        while n < b.len() {
            match self.r.read(&mut b[n..]) {
                Ok(0) if n == 0 => return Ok(None),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive ends inside a header")),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += BLOCK;
        Ok(Some(b))
    }

    /// The whole data of an extension member of `size` bytes, and its padding skipped.
    fn extension(&mut self, size: u64, bad: &dyn Fn(String) -> ReadError) -> Result<Vec<u8>, ReadError> {
        if size > MAX_EXTENSION {
            return Err(bad(format!("extension header of {size} bytes (at most {MAX_EXTENSION})")));
        }
        let mut v = Vec::new();
        (&mut self.r).take(size).read_to_end(&mut v).map_err(ReadError::Io)?;
        self.pos += v.len() as u64;
        if v.len() as u64 != size {
            return Err(bad("archive ends inside an extension header".into()));
        }
        self.skip(pad_of(size)).map_err(ReadError::Io)?;
        Ok(v)
    }

    /// The next member, its extension headers applied; `None` at the end of the archive (a zero
    /// block or the end of the stream). Extension headers not followed by a member are refused.
    ///
    /// Whatever is left of the previous member's data is skipped; then headers are read until a
    /// member's own: pax `x` and GNU `L`/`K` headers are held for it ([`Pending`]), pax `g`
    /// records go to the global ones, and the member's header is combined with them
    /// ([`Members::member`]).
    pub fn next_member(&mut self) -> Result<Option<Member>, ReadError> {
        if self.ended {
            return Ok(None);
        }
        let (left, pad) = (self.left, self.pad);
        self.left = 0;
        self.pad = 0;
        self.skip(left + pad).map_err(ReadError::Io)?;
        let mut pending = Pending::default();
        loop {
            let Some((header, hname)) = self.header(&pending)? else {
                return Ok(None);
            };
            let bad = |what: String| ReadError::Bad { name: hname.clone(), what };
            let hsize = header.entry_size().map_err(|_| bad("invalid size".into()))?;
            match header.entry_type().as_byte() {
                b'x' => {
                    if pending.local.is_some() {
                        return Err(bad("two pax headers for one member".into()));
                    }
                    let data = self.extension(hsize, &bad)?;
                    pending.local = Some(pax::records(&data).map_err(bad)?);
                }
                b'g' => self.global_records(hsize, &bad)?,
                ty @ (b'L' | b'K') => {
                    let slot = if ty == b'L' { &mut pending.long_name } else { &mut pending.long_link };
                    if slot.is_some() {
                        return Err(bad("two GNU long names for one member".into()));
                    }
                    let mut data = self.extension(hsize, &bad)?;
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    data.truncate(end);
                    *slot = Some(data);
                }
                _ => return self.member(header, hname, hsize, pending).map(Some),
            }
        }
    }

    /// The next header block, checksum checked, and the name its own field holds; `None` at the
    /// end of the archive (a zero block or the end of the stream), which `pending` extension
    /// headers must not reach.
    fn header(&mut self, pending: &Pending) -> Result<Option<(tar::Header, Vec<u8>)>, ReadError> {
        let at = self.pos;
        let bytes = self.block().map_err(ReadError::Io)?;
        let Some(bytes) = bytes.filter(|b| b.iter().any(|&x| x != 0)) else {
            self.ended = true;
            if pending.local.is_some() || pending.long_name.is_some() || pending.long_link.is_some() {
                let what = "extension header not followed by a member".to_string();
                return Err(ReadError::Bad { name: format!("end of archive at byte {at}").into_bytes(), what });
            }
            return Ok(None);
        };
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(&bytes);
        let hname = header.path_bytes().into_owned();
        let sum: u64 = bytes[..148].iter().chain(&bytes[156..]).map(|&b| u64::from(b)).sum::<u64>() + 8 * 32;
        if header.cksum().ok().map(u64::from) != Some(sum) {
            return Err(ReadError::Bad { name: hname, what: format!("header checksum mismatch at byte {at}") });
        }
        Ok(Some((header, hname)))
    }

    /// Apply the records of a pax global header (`g`) of `size` bytes to the following members.
    fn global_records(&mut self, size: u64, bad: &dyn Fn(String) -> ReadError) -> Result<(), ReadError> {
        let data = self.extension(size, bad)?;
        for (k, v) in pax::records(&data).map_err(bad)? {
            if matches!(&k[..], b"path" | b"linkpath" | b"size") || k.starts_with(b"GNU.sparse.") {
                let k = String::from_utf8_lossy(&k);
                return Err(bad(format!("pax global header sets {k}, which can only describe one member")));
            }
            // A later global record replaces an earlier one; an empty value unsets it.
            self.global.retain(|(g, _)| *g != k);
            if !v.is_empty() {
                self.global.push((k, v));
            }
        }
        Ok(())
    }

    /// The member whose own header is `header` (named `hname` there, its size field `hsize`),
    /// with the `pending` extension headers and the global records applied; its data is next.
    fn member(
        &mut self,
        header: tar::Header,
        hname: Vec<u8>,
        hsize: u64,
        pending: Pending,
    ) -> Result<Member, ReadError> {
        let mut records = self.global.clone();
        records.extend(pending.local.unwrap_or_default());
        let nonempty = |k: &[u8]| pax::last(&records, k).filter(|v| !v.is_empty()).map(<[u8]>::to_vec);
        let name = nonempty(b"path").or(pending.long_name).unwrap_or(hname);
        let link =
            nonempty(b"linkpath").or(pending.long_link).or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let bad = |what: String| ReadError::Bad { name: name.clone(), what };
        let size = match nonempty(b"size") {
            None => hsize,
            Some(v) => {
                let n = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| bad("invalid pax size".into()))?;
                if hsize != n && hsize != 0 && hsize != OCTAL_SIZE_MAX {
                    return Err(bad(format!("pax size {n} disagrees with the header's size {hsize}")));
                }
                n
            }
        };
        let gnu_sparse = if header.entry_type().is_gnu_sparse() { Some(self.gnu_map(&header, &bad)?) } else { None };
        self.left = size;
        self.pad = pad_of(size);
        Ok(Member { header, name, link, records, size, gnu_sparse })
    }

    /// The real size and map of an old GNU sparse member: four entries in its header, then
    /// 21 in each extension block that follows while the previous one says "extended".
    fn gnu_map(
        &mut self,
        header: &tar::Header,
        bad: &dyn Fn(String) -> ReadError,
    ) -> Result<(u64, Vec<Extent>), ReadError> {
        let gnu = header.as_gnu().ok_or_else(|| bad("sparse member without a GNU header".into()))?;
        let real = gnu.real_size().map_err(|_| bad("invalid real size of a sparse member".into()))?;
        let mut extents = Vec::new();
        let mut add = |entries: &[tar::GnuSparseHeader]| -> Result<(), ReadError> {
            for e in entries.iter().filter(|e| !e.is_empty()) {
                let offset = e.offset().map_err(|_| bad("invalid offset in the sparse map".into()))?;
                let len = e.length().map_err(|_| bad("invalid length in the sparse map".into()))?;
                extents.push(Extent { offset, len });
            }
            if extents.len() > MAX_GNU_EXTENTS {
                return Err(bad("sparse map too long".into()));
            }
            Ok(())
        };
        add(&gnu.sparse)?;
        let mut more = gnu.is_extended();
        while more {
            let b =
                self.block().map_err(ReadError::Io)?.ok_or_else(|| bad("archive ends inside a sparse map".into()))?;
            let mut ext = tar::GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(&b);
            add(ext.sparse())?;
            more = ext.is_extended();
        }
        Ok((real, extents))
    }
}

/// The data of the current member; ends after its size, and fails if the stream ends first.
pub struct Data<'a, R> {
    m: &'a mut Members<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.m.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.m.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive ends inside a member's data"));
        }
        self.m.left -= n as u64;
        self.m.pos += n as u64;
        Ok(n)
    }
}
