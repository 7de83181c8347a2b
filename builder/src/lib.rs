//! ferry-build: diff two directory trees (OLD, NEW) into a signed delta bundle.
//!
//! Pipeline: [`scan`] both trees → [`diff`] into steps and content choices → [`elf`]
//! facts and [`plan`] the ordered apply script → delta bases by [`similar`]ity for files that
//! have none at their own path → OLD's scan cut down to the paths the manifest may name →
//! [`delta`]-encode payload frames into a temporary file → manifest entries for the paths the
//! manifest lists (memory beyond the two scans grows with the changed paths) → check the manifest and script with the `bundle` crate's own validators →
//! sign ([`keys`]; none with `--unsigned`) and [`write`] the container. [`build`] runs it all; the
//! binary is a thin CLI. Signatures are added later, without rebuilding, by [`sign`] (key files
//! and external [`signer`] commands, or a signing request carried to an [`offline`] machine).

pub mod bsdiff;
pub mod cli;
pub mod delta;
pub mod diff;
pub mod elf;
pub mod error;
pub mod image;
pub mod keys;
pub mod lzma;
pub mod offline;
pub mod pax;
pub mod paxattr;
pub mod plan;
pub mod progress;
pub mod protect;
pub mod publish;
pub mod regzip;
pub mod scan;
pub mod seal;
pub mod sign;
pub mod signer;
pub mod similar;
pub mod sparse;
pub mod split;
pub mod tarstream;
pub mod treetar;
pub mod write;
pub mod xattr;

pub use error::{Error, Result};

use bundle::{BundlePath, Content, Hook, Kind, Limits, Manifest, Op, Piece, Rotation, Step};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use keys::keygen;

/// Default `--chunk-size`: 64 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;
/// Default `--hook-timeout`.
pub const DEFAULT_HOOK_TIMEOUT: u32 = 300;
/// Level of `--level default`.
pub const LEVEL_DEFAULT: i32 = 19;

/// Everything `ferry-build build` takes.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub new: PathBuf,
    pub old: Option<PathBuf>,
    /// Secret keys that sign the bundle as it is written (possibly none of the eventual signers).
    pub keys: Vec<PathBuf>,
    /// Write the bundle without signatures when no `--key` is given (`ferry-build sign` adds them).
    pub unsigned: bool,
    pub version: u64,
    pub base_version: Option<u64>,
    pub channel: bundle::Channel,
    pub out: PathBuf,
    pub hooks: Vec<Hook>,
    pub expires: Option<u64>,
    pub level: i32,
    pub chunk_size: u64,
    /// Largest decoded size of a solid frame of small files; 0: one frame per file.
    pub solid_size: u64,
    /// Ship gzip files the applier can re-create as their uncompressed data ([`regzip`]).
    pub regzip: bool,
    pub config_files: Vec<String>,
    pub rotate_add: Vec<PathBuf>,
    pub rotate_retire: Vec<bundle::KeyId>,
    pub rotate_threshold: Option<u32>,
    pub dry_run: bool,
    /// Files whose only change is their mtime keep the target's mtime ([`diff::keep_unchanged_mtimes`]).
    pub keep_unchanged_mtimes: bool,
    /// Refuse an input holding a Unix socket instead of skipping it with a warning.
    pub fail_on_sockets: bool,
    /// Which extended attributes the bundle carries (`--xattrs`).
    pub xattrs: xattr::Carry,
    /// Manifest creation time (seconds since the epoch); see [`created_from_env`].
    pub created: u64,
    /// Recipient files (`--encrypt-to`): encrypt the bundle to these ([`seal`]); empty: not
    /// encrypted.
    pub encrypt_to: Vec<PathBuf>,
}

