//! The ferry bundle format — specified in `bundle-format.md` at the repository root; keep in sync.
//!
//! This crate is pure: it parses bytes and readers, never walks a filesystem.
//!
//! - [`path`]: [`BundlePath`], a relative path that cannot escape the target.
//! - [`manifest`]: the signed manifest (entries of NEW, expected OLD state, frames, apply script).
//! - [`bspatch`]: applying the bsdiff patches of `Method::Bsdiff` pieces, bounded.
//! - [`container`]: the canonical tar framing around the manifest, signatures and frames.
//! - [`sig`]: keys, key ids, domain-separated ed25519 signatures over the bundle id, the
//!   signature member, trust policies and what they make of a bundle's signers.
//! - [`index`]: the signed index of a channel repository (release and freshness parts).
//! - [`request`]: offline signing: the signing request and the detached signature file.
//! - [`seal`]: encrypted bundles: recipients, identities, the sealed manifest, frame keystreams.
//! - [`resolve`]: kernel-style symlink resolution over an index of a tree (ordering, rule 4).
//! - [`script`]: validation of the ordered apply script (every precondition met by earlier steps).
//! - [`sparse`]: data extents of sparse files, where the payload lands, the zero-filled digest.
//! - [`limits`]: bounds on every untrusted size and count.
//! - [`lzma`]: LZMA2 frames behind a branch-call-jump filter (`Method::Lzma`), bounded.
//! - [`scan`]: the bounded pre-pass over the manifest's CBOR, before anything is deserialised.
//! - [`glob`]: the path-glob language of hooks and config-file marks.
//! - [`xattr`]: extended-attribute sets, carried namespaces and their rules.

pub mod bspatch;
pub mod container;
pub mod deflate;
pub mod error;
pub mod glob;
pub mod hash;
pub mod index;
pub mod limits;
pub mod lzma;
pub mod manifest;
pub mod names;
pub mod path;
pub mod request;
pub mod resolve;
pub mod scan;
pub mod script;
pub mod seal;
pub mod sig;
pub mod sparse;
pub mod xattr;

pub use error::Error;
pub use hash::{Hash, Tag};
pub use limits::Limits;
pub use manifest::*;
pub use names::{Channel, KeyId};
pub use path::BundlePath;
pub use sparse::Extent;
pub use xattr::{Xattr, XattrSet};

/// Version of the bundle format this crate reads and writes. Appears in the first tar member's
/// name (`ferry-v6/manifest.cbor`) and in [`Manifest::format`].
pub const FORMAT_VERSION: u32 = 6;
