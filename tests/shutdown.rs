//! SIGTERM on the real binary in front of a real PowerDNS: unready at once, answering through
//! the drain, every in-flight TCP query answered before its connection closes, exit 0; and a
//! PowerDNS that never answers does not hold the process past `shutdown_grace`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::{
    DEMO_ZONE, DEMO_ZONE_NAME, Dnsteer, Pdns, QueryOpts, answer_rdata, build_query, http_get,
};

/// Upstreams: a black hole first (UDP socket and TCP listener that never answer), then
/// PowerDNS; `first-available` with 2 attempts, so every forwarded query is in flight for
/// `timeout` before PowerDNS answers it. Health checks run once (a single failure does not mark
/// the black hole down).
struct BlackHole {
    udp: UdpSocket,
    _tcp: TcpListener,
}

impl BlackHole {
    fn bind() -> BlackHole {
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
            let addr = udp.local_addr().expect("addr");
            if let Ok(tcp) = TcpListener::bind(addr) {
                return BlackHole { udp, _tcp: tcp };
            }
        }
        panic!("no port free for a UDP+TCP black hole");
    }

    fn addr(&self) -> SocketAddr {
        self.udp.local_addr().expect("addr")
    }
}

/// Starts the binary on free ports with [`config`].
fn start(pdns: SocketAddr, hole: SocketAddr, timeout: &str, drain: &str, grace: &str) -> Dnsteer {
    Dnsteer::start_on_free_ports(|dns, metrics| {
        config(dns, metrics, pdns, hole, timeout, drain, grace)
    })
}

fn config(
    dns: SocketAddr,
    metrics: SocketAddr,
    pdns: SocketAddr,
    hole: SocketAddr,
    timeout: &str,
    drain: &str,
    grace: &str,
) -> String {
    format!(
        "[server]\nlisten = [\"{dns}\"]\nworkers = 2\nshutdown_drain = \"{drain}\"\n\
         shutdown_grace = \"{grace}\"\n\n\
         [metrics]\nlisten = \"{metrics}\"\n\n\
         [logging]\nquery_sample_rate = 0.0\n\n\
         [ratelimit]\nenabled = false\n\n\
         [upstream]\nservers = [\"{hole}\", \"{pdns}\"]\npolicy = \"first-available\"\n\
         attempts = 2\ntimeout = \"{timeout}\"\nhealth_check_interval = \"1h\"\n\n\
         [[records]]\nname = \"local.demo.test.\"\ntype = \"A\"\nttl = 60\n\
         content = [\"192.0.2.7\"]\n"
    )
}

/// UDP load on the in-process name from one socket until `stop`: (send time, answered) per
/// query, answers matched by ID.
fn udp_load(server: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<(Instant, bool)>> {
    thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.connect(server).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let (_, wire) = build_query("local.demo.test.", RecordType::A, &QueryOpts::udp());
        let mut log = Vec::new();
        let mut buf = [0u8; 512];
        let mut id: u16 = 0;
        while !stop.load(Ordering::Relaxed) {
            id = id.wrapping_add(1);
            let mut q = wire.clone();
            q[..2].copy_from_slice(&id.to_be_bytes());
            let sent = Instant::now();
            if sock.send(&q).is_err() {
                log.push((sent, false));
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            let mut answered = false;
            while let Ok(n) = sock.recv(&mut buf) {
                if n >= 2 && buf[..2] == id.to_be_bytes() {
                    let m = Message::from_vec(&buf[..n]).expect("decodable");
                    assert_eq!(answer_rdata(&m), ["192.0.2.7"], "in-process answer");
                    answered = true;
                    break;
                }
            }
            log.push((sent, answered));
            thread::sleep(Duration::from_millis(5));
        }
        log
    })
}

/// What one TCP client connection saw.
#[derive(Debug, Default)]
struct TcpReport {
    sent: usize,
    answered: usize,
    wrong: Vec<String>,
    /// Queries the server had read (answered or not) when the connection ended; `None` if
    /// the connection ended cleanly (EOF) with every batch answered.
    cut_batch: Option<(usize, usize)>,
    /// The connection ended with an error (reset) rather than EOF.
    error: Option<String>,
    last_answer: Option<Instant>,
}

/// One TCP connection sending batches of `batch` pipelined queries for a forwarded name and
/// reading every answer before the next batch, until the server closes the connection.
fn tcp_load(server: SocketAddr, batch: usize) -> thread::JoinHandle<TcpReport> {
    thread::spawn(move || {
        let mut r = TcpReport::default();
        let mut s = TcpStream::connect(server).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        let (_, wire) = build_query("www.demo.test.", RecordType::A, &QueryOpts::tcp());
        let mut id: u16 = 0;
        loop {
            let mut frames = Vec::new();
            let mut ids = Vec::new();
            for _ in 0..batch {
                id = id.wrapping_add(1);
                let mut q = wire.clone();
                q[..2].copy_from_slice(&id.to_be_bytes());
                frames.extend_from_slice(&(q.len() as u16).to_be_bytes());
                frames.extend_from_slice(&q);
                ids.push(id);
            }
            if let Err(e) = s.write_all(&frames) {
                r.error = Some(format!("write: {e}"));
                return r;
            }
            r.sent += batch;
            let mut got = 0;
            while got < batch {
                let mut len = [0u8; 2];
                match s.read_exact(&mut len) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        // Closed by the server: the batch must be answered in full unless the
                        // server had not read it (then nothing of it is answered).
                        if got != 0 {
                            r.cut_batch = Some((got, batch));
                        }
                        r.sent -= batch - got;
                        return r;
                    }
                    Err(e) => {
                        r.error = Some(format!("read after {got}/{batch}: {e}"));
                        return r;
                    }
                }
                let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if let Err(e) = s.read_exact(&mut body) {
                    r.error = Some(format!("read body: {e}"));
                    return r;
                }
                let m = Message::from_vec(&body).expect("decodable");
                if !ids.contains(&m.metadata.id)
                    || m.metadata.response_code != ResponseCode::NoError
                    || answer_rdata(&m) != ["192.0.2.80"]
                {
                    r.wrong.push(format!(
                        "{} {:?} {:?}",
                        m.metadata.id,
                        m.metadata.response_code,
                        answer_rdata(&m)
                    ));
                }
                got += 1;
                r.answered += 1;
                r.last_answer = Some(Instant::now());
            }
        }
    })
}