/// Files and bytes for one content choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stat {
    pub files: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Frames holding these files (payload categories only).
    #[serde(skip_serializing_if = "is_zero")]
    pub frames: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The result of a build (the `--json` report, plus the script and warnings).
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    pub ferry_report: u32,
    pub command: &'static str,
    pub bundle: String,
    pub bytes: u64,
    pub version: u64,
    /// The bundle id (BLAKE3 of the manifest member: what every signature signs); absent for a
    /// dry run.
    pub bundle_id: Option<String>,
    /// Key ids of the keys that signed it (none for `--unsigned`).
    pub signers: Vec<String>,
    /// Entries listed in the manifest (a delta lists only what it touches or needs).
    pub entries: usize,
    /// Entries of the whole NEW tree.
    pub tree_entries: usize,
    pub steps: usize,
    pub frames: usize,
    pub stats: BTreeMap<&'static str, Stat>,
    /// Unix sockets left out of OLD and NEW (a bundle cannot carry them; `--fail-on-sockets`
    /// refuses them instead).
    pub sockets_skipped: usize,
    pub skipped_sockets: Vec<SkippedSocket>,
    /// Extended-attribute namespaces the bundle carries (bundle-format.md §4.9).
    pub xattr_namespaces: Vec<String>,
    /// Distinct attribute sets in the manifest.
    pub xattr_sets: usize,
    /// Encrypted to `recipients` (bundle-format.md §4.10).
    pub encrypted: bool,
    /// Ids of the recipients an encrypted bundle is sealed for.
    pub recipients: Vec<String>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(skip)]
    pub script: Vec<Step>,
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// A Unix socket left out of an input tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedSocket {
    /// `old` or `new`.
    pub input: &'static str,
    /// Its path in the tree.
    pub path: String,
}

/// Lower-case name of a step's operation, as printed by `--dry-run`.
pub fn op_name(op: Op) -> &'static str {
    match op {
        Op::Mkdir => "mkdir",
        Op::Place => "place",
        Op::SetMeta => "setmeta",
        Op::Delete => "delete",
        Op::DirMeta => "dirmeta",
    }
}

/// Parse `--level`: `fast` (3), `default` (19), `max` (22) or 1..=22.
pub fn parse_level(s: &str) -> std::result::Result<i32, String> {
    match s {
        "fast" => Ok(3),
        "default" => Ok(LEVEL_DEFAULT),
        "max" => Ok(22),
        _ => s
            .parse::<i32>()
            .ok()
            .filter(|l| (1..=22).contains(l))
            .ok_or_else(|| format!("invalid level {s:?}: expected fast, default, max or 1..22")),
    }
}

/// Parse a byte count with an optional K/M/G (binary) suffix; between 4 KiB and 1 GiB (the
/// largest frame the target decodes).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.trim_end_matches(['i', 'B']).char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n = num.parse::<u64>().ok().and_then(|n| n.checked_mul(mul)).ok_or_else(|| format!("invalid size {s:?}"))?;
    let max = Limits::default().max_frame_decoded;
    if !(4096..=max).contains(&n) {
        return Err(format!("size {s:?} out of range (4096 to {max} bytes)"));
    }
    Ok(n)
}

/// Default `--solid-size`: 32 MiB. Measured on the rootfs-up corpus (all 156 MB of its new files
/// sorted as the builder sorts them, zstd -19): 8 MiB groups and large files alone 41.7 MB,
/// 32 MiB groups 33.5 MB, one stream 33.3 MB. A solid frame is decoded with a window of its
/// size, so this is also what one frame costs the applier in memory (2^25 bytes).
pub const DEFAULT_SOLID_SIZE: u64 = 32 << 20;

/// Parse `--solid-size`: 0 (no solid frames) or a size as for [`parse_size`].
pub fn parse_solid_size(s: &str) -> std::result::Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_size(s)
}

/// Parse `--hook 'GLOB=COMMAND'` (the rule is [`Hook::check`], shared with the decoder).
pub fn parse_hook(s: &str, timeout_secs: u32) -> Result<Hook> {
    Hook::parse(s, timeout_secs, &Limits::default()).map_err(|e| Error::Usage(format!("--hook: {e}")))
}

/// `SOURCE_DATE_EPOCH` if set (for reproducible builds), else the current time.
pub fn created_from_env() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => {
            v.trim().parse().map_err(|_| Error::Usage(format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")))
        }
        Err(_) => {
            Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
        }
    }
}

fn bump(stats: &mut BTreeMap<&'static str, Stat>, k: &'static str, bytes_in: u64, bytes_out: u64) {
    let s = stats.entry(k).or_default();
    s.files += 1;
    s.bytes_in += bytes_in;
    s.bytes_out += bytes_out;
}

