//! pax extended-header records (POSIX.1-2001 `pax`, the data of a tar `x` or `g` member).
//!
//! A record is `LEN SP KEY=VALUE LF`, where LEN is the decimal byte length of the whole record
//! (LEN itself, the space and the final LF included). The value is raw bytes: GNU tar `--acls`
//! writes multi-line ACL text and `SCHILY.xattr.NAME` values are binary, so a value may hold LF and
//! NUL. Records are therefore cut by their length, never by line — the `tar` crate's
//! `PaxExtensions` splits on LF, which broke such values into "malformed" lines or dropped them.
//! Anything that is not a sequence of well-formed records is refused as a whole: a reader that
//! skipped a bad record could see different attributes, names or sizes than another reader.

/// One record: its key and its value, as raw bytes.
pub type Record = (Vec<u8>, Vec<u8>);

/// At most this many digits in a length: no record of a bounded header is longer.
const MAX_LEN_DIGITS: usize = 20;

/// Parse the data of a pax header into its records, in order (a later record for the same key
/// overrides an earlier one; that is the caller's business). Returns what is wrong otherwise.
pub fn records(data: &[u8]) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let rest = &data[at..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > MAX_LEN_DIGITS || rest.get(digits) != Some(&b' ') {
            return Err(format!("pax record at byte {at}: no length followed by a space"));
        }
        let len: usize = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("pax record at byte {at}: length out of range"))?;
        // The shortest record is "LEN K=\n": the digits, a space, a key byte, '=' and LF.
        if len < digits + 4 {
            return Err(format!("pax record at byte {at}: length {len} is too short"));
        }
        if len > rest.len() {
            return Err(format!(
                "pax record at byte {at}: length {len} runs past the end of the header ({} bytes left)",
                rest.len()
            ));
        }
        let body = &rest[digits + 1..len];
        let Some((&b'\n', kv)) = body.split_last() else {
            return Err(format!("pax record at byte {at}: length {len} does not end at a newline"));
        };
        let eq = kv.iter().position(|&b| b == b'=').ok_or_else(|| format!("pax record at byte {at}: no '='"))?;
        let (key, value) = (&kv[..eq], &kv[eq + 1..]);
        if key.is_empty() || key.contains(&0) || key.contains(&b'\n') {
            return Err(format!("pax record at byte {at}: bad key {:?}", String::from_utf8_lossy(key)));
        }
        out.push((key.to_vec(), value.to_vec()));
        at += len;
    }
    Ok(out)
}

/// The value of the last record for `key`.
pub fn last<'a>(records: &'a [Record], key: &[u8]) -> Option<&'a [u8]> {
    records.iter().rev().find(|(k, _)| k == key).map(|(_, v)| &v[..])
}

/// One record, encoded: `LEN SP KEY=VALUE LF` with LEN counting itself (for tests).
#[cfg(test)]
pub fn encode(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = [b" ", key, b"=", value, b"\n"].concat();
    let mut n = body.len() + 1;
    while n.to_string().len() + body.len() != n {
        n += 1;
    }
    [n.to_string().as_bytes(), &body].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &[u8], v: &[u8]) -> Record {
        (k.to_vec(), v.to_vec())
    }

    #[test]
    fn values_are_cut_by_length_not_by_line() {
        let acl = b"user::rw-\nuser:1000:rw-\ngroup::r--\nmask::rw-\nother::r--\n";
        let bin = b"\x01\n\0=\n\n\xff";
        let data = [
            encode(b"path", b"a b/c=d"),
            encode(b"SCHILY.acl.access", acl),
            encode(b"SCHILY.xattr.user.bin", bin),
            encode(b"empty", b""),
            encode(b"mtime", b"1700000000.5"),
        ]
        .concat();
        assert_eq!(
            records(&data),
            Ok(vec![
                rec(b"path", b"a b/c=d"),
                rec(b"SCHILY.acl.access", acl),
                rec(b"SCHILY.xattr.user.bin", bin),
                rec(b"empty", b""),
                rec(b"mtime", b"1700000000.5"),
            ])
        );
        // 98 bytes after the length: "100" would make 101, so the length counts its third digit.
        let v = vec![b'x'; 94];
        let r = encode(b"k", &v);
        assert_eq!((&r[..4], r.len()), (&b"101 "[..], 101));
        assert_eq!(records(&r), Ok(vec![(b"k".to_vec(), v)]));
        assert_eq!(records(b""), Ok(vec![]));
        assert_eq!(last(&records(&data).unwrap_or_default(), b"mtime"), Some(&b"1700000000.5"[..]));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = encode(b"path", b"x");
        for (data, why, wants) in [
            (b"0 \n".to_vec(), "zero length", "too short"),
            (b"3 =\n".to_vec(), "shorter than any record", "too short"),
            (b"6 k=vv\n".to_vec(), "ends before the newline", "newline"),
            (b"7 k=v\n".to_vec(), "ends after the newline", "past the end"),
            (b"99 k=v\n".to_vec(), "length past the end", "past the end"),
            ([&good[..], b"12 path=x"].concat(), "truncated second record", "byte 9"),
            (good[..good.len() - 1].to_vec(), "truncated record", "past the end"),
            (b"6 kv\n\n".to_vec(), "no '='", "no '='"),
            (b"5 =v\n".to_vec(), "empty key", "bad key"),
            (b" 5 k=v\n".to_vec(), "no length", "no length"),
            (b"5\tk=\n".to_vec(), "no space", "no length"),
            (b"-5 k=\n".to_vec(), "negative length", "no length"),
            (b"99999999999999999999999 k=v\n".to_vec(), "huge length", "no length"),
            (b"99999999999999999999 k=v\n".to_vec(), "length beyond usize", "out of range"),
            ([&good[..], b"\0\0\0"].concat(), "trailing NULs", "byte 9"),
        ] {
            match records(&data) {
                Ok(r) => panic!("{why}: accepted as {r:?}"),
                Err(e) => assert!(e.contains(wants), "{why}: {e}"),
            }
        }
    }
}
