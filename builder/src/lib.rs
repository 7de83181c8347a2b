//! ferry-build: diff two directory trees (OLD, NEW) into a signed delta bundle.
//!
//! Pipeline: [`scan`] both trees → [`diff`] into entries, steps and content choices → [`elf`]
//! facts and [`plan`] the ordered apply script → [`delta`]-encode payload frames into a
//! temporary file → check the manifest and script with the `bundle` crate's own validators →
//! sign ([`keys`]) and [`write`] the container. [`build`] runs it all; the binary is a thin CLI.

pub mod cli;
pub mod delta;
pub mod diff;
pub mod elf;
pub mod error;
pub mod image;
pub mod keys;
pub mod plan;
pub mod progress;
pub mod scan;
pub mod split;
pub mod write;

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
    pub keys: Vec<PathBuf>,
    pub version: u64,
    pub base_version: Option<u64>,
    pub channel: String,
    pub out: PathBuf,
    pub hooks: Vec<Hook>,
    pub expires: Option<u64>,
    pub level: i32,
    pub chunk_size: u64,
    /// Largest decoded size of a solid frame of small files; 0: one frame per file.
    pub solid_size: u64,
    pub config_files: Vec<String>,
    pub rotate_add: Vec<PathBuf>,
    pub rotate_retire: Vec<String>,
    pub rotate_threshold: Option<u32>,
    pub dry_run: bool,
    /// Files whose only change is their mtime keep the target's mtime ([`diff::keep_unchanged_mtimes`]).
    pub keep_unchanged_mtimes: bool,
    /// Manifest creation time (seconds since the epoch); see [`created_from_env`].
    pub created: u64,
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
    /// Entries listed in the manifest (a delta lists only what it touches or needs).
    pub entries: usize,
    /// Entries of the whole NEW tree.
    pub tree_entries: usize,
    pub steps: usize,
    pub frames: usize,
    pub stats: BTreeMap<&'static str, Stat>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(skip)]
    pub script: Vec<Step>,
    #[serde(skip)]
    pub warnings: Vec<String>,
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

/// Default `--solid-size`: 8 MiB.
pub const DEFAULT_SOLID_SIZE: u64 = 8 << 20;

/// Parse `--solid-size`: 0 (no solid frames) or a size as for [`parse_size`].
pub fn parse_solid_size(s: &str) -> std::result::Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_size(s)
}