/// Build a bundle (or, with `dry_run`, only the script).
pub fn build(opts: &BuildOptions, progress: &progress::Progress) -> Result<BuildReport> {
    let started = Instant::now();
    check_options(opts)?;
    let signing = load_keys(opts)?;
    let sealing = seal::prepare(&opts.encrypt_to)?;
    let out_dir = out_dir(&opts.out);
    let mut inputs = scan_inputs(opts, &out_dir, progress)?;
    let phase = Instant::now();
    let mut d = diff::diff(&inputs.old, &inputs.new, &opts.config_files);
    let (script, plan_warnings) = plan_script(&inputs, &d, phase, progress)?;
    let mut warnings = socket_warnings(opts, &inputs);
    warnings.extend(xattr::skipped_warnings());
    warnings.extend(plan_warnings);
    let mut manifest = new_manifest(opts, signing.rotation, inputs.base.clone(), script);
    let mut used = copy_sources(&d.choices);
    let tree_entries = inputs.new.entries.len();
    if opts.dry_run {
        let entries = manifest_entries(&manifest, &d, &inputs, &used, &opts.config_files);
        finish_manifest(&mut manifest, entries, &d.touched, &inputs.old, &used, &opts.xattrs);
        bundle::script::validate(&manifest).map_err(Error::Invalid)?;
        let written = Written { bytes: 0, id: None, signers: Vec::new() };
        return Ok(report(opts, started, manifest, tree_entries, written, BTreeMap::new(), warnings, &inputs, None));
    }
    // Files with no delta base at their own path may have a relative elsewhere in OLD.
    similar::find_bases(&inputs.old, &inputs.new, &mut d.choices, &opts.config_files, opts.chunk_size, progress);
    let mut jobs = collect_jobs(&manifest.script, &inputs, &d.choices);
    // From here on, OLD is only looked up at the paths the manifest's OLD list may name: the rest
    // of its scan is freed before encoding starts.
    let old_paths = d.touched.iter().chain(&used).chain(jobs.iter().filter_map(|j| j.base.as_ref().map(|b| &b.0)));
    inputs.old.retain_paths(&old_paths.collect());
    let store = write::FrameStore::new_in(&out_dir)?;
    // gzip files shipped as their data (bundle-format.md §5.3), from scratch copies that live
    // until the frames are encoded.
    let scratch = tempfile::TempDir::new_in(&out_dir).map_err(Error::io(&out_dir))?;
    let regzipped = if opts.regzip {
        regzip::rewrite_jobs(&mut jobs, scratch.path(), opts.chunk_size)?
    } else {
        Default::default()
    };
    let encode = write::EncodeOptions { level: opts.level, chunk: opts.chunk_size, solid_size: opts.solid_size };
    let encoded = write::encode_all(&jobs, encode, &store, progress)?;
    drop(scratch);
    let order = order_frames(&jobs, &encoded);
    manifest.frames = order.frames;
    used.extend(order.bases);
    let mut stats = count_stats(
        &inputs.new,
        &d.choices,
        &jobs,
        &order.pieces_of,
        &manifest.frames,
        [encoded.solid, encoded.solid_lzma],
        inputs.kept_mtimes,
    );
    if regzipped.files > 0 {
        // Overlaps the payload categories: these files' size, and the data they carry instead.
        let r = regzipped;
        stats.insert("regzip", Stat { files: r.files, bytes_in: r.bytes, bytes_out: r.raw, frames: 0 });
    }
    // Stats above describe the whole tree; the manifest lists only the entries the bundle needs
    // (the script and `old` are final now, so the rule of bundle-format.md §4.2 can be applied).
    let mut entries = manifest_entries(&manifest, &d, &inputs, &used, &opts.config_files);
    fill_pieces(&mut entries, &order.pieces_of)?;
    finish_manifest(&mut manifest, entries, &d.touched, &inputs.old, &used, &opts.xattrs);
    if let Some(s) = &sealing {
        // Frame hashes are of the stored (encrypted) bytes (bundle-format.md §4.10).
        s.encrypt_frames(&store.file()?, &order.stored, &mut manifest.frames)?;
    }
    let written = seal_and_write(opts, &manifest, &signing.secrets, &order.stored, store, progress, sealing.as_ref())?;
    Ok(report(opts, started, manifest, tree_entries, written, stats, warnings, &inputs, sealing.as_ref()))
}

