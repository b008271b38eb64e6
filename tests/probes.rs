//! Probe pool against real HTTP, HTTPS and TCP servers on loopback (port 0, no internet).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dnsteer::config::ProbeDefaults;
use dnsteer::steer::probes::{
    Check, CheckOptions, HealthRef, HealthState, ProbePool, ProbeSpec, ProbeStatus,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Headroom for scheduling on a loaded two-core test machine.
const SLACK: Duration = Duration::from_millis(150);

fn defaults() -> ProbeDefaults {
    ProbeDefaults {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        minimum_failures: 1,
        rise: 1,
        max_concurrent: 64,
        jitter: 0.1,
        tls_verify: false,
        max_redirects: 5,
        body_limit: 65536,
    }
}

fn opts(interval_ms: u64, timeout_ms: u64) -> CheckOptions {
    CheckOptions {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        fall: 1,
        rise: 1,
        stringmatch: None,
        useragent: "dnsteer-test".into(),
        byteslimit: 0,
        httpcode: 200,
        headers: Vec::new(),
        source: None,
    }
}

fn http(url: String, options: CheckOptions) -> ProbeSpec {
    ProbeSpec {
        addr: LOCALHOST,
        check: Check::Http { url },
        options,
    }
}

fn tcp(port: u16, options: CheckOptions) -> ProbeSpec {
    ProbeSpec {
        addr: LOCALHOST,
        check: Check::Tcp { port },
        options,
    }
}

/// One request as the test server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    peer: IpAddr,
    headers: Vec<(String, String)>,
    sni: Option<String>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Minimal HTTP/1.1 server with fixed routes; one request per connection.
struct Server {
    addr: SocketAddr,
    log: Log,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(tls: Option<TlsAcceptor>) -> Server {
        Self::start_on(SocketAddr::new(LOCALHOST, 0), tls, Arc::default()).await
    }

    async fn start_on(addr: SocketAddr, tls: Option<TlsAcceptor>, log: Log) -> Server {
        let listener = listen(addr);
        let addr = listener.local_addr().unwrap();
        let flips = Arc::new(AtomicUsize::new(0));
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let (log, flips, tls) = (task_log.clone(), flips.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(stream, peer.ip(), None, addr, log, flips).await,
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let sni = stream.get_ref().1.server_name().map(str::to_owned);
                            serve(stream, peer.ip(), sni, addr, log, flips).await;
                        }
                    }
                });
            }
        });
        Server { addr, log, task }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }

    fn count(&self, path: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .count()
    }

    fn last(&self, path: &str) -> Seen {
        let log = self.log.lock().unwrap();
        log.iter().rev().find(|s| s.path == path).cloned().unwrap()
    }
}

fn listen(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    // The down/up tests re-open a closed port.
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(64).unwrap()
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: IpAddr,
    sni: Option<String>,
    me: SocketAddr,
    log: Log,
    flips: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16384 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        peer,
        headers,
        sni,
    });
    let big = format!("{}NEEDLE", "a".repeat(10_000));
    let other = format!("http://127.0.0.1:{}/ok2", me.port());
    let response: String = match path.as_str() {
        "/ok" | "/count" | "/ok2" => plain("200 OK", &[], "all good"),
        "/204" => plain("204 No Content", &[], ""),
        "/404" => plain("404 Not Found", &[], "no"),
        "/500" => plain("500 Internal Server Error", &[], "oops"),
        "/301" => plain("301 Moved Permanently", &[("Location", "/ok")], ""),
        "/302" => plain("302 Found", &[("Location", "/404")], ""),
        "/relative/a" => plain("302 Found", &[("Location", "b")], ""),
        "/relative/b" => plain("200 OK", &[], "relative ok"),
        "/elsewhere" => plain("302 Found", &[("Location", &other)], ""),
        "/loop" => plain("302 Found", &[("Location", "/loop")], ""),
        "/big" => plain("200 OK", &[], &big),
        "/chunked" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                       6\r\nhello \r\n5\r\nMAGIC\r\n6\r\n-TOKEN\r\n0\r\n\r\n"
            .to_owned(),
        "/flip" => {
            if flips.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                plain("200 OK", &[], "up")
            } else {
                plain("500 Internal Server Error", &[], "down")
            }
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            plain("200 OK", &[], "late")
        }
        _ => plain("404 Not Found", &[], "unknown route"),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn plain(status: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

/// A self-signed certificate for `hc.test`, made with the openssl CLI.
fn tls_acceptor() -> TlsAcceptor {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "key.pem",
        "-outform",
        "DER",
        "-out",
        "cert.der",
        "-days",
        "2",
        "-subj",
        "/CN=hc.test",
        "-addext",
        "subjectAltName=DNS:hc.test",
    ]);
    run(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.der",
    ]);
    let cert = std::fs::read(dir.path().join("cert.der")).unwrap();
    let key = std::fs::read(dir.path().join("key.der")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    )
    .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

