//! Extended attributes on the target (bundle-format.md §4.9, §10): which attributes an apply
//! speaks about, reading them for the base check, setting them on staged and live objects, and
//! finding out before anything is written whether the target's filesystems can hold them.
//!
//! An attribute is *in scope* when a namespace the bundle carries covers its name and no
//! `--skip-xattrs` prefix does. In scope, an object ends with exactly its entry's set: missing
//! attributes are set, others removed. Out of scope, nothing is read, set or removed.
//!
//! Regular files and directories are handled through an open handle (`f*xattr`). Symlinks, FIFOs
//! and devices must not be opened, so they are named as `/proc/self/fd/DIRFD/NAME` with the
//! `l*xattr` calls: the directory is the handle already resolved safely, and the last component
//! is not followed. That needs `/proc`, only when such an object has attributes in scope.

use crate::fsx;
use bundle::xattr::{covered, NAMESPACES};
use bundle::{BundlePath, Manifest, Meta, Op, Xattr, XattrSet};
use rustix::fs::XattrFlags;
use rustix::io::Errno;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;

/// The attributes an apply sets and checks: the bundle's sets, its carried namespaces and the
/// operator's `--skip-xattrs` prefixes. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Attrs {
    sets: Arc<Vec<XattrSet>>,
    carried: Vec<String>,
    skipped: Vec<String>,
}

impl Attrs {
    /// For manifest `m` with the operator's `skip` prefixes.
    pub fn new(m: &Manifest, skip: &[String]) -> Attrs {
        Attrs { sets: Arc::new(m.xattr_sets.clone()), carried: m.xattr_namespaces.clone(), skipped: skip.to_vec() }
    }

    /// Whether attribute `name` is in scope.
    pub fn in_scope(&self, name: &[u8]) -> bool {
        covered(&self.carried, name) && !covered(&self.skipped, name)
    }

    /// Whether any attribute can be in scope (else every operation here is a no-op).
    pub fn active(&self) -> bool {
        !self.carried.is_empty() && !self.carried.iter().all(|c| covered(&self.skipped, c.as_bytes()))
    }

    /// The attributes in scope that `meta` says the object has.
    pub fn wanted(&self, meta: &Meta) -> Vec<&Xattr> {
        let set = meta.xattrs.and_then(|i| self.sets.get(i as usize)).map_or(&[][..], |s| s.as_slice());
        set.iter().filter(|x| self.in_scope(&x.name)).collect()
    }

    /// The attributes in scope that the object open as `fd` has.
    pub fn read_fd(&self, fd: BorrowedFd<'_>) -> io::Result<XattrSet> {
        let (set, _) = bundle::xattr::read_set(
            |buf| rustix::fs::flistxattr(fd, buf).map_err(io::Error::from),
            |name, buf| rustix::fs::fgetxattr(fd, name, buf).map_err(io::Error::from),
            |name| self.in_scope(name),
        )
        .or_else(none_if_unsupported)?;
        Ok(set)
    }