/// The sockets left out of both inputs: (`old`/`new`, path), OLD first.
fn skipped_sockets(inputs: &Inputs) -> Vec<SkippedSocket> {
    let of = |input: &'static str, t: &scan::Tree| {
        t.sockets.iter().map(move |p| SkippedSocket { input, path: p.display() }).collect::<Vec<_>>()
    };
    let mut v = of("old", &inputs.old);
    v.extend(of("new", &inputs.new));
    v
}

/// One warning per socket left out, naming it in its input.
fn socket_warnings(opts: &BuildOptions, inputs: &Inputs) -> Vec<String> {
    skipped_sockets(inputs)
        .into_iter()
        .map(|s| {
            let input = if s.input == "old" { opts.old.as_deref().unwrap_or(Path::new("")) } else { &opts.new };
            format!(
                "skipped socket {} in {} ({}): a bundle cannot carry sockets (--fail-on-sockets refuses them)",
                s.path,
                s.input.to_uppercase(),
                input.display()
            )
        })
        .collect()
}

/// Refuse option combinations and values the bundle could not carry, before any work.
fn check_options(opts: &BuildOptions) -> Result<()> {
    if opts.base_version.is_some() && opts.old.is_none() {
        return Err(Error::Usage("--base-version needs --old".into()));
    }
    if opts.keys.is_empty() && !opts.unsigned {
        return Err(Error::Usage(
            "no signing key: pass --key K.secret to sign the bundle, or --unsigned to write it without signatures \
             (add them later with `ferry-build sign`)"
                .into(),
        ));
    }
    if opts.expires.is_some_and(|e| e <= opts.created) {
        return Err(Error::Usage("--expires is not after the creation time".into()));
    }
    if opts.rotate_threshold == Some(0) {
        return Err(Error::Usage("--rotate-threshold must be at least 1".into()));
    }
    Ok(())
}

/// The signing keys and the key rotation the bundle carries.
struct Signing {
    secrets: Vec<bundle::sig::SecretKey>,
    rotation: Option<Rotation>,
}

/// Load `--key` secrets (each once) and `--rotate-add` public keys.
fn load_keys(opts: &BuildOptions) -> Result<Signing> {
    let secrets = opts.keys.iter().map(|k| keys::load_secret(k)).collect::<Result<Vec<_>>>()?;
    let signers: BTreeSet<[u8; 32]> = secrets.iter().map(|k| k.public().bytes).collect();
    if signers.len() != secrets.len() {
        return Err(Error::Usage("the same key is given twice with --key".into()));
    }
    let rotation = if opts.rotate_add.is_empty() && opts.rotate_retire.is_empty() && opts.rotate_threshold.is_none() {
        None
    } else {
        let add = opts
            .rotate_add
            .iter()
            .map(|p| keys::load_public(p).map(|k| bundle::sig::manifest_key(&k)))
            .collect::<Result<Vec<_>>>()?;
        Some(Rotation {
            add,
            retire: opts.rotate_retire.iter().map(|k| k.as_str().to_string()).collect(),
            threshold: opts.rotate_threshold,
        })
    };
    Ok(Signing { secrets, rotation })
}

/// The directory of the output file: temporary files (frame store, archive content store) go
/// there, on the disk that will hold the bundle.
fn out_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Both trees as scanned, and what the bundle says about OLD.
struct Inputs {
    old: scan::Tree,
    new: scan::Tree,
    /// (files, bytes) given OLD's mtime by `--keep-unchanged-mtimes`.
    kept_mtimes: (u64, u64),
    /// The tree a delta applies to (`None` for a full bundle).
    base: Option<bundle::Base>,
}

