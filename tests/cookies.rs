//! DNS cookies (RFC 7873, RFC 9018 server cookies) end to end: the real dnsteer binary in front
//! of a real PowerDNS, asked by `dig +cookie` (BIND's client) and by hand-made packets.
//!
//! PowerDNS runs with its own `edns-cookie-secret`, so it would answer any cookie it received
//! with one of its own: the forwarding tests put a UDP tap between dnsteer and PowerDNS and
//! check that no query PowerDNS got and no answer it gave carries a COOKIE option. Server
//! cookies coming back are checked against RFC 9018's construction here, with the secret
//! that made them; a signed in-process answer with a cookie is checked by dnspython.

mod support;

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::rr::RecordType;
use support::signed::{SignedPdns, dns_query_wire, validate_with_dnspython};
use support::{DEMO_ZONE, DEMO_ZONE_NAME, Dnsteer, Pdns, QueryOpts, free_addr, udp_exchange};

/// dnsteer's secrets (32 hex digits each) and PowerDNS's own.
const S1: &str = "e5e973e5a6b2a43f48e7dc849e37bfcf";
const S2: &str = "445536bcd2513298075a5d379663c962";
const S3: &str = "dd3bdf9344b678b185a6f5cb60fca715";
const PDNS_SECRET: &str = "0123456789abcdef0123456789abcdef";

const FORWARDED: &str = "www.demo.test";
const IN_PROCESS: &str = "static.demo.test";
const OPT_COOKIE: u16 = 10;
const BADCOOKIE: u16 = 23;
const TIMEOUT: Duration = Duration::from_secs(3);

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// RFC 9018 §4.4: is `cookie` (client 8 | server 16) one that `secret` made for `ip`?
fn made_with(secret: &str, cookie: &[u8], ip: IpAddr) -> bool {
    if cookie.len() != 24 || cookie[8] != 1 {
        return false;
    }
    let key: [u8; 16] = hex(secret).try_into().expect("16-byte secret");
    let mut h = siphasher::sip::SipHasher24::new_with_key(&key);
    h.write(&cookie[..16]);
    match ip {
        IpAddr::V4(a) => h.write(&a.octets()),
        IpAddr::V6(a) => h.write(&a.octets()),
    }
    h.finish().to_le_bytes() == cookie[16..]
}

/// The timestamp of a server cookie, and how far it is from now.
fn stamp_age(cookie: &[u8]) -> i64 {
    let stamp = u32::from_be_bytes(cookie[12..16].try_into().expect("4 bytes"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    now as i64 - i64::from(stamp)
}

// ---------------------------------------------------------------------------------------------
// Wire, by hand: queries with any COOKIE option, answers read far enough for these tests
// ---------------------------------------------------------------------------------------------

/// An A query for `name` with an OPT (payload 1232) holding `options` (raw option bytes).
fn query(id: u16, name: &str, options: &[u8]) -> Vec<u8> {
    query_do(id, name, options, false)
}

/// [`query`] with the DO bit as given.
fn query_do(id: u16, name: &str, options: &[u8], dnssec_ok: bool) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    let flags = if dnssec_ok { 0x80 } else { 0 };
    p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, flags, 0]);
    p.extend_from_slice(&(options.len() as u16).to_be_bytes());
    p.extend_from_slice(options);
    p
}

fn cookie_option(data: &[u8]) -> Vec<u8> {
    let mut o = OPT_COOKIE.to_be_bytes().to_vec();
    o.extend_from_slice(&(data.len() as u16).to_be_bytes());
    o.extend_from_slice(data);
    o
}

/// What the tests read of an answer.
#[derive(Debug)]
struct Answer {
    /// Header rcode plus the OPT's extended bits.
    rcode: u16,
    answers: u16,
    /// Types of the answer section's records.
    types: Vec<u16>,
    /// Every COOKIE option's data.
    cookies: Vec<Vec<u8>>,
    len: usize,
}

