//! `ferry-apply status`: what is installed, what an interrupted run left and what resume will do,
//! what rollback would restore, the last error and hook results. Read-only; takes no lock.

use crate::apply::{open_state, Options};
use crate::error::Result;
use crate::journal::Record;
use crate::state::{self, State};
use crate::txn::Txn;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Pending {
    pub phase: String,
    pub version: u64,
    pub bundle_id: String,
    pub bundle_path: Option<String>,
    pub resume_will: String,
}

#[derive(Debug, Serialize)]
pub struct Kept {
    pub version: u64,
    pub bundle_id: String,
    pub rollback_restores: String,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub installed: State,
    pub pending: Option<Pending>,
    pub rollback: Option<Kept>,
}

pub fn status(o: &Options) -> Result<Status> {
    let Some(d) = open_state(o)? else {
        return Ok(Status {
            installed: State { state_version: state::STATE_VERSION, ..Default::default() },
            pending: None,
            rollback: None,
        });
    };
    let installed = state::load(&d, state::STATE_FILE)?;
    let pending = match Txn::load(&d, state::TXN, &o.limits, None, None)? {
        None => None,
        Some(t) => {
            let bp = t.bundle_path().map(|p| p.display().to_string());
            let (phase, will) = if t.has_abort() {
                ("rolling back a failed commit", "finish restoring the previous version".to_string())
            } else if t.has(&Record::Committed) {
                ("finishing", "record the new version, run hooks, keep backups for rollback".to_string())
            } else if t.has(&Record::Staged) {
                ("committing", "finish the commit from the staged files (the bundle is not needed)".to_string())
            } else if t.frames_verified().unwrap_or(false) {
                (
                    "staging",
                    format!(
                        "keep verified staged files, re-read the bundle at {} (or --bundle) only if a file is left to stage, then commit",
                        bp.clone().unwrap_or_default()
                    ),
                )
            } else {
                (
                    "staging",
                    format!(
                        "re-read the bundle at {} (or --bundle), checking every frame, keep verified staged files, then commit",
                        bp.clone().unwrap_or_default()
                    ),
                )
            };
            Some(Pending {
                phase: phase.into(),
                version: t.head.manifest.version,
                bundle_id: t.head.id.to_hex(),
                bundle_path: bp,
                resume_will: will,
            })
        }
    };
    let rollback = match Txn::load(&d, state::PREV, &o.limits, None, None)? {
        Some(t) if !t.has(&Record::RolledBack) => {
            let before = state::load(&t.dir, "state-before.json").ok().and_then(|s| s.version);
            Some(Kept {
                version: t.head.manifest.version,
                bundle_id: t.head.id.to_hex(),
                rollback_restores: match before {
                    Some(v) => format!("version {v}"),
                    None => "the tree as it was before the first ferry apply".into(),
                },
            })
        }
        _ => None,
    };
    Ok(Status { installed, pending, rollback })
}
