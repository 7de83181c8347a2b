//! Compare OLD and NEW scans into manifest entries, unordered script steps, the set of OLD
//! paths the script touches, and a content decision for every NEW file.
//!
//! This is where the manifest semantics the applier relies on are decided (which paths get
//! Place/SetMeta/Delete/DirMeta, when a hardlink group is re-placed, when content is unchanged,
//! empty, a local copy, or needs a payload); the order of the steps is decided later by
//! [`crate::plan`], the bytes of payloads by [`crate::delta`].

use crate::scan::{ScanEntry, Tree, Type};
use bundle::{BundlePath, Content, Entry, Hash, Kind, OldEntry, OldKind, Op, Step};
use std::collections::{BTreeMap, BTreeSet};

/// Where the bytes of a NEW file come from, before payloads are encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Unchanged,
    Empty,
    Copy(BundlePath),
    /// Needs a payload; the OLD file to try as delta base, if any.
    Payload {
        base: Option<BundlePath>,
    },
}

/// `--keep-unchanged-mtimes`: every NEW file or symlink that OLD has at the same path with the
/// same content (or target), mode and owner, and that is not a hardlink on either side, takes
/// OLD's mtime, so that an mtime-only change is not an update: such paths get no step and are not
/// listed in a delta's manifest. Directories keep NEW's mtimes. Returns (files, bytes) changed.
pub fn keep_unchanged_mtimes(old: &Tree, new: &mut Tree) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    for n in new.entries.iter_mut() {
        let Some(o) = old.get(&n.path) else { continue };
        let same = match (&n.ty, &o.ty) {
            (Type::File, Type::File) => {
                n.size == o.size && n.hash == o.hash && n.primary.is_none() && o.primary.is_none()
            }
            (Type::Symlink(a), Type::Symlink(b)) => a == b,
            _ => false,
        };
        if same
            && n.meta.mtime_ns != o.meta.mtime_ns
            && (n.meta.mode, n.meta.uid, n.meta.gid) == (o.meta.mode, o.meta.uid, o.meta.gid)
        {
            n.meta.mtime_ns = o.meta.mtime_ns;
            files += 1;
            bytes += n.size;
        }
    }
    (files, bytes)
}

/// Result of the comparison. The NEW entries of the manifest are not part of it: they are made
/// by [`new_entries`], at the end and only for the paths the manifest lists.
#[derive(Clone, Debug, Default)]
pub struct Diff {
    /// Steps, unordered (one phase-0 or Delete step per path, plus DirMeta steps).
    pub steps: Vec<Step>,
    /// OLD paths the script touches (Place over, SetMeta, Delete, implicit removal, OLD dirs
    /// whose metadata changes).
    pub touched: BTreeSet<BundlePath>,
    /// Content decision for every NEW file entry (`Kind::File`) whose content is not
    /// [`Choice::Unchanged`] (a file not listed is unchanged: on a large tree with few changes,
    /// a map of every file would be most of the diff's memory).
    pub choices: BTreeMap<BundlePath, Choice>,
}

/// The expected-OLD form of a scanned entry (hardlinks are plain files).
pub fn old_entry(e: &ScanEntry) -> OldEntry {
    let kind = match &e.ty {
        Type::File => OldKind::File { size: e.size, hash: e.hash },
        Type::Dir => OldKind::Dir,
        Type::Symlink(t) => OldKind::Symlink { target: t.to_vec() },
        Type::Fifo => OldKind::Fifo,
        Type::CharDev(r) => OldKind::CharDev { rdev: *r },
        Type::BlockDev(r) => OldKind::BlockDev { rdev: *r },
    };
    OldEntry { path: e.path.clone(), meta: e.meta, kind }
}

/// Every entry of a tree as [`OldEntry`], sorted (input of [`bundle::tree_digest`]).
pub fn old_entries(t: &Tree) -> Vec<OldEntry> {
    t.entries.iter().map(old_entry).collect()
}

