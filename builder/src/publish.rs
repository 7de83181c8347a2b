//! `ferry-build publish`: add a version to a channel repository (bundle-format.md §18.4), re-sign
//! its freshness (`--refresh`), or remove what its index no longer names (`--prune`).
//!
//! A publish, under an exclusive `flock` on the channel's lock file in the store:
//!
//! 1. reads the current index, if any (decoded, release signatures checked against the given
//!    release keys), and refuses a version not above its `latest`;
//! 2. stores NEW as `STORE/C/trees/vV.tar.zst` ([`crate::treetar`] for a directory; an archive
//!    input is stored as it is, compressed if it was not), atomically;
//! 3. builds, `--jobs` at a time, a delta from each of the newest `--deltas-from` stored versions
//!    the index knows, and a full bundle, all from the stored archive (so the trees targets get
//!    and the bases of future deltas are the same bytes), each to a dot-prefixed temporary file in
//!    `REPO/C/bundles/`; signs them; names each by its BLAKE3, fsyncs and renames it, fsyncs the
//!    directory;
//! 4. writes the new index last: temporary file in `REPO/C/`, fsync, rename over
//!    `index.ferry-index`, fsync the directory.
//!
//! Killed at any point, the repository holds the old index and all its bundles (plus files no
//! index names, which `--prune` removes), or the new index and all its bundles.

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::sign::SignOptions;
use crate::signer::Signer;
use crate::BuildOptions;
use bundle::hash::Hash;
use bundle::index::{
    check_channel_dir, fresh_message, release_message, BundleRef, Fresh, Index, IndexError, Release, BUNDLES_DIR,
    INDEX_FILE, INDEX_FORMAT,
};
use bundle::sig::{PublicKey, SecretKey, Signatures, TrustPolicy};
use serde::Serialize;
use serde_bytes::ByteBuf;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Default `--deltas-from`.
pub const DEFAULT_DELTAS_FROM: usize = 3;
/// Default `--jobs`.
pub const DEFAULT_JOBS: usize = 2;
/// Default `--expires` (freshness), seconds: 7 days.
pub const DEFAULT_FRESH_EXPIRES: u64 = 7 * 86_400;
/// The store's directory of past trees, inside `STORE/CHANNEL/`.
pub const TREES_DIR: &str = "trees";
/// The lock file, inside `STORE/CHANNEL/`.
pub const LOCK_FILE: &str = "lock";

/// Why a publish, refresh or prune was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{path}: the current index cannot be read: {source}")]
    BadIndex { path: PathBuf, source: IndexError },
    #[error("{path}: the current index's release part is not signed by any of the given release keys ({given}); refusing to extend or re-sign it")]
    NotOurs { path: PathBuf, given: String },
    #[error("{path}: the index is of channel {found:?}, not {channel:?}")]
    WrongChannel { path: PathBuf, found: String, channel: String },
    #[error("version {version} is not above the channel's latest version {latest} ({path}): a publish must add a newer version")]
    NotNewer { path: PathBuf, version: u64, latest: u64 },
    #[error("{path}: another publish of channel {channel:?} holds the lock; try again when it has finished")]
    Locked { path: PathBuf, channel: String },
    #[error("{path}: no index to refresh or prune (publish a version first)")]
    NoIndex { path: PathBuf },
    #[error("{path}: timestamp key {key} is not listed in the index's release part ({listed}); only a listed key can re-sign freshness (a publish with --timestamp-key lists it)")]
    TimestampNotListed { path: PathBuf, key: String, listed: String },
    #[error("{path}: release key {key} did not sign the index's release part (signed by {signers}); re-signing freshness with it would give an index no target accepts")]
    NotASigner { path: PathBuf, key: String, signers: String },
    #[error("{path}: the index about to be written does not verify, nothing written: {source}")]
    SelfCheck { path: PathBuf, source: IndexError },
    #[error("the new index would be invalid (a publisher bug): {0}")]
    InvalidIndex(String),
    #[error("building {what}: {source}")]
    Build { what: String, source: Box<Error> },
}

impl From<PublishError> for Error {
    fn from(e: PublishError) -> Error {
        Error::Publish(Box::new(e))
    }
}

/// The keys of a publish or refresh.
pub struct Keys {
    /// Release keys (`--key`, `--signer-command`): sign bundles and release parts.
    pub release: Vec<Signer>,
    /// Public keys of the release signers known before signing (key files, `--signer-pub`).
    pub release_public: Vec<PublicKey>,
    /// `--timestamp-key`: signs the freshness part.
    pub timestamp: Option<SecretKey>,
    /// `--timestamp-pub`: further keys the release part lists as timestamp keys.
    pub timestamp_public: Vec<PublicKey>,
}

