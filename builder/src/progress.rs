//! Progress of the build's phases (scan, hash, compress, write): a progress bar with bytes, rate
//! and ETA when stderr is a terminal; nothing but plain log lines otherwise. `-v` adds one line
//! per phase with counts and duration, `-q` prints errors only.
//!
//! The encoder and scanner call [`Progress::advance`] from many threads; one phase runs at a
//! time.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much `ferry-build` says on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Errors only (`-q`).
    Quiet,
    /// The result and warnings.
    #[default]
    Normal,
    /// Also a line per phase (`-v`).
    Verbose,
}

struct Phase {
    name: String,
    unit: &'static str,
    started: Instant,
    items: u64,
    bytes: u64,
    /// The bar counts bytes (else items).
    by_bytes: bool,
    bar: Option<ProgressBar>,
}

/// Progress reporter for one command.
pub struct Progress {
    verbosity: Verbosity,
    bars: bool,
    cur: Mutex<Option<Phase>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::silent()
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Progress {
    /// Reports nothing (library use, tests).
    pub fn silent() -> Progress {
        Progress { verbosity: Verbosity::Quiet, bars: false, cur: Mutex::new(None) }
    }

    /// Bars if stderr is a terminal (and not quiet); phase lines if verbose.
    pub fn new(verbosity: Verbosity) -> Progress {
        let bars = verbosity > Verbosity::Quiet && std::io::stderr().is_terminal();
        Progress { verbosity, bars, cur: Mutex::new(None) }
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// A plain log line at `-v`.
    pub fn note(&self, line: &str) {
        if self.verbosity >= Verbosity::Verbose {
            self.println(line);
        }
    }

    fn println(&self, line: &str) {
        let g = self.cur.lock().ok();
        match g.as_ref().and_then(|g| g.as_ref()).and_then(|p| p.bar.as_ref()) {
            Some(bar) => bar.println(format!("ferry-build: {line}")),
            None => eprintln!("ferry-build: {line}"),
        }
    }

    /// Start a phase (ending the previous one). `total_bytes` gives a byte bar with rate and ETA;
    /// without it the bar counts `unit`s (out of `total_items` if known).
    pub fn begin(&self, name: &str, unit: &'static str, total_items: Option<u64>, total_bytes: Option<u64>) {
        self.end();
        let bar = self.bars.then(|| {
            let (bar, tpl) = match (total_bytes, total_items) {
                (Some(b), _) => (
                    ProgressBar::new(b),
                    "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                ),
                (None, Some(n)) => (ProgressBar::new(n), "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ETA {eta}"),
                (None, None) => (ProgressBar::new_spinner(), "{prefix:>10} {spinner} {pos} {msg} {elapsed}"),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            if let Ok(style) = ProgressStyle::with_template(tpl) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(name.to_string());
            if total_bytes.is_none() {
                bar.set_message(unit);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if let Ok(mut g) = self.cur.lock() {
            *g = Some(Phase {
                name: name.to_string(),
                unit,
                started: Instant::now(),
                items: 0,
                bytes: 0,
                by_bytes: total_bytes.is_some(),
                bar,
            });
        }
    }

    /// `items` more units and `bytes` more bytes done in the current phase.
    pub fn advance(&self, items: u64, bytes: u64) {
        if self.verbosity == Verbosity::Quiet && !self.bars {
            return;
        }
        if let Ok(mut g) = self.cur.lock() {
            if let Some(p) = g.as_mut() {
                p.items += items;
                p.bytes += bytes;
                if let Some(bar) = &p.bar {
                    bar.inc(if p.by_bytes { bytes } else { items });
                }
            }
        }
    }

    /// The current phase has `bytes` more to do than announced.
    pub fn add_total(&self, bytes: u64) {
        if let Ok(g) = self.cur.lock() {
            if let Some(bar) = g.as_ref().filter(|p| p.by_bytes).and_then(|p| p.bar.as_ref()) {
                bar.inc_length(bytes);
            }
        }
    }

    /// End the current phase: clear its bar, and at `-v` print what it did.
    pub fn end(&self) {
        self.end_with("");
    }

    /// As [`Progress::end`], with extra words for the phase line.
    pub fn end_with(&self, extra: &str) {
        let phase = self.cur.lock().ok().and_then(|mut g| g.take());
        let Some(p) = phase else { return };
        if let Some(bar) = &p.bar {
            bar.finish_and_clear();
        }
        if self.verbosity >= Verbosity::Verbose {
            let secs = p.started.elapsed().as_secs_f64();
            let bytes = if p.bytes > 0 {
                format!(", {} ({}/s)", human_bytes(p.bytes), human_bytes((p.bytes as f64 / secs.max(1e-3)) as u64))
            } else {
                String::new()
            };
            let extra = if extra.is_empty() { String::new() } else { format!(", {extra}") };
            eprintln!("ferry-build: {}: {} {}{bytes}{extra} in {secs:.2} s", p.name, p.items, p.unit);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Ok(mut g) = self.cur.lock() {
            if let Some(bar) = g.take().and_then(|p| p.bar) {
                bar.finish_and_clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn silent_phases_count_nothing_and_do_not_panic() {
        let p = Progress::silent();
        p.begin("scan", "entries", None, None);
        p.advance(3, 100);
        p.end();
        p.end();
    }
}
