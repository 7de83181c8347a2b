//! One error type for the builder, so the CLI can tell a usage mistake (exit 2) from a failure
//! (exit 1), and every filesystem error names the path it happened on.

use std::path::PathBuf;

/// Everything that can stop a build or a key generation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad command-line value (exit code 2).
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A member of an input archive that cannot be read into a tree.
    #[error("{archive}: entry {entry:?}: {what}")]
    Archive { archive: PathBuf, entry: String, what: String },
    #[error("{path}: {what} is not supported in a bundle")]
    Unsupported { path: PathBuf, what: &'static str },
    #[error("{path}: name cannot be used in a bundle: {source}")]
    BadPath { path: PathBuf, source: bundle::Error },
    #[error("{path}: {source}")]
    Key { path: PathBuf, source: bundle::Error },
    /// A passphrase-protected secret key that could not be opened or written (§3.1).
    #[error("{path}: {why}")]
    Passphrase { path: PathBuf, why: String },
    /// A bundle, signing request or signature file that cannot be read or is not valid.
    #[error("{path}: {source}")]
    Bundle { path: PathBuf, source: bundle::Error },
    /// An external signer command failed, timed out or returned something unusable.
    #[error("signer command `{command}`: {why}")]
    Signer { command: String, why: String },
    /// A signing operation refused for a reason about this file (a split bundle, a signature
    /// for another bundle, ...).
    #[error("{path}: {why}")]
    Refused { path: PathBuf, why: String },
    #[error("{path}: already exists, refusing to overwrite")]
    Exists { path: PathBuf },
    /// The builder produced something the format rejects: a builder bug or an input tree the
    /// format cannot express (e.g. a cycle of symlinks that all change).
    #[error("cannot produce a valid bundle: {0}")]
    Invalid(bundle::Error),
    #[error("compressing {path}: {source}")]
    Compress { path: String, source: std::io::Error },
    /// A publish, refresh or prune refused (`ferry-build publish`).
    #[error(transparent)]
    Publish(Box<crate::publish::PublishError>),
    #[error("writing bundle {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl Error {
    /// Shorthand for an [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// True for command-line usage mistakes.
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
