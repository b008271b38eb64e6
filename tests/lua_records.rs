//! In-process LUA records: differential check against a real PowerDNS 4.7.3 evaluating the
//! same bodies, and probe-driven failover on real sockets.

mod inproc;
mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::{Pdns, QueryOpts, dns_query};

/// (name, type, ttl, body). The same bodies go to PowerDNS as LUA records and to dnsteer as
/// `[[records]]`.
const RECORDS: &[(&str, &str, u32, &str)] = &[
    (
        "hashed",
        "A",
        60,
        "pickhashed({'192.0.2.1','192.0.2.2','192.0.2.3'})",
    ),
    (
        "whashed3",
        "A",
        60,
        "pickwhashed({{10,'192.0.2.1'},{20,'192.0.2.2'},{30,'192.0.2.3'}})",
    ),
    (
        "whashed5",
        "A",
        60,
        "pickwhashed({{1,'192.0.2.1'},{2,'192.0.2.2'},{3,'192.0.2.3'},{4,'192.0.2.4'},{5,'192.0.2.5'}})",
    ),
    (
        "hashed6",
        "AAAA",
        60,
        "pickhashed({'2001:db8::1','2001:db8::2','2001:db8::3','2001:db8::4'})",
    ),
    ("hashedtxt", "TXT", 60, "pickhashed({'blue','green'})"),
    (
        "allrec",
        "A",
        30,
        "all({'192.0.2.1','192.0.2.2','192.0.2.3'})",
    ),
    (
        "view",
        "A",
        60,
        "view({{{'10.0.0.0/8','2001:db8:1::/48'},{'192.0.2.10'}},{{'0.0.0.0/0'},{'192.0.2.99'}}})",
    ),
    ("static", "A", 300, "{'192.0.2.10','192.0.2.11'}"),
    ("one", "TXT", 300, "'hello world'"),
    ("empty", "A", 120, "{}"),
    ("cname", "CNAME", 60, "'static.lua.test.'"),
];

fn zone_text() -> String {
    let mut z = String::from(
        "$ORIGIN lua.test.\n$TTL 300\n@ IN SOA ns1.lua.test. hostmaster.lua.test. 2024010101 3600 600 86400 60\n\
         @ IN NS ns1.lua.test.\nns1 IN A 127.0.0.1\n",
    );
    for (name, ty, ttl, body) in RECORDS {
        z.push_str(&format!("{name} {ttl} IN LUA {ty} \"{body}\"\n"));
    }
    z
}

fn records_toml() -> String {
    RECORDS
        .iter()
        .map(|(name, ty, ttl, body)| {
            format!("[[records]]\nname = \"{name}.lua.test.\"\ntype = \"{ty}\"\nttl = {ttl}\nlua = \"{body}\"\n\n")
        })
        .collect()
}

fn start_dnsteer(upstream: SocketAddr, extra: &str) -> (dnsteer::app::App, tempfile::TempDir) {
    inproc::start_with(&[upstream], extra)
}

fn answers(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .map(|r| format!("{} {} {}", r.ttl, r.record_type(), r.data))
        .collect();
    v.sort();
    v
}

fn authorities(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.authorities.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

/// Deterministic pseudo-random client subnets, IPv4 and IPv6, several prefix lengths.
fn subnets(n: usize) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(20261122);
    (0..n)
        .map(|i| match i % 6 {
            0 => format!("{}/24", Ipv4Addr::from(rng.u32(..) & 0xffff_ff00)),
            1 => format!("{}/32", Ipv4Addr::from(rng.u32(..))),
            2 => format!("{}/16", Ipv4Addr::from(rng.u32(..) & 0xffff_0000)),
            3 => format!("{}/56", Ipv6Addr::from(rng.u128(..) & !((1u128 << 72) - 1))),
            4 => format!("{}/48", Ipv6Addr::from(rng.u128(..) & !((1u128 << 80) - 1))),
            _ => format!("10.{}.{}.0/24", rng.u8(..), rng.u8(..)),
        })
        .collect()
}

