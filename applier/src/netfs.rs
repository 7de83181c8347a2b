//! Network and FUSE filesystems: where the durability argument of bundle-format.md §12 does not
//! hold.
//!
//! ferry relies on rename-over keeping the old inode alive for programs that have it open, and
//! on the local filesystem's ordered metadata journal for what survives a power cut. On NFS an
//! open file renamed over is "silly-renamed" (`.nfsXXXX`) only for opens by the same client,
//! SMB/CIFS may refuse or break it, a FUSE filesystem does whatever its daemon does, and
//! durability is the server's commit semantics. So `plan` and `apply` find the type
//! (`fstatfs(2)` `f_type`) of every filesystem the bundle touches — the target's root and the
//! nearest existing directory of each step's parent — and refuse a network or FUSE filesystem
//! (exit 10, refused by policy) before anything is written, unless `--allow-network-fs`.

use crate::error::{Ctx, Error, Result};
use crate::fsx;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::BorrowedFd;

/// `(f_type, name, network or FUSE)`: the magic numbers of linux/magic.h (and, for filesystems
/// outside the kernel tree, their own headers).
const TABLE: &[(u32, &str, bool)] = &[
    // Network, cluster and FUSE filesystems: refused without --allow-network-fs.
    (0x6969, "nfs", true),
    (0x517B, "smb", true),
    (0xFF53_4D42, "cifs", true),
    (0xFE53_4D42, "smb2", true),
    (0x6573_5546, "fuse", true),
    (0x00C3_6400, "ceph", true),
    (0x5346_414F, "afs", true),
    (0x6B41_4653, "kafs", true),
    (0x0102_1997, "9p", true),
    (0x7375_7245, "coda", true),
    (0x564C, "ncp", true),
    (0x0116_1970, "gfs2", true),
    (0x7461_636F, "ocfs2", true),
    (0x0BD0_0BD0, "lustre", true),
    (0x2003_0528, "orangefs", true),
    (0x4750_4653, "gpfs", true),
    // Local filesystems, named in `plan`.
    (0xEF53, "ext2/ext3/ext4", false),
    (0x5846_5342, "xfs", false),
    (0x9123_683E, "btrfs", false),
    (0x2FC1_2FC1, "zfs", false),
    (0xCA45_1A4E, "bcachefs", false),
    (0xF2F5_2010, "f2fs", false),
    (0x0102_1994, "tmpfs", false),
    (0x8584_58F6, "ramfs", false),
    (0x794C_7630, "overlayfs", false),
    (0x4D44, "vfat", false),
    (0x2011_BAB0, "exfat", false),
    (0x5346_544E, "ntfs", false),
    (0x3434, "nilfs2", false),
    (0x3153_464A, "jfs", false),
    (0x5265_4973, "reiserfs", false),
    (0x7371_7368, "squashfs", false),
    (0xE0F5_E1E2, "erofs", false),
    (0x9660, "iso9660", false),
    (0x1501_3346, "udf", false),
    (0x72B6, "jffs2", false),
    (0x2405_1905, "ubifs", false),
    (0xF15F, "ecryptfs", false),
];

/// A filesystem type: its `f_type`, a name, and whether it is a network or FUSE filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsType {
    pub magic: u32,
    pub name: &'static str,
    pub network: bool,
}

impl FsType {
    /// The type of `f_type` `magic` (an unknown type is named by its number and counted local).
    pub fn of(magic: u32) -> FsType {
        match TABLE.iter().find(|(m, _, _)| *m == magic) {
            Some(&(magic, name, network)) => FsType { magic, name, network },
            None => FsType { magic, name: "", network: false },
        }
    }

    /// `nfs (0x6969)`, or `unknown (0x…)`.
    pub fn describe(&self) -> String {
        let name = if self.name.is_empty() { "unknown" } else { self.name };
        format!("{name} (0x{:x})", self.magic)
    }
}

/// The type of the filesystem holding `fd`.
pub fn fs_type(fd: BorrowedFd<'_>) -> std::io::Result<FsType> {
    let s = rustix::fs::fstatfs(fd)?;
    // `f_type` is a signed long on most targets; the magic numbers are its low 32 bits.
    #[allow(clippy::unnecessary_cast)]
    Ok(FsType::of(s.f_type as u32))
}

/// One filesystem (mount) a bundle touches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// A directory of the target on it ("." for the root).
    pub dir: String,
    /// Its type's name, e.g. `ext2/ext3/ext4`, `nfs`, `fuse`, or `unknown (0x…)`.
    pub fs_type: String,
    /// True for a network or FUSE filesystem.
    pub network: bool,
    /// [`fsx::mount_key`] of the mount.
    #[serde(skip)]
    pub key: u64,
}

