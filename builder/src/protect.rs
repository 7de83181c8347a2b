//! Passphrase protection of secret key files at rest (bundle-format.md §3.1).
//!
//! An encrypted secret key file is one line
//! `ferry-secret-key-v2 <key id> scrypt <log2 N> <r> <p> <salt: 64 hex> <sealed seed: 96 hex>`:
//! the 32-byte ed25519 seed sealed with ChaCha20-Poly1305 under the scrypt hash of the
//! passphrase (key unique per random salt, so the nonce is 0), the line's text up to and
//! including the salt as associated data (the key id and the parameters cannot be changed
//! without the passphrase failing). A plain `ferry-secret-key-v1` file still loads.
//!
//! The passphrase comes from `FERRY_PASSPHRASE_FD` (a file descriptor number, first line),
//! `FERRY_PASSPHRASE_FILE` (a path, first line) or `FERRY_PASSPHRASE` (the value), checked in that
//! order, else from a prompt on the controlling terminal.

use crate::error::{Error, Result};
use bundle::sig::SecretKey;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Tag of an encrypted secret key file.
pub const ENCRYPTED_TAG: &str = "ferry-secret-key-v2";
/// scrypt cost written by `keygen`: N = 2^17, r = 8, p = 1 (128 MiB, about half a second).
pub const LOG_N: u8 = 17;
const R: u32 = 8;
const P: u32 = 1;
/// Largest parameters a key file may ask for (a hostile file must not make loading take hours
/// or gigabytes): N ≤ 2^22, r ≤ 32, p ≤ 16 and memory 128·r·N ≤ 1 GiB.
const MAX_LOG_N: u8 = 22;
const MAX_R: u32 = 32;
const MAX_P: u32 = 16;
const MAX_MEMORY: u64 = 1 << 30;

/// Where the passphrase comes from, for messages.
fn passphrase_source() -> Option<(&'static str, Result<String, String>)> {
    if let Ok(fd) = std::env::var("FERRY_PASSPHRASE_FD") {
        return Some(("FERRY_PASSPHRASE_FD", read_fd(&fd)));
    }
    if let Ok(p) = std::env::var("FERRY_PASSPHRASE_FILE") {
        let r = std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}")).map(first_line);
        return Some(("FERRY_PASSPHRASE_FILE", r));
    }
    if let Ok(v) = std::env::var("FERRY_PASSPHRASE") {
        return Some(("FERRY_PASSPHRASE", Ok(v)));
    }
    None
}

