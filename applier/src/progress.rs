//! Progress of long phases as plain log lines on stderr — at most one a second, with counts,
//! bytes, rate and ETA — readable in journald and on a terminal alike. (The applier stays small:
//! no terminal UI library; `ferry-build` draws progress bars.)

use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    phase: &'static str,
    unit: &'static str,
    total: u64,
    total_bytes: u64,
    start: Instant,
    last: Instant,
    enabled: bool,
}

/// Progress is shown with `-v`, or on a terminal unless `-q`.
pub fn wanted(quiet: bool, verbose: bool) -> bool {
    verbose || (!quiet && std::io::stderr().is_terminal())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

impl Progress {
    pub fn new(phase: &'static str, unit: &'static str, total: u64, total_bytes: u64, enabled: bool) -> Progress {
        let now = Instant::now();
        Progress { phase, unit, total, total_bytes, start: now, last: now, enabled }
    }

    /// Report `done` units and `bytes` so far (printed at most once a second).
    pub fn tick(&mut self, done: u64, bytes: u64) {
        if !self.enabled || self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        self.print(done, bytes, false);
    }

    pub fn finish(&mut self, done: u64, bytes: u64) {
        if self.enabled {
            self.print(done, bytes, true);
        }
    }

    fn print(&self, done: u64, bytes: u64, end: bool) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = mib(bytes) / secs;
        let eta = if end || bytes == 0 || self.total_bytes <= bytes {
            String::new()
        } else {
            format!(", ETA {:.0} s", (self.total_bytes - bytes) as f64 / (bytes as f64 / secs))
        };
        eprintln!(
            "ferry-apply: {}: {done}/{} {}, {:.1} of {:.1} MiB, {rate:.1} MiB/s{eta}{}",
            self.phase,
            self.total,
            self.unit,
            mib(bytes),
            mib(self.total_bytes),
            if end { format!(" (done in {secs:.1} s)") } else { String::new() }
        );
    }
}