/// Every filesystem the manifest's steps touch: the target's root, and for each step the
/// nearest existing directory of its path's parent; one per mount, in order of first use.
pub fn touched(root: BorrowedFd<'_>, m: &bundle::Manifest) -> Result<Vec<Mount>> {
    let mut parents: BTreeSet<Option<bundle::BundlePath>> = BTreeSet::new();
    parents.insert(None);
    for s in &m.script {
        parents.insert(s.path.parent());
    }
    let mut dirs = fsx::DirCache::default();
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut out: Vec<Mount> = Vec::new();
    for p in parents {
        // The nearest existing ancestor of `p` (or `p` itself); the root if none.
        let mut cands: Vec<Option<bundle::BundlePath>> = match &p {
            Some(p) => {
                let mut a: Vec<Option<bundle::BundlePath>> = p.ancestors().into_iter().map(Some).collect();
                a.push(Some(p.clone()));
                a
            }
            None => Vec::new(),
        };
        cands.insert(0, None);
        let mut found = None;
        while let Some(c) = cands.pop() {
            if let Ok(d) = dirs.dir(root, c.as_ref()) {
                let name = c.as_ref().map(|c| c.display()).unwrap_or_else(|| ".".into());
                let key = fsx::mount_key(d).ctx("stat", &name)?;
                let ty = fs_type(d).ctx("statfs", &name)?;
                found = Some((key, name, ty));
                break;
            }
        }
        let Some((key, dir, ty)) = found else {
            return Err(Error::Internal("cannot open the target's root".into()));
        };
        seen.entry(key).or_insert_with(|| {
            out.push(Mount { dir, fs_type: ty.describe(), network: ty.network, key });
            out.len() - 1
        });
    }
    Ok(out)
}

/// Refuse (exit 10) if a filesystem the bundle touches is a network or FUSE filesystem, naming
/// each such directory and type, unless `allow`. Returns the filesystems.
pub fn check(root: BorrowedFd<'_>, m: &bundle::Manifest, allow: bool) -> Result<Vec<Mount>> {
    let mounts = touched(root, m)?;
    if let Some(e) = refusal(&mounts, allow) {
        return Err(e);
    }
    Ok(mounts)
}

/// The refusal for `mounts`, if any is a network or FUSE filesystem and `allow` is false.
pub fn refusal(mounts: &[Mount], allow: bool) -> Option<Error> {
    let net: Vec<String> = mounts
        .iter()
        .filter(|m| m.network)
        .map(|m| format!("{} is on {}", crate::text::escape_line(&m.dir), m.fs_type))
        .collect();
    if allow || net.is_empty() {
        return None;
    }
    Some(Error::Policy(format!(
        "{}: a network or FUSE filesystem, where renaming over a file does not keep it alive for programs that have it open and durability is the server's (bundle-format.md §12); nothing was written; --allow-network-fs applies anyway",
        net.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        for (magic, name) in [
            (0x6969, "nfs"),
            (0x517B, "smb"),
            (0xFF53_4D42, "cifs"),
            (0xFE53_4D42, "smb2"),
            (0x6573_5546, "fuse"),
            (0x00C3_6400, "ceph"),
            (0x5346_414F, "afs"),
            (0x0102_1997, "9p"),
            (0x7375_7245, "coda"),
            (0x564C, "ncp"),
            (0x0116_1970, "gfs2"),
            (0x7461_636F, "ocfs2"),
            (0x0BD0_0BD0, "lustre"),
        ] {
            let t = FsType::of(magic);
            assert_eq!((t.name, t.network), (name, true), "{magic:#x}");
        }
        for (magic, name) in
            [(0xEF53, "ext2/ext3/ext4"), (0x5846_5342, "xfs"), (0x9123_683E, "btrfs"), (0x0102_1994, "tmpfs")]
        {
            let t = FsType::of(magic);
            assert_eq!((t.name, t.network), (name, false), "{magic:#x}");
        }
        let u = FsType::of(0x1234_5678);
        assert!(!u.network);
        assert_eq!(u.describe(), "unknown (0x12345678)");
        assert_eq!(FsType::of(0x6969).describe(), "nfs (0x6969)");
        // Sign-extended on 32-bit targets, the low 32 bits still classify.
        assert_eq!(FsType::of(0xFF53_4D42_i64 as i32 as i64 as u32).name, "cifs");
        let mut magics: Vec<u32> = TABLE.iter().map(|t| t.0).collect();
        magics.sort_unstable();
        magics.dedup();
        assert_eq!(magics.len(), TABLE.len(), "a magic number listed twice");
    }

    #[test]
    fn refusal_names_each_network_directory() {
        let local = Mount { dir: ".".into(), fs_type: "ext2/ext3/ext4 (0xef53)".into(), network: false, key: 1 };
        let nfs = Mount { dir: "srv/data".into(), fs_type: "nfs (0x6969)".into(), network: true, key: 2 };
        assert!(refusal(std::slice::from_ref(&local), false).is_none());
        assert!(refusal(&[local.clone(), nfs.clone()], true).is_none());
        let e = refusal(&[local, nfs], false).map(|e| (e.exit(), e.to_string()));
        let (code, msg) = e.unwrap_or_else(|| panic!("not refused"));
        assert_eq!(code as u8, 10);
        assert!(msg.contains("srv/data is on nfs (0x6969)") && msg.contains("--allow-network-fs"), "{msg}");
    }

    #[test]
    fn the_test_machines_temp_dir_is_classified() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let fd = fsx::open_dir_path(d.path())?;
        let t = fs_type(std::os::fd::AsFd::as_fd(&fd))?;
        assert!(!t.describe().is_empty());
        Ok(())
    }
}
