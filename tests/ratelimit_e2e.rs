//! Per-source rate limiting end to end: the real dnsteer binary in front of a real PowerDNS,
//! clients on many 127.0.0.0/8 source addresses, verdicts seen on the wire and in /metrics and
//! /status.
//!
//! `qps = 50, burst = 50, block_for = "2s"` keeps the timing tests short. The tests run one at
//! a time (`serial`): they measure rates, and the 10,000-source ones load both cores.
//!
//! IPv6 /64 aggregation is covered by the unit tests in src/ratelimit.rs: on loopback only
//! ::1 exists, so two sources in one /64 cannot be made end to end. IPv4 aggregation is
//! covered here with `ipv4_prefix = 24`.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    DEMO_ZONE, DEMO_ZONE_NAME, Dnsteer, Pdns, free_addr, parse_metrics, series as get,
    series_delta as delta,
};

const A: u16 = 1;
/// Answered by PowerDNS (forwarded).
const FORWARDED: &str = "www.demo.test";
/// Answered in-process from `[[records]]`.
const IN_PROCESS: &str = "static.demo.test";

/// Tests in this file take turns (see the module doc).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start(pdns: &Pdns, ratelimit: &str) -> Dnsteer {
    let config = format!(
        r#"
[server]
listen = ["{dns}"]
workers = 2

[metrics]
listen = "{metrics}"

[logging]
level = "info"
format = "json"
query_sample_rate = 0.0

[ratelimit]
{ratelimit}

[upstream]
servers = ["{pdns}"]
timeout = "500ms"
health_check_interval = "200ms"

[[records]]
name = "static.demo.test."
type = "A"
ttl = 300
content = ["192.0.2.10", "192.0.2.11"]
"#,
        dns = free_addr(),
        metrics = free_addr(),
        pdns = pdns.addr(),
    );
    Dnsteer::start(&config)
}

fn start_pdns() -> Pdns {
    Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[])
}

// ---------------------------------------------------------------------------------------------
// Wire
// ---------------------------------------------------------------------------------------------

/// A plain query (RD=0, no EDNS): the library's own builder, used by its health checks.
fn query_wire(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let name = dnsteer::dns::name_from_text(name).unwrap();
    dnsteer::dns::build_query(id, &name, qtype, None)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Resp {
    id: u16,
    qr: bool,
    tc: bool,
    rcode: u8,
    answers: u16,
    authorities: u16,
    /// Question section bytes, for comparison with the query's.
    question: Vec<u8>,
}

const NOERROR: u8 = 0;
const REFUSED: u8 = 5;

impl Resp {
    fn parse(b: &[u8], question_len: usize) -> Resp {
        assert!(b.len() >= 12, "runt response {b:?}");
        Resp {
            id: u16::from_be_bytes([b[0], b[1]]),
            qr: b[2] & 0x80 != 0,
            tc: b[2] & 0x02 != 0,
            rcode: b[3] & 0x0f,
            answers: u16::from_be_bytes([b[6], b[7]]),
            authorities: u16::from_be_bytes([b[8], b[9]]),
            question: b.get(12..12 + question_len).unwrap_or(&[]).to_vec(),
        }
    }

    /// A normal positive answer.
    fn answered(&self) -> bool {
        self.qr && !self.tc && self.rcode == NOERROR && self.answers > 0
    }
}

fn udp_from(src: &str, server: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind((src.parse::<IpAddr>().unwrap(), 0))
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    s.connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Sends one query and waits for its answer (None on timeout).
fn ask(sock: &UdpSocket, id: u16, name: &str) -> Option<Resp> {
    let q = query_wire(id, name, A);
    sock.send(&q).unwrap();
    let mut buf = [0u8; 1500];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let r = Resp::parse(&buf[..n], q.len() - 12);
                if r.id == id {
                    assert_eq!(r.question, q[12..], "the question is echoed");
                    return Some(r);
                }
            }
            Err(_) => return None,
        }
    }
}

/// A TCP query from a chosen source address.
fn ask_tcp(src: &str, server: SocketAddr, id: u16, name: &str) -> Resp {
    use std::io::{Read, Write};
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(src.parse().unwrap(), 0).into())
        .unwrap();
    sock.connect_timeout(&server.into(), Duration::from_secs(2))
        .unwrap();
    let mut stream: std::net::TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let q = query_wire(id, name, A);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    stream.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    Resp::parse(&body, q.len() - 12)
}

