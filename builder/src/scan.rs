//! Walk a directory tree into a sorted, hashed list of entries.
//!
//! The diff needs exact knowledge of both trees without following symlinks (a symlink is an
//! entry, never a way out of the tree), in a deterministic order (bundle output must not depend
//! on readdir order), with file content identified by BLAKE3 and hardlinks grouped by inode.

use crate::error::{Error, Result};
use crate::progress::Progress;
use bundle::{BundlePath, Extent, Hash, Meta};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The type of a scanned entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Type {
    File,
    Dir,
    /// The target (boxed: an entry is 8 bytes smaller than with a `Vec`).
    Symlink(Box<[u8]>),
    Fifo,
    CharDev(u64),
    BlockDev(u64),
}

impl Type {
    /// Type name as used by [`bundle::Kind::name`] (hardlinks count as files).
    pub fn name(&self) -> &'static str {
        match self {
            Type::File => "file",
            Type::Dir => "dir",
            Type::Symlink(_) => "symlink",
            Type::Fifo => "fifo",
            Type::CharDev(_) => "chardev",
            Type::BlockDev(_) => "blockdev",
        }
    }
}

/// One entry of a tree (the root itself is not an entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEntry {
    pub path: BundlePath,
    pub ty: Type,
    pub meta: Meta,
    /// Size in bytes (files only; 0 otherwise).
    pub size: u64,
    /// BLAKE3 of the content, holes read as zeros (files only; zero otherwise).
    pub hash: Hash,
    /// The data extents of a file the sparse policy makes sparse ([`crate::sparse`]); `None`
    /// for a dense file (and for non-files).
    pub extents: Option<Box<[Extent]>>,
    /// For a file with other names in the tree: the smallest path of its inode group.
    /// `None` for a file with one name (and for non-files).
    pub primary: Option<Box<BundlePath>>,
}

impl ScanEntry {
    /// True for a regular file that is not the primary of its hardlink group.
    pub fn is_secondary_link(&self) -> bool {
        self.primary.as_deref().is_some_and(|p| p != &self.path)
    }
}

/// Where the content of a tree's files is read from. Every reader of file content (hashing,
/// ELF inspection, delta encoding) goes through [`Tree::content_path`], so a tree read from an
/// archive works exactly like a directory.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory: a file's content is the file at the same path under the root.
    Dir(PathBuf),
    /// A content store filled while reading an archive: one file per distinct content.
    Store(Arc<ContentStore>),
}

impl Default for Source {
    fn default() -> Self {
        Source::Dir(PathBuf::new())
    }
}

/// A temporary directory holding one file per distinct content, named by its BLAKE3 in hex,
/// removed when dropped. Archive members are spooled into it while the archive is read, so the
/// encoder has random access to them and memory stays bounded.
#[derive(Debug)]
pub struct ContentStore {
    dir: tempfile::TempDir,
}

impl ContentStore {
    /// A new store in `parent` (next to the output bundle, so on a disk with room for it).
    pub fn new_in(parent: &Path) -> Result<ContentStore> {
        let dir =
            tempfile::Builder::new().prefix(".ferry-build-store-").tempdir_in(parent).map_err(Error::io(parent))?;
        Ok(ContentStore { dir })
    }

    /// The file holding content `hash`.
    pub fn path(&self, hash: &Hash) -> PathBuf {
        self.dir.path().join(hash.to_hex())
    }