fn skip_name(p: &[u8], mut off: usize) -> usize {
    loop {
        let len = p[off];
        if len == 0 {
            return off + 1;
        }
        if len & 0xC0 == 0xC0 {
            return off + 2;
        }
        off += 1 + len as usize;
    }
}

fn be16(p: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([p[off], p[off + 1]])
}

/// Reads a message's rcode, answer count and COOKIE options (queries too: QR is not checked).
fn read(p: &[u8]) -> Answer {
    let mut rcode = u16::from(p[3] & 0x0F);
    let counts: Vec<u16> = (0..4).map(|i| be16(p, 4 + 2 * i)).collect();
    let mut off = 12;
    for _ in 0..counts[0] {
        off = skip_name(p, off) + 4;
    }
    let mut cookies = Vec::new();
    let mut types = Vec::new();
    let records = counts[1] + counts[2] + counts[3];
    for i in 0..records {
        off = skip_name(p, off);
        let rtype = be16(p, off);
        if i < counts[1] {
            types.push(rtype);
        }
        let rdlen = be16(p, off + 8) as usize;
        let rdata = off + 10;
        if rtype == 41 && i >= counts[1] + counts[2] {
            rcode |= u16::from(p[off + 4]) << 4;
            let mut o = rdata;
            while o < rdata + rdlen {
                let (code, len) = (be16(p, o), be16(p, o + 2) as usize);
                if code == OPT_COOKIE {
                    cookies.push(p[o + 4..o + 4 + len].to_vec());
                }
                o += 4 + len;
            }
        }
        off = rdata + rdlen;
    }
    Answer {
        rcode,
        answers: counts[1],
        types,
        cookies,
        len: p.len(),
    }
}

fn ask(server: SocketAddr, name: &str, options: &[u8]) -> Answer {
    let id = fastrand::u16(..);
    let resp = udp_exchange(server, &query(id, name, options), TIMEOUT)
        .unwrap_or_else(|e| panic!("{name} from {server}: {e}"));
    read(&resp)
}

/// The one COOKIE option of an answer.
fn the_cookie(a: &Answer) -> Vec<u8> {
    assert_eq!(a.cookies.len(), 1, "{a:?}");
    a.cookies[0].clone()
}

// ---------------------------------------------------------------------------------------------
// dig
// ---------------------------------------------------------------------------------------------

/// dig's status and the COOKIE it printed (`cookie`: "" for `+cookie`, or the hex to send).
fn dig(server: SocketAddr, name: &str, cookie: &str, extra: &[&str]) -> (String, Option<Vec<u8>>) {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .arg(name)
        .arg("A")
        .args(["+norec", "+tries=1", "+time=3", "+retry=0"])
        .arg(if cookie.is_empty() {
            "+cookie".to_string()
        } else {
            format!("+cookie={cookie}")
        })
        .args(extra);
    let out = cmd.output().expect("run dig (bind9-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no status in dig output:\n{text}"));
    let cookie = text
        .lines()
        .find_map(|l| l.strip_prefix("; COOKIE: "))
        .map(|c| hex(c.split_whitespace().next().unwrap_or("")));
    (status, cookie)
}

// ---------------------------------------------------------------------------------------------
// A tap between dnsteer and PowerDNS (UDP)
// ---------------------------------------------------------------------------------------------

/// A query PowerDNS got and its answer.
type Exchange = (Vec<u8>, Vec<u8>);

