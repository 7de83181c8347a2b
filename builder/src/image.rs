//! Image inputs: `--old` and `--new` may be a directory, a `.tar` or a `.tar.zst`, so a build
//! host can diff image tarballs without unpacking them (which would need root to keep owners and
//! device nodes).
//!
//! An archive is read once, front to back. Ownership, modes and times come from the archive
//! (numeric uid/gid; pax `mtime` with nanoseconds when present), tar link members become hardlink
//! groups, and directories missing from the archive but implied by a member's path get mode 0755,
//! owner 0:0 and mtime 0. Names are normalised (`./` prefixes, `.` and empty components dropped);
//! absolute names and `..` components are refused with the member's name; the root (`.`, `./`)
//! and anything under a top-level `.ferry` (the applier's state directory) are not entries.
//! Regular files are spooled into a [`ContentStore`] (one file per distinct content), which gives
//! the encoder the random access a delta needs with bounded memory.

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::scan::{ContentStore, ScanEntry, Source, Tree, Type};
use crate::tarstream::Member;
use bundle::{BundlePath, Extent, Hash, Meta};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What an input path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Dir,
    Tar,
    TarZst,
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

fn has_suffix(p: &Path, suf: &str) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(suf))
}

/// Tell a directory from a tar or zstd-compressed tar: by content (zstd magic, `ustar` magic),
/// else by name (`.tar`, `.tar.zst`, `.tzst`).
pub fn input_kind(path: &Path) -> Result<InputKind> {
    let md = std::fs::metadata(path).map_err(Error::io(path))?;
    if md.is_dir() {
        return Ok(InputKind::Dir);
    }
    let mut head = Vec::with_capacity(512);
    File::open(path).and_then(|f| f.take(512).read_to_end(&mut head)).map_err(Error::io(path))?;
    if head.starts_with(&ZSTD_MAGIC) {
        return Ok(InputKind::TarZst);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Ok(InputKind::Tar);
    }
    if has_suffix(path, ".tar.zst") || has_suffix(path, ".tzst") {
        return Ok(InputKind::TarZst);
    }
    if has_suffix(path, ".tar") {
        return Ok(InputKind::Tar);
    }
    Err(Error::Usage(format!("{}: not a directory, a .tar or a .tar.zst", path.display())))
}

/// Scan an input of any kind. Archives are spooled into a content store created in
/// `store_parent` (shared by both inputs if `store` already holds one).
/// `label` names the input in progress reports. Sockets are skipped and listed in
/// [`Tree::sockets`], or with `fail_on_sockets` refused.
pub fn scan_input(
    path: &Path,
    label: &str,
    fail_on_sockets: bool,
    xattrs: &crate::xattr::Carry,
    store_parent: &Path,
    store: &mut Option<Arc<ContentStore>>,
    progress: &Progress,
) -> Result<Tree> {
    let kind = input_kind(path)?;
    if kind == InputKind::Dir {
        return crate::scan::scan(path, label, fail_on_sockets, xattrs, progress);
    }
    let st = match store {
        Some(s) => s.clone(),
        None => {
            let s = Arc::new(ContentStore::new_in(store_parent)?);
            *store = Some(s.clone());
            s
        }
    };
    let f = File::open(path).map_err(Error::io(path))?;
    let len = f.metadata().map_err(Error::io(path))?.len();
    progress.begin(&format!("read {label}"), "entries", None, Some(len));
    let f = Counting { inner: f, progress };
    let t = match kind {
        InputKind::TarZst => {
            let mut dec = zstd::stream::read::Decoder::new(f).map_err(Error::io(path))?;
            // Archives made with `zstd --long` use windows over the default limit.
            dec.window_log_max(31).map_err(Error::io(path))?;
            scan_tar(dec, path, st, fail_on_sockets, xattrs, progress)
        }
        _ => scan_tar(BufReader::with_capacity(1 << 20, f), path, st, fail_on_sockets, xattrs, progress),
    };
    progress.end();
    t
}

/// A reader that reports the bytes read through it.
struct Counting<'a, R> {
    inner: R,
    progress: &'a Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(0, n as u64);
        Ok(n)
    }
}

fn archive_err(archive: &Path, entry: &[u8], what: impl Into<String>) -> Error {
    Error::Archive {
        archive: archive.to_path_buf(),
        entry: String::from_utf8_lossy(entry).into_owned(),
        what: what.into(),
    }
}

/// Normalise a member name: `None` for the root. Refuses absolute names and `..`.
pub fn normalize(raw: &[u8]) -> std::result::Result<Option<Vec<u8>>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("absolute member name");
    }
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err("member name with a '..' component"),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Parse a pax time (`seconds[.fraction]`, possibly negative) into nanoseconds.
fn pax_time_ns(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut f = frac.as_bytes().iter().take(9).fold(0i64, |a, &b| a * 10 + i64::from(b - b'0'));
    for _ in frac.len().min(9)..9 {
        f *= 10;
    }
    let ns = secs.checked_mul(1_000_000_000)?.checked_add(f)?;
    Some(if neg { -ns } else { ns })
}

