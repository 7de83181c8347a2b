//! Applying the bsdiff patches of [`crate::Method::Bsdiff`] pieces (bundle-format.md §5.1).
//!
//! A patch is a sequence of records, each a 24-byte header — `add` (u64 LE), `copy` (u64 LE),
//! `seek` (i64 LE in sign-magnitude form: bit 63 is the sign) — followed by `add` bytes that are
//! added (mod 256) to the next `add` bytes of the base, then `copy` bytes copied as they are. The
//! base position starts at 0, advances by `add` and then moves by `seek`. This is the record
//! stream of Colin Percival's bsdiff 4 as written by the `bsdiff` crate (interleaved, without
//! the BSDIFF40 header or bzip2). The builder computes the records with the `bidiff` crate.
//!
//! A `BsdiffSplit` frame holds the same records in three parts ([`apply_split`]): the headers
//! one after the other, the copied literals, and the added differences.
//!
//! Everything is bounded: the output never exceeds the declared length, every base range is
//! checked, and the patch must produce exactly the declared length and end with its last record.
//! [`apply_stream`] applies a patch as it is read (the applier's way: memory is the base and a
//! 64 KiB buffer, whatever the file's size); [`apply`] is the same over bytes in memory.

use std::io::Read;

/// Apply `patch` to `base`; the result must be exactly `out_len` bytes (at most `out_len`, and
/// at most the patch's length, are ever allocated). Errors say what is wrong with the patch.
pub fn apply(base: &[u8], patch: &[u8], out_len: u64) -> Result<Vec<u8>, String> {
    // Every output byte comes from a patch byte (an added difference or a copied literal), so
    // the output never outgrows the patch: a declared length beyond it is not reserved up front
    // (a 12-byte patch declaring 4 GiB would otherwise allocate 4 GiB before failing).
    let cap = usize::try_from(out_len).map_err(|_| "declared length too large".to_string())?.min(patch.len());
    let mut out: Vec<u8> = Vec::with_capacity(cap);
    apply_stream(base, patch, out_len, |_, chunk| {
        out.extend_from_slice(chunk);
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Bytes of the patch handled at a time by [`apply_stream`].
const CHUNK: usize = 1 << 16;

/// Apply the patch read from `patch` to `base`, handing the output to `sink` in order as
/// (offset in the output, bytes), in pieces of at most 64 KiB: neither the patch nor the output
/// is held in memory. The output must be exactly `out_len` bytes. A malformed patch is an
/// `InvalidData` error saying what is wrong; errors of `patch` and `sink` are passed on.
pub fn apply_stream<R: std::io::Read>(
    base: &[u8],
    patch: R,
    out_len: u64,
    sink: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    apply_records(base, Interleaved(patch), out_len, sink)
}

/// [`apply_stream`] for a patch in three parts (a `BsdiffSplit` frame, bundle-format.md §5.1):
/// the records' 24-byte headers one after the other (`control`), their copied literals one
/// after the other (`copy`), and their added differences read from `diff`. Every part must be
/// used up exactly.
pub fn apply_split<R: std::io::Read>(
    base: &[u8],
    control: &[u8],
    copy: &[u8],
    diff: R,
    out_len: u64,
    sink: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    apply_records(base, Split { control, copy, diff }, out_len, sink)
}

/// The three parts of the interleaved patch `patch` for [`apply_split`]: its record headers,
/// added differences and copied literals, each in record order (a `BsdiffSplit` frame's streams
/// hold the headers, the literals, then the differences). A malformed patch is split as far as
/// its records go: a cut header goes to the headers, the bytes of a cut record to its
/// differences, then to its literals; [`apply_split`] refuses the parts where [`apply_stream`]
/// refuses the patch.
pub fn split(patch: &[u8]) -> [Vec<u8>; 3] {
    let (mut control, mut diff, mut copy) = (Vec::new(), Vec::with_capacity(patch.len()), Vec::new());
    let mut rest = patch;
    while !rest.is_empty() {
        let Some((head, tail)) = rest.split_first_chunk::<24>() else {
            control.extend_from_slice(rest);
            break;
        };
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i * 8..i * 8 + 8]);
            usize::try_from(u64::from_le_bytes(b)).unwrap_or(usize::MAX)
        };
        let add = word(0).min(tail.len());
        let lit = word(1).min(tail.len() - add);
        control.extend_from_slice(head);
        diff.extend_from_slice(&tail[..add]);
        copy.extend_from_slice(&tail[add..add + lit]);
        rest = &tail[add + lit..];
    }
    [control, diff, copy]
}

