//! `ferry-build sign`: add signatures to a finished bundle without rebuilding it and without
//! reading its payload (bundle-format.md §3.4), or write a signing request for an offline signer.
//!
//! Only the head is read: the manifest member (hashed into the bundle id, and decoded to check
//! that it is a bundle worth signing) and the signature member (every signature in it checked).
//! The new file is the same manifest member, the new signature member, and the rest of the old
//! file (payload members and end marker) copied byte for byte from its old offset with
//! `std::io::copy` between two `File`s, which the kernel does with `copy_file_range` on Linux. It
//! is written to a temporary file created with `O_EXCL` beside FILE, synced, renamed over FILE,
//! and the directory synced: whenever the process dies, FILE is the old bundle or the new one,
//! both valid. Every signature is obtained and checked before the temporary file is created, so
//! a failing signer leaves nothing behind.
//!
//! Concurrent `sign`s of one file are serialised with `flock` on the file (re-opened if it was
//! replaced while waiting), so no signature is lost; the lock holder also removes temporary
//! files a killed `sign` left (`NAME.sign-<16 hex>.tmp`), which no later `sign` ever trips over.

use crate::error::{Error, Result};
use crate::signer::Signer;
use bundle::container::{self, Reader, MANIFEST_NAME, SIGNATURES_NAME};
use bundle::request::{DetachedSignature, SigningRequest, MAX_SIGNATURE_FILE};
use bundle::sig::{self, Signatures};
use bundle::{Hash, Limits, Manifest};
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What `ferry-build sign` adds to one bundle.
pub struct SignOptions {
    pub file: PathBuf,
    /// Signers run in order: key files, then commands.
    pub signers: Vec<Signer>,
    /// Detached signature files (`--import SIG`), from `ferry-build sign-request`.
    pub imports: Vec<PathBuf>,
}

/// The `--json` report of `sign`.
#[derive(Debug, Serialize)]
pub struct SignReport {
    pub ferry_report: u32,
    pub command: &'static str,
    pub bundle: String,
    pub bundle_id: String,
    pub version: u64,
    /// Key ids whose signatures this run added.
    pub added: Vec<String>,
    /// Key ids that had already signed (nothing added for them).
    pub already_signed: Vec<String>,
    /// Every signer of the bundle now, sorted by key bytes.
    pub signers: Vec<String>,
    /// Whether FILE was written (false when nothing was added).
    pub rewritten: bool,
    pub bytes: u64,
    /// Leftover temporary files of a killed `sign` that were removed.
    pub removed_stale: Vec<String>,
}

/// The `--json` report of `sign --export-request`.
#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub ferry_report: u32,
    pub command: &'static str,
    pub bundle: String,
    pub bundle_id: String,
    pub version: u64,
    pub request: String,
    /// Size of the request file.
    pub request_bytes: u64,
    /// Size of the manifest member it carries (the rest is 150 to 157 bytes).
    pub manifest_bytes: u64,
    pub bundle_bytes: u64,
    /// Who signed the bundle already.
    pub signers: Vec<String>,
}

/// A bundle's head as `sign` reads it.
struct Head {
    manifest_bytes: Vec<u8>,
    sigs: Signatures,
    id: Hash,
    manifest: Manifest,
    /// Offset of the first byte after the signature member (and its padding).
    rest: u64,
    len: u64,
}

/// Refuse a split bundle: its parts are byte ranges of one file, and re-signing rewrites the
/// head, so the bundle is signed before it is split.
fn refuse_split(file: &Path) -> Result<()> {
    let refuse = |why: String| Error::Refused { path: file.to_path_buf(), why };
    let first_part = crate::split::part_name(file, 0);
    if fs::symlink_metadata(file).is_err() && fs::symlink_metadata(&first_part).is_ok() {
        return Err(refuse(format!(
            "is a split bundle ({} ...): sign the bundle before splitting it (or join the parts with `cat {}.0* > {}` \
             and sign that)",
            first_part.display(),
            file.display(),
            file.display()
        )));
    }
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some((base, n)) = name.rsplit_once('.') {
        if n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()) {
            let base = file.with_file_name(base);
            if fs::symlink_metadata(crate::split::part_name(&base, 0)).is_ok() && fs::symlink_metadata(&base).is_err() {
                return Err(refuse(format!(
                    "is a part of the split bundle {}: sign the bundle before splitting it",
                    base.display()
                )));
            }
        }
    }
    Ok(())
}

