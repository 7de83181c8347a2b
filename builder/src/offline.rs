//! The offline side of signing (bundle-format.md §3.5): `ferry-build sign-request` checks a
//! signing request, shows a summary of the bundle that it derives itself from the manifest the
//! request carries, signs the request's message and writes a detached signature file; and
//! `ferry-build pubkey`, which writes a ferry public-key file for a secret key or an external
//! signer.
//!
//! The summary is derived from the very bytes whose hash is signed, never read from the request
//! as text: what the operator sees is what the signature covers. It leads with what matters most
//! to a signer: a key rotation (which changes what every target trusts), hooks (commands run as
//! root), then versions, channel, times and sizes.

use crate::error::{Error, Result};
use crate::signer::Signer;
use bundle::request::{DetachedSignature, SigningRequest};
use bundle::sig::{self, PublicKey};
use bundle::{Kind, Limits, Manifest};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// What a signer is shown of a bundle before signing it.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub bundle_id: String,
    pub format: u32,
    pub version: u64,
    /// `None` for a full bundle.
    pub base: Option<BaseSummary>,
    pub channel: String,
    pub created: u64,
    pub expires: Option<u64>,
    pub entries: usize,
    pub entries_by_type: BTreeMap<&'static str, u64>,
    pub old_entries: usize,
    pub steps: usize,
    pub steps_by_op: BTreeMap<String, u64>,
    pub frames: usize,
    /// Compressed payload bytes (the bundle's frames).
    pub payload_bytes: u64,
    /// Bytes of NEW files the bundle lists.
    pub new_file_bytes: u64,
    pub manifest_bytes: usize,
    pub config_files: usize,
    pub hooks: Vec<HookSummary>,
    pub rotation: Option<RotationSummary>,
    /// An encrypted bundle (bundle-format.md §4.10): the number of recipients. Its entries,
    /// script, hooks and any key rotation are inside the encrypted inner manifest, so the
    /// summary cannot show them.
    pub encrypted_to: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BaseSummary {
    pub version: Option<u64>,
    pub tree: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct HookSummary {
    pub glob: String,
    pub command: String,
    pub timeout_secs: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct RotationSummary {
    /// Key ids the targets trust from now on.
    pub add: Vec<String>,
    /// Key ids the targets refuse from now on.
    pub retire: Vec<String>,
    pub threshold: Option<u32>,
}

/// The summary of the manifest `m` whose member is `manifest_bytes`.
pub fn summarize(m: &Manifest, manifest_bytes: &[u8]) -> Summary {
    let mut by_type: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut config_files = 0;
    let mut new_file_bytes = 0;
    for e in &m.entries {
        *by_type.entry(e.kind.name()).or_default() += 1;
        if let Kind::File { size, config, .. } = &e.kind {
            new_file_bytes += size;
            config_files += usize::from(*config);
        }
    }
    let mut by_op: BTreeMap<String, u64> = BTreeMap::new();
    for s in &m.script {
        *by_op.entry(format!("{:?}", s.op)).or_default() += 1;
    }
    Summary {
        bundle_id: Manifest::id(manifest_bytes).to_hex(),
        format: m.format,
        version: m.version,
        base: m.base.as_ref().map(|b| BaseSummary { version: b.version, tree: b.tree.to_hex() }),
        channel: m.channel.clone(),
        created: m.created,
        expires: m.expires,
        entries: m.entries.len(),
        entries_by_type: by_type,
        old_entries: m.old.len(),
        steps: m.script.len(),
        steps_by_op: by_op,
        frames: m.frames.len(),
        payload_bytes: m.frames.iter().map(|f| f.size).sum(),
        new_file_bytes,
        manifest_bytes: manifest_bytes.len(),
        config_files,
        hooks: m
            .hooks
            .iter()
            .map(|h| HookSummary { glob: h.glob.clone(), command: h.command.clone(), timeout_secs: h.timeout_secs })
            .collect(),
        rotation: m.rotation.as_ref().map(|r| RotationSummary {
            add: r.add.iter().map(|k| sig::key_id(&k.0)).collect(),
            retire: r.retire.clone(),
            threshold: r.threshold,
        }),
        encrypted_to: m.sealed.as_ref().map(|s| s.recipients.len()),
    }
}

/// Unix seconds as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Control characters of untrusted text (channel, hook commands) escaped for a terminal.
fn show(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}

/// The summary as text for a human about to sign.
pub fn summary_text(s: &Summary) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!("bundle {}", s.bundle_id));
    if let Some(n) = s.encrypted_to {
        line(format!(
            "ENCRYPTED to {n} recipient(s): its paths, apply script, hooks and any KEY ROTATION are \
             encrypted and NOT shown below; sign only if you trust the build that made it"
        ));
    }
    match &s.rotation {
        Some(r) => {
            line("KEY ROTATION: signing this changes which keys every target that applies it trusts:".into());
            for k in &r.add {
                line(format!("  trust from now on:  key {k}"));
            }
            for k in &r.retire {
                line(format!("  refuse from now on: key {}", show(k)));
            }
            if let Some(t) = r.threshold {
                line(format!("  signatures needed from now on: {t}"));
            }
        }
        None => line("key rotation: none".into()),
    }
    if s.hooks.is_empty() {
        line("hooks: none".into());
    }
    for h in &s.hooks {
        line(format!(
            "hook: when {} changes, run as the applier (root): {} (timeout {} s)",
            show(&h.glob),
            show(&h.command),
            h.timeout_secs
        ));
    }
    line(format!("format {}, version {}, channel {}", s.format, s.version, show(&s.channel)));
    match &s.base {
        Some(b) => line(format!(
            "delta bundle: applies to version {} (tree {})",
            b.version.map(|v| v.to_string()).unwrap_or_else(|| "unspecified".into()),
            b.tree
        )),
        None => line("full bundle: builds the whole tree from an empty directory".into()),
    }
    line(format!("created {} ({})", utc(s.created), s.created));
    line(match s.expires {
        Some(e) => format!("expires {} ({e})", utc(e)),
        None => "expires never".into(),
    });
    let types: Vec<String> = s.entries_by_type.iter().map(|(k, v)| format!("{v} {k}")).collect();
    line(format!(
        "entries listed: {} ({}); {} config files; expected OLD entries: {}",
        s.entries,
        types.join(", "),
        s.config_files,
        s.old_entries
    ));
    let ops: Vec<String> = s.steps_by_op.iter().map(|(k, v)| format!("{v} {k}")).collect();
    line(format!("apply script: {} steps ({})", s.steps, ops.join(", ")));
    line(format!(
        "payload: {} frames, {} bytes compressed; NEW file bytes listed: {}; manifest {} bytes",
        s.frames, s.payload_bytes, s.new_file_bytes, s.manifest_bytes
    ));
    out.pop();
    out
}