/// Everything `publish` takes (besides the keys).
pub struct PublishOptions {
    pub repo: PathBuf,
    pub channel: String,
    /// `STORE`; the channel's part is `STORE/CHANNEL/`.
    pub store: PathBuf,
    pub new: PathBuf,
    pub version: u64,
    pub deltas_from: usize,
    pub jobs: usize,
    pub keep_versions: Option<usize>,
    /// Freshness lifetime, seconds.
    pub expires: u64,
    /// Release part lifetime, seconds.
    pub release_expires: Option<u64>,
    pub no_full: bool,
    /// Options every bundle is built with (level, hooks, ...); input, output, version, base and
    /// keys are set per bundle.
    pub build: BuildOptions,
    /// Seconds since the epoch (index `created`, `issued`).
    pub now: u64,
}

/// One bundle a publish wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Written {
    pub file: String,
    pub from: Option<u64>,
    pub to: u64,
    pub size: u64,
    pub blake3: String,
    pub bundle_id: String,
    pub build_seconds: f64,
}

/// The `--json` report of a publish.
#[derive(Clone, Debug, Serialize)]
pub struct PublishReport {
    pub ferry_report: u32,
    pub command: &'static str,
    pub mode: &'static str,
    pub channel: String,
    pub version: u64,
    pub index: String,
    pub store_tree: String,
    pub bundles: Vec<Written>,
    /// Bundles the new index names (old and new).
    pub index_bundles: usize,
    /// Bundles dropped from the index by `--keep-versions` (their files stay until `--prune`).
    pub dropped: Vec<String>,
    pub release_seq: u64,
    pub fresh_seq: u64,
    pub fresh_expires: u64,
    /// Bytes of the bundles written.
    pub total_bytes: u64,
    pub wall_seconds: f64,
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The `--json` report of `--refresh`.
#[derive(Clone, Debug, Serialize)]
pub struct RefreshReport {
    pub ferry_report: u32,
    pub command: &'static str,
    pub mode: &'static str,
    pub channel: String,
    pub index: String,
    pub latest: u64,
    pub release_seq: u64,
    pub fresh_seq: u64,
    pub fresh_expires: u64,
    pub signed_by: Vec<String>,
    pub by_timestamp_key: bool,
}

/// The `--json` report of `--prune`.
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    pub ferry_report: u32,
    pub command: &'static str,
    pub mode: &'static str,
    pub channel: String,
    /// Paths removed (bundles, temporary files, store trees).
    pub removed: Vec<String>,
    pub removed_bytes: u64,
    /// Versions whose trees the store keeps.
    pub kept_trees: Vec<u64>,
}

/// Parse a duration: seconds, or a number with `s`, `m`, `h`, `d` or `w`.
pub fn parse_duration(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        Some((i, 'd')) => (&t[..i], 86_400),
        Some((i, 'w')) => (&t[..i], 7 * 86_400),
        _ => (t, 1),
    };
    num.parse::<u64>().ok().and_then(|n| n.checked_mul(mul)).filter(|&n| n > 0).ok_or_else(|| {
        format!("invalid duration {s:?}: expected seconds or a number with s, m, h, d or w (e.g. 90m, 12h, 7d)")
    })
}

/// The default store of `repo`: the sibling directory `REPO.store` (REPO as given, without a
/// trailing slash; made absolute first only when it ends in `.` or `..`).
pub fn default_store(repo: &Path) -> PathBuf {
    let mut base: PathBuf = repo.components().collect();
    if base.file_name().is_none() {
        base = repo.canonicalize().unwrap_or(base);
    }
    let mut s = base.into_os_string();
    s.push(".store");
    PathBuf::from(s)
}

/// Test hook: with the cargo feature `failpoints`, `FERRY_PUBLISH_CRASH_AT=STEP` (or `STEP:K`,
/// the K-th time) aborts the process at that step. Steps in order: `locked`, `tree-temp`,
/// `tree-stored`, `bundle-built`, `bundle-signed`, `bundle-renamed` (after each rename),
/// `bundles-synced`, `index-temp`, `index-renamed`.
fn failpoint(step: &str) {
    #[cfg(feature = "failpoints")]
    {
        static SEEN: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());
        if let Ok(v) = std::env::var("FERRY_PUBLISH_CRASH_AT") {
            let (name, k) = match v.split_once(':') {
                Some((n, k)) => (n.to_string(), k.parse::<usize>().unwrap_or(1)),
                None => (v.clone(), 1),
            };
            if name == step {
                let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
                let n = match seen.iter_mut().find(|(s, _)| s == step) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        seen.push((step.to_string(), 1));
                        1
                    }
                };
                if n == k {
                    eprintln!("ferry-build: failpoint {step}: aborting");
                    std::process::abort();
                }
            }
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = step;
}

