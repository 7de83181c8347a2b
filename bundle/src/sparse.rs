//! Sparse files (bundle-format.md §4.2 "Sparse files", §5): a file's data extents, how a file's
//! payload maps onto them, and its digest computed without reading its holes.
//!
//! Why: a 2 GiB VM image holding 4 KiB of data must not cost 2 GiB of hashing, compression,
//! payload and disk on the target. A `Kind::File` with `extents` carries only the bytes of its
//! data extents (concatenated, in order: the *data stream*); everything outside them is a hole
//! that reads as zeros. The digest stays BLAKE3 of the whole logical content, holes as zeros,
//! so it is the same for the same content whatever its layout ([`ZeroFillHasher`] feeds the
//! zeros from memory).

use crate::{Error, Hash};
use serde::{Deserialize, Serialize};

/// A run of data in a sparse file: bytes `[offset, offset + len)` of its logical content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

impl Extent {
    /// One past the last byte (saturating: checked by [`check_extents`]).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// Check the extents of a file of `size` bytes (bundle-format.md §4.5): at most `max` of them,
/// each non-empty, sorted, neither overlapping nor adjacent (a gap of at least one byte between
/// two), inside `size`, and leaving at least one byte of hole (a file without holes is dense and
/// has no `extents`: one encoding per layout). Returns the data length (the sum of the lengths).
pub fn check_extents(size: u64, extents: &[Extent], max: usize) -> Result<u64, String> {
    if extents.len() > max {
        return Err(format!("{} extents, over the limit of {max}", extents.len()));
    }
    let mut at = 0u64;
    let mut data = 0u64;
    for (i, e) in extents.iter().enumerate() {
        if e.len == 0 {
            return Err(format!("extent {i} is empty"));
        }
        if i > 0 && e.offset <= at {
            return Err(format!("extent {i} overlaps, touches or precedes the one before"));
        }
        at = e
            .offset
            .checked_add(e.len)
            .filter(|&end| end <= size)
            .ok_or_else(|| format!("extent {i} ends beyond the size {size}"))?;
        data += e.len;
    }
    if data >= size {
        return Err("extents leave no hole (a dense file has no extents)".into());
    }
    Ok(data)
}

/// The data length of a file: the bytes its pieces carry (`size` for a dense file).
pub fn data_len(size: u64, extents: Option<&[Extent]>) -> u64 {
    match extents {
        Some(x) => x.iter().map(|e| e.len).sum(),
        None => size,
    }
}

/// Where the data stream of a sparse file lands in the file: for data-stream bytes
/// `[data_offset, data_offset + len)`, the runs `(file offset, data offset, len)` in order.
/// `extents` must have passed [`check_extents`]; `starts[i]` is the data offset of extent `i`
/// ([`data_starts`]).
pub fn place(extents: &[Extent], starts: &[u64], data_offset: u64, len: u64) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let end = data_offset.saturating_add(len);
    // The extent holding `data_offset`: the last whose start is at or before it.
    let mut i = starts.partition_point(|&s| s <= data_offset).saturating_sub(1);
    let mut at = data_offset;
    while at < end && i < extents.len() {
        let (e, s) = (extents[i], starts[i]);
        let within = at - s;
        let n = (e.len - within).min(end - at);
        out.push((e.offset + within, at, n));
        at += n;
        i += 1;
    }
    out
}

/// The data offset at which each extent starts (prefix sums of the lengths).
pub fn data_starts(extents: &[Extent]) -> Vec<u64> {
    let mut at = 0u64;
    extents
        .iter()
        .map(|e| {
            let s = at;
            at = at.saturating_add(e.len);
            s
        })
        .collect()
}

/// A static run of zeros fed to the hasher for holes (no allocation, no reading): 1 MiB, so that
/// `update_rayon` can spread each call over idle cores. Measured: a 2 GiB file that is all hole
/// costs `ferry-build` 0.7 s of CPU in all (one busy core, dependencies optimised).
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// BLAKE3 over a file's logical content fed as data runs at increasing offsets, with the gaps
/// between them (and up to the size given to [`ZeroFillHasher::finish`]) fed as zeros from
/// memory. The digest equals `Hash::of` of the dense bytes.
#[derive(Default)]
pub struct ZeroFillHasher {
    h: blake3::Hasher,
    at: u64,
}

