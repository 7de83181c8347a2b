//! `ferry-apply fetch URL --into DIR`: download a bundle over HTTP(S) with range requests,
//! resumably across runs and reboots, verifying as the bytes arrive (bundle-format.md, "Fetching").
//!
//! ```text
//! DIR/NAME.part    the bundle's bytes, each written at its own offset and fsynced
//! DIR/NAME.fetch   progress (JSON, replaced atomically): url, length, manifest and signature
//!                  member sizes, BLAKE3 of the manifest, indices of the frames verified so far
//! DIR/NAME         the finished bundle, renamed from NAME.part after a full verification
//! ```
//!
//! 1. The head: bytes 0..512 give the manifest's size (bounded by the limits before anything more
//!    is fetched); then the manifest and the signature member. Signatures (and, with `--trust`,
//!    the trust policy) are checked and the manifest decoded before any payload is fetched.
//! 2. Frames: [`container::layout`] gives each frame's byte range. Runs of consecutive missing
//!    frames are asked for in one range request; each frame's header, BLAKE3 and padding are
//!    checked as soon as its last byte arrives, and a frame that fails is fetched again on its
//!    own. A dropped connection resumes at the byte where it stopped.
//! 3. The end marker, and the server's length must be exactly the bundle's.
//! 4. The whole file is verified again ([`verify::bundle`]), renamed to NAME, DIR fsynced.
//!
//! A later run re-fetches the head, compares the manifest's BLAKE3 with the one in NAME.fetch and
//! keeps the frames recorded there (after re-hashing them from NAME.part) — whatever the URL, so a
//! mirror or a URL with a fresh token resumes too; a different manifest means the URL now serves
//! another bundle, and the download starts over. A server that ignores
//! `Range` (200 instead of 206) gets the whole body streamed once through the same checks.

use crate::error::{Ctx, Error, Result};
use crate::verify::{self, Head};
use bundle::container::{self, Reader, Span, BLOCK, MANIFEST_NAME, MAX_SIGNATURES_BYTES};
use bundle::sig::TrustPolicy;
use bundle::{Hash, Limits};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `fetch` is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub url: String,
    /// Directory the bundle is downloaded into (created if missing).
    pub into: PathBuf,
    /// `--trust`: a key or a directory of keys; without it signatures are only checked for
    /// validity, not against trusted keys.
    pub trust: Option<PathBuf>,
    /// How often one frame (or the head) may be fetched again after a hash mismatch, and how
    /// many requests in a row may fail without bringing a byte before the fetch gives up.
    pub retries: u32,
    /// First wait before retrying after a network error; doubles with each failure, up to 30 s.
    pub retry_wait: Duration,
    /// Connect and read timeout of one request.
    pub timeout: Duration,
    /// No progress lines on stderr.
    pub quiet: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: String::new(),
            into: PathBuf::from("."),
            trust: None,
            retries: 5,
            retry_wait: Duration::from_millis(500),
            timeout: Duration::from_secs(60),
            quiet: false,
        }
    }
}

/// The result of a fetch (`--json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The finished bundle.
    pub file: String,
    pub url: String,
    /// Bytes received over the network by this run (head, frames, re-fetches).
    pub bytes: u64,
    /// Size of the bundle.
    pub size: u64,
    /// Frames in the bundle.
    pub frames: usize,
    /// Frames fetched (and verified) by this run.
    pub frames_fetched: usize,
    /// Manifest indices of frames that failed their check and were fetched again.
    pub refetched_frames: Vec<usize>,
    /// Bytes of verified frames kept from an earlier, interrupted run (not fetched again).
    pub resumed_from_bytes: u64,
    /// HTTP requests made.
    pub requests: u64,
    /// Whether the server honoured range requests (else the body was streamed whole).
    pub range_requests: bool,
    /// DIR/NAME already held this bundle, verified; nothing but the head was fetched.
    pub already_complete: bool,
    pub bundle_id: String,
    pub version: u64,
    pub signers: Vec<String>,
    /// Signers were checked against `--trust` (else only that the signatures are valid).
    pub trusted: bool,
}

/// The `.fetch` progress file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    ferry_fetch: u32,
    url: String,
    total: u64,
    manifest_len: u64,
    signatures_len: u64,
    /// BLAKE3 of the manifest bytes (the bundle id), hex.
    manifest_blake3: String,
    /// Indices of frames whose bytes in `.part` are verified and fsynced.
    verified_frames: Vec<usize>,
}

const STATE_VERSION: u32 = 1;
/// Most bytes asked for in one range request (a run of consecutive frames).
const BATCH: u64 = 8 << 20;
/// Progress is made durable at least this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(30);
const END_MARKER: u64 = 2 * BLOCK;