/// The `GNU.sparse.*` records of a member's PAX header (GNU tar's sparse formats 0.0, 0.1 and
/// 1.0 with `--format=posix`, and bsdtar's default): the member's data is then the file's data
/// stream (1.0: after a map in its first blocks), its real name and size are records.
#[derive(Default, Debug)]
struct PaxSparse {
    /// `GNU.sparse.major` (1 for format 1.0).
    major: Option<u64>,
    name: Option<Vec<u8>>,
    /// `GNU.sparse.size` (0.x) or `GNU.sparse.realsize` (1.0).
    size: Option<u64>,
    /// 0.1: `GNU.sparse.map`; 0.0: the `GNU.sparse.offset`/`numbytes` records in order.
    map: Vec<u64>,
}

/// At most this many map numbers (two per extent) in a PAX sparse map, so that a hostile archive
/// cannot make the builder allocate without bound; the policy keeps at most
/// [`crate::sparse::MAX_EXTENTS`] anyway.
const MAX_MAP_NUMBERS: usize = 1 << 22;

impl PaxSparse {
    fn of(records: &[crate::pax::Record]) -> std::result::Result<PaxSparse, String> {
        let mut p = PaxSparse::default();
        let num = |v: &[u8]| -> std::result::Result<u64, String> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| "invalid number in a GNU.sparse record".to_string())
        };
        for (k, v) in records {
            match &k[..] {
                b"GNU.sparse.major" => p.major = Some(num(v)?),
                b"GNU.sparse.name" => p.name = Some(v.clone()),
                b"GNU.sparse.size" | b"GNU.sparse.realsize" => p.size = Some(num(v)?),
                b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => p.map.push(num(v)?),
                b"GNU.sparse.map" => {
                    for v in v.split(|&b| b == b',') {
                        p.map.push(num(v)?);
                    }
                }
                _ => {}
            }
            if p.map.len() > MAX_MAP_NUMBERS {
                return Err("sparse map too long".into());
            }
        }
        Ok(p)
    }

    fn is_sparse(&self) -> bool {
        self.size.is_some() && (self.major.is_some() || !self.map.is_empty())
    }

    /// The real size and the raw data extents (format 1.0: read from the start of the member's
    /// data, which is left at the data stream). Refuses a map that is unsorted, overlapping,
    /// beyond the size, or that does not account for exactly the member's data bytes.
    fn map(&self, m: &mut dyn Read, stored: u64) -> io::Result<(u64, Vec<Extent>)> {
        let size = self.size.ok_or_else(|| io::Error::other("no real size"))?;
        let (numbers, consumed) = if self.major == Some(1) {
            // "N\n" then N pairs "OFFSET\nLEN\n", padded with zeros to a 512-byte block.
            let mut consumed = 0u64;
            let mut line = || -> io::Result<u64> {
                let mut v = Vec::new();
                loop {
                    let mut b = [0u8; 1];
                    m.read_exact(&mut b)?;
                    consumed += 1;
                    if b[0] == b'\n' {
                        break;
                    }
                    if v.len() > 20 {
                        return Err(io::Error::other("map number too long"));
                    }
                    v.push(b[0]);
                }
                std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).ok_or_else(|| io::Error::other("bad map"))
            };
            let n = line()?;
            if n > (MAX_MAP_NUMBERS / 2) as u64 {
                return Err(io::Error::other("sparse map too long"));
            }
            let mut v = Vec::new();
            for _ in 0..2 * n {
                v.push(line()?);
            }
            let pad = (512 - consumed % 512) % 512;
            io::copy(&mut (&mut *m).take(pad), &mut io::sink())?;
            (v, consumed + pad)
        } else {
            (self.map.clone(), 0)
        };
        if numbers.len() % 2 != 0 {
            return Err(io::Error::other("odd number of map entries"));
        }
        let raw = numbers.chunks_exact(2).map(|p| Extent { offset: p[0], len: p[1] });
        let data =
            stored.checked_sub(consumed).ok_or_else(|| io::Error::other("map does not match the member's data"))?;
        let extents = check_map(size, raw, data).map_err(io::Error::other)?;
        Ok((size, extents))
    }
}

/// The data extents of a sparse map (zero-length ones dropped) of a file of `size` bytes whose
/// member stores `data` bytes. Refuses a map that is unsorted, overlapping, beyond the size, or
/// that does not account for exactly the member's data bytes.
fn check_map(
    size: u64,
    map: impl IntoIterator<Item = Extent>,
    data: u64,
) -> std::result::Result<Vec<Extent>, &'static str> {
    let mut extents = Vec::new();
    let (mut end, mut sum) = (0u64, 0u64);
    for e in map {
        match e.offset.checked_add(e.len).filter(|&x| x <= size) {
            Some(x) if e.offset >= end => end = x,
            _ => return Err("map unsorted, overlapping or beyond the size"),
        }
        sum += e.len;
        if e.len > 0 {
            extents.push(e);
        }
    }
    if sum != data {
        return Err("map does not match the member's data");
    }
    Ok(extents)
}

