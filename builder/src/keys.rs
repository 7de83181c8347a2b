//! Key generation and loading. Secret keys are created with mode 0600 from the start (never
//! briefly world-readable), never overwrite an existing file, and are encrypted with a
//! passphrase unless asked not to (`protect`).

use crate::error::{Error, Result};
use crate::protect;
use bundle::sig::{PublicKey, SecretKey};
use rand::RngCore;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Create `path` (never overwriting anything: `O_EXCL`) with `mode`, write `text` and sync it.
pub(crate) fn create_new(path: &Path, mode: u32, text: &str) -> Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Exists { path: path.to_path_buf() }
        } else {
            Error::Io { path: path.to_path_buf(), source: e }
        }
    })?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(Error::io(path))
}

/// How `keygen` stores the secret key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Encrypted with a passphrase (from the environment or the terminal, see `protect`).
    Passphrase,
    /// The plain `ferry-secret-key-v1` form, for automation.
    Unencrypted,
}

/// Generate a key pair into `NAME.secret` (mode 0600) and `NAME.pub`. Refuses to overwrite.
/// Returns the two paths and the key id.
pub fn keygen(name: &Path, protection: Protection) -> Result<(PathBuf, PathBuf, String)> {
    let secret_path = with_suffix(name, ".secret");
    let pub_path = with_suffix(name, ".pub");
    for p in [&secret_path, &pub_path] {
        if fs::symlink_metadata(p).is_ok() {
            return Err(Error::Exists { path: p.clone() });
        }
    }
    // Ask for the passphrase before anything is written.
    let pass = match protection {
        Protection::Passphrase => Some(protect::new_passphrase(&secret_path)?),
        Protection::Unencrypted => None,
    };
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| Error::Io { path: secret_path.clone(), source: std::io::Error::other(e.to_string()) })?;
    let sk = SecretKey::from_seed(seed);
    seed.fill(0);
    let text = match &pass {
        Some(p) => protect::seal(&sk, p).map_err(|why| Error::Passphrase { path: secret_path.clone(), why })?,
        None => sk.to_text(),
    };
    create_new(&secret_path, 0o600, &text)?;
    if let Err(e) = create_new(&pub_path, 0o644, &sk.public().to_text()) {
        let _ = fs::remove_file(&secret_path);
        return Err(e);
    }
    Ok((secret_path, pub_path, sk.public().id))
}

/// Load a secret key file, plain or passphrase-protected (asking for the passphrase).
pub fn load_secret(path: &Path) -> Result<SecretKey> {
    let text = fs::read_to_string(path).map_err(Error::io(path))?;
    protect::load(path, &text)
}

/// Encrypt an existing secret key file with a (new) passphrase, replacing it atomically: a plain
/// key becomes protected, a protected one gets a new passphrase (`FERRY_NEW_PASSPHRASE` or the
/// terminal; the old one is asked for as by [`load_secret`]). Returns the key id.
pub fn protect_key(path: &Path) -> Result<String> {
    let key = load_secret(path)?;
    let pass = match std::env::var("FERRY_NEW_PASSPHRASE") {
        Ok(p) if p.is_empty() => {
            return Err(Error::Passphrase { path: path.to_path_buf(), why: "empty FERRY_NEW_PASSPHRASE".into() })
        }
        Ok(p) => p,
        Err(_) => protect::new_passphrase(path)?,
    };
    let text = protect::seal(&key, &pass).map_err(|why| Error::Passphrase { path: path.to_path_buf(), why })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".ferry-key").tempfile_in(&dir).map_err(Error::io(&dir))?;
    // tempfile creates the file 0600; write, sync, then rename over the old file.
    tmp.write_all(text.as_bytes()).and_then(|_| tmp.as_file().sync_all()).map_err(Error::io(tmp.path()))?;
    tmp.persist(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e.error })?;
    fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(Error::io(&dir))?;
    Ok(key.public().id)
}

/// Load a public key file.
pub fn load_public(path: &Path) -> Result<PublicKey> {
    let text = fs::read_to_string(path).map_err(Error::io(path))?;
    PublicKey::parse(&text).map_err(|source| Error::Key { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_modes_and_refusal() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let name = d.path().join("k");
        let (s, p, id) = keygen(&name, Protection::Unencrypted)?;
        assert_eq!(fs::metadata(&s)?.permissions().mode() & 0o777, 0o600);
        let sk = load_secret(&s)?;
        let pk = load_public(&p)?;
        assert_eq!(sk.public(), pk);
        assert_eq!(pk.id, id);
        assert!(matches!(keygen(&name, Protection::Unencrypted), Err(Error::Exists { .. })));
        // An existing .pub alone also refuses, and leaves no .secret behind.
        let other = d.path().join("o");
        fs::write(with_suffix(&other, ".pub"), "x")?;
        assert!(keygen(&other, Protection::Unencrypted).is_err());
        assert!(!with_suffix(&other, ".secret").exists());
        Ok(())
    }
}