/// Download `o.url` into `o.into`.
pub fn fetch(o: &Options) -> Result<Report> {
    let name = file_name(&o.url)?;
    std::fs::create_dir_all(&o.into).ctx("create", o.into.display())?;
    let trust = o.trust.as_deref().map(|t| crate::trust::load(t, None)).transpose()?;
    let paths = Paths::new(&o.into, &name);
    let part = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&paths.part)
        .ctx("open", paths.part.display())?;
    match rustix::fs::flock(&part, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(Error::Locked(paths.part.display().to_string())),
        Err(e) => return Err(io::Error::from(e)).ctx("lock", paths.part.display()),
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(o.timeout)
        .timeout_read(o.timeout)
        .timeout_write(o.timeout)
        .user_agent(concat!("ferry-apply/", env!("CARGO_PKG_VERSION")))
        .build();
    let mut f = Fetcher {
        o,
        trust,
        limits: Limits::default(),
        http: Http { agent, url: o.url.clone(), bytes: 0, requests: 0, total: None },
        paths,
        part,
        state: None,
        verified: BTreeSet::new(),
        report: Report { url: o.url.clone(), trusted: o.trust.is_some(), range_requests: true, ..Default::default() },
        last_save: Instant::now(),
    };
    if f.trust.is_none() {
        f.say(format_args!("fetch: no --trust: signatures are checked for validity only, not against a trusted key"));
    }
    let mut restarts = 0;
    let head = loop {
        let r = match f.ranges() {
            Err(Fail::NoRanges(body)) => {
                f.say(format_args!(
                    "fetch: the server ignores range requests; streaming the whole bundle (no resumption)"
                ));
                f.report.range_requests = false;
                f.stream(Some(body))
            }
            r => r,
        };
        match r {
            Ok(h) => break h,
            Err(Fail::Changed(why)) if restarts < 2 => {
                restarts += 1;
                f.say(format_args!("fetch: {} changed during the download ({why}); starting over", o.url));
                f.state = None;
                f.http.total = None;
                f.report.refetched_frames.clear();
                f.report.resumed_from_bytes = 0;
                f.report.frames_fetched = 0;
            }
            Err(e) => {
                // Keep what was verified for the next run; leave no empty file behind.
                let _ = f.save(true);
                if f.state.is_none() && f.part.metadata().map(|m| m.len() == 0).unwrap_or(false) {
                    let _ = std::fs::remove_file(&f.paths.part);
                }
                return Err(f.error_of(e));
            }
        }
    };
    f.finish(head)
}

/// The file name a URL's bundle is saved under: its last path segment, percent-decoded.
pub fn file_name(url: &str) -> Result<String> {
    let bad = |why: &str| Error::Usage(format!("{url}: {why}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("not an http:// or https:// URL"))?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(bad("not an http:// or https:// URL"));
    }
    let path = rest.split(['?', '#']).next().unwrap_or("");
    let path = path.find('/').map(|i| &path[i..]).unwrap_or("");
    let seg = path.rsplit('/').next().unwrap_or("");
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    let name = String::from_utf8(out).map_err(|_| bad("the last path segment is not UTF-8"))?;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) || name.len() > 200 {
        return Err(bad("the URL's last path segment is not usable as a file name (empty, '.', '..', or with '/')"));
    }
    Ok(name)
}

struct Paths {
    dir: PathBuf,
    final_: PathBuf,
    part: PathBuf,
    state: PathBuf,
    state_tmp: PathBuf,
}

impl Paths {
    fn new(dir: &Path, name: &str) -> Paths {
        let with = |ext: &str| {
            let mut s = std::ffi::OsString::from(name);
            s.push(ext);
            dir.join(s)
        };
        Paths {
            dir: dir.to_path_buf(),
            final_: dir.join(name),
            part: with(".part"),
            state: with(".fetch"),
            state_tmp: with(".fetch.tmp"),
        }
    }
}

/// Why a request or a transfer stopped.
enum Fail {
    /// Worth retrying: connection refused or dropped, timeout, HTTP 5xx, 408 or 429.
    Net(String),
    /// The server ignored `Range` and answers with the whole file (its body).
    NoRanges(Box<dyn Read + Send + Sync>),
    /// The file on the server changed during the download (its length did).
    Changed(String),
    /// Stop with this error.
    Stop(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Stop(e)
    }
}

fn net_error(url: &str, why: String) -> Error {
    Error::Io { op: "fetch (network error)", path: url.to_string(), source: io::Error::other(why) }
}

/// Parse `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`).
fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (a <= b).then_some((a, b, total))
}

struct Http {
    agent: ureq::Agent,
    url: String,
    /// Body bytes received.
    bytes: u64,
    requests: u64,
    /// The file's length, from the first Content-Range that gave one.
    total: Option<u64>,
}

