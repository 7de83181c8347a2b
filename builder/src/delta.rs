//! zstd encoding of payload pieces, plain or as a patch against an OLD file.
//!
//! A patch frame is a zstd frame compressed with a window of the OLD file as reference prefix
//! (`zstd --patch-from`): the applier decodes it with the same bytes of the file it already has,
//! so an update costs roughly the size of what changed. Window sizes are kept within what the
//! target's decoder accepts ([`bundle::Limits::max_window_log`]).

use std::io::{self, Read, Write};

/// Largest window log the builder asks for (the target accepts up to 28).
pub const MAX_WINDOW_LOG: u32 = 27;

/// Window log for a frame referencing `prefix_len` bytes and producing `data_len`:
/// `ceil(log2(prefix_len + data_len))`, at least 10, at most [`MAX_WINDOW_LOG`].
pub fn window_log(prefix_len: u64, data_len: u64) -> u32 {
    let total = prefix_len.saturating_add(data_len).max(1);
    let ceil = 64 - (total - 1).leading_zeros();
    ceil.clamp(10, MAX_WINDOW_LOG)
}

/// Reference prefixes longer than this are encoded at most at [`MAX_LARGE_PATCH_LEVEL`].
pub const LARGE_PATCH_PREFIX: u64 = 4 << 20;
/// Level cap for patches against large prefixes.
pub const MAX_LARGE_PATCH_LEVEL: i32 = 12;

/// The level actually used for a patch against a prefix of `prefix_len` bytes.
///
/// zstd's optimal parsers (levels 16 and up) keep their binary trees over only the last
/// `2^(chainLog-1)` bytes and index at most `2^(hashLog+3)` bytes of a reference prefix, and are
/// slow on a large one: measured on a 32 MiB chunk of a 110 MB library against a 64 MiB window,
/// level 3 gives 5.3 KB in 0.1 s, level 9 5.8 KB in 0.2 s, level 19 520 KB in 19 s; on numpy's
/// 25 MB OpenBLAS against its 22 MB predecessor level 19 gives 1.12 MB in 28 s. Levels 10-12
/// (lazy2 with zstd's row-hash match finder) load a large prefix as fast as level 9 and find
/// more: on that library level 9 gives 1.46 MB in 0.6 s and level 12 1.38 MB in 1.1 s; on a
/// 32 MiB chunk of it against a 55 MB prefix 1.85 MB in 0.7 s and 1.80 MB in 1.6 s (levels 13-15
/// are binary-tree searches again: 1.37 MB in 7.2 s at 13). So patches against large prefixes
/// use at most level 12; the plain candidate still uses `level`. The bound is 4 MiB: TypeScript's
/// 5.7-9.1 MB `tsc.js`, `tsserver.js` and `typescript.js` against their predecessors (npm corpus)
/// take 1.7-2.9 s each at level 19 and 0.11-0.16 s at level 12, for patches 36 % larger (357 KB
/// -> 484 KB); with an 8 MiB bound they took 7 of the npm build's 11.5 s (a bundle of 3.32 MB
/// built in 11.5 s, 3.44 MB in 8.0 s with this bound; pyext and rootfs-up unchanged).
pub fn patch_level(level: i32, prefix_len: u64) -> i32 {
    if prefix_len > LARGE_PATCH_PREFIX {
        level.min(MAX_LARGE_PATCH_LEVEL)
    } else {
        level
    }
}

/// Compress `data` into one zstd frame at `level`, with `prefix` as reference prefix if given
/// (then at [`patch_level`], with long-distance matching; against a large prefix at level 10 or
/// more also without it, keeping the smaller frame: see [`LDM_BOTH_MIN_LEVEL`]).
pub fn compress(data: &[u8], level: i32, prefix: Option<&[u8]>) -> io::Result<Vec<u8>> {
    let Some(p) = prefix else {
        let mut e = zstd::stream::write::Encoder::new(Vec::with_capacity(data.len() / 4 + 64), level)?;
        // Large levels pick windows up to 2^27; the target accepts 2^28.
        if data.len() as u64 > 1 << MAX_WINDOW_LOG {
            e.window_log(MAX_WINDOW_LOG)?;
        }
        return finish(e, data);
    };
    let level = patch_level(level, p.len() as u64);
    let with_ldm = compress_patch(data, level, p, true)?;
    if p.len() as u64 <= LARGE_PATCH_PREFIX || level < LDM_BOTH_MIN_LEVEL {
        return Ok(with_ldm);
    }
    let without = compress_patch(data, level, p, false)?;
    Ok(if without.len() < with_ldm.len() { without } else { with_ldm })
}

