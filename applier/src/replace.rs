//! Replace mode (`apply --replace`, `update --replace`; bundle-format.md §10.4): a full bundle
//! onto a target that is not empty — a machine that missed more releases than its channel keeps
//! deltas for, or one installed by other means.
//!
//! A full bundle lists NEW only (no `old`, a script that creates everything). Here it is
//! *rebased* on what the target holds: the target is scanned (never crossing into another mount,
//! never looking into the state directory or a work directory), and the manifest is rewritten
//! into the delta from that tree to NEW — an `old` entry for every path the script replaces,
//! changes or removes, as observed; unchanged files dropped; a file whose content is equal but
//! whose metadata differs changed by `SetMeta`; every path NEW lacks deleted (except what the
//! operator keeps with `--keep GLOB`, mount points, and the state directory). The result goes
//! through the same checks as a signed delta — [`bundle::script::validate`], the base check,
//! staging, the journaled commit, rollback — so nothing about crash safety changes. The signed
//! manifest stays in the transaction as it was signed; the rebased one is saved beside it
//! (`replace.cbor`) and on resume checked to be a rebase of the signed one ([`check_rebase`]).
//!
//! A config file whose content differs from NEW's is kept and NEW's version goes beside it as
//! `NAME.ferry-new`: without the bundle's base the applier cannot tell a local edit from an old
//! release's file, so it keeps the file, as the conffile rule does for an edit (§14).

use crate::error::{Ctx, Error, Result};
use crate::fsx;
use crate::xattrs::Attrs;
use bundle::resolve::{NodeId, Object, Outcome, Resolver, Tree, Visits};
use bundle::{BundlePath, Content, Entry, Kind, Manifest, Meta, OldEntry, OldKind, Op, Step, XattrSet};
use rustix::fs::{FileType, Stat};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::BorrowedFd;

/// What replace mode leaves alone and how it compares.
pub struct Scope<'a> {
    /// `--keep` globs: a path NEW lacks that matches one stays, with everything under it.
    pub keep: &'a [String],
    /// Paths (relative to the target) never looked into nor removed: the state directory when it
    /// is inside the target.
    pub skip: Vec<BundlePath>,
    /// Owners are applied (running as root): an owner difference is a metadata change.
    pub owners: bool,
    /// The attributes in scope (the bundle's namespaces minus `--skip-xattrs`).
    pub attrs: &'a Attrs,
}

/// A full bundle's manifest rebased on the target.
#[derive(Debug)]
pub struct Rebased {
    pub manifest: Manifest,
    /// Config files whose content differs from NEW's: kept, NEW's version beside them.
    pub configs: Vec<BundlePath>,
    /// Paths NEW lacks that stay, each with the reason.
    pub left: Vec<String>,
    /// NEW entries already in the target as NEW has them (no step).
    pub unchanged: usize,
    /// Paths NEW lacks that the commit removes (into the transaction's backup).
    pub removed: usize,
}

/// One object found in the target: what the rebase needs of its `lstat` (kept small: replace
/// mode holds one per path of the tree).
struct Found {
    kind: FileType,
    size: u64,
    /// `(st_dev, st_ino, st_nlink)`.
    id: (u64, u64, u64),
    meta: Meta,
    /// A directory on another mount: not looked into, never removed.
    mount_point: bool,
}

impl Found {
    #[allow(clippy::unnecessary_cast)] // st_dev, st_ino and st_nlink are not u64 everywhere
    fn new(st: &Stat, mount_point: bool) -> Found {
        Found {
            kind: fsx::file_type(st),
            size: st.st_size as u64,
            id: (st.st_dev as u64, st.st_ino as u64, st.st_nlink as u64),
            meta: fsx::meta_of(st),
            mount_point,
        }
    }
}

/// What the rebased script does with a NEW entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Absent from the target: the full bundle's own step.
    Create,
    /// Present and equal, metadata included: no step.
    Same,
    /// Same content, other metadata: `SetMeta` (a file becomes `Unchanged`).
    Meta,
    /// Present and different, or of another type: `Place` over it.
    Replace,
}

