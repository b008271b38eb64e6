//! `pickclosest` from the test GeoIP database (against PowerDNS's geoip backend on the same
//! file, and where we differ on purpose), and DO=1 queries for signed zones.

mod inproc;
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use support::{Pdns, QueryOpts, dns_query};

const CLOSEST: &str = "pickclosest({'193.0.6.139','8.8.8.8','210.140.92.1','1.1.1.1'})";
const ACROSS: &str = "pickclosest({'193.0.6.139','210.140.92.1'})";

fn mmdb() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("geoip/test-city.mmdb")
}

fn zone() -> String {
    format!(
        "$ORIGIN geo.test.\n$TTL 300\n@ IN SOA ns1.geo.test. hostmaster.geo.test. 1 3600 600 86400 60\n\
         @ IN NS ns1.geo.test.\nns1 IN A 127.0.0.1\n\
         closest 60 IN LUA A \"{CLOSEST}\"\nacross 60 IN LUA A \"{ACROSS}\"\n"
    )
}

fn start(upstream: SocketAddr, records: &str, geo: bool) -> (dnsteer::app::App, tempfile::TempDir) {
    let geoip = if geo {
        format!("[geoip]\ndatabase = \"{}\"\n", mmdb().display())
    } else {
        String::new()
    };
    inproc::start_with(&[upstream], &(geoip + records))
}

fn record(name: &str, body: &str) -> String {
    format!("[[records]]\nname = \"{name}\"\ntype = \"A\"\nttl = 60\nlua = \"{body}\"\n")
}

fn metric(addr: SocketAddr, prefix: &str) -> f64 {
    inproc::metric(&inproc::get(addr, "/metrics"), prefix)
}

fn one(front: SocketAddr, name: &str, ecs: &str) -> (String, u8) {
    let m = dns_query(front, name, RecordType::A, &QueryOpts::udp().ecs(ecs)).unwrap();
    let a = support::answer_rdata(&m);
    assert_eq!(a.len(), 1, "{name} {ecs}: {a:?}");
    (
        a[0].clone(),
        support::reply_ecs(&m).map_or(255, |e| e.scope_prefix()),
    )
}

#[test]
fn pickclosest_matches_powerdns_where_both_agree_and_differs_where_documented() {
    let pdns = Pdns::start_geo(
        &[("geo.test.", &zone())],
        &mmdb(),
        &["enable-lua-records=yes", "edns-subnet-processing=yes"],
    );
    let records = record("closest.geo.test.", CLOSEST) + &record("across.geo.test.", ACROSS);
    let (app, _dir) = start(pdns.addr(), &records, true);
    let front = app.dns_addrs[0];
    // The spec's §6 table (a 2018 GeoLite2 gave PowerDNS the same winners).
    let cases = [
        ("80.81.82.0/24", "193.0.6.139"),
        ("45.33.32.0/24", "8.8.8.8"),
        ("101.0.0.0/24", "210.140.92.1"),
        ("139.130.4.0/24", "1.1.1.1"),
        ("41.0.0.0/24", "193.0.6.139"),
        ("200.160.0.0/24", "8.8.8.8"),
        ("203.0.113.0/24", "193.0.6.139"),
        ("2001:db8:7::/48", "210.140.92.1"),
        ("2001:db8:8::/48", "1.1.1.1"),
    ];
    for (ecs, want) in cases {
        let (direct, _) = one(pdns.addr(), "closest.geo.test.", ecs);
        let (via, scope) = one(front, "closest.geo.test.", ecs);
        assert_eq!(direct, want, "PowerDNS for {ecs}");
        assert_eq!(via, want, "dnsteer for {ecs}");
        // Scope: the smaller of the source prefix and the prefix of the mmdb network that
        // located the client (an unlocated client gets the source prefix).
        let source: u8 = ecs.rsplit('/').next().unwrap().parse().unwrap();
        assert!(scope <= source, "{ecs}: scope {scope}");
    }
    // Located in a /24 network, asked with a /32: the answer holds for the whole /24.
    let (_, scope) = one(front, "closest.geo.test.", "80.81.82.7/32");
    assert_eq!(scope, 24);

    // Deliberate difference: San Jose between Amsterdam and Tokyo. Great-circle: Tokyo
    // (about 8,300 km vs 8,800 km); PowerDNS's one-sided longitude wrap picks Amsterdam.
    assert_eq!(
        one(front, "across.geo.test.", "45.33.32.0/24").0,
        "210.140.92.1"
    );
    assert_eq!(
        one(pdns.addr(), "across.geo.test.", "45.33.32.0/24").0,
        "193.0.6.139"
    );
}

