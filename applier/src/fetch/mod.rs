//! `ferry-apply fetch URL --into DIR`: download a bundle over HTTP(S) with range requests,
//! resumably across runs and reboots, verifying as the bytes arrive (bundle-format.md, "Fetching").
//! This module orchestrates the steps below; [`http`] talks to the server (redirects, idle
//! timeout, deadline), [`retry`] decides when to try again, [`resume`] owns the files in DIR
//! and the resume state, [`frames`] assembles and checks frames.
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
//! 4. The whole file is verified again (through its open handle; the same read gives the whole
//!    file's BLAKE3, which `update` compares with the index), renamed to NAME, DIR fsynced.
//!
//! A later run re-fetches the head, compares the manifest's BLAKE3 with the one in NAME.fetch and
//! keeps the frames recorded there (after re-hashing them from NAME.part) — whatever the URL, so a
//! mirror or a URL with a fresh token resumes too; a different manifest means the URL now serves
//! another bundle, and the download starts over. A server that ignores
//! `Range` (200 instead of 206) gets the whole body streamed once through the same checks.
//!
//! The server and the network may be hostile and DIR may be writable by another local user:
//! see the module docs of [`http`] and [`resume`].

mod frames;
mod http;
mod resume;
mod retry;

use crate::error::{Ctx, Error, Result};
use crate::verify::{self, Head};
use bundle::container::{self, Reader, BLOCK, MANIFEST_NAME, MAX_SIGNATURES_BYTES};
use bundle::sig::TrustPolicy;
use bundle::{Hash, Limits};
use http::{net_error, Body, Http};
pub use http::{proxy_for, Net};
use resume::{Dir, State, STATE_VERSION};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
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
    /// Idle timeout: of a connect, and of every read or write (no byte for this long).
    pub timeout: Duration,
    /// The whole fetch, retries and waits included, gives up after this long.
    pub deadline: Duration,
    /// No progress lines on stderr.
    pub quiet: bool,
    /// `--ca-cert`: PEM files of extra trusted roots for https.
    pub ca_certs: Vec<PathBuf>,
    /// The trust policy itself, loaded by the caller (`update`: with the rotations the target's
    /// state recorded); takes precedence over `trust`.
    pub policy: Option<TrustPolicy>,
    /// The bundle id the caller expects (`update`: the index entry's); another bundle is
    /// refused as soon as its head is read, before any payload is fetched.
    pub expect_id: Option<Hash>,
}

/// `--deadline` when not given: one hour.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3600);

impl Default for Options {
    fn default() -> Self {
        Options {
            url: String::new(),
            into: PathBuf::from("."),
            trust: None,
            retries: 5,
            retry_wait: Duration::from_millis(500),
            timeout: Duration::from_secs(60),
            deadline: DEFAULT_DEADLINE,
            quiet: false,
            ca_certs: Vec::new(),
            policy: None,
            expect_id: None,
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
    /// BLAKE3 of the whole finished file (hex), from the same read that verified it: what a
    /// channel index's `blake3` is compared with.
    pub blake3: String,
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
    /// The bundle is encrypted (bundle-format.md §4.10), to `recipients` recipients: fetch
    /// verifies what is public (signatures, every stored frame's hash) and never decrypts.
    pub encrypted: bool,
    pub recipients: Option<usize>,
}

const END_MARKER: u64 = 2 * BLOCK;

/// Download `o.url` into `o.into`.
pub fn fetch(o: &Options) -> Result<Report> {
    fetch_with(o, &Net::new(&o.ca_certs)?)
}

/// [`fetch`] with the network configuration made already (`update` makes it once).
pub fn fetch_with(o: &Options, net: &Net) -> Result<Report> {
    let name = file_name(&o.url)?;
    let dir = Dir::open(&o.into, &name)?;
    let trust = match &o.policy {
        Some(p) => Some(p.clone()),
        None => o.trust.as_deref().map(|t| crate::trust::load(t, None)).transpose()?,
    };
    let trusted = trust.is_some();
    let part = dir.open_part(|m| say(o, format_args!("{m}")))?;
    match rustix::fs::flock(&part, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(Error::Locked(dir.show(&dir.part))),
        Err(e) => return Err(std::io::Error::from(e)).ctx("lock", dir.show(&dir.part)),
    }
    let mut f = Fetcher {
        o,
        trust,
        limits: Limits::default(),
        http: Http::new(&o.url, o.timeout, o.deadline, net)?,
        dir,
        part,
        state: None,
        verified: BTreeSet::new(),
        report: Report { url: o.url.clone(), trusted, range_requests: true, ..Default::default() },
        last_save: Instant::now(),
    };
    if f.trust.is_none() {
        f.say(format_args!("fetch: no --trust: signatures are checked for validity only, not against a trusted key"));
    }
    match f.download() {
        Ok(head) => f.finish(head),
        Err(e) => {
            // Keep what was verified for the next run; leave no empty file behind.
            let _ = f.save(true);
            if f.state.is_none() && f.part.metadata().map(|m| m.len() == 0).unwrap_or(false) {
                let _ = f.dir.remove_if(&f.dir.part, &f.part);
            }
            Err(f.error_of(e))
        }
    }
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
    let out = http::pct_decode(seg);
    let name = String::from_utf8(out).map_err(|_| bad("the last path segment is not UTF-8"))?;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) || name.len() > 200 {
        return Err(bad("the URL's last path segment is not usable as a file name (empty, '.', '..', or with '/')"));
    }
    Ok(name)
}

/// Why a request or a transfer stopped.
enum Fail {
    /// Worth retrying: connection refused or dropped, idle timeout, HTTP 5xx, 408 or 429.
    Net(String),
    /// The server ignored `Range` and answers with the whole file (its body).
    NoRanges(Body),
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

fn say(o: &Options, a: std::fmt::Arguments) {
    if !o.quiet {
        eprintln!("{a}");
    }
}

struct Fetcher<'a> {
    o: &'a Options,
    trust: Option<TrustPolicy>,
    limits: Limits,
    http: Http,
    dir: Dir,
    part: File,
    state: Option<State>,
    /// Frames whose bytes in `.part` are verified (recorded in `state` at the next save).
    verified: BTreeSet<usize>,
    report: Report,
    last_save: Instant,
}

impl Fetcher<'_> {
    fn say(&self, a: std::fmt::Arguments) {
        say(self.o, a)
    }