/// Rebase the verified full-bundle manifest `m` on the target at `root`.
pub fn rebase(root: BorrowedFd<'_>, m: &Manifest, scope: &Scope<'_>) -> Result<Rebased> {
    if m.base.is_some() || !m.old.is_empty() {
        return Err(Error::Usage(
            "--replace takes a full bundle (one built from an empty OLD tree); this bundle is a delta".into(),
        ));
    }
    let mut found = walk(root, scope)?;
    let protect = protected(&found, scope);
    look_under_mounts(root, m, &mut found)?;
    let primaries = m
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::Hardlink { primary } => Some(primary.clone()),
            _ => None,
        })
        .collect();
    let mut r = Rebase { root, m, scope, found: &found, seen: HashMap::new(), fates: BTreeMap::new(), primaries };
    r.observe_new_paths()?;
    r.decide_fates();
    r.build(&protect)
}

/// Every object in the target, by path, not crossing mounts, skipping the state directory and
/// the work directories at the root.
fn walk(root: BorrowedFd<'_>, scope: &Scope<'_>) -> Result<BTreeMap<BundlePath, Found>> {
    let root_mount = fsx::mount_key(root).ctx("scan", "target root")?;
    let mut dirs = fsx::DirCache::default();
    let mut out = BTreeMap::new();
    let mut todo: Vec<Option<BundlePath>> = vec![None];
    while let Some(d) = todo.pop() {
        let shown = d.as_ref().map_or_else(|| ".".to_string(), |p| p.display());
        let fd = dirs.dir(root, d.as_ref()).ctx("scan", &shown)?;
        let names = fsx::list_dir(fd).ctx("scan", &shown)?;
        for name in names {
            // The state directory's default place and the work directories: never NEW's.
            if d.is_none() && (name == bundle::path::STATE_DIR || name.starts_with(b".ferry-work-")) {
                continue;
            }
            let p = match &d {
                None => BundlePath::new(name.clone()),
                Some(d) => d.join(&name),
            }
            .map_err(|e| Error::Usage(format!("target path {shown}/{}: {e}", String::from_utf8_lossy(&name))))?;
            if scope.skip.contains(&p) {
                continue;
            }
            let fd = dirs.dir(root, d.as_ref()).ctx("scan", &shown)?;
            let Some(st) = fsx::lstat_at(fd, &name).ctx("scan", p.display())? else { continue };
            let mut mount_point = false;
            if fsx::file_type(&st) == FileType::Directory {
                let sub = fsx::open_dir_at(fd, &name).ctx("scan", p.display())?;
                mount_point = fsx::mount_key(std::os::fd::AsFd::as_fd(&sub)).ctx("scan", p.display())? != root_mount;
                if !mount_point {
                    todo.push(Some(p.clone()));
                }
            }
            out.insert(p, Found::new(&st, mount_point));
        }
    }
    Ok(out)
}

/// NEW paths inside a mount point (the walk does not enter other filesystems): looked up one by
/// one, so what is there is compared like anything else (paths NEW lacks there stay). A NEW
/// non-directory where the target has a mount point cannot be placed: refused.
fn look_under_mounts(root: BorrowedFd<'_>, m: &Manifest, found: &mut BTreeMap<BundlePath, Found>) -> Result<()> {
    let mounts: Vec<BundlePath> = found.iter().filter(|(_, f)| f.mount_point).map(|(p, _)| p.clone()).collect();
    if mounts.is_empty() {
        return Ok(());
    }
    let mut dirs = fsx::DirCache::default();
    for e in &m.entries {
        if mounts.contains(&e.path) && !matches!(e.kind, Kind::Dir) {
            return Err(Error::Drift(vec![format!(
                "{}: a mount point in the target; the bundle has a {} there",
                e.path,
                kind_name(&e.kind)
            )]));
        }
        if found.contains_key(&e.path) || !mounts.iter().any(|mp| e.path.is_under(mp)) {
            continue;
        }
        let st = match dirs.parent_of(root, &e.path) {
            Ok((dir, name)) => fsx::lstat_at(dir, name).ctx("scan", e.path.display())?,
            // A parent that is missing (or not a directory: then NEW places it anew).
            Err(_) => None,
        };
        if let Some(st) = st {
            found.insert(e.path.clone(), Found::new(&st, false));
        }
    }
    Ok(())
}

