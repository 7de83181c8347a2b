//! The transaction journal: an append-only file of records, each durable (written and fsynced)
//! before the phase it announces begins. Resume reads it to know where an interrupted apply
//! stands (bundle-format.md, "Journal and resume").
//!
//! Record framing: `u32 LE length | CBOR record | BLAKE3 of the CBOR (32 bytes)`. A torn or
//! corrupt tail (power cut mid-append) ends the journal: everything before it is valid because
//! every earlier append was fsynced before anything that depends on it happened.

use crate::error::{Ctx, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A transaction for bundle `bundle_id` read from `bundle_path` started; the manifest and
    /// signatures are saved beside the journal; the live tree is unchanged.
    Begin {
        bundle_id: bundle::Hash,
        #[serde(with = "serde_bytes")]
        bundle_path: Vec<u8>,
    },
    /// A work directory (staging and backups) is in use for device `dev`; `path` is relative to
    /// the target root, or `None` for `TXN/work`.
    WorkDir { dev: u64, path: Option<bundle::BundlePath> },
    /// Every staged object is complete, verified and durable; the bundle is no longer needed.
    Staged,
    /// Commit aborted by an error: roll back to OLD (resume continues the rollback).
    Abort { reason: String },
    /// Every step is done and durable; what remains is bookkeeping and hooks.
    Committed,
    /// Hooks ran (or were skipped); results are in the state file.
    HooksDone,
    /// Rollback of a completed apply started (journal of `prev`).
    RollbackBegin,
    /// Rollback finished and is durable.
    RolledBack,
}

pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Open (creating if needed) for appending.
    pub fn open(path: &Path) -> Result<Journal> {
        let file = OpenOptions::new().create(true).append(true).open(path).ctx("open journal", path.display())?;
        Ok(Journal { path: path.to_path_buf(), file })
    }

    /// Append a record and make it durable.
    pub fn append(&mut self, r: &Record) -> Result<()> {
        let mut cbor = Vec::new();
        ciborium::into_writer(r, &mut cbor).map_err(|e| crate::error::Error::Internal(e.to_string()))?;
        let mut buf = Vec::with_capacity(cbor.len() + 36);
        buf.extend_from_slice(&(cbor.len() as u32).to_le_bytes());
        buf.extend_from_slice(&cbor);
        buf.extend_from_slice(blake3::hash(&cbor).as_bytes());
        self.file.write_all(&buf).ctx("write journal", self.path.display())?;
        self.file.sync_all().ctx("fsync journal", self.path.display())?;
        crate::failpoint::hit("journal");
        Ok(())
    }
}

/// Read every valid record; stops at the first torn or corrupt one.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data).ctx("read journal", path.display())?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("open journal", path.display()),
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    while data.len() >= at + 4 {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let Some(end) = at.checked_add(4 + len + 32).filter(|&e| e <= data.len()) else { break };
        let cbor = &data[at + 4..at + 4 + len];
        if blake3::hash(cbor).as_bytes() != &data[at + 4 + len..end] {
            break;
        }
        match ciborium::from_reader::<Record, _>(cbor) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        at = end;
    }
    Ok(out)
}
