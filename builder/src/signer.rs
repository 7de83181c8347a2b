//! Where a signature comes from: a ferry secret key file, or an external signer command (an
//! HSM's tool, `openssl pkeyutl`, a script that asks another machine), bundle-format.md §3.6.
//!
//! An external signer is run as `sh -c COMMAND`. ferry writes the exact message to sign (51
//! bytes: the domain prefix and the bundle id, binary) on its stdin and closes it, and reads its
//! stdout: 96 bytes (the 32-byte public key, then the 64-byte signature), or 64 bytes (the
//! signature alone) when `--signer-pub K.pub` names the key. stderr is left to the terminal, so
//! the command may prompt for a PIN or passphrase there. Whatever it returns is checked before
//! it is used: its length, the key against `--signer-pub`, and the signature strictly over the
//! message, as the applier will check it. A command that fails, is killed, runs past its
//! timeout or writes more than [`MAX_OUTPUT`] bytes is an error ([`Error::Signer`]).

use crate::error::{Error, Result};
use bundle::sig::{self, PublicKey, SecretKey, MESSAGE_LEN};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Default `--signer-timeout`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
/// The most a signer command may write on stdout (a valid answer is 64 or 96 bytes).
pub const MAX_OUTPUT: usize = 4096;

/// One source of signatures.
pub enum Signer {
    /// A ferry secret key file (`--key K.secret`), loaded through [`crate::keys::load_secret`].
    Key(SecretKey),
    /// An external command (`--signer-command CMD`, optionally `--signer-pub K.pub`).
    Command { command: String, public: Option<PublicKey>, timeout: Duration },
}

impl Signer {
    /// `--key K.secret`.
    pub fn key_file(path: &Path) -> Result<Signer> {
        Ok(Signer::Key(crate::keys::load_secret(path)?))
    }

    /// `--signer-command CMD [--signer-pub K.pub] [--signer-timeout SECS]`.
    pub fn command(command: &str, public: Option<&Path>, timeout_secs: u64) -> Result<Signer> {
        if command.trim().is_empty() {
            return Err(Error::Usage("--signer-command is empty".into()));
        }
        let public = public.map(crate::keys::load_public).transpose()?;
        Ok(Signer::Command { command: command.to_string(), public, timeout: Duration::from_secs(timeout_secs.max(1)) })
    }

    /// Sign `message` (one of the 51-byte messages of [`bundle::sig`]); returns the signing key
    /// and the signature, checked strictly over `message`.
    pub fn sign(&self, message: &[u8; MESSAGE_LEN]) -> Result<(PublicKey, [u8; 64])> {
        self.sign_bytes(message)
    }

    /// Sign any domain-separated message (a bundle's 51 bytes, or an index part's 55 or 53
    /// bytes, bundle-format.md §18.2); checked as [`Signer::sign`].
    pub fn sign_bytes(&self, message: &[u8]) -> Result<(PublicKey, [u8; 64])> {
        match self {
            Signer::Key(k) => {
                let s = k.sign_message(message);
                Ok((k.public(), s))
            }
            Signer::Command { command, public, timeout } => {
                let fail = |why: String| Error::Signer { command: command.clone(), why };
                let out = run(command, message, *timeout)?;
                let (key, sig): ([u8; 32], [u8; 64]) = match (out.len(), public) {
                    (96, _) => (array(&out[..32]), array(&out[32..])),
                    (64, Some(p)) => (p.bytes, array(&out)),
                    (64, None) => {
                        return Err(fail(
                            "wrote 64 bytes (a signature without its public key): give --signer-pub K.pub to name \
                             the key, or have the command write the 32-byte public key first"
                                .into(),
                        ))
                    }
                    (0, _) => return Err(fail("wrote nothing on stdout (expected a signature)".into())),
                    (n, _) => {
                        return Err(fail(format!(
                            "wrote {n} bytes on stdout; expected 96 (32-byte public key, then 64-byte signature), or \
                             64 (the signature) with --signer-pub"
                        )))
                    }
                };
                if let Some(p) = public {
                    if p.bytes != key {
                        return Err(fail(format!(
                            "signed with key {}, not with the --signer-pub key {}",
                            sig::key_id(&key),
                            p.id
                        )));
                    }
                }
                let pk = sig::verify_strict(&key, message, &sig).map_err(|_| {
                    fail(format!(
                        "its signature by key {} does not verify over the message it was given (garbage, another \
                         key, or another message?)",
                        sig::key_id(&key)
                    ))
                })?;
                Ok((pk, sig))
            }
        }
    }

    /// How reports name this source.
    pub fn describe(&self) -> String {
        match self {
            Signer::Key(k) => format!("key file of {}", k.public().id),
            Signer::Command { command, .. } => format!("signer command `{command}`"),
        }
    }
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Run `sh -c command` with `input` on its stdin; its stdout (at most [`MAX_OUTPUT`] bytes) once
/// it has exited successfully within `timeout`.
pub fn run(command: &str, input: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let fail = |why: String| Error::Signer { command: command.to_string(), why };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail(format!("cannot start sh: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // 51 bytes fit in a pipe's buffer; a command that does not read them is its own business
        // (EPIPE is not an error here: what it writes decides).
        let _ = stdin.write_all(input);
    }
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let r = stdout.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut v).map(|_| v);
            let _ = tx.send(r);
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {} s (--signer-timeout); killed", timeout.as_secs())));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(fail(format!("cannot wait for it: {e}"))),
        }
    };
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        return Err(fail(match (status.code(), status.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => format!("failed ({status})"),
        }));
    }
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    let out = match rx.recv_timeout(left) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(fail(format!("cannot read its stdout: {e}"))),
        Err(_) => return Err(fail("exited, but its stdout stayed open (a background process still holds it)".into())),
    };
    if out.len() > MAX_OUTPUT {
        return Err(fail(format!("wrote more than {MAX_OUTPUT} bytes on stdout (expected 64 or 96)")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> [u8; MESSAGE_LEN] {
        sig::signing_message(&bundle::Hash::of(b"m"))
    }

    #[test]
    fn command_gets_the_message_and_its_output_is_checked() -> std::result::Result<(), Box<dyn std::error::Error>> {
        // `cat` echoes the 51-byte message: neither 64 nor 96 bytes.
        let s = Signer::command("cat", None, 10)?;
        let e = s.sign(&msg()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("wrote 51 bytes"), "{e}");
        // 96 bytes that are no signature.
        let s = Signer::command("head -c 96 /dev/zero", None, 10)?;
        let e = s.sign(&msg()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("does not verify"), "{e}");
        for (cmd, needle) in [
            ("true", "wrote nothing"),
            ("exit 3", "exited with status 3"),
            ("kill -9 $$", "killed by signal 9"),
            ("head -c 64 /dev/zero", "--signer-pub"),
            ("head -c 5000 /dev/zero", "more than 4096"),
        ] {
            let e = Signer::command(cmd, None, 10)?.sign(&msg()).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(needle), "{cmd}: {e}");
        }
        let started = Instant::now();
        let e = Signer::command("sleep 30", None, 1)?.sign(&msg()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no answer within 1 s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        Ok(())
    }
}
