//! Encrypted ("sealed") bundles (bundle-format.md §4.10): the manifest member is a public outer
//! manifest whose `sealed` field carries the real (inner) manifest member encrypted under a random
//! per-bundle payload key K, and K wrapped for each recipient with age's X25519 recipient
//! construction; every payload frame is stored XORed with a ChaCha20 keystream under K.
//!
//! Signatures cover the outer manifest, that is the ciphertext (encrypt-then-sign), and the outer
//! manifest names the BLAKE3 of every stored (encrypted) frame: everything is authenticated by
//! the existing checks before a byte is decrypted, so the frames need no tag of their own.
//!
//! This module is pure like the rest of the crate: randomness (K, ephemeral secrets, identity
//! secrets) is passed in by the caller.

use crate::hash::{hex, unhex};
use crate::{Error, Hash, Limits, Manifest};
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20poly1305::aead::{Aead, KeyInit};
use serde::{Deserialize, Serialize};

/// First word of a recipient file.
pub const RECIPIENT_TAG: &str = "ferry-recipient-v1";
/// First word of an identity file.
pub const IDENTITY_TAG: &str = "ferry-identity-v1";
/// BLAKE3 `derive_key` context of a recipient id.
pub const RECIPIENT_ID_CONTEXT: &str = "ferry recipient id v1";
/// HKDF-SHA256 `info` of a stanza's wrap key.
pub const STANZA_INFO: &[u8] = b"ferry-v3 recipient";
/// BLAKE3 `derive_key` context of the payload key's commitment.
pub const COMMITMENT_CONTEXT: &str = "ferry-v3 payload key commitment";
/// ChaCha20-Poly1305 nonce of the inner manifest: twelve 0xff bytes. A frame nonce starts with
/// four zero bytes ([`frame_nonce`]), so the two never meet.
pub const MANIFEST_NONCE: [u8; 12] = [0xff; 12];
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// A wrapped payload key: 32 bytes of ciphertext and the tag.
pub const WRAPPED_LEN: usize = 32 + TAG_LEN;
/// Largest stored frame ChaCha20's 32-bit block counter can encrypt under one nonce (256 GiB);
/// far above any frame a tar member can hold (8 GiB − 1).
pub const MAX_SEALED_FRAME: u64 = 64 << 32;

/// The `sealed` field of an encrypted bundle's outer manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// One stanza per recipient, each wrapping the payload key (1..=`max_recipients`).
    pub recipients: Vec<Stanza>,
    /// `BLAKE3.derive_key(COMMITMENT_CONTEXT, K)`: every recipient that unwraps a key checks it
    /// is this one, so one signed bundle cannot open to different contents for different
    /// recipients (ChaCha20-Poly1305 alone does not commit to its key).
    pub commitment: Hash,
    /// ChaCha20-Poly1305(K, [`MANIFEST_NONCE`], the inner manifest member): ciphertext and tag.
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
}

/// The payload key wrapped for one recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stanza {
    /// E = e·G, the X25519 public key of a fresh ephemeral secret e.
    pub ephemeral: Hash,
    /// ChaCha20-Poly1305(wrap key, 12 zero bytes, K): 48 bytes.
    #[serde(with = "serde_bytes")]
    pub wrapped: Vec<u8>,
}

/// The per-bundle payload key K. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct PayloadKey([u8; 32]);

impl std::fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadKey(..)")
    }
}

impl PayloadKey {
    /// A key from 32 bytes of secret randomness.
    pub fn from_bytes(k: [u8; 32]) -> PayloadKey {
        PayloadKey(k)
    }

    /// The commitment stored in [`Sealed::commitment`].
    pub fn commitment(&self) -> Hash {
        Hash(blake3::derive_key(COMMITMENT_CONTEXT, &self.0))
    }

    /// The keystream that encrypts (and decrypts) stored frame `index`.
    pub fn frame_keystream(&self, index: u64) -> Keystream {
        Keystream(chacha20::ChaCha20::new(&self.0.into(), &frame_nonce(index).into()))
    }
}

