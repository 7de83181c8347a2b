//! The manifest: everything the applier needs to know, signed as one CBOR document.
//!
//! Encoding: CBOR (RFC 8949) as produced by `ciborium` from these serde types — structs are maps
//! with text keys in declaration order, enums are externally tagged, byte strings for paths,
//! digests and keys. Unknown fields are refused. See bundle-format.md, "The manifest".

use crate::{BundlePath, Error, Extent, Hash, Limits, Tag, FORMAT_VERSION};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The signed description of one update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Must equal [`FORMAT_VERSION`].
    pub format: u32,
    /// The version the target is at after applying; strictly increasing per channel.
    pub version: u64,
    /// The OLD tree this bundle was built against; `None` for a full bundle (from empty).
    pub base: Option<Base>,
    /// Release channel, e.g. `stable`. A target pinned to another channel refuses the bundle.
    pub channel: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Optional expiry, seconds since the Unix epoch.
    pub expires: Option<u64>,
    /// The entries of NEW the bundle needs, sorted by path bytes, unique: every path with a
    /// Mkdir, Place, SetMeta or DirMeta step or listed in `old` (if in NEW), closed under
    /// hardlink groups, `NAME.ferry-new` beside config files, and ancestors
    /// ([`Manifest::required_entries`]). A path of NEW that is not listed is identical in OLD
    /// and NEW and untouched. A full bundle creates every path, so it lists the whole NEW tree.
    pub entries: Vec<Entry>,
    /// Expected OLD state of every path the bundle replaces, deletes, changes metadata of, or
    /// reads as a delta base or copy source; sorted, unique.
    pub old: Vec<OldEntry>,
    /// [`tagged_digest`] of the [`OldKind::Tagged`] entries of `old` (bundle-format.md §4.3);
    /// `None` exactly when there is none.
    pub tagged_digest: Option<Hash>,
    /// Payload frames, in tar order.
    pub frames: Vec<Frame>,
    /// The ordered apply script.
    pub script: Vec<Step>,
    /// Post-commit hooks.
    pub hooks: Vec<Hook>,
    /// Optional change of the target's trust: keys to add and to retire.
    pub rotation: Option<Rotation>,
    /// Extended-attribute name prefixes the bundle carries (bundle-format.md §4.9): a namespace
    /// (`security`, `system`, `trusted`, `user`) or an attribute name (`security.selinux`);
    /// sorted, unique, none covering another. An attribute a prefix covers is part of every
    /// entry's metadata: set from the entry's set, removed when the set lacks it.
    pub xattr_namespaces: Vec<String>,
    /// Distinct attribute sets, referenced by [`Meta::xattrs`] of entries and old entries; each
    /// referenced at least once, in order of first reference (entries, then old entries).
    pub xattr_sets: Vec<crate::XattrSet>,
    /// Set only in an encrypted bundle's public outer manifest (bundle-format.md §4.10): the
    /// inner manifest, encrypted, and its key wrapped for each recipient. The outer manifest then
    /// has no entries, old entries, tagged digest, steps, hooks, rotation or attributes ([`crate::seal`]).
    pub sealed: Option<crate::seal::Sealed>,
}

/// A 32-byte ed25519 public key.
pub type PublicKey = Hash;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// The version the target must be at, if the OLD tree had one.
    pub version: Option<u64>,
    /// [`tree_digest`] of the whole OLD tree.
    pub tree: Hash,
}

/// Ownership, permissions and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (at most 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// The inode's extended attributes in the carried namespaces: an index into
    /// [`Manifest::xattr_sets`], or `None` for none.
    pub xattrs: Option<u32>,
}

impl Meta {
    /// Whether changing an object's metadata from `self` to `new` raises its permissions: it
    /// adds a set-user-ID or set-group-ID bit, or (with `owners`, when owners are applied) changes
    /// the owner or group. The applier never makes such a change to a live inode, which a hard
    /// link planted by a local user could share (bundle-format.md §10.3); the builder places a
    /// hard-link group with such a change anew instead of changing it in place.
    /// A new or changed file capability (`security.capability`, looked up in `sets`) raises
    /// permissions too.
    pub fn raises_permissions(&self, new: &Meta, owners: bool, sets: &[crate::XattrSet]) -> bool {
        let cap = |m: &Meta| {
            m.xattrs.and_then(|i| sets.get(i as usize)).and_then(|s| crate::xattr::get(s, crate::xattr::CAPABILITY))
        };
        (new.mode & 0o6000 & !self.mode) != 0
            || (owners && (self.uid != new.uid || self.gid != new.gid))
            || (cap(new).is_some() && cap(new) != cap(self))
    }

    /// The attribute set of this metadata in `m`'s table (empty for none or an index out of range,
    /// which [`Manifest::check`] refuses).
    pub fn xattr_set<'a>(&self, m: &'a Manifest) -> &'a [crate::Xattr] {
        self.xattrs.and_then(|i| m.xattr_sets.get(i as usize)).map_or(&[], |s| s.as_slice())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: BundlePath,
    pub meta: Meta,
    pub kind: Kind,
}

/// The type of a NEW entry and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File {
        /// Logical size in bytes (holes included).
        size: u64,
        /// BLAKE3 of the logical content, holes read as zeros ([`crate::sparse::ZeroFillHasher`]).
        /// Absent (not encoded at all) exactly when `content` is [`Content::Unchanged`]: the
        /// digest is then the OLD file's, in its `old` entry or under [`Manifest::tagged_digest`]
        /// ([`Manifest::file_hash`]; bundle-format.md §4.2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash: Option<Hash>,
        content: Content,
        /// Marked as a configuration file: local edits are kept (bundle-format.md, "Config files").
        config: bool,
        /// A sparse file's data extents (bundle-format.md §4.2, "Sparse files"): sorted, neither
        /// overlapping nor adjacent, inside `size`, leaving a hole. The pieces carry only these
        /// bytes, concatenated; the rest of the file is holes. Absent (not encoded at all) for a
        /// dense file, so a dense entry encodes as it did before sparse files existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        extents: Option<Vec<Extent>>,
        /// A gzip file the applier re-creates from its uncompressed data (bundle-format.md §5.3):
        /// the one piece carries the `raw` uncompressed bytes, not the file's. Absent (not encoded
        /// at all) for every other file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gzip: Option<Regzip>,
    },
    Dir,
    Symlink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// Another name of the inode of `primary`, a `File` entry earlier in sorted order.
    Hardlink {
        primary: BundlePath,
    },
    Fifo,
    CharDev {
        rdev: u64,
    },
    BlockDev {
        rdev: u64,
    },
}

