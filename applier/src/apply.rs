//! The applier's commands that change a target: apply, resume, rollback, inbox. One transaction
//! at a time per target (a lock), phases journaled (verify → stage → commit → finish), every
//! phase resumable. See bundle-format.md, "Journal and resume", for the crash analysis.

use crate::commit::{self, OldMeta};
use crate::error::{Ctx, Error, Result, VersionRefusal};
use crate::journal::Record;
use crate::stage::Input;
use crate::state::{self, Dir, State};
use crate::txn::Txn;
use crate::verify::{Head, OpenBundle};
use crate::{fsx, hooks, stage};
use bundle::sig::TrustPolicy;
use bundle::Limits;
use serde::Serialize;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options shared by the commands that change a target.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub target: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub trust: Option<PathBuf>,
    /// Expected channel for a target that has none recorded yet.
    pub channel: Option<String>,
    pub no_hooks: bool,
    pub allow_expired: bool,
    /// Apply on a network or FUSE filesystem ([`crate::netfs`]).
    pub allow_network_fs: bool,
    /// Extended-attribute namespaces (or names) the operator drops explicitly: not set, not
    /// removed, not checked (`--skip-xattrs`; [`crate::xattrs`]).
    pub skip_xattrs: Vec<String>,
    /// Bundle to re-read if staging was interrupted (resume).
    pub bundle: Option<PathBuf>,
    /// `--identity` files that may open encrypted bundles, besides those in the state directory
    /// ([`crate::unseal::Keyring`]).
    pub identities: Vec<PathBuf>,
    pub limits: Limits,
    /// Replace mode ([`crate::replace`]): a full bundle onto a target that is not empty.
    pub replace: bool,
    /// `--keep` globs of replace mode.
    pub keep: Vec<String>,
    pub quiet: bool,
    /// Progress lines for long phases (`-v`, or a terminal).
    pub progress: bool,
}

/// What an apply did; printed as the `--json` report.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// "applied", "already-installed", "resumed", "rolled-back", "nothing-to-do".
    pub result: String,
    pub version: Option<u64>,
    pub bundle_id: Option<String>,
    pub channel: Option<String>,
    pub staged_objects: usize,
    pub staged_reused: usize,
    pub staged_bytes: u64,
    pub steps: usize,
    /// From the first rename into the live tree to the end of the last step, in milliseconds.
    pub commit_window_ms: f64,
    pub verify_ms: f64,
    pub stage_ms: f64,
    pub commit_ms: f64,
    pub hooks: Vec<state::HookResult>,
    pub owners_applied: bool,
    pub conffiles_kept: Vec<String>,
    /// Extended-attribute namespaces the bundle carries.
    pub xattr_namespaces: Vec<String>,
    /// Of those, the ones dropped with `--skip-xattrs`.
    pub xattrs_skipped: Vec<String>,
    /// The bundle is encrypted (bundle-format.md §4.10), to this many recipients.
    pub encrypted: bool,
    pub recipients: Option<usize>,
    /// Bytes this command read from the bundle file (or parts): at most its size, each byte
    /// read once (0 when nothing was left to read, e.g. a resume after `Staged`).
    pub bundle_bytes_read: u64,
    /// Replace mode only ([`crate::replace`]): what the target already held as NEW has it, what
    /// the commit removes, and the paths the bundle lacks that stay (with why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replace: Option<ReplaceReport>,
}

/// What replace mode made of the target (`apply --json`, `replace`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReplaceReport {
    pub unchanged: usize,
    pub removed: usize,
    pub left: Vec<String>,
}

/// An open, locked target with its checked state directory.
pub struct Target {
    pub root: OwnedFd,
    pub state: Dir,
    pub owners: bool,
    _lock: (File, OwnedFd),
}

/// Where the state directory is: `--state-dir`, or `TARGET/.ferry`.
pub fn state_path(o: &Options) -> PathBuf {
    o.state_dir.clone().unwrap_or_else(|| o.target.join(".ferry"))
}

/// Open the state directory without creating it (read-only commands); `None` if there is none.
pub fn open_state(o: &Options) -> Result<Option<Dir>> {
    Dir::open_state(&state_path(o), false)
}

/// Open and lock the target; clean up what earlier runs left in the trash (a failure there is
/// reported, never fatal).
pub fn open_target(o: &Options) -> Result<Target> {
    let root = fsx::open_dir_path(&o.target).ctx("open target", o.target.display())?;
    let state =
        Dir::open_state(&state_path(o), true)?.ok_or_else(|| Error::Internal("state directory not created".into()))?;
    let lock = state::lock(&state, root.as_fd())?;
    for w in crate::txn::sweep_trash(root.as_fd(), &state) {
        log(o, w);
    }
    Ok(Target { root, state, owners: fsx::is_root(), _lock: lock })
}

