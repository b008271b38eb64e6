//! DNSSEC online signing, end to end: a PowerDNS 4.7 signing `signed.test.` (KSK + ZSK,
//! ECDSAP256SHA256) holds the LUA records; the real dnsteer binary reads them by zone transfer
//! and, holding the zone's active ZSK (`[[dnssec.keys]]`), answers and signs DO=1 queries for
//! them itself; a validating Unbound whose only trust anchor is the zone's DS resolves through
//! dnsteer (`stub-zone`), and dnspython checks each signature independently.
//!
//! The acceptance spec of the signing in the packet path: every assertion is on the RRSIG
//! (type covered, key tag, signer, original TTL, validity window), on AD through Unbound, and
//! on who answered (PowerDNS's own DO query counter and query log, dnsteer's metrics), never
//! only on "an answer came". The negative controls (a key PowerDNS does not publish, a flipped
//! signature byte) show the checks can fail.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use support::signed::{
    CheckedSig, KeyInfo, Rrsig, SignedPdns, Unbound, dns_query_wire, rrsigs,
    validate_with_dnspython,
};
use support::{Dnsteer, QueryOpts, metric_sum};

const ZONE: &str = "signed.test.";
/// In-process answers dnsteer signed itself (name kept in one place: easy to change).
const SIGNED_METRIC: &str = "dnsteer_dnssec_signed_answers_total";
/// DO=1 queries for a signed zone sent on to PowerDNS (label `reason`).
const FORWARDED_METRIC: &str = "dnsteer_dnssec_forwarded_total";
/// dnsteer's signer state (in `/status`) and `reason` label for a configured key missing from
/// the zone's DNSKEY RRset.
const NOT_PUBLISHED_STATE: &str = "key_not_published";
/// `reason` of a DO=1 query for an in-process name with another type (PowerDNS proves it).
const NODATA_REASON: &str = "nodata";
/// SOA TTL and minimum (= DNSKEY TTL): how often dnsteer re-learns the zone's keys.
const SOA_TTL: u32 = 5;
const WEEK: u64 = 7 * 86_400;
const DAY: u64 = 86_400;
const POLL: Duration = Duration::from_millis(50);
/// How long dnsteer may take to sign its first answer after start-up / follow a key change.
const SIGNING_WAIT: Duration = Duration::from_secs(10);
const ROLL_WAIT: Duration = Duration::from_secs(20);

/// The in-process names: (name, query type, record TTL in the zone).
const NAMES: &[(&str, RecordType, u32)] = &[
    ("pw.signed.test.", RecordType::A, 60),
    ("ph.signed.test.", RecordType::A, 60),
    ("all.signed.test.", RecordType::A, 60),
    ("up.signed.test.", RecordType::A, 30),
    ("static.signed.test.", RecordType::A, 120),
    ("cn.signed.test.", RecordType::CNAME, 60),
    ("txt.signed.test.", RecordType::TXT, 60),
    ("url.signed.test.", RecordType::A, 60),
    ("geo.signed.test.", RecordType::A, 60),
];

/// `ifportup` with address groups: dnsteer evaluates it, PowerDNS 4.7.3 does not (its
/// ifportup takes a flat list only and answers SERVFAIL), so only a signed in-process answer
/// can make it secure.
const IFPORTUP_GROUPS: &str = "up.signed.test.";

/// Rdata dnsteer must give whatever the DO bit, for the names whose answer does not depend on
/// the client (`up`: the primary group's listener is up).
const FIXED: &[(&str, &[&str])] = &[
    ("all.signed.test.", &["192.0.2.6", "192.0.2.7"]),
    ("up.signed.test.", &["127.0.0.1"]),
    ("static.signed.test.", &["192.0.2.10", "192.0.2.11"]),
    ("cn.signed.test.", &["www.signed.test."]),
    ("txt.signed.test.", &["hello from lua"]),
    ("url.signed.test.", &["127.0.0.1"]),
];

/// Four TXT strings of 90 bytes: about 460 bytes unsigned, about 570 with its RRSIG.
const BIG_TXT_STRINGS: usize = 4;
const BIG_TXT_LEN: usize = 90;

fn big_txt_chunk(i: usize) -> String {
    let c = char::from(b'a' + i as u8);
    format!("'{}'", c.to_string().repeat(BIG_TXT_LEN))
}

/// The zone: NS/SOA, one plain A (the CNAME target), and the LUA records. `port` is the TCP
/// listener the `ifportup` primary group is probed on. The big TXT body is written as quoted
/// strings under 255 bytes split between tokens (PowerDNS joins them without a space).
fn zone_text(port: u16) -> String {
    let big: Vec<String> = (0..BIG_TXT_STRINGS).map(big_txt_chunk).collect();
    format!(
        "$ORIGIN signed.test.
@       {SOA_TTL} IN SOA ns1 hostmaster 1 3600 600 86400 {SOA_TTL}
@       300 IN NS  ns1
ns1     300 IN A   192.0.2.53
www     300 IN A   192.0.2.80
pw       60 IN LUA A \"pickwhashed({{{{1,'192.0.2.1'}},{{3,'192.0.2.2'}}}})\"
ph       60 IN LUA A \"pickhashed({{'192.0.2.3','192.0.2.4','192.0.2.5'}})\"
all      60 IN LUA A \"all({{'192.0.2.6','192.0.2.7'}})\"
up       30 IN LUA A \"ifportup({port}, {{{{'127.0.0.1'}},{{'127.0.0.2'}}}}, {{timeout='1', interval='1'}})\"
static  120 IN LUA A \"{{'192.0.2.10','192.0.2.11'}}\"
cn       60 IN LUA CNAME \"'www.signed.test.'\"
txt      60 IN LUA TXT \"'hello from lua'\"
url      60 IN LUA A \"ifurlup('http://127.0.0.1:{port}/', {{{{'127.0.0.1'}},{{'127.0.0.2'}}}}, {{timeout='1', interval='1'}})\"
geo      60 IN LUA A \"pickclosest({{'193.0.6.139','210.140.92.1'}})\"
*.wild   60 IN LUA A \"createForward()\"
big      60 IN LUA TXT \"{{{}, {},\" \" {}, {}}}\"
",
        big[0], big[1], big[2], big[3]
    )
}

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