/// [`apply_split`] over a split frame decoded as one stream (`bundle::lzma::SplitDecoder`): its
/// first `lens[0]` bytes are the record headers and the next `lens[1]` the copied literals, held
/// in memory (the caller bounds `lens`: the manifest's check keeps them inside the frame), then
/// the added differences, read as they are applied.
pub fn apply_split_stream<R: std::io::Read>(
    base: &[u8],
    lens: [u64; 2],
    mut stream: R,
    out_len: u64,
    sink: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut part = |len: u64| -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        (&mut stream).take(len).read_to_end(&mut v)?;
        if v.len() as u64 != len {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame ends inside its first streams"));
        }
        Ok(v)
    };
    let (control, copy) = (part(lens[0])?, part(lens[1])?);
    apply_split(base, &control, &copy, stream, out_len, sink)
}

/// Where a patch's record headers, added differences and copied literals come from.
trait Records {
    /// Fill `buf` as far as the record headers go: the bytes read.
    fn header(&mut self, buf: &mut [u8; 24]) -> std::io::Result<usize>;
    /// Fill `buf` with the next added differences (`diff`) or copied literals: the bytes read.
    fn body(&mut self, diff: bool, buf: &mut [u8]) -> std::io::Result<usize>;
    /// After the last record: an error if anything is left.
    fn finish(&mut self) -> std::io::Result<()>;
}

/// A patch as bsdiff writes it: header, differences, literals, record after record.
struct Interleaved<R>(R);

impl<R: std::io::Read> Records for Interleaved<R> {
    fn header(&mut self, buf: &mut [u8; 24]) -> std::io::Result<usize> {
        read_full(&mut self.0, buf)
    }
    fn body(&mut self, _diff: bool, buf: &mut [u8]) -> std::io::Result<usize> {
        read_full(&mut self.0, buf)
    }
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A patch in its three parts.
struct Split<'a, R> {
    control: &'a [u8],
    copy: &'a [u8],
    diff: R,
}

/// Take up to `buf.len()` bytes from the front of `src`.
fn take_front(src: &mut &[u8], buf: &mut [u8]) -> usize {
    let n = buf.len().min(src.len());
    buf[..n].copy_from_slice(&src[..n]);
    *src = &src[n..];
    n
}

impl<R: std::io::Read> Records for Split<'_, R> {
    fn header(&mut self, buf: &mut [u8; 24]) -> std::io::Result<usize> {
        Ok(take_front(&mut self.control, buf))
    }
    fn body(&mut self, diff: bool, buf: &mut [u8]) -> std::io::Result<usize> {
        if diff {
            read_full(&mut self.diff, buf)
        } else {
            Ok(take_front(&mut self.copy, buf))
        }
    }
    fn finish(&mut self) -> std::io::Result<()> {
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        if !self.copy.is_empty() {
            return Err(bad("copied literals left over after the last record"));
        }
        if read_full(&mut self.diff, &mut [0u8; 1])? != 0 {
            return Err(bad("added differences left over after the last record"));
        }
        Ok(())
    }
}

