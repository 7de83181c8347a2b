//! `ferry-apply fetch` against a tiny HTTP/1.1 server run by the test (127.0.0.1 only), with
//! fault injection: connections cut after N body bytes, a flipped byte in one response, a server
//! that stops answering, one that ignores Range, one whose file is corrupt, one whose bundle
//! changes between runs; and hostile servers (redirects to other schemes, dripping bytes,
//! malformed answers) and a download directory with planted symlinks, hard links and FIFOs.

use bundle::container::{layout, Reader, MAX_SIGNATURES_BYTES};
use bundle::{Limits, Manifest};
use ferry_tests::*;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the server does wrong.
#[derive(Clone, Debug, Default)]
struct Faults {
    /// Close the connection after this many body bytes, for the first `cut_count` responses
    /// whose body is longer than that.
    cut_after: u64,
    cut_count: usize,
    /// Flip the byte at this offset of the file in the first response that delivers it.
    flip_once: Option<u64>,
    /// Flip the byte at this offset in every response (the file on the server is corrupt).
    flip_always: Option<u64>,
    /// After this many body bytes in all, close every connection without answering.
    budget: Option<u64>,
    /// Ignore Range: 200 with the whole file.
    no_ranges: bool,
    /// Answer requests for `/r/...` with `302 Found` and this `Location`.
    redirect: Option<String>,
}

#[derive(Debug, Default)]
struct Log {
    /// (method, requested range [a, b) or None) of every request.
    requests: Vec<(String, Option<(u64, u64)>)>,
    /// Body bytes written.
    served: u64,
    flipped: bool,
    cuts: usize,
}

struct Server {
    url_base: String,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve `file` as `/b/NAME` on a free port.
    fn start(file: Vec<u8>, faults: Faults) -> Server {
        Server::start_at("127.0.0.1:0", file, faults)
    }

    /// Serve on `addr` (the address of a stopped server: the same URL again).
    fn start_at(addr: &str, file: Vec<u8>, faults: Faults) -> Server {
        // A port just released can be taken for a moment by an outgoing connection of a test
        // running in parallel (it is free in the ephemeral range): retry for a while.
        let mut tries = 0;
        let l = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let addr = l.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most this many connections, and the test stops the loop when done.
            for _ in 0..10_000 {
                let Ok((s, _)) = l.accept() else { break };
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let _ = handle(s, &file, &faults, &log2);
            }
        });
        Server { url_base: format!("http://{addr}"), log, stop, thread: Some(thread) }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/b/{name}", self.url_base)
    }

    fn served(&self) -> u64 {
        self.log.lock().expect("log").served
    }

    fn requests(&self) -> Vec<(String, Option<(u64, u64)>)> {
        self.log.lock().expect("log").requests.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url_base.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(mut s: TcpStream, file: &[u8], f: &Faults, log: &Mutex<Log>) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = Vec::new();
    let mut b = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 << 10 {
        let n = s.read(&mut b)?;
        if n == 0 {
            return Ok(());
        }
        req.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&req).into_owned();
    let method = text.split_whitespace().next().unwrap_or("").to_string();
    if let Some(loc) = &f.redirect {
        if text.split_whitespace().nth(1).is_some_and(|p| p.starts_with("/r/")) {
            log.lock().expect("log").requests.push((method, None));
            let h = format!("HTTP/1.1 302 Found\r\nLocation: {loc}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return s.write_all(h.as_bytes());
        }
    }
    let len = file.len() as u64;
    let range = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if !k.trim().eq_ignore_ascii_case("range") {
            return None;
        }
        let (a, b) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
        let a: u64 = a.parse().ok()?;
        let b: u64 = if b.is_empty() { u64::MAX - 1 } else { b.parse().ok()? };
        Some((a, b.saturating_add(1)))
    });
    let mut g = log.lock().expect("log");
    g.requests.push((method.clone(), range));
    if f.budget.is_some_and(|b| g.served >= b) {
        return Ok(()); // stopped answering: close at once
    }
    let (head, start, end) = match range {
        Some((a, _)) if !f.no_ranges && a >= len => {
            let h = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            s.write_all(h.as_bytes())?;
            return Ok(());
        }
        Some((a, b)) if !f.no_ranges => {
            let b = b.min(len);
            let h = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b - 1,
                b - a
            );
            (h, a, b)
        }
        _ => (
            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: none\r\nConnection: close\r\n\r\n"),
            0,
            len,
        ),
    };
    s.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }
    let mut deliver = end - start;
    if g.cuts < f.cut_count && deliver > f.cut_after {
        g.cuts += 1;
        deliver = f.cut_after;
    }
    if let Some(b) = f.budget {
        deliver = deliver.min(b - g.served);
    }
    let mut body = file[start as usize..(start + deliver) as usize].to_vec();
    for (at, once) in [(f.flip_once, true), (f.flip_always, false)] {
        if let Some(at) = at {
            if (start..start + deliver).contains(&at) && !(once && g.flipped) {
                body[(at - start) as usize] ^= 0x20;
                g.flipped |= once;
            }
        }
    }
    g.served += deliver;
    drop(g);
    s.write_all(&body)?;
    s.flush()
}

