//! The HTTP client of `fetch`, hardened against a hostile server or network.
//!
//! It exists so that everything a server can say passes through one place that turns it into
//! data or an error, never a panic or an unbounded wait:
//!
//! - **Redirects are followed here, not by ureq** (ureq panics on a redirect to a `data:` or
//!   `file:` URL): `Location` is resolved against the current URL, only `http` and `https` are
//!   followed, at most [`MAX_REDIRECTS`] hops; anything else is a refusal (exit 6).
//! - **Two clocks**: `--timeout` is the idle timeout of every connect and read (ureq's socket
//!   timeouts); `--deadline` bounds the whole fetch, retries included. A server that drips one
//!   byte at a time never trips an idle timeout, so each request runs on its own thread that
//!   hands the answer and the body over in bounded chunks, and the caller waits for each chunk
//!   at most until the deadline. A thread left behind stops at its next chunk (nobody takes it)
//!   or at its next idle timeout.
//! - **Bounded answers**: headers are bounded by ureq (100 fields of 100 KiB); a body is read
//!   only as far as the caller asked for; Content-Range and Content-Length are checked, never
//!   trusted for an allocation.

use super::Fail;
use crate::error::Error;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;
/// Bytes handed over from a request's thread at a time.
const CHUNK: usize = 64 << 10;
/// Chunks buffered between a request's thread and the reader.
const QUEUE: usize = 4;

pub fn net_error(url: &str, why: String) -> Error {
    Error::Io { op: "fetch (network error)", path: url.to_string(), source: io::Error::other(why) }
}

/// A server-supplied string fit for an error message: bounded, no control characters.
pub fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(200).map(|c| if c.is_control() { '?' } else { c }).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// Parse `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`).
pub fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (a <= b).then_some((a, b, total))
}

/// Resolve a redirect's `Location` against the URL that answered it: only http(s) is followed.
pub fn redirect_target(from: &str, location: &str) -> Result<String, String> {
    let base = url::Url::parse(from).map_err(|e| format!("{}: {e}", shown(from)))?;
    let to = base.join(location.trim()).map_err(|e| format!("a redirect to {:?}: {e}", shown(location)))?;
    match to.scheme() {
        "http" | "https" if to.host_str().is_some_and(|h| !h.is_empty()) => Ok(to.to_string()),
        s => Err(format!(
            "refusing to follow a redirect to {:?} ({s}:): only http:// and https:// URLs are followed",
            shown(location)
        )),
    }
}

/// What the server answered, before the body.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub status: u16,
    pub text: String,
    pub content_range: Option<String>,
    pub content_length: Option<String>,
    pub location: Option<String>,
}

impl Answer {
    fn of(r: &ureq::Response) -> Answer {
        let h = |n: &str| r.header(n).map(str::to_string);
        Answer {
            status: r.status(),
            text: shown(r.status_text()),
            content_range: h("Content-Range"),
            content_length: h("Content-Length"),
            location: h("Location"),
        }
    }
}

enum Msg {
    Answer(Result<Answer, String>),
    Data(io::Result<Vec<u8>>),
}

/// A response body arriving from its request's thread; every wait ends at the deadline.
pub struct Body {
    rx: Receiver<Msg>,
    buf: Vec<u8>,
    pos: usize,
    deadline: Instant,
    /// For the message when the deadline passes.
    deadline_secs: u64,
}

fn past_deadline(secs: u64) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("the deadline of the fetch (--deadline {secs}) passed"))
}

impl Body {
    fn recv(&self) -> Result<Msg, io::Error> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err(past_deadline(self.deadline_secs)),
            Err(RecvTimeoutError::Disconnected) => Ok(Msg::Data(Ok(Vec::new()))),
        }
    }
}