    /// Copy a sparse member into the store: `r` yields its data stream (the bytes of `extents`,
    /// concatenated), written at the extents' offsets of a file of `size` bytes whose holes stay
    /// holes. Returns the hash of its logical content. `what` names the source in errors.
    pub fn add_sparse(&self, r: &mut dyn Read, size: u64, extents: &[Extent], what: &str) -> Result<Hash> {
        use std::os::unix::fs::FileExt;
        let dir = self.dir.path();
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(Error::io(dir))?;
        let io = |e| Error::Io { path: PathBuf::from(what), source: e };
        tmp.as_file().set_len(size).map_err(Error::io(tmp.path()))?;
        let mut h = bundle::sparse::ZeroFillHasher::new();
        let mut buf = vec![0u8; 64 << 10];
        for e in extents {
            let mut at = e.offset;
            while at < e.end() {
                let n = (e.end() - at).min(buf.len() as u64) as usize;
                r.read_exact(&mut buf[..n]).map_err(io)?;
                tmp.as_file().write_all_at(&buf[..n], at).map_err(Error::io(tmp.path()))?;
                h.update_at(at, &buf[..n]).map_err(|e| io(std::io::Error::other(e)))?;
                at += n as u64;
            }
        }
        let hash = h.finish(size);
        let dst = self.path(&hash);
        if !dst.exists() {
            tmp.persist(&dst).map_err(|e| Error::Io { path: dst, source: e.error })?;
        }
        Ok(hash)
    }

    /// Copy everything `r` yields into the store; returns its hash and size. `what` names the
    /// source in errors.
    pub fn add(&self, r: &mut dyn Read, what: &str) -> Result<(Hash, u64)> {
        let dir = self.dir.path();
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(Error::io(dir))?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut size = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Io { path: PathBuf::from(what), source: e }),
            };
            h.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(Error::io(tmp.path()))?;
            size += n as u64;
        }
        let hash: Hash = h.finalize().into();
        let dst = self.path(&hash);
        if dst.exists() {
            return Ok((hash, size)); // the temporary file is removed on drop
        }
        tmp.persist(&dst).map_err(|e| Error::Io { path: dst, source: e.error })?;
        Ok((hash, size))
    }
}

/// A scanned tree: where its content is read from and its entries sorted by path bytes.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub source: Source,
    pub entries: Vec<ScanEntry>,
    /// Unix sockets found and left out (sockets cannot be carried in a bundle: like tar and
    /// rsync, the builder skips them unless told to refuse them), by path.
    pub sockets: Vec<BundlePath>,
    groups: BTreeMap<BundlePath, Vec<BundlePath>>,
}

impl Tree {
    /// Build a tree from entries (sorts them); used by [`scan`] and by tests.
    pub fn from_entries(source: Source, mut entries: Vec<ScanEntry>) -> Tree {
        // Unstable: no buffer of half the entries (paths are unique, so the order is the same).
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        let mut groups: BTreeMap<BundlePath, Vec<BundlePath>> = BTreeMap::new();
        for e in &entries {
            if let Some(p) = e.primary.as_deref() {
                groups.entry(p.clone()).or_default().push(e.path.clone());
            }
        }
        Tree { source, entries, sockets: Vec::new(), groups }
    }

    /// The entry at `p`: a binary search of the sorted entries (no second copy of every path in
    /// a map: a tree of 1,000,000 files costs ~110 MB less).
    pub fn get(&self, p: &BundlePath) -> Option<&ScanEntry> {
        self.entries.binary_search_by(|e| e.path.cmp(p)).ok().map(|i| &self.entries[i])
    }

    /// Keep only the entries at `paths` and free the rest (hard-link groups are left as they
    /// are: [`Tree::group_of`] is for a whole tree).
    pub fn retain_paths(&mut self, paths: &BTreeSet<&BundlePath>) {
        self.entries.retain(|e| paths.contains(&e.path));
        self.entries.shrink_to_fit();
    }

    /// All names of the inode of the file at `p`, sorted (just `[p]` for a single-name file).
    pub fn group_of(&self, p: &BundlePath) -> Vec<BundlePath> {
        match self.get(p).and_then(|e| e.primary.as_deref()).and_then(|pr| self.groups.get(pr)) {
            Some(g) => g.clone(),
            None => vec![p.clone()],
        }
    }

