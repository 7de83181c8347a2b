//! Extended attributes of the trees: which namespaces a build carries (`--xattrs`), reading them
//! from a directory, interning their sets, and numbering the sets of a finished manifest
//! (bundle-format.md §4.9).
//!
//! Both trees are scanned into one process-wide table of distinct sets, so an entry's
//! [`bundle::Meta::xattrs`] is a small number and two metadata compare equal exactly when their
//! attributes do. [`finish`] renumbers the sets a manifest refers to in the order the format
//! requires and stores them in it.

use bundle::xattr::{self as bx, NAMESPACES};
use bundle::{Manifest, Meta, Xattr, XattrSet};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// What `--xattrs` asked for.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Carry {
    /// Read every namespace; carry each `security.*` attribute name, and each other namespace,
    /// in which the bundle's entries hold an attribute.
    #[default]
    Auto,
    /// Carry all four namespaces, whether or not anything holds an attribute in them.
    All,
    /// Carry nothing: attributes are neither read nor touched.
    None,
    /// Carry exactly these prefixes (sorted, none covering another).
    Only(Vec<String>),
}

impl Carry {
    /// Parse `auto`, `all`, `none` or a comma-separated list of namespaces or attribute names.
    pub fn parse(s: &str) -> Result<Carry, String> {
        match s {
            "auto" => return Ok(Carry::Auto),
            "all" => return Ok(Carry::All),
            "none" => return Ok(Carry::None),
            _ => {}
        }
        let mut v: Vec<String> = s.split(',').map(|p| p.trim().to_string()).collect();
        for p in &v {
            if !bx::valid_prefix(p, 255) {
                return Err(format!(
                    "--xattrs: {p:?} is not auto, all, none, a namespace ({}) or an attribute name in one",
                    NAMESPACES.join(", ")
                ));
            }
        }
        v.sort();
        v.dedup();
        let covered_by_other = |p: &String| v.iter().any(|q| q != p && bx::covers(q.as_bytes(), p.as_bytes()));
        let v: Vec<String> = v.iter().filter(|p| !covered_by_other(p)).cloned().collect();
        Ok(Carry::Only(v))
    }

    /// Whether attribute `name` is read from the trees.
    pub fn reads(&self, name: &[u8]) -> bool {
        match self {
            Carry::Auto | Carry::All => true,
            Carry::None => false,
            Carry::Only(v) => bx::covered(v, name),
        }
    }
}

/// The process-wide table of distinct attribute sets, and the attributes left out.
#[derive(Default)]
struct Table {
    ids: HashMap<XattrSet, u32>,
    sets: Vec<XattrSet>,
    /// Attribute names a tree holds that no bundle can carry (e.g. `btrfs.compression`), with
    /// how many inodes hold each and the first path seen.
    skipped: BTreeMap<Vec<u8>, (u64, String)>,
}

fn table() -> MutexGuard<'static, Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    // A panic while holding the lock leaves plain data behind; keep using it.
    TABLE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// The id of `set` (sorted, unique names), `None` for an empty set.
pub fn intern(set: XattrSet) -> Option<u32> {
    if set.is_empty() {
        return None;
    }
    let mut t = table();
    if let Some(&id) = t.ids.get(&set) {
        return Some(id);
    }
    let id = t.sets.len() as u32;
    t.sets.push(set.clone());
    t.ids.insert(set, id);
    Some(id)
}

/// Call `f` with the table of interned sets (indexed by the ids [`intern`] gave).
pub fn with_sets<R>(f: impl FnOnce(&[XattrSet]) -> R) -> R {
    f(&table().sets)
}

/// Note that the inode at `path` holds attribute `name`, which no bundle can carry.
pub fn note_skipped(name: &[u8], path: &str) {
    let mut t = table();
    let e = t.skipped.entry(name.to_vec()).or_insert((0, path.to_string()));
    e.0 += 1;
}

/// Warnings for the attributes left out since the process started, one per name.
pub fn skipped_warnings() -> Vec<String> {
    table()
        .skipped
        .iter()
        .map(|(name, (n, first))| {
            format!(
                "extended attribute {} on {n} inode(s) (first: {first}) is not one a bundle can carry; left out",
                String::from_utf8_lossy(name)
            )
        })
        .collect()
}