/// How the applier re-creates a gzip file from its uncompressed data (bundle-format.md §5.3):
/// the file is `header`, then the raw deflate stream of the data made by [`crate::deflate`] with
/// `flavor` and `level`, then the CRC-32 of the data and its length modulo 2^32 (little-endian,
/// four bytes each). The builder uses it only where this gives the NEW file bit for bit, and the
/// applier checks the file's digest as for any other file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Regzip {
    /// The gzip member's header, verbatim: 10 bytes and the optional fields its flags announce.
    #[serde(with = "serde_bytes")]
    pub header: Vec<u8>,
    /// Whose deflate encoder made the stream.
    pub flavor: crate::deflate::Flavor,
    /// Its compression level, 1 to 9.
    pub level: u8,
    /// Bytes of uncompressed data (what the piece carries).
    pub raw: u64,
}

/// The longest gzip header a [`Regzip`] may hold.
pub const REGZIP_MAX_HEADER: usize = 1024;

impl Regzip {
    /// Why this description cannot be a gzip file of `size` bytes within `limits`, if it cannot.
    pub fn check(&self, size: u64, limits: &Limits) -> Result<(), String> {
        let h = &self.header;
        if h.len() < 10 || h.len() > REGZIP_MAX_HEADER || h[..3] != [0x1f, 0x8b, 8] {
            return Err(format!("gzip header of {} bytes is not a gzip header of 10 to {REGZIP_MAX_HEADER}", h.len()));
        }
        if !(1..=9).contains(&self.level) {
            return Err(format!("gzip level {} is not 1 to 9", self.level));
        }
        if self.raw == 0 || self.raw > limits.max_regzip_raw {
            return Err(format!("gzip data of {} bytes (1 to {} allowed)", self.raw, limits.max_regzip_raw));
        }
        if size < h.len() as u64 + 8 + 2 {
            return Err(format!("gzip file of {size} bytes is shorter than its header and trailer"));
        }
        Ok(())
    }
}

/// Where the bytes of a NEW file come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// The file at the same path in OLD already has this content; nothing is staged, and the
    /// entry has no `hash`.
    Unchanged,
    /// Empty file.
    Empty,
    /// The OLD file at `from` has exactly this content; it is copied locally.
    Copy { from: BundlePath },
    /// Concatenation of pieces, in file order.
    Pieces(Vec<Piece>),
}

/// A run of file bytes decoded from a frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    /// Index into [`Manifest::frames`].
    pub frame: u32,
    /// Offset of this piece in the frame's decoded output.
    pub offset: u64,
    pub len: u64,
    /// How the frame was encoded; [`Method::Patch`] frames hold exactly one piece.
    pub method: Method,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// Plain zstd (possibly a solid frame shared by several pieces).
    Zstd,
    /// zstd with bytes `[offset, offset+len)` of the OLD file at `base` as reference prefix
    /// (`zstd --patch-from`).
    Patch { base: BundlePath, offset: u64, len: u64 },
    /// The frame is plain zstd and decodes to a bsdiff patch ([`crate::bspatch`]) against bytes
    /// `[offset, offset+len)` of the OLD file at `base`; applying it gives the piece's `len`
    /// bytes. The frame holds this one piece, at offset 0.
    Bsdiff { base: BundlePath, offset: u64, len: u64 },
    /// The frame is one raw LZMA2 stream behind the branch-call-jump filter `filter`, with a
    /// dictionary of 2^`dict_log` bytes (bundle-format.md §5.2, [`crate::lzma`]). Like `Zstd`,
    /// several pieces may share one frame; every piece of the frame names the same method.
    Lzma { filter: crate::lzma::Bcj, dict_log: u8 },
    /// As `Bsdiff`, but the frame is one raw LZMA2 stream without a filter, with a dictionary of
    /// 2^`dict_log` bytes, that decodes to the bsdiff patch (bundle-format.md §5.1, §5.2).
    BsdiffLzma { base: BundlePath, offset: u64, len: u64, dict_log: u8 },
    /// As `BsdiffLzma`, but the patch's three parts are three raw LZMA2 streams one after the
    /// other in the frame (bundle-format.md §5.1): the records' 24-byte headers (`control` bytes,
    /// from the frame's first `control_size` bytes), their copied literals (`copy` bytes, from
    /// the next `copy_size`), then their added differences (the rest of the frame, decoding to
    /// the frame's `decoded` less `control` and `copy`). Each stream has a dictionary of at most
    /// 2^`dict_log` bytes.
    BsdiffSplit {
        base: BundlePath,
        offset: u64,
        len: u64,
        dict_log: u8,
        control: u64,
        control_size: u64,
        copy: u64,
        copy_size: u64,
    },
}

impl Method {
    /// The OLD file this method reads, if any.
    pub fn base(&self) -> Option<&BundlePath> {
        self.delta_base().map(|(base, _, _)| base)
    }

    /// The delta base window this method reads: (OLD path, offset, len), for `Patch`, `Bsdiff`
    /// and `BsdiffLzma`.
    pub fn delta_base(&self) -> Option<(&BundlePath, u64, u64)> {
        match self {
            Method::Zstd | Method::Lzma { .. } => None,
            Method::Patch { base, offset, len }
            | Method::Bsdiff { base, offset, len }
            | Method::BsdiffLzma { base, offset, len, .. }
            | Method::BsdiffSplit { base, offset, len, .. } => Some((base, *offset, *len)),
        }
    }

    /// Whether the frame decodes to a bsdiff patch (`Bsdiff`, `BsdiffLzma`, `BsdiffSplit`): the
    /// piece is the patch's output, not a range of the decoded frame.
    pub fn is_bsdiff(&self) -> bool {
        matches!(self, Method::Bsdiff { .. } | Method::BsdiffLzma { .. } | Method::BsdiffSplit { .. })
    }

