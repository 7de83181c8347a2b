//! Errors of the applier and the exit codes they map to (documented in README.md and `--help`).

use std::io;

/// Process exit codes of `ferry-apply`. Stable: scripts and systemd units depend on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// Internal error or a condition not covered below.
    Failure = 1,
    /// Bad command line.
    Usage = 2,
    /// Bad signature, untrusted signer, corrupt, truncated or hostile bundle.
    BadBundle = 3,
    /// The target does not match the bundle's base (drifted, missing or planted paths).
    BaseMismatch = 4,
    /// Version at or below the installed one (rollback protection), or wrong base version.
    VersionRefused = 5,
    /// I/O failure on the target or the state directory (permission, read-only filesystem...).
    Io = 6,
    /// Another ferry-apply holds the target's lock.
    Locked = 7,
    /// The update was committed but a post-commit hook failed.
    HookFailed = 8,
    /// An interrupted apply of another bundle is pending (or resume needs the bundle again).
    Pending = 9,
    /// Refused by policy: wrong channel or expired bundle (a retired key is `BadBundle`).
    Policy = 10,
    /// Not enough free space to stage the update.
    NoSpace = 11,
    /// inbox: at least one bundle failed.
    InboxFailed = 12,
    /// The state directory (or a work directory) cannot be trusted: a symlink, not owned by the
    /// applier's user, writable by group or others, or below a directory another user can write.
    UnsafeState = 13,
    /// A file in the state directory is corrupt (unreadable state, journal or transaction).
    CorruptState = 14,
    /// The target's filesystem cannot hold an extended attribute the bundle sets.
    Unsupported = 15,
    /// The bundle is encrypted and no identity at hand opens it (bundle-format.md §4.10).
    NoIdentity = 16,
    /// update: the channel's index offers no way from the installed version to the one asked for.
    NoUpdatePath = 17,
}

impl Exit {
    /// Every exit code, in numeric order: `--help` and the README table are generated from (or
    /// checked against) this list.
    pub const ALL: [Exit; 18] = [
        Exit::Ok,
        Exit::Failure,
        Exit::Usage,
        Exit::BadBundle,
        Exit::BaseMismatch,
        Exit::VersionRefused,
        Exit::Io,
        Exit::Locked,
        Exit::HookFailed,
        Exit::Pending,
        Exit::Policy,
        Exit::NoSpace,
        Exit::InboxFailed,
        Exit::UnsafeState,
        Exit::CorruptState,
        Exit::Unsupported,
        Exit::NoIdentity,
        Exit::NoUpdatePath,
    ];

    /// The exit whose number is `code`, if it is one of ours.
    pub fn from_code(code: u8) -> Option<Exit> {
        Exit::ALL.into_iter().find(|e| *e as u8 == code)
    }

    /// The short meaning carried by `--json` reports as `exit_meaning`.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "success",
            Exit::Failure => "internal error",
            Exit::Usage => "usage error",
            Exit::BadBundle => "bad signature or corrupt bundle",
            Exit::BaseMismatch => "target does not match the bundle's base",
            Exit::VersionRefused => "version refused",
            Exit::Io => "I/O failure",
            Exit::Locked => "target locked by another ferry-apply",
            Exit::HookFailed => "committed, but a hook failed",
            Exit::Pending => "another apply is pending",
            Exit::Policy => "refused by policy",
            Exit::NoSpace => "not enough free space",
            Exit::InboxFailed => "inbox: some bundles failed",
            Exit::UnsafeState => "state or work directory not trustworthy",
            Exit::CorruptState => "state directory corrupt",
            Exit::Unsupported => "target cannot hold the bundle's extended attributes",
            Exit::NoIdentity => "bundle is encrypted to other recipients",
            Exit::NoUpdatePath => "no update path",
        }
    }

    /// The long text of `--help` and of README.md's "Exit codes of ferry-apply" table (a test
    /// keeps the table equal to this).
    pub fn description(self) -> &'static str {
        match self {
            Exit::Ok => "success (also: this bundle is already installed)",
            Exit::Failure => "internal error",
            Exit::Usage => "usage error",
            Exit::BadBundle => "bad signature, untrusted or retired signer, corrupt, truncated or hostile bundle",
            Exit::BaseMismatch => {
                "target does not match the bundle's base (drifted, missing or planted paths; each is listed)"
            }
            Exit::VersionRefused => "version refused (not newer than installed, or built for another version)",
            Exit::Io => "I/O failure (permission denied, read-only filesystem, ...)",
            Exit::Locked => "another ferry-apply holds the target's lock",
            Exit::HookFailed => "committed, but a post-commit hook failed",
            Exit::Pending => "another apply is pending (resume it first), or resume needs the bundle",
            Exit::Policy => {
                "refused by policy: wrong channel, expired, or a network or FUSE filesystem without `--allow-network-fs`"
            }
            Exit::NoSpace => "not enough free space (or file size limit)",
            Exit::InboxFailed => "inbox: at least one bundle failed",
            Exit::UnsafeState => {
                "state or work directory not trustworthy: a symlink, not owned by the applier's user, writable \
                 by group or others, or below a directory another user can write (use `--state-dir` on a \
                 root-only directory when a service account owns the target)"
            }
            Exit::CorruptState => "state directory corrupt (unreadable state file, journal or transaction)",
            Exit::Unsupported => {
                "the target's filesystem cannot hold an extended attribute the bundle sets (found before anything \
                 is written; `--skip-xattrs NAMESPACE` drops one explicitly)"
            }
            Exit::NoIdentity => {
                "the bundle is encrypted and this target holds no identity that opens it (looked in \
                 STATE/identity, STATE/identities/*.identity and `--identity`); refused before anything is written"
            }
            Exit::NoUpdatePath => {
                "update: no update path: the channel's index has no chain of bundles from the installed version to \
                 the version asked for (a full bundle applies only to an empty target); nothing was changed"
            }
        }
    }

    /// The "Exit codes:" section of every `--help`, built from [`Exit::ALL`] and wrapped to 100
    /// columns.
    pub fn help() -> String {
        const WIDTH: usize = 100;
        const INDENT: &str = "     ";
        let mut s = String::from("Exit codes:");
        for e in Exit::ALL {
            let mut line = format!("{:>3}  ", e as u8);
            for (i, word) in e.description().split(' ').enumerate() {
                if i > 0 && line.len() + 1 + word.len() > WIDTH {
                    s.push('\n');
                    s.push_str(line.trim_end());
                    line = INDENT.to_string();
                } else if i > 0 {
                    line.push(' ');
                }
                line.push_str(word);
            }
            s.push('\n');
            s.push_str(&line);
        }
        s
    }
}

