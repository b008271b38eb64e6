//! The PowerDNS test harness itself: it starts a real pdns_server with the demo zone, answers
//! over UDP and TCP (ECS, EDNS, truncation), stops, restarts, reloads zones, and never leaves a
//! process behind (drop, panic).

mod support;

use std::panic;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::{
    DEMO_ZONE, DEMO_ZONE_NAME, Pdns, QueryOpts, answer_rdata, dns_query, pid_alive, reply_ecs,
};

fn ask(pdns: &Pdns, name: &str, qtype: RecordType, opts: &QueryOpts) -> hickory_proto::op::Message {
    dns_query(pdns.addr(), name, qtype, opts)
        .unwrap_or_else(|e| panic!("{name} {qtype} via {}: {e}\n{}", pdns.addr(), pdns.log()))
}

#[test]
fn serves_demo_zone_over_udp_and_tcp_and_is_gone_after_drop() {
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let pid = pdns.pid().expect("running");
    assert!(pid_alive(pid));
    assert!(pdns.addr().ip().is_loopback());

    let www = ask(&pdns, "www.demo.test.", RecordType::A, &QueryOpts::udp());
    assert_eq!(www.metadata.response_code, ResponseCode::NoError);
    assert!(www.metadata.authoritative);
    assert_eq!(answer_rdata(&www), ["192.0.2.80"]);

    let nx = ask(&pdns, "nope.demo.test.", RecordType::A, &QueryOpts::tcp());
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);

    // The long TXT does not fit 512 bytes: TC=1 without EDNS, whole over TCP and EDNS 1232.
    let cut = ask(&pdns, "big.demo.test.", RecordType::TXT, &QueryOpts::udp());
    assert!(cut.metadata.truncation, "expected TC=1 without EDNS");
    let whole = ask(&pdns, "big.demo.test.", RecordType::TXT, &QueryOpts::tcp());
    assert!(!whole.metadata.truncation);
    assert_eq!(whole.answers.len(), 1);
    assert!(whole.answers[0].data.to_string().len() >= 600);
    let edns = ask(
        &pdns,
        "big.demo.test.",
        RecordType::TXT,
        &QueryOpts::udp().edns(1232),
    );
    assert!(!edns.metadata.truncation);
    assert_eq!(edns.answers.len(), 1);

    // LUA records are evaluated by PowerDNS (enable-lua-records=yes).
    let all = ask(&pdns, "all.demo.test.", RecordType::A, &QueryOpts::udp());
    assert_eq!(answer_rdata(&all), ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);

    // ECS reaches the LUA code (edns-subnet-processing=yes) and is echoed; host bits cleared.
    let who = ask(
        &pdns,
        "pdns-who.demo.test.",
        RecordType::TXT,
        &QueryOpts::udp().ecs("10.1.2.99/24"),
    );
    assert_eq!(answer_rdata(&who), ["pdns saw bestwho=10.1.2.0"]);
    let ecs = reply_ecs(&who).expect("ECS echoed");
    assert_eq!(ecs.source_prefix(), 24);
    assert_eq!(ecs.addr().to_string(), "10.1.2.0");

    // pickwhashed is a function of the client subnet only: same subnet, same answer.
    let opts = QueryOpts::tcp().ecs("198.51.100.0/24");
    let first = answer_rdata(&ask(&pdns, "whashed.demo.test.", RecordType::A, &opts));
    assert_eq!(first.len(), 1);
    for _ in 0..5 {
        assert_eq!(
            answer_rdata(&ask(&pdns, "whashed.demo.test.", RecordType::A, &opts)),
            first
        );
    }

    drop(pdns);
    assert!(!pid_alive(pid), "pdns_server {pid} still alive after drop");
}

#[test]
fn stop_restart_and_reload_keep_the_address() {
    let zone = "$ORIGIN t.test.\n$TTL 60\n@ SOA ns.t.test. h.t.test. 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\nx A 192.0.2.1\n";
    let mut pdns = Pdns::start(&[("t.test", zone)], &[]);
    let addr = pdns.addr();
    let old_pid = pdns.pid().expect("running");
    let quick = QueryOpts::udp().timeout(Duration::from_millis(300));

    pdns.stop();
    assert_eq!(pdns.pid(), None);
    assert!(!pid_alive(old_pid));
    assert!(
        dns_query(addr, "x.t.test.", RecordType::A, &quick).is_err(),
        "answered while stopped"
    );

    pdns.restart();
    assert_eq!(pdns.addr(), addr);
    let new_pid = pdns.pid().expect("running again");
    assert_ne!(new_pid, old_pid);
    assert_eq!(
        answer_rdata(&ask(&pdns, "x.t.test.", RecordType::A, &quick)),
        ["192.0.2.1"]
    );

    // Edit the zone and add a second one; reload makes both visible without a restart.
    pdns.write_zone(
        "t.test.",
        &zone
            .replace("1 3600", "2 3600")
            .replace("192.0.2.1", "192.0.2.2"),
    );
    let other = "$ORIGIN u.test.\n@ 60 SOA ns.u.test. h.u.test. 1 3600 600 86400 60\n@ 60 NS ns.t.test.\ny 60 A 192.0.2.9\n";
    pdns.write_zone("u.test", other);
    pdns.reload_zones();
    assert_eq!(
        answer_rdata(&ask(&pdns, "x.t.test.", RecordType::A, &quick)),
        ["192.0.2.2"]
    );
    assert_eq!(
        answer_rdata(&ask(&pdns, "y.u.test.", RecordType::A, &QueryOpts::tcp())),
        ["192.0.2.9"]
    );
    assert_eq!(pdns.pid(), Some(new_pid));

    drop(pdns);
    assert!(!pid_alive(new_pid));
}

