//! [`BundlePath`]: parse, don't validate. A path in a bundle is a sequence of raw-byte Linux
//! name components joined by `/`, relative to the target root.
//!
//! The constructor rejects everything that could name something outside the target or be read
//! two ways: empty paths, a leading `/` (absolute — CWE-22), empty components (`//`, trailing
//! `/`), `.` and `..` (traversal), NUL (C APIs would truncate), and anything under the root
//! `.ferry` (the applier's own state). Deserialisation goes through the same constructor, so a
//! manifest cannot even hold an unsafe path.

use crate::Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The name of the applier's state directory at the target root; no bundle path may be in it.
pub const STATE_DIR: &[u8] = b".ferry";
/// Default bound on path bytes (see [`crate::Limits`]).
pub const MAX_PATH_LEN: usize = 4096;
/// Default bound on path components.
pub const MAX_PATH_DEPTH: usize = 256;
/// Bound on one component: Linux's `NAME_MAX`, a format rule rather than a limit (a longer name
/// cannot exist on the target).
pub const MAX_NAME_LEN: usize = 255;

/// A validated relative path. Ordering is bytewise, which sorts a parent before its children.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BundlePath(Vec<u8>);

impl BundlePath {
    /// Validate raw bytes as a bundle path.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<BundlePath, Error> {
        let bytes = bytes.into();
        let bad = |why| Err(Error::UnsafePath { path: String::from_utf8_lossy(&bytes).into_owned(), why });
        if bytes.is_empty() {
            return bad("empty path");
        }
        if bytes.len() > MAX_PATH_LEN {
            return bad("path too long");
        }
        if bytes[0] == b'/' {
            return bad("absolute path");
        }
        if bytes.contains(&0) {
            return bad("NUL byte in path");
        }
        let mut depth = 0;
        for (i, c) in bytes.split(|&b| b == b'/').enumerate() {
            depth += 1;
            match c {
                b"" => return bad("empty path component"),
                b"." => return bad("'.' component"),
                b".." => return bad("'..' component"),
                _ if i == 0 && c == STATE_DIR => return bad("path under the state directory .ferry"),
                _ if c.len() > MAX_NAME_LEN => return bad("path component longer than 255 bytes"),
                _ => {}
            }
        }
        if depth > MAX_PATH_DEPTH {
            return bad("path too deep");
        }
        Ok(BundlePath(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The parent path, or `None` for a top-level name.
    pub fn parent(&self) -> Option<BundlePath> {
        let i = self.0.iter().rposition(|&b| b == b'/')?;
        Some(BundlePath(self.0[..i].to_vec()))
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// Components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/')
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// True if `self` is a strict descendant of `other`.
    pub fn is_under(&self, other: &BundlePath) -> bool {
        self.0.len() > other.0.len() && self.0.starts_with(&other.0) && self.0[other.0.len()] == b'/'
    }

    /// Every strict ancestor, outermost first.
    pub fn ancestors(&self) -> Vec<BundlePath> {
        let mut v = Vec::new();
        let mut p = self.parent();
        while let Some(x) = p {
            p = x.parent();
            v.push(x);
        }
        v.reverse();
        v
    }

    /// `self/name`, validated.
    pub fn join(&self, name: &[u8]) -> Result<BundlePath, Error> {
        let mut v = self.0.clone();
        v.push(b'/');
        v.extend_from_slice(name);
        BundlePath::new(v)
    }

    /// A lossy, printable form for messages.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl fmt::Debug for BundlePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.display())
    }
}
impl fmt::Display for BundlePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// CBOR: a byte string. Human-readable formats: a string when the path is UTF-8, else bytes.
impl Serialize for BundlePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) if s.is_human_readable() => s.serialize_str(t),
            _ => s.serialize_bytes(&self.0),
        }
    }
}
impl<'de> Deserialize<'de> for BundlePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = serde_bytes::ByteBuf::deserialize(d)?;
        BundlePath::new(b.into_vec()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok: &[&[u8]] = &[b"a", b"a/b", b"a/.ferry", b".ferry2", b"\xff\xfe/x", b"a b/c...d", b"..a", b"a.."];
        for p in ok {
            assert!(BundlePath::new(p.to_vec()).is_ok(), "{:?}", p);
        }
        let bad: &[&[u8]] = &[
            b"",
            b"/",
            b"/a",
            b"a/",
            b"a//b",
            b".",
            b"..",
            b"a/./b",
            b"a/../b",
            b"../a",
            b"a\0b",
            b".ferry",
            b".ferry/x",
            b"a/..",
        ];
        for p in bad {
            assert!(BundlePath::new(p.to_vec()).is_err(), "{:?}", p);
        }
        assert!(BundlePath::new(vec![b'a'; 256]).is_err());
        let deep: Vec<u8> = "a/".repeat(300).bytes().chain(*b"a").collect();
        assert!(BundlePath::new(deep).is_err());
    }

    #[test]
    fn relations() {
        let p = |s: &str| BundlePath::new(s).unwrap();
        assert_eq!(p("a/b/c").parent(), Some(p("a/b")));
        assert_eq!(p("a").parent(), None);
        assert!(p("a/b").is_under(&p("a")));
        assert!(!p("ab").is_under(&p("a")));
        assert_eq!(p("a/b/c").ancestors(), vec![p("a"), p("a/b")]);
    }
}
