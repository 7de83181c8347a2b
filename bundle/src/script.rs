//! Validation of the ordered apply script (bundle-format.md, "The apply script").
//!
//! The builder orders the steps; the applier trusts nothing and checks here, before anything is
//! written, that every step's preconditions are met by the steps before it. Each rule cites what
//! it prevents at commit time.

use crate::{BundlePath, Content, Entry, Error, Kind, Manifest, OldEntry, OldKind, Op};
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

/// Check the script of a structurally valid manifest ([`Manifest::check`] passed).
pub fn validate(m: &Manifest) -> Result<(), Error> {
    let new: BTreeMap<&BundlePath, &Entry> = m.entries.iter().map(|e| (&e.path, e)).collect();
    let old: BTreeMap<&BundlePath, &OldEntry> = m.old.iter().map(|e| (&e.path, e)).collect();

    // Structural: every NEW entry's parent is a NEW directory (a path can't live under a file or
    // a symlink, so no step can ever write through a symlink the bundle creates).
    for e in &m.entries {
        if let Some(p) = e.path.parent() {
            if !matches!(new.get(&p).map(|x| &x.kind), Some(Kind::Dir)) {
                return Err(Error::Manifest(format!("{}: parent {} is not a directory of NEW", e.path, p)));
            }
        }
    }

    // Where each path is created (Mkdir/Place) and deleted.
    let mut created: HashMap<&BundlePath, usize> = HashMap::new();
    let mut deleted: HashMap<&BundlePath, usize> = HashMap::new();
    let mut seen: BTreeSet<(&BundlePath, u8)> = BTreeSet::new();
    for (i, s) in m.script.iter().enumerate() {
        let ph = phase(s.op);
        if !seen.insert((&s.path, if ph == 2 { 2 } else { 0 })) {
            return Err(Error::Script { step: i, path: s.path.clone(), why: "path has more than one step".into() });
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
    // Paths removed implicitly: OLD descendants of an OLD directory that a Place exchanges away.
    let exchanged: Vec<&BundlePath> = m
        .script
        .iter()
        .filter(|s| s.op == Op::Place && matches!(old.get(&s.path).map(|o| &o.kind), Some(OldKind::Dir)))
        .map(|s| &s.path)
        .collect();
    let under_exchanged = |p: &BundlePath| exchanged.iter().any(|x| p.is_under(x));

    let mut last_phase = 0u8;
    for (i, s) in m.script.iter().enumerate() {
        let bad = |why: String| Err(Error::Script { step: i, path: s.path.clone(), why });
        let ph = phase(s.op);
        if ph < last_phase {
            return bad("steps out of phase order (creations, then deletions, then directory metadata)".into());
        }
        last_phase = ph;
        let n = new.get(&s.path).copied();
        let o = old.get(&s.path).copied();
        // Entries are sparse, but every path a step creates or changes is listed: an unlisted
        // path is by definition identical in OLD and NEW.
        if s.op != Op::Delete && n.is_none() {
            return bad(format!("{:?} of a path that is not in NEW (not listed in entries)", s.op));
        }
        // A path created by this step needs its parent to exist as a directory already: either
        // untouched (the applier checks it is a real directory) or created by an earlier step.
        let parent_ready = |i: usize| -> Result<(), Error> {
            if let Some(p) = s.path.parent() {
                if let Some(&j) = created.get(&p) {
                    if j > i {
                        return Err(Error::Script {
                            step: i,
                            path: s.path.clone(),
                            why: format!("parent {p} is created later, at step {j}"),
                        });
                    }
                }
            }
            Ok(())
        };
        match s.op {
            Op::Mkdir => {
                if !matches!(n.map(|e| &e.kind), Some(Kind::Dir)) || o.is_some() {
                    return bad("mkdir of a path that is not a new directory".into());
                }
                parent_ready(i)?;
            }
            Op::Place => {
                let Some(n) = n else { return bad("place of a path that is not in NEW".into()) };
                match (&n.kind, o.map(|o| &o.kind)) {
                    (Kind::Dir, None | Some(OldKind::Dir)) => {
                        return bad("place of a directory that is not a type change (use mkdir)".into())
                    }
                    (Kind::File { content: Content::Unchanged, .. }, _) => {
                        return bad("place of a file with unchanged content".into())
                    }
                    _ => {}
                }
                parent_ready(i)?;
                if let Kind::Symlink { target } = &n.kind {
                    // A symlink is placed only after its target (and the target's directories)
                    // exist in their new form: no symlink dangles mid-commit unless in OLD or NEW.
                    if let Some(t) = s.path.resolve_link(target) {
                        for a in t.ancestors().iter().chain(std::iter::once(&t)) {
                            if let Some(&j) = created.get(a) {
                                if j > i {
                                    return bad(format!("symlink placed before its target {a} (step {j})"));
                                }
                            }
                        }
                    }
                }
                if let Kind::Hardlink { primary } = &n.kind {
                    match created.get(primary) {
                        Some(&j) if j < i => {}
                        _ => return bad(format!("hardlink placed before its source {primary}")),
                    }
                }
            }
            Op::SetMeta => match (n.map(|e| &e.kind), o.map(|o| &o.kind)) {
                (Some(Kind::File { content: Content::Unchanged, .. }), Some(OldKind::File { .. }))
                | (Some(Kind::Symlink { .. }), Some(OldKind::Symlink { .. }))
                | (Some(Kind::Fifo), Some(OldKind::Fifo))
                | (Some(Kind::CharDev { .. }), Some(OldKind::CharDev { .. }))
                | (Some(Kind::BlockDev { .. }), Some(OldKind::BlockDev { .. })) => {}
                _ => {
                    return bad("setmeta needs the same non-directory type in OLD and NEW with unchanged content".into())
                }
            },
            Op::Delete => {
                if n.is_some() || o.is_none() {
                    return bad("delete of a path that is in NEW or not in OLD".into());
                }
                if under_exchanged(&s.path) {
                    return bad("delete of a path inside a directory that is replaced".into());
                }
                // Children before parents: an OLD descendant still present would be lost.
                for c in descendants(&m.old, &s.path) {
                    match deleted.get(&c.path) {
                        Some(&j) if j < i => {}
                        _ => return bad(format!("directory deleted before its child {}", c.path)),
                    }
                }
            }
            Op::DirMeta => {
                if !matches!(n.map(|e| &e.kind), Some(Kind::Dir)) {
                    return bad("dirmeta of a path that is not a NEW directory".into());
                }
            }
        }
    }

    // Symlinks before the files they point to: a deleted OLD symlink goes before its deleted target.
    for (p, &i) in &deleted {
        if let Some(OldEntry { kind: OldKind::Symlink { target }, .. }) = old.get(p) {
            if let Some(t) = p.resolve_link(target) {
                for a in t.ancestors().iter().chain(std::iter::once(&t)) {
                    if let Some(&j) = deleted.get(a) {
                        if j < i {
                            return Err(Error::Script {
                                step: i,
                                path: (*p).clone(),
                                why: format!("symlink deleted after its target {a}"),
                            });
                        }
                    }
                }
            }
        }
    }

    // Completeness: everything NEW needs is created, every OLD path not in NEW is removed.
    // Only listed entries can be checked; an unlisted NEW path is identical in OLD (§4.2).
    for e in &m.entries {
        // Unchanged entries are not listed in OLD, so only file content tells what must be staged.
        let needs = matches!(&e.kind, Kind::File { content, .. } if !matches!(content, Content::Unchanged));
        let o = old.get(&e.path);
        let type_change = o.is_some_and(|o| matches!((&e.kind, &o.kind), (Kind::Dir, k) if !matches!(k, OldKind::Dir)));
        if (needs || type_change) && !created.contains_key(&e.path) {
            return Err(Error::Manifest(format!("{}: NEW entry is never placed", e.path)));
        }
        if let Kind::Hardlink { primary } = &e.kind {
            if created.contains_key(primary) != created.contains_key(&e.path) {
                return Err(Error::Manifest(format!("{}: hardlink group placed only in part", e.path)));
            }
        }
        // A directory the script creates is new (or replaces a non-directory): nothing under it
        // exists in OLD, so every NEW entry under it is created too.
        if let Some(p) = e.path.parent() {
            if created.contains_key(&p) && !created.contains_key(&e.path) {
                return Err(Error::Manifest(format!(
                    "{}: NEW entry under the created directory {p} is never created",
                    e.path
                )));
            }
        }
    }
    for o in &m.old {
        if !new.contains_key(&o.path) && !deleted.contains_key(&o.path) && !under_exchanged(&o.path) {
            return Err(Error::Manifest(format!(
                "{}: OLD entry not in NEW (not listed in entries) is never deleted",
                o.path
            )));
        }
        if let Some(n) = new.get(&o.path) {
            if n.kind.name() != o.kind.name()
                && !(matches!(n.kind, Kind::Hardlink { .. }) && o.kind.name() == "file")
                && !created.contains_key(&o.path)
            {
                return Err(Error::Manifest(format!("{}: type changes but the path is never placed", o.path)));
            }
        }
    }
    // Sparse entries (§4.2): the manifest lists exactly the entries the bundle needs.
    for (e, need) in m.entries.iter().zip(m.required_entries()) {
        if !need {
            return Err(Error::Manifest(format!(
                "{}: listed in entries, but it has no step, no OLD entry and is not needed by a listed \
                 entry (unchanged entries are not listed)",
                e.path
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hash, Limits, Meta, Step};

    fn p(s: &str) -> BundlePath {
        BundlePath::new(s.as_bytes().to_vec()).unwrap_or_else(|e| panic!("{e}"))
    }
    fn meta(mode: u32) -> Meta {
        Meta { mode, uid: 0, gid: 0, mtime_ns: 0 }
    }
    fn dir(s: &str) -> Entry {
        Entry { path: p(s), meta: meta(0o755), kind: Kind::Dir }
    }
    fn file(s: &str, content: Content, config: bool) -> Entry {
        let size = if content == Content::Empty { 0 } else { 3 };
        Entry { path: p(s), meta: meta(0o644), kind: Kind::File { size, hash: Hash([1; 32]), content, config } }
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
            signers: vec![Hash([0; 32])],
            entries,
            old,
            frames: vec![],
            script,
            hooks: vec![],
            rotation: None,
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
}