/// Open `file` (a regular file, not followed if a symlink) and lock it exclusively; if another
/// `sign` replaced it while this one waited, lock the new file instead.
fn open_locked(file: &Path) -> Result<File> {
    for _ in 0..100 {
        let md = fs::symlink_metadata(file).map_err(Error::io(file))?;
        if !md.file_type().is_file() {
            return Err(Error::Refused { path: file.to_path_buf(), why: "is not a regular file".into() });
        }
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(file)
            .map_err(Error::io(file))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::Io { path: file.to_path_buf(), source: e.into() })?;
        let now = fs::symlink_metadata(file).map_err(Error::io(file))?;
        let have = f.metadata().map_err(Error::io(file))?;
        if !have.file_type().is_file() {
            return Err(Error::Refused { path: file.to_path_buf(), why: "is not a regular file".into() });
        }
        if now.dev() == have.dev() && now.ino() == have.ino() {
            return Ok(f);
        }
    }
    Err(Error::Refused { path: file.to_path_buf(), why: "keeps being replaced while waiting for its lock".into() })
}

/// Read and check the head of the open bundle `f`: canonical framing, the manifest decodes
/// within the default limits, every signature present verifies.
fn read_head(file: &Path, f: &File) -> Result<Head> {
    let bad = |source: bundle::Error| Error::Bundle { path: file.to_path_buf(), source };
    let len = f.metadata().map_err(Error::io(file))?.len();
    let limits = Limits::default();
    let mut r = Reader::new(BufReader::new(f), limits.clone());
    let (manifest_bytes, sb) = r.head().map_err(bad)?;
    let rest = r.offset();
    let id = Manifest::id(&manifest_bytes);
    let sigs = Signatures::decode(&sb, limits.max_signatures).map_err(bad)?;
    sigs.verify(&id).map_err(|e| Error::Refused {
        path: file.to_path_buf(),
        why: format!("{e}: refusing to add signatures to a bundle with an invalid one"),
    })?;
    let manifest = Manifest::decode(&manifest_bytes, &limits).map_err(bad)?;
    Ok(Head { manifest_bytes, sigs, id, manifest, rest, len })
}

fn ids(sigs: &Signatures) -> Vec<String> {
    sigs.entries().iter().map(|(k, _)| sig::key_id(k)).collect()
}

/// Read a detached signature file, check it is for bundle `id` and verifies.
fn import(path: &Path, id: &Hash, bundle: &Path) -> Result<([u8; 32], [u8; 64], String)> {
    let mut text = String::new();
    File::open(path).and_then(|f| f.take(MAX_SIGNATURE_FILE + 1).read_to_string(&mut text)).map_err(Error::io(path))?;
    if text.len() as u64 > MAX_SIGNATURE_FILE {
        return Err(Error::Refused { path: path.to_path_buf(), why: "is too large to be a signature file".into() });
    }
    let d = DetachedSignature::parse(&text).map_err(|source| Error::Bundle { path: path.to_path_buf(), source })?;
    if d.bundle_id != *id {
        return Err(Error::Refused {
            path: path.to_path_buf(),
            why: format!(
                "is a signature for bundle {}, not for {} (bundle {id}): it was made from another bundle's signing \
                 request",
                d.bundle_id,
                bundle.display()
            ),
        });
    }
    let pk = d.verify().map_err(|source| Error::Bundle { path: path.to_path_buf(), source })?;
    Ok((d.key, d.signature, pk.id))
}

