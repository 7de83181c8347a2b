//! Keys, key ids, signatures, the signature member and trust policies (bundle-format.md §3, §9).
//!
//! A signature is ed25519 (verified strictly, §3.3) over the fixed 51-byte message
//! [`SIGNING_DOMAIN`] `||` bundle id, the bundle id being the BLAKE3 of the manifest member's bytes
//! as received ([`crate::Manifest::id`]). Signing the id and not the manifest keeps the message
//! small and fixed, so that a signing request carries 51 bytes to sign and an external signer
//! (an HSM, `openssl pkeyutl`) signs a short message; the domain prefix makes sure a ferry
//! signature can never be replayed as a signature over anything else.
//!
//! The signature member ([`Signatures`]) is a canonical CBOR array of `[public key, signature]`
//! pairs sorted by public key bytes, each key at most once, 0 to `max_signatures` of them. Nothing
//! inside the manifest names the signers, so signatures can be added to a finished bundle in any
//! order (A then B gives the same bytes as B then A) without touching the manifest. Every
//! signature present is verified, trusted or not; the trust policy ([`TrustPolicy::check`]) then
//! says whether enough trusted keys signed, and its [`TrustStatus`] says which did and did not.

use crate::hash::{hex, unhex};
use crate::{Error, Hash};
use ed25519_dalek::Signer;
use serde::Serialize;
use std::fmt;

/// Domain-separation prefix of every bundle signature (19 bytes). The signed message is this
/// prefix followed by the 32-byte bundle id ([`signing_message`]).
pub const SIGNING_DOMAIN: &[u8] = b"ferry-v6 bundle id\0";
/// Length of the signed message: the prefix and the bundle id.
pub const MESSAGE_LEN: usize = 51;
/// Domain-separation prefix of the message `ferry-build pubkey` has an external signer sign to
/// learn and check its public key (19 bytes; followed by 32 zero bytes, [`key_check_message`]).
/// It differs from [`SIGNING_DOMAIN`], so that signature can never pass for a bundle signature.
pub const KEY_CHECK_DOMAIN: &[u8] = b"ferry-v3 key check\0";
const PUB_TAG: &str = "ferry-public-key-v1";
const SECRET_TAG: &str = "ferry-secret-key-v1";

/// The exact bytes a signer signs for the bundle whose id is `id`.
pub fn signing_message(id: &Hash) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[..SIGNING_DOMAIN.len()].copy_from_slice(SIGNING_DOMAIN);
    m[SIGNING_DOMAIN.len()..].copy_from_slice(&id.0);
    m
}

