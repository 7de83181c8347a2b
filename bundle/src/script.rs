//! Validation of the ordered apply script (bundle-format.md, "The apply script").
//!
//! The builder orders the steps; the applier trusts nothing and checks here, before anything is
//! written, that every step's preconditions are met by the steps before it. Each rule cites what
//! it prevents at commit time.

use crate::resolve::{Earliest, Latest, Object, Outcome, Resolver, Tree};
use crate::{BundlePath, Content, Entry, Error, Kind, Manifest, OldEntry, OldKind, Op, Step};
use std::collections::{BTreeMap, BTreeSet, HashMap};

fn phase(op: Op) -> u8 {
    match op {
        Op::Mkdir | Op::Place | Op::SetMeta => 0,
        Op::Delete => 1,
        Op::DirMeta => 2,
    }
}

/// OLD entries under `p`: in bytewise order they are the contiguous run starting with `p/`.
fn descendants<'a>(old: &'a [OldEntry], p: &BundlePath) -> impl Iterator<Item = &'a OldEntry> {
    let mut prefix = p.as_bytes().to_vec();
    prefix.push(b'/');
    let start = old.partition_point(|e| e.path.as_bytes() < prefix.as_slice());
    old[start..].iter().take_while(move |e| e.path.as_bytes().starts_with(&prefix))
}

/// Check the script of a structurally valid manifest ([`Manifest::check`] passed): the rules of
/// bundle-format.md §6, in an order that reports, for each step, the earliest rule it breaks.
/// Every error names the rule (`[§6 rule N]`).
pub fn validate(m: &Manifest) -> Result<(), Error> {
    let new: BTreeMap<&BundlePath, &Entry> = m.entries.iter().map(|e| (&e.path, e)).collect();
    let old: BTreeMap<&BundlePath, &OldEntry> = m.old.iter().map(|e| (&e.path, e)).collect();
    rule8_entries_under_directories(m, &new)?;
    let plan = Plan::new(m, new, old)?;
    let mut last_phase = 0u8;
    for (i, s) in m.script.iter().enumerate() {
        rule1_phases(i, s, &mut last_phase)?;
        plan.preconditions(i, s)?;
        plan.rule3_parents_first(i, s)?;
        plan.rule4_symlinks_after_targets(i, s)?;
        plan.rule5_hardlinks_after_primary(i, s)?;
        plan.rule6_children_deleted_first(i, s)?;
    }
    plan.rule6_symlinks_deleted_before_targets()?;
    plan.rule9_complete()?;
    rule10_sparse_entries(m)
}

/// A step error naming its rule.
fn script_error(i: usize, s: &Step, rule: u8, why: String) -> Error {
    Error::Script { step: i, path: s.path.clone(), why: format!("{why} [§6 rule {rule}]") }
}

/// A manifest error naming its rule.
fn manifest_error(rule: u8, why: String) -> Error {
    Error::Manifest(format!("{why} [§6 rule {rule}]"))
}

/// Rule 8: every NEW entry's parent is a NEW directory (a path can't live under a file or a
/// symlink, so no step can ever write through a symlink the bundle creates).
fn rule8_entries_under_directories(m: &Manifest, new: &BTreeMap<&BundlePath, &Entry>) -> Result<(), Error> {
    for e in &m.entries {
        if let Some(p) = e.path.parent() {
            if !matches!(new.get(&p).map(|x| &x.kind), Some(Kind::Dir)) {
                return Err(manifest_error(8, format!("{}: parent {} is not a directory of NEW", e.path, p)));
            }
        }
    }
    Ok(())
}

/// Rule 1: creations, then deletions, then directory metadata.
fn rule1_phases(i: usize, s: &Step, last_phase: &mut u8) -> Result<(), Error> {
    let ph = phase(s.op);
    if ph < *last_phase {
        let why = "steps out of phase order (creations, then deletions, then directory metadata)";
        return Err(script_error(i, s, 1, why.into()));
    }
    *last_phase = ph;
    Ok(())
}

