//! The transaction journal: an append-only file of records, each durable (written and fsynced)
//! before the phase it announces begins. Resume reads it to know where an interrupted apply
//! stands (bundle-format.md, "Journal and resume").
//!
//! Record framing: `u32 LE length | CBOR record | BLAKE3 of the CBOR (32 bytes)`. A torn or
//! corrupt tail (power cut mid-append) ends the journal: everything before it is valid because
//! every earlier append was fsynced before anything that depends on it happened.

use crate::error::{Ctx, Result};
use crate::state::Dir;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A transaction for bundle `bundle_id` read from `bundle_path` started; the manifest and
    /// signatures are saved beside the journal; the live tree is unchanged.
    Begin {
        bundle_id: bundle::Hash,
        #[serde(with = "serde_bytes")]
        bundle_path: Vec<u8>,
    },
    /// A work directory (staging and backups) is in use for mount `dev`; `path` is relative to
    /// the target root, or `None` for `TXN/work`. `id` is the `(st_dev, st_ino)` of the directory
    /// this applier created there (absent in journals of older versions): every later open
    /// checks it, so a directory put in its place by someone else is never used.
    WorkDir {
        dev: u64,
        path: Option<bundle::BundlePath>,
        #[serde(default)]
        id: Option<(u64, u64)>,
    },
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

/// Name of the journal in a transaction directory.
pub const JOURNAL: &str = "journal";

/// The largest journal read back (a few records per transaction and work directory).
const MAX_JOURNAL: u64 = 16 << 20;

pub struct Journal {
    path: String,
    file: File,
}

impl Journal {
    /// Open (creating if needed) for appending.
    pub fn open(dir: &Dir) -> Result<Journal> {
        Ok(Journal { path: dir.show(JOURNAL), file: dir.open_append(JOURNAL)? })
    }

    /// Append a record and make it durable.
    pub fn append(&mut self, r: &Record) -> Result<()> {
        let mut cbor = Vec::new();
        ciborium::into_writer(r, &mut cbor).map_err(|e| crate::error::Error::Internal(e.to_string()))?;
        let mut buf = Vec::with_capacity(cbor.len() + 36);
        buf.extend_from_slice(&(cbor.len() as u32).to_le_bytes());
        buf.extend_from_slice(&cbor);
        buf.extend_from_slice(blake3::hash(&cbor).as_bytes());
        self.file.write_all(&buf).ctx("write journal", &self.path)?;
        self.file.sync_all().ctx("fsync journal", &self.path)?;
        crate::failpoint::hit("journal");
        Ok(())
    }
}

/// Read every valid record; stops at the first torn or corrupt one.
pub fn read(dir: &Dir) -> Result<Vec<Record>> {
    let Some(data) = dir.read(JOURNAL, MAX_JOURNAL)? else { return Ok(Vec::new()) };
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
