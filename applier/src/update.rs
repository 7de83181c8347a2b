//! `ferry-apply update SOURCE`: bring a target to the newest version of its channel from a
//! channel repository (bundle-format.md §18.5), over HTTP(S) or from a local directory (a
//! mounted stick).
//!
//! Under the target's lock: finish an interrupted apply first (through [`apply::resume_in`],
//! fetching its bundle again through the index if it is needed and gone); read the index
//! (bounded), verify it against the target's trust policy and the record of the last index
//! this target accepted (`STATE/index-CHANNEL.cbor`, written before the index is used); choose
//! the cheapest chain of bundles ([`crate::path`]); then, bundle by bundle, download it into the
//! cache with the resumable, frame-verified [`fetch`] (or open it on the stick), check it against
//! its index entry (size, BLAKE3, bundle id, versions) and apply it through [`apply::apply_in`].
//! Each bundle is a complete transaction: the state moves to its version when it commits, so a
//! run killed between two bundles continues from there.
//!
//! Nothing here replaces a bundle's own checks: the index only chooses what to fetch.

use crate::apply::{self, Target};
use crate::error::{Ctx, Error, Result};
use crate::fetch::{self, Net};
use crate::state::{self, Dir};
use crate::verify::OpenBundle;
use bundle::index::{Accepted, BundleRef, Index, IndexError, BUNDLES_DIR, INDEX_FILE, MAX_INDEX_BYTES};
use bundle::sig::TrustPolicy;
use bundle::Hash;
use serde::Serialize;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What `update` is asked to do.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Target, state directory, `--trust`, `--no-hooks`, quiet/progress.
    pub apply: apply::Options,
    /// An `http(s)://` URL of the repository root, or a local directory.
    pub source: String,
    /// `--channel`; else the channel the target has pinned.
    pub channel: Option<String>,
    /// `--to`: stop at this version instead of the newest.
    pub to: Option<u64>,
    pub dry_run: bool,
    /// `--cache` (default `STATE/updates`).
    pub cache: Option<PathBuf>,
    /// Seconds the target's clock may be behind the publisher's (§18.2 step 6).
    pub clock_allowance: u64,
    /// Network settings as `fetch` (retries, timeouts, deadline, `--ca-cert`); `url`, `into`,
    /// `trust` and `expect_id` are set per bundle.
    pub net: fetch::Options,
}

/// The accepted index, as the report shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IndexInfo {
    pub release_seq: u64,
    pub fresh_seq: u64,
    /// The freshness part was accepted on a timestamp key's signature (not the release keys').
    pub by_timestamp_key: bool,
    /// When the freshness part expires (seconds since the epoch).
    pub expires: u64,
    /// The newest version the index offers.
    pub latest: u64,
}

/// One bundle of the chosen path.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub file: String,
    pub from: Option<u64>,
    pub to: u64,
    pub size: u64,
}

/// What `update` did (`--json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub channel: String,
    pub source: String,
    /// The installed version before (null: an empty target).
    pub from: Option<u64>,
    /// The version asked for (`--to`, else the index's newest).
    pub to: u64,
    pub index: IndexInfo,
    pub path: Vec<Step>,
    /// Sum of the path's bundle sizes.
    pub bytes_planned: u64,
    /// Bytes received over the network by this run (index, heads, frames).
    pub bytes_downloaded: u64,
    /// Versions committed by this run, in order.
    pub applied: Vec<u64>,
    /// The target already was at the version asked for: nothing was downloaded.
    pub up_to_date: bool,
    pub dry_run: bool,
    /// An interrupted apply finished first: its result ("resumed", "rolled-back").
    pub resumed: Option<String>,
    /// Bundles the index names that the repository turned out not to have (HTTP 404 or 410,
    /// no such file): each was left out and the path chosen again.
    pub missing: Vec<String>,
}

/// Where the repository is.
#[derive(Clone, Debug)]
enum Source {
    Http(String),
    Dir(PathBuf),
}