impl Drop for PayloadKey {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// The ChaCha20 nonce of frame `index`: four zero bytes, then `index` as a big-endian u64.
pub fn frame_nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

/// ChaCha20 (RFC 8439: 32-bit block counter from 0) over one frame, applied in order: XOR the
/// frame's bytes through [`Keystream::apply`] chunk by chunk to encrypt or decrypt.
pub struct Keystream(chacha20::ChaCha20);

impl Keystream {
    pub fn apply(&mut self, buf: &mut [u8]) {
        self.0.apply_keystream(buf);
    }
}

/// Recipient id: first 8 bytes of `BLAKE3.derive_key("ferry recipient id v1", public)`, hex.
pub fn recipient_id(public: &[u8; 32]) -> String {
    hex(&blake3::derive_key(RECIPIENT_ID_CONTEXT, public)[..8])
}

/// A recipient: an X25519 public key and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub public: [u8; 32],
    pub id: String,
}

impl Recipient {
    pub fn from_bytes(public: [u8; 32]) -> Recipient {
        Recipient { id: recipient_id(&public), public }
    }

    /// Parse `ferry-recipient-v1 <id> <64 hex digits>` (one line).
    pub fn parse(text: &str) -> Result<Recipient, Error> {
        let (id, public) = parse_line(text, RECIPIENT_TAG)?;
        let r = Recipient::from_bytes(public);
        if id != r.id {
            return Err(Error::Key("recipient id does not match the key".into()));
        }
        Ok(r)
    }

    pub fn to_text(&self) -> String {
        format!("{RECIPIENT_TAG} {} {}\n", self.id, hex(&self.public))
    }
}

/// An identity: the X25519 secret of a recipient.
pub struct Identity {
    secret: x25519_dalek::StaticSecret,
    recipient: Recipient,
}

impl Identity {
    /// An identity from 32 bytes of secret randomness (clamped by X25519, RFC 7748).
    pub fn from_secret(secret: [u8; 32]) -> Identity {
        let secret = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Identity { secret, recipient: Recipient::from_bytes(public) }
    }

    /// Parse `ferry-identity-v1 <id of the public key> <64 hex digits of the secret>`.
    pub fn parse(text: &str) -> Result<Identity, Error> {
        let (id, mut secret) = parse_line(text, IDENTITY_TAG)?;
        let i = Identity::from_secret(secret);
        secret.fill(0);
        if id != i.recipient.id {
            return Err(Error::Key("identity id does not match the key".into()));
        }
        Ok(i)
    }

    pub fn to_text(&self) -> String {
        format!("{IDENTITY_TAG} {} {}\n", self.recipient.id, hex(self.secret.as_bytes()))
    }

    pub fn recipient(&self) -> &Recipient {
        &self.recipient
    }

    /// The payload key of the stanza, if it is for this identity.
    fn unwrap(&self, s: &Stanza) -> Option<PayloadKey> {
        let shared = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(s.ephemeral.0));
        if !shared.was_contributory() {
            return None;
        }
        let wk = wrap_key(shared.as_bytes(), &s.ephemeral.0, &self.recipient.public);
        let k = aead(&wk).decrypt(&[0u8; 12].into(), s.wrapped.as_slice()).ok()?;
        Some(PayloadKey(k.try_into().ok()?))
    }
}

fn parse_line(text: &str, tag: &str) -> Result<(String, [u8; 32]), Error> {
    let mut it = text.split_whitespace();
    let (t, id, key) = (it.next(), it.next(), it.next());
    if t != Some(tag) || it.next().is_some() {
        return Err(Error::Key(format!("expected one line '{tag} <id> <64 hex digits>'")));
    }
    let bytes = key.and_then(unhex).ok_or_else(|| Error::Key("key is not hex".into()))?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::Key("key must be 32 bytes".into()))?;
    Ok((id.unwrap_or_default().to_ascii_lowercase(), arr))
}

/// HKDF-SHA256(ikm = shared, salt = E ‖ R, info = [`STANZA_INFO`]), 32 bytes.
fn wrap_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> [u8; 32] {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let mut okm = [0u8; 32];
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt[..]), shared);
    // 32 bytes is far below HKDF-SHA256's maximum output (8160 bytes): cannot fail.
    #[allow(clippy::unwrap_used)]
    hk.expand(STANZA_INFO, &mut okm).unwrap();
    okm
}

