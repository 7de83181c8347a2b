//! Validating newtypes for the small named values of a manifest: the release channel, key ids
//! and post-commit hooks. The one home of their rules (bundle-format.md §4.8, §8, §9): the
//! builder's command line parses into these types, and [`crate::Manifest::check`] (run on every
//! decoded manifest) applies the same functions, so the two can never disagree.
//!
//! The manifest's fields stay plain strings and [`Hook`] structs on the wire (a test must be able
//! to forge a manifest that breaks a rule and see it refused); these types are how a value is
//! accepted.

use crate::{Error, Hook, Limits};
use std::fmt;

/// A release channel: 1..[`Limits::max_channel_len`] printable ASCII bytes (no space, no
/// control character), e.g. `stable`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Channel(String);

impl Channel {
    /// Check `s` against the channel rule.
    pub fn new(s: &str, limits: &Limits) -> Result<Channel, Error> {
        Channel::check(s, limits)?;
        Ok(Channel(s.to_string()))
    }

    /// The rule alone, for a value already in a manifest.
    pub fn check(s: &str, limits: &Limits) -> Result<(), Error> {
        if s.is_empty() || s.len() > limits.max_channel_len || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Value(format!(
                "channel {s:?}: must be 1 to {} printable ASCII characters",
                limits.max_channel_len
            )));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::str::FromStr for Channel {
    type Err = Error;
    /// With the default limits (the command line's case).
    fn from_str(s: &str) -> Result<Channel, Error> {
        Channel::new(s, &Limits::default())
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key id (§3.1): 16 hex digits, kept in lower case (a policy written `retire 0123ABCD…` must
/// not be silently ineffective).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::str::FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<KeyId, Error> {
        if !crate::sig::is_key_id(s) {
            return Err(Error::Value(format!("key id {s:?} is not 16 hex digits")));
        }
        Ok(KeyId(s.to_ascii_lowercase()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Hook {
    /// A hook from its parts, checked ([`Hook::check`]).
    pub fn new(glob: &str, command: &str, timeout_secs: u32, limits: &Limits) -> Result<Hook, Error> {
        let h = Hook { glob: glob.to_string(), command: command.to_string(), timeout_secs };
        h.check(limits)?;
        Ok(h)
    }

    /// The command-line form `GLOB=COMMAND` (split at the first `=`).
    pub fn parse(spec: &str, timeout_secs: u32, limits: &Limits) -> Result<Hook, Error> {
        let (glob, command) =
            spec.split_once('=').ok_or_else(|| Error::Value(format!("hook {spec:?}: expected GLOB=COMMAND")))?;
        Hook::new(glob, command, timeout_secs, limits)
    }

    /// The hook rule: a non-empty glob of at most [`Limits::max_hook_glob`] bytes, a command that
    /// is not blank and at most [`Limits::max_hook_command`] bytes, a timeout of at least 1 s.
    pub fn check(&self, limits: &Limits) -> Result<(), Error> {
        let bad = |why: String| Err(Error::Value(format!("hook {:?}={:?}: {why}", self.glob, self.command)));
        if self.glob.is_empty() || self.command.trim().is_empty() {
            return bad("empty glob or command".into());
        }
        if self.glob.len() > limits.max_hook_glob || self.command.len() > limits.max_hook_command {
            return bad(format!(
                "glob over {} bytes or command over {} bytes",
                limits.max_hook_glob, limits.max_hook_command
            ));
        }
        if self.timeout_secs == 0 {
            return bad("timeout must be at least 1 second".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rule() {
        let l = Limits::default();
        assert!(Channel::new("stable", &l).is_ok());
        assert!(Channel::new(&"x".repeat(128), &l).is_ok());
        for bad in ["", "with space", "tab\t", "é", &"x".repeat(129)] {
            assert!(Channel::new(bad, &l).is_err(), "{bad:?}");
        }
        assert!("beta".parse::<Channel>().is_ok());
    }

    #[test]
    fn key_id_rule() {
        assert_eq!("0123456789ABCDEF".parse::<KeyId>().map(KeyId::into_string).ok(), Some("0123456789abcdef".into()));
        for bad in ["", "0123", "0123456789abcdeg", "0123456789abcdef0"] {
            assert!(bad.parse::<KeyId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hook_rule() {
        let l = Limits::default();
        assert!(Hook::parse("bin/**=systemctl restart app", 30, &l).is_ok());
        for (spec, t) in
            [("no-equals", 30), ("=cmd", 30), ("glob=  ", 30), ("g=c", 0), (&format!("{}=c", "g".repeat(257)), 30)]
        {
            assert!(Hook::parse(spec, t, &l).is_err(), "{spec:?} {t}");
        }
        let long = format!("g={}", "c".repeat(4097));
        assert!(Hook::parse(&long, 30, &l).is_err());
    }
}
