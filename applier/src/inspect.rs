//! `inspect`: what a bundle holds, read without a trusted key. The signatures are checked for
//! being well-formed and matching the bundle id; with a trust policy (`--trust`) each signer is
//! also reported as trusted, retired or unknown with the threshold's status, but the payload is
//! never read, so everything here is UNVERIFIED and is printed as such (its text is escaped
//! before it reaches a terminal, see [`crate::text`]).

use crate::error::Result;
use bundle::{Content, Kind, Limits, Manifest, Method};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

const NOTE: &str = "unverified: inspect checks that the signatures are well-formed and match the bundle id, and \
                    with --trust how the policy counts them, but never reads the payload; use `verify --trust`";
const DELTA_NOTE: &str = "a delta bundle lists only the NEW entries it changes or needs; unchanged paths are not \
                          listed, so counts and new_file_bytes cover the listed entries";
const FULL_NOTE: &str = "a full bundle lists every entry of NEW";
const SEALED_NOTE: &str = "the bundle is encrypted: its entries, paths, metadata, script and hooks are hidden (only \
                           the public fields and the frames are shown); give --identity FILE to open it";

/// The `inspect` report (its `--json` body; field names are part of the report contract).
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// Always false: no trusted key was checked.
    pub verified: bool,
    pub note: &'static str,
    pub signatures_valid: bool,
    /// Key ids of the signers (empty for an unsigned bundle or invalid signatures).
    pub signers: Vec<String>,
    /// With `--trust` and valid signatures: each signer's status and the threshold's.
    pub trust: Option<bundle::sig::TrustStatus>,
    pub bundle_id: String,
    /// The bundle is encrypted (bundle-format.md §4.10), to `recipients` recipients.
    pub encrypted: bool,
    pub recipients: Option<usize>,
    /// An `--identity` opened it: everything below describes its inner manifest.
    pub decrypted: bool,
    /// Which of the given identities opened it.
    pub recipient_id: Option<String>,
    pub format: u32,
    pub version: u64,
    pub base: Option<BaseInfo>,
    pub channel: String,
    pub created: u64,
    pub expires: Option<u64>,
    pub entries_note: &'static str,
    pub counts: Counts,
    pub sizes: Sizes,
    pub hooks: Vec<HookInfo>,
    pub rotation: Option<RotationInfo>,
    pub script: Vec<StepInfo>,
}

#[derive(Debug, Serialize)]
pub struct BaseInfo {
    pub version: Option<u64>,
    pub tree: String,
}

/// Counts of the entries the manifest lists, and of how their content is shipped.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub entries: usize,
    pub by_type: BTreeMap<&'static str, u64>,
    pub old: usize,
    pub frames: usize,
    pub steps: usize,
    pub zstd_pieces: u64,
    pub patch_pieces: u64,
    /// Pieces of LZMA2 frames (bundle-format.md §5.2).
    pub lzma_pieces: u64,
    pub copies: u64,
}

