//! Encrypted bundles on the target (bundle-format.md §4.10): the identities a target holds, opening
//! an encrypted bundle's sealed manifest after its signatures and trust were verified on the
//! public outer manifest, and decrypting frames between the hash-checked read and the decoder.
//!
//! Identities are looked for in `STATE/identity` (made by `ferry-apply identity`, so the secret
//! never leaves the target), in `STATE/identities/*.identity` (e.g. a fleet's shared identity from
//! `ferry-build recipient-gen`), and in the files given with `--identity`. State files are read
//! through the checked state directory (no symlink followed, ours, one link).

use crate::error::{Ctx, Error, Result};
use crate::fsx;
use crate::state::Dir;
use crate::verify::Head;
use bundle::seal::{Identity, Keystream, PayloadKey};
use bundle::Limits;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The target's own identity in the state directory.
pub const IDENTITY: &str = "identity";
/// More identities in the state directory: `identities/*.identity`.
pub const IDENTITIES: &str = "identities";
/// The largest identity file read.
const MAX_IDENTITY_FILE: u64 = 4096;

/// What a head of an encrypted bundle carries once it is opened: the payload key (frames are
/// decrypted with it), how many recipients the bundle has, and which of ours opened it.
#[derive(Clone, Debug)]
pub struct Opened {
    pub key: PayloadKey,
    pub recipients: usize,
    pub recipient_id: String,
}

/// The identities a command may use, and where it looked for them (for the refusal message).
#[derive(Default)]
pub struct Keyring {
    identities: Vec<Identity>,
    looked_in: Vec<String>,
    /// State files that could not be used (unsafe, unreadable, malformed), with why: they matter
    /// only to an encrypted bundle nothing else opens, whose refusal names them.
    unusable: Vec<String>,
}

impl Keyring {
    /// The `--identity` files, then `STATE/identity` and `STATE/identities/*.identity` if the
    /// state directory exists. An unreadable or malformed `--identity` file is an error (the
    /// operator named it); a state file that cannot be used is set aside with the reason (so it
    /// never stops the apply of a bundle that is not encrypted) and named if nothing opens an
    /// encrypted bundle.
    pub fn load(files: &[PathBuf], state: Option<&Dir>) -> Result<Keyring> {
        let mut k = Keyring::default();
        for f in files {
            k.looked_in.push(f.display().to_string());
            let mut text = String::new();
            std::fs::File::open(f)
                .and_then(|h| h.take(MAX_IDENTITY_FILE).read_to_string(&mut text))
                .ctx("read identity", f.display())?;
            let i = Identity::parse(&text).map_err(|e| Error::Usage(format!("--identity {}: {e}", f.display())))?;
            k.identities.push(i);
        }
        if let Some(d) = state {
            k.looked_in.push(d.show(IDENTITY));
            k.add_state_file(d, IDENTITY);
            k.looked_in.push(d.show(&format!("{IDENTITIES}/*.identity")));
            match d.subdir(IDENTITIES, false).and_then(|s| Ok((s.as_ref().map(Dir::list).transpose()?, s))) {
                Ok((Some(names), Some(sub))) => {
                    let mut names: Vec<String> = names.into_iter().filter(|n| n.ends_with(".identity")).collect();
                    names.sort();
                    for n in names {
                        k.add_state_file(&sub, &n);
                    }
                }
                Ok(_) => {}
                Err(e) => k.unusable.push(e.to_string()),
            }
        }
        Ok(k)
    }

    fn add_state_file(&mut self, d: &Dir, name: &str) {
        let parsed = d.read(name, MAX_IDENTITY_FILE).and_then(|b| {
            b.map(|b| {
                Identity::parse(&String::from_utf8_lossy(&b))
                    .map_err(|e| Error::CorruptState { path: d.show(name), why: e.to_string() })
            })
            .transpose()
        });
        match parsed {
            Ok(Some(i)) => self.identities.push(i),
            Ok(None) => {}
            Err(e) => self.unusable.push(e.to_string()),
        }
    }

    /// The payload key of `sealed` and the id of the recipient whose identity opened it.
    pub fn unwrap(&self, sealed: &bundle::seal::Sealed) -> Result<Option<(PayloadKey, String)>> {
        Ok(bundle::seal::unwrap(sealed, &self.identities)?.map(|(k, i)| (k, self.identities[i].recipient().id.clone())))
    }

    /// Where identities were looked for (and what could not be used), for messages.
    pub fn looked_in(&self) -> String {
        let mut s =
            if self.looked_in.is_empty() { "nowhere: give --identity FILE".into() } else { self.looked_in.join(", ") };
        if !self.unusable.is_empty() {
            s.push_str(&format!("; not usable: {}", self.unusable.join("; ")));
        }
        s
    }
}

/// How many recipients `h`'s bundle is encrypted to (whether or not it is opened); `None` for a
/// bundle that is not encrypted.
pub fn recipients(h: &Head) -> Option<usize> {
    h.opened.as_ref().map(|o| o.recipients).or_else(|| h.manifest.sealed.as_ref().map(|s| s.recipients.len()))
}