/// Scan NEW and OLD. Archive inputs are spooled into a content store next to the output.
fn scan_inputs(opts: &BuildOptions, out_dir: &Path, progress: &progress::Progress) -> Result<Inputs> {
    let mut content_store = None;
    let fail = opts.fail_on_sockets;
    let xa = &opts.xattrs;
    let mut new = image::scan_input(&opts.new, "new", fail, xa, out_dir, &mut content_store, progress)?;
    let old = match &opts.old {
        Some(p) => image::scan_input(p, "old", fail, xa, out_dir, &mut content_store, progress)?,
        None => scan::Tree::default(),
    };
    let kept_mtimes = if opts.keep_unchanged_mtimes { diff::keep_unchanged_mtimes(&old, &mut new) } else { (0, 0) };
    let base = opts.old.as_ref().map(|_| bundle::Base {
        version: opts.base_version,
        tree: xattr::with_sets(|sets| bundle::tree_digest(old.entries.iter().map(diff::old_entry), sets)),
    });
    Ok(Inputs { old, new, kept_mtimes, base })
}

/// ELF facts of every NEW file with a creation-phase step, then the ordered script and its
/// warnings. `diffed` is when the diff started (for the `-v` line).
fn plan_script(
    inputs: &Inputs,
    d: &diff::Diff,
    diffed: Instant,
    progress: &progress::Progress,
) -> Result<(Vec<Step>, Vec<String>)> {
    let elf = inspect_elf(&inputs.new, &d.steps, progress);
    let (script, warnings) =
        plan::order(&d.steps, &inputs.new, &diff::old_entries_for_deletes(&inputs.old, &d.steps), &elf)?;
    let payloads = d.choices.values().filter(|c| matches!(c, diff::Choice::Payload { .. })).count();
    progress.note(&format!(
        "diff and plan: {} old and {} new entries, {} steps, {} files need payload, in {:.2} s",
        inputs.old.entries.len(),
        inputs.new.entries.len(),
        script.len(),
        payloads,
        diffed.elapsed().as_secs_f64()
    ));
    Ok((script, warnings))
}

