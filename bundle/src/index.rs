//! The signed index of a channel repository (bundle-format.md §18): which bundles exist, how
//! fresh that list is, and the checks a reader makes before it believes either.
//!
//! An index file is two signed parts. The **release** part (what exists: bundles with their
//! base and target versions, sizes, BLAKE3 and bundle ids; the keys allowed to sign freshness)
//! is signed by the release keys and must meet the reader's trust policy. The **freshness**
//! part (a sequence number, an issue time and an expiry, bound to one release part by its
//! BLAKE3) is signed by a timestamp key that the release part names, or by the release keys.
//! So a timestamp key can keep a release part fresh, and nothing else: it cannot name a bundle,
//! change a size or a digest, or move a reader back to an older release part.
//!
//! Reading is [`Index::decode`] (structure, canonical encoding, no signature checked), then
//! [`Index::verify`] (signatures, trust policy, binding, expiry, rollback against what the
//! reader accepted before, [`Accepted`]).

use crate::hash::Hash;
use crate::sig::{verify_strict, PublicKey, Signatures, TrustPolicy, TrustStatus};
use crate::Error;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Version of the index format, in both parts' `format`.
pub const INDEX_FORMAT: u32 = 1;
/// The index's file name inside a channel's directory.
pub const INDEX_FILE: &str = "index.ferry-index";
/// The directory, inside a channel's directory, that holds its bundles.
pub const BUNDLES_DIR: &str = "bundles";
/// Largest index a reader accepts.
pub const MAX_INDEX_BYTES: u64 = 4 << 20;
/// Most bundles one index names.
pub const MAX_BUNDLES: usize = 10_000;
/// Most timestamp keys a release part names.
pub const MAX_TIMESTAMP_KEYS: usize = 16;
/// Most signatures on either part.
pub const MAX_INDEX_SIGNATURES: usize = 16;
/// Longest bundle file name and channel name in an index.
pub const MAX_NAME_LEN: usize = 128;
/// Default allowance for the reader's clock being behind the publisher's (seconds): an index is
/// expired only once `now > expires + allowance`.
pub const DEFAULT_CLOCK_ALLOWANCE: u64 = 3600;

/// Domain prefix of the message a release signature signs (followed by the 32-byte BLAKE3 of
/// the release part): 23 bytes.
pub const RELEASE_DOMAIN: &[u8] = b"ferry-v4 index release\0";
/// Domain prefix of the message a freshness signature signs (followed by the 32-byte BLAKE3 of
/// the freshness part): 21 bytes.
pub const FRESH_DOMAIN: &[u8] = b"ferry-v4 index fresh\0";

/// One bundle of the repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    /// File name inside the channel's `bundles/` directory ([`check_file_name`]).
    pub file: String,
    /// The version it applies to; `None` for a full bundle (applies to an empty target).
    pub from: Option<u64>,
    /// The version the target is at after applying it.
    pub to: u64,
    /// Exact size of the file in bytes.
    pub size: u64,
    /// BLAKE3 of the whole file.
    pub blake3: Hash,
    /// The bundle id (BLAKE3 of its manifest member, bundle-format.md §3.2).
    pub id: Hash,
}

/// The release part: what exists. Signed by the release keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// [`INDEX_FORMAT`].
    pub format: u32,
    /// The channel; equal to every listed bundle's manifest channel.
    pub channel: String,
    /// Release sequence number: one more with every publish of this channel.
    pub seq: u64,
    /// When it was made (seconds since the epoch).
    pub created: u64,
    /// Optional limit on how long any freshness part can keep this release part current
    /// (seconds since the epoch): bounds the freeze a stolen timestamp key can hold.
    pub expires: Option<u64>,
    /// Newest version of the channel: the highest `to` of `bundles`.
    pub latest: u64,
    /// Public keys allowed to sign freshness parts: sorted, unique, at most
    /// [`MAX_TIMESTAMP_KEYS`].
    pub timestamp_keys: Vec<ByteBuf>,
    /// The bundles, sorted by (`to`, `from` with `None` first, `file`), file names unique.
    pub bundles: Vec<BundleRef>,
}