/// Against a prefix over [`LARGE_PATCH_PREFIX`], patches at this level or more (lazy2 with
/// zstd's row-hash match finder) are encoded with and without long-distance matching and the
/// smaller is kept. Neither wins everywhere: its matches of at least 64 bytes cover for a hash
/// table too small for the window (a 32 MiB chunk of an OpenBLAS against a 55 MB prefix, level
/// 12: 1.80 MB with, 3.61 MB without), but displace the match finder's shorter, closer ones when
/// the table covers the prefix (numpy's 25 MB OpenBLAS against its 22 MB predecessor: 1.38 MB
/// with, 1.23 MB without; its 10.5 MB `_multiarray_umath`: 289 KB with, 244 KB without). The
/// second encoding costs about 1 s per 25 MB.
pub const LDM_BOTH_MIN_LEVEL: i32 = 10;

/// One patch frame of `data` at `level` against `prefix`, with or without long-distance matching.
fn compress_patch(data: &[u8], level: i32, prefix: &[u8], ldm: bool) -> io::Result<Vec<u8>> {
    let out = Vec::with_capacity(data.len() / 4 + 64);
    let mut e = zstd::stream::write::Encoder::with_ref_prefix(out, level, prefix)?;
    e.long_distance_matching(ldm)?;
    e.window_log(window_log(prefix.len() as u64, data.len() as u64))?;
    finish(e, data)
}

/// Write `data` through `enc` as one frame with its content size and no checksum.
fn finish(mut enc: zstd::stream::write::Encoder<'_, Vec<u8>>, data: &[u8]) -> io::Result<Vec<u8>> {
    enc.set_pledged_src_size(Some(data.len() as u64))?;
    enc.include_contentsize(true)?;
    enc.include_checksum(false)?;
    enc.write_all(data)?;
    enc.finish()
}

/// Compress a solid frame (several small files concatenated) at `level`, with a window covering
/// the whole frame so that a file finds matches in every earlier file of its group (at low
/// levels zstd would otherwise pick a 1-2 MiB window).
pub fn compress_solid(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::with_capacity(data.len() / 4 + 64), level)?;
    enc.window_log(window_log(0, data.len() as u64))?;
    finish(enc, data)
}

/// The size [`compress_solid`] would give at `level`, without keeping the frame (a probe).
pub fn solid_len(data: &[u8], level: i32) -> io::Result<u64> {
    let mut enc = zstd::stream::write::Encoder::new(Counter(0), level)?;
    enc.window_log(window_log(0, data.len() as u64))?;
    enc.set_pledged_src_size(Some(data.len() as u64))?;
    enc.include_contentsize(true)?;
    enc.include_checksum(false)?;
    enc.write_all(data)?;
    Ok(enc.finish()?.0)
}

/// Whether `r` reads exactly `data` and ends there (compared piece by piece, with no copy of
/// the whole output: a frame's check against its input).
pub fn reads_back(mut r: impl Read, data: &[u8]) -> io::Result<bool> {
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0usize;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(at == data.len());
        }
        if data.get(at..at + n) != Some(&buf[..n]) {
            return Ok(false);
        }
        at += n;
    }
}