impl Http {
    fn call(&mut self, method: &str, range: Option<(u64, u64)>) -> Result<ureq::Response, Fail> {
        self.requests += 1;
        let mut req = self.agent.request(method, &self.url);
        if let Some((a, b)) = range {
            req = req.set("Range", &format!("bytes={a}-{}", b.saturating_sub(1)));
        }
        match req.call() {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(416, r)) => {
                let a = range.map(|r| r.0).unwrap_or(0);
                let cr = r.header("Content-Range").unwrap_or("").to_string();
                if let Some(t) = cr.strip_prefix("bytes */").and_then(|t| t.trim().parse::<u64>().ok()) {
                    self.see_total(Some(t))?;
                }
                Err(Fail::Stop(Error::BadPart(format!(
                    "{}: the server has no bytes from offset {a} on ({cr}): the file is shorter than the bundle it starts",
                    self.url
                ))))
            }
            Err(ureq::Error::Status(code, r)) if code >= 500 || code == 408 || code == 429 => {
                Err(Fail::Net(format!("HTTP {code} {}", r.status_text())))
            }
            Err(ureq::Error::Status(code, r)) => {
                Err(Fail::Stop(net_error(&self.url, format!("HTTP {code} {}", r.status_text()))))
            }
            Err(ureq::Error::Transport(t)) => {
                let mut m = t.kind().to_string();
                if let Some(x) = t.message() {
                    m = format!("{m}: {x}");
                }
                if let Some(x) = std::error::Error::source(&t) {
                    m = format!("{m}: {x}");
                }
                Err(Fail::Net(m))
            }
        }
    }

    fn see_total(&mut self, t: Option<u64>) -> Result<(), Fail> {
        match (self.total, t) {
            (None, Some(t)) => self.total = Some(t),
            (Some(a), Some(b)) if a != b => {
                return Err(Fail::Changed(format!("its length went from {a} to {b} bytes")))
            }
            _ => {}
        }
        Ok(())
    }

    /// GET bytes `a..b`: the body and the range it holds (a prefix of `a..b`, at least one byte).
    fn range(&mut self, a: u64, b: u64) -> Result<(Box<dyn Read + Send + Sync>, u64), Fail> {
        let r = self.call("GET", Some((a, b)))?;
        match r.status() {
            206 => {
                let cr = r.header("Content-Range").unwrap_or("").to_string();
                let (s, e, total) =
                    content_range(&cr).ok_or_else(|| Fail::Net(format!("206 with a bad Content-Range {cr:?}")))?;
                self.see_total(total)?;
                if s != a {
                    return Err(Fail::Net(format!("asked for bytes {a}-{}, the server sent {cr}", b - 1)));
                }
                Ok((r.into_reader(), (e - s + 1).min(b - a)))
            }
            200 => Err(Fail::NoRanges(r.into_reader())),
            c => Err(Fail::Net(format!("unexpected HTTP {c} {}", r.status_text()))),
        }
    }

    /// GET bytes `a..b` into memory (fewer if the file ends first).
    fn range_vec(&mut self, a: u64, b: u64) -> Result<Vec<u8>, Fail> {
        let mut out = Vec::with_capacity((b - a) as usize);
        let mut at = a;
        while at < b && !matches!(self.total, Some(t) if at >= t) {
            let (mut body, len) = self.range(at, b)?;
            let start = out.len();
            out.resize(start + len as usize, 0);
            read_full(&mut body, &mut out[start..], &mut self.bytes)?;
            at += len;
            if self.total.is_none() {
                break; // the server said how much it sent but not the length: take it
            }
        }
        Ok(out)
    }

    /// The file's length from a HEAD request.
    fn head_len(&mut self) -> Result<u64, Fail> {
        let r = self.call("HEAD", None)?;
        r.header("Content-Length").and_then(|v| v.trim().parse().ok()).ok_or_else(|| {
            Fail::Stop(net_error(
                &self.url,
                "the server gives no length for the file (no Content-Range total, no Content-Length)".into(),
            ))
        })
    }
}

/// Fill `buf` from `body`; a short body or a read error is a network failure.
fn read_full(body: &mut dyn Read, buf: &mut [u8], count: &mut u64) -> Result<(), Fail> {
    let mut got = 0;
    while got < buf.len() {
        match body.read(&mut buf[got..]) {
            Ok(0) => return Err(Fail::Net(format!("connection closed after {got} of {} bytes", buf.len()))),
            Ok(n) => {
                got += n;
                *count += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Fail::Net(format!("{e} (after {got} of {} bytes)", buf.len()))),
        }
    }
    Ok(())
}

/// A frame being received: header bytes, running hashes, padding check, and the next offset.
struct Job {
    pos: u64,
    hdr: [u8; 512],
    data: blake3::Hasher,
    /// Every byte of the span: tells a repeated identical corruption from a transfer error.
    whole: blake3::Hasher,
    pad_ok: bool,
}

impl Job {
    fn new(s: &Span) -> Job {
        Job { pos: s.start, hdr: [0; 512], data: blake3::Hasher::new(), whole: blake3::Hasher::new(), pad_ok: true }
    }

