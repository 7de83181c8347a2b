//! A bounded pre-pass over the manifest's CBOR (bundle-format.md §4.6, §8): it walks the document
//! item by item, allocating nothing, and refuses it before `ciborium` deserialises a single value
//! if a count or a size is over [`Limits`].
//!
//! Why a pre-pass: serde collects a CBOR array into a `Vec` element by element, so the counts
//! [`crate::Manifest::check`] compares with the limits are known only after the whole document has
//! been built in memory. A 27 KB manifest member signed by any key (trusted or not: `inspect` and
//! an untrusted `fetch` decode it too) that decompressed to 267 MB of CBOR holding 15.7 million
//! one-byte-path steps made `ferry-apply inspect` peak at 1.5 GB before a count was looked at.
//! Here the array header that declares the steps is refused as soon as it is read; fed from the
//! zstd decoder ([`crate::manifest::unpack`]), the scan stops decompressing there too.
//!
//! What is bounded, each by a field of [`Limits`]: decoded bytes (`max_manifest_decoded`), CBOR
//! data items (`max_manifest_items`), nesting (`max_manifest_depth`), the length of every text or
//! byte string (`max_manifest_string`), and the length of each
//! counted array, named by its map key: `entries`, `old`, `frames`, `script`, `hooks`,
//! `Pieces` (all pieces of all files together), `extents` (per sparse file and all together), a
//! rotation's `add` and `retire`, `xattr_namespaces` (bounded like the attributes of one set) and
//! `xattr_sets`. Tags and
//! indefinite-length items are refused: the canonical encoding (§4) never has them.

use crate::{Error, Hash, Limits};
use std::io::{self, Read};

/// The map key whose value an array is: the arrays of the manifest that have a bound of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Entries,
    Old,
    Frames,
    Script,
    Hooks,
    Pieces,
    Extents,
    Add,
    Retire,
    XattrNamespaces,
    XattrSets,
    /// `sealed.recipients` (§4.10).
    Recipients,
    /// `sealed` itself: noted when its value is a map (an encrypted bundle's outer manifest).
    Sealed,
    /// `sealed.manifest`: the encrypted inner manifest member, a byte string bounded by
    /// `max_manifest_bytes` + 16 instead of `max_manifest_string`.
    SealedManifest,
    Other,
}

impl Field {
    /// The longest key name of a counted field (`xattr_namespaces`).
    const LONGEST: usize = 16;

    fn from_key(key: &[u8]) -> Field {
        match key {
            b"entries" => Field::Entries,
            b"old" => Field::Old,
            b"frames" => Field::Frames,
            b"script" => Field::Script,
            b"hooks" => Field::Hooks,
            b"Pieces" => Field::Pieces,
            b"extents" => Field::Extents,
            b"add" => Field::Add,
            b"retire" => Field::Retire,
            b"xattr_namespaces" => Field::XattrNamespaces,
            b"xattr_sets" => Field::XattrSets,
            b"recipients" => Field::Recipients,
            b"sealed" => Field::Sealed,
            b"manifest" => Field::SealedManifest,
            _ => Field::Other,
        }
    }

    /// The bound on an array that is this field's value, and what [`Error::TooMany`] calls its
    /// elements (the same words as [`crate::Manifest::check`]).
    fn bound(self, l: &Limits) -> Option<(usize, &'static str)> {
        match self {
            Field::Entries => Some((l.max_entries, "entries")),
            Field::Old => Some((l.max_entries, "old entries")),
            Field::Script => Some((l.max_entries, "script steps")),
            Field::Frames => Some((l.max_frames, "frames")),
            Field::Hooks => Some((l.max_hooks, "hooks")),
            // Counted over the whole manifest ([`Scan::array_len`]).
            Field::Pieces => None,
            // Per file here, and over the whole manifest in [`Scan::array_len`].
            Field::Extents => Some((l.max_extents_per_file, "extents in one file")),
            Field::Add => Some((l.max_rotation_keys, "keys added by the rotation")),
            Field::Retire => Some((l.max_rotation_keys, "keys retired by the rotation")),
            Field::XattrNamespaces => Some((l.max_xattrs_per_set, "xattr namespaces")),
            Field::XattrSets => Some((l.max_xattr_sets, "xattr sets")),
            Field::Recipients => Some((l.max_recipients, "recipients")),
            Field::SealedManifest | Field::Sealed | Field::Other => None,
        }
    }
}