struct Fx {
    _tmp: tempfile::TempDir,
    d: PathBuf,
    secret: PathBuf,
    public: PathBuf,
    bundle: Vec<u8>,
}

/// A full bundle of a random tree plus a few 100 KiB incompressible files (several frames).
fn fixture(seed: u64, version: u64) -> Fx {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path().to_path_buf();
    let tree = d.join("tree");
    gen_tree(&tree, seed);
    for i in 0..4 {
        fs::write(tree.join(format!("noise{i}.bin")), noise(150_000, seed * 31 + i)).expect("write");
    }
    let (secret, public) = keygen(&d, "k");
    let b = d.join("v.ferry");
    // One frame per file (no solid frames of small files), so there are several frames.
    build(None, &tree, &secret, version, &b, &["--solid-size", "0"]);
    let bundle = fs::read(&b).expect("read bundle");
    Fx { _tmp: tmp, d, secret, public, bundle }
}

/// Each frame's byte range in the bundle ([`bundle::container::Span`] start..end: with its payload
/// member's header if it starts one, with the padding if it ends one), from the bundle itself.
fn frame_spans(bundle: &[u8]) -> Vec<(u64, u64)> {
    let mut r = Reader::new(bundle, Limits::default());
    let (mb, sb) = r.head().expect("head");
    let m = Manifest::decode(&mb, &Limits::default()).expect("manifest");
    layout(mb.len() as u64, sb.len() as u64, &m.frames).iter().map(|s| (s.start, s.end)).collect()
}

fn fetch(url: &str, into: &Path, trust: Option<&Path>, extra: &[&str]) -> Output {
    let mut c = apply_cmd();
    c.arg("fetch")
        .arg(url)
        .arg("--into")
        .arg(into)
        .args(["--json", "--retry-wait-ms", "10", "--timeout", "10"])
        .args(extra);
    if let Some(t) = trust {
        c.arg("--trust").arg(t);
    }
    c.output().expect("spawn ferry-apply fetch")
}

fn json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {out}\nstderr: {}", String::from_utf8_lossy(&o.stderr)))
}

fn expect_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn verify(file: &Path, public: &Path) {
    run_expect(apply_cmd().arg("verify").arg(file).arg("--trust").arg(public), 0);
}

