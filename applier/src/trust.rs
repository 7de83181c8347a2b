//! The trust policy of a target: keys from `--trust` (a `.pub` file, or a directory of `.pub`
//! files with an optional `policy` file), plus rotations accepted from earlier bundles, which the
//! applier keeps in `STATE/trust/` (bundle-format.md, "Trust policy" and "Key rotation").

use crate::error::{Ctx, Error, Result};
use crate::state::write_atomic;
use bundle::sig::{PublicKey, TrustPolicy};
use std::path::Path;

/// Load the operator's trust (file or directory) and merge the rotations recorded in `state_trust`.
pub fn load(trust: &Path, state_trust: Option<&Path>) -> Result<TrustPolicy> {
    let mut p = TrustPolicy { threshold: 1, ..Default::default() };
    let md = std::fs::metadata(trust).ctx("read trust", trust.display())?;
    if md.is_dir() {
        load_dir(&mut p, trust)?;
    } else {
        let text = std::fs::read_to_string(trust).ctx("read trust key", trust.display())?;
        p.keys.push(PublicKey::parse(&text).map_err(|e| Error::Usage(format!("{}: {e}", trust.display())))?);
    }
    if let Some(st) = state_trust {
        if st.is_dir() {
            load_dir(&mut p, st)?;
        }
    }
    if p.keys.is_empty() {
        return Err(Error::Usage(format!("no trusted keys (*.pub) in {}", trust.display())));
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
            let k = PublicKey::parse(&text).map_err(|e| Error::Usage(format!("{}: {e}", f.display())))?;
            if !p.keys.contains(&k) {
                p.keys.push(k);
            }
        } else if f.file_name().is_some_and(|n| n == "policy") {
            let text = std::fs::read_to_string(&f).ctx("read trust policy", f.display())?;
            p.apply_policy_text(&f.display().to_string(), &text)?;
        }
    }
    Ok(())
}

/// Record a rotation carried by an applied bundle in `state_trust`: new keys as `.pub` files,
/// retirements and threshold appended to `policy`.
pub fn record_rotation(state_trust: &Path, r: &bundle::Rotation) -> Result<()> {
    std::fs::create_dir_all(state_trust).ctx("create", state_trust.display())?;
    for k in &r.add {
        let pk = PublicKey::from_bytes(k.0)?;
        write_atomic(&state_trust.join(format!("{}.pub", pk.id)), pk.to_text().as_bytes())?;
    }
    let pol = state_trust.join("policy");
    let mut text = std::fs::read_to_string(&pol).unwrap_or_default();
    for id in &r.retire {
        text.push_str(&format!("retire {id}\n"));
    }
    if let Some(t) = r.threshold {
        text.push_str(&format!("threshold {t}\n"));
    }
    write_atomic(&pol, text.as_bytes())
}
