//! `[upstream].client_address` against a real PowerDNS 4.7.3: with "proxy" (PowerDNS runs with
//! `proxy-protocol-from=127.0.0.0/8`) its LUA records see the client's own address over UDP
//! and TCP; with "ecs" its /24; with "none" dnsteer's address. Clients send from 127.0.0.2 and
//! 127.0.0.3, so the address PowerDNS reports can only have come from the header.

mod inproc;
mod support;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dnsteer::app::App;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use support::{Pdns, QueryOpts};

const ZONE: &str = "$ORIGIN pp.test.
$TTL 300
@    IN SOA ns1 hostmaster 1 3600 600 86400 60
@    IN NS  ns1
ns1  IN A   127.0.0.1
who  IN LUA TXT \"bestwho:toString()\"
who2 IN LUA TXT \"who:toString()\"
";

/// One query from `source` (UDP, or TCP), its TXT strings.
fn txt_from(source: &str, server: SocketAddr, name: &str, tcp: bool) -> Vec<String> {
    let (id, wire) = support::build_query(name, RecordType::TXT, &QueryOpts::udp());
    let src: IpAddr = source.parse().unwrap();
    let reply = if tcp {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(src, 0).into()).unwrap();
        s.connect_timeout(&server.into(), Duration::from_secs(2))
            .unwrap();
        let mut stream: std::net::TcpStream = s.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut frame = (wire.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&wire);
        stream.write_all(&frame).unwrap();
        support::read_tcp_frame(&mut stream).unwrap()
    } else {
        let sock = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        sock.send_to(&wire, server).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.id, id);
    support::answer_rdata(&m)
}

fn start(pdns: &Pdns, mode: &str) -> (App, tempfile::TempDir) {
    inproc::start_with(&[pdns.addr()], &format!("client_address = \"{mode}\"\n"))
}

#[test]
fn proxy_mode_passes_the_real_client_address_over_udp_and_tcp() {
    let pdns = Pdns::start(&[("pp.test.", ZONE)], &["proxy-protocol-from=127.0.0.0/8"]);
    // With a zone transfer too: dnsteer's own queries (SOA polls, AXFR, health checks) carry a
    // header naming dnsteer's socket, which allow-axfr-ips=127.0.0.0/8 admits.
    let (app, _dir) = inproc::start_with(
        &[pdns.addr()],
        "client_address = \"proxy\"\n[zones]\ntransfer = [\"pp.test.\"]\n",
    );
    let front = app.dns_addrs[0];
    let text = inproc::scrape(&app);
    assert_eq!(
        inproc::metric(
            &text,
            "dnsteer_zone_transfers_total{zone=\"pp.test.\",result=\"ok\"}"
        ),
        1.0,
        "{text}"
    );
    for (source, tcp) in [
        ("127.0.0.2", false),
        ("127.0.0.3", true),
        ("127.0.0.4", false),
    ] {
        assert_eq!(
            txt_from(source, front, "who.pp.test.", tcp),
            vec![source.to_string()],
            "bestwho from {source} (tcp: {tcp})"
        );
        assert_eq!(
            txt_from(source, front, "who2.pp.test.", tcp),
            vec![source.to_string()],
            "who from {source} (tcp: {tcp})"
        );
    }
    // Health checks get answers.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let text = inproc::scrape(&app);
        let sum = |result: &str| -> f64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("dnsteer_upstream_health_checks_total{")
                        && l.contains(&format!("result=\"{result}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        if sum("ok") >= 2.0 {
            assert_eq!(sum("failed"), 0.0, "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no good health checks: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ecs_mode_shows_the_subnet_and_none_shows_dnsteer() {
    let pdns = Pdns::start(&[("pp.test.", ZONE)], &[]);
    let (ecs, _d1) = start(&pdns, "ecs");
    let (none, _d2) = start(&pdns, "none");
    for tcp in [false, true] {
        assert_eq!(
            txt_from("127.0.0.2", ecs.dns_addrs[0], "who.pp.test.", tcp),
            vec!["127.0.0.0".to_string()],
            "ecs: the /24 (tcp: {tcp})"
        );
        assert_eq!(
            txt_from("127.0.0.2", none.dns_addrs[0], "who.pp.test.", tcp),
            vec!["127.0.0.1".to_string()],
            "none: dnsteer's own address (tcp: {tcp})"
        );
    }
}
