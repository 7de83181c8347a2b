//! Applying the bsdiff patches of [`crate::Method::Bsdiff`] pieces (bundle-format.md §5.1).
//!
//! A patch is a sequence of records, each a 24-byte header — `add` (u64 LE), `copy` (u64 LE),
//! `seek` (i64 LE in sign-magnitude form: bit 63 is the sign) — followed by `add` bytes that are
//! added (mod 256) to the next `add` bytes of the base, then `copy` bytes copied as they are. The
//! base position starts at 0, advances by `add` and then moves by `seek`. This is the record
//! stream of Colin Percival's bsdiff 4 as written by the `bsdiff` crate (interleaved, without
//! the BSDIFF40 header or bzip2). The builder computes the records with the `bidiff` crate.
//!
//! Everything is bounded: the output never exceeds the declared length, every base range is
//! checked, and the patch must produce exactly the declared length and end with its last record.

/// Apply `patch` to `base`; the result must be exactly `out_len` bytes (at most `out_len`, and
/// at most the patch's length, are ever allocated). Errors say what is wrong with the patch.
pub fn apply(base: &[u8], patch: &[u8], out_len: u64) -> Result<Vec<u8>, String> {
    let out_len = usize::try_from(out_len).map_err(|_| "declared length too large".to_string())?;
    // Every output byte comes from a patch byte (an added difference or a copied literal), so
    // the output never outgrows the patch: a declared length beyond it is not reserved up front
    // (a 12-byte patch declaring 4 GiB would otherwise allocate 4 GiB before failing).
    let mut out: Vec<u8> = Vec::with_capacity(out_len.min(patch.len()));
    let mut pos: u64 = 0; // position in the base
    let mut rest = patch;
    while !rest.is_empty() {
        let Some((head, tail)) = rest.split_first_chunk::<24>() else {
            return Err(format!("truncated record header at patch byte {}", patch.len() - rest.len()));
        };
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let (add, copy, seek) = (word(0), word(1), word(2));
        let room = (out_len - out.len()) as u64;
        if add > room || copy > room - add {
            return Err(format!(
                "record at patch byte {} writes past the declared {out_len} bytes",
                patch.len() - rest.len()
            ));
        }
        let (add, copy) = (add as usize, copy as usize);
        if tail.len() < add + copy {
            return Err("patch ends inside a record".into());
        }
        let start = usize::try_from(pos).ok().filter(|&s| s.checked_add(add).is_some_and(|e| e <= base.len()));
        let Some(start) = start else {
            return Err(format!("record reads past the end of the {}-byte base", base.len()));
        };
        out.extend(tail[..add].iter().zip(&base[start..start + add]).map(|(d, b)| d.wrapping_add(*b)));
        out.extend_from_slice(&tail[add..add + copy]);
        pos += add as u64;
        let magnitude = seek & !(1 << 63);
        pos = if seek >> 63 == 1 { pos.checked_sub(magnitude) } else { pos.checked_add(magnitude) }
            .ok_or_else(|| "seek moves outside the base".to_string())?;
        rest = &tail[add + copy..];
    }
    if out.len() != out_len {
        return Err(format!("patch produces {} bytes, declared {out_len}", out.len()));
    }
    Ok(out)
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
}
