//! The packet cache (`[cache]`) in front of a real PowerDNS: what is shared, what is kept
//! apart, what is never cached, serve-stale and NOTIFY invalidation. A hit is proven by
//! dnsteer's upstream request count staying put.

mod inproc;
mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use dnsteer::app::App;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::{Pdns, QueryOpts, dns_ask};

const ZONE: &str = "$ORIGIN cache.test.
$TTL 300
@      IN SOA ns1 hostmaster 2024010101 3600 600 86400 60
@      IN NS  ns1
ns1    IN A   127.0.0.1
www    IN A   192.0.2.80
big    IN TXT ( \"01234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789\"
                \"01234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789\"
                \"01234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789\" )
who    IN LUA TXT \"bestwho:toString()\"
broken IN LUA A   \"nosuchfunction()\"
";

fn start(pdns: &Pdns, upstream_extra: &str, cache_extra: &str) -> (App, tempfile::TempDir) {
    inproc::start_with(
        &[pdns.addr()],
        &format!("{upstream_extra}[cache]\nenabled = true\n{cache_extra}"),
    )
}

fn requests(app: &App) -> f64 {
    inproc::metric(&inproc::scrape(app), "dnsteer_upstream_requests_total{")
}

fn counter(app: &App, prefix: &str) -> f64 {
    inproc::metric(&inproc::scrape(app), prefix)
}

fn txt(m: &Message) -> Vec<String> {
    support::answer_rdata(m)
}

#[test]
fn a_scope_0_answer_is_shared_across_client_subnets() {
    let pdns = Pdns::start(&[("cache.test.", ZONE)], &[]);
    let (app, _dir) = start(&pdns, "", "");
    let front = app.dns_addrs[0];
    let first = dns_ask(
        front,
        "www.cache.test.",
        RecordType::A,
        &QueryOpts::udp().ecs("198.51.100.0/24"),
    );
    let n = requests(&app);
    for ecs in ["203.0.113.0/24", "192.0.2.0/24"] {
        let m = dns_ask(
            front,
            "www.cache.test.",
            RecordType::A,
            &QueryOpts::udp().ecs(ecs),
        );
        assert_eq!(txt(&m), txt(&first));
        let echo = support::reply_ecs(&m).expect("the client's ECS is echoed");
        assert_eq!(echo.scope_prefix(), 0);
        assert_eq!(format!("{}/{}", echo.addr(), echo.source_prefix()), ecs);
    }
    // A client without ECS (dnsteer adds 127.0.0.0/24): the same entry.
    dns_ask(
        front,
        "www.cache.test.",
        RecordType::A,
        &QueryOpts::udp().edns(1232),
    );
    assert_eq!(requests(&app), n, "no query reached PowerDNS");
    assert_eq!(counter(&app, "dnsteer_cache_hits_total"), 3.0);
}

#[test]
fn a_scope_24_answer_is_not_served_outside_its_subnet() {
    let pdns = Pdns::start(&[("cache.test.", ZONE)], &[]);
    let (app, _dir) = start(&pdns, "", "");
    let front = app.dns_addrs[0];
    let ask = |ecs: &str| {
        let m = dns_ask(
            front,
            "who.cache.test.",
            RecordType::TXT,
            &QueryOpts::udp().ecs(ecs),
        );
        (txt(&m), support::reply_ecs(&m).map(|e| e.scope_prefix()))
    };
    assert_eq!(
        ask("198.51.100.0/24"),
        (vec!["198.51.100.0".into()], Some(24))
    );
    let n = requests(&app);
    assert_eq!(
        ask("203.0.113.0/24"),
        (vec!["203.0.113.0".into()], Some(24)),
        "another /24: PowerDNS asked"
    );
    assert_eq!(requests(&app), n + 1.0);
    assert_eq!(
        ask("198.51.100.0/24"),
        (vec!["198.51.100.0".into()], Some(24)),
        "its own /24: cached"
    );
    assert_eq!(requests(&app), n + 1.0);
}

#[test]
fn ttls_as_powerdns_gave_them_do_apart_case_and_id_restored() {
    let pdns = Pdns::start(&[("cache.test.", ZONE)], &[]);
    let (app, _dir) = start(&pdns, "", "");
    let front = app.dns_addrs[0];
    dns_ask(front, "www.cache.test.", RecordType::A, &QueryOpts::udp());
    let n = requests(&app);
    std::thread::sleep(Duration::from_millis(1100));
    // dns_ask checks the ID; the question comes back in the client's letter case.
    let m = dns_ask(front, "WwW.CaChE.TeSt.", RecordType::A, &QueryOpts::udp());
    assert_eq!(requests(&app), n, "a hit");
    assert_eq!(m.queries[0].name().to_string(), "WwW.CaChE.TeSt.");
    assert_eq!(
        m.answers[0].ttl, 300,
        "age_ttls = false: the TTL PowerDNS gave"
    );
    assert!(m.metadata.authoritative);
    // DO=1 is another entry.
    dns_ask(
        front,
        "www.cache.test.",
        RecordType::A,
        &QueryOpts::udp().dnssec_ok(),
    );
    assert_eq!(
        requests(&app),
        n + 1.0,
        "DO=1 is not served the DO=0 answer"
    );
}

#[test]
fn ttls_are_aged_when_asked() {
    let pdns = Pdns::start(&[("cache.test.", ZONE)], &[]);
    let (app, _dir) = start(&pdns, "", "age_ttls = true\n");
    let front = app.dns_addrs[0];
    dns_ask(front, "www.cache.test.", RecordType::A, &QueryOpts::udp());
    std::thread::sleep(Duration::from_millis(2100));
    let m = dns_ask(front, "www.cache.test.", RecordType::A, &QueryOpts::udp());
    assert_eq!(counter(&app, "dnsteer_cache_hits_total"), 1.0);
    assert!(m.answers[0].ttl <= 298, "{}", m.answers[0].ttl);
}

#[test]
fn negative_answers_are_cached_for_the_soa_minimum() {
    let pdns = Pdns::start(&[("cache.test.", ZONE)], &[]);
    let (app, _dir) = start(&pdns, "", "negative_ttl_cap = \"5m\"\nmax_ttl = \"5m\"\n");
    let front = app.dns_addrs[0];
    for _ in 0..2 {
        let m = dns_ask(front, "nope.cache.test.", RecordType::A, &QueryOpts::udp());
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities.len(), 1, "the SOA");
        let m = dns_ask(front, "www.cache.test.", RecordType::MX, &QueryOpts::udp());
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }
    assert_eq!(counter(&app, "dnsteer_cache_hits_total"), 2.0);
}