    /// The filesystem path where the content of the file at `p` can be read.
    pub fn content_path(&self, p: &BundlePath) -> PathBuf {
        match &self.source {
            Source::Dir(root) => root.join(std::ffi::OsStr::from_bytes(p.as_bytes())),
            Source::Store(store) => match self.get(p) {
                Some(e) => store.path(&e.hash),
                None => store.dir.path().join("absent"),
            },
        }
    }
}

/// Walk `root` (which must be a directory) without following symlinks. `label` names the tree
/// in progress reports. Unix sockets are left out and listed in [`Tree::sockets`], or with
/// `fail_on_sockets` refused naming the first one. Extended attributes are read as `xattrs` says.
///
/// Three phases: the walk lists every entry with its metadata ([`Walk`]), files with several
/// names are grouped by inode ([`group_hardlinks`]), and file contents are hashed
/// ([`hash_files`]).
pub fn scan(
    root: &Path,
    label: &str,
    fail_on_sockets: bool,
    xattrs: &crate::xattr::Carry,
    progress: &Progress,
) -> Result<Tree> {
    let md = fs::symlink_metadata(root).map_err(Error::io(root))?;
    if !md.is_dir() {
        return Err(Error::Io {
            path: root.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    progress.begin(&format!("scan {label}"), "entries", None, None);
    let mut walk =
        Walk { fail_on_sockets, xattrs, progress, entries: Vec::new(), inodes: BTreeMap::new(), sockets: Vec::new() };
    walk.run(root)?;
    let Walk { mut entries, inodes, mut sockets, .. } = walk;
    group_hardlinks(&mut entries, &inodes);
    hash_files(root, label, &mut entries, progress)?;
    let mut tree = Tree::from_entries(Source::Dir(root.to_path_buf()), entries);
    sockets.sort();
    tree.sockets = sockets;
    Ok(tree)
}

/// A walk of a directory tree, and what it found so far.
struct Walk<'a> {
    fail_on_sockets: bool,
    xattrs: &'a crate::xattr::Carry,
    progress: &'a Progress,
    /// Entries in walk order, not yet hashed.
    entries: Vec<ScanEntry>,
    /// (dev, ino) -> indexes into `entries`, for files with nlink > 1
    inodes: BTreeMap<(u64, u64), Vec<usize>>,
    sockets: Vec<BundlePath>,
}

impl Walk<'_> {
    /// Walk the tree under `root`, each directory's names in byte order (the top-level state
    /// directory left out).
    fn run(&mut self, root: &Path) -> Result<()> {
        // (filesystem path, bundle path or None for the root)
        let mut stack: Vec<(PathBuf, Option<BundlePath>)> = vec![(root.to_path_buf(), None)];
        while let Some((dir, rel)) = stack.pop() {
            let mut names: Vec<std::ffi::OsString> = Vec::new();
            for d in fs::read_dir(&dir).map_err(Error::io(&dir))? {
                names.push(d.map_err(Error::io(&dir))?.file_name());
            }
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                if rel.is_none() && name.as_bytes() == bundle::path::STATE_DIR {
                    continue;
                }
                let fsp = dir.join(&name);
                let path = match &rel {
                    None => BundlePath::new(name.as_bytes()),
                    Some(r) => r.join(name.as_bytes()),
                }
                .map_err(|source| Error::BadPath { path: fsp.clone(), source })?;
                if let Some(sub) = self.visit(fsp, path)? {
                    stack.push(sub);
                }
            }
        }
        Ok(())
    }

    /// Add the entry at `fsp` (bundle path `path`), or skip it if it is a socket; a directory is
    /// returned, to be walked.
    fn visit(&mut self, fsp: PathBuf, path: BundlePath) -> Result<Option<(PathBuf, Option<BundlePath>)>> {
        let md = fs::symlink_metadata(&fsp).map_err(Error::io(&fsp))?;
        let Some(ty) = entry_type(&fsp, &md)? else {
            if self.fail_on_sockets {
                return Err(Error::Io { path: fsp, source: socket_refused() });
            }
            self.sockets.push(path);
            return Ok(None);
        };
        let mtime_ns = md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec());
        let xattrs = crate::xattr::read(&fsp, &path.to_string(), self.xattrs).map_err(Error::io(&fsp))?;
        let meta = Meta { mode: md.mode() & 0o7777, uid: md.uid(), gid: md.gid(), mtime_ns, xattrs };
        let size = if ty == Type::File { md.len() } else { 0 };
        if ty == Type::File && md.nlink() > 1 {
            self.inodes.entry((md.dev(), md.ino())).or_default().push(self.entries.len());
        }
        let sub = (ty == Type::Dir).then(|| (fsp, Some(path.clone())));
        self.entries.push(ScanEntry { path, ty, meta, size, hash: Hash::default(), extents: None, primary: None });
        self.progress.advance(1, 0);
        Ok(sub)
    }
}