/// Read a tar stream into a tree whose file contents live in `store`.
///
/// Tar has no member type for a Unix socket (GNU tar and bsdtar leave sockets out with a
/// notice), but star's pax archives describe one as `SCHILY.filetype=socket`: such a member is
/// skipped and listed in [`Tree::sockets`], or with `fail_on_sockets` refused.
///
/// Three phases: each member in archive order becomes an entry ([`TarScan::add`]; hardlink
/// members are only noted), then the hardlinks are resolved into groups
/// ([`add_hardlink_groups`]), then the directories implied by the entries' paths are added
/// ([`add_implied_dirs`]).
pub fn scan_tar<R: Read>(
    reader: R,
    archive: &Path,
    store: Arc<ContentStore>,
    fail_on_sockets: bool,
    carry: &crate::xattr::Carry,
    progress: &Progress,
) -> Result<Tree> {
    let mut ar = crate::tarstream::Members::new(reader);
    let mut scan = TarScan {
        archive,
        store: &store,
        fail_on_sockets,
        carry,
        entries: BTreeMap::new(),
        links: Vec::new(),
        sockets: Vec::new(),
    };
    while let Some(m) = ar.next_member().map_err(|e| read_error(archive, e))? {
        progress.advance(1, 0);
        scan.add(&m, &mut ar.data())?;
    }
    let TarScan { mut entries, links, mut sockets, .. } = scan;
    add_hardlink_groups(archive, &mut entries, links)?;
    add_implied_dirs(archive, &mut entries)?;
    let mut tree = Tree::from_entries(Source::Store(store), entries.into_values().collect());
    sockets.sort();
    tree.sockets = sockets;
    Ok(tree)
}

fn read_error(archive: &Path, e: crate::tarstream::ReadError) -> Error {
    match e {
        crate::tarstream::ReadError::Io(e) => Error::Io { path: archive.to_path_buf(), source: e },
        crate::tarstream::ReadError::Bad { name, what } => archive_err(archive, &name, what),
    }
}

/// The members of an archive read so far, as [`scan_tar`] collects them.
struct TarScan<'a> {
    archive: &'a Path,
    store: &'a ContentStore,
    fail_on_sockets: bool,
    carry: &'a crate::xattr::Carry,
    entries: BTreeMap<BundlePath, ScanEntry>,
    /// Hardlink members, in archive order.
    links: Vec<Hardlink>,
    sockets: Vec<BundlePath>,
}

/// A hardlink member: resolved once the whole archive is read.
struct Hardlink {
    path: BundlePath,
    /// The normalised target name.
    target: BundlePath,
    /// The member's name as the archive has it, for errors.
    raw: Vec<u8>,
}

/// What a member's header type makes it.
enum MemberKind {
    Entry(Type),
    /// A hardlink, to this (normalised) name.
    Link(BundlePath),
}

/// A member's mode, owner and mtime before the pax `mtime` record is applied.
struct HeaderMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
}

/// A pax record of the member; an empty value counts as absent (it means the header's value).
fn nonempty_record<'a>(pax: &'a [crate::pax::Record], key: &[u8]) -> Option<&'a [u8]> {
    crate::pax::last(pax, key).filter(|v| !v.is_empty())
}

