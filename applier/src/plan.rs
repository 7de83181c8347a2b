//! `ferry-apply plan`: a dry run against the real target — the ordered steps, bytes to stage and
//! free space per filesystem, drifted paths, config files that would be kept, hooks that would
//! run, and whether (and why not) the bundle would apply. It takes no lock and writes nothing.

use crate::apply::{check_policy, conffile, foreign_side_files, load_trust, open_state, Options};
use crate::error::{Ctx, Error, Result};
use crate::{fsx, hooks, stage, state, txn, verify};
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Filesystem {
    /// A directory of the target on this filesystem (mount).
    pub example_dir: String,
    pub stage_bytes: u64,
    pub available_bytes: u64,
    pub fits: bool,
    /// Its type (`fstatfs` `f_type`), e.g. `ext2/ext3/ext4 (0xef53)`, `nfs (0x6969)`.
    pub fs_type: String,
    /// A network or FUSE filesystem (refused without `--allow-network-fs`).
    pub network: bool,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub op: String,
    pub path: String,
}

#[derive(Debug, Serialize)]
pub struct Plan {
    pub version: u64,
    pub bundle_id: String,
    pub channel: String,
    pub installed_version: Option<u64>,
    pub would_apply: bool,
    /// Why not, with the exit code apply would return.
    pub refusal: Option<String>,
    pub refusal_exit_code: Option<u8>,
    pub drifted: Vec<String>,
    pub conffiles_kept: Vec<String>,
    pub stage_bytes: u64,
    pub filesystems: Vec<Filesystem>,
    pub hooks: Vec<String>,
    pub steps: Vec<Step>,
    /// Extended-attribute namespaces the bundle carries, and those dropped with `--skip-xattrs`.
    pub xattr_namespaces: Vec<String>,
    pub xattrs_skipped: Vec<String>,
    /// `--replace` only: what replace mode made of the target ([`crate::replace`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replace: Option<crate::apply::ReplaceReport>,
}

/// Open the target and its state, verify the bundle's head, then: what apply would check first
/// ([`checks`]), how many bytes it would stage on each filesystem
/// ([`stage_bytes_per_filesystem`]) and whether they fit ([`filesystems`]); then, if nothing
/// stops apply before it reads them, every frame and the end of the archive (a corrupt bundle
/// is an error, exit 3, as in apply).
pub fn plan(o: &Options, bundle: &Path) -> Result<Plan> {
    let root = fsx::open_dir_path(&o.target).ctx("open target", o.target.display())?;
    let sd = open_state(o)?;
    let trust = load_trust(o, sd.as_ref())?;
    let keys = crate::unseal::Keyring::load(&o.identities, sd.as_ref())?;
    let mut b = verify::OpenBundle::open(bundle, &o.limits)?;
    b.trust(&trust)?;
    let (h, mut reader) = b.into_head(&o.limits)?;
    let h = crate::unseal::open(h, &keys, &o.limits)?;
    let owners = fsx::is_root();
    let pre = crate::xattrs::Attrs::new(&h.manifest, &o.skip_xattrs);
    let (h, rebased) = crate::apply::rebase_if_asked(o, root.as_fd(), owners, h, &pre)?;
    let m = &h.manifest;
    let st = match &sd {
        Some(d) => state::load(d, state::STATE_FILE)?,
        None => state::State::default(),
    };
    let Checks { mut refusal, mounts, attrs, drifted, mut kept } = checks(o, root.as_fd(), &h, &st, owners)?;
    let replace = rebased.map(|(r, configs)| {
        let extra: Vec<_> = configs.into_iter().filter(|p| !kept.contains(p)).collect();
        kept.extend(extra);
        r
    });
    let per = stage_bytes_per_filesystem(root.as_fd(), m, owners, &mounts)?;
    let filesystems = filesystems(root.as_fd(), per, stage::largest_spool(m), &mounts, &mut refusal)?;
    // The frames and the end of the archive, read once, as apply would read them: only when
    // nothing before stops it (apply checks all of the above first), so that the plan exits
    // with the code apply would.
    if refusal.is_none() {
        verify::frames(&mut reader, &h, &o.limits, false, false)?;
    }
    Ok(Plan {
        version: m.version,
        bundle_id: h.id.to_hex(),
        channel: m.channel.clone(),
        installed_version: st.version,
        would_apply: refusal.is_none(),
        refusal_exit_code: refusal.as_ref().map(|e| e.exit() as u8),
        refusal: refusal.map(|e| e.to_string()),
        drifted,
        conffiles_kept: kept.iter().map(|p| p.to_string()).collect(),
        stage_bytes: filesystems.iter().map(|f| f.stage_bytes).sum(),
        filesystems,
        hooks: hooks::matching(m).iter().map(|h| format!("{} (when {} changes)", h.command, h.glob)).collect(),
        steps: m.script.iter().map(|s| Step { op: format!("{:?}", s.op), path: s.path.display() }).collect(),
        xattr_namespaces: m.xattr_namespaces.clone(),
        xattrs_skipped: attrs.skipped().to_vec(),
        replace,
    })
}