    /// The LZMA2 dictionary log of a frame decoded as LZMA2 (`Lzma`, `BsdiffLzma`, `BsdiffSplit`).
    pub fn lzma_dict_log(&self) -> Option<u8> {
        match self {
            Method::Lzma { dict_log, .. }
            | Method::BsdiffLzma { dict_log, .. }
            | Method::BsdiffSplit { dict_log, .. } => Some(*dict_log),
            Method::Zstd | Method::Patch { .. } | Method::Bsdiff { .. } => None,
        }
    }

    /// A `BsdiffSplit` frame's first two streams: (decoded bytes, stored bytes) of the record
    /// headers and of the copied literals.
    pub fn split_parts(&self) -> Option<crate::lzma::SplitParts> {
        match self {
            Method::BsdiffSplit { control, control_size, copy, copy_size, .. } => {
                Some([(*control, *control_size), (*copy, *copy_size)])
            }
            _ => None,
        }
    }
}

/// Expected state of a path in OLD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OldEntry {
    pub path: BundlePath,
    pub meta: Meta,
    pub kind: OldKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OldKind {
    File {
        size: u64,
        hash: Hash,
    },
    Dir,
    Symlink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    Fifo,
    CharDev {
        rdev: u64,
    },
    BlockDev {
        rdev: u64,
    },
    /// A regular file listed by size and the first bytes of its BLAKE3; its whole digest is
    /// committed by [`Manifest::tagged_digest`] (bundle-format.md §4.3). The base check accepts
    /// it through that aggregate only; the tag names the path that drifted.
    Tagged {
        size: u64,
        tag: Tag,
    },
}

/// One payload frame: a tar member holding one zstd frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    /// Compressed size = tar member size.
    pub size: u64,
    /// BLAKE3 of the compressed bytes.
    pub hash: Hash,
    /// Exact decoded size.
    pub decoded: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a directory that does not exist in OLD.
    Mkdir,
    /// Rename the staged NEW entry into place (replacing, or exchanging with an OLD directory).
    Place,
    /// Change mode, owner and mtime of a non-directory whose content and type are unchanged.
    SetMeta,
    /// Move an OLD entry that is not in NEW out of the tree (into the backup area).
    Delete,
    /// Set mode, owner and mtime of a NEW directory (last, after every rename).
    DirMeta,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub op: Op,
    pub path: BundlePath,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Glob over NEW/OLD paths ([`crate::glob`]).
    pub glob: String,
    /// Run with `/bin/sh -c` after the commit if a matching path changed.
    pub command: String,
    pub timeout_secs: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Keys the target trusts from now on.
    pub add: Vec<PublicKey>,
    /// Key ids (hex) the target refuses from now on.
    pub retire: Vec<String>,
    /// New signature threshold, if it changes.
    pub threshold: Option<u32>,
}

impl Manifest {
    /// The manifest member's bytes: one zstd frame (level [`MANIFEST_LEVEL`]) holding the
    /// canonical CBOR encoding ([`Manifest::to_cbor`]). Signatures cover these bytes.
    pub fn encode(&self) -> Vec<u8> {
        pack(&self.to_cbor())
    }