#[test]
fn without_ecs_the_packet_source_is_located() {
    let pdns = Pdns::start(&[("geo.test.", &zone())], &[]);
    let (app, _dir) = start(pdns.addr(), &record("closest.geo.test.", CLOSEST), true);
    let front = app.dns_addrs[0];
    for (source, want) in [
        ("127.0.2.9", "210.140.92.1"),
        ("127.0.3.9", "8.8.8.8"),
        ("127.0.1.9", "193.0.6.139"),
    ] {
        let sock = UdpSocket::bind((source, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let (_, wire) = support::build_query("closest.geo.test.", RecordType::A, &QueryOpts::udp());
        sock.send_to(&wire, front).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(
            support::answer_rdata(&m),
            vec![want.to_string()],
            "from {source}"
        );
    }
}

#[test]
fn pickclosest_without_a_geoip_database_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dnsteer.toml");
    std::fs::write(&path, record("closest.geo.test.", CLOSEST)).unwrap();
    let config = dnsteer::config::Config::load(&path).unwrap();
    let Err(err) = dnsteer::steer::records::compile(&config) else {
        panic!("pickclosest without [geoip] must be rejected");
    };
    let err = err.to_string();
    assert!(err.contains("GeoIP") || err.contains("geoip"), "{err}");
}

#[test]
fn do_queries_for_signed_zones_go_to_powerdns() {
    // A DNSKEY at the apex is what marks a zone signed for dnsteer; the key's bytes do not matter
    // to this test (PowerDNS serves it as plain zone data from the bind backend).
    let signed = "$ORIGIN signed.test.\n$TTL 300\n@ IN SOA ns1.signed.test. h.signed.test. 1 3600 600 86400 60\n\
                  @ IN NS ns1.signed.test.\nns1 IN A 127.0.0.1\n\
                  @ IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==\n\
                  lb 60 IN LUA A \"all({'192.0.2.1','192.0.2.2'})\"\n";
    let pdns = Pdns::start(&[("signed.test.", signed)], &["enable-lua-records=yes"]);
    let (app, _dir) = start(
        pdns.addr(),
        &record("lb.signed.test.", "all({'192.0.2.1','192.0.2.2'})"),
        false,
    );
    let front = app.dns_addrs[0];
    let plain = dns_query(
        front,
        "lb.signed.test.",
        RecordType::A,
        &QueryOpts::udp().edns(1232),
    )
    .unwrap();
    assert_eq!(plain.answers.len(), 2);
    assert_eq!(
        metric(app.metrics_addr, "dnsteer_dnssec_forwarded_total"),
        0.0
    );
    let dnssec = dns_query(
        front,
        "lb.signed.test.",
        RecordType::A,
        &QueryOpts::udp().dnssec_ok(),
    )
    .unwrap();
    assert_eq!(dnssec.answers.len(), 2, "PowerDNS evaluated it");
    assert_eq!(
        metric(app.metrics_addr, "dnsteer_dnssec_forwarded_total"),
        1.0
    );
    assert_eq!(
        metric(
            app.metrics_addr,
            "dnsteer_queries_total{transport=\"udp\",decision=\"forwarded\"}"
        ),
        1.0
    );
}