impl Read for Body {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.buf.len() {
            if Instant::now() >= self.deadline {
                return Err(past_deadline(self.deadline_secs));
            }
            match self.recv()? {
                Msg::Data(Ok(v)) if v.is_empty() => return Ok(0),
                Msg::Data(Ok(v)) => (self.buf, self.pos) = (v, 0),
                Msg::Data(Err(e)) => return Err(e),
                Msg::Answer(_) => return Err(io::Error::other("a second answer in one response")),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The request's thread: make the request, hand over the answer, then the body of a 2xx answer.
fn run(req: ureq::Request, tx: SyncSender<Msg>) {
    let r = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => {
            let _ = tx.send(Msg::Answer(Ok(Answer::of(&r))));
            return;
        }
        Err(ureq::Error::Transport(t)) => {
            let mut m = t.kind().to_string();
            if let Some(x) = t.message() {
                m = format!("{m}: {}", shown(x));
            }
            if let Some(x) = std::error::Error::source(&t) {
                m = format!("{m}: {x}");
            }
            let _ = tx.send(Msg::Answer(Err(m)));
            return;
        }
    };
    let ok = (200..300).contains(&r.status());
    if tx.send(Msg::Answer(Ok(Answer::of(&r)))).is_err() || !ok {
        return;
    }
    let mut body = r.into_reader();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let m = match body.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
        let stop = m.is_err();
        if tx.send(Msg::Data(m)).is_err() || stop {
            return;
        }
    }
}

pub struct Http {
    /// The client for the proxy (or none) of the last URL asked for, with that proxy's
    /// `Proxy-Authorization` value for plain-http requests: chosen again for each URL, so a
    /// redirect to another scheme or host gets the proxy (or the `no_proxy` exemption) the
    /// environment names for it.
    agent: Option<(Option<String>, ureq::Agent, Option<String>)>,
    idle: Duration,
    net: Net,
    pub url: String,
    /// Body bytes received.
    pub bytes: u64,
    pub requests: u64,
    /// The file's length, from the first Content-Range that gave one.
    pub total: Option<u64>,
    pub deadline: Instant,
    pub deadline_secs: u64,
}

/// How to reach servers: extra trusted roots for https (`--ca-cert`), and the proxy the
/// environment names.
#[derive(Clone, Default)]
pub struct Net {
    /// `None`: ureq's default (the webpki roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Net {{ extra roots: {} }}", self.tls.is_some())
    }
}

impl Net {
    /// The webpki roots plus every certificate of the PEM files `ca_certs` (`--ca-cert`,
    /// repeatable). No file: ureq's defaults.
    pub fn new(ca_certs: &[PathBuf]) -> Result<Net, Error> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        if ca_certs.is_empty() {
            return Ok(Net::default());
        }
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        for p in ca_certs {
            let bad = |why: String| Error::Usage(format!("--ca-cert {}: {why}", p.display()));
            let mut n = 0;
            for c in CertificateDer::pem_file_iter(p).map_err(|e| bad(e.to_string()))? {
                let c = c.map_err(|e| bad(e.to_string()))?;
                roots.add(c).map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
                n += 1;
            }
            if n == 0 {
                return Err(bad("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS configuration: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Net { tls: Some(Arc::new(config)) })
    }
}

/// The proxy the environment names for `url`, curl's way: `https_proxy` / `HTTPS_PROXY` for
/// https, `http_proxy` for http (not `HTTP_PROXY`: a CGI environment sets it from a request
/// header), `all_proxy` / `ALL_PROXY` otherwise; none if `no_proxy` / `NO_PROXY` (a
/// comma-separated list of host names, domain suffixes, `*`) covers the host. Only `http://`
/// proxies work (ureq 2 speaks plain HTTP to a proxy, CONNECT for https).
pub fn proxy_for(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let get = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.trim().is_empty()));
    if let Some(np) = get(&["no_proxy", "NO_PROXY"]) {
        if np.trim() == "*" {
            return None;
        }
        for pat in np.split(',').map(|p| p.trim().to_ascii_lowercase()) {
            let pat = pat.trim_start_matches('*').trim_start_matches('.');
            if !pat.is_empty() && (host == pat || host.ends_with(&format!(".{pat}"))) {
                return None;
            }
        }
    }
    let own = match u.scheme() {
        "https" => get(&["https_proxy", "HTTPS_PROXY"]),
        "http" => get(&["http_proxy"]),
        _ => None,
    };
    own.or_else(|| get(&["all_proxy", "ALL_PROXY"]))
}

/// Percent-decode `s` (`%XY` escapes; a `%` not followed by two hex digits stays as is).
pub fn pct_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
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
    out
}