impl Source {
    fn parse(s: &str) -> Result<Source> {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let u = url::Url::parse(s).map_err(|e| Error::Usage(format!("{s}: not a usable URL: {e}")))?;
            if u.query().is_some() || u.fragment().is_some() {
                return Err(Error::Usage(format!("{s}: the repository URL may have no query or fragment")));
            }
            Ok(Source::Http(s.trim_end_matches('/').to_string()))
        } else if s.contains("://") {
            Err(Error::Usage(format!("{s}: SOURCE is an http:// or https:// URL or a local directory")))
        } else {
            Ok(Source::Dir(PathBuf::from(s)))
        }
    }

    fn index(&self, channel: &str) -> String {
        match self {
            Source::Http(u) => format!("{u}/{channel}/{INDEX_FILE}"),
            Source::Dir(d) => d.join(channel).join(INDEX_FILE).display().to_string(),
        }
    }
}

/// The record of the last index accepted for `channel`, in the state directory.
pub fn accepted_file(channel: &str) -> String {
    format!("index-{channel}.cbor")
}

fn log(o: &Options, msg: impl AsRef<str>) {
    if !o.apply.quiet {
        eprintln!("ferry-apply: update: {}", crate::text::escape(msg.as_ref()));
    }
}

/// An index refusal as the applier's error: expiry and rollback are policy (exit 10), the rest
/// a bad index (exit 3).
fn index_error(at: &str, e: IndexError) -> Error {
    match e {
        IndexError::Expired { .. } | IndexError::Rollback(_) => Error::Policy(format!("{at}: {e}")),
        e => Error::BadPart(format!("{at}: {e}")),
    }
}

/// A local file read whole, at most `max` bytes: a regular file (a FIFO does not block us).
fn read_local(path: &Path, max: u64) -> Result<Vec<u8>> {
    let show = path.display();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .ctx("open", &show)?;
    if !f.metadata().ctx("stat", &show)?.is_file() {
        return Err(Error::BadPart(format!("{show}: not a regular file")));
    }
    let mut out = Vec::new();
    f.take(max + 1).read_to_end(&mut out).ctx("read", &show)?;
    if out.len() as u64 > max {
        return Err(Error::BadPart(format!("{show}: more than {max} bytes, over the limit")));
    }
    Ok(out)
}

/// BLAKE3 of a file.
fn hash_file(path: &Path) -> Result<Hash> {
    let f = std::fs::File::open(path).ctx("open", path.display())?;
    let mut h = blake3::Hasher::new();
    h.update_reader(f).ctx("read", path.display())?;
    Ok(Hash::from(h.finalize()))
}

/// What identifies a cached file between two looks at it: a file replaced or rewritten in
/// between has another inode, size or modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl Stamp {
    /// The regular file at `p` (not followed if a symlink), or `None`.
    fn of(p: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(p).ok()?;
        m.is_file().then(|| Stamp { dev: m.dev(), ino: m.ino(), len: m.len(), mtime: (m.mtime(), m.mtime_nsec()) })
    }
}

/// The cached file `cache/file` if it is complete: a regular file of the entry's size and
/// BLAKE3; with its stamp as it was hashed.
fn cached(cache: &Path, b: &BundleRef) -> Option<(PathBuf, Stamp)> {
    let p = cache.join(&b.file);
    let st = Stamp::of(&p)?;
    (st.len == b.size && hash_file(&p).ok()? == b.blake3 && Stamp::of(&p) == Some(st)).then_some((p, st))
}

/// The run: target (locked unless a dry run), policy, network, source, report so far.
struct Run<'a> {
    o: &'a Options,
    a: apply::Options,
    target: Option<Target>,
    /// A dry run's state directory, opened without creating it or locking.
    sd: Option<Dir>,
    trust: TrustPolicy,
    net: Net,
    source: Source,
    channel: String,
    cache: PathBuf,
    /// Bundles the path choice found complete in the cache (hashed then), by file name, with
    /// the stamp they had: [`Run::download`] does not hash them again.
    complete: std::collections::HashMap<String, Stamp>,
    report: Report,
}