#[test]
fn dropped_connections_and_a_corrupt_range_refetch_only_that_frame() {
    let fx = fixture(7, 1);
    let spans = frame_spans(&fx.bundle);
    assert!(spans.len() >= 4, "want several frames, got {}", spans.len());
    // The corrupted frame lies beyond the head request (which reads up to MAX_SIGNATURES_BYTES
    // past the manifest, so it may already hold the first small frames).
    let k = (1..spans.len())
        .find(|&i| spans[i].0 >= spans[0].0 + MAX_SIGNATURES_BYTES + 512)
        .expect("a frame beyond the head request");
    let f1 = spans[k];
    let faults = Faults { cut_after: 100_000, cut_count: 2, flip_once: Some((f1.0 + f1.1) / 2), ..Default::default() };
    let srv = Server::start(fx.bundle.clone(), faults);
    let into = fx.d.join("dl");
    let o = fetch(&srv.url("v.ferry"), &into, Some(&fx.public), &[]);
    expect_code(&o, 0);
    let j = json(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(j["command"], "fetch");
    assert_eq!(j["exit_code"], 0);
    assert_eq!(j["refetched_frames"], serde_json::json!([k]), "{j}\n{err}");
    assert!(err.contains(&format!("re-fetching frame {k}: hash mismatch")), "{err}");
    assert!(err.contains(&format!("fetched frame 0/{}", spans.len())), "{err}");
    assert_eq!(j["size"], fx.bundle.len() as u64);
    assert_eq!(j["frames"], spans.len() as u64);

    let got = into.join("v.ferry");
    assert!(fs::read(&got).expect("fetched file") == fx.bundle, "fetched bytes differ from the bundle");
    assert!(!into.join("v.ferry.part").exists() && !into.join("v.ferry.fetch").exists());
    verify(&got, &fx.public);

    let log = srv.log.lock().expect("log");
    assert!(log.flipped && log.cuts == 2, "faults not all injected: {log:?}");
    // Frame k was asked for again on its own, and nothing was asked for twice wholesale.
    let again = log.requests.iter().filter(|(_, r)| *r == Some(f1)).count();
    assert!(again >= 1, "frame {k}'s range {f1:?} was not re-requested: {:?}", log.requests);
    assert!(log.requests.iter().all(|(m, r)| m != "GET" || r.is_some()), "a GET without Range: {:?}", log.requests);
    assert!(
        log.served < 2 * fx.bundle.len() as u64,
        "served {} bytes for a {}-byte bundle",
        log.served,
        fx.bundle.len()
    );
    assert_eq!(j["bytes"], log.served);
}

#[test]
fn an_interrupted_fetch_resumes_in_a_second_run() {
    let fx = fixture(8, 1);
    let size = fx.bundle.len() as u64;
    let into = fx.d.join("dl");
    // First run: the server stops answering after about half the bundle (as if the machine
    // went down midway); the fetch gives up with exit 6 and keeps what it verified.
    let dying = Server::start(fx.bundle.clone(), Faults { budget: Some(size / 2), ..Default::default() });
    let o = fetch(&dying.url("v.ferry"), &into, Some(&fx.public), &["--retries", "2"]);
    expect_code(&o, 6);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("network"), "{err}");
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(into.join("v.ferry.fetch")).expect("state kept")).expect("state JSON");
    assert!(!state["verified_frames"].as_array().expect("frames").is_empty(), "{state}");
    assert!(!into.join("v.ferry").exists());
    let first = dying.served();
    let addr = dying.url_base.trim_start_matches("http://").to_string();
    drop(dying);

    let good = Server::start_at(&addr, fx.bundle.clone(), Faults::default());
    let o = fetch(&good.url("v.ferry"), &into, Some(&fx.public), &[]);
    expect_code(&o, 0);
    let j = json(&o);
    let resumed = j["resumed_from_bytes"].as_u64().expect("resumed_from_bytes");
    let second = j["bytes"].as_u64().expect("bytes");
    assert!(resumed > 0, "{j}");
    // The whole file's BLAKE3, resumed part included (what `update` compares with the index).
    let whole = blake3::hash(&fx.bundle).to_hex().to_string();
    assert_eq!(j["blake3"].as_str(), Some(whole.as_str()), "{j}");
    assert!(second < size && good.served() < size, "second run fetched {second} of {size} bytes");
    assert!(second + resumed <= size + 8192, "resumed {resumed} + fetched {second} for a {size}-byte bundle");
    assert!(first > 0);
    assert!(fs::read(into.join("v.ferry")).expect("fetched") == fx.bundle);
    verify(&into.join("v.ferry"), &fx.public);

    // A third run finds the bundle complete and fetches only the head.
    let o = fetch(&good.url("v.ferry"), &into, Some(&fx.public), &[]);
    expect_code(&o, 0);
    let j = json(&o);
    assert_eq!(j["already_complete"], true, "{j}");
    assert_eq!(j["blake3"].as_str(), Some(whole.as_str()), "{j}");
    assert!(j["bytes"].as_u64().expect("bytes") < size / 4, "{j}");
}