/// Standard base64 with padding (RFC 4648 §4), for a `Basic` credential.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            out.push(if k <= c.len() { A[(n >> (18 - 6 * k) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// A proxy URL from the environment as ureq 2 needs it, and the `Proxy-Authorization` value
/// for plain-http requests through it (ureq sends one only with CONNECT). curl's way: no
/// scheme means `http://`; user and password are percent-decoded (`%40` is `@`).
pub fn proxy_setting(p: &str) -> Result<(String, Option<String>), String> {
    let full = if p.contains("://") { p.trim().to_string() } else { format!("http://{}", p.trim()) };
    let u = url::Url::parse(&full).map_err(|e| format!("not a URL: {e}"))?;
    if u.scheme() != "http" {
        return Err(format!(
            "{}:// proxies are not supported (only http://; https URLs go through it with CONNECT)",
            u.scheme()
        ));
    }
    let host = match u.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(_)) => return Err("an IPv6 address as the proxy's host is not supported".into()),
        None => return Err("no host".into()),
    };
    let port = u.port().unwrap_or(80);
    if u.username().is_empty() && u.password().is_none() {
        return Ok((format!("http://{host}:{port}"), None));
    }
    let utf8 = |s: &str| String::from_utf8(pct_decode(s)).map_err(|_| "its user or password is not UTF-8".to_string());
    let (user, pass) = (utf8(u.username())?, utf8(u.password().unwrap_or(""))?);
    if user.contains(':') || user.chars().chain(pass.chars()).any(char::is_control) {
        return Err("its user name holds a ':' or a control character".into());
    }
    let auth = format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()));
    Ok((format!("http://{user}:{pass}@{host}:{port}"), Some(auth)))
}

impl Http {
    pub fn new(url: &str, idle: Duration, deadline: Duration, net: &Net) -> Result<Http, Error> {
        let mut http = Http {
            agent: None,
            idle,
            net: net.clone(),
            url: url.to_string(),
            bytes: 0,
            requests: 0,
            total: None,
            deadline: Instant::now() + deadline,
            deadline_secs: deadline.as_secs(),
        };
        // A bad proxy setting is a usage error before anything is sent.
        http.agent_for(url)?;
        Ok(http)
    }

    /// The client for `url`: through the proxy the environment names for it, if any; and the
    /// `Proxy-Authorization` value to send with a plain-http request.
    fn agent_for(&mut self, url: &str) -> Result<(ureq::Agent, Option<String>), Error> {
        let proxy = proxy_for(url, &|n| std::env::var(n).ok());
        if let Some((p, agent, auth)) = &self.agent {
            if *p == proxy {
                return Ok((agent.clone(), auth.clone()));
            }
        }
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(self.idle)
            .timeout_read(self.idle)
            .timeout_write(self.idle)
            .redirects(0)
            .try_proxy_from_env(false)
            .user_agent(concat!("ferry-apply/", env!("CARGO_PKG_VERSION")));
        if let Some(t) = &self.net.tls {
            b = b.tls_config(t.clone());
        }
        let mut auth = None;
        if let Some(p) = &proxy {
            // Never show the password: the proxy's host only.
            let at = url::Url::parse(p).or_else(|_| url::Url::parse(&format!("http://{p}")));
            let at = at.ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
            let bad = |e: String| Error::Usage(format!("the proxy (at {}) from the environment: {e}", shown(&at)));
            let (spec, a) = proxy_setting(p).map_err(bad)?;
            b = b.proxy(ureq::Proxy::new(&spec).map_err(|e| bad(e.to_string()))?);
            auth = a;
        }
        let agent = b.build();
        self.agent = Some((proxy, agent.clone(), auth.clone()));
        Ok((agent, auth))
    }

    /// The deadline has passed: the error to stop with.
    pub fn expired(&self) -> Option<Fail> {
        (Instant::now() >= self.deadline).then(|| {
            Fail::Stop(net_error(
                &self.url,
                format!("gave up: the deadline of the fetch (--deadline {}) passed", self.deadline_secs),
            ))
        })
    }