/// `ferry-apply update`. A failure is also recorded as `last_error` in the state file.
pub fn update(o: &Options) -> Result<Report> {
    let r = update_locked(o);
    if let (Err(e), false) = (&r, o.dry_run) {
        // After the lock is released: an unattended run's failure is what `status` shows.
        apply::record_error(&o.apply, &format!("update from {}", o.source), e);
    }
    r
}

/// [`update`] itself.
fn update_locked(o: &Options) -> Result<Report> {
    let source = Source::parse(&o.source)?;
    let mut a = o.apply.clone();
    // Lock (and finish what an interrupted run left) unless this is a dry run, which writes
    // nothing, not even the state directory.
    let (target, sd) = if o.dry_run { (None, apply::open_state(&a)?) } else { (Some(apply::open_target(&a)?), None) };
    let state_dir: Option<&Dir> = target.as_ref().map(|t| &t.state).or(sd.as_ref());
    let trust = apply::load_trust(&a, state_dir)?;
    let mut resumed = None;
    let mut pending: Option<Hash> = None;
    if let Some(t) = &target {
        match apply::resume_in(&a, t) {
            Ok(r) if r.result == "nothing-to-do" => {}
            Ok(r) => {
                log(o, format!("finished the interrupted apply first: {}", r.result));
                resumed = Some(r.result);
            }
            // The interrupted apply needs its bundle again and it is gone: find it through the
            // index below.
            Err(Error::Pending(why)) => {
                let txn = crate::txn::Txn::load(&t.state, state::TXN, &a.limits, None, None)?;
                pending = txn.map(|x| x.head.id);
                log(o, format!("the interrupted apply needs its bundle again ({why}); looking for it in the index"));
            }
            Err(e) => return Err(e),
        }
    }
    let st = match state_dir {
        Some(d) => state::load(d, state::STATE_FILE)?,
        None => state::State::default(),
    };
    let channel = match (&o.channel, &st.channel) {
        (Some(c), Some(pinned)) if c != pinned => {
            return Err(Error::Policy(format!("--channel {c:?}: the target follows channel {pinned:?}")))
        }
        (Some(c), _) | (None, Some(c)) => c.clone(),
        (None, None) => {
            return Err(Error::Usage(
                "the target has no channel pinned yet: say which with --channel (its first bundle pins it)".into(),
            ))
        }
    };
    bundle::index::check_channel_dir(&channel).map_err(Error::Usage)?;
    a.channel = Some(channel.clone());
    let cache = o.cache.clone().unwrap_or_else(|| apply::state_path(&a).join("updates"));
    let mut run = Run {
        o,
        a,
        target,
        sd,
        trust,
        net: Net::new(&o.net.ca_certs)?,
        source,
        channel: channel.clone(),
        cache,
        complete: Default::default(),
        report: Report { channel, source: o.source.clone(), dry_run: o.dry_run, resumed, ..Default::default() },
    };
    let index = run.index()?;
    if let Some(id) = pending {
        run.finish_pending(&index, id)?;
    }
    run.update(&index)?;
    Ok(run.report)
}

