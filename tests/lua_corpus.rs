//! Corpus test: a realistic set of LUA records (tests/corpus/*.zone: every construct operators
//! write for PowerDNS 4.7.3 — shared config records, conditionals on geography and networks,
//! health checks, weighted splits, wildcard owners, reverse/forward generators) served by a
//! real PowerDNS with the geoip backend, transferred by dnsteer, and asked of both across client
//! subnets on several continents. Reports how many records dnsteer answers in-process and
//! asserts that those answer exactly as PowerDNS does, and that at least 95 % of them do.

mod inproc;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use support::{Pdns, QueryOpts, dns_query};

const ZONES: &[&str] = &[
    "steer.test.",
    "2.0.192.in-addr.arpa.",
    "10.in-addr.arpa.",
    "8.b.d.0.1.0.0.2.ip6.arpa.",
];

/// Client subnets (ECS) on every continent of the test database (geoip/README.md), IPv4 and
/// IPv6, plus networks it does not know; `None` asks without ECS (source 127.0.0.1: unknown).
const SUBNETS: &[Option<&str>] = &[
    None,
    Some("193.0.6.0/24"),       // Amsterdam NL EU
    Some("80.81.192.0/24"),     // Frankfurt DE EU
    Some("80.81.82.0/24"),      // Madrid ES EU
    Some("8.8.8.0/24"),         // New York US NA
    Some("45.33.32.0/24"),      // San Jose US NA
    Some("200.160.0.0/24"),     // São Paulo BR SA
    Some("210.140.92.0/24"),    // Tokyo JP AS
    Some("139.130.4.0/24"),     // Sydney AU OC
    Some("41.0.0.0/24"),        // Johannesburg ZA AF
    Some("203.116.0.0/24"),     // Singapore SG AS (no subdivision)
    Some("101.0.0.0/24"),       // Beijing CN AS
    Some("198.51.100.0/24"),    // NL, no location
    Some("203.0.113.0/24"),     // unknown
    Some("10.1.2.0/24"),        // private
    Some("2001:db8:1::/48"),    // Amsterdam
    Some("2001:db8:4::/56"),    // New York
    Some("2001:db8:7::/48"),    // Tokyo
    Some("2001:db8:ffff::/48"), // NL, no location
    Some("2001:db8:abcd::/48"), // unknown
];

/// The names asked for a wildcard owner (relative to its zone): parsable and unparsable ones.
fn wildcard_queries(owner: &str) -> Vec<String> {
    let v: &[&str] = match owner {
        "*.wild.steer.test." => &["any.wild", "a.b.wild"],
        "*.geo-wild.steer.test." => &["x.geo-wild"],
        "*.ip.steer.test." => &[
            "192-0-2-1.ip",
            "ip-10-1-2-3.ip",
            "192.0.2.7.ip",
            "c0000201.ip",
            "host.ip",
            "1-2-3.ip",
            "300-1-1-1.ip",
        ],
        "*.ip6.steer.test." => &[
            "2001-db8--1.ip6",
            "2001-db8-0-0-0-0-0-1.ip6",
            "20010db8000000000000000000000001.ip6",
            "bad.ip6",
        ],
        "*.filtered.steer.test." => &["192-0-2-9.filtered", "10-0-0-1.filtered"],
        "*.magic.steer.test." => &["193-0-6-139.8-8-8-8.magic", "x.magic"],
        "*.2.0.192.in-addr.arpa." => &["5", "7", "1", "x", "1.7"],
        "*.0.10.in-addr.arpa." => &["7.3.0", "255.255.0", "3.0"],
        "*.1.10.in-addr.arpa." => &["7.3.1", "1.1"],
        "*.8.b.d.0.1.0.0.2.ip6.arpa." => &[
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0",
            "d.c.b.a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0",
            "1",
        ],
        other => panic!("no query names for wildcard owner {other}"),
    };
    let zone = ZONES
        .iter()
        .find(|z| owner.ends_with(*z))
        .expect("owner in a corpus zone");
    v.iter()
        .map(|l| {
            if zone.starts_with("steer.test") {
                format!("{l}.{zone}")
            } else {
                // Reverse zones: the labels replace the `*` below the owner's parent.
                let parent = owner.trim_start_matches("*.");
                format!("{l}.{parent}")
            }
        })
        .collect()
}

/// One LUA record of the corpus: owner (absolute) and inner type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct LuaRecord {
    owner: String,
    rtype: String,
    code: String,
}