/// Rule 10: every listed entry is one §4.2 requires; unchanged entries are not listed.
fn rule10_sparse_entries(m: &Manifest) -> Result<(), Error> {
    for (e, need) in m.entries.iter().zip(m.required_entries()) {
        if !need {
            return Err(manifest_error(
                10,
                format!(
                    "{}: listed in entries, but it has no step, no OLD entry and is not needed by a listed \
                     entry (unchanged entries are not listed)",
                    e.path
                ),
            ));
        }
    }
    Ok(())
}

/// Rule 4's resolution, over what the manifest knows: the listed entries in their NEW form. A
/// name missing under a directory the script creates does not exist in NEW (everything under a
/// created directory is created, rule 9); a name missing elsewhere is an unlisted path, the same
/// in OLD and NEW and untouched, whose object is unknown, so a resolution reaching it cannot be
/// checked and is not. Links that dangle or loop in NEW have no constraint. Each link is resolved
/// once ([`crate::resolve`]: at most 40 links per resolution, memoized), so a manifest of a
/// million entries is checked in linear time.
fn link_needs<'a>(
    m: &'a Manifest,
    created: &HashMap<&'a BundlePath, usize>,
) -> HashMap<&'a BundlePath, (usize, &'a BundlePath)> {
    let mark = |p: &BundlePath| created.get(p).and_then(|&j| u32::try_from(j).ok());
    let mut tree = Tree::new(false);
    for e in &m.entries {
        tree.insert(&e.path, Object::of(&e.kind), created.contains_key(&e.path), mark(&e.path));
    }
    let mut resolver: Resolver<Latest> = Resolver::new(&tree);
    let mut needs = HashMap::new();
    for s in m.script.iter().filter(|s| s.op == Op::Place) {
        let Some(node) = tree.get(&s.path).filter(|&n| matches!(tree.object(n), Object::Symlink(_))) else { continue };
        if let (Outcome::Resolved { .. }, Latest(Some((j, at)))) = resolver.resolve(node) {
            if let Some(a) = tree.path(at) {
                needs.insert(&s.path, (j as usize, a));
            }
        }
    }
    needs
}

/// The script indexed: where each path is created (`Mkdir`/`Place`) and deleted, and the OLD
/// directories a `Place` exchanges away.
struct Plan<'a> {
    m: &'a Manifest,
    new: BTreeMap<&'a BundlePath, &'a Entry>,
    old: BTreeMap<&'a BundlePath, &'a OldEntry>,
    created: HashMap<&'a BundlePath, usize>,
    deleted: HashMap<&'a BundlePath, usize>,
    /// OLD directories replaced by a non-directory: their OLD descendants leave with them.
    exchanged: Vec<&'a BundlePath>,
    /// For each placed symlink whose resolution can be followed to its end: the latest step
    /// creating a path it resolves through, and that path (rule 4).
    link_needs: HashMap<&'a BundlePath, (usize, &'a BundlePath)>,
}

impl<'a> Plan<'a> {
    /// Index the script, checking rule 2: a path has at most one step of the first two phases
    /// and at most one `DirMeta`.
    fn new(
        m: &'a Manifest,
        new: BTreeMap<&'a BundlePath, &'a Entry>,
        old: BTreeMap<&'a BundlePath, &'a OldEntry>,
    ) -> Result<Self, Error> {
        let mut created = HashMap::new();
        let mut deleted = HashMap::new();
        let mut seen: BTreeSet<(&BundlePath, u8)> = BTreeSet::new();
        for (i, s) in m.script.iter().enumerate() {
            let ph = phase(s.op);
            if !seen.insert((&s.path, if ph == 2 { 2 } else { 0 })) {
                return Err(script_error(i, s, 2, "path has more than one step".into()));
            }
            match s.op {
                Op::Mkdir | Op::Place => {
                    created.insert(&s.path, i);
                }
                Op::Delete => {
                    deleted.insert(&s.path, i);
                }
                _ => {}
            }
        }
        let exchanged = m
            .script
            .iter()
            .filter(|s| s.op == Op::Place && matches!(old.get(&s.path).map(|o| &o.kind), Some(OldKind::Dir)))
            .map(|s| &s.path)
            .collect();
        let link_needs = link_needs(m, &created);
        Ok(Plan { m, new, old, created, deleted, exchanged, link_needs })
    }