/// Whether a bundle can carry attribute `name` (one of the four namespaces, UTF-8).
fn carriable(name: &[u8]) -> bool {
    bx::valid_name(name, 255) && std::str::from_utf8(name).is_ok()
}

/// Read the attributes of the object at `path` (not following a symlink) that `carry` reads,
/// intern them, and return the id. Attributes that no bundle can carry are noted for a warning.
pub fn read(path: &Path, shown: &str, carry: &Carry) -> std::io::Result<Option<u32>> {
    if *carry == Carry::None {
        return Ok(None);
    }
    let (set, refused) = bx::read_set(
        |buf| rustix::fs::llistxattr(path, buf).map_err(std::io::Error::from),
        |name, buf| rustix::fs::lgetxattr(path, name, buf).map_err(std::io::Error::from),
        |name| carry.reads(name) && carriable(name),
    )
    .or_else(|e| if unsupported(&e) { Ok((Vec::new(), Vec::new())) } else { Err(e) })?;
    for name in refused.iter().filter(|n| carry.reads(n)) {
        note_skipped(name, shown);
    }
    Ok(intern(set))
}

/// `ENOTSUP`: the filesystem has no extended attributes at all (nothing to read).
fn unsupported(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error())
}

/// Intern a set given as (name, value) pairs from an archive, keeping what `carry` reads; names
/// no bundle can carry are noted for a warning against `shown`.
pub fn intern_pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>, shown: &str, carry: &Carry) -> Option<u32> {
    let mut set = XattrSet::new();
    for (name, value) in pairs {
        if !carry.reads(&name) {
            continue;
        }
        if carriable(&name) {
            set.push(Xattr { name, value });
        } else {
            note_skipped(&name, shown);
        }
    }
    set.sort_unstable();
    set.dedup_by(|a, b| a.name == b.name);
    intern(set)
}

/// Number the sets `m`'s entries and old entries refer to in order of first reference, store
/// them in `m.xattr_sets`, and set `m.xattr_namespaces` from `carry` (for `auto`: the `security`
/// attribute names and the other namespaces the sets hold).
pub fn finish(m: &mut Manifest, carry: &Carry) {
    let t = table();
    let mut renumber: HashMap<u32, u32> = HashMap::new();
    let mut sets: Vec<XattrSet> = Vec::new();
    let mut map = |meta: &mut Meta| {
        if let Some(id) = meta.xattrs {
            let new = *renumber.entry(id).or_insert_with(|| {
                sets.push(t.sets.get(id as usize).cloned().unwrap_or_default());
                (sets.len() - 1) as u32
            });
            meta.xattrs = Some(new);
        }
    };
    m.entries.iter_mut().for_each(|e| map(&mut e.meta));
    m.old.iter_mut().for_each(|o| map(&mut o.meta));
    m.xattr_namespaces = match carry {
        Carry::None => Vec::new(),
        Carry::All => NAMESPACES.iter().map(|s| s.to_string()).collect(),
        Carry::Only(v) => v.clone(),
        Carry::Auto => {
            // `security.*` by name (a tree with capabilities but no labels says nothing about the
            // target's SELinux labels), the other namespaces whole.
            let used: BTreeSet<String> = sets
                .iter()
                .flatten()
                .filter_map(|x| {
                    let ns = NAMESPACES.iter().find(|ns| bx::covers(ns.as_bytes(), &x.name))?;
                    if *ns == "security" {
                        String::from_utf8(x.name.clone()).ok()
                    } else {
                        Some(ns.to_string())
                    }
                })
                .collect();
            used.into_iter().collect()
        }
    };
    m.xattr_sets = sets;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carry_parses_and_normalises() {
        assert_eq!(Carry::parse("auto"), Ok(Carry::Auto));
        assert_eq!(
            Carry::parse("user,security.selinux,security"),
            Ok(Carry::Only(vec!["security".into(), "user".into()]))
        );
        assert!(Carry::parse("bogus").is_err());
        assert!(Carry::parse("system.nfs4_acl").is_err());
        let only = Carry::parse("security.capability").unwrap_or(Carry::None);
        assert!(only.reads(b"security.capability") && !only.reads(b"security.selinux"));
    }

    #[test]
    fn equal_sets_share_an_id() {
        let a = vec![Xattr { name: b"user.t1".to_vec(), value: b"v".to_vec() }];
        assert_eq!(intern(a.clone()), intern(a));
        assert_eq!(intern(Vec::new()), None);
    }
}