/// The records of `patch` applied to `base` ([`apply_stream`]).
fn apply_records(
    base: &[u8],
    mut patch: impl Records,
    out_len: u64,
    mut sink: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut buf = vec![0u8; CHUNK];
    let (mut pos, mut out, mut at) = (0u64, 0u64, 0u64); // base position, output length, patch bytes read
    loop {
        let mut head = [0u8; 24];
        let got = patch.header(&mut head)?;
        if got == 0 {
            break;
        }
        if got < head.len() {
            return Err(bad(format!("truncated record header at patch byte {at}")));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let (add, copy, seek) = (word(0), word(1), word(2));
        let room = out_len - out;
        if add > room || copy > room - add {
            return Err(bad(format!("record at patch byte {at} writes past the declared {out_len} bytes")));
        }
        at += 24;
        if pos.checked_add(add).is_none_or(|e| e > base.len() as u64) {
            return Err(bad(format!("record reads past the end of the {}-byte base", base.len())));
        }
        // The added differences, then the copied literal.
        for (n, from_base) in [(add, true), (copy, false)] {
            let mut left = n;
            while left > 0 {
                let k = left.min(CHUNK as u64) as usize;
                if patch.body(from_base, &mut buf[..k])? < k {
                    return Err(bad("patch ends inside a record".into()));
                }
                if from_base {
                    let b = &base[pos as usize..pos as usize + k];
                    buf[..k].iter_mut().zip(b).for_each(|(d, b)| *d = d.wrapping_add(*b));
                    pos += k as u64;
                }
                sink(out, &buf[..k])?;
                (out, at, left) = (out + k as u64, at + k as u64, left - k as u64);
            }
        }
        let magnitude = seek & !(1 << 63);
        pos = if seek >> 63 == 1 { pos.checked_sub(magnitude) } else { pos.checked_add(magnitude) }
            .ok_or_else(|| bad("seek moves outside the base".into()))?;
    }
    patch.finish()?;
    if out != out_len {
        return Err(bad(format!("patch produces {out} bytes, declared {out_len}")));
    }
    Ok(())
}

/// Read until `buf` is full or the input ends; the number of bytes read.
fn read_full<R: std::io::Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(add: u64, copy: u64, seek: i64, bytes: &[u8]) -> Vec<u8> {
        let mut v = add.to_le_bytes().to_vec();
        v.extend_from_slice(&copy.to_le_bytes());
        let s = if seek < 0 { (seek.unsigned_abs()) | 1 << 63 } else { seek as u64 };
        v.extend_from_slice(&s.to_le_bytes());
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn records_add_copy_and_seek() {
        let base = b"hello world";
        // "hellp" (add 1 to the 5th byte), then literal " there", then seek back to 0 and "he".
        let mut p = record(5, 6, -5, &[0, 0, 0, 0, 1]);
        p.extend_from_slice(b" there");
        p.extend(record(2, 0, 0, &[0, 0]));
        assert_eq!(apply(base, &p, 13).as_deref(), Ok(&b"hellp therehe"[..]));
        assert!(apply(base, &p, 12).is_err(), "longer than declared");
        assert!(apply(base, &p, 14).is_err(), "shorter than declared");
        assert!(apply(base, &p[..30], 13).is_err(), "truncated");
        assert!(apply(b"hi", &p, 13).is_err(), "base too short");
        assert!(apply(base, &record(0, 0, -1, &[]), 0).is_err(), "seek before the start");
        assert!(apply(base, &record(u64::MAX, u64::MAX, 0, &[]), 10).is_err());
        assert_eq!(apply(base, &[], 0), Ok(vec![]));
        // A huge declared length is refused without reserving it.
        assert!(apply(base, &record(0, 0, 0, &[]), u64::from(u32::MAX) << 16).is_err());
    }
    /// bsdiff's records applied the plain way, over bytes in memory, with no declared length:
    /// the output, or `None` for a malformed patch (the independent reference of the test below).
    fn reference(base: &[u8], patch: &[u8]) -> Option<Vec<u8>> {
        let (mut out, mut pos, mut rest) = (Vec::new(), 0i128, patch);
        while !rest.is_empty() {
            let (head, tail) = rest.split_first_chunk::<24>()?;
            let w = |i: usize| u64::from_le_bytes(head[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            let (add, copy, seek) = (w(0) as usize, w(1) as usize, w(2));
            let (diff, lit) = (tail.get(..add)?, tail.get(add..add.checked_add(copy)?)?);
            let old = base.get(usize::try_from(pos).ok()?..usize::try_from(pos).ok()?.checked_add(add)?)?;
            out.extend(diff.iter().zip(old).map(|(d, b)| d.wrapping_add(*b)));
            out.extend_from_slice(lit);
            let magnitude = i128::from(seek & !(1 << 63));
            pos += add as i128 + if seek >> 63 == 1 { -magnitude } else { magnitude };
            if pos < 0 {
                return None;
            }
            rest = &tail[add + copy..];
        }
        Some(out)
    }

    /// A reader handing out at most `n` bytes per read.
    struct Trickle<'a>(&'a [u8], usize);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let k = self.1.min(out.len()).min(self.0.len());
            out[..k].copy_from_slice(&self.0[..k]);
            self.0 = &self.0[k..];
            Ok(k)
        }
    }

    proptest::proptest! {
        /// Streaming gives what a plain in-memory reading of the records gives (or an error
        /// where that errs), with records longer than the 64 KiB buffer, reads of any size, and
        /// output offsets in order; `apply` agrees.
        #[test]
        fn streaming_matches_in_memory(
            base in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200_000),
            recs in proptest::collection::vec((0u64..150_000, 0u64..70_000, -200_000i64..200_000, proptest::prelude::any::<u8>()), 0..4),
            step in 1usize..100_000,
            cut in proptest::prelude::any::<bool>(),
        ) {
            let mut p = Vec::new();
            for (add, copy, seek, fill) in recs {
                let bytes = vec![fill; (add + copy) as usize];
                p.extend(record(add, copy, seek, &bytes));
            }
            if cut && !p.is_empty() {
                p.truncate(p.len() / 2 + 1);
            }
            let whole = reference(&base, &p);
            let declared = whole.as_ref().map_or(1_000_000, |w| w.len() as u64);
            let mut got = Vec::new();
            let mut next = 0u64;
            let r = apply_stream(&base, Trickle(&p, step), declared, |off, c| {
                assert_eq!(off, next);
                next += c.len() as u64;
                got.extend_from_slice(c);
                Ok(())
            });
            proptest::prop_assert_eq!(r.is_ok(), apply(&base, &p, declared).is_ok());
            if r.is_ok() {
                proptest::prop_assert_eq!(Some(&got), whole.as_ref());
                proptest::prop_assert_eq!(apply(&base, &p, declared).ok(), Some(got));
            }
        }

        /// The same records in three parts give what they give interleaved, and a part with a
        /// byte left over, or one byte short, is refused.
        #[test]
        fn split_parts_match_interleaved(
            base in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100_000),
            recs in proptest::collection::vec((0u64..80_000, 0u64..70_000, -100_000i64..100_000, proptest::prelude::any::<u8>()), 0..4),
            step in 1usize..100_000,
            spoil in 0u8..5,
        ) {
            let mut p = Vec::new();
            for (add, copy_len, seek, fill) in recs {
                let bytes: Vec<u8> = (0..add + copy_len).map(|i| fill.wrapping_add(i as u8)).collect();
                p.extend(record(add, copy_len, seek, &bytes));
            }
            let [mut control, mut diff, mut copy] = split(&p);
            let whole = reference(&base, &p);
            let declared = whole.as_ref().map_or(1_000_000, |w| w.len() as u64);
            match spoil {
                1 => copy.push(7),
                2 => diff.push(7),
                3 if !control.is_empty() => { control.pop(); }
                4 if !copy.is_empty() => { copy.pop(); }
                _ => {}
            }
            let spoiled = spoil != 0 && !(spoil == 3 && control.is_empty()) && !(spoil == 4 && copy.is_empty());
            let mut got = Vec::new();
            let r = apply_split(&base, &control, &copy, Trickle(&diff, step), declared, |off, c| {
                assert_eq!(off, got.len() as u64);
                got.extend_from_slice(c);
                Ok(())
            });
            if spoiled || whole.is_none() {
                proptest::prop_assert!(r.is_err());
            } else {
                proptest::prop_assert!(r.is_ok(), "{r:?}");
                proptest::prop_assert_eq!(Some(got), whole);
            }
        }
    }
}