    fn under_exchanged(&self, p: &BundlePath) -> bool {
        self.exchanged.iter().any(|x| p.is_under(x))
    }

    /// The precondition of each op (the table of §6), with the parts of rules 7 and 9 that are
    /// about one step: a step other than `Delete` is on a listed path (rule 9: an unlisted path
    /// is identical in OLD and NEW); a `Place` of a directory is a type change, and nothing
    /// inside a replaced directory is deleted on its own (rule 7).
    fn preconditions(&self, i: usize, s: &Step) -> Result<(), Error> {
        let bad = |rule: u8, why: &str| Err(script_error(i, s, rule, why.into()));
        let n = self.new.get(&s.path).map(|e| &e.kind);
        let o = self.old.get(&s.path).map(|o| &o.kind);
        if s.op != Op::Delete && n.is_none() {
            let why = format!("{:?} of a path that is not in NEW (not listed in entries)", s.op);
            return Err(script_error(i, s, 9, why));
        }
        match s.op {
            Op::Mkdir if !matches!(n, Some(Kind::Dir)) || o.is_some() => {
                bad(3, "mkdir of a path that is not a new directory")
            }
            Op::Place => match (n, o) {
                (Some(Kind::Dir), None | Some(OldKind::Dir)) => {
                    bad(7, "place of a directory that is not a type change (use mkdir)")
                }
                (Some(Kind::File { content: Content::Unchanged, .. }), _) => {
                    bad(9, "place of a file with unchanged content")
                }
                _ => Ok(()),
            },
            Op::SetMeta => match (n, o) {
                (
                    Some(Kind::File { content: Content::Unchanged, .. }),
                    Some(OldKind::File { .. } | OldKind::Tagged { .. }),
                )
                | (Some(Kind::Symlink { .. }), Some(OldKind::Symlink { .. }))
                | (Some(Kind::Fifo), Some(OldKind::Fifo))
                | (Some(Kind::CharDev { .. }), Some(OldKind::CharDev { .. }))
                | (Some(Kind::BlockDev { .. }), Some(OldKind::BlockDev { .. })) => Ok(()),
                _ => bad(9, "setmeta needs the same non-directory type in OLD and NEW with unchanged content"),
            },
            Op::Delete if n.is_some() || o.is_none() => bad(9, "delete of a path that is in NEW or not in OLD"),
            Op::Delete if self.under_exchanged(&s.path) => {
                bad(7, "delete of a path inside a directory that is replaced")
            }
            Op::DirMeta if !matches!(n, Some(Kind::Dir)) => bad(1, "dirmeta of a path that is not a NEW directory"),
            _ => Ok(()),
        }
    }

    /// Rule 3: a path created by this step needs its parent to exist as a directory already:
    /// untouched (the applier checks it is a real directory) or created by an earlier step.
    fn rule3_parents_first(&self, i: usize, s: &Step) -> Result<(), Error> {
        if !matches!(s.op, Op::Mkdir | Op::Place) {
            return Ok(());
        }
        if let Some(p) = s.path.parent() {
            if let Some(&j) = self.created.get(&p) {
                if j > i {
                    return Err(script_error(i, s, 3, format!("parent {p} is created later, at step {j}")));
                }
            }
        }
        Ok(())
    }