impl TarScan<'_> {
    /// Add member `m`, whose data `data` reads: as an entry, as a hardlink to resolve later, as
    /// a skipped socket, or not at all (the root, the state directory).
    fn add(&mut self, m: &Member, data: &mut dyn Read) -> Result<()> {
        let archive = self.archive;
        let pax_sparse = PaxSparse::of(&m.records).map_err(|w| archive_err(archive, &m.name, w))?;
        // A PAX sparse member (GNU format 0.1 or 1.0) is stored as `GNUSparseFile.N/NAME`; its
        // real name is a record of its own.
        let raw = pax_sparse.name.clone().unwrap_or_else(|| m.name.clone());
        let bad = |what: &str| archive_err(archive, &raw, what);
        let Some(path) = self.entry_path(&raw)? else {
            return Ok(());
        };
        if crate::pax::last(&m.records, b"SCHILY.filetype") == Some(b"socket") {
            if self.fail_on_sockets {
                return Err(bad(&crate::scan::socket_refused().to_string()));
            }
            self.sockets.push(path);
            return Ok(());
        }
        let head = header_meta(m, &bad)?;
        let ty = match member_kind(m, &bad)? {
            MemberKind::Entry(ty) => ty,
            MemberKind::Link(target) => {
                self.links.push(Hardlink { path, target, raw });
                return Ok(());
            }
        };
        let meta = self.meta(head, &ty, &path, &m.records, &bad)?;
        let (hash, size, extents) = self.content(&ty, m, &pax_sparse, &raw, data, &bad)?;
        let extents = extents.map(Vec::into_boxed_slice);
        let e = ScanEntry { path: path.clone(), ty, meta, size, hash, extents, primary: None };
        match self.entries.get_mut(&path) {
            // A directory listed twice (e.g. appended archives): the last metadata wins.
            Some(prev) if prev.ty == Type::Dir && e.ty == Type::Dir => *prev = e,
            Some(_) => return Err(bad("appears twice in the archive")),
            None => {
                self.entries.insert(path, e);
            }
        }
        Ok(())
    }

    /// The bundle path of the member named `raw`; `None` for the root itself and for anything
    /// under a top-level `.ferry` (the applier's state directory).
    fn entry_path(&self, raw: &[u8]) -> Result<Option<BundlePath>> {
        let Some(name) = normalize(raw).map_err(|w| archive_err(self.archive, raw, w))? else {
            return Ok(None);
        };
        if name == bundle::path::STATE_DIR || name.starts_with(&[bundle::path::STATE_DIR, b"/"].concat()) {
            return Ok(None);
        }
        let path = BundlePath::new(&name[..]).map_err(|source| Error::BadPath {
            path: PathBuf::from(format!("{}: entry {}", self.archive.display(), String::from_utf8_lossy(raw))),
            source,
        })?;
        Ok(Some(path))
    }

    /// An entry's metadata: the header's, with the pax `mtime` (nanoseconds) over the header's
    /// and the extended attributes of the pax records that `carry` keeps.
    fn meta(
        &self,
        head: HeaderMeta,
        ty: &Type,
        path: &BundlePath,
        pax: &[crate::pax::Record],
        bad: &dyn Fn(&str) -> Error,
    ) -> Result<Meta> {
        let mut mtime_ns = head.mtime_ns;
        if let Some(v) = nonempty_record(pax, b"mtime") {
            mtime_ns = pax_time_ns(v).ok_or_else(|| bad("invalid pax mtime"))?;
        }
        let attrs = crate::paxattr::xattrs(pax).map_err(|w| bad(&w))?;
        Ok(Meta {
            // Symlink permissions are meaningless on Linux and always 0777 on disk.
            mode: if matches!(ty, Type::Symlink(_)) { 0o777 } else { head.mode },
            uid: head.uid,
            gid: head.gid,
            mtime_ns,
            xattrs: crate::xattr::intern_pairs(attrs, &path.to_string(), self.carry),
        })
    }

    /// Spool a regular file's data into the store: its hash, size and (sparse) extents. Other
    /// types have no content.
    fn content(
        &self,
        ty: &Type,
        m: &Member,
        pax_sparse: &PaxSparse,
        raw: &[u8],
        data: &mut dyn Read,
        bad: &dyn Fn(&str) -> Error,
    ) -> Result<(Hash, u64, Option<Vec<Extent>>)> {
        let what = format!("{}: entry {}", self.archive.display(), String::from_utf8_lossy(raw));
        let stored = m.size;
        Ok(match (ty, &m.gnu_sparse) {
            (Type::File, Some(_)) if pax_sparse.is_sparse() => {
                return Err(bad("sparse map both in the GNU header and in pax records"));
            }
            // An old GNU sparse member ('S'): the map is in its header and extension blocks.
            (Type::File, Some((size, map))) => {
                let raw_extents =
                    check_map(*size, map.iter().copied(), stored).map_err(|e| bad(&format!("sparse map: {e}")))?;
                let hash = self.store.add_sparse(data, *size, &raw_extents, &what)?;
                (hash, *size, crate::sparse::normalize(*size, &raw_extents))
            }
            (Type::File, None) if pax_sparse.is_sparse() => {
                let (size, raw_extents) = pax_sparse.map(data, stored).map_err(|e| bad(&format!("sparse map: {e}")))?;
                let hash = self.store.add_sparse(data, size, &raw_extents, &what)?;
                (hash, size, crate::sparse::normalize(size, &raw_extents))
            }
            (Type::File, None) => {
                let (hash, size) = self.store.add(data, &what)?;
                (hash, size, None)
            }
            _ => (Hash::default(), 0, None),
        })
    }
}

/// A member's mode and owner (pax `uid` and `gid` over the header's) and its header mtime.
fn header_meta(m: &Member, bad: &dyn Fn(&str) -> Error) -> Result<HeaderMeta> {
    let h = &m.header;
    let pax = &m.records[..];
    let num = |r: io::Result<u64>, what: &str| -> Result<u32> {
        r.ok().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| bad(&format!("invalid {what}")))
    };
    let mode = h.mode().map_err(|_| bad("invalid mode"))? & 0o7777;
    let pax_num = |k: &str| nonempty_record(pax, k.as_bytes()).map(|v| std::str::from_utf8(v).map(str::parse::<u64>));
    let uid = match pax_num("uid") {
        Some(Ok(Ok(v))) => num(Ok(v), "pax uid")?,
        Some(_) => return Err(bad("invalid pax uid")),
        None => num(h.uid(), "uid")?,
    };
    let gid = match pax_num("gid") {
        Some(Ok(Ok(v))) => num(Ok(v), "pax gid")?,
        Some(_) => return Err(bad("invalid pax gid")),
        None => num(h.gid(), "gid")?,
    };
    let secs = h.mtime().map_err(|_| bad("invalid mtime"))?;
    let mtime_ns =
        i64::try_from(secs).ok().and_then(|s| s.checked_mul(1_000_000_000)).ok_or_else(|| bad("invalid mtime"))?;
    Ok(HeaderMeta { mode, uid, gid, mtime_ns })
}

/// What member `m` is, by its header type (and link name).
fn member_kind(m: &Member, bad: &dyn Fn(&str) -> Error) -> Result<MemberKind> {
    let h = &m.header;
    let dev = || -> Result<u64> {
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        Ok(libc::makedev(major, minor))
    };
    let ty = match h.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => Type::File,
        tar::EntryType::Directory => Type::Dir,
        tar::EntryType::Symlink => match &m.link {
            Some(t) if !t.is_empty() => Type::Symlink(t.as_slice().into()),
            _ => return Err(bad("symlink without a target")),
        },
        tar::EntryType::Link => {
            let target = m.link.clone().unwrap_or_default();
            let norm = normalize(&target)
                .map_err(|w| bad(&format!("hardlink target: {w}")))?
                .ok_or_else(|| bad("hardlink to the root"))?;
            let t = BundlePath::new(&norm[..]).map_err(|e| bad(&format!("hardlink target: {e}")))?;
            return Ok(MemberKind::Link(t));
        }
        tar::EntryType::Char => Type::CharDev(dev()?),
        tar::EntryType::Block => Type::BlockDev(dev()?),
        tar::EntryType::Fifo => Type::Fifo,
        other => return Err(bad(&format!("unsupported member type {:?}", other.as_byte() as char))),
    };
    Ok(MemberKind::Entry(ty))
}