    /// One request to `url` (no redirect followed): the answer and its body.
    fn once(&mut self, method: &str, url: &str, range: Option<(u64, u64)>) -> Result<(Answer, Body), Fail> {
        if let Some(f) = self.expired() {
            return Err(f);
        }
        self.requests += 1;
        let (agent, auth) = self.agent_for(url)?;
        let mut req = agent.request(method, url);
        if let Some(a) = auth.filter(|_| url.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://"))) {
            req = req.set("Proxy-Authorization", &a);
        }
        if let Some((a, b)) = range {
            req = req.set("Range", &format!("bytes={a}-{}", b.saturating_sub(1)));
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("ferry-fetch-http".into())
            .spawn(move || run(req, tx))
            .map_err(|e| Fail::Stop(net_error(url, format!("cannot start the request's thread: {e}"))))?;
        let body = Body { rx, buf: Vec::new(), pos: 0, deadline: self.deadline, deadline_secs: self.deadline_secs };
        match body.recv() {
            Ok(Msg::Answer(Ok(a))) => Ok((a, body)),
            Ok(Msg::Answer(Err(m))) => Err(Fail::Net(m)),
            Ok(Msg::Data(_)) => Err(Fail::Net("the connection closed without an answer".into())),
            Err(e) => Err(Fail::Net(e.to_string())),
        }
    }

    /// A request, following up to [`MAX_REDIRECTS`] http(s) redirects; a 2xx or 3xx-free answer.
    pub fn call(&mut self, method: &str, range: Option<(u64, u64)>) -> Result<(Answer, Body), Fail> {
        let mut url = self.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let (a, body) = self.once(method, &url, range)?;
            if !matches!(a.status, 301 | 302 | 303 | 307 | 308) {
                return self.judge(a, body, range);
            }
            let Some(loc) = &a.location else {
                return Err(Fail::Stop(net_error(&self.url, format!("HTTP {} without a Location", a.status))));
            };
            url = redirect_target(&url, loc).map_err(|m| Fail::Stop(net_error(&self.url, m)))?;
        }
        Err(Fail::Stop(net_error(&self.url, format!("more than {MAX_REDIRECTS} redirects"))))
    }

    /// Sort an answer: 2xx goes to the caller, the rest becomes the error it means.
    fn judge(&mut self, a: Answer, body: Body, range: Option<(u64, u64)>) -> Result<(Answer, Body), Fail> {
        match a.status {
            200..=299 => Ok((a, body)),
            416 => {
                let at = range.map(|r| r.0).unwrap_or(0);
                let cr = a.content_range.as_deref().unwrap_or("");
                if let Some(t) = cr.strip_prefix("bytes */").and_then(|t| t.trim().parse::<u64>().ok()) {
                    self.see_total(Some(t))?;
                }
                Err(Fail::Stop(Error::BadPart(format!(
                    "{}: the server has no bytes from offset {at} on ({}): the file is shorter than the bundle it starts",
                    self.url,
                    shown(cr)
                ))))
            }
            c if c >= 500 || c == 408 || c == 429 => Err(Fail::Net(format!("HTTP {c} {}", a.text))),
            // Not there (and not coming back): an `io::ErrorKind::NotFound`, so that `update`
            // can tell a bundle missing from the repository from other failures.
            c @ (404 | 410) => Err(Fail::Stop(Error::Io {
                op: "fetch (network error)",
                path: self.url.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, format!("HTTP {c} {}", a.text)),
            })),
            c if c >= 400 => Err(Fail::Stop(net_error(&self.url, format!("HTTP {c} {}", a.text)))),
            c => Err(Fail::Net(format!("unexpected HTTP {c} {}", a.text))),
        }
    }

    pub fn see_total(&mut self, t: Option<u64>) -> Result<(), Fail> {
        match (self.total, t) {
            (None, Some(t)) => self.total = Some(t),
            (Some(a), Some(b)) if a != b => {
                return Err(Fail::Changed(format!("its length went from {a} to {b} bytes")))
            }
            _ => {}
        }
        Ok(())
    }

    /// GET bytes `a..b` (`a < b`): the body and the range it holds (a prefix of `a..b`, at least
    /// one byte).
    pub fn range(&mut self, a: u64, b: u64) -> Result<(Body, u64), Fail> {
        let (r, body) = self.call("GET", Some((a, b)))?;
        match r.status {
            206 => {
                let cr = r.content_range.as_deref().unwrap_or("");
                let (s, e, total) = content_range(cr)
                    .ok_or_else(|| Fail::Net(format!("206 with a bad Content-Range {:?}", shown(cr))))?;
                self.see_total(total)?;
                if s != a {
                    return Err(Fail::Net(format!("asked for bytes {a}-{}, the server sent {}", b - 1, shown(cr))));
                }
                Ok((body, (e - s).saturating_add(1).min(b - a)))
            }
            200 => Err(Fail::NoRanges(body)),
            c => Err(Fail::Net(format!("unexpected HTTP {c} {}", r.text))),
        }
    }

    /// GET bytes `a..b` into memory (fewer if the file ends first). Callers bound `b - a`.
    pub fn range_vec(&mut self, a: u64, b: u64) -> Result<Vec<u8>, Fail> {
        let mut out = Vec::new();
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
    pub fn head_len(&mut self) -> Result<u64, Fail> {
        let (r, _) = self.call("HEAD", None)?;
        r.content_length.and_then(|v| v.trim().parse().ok()).ok_or_else(|| {
            Fail::Stop(net_error(
                &self.url,
                "the server gives no length for the file (no Content-Range total, no Content-Length)".into(),
            ))
        })
    }
}