fn first_line(s: String) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn read_fd(fd: &str) -> Result<String, String> {
    let n: i32 = fd.parse().map_err(|_| format!("FERRY_PASSPHRASE_FD={fd:?} is not a file descriptor number"))?;
    if n < 0 {
        return Err(format!("FERRY_PASSPHRASE_FD={fd:?} is not a file descriptor number"));
    }
    // Read through /proc/self/fd so no `unsafe` from_raw_fd is needed; the descriptor stays open.
    let f = std::fs::File::open(format!("/proc/self/fd/{n}")).map_err(|e| format!("FERRY_PASSPHRASE_FD={n}: {e}"))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(f, 64 * 1024))
        .read_line(&mut line)
        .map_err(|e| format!("FERRY_PASSPHRASE_FD={n}: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// The passphrase to unlock `path`: from the environment, else a terminal prompt.
fn passphrase_for(path: &Path, prompt: &str) -> Result<String> {
    let err = |why: String| Error::Passphrase { path: path.to_path_buf(), why };
    match passphrase_source() {
        Some((_, Ok(p))) => Ok(p),
        Some((var, Err(e))) => Err(err(format!("{var}: {e}"))),
        None => rpassword::prompt_password(prompt).map_err(|e| {
            err(format!(
                "no passphrase: no terminal to ask on ({e}); set FERRY_PASSPHRASE_FD, FERRY_PASSPHRASE_FILE or FERRY_PASSPHRASE"
            ))
        }),
    }
}

/// A new passphrase for a key being written: from the environment, else asked twice on the
/// terminal. Empty passphrases are refused (use `--unencrypted` for an unprotected key).
pub fn new_passphrase(path: &Path) -> Result<String> {
    let err = |why: String| Error::Passphrase { path: path.to_path_buf(), why };
    let p = match passphrase_source() {
        Some((_, Ok(p))) => p,
        Some((var, Err(e))) => return Err(err(format!("{var}: {e}"))),
        None => {
            let ask = |prompt: &str| {
                rpassword::prompt_password(prompt).map_err(|e| {
                    err(format!(
                        "no passphrase: no terminal to ask on ({e}); set FERRY_PASSPHRASE_FD, \
                         FERRY_PASSPHRASE_FILE or FERRY_PASSPHRASE, or pass --unencrypted"
                    ))
                })
            };
            let a = ask(&format!("passphrase for {}: ", path.display()))?;
            let b = ask("again: ")?;
            if a != b {
                return Err(err("the two passphrases differ".into()));
            }
            a
        }
    };
    if p.is_empty() {
        return Err(err("empty passphrase (pass --unencrypted for a key without one)".into()));
    }
    Ok(p)
}

fn kdf(pass: &str, salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<[u8; 32], String> {
    let params = scrypt::Params::new(log_n, r, p, 32).map_err(|e| format!("scrypt parameters: {e}"))?;
    let mut out = [0u8; 32];
    scrypt::scrypt(pass.as_bytes(), salt, &params, &mut out).map_err(|e| format!("scrypt: {e}"))?;
    Ok(out)
}

/// The encrypted one-line form of `key` under `pass`.
pub fn seal(key: &SecretKey, pass: &str) -> Result<String, String> {
    let mut salt = [0u8; 32];
    rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut salt).map_err(|e| e.to_string())?;
    seal_with(key, pass, &salt, LOG_N)
}

fn seal_with(key: &SecretKey, pass: &str, salt: &[u8; 32], log_n: u8) -> Result<String, String> {
    let head = format!("{ENCRYPTED_TAG} {} scrypt {log_n} {R} {P} {}", key.public().id, bundle::hash::hex(salt));
    let k = kdf(pass, salt, log_n, R, P)?;
    let aead = ChaCha20Poly1305::new((&k).into());
    let seed = key.seed();
    let sealed = aead
        .encrypt(&[0u8; 12].into(), Payload { msg: &seed, aad: head.as_bytes() })
        .map_err(|_| "encryption failed".to_string())?;
    Ok(format!("{head} {}\n", bundle::hash::hex(&sealed)))
}

/// Whether a key file's text is the encrypted form.
pub fn is_encrypted(text: &str) -> bool {
    text.split_whitespace().next() == Some(ENCRYPTED_TAG)
}

/// Open an encrypted key file's text with `pass`. `Err` says why (wrong passphrase, malformed).
pub fn open(text: &str, pass: &str) -> Result<SecretKey, String> {
    let w: Vec<&str> = text.split_whitespace().collect();
    let [tag, id, kdf_name, log_n, r, p, salt, sealed] = w[..] else {
        return Err(format!(
            "expected one line '{ENCRYPTED_TAG} <key id> scrypt <log2 N> <r> <p> <salt> <sealed seed>'"
        ));
    };
    if tag != ENCRYPTED_TAG || kdf_name != "scrypt" {
        return Err(format!("not an encrypted ferry key (unknown tag or key derivation {kdf_name:?})"));
    }
    let num = |s: &str, what: &str| s.parse::<u32>().map_err(|_| format!("{what} {s:?} is not a number"));
    let (log_n, r, p) = (num(log_n, "log2 N")?, num(r, "r")?, num(p, "p")?);
    let mem = 128u64 * u64::from(r) * (1u64 << log_n.min(63));
    if log_n == 0 || log_n > u32::from(MAX_LOG_N) || r == 0 || r > MAX_R || p == 0 || p > MAX_P || mem > MAX_MEMORY {
        return Err(format!(
            "scrypt parameters log2 N {log_n}, r {r}, p {p} out of bounds (at most {MAX_LOG_N}, {MAX_R}, {MAX_P}, and 1 GiB)"
        ));
    }
    let salt = bundle::hash::unhex(salt).filter(|s| s.len() == 32).ok_or("salt must be 64 hex digits")?;
    let sealed = bundle::hash::unhex(sealed).filter(|s| s.len() == 48).ok_or("sealed seed must be 96 hex digits")?;
    // The associated data is the line up to the salt with single spaces, as `seal` wrote it.
    let head = w[..7].join(" ");
    let k = kdf(pass, &salt, log_n as u8, r, p)?;
    let aead = ChaCha20Poly1305::new((&k).into());
    let seed = aead
        .decrypt(&[0u8; 12].into(), Payload { msg: &sealed, aad: head.as_bytes() })
        .map_err(|_| "wrong passphrase (or the key file was changed)".to_string())?;
    let seed: [u8; 32] = seed.try_into().map_err(|_| "sealed seed has the wrong length".to_string())?;
    let key = SecretKey::from_seed(seed);
    if key.public().id != id {
        return Err("key id does not match the key".into());
    }
    Ok(key)
}

/// Load a secret key file's text: plain (`ferry-secret-key-v1`) or encrypted, asking for the
/// passphrase as described in the module documentation.
pub fn load(path: &Path, text: &str) -> Result<SecretKey> {
    if !is_encrypted(text) {
        return SecretKey::parse(text).map_err(|source| Error::Key { path: path.to_path_buf(), source });
    }
    let pass = passphrase_for(path, &format!("passphrase for {}: ", path.display()))?;
    open(text, &pass).map_err(|why| Error::Passphrase { path: path.to_path_buf(), why })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_refusals() -> Result<(), String> {
        let key = SecretKey::from_seed([7; 32]);
        // A cheap cost for the unit test; keygen uses LOG_N.
        let text = seal_with(&key, "correct horse", &[1; 32], 10)?;
        assert!(is_encrypted(&text));
        assert!(!text.contains(&bundle::hash::hex(&key.seed())), "seed in clear");
        assert_eq!(open(&text, "correct horse")?.public(), key.public());
        assert!(open(&text, "wrong").err().unwrap_or_default().contains("wrong passphrase"));
        // Raising the parameters, changing the key id or the salt: the tag fails.
        for (from, to) in [(" scrypt 10 ", " scrypt 11 "), (&key.public().id[..4], "ffff")] {
            let changed = text.replacen(from, to, 1);
            assert_ne!(changed, text);
            assert!(open(&changed, "correct horse").is_err(), "{from} -> {to}");
        }
        let huge = text.replacen(" scrypt 10 ", " scrypt 40 ", 1);
        assert!(open(&huge, "correct horse").err().unwrap_or_default().contains("out of bounds"));
        assert!(open("ferry-secret-key-v2 x", "p").is_err());
        Ok(())
    }
}