/// What [`crate::plan::order`] needs of OLD to order the deletions: the whole tree if a deleted
/// path is a symlink (it is deleted before what it resolves through, anywhere in OLD), else
/// nothing (deletions are then ordered by the paths alone). Saves a copy of every OLD entry on
/// the usual update of a large tree (1,000,000 files: ~200 MB of build memory).
pub fn old_entries_for_deletes(t: &Tree, steps: &[Step]) -> Vec<OldEntry> {
    let deletes_a_link =
        steps.iter().any(|s| s.op == Op::Delete && t.get(&s.path).is_some_and(|e| matches!(e.ty, Type::Symlink(_))));
    if deletes_a_link {
        old_entries(t)
    } else {
        Vec::new()
    }
}

/// Same type, same content/target/rdev and, for a file, the same layout (which parts are holes;
/// metadata not compared). A file whose content is unchanged but whose holes differ is placed
/// anew as a local copy of itself (no payload), so the target's allocation ends as NEW's.
fn same_payload(n: &ScanEntry, o: &ScanEntry) -> bool {
    match (&n.ty, &o.ty) {
        (Type::File, Type::File) => n.size == o.size && n.hash == o.hash && n.extents == o.extents,
        (a, b) => a == b,
    }
}

/// Replace each run of ASCII digits with `#`: `lib/libfoo.so.1.2.3` and `lib/libfoo.so.1.2.4`
/// (and `python3.11/x` and `python3.12/x`) normalise alike.
fn version_key(p: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(p.len());
    for &b in p {
        if b.is_ascii_digit() {
            if v.last() != Some(&b'#') {
                v.push(b'#');
            }
        } else {
            v.push(b);
        }
    }
    v
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Whether `p` matches one of the config globs.
pub fn is_config(config_globs: &[String], p: &BundlePath) -> bool {
    config_globs.iter().any(|g| bundle::glob::matches(g.as_bytes(), p.as_bytes()))
}

/// OLD's files by content and by [`version_key`], for the NEW files that need a content choice:
/// only the digests and keys those files look up are indexed (each list in OLD's order, as if
/// every OLD file were), so the index grows with the changed files, not with the tree.
struct OldIndex<'a> {
    by_hash: BTreeMap<Hash, Vec<&'a BundlePath>>,
    /// OLD files by [`version_key`], except those matching a config glob: a config file may be
    /// edited on the target, so nothing is decoded from it unless it is a file's own OLD version.
    by_version_key: BTreeMap<Vec<u8>, Vec<&'a ScanEntry>>,
}

impl<'a> OldIndex<'a> {
    /// Index the OLD files whose digest is in `hashes` or whose version key is in `keys`.
    fn new(old: &'a Tree, config_globs: &[String], hashes: &BTreeSet<Hash>, keys: &BTreeSet<Vec<u8>>) -> Self {
        let mut by_hash: BTreeMap<Hash, Vec<&BundlePath>> = BTreeMap::new();
        let mut by_version_key: BTreeMap<Vec<u8>, Vec<&ScanEntry>> = BTreeMap::new();
        for e in old.entries.iter().filter(|e| e.ty == Type::File && e.size > 0) {
            if hashes.contains(&e.hash) {
                by_hash.entry(e.hash).or_default().push(&e.path);
            }
            if keys.is_empty() {
                continue;
            }
            let key = version_key(e.path.as_bytes());
            if keys.contains(&key) && !is_config(config_globs, &e.path) {
                by_version_key.entry(key).or_default().push(e);
            }
        }
        OldIndex { by_hash, by_version_key }
    }

    /// The index [`Ctx::payload_choice`] needs for the NEW files `pending`.
    fn for_files(old: &'a Tree, config_globs: &[String], pending: &[&ScanEntry]) -> Self {
        let (mut hashes, mut keys) = (BTreeSet::new(), BTreeSet::new());
        for n in pending {
            if has_no_data(n) {
                continue;
            }
            hashes.insert(n.hash);
            let own_base = old.get(&n.path).is_some_and(|o| o.ty == Type::File && o.size > 0);
            if !is_config(config_globs, &n.path) && !own_base {
                keys.insert(version_key(n.path.as_bytes()));
            }
        }
        OldIndex::new(old, config_globs, &hashes, &keys)
    }