/// Relays UDP between dnsteer and PowerDNS, one exchange at a time, keeping every packet.
struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Exchange>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Tap {
    fn start(pdns: SocketAddr) -> Tap {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind tap");
        front
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind tap upstream side");
        back.connect(pdns).expect("connect PowerDNS");
        back.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let addr = front.local_addr().expect("tap address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65535];
            let mut ans = vec![0u8; 65535];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = front.recv_from(&mut buf) else {
                    continue;
                };
                if back.send(&buf[..n]).is_err() {
                    continue;
                }
                let Ok(m) = back.recv(&mut ans) else { continue };
                let _ = front.send_to(&ans[..m], from);
                s.lock()
                    .expect("tap log")
                    .push((buf[..n].to_vec(), ans[..m].to_vec()));
            }
        });
        Tap {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Exchange> {
        self.seen.lock().expect("tap log").clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

fn start_pdns() -> Pdns {
    let secret = format!("edns-cookie-secret={PDNS_SECRET}");
    Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[&secret])
}

/// dnsteer forwarding to `upstream`, its secret files in its directory (`previous`: a
/// previous_secret_file too), with `extra` config appended.
fn start(upstream: SocketAddr, secret: &str, previous: Option<&str>, extra: &str) -> Dnsteer {
    let dir = tempfile::Builder::new()
        .prefix("dnsteer-cookies-")
        .tempdir()
        .expect("temp dir");
    std::fs::write(dir.path().join("cookie-secret"), format!("{secret}\n")).expect("secret");
    let previous_line = match previous {
        Some(p) => {
            std::fs::write(dir.path().join("cookie-previous"), p).expect("previous secret");
            "previous_secret_file = \"cookie-previous\""
        }
        None => "",
    };
    let config = format!(
        r#"
[server]
listen = ["{dns}"]
workers = 1

[metrics]
listen = "{metrics}"

[logging]
query_sample_rate = 0.0

[upstream]
servers = ["{upstream}"]
timeout = "1s"
health_check_interval = "500ms"

[cookies]
enabled = true
secret_file = "cookie-secret"
{previous_line}

[[records]]
name = "static.demo.test."
type = "A"
ttl = 300
content = ["192.0.2.10"]

{extra}
"#,
        dns = free_addr(),
        metrics = free_addr(),
    );
    Dnsteer::start_in(dir, &config)
}

fn localhost() -> IpAddr {
    "127.0.0.1".parse().expect("literal")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn dig_learns_a_server_cookie_that_then_validates_and_powerdns_never_sees_one() {
    let pdns = start_pdns();
    // PowerDNS itself answers a cookie with its own: what the tap must never see.
    let (status, direct) = dig(pdns.addr(), FORWARDED, "", &[]);
    assert_eq!(status, "NOERROR");
    let direct = direct.expect("PowerDNS answers a client cookie (edns-cookie-secret)");
    assert_eq!(direct.len(), 24);

    let tap = Tap::start(pdns.addr());
    let d = start(tap.addr, S1, None, "");
    let server = d.dns_addr();
    for name in [FORWARDED, IN_PROCESS] {
        let (status, cookie) = dig(server, name, "", &[]);
        assert_eq!(status, "NOERROR", "{name}");
        let cookie = cookie.unwrap_or_else(|| panic!("{name}: no COOKIE in the answer"));
        assert!(
            made_with(S1, &cookie, localhost()),
            "{name}: {}",
            to_hex(&cookie)
        );
        assert!(!made_with(PDNS_SECRET, &cookie, localhost()));
        assert!(stamp_age(&cookie).abs() <= 5, "{name}: stamped now");

        // Sent back, it is valid: the same cookie comes back (it is recent).
        let valid = d.metric("dnsteer_cookie_queries_total", &[("outcome", "valid")]);
        let (status, again) = dig(server, name, &to_hex(&cookie), &[]);
        assert_eq!(status, "NOERROR");
        assert_eq!(again.as_deref(), Some(cookie.as_slice()), "{name}");
        let now = d.metric("dnsteer_cookie_queries_total", &[("outcome", "valid")]);
        assert_eq!(now - valid, 1.0, "{name}");
    }
    // The tap relays UDP only: a query over TCP finds no PowerDNS and gets SERVFAIL, which
    // carries our cookie too.
    let (status, tcp) = dig(server, FORWARDED, "", &["+tcp"]);
    assert_eq!(status, "SERVFAIL");
    assert!(made_with(
        S1,
        &tcp.expect("cookie with SERVFAIL"),
        localhost()
    ));

    // A cookie from another address, or tampered with, is not valid: answered normally with
    // a fresh cookie.
    let (_, mine) = dig(server, FORWARDED, "", &[]);
    let mut forged = mine.expect("cookie");
    forged[23] ^= 1;
    let invalid = d.metric("dnsteer_cookie_queries_total", &[("outcome", "invalid")]);
    let (status, fresh) = dig(server, FORWARDED, &to_hex(&forged), &[]);
    assert_eq!(status, "NOERROR");
    let fresh = fresh.expect("a fresh cookie");
    assert_ne!(fresh, forged);
    assert!(made_with(S1, &fresh, localhost()));
    let now = d.metric("dnsteer_cookie_queries_total", &[("outcome", "invalid")]);
    assert_eq!(now - invalid, 1.0);

    // Every query PowerDNS got through the tap was cookieless, so no answer has one either.
    let seen = tap.seen();
    let www: &[u8] = b"\x03www\x04demo\x04test\x00";
    let forwarded = seen
        .iter()
        .filter(|(q, _)| q.windows(www.len()).any(|w| w == www))
        .count();
    assert!(forwarded >= 3, "the forwarded queries went through the tap");
    for (q, a) in &seen {
        assert!(read(q).cookies.is_empty(), "PowerDNS got a cookie: {q:?}");
        assert!(read(a).cookies.is_empty(), "PowerDNS answered one: {a:?}");
    }
}

#[test]
fn cache_hits_carry_the_requesters_own_cookie() {
    let pdns = start_pdns();
    let d = start(pdns.addr(), S1, None, "[cache]\nenabled = true\n");
    let server = d.dns_addr();
    let first = ask(server, FORWARDED, &cookie_option(&[1; 8]));
    assert_eq!((first.rcode, first.answers), (0, 1));
    assert_eq!(the_cookie(&first)[..8], [1; 8]);

    let hits = d.metric("dnsteer_cache_hits_total", &[]);
    for cc in [[2u8; 8], [3; 8]] {
        let a = ask(server, FORWARDED, &cookie_option(&cc));
        assert_eq!((a.rcode, a.answers), (0, 1));
        let c = the_cookie(&a);
        assert_eq!(
            c[..8],
            cc,
            "the requester's client cookie, not the first one's"
        );
        assert!(made_with(S1, &c, localhost()));
    }
    // Real clients too, and a cookieless one gets none from the cache.
    let (status, c) = dig(server, FORWARDED, "", &[]);
    assert_eq!(status, "NOERROR");
    assert!(made_with(S1, &c.expect("cookie"), localhost()));
    // Over TCP: forwarded on dnsteer's TCP path (the cache key has no transport).
    let (status, tcp) = dig(server, "demo.test", "", &["+tcp"]);
    assert_eq!(status, "NOERROR");
    assert!(made_with(S1, &tcp.expect("cookie over TCP"), localhost()));
    let plain = ask(server, FORWARDED, &[]);
    assert_eq!(plain.answers, 1);
    assert!(plain.cookies.is_empty(), "{plain:?}");
    assert_eq!(d.metric("dnsteer_cache_hits_total", &[]) - hits, 4.0);
}

#[test]
fn malformed_cookie_options_are_formerr() {
    let pdns = start_pdns();
    let d = start(pdns.addr(), S1, None, "");
    let server = d.dns_addr();
    for len in [0usize, 7, 9, 15, 41] {
        let a = ask(server, FORWARDED, &cookie_option(&vec![1; len]));
        assert_eq!(a.rcode, 1, "length {len}");
    }
    let mut two = cookie_option(&[1; 8]);
    two.extend_from_slice(&cookie_option(&[2; 8]));
    assert_eq!(ask(server, FORWARDED, &two).rcode, 1);
    assert_eq!(
        d.metric("dnsteer_cookie_queries_total", &[("outcome", "malformed")]),
        6.0
    );
    // Lengths 8 and 16 to 40 are fine (a server cookie of another length is just not ours).
    for len in [8usize, 16, 40] {
        let a = ask(server, FORWARDED, &cookie_option(&vec![1; len]));
        assert_eq!(a.rcode, 0, "length {len}");
        assert!(made_with(S1, &the_cookie(&a), localhost()));
    }
}

#[test]
fn a_rotated_secret_is_accepted_through_previous_secret_file() {
    let pdns = start_pdns();
    let d = start(pdns.addr(), S1, Some(S3), "");
    let server = d.dns_addr();
    let old = the_cookie(&ask(server, IN_PROCESS, &cookie_option(&[4; 8])));
    assert!(made_with(S1, &old, localhost()));

    // Rotation step 1 on every replica: the new secret in, the old one kept as previous.
    std::fs::write(d.dir().join("cookie-previous"), S1).expect("write");
    std::fs::write(d.dir().join("cookie-secret"), S2).expect("write");
    d.signal_hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = the_cookie(&ask(server, IN_PROCESS, &cookie_option(&[5; 8])));
        if made_with(S2, &c, localhost()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new secret was not picked up"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let valid = d.metric("dnsteer_cookie_queries_total", &[("outcome", "valid")]);
    let a = ask(server, IN_PROCESS, &cookie_option(&old));
    assert_eq!(a.rcode, 0);
    let renewed = the_cookie(&a);
    assert!(
        made_with(S2, &renewed, localhost()),
        "reissued with the new secret"
    );
    assert_eq!(
        d.metric("dnsteer_cookie_queries_total", &[("outcome", "valid")]) - valid,
        1.0
    );

    // Step 2, once every replica has the new secret: the old one goes.
    std::fs::write(d.dir().join("cookie-previous"), S3).expect("write");
    d.signal_hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = ask(server, IN_PROCESS, &cookie_option(&old));
        if made_with(S2, &the_cookie(&a), localhost())
            && d.metric("dnsteer_cookie_queries_total", &[("outcome", "invalid")]) > 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old secret is still accepted"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // The cookie made with the new secret stays valid.
    let a = ask(server, IN_PROCESS, &cookie_option(&renewed));
    assert_eq!(the_cookie(&a), renewed);

    // A broken secret file is refused and the running secrets kept.
    assert!(!d.log().contains("cookies.secret_file"), "{}", d.log());
    std::fs::write(d.dir().join("cookie-secret"), "not hex").expect("write");
    d.signal_hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("cookies.secret_file") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged:\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let a = ask(server, IN_PROCESS, &cookie_option(&renewed));
    assert_eq!(the_cookie(&a), renewed);
    let failed = d.metric("dnsteer_config_reloads_total", &[("result", "failed")]);
    assert!(failed >= 1.0, "the broken secret counts as a failed reload");
}

#[test]
fn a_cookie_client_is_exempt_from_the_rate_limit_and_a_flood_gets_refused_or_badcookie() {
    let pdns = start_pdns();
    let limit = "[ratelimit]\nenabled = true\nqps = 5\nburst = 5\nblock_for = \"30s\"\naction = \"refused\"\n";
    let d = start(pdns.addr(), S1, None, limit);
    let server = d.dns_addr();
    // A valid cookie learned before the flood.
    let learned = the_cookie(&ask(server, IN_PROCESS, &cookie_option(&[6; 8])));

    // A cookieless flood from 127.0.0.1 is limited.
    let mut refused = 0;
    for _ in 0..40 {
        if ask(server, IN_PROCESS, &[]).rcode == 5 {
            refused += 1;
        }
    }
    assert!(refused >= 30, "only {refused} of 40 refused");

    // The cookie client at the same address is not.
    for _ in 0..20 {
        let a = ask(server, FORWARDED, &cookie_option(&learned));
        assert_eq!((a.rcode, a.answers), (0, 1), "{a:?}");
        assert_eq!(the_cookie(&a), learned);
    }
    // A client cookie alone under the limit: BADCOOKIE with a fresh server cookie, no bigger
    // than the query plus the server cookie (no amplification).
    let badcookie = d.metric("dnsteer_cookie_badcookie_total", &[]);
    let q = query(7, IN_PROCESS, &cookie_option(&[8; 8]));
    let a = read(&udp_exchange(server, &q, TIMEOUT).expect("answer"));
    assert_eq!((a.rcode, a.answers), (BADCOOKIE, 0), "{a:?}");
    let fresh = the_cookie(&a);
    assert_eq!(fresh[..8], [8; 8]);
    assert!(made_with(S1, &fresh, localhost()));
    assert!(a.len <= q.len() + 16, "{} > {} + 16", a.len, q.len());
    // An invalid server cookie too.
    let mut forged = learned.clone();
    forged[20] ^= 0xFF;
    assert_eq!(
        ask(server, IN_PROCESS, &cookie_option(&forged)).rcode,
        BADCOOKIE
    );
    assert_eq!(
        d.metric("dnsteer_cookie_badcookie_total", &[]) - badcookie,
        2.0
    );
    // ... and with the cookie it was given, the client is exempt.
    let a = ask(server, IN_PROCESS, &cookie_option(&fresh));
    assert_eq!((a.rcode, a.answers), (0, 1));

    // dig, a real client: without retrying it sees BADCOOKIE; retrying (+badcookie) with the
    // new server cookie gets its answer.
    let (status, _) = dig(server, IN_PROCESS, "", &["+nobadcookie"]);
    assert_eq!(status, "BADCOOKIE");
    let (status, cookie) = dig(server, IN_PROCESS, "", &["+badcookie"]);
    assert_eq!(status, "NOERROR");
    assert!(made_with(S1, &cookie.expect("cookie"), localhost()));
    // The cookieless flood is still limited.
    assert_eq!(ask(server, IN_PROCESS, &[]).rcode, 5);
}

#[test]
fn a_signed_in_process_answer_carries_the_cookie_and_still_validates() {
    // The OPT record is never signed (RFC 6891 §6.1.1: it is not an RRset): the cookie goes in
    // after the RRSIG is made, and a validator still accepts the answer.
    const ZONE: &str = "signed.test.";
    let zone = "$ORIGIN signed.test.\n@ 300 IN SOA ns1 hostmaster 1 3600 600 86400 60\n\
                @ 300 IN NS ns1\nns1 300 IN A 192.0.2.53\n";
    let pdns = SignedPdns::start(&[(ZONE, zone), (DEMO_ZONE_NAME, DEMO_ZONE)], &[]);
    let zsk = pdns
        .keys(ZONE)
        .into_iter()
        .find(|k| k.kind == "zsk" && k.active)
        .expect("an active ZSK");
    let keys = tempfile::tempdir().expect("key dir");
    let key_file = keys.path().join("zsk.private");
    std::fs::write(&key_file, pdns.export_zone_key(ZONE, zsk.id)).expect("key file");
    let extra = format!(
        "[[dnssec.keys]]\nzone = \"{ZONE}\"\nfile = \"{}\"\n\n\
         [[records]]\nname = \"www.signed.test.\"\ntype = \"A\"\nttl = 60\ncontent = [\"192.0.2.80\"]\n",
        key_file.display()
    );
    let d = start(pdns.addr(), S1, None, &extra);
    let signed = || d.metric("dnsteer_dnssec_signed_answers_total", &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let wire = loop {
        let before = signed();
        let q = query_do(
            fastrand::u16(..),
            "www.signed.test",
            &cookie_option(&[9; 8]),
            true,
        );
        let wire = udp_exchange(d.dns_addr(), &q, TIMEOUT).expect("answer");
        let a = read(&wire);
        // 46 = RRSIG; signed here (not by PowerDNS, which never saw this query).
        if a.types.contains(&46) && signed() > before {
            assert!(made_with(S1, &the_cookie(&a), localhost()), "{a:?}");
            break wire;
        }
        assert!(
            Instant::now() < deadline,
            "not signed in-process: {a:?}\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(200));
    };
    let dnskey = dns_query_wire(
        pdns.addr(),
        ZONE,
        RecordType::DNSKEY,
        &QueryOpts::tcp().dnssec_ok().timeout(Duration::from_secs(5)),
    )
    .expect("DNSKEY");
    let checked = validate_with_dnspython(&wire, &dnskey, ZONE)
        .unwrap_or_else(|e| panic!("dnspython rejects the answer with a cookie: {e}"));
    assert_eq!(checked.len(), 1, "{checked:?}");
    assert_eq!(checked[0].key_tag, zsk.tag);
}

/// RRL (`mode = "rrl"`): a client with a valid server cookie is never limited, for in-process
/// and forwarded answers alike, while the same answers to a cookieless client at the same
/// address are slipped or dropped.
#[test]
fn a_cookie_client_is_exempt_from_rrl_on_every_path() {
    let pdns = start_pdns();
    let rrl = "[ratelimit]\nenabled = true\nmode = \"rrl\"\nresponses_per_second = 2\nslip = 0\n";
    let d = start(pdns.addr(), S1, None, rrl);
    let server = d.dns_addr();
    let learned = the_cookie(&ask(server, IN_PROCESS, &cookie_option(&[5; 8])));
    for name in [IN_PROCESS, FORWARDED] {
        // Cookieless: after the burst, most identical answers are dropped (slip 0).
        let q = query(9, name, &[]);
        let answered = (0..30)
            .filter(|_| udp_exchange(server, &q, Duration::from_millis(150)).is_ok())
            .count();
        assert!(
            answered <= 10,
            "{name}: {answered} of 30 cookieless answered"
        );
        // With the cookie: every one answered, with the cookie.
        for _ in 0..30 {
            let a = ask(server, name, &cookie_option(&learned));
            assert_eq!((a.rcode, a.answers), (0, 1), "{name}: {a:?}");
            assert_eq!(the_cookie(&a), learned);
        }
    }
    assert!(d.metric("dnsteer_rrl_limited_total", &[]) >= 40.0);
}

#[test]
fn check_config_reads_the_cookie_secret_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("dnsteer.toml");
    let secret = dir.path().join("cookie-secret");
    let previous = dir.path().join("cookie-previous");
    let write_config = |with_previous: bool| {
        let previous_line = if with_previous {
            "previous_secret_file = \"cookie-previous\"\n"
        } else {
            ""
        };
        std::fs::write(
            &cfg,
            format!(
                "[upstream]\nservers = [\"127.0.0.1:5353\"]\n\
                 [cookies]\nenabled = true\nsecret_file = \"cookie-secret\"\n{previous_line}"
            ),
        )
        .expect("write config");
    };
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_dnsteer"))
            .arg("check-config")
            .arg(&cfg)
            .output()
            .expect("run dnsteer check-config");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let names = |text: &str, key: &str, file: &std::path::Path| {
        text.contains(key) && text.contains(&*file.to_string_lossy())
    };

    write_config(false);
    let (ok, text) = check();
    assert!(
        !ok && names(&text, "cookies.secret_file", &secret),
        "{text}"
    );

    // 34 hex digits: not a secret; its text is never printed.
    std::fs::write(&secret, format!("{S1}ab\n")).expect("write");
    let (ok, text) = check();
    assert!(
        !ok && names(&text, "cookies.secret_file", &secret),
        "{text}"
    );
    assert!(!text.contains(S1), "{text}");

    std::fs::write(&secret, "0".repeat(32)).expect("write");
    let (ok, text) = check();
    assert!(
        !ok && names(&text, "cookies.secret_file", &secret),
        "{text}"
    );

    std::fs::write(&secret, format!("{S1}\n")).expect("write");
    let (ok, text) = check();
    assert!(ok && text.contains("cookie secrets read"), "{text}");
    assert!(!text.contains(S1), "{text}");

    write_config(true);
    let (ok, text) = check();
    assert!(
        !ok && names(&text, "cookies.previous_secret_file", &previous),
        "{text}"
    );
    std::fs::write(&previous, "not hex at all, 32 chars long!!!").expect("write");
    let (ok, text) = check();
    assert!(
        !ok && names(&text, "cookies.previous_secret_file", &previous),
        "{text}"
    );
    std::fs::write(&previous, S2).expect("write");
    let (ok, text) = check();
    assert!(ok && text.contains("cookie secrets read"), "{text}");
    assert!(!text.contains(S1) && !text.contains(S2), "{text}");
}