#[test]
fn an_untrusted_bundle_is_refused_after_the_head() {
    let fx = fixture(9, 1);
    let (_, other) = keygen(&fx.d, "other");
    let srv = Server::start(fx.bundle.clone(), Faults::default());
    let into = fx.d.join("dl");
    let o = fetch(&srv.url("v.ferry"), &into, Some(&other), &[]);
    expect_code(&o, 3);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("trusted"), "{err}");
    let first_frame = frame_spans(&fx.bundle)[0].0;
    let reqs = srv.requests();
    assert!(reqs.len() <= 2, "{reqs:?}");
    assert!(
        reqs.iter().all(|(_, r)| r.is_some_and(|(a, _)| a < first_frame)),
        "a payload range was requested: {reqs:?}"
    );
    assert!(srv.served() < first_frame + 4096, "served {} bytes", srv.served());
    assert!(!into.join("v.ferry").exists());

    // Without --trust the signature is still checked (valid here), and the fetch completes.
    let o = fetch(&srv.url("v.ferry"), &into, None, &[]);
    expect_code(&o, 0);
    assert_eq!(json(&o)["trusted"], false);
    let _ = &fx.secret;
}

#[test]
fn a_server_without_ranges_is_streamed_once() {
    let fx = fixture(10, 1);
    let srv = Server::start(fx.bundle.clone(), Faults { no_ranges: true, ..Default::default() });
    let into = fx.d.join("dl");
    let o = fetch(&srv.url("v.ferry"), &into, Some(&fx.public), &[]);
    expect_code(&o, 0);
    let j = json(&o);
    assert_eq!(j["range_requests"], false, "{j}");
    assert_eq!(j["blake3"].as_str(), Some(blake3::hash(&fx.bundle).to_hex().as_str()), "{j}");
    assert_eq!(srv.requests().len(), 1, "{:?}", srv.requests());
    assert_eq!(srv.served(), fx.bundle.len() as u64);
    assert!(fs::read(into.join("v.ferry")).expect("fetched") == fx.bundle);
}

#[test]
fn a_corrupt_file_on_the_server_is_refused_after_two_identical_fetches() {
    let fx = fixture(11, 1);
    let spans = frame_spans(&fx.bundle);
    let f2 = spans[2];
    let srv = Server::start(fx.bundle.clone(), Faults { flip_always: Some((f2.0 + f2.1) / 2), ..Default::default() });
    let into = fx.d.join("dl");
    let o = fetch(&srv.url("v.ferry"), &into, Some(&fx.public), &[]);
    expect_code(&o, 3);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("frame 2") && err.contains("same wrong bytes"), "{err}");
    let again = srv.requests().iter().filter(|(_, r)| *r == Some(f2)).count();
    assert_eq!(again, 1, "{:?}", srv.requests());
    assert!(!into.join("v.ferry").exists());
}

#[test]
fn a_different_bundle_at_the_same_url_starts_over() {
    let a = fixture(12, 1);
    let size = a.bundle.len() as u64;
    let into = a.d.join("dl");
    let dying = Server::start(a.bundle.clone(), Faults { budget: Some(size / 2), ..Default::default() });
    let o = fetch(&dying.url("v.ferry"), &into, Some(&a.public), &["--retries", "1"]);
    expect_code(&o, 6);
    let addr = dying.url_base.trim_start_matches("http://").to_string();
    drop(dying);
    // Now the URL serves version 2, signed by the same key.
    let tree2 = a.d.join("tree2");
    gen_tree(&tree2, 13);
    fs::write(tree2.join("noise.bin"), noise(300_000, 99)).expect("write");
    let b2 = a.d.join("v2.ferry");
    build(None, &tree2, &a.secret, 2, &b2, &["--solid-size", "0"]);
    let bundle2 = fs::read(&b2).expect("read");
    let srv = Server::start_at(&addr, bundle2.clone(), Faults::default());
    let o = fetch(&srv.url("v.ferry"), &into, Some(&a.public), &[]);
    expect_code(&o, 0);
    let j = json(&o);
    assert_eq!(j["resumed_from_bytes"], 0, "{j}");
    assert_eq!(j["version"], 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("different bundle"));
    assert!(fs::read(into.join("v.ferry")).expect("fetched") == bundle2);
}