/// PowerDNS, the probe target, the key files, dnsteer in front, optionally Unbound through
/// dnsteer. Dropped in reverse order of need (every process stopped by its guard).
struct Setup {
    unbound: Option<Unbound>,
    dnsteer: Dnsteer,
    pdns: SignedPdns,
    /// The key files dnsteer reads (kept until dnsteer is gone).
    _keydir: tempfile::TempDir,
    /// The probe target of `up` (TCP) and `url` (HTTP) primary groups.
    _listener: HttpOk,
}

/// What dnsteer is started with.
struct Options {
    /// PrivateKey files for `[[dnssec.keys]]` (from `export_zone_key` or freshly generated);
    /// `None`: the zone's active ZSK.
    keys: Option<Vec<String>>,
    unbound: bool,
    /// `[logging]` level (the key-material test logs everything).
    log_level: &'static str,
    query_sample_rate: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keys: None,
            unbound: true,
            log_level: "info",
            query_sample_rate: 0.01,
        }
    }
}

impl Setup {
    fn start(opts: Options) -> Setup {
        let pdns = start_pdns_with_listener();
        Setup::start_on(pdns, opts)
    }

    fn start_on((pdns, listener): (SignedPdns, HttpOk), opts: Options) -> Setup {
        let keydir = tempfile::Builder::new()
            .prefix("dnsteer-dnssec-keys-")
            .tempdir()
            .expect("temp dir for key files");
        let keys = opts
            .keys
            .unwrap_or_else(|| vec![pdns.export_zone_key(ZONE, active_zsk(&pdns).id)]);
        let files: Vec<PathBuf> = keys
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let path = keydir.path().join(format!("signed.test.{i}.private"));
                std::fs::write(&path, text).expect("write key file");
                path
            })
            .collect();
        let upstream = pdns.addr();
        let dnsteer = Dnsteer::start_on_free_ports(|dns, metrics| {
            dnsteer_config(
                dns,
                metrics,
                upstream,
                &files,
                opts.log_level,
                opts.query_sample_rate,
            )
        });
        let unbound = opts
            .unbound
            .then(|| Unbound::start(&pdns.ds(ZONE), &[(ZONE, dnsteer.dns_addr())]));
        Setup {
            unbound,
            dnsteer,
            pdns,
            _keydir: keydir,
            _listener: listener,
        }
    }

    fn unbound(&self) -> &Unbound {
        self.unbound.as_ref().expect("setup started with Unbound")
    }

    fn front(&self) -> SocketAddr {
        self.dnsteer.dns_addr()
    }

    fn metrics(&self) -> String {
        let (status, body) = self.dnsteer.get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    fn signed_total(&self) -> f64 {
        metric_sum(&self.metrics(), SIGNED_METRIC, &[])
    }

    fn forwarded_total(&self) -> f64 {
        metric_sum(&self.metrics(), FORWARDED_METRIC, &[])
    }

    fn forwarded_for(&self, reason: &str) -> f64 {
        metric_sum(&self.metrics(), FORWARDED_METRIC, &[("reason", reason)])
    }

    /// PowerDNS's count of UDP queries with DO=1 (`pdns_control show udp-do-queries`).
    fn pdns_do_queries(&self) -> u64 {
        let out = self.pdns.pdns().control(&["show", "udp-do-queries"]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("udp-do-queries: {out:?}"))
    }

    /// The zone's DNSKEY response (DO=1, TCP) straight from PowerDNS, for dnspython.
    fn dnskey_wire(&self) -> Vec<u8> {
        dns_query_wire(self.pdns.addr(), ZONE, RecordType::DNSKEY, &tcp_do()).expect("DNSKEY")
    }

    /// dnsteer's direct DO=1 answer: (wire, decoded).
    fn ask_do(&self, name: &str, qtype: RecordType, opts: &QueryOpts) -> (Vec<u8>, Message) {
        let wire = dns_query_wire(self.front(), name, qtype, opts)
            .unwrap_or_else(|e| panic!("{name} {qtype} from dnsteer: {e}\n{}", self.context()));
        let m = Message::from_vec(&wire).expect("decode dnsteer's answer");
        (wire, m)
    }

    /// dnsteer's log and PowerDNS's, and Unbound's when present, for failure messages.
    fn context(&self) -> String {
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- dnsteer log ---\n{}\n--- PowerDNS log ---\n{}\n--- unbound log ---\n{}",
            tail(self.dnsteer.log()),
            tail(self.pdns.log()),
            tail(self.unbound.as_ref().map(Unbound::log).unwrap_or_default()),
        )
    }

    /// Waits until a DO=1 query for `pw` is answered by dnsteer itself, signed with `tag`:
    /// the answer carries an RRSIG by `tag` and PowerDNS's DO query counter did not move.
    /// Panics (the signing never came) after `limit`.
    fn wait_signing_with(&self, tag: u16, limit: Duration) {
        if let Err(last) = self.try_wait_signing_with(tag, limit) {
            panic!(
                "dnsteer did not answer pw.signed.test. A (DO=1) itself, signed by key {tag}, \
                 within {limit:?}: last {last}\n{SIGNED_METRIC}={} {FORWARDED_METRIC}={}\n{}",
                self.signed_total(),
                self.forwarded_total(),
                self.context()
            );
        }
    }

    /// [`Setup::wait_signing_with`] without the panic: the last observation on time-out.
    fn try_wait_signing_with(&self, tag: u16, limit: Duration) -> Result<(), String> {
        let t = Instant::now();
        loop {
            let before = self.pdns_do_queries();
            let (_, m) = self.ask_do("pw.signed.test.", RecordType::A, &udp_do());
            let after = self.pdns_do_queries();
            let tags: Vec<u16> = rrsigs(&m).iter().map(|s| s.key_tag).collect();
            if tags == [tag] && after == before {
                return Ok(());
            }
            if t.elapsed() > limit {
                return Err(format!(
                    "RRSIG key tags {tags:?} (want [{tag}]), PowerDNS DO queries +{}",
                    after - before
                ));
            }
            thread::sleep(POLL);
        }
    }
}