/// The LUA records of a zone file (owner in the first column, relative to `$ORIGIN`; multi-line
/// parenthesised bodies joined).
fn lua_records(zone: &str, text: &str) -> Vec<LuaRecord> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    for line in text.lines() {
        let line = without_comment(line);
        if line.trim().is_empty() && depth == 0 {
            continue;
        }
        depth += line.matches('(').count() as i32 - line.matches(')').count() as i32;
        cur.push_str(&line);
        cur.push(' ');
        if depth <= 0 {
            joined.push(std::mem::take(&mut cur));
            depth = 0;
        }
    }
    let mut out = Vec::new();
    for l in joined {
        let Some(pos) = l.find(" LUA ") else { continue };
        let owner = l.split_whitespace().next().unwrap().to_string();
        let rest = &l[pos + 5..];
        let rtype = rest.split_whitespace().next().unwrap().to_string();
        let code: String = rest
            .split('"')
            .skip(1)
            .step_by(2)
            .collect::<Vec<_>>()
            .join(" ");
        let owner = if owner == "@" {
            zone.to_string()
        } else {
            format!("{owner}.{zone}")
        };
        out.push(LuaRecord { owner, rtype, code });
    }
    out
}

/// `line` up to a ';' outside quotes (a ';' inside a quoted LUA body is code).
fn without_comment(line: &str) -> String {
    let mut quoted = false;
    line.chars()
        .take_while(|&c| {
            if c == '"' {
                quoted = !quoted;
            }
            quoted || c != ';'
        })
        .collect()
}

fn corpus(tcp_up: u16, tcp_down: u16, http: u16) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    ZONES
        .iter()
        .map(|z| {
            let file = dir.join(format!("{}zone", z));
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
                .replace("{TCP_UP}", &tcp_up.to_string())
                .replace("{TCP_DOWN}", &tcp_down.to_string())
                .replace("{HTTP}", &http.to_string());
            (z.to_string(), text)
        })
        .collect()
}

/// Accepts and closes TCP connections (the `ifportup` target) until dropped.
struct Listener {
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Listener {
    fn tcp() -> Listener {
        Self::serve(|_| {})
    }

    /// Answers every connection with `200 OK` and body `OK` (the `ifurlup` target).
    fn http() -> Listener {
        Self::serve(|mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK");
        })
    }