    /// Canonical CBOR encoding.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Serialising plain data into a Vec cannot fail.
        #[allow(clippy::unwrap_used)]
        ciborium::into_writer(self, &mut out).unwrap();
        out
    }

    /// Decode the manifest member (call only after its signatures verified), bounded before
    /// anything is allocated (bundle-format.md §4.6): a first pass decompresses the member
    /// through the CBOR pre-pass ([`crate::scan`]), which refuses it as soon as a count or size is
    /// over `limits`, keeping nothing but a digest of the CBOR; a second pass decompresses it
    /// again straight into `ciborium`. So the CBOR is never held in memory beside the decoded
    /// manifest, and a document that declares too many items is refused at their array's header.
    /// Then the canonical encoding and [`Manifest::check`].
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Manifest, Error> {
        let digest = crate::scan::scan_digest(member_decoder(bytes, limits)?, declared_size(bytes), limits)?;
        let m: Manifest =
            ciborium::from_reader(member_decoder(bytes, limits)?).map_err(|e| Error::Manifest(e.to_string()))?;
        m.finish_decode(digest, limits)
    }

    /// Whether the manifest member `bytes` holds an encrypted bundle's outer manifest (§4.10),
    /// found by the bounded pre-pass alone (one decompression, nothing deserialised): for a
    /// reader that must decide early, after the signatures are checked. Errors as [`Manifest::decode`].
    pub fn member_is_sealed(bytes: &[u8], limits: &Limits) -> Result<bool, Error> {
        crate::scan::is_sealed(member_decoder(bytes, limits)?, declared_size(bytes), limits)
    }

    /// Decode canonical CBOR and check the structural rules of bundle-format.md (§4.5), after the
    /// CBOR pre-pass ([`crate::scan::scan`]) has checked every count and size against `limits`.
    pub fn from_cbor(bytes: &[u8], limits: &Limits) -> Result<Manifest, Error> {
        crate::scan::scan(bytes, limits)?;
        let m: Manifest = ciborium::from_reader(bytes).map_err(|e| Error::Manifest(e.to_string()))?;
        m.finish_decode(Hash::of(bytes), limits)
    }

    /// The checks after deserialising: the canonical encoding (re-encoding gives the bytes whose
    /// BLAKE3 is `digest`; hashed, not written out, so no second copy of the CBOR is made), then
    /// the structural rules.
    fn finish_decode(self, digest: Hash, limits: &Limits) -> Result<Manifest, Error> {
        let mut h = blake3::Hasher::new();
        // Serialising plain data into a hasher cannot fail.
        #[allow(clippy::unwrap_used)]
        ciborium::into_writer(&self, &mut h).unwrap();
        if Hash::from(h.finalize()) != digest {
            return Err(Error::Manifest("not in canonical encoding".into()));
        }
        self.check(limits)?;
        Ok(self)
    }

    /// Structural checks that need no filesystem (bundle-format.md §4.5); the apply script is
    /// checked by [`crate::script::validate`]. In order: counts, hooks, channel and rotation,
    /// sorted entries and frame sizes, each entry, the tiling of every frame, OLD paths.
    pub fn check(&self, limits: &Limits) -> Result<(), Error> {
        self.check_counts(limits)?;
        self.check_hooks_channel_rotation(limits)?;
        if let Some(s) = &self.sealed {
            // An encrypted bundle's outer manifest: public fields and frames only (§4.10).
            return crate::seal::check_outer(self, s, limits);
        }
        let mut per_frame = self.check_entries(limits)?;
        self.check_frame_tiling(&mut per_frame)?;
        self.check_xattrs(limits)?;
        self.check_tagged()?;
        for o in &self.old {
            if !path_within(&o.path, limits) {
                return Err(Error::Manifest(format!("path {} exceeds length or depth limit", o.path)));
            }
        }
        Ok(())
    }

    /// The carried namespaces and the attribute sets (bundle-format.md §4.9): see
    /// [`crate::xattr::check`]; then every reference in range, and the sets in order of first
    /// reference (entries, then old entries), each referenced.
    fn check_xattrs(&self, limits: &Limits) -> Result<(), Error> {
        crate::xattr::check(&self.xattr_namespaces, &self.xattr_sets, limits)?;
        let mut next = 0u32;
        let metas = self.entries.iter().map(|e| (&e.path, &e.meta)).chain(self.old.iter().map(|o| (&o.path, &o.meta)));
        for (path, meta) in metas {
            match meta.xattrs {
                Some(i) if i as usize >= self.xattr_sets.len() => {
                    return Err(Error::Manifest(format!("{path}: xattr set {i} does not exist")));
                }
                Some(i) if i > next => {
                    return Err(Error::Manifest(format!("{path}: xattr set {i} referenced before set {next}")));
                }
                Some(i) if i == next => next += 1,
                _ => {}
            }
        }
        if (next as usize) < self.xattr_sets.len() {
            return Err(Error::Manifest(format!("xattr set {next} is not referenced")));
        }
        Ok(())
    }

    /// `Tagged` OLD entries only where the applier needs no file's own digest, and
    /// `tagged_digest` set exactly when there is one (bundle-format.md §4.3). That the digest
    /// matches the files is checked against the target (§10.1): the manifest alone cannot tell.
    fn check_tagged(&self) -> Result<(), Error> {
        let mut tagged = false;
        for o in self.old.iter().filter(|o| matches!(o.kind, OldKind::Tagged { .. })) {
            tagged = true;
            if let Some(why) = self.needs_own_digest(o) {
                return Err(Error::Manifest(format!("{}: listed by tag, but {why}", o.path)));
            }
        }
        match (tagged, self.tagged_digest.is_some()) {
            (true, false) => Err(Error::Manifest("OLD files listed by tag, but no tagged_digest".into())),
            (false, true) => Err(Error::Manifest("tagged_digest set, but no OLD file is listed by tag".into())),
            _ => Ok(()),
        }
    }

    /// Why the applier needs the own digest of the OLD file `o` (bundle-format.md §4.3), if it
    /// does: the NEW file at its path is a config file (the conffile rule compares it on its own),
    /// or has unchanged content and a metadata change that raises permissions when owners are
    /// applied (made on a copy that is checked against the OLD digest). Such a file is never
    /// [`OldKind::Tagged`].
    pub fn needs_own_digest(&self, o: &OldEntry) -> Option<&'static str> {
        let e = self.entry(&o.path)?;
        match &e.kind {
            Kind::File { config: true, .. } => Some("the NEW file is a config file"),
            Kind::File { content: Content::Unchanged, .. }
                if o.meta.raises_permissions(&e.meta, true, &self.xattr_sets) =>
            {
                Some("its metadata change raises permissions (checked against its own digest)")
            }
            _ => None,
        }
    }

    /// List every OLD file whose own digest the applier does not need
    /// ([`Manifest::needs_own_digest`]) as [`OldKind::Tagged`] and set
    /// [`Manifest::tagged_digest`] over them (bundle-format.md §4.3). For the builder, once
    /// `entries`, `old` and the attribute sets are final; a manifest that already has a
    /// `tagged_digest` is left as it is.
    pub fn tag_old_files(&mut self) {
        if self.tagged_digest.is_some() {
            return;
        }
        let tag: Vec<bool> = self
            .old
            .iter()
            .map(|o| matches!(o.kind, OldKind::File { .. }) && self.needs_own_digest(o).is_none())
            .collect();
        let mut digest = TaggedDigest::default();
        for (o, t) in self.old.iter_mut().zip(tag) {
            if let (true, OldKind::File { size, hash }) = (t, &o.kind) {
                digest.add(&o.path, *size, hash);
                o.kind = OldKind::Tagged { size: *size, tag: Tag::of(hash) };
            }
        }
        self.tagged_digest = (digest.count() > 0).then(|| digest.finish());
    }

    /// The BLAKE3 of NEW file `e`'s content where the manifest states it: the entry's own
    /// `hash`, or for [`Content::Unchanged`] the digest of the `File` entry in `old` at its path.
    /// `None` for an unchanged file listed by tag or not in `old` (nothing needs its digest then)
    /// and for anything that is not a `File`.
    pub fn file_hash(&self, e: &Entry) -> Option<Hash> {
        match &e.kind {
            Kind::File { hash: Some(h), .. } => Some(*h),
            Kind::File { content: Content::Unchanged, .. } => match self.old_entry(&e.path).map(|o| &o.kind) {
                Some(OldKind::File { hash, .. }) => Some(*hash),
                _ => None,
            },
            _ => None,
        }
    }

    /// The format version, and every count against its limit (the CBOR pre-pass checked them
    /// before decoding, [`crate::scan`]; the builder, which does not decode, relies on this).
    fn check_counts(&self, limits: &Limits) -> Result<(), Error> {
        if self.format != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(self.format.to_string()));
        }
        let pieces: usize = self
            .entries
            .iter()
            .map(|e| match &e.kind {
                Kind::File { content: Content::Pieces(ps), .. } => ps.len(),
                _ => 0,
            })
            .sum();
        let extents: usize = self
            .entries
            .iter()
            .map(|e| match &e.kind {
                Kind::File { extents: Some(x), .. } => x.len(),
                _ => 0,
            })
            .sum();
        let rotation = self.rotation.as_ref().map_or((0, 0), |r| (r.add.len(), r.retire.len()));
        let counts = [
            ("entries", self.entries.len(), limits.max_entries),
            ("old entries", self.old.len(), limits.max_entries),
            ("script steps", self.script.len(), limits.max_entries),
            ("frames", self.frames.len(), limits.max_frames),
            ("pieces", pieces, limits.max_pieces),
            ("extents", extents, limits.max_extents),
            ("keys added by the rotation", rotation.0, limits.max_rotation_keys),
            ("keys retired by the rotation", rotation.1, limits.max_rotation_keys),
        ];
        for (what, count, limit) in counts {
            if count > limit {
                return Err(Error::TooMany { what: what.into(), count: count as u64, limit: limit as u64 });
            }
        }
        if self.hooks.len() > limits.max_hooks {
            return Err(Error::Manifest(format!("{} hooks, limit {}", self.hooks.len(), limits.max_hooks)));
        }
        Ok(())
    }

    /// Hooks, the channel name, and a rotation's keys, ids and threshold.
    fn check_hooks_channel_rotation(&self, limits: &Limits) -> Result<(), Error> {
        let err = |s: String| Err(Error::Manifest(s));
        let rule = |e: Error| Error::Manifest(e.to_string());
        for h in &self.hooks {
            h.check(limits).map_err(rule)?;
        }
        crate::names::Channel::check(&self.channel, limits).map_err(rule)?;
        if let Some(r) = &self.rotation {
            // Recorded in the target's trust policy after the commit: anything the policy could
            // not load back (or a key that is not a key) would fail only then, or lock the target.
            for k in &r.add {
                crate::sig::PublicKey::from_bytes(k.0)
                    .map_err(|e| Error::Manifest(format!("rotation: added key {k}: {e}")))?;
            }
            for id in &r.retire {
                // Either case: the policy compares ids in lower case (`KeyId`).
                if let Err(e) = id.parse::<crate::KeyId>() {
                    return err(format!("rotation: retired {e}"));
                }
            }
            if r.threshold == Some(0) {
                return err("rotation: threshold must be at least 1".into());
            }
        }
        Ok(())
    }

    /// Sorted, unique entries and old entries; frame sizes; then each entry
    /// ([`Manifest::check_entry`]). Returns the pieces of each frame, for
    /// [`Manifest::check_frame_tiling`].
    fn check_entries(&self, limits: &Limits) -> Result<Vec<Vec<FramePiece<'_>>>, Error> {
        for w in self.entries.windows(2) {
            if w[0].path >= w[1].path {
                return Err(Error::Manifest(format!("entries not sorted or duplicate path {}", w[1].path)));
            }
        }
        for w in self.old.windows(2) {
            if w[0].path >= w[1].path {
                return Err(Error::Manifest(format!("old entries not sorted or duplicate path {}", w[1].path)));
            }
        }
        check_frame_sizes(&self.frames, limits.max_frame_bytes, limits)?;
        let mut per_frame: Vec<Vec<FramePiece>> = vec![Vec::new(); self.frames.len()];
        for e in &self.entries {
            self.check_entry(e, limits, &mut per_frame)?;
        }
        Ok(per_frame)
    }

    /// One entry: path limits, mode, symlink target, hardlink primary, and a file's content
    /// (pieces are collected into `per_frame`).
    fn check_entry<'a>(
        &'a self,
        e: &'a Entry,
        limits: &Limits,
        per_frame: &mut [Vec<FramePiece<'a>>],
    ) -> Result<(), Error> {
        let err = |s: String| Err(Error::Manifest(s));
        if !path_within(&e.path, limits) {
            return err(format!("path {} exceeds length or depth limit", e.path));
        }
        if e.meta.mode > 0o7777 {
            return err(format!("{}: mode {:o} has bits outside 07777", e.path, e.meta.mode));
        }
        match &e.kind {
            Kind::Symlink { target }
                if target.is_empty() || target.len() > limits.max_symlink_len || target.contains(&0) =>
            {
                err(format!("{}: symlink target empty, too long or with NUL", e.path))
            }
            Kind::Hardlink { primary } => match self.entry(primary) {
                Some(Entry { kind: Kind::File { .. }, .. }) if primary < &e.path => Ok(()),
                _ => err(format!("{}: hardlink primary {} is not an earlier file entry", e.path, primary)),
            },
            Kind::File { size, hash, content, extents, gzip, .. } => {
                match (hash, content) {
                    (Some(_), Content::Unchanged) => {
                        return err(format!("{}: unchanged content with a digest of its own", e.path))
                    }
                    (None, c) if !matches!(c, Content::Unchanged) => {
                        return err(format!("{}: file without a digest", e.path))
                    }
                    _ => {}
                }
                // What the pieces carry: the whole file, a sparse file's data extents, or a gzip
                // file's uncompressed data.
                let data = match (extents, gzip) {
                    (None, None) => *size,
                    (Some(x), None) => crate::sparse::check_extents(*size, x, limits.max_extents_per_file)
                        .map_err(|why| Error::Manifest(format!("{}: {why}", e.path)))?,
                    (None, Some(g)) => {
                        g.check(*size, limits).map_err(|why| Error::Manifest(format!("{}: {why}", e.path)))?;
                        // One piece, decoded without a delta base: the applier feeds it to the
                        // encoder in order, from one frame.
                        match content {
                            Content::Pieces(ps)
                                if ps.len() == 1 && matches!(ps[0].method, Method::Zstd | Method::Lzma { .. }) => {}
                            _ => return err(format!("{}: a gzip file's data must be one zstd or LZMA2 piece", e.path)),
                        }
                        g.raw
                    }
                    (Some(_), Some(_)) => return err(format!("{}: a gzip file cannot be sparse", e.path)),
                };
                self.check_content(e, *size, data, content, limits, per_frame)
            }
            _ => Ok(()),
        }
    }

    /// A file's content: `Empty` has no data, `Pieces` carry exactly `data` bytes (a sparse file
    /// without data is `Empty`), a copy source or unchanged OLD file has the same logical size.
    fn check_content<'a>(
        &'a self,
        e: &'a Entry,
        size: u64,
        data: u64,
        content: &'a Content,
        limits: &Limits,
        per_frame: &mut [Vec<FramePiece<'a>>],
    ) -> Result<(), Error> {
        let err = |s: String| Err(Error::Manifest(s));
        match content {
            Content::Empty if data != 0 => err(format!("{}: empty content with {data} bytes of data", e.path)),
            Content::Pieces(_) if data == 0 && size != 0 => {
                err(format!("{}: pieces for a file without data (a hole only: Empty)", e.path))
            }
            Content::Pieces(ps) => self.check_pieces(e, data, ps, limits, per_frame),
            Content::Copy { from } => match self.old_entry(from).and_then(|o| o.kind.file_size()) {
                Some(s) if s == size => Ok(()),
                _ => err(format!("{}: copy source {} is not an OLD file of that size", e.path, from)),
            },
            Content::Unchanged => match self.old_entry(&e.path).map(|o| o.kind.file_size()) {
                None => Ok(()),
                Some(Some(s)) if s == size => Ok(()),
                _ => err(format!("{}: unchanged content but OLD differs", e.path)),
            },
            Content::Empty => Ok(()),
        }
    }

    /// The pieces of file `e` carrying `size` bytes of data: each inside its frame, its delta base
    /// an OLD file holding the base window, and their lengths summing to `size`.
    fn check_pieces<'a>(
        &'a self,
        e: &'a Entry,
        size: u64,
        ps: &'a [Piece],
        limits: &Limits,
        per_frame: &mut [Vec<FramePiece<'a>>],
    ) -> Result<(), Error> {
        let err = |s: String| Err(Error::Manifest(s));
        let mut total: u64 = 0;
        for p in ps {
            let Some(fr) = self.frames.get(p.frame as usize) else {
                return err(format!("{}: piece refers to missing frame {}", e.path, p.frame));
            };
            // A bsdiff piece is the whole output of patching with its frame: offset 0, any
            // length up to the decoded-size limit; it tiles its frame alone.
            let bsdiff = p.method.is_bsdiff();
            let end = p.offset.checked_add(p.len).filter(|&end| end <= fr.decoded);
            let inside = if bsdiff { p.offset == 0 && p.len <= limits.max_frame_decoded } else { end.is_some() };
            if !inside || p.len == 0 {
                return err(format!("{}: piece outside frame {}", e.path, p.frame));
            }
            if let Some(dict_log) = p.method.lzma_dict_log() {
                check_lzma_dict(p.frame, dict_log, limits)?;
            }
            if let Some([(control, control_size), (copy, copy_size)]) = p.method.split_parts() {
                // Whole records; the first two streams inside the frame's decoded and stored
                // sizes, each at least an LZMA2 end marker.
                let decoded_ok = control.checked_add(copy).is_some_and(|d| d <= fr.decoded) && control % 24 == 0;
                let stored = control_size.checked_add(copy_size).filter(|&s| s < fr.size);
                if !decoded_ok || stored.is_none() || control_size == 0 || copy_size == 0 {
                    return err(format!("{}: bsdiff streams do not fit frame {}", e.path, p.frame));
                }
            }
            if let Some((base, offset, len)) = p.method.delta_base() {
                match self.old_entry(base).and_then(|o| o.kind.file_size()) {
                    Some(size) if offset.checked_add(len).is_some_and(|e| e <= size) => {}
                    _ => return err(format!("{}: delta base {} is not an OLD file of that size", e.path, base)),
                }
            }
            let span = if bsdiff { fr.decoded } else { p.len };
            per_frame[p.frame as usize].push(FramePiece::new(p, span));
            total = total.checked_add(p.len).ok_or_else(|| Error::Manifest("size overflow".into()))?;
        }
        if total != size {
            return err(format!("{}: pieces sum to {total}, size is {size}", e.path));
        }
        Ok(())
    }

    /// Per frame, the distinct pieces that use it tile it exactly from 0 to `decoded` (identical
    /// pieces may be shared: deduplicated content), all name the same method (an `Lzma` frame:
    /// the same filter and dictionary), and a patch or bsdiff frame holds one.
    fn check_frame_tiling(&self, per_frame: &mut [Vec<FramePiece>]) -> Result<(), Error> {
        for (i, ps) in per_frame.iter_mut().enumerate() {
            let bad = || Err(Error::Manifest(format!("frame {i}: pieces do not tile the frame")));
            ps.sort_unstable();
            ps.dedup();
            if ps.windows(2).any(|w| w[0].method != w[1].method) {
                return Err(Error::Manifest(format!("frame {i}: pieces name different methods")));
            }
            let mut at = 0u64;
            for fp in ps.iter() {
                let shared = matches!(fp.method, MethodKind::Zstd | MethodKind::Lzma(..));
                if fp.offset != at || (!shared && ps.len() != 1) {
                    return bad();
                }
                at = fp.offset + fp.span;
            }
            if at != self.frames[i].decoded {
                return bad();
            }
        }
        Ok(())
    }

    /// Which of [`Manifest::entries`] the manifest must list (bundle-format.md §4.2), by index:
    /// the least set of entries that holds
    /// 1. every path with a `Mkdir`, `Place`, `SetMeta` or `DirMeta` step,
    /// 2. every path of [`Manifest::old`] that is in `entries`,
    /// 3. with any member of a hardlink group (a `File` and the `Hardlink`s naming it as
    ///    primary), every member,
    /// 4. with a `File` marked `config`, the entry `NAME.ferry-new` beside it,
    /// 5. with any entry, its ancestors.
    ///
    /// The builder calls this on the whole NEW tree and keeps the marked entries; a reader calls
    /// it on a decoded manifest and refuses one that lists an entry not marked
    /// ([`crate::script::validate`]).
    pub fn required_entries(&self) -> Vec<bool> {
        let index = |p: &BundlePath| self.entries.binary_search_by(|e| e.path.cmp(p)).ok();
        // Hardlinks by primary path.
        let mut links: BTreeMap<&BundlePath, Vec<usize>> = BTreeMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let Kind::Hardlink { primary } = &e.kind {
                links.entry(primary).or_default().push(i);
            }
        }
        let mut need = vec![false; self.entries.len()];
        let mut work: Vec<usize> = Vec::new();
        let mut expanded: BTreeSet<&BundlePath> = BTreeSet::new();
        let mark = |i: usize, need: &mut Vec<bool>, work: &mut Vec<usize>| {
            if !need[i] {
                need[i] = true;
                work.push(i);
            }
        };
        let seeds =
            self.script.iter().filter(|s| s.op != Op::Delete).map(|s| &s.path).chain(self.old.iter().map(|o| &o.path));
        for p in seeds {
            if let Some(i) = index(p) {
                mark(i, &mut need, &mut work);
            }
        }
        while let Some(i) = work.pop() {
            let e = &self.entries[i];
            let group = match &e.kind {
                Kind::Hardlink { primary } => Some(primary),
                Kind::File { .. } => Some(&e.path),
                _ => None,
            };
            // Each group once (a group of k names costs k, not k²).
            if let Some(g) = group.filter(|g| expanded.insert(*g)) {
                for j in index(g).into_iter().chain(links.get(g).into_iter().flatten().copied()) {
                    mark(j, &mut need, &mut work);
                }
            }
            if let Kind::File { config: true, .. } = &e.kind {
                if let Some(j) = ferry_new_path(&e.path).and_then(|s| index(&s)) {
                    mark(j, &mut need, &mut work);
                }
            }
            // The parent only: once marked, it marks its own parent in turn (linear work even
            // for deep paths).
            if let Some(j) = e.path.parent().and_then(|a| index(&a)) {
                mark(j, &mut need, &mut work);
            }
        }
        need
    }

    /// Keep only the entries [`Manifest::required_entries`] marks (what the builder does once
    /// the script and `old` are final).
    pub fn drop_unneeded_entries(&mut self) {
        let need = self.required_entries();
        self.entries =
            std::mem::take(&mut self.entries).into_iter().zip(need).filter(|(_, n)| *n).map(|(e, _)| e).collect();
    }

    /// Find a NEW entry by path (entries are sorted).
    pub fn entry(&self, p: &BundlePath) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.path.cmp(p)).ok().map(|i| &self.entries[i])
    }

    /// Find an expected OLD entry by path.
    pub fn old_entry(&self, p: &BundlePath) -> Option<&OldEntry> {
        self.old.binary_search_by(|e| e.path.cmp(p)).ok().map(|i| &self.old[i])
    }

    /// Bundle id: BLAKE3 of the manifest member's bytes (the compressed form, as received). The
    /// signatures are over this id (bundle-format.md §3.2).
    pub fn id(bytes: &[u8]) -> Hash {
        Hash::of(bytes)
    }
}