#[test]
fn unusable_urls_are_usage_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    for url in ["http://127.0.0.1:9/", "http://127.0.0.1:9/b/..", "ftp://127.0.0.1/x.ferry"] {
        let o = fetch(url, tmp.path(), None, &[]);
        expect_code(&o, 2);
    }
    // Nothing listens on the discard port: a network error, exit 6, said so.
    let o = fetch("http://127.0.0.1:9/x.ferry", tmp.path(), None, &["--retries", "1"]);
    expect_code(&o, 6);
    assert!(String::from_utf8_lossy(&o.stderr).contains("network"));
}

/// A server that answers every request with what `respond` writes (each connection on its own
/// thread, so a dripping answer does not hold up the next one).
struct RawServer {
    url_base: String,
    stop: Arc<AtomicBool>,
}

impl RawServer {
    fn start(respond: impl Fn(&mut TcpStream) + Send + Sync + 'static) -> RawServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let respond = Arc::new(respond);
        std::thread::spawn(move || {
            for _ in 0..1000 {
                let Ok((mut s, _)) = l.accept() else { break };
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let r = respond.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut req = Vec::new();
                    let mut b = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 << 10 {
                        match s.read(&mut b) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    r(&mut s);
                });
            }
        });
        RawServer { url_base: format!("http://{addr}"), stop }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/b/{name}", self.url_base)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url_base.trim_start_matches("http://"));
    }
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed fetch: a documented exit code (never a panic's 101), a message, no bundle left.
fn expect_refusal(o: &Output, codes: &[i32], into: &Path, what: &str) {
    let err = stderr_of(o);
    assert!(o.status.code().is_some_and(|c| codes.contains(&c)), "{what}: exit {:?}\n{err}", o.status.code());
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(err.contains("error"), "{what}: no error message: {err}");
    assert!(!into.join("v.ferry").exists(), "{what}: a file claims to be the bundle");
}

#[test]
fn redirects_go_to_http_only_and_relative_ones_are_resolved() {
    let fx = fixture(14, 1);
    for loc in ["file:///etc/passwd", "data:application/octet-stream;base64,AAAA", "ftp://127.0.0.1/v.ferry"] {
        let srv = Server::start(fx.bundle.clone(), Faults { redirect: Some(loc.into()), ..Default::default() });
        let into = fx.d.join("dl-refused");
        let o = fetch(&srv.url("v.ferry").replace("/b/", "/r/"), &into, Some(&fx.public), &["--retries", "1"]);
        expect_refusal(&o, &[6], &into, loc);
        let err = stderr_of(&o);
        assert!(err.contains("refusing to follow a redirect") && err.contains("only http"), "{loc}: {err}");
        assert!(!into.join("v.ferry.part").exists(), "{loc}: an empty .part is left");
    }
    // A relative redirect is resolved against the URL that answered it.
    let srv = Server::start(fx.bundle.clone(), Faults { redirect: Some("../b/v.ferry".into()), ..Default::default() });
    let into = fx.d.join("dl");
    let o = fetch(&srv.url("v.ferry").replace("/b/", "/r/"), &into, Some(&fx.public), &[]);
    expect_code(&o, 0);
    assert!(fs::read(into.join("v.ferry")).expect("fetched") == fx.bundle);
}

/// Run `fetch` but kill it if it takes longer than `limit` (a FIFO must not block it).
fn fetch_within(url: &str, into: &Path, public: &Path, limit: Duration) -> (Option<i32>, String) {
    let mut c = apply_cmd();
    c.arg("fetch").arg(url).arg("--into").arg(into).arg("--trust").arg(public);
    c.args(["--retry-wait-ms", "10", "--timeout", "10"]).stdout(std::process::Stdio::null());
    let mut child = c.stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    let t0 = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            return (st.code(), err);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fetch still running after {limit:?}: blocked");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn planted_symlinks_hard_links_and_fifos_in_the_download_directory_are_never_followed() {
    let fx = fixture(15, 1);
    let srv = Server::start(fx.bundle.clone(), Faults::default());
    let victim = fx.d.join("victim");
    let names = ["v.ferry.part", "v.ferry.fetch", "v.ferry.fetch.tmp", "v.ferry"];
    for (k, plant) in ["symlink", "hardlink", "fifo"].into_iter().enumerate() {
        fs::write(&victim, b"precious\n").expect("victim");
        let into = fx.d.join(format!("dl{k}"));
        fs::create_dir_all(&into).expect("mkdir");
        for n in names {
            let at = into.join(n);
            match plant {
                "symlink" => std::os::unix::fs::symlink(&victim, &at).expect("symlink"),
                // A hard link only for the part file (one victim can carry one planted name
                // that fetch would write); symlinks for the others.
                "hardlink" if n == "v.ferry.part" => fs::hard_link(&victim, &at).expect("link"),
                "hardlink" => std::os::unix::fs::symlink(&victim, &at).expect("symlink"),
                _ => {
                    let st = std::process::Command::new("mkfifo").arg(&at).status().expect("mkfifo");
                    assert!(st.success());
                }
            }
        }
        let (code, err) = fetch_within(&srv.url("v.ferry"), &into, &fx.public, Duration::from_secs(120));
        assert_eq!(code, Some(0), "{plant}: {err}");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious\n", "{plant}: the victim was written: {err}");
        let md = fs::symlink_metadata(into.join("v.ferry")).expect("fetched");
        assert!(md.file_type().is_file(), "{plant}: the bundle is not a regular file");
        assert!(fs::read(into.join("v.ferry")).expect("fetched") == fx.bundle, "{plant}");
        assert!(!into.join("v.ferry.fetch").exists() && !into.join("v.ferry.part").exists(), "{plant}");
        if plant != "fifo" {
            assert!(err.contains("not following it"), "{plant}: {err}");
        }
    }
}

#[test]
fn a_dripping_server_is_abandoned_at_the_deadline() {
    let tmp = tempfile::tempdir().expect("tmp");
    // One drips the body after a prompt answer, one drips the status line itself.
    let cases: [(&str, &[u8]); 2] = [
        ("body", b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-511/100000\r\nContent-Length: 512\r\n\r\n"),
        ("status line", b""),
    ];
    for (what, head) in cases {
        let head = head.to_vec();
        let srv = RawServer::start(move |s| {
            let _ = s.write_all(&head);
            for _ in 0..60 {
                if s.write_all(b"H").and_then(|()| s.flush()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let into = tmp.path().join(what.replace(' ', "-"));
        let (o, took) =
            timed_fetch(&srv.url("v.ferry"), &into, &["--timeout", "2", "--deadline", "3", "--retries", "50"]);
        assert!(took < Duration::from_secs(20), "{what}: fetch took {took:?}");
        expect_refusal(&o, &[6], &into, what);
        assert!(stderr_of(&o).contains("deadline"), "{what}: {}", stderr_of(&o));
    }
}

#[test]
fn hostile_answers_are_errors_not_panics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let r206 = |extra: &str, body: &[u8]| {
        let mut v = format!("HTTP/1.1 206 Partial Content\r\n{extra}Connection: close\r\n\r\n").into_bytes();
        v.extend_from_slice(body);
        v
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage status line", b"NOT HTTP AT ALL\r\n\r\n".to_vec()),
        ("no answer", Vec::new()),
        ("binary status line", b"HTTP/1.1 206 \xff\xfe\x00\r\n\r\n".to_vec()),
        ("huge header", format!("HTTP/1.1 206 Partial Content\r\nX-Big: {}\r\n\r\n", "a".repeat(300_000)).into_bytes()),
        ("many headers", format!("HTTP/1.1 206 Partial Content\r\n{}\r\n", "X-N: 1\r\n".repeat(500)).into_bytes()),
        ("1xx status", b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        ("status 999", b"HTTP/1.1 999 Whatever\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("status beyond u16", b"HTTP/1.1 99999999999999999999 X\r\n\r\n".to_vec()),
        ("206 without Content-Range", r206("Content-Length: 4\r\n", b"abcd")),
        (
            "Content-Range beyond u64",
            r206("Content-Range: bytes 0-99999999999999999999999/5\r\nContent-Length: 4\r\n", b"abcd"),
        ),
        ("Content-Range of other bytes", r206("Content-Range: bytes 7-9/10\r\nContent-Length: 3\r\n", b"abc")),
        (
            "Content-Range total u64::MAX",
            r206("Content-Range: bytes 0-511/18446744073709551615\r\nContent-Length: 512\r\n", &[0; 512]),
        ),
        ("Content-Range end u64::MAX", r206("Content-Range: bytes 0-18446744073709551615/*\r\n", &[7; 4096])),
        (
            "Content-Length larger than the body",
            r206("Content-Range: bytes 0-511/1000\r\nContent-Length: 512\r\n", b"0123456789"),
        ),
        (
            "body longer than announced",
            r206("Content-Range: bytes 0-511/1000\r\nContent-Length: 5000\r\n", &[b'x'; 5000]),
        ),
        ("negative Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello".to_vec()),
        ("broken chunked body", r206("Content-Range: bytes 0-511/1000\r\nTransfer-Encoding: chunked\r\n", b"zzzz\r\n")),
        ("200 with a junk body", [b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), &[0xAB; 1 << 20]].concat()),
        (
            "416 with a bad Content-Range",
            b"HTTP/1.1 416 No\r\nContent-Range: bytes */abc\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        ("redirect without Location", b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("redirect loop", b"HTTP/1.1 302 Found\r\nLocation: /b/v.ferry\r\nContent-Length: 0\r\n\r\n".to_vec()),
        (
            "redirect to a broken URL",
            b"HTTP/1.1 301 Moved\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        ("redirect to javascript:", b"HTTP/1.1 307 Moved\r\nLocation: javascript:alert(1)\r\n\r\n".to_vec()),
    ];
    for (k, (what, answer)) in cases.into_iter().enumerate() {
        let srv = RawServer::start(move |s| {
            let _ = s.write_all(&answer);
            let _ = s.flush();
        });
        let into = tmp.path().join(format!("dl{k}"));
        let (o, took) =
            timed_fetch(&srv.url("v.ferry"), &into, &["--timeout", "5", "--deadline", "30", "--retries", "1"]);
        expect_refusal(&o, &[3, 6], &into, what);
        assert!(took < Duration::from_secs(30), "{what}: took {took:?}");
    }
}

/// `ferry-apply fetch URL --into DIR ARGS --retry-wait-ms 10`, and how long it took (the binaries
/// are built before the clock starts).
fn timed_fetch(url: &str, into: &std::path::Path, args: &[&str]) -> (std::process::Output, Duration) {
    let mut c = apply_cmd();
    let t0 = std::time::Instant::now();
    let o = c
        .arg("fetch")
        .arg(url)
        .arg("--into")
        .arg(into)
        .args(args)
        .args(["--retry-wait-ms", "10"])
        .output()
        .expect("spawn");
    (o, t0.elapsed())
}

/// An encrypted bundle (bundle-format.md §4.10) is fetched like any other: its signatures and
/// every stored frame's hash are public, so a corrupt frame is caught and fetched again without
/// a key; then the target holding the identity applies the download.
#[test]
fn an_encrypted_bundle_is_fetched_verified_and_then_applied() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let tree = d.join("tree");
    gen_tree(&tree, 1408);
    for i in 0..3 {
        fs::write(tree.join(format!("noise{i}.bin")), noise(150_000, 1408 + i)).expect("write");
    }
    let (secret, public) = keygen(d, "k");
    let target = d.join("target");
    fs::create_dir(&target).expect("mkdir");
    let recipient = d.join("target.recipient");
    run_expect(apply_cmd().arg("identity").arg("--target").arg(&target).arg("--out").arg(&recipient), 0);
    let b = d.join("enc.ferry");
    build(None, &tree, &secret, 1, &b, &["--solid-size", "0", "--encrypt-to", recipient.to_str().expect("utf-8")]);
    let bytes = fs::read(&b).expect("read");
    let spans = frame_spans(&bytes);
    assert!(spans.len() > 2, "{} frames", spans.len());
    let (a, e) = spans[1];
    let srv = Server::start(bytes.clone(), Faults { flip_once: Some((a + e) / 2), ..Default::default() });
    let into = d.join("dl");
    let o = fetch(&srv.url("enc.ferry"), &into, Some(&public), &[]);
    expect_code(&o, 0);
    let j = json(&o);
    assert_eq!((j["encrypted"].clone(), j["recipients"].clone()), (true.into(), 1.into()), "{j}");
    assert_eq!(j["refetched_frames"], serde_json::json!([1]), "{j}");
    assert_eq!(fs::read(into.join("enc.ferry")).expect("download"), bytes);
    apply(&into.join("enc.ferry"), &target, &public, 0, &[]);
    assert_same(&snapshot(&target, false), &snapshot(&tree, false), "fetched, then applied");
}
