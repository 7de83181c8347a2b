//! Test-only crash and failure injection, driven by environment variables (documented in
//! bundle-format.md, "Testing crash safety"). Unset, they cost one atomic increment per point.
//!
//! - `FERRY_CRASH_AT=N`: the N-th failpoint hit (1-based) kills the process with SIGKILL, as a
//!   power cut would stop it (no destructors, no buffered writes).
//! - `FERRY_FAILPOINT_COUNT=FILE`: append one line per hit to FILE, so a test can count them.
//! - `FERRY_FAIL_AT=N`: the N-th hit returns an injected I/O error instead (a failure that is not
//!   a crash), at points that can fail.

use std::sync::atomic::{AtomicU64, Ordering};

static HITS: AtomicU64 = AtomicU64::new(0);

fn env_n(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// A point where a crash may be injected.
pub fn hit(name: &str) {
    let n = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if let Ok(f) = std::env::var("FERRY_FAILPOINT_COUNT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(f) {
            let _ = writeln!(f, "{n} {name}");
        }
    }
    if env_n("FERRY_CRASH_AT") == Some(n) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}

/// A point where a crash or an I/O error may be injected.
pub fn may_fail(name: &str) -> std::io::Result<()> {
    hit(name);
    if env_n("FERRY_FAIL_AT") == Some(HITS.load(Ordering::SeqCst)) {
        return Err(std::io::Error::other(format!("injected failure at {name}")));
    }
    Ok(())
}