/// The freshness part: how current the release part is. Signed by a timestamp key or the
/// release keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fresh {
    /// [`INDEX_FORMAT`].
    pub format: u32,
    /// The release part's channel.
    pub channel: String,
    /// BLAKE3 of the release part's bytes.
    pub release: Hash,
    /// The release part's `seq`.
    pub release_seq: u64,
    /// Freshness sequence number: one more with every publish and every refresh.
    pub seq: u64,
    /// When it was signed (seconds since the epoch).
    pub issued: u64,
    /// After this instant (plus the reader's clock allowance) the index is refused.
    pub expires: u64,
}

/// An index file: the two parts as bytes, each with its signature member (bundle-format.md
/// §3.2's encoding: pairs sorted by key, each key once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub release_bytes: Vec<u8>,
    pub release_sigs: Signatures,
    pub fresh_bytes: Vec<u8>,
    pub fresh_sigs: Signatures,
    pub release: Release,
    pub fresh: Fresh,
}

/// What a reader accepted last for a channel; [`Index::verify`] refuses to go below it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub channel: String,
    pub release_seq: u64,
    pub release: Hash,
    pub fresh_seq: u64,
}

/// How a verified index was accepted.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The release part's signers against the trust policy.
    pub release_trust: TrustStatus,
    /// Key ids that signed the freshness part and counted: a timestamp key, or release keys.
    pub fresh_signers: Vec<String>,
    /// `true` if the freshness part was accepted by a timestamp key's signature.
    pub by_timestamp_key: bool,
    /// What to record as accepted.
    pub accepted: Accepted,
}

/// Why an index is refused. Every variant is a refusal of the index as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("malformed index: {0}")]
    Malformed(String),
    #[error("index release part: {0}")]
    Release(Error),
    #[error("index freshness part: {0}")]
    FreshSignature(Error),
    #[error("index freshness part is signed by no timestamp key the release part names and not by the release policy ({signers})")]
    FreshUntrusted { signers: String },
    #[error("index parts do not match (mix-and-match): {0}")]
    Mismatch(String),
    #[error("index expired at {expires} (now {now}, allowance {allowance} s): {what}")]
    Expired { what: &'static str, expires: u64, now: u64, allowance: u64 },
    #[error("index rollback refused: {0}")]
    Rollback(String),
}

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    #[allow(clippy::unwrap_used)] // serialising plain data into a Vec cannot fail
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

fn canonical<T: Serialize + for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, IndexError> {
    let v: T = ciborium::from_reader(bytes).map_err(|e| IndexError::Malformed(format!("{what}: {e}")))?;
    if cbor(&v) != bytes {
        return Err(IndexError::Malformed(format!("{what}: not in canonical encoding")));
    }
    Ok(v)
}

/// The message a release signature signs.
pub fn release_message(release_bytes: &[u8]) -> Vec<u8> {
    [RELEASE_DOMAIN, Hash::of(release_bytes).0.as_slice()].concat()
}

/// The message a freshness signature signs.
pub fn fresh_message(fresh_bytes: &[u8]) -> Vec<u8> {
    [FRESH_DOMAIN, Hash::of(fresh_bytes).0.as_slice()].concat()
}

/// A name from an untrusted index, fit for an error message: bounded, no control characters.
fn shown(s: &str) -> String {
    s.chars().take(MAX_NAME_LEN + 8).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// A bundle file name: 1 to [`MAX_NAME_LEN`] bytes of `A-Z a-z 0-9 . _ -`, not starting with
/// `.`, ending in `.ferry`.
pub fn check_file_name(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > MAX_NAME_LEN
        || s.starts_with('.')
        || !s.ends_with(".ferry")
        || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "bundle file name {:?}: must be 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ -, not start with '.', end in .ferry",
            shown(s)
        ));
    }
    Ok(())
}

/// A channel name usable as a directory and a URL path component: 1 to [`MAX_NAME_LEN`] bytes
/// of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn check_channel_dir(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > MAX_NAME_LEN
        || s.starts_with('.')
        || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "channel {:?}: a channel repository needs 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ -, not starting with '.'",
            shown(s)
        ));
    }
    Ok(())
}

impl Release {
    /// Canonical CBOR of the release part (the bytes its signatures cover).
    pub fn encode(&self) -> Vec<u8> {
        cbor(self)
    }