/// A UDP client that sends on a schedule while a reader thread notes which IDs were answered.
struct Paced {
    sock: UdpSocket,
    sent: Vec<Instant>,
    answered: Arc<Mutex<HashSet<u16>>>,
    reader: Option<thread::JoinHandle<()>>,
    stop: Arc<AtomicUsize>,
}

impl Paced {
    fn new(src: &str, server: SocketAddr) -> Paced {
        let sock = udp_from(src, server);
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let rx = sock.try_clone().unwrap();
        let answered = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicUsize::new(0));
        let reader = {
            let answered = answered.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while stop.load(Ordering::Relaxed) == 0 {
                    if let Ok(n) = rx.recv(&mut buf) {
                        let r = Resp::parse(&buf[..n], 0);
                        // Under `drop` a limited query gets nothing: anything but a normal
                        // answer is a failure, recorded under an ID no query uses.
                        let id = if r.answered() { r.id } else { u16::MAX };
                        answered.lock().unwrap().insert(id);
                    }
                }
            })
        };
        Paced {
            sock,
            sent: Vec::new(),
            answered,
            reader: Some(reader),
            stop,
        }
    }

    /// Sends `n` queries, one per `every`; IDs continue from the previous call.
    fn send(&mut self, n: usize, every: Duration) {
        let t0 = Instant::now();
        for i in 0..n {
            let at = t0 + every * i as u32;
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let id = self.sent.len() as u16;
            self.sent.push(Instant::now());
            self.sock.send(&query_wire(id, FORWARDED, A)).unwrap();
        }
    }

    fn answered(&self, id: usize) -> bool {
        self.answered.lock().unwrap().contains(&(id as u16))
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        self.stop.store(1, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics and status
// ---------------------------------------------------------------------------------------------

/// Prometheus text → `name{labels}` → value.
fn scrape(d: &Dnsteer) -> HashMap<String, f64> {
    let (code, body) = d.get("/metrics");
    assert_eq!(code, 200);
    parse_metrics(&body)
}

fn top_blocked(d: &Dnsteer) -> Vec<String> {
    let (code, body) = d.get("/status");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["ratelimit"]["top_blocked"]
        .as_array()
        .expect("top_blocked is a list")
        .iter()
        .map(|b| b["prefix"].as_str().unwrap().to_string())
        .collect()
}

fn log_lines(d: &Dnsteer) -> Vec<serde_json::Value> {
    d.log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

const LIMITED_DROP: &str = "dnsteer_ratelimit_limited_total{action=\"drop\"}";
const LIMITED_REFUSED: &str = "dnsteer_ratelimit_limited_total{action=\"refused\"}";
const LIMITED_TRUNCATE: &str = "dnsteer_ratelimit_limited_total{action=\"truncate\"}";
const BLOCKS: &str = "dnsteer_ratelimit_blocks_total";
const BLOCKED: &str = "dnsteer_ratelimit_blocked_sources";
const TRACKED: &str = "dnsteer_ratelimit_tracked_sources";
const EVICTIONS: &str = "dnsteer_ratelimit_evictions_total";
const CHECKS: &str = "dnsteer_ratelimit_checks_total";
const DRY_RUN: &str = "dnsteer_ratelimit_dry_run_total";

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn drop_blocks_a_source_at_twice_the_rate_for_block_for() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(
        &pdns,
        "qps = 50\nburst = 50\nblock_for = \"2s\"\naction = \"drop\"",
    );
    let before = scrape(&d);
    let mut c = Paced::new("127.0.1.1", d.dns_addr());

    // 100 qps, twice the rate, for 1.5 s: the burst of 50 plus the refill (one debt of 10 ms
    // per query against a 1 s allowance) lasts ~100 queries, then the block starts.
    c.send(150, Duration::from_millis(10));
    thread::sleep(Duration::from_millis(300));
    let first_limited = (0..150)
        .find(|&i| !c.answered(i))
        .expect("a source at twice the rate gets limited");
    assert!(
        (90..=130).contains(&first_limited),
        "first limited query {first_limited}"
    );
    assert!(
        (0..first_limited).all(|i| c.answered(i)),
        "everything before the block is answered"
    );
    assert!(
        (first_limited..150).all(|i| !c.answered(i)),
        "nothing is answered once the block started"
    );
    assert!(!c.answered(usize::from(u16::MAX)), "only normal answers");
    let block_start = c.sent[first_limited];
    let limited = (150 - first_limited) as f64;

    let during = scrape(&d);
    assert_eq!(delta(&before, &during, LIMITED_DROP), limited);
    assert_eq!(
        delta(
            &before,
            &during,
            "dnsteer_dropped_total{reason=\"rate_limited\"}"
        ),
        limited
    );
    assert_eq!(
        delta(
            &before,
            &during,
            "dnsteer_queries_total{transport=\"udp\",decision=\"limited\"}"
        ),
        limited
    );
    assert_eq!(delta(&before, &during, BLOCKS), 1.0);
    assert_eq!(get(&during, BLOCKED), 1.0);
    assert_eq!(top_blocked(&d), ["127.0.1.1/32"]);

    // Still blocked, however slowly it asks, until block_for has passed.
    let quiet_until = block_start + Duration::from_millis(1800);
    let from = c.sent.len();
    while Instant::now() < quiet_until {
        c.send(1, Duration::ZERO);
        thread::sleep(Duration::from_millis(50));
    }
    let to = c.sent.len();

    // After block_for: a fresh bucket, answered again.
    let fresh_at = block_start + Duration::from_millis(2300);
    if let Some(wait) = fresh_at.checked_duration_since(Instant::now()) {
        thread::sleep(wait);
    }
    let again = c.sent.len();
    c.send(40, Duration::from_millis(10));
    thread::sleep(Duration::from_millis(300));
    assert!(
        (from..to).all(|i| !c.answered(i)),
        "queries during the block are dropped"
    );
    let answered_again = (again..again + 40).filter(|&i| c.answered(i)).count();
    assert_eq!(answered_again, 40, "served again after block_for");

    let after = scrape(&d);
    assert_eq!(delta(&before, &after, BLOCKS), 1.0, "no second block");
    assert_eq!(get(&after, BLOCKED), 0.0);
    assert!(top_blocked(&d).is_empty());
    // The end of the block is logged too (the control plane notices within a second).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let ended = log_lines(&d).into_iter().any(|l| {
            l["target"] == "dnsteer::ratelimit"
                && l["fields"]["message"] == "block ended"
                && l["fields"]["source"] == "127.0.1.1/32"
        });
        if ended {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 'block ended' line: {}",
            d.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        delta(&before, &after, LIMITED_DROP),
        limited + (to - from) as f64
    );
    assert!(!c.answered(usize::from(u16::MAX)), "only normal answers");
}