/// [`elf::inspect`] every NEW regular file that a Place or SetMeta step creates or changes, in
/// parallel.
fn inspect_elf(new: &scan::Tree, steps: &[Step], progress: &progress::Progress) -> BTreeMap<BundlePath, plan::ElfInfo> {
    let stepped: Vec<&BundlePath> = steps
        .iter()
        .filter(|s| matches!(s.op, Op::Place | Op::SetMeta))
        .filter(|s| new.get(&s.path).is_some_and(|e| e.ty == scan::Type::File && !e.is_secondary_link()))
        .map(|s| &s.path)
        .collect();
    progress.begin("inspect ELF", "files", Some(stepped.len() as u64), None);
    let elf: BTreeMap<BundlePath, plan::ElfInfo> = stepped
        .par_iter()
        .map(|p| {
            let i = elf::inspect(&new.content_path(p)).map(|i| ((*p).clone(), i));
            progress.advance(1, 0);
            i
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flatten()
        .collect();
    progress.end_with(&format!("{} ELF", elf.len()));
    elf
}

/// The manifest before its entries, OLD list and frames are known.
fn new_manifest(
    opts: &BuildOptions,
    rotation: Option<Rotation>,
    base: Option<bundle::Base>,
    script: Vec<Step>,
) -> Manifest {
    Manifest {
        format: bundle::FORMAT_VERSION,
        version: opts.version,
        base,
        channel: opts.channel.to_string(),
        created: opts.created,
        expires: opts.expires,
        entries: Vec::new(),
        old: Vec::new(),
        frames: Vec::new(),
        script,
        hooks: opts.hooks.clone(),
        rotation,
        xattr_namespaces: Vec::new(),
        xattr_sets: Vec::new(),
        tagged_digest: None,
        sealed: None,
    }
}

/// OLD files that NEW files are copied from (the manifest's OLD list must describe them).
fn copy_sources(choices: &BTreeMap<BundlePath, diff::Choice>) -> BTreeSet<BundlePath> {
    choices.values().filter_map(|c| if let diff::Choice::Copy(f) = c { Some(f.clone()) } else { None }).collect()
}

/// What one payload carries: a content and its layout (a sparse file's payload is its data
/// extents only, so the same content with other holes is another payload).
type ContentKey = (bundle::Hash, Option<Vec<bundle::Extent>>);

/// The content a job fills (the NEW file's digest, not that of the data a gzip job encodes).
fn job_key(j: &write::PayloadJob) -> ContentKey {
    (j.file_hash(), j.sparse.as_ref().map(|s| s.1.clone()))
}

/// Per content: its pieces, how it was encoded, and how to re-create it if it is a gzip file.
type Payload = (Vec<Piece>, write::Encoding, Option<bundle::Regzip>);

/// Payload jobs: one per distinct content and layout, represented by its first Place in the
/// script.
fn collect_jobs(
    script: &[Step],
    inputs: &Inputs,
    choices: &BTreeMap<BundlePath, diff::Choice>,
) -> Vec<write::PayloadJob> {
    let (old, new) = (&inputs.old, &inputs.new);
    let mut seen: BTreeSet<ContentKey> = BTreeSet::new();
    let mut jobs: Vec<write::PayloadJob> = Vec::new();
    for s in script.iter().filter(|s| s.op == Op::Place) {
        let (Some(n), Some(diff::Choice::Payload { base })) = (new.get(&s.path), choices.get(&s.path)) else {
            continue;
        };
        if !seen.insert((n.hash, n.extents.as_deref().map(<[_]>::to_vec))) {
            continue;
        }
        jobs.push(write::PayloadJob {
            path: s.path.clone(),
            fs_path: new.content_path(&s.path),
            size: bundle::sparse::data_len(n.size, n.extents.as_deref()),
            hash: n.hash,
            base: base.as_ref().and_then(|b| old.get(b).map(|o| (b.clone(), old.content_path(b), o.size))),
            sparse: n.extents.as_deref().map(|x| (n.size, x.to_vec())),
            regzip: None,
        });
    }
    jobs
}

/// The encoded frames as the manifest lists them.
struct FrameOrder {
    /// Manifest frames, in order of first use.
    frames: Vec<bundle::Frame>,
    /// (offset, size) of each manifest frame in the frame store.
    stored: Vec<(u64, u64)>,
    /// Pieces and encoding of each content.
    pieces_of: BTreeMap<ContentKey, Payload>,
    /// OLD files the frames are deltas against (the manifest's OLD list must describe them).
    bases: BTreeSet<BundlePath>,
}

/// Frames in order of first use (jobs are in order of their first Place); pieces per content.
fn order_frames(jobs: &[write::PayloadJob], encoded: &write::Encoded) -> FrameOrder {
    let mut order =
        FrameOrder { frames: Vec::new(), stored: Vec::new(), pieces_of: BTreeMap::new(), bases: BTreeSet::new() };
    let mut frame_index: Vec<Option<u32>> = vec![None; encoded.frames.len()];
    for (job, enc) in jobs.iter().zip(&encoded.files) {
        let mut pieces = Vec::new();
        for pr in &enc.pieces {
            let f = &encoded.frames[pr.frame];
            if let Some(base) = f.method.base() {
                order.bases.insert(base.clone());
            }
            let index = *frame_index[pr.frame].get_or_insert_with(|| {
                order.frames.push(f.frame.clone());
                order.stored.push((f.offset, f.frame.size));
                order.frames.len() as u32 - 1
            });
            pieces.push(Piece { frame: index, offset: pr.offset, len: pr.len, method: f.method.clone() });
        }
        let regzip = job.regzip.as_ref().map(|r| r.0.clone());
        order.pieces_of.insert(job_key(job), (pieces, enc.encoding, regzip));
    }
    order
}

/// The NEW entries for the manifest: those of the paths it may list (the script's, the OLD
/// list's — `touched` and `used` — and what they require, [`diff::required_paths`]), not one per
/// path of the tree.
fn manifest_entries(
    manifest: &Manifest,
    d: &diff::Diff,
    inputs: &Inputs,
    used: &BTreeSet<BundlePath>,
    config_globs: &[String],
) -> Vec<bundle::Entry> {
    let old_paths = d.touched.iter().chain(used);
    let keep = diff::required_paths(&inputs.new, &manifest.script, old_paths, config_globs);
    diff::new_entries(&inputs.new, &d.choices, config_globs, Some(&keep))
}

/// Give every entry that needs a payload the pieces of its content.
fn fill_pieces(entries: &mut [bundle::Entry], pieces_of: &BTreeMap<ContentKey, Payload>) -> Result<()> {
    for e in entries.iter_mut() {
        let Kind::File { hash, content: Content::Pieces(ps), extents, gzip, .. } = &mut e.kind else {
            continue;
        };
        let Some((pieces, _, regzip)) = hash.and_then(|h| pieces_of.get(&(h, extents.clone()))) else {
            return Err(Error::Invalid(bundle::Error::Manifest(format!("builder bug: no payload for {}", e.path))));
        };
        *ps = pieces.clone();
        *gzip = regzip.clone();
    }
    Ok(())
}

/// Files and bytes of the whole NEW tree per content choice: each file in exactly one of
/// `unchanged`, `empty`, `copy`, `dedup` (content another file already carries) or the encoding
/// of its payload; plus `mtime_kept`, which overlaps `unchanged`.
fn count_stats(
    new: &scan::Tree,
    choices: &BTreeMap<BundlePath, diff::Choice>,
    jobs: &[write::PayloadJob],
    pieces_of: &BTreeMap<ContentKey, Payload>,
    frames: &[bundle::Frame],
    solid: [(u64, u64, u64, u64); 2],
    kept_mtimes: (u64, u64),
) -> BTreeMap<&'static str, Stat> {
    let mut stats: BTreeMap<&'static str, Stat> = BTreeMap::new();
    let first_user: BTreeMap<ContentKey, &BundlePath> = jobs.iter().map(|j| (job_key(j), &j.path)).collect();
    // Each NEW file with content of its own (not a second name of an inode), by its choice.
    for e in new.entries.iter().filter(|e| e.ty == scan::Type::File && !e.is_secondary_link()) {
        let size = &e.size;
        match choices.get(&e.path) {
            Some(diff::Choice::Unchanged) | None => {
                bump(&mut stats, "unchanged", *size, 0);
                continue;
            }
            Some(diff::Choice::Empty) => {
                bump(&mut stats, "empty", 0, 0);
                continue;
            }
            Some(diff::Choice::Copy(_)) => {
                bump(&mut stats, "copy", *size, 0);
                continue;
            }
            Some(diff::Choice::Payload { .. }) => {}
        }
        let key = (e.hash, e.extents.as_deref().map(<[_]>::to_vec));
        if first_user.get(&key) != Some(&&e.path) {
            bump(&mut stats, "dedup", *size, 0);
            continue;
        }
        let Some((pieces, encoding, _)) = pieces_of.get(&key) else { continue };
        let k = match encoding {
            write::Encoding::Zstd => "zstd",
            write::Encoding::Patch => "patch",
            write::Encoding::Chunked => "chunked",
            write::Encoding::Bsdiff => "bsdiff",
            write::Encoding::Lzma => "lzma",
            // Counted per frame below.
            write::Encoding::Solid => continue,
        };
        let out: u64 = pieces.iter().map(|p| frames[p.frame as usize].size).sum();
        bump(&mut stats, k, *size, out);
        if let Some(s) = stats.get_mut(k) {
            s.frames += pieces.len() as u64;
        }
    }
    // Solid frames: zstd, LZMA2.
    for (key, (files, bytes_in, bytes_out, frames)) in ["solid", "solid_lzma"].into_iter().zip(solid) {
        if files > 0 {
            stats.insert(key, Stat { files, bytes_in, bytes_out, frames });
        }
    }
    // Files and symlinks given OLD's mtime; the files among them are also counted as unchanged.
    if kept_mtimes.0 > 0 {
        stats.insert("mtime_kept", Stat { files: kept_mtimes.0, bytes_in: kept_mtimes.1, bytes_out: 0, frames: 0 });
    }
    stats
}

/// Put the entries and the OLD list into the manifest (OLD paths the script touches plus the
/// files in `used`), then drop the entries it does not need (bundle-format.md §4.2).
fn finish_manifest(
    manifest: &mut Manifest,
    entries: Vec<bundle::Entry>,
    touched: &BTreeSet<BundlePath>,
    old: &scan::Tree,
    used: &BTreeSet<BundlePath>,
    xattrs: &xattr::Carry,
) {
    manifest.entries = entries;
    manifest.old = touched
        .iter()
        .chain(used)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|p| old.get(p))
        .map(diff::old_entry)
        .collect();
    manifest.drop_unneeded_entries();
    xattr::finish(manifest, xattrs);
    // Last: which OLD files need their own digest depends on the final entries and attribute sets.
    manifest.tag_old_files();
}