    /// An OLD file with the same content: same path, then same file name, then smallest path.
    fn copy_source(&self, p: &BundlePath, hash: &Hash) -> Option<BundlePath> {
        let c = self.by_hash.get(hash)?;
        c.iter()
            .find(|q| **q == p)
            .or_else(|| c.iter().find(|q| q.file_name() == p.file_name()))
            .or_else(|| c.first())
            .map(|q| (*q).clone())
    }

    /// A delta base: the OLD file at the same path, else the OLD file whose path differs only in
    /// version digits and whose size is within 2x, longest common prefix first. (NEW files left
    /// without a base here may get one by similarity later: [`crate::similar`].)
    fn delta_base(&self, old: &Tree, p: &BundlePath, size: u64) -> Option<BundlePath> {
        if let Some(o) = old.get(p) {
            if o.ty == Type::File && o.size > 0 {
                return Some(p.clone());
            }
        }
        let c = self.by_version_key.get(&version_key(p.as_bytes()))?;
        c.iter()
            .filter(|o| o.size <= size.saturating_mul(2) && size <= o.size.saturating_mul(2))
            .max_by(|a, b| {
                common_prefix(a.path.as_bytes(), p.as_bytes())
                    .cmp(&common_prefix(b.path.as_bytes(), p.as_bytes()))
                    .then_with(|| b.path.cmp(&a.path))
            })
            .map(|o| o.path.clone())
    }
}

/// An empty file, or one that is all hole: no data to carry.
fn has_no_data(n: &ScanEntry) -> bool {
    n.size == 0 || n.extents.as_ref().is_some_and(|x| x.is_empty())
}

/// Steps and decisions collected while NEW is compared with OLD, path by path.
#[derive(Default)]
struct Changes {
    /// The one creation-phase step (Mkdir, Place, SetMeta) of each path that has one.
    phase0: BTreeMap<BundlePath, Op>,
    touched: BTreeSet<BundlePath>,
    dirmeta: BTreeSet<BundlePath>,
    /// OLD directories that NEW replaces by something else (removed with all they hold).
    exchanged: BTreeSet<BundlePath>,
    choices: BTreeMap<BundlePath, Choice>,
    /// NEW files whose content choice is made once all of NEW is compared (it needs the index
    /// of OLD, built for these files only).
    pending: Vec<BundlePath>,
}

/// What every comparison needs: both trees, the config globs, and (once built) the index of
/// OLD's files.
struct Ctx<'a> {
    old: &'a Tree,
    new: &'a Tree,
    idx: OldIndex<'a>,
    config_globs: &'a [String],
}

impl Ctx<'_> {
    fn is_config(&self, p: &BundlePath) -> bool {
        is_config(self.config_globs, p)
    }

    /// Where the content of a NEW file whose inode group changed comes from.
    fn payload_choice(&self, p: &BundlePath, n: &ScanEntry) -> Choice {
        // A file that is all hole has no data either.
        if has_no_data(n) {
            Choice::Empty
        } else if let Some(from) = self.idx.copy_source(p, &n.hash) {
            Choice::Copy(from)
        } else if self.is_config(p) {
            // A config file may be locally edited on the target (the conffile rule keeps the
            // edit): its NEW content must not be decoded from the OLD file.
            Choice::Payload { base: None }
        } else {
            Choice::Payload { base: self.idx.delta_base(self.old, p, n.size) }
        }
    }
}

