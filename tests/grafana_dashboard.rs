//! The Grafana dashboard (`deploy/monitoring/dnsteer-grafana-dashboard.json`) against the real
//! binary: every metric its PromQL names is exported with samples once dnsteer has served a
//! few queries; and the `dnsteer_dns_*` families count exactly what was asked.

mod support;

use std::collections::BTreeSet;

use hickory_proto::rr::RecordType;
use support::{DEMO_ZONE, DEMO_ZONE_NAME, Dnsteer, Pdns, QueryOpts, dns_ask, metric_sum};

const DASHBOARD: &str = include_str!("../deploy/monitoring/dnsteer-grafana-dashboard.json");

/// dnsteer in front of PowerDNS (demo zone) with an in-process record, a probed record, the
/// packet cache and the rate limiter on (far above what the test sends).
fn start(pdns: &Pdns) -> Dnsteer {
    let up = pdns.addr();
    Dnsteer::start_on_free_ports(|dns, metrics| {
        format!(
            r#"
[server]
listen = ["{dns}"]
workers = 1

[metrics]
listen = "{metrics}"

[ratelimit]
enabled = true
qps = 10000
burst = 10000

[cache]
enabled = true

[upstream]
servers = ["{up}"]
health_check_interval = "200ms"

[[records]]
name = "static.demo.test."
type = "A"
ttl = 300
content = ["192.0.2.10"]

[[records]]
name = "probed.demo.test."
type = "A"
ttl = 30
lua = "ifportup({port}, {{'127.0.0.1'}}, {{timeout='1', interval='1'}})"
"#,
            port = up.port(),
        )
    })
}

/// Every `dnsteer_*` name in the dashboard's PromQL (panel targets and template queries).
fn dashboard_metrics() -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&v, &mut exprs);
    assert!(exprs.len() > 20, "too few expressions found: {exprs:?}");
    exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("dnsteer_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The family a sample name belongs to: histogram suffixes stripped only when the scrape
/// declares the base name a histogram (so `dnsteer_foo_count` of a counter stays itself).
fn family_of<'a>(scrape: &str, name: &'a str) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && scrape.contains(&format!("# TYPE {base} histogram\n"))
        {
            return base;
        }
    }
    name
}

fn has_sample(scrape: &str, name: &str) -> bool {
    scrape.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

#[test]
fn every_dashboard_metric_is_exported_with_samples() {
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let d = start(&pdns);
    let server = d.dns_addr();
    for opts in [
        QueryOpts::udp(),
        QueryOpts::udp().dnssec_ok(),
        QueryOpts::tcp(),
        QueryOpts::tcp().dnssec_ok(),
    ] {
        for name in ["static.demo.test.", "probed.demo.test.", "www.demo.test."] {
            dns_ask(server, name, RecordType::A, &opts);
        }
    }
    let (code, scrape) = d.get("/metrics");
    assert_eq!(code, 200);
    let names = dashboard_metrics();
    assert!(names.contains("dnsteer_dns_requests_total"), "{names:?}");
    let mut missing = Vec::new();
    for name in &names {
        let family = family_of(&scrape, name);
        let declared = scrape.contains(&format!("# TYPE {family} "));
        if !declared || !has_sample(&scrape, name) {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard metrics without samples in /metrics: {missing:?}\n{scrape}"
    );
}

#[test]
fn dns_families_count_exactly_what_was_asked() {
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let d = start(&pdns);
    let server = d.dns_addr();
    const N: usize = 7;
    for _ in 0..N {
        dns_ask(
            server,
            "static.demo.test.",
            RecordType::A,
            &QueryOpts::udp(),
        );
    }
    for _ in 0..2 {
        dns_ask(
            server,
            "STATIC.demo.test.",
            RecordType::AAAA,
            &QueryOpts::tcp().dnssec_ok(),
        );
    }
    // Forwarded once, then answered from the packet cache.
    for _ in 0..2 {
        dns_ask(server, "www.demo.test.", RecordType::MX, &QueryOpts::udp());
    }
    // Outside every zone dnsteer knows of (PowerDNS refuses it).
    for _ in 0..3 {
        dns_ask(server, "www.example.com.", RecordType::A, &QueryOpts::udp());
    }
    let (_, m) = d.get("/metrics");
    let get = |name: &str, labels: &[(&str, &str)]| metric_sum(&m, name, labels);
    let req = "dnsteer_dns_requests_total";
    let zone = ("zone", DEMO_ZONE_NAME);
    let udp4 = [("proto", "udp"), ("family", "1")];
    assert_eq!(
        get(req, &[udp4[0], udp4[1], zone, ("type", "A")]),
        N as f64,
        "{m}"
    );
    assert_eq!(get(req, &[("proto", "tcp"), zone, ("type", "AAAA")]), 2.0);
    assert_eq!(get(req, &[udp4[0], zone, ("type", "MX")]), 2.0);
    assert_eq!(get(req, &[("zone", "other"), ("type", "A")]), 3.0);
    assert_eq!(get(req, &[]), (N + 2 + 2 + 3) as f64);
    assert_eq!(get("dnsteer_dns_do_requests_total", &[zone]), 2.0);
    assert_eq!(get("dnsteer_dns_do_requests_total", &[]), 2.0);

    let resp = "dnsteer_dns_responses_total";
    let noerror = ("rcode", "NOERROR");
    // The A answers and the AAAA NODATA are made in-process, unsigned (the zone is not signed).
    assert_eq!(
        get(resp, &[zone, noerror, ("plugin", "in_process")]),
        (N + 2) as f64
    );
    assert_eq!(get(resp, &[zone, noerror, ("plugin", "forwarded")]), 1.0);
    assert_eq!(get(resp, &[zone, noerror, ("plugin", "cached")]), 1.0);
    assert_eq!(get(resp, &[("zone", "other"), ("rcode", "REFUSED")]), 3.0);
    let path = |p: &str| get("dnsteer_dns_answers_total", &[("path", p)]);
    assert_eq!(path("in_process"), (N + 2) as f64);
    assert_eq!(path("cached"), 1.0);
    assert_eq!(path("forwarded"), 1.0 + 3.0);
    assert_eq!(path("signed") + path("stale") + path("error"), 0.0);

    let size = "dnsteer_dns_request_size_bytes_count";
    assert_eq!(get(size, &[("proto", "udp"), zone]), (N + 2) as f64);
    assert_eq!(get(size, &[("proto", "tcp"), zone]), 2.0);
    let resp_size = "dnsteer_dns_response_size_bytes_count";
    assert_eq!(get(resp_size, &[("proto", "udp"), ("zone", "other")]), 3.0);
    // The old families keep counting alongside.
    assert_eq!(
        get(
            "dnsteer_queries_total",
            &[("transport", "udp"), ("decision", "rule")]
        ),
        N as f64
    );
}