/// Hardlink groups: every link resolves (through earlier links) to a regular file member, and
/// each name of a group becomes an entry with the file's content and the group's smallest name
/// as its primary.
fn add_hardlink_groups(
    archive: &Path,
    entries: &mut BTreeMap<BundlePath, ScanEntry>,
    links: Vec<Hardlink>,
) -> Result<()> {
    let mut link_of: BTreeMap<BundlePath, BundlePath> = BTreeMap::new();
    let mut groups: BTreeMap<BundlePath, Vec<BundlePath>> = BTreeMap::new();
    for Hardlink { path: name, target, raw } in links {
        let bad = |what: &str| archive_err(archive, &raw, what);
        let real = link_of.get(&target).cloned().unwrap_or(target);
        match entries.get(&real) {
            Some(e) if e.ty == Type::File => {}
            Some(_) => return Err(bad("hardlink to something that is not a regular file")),
            None => return Err(bad(&format!("hardlink to {real}, which is not an earlier member"))),
        }
        if entries.contains_key(&name) || link_of.contains_key(&name) || name == real {
            return Err(bad("appears twice in the archive"));
        }
        link_of.insert(name.clone(), real.clone());
        groups.entry(real.clone()).or_insert_with(|| vec![real]).push(name);
    }
    for members in groups.values_mut() {
        members.sort();
        members.dedup();
    }
    for (real, members) in groups {
        let Some(src) = entries.get(&real).cloned() else {
            continue;
        };
        let primary = members.first().cloned().unwrap_or_else(|| real.clone());
        for p in members {
            entries.insert(p.clone(), ScanEntry { path: p, primary: Some(Box::new(primary.clone())), ..src.clone() });
        }
    }
    Ok(())
}

