//! Key generation and loading. Secret keys are created with mode 0600 from the start (never
//! briefly world-readable) and never overwrite an existing file.

use crate::error::{Error, Result};
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

/// Create `path` (refusing an existing one) with `mode` from the start, write `text`, fsync.
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

/// Generate a key pair into `NAME.secret` (mode 0600) and `NAME.pub`. Refuses to overwrite.
/// Returns the two paths and the key id.
pub fn keygen(name: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let secret_path = with_suffix(name, ".secret");
    let pub_path = with_suffix(name, ".pub");
    for p in [&secret_path, &pub_path] {
        if fs::symlink_metadata(p).is_ok() {
            return Err(Error::Exists { path: p.clone() });
        }
    }
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| Error::Io { path: secret_path.clone(), source: std::io::Error::other(e.to_string()) })?;
    let sk = SecretKey::from_seed(seed);
    seed.fill(0);
    create_new(&secret_path, 0o600, &sk.to_text())?;
    if let Err(e) = create_new(&pub_path, 0o644, &sk.public().to_text()) {
        let _ = fs::remove_file(&secret_path);
        return Err(e);
    }
    Ok((secret_path, pub_path, sk.public().id))
}

/// Load a secret key file.
pub fn load_secret(path: &Path) -> Result<SecretKey> {
    let text = fs::read_to_string(path).map_err(Error::io(path))?;
    SecretKey::parse(&text).map_err(|source| Error::Key { path: path.to_path_buf(), source })
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
        let (s, p, id) = keygen(&name)?;
        assert_eq!(fs::metadata(&s)?.permissions().mode() & 0o777, 0o600);
        let sk = load_secret(&s)?;
        let pk = load_public(&p)?;
        assert_eq!(sk.public(), pk);
        assert_eq!(pk.id, id);
        assert!(matches!(keygen(&name), Err(Error::Exists { .. })));
        // An existing .pub alone also refuses, and leaves no .secret behind.
        let other = d.path().join("o");
        fs::write(with_suffix(&other, ".pub"), "x")?;
        assert!(keygen(&other).is_err());
        assert!(!with_suffix(&other, ".secret").exists());
        Ok(())
    }
}