/// The type of the entry at `fsp` whose metadata is `md`; `None` for a Unix socket.
fn entry_type(fsp: &Path, md: &fs::Metadata) -> Result<Option<Type>> {
    let ft = md.file_type();
    let ty = if ft.is_file() {
        Type::File
    } else if ft.is_dir() {
        Type::Dir
    } else if ft.is_symlink() {
        let t = fs::read_link(fsp).map_err(Error::io(fsp))?;
        Type::Symlink(t.as_os_str().as_bytes().into())
    } else if ft.is_fifo() {
        Type::Fifo
    } else if ft.is_char_device() {
        Type::CharDev(md.rdev())
    } else if ft.is_block_device() {
        Type::BlockDev(md.rdev())
    } else if ft.is_socket() {
        return Ok(None);
    } else {
        return Err(Error::Unsupported { path: fsp.to_path_buf(), what: "this file type" });
    };
    Ok(Some(ty))
}

/// Mark every name of an inode with several names in the tree with its smallest path.
fn group_hardlinks(entries: &mut [ScanEntry], inodes: &BTreeMap<(u64, u64), Vec<usize>>) {
    for idxs in inodes.values() {
        if idxs.len() < 2 {
            continue;
        }
        let Some(primary) = idxs.iter().map(|&i| entries[i].path.clone()).min() else {
            continue;
        };
        for &i in idxs {
            entries[i].primary = Some(Box::new(primary.clone()));
        }
    }
}

/// Hash every file once per inode, in parallel and in place, and give each name of an inode the
/// result. Of several unreadable files, the first in walk order is reported.
fn hash_files(root: &Path, label: &str, entries: &mut [ScanEntry], progress: &Progress) -> Result<()> {
    let to_hash = |e: &ScanEntry| e.ty == Type::File && !e.is_secondary_link();
    let (files, total) =
        entries.iter().filter(|e| to_hash(e)).fold((0u64, 0u64), |(n, bytes), e| (n + 1, bytes + e.size));
    progress.begin(&format!("hash {label}"), "files", Some(files), Some(total));
    // Holes are found and skipped here: a sparse file costs its data, not its size. Results are
    // stored in the entries themselves (no second list of every file).
    let failed = entries
        .par_iter_mut()
        .enumerate()
        .filter(|(_, e)| to_hash(e))
        .filter_map(|(i, e)| {
            let h = crate::sparse::hash_file(&root.join(std::ffi::OsStr::from_bytes(e.path.as_bytes())));
            progress.advance(1, e.size);
            match h {
                // The size as of the read (a file that grew since the walk is hashed as it is now).
                Ok((hash, size, extents)) => {
                    (e.hash, e.size, e.extents) = (hash, size, extents.map(Vec::into_boxed_slice));
                    None
                }
                Err(err) => Some((i, err)),
            }
        })
        .min_by_key(|(i, _)| *i);
    progress.end();
    if let Some((_, err)) = failed {
        return Err(err);
    }
    // The primaries of hard-link groups only.
    let by_primary: BTreeMap<BundlePath, Hashed> = entries
        .iter()
        .filter(|e| e.primary.as_deref() == Some(&e.path))
        .map(|e| (e.path.clone(), (e.hash, e.size, e.extents.clone())))
        .collect();
    for e in entries.iter_mut() {
        if e.is_secondary_link() {
            if let Some((h, s, x)) = e.primary.as_deref().and_then(|p| by_primary.get(p)) {
                (e.hash, e.size, e.extents) = (*h, *s, x.clone());
            }
        }
    }
    Ok(())
}