    /// The structural rules of §18.2.
    pub fn check(&self) -> Result<(), String> {
        if self.format != INDEX_FORMAT {
            return Err(format!("release format {} (this ferry reads {INDEX_FORMAT})", self.format));
        }
        check_channel_dir(&self.channel)?;
        if self.timestamp_keys.len() > MAX_TIMESTAMP_KEYS {
            return Err(format!("{} timestamp keys (at most {MAX_TIMESTAMP_KEYS})", self.timestamp_keys.len()));
        }
        for k in &self.timestamp_keys {
            if k.len() != 32 {
                return Err("a timestamp key is not 32 bytes".into());
            }
        }
        if !self.timestamp_keys.windows(2).all(|w| w[0] < w[1]) {
            return Err("timestamp keys are not sorted and unique".into());
        }
        if self.bundles.is_empty() {
            return Err("no bundles".into());
        }
        if self.bundles.len() > MAX_BUNDLES {
            return Err(format!("{} bundles (at most {MAX_BUNDLES})", self.bundles.len()));
        }
        let key = |b: &BundleRef| (b.to, b.from.map_or(0, |f| f + 1), b.file.clone());
        let mut names: Vec<&str> = Vec::with_capacity(self.bundles.len());
        for b in &self.bundles {
            check_file_name(&b.file)?;
            if let Some(f) = b.from {
                if f >= b.to {
                    return Err(format!("{}: from version {f} is not below to version {}", b.file, b.to));
                }
            }
            names.push(&b.file);
        }
        if !self.bundles.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
            return Err("bundles are not sorted by (to, from, file) and unique".into());
        }
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("bundle file {} is listed twice", w[0]));
        }
        let latest = self.bundles.iter().map(|b| b.to).max().unwrap_or(0);
        if latest != self.latest {
            return Err(format!("latest is {} but the newest bundle leads to {latest}", self.latest));
        }
        Ok(())
    }

    /// The public keys allowed to sign freshness.
    pub fn timestamp_keys(&self) -> Vec<[u8; 32]> {
        self.timestamp_keys.iter().filter_map(|k| k.as_slice().try_into().ok()).collect()
    }
}

impl Fresh {
    /// Canonical CBOR of the freshness part.
    pub fn encode(&self) -> Vec<u8> {
        cbor(self)
    }
}

impl Index {
    /// Put together an index from its parts (the publisher's side).
    pub fn new(release: Release, release_sigs: Signatures, fresh: Fresh, fresh_sigs: Signatures) -> Index {
        Index { release_bytes: release.encode(), release_sigs, fresh_bytes: fresh.encode(), fresh_sigs, release, fresh }
    }

    /// The index file: a CBOR array of four byte strings (release part, its signature member,
    /// freshness part, its signature member).
    pub fn encode(&self) -> Vec<u8> {
        let v = (
            ByteBuf::from(self.release_bytes.clone()),
            ByteBuf::from(self.release_sigs.encode()),
            ByteBuf::from(self.fresh_bytes.clone()),
            ByteBuf::from(self.fresh_sigs.encode()),
        );
        cbor(&v)
    }

    /// Decode an index file: sizes, canonical encodings, structural rules. No signature is
    /// checked here.
    pub fn decode(bytes: &[u8]) -> Result<Index, IndexError> {
        if bytes.len() as u64 > MAX_INDEX_BYTES {
            return Err(IndexError::Malformed(format!("{} bytes, over the limit of {MAX_INDEX_BYTES}", bytes.len())));
        }
        let (r, rs, f, fs): (ByteBuf, ByteBuf, ByteBuf, ByteBuf) = canonical(bytes, "index file")?;
        let release_sigs = Signatures::decode(&rs, MAX_INDEX_SIGNATURES).map_err(IndexError::Release)?;
        let fresh_sigs = Signatures::decode(&fs, MAX_INDEX_SIGNATURES).map_err(IndexError::FreshSignature)?;
        let release: Release = canonical(&r, "release part")?;
        release.check().map_err(IndexError::Malformed)?;
        let fresh: Fresh = canonical(&f, "freshness part")?;
        if fresh.format != INDEX_FORMAT {
            return Err(IndexError::Malformed(format!(
                "freshness format {} (this ferry reads {INDEX_FORMAT})",
                fresh.format
            )));
        }
        Ok(Index { release_bytes: r.into_vec(), release_sigs, fresh_bytes: f.into_vec(), fresh_sigs, release, fresh })
    }