    /// Take the bytes at `self.pos` (at most up to the span's end); returns how many were taken.
    fn feed(&mut self, s: &Span, mut bytes: &[u8]) -> usize {
        let mut taken = 0;
        while !bytes.is_empty() && self.pos < s.end {
            let at = self.pos;
            let (k, region) = if at < s.data {
                ((s.data - at) as usize, 0)
            } else if at < s.data + s.size {
                ((s.data + s.size - at) as usize, 1)
            } else {
                ((s.end - at) as usize, 2)
            };
            let k = k.min(bytes.len());
            let b = &bytes[..k];
            match region {
                0 => {
                    let o = (at - s.start) as usize;
                    self.hdr[o..o + k].copy_from_slice(b);
                }
                1 => {
                    self.data.update(b);
                }
                _ => self.pad_ok &= b.iter().all(|&x| x == 0),
            }
            self.whole.update(b);
            self.pos += k as u64;
            taken += k;
            bytes = &bytes[k..];
        }
        taken
    }

    /// Check a complete frame; on failure, why, and the digest of what was received.
    fn check(&self, s: &Span, f: &bundle::Frame) -> std::result::Result<(), (String, Hash)> {
        let header_ok = match s.member {
            Some((k, size)) => self.hdr == container::header(&container::payload_name(k), size),
            None => true,
        };
        let why = if !header_ok {
            "its tar header is not the canonical one"
        } else if Hash::from(self.data.finalize()) != f.hash {
            "hash mismatch"
        } else if !self.pad_ok {
            "non-zero padding"
        } else {
            return Ok(());
        };
        debug_assert_eq!(self.pos, s.end);
        Err((why.to_string(), Hash::from(self.whole.finalize())))
    }
}

/// Counts failures of requests that brought no new byte; gives up after `retries` in a row.
struct Backoff {
    fails: u32,
}

struct Fetcher<'a> {
    o: &'a Options,
    trust: Option<TrustPolicy>,
    limits: Limits,
    http: Http,
    paths: Paths,
    part: File,
    state: Option<State>,
    /// Frames whose bytes in `.part` are verified (recorded in `state` at the next save).
    verified: BTreeSet<usize>,
    report: Report,
    last_save: Instant,
}