/// A file's digest, size and (if sparse) data extents, as [`crate::sparse::hash_file`] finds them.
type Hashed = (Hash, u64, Option<Box<[Extent]>>);

/// The error for a socket under `--fail-on-sockets`.
pub fn socket_refused() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "a Unix socket, which a bundle cannot carry: refused by --fail-on-sockets (without it, sockets are skipped with a warning)",
    )
}

/// BLAKE3 of a file.
pub fn hash_file(path: &Path) -> Result<Hash> {
    let f = fs::File::open(path).map_err(Error::io(path))?;
    // Reads through a 64 KiB buffer on the stack: most files are small, and zeroing a large heap
    // buffer per file cost more than hashing them (100,000 files: 1.6 s of 9.8 s CPU in memset).
    let mut h = blake3::Hasher::new();
    h.update_reader(f).map_err(Error::io(path))?;
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn scan_sorts_groups_hardlinks_and_skips_state_dir() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let r = d.path();
        fs::create_dir(r.join("a"))?;
        fs::write(r.join("a/x"), b"hello")?;
        fs::hard_link(r.join("a/x"), r.join("b"))?;
        fs::write(r.join("a-c"), b"")?;
        symlink("a/x", r.join("l"))?;
        fs::create_dir(r.join(".ferry"))?;
        fs::write(r.join(".ferry/state"), b"s")?;
        let t = scan(r, "test", false, &crate::xattr::Carry::Auto, &Progress::silent())?;
        let names: Vec<String> = t.entries.iter().map(|e| e.path.display()).collect();
        assert_eq!(names, ["a", "a-c", "a/x", "b", "l"]);
        let b = t.get(&BundlePath::new("b")?).ok_or("no b")?;
        assert_eq!(b.primary.as_deref(), Some(&BundlePath::new("a/x")?));
        assert!(b.is_secondary_link());
        assert_eq!(b.hash, Hash::of(b"hello"));
        assert_eq!(b.size, 5);
        assert_eq!(t.group_of(&BundlePath::new("a/x")?).len(), 2);
        assert_eq!(t.get(&BundlePath::new("l")?).ok_or("no l")?.ty, Type::Symlink(b"a/x".as_slice().into()));
        assert!(t.sockets.is_empty());
        Ok(())
    }

    #[test]
    fn sockets_are_skipped_and_listed_or_refused() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let r = d.path();
        fs::create_dir(r.join("run"))?;
        fs::write(r.join("run/file"), b"x")?;
        let _s1 = std::os::unix::net::UnixListener::bind(r.join("run/b.sock"))?;
        let _s2 = std::os::unix::net::UnixListener::bind(r.join("a.sock"))?;
        let t = scan(r, "test", false, &crate::xattr::Carry::Auto, &Progress::silent())?;
        let names: Vec<String> = t.entries.iter().map(|e| e.path.display()).collect();
        assert_eq!(names, ["run", "run/file"]);
        let socks: Vec<String> = t.sockets.iter().map(|p| p.display()).collect();
        assert_eq!(socks, ["a.sock", "run/b.sock"]);
        let e = scan(r, "test", true, &crate::xattr::Carry::Auto, &Progress::silent())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(".sock") && e.contains("socket") && e.contains("--fail-on-sockets"), "{e}");
        Ok(())
    }
}