/// The reason given for the paths under a `--keep` match (not listed one by one).
const UNDER_KEPT: &str = "under a kept path";

/// Paths NEW may lack that must stay: those matching `--keep` (with everything under them),
/// mount points, the skipped paths, and the ancestors of all of these.
fn protected(found: &BTreeMap<BundlePath, Found>, scope: &Scope<'_>) -> BTreeMap<BundlePath, String> {
    let mut out = BTreeMap::new();
    let add = |p: &BundlePath, why: String, out: &mut BTreeMap<BundlePath, String>| {
        for a in p.ancestors() {
            out.entry(a).or_insert_with(|| "holds a path that stays".to_string());
        }
        out.insert(p.clone(), why);
    };
    for s in &scope.skip {
        add(s, "the state directory".into(), &mut out);
    }
    let mut kept_roots: BTreeSet<BundlePath> = BTreeSet::new();
    for (p, f) in found {
        if p.ancestors().iter().any(|a| kept_roots.contains(a)) {
            out.insert(p.clone(), UNDER_KEPT.into());
            continue;
        }
        if let Some(g) = scope.keep.iter().find(|g| bundle::glob::matches(g.as_bytes(), p.as_bytes())) {
            add(p, format!("kept (--keep {g})"), &mut out);
            kept_roots.insert(p.clone());
        } else if f.mount_point {
            add(p, "a mount point (another filesystem is never looked into)".into(), &mut out);
        } else if f.kind == FileType::Socket {
            add(p, "a socket (a bundle cannot hold one; left in place)".into(), &mut out);
        }
    }
    out
}

struct Rebase<'a> {
    root: BorrowedFd<'a>,
    m: &'a Manifest,
    scope: &'a Scope<'a>,
    found: &'a BTreeMap<BundlePath, Found>,
    /// What is at a path, observed as the base check will (files hashed where needed), with its
    /// attributes in scope.
    seen: HashMap<BundlePath, (OldKind, XattrSet)>,
    fates: BTreeMap<BundlePath, Fate>,
    /// NEW files that hardlinks name as their primary.
    primaries: BTreeSet<BundlePath>,
}