#[derive(Debug, Serialize)]
pub struct Sizes {
    pub new_file_bytes: u64,
    pub payload_bytes: u64,
    pub decoded_bytes: u64,
    pub manifest_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct HookInfo {
    pub glob: String,
    pub command: String,
    pub timeout_secs: u32,
}

#[derive(Debug, Serialize)]
pub struct RotationInfo {
    pub add: Vec<String>,
    pub retire: Vec<String>,
    pub threshold: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct StepInfo {
    pub op: String,
    pub path: String,
}

/// Read `file`'s head and manifest (not its frames) and describe them; with `trust`, how its
/// policy counts the signers. An encrypted bundle is opened with one of `identities` if one opens
/// it and its signatures are valid (nothing is decrypted under a signature that does not verify);
/// otherwise only its public fields are shown.
pub fn inspect(
    file: &Path,
    trust: Option<&bundle::sig::TrustPolicy>,
    identities: &[std::path::PathBuf],
) -> Result<Inspection> {
    let limits = Limits::default();
    let src = crate::source::open(file)?;
    let mut r = bundle::container::Reader::new(src.reader, limits.clone());
    let (mb, sb) = r.head().map_err(|e| crate::source::explain(e.into()))?;
    let sig = bundle::sig::verify_signatures(&mb, &sb, limits.max_signatures);
    let status = match (&sig, trust) {
        (Ok(keys), Some(t)) => Some(t.status(keys)),
        _ => None,
    };
    let mut m = Manifest::decode(&mb, &limits)?;
    let recipients = m.sealed.as_ref().map(|s| s.recipients.len());
    let mut recipient_id = None;
    if let (Some(sealed), true, false) = (&m.sealed, sig.is_ok(), identities.is_empty()) {
        let keys = crate::unseal::Keyring::load(identities, None)?;
        let Some((key, which)) = keys.unwrap(sealed)? else {
            return Err(crate::error::Error::NoIdentity {
                recipients: sealed.recipients.len(),
                looked_in: keys.looked_in(),
            });
        };
        let (inner, _) = bundle::seal::open(&m, &key, &limits)?;
        recipient_id = Some(which);
        m = inner;
    }
    Ok(Inspection {
        encrypted: recipients.is_some(),
        recipients,
        decrypted: recipient_id.is_some(),
        recipient_id,
        verified: false,
        note: NOTE,
        signatures_valid: sig.is_ok(),
        signers: sig.map(|k| k.into_iter().map(|k| k.id).collect()).unwrap_or_default(),
        trust: status,
        bundle_id: Manifest::id(&mb).to_hex(),
        format: m.format,
        version: m.version,
        base: m.base.as_ref().map(|b| BaseInfo { version: b.version, tree: b.tree.to_hex() }),
        channel: m.channel.clone(),
        created: m.created,
        expires: m.expires,
        entries_note: if m.sealed.is_some() {
            SEALED_NOTE
        } else if m.base.is_some() {
            DELTA_NOTE
        } else {
            FULL_NOTE
        },
        counts: counts(&m),
        sizes: Sizes {
            new_file_bytes: new_file_bytes(&m),
            payload_bytes: m.frames.iter().map(|f| f.size).sum(),
            decoded_bytes: m.frames.iter().map(|f| f.decoded).sum(),
            manifest_bytes: mb.len(),
        },
        hooks: m
            .hooks
            .iter()
            .map(|h| HookInfo { glob: h.glob.clone(), command: h.command.clone(), timeout_secs: h.timeout_secs })
            .collect(),
        rotation: m.rotation.as_ref().map(|r| RotationInfo {
            add: r.add.iter().map(|k| bundle::sig::key_id(&k.0)).collect(),
            retire: r.retire.clone(),
            threshold: r.threshold,
        }),
        script: m.script.iter().map(|s| StepInfo { op: format!("{:?}", s.op), path: s.path.display() }).collect(),
    })
}

fn counts(m: &Manifest) -> Counts {
    let mut c = Counts {
        entries: m.entries.len(),
        old: m.old.len(),
        frames: m.frames.len(),
        steps: m.script.len(),
        ..Default::default()
    };
    for e in &m.entries {
        *c.by_type.entry(e.kind.name()).or_default() += 1;
        match &e.kind {
            Kind::File { content: Content::Pieces(ps), .. } => {
                for p in ps {
                    match p.method {
                        Method::Zstd => c.zstd_pieces += 1,
                        Method::Patch { .. }
                        | Method::Bsdiff { .. }
                        | Method::BsdiffLzma { .. }
                        | Method::BsdiffSplit { .. } => c.patch_pieces += 1,
                        Method::Lzma { .. } => c.lzma_pieces += 1,
                    }
                }
            }
            Kind::File { content: Content::Copy { .. }, .. } => c.copies += 1,
            _ => {}
        }
    }
    c
}

fn new_file_bytes(m: &Manifest) -> u64 {
    m.entries.iter().map(|e| if let Kind::File { size, .. } = &e.kind { *size } else { 0 }).sum()
}
