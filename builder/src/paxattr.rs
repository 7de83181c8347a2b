//! Extended attributes of tar members (bundle-format.md §4.9): the pax records GNU tar, star and
//! bsdtar write, turned into the (name, value) pairs the directory input would read.
//!
//! - `SCHILY.xattr.NAME`: the raw value (GNU tar `--xattrs`, star, bsdtar, OCI layers). Preferred
//!   over every other record for the same name.
//! - `LIBARCHIVE.xattr.NAME`: bsdtar; NAME percent-encoded, value base64 without padding.
//! - `SCHILY.acl.access`, `SCHILY.acl.default`: a POSIX ACL as text (`tag:qualifier:perms[:id]`,
//!   entries separated by `,` or newlines), as GNU tar `--acls` and bsdtar write it; converted to
//!   the kernel's `system.posix_acl_*` value. A minimal access ACL (owner, group, other only) is
//!   the mode itself and no attribute, as on disk. A named entry needs a numeric qualifier or id
//!   field: names are not resolved, since the build host's users are not the target's.
//! - `RHT.security.selinux`: GNU tar `--selinux`; the context, stored with the trailing NUL the
//!   kernel keeps in `security.selinux`.

use crate::pax::Record;
use base64::Engine;

/// A (key, value) pair: a pax record, or an attribute's (name, value).
pub type Pair = (Vec<u8>, Vec<u8>);

/// The attributes of one member from its pax records, or what is wrong with them.
pub fn xattrs(records: &[Record]) -> Result<Vec<Pair>, String> {
    let mut raw: Vec<Pair> = Vec::new();
    let mut derived: Vec<Pair> = Vec::new();
    for (k, v) in records {
        if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
            raw.push((name.to_vec(), v.clone()));
        } else if let Some(name) = k.strip_prefix(b"LIBARCHIVE.xattr.") {
            let name = percent_decode(name).ok_or("bad LIBARCHIVE.xattr name")?;
            let value = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(v.strip_suffix(b"=").unwrap_or(v).strip_suffix(b"=").unwrap_or(v))
                .map_err(|e| format!("LIBARCHIVE.xattr.{}: {e}", String::from_utf8_lossy(&name)))?;
            derived.push((name, value));
        } else if let Some(which) = k.strip_prefix(b"SCHILY.acl.") {
            let name: &[u8] = match which {
                b"access" => b"system.posix_acl_access",
                b"default" => b"system.posix_acl_default",
                _ => continue,
            };
            // GNU tar `--acls --xattrs-include='*'` writes both the text (with user and group
            // names) and the raw value; the raw one wins, so the text need not be resolvable.
            let raw_name = [&b"SCHILY.xattr."[..], name].concat();
            if records.iter().any(|(k, _)| *k == raw_name) {
                continue;
            }
            let text = std::str::from_utf8(v).map_err(|_| "ACL text is not UTF-8".to_string())?;
            if let Some(value) = acl_from_text(text, which == b"default")? {
                derived.push((name.to_vec(), value));
            }
        } else if k == b"RHT.security.selinux" {
            let mut ctx = v.clone();
            if ctx.last() != Some(&0) {
                ctx.push(0);
            }
            derived.push((b"security.selinux".to_vec(), ctx));
        }
    }
    for (name, value) in derived {
        if !raw.iter().any(|(n, _)| *n == name) {
            raw.push((name, value));
        }
    }
    Ok(raw)
}

