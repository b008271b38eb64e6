//! `[zones].transfer`: LUA records read from a real PowerDNS by AXFR, answered in-process,
//! kept current by serial polling and NOTIFY; what dnsteer cannot compile stays with PowerDNS.

mod inproc;
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::{Pdns, QueryOpts, dns_query};

fn zone(serial: u32, lb: &str, with_h: bool) -> String {
    let mut z = format!(
        "$ORIGIN xfr.test.\n$TTL 300\n@ IN SOA ns1.xfr.test. hostmaster.xfr.test. {serial} 3600 600 86400 60\n\
         @ IN NS ns1.xfr.test.\nns1 IN A 127.0.0.1\n\
         lb 30 IN LUA A \"{lb}\"\n\
         txt IN LUA TXT \"'served by lua'\"\n\
         concat IN LUA A \"pickrandom({{'192.0.2.7'}}) .. ''\"\n\
         mx IN LUA MX \"'10 mail.xfr.test.'\"\n"
    );
    if with_h {
        z.push_str("h IN LUA A \"pickhashed({'192.0.2.1','192.0.2.2','192.0.2.3'})\"\n");
    }
    z
}

fn start(pdns: &Pdns, refresh: &str) -> (dnsteer::app::App, tempfile::TempDir) {
    start_with(pdns, refresh, "")
}

fn start_with(pdns: &Pdns, refresh: &str, extra: &str) -> (dnsteer::app::App, tempfile::TempDir) {
    let zones = format!("[zones]\ntransfer = [\"xfr.test.\"]\nrefresh = \"{refresh}\"\n{extra}");
    inproc::start_with(&[pdns.addr()], &zones)
}

fn a(front: SocketAddr, name: &str) -> (ResponseCode, Vec<String>) {
    let m = dns_query(front, name, RecordType::A, &QueryOpts::udp()).unwrap();
    let mut v = support::answer_rdata(&m);
    v.sort();
    (m.metadata.response_code, v)
}

