//! Choosing the bundles `update` applies (bundle-format.md §18.5): the cheapest chain in a
//! channel's index from the installed version (or an empty target) to the goal.
//!
//! Versions are the nodes; a bundle is an edge from its `from` to its `to`. A target with an
//! installed version uses delta edges only (a full bundle applies only to an empty target,
//! §18.2), unless replace mode is asked for (`--replace`, §10.4), where a full bundle is an edge
//! from every version below its own; an empty target starts with one full bundle and may
//! continue with deltas. The
//! cheapest chain is the one with the fewest bytes to download (bundles already complete in the
//! cache cost nothing), then the fewest bundles, then the smallest list of file names
//! (lexicographic): Dijkstra's algorithm on that cost, which only grows along a chain.

use bundle::index::BundleRef;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// The cost of a chain: bytes to download, bundles, their file names in order.
type Cost = (u64, usize, Vec<String>);

/// The cheapest chain of `bundles` from `from` (`None`: an empty target) to version `to`, as
/// indices into `bundles`; `cost(b)` is what downloading bundle `b` costs. `Ok(vec![])` if
/// `from` is `to` already. `Err` says why there is none. `replace`: a full bundle may also
/// follow an installed version (replace mode).
pub fn choose(
    bundles: &[BundleRef],
    from: Option<u64>,
    to: u64,
    cost: &dyn Fn(&BundleRef) -> u64,
    replace: bool,
) -> Result<Vec<usize>, String> {
    if from == Some(to) {
        return Ok(Vec::new());
    }
    if let Some(f) = from {
        if f > to {
            return Err(format!("the target is at version {f}, above version {to}"));
        }
    }
    // Node: None = the empty target, Some(v) = version v. Best cost and the edge that reached it.
    let mut best: BTreeMap<Option<u64>, (Cost, Option<usize>)> = BTreeMap::new();
    let mut heap = BinaryHeap::new();
    best.insert(from, ((0, 0, Vec::new()), None));
    let mut prev: BTreeMap<Option<u64>, Option<u64>> = BTreeMap::new();
    heap.push(Reverse(((0u64, 0usize, Vec::<String>::new()), from)));
    while let Some(Reverse((c, node))) = heap.pop() {
        if best.get(&node).is_some_and(|(b, _)| *b < c) {
            continue; // a stale entry
        }
        if node == Some(to) {
            break;
        }
        for (i, b) in bundles.iter().enumerate() {
            // From the empty target: full bundles only; from a version: its deltas only (and,
            // in replace mode, the full bundles of later versions).
            let usable = match node {
                None => b.from.is_none(),
                Some(v) => b.from == Some(v) || (replace && b.from.is_none() && b.to > v),
            };
            if !usable || b.to > to {
                continue;
            }
            let mut files = c.2.clone();
            files.push(b.file.clone());
            let next: Cost = (c.0.saturating_add(cost(b)), c.1 + 1, files);
            let n = Some(b.to);
            if best.get(&n).is_none_or(|(old, _)| next < *old) {
                best.insert(n, (next.clone(), Some(i)));
                prev.insert(n, node);
                heap.push(Reverse((next, n)));
            }
        }
    }
    if !best.contains_key(&Some(to)) {
        return Err(no_path(bundles, from, to));
    }
    // Walk back along the edges that reached each node (a full bundle's `from` is null, so the
    // node it was taken from is recorded with it).
    let mut chain = Vec::new();
    let mut at = Some(to);
    while at != from {
        let Some(&(_, Some(i))) = best.get(&at) else { return Err(no_path(bundles, from, to)) };
        chain.push(i);
        at = prev.get(&at).copied().flatten();
    }
    chain.reverse();
    Ok(chain)
}