/// A signed PowerDNS for the zone, with the query log on, and the probe listener.
fn start_pdns_with_listener() -> (SignedPdns, HttpOk) {
    let listener = HttpOk::start();
    let port = listener.port;
    let pdns = SignedPdns::start(&[(ZONE, &zone_text(port))], &["log-dns-queries=yes"]);
    (pdns, listener)
}

fn dnsteer_config(
    dns: SocketAddr,
    metrics: SocketAddr,
    upstream: SocketAddr,
    key_files: &[PathBuf],
    log_level: &str,
    query_sample_rate: f64,
) -> String {
    let mut c = format!(
        "[server]\nlisten = [\"{dns}\"]\nworkers = 2\n\
         [metrics]\nlisten = \"{metrics}\"\n\
         [logging]\nlevel = \"{log_level}\"\nquery_sample_rate = {query_sample_rate:?}\n\
         [ratelimit]\nenabled = false\n\
         [upstream]\nservers = [\"{upstream}\"]\ntimeout = \"500ms\"\nhealth_check_interval = \"200ms\"\n\
         [probes]\ninterval = \"1s\"\ntimeout = \"1s\"\n\
         [zones]\ntransfer = [\"{ZONE}\"]\nrefresh = \"1s\"\n\
         [geoip]\ndatabase = \"{}\"\n",
        mmdb().display()
    );
    for f in key_files {
        c.push_str(&format!(
            "[[dnssec.keys]]\nzone = \"{ZONE}\"\nfile = \"{}\"\n",
            f.display()
        ));
    }
    c
}

fn mmdb() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("geoip/test-city.mmdb")
}