/// Sends `n` queries one after the other from one socket; returns the responses in order.
fn burst(sock: &UdpSocket, first_id: u16, n: u16, name: &str) -> Vec<Resp> {
    (first_id..first_id + n)
        .map(|id| ask(sock, id, name).unwrap_or_else(|| panic!("query {id} got no answer")))
        .collect()
}

/// Index of the first limited response; all before are answered, none after.
fn split_at_block(rs: &[Resp], is_limited: impl Fn(&Resp) -> bool) -> usize {
    let k = rs
        .iter()
        .position(&is_limited)
        .expect("the source got limited");
    assert!(rs[..k].iter().all(Resp::answered), "{:?}", &rs[..k]);
    assert!(rs[k..].iter().all(is_limited), "{:?}", &rs[k..]);
    k
}

#[test]
fn refused_and_truncate_on_the_wire() {
    let _serial = serial();
    let pdns = start_pdns();

    // refused: REFUSED with the query's ID and question (checked by `ask`), over UDP and TCP.
    let d = start(
        &pdns,
        "qps = 50\nburst = 50\nblock_for = \"2s\"\naction = \"refused\"",
    );
    let before = scrape(&d);
    let sock = udp_from("127.0.2.1", d.dns_addr());
    let rs = burst(&sock, 1000, 80, IN_PROCESS);
    let k = split_at_block(&rs, |r| r.qr && r.rcode == REFUSED);
    assert!((50..=65).contains(&k), "answered before the block: {k}");
    assert!(
        rs[k..]
            .iter()
            .all(|r| !r.tc && r.answers == 0 && r.authorities == 0)
    );
    let tcp = ask_tcp("127.0.2.1", d.dns_addr(), 7, IN_PROCESS);
    assert_eq!(tcp.rcode, REFUSED, "refused applies to TCP too");
    // A response-shaped packet from the blocked source is limited and never answered.
    let mut response = query_wire(9, IN_PROCESS, A);
    response[2] |= 0x80;
    sock.send(&response).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        sock.recv(&mut [0u8; 512]).is_err(),
        "no answer to a response"
    );
    let after = scrape(&d);
    assert_eq!(
        delta(
            &before,
            &after,
            "dnsteer_dropped_total{reason=\"is_response\"}"
        ),
        1.0
    );
    assert_eq!(delta(&before, &after, LIMITED_REFUSED), (80 - k + 2) as f64);
    assert_eq!(
        delta(
            &before,
            &after,
            "dnsteer_responses_total{transport=\"udp\",rcode=\"REFUSED\"}"
        ),
        (80 - k) as f64
    );
    assert_eq!(delta(&before, &after, LIMITED_DROP), 0.0);
    drop(d);

    // truncate: TC=1 and nothing else over UDP; TCP from the same blocked source is answered.
    let d = start(
        &pdns,
        "qps = 50\nburst = 50\nblock_for = \"2s\"\naction = \"truncate\"",
    );
    let before = scrape(&d);
    let sock = udp_from("127.0.2.2", d.dns_addr());
    let rs = burst(&sock, 2000, 80, FORWARDED);
    let k = split_at_block(&rs, |r| r.qr && r.tc);
    assert!((50..=65).contains(&k), "answered before the block: {k}");
    assert!(
        rs[k..]
            .iter()
            .all(|r| r.rcode == NOERROR && r.answers == 0 && r.authorities == 0)
    );
    for (id, name) in [(1, FORWARDED), (2, IN_PROCESS)] {
        let r = ask_tcp("127.0.2.2", d.dns_addr(), id, name);
        assert!(
            r.answered(),
            "TCP from a blocked source under truncate: {r:?}"
        );
    }
    let after = scrape(&d);
    assert_eq!(get(&after, BLOCKED), 1.0, "still blocked");
    assert_eq!(
        delta(&before, &after, LIMITED_TRUNCATE),
        (80 - k) as f64,
        "TCP queries are not limited"
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "dnsteer_queries_total{transport=\"tcp\",decision=\"limited\"}"
        ),
        0.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "dnsteer_queries_total{transport=\"tcp\",decision=\"forwarded\"}"
        ),
        1.0
    );
}