fn wait_for(front: SocketAddr, name: &str, want: (ResponseCode, Vec<&str>), limit: Duration) {
    let t = Instant::now();
    let want = (
        want.0,
        want.1.iter().map(ToString::to_string).collect::<Vec<_>>(),
    );
    loop {
        let got = a(front, name);
        if got == want {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "{name}: {got:?} after {limit:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn transferred_records_are_answered_in_process_and_follow_the_zone() {
    let mut pdns = Pdns::start(
        &[(
            "xfr.test.",
            &zone(1, "all({'192.0.2.1','192.0.2.2'})", true),
        )],
        &[],
    );
    let (app, _dir) = start(&pdns, "300ms");
    let front = app.dns_addrs[0];

    assert_eq!(
        a(front, "lb.xfr.test."),
        (
            ResponseCode::NoError,
            vec!["192.0.2.1".into(), "192.0.2.2".into()]
        )
    );
    let m = dns_query(front, "txt.xfr.test.", RecordType::TXT, &QueryOpts::udp()).unwrap();
    assert_eq!(support::answer_rdata(&m), vec!["served by lua".to_string()]);
    assert!(m.metadata.authoritative);
    let text = inproc::get(app.metrics_addr, "/metrics");
    assert_eq!(
        inproc::metric(
            &text,
            "dnsteer_queries_total{transport=\"udp\",decision=\"forwarded\"}"
        ),
        0.0,
        "{text}"
    );
    assert_eq!(
        inproc::metric(
            &text,
            "dnsteer_queries_total{transport=\"udp\",decision=\"rule\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        inproc::metric(&text, "dnsteer_zone_serial{zone=\"xfr.test.\"}"),
        1.0,
        "{text}"
    );

    // What dnsteer cannot compile is PowerDNS's: answered through dnsteer, listed in /status.
    assert_eq!(
        a(front, "concat.xfr.test."),
        (ResponseCode::NoError, vec!["192.0.2.7".into()])
    );
    let text = inproc::get(app.metrics_addr, "/metrics");
    assert_eq!(
        inproc::metric(
            &text,
            "dnsteer_queries_total{transport=\"udp\",decision=\"forwarded\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        inproc::metric(
            &text,
            "dnsteer_zone_lua_records{zone=\"xfr.test.\",answered_by=\"powerdns\"}"
        ),
        2.0,
        "{text}"
    );
    let status = inproc::get(app.metrics_addr, "/status");
    assert!(
        status.contains("concat.xfr.test.") && status.contains("mx.xfr.test."),
        "{status}"
    );

    // A changed body is answered within the refresh interval.
    pdns.write_zone("xfr.test.", &zone(2, "all({'192.0.2.3'})", true));
    pdns.reload_zones();
    wait_for(
        front,
        "lb.xfr.test.",
        (ResponseCode::NoError, vec!["192.0.2.3"]),
        Duration::from_secs(3),
    );

    // A deleted record is forwarded again: PowerDNS now says NXDOMAIN.
    assert_eq!(a(front, "h.xfr.test.").0, ResponseCode::NoError);
    pdns.write_zone("xfr.test.", &zone(3, "all({'192.0.2.3'})", false));
    pdns.reload_zones();
    wait_for(
        front,
        "h.xfr.test.",
        (ResponseCode::NXDomain, vec![]),
        Duration::from_secs(3),
    );
}

#[test]
fn notify_triggers_an_immediate_transfer() {
    let mut pdns = Pdns::start(&[("xfr.test.", &zone(1, "all({'192.0.2.1'})", true))], &[]);
    // Polling alone would take a minute.
    let (app, _dir) = start(&pdns, "60s");
    let front = app.dns_addrs[0];
    assert_eq!(a(front, "lb.xfr.test.").1, vec!["192.0.2.1".to_string()]);
    pdns.write_zone("xfr.test.", &zone(2, "all({'192.0.2.9'})", true));
    pdns.reload_zones();

    // NOTIFY from 127.0.0.1 (the upstream's address, allowed by default).
    let notify = [
        0x12, 0x34, 0x20, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'x', b'f', b'r', 4, b't', b'e', b's',
        b't', 0, 0, 6, 0, 1,
    ];
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(&notify, front).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0x12, 0x34]);
    assert_eq!(buf[2] & 0xf8, 0x80 | (4 << 3), "QR=1, opcode NOTIFY");
    assert_eq!(buf[3] & 0x0f, 0, "NOERROR");
    assert!(n >= notify.len());
    wait_for(
        front,
        "lb.xfr.test.",
        (ResponseCode::NoError, vec!["192.0.2.9"]),
        Duration::from_secs(2),
    );

    // A NOTIFY for a zone we do not transfer is refused.
    let mut other = notify.to_vec();
    other[13] = b'y';
    sock.send_to(&other, front).unwrap();
    sock.recv(&mut buf).unwrap();
    assert_eq!(buf[3] & 0x0f, 5, "REFUSED");

    // The acknowledged NOTIFY is counted as such, the refused one as an error; the lb.xfr.test
    // queries above were answered in-process, so nothing else is an error.
    let text = inproc::get(app.metrics_addr, "/metrics");
    assert_eq!(
        inproc::metric(
            &text,
            "dnsteer_queries_total{transport=\"udp\",decision=\"notify\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        inproc::metric(
            &text,
            "dnsteer_queries_total{transport=\"udp\",decision=\"error\"}"
        ),
        1.0,
        "{text}"
    );
}

#[test]
fn a_refused_transfer_keeps_the_previous_records() {
    let mut pdns = Pdns::start(&[("xfr.test.", &zone(1, "all({'192.0.2.1'})", true))], &[]);
    let (app, _dir) = start(&pdns, "300ms");
    let front = app.dns_addrs[0];
    assert_eq!(a(front, "lb.xfr.test.").1, vec!["192.0.2.1".to_string()]);

    // PowerDNS stops allowing transfers to us, and the zone changes.
    let conf = pdns.dir().join("pdns.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text = text.replace("allow-axfr-ips=127.0.0.0/8", "allow-axfr-ips=192.0.2.1/32");
    std::fs::write(&conf, text).unwrap();
    pdns.write_zone("xfr.test.", &zone(2, "all({'192.0.2.2'})", true));
    pdns.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = inproc::get(app.metrics_addr, "/metrics");
        if inproc::metric(
            &text,
            "dnsteer_zone_transfers_total{zone=\"xfr.test.\",result=\"failed\"}",
        ) >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no failed transfer seen: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still the old set, in-process.
    assert_eq!(a(front, "lb.xfr.test.").1, vec!["192.0.2.1".to_string()]);
    let status = inproc::get(app.metrics_addr, "/status");
    assert!(
        status.contains("\"last_error\": \"") && status.contains("refused"),
        "{status}"
    );
}

#[test]
fn the_config_wins_over_a_transferred_record() {
    let pdns = Pdns::start(&[("xfr.test.", &zone(1, "all({'192.0.2.1'})", true))], &[]);
    let extra = "[[records]]\nname = \"lb.xfr.test.\"\ntype = \"A\"\nttl = 30\ncontent = [\"192.0.2.100\"]\n";
    let (app, _dir) = start_with(&pdns, "300ms", extra);
    assert_eq!(
        a(app.dns_addrs[0], "lb.xfr.test.").1,
        vec!["192.0.2.100".to_string()]
    );
    // The zone's other records are still answered in-process.
    let m = dns_query(
        app.dns_addrs[0],
        "txt.xfr.test.",
        RecordType::TXT,
        &QueryOpts::udp(),
    )
    .unwrap();
    assert_eq!(support::answer_rdata(&m), vec!["served by lua".to_string()]);
}