/// Read and check a signing request: size bound, format, id and message, then the manifest it
/// carries decodes within the default limits (the same checks as the applier's).
pub fn read_request(path: &Path) -> Result<(SigningRequest, Manifest, Summary)> {
    let limits = Limits::default();
    let max = SigningRequest::max_bytes(&limits);
    let f = File::open(path).map_err(Error::io(path))?;
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes).map_err(Error::io(path))?;
    let bad = |source: bundle::Error| Error::Bundle { path: path.to_path_buf(), source };
    let req = SigningRequest::decode(&bytes, &limits).map_err(bad)?;
    let m = Manifest::decode(&req.manifest, &limits).map_err(|e| {
        bad(bundle::Error::Request(format!("the manifest it carries is not a valid ferry manifest: {e}")))
    })?;
    bundle::script::validate(&m).map_err(bad)?;
    let s = summarize(&m, &req.manifest);
    Ok((req, m, s))
}

/// Sign the request's message with `signer` and write the detached signature file `out` (which
/// must not exist). Returns the signature.
pub fn sign_request(req: &SigningRequest, signer: &Signer, out: &Path) -> Result<(DetachedSignature, PublicKey)> {
    let (pk, s) = signer.sign(&req.message())?;
    let d = DetachedSignature { bundle_id: req.id, key: pk.bytes, signature: s };
    crate::sign::write_new(out, d.to_text().as_bytes())?;
    Ok((d, pk))
}

/// `ferry-build pubkey`: have `signer` sign the fixed key-check message, check the signature,
/// and write its public key to `out` (which must not exist).
pub fn pubkey(signer: &Signer, out: &Path) -> Result<PublicKey> {
    let (pk, _) = signer.sign(&sig::key_check_message())?;
    let pk = PublicKey::from_bytes(pk.bytes).map_err(|source| Error::Key { path: out.to_path_buf(), source })?;
    crate::keys::create_new(out, 0o644, &pk.to_text())?;
    Ok(pk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn rotation_and_hooks_lead_the_summary() {
        let mut m = Manifest {
            format: bundle::FORMAT_VERSION,
            version: 7,
            base: None,
            channel: "stable\x1b[2J".into(),
            created: 1_700_000_000,
            expires: None,
            entries: vec![],
            old: vec![],
            frames: vec![],
            script: vec![],
            hooks: vec![bundle::Hook { glob: "bin/*".into(), command: "systemctl restart x".into(), timeout_secs: 9 }],
            rotation: Some(bundle::Rotation {
                add: vec![bundle::Hash([9; 32])],
                retire: vec!["0123456789abcdef".into()],
                threshold: Some(2),
            }),
            xattr_namespaces: vec![],
            xattr_sets: vec![],
            tagged_digest: None,
            sealed: None,
        };
        let t = summary_text(&summarize(&m, b"member"));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("KEY ROTATION"), "{t}");
        assert!(t.contains(&format!("trust from now on:  key {}", sig::key_id(&[9; 32]))), "{t}");
        assert!(t.contains("refuse from now on: key 0123456789abcdef"), "{t}");
        assert!(t.contains("signatures needed from now on: 2"), "{t}");
        assert!(t.contains("run as the applier (root): systemctl restart x"), "{t}");
        assert!(!t.contains('\x1b'), "control characters are escaped: {t}");
        m.rotation = None;
        assert!(summary_text(&summarize(&m, b"member")).contains("key rotation: none"));
    }
}