#[test]
fn answers_equal_powerdns_for_deterministic_records() {
    let pdns = Pdns::start(
        &[("lua.test.", &zone_text())],
        &["enable-lua-records=yes", "edns-subnet-processing=yes"],
    );
    let (app, _dir) = start_dnsteer(pdns.addr(), &records_toml());
    let front = app.dns_addrs[0];
    let mut compared = 0;
    for subnet in subnets(300) {
        for (name, ty, _, _) in RECORDS {
            let qtype: RecordType = ty.parse().unwrap();
            let fqdn = format!("{name}.lua.test.");
            let opts = if compared % 2 == 0 {
                QueryOpts::udp()
            } else {
                QueryOpts::tcp()
            }
            .ecs(&subnet);
            let direct = dns_query(pdns.addr(), &fqdn, qtype, &opts).unwrap();
            let via = dns_query(front, &fqdn, qtype, &opts).unwrap();
            let what = format!("{fqdn} {ty} ECS {subnet}");
            assert_eq!(
                via.metadata.response_code, direct.metadata.response_code,
                "{what}"
            );
            assert!(
                via.metadata.authoritative,
                "{what}: in-process answers are authoritative"
            );
            assert_eq!(answers(&via), answers(&direct), "{what}");
            assert_eq!(authorities(&via), authorities(&direct), "{what}");
            let (pe, de) = (
                support::reply_ecs(&direct).unwrap(),
                support::reply_ecs(&via).unwrap(),
            );
            assert_eq!(
                (de.addr(), de.source_prefix()),
                (pe.addr(), pe.source_prefix()),
                "{what}: ECS echo"
            );
            // Scope: PowerDNS puts the source prefix on every LUA answer; dnsteer only where the
            // answer depends on the client (documented difference).
            let client_dependent =
                name.starts_with("hashed") || name.starts_with("whashed") || *name == "view";
            let want_scope = if client_dependent {
                pe.scope_prefix()
            } else {
                0
            };
            if direct.metadata.response_code == ResponseCode::NoError {
                assert_eq!(de.scope_prefix(), want_scope, "{what}: ECS scope");
            }
            compared += 1;
        }
    }
    // Other types at our names: NODATA with the zone's SOA, like PowerDNS.
    for (name, qtype) in [
        ("hashed", RecordType::AAAA),
        ("static", RecordType::MX),
        ("one", RecordType::A),
    ] {
        let fqdn = format!("{name}.lua.test.");
        let direct = dns_query(pdns.addr(), &fqdn, qtype, &QueryOpts::udp()).unwrap();
        let via = dns_query(front, &fqdn, qtype, &QueryOpts::udp()).unwrap();
        assert_eq!(via.metadata.response_code, ResponseCode::NoError);
        assert!(via.answers.is_empty());
        assert_eq!(authorities(&via), authorities(&direct), "{fqdn} {qtype}");
    }
    assert_eq!(compared, 300 * RECORDS.len());
    // None of it came from PowerDNS.
    let text = inproc::get(app.metrics_addr, "/metrics");
    assert_eq!(
        inproc::metric(
            &text,
            "dnsteer_queries_total{transport=\"udp\",decision=\"forwarded\"}"
        ),
        0.0,
        "{text}"
    );
    assert!(
        inproc::metric(
            &text,
            "dnsteer_queries_total{transport=\"udp\",decision=\"rule\"}"
        ) > 1000.0,
        "{text}"
    );
}