impl Rebase<'_> {
    /// Observe (hash) what the comparisons need: every found object at a NEW path.
    fn observe_new_paths(&mut self) -> Result<()> {
        let paths: Vec<(BundlePath, Option<u64>)> = self
            .m
            .entries
            .iter()
            .filter_map(|e| {
                let f = self.found.get(&e.path)?;
                let want = match &e.kind {
                    Kind::File { size, .. } if f.size == *size => Some(*size),
                    _ => None,
                };
                Some((e.path.clone(), want))
            })
            .collect();
        self.observe(&paths)
    }

    /// Observe `paths` (hashing a regular file when its size is the one given) in parallel.
    fn observe(&mut self, paths: &[(BundlePath, Option<u64>)]) -> Result<()> {
        let (root, attrs) = (self.root, self.scope.attrs);
        let seen = crate::par::map_with(paths, fsx::DirCache::default, |dirs, (p, want)| {
            let kind = crate::base::observe(root, dirs, p, *want)?.map(|(k, _)| k);
            let x = match (&kind, attrs.active()) {
                (Some(_), true) => {
                    dirs.parent_of(root, p).and_then(|(d, n)| attrs.read_at(d, n)).map_err(|e| e.to_string())?
                }
                _ => XattrSet::new(),
            };
            Ok::<_, String>(kind.map(|k| (k, x)))
        });
        for ((p, _), s) in paths.iter().zip(seen) {
            match s {
                Ok(Some(v)) => {
                    self.seen.insert(p.clone(), v);
                }
                Ok(None) => return Err(Error::Drift(vec![format!("{p}: removed while the target was scanned")])),
                Err(why) => return Err(Error::Drift(vec![format!("{p}: {why}")])),
            }
        }
        Ok(())
    }

    /// The fate of every NEW entry; a hardlink group stays only if all of it does.
    fn decide_fates(&mut self) {
        for e in &self.m.entries {
            let f = self.fate(e);
            self.fates.insert(e.path.clone(), f);
        }
        let mut groups: BTreeMap<&BundlePath, Vec<&BundlePath>> = BTreeMap::new();
        for e in &self.m.entries {
            if let Kind::Hardlink { primary } = &e.kind {
                groups.entry(primary).or_insert_with(|| vec![primary]).push(&e.path);
            }
        }
        for members in groups.values() {
            let inode = |p: &BundlePath| self.found.get(p).map(|f| f.id);
            // Unchanged only as one inode with exactly these names (no link beyond the group).
            let whole = members.iter().all(|p| self.fates.get(*p) == Some(&Fate::Same))
                && members.iter().all(|p| inode(p) == inode(members[0]))
                && inode(members[0]).is_some_and(|i| i.2 == members.len() as u64);
            if !whole {
                for p in members {
                    let f = if self.found.contains_key(*p) { Fate::Replace } else { Fate::Create };
                    self.fates.insert((*p).clone(), f);
                }
            }
        }
    }

    fn fate(&self, e: &Entry) -> Fate {
        let Some(f) = self.found.get(&e.path) else { return Fate::Create };
        let Some((kind, x)) = self.seen.get(&e.path) else { return Fate::Replace };
        let same_object = match (&e.kind, kind) {
            (Kind::Dir, OldKind::Dir) => true,
            (Kind::File { size, hash: Some(h), .. }, OldKind::File { size: s, hash }) => size == s && h == hash,
            (Kind::Hardlink { primary }, OldKind::File { size, hash }) => {
                // A group member: compared with its primary's content.
                match self.m.entry(primary).map(|p| &p.kind) {
                    Some(Kind::File { size: s, hash: Some(h), .. }) => s == size && h == hash,
                    _ => false,
                }
            }
            (Kind::Symlink { target }, OldKind::Symlink { target: t }) => target == t,
            (Kind::Fifo, OldKind::Fifo) => true,
            (Kind::CharDev { rdev }, OldKind::CharDev { rdev: r })
            | (Kind::BlockDev { rdev }, OldKind::BlockDev { rdev: r }) => rdev == r,
            _ => false,
        };
        if matches!(e.kind, Kind::Dir) && same_object {
            // A directory stays; its metadata is set by `DirMeta` when it differs.
            return Fate::Same;
        }
        if !same_object {
            return Fate::Replace;
        }
        // A file NEW gives no other name but that has other links here (to a path NEW does not
        // link it with, or one someone planted, maybe outside the tree) is placed anew, never
        // left shared nor changed in place (§15.1). Group members are judged as a group.
        let grouped = matches!(e.kind, Kind::Hardlink { .. }) || self.primaries.contains(&e.path);
        if f.id.2 > 1 && !grouped && matches!(e.kind, Kind::File { .. }) {
            Fate::Replace
        } else if self.same_meta(&f.meta, x, &e.meta) {
            Fate::Same
        } else if grouped || f.id.2 > 1 {
            Fate::Replace
        } else {
            Fate::Meta
        }
    }

    fn same_meta(&self, have: &Meta, x: &XattrSet, want: &Meta) -> bool {
        have.mode == want.mode
            && have.mtime_ns == want.mtime_ns
            && (!self.scope.owners || (have.uid == want.uid && have.gid == want.gid))
            && self.scope.attrs.difference(x, want).is_none()
    }

    /// The rebased manifest. Found paths NEW lacks are removed, whole subtrees, unless
    /// protected; the descendants of a directory NEW replaces by a non-directory leave with it
    /// (and must not hold a protected path).
    fn build(self, protect: &BTreeMap<BundlePath, String>) -> Result<Rebased> {
        let mut removed: Vec<BundlePath> = Vec::new();
        let mut retyped_under: Vec<BundlePath> = Vec::new();
        let mut left = Vec::new();
        let (mut gone, mut retyped): (BTreeSet<BundlePath>, BTreeMap<BundlePath, &Entry>) = Default::default();
        for (p, f) in self.found.iter() {
            let anc = p.ancestors();
            if anc.iter().any(|a| gone.contains(a)) {
                removed.push(p.clone());
                continue;
            }
            if let Some(e) = anc.iter().find_map(|a| retyped.get(a)) {
                if let Some(why) = protect.get(p) {
                    return Err(Error::Drift(vec![format!(
                        "{p}: {why}, but NEW replaces the directory {} holding it with a {}",
                        e.path,
                        kind_name(&e.kind)
                    )]));
                }
                retyped_under.push(p.clone());
                continue;
            }
            if let Some(e) = self.m.entry(p) {
                if !matches!(e.kind, Kind::Dir) && f.kind == FileType::Directory {
                    retyped.insert(p.clone(), e);
                }
                continue;
            }
            match protect.get(p) {
                Some(why) if why.as_str() == UNDER_KEPT => {}
                Some(why) => left.push(format!("{p}: {why}")),
                None => {
                    removed.push(p.clone());
                    gone.insert(p.clone());
                }
            }
        }
        self.finish(removed, retyped_under, left)
    }

    /// Observe the paths that get `old` entries, then assemble entries, `old` and the script.
    fn finish(
        mut self,
        removed: Vec<BundlePath>,
        retyped_under: Vec<BundlePath>,
        left: Vec<String>,
    ) -> Result<Rebased> {
        let fate = |e: &&Entry| self.fates.get(&e.path).copied();
        let stepped: Vec<&Entry> =
            self.m.entries.iter().filter(|e| !matches!(fate(e), Some(Fate::Same | Fate::Create))).collect();
        // Directories that stay and need `DirMeta`: other metadata, or a child that changes
        // (is created, replaced, changed or removed).
        let changed = self.m.entries.iter().filter(|e| fate(e) != Some(Fate::Same)).map(|e| &e.path);
        let touched_dirs: BTreeSet<BundlePath> = changed.chain(removed.iter()).filter_map(|p| p.parent()).collect();
        let mut dirmeta: BTreeSet<BundlePath> = BTreeSet::new();
        for e in self.m.entries.iter().filter(|e| matches!(e.kind, Kind::Dir)) {
            let stays = self.fates.get(&e.path) == Some(&Fate::Same);
            let differs = self
                .found
                .get(&e.path)
                .zip(self.seen.get(&e.path))
                .is_some_and(|(f, (_, x))| !self.same_meta(&f.meta, x, &e.meta));
            if stays && (differs || touched_dirs.contains(&e.path)) {
                dirmeta.insert(e.path.clone());
            }
        }
        // Everything that gets an `old` entry, observed (files hashed whole).
        let mut old_paths: BTreeSet<BundlePath> = BTreeSet::new();
        old_paths.extend(stepped.iter().filter(|e| self.found.contains_key(&e.path)).map(|e| e.path.clone()));
        old_paths.extend(dirmeta.iter().cloned());
        old_paths.extend(removed.iter().cloned());
        old_paths.extend(retyped_under.iter().cloned());
        // Observed already, except files of another size than NEW's (not hashed then).
        let need: Vec<(BundlePath, Option<u64>)> = old_paths
            .iter()
            .filter(|p| match self.seen.get(*p) {
                None => true,
                Some((OldKind::File { hash, .. }, _)) => *hash == bundle::Hash::default(),
                Some(_) => false,
            })
            .filter_map(|p| self.found.get(p).map(|f| (p.clone(), Some(f.size))))
            .collect();
        self.observe(&need)?;
        let mut out = self.m.clone();
        let mut sets: Vec<XattrSet> = out.xattr_sets.clone();
        let mut old = Vec::with_capacity(old_paths.len());
        for p in &old_paths {
            let (Some(f), Some((kind, x))) = (self.found.get(p), self.seen.get(p)) else {
                return Err(Error::Internal(format!("replace: {p} not observed")));
            };
            let mut meta = f.meta;
            meta.xattrs = set_index(&mut sets, x);
            old.push(OldEntry { path: p.clone(), meta, kind: kind.clone() });
        }
        out.old = old;
        out.xattr_sets = sets;
        let configs = self.rewrite_entries(&mut out);
        out.script = self.script(&removed, &dirmeta, &out)?;
        out.drop_unneeded_entries();
        bundle::script::validate(&out)
            .map_err(|e| Error::Internal(format!("the rebased script of this full bundle is not valid: {e}")))?;
        let unchanged = self.fates.values().filter(|f| **f == Fate::Same).count();
        Ok(Rebased { manifest: out, configs, left, unchanged, removed: removed.len() })
    }

    /// Files whose content stays become `Unchanged`; returns the config files that differ.
    fn rewrite_entries(&self, out: &mut Manifest) -> Vec<BundlePath> {
        let mut configs = Vec::new();
        for e in &mut out.entries {
            let fate = self.fates.get(&e.path).copied();
            if let Kind::File { hash, content, extents, config, gzip, .. } = &mut e.kind {
                match fate {
                    Some(Fate::Meta) => {
                        *hash = None;
                        *content = Content::Unchanged;
                        *extents = None;
                        *gzip = None;
                    }
                    Some(Fate::Replace)
                        if *config && matches!(self.seen.get(&e.path), Some((OldKind::File { .. }, _))) =>
                    {
                        configs.push(e.path.clone());
                    }
                    _ => {}
                }
            }
        }
        configs
    }

    /// Phase 0 in the full bundle's order (creation, type changes, replacements, `SetMeta`),
    /// then deletions ([`delete_order`]), then `DirMeta`.
    fn script(&self, removed: &[BundlePath], dirmeta: &BTreeSet<BundlePath>, out: &Manifest) -> Result<Vec<Step>> {
        let mut script = Vec::new();
        let mut created_dirmeta = BTreeSet::new();
        for s in &self.m.script {
            let fate = self.fates.get(&s.path).copied().unwrap_or(Fate::Create);
            let op = match (s.op, fate) {
                (Op::DirMeta, Fate::Create | Fate::Replace) => {
                    created_dirmeta.insert(s.path.clone());
                    continue;
                }
                (Op::DirMeta, _) | (_, Fate::Same) => continue,
                (Op::Delete, _) => return Err(Error::Internal("a full bundle with a Delete step".into())),
                (op, Fate::Create) => op,
                (_, Fate::Replace) => Op::Place,
                (_, Fate::Meta) => Op::SetMeta,
            };
            script.push(Step { op, path: s.path.clone() });
        }
        script.extend(delete_order(out, removed).into_iter().map(|path| Step { op: Op::Delete, path }));
        let mut metas: Vec<&BundlePath> = dirmeta.iter().chain(created_dirmeta.iter()).collect();
        metas.sort();
        script.extend(metas.into_iter().map(|p| Step { op: Op::DirMeta, path: p.clone() }));
        Ok(script)
    }
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::File { .. } | Kind::Hardlink { .. } => "file",
        Kind::Dir => "directory",
        Kind::Symlink { .. } => "symlink",
        _ => "special file",
    }
}