/// Why no chain exists, for the error message.
fn no_path(bundles: &[BundleRef], from: Option<u64>, to: u64) -> String {
    let mut bases: Vec<u64> = bundles.iter().filter(|b| b.to <= to).filter_map(|b| b.from).collect();
    bases.sort_unstable();
    bases.dedup();
    let bases = if bases.is_empty() {
        "none".to_string()
    } else {
        bases.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    };
    match from {
        Some(f) => format!(
            "the index has no chain of deltas from version {f} to version {to} (it has deltas from versions {bases}); \
             a full bundle applies only to an empty target (bundle-format.md §18.2) unless --replace is given \
             (it then replaces the tree, §10.4), or ask the publisher for a delta from version {f}"
        ),
        None => format!(
            "the index has no full bundle from which version {to} can be reached (deltas from versions {bases})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bundle::Hash;

    fn b(file: &str, from: Option<u64>, to: u64, size: u64) -> BundleRef {
        BundleRef { file: file.into(), from, to, size, blake3: Hash([0; 32]), id: Hash([0; 32]) }
    }

    fn files(bs: &[BundleRef], p: &[usize]) -> Vec<String> {
        p.iter().map(|&i| bs[i].file.clone()).collect()
    }

    fn repo() -> Vec<BundleRef> {
        vec![
            b("v1.full.ferry", None, 1, 1000),
            b("v1-v2.ferry", Some(1), 2, 10),
            b("v2-v3.ferry", Some(2), 3, 10),
            b("v1-v3.ferry", Some(1), 3, 30),
            b("v3-v4.ferry", Some(3), 4, 10),
            b("v4.full.ferry", None, 4, 1200),
            b("v2-v4.ferry", Some(2), 4, 15),
            b("v1-v4.ferry", Some(1), 4, 100),
        ]
    }

    #[test]
    fn cheapest_by_bytes_then_count_then_name() {
        let bs = repo();
        let size = |x: &BundleRef| x.size;
        assert_eq!(files(&bs, &choose(&bs, Some(1), 4, &size, false).expect("path")), ["v1-v2.ferry", "v2-v4.ferry"]);
        assert_eq!(files(&bs, &choose(&bs, Some(2), 4, &size, false).expect("path")), ["v2-v4.ferry"]);
        assert_eq!(files(&bs, &choose(&bs, Some(3), 4, &size, false).expect("path")), ["v3-v4.ferry"]);
        // Empty target: v1 full + deltas (1025) beats v4 full (1200).
        assert_eq!(
            files(&bs, &choose(&bs, None, 4, &size, false).expect("path")),
            ["v1.full.ferry", "v1-v2.ferry", "v2-v4.ferry"]
        );
        // --to stops earlier; equal bytes: fewer bundles (v1-v3 at 20 would tie v1-v2-v3).
        let mut bs2 = bs.clone();
        bs2[3].size = 20;
        assert_eq!(files(&bs2, &choose(&bs2, Some(1), 3, &size, false).expect("path")), ["v1-v3.ferry"]);
        // Same bytes and count: the smaller file names.
        let bs3 = vec![b("b.ferry", Some(1), 2, 5), b("a.ferry", Some(1), 2, 5)];
        assert_eq!(files(&bs3, &choose(&bs3, Some(1), 2, &size, false).expect("path")), ["a.ferry"]);
        // Already there.
        assert!(choose(&bs, Some(4), 4, &size, false).expect("path").is_empty());
        // Cached bundles cost nothing: a cached v1-v4 wins.
        let cached = |x: &BundleRef| if x.file == "v1-v4.ferry" { 0 } else { x.size };
        assert_eq!(files(&bs, &choose(&bs, Some(1), 4, &cached, false).expect("path")), ["v1-v4.ferry"]);
    }

    #[test]
    fn full_bundles_only_for_an_empty_target() {
        let bs =
            vec![b("v1.full.ferry", None, 1, 10), b("v3.full.ferry", None, 3, 10), b("v1-v2.ferry", Some(1), 2, 5)];
        let size = |x: &BundleRef| x.size;
        // A target at v2 has no delta to v3: the full bundle is not an edge for it.
        let e = choose(&bs, Some(2), 3, &size, false).expect_err("no path");
        assert!(e.contains("full bundle applies only to an empty target"), "{e}");
        assert_eq!(files(&bs, &choose(&bs, None, 3, &size, false).expect("path")), ["v3.full.ferry"]);
        // Above the goal, or a goal nothing reaches.
        assert!(choose(&bs, Some(3), 2, &size, false).is_err());
        assert!(choose(&bs, None, 7, &size, false).is_err());
        // A gap in the chain.
        let bs = vec![b("v1-v2.ferry", Some(1), 2, 5), b("v3-v4.ferry", Some(3), 4, 5)];
        assert!(choose(&bs, Some(1), 4, &size, false).is_err());
    }

    #[test]
    fn replace_mode_makes_full_bundles_edges_from_any_older_version() {
        let bs = vec![
            b("v3.full.ferry", None, 3, 100),
            b("v5.full.ferry", None, 5, 130),
            b("v3-v4.ferry", Some(3), 4, 10),
            b("v4-v5.ferry", Some(4), 5, 10),
        ];
        let size = |x: &BundleRef| x.size;
        // A target at v1 (no delta from it): only replace mode reaches v5, by the cheapest way.
        assert!(choose(&bs, Some(1), 5, &size, false).is_err());
        assert_eq!(
            files(&bs, &choose(&bs, Some(1), 5, &size, true).expect("path")),
            ["v3.full.ferry", "v3-v4.ferry", "v4-v5.ferry"]
        );
        // Deltas stay preferred where they exist and are cheaper.
        assert_eq!(files(&bs, &choose(&bs, Some(3), 5, &size, true).expect("path")), ["v3-v4.ferry", "v4-v5.ferry"]);
        // A full bundle of an older or the same version is no edge.
        assert_eq!(files(&bs, &choose(&bs, Some(4), 5, &size, true).expect("path")), ["v4-v5.ferry"]);
        assert!(choose(&bs, Some(6), 5, &size, true).is_err());
    }
}
