//! BLAKE3 digests as a fixed-size newtype that encodes as a 32-byte CBOR byte string.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A BLAKE3-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Hash(*h.as_bytes())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

/// CBOR: a 32-byte byte string. Human-readable formats (the JSON of reports and test vectors):
/// 64 hex digits.
impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.serialize_str(&self.to_hex());
        }
        s.serialize_bytes(&self.0)
    }
}
impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = if d.is_human_readable() {
            let s = String::deserialize(d)?;
            serde_bytes::ByteBuf::from(unhex(&s).ok_or_else(|| serde::de::Error::custom("digest must be hex"))?)
        } else {
            serde_bytes::ByteBuf::deserialize(d)?
        };
        let a: [u8; 32] = b.as_slice().try_into().map_err(|_| serde::de::Error::custom("digest must be 32 bytes"))?;
        Ok(Hash(a))
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Parse lower- or upper-case hex; `None` on odd length or a non-hex digit.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let v = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.chunks(2).map(|p| Some(v(p[0])? << 4 | v(p[1])?)).collect()
}

/// Length of a [`Tag`] in bytes.
pub const TAG_LEN: usize = 8;

/// The first [`TAG_LEN`] bytes of a file's BLAKE3: what a `Tagged` OLD entry lists instead of the
/// whole digest (bundle-format.md §4.3). It only names which path drifted; the files are accepted
/// by the manifest's aggregate digest over their whole digests, never by their tags.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Tag(pub [u8; TAG_LEN]);

impl Tag {
    /// The tag of the content whose digest is `h`.
    pub fn of(h: &Hash) -> Tag {
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&h.0[..TAG_LEN]);
        Tag(t)
    }
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}
impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

/// CBOR: an 8-byte byte string; human-readable formats: 16 hex digits (as [`Hash`]).
impl Serialize for Tag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.serialize_str(&self.to_hex());
        }
        s.serialize_bytes(&self.0)
    }
}
impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = if d.is_human_readable() {
            let s = String::deserialize(d)?;
            serde_bytes::ByteBuf::from(unhex(&s).ok_or_else(|| serde::de::Error::custom("tag must be hex"))?)
        } else {
            serde_bytes::ByteBuf::deserialize(d)?
        };
        let a: [u8; TAG_LEN] = b.as_slice().try_into().map_err(|_| serde::de::Error::custom("tag must be 8 bytes"))?;
        Ok(Tag(a))
    }
}
