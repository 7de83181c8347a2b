//! Extended attributes (bundle-format.md §4.9): the interned attribute sets entries refer to, the
//! carried-namespace rule, and their structural checks.
//!
//! An entry's [`crate::Meta::xattrs`] is an index into [`crate::Manifest::xattr_sets`]: a label
//! string that thousands of files share is stored once. Which attributes a bundle speaks about is
//! given by [`crate::Manifest::xattr_namespaces`], a list of name prefixes ("security", "user",
//! "security.selinux", ...): an attribute whose name a carried prefix covers is set from the
//! entry's set, or removed when the set lacks it; any other attribute is left alone.

use crate::{Error, Limits};
use serde::{Deserialize, Serialize};

/// One extended attribute: its full name (namespace included, e.g. `security.capability`) and its
/// value, both as bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Xattr {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// The attributes of one inode in the carried namespaces, sorted by name, names unique.
pub type XattrSet = Vec<Xattr>;

/// The top-level namespaces Linux has; a carried prefix starts with one of them.
pub const NAMESPACES: [&str; 4] = ["security", "system", "trusted", "user"];

/// The only `system.*` attributes a bundle may carry: POSIX ACLs.
pub const SYSTEM_NAMES: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];

/// The capability attribute: changing it raises an inode's privileges (§10.3).
pub const CAPABILITY: &[u8] = b"security.capability";

/// Whether prefix `p` covers attribute `name`: equal, or `name` starts with `p` followed by a dot.
pub fn covers(p: &[u8], name: &[u8]) -> bool {
    name.starts_with(p) && (name.len() == p.len() || name[p.len()] == b'.')
}

/// Whether any of `prefixes` covers `name`.
pub fn covered(prefixes: &[String], name: &[u8]) -> bool {
    prefixes.iter().any(|p| covers(p.as_bytes(), name))
}

/// Whether `name` is an attribute name a bundle may carry: 1..=`max` bytes without NUL, in one of
/// [`NAMESPACES`] with a non-empty rest, and in `system` only the ACL names.
pub fn valid_name(name: &[u8], max: usize) -> bool {
    if name.is_empty() || name.len() > max || name.contains(&0) {
        return false;
    }
    let ns_ok = NAMESPACES.iter().any(|ns| name.len() > ns.len() + 1 && covers(ns.as_bytes(), name));
    let system = covers(b"system", name);
    ns_ok && (!system || SYSTEM_NAMES.iter().any(|s| s.as_bytes() == name))
}

/// Whether `p` is a valid carried prefix: a namespace, or a longer prefix inside one that is a
/// valid attribute name itself (e.g. `security.selinux`). Printable ASCII only.
pub fn valid_prefix(p: &str, max: usize) -> bool {
    p.bytes().all(|b| b.is_ascii_graphic())
        && (NAMESPACES.contains(&p) || (valid_name(p.as_bytes(), max) && !p.ends_with('.')))
}

/// The value of attribute `name` in `set`, if present.
pub fn get<'a>(set: &'a [Xattr], name: &[u8]) -> Option<&'a [u8]> {
    set.binary_search_by(|x| x.name.as_slice().cmp(name)).ok().map(|i| set[i].value.as_slice())
}

