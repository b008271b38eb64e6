//! dnstap output end to end, on the real binary in front of a real PowerDNS: Debian's
//! `fstrm_capture` is the Frame Streams collector on a Unix socket (Debian's `dnstap-ldns` 0.2
//! only reads files), `dnstap-ldns -r FILE -y` decodes what it captured, independently of
//! dnsteer's encoder. Also: no collector, and a collector that never reads, leave the packet
//! path answering with the losses counted. Every process is stopped by PID on drop.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use support::{
    ChildGuard, DEMO_ZONE, DEMO_ZONE_NAME, Dnsteer, Pdns, QueryOpts, answer_rdata, dns_ask,
    spawn_guarded,
};

const CONTENT_TYPE: &str = "protobuf:dnstap.Dnstap";

fn config(dns: SocketAddr, metrics: SocketAddr, upstream: SocketAddr, dnstap: &str) -> String {
    format!(
        r#"
[server]
listen = ["{dns}"]
workers = 1
shutdown_drain = "0s"

[metrics]
listen = "{metrics}"

[logging]
query_sample_rate = 0.0

[ratelimit]
enabled = false

[upstream]
servers = ["{upstream}"]
health_check_interval = "200ms"

[dnstap]
{dnstap}

[[records]]
name = "static.demo.test."
type = "A"
ttl = 300
content = ["192.0.2.10"]
"#
    )
}