/// A probe target on 127.0.0.1: answers `HTTP/1.1 200` to every connection (so it serves
/// both the `ifportup` and the `ifurlup` checks); 127.0.0.2 on the same port has no listener
/// (the backup group is down). Stopped on drop.
struct HttpOk {
    port: u16,
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HttpOk {
    fn start() -> HttpOk {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the probe listener");
        let port = listener.local_addr().expect("listener address").port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            use std::io::{Read, Write};
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        HttpOk {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpOk {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept so the thread sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn active_zsk(pdns: &SignedPdns) -> KeyInfo {
    let keys = pdns.keys(ZONE);
    let mut zsks: Vec<KeyInfo> = keys
        .iter()
        .filter(|k| k.kind == "zsk" && k.active)
        .cloned()
        .collect();
    assert_eq!(zsks.len(), 1, "one active ZSK expected: {keys:?}");
    zsks.remove(0)
}

fn udp_do() -> QueryOpts {
    QueryOpts::udp()
        .dnssec_ok()
        .edns(1232)
        .timeout(Duration::from_secs(3))
}

fn tcp_do() -> QueryOpts {
    QueryOpts::tcp().dnssec_ok().timeout(Duration::from_secs(5))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// PowerDNS's RRSIG validity for a signature made at `t`: its week starts on Thursday 00:00
/// UTC (weeks counted from the epoch, a Thursday); inception one week before, expiration two
/// weeks after.
fn week_window(t: u64) -> (u64, u64) {
    let start = t - t % WEEK;
    (start - WEEK, start + 2 * WEEK)
}

/// Windows a signature made now may carry: this week's; last week's if the week turned during
/// the test; next week's during the last day of the week (dnsteer moves each RRset to the
/// next window at a point spread over that day).
fn accepted_windows() -> Vec<(u64, u64)> {
    let now = unix_now();
    vec![
        week_window(now),
        week_window(now - 120),
        week_window(now + DAY),
    ]
}

/// The records of `qtype` in the answer section, as sorted presentation rdata.
fn rdata_of(m: &Message, qtype: RecordType) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter(|r| r.record_type() == qtype)
        .map(|r| r.data.to_string())
        .collect();
    v.sort();
    v
}

/// Every check on one of dnsteer's own signed answers: one RRSIG over the answer RRset, by
/// `tag`, algorithm 13, labels of the owner, original TTL = record TTL, PowerDNS's window;
/// and dnspython accepts it against the zone's DNSKEY RRset (signer = the zone).
fn assert_signed_answer(
    s: &Setup,
    name: &str,
    qtype: RecordType,
    ttl: u32,
    tag: u16,
    wire: &[u8],
    m: &Message,
) -> Vec<CheckedSig> {
    let ctx = || format!("{name} {qtype} (DO=1) from dnsteer: {m:?}");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{}", ctx());
    assert!(!m.metadata.truncation, "{}", ctx());
    let records: Vec<_> = m
        .answers
        .iter()
        .filter(|r| r.record_type() == qtype)
        .collect();
    assert!(!records.is_empty(), "no {qtype} record: {}", ctx());
    for r in &records {
        assert_eq!(r.ttl, ttl, "record TTL: {}", ctx());
    }
    let sigs: Vec<Rrsig> = rrsigs(m);
    assert_eq!(
        sigs.len(),
        1,
        "exactly one RRSIG expected: {sigs:?}\n{}",
        ctx()
    );
    let sig = &sigs[0];
    assert_eq!(sig.type_covered, qtype, "type covered: {sig:?}");
    assert_eq!(sig.key_tag, tag, "key tag: {sig:?}");
    assert_eq!(sig.algorithm, 13, "ECDSAP256SHA256: {sig:?}");
    assert_eq!(sig.labels, 3, "labels of {name}: {sig:?}");
    assert_eq!(sig.original_ttl, ttl, "original TTL = record TTL: {sig:?}");
    assert_eq!(sig.owner.to_ascii_lowercase(), name, "{sig:?}");
    let window = (u64::from(sig.inception), u64::from(sig.expiration));
    let accepted = accepted_windows();
    assert!(
        accepted.contains(&window),
        "{name}: RRSIG window {window:?} is not PowerDNS's week rule {accepted:?}"
    );
    let checked = validate_with_dnspython(wire, &s.dnskey_wire(), ZONE)
        .unwrap_or_else(|e| panic!("dnspython rejects dnsteer's {name} {qtype}: {e}\n{m:?}"));
    assert_eq!(checked.len(), 1, "{checked:?}");
    let c = &checked[0];
    assert_eq!(
        (
            c.rtype.as_str(),
            c.key_tag,
            c.signer.as_str(),
            c.original_ttl
        ),
        (qtype.to_string().as_str(), tag, ZONE, ttl),
        "{c:?}"
    );
    checked
}

/// Through Unbound (DO=1): `rcode`, AD=1, returns the answer.
fn assert_secure(s: &Setup, name: &str, qtype: RecordType, rcode: ResponseCode) -> Message {
    let m = s.unbound().ask(name, qtype, true);
    assert_eq!(
        m.metadata.response_code,
        rcode,
        "{name} {qtype} via unbound: {m:?}\n{}",
        s.context()
    );
    assert!(
        m.metadata.authentic_data,
        "{name} {qtype} via unbound: AD=0: {m:?}\n{}",
        s.context()
    );
    m
}

/// Lines of PowerDNS's query log (`log-dns-queries`) asking `name`/`qtype` with DO=`do_bit`.
fn pdns_log_count(pdns: &SignedPdns, name: &str, qtype: RecordType, do_bit: bool) -> usize {
    let want_name = name.trim_end_matches('.').to_ascii_lowercase();
    let want_do = if do_bit { "do = 1" } else { "do = 0" };
    pdns.log()
        .lines()
        .filter(|l| {
            let Some((_, rest)) = l.split_once("wants '") else {
                return false;
            };
            let Some((q, tail)) = rest.split_once('\'') else {
                return false;
            };
            let Some((n, t)) = q.rsplit_once('|') else {
                return false;
            };
            n.trim_end_matches('.').eq_ignore_ascii_case(&want_name)
                && t == qtype.to_string()
                && tail.contains(want_do)
        })
        .count()
}

/// Waits until PowerDNS's query log shows `name`/`qtype` with DO=1 (the log is written
/// asynchronously to the file).
fn wait_pdns_logged(pdns: &SignedPdns, name: &str, qtype: RecordType) {
    let t = Instant::now();
    while pdns_log_count(pdns, name, qtype, true) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "PowerDNS's query log never showed {name} {qtype} with DO=1 (log-dns-queries \
             not working?)\n{}",
            pdns.log()
        );
        thread::sleep(POLL);
    }
}

/// The signature bytes (last 64 of the RRSIG RDATA) of the first RRSIG in the answer.
fn signature_bytes(m: &Message) -> Vec<u8> {
    m.answers
        .iter()
        .find(|r| r.record_type() == RecordType::RRSIG)
        .and_then(|r| match &r.data {
            RData::Unknown { rdata, .. } => {
                let b = &rdata.anything;
                b.get(b.len().checked_sub(64)?..).map(<[u8]>::to_vec)
            }
            _ => None,
        })
        .expect("an RRSIG with a 64-byte ECDSA P-256 signature")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Every in-process name: dnsteer's own DO=1 answer carries a correct RRSIG by the ZSK that
/// dnspython accepts, Unbound resolves it through dnsteer with AD and the same rdata, PowerDNS
/// never sees the query, and DO=0 answers are as they were (no RRSIG, same rdata). A flipped
/// signature byte is rejected (the dnspython check is live).
#[test]
fn in_process_answers_are_signed_and_validate() {
    let s = Setup::start(Options::default());
    let zsk = active_zsk(&s.pdns);
    s.wait_signing_with(zsk.tag, SIGNING_WAIT);

    // Who answers: a burst of DO=1 queries for every name, none reaching PowerDNS.
    const ROUNDS: usize = 5;
    let signed_before = s.signed_total();
    let forwarded_before = s.forwarded_total();
    let pdns_before = s.pdns_do_queries();
    for _ in 0..ROUNDS {
        for &(name, qtype, _) in NAMES {
            let (_, m) = s.ask_do(name, qtype, &udp_do());
            assert!(
                rrsigs(&m).iter().any(|r| r.type_covered == qtype),
                "{name} {qtype}: unsigned DO=1 answer {m:?}"
            );
        }
    }
    let sent = (ROUNDS * NAMES.len()) as f64;
    let pdns_delta = s.pdns_do_queries() - pdns_before;
    let signed = s.signed_total() - signed_before;
    let forwarded = s.forwarded_total() - forwarded_before;
    // dnsteer's own zone refresh may ask PowerDNS with DO=1 meanwhile: a few, never one per
    // query.
    assert!(
        pdns_delta <= 6,
        "PowerDNS answered {pdns_delta} DO=1 queries during {sent} in-process ones"
    );
    assert!(
        signed >= sent,
        "{SIGNED_METRIC} grew by {signed}, sent {sent}"
    );
    assert_eq!(
        forwarded, 0.0,
        "{FORWARDED_METRIC} grew during in-process queries"
    );

    // Each answer in detail, and through Unbound.
    for &(name, qtype, ttl) in NAMES {
        let (wire, direct) = s.ask_do(name, qtype, &udp_do());
        assert_signed_answer(&s, name, qtype, ttl, zsk.tag, &wire, &direct);
        let via = assert_secure(&s, name, qtype, ResponseCode::NoError);
        assert_eq!(
            rdata_of(&via, qtype),
            rdata_of(&direct, qtype),
            "{name} {qtype}: Unbound and dnsteer disagree"
        );

        // DO=0: the same rdata, no RRSIG, no OPT DO bit.
        let plain = support::dns_ask(s.front(), name, qtype, &QueryOpts::udp().edns(1232));
        assert!(rrsigs(&plain).is_empty(), "{name} {qtype} DO=0: {plain:?}");
        assert_eq!(
            rdata_of(&plain, qtype),
            rdata_of(&direct, qtype),
            "{name} {qtype}: DO=0 and DO=1 answers differ"
        );
        let no_edns = support::dns_ask(s.front(), name, qtype, &QueryOpts::udp());
        assert!(rrsigs(&no_edns).is_empty(), "{name} {qtype}: {no_edns:?}");
        assert_eq!(rdata_of(&no_edns, qtype), rdata_of(&direct, qtype));
    }
    for &(name, want) in FIXED {
        let qtype = NAMES
            .iter()
            .find(|n| n.0 == name)
            .map(|n| n.1)
            .expect("listed");
        let (_, m) = s.ask_do(name, qtype, &udp_do());
        let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
        want.sort();
        assert_eq!(rdata_of(&m, qtype), want, "{name} {qtype}");
    }
    // pickclosest with the client's subnet (ECS): signed per client, valid, with the ECS scope.
    for (ecs, want) in [
        ("210.140.92.0/24", "210.140.92.1"),
        ("193.0.6.0/24", "193.0.6.139"),
    ] {
        let (wire, m) = s.ask_do("geo.signed.test.", RecordType::A, &udp_do().ecs(ecs));
        assert_eq!(rdata_of(&m, RecordType::A), [want], "geo for {ecs}: {m:?}");
        assert_signed_answer(
            &s,
            "geo.signed.test.",
            RecordType::A,
            60,
            zsk.tag,
            &wire,
            &m,
        );
    }

    // A LUA CNAME asked as A: its target is PowerDNS's, so PowerDNS answers (and signs) the
    // chain, as it does without dnsteer; Unbound validates both RRsets.
    let cn = assert_secure(&s, "cn.signed.test.", RecordType::A, ResponseCode::NoError);
    assert_eq!(rdata_of(&cn, RecordType::A), ["192.0.2.80"], "{cn:?}");
    let chased_before = s.forwarded_for("cname_chase");
    let (_, direct) = s.ask_do("cn.signed.test.", RecordType::A, &udp_do());
    assert_eq!(
        rdata_of(&direct, RecordType::A),
        ["192.0.2.80"],
        "{direct:?}"
    );
    assert!(
        s.forwarded_for("cname_chase") > chased_before,
        "cn A DO=1 was not forwarded for the chase"
    );

    // PowerDNS's query log: no in-process name was ever asked there, with DO=1 or not; a
    // forwarded NODATA query is (the log works).
    let (_, nodata) = s.ask_do("pw.signed.test.", RecordType::MX, &udp_do());
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    wait_pdns_logged(&s.pdns, "pw.signed.test.", RecordType::MX);
    for &(name, qtype, _) in NAMES {
        for do_bit in [true, false] {
            assert_eq!(
                pdns_log_count(&s.pdns, name, qtype, do_bit),
                0,
                "PowerDNS was asked {name} {qtype} with DO={do_bit}\n{}",
                s.pdns.log()
            );
        }
    }

    // Negative control (b): one flipped signature byte must not validate.
    let (mut wire, m) = s.ask_do("pw.signed.test.", RecordType::A, &udp_do());
    let sig = signature_bytes(&m);
    let at = wire
        .windows(sig.len())
        .position(|w| w == sig.as_slice())
        .expect("signature bytes in the wire");
    let dnskey = s.dnskey_wire();
    validate_with_dnspython(&wire, &dnskey, ZONE).expect("the untouched answer validates");
    wire[at + 10] ^= 0x01;
    let err = validate_with_dnspython(&wire, &dnskey, ZONE)
        .expect_err("a flipped signature byte must not validate");
    assert!(err.contains("pw.signed.test."), "{err}");
}

/// NODATA (a type an in-process name does not have) and NXDOMAIN through dnsteer: forwarded to
/// PowerDNS, which proves the denial (NSEC), and secure through Unbound.
/// Negative control on the validity window: an Unbound judging signatures at a date after the
/// expiration, or before the inception, of dnsteer's window gives SERVFAIL for the same answer
/// an Unbound at the real date accepts (so AD in the other tests means the window is right).
#[test]
fn signatures_outside_their_window_are_bogus_for_a_validator() {
    let s = Setup::start(Options::default());
    let zsk = active_zsk(&s.pdns);
    s.wait_signing_with(zsk.tag, SIGNING_WAIT);
    assert_secure(&s, "pw.signed.test.", RecordType::A, ResponseCode::NoError);
    let (_, m) = s.ask_do("pw.signed.test.", RecordType::A, &udp_do());
    let sig = rrsigs(&m)
        .into_iter()
        .find(|r| r.type_covered == RecordType::A)
        .expect("an RRSIG over A");
    let date = |unix: u64| {
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{unix}"), "+%Y%m%d%H%M%S"])
            .output()
            .expect("date");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Unbound forgives up to `val-sig-skew-max` (1 day) of clock skew: go 3 days past.
    for (what, at) in [
        ("after the expiration", u64::from(sig.expiration) + 3 * DAY),
        ("before the inception", u64::from(sig.inception) - 3 * DAY),
    ] {
        let line = format!("val-override-date: \"{}\"", date(at));
        let unbound = Unbound::start_with(&s.pdns.ds(ZONE), &[(ZONE, s.front())], &[&line]);
        let m = unbound.ask("pw.signed.test.", RecordType::A, true);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::ServFail,
            "{what} ({line}): {m:?}\n{}",
            unbound.log()
        );
    }
}

#[test]
fn nodata_and_nxdomain_are_forwarded_and_validate() {
    let s = Setup::start(Options::default());
    let zsk = active_zsk(&s.pdns);
    // Judged whether or not signing is live (other tests require it): the denials are
    // PowerDNS's either way, and an unsigned in-process NODATA must never reach a DO=1 client.
    if let Err(e) = s.try_wait_signing_with(zsk.tag, SIGNING_WAIT) {
        eprintln!("note: dnsteer is not signing in-process ({e}); checking the denials anyway");
    }

    let cases = [
        ("pw.signed.test.", RecordType::MX, ResponseCode::NoError),
        ("txt.signed.test.", RecordType::AAAA, ResponseCode::NoError),
        ("nope.signed.test.", RecordType::A, ResponseCode::NXDomain),
    ];
    for (name, qtype, rcode) in cases {
        let forwarded_before = s.forwarded_total();
        let nodata_before = s.forwarded_for(NODATA_REASON);
        let pdns_before = s.pdns_do_queries();
        let (wire, m) = s.ask_do(name, qtype, &udp_do());
        assert_eq!(m.metadata.response_code, rcode, "{name} {qtype}: {m:?}");
        assert!(
            m.answers.iter().all(|r| r.record_type() != qtype),
            "{name} {qtype}: {m:?}"
        );
        let checked = validate_with_dnspython(&wire, &s.dnskey_wire(), ZONE)
            .unwrap_or_else(|e| panic!("dnspython rejects {name} {qtype}: {e}\n{m:?}"));
        let types: Vec<&str> = checked.iter().map(|c| c.rtype.as_str()).collect();
        assert!(
            types.contains(&"SOA") && types.contains(&"NSEC"),
            "{name} {qtype}: denial not proven: {checked:?}"
        );
        assert!(checked.iter().all(|c| c.key_tag == zsk.tag), "{checked:?}");
        assert!(
            s.pdns_do_queries() > pdns_before,
            "{name} {qtype}: PowerDNS did not answer it"
        );
        assert!(
            s.forwarded_total() > forwarded_before,
            "{name} {qtype}: {FORWARDED_METRIC} did not grow"
        );
        if rcode == ResponseCode::NoError {
            assert_eq!(
                s.forwarded_for(NODATA_REASON) - nodata_before,
                1.0,
                "{name} {qtype}: {FORWARDED_METRIC}{{reason=\"{NODATA_REASON}\"}}\n{}",
                s.metrics()
            );
        }
        let via = assert_secure(&s, name, qtype, rcode);
        assert!(via.answers.iter().all(|r| r.record_type() != qtype));
    }
}

/// A wildcard answer needs PowerDNS's proof that the query name does not exist: under DO=1 it
/// is forwarded even while dnsteer signs (and validates); without DO it is answered here.
#[test]
fn wildcard_answers_under_do_are_powerdns_and_validate() {
    let s = Setup::start(Options::default());
    let zsk = active_zsk(&s.pdns);
    if let Err(e) = s.try_wait_signing_with(zsk.tag, SIGNING_WAIT) {
        eprintln!("note: dnsteer is not signing in-process ({e}); checking the wildcard anyway");
    }
    let name = "192-0-2-44.wild.signed.test.";
    let forwarded_before = s.forwarded_total();
    let pdns_before = s.pdns_do_queries();
    let (wire, m) = s.ask_do(name, RecordType::A, &udp_do());
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
    assert_eq!(
        rdata_of(&m, RecordType::A),
        vec!["192.0.2.44".to_string()],
        "{m:?}"
    );
    let checked = validate_with_dnspython(&wire, &s.dnskey_wire(), ZONE)
        .unwrap_or_else(|e| panic!("dnspython rejects {name}: {e}\n{m:?}"));
    assert!(
        checked.iter().any(|c| c.rtype == "NSEC"),
        "no proof of the expansion: {checked:?}"
    );
    assert!(
        s.pdns_do_queries() > pdns_before,
        "PowerDNS did not answer it"
    );
    assert!(
        s.forwarded_total() > forwarded_before,
        "not counted as forwarded"
    );
    // Without DO the transferred wildcard is answered here (once the zone is transferred).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = pdns_log_count(&s.pdns, name, RecordType::A, false);
        let m = support::dns_query(s.front(), name, RecordType::A, &QueryOpts::udp()).unwrap();
        assert_eq!(
            rdata_of(&m, RecordType::A),
            vec!["192.0.2.44".to_string()],
            "{m:?}"
        );
        thread::sleep(Duration::from_millis(300));
        if pdns_log_count(&s.pdns, name, RecordType::A, false) == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "DO=0 wildcard queries keep reaching PowerDNS"
        );
    }
}

/// Negative control (a): a key that is not in the zone's DNSKEY RRset never signs. DO=1
/// queries for in-process names go to PowerDNS, which signs them (still secure through
/// Unbound); the forwarding is counted, and `/status` says why the zone is not signed here.
#[test]
fn an_unpublished_key_never_signs_and_queries_are_forwarded() {
    let (pdns, listener) = start_pdns_with_listener();
    let fresh = pdns.generate_private_key();
    let s = Setup::start_on(
        (pdns, listener),
        Options {
            keys: Some(vec![fresh]),
            ..Options::default()
        },
    );
    let zsk = active_zsk(&s.pdns);
    // Let dnsteer learn the zone (first transfer and key facts) before judging.
    let t = Instant::now();
    loop {
        let (_, status) = s.dnsteer.get("/status");
        if status.contains(NOT_PUBLISHED_STATE) || t.elapsed() > SIGNING_WAIT {
            break;
        }
        thread::sleep(POLL);
    }

    let signed_before = s.signed_total();
    let forwarded_before = s.forwarded_total();
    let not_published_before = s.forwarded_for(NOT_PUBLISHED_STATE);
    for &(name, qtype, ttl) in NAMES {
        let pdns_before = s.pdns_do_queries();
        let (wire, m) = s.ask_do(name, qtype, &udp_do());
        assert!(
            s.pdns_do_queries() > pdns_before,
            "{name} {qtype}: DO=1 not forwarded to PowerDNS with an unpublished key"
        );
        if name == IFPORTUP_GROUPS {
            // PowerDNS 4.7.3 cannot evaluate it ("Unable to convert parameter from table"):
            // its SERVFAIL is what a forwarded query gets.
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{m:?}");
            continue;
        }
        // PowerDNS's signature, by its own ZSK.
        let sigs = rrsigs(&m);
        assert!(
            !sigs.is_empty() && sigs.iter().all(|r| r.key_tag == zsk.tag),
            "{name} {qtype}: {sigs:?} in {m:?}\n{}",
            s.context()
        );
        let r = sigs.iter().find(|r| r.type_covered == qtype).expect("sig");
        assert_eq!(r.original_ttl, ttl, "{name} {qtype}: {r:?}");
        validate_with_dnspython(&wire, &s.dnskey_wire(), ZONE)
            .unwrap_or_else(|e| panic!("dnspython rejects {name} {qtype}: {e}"));
        assert_secure(&s, name, qtype, ResponseCode::NoError);
    }
    assert_eq!(
        s.signed_total() - signed_before,
        0.0,
        "dnsteer signed with a key PowerDNS does not publish"
    );
    let forwarded = s.forwarded_total() - forwarded_before;
    assert!(
        forwarded >= NAMES.len() as f64,
        "{FORWARDED_METRIC} grew by {forwarded}\n{}",
        s.metrics()
    );
    // Each in-process name once directly, once through Unbound.
    let not_published = s.forwarded_for(NOT_PUBLISHED_STATE) - not_published_before;
    assert!(
        not_published >= NAMES.len() as f64,
        "{FORWARDED_METRIC}{{reason=\"{NOT_PUBLISHED_STATE}\"}} grew by {not_published}\n{}",
        s.metrics()
    );
    let (status, body) = s.dnsteer.get("/status");
    assert_eq!(status, 200);
    assert!(
        body.contains(ZONE) && body.contains(NOT_PUBLISHED_STATE),
        "/status should show {ZONE} as {NOT_PUBLISHED_STATE}:\n{body}"
    );
    // DO=0 is still answered in-process.
    let pdns_before = s.pdns_do_queries();
    let plain = support::dns_ask(
        s.front(),
        "all.signed.test.",
        RecordType::A,
        &QueryOpts::udp(),
    );
    assert_eq!(
        rdata_of(&plain, RecordType::A),
        ["192.0.2.6", "192.0.2.7"],
        "{plain:?}"
    );
    assert_eq!(s.pdns_do_queries(), pdns_before);
    assert_eq!(
        pdns_log_count(&s.pdns, "all.signed.test.", RecordType::A, false),
        0
    );
}

/// A pre-publish ZSK rollover done in PowerDNS while a client keeps resolving the in-process
/// names through Unbound (cache flushed every round, so each round reaches dnsteer and
/// re-fetches the DNSKEY RRset): not one SERVFAIL or AD=0 answer, and dnsteer's signatures
/// move to the new key once PowerDNS signs with it.
#[test]
fn zsk_rollover_under_load_has_no_bogus_answers() {
    let (pdns, listener) = start_pdns_with_listener();
    let old = active_zsk(&pdns);
    let new_id = pdns.add_zsk(ZONE, false, true);
    let new = pdns.key(ZONE, new_id);
    assert!(!new.active && new.published, "{new:?}");
    assert_ne!(old.tag, new.tag);
    let keys = vec![
        pdns.export_zone_key(ZONE, old.id),
        pdns.export_zone_key(ZONE, new_id),
    ];
    let s = Setup::start_on(
        (pdns, listener),
        Options {
            keys: Some(keys),
            ..Options::default()
        },
    );
    s.wait_signing_with(old.tag, SIGNING_WAIT);

    let stop = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    let answers = AtomicU64::new(0);
    let bogus: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let wait_rounds = |n: u64, what: &str| {
        let target = rounds.load(Ordering::SeqCst) + n;
        let t = Instant::now();
        while rounds.load(Ordering::SeqCst) < target {
            assert!(
                t.elapsed() < ROLL_WAIT,
                "the query loop stalled ({what})\n{}",
                s.context()
            );
            thread::sleep(POLL);
        }
    };
    let tags_seen: Mutex<Vec<u16>> = Mutex::new(Vec::new());

    thread::scope(|scope| {
        let load = scope.spawn(|| {
            let unbound = s.unbound();
            while !stop.load(Ordering::SeqCst) {
                unbound.flush_zone(ZONE);
                for &(name, qtype, _) in NAMES {
                    let m = unbound.ask(name, qtype, true);
                    answers.fetch_add(1, Ordering::SeqCst);
                    if m.metadata.response_code != ResponseCode::NoError
                        || !m.metadata.authentic_data
                        || rdata_of(&m, qtype).is_empty()
                    {
                        bogus.lock().unwrap().push(format!(
                            "{name} {qtype}: rcode {:?} AD={} {:?}",
                            m.metadata.response_code, m.metadata.authentic_data, m.answers
                        ));
                    }
                }
                // Which key dnsteer signs with now (direct, DO=1).
                let (_, m) = s.ask_do("static.signed.test.", RecordType::A, &udp_do());
                let mut seen = tags_seen.lock().unwrap();
                for r in rrsigs(&m) {
                    if seen.last() != Some(&r.key_tag) {
                        seen.push(r.key_tag);
                    }
                }
                drop(seen);
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        });

        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_rounds(2, "before the swap");

            // Swap signers in PowerDNS; dnsteer follows when it re-learns the zone's keys.
            s.pdns.activate(ZONE, new_id);
            s.pdns.deactivate(ZONE, old.id);
            let swapped = Instant::now();
            wait_rounds(1, "after the swap");
            s.wait_signing_with(new.tag, ROLL_WAIT);
            eprintln!(
                "dnsteer signs with the new ZSK {:?} after the swap",
                swapped.elapsed()
            );
            wait_rounds(2, "signing with the new key");

            // Withdraw the old key, then delete it.
            s.pdns.unpublish(ZONE, old.id);
            wait_rounds(2, "old key unpublished");
            s.pdns.remove(ZONE, old.id);
            wait_rounds(2, "old key removed");
        }));
        stop.store(true, Ordering::SeqCst);
        let loop_result = load.join();
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
        if let Err(e) = loop_result {
            std::panic::resume_unwind(e);
        }
    });