impl Fetcher<'_> {
    fn say(&self, a: std::fmt::Arguments) {
        if !self.o.quiet {
            eprintln!("{a}");
        }
    }

    fn error_of(&self, f: Fail) -> Error {
        match f {
            Fail::Stop(e) => e,
            Fail::Net(m) => net_error(&self.o.url, m),
            Fail::Changed(m) => net_error(&self.o.url, format!("the file keeps changing on the server ({m})")),
            Fail::NoRanges(_) => net_error(&self.o.url, "the server stopped honouring range requests".into()),
        }
    }

    /// After a network failure: wait and return Ok to retry, or give up. `progress`: the failed
    /// request brought new bytes (then the count of failures in a row starts again).
    fn retry(&self, b: &mut Backoff, what: &str, msg: String, progress: bool) -> Result<(), Fail> {
        if progress {
            b.fails = 0;
        }
        b.fails += 1;
        if b.fails > self.o.retries {
            return Err(Fail::Stop(net_error(
                &self.o.url,
                format!("{what}: {msg}; gave up after {} failed attempts in a row", b.fails),
            )));
        }
        let wait = self.o.retry_wait.saturating_mul(1 << (b.fails - 1).min(16)).min(MAX_WAIT);
        self.say(format_args!("fetch: network error ({what}): {msg}; retrying in {} ms", wait.as_millis()));
        std::thread::sleep(wait);
        Ok(())
    }

    fn with_retries<T>(&mut self, what: &str, mut op: impl FnMut(&mut Http) -> Result<T, Fail>) -> Result<T, Fail> {
        let mut b = Backoff { fails: 0 };
        loop {
            // Each attempt starts over, so bytes received do not count as progress.
            match op(&mut self.http) {
                Err(Fail::Net(m)) => self.retry(&mut b, what, m, false)?,
                r => return r,
            }
        }
    }

    /// Bytes 0..512, then (if that parses as the first header) the manifest and the signature
    /// member. What does not parse is returned as is: verification reports it.
    fn head_bytes(http: &mut Http, limits: &Limits) -> Result<Vec<u8>, Fail> {
        let mut raw = http.range_vec(0, BLOCK)?;
        let Ok(m) = Reader::new(&raw[..], limits.clone()).header(MANIFEST_NAME, limits.max_manifest_bytes) else {
            return Ok(raw);
        };
        let want = BLOCK + m.div_ceil(BLOCK) * BLOCK + BLOCK + MAX_SIGNATURES_BYTES;
        let end = http.total.map_or(want, |t| t.min(want));
        if end > raw.len() as u64 {
            let rest = http.range_vec(raw.len() as u64, end)?;
            raw.extend_from_slice(&rest);
        }
        Ok(raw)
    }

    /// Fetch and verify the head; returns it with its exact bytes.
    fn head(&mut self) -> Result<(Head, Vec<u8>), Fail> {
        let mut last_bad: Option<Hash> = None;
        let mut bad = 0;
        loop {
            let limits = self.limits.clone();
            let raw = self.with_retries("head", |h| Self::head_bytes(h, &limits))?;
            let mut r = Reader::new(&raw[..], self.limits.clone());
            match verify::head(&mut r, self.trust.as_ref(), &self.limits) {
                Ok(h) => {
                    let n = r.offset() as usize;
                    return Ok((h, raw[..n].to_vec()));
                }
                Err(e @ Error::Bundle(bundle::Error::Untrusted { .. })) => return Err(Fail::Stop(e)),
                Err(e) => {
                    let d = Hash::from(blake3::hash(&raw));
                    bad += 1;
                    if last_bad == Some(d) || bad > self.o.retries {
                        return Err(Fail::Stop(e));
                    }
                    self.say(format_args!("fetch: re-fetching the head: {e}"));
                    last_bad = Some(d);
                }
            }
        }
    }

    fn write_at(&self, bytes: &[u8], at: u64) -> Result<()> {
        self.part.write_all_at(bytes, at).ctx("write", self.paths.part.display())
    }

    /// Make the verified frames durable and record them (at most once per SAVE_EVERY unless `now`).
    fn save(&mut self, now: bool) -> Result<()> {
        if self.state.is_none() || (!now && self.last_save.elapsed() < SAVE_EVERY) {
            return Ok(());
        }
        self.part.sync_data().ctx("fsync", self.paths.part.display())?;
        let Some(st) = &mut self.state else {
            return Ok(());
        };
        st.verified_frames = self.verified.iter().copied().collect();
        let text = serde_json::to_vec_pretty(st).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&self.paths.state_tmp, &self.paths.state, &self.paths.dir, &text)?;
        self.last_save = Instant::now();
        Ok(())
    }

    fn load_state(&self) -> Option<State> {
        let text = std::fs::read(&self.paths.state).ok()?;
        let st: State = serde_json::from_slice(&text).ok()?;
        (st.ferry_fetch == STATE_VERSION).then_some(st)
    }

    /// Range mode: steps 1 to 3.
    fn ranges(&mut self) -> Result<Head, Fail> {
        let (head, raw) = self.head()?;
        let m = &head.manifest;
        let n = m.frames.len();
        let spans = container::layout(head.manifest_bytes.len() as u64, head.sig_bytes.len() as u64, &m.frames);
        let end_start = spans.last().map_or(raw.len() as u64, |s| s.end);
        let size = end_start + END_MARKER;
        self.report.size = size;
        self.report.frames = n;
        self.say(format_args!(
            "fetch: {}: bundle version {}, {} frames, {size} bytes; signatures valid{}",
            self.o.url,
            m.version,
            n,
            if self.trust.is_some() { " and trusted" } else { " (signers not checked against a trusted key)" }
        ));
        if let Some(t) = self.http.total {
            if t != size {
                return Err(Fail::Stop(Error::BadPart(format!(
                    "{}: the file is {t} bytes, but its manifest lays out a bundle of {size} bytes ({})",
                    self.o.url,
                    if t < size { "truncated" } else { "trailing data" }
                ))));
            }
        }
        if self.already_have(&raw)? {
            self.report.already_complete = true;
            return Ok(head);
        }

        // Resume, or start over.
        let id = head.id.to_hex();
        let fresh = State {
            ferry_fetch: STATE_VERSION,
            url: self.o.url.clone(),
            total: size,
            manifest_len: head.manifest_bytes.len() as u64,
            signatures_len: head.sig_bytes.len() as u64,
            manifest_blake3: id,
            verified_frames: Vec::new(),
        };
        let old = match self.state.take() {
            Some(s) => Some(s),
            None => self.load_state(),
        };
        self.verified.clear();
        match old {
            // The same bundle (same manifest, so the same frames), from this URL or another one
            // (a mirror, a URL with a fresh token).
            Some(old) if State { verified_frames: Vec::new(), url: fresh.url.clone(), ..old.clone() } == fresh => {
                self.verified = self.recheck(&old.verified_frames, &spans, &m.frames)?;
                let bytes: u64 = self.verified.iter().map(|&i| spans[i].end - spans[i].start).sum();
                self.report.resumed_from_bytes = bytes;
                self.say(format_args!(
                    "fetch: resuming: {} of {n} frames ({bytes} bytes) already fetched and verified",
                    self.verified.len()
                ));
            }
            Some(old) => {
                self.say(format_args!(
                    "fetch: {} serves a different bundle than the interrupted download (from {}); starting over",
                    self.o.url, old.url
                ));
                self.part.set_len(0).ctx("truncate", self.paths.part.display())?;
            }
            None => self.part.set_len(0).ctx("truncate", self.paths.part.display())?,
        }
        self.write_at(&raw, 0)?;
        self.part.set_len(size).ctx("extend", self.paths.part.display())?;
        self.state = Some(fresh);
        self.save(true)?;

        self.frames(&spans, &m.frames)?;
        self.end_marker(end_start)?;
        Ok(head)
    }

    /// DIR/NAME already is this bundle, complete and verified.
    fn already_have(&mut self, raw: &[u8]) -> Result<bool, Fail> {
        let mut have = vec![0u8; raw.len()];
        let same = File::open(&self.paths.final_).and_then(|f| f.read_exact_at(&mut have, 0)).is_ok() && have == raw;
        if same && verify::bundle(&self.paths.final_, self.trust.as_ref(), &self.limits, true).is_ok() {
            self.say(format_args!("fetch: {} already holds this bundle, verified", self.paths.final_.display()));
            return Ok(true);
        }
        Ok(false)
    }

    /// Re-hash frames an earlier run recorded as verified; returns those still good.
    fn recheck(&self, ids: &[usize], spans: &[Span], frames: &[bundle::Frame]) -> Result<BTreeSet<usize>> {
        let mut good = BTreeSet::new();
        let mut buf = vec![0u8; 1 << 20];
        for &i in ids {
            let (Some(s), Some(f)) = (spans.get(i), frames.get(i)) else {
                continue;
            };
            let mut job = Job::new(s);
            let mut ok = true;
            while job.pos < s.end {
                let k = buf.len().min((s.end - job.pos) as usize);
                if self.part.read_exact_at(&mut buf[..k], job.pos).is_err() {
                    ok = false;
                    break;
                }
                job.feed(s, &buf[..k]);
            }
            if ok && job.check(s, f).is_ok() {
                good.insert(i);
            } else {
                self.say(format_args!(
                    "fetch: frame {i} in {} no longer verifies; fetching it again",
                    self.paths.part.display()
                ));
            }
        }
        Ok(good)
    }

    /// Step 2: every frame not verified yet.
    fn frames(&mut self, spans: &[Span], frames: &[bundle::Frame]) -> Result<(), Fail> {
        let n = frames.len();
        let mut pending: BTreeSet<usize> = (0..n).filter(|i| !self.verified.contains(i)).collect();
        let mut jobs: BTreeMap<usize, Job> = BTreeMap::new();
        let mut bad: BTreeMap<usize, (u32, Hash)> = BTreeMap::new();
        let mut backoff = Backoff { fails: 0 };
        let mut buf = vec![0u8; 256 << 10];
        while let Some(&first) = pending.first() {
            let from = jobs.entry(first).or_insert_with(|| Job::new(&spans[first])).pos;
            let mut last = first;
            // A run of consecutive missing frames; a frame already partly received (a dropped
            // connection) starts a run of its own, at the byte where it stopped.
            while last + 1 < n
                && pending.contains(&(last + 1))
                && !jobs.contains_key(&(last + 1))
                && spans[last + 1].end - from <= BATCH
            {
                last += 1;
            }
            let to = spans[last].end;
            let before = self.http.bytes;
            let res = (|| -> Result<(), Fail> {
                let (mut body, len) = self.http.range(from, to)?;
                let (mut at, end) = (from, from + len);
                let mut cur = first;
                while at < end {
                    let want = buf.len().min((end - at) as usize);
                    let got = match body.read(&mut buf[..want]) {
                        Ok(0) => {
                            return Err(Fail::Net(format!("connection closed after {} of {len} bytes", at - from)))
                        }
                        Ok(k) => k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Fail::Net(format!("{e} (after {} of {len} bytes)", at - from))),
                    };
                    self.http.bytes += got as u64;
                    self.write_at(&buf[..got], at)?;
                    let mut chunk = &buf[..got];
                    while !chunk.is_empty() {
                        let s = &spans[cur];
                        let job = jobs.entry(cur).or_insert_with(|| Job::new(s));
                        let k = job.feed(s, chunk);
                        chunk = &chunk[k..];
                        at += k as u64;
                        if job.pos == s.end {
                            let Some(job) = jobs.remove(&cur) else { break };
                            match job.check(s, &frames[cur]) {
                                Ok(()) => {
                                    pending.remove(&cur);
                                    self.verified.insert(cur);
                                    self.report.frames_fetched += 1;
                                    self.say(format_args!("fetched frame {cur}/{n} ({} bytes)", frames[cur].size));
                                    self.save(false)?;
                                }
                                Err((why, digest)) => {
                                    let e = bad.entry(cur).or_insert((0, Hash([0; 32])));
                                    e.0 += 1;
                                    let again = e.1 == digest;
                                    e.1 = digest;
                                    if again || e.0 > self.o.retries {
                                        return Err(Fail::Stop(Error::BadPart(format!(
                                            "frame {cur} (bytes {}..{}) of {}: {why}, {} — the file on the server is corrupt or not what its manifest was signed with",
                                            s.start,
                                            s.end,
                                            self.o.url,
                                            if again { "the same wrong bytes came twice".to_string() } else { format!("still after {} re-fetches", e.0 - 1) }
                                        ))));
                                    }
                                    self.say(format_args!("re-fetching frame {cur}: {why}"));
                                    self.report.refetched_frames.push(cur);
                                }
                            }
                            cur += 1;
                        }
                    }
                }
                Ok(())
            })();
            match res {
                Ok(()) => {}
                Err(Fail::Net(m)) => {
                    let _ = self.save(true);
                    let progress = self.http.bytes > before;
                    self.retry(&mut backoff, &format!("frames from byte {from}"), m, progress)?;
                }
                Err(e) => return Err(e),
            }
        }
        self.save(true)?;
        Ok(())
    }

    /// Step 3: the end marker, and the file ends right after it.
    fn end_marker(&mut self, at: u64) -> Result<(), Fail> {
        let z = self.with_retries("end marker", |h| h.range_vec(at, at + END_MARKER))?;
        if z.len() as u64 != END_MARKER {
            return Err(Fail::Stop(
                bundle::Error::Truncated { offset: at + z.len() as u64, what: "end-of-archive marker".into() }.into(),
            ));
        }
        if let Some(i) = z.iter().position(|&b| b != 0) {
            return Err(Fail::Stop(
                bundle::Error::Framing { offset: at + i as u64, what: "expected end-of-archive zero blocks".into() }
                    .into(),
            ));
        }
        self.write_at(&z, at)?;
        let total = match self.http.total {
            Some(t) => t,
            None => self.with_retries("length", |h| h.head_len())?,
        };
        let end = at + END_MARKER;
        if total > end {
            return Err(Fail::Stop(bundle::Error::TrailingData { offset: end }.into()));
        }
        if total < end {
            return Err(Fail::Stop(
                bundle::Error::Truncated { offset: total, what: "end-of-archive marker".into() }.into(),
            ));
        }
        Ok(())
    }

    /// Without range requests: stream the whole body through the same checks, from byte 0.
    fn stream(&mut self, mut first: Option<Box<dyn Read + Send + Sync>>) -> Result<Head, Fail> {
        self.state = None;
        let _ = std::fs::remove_file(&self.paths.state);
        let mut backoff = Backoff { fails: 0 };
        let mut bad: BTreeMap<usize, u32> = BTreeMap::new();
        loop {
            let body = match first.take() {
                Some(b) => b,
                None => match self.http.call("GET", None) {
                    Ok(r) if r.status() == 200 => r.into_reader(),
                    Ok(r) => {
                        return Err(Fail::Stop(net_error(
                            &self.o.url,
                            format!("unexpected HTTP {} to a plain GET", r.status()),
                        )))
                    }
                    Err(Fail::Net(m)) => {
                        self.retry(&mut backoff, "whole file", m, false)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            self.part.set_len(0).ctx("truncate", self.paths.part.display())?;
            let before = self.http.bytes;
            let (mut net, mut disk) = (None, None);
            let res = {
                let tee = Tee {
                    inner: body,
                    file: &self.part,
                    at: 0,
                    count: &mut self.http.bytes,
                    net: &mut net,
                    disk: &mut disk,
                };
                let mut r = Reader::new(tee, self.limits.clone());
                stream_checks(&mut r, self.trust.as_ref(), &self.limits, self.o.quiet)
            };
            match res {
                _ if disk.is_some() => {
                    let e = disk.unwrap_or_else(|| io::Error::other("write failed"));
                    return Err(Fail::Stop(Error::Io {
                        op: "write",
                        path: self.paths.part.display().to_string(),
                        source: e,
                    }));
                }
                Ok(h) => {
                    self.report.frames = h.manifest.frames.len();
                    self.report.frames_fetched = h.manifest.frames.len();
                    return Ok(h);
                }
                Err(_) if net.is_some() => {
                    let m = net.unwrap_or_default();
                    self.retry(&mut backoff, "whole file", m, self.http.bytes > before)?;
                }
                Err(Error::Bundle(bundle::Error::FrameHash { index, .. })) => {
                    let c = bad.entry(index as usize).or_insert(0);
                    *c += 1;
                    if *c > self.o.retries {
                        return Err(Fail::Stop(Error::BadPart(format!(
                            "frame {index} of {}: hash mismatch, still after {} re-fetches",
                            self.o.url,
                            *c - 1
                        ))));
                    }
                    self.say(format_args!(
                        "re-fetching frame {index}: hash mismatch (the whole file again: the server ignores ranges)"
                    ));
                    self.report.refetched_frames.push(index as usize);
                }
                Err(e) => return Err(Fail::Stop(e)),
            }
        }
    }

    /// Step 4: verify the whole file, then rename it into place.
    fn finish(mut self, head: Head) -> Result<Report> {
        self.report.bundle_id = head.id.to_hex();
        self.report.version = head.manifest.version;
        self.report.signers = head.signers.iter().map(|k| k.id.clone()).collect();
        self.report.bytes = self.http.bytes;
        self.report.requests = self.http.requests;
        self.report.file = self.paths.final_.display().to_string();
        if self.report.already_complete {
            let _ = std::fs::remove_file(&self.paths.state);
            let _ = std::fs::remove_file(&self.paths.part);
            return Ok(self.report);
        }
        self.part.sync_all().ctx("fsync", self.paths.part.display())?;
        self.report.size = self.part.metadata().ctx("stat", self.paths.part.display())?.len();
        if let Err(e) = verify::bundle(&self.paths.part, self.trust.as_ref(), &self.limits, true) {
            // The bytes are the ones the manifest's hashes name, yet the file does not verify (or
            // the disk changed it): nothing of it is worth resuming.
            let _ = std::fs::remove_file(&self.paths.state);
            return Err(e);
        }
        std::fs::rename(&self.paths.part, &self.paths.final_).ctx("rename", self.paths.final_.display())?;
        crate::state::fsync_dir(&self.paths.dir)?;
        match std::fs::remove_file(&self.paths.state) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e).ctx("remove", self.paths.state.display()),
            _ => {}
        }
        crate::state::fsync_dir(&self.paths.dir)?;
        Ok(self.report)
    }
}

