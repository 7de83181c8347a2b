//! `ferry-apply inbox DIR`: resume any interrupted apply, then apply every applicable bundle in
//! DIR in version order (a chain v1→v2→v3 on one stick), skipping the rest with a reason.

use crate::apply::{self, Options};
use crate::error::{Error, Result};
use crate::state;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize)]
pub struct Item {
    pub bundle: String,
    pub version: Option<u64>,
    /// "applied", "skipped", "failed".
    pub outcome: String,
    pub reason: String,
    pub exit_code: u8,
}

#[derive(Debug, Serialize)]
pub struct InboxReport {
    pub resumed: String,
    pub items: Vec<Item>,
    pub failed: usize,
}

/// The inbox's bundles (first parts of split bundles stand for the set), and the entries skipped
/// because they are not regular files (a FIFO would block a reader, a symlink could point
/// anywhere; whoever can write the inbox may have put them there).
/// An inbox entry skipped, and why.
type Skipped = (PathBuf, &'static str);

fn candidates(dir: &Path) -> Result<(Vec<PathBuf>, Vec<Skipped>)> {
    let mut v = Vec::new();
    let mut skipped = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::Io {
        op: "read inbox",
        path: dir.display().to_string(),
        source: e,
    })? {
        let Ok(e) = e else { continue };
        let p = e.path();
        // Parts of a split bundle are read through their first part.
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext.len() == 3 && ext.bytes().all(|b| b.is_ascii_digit()) && ext != "000" {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_file() => v.push(p),
            Ok(t) if t.is_dir() => {}
            Ok(t) if t.is_symlink() => skipped.push((p, "a symlink, not a regular file")),
            _ => skipped.push((p, "not a regular file (FIFO, socket or device)")),
        }
    }
    v.sort();
    skipped.sort();
    Ok((v, skipped))
}

pub fn inbox(o: &Options, dir: &Path) -> Result<InboxReport> {
    let resumed = apply::resume(o)?.result;
    let sd = apply::open_state(o)?;
    let trust = apply::load_trust(o, sd.as_ref())?;
    let keys = crate::unseal::Keyring::load(&o.identities, sd.as_ref())?;
    let mut items = Vec::new();
    let mut heads = Vec::new();
    let (paths, skipped) = candidates(dir)?;
    for (p, why) in skipped {
        items.push(Item {
            bundle: p.display().to_string(),
            version: None,
            outcome: "skipped".into(),
            reason: why.into(),
            exit_code: 0,
        });
    }
    for p in paths {
        let name = p.display().to_string();
        let res = crate::source::open(&p).and_then(|src| {
            let mut r = bundle::container::Reader::new(src.reader, o.limits.clone());
            crate::verify::head(&mut r, Some(&trust), &o.limits).map_err(crate::source::explain)
        });
        match res {
            Ok(h) => heads.push((h.manifest.version, p, h)),
            Err(Error::Bundle(bundle::Error::Untrusted { .. })) => items.push(Item {
                bundle: name,
                version: None,
                outcome: "skipped".into(),
                reason: "not signed by the keys this target trusts (foreign bundle)".into(),
                exit_code: 0,
            }),
            Err(Error::Bundle(bundle::Error::NotABundle)) => {}
            Err(e) => items.push(Item {
                bundle: name,
                version: None,
                outcome: "failed".into(),
                reason: e.to_string(),
                exit_code: e.exit() as u8,
            }),
        }
    }
    heads.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    for (v, p, h) in heads {
        let st = match &sd {
            Some(d) => state::load(d, state::STATE_FILE)?,
            None => state::State::default(),
        };
        let name = p.display().to_string();
        let skip = |reason: String| Item {
            bundle: name.clone(),
            version: Some(v),
            outcome: "skipped".into(),
            reason,
            exit_code: 0,
        };
        if st.bundle_id.as_deref() == Some(&h.id.to_hex()) {
            items.push(skip("already installed".into()));
            continue;
        }
        if !crate::unseal::can_open(&h.manifest, &keys) {
            // A stick may carry bundles for several targets, each encrypted to its own.
            let n = crate::unseal::recipients(&h).unwrap_or(0);
            items.push(skip(format!(
                "encrypted to {n} recipient(s), none of them this target (no matching identity in {})",
                keys.looked_in()
            )));
            continue;
        }
        if let Some(iv) = st.version {
            if v <= iv {
                items.push(skip(format!("stale: version {v} is not newer than the installed {iv}")));
                continue;
            }
            if let Some(bv) = h.manifest.base.as_ref().and_then(|b| b.version) {
                if bv != iv {
                    items.push(skip(format!("not applicable: built for version {bv}, the target is at {iv}")));
                    continue;
                }
            }
        }
        if let Err(e @ Error::Policy(_)) = apply::check_policy(o, &st, &h) {
            items.push(skip(e.to_string()));
            continue;
        }
        match apply::apply(o, &p) {
            Ok(r) => items.push(Item {
                bundle: name,
                version: Some(v),
                outcome: "applied".into(),
                reason: r.result,
                exit_code: 0,
            }),
            Err(e) => items.push(Item {
                bundle: name,
                version: Some(v),
                outcome: "failed".into(),
                reason: e.to_string(),
                exit_code: e.exit() as u8,
            }),
        }
    }
    let failed = items.iter().filter(|i| i.outcome == "failed").count();
    Ok(InboxReport { resumed, items, failed })
}