    /// Check everything a reader must before it uses the index, in this order: every signature
    /// on both parts verifies (strictly, §3.3); the release part's signers meet `policy`; the
    /// freshness part is signed by a timestamp key the release part names or meets `policy`;
    /// the freshness part names this release part (BLAKE3, sequence number, channel); neither
    /// part expired at `now` (plus `allowance` seconds); and nothing goes back from `last`.
    pub fn verify(
        &self,
        policy: &TrustPolicy,
        now: u64,
        allowance: u64,
        last: Option<&Accepted>,
    ) -> Result<Verified, IndexError> {
        let release_trust = self.verify_release(policy)?;
        let (counted, by_timestamp_key) = self.verify_fresh(policy)?;
        let rhash = Hash::of(&self.release_bytes);
        self.check_binding(&rhash)?;
        self.check_expiry(now, allowance)?;
        if let Some(l) = last {
            self.check_not_older(l, &rhash)?;
        }
        Ok(Verified {
            release_trust,
            fresh_signers: counted,
            by_timestamp_key,
            accepted: Accepted {
                channel: self.release.channel.clone(),
                release_seq: self.release.seq,
                release: rhash,
                fresh_seq: self.fresh.seq,
            },
        })
    }

    /// Every release signature verifies strictly, and the signers meet `policy`.
    fn verify_release(&self, policy: &TrustPolicy) -> Result<TrustStatus, IndexError> {
        let rmsg = release_message(&self.release_bytes);
        let release_signers: Vec<PublicKey> = self
            .release_sigs
            .entries()
            .iter()
            .map(|(k, s)| verify_strict(k, &rmsg, s))
            .collect::<Result<_, _>>()
            .map_err(IndexError::Release)?;
        policy.check(&release_signers).map_err(IndexError::Release)
    }

    /// Every freshness signature verifies strictly, and one is by a timestamp key the release
    /// part names, or the signers meet `policy`: the key ids that count, and whether they are
    /// timestamp keys.
    fn verify_fresh(&self, policy: &TrustPolicy) -> Result<(Vec<String>, bool), IndexError> {
        let fmsg = fresh_message(&self.fresh_bytes);
        let fresh_signers: Vec<PublicKey> = self
            .fresh_sigs
            .entries()
            .iter()
            .map(|(k, s)| verify_strict(k, &fmsg, s))
            .collect::<Result<_, _>>()
            .map_err(IndexError::FreshSignature)?;
        let ts = self.release.timestamp_keys();
        let by_ts: Vec<String> = fresh_signers.iter().filter(|k| ts.contains(&k.bytes)).map(|k| k.id.clone()).collect();
        if !by_ts.is_empty() {
            return Ok((by_ts, true));
        }
        let fresh_policy = policy.status(&fresh_signers);
        if fresh_policy.met {
            let ids = fresh_policy
                .signers
                .iter()
                .filter(|s| s.status == crate::sig::KeyStatus::Trusted)
                .map(|s| s.key_id.clone())
                .collect();
            return Ok((ids, false));
        }
        let signers = if fresh_signers.is_empty() {
            "unsigned".to_string()
        } else {
            fresh_signers.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(", ")
        };
        Err(IndexError::FreshUntrusted { signers })
    }

    /// The freshness part names this release part (`rhash`, its sequence number and channel).
    fn check_binding(&self, rhash: &Hash) -> Result<(), IndexError> {
        if self.fresh.release != *rhash {
            return Err(IndexError::Mismatch(format!(
                "the freshness part names release part {} but the release part is {rhash}",
                self.fresh.release
            )));
        }
        if self.fresh.release_seq != self.release.seq || self.fresh.channel != self.release.channel {
            return Err(IndexError::Mismatch(format!(
                "the freshness part names release {} of channel {:?}, the release part is {} of {:?}",
                self.fresh.release_seq, self.fresh.channel, self.release.seq, self.release.channel
            )));
        }
        Ok(())
    }

