//! The trust policy of a target: keys from `--trust` (a `.pub` file, or a directory of `.pub`
//! files with an optional `policy` file), plus rotations accepted from earlier bundles, which the
//! applier keeps in `STATE/trust/` (bundle-format.md, "Trust policy" and "Key rotation").
//!
//! Each apply also records the operator's policy in `STATE/trusted`, so that a `resume` with no
//! `--trust` (as boot units run it) re-verifies a pending transaction against the policy it was
//! started under, and never completes one that policy would not have accepted.

use crate::error::{Ctx, Error, Result};
use crate::state::{self, Dir};
use bundle::sig::{PublicKey, TrustPolicy};
use std::path::Path;

/// The largest key or policy file read.
const MAX_TRUST_FILE: u64 = 1 << 20;

/// Load the operator's trust (file or directory) and merge the rotations recorded in the state
/// directory, if given.
pub fn load(trust: &Path, state: Option<&Dir>) -> Result<TrustPolicy> {
    let mut p = TrustPolicy { threshold: 1, ..Default::default() };
    let md = std::fs::metadata(trust).ctx("read trust", trust.display())?;
    if md.is_dir() {
        load_dir(&mut p, trust)?;
    } else {
        let text = std::fs::read_to_string(trust).ctx("read trust key", trust.display())?;
        p.keys.push(PublicKey::parse(&text).map_err(|e| Error::Usage(format!("{}: {e}", trust.display())))?);
    }
    if p.keys.is_empty() {
        return Err(Error::Usage(format!("no trusted keys (*.pub) in {}", trust.display())));
    }
    if let Some(st) = state {
        merge_rotations(&mut p, st)?;
    }
    Ok(p)
}

fn load_dir(p: &mut TrustPolicy, dir: &Path) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .ctx("read trust directory", dir.display())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    for f in names {
        if f.extension().is_some_and(|e| e == "pub") {
            let text = std::fs::read_to_string(&f).ctx("read trust key", f.display())?;
            add_key(p, &f.display().to_string(), &text)?;
        } else if f.file_name().is_some_and(|n| n == "policy") {
            let text = std::fs::read_to_string(&f).ctx("read trust policy", f.display())?;
            p.apply_policy_text(&f.display().to_string(), &text)?;
        }
    }
    Ok(())
}

fn add_key(p: &mut TrustPolicy, file: &str, text: &str) -> Result<()> {
    let k = PublicKey::parse(text).map_err(|e| Error::Usage(format!("{file}: {e}")))?;
    if !p.keys.contains(&k) {
        p.keys.push(k);
    }
    Ok(())
}

/// Merge the rotations of `STATE/trust/` (read through the checked state directory).
fn merge_rotations(p: &mut TrustPolicy, state: &Dir) -> Result<()> {
    let Some(d) = state.subdir(state::TRUST, false)? else { return Ok(()) };
    for name in d.list()? {
        if name.ends_with(".pub") {
            if let Some(b) = d.read(&name, MAX_TRUST_FILE)? {
                add_key(p, &d.show(&name), &String::from_utf8_lossy(&b))?;
            }
        } else if name == "policy" {
            if let Some(b) = d.read(&name, MAX_TRUST_FILE)? {
                p.apply_policy_text(&d.show(&name), &String::from_utf8_lossy(&b))?;
            }
        }
    }
    Ok(())
}

/// Record the operator's policy (before the rotations are merged) in `STATE/trusted`: one public
/// key line per key, then the policy lines.
pub fn record(state: &Dir, operator: &TrustPolicy) -> Result<()> {
    let mut text = String::new();
    for k in &operator.keys {
        text.push_str(&k.to_text());
    }
    text.push_str(&format!("threshold {}\n", operator.threshold.max(1)));
    for id in &operator.retired {
        text.push_str(&format!("retire {id}\n"));
    }
    state.write_atomic(state::TRUSTED, text.as_bytes())
}

/// The policy recorded by the last apply, with the rotations merged; `None` if none was recorded
/// (a state directory of an older ferry-apply).
pub fn recorded(state: &Dir) -> Result<Option<TrustPolicy>> {
    let Some(b) = state.read(state::TRUSTED, MAX_TRUST_FILE)? else { return Ok(None) };
    let text = String::from_utf8_lossy(&b);
    let mut p = TrustPolicy { threshold: 1, ..Default::default() };
    let mut policy = String::new();
    for line in text.lines() {
        if line.starts_with("ferry-public-key-") {
            add_key(&mut p, &state.show(state::TRUSTED), line)?;
        } else {
            policy.push_str(line);
            policy.push('\n');
        }
    }
    p.apply_policy_text(&state.show(state::TRUSTED), &policy)?;
    if p.keys.is_empty() {
        return Err(Error::CorruptState { path: state.show(state::TRUSTED), why: "no keys".into() });
    }
    merge_rotations(&mut p, state)?;
    Ok(Some(p))
}

/// Record a rotation carried by an applied bundle in `STATE/trust/`: new keys as `.pub` files,
/// retirements and threshold appended to `policy`.
pub fn record_rotation(state: &Dir, r: &bundle::Rotation) -> Result<()> {
    let Some(d) = state.subdir(state::TRUST, true)? else {
        return Err(Error::Internal("trust directory not created".into()));
    };
    for k in &r.add {
        let pk = PublicKey::from_bytes(k.0)?;
        d.write_atomic(&format!("{}.pub", pk.id), pk.to_text().as_bytes())?;
    }
    let mut text =
        d.read("policy", MAX_TRUST_FILE)?.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    for id in &r.retire {
        text.push_str(&format!("retire {id}\n"));
    }
    if let Some(t) = r.threshold {
        text.push_str(&format!("threshold {t}\n"));
    }
    d.write_atomic("policy", text.as_bytes())
}