/// Everything that can stop an apply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{0}")]
    Bundle(#[from] bundle::Error),
    /// A bundle error with where it is (e.g. which part of a split bundle).
    #[error("{0}")]
    BadPart(String),
    #[error("target does not match the bundle's base; drifted paths:\n{}", .0.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n"))]
    Drift(Vec<String>),
    #[error("version refused: {0}")]
    Version(VersionRefusal),
    #[error("refused by policy: {0}")]
    Policy(String),
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: io::Error },
    #[error("not enough free space: need {need} bytes, {avail} available on the filesystem of {path}")]
    NoSpace { need: u64, avail: u64, path: String },
    #[error("another ferry-apply is running on this target (lock {0} is held)")]
    Locked(String),
    #[error("{0}")]
    Pending(String),
    #[error("committed, but hooks failed: {0}")]
    Hook(String),
    #[error("{0}")]
    Usage(String),
    #[error("refusing to use {path}: {why} (bundle-format.md §15, local users)")]
    UnsafeState { path: String, why: String },
    #[error("{path}: corrupt: {why}")]
    CorruptState { path: String, why: String },
    #[error("the target cannot hold the bundle's extended attributes:\n{}", .0.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n"))]
    Unsupported(Vec<String>),
    #[error("bundle is encrypted to {recipients} recipient(s); this target holds no matching identity (looked in {looked_in})")]
    NoIdentity { recipients: usize, looked_in: String },
    /// `update`: no chain of bundles in the index leads from the installed version to the goal.
    #[error("no update path: {0}")]
    NoPath(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn exit(&self) -> Exit {
        match self {
            Error::Bundle(bundle::Error::Io(_)) => Exit::Io,
            Error::Bundle(_) | Error::BadPart(_) => Exit::BadBundle,
            Error::Drift(_) => Exit::BaseMismatch,
            Error::Version(_) => Exit::VersionRefused,
            Error::Policy(_) => Exit::Policy,
            Error::Io { source, .. } if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                Exit::NoSpace
            }
            Error::Io { source, .. } if source.raw_os_error() == Some(rustix::io::Errno::FBIG.raw_os_error()) => {
                Exit::NoSpace
            }
            Error::Io { source, .. } if crate::xattrs::is_unsupported(source) => Exit::Unsupported,
            Error::Io { .. } => Exit::Io,
            Error::NoSpace { .. } => Exit::NoSpace,
            Error::Locked(_) => Exit::Locked,
            Error::Pending(_) => Exit::Pending,
            Error::Hook(_) => Exit::HookFailed,
            Error::Usage(_) => Exit::Usage,
            Error::UnsafeState { .. } => Exit::UnsafeState,
            Error::CorruptState { .. } => Exit::CorruptState,
            Error::Unsupported(_) => Exit::Unsupported,
            Error::NoIdentity { .. } => Exit::NoIdentity,
            Error::NoPath(_) => Exit::NoUpdatePath,
            Error::Internal(_) => Exit::Failure,
        }
    }
}

/// Why a bundle's version was refused (exit 5): rollback protection and the base version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionRefusal {
    #[error("bundle version {bundle} is not newer than the installed version {installed}")]
    NotNewer { bundle: u64, installed: u64 },
    #[error("bundle is built for version {built_for}, the target is at version {installed}")]
    OtherBase { built_for: u64, installed: u64 },
    #[error("this bundle is already installed (apply would do nothing)")]
    AlreadyInstalled,
}

/// Attach an operation and a path to an I/O error.
pub trait Ctx<T> {
    fn ctx(self, op: &'static str, path: impl std::fmt::Display) -> Result<T, Error>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl std::fmt::Display) -> Result<T, Error> {
        self.map_err(|source| Error::Io { op, path: path.to_string(), source })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl<T> Ctx<T> for std::result::Result<T, rustix::io::Errno> {
    fn ctx(self, op: &'static str, path: impl std::fmt::Display) -> Result<T, Error> {
        self.map_err(|e| Error::Io { op, path: path.to_string(), source: e.into() })
    }
}