impl Changes {
    /// Compare one NEW entry with OLD at the same path.
    fn compare(&mut self, cx: &Ctx, n: &ScanEntry) {
        let o = cx.old.get(&n.path);
        if let Some(o) = o {
            if o.ty == Type::Dir && n.ty != Type::Dir {
                self.exchanged.insert(n.path.clone());
            }
        }
        match &n.ty {
            Type::File => self.file(cx, n, o),
            Type::Dir => self.dir(n, o),
            _ => self.special(n, o),
        }
    }

    /// A file is decided with its whole NEW inode group: untouched if every member is the same
    /// file in OLD with the same group, else every member is placed.
    fn file(&mut self, cx: &Ctx, n: &ScanEntry, o: Option<&ScanEntry>) {
        let p = &n.path;
        if n.is_secondary_link() {
            return; // decided with its primary
        }
        let group = cx.new.group_of(p);
        let untouched = group.iter().all(|m| {
            let (Some(nm), Some(om)) = (cx.new.get(m), cx.old.get(m)) else {
                return false;
            };
            om.ty == Type::File && same_payload(nm, om) && cx.old.group_of(m) == group
        });
        // A shared inode never gets more permission in place (the applier refuses a file with
        // extra links whose change raises permissions: a planted hard link would share it), so
        // a group with such a change is placed anew, as a group.
        let raises = group.len() > 1
            && o.is_some_and(|o| crate::xattr::with_sets(|sets| o.meta.raises_permissions(&n.meta, true, sets)));
        if untouched && !raises {
            let Some(o) = o else { return };
            if o.meta != n.meta {
                self.phase0.insert(p.clone(), Op::SetMeta);
                self.touched.insert(p.clone());
            }
        } else {
            for m in &group {
                self.phase0.insert(m.clone(), Op::Place);
                if cx.old.get(m).is_some() {
                    self.touched.insert(m.clone());
                }
            }
            self.pending.push(p.clone());
        }
    }

    fn dir(&mut self, n: &ScanEntry, o: Option<&ScanEntry>) {
        let p = &n.path;
        match o {
            None => {
                self.phase0.insert(p.clone(), Op::Mkdir);
                self.dirmeta.insert(p.clone());
            }
            Some(o) if o.ty == Type::Dir => {
                if o.meta != n.meta {
                    self.dirmeta.insert(p.clone());
                    self.touched.insert(p.clone());
                }
            }
            Some(_) => {
                self.phase0.insert(p.clone(), Op::Place);
                self.dirmeta.insert(p.clone());
                self.touched.insert(p.clone());
            }
        }
    }

    /// Symlinks, FIFOs and device nodes.
    fn special(&mut self, n: &ScanEntry, o: Option<&ScanEntry>) {
        let p = &n.path;
        match o {
            None => {
                self.phase0.insert(p.clone(), Op::Place);
            }
            Some(o) if o.ty.name() == n.ty.name() => {
                if !same_payload(n, o) {
                    self.phase0.insert(p.clone(), Op::Place);
                    self.touched.insert(p.clone());
                } else if o.meta != n.meta {
                    self.phase0.insert(p.clone(), Op::SetMeta);
                    self.touched.insert(p.clone());
                }
            }
            Some(_) => {
                self.phase0.insert(p.clone(), Op::Place);
                self.touched.insert(p.clone());
            }
        }
    }

    /// OLD paths missing from NEW are touched; they get a Delete unless an exchanged directory
    /// above them takes them away.
    fn deletes(&mut self, old: &Tree, new: &Tree) -> BTreeSet<BundlePath> {
        let mut deletes: BTreeSet<BundlePath> = BTreeSet::new();
        for o in &old.entries {
            if new.get(&o.path).is_some() {
                continue;
            }
            self.touched.insert(o.path.clone());
            if !o.path.ancestors().iter().any(|a| self.exchanged.contains(a)) {
                deletes.insert(o.path.clone());
            }
        }
        deletes
    }

