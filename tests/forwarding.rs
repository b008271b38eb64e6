//! dnsteer in front of a real PowerDNS: answers through dnsteer must equal PowerDNS's own
//! (ID aside) over UDP and TCP, for a broad question list; plus failure handling.

mod inproc;
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::{Pdns, QueryOpts, dns_query};

const ZONE: &str = include_str!("../config/demo/demo.test.zone");

/// What must be equal between PowerDNS's answer and dnsteer's.
#[derive(Debug, PartialEq)]
struct Shape {
    rcode: ResponseCode,
    aa: bool,
    tc: bool,
    answers: BTreeSet<String>,
    authorities: BTreeSet<String>,
    additionals: BTreeSet<String>,
    edns: bool,
    ecs: Option<String>,
}

fn shape(m: &Message) -> Shape {
    let set = |rs: &[hickory_proto::rr::Record]| {
        rs.iter().map(|r| r.to_string().to_lowercase()).collect()
    };
    Shape {
        rcode: m.metadata.response_code,
        aa: m.metadata.authoritative,
        tc: m.metadata.truncation,
        answers: set(&m.answers),
        authorities: set(&m.authorities),
        additionals: set(&m.additionals),
        edns: m.edns.is_some(),
        ecs: support::reply_ecs(m).map(|e| format!("{e:?}")),
    }
}

fn questions() -> Vec<(&'static str, RecordType)> {
    vec![
        ("www.demo.test.", RecordType::A),
        ("www.demo.test.", RecordType::AAAA),
        ("WwW.DeMo.TeSt.", RecordType::A),
        ("demo.test.", RecordType::SOA),
        ("demo.test.", RecordType::NS),
        ("demo.test.", RecordType::MX),
        ("demo.test.", RecordType::TXT),
        ("mail.demo.test.", RecordType::A),
        ("alias.demo.test.", RecordType::A),
        ("big.demo.test.", RecordType::TXT),
        ("nope.demo.test.", RecordType::A),
        ("www.demo.test.", RecordType::MX),
        ("static.demo.test.", RecordType::A),
        ("other.zone.", RecordType::A),
    ]
}

fn option_sets() -> Vec<(&'static str, QueryOpts)> {
    vec![
        ("udp", QueryOpts::udp()),
        ("udp edns4096", QueryOpts::udp().edns(4096)),
        ("udp edns512", QueryOpts::udp().edns(512)),
        ("udp do", QueryOpts::udp().dnssec_ok()),
        ("udp ecs", QueryOpts::udp().ecs("198.51.100.0/24")),
        ("udp ecs6", QueryOpts::udp().ecs("2001:db8:1::/48")),
        ("tcp", QueryOpts::tcp()),
        ("tcp edns", QueryOpts::tcp().edns(1232)),
        ("tcp ecs", QueryOpts::tcp().ecs("203.0.113.0/24")),
    ]
}

#[test]
fn answers_equal_powerdns_over_udp_and_tcp() {
    let pdns = Pdns::start(&[("demo.test.", ZONE)], &["edns-subnet-processing=yes"]);
    let (app, _dir) = inproc::start_with(&[pdns.addr()], "");
    let front = app.dns_addrs[0];
    let (mut udp, mut tcp) = (0.0, 0.0);
    for (name, qtype) in questions() {
        for (label, opts) in option_sets() {
            let direct = dns_query(pdns.addr(), name, qtype, &opts).expect("PowerDNS answers");
            let via = dns_query(front, name, qtype, &opts)
                .unwrap_or_else(|e| panic!("dnsteer did not answer {name} {qtype} {label}: {e}"));
            assert_eq!(shape(&via), shape(&direct), "{name} {qtype} [{label}]");
            if label.starts_with("tcp") {
                tcp += 1.0;
            } else {
                udp += 1.0;
            }
        }
    }
    // Each of those answers came from PowerDNS through dnsteer, over the client's transport
    // (nothing answered in-process or from elsewhere could have matched by chance).
    let text = inproc::scrape(&app);
    let forwarded = |t: &str| {
        inproc::metric(
            &text,
            &format!("dnsteer_queries_total{{transport=\"{t}\",decision=\"forwarded\"}}"),
        )
    };
    assert_eq!(forwarded("udp"), udp, "{text}");
    assert_eq!(forwarded("tcp"), tcp, "{text}");
    assert!(
        inproc::metric(&text, "dnsteer_upstream_requests_total{") >= udp + tcp,
        "an upstream request per query at least (a retry may add one): {text}"
    );
    // The big TXT really needed TCP over plain UDP: the comparison above covered TC=1.
    let tc = dns_query(front, "big.demo.test.", RecordType::TXT, &QueryOpts::udp()).unwrap();
    assert!(
        tc.metadata.truncation,
        "big TXT without EDNS must be truncated"
    );
    let full = dns_query(front, "big.demo.test.", RecordType::TXT, &QueryOpts::tcp()).unwrap();
    assert_eq!(full.answers.len(), 1);
}