impl Run<'_> {
    fn state_dir(&self) -> Option<&Dir> {
        self.target.as_ref().map(|t| &t.state).or(self.sd.as_ref())
    }

    /// Read, verify and (unless a dry run) record the index.
    fn index(&mut self) -> Result<Index> {
        let at = self.source.index(&self.channel);
        let bytes = match &self.source {
            Source::Http(_) => {
                let o = fetch::Options { url: at.clone(), ..self.o.net.clone() };
                let b = fetch::get_small(&o, &self.net, MAX_INDEX_BYTES)?;
                self.report.bytes_downloaded += b.len() as u64;
                b
            }
            Source::Dir(_) => read_local(Path::new(&at), MAX_INDEX_BYTES)?,
        };
        let index = Index::decode(&bytes).map_err(|e| index_error(&at, e))?;
        if index.release.channel != self.channel {
            return Err(Error::BadPart(format!(
                "{at}: the index is of channel {:?}, not {:?} (mix-and-match)",
                index.release.channel, self.channel
            )));
        }
        let name = accepted_file(&self.channel);
        let state_dir = self.state_dir();
        let last = match state_dir.map(|d| d.read(&name, MAX_INDEX_BYTES)).transpose()?.flatten() {
            Some(b) => Some(Accepted::decode(&b).map_err(|e| Error::CorruptState {
                path: state_dir.map(|d| d.show(&name)).unwrap_or_default(),
                why: e.to_string(),
            })?),
            None => None,
        };
        let v = index
            .verify(&self.trust, state::now(), self.o.clock_allowance, last.as_ref())
            .map_err(|e| index_error(&at, e))?;
        if let (Some(t), false) = (&self.target, last.as_ref() == Some(&v.accepted)) {
            // Recorded before the index is used: a later run never goes below it.
            t.state.write_atomic(&name, &v.accepted.encode())?;
        }
        self.report.index = IndexInfo {
            release_seq: index.release.seq,
            fresh_seq: index.fresh.seq,
            by_timestamp_key: v.by_timestamp_key,
            expires: index.fresh.expires,
            latest: index.release.latest,
        };
        log(
            self.o,
            format!(
                "index of channel {}: release {}, freshness {} ({}), newest version {}",
                self.channel,
                index.release.seq,
                index.fresh.seq,
                if v.by_timestamp_key { "timestamp key" } else { "release keys" },
                index.release.latest
            ),
        );
        Ok(index)
    }

    /// The interrupted apply whose bundle is gone: the index's bundle with its id, applied
    /// (which resumes the transaction).
    fn finish_pending(&mut self, index: &Index, id: Hash) -> Result<()> {
        let Some(b) = index.release.bundles.iter().find(|b| b.id == id) else {
            return Err(Error::Pending(format!(
                "an interrupted apply (bundle id {}) needs its bundle, and the index does not list it: run `ferry-apply resume --bundle FILE`",
                &id.to_hex()[..16]
            )));
        };
        let Some(r) = self.apply_one(b)? else {
            return Err(Error::Pending(format!(
                "an interrupted apply needs its bundle {}, which the index names but the repository does not have: run `ferry-apply resume --bundle FILE`",
                b.file
            )));
        };
        self.report.resumed = Some(r.result);
        Ok(())
    }

    /// Choose the path and apply it.
    /// Update along the cheapest path; a bundle the index names but the repository lacks
    /// (HTTP 404 or 410, no such file on the stick) is left out and the path chosen again
    /// from the version reached, so a repository missing a file still serves every target a
    /// chain or a full bundle can reach.
    fn update(&mut self, index: &Index) -> Result<()> {
        let mut missing: Vec<String> = Vec::new();
        while let Some(file) = self.update_avoiding(index, &missing)? {
            log(self.o, format!("{file} is named by the index but missing from the repository: choosing another path"));
            self.report.missing.push(file.clone());
            missing.push(file);
        }
        Ok(())
    }

    /// One attempt of [`Self::update`] with the bundles of `missing` left out: `Some(file)` if
    /// bundle `file` turned out to be missing too.
    fn update_avoiding(&mut self, index: &Index, missing: &[String]) -> Result<Option<String>> {
        let st = match self.state_dir() {
            Some(d) => state::load(d, state::STATE_FILE)?,
            None => state::State::default(),
        };
        let latest = index.release.latest;
        let goal = self.o.to.unwrap_or(latest);
        if missing.is_empty() {
            self.report.from = st.version;
        }
        self.report.to = goal;
        if self.o.to.is_some() && !index.release.bundles.iter().any(|b| b.to == goal) {
            return Err(Error::NoPath(format!("no bundle of the index leads to version {goal} (newest: {latest})")));
        }
        if let Some(v) = st.version {
            if v == goal || (self.o.to.is_none() && v > goal) {
                if !self.o.dry_run {
                    self.forget_applied(index, v);
                }
                self.report.up_to_date = missing.is_empty();
                log(self.o, format!("up to date: version {v} installed, the index offers {goal}"));
                return Ok(None);
            }
            if v > goal {
                return Err(Error::Version(crate::VersionRefusal::NotNewer { bundle: goal, installed: v }));
            }
        }
        let http = matches!(self.source, Source::Http(_));
        let cache = self.cache.clone();
        // Bundles complete in the cache cost nothing to download: each checked (size, BLAKE3)
        // once here, not at every edge the path search relaxes, nor again when it is used.
        self.complete = if http {
            index.release.bundles.iter().filter_map(|b| Some((b.file.clone(), cached(&cache, b)?.1))).collect()
        } else {
            Default::default()
        };
        let complete = &self.complete;
        let cost = |b: &BundleRef| if complete.contains_key(&b.file) { 0 } else { b.size };
        let usable: Vec<BundleRef> =
            index.release.bundles.iter().filter(|b| !missing.contains(&b.file)).cloned().collect();
        let chain = crate::path::choose(&usable, st.version, goal, &cost, self.o.apply.replace).map_err(|why| {
            if missing.is_empty() {
                Error::NoPath(why)
            } else {
                Error::NoPath(format!("{why}; missing from the repository: {}", missing.join(", ")))
            }
        })?;
        let steps: Vec<BundleRef> = chain.iter().map(|&i| usable[i].clone()).collect();
        self.report.path =
            steps.iter().map(|b| Step { file: b.file.clone(), from: b.from, to: b.to, size: b.size }).collect();
        self.report.bytes_planned = steps.iter().map(|b| b.size).sum();
        log(
            self.o,
            format!(
                "path to version {goal}: {} ({} bytes)",
                steps.iter().map(|b| b.file.as_str()).collect::<Vec<_>>().join(" → "),
                self.report.bytes_planned
            ),
        );
        // From a directory, a file the path needs and the repository lacks is found before the
        // first bundle is applied, so the path is chosen again from where the target is instead
        // of stopping midway (over HTTP it is found when its download starts).
        if let Source::Dir(d) = &self.source {
            for b in &steps {
                let p = d.join(&self.channel).join(BUNDLES_DIR).join(&b.file);
                match std::fs::symlink_metadata(&p) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(b.file.clone())),
                    _ => {}
                }
            }
        }
        if self.o.dry_run {
            return Ok(None);
        }
        for b in &steps {
            if self.apply_one(b)?.is_none() {
                return Ok(Some(b.file.clone()));
            }
            self.report.applied.push(b.to);
            // Between two bundles of a chain (a crash here resumes at the next bundle).
            crate::failpoint::hit("update-applied");
        }
        self.forget_applied(index, goal);
        Ok(None)
    }

    /// Remove from the cache the complete downloads the target no longer needs: bundles of the
    /// index leading to a version at or below `installed` (left by an interrupted apply that a
    /// resume finished from the cache). Partial downloads are left to `fetch`.
    fn forget_applied(&self, index: &Index, installed: u64) {
        if !matches!(self.source, Source::Http(_)) {
            return;
        }
        for b in index.release.bundles.iter().filter(|b| b.to <= installed) {
            let p = self.cache.join(&b.file);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                match std::fs::remove_file(&p) {
                    Ok(()) => log(self.o, format!("removed {} from the cache (applied)", b.file)),
                    Err(e) => log(self.o, format!("could not remove {} from the cache: {e}", p.display())),
                }
            }
        }
    }

    /// Get bundle `b` (download into the cache, or open it on the stick), check it against its
    /// index entry, apply it, and drop it from the cache. `None`: the repository does not have
    /// it (HTTP 404 or 410, no such file), nothing done.
    fn apply_one(&mut self, b: &BundleRef) -> Result<Option<apply::Report>> {
        if self.target.is_none() {
            return Err(Error::Internal("update: no target locked".into()));
        }
        let not_found =
            |e: &Error| matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
        let (path, from_cache) = match &self.source {
            Source::Http(u) => match self.download(u.clone(), b) {
                Ok(p) => (p, true),
                Err(e) if not_found(&e) => return Ok(None),
                Err(e) => return Err(e),
            },
            Source::Dir(d) => {
                let p = d.join(&self.channel).join(BUNDLES_DIR).join(&b.file);
                let size = match std::fs::metadata(&p).ctx("stat", p.display()) {
                    Ok(m) => m.len(),
                    Err(e) if not_found(&e) => return Ok(None),
                    Err(e) => return Err(e),
                };
                if size != b.size {
                    return Err(Error::BadPart(format!(
                        "{}: {size} bytes, the index says {} (mix-and-match)",
                        p.display(),
                        b.size
                    )));
                }
                (p, false)
            }
        };
        let mut ob = OpenBundle::open(&path, &self.a.limits)?;
        if ob.id() != b.id {
            return Err(Error::BadPart(format!(
                "{}: bundle id {} is not the {} the index names (mix-and-match)",
                path.display(),
                ob.id(),
                b.id
            )));
        }
        ob.trust(&self.trust)?;
        let m = ob.manifest(&self.a.limits)?;
        let base = m.base.as_ref().and_then(|x| x.version);
        if m.version != b.to || (b.from.is_some() && base != b.from) || (b.from.is_none() && m.base.is_some()) {
            return Err(Error::BadPart(format!(
                "{}: the bundle is version {} built for {}, the index says {} from {} (mix-and-match)",
                path.display(),
                m.version,
                if m.base.is_some() {
                    base.map_or("a base".into(), |v| format!("version {v}"))
                } else {
                    "an empty target".into()
                },
                b.to,
                b.from.map_or("an empty target".into(), |v| format!("version {v}"))
            )));
        }
        log(self.o, format!("applying {} (version {})", b.file, b.to));
        let Some(t) = &self.target else { return Err(Error::Internal("update: no target locked".into())) };
        let r = apply::apply_in(&self.a, t, &path, Ok(ob))?;
        if from_cache {
            if let Err(e) = std::fs::remove_file(&path) {
                log(self.o, format!("could not remove {} from the cache: {e}", path.display()));
            }
        }
        Ok(Some(r))
    }

    /// Bundle `b` complete and checked in the cache: kept from an earlier run, or fetched
    /// (resuming a partial download).
    fn download(&mut self, base: String, b: &BundleRef) -> Result<PathBuf> {
        // Complete in the cache: hashed once, by the path choice if it just checked this file
        // (and it is still the same file: size, inode and mtime), else here.
        let known = self.complete.remove(&b.file).filter(|k| Some(*k) == Stamp::of(&self.cache.join(&b.file)));
        if let Some(p) = known.map(|_| self.cache.join(&b.file)).or_else(|| cached(&self.cache, b).map(|(p, _)| p)) {
            log(self.o, format!("{} is complete in the cache: not downloaded again", b.file));
            return Ok(p);
        }
        let o = fetch::Options {
            url: format!("{base}/{}/{BUNDLES_DIR}/{}", self.channel, b.file),
            into: self.cache.clone(),
            trust: self.a.trust.clone(),
            policy: Some(self.trust.clone()),
            expect_id: Some(b.id),
            ..self.o.net.clone()
        };
        let r = fetch::fetch_with(&o, &self.net)?;
        self.report.bytes_downloaded += r.bytes;
        let p = self.cache.join(&b.file);
        let mismatch = |why: String| {
            let _ = std::fs::remove_file(&p);
            Error::BadPart(format!("{}: {why} (mix-and-match); removed from the cache", o.url))
        };
        if r.size != b.size {
            return Err(mismatch(format!("{} bytes, the index says {}", r.size, b.size)));
        }
        // The whole file's BLAKE3, from the read that verified it (fetch's step 4): no second pass.
        if r.blake3 != b.blake3.to_hex() {
            return Err(mismatch(format!("BLAKE3 {}, the index says {}", r.blake3, b.blake3)));
        }
        // Downloaded and checked, not applied yet (a crash here must not download it again).
        crate::failpoint::hit("update-downloaded");
        Ok(p)
    }
}