/// Index of attribute set `x` in `sets` (appended if new); `None` for an empty set.
fn set_index(sets: &mut Vec<XattrSet>, x: &XattrSet) -> Option<u32> {
    if x.is_empty() {
        return None;
    }
    let i = sets.iter().position(|s| s == x).unwrap_or_else(|| {
        sets.push(x.clone());
        sets.len() - 1
    });
    u32::try_from(i).ok()
}

/// Every mark a resolution visited (the deleted symlinks it depends on).
#[derive(Clone, Debug, Default)]
struct All(Vec<u32>);

impl Visits for All {
    fn visit(&mut self, _node: NodeId, mark: u32) {
        self.0.push(mark);
    }
    fn follow(&mut self, _link: NodeId, _marked: bool, inner: &Self) {
        self.0.extend_from_slice(&inner.0);
    }
}

/// §6 rules 1 and 6 for the removed paths: symlinks first, each before the removed symlinks its
/// target resolves through in OLD; then everything else, children before parents (reverse path
/// order).
fn delete_order(m: &Manifest, removed: &[BundlePath]) -> Vec<BundlePath> {
    let removed_set: BTreeSet<&BundlePath> = removed.iter().collect();
    let links: Vec<&BundlePath> = m
        .old
        .iter()
        .filter(|o| removed_set.contains(&o.path) && matches!(o.kind, OldKind::Symlink { .. }))
        .map(|o| &o.path)
        .collect();
    let index: HashMap<&BundlePath, u32> = links.iter().enumerate().map(|(i, p)| (*p, i as u32)).collect();
    let mut tree = Tree::new(false);
    for o in &m.old {
        tree.insert(&o.path, Object::of_old(&o.kind), removed_set.contains(&o.path), index.get(&o.path).copied());
    }
    let mut resolver: Resolver<All> = Resolver::new(&tree);
    // Edges: link i must go before every removed link j its resolution visits.
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); links.len()];
    let mut indegree = vec![0usize; links.len()];
    for (i, p) in links.iter().enumerate() {
        let Some(node) = tree.get(p) else { continue };
        if let (Outcome::Resolved { .. }, All(seen)) = resolver.resolve(node) {
            let mut seen: Vec<usize> = seen.into_iter().map(|j| j as usize).filter(|&j| j != i).collect();
            seen.sort_unstable();
            seen.dedup();
            for j in seen {
                after[i].push(j);
                indegree[j] += 1;
            }
        }
    }
    // Kahn's algorithm, smallest index first (resolved links form no cycle).
    let mut ready: BTreeSet<usize> = (0..links.len()).filter(|&i| indegree[i] == 0).collect();
    let mut out: Vec<BundlePath> = Vec::with_capacity(removed.len());
    let mut placed = vec![false; links.len()];
    while let Some(i) = ready.pop_first() {
        placed[i] = true;
        out.push(links[i].clone());
        for &j in &after[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.insert(j);
            }
        }
    }
    out.extend(links.iter().zip(&placed).filter(|(_, done)| !**done).map(|(p, _)| (*p).clone()));
    let is_link: BTreeSet<&BundlePath> = links.iter().copied().collect();
    out.extend(removed.iter().rev().filter(|p| !is_link.contains(p)).cloned());
    out
}