/// Directories implied by a member's path but not in the archive: mode 0755, owner 0:0, mtime 0.
/// A path under a member that is not a directory is refused.
fn add_implied_dirs(archive: &Path, entries: &mut BTreeMap<BundlePath, ScanEntry>) -> Result<()> {
    let implied = Meta { mode: 0o755, ..Meta::default() };
    let paths: Vec<BundlePath> = entries.keys().cloned().collect();
    for p in &paths {
        for a in p.ancestors() {
            match entries.get(&a) {
                Some(e) if e.ty == Type::Dir => {}
                Some(e) => {
                    return Err(archive_err(
                        archive,
                        p.as_bytes(),
                        format!("is under {a}, which is a {} in the archive", e.ty.name()),
                    ))
                }
                None => {
                    entries.insert(
                        a.clone(),
                        ScanEntry {
                            path: a,
                            ty: Type::Dir,
                            meta: implied,
                            size: 0,
                            hash: Hash::default(),
                            extents: None,
                            primary: None,
                        },
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(normalize(b"./a/b/"), Ok(Some(b"a/b".to_vec())));
        assert_eq!(normalize(b"././a//./b"), Ok(Some(b"a/b".to_vec())));
        assert_eq!(normalize(b"./"), Ok(None));
        assert_eq!(normalize(b"."), Ok(None));
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"a/../../etc").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time_ns(b"1700000000"), Some(1_700_000_000_000_000_000));
        assert_eq!(pax_time_ns(b"1.5"), Some(1_500_000_000));
        assert_eq!(pax_time_ns(b"1.1234567891"), Some(1_123_456_789));
        assert_eq!(pax_time_ns(b"-2.25"), Some(-2_250_000_000));
        assert_eq!(pax_time_ns(b"x"), None);
    }

    fn header(ty: tar::EntryType, path: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(ty);
        h.set_path(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        h.set_size(size);
        h.set_mode(0o640);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        h
    }

    fn tar_of(members: &[(tar::EntryType, &str, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (ty, path, data, link) in members {
            let mut h = header(*ty, path, data.len() as u64);
            if !link.is_empty() {
                h.set_link_name(link).unwrap_or_else(|e| panic!("{link}: {e}"));
            }
            h.set_cksum();
            b.append(&h, *data).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        b.into_inner().unwrap_or_else(|e| panic!("{e}"))
    }

    fn scan_bytes(bytes: &[u8]) -> Result<Tree> {
        let store = Arc::new(ContentStore::new_in(&std::env::temp_dir())?);
        scan_tar(bytes, Path::new("test.tar"), store, false, &crate::xattr::Carry::Auto, &Progress::silent())
    }

    /// One PAX record: its length (counting itself), the key and the value.
    fn pax_record(k: &str, v: &str) -> String {
        let body = format!(" {k}={v}\n");
        let mut n = body.len() + 1;
        while format!("{n}{body}").len() != n {
            n += 1;
        }
        format!("{n}{body}")
    }

    #[test]
    fn pax_sparse_members_become_sparse_entries() -> std::result::Result<(), Box<dyn std::error::Error>> {
        use tar::EntryType as T;
        const K: u64 = 1 << 10;
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut dense = vec![0u8; 1 << 20];
        dense[..4096].copy_from_slice(&data[..4096]);
        dense[512 << 10..(512 << 10) + 4096].copy_from_slice(&data[4096..]);
        let want = Some(vec![Extent { offset: 0, len: 4 * K }, Extent { offset: 512 * K, len: 4 * K }]);
        // Format 0.1: the map is a record.
        let v01: String = [
            pax_record("GNU.sparse.size", "1048576"),
            pax_record("GNU.sparse.numblocks", "2"),
            pax_record("GNU.sparse.name", "f"),
            pax_record("GNU.sparse.map", "0,4096,524288,4096"),
        ]
        .concat();
        // Format 1.0: the map opens the member's data, padded to a block.
        let v10: String = [
            pax_record("GNU.sparse.major", "1"),
            pax_record("GNU.sparse.minor", "0"),
            pax_record("GNU.sparse.name", "g"),
            pax_record("GNU.sparse.realsize", "1048576"),
        ]
        .concat();
        let mut data10 = b"2\n0\n4096\n524288\n4096\n".to_vec();
        data10.resize(512, 0);
        data10.extend_from_slice(&data);
        let bytes = tar_of(&[
            (T::XHeader, "./PaxHeaders/f", v01.as_bytes(), ""),
            (T::Regular, "./GNUSparseFile.1/f", &data, ""),
            (T::XHeader, "./PaxHeaders/g", v10.as_bytes(), ""),
            (T::Regular, "./GNUSparseFile.1/g", &data10, ""),
        ]);
        let t = scan_bytes(&bytes)?;
        for name in ["f", "g"] {
            let e = t.get(&BundlePath::new(name)?).ok_or(name)?;
            assert_eq!((e.size, e.hash, e.extents.as_deref()), (1 << 20, Hash::of(&dense), want.as_deref()), "{name}");
            assert_eq!(std::fs::read(t.content_path(&e.path))?, dense, "{name}: stored content");
        }
        // Maps that lie are refused, naming the member.
        for (map, why) in [("524288,4096,0,4096", "unsorted"), ("0,4096,2048,4096", "overlap"), ("0,4096", "short")] {
            let v: String = [
                pax_record("GNU.sparse.size", "1048576"),
                pax_record("GNU.sparse.name", "f"),
                pax_record("GNU.sparse.map", map),
            ]
            .concat();
            let bytes = tar_of(&[
                (T::XHeader, "./PaxHeaders/f", v.as_bytes(), ""),
                (T::Regular, "./GNUSparseFile.1/f", &data, ""),
            ]);
            let e = scan_bytes(&bytes).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("sparse map") && e.contains("f"), "{why}: {e}");
        }
        Ok(())
    }

    /// A member as a raw header block, its data and the padding to a block (no checks, so a test
    /// can write what the `tar` crate's builder would not).
    fn raw_member(h: &tar::Header, data: &[u8]) -> Vec<u8> {
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(data);
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    fn pax_header(name: &str, records: &[u8]) -> Vec<u8> {
        let mut h = header(tar::EntryType::XHeader, name, records.len() as u64);
        h.set_cksum();
        raw_member(&h, records)
    }

    fn error_of(bytes: &[u8]) -> String {
        scan_bytes(bytes).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn pax_values_with_newlines_and_nuls_are_kept_whole() -> std::result::Result<(), Box<dyn std::error::Error>> {
        use crate::pax::encode;
        use tar::EntryType as T;
        // As GNU tar --acls writes it: one entry per line.
        let acl = "user::rw-\nuser:1000:rw-\ngroup::r--\nmask::rw-\nother::r--\n";
        let bin: &[u8] = b"\0\n1 k=v\n\x00\xff\n";
        let records = [
            encode(b"SCHILY.acl.access", acl.as_bytes()),
            encode(b"SCHILY.xattr.user.bin", bin),
            encode(b"mtime", b"1700000000.25"),
            encode(b"uid", b"4242"),
        ]
        .concat();
        let bytes = tar_of(&[(T::XHeader, "./PaxHeaders/f", &records, ""), (T::Regular, "./f", b"data", "")]);
        let t = scan_bytes(&bytes)?;
        let e = t.get(&BundlePath::new("f")?).ok_or("f")?;
        assert_eq!((e.meta.uid, e.meta.mtime_ns, e.hash), (4242, 1_700_000_000_250_000_000, Hash::of(b"data")));
        let id = e.meta.xattrs.ok_or("no attributes")?;
        let got = crate::xattr::with_sets(|sets| sets.get(id as usize).cloned()).ok_or("no such set")?;
        let acl_value = crate::paxattr::acl_from_text(acl, false)?.ok_or("minimal ACL")?;
        let got: Vec<(&[u8], &[u8])> = got.iter().map(|x| (&x.name[..], &x.value[..])).collect();
        assert_eq!(got, [(&b"system.posix_acl_access"[..], &acl_value[..]), (b"user.bin", bin)]);

        // A broken record is refused, naming the member it describes... or the header itself.
        let mut bytes = pax_header("./PaxHeaders/g", b"30 SCHILY.xattr.user.a=x\n");
        bytes.extend(tar_of(&[(T::Regular, "./g", b"", "")]));
        let e = error_of(&bytes);
        assert!(e.contains("PaxHeaders/g") && e.contains("past the end"), "{e}");
        Ok(())
    }

    #[test]
    fn extension_headers_describe_the_next_member() -> std::result::Result<(), Box<dyn std::error::Error>> {
        use crate::pax::encode;
        use tar::EntryType as T;
        let long = format!("{}/file", "d".repeat(150));
        let target = format!("{}/target", "t".repeat(150));
        let mut bytes = Vec::new();
        // A global header (git archive writes a comment) applies to every member that follows.
        let g = [encode(b"comment", b"abc\n"), encode(b"gid", b"77")].concat();
        let mut h = header(T::XGlobalHeader, "pax_global_header", g.len() as u64);
        h.set_cksum();
        bytes.extend(raw_member(&h, &g));
        for (ty, data) in [(T::GNULongName, &long), (T::GNULongLink, &target)] {
            let data = format!("{data}\0");
            let mut h = header(ty, "././@LongLink", data.len() as u64);
            h.set_cksum();
            bytes.extend(raw_member(&h, data.as_bytes()));
        }
        let mut h = header(T::Symlink, "short", 0);
        h.set_cksum();
        bytes.extend(raw_member(&h, b""));
        // pax `path` wins over the header's name; pax `size` is the data's length when the
        // header's field holds 0.
        bytes.extend(pax_header("./PaxHeaders/p", &[encode(b"path", b"real"), encode(b"size", b"3")].concat()));
        let mut h = header(T::Regular, "placeholder", 0);
        h.set_cksum();
        bytes.extend(raw_member(&h, b"abc"));
        bytes.extend(tar_of(&[(T::Regular, "last", b"z", "")]));
        let t = scan_bytes(&bytes)?;
        let get = |p: &str| t.get(&BundlePath::new(p).unwrap_or_else(|e| panic!("{e}"))).cloned();
        let link = get(&long).ok_or("long name")?;
        assert_eq!((link.ty, link.meta.gid), (Type::Symlink(target.into_bytes().into()), 77));
        let real = get("real").ok_or("pax path")?;
        assert_eq!((real.hash, real.size, real.meta.gid), (Hash::of(b"abc"), 3, 77));
        assert_eq!(get("last").ok_or("last")?.hash, Hash::of(b"z"));
        assert!(get("placeholder").is_none());

        // Sizes that disagree, a pax header with no member after it, a global header naming a
        // member, data cut short: refused.
        let mut bytes = pax_header("./PaxHeaders/s", &encode(b"size", b"0"));
        bytes.extend(tar_of(&[(T::Regular, "smuggler", b"hidden", "")]));
        let e = error_of(&bytes);
        assert!(e.contains("smuggler") && e.contains("disagrees"), "{e}");
        let e = error_of(&pax_header("./PaxHeaders/x", &encode(b"mtime", b"1")));
        assert!(e.contains("not followed by a member"), "{e}");
        let mut h = header(T::XGlobalHeader, "g", 0);
        let p = encode(b"path", b"everything");
        h.set_size(p.len() as u64);
        h.set_cksum();
        let e = error_of(&raw_member(&h, &p));
        assert!(e.contains("global") && e.contains("path"), "{e}");
        let bytes = tar_of(&[(T::Regular, "cut", &[7u8; 2000], "")]);
        let e = error_of(&bytes[..1024]);
        assert!(e.contains("cut") && e.contains("ends inside"), "{e}");
        Ok(())
    }

    #[test]
    fn old_gnu_sparse_members_use_their_map() -> std::result::Result<(), Box<dyn std::error::Error>> {
        // Six extents: four in the header, two in an extension block.
        const K: u64 = 1 << 10;
        let map: Vec<Extent> = (0..6).map(|i| Extent { offset: i * 128 * K, len: 4 * K }).collect();
        let size = 1 << 20;
        let chunks: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i + 1; 4096]).collect();
        let mut dense = vec![0u8; size as usize];
        for (e, c) in map.iter().zip(&chunks) {
            dense[e.offset as usize..e.end() as usize].copy_from_slice(c);
        }
        let sparse_member = |map: &[Extent], ext_blocks: usize| -> Vec<u8> {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::GNUSparse);
            h.set_path("s").unwrap_or_else(|e| panic!("{e}"));
            h.set_size(chunks.len() as u64 * 4096);
            h.set_mode(0o600);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1);
            let mut ext = tar::GnuExtSparseHeader::new();
            if let Some(gnu) = h.as_gnu_mut() {
                gnu.set_real_size(size);
                gnu.set_is_extended(ext_blocks > 0);
                for (s, e) in gnu.sparse.iter_mut().zip(map) {
                    s.set_offset(e.offset);
                    s.set_length(e.len);
                }
            }
            for (s, e) in ext.sparse_mut().iter_mut().zip(map.iter().skip(4)) {
                s.set_offset(e.offset);
                s.set_length(e.len);
            }
            h.set_cksum();
            let mut v = h.as_bytes().to_vec();
            for _ in 0..ext_blocks {
                v.extend_from_slice(ext.as_bytes());
            }
            v.extend(chunks.concat());
            v.extend(tar_of(&[(tar::EntryType::Regular, "after", b"a", "")]));
            v
        };
        let t = scan_bytes(&sparse_member(&map, 1))?;
        let e = t.get(&BundlePath::new("s")?).ok_or("s")?;
        assert_eq!(
            (e.size, e.hash, e.extents.as_deref()),
            (size, Hash::of(&dense), crate::sparse::normalize(size, &map).as_deref())
        );
        assert!(e.extents.is_some());
        assert_eq!(std::fs::read(t.content_path(&e.path))?, dense);
        assert_eq!(t.get(&BundlePath::new("after")?).ok_or("after")?.hash, Hash::of(b"a"));
        // A map that does not account for the data is refused.
        let e = error_of(&sparse_member(&map[..4], 0));
        assert!(e.contains("\"s\"") && e.contains("sparse map"), "{e}");
        Ok(())
    }

    #[test]
    fn archive_members_become_entries() -> std::result::Result<(), Box<dyn std::error::Error>> {
        use tar::EntryType as T;
        let bytes = tar_of(&[
            (T::Directory, "./", b"", ""),
            (T::Regular, "./usr/bin/tool", b"#!/bin/sh\n", ""),
            (T::Link, "./usr/bin/alias", b"", "./usr/bin/tool"),
            (T::Link, "./a-first", b"", "usr/bin/alias"),
            (T::Symlink, "./usr/bin/sh", b"", "/bin/dash"),
            (T::Fifo, "./run/fifo", b"", ""),
            (T::Directory, "./etc/", b"", ""),
            (T::Regular, "./.ferry/state", b"x", ""),
        ]);
        let t = scan_bytes(&bytes)?;
        let names: Vec<String> = t.entries.iter().map(|e| e.path.display()).collect();
        assert_eq!(
            names,
            ["a-first", "etc", "run", "run/fifo", "usr", "usr/bin", "usr/bin/alias", "usr/bin/sh", "usr/bin/tool"]
        );
        let get = |p: &str| t.get(&BundlePath::new(p).unwrap_or_else(|e| panic!("{e}"))).cloned();
        let tool = get("usr/bin/tool").ok_or("tool")?;
        assert_eq!(tool.hash, Hash::of(b"#!/bin/sh\n"));
        assert_eq!(
            tool.meta,
            Meta { mode: 0o640, uid: 1000, gid: 100, mtime_ns: 1_700_000_000_000_000_000, xattrs: None }
        );
        assert_eq!(tool.primary.as_ref().map(|p| p.display()), Some("a-first".into()));
        assert_eq!(get("a-first").ok_or("a")?.hash, tool.hash);
        assert!(get("usr/bin/alias").ok_or("alias")?.is_secondary_link());
        assert_eq!(std::fs::read(t.content_path(&tool.path))?, b"#!/bin/sh\n");
        // Implied directories: 0755 root:root, mtime 0; listed ones keep their metadata.
        assert_eq!(get("usr").ok_or("usr")?.meta, Meta { mode: 0o755, ..Meta::default() });
        assert_eq!(get("etc").ok_or("etc")?.meta.uid, 1000);
        assert_eq!(get("usr/bin/sh").ok_or("sh")?.ty, Type::Symlink(b"/bin/dash".as_slice().into()));
        Ok(())
    }

    #[test]
    fn star_socket_members_are_skipped_or_refused() -> std::result::Result<(), Box<dyn std::error::Error>> {
        use tar::EntryType as T;
        let pax: &[u8] = b"26 SCHILY.filetype=socket\n";
        let bytes = tar_of(&[
            (T::Regular, "./run/file", b"x", ""),
            (T::XHeader, "./run/PaxHeaders/s", pax, ""),
            (T::Regular, "./run/s", b"", ""),
        ]);
        let t = scan_bytes(&bytes)?;
        let names: Vec<String> = t.entries.iter().map(|e| e.path.display()).collect();
        assert_eq!(names, ["run", "run/file"]);
        assert_eq!(t.sockets.iter().map(|p| p.display()).collect::<Vec<_>>(), ["run/s"]);
        let store = Arc::new(ContentStore::new_in(&std::env::temp_dir())?);
        let e =
            scan_tar(&bytes[..], Path::new("test.tar"), store, true, &crate::xattr::Carry::Auto, &Progress::silent())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
        assert!(e.contains("run/s") && e.contains("--fail-on-sockets"), "{e}");
        Ok(())
    }

    #[test]
    fn hostile_names_are_refused_naming_the_member() {
        use tar::EntryType as T;
        // The tar crate refuses to write such names; patch the name field of a valid header.
        for bad in ["../escape", "/etc/passwd", "a/../../b"] {
            let mut bytes = tar_of(&[(T::Regular, "placeholder", b"x", "")]);
            bytes[..100].fill(0);
            bytes[..bad.len()].copy_from_slice(bad.as_bytes());
            let sum: u32 = bytes[..512]
                .iter()
                .enumerate()
                .map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) })
                .sum();
            bytes[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            let e = scan_bytes(&bytes).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        let bytes = tar_of(&[(T::Link, "x", b"", "missing")]);
        let e = scan_bytes(&bytes).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("not an earlier member"), "{e}");
        let bytes = tar_of(&[(T::Regular, "f", b"1", ""), (T::Regular, "f/g", b"2", "")]);
        let e = scan_bytes(&bytes).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("f/g") && e.contains("which is a file"), "{e}");
    }
}
