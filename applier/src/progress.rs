//! Progress of long phases (verify, stage, commit). On a terminal: an indicatif bar with bytes (or
//! steps), rate and ETA. Otherwise (journald, pipes) with `-v`: plain log lines, at most one a
//! second, with counts, bytes, rate and ETA. `-q` shows neither.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
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
    bar: Option<ProgressBar>,
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
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let (len, template) = if total_bytes > 0 {
                (total_bytes, "{prefix:>7} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            } else {
                (total, "{prefix:>7} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            };
            let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
            let b = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
                .with_style(style.progress_chars("=> "));
            b.set_prefix(phase);
            b
        });
        Progress { phase, unit, total, total_bytes, start: now, last: now, enabled, bar }
    }

    /// Report `done` units and `bytes` so far.
    pub fn tick(&mut self, done: u64, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_position(if self.total_bytes > 0 { bytes } else { done });
            return;
        }
        if !self.enabled || self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        self.print(done, bytes, false);
    }

    pub fn finish(&mut self, done: u64, bytes: u64) {
        if let Some(b) = self.bar.take() {
            b.set_position(if self.total_bytes > 0 { bytes } else { done });
            b.finish_and_clear();
        }
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
