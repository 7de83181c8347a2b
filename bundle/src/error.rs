//! One error type for everything that can be wrong with a bundle or a key.

use crate::BundlePath;

/// What is wrong with a bundle, a key or a trust policy. Every variant names the defect and,
/// where there is one, the byte offset or path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("not a ferry bundle (first tar member is not ferry-v*/manifest.cbor)")]
    NotABundle,
    #[error("unsupported bundle format version {0} (this ferry reads version {v})", v = crate::FORMAT_VERSION)]
    UnsupportedVersion(String),
    #[error("non-canonical tar framing at byte {offset}: {what}")]
    Framing { offset: u64, what: String },
    #[error("bundle is truncated at byte {offset} (expected {what})")]
    Truncated { offset: u64, what: String },
    #[error("trailing data after the end of the bundle at byte {offset}")]
    TrailingData { offset: u64 },
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge { what: String, size: u64, limit: u64 },
    #[error("manifest has {count} {what}, over the limit of {limit}")]
    TooMany { what: String, count: u64, limit: u64 },
    #[error("malformed manifest: {0}")]
    Manifest(String),
    #[error("malformed signature block: {0}")]
    Signatures(String),
    #[error("signature by key {key_id} does not verify")]
    BadSignature { key_id: String },
    /// The trust policy is not met: which keys signed, how each counts, how many are missing.
    #[error("{status}")]
    Untrusted { status: Box<crate::sig::TrustStatus> },
    #[error("frame {index} (bytes {offset}..{}) does not match its hash in the manifest", offset + size)]
    FrameHash { index: u32, offset: u64, size: u64 },
    #[error("frame {index}: {what}")]
    FrameDecode { index: u32, what: String },
    #[error("unsafe path {path:?}: {why}")]
    UnsafePath { path: String, why: &'static str },
    #[error("invalid apply script at step {step} ({path}): {why}")]
    Script { step: usize, path: BundlePath, why: String },
    #[error("invalid signing request: {0}")]
    Request(String),
    #[error("invalid signature file: {0}")]
    SignatureFile(String),
    #[error("invalid key: {0}")]
    Key(String),
    /// A channel, key id or hook that breaks its rule ([`crate::names`]).
    #[error("{0}")]
    Value(String),
    #[error("invalid trust policy {file}: {why}")]
    Policy { file: String, why: String },
    #[error("I/O error reading bundle: {0}")]
    Io(#[from] std::io::Error),
}