/// Add the signatures of `o` to its bundle. Notes (a key that already signed, stale files
/// removed) go to `note`.
pub fn sign(o: &SignOptions, note: &mut dyn FnMut(String)) -> Result<SignReport> {
    let file = &o.file;
    refuse_split(file)?;
    let f = open_locked(file)?;
    let removed_stale = remove_stale(file);
    for s in &removed_stale {
        note(format!("removed {s}, left by an interrupted `ferry-build sign`"));
    }
    let head = read_head(file, &f)?;
    let message = sig::signing_message(&head.id);
    let mut sigs = head.sigs.clone();
    let (mut added, mut already) = (Vec::new(), Vec::new());
    let mut add = |key: [u8; 32], s: [u8; 64], id: String, note: &mut dyn FnMut(String)| {
        if sigs.insert(key, s) {
            added.push(id);
        } else {
            note(format!("key {id} already signed {}: nothing to add", file.display()));
            already.push(id);
        }
    };
    for signer in &o.signers {
        let (pk, s) = signer.sign(&message)?;
        add(pk.bytes, s, pk.id, note);
    }
    for path in &o.imports {
        let (key, s, id) = import(path, &head.id, file)?;
        add(key, s, id, note);
    }
    let max = Limits::default().max_signatures;
    if sigs.len() > max {
        return Err(Error::Refused {
            path: file.to_path_buf(),
            why: format!("would have {} signatures; a bundle holds at most {max}", sigs.len()),
        });
    }
    let mut report = SignReport {
        ferry_report: 1,
        command: "sign",
        bundle: file.display().to_string(),
        bundle_id: head.id.to_hex(),
        version: head.manifest.version,
        added: added.clone(),
        already_signed: already,
        signers: ids(&sigs),
        rewritten: false,
        bytes: head.len,
        removed_stale,
    };
    if !added.is_empty() {
        report.bytes = rewrite(file, &f, &head, &sigs)?;
        report.rewritten = true;
    }
    Ok(report)
}

/// Name of a temporary file of `sign` beside `file`.
fn temp_name(file: &Path, tag: u64) -> PathBuf {
    let mut s = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    s.push(format!(".sign-{tag:016x}.tmp"));
    file.with_file_name(s)
}

/// Remove `NAME.sign-<16 hex>.tmp` files beside `file` (call with the lock held: no other `sign`
/// of this file is writing one). Returns the names removed.
fn remove_stale(file: &Path) -> Vec<String> {
    let Some(name) = file.file_name().map(|n| n.to_string_lossy().into_owned()) else { return Vec::new() };
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!("{name}.sign-");
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else { return removed };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(tag) = n.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else { continue };
        if tag.len() != 16 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let p = dir.join(&n);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_file()) && fs::remove_file(&p).is_ok() {
            removed.push(p.display().to_string());
        }
    }
    removed
}

/// Write the bundle with signature member `sigs` next to `file` and rename it over `file`.
fn rewrite(file: &Path, old: &File, head: &Head, sigs: &Signatures) -> Result<u64> {
    let sbytes = sigs.encode();
    if sbytes.len() as u64 > container::MAX_SIGNATURES_BYTES {
        return Err(Error::Refused { path: file.to_path_buf(), why: "signature member too large".into() });
    }
    let mut new_head = Vec::with_capacity(head.manifest_bytes.len() + 4096);
    container::write_member(&mut new_head, MANIFEST_NAME, &head.manifest_bytes).map_err(Error::io(file))?;
    container::write_member(&mut new_head, SIGNATURES_NAME, &sbytes).map_err(Error::io(file))?;
    let mode = old.metadata().map_err(Error::io(file))?.permissions().mode() & 0o7777;
    let (tmp, mut out) = create_temp(file, mode)?;
    let result = (|| -> io::Result<u64> {
        out.write_all(&new_head)?;
        let mut src = old;
        src.seek(SeekFrom::Start(head.rest))?;
        let want = head.len - head.rest;
        // File to File: copy_file_range on Linux (no payload passes through user space).
        let copied = io::copy(&mut src, &mut out)?;
        if copied != want {
            return Err(io::Error::other(format!(
                "copied {copied} bytes of payload, expected {want}: the file changed while it was signed"
            )));
        }
        out.sync_all()?;
        Ok(new_head.len() as u64 + copied)
    })();
    drop(out);
    let written = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Write { path: file.to_path_buf(), source: e });
        }
    };
    if let Err(e) = fs::rename(&tmp, file) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Write { path: file.to_path_buf(), source: e });
    }
    sync_dir(file)?;
    Ok(written)
}

