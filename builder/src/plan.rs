//! Order the apply script.
//!
//! The applier executes steps in order and validates, before touching anything, that each step's
//! preconditions hold ([`bundle::script::validate`]). The order also decides what a process on
//! the target can observe mid-commit: parents exist before children, a symlink appears only
//! after everything its target resolves through (resolved as the kernel will, through symlinked
//! directories: [`bundle::resolve`]), a symlink the bundle places that other links resolve
//! through only after what they reach beyond it, a hardlink after its source, and shared
//! libraries (and their SONAME symlinks) before the programs that load them. Ties are broken by
//! path order so the script is deterministic.

use crate::error::Result;
use crate::scan::{self, Type};
use bundle::resolve::{NodeId, Object, Outcome, Resolver, Tree, Visits};
use bundle::{BundlePath, OldEntry, Op, Step};
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
    /// A placed symlink after what a NEW symlink it does not place reaches beyond it (builder
    /// only: keeps links that exist throughout resolving when a directory becomes a symlink).
    Through,
    /// §6 rule 4: a placed symlink after what its target resolves through. With the structural
    /// edges these never form a cycle (a link that resolves does not resolve through itself).
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

/// What a resolution visited that the creation phase creates, as indices into it, in the order
/// first visited. A followed link that is itself placed stands for its whole resolution: its own
/// rule-4 edges put everything it resolves through before it.
#[derive(Clone, Debug, Default)]
struct Seq(Vec<u32>);

impl Seq {
    fn push(&mut self, m: u32) {
        if !self.0.contains(&m) {
            self.0.push(m);
        }
    }
}

impl Visits for Seq {
    fn visit(&mut self, _node: NodeId, mark: u32) {
        self.push(mark);
    }
    fn follow(&mut self, _link: NodeId, marked: bool, inner: &Self) {
        if !marked {
            for &m in &inner.0 {
                self.push(m);
            }
        }
    }
}

/// The symlink edges among the creation-phase steps `p0` (sorted by path), from the whole NEW
/// tree `new`, every symlink resolved kernel-style ([`bundle::resolve`]; absolute targets
/// from the target root):
/// - rule 4 ([`EdgeKind::Symlink`]): a placed symlink that resolves in NEW comes after every
///   path its resolution visits that `p0` creates, so it resolves from the instant it appears;
/// - [`EdgeKind::Through`]: for a NEW symlink that is *not* placed (it exists throughout) and
///   resolves, every placed symlink on its way comes after the created paths visited beyond it
///   (directory `lib` becoming `lib -> usr/lib` waits for `usr/lib/x` that `etc/l -> /lib/x`
///   needs).
///
/// A link that dangles or loops in NEW (a cycle `a -> b`, `b -> a`) gets no edge.
fn symlink_edges(p0: &[&Step], new: &scan::Tree) -> Vec<(usize, usize, EdgeKind)> {
    // Without a symlink in NEW there is no edge: no tree of every path to build.
    if !new.entries.iter().any(|e| matches!(e.ty, Type::Symlink(_))) {
        return Vec::new();
    }
    let placed: BTreeMap<&BundlePath, u32> = p0
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s.op, Op::Mkdir | Op::Place))
        .filter_map(|(i, s)| Some((&s.path, u32::try_from(i).ok()?)))
        .collect();
    let mut tree = Tree::new(true);
    let mut links = Vec::new();
    for e in &new.entries {
        let object = match &e.ty {
            Type::Dir => Object::Dir,
            Type::Symlink(target) => Object::Symlink(target),
            _ => Object::Other,
        };
        if let Some(n) = tree.insert(&e.path, object, true, placed.get(&e.path).copied()) {
            if matches!(object, Object::Symlink(_)) {
                links.push(n);
            }
        }
    }
    let is_placed_link = |m: u32| {
        p0.get(m as usize).is_some_and(|s| s.op == Op::Place)
            && tree.get(&p0[m as usize].path).is_some_and(|n| matches!(tree.object(n), Object::Symlink(_)))
    };
    let mut resolver: Resolver<Seq> = Resolver::new(&tree);
    let mut edges = Vec::new();
    for l in links {
        let (Outcome::Resolved { .. }, Seq(seen)) = resolver.resolve(l) else { continue };
        match tree.mark(l) {
            Some(me) => edges.extend(seen.iter().map(|&m| (m as usize, me as usize, EdgeKind::Symlink))),
            None => {
                for (k, &s) in seen.iter().enumerate() {
                    if is_placed_link(s) {
                        edges.extend(seen[k + 1..].iter().map(|&m| (m as usize, s as usize, EdgeKind::Through)));
                    }
                }
            }
        }
    }
    edges
}

