//! Response rate limiting (`[ratelimit] mode = "rrl"`) end to end: the real dnsteer binary in
//! front of a real PowerDNS, clients on many 127.0.0.0/8 source addresses (a socket bound to
//! an address is how a spoofed source looks on loopback), answers and bytes counted on the wire.
//!
//! The tests run one at a time (`serial`): they measure rates.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use support::{Dnsteer, Pdns, free_addr, parse_metrics, series as get};

const A: u16 = 1;
const TXT: u16 = 16;
const ANY: u16 = 255;

/// Answered by PowerDNS (forwarded), ~650 bytes.
const BIG: &str = "big.rrl.test";
/// Answered in-process from `[[records]]`.
const IN_PROCESS: &str = "static.rrl.test";

/// 3 × 200-byte strings: with EDNS the answer fits in UDP and is ~15× the query.
fn zone() -> String {
    let s = "0123456789".repeat(20);
    let txt = format!("( \"{s}\" \"{s}\" \"{s}\" )");
    let mut z = format!(
        "$ORIGIN rrl.test.\n$TTL 300\n\
         @ IN SOA ns1.rrl.test. hostmaster.rrl.test. 1 3600 600 86400 60\n\
         @ IN NS ns1.rrl.test.\nns1 IN A 127.0.0.1\nwww IN A 192.0.2.80\n\
         static IN A 192.0.2.10\nbig IN TXT {txt}\n"
    );
    for i in 0..40 {
        z.push_str(&format!("big{i} IN TXT {txt}\nbig{i} IN A 192.0.2.{i}\n"));
    }
    z
}

/// Tests in this file take turns (see the module doc).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start_pdns() -> Pdns {
    Pdns::start(&[("rrl.test.", &zone())], &[])
}

fn start(pdns: &Pdns, ratelimit: &str, extra: &str) -> Dnsteer {
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
mode = "rrl"
{ratelimit}

[upstream]
servers = ["{pdns}"]
timeout = "500ms"
health_check_interval = "200ms"

[[records]]
name = "static.rrl.test."
type = "A"
ttl = 300
content = ["192.0.2.10"]
{extra}
"#,
        dns = free_addr(),
        metrics = free_addr(),
        pdns = pdns.addr(),
    );
    Dnsteer::start(&config)
}

fn scrape(d: &Dnsteer) -> HashMap<String, f64> {
    let (code, body) = d.get("/metrics");
    assert_eq!(code, 200);
    parse_metrics(&body)
}

fn limited(m: &HashMap<String, f64>, kind: &str, outcome: &str) -> f64 {
    get(
        m,
        &format!("dnsteer_rrl_limited_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}"),
    )
}

// ---------------------------------------------------------------------------------------------
// Wire
// ---------------------------------------------------------------------------------------------

/// A query with EDNS (1232 bytes), as a resolver sends it.
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let name = dnsteer::dns::name_from_text(name).unwrap();
    let edns = dnsteer::dns::QueryEdns {
        udp_size: 1232,
        dnssec_ok: false,
    };
    dnsteer::dns::build_query(id, &name, qtype, Some(edns))
}

#[derive(Debug, Clone, Copy)]
struct Resp {
    id: u16,
    tc: bool,
    rcode: u8,
    answers: u16,
    len: usize,
}

impl Resp {
    fn parse(b: &[u8]) -> Resp {
        assert!(b.len() >= 12, "runt response {b:?}");
        assert!(b[2] & 0x80 != 0, "QR set");
        Resp {
            id: u16::from_be_bytes([b[0], b[1]]),
            tc: b[2] & 0x02 != 0,
            rcode: b[3] & 0x0f,
            answers: u16::from_be_bytes([b[6], b[7]]),
            len: b.len(),
        }
    }

    fn answered(&self) -> bool {
        !self.tc && self.rcode == 0 && self.answers > 0
    }
}

fn udp_from(src: &str, server: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind((src.parse::<IpAddr>().unwrap(), 0))
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    s.connect(server).unwrap();
    s
}

/// Everything `sock` receives until it has been quiet for `quiet`.
fn drain(sock: &UdpSocket, quiet: Duration) -> Vec<Resp> {
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(Resp::parse(&buf[..n]));
    }
    out
}

/// A query over TCP from `src`.
fn ask_tcp(src: &str, server: SocketAddr, id: u16, name: &str, qtype: u16) -> Resp {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(src.parse().unwrap(), 0).into())
        .unwrap();
    sock.connect_timeout(&server.into(), Duration::from_secs(2))
        .unwrap();
    let mut stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let q = query(id, name, qtype);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    stream.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    Resp::parse(&body)
}

