//! Encrypted bundles (`build --encrypt-to`, `recipient-gen`; bundle-format.md §4.10).
//!
//! After the frames are encoded, each stored frame is XORed in place (in the frame store) with
//! its ChaCha20 keystream under a fresh payload key K, and the manifest's frame hashes become
//! those of the stored ciphertext. The finished manifest is checked and encoded as usual (the
//! inner manifest), encrypted under K, and K wrapped for every recipient; the public outer
//! manifest that carries it is what is signed and written. Randomness comes from the OS, so an
//! encrypted bundle is never byte-identical to another build of the same trees, even with
//! `SOURCE_DATE_EPOCH` (an unencrypted one is).

use crate::error::{Error, Result};
use crate::keys;
use bundle::seal::{Identity, PayloadKey, Recipient};
use bundle::{Frame, Hash, Manifest};
use rand::RngCore;
use rayon::prelude::*;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What sealing a bundle needs: the recipients and a fresh payload key.
pub struct Sealing {
    pub recipients: Vec<Recipient>,
    key: PayloadKey,
}

fn random(what: &Path) -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| Error::Io { path: what.to_path_buf(), source: std::io::Error::other(e.to_string()) })?;
    Ok(b)
}

/// Load the `--encrypt-to` recipient files (each recipient once) and draw the payload key;
/// `None` without recipients (an unencrypted bundle).
pub fn prepare(paths: &[PathBuf]) -> Result<Option<Sealing>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let limit = bundle::Limits::default().max_recipients;
    if paths.len() > limit {
        return Err(Error::Usage(format!("{} --encrypt-to recipients, at most {limit}", paths.len())));
    }
    let mut recipients: Vec<Recipient> = Vec::new();
    for p in paths {
        let text = fs::read_to_string(p).map_err(Error::io(p))?;
        let r = Recipient::parse(&text).map_err(|source| Error::Key { path: p.clone(), source })?;
        if recipients.iter().any(|x| x.public == r.public) {
            return Err(Error::Usage(format!("recipient {} is given twice with --encrypt-to", r.id)));
        }
        recipients.push(r);
    }
    let key = PayloadKey::from_bytes(random(&paths[0])?);
    Ok(Some(Sealing { recipients, key }))
}

impl Sealing {
    /// Encrypt the stored frames in place (`stored`: offset and size in `store` of each manifest
    /// frame, in manifest order) and put the BLAKE3 of each ciphertext into `frames`. Frames are
    /// processed in parallel, each in 1 MiB blocks.
    pub fn encrypt_frames(&self, store: &File, stored: &[(u64, u64)], frames: &mut [Frame]) -> Result<()> {
        let hint = PathBuf::from("frame store");
        let hashes: Vec<std::io::Result<Hash>> = stored
            .par_iter()
            .enumerate()
            .map(|(i, &(offset, size))| {
                let mut ks = self.key.frame_keystream(i as u64);
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; size.min(1 << 20) as usize];
                let mut done = 0u64;
                while done < size {
                    let n = (size - done).min(buf.len() as u64) as usize;
                    store.read_exact_at(&mut buf[..n], offset + done)?;
                    ks.apply(&mut buf[..n]);
                    store.write_all_at(&buf[..n], offset + done)?;
                    h.update(&buf[..n]);
                    done += n as u64;
                }
                Ok(Hash::from(h.finalize()))
            })
            .collect();
        for (f, h) in frames.iter_mut().zip(hashes) {
            f.hash = h.map_err(Error::io(&hint))?;
        }
        Ok(())
    }

    /// The public outer manifest of `inner`, whose member bytes (checked and encoded) are
    /// `inner_member`: encrypted under the payload key, the key wrapped for every recipient.
    pub fn seal(&self, inner: &Manifest, inner_member: &[u8]) -> Result<Manifest> {
        let mut with_ephemerals = Vec::new();
        for r in &self.recipients {
            with_ephemerals.push((r.clone(), random(Path::new("ephemeral key"))?));
        }
        let sealed = bundle::seal::seal(inner_member, &self.key, &with_ephemerals).map_err(Error::Invalid)?;
        Ok(bundle::seal::outer(inner, sealed))
    }
}

/// `ferry-build recipient-gen --out NAME`: a new identity in `NAME.identity` (mode 0600) and its
/// recipient in `NAME.recipient`. Refuses to overwrite. Returns the two paths and the id.
pub fn recipient_gen(name: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let with = |suffix: &str| {
        let mut s = name.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let (identity_path, recipient_path) = (with(".identity"), with(".recipient"));
    for p in [&identity_path, &recipient_path] {
        if fs::symlink_metadata(p).is_ok() {
            return Err(Error::Exists { path: p.clone() });
        }
    }
    let mut secret = random(&identity_path)?;
    let identity = Identity::from_secret(secret);
    secret.fill(0);
    keys::create_new(&identity_path, 0o600, &identity.to_text())?;
    if let Err(e) = keys::create_new(&recipient_path, 0o644, &identity.recipient().to_text()) {
        let _ = fs::remove_file(&identity_path);
        return Err(e);
    }
    Ok((identity_path, recipient_path, identity.recipient().id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn recipient_gen_writes_a_private_identity_and_its_recipient() -> std::result::Result<(), Box<dyn std::error::Error>>
    {
        let d = tempfile::tempdir()?;
        let (i, r, id) = recipient_gen(&d.path().join("fleet"))?;
        assert_eq!(fs::metadata(&i)?.permissions().mode() & 0o777, 0o600);
        let identity = Identity::parse(&fs::read_to_string(&i)?)?;
        let recipient = Recipient::parse(&fs::read_to_string(&r)?)?;
        assert_eq!((identity.recipient(), &recipient.id), (&recipient, &id));
        assert!(matches!(recipient_gen(&d.path().join("fleet")), Err(Error::Exists { .. })));
        // Loading: each recipient once.
        assert!(prepare(&[r.clone(), r.clone()]).is_err_and(|e| e.is_usage()));
        assert_eq!(prepare(&[r])?.map(|s| s.recipients.len()), Some(1));
        assert!(prepare(&[])?.is_none());
        Ok(())
    }

    #[test]
    fn frames_are_encrypted_in_place_and_hashed_as_stored() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let (_, r, _) = recipient_gen(&d.path().join("k"))?;
        let s = prepare(&[r])?.ok_or("no sealing")?;
        let mut f = tempfile::tempfile_in(d.path())?;
        let plain = b"frame zero|frame one, longer".to_vec();
        f.write_all(&plain)?;
        let stored = [(0u64, 10u64), (10, plain.len() as u64 - 10)];
        let mut frames: Vec<Frame> = stored
            .iter()
            .map(|&(o, n)| Frame { size: n, hash: Hash::of(&plain[o as usize..][..n as usize]), decoded: 1 })
            .collect();
        s.encrypt_frames(&f, &stored, &mut frames)?;
        let mut got = vec![0u8; plain.len()];
        f.read_exact_at(&mut got, 0)?;
        assert_ne!(got, plain);
        for (i, &(o, n)) in stored.iter().enumerate() {
            let mut c = got[o as usize..][..n as usize].to_vec();
            assert_eq!(frames[i].hash, Hash::of(&c));
            s.key.frame_keystream(i as u64).apply(&mut c);
            assert_eq!(c, &plain[o as usize..][..n as usize]);
        }
        Ok(())
    }
}
