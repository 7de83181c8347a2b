//! Order the apply script.
//!
//! The applier executes steps in order and validates, before touching anything, that each step's
//! preconditions hold ([`bundle::script::validate`]). The order also decides what a process on
//! the target can observe mid-commit: parents exist before children, a symlink appears only
//! after its target, a hardlink after its source, and shared libraries (and their SONAME
//! symlinks) before the programs that load them. Ties are broken by path order so the script is
//! deterministic.

use crate::error::Result;
use bundle::{BundlePath, Entry, Kind, Op, Step};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// What the dynamic loader needs from an ELF file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfInfo {
    pub soname: Option<Vec<u8>>,
    pub needed: Vec<Vec<u8>>,
}

/// Why one step must come before another; cycles are broken by dropping the weakest kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EdgeKind {
    Elf,
    Symlink,
    Structural,
}

/// Kahn's algorithm over nodes `0..n` (smallest index first); when stuck, drop the weakest
/// kind of edge inside the strongly connected components of what remains and go on.
fn toposort(
    n: usize,
    edges: &[(usize, usize, EdgeKind)],
    name: &dyn Fn(usize) -> String,
    warnings: &mut Vec<String>,
) -> Option<Vec<usize>> {
    let mut alive: Vec<bool> = vec![true; edges.len()];
    let mut indeg = vec![0usize; n];
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, &(a, b, _)) in edges.iter().enumerate() {
        out[a].push(i);
        indeg[b] += 1;
    }
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let mut heap: BinaryHeap<Reverse<usize>> = (0..n).filter(|&v| indeg[v] == 0).map(Reverse).collect();
    loop {
        while let Some(Reverse(v)) = heap.pop() {
            done[v] = true;
            order.push(v);
            for &ei in &out[v] {
                if alive[ei] {
                    let b = edges[ei].1;
                    indeg[b] -= 1;
                    if indeg[b] == 0 {
                        heap.push(Reverse(b));
                    }
                }
            }
        }
        if order.len() == n {
            return Some(order);
        }
        // Stuck: find SCCs among the remaining nodes and drop the weakest edges inside them.
        let comp = scc(n, edges, &alive, &done);
        let inside: Vec<usize> = (0..edges.len())
            .filter(|&i| alive[i] && !done[edges[i].0] && comp[edges[i].0] == comp[edges[i].1])
            .collect();
        let weakest = inside.iter().map(|&i| edges[i].2).min()?;
        if weakest == EdgeKind::Structural {
            return None;
        }
        for &i in &inside {
            let (a, b, k) = edges[i];
            if k == weakest {
                alive[i] = false;
                indeg[b] -= 1;
                warnings.push(format!("ordering cycle: dropped {k:?} constraint {} before {}", name(a), name(b)));
                if indeg[b] == 0 {
                    heap.push(Reverse(b));
                }
            }
        }
    }
}

/// Strongly connected component id of each node not yet done (Kosaraju, iterative).
fn scc(n: usize, edges: &[(usize, usize, EdgeKind)], alive: &[bool], done: &[bool]) -> Vec<usize> {
    let mut fwd: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut rev: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, &(a, b, _)) in edges.iter().enumerate() {
        if alive[i] && !done[a] && !done[b] {
            fwd[a].push(b);
            rev[b].push(a);
        }
    }
    let mut seen = vec![false; n];
    let mut finish = Vec::new();
    for s in (0..n).filter(|&v| !done[v]) {
        if seen[s] {
            continue;
        }
        seen[s] = true;
        let mut stack = vec![(s, 0usize)];
        while let Some(&mut (v, ref mut i)) = stack.last_mut() {
            if let Some(&w) = fwd[v].get(*i) {
                *i += 1;
                if !seen[w] {
                    seen[w] = true;
                    stack.push((w, 0));
                }
            } else {
                finish.push(v);
                stack.pop();
            }
        }
    }
    let mut comp = vec![usize::MAX; n];
    for (c, &s) in finish.iter().rev().enumerate() {
        if comp[s] != usize::MAX {
            continue;
        }
        comp[s] = c;
        let mut stack = vec![s];
        while let Some(v) = stack.pop() {
            for &w in &rev[v] {
                if comp[w] == usize::MAX {
                    comp[w] = c;
                    stack.push(w);
                }
            }
        }
    }
    comp
}

/// `t` and its ancestors.
fn with_ancestors(t: &BundlePath) -> Vec<BundlePath> {
    let mut v = t.ancestors();
    v.push(t.clone());
    v
}