fn log(o: &Options, msg: impl AsRef<str>) {
    if !o.quiet {
        eprintln!("ferry-apply: {}", crate::text::escape(msg.as_ref()));
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The operator's `--trust` with the rotations recorded in the state directory.
pub fn load_trust(o: &Options, state: Option<&Dir>) -> Result<TrustPolicy> {
    let t =
        o.trust.as_ref().ok_or_else(|| Error::Usage("--trust KEY.pub (or a directory of keys) is required".into()))?;
    crate::trust::load(t, state)
}

/// The policy a pending transaction is re-verified against: `--trust` if given, else the one
/// recorded by the apply that started it (so a bare `resume` still verifies).
fn resume_trust(o: &Options, t: &Target) -> Result<Option<TrustPolicy>> {
    if o.trust.is_some() {
        return load_trust(o, Some(&t.state)).map(Some);
    }
    crate::trust::recorded(&t.state)
}

/// Load transaction `name`, re-verified against `trust`. One that fails verification (forged,
/// signed by a key the policy does not trust, corrupt) is never continued: it is retired (its
/// work directories are removed only where they are provably its own) and the error returned;
/// the target is then as OLD or NEW left it and can be updated again.
fn load_verified(o: &Options, t: &Target, name: &str, trust: Option<&TrustPolicy>) -> Result<Option<Txn>> {
    // An encrypted bundle's transaction holds its outer manifest: it is opened again (a missing
    // identity is an error that leaves the transaction alone).
    let keys = crate::unseal::Keyring::load(&o.identities, Some(&t.state))?;
    match Txn::load(&t.state, name, &o.limits, trust, Some(&keys)) {
        Err(e @ (Error::Bundle(_) | Error::CorruptState { .. })) => {
            log(o, format!("refusing the transaction in {}: {e}; removing it", t.state.show(name)));
            retire(o, t, name)?;
            Err(e)
        }
        r => r,
    }
}

/// Retire transaction `name` and clean up after it (see [`Txn::retire`]); cleanup failures are
/// reported, never fatal.
fn retire(o: &Options, t: &Target, name: &str) -> Result<()> {
    Txn::retire(&t.state, name)?;
    sweep(o, t);
    Ok(())
}

/// Clean up `STATE/trash/`, logging what is left for a later run.
fn sweep(o: &Options, t: &Target) {
    for w in crate::txn::sweep_trash(t.root.as_fd(), &t.state) {
        log(o, w);
    }
}

/// [`retire`] a loaded transaction (its handles are closed first).
fn discard(o: &Options, t: &Target, txn: Txn, name: &str) -> Result<()> {
    drop(txn);
    retire(o, t, name)
}

/// The policy checks that need the target's state: version rule, base version, channel, expiry.
pub fn check_policy(o: &Options, st: &State, m: &bundle::Manifest) -> Result<()> {
    if let Some(v) = st.version {
        if m.version <= v {
            return Err(Error::Version(VersionRefusal::NotNewer { bundle: m.version, installed: v }));
        }
        if let Some(bv) = m.base.as_ref().and_then(|b| b.version) {
            if bv != v {
                return Err(Error::Version(VersionRefusal::OtherBase { built_for: bv, installed: v }));
            }
        }
    }
    let want = st.channel.clone().or_else(|| o.channel.clone());
    if let Some(c) = want {
        if c != m.channel {
            return Err(Error::Policy(format!(
                "bundle is for channel {:?}, the target follows channel {c:?}",
                m.channel
            )));
        }
    }
    if let Some(exp) = m.expires {
        if exp < state::now() && !o.allow_expired {
            return Err(Error::Policy(format!("bundle expired at {exp} (unix time); override with --allow-expired")));
        }
    }
    Ok(())
}

/// `ferry-apply apply FILE`. A failure is also recorded as `last_error` in the state file.
///
/// The bundle is read once: its head here (signatures checked once), then its frames by
/// staging, which checks each frame's hash and the end of the archive as it reads them and
/// writes only into work directories; the commit starts only after all of it passed.
pub fn apply(o: &Options, bundle: &Path) -> Result<Report> {
    let before = crate::source::bytes_read();
    let b = OpenBundle::open(bundle, &o.limits);
    run_apply(o, bundle, b, before)
}

/// [`apply`] of a bundle whose head the caller has read already (the inbox reads every
/// candidate's head to order them): it is not read again, and `bundle_bytes_read` counts the
/// rest.
pub fn apply_open(o: &Options, bundle: &Path, b: OpenBundle) -> Result<Report> {
    run_apply(o, bundle, Ok(b), crate::source::bytes_read())
}

/// [`apply`] from its opened bundle (or the error opening it, reported in its turn);
/// `before`: [`crate::source::bytes_read`] before the bundle was opened.
fn run_apply(o: &Options, bundle: &Path, mut b: Result<OpenBundle>, before: u64) -> Result<Report> {
    let mut r = refuse_unopenable(o, &mut b).and_then(|()| apply_locked(o, bundle, b));
    match &mut r {
        Ok(rep) => rep.bundle_bytes_read = crate::source::bytes_read() - before,
        Err(e) => record_error(o, &format!("apply {}", bundle.display()), e),
    }
    r
}

/// Record a failed command as `last_error` in the state file (`status` shows it), unless the
/// failure is one that never reached the target (busy, usage, an unsafe state directory, no
/// identity) or there is no state directory yet. Best effort: a failure to record is ignored.
pub fn record_error(o: &Options, what: &str, e: &Error) {
    if matches!(e, Error::Locked(_) | Error::Usage(_) | Error::UnsafeState { .. } | Error::NoIdentity { .. }) {
        return;
    }
    if let Ok(Some(d)) = open_state(o) {
        if let Ok(mut st) = state::load(&d, state::STATE_FILE) {
            st.last_error = Some(format!("{}: {what}: {e}", state::now()));
            let _ = state::save(&d, state::STATE_FILE, &st);
        }
    }
}

/// An encrypted bundle this target holds no identity for is refused before anything is written
/// (not even the state directory or its lock; bundle-format.md §4.10). Only that is decided
/// here, from the head already read (its signatures verified, the trust policy as the state
/// directory has it now): any other problem is left to [`apply_locked`] to report. Cheap for a
/// bundle that is not encrypted: its manifest member is only scanned
/// ([`bundle::Manifest::member_is_sealed`]); an encrypted bundle's outer manifest is decoded
/// here, once (it is kept for the rest of the apply).
fn refuse_unopenable(o: &Options, b: &mut Result<OpenBundle>) -> Result<()> {
    let Ok(b) = b else { return Ok(()) };
    let Ok(sd) = open_state(o) else { return Ok(()) };
    let Ok(trust) = load_trust(o, sd.as_ref()) else { return Ok(()) };
    if b.trust(&trust).is_err()
        || !matches!(bundle::Manifest::member_is_sealed(&b.signed.manifest_bytes, &o.limits), Ok(true))
    {
        return Ok(());
    }
    let id = b.id().to_hex();
    let Ok(m) = b.manifest(&o.limits) else { return Ok(()) };
    let Some(n) = m.sealed.as_ref().map(|s| s.recipients.len()) else { return Ok(()) };
    let keys = crate::unseal::Keyring::load(&o.identities, sd.as_ref())?;
    if crate::unseal::can_open(m, &keys) {
        return Ok(());
    }
    // The very bundle installed is a no-op, identity or not.
    if let Some(d) = &sd {
        if state::load(d, state::STATE_FILE).is_ok_and(|st| st.bundle_id.as_deref() == Some(&id)) {
            return Ok(());
        }
    }
    Err(Error::NoIdentity { recipients: n, looked_in: keys.looked_in() })
}

/// Under the target's lock: finish what an earlier run left, then apply `b` (read from
/// `bundle`; an error opening it is returned here, in the order apply always reported it). The
/// trust policy is checked again on the head's verified signers with the policy loaded under
/// the lock (a rotation recorded meanwhile counts).
fn apply_locked(o: &Options, bundle: &Path, b: Result<OpenBundle>) -> Result<Report> {
    let t = open_target(o)?;
    apply_in(o, &t, bundle, b)
}

/// [`apply`] of an opened bundle on a target the caller has opened and locked already
/// (`update` holds the lock across a chain of bundles).
pub fn apply_in(o: &Options, t: &Target, bundle: &Path, b: Result<OpenBundle>) -> Result<Report> {
    let trust = load_trust(o, Some(&t.state))?;
    finish_interrupted_rollback(o, t, Some(&trust))?;
    if let Some(txn) = load_verified(o, t, state::TXN, Some(&trust))? {
        let mut b = b?;
        b.trust(&trust)?;
        if b.id() != txn.head.id {
            return Err(Error::Pending(format!(
                "an apply of another bundle (version {}, id {}) is in progress on this target; run `ferry-apply resume --target {}` first",
                txn.head.manifest.version,
                &txn.head.id.to_hex()[..16],
                o.target.display()
            )));
        }
        log(o, "resuming the interrupted apply of this bundle");
        // The transaction holds the verified manifest: the head just read is not decoded.
        let mut rep = continue_txn(o, t, txn, Input::Open(Box::new(b.reader)))?;
        rep.result = "resumed".into();
        return Ok(rep);
    }
    let t0 = Instant::now();
    let mut b = b?;
    b.trust(&trust)?;
    let st = state::load(&t.state, state::STATE_FILE)?;
    if st.bundle_id.as_deref() == Some(&b.id().to_hex()) {
        // The same signed manifest as the installed one: nothing to read or to do.
        log(o, format!("version {} (this bundle) is already installed", st.version.unwrap_or_default()));
        return Ok(Report {
            result: "already-installed".into(),
            version: st.version,
            bundle_id: st.bundle_id,
            channel: st.channel,
            ..Default::default()
        });
    }
    let (h, reader) = b.into_head(&o.limits)?;
    start_txn(o, t, bundle, h, reader, &st, t0)
}

/// Check bundle `h` (its head verified; `reader` at its first frame) against the target's
/// state `st` and files, then start its transaction and drive it to the end.
fn start_txn(
    o: &Options,
    t: &Target,
    bundle: &Path,
    h: Head,
    reader: crate::verify::BundleReader,
    st: &State,
    t0: Instant,
) -> Result<Report> {
    // An encrypted bundle (verified above as far as it is public) is opened now (§4.10).
    let keys = crate::unseal::Keyring::load(&o.identities, Some(&t.state))?;
    let h = crate::unseal::open(h, &keys, &o.limits)?;
    check_policy(o, st, &h.manifest)?;
    // Network and FUSE filesystems are refused before anything is written (bundle-format.md §12).
    crate::netfs::check(std::os::fd::AsFd::as_fd(&t.root), &h.manifest, o.allow_network_fs)?;
    // So are filesystems that cannot hold the attributes the bundle sets (§4.9).
    let attrs = crate::xattrs::Attrs::new(&h.manifest, &o.skip_xattrs);
    let unsupported = crate::xattrs::check_support(t.root.as_fd(), &h.manifest, &attrs);
    if !unsupported.is_empty() {
        return Err(Error::Unsupported(unsupported));
    }
    let (h, rebased) = rebase_if_asked(o, t.root.as_fd(), t.owners, h, &attrs)?;
    let attrs = crate::xattrs::Attrs::new(&h.manifest, &o.skip_xattrs);
    let mut base = check_base(t, &h.manifest, st, &attrs).map_err(|e| match e {
        // A full bundle on a tree that is not empty: say how to mean it.
        Error::Drift(mut lines) if h.manifest.base.is_none() && !o.replace => {
            lines.push(REPLACE_HINT.into());
            Error::Drift(lines)
        }
        e => e,
    })?;
    if let Some((r, configs)) = &rebased {
        // Replace mode keeps a config file that differs (it cannot tell a local edit).
        let extra: Vec<bundle::BundlePath> = configs.iter().filter(|p| !base.kept.contains(p)).cloned().collect();
        let foreign = foreign_side_files(t.root.as_fd(), &extra, st);
        if !foreign.is_empty() {
            return Err(Error::Drift(foreign));
        }
        base.kept.extend(extra);
        log(
            o,
            format!("replace: {} entries already as the bundle has them, {} paths to remove", r.unchanged, r.removed),
        );
        for l in &r.left {
            log(o, format!("replace: left in place: {l}"));
        }
    }
    for p in &base.kept {
        log(o, format!("{p}: locally edited config file kept; the bundle's version goes to {p}.ferry-new"));
    }
    let verify_ms = ms(t0);
    log(
        o,
        format!(
            "verified the head of bundle version {} ({} entries listed, {} steps); its frames are checked as they are staged",
            h.manifest.version,
            h.manifest.entries.len(),
            h.manifest.script.len()
        ),
    );
    // The policy this apply was verified under, for a later `resume` without `--trust`.
    if let Some(p) = &o.trust {
        crate::trust::record(&t.state, &crate::trust::load(p, None)?)?;
    }
    let mut txn = Txn::create(&t.state, h, bundle, rebased.is_some())?;
    state::save(&txn.dir, STATE_BEFORE, st)?;
    txn.save_kept(&base.kept)?;
    txn.save_xattr_skip(&o.skip_xattrs)?;
    txn.save_base_ids(base.ids)?;
    let mut rep = continue_txn(o, t, txn, Input::Open(Box::new(reader)))?;
    rep.verify_ms = verify_ms;
    rep.replace = rebased.map(|(r, _)| r);
    Ok(rep)
}

/// What replace mode found (for the report) and the config files that differ, which the
/// conffile rule keeps ([`conffile`]).
pub type Replaced = (ReplaceReport, Vec<bundle::BundlePath>);

/// With `--replace` and a full bundle (a delta is applied as usual), the head with its manifest rebased on the target
/// ([`crate::replace`]), what replace mode found, and the config files that differ.
pub fn rebase_if_asked(
    o: &Options,
    root: std::os::fd::BorrowedFd<'_>,
    owners: bool,
    mut h: Head,
    attrs: &crate::xattrs::Attrs,
) -> Result<(Head, Option<Replaced>)> {
    // A delta bundle is applied as usual (an inbox or a chain may mix both).
    if !o.replace || h.manifest.base.is_some() {
        return Ok((h, None));
    }
    let scope = crate::replace::Scope { keep: &o.keep, skip: replace_skip(o), owners, attrs };
    let r = crate::replace::rebase(root, &h.manifest, &scope)?;
    h.manifest = r.manifest;
    // Only those the conffile rule covers in the rebased manifest are kept beside.
    let configs = r.configs.into_iter().filter(|p| conffile(&h.manifest, p)).collect();
    let rep = ReplaceReport { unchanged: r.unchanged, removed: r.removed, left: r.left };
    Ok((h, Some((rep, configs))))
}

/// The paths inside the target that replace mode never looks into: the state directory.
fn replace_skip(o: &Options) -> Vec<bundle::BundlePath> {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(target), Ok(state)) = (std::fs::canonicalize(&o.target), std::fs::canonicalize(state_path(o))) else {
        return Vec::new();
    };
    state
        .strip_prefix(&target)
        .ok()
        .and_then(|r| bundle::BundlePath::new(r.as_os_str().as_bytes().to_vec()).ok())
        .into_iter()
        .collect()
}

/// Added to the drift of a full bundle applied without `--replace`.
const REPLACE_HINT: &str = "(this is a full bundle, which applies to an empty target; `--replace` makes a tree that is not empty the bundle's tree, removing what it lacks: bundle-format.md §10.4)";

/// Saved copy of the state file from before the transaction (restored by rollback).
const STATE_BEFORE: &str = "state-before.json";
const OLD_META: &str = "oldmeta.cbor";

/// The base check, plus the rule for `NAME.ferry-new` beside a kept config file: one that ferry
/// did not write (not in the state's kept list) belongs to the administrator and is never
/// replaced, so the bundle is refused with it listed.
pub fn check_base(
    t: &Target,
    m: &bundle::Manifest,
    st: &State,
    attrs: &crate::xattrs::Attrs,
) -> Result<crate::base::Base> {
    let base = crate::base::check(t.root.as_fd(), m, &|p| conffile(m, p), t.owners, attrs).map_err(Error::Drift)?;
    let foreign = foreign_side_files(t.root.as_fd(), &base.kept, st);
    if !foreign.is_empty() {
        return Err(Error::Drift(foreign));
    }
    Ok(base)
}

/// The `NAME.ferry-new` files beside kept config files that ferry did not write, as drift lines.
pub fn foreign_side_files(root: std::os::fd::BorrowedFd<'_>, kept: &[bundle::BundlePath], st: &State) -> Vec<String> {
    let mut dirs = fsx::DirCache::default();
    let mut out = Vec::new();
    for p in kept {
        let Some(side) = bundle::ferry_new_path(p) else { continue };
        if matches!(dirs.lstat(root, &side), Ok(Some(_))) && !st.conffiles_kept.contains(&side.to_string()) {
            out.push(format!(
                "{side}: exists and was not written by ferry; the bundle would put its version of {p} there (move it away first)"
            ));
        }
    }
    out
}

/// The conffile rule applies to a NEW regular file marked `config` whose `NAME.ferry-new` the
/// bundle does not itself use. Entries are sparse, but a manifest listing a config file also
/// lists `NAME.ferry-new` if NEW has it (bundle-format.md §4.2): a side name in neither
/// `entries` nor `old` is not a path of NEW or of the bundle's base.
pub fn conffile(m: &bundle::Manifest, p: &bundle::BundlePath) -> bool {
    let side = bundle::ferry_new_path(p);
    // Nothing may be decoded from the local (edited) file: no delta base, no copy source.
    let used_as_base = m.entries.iter().any(|e| match &e.kind {
        bundle::Kind::File { content: bundle::Content::Copy { from }, .. } => from == p,
        bundle::Kind::File { content: bundle::Content::Pieces(ps), .. } => {
            ps.iter().any(|x| x.method.base() == Some(p))
        }
        _ => false,
    });
    matches!(m.entry(p).map(|e| &e.kind), Some(bundle::Kind::File { config: true, .. }))
        && !used_as_base
        && side.is_some_and(|s| m.entry(&s).is_none() && m.old_entry(&s).is_none())
}

/// Drive a transaction from wherever its journal says it is to the end; `input` is the bundle,
/// read only if staging needs it.
fn continue_txn(o: &Options, t: &Target, mut txn: Txn, input: Input) -> Result<Report> {
    let mut rep = Report {
        result: "applied".into(),
        version: Some(txn.head.manifest.version),
        bundle_id: Some(txn.head.id.to_hex()),
        channel: Some(txn.head.manifest.channel.clone()),
        steps: txn.head.manifest.script.len(),
        owners_applied: t.owners,
        xattr_namespaces: txn.head.manifest.xattr_namespaces.clone(),
        xattrs_skipped: txn.attrs.skipped().to_vec(),
        encrypted: txn.head.opened.is_some(),
        recipients: crate::unseal::recipients(&txn.head),
        ..Default::default()
    };
    if txn.has_abort() {
        log(o, "an interrupted rollback of a failed commit is pending; finishing it");
        rollback_txn(o, t, txn, state::TXN)?;
        rep.result = "rolled-back".into();
        return Ok(rep);
    }
    let fresh = if !txn.has(&Record::Staged) {
        stage_txn(o, t, &mut txn, input, &mut rep)?;
        // No step has run: this run skips the checks for an earlier run's work.
        true
    } else {
        txn.open_works(t.root.as_fd(), false)?;
        if !txn.has(&Record::Committed) {
            if let Some(missing) = txn.missing_work() {
                // The staged objects (and the backups of any step done) are gone: the commit can
                // be neither finished nor undone. Discard it rather than wedge the target.
                let e = Error::CorruptState {
                    path: missing,
                    why: "a work directory of the pending commit is missing; the transaction was discarded (apply the bundle again)".into(),
                };
                log(o, e.to_string());
                discard(o, t, txn, state::TXN)?;
                return Err(e);
            }
        }
        false
    };
    if !txn.has(&Record::Committed) {
        txn = commit_txn(o, t, txn, fresh, &mut rep)?;
    }
    finish(o, t, txn, &mut rep)?;
    Ok(rep)
}

/// Stage every object (verifying the bundle's frames as they are read), record the staged
/// identities and the old metadata, journal `Staged`. Any failure but a missing bundle retires
/// the transaction: its work directories are removed and the live tree was never touched.
fn stage_txn(o: &Options, t: &Target, txn: &mut Txn, input: Input, rep: &mut Report) -> Result<()> {
    let root = t.root.as_fd();
    txn.open_works(root, true)?;
    let t0 = Instant::now();
    let input = match input {
        Input::Path(None) => Input::Path(txn.bundle_path()),
        i => i,
    };
    match stage::stage(root, txn, input, &o.limits, t.owners, o.progress) {
        Ok(s) => {
            rep.staged_objects = s.objects;
            rep.staged_reused = s.reused;
            rep.staged_bytes = s.bytes;
        }
        Err(e @ Error::Pending(_)) => return Err(e),
        Err(e) => {
            // A failure that is not a crash: remove staging, leave the target as it was.
            log(o, format!("staging failed, removing the staging area: {e}"));
            retire(o, t, state::TXN)?;
            return Err(e);
        }
    }
    let ids = commit::staged_ids(root, txn, t.owners)?;
    txn.save_staged_ids(ids)?;
    let old_meta = commit::capture_old_meta(root, &txn.head.manifest);
    let mut b = Vec::new();
    ciborium::into_writer(&old_meta, &mut b).map_err(|e| Error::Internal(e.to_string()))?;
    txn.save_file(OLD_META, &b)?;
    txn.append(Record::Staged)?;
    rep.stage_ms = ms(t0);
    log(
        o,
        format!(
            "staged {} objects ({} bytes); the bundle is no longer needed",
            rep.staged_objects + rep.staged_reused,
            rep.staged_bytes
        ),
    );
    Ok(())
}

/// Run the script (after re-checking, on resume, what an earlier run staged); on failure journal
/// `Abort` and roll back.
fn commit_txn(o: &Options, t: &Target, mut txn: Txn, fresh: bool, rep: &mut Report) -> Result<Txn> {
    let root = t.root.as_fd();
    let t0 = Instant::now();
    let mut first: Option<Instant> = None;
    let n = txn.head.manifest.script.len();
    let mut prog = crate::progress::Progress::new("commit", "steps", n as u64, 0, o.progress);
    let mut c = commit::Commit::new(fresh, t.owners);
    // A failure here is handled as a failed step would be (Abort, then rollback).
    let mut res = commit::prepare(root, &mut txn, &mut c);
    if res.is_ok() && !fresh {
        res = commit::verify_staged(root, &mut txn, &mut c);
    }
    for i in 0..if res.is_ok() { n } else { 0 } {
        prog.tick(i as u64, 0);
        if let Err(e) = crate::failpoint::may_fail("commit-step").ctx("commit step", &txn.head.manifest.script[i].path)
        {
            res = Err(e);
            break;
        }
        match commit::forward(root, &mut txn, i, &mut c) {
            Ok(true) if first.is_none() => first = Some(Instant::now()),
            Ok(_) => {}
            Err(e) => {
                res = Err(e);
                break;
            }
        }
    }
    prog.finish(n as u64, 0);
    rep.commit_window_ms = first.map(ms).unwrap_or(0.0);
    if res.is_ok() {
        res = commit::disarm_displaced(&txn, &c);
    }
    if let Err(e) = res {
        log(o, format!("commit failed, rolling back to the previous version: {e}"));
        txn.append(Record::Abort { reason: e.to_string() })?;
        rollback_txn(o, t, txn, state::TXN)?;
        return Err(e);
    }
    sync_all(root, &txn)?;
    txn.append(Record::Committed)?;
    rep.commit_ms = ms(t0);
    log(
        o,
        format!("committed version {} ({} steps, window {:.1} ms)", txn.head.manifest.version, n, rep.commit_window_ms),
    );
    Ok(txn)
}

fn sync_all(root: std::os::fd::BorrowedFd<'_>, txn: &Txn) -> Result<()> {
    fsx::syncfs(root).ctx("syncfs", "target")?;
    for w in &txn.works {
        fsx::syncfs(w.stage.as_fd()).ctx("syncfs", "work directory")?;
    }
    Ok(())
}

/// After `Committed`: state file, trust rotation, hooks, then keep the transaction as `prev`
/// (retiring the older one; a cleanup failure is reported and retried later, never fatal).
fn finish(o: &Options, t: &Target, mut txn: Txn, rep: &mut Report) -> Result<()> {
    let m = txn.head.manifest.clone();
    let mut st = state::load(&t.state, state::STATE_FILE)?;
    if st.bundle_id.as_deref() != Some(&txn.head.id.to_hex()) {
        st = State {
            state_version: state::STATE_VERSION,
            version: Some(m.version),
            channel: Some(m.channel.clone()),
            bundle_id: Some(txn.head.id.to_hex()),
            applied_at: Some(state::now()),
            hooks: Vec::new(),
            conffiles_kept: txn.kept.iter().map(|p| format!("{p}.ferry-new")).collect(),
            last_error: None,
            owners_applied: t.owners,
        };
        if let Some(r) = &m.rotation {
            crate::trust::record_rotation(&t.state, r)?;
        }
        state::save(&t.state, state::STATE_FILE, &st)?;
        crate::failpoint::hit("state-saved");
    }
    let mut hook_err = None;
    if !txn.has(&Record::HooksDone) {
        let log_file = t.state.open_append(state::HOOKS_LOG)?;
        st.hooks = hooks::run(&m, &o.target, log_file, o.no_hooks);
        let failed: Vec<String> =
            st.hooks.iter().filter(|h| !h.ok).map(|h| format!("{} ({})", h.command, h.result)).collect();
        if !failed.is_empty() {
            st.last_error = Some(format!("hooks failed: {}", failed.join("; ")));
            hook_err = Some(Error::Hook(failed.join("; ")));
        }
        state::save(&t.state, state::STATE_FILE, &st)?;
        txn.append(Record::HooksDone)?;
    }
    rep.hooks = st.hooks.clone();
    rep.conffiles_kept = st.conffiles_kept.clone();
    // Keep this transaction's backups for one-level rollback; retire the older one.
    drop(txn);
    Txn::retire(&t.state, state::PREV)?;
    t.state.rename(state::TXN, &t.state, state::PREV)?;
    t.state.sync()?;
    crate::failpoint::hit("finished");
    sweep(o, t);
    match hook_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn load_old_meta(txn: &Txn) -> Result<OldMeta> {
    match txn.dir.read(OLD_META, state::MAX_SMALL_FILE)? {
        Some(b) => ciborium::from_reader(&b[..])
            .map_err(|e| Error::CorruptState { path: txn.dir.show(OLD_META), why: e.to_string() }),
        None => Ok(OldMeta::new()),
    }
}

/// Undo every step of `txn` (a failed commit, or a completed apply, in transaction directory
/// `name`), restore the state file from before it, and retire the transaction.
fn rollback_txn(o: &Options, t: &Target, mut txn: Txn, name: &str) -> Result<()> {
    let root = t.root.as_fd();
    txn.open_works(root, false)?;
    let old_meta = load_old_meta(&txn)?;
    for i in (0..txn.head.manifest.script.len()).rev() {
        crate::failpoint::hit("rollback-step");
        commit::reverse(root, &mut txn, i, &old_meta, t.owners)?;
    }
    commit::restore_dir_meta(root, &old_meta, t.owners, &txn.attrs, &txn.base_ids)?;
    sync_all(root, &txn)?;
    if txn.dir.exists(STATE_BEFORE)? {
        let st = state::load(&txn.dir, STATE_BEFORE)?;
        state::save(&t.state, state::STATE_FILE, &st)?;
    }
    txn.append(Record::RolledBack)?;
    log(o, format!("rolled back to the state before version {}", txn.head.manifest.version));
    discard(o, t, txn, name)
}

fn finish_interrupted_rollback(o: &Options, t: &Target, trust: Option<&TrustPolicy>) -> Result<bool> {
    // The kept transaction is verified only when it is acted on: one signed by keys the operator
    // has since stopped trusting is no reason to refuse a new apply.
    let interrupted = match Txn::load(&t.state, state::PREV, &o.limits, None, None) {
        Ok(Some(prev)) => prev.has(&Record::RollbackBegin),
        _ => false,
    };
    if !interrupted {
        return Ok(false);
    }
    if let Some(prev) = load_verified(o, t, state::PREV, trust)? {
        if prev.has(&Record::RollbackBegin) {
            log(o, "finishing an interrupted rollback");
            rollback_txn(o, t, prev, state::PREV)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// `ferry-apply resume`: finish whatever an interrupted run left. The pending transaction is
/// re-verified against `--trust`, or else the policy recorded when it was started.
pub fn resume(o: &Options) -> Result<Report> {
    let t = open_target(o)?;
    resume_in(o, &t)
}

/// [`resume`] on a target the caller has opened and locked already.
pub fn resume_in(o: &Options, t: &Target) -> Result<Report> {
    let trust = resume_trust(o, t)?;
    if finish_interrupted_rollback(o, t, trust.as_ref())? {
        return Ok(Report { result: "rolled-back".into(), ..Default::default() });
    }
    if t.state.exists(state::TXN)? && trust.is_none() {
        return Err(Error::Usage(
            "this transaction was started by an older ferry-apply that recorded no trust policy: pass --trust".into(),
        ));
    }
    match load_verified(o, t, state::TXN, trust.as_ref())? {
        None => {
            if t.state.exists(state::TXN)? {
                // Crashed before Begin was durable: nothing was staged that matters.
                Txn::retire(&t.state, state::TXN)?;
            }
            Ok(Report { result: "nothing-to-do".into(), ..Default::default() })
        }
        Some(txn) => {
            let before = crate::source::bytes_read();
            let mut rep = continue_txn(o, t, txn, Input::Path(o.bundle.clone()))?;
            if rep.result == "applied" {
                rep.result = "resumed".into();
            }
            rep.bundle_bytes_read = crate::source::bytes_read() - before;
            Ok(rep)
        }
    }
}

/// `ferry-apply rollback`: restore the version before the last completed apply.
pub fn rollback(o: &Options) -> Result<Report> {
    let t = open_target(o)?;
    let trust = resume_trust(o, &t)?;
    if finish_interrupted_rollback(o, &t, trust.as_ref())? {
        return Ok(Report { result: "rolled-back".into(), ..Default::default() });
    }
    if t.state.exists(state::TXN)? {
        return Err(Error::Pending("an apply is in progress; run `ferry-apply resume` first".into()));
    }
    let Some(mut prev) = load_verified(o, &t, state::PREV, trust.as_ref())? else {
        return Err(Error::Usage("nothing to roll back: no completed apply is kept".into()));
    };
    prev.append(Record::RollbackBegin)?;
    rollback_txn(o, &t, prev, state::PREV)?;
    let st = state::load(&t.state, state::STATE_FILE)?;
    Ok(Report {
        result: "rolled-back".into(),
        version: st.version,
        bundle_id: st.bundle_id,
        channel: st.channel,
        ..Default::default()
    })
}
