//! Path globs for hooks (`--hook GLOB=CMD`) and config-file marks: `*` matches within one
//! component, `**` matches any number of whole components, `?` one byte other than `/`.
//! Matching is on raw bytes so it works for non-UTF-8 names.

/// True if `path` matches `pattern`. Time is polynomial in the lengths (patterns and paths come
/// from bundles): a wildcard only ever backtracks to the most recent `*` or `**`.
pub fn matches(pattern: &[u8], path: &[u8]) -> bool {
    let pc: Vec<&[u8]> = pattern.split(|&b| b == b'/').collect();
    let xc: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    wildcard(&pc, &xc, |c| *c == b"**", |c, x| match_name(c, x))
}

fn match_name(p: &[u8], x: &[u8]) -> bool {
    wildcard(p, x, |&c| c == b'*', |&c, &b| c == b'?' || c == b)
}

/// Match `x` against `p`, whose elements are either a wildcard (matches any run of elements) or
/// match one element. When a mismatch occurs, only the latest wildcard is extended: an earlier one
/// never needs to be, since the latest can absorb whatever it would have (O(len(p) * len(x)) steps).
fn wildcard<T>(p: &[T], x: &[T], star: impl Fn(&T) -> bool, one: impl Fn(&T, &T) -> bool) -> bool {
    let (mut i, mut j) = (0, 0);
    let mut resume: Option<(usize, usize)> = None; // (pattern index after the latest wildcard, x index it covers up to)
    while j < x.len() {
        if i < p.len() && star(&p[i]) {
            i += 1;
            resume = Some((i, j));
        } else if i < p.len() && one(&p[i], &x[j]) {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = resume {
            resume = Some((si, sj + 1));
            i = si;
            j = sj + 1;
        } else {
            return false;
        }
    }
    p[i..].iter().all(star)
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
            ("*", "", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("**", "a/b/c", true),
            ("a/**/c", "a/c", true),
            ("a/**/c", "a/x/y/c", true),
            ("a/**/c", "a/x/y/d", false),
            ("**/x/**/y", "x/a/y", true),
            ("**/x/**/y", "a/y/x", false),
        ];
        for (p, x, want) in t {
            assert_eq!(matches(p.as_bytes(), x.as_bytes()), *want, "{p} {x}");
        }
    }

    #[test]
    fn pathological_patterns_are_fast() {
        // Exponential for a naive backtracking matcher.
        let name = "a".repeat(250);
        let t = std::time::Instant::now();
        assert!(!matches(format!("{}b", "*a".repeat(60)).as_bytes(), name.as_bytes()));
        let deep = vec!["a"; 250].join("/");
        assert!(!matches(format!("{}b", "**/".repeat(80)).as_bytes(), deep.as_bytes()));
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    }

    /// The obvious recursive definition, as the reference.
    fn naive(p: &[u8], x: &[u8]) -> bool {
        fn comps(p: &[&[u8]], x: &[&[u8]]) -> bool {
            match p.first() {
                None => x.is_empty(),
                Some(&b"**") => (0..=x.len()).any(|i| comps(&p[1..], &x[i..])),
                Some(c) => !x.is_empty() && name(c, x[0]) && comps(&p[1..], &x[1..]),
            }
        }
        fn name(p: &[u8], x: &[u8]) -> bool {
            match p.first() {
                None => x.is_empty(),
                Some(b'*') => (0..=x.len()).any(|i| name(&p[1..], &x[i..])),
                Some(b'?') => !x.is_empty() && name(&p[1..], &x[1..]),
                Some(c) => x.first() == Some(c) && name(&p[1..], &x[1..]),
            }
        }
        let pc: Vec<&[u8]> = p.split(|&b| b == b'/').collect();
        let xc: Vec<&[u8]> = x.split(|&b| b == b'/').collect();
        comps(&pc, &xc)
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_naive_definition(p in "[ab*?/]{0,10}", x in "[ab/]{0,10}") {
            proptest::prop_assert_eq!(matches(p.as_bytes(), x.as_bytes()), naive(p.as_bytes(), x.as_bytes()));
        }
    }
}