#[test]
fn exempt_prefixes_and_ipv4_aggregation() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(
        &pdns,
        "qps = 50\nburst = 50\nblock_for = \"2s\"\naction = \"refused\"\n\
         ipv4_prefix = 24\nexempt = [\"127.0.0.64/26\"]",
    );
    let before = scrape(&d);

    // Exempt: 200 back to back from each of two addresses in the /26, all answered.
    for src in ["127.0.0.70", "127.0.0.127"] {
        let sock = udp_from(src, d.dns_addr());
        let rs = burst(&sock, 0, 200, IN_PROCESS);
        assert!(rs.iter().all(Resp::answered), "{src} is exempt");
    }
    // The same /24 outside the exempt /26 is limited.
    let sock = udp_from("127.0.0.130", d.dns_addr());
    let rs = burst(&sock, 0, 100, IN_PROCESS);
    split_at_block(&rs, |r| r.rcode == REFUSED);

    // /24 aggregation: two sources in 127.0.5.0/24 share one bucket.
    let a = udp_from("127.0.5.1", d.dns_addr());
    let rs = burst(&a, 0, 40, IN_PROCESS);
    assert!(rs.iter().all(Resp::answered));
    let b = udp_from("127.0.5.2", d.dns_addr());
    let rs = burst(&b, 100, 40, IN_PROCESS);
    let k = split_at_block(&rs, |r| r.rcode == REFUSED);
    assert!(
        k <= 25,
        "127.0.5.2 drew on 127.0.5.1's bucket: {k} answered"
    );
    // ... and a source in another /24 does not.
    let c = udp_from("127.0.6.1", d.dns_addr());
    let rs = burst(&c, 0, 45, IN_PROCESS);
    assert!(
        rs.iter().all(Resp::answered),
        "127.0.6.0/24 has its own bucket"
    );

    let after = scrape(&d);
    assert_eq!(delta(&before, &after, BLOCKS), 2.0);
    assert_eq!(get(&after, BLOCKED), 2.0);
    let mut top = top_blocked(&d);
    top.sort();
    assert_eq!(top, ["127.0.0.0/24", "127.0.5.0/24"]);
    // Every query is checked, exempt ones included.
    assert_eq!(
        delta(&before, &after, CHECKS),
        400.0 + 100.0 + 40.0 + 40.0 + 45.0
    );
}