/// Order `steps` (as produced by [`crate::diff::diff`], any order) into the apply script.
/// `entries` are the NEW entries, `old_links` the OLD symlinks (path → target), `elf` the ELF
/// facts of NEW files with a step. Returns the script and warnings about broken cycles.
pub fn order(
    steps: &[Step],
    entries: &[Entry],
    old_links: &BTreeMap<BundlePath, Vec<u8>>,
    elf: &BTreeMap<BundlePath, ElfInfo>,
) -> Result<(Vec<Step>, Vec<String>)> {
    let mut warnings = Vec::new();

    // Phase 0: Mkdir / Place / SetMeta.
    let mut p0: Vec<&Step> = steps.iter().filter(|s| matches!(s.op, Op::Mkdir | Op::Place | Op::SetMeta)).collect();
    p0.sort_by(|a, b| a.path.cmp(&b.path));
    let e0 = creation_edges(&p0, entries, elf);
    let o0 = toposort(p0.len(), &e0, &|i| p0[i].path.display(), &mut warnings)
        .ok_or_else(|| internal("cycle among directory/hardlink ordering constraints"))?;

    // Phase 1: deletes, children before parents, a symlink before its target.
    let mut p1: Vec<&Step> = steps.iter().filter(|s| s.op == Op::Delete).collect();
    p1.sort_by(|a, b| b.path.cmp(&a.path));
    let e1 = deletion_edges(&p1, old_links);
    let o1 = toposort(p1.len(), &e1, &|i| p1[i].path.display(), &mut warnings)
        .ok_or_else(|| internal("cycle among deletions"))?;

    // Phase 2: directory metadata, deepest first.
    let mut p2: Vec<&Step> = steps.iter().filter(|s| s.op == Op::DirMeta).collect();
    p2.sort_by(|a, b| b.path.depth().cmp(&a.path.depth()).then_with(|| a.path.cmp(&b.path)));

    let script = o0
        .into_iter()
        .map(|i| p0[i].clone())
        .chain(o1.into_iter().map(|i| p1[i].clone()))
        .chain(p2.into_iter().cloned())
        .collect();
    Ok((script, warnings))
}

/// Edges (before, after) among the creation-phase steps `p0` (sorted by path): a directory
/// before what is under it, a symlink's target (and its ancestors) before the symlink, a
/// hardlink's primary before the link, and the libraries an ELF file needs before the file.
fn creation_edges(
    p0: &[&Step],
    entries: &[Entry],
    elf: &BTreeMap<BundlePath, ElfInfo>,
) -> Vec<(usize, usize, EdgeKind)> {
    let new: BTreeMap<&BundlePath, &Entry> = entries.iter().map(|e| (&e.path, e)).collect();
    let idx: BTreeMap<&BundlePath, usize> = p0.iter().enumerate().map(|(i, s)| (&s.path, i)).collect();
    let mut edges: BTreeSet<(usize, usize, EdgeKind)> = BTreeSet::new();
    let mut add = |a: usize, b: usize, k: EdgeKind| {
        if a != b {
            edges.insert((a, b, k));
        }
    };
    let mut by_name: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    let mut by_soname: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, s) in p0.iter().enumerate() {
        by_name.entry(s.path.file_name()).or_default().push(i);
        if let Some(so) = elf.get(&s.path).and_then(|e| e.soname.as_deref()) {
            by_soname.entry(so).or_default().push(i);
        }
    }
    for (i, s) in p0.iter().enumerate() {
        for a in s.path.ancestors() {
            if let Some(&j) = idx.get(&a) {
                add(j, i, EdgeKind::Structural);
            }
        }
        if s.op != Op::Place {
            continue;
        }
        match new.get(&s.path).map(|e| &e.kind) {
            Some(Kind::Symlink { target }) => {
                if let Some(t) = s.path.resolve_link(target) {
                    for a in with_ancestors(&t) {
                        if let Some(&j) = idx.get(&a) {
                            add(j, i, EdgeKind::Symlink);
                        }
                    }
                }
            }
            Some(Kind::Hardlink { primary }) => {
                if let Some(&j) = idx.get(primary) {
                    add(j, i, EdgeKind::Structural);
                }
            }
            _ => {}
        }
        if let Some(info) = elf.get(&s.path) {
            for need in &info.needed {
                let hits = by_name.get(need.as_slice()).into_iter().chain(by_soname.get(need.as_slice()));
                for &j in hits.flatten() {
                    add(j, i, EdgeKind::Elf);
                }
            }
        }
    }
    edges.into_iter().collect()
}

/// Edges (before, after) among the Delete steps `p1` (sorted by path, descending): what is under
/// a directory before the directory, an OLD symlink before its target (and its ancestors).
fn deletion_edges(p1: &[&Step], old_links: &BTreeMap<BundlePath, Vec<u8>>) -> Vec<(usize, usize, EdgeKind)> {
    let idx1: BTreeMap<&BundlePath, usize> = p1.iter().enumerate().map(|(i, s)| (&s.path, i)).collect();
    let mut e1: BTreeSet<(usize, usize, EdgeKind)> = BTreeSet::new();
    for (i, s) in p1.iter().enumerate() {
        for a in s.path.ancestors() {
            if let Some(&j) = idx1.get(&a) {
                e1.insert((i, j, EdgeKind::Structural));
            }
        }
        if let Some(t) = old_links.get(&s.path).and_then(|t| s.path.resolve_link(t)) {
            for a in with_ancestors(&t) {
                if let Some(&j) = idx1.get(&a) {
                    if j != i {
                        e1.insert((i, j, EdgeKind::Symlink));
                    }
                }
            }
        }
    }
    e1.into_iter().collect()
}