/// The fixed message of a key check (`ferry-build pubkey --signer-command`).
pub fn key_check_message() -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[..KEY_CHECK_DOMAIN.len()].copy_from_slice(KEY_CHECK_DOMAIN);
    m
}

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

    /// Sign the bundle whose id is `id` (the message of [`signing_message`]).
    pub fn sign_id(&self, id: &Hash) -> [u8; 64] {
        self.sign_message(&signing_message(id))
    }

    /// Sign exactly `message` (a [`signing_message`] or the [`key_check_message`]).
    pub fn sign_message(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
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

/// Check one signature strictly (bundle-format.md §3.3): `signature` by public key bytes `key`
/// over exactly `message`. The error names the key.
pub fn verify_strict(key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> Result<PublicKey, Error> {
    let id = key_id(key);
    let vk = ed25519_dalek::VerifyingKey::from_bytes(key).map_err(|_| Error::BadSignature { key_id: id.clone() })?;
    vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
        .map_err(|_| Error::BadSignature { key_id: id.clone() })?;
    Ok(PublicKey { bytes: *key, id })
}

/// One signature of the signature member: the signer's public key and the signature bytes.
pub type SignatureEntry = ([u8; 32], [u8; 64]);

/// Encode signature pairs as a CBOR array of `[public key (32 bytes), signature (64 bytes)]`,
/// in the order given. A valid signature member is sorted and unique ([`Signatures::encode`]);
/// this raw form exists so that tests can also write invalid ones.
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

/// The signature member: signatures sorted by public key bytes, one per key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signatures {
    entries: Vec<SignatureEntry>,
}

impl Signatures {
    /// No signatures (an unsigned bundle).
    pub fn new() -> Signatures {
        Signatures::default()
    }

    /// The signatures, sorted by public key bytes.
    pub fn entries(&self) -> &[SignatureEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` signed.
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.entries.binary_search_by(|(k, _)| k.cmp(key)).is_ok()
    }

    /// Add a signature in its place; false (and nothing changes) if `key` already signed.
    pub fn insert(&mut self, key: [u8; 32], signature: [u8; 64]) -> bool {
        match self.entries.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(_) => false,
            Err(at) => {
                self.entries.insert(at, (key, signature));
                true
            }
        }
    }

    /// The canonical signature member.
    pub fn encode(&self) -> Vec<u8> {
        encode_signatures(&self.entries)
    }

    /// Decode a signature member without checking any signature: CBOR array of pairs of byte
    /// strings of 32 and 64 bytes, canonical (re-encoding gives the same bytes), sorted by public
    /// key, each key once, at most `max` pairs, at most
    /// [`crate::container::MAX_SIGNATURES_BYTES`] bytes.
    pub fn decode(bytes: &[u8], max: usize) -> Result<Signatures, Error> {
        if bytes.len() as u64 > crate::container::MAX_SIGNATURES_BYTES {
            return Err(Error::Signatures(format!(
                "{} bytes, over the limit of {}",
                bytes.len(),
                crate::container::MAX_SIGNATURES_BYTES
            )));
        }
        let v: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)> =
            ciborium::from_reader(bytes).map_err(|e| Error::Signatures(e.to_string()))?;
        if v.len() > max {
            return Err(Error::Signatures(format!("{} signatures (0 to {max} allowed)", v.len())));
        }
        let mut entries: Vec<SignatureEntry> = Vec::with_capacity(v.len());
        for (k, s) in &v {
            let k: [u8; 32] =
                k.as_slice().try_into().map_err(|_| Error::Signatures("public key must be 32 bytes".into()))?;
            let s: [u8; 64] =
                s.as_slice().try_into().map_err(|_| Error::Signatures("signature must be 64 bytes".into()))?;
            entries.push((k, s));
        }
        if encode_signatures(&entries) != bytes {
            return Err(Error::Signatures("not in canonical encoding".into()));
        }
        for w in entries.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(Error::Signatures(format!("key {} signs twice", key_id(&w[0].0))));
            }
            if w[0].0 > w[1].0 {
                return Err(Error::Signatures(format!(
                    "signatures are not sorted by public key ({} before {})",
                    key_id(&w[0].0),
                    key_id(&w[1].0)
                )));
            }
        }
        Ok(Signatures { entries })
    }

    /// Check every signature over the message of bundle `id`; returns the signers' keys in the
    /// member's order (sorted by key bytes). Any signature that does not verify, trusted key or
    /// not, fails the whole member.
    pub fn verify(&self, id: &Hash) -> Result<Vec<PublicKey>, Error> {
        let msg = signing_message(id);
        self.entries.iter().map(|(k, s)| verify_strict(k, &msg, s)).collect()
    }
}

/// Check the signature member `sig_bytes` of a bundle whose manifest member is `manifest_bytes`,
/// before the manifest is parsed: decode it ([`Signatures::decode`]) and verify every signature
/// over the bundle id, the BLAKE3 of `manifest_bytes`. Returns the signers' keys, sorted; an
/// unsigned bundle gives none (the trust policy refuses it).
pub fn verify_signatures(manifest_bytes: &[u8], sig_bytes: &[u8], max: usize) -> Result<Vec<PublicKey>, Error> {
    Signatures::decode(sig_bytes, max)?.verify(&crate::Manifest::id(manifest_bytes))
}

/// What a target trusts: keys, how many of them must sign, and retired key ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    pub keys: Vec<PublicKey>,
    pub threshold: usize,
    pub retired: Vec<String>,
}

/// How a trust policy sees one signer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// A key of the policy, not retired: its signature counts.
    Trusted,
    /// A key id the policy retires: its signature does not count.
    Retired,
    /// A key the policy does not know: its signature does not count.
    Unknown,
}

impl KeyStatus {
    /// The word of the human text: `trusted`, `retired`, `not trusted`.
    pub fn describe(self) -> &'static str {
        match self {
            KeyStatus::Trusted => "trusted",
            KeyStatus::Retired => "retired",
            KeyStatus::Unknown => "not trusted",
        }
    }
}

/// One signer of a bundle and what the policy makes of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignerStatus {
    pub key_id: String,
    pub status: KeyStatus,
}

/// A bundle's signers against a trust policy: which keys signed and how each counts, and whether
/// the threshold is met.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrustStatus {
    /// Every signer, in the signature member's order.
    pub signers: Vec<SignerStatus>,
    /// Signatures by distinct trusted, non-retired keys.
    pub trusted: usize,
    /// Signatures the policy needs.
    pub threshold: usize,
    /// `trusted >= threshold`.
    pub met: bool,
    /// How many more trusted signatures are needed (0 when met).
    pub short_by: usize,
}

impl fmt::Display for TrustStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        if self.signers.is_empty() {
            return write!(
                f,
                "bundle is unsigned (no signatures), the policy needs {} trusted signature{} (short by {}): sign it \
                 with `ferry-build sign`",
                self.threshold,
                plural(self.threshold),
                self.short_by
            );
        }
        write!(
            f,
            "bundle has {} trusted signature{}, the policy needs {}",
            self.trusted,
            plural(self.trusted),
            self.threshold
        )?;
        if !self.met {
            write!(f, " (short by {})", self.short_by)?;
        }
        let who: Vec<String> = self.signers.iter().map(|s| format!("{} ({})", s.key_id, s.status.describe())).collect();
        write!(f, ": signed by {}", who.join(", "))
    }
}

impl TrustPolicy {
    /// Parse a policy file (bundle-format.md §9): lines `threshold N` (decimal digits, N >= 1),
    /// `retire <key id>`; `#` starts a comment that runs to the end of its line; blank lines.
    pub fn apply_policy_text(&mut self, file: &str, text: &str) -> Result<(), Error> {
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| Error::Policy { file: file.into(), why: format!("line {}: {why}", n + 1) };
            let mut w = line.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("threshold"), Some(k), None) => {
                    self.threshold = Some(k)
                        .filter(|k| k.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|k| k.parse().ok())
                        .filter(|&k| k >= 1)
                        .ok_or_else(|| bad("threshold must be a number >= 1"))?
                }
                // Key ids are compared in lower case: `retire 0123ABCD...` must not be silently ineffective.
                (Some("retire"), Some(id), None) if is_key_id(id) => self.retired.push(id.to_ascii_lowercase()),
                _ => return Err(bad("expected 'threshold N' or 'retire <16 hex digit key id>'")),
            }
        }
        Ok(())
    }

    /// How this policy sees one key: retired (its id is retired, whether or not it is also
    /// listed), trusted, or unknown.
    pub fn key_status(&self, key: &PublicKey) -> KeyStatus {
        if self.retired.contains(&key.id) {
            KeyStatus::Retired
        } else if self.keys.iter().any(|k| k.bytes == key.bytes) {
            KeyStatus::Trusted
        } else {
            KeyStatus::Unknown
        }
    }

    /// The signers (verified, distinct keys) against this policy.
    pub fn status(&self, signers: &[PublicKey]) -> TrustStatus {
        let signers: Vec<SignerStatus> =
            signers.iter().map(|k| SignerStatus { key_id: k.id.clone(), status: self.key_status(k) }).collect();
        let trusted = signers.iter().filter(|s| s.status == KeyStatus::Trusted).count();
        let threshold = self.threshold.max(1);
        TrustStatus {
            signers,
            trusted,
            threshold,
            met: trusted >= threshold,
            short_by: threshold.saturating_sub(trusted),
        }
    }

    /// Check that at least `threshold` distinct trusted, non-retired keys signed; the refusal
    /// ([`Error::Untrusted`]) says which keys signed, how each counts and how many are missing.
    pub fn check(&self, signers: &[PublicKey]) -> Result<TrustStatus, Error> {
        let s = self.status(signers);
        if !s.met {
            return Err(Error::Untrusted { status: Box::new(s) });
        }
        Ok(s)
    }
}