    /// The attributes in scope of `name` in `dir` (any type, not followed).
    pub fn read_at(&self, dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<XattrSet> {
        match fsx::open_meta_at(dir, name)? {
            Some(fd) => self.read_fd(fd.as_fd()),
            None => self.read_unopened(&proc_path(dir, name)),
        }
    }

    /// The attributes in scope of an object that is not opened, named by its `/proc` path.
    fn read_unopened(&self, p: &OsString) -> io::Result<XattrSet> {
        let (set, _) = bundle::xattr::read_set(
            |buf| rustix::fs::llistxattr(p, buf).map_err(io::Error::from),
            |n, buf| rustix::fs::lgetxattr(p, n, buf).map_err(io::Error::from),
            |n| self.in_scope(n),
        )
        .or_else(none_if_unsupported)?;
        Ok(set)
    }

    /// Make the attributes in scope of the object open as `fd` exactly `meta`'s: set what is
    /// missing or different, remove the rest. Call after owner and mode (a `chown` clears
    /// `security.capability`) and before the mtime.
    pub fn apply_fd(&self, fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
        if !self.active() {
            return Ok(());
        }
        let have = self.read_fd(fd)?;
        self.reconcile(&have, meta, |x| set_fd(fd, x), |n| remove_fd(fd, n))
    }

    /// [`Attrs::apply_fd`] for a symlink, FIFO or device `name` in `dir`, which is never opened.
    pub fn apply_unopened(&self, dir: BorrowedFd<'_>, name: &[u8], meta: &Meta) -> io::Result<()> {
        if !self.active() {
            return Ok(());
        }
        let p = proc_path(dir, name);
        let have = self.read_unopened(&p)?;
        self.reconcile(
            &have,
            meta,
            |x| rustix::fs::lsetxattr(&p, x.name.as_slice(), &x.value, XattrFlags::empty()).map_err(io::Error::from),
            |n| rustix::fs::lremovexattr(&p, n).map_err(io::Error::from),
        )
    }

    /// Remove `security.capability` from the file open as `fd`, if that attribute is in scope
    /// (out of scope, ferry neither sets nor removes it). Absent, or a filesystem without the
    /// namespace: nothing to do.
    pub fn drop_capability(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        const CAPABILITY: &[u8] = b"security.capability";
        if !self.in_scope(CAPABILITY) {
            return Ok(());
        }
        match remove_fd(fd, CAPABILITY) {
            Err(e) if fsx::errno(&e) == Some(Errno::NOTSUP) => Ok(()),
            r => r.map_err(|e| named(e, "remove", CAPABILITY)),
        }
    }

    fn reconcile(
        &self,
        have: &[Xattr],
        meta: &Meta,
        mut set: impl FnMut(&Xattr) -> io::Result<()>,
        mut remove: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let want = self.wanted(meta);
        for x in have {
            if !want.iter().any(|w| w.name == x.name) {
                remove(&x.name).map_err(|e| named(e, "remove", &x.name))?;
            }
        }
        for w in want {
            if bundle::xattr::get(have, &w.name) != Some(w.value.as_slice()) {
                set(w).map_err(|e| named(e, "set", &w.name))?;
            }
        }
        Ok(())
    }

    /// How `have` (read from the target) differs from what `meta` says, or `None`.
    pub fn difference(&self, have: &[Xattr], meta: &Meta) -> Option<String> {
        let want = self.wanted(meta);
        let mut out = Vec::new();
        for w in &want {
            match bundle::xattr::get(have, &w.name) {
                None => out.push(format!("{} missing", shown(&w.name))),
                Some(v) if v != w.value.as_slice() => out.push(format!("{} differs", shown(&w.name))),
                _ => {}
            }
        }
        for x in have {
            if !want.iter().any(|w| w.name == x.name) {
                out.push(format!("{} present", shown(&x.name)));
            }
        }
        (!out.is_empty()).then(|| format!("extended attributes differ from the bundle's base: {}", out.join(", ")))
    }

    /// The `--skip-xattrs` prefixes, for reports.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
}

fn shown(name: &[u8]) -> String {
    crate::text::escape(&String::from_utf8_lossy(name)).into_owned()
}

/// A failure to set or remove one attribute: which, and the kernel's error.
#[derive(Debug)]
struct AttrError {
    what: &'static str,
    name: String,
    source: io::Error,
}

impl std::fmt::Display for AttrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} extended attribute {}: {}", self.what, self.name, self.source)
    }
}

impl std::error::Error for AttrError {}

/// An error naming the attribute it is about, keeping its kind (and, inside, its errno).
fn named(e: io::Error, what: &'static str, name: &[u8]) -> io::Error {
    io::Error::new(e.kind(), AttrError { what, name: shown(name), source: e })
}

/// Reading attributes where the filesystem has none at all gives an empty set.
fn none_if_unsupported<T: Default>(e: io::Error) -> io::Result<(XattrSet, T)> {
    if fsx::errno(&e) == Some(Errno::NOTSUP) {
        Ok((Vec::new(), T::default()))
    } else {
        Err(e)
    }
}

fn set_fd(fd: BorrowedFd<'_>, x: &Xattr) -> io::Result<()> {
    Ok(rustix::fs::fsetxattr(fd, x.name.as_slice(), &x.value, XattrFlags::empty())?)
}