    fn error_of(&self, f: Fail) -> Error {
        match f {
            Fail::Stop(e) => e,
            Fail::Net(m) => net_error(&self.o.url, m),
            Fail::Changed(m) => net_error(&self.o.url, format!("the file keeps changing on the server ({m})")),
            Fail::NoRanges(_) => net_error(&self.o.url, "the server stopped honouring range requests".into()),
        }
    }

    /// Steps 1 to 3, in range mode or streamed, starting over (twice at most) if the file
    /// changes on the server.
    fn download(&mut self) -> Result<Head, Fail> {
        let mut restarts = 0;
        loop {
            let r = match self.ranges() {
                Err(Fail::NoRanges(body)) => {
                    self.say(format_args!(
                        "fetch: the server ignores range requests; streaming the whole bundle (no resumption)"
                    ));
                    self.report.range_requests = false;
                    self.stream(Some(body))
                }
                r => r,
            };
            match r {
                Err(Fail::Changed(why)) if restarts < 2 => {
                    restarts += 1;
                    self.say(format_args!("fetch: {} changed during the download ({why}); starting over", self.o.url));
                    self.state = None;
                    self.http.total = None;
                    self.report.refetched_frames.clear();
                    self.report.resumed_from_bytes = 0;
                    self.report.frames_fetched = 0;
                }
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
                    if let Some(want) = self.o.expect_id.filter(|w| *w != h.id) {
                        return Err(Fail::Stop(Error::BadPart(format!(
                            "{}: bundle id {} is not the {want} the index names for it (mix-and-match)",
                            self.o.url, h.id
                        ))));
                    }
                    let n = (r.offset() as usize).min(raw.len());
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
        if self.already_have(&raw) {
            self.report.already_complete = true;
            return Ok(head);
        }
        self.resume_or_start(&head, &raw, &spans, size)?;
        self.frames(&spans, &m.frames)?;
        self.end_marker(end_start)?;
        Ok(head)
    }

    /// Keep the frames an interrupted run verified if it fetched this very bundle; else start
    /// `.part` over. Then write the head and record the new state.
    fn resume_or_start(&mut self, head: &Head, raw: &[u8], spans: &[container::Span], size: u64) -> Result<(), Fail> {
        let fresh = State {
            ferry_fetch: STATE_VERSION,
            url: self.o.url.clone(),
            total: size,
            manifest_len: head.manifest_bytes.len() as u64,
            signatures_len: head.sig_bytes.len() as u64,
            manifest_blake3: head.id.to_hex(),
            verified_frames: Vec::new(),
        };
        let old = match self.state.take() {
            Some(s) => Some(s),
            None => self.load_state(),
        };
        self.verified.clear();
        let part = self.dir.show(&self.dir.part);
        match old {
            // The same bundle (same manifest, so the same frames), from this URL or another one
            // (a mirror, a URL with a fresh token).
            Some(old) if State { verified_frames: Vec::new(), url: fresh.url.clone(), ..old.clone() } == fresh => {
                self.verified = self.recheck(&old.verified_frames, spans, &head.manifest.frames);
                let bytes: u64 = self.verified.iter().map(|&i| spans[i].end - spans[i].start).sum();
                self.report.resumed_from_bytes = bytes;
                self.say(format_args!(
                    "fetch: resuming: {} of {} frames ({bytes} bytes) already fetched and verified",
                    self.verified.len(),
                    spans.len()
                ));
            }
            Some(old) => {
                self.say(format_args!(
                    "fetch: {} serves a different bundle than the interrupted download (from {}); starting over",
                    self.o.url,
                    http::shown(&old.url)
                ));
                self.part.set_len(0).ctx("truncate", &part)?;
            }
            None => self.part.set_len(0).ctx("truncate", &part)?,
        }
        self.write_at(raw, 0)?;
        self.part.set_len(size).ctx("extend", &part)?;
        self.state = Some(fresh);
        self.save(true)?;
        Ok(())
    }

    /// DIR/NAME already is this bundle, complete and verified (and a safe file of ours).
    fn already_have(&mut self, raw: &[u8]) -> bool {
        let Ok(Ok(Some(f))) = self.dir.open_existing(&self.dir.final_, false) else { return false };
        let mut have = vec![0u8; raw.len()];
        let same = f.read_exact_at(&mut have, 0).is_ok() && have == raw;
        if !same {
            return false;
        }
        let Ok((_, whole)) = frames::verify_file(&f, self.trust.as_ref(), &self.limits) else { return false };
        self.report.blake3 = whole.to_hex();
        self.say(format_args!("fetch: {} already holds this bundle, verified", self.dir.show(&self.dir.final_)));
        true
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

    /// Step 4: verify the whole file through its handle, then rename it into place.
    fn finish(mut self, head: Head) -> Result<Report> {
        self.report.bundle_id = head.id.to_hex();
        self.report.version = head.manifest.version;
        self.report.signers = head.signers.iter().map(|k| k.id.clone()).collect();
        self.report.recipients = crate::unseal::recipients(&head);
        self.report.encrypted = self.report.recipients.is_some();
        self.report.bytes = self.http.bytes;
        self.report.requests = self.http.requests;
        self.report.file = self.dir.show(&self.dir.final_);
        let d = &self.dir;
        if self.report.already_complete {
            let _ = d.remove(&d.state);
            let _ = d.remove_if(&d.part, &self.part);
            return Ok(self.report);
        }
        self.part.sync_all().ctx("fsync", d.show(&d.part))?;
        self.report.size = self.part.metadata().ctx("stat", d.show(&d.part))?.len();
        match frames::verify_file(&self.part, self.trust.as_ref(), &self.limits) {
            Ok((_, whole)) => self.report.blake3 = whole.to_hex(),
            Err(e) => {
                // The bytes are the ones the manifest's hashes name, yet the file does not verify
                // (or the disk changed it): nothing of it is worth resuming.
                let _ = d.remove(&d.state);
                return Err(e);
            }
        }
        d.rename_checked(&d.part, &d.final_, &self.part)?;
        d.remove(&d.state).ctx("remove", d.show(&d.state))?;
        d.fsync()?;
        Ok(self.report)
    }
}

/// GET a small file (a channel index) whole into memory: at most `max` bytes (more is an
/// error), through the same client as [`fetch`] (idle timeout, deadline, http(s)-only bounded
/// redirects, `--ca-cert`, proxy), retrying network failures as it does. Returns the bytes;
/// their count is what crossed the network.
pub fn get_small(o: &Options, net: &Net, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut http = Http::new(&o.url, o.timeout, o.deadline, net)?;
    let mut fails = 0u32;
    loop {
        let r = http.call("GET", None).and_then(|(_, body)| {
            let mut out = Vec::new();
            let mut limited = body.take(max + 1);
            limited.read_to_end(&mut out).map_err(|e| Fail::Net(format!("{e} (after {} bytes)", out.len())))?;
            Ok(out)
        });
        match r {
            Ok(v) if v.len() as u64 > max => {
                return Err(Error::BadPart(format!("{}: more than {max} bytes, over the limit", o.url)))
            }
            Ok(v) => return Ok(v),
            Err(Fail::Net(m)) => {
                fails += 1;
                if fails > o.retries || http.expired().is_some() {
                    return Err(net_error(&o.url, format!("{m}; gave up after {fails} failed attempts")));
                }
                let wait = o.retry_wait.saturating_mul(1 << (fails - 1).min(16)).min(retry::MAX_WAIT);
                let wait = wait.min(http.deadline.saturating_duration_since(Instant::now()));
                say(o, format_args!("update: network error ({}): {m}; retrying in {} ms", o.url, wait.as_millis()));
                std::thread::sleep(wait);
            }
            Err(Fail::Stop(e)) => return Err(e),
            Err(Fail::Changed(m)) => return Err(net_error(&o.url, m)),
            Err(Fail::NoRanges(_)) => return Err(net_error(&o.url, "unexpected answer".into())),
        }
    }
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
}