#[test]
fn powerdns_sees_the_client_subnet_and_the_client_does_not() {
    let pdns = Pdns::start(&[("demo.test.", ZONE)], &["edns-subnet-processing=yes"]);
    let (app, _dir) = inproc::start_with(&[pdns.addr()], "");
    let front = app.dns_addrs[0];
    // No ECS from the client: dnsteer adds 127.0.0.0/24; the answer carries no OPT at all.
    let m = dns_query(
        front,
        "pdns-who.demo.test.",
        RecordType::TXT,
        &QueryOpts::udp(),
    )
    .unwrap();
    assert_eq!(
        support::answer_rdata(&m),
        vec!["pdns saw bestwho=127.0.0.0".to_string()]
    );
    assert!(
        m.edns.is_none(),
        "client sent no EDNS, so no OPT may come back"
    );
    // EDNS without ECS: OPT comes back, ECS does not.
    let m = dns_query(
        front,
        "pdns-who.demo.test.",
        RecordType::TXT,
        &QueryOpts::udp().edns(1232),
    )
    .unwrap();
    assert!(m.edns.is_some());
    assert!(
        support::reply_ecs(&m).is_none(),
        "the ECS dnsteer added must be removed"
    );
    // The client's own ECS goes through untouched and is echoed by PowerDNS.
    let m = dns_query(
        front,
        "pdns-who.demo.test.",
        RecordType::TXT,
        &QueryOpts::tcp().ecs("198.51.100.0/24"),
    )
    .unwrap();
    assert_eq!(
        support::answer_rdata(&m),
        vec!["pdns saw bestwho=198.51.100.0".to_string()]
    );
    assert!(support::reply_ecs(&m).is_some());
}

#[test]
fn ecs_can_be_switched_off() {
    let pdns = Pdns::start(&[("demo.test.", ZONE)], &["edns-subnet-processing=yes"]);
    let (app, _dir) = inproc::start_with(&[pdns.addr()], "add_ecs = false\n");
    let m = dns_query(
        app.dns_addrs[0],
        "pdns-who.demo.test.",
        RecordType::TXT,
        &QueryOpts::udp(),
    )
    .unwrap();
    // PowerDNS now sees dnsteer's own socket address.
    assert_eq!(
        support::answer_rdata(&m),
        vec!["pdns saw bestwho=127.0.0.1".to_string()]
    );
}

