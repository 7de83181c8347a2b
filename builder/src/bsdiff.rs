//! The match scan of bsdiff 4 (Colin Percival's algorithm) over a suffix array of the base built
//! by libsais, whose matches `bidiff`'s translator turns into patch records ([`crate::delta`]).
//!
//! `bidiff` runs the same scan, but its suffix-array search compares the needle (the rest of the
//! new file) with the suffix at every step of the binary search from their first byte. Here the
//! search carries the prefix the needle shares with both ends of the remaining range (every
//! suffix between them shares it too, the array being sorted: Manber and Myers), so a long match
//! costs its length about once instead of once per step; the search was about half of the CPU of
//! a build with large shared libraries. And where bsdiff steps one byte on without taking a match,
//! the match it had, shifted by that byte, stands in for a new search (see [`scan`]).

use bundle::deflate::common_prefix;
use std::io;

/// A suffix array of a delta base, with where each two-byte prefix starts in it.
pub struct Index<'a> {
    old: &'a [u8],
    sa: Vec<i32>,
    /// `buckets[k]..buckets[k + 1]`: the suffixes starting with the two bytes `k` (big-endian),
    /// where a one-byte suffix counts as followed by a zero byte (it sorts just before those).
    /// Starting the search in its bucket saves the first 16 of the binary search's steps, each
    /// a cache miss in a large base.
    buckets: Vec<u32>,
}

/// The bucket key of the suffix (or needle) `s`, of at least one byte.
fn key(s: &[u8]) -> usize {
    usize::from(s[0]) << 8 | usize::from(s.get(1).copied().unwrap_or(0))
}

impl<'a> Index<'a> {
    /// Sort the suffixes of `old` (at most `i32::MAX` bytes).
    pub fn new(old: &'a [u8]) -> io::Result<Self> {
        if i32::try_from(old.len()).is_err() {
            return Err(io::Error::other("bsdiff base over 2 GiB"));
        }
        // libsais: SA-IS with cache-friendly induced sorting, about twice as fast as divsufsort
        // (measured on pyext's 21 MB OpenBLAS library: 0.58 against 1.12 s; the array of a text
        // is unique, so the patches are the same).
        let sa: Vec<i32> = libsais::SuffixArrayConstruction::for_text(old)
            .in_owned_buffer()
            .single_threaded()
            .run()
            .map_err(|e| io::Error::other(format!("suffix array: {e:?}")))?
            .into_vec();
        let mut buckets = vec![0u32; (1 << 16) + 1];
        for i in 0..old.len() {
            buckets[key(&old[i..]) + 1] += 1;
        }
        for k in 1..buckets.len() {
            buckets[k] += buckets[k - 1];
        }
        Ok(Index { old, sa, buckets })
    }

    /// Where in the base the longest prefix of `needle` occurs, and its length ((0, 0) for an
    /// empty base).
    pub fn longest_match(&self, needle: &[u8]) -> (usize, usize) {
        let Some(last) = self.sa.len().checked_sub(1) else { return (0, 0) };
        // Every suffix sharing the needle's first two bytes is in the needle's bucket, and only
        // those can match more than one byte; without any, the whole array is searched.
        let (lo, hi) = match needle.len() {
            0 | 1 => (0, last),
            _ => {
                let k = key(needle);
                let (start, end) = (self.buckets[k] as usize, self.buckets[k + 1] as usize);
                if start < end {
                    (start, end - 1)
                } else {
                    (0, last)
                }
            }
        };
        let at = |i: usize| self.sa[i] as usize;
        // The common prefix of the suffix at `i` and the needle, known to be at least `k`.
        let lcp = |i: usize, k: usize| {
            let suffix = self.old.get(at(i) + k..).unwrap_or_default();
            k + common_prefix(suffix, needle.get(k..).unwrap_or_default())
        };
        let (mut lo, mut hi) = (lo, hi);
        let (mut lcp_lo, mut lcp_hi) = (lcp(lo, 0), lcp(hi, 0));
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let l = lcp(mid, lcp_lo.min(lcp_hi));
            // The needle sorts after the suffix at `mid` if they differ at `l` with the needle's
            // byte larger, or the suffix ends there (a proper prefix of the needle).
            let after = match (needle.get(l), self.old.get(at(mid) + l)) {
                (Some(n), Some(o)) => n > o,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if after {
                (lo, lcp_lo) = (mid, l);
            } else {
                (hi, lcp_hi) = (mid, l);
            }
        }
        if lcp_lo > lcp_hi {
            (at(lo), lcp_lo)
        } else {
            (at(hi), lcp_hi)
        }
    }
}

/// Whether base byte `old_at` (which may be out of range) equals new byte `new_at`.
fn same(old: &[u8], old_at: isize, new: &[u8], new_at: usize) -> bool {
    usize::try_from(old_at).ok().and_then(|o| old.get(o)).is_some_and(|b| Some(b) == new.get(new_at))
}