/// A new temporary file beside `file` (`O_EXCL`, never following a planted symlink).
fn create_temp(file: &Path, mode: u32) -> Result<(PathBuf, File)> {
    for _ in 0..16 {
        let tmp = temp_name(file, rand::random::<u64>());
        match OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(libc::O_NOFOLLOW).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::Io { path: tmp, source: e }),
        }
    }
    Err(Error::Refused { path: file.to_path_buf(), why: "cannot create a temporary file beside it".into() })
}

/// fsync the directory holding `file`, so its rename is durable.
fn sync_dir(file: &Path) -> Result<()> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io(dir))
}

/// `sign --export-request REQ`: write the signing request of `file` (its manifest member, the
/// bundle id, the message) to `out`, which must not exist.
pub fn export_request(file: &Path, out: &Path) -> Result<ExportReport> {
    refuse_split(file)?;
    let f = File::open(file).map_err(Error::io(file))?;
    let head = read_head(file, &f)?;
    let request = SigningRequest::new(head.manifest_bytes.clone());
    let bytes = request.encode();
    write_new(out, &bytes)?;
    Ok(ExportReport {
        ferry_report: 1,
        command: "sign",
        bundle: file.display().to_string(),
        bundle_id: head.id.to_hex(),
        version: head.manifest.version,
        request: out.display().to_string(),
        request_bytes: bytes.len() as u64,
        manifest_bytes: head.manifest_bytes.len() as u64,
        bundle_bytes: head.len,
        signers: ids(&head.sigs),
    })
}

/// Create `path` (never overwriting: `O_EXCL`), write `data`, sync it and its directory.
pub(crate) fn write_new(path: &Path, data: &[u8]) -> Result<()> {
    let mut f =
        OpenOptions::new().write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW).open(path).map_err(
            |e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Error::Exists { path: path.to_path_buf() }
                } else {
                    Error::Io { path: path.to_path_buf(), source: e }
                }
            },
        )?;
    if let Err(e) = f.write_all(data).and_then(|_| f.sync_all()) {
        let _ = fs::remove_file(path);
        return Err(Error::Io { path: path.to_path_buf(), source: e });
    }
    sync_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_are_recognised_exactly() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let b = d.path().join("b.ferry");
        let stale = temp_name(&b, 0x0123_4567_89ab_cdef);
        assert_eq!(stale.file_name().and_then(|n| n.to_str()), Some("b.ferry.sign-0123456789abcdef.tmp"));
        fs::write(&stale, b"x")?;
        let keep = [d.path().join("b.ferry.sign-xyz.tmp"), d.path().join("c.ferry.sign-0123456789abcdef.tmp")];
        for k in &keep {
            fs::write(k, b"x")?;
        }
        assert_eq!(remove_stale(&b), vec![stale.display().to_string()]);
        assert!(!stale.exists() && keep.iter().all(|k| k.exists()));
        Ok(())
    }

    #[test]
    fn split_bundles_are_refused() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let b = d.path().join("b.ferry");
        fs::write(d.path().join("b.ferry.000"), b"x")?;
        for f in [b.clone(), d.path().join("b.ferry.000")] {
            let e = refuse_split(&f).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("sign the bundle before splitting it"), "{e}");
        }
        fs::write(&b, b"x")?;
        assert!(refuse_split(&b).is_ok());
        Ok(())
    }
}
