//! Differential tests of wildcard owners and the name-derived LUA functions (`createReverse`,
//! `createReverse6`, `createForward`, `createForward6`, `filterForward`): the same zones in a
//! real PowerDNS 4.7.3 and in dnsteer (by zone transfer, and by `[[records]]`), the same
//! queries to both; rcodes, answer owners and answers must be identical, and dnsteer must have
//! answered the generated names itself.

mod inproc;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::{Pdns, QueryOpts, dns_query};

const HEAD: &str = "$TTL 300\n@ IN SOA ns1.example.test. admin.example.test. 1 3600 600 86400 60\n\
                    @ IN NS ns1.example.test.\n";

/// Static names beside the wildcards (both servers hold them).
const EXAMPLE_STATIC: &str = "ns1 IN A 192.0.2.53\nexact IN A 192.0.2.7\na.b.ent IN A 192.0.2.8\n\
                              deleg IN NS ns1.example.test.\n";

/// The generator records, as zone-file lines per zone and as `[[records]]` (name, type, body).
const EXAMPLE_LUA: &[(&str, &str, &str)] = &[
    ("*", "A", "createForward()"),
    ("*", "AAAA", "createForward6()"),
    ("*.ip", "A", "createForward()"),
    ("*.ip", "AAAA", "createForward6()"),
    (
        "*.f",
        "A",
        "filterForward(createForward(), newNMG({'192.0.2.0/24'}))",
    ),
    (
        "*.g",
        "A",
        "filterForward(createForward(), newNMG({'192.0.2.0/24', '198.51.100.0/24'}), '192.0.2.99')",
    ),
];
const REV4_LUA: &[(&str, &str, &str)] = &[
    (
        "*",
        "PTR",
        "createReverse('ip-%1%-%2%-%3%-%4%.example.test', {['192.0.2.5']='special.example.test'})",
    ),
    ("*.sub", "PTR", "createReverse('%5%.%6%.x.example.test')"),
];
const REV6_LUA: &[(&str, &str, &str)] = &[(
    "*",
    "PTR",
    "createReverse6('%33%.v6.example.test', {['2001:db8::5']='special6.example.test'})",
)];

const EXAMPLE: &str = "example.test.";
const REV4: &str = "2.0.192.in-addr.arpa.";
const REV6: &str = "8.b.d.0.1.0.0.2.ip6.arpa.";

fn zone_text(lua: &[(&str, &str, &str)], extra: &str) -> String {
    let mut z = format!("{HEAD}{extra}");
    for (owner, rtype, body) in lua {
        z.push_str(&format!("{owner} IN LUA {rtype} \"{body}\"\n"));
    }
    z
}

fn full_zones() -> Vec<(&'static str, String)> {
    vec![
        (EXAMPLE, zone_text(EXAMPLE_LUA, EXAMPLE_STATIC)),
        (REV4, zone_text(REV4_LUA, "")),
        (REV6, zone_text(REV6_LUA, "")),
    ]
}

fn reverse6(addr: &str) -> String {
    let ip: std::net::Ipv6Addr = addr.parse().unwrap();
    let mut s = String::new();
    for b in ip.octets().iter().rev() {
        s += &format!("{:x}.{:x}.", b & 0xf, b >> 4);
    }
    s + "ip6.arpa."
}

