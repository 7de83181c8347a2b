//! A private nginx for the tests that need a real web server (channel repositories, issue 15):
//! started as a child process of the test with a generated configuration in a temporary
//! directory, on free ports of 127.0.0.1, serving one directory over HTTP and over HTTPS with a
//! certificate from a test CA made here with the `openssl` command.
//!
//! Locations, on both ports:
//! - `/…`: the directory as it is;
//! - `/slow/…`: the same files at [`Nginx::rate`] bytes per second (nginx `limit_rate`), so that
//!   a test can kill the server or the client midway through a download;
//! - `/to-http/…`, `/to-https/…`, `/to-file/…`: `302 Found` to the same path on the HTTP port,
//!   on the HTTPS port (host `localhost`), or as a `file://` URL of the directory;
//! - `/loop/…`: `302 Found` to itself, forever.
//!
//! A third port, [`Nginx::proxy_port`], is a plain-HTTP forward proxy (`http_proxy=` for a
//! client): it passes `GET http://HOST:PORT/…` on to `HOST:PORT` (IP literals only).
//!
//! Every request is logged (method, path, status, body bytes sent, `Range` header, whether it
//! completed) to an access log that [`Nginx::requests`] parses, so a test can count what was
//! served. A request cut by killing nginx is never logged; one cut by the client is, with the
//! bytes nginx had handed to the kernel.
//!
//! [`Nginx::start`] returns `None` with a loud skip message where `nginx` or `openssl` is
//! missing, or panics if the environment sets `FERRY_REQUIRE_NGINX=1` (CI does).

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The nginx binary (Debian's path; `FERRY_NGINX` overrides it).
pub fn nginx_bin() -> PathBuf {
    std::env::var_os("FERRY_NGINX").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

fn have(cmd: &Path, arg: &str) -> bool {
    Command::new(cmd).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Whether the tests that need nginx and openssl can run. Where they cannot: panics if
/// `FERRY_REQUIRE_NGINX=1`, else prints a skip message that the test harness does not capture
/// and returns `false`.
pub fn available(test: &str) -> bool {
    let mut missing = Vec::new();
    if !have(&nginx_bin(), "-v") {
        missing.push(format!("nginx ({})", nginx_bin().display()));
    }
    if !have(Path::new("openssl"), "version") {
        missing.push("openssl".to_string());
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("{test}: needs {} (Debian: apt-get install nginx-light openssl)", missing.join(" and "));
    if std::env::var("FERRY_REQUIRE_NGINX").is_ok_and(|v| v == "1") {
        panic!("FERRY_REQUIRE_NGINX=1 but {why}");
    }
    let _ = writeln!(std::io::stderr(), "\nSKIPPED (not passed): {why}");
    false
}

/// A test certificate authority and a server certificate for `127.0.0.1` and `localhost`.
pub struct TestCa {
    /// The CA's certificate (PEM): what a client passes as `--ca-cert`.
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(
        o.status.success(),
        "openssl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl TestCa {
    /// Make a CA (P-256 key, self-signed, `CA:TRUE`) and a server key and certificate signed by
    /// it (`subjectAltName` `IP:127.0.0.1`, `DNS:localhost`, `serverAuth`) in `dir`.
    pub fn make(dir: &Path) -> TestCa {
        fs::create_dir_all(dir).expect("mkdir ca");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3",
            "-subj",
            "/CN=ferry test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &ca);
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
        openssl(dir, &req);
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "2",
                "-days",
                "3",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
        TestCa { ca_cert: dir.join("ca.pem"), server_cert: dir.join("server.pem"), server_key: dir.join("server.key") }
    }
}

/// One line of the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path as requested (`$uri`, decoded, without the query).
    pub path: String,
    pub status: u16,
    /// Body bytes nginx sent.
    pub body_bytes: u64,
    /// The `Range` header, if any (`bytes=A-B`).
    pub range: Option<String>,
    /// nginx's `$request_completion`: the whole response was sent.
    pub complete: bool,
    /// The port it came in on.
    pub port: u16,
}

impl Request {
    /// The first byte of the `Range` header (`bytes=A-…`), or 0.
    pub fn range_start(&self) -> u64 {
        self.range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }
}

/// A running (or stopped) private nginx. Dropping it kills the process.
pub struct Nginx {
    /// Configuration, logs, pid file, temporary paths, certificates.
    dir: tempfile::TempDir,
    /// The served directory.
    root: PathBuf,
    pub http_port: u16,
    pub https_port: u16,
    /// A forward proxy for plain HTTP.
    pub proxy_port: u16,
    pub ca: TestCa,
    /// `limit_rate` of `/slow/` in bytes per second (takes effect at the next start).
    pub rate: u64,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

impl Nginx {
    /// Start nginx serving `root` (which need not exist yet, but must before anything is
    /// requested), throttled locations at `rate` bytes per second. `None` (after a skip
    /// message) where nginx or openssl is missing, unless `FERRY_REQUIRE_NGINX=1`.
    pub fn start(test: &str, root: &Path, rate: u64) -> Option<Nginx> {
        if !available(test) {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("ferry-nginx-").tempdir().expect("tempdir");
        let ca = TestCa::make(&dir.path().join("ca"));
        let mut n =
            Nginx { dir, root: root.to_path_buf(), http_port: 0, https_port: 0, proxy_port: 0, ca, rate, child: None };
        // Free ports can be taken between choosing and binding them: try a few pairs.
        let mut last = String::new();
        for _ in 0..5 {
            n.http_port = free_port();
            n.https_port = free_port();
            n.proxy_port = free_port();
            if n.http_port == n.https_port || n.proxy_port == n.http_port || n.proxy_port == n.https_port {
                continue;
            }
            match n.try_start() {
                Ok(()) => return Some(n),
                Err(e) => last = e,
            }
        }
        panic!("nginx did not start: {last}");
    }

    /// The directory of the configuration and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate a client needs for the HTTPS port.
    pub fn ca_cert(&self) -> &Path {
        &self.ca.ca_cert
    }

    /// `http://127.0.0.1:PORT/PATH` (`path` without the leading `/`).
    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.http_port)
    }

    /// `https://127.0.0.1:PORT/PATH`.
    pub fn https(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.https_port)
    }

    /// `https://localhost:PORT/PATH` (the certificate's DNS name).
    pub fn https_localhost(&self, path: &str) -> String {
        format!("https://localhost:{}/{path}", self.https_port)
    }

    fn access_log(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn error_log(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    fn config(&self) -> String {
        let d = self.dir.path().display();
        let root = self.root.display();
        let is_root = fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
        // Temporary paths of modules this nginx has (Debian's light builds lack some).
        let v = Command::new(nginx_bin()).arg("-V").output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
        let v = v.unwrap_or_default();
        let mut temps = format!("client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n");
        for (m, t) in [("fastcgi", "fastcgi_temp_path"), ("uwsgi", "uwsgi_temp_path"), ("scgi", "scgi_temp_path")] {
            if !v.contains(&format!("--without-http_{m}_module")) {
                temps.push_str(&format!("    {t} {d}/{m};\n"));
            }
        }
        let user = if is_root { "user root;\n" } else { "" };
        let server = |listen: String| {
            format!(
                r#"
  server {{
    {listen}
    server_name _;
    access_log {d}/access.log ferry;
    root {root};
    location / {{ }}
    location /slow/ {{
      alias {root}/;
      limit_rate {rate};
    }}
    location ~ ^/to-http/(.*)$ {{ return 302 http://127.0.0.1:{hp}/$1; }}
    location ~ ^/to-https/(.*)$ {{ return 302 https://localhost:{sp}/$1; }}
    location ~ ^/to-file/(.*)$ {{ return 302 file://{root}/$1; }}
    location ~ ^/loop/(.*)$ {{ return 302 /loop/$1; }}
  }}
"#,
                rate = self.rate,
                hp = self.http_port,
                sp = self.https_port,
            )
        };
        let http = server(format!("listen 127.0.0.1:{};", self.http_port));
        let https = server(format!(
            "listen 127.0.0.1:{} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};",
            self.https_port,
            self.ca.server_cert.display(),
            self.ca.server_key.display()
        ));
        let proxy = format!(
            r#"
  server {{
    listen 127.0.0.1:{};
    access_log {d}/access.log ferry;
    location / {{
      proxy_pass http://$http_host$request_uri;
      proxy_buffering off;
    }}
  }}
"#,
            self.proxy_port
        );
        format!(
            r#"# generated by ferry's tests (tests/src/nginx.rs)
daemon off;
master_process off;
worker_processes 1;
{user}pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    {temps}
    log_format ferry '$request_method $uri $status $body_bytes_sent "$http_range" "$request_completion" $server_port';
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 10;
{http}{https}{proxy}}}
"#
        )
    }

    fn try_start(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("nginx.conf");
        fs::write(&conf, self.config()).expect("write nginx.conf");
        let stderr = fs::OpenOptions::new().create(true).append(true).open(self.error_log()).expect("error log");
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(self.error_log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("{}: {e}", nginx_bin().display()))?;
        self.child = Some(child);
        let log = self.error_log();
        let ports = [self.http_port, self.https_port, self.proxy_port];
        crate::wait_listening(&mut self.child, &ports, "nginx", &|| fs::read_to_string(&log).unwrap_or_default())
    }

    /// Kill nginx with SIGKILL (connections in flight are cut, and never logged).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Start again on the same ports (after [`Nginx::kill`]), with the current [`Nginx::rate`].
    pub fn restart(&mut self) {
        self.kill();
        // The ports were ours a moment ago; nginx sets SO_REUSEADDR, so they bind again at once.
        let mut last = String::new();
        for _ in 0..50 {
            match self.try_start() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nginx did not restart on ports {}, {}, {}: {last}", self.http_port, self.https_port, self.proxy_port);
    }

    /// Every request logged so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        let text = fs::read_to_string(self.access_log()).unwrap_or_default();
        text.lines().filter_map(parse_line).collect()
    }

    /// Forget the requests logged so far (the next [`Nginx::requests`] starts empty). nginx keeps
    /// its log open in append mode, so truncating it is safe while it runs.
    pub fn clear_log(&self) {
        if let Ok(f) = fs::OpenOptions::new().write(true).open(self.access_log()) {
            f.set_len(0).expect("truncate access log");
        }
    }

    /// Body bytes served for paths ending in `suffix`, by logged requests (on the HTTP and HTTPS
    /// ports: what the proxy passed on is counted once, where it was served).
    pub fn bytes_served(&self, suffix: &str) -> u64 {
        self.requests()
            .iter()
            .filter(|r| r.port != self.proxy_port && r.path.ends_with(suffix))
            .map(|r| r.body_bytes)
            .sum()
    }

    /// The error log, for a failing test's message.
    pub fn errors(&self) -> String {
        fs::read_to_string(self.error_log()).unwrap_or_default()
    }
}

fn parse_line(line: &str) -> Option<Request> {
    // METHOD URI STATUS BYTES "RANGE" "COMPLETION" PORT; the URI of our files has no spaces.
    let mut it = line.splitn(5, ' ');
    let method = it.next()?.to_string();
    let path = it.next()?.to_string();
    let status = it.next()?.parse().ok()?;
    let body_bytes = it.next()?.parse().ok()?;
    let rest = it.next()?;
    let (range, rest) = rest.strip_prefix('"')?.split_once("\" ")?;
    let (completion, port) = rest.strip_prefix('"')?.split_once("\" ")?;
    Some(Request {
        method,
        path,
        status,
        body_bytes,
        range: (range != "-").then(|| range.to_string()),
        complete: completion == "OK",
        port: port.trim().parse().ok()?,
    })
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_lines() {
        let r = parse_line("GET /c/bundles/v1.full.ab.ferry 206 1000 \"bytes=5-1004\" \"OK\" 4431").expect("line");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/c/bundles/v1.full.ab.ferry");
        assert_eq!((r.status, r.body_bytes, r.complete, r.port), (206, 1000, true, 4431));
        assert_eq!(r.range_start(), 5);
        let r = parse_line("HEAD /x 200 0 \"-\" \"\" 80").expect("line");
        assert_eq!((r.range.clone(), r.complete, r.range_start()), (None, false, 0));
    }
}
