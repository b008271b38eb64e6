//! Observability end to end, on the real binary in front of a real PowerDNS: the 1 % sampled
//! JSON query log (rate within statistical bounds, fields present), events logged whatever the
//! sample rate, and /metrics (deltas for a known query mix; every family in README's metrics
//! table present with its documented type, so docs and code cannot drift).

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    DEMO_ZONE, DEMO_ZONE_NAME, Dnsteer, Pdns, free_addr, parse_metrics, series as get,
    series_delta as delta,
};

const A: u16 = 1;
const IN_PROCESS: &str = "static.demo.test";
const FORWARDED: &str = "www.demo.test";
const NXDOMAIN_NAME: &str = "nothing-here.demo.test";

/// `timeout`: the upstream attempt timeout. Tests that count answers use a generous one: with
/// 100k queries saturating both cores, PowerDNS itself can take longer than 500 ms now and
/// then, and a SERVFAIL for that is dnsteer working as configured, not what these tests check.
fn start(upstream: SocketAddr, sample_rate: f64, timeout: &str, upstream_extra: &str) -> Dnsteer {
    start_servers(&[upstream], sample_rate, timeout, upstream_extra)
}

/// [`start`] in front of several upstream servers.
fn start_servers(
    upstreams: &[SocketAddr],
    sample_rate: f64,
    timeout: &str,
    upstream_extra: &str,
) -> Dnsteer {
    let servers: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    let servers = servers.join(", ");
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
query_sample_rate = {sample_rate:?}

[ratelimit]
enabled = false

[upstream]
servers = [{servers}]
timeout = "{timeout}"
health_check_interval = "200ms"
{upstream_extra}

[[records]]
name = "static.demo.test."
type = "A"
ttl = 300
content = ["192.0.2.10", "192.0.2.11"]
"#,
        dns = free_addr(),
        metrics = free_addr(),
    );
    Dnsteer::start(&config)
}

fn start_pdns() -> Pdns {
    Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[])
}

/// A plain query (RD=0, no EDNS): the library's own builder, used by its health checks.
fn query_wire(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let name = dnsteer::dns::name_from_text(name).unwrap();
    dnsteer::dns::build_query(id, &name, qtype, None)
}

/// A header with QDCOUNT = 0: FORMERR.
fn formerr_wire(id: u16) -> Vec<u8> {
    let mut w = id.to_be_bytes().to_vec();
    w.extend_from_slice(&[0; 10]);
    w
}

fn rcode_of(resp: &[u8]) -> u8 {
    resp[3] & 0x0f
}

