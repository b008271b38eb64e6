//! The status page at `/` on the admin listener, seen by a real headless Chromium driven over
//! the W3C WebDriver protocol (chromedriver): it shows an `ifportup` target UP, then DOWN on the
//! same page (no reload) once the test closes the target's TCP listener. Plus the plain HTTP
//! contract of `/` (type, caching, CSP, no external references).
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (scripts/install-deps.sh); the
//! browser test fails, loudly, without them. Every process started here is stopped when the
//! test ends, pass or fail: dnsteer and PowerDNS by their guards, Chromium by deleting the
//! WebDriver session (and, should that fail, by PID through its unique profile directory),
//! chromedriver by PID.

mod support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};
use support::{
    ChildGuard, DEMO_ZONE, DEMO_ZONE_NAME, Dnsteer, Pdns, QueryOpts, answer_rdata, dns_ask,
    free_port, spawn_guarded,
};

/// Bounds for a loaded two-core machine.
const SESSION_TIMEOUT: Duration = Duration::from_secs(90);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const UP_WITHIN: Duration = Duration::from_secs(30);
const DOWN_WITHIN: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The probed target
// ---------------------------------------------------------------------------------------------

/// A TCP listener on 127.0.0.1 that accepts and closes connections until stopped; stopping
/// closes the socket, so connects are refused from then on.
struct PortTarget {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PortTarget {
    fn start() -> PortTarget {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the probe target");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        PortTarget {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listening socket (the thread owns it) and waits for that.
    fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PortTarget {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_dnsteer(pdns: SocketAddr, target: SocketAddr) -> Dnsteer {
    let port = target.port();
    Dnsteer::start_on_free_ports(|dns, metrics| {
        format!(
            "[server]\nlisten = [\"{dns}\"]\nworkers = 1\n\n\
             [metrics]\nlisten = \"{metrics}\"\n\n\
             [logging]\nquery_sample_rate = 0.0\n\n\
             [ratelimit]\nenabled = false\n\n\
             [upstream]\nservers = [\"{pdns}\"]\nhealth_check_interval = \"1s\"\n\n\
             [[records]]\nname = \"web.demo.test.\"\ntype = \"A\"\nttl = 5\n\
             lua = \"ifportup({port}, {{'127.0.0.1'}}, {{interval='0.3', timeout='0.2', minimumFailures='1', rise='1'}})\"\n"
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------------------------

/// An HTTP response: status, headers (names lower-cased) and body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request. Reads exactly
/// Content-Length bytes when given (chromedriver keeps connections open), else to EOF.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let head_end = loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(bad("connection closed before the header end"));
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[head_end..].to_vec();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    match length {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Err(bad("body shorter than Content-Length"));
                }
                body.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut body)?;
        }
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

#[test]
fn root_is_a_self_contained_html_page() {
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let target = PortTarget::start();
    let dnsteer = start_dnsteer(pdns.addr(), target.addr);
    let get = |path: &str| {
        http(
            dnsteer.metrics_addr(),
            "GET",
            path,
            None,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", dnsteer.log()))
    };
    let root = get("/");
    assert_eq!(root.status, 200);
    assert!(
        root.header("content-type").starts_with("text/html"),
        "{:?}",
        root.headers
    );
    assert_eq!(root.header("cache-control"), "no-store");
    let csp = root.header("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let page = String::from_utf8(root.body).expect("UTF-8 page");
    assert!(page.starts_with("<!doctype html>"));
    let lower = page.to_ascii_lowercase();
    assert!(
        !lower.contains("http://") && !lower.contains("https://"),
        "the page references something outside itself"
    );
    // /status is not cached either, and carries what the page draws.
    let status = get("/status");
    assert_eq!(status.status, 200);
    assert_eq!(status.header("cache-control"), "no-store");
    let st: Value = serde_json::from_slice(&status.body).expect("/status is JSON");
    let key = format!("tcp {}", target.addr);
    assert!(
        st["probes"]
            .as_array()
            .is_some_and(|p| p.iter().any(|t| t["key"] == key.as_str())),
        "no probe {key} in {st}"
    );
    for field in ["history", "queries_by_decision", "reloads", "now_unix"] {
        assert!(!st[field].is_null(), "/status lacks {field}");
    }
}

// ---------------------------------------------------------------------------------------------
// WebDriver
// ---------------------------------------------------------------------------------------------

fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ])
        .collect();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// chromedriver on a free port, killed by PID on drop.
struct Driver {
    addr: SocketAddr,
    _child: ChildGuard,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let bin = find_on_path(&["chromedriver"]).unwrap_or_else(|| {
            panic!(
                "chromedriver not found: this test needs the Debian packages `chromium` and \
                 `chromium-driver` (scripts/install-deps.sh installs them)"
            )
        });
        let port = free_port();
        let log = std::fs::File::create(log).expect("chromedriver log");
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        let child = spawn_guarded(cmd).expect("spawn chromedriver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let ready = http(addr, "GET", "/status", None, Duration::from_secs(2))
                .ok()
                .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                return Driver {
                    addr,
                    _child: child,
                };
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in time");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// One WebDriver command; returns `value`, or the WebDriver error as text.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        t: Duration,
    ) -> Result<Value, String> {
        let r =
            http(self.addr, method, path, body, t).map_err(|e| format!("{method} {path}: {e}"))?;
        let status = r.status;
        let v: Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("{method} {path}: HTTP {status}, not JSON: {e}"))?;
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(format!("{method} {path}: HTTP {status}: {}", v["value"]))
        }
    }
}

/// A browser session; deleted on drop (chromedriver then quits Chromium). Declared after the
/// [`Driver`] in a test so it drops first.
struct Session<'d> {
    driver: &'d Driver,
    id: String,
    profile: PathBuf,
}

impl<'d> Session<'d> {
    fn new(driver: &'d Driver, profile: &Path) -> Session<'d> {
        let chromium = find_on_path(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
            panic!("chromium not found: install the Debian package `chromium` (scripts/install-deps.sh)")
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1400",
                         format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let v = driver
            .call("POST", "/session", Some(&caps), SESSION_TIMEOUT)
            .unwrap_or_else(|e| {
                // Chromium may have started before the failure: no session to delete it with.
                kill_by_profile(profile);
                panic!("new WebDriver session: {e}")
            });
        let id = v["sessionId"].as_str().expect("sessionId").to_string();
        Session {
            driver,
            id,
            profile: profile.to_path_buf(),
        }
    }

    fn cmd(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}/{what}", self.id);
        self.driver
            .call(method, &path, body, COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "url", Some(&json!({"url": url})));
    }

    fn run(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd("GET", "screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 screenshot"))
            .expect("valid base64")
    }

    /// Polls `script` until it returns `want`; panics after `within` with the last value.
    fn wait_for(
        &self,
        what: &str,
        script: &str,
        args: &Value,
        want: &Value,
        within: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.run(script, args.clone());
            if &got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{what}: still {got} after {within:?}, wanted {want}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.id);
        let _ = self.driver.call("DELETE", &path, None, COMMAND_TIMEOUT);
        kill_by_profile(&self.profile);
    }
}

/// SIGKILLs, by PID, any process still running with this (unique, per-test) profile directory
/// on its command line: Chromium left behind if the session could not be deleted.
#[allow(unsafe_code, reason = "kill(2)")]
fn kill_by_profile(profile: &Path) {
    let needle = format!("--user-data-dir={}", profile.display());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == needle.as_bytes())
        {
            // SAFETY: kill(2) on a PID whose command line names this test's own profile.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

const ROW_STATE: &str = "const r = document.querySelector('#probes tr[data-target=\"' + arguments[0] + '\"]');\
                         return r ? r.dataset.state : null;";

#[test]
fn the_page_shows_a_target_go_down_without_a_reload() {
    let tmp = tempfile::Builder::new()
        .prefix("dnsteer-status-page-")
        .tempdir()
        .expect("temp dir");
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let mut target = PortTarget::start();
    let dnsteer = start_dnsteer(pdns.addr(), target.addr);
    let driver = Driver::start(&tmp.path().join("chromedriver.log"));
    let session = Session::new(&driver, &tmp.path().join("profile"));
    let key = json!([format!("tcp {}", target.addr)]);

    session.go(&format!("http://{}/", dnsteer.metrics_addr()));
    // The inline script ran (its CSP hash matched) and rendered /status.
    session.wait_for("probe row UP", ROW_STATE, &key, &json!("up"), UP_WITHIN);
    session.run("window.__sameDocument = true; return null;", json!([]));
    // The inline style applied too (CSP hash): an UP badge is green, not the unknown colour.
    let badge = session.run(
        "const b = document.querySelector('#probes tr[data-target=\"' + arguments[0] + '\"] .badge');\
         return b ? getComputedStyle(b).backgroundColor : null;",
        key.clone(),
    );
    assert_eq!(badge, json!("rgb(26, 127, 55)"), "UP badge colour");
    // The charts draw once a sample exists.
    session.wait_for(
        "QPS chart drawn",
        "return document.getElementById('qps-line').getAttribute('d').startsWith('M');",
        &json!([]),
        &json!(true),
        Duration::from_secs(10),
    );

    // Some answers, so the record row and the charts have something to show.
    for _ in 0..40 {
        let m = dns_ask(
            dnsteer.dns_addr(),
            "web.demo.test.",
            RecordType::A,
            &QueryOpts::udp(),
        );
        assert_eq!(answer_rdata(&m), ["127.0.0.1"]);
    }
    session.wait_for(
        "record answers shown",
        "const r = document.querySelector('#records tr[data-record=\"web.demo.test. A\"] td:nth-child(4)');\
         return r ? r.textContent : null;",
        &json!([]),
        &json!("40"),
        Duration::from_secs(10),
    );

    let png = session.screenshot();
    assert!(png.len() > 1000, "screenshot of {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "screenshot is not a PNG");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status_page");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    std::fs::write(shots.join("up.png"), &png).expect("save screenshot");

    target.kill();
    let took = session.wait_for(
        "probe row DOWN",
        ROW_STATE,
        &key,
        &json!("down"),
        DOWN_WITHIN,
    );
    assert_eq!(
        session.run("return window.__sameDocument === true;", json!([])),
        json!(true),
        "the page reloaded"
    );
    let flips = session.run(
        "return document.querySelector('#probes tr[data-target=\"' + arguments[0] + '\"] td:nth-child(6)').textContent;",
        key,
    );
    assert_ne!(flips, json!("0"), "state changes not shown");
    std::fs::write(shots.join("down.png"), session.screenshot()).expect("save screenshot");
    eprintln!(
        "DOWN shown {took:?} after the listener closed; screenshots in {}",
        shots.display()
    );
}