    let bogus = bogus.into_inner().unwrap();
    let answers = answers.load(Ordering::SeqCst);
    eprintln!(
        "rollover: {} rounds, {answers} answers through Unbound, {} bogus",
        rounds.load(Ordering::SeqCst),
        bogus.len()
    );
    assert!(answers >= 8 * NAMES.len() as u64, "only {answers} answers");
    assert!(
        bogus.is_empty(),
        "{} of {answers} answers bogus during the rollover:\n{}\n{}",
        bogus.len(),
        bogus.join("\n"),
        s.context()
    );
    let seen = tags_seen.into_inner().unwrap();
    assert_eq!(
        seen,
        [old.tag, new.tag],
        "dnsteer's signing key over the rollover (want old then new)"
    );
    let ids: Vec<u32> = s.pdns.keys(ZONE).iter().map(|k| k.id).collect();
    assert!(!ids.contains(&old.id), "{ids:?}");

    // After the rollover: every name signed in-process by the new key, valid against the
    // DNSKEY RRset that no longer holds the old one.
    let signed_before = s.signed_total();
    let forwarded_before = s.forwarded_total();
    for &(name, qtype, ttl) in NAMES {
        let (wire, m) = s.ask_do(name, qtype, &udp_do());
        assert_signed_answer(&s, name, qtype, ttl, new.tag, &wire, &m);
    }
    assert_eq!(s.forwarded_total() - forwarded_before, 0.0);
    assert!(s.signed_total() - signed_before >= NAMES.len() as f64);
}