fn exchange(server: SocketAddr, wire: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.send(wire).unwrap();
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

fn exchange_tcp(server: SocketAddr, wire: &[u8]) -> Vec<u8> {
    support::tcp_exchange(server, wire, Duration::from_secs(3)).expect("TCP answer")
}

fn log_lines(d: &Dnsteer) -> Vec<serde_json::Value> {
    d.log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn is_query_line(l: &serde_json::Value) -> bool {
    l["target"] == "dnsteer::query" && l["fields"]["message"] == "query"
}

/// Prometheus text → `name{labels}` → value.
fn scrape(d: &Dnsteer) -> HashMap<String, f64> {
    let (code, body) = d.get("/metrics");
    assert_eq!(code, 200);
    parse_metrics(&body)
}

/// Sends `total` queries over `sockets` UDP sockets with up to `window` in flight on each,
/// cycling through `names`; returns how many were answered. A query unanswered for 500 ms
/// counts as lost. Bounded by `deadline`.
fn blast(server: SocketAddr, names: &[&str], total: usize, sockets: usize, window: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let wires: Vec<Vec<u8>> = names.iter().map(|n| query_wire(0, n, A)).collect();
    let handles: Vec<_> = (0..sockets)
        .map(|t| {
            let wires = wires.clone();
            let n = total / sockets + usize::from(t < total % sockets);
            thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.connect(server).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let (mut sent, mut answered, mut in_flight) = (0usize, 0usize, 0usize);
                let mut buf = [0u8; 1500];
                while (sent < n || in_flight > 0) && Instant::now() < deadline {
                    while sent < n && in_flight < window {
                        let mut q = wires[(sent + t) % wires.len()].clone();
                        q[..2].copy_from_slice(&(sent as u16).to_be_bytes());
                        s.send(&q).unwrap();
                        sent += 1;
                        in_flight += 1;
                    }
                    match s.recv(&mut buf) {
                        Ok(_) => {
                            answered += 1;
                            in_flight -= 1;
                        }
                        // Whatever is still out is lost.
                        Err(_) => in_flight = 0,
                    }
                }
                answered
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

/// Waits until the log has stopped growing (the logger thread writes off the packet path).
fn settled_log(d: &Dnsteer) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = usize::MAX;
    loop {
        let len = d.log().len();
        if len == last || Instant::now() > deadline {
            return log_lines(d);
        }
        last = len;
        thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn one_percent_of_queries_are_logged_with_their_fields() {
    let pdns = start_pdns();
    let d = start(pdns.addr(), 0.01, "2s", "");
    let before = scrape(&d);

    let t0 = Instant::now();
    let answered = blast(d.dns_addr(), &[IN_PROCESS, FORWARDED], 100_000, 4, 64);
    eprintln!("100,000 queries in {:?}, {answered} answered", t0.elapsed());
    assert!(answered >= 99_000, "only {answered} of 100,000 answered");
    let after = scrape(&d);
    let seen: f64 = ["rule", "forwarded"]
        .iter()
        .map(|dec| {
            delta(
                &before,
                &after,
                &format!("dnsteer_queries_total{{transport=\"udp\",decision=\"{dec}\"}}"),
            )
        })
        .sum();
    assert!(seen >= 99_000.0, "dnsteer saw {seen}");

    let lines = settled_log(&d);
    let sampled: Vec<_> = lines.iter().filter(|l| is_query_line(l)).collect();
    // Binomial(seen, 0.01): mean ~1000, sd ~31.5; ±5 sd.
    let mean = seen * 0.01;
    let sd = (seen * 0.01 * 0.99).sqrt();
    let n = sampled.len() as f64;
    assert!(
        (mean - 5.0 * sd..=mean + 5.0 * sd).contains(&n),
        "{n} sampled lines for {seen} queries"
    );
    assert_eq!(get(&after, "dnsteer_log_lines_dropped_total"), 0.0);

    let (mut rule, mut forwarded) = (0, 0);
    for l in &sampled {
        let f = &l["fields"];
        for key in [
            "time_ms",
            "transport",
            "client",
            "qname",
            "qtype",
            "decision",
            "rcode",
            "answers",
            "latency_us",
        ] {
            assert!(!f[key].is_null(), "{key} missing in {l}");
        }
        assert_eq!(f["transport"], "udp", "{l}");
        assert_eq!(
            f["client"], "127.0.0.0/24",
            "client masked to the ECS prefix: {l}"
        );
        assert_eq!(f["qtype"], 1, "{l}");
        assert_eq!(f["rcode"], "NOERROR", "{l}");
        assert!(
            f["time_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000),
            "{l}"
        );
        assert!(f["latency_us"].as_u64().is_some(), "{l}");
        match f["decision"].as_str() {
            Some("rule") => {
                rule += 1;
                assert_eq!(f["qname"], "static.demo.test.", "{l}");
                assert_eq!(f["answers"], 2, "{l}");
            }
            Some("forwarded") => {
                forwarded += 1;
                assert_eq!(f["qname"], "www.demo.test.", "{l}");
                assert_eq!(f["answers"], 1, "{l}");
                assert_eq!(f["upstream"], pdns.addr().to_string(), "{l}");
            }
            _ => panic!("unexpected decision: {l}"),
        }
    }
    // Half of each; ±5 sd of Binomial(~1000, 0.5) is ±80.
    assert!(
        rule > 300 && forwarded > 300,
        "rule {rule}, forwarded {forwarded}"
    );
}

#[test]
fn formerr_and_upstream_timeouts_are_logged_at_sample_rate_zero() {
    // A black hole: bound (so no ICMP refusal), never read.
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let d = start(hole.local_addr().unwrap(), 0.0, "500ms", "attempts = 1");

    let resp = exchange(d.dns_addr(), &formerr_wire(0x1234)).expect("FORMERR answer");
    assert_eq!(rcode_of(&resp), 1);
    assert_eq!(resp[..2], [0x12, 0x34]);
    let resp = exchange(d.dns_addr(), &query_wire(7, FORWARDED, A)).expect("SERVFAIL answer");
    assert_eq!(
        rcode_of(&resp),
        2,
        "an upstream that never answers gives SERVFAIL"
    );
    // And sampling is really off: an in-process answer is not logged.
    let resp = exchange(d.dns_addr(), &query_wire(8, IN_PROCESS, A)).expect("answer");
    assert_eq!(rcode_of(&resp), 0);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = log_lines(&d);
        let formerr = lines
            .iter()
            .any(|l| l["fields"]["message"] == "malformed query answered FORMERR");
        let timeout = lines.iter().any(|l| {
            l["target"] == "dnsteer::forward::upstream"
                && l["fields"]["message"] == "upstream did not answer in time"
                && l["fields"]["qname"] == "www.demo.test."
        });
        let servfail = lines
            .iter()
            .any(|l| l["fields"]["message"] == "answered SERVFAIL");
        if formerr && timeout && servfail {
            assert!(
                !lines.iter().any(is_query_line),
                "no sampled lines at rate 0: {}",
                d.log()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "formerr {formerr}, timeout {timeout}, servfail {servfail}:\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let m = scrape(&d);
    assert_eq!(get(&m, "dnsteer_log_lines_dropped_total"), 0.0);
    assert_eq!(get(&m, "dnsteer_log_events_suppressed_total"), 0.0);
    assert_eq!(get(&m, "dnsteer_malformed_total{kind=\"formerr\"}"), 1.0);
    drop(hole);
}

#[test]
fn an_upstream_timeout_names_the_server_that_timed_out() {
    // Two black holes: the first attempt goes to one, the retry to the other, and each
    // timeout event must name the server that attempt went to.
    let holes = [
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    ];
    let addrs: Vec<SocketAddr> = holes.iter().map(|h| h.local_addr().unwrap()).collect();
    let d = start_servers(
        &addrs,
        0.0,
        "300ms",
        "attempts = 2\npolicy = \"first-available\"",
    );
    let resp = exchange(d.dns_addr(), &query_wire(9, FORWARDED, A)).expect("SERVFAIL answer");
    assert_eq!(rcode_of(&resp), 2);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let named: Vec<String> = log_lines(&d)
            .iter()
            .filter(|l| {
                l["fields"]["message"] == "upstream did not answer in time"
                    && l["fields"]["qname"] == "www.demo.test."
            })
            .filter_map(|l| l["fields"]["server"].as_str().map(str::to_string))
            .collect();
        if named.len() >= 2 {
            let mut named = named;
            named.sort();
            let mut want: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            want.sort();
            assert_eq!(named, want, "one timeout per server tried:\n{}", d.log());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timeouts logged for {named:?}:\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let m = scrape(&d);
    for a in &addrs {
        assert_eq!(
            get(
                &m,
                &format!("dnsteer_upstream_errors_total{{server=\"{a}\",kind=\"timeout\"}}")
            ),
            1.0,
            "{a}"
        );
    }
    drop(holes);
}

#[test]
fn metrics_deltas_for_a_known_mix() {
    let pdns = start_pdns();
    let d = start(pdns.addr(), 0.0, "2s", "");
    let before = scrape(&d);

    let mut id = 0u16;
    let mut ask = |name: &str, expect: u8| {
        id += 1;
        let r = exchange(d.dns_addr(), &query_wire(id, name, A)).expect("an answer");
        assert_eq!(rcode_of(&r), expect, "{name}");
    };
    for _ in 0..20 {
        ask(IN_PROCESS, 0);
    }
    for _ in 0..15 {
        ask(FORWARDED, 0);
    }
    for _ in 0..5 {
        ask(NXDOMAIN_NAME, 3);
    }
    for i in 0..3 {
        let r = exchange(d.dns_addr(), &formerr_wire(i)).expect("FORMERR");
        assert_eq!(rcode_of(&r), 1);
    }
    for i in 0..2 {
        let r = exchange_tcp(d.dns_addr(), &query_wire(100 + i, IN_PROCESS, A));
        assert_eq!(rcode_of(&r), 0);
    }
    let r = exchange_tcp(d.dns_addr(), &query_wire(200, FORWARDED, A));
    assert_eq!(rcode_of(&r), 0);

    let after = scrape(&d);
    let expect = |series: &str, want: f64| {
        assert_eq!(delta(&before, &after, series), want, "{series}");
    };
    let q = |t: &str, dec: &str| {
        format!("dnsteer_queries_total{{transport=\"{t}\",decision=\"{dec}\"}}")
    };
    let r =
        |t: &str, rc: &str| format!("dnsteer_responses_total{{transport=\"{t}\",rcode=\"{rc}\"}}");
    expect(&q("udp", "rule"), 20.0);
    expect(&q("udp", "forwarded"), 20.0);
    expect(&q("udp", "error"), 3.0);
    expect(&q("udp", "limited"), 0.0);
    expect(&q("udp", "dropped"), 0.0);
    expect(&q("tcp", "rule"), 2.0);
    expect(&q("tcp", "forwarded"), 1.0);
    expect(&r("udp", "NOERROR"), 35.0);
    expect(&r("udp", "NXDOMAIN"), 5.0);
    expect(&r("udp", "FORMERR"), 3.0);
    expect(&r("udp", "SERVFAIL"), 0.0);
    expect(&r("tcp", "NOERROR"), 3.0);
    expect("dnsteer_malformed_total{kind=\"formerr\"}", 3.0);
    let rec = |outcome: &str| {
        format!(
            "dnsteer_record_answers_total{{name=\"static.demo.test.\",type=\"A\",outcome=\"{outcome}\"}}"
        )
    };
    expect(&rec("primary"), 22.0);
    for outcome in ["backup", "empty", "error"] {
        expect(&rec(outcome), 0.0);
    }
    let h = "dnsteer_query_duration_seconds";
    expect(&format!("{h}_count{{path=\"in_process\"}}"), 22.0);
    expect(&format!("{h}_count{{path=\"forwarded\"}}"), 21.0);
    for path in ["in_process", "forwarded"] {
        let count = get(&after, &format!("{h}_count{{path=\"{path}\"}}"));
        let inf = get(
            &after,
            &format!("{h}_bucket{{path=\"{path}\",le=\"+Inf\"}}"),
        );
        assert_eq!(inf, count, "{path}: +Inf bucket = count");
        assert!(get(&after, &format!("{h}_sum{{path=\"{path}\"}}")) > 0.0);
        // Cumulative buckets never decrease.
        let mut buckets: Vec<(f64, f64)> = after
            .iter()
            .filter_map(|(k, v)| {
                let le = k
                    .strip_prefix(&format!("{h}_bucket{{path=\"{path}\",le=\""))?
                    .strip_suffix("\"}")?;
                Some((le.parse::<f64>().unwrap_or(f64::INFINITY), *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() > 5, "{path}: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{path}: {buckets:?}"
        );
    }
    let upstream = pdns.addr().to_string();
    let sent = delta(
        &before,
        &after,
        &format!("dnsteer_upstream_requests_total{{server=\"{upstream}\"}}"),
    );
    assert!(sent >= 21.0, "upstream requests {sent}");
    assert_eq!(
        get(
            &after,
            &format!("dnsteer_upstream_healthy{{server=\"{upstream}\"}}")
        ),
        1.0
    );
    assert_eq!(get(&after, "dnsteer_ready"), 1.0);
}

/// (name, type) of each row of README's metrics table.
fn documented_metrics() -> Vec<(String, String)> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Metrics")
        .nth(1)
        .expect("README has a Metrics section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.get(2)?;
            name.starts_with("dnsteer_")
                .then(|| (name.to_string(), kind.to_string()))
        })
        .collect()
}

#[test]
fn every_documented_metric_family_is_exported() {
    let documented = documented_metrics();
    assert!(
        documented.len() >= 30,
        "README table parsed: {documented:?}"
    );

    // No probes, no GeoIP: families without series must still be declared.
    let pdns = start_pdns();
    let d = start(pdns.addr(), 0.0, "2s", "");
    let (code, body) = d.get("/metrics");
    assert_eq!(code, 200);
    let exported: HashMap<&str, &str> = body
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split(' ');
            Some((w.next()?, w.next()?))
        })
        .collect();
    let mut problems = Vec::new();
    for (name, kind) in &documented {
        match exported.get(name.as_str()) {
            None => problems.push(format!("{name}: documented, not exported")),
            Some(k) if k != kind => {
                problems.push(format!("{name}: documented as {kind}, exported as {k}"));
            }
            Some(_) => {}
        }
    }
    for name in exported.keys() {
        if !documented.iter().any(|(n, _)| n == name) {
            problems.push(format!("{name}: exported, not documented in README"));
        }
    }
    assert!(problems.is_empty(), "{}\n\n{body}", problems.join("\n"));
}