/// A LUA CNAME asked for another type: PowerDNS chases the target inside its zones (spec §1).
/// dnsteer appends in-process targets itself, answers out-of-zone targets with the bare CNAME,
/// and leaves targets only PowerDNS holds (here a static A, and a name that does not exist:
/// NXDOMAIN) to PowerDNS.
#[test]
fn a_cname_is_chased_like_powerdns_chases_it() {
    let chained: &[(&str, &str)] = &[
        ("c-inproc", "'static.lua.test.'"),
        ("c-chain", "'c-inproc.lua.test.'"),
        ("c-out", "'www.example.org.'"),
        ("c-static", "'plain.lua.test.'"),
        ("c-missing", "'nowhere.lua.test.'"),
        ("c-nodata", "'one.lua.test.'"),
    ];
    let mut zone = zone_text();
    zone.push_str("plain IN A 192.0.2.77\n");
    let mut toml = records_toml();
    for (name, body) in chained {
        zone.push_str(&format!("{name} 60 IN LUA CNAME \"{body}\"\n"));
        toml.push_str(&format!(
            "[[records]]\nname = \"{name}.lua.test.\"\ntype = \"CNAME\"\nttl = 60\nlua = \"{body}\"\n\n"
        ));
    }
    let pdns = Pdns::start(
        &[("lua.test.", &zone)],
        &["enable-lua-records=yes", "edns-subnet-processing=yes"],
    );
    let (app, _dir) = start_dnsteer(pdns.addr(), &toml);
    let front = app.dns_addrs[0];
    let forwarded = || {
        inproc::metric(
            &inproc::scrape(&app),
            "dnsteer_queries_total{transport=\"udp\",decision=\"forwarded\"}",
        )
    };
    for (name, _) in chained {
        let before = forwarded();
        let fqdn = format!("{name}.lua.test.");
        let opts = QueryOpts::udp().ecs("192.0.2.0/24");
        let direct = dns_query(pdns.addr(), &fqdn, RecordType::A, &opts).unwrap();
        let via = dns_query(front, &fqdn, RecordType::A, &opts).unwrap();
        assert_eq!(
            via.metadata.response_code, direct.metadata.response_code,
            "{fqdn}"
        );
        let named = |m: &Message| {
            let mut v: Vec<String> = m
                .answers
                .iter()
                .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
                .collect();
            v.sort();
            v
        };
        assert_eq!(named(&via), named(&direct), "{fqdn}");
        assert_eq!(authorities(&via), authorities(&direct), "{fqdn}");
        let went = forwarded() - before;
        let want = if matches!(*name, "c-static" | "c-missing") {
            1.0
        } else {
            0.0
        };
        assert_eq!(went, want, "{fqdn}: forwarded to PowerDNS");
    }
}

#[test]
fn without_ecs_the_client_is_what_powerdns_would_see_on_the_forward_path() {
    let pdns = Pdns::start(
        &[("lua.test.", &zone_text())],
        &["enable-lua-records=yes", "edns-subnet-processing=yes"],
    );
    // With `add_ecs = false` nothing is added on the forward path: the packet source is the
    // client. PowerDNS's recipe: no ECS, source 127.0.0.1 → hashed picks 192.0.2.1.
    let (plain, _plain_dir) =
        start_dnsteer(pdns.addr(), &format!("add_ecs = false\n{}", records_toml()));
    let m = dns_query(
        plain.dns_addrs[0],
        "hashed.lua.test.",
        RecordType::A,
        &QueryOpts::udp(),
    )
    .unwrap();
    assert_eq!(support::answer_rdata(&m), vec!["192.0.2.1".to_string()]);
    drop(plain);
    // With `add_ecs` on (the default), a forwarded query reaches PowerDNS with ECS
    // 127.0.0.0/24, so the in-process rule must hash that same identity: a client gets the same
    // choice on both paths (asked of PowerDNS itself with that ECS).
    let (app, _dir) = start_dnsteer(pdns.addr(), &records_toml());
    for name in [
        "hashed.lua.test.",
        "whashed3.lua.test.",
        "whashed5.lua.test.",
    ] {
        let ours = dns_query(app.dns_addrs[0], name, RecordType::A, &QueryOpts::udp()).unwrap();
        let theirs = dns_query(
            pdns.addr(),
            name,
            RecordType::A,
            &QueryOpts::udp().ecs("127.0.0.0/24"),
        )
        .unwrap();
        assert_eq!(support::answer_rdata(&ours).len(), 1, "{name}");
        assert_eq!(
            support::answer_rdata(&ours),
            support::answer_rdata(&theirs),
            "{name}"
        );
    }
    let m = dns_query(
        app.dns_addrs[0],
        "hashed.lua.test.",
        RecordType::A,
        &QueryOpts::udp(),
    )
    .unwrap();
    assert!(m.edns.is_none(), "no EDNS in, no OPT out");
    let m = dns_query(
        app.dns_addrs[0],
        "allrec.lua.test.",
        RecordType::A,
        &QueryOpts::udp(),
    )
    .unwrap();
    assert_eq!(m.answers.len(), 3);
    assert!(m.answers.iter().all(|r| r.ttl == 30));
    // A type we do not hold at a name we do not hold: forwarded, PowerDNS answers.
    let m = dns_query(
        app.dns_addrs[0],
        "ns1.lua.test.",
        RecordType::A,
        &QueryOpts::udp(),
    )
    .unwrap();
    assert_eq!(support::answer_rdata(&m), vec!["127.0.0.1".to_string()]);
}