    fn serve(f: fn(std::net::TcpStream)) -> Listener {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        f(c);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Listener { stop, port }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn section(m: &Message) -> (String, BTreeSet<String>, BTreeSet<String>) {
    let answers = m
        .answers
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
        .collect();
    let auth = m.authorities.iter().map(ToString::to_string).collect();
    (format!("{:?}", m.metadata.response_code), answers, auth)
}

/// The queries asked for one record: (name, qtype).
fn questions(r: &LuaRecord) -> Vec<(String, RecordType)> {
    // A LUA LUA record (shared config) is never answered, only included.
    if r.rtype == "LUA" {
        return Vec::new();
    }
    let names = if r.owner.starts_with("*.") {
        wildcard_queries(&r.owner)
    } else {
        vec![r.owner.clone()]
    };
    let mut types = vec![r.rtype.parse::<RecordType>().unwrap()];
    if r.rtype == "CNAME" {
        types.push(RecordType::A);
    }
    names
        .into_iter()
        .flat_map(|n| types.iter().map(move |t| (n.clone(), *t)))
        .collect()
}

fn wait_transferred(app: &dnsteer::app::App) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = inproc::scrape(app);
        let done = ZONES.iter().all(|z| {
            inproc::metric(
                &text,
                &format!("dnsteer_zone_transfers_total{{zone=\"{z}\",result=\"ok\"}}"),
            ) >= 1.0
        });
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "zones not transferred:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (zone, name, type) → reason, from `/status`'s `left_to_powerdns`.
fn left_to_powerdns(app: &dnsteer::app::App) -> BTreeMap<(String, String), String> {
    let text = inproc::get(app.metrics_addr, "/status");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).expect("/status is JSON");
    v["left_to_powerdns"]
        .as_array()
        .expect("left_to_powerdns")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap_or("").to_ascii_lowercase();
            let name = if name.ends_with('.') {
                name
            } else {
                format!("{name}.")
            };
            (
                (name, e["type"].as_str().unwrap_or("").to_string()),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn corpus_is_answered_in_process_as_powerdns_answers_it() {
    let tcp_up = Listener::tcp();
    let http = Listener::http();
    let tcp_down = support::free_port();
    let zones = corpus(tcp_up.port, tcp_down, http.port);
    let records: Vec<LuaRecord> = zones.iter().flat_map(|(z, t)| lua_records(z, t)).collect();
    assert!(records.len() >= 60, "{} LUA records", records.len());

    let mmdb = Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/test-city.mmdb");
    let zone_refs: Vec<(&str, &str)> = zones
        .iter()
        .map(|(z, t)| (z.as_str(), t.as_str()))
        .collect();
    // Both databases, City first, as PowerDNS tries them in order.
    let asn = Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/test-asn.mmdb");
    let files = format!("geoip-database-files={} {}", mmdb.display(), asn.display());
    let pdns = Pdns::start_geo(
        &zone_refs,
        &mmdb,
        &["lua-health-checks-interval=1", files.as_str()],
    );
    let transfer: Vec<String> = ZONES.iter().map(|z| format!("\"{z}\"")).collect();
    let (app, _dir) = inproc::start_with(
        &[pdns.addr()],
        &format!(
            "[probes]\ninterval = \"1s\"\n[geoip]\ndatabase = \"{}\"\nasn_database = \"{}\"\n[zones]\ntransfer = [{}]\nrefresh = \"60s\"\n",
            mmdb.display(),
            asn.display(),
            transfer.join(", ")
        ),
    );
    let front = app.dns_addrs[0];
    wait_transferred(&app);

    // Health checks: PowerDNS creates a check at the first query and probes it at the next
    // tick (1 s here); dnsteer probes from load. Ask once, then give both time to probe.
    for r in records.iter().filter(|r| r.owner.starts_with("hc-")) {
        for (n, t) in questions(r) {
            let _ = dns_query(pdns.addr(), &n, t, &QueryOpts::udp());
        }
    }
    std::thread::sleep(Duration::from_secs(4));

    let left = left_to_powerdns(&app);
    let mut mismatches: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut asked = 0;
    for r in &records {
        let random = r.owner.starts_with("rnd-");
        for (name, qtype) in questions(r) {
            for subnet in SUBNETS {
                // Without ECS, dnsteer's client is its source masked to /24 (what PowerDNS sees
                // behind it with `client_address = "ecs"`): PowerDNS is asked the same way.
                let (direct_opts, opts) = match subnet {
                    Some(s) => (QueryOpts::udp().ecs(s), QueryOpts::udp().ecs(s)),
                    None => (QueryOpts::udp().ecs("127.0.0.0/24"), QueryOpts::udp()),
                };
                let direct = dns_query(pdns.addr(), &name, qtype, &direct_opts).unwrap();
                let via = dns_query(front, &name, qtype, &opts).unwrap();
                asked += 1;
                let (d, v) = (section(&direct), section(&via));
                let same = if random {
                    // Same rcode and count; every value one the record can give.
                    d.0 == v.0
                        && d.1.len() == v.1.len()
                        && via.answers.iter().all(|a| {
                            r.code
                                .contains(&a.data.to_string().trim_matches('"').to_string())
                        })
                } else {
                    d == v
                };
                if !same {
                    mismatches
                        .entry(format!("{} {}", r.owner, r.rtype))
                        .or_default()
                        .push(format!(
                            "{name} {qtype} ECS {subnet:?}: PowerDNS {d:?}, dnsteer {v:?}"
                        ));
                }
            }
        }
    }

    let is_left = |r: &LuaRecord| {
        let name = r.owner.to_ascii_lowercase();
        left.keys()
            .any(|(n, t)| *n == name && (t == &r.rtype || t == "LUA"))
    };
    let in_process: Vec<&LuaRecord> = records.iter().filter(|r| !is_left(r)).collect();
    let share = in_process.len() as f64 / records.len() as f64;
    eprintln!(
        "corpus: {} LUA records in {} zones, {} answered in-process ({:.1} %), {} questions asked of both",
        records.len(),
        ZONES.len(),
        in_process.len(),
        100.0 * share,
        asked
    );
    for ((n, t), why) in &left {
        eprintln!("  left to PowerDNS: {n} {t}: {why}");
    }
    for (rec, lines) in &mismatches {
        eprintln!(
            "  MISMATCH {rec}: {} questions, e.g. {}",
            lines.len(),
            lines[0]
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} records answer differently from PowerDNS",
        mismatches.len()
    );
    assert!(
        share >= 0.95,
        "only {:.1} % of the corpus is answered in-process",
        100.0 * share
    );
    drop(pdns);
    let _: SocketAddr = front;
}
