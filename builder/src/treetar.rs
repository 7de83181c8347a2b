//! Write a scanned tree as a pax tar archive that the builder's own tar input
//! ([`crate::image::scan_tar`]) reads back as the same tree: the publisher's store of past
//! versions (bundle-format.md §18.4).
//!
//! Every member gets a pax header carrying what a ustar header cannot hold exactly: `path`
//! (any length, any bytes), `linkpath` (symlink targets, hardlink targets), `uid`, `gid`, `mtime`
//! with nanoseconds, and each extended attribute as `SCHILY.xattr.NAME` with its raw value.
//! Hardlinks are `1` members naming the group's first (smallest) path, which is written first
//! (the tree is sorted). Device nodes carry their major and minor numbers. A sparse file is
//! written in GNU tar's PAX format 1.0 (`GNU.sparse.major=1`, `minor=0`, `name`, `realsize`; the
//! member's data is the map, padded to a block, then the data extents), so its holes are never
//! stored. Sockets are not in a scanned tree (the scan skips or refuses them).

use crate::error::{Error, Result};
use crate::scan::{ScanEntry, Tree, Type};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

const BLOCK: usize = 512;

/// One pax record: `LEN SP KEY=VALUE LF`, LEN counting itself.
fn record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body_len = 1 + key.len() + 1 + value.len() + 1;
    let mut n = body_len + 1;
    while n.to_string().len() + body_len != n {
        n += 1;
    }
    out.extend_from_slice(n.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Nanoseconds since the epoch as a pax time (`[-]SECS.NNNNNNNNN`).
fn pax_time(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let a = ns.unsigned_abs();
    format!("{sign}{}.{:09}", a / 1_000_000_000, a % 1_000_000_000)
}

fn pad(out: &mut dyn Write, len: u64) -> io::Result<()> {
    let p = (BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64;
    out.write_all(&[0u8; BLOCK][..p as usize])
}

/// A ustar header block of type `ty` for a member whose data is `size` bytes. The name field
/// holds a placeholder (the pax `path` record is the name).
fn header(ty: tar::EntryType, size: u64, meta: &bundle::Meta, dev: Option<u64>) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    {
        let name = b"ferry-member";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
    }
    h.set_entry_type(ty);
    h.set_size(size);
    h.set_mode(meta.mode & 0o7777);
    // Values over the octal fields' range are in the pax records (which a reader prefers).
    h.set_uid(u64::from(meta.uid).min(0o7777777));
    h.set_gid(u64::from(meta.gid).min(0o7777777));
    h.set_mtime(u64::try_from(meta.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0).min(0o77777777777));
    if let Some(d) = dev {
        let (major, minor) = (libc::major(d as libc::dev_t), libc::minor(d as libc::dev_t));
        let _ = h.set_device_major(major);
        let _ = h.set_device_minor(minor);
    }
    h.set_cksum();
    h
}

/// Write the tree's entries as a tar stream to `out` (finished with the two zero blocks).
/// `what` names the tree in errors.
pub fn write_tree(tree: &Tree, out: &mut dyn Write, what: &Path) -> Result<()> {
    let werr = |e: io::Error| Error::Write { path: what.to_path_buf(), source: e };
    for e in &tree.entries {
        write_entry(tree, e, out, what)?;
    }
    out.write_all(&[0u8; 2 * BLOCK]).map_err(werr)?;
    Ok(())
}

fn write_entry(tree: &Tree, e: &ScanEntry, out: &mut dyn Write, what: &Path) -> Result<()> {
    let werr = |err: io::Error| Error::Write { path: what.to_path_buf(), source: err };
    let sparse = match (&e.ty, &e.extents) {
        (Type::File, Some(x)) if !e.is_secondary_link() => Some(x),
        _ => None,
    };
    let (pax, ty, dev) = member_pax(e, sparse.is_some());
    // The member's data: a regular file's content (a sparse file's map, then its extents).
    let map = sparse.map(|x| sparse_map(x));
    let data_len = match (ty, sparse, &map) {
        (tar::EntryType::Regular, Some(x), Some(m)) => m.len() as u64 + x.iter().map(|x| x.len).sum::<u64>(),
        (tar::EntryType::Regular, _, _) => e.size,
        _ => 0,
    };
    write_xheader(out, &pax).map_err(werr)?;
    out.write_all(header(ty, data_len, &e.meta, dev).as_bytes()).map_err(werr)?;
    if ty != tar::EntryType::Regular {
        return Ok(());
    }
    let src = tree.content_path(&e.path);
    let rerr = |err: io::Error| Error::Io { path: src.clone(), source: err };
    let mut f = File::open(&src).map_err(rerr)?;
    match (sparse, map) {
        (Some(x), Some(m)) => {
            out.write_all(&m).map_err(werr)?;
            for ext in x {
                f.seek(SeekFrom::Start(ext.offset)).map_err(rerr)?;
                copy_exact(&mut f, out, ext.len, &src, what)?;
            }
        }
        _ => copy_exact(&mut f, out, e.size, &src, what)?,
    }
    pad(out, data_len).map_err(werr)?;
    Ok(())
}

/// The pax records of entry `e` (owners, ns mtime, attributes, path — a sparse file's under
/// GNU.sparse 1.0 — and link target), its tar type and device number.
fn member_pax(e: &ScanEntry, sparse: bool) -> (Vec<u8>, tar::EntryType, Option<u64>) {
    let path = e.path.as_bytes();
    let mut pax = Vec::new();
    record(&mut pax, b"uid", e.meta.uid.to_string().as_bytes());
    record(&mut pax, b"gid", e.meta.gid.to_string().as_bytes());
    record(&mut pax, b"mtime", pax_time(e.meta.mtime_ns).as_bytes());
    if let Some(i) = e.meta.xattrs {
        let set = crate::xattr::with_sets(|sets| sets.get(i as usize).cloned()).unwrap_or_default();
        for x in set {
            record(&mut pax, &[&b"SCHILY.xattr."[..], &x.name].concat(), &x.value);
        }
    }
    if sparse {
        record(&mut pax, b"GNU.sparse.major", b"1");
        record(&mut pax, b"GNU.sparse.minor", b"0");
        record(&mut pax, b"GNU.sparse.name", path);
        record(&mut pax, b"GNU.sparse.realsize", e.size.to_string().as_bytes());
        record(&mut pax, b"path", b"GNUSparseFile.0/ferry-member");
    } else {
        record(&mut pax, b"path", path);
    }
    let (ty, dev) = match &e.ty {
        _ if e.is_secondary_link() => {
            let primary = e.primary.as_ref().map(|p| p.as_bytes().to_vec()).unwrap_or_default();
            record(&mut pax, b"linkpath", &primary);
            (tar::EntryType::Link, None)
        }
        Type::File => (tar::EntryType::Regular, None),
        Type::Dir => (tar::EntryType::Directory, None),
        Type::Symlink(t) => {
            record(&mut pax, b"linkpath", t);
            (tar::EntryType::Symlink, None)
        }
        Type::Fifo => (tar::EntryType::Fifo, None),
        Type::CharDev(d) => (tar::EntryType::Char, Some(*d)),
        Type::BlockDev(d) => (tar::EntryType::Block, Some(*d)),
    };
    (pax, ty, dev)
}

/// A GNU sparse 1.0 map (count, then offset and length of each extent, one per line), padded to
/// whole blocks.
fn sparse_map(x: &[bundle::Extent]) -> Vec<u8> {
    let mut m = format!("{}\n", x.len());
    for ext in x.iter() {
        m.push_str(&format!("{}\n{}\n", ext.offset, ext.len));
    }
    let mut m = m.into_bytes();
    m.resize(m.len().div_ceil(BLOCK) * BLOCK, 0);
    m
}

/// The pax extended header member holding `pax`.
fn write_xheader(out: &mut dyn Write, pax: &[u8]) -> io::Result<()> {
    let mut xh = tar::Header::new_ustar();
    let name = b"PaxHeaders/ferry-member";
    xh.as_old_mut().name[..name.len()].copy_from_slice(name);
    xh.set_entry_type(tar::EntryType::XHeader);
    xh.set_size(pax.len() as u64);
    xh.set_mode(0o644);
    xh.set_cksum();
    out.write_all(xh.as_bytes())?;
    out.write_all(pax)?;
    pad(out, pax.len() as u64)
}

/// Copy exactly `len` bytes; a file that shrank since it was scanned is an error (the tree
/// changed under the publisher).
fn copy_exact(f: &mut File, out: &mut dyn Write, len: u64, src: &Path, what: &Path) -> Result<()> {
    let n = io::copy(&mut f.take(len), out).map_err(|e| Error::Write { path: what.to_path_buf(), source: e })?;
    if n != len {
        return Err(Error::Io {
            path: src.to_path_buf(),
            source: io::Error::other(format!("changed while it was archived: {n} of {len} bytes")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Progress;
    use crate::xattr::Carry;
    use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
    use std::sync::Arc;

    /// A directory with every type the scan reads (as a non-root user: no devices), a sparse
    /// file, a hardlink, a long non-UTF-8 name, a `user.*` attribute, odd modes and nanosecond
    /// and negative mtimes reads back from its archive as the same tree.
    #[test]
    fn a_directory_reads_back_from_its_archive_as_the_same_tree() -> std::result::Result<(), Box<dyn std::error::Error>>
    {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("t");
        fs_setup(&root)?;
        let progress = Progress::new(crate::progress::Verbosity::Quiet);
        let tree = crate::scan::scan(&root, "new", false, &Carry::All, &progress)?;
        assert!(tree.entries.iter().any(|e| e.extents.is_some()), "the sparse file is sparse");
        assert!(tree.entries.iter().any(|e| e.primary.is_some()), "the hardlink is grouped");
        let mut tar = Vec::new();
        write_tree(&tree, &mut tar, Path::new("t.tar"))?;
        assert_eq!(tar.len() % BLOCK, 0);
        let store = Arc::new(crate::scan::ContentStore::new_in(tmp.path())?);
        let back = crate::image::scan_tar(&tar[..], Path::new("t.tar"), store, false, &Carry::All, &progress)?;
        let key = |t: &Tree| {
            t.entries
                .iter()
                .map(|e| (e.path.clone(), e.ty.clone(), e.meta, e.size, e.hash, e.extents.clone(), e.primary.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&back), key(&tree));
        let long = std::ffi::OsStr::from_bytes(&[b'n'; 200]);
        assert!(back.entries.iter().any(|e| e.path.as_bytes().ends_with(long.as_bytes())));
        Ok(())
    }

    fn fs_setup(root: &Path) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let d = root.join("dir/sub");
        std::fs::create_dir_all(&d)?;
        std::fs::write(root.join("dir/a"), b"hello")?;
        std::fs::set_permissions(root.join("dir/a"), std::fs::Permissions::from_mode(0o4751))?;
        std::fs::hard_link(root.join("dir/a"), root.join("dir/sub/a-link"))?;
        symlink("../a", d.join("link"))?;
        symlink("/nowhere/at/all", d.join("dangling"))?;
        std::fs::write(d.join(std::ffi::OsStr::from_bytes(b"caf\xe9")), b"latin-1 name")?;
        std::fs::write(d.join(std::ffi::OsStr::from_bytes(&[b'n'; 200])), b"long name")?;
        let st = rustix::fs::mknodat(
            rustix::fs::CWD,
            d.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o640),
            0,
        );
        st.map_err(io::Error::from)?;
        let f = File::create(root.join("disk.img"))?;
        f.set_len(4 << 20)?;
        f.write_all_at(b"head", 0)?;
        f.write_all_at(&[7u8; 70_000], 2 << 20)?;
        let _ =
            rustix::fs::setxattr(root.join("dir/a"), "user.test", b"\x00binary\xff", rustix::fs::XattrFlags::empty());
        let t = |s: i64, ns: i64| rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: s, tv_nsec: ns },
            last_modification: rustix::fs::Timespec { tv_sec: s, tv_nsec: ns },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            root.join("disk.img"),
            &t(1_700_000_000, 123_456_789),
            rustix::fs::AtFlags::empty(),
        )
        .map_err(io::Error::from)?;
        rustix::fs::utimensat(rustix::fs::CWD, d.join("fifo"), &t(-5, 500_000_000), rustix::fs::AtFlags::empty())
            .map_err(io::Error::from)?;
        Ok(())
    }
}