#[test]
fn dead_powerdns_gives_servfail_in_time_and_recovers() {
    let mut pdns = Pdns::start(&[("demo.test.", ZONE)], &[]);
    let (app, _dir) = inproc::start_with(&[pdns.addr()], "attempts = 2\n");
    let front = app.dns_addrs[0];
    dns_query(front, "www.demo.test.", RecordType::A, &QueryOpts::udp()).unwrap();
    pdns.stop();
    for opts in [
        QueryOpts::udp().timeout(Duration::from_secs(3)),
        QueryOpts::tcp().timeout(Duration::from_secs(3)),
    ] {
        let t = Instant::now();
        let m = dns_query(front, "www.demo.test.", RecordType::A, &opts)
            .expect("an answer, not silence");
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        // 2 attempts × 500 ms; deadlines are kept to the millisecond.
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "took {:?}",
            t.elapsed()
        );
    }
    pdns.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok =
            dns_query(front, "www.demo.test.", RecordType::A, &QueryOpts::udp()).is_ok_and(|m| {
                m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty()
            });
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after PowerDNS restarted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = inproc::scrape(&app);
    assert!(
        inproc::metric(
            &text,
            "dnsteer_responses_total{transport=\"udp\",rcode=\"SERVFAIL\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        inproc::metric(&text, "dnsteer_upstream_errors_total{") >= 1.0,
        "{text}"
    );
}

#[test]
fn one_of_two_upstreams_down() {
    let pdns = Pdns::start(&[("demo.test.", ZONE)], &[]);
    // A black hole: bound, never answers.
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (app, _dir) = inproc::start_with(
        &[hole.local_addr().unwrap(), pdns.addr()],
        "policy = \"first-available\"\nhealth_check_fall = 2\n",
    );
    let front = app.dns_addrs[0];
    // Before the checks mark it down, queries still succeed on the second attempt.
    let m = dns_query(
        front,
        "www.demo.test.",
        RecordType::A,
        &QueryOpts::udp().timeout(Duration::from_secs(3)),
    )
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    // After fall × (timeout + interval) the hole is marked down (bounded wait)...
    let hole_healthy = format!(
        "dnsteer_upstream_healthy{{server=\"{}\"}}",
        hole.local_addr().unwrap()
    );
    let hole_requests = format!(
        "dnsteer_upstream_requests_total{{server=\"{}\"}}",
        hole.local_addr().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while inproc::metric(&inproc::scrape(&app), &hole_healthy) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the black hole is never marked down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and then no query goes there any more.
    let sent_to_hole = inproc::metric(&inproc::scrape(&app), &hole_requests);
    for _ in 0..20 {
        let m = dns_query(front, "www.demo.test.", RecordType::A, &QueryOpts::udp()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    let text = inproc::scrape(&app);
    assert_eq!(
        inproc::metric(&text, &hole_requests),
        sent_to_hole,
        "the dead server is still being tried: {text}"
    );
    assert!(
        text.contains(&format!(
            "dnsteer_upstream_healthy{{server=\"{}\"}} 1",
            pdns.addr()
        )),
        "{text}"
    );
}

#[test]
fn garbage_is_dropped_or_answered_and_counted() {
    let pdns = Pdns::start(&[("demo.test.", ZONE)], &[]);
    let (app, _dir) = inproc::start_with(&[pdns.addr()], "");
    let front = app.dns_addrs[0];
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 1024];
    // Runts and responses: silence (no reflection).
    for pkt in [
        &b"\x01"[..],
        &[0u8; 11][..],
        &[0x12, 0x34, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1][..],
    ] {
        sock.send_to(pkt, front).unwrap();
        assert!(
            sock.recv_from(&mut buf).is_err(),
            "{pkt:?} must not be answered"
        );
    }
    // Opcode 2 (STATUS): NOTIMP. A question with a compression pointer: FORMERR.
    let notimp = [0xab, 0xcd, 0x10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
    sock.send_to(&notimp, front).unwrap();
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0xab, 0xcd]);
    assert_eq!(buf[3] & 0x0f, 4, "NOTIMP");
    assert!(n <= notimp.len());
    let formerr = [
        0xab, 0xce, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1,
    ];
    sock.send_to(&formerr, front).unwrap();
    let (_, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
    // Random bytes: whatever happens, the server survives and keeps answering.
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2000 {
        let len = rng.usize(0..600);
        let pkt: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        sock.send_to(&pkt, front).unwrap();
    }
    // Oversize / bogus TCP frames close the connection without harming others.
    let mut t = TcpStream::connect(front).unwrap();
    t.write_all(&[0, 3, 1, 2, 3]).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(
        t.read(&mut buf).unwrap_or(0),
        0,
        "a 3-byte frame closes the connection"
    );
    let m = dns_query(front, "www.demo.test.", RecordType::A, &QueryOpts::udp()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let text = inproc::scrape(&app);
    assert!(
        inproc::metric(&text, "dnsteer_dropped_total{reason=\"too_short\"}") >= 2.0,
        "{text}"
    );
    assert!(
        inproc::metric(&text, "dnsteer_dropped_total{reason=\"is_response\"}") >= 1.0,
        "{text}"
    );
    assert!(
        inproc::metric(&text, "dnsteer_malformed_total{kind=\"notimp\"}") >= 1.0,
        "{text}"
    );
    assert!(
        inproc::metric(&text, "dnsteer_malformed_total{kind=\"formerr\"}") >= 1.0,
        "{text}"
    );
    assert!(
        inproc::metric(&text, "dnsteer_dropped_total{reason=\"tcp_bad_frame\"}") >= 1.0,
        "{text}"
    );
}

#[test]
fn tcp_pipelining_100_queries_on_one_connection() {
    let pdns = Pdns::start(&[("demo.test.", ZONE)], &[]);
    let (app, _dir) = inproc::start_with(&[pdns.addr()], "");
    let mut t = TcpStream::connect(app.dns_addrs[0]).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let names = [
        "www.demo.test.",
        "mail.demo.test.",
        "static.demo.test.",
        "nope.demo.test.",
    ];
    let mut want = std::collections::HashMap::new();
    let mut burst = Vec::new();
    for i in 0..100u16 {
        let name = names[i as usize % names.len()];
        let (_, mut wire) = support::build_query(name, RecordType::A, &QueryOpts::tcp());
        wire[0..2].copy_from_slice(&i.to_be_bytes());
        want.insert(i, name.to_string());
        burst.extend_from_slice(&(wire.len() as u16).to_be_bytes());
        burst.extend_from_slice(&wire);
    }
    // All 100 written before reading a single answer.
    t.write_all(&burst).unwrap();
    for _ in 0..100 {
        let frame = support::read_tcp_frame(&mut t).expect("an answer per query");
        let m = Message::from_vec(&frame).unwrap();
        let name = want.remove(&m.metadata.id).expect("each ID answered once");
        assert_eq!(m.queries[0].name().to_ascii().to_lowercase(), name);
    }
    assert!(want.is_empty());
}

/// A fake UDP upstream on loopback: `answers(query)` gives the datagrams it sends back for
/// each packet it receives. Stops (and is joined) when dropped.
struct FakeUpstream {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUpstream {
    fn start(answers: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static) -> FakeUpstream {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    for a in answers(&buf[..n]) {
                        let _ = sock.send_to(&a, from);
                    }
                }
            }
        });
        FakeUpstream {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn an_upstream_answering_garbage_gives_servfail_and_is_counted() {
    // A fake upstream that answers every packet with junk (wrong ID, then a runt).
    let fake = FakeUpstream::start(|q| {
        let mut wrong = q.to_vec();
        wrong[0] ^= 0xff;
        wrong[2] |= 0x80;
        vec![wrong, vec![1, 2, 3]]
    });
    let (app, _dir) = inproc::start_with(&[fake.addr], "attempts = 1\n");
    let m = dns_query(
        app.dns_addrs[0],
        "www.demo.test.",
        RecordType::A,
        &QueryOpts::udp(),
    )
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let text = inproc::scrape(&app);
    assert!(
        inproc::metric(
            &text,
            "dnsteer_malformed_total{kind=\"mismatched_upstream_response\"}"
        ) >= 2.0,
        "{text}"
    );
}

#[test]
fn an_upstream_answer_too_big_for_udp_gives_tc() {
    // A fake upstream that answers every query with a 6000-byte datagram: its header and
    // question are right, the rest is padding. No client may get that much over UDP.
    let fake = FakeUpstream::start(|q| {
        let mut answer = q.to_vec();
        answer[2] |= 0x84; // QR, AA
        answer.resize(6000, 0);
        vec![answer]
    });
    let (app, _dir) = inproc::start_with(&[fake.addr], "attempts = 1\n");
    let (id, wire) = support::build_query(
        "www.demo.test.",
        RecordType::A,
        &QueryOpts::udp().edns(4096),
    );
    let reply = support::udp_exchange(app.dns_addrs[0], &wire, Duration::from_secs(2))
        .expect("an answer, not a timeout");
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.id, id);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.truncation, "TC=1: ask again over TCP");
    assert_eq!(m.queries[0].name().to_string(), "www.demo.test.");
    assert!(reply.len() <= wire.len(), "never larger than the query");
    let text = inproc::scrape(&app);
    assert_eq!(
        inproc::metric(&text, "dnsteer_truncated_total"),
        1.0,
        "{text}"
    );
}

#[test]
fn tcp_connection_caps_and_idle_timeout() {
    let pdns = Pdns::start(&[("demo.test.", ZONE)], &[]);
    let (app, _dir) = inproc::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\ntcp_max_connections_per_client = 2\n\
             tcp_idle_timeout = \"300ms\"\ntcp_max_queries_per_connection = 3\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[ratelimit]\nenabled = false\n\
             [upstream]\nservers = [\"{}\"]\n",
        pdns.addr()
    ));
    let front = app.dns_addrs[0];
    let mut buf = [0u8; 64];
    // Two connections are allowed from one client; the third is closed at once.
    let c1 = TcpStream::connect(front).unwrap();
    let c2 = TcpStream::connect(front).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut c3 = TcpStream::connect(front).unwrap();
    c3.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(
        c3.read(&mut buf).unwrap_or(0),
        0,
        "third connection from one client must be closed"
    );
    // An idle connection is closed after the idle timeout.
    let mut idle = c1;
    idle.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let t = Instant::now();
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "idle close took {:?}",
        t.elapsed()
    );
    drop(c2);
    // A connection answers at most 3 queries, then closes.
    std::thread::sleep(Duration::from_millis(100));
    let mut c = TcpStream::connect(front).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for _ in 0..4 {
        let (_, wire) = support::build_query("www.demo.test.", RecordType::A, &QueryOpts::tcp());
        let _ = c.write_all(&(wire.len() as u16).to_be_bytes());
        let _ = c.write_all(&wire);
    }
    let mut answered = 0;
    while support::read_tcp_frame(&mut c).is_ok() {
        answered += 1;
    }
    assert_eq!(answered, 3);
    let text = inproc::scrape(&app);
    assert!(
        inproc::metric(
            &text,
            "dnsteer_dropped_total{reason=\"tcp_connection_cap\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        inproc::metric(
            &text,
            "dnsteer_tcp_connections_total{event=\"closed_idle\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        inproc::metric(
            &text,
            "dnsteer_tcp_connections_total{event=\"closed_query_cap\"}"
        ) >= 1.0,
        "{text}"
    );
}

