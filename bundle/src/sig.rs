//! Keys, key ids, signatures and trust policies.
//!
//! A signature is ed25519 over `SIGNING_DOMAIN || manifest bytes`: the exact bytes received, with a
//! prefix so that a ferry signature can never be replayed as a signature over anything else.
//! The signer public keys are themselves inside the signed manifest, so every signature in a
//! bundle can be checked, trusted or not, and a flipped bit anywhere is detected.

use crate::hash::{hex, unhex};
use crate::{Error, Hash, Manifest};
use ed25519_dalek::Signer;

/// Domain-separation prefix of every manifest signature.
pub const SIGNING_DOMAIN: &[u8] = b"ferry bundle manifest v1\0";
const PUB_TAG: &str = "ferry-public-key-v1";
const SECRET_TAG: &str = "ferry-secret-key-v1";

/// Key id: first 8 bytes of BLAKE3(derive_key "ferry key id v1", public key), as 16 hex digits.
pub fn key_id(public: &[u8; 32]) -> String {
    let h = blake3::derive_key("ferry key id v1", public);
    hex(&h[..8])
}

/// Whether `s` has the form of a key id: 16 hex digits (8 bytes; either case, a trust policy
/// compares them in lower case).
pub fn is_key_id(s: &str) -> bool {
    s.len() == 16 && unhex(s).is_some()
}

/// A public key with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub bytes: [u8; 32],
    pub id: String,
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Result<PublicKey, Error> {
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| Error::Key(e.to_string()))?;
        Ok(PublicKey { id: key_id(&bytes), bytes })
    }

    /// Parse the one-line text form `ferry-public-key-v1 <key id> <64 hex digits>`.
    pub fn parse(text: &str) -> Result<PublicKey, Error> {
        let bytes = parse_line(text, PUB_TAG)?;
        PublicKey::from_bytes(bytes)
    }

    pub fn to_text(&self) -> String {
        format!("{PUB_TAG} {} {}\n", self.id, hex(&self.bytes))
    }
}

/// A secret (signing) key.
pub struct SecretKey {
    key: ed25519_dalek::SigningKey,
}

impl SecretKey {
    /// A new key from 32 bytes of secret randomness.
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey { key: ed25519_dalek::SigningKey::from_bytes(&seed) }
    }

    /// Parse the one-line text form `ferry-secret-key-v1 <key id> <64 hex digits of seed>`.
    pub fn parse(text: &str) -> Result<SecretKey, Error> {
        let seed = parse_line(text, SECRET_TAG)?;
        let k = SecretKey::from_seed(seed);
        let id = text.split_whitespace().nth(1).unwrap_or_default();
        if id != k.public().id {
            return Err(Error::Key("key id does not match the key".into()));
        }
        Ok(k)
    }

    pub fn to_text(&self) -> String {
        format!("{SECRET_TAG} {} {}\n", self.public().id, hex(self.key.as_bytes()))
    }

    /// The 32-byte seed, e.g. to store it encrypted (`ferry-build keygen`).
    pub fn seed(&self) -> [u8; 32] {
        *self.key.as_bytes()
    }

    pub fn public(&self) -> PublicKey {
        let bytes = self.key.verifying_key().to_bytes();
        PublicKey { id: key_id(&bytes), bytes }
    }

    /// Sign manifest bytes.
    pub fn sign_manifest(&self, manifest: &[u8]) -> [u8; 64] {
        let mut msg = Vec::with_capacity(SIGNING_DOMAIN.len() + manifest.len());
        msg.extend_from_slice(SIGNING_DOMAIN);
        msg.extend_from_slice(manifest);
        self.key.sign(&msg).to_bytes()
    }
}

fn parse_line(text: &str, tag: &str) -> Result<[u8; 32], Error> {
    let mut it = text.split_whitespace();
    let (t, id, key) = (it.next(), it.next(), it.next());
    if t != Some(tag) || it.next().is_some() {
        return Err(Error::Key(format!("expected one line '{tag} <key id> <hex>'")));
    }
    let bytes = key.and_then(unhex).ok_or_else(|| Error::Key("key is not hex".into()))?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::Key("key must be 32 bytes".into()))?;
    if tag == PUB_TAG && id != Some(&key_id(&arr)) {
        return Err(Error::Key("key id does not match the key".into()));
    }
    Ok(arr)
}

/// One signature of the signature member: the signer's public key and the signature bytes.
pub type SignatureEntry = ([u8; 32], [u8; 64]);