    /// Rule 4: a symlink is placed only after every path its target resolves through, resolved
    /// as the kernel will (through symlinked directories, `..` after them, absolute targets
    /// from the target root), exists in its NEW form: a link that resolves in NEW never dangles
    /// from the moment it appears, even on a merged-/usr tree where `/lib/x` is `usr/lib/x`.
    fn rule4_symlinks_after_targets(&self, i: usize, s: &Step) -> Result<(), Error> {
        if s.op != Op::Place {
            return Ok(());
        }
        match self.link_needs.get(&s.path) {
            Some(&(j, a)) if j > i => Err(script_error(
                i,
                s,
                4,
                format!("symlink placed before {a} (step {j}), which its target resolves through"),
            )),
            _ => Ok(()),
        }
    }

    /// Rule 5 (order): the `Place` of a hardlink comes after its primary's.
    fn rule5_hardlinks_after_primary(&self, i: usize, s: &Step) -> Result<(), Error> {
        let Some(Kind::Hardlink { primary }) = self.new.get(&s.path).map(|e| &e.kind) else { return Ok(()) };
        if s.op != Op::Place {
            return Ok(());
        }
        match self.created.get(primary) {
            Some(&j) if j < i => Ok(()),
            _ => Err(script_error(i, s, 5, format!("hardlink placed before its source {primary}"))),
        }
    }

    /// Rule 6 (directories): a deleted directory's OLD descendants are deleted earlier; one still
    /// present would be lost.
    fn rule6_children_deleted_first(&self, i: usize, s: &Step) -> Result<(), Error> {
        if s.op != Op::Delete {
            return Ok(());
        }
        for c in descendants(&self.m.old, &s.path) {
            match self.deleted.get(&c.path) {
                Some(&j) if j < i => {}
                _ => return Err(script_error(i, s, 6, format!("directory deleted before its child {}", c.path))),
            }
        }
        Ok(())
    }

    /// Rule 6 (symlinks): a deleted OLD symlink goes before the deleted paths it resolves
    /// through in OLD, resolved as rule 4 resolves (kernel-style, [`crate::resolve`]) over the
    /// `old` entries: a deleted directory's children are all listed (they are deleted too), a
    /// name missing elsewhere is unknown and ends the check; a link that dangles or loops in OLD
    /// (a cycle `a -> b`, `b -> a` being removed) has no constraint.
    fn rule6_symlinks_deleted_before_targets(&self) -> Result<(), Error> {
        let mark = |p: &BundlePath| self.deleted.get(p).and_then(|&j| u32::try_from(j).ok());
        let mut tree = Tree::new(false);
        for o in &self.m.old {
            tree.insert(&o.path, Object::of_old(&o.kind), self.deleted.contains_key(&o.path), mark(&o.path));
        }
        let mut resolver: Resolver<Earliest> = Resolver::new(&tree);
        for s in self.m.script.iter().filter(|s| s.op == Op::Delete) {
            let Some(node) = tree.get(&s.path).filter(|&n| matches!(tree.object(n), Object::Symlink(_))) else {
                continue;
            };
            let Some(i) = mark(&s.path) else { continue };
            if let (Outcome::Resolved { .. }, Earliest(Some((j, at)))) = resolver.resolve(node) {
                if j < i {
                    let a = tree.path(at).map_or_else(String::new, |a| a.display());
                    let why = format!("symlink deleted after {a} (step {j}), which it resolves through [§6 rule 6]");
                    return Err(Error::Script { step: i as usize, path: s.path.clone(), why });
                }
            }
        }
        Ok(())
    }

