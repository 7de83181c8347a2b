//! Untrusted text on a terminal: paths, channels and hook commands come from bundles (possibly
//! hostile) and from the target (possibly planted by a local user). Before any of it is printed
//! for a human, control characters are escaped, so a name holding `ESC [2J`, `\r` or a fake
//! newline cannot rewrite what the operator sees (bundle-format.md §15). JSON output is escaped
//! by the JSON encoder.

use std::borrow::Cow;

/// `s` with every control character (C0, DEL, C1) and the Unicode line and paragraph separators
/// written as `\xNN` / `\u{NNNN}`. Idempotent (backslashes are left alone), so text escaped
/// field by field can be escaped again as a whole.
pub fn escape(s: &str) -> Cow<'_, str> {
    let bad = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(|c| bad(c) && c != '\n') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            // Multi-line messages (drift lists) keep their newlines; a newline inside a path is
            // escaped where the path is formatted (`escape_line`).
            '\n' => out.push('\n'),
            c if (c as u32) < 0x100 && bad(c) => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if bad(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escape`] with newlines escaped too: for one field (a path, a channel, a command).
pub fn escape_line(s: &str) -> String {
    escape(s).replace('\n', "\\x0a")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls() {
        assert_eq!(escape("plain/path"), "plain/path");
        assert_eq!(escape("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape("a\rb\x07"), "a\\x0db\\x07");
        assert_eq!(escape("a\u{9b}b"), "a\\x9bb");
        assert_eq!(escape("back\\slash\x1b"), "back\\slash\\x1b");
        assert_eq!(escape(&escape("a\x1b")), "a\\x1b");
        assert_eq!(escape("two\nlines"), "two\nlines");
        assert_eq!(escape_line("two\nlines"), "two\\x0alines");
        assert_eq!(escape("sep\u{2028}"), "sep\\u{2028}");
    }
}