/// What apply checks before staging, and the first reason it would refuse.
struct Checks {
    /// The first refusal, in the order apply checks: installed version and policy, network
    /// filesystems, extended-attribute support, drift.
    refusal: Option<Error>,
    /// The filesystems the bundle touches.
    mounts: Vec<crate::netfs::Mount>,
    attrs: crate::xattrs::Attrs,
    drifted: Vec<String>,
    /// Config files that would be kept.
    kept: Vec<bundle::BundlePath>,
}

/// Check the target (state `st`, files under `root`) against bundle `h` as apply would.
fn checks(o: &Options, root: BorrowedFd<'_>, h: &verify::Head, st: &state::State, owners: bool) -> Result<Checks> {
    let m = &h.manifest;
    let mut refusal: Option<Error> = None;
    if st.bundle_id.as_deref() == Some(&h.id.to_hex()) {
        refusal = Some(Error::Version(crate::error::VersionRefusal::AlreadyInstalled));
    } else if let Err(e) = check_policy(o, st, m) {
        refusal = Some(e);
    }
    let mounts = crate::netfs::touched(root, m)?;
    if refusal.is_none() {
        refusal = crate::netfs::refusal(&mounts, o.allow_network_fs);
    }
    let attrs = crate::xattrs::Attrs::new(m, &o.skip_xattrs);
    let unsupported = crate::xattrs::check_support(root, m, &attrs);
    if refusal.is_none() && !unsupported.is_empty() {
        refusal = Some(Error::Unsupported(unsupported));
    }
    let (drifted, kept) = match crate::base::check(root, m, &|p| conffile(m, p), owners, &attrs) {
        Ok(b) => (foreign_side_files(root, &b.kept, st), b.kept),
        Err(d) => (d, Vec::new()),
    };
    if refusal.is_none() && !drifted.is_empty() {
        refusal = Some(Error::Drift(drifted.clone()));
    }
    Ok(Checks { refusal, mounts, attrs, drifted, kept })
}

/// Bytes apply would stage per filesystem (by device), with a directory of the target on each.
fn stage_bytes_per_filesystem(
    root: BorrowedFd<'_>,
    m: &bundle::Manifest,
    owners: bool,
    mounts: &[crate::netfs::Mount],
) -> Result<BTreeMap<u64, (String, u64)>> {
    let mut per: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    let mut dirs = crate::fsx::DirCache::default();
    for i in stage::placed_entries(m, owners) {
        let e = &m.entries[i];
        let key = txn::dev_of_parent(root, &mut dirs, &e.path)?;
        let size = match &e.kind {
            // As staging counts it: a sparse file takes its data only.
            bundle::Kind::File { size, extents, .. } => bundle::sparse::data_len(*size, extents.as_deref()),
            _ => 0,
        };
        let slot = per.entry(key).or_insert_with(|| (nearest_dir(root, &e.path), 0));
        slot.1 += size;
    }
    // Filesystems touched only by deletions or metadata changes stage nothing.
    for mt in mounts {
        per.entry(mt.key).or_insert_with(|| (if mt.dir == "." { String::new() } else { mt.dir.clone() }, 0));
    }
    Ok(per)
}

/// Each filesystem's bytes to stage (`per`, from [`stage_bytes_per_filesystem`], plus `spool`
/// where it stages anything), free space and type; a filesystem without room is the refusal if there is none yet.
fn filesystems(
    root: BorrowedFd<'_>,
    per: BTreeMap<u64, (String, u64)>,
    spool: u64,
    mounts: &[crate::netfs::Mount],
    refusal: &mut Option<Error>,
) -> Result<Vec<Filesystem>> {
    let mut filesystems = Vec::new();
    for (key, (dir, need)) in per {
        // As staging counts it (`stage::largest_spool`): a filesystem that stages something
        // also holds the largest frame's scratch file for a while.
        let need = if need > 0 { need.saturating_add(spool) } else { 0 };
        let d = fsx::open_dir_beneath(root, bundle::BundlePath::new(dir.clone()).ok().as_ref()).ctx("open", &dir)?;
        let avail = fsx::free_bytes(d.as_fd()).ctx("statvfs", &dir)?;
        let fits = need + need / 100 + (1 << 20) <= avail;
        if !fits && refusal.is_none() {
            *refusal = Some(Error::NoSpace { need, avail, path: dir.clone() });
        }
        let ty = match mounts.iter().find(|mt| mt.key == key) {
            Some(mt) => (mt.fs_type.clone(), mt.network),
            None => crate::netfs::fs_type(d.as_fd()).map(|t| (t.describe(), t.network)).ctx("statfs", &dir)?,
        };
        filesystems.push(Filesystem {
            example_dir: if dir.is_empty() { ".".into() } else { dir },
            stage_bytes: need,
            available_bytes: avail,
            fits,
            fs_type: ty.0,
            network: ty.1,
        });
    }
    Ok(filesystems)
}

/// The nearest existing ancestor directory of `p`'s parent, as a path ("" for the root).
fn nearest_dir(root: BorrowedFd<'_>, p: &bundle::BundlePath) -> String {
    let mut anc = p.ancestors();
    while let Some(a) = anc.pop() {
        if fsx::open_dir_beneath(root, Some(&a)).is_ok() {
            return a.display();
        }
    }
    String::new()
}