// ---------------------------------------------------------------------------------------------
// Failover on real sockets
// ---------------------------------------------------------------------------------------------

/// A tiny HTTP server answering 200 or 500 depending on `healthy`; stops with the flag.
struct HttpTarget {
    healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpTarget {
    fn start(addr: SocketAddr) -> HttpTarget {
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (healthy.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 2048];
                        let _ = c.read(&mut buf);
                        let status = if h.load(Ordering::Relaxed) {
                            "200 OK"
                        } else {
                            "500 Oops"
                        };
                        let _ = write!(
                            c,
                            "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HttpTarget {
            healthy,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn a_answers(front: SocketAddr, name: &str) -> Vec<String> {
    let m = dns_query(front, name, RecordType::A, &QueryOpts::udp()).unwrap();
    let mut v = support::answer_rdata(&m);
    v.sort();
    v
}

/// Waits until `name` answers `want`; returns how long it took.
fn wait_for(front: SocketAddr, name: &str, want: &[&str], limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let got = a_answers(front, name);
        if got == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "{name}: still {got:?} after {limit:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Scheduling slack on a loaded 2-core machine (probe timer + query round trips), on top of
/// the spec's bound of interval × threshold + interval.
const SLACK: Duration = Duration::from_millis(1000);

#[test]
fn failover_and_recovery_follow_probe_state() {
    let pdns = Pdns::start(&[("lua.test.", &zone_text())], &[]);
    let port = support::free_port_on("127.0.0.21".parse().unwrap());
    let tcp_a: SocketAddr = format!("127.0.0.21:{port}").parse().unwrap();
    let http_a: SocketAddr = format!("127.0.0.23:{port}").parse().unwrap();
    let http_b: SocketAddr = format!("127.0.0.24:{port}").parse().unwrap();
    let tcp_listener = TcpListener::bind(tcp_a).unwrap();
    let _tcp_b = TcpListener::bind(format!("127.0.0.22:{port}")).unwrap();
    let web_a = HttpTarget::start(http_a);
    let _web_b = HttpTarget::start(http_b);
    // interval 300 ms, fall 2, rise 2.
    let opts = "interval='0.3', minimumFailures='2', rise='2', timeout='0.2'";
    let extra = format!(
        "[[records]]\nname = \"port.lua.test.\"\ntype = \"A\"\nttl = 5\n\
         lua = \"ifportup({port}, {{'127.0.0.21','127.0.0.22'}}, {{selector='pickfirst', {opts}}})\"\n\n\
         [[records]]\nname = \"url.lua.test.\"\ntype = \"A\"\nttl = 5\n\
         lua = \"ifurlup('http://hc.lua.test:{port}/', {{{{'127.0.0.23'}},{{'127.0.0.24'}}}}, {{{opts}}})\"\n"
    );
    let (app, _dir) = start_dnsteer(pdns.addr(), &extra);
    let front = app.dns_addrs[0];
    // The first probe round ran before the listener opened: no cold answers.
    assert_eq!(a_answers(front, "port.lua.test."), vec!["127.0.0.21"]);
    assert_eq!(a_answers(front, "url.lua.test."), vec!["127.0.0.23"]);

    // Bound from the spec: interval × fall + interval (+ slack for a busy 2-core machine).
    let down_bound = Duration::from_millis(300 * 2 + 300) + SLACK;
    drop(tcp_listener);
    web_a.healthy.store(false, Ordering::Relaxed);
    let t1 = wait_for(front, "port.lua.test.", &["127.0.0.22"], down_bound);
    let t2 = wait_for(front, "url.lua.test.", &["127.0.0.24"], down_bound);
    eprintln!("failover after {t1:?} (tcp), {t2:?} (http)");

    let _tcp_again = TcpListener::bind(tcp_a).unwrap();
    web_a.healthy.store(true, Ordering::Relaxed);
    let up_bound = Duration::from_millis(300 * 2 + 300) + SLACK;
    let t3 = wait_for(front, "port.lua.test.", &["127.0.0.21"], up_bound);
    let t4 = wait_for(front, "url.lua.test.", &["127.0.0.23"], up_bound);
    eprintln!("recovery after {t3:?} (tcp), {t4:?} (http)");

    let status = inproc::get(app.metrics_addr, "/status");
    assert!(
        status.contains("127.0.0.21") && status.contains("state_changes"),
        "{status}"
    );
    let text = inproc::get(app.metrics_addr, "/metrics");
    assert!(
        inproc::metric(&text, "dnsteer_probe_state_changes_total{") >= 4.0,
        "{text}"
    );
}

#[test]
fn everything_down_uses_the_backup_selector() {
    let pdns = Pdns::start(&[("lua.test.", &zone_text())], &[]);
    let port = support::free_port_on(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 31)));
    // Nothing listens on .31/.32: both DOWN after the first round (fall 1).
    let extra = format!(
        "[[records]]\nname = \"down.lua.test.\"\ntype = \"A\"\nttl = 5\n\
         lua = \"ifportup({port}, {{'127.0.0.31','127.0.0.32'}}, {{backupSelector='pickfirst', timeout='0.2'}})\"\n\n\
         [[records]]\nname = \"downall.lua.test.\"\ntype = \"A\"\nttl = 5\n\
         lua = \"ifportup({port}, {{'127.0.0.31','127.0.0.32'}}, {{backupSelector='all', timeout='0.2'}})\"\n\n\
         [[records]]\nname = \"downempty.lua.test.\"\ntype = \"A\"\nttl = 5\n\
         lua = \"ifportup({port}, {{'127.0.0.31','127.0.0.32'}}, {{backupSelector='empty', timeout='0.2'}})\"\n"
    );
    let (app, _dir) = start_dnsteer(pdns.addr(), &extra);
    let front = app.dns_addrs[0];
    assert_eq!(a_answers(front, "down.lua.test."), vec!["127.0.0.31"]);
    assert_eq!(
        a_answers(front, "downall.lua.test."),
        vec!["127.0.0.31", "127.0.0.32"]
    );
    let m = dns_query(
        front,
        "downempty.lua.test.",
        RecordType::A,
        &QueryOpts::udp(),
    )
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    let text = inproc::get(app.metrics_addr, "/metrics");
    assert!(
        inproc::metric(
            &text,
            "dnsteer_queries_total{transport=\"udp\",decision=\"backup\"}"
        ) >= 2.0,
        "{text}"
    );
}
