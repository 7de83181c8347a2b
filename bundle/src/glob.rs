//! Path globs for hooks (`--hook GLOB=CMD`) and config-file marks: `*` matches within one
//! component, `**` matches any number of whole components, `?` one byte other than `/`.
//! Matching is on raw bytes so it works for non-UTF-8 names.

/// True if `path` matches `pattern`.
pub fn matches(pattern: &[u8], path: &[u8]) -> bool {
    let pc: Vec<&[u8]> = pattern.split(|&b| b == b'/').collect();
    let xc: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    match_components(&pc, &xc)
}

fn match_components(p: &[&[u8]], x: &[&[u8]]) -> bool {
    match p.first() {
        None => x.is_empty(),
        Some(&b"**") => (0..=x.len()).any(|i| match_components(&p[1..], &x[i..])),
        Some(c) => !x.is_empty() && match_name(c, x[0]) && match_components(&p[1..], &x[1..]),
    }
}

fn match_name(p: &[u8], x: &[u8]) -> bool {
    match p.first() {
        None => x.is_empty(),
        Some(b'*') => (0..=x.len()).any(|i| match_name(&p[1..], &x[i..])),
        Some(b'?') => !x.is_empty() && match_name(&p[1..], &x[1..]),
        Some(c) => x.first() == Some(c) && match_name(&p[1..], &x[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;
    #[test]
    fn table() {
        let t: &[(&str, &str, bool)] = &[
            ("etc/**", "etc/a", true),
            ("etc/**", "etc/a/b", true),
            ("etc/**", "etc", true),
            ("etc/**", "etcx/a", false),
            ("usr/bin/*", "usr/bin/ls", true),
            ("usr/bin/*", "usr/bin/x/ls", false),
            ("**/*.conf", "a/b/c.conf", true),
            ("**/*.conf", "c.conf", true),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
        ];
        for (p, x, want) in t {
            assert_eq!(matches(p.as_bytes(), x.as_bytes()), *want, "{p} {x}");
        }
    }
}