fn aead(key: &[u8; 32]) -> chacha20poly1305::ChaCha20Poly1305 {
    chacha20poly1305::ChaCha20Poly1305::new(key.into())
}

/// Wrap `key` for `r` with the ephemeral secret `e` (32 bytes of fresh secret randomness).
pub fn wrap(key: &PayloadKey, r: &Recipient, e: [u8; 32]) -> Result<Stanza, Error> {
    let e = x25519_dalek::StaticSecret::from(e);
    let ephemeral = x25519_dalek::PublicKey::from(&e).to_bytes();
    let shared = e.diffie_hellman(&x25519_dalek::PublicKey::from(r.public));
    if !shared.was_contributory() {
        return Err(Error::Key(format!("recipient {} is not a usable X25519 key (low order)", r.id)));
    }
    let wk = wrap_key(shared.as_bytes(), &ephemeral, &r.public);
    let wrapped = aead(&wk)
        .encrypt(&[0u8; 12].into(), key.0.as_slice())
        .map_err(|_| Error::Key("wrapping the payload key failed".into()))?;
    Ok(Stanza { ephemeral: Hash(ephemeral), wrapped })
}

/// Seal the inner manifest member for `recipients` (each with its ephemeral secret, in order)
/// under `key`.
pub fn seal(inner_member: &[u8], key: &PayloadKey, recipients: &[(Recipient, [u8; 32])]) -> Result<Sealed, Error> {
    let stanzas = recipients.iter().map(|(r, e)| wrap(key, r, *e)).collect::<Result<Vec<_>, _>>()?;
    let manifest = aead(&key.0)
        .encrypt(&MANIFEST_NONCE.into(), inner_member)
        .map_err(|_| Error::Manifest("encrypting the manifest failed".into()))?;
    Ok(Sealed { recipients: stanzas, commitment: key.commitment(), manifest })
}

/// The public outer manifest of `inner`: its format, version, base, channel, dates and
/// frames, nothing else, and `sealed`.
pub fn outer(inner: &Manifest, sealed: Sealed) -> Manifest {
    Manifest {
        format: inner.format,
        version: inner.version,
        base: inner.base.clone(),
        channel: inner.channel.clone(),
        created: inner.created,
        expires: inner.expires,
        entries: Vec::new(),
        old: Vec::new(),
        frames: inner.frames.clone(),
        script: Vec::new(),
        hooks: Vec::new(),
        rotation: None,
        xattr_namespaces: Vec::new(),
        xattr_sets: Vec::new(),
        tagged_digest: None,
        sealed: Some(sealed),
    }
}

/// The payload key of `sealed` for the first stanza one of `identities` opens, and which
/// identity (index) opened it; `Ok(None)` if none does. A key that opens but does not match the
/// commitment is a malformed bundle.
pub fn unwrap(sealed: &Sealed, identities: &[Identity]) -> Result<Option<(PayloadKey, usize)>, Error> {
    for s in &sealed.recipients {
        for (i, id) in identities.iter().enumerate() {
            if let Some(k) = id.unwrap(s) {
                if k.commitment() != sealed.commitment {
                    return Err(Error::Manifest(format!(
                        "the payload key wrapped for recipient {} does not match the bundle's key commitment",
                        id.recipient.id
                    )));
                }
                return Ok(Some((k, i)));
            }
        }
    }
    Ok(None)
}

/// Decrypt and decode the inner manifest with the key [`unwrap`] gave: the AEAD, then the
/// ordinary bounded decode (§4.6) and checks, then: not sealed itself (no nesting), and equal
/// to the outer manifest in format, version, base, channel, dates and frames.
pub fn open(outer: &Manifest, key: &PayloadKey, limits: &Limits) -> Result<(Manifest, Vec<u8>), Error> {
    let sealed = outer.sealed.as_ref().ok_or_else(|| Error::Manifest("bundle is not encrypted".into()))?;
    let member = aead(&key.0)
        .decrypt(&MANIFEST_NONCE.into(), sealed.manifest.as_slice())
        .map_err(|_| Error::Manifest("the encrypted manifest does not decrypt (its tag does not verify)".into()))?;
    if member.len() as u64 > limits.max_manifest_bytes {
        return Err(Error::TooLarge {
            what: "inner manifest".into(),
            size: member.len() as u64,
            limit: limits.max_manifest_bytes,
        });
    }
    let inner = Manifest::decode(&member, limits)?;
    if inner.sealed.is_some() {
        return Err(Error::Manifest("the inner manifest is itself encrypted (nesting is not allowed)".into()));
    }
    check_agreement(outer, &inner)?;
    Ok((inner, member))
}