/// (name, type) pairs across formats, ranges, exceptions, unparsable names and exact names.
fn queries() -> Vec<(String, RecordType)> {
    let mut q: Vec<(String, RecordType)> = Vec::new();
    let a = [
        "1.2.3.4",
        "1-2-3-4",
        "ip-1-2-3-4",
        "ip-c0000201",
        "ipc0000201",
        "ipC0A80001",
        "c0000201",
        "1.2.3.4.ip",
        "1-2-3-4.ip",
        "x.y.ip",
        "1.2.3.999",
        "1-2-3-999",
        "255-255-255-255",
        "0-0-0-0",
        "foo",
        "1.2.3.4.5",
        "a-b-c-d-1-2-3-4",
        "0x1-2-3-4",
        "01-02-03-04",
        "01.02.03.010",
        "0x1.2.3.4",
        "ipzzzzzzzz",
        "x-1-2-3",
        "192-0-2-4.f",
        "10-2-3-4.f",
        "198-51-100-9.g",
        "10-2-3-4.g",
        "exact",
        "ent",
        "b.ent",
        "x.exact",
        "x.deleg",
        // The case the client wrote is kept in owners and in what the functions read.
        "IPC0000201",
        "Ip-1-2-3-4",
        // Hex labels of exactly 10 bytes: a sign, a 0x prefix, a short last digit.
        "ip-1020304",
        "0x01020304",
        "ipc000020g",
        "ipc00002zz",
        "1-2-3-4-",
        "1--2--3--4",
    ];
    for n in a {
        q.push((format!("{n}.{EXAMPLE}"), RecordType::A));
    }
    let aaaa = [
        "2001-db8--1",
        "2001.db8.0.0.0.0.0.1",
        "2001-db8--1.ip",
        "1-53",
        "zz",
        "zz.0.0.0.0.0.0.1",
        "x--1",
        "exact",
        "1.2.3.4.5.6.7.8",
        "1.2.3.4",
        "ffff.0.0.0.0.0.0.ffff",
        "1-2-3-4-5-6-7-8",
        "2001-DB8--1",
        "1-2",
        "1-99999",
        "ip-2001-db8--1",
    ];
    for n in aaaa {
        q.push((format!("{n}.{EXAMPLE}"), RecordType::AAAA));
    }
    for last in [
        "0", "1", "4", "5", "99", "255", "010", "foo", "0x5", "05", "256", "1e1", "Ab",
    ] {
        q.push((format!("{last}.{REV4}"), RecordType::PTR));
    }
    for n in ["7.sub", "200.sub", "x.sub", "X.Sub", "1.2.3.4"] {
        q.push((format!("{n}.{REV4}"), RecordType::PTR));
    }
    for addr in [
        "2001:db8::1",
        "2001:db8::5",
        "2001:db8::",
        "2001:db8:0:0:1::",
        "2001:db8:1:2:3:4:5:6",
        "2001:db8:ffff::ffff:0",
    ] {
        q.push((reverse6(addr), RecordType::PTR));
    }
    q.push(("5.2.0.192.IN-ADDR.arpa.".into(), RecordType::PTR));
    q.push(("1-2-3-4.Example.TEST.".into(), RecordType::A));
    // A PTR at a name with too few nibbles: NXDOMAIN-free wildcard below the zone apex.
    q.push((format!("1.{REV6}"), RecordType::PTR));
    q
}

/// What a resolver would compare: rcode, answer owners, types and data (as a sorted set).
fn outcome(m: &Message) -> (ResponseCode, Vec<String>) {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .map(|r| format!("{} {} {}", r.name.to_ascii(), r.record_type(), r.data))
        .collect();
    v.sort();
    (m.metadata.response_code, v)
}

fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> (ResponseCode, Vec<String>) {
    let m = dns_query(server, name, qtype, &QueryOpts::udp()).unwrap();
    outcome(&m)
}

fn ask_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> (ResponseCode, Vec<String>) {
    let m = dns_query(server, name, qtype, &QueryOpts::tcp()).unwrap();
    outcome(&m)
}