#[test]
fn servfail_and_truncated_answers_are_never_cached() {
    let pdns = Pdns::start(&[("cache.test.", ZONE)], &[]);
    let (app, _dir) = start(&pdns, "", "");
    let front = app.dns_addrs[0];
    for _ in 0..2 {
        let m = dns_ask(
            front,
            "broken.cache.test.",
            RecordType::A,
            &QueryOpts::udp(),
        );
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let m = dns_ask(front, "big.cache.test.", RecordType::TXT, &QueryOpts::udp());
        assert!(m.metadata.truncation);
    }
    let text = inproc::scrape(&app);
    assert_eq!(inproc::metric(&text, "dnsteer_cache_hits_total"), 0.0);
    assert_eq!(
        inproc::metric(
            &text,
            "dnsteer_cache_insert_skipped_total{reason=\"servfail\"}"
        ),
        2.0
    );
    assert_eq!(
        inproc::metric(
            &text,
            "dnsteer_cache_insert_skipped_total{reason=\"truncated\"}"
        ),
        2.0
    );
    assert_eq!(inproc::metric(&text, "dnsteer_cache_entries"), 0.0);
}

#[test]
fn stale_answers_while_powerdns_is_down_then_fresh_ones_again() {
    let mut pdns = Pdns::start(&[("cache.test.", ZONE)], &[]);
    let (app, _dir) = start(
        &pdns,
        "attempts = 1\n",
        "max_ttl = \"1s\"\nstale_ttl = \"1h\"\n",
    );
    let front = app.dns_addrs[0];
    dns_ask(front, "www.cache.test.", RecordType::A, &QueryOpts::udp());
    pdns.stop();
    std::thread::sleep(Duration::from_millis(1100));
    for opts in [QueryOpts::udp(), QueryOpts::tcp()] {
        let m = dns_ask(
            front,
            "www.cache.test.",
            RecordType::A,
            &opts.clone().timeout(Duration::from_secs(3)),
        );
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{opts:?}");
        assert_eq!(txt(&m), vec!["192.0.2.80".to_string()]);
        assert_eq!(
            m.answers[0].ttl, 30,
            "stale answers carry TTL 30 (RFC 8767)"
        );
    }
    assert_eq!(counter(&app, "dnsteer_cache_stale_served_total"), 2.0);
    // Never cached: no stale answer either.
    let m = dns_ask(
        front,
        "nope.cache.test.",
        RecordType::A,
        &QueryOpts::udp().timeout(Duration::from_secs(3)),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

    pdns.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = dns_ask(
            front,
            "www.cache.test.",
            RecordType::A,
            &QueryOpts::udp().timeout(Duration::from_secs(3)),
        );
        if m.answers.first().is_some_and(|a| a.ttl == 300) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fresh answer after PowerDNS came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_accepted_notify_drops_the_zone_from_the_cache() {
    let pdns = Pdns::start(&[("cache.test.", ZONE)], &[]);
    let (app, _dir) = start(
        &pdns,
        "",
        "max_ttl = \"5m\"\n[zones]\ntransfer = [\"cache.test.\"]\nrefresh = \"60s\"\n",
    );
    let front = app.dns_addrs[0];
    dns_ask(front, "www.cache.test.", RecordType::A, &QueryOpts::udp());
    dns_ask(front, "www.cache.test.", RecordType::A, &QueryOpts::udp());
    let n = requests(&app);
    assert_eq!(counter(&app, "dnsteer_cache_hits_total"), 1.0);

    // NOTIFY cache.test. from 127.0.0.1 (the upstream's address, allowed by default).
    let mut notify = vec![0x12, 0x34, 0x20, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    notify.extend_from_slice(b"\x05cache\x04test\x00\x00\x06\x00\x01");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(&notify, front).unwrap();
    let mut buf = [0u8; 512];
    sock.recv(&mut buf).unwrap();
    assert_eq!(buf[3] & 0x0f, 0, "acknowledged");

    dns_ask(front, "www.cache.test.", RecordType::A, &QueryOpts::udp());
    assert!(
        requests(&app) > n,
        "the entry was dropped: PowerDNS asked again"
    );
    assert_eq!(counter(&app, "dnsteer_cache_hits_total"), 1.0);
}