    /// Neither part expired at `now`, `allowance` seconds granted.
    fn check_expiry(&self, now: u64, allowance: u64) -> Result<(), IndexError> {
        if now > self.fresh.expires.saturating_add(allowance) {
            return Err(IndexError::Expired { what: "freshness", expires: self.fresh.expires, now, allowance });
        }
        if let Some(e) = self.release.expires {
            if now > e.saturating_add(allowance) {
                return Err(IndexError::Expired { what: "release", expires: e, now, allowance });
            }
        }
        Ok(())
    }

    /// Nothing goes back from what the target accepted last (`l`): the same channel, no lower
    /// release or freshness sequence number, the same release sequence only with the same content.
    fn check_not_older(&self, l: &Accepted, rhash: &Hash) -> Result<(), IndexError> {
        if l.channel != self.release.channel {
            return Err(IndexError::Mismatch(format!(
                "the index is of channel {:?}, this target follows {:?}",
                self.release.channel, l.channel
            )));
        }
        if self.release.seq < l.release_seq {
            return Err(IndexError::Rollback(format!(
                "release sequence {} is below {} which this target already accepted",
                self.release.seq, l.release_seq
            )));
        }
        if self.release.seq == l.release_seq && *rhash != l.release {
            return Err(IndexError::Rollback(format!(
                "release sequence {} was accepted before with other content ({} then, {rhash} now)",
                l.release_seq, l.release
            )));
        }
        if self.fresh.seq < l.fresh_seq {
            return Err(IndexError::Rollback(format!(
                "freshness sequence {} is below {} which this target already accepted",
                self.fresh.seq, l.fresh_seq
            )));
        }
        Ok(())
    }
}