    /// Directories whose entries change get their mtime (and the rest of their meta) set last.
    fn parents_get_dirmeta(&mut self, new: &Tree, deletes: &BTreeSet<BundlePath>) {
        let is_new_dir = |p: &BundlePath| new.get(p).is_some_and(|e| e.ty == Type::Dir);
        let changed = self.phase0.iter().filter(|(_, op)| **op != Op::SetMeta).map(|(p, _)| p);
        for p in changed.chain(deletes) {
            if let Some(parent) = p.parent() {
                if is_new_dir(&parent) {
                    self.dirmeta.insert(parent);
                }
            }
        }
    }
}

/// Compare `old` and `new`. `config_globs` mark NEW files as configuration files.
pub fn diff(old: &Tree, new: &Tree, config_globs: &[String]) -> Diff {
    let none = (BTreeSet::new(), BTreeSet::new());
    let mut cx = Ctx { old, new, idx: OldIndex::new(old, config_globs, &none.0, &none.1), config_globs };
    let mut c = Changes::default();
    for n in &new.entries {
        c.compare(&cx, n);
    }
    let pending: Vec<&ScanEntry> = std::mem::take(&mut c.pending).iter().filter_map(|p| new.get(p)).collect();
    cx.idx = OldIndex::for_files(old, config_globs, &pending);
    for n in pending {
        c.choices.insert(n.path.clone(), cx.payload_choice(&n.path, n));
    }
    let deletes = c.deletes(old, new);
    c.parents_get_dirmeta(new, &deletes);
    let mut steps: Vec<Step> = std::mem::take(&mut c.phase0).into_iter().map(|(path, op)| Step { op, path }).collect();
    steps.extend(deletes.into_iter().map(|path| Step { op: Op::Delete, path }));
    steps.extend(std::mem::take(&mut c.dirmeta).into_iter().map(|path| Step { op: Op::DirMeta, path }));
    Diff { steps, touched: c.touched, choices: c.choices }
}

/// The manifest entries of the NEW entries that `keep` marks (by index into `new.entries`; all
/// of them if `None`), in path order; files needing a payload hold `Content::Pieces(vec![])`
/// until the encoder's pieces are filled in.
pub fn new_entries(
    new: &Tree,
    choices: &BTreeMap<BundlePath, Choice>,
    config_globs: &[String],
    keep: Option<&[bool]>,
) -> Vec<Entry> {
    let kept = |i: usize| keep.is_none_or(|k| k.get(i).copied().unwrap_or(false));
    new.entries.iter().enumerate().filter(|(i, _)| kept(*i)).map(|(_, n)| new_entry(n, choices, config_globs)).collect()
}

/// A superset of the NEW entries the manifest must list (bundle-format.md §4.2, as
/// [`bundle::Manifest::required_entries`] marks them), found from the scan: the paths of the
/// script's non-Delete steps and of `old_paths` (the manifest's OLD list), and with each of them
/// its whole hard-link group, the `NAME.ferry-new` beside a config file, and its ancestors. Made
/// before the manifest's entries, so that only these get an [`Entry`]; the manifest's own rule
/// then drops what is more than needed.
pub fn required_paths<'a>(
    new: &Tree,
    script: &'a [Step],
    old_paths: impl Iterator<Item = &'a BundlePath>,
    config_globs: &[String],
) -> Vec<bool> {
    let index = |p: &BundlePath| new.entries.binary_search_by(|e| e.path.cmp(p)).ok();
    let mut need = vec![false; new.entries.len()];
    let mut work: Vec<usize> = Vec::new();
    let mut mark = |i: Option<usize>, work: &mut Vec<usize>| {
        if let Some(i) = i.filter(|&i| !need[i]) {
            need[i] = true;
            work.push(i);
        }
    };
    let seeds = script.iter().filter(|s| s.op != Op::Delete).map(|s| &s.path).chain(old_paths);
    for p in seeds {
        mark(index(p), &mut work);
    }
    while let Some(i) = work.pop() {
        let e = &new.entries[i];
        if e.ty == Type::File {
            for m in new.group_of(&e.path) {
                mark(index(&m), &mut work);
            }
            if !e.is_secondary_link() && is_config(config_globs, &e.path) {
                mark(bundle::manifest::ferry_new_path(&e.path).and_then(|s| index(&s)), &mut work);
            }
        }
        mark(e.path.parent().and_then(|a| index(&a)), &mut work);
    }
    need
}