/// `%XX` escapes decoded.
fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// The kernel's POSIX ACL attribute value (version 2, then `(tag u16, perm u16, id u32)` little
/// endian, sorted by tag and id) for an ACL in text form; `None` for a minimal access ACL (the
/// mode alone) or an empty one.
pub fn acl_from_text(text: &str, default: bool) -> Result<Option<Vec<u8>>, String> {
    let mut entries: Vec<(u16, u32, u16)> = Vec::new();
    for e in text.split([',', '\n']).map(|e| e.split('#').next().unwrap_or("").trim()).filter(|e| !e.is_empty()) {
        let f: Vec<&str> = e.split(':').collect();
        let bad = || format!("ACL entry {e:?} is not tag:qualifier:perms[:id]");
        if f.len() < 3 {
            return Err(bad());
        }
        let named = !f[1].is_empty();
        let tag = match (f[0], named) {
            ("user" | "u", false) => ACL_USER_OBJ,
            ("user" | "u", true) => ACL_USER,
            ("group" | "g", false) => ACL_GROUP_OBJ,
            ("group" | "g", true) => ACL_GROUP,
            ("mask" | "m", _) => ACL_MASK,
            ("other" | "o", _) => ACL_OTHER,
            _ => return Err(bad()),
        };
        let mut perm = 0u16;
        for c in f[2].chars() {
            perm |= match c {
                'r' => 4,
                'w' => 2,
                'x' => 1,
                '-' => 0,
                _ => return Err(bad()),
            };
        }
        let id = if tag == ACL_USER || tag == ACL_GROUP {
            let id = f.get(3).copied().filter(|s| !s.is_empty()).unwrap_or(f[1]);
            id.parse::<u32>().map_err(|_| {
                format!("ACL entry {e:?} names {:?} without a numeric id (names are not resolved at build time)", f[1])
            })?
        } else {
            ACL_UNDEFINED_ID
        };
        entries.push((tag, id, perm));
    }
    entries.sort_unstable();
    entries.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let minimal = entries.iter().all(|e| matches!(e.0, ACL_USER_OBJ | ACL_GROUP_OBJ | ACL_OTHER));
    if entries.is_empty() || (!default && minimal) {
        return Ok(None);
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, id, perm) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `getfattr -e base64 -n system.posix_acl_access` of a file after
    /// `setfacl -m u:1000:rw,g:50:r` (mode 0644).
    const ACCESS: &str = "AgAAAAEABgD/////AgAGAOgDAAAEAAQA/////wgABAAyAAAAEAAGAP////8gAAQA/////w==";

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default()
    }

    #[test]
    fn acl_text_as_bsdtar_and_gnu_tar_write_it() {
        let bsd = "user::rw-,group::r--,other::r--,user:alice:rw-:1000,group:staff:r--:50,mask::rw-";
        assert_eq!(acl_from_text(bsd, false), Ok(Some(b64(ACCESS))));
        let gnu = "user::rw-\nuser:1000:rw-\ngroup::r--\ngroup:50:r--\nmask::rw-\nother::r--\n";
        assert_eq!(acl_from_text(gnu, false), Ok(Some(b64(ACCESS))));
        assert_eq!(acl_from_text("user::rwx\ngroup::r-x\nother::r-x\n", false), Ok(None));
        assert!(acl_from_text("user:alice:rw-", false).is_err_and(|e| e.contains("without a numeric id")));
    }

    #[test]
    fn raw_records_win_and_encodings_decode() {
        let rec = |k: &str, v: &[u8]| (k.as_bytes().to_vec(), v.to_vec());
        let got = xattrs(&[
            rec("LIBARCHIVE.xattr.user.foo", b"YmFy"),
            rec("SCHILY.xattr.user.foo", b"raw"),
            rec("LIBARCHIVE.xattr.user.sp%20ace", b"eA"),
            rec("RHT.security.selinux", b"system_u:object_r:bin_t:s0"),
            rec("mtime", b"1"),
        ]);
        assert_eq!(
            got,
            Ok(vec![
                rec("user.foo", b"raw"),
                rec("user.sp ace", b"x"),
                rec("security.selinux", b"system_u:object_r:bin_t:s0\0"),
            ])
        );
        // GNU tar --acls with --xattrs-include='*': ACL text with names, and the raw value.
        let named = "user::rw-\nuser:alice:rw-\ngroup::r--\nmask::rw-\nother::r--\n";
        let got = xattrs(&[
            rec("SCHILY.acl.access", named.as_bytes()),
            rec("SCHILY.xattr.system.posix_acl_access", b"\x02\0\0\0\n\0"),
        ]);
        assert_eq!(got, Ok(vec![rec("system.posix_acl_access", b"\x02\0\0\0\n\0")]));
        assert!(xattrs(&[rec("SCHILY.acl.access", named.as_bytes())]).is_err());
    }
}