/// The checks of [`verify::bundle`] on a stream, printing progress.
fn stream_checks<R: Read>(
    r: &mut Reader<R>,
    trust: Option<&TrustPolicy>,
    limits: &Limits,
    quiet: bool,
) -> Result<Head> {
    let h = verify::head(r, trust, limits)?;
    let n = h.manifest.frames.len();
    for (i, f) in h.manifest.frames.iter().enumerate() {
        r.check_frame(&h.manifest.frames, i)?;
        if !quiet {
            eprintln!("fetched frame {i}/{n} ({} bytes)", f.size);
        }
    }
    r.end()?;
    Ok(h)
}

/// Copies what is read to the `.part` file, and remembers a network error.
struct Tee<'a> {
    inner: Box<dyn Read + Send + Sync>,
    file: &'a File,
    at: u64,
    count: &'a mut u64,
    /// The server's connection failed.
    net: &'a mut Option<String>,
    /// Writing `.part` failed.
    disk: &'a mut Option<io::Error>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| *self.net = Some(e.to_string()))?;
        if let Err(e) = self.file.write_all_at(&buf[..n], self.at) {
            let r = io::Error::new(e.kind(), e.to_string());
            *self.disk = Some(e);
            return Err(r);
        }
        self.at += n as u64;
        *self.count += n as u64;
        Ok(n)
    }
}