/// After [`crate::verify::head`] (signatures and trust checked on the outer manifest): open an
/// encrypted bundle with one of `keys` and continue with its inner manifest, checked like any
/// manifest (bounded decode, structure, apply script) and against the outer one. A bundle that is
/// not encrypted, or one already opened, is returned as it is. No matching identity:
/// [`Error::NoIdentity`].
pub fn open(mut h: Head, keys: &Keyring, limits: &Limits) -> Result<Head> {
    let Some(sealed) = h.manifest.sealed.as_ref() else { return Ok(h) };
    let n = sealed.recipients.len();
    let Some((key, recipient_id)) = keys.unwrap(sealed)? else {
        return Err(Error::NoIdentity { recipients: n, looked_in: keys.looked_in() });
    };
    let (inner, _) = bundle::seal::open(&h.manifest, &key, limits)?;
    bundle::script::validate(&inner)?;
    h.manifest = inner;
    h.opened = Some(Opened { key, recipients: n, recipient_id });
    Ok(h)
}

/// Whether one of `keys` opens `m`, an encrypted bundle's outer manifest (any other manifest:
/// true).
pub fn can_open(m: &bundle::Manifest, keys: &Keyring) -> bool {
    match m.sealed.as_ref() {
        None => true,
        Some(s) => matches!(bundle::seal::unwrap(s, &keys.identities), Ok(Some(_))),
    }
}

/// Frame `index` as stored, decrypted as it is read if the bundle is encrypted: the one adapter
/// between the hash-checked frame reader and the zstd decoder.
pub struct FrameReader<R> {
    inner: R,
    keystream: Option<Keystream>,
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(k) = &mut self.keystream {
            k.apply(&mut buf[..n]);
        }
        Ok(n)
    }
}

/// The reader of frame `index` of `h`'s bundle over `inner` (its stored bytes, in order from the
/// first): decrypting if `h` is an opened encrypted bundle, else `inner` unchanged.
pub fn frame_reader<R: Read>(inner: R, h: &Head, index: usize) -> FrameReader<R> {
    FrameReader { inner, keystream: h.opened.as_ref().map(|o| o.key.frame_keystream(index as u64)) }
}

/// `ferry-apply identity`: the target's identity in `STATE/identity`, created (mode 0600, a new
/// file that never replaces one) if there is none. Returns it and whether it was created.
pub fn ensure_identity(state: &Dir) -> Result<(Identity, bool)> {
    if let Some(b) = state.read(IDENTITY, MAX_IDENTITY_FILE)? {
        let i = Identity::parse(&String::from_utf8_lossy(&b))
            .map_err(|e| Error::CorruptState { path: state.show(IDENTITY), why: e.to_string() })?;
        return Ok((i, false));
    }
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .ctx("read random bytes", "/dev/urandom")?;
    let identity = Identity::from_secret(secret);
    secret.fill(0);
    let tmp = format!("{IDENTITY}.tmp");
    // A leftover temporary (crash) is removed, never written through.
    match fsx::unlink_at(state.fd(), tmp.as_bytes(), false) {
        Err(e) if fsx::errno(&e) != Some(rustix::io::Errno::NOENT) => return Err(e).ctx("remove", state.show(&tmp)),
        _ => {}
    }
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = fsx::create_file_at(state.fd(), tmp.as_bytes())?;
        f.write_all(identity.to_text().as_bytes())?;
        f.sync_all()
    };
    write().ctx("write", state.show(&tmp))?;
    match fsx::rename_noreplace(state.fd(), tmp.as_bytes(), state.fd(), IDENTITY.as_bytes()) {
        Ok(()) => {}
        Err(e) if fsx::errno(&e) == Some(rustix::io::Errno::EXIST) => {
            // Another run made one meanwhile: that one is the target's identity.
            let _ = fsx::unlink_at(state.fd(), tmp.as_bytes(), false);
            return ensure_identity(state);
        }
        Err(e) => return Err(e).ctx("create", state.show(IDENTITY)),
    }
    state.sync()?;
    Ok((identity, true))
}

/// Write the recipient line of `identity` to `out` (`identity --out FILE`).
pub fn write_recipient(identity: &Identity, out: &Path) -> Result<()> {
    std::fs::write(out, identity.recipient().to_text()).ctx("write recipient", out.display())
}

/// The report of `ferry-apply identity` (its `--json` body).
#[derive(Debug, serde::Serialize)]
pub struct IdentityReport {
    pub recipient_id: String,
    /// The recipient line (`ferry-recipient-v1 <id> <hex>`): what `build --encrypt-to` reads.
    pub recipient: String,
    /// Where the identity is (the secret itself is never printed).
    pub identity: String,
    /// Made by this run (else it existed).
    pub created: bool,
    /// `--out`, if given.
    pub written_to: Option<String>,
}

/// `ferry-apply identity --target DIR [--state-dir S] [--out FILE]`.
pub fn identity_command(o: &crate::apply::Options, out: Option<&Path>) -> Result<IdentityReport> {
    // The target must exist (the state directory's missing parents are created only below it).
    fsx::open_dir_path(&o.target).ctx("open target", o.target.display())?;
    let state = Dir::open_state(&crate::apply::state_path(o), true)?
        .ok_or_else(|| Error::Internal("state directory not created".into()))?;
    let (identity, created) = ensure_identity(&state)?;
    if let Some(p) = out {
        write_recipient(&identity, p)?;
    }
    Ok(IdentityReport {
        recipient_id: identity.recipient().id.clone(),
        recipient: identity.recipient().to_text().trim_end().to_string(),
        identity: state.show(IDENTITY),
        created,
        written_to: out.map(|p| p.display().to_string()),
    })
}
