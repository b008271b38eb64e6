//! Zone transfer of LUA records from a real PowerDNS 4.7.3 (bind backend) on loopback, and the
//! failure modes PowerDNS does not produce on demand (cut stream, silence) from fake servers.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dnsteer::config::{RecordBody, RecordOrigin, RecordType};
use dnsteer::control::xfr::{self, TYPE_LUA, ZoneData};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

const PDNS: &str = "/usr/sbin/pdns_server";
const PDNS_CONTROL: &str = "/usr/bin/pdns_control";
const ZONE: &str = "xfr.test.";

/// A pdns_server child, killed by PID when dropped (pass or fail).
struct Pdns {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Drop for Pdns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("pdns.log")).unwrap_or_default();
            eprintln!("--- pdns_server log ---\n{log}");
        }
    }
}

impl Pdns {
    fn zone_file(&self) -> PathBuf {
        self.dir.path().join("xfr.test.zone")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pdns.log")).unwrap_or_default()
    }

    /// Starts PowerDNS serving `zone_text` and waits until it answers the zone's SOA.
    async fn start(zone_text: &str, allow_axfr: &str) -> Pdns {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        std::fs::write(dir.path().join("xfr.test.zone"), zone_text).unwrap();
        std::fs::write(
            dir.path().join("named.conf"),
            format!(
                "options {{ directory \"{d}\"; }};\nzone \"xfr.test\" {{ type master; file \"{d}/xfr.test.zone\"; }};\n"
            ),
        )
        .unwrap();
        // cache-ttl=0: the SOA query must see a reload at once, not after the packet cache TTL.
        let conf = format!(
            "launch=bind\nbind-config={d}/named.conf\nlocal-address=127.0.0.1\nlocal-port={port}\n\
             socket-dir={d}\ndaemon=no\nguardian=no\ndisable-syslog=yes\nenable-lua-records=yes\n\
             allow-axfr-ips={allow_axfr}\nsecurity-poll-suffix=\napi=no\nwebserver=no\n\
             distributor-threads=1\nreceiver-threads=1\ncache-ttl=0\nquery-cache-ttl=0\n\
             negquery-cache-ttl=0\nloglevel=6\n"
        );
        std::fs::write(dir.path().join("pdns.conf"), conf).unwrap();
        let log = std::fs::File::create(dir.path().join("pdns.log")).unwrap();
        let child = Command::new(PDNS)
            .arg(format!("--config-dir={d}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pdns_server is installed (Debian pdns-server + pdns-backend-bind)");
        let mut pdns = Pdns {
            child,
            dir,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if xfr::soa_serial(&[pdns.addr], ZONE, Duration::from_millis(300))
                .await
                .is_ok()
            {
                return pdns;
            }
            if let Ok(Some(status)) = pdns.child.try_wait() {
                panic!("pdns_server exited with {status}:\n{}", pdns.log());
            }
            assert!(
                Instant::now() < deadline,
                "pdns_server did not answer within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn reload(&self) {
        let out = Command::new(PDNS_CONTROL)
            .arg(format!("--config-dir={}", self.dir.path().display()))
            .args(["bind-reload-now", "xfr.test"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pdns_control: {out:?}");
    }
}

/// A loopback port free for both UDP and TCP at the time of the call.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One LUA record of the test zone: owner label, TTL (None: $TTL 300), inner type, code chunks
/// as written in the zone file.
struct Lua {
    label: &'static str,
    ttl: Option<u32>,
    inner: &'static str,
    chunks: Vec<String>,
}

fn lua(label: &'static str, ttl: Option<u32>, inner: &'static str, code: &str) -> Lua {
    Lua {
        label,
        ttl,
        inner,
        chunks: vec![code.to_string()],
    }
}

/// Between 256 and 510 bytes, with byte 255 (where PowerDNS re-chunks it) between two tokens.
fn long_code() -> String {
    let mut code = String::from("pickrandom({");
    for i in 1..35 {
        let item = format!("'192.0.2.{i}',");
        if code.len() < 255 && code.len() + item.len() > 255 {
            code.push_str(&" ".repeat(255 - code.len()));
        }
        code.push_str(&item);
    }
    code.push_str("'192.0.2.35'})");
    code
}

/// Longer than 255 bytes, with byte 255 inside an address literal.
fn long_broken_code() -> String {
    let addrs: Vec<String> = (1..40).map(|i| format!("'192.0.2.{i}'")).collect();
    format!("pickrandom({{{}}})", addrs.join(","))
}

fn records() -> Vec<Lua> {
    vec![
        lua("a", Some(30), "A", "pickrandom({'192.0.2.1','192.0.2.2'})"),
        lua(
            "aaaa",
            None,
            "AAAA",
            "pickrandom({'2001:db8::1','2001:db8::2'})",
        ),
        lua(
            "cname",
            Some(60),
            "CNAME",
            "pickrandom({'a.example.net.','b.example.net.'})",
        ),
        lua("txt", Some(45), "TXT", "'hello '..'world'"),
        lua(
            "semi",
            None,
            "A",
            ";if true then return '192.0.2.9' end return '192.0.2.1'",
        ),
        lua("*.wild", None, "A", "'192.0.2.7'"),
        lua("long", None, "A", &long_code()),
        lua("longbroken", None, "A", &long_broken_code()),
        Lua {
            label: "split",
            ttl: None,
            inner: "A",
            chunks: vec!["pickrandom({'192.0.2.1',".into(), "'192.0.2.2'})".into()],
        },
        lua("mx", None, "MX", "'10 mail.example.net.'"),
        lua("inc", None, "LUA", "settings = 1"),
    ]
}

/// Enough LUA TXT records that the transfer spans several messages.
const BULK: usize = 400;

fn zone_text(serial: u32, extra: &[Lua]) -> String {
    let mut z = format!(
        "$ORIGIN xfr.test.\n$TTL 300\n@ IN SOA ns1.xfr.test. hostmaster.xfr.test. {serial} 3600 600 86400 60\n\
         @ IN NS ns1.xfr.test.\nns1 IN A 127.0.0.1\nstatic IN A 192.0.2.10\n"
    );
    for r in records().iter().chain(extra) {
        let ttl = r.ttl.map(|t| t.to_string()).unwrap_or_default();
        let chunks: Vec<String> = r.chunks.iter().map(|c| format!("\"{c}\"")).collect();
        writeln!(
            z,
            "{} {ttl} IN LUA {} ( {} )",
            r.label,
            r.inner,
            chunks.join(" ")
        )
        .unwrap();
    }
    for i in 0..BULK {
        writeln!(
            z,
            "bulk{i} IN LUA TXT \"'bulk record {i} with some padding to fill the messages up'\""
        )
        .unwrap();
    }
    z
}

fn no_space(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

fn check_zone(d: &ZoneData, serial: u32, extra: &[Lua]) {
    assert_eq!(d.zone, ZONE);
    assert_eq!(d.serial, serial);
    let mut want = 0;
    for r in records().iter().chain(extra) {
        let name = format!("{}.{ZONE}", r.label);
        // LUA LUA records are kept (code for include()); MX is left to PowerDNS.
        if r.inner == "MX" || r.label == "longbroken" {
            let u = d
                .unsupported
                .iter()
                .find(|u| u.name == name)
                .unwrap_or_else(|| panic!("{name} not listed as unsupported: {:?}", d.unsupported));
            assert_eq!(u.rtype, r.inner);
            assert!(!u.reason.is_empty());
            continue;
        }
        want += 1;
        let got = d
            .records
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} missing; unsupported: {:?}", d.unsupported));
        assert_eq!(got.rtype.name(), r.inner, "{name}");
        assert_eq!(got.ttl, r.ttl.unwrap_or(300), "{name}");
        assert_eq!(got.origin, RecordOrigin::Zone { zone: ZONE.into() });
        let RecordBody::Lua(code) = &got.body else {
            panic!("{name}: not a LUA body")
        };
        let written = r.chunks.concat();
        if written.len() <= 255 {
            // What PowerDNS executes: each chunk followed by a space, a space piece between.
            assert_eq!(*code, format!("{} ", r.chunks.join("   ")), "{name}");
        } else {
            // Re-chunked at 255 bytes by PowerDNS: equal but for the inserted spaces.
            assert_eq!(no_space(code), no_space(&written), "{name}");
            assert!(code.contains("   "), "{name}: no chunk joint in {code:?}");
        }
    }
    let bulk: Vec<_> = d
        .records
        .iter()
        .filter(|r| r.name.starts_with("bulk"))
        .collect();
    assert_eq!(bulk.len(), BULK);
    assert!(
        bulk.iter()
            .all(|r| r.rtype == RecordType::Txt && r.ttl == 300)
    );
    assert_eq!(d.records.len(), want + BULK, "no static record may appear");
    assert_eq!(d.unsupported.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_lua_records_from_powerdns_and_follows_a_reload() {
    let pdns = Pdns::start(&zone_text(2024010101, &[]), "127.0.0.0/8").await;
    let t = Duration::from_secs(5);

    assert_eq!(
        xfr::soa_serial(&[pdns.addr], ZONE, t).await.unwrap(),
        2024010101
    );
    assert_eq!(
        xfr::soa_serial(&[pdns.addr], "XFR.Test", t).await.unwrap(),
        2024010101
    );

    // A server that refuses connections first: the next one is used.
    let dead = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let d = xfr::transfer(&[dead, pdns.addr], ZONE, t).await.unwrap();
    check_zone(&d, 2024010101, &[]);
    assert!(pdns.log().contains("AXFR-out zone 'xfr.test'"));

    // The long record split inside an address literal is left to PowerDNS (which, as primary,
    // runs it unbroken), with a reason.
    let broken = d
        .unsupported
        .iter()
        .find(|u| u.name == "longbroken.xfr.test.")
        .unwrap();
    assert!(broken.reason.contains("255"), "{}", broken.reason);

    // Edit the zone, bump the serial, reload: the new serial and record appear.
    let extra = [lua("new", Some(20), "A", "'192.0.2.99'")];
    std::fs::write(pdns.zone_file(), zone_text(2024010102, &extra)).unwrap();
    pdns.reload();
    let deadline = Instant::now() + Duration::from_secs(10);
    while xfr::soa_serial(&[pdns.addr], ZONE, t).await.unwrap() != 2024010102 {
        assert!(Instant::now() < deadline, "reload not seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = xfr::transfer(&[pdns.addr], ZONE, t).await.unwrap();
    check_zone(&d, 2024010102, &extra);

    // A zone PowerDNS does not serve.
    let e = xfr::transfer(&[pdns.addr], "other.test.", t)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "refused", "{e}");
    let e = xfr::soa_serial(&[pdns.addr], "other.test.", t)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "refused", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powerdns_refuses_a_transfer_to_a_peer_not_in_allow_axfr_ips() {
    let pdns = Pdns::start(&zone_text(7, &[]), "192.0.2.1/32").await;
    let e = xfr::transfer(&[pdns.addr], ZONE, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "refused", "{e}");
    // The SOA query is still answered.
    assert_eq!(
        xfr::soa_serial(&[pdns.addr], ZONE, Duration::from_secs(5))
            .await
            .unwrap(),
        7
    );
}

// ---------------------------------------------------------------------------------------------
// Fake servers
// ---------------------------------------------------------------------------------------------

fn wire(name: &str) -> Vec<u8> {
    let mut w = Vec::new();
    for l in name.trim_end_matches('.').split('.') {
        w.push(l.len() as u8);
        w.extend_from_slice(l.as_bytes());
    }
    w.push(0);
    w
}

fn rr(name: &str, rtype: u16, rdata: &[u8]) -> Vec<u8> {
    let mut r = wire(name);
    r.extend(rtype.to_be_bytes());
    r.extend(1u16.to_be_bytes());
    r.extend(300u32.to_be_bytes());
    r.extend((rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

fn soa_rr(serial: u32) -> Vec<u8> {
    let mut rdata = wire("ns1.xfr.test.");
    rdata.extend(wire("hostmaster.xfr.test."));
    for v in [serial, 3600, 600, 86400, 60] {
        rdata.extend(v.to_be_bytes());
    }
    rr(ZONE, 6, &rdata)
}

/// A response to `query` (its question copied) with `answers`; `tc` sets the TC bit.
fn answer(query: &[u8], answers: &[Vec<u8>], tc: bool) -> Vec<u8> {
    let mut m = query[..2].to_vec();
    m.extend(if tc { [0x86, 0x00] } else { [0x84, 0x00] });
    m.extend([0, 1]);
    m.extend((answers.len() as u16).to_be_bytes());
    m.extend([0, 0, 0, 0]);
    m.extend_from_slice(&query[12..]);
    for a in answers {
        m.extend_from_slice(a);
    }
    m
}

fn lua_rr(label: &str) -> Vec<u8> {
    let code = b"'192.0.2.1'";
    let mut rdata = vec![0, 1, code.len() as u8];
    rdata.extend_from_slice(code);
    rr(&format!("{label}.{ZONE}"), TYPE_LUA, &rdata)
}

async fn read_query(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let len = s.read_u16().await.unwrap();
    let mut q = vec![0; usize::from(len)];
    s.read_exact(&mut q).await.unwrap();
    q
}

/// A TCP server that answers one AXFR with `send(query)` (already framed) and then closes.
async fn fake_axfr(send: impl Fn(&[u8]) -> Vec<u8> + Send + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let q = read_query(&mut s).await;
        s.write_all(&send(&q)).await.unwrap();
        s.shutdown().await.unwrap();
    });
    addr
}

fn framed(m: &[u8]) -> Vec<u8> {
    let mut f = (m.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(m);
    f
}

#[tokio::test]
async fn a_fake_complete_transfer_is_accepted() {
    // Guards the fake: the same server that is cut below works when it finishes.
    let addr = fake_axfr(|q| {
        let mut out = framed(&answer(q, &[soa_rr(3), lua_rr("a")], false));
        out.extend(framed(&answer(q, &[lua_rr("b"), soa_rr(3)], false)));
        out
    })
    .await;
    let d = xfr::transfer(&[addr], ZONE, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(d.serial, 3);
    assert_eq!(d.records.len(), 2);
}

#[tokio::test]
async fn a_transfer_cut_between_messages_is_an_error() {
    let addr = fake_axfr(|q| framed(&answer(q, &[soa_rr(3), lua_rr("a")], false))).await;
    let e = xfr::transfer(&[addr], ZONE, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "cut", "{e}");
}

#[tokio::test]
async fn a_transfer_cut_inside_a_message_is_an_error() {
    let addr = fake_axfr(|q| {
        let mut out = framed(&answer(q, &[soa_rr(3), lua_rr("a")], false));
        let second = framed(&answer(q, &[lua_rr("b"), soa_rr(3)], false));
        out.extend_from_slice(&second[..second.len() / 2]);
        out
    })
    .await;
    let e = xfr::transfer(&[addr], ZONE, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "cut", "{e}");
}

#[tokio::test]
async fn a_transfer_not_opening_with_the_soa_is_an_error() {
    let addr = fake_axfr(|q| framed(&answer(q, &[lua_rr("a"), soa_rr(3)], false))).await;
    let e = xfr::transfer(&[addr], ZONE, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "no_soa", "{e}");
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_bound() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (_s, _) = l.accept().await.unwrap();
        let _ = hold_rx.await; // keep the connection open, say nothing
    });
    let start = Instant::now();
    let e = xfr::transfer(&[addr], ZONE, Duration::from_millis(300))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    drop(hold_tx);

    let silent_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let e = xfr::soa_serial(
        &[silent_udp.local_addr().unwrap()],
        ZONE,
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
}

#[tokio::test]
async fn a_lost_soa_query_is_sent_again() {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        // The first query is "lost"; the second is answered.
        udp.recv_from(&mut buf).await.unwrap();
        let (n, from) = udp.recv_from(&mut buf).await.unwrap();
        udp.send_to(&answer(&buf[..n], &[soa_rr(7)], false), from)
            .await
            .unwrap();
    });
    let start = Instant::now();
    let serial = xfr::soa_serial(&[addr], ZONE, Duration::from_millis(300)).await;
    let took = start.elapsed();
    assert_eq!(serial.unwrap(), 7);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    server.await.unwrap();

    // A server that never answers: every attempt times out, then the error.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let start = Instant::now();
    let e = xfr::soa_serial(
        &[silent.local_addr().unwrap()],
        ZONE,
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(200 * xfr::SOA_ATTEMPTS as u64)
            && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_truncated_soa_answer_is_retried_over_tcp() {
    // Same port for UDP (answers TC=1, serial 1) and TCP (full answer, serial 2).
    let (udp, tcp) = loop {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        if let Ok(udp) = UdpSocket::bind(tcp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        let (n, from) = udp.recv_from(&mut buf).await.unwrap();
        udp.send_to(&answer(&buf[..n], &[soa_rr(1)], true), from)
            .await
            .unwrap();
    });
    tokio::spawn(async move {
        let (mut s, _) = tcp.accept().await.unwrap();
        let q = read_query(&mut s).await;
        s.write_all(&framed(&answer(&q, &[soa_rr(2)], false)))
            .await
            .unwrap();
    });
    assert_eq!(
        xfr::soa_serial(&[addr], ZONE, Duration::from_secs(5))
            .await
            .unwrap(),
        2
    );
}

#[test]
fn the_test_zone_parses_back() {
    // Guards the zone generator used against PowerDNS.
    let z = zone_text(1, &[]);
    assert!(z.contains("split  IN LUA A ( \"pickrandom({'192.0.2.1',\" \"'192.0.2.2'})\" )"));
    assert!(long_code().len() > 255);
    assert_eq!(&long_code()[254..256], " '");
    assert!(long_code().len() <= 510);
    let broken = long_broken_code();
    assert!(broken.len() > 255);
    assert!(broken.as_bytes()[254].is_ascii_digit() || broken.as_bytes()[254] == b'.');
    assert!(
        Path::new(PDNS).exists(),
        "PowerDNS 4.7.3 is needed for these tests"
    );
}