/// Whether a path is within the configured length and depth (a [`BundlePath`] is always within
/// the format's own bounds; [`Limits`] may set tighter ones).
fn path_within(p: &BundlePath, limits: &Limits) -> bool {
    p.as_bytes().len() <= limits.max_path_len && p.depth() <= limits.max_path_depth
}

/// How a frame is decoded, as far as tiling cares (ordered as the [`Method`] variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum MethodKind {
    Zstd,
    Patch,
    Bsdiff,
    Lzma(crate::lzma::Bcj, u8),
    BsdiffLzma(u8),
    BsdiffSplit(u8, crate::lzma::SplitParts),
}

/// One piece's claim on its frame, for [`Manifest::check_frame_tiling`]: where it starts, how
/// much of the frame it spans, the method, and the delta base window (two references to one
/// patch frame are one piece only if they name the same base bytes). Ordered by these fields in
/// turn, so sorting puts the pieces in frame order and identical ones side by side.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FramePiece<'a> {
    offset: u64,
    span: u64,
    method: MethodKind,
    base: Option<(&'a BundlePath, u64, u64)>,
}

impl<'a> FramePiece<'a> {
    fn new(p: &'a Piece, span: u64) -> Self {
        let (method, base) = match &p.method {
            Method::Zstd => (MethodKind::Zstd, None),
            Method::Patch { base, offset, len } => (MethodKind::Patch, Some((base, *offset, *len))),
            Method::Bsdiff { base, offset, len } => (MethodKind::Bsdiff, Some((base, *offset, *len))),
            Method::Lzma { filter, dict_log } => (MethodKind::Lzma(*filter, *dict_log), None),
            Method::BsdiffLzma { base, offset, len, dict_log } => {
                (MethodKind::BsdiffLzma(*dict_log), Some((base, *offset, *len)))
            }
            Method::BsdiffSplit { base, offset, len, dict_log, control, control_size, copy, copy_size } => (
                MethodKind::BsdiffSplit(*dict_log, [(*control, *control_size), (*copy, *copy_size)]),
                Some((base, *offset, *len)),
            ),
        };
        FramePiece { offset: p.offset, span, method, base }
    }
}