/// The channel's directories: `REPO/C`, `REPO/C/bundles`, `STORE/C`, `STORE/C/trees`.
struct Dirs {
    chan: PathBuf,
    bundles: PathBuf,
    store: PathBuf,
    trees: PathBuf,
}

impl Dirs {
    fn new(repo: &Path, store: &Path, channel: &str, create: bool) -> Result<Dirs> {
        check_channel_dir(channel).map_err(Error::Usage)?;
        let chan = repo.join(channel);
        let d = Dirs {
            bundles: chan.join(BUNDLES_DIR),
            chan,
            store: store.join(channel),
            trees: store.join(channel).join(TREES_DIR),
        };
        if create {
            for p in [&d.bundles, &d.trees] {
                fs::create_dir_all(p).map_err(Error::io(p))?;
            }
        } else {
            fs::create_dir_all(&d.store).map_err(Error::io(&d.store))?;
        }
        Ok(d)
    }

    fn index(&self) -> PathBuf {
        self.chan.join(INDEX_FILE)
    }

    fn tree(&self, v: u64) -> PathBuf {
        self.trees.join(format!("v{v}.tar.zst"))
    }
}

/// The channel's lock, held until dropped (the kernel releases it if the process dies).
struct Lock {
    _file: File,
}

fn lock(d: &Dirs, channel: &str) -> Result<Lock> {
    let path = d.store.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(Error::io(&path))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            return Err(PublishError::Locked { path, channel: channel.to_string() }.into())
        }
        Err(e) => return Err(Error::Io { path, source: e.into() }),
    }
    failpoint("locked");
    Ok(Lock { _file: f })
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(Error::io(dir))
}

/// A new dot-prefixed temporary file in `dir` (`O_EXCL`, not following a planted symlink).
fn create_temp(dir: &Path, stem: &str) -> Result<(PathBuf, File)> {
    loop {
        let p = dir.join(format!(".{stem}.{}-{:016x}.tmp", std::process::id(), rand::random::<u64>()));
        match OpenOptions::new().write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::Io { path: p, source: e }),
        }
    }
}

/// Write `bytes` to `dir/name` atomically: temporary file, fsync, rename, fsync the directory.
/// `step` names the failpoints (`STEP-temp`, `STEP-renamed`).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], step: &str) -> Result<()> {
    let (tmp, mut f) = create_temp(dir, name)?;
    let r = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Write { path: tmp, source: e });
    }
    drop(f);
    failpoint(&format!("{step}-temp"));
    let dst = dir.join(name);
    if let Err(e) = fs::rename(&tmp, &dst) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Io { path: dst, source: e });
    }
    failpoint(&format!("{step}-renamed"));
    fsync_dir(dir)
}

/// Read and decode the channel's index; `None` if there is none.
fn read_index(d: &Dirs, channel: &str) -> Result<Option<Index>> {
    let path = d.index();
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { path, source: e }),
    };
    let idx = Index::decode(&bytes).map_err(|source| PublishError::BadIndex { path: path.clone(), source })?;
    if idx.release.channel != channel {
        return Err(
            PublishError::WrongChannel { path, found: idx.release.channel, channel: channel.to_string() }.into()
        );
    }
    Ok(Some(idx))
}