#[test]
fn a_panicking_test_still_kills_pdns() {
    let seen = Arc::new(Mutex::new(None));
    let seen2 = Arc::clone(&seen);
    let result = panic::catch_unwind(move || {
        let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
        *seen2.lock().expect("lock") = pdns.pid();
        panic!("test failure while PowerDNS runs");
    });
    assert!(result.is_err());
    let pid = seen.lock().expect("lock").expect("pdns had started");
    assert!(!pid_alive(pid), "pdns_server {pid} survived the panic");
}

#[test]
fn extra_conf_overrides_defaults() {
    // A later pdns.conf line wins: with LUA records off, a name holding only a LUA record is
    // as if absent (NXDOMAIN), while static data is still served.
    let pdns = Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &["enable-lua-records=no"]);
    let all = ask(&pdns, "all.demo.test.", RecordType::A, &QueryOpts::udp());
    assert_eq!(all.metadata.response_code, ResponseCode::NXDomain);
    assert!(all.answers.is_empty());
    let www = ask(&pdns, "www.demo.test.", RecordType::A, &QueryOpts::udp());
    assert_eq!(answer_rdata(&www), ["192.0.2.80"]);
}

#[test]
fn geo_backend_answers_pickclosest_from_the_given_mmdb() {
    use serde_json::json;
    let dir = tempfile::tempdir().expect("temp dir");
    let mmdb = dir.path().join("city.mmdb");
    let mut w = mmdb_writer::Writer::new("GeoIP2-City");
    let place = |cc: &str, cont: &str, lat: f64, lon: f64| {
        json!({
            "country": {"iso_code": cc},
            "continent": {"code": cont},
            // PowerDNS only uses a location that also has accuracy_radius (lua-records.md §6).
            "location": {"latitude": lat, "longitude": lon, "accuracy_radius": 50},
        })
    };
    let nets = [
        ("192.0.2.0/24", place("NL", "EU", 52.37, 4.89)),
        ("198.51.100.0/24", place("US", "NA", 40.71, -74.0)),
        ("203.0.113.0/24", place("AU", "OC", -33.87, 151.21)),
        ("80.81.82.0/24", place("DE", "EU", 52.52, 13.40)),
        ("139.130.4.0/24", place("NZ", "OC", -36.85, 174.76)),
    ];
    for (net, value) in &nets {
        w.insert(net.parse::<ipnet::IpNet>().expect("net"), value)
            .expect("insert");
    }
    std::fs::write(&mmdb, w.to_bytes().expect("mmdb bytes")).expect("write mmdb");

    let zone = "$ORIGIN g.test.\n$TTL 60\n@ SOA ns.g.test. h.g.test. 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\n\
                near LUA A \"pickclosest({'192.0.2.1','198.51.100.1','203.0.113.1'})\"\n\
                cc LUA TXT \"countryCode()\"\n";
    let pdns = Pdns::start_geo(&[("g.test.", zone)], &mmdb, &[]);
    let near = |subnet: &str| {
        answer_rdata(&ask(
            &pdns,
            "near.g.test.",
            RecordType::A,
            &QueryOpts::udp().ecs(subnet),
        ))
    };
    assert_eq!(near("80.81.82.0/24"), ["192.0.2.1"]);
    assert_eq!(near("139.130.4.0/24"), ["203.0.113.1"]);
    let cc = ask(
        &pdns,
        "cc.g.test.",
        RecordType::TXT,
        &QueryOpts::udp().ecs("198.51.100.7/24"),
    );
    assert_eq!(answer_rdata(&cc), ["us"]);
}

#[test]
fn a_server_started_on_a_short_lived_thread_keeps_running() {
    // PR_SET_PDEATHSIG is tied to the forking thread; the harness forks on a thread that lives
    // as long as the process, so a helper thread ending must not kill PowerDNS.
    let pdns = std::thread::spawn(|| Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[]))
        .join()
        .expect("start on a helper thread");
    std::thread::sleep(Duration::from_millis(200));
    let pid = pdns.pid().expect("running");
    assert!(pid_alive(pid));
    let www = ask(&pdns, "www.demo.test.", RecordType::A, &QueryOpts::tcp());
    assert_eq!(answer_rdata(&www), ["192.0.2.80"]);
}

#[test]
fn http_get_reads_status_and_plain_or_chunked_bodies() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let replies = [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nready",
            "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n",
        ];
        for reply in replies {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).expect("read request");
                assert!(n > 0, "request ended early");
                req.extend_from_slice(&buf[..n]);
            }
            assert!(req.starts_with(b"GET /readyz HTTP/1.1\r\n"));
            conn.write_all(reply.as_bytes()).expect("reply");
        }
    });
    let t = Duration::from_secs(2);
    assert_eq!(
        support::http_get(addr, "/readyz", t).expect("get"),
        (200, "ready".to_string())
    );
    assert_eq!(
        support::http_get(addr, "/readyz", t).expect("get"),
        (503, "not ready".to_string())
    );
    server.join().expect("server thread");
}
