//! The base check: before anything is written, the target must hold exactly the OLD state the
//! bundle expects at every path it touches. Drift is listed path by path and nothing changes.
//!
//! Every lookup goes through [`crate::fsx`], so a symlink planted where the manifest expects a
//! directory shows up here as drift instead of redirecting a later write (bundle-format.md,
//! "Threat model": planted symlink).

use crate::error::Result;
use crate::fsx;
use bundle::{BundlePath, Manifest, OldKind, Op, Tag, TaggedDigest};
use rustix::fs::FileType;
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::os::fd::BorrowedFd;

/// BLAKE3 of a reader's content and its length.
pub fn hash_reader(mut r: impl Read) -> std::io::Result<(bundle::Hash, u64)> {
    let mut h = blake3::Hasher::new();
    // 64 KiB: large enough for blake3's SIMD and the kernel's readahead, small enough that
    // zeroing it is cheap when thousands of small files are hashed.
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finalize().into(), n))
}

/// What is at a path now, in the manifest's terms; `Err` text describes an unusable path. A
/// regular file is hashed only if `want_size` is its size (a file of another size differs
/// anyway, and a local user could have put a huge sparse file there to stall the check).
pub fn observe(
    root: BorrowedFd<'_>,
    dirs: &mut fsx::DirCache,
    p: &BundlePath,
    want_size: Option<u64>,
) -> Result<Option<(OldKind, rustix::fs::Stat)>, String> {
    let (dir, name) = match dirs.parent_of(root, p) {
        Ok(x) => x,
        Err(e) if fsx::errno(&e) == Some(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(format!("a parent directory is not a real directory ({e}); a planted symlink?")),
    };
    let st = match fsx::lstat_at(dir, name) {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let kind = match fsx::file_type(&st) {
        FileType::RegularFile => {
            let hash = if want_size == Some(st.st_size as u64) {
                let f = fsx::open_file_at(dir, name).map_err(|e| e.to_string())?;
                // Never past the size seen: a file growing meanwhile still gets a bounded read.
                // Holes are not read (a sparse file's digest is over its holes as zeros).
                crate::sparse::hash_file(&f, st.st_size as u64).map_err(|e| e.to_string())?.0
            } else {
                bundle::Hash::default()
            };
            OldKind::File { size: st.st_size as u64, hash }
        }
        FileType::Directory => OldKind::Dir,
        FileType::Symlink => OldKind::Symlink { target: fsx::readlink_at(dir, name).map_err(|e| e.to_string())? },
        FileType::Fifo => OldKind::Fifo,
        FileType::CharacterDevice => OldKind::CharDev { rdev: st.st_rdev },
        FileType::BlockDevice => OldKind::BlockDev { rdev: st.st_rdev },
        _ => return Err("unsupported file type (socket?)".into()),
    };
    Ok(Some((kind, st)))
}

/// One drifted path and why, for reports.
pub fn describe(p: &BundlePath, why: &str) -> String {
    format!("{p}: {why}")
}

/// The change time (`st_ctime`) of a non-directory in nanoseconds, at least 1; 0 for a directory.
#[allow(clippy::unnecessary_cast)]
pub fn change_time(st: &rustix::fs::Stat) -> u64 {
    if fsx::file_type(st) == FileType::Directory {
        return 0;
    }
    ((st.st_ctime as i128) * 1_000_000_000 + st.st_ctime_nsec as i128).clamp(1, u64::MAX as i128) as u64
}

/// What the base check found: the config files whose local edits are kept, and the identity
/// `(st_dev, st_ino, change time)` of every OLD object a metadata step changes in place (the
/// steps act on those inodes only; the change time, [`change_time`], is 0 for a directory, whose
/// own renames change it).
#[derive(Debug, Default)]
pub struct Base {
    pub kept: Vec<BundlePath>,
    pub ids: BTreeMap<BundlePath, (u64, u64, u64)>,
}

/// Check the target against the manifest. `conffile_ok` says whether a content difference at a
/// path may be tolerated (a locally edited config file, kept under the conffile rule); those paths
/// are returned instead of being reported as drift. `owners`: the apply will set owners. The
/// extended attributes in scope of `attrs` are compared too (bundle-format.md §10.1). Three
/// phases: every `old` path as expected ([`check_old`]), every path the script creates absent and
/// every untouched parent a real directory ([`check_created`]), and every directory the bundle
/// removes holding only what OLD held ([`check_removed_dirs`]).
pub fn check(
    root: BorrowedFd<'_>,
    m: &Manifest,
    conffile_ok: &dyn Fn(&BundlePath) -> bool,
    owners: bool,
    attrs: &crate::xattrs::Attrs,
) -> Result<Base, Vec<String>> {
    let mut drift = Vec::new();
    let base = check_old(root, m, conffile_ok, owners, attrs, &mut drift);
    let mut dirs = fsx::DirCache::default();
    check_created(root, m, &mut dirs, &mut drift);
    check_removed_dirs(root, m, &mut dirs, &mut drift);
    drift.sort();
    drift.dedup();
    if drift.is_empty() {
        Ok(base)
    } else {
        Err(drift)
    }
}

/// Every `old` path exists with the expected type, content and attributes in scope (hashed in
/// parallel: the slow part), the files listed by tag as a whole matching `tagged_digest`;
/// records the identity of each object a metadata step changes in place, and the config files
/// whose local edits are kept.
fn check_old(
    root: BorrowedFd<'_>,
    m: &Manifest,
    conffile_ok: &dyn Fn(&BundlePath) -> bool,
    owners: bool,
    attrs: &crate::xattrs::Attrs,
    drift: &mut Vec<String>,
) -> Base {
    let mut base = Base::default();
    // Paths whose OLD object a metadata step changes in place (a directory that replaces
    // something else is placed first: its `DirMeta` acts on the new directory).
    let placed: HashSet<&BundlePath> =
        m.script.iter().filter(|s| matches!(s.op, Op::Place | Op::Mkdir)).map(|s| &s.path).collect();
    let in_place: HashSet<&BundlePath> = m
        .script
        .iter()
        .filter(|s| matches!(s.op, Op::SetMeta | Op::DirMeta) && !placed.contains(&s.path))
        .map(|s| &s.path)
        .collect();
    // Observing hashes every OLD file the bundle touches: the slow part, done in parallel.
    let seen = crate::par::map_with(&m.old, fsx::DirCache::default, |dirs, o| {
        let seen = observe(root, dirs, &o.path, o.kind.file_size())?;
        let xattrs = match (&seen, attrs.active()) {
            (Some(_), true) => match dirs.parent_of(root, &o.path) {
                Ok((dir, name)) => crate::xattrs::base_difference(dir, name, &o.meta, attrs),
                Err(e) => Some(e.to_string()),
            },
            _ => None,
        };
        Ok::<_, String>(seen.map(|(k, st)| (k, st, xattrs)))
    });
    // The aggregate over every file listed by tag, as found (bundle-format.md §4.3).
    let mut tagged = Tagged::default();
    for (o, seen) in m.old.iter().zip(seen) {
        tagged.observe(o, seen.as_ref().ok().and_then(|s| s.as_ref()).map(|s| &s.0));
        match seen {
            Err(why) => drift.push(describe(&o.path, &why)),
            Ok(None) => drift.push(describe(&o.path, &format!("missing (expected {})", o.kind.name()))),
            Ok(Some((k, st, xattrs))) => {
                if let Some(why) = xattrs {
                    drift.push(describe(&o.path, &why));
                }
                // Every OLD directory too: a rollback restores directory metadata only onto the
                // directory recorded here ([`crate::commit::restore_dir_meta`]).
                if in_place.contains(&o.path) || matches!(o.kind, OldKind::Dir) {
                    #[allow(clippy::unnecessary_cast)]
                    let (id, nlink) = ((st.st_dev as u64, st.st_ino as u64, change_time(&st)), st.st_nlink as u64);
                    if nlink > 1 && crate::commit::setmeta_by_copy(m, &o.path, owners) {
                        // A planted hard link to a file outside the target (or a link group the
                        // bundle does not know of) would share the new permissions.
                        drift.push(describe(
                            &o.path,
                            &format!(
                                "has {} hard links; a permission-raising change is never made to a shared inode",
                                nlink
                            ),
                        ));
                    }
                    base.ids.insert(o.path.clone(), id);
                }
                if let Some(why) = difference(&k, &o.kind) {
                    if matches!((&k, &o.kind), (OldKind::File { .. }, OldKind::File { .. })) && conffile_ok(&o.path) {
                        base.kept.push(o.path.clone());
                    } else {
                        drift.push(describe(&o.path, &why));
                    }
                }
            }
        }
    }
    drift.extend(tagged.verdict(m));
    // A `DirMeta` of a directory without an `old` entry (its own metadata is unchanged; the
    // step sets its mtime back after the renames in it) acts on the directory seen here and on
    // no other: a user who can rename entries of its parent must not get the step applied to a
    // directory of root's swapped into that name.
    let mut dirs = fsx::DirCache::default();
    let unrecorded: Vec<&BundlePath> = in_place.iter().copied().filter(|p| !base.ids.contains_key(*p)).collect();
    for p in unrecorded {
        match dirs.lstat(root, p) {
            #[allow(clippy::unnecessary_cast)]
            Ok(Some(st)) if fsx::file_type(&st) == FileType::Directory => {
                base.ids.insert(p.clone(), (st.st_dev as u64, st.st_ino as u64, 0));
            }
            Ok(Some(_)) => drift.push(describe(p, "expected a directory")),
            Ok(None) => drift.push(describe(p, "missing (expected a directory)")),
            Err(e) => drift.push(describe(p, &e.to_string())),
        }
    }
    base
}

/// How what is at a path (`seen`, as [`observe`] gives it: a file with its whole digest) differs
/// from its `old` entry, if it does. A file listed by tag matches here when its size and tag do;
/// it is accepted only by the aggregate ([`Tagged::verdict`]).
fn difference(seen: &OldKind, want: &OldKind) -> Option<String> {
    let same = match (seen, want) {
        (OldKind::File { size, hash }, OldKind::Tagged { size: s, tag }) => size == s && Tag::of(hash) == *tag,
        _ => seen == want,
    };
    if same {
        return None;
    }
    Some(match (seen, want) {
        (OldKind::File { .. }, OldKind::File { .. } | OldKind::Tagged { .. }) => {
            "content differs from the bundle's base".to_string()
        }
        (OldKind::Symlink { .. }, OldKind::Symlink { .. }) => "symlink target differs".to_string(),
        _ if seen.name() == want.name() => "device number differs".to_string(),
        _ => format!("expected {}, found {}", want.name(), seen.name()),
    })
}

/// The files of `old` listed by tag, as the base check finds them: the aggregate of §4.3 over
/// their sizes and whole digests, and whether any of them already drifted on its own.
#[derive(Default)]
struct Tagged {
    digest: TaggedDigest,
    files: usize,
    drifted: bool,
}

impl Tagged {
    /// Add `o`'s record if it is listed by tag; `seen` is what is at its path (`None`: missing
    /// or unusable).
    fn observe(&mut self, o: &bundle::OldEntry, seen: Option<&OldKind>) {
        let OldKind::Tagged { .. } = o.kind else { return };
        self.files += 1;
        match seen {
            Some(k @ OldKind::File { size, hash }) if difference(k, &o.kind).is_none() => {
                self.digest.add(&o.path, *size, hash)
            }
            _ => self.drifted = true,
        }
    }

    /// The drift line when every tagged file matched its tag but the aggregate does not match
    /// the manifest's: a file changed to content with the same tag, or a manifest whose digest
    /// disagrees with its tags. No path can be named. (A tagged file that drifted on its own is
    /// already reported by path.)
    fn verdict(&self, m: &Manifest) -> Option<String> {
        let want = m.tagged_digest?;
        if self.drifted || self.digest.finish() == want {
            return None;
        }
        Some(format!(
            "the {} files listed by tag do not match the bundle's aggregate digest (tagged_digest): \
             each matches its size and tag, so one was changed to content with the same tag, or \
             the bundle does not describe its base consistently",
            self.files
        ))
    }
}

/// Every path the script creates and OLD lacks is absent (unless its parent is created too), and
/// every parent the script does not create is a real directory.
fn check_created(root: BorrowedFd<'_>, m: &Manifest, dirs: &mut fsx::DirCache, drift: &mut Vec<String>) {
    let created: HashSet<&BundlePath> =
        m.script.iter().filter(|s| matches!(s.op, Op::Mkdir | Op::Place)).map(|s| &s.path).collect();
    for s in &m.script {
        // A path whose parent the script creates cannot exist yet: the parent is checked itself.
        let parent_created = s.path.parent().is_some_and(|p| created.contains(&p));
        if matches!(s.op, Op::Mkdir | Op::Place) && m.old_entry(&s.path).is_none() && !parent_created {
            match observe(root, dirs, &s.path, None) {
                Ok(None) => {}
                Ok(Some((k, _))) => {
                    drift.push(describe(&s.path, &format!("exists as {}, but the bundle creates it", k.name())))
                }
                Err(why) => drift.push(describe(&s.path, &why)),
            }
        }
        // Untouched parents must be real directories now.
        if let Some(parent) = s.path.parent() {
            if !created.contains(&parent) && dirs.dir(root, Some(&parent)).is_err() {
                drift.push(describe(
                    &s.path,
                    &format!("parent {parent} is not a real directory (missing, or a symlink)"),
                ));
            }
        }
        if s.op == Op::DirMeta && !created.contains(&s.path) && dirs.dir(root, Some(&s.path)).is_err() {
            drift.push(describe(&s.path, "expected a directory"));
        }
    }
}

/// A directory the bundle removes may hold only what OLD held.
fn check_removed_dirs(root: BorrowedFd<'_>, m: &Manifest, dirs: &mut fsx::DirCache, drift: &mut Vec<String>) {
    // A directory the bundle removes (deleted, or replaced by a non-directory) may hold only what
    // OLD held: a local addition would otherwise be removed with it.
    for o in m.old.iter().filter(|o| {
        matches!(o.kind, OldKind::Dir) && m.entry(&o.path).is_none_or(|e| !matches!(e.kind, bundle::Kind::Dir))
    }) {
        if let Ok(d) = dirs.dir(root, Some(&o.path)) {
            if let Ok(names) = fsx::list_dir(d) {
                for n in names {
                    let listed = o.path.join(&n).ok().is_some_and(|c| m.old_entry(&c).is_some());
                    if !listed {
                        drift.push(describe(
                            &o.path,
                            &format!(
                                "contains {:?}, which the bundle's base does not have",
                                String::from_utf8_lossy(&n)
                            ),
                        ));
                    }
                }
            }
        }
    }
}
