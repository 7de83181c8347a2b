//! Retrying after network failures, with exponential backoff, within the fetch's deadline.
//!
//! It exists to keep one rule in one place: a request that failed without bringing a new byte
//! counts against `--retries` (failures in a row), one that brought bytes starts the count
//! again, waits double from `--retry-wait-ms` up to [`MAX_WAIT`], and no wait or retry ever
//! runs past `--deadline` (a server that keeps failing slowly is abandoned at the deadline).

use super::http::{net_error, Http};
use super::{Fail, Fetcher};
use std::time::{Duration, Instant};

/// Longest wait between two attempts.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Counts failures of requests that brought no new byte; gives up after `retries` in a row.
#[derive(Default)]
pub struct Backoff {
    fails: u32,
}

impl Fetcher<'_> {
    /// After a network failure: wait and return Ok to retry, or give up. `progress`: the failed
    /// request brought new bytes (then the count of failures in a row starts again).
    pub(super) fn retry(&self, b: &mut Backoff, what: &str, msg: String, progress: bool) -> Result<(), Fail> {
        if progress {
            b.fails = 0;
        }
        b.fails += 1;
        if self.http.expired().is_some() {
            let why = if msg.contains("deadline") {
                format!("{what}: {msg}")
            } else {
                format!(
                    "{what}: {msg}; gave up: the deadline of the fetch (--deadline {}) passed",
                    self.http.deadline_secs
                )
            };
            return Err(Fail::Stop(net_error(&self.o.url, why)));
        }
        if b.fails > self.o.retries {
            return Err(Fail::Stop(net_error(
                &self.o.url,
                format!("{what}: {msg}; gave up after {} failed attempts in a row", b.fails),
            )));
        }
        let wait = self.o.retry_wait.saturating_mul(1 << (b.fails - 1).min(16)).min(MAX_WAIT);
        let wait = wait.min(self.http.deadline.saturating_duration_since(Instant::now()));
        self.say(format_args!("fetch: network error ({what}): {msg}; retrying in {} ms", wait.as_millis()));
        std::thread::sleep(wait);
        Ok(())
    }

    /// Run `op` until it does not fail with a network error (or the retries or deadline run out).
    pub(super) fn with_retries<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut Http) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let mut b = Backoff::default();
        loop {
            // Each attempt starts over, so bytes received do not count as progress.
            match op(&mut self.http) {
                Err(Fail::Net(m)) => self.retry(&mut b, what, m, false)?,
                r => return r,
            }
        }
    }
}