/// Encode the signature member: a CBOR array of `[public key (32 bytes), signature (64 bytes)]`
/// pairs, in the order of [`Manifest::signers`].
pub fn encode_signatures(sigs: &[SignatureEntry]) -> Vec<u8> {
    let v: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)> = sigs
        .iter()
        .map(|(k, s)| (serde_bytes::ByteBuf::from(k.to_vec()), serde_bytes::ByteBuf::from(s.to_vec())))
        .collect();
    let mut out = Vec::new();
    #[allow(clippy::unwrap_used)] // serialising into a Vec cannot fail
    ciborium::into_writer(&v, &mut out).unwrap();
    out
}

/// Check every signature of the signature member over the exact manifest bytes, before the
/// manifest is parsed. Returns the signers' keys in order; the caller checks them against its
/// trust policy and, after parsing, that they equal [`Manifest::signers`] ([`check_signers`]).
pub fn verify_signatures(manifest_bytes: &[u8], sig_bytes: &[u8], max: usize) -> Result<Vec<PublicKey>, Error> {
    let v: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)> =
        ciborium::from_reader(sig_bytes).map_err(|e| Error::Signatures(e.to_string()))?;
    if v.is_empty() || v.len() > max {
        return Err(Error::Signatures(format!("{} signatures (1 to {max} allowed)", v.len())));
    }
    let mut sigs: Vec<SignatureEntry> = Vec::new();
    for (k, s) in &v {
        let k: [u8; 32] =
            k.as_slice().try_into().map_err(|_| Error::Signatures("public key must be 32 bytes".into()))?;
        let s: [u8; 64] =
            s.as_slice().try_into().map_err(|_| Error::Signatures("signature must be 64 bytes".into()))?;
        sigs.push((k, s));
    }
    if encode_signatures(&sigs) != sig_bytes {
        return Err(Error::Signatures("not in canonical encoding".into()));
    }
    let mut msg = Vec::with_capacity(SIGNING_DOMAIN.len() + manifest_bytes.len());
    msg.extend_from_slice(SIGNING_DOMAIN);
    msg.extend_from_slice(manifest_bytes);
    let mut keys: Vec<PublicKey> = Vec::new();
    for (k, sig) in &sigs {
        let id = key_id(k);
        let vk = ed25519_dalek::VerifyingKey::from_bytes(k).map_err(|_| Error::BadSignature { key_id: id.clone() })?;
        vk.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(sig))
            .map_err(|_| Error::BadSignature { key_id: id.clone() })?;
        if keys.iter().any(|x| x.id == id) {
            return Err(Error::Signatures(format!("key {id} signs twice")));
        }
        keys.push(PublicKey { bytes: *k, id });
    }
    Ok(keys)
}

/// The signers named inside the signed manifest must be exactly the keys of the signature member.
pub fn check_signers(manifest: &Manifest, keys: &[PublicKey]) -> Result<(), Error> {
    if manifest.signers.len() != keys.len() || manifest.signers.iter().zip(keys).any(|(a, b)| a.0 != b.bytes) {
        return Err(Error::Signatures("signature member does not match the manifest's signers".into()));
    }
    Ok(())
}

/// What a target trusts: keys, how many of them must sign, and retired key ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    pub keys: Vec<PublicKey>,
    pub threshold: usize,
    pub retired: Vec<String>,
}

impl TrustPolicy {
    /// Parse a policy file: lines `threshold N`, `retire <key id>`, `#` comments, blank lines.
    pub fn apply_policy_text(&mut self, file: &str, text: &str) -> Result<(), Error> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| Error::Policy { file: file.into(), why: format!("line {}: {why}", n + 1) };
            let mut w = line.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("threshold"), Some(k), None) => {
                    self.threshold =
                        k.parse().ok().filter(|&k| k >= 1).ok_or_else(|| bad("threshold must be a number >= 1"))?
                }
                // Key ids are compared in lower case: `retire 0123ABCD...` must not be silently ineffective.
                (Some("retire"), Some(id), None) if is_key_id(id) => self.retired.push(id.to_ascii_lowercase()),
                _ => return Err(bad("expected 'threshold N' or 'retire <16 hex digit key id>'")),
            }
        }
        Ok(())
    }

    /// Check that at least `threshold` distinct trusted, non-retired keys signed.
    pub fn check(&self, signer_ids: &[String]) -> Result<(), Error> {
        let good =
            signer_ids.iter().filter(|id| self.keys.iter().any(|k| &&k.id == id) && !self.retired.contains(id)).count();
        let need = self.threshold.max(1);
        if good < need {
            return Err(Error::Untrusted { have: good, need, signers: signer_ids.join(",") });
        }
        Ok(())
    }
}

/// Hash of a public key as stored in the manifest.
pub fn manifest_key(k: &PublicKey) -> Hash {
    Hash(k.bytes)
}