/// Call `f` with a buffer big enough for what it reads, as the `*getxattr`/`*listxattr` calls
/// need: 1 KiB first, then four times larger on `ERANGE` up to 256 KiB (Linux caps a value and
/// a name list at 64 KiB). Pure: `f` does the I/O and returns the bytes it filled.
pub fn read_sized(mut f: impl FnMut(&mut [u8]) -> std::io::Result<usize>) -> std::io::Result<Vec<u8>> {
    const ERANGE: i32 = 34;
    let mut buf = vec![0u8; 1024];
    loop {
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(ERANGE) && buf.len() < (256 << 10) => {
                buf.resize(buf.len() * 4, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Read the attributes of one inode through `list` (a `*listxattr` call) and `get` (a
/// `*getxattr` call for one name), keeping the names `keep` accepts. Returns the set, sorted,
/// and the names `keep` refused. An attribute removed between the two calls is left out.
pub fn read_set(
    mut list: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    mut get: impl FnMut(&[u8], &mut [u8]) -> std::io::Result<usize>,
    keep: impl Fn(&[u8]) -> bool,
) -> std::io::Result<(XattrSet, Vec<Vec<u8>>)> {
    let names = read_sized(&mut list)?;
    let mut set = XattrSet::new();
    let mut refused = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !keep(name) {
            refused.push(name.to_vec());
            continue;
        }
        match read_sized(|buf| get(name, buf)) {
            Ok(value) => set.push(Xattr { name: name.to_vec(), value }),
            Err(e) if e.raw_os_error() == Some(61) => {} // ENODATA: removed meanwhile
            Err(e) => return Err(e),
        }
    }
    set.sort_unstable();
    set.dedup_by(|a, b| a.name == b.name);
    Ok((set, refused))
}

/// The structural rules of the two manifest fields (§4.9): prefixes valid, sorted, unique and none
/// covering another; every set sorted by name with unique, valid names that a carried prefix
/// covers, within the count and size limits; sets distinct. (That every set is referenced and
/// every reference in range is checked by the manifest, which sees the entries.)
pub fn check(prefixes: &[String], sets: &[XattrSet], limits: &Limits) -> Result<(), Error> {
    let err = |s: String| Err(Error::Manifest(s));
    for (i, p) in prefixes.iter().enumerate() {
        if !valid_prefix(p, limits.max_xattr_name) {
            return err(format!("xattr namespace {p:?} is not a namespace or attribute name"));
        }
        if i > 0 && prefixes[i - 1] >= *p {
            return err("xattr namespaces not sorted or duplicate".into());
        }
        if prefixes.iter().any(|q| q != p && covers(q.as_bytes(), p.as_bytes())) {
            return err(format!("xattr namespace {p:?} is covered by another carried namespace"));
        }
    }
    if sets.len() > limits.max_xattr_sets {
        return Err(Error::TooMany {
            what: "xattr sets".into(),
            count: sets.len() as u64,
            limit: limits.max_xattr_sets as u64,
        });
    }
    let mut total: u64 = 0;
    for (i, set) in sets.iter().enumerate() {
        if set.is_empty() || set.len() > limits.max_xattrs_per_set {
            return err(format!(
                "xattr set {i}: {} attributes (1 to {} allowed)",
                set.len(),
                limits.max_xattrs_per_set
            ));
        }
        for (j, x) in set.iter().enumerate() {
            let shown = String::from_utf8_lossy(&x.name);
            if !valid_name(&x.name, limits.max_xattr_name) || !covered(prefixes, &x.name) {
                return err(format!("xattr set {i}: name {shown:?} is invalid or not in a carried namespace"));
            }
            if j > 0 && set[j - 1].name >= x.name {
                return err(format!("xattr set {i}: names not sorted or duplicate ({shown:?})"));
            }
            if x.value.len() > limits.max_xattr_value {
                return Err(Error::TooLarge {
                    what: format!("xattr {shown}"),
                    size: x.value.len() as u64,
                    limit: limits.max_xattr_value as u64,
                });
            }
            total = total.saturating_add((x.name.len() + x.value.len()) as u64);
        }
    }
    if total > limits.max_xattr_bytes {
        return Err(Error::TooLarge { what: "xattr sets".into(), size: total, limit: limits.max_xattr_bytes });
    }
    let mut sorted: Vec<&XattrSet> = sets.iter().collect();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return err("xattr sets not distinct".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(n: &str, v: &str) -> Xattr {
        Xattr { name: n.into(), value: v.into() }
    }

    #[test]
    fn prefixes_cover_at_dot_boundaries() {
        assert!(covers(b"security", b"security.selinux"));
        assert!(covers(b"security.selinux", b"security.selinux"));
        assert!(!covers(b"security.sel", b"security.selinux"));
        assert!(!covers(b"user", b"users.x"));
        assert!(valid_prefix("security.capability", 255) && valid_prefix("user", 255));
        assert!(!valid_prefix("os2", 255) && !valid_prefix("user.", 255) && !valid_prefix("system.foo", 255));
    }

    #[test]
    fn names_must_be_in_a_namespace_and_system_only_acls() {
        assert!(valid_name(b"user.a", 255) && valid_name(b"system.posix_acl_default", 255));
        for bad in [&b"user."[..], b"user", b"foo.bar", b"system.nfs4_acl", b"user.a\0b", b""] {
            assert!(!valid_name(bad, 255), "{bad:?}");
        }
        assert!(!valid_name(&[b'u'; 300], 255));
    }

    #[test]
    fn check_refuses_each_violation() {
        let l = Limits::default();
        let ns = vec!["security".to_string(), "user".to_string()];
        let good = vec![vec![x("security.selinux", "a"), x("user.b", "")]];
        assert!(check(&ns, &good, &l).is_ok());
        let cases: Vec<(Vec<String>, Vec<XattrSet>)> = vec![
            (vec!["user".into(), "security".into()], vec![]),
            (vec!["security".into(), "security.selinux".into()], vec![]),
            (vec!["bogus".into()], vec![]),
            (ns.clone(), vec![vec![]]),
            (ns.clone(), vec![vec![x("user.b", ""), x("security.selinux", "a")]]),
            (ns.clone(), vec![vec![x("trusted.t", "a")]]),
            (ns.clone(), vec![vec![x("user.a", "1")], vec![x("user.a", "1")]]),
            (ns.clone(), vec![vec![Xattr { name: b"user.v".to_vec(), value: vec![0; l.max_xattr_value + 1] }]]),
        ];
        for (i, (p, s)) in cases.iter().enumerate() {
            assert!(check(p, s, &l).is_err(), "case {i} accepted");
        }
    }
}