    /// Rule 9, completeness over what is listed (an unlisted NEW path is identical in OLD, §4.2),
    /// with rule 5's "a hardlink group is placed whole" and rule 7's "a type change is placed":
    /// everything NEW needs is created, every OLD path not in NEW is removed.
    fn rule9_complete(&self) -> Result<(), Error> {
        let created = |p: &BundlePath| self.created.contains_key(p);
        for e in &self.m.entries {
            // Unchanged entries are not listed in OLD, so only file content tells what must be staged.
            let needs = matches!(&e.kind, Kind::File { content, .. } if !matches!(content, Content::Unchanged));
            let type_change = self
                .old
                .get(&e.path)
                .is_some_and(|o| matches!((&e.kind, &o.kind), (Kind::Dir, k) if !matches!(k, OldKind::Dir)));
            if (needs || type_change) && !created(&e.path) {
                return Err(manifest_error(9, format!("{}: NEW entry is never placed", e.path)));
            }
            if let Kind::Hardlink { primary } = &e.kind {
                if created(primary) != created(&e.path) {
                    return Err(manifest_error(5, format!("{}: hardlink group placed only in part", e.path)));
                }
            }
            // A directory the script creates is new (or replaces a non-directory): nothing under
            // it exists in OLD, so every NEW entry under it is created too.
            if let Some(p) = e.path.parent() {
                if created(&p) && !created(&e.path) {
                    let why = format!("{}: NEW entry under the created directory {p} is never created", e.path);
                    return Err(manifest_error(9, why));
                }
            }
        }
        for o in &self.m.old {
            if !self.new.contains_key(&o.path) && !self.deleted.contains_key(&o.path) && !self.under_exchanged(&o.path)
            {
                let why = format!("{}: OLD entry not in NEW (not listed in entries) is never deleted", o.path);
                return Err(manifest_error(9, why));
            }
            if let Some(n) = self.new.get(&o.path) {
                if n.kind.name() != o.kind.name()
                    && !(matches!(n.kind, Kind::Hardlink { .. }) && o.kind.name() == "file")
                    && !created(&o.path)
                {
                    return Err(manifest_error(7, format!("{}: type changes but the path is never placed", o.path)));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hash, Limits, Meta, Step};

    fn p(s: &str) -> BundlePath {
        BundlePath::new(s.as_bytes().to_vec()).unwrap_or_else(|e| panic!("{e}"))
    }
    fn meta(mode: u32) -> Meta {
        Meta { mode, ..Meta::default() }
    }
    fn dir(s: &str) -> Entry {
        Entry { path: p(s), meta: meta(0o755), kind: Kind::Dir }
    }
    fn file(s: &str, content: Content, config: bool) -> Entry {
        let size = if content == Content::Empty { 0 } else { 3 };
        Entry {
            path: p(s),
            meta: meta(0o644),
            kind: Kind::File {
                size,
                hash: (content != Content::Unchanged).then_some(Hash([1; 32])),
                content,
                config,
                extents: None,
                gzip: None,
            },
        }
    }
    fn link(s: &str, primary: &str) -> Entry {
        Entry { path: p(s), meta: meta(0o644), kind: Kind::Hardlink { primary: p(primary) } }
    }
    fn old_file(s: &str) -> OldEntry {
        OldEntry { path: p(s), meta: meta(0o600), kind: OldKind::File { size: 3, hash: Hash([1; 32]) } }
    }
    fn old_dir(s: &str) -> OldEntry {
        OldEntry { path: p(s), meta: meta(0o755), kind: OldKind::Dir }
    }
    fn step(op: Op, s: &str) -> Step {
        Step { op, path: p(s) }
    }
    fn manifest(entries: Vec<Entry>, old: Vec<OldEntry>, script: Vec<Step>) -> Manifest {
        Manifest {
            format: crate::FORMAT_VERSION,
            version: 2,
            base: Some(crate::Base { version: Some(1), tree: Hash([0; 32]) }),
            channel: "stable".into(),
            created: 0,
            expires: None,
            entries,
            old,
            frames: vec![],
            script,
            hooks: vec![],
            rotation: None,
            xattr_namespaces: vec![],
            xattr_sets: vec![],
            tagged_digest: None,
            sealed: None,
        }
    }
    fn run(m: &Manifest) -> Result<(), String> {
        m.check(&Limits::default()).map_err(|e| e.to_string())?;
        validate(m).map_err(|e| e.to_string())
    }
    fn refused(m: &Manifest, needle: &str) {
        match run(m) {
            Ok(()) => panic!("accepted, expected {needle:?}"),
            Err(e) => assert!(e.contains(needle), "{e:?} does not contain {needle:?}"),
        }
    }

    /// `d/a` changes mode only, `d/b` (unlisted) and everything else is unchanged; `gone` is
    /// deleted; `d/copy` is a copy of OLD `src`, which stays in NEW unchanged.
    fn sparse() -> Manifest {
        manifest(
            vec![
                dir("d"),
                file("d/a", Content::Unchanged, false),
                file("d/copy", Content::Copy { from: p("src") }, false),
                file("src", Content::Unchanged, false),
            ],
            vec![old_dir("d"), old_file("d/a"), old_file("gone"), old_file("src")],
            vec![step(Op::SetMeta, "d/a"), step(Op::Place, "d/copy"), step(Op::Delete, "gone"), step(Op::DirMeta, "d")],
        )
    }

    #[test]
    fn sparse_entries_accepted() {
        let m = sparse();
        run(&m).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.required_entries().iter().all(|&n| n));
    }

    #[test]
    fn builder_filter_keeps_exactly_the_needed_entries() {
        let mut m = sparse();
        // The whole NEW tree: add unchanged entries that nothing needs.
        m.entries.extend([
            dir("other"),
            file("other/x", Content::Unchanged, false),
            file("d/b", Content::Unchanged, false),
        ]);
        m.entries.sort_by(|a, b| a.path.cmp(&b.path));
        refused(&m, "d/b: listed in entries, but it has no step");
        m.drop_unneeded_entries();
        assert_eq!(m.entries, sparse().entries);
        run(&m).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn unlisted_step_path_refused() {
        let mut m = sparse();
        m.entries.retain(|e| e.path != p("d/a"));
        refused(&m, "SetMeta of a path that is not in NEW (not listed in entries)");
        let mut m = sparse();
        m.entries.retain(|e| e.path != p("d/copy"));
        refused(&m, "Place of a path that is not in NEW");
    }

    #[test]
    fn surviving_old_entry_must_be_listed() {
        // `src` is read as a copy source and stays in NEW: unlisted, it would mean "removed",
        // but nothing removes it.
        let mut m = sparse();
        m.entries.retain(|e| e.path != p("src"));
        refused(&m, "src: OLD entry not in NEW (not listed in entries) is never deleted");
    }

    #[test]
    fn ancestors_must_be_listed() {
        let mut m = sparse();
        m.entries.retain(|e| e.path != p("d"));
        m.script.retain(|s| s.op != Op::DirMeta);
        refused(&m, "parent d is not a directory of NEW");
    }

    #[test]
    fn unchanged_entry_needs_a_reason() {
        let mut m = sparse();
        m.entries.insert(2, file("d/b", Content::Unchanged, false));
        refused(&m, "d/b: listed in entries, but it has no step");
    }

    #[test]
    fn hardlink_groups_listed_whole() {
        // SetMeta of a primary lists its hardlinks (same inode) even without steps.
        let mut m = manifest(
            vec![file("a", Content::Unchanged, false), link("b", "a"), link("c", "a")],
            vec![old_file("a")],
            vec![step(Op::SetMeta, "a")],
        );
        run(&m).unwrap_or_else(|e| panic!("{e}"));
        // A member listed for its step pulls in the primary; listing a member with no reason
        // except an unlisted group is refused by the primary rule.
        m.entries.remove(0);
        refused(&m, "hardlink primary a is not an earlier file entry");
        // A group placed only in part.
        let m = manifest(vec![file("a", Content::Empty, false), link("b", "a")], vec![], vec![step(Op::Place, "a")]);
        refused(&m, "hardlink group placed only in part");
    }

    #[test]
    fn config_side_file_listed_with_its_config_file() {
        let m = |config: bool| {
            manifest(
                vec![file("c", Content::Empty, config), file("c.ferry-new", Content::Unchanged, false)],
                vec![old_file("c")],
                vec![step(Op::Place, "c")],
            )
        };
        run(&m(true)).unwrap_or_else(|e| panic!("{e}"));
        refused(&m(false), "c.ferry-new: listed in entries, but it has no step");
    }

    #[test]
    fn entries_under_a_created_directory_are_created() {
        let m = manifest(
            vec![dir("n"), file("n/x", Content::Unchanged, false)],
            vec![old_file("n/x")],
            vec![step(Op::Mkdir, "n"), step(Op::DirMeta, "n")],
        );
        refused(&m, "n/x: NEW entry under the created directory n is never created");
    }

    /// One script per rule of bundle-format.md §6 that breaks that rule alone; each is refused
    /// with an error naming it.
    #[test]
    fn each_rule_is_refused_by_name() {
        let empty = |s: &str| file(s, Content::Empty, false);
        let symlink =
            |s: &str, t: &str| Entry { path: p(s), meta: meta(0o777), kind: Kind::Symlink { target: t.into() } };
        let cases: Vec<(u8, Manifest)> = vec![
            (1, manifest(vec![empty("a")], vec![old_file("b")], vec![step(Op::Delete, "b"), step(Op::Place, "a")])),
            (2, manifest(vec![empty("a")], vec![], vec![step(Op::Place, "a"), step(Op::Place, "a")])),
            (
                3,
                manifest(
                    vec![dir("d"), empty("d/f")],
                    vec![],
                    vec![step(Op::Place, "d/f"), step(Op::Mkdir, "d"), step(Op::DirMeta, "d")],
                ),
            ),
            (
                // `s -> a/t` with `a -> x`: placed after `a` but before `x/t`, which a lexical
                // reading ("a/t", not created) would not see.
                4,
                manifest(
                    vec![symlink("a", "x"), symlink("s", "a/t"), dir("x"), empty("x/t")],
                    vec![],
                    vec![
                        step(Op::Mkdir, "x"),
                        step(Op::Place, "a"),
                        step(Op::Place, "s"),
                        step(Op::Place, "x/t"),
                        step(Op::DirMeta, "x"),
                    ],
                ),
            ),
            (5, manifest(vec![empty("a"), link("b", "a")], vec![], vec![step(Op::Place, "b"), step(Op::Place, "a")])),
            (
                6,
                manifest(
                    vec![],
                    vec![old_dir("d"), old_file("d/f")],
                    vec![step(Op::Delete, "d"), step(Op::Delete, "d/f")],
                ),
            ),
            (7, manifest(vec![dir("d")], vec![old_dir("d")], vec![step(Op::Place, "d")])),
            (8, manifest(vec![empty("a"), empty("a/b")], vec![], vec![step(Op::Place, "a"), step(Op::Place, "a/b")])),
            (9, manifest(vec![empty("a")], vec![], vec![])),
            (10, manifest(vec![file("a", Content::Unchanged, false)], vec![], vec![])),
        ];
        for (rule, m) in cases {
            refused(&m, &format!("[§6 rule {rule}]"));
        }
    }

    fn symlink(s: &str, t: &str) -> Entry {
        Entry { path: p(s), meta: meta(0o777), kind: Kind::Symlink { target: t.into() } }
    }
    fn old_link(s: &str, t: &str) -> OldEntry {
        OldEntry { path: p(s), meta: meta(0o777), kind: OldKind::Symlink { target: t.into() } }
    }

    /// Rule 4 resolves through listed symlinked directories, absolute targets from the root,
    /// `..` after a symlink.
    #[test]
    fn rule4_resolves_like_the_kernel() {
        let m = |order: &[(Op, &str)]| {
            manifest(
                vec![
                    dir("etc"),
                    symlink("etc/abs", "/lib/d/f"),
                    symlink("etc/up", "../lib/d/../d/f"),
                    symlink("lib", "usr/lib"),
                    dir("usr"),
                    dir("usr/lib"),
                    dir("usr/lib/d"),
                    file("usr/lib/d/f", Content::Empty, false),
                ],
                vec![old_dir("lib"), old_file("lib/x")],
                order.iter().map(|&(op, s)| step(op, s)).collect(),
            )
        };
        let good = [
            (Op::Mkdir, "usr"),
            (Op::Mkdir, "usr/lib"),
            (Op::Mkdir, "usr/lib/d"),
            (Op::Place, "usr/lib/d/f"),
            (Op::Place, "lib"),
            (Op::Place, "etc/abs"),
            (Op::Place, "etc/up"),
            (Op::DirMeta, "usr/lib/d"),
            (Op::DirMeta, "usr/lib"),
            (Op::DirMeta, "usr"),
        ];
        run(&m(&good)).unwrap_or_else(|e| panic!("{e}"));
        let mut early = good;
        early.swap(3, 5); // etc/abs before usr/lib/d/f
        refused(
            &m(&early),
            "symlink placed before usr/lib/d/f (step 5), which its target resolves through [§6 rule 4]",
        );
        let mut early = good;
        early[4..7].rotate_left(1); // etc/abs before lib
        refused(&m(&early), "symlink placed before lib (step 6)");
    }

    /// Links that loop or dangle in NEW are not ordered; a resolution reaching an unlisted path
    /// (unchanged, unknown to the manifest) is not checked.
    #[test]
    fn rule4_loops_dangling_and_unlisted() {
        let m = manifest(
            vec![symlink("a", "b"), symlink("b", "a"), dir("d"), symlink("d/dang", "x"), symlink("u", "unlisted/x")],
            vec![],
            vec![
                step(Op::Place, "a"),
                step(Op::Place, "b"),
                step(Op::Place, "d/dang"),
                step(Op::Mkdir, "d"),
                step(Op::Place, "u"),
                step(Op::DirMeta, "d"),
            ],
        );
        // d/dang before its parent breaks rule 3 only.
        refused(&m, "[§6 rule 3]");
        let mut m = m;
        m.script.swap(2, 3);
        run(&m).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Deleting a symlink cycle is fine; a deleted link goes before the deleted paths it
    /// resolves through (kernel-style, in OLD).
    #[test]
    fn rule6_resolves_like_the_kernel() {
        let m = |order: &[&str]| {
            manifest(
                vec![],
                vec![
                    old_link("a", "b"),
                    old_link("b", "a"),
                    old_link("l", "s/f"),
                    old_link("s", "t"),
                    old_dir("t"),
                    old_file("t/f"),
                ],
                order.iter().map(|s| step(Op::Delete, s)).collect(),
            )
        };
        run(&m(&["a", "b", "l", "s", "t/f", "t"])).unwrap_or_else(|e| panic!("{e}"));
        run(&m(&["b", "a", "l", "s", "t/f", "t"])).unwrap_or_else(|e| panic!("{e}"));
        refused(
            &m(&["a", "b", "t/f", "l", "s", "t"]),
            "symlink deleted after t/f (step 2), which it resolves through [§6 rule 6]",
        );
    }

    /// A million-entry-sized manifest of symlinks, each through a chain of links and deep
    /// directories, validates in linear time.
    #[test]
    fn many_symlinks_validate_quickly() {
        let n = 100_000;
        let mut entries = vec![dir("d")];
        let mut script = vec![step(Op::Mkdir, "d")];
        for i in 0..n {
            // Each link goes through the previous one (chains of 40 loop, which is fine too).
            let prev = if i == 0 { "d".to_string() } else { format!("l{:06}", i - 1) };
            entries.push(symlink(&format!("l{i:06}"), &format!("{prev}/../{prev}/./")));
            script.push(step(Op::Place, &format!("l{i:06}")));
        }
        script.push(step(Op::DirMeta, "d"));
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let m = manifest(entries, vec![], script);
        let t = std::time::Instant::now();
        run(&m).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{n} links checked and validated in {:?}", t.elapsed());
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "{:?}", t.elapsed());
    }
}