/// Run bsdiff's scan of `new` against the base of `index`, handing each match to `on_match` in
/// order: a stretch of `new` taken from the base with differences (`add`) followed by bytes
/// taken as they are (`copy`), as `bidiff::Translator` expects them.
pub fn scan<E>(
    index: &Index<'_>,
    new: &[u8],
    mut on_match: impl FnMut(bidiff::Match) -> Result<(), E>,
) -> Result<(), E> {
    let old = index.old;
    let (mut scan, mut len, mut pos) = (0usize, 0usize, 0usize);
    let (mut last_scan, mut last_pos, mut last_offset) = (0usize, 0usize, 0isize);
    while scan < new.len() {
        // How many bytes from `scan` on the previous match's offset already explains.
        let mut old_score = 0isize;
        scan += len;
        let mut counted = scan;
        let mut searched = false;
        while scan < new.len() {
            // The match found one byte back, one byte on, is a match here (a byte shorter): it is
            // taken instead of searching again while it is longer than a byte. bsdiff searched at
            // every byte, which on a recompiled library (most bytes explained by neither the
            // previous offset nor a long new match) is a search every few bytes. Measured: pyext
            // build 7.9 -> 6.5 s and its bsdiff frames 2.914 -> 2.891 MB (the match keeps its
            // offset instead of hopping to another of about the same length), npm 1.627 ->
            // 1.608 MB, pyext-arm64 6.3 -> 4.8 s but 2.000 -> 2.024 MB.
            if searched && len > 1 {
                (pos, len) = (pos + 1, len - 1);
            } else {
                (pos, len) = index.longest_match(&new[scan..]);
                searched = true;
            }
            while counted < scan + len {
                if same(old, counted as isize + last_offset, new, counted) {
                    old_score += 1;
                }
                counted += 1;
            }
            let len_i = len as isize;
            // A new match worth a record: exactly what the old offset gives (and not empty), or
            // more than 8 bytes better.
            if (len_i == old_score && len != 0) || len_i > old_score + 8 {
                break;
            }
            if same(old, scan as isize + last_offset, new, scan) {
                old_score -= 1;
            }
            scan += 1;
        }
        if len as isize == old_score && scan != new.len() {
            continue;
        }
        // Extend the previous match forwards from `last_scan` while it scores at least half.
        let (mut s, mut best, mut len_f) = (0isize, 0isize, 0usize);
        let mut i = 0;
        while last_scan + i < scan && last_pos + i < old.len() {
            if old[last_pos + i] == new[last_scan + i] {
                s += 1;
            }
            i += 1;
            if s * 2 - i as isize > best * 2 - len_f as isize {
                (best, len_f) = (s, i);
            }
        }
        // Extend this match backwards from `scan` the same way.
        let mut len_b = 0usize;
        if scan < new.len() {
            let (mut s, mut best) = (0isize, 0isize);
            let mut i = 1;
            while scan >= last_scan + i && pos >= i {
                if old[pos - i] == new[scan - i] {
                    s += 1;
                }
                if s * 2 - i as isize > best * 2 - len_b as isize {
                    (best, len_b) = (s, i);
                }
                i += 1;
            }
        }
        // Where the two extensions overlap, split them where the score favours each most.
        if last_scan + len_f > scan - len_b {
            let overlap = (last_scan + len_f) - (scan - len_b);
            let (mut s, mut best, mut len_s) = (0isize, 0isize, 0usize);
            for i in 0..overlap {
                if new[last_scan + len_f - overlap + i] == old[last_pos + len_f - overlap + i] {
                    s += 1;
                }
                if new[scan - len_b + i] == old[pos - len_b + i] {
                    s -= 1;
                }
                if s > best {
                    (best, len_s) = (s, i + 1);
                }
            }
            len_f = len_f + len_s - overlap;
            len_b -= len_s;
        }
        on_match(bidiff::Match {
            add_old_start: last_pos,
            add_new_start: last_scan,
            add_length: len_f,
            copy_end: scan - len_b,
        })?;
        last_scan = scan - len_b;
        last_pos = pos - len_b;
        last_offset = pos as isize - scan as isize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest match by brute force: (length, every position that has it).
    fn brute(old: &[u8], needle: &[u8]) -> (usize, Vec<usize>) {
        let lens: Vec<usize> = (0..old.len()).map(|p| common_prefix(&old[p..], needle)).collect();
        let best = lens.iter().copied().max().unwrap_or(0);
        (best, (0..old.len()).filter(|&p| lens[p] == best).collect())
    }

    #[test]
    fn longest_match_is_a_longest_one() -> io::Result<()> {
        let old = b"abracadabra, abracadabra! cadabra abr a".repeat(3);
        let index = Index::new(&old)?;
        for needle in
            [&b"abra"[..], b"cadabra abr", b"zzz", b"", b"a", b"ra! cad", b"abracadabra, abracadabra! cadabra abr aab"]
        {
            let (pos, len) = index.longest_match(needle);
            let (best, at) = brute(&old, needle);
            assert_eq!(len, best, "{needle:?}");
            assert!(len == 0 || at.contains(&pos), "{needle:?} at {pos}");
        }
        assert_eq!(Index::new(b"")?.longest_match(b"abc"), (0, 0));
        // Zero bytes and a one-byte suffix sharing the bucket of a byte followed by zero.
        let old = b"x\0\0ab\0x\0zzzx".to_vec();
        let index = Index::new(&old)?;
        for needle in [&b"x\0z"[..], b"x", b"x\0\0a", b"\0", b"\0\0\0", b"zx", b"zzzx\0", b"q"] {
            let (pos, len) = index.longest_match(needle);
            let (best, at) = brute(&old, needle);
            assert_eq!(len, best, "{needle:?}");
            assert!(len == 0 || at.contains(&pos), "{needle:?} at {pos}");
        }
        Ok(())
    }
}