impl Kind {
    /// Short type name used in messages and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::File { .. } => "file",
            Kind::Dir => "dir",
            Kind::Symlink { .. } => "symlink",
            Kind::Hardlink { .. } => "hardlink",
            Kind::Fifo => "fifo",
            Kind::CharDev { .. } => "chardev",
            Kind::BlockDev { .. } => "blockdev",
        }
    }
}

impl OldKind {
    pub fn name(&self) -> &'static str {
        match self {
            OldKind::File { .. } | OldKind::Tagged { .. } => "file",
            OldKind::Dir => "dir",
            OldKind::Symlink { .. } => "symlink",
            OldKind::Fifo => "fifo",
            OldKind::CharDev { .. } => "chardev",
            OldKind::BlockDev { .. } => "blockdev",
        }
    }

    /// The size of a regular file (`File` or `Tagged`); `None` for any other type.
    pub fn file_size(&self) -> Option<u64> {
        match self {
            OldKind::File { size, .. } | OldKind::Tagged { size, .. } => Some(*size),
            _ => None,
        }
    }
}

/// The aggregate digest of the `Tagged` OLD files (bundle-format.md §4.3): BLAKE3 in derive-key
/// mode (context `ferry tagged files v1`) over one record per file, in the order of `old`:
/// `le64(len(path)) || path || le64(size) || hash`. Records are length-prefixed, so the input
/// has one reading and equal digests mean equal lists of (path, size, hash).
#[derive(Clone)]
pub struct TaggedDigest {
    h: blake3::Hasher,
    n: usize,
}