/// Check `cbor`, a whole manifest document, against `limits` without decoding it.
pub fn scan(cbor: &[u8], limits: &Limits) -> Result<(), Error> {
    Scan::new(cbor, Some(cbor.len() as u64), limits, Sink::None)?.run().map(|_| ())
}

/// Read one CBOR document from `src` (the manifest member's zstd decoder), checking it against
/// `limits` as it is read, and return its bytes. `src` must end with the document; `size` is its
/// length if known (a zstd frame header may declare it). Reads at most
/// `limits.max_manifest_decoded` bytes, plus one to see that nothing follows.
pub fn read_scanned(src: impl Read, size: Option<u64>, limits: &Limits) -> Result<Vec<u8>, Error> {
    match Scan::new(src, size, limits, Sink::Keep(Vec::new()))?.run()? {
        Sink::Keep(v) => Ok(v),
        _ => Ok(Vec::new()),
    }
}

/// Whether the document read from `src` (as [`read_scanned`], keeping nothing) is an encrypted
/// bundle's outer manifest: its top-level `sealed` is a map, not null (§4.10). Cheap: no value
/// is built.
pub fn is_sealed(src: impl Read, size: Option<u64>, limits: &Limits) -> Result<bool, Error> {
    let mut s = Scan::new(src, size, limits, Sink::None)?;
    s.item(1, Field::Other)?;
    Ok(s.sealed)
}

/// [`read_scanned`], keeping only the BLAKE3 of the document instead of its bytes.
pub fn scan_digest(src: impl Read, size: Option<u64>, limits: &Limits) -> Result<Hash, Error> {
    match Scan::new(src, size, limits, Sink::Hash(Box::default()))?.run()? {
        Sink::Hash(h) => Ok(Hash::from(h.finalize())),
        _ => Ok(Hash::default()),
    }
}

/// What becomes of the bytes read.
enum Sink {
    None,
    Keep(Vec<u8>),
    Hash(Box<blake3::Hasher>),
}

struct Scan<'l, R> {
    src: R,
    /// The document's length: declared, or else the most that will be read.
    size: u64,
    limits: &'l Limits,
    sink: Sink,
    read: u64,
    items: u64,
    pieces: u64,
    extents: u64,
    /// The top-level `sealed` field is a map.
    sealed: bool,
}

impl<'l, R: Read> Scan<'l, R> {
    fn new(src: R, size: Option<u64>, limits: &'l Limits, sink: Sink) -> Result<Self, Error> {
        let max = limits.max_manifest_decoded;
        if let Some(size) = size.filter(|&s| s > max) {
            return Err(Error::TooLarge { what: "decoded manifest".into(), size, limit: max });
        }
        Ok(Scan {
            src,
            size: size.unwrap_or(max),
            limits,
            sink,
            read: 0,
            items: 0,
            pieces: 0,
            extents: 0,
            sealed: false,
        })
    }

    /// Refuse a length that the rest of the document cannot hold (every element and every
    /// string byte takes at least a byte): it is a lie, so the document is malformed, whatever
    /// the limits.
    fn plausible(&self, at: u64, what: &str, n: u64) -> Result<(), Error> {
        let left = self.size.saturating_sub(self.read);
        if n > left {
            return Err(Error::Manifest(format!(
                "CBOR item at byte {at} claims {n} {what}, more than the {left} bytes left can hold"
            )));
        }
        Ok(())
    }