/// Fill `buf` from `body`; a short body or a read error is a network failure.
pub fn read_full(body: &mut dyn Read, buf: &mut [u8], count: &mut u64) -> Result<(), Fail> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 0-511/9000"), Some((0, 511, Some(9000))));
        assert_eq!(content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(content_range("bytes 6-5/10"), None);
        assert_eq!(content_range("items 0-1/2"), None);
        assert_eq!(content_range("bytes 0-99999999999999999999/1"), None);
    }

    #[test]
    fn redirects() {
        let ok = |from: &str, loc: &str| redirect_target(from, loc).ok();
        assert_eq!(ok("http://h/r/a.ferry", "../b/a.ferry").as_deref(), Some("http://h/b/a.ferry"));
        assert_eq!(ok("http://h/r/a.ferry", "/x/a.ferry").as_deref(), Some("http://h/x/a.ferry"));
        assert_eq!(ok("http://h/a", "https://m:8443/a?t=1").as_deref(), Some("https://m:8443/a?t=1"));
        for bad in ["file:///etc/passwd", "data:text/plain,hello", "ftp://h/x", "javascript:x", "http://"] {
            let e = redirect_target("http://h/a", bad);
            assert!(e.is_err(), "{bad}: {e:?}");
        }
        assert!(redirect_target("http://h/a", "file:///etc/passwd").is_err_and(|m| m.contains("only http")));
    }

    #[test]
    fn proxies_from_the_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())
        };
        let e = env(&[("https_proxy", "http://p:3128"), ("http_proxy", "http://q:8080"), ("no_proxy", "local,.lan")]);
        assert_eq!(proxy_for("https://h.example/x", &e).as_deref(), Some("http://p:3128"));
        assert_eq!(proxy_for("http://h.example/x", &e).as_deref(), Some("http://q:8080"));
        assert_eq!(proxy_for("http://local/x", &e), None);
        assert_eq!(proxy_for("http://a.b.lan/x", &e), None);
        assert_eq!(proxy_for("http://blan/x", &e).as_deref(), Some("http://q:8080"));
        // HTTP_PROXY (upper case) is not used: a CGI environment sets it from a header.
        let e = env(&[("HTTP_PROXY", "http://evil:1")]);
        assert_eq!(proxy_for("http://h/x", &e), None);
        let e = env(&[("ALL_PROXY", "http://p:1"), ("NO_PROXY", "*")]);
        assert_eq!(proxy_for("http://h/x", &e), None);
        let e = env(&[("ALL_PROXY", "http://p:1")]);
        assert_eq!(proxy_for("https://h/x", &e).as_deref(), Some("http://p:1"));
    }

    #[test]
    fn proxy_settings() {
        assert_eq!(proxy_setting("http://p:3128/"), Ok(("http://p:3128".into(), None)));
        assert_eq!(proxy_setting("10.0.0.1:8080"), Ok(("http://10.0.0.1:8080".into(), None)));
        assert_eq!(proxy_setting("http://p"), Ok(("http://p:80".into(), None)));
        // RFC 7617's example: Aladdin / open sesame; percent-decoded first, as curl does.
        let (spec, auth) = proxy_setting("http://Aladdin:open%20sesame@p:3128").expect("with credentials");
        assert_eq!(spec, "http://Aladdin:open sesame@p:3128");
        assert_eq!(auth.as_deref(), Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="));
        let (spec, _) = proxy_setting("http://u:p%40ss%3Aw@p:1").expect("@ and : in the password");
        assert_eq!(spec, "http://u:p@ss:w@p:1");
        for bad in ["https://p:3128", "socks5://p:1080", "http://[::1]:3128", "http://a%3Ab:c@p:1", "http://"] {
            assert!(proxy_setting(bad).is_err(), "{bad}");
        }
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn shown_is_bounded_and_printable() {
        assert_eq!(shown("a\r\nb"), "a??b");
        assert_eq!(shown(&"x".repeat(1000)).chars().count(), 201);
    }
}