/// The manifest entry of a NEW scan entry; a file's content as decided in `choices`.
fn new_entry(n: &ScanEntry, choices: &BTreeMap<BundlePath, Choice>, config_globs: &[String]) -> Entry {
    let kind = match &n.ty {
        Type::File => match n.primary.as_deref() {
            Some(pr) if pr != &n.path => Kind::Hardlink { primary: pr.clone() },
            _ => {
                let content = match choices.get(&n.path) {
                    Some(Choice::Unchanged) | None => Content::Unchanged,
                    Some(Choice::Empty) => Content::Empty,
                    Some(Choice::Copy(from)) => Content::Copy { from: from.clone() },
                    Some(Choice::Payload { .. }) => Content::Pieces(Vec::new()),
                };
                // The layout is NEW's whatever the content choice: the applier writes a staged
                // file (payload or copy) with these extents; unchanged content keeps its layout.
                // Unchanged content has no digest of its own: it is OLD's (bundle-format.md §4.2).
                Kind::File {
                    size: n.size,
                    hash: (content != Content::Unchanged).then_some(n.hash),
                    content,
                    config: is_config(config_globs, &n.path),
                    extents: n.extents.as_deref().map(<[_]>::to_vec),
                    gzip: None,
                }
            }
        },
        Type::Dir => Kind::Dir,
        Type::Symlink(t) => Kind::Symlink { target: t.to_vec() },
        Type::Fifo => Kind::Fifo,
        Type::CharDev(r) => Kind::CharDev { rdev: *r },
        Type::BlockDev(r) => Kind::BlockDev { rdev: *r },
    };
    Entry { path: n.path.clone(), meta: n.meta, kind }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bundle::Meta;

    pub fn bp(s: &str) -> BundlePath {
        BundlePath::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    pub fn file(p: &str, content: &[u8]) -> ScanEntry {
        ScanEntry {
            path: bp(p),
            ty: Type::File,
            meta: Meta { mode: 0o644, ..Meta::default() },
            size: content.len() as u64,
            hash: Hash::of(content),
            extents: None,
            primary: None,
        }
    }
    pub fn dir(p: &str) -> ScanEntry {
        ScanEntry {
            path: bp(p),
            ty: Type::Dir,
            meta: Meta { mode: 0o755, ..Meta::default() },
            size: 0,
            hash: Hash::default(),
            extents: None,
            primary: None,
        }
    }
    pub fn link(p: &str, t: &str) -> ScanEntry {
        ScanEntry { ty: Type::Symlink(t.as_bytes().into()), meta: Meta { mode: 0o777, ..Meta::default() }, ..dir(p) }
    }
    pub fn tree(e: Vec<ScanEntry>) -> Tree {
        Tree::from_entries(crate::scan::Source::default(), e)
    }
    fn ops(d: &Diff) -> Vec<String> {
        d.steps.iter().map(|s| format!("{:?} {}", s.op, s.path)).collect()
    }

    #[test]
    fn old_entries_for_deletes_only_when_a_symlink_is_deleted() {
        let old = tree(vec![dir("d"), file("d/a", b"a"), link("l", "d"), file("f", b"f")]);
        let with_file_deleted = diff(&old, &tree(vec![dir("d"), file("d/a", b"a"), link("l", "d")]), &[]);
        assert!(old_entries_for_deletes(&old, &with_file_deleted.steps).is_empty());
        let with_link_deleted = diff(&old, &tree(vec![dir("d"), file("d/a", b"a"), file("f", b"f")]), &[]);
        assert_eq!(old_entries_for_deletes(&old, &with_link_deleted.steps), old_entries(&old));
    }

    #[test]
    fn basic_semantics() {
        let old = tree(vec![
            dir("d"),
            file("d/a", b"one"),
            file("d/b", b"same"),
            file("gone", b"g"),
            dir("x"),
            file("x/y", b"y"),
            file("mv", b"moved!"),
        ]);
        let mut b2 = file("d/b", b"same");
        b2.meta.mode = 0o600;
        let new =
            tree(vec![dir("d"), file("d/a", b"two"), b2, link("x", "d"), file("d/new", b"moved!"), file("e", b"")]);
        let d = diff(&old, &new, &["d/new".into()]);
        assert_eq!(
            ops(&d),
            ["Place d/a", "SetMeta d/b", "Place d/new", "Place e", "Place x", "Delete gone", "Delete mv", "DirMeta d"]
        );
        // x/y is removed with the directory x it is under: in `old`, no Delete.
        assert!(d.touched.contains(&bp("x/y")));
        assert_eq!(d.choices[&bp("d/a")], Choice::Payload { base: Some(bp("d/a")) });
        assert_eq!(d.choices[&bp("d/new")], Choice::Copy(bp("mv")));
        assert_eq!(d.choices[&bp("e")], Choice::Empty);
        // Unchanged content: no choice listed.
        assert!(!d.choices.contains_key(&bp("d/b")));
        assert_eq!(d.choices.len(), 3);
        let entries = new_entries(&new, &d.choices, &["d/new".into()], None);
        assert!(matches!(entries[3].kind, Kind::File { config: true, .. }));
        assert!(matches!(entries[2].kind, Kind::File { content: Content::Unchanged, hash: None, .. }));
    }

    #[test]
    fn hardlink_group_change_replaces_every_member() {
        let mut a = file("a", b"x");
        let mut b = file("b", b"x");
        a.primary = Some(Box::new(bp("a")));
        b.primary = Some(Box::new(bp("a")));
        let old = tree(vec![file("a", b"x"), file("b", b"x")]);
        let new = tree(vec![a, b]);
        let d = diff(&old, &new, &[]);
        assert_eq!(ops(&d), ["Place a", "Place b"]);
        assert_eq!(d.choices[&bp("a")], Choice::Copy(bp("a")));
        assert!(matches!(new_entries(&new, &d.choices, &[], None)[1].kind, Kind::Hardlink { .. }));
        // Unchanged group: nothing.
        let d = diff(&new, &new, &[]);
        assert!(d.steps.is_empty());
    }

    #[test]
    fn config_files_get_no_delta_base() {
        let old = tree(vec![dir("etc"), file("etc/a.conf", b"one")]);
        let new = tree(vec![dir("etc"), file("etc/a.conf", b"two")]);
        let d = diff(&old, &new, &["etc/*.conf".into()]);
        assert_eq!(d.choices[&bp("etc/a.conf")], Choice::Payload { base: None });
    }

    #[test]
    fn version_bump_base() {
        let old = tree(vec![dir("lib"), file("lib/libfoo.so.1.2.3", b"0123456789")]);
        let new = tree(vec![dir("lib"), file("lib/libfoo.so.1.2.4", b"0123456788")]);
        let d = diff(&old, &new, &[]);
        assert_eq!(d.choices[&bp("lib/libfoo.so.1.2.4")], Choice::Payload { base: Some(bp("lib/libfoo.so.1.2.3")) });
    }

    #[test]
    fn version_bump_base_is_never_a_config_file() {
        let old = tree(vec![dir("etc"), file("etc/app-1.conf", b"0123456789")]);
        let new = tree(vec![dir("etc"), file("etc/app-2.conf", b"0123456788")]);
        let d = diff(&old, &new, &["etc/app-1.conf".into()]);
        assert_eq!(d.choices[&bp("etc/app-2.conf")], Choice::Payload { base: None });
        let d = diff(&old, &new, &[]);
        assert_eq!(d.choices[&bp("etc/app-2.conf")], Choice::Payload { base: Some(bp("etc/app-1.conf")) });
    }
}