/// On resume: `rebased` (read from the transaction) must be a rebase of the signed `signed`:
/// the same bundle in every signed field, each entry the signed one at its path (a file possibly
/// made `Unchanged`), the signed attribute sets as a prefix; its script is validated again.
pub fn check_rebase(signed: &Manifest, rebased: &Manifest) -> std::result::Result<(), String> {
    let same_bundle = signed.format == rebased.format
        && signed.version == rebased.version
        && signed.base.is_none()
        && rebased.base.is_none()
        && signed.channel == rebased.channel
        && signed.created == rebased.created
        && signed.expires == rebased.expires
        && signed.frames == rebased.frames
        && signed.hooks == rebased.hooks
        && signed.rotation == rebased.rotation
        && signed.xattr_namespaces == rebased.xattr_namespaces
        && rebased.xattr_sets.starts_with(&signed.xattr_sets);
    if !same_bundle {
        return Err("it is not a rebase of the signed manifest".into());
    }
    for e in &rebased.entries {
        let Some(s) = signed.entry(&e.path) else {
            return Err(format!("{}: not in the signed manifest", e.path));
        };
        let ok = s == e
            || match (&s.kind, &e.kind) {
                (
                    Kind::File { size, config, .. },
                    Kind::File {
                        size: z,
                        config: c,
                        content: Content::Unchanged,
                        hash: None,
                        extents: None,
                        gzip: None,
                    },
                ) => size == z && config == c && s.meta == e.meta,
                _ => false,
            };
        if !ok {
            return Err(format!("{}: differs from the signed manifest", e.path));
        }
    }
    bundle::script::validate(rebased).map_err(|e| e.to_string())
}