/// A writer that only counts the bytes written to it.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A bsdiff patch of `new` against `base` in the record format of bundle-format.md §5.1.
///
/// The matching is bsdiff 4's (Colin Percival) over one suffix array of the base built by
/// libsais ([`crate::bsdiff`]; about 10 times faster than the qsufsort of the classic algorithm
/// on shared objects, same patches), the records `bidiff`'s translator makes of its matches.
pub fn bsdiff(base: &[u8], new: &[u8]) -> io::Result<Vec<u8>> {
    let index = crate::bsdiff::Index::new(base)?;
    let mut out = Vec::with_capacity(new.len() / 8 + 64);
    let mut record = |c: &bidiff::Control| -> io::Result<()> {
        out.extend_from_slice(&(c.add.len() as u64).to_le_bytes());
        out.extend_from_slice(&(c.copy.len() as u64).to_le_bytes());
        let seek = if c.seek < 0 { c.seek.unsigned_abs() | 1 << 63 } else { c.seek as u64 };
        out.extend_from_slice(&seek.to_le_bytes());
        out.extend_from_slice(c.add);
        out.extend_from_slice(c.copy);
        Ok(())
    };
    let mut translator = bidiff::Translator::new(base, new, &mut record);
    crate::bsdiff::scan(&index, new, |m| translator.translate(m))?;
    translator.close()?;
    Ok(out)
}