/// A signed answer that does not fit the client's 512-byte EDNS buffer gets TC=1 (the same
/// answer unsigned fits); over TCP the whole signed RRset comes, from dnsteer.
#[test]
fn a_signed_answer_too_big_for_udp_is_truncated() {
    let s = Setup::start(Options {
        unbound: false,
        ..Options::default()
    });
    let zsk = active_zsk(&s.pdns);
    s.wait_signing_with(zsk.tag, SIGNING_WAIT);
    let name = "big.signed.test.";

    // Unsigned, it fits.
    let plain = support::dns_ask(
        s.front(),
        name,
        RecordType::TXT,
        &QueryOpts::udp().edns(512),
    );
    assert!(!plain.metadata.truncation, "{plain:?}");
    assert_eq!(rdata_of(&plain, RecordType::TXT).len(), BIG_TXT_STRINGS);

    let forwarded_before = s.forwarded_total();
    let signed_before = s.signed_total();
    let small = QueryOpts::udp()
        .dnssec_ok()
        .edns(512)
        .timeout(Duration::from_secs(3));
    let (wire, m) = s.ask_do(name, RecordType::TXT, &small);
    assert!(
        wire.len() <= 512,
        "{} bytes over a 512-byte buffer",
        wire.len()
    );
    assert!(
        m.metadata.truncation,
        "signed answer cannot fit 512 bytes: TC=1 expected: {m:?}"
    );
    // Never a partial RRset or an RRset without its signature.
    let txt = m
        .answers
        .iter()
        .filter(|r| r.record_type() == RecordType::TXT)
        .count();
    assert!(
        txt == 0 || (txt == BIG_TXT_STRINGS && !rrsigs(&m).is_empty()),
        "{m:?}"
    );

    let (wire, m) = s.ask_do(name, RecordType::TXT, &tcp_do());
    assert!(wire.len() > 512, "{} bytes", wire.len());
    assert_signed_answer(&s, name, RecordType::TXT, 60, zsk.tag, &wire, &m);
    assert_eq!(rdata_of(&m, RecordType::TXT).len(), BIG_TXT_STRINGS);
    let want: Vec<String> = (0..BIG_TXT_STRINGS)
        .map(|i| big_txt_chunk(i).trim_matches('\'').to_string())
        .collect();
    assert_eq!(rdata_of(&m, RecordType::TXT), want);

    assert_eq!(
        s.forwarded_total() - forwarded_before,
        0.0,
        "the big TXT went to PowerDNS"
    );
    assert!(
        s.signed_total() - signed_before >= 1.0,
        "{SIGNED_METRIC} did not count the TCP answer"
    );
}