fn status_of(pool: &ProbePool, spec: &ProbeSpec) -> ProbeStatus {
    pool.target_status(spec).expect("spec is in the probed set")
}

async fn wait_for(health: &HealthRef, want: HealthState, limit: Duration) -> Duration {
    let start = Instant::now();
    while health.state() != want {
        assert!(
            start.elapsed() < limit,
            "still {:?} after {:?}, want {want:?}",
            health.state(),
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_outcomes_follow_powerdns() {
    let server = Server::start(None).await;
    let pool = ProbePool::new(&defaults());
    let o = || opts(5000, 1000);
    let with = |f: &dyn Fn(&mut CheckOptions)| {
        let mut o = o();
        f(&mut o);
        o
    };
    // (path, options, expected error kind or None for UP)
    let cases: Vec<(&str, CheckOptions, Option<&str>)> = vec![
        ("/ok", o(), None),
        ("/204", o(), Some("status")),
        ("/204", with(&|o| o.httpcode = 204), None),
        ("/500", o(), Some("status")),
        ("/301", o(), None),
        ("/302", o(), Some("status")),
        ("/relative/a", o(), None),
        ("/elsewhere", o(), None),
        ("/loop", o(), Some("redirect")),
        (
            "/slow",
            with(&|o| o.timeout = Duration::from_millis(300)),
            Some("timeout"),
        ),
        (
            "/chunked",
            with(&|o| o.stringmatch = Some("MAGIC-TOKEN".into())),
            None,
        ),
        (
            "/ok",
            with(&|o| o.stringmatch = Some("nope".into())),
            Some("stringmatch"),
        ),
        (
            "/big",
            with(&|o| o.stringmatch = Some("NEEDLE".into())),
            None,
        ),
        (
            "/big",
            with(&|o| {
                o.stringmatch = Some("NEEDLE".into());
                o.byteslimit = 100;
            }),
            Some("stringmatch"),
        ),
        (
            "/big",
            with(&|o| {
                o.stringmatch = Some("aaaa".into());
                o.byteslimit = 100;
            }),
            None,
        ),
    ];
    // The URL host does not resolve anywhere: every request must go to the pinned candidate.
    let specs: Vec<ProbeSpec> = cases
        .iter()
        .map(|(path, o, _)| http(server.url("hc.test", path), o.clone()))
        .collect();
    let start = Instant::now();
    let health = pool.sync(&specs).await;
    assert!(
        start.elapsed() < Duration::from_millis(1200) + SLACK,
        "{:?}",
        start.elapsed()
    );
    for ((path, _, want), spec) in cases.iter().zip(&specs) {
        let st = status_of(&pool, spec);
        assert_eq!((st.probes_run, st.last_error), (1, *want), "{path}: {st:?}");
        let expect = if want.is_some() {
            HealthState::Down
        } else {
            HealthState::Up
        };
        assert_eq!(st.state, expect, "{path}");
        assert_eq!(health[spec].state(), expect, "{path}");
    }
    let seen = server.last("/ok");
    assert_eq!(
        seen.header("host"),
        Some(format!("hc.test:{}", server.addr.port()).as_str())
    );
    assert_eq!(seen.header("user-agent"), Some("dnsteer-test"));
    assert_eq!(server.count("/404"), 1, "302 followed to /404");
    let moved = server.last("/ok2");
    assert_eq!(
        moved.header("host"),
        Some(format!("127.0.0.1:{}", server.addr.port()).as_str())
    );
    assert_eq!(server.count("/loop"), 6, "first request + 5 redirects");
    let failures: u64 = pool.counters().failures().map(|(_, n)| n).sum();
    assert_eq!(failures, 7);
    pool.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_source_and_bad_urls() {
    let server = Server::start(None).await;
    let pool = ProbePool::new(&defaults());
    let mut o = opts(5000, 1000);
    o.headers = vec![("X-Probe".into(), "yes".into())];
    o.source = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let sourced = http(server.url("hc.test", "/ok2"), o);
    let bad = http("ftp://hc.test/".into(), opts(5000, 1000));
    let health = pool.sync(&[sourced.clone(), bad.clone()]).await;
    assert_eq!(health[&sourced].state(), HealthState::Up);
    let seen = server.last("/ok2");
    assert_eq!(seen.header("x-probe"), Some("yes"));
    assert_eq!(seen.peer, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(health[&bad].state(), HealthState::Down);
    assert_eq!(status_of(&pool, &bad).last_error, Some("bad_url"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ifurlextup_resolves_the_url_instead_of_pinning() {
    let server = Server::start(None).await;
    let pool = ProbePool::new(&defaults());
    // The candidate is a documentation address nothing listens on: only the URL is fetched.
    let spec = ProbeSpec {
        addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        check: Check::HttpExternal {
            url: server.url("127.0.0.1", "/ok"),
        },
        options: opts(5000, 1000),
    };
    let health = pool.sync(std::slice::from_ref(&spec)).await;
    assert_eq!(health[&spec].state(), HealthState::Up);
    assert_eq!(server.count("/ok"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_self_signed_is_up_unless_verification_is_on() {
    let server = Server::start(Some(tls_acceptor())).await;
    let port = server.addr.port();
    let named = http(format!("https://hc.test:{port}/ok2"), opts(5000, 2000));
    let literal = http(format!("https://127.0.0.1:{port}/301"), opts(5000, 2000));
    let lax = ProbePool::new(&defaults());
    let health = lax.sync(&[named.clone(), literal.clone()]).await;
    assert_eq!(health[&named].state(), HealthState::Up);
    assert_eq!(
        health[&literal].state(),
        HealthState::Up,
        "redirect over TLS, no SNI"
    );
    assert_eq!(server.last("/301").sni, None);
    assert_eq!(server.last("/ok").sni, None);
    let seen = server.last("/ok2");
    assert_eq!(seen.sni.as_deref(), Some("hc.test"));
    assert_eq!(
        seen.header("host"),
        Some(format!("hc.test:{port}").as_str())
    );

    let strict = ProbePool::new(&ProbeDefaults {
        tls_verify: true,
        ..defaults()
    });
    let health = strict.sync(std::slice::from_ref(&named)).await;
    assert_eq!(health[&named].state(), HealthState::Down);
    assert_eq!(status_of(&strict, &named).last_error, Some("tls"));
    // A reload that relaxes verification applies from the next probe on.
    strict.set_defaults(&defaults());
    let fast = http(format!("https://hc.test:{port}/ok"), opts(200, 2000));
    let health = strict.sync(std::slice::from_ref(&fast)).await;
    assert_eq!(health[&fast].state(), HealthState::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_open_port_is_up_closed_port_is_down() {
    let listener = listen(SocketAddr::new(LOCALHOST, 0));
    let open = listener.local_addr().unwrap().port();
    let closed = {
        let l = listen(SocketAddr::new(LOCALHOST, 0));
        l.local_addr().unwrap().port()
    };
    let pool = ProbePool::new(&defaults());
    let mut sourced = opts(5000, 1000);
    sourced.source = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let up = tcp(open, sourced);
    let down = tcp(closed, opts(5000, 1000));
    let health = pool.sync(&[up.clone(), down.clone()]).await;
    assert_eq!(health[&up].state(), HealthState::Up);
    assert_eq!(health[&down].state(), HealthState::Down);
    let (_, peer) = listener.accept().await.unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let st = pool.status();
    let down_st = st.iter().find(|s| s.port == Some(closed)).unwrap();
    assert_eq!(down_st.last_error, Some("refused"));
    assert_eq!(down_st.state, HealthState::Down);
    assert!(down_st.last_change_unix.is_some());
    let json = serde_json::to_value(&st).unwrap();
    assert!(matches!(json[0]["state"].as_str(), Some("up" | "down")));
}

/// Interval 200 ms, fall 2, rise 2: DOWN within interval × fall + interval of the outage and
/// UP within interval × rise + interval of the recovery (+ scheduling slack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_target_goes_down_and_comes_back() {
    let log: Log = Arc::default();
    let server = Server::start_on(SocketAddr::new(LOCALHOST, 0), None, log.clone()).await;
    let addr = server.addr;
    let pool = ProbePool::new(&defaults());
    let mut o = opts(200, 150);
    o.fall = 2;
    o.rise = 2;
    let spec = http(server.url("hc.test", "/ok"), o);
    let health = pool.sync(std::slice::from_ref(&spec)).await[&spec].clone();
    assert_eq!(health.state(), HealthState::Up);
    let interval = Duration::from_millis(200);

    drop(server);
    let took = wait_for(&health, HealthState::Down, interval * 3 + SLACK).await;
    assert!(took >= interval, "one failure is below fall: {took:?}");
    assert_eq!(status_of(&pool, &spec).last_error, Some("refused"));

    let _server = Server::start_on(addr, None, log).await;
    let took = wait_for(&health, HealthState::Up, interval * 3 + SLACK).await;
    assert!(took >= interval, "one success is below rise: {took:?}");
    assert_eq!(status_of(&pool, &spec).state_changes, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_target_goes_down_and_comes_back() {
    let listener = listen(SocketAddr::new(LOCALHOST, 0));
    let addr = listener.local_addr().unwrap();
    let pool = ProbePool::new(&defaults());
    let mut o = opts(200, 150);
    o.fall = 2;
    o.rise = 2;
    let spec = tcp(addr.port(), o);
    let health = pool.sync(std::slice::from_ref(&spec)).await[&spec].clone();
    assert_eq!(health.state(), HealthState::Up);
    let interval = Duration::from_millis(200);
    drop(listener);
    wait_for(&health, HealthState::Down, interval * 3 + SLACK).await;
    let _listener = listen(addr);
    wait_for(&health, HealthState::Up, interval * 3 + SLACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_target_does_not_flap_with_rise_two() {
    let server = Server::start(None).await;
    let pool = ProbePool::new(&defaults());
    let mut o = opts(100, 500);
    o.rise = 2;
    let spec = http(server.url("hc.test", "/flip"), o);
    let health = pool.sync(std::slice::from_ref(&spec)).await[&spec].clone();
    assert_eq!(health.state(), HealthState::Up);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(server.count("/flip") >= 8, "{}", server.count("/flip"));
    assert_eq!(health.state(), HealthState::Down);
    let st = status_of(&pool, &spec);
    assert_eq!(st.state_changes, 2, "unknown→up, up→down, then steady");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_target_is_probed_once_per_interval_and_removal_stops_it() {
    let server = Server::start(None).await;
    let pool = ProbePool::new(&ProbeDefaults {
        jitter: 0.0,
        ..defaults()
    });
    let spec = http(server.url("hc.test", "/count"), opts(200, 500));
    let specs = vec![spec.clone(); 20];
    let first = pool.sync(&specs).await;
    assert_eq!(first.len(), 1);
    assert_eq!(server.count("/count"), 1);
    let t0 = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let n = server.count("/count");
    // Twenty records share one target: one probe per interval, not twenty. The bound is taken
    // from the time that really passed (a loaded machine oversleeps); a probe round delayed by
    // the scheduler may make one fewer, never more.
    let rounds = (t0.elapsed().as_millis() / 200) as usize;
    assert!(
        (rounds.saturating_sub(3).max(2)..=rounds + 2).contains(&n),
        "{n} probes in {:?} at 200 ms (one per interval expected)",
        t0.elapsed()
    );
    let again = pool.sync(&specs).await;
    assert!(Arc::ptr_eq(&first[&spec], &again[&spec]));

    assert!(pool.sync(&[]).await.is_empty());
    assert!(pool.status().is_empty());
    let n = server.count("/count");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.count("/count"), n, "removed target still probed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_returns_within_the_timeout_with_a_hanging_target() {
    let server = Server::start(None).await;
    let pool = ProbePool::new(&defaults());
    let hanging = http(server.url("hc.test", "/slow"), opts(5000, 400));
    let fine = http(server.url("hc.test", "/ok"), opts(5000, 400));
    let start = Instant::now();
    let health = pool.sync(&[hanging.clone(), fine.clone()]).await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_millis(600) + SLACK, "{took:?}");
    assert_eq!(health[&hanging].state(), HealthState::Down);
    assert_eq!(health[&fine].state(), HealthState::Up);
    assert_eq!(status_of(&pool, &hanging).last_error, Some("timeout"));
}