#[test]
fn sigterm_drains_answers_in_flight_tcp_and_exits_zero() {
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let hole = BlackHole::bind();
    // Every forwarded query spends 300 ms at the black hole, so TCP batches are in flight
    // when the drain ends.
    let mut bin = start(pdns.addr(), hole.addr(), "300ms", "1s", "10s");
    let dns = bin.dns_addr();

    let stop = Arc::new(AtomicBool::new(false));
    let udp: Vec<_> = (0..2).map(|_| udp_load(dns, stop.clone())).collect();
    let tcp: Vec<_> = (0..4).map(|_| tcp_load(dns, 8)).collect();
    thread::sleep(Duration::from_millis(700));

    let term = Instant::now();
    bin.signal(libc::SIGTERM);
    // /readyz turns 503 at once.
    let mut unready_after = None;
    while term.elapsed() < Duration::from_secs(1) {
        if let Ok((503, _)) = http_get(bin.metrics_addr(), "/readyz", Duration::from_millis(300)) {
            unready_after = Some(term.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let unready_after = unready_after.expect("/readyz still 200 a second after SIGTERM");
    assert!(
        unready_after < Duration::from_millis(500),
        "unready after {unready_after:?}"
    );

    // Exit 0 within drain + in-flight (2 × 300 ms) + a margin.
    let status = loop {
        if let Some(s) = bin.exited() {
            break s;
        }
        assert!(
            term.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM:\n{}",
            bin.log()
        );
        thread::sleep(Duration::from_millis(20));
    };
    let exited_after = term.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "exit status {status}:\n{}", bin.log());
    assert!(
        exited_after >= Duration::from_millis(900),
        "exited after {exited_after:?}, before the 1 s drain"
    );

    // UDP: every query sent during the drain (with margin for the last round trip) was
    // answered.
    for (i, h) in udp.into_iter().enumerate() {
        let log = h.join().expect("udp client");
        let in_drain: Vec<_> = log
            .iter()
            .filter(|(t, _)| *t > term && *t < term + Duration::from_millis(800))
            .collect();
        assert!(
            in_drain.len() > 20,
            "udp {i}: only {} queries in the drain",
            in_drain.len()
        );
        let lost = in_drain.iter().filter(|(_, ok)| !ok).count();
        assert_eq!(
            lost,
            0,
            "udp {i}: {lost} of {} queries in the drain unanswered",
            in_drain.len()
        );
    }
    // TCP: connections end with EOF after their in-flight batch is answered in full.
    for (i, h) in tcp.into_iter().enumerate() {
        let r = h.join().expect("tcp client");
        assert!(r.error.is_none(), "tcp {i}: {r:?}");
        assert!(r.wrong.is_empty(), "tcp {i}: wrong answers {:?}", r.wrong);
        assert_eq!(r.cut_batch, None, "tcp {i}: batch cut short: {r:?}");
        assert_eq!(r.answered, r.sent, "tcp {i}: {r:?}");
        assert!(r.answered >= 16, "tcp {i}: only {} answers", r.answered);
        // A batch is in flight (300 ms at the black hole) whenever the drain ends: it must be
        // answered, so the last answer comes after the drain.
        let last = r.last_answer.expect("answers") - term;
        assert!(
            last > Duration::from_millis(1000),
            "tcp {i}: last answer {last:?} after SIGTERM, before the 1 s drain ended: the batch \
             in flight then was dropped"
        );
    }
    drop(hole);
}

#[test]
fn unanswered_upstream_does_not_hold_shutdown_past_grace() {
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let hole = BlackHole::bind();
    // Forwarded queries stay in flight up to 2 × 5 s; the grace is 2 s.
    let mut bin = start(pdns.addr(), hole.addr(), "5s", "200ms", "2s");
    let dns = bin.dns_addr();
    // UDP and TCP forwarded queries in flight at SIGTERM.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..20 {
        let (_, wire) = build_query("www.demo.test.", RecordType::A, &QueryOpts::udp());
        udp.send_to(&wire, dns).expect("send");
    }
    let tcp = tcp_load(dns, 4);
    thread::sleep(Duration::from_millis(300));

    let term = Instant::now();
    bin.signal(libc::SIGTERM);
    let status = loop {
        if let Some(s) = bin.exited() {
            break s;
        }
        assert!(
            term.elapsed() < Duration::from_secs(4),
            "still running 4 s after SIGTERM with shutdown_grace = 2s:\n{}",
            bin.log()
        );
        thread::sleep(Duration::from_millis(20));
    };
    let took = term.elapsed();
    assert!(status.success(), "exit status {status}:\n{}", bin.log());
    assert!(
        took >= Duration::from_millis(1900),
        "exited after {took:?}: in-flight work was not waited for"
    );
    assert!(bin.log().contains("grace period"), "{}", bin.log());
    let r = tcp.join().expect("tcp client");
    assert!(r.wrong.is_empty(), "{r:?}");
    drop(hole);
}