/// Decode one frame (with `prefix` for a patch), refusing windows over 2^28 and output over
/// `max_out` bytes. Used to check every frame the builder writes.
pub fn decompress(frame: &[u8], prefix: Option<&[u8]>, max_out: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    decoder(frame, prefix)?.take(max_out.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > max_out {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame decodes to more than expected"));
    }
    Ok(out)
}

/// Whether `frame` (with `prefix` for a patch) decodes to exactly `data`, compared as it
/// decodes ([`reads_back`]; windows over 2^28 refused as by [`decompress`]).
pub fn decodes_to(frame: &[u8], prefix: Option<&[u8]>, data: &[u8]) -> io::Result<bool> {
    reads_back(decoder(frame, prefix)?, data)
}

/// A decoder of one zstd frame the way the applier decodes it (window at most 2^28).
fn decoder<'a>(frame: &'a [u8], prefix: Option<&'a [u8]>) -> io::Result<impl Read + 'a> {
    let mut dec = match prefix {
        Some(p) => zstd::stream::read::Decoder::with_ref_prefix(frame, p)?,
        None => zstd::stream::read::Decoder::with_buffer(frame)?,
    };
    dec.window_log_max(28)?;
    Ok(dec)
}

/// The window of an OLD file used as patch base for piece `i` of a chunked file with chunk size
/// `c`: `[max(0, i*c - c/2), min(old_len, (i+1)*c + c/2))`. Returns `(offset, len)`; `len` may
/// be 0 when the OLD file is shorter than the window start.
pub fn chunk_base_window(i: u64, c: u64, old_len: u64) -> (u64, u64) {
    let start = (i.saturating_mul(c)).saturating_sub(c / 2).min(old_len);
    let end = (i.saturating_add(1)).saturating_mul(c).saturating_add(c / 2).min(old_len);
    (start, end.saturating_sub(start))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift) for the builder's unit tests.
    pub(crate) fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn window_logs() {
        assert_eq!(window_log(0, 1), 10);
        assert_eq!(window_log(1 << 20, 1 << 20), 21);
        assert_eq!(window_log(1 << 20, (1 << 20) + 1), 22);
        assert_eq!(window_log(1 << 30, 1 << 30), 27);
    }

    #[test]
    fn patch_roundtrip_is_small() -> io::Result<()> {
        let base = pseudo_random(1 << 20, 1);
        let mut new = base.clone();
        new[1000..1010].copy_from_slice(b"0123456789");
        new.extend_from_slice(&pseudo_random(1000, 2));
        let patch = compress(&new, 19, Some(&base))?;
        let plain = compress(&new, 3, None)?;
        assert!(patch.len() < 4096, "patch is {} bytes", patch.len());
        assert!(plain.len() > 1 << 19);
        // Decoding the way the applier does it.
        let mut d = zstd::stream::read::Decoder::with_ref_prefix(&patch[..], &base)?;
        d.window_log_max(28)?;
        let mut out = Vec::new();
        d.read_to_end(&mut out)?;
        assert_eq!(out, new);
        assert_eq!(decompress(&plain, None, new.len() as u64)?, new);
        assert!(decompress(&plain, None, 10).is_err());
        Ok(())
    }

    #[test]
    fn large_prefix_patches_are_capped_and_keep_the_smaller_ldm_choice() -> io::Result<()> {
        assert_eq!(patch_level(19, LARGE_PATCH_PREFIX), 19);
        assert_eq!(patch_level(19, LARGE_PATCH_PREFIX + 1), MAX_LARGE_PATCH_LEVEL);
        assert_eq!(patch_level(3, LARGE_PATCH_PREFIX + 1), 3);
        let base = pseudo_random(LARGE_PATCH_PREFIX as usize + 4096, 7);
        let mut new: Vec<u8> = base[..1 << 20].to_vec();
        new.extend_from_slice(&pseudo_random(3000, 8));
        new.extend_from_slice(&base[LARGE_PATCH_PREFIX as usize - (1 << 20)..]);
        let patch = compress(&new, 19, Some(&base))?;
        let with = compress_patch(&new, MAX_LARGE_PATCH_LEVEL, &base, true)?;
        let without = compress_patch(&new, MAX_LARGE_PATCH_LEVEL, &base, false)?;
        assert_eq!(patch.len(), with.len().min(without.len()));
        assert!(patch.len() < 8192, "patch is {} bytes", patch.len());
        for frame in [&patch, &with, &without] {
            assert_eq!(decompress(frame, Some(&base), new.len() as u64)?, new);
        }
        Ok(())
    }

    #[test]
    fn bsdiff_patches_apply() -> io::Result<()> {
        let base = pseudo_random(300_000, 3);
        let mut new = base.clone();
        // Shifted addresses: every 4th byte of a region bumped, an insertion and a deletion.
        for i in (1000..200_000).step_by(4) {
            new[i] = new[i].wrapping_add(8);
        }
        new.splice(5000..5000, pseudo_random(777, 4));
        new.drain(250_000..260_000);
        let cases: [(&[u8], &[u8]); 4] = [(&base, &new), (&base, &[]), (b"x", &new[..100]), (&new, &base)];
        for (b, n) in cases {
            let patch = bsdiff(b, n)?;
            assert_eq!(bundle::bspatch::apply(b, &patch, n.len() as u64).as_deref(), Ok(n));
        }
        // A larger base (one suffix array of 4 MiB).
        let big = pseudo_random((4 << 20) + 4096, 5);
        let mut edited = big.clone();
        edited[2 << 20..(2 << 20) + 9].copy_from_slice(b"different");
        let patch = bsdiff(&big, &edited)?;
        assert_eq!(bundle::bspatch::apply(&big, &patch, edited.len() as u64).as_deref(), Ok(&edited[..]));
        let small = compress(&bsdiff(&base, &new)?, 19, None)?;
        assert!(small.len() < 20_000, "compressed bsdiff patch is {} bytes", small.len());
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        /// Random edits (overwrite, insert, delete, add to every k-th byte) of a random base:
        /// the bsdiff patch applies back to exactly the edited bytes.
        #[test]
        fn bsdiff_roundtrips_random_edits(
            seed in 0u64..1000,
            len in 0usize..20_000,
            edits in proptest::collection::vec((0u8..4, 0usize..20_000, 1usize..600, 1u8..255), 0..8),
        ) {
            let base = pseudo_random(len, seed);
            let mut new = base.clone();
            for (kind, at, n, v) in edits {
                let at = at.min(new.len());
                let end = (at + n).min(new.len());
                match kind {
                    0 => new[at..end].iter_mut().for_each(|b| *b = v),
                    1 => { new.splice(at..at, pseudo_random(n, u64::from(v))); }
                    2 => { new.drain(at..end); }
                    _ => new[at..end].iter_mut().step_by(usize::from(v % 8) + 1).for_each(|b| *b = b.wrapping_add(v)),
                }
            }
            let patch = bsdiff(&base, &new).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(bundle::bspatch::apply(&base, &patch, new.len() as u64), Ok(new));
        }
    }

    #[test]
    fn chunk_windows() {
        let c = 100;
        assert_eq!(chunk_base_window(0, c, 1000), (0, 150));
        assert_eq!(chunk_base_window(1, c, 1000), (50, 200));
        assert_eq!(chunk_base_window(9, c, 1000), (850, 150));
        assert_eq!(chunk_base_window(12, c, 1000), (1000, 0));
    }
}