/// Check that the index's signatures verify and that one of `keys` signed its release part
/// (expiry is not checked: an expired index is what a publish or refresh replaces).
fn check_ours(idx: &Index, keys: &[PublicKey], path: &Path) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let policy = TrustPolicy { keys: keys.to_vec(), threshold: 1, retired: vec![] };
    match idx.verify(&policy, 0, 0, None) {
        Ok(_) => Ok(()),
        Err(IndexError::Release(_)) | Err(IndexError::FreshUntrusted { .. }) => Err(PublishError::NotOurs {
            path: path.to_path_buf(),
            given: keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(", "),
        }
        .into()),
        Err(source) => Err(PublishError::BadIndex { path: path.to_path_buf(), source }.into()),
    }
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Store NEW as `trees/vV.tar.zst`, atomically.
fn store_tree(o: &PublishOptions, d: &Dirs, progress: &Progress) -> Result<PathBuf> {
    let dst = d.tree(o.version);
    let (tmp, f) = create_temp(&d.trees, &format!("v{}.tar.zst", o.version))?;
    let r = (|| -> Result<()> {
        let werr = |e: io::Error| Error::Write { path: tmp.clone(), source: e };
        match crate::image::input_kind(&o.new)? {
            crate::image::InputKind::TarZst => {
                let mut src = File::open(&o.new).map_err(Error::io(&o.new))?;
                let mut f = &f;
                io::copy(&mut src, &mut f).map_err(werr)?;
            }
            crate::image::InputKind::Tar => {
                let mut src = File::open(&o.new).map_err(Error::io(&o.new))?;
                let mut enc = zstd::stream::write::Encoder::new(&f, 3).map_err(werr)?;
                io::copy(&mut src, &mut enc).map_err(werr)?;
                enc.finish().map_err(werr)?;
            }
            crate::image::InputKind::Dir => {
                // Every namespace is read, so the store loses nothing whatever --xattrs later
                // builds choose.
                let tree =
                    crate::scan::scan(&o.new, "new", o.build.fail_on_sockets, &crate::xattr::Carry::All, progress)?;
                let enc = zstd::stream::write::Encoder::new(&f, 3).map_err(werr)?;
                let mut w = io::BufWriter::with_capacity(1 << 20, enc);
                crate::treetar::write_tree(&tree, &mut w, &tmp)?;
                let enc = w.into_inner().map_err(|e| werr(e.into_error()))?;
                enc.finish().map_err(werr)?;
            }
        }
        f.sync_all().map_err(werr)
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    drop(f);
    failpoint("tree-temp");
    fs::rename(&tmp, &dst).map_err(Error::io(&dst))?;
    fsync_dir(&d.trees)?;
    failpoint("tree-stored");
    Ok(dst)
}

/// The stored versions a delta is built from: the newest `k` below `version` that the index
/// names as a target and whose tree the store holds.
fn delta_bases(prev: Option<&Index>, d: &Dirs, version: u64, k: usize) -> Vec<u64> {
    let Some(idx) = prev else { return Vec::new() };
    let known: BTreeSet<u64> = idx.release.bundles.iter().map(|b| b.to).filter(|&v| v < version).collect();
    known.into_iter().rev().filter(|&v| d.tree(v).is_file()).take(k).collect()
}

/// One bundle to build: from `from` (None: full) to the new version.
struct Job {
    from: Option<u64>,
}

/// A bundle built and signed, under its temporary name.
struct Built {
    from: Option<u64>,
    tmp: PathBuf,
    id: Hash,
    secs: f64,
}

fn parse_hex32(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Hash(out))
}

/// Build every job, at most `o.jobs` at a time; on any failure, remove what was built.
fn build_all(o: &PublishOptions, d: &Dirs, new_tree: &Path, jobs: &[Job]) -> Result<Vec<Built>> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<(usize, Result<Built>)>> = Mutex::new(Vec::new());
    let workers = o.jobs.clamp(1, jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { return };
                let r = build_one(o, d, new_tree, job);
                if r.is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let mut built = Vec::new();
    let mut first_err = None;
    for (_, r) in results {
        match r {
            Ok(b) => built.push(b),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        for b in &built {
            let _ = fs::remove_file(&b.tmp);
        }
        return Err(e);
    }
    Ok(built)
}

fn job_name(from: Option<u64>, to: u64) -> String {
    match from {
        Some(f) => format!("v{f}-v{to}"),
        None => format!("v{to}.full"),
    }
}

fn build_one(o: &PublishOptions, d: &Dirs, new_tree: &Path, job: &Job) -> Result<Built> {
    let started = Instant::now();
    let what = job_name(job.from, o.version);
    // A placeholder file reserves the temporary name; the build writes over it.
    let (tmp, f) = create_temp(&d.bundles, &what)?;
    drop(f);
    let mut b = o.build.clone();
    b.new = new_tree.to_path_buf();
    b.old = job.from.map(|f| d.tree(f));
    b.base_version = job.from;
    b.version = o.version;
    b.out = tmp.clone();
    b.keys = Vec::new();
    b.unsigned = true;
    b.dry_run = false;
    let r = crate::build(&b, &Progress::new(crate::progress::Verbosity::Quiet));
    let report = match r {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(PublishError::Build { what, source: Box::new(e) }.into());
        }
    };
    let id = report.bundle_id.as_deref().and_then(parse_hex32).ok_or_else(|| PublishError::Build {
        what: what.clone(),
        source: Box::new(Error::Usage("the build reported no bundle id".into())),
    })?;
    failpoint("bundle-built");
    Ok(Built { from: job.from, tmp, id, secs: started.elapsed().as_secs_f64() })
}

/// BLAKE3 and size of a file.
fn hash_file(p: &Path) -> Result<(Hash, u64)> {
    let mut h = blake3::Hasher::new();
    let f = File::open(p).map_err(Error::io(p))?;
    h.update_reader(&f).map_err(Error::io(p))?;
    let size = f.metadata().map_err(Error::io(p))?.len();
    Ok((Hash::from(h.finalize()), size))
}

/// Sign `message` with every release signer; the signatures and who made them.
fn sign_all(signers: &[Signer], message: &[u8]) -> Result<(Signatures, Vec<PublicKey>)> {
    let mut sigs = Signatures::new();
    let mut who = Vec::new();
    for s in signers {
        let (pk, sig) = s.sign_bytes(message)?;
        sigs.insert(pk.bytes, sig);
        who.push(pk);
    }
    Ok((sigs, who))
}

fn sorted_timestamp_keys(keys: &Keys) -> Vec<ByteBuf> {
    let mut v: BTreeSet<[u8; 32]> = keys.timestamp_public.iter().map(|k| k.bytes).collect();
    if let Some(t) = &keys.timestamp {
        v.insert(t.public().bytes);
    }
    v.into_iter().map(|k| ByteBuf::from(k.to_vec())).collect()
}

/// Sign a freshness part: by the timestamp key if there is one, else by the release signers.
fn sign_fresh(keys: &Keys, fresh: &Fresh) -> Result<(Signatures, Vec<PublicKey>)> {
    let msg = fresh_message(&fresh.encode());
    match &keys.timestamp {
        Some(t) => {
            let mut s = Signatures::new();
            s.insert(t.public().bytes, t.sign_message(&msg));
            Ok((s, vec![t.public()]))
        }
        None => sign_all(&keys.release, &msg),
    }
}

/// Check the index we are about to write as a reader will (signatures, binding, expiry), with
/// the keys that signed its release part as the trust policy.
fn self_check(idx: &Index, release_signers: &[PublicKey], now: u64, path: &Path) -> Result<()> {
    let policy = TrustPolicy { keys: release_signers.to_vec(), threshold: 1, retired: vec![] };
    let back = Index::decode(&idx.encode()).map_err(|source| PublishError::SelfCheck { path: path.into(), source })?;
    back.verify(&policy, now, 0, None).map_err(|source| PublishError::SelfCheck { path: path.into(), source })?;
    Ok(())
}

/// `ferry-build publish`: add `o.version` to the channel.
pub fn publish(o: &PublishOptions, keys: &mut Keys, progress: &Progress) -> Result<PublishReport> {
    let started = Instant::now();
    check_options(o, keys)?;
    let d = Dirs::new(&o.repo, &o.store, &o.channel, true)?;
    let _lock = lock(&d, &o.channel)?;
    let index_path = d.index();
    let prev = read_index(&d, &o.channel)?;
    if let Some(p) = &prev {
        check_ours(p, &keys.release_public, &index_path)?;
        if o.version <= p.release.latest {
            return Err(
                PublishError::NotNewer { path: index_path, version: o.version, latest: p.release.latest }.into()
            );
        }
    }
    let bases = delta_bases(prev.as_ref(), &d, o.version, o.deltas_from);
    if bases.is_empty() && o.no_full {
        return Err(Error::Usage(format!(
            "--no-full: there is no stored earlier version of channel {:?} to build a delta from",
            o.channel
        )));
    }
    progress.note(&format!("publish: storing version {} of {:?}", o.version, o.channel));
    let new_tree = store_tree(o, &d, progress)?;
    let mut jobs: Vec<Job> = bases.iter().map(|&f| Job { from: Some(f) }).collect();
    if !o.no_full {
        // The full bundle is the largest job: start it first.
        jobs.insert(0, Job { from: None });
    }
    progress.note(&format!("publish: building {} bundles, {} at a time", jobs.len(), o.jobs.max(1)));
    let built = build_all(o, &d, &new_tree, &jobs)?;
    sign_built(&built, keys)?;
    let (written, refs) = name_and_sync(&built, o, &d)?;
    let (release, dropped) = new_release(o, prev.as_ref(), refs, keys);
    let idx = write_index(o, &d, prev.as_ref(), release, keys)?;

    let mut warnings = crate::xattr::skipped_warnings();
    if prev.is_some() && bases.is_empty() {
        warnings.push(format!(
            "no stored tree of an earlier version of {:?} in {}: published a full bundle only",
            o.channel,
            shown(&d.trees)
        ));
    }
    let total_bytes = written.iter().map(|w| w.size).sum();
    Ok(PublishReport {
        ferry_report: 1,
        command: "publish",
        mode: "publish",
        channel: o.channel.clone(),
        version: o.version,
        index: shown(&index_path),
        store_tree: shown(&new_tree),
        bundles: written,
        index_bundles: idx.release.bundles.len(),
        dropped,
        release_seq: idx.release.seq,
        fresh_seq: idx.fresh.seq,
        fresh_expires: idx.fresh.expires,
        total_bytes,
        wall_seconds: started.elapsed().as_secs_f64(),
        warnings,
    })
}

/// The option combinations `publish` refuses (usage errors) before touching anything.
fn check_options(o: &PublishOptions, keys: &Keys) -> Result<()> {
    if keys.release.is_empty() {
        return Err(Error::Usage("publish needs release keys: --key K.secret or --signer-command CMD".into()));
    }
    if o.deltas_from == 0 && o.no_full {
        return Err(Error::Usage("--no-full with --deltas-from 0 would publish no bundle".into()));
    }
    if o.keep_versions == Some(0) {
        return Err(Error::Usage("--keep-versions must be at least 1".into()));
    }
    Ok(())
}

/// Sign every built bundle with the release keys (loaded once); on a failure every temporary
/// bundle is removed.
fn sign_built(built: &[Built], keys: &mut Keys) -> Result<()> {
    let mut so = SignOptions { file: PathBuf::new(), signers: std::mem::take(&mut keys.release), imports: Vec::new() };
    let mut sign_err = None;
    for b in built {
        so.file = b.tmp.clone();
        if let Err(e) = crate::sign::sign(&so, &mut |_| {}) {
            sign_err = Some(e);
            break;
        }
    }
    keys.release = std::mem::take(&mut so.signers);
    if let Some(e) = sign_err {
        for b in built {
            let _ = fs::remove_file(&b.tmp);
        }
        return Err(e);
    }
    failpoint("bundle-signed");
    Ok(())
}

/// Name every signed bundle by its BLAKE3, make it durable and rename it into `bundles/`, then
/// fsync the directory: the report's entries and the index's.
fn name_and_sync(built: &[Built], o: &PublishOptions, d: &Dirs) -> Result<(Vec<Written>, Vec<BundleRef>)> {
    let mut written = Vec::new();
    let mut refs = Vec::new();
    for (i, b) in built.iter().enumerate() {
        let (hash, size) = hash_file(&b.tmp)?;
        File::open(&b.tmp).and_then(|f| f.sync_all()).map_err(Error::io(&b.tmp))?;
        let file = format!("{}.{}.ferry", job_name(b.from, o.version), &hash.to_hex()[..16]);
        let dst = d.bundles.join(&file);
        if let Err(e) = fs::rename(&b.tmp, &dst) {
            for b in &built[i..] {
                let _ = fs::remove_file(&b.tmp);
            }
            return Err(Error::Io { path: dst, source: e });
        }
        failpoint("bundle-renamed");
        written.push(Written {
            file: file.clone(),
            from: b.from,
            to: o.version,
            size,
            blake3: hash.to_hex(),
            bundle_id: b.id.to_hex(),
            build_seconds: b.secs,
        });
        refs.push(BundleRef { file, from: b.from, to: o.version, size, blake3: hash, id: b.id });
    }
    fsync_dir(&d.bundles)?;
    failpoint("bundles-synced");
    Ok((written, refs))
}

/// The new release part: the previous bundles and the new ones, minus the versions
/// `--keep-versions` drops (returned by file name).
fn new_release(o: &PublishOptions, prev: Option<&Index>, refs: Vec<BundleRef>, keys: &Keys) -> (Release, Vec<String>) {
    let mut all: Vec<BundleRef> = prev.map(|p| p.release.bundles.clone()).unwrap_or_default();
    all.retain(|b| !refs.iter().any(|r| r.file == b.file));
    all.extend(refs);
    let mut dropped = Vec::new();
    if let Some(n) = o.keep_versions {
        let versions: BTreeSet<u64> = all.iter().map(|b| b.to).collect();
        let kept: BTreeSet<u64> = versions.into_iter().rev().take(n).collect();
        all.retain(|b| {
            let keep = kept.contains(&b.to);
            if !keep {
                dropped.push(b.file.clone());
            }
            keep
        });
    }
    all.sort_by(|a, b| (a.to, a.from.map_or(0, |f| f + 1), &a.file).cmp(&(b.to, b.from.map_or(0, |f| f + 1), &b.file)));
    let release = Release {
        format: INDEX_FORMAT,
        channel: o.channel.clone(),
        seq: prev.map_or(1, |p| p.release.seq + 1),
        created: o.now,
        expires: o.release_expires.map(|e| o.now.saturating_add(e)),
        latest: o.version,
        timestamp_keys: sorted_timestamp_keys(keys),
        bundles: all,
    };
    (release, dropped)
}

/// Sign `release` and a new freshness part, check the index as a reader would, and write it
/// atomically: the last step of a publish.
fn write_index(o: &PublishOptions, d: &Dirs, prev: Option<&Index>, release: Release, keys: &Keys) -> Result<Index> {
    release.check().map_err(PublishError::InvalidIndex)?;
    let release_bytes = release.encode();
    let (release_sigs, release_signers) = sign_all(&keys.release, &release_message(&release_bytes))?;
    let fresh = Fresh {
        format: INDEX_FORMAT,
        channel: o.channel.clone(),
        release: Hash::of(&release_bytes),
        release_seq: release.seq,
        seq: prev.map_or(1, |p| p.fresh.seq + 1),
        issued: o.now,
        expires: o.now.saturating_add(o.expires),
    };
    let (fresh_sigs, _) = sign_fresh(keys, &fresh)?;
    let idx = Index::new(release, release_sigs, fresh, fresh_sigs);
    self_check(&idx, &release_signers, o.now, &d.index())?;
    write_atomic(&d.chan, INDEX_FILE, &idx.encode(), "index")?;
    Ok(idx)
}

/// `ferry-build publish --refresh`: the same release part with a new freshness part.
pub fn refresh(
    repo: &Path,
    store: &Path,
    channel: &str,
    keys: &mut Keys,
    expires: u64,
    now: u64,
) -> Result<RefreshReport> {
    if keys.timestamp.is_none() && keys.release.is_empty() {
        return Err(Error::Usage("--refresh needs --timestamp-key T.secret or the release keys (--key)".into()));
    }
    let d = Dirs::new(repo, store, channel, false)?;
    let _lock = lock(&d, channel)?;
    let path = d.index();
    let idx = read_index(&d, channel)?.ok_or_else(|| PublishError::NoIndex { path: path.clone() })?;
    let signers = release_signers_may_refresh(&idx, keys, &path)?;
    let fresh = Fresh {
        format: INDEX_FORMAT,
        channel: channel.to_string(),
        release: Hash::of(&idx.release_bytes),
        release_seq: idx.release.seq,
        seq: idx.fresh.seq + 1,
        issued: now,
        expires: now.saturating_add(expires),
    };
    let (fresh_sigs, who) = sign_fresh(keys, &fresh)?;
    if keys.timestamp.is_none() {
        // Signed by release keys: each must be one that signed the release part.
        each_signed(&who, &signers, &path)?;
    }
    let new = Index {
        release_bytes: idx.release_bytes.clone(),
        release_sigs: idx.release_sigs.clone(),
        fresh_bytes: fresh.encode(),
        fresh_sigs,
        release: idx.release.clone(),
        fresh,
    };
    self_check(&new, &signers, now, &path)?;
    write_atomic(&d.chan, INDEX_FILE, &new.encode(), "index")?;
    Ok(RefreshReport {
        ferry_report: 1,
        command: "publish",
        mode: "refresh",
        channel: channel.to_string(),
        index: shown(&path),
        latest: new.release.latest,
        release_seq: new.release.seq,
        fresh_seq: new.fresh.seq,
        fresh_expires: new.fresh.expires,
        signed_by: who.iter().map(|k| k.id.clone()).collect(),
        by_timestamp_key: keys.timestamp.is_some(),
    })
}

/// The keys of the release part's signatures (each verified strictly), after checking that
/// `keys` may refresh it: the timestamp key is one the release part lists, or (without one) every
/// release key given signed the release part.
fn release_signers_may_refresh(idx: &Index, keys: &Keys, path: &Path) -> Result<Vec<PublicKey>> {
    let rmsg = release_message(&idx.release_bytes);
    let signers: Vec<PublicKey> = idx
        .release_sigs
        .entries()
        .iter()
        .map(|(k, s)| bundle::sig::verify_strict(k, &rmsg, s))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| PublishError::BadIndex { path: path.to_path_buf(), source: IndexError::Release(e) })?;
    if let Some(t) = &keys.timestamp {
        let pk = t.public();
        if !idx.release.timestamp_keys().contains(&pk.bytes) {
            let v: Vec<String> = idx.release.timestamp_keys().iter().map(bundle::sig::key_id).collect();
            let listed = if v.is_empty() { "none listed".to_string() } else { v.join(", ") };
            return Err(PublishError::TimestampNotListed { path: path.to_path_buf(), key: pk.id, listed }.into());
        }
    } else {
        each_signed(&keys.release_public, &signers, path)?;
    }
    Ok(signers)
}

