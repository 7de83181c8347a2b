//! The applier's state directory (default `TARGET/.ferry`):
//!
//! ```text
//! lock             flock()ed by the one running applier
//! state.json       installed version, channel, bundle id, time, hooks, kept config files
//! trust/           keys and policy lines accepted from rotations in applied bundles
//! txn/             the transaction in progress: manifest.cbor, signatures.cbor, journal,
//!                  oldmeta.cbor, state-before.json, work/{stage,backup}/
//! prev/            the last completed transaction, kept for one-level rollback
//! hooks.log        output of post-commit hooks
//! ```
//! Every file here is replaced atomically: written to a temporary name, fsynced, renamed, and the
//! directory fsynced.

use crate::error::{Ctx, Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of the state file's JSON shape.
pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookResult {
    pub glob: String,
    pub command: String,
    /// "ok", "failed (exit N)", "timed out", "skipped (--no-hooks)".
    pub result: String,
    pub ok: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub state_version: u32,
    pub version: Option<u64>,
    pub channel: Option<String>,
    pub bundle_id: Option<String>,
    /// Seconds since the epoch when the installed version was committed.
    pub applied_at: Option<u64>,
    #[serde(default)]
    pub hooks: Vec<HookResult>,
    /// Config files whose local edits were kept; the bundle's version is at `PATH.ferry-new`.
    #[serde(default)]
    pub conffiles_kept: Vec<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub owners_applied: bool,
}

pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(dir: PathBuf) -> Paths {
        Paths { dir }
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn txn(&self) -> PathBuf {
        self.dir.join("txn")
    }
    pub fn prev(&self) -> PathBuf {
        self.dir.join("prev")
    }
    pub fn trust(&self) -> PathBuf {
        self.dir.join("trust")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn hooks_log(&self) -> PathBuf {
        self.dir.join("hooks.log")
    }
}

pub fn load(p: &Path) -> Result<State> {
    match std::fs::read(p) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| Error::Internal(format!("{}: corrupt state file: {e}", p.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(State { state_version: STATE_VERSION, ..Default::default() })
        }
        Err(e) => Err(e).ctx("read state", p.display()),
    }
}

pub fn save(p: &Path, s: &State) -> Result<()> {
    let mut b = serde_json::to_vec_pretty(s).map_err(|e| Error::Internal(e.to_string()))?;
    b.push(b'\n');
    write_atomic(p, &b)
}

/// Write `data` to `p` atomically and durably.
pub fn write_atomic(p: &Path, data: &[u8]) -> Result<()> {
    let tmp = p.with_extension("tmp");
    let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&tmp).ctx("create", tmp.display())?;
    f.write_all(data).ctx("write", tmp.display())?;
    f.sync_all().ctx("fsync", tmp.display())?;
    std::fs::rename(&tmp, p).ctx("rename", p.display())?;
    fsync_dir(p.parent().unwrap_or(Path::new(".")))
}

pub fn fsync_dir(d: &Path) -> Result<()> {
    File::open(d).and_then(|f| f.sync_all()).ctx("fsync directory", d.display())
}

/// Take the target's lock; fails at once if another applier holds it.
pub fn lock(paths: &Paths) -> Result<File> {
    std::fs::create_dir_all(&paths.dir).ctx("create state directory", paths.dir.display())?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.lock())
        .ctx("open lock", paths.lock().display())?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Locked(paths.lock().display().to_string())),
        Err(e) => Err(std::io::Error::from(e)).ctx("lock", paths.lock().display()),
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