/// Order `steps` (as produced by [`crate::diff::diff`], any order) into the apply script.
/// `new` is the NEW tree, `old` the whole OLD tree (sorted), `elf` the ELF facts of NEW
/// files with a step. Returns the script and warnings about broken cycles.
pub fn order(
    steps: &[Step],
    new: &scan::Tree,
    old: &[OldEntry],
    elf: &BTreeMap<BundlePath, ElfInfo>,
) -> Result<(Vec<Step>, Vec<String>)> {
    let mut warnings = Vec::new();

    // Phase 0: Mkdir / Place / SetMeta.
    let mut p0: Vec<&Step> = steps.iter().filter(|s| matches!(s.op, Op::Mkdir | Op::Place | Op::SetMeta)).collect();
    p0.sort_by(|a, b| a.path.cmp(&b.path));
    let e0 = creation_edges(&p0, new, elf);
    let o0 = toposort(p0.len(), &e0, &|i| p0[i].path.display(), &mut warnings)
        .ok_or_else(|| internal("cycle among directory/hardlink ordering constraints"))?;

    // Phase 1: deletes, children before parents, a symlink before its target.
    let mut p1: Vec<&Step> = steps.iter().filter(|s| s.op == Op::Delete).collect();
    p1.sort_by(|a, b| b.path.cmp(&a.path));
    let e1 = deletion_edges(&p1, old);
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
/// before what is under it, what a symlink resolves through before the symlink
/// ([`symlink_edges`]), a hardlink's primary before the link, and the libraries an ELF file
/// needs before the file.
fn creation_edges(
    p0: &[&Step],
    new: &scan::Tree,
    elf: &BTreeMap<BundlePath, ElfInfo>,
) -> Vec<(usize, usize, EdgeKind)> {
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
        if let Some(primary) = new.get(&s.path).filter(|e| e.is_secondary_link()).and_then(|e| e.primary.as_deref()) {
            if let Some(&j) = idx.get(primary) {
                add(j, i, EdgeKind::Structural);
            }
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
    for (a, b, k) in symlink_edges(p0, new) {
        add(a, b, k);
    }
    edges.into_iter().collect()
}

/// Edges (before, after) among the Delete steps `p1` (sorted by path, descending): what is under
/// a directory before the directory, a deleted OLD symlink before the deleted paths it resolves
/// through in `old` (kernel-style, as for rule 4; one that dangles or loops in OLD has none).
fn deletion_edges(p1: &[&Step], old: &[OldEntry]) -> Vec<(usize, usize, EdgeKind)> {
    let idx1: BTreeMap<&BundlePath, usize> = p1.iter().enumerate().map(|(i, s)| (&s.path, i)).collect();
    let mut e1: BTreeSet<(usize, usize, EdgeKind)> = BTreeSet::new();
    for (i, s) in p1.iter().enumerate() {
        for a in s.path.ancestors() {
            if let Some(&j) = idx1.get(&a) {
                e1.insert((i, j, EdgeKind::Structural));
            }
        }
    }
    let mut tree = Tree::new(true);
    for o in old {
        let mark = idx1.get(&o.path).and_then(|&j| u32::try_from(j).ok());
        tree.insert(&o.path, Object::of_old(&o.kind), true, mark);
    }
    let mut resolver: Resolver<Seq> = Resolver::new(&tree);
    for (i, s) in p1.iter().enumerate() {
        let Some(node) = tree.get(&s.path).filter(|&n| matches!(tree.object(n), Object::Symlink(_))) else { continue };
        if let (Outcome::Resolved { .. }, Seq(seen)) = resolver.resolve(node) {
            e1.extend(seen.iter().map(|&j| (i, j as usize, EdgeKind::Symlink)).filter(|&(a, b, _)| a != b));
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
    use crate::diff::{diff, new_entries, old_entries};
    use bundle::script::validate;
    use bundle::Manifest;

    fn run(old: &crate::scan::Tree, new: &crate::scan::Tree, elf: &BTreeMap<BundlePath, ElfInfo>) -> Vec<String> {
        let (script, warnings) = plan(old, new, elf);
        assert!(warnings.is_empty(), "{warnings:?}");
        script.iter().map(|s| format!("{:?} {}", s.op, s.path)).collect()
    }

    /// Diff and order `old` → `new`, check the script as the applier will; the script and the
    /// warnings.
    fn plan(
        old: &crate::scan::Tree,
        new: &crate::scan::Tree,
        elf: &BTreeMap<BundlePath, ElfInfo>,
    ) -> (Vec<Step>, Vec<String>) {
        let d = diff(old, new, &[]);
        let (script, warnings) = order(&d.steps, new, &old_entries(old), elf).unwrap_or_else(|e| panic!("{e}"));
        let mut m = Manifest {
            format: bundle::FORMAT_VERSION,
            version: 1,
            base: None,
            channel: "stable".into(),
            created: 0,
            expires: None,
            entries: new_entries(new, &d.choices, &[], None),
            old: old_entries(old).into_iter().filter(|o| d.touched.contains(&o.path)).collect(),
            frames: vec![],
            script: script.clone(),
            hooks: vec![],
            rotation: None,
            xattr_namespaces: vec![],
            xattr_sets: vec![],
            tagged_digest: None,
            sealed: None,
        };
        m.drop_unneeded_entries();
        validate(&m).unwrap_or_else(|e| panic!("{e}: {script:?}"));
        // The builder makes entries only for the paths `required_paths` marks: after the
        // manifest's own rule, the same entries as from the whole tree.
        let keep = crate::diff::required_paths(new, &script, m.old.iter().map(|o| &o.path), &[]);
        let mut few = Manifest { entries: new_entries(new, &d.choices, &[], Some(&keep)), ..m.clone() };
        few.drop_unneeded_entries();
        assert_eq!(few.entries, m.entries, "{script:?}");
        (script, warnings)
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
        let (script, warnings) = order(&d.steps, &new, &[], &elf).unwrap_or_else(|e| panic!("{e}"));
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

    // ---------------------------------------------------------------------------------------
    // Symlinks resolved as the kernel resolves them, checked by simulating the script.

    /// An object of the simulated target.
    #[derive(Clone, Debug, PartialEq)]
    enum Obj {
        Dir,
        File(crate::scan::Type),
        Link(Vec<u8>),
    }

    /// A tree as path → object (the root, `""`, is implicit and a directory).
    type Sim = BTreeMap<Vec<u8>, Obj>;

    fn sim(t: &crate::scan::Tree) -> Sim {
        t.entries
            .iter()
            .map(|e| {
                let o = match &e.ty {
                    crate::scan::Type::Dir => Obj::Dir,
                    crate::scan::Type::Symlink(t) => Obj::Link(t.to_vec()),
                    other => Obj::File(other.clone()),
                };
                (e.path.as_bytes().to_vec(), o)
            })
            .collect()
    }

    fn is_dir(t: &Sim, p: &[Vec<u8>]) -> bool {
        p.is_empty() || t.get(&p.join(&b'/')) == Some(&Obj::Dir)
    }

    /// An independent, recursive kernel-style walk of `target` from directory `cur` (components):
    /// where it ends, or `None` (ENOENT, ENOTDIR, ELOOP). `budget` counts links left to follow.
    fn walk(t: &Sim, mut cur: Vec<Vec<u8>>, target: &[u8], budget: &mut u32) -> Option<Vec<Vec<u8>>> {
        if target.is_empty() {
            return None;
        }
        let rel = if target[0] == b'/' {
            cur.clear();
            &target[1..]
        } else {
            target
        };
        for c in rel.split(|&b| b == b'/') {
            if !is_dir(t, &cur) {
                return None;
            }
            match c {
                b"" | b"." => {}
                b".." => {
                    cur.pop();
                }
                name => {
                    cur.push(name.to_vec());
                    if let Obj::Link(to) = t.get(&cur.join(&b'/'))? {
                        *budget = budget.checked_sub(1)?;
                        cur.pop();
                        cur = walk(t, cur, to, budget)?;
                    }
                }
            }
        }
        Some(cur)
    }

    /// Whether the symlink at `p` in `t` resolves (following `p` itself counts against the 40).
    fn resolves(t: &Sim, p: &[u8]) -> bool {
        let Some(Obj::Link(to)) = t.get(p) else { return false };
        let mut dir: Vec<Vec<u8>> = p.split(|&b| b == b'/').map(|c| c.to_vec()).collect();
        dir.pop();
        let mut budget = bundle::resolve::MAX_LINKS - 1;
        walk(t, dir, to, &mut budget).is_some()
    }

    /// Run `script` on `old` step by step; after every step, every symlink present with its NEW
    /// target that resolves in NEW must resolve — if the script does not place it, only when it
    /// also resolves in OLD and `unplaced` is set. Returns the final tree.
    fn simulate(old: &Sim, new: &Sim, script: &[Step], unplaced: bool) -> Sim {
        let placed: BTreeSet<&[u8]> = script.iter().filter(|s| s.op == Op::Place).map(|s| s.path.as_bytes()).collect();
        let mut t = old.clone();
        for (k, s) in script.iter().enumerate() {
            let p = s.path.as_bytes().to_vec();
            let mut under = p.clone();
            under.push(b'/');
            match s.op {
                Op::Mkdir => {
                    t.insert(p, Obj::Dir);
                }
                Op::Place => {
                    t.retain(|q, _| !q.starts_with(&under));
                    let o = new.get(&p).cloned().unwrap_or_else(|| panic!("place of {} not in NEW", s.path));
                    t.insert(p, o);
                }
                Op::Delete => {
                    assert!(!t.keys().any(|q| q.starts_with(&under)), "{} deleted before its children", s.path);
                    t.remove(&p);
                }
                Op::SetMeta | Op::DirMeta => {}
            }
            for (q, o) in &t {
                let Obj::Link(_) = o else { continue };
                if new.get(q) != Some(o) || !resolves(new, q) {
                    continue;
                }
                let must = placed.contains(q.as_slice()) || (unplaced && resolves(old, q));
                if !must {
                    continue;
                }
                assert!(
                    resolves(&t, q),
                    "after step {k} ({:?} {}), {} dangles: {script:?}",
                    s.op,
                    s.path,
                    String::from_utf8_lossy(q)
                );
            }
        }
        t
    }

    /// Plan `old` → `new` and check the script step by step (the final tree is NEW); the script
    /// as text.
    fn plan_and_simulate(old: &crate::scan::Tree, new: &crate::scan::Tree, unplaced: bool) -> Vec<String> {
        let (script, warnings) = plan(old, new, &BTreeMap::new());
        assert!(warnings.is_empty(), "{warnings:?}");
        let done = simulate(&sim(old), &sim(new), &script, unplaced);
        assert_eq!(done, sim(new));
        script.iter().map(|s| format!("{:?} {}", s.op, s.path)).collect()
    }

    fn before(s: &[String], a: &str, b: &str) -> bool {
        let at = |x: &str| s.iter().position(|y| y == x).unwrap_or_else(|| panic!("{x} not in {s:?}"));
        at(a) < at(b)
    }

    /// The merged-/usr reproduction of issue 13: `lib -> usr/lib` exists; NEW adds a unit in
    /// `usr/lib/systemd/system` and links to it through `/lib` and `../../../lib`. A lexical
    /// reading ordered both links first (their targets "lib/..." are not created).
    #[test]
    fn merged_usr_links_after_what_they_reach() {
        let base = || {
            vec![
                link("lib", "usr/lib"),
                dir("usr"),
                dir("usr/lib"),
                dir("etc"),
                dir("etc/systemd"),
                dir("etc/systemd/system"),
            ]
        };
        let old = tree(base());
        let mut n = base();
        n.extend([
            dir("usr/lib/systemd"),
            dir("usr/lib/systemd/system"),
            file("usr/lib/systemd/system/ssh.service", b"[Unit]"),
            link("etc/systemd/system/sshd.service", "/lib/systemd/system/ssh.service"),
            link("etc/systemd/system/rel.service", "../../../lib/systemd/system/ssh.service"),
        ]);
        let s = plan_and_simulate(&old, &tree(n), true);
        for l in ["Place etc/systemd/system/sshd.service", "Place etc/systemd/system/rel.service"] {
            assert!(before(&s, "Place usr/lib/systemd/system/ssh.service", l), "{s:?}");
        }
    }

    /// Directory `lib` becomes `lib -> usr/lib` (and `bin` likewise): links that already point
    /// through `/lib` and are not placed keep resolving, so the swap waits for what they reach;
    /// new links through it come after it.
    #[test]
    fn directory_replaced_by_symlink() {
        let old = tree(vec![
            dir("bin"),
            file("bin/sh", b"sh"),
            dir("etc"),
            link("etc/kept", "/lib/x/f"),
            link("etc/shell", "../bin/sh"),
            dir("lib"),
            dir("lib/x"),
            file("lib/x/f", b"f"),
            dir("usr"),
        ]);
        let new = tree(vec![
            link("bin", "usr/bin"),
            dir("etc"),
            link("etc/kept", "/lib/x/f"),
            link("etc/new", "../lib/x/f"),
            link("etc/shell", "../bin/sh"),
            link("lib", "usr/lib"),
            dir("usr"),
            dir("usr/bin"),
            file("usr/bin/sh", b"sh"),
            dir("usr/lib"),
            dir("usr/lib/x"),
            file("usr/lib/x/f", b"f"),
        ]);
        let s = plan_and_simulate(&old, &new, true);
        assert!(before(&s, "Place usr/lib/x/f", "Place lib"), "{s:?}");
        assert!(before(&s, "Place usr/bin/sh", "Place bin"), "{s:?}");
        assert!(before(&s, "Place lib", "Place etc/new"), "{s:?}");
    }

    /// Links into directories the bundle creates or replaces (a file, and a symlink, turned
    /// into a directory).
    #[test]
    fn links_into_created_and_replaced_directories() {
        let old = tree(vec![file("d", b"file"), link("e", "d"), dir("x")]);
        let new = tree(vec![
            dir("d"),
            file("d/f", b"f"),
            dir("e"),
            dir("e/g"),
            file("e/g/h", b"h"),
            dir("n"),
            file("n/f", b"n"),
            dir("x"),
            link("x/1", "../d/f"),
            link("x/2", "/e/g/h"),
            link("x/3", "../n/f"),
            link("x/4", "/e/g"),
        ]);
        let s = plan_and_simulate(&old, &new, true);
        assert!(before(&s, "Place d/f", "Place x/1"), "{s:?}");
        assert!(before(&s, "Place e/g/h", "Place x/2"), "{s:?}");
        assert!(before(&s, "Mkdir e/g", "Place x/4"), "{s:?}");
    }

    /// `a/..` with `a -> x/y` is `x`, not the root: `l -> a/../f` needs `x/f`.
    #[test]
    fn dotdot_after_a_symlink() {
        let old = tree(vec![link("a", "x/y"), dir("x"), dir("x/y")]);
        let new = tree(vec![link("a", "x/y"), link("l", "a/../f"), dir("x"), file("x/f", b"f"), dir("x/y")]);
        let s = plan_and_simulate(&old, &new, true);
        assert!(before(&s, "Place x/f", "Place l"), "{s:?}");
        // A link chain through placed links: each after the next.
        let new = tree(vec![link("a", "b/c"), link("b", "x"), dir("x"), file("x/c", b"c")]);
        let s = plan_and_simulate(&tree(vec![]), &new, true);
        assert_eq!(s, ["Mkdir x", "Place b", "Place x/c", "Place a", "DirMeta x"]);
    }

    /// Links that do not resolve in NEW build without warnings and without constraints: a
    /// cycle, a self-loop, a chain of 41 links (ELOOP), a dangling link.
    #[test]
    fn cycles_loops_and_dangling_links_build() {
        let s = plan_and_simulate(&tree(vec![]), &tree(vec![link("a", "b"), link("b", "a")]), true);
        assert_eq!(s, ["Place a", "Place b"]);
        let s = plan_and_simulate(&tree(vec![link("a", "x")]), &tree(vec![link("a", "b"), link("b", "a")]), true);
        assert_eq!(s, ["Place a", "Place b"]);
        let mut chain: Vec<ScanEntry> = (0..41).map(|i| link(&format!("l{i:02}"), &format!("l{:02}", i + 1))).collect();
        chain.push(file("l41", b"end"));
        let s = plan_and_simulate(&tree(vec![]), &tree(chain), true);
        // l01..l40 resolve (40 links from l01) and are placed after what they reach; l00 loops.
        assert_eq!(s.first().map(String::as_str), Some("Place l00"), "{s:?}");
        assert!(before(&s, "Place l41", "Place l40") && before(&s, "Place l02", "Place l01"), "{s:?}");
        let s = plan_and_simulate(&tree(vec![]), &tree(vec![link("d", "nowhere/x"), link("s", "s")]), true);
        assert_eq!(s, ["Place d", "Place s"]);
    }

    use crate::scan::ScanEntry;
    /// One random entry: a path of up to three names of a small alphabet and what it is.
    fn arb_entry() -> impl proptest::strategy::Strategy<Value = ScanEntry> {
        use proptest::prelude::*;
        let name = prop::sample::select(vec!["a", "b", "lib", "usr"]);
        let comp = prop::sample::select(vec!["a", "b", "lib", "usr", "..", "."]);
        let target = (any::<bool>(), prop::collection::vec(comp, 1..5))
            .prop_map(|(abs, c)| format!("{}{}", if abs { "/" } else { "" }, c.join("/")));
        let what = prop_oneof![Just(None), Just(Some(String::new())), target.prop_map(Some)];
        (prop::collection::vec(name, 1..4), what, any::<bool>()).prop_map(|(names, what, v)| {
            let p = names.join("/");
            match what {
                None => dir(&p),
                Some(t) if t.is_empty() => file(&p, if v { b"1" } else { b"2" }),
                Some(t) => link(&p, &t),
            }
        })
    }

    /// A valid tree from random entries: the first entry for a path wins, and an entry whose
    /// parent is not a directory is dropped.
    fn valid_tree(mut es: Vec<ScanEntry>) -> crate::scan::Tree {
        es.sort_by_key(|e| e.path.depth());
        let mut kept: BTreeMap<BundlePath, ScanEntry> = BTreeMap::new();
        for e in es {
            let parent_ok =
                e.path.parent().is_none_or(|p| kept.get(&p).is_some_and(|d| d.ty == crate::scan::Type::Dir));
            if parent_ok && !kept.contains_key(&e.path) {
                kept.insert(e.path.clone(), e);
            }
        }
        tree(kept.into_values().collect())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(1000))]
        /// Random OLD and NEW trees of directories, files and symlinks through symlinked
        /// directories (absolute and relative, with `..`): the script is valid, and simulated
        /// step by step, every symlink the script places that resolves in NEW resolves from
        /// the moment it appears; the result is NEW.
        #[test]
        fn placed_links_never_dangle(
            old in proptest::collection::vec(arb_entry(), 0..14),
            new in proptest::collection::vec(arb_entry(), 0..14),
        ) {
            let (old, new) = (valid_tree(old), valid_tree(new));
            let (script, _warnings) = plan(&old, &new, &BTreeMap::new());
            let done = simulate(&sim(&old), &sim(&new), &script, false);
            proptest::prop_assert_eq!(done, sim(&new));
        }
    }

    /// A rootfs-sized merged-/usr conversion: 100k entries, 10k unchanged symlinks through
    /// `/lib`, directory `lib` becoming `lib -> usr/lib`. Ordering and validating is near-linear.
    #[test]
    fn rootfs_sized_tree_plans_quickly() {
        let (dirs, files, links) = (1000, 90, 10_000);
        let mut old = vec![dir("etc"), dir("lib"), dir("usr")];
        let mut new = vec![dir("etc"), link("lib", "usr/lib"), dir("usr"), dir("usr/lib")];
        for d in 0..dirs {
            old.push(dir(&format!("lib/d{d:04}")));
            new.push(dir(&format!("usr/lib/d{d:04}")));
            for f in 0..files {
                // Distinct contents (the diff looks copy sources up by content).
                let content = format!("{d} {f}");
                old.push(file(&format!("lib/d{d:04}/f{f:02}"), content.as_bytes()));
                new.push(file(&format!("usr/lib/d{d:04}/f{f:02}"), content.as_bytes()));
            }
        }
        for l in 0..links {
            let e = link(&format!("etc/l{l:05}"), &format!("/lib/d{:04}/f{:02}", l % dirs, l % files));
            old.push(e.clone());
            new.push(e);
        }
        let (old, new) = (tree(old), tree(new));
        let d = diff(&old, &new, &[]);
        let t = std::time::Instant::now();
        let (script, _) = order(&d.steps, &new, &old_entries(&old), &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
        let ordered = t.elapsed();
        let lib = script.iter().position(|s| s.path == bp("lib")).unwrap_or_else(|| panic!("lib"));
        assert_eq!(lib, dirs * (files + 1) + 1, "lib is exchanged after everything under usr/lib");
        let t = std::time::Instant::now();
        let (_, _) = plan(&old, &new, &BTreeMap::new());
        eprintln!(
            "{} entries: ordered in {ordered:?}; diff, order and validate in {:?}",
            new.entries.len(),
            t.elapsed()
        );
        assert!(ordered < std::time::Duration::from_secs(60), "{ordered:?}");
    }
}