/// The inner manifest must repeat the outer's public fields exactly.
pub fn check_agreement(outer: &Manifest, inner: &Manifest) -> Result<(), Error> {
    let differs = [
        ("format", outer.format != inner.format),
        ("version", outer.version != inner.version),
        ("base", outer.base != inner.base),
        ("channel", outer.channel != inner.channel),
        ("created", outer.created != inner.created),
        ("expires", outer.expires != inner.expires),
        ("frames", outer.frames != inner.frames),
    ];
    match differs.iter().find(|d| d.1) {
        Some((what, _)) => {
            Err(Error::Manifest(format!("the inner manifest's {what} differs from the outer (public) manifest's")))
        }
        None => Ok(()),
    }
}

/// The structural rules of an outer manifest (after [`Manifest::check`]'s counts, channel and
/// hooks): nothing but public fields and frames, and a well-formed `sealed`.
pub(crate) fn check_outer(m: &Manifest, s: &Sealed, limits: &Limits) -> Result<(), Error> {
    let err = |s: String| Err(Error::Manifest(s));
    if !m.entries.is_empty() || !m.old.is_empty() || !m.script.is_empty() || !m.hooks.is_empty() {
        return err("an encrypted bundle's outer manifest has entries, old entries, steps or hooks".into());
    }
    if m.rotation.is_some() || !m.xattr_namespaces.is_empty() || !m.xattr_sets.is_empty() {
        return err("an encrypted bundle's outer manifest has a rotation or extended attributes".into());
    }
    if m.tagged_digest.is_some() {
        return err("an encrypted bundle's outer manifest has a tagged_digest".into());
    }
    crate::manifest::check_frame_sizes(&m.frames, limits.max_frame_bytes.min(MAX_SEALED_FRAME), limits)?;
    if s.recipients.is_empty() || s.recipients.len() > limits.max_recipients {
        return err(format!("{} recipients (1 to {} allowed)", s.recipients.len(), limits.max_recipients));
    }
    if let Some(i) = s.recipients.iter().position(|r| r.wrapped.len() != WRAPPED_LEN) {
        return err(format!("recipient stanza {i}: wrapped key is not {WRAPPED_LEN} bytes"));
    }
    let max = limits.max_manifest_bytes.saturating_add(TAG_LEN as u64);
    let n = s.manifest.len() as u64;
    if n <= TAG_LEN as u64 || n > max {
        return err(format!("encrypted manifest is {n} bytes ({} to {max} allowed)", TAG_LEN + 1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Identity, Identity) {
        (Identity::from_secret([7; 32]), Identity::from_secret([9; 32]))
    }

    #[test]
    fn key_files_roundtrip_and_check_the_id() -> Result<(), Error> {
        let (a, _) = ids();
        let r = Recipient::parse(&a.recipient().to_text())?;
        assert_eq!(&r, a.recipient());
        assert_eq!(r.id.len(), 16);
        let back = Identity::parse(&a.to_text())?;
        assert_eq!(back.recipient(), a.recipient());
        let wrong = a.recipient().to_text().replace(&r.id, "0000000000000000");
        assert!(Recipient::parse(&wrong).is_err());
        assert!(Identity::parse(&a.to_text().replace(&r.id, "0000000000000000")).is_err());
        assert!(Recipient::parse(&a.to_text()).is_err(), "an identity is not a recipient file");
        Ok(())
    }

    #[test]
    fn stanzas_open_only_for_their_recipient() -> Result<(), Error> {
        let (a, b) = ids();
        let k = PayloadKey::from_bytes([42; 32]);
        let s = seal(b"inner", &k, &[(a.recipient().clone(), [1; 32])])?;
        assert_eq!(s.recipients[0].wrapped.len(), WRAPPED_LEN);
        let (got, which) = unwrap(&s, &[Identity::from_secret([3; 32]), b, a])?.ok_or(Error::Key("none".into()))?;
        assert_eq!((got, which), (k.clone(), 2));
        assert!(unwrap(&s, &[Identity::from_secret([9; 32])])?.is_none());
        // A flipped bit in the wrapped key, or another ephemeral key: no longer opens.
        let mut bad = s.clone();
        bad.recipients[0].wrapped[5] ^= 1;
        assert!(unwrap(&bad, &[Identity::from_secret([7; 32])])?.is_none());
        // A low-order ephemeral key (all-zero shared secret) is never used.
        let mut zero = s.clone();
        zero.recipients[0].ephemeral = Hash([0; 32]);
        assert!(unwrap(&zero, &[Identity::from_secret([7; 32])])?.is_none());
        // A key that opens but is not the committed one is refused.
        let mut other = s;
        other.commitment = Hash([1; 32]);
        assert!(unwrap(&other, &[Identity::from_secret([7; 32])]).is_err());
        // A low-order recipient key is refused when sealing.
        assert!(wrap(&k, &Recipient::from_bytes([0; 32]), [1; 32]).is_err());
        Ok(())
    }

    #[test]
    fn frame_keystreams_differ_per_frame_and_roundtrip() {
        let k = PayloadKey::from_bytes([5; 32]);
        let data = vec![0u8; 200];
        let enc = |i: u64| {
            let mut d = data.clone();
            k.frame_keystream(i).apply(&mut d);
            d
        };
        assert_ne!(enc(0), enc(1));
        assert_ne!(enc(0), data);
        // Chunked application equals one pass, and applying twice decrypts.
        let mut chunked = data.clone();
        let mut ks = k.frame_keystream(3);
        for c in chunked.chunks_mut(7) {
            ks.apply(c);
        }
        assert_eq!(chunked, enc(3));
        k.frame_keystream(3).apply(&mut chunked);
        assert_eq!(chunked, data);
        assert_ne!(frame_nonce(u64::MAX), MANIFEST_NONCE);
        assert_eq!(&frame_nonce(0x0102)[..], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
    }

    fn small_inner() -> Manifest {
        Manifest {
            format: crate::FORMAT_VERSION,
            version: 2,
            base: Some(crate::Base { version: Some(1), tree: Hash([3; 32]) }),
            channel: "stable".into(),
            created: 1_700_000_000,
            expires: None,
            entries: vec![],
            old: vec![],
            frames: vec![],
            script: vec![],
            hooks: vec![],
            rotation: None,
            xattr_namespaces: vec![],
            xattr_sets: vec![],
            tagged_digest: None,
            sealed: None,
        }
    }

    fn sealed_outer(inner: &Manifest, k: &PayloadKey, n: usize) -> Result<Manifest, Error> {
        let r: Vec<(Recipient, [u8; 32])> =
            (0..n).map(|i| (Identity::from_secret([i as u8 + 7; 32]).recipient().clone(), [i as u8 + 1; 32])).collect();
        Ok(outer(inner, seal(&inner.encode(), k, &r)?))
    }

    #[test]
    fn outer_manifest_roundtrips_and_opens_to_the_inner() -> Result<(), Error> {
        let limits = Limits::default();
        let inner = small_inner();
        let k = PayloadKey::from_bytes([8; 32]);
        let o = sealed_outer(&inner, &k, 2)?;
        o.check(&limits)?;
        // The pre-pass alone tells an outer manifest from any other.
        assert!(Manifest::member_is_sealed(&o.encode(), &limits)?);
        assert!(!Manifest::member_is_sealed(&inner.encode(), &limits)?);
        // Canonical CBOR like any manifest, through the bounded decoder.
        assert_eq!(Manifest::decode(&o.encode(), &limits)?, o);
        let (back, member) = open(&o, &k, &limits)?;
        assert_eq!((back, member), (inner.clone(), inner.encode()));
        // The sealed manifest may be longer than any other string of the manifest.
        let tight = Limits { max_manifest_string: 48, ..Limits::default() };
        assert!(o.sealed.as_ref().is_some_and(|s| s.manifest.len() > 100));
        assert_eq!(Manifest::from_cbor(&o.to_cbor(), &tight)?, o);
        // A wrong key, or a flipped bit of the ciphertext: the tag does not verify.
        assert!(open(&o, &PayloadKey::from_bytes([9; 32]), &limits).is_err());
        let mut bad = o.clone();
        if let Some(s) = bad.sealed.as_mut() {
            s.manifest[3] ^= 1;
        }
        assert!(open(&bad, &k, &limits).is_err());
        Ok(())
    }

    #[test]
    fn outer_rules_agreement_and_no_nesting() -> Result<(), Error> {
        let limits = Limits::default();
        let inner = small_inner();
        let k = PayloadKey::from_bytes([8; 32]);
        let o = sealed_outer(&inner, &k, 1)?;
        let refused = |m: &Manifest, what: &str| {
            assert!(m.check(&limits).is_err(), "outer manifest with {what} accepted");
        };
        let step = crate::Step {
            op: crate::Op::Delete,
            path: crate::BundlePath::new("x").map_err(|_| Error::Key("path".into()))?,
        };
        refused(&Manifest { script: vec![step], ..o.clone() }, "a step");
        let hook = crate::Hook { glob: "*".into(), command: "true".into(), timeout_secs: 1 };
        refused(&Manifest { hooks: vec![hook], ..o.clone() }, "a hook");
        refused(
            &Manifest { rotation: Some(crate::Rotation { add: vec![], retire: vec![], threshold: None }), ..o.clone() },
            "a rotation",
        );
        refused(&Manifest { xattr_namespaces: vec!["user".into()], ..o.clone() }, "attributes");
        let with = |f: &dyn Fn(&mut Sealed)| {
            let mut m = o.clone();
            if let Some(s) = m.sealed.as_mut() {
                f(s);
            }
            m
        };
        refused(&with(&|s| s.recipients.clear()), "no recipient");
        refused(&with(&|s| s.recipients = vec![s.recipients[0].clone(); 65]), "65 recipients");
        refused(&with(&|s| s.recipients[0].wrapped.truncate(47)), "a short wrapped key");
        refused(&with(&|s| s.manifest.truncate(16)), "an empty ciphertext");
        // The pre-pass refuses too many recipients at their array's header.
        let many = with(&|s| s.recipients = vec![s.recipients[0].clone(); 65]);
        assert!(matches!(Manifest::from_cbor(&many.to_cbor(), &limits), Err(Error::TooMany { .. })));
        // The inner manifest must repeat the public fields.
        for (what, change) in [
            ("version", &(|m: &mut Manifest| m.version += 1) as &dyn Fn(&mut Manifest)),
            ("channel", &|m: &mut Manifest| m.channel = "beta".into()),
            ("base", &|m: &mut Manifest| m.base = None),
            ("expires", &|m: &mut Manifest| m.expires = Some(2_000_000_000)),
            ("created", &|m: &mut Manifest| m.created += 1),
        ] {
            let mut other = o.clone();
            change(&mut other);
            let e = open(&other, &k, &limits).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(what), "{what}: {e}");
        }
        // An inner manifest that is itself sealed is refused.
        let nested = Manifest { sealed: None, ..o.clone() };
        let twice =
            outer(&nested, seal(&o.encode(), &k, &[(Identity::from_secret([7; 32]).recipient().clone(), [5; 32])])?);
        let e = open(&twice, &k, &limits).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("nesting"), "{e}");
        Ok(())
    }

    /// RFC 7748 §6.1's Diffie-Hellman test vector, through the identity and the stanza code.
    #[test]
    fn x25519_matches_rfc7748() -> Result<(), Error> {
        let sk = |h: &str| -> Result<[u8; 32], Error> {
            unhex(h).and_then(|v| v.try_into().ok()).ok_or(Error::Key("hex".into()))
        };
        let alice = sk("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")?;
        let bob = Identity::from_secret(sk("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")?);
        assert_eq!(hex(&bob.recipient().public), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let k = PayloadKey::from_bytes([0x11; 32]);
        let st = wrap(&k, bob.recipient(), alice)?;
        assert_eq!(hex(&st.ephemeral.0), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(bob.unwrap(&st), Some(k));
        Ok(())
    }
}