/// The key file's private key never shows up anywhere dnsteer writes: its log (debug level,
/// every query logged), `/status`, `/metrics`.
#[test]
fn the_private_key_never_leaves_the_key_file() {
    let (pdns, listener) = start_pdns_with_listener();
    let zsk = active_zsk(&pdns);
    let text = pdns.export_zone_key(ZONE, zsk.id);
    let b64 = text
        .lines()
        .find_map(|l| l.strip_prefix("PrivateKey:"))
        .map(str::trim)
        .expect("PrivateKey line")
        .to_string();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .expect("PrivateKey is base64");
    assert_eq!(raw.len(), 32, "P-256 scalar");
    let s = Setup::start_on(
        (pdns, listener),
        Options {
            keys: Some(vec![text]),
            unbound: false,
            log_level: "debug",
            query_sample_rate: 1.0,
        },
    );
    s.wait_signing_with(zsk.tag, SIGNING_WAIT);
    for &(name, qtype, _) in NAMES {
        s.ask_do(name, qtype, &tcp_do());
    }
    // A reload too (SIGHUP re-reads the key file).
    s.dnsteer.signal_hup();
    thread::sleep(Duration::from_millis(500));
    s.wait_signing_with(zsk.tag, SIGNING_WAIT);

    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let needles = [
        b64.clone(),
        hex.clone(),
        hex.to_ascii_uppercase(),
        // A byte-array debug print of the scalar.
        format!("{:?}", &raw[..8]).trim_end_matches(']').to_string(),
    ];
    let (_, status) = s.dnsteer.get("/status");
    let metrics = s.metrics();
    let log = s.dnsteer.log();
    for (what, text) in [("log", &log), ("/status", &status), ("/metrics", &metrics)] {
        for n in &needles {
            assert!(
                !text.contains(n.as_str()),
                "dnsteer's {what} holds private key material ({n})"
            );
        }
    }
    assert!(!log.is_empty(), "dnsteer logged nothing at debug level?");
    // The key file's path may be shown; the zone's signing state is.
    assert!(status.contains(ZONE), "{status}");
}
