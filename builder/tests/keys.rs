//! Passphrase-protected secret keys (bundle-format.md §3.1), through the real `ferry-build`:
//! keygen encrypts by default, a build with the right passphrase signs, a wrong or missing one is
//! refused before anything is written, plain legacy keys still load, and `protect-key` converts
//! and re-keys in place.

use assert_cmd::Command;
use std::fs;
use std::path::Path;

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// `ferry-build` with no passphrase in the environment and no terminal (stdin is not one and
/// `setsid`-less test runs may still have /dev/tty, so each test sets what it means).
fn ferry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-build"));
    for v in ["FERRY_PASSPHRASE", "FERRY_PASSPHRASE_FILE", "FERRY_PASSPHRASE_FD", "FERRY_NEW_PASSPHRASE"] {
        c.env_remove(v);
    }
    c.env("SOURCE_DATE_EPOCH", "1700000000");
    c
}

fn build(d: &Path, key: &Path, out: &str) -> Command {
    let new = d.join("new");
    if !new.exists() {
        fs::create_dir_all(new.join("etc")).ok();
        fs::write(new.join("etc/motd"), "hello\n").ok();
    }
    let mut c = ferry();
    c.args(["build", "--version", "1", "--new"]).arg(&new).arg("--key").arg(key).arg("--out").arg(d.join(out));
    c
}

fn line_tag(p: &Path) -> R<String> {
    Ok(fs::read_to_string(p)?.split_whitespace().next().unwrap_or_default().to_string())
}

#[test]
fn encrypted_key_right_wrong_and_missing_passphrase() -> R {
    let d = tempfile::tempdir()?;
    let k = d.path().join("k");
    let o = ferry().args(["keygen", "--json", "--out"]).arg(&k).env("FERRY_PASSPHRASE", "open sesame").output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["encrypted"], true);
    let secret = d.path().join("k.secret");
    assert_eq!(line_tag(&secret)?, "ferry-secret-key-v2");

    // Right passphrase: signs.
    build(d.path(), &secret, "a.ferry").env("FERRY_PASSPHRASE", "open sesame").assert().success();
    assert!(d.path().join("a.ferry").exists());
    // Wrong passphrase: refused, nothing written.
    let o = build(d.path(), &secret, "b.ferry").env("FERRY_PASSPHRASE", "open sesamE").output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!d.path().join("b.ferry").exists());
    // From a file and from a file descriptor (stdin here).
    let pf = d.path().join("pass");
    fs::write(&pf, "open sesame\n")?;
    build(d.path(), &secret, "c.ferry").env("FERRY_PASSPHRASE_FILE", &pf).assert().success();
    build(d.path(), &secret, "e.ferry").env("FERRY_PASSPHRASE_FD", "0").pipe_stdin(&pf)?.assert().success();
    // The same bundle whichever way the passphrase came.
    assert_eq!(fs::read(d.path().join("a.ferry"))?, fs::read(d.path().join("c.ferry"))?);
    // No passphrase and no terminal (a new session without a controlling terminal): refused.
    let o = std::process::Command::new("setsid")
        .arg("-w")
        .arg(env!("CARGO_BIN_EXE_ferry-build"))
        .args(["build", "--version", "1", "--new"])
        .arg(d.path().join("new"))
        .arg("--key")
        .arg(&secret)
        .arg("--out")
        .arg(d.path().join("f.ferry"))
        .env_remove("FERRY_PASSPHRASE")
        .stdin(std::process::Stdio::null())
        .output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no passphrase"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!d.path().join("f.ferry").exists());
    Ok(())
}

#[test]
fn keygen_refuses_an_empty_passphrase_and_writes_nothing() -> R {
    let d = tempfile::tempdir()?;
    let o = ferry().args(["keygen", "--out"]).arg(d.path().join("k")).env("FERRY_PASSPHRASE", "").output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--unencrypted"));
    assert!(!d.path().join("k.secret").exists() && !d.path().join("k.pub").exists());
    Ok(())
}

#[test]
fn plain_keys_load_and_protect_key_converts_and_rekeys() -> R {
    let d = tempfile::tempdir()?;
    let k = d.path().join("k");
    ferry().args(["keygen", "--unencrypted", "--out"]).arg(&k).assert().success();
    let secret = d.path().join("k.secret");
    assert_eq!(line_tag(&secret)?, "ferry-secret-key-v1");
    let pub_before = fs::read(d.path().join("k.pub"))?;
    build(d.path(), &secret, "plain.ferry").assert().success();

    // Plain -> protected: no old passphrase needed.
    ferry().arg("protect-key").arg(&secret).env("FERRY_NEW_PASSPHRASE", "first").assert().success();
    assert_eq!(line_tag(&secret)?, "ferry-secret-key-v2");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&secret)?.permissions().mode() & 0o777, 0o600);
    build(d.path(), &secret, "p1.ferry").env("FERRY_PASSPHRASE", "first").assert().success();
    // The same key: the same bundle as with the plain file.
    assert_eq!(fs::read(d.path().join("plain.ferry"))?, fs::read(d.path().join("p1.ferry"))?);

    // Re-key: the old passphrase is required.
    let o = ferry()
        .arg("protect-key")
        .arg(&secret)
        .env("FERRY_PASSPHRASE", "wrong")
        .env("FERRY_NEW_PASSPHRASE", "second")
        .output()?;
    assert_eq!(o.status.code(), Some(1));
    ferry()
        .arg("protect-key")
        .arg(&secret)
        .env("FERRY_PASSPHRASE", "first")
        .env("FERRY_NEW_PASSPHRASE", "second")
        .assert()
        .success();
    build(d.path(), &secret, "p2.ferry").env("FERRY_PASSPHRASE", "first").assert().code(1);
    build(d.path(), &secret, "p3.ferry").env("FERRY_PASSPHRASE", "second").assert().success();
    assert_eq!(fs::read(d.path().join("k.pub"))?, pub_before);
    // No temporary file left beside the key.
    let names: Vec<_> = fs::read_dir(d.path())?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().starts_with(".ferry-key")), "{names:?}");
    Ok(())
}