/// A fake TCP upstream on loopback. Connections accepted while `answering` is off are
/// half-dead for good (read everything, never answer, never close), as a wedged PowerDNS;
/// connections accepted while it is on answer every query with the query itself, QR set.
struct FakeTcpUpstream {
    addr: std::net::SocketAddr,
    answering: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeTcpUpstream {
    fn start() -> FakeTcpUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answering = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let on = answering.clone();
        // Detached: the threads end with the test process.
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let answers = on.load(std::sync::atomic::Ordering::Relaxed);
                std::thread::spawn(move || {
                    while let Ok(mut q) = support::read_tcp_frame(&mut conn) {
                        if answers && q.len() >= 12 {
                            q[2] |= 0x80;
                            let mut frame = (q.len() as u16).to_be_bytes().to_vec();
                            frame.extend_from_slice(&q);
                            if conn.write_all(&frame).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        FakeTcpUpstream { addr, answering }
    }

    fn answer(&self) {
        self.answering
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_silent_tcp_upstream_gives_servfail_in_time_and_the_pool_recovers() {
    let fake = FakeTcpUpstream::start();
    // One worker, so every query meets the same pool; two pooled connections.
    let (app, _dir) = inproc::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[ratelimit]\nenabled = false\n\
         [upstream]\nservers = [\"{}\"]\ntimeout = \"500ms\"\nattempts = 2\ntcp_pool_size = 2\n",
        fake.addr
    ));
    let front = app.dns_addrs[0];
    let opts = QueryOpts::tcp().timeout(Duration::from_secs(5));
    // Enough queries to open every pooled connection, all to a server that never answers.
    for i in 0..4 {
        let t = Instant::now();
        let m = dns_query(front, "www.demo.test.", RecordType::A, &opts)
            .unwrap_or_else(|e| panic!("query {i}: an answer, not silence: {e}"));
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::ServFail,
            "query {i}"
        );
        // 2 attempts × 500 ms, plus scheduling slack.
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "query {i} took {:?}",
            t.elapsed()
        );
    }
    // The server answers again (on new connections): the pool must not stay on the dead ones.
    fake.answer();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = dns_query(front, "www.demo.test.", RecordType::A, &opts).unwrap();
        if m.metadata.response_code == ResponseCode::NoError {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TCP pool did not recover: {:?}",
            m.metadata.response_code
        );
    }
    for i in 0..10 {
        let m = dns_query(front, "www.demo.test.", RecordType::A, &opts).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "query {i}");
    }
    let text = inproc::scrape(&app);
    assert!(
        inproc::metric(&text, "dnsteer_upstream_errors_total{") >= 8.0,
        "{text}"
    );
}

#[test]
fn many_concurrent_queries_on_one_pooled_tcp_connection_all_get_their_answer() {
    let pdns = Pdns::start(&[("demo.test.", ZONE)], &[]);
    // One pooled connection, one attempt: a waiter lost to an ID collision is a SERVFAIL. 64
    // queries in flight (the pooled connection's queue): with random IDs and no collision
    // check, 10 000 queries meet about ten collisions.
    let (app, _dir) = inproc::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\
         tcp_max_in_flight_per_connection = 64\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[ratelimit]\nenabled = false\n\
         [upstream]\nservers = [\"{}\"]\ntimeout = \"5s\"\nattempts = 1\ntcp_pool_size = 1\n",
        pdns.addr()
    ));
    let mut t = TcpStream::connect(app.dns_addrs[0]).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let total = 10_000u16;
    let mut burst = Vec::new();
    for i in 0..total {
        let (_, mut wire) =
            support::build_query("www.demo.test.", RecordType::A, &QueryOpts::tcp());
        wire[0..2].copy_from_slice(&i.to_be_bytes());
        burst.extend_from_slice(&(wire.len() as u16).to_be_bytes());
        burst.extend_from_slice(&wire);
    }
    let writer = {
        let mut t = t.try_clone().unwrap();
        std::thread::spawn(move || t.write_all(&burst).unwrap())
    };
    let mut seen = BTreeSet::new();
    let mut servfail = 0;
    for _ in 0..total {
        let frame = support::read_tcp_frame(&mut t).expect("an answer per query");
        let m = Message::from_vec(&frame).unwrap();
        assert!(
            seen.insert(m.metadata.id),
            "ID {} answered twice",
            m.metadata.id
        );
        servfail += usize::from(m.metadata.response_code == ResponseCode::ServFail);
    }
    writer.join().unwrap();
    let text = inproc::scrape(&app);
    assert_eq!(servfail, 0, "{text}");
    assert_eq!(
        inproc::metric(&text, "dnsteer_upstream_errors_total{"),
        0.0,
        "{text}"
    );
}