fn remove_fd(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rustix::fs::fremovexattr(fd, name) {
        Err(Errno::NODATA) => Ok(()),
        r => Ok(r?),
    }
}

/// `/proc/self/fd/DIRFD/NAME`: the object `name` in the directory open as `dir`.
fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> OsString {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    OsString::from_vec(p)
}

/// The namespace (`security`, `system`, ...) of an attribute name.
fn namespace_of(name: &[u8]) -> &'static str {
    NAMESPACES.iter().find(|ns| bundle::xattr::covers(ns.as_bytes(), name)).copied().unwrap_or("?")
}

/// The name a support probe reads in a namespace: an attribute nobody has (`ENODATA` means the
/// filesystem supports the namespace), or for `system` the ACL itself.
fn probe_name(ns: &str) -> &'static [u8] {
    match ns {
        "security" => b"security.ferry-probe",
        "system" => b"system.posix_acl_access",
        "trusted" => b"trusted.ferry-probe",
        _ => b"user.ferry-probe",
    }
}

/// Before anything is written: can every filesystem the bundle writes attributes to hold them?
/// For each entry with a creating or metadata step whose set has an attribute in scope, the
/// nearest existing directory at or above it is probed once per (filesystem, namespace) with a
/// read (`ENOTSUP`: the filesystem cannot hold that namespace). Returns one line per refused
/// namespace and filesystem, naming up to five paths and how to drop it.
pub fn check_support(root: BorrowedFd<'_>, m: &Manifest, attrs: &Attrs) -> Vec<String> {
    if !attrs.active() {
        return Vec::new();
    }
    let mut dirs = fsx::DirCache::default();
    let mut probed: HashMap<(u64, &'static str), bool> = HashMap::new();
    let mut refused: BTreeMap<(&'static str, u64), Vec<&BundlePath>> = BTreeMap::new();
    for s in m.script.iter().filter(|s| s.op != Op::Delete) {
        let Some(e) = m.entry(&s.path) else { continue };
        let mut namespaces: Vec<&'static str> = attrs.wanted(&e.meta).iter().map(|x| namespace_of(&x.name)).collect();
        namespaces.dedup();
        if namespaces.is_empty() {
            continue;
        }
        // The directory the object lives in (or will: its nearest existing ancestor).
        let mut at = if s.op == Op::DirMeta { Some(s.path.clone()) } else { s.path.parent() };
        let fd = loop {
            match dirs.dir(root, at.as_ref()) {
                Ok(fd) => break Some(fd),
                Err(_) if at.is_some() => at = at.as_ref().and_then(|p| p.parent()),
                Err(_) => break None,
            }
        };
        let Some(fd) = fd else { continue };
        #[allow(clippy::unnecessary_cast)]
        let Ok(dev) = rustix::fs::fstat(fd).map(|st| st.st_dev as u64) else {
            continue;
        };
        for ns in namespaces {
            let ok = *probed.entry((dev, ns)).or_insert_with(|| {
                !matches!(rustix::fs::fgetxattr(fd, probe_name(ns), &mut [0u8; 0][..]), Err(Errno::NOTSUP))
            });
            if !ok {
                refused.entry((ns, dev)).or_default().push(&s.path);
            }
        }
    }
    refused
        .into_iter()
        .map(|((ns, _), paths)| {
            let shown: Vec<String> = paths.iter().take(5).map(|p| p.to_string()).collect();
            let more = if paths.len() > 5 { format!(" and {} more", paths.len() - 5) } else { String::new() };
            format!(
                "the filesystem holding {}{more} cannot store {ns}.* extended attributes, which the bundle sets; \
                 nothing was written (drop them explicitly with --skip-xattrs {ns})",
                shown.join(", ")
            )
        })
        .collect()
}

/// The base check's comparison for one OLD path: the attributes in scope of `name` in `dir`
/// now against the OLD entry's `meta`, or a drift line.
pub fn base_difference(dir: BorrowedFd<'_>, name: &[u8], meta: &Meta, attrs: &Attrs) -> Option<String> {
    if !attrs.active() {
        return None;
    }
    match attrs.read_at(dir, name) {
        Ok(have) => attrs.difference(&have, meta),
        Err(e) => Some(format!("cannot read its extended attributes: {e}")),
    }
}

/// Whether `e` is a refusal by the filesystem or the kernel to hold an attribute (exit code
/// [`crate::error::Exit::Unsupported`]).
pub fn is_unsupported(e: &io::Error) -> bool {
    e.get_ref().and_then(|inner| inner.downcast_ref::<AttrError>()).is_some_and(|a| {
        matches!(
            fsx::errno(&a.source),
            Some(Errno::NOTSUP | Errno::PERM | Errno::ACCESS | Errno::NOSPC | Errno::TOOBIG | Errno::RANGE)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ns: &[&str], sets: Vec<XattrSet>) -> Manifest {
        let mut m = empty_manifest();
        m.xattr_namespaces = ns.iter().map(|s| s.to_string()).collect();
        m.xattr_sets = sets;
        m
    }

    fn empty_manifest() -> Manifest {
        Manifest {
            format: bundle::FORMAT_VERSION,
            version: 1,
            base: None,
            channel: "c".into(),
            created: 0,
            expires: None,
            entries: vec![],
            old: vec![],
            frames: vec![],
            script: vec![],
            hooks: vec![],
            rotation: None,
            xattr_namespaces: vec![],
            xattr_sets: vec![],
            tagged_digest: None,
            sealed: None,
        }
    }

    fn x(n: &str, v: &str) -> Xattr {
        Xattr { name: n.into(), value: v.into() }
    }

    #[test]
    fn scope_is_carried_minus_skipped() {
        let a = Attrs::new(&m(&["security", "user"], vec![]), &["security.selinux".into()]);
        assert!(a.in_scope(b"security.capability") && a.in_scope(b"user.x"));
        assert!(!a.in_scope(b"security.selinux") && !a.in_scope(b"trusted.x"));
        assert!(a.active());
        assert!(!Attrs::new(&m(&["user"], vec![]), &["user".into()]).active());
    }

    #[test]
    fn difference_names_each_attribute() {
        let set = vec![x("security.capability", "c"), x("user.a", "1")];
        let a = Attrs::new(&m(&["security", "user"], vec![set]), &[]);
        let meta = Meta { xattrs: Some(0), ..Meta::default() };
        assert_eq!(a.difference(&[x("security.capability", "c"), x("user.a", "1")], &meta), None);
        let d = a.difference(&[x("user.a", "2"), x("user.b", "")], &meta).unwrap_or_default();
        assert!(
            d.contains("security.capability missing") && d.contains("user.a differs") && d.contains("user.b present")
        );
    }

    #[test]
    fn refusals_to_hold_an_attribute_are_recognised() {
        let e = named(io::Error::from_raw_os_error(Errno::NOTSUP.raw_os_error()), "set", b"user.a");
        assert!(e.to_string().contains("set extended attribute user.a"), "{e}");
        assert!(e.get_ref().is_some_and(|i| i.downcast_ref::<AttrError>().is_some()), "{e:?}");
        assert!(is_unsupported(&e), "{e:?}");
        assert!(!is_unsupported(&named(io::Error::from_raw_os_error(Errno::IO.raw_os_error()), "set", b"user.a")));
        assert!(!is_unsupported(&io::Error::from_raw_os_error(Errno::NOTSUP.raw_os_error())));
    }

    #[test]
    fn set_and_remove_on_a_real_file() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        let f = std::fs::File::create(d.path().join("f"))?;
        if rustix::fs::fsetxattr(&f, "user.pre", b"x", XattrFlags::empty()).is_err() {
            return Ok(()); // no user xattrs on this filesystem
        }
        let a = Attrs::new(&m(&["user"], vec![vec![x("user.a", "1")]]), &[]);
        a.apply_fd(f.as_fd(), &Meta { xattrs: Some(0), ..Meta::default() })?;
        assert_eq!(a.read_fd(f.as_fd())?, vec![x("user.a", "1")]);
        a.apply_fd(f.as_fd(), &Meta::default())?;
        assert_eq!(a.read_fd(f.as_fd())?, vec![]);
        Ok(())
    }
}