/// Parse `--hook 'GLOB=COMMAND'`.
pub fn parse_hook(s: &str, timeout_secs: u32) -> Result<Hook> {
    let (glob, command) =
        s.split_once('=').ok_or_else(|| Error::Usage(format!("--hook {s:?}: expected GLOB=COMMAND")))?;
    if glob.is_empty() || command.trim().is_empty() {
        return Err(Error::Usage(format!("--hook {s:?}: empty glob or command")));
    }
    if glob.len() > 256 || command.len() > 4096 {
        return Err(Error::Usage(format!("--hook {s:?}: glob over 256 or command over 4096 bytes")));
    }
    if timeout_secs == 0 {
        return Err(Error::Usage("--hook-timeout must be at least 1 second".into()));
    }
    Ok(Hook { glob: glob.to_string(), command: command.to_string(), timeout_secs })
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
    if opts.base_version.is_some() && opts.old.is_none() {
        return Err(Error::Usage("--base-version needs --old".into()));
    }
    if opts.keys.is_empty() {
        return Err(Error::Usage("at least one --key is needed".into()));
    }
    if opts.expires.is_some_and(|e| e <= opts.created) {
        return Err(Error::Usage("--expires is not after the creation time".into()));
    }
    if opts.channel.is_empty() || opts.channel.len() > 128 || !opts.channel.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Usage(format!("--channel {:?}: 1 to 128 printable ASCII characters", opts.channel)));
    }
    for id in &opts.rotate_retire {
        if id.len() != 16 || bundle::hash::unhex(id).is_none() {
            return Err(Error::Usage(format!("--rotate-retire {id:?}: expected a 16 hex digit key id")));
        }
    }
    if opts.rotate_threshold == Some(0) {
        return Err(Error::Usage("--rotate-threshold must be at least 1".into()));
    }
    let secrets = opts.keys.iter().map(|k| keys::load_secret(k)).collect::<Result<Vec<_>>>()?;
    let signers: Vec<bundle::PublicKey> = secrets.iter().map(|k| bundle::sig::manifest_key(&k.public())).collect();
    if signers.iter().collect::<BTreeSet<_>>().len() != signers.len() {
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
        Some(Rotation { add, retire: opts.rotate_retire.clone(), threshold: opts.rotate_threshold })
    };

    // Scan and diff. Archive inputs are spooled into a content store next to the output.
    let out_dir = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut content_store = None;
    let mut new = image::scan_input(&opts.new, "new", &out_dir, &mut content_store, progress)?;
    let old = match &opts.old {
        Some(p) => image::scan_input(p, "old", &out_dir, &mut content_store, progress)?,
        None => scan::Tree::default(),
    };
    let kept_mtimes = if opts.keep_unchanged_mtimes { diff::keep_unchanged_mtimes(&old, &mut new) } else { (0, 0) };
    let base = opts
        .old
        .as_ref()
        .map(|_| bundle::Base { version: opts.base_version, tree: bundle::tree_digest(&diff::old_entries(&old)) });
    let phase = Instant::now();
    let mut d = diff::diff(&old, &new, &opts.config_files);

    // ELF facts of every NEW file with a creation-phase step, then the script.
    let stepped: Vec<&BundlePath> = d
        .steps
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
    let old_links: BTreeMap<BundlePath, Vec<u8>> = old
        .entries
        .iter()
        .filter_map(|e| match &e.ty {
            scan::Type::Symlink(t) => Some((e.path.clone(), t.clone())),
            _ => None,
        })
        .collect();
    let (script, warnings) = plan::order(&d.steps, &d.entries, &old_links, &elf)?;
    let payloads = d.choices.values().filter(|c| matches!(c, diff::Choice::Payload { .. })).count();
    progress.note(&format!(
        "diff and plan: {} old and {} new entries, {} steps, {} files need payload, in {:.2} s",
        old.entries.len(),
        new.entries.len(),
        script.len(),
        payloads,
        phase.elapsed().as_secs_f64()
    ));

    let mut manifest = Manifest {
        format: bundle::FORMAT_VERSION,
        version: opts.version,
        base,
        channel: opts.channel.clone(),
        created: opts.created,
        expires: opts.expires,
        signers,
        entries: Vec::new(),
        old: Vec::new(),
        frames: Vec::new(),
        script,
        hooks: opts.hooks.clone(),
        rotation,
    };
    let old_list = |extra: &BTreeSet<BundlePath>| -> Vec<bundle::OldEntry> {
        d.touched
            .iter()
            .chain(extra)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|p| old.get(p))
            .map(diff::old_entry)
            .collect()
    };
    let mut used: BTreeSet<BundlePath> =
        d.choices.values().filter_map(|c| if let diff::Choice::Copy(f) = c { Some(f.clone()) } else { None }).collect();

    let tree_entries = d.entries.len();
    if opts.dry_run {
        manifest.entries = std::mem::take(&mut d.entries);
        manifest.old = old_list(&used);
        manifest.drop_unneeded_entries();
        bundle::script::validate(&manifest).map_err(Error::Invalid)?;
        return Ok(BuildReport {
            ferry_report: 1,
            command: "build",
            bundle: opts.out.display().to_string(),
            bytes: 0,
            version: opts.version,
            entries: manifest.entries.len(),
            tree_entries,
            steps: manifest.script.len(),
            frames: 0,
            stats: BTreeMap::new(),
            duration_ms: started.elapsed().as_millis() as u64,
            dry_run: true,
            script: manifest.script,
            warnings,
        });
    }

    // Payload jobs: one per distinct content, represented by its first Place in the script.
    let mut job_of_hash: BTreeMap<bundle::Hash, usize> = BTreeMap::new();
    let mut jobs: Vec<write::PayloadJob> = Vec::new();
    for s in manifest.script.iter().filter(|s| s.op == Op::Place) {
        let (Some(n), Some(diff::Choice::Payload { base })) = (new.get(&s.path), d.choices.get(&s.path)) else {
            continue;
        };
        if job_of_hash.contains_key(&n.hash) {
            continue;
        }
        job_of_hash.insert(n.hash, jobs.len());
        jobs.push(write::PayloadJob {
            path: s.path.clone(),
            fs_path: new.content_path(&s.path),
            size: n.size,
            hash: n.hash,
            base: base.as_ref().and_then(|b| old.get(b).map(|o| (b.clone(), old.content_path(b), o.size))),
        });
    }
    let store = write::FrameStore::new_in(&out_dir)?;
    let encoded = write::encode_all(
        &jobs,
        write::EncodeOptions { level: opts.level, chunk: opts.chunk_size, solid_size: opts.solid_size },
        &store,
        progress,
    )?;

    // Frames in order of first use (jobs are in order of their first Place); pieces per content.
    let mut frame_index: Vec<Option<u32>> = vec![None; encoded.frames.len()];
    let mut stored: Vec<(u64, u64)> = Vec::new();
    let mut pieces_of: BTreeMap<bundle::Hash, (Vec<Piece>, write::Encoding)> = BTreeMap::new();
    for (job, enc) in jobs.iter().zip(&encoded.files) {
        let mut pieces = Vec::new();
        for pr in &enc.pieces {
            let f = &encoded.frames[pr.frame];
            if let Some(base) = f.method.base() {
                used.insert(base.clone());
            }
            let index = match frame_index[pr.frame] {
                Some(i) => i,
                None => {
                    let i = manifest.frames.len() as u32;
                    frame_index[pr.frame] = Some(i);
                    manifest.frames.push(f.frame.clone());
                    stored.push((f.offset, f.frame.size));
                    i
                }
            };
            pieces.push(Piece { frame: index, offset: pr.offset, len: pr.len, method: f.method.clone() });
        }
        pieces_of.insert(job.hash, (pieces, enc.encoding));
    }

    // Fill in content and count.
    let mut stats: BTreeMap<&'static str, Stat> = BTreeMap::new();
    let mut first_user: BTreeMap<bundle::Hash, &BundlePath> = BTreeMap::new();
    for j in &jobs {
        first_user.insert(j.hash, &j.path);
    }
    for e in d.entries.iter_mut() {
        let Kind::File { size, hash, content, .. } = &mut e.kind else {
            continue;
        };
        match content {
            Content::Unchanged => bump(&mut stats, "unchanged", *size, 0),
            Content::Empty => bump(&mut stats, "empty", 0, 0),
            Content::Copy { .. } => bump(&mut stats, "copy", *size, 0),
            Content::Pieces(ps) => {
                let Some((pieces, encoding)) = pieces_of.get(hash) else {
                    return Err(Error::Invalid(bundle::Error::Manifest(format!(
                        "builder bug: no payload for {}",
                        e.path
                    ))));
                };
                *ps = pieces.clone();
                if first_user.get(hash) != Some(&&e.path) {
                    bump(&mut stats, "dedup", *size, 0);
                    continue;
                }
                let out: u64 = pieces.iter().map(|p| manifest.frames[p.frame as usize].size).sum();
                let k = match encoding {
                    write::Encoding::Zstd => "zstd",
                    write::Encoding::Patch => "patch",
                    write::Encoding::Chunked => "chunked",
                    write::Encoding::Bsdiff => "bsdiff",
                    // Counted per frame below.
                    write::Encoding::Solid => continue,
                };
                bump(&mut stats, k, *size, out);
                if let Some(s) = stats.get_mut(k) {
                    s.frames += pieces.len() as u64;
                }
            }
        }
    }
    let (files, bytes_in, bytes_out, frames) = encoded.solid;
    if files > 0 {
        stats.insert("solid", Stat { files, bytes_in, bytes_out, frames });
    }
    // Files and symlinks given OLD's mtime; the files among them are also counted as unchanged.
    if kept_mtimes.0 > 0 {
        stats.insert("mtime_kept", Stat { files: kept_mtimes.0, bytes_in: kept_mtimes.1, bytes_out: 0, frames: 0 });
    }
    // Stats above describe the whole tree; the manifest lists only the entries the bundle needs
    // (the script and `old` are final now, so the rule of bundle-format.md §4.2 can be applied).
    manifest.entries = std::mem::take(&mut d.entries);
    manifest.old = old_list(&used);
    manifest.drop_unneeded_entries();

    // A bundle the applier would refuse is a builder bug (or an inexpressible tree): stop here.
    manifest.check(&Limits::default()).map_err(Error::Invalid)?;
    bundle::script::validate(&manifest).map_err(Error::Invalid)?;

    let mbytes = manifest.encode();
    if mbytes.len() as u64 > Limits::default().max_manifest_bytes {
        return Err(Error::Invalid(bundle::Error::TooLarge {
            what: "manifest".into(),
            size: mbytes.len() as u64,
            limit: Limits::default().max_manifest_bytes,
        }));
    }
    let sigs: Vec<bundle::sig::SignatureEntry> =
        secrets.iter().map(|k| (k.public().bytes, k.sign_manifest(&mbytes))).collect();
    let sbytes = bundle::sig::encode_signatures(&sigs);
    let bytes = write::write_bundle(&opts.out, &mbytes, &sbytes, &stored, store, progress)?;

    Ok(BuildReport {
        ferry_report: 1,
        command: "build",
        bundle: opts.out.display().to_string(),
        bytes,
        version: opts.version,
        entries: manifest.entries.len(),
        tree_entries,
        steps: manifest.script.len(),
        frames: manifest.frames.len(),
        stats,
        duration_ms: started.elapsed().as_millis() as u64,
        dry_run: false,
        script: manifest.script,
        warnings,
    })
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