    fn run(mut self) -> Result<Sink, Error> {
        self.item(1, Field::Other)?;
        let mut one = [0u8; 1];
        loop {
            match self.src.read(&mut one) {
                Ok(0) => return Ok(self.sink),
                Ok(_) => return Err(Error::Manifest(format!("data after the CBOR document at byte {}", self.read))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e)),
            }
        }
    }

    /// Read `buf.len()` bytes of the document.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        let end = self.read + buf.len() as u64;
        if end > self.limits.max_manifest_decoded {
            return Err(Error::TooLarge {
                what: "decoded manifest".into(),
                size: end,
                limit: self.limits.max_manifest_decoded,
            });
        }
        self.src.read_exact(buf).map_err(read_error)?;
        match &mut self.sink {
            Sink::None => {}
            Sink::Keep(v) => v.extend_from_slice(buf),
            Sink::Hash(h) => {
                h.update(buf);
            }
        }
        self.read = end;
        Ok(())
    }

    /// Read past `n` bytes of string content (`n` is at most the string bound).
    fn skip(&mut self, mut n: u64) -> Result<(), Error> {
        let mut buf = [0u8; 4096];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.fill(&mut buf[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// An item's initial byte and argument (RFC 8949 §3): major type, and the value, length or
    /// count that follows it.
    fn head(&mut self) -> Result<(u8, u64), Error> {
        let at = self.read;
        let mut b = [0u8; 1];
        self.fill(&mut b)?;
        let (major, info) = (b[0] >> 5, b[0] & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let mut v = [0u8; 8];
                let n = 1 << (info - 24);
                self.fill(&mut v[8 - n..])?;
                u64::from_be_bytes(v)
            }
            31 if (2..=5).contains(&major) => {
                return Err(Error::Manifest(format!("indefinite-length CBOR item at byte {at} (not canonical)")))
            }
            _ => return Err(Error::Manifest(format!("malformed CBOR item at byte {at}"))),
        };
        Ok((major, arg))
    }

    /// Walk one item at nesting level `depth` (the document is level 1), the value of the map key
    /// `field`. Returns the field a text string names, for the value that follows a key.
    fn item(&mut self, depth: usize, field: Field) -> Result<Field, Error> {
        self.count(1)?;
        if depth > self.limits.max_manifest_depth {
            return Err(Error::TooMany {
                what: "levels of CBOR nesting".into(),
                count: depth as u64,
                limit: self.limits.max_manifest_depth as u64,
            });
        }
        let at = self.read;
        let (major, arg) = self.head()?;
        match major {
            2 | 3 => {
                self.plausible(at, "bytes", arg)?;
                self.string(major, arg, field)
            }
            4 => {
                self.plausible(at, "elements", arg)?;
                self.array_len(field, arg)?;
                for _ in 0..arg {
                    self.item(depth + 1, Field::Other)?;
                }
                Ok(Field::Other)
            }
            5 => {
                self.sealed |= depth == 2 && field == Field::Sealed;
                // A map of n pairs holds 2n items: refuse a count the item budget cannot hold
                // before walking it.
                self.plausible(at, "items", arg.saturating_mul(2))?;
                self.fits(arg.saturating_mul(2))?;
                for _ in 0..arg {
                    let key = self.item(depth + 1, Field::Other)?;
                    self.item(depth + 1, key)?;
                }
                Ok(Field::Other)
            }
            6 => Err(Error::Manifest(format!("CBOR tag at byte {at} (not canonical)"))),
            // Integers, simple values and floats: the head was the whole item.
            _ => Ok(Field::Other),
        }
    }

    /// A text or byte string of `len` bytes.
    fn string(&mut self, major: u8, len: u64, field: Field) -> Result<Field, Error> {
        let limit = match (major, field) {
            (2, Field::SealedManifest) => self.limits.max_manifest_bytes.saturating_add(crate::seal::TAG_LEN as u64),
            _ => self.limits.max_manifest_string as u64,
        };
        if len > limit {
            return Err(Error::TooLarge { what: "string in the manifest".into(), size: len, limit });
        }
        if major == 3 && len as usize <= Field::LONGEST {
            let mut key = [0u8; Field::LONGEST];
            let key = &mut key[..len as usize];
            self.fill(key)?;
            return Ok(Field::from_key(key));
        }
        self.skip(len)?;
        Ok(Field::Other)
    }

    /// Check an array header of `len` elements, the value of `field`.
    fn array_len(&mut self, field: Field, len: u64) -> Result<(), Error> {
        if let Some((limit, what)) = field.bound(self.limits) {
            if len > limit as u64 {
                return Err(Error::TooMany { what: what.into(), count: len, limit: limit as u64 });
            }
        }
        if field == Field::Pieces {
            self.pieces += len;
            if self.pieces > self.limits.max_pieces as u64 {
                return Err(Error::TooMany {
                    what: "pieces".into(),
                    count: self.pieces,
                    limit: self.limits.max_pieces as u64,
                });
            }
        }
        if field == Field::Extents {
            self.extents += len;
            if self.extents > self.limits.max_extents as u64 {
                return Err(Error::TooMany {
                    what: "extents".into(),
                    count: self.extents,
                    limit: self.limits.max_extents as u64,
                });
            }
        }
        self.fits(len)
    }

    /// Count `n` more items.
    fn count(&mut self, n: u64) -> Result<(), Error> {
        self.fits(n)?;
        self.items += n;
        Ok(())
    }

    /// Refuse a container whose `n` items would exceed the item budget.
    fn fits(&self, n: u64) -> Result<(), Error> {
        let limit = self.limits.max_manifest_items;
        if self.items.saturating_add(n) > limit {
            return Err(Error::TooMany { what: "CBOR data items".into(), count: self.items.saturating_add(n), limit });
        }
        Ok(())
    }
}

/// A read error of the manifest document: the end of the input inside an item, or the zstd
/// decoder's error.
fn read_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return Error::Manifest("CBOR document ends inside an item".into());
    }
    Error::Manifest(format!("manifest member: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Base, BundlePath, Content, Entry, Frame, Hook, Kind, Manifest, Meta, Method, OldEntry, OldKind, Op, Piece,
        Rotation, Step,
    };

    fn p(s: &str) -> BundlePath {
        BundlePath::new(s.as_bytes().to_vec()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A manifest with one of every counted array, and the deepest item a manifest has (the base
    /// length of a delta piece, level 11).
    fn rich() -> Manifest {
        let patch = Method::Patch { base: p("a"), offset: 0, len: 1 };
        Manifest {
            format: crate::FORMAT_VERSION,
            version: 2,
            base: Some(Base { version: Some(1), tree: Hash([0; 32]) }),
            channel: "stable".into(),
            created: 0,
            expires: None,
            entries: vec![Entry {
                path: p("a"),
                meta: Meta::default(),
                kind: Kind::File {
                    size: 10,
                    hash: Some(Hash([2; 32])),
                    content: Content::Pieces(vec![Piece { frame: 0, offset: 0, len: 1, method: patch }]),
                    config: false,
                    extents: Some(vec![crate::Extent { offset: 4, len: 1 }]),
                    gzip: None,
                },
            }],
            old: vec![OldEntry {
                path: p("a"),
                meta: Meta::default(),
                kind: OldKind::Tagged { size: 1, tag: crate::Tag([3; 8]) },
            }],
            frames: vec![Frame { size: 1, hash: Hash([4; 32]), decoded: 1 }],
            script: vec![Step { op: Op::Place, path: p("a") }],
            hooks: vec![Hook { glob: "a".into(), command: "true".into(), timeout_secs: 1 }],
            rotation: Some(Rotation {
                add: vec![Hash([5; 32])],
                retire: vec!["0123456789abcdef".into()],
                threshold: None,
            }),
            xattr_namespaces: vec!["user".into()],
            xattr_sets: vec![vec![crate::Xattr { name: b"user.a".to_vec(), value: Vec::new() }]],
            tagged_digest: Some(Hash([6; 32])),
            sealed: None,
        }
    }

    fn refused(cbor: &[u8], limits: &Limits, needle: &str) {
        match scan(cbor, limits) {
            Ok(()) => panic!("accepted, expected {needle:?}"),
            Err(e) => assert!(e.to_string().contains(needle), "{e} does not contain {needle:?}"),
        }
    }

    #[test]
    fn a_valid_manifest_passes_and_its_bytes_come_back() {
        let cbor = rich().to_cbor();
        scan(&cbor, &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_scanned(&cbor[..], None, &Limits::default()).ok(), Some(cbor.clone()));
        assert_eq!(scan_digest(&cbor[..], None, &Limits::default()).ok(), Some(Hash::of(&cbor)));
    }

    /// Every counted array, one element over its limit.
    #[test]
    fn counts_over_their_limits() {
        let one = Limits {
            max_entries: 1,
            max_frames: 1,
            max_pieces: 1,
            max_extents_per_file: 1,
            max_extents: 1,
            max_hooks: 1,
            max_rotation_keys: 1,
            max_xattr_sets: 1,
            max_xattrs_per_set: 1,
            ..Limits::default()
        };
        type Edit = fn(&mut Manifest);
        let cases: [(Edit, &str); 11] = [
            (|m| m.xattr_namespaces.push("security".into()), "manifest has 2 xattr namespaces, over the limit of 1"),
            (|m| m.xattr_sets.push(vec![]), "manifest has 2 xattr sets, over the limit of 1"),
            (|m| m.entries.push(m.entries[0].clone()), "manifest has 2 entries, over the limit of 1"),
            (|m| m.old.push(m.old[0].clone()), "manifest has 2 old entries, over the limit of 1"),
            (|m| m.script.push(m.script[0].clone()), "manifest has 2 script steps, over the limit of 1"),
            (|m| m.frames.push(m.frames[0].clone()), "manifest has 2 frames, over the limit of 1"),
            (|m| m.hooks.push(m.hooks[0].clone()), "manifest has 2 hooks, over the limit of 1"),
            (
                |m| {
                    if let Kind::File { content: Content::Pieces(ps), .. } = &mut m.entries[0].kind {
                        ps.push(ps[0].clone());
                    }
                },
                "manifest has 2 pieces, over the limit of 1",
            ),
            (
                |m| {
                    if let Kind::File { extents: Some(x), .. } = &mut m.entries[0].kind {
                        x.push(crate::Extent { offset: 8, len: 1 });
                    }
                },
                "manifest has 2 extents in one file, over the limit of 1",
            ),
            (
                |m| m.rotation.iter_mut().for_each(|r| r.add.push(Hash([8; 32]))),
                "manifest has 2 keys added by the rotation, over the limit of 1",
            ),
            (
                |m| m.rotation.iter_mut().for_each(|r| r.retire.push("fedcba9876543210".into())),
                "manifest has 2 keys retired by the rotation, over the limit of 1",
            ),
        ];
        scan(&rich().to_cbor(), &one).unwrap_or_else(|e| panic!("{e}"));
        for (edit, needle) in cases {
            let mut m = rich();
            edit(&mut m);
            refused(&m.to_cbor(), &one, needle);
        }
        // Pieces are counted over all files together.
        let mut m = rich();
        let mut e = m.entries[0].clone();
        e.path = p("b");
        m.entries.push(e);
        refused(&m.to_cbor(), &Limits { max_pieces: 1, ..Limits::default() }, "manifest has 2 pieces");
        // So are extents.
        refused(&m.to_cbor(), &Limits { max_extents: 1, ..Limits::default() }, "manifest has 2 extents, over");
    }

    #[test]
    fn sizes_depth_and_items() {
        let cbor = rich().to_cbor();
        let deep = Limits { max_manifest_depth: 10, ..Limits::default() };
        refused(&cbor, &deep, "manifest has 11 levels of CBOR nesting, over the limit of 10");
        scan(&cbor, &Limits { max_manifest_depth: 11, ..Limits::default() }).unwrap_or_else(|e| panic!("{e}"));

        let items = Limits { max_manifest_items: 50, ..Limits::default() };
        refused(&cbor, &items, "CBOR data items, over the limit of 50");

        let small = Limits { max_manifest_decoded: cbor.len() as u64 - 1, ..Limits::default() };
        refused(&cbor, &small, "decoded manifest is");
        scan(&cbor, &Limits { max_manifest_decoded: cbor.len() as u64, ..Limits::default() })
            .unwrap_or_else(|e| panic!("{e}"));

        let mut m = rich();
        m.hooks[0].command = "x".repeat(65_537);
        refused(&m.to_cbor(), &Limits::default(), "string in the manifest is 65537 bytes, over the limit of 65536");
    }

    #[test]
    fn malformed_and_non_canonical_cbor() {
        let l = Limits::default();
        let cbor = rich().to_cbor();
        let mut trailing = cbor.clone();
        trailing.push(0);
        refused(&trailing, &l, "data after the CBOR document");
        refused(&cbor[..cbor.len() - 1], &l, "ends inside an item");
        refused(&[0x9f, 0xff], &l, "indefinite-length");
        refused(&[0xc0, 0x00], &l, "CBOR tag");
        refused(&[0x1c], &l, "malformed CBOR item");
        refused(&[0xff], &l, "malformed CBOR item");
        // A length the rest of the document cannot hold is a lie, refused at its header.
        let huge = [0xff; 8];
        for (head, what) in [(0x9b, "elements"), (0xbb, "items"), (0x5b, "bytes"), (0x7b, "bytes")] {
            let cbor = [&[head][..], &huge].concat();
            refused(&cbor, &l, &format!("claims 18446744073709551615 {what}, more than the 0 bytes left"));
        }
        // A length the document can hold, but over the item budget.
        let mut cbor = vec![0x9a, 0, 0, 0x10, 0];
        cbor.resize(5 + 4096, 0);
        refused(&cbor, &Limits { max_manifest_items: 4096, ..l.clone() }, "CBOR data items, over the limit");
        // Streaming, with no declared size, the bound is what may be decoded.
        let small = Limits { max_manifest_decoded: 100, ..l.clone() };
        let got = read_scanned(&[0x9a, 0, 0, 0, 200][..], None, &small);
        assert!(got.is_err_and(|e| e.to_string().contains("more than the 95 bytes left")));
        let got = read_scanned(&[0x80][..], Some(101), &small);
        assert!(got.is_err_and(|e| e.to_string().contains("decoded manifest is 101 bytes, over the limit of 100")));
    }
}