/// Hash of a public key as stored in the manifest (a rotation's `add`).
pub fn manifest_key(k: &PublicKey) -> Hash {
    Hash(k.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_seed([seed; 32])
    }

    #[test]
    fn message_is_the_prefix_and_the_id() {
        assert_eq!(SIGNING_DOMAIN.len() + 32, MESSAGE_LEN);
        assert_eq!(KEY_CHECK_DOMAIN.len() + 32, MESSAGE_LEN);
        let id = Hash::of(b"manifest");
        let m = signing_message(&id);
        assert_eq!(&m[..19], b"ferry-v6 bundle id\0");
        assert_eq!(&m[19..], &id.0);
        assert_ne!(&key_check_message()[..19], SIGNING_DOMAIN);
        // The signature is over exactly these 51 bytes: a plain ed25519 verifier agrees.
        let k = key(1);
        let s = k.sign_id(&id);
        assert!(verify_strict(&k.public().bytes, &m, &s).is_ok());
        assert!(verify_strict(&k.public().bytes, &key_check_message(), &s).is_err());
    }

    #[test]
    fn policy_grammar() {
        let parse = |text: &str| {
            let mut p = TrustPolicy { keys: Vec::new(), threshold: 1, retired: Vec::new() };
            p.apply_policy_text("policy", text).map(|()| (p.threshold, p.retired))
        };
        // The spec's own example (§9), comments after directives included.
        let example = "# ferry trust policy v1: one directive per line, '#' comments\n\
                       threshold 2   # signatures by distinct trusted keys required (default 1)\n\
                       retire 0123456789ABCDEF   # this key id is no longer trusted\n";
        assert_eq!(parse(example).ok(), Some((2, vec!["0123456789abcdef".to_string()])));
        assert_eq!(parse("threshold 3#no space\r\n\n  \t\nthreshold 02").ok().map(|p| p.0), Some(2));
        for bad in ["threshold +2", "threshold 0", "threshold 2 3", "THRESHOLD 2", "retire 0123", "threshold", "x"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn signing_is_order_independent_and_canonical() {
        let id = Hash::of(b"m");
        let (a, b, c) = (key(1), key(2), key(3));
        let mut ab = Signatures::new();
        for k in [&a, &b, &c] {
            assert!(ab.insert(k.public().bytes, k.sign_id(&id)));
        }
        let mut ba = Signatures::new();
        for k in [&c, &b, &a] {
            assert!(ba.insert(k.public().bytes, k.sign_id(&id)));
        }
        assert_eq!(ab.encode(), ba.encode());
        assert!(!ab.insert(a.public().bytes, [0; 64]), "a second signature by a key is not added");
        let keys = ab.entries().iter().map(|e| e.0).collect::<Vec<_>>();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let d = Signatures::decode(&ab.encode(), 16).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d, ab);
        assert_eq!(d.verify(&id).map(|v| v.len()).ok(), Some(3));
        // Another bundle's id: every signature fails.
        assert!(matches!(d.verify(&Hash::of(b"other")), Err(Error::BadSignature { .. })));
    }

    #[test]
    fn zero_signatures_is_a_valid_member() {
        let empty = Signatures::new().encode();
        assert_eq!(empty, [0x80]);
        let d = Signatures::decode(&empty, 16).unwrap_or_else(|e| panic!("{e}"));
        assert!(d.is_empty());
        assert_eq!(d.verify(&Hash::of(b"m")).map(|v| v.len()).ok(), Some(0));
    }

    #[test]
    fn unsorted_duplicated_or_oversized_members_are_refused() {
        let id = Hash::of(b"m");
        let mut ks = [key(1), key(2)];
        ks.sort_by_key(|k| k.public().bytes);
        let e = |k: &SecretKey| (k.public().bytes, k.sign_id(&id));
        let sorted = encode_signatures(&[e(&ks[0]), e(&ks[1])]);
        assert!(Signatures::decode(&sorted, 16).is_ok());
        let cases = [
            (encode_signatures(&[e(&ks[1]), e(&ks[0])]), "not sorted"),
            (encode_signatures(&[e(&ks[0]), e(&ks[0])]), "signs twice"),
            (sorted.clone(), "3 signatures (0 to 1 allowed)"),
        ];
        for (i, (bytes, needle)) in cases.iter().enumerate() {
            let max = if i == 2 { 1 } else { 16 };
            let err = match Signatures::decode(bytes, max) {
                Ok(_) => panic!("accepted, expected {needle}"),
                Err(err) => err.to_string(),
            };
            if i == 2 {
                assert!(err.contains("2 signatures (0 to 1 allowed)"), "{err}");
            } else {
                assert!(err.contains(needle), "{err}");
            }
        }
        let huge = vec![0x80; 4097];
        assert!(Signatures::decode(&huge, 16).is_err_and(|e| e.to_string().contains("over the limit")));
        let mut noncanonical = sorted.clone();
        noncanonical[0] = 0x98; // array, length in a following byte
        noncanonical.insert(1, 2);
        assert!(Signatures::decode(&noncanonical, 16).is_err_and(|e| e.to_string().contains("canonical")));
    }

    #[test]
    fn trust_status_names_every_signer_and_the_shortfall() {
        let (a, b, c, d) = (key(1), key(2), key(3), key(4));
        let policy =
            TrustPolicy { keys: vec![a.public(), b.public(), d.public()], threshold: 2, retired: vec![d.public().id] };
        let s = policy.status(&[a.public(), c.public()]);
        assert_eq!((s.trusted, s.threshold, s.met, s.short_by), (1, 2, false, 1));
        assert_eq!(s.signers[1].status, KeyStatus::Unknown);
        let text = match policy.check(&[a.public(), c.public()]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(
            text,
            format!(
                "bundle has 1 trusted signature, the policy needs 2 (short by 1): signed by {} (trusted), {} (not trusted)",
                a.public().id,
                c.public().id
            )
        );
        assert_eq!(policy.key_status(&d.public()), KeyStatus::Retired);
        assert!(policy.check(&[a.public(), d.public()]).is_err());
        let ok = policy.check(&[a.public(), b.public()]).unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.met && ok.short_by == 0);
        let none = policy.check(&[]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(none.contains("unsigned") && none.contains("short by 2"), "{none}");
    }
}