impl Default for TaggedDigest {
    fn default() -> Self {
        TaggedDigest { h: blake3::Hasher::new_derive_key("ferry tagged files v1"), n: 0 }
    }
}

impl TaggedDigest {
    /// Add the record of the next tagged file.
    pub fn add(&mut self, path: &BundlePath, size: u64, hash: &Hash) {
        let p = path.as_bytes();
        self.h.update(&(p.len() as u64).to_le_bytes());
        self.h.update(p);
        self.h.update(&size.to_le_bytes());
        self.h.update(&hash.0);
        self.n += 1;
    }

    /// Records added so far.
    pub fn count(&self) -> usize {
        self.n
    }

    pub fn finish(&self) -> Hash {
        self.h.finalize().into()
    }
}

/// `NAME.ferry-new`, the file name beside `p` where the applier puts the NEW version of a
/// locally edited configuration file.
pub fn ferry_new_name(p: &BundlePath) -> Vec<u8> {
    let mut name = p.file_name().to_vec();
    name.extend_from_slice(b".ferry-new");
    name
}

/// The path of [`ferry_new_name`] beside `p`; `None` if it would not be a valid path (a name
/// over 255 bytes).
pub fn ferry_new_path(p: &BundlePath) -> Option<BundlePath> {
    let name = ferry_new_name(p);
    match p.parent() {
        Some(d) => d.join(&name).ok(),
        None => BundlePath::new(name).ok(),
    }
}

