//! Test-only crash and failure injection, driven by environment variables (documented in
//! bundle-format.md, "Testing crash safety"). Unset, they cost one atomic increment per point.
//!
//! Only a build with the cargo feature `failpoints` reads these variables (the end-to-end tests
//! in `tests/` enable it; `cargo test --workspace` therefore builds `ferry-apply` with it). A
//! release build (`cargo build --release -p ferry-applier`, the Debian package) ignores them, so
//! nothing in a target's environment can steer the applier into a crash or a fallback path.
//!
//! - `FERRY_CRASH_AT=N`: the N-th failpoint hit (1-based) kills the process with SIGKILL, as a
//!   power cut would stop it (no destructors, no buffered writes).
//! - `FERRY_FAILPOINT_COUNT=FILE`: append one line per hit to FILE, so a test can count them.
//! - `FERRY_FAIL_AT=N`: the N-th hit returns an injected I/O error instead (a failure that is not
//!   a crash), at points that can fail.
//! - `FERRY_NO_EXCHANGE=1`: `Place` steps replacing a file take the fallback for filesystems
//!   without `RENAME_EXCHANGE` (hard-link backup, then rename).
//! - `FERRY_PAUSE_AT=NAME[:K]`: the K-th hit (1-based, default 1) of the failpoint named NAME
//!   (e.g. `journal`, `stage-synced`, `commit-step`) stops the process with SIGSTOP, so a test can
//!   wait until `/proc/PID/stat` shows state `T`, change the tree or the state directory as an
//!   attacker racing the applier would, and continue it with SIGCONT. The process then carries on
//!   exactly as if it had not been stopped. Hits of other names are not counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static HITS: AtomicU64 = AtomicU64::new(0);
/// Hits of the failpoint named in `FERRY_PAUSE_AT`.
static PAUSE_HITS: AtomicU64 = AtomicU64::new(0);

/// `NAME` or `NAME:K` (K ≥ 1); anything else disables the pause.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn parse_pause(v: &str) -> Option<(String, u64)> {
    let (name, k) = match v.rsplit_once(':') {
        Some((name, k)) => (name, k.parse().ok().filter(|&k| k >= 1)?),
        None => (v, 1),
    };
    (!name.is_empty()).then(|| (name.to_string(), k))
}

/// The variables, read once (a commit step must not scan the environment three times).
#[derive(Default)]
struct Env {
    count: Option<String>,
    crash_at: Option<u64>,
    fail_at: Option<u64>,
    no_exchange: bool,
    /// `FERRY_PAUSE_AT`: failpoint name and which of its hits (1-based).
    pause_at: Option<(String, u64)>,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(read_env)
}

#[cfg(feature = "failpoints")]
fn read_env() -> Env {
    let n = |name: &str| std::env::var(name).ok()?.parse().ok();
    Env {
        count: std::env::var("FERRY_FAILPOINT_COUNT").ok(),
        crash_at: n("FERRY_CRASH_AT"),
        fail_at: n("FERRY_FAIL_AT"),
        no_exchange: std::env::var("FERRY_NO_EXCHANGE").is_ok_and(|v| v == "1"),
        pause_at: std::env::var("FERRY_PAUSE_AT").ok().and_then(|v| parse_pause(&v)),
    }
}

/// Without the `failpoints` feature the variables are not read at all.
#[cfg(not(feature = "failpoints"))]
fn read_env() -> Env {
    Env::default()
}

/// Whether this build reads the failpoint variables (the cargo feature `failpoints`).
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// `FERRY_NO_EXCHANGE=1`: replacing a file behaves as on a filesystem without
/// `RENAME_EXCHANGE` (the link-and-rename fallback).
pub fn no_exchange() -> bool {
    env().no_exchange
}

/// A point where a crash may be injected.
pub fn hit(name: &str) {
    let n = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(f) = &env().count {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(f) {
            let _ = writeln!(f, "{n} {name}");
        }
    }
    if env().crash_at == Some(n) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
    if let Some((pause, k)) = &env().pause_at {
        if pause == name && PAUSE_HITS.fetch_add(1, Ordering::SeqCst) + 1 == *k {
            // Returns once a SIGCONT arrives.
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
        }
    }
}

/// A point where a crash or an I/O error may be injected.
pub fn may_fail(name: &str) -> std::io::Result<()> {
    hit(name);
    if env().fail_at == Some(HITS.load(Ordering::SeqCst)) {
        return Err(std::io::Error::other(format!("injected failure at {name}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_pause;

    #[test]
    fn pause_spec() {
        assert_eq!(parse_pause("stage-synced"), Some(("stage-synced".into(), 1)));
        assert_eq!(parse_pause("journal:3"), Some(("journal".into(), 3)));
        assert_eq!(parse_pause("journal:0"), None);
        assert_eq!(parse_pause("journal:x"), None);
        assert_eq!(parse_pause(""), None);
    }
}