impl ZeroFillHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes fed so far (the logical offset of the next byte).
    pub fn position(&self) -> u64 {
        self.at
    }

    /// Feed `n` zero bytes.
    pub fn zeros(&mut self, n: u64) {
        let mut left = n;
        while left > 0 {
            let k = left.min(ZEROS.len() as u64) as usize;
            if k == ZEROS.len() {
                self.h.update_rayon(&ZEROS[..k]);
            } else {
                self.h.update(&ZEROS[..k]);
            }
            left -= k as u64;
        }
        self.at += n;
    }

    /// Feed `data` at logical `offset`: the gap since the last byte fed is zeros. An offset
    /// before the current position is an error (the caller's runs overlap).
    pub fn update_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let gap = offset
            .checked_sub(self.at)
            .ok_or_else(|| Error::Manifest(format!("data at {offset} before position {}", self.at)))?;
        self.zeros(gap);
        self.h.update(data);
        self.at = offset + data.len() as u64;
        Ok(())
    }

    /// Fill with zeros up to `size` and return the digest.
    pub fn finish(mut self, size: u64) -> Hash {
        let gap = size.saturating_sub(self.at);
        self.zeros(gap);
        self.h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(v: &[(u64, u64)]) -> Vec<Extent> {
        v.iter().map(|&(offset, len)| Extent { offset, len }).collect()
    }

    #[test]
    fn bad_extents_are_refused() {
        let ok = |s, v: &[(u64, u64)]| check_extents(s, &x(v), 8);
        assert_eq!(ok(100, &[(0, 10), (20, 10)]), Ok(20));
        assert_eq!(ok(100, &[]), Ok(0));
        assert!(ok(100, &[(20, 10), (0, 10)]).is_err_and(|e| e.contains("precedes")), "unsorted");
        assert!(ok(100, &[(0, 10), (5, 10)]).is_err(), "overlap");
        assert!(ok(100, &[(0, 10), (10, 10)]).is_err(), "adjacent");
        assert!(ok(100, &[(90, 11)]).is_err_and(|e| e.contains("beyond")), "beyond size");
        assert!(ok(100, &[(u64::MAX, 2)]).is_err(), "overflow");
        assert!(ok(100, &[(0, 0)]).is_err_and(|e| e.contains("empty")));
        assert!(ok(100, &[(0, 100)]).is_err_and(|e| e.contains("no hole")), "dense");
        assert!(ok(0, &[]).is_err(), "an empty file has no hole");
        let many: Vec<(u64, u64)> = (0..9).map(|i| (i * 10, 1)).collect();
        assert!(ok(1000, &many).is_err_and(|e| e.contains("over the limit")));
    }

    #[test]
    fn place_maps_the_data_stream_onto_extents() {
        let e = x(&[(100, 10), (200, 5), (300, 20)]);
        let s = data_starts(&e);
        assert_eq!(s, [0, 10, 15]);
        assert_eq!(place(&e, &s, 0, 35), [(100, 0, 10), (200, 10, 5), (300, 15, 20)]);
        assert_eq!(place(&e, &s, 8, 4), [(108, 8, 2), (200, 10, 2)]);
        assert_eq!(place(&e, &s, 15, 1), [(300, 15, 1)]);
        assert_eq!(place(&e, &s, 34, 10), [(319, 34, 1)]);
    }

    #[test]
    fn zero_fill_digest_is_the_dense_digest() -> Result<(), Error> {
        let size = 300_000u64;
        let runs: [(u64, &[u8]); 3] = [(0, b"head"), (70_000, b"middle"), (200_000, &[7u8; 5000])];
        let mut dense = vec![0u8; size as usize];
        let mut h = ZeroFillHasher::new();
        for (off, d) in runs {
            dense[off as usize..off as usize + d.len()].copy_from_slice(d);
            h.update_at(off, d)?;
        }
        assert_eq!(h.finish(size), Hash::of(&dense));
        assert_eq!(ZeroFillHasher::new().finish(size), Hash::of(&vec![0u8; size as usize]));
        let mut back = ZeroFillHasher::new();
        back.update_at(10, b"x")?;
        assert!(back.update_at(5, b"y").is_err());
        Ok(())
    }
}