/// What [`seal_and_write`] wrote.
struct Written {
    bytes: u64,
    id: Option<bundle::Hash>,
    signers: Vec<String>,
}

/// Check the manifest as the applier will, sign its id with each key (none for `--unsigned`)
/// and write the bundle. With `sealing`, the checked manifest is the inner one, and the outer
/// manifest that carries it encrypted is checked, signed and written.
fn seal_and_write(
    opts: &BuildOptions,
    manifest: &Manifest,
    secrets: &[bundle::sig::SecretKey],
    stored: &[(u64, u64)],
    store: write::FrameStore,
    progress: &progress::Progress,
    sealing: Option<&seal::Sealing>,
) -> Result<Written> {
    let mut mbytes = checked_member(manifest)?;
    if let Some(s) = sealing {
        mbytes = checked_member(&s.seal(manifest, &mbytes)?)?;
    }
    let id = Manifest::id(&mbytes);
    let mut sigs = bundle::sig::Signatures::new();
    for k in secrets {
        sigs.insert(k.public().bytes, k.sign_id(&id));
    }
    let signers = sigs.entries().iter().map(|(k, _)| bundle::sig::key_id(k)).collect();
    let bytes = write::write_bundle(&opts.out, &mbytes, &sigs.encode(), stored, store, progress)?;
    Ok(Written { bytes, id: Some(id), signers })
}