impl Accepted {
    /// Canonical CBOR, for the reader's state.
    pub fn encode(&self) -> Vec<u8> {
        cbor(self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Accepted, IndexError> {
        canonical(bytes, "accepted index record")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sig::SecretKey;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    fn release(ts: &[&SecretKey]) -> Release {
        let mut tk: Vec<ByteBuf> = ts.iter().map(|k| ByteBuf::from(k.public().bytes.to_vec())).collect();
        tk.sort();
        Release {
            format: INDEX_FORMAT,
            channel: "stable".into(),
            seq: 3,
            created: 1000,
            expires: None,
            latest: 5,
            timestamp_keys: tk,
            bundles: vec![
                BundleRef {
                    file: "v5.full.ferry".into(),
                    from: None,
                    to: 5,
                    size: 10,
                    blake3: Hash([1; 32]),
                    id: Hash([2; 32]),
                },
                BundleRef {
                    file: "v4-v5.ferry".into(),
                    from: Some(4),
                    to: 5,
                    size: 3,
                    blake3: Hash([3; 32]),
                    id: Hash([4; 32]),
                },
            ],
        }
    }

    fn signed(r: Release, rk: &[&SecretKey], fk: &[&SecretKey], seq: u64, expires: u64) -> Index {
        let rb = r.encode();
        let mut rs = Signatures::new();
        for k in rk {
            rs.insert(k.public().bytes, k.sign_message(&release_message(&rb)));
        }
        let f = Fresh {
            format: INDEX_FORMAT,
            channel: r.channel.clone(),
            release: Hash::of(&rb),
            release_seq: r.seq,
            seq,
            issued: 1000,
            expires,
        };
        let fb = f.encode();
        let mut fs = Signatures::new();
        for k in fk {
            fs.insert(k.public().bytes, k.sign_message(&fresh_message(&fb)));
        }
        Index::new(r, rs, f, fs)
    }

    fn policy(k: &[&SecretKey]) -> TrustPolicy {
        TrustPolicy { keys: k.iter().map(|k| k.public()).collect(), threshold: 1, retired: vec![] }
    }

    #[test]
    fn round_trip_and_verify() {
        let (rel, ts) = (key(1), key(2));
        let idx = signed(release(&[&ts]), &[&rel], &[&ts], 7, 5000);
        let back = Index::decode(&idx.encode()).expect("decodes");
        assert_eq!(back, idx);
        let v = back.verify(&policy(&[&rel]), 2000, 0, None).expect("verifies");
        assert!(v.by_timestamp_key);
        assert_eq!(v.accepted.release_seq, 3);
        assert_eq!(v.accepted.fresh_seq, 7);
        // The release keys may sign freshness themselves.
        let idx = signed(release(&[]), &[&rel], &[&rel], 7, 5000);
        assert!(!idx.verify(&policy(&[&rel]), 2000, 0, None).expect("verifies").by_timestamp_key);
    }

    #[test]
    fn refusals() {
        let (rel, ts, other) = (key(1), key(2), key(3));
        let p = policy(&[&rel]);
        // Timestamp key alone on the release part.
        let idx = signed(release(&[&ts]), &[&ts], &[&ts], 7, 5000);
        assert!(matches!(idx.verify(&p, 2000, 0, None), Err(IndexError::Release(_))));
        // Freshness by an unknown key.
        let idx = signed(release(&[&ts]), &[&rel], &[&other], 7, 5000);
        assert!(matches!(idx.verify(&p, 2000, 0, None), Err(IndexError::FreshUntrusted { .. })));
        // Expired, and the allowance.
        let idx = signed(release(&[&ts]), &[&rel], &[&ts], 7, 5000);
        assert!(matches!(idx.verify(&p, 5001, 0, None), Err(IndexError::Expired { .. })));
        assert!(idx.verify(&p, 5001, 10, None).is_ok());
        // Rollback of either sequence, equivocation, another channel.
        let last = |rs: u64, rh: Hash, fs: u64| Accepted {
            channel: "stable".into(),
            release_seq: rs,
            release: rh,
            fresh_seq: fs,
        };
        let rh = Hash::of(&idx.release_bytes);
        assert!(idx.verify(&p, 2000, 0, Some(&last(3, rh, 7))).is_ok());
        assert!(matches!(idx.verify(&p, 2000, 0, Some(&last(4, rh, 1))), Err(IndexError::Rollback(_))));
        assert!(matches!(idx.verify(&p, 2000, 0, Some(&last(3, rh, 8))), Err(IndexError::Rollback(_))));
        assert!(matches!(idx.verify(&p, 2000, 0, Some(&last(3, Hash([9; 32]), 1))), Err(IndexError::Rollback(_))));
        let mut l = last(1, rh, 1);
        l.channel = "beta".into();
        assert!(matches!(idx.verify(&p, 2000, 0, Some(&l)), Err(IndexError::Mismatch(_))));
        // Mix-and-match: a freshness part of another release part.
        let a = signed(release(&[&ts]), &[&rel], &[&ts], 7, 5000);
        let mut r2 = release(&[&ts]);
        r2.bundles[0].size = 11;
        let b = signed(r2, &[&rel], &[&ts], 8, 5000);
        let mixed =
            Index { fresh_bytes: a.fresh_bytes.clone(), fresh_sigs: a.fresh_sigs.clone(), fresh: a.fresh.clone(), ..b };
        assert!(matches!(mixed.verify(&p, 2000, 0, None), Err(IndexError::Mismatch(_))));
        // A bad signature fails even from an unknown key.
        let mut idx = signed(release(&[&ts]), &[&rel], &[&ts], 7, 5000);
        idx.fresh_sigs.insert(other.public().bytes, [7; 64]);
        assert!(matches!(idx.verify(&p, 2000, 0, None), Err(IndexError::FreshSignature(_))));
    }

    #[test]
    fn structure() {
        let ts = key(2);
        let mut r = release(&[&ts]);
        r.bundles.swap(0, 1);
        assert!(r.check().is_err(), "unsorted");
        let mut r = release(&[&ts]);
        r.latest = 6;
        assert!(r.check().is_err(), "latest");
        let mut r = release(&[&ts]);
        r.bundles[1].file = "../x.ferry".into();
        assert!(r.check().is_err(), "name");
        let mut r = release(&[&ts]);
        r.bundles[1].from = Some(5);
        assert!(r.check().is_err(), "from >= to");
        assert!(Index::decode(b"\x80").is_err());
        assert!(Index::decode(&[0u8; 10]).is_err());
        assert!(check_channel_dir("stable").is_ok() && check_channel_dir("../x").is_err());
    }
}