fn write_atomic(tmp: &Path, dest: &Path, dir: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(tmp).ctx("create", tmp.display())?;
    f.write_all(data).ctx("write", tmp.display())?;
    f.sync_all().ctx("fsync", tmp.display())?;
    std::fs::rename(tmp, dest).ctx("rename", dest.display())?;
    crate::state::fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(file_name("http://h/a/b/v2.ferry").ok().as_deref(), Some("v2.ferry"));
        assert_eq!(file_name("https://h:8080/x%20y.ferry?sig=1#f").ok().as_deref(), Some("x y.ferry"));
        for bad in [
            "http://h/",
            "http://h",
            "http://h/a/..",
            "http://h/.",
            "http://h/a%2Fb",
            "ftp://h/x",
            "h/x",
            "http://h/%00",
        ] {
            assert!(file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 0-511/9000"), Some((0, 511, Some(9000))));
        assert_eq!(content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(content_range("bytes 6-5/10"), None);
        assert_eq!(content_range("items 0-1/2"), None);
    }

    #[test]
    fn job_checks_header_hash_padding() {
        let data = b"frame bytes".to_vec();
        let f = bundle::Frame { size: data.len() as u64, hash: Hash::from(blake3::hash(&data)), decoded: 0 };
        let mut member = container::header(&container::payload_name(3), f.size).to_vec();
        member.extend_from_slice(&data);
        member.resize(1024, 0);
        let s = Span { start: 1000, data: 1000 + BLOCK, size: f.size, end: 2024, member: Some((3, f.size)) };
        let mut j = Job::new(&s);
        for c in member.chunks(100) {
            assert_eq!(j.feed(&s, c), c.len());
        }
        assert!(j.check(&s, &f).is_ok());
        let other = Span { member: Some((4, f.size)), ..s };
        assert!(j.check(&other, &f).is_err(), "header names another member");
        // A frame in the middle of a member has neither header nor padding.
        let mid = Span { start: 1000, data: 1000, size: f.size, end: 1000 + f.size, member: None };
        let mut jm = Job::new(&mid);
        assert_eq!(jm.feed(&mid, &member[512..]), data.len());
        assert!(jm.check(&mid, &f).is_ok());
        let check = |m: &[u8]| {
            let mut j = Job::new(&s);
            j.feed(&s, m);
            j.check(&s, &f).err().map(|e| e.0)
        };
        let mut bad = member.clone();
        bad[515] ^= 1; // data
        assert_eq!(check(&bad).as_deref(), Some("hash mismatch"));
        let mut bad = member.clone();
        bad[600] ^= 1; // padding
        assert_eq!(check(&bad).as_deref(), Some("non-zero padding"));
        let mut bad = member;
        bad[130] ^= 1; // size field of the header
        assert_eq!(check(&bad).as_deref(), Some("its tar header is not the canonical one"));
    }
}