fn binary(name: &str) -> PathBuf {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not installed: run scripts/install-deps.sh"))
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `fstrm_capture` listening on `socket`, writing what it receives to `file`.
fn capture(socket: &Path, file: &Path) -> ChildGuard {
    let mut cmd = Command::new(binary("fstrm_capture"));
    cmd.args(["-t", CONTENT_TYPE, "-u"])
        .arg(socket)
        .arg("-w")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = spawn_guarded(cmd).expect("spawn fstrm_capture");
    wait_for("fstrm_capture socket", Duration::from_secs(5), || {
        socket.exists()
    });
    child
}

#[test]
fn collector_gets_auth_query_and_response_for_in_process_and_forwarded_answers() {
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let (socket, file) = (dir.path().join("tap.sock"), dir.path().join("tap.fstrm"));
    let collector = capture(&socket, &file);
    let tap = format!(
        "socket = \"{}\"\nsample_rate = 1.0\nidentity = \"ns-test\"",
        socket.display()
    );
    let mut d = Dnsteer::start_on_free_ports(|dns, m| config(dns, m, pdns.addr(), &tap));
    wait_for("dnstap connected", Duration::from_secs(10), || {
        d.metric("dnsteer_dnstap_connected", &[]) == 1.0
    });

    let udp = QueryOpts::udp();
    let local = dns_ask(d.dns_addr(), "static.demo.test", RecordType::A, &udp);
    assert_eq!(answer_rdata(&local), ["192.0.2.10"]);
    let forwarded = dns_ask(d.dns_addr(), "www.demo.test", RecordType::A, &udp);
    assert_eq!(answer_rdata(&forwarded), ["192.0.2.80"]);
    let tcp = dns_ask(
        d.dns_addr(),
        "static.demo.test",
        RecordType::A,
        &QueryOpts::tcp(),
    );
    assert_eq!(answer_rdata(&tcp), ["192.0.2.10"]);
    wait_for("6 frames written", Duration::from_secs(5), || {
        d.metric("dnsteer_dnstap_frames_total", &[]) == 6.0
    });

    // SIGTERM: dnsteer sends STOP and waits for FINISH before it exits.
    let status = d.stop().expect("dnsteer exit status");
    assert!(
        status.success(),
        "dnsteer exited with {status}:\n{}",
        d.log()
    );
    assert!(collector.stop().is_some(), "fstrm_capture did not exit");

    let out = Command::new(binary("dnstap-ldns"))
        .args(["-y", "-r"])
        .arg(&file)
        .output()
        .expect("run dnstap-ldns");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dnstap-ldns failed: {text}");
    let count = |s: &str| text.matches(s).count();
    assert_eq!(count("type: AUTH_QUERY"), 3, "{text}");
    assert_eq!(count("type: AUTH_RESPONSE"), 3, "{text}");
    assert_eq!(count("query_address: \"127.0.0.1\""), 6, "{text}");
    assert_eq!(count("socket_protocol: UDP"), 4, "{text}");
    assert_eq!(count("socket_protocol: TCP"), 2, "{text}");
    assert_eq!(count("identity: \"ns-test\""), 6, "{text}");
    assert_eq!(
        count("static.demo.test.\t300\tIN\tA\t192.0.2.10"),
        2,
        "{text}"
    );
    assert!(
        text.contains("www.demo.test.\t300\tIN\tA\t192.0.2.80"),
        "{text}"
    );
    assert_eq!(count(";www.demo.test.\tIN\tA"), 2, "{text}");
}

#[test]
fn no_collector_answers_normally_and_counts_drops() {
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let tap = format!(
        "socket = \"{}\"\nsample_rate = 1.0",
        dir.path().join("absent.sock").display()
    );
    let mut d = Dnsteer::start_on_free_ports(|dns, m| config(dns, m, pdns.addr(), &tap));
    for _ in 0..20 {
        let a = dns_ask(
            d.dns_addr(),
            "static.demo.test",
            RecordType::A,
            &QueryOpts::udp(),
        );
        assert_eq!(answer_rdata(&a), ["192.0.2.10"]);
    }
    let a = dns_ask(
        d.dns_addr(),
        "www.demo.test",
        RecordType::A,
        &QueryOpts::udp(),
    );
    assert_eq!(answer_rdata(&a), ["192.0.2.80"]);
    let dropped = d.metric(
        "dnsteer_dnstap_dropped_total",
        &[("reason", "disconnected")],
    );
    assert_eq!(dropped, 21.0);
    assert_eq!(d.metric("dnsteer_dnstap_connected", &[]), 0.0);
    assert!(d.metric("dnsteer_dnstap_connect_failures_total", &[]) >= 1.0);
    assert_eq!(d.metric("dnsteer_dnstap_frames_total", &[]), 0.0);
    // Logged once, not once per attempt.
    let logged = d.log().matches("dnstap collector unavailable").count();
    assert_eq!(logged, 1, "{}", d.log());
    let status = d.stop().expect("dnsteer exit status");
    assert!(status.success(), "dnsteer exited with {status}");
}

/// A collector that completes the handshake and then never reads again; every connection it
/// accepts is kept open until the test ends.
struct StuckCollector {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StuckCollector {
    fn start(path: &Path) -> StuckCollector {
        let listener = UnixListener::bind(path).expect("bind collector socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => held.extend(handshake(conn)),
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        StuckCollector {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StuckCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads READY, answers ACCEPT (dnstap), reads START; the connection on success.
fn handshake(mut conn: UnixStream) -> Option<UnixStream> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let read_control = |c: &mut UnixStream| -> Option<u32> {
        let mut head = [0u8; 12];
        c.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes(head[4..8].try_into().ok()?) as usize;
        let mut rest = vec![0u8; len.checked_sub(4)?];
        c.read_exact(&mut rest).ok()?;
        Some(u32::from_be_bytes(head[8..12].try_into().ok()?))
    };
    (read_control(&mut conn)? == 4).then_some(())?; // READY
    let mut accept = vec![0, 0, 0, 0];
    accept.extend_from_slice(&(12 + CONTENT_TYPE.len() as u32).to_be_bytes());
    accept.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
    accept.extend_from_slice(&(CONTENT_TYPE.len() as u32).to_be_bytes());
    accept.extend_from_slice(CONTENT_TYPE.as_bytes());
    conn.write_all(&accept).ok()?;
    (read_control(&mut conn)? == 2).then_some(conn) // START
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn collector_that_never_reads_fills_the_queue_not_the_packet_path() {
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("stuck.sock");
    let _collector = StuckCollector::start(&socket);
    let tap = format!(
        "socket = \"{}\"\nsample_rate = 1.0\nqueue = 64",
        socket.display()
    );
    let mut d = Dnsteer::start_on_free_ports(|dns, m| config(dns, m, pdns.addr(), &tap));
    wait_for("dnstap connected", Duration::from_secs(10), || {
        d.metric("dnsteer_dnstap_connected", &[]) == 1.0
    });
    let pid = d.pid().expect("dnsteer pid");
    let rss_before = rss_kib(pid);
    // About 300 bytes of frames per query: the socket buffer fills, then the queue (64).
    let started = Instant::now();
    let mut answered = 0;
    while answered < 3000 && started.elapsed() < Duration::from_secs(60) {
        let a = dns_ask(
            d.dns_addr(),
            "static.demo.test",
            RecordType::A,
            &QueryOpts::udp(),
        );
        assert_eq!(answer_rdata(&a), ["192.0.2.10"]);
        answered += 1;
    }
    assert_eq!(
        answered, 3000,
        "answers slowed down behind a stuck collector"
    );
    let full = d.metric("dnsteer_dnstap_dropped_total", &[("reason", "queue_full")]);
    let gone = d.metric(
        "dnsteer_dnstap_dropped_total",
        &[("reason", "disconnected")],
    );
    let frames = d.metric("dnsteer_dnstap_frames_total", &[]);
    eprintln!("stuck collector: frames {frames}, queue_full {full}, disconnected {gone}");
    assert!(
        full > 0.0,
        "no queue_full drops (frames {frames}, disconnected {gone})"
    );
    assert!(
        frames / 2.0 + full + gone <= 3000.0 + 1.0,
        "frames {frames} full {full} disconnected {gone}"
    );
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    let status = d.stop().expect("dnsteer exit status");
    assert!(status.success(), "dnsteer exited with {status}");
}

#[test]
fn sample_rate_reloads_and_the_socket_needs_a_restart() {
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let tap = |name: &str, rate: f64| {
        let socket = dir.path().join(name);
        format!("socket = \"{}\"\nsample_rate = {rate:?}", socket.display())
    };
    let (dns, metrics) = (support::free_addr(), support::free_addr());
    let mut d = Dnsteer::start(&config(dns, metrics, pdns.addr(), &tap("a.sock", 1.0)));
    let ask = |d: &Dnsteer| {
        let a = dns_ask(
            d.dns_addr(),
            "static.demo.test",
            RecordType::A,
            &QueryOpts::udp(),
        );
        assert_eq!(answer_rdata(&a), ["192.0.2.10"]);
    };
    let dropped = |d: &Dnsteer| d.metric("dnsteer_dnstap_dropped_total", &[]);
    let reload = |d: &Dnsteer, text: &str| {
        let ok = d.metric("dnsteer_config_reloads_total", &[("result", "ok")]);
        d.rewrite_config(text);
        d.signal_hup();
        wait_for("reload applied", Duration::from_secs(10), || {
            d.metric("dnsteer_config_reloads_total", &[("result", "ok")]) > ok
        });
    };
    ask(&d);
    assert_eq!(dropped(&d), 1.0);

    reload(&d, &config(dns, metrics, pdns.addr(), &tap("a.sock", 0.0)));
    ask(&d);
    assert_eq!(dropped(&d), 1.0, "sample_rate 0 applied without a restart");
    assert_eq!(d.metric("dnsteer_config_restart_required", &[]), 0.0);

    reload(&d, &config(dns, metrics, pdns.addr(), &tap("b.sock", 0.0)));
    let status = d.get("/status").1;
    assert!(
        status.contains("dnstap.socket/queue/identity/version"),
        "{status}"
    );
    assert_eq!(d.metric("dnsteer_config_restart_required", &[]), 1.0);
    let status = d.stop().expect("dnsteer exit status");
    assert!(status.success(), "dnsteer exited with {status}");
}