/// Every key of `keys` is one of `signers` (the release part's), else [`PublishError::NotASigner`].
fn each_signed(keys: &[PublicKey], signers: &[PublicKey], path: &Path) -> Result<()> {
    for k in keys {
        if !signers.iter().any(|s| s.bytes == k.bytes) {
            return Err(PublishError::NotASigner {
                path: path.to_path_buf(),
                key: k.id.clone(),
                signers: signers.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "),
            }
            .into());
        }
    }
    Ok(())
}

fn size_of(p: &Path) -> u64 {
    fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn remove(p: &Path, removed: &mut Vec<String>, bytes: &mut u64) -> Result<()> {
    let md = fs::symlink_metadata(p).map_err(Error::io(p))?;
    if md.is_dir() {
        fs::remove_dir_all(p).map_err(Error::io(p))?;
    } else {
        *bytes += size_of(p);
        fs::remove_file(p).map_err(Error::io(p))?;
    }
    removed.push(shown(p));
    Ok(())
}

/// `ferry-build publish --prune`: remove the files in `bundles/` the index does not name
/// (bundles dropped from the index, leftovers of a killed publish), stale temporary files
/// beside the index, and the store's trees no future delta needs (all but the newest
/// `deltas_from` versions the index names).
pub fn prune(repo: &Path, store: &Path, channel: &str, deltas_from: usize) -> Result<PruneReport> {
    let d = Dirs::new(repo, store, channel, false)?;
    let _lock = lock(&d, channel)?;
    let path = d.index();
    let idx = read_index(&d, channel)?.ok_or_else(|| PublishError::NoIndex { path: path.clone() })?;
    let named: BTreeSet<&str> = idx.release.bundles.iter().map(|b| b.file.as_str()).collect();
    let mut removed = Vec::new();
    let mut bytes = 0u64;
    let list = |dir: &Path| -> Result<Vec<(String, PathBuf)>> {
        let mut v = Vec::new();
        match fs::read_dir(dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e.map_err(Error::io(dir))?;
                    v.push((e.file_name().to_string_lossy().into_owned(), e.path()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io { path: dir.to_path_buf(), source: e }),
        }
        v.sort();
        Ok(v)
    };
    for (name, p) in list(&d.bundles)? {
        if !named.contains(name.as_str()) {
            remove(&p, &mut removed, &mut bytes)?;
        }
    }
    let index_tmp = format!(".{INDEX_FILE}.");
    for (name, p) in list(&d.chan)? {
        if name.starts_with(&index_tmp) && name.ends_with(".tmp") {
            remove(&p, &mut removed, &mut bytes)?;
        }
    }
    let versions: BTreeSet<u64> = idx.release.bundles.iter().map(|b| b.to).collect();
    let kept: BTreeSet<u64> = versions.iter().rev().take(deltas_from.max(1)).copied().collect();
    for (name, p) in list(&d.trees)? {
        let v = name.strip_prefix('v').and_then(|r| r.strip_suffix(".tar.zst")).and_then(|n| n.parse::<u64>().ok());
        if v.is_some_and(|v| kept.contains(&v)) {
            continue;
        }
        // A temporary file of a killed publish, or a tree of a version no longer needed (or
        // never indexed).
        remove(&p, &mut removed, &mut bytes)?;
    }
    fsync_dir(&d.bundles).ok();
    Ok(PruneReport {
        ferry_report: 1,
        command: "publish",
        mode: "prune",
        channel: channel.to_string(),
        removed,
        removed_bytes: bytes,
        kept_trees: kept.into_iter().collect(),
    })
}

/// Load `--timestamp-key` and `--timestamp-pub` files.
pub fn load_timestamp_keys(secret: Option<&Path>, public: &[PathBuf]) -> Result<(Option<SecretKey>, Vec<PublicKey>)> {
    let t = secret.map(crate::keys::load_secret).transpose()?;
    let p = public.iter().map(|p| crate::keys::load_public(p)).collect::<Result<Vec<_>>>()?;
    Ok((t, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600"), Ok(3600));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("2w"), Ok(1_209_600));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("7x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("d").is_err());
    }

    #[test]
    fn store_is_a_sibling() {
        assert_eq!(default_store(Path::new("/nonexistent/repo/")), PathBuf::from("/nonexistent/repo.store"));
        assert_eq!(default_store(Path::new("repo")), PathBuf::from("repo.store"));
        assert_eq!(default_store(Path::new("a/./repo")), PathBuf::from("a/repo.store"));
    }

    #[test]
    fn hex() {
        let h = Hash([0xab; 32]);
        assert_eq!(parse_hex32(&h.to_hex()), Some(h));
        assert_eq!(parse_hex32("zz"), None);
    }
}