/// Waits until dnsteer answers a generated name in-process (the zones are transferred).
fn wait_ready(front: SocketAddr, metrics: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        ask(front, &format!("9-9-9-9.{EXAMPLE}"), RecordType::A);
        let text = inproc::get(metrics, "/metrics");
        if inproc::metric(
            &text,
            "dnsteer_queries_total{transport=\"udp\",decision=\"rule\"}",
        ) >= 1.0
        {
            return;
        }
        assert!(Instant::now() < deadline, "no in-process answer: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn compare(pdns: SocketAddr, front: SocketAddr, metrics: SocketAddr) {
    let before = inproc::get(metrics, "/metrics");
    let rule = |t: &str| {
        inproc::metric(
            t,
            "dnsteer_queries_total{transport=\"udp\",decision=\"rule\"}",
        ) + inproc::metric(
            t,
            "dnsteer_queries_total{transport=\"udp\",decision=\"error\"}",
        )
    };
    let queries = queries();
    let mut mismatches = Vec::new();
    for (name, qtype) in &queries {
        let want = ask(pdns, name, *qtype);
        let got = ask(front, name, *qtype);
        if want != got {
            mismatches.push(format!(
                "{name} {qtype}: powerdns {want:?}, dnsteer {got:?}"
            ));
        }
        let got_tcp = ask_tcp(front, name, *qtype);
        if want != got_tcp {
            mismatches.push(format!(
                "{name} {qtype} over TCP: powerdns {want:?}, dnsteer {got_tcp:?}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // Most of the names are generated in-process (the exact names, empty non-terminals and
    // the delegation are PowerDNS's).
    let after = inproc::get(metrics, "/metrics");
    let in_process = rule(&after) - rule(&before);
    assert!(
        in_process >= (queries.len() - 8) as f64,
        "only {in_process} of {} answered in-process",
        queries.len()
    );
}

#[test]
fn transferred_generators_answer_like_powerdns() {
    let zones = full_zones();
    let zones_ref: Vec<(&str, &str)> = zones.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let pdns = Pdns::start(&zones_ref, &[]);
    let (app, _dir) = inproc::start_with(
        &[pdns.addr()],
        &format!("[zones]\ntransfer = [\"{EXAMPLE}\", \"{REV4}\", \"{REV6}\"]\n"),
    );
    wait_ready(app.dns_addrs[0], app.metrics_addr);
    compare(pdns.addr(), app.dns_addrs[0], app.metrics_addr);
}

#[test]
fn config_generators_answer_like_powerdns() {
    // The reference holds the generator records; the upstream of dnsteer only the static names,
    // and dnsteer the generators as [[records]].
    let zones = full_zones();
    let zones_ref: Vec<(&str, &str)> = zones.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let reference = Pdns::start(&zones_ref, &[]);
    let plain = [
        (EXAMPLE, zone_text(&[], EXAMPLE_STATIC)),
        (REV4, zone_text(&[], "")),
        (REV6, zone_text(&[], "")),
    ];
    let plain_ref: Vec<(&str, &str)> = plain.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let upstream = Pdns::start(&plain_ref, &[]);
    let mut config = format!("[zones]\ntransfer = [\"{EXAMPLE}\", \"{REV4}\", \"{REV6}\"]\n");
    for (zone, records) in [(EXAMPLE, EXAMPLE_LUA), (REV4, REV4_LUA), (REV6, REV6_LUA)] {
        for (owner, rtype, body) in records {
            config.push_str(&format!(
                "[[records]]\nname = \"{owner}.{zone}\"\ntype = \"{rtype}\"\nttl = 300\nlua = \"{body}\"\n"
            ));
        }
    }
    let (app, _dir) = inproc::start_with(&[upstream.addr()], &config);
    wait_ready(app.dns_addrs[0], app.metrics_addr);
    compare(reference.addr(), app.dns_addrs[0], app.metrics_addr);
}

#[test]
fn a_name_only_powerdns_holds_is_never_shadowed() {
    // Added in PowerDNS beside a config wildcard: after the next transfer it is PowerDNS's.
    let zone = zone_text(&[], "late IN TXT \"pdns\"\n");
    let pdns = Pdns::start(&[(EXAMPLE, &zone)], &[]);
    let config = format!(
        "[zones]\ntransfer = [\"{EXAMPLE}\"]\n[[records]]\nname = \"*.{EXAMPLE}\"\ntype = \"A\"\nlua = \"createForward()\"\n"
    );
    let (app, _dir) = inproc::start_with(&[pdns.addr()], &config);
    let front = app.dns_addrs[0];
    wait_ready(front, app.metrics_addr);
    let (rc, answers) = ask(front, &format!("late.{EXAMPLE}"), RecordType::A);
    assert_eq!(rc, ResponseCode::NoError);
    assert!(answers.is_empty(), "{answers:?}");
    let (rc, answers) = ask(front, &format!("x.late.{EXAMPLE}"), RecordType::A);
    assert_eq!((rc, answers), (ResponseCode::NXDomain, vec![]));
    let (_, answers) = ask(front, &format!("10-0-0-1.{EXAMPLE}"), RecordType::A);
    assert_eq!(answers, vec![format!("10-0-0-1.{EXAMPLE} A 10.0.0.1")]);
}

/// `closestMagic()` and `latlonMagic()` under wildcard owners, PowerDNS 4.7.3 with the geoip backend against
/// dnsteer (by zone transfer) with the same City database, asked with ECS from several
/// continents. 4.7.3 reads the query name's labels from the left, `-` made `.`, each parsed as
/// `ComboAddress` (inet_aton forms included), and stops at the first label that is none; no
/// address at all raises (SERVFAIL); the result is printed as `ComboAddress::toString` and read
/// as the record type. Clients and candidates are all located and far from ties, where planar
/// and great-circle distance agree (dnsteer's documented deviations: 4.7.3 measures planar
/// degrees, so a Beijing client gets Sydney over Amsterdam, and puts an unlocated address at
/// 0°,0°).
#[test]
fn closest_magic_answers_like_powerdns() {
    const ZONE: &str = "magic.test.";
    let zone = zone_text(
        &[
            ("*", "A", "closestMagic()"),
            ("*", "TXT", "closestMagic()"),
            ("*.six", "AAAA", "closestMagic()"),
            ("*.ll", "TXT", "latlonMagic()"),
        ],
        "ns1 IN A 192.0.2.53\n",
    );
    let city = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("geoip/test-city.mmdb");
    let pdns = Pdns::start_geo(&[(ZONE, &zone)], &city, &["edns-subnet-processing=yes"]);
    let (app, _dir) = inproc::start_with(
        &[pdns.addr()],
        &format!(
            "[geoip]\ndatabase = \"{}\"\n[zones]\ntransfer = [\"{ZONE}\"]\n",
            city.display()
        ),
    );
    let front = app.dns_addrs[0];
    let names = [
        "193-0-6-139.8-8-8-8",
        "8-8-8-8.193-0-6-139",
        "193-0-6-139.8-8-8-8.210-140-92-1.1-1-1-1",
        "8-8-8-8",
        // Stops at `x`: 193.0.6.139 is never a candidate.
        "8-8-8-8.x.193-0-6-139",
        // The first label is no address: no candidates, SERVFAIL.
        "www",
        "300-1-1-1.8-8-8-8",
        // inet_aton forms: three parts, one number, hex, octal.
        "1-1-257.8-8-8-8",
        "16843009.8-8-8-8",
        "0x8-8-8-8.193-0-6-139",
        "010-8-8-8.193-0-6-139",
        "8-8-8-8.six",
        "193-0-6-139.six",
    ];
    // latlonMagic(): labels 3.2.1.0 as an inet_pton address; no address or an unlocated one
    // gives 0, 0 (fewer than four labels, "unknown", cannot happen below this zone).
    let latlon_names = [
        "139.6.0.193.ll",
        "8.8.8.8.ll",
        "1.92.140.210.ll",
        "1.113.0.203.ll",
        "8.8.8.010.ll",
        "8.8.8.0x8.ll",
        "x.y.z.w.ll",
        "7.8.8.8.8.ll",
        "8.8.8.8.x.ll",
        "8-8-8-8.ll",
        "a.b.ll",
    ];
    let ecs = [
        "80.81.82.0/24",
        "45.33.32.0/24",
        "101.0.0.0/24",
        "139.130.4.0/24",
        "193.0.6.0/24",
        "210.140.92.0/24",
        "200.160.0.0/24",
    ];
    let ask_ecs = |server, name: &str, qtype, subnet| {
        let m = dns_query(server, name, qtype, &QueryOpts::udp().ecs(subnet)).unwrap();
        outcome(&m)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask_ecs(front, &format!("8-8-8-8.{ZONE}"), RecordType::A, ecs[0])
        .1
        .is_empty()
    {
        assert!(Instant::now() < deadline, "zone not transferred");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = inproc::get(app.metrics_addr, "/metrics");
    let mut mismatches = Vec::new();
    let mut asked = 0u32;
    for name in names {
        let qname = format!("{name}.{ZONE}");
        let qtypes: &[RecordType] = if name.ends_with("six") {
            &[RecordType::AAAA]
        } else {
            &[RecordType::A, RecordType::TXT]
        };
        for &qtype in qtypes {
            for subnet in ecs {
                asked += 1;
                let want = ask_ecs(pdns.addr(), &qname, qtype, subnet);
                let got = ask_ecs(front, &qname, qtype, subnet);
                if want != got {
                    mismatches.push(format!(
                        "{qname} {qtype} ECS {subnet}: powerdns {want:?}, dnsteer {got:?}"
                    ));
                }
            }
        }
    }
    for name in latlon_names {
        let qname = format!("{name}.{ZONE}");
        for subnet in &ecs[..2] {
            asked += 1;
            let want = ask_ecs(pdns.addr(), &qname, RecordType::TXT, subnet);
            let got = ask_ecs(front, &qname, RecordType::TXT, subnet);
            if want != got {
                mismatches.push(format!(
                    "{qname} TXT ECS {subnet}: powerdns {want:?}, dnsteer {got:?}"
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    let after = inproc::get(app.metrics_addr, "/metrics");
    let in_process = |t: &str| {
        ["rule", "error"]
            .iter()
            .map(|d| {
                inproc::metric(
                    t,
                    &format!("dnsteer_queries_total{{transport=\"udp\",decision=\"{d}\"}}"),
                )
            })
            .sum::<f64>()
    };
    assert_eq!(in_process(&after) - in_process(&before), f64::from(asked));
    // Spot checks, so both servers being wrong alike is caught.
    let a = |name: &str, subnet| ask_ecs(front, &format!("{name}.{ZONE}"), RecordType::A, subnet);
    assert_eq!(
        a("193-0-6-139.8-8-8-8", "80.81.82.0/24").1,
        [format!("193-0-6-139.8-8-8-8.{ZONE} A 193.0.6.139")]
    );
    assert_eq!(
        a("193-0-6-139.8-8-8-8", "45.33.32.0/24").1,
        [format!("193-0-6-139.8-8-8-8.{ZONE} A 8.8.8.8")]
    );
    assert_eq!(a("www", "45.33.32.0/24").0, ResponseCode::ServFail);
    let t = |name: &str| ask_ecs(front, &format!("{name}.{ZONE}"), RecordType::TXT, ecs[0]).1;
    assert_eq!(
        t("139.6.0.193.ll"),
        [format!("139.6.0.193.ll.{ZONE} TXT 52.367600 4.904100")]
    );
    // Five labels: `magic.ll.b.a` is no address.
    assert_eq!(
        t("a.b.ll"),
        [format!("a.b.ll.{ZONE} TXT 0.000000 0.000000")]
    );
}