/// Responses a budget of `rate`/s refills while a flood lasted `took`, plus one for the
/// answers still on their way when it ended.
fn refill(took: Duration, rate: u32) -> usize {
    (took.as_secs_f64() * f64::from(rate)).ceil() as usize + 1
}

/// Sends `n` queries from `sock`, one every `every` (0: back to back); returns the bytes sent.
fn flood(sock: &UdpSocket, n: usize, every: Duration, q: impl Fn(u16) -> Vec<u8>) -> usize {
    let t0 = Instant::now();
    let mut bytes = 0;
    for i in 0..n {
        if let Some(wait) = (t0 + every * i as u32).checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let pkt = q(i as u16);
        bytes += pkt.len();
        sock.send(&pkt).unwrap();
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// (a) A spoofed flood carrying a resolver's address: the resolver (the victim) receives no
/// more bytes than the attacker sent, and still resolves: the TC=1 slips send it to TCP.
#[test]
fn spoofed_flood_reflects_less_than_it_sends_and_the_resolver_still_resolves() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(
        &pdns,
        "responses_per_second = 5\nwindow = 2\nslip = 2\nbytes_per_second = 0",
        "",
    );
    let server = d.dns_addr();
    let resolver = "127.0.0.53";
    // Without RRL each query would bring back ~15× its size.
    let probe = udp_from("127.0.1.1", server);
    let before = scrape(&d);

    // The attacker's packets, with the resolver's address as their source.
    let attack = udp_from(resolver, server);
    let reader = {
        let rx = attack.try_clone().unwrap();
        thread::spawn(move || drain(&rx, Duration::from_millis(800)))
    };
    let t0 = Instant::now();
    let sent = flood(&attack, 400, Duration::from_micros(500), |i| {
        query(i, BIG, TXT)
    });
    let took = t0.elapsed();
    let reflected = reader.join().unwrap();
    let reflected_bytes: usize = reflected.iter().map(|r| r.len).sum();
    let full = reflected.iter().filter(|r| r.answered()).count();
    let slips = reflected.iter().filter(|r| r.tc).count();
    eprintln!(
        "attack {sent} B in 400 queries; reflected {reflected_bytes} B: {full} answers, {slips} TC"
    );
    assert!(
        reflected_bytes <= sent,
        "reflected {reflected_bytes} > attack {sent}"
    );
    // 5/s with a second's burst, plus the refill while the flood lasted (~0.2 s).
    let bound = 5 + refill(took, 5);
    assert!(
        (5..=bound).contains(&full),
        "{full} full answers in {took:?}"
    );
    assert!(slips > 100, "every other limited answer slips: {slips}");
    assert!(
        reflected.iter().filter(|r| r.tc).all(|r| r.len <= 41),
        "a slip is header and question only"
    );

    // The resolver itself, during the debt: UDP until an answer or a TC, then TCP.
    let sock = udp_from(resolver, server);
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut got_tc = false;
    for id in 1000..1008u16 {
        sock.send(&query(id, BIG, TXT)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let r = Resp::parse(&buf[..n]);
            assert_eq!(r.id, id);
            assert!(r.tc, "still limited: only a slip comes back, {r:?}");
            got_tc = true;
            break;
        }
    }
    assert!(got_tc, "a slip within a few retries");
    let r = ask_tcp(resolver, server, 2000, BIG, TXT);
    assert!(r.answered() && r.len > 600, "TCP answers in full: {r:?}");

    let after = scrape(&d);
    let slipped = limited(&after, "positive", "slipped") - limited(&before, "positive", "slipped");
    let dropped = limited(&after, "positive", "dropped") - limited(&before, "positive", "dropped");
    assert!(
        slipped >= slips as f64 && dropped > 100.0,
        "{slipped} {dropped}"
    );
    // Once the name's budget was spent, the flood stopped reaching PowerDNS.
    let unforwarded = get(&after, "dnsteer_rrl_not_forwarded_total")
        - get(&before, "dnsteer_rrl_not_forwarded_total");
    assert!(unforwarded > 0.0, "queries stopped before forwarding");
    // Another /24 is untouched (127.0.0.1 would share the resolver's).
    probe.send(&query(7, BIG, TXT)).unwrap();
    let r = drain(&probe, Duration::from_millis(500));
    assert!(r.len() == 1 && r[0].answered(), "{r:?}");
}

/// (b) Carpet bombing: one query each from 254 addresses of a /24 is limited as one source.
#[test]
fn carpet_bombing_over_a_24_is_limited_as_one() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(&pdns, "responses_per_second = 5\nwindow = 2\nslip = 0", "");
    let server = d.dns_addr();
    let socks: Vec<UdpSocket> = (1..=254)
        .map(|i| udp_from(&format!("127.0.9.{i}"), server))
        .collect();
    let t0 = Instant::now();
    for (i, s) in socks.iter().enumerate() {
        s.send(&query(i as u16, IN_PROCESS, A)).unwrap();
    }
    let took = t0.elapsed();
    let answered: usize = socks
        .iter()
        .map(|s| {
            drain(s, Duration::from_millis(30))
                .iter()
                .filter(|r| r.answered())
                .count()
        })
        .sum();
    // The /24's burst of 5, plus 5/s while the queries went out.
    let bound = 5 + refill(took, 5);
    assert!(answered <= bound, "{answered} of 254 answered in {took:?}");
    assert!(answered >= 5, "the burst passes: {answered}");
    // The next /24 has its own budget.
    let other = udp_from("127.0.10.1", server);
    other.send(&query(1, IN_PROCESS, A)).unwrap();
    let r = drain(&other, Duration::from_millis(300));
    assert!(r.len() == 1 && r[0].answered());
    let m = scrape(&d);
    assert!(limited(&m, "positive", "dropped") >= (254 - answered) as f64);
}