#[test]
fn dry_run_limits_nothing_but_counts_and_logs() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(
        &pdns,
        "qps = 50\nburst = 50\nblock_for = \"2s\"\naction = \"refused\"\ndry_run = true",
    );
    let before = scrape(&d);
    let sock = udp_from("127.0.3.1", d.dns_addr());
    let rs = burst(&sock, 0, 150, IN_PROCESS);
    assert!(rs.iter().all(Resp::answered), "dry run answers everything");

    let after = scrape(&d);
    let would = delta(&before, &after, DRY_RUN);
    // 150 back to back in well under 2 s: ~50 + what refilled pass, the rest would be limited.
    assert!((50.0..=100.0).contains(&would), "would-be-limited {would}");
    assert_eq!(delta(&before, &after, BLOCKS), 1.0);
    for series in [LIMITED_DROP, LIMITED_REFUSED, LIMITED_TRUNCATE] {
        assert_eq!(delta(&before, &after, series), 0.0, "{series}");
    }
    assert_eq!(
        delta(
            &before,
            &after,
            "dnsteer_responses_total{transport=\"udp\",rcode=\"REFUSED\"}"
        ),
        0.0
    );

    // The block start is logged once, marked as dry run.
    let deadline = Instant::now() + Duration::from_secs(5);
    let blocks = loop {
        let blocks: Vec<_> = log_lines(&d)
            .into_iter()
            .filter(|l| l["target"] == "dnsteer::ratelimit")
            .collect();
        if !blocks.is_empty() || Instant::now() > deadline {
            break blocks;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(blocks.len(), 1, "{}", d.log());
    let f = &blocks[0]["fields"];
    assert_eq!(f["source"], "127.0.3.1/32", "{f}");
    assert_eq!(f["dry_run"], true, "{f}");
    assert_eq!(blocks[0]["level"], "WARN");
}

/// 10,000 loopback addresses: 127.10.x.y, x in 0..40, y in 1..=250.
fn many_sources() -> Vec<String> {
    (0..40)
        .flat_map(|x| (1..=250).map(move |y| format!("127.10.{x}.{y}")))
        .collect()
}

const PER_SOURCE: u16 = 3;

/// Each source sends `PER_SOURCE` queries (pipelined) and reads the answers; 4 threads, one
/// socket each at a time, so fds stay few and nothing queues up enough to be lost. Returns
/// the time of each source's first query and how many queries were answered.
fn flood(server: SocketAddr, sources: &[String]) -> (Vec<Instant>, usize) {
    const THREADS: usize = 4;
    let chunks: Vec<Vec<String>> = (0..THREADS)
        .map(|t| sources.iter().skip(t).step_by(THREADS).cloned().collect())
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            thread::spawn(move || {
                let mut firsts = Vec::with_capacity(chunk.len());
                let mut answered = 0;
                let mut buf = [0u8; 512];
                for src in &chunk {
                    let sock = udp_from(src, server);
                    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                    firsts.push(Instant::now());
                    for id in 0..PER_SOURCE {
                        sock.send(&query_wire(id, IN_PROCESS, A)).unwrap();
                    }
                    for _ in 0..PER_SOURCE {
                        match sock.recv(&mut buf) {
                            Ok(n) if Resp::parse(&buf[..n], 0).answered() => answered += 1,
                            Ok(n) => panic!("{src}: {:?}", Resp::parse(&buf[..n], 0)),
                            Err(_) => break,
                        }
                    }
                }
                (firsts, answered)
            })
        })
        .collect();
    let mut firsts = Vec::new();
    let mut answered = 0;
    for h in handles {
        let (f, a) = h.join().unwrap();
        firsts.extend(f);
        answered += a;
    }
    (firsts, answered)
}