/// zstd level of the manifest member (deterministic for a given zstd version; a reader never
/// re-compresses, it checks the signature over the bytes it received).
pub const MANIFEST_LEVEL: i32 = 19;

/// Compress CBOR into the manifest member: one zstd frame.
pub fn pack(cbor: &[u8]) -> Vec<u8> {
    // Compressing from a slice into a Vec cannot fail.
    #[allow(clippy::unwrap_used)]
    zstd::bulk::compress(cbor, MANIFEST_LEVEL).unwrap()
}

/// The decoder of the manifest member: exactly one zstd frame, nothing after it, window at most
/// 2^[`Limits::max_window_log`]. Bound what it yields with [`crate::scan`].
fn member_decoder<'a>(bytes: &'a [u8], limits: &Limits) -> Result<impl std::io::Read + 'a, Error> {
    let bad = |what: String| Error::Manifest(format!("manifest member: {what}"));
    match zstd::zstd_safe::find_frame_compressed_size(bytes) {
        Ok(n) if n == bytes.len() => {}
        Ok(_) => return Err(bad("data after the zstd frame".into())),
        Err(_) => return Err(bad("not a zstd frame".into())),
    }
    let mut d = zstd::stream::read::Decoder::with_buffer(bytes).map_err(|e| bad(e.to_string()))?.single_frame();
    d.window_log_max(limits.max_window_log).map_err(|e| bad(e.to_string()))?;
    Ok(d)
}

/// Decompress the manifest member into its CBOR, checked by the pre-pass ([`crate::scan`]) as
/// it is decompressed: at most [`Limits::max_manifest_decoded`] bytes are ever decoded, and a
/// count over its limit stops decompression where its array starts.
pub fn unpack(bytes: &[u8], limits: &Limits) -> Result<Vec<u8>, Error> {
    crate::scan::read_scanned(member_decoder(bytes, limits)?, declared_size(bytes), limits)
}

/// The decoded size the member's zstd frame header declares, if it does (the builder's does;
/// the decoder refuses a frame whose content differs from it).
fn declared_size(bytes: &[u8]) -> Option<u64> {
    zstd::zstd_safe::get_frame_content_size(bytes).ok().flatten()
}

/// Digest of a whole tree: BLAKE3 (derive-key mode, context `ferry tree v1`) over the CBOR
/// encoding of its entries in sorted order, as [`OldEntry`] values with `xattrs` null (every
/// regular file as [`OldKind::File`] with its digest, never `Tagged`), each one
/// with attributes followed by the CBOR encoding of its set (`sets[xattrs]`), so the digest
/// depends on the attributes and not on how sets are numbered.
pub fn tree_digest<E: std::borrow::Borrow<OldEntry>>(
    entries: impl IntoIterator<Item = E>,
    sets: &[crate::XattrSet],
) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("ferry tree v1");
    for e in entries {
        let e = e.borrow();
        let set = e.meta.xattrs.and_then(|i| sets.get(i as usize));
        let mut e = e.clone();
        e.meta.xattrs = None;
        // Serialising plain data into a hasher cannot fail.
        #[allow(clippy::unwrap_used)]
        ciborium::into_writer(&e, &mut h).unwrap();
        if let Some(set) = set {
            #[allow(clippy::unwrap_used)]
            ciborium::into_writer(set, &mut h).unwrap();
        }
    }
    h.finalize().into()
}

/// The dictionary of an `Lzma` or `BsdiffLzma` piece of frame `frame`: at least LZMA2's 4 KiB, at most
/// 2^[`Limits::max_lzma_dict_log`] (bundle-format.md §5.2, §8).
fn check_lzma_dict(frame: u32, dict_log: u8, limits: &Limits) -> Result<(), Error> {
    if crate::lzma::dict_log_ok(dict_log, limits) {
        return Ok(());
    }
    if dict_log > crate::lzma::MIN_DICT_LOG {
        let size = 1u64.checked_shl(u32::from(dict_log)).unwrap_or(u64::MAX);
        let limit = 1u64 << limits.max_lzma_dict_log.min(crate::lzma::MAX_DICT_LOG);
        return Err(Error::TooLarge { what: format!("LZMA2 dictionary of frame {frame}"), size, limit });
    }
    Err(Error::Manifest(format!("frame {frame}: LZMA2 dictionary 2^{dict_log} under the minimum of 4 KiB")))
}

/// Every frame at most `max_bytes` stored and `limits.max_frame_decoded` decoded (§8); shared by
/// [`Manifest::check`] and an encrypted bundle's outer rules (`seal.rs`, with a lower bound).
pub(crate) fn check_frame_sizes(frames: &[Frame], max_bytes: u64, limits: &Limits) -> Result<(), Error> {
    for f in frames {
        if f.size > max_bytes {
            return Err(Error::TooLarge { what: "frame".into(), size: f.size, limit: limits.max_frame_bytes });
        }
        if f.decoded > limits.max_frame_decoded {
            return Err(Error::TooLarge {
                what: "decoded frame".into(),
                size: f.decoded,
                limit: limits.max_frame_decoded,
            });
        }
    }
    Ok(())
}