fn internal(what: &str) -> crate::Error {
    crate::Error::Invalid(bundle::Error::Manifest(format!("builder bug: {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::tests::{bp, dir, file, link, tree};
    use crate::diff::{diff, old_entries};
    use bundle::script::validate;
    use bundle::Manifest;

    fn run(old: &crate::scan::Tree, new: &crate::scan::Tree, elf: &BTreeMap<BundlePath, ElfInfo>) -> Vec<String> {
        let d = diff(old, new, &[]);
        let old_links = old
            .entries
            .iter()
            .filter_map(|e| match &e.ty {
                crate::scan::Type::Symlink(t) => Some((e.path.clone(), t.clone())),
                _ => None,
            })
            .collect();
        let (script, warnings) = order(&d.steps, &d.entries, &old_links, elf).unwrap_or_else(|e| panic!("{e}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        let mut m = Manifest {
            format: bundle::FORMAT_VERSION,
            version: 1,
            base: None,
            channel: "stable".into(),
            created: 0,
            expires: None,
            signers: vec![],
            entries: d.entries.clone(),
            old: old_entries(old).into_iter().filter(|o| d.touched.contains(&o.path)).collect(),
            frames: vec![],
            script: script.clone(),
            hooks: vec![],
            rotation: None,
            xattr_namespaces: vec![],
            xattr_sets: vec![],
        };
        m.drop_unneeded_entries();
        validate(&m).unwrap_or_else(|e| panic!("{e}: {script:?}"));
        script.iter().map(|s| format!("{:?} {}", s.op, s.path)).collect()
    }

    #[test]
    fn symlink_chain_after_targets() {
        let old = tree(vec![link("a", "b"), link("b", "c"), file("c", b"1")]);
        let new = tree(vec![link("a", "b2"), link("b", "c2"), file("c", b"2"), link("b2", "b"), link("c2", "c")]);
        let s = run(&old, &new, &BTreeMap::new());
        // c first, then c2 (-> c), then b (-> c2), b2 (-> b), a (-> b2).
        assert_eq!(s, ["Place c", "Place c2", "Place b", "Place b2", "Place a"]);
    }

    #[test]
    fn library_before_executable() {
        let new = tree(vec![
            dir("bin"),
            file("bin/app", b"app"),
            dir("lib"),
            link("lib/libfoo.so.1", "libfoo.so.1.2.3"),
            file("lib/libfoo.so.1.2.3", b"foo"),
        ]);
        let mut elf = BTreeMap::new();
        elf.insert(bp("bin/app"), ElfInfo { soname: None, needed: vec![b"libfoo.so.1".to_vec()] });
        elf.insert(bp("lib/libfoo.so.1.2.3"), ElfInfo { soname: Some(b"libfoo.so.1".to_vec()), needed: vec![] });
        let s = run(&tree(vec![]), &new, &elf);
        assert_eq!(
            s,
            [
                "Mkdir bin",
                "Mkdir lib",
                "Place lib/libfoo.so.1.2.3",
                "Place lib/libfoo.so.1",
                "Place bin/app",
                "DirMeta bin",
                "DirMeta lib"
            ]
        );
    }

    #[test]
    fn elf_cycle_is_broken_with_warning() {
        let new = tree(vec![file("a", b"a"), file("b", b"b")]);
        let mut elf = BTreeMap::new();
        elf.insert(bp("a"), ElfInfo { soname: Some(b"a".to_vec()), needed: vec![b"b".to_vec()] });
        elf.insert(bp("b"), ElfInfo { soname: Some(b"b".to_vec()), needed: vec![b"a".to_vec()] });
        let d = diff(&tree(vec![]), &new, &[]);
        let (script, warnings) = order(&d.steps, &d.entries, &BTreeMap::new(), &elf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(script.len(), 2);
        assert_eq!(warnings.len(), 2);
    }

    #[test]
    fn type_changes_and_deletes() {
        let old = tree(vec![
            dir("d"),
            file("d/x", b"x"),
            dir("d/sub"),
            file("d/sub/y", b"y"),
            file("f", b"f"),
            dir("gone"),
            dir("gone/deep"),
            file("gone/deep/z", b"z"),
            link("gone/l", "deep/z"),
        ]);
        let new = tree(vec![file("d", b"now a file"), dir("f"), file("f/child", b"c")]);
        let s = run(&old, &new, &BTreeMap::new());
        assert_eq!(
            s,
            [
                "Place d",
                "Place f",
                "Place f/child",
                "Delete gone/l",
                "Delete gone/deep/z",
                "Delete gone/deep",
                "Delete gone",
                "DirMeta f"
            ]
        );
    }
}