/// (c) Amplification bound: ANY and large TXT answers spread over many names (so no per-name
/// budget is reached) stay within bytes_per_second: after the burst, bytes out ≤ bytes in
/// (without RRL a TXT answer here is ~15× its query).
#[test]
fn byte_budget_bounds_amplification_across_names() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(
        &pdns,
        "responses_per_second = 1000\nbytes_per_second = 5000\nslip = 2",
        "",
    );
    let server = d.dns_addr();
    let before = scrape(&d);
    let sock = udp_from("127.0.0.77", server);
    let reader = {
        let rx = sock.try_clone().unwrap();
        thread::spawn(move || drain(&rx, Duration::from_millis(800)))
    };
    // 600 queries at 200/s for 3 s, cycling over 40 names and TXT/ANY.
    let every = Duration::from_millis(5);
    let q = |i: u16| {
        let name = format!("big{}.rrl.test", i % 40);
        query(i, &name, if i.is_multiple_of(2) { TXT } else { ANY })
    };
    let sent = flood(&sock, 600, every, q);
    let replies = reader.join().unwrap();
    // After the first second (its burst of 2000 bytes included): in and out per query ID.
    let after_burst = |r: &Resp| r.id >= 200;
    let bytes_in: usize = (200..600u16).map(|i| q(i).len()).sum();
    let bytes_out: usize = replies
        .iter()
        .filter(|r| after_burst(r))
        .map(|r| r.len)
        .sum();
    let full = replies.iter().filter(|r| r.answered()).count();
    eprintln!("sent {sent} B; after the burst in {bytes_in} B, out {bytes_out} B; {full} full");
    assert!(bytes_out <= bytes_in, "out {bytes_out} > in {bytes_in}");
    // PowerDNS answers ANY over UDP with a small TC=1 (any-to-tcp), which counts against the
    // budget too; the TXT answers (~650 B) share what is left of 5000 B/s: the first second's
    // burst lets several through, at most ~30 in the whole 3 s.
    assert!((3..=30).contains(&full), "{full} full answers");
    let m = scrape(&d);
    let by_bytes = get(&m, "dnsteer_rrl_limited_by_bytes_total")
        - get(&before, "dnsteer_rrl_limited_by_bytes_total");
    assert!(
        by_bytes >= 250.0,
        "most TXT answers hit the byte budget: {by_bytes}"
    );
}

/// Random names under one zone (a water-torture flood): their NXDOMAINs share one budget per
/// zone, while a real name from the same source keeps its own.
#[test]
fn nxdomain_for_random_names_counts_per_zone() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(&pdns, "responses_per_second = 5\nwindow = 2\nslip = 0", "");
    let server = d.dns_addr();
    let sock = udp_from("127.0.0.90", server);
    let t0 = Instant::now();
    flood(&sock, 60, Duration::from_millis(1), |i| {
        query(i, &format!("r{i}x.rrl.test"), A)
    });
    let took = t0.elapsed();
    let r = drain(&sock, Duration::from_millis(500));
    assert!(r.iter().all(|r| r.rcode == 3), "NXDOMAIN only: {r:?}");
    let bound = 5 + refill(took, 5);
    assert!(
        (5..=bound).contains(&r.len()),
        "{} of 60 answered in {took:?}",
        r.len()
    );
    sock.send(&query(100, "www.rrl.test", A)).unwrap();
    let r = drain(&sock, Duration::from_millis(500));
    assert!(r.len() == 1 && r[0].answered(), "{r:?}");
    let m = scrape(&d);
    assert!(limited(&m, "nxdomain", "dropped") >= 50.0);
}