/// The manifest member of `manifest`, after the checks the applier makes (structure, script,
/// and the default limits on the member and the CBOR inside it).
fn checked_member(manifest: &Manifest) -> Result<Vec<u8>> {
    // A bundle the applier would refuse is a builder bug (or an inexpressible tree): stop here.
    manifest.check(&Limits::default()).map_err(Error::Invalid)?;
    bundle::script::validate(manifest).map_err(Error::Invalid)?;
    let mbytes = manifest.encode();
    let limits = Limits::default();
    // The applier bounds both the member and the CBOR inside it (bundle-format.md §8).
    let cbor_len = manifest.to_cbor().len() as u64;
    for (what, size, limit) in [
        ("manifest", mbytes.len() as u64, limits.max_manifest_bytes),
        ("decoded manifest", cbor_len, limits.max_manifest_decoded),
    ] {
        if size > limit {
            return Err(Error::Invalid(bundle::Error::TooLarge { what: what.into(), size, limit }));
        }
    }
    Ok(mbytes)
}

/// The report of a build that wrote `bytes` (0 for a dry run).
#[allow(clippy::too_many_arguments)]
fn report(
    opts: &BuildOptions,
    started: Instant,
    manifest: Manifest,
    tree_entries: usize,
    written: Written,
    stats: BTreeMap<&'static str, Stat>,
    warnings: Vec<String>,
    inputs: &Inputs,
    sealing: Option<&seal::Sealing>,
) -> BuildReport {
    let skipped_sockets = skipped_sockets(inputs);
    BuildReport {
        encrypted: sealing.is_some(),
        recipients: sealing.map(|s| s.recipients.iter().map(|r| r.id.clone()).collect()).unwrap_or_default(),
        sockets_skipped: skipped_sockets.len(),
        skipped_sockets,
        xattr_namespaces: manifest.xattr_namespaces.clone(),
        xattr_sets: manifest.xattr_sets.len(),
        ferry_report: 1,
        command: "build",
        bundle: opts.out.display().to_string(),
        bytes: written.bytes,
        version: opts.version,
        bundle_id: written.id.map(|i| i.to_hex()),
        signers: written.signers,
        entries: manifest.entries.len(),
        tree_entries,
        steps: manifest.script.len(),
        frames: manifest.frames.len(),
        stats,
        duration_ms: started.elapsed().as_millis() as u64,
        dry_run: opts.dry_run,
        script: manifest.script,
        warnings,
    }
}

/// Convenience for callers holding a path: `NAME.secret` / `NAME.pub` from [`keygen`].
pub fn keygen_paths(name: &Path) -> (PathBuf, PathBuf) {
    let s = |suf: &str| {
        let mut o = name.as_os_str().to_owned();
        o.push(suf);
        PathBuf::from(o)
    };
    (s(".secret"), s(".pub"))
}