/// With qps = 1 a source that sent 3 queries at `t` carries debt (is tracked) until `t + 3 s`:
/// how many sources must still be tracked at `at`.
fn still_in_debt(firsts: &[Instant], at: Instant) -> usize {
    let debt = Duration::from_secs(u64::from(PER_SOURCE));
    firsts.iter().filter(|&&t| t + debt > at).count()
}

// qps = 1 (not 50) in the two tests below: a source below its rate is tracked only while it
// carries debt, 3 queries × 1 s here, long enough for the gauge to be read after 10,000
// sources. At qps = 50 the debt would last 60 ms.
const MANY: &str = "qps = 1\nburst = 10\nblock_for = \"30s\"\naction = \"refused\"";

#[test]
fn ten_thousand_sources_below_the_rate_are_all_answered_and_tracked() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(&pdns, &format!("{MANY}\nmax_tracked_sources = 65536"));
    let before = scrape(&d);
    let sources = many_sources();
    let t0 = Instant::now();
    let (firsts, answered) = flood(d.dns_addr(), &sources);
    eprintln!(
        "10,000 sources × {PER_SOURCE} queries in {:?}",
        t0.elapsed()
    );
    assert_eq!(answered, sources.len() * PER_SOURCE as usize);

    let must = still_in_debt(&firsts, Instant::now() + Duration::from_secs(1));
    let after = scrape(&d);
    let tracked = get(&after, TRACKED) as usize;
    // 10,000 sources hashed into 16,384 buckets of 4 slots: a handful of buckets get a fifth
    // source, which evicts one still in debt. Each such eviction is counted.
    let evicted = delta(&before, &after, EVICTIONS) as usize;
    assert!(evicted < 50, "evictions {evicted}");
    assert!(
        tracked + evicted >= must && tracked <= sources.len(),
        "tracked {tracked} + evicted {evicted}, at least {must} still in debt"
    );
    assert!(must > 0, "the flood took too long to check the gauge");
    assert_eq!(delta(&before, &after, BLOCKS), 0.0);
    assert_eq!(delta(&before, &after, LIMITED_REFUSED), 0.0);
}

#[test]
fn ten_thousand_sources_against_a_4096_table_keep_a_block() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(&pdns, &format!("{MANY}\nmax_tracked_sources = 4096"));

    // One abuser gets blocked first.
    let abuser = udp_from("127.9.9.9", d.dns_addr());
    let rs = burst(&abuser, 0, 15, IN_PROCESS);
    split_at_block(&rs, |r| r.rcode == REFUSED);
    let before = scrape(&d);
    assert_eq!(get(&before, BLOCKED), 1.0);

    let sources = many_sources();
    let (firsts, answered) = flood(d.dns_addr(), &sources);
    assert_eq!(
        answered,
        sources.len() * PER_SOURCE as usize,
        "a full table fails open"
    );
    let must = still_in_debt(&firsts, Instant::now() + Duration::from_secs(1));
    let after = scrape(&d);
    let tracked = get(&after, TRACKED) as usize;
    assert!(tracked <= 4096, "the table never grows: {tracked}");
    // Sources in debt fill the table up to its 4-way buckets' collisions.
    assert!(
        tracked * 10 >= must.min(4096) * 7,
        "tracked {tracked}, {must} in debt"
    );
    assert!(delta(&before, &after, EVICTIONS) > 0.0);
    assert_eq!(get(&after, BLOCKED), 1.0, "the block survived the flood");
    let r = ask(&abuser, 500, IN_PROCESS).expect("an answer");
    assert_eq!(r.rcode, REFUSED, "the abuser is still blocked");
    assert_eq!(top_blocked(&d), ["127.9.9.9/32"]);
}