/// (d) TCP is never limited, while UDP from the same address is.
#[test]
fn tcp_is_never_limited() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(&pdns, "responses_per_second = 2\nwindow = 5\nslip = 0", "");
    let server = d.dns_addr();
    let src = "127.0.0.60";
    let udp = udp_from(src, server);
    flood(&udp, 20, Duration::ZERO, |i| query(i, BIG, TXT));
    let udp_answered = drain(&udp, Duration::from_millis(500))
        .iter()
        .filter(|r| r.answered())
        .count();
    assert!(udp_answered <= 3, "UDP is limited: {udp_answered}");
    for i in 0..30u16 {
        let name = if i.is_multiple_of(2) { BIG } else { IN_PROCESS };
        let r = ask_tcp(
            src,
            server,
            i,
            name,
            if i.is_multiple_of(2) { TXT } else { A },
        );
        assert!(r.answered(), "TCP query {i}: {r:?}");
    }
}

/// (e) `exempt` prefixes and `dry_run` answer everything; dry run still counts.
#[test]
fn exempt_and_dry_run_answer_everything() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(
        &pdns,
        "responses_per_second = 2\nslip = 0\nexempt = [\"127.0.0.70/32\"]",
        "",
    );
    let server = d.dns_addr();
    let exempt = udp_from("127.0.0.70", server);
    flood(&exempt, 30, Duration::from_millis(2), |i| {
        query(i, IN_PROCESS, A)
    });
    let r = drain(&exempt, Duration::from_millis(500));
    assert_eq!(r.iter().filter(|r| r.answered()).count(), 30);
    // Its /24 neighbour is not exempt.
    let neighbour = udp_from("127.0.0.71", server);
    flood(&neighbour, 30, Duration::from_millis(2), |i| {
        query(i, IN_PROCESS, A)
    });
    let r = drain(&neighbour, Duration::from_millis(500));
    assert!(r.iter().filter(|r| r.answered()).count() <= 3);
    drop(d);

    let d = start(
        &pdns,
        "responses_per_second = 2\nslip = 0\ndry_run = true",
        "",
    );
    let sock = udp_from("127.0.0.72", d.dns_addr());
    flood(&sock, 30, Duration::from_millis(2), |i| query(i, BIG, TXT));
    let r = drain(&sock, Duration::from_millis(500));
    assert_eq!(r.iter().filter(|r| r.answered()).count(), 30);
    let m = scrape(&d);
    assert!(get(&m, "dnsteer_ratelimit_dry_run_total") >= 25.0);
    assert_eq!(limited(&m, "positive", "dropped"), 0.0);
}

/// Packet-cache hits are answers made here: limited like the rest.
#[test]
fn cache_hits_are_limited_too() {
    let _serial = serial();
    let pdns = start_pdns();
    let d = start(
        &pdns,
        "responses_per_second = 3\nwindow = 2\nslip = 0",
        "[cache]\nenabled = true\n",
    );
    let server = d.dns_addr();
    // Warm the cache from another /24.
    let warm = udp_from("127.0.5.1", server);
    warm.send(&query(1, "www.rrl.test", A)).unwrap();
    assert_eq!(drain(&warm, Duration::from_millis(300)).len(), 1);
    let before = scrape(&d);
    let sock = udp_from("127.0.6.1", server);
    let t0 = Instant::now();
    flood(&sock, 30, Duration::from_millis(1), |i| {
        query(i, "www.rrl.test", A)
    });
    let took = t0.elapsed();
    let answered = drain(&sock, Duration::from_millis(500))
        .iter()
        .filter(|r| r.answered())
        .count();
    let bound = 3 + refill(took, 3);
    assert!((3..=bound).contains(&answered), "{answered} in {took:?}");
    let m = scrape(&d);
    assert!(get(&m, "dnsteer_cache_hits_total") - get(&before, "dnsteer_cache_hits_total") >= 3.0);
}
