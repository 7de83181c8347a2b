//! `ferry-apply inbox DIR`: resume any interrupted apply, then apply every applicable bundle in
//! DIR in version order (a chain v1→v2→v3 on one stick), skipping the rest with a reason.

use crate::apply::{self, Options};
use crate::error::{Error, Result};
use crate::state::{self, Dir};
use crate::verify::OpenBundle;
use bundle::sig::TrustPolicy;
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

/// An inbox entry skipped, and why.
type Skipped = (PathBuf, &'static str);

/// The inbox's bundles (first parts of split bundles stand for the set), and the entries skipped
/// because they are not regular files (a FIFO would block a reader, a symlink could point
/// anywhere; whoever can write the inbox may have put them there).
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

impl Item {
    fn skipped(bundle: String, version: Option<u64>, reason: String) -> Item {
        Item { bundle, version, outcome: "skipped".into(), reason, exit_code: 0 }
    }

    fn failed(bundle: String, version: Option<u64>, e: &Error) -> Item {
        Item { bundle, version, outcome: "failed".into(), reason: e.to_string(), exit_code: e.exit() as u8 }
    }
}

/// A bundle of the inbox whose head verified: (version, path, the bundle opened with its head
/// read, so that applying it reads each byte of it once).
type Verified = (u64, PathBuf, OpenBundle);

/// Resume, then: skip the entries that are not regular files, verify the head of every
/// candidate ([`verify_heads`]), and apply those that verified in version order, each checked
/// against the state the previous one left ([`apply_one`]).
pub fn inbox(o: &Options, dir: &Path) -> Result<InboxReport> {
    let resumed = apply::resume(o)?.result;
    let sd = apply::open_state(o)?;
    let trust = apply::load_trust(o, sd.as_ref())?;
    let keys = crate::unseal::Keyring::load(&o.identities, sd.as_ref())?;
    let (paths, skipped) = candidates(dir)?;
    let mut items: Vec<Item> =
        skipped.into_iter().map(|(p, why)| Item::skipped(p.display().to_string(), None, why.into())).collect();
    let mut heads = verify_heads(o, &trust, paths, &mut items);
    heads.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    for (v, p, b) in heads {
        items.push(apply_one(o, sd.as_ref(), &keys, v, &p, b)?);
    }
    let failed = items.iter().filter(|i| i.outcome == "failed").count();
    Ok(InboxReport { resumed, items, failed })
}

/// The bundles among `paths` whose head verifies against `trust`, each kept open after its head
/// (one open file per such bundle). Foreign bundles are listed in `items` as skipped and broken
/// ones as failed; files that are not bundles at all are left out.
fn verify_heads(o: &Options, trust: &TrustPolicy, paths: Vec<PathBuf>, items: &mut Vec<Item>) -> Vec<Verified> {
    let mut heads = Vec::new();
    for p in paths {
        let name = p.display().to_string();
        let res = OpenBundle::open(&p, &o.limits).and_then(|mut b| {
            b.trust(trust)?;
            let v = b.manifest(&o.limits)?.version;
            Ok((v, b))
        });
        match res {
            Ok((v, b)) => heads.push((v, p, b)),
            Err(Error::Bundle(bundle::Error::Untrusted { status })) => items.push(Item::skipped(
                name,
                None,
                format!("not signed by the keys this target trusts (foreign or not yet fully signed): {status}"),
            )),
            Err(Error::Bundle(bundle::Error::NotABundle)) => {}
            Err(e) => items.push(Item::failed(name, None, &e)),
        }
    }
    heads
}

/// Apply bundle `p` (version `v`, opened as `b`) unless the target's state as it is now makes it
/// already installed, stale, built for another version or refused by policy.
fn apply_one(
    o: &Options,
    sd: Option<&Dir>,
    keys: &crate::unseal::Keyring,
    v: u64,
    p: &Path,
    mut b: OpenBundle,
) -> Result<Item> {
    let st = match sd {
        Some(d) => state::load(d, state::STATE_FILE)?,
        None => state::State::default(),
    };
    let name = p.display().to_string();
    let id = b.id().to_hex();
    if let Some(reason) = skip_reason(o, &st, keys, v, &id, b.manifest(&o.limits)?) {
        return Ok(Item::skipped(name, Some(v), reason));
    }
    Ok(match apply::apply_open(o, p, b) {
        Ok(r) => Item { bundle: name, version: Some(v), outcome: "applied".into(), reason: r.result, exit_code: 0 },
        Err(e) => Item::failed(name, Some(v), &e),
    })
}

/// Why the target in state `st` skips bundle version `v` (id `id`, manifest `m`), if it does.
fn skip_reason(
    o: &Options,
    st: &state::State,
    keys: &crate::unseal::Keyring,
    v: u64,
    id: &str,
    m: &bundle::Manifest,
) -> Option<String> {
    if st.bundle_id.as_deref() == Some(id) {
        return Some("already installed".into());
    }
    if !crate::unseal::can_open(m, keys) {
        // A stick may carry bundles for several targets, each encrypted to its own.
        let n = m.sealed.as_ref().map_or(0, |s| s.recipients.len());
        return Some(format!(
            "encrypted to {n} recipient(s), none of them this target (no matching identity in {})",
            keys.looked_in()
        ));
    }
    if let Some(iv) = st.version {
        if v <= iv {
            return Some(format!("stale: version {v} is not newer than the installed {iv}"));
        }
        if let Some(bv) = m.base.as_ref().and_then(|b| b.version) {
            if bv != iv {
                return Some(format!("not applicable: built for version {bv}, the target is at {iv}"));
            }
        }
    }
    if let Err(e @ Error::Policy(_)) = apply::check_policy(o, st, m) {
        return Some(e.to_string());
    }
    None
}
