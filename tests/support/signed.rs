//! DNSSEC peers for the integration tests: a PowerDNS Authoritative serving **signed** zones
//! ([`SignedPdns`], bind backend + `bind-dnssec-db`, REST API on), a real validating
//! **Unbound** ([`Unbound`]), and an independent signature check with dnspython
//! ([`validate_with_dnspython`]). Like the rest of `support`, independent of the dnsteer
//! library; every process is stopped by PID on drop.
//!
//! Versions seen (Debian 12): pdns-server/pdns-backend-bind 4.7.3-2, unbound 1.17.1-2+deb12u4,
//! python3-dnspython 2.3.0, python3-cryptography 38.0.4.
//!
//! # What PowerDNS 4.7.3 was seen to do
//!
//! * Key changes made by `pdnsutil` (a separate process writing the sqlite `bind-dnssec-db`)
//!   or through the API are seen by the **running** pdns_server without a restart or reload,
//!   on the very next query (the rollover test asserts the first answer after an
//!   activate/deactivate swap), with `dnssec-key-cache-ttl=0` (set here; the default caches
//!   keys for 30 s) and the packet/query caches off (as [`super::Pdns`] sets them). The
//!   signature cache did not hide a key change: a newly active key signed the next answer.
//!   (Once, in a manual session, the first answer after publish+activate of a key was still
//!   signed by the old set only; never reproduced since, and the tests would catch it.) No
//!   `rectify` is needed for the bind backend; [`SignedPdns::purge`] exists only for setups
//!   that turn the packet cache back on.
//! * `POST /api/v1/servers/localhost/zones/ZONE/cryptokeys` with
//!   `{"keytype":"zsk","active":false,"published":true,"privatekey":"Private-key-format: v1.2\n
//!   Algorithm: 13 (ECDSAP256SHA256)\nPrivateKey: ..."}` answers `201 Created` with the key
//!   as JSON (`id`, `dnskey`, `flags`: 256, `active`: false, `published`: true, and the
//!   `privatekey` echoed back). The key then appears in the DNSKEY RRset, which is signed by
//!   the KSK only, and no other RRset is ever signed with it until it is activated.
//! * `PUT .../cryptokeys/ID` needs `"active"` in the body (`{"published":true}` alone is
//!   `422 Unprocessable Entity`); `{"active":false,"published":false}` is `204 No Content`.
//! * RRSIG validity: inception = start of the current week − 7 days, expiration = start of the
//!   week + 14 days, where PowerDNS's "week" starts on Thursday 00:00 UTC (weeks counted from
//!   the Unix epoch, a Thursday). Original TTL = the RRset's TTL as configured, LUA records
//!   included (a `lua 60 IN LUA A ...` answer carries an RRSIG with original TTL 60).
//! * DNSKEY RRset TTL = the zone's SOA minimum; negative answers carry SOA/NSEC with TTL
//!   min(SOA TTL, SOA minimum) while the SOA RRSIG keeps the SOA's original TTL.
//! * The bind backend's dnssec db needs neither `pdns-backend-sqlite3` nor the `sqlite3` CLI:
//!   `pdns-backend-bind` links libsqlite3 and `pdnsutil create-bind-db FILE` creates it.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use super::{
    ChildGuard, Pdns, QueryOpts, START_ATTEMPTS, build_query, canonical_zone, dns_query,
    find_binary, free_addr, spawn_guarded, tcp_exchange, udp_exchange,
};

/// The API key [`SignedPdns`] configures.
pub const API_KEY: &str = "dnsteer-test-api-key";
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Signed PowerDNS
// ---------------------------------------------------------------------------------------------

/// One DNSSEC key of a zone as `pdnsutil list-keys` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: u32,
    /// `"ksk"`, `"zsk"` or `"csk"`.
    pub kind: String,
    pub active: bool,
    pub published: bool,
    pub tag: u16,
    /// PowerDNS's name, e.g. `"ECDSAP256SHA256"`.
    pub algorithm: String,
}

/// A [`Pdns`] whose zones are signed online: bind backend with `bind-dnssec-db`, each zone
/// with an active KSK and an active ZSK (ECDSAP256SHA256), LUA records on, key cache off
/// (`dnssec-key-cache-ttl=0`), and the webserver + REST API on a free 127.0.0.1 port.
pub struct SignedPdns {
    pdns: Pdns,
    /// Holds dnssec.db (and an empty pdns.conf for `create-bind-db`); dropped after `pdns`.
    keydir: tempfile::TempDir,
    api: SocketAddr,
    zones: Vec<String>,
}

impl SignedPdns {
    /// Starts PowerDNS with `zones` (`(name, zone file text)`), secures each zone (KSK + ZSK,
    /// both ECDSAP256SHA256, active and published) and waits until every zone answers a signed
    /// DNSKEY RRset and the API answers. `extra_conf` lines are appended to pdns.conf.
    pub fn start(zones: &[(&str, &str)], extra_conf: &[&str]) -> SignedPdns {
        let keydir = tempfile::Builder::new()
            .prefix("dnsteer-dnssec-")
            .tempdir()
            .expect("create temp dir for the dnssec db");
        fs::write(keydir.path().join("pdns.conf"), "").expect("write empty pdns.conf");
        let db = keydir.path().join("dnssec.db");
        pdnsutil(
            keydir.path(),
            &["create-bind-db", &db.display().to_string()],
        )
        .unwrap_or_else(|e| panic!("{e}"));

        // PowerDNS fails to start when the webserver port was taken after free_addr(); Pdns
        // retries DNS ports only, so retry here with a new API port.
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let api = free_addr();
            let mut conf: Vec<String> = vec![
                format!("bind-dnssec-db={}", db.display()),
                "dnssec-key-cache-ttl=0".into(),
                "api=yes".into(),
                format!("api-key={API_KEY}"),
                "webserver=yes".into(),
                "webserver-address=127.0.0.1".into(),
                format!("webserver-port={}", api.port()),
                "webserver-allow-from=127.0.0.0/8".into(),
                "webserver-loglevel=none".into(),
                "default-ksk-algorithm=ecdsa256".into(),
                "default-zsk-algorithm=ecdsa256".into(),
            ];
            conf.extend(extra_conf.iter().map(ToString::to_string));
            let conf_refs: Vec<&str> = conf.iter().map(String::as_str).collect();
            let started = std::panic::catch_unwind(|| Pdns::start(zones, &conf_refs));
            match started {
                Ok(pdns) => {
                    let me = SignedPdns {
                        pdns,
                        keydir,
                        api,
                        zones: zones.iter().map(|(z, _)| canonical_zone(z)).collect(),
                    };
                    for zone in me.zones.clone() {
                        me.pdnsutil(&["add-zone-key", &zone, "ksk", "active", "ecdsa256"]);
                        me.pdnsutil(&["add-zone-key", &zone, "zsk", "active", "ecdsa256"]);
                    }
                    me.wait_ready();
                    return me;
                }
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(ToString::to_string))
                        .unwrap_or_default();
                    if !msg.contains("Address already in use") {
                        std::panic::resume_unwind(e);
                    }
                    last = msg;
                }
            }
        }
        panic!("signed PowerDNS could not bind free ports in {START_ATTEMPTS} attempts:\n{last}");
    }

    /// Every zone answers DNSKEY with an RRSIG, and the API answers with our key.
    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let opts = QueryOpts::tcp().dnssec_ok();
        for zone in &self.zones {
            loop {
                if let Ok(m) = dns_query(self.addr(), zone, RecordType::DNSKEY, &opts)
                    && m.answers
                        .iter()
                        .any(|r| r.record_type() == RecordType::RRSIG)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{zone} DNSKEY not signed within {READY_TIMEOUT:?}\n{}",
                    self.log()
                );
                thread::sleep(POLL);
            }
        }
        loop {
            if let Ok((200, _)) = self.api_request("GET", "/api/v1/servers/localhost", None) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PowerDNS API on {} not answering within {READY_TIMEOUT:?}\n{}",
                self.api,
                self.log()
            );
            thread::sleep(POLL);
        }
    }

    /// The DNS address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.pdns.addr()
    }
    /// The webserver/API address (`http://ADDR/api/v1/...`, header `X-API-Key`).
    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }
    pub fn api_key(&self) -> &str {
        API_KEY
    }
    /// The underlying server (run dir, pdns_control, restart...).
    pub fn pdns(&self) -> &Pdns {
        &self.pdns
    }
    pub fn pdns_mut(&mut self) -> &mut Pdns {
        &mut self.pdns
    }
    pub fn log(&self) -> String {
        self.pdns.log()
    }
    /// Path of the bind backend's dnssec db.
    pub fn dnssec_db(&self) -> PathBuf {
        self.keydir.path().join("dnssec.db")
    }

    /// Runs `pdnsutil --config-dir=<run dir> ARGS` (the server's own pdns.conf, so the same
    /// zones and dnssec db) and returns its stdout; panics with its output on failure.
    pub fn pdnsutil(&self, args: &[&str]) -> String {
        pdnsutil(self.pdns.dir(), args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The zone's DS records (`pdnsutil export-zone-ds`) as presentation lines without the
    /// trailing comment, e.g. `signed.test. IN DS 64262 13 2 2101...`.
    pub fn ds(&self, zone: &str) -> Vec<String> {
        self.pdnsutil(&["export-zone-ds", &canonical_zone(zone)])
            .lines()
            .map(|l| l.split(';').next().unwrap_or("").trim().to_string())
            .filter(|l| l.contains(" DS "))
            .collect()
    }

    /// The zone's keys (`pdnsutil list-keys ZONE`).
    pub fn keys(&self, zone: &str) -> Vec<KeyInfo> {
        let out = self.pdnsutil(&["list-keys", &canonical_zone(zone)]);
        // Zone Type [Act] [Pub] Size Algorithm ID Location Keytag (Act/Pub blank when false).
        out.lines()
            .filter_map(|line| {
                let t: Vec<&str> = line.split_whitespace().collect();
                if t.len() < 7 || !matches!(t[1], "KSK" | "ZSK" | "CSK") {
                    return None;
                }
                let n = t.len();
                Some(KeyInfo {
                    id: t[n - 3].parse().ok()?,
                    kind: t[1].to_ascii_lowercase(),
                    active: t[2..n - 4].contains(&"Act"),
                    published: t[2..n - 4].contains(&"Pub"),
                    tag: t[n - 1].parse().ok()?,
                    algorithm: t[n - 4].to_string(),
                })
            })
            .collect()
    }

    /// One key by id; panics when the zone has no such key.
    pub fn key(&self, zone: &str, id: u32) -> KeyInfo {
        self.keys(zone)
            .into_iter()
            .find(|k| k.id == id)
            .unwrap_or_else(|| panic!("{zone} has no key {id}"))
    }

    /// The private key as BIND `Private-key-format: v1.2` text (`pdnsutil export-zone-key`).
    pub fn export_zone_key(&self, zone: &str, id: u32) -> String {
        self.pdnsutil(&["export-zone-key", &canonical_zone(zone), &id.to_string()])
    }

    /// Adds a new ECDSAP256SHA256 ZSK and returns its id.
    pub fn add_zsk(&self, zone: &str, active: bool, published: bool) -> u32 {
        let out = self.pdnsutil(&[
            "add-zone-key",
            &canonical_zone(zone),
            "zsk",
            if active { "active" } else { "inactive" },
            if published {
                "published"
            } else {
                "unpublished"
            },
            "ecdsa256",
        ]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("add-zone-key printed {out:?}, not a key id"))
    }

    pub fn activate(&self, zone: &str, id: u32) {
        self.key_cmd("activate-zone-key", zone, id);
    }
    pub fn deactivate(&self, zone: &str, id: u32) {
        self.key_cmd("deactivate-zone-key", zone, id);
    }
    pub fn publish(&self, zone: &str, id: u32) {
        self.key_cmd("publish-zone-key", zone, id);
    }
    pub fn unpublish(&self, zone: &str, id: u32) {
        self.key_cmd("unpublish-zone-key", zone, id);
    }
    pub fn remove(&self, zone: &str, id: u32) {
        self.key_cmd("remove-zone-key", zone, id);
    }
    fn key_cmd(&self, cmd: &str, zone: &str, id: u32) {
        self.pdnsutil(&[cmd, &canonical_zone(zone), &id.to_string()]);
    }

    /// A fresh ECDSAP256SHA256 private key in BIND v1.2 text, not stored anywhere
    /// (`pdnsutil generate-zone-key zsk ecdsa256`, without its `Flags:` line).
    pub fn generate_private_key(&self) -> String {
        self.pdnsutil(&["generate-zone-key", "zsk", "ecdsa256"])
            .lines()
            .filter(|l| !l.starts_with("Flags:") && !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Imports a ZSK through the API (`POST .../cryptokeys`); returns the HTTP status and the
    /// parsed JSON answer (`Null` when the body is not JSON).
    pub fn api_import_zsk(
        &self,
        zone: &str,
        private_key: &str,
        active: bool,
        published: bool,
    ) -> (u16, serde_json::Value) {
        let body = serde_json::json!({
            "keytype": "zsk",
            "active": active,
            "published": published,
            "privatekey": private_key,
        });
        let path = format!(
            "/api/v1/servers/localhost/zones/{}/cryptokeys",
            canonical_zone(zone)
        );
        let (status, text) = self
            .api_request("POST", &path, Some(&body.to_string()))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    /// `GET .../zones/ZONE/cryptokeys` as JSON.
    pub fn api_cryptokeys(&self, zone: &str) -> serde_json::Value {
        let path = format!(
            "/api/v1/servers/localhost/zones/{}/cryptokeys",
            canonical_zone(zone)
        );
        match self.api_request("GET", &path, None) {
            Ok((200, text)) => serde_json::from_str(&text).expect("cryptokeys JSON"),
            other => panic!("GET {path}: {other:?}"),
        }
    }

    /// Purges PowerDNS's packet/query caches for the zone (`pdns_control purge ZONE$`). Not
    /// needed with the defaults here (caches off); for setups that turn them on.
    pub fn purge(&self, zone: &str) {
        self.pdns
            .control(&["purge", &format!("{}$", canonical_zone(zone))]);
    }

    /// One HTTP/1.1 request to the API with the API key; returns status and body.
    pub fn api_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> io::Result<(u16, String)> {
        http_request(self.api, method, path, &[("X-API-Key", API_KEY)], body)
    }

    /// Signers' key tags on the answer to `name`/`qtype` (DO=1, TCP), sorted.
    pub fn signing_tags(&self, name: &str, qtype: RecordType) -> Vec<u16> {
        let m = dns_query(self.addr(), name, qtype, &QueryOpts::tcp().dnssec_ok())
            .unwrap_or_else(|e| panic!("{name} {qtype} from {}: {e}", self.addr()));
        let mut tags: Vec<u16> = rrsigs(&m)
            .into_iter()
            .filter(|s| s.type_covered == qtype)
            .map(|s| s.key_tag)
            .collect();
        tags.sort_unstable();
        tags
    }
}

/// An RRSIG's fixed fields (hickory-proto is built without its dnssec feature here, so RRSIG
/// rdata arrives as `RData::Unknown` and is decoded by hand, RFC 4034 §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rrsig {
    /// Owner name of the RRSIG record.
    pub owner: String,
    /// TTL of the RRSIG record itself.
    pub ttl: u32,
    pub type_covered: RecordType,
    pub algorithm: u8,
    pub labels: u8,
    pub original_ttl: u32,
    pub expiration: u32,
    pub inception: u32,
    pub key_tag: u16,
}

impl Rrsig {
    fn parse(owner: String, ttl: u32, rdata: &[u8]) -> Option<Rrsig> {
        let u16at = |i: usize| Some(u16::from_be_bytes(rdata.get(i..i + 2)?.try_into().ok()?));
        let u32at = |i: usize| Some(u32::from_be_bytes(rdata.get(i..i + 4)?.try_into().ok()?));
        Some(Rrsig {
            owner,
            ttl,
            type_covered: RecordType::from(u16at(0)?),
            algorithm: *rdata.get(2)?,
            labels: *rdata.get(3)?,
            original_ttl: u32at(4)?,
            expiration: u32at(8)?,
            inception: u32at(12)?,
            key_tag: u16at(16)?,
        })
    }
}

/// The RRSIGs in a message's answer and authority sections.
pub fn rrsigs(m: &Message) -> Vec<Rrsig> {
    m.answers
        .iter()
        .chain(m.authorities.iter())
        .filter(|r| r.record_type() == RecordType::RRSIG)
        .filter_map(|r| match &r.data {
            RData::Unknown { rdata, .. } => {
                Rrsig::parse(r.name.to_string(), r.ttl, &rdata.anything)
            }
            _ => None,
        })
        .collect()
}

fn pdnsutil(config_dir: &Path, args: &[&str]) -> Result<String, String> {
    let bin =
        find_binary("pdnsutil").ok_or("pdnsutil not installed: run scripts/install-deps.sh")?;
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--config-dir={}", config_dir.display()))
        .args(args);
    let (status, out, err) = run_bounded(cmd, TOOL_TIMEOUT)?;
    if status {
        Ok(out)
    } else {
        Err(format!("pdnsutil {args:?} failed:\n{out}{err}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Unbound
// ---------------------------------------------------------------------------------------------

/// A private validating Unbound (`module-config: "validator iterator"`) on 127.0.0.1:<free
/// port>, with the given DS trust anchors and stub zones pointing at loopback servers, and
/// remote control on another free loopback port (no certificates) for cache flushes. Every
/// other IPv4 destination is in `do-not-query-address` and IPv6 is off, so it never sends a
/// query off this machine (e.g. to the root servers). Stopped by PID on drop.
///
/// Unbound sets AD only when the query has DO (or AD) set: [`Unbound::ask`] sends DO=1 when
/// asked to. Stub zones under `test.` (and other RFC 6761 names) need `local-zone: ... nodefault`,
/// which [`Unbound::start`] adds itself.
pub struct Unbound {
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    control: SocketAddr,
    probe: String,
}

/// Special-use TLDs that Unbound answers itself by default (RFC 6761 and friends); a stub zone
/// under one needs `local-zone: "TLD." nodefault`.
const UNBOUND_DEFAULT_LOCAL_TLDS: &[&str] = &["test", "invalid", "localhost", "onion", "local"];

impl Unbound {
    /// `trust_anchors`: DS lines (`zone. IN DS tag alg digtype hex`); `stubs`: `(zone, server)`.
    /// Waits until it answers a query for the first stub zone (any rcode).
    pub fn start(trust_anchors: &[String], stubs: &[(&str, SocketAddr)]) -> Unbound {
        Unbound::start_with(trust_anchors, stubs, &[])
    }

    /// [`start`](Self::start) with extra `server:` lines (e.g. `val-override-date: "…"`, which
    /// makes Unbound judge signature validity at that date: a negative control for windows).
    pub fn start_with(
        trust_anchors: &[String],
        stubs: &[(&str, SocketAddr)],
        extra_server_lines: &[&str],
    ) -> Unbound {
        let bin =
            find_binary("unbound").expect("unbound not installed: run scripts/install-deps.sh");
        let probe = stubs
            .first()
            .map(|(z, _)| canonical_zone(z))
            .unwrap_or_else(|| "invalid.".into());
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("dnsteer-unbound-")
                .tempdir()
                .expect("create temp dir for unbound");
            let addr = free_addr();
            let control = loop {
                let c = free_addr();
                if c.port() != addr.port() {
                    break c;
                }
            };
            let conf = unbound_conf(
                dir.path(),
                addr,
                control,
                trust_anchors,
                stubs,
                extra_server_lines,
            );
            fs::write(dir.path().join("unbound.conf"), &conf).expect("write unbound.conf");
            let mut cmd = Command::new(&bin);
            cmd.arg("-d")
                .arg("-c")
                .arg(dir.path().join("unbound.conf"))
                .stdin(Stdio::null())
                .stdout(fs::File::create(dir.path().join("stdout.log")).expect("stdout.log"))
                .stderr(fs::File::create(dir.path().join("stderr.log")).expect("stderr.log"));
            let child = spawn_guarded(cmd).expect("spawn unbound");
            let mut me = Unbound {
                child: Some(child),
                dir,
                addr,
                control,
                probe: probe.clone(),
            };
            match me.wait_ready() {
                Ok(()) => return me,
                // Another process took a port after free_addr(): try new ones.
                Err(log) if log.contains("already in use") => last = log,
                Err(log) => panic!("unbound did not start on {addr}:\n{log}\n{conf}"),
            }
        }
        panic!("unbound could not bind free ports in {START_ATTEMPTS} attempts:\n{last}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut opts = QueryOpts::udp().timeout(Duration::from_millis(300));
        opts.recursion_desired = true;
        loop {
            if let Some(status) = self.child.as_mut().and_then(ChildGuard::exited) {
                self.child = None;
                return Err(format!("unbound exited with {status}\n{}", self.log()));
            }
            if dns_query(self.addr, &self.probe, RecordType::SOA, &opts).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.child.take();
                return Err(format!(
                    "unbound on {} not answering within {READY_TIMEOUT:?}\n{}",
                    self.addr,
                    self.log()
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// The DNS address (UDP and TCP). Ask with RD=1 (`QueryOpts { recursion_desired: true }`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// unbound.log (verbosity 2, val-log-level 2: says why an answer was bogus) plus stderr.
    pub fn log(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("unbound.log"), read("stderr.log"))
    }

    /// Runs `unbound-control -c <conf> ARGS`; panics on failure.
    pub fn control(&self, args: &[&str]) -> String {
        let bin = find_binary("unbound-control").expect("unbound-control not installed");
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(self.dir.path().join("unbound.conf"))
            .args(args);
        match run_bounded(cmd, TOOL_TIMEOUT) {
            Ok((true, out, _)) => out,
            Ok((false, out, err)) => panic!("unbound-control {args:?} failed: {out}{err}"),
            Err(e) => panic!("unbound-control {args:?}: {e}"),
        }
    }

    /// Forgets everything cached at or below `zone` (RRsets, messages, validated keys) and any
    /// bogus data.
    pub fn flush_zone(&self, zone: &str) {
        self.control(&["flush_zone", &canonical_zone(zone)]);
        self.control(&["flush_bogus"]);
        self.control(&["flush_negative"]);
    }

    /// Sends one query with RD=1 (and DO when `dnssec_ok`) and returns the answer.
    pub fn ask(&self, name: &str, qtype: RecordType, dnssec_ok: bool) -> Message {
        let mut opts = QueryOpts::udp().edns(1232).timeout(Duration::from_secs(5));
        opts.recursion_desired = true;
        opts.dnssec_ok = dnssec_ok;
        dns_query(self.addr, name, qtype, &opts).unwrap_or_else(|e| {
            panic!(
                "{name} {qtype} via unbound {}: {e}\n{}",
                self.addr,
                self.log()
            )
        })
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        self.child.take();
    }
}

fn unbound_conf(
    dir: &Path,
    addr: SocketAddr,
    control: SocketAddr,
    trust_anchors: &[String],
    stubs: &[(&str, SocketAddr)],
    extra_server_lines: &[&str],
) -> String {
    let d = dir.display();
    let mut c = format!(
        "server:
  interface: 127.0.0.1@{port}
  port: {port}
  do-ip4: yes
  do-ip6: no
  do-udp: yes
  do-tcp: yes
  access-control: 127.0.0.0/8 allow
  username: \"\"
  chroot: \"\"
  directory: \"{d}\"
  pidfile: \"{d}/unbound.pid\"
  use-syslog: no
  logfile: \"{d}/unbound.log\"
  log-time-ascii: yes
  log-servfail: yes
  verbosity: 2
  val-log-level: 2
  do-daemonize: no
  module-config: \"validator iterator\"
  do-not-query-localhost: no
  num-threads: 1
  prefetch: no
  minimal-responses: yes
  trust-anchor-signaling: no
  root-key-sentinel: no
  # Never query anything off this machine: every IPv4 prefix but 127/8.
  do-not-query-address: 0.0.0.0/2
  do-not-query-address: 64.0.0.0/3
  do-not-query-address: 96.0.0.0/4
  do-not-query-address: 112.0.0.0/5
  do-not-query-address: 120.0.0.0/6
  do-not-query-address: 124.0.0.0/7
  do-not-query-address: 126.0.0.0/8
  do-not-query-address: 128.0.0.0/1
",
        port = addr.port()
    );
    let mut tlds: Vec<String> = Vec::new();
    for (zone, _) in stubs {
        let zone = canonical_zone(zone);
        let tld = zone
            .trim_end_matches('.')
            .rsplit('.')
            .next()
            .unwrap_or("")
            .to_string();
        if UNBOUND_DEFAULT_LOCAL_TLDS.contains(&tld.as_str()) && !tlds.contains(&tld) {
            c.push_str(&format!("  local-zone: \"{tld}.\" nodefault\n"));
            tlds.push(tld);
        }
    }
    for ta in trust_anchors {
        c.push_str(&format!("  trust-anchor: \"{ta}\"\n"));
    }
    for line in extra_server_lines {
        c.push_str(&format!("  {line}\n"));
    }
    for (zone, server) in stubs {
        c.push_str(&format!(
            "stub-zone:\n  name: \"{}\"\n  stub-addr: {}@{}\n",
            canonical_zone(zone),
            server.ip(),
            server.port()
        ));
    }
    c.push_str(&format!(
        "remote-control:\n  control-enable: yes\n  control-interface: 127.0.0.1\n  control-port: {}\n  control-use-cert: no\n",
        control.port()
    ));
    c
}

// ---------------------------------------------------------------------------------------------
// Independent check (dnspython)
// ---------------------------------------------------------------------------------------------

/// Debian's interpreter: `python3` on PATH may be a pyenv shim without dnspython.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";
const CHECK_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/dnssec_check.py");

/// One signature dnspython verified (a JSON line of `dnssec_check.py`).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct CheckedSig {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub ttl: u32,
    pub original_ttl: u32,
    pub inception: u64,
    pub expiration: u64,
    pub key_tag: u16,
    pub algorithm: u8,
    pub signer: String,
}

/// Checks with dnspython (`dns.dnssec.validate`) that every RRset in the answer and authority
/// sections of `answer_wire` is signed by a key of `zone`'s DNSKEY RRset (`dnskey_wire`, a
/// whole DNSKEY response, whose own signature is checked too). Bounded by 20 s.
pub fn validate_with_dnspython(
    answer_wire: &[u8],
    dnskey_wire: &[u8],
    zone: &str,
) -> Result<Vec<CheckedSig>, String> {
    let dir = tempfile::Builder::new()
        .prefix("dnsteer-dnspython-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let a = dir.path().join("answer.wire");
    let k = dir.path().join("dnskey.wire");
    fs::write(&a, answer_wire).map_err(|e| e.to_string())?;
    fs::write(&k, dnskey_wire).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.arg(CHECK_SCRIPT)
        .arg(canonical_zone(zone))
        .arg(&a)
        .arg(&k);
    let (ok, out, err) = run_bounded(cmd, TOOL_TIMEOUT)?;
    if !ok {
        return Err(format!("dnspython: {err}{out}"));
    }
    out.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("bad line {l:?}: {e}")))
        .collect()
}

/// The raw reply bytes to one query (for [`validate_with_dnspython`]).
pub fn dns_query_wire(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    opts: &QueryOpts,
) -> io::Result<Vec<u8>> {
    let (_, wire) = build_query(name, qtype, opts);
    if opts.tcp {
        tcp_exchange(server, &wire, opts.timeout)
    } else {
        udp_exchange(server, &wire, opts.timeout)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs a command to completion with stdout/stderr captured, killing it (by PID, through its
/// guard) after `timeout`. Returns (success, stdout, stderr).
fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<(bool, String, String), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).map_err(|e| e.to_string())?)
        .stderr(fs::File::create(&err_path).map_err(|e| e.to_string())?);
    let what = format!("{cmd:?}");
    let mut child = spawn_guarded(cmd).map_err(|e| format!("spawn {what}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.exited() {
            break s;
        }
        if Instant::now() > deadline {
            drop(child);
            return Err(format!("{what} did not finish within {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(10));
    };
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    Ok((status.success(), read(&out_path), read(&err_path)))
}

/// A minimal HTTP/1.1 request with extra headers and an optional JSON body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> io::Result<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("HTTP {what}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("status line"))?;
    let chunked = head
        .to_ascii_lowercase()
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).map_err(|_| bad("chunk size"))?;
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    Ok((status, out))
}

/// The response code, for terse asserts.
pub fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}
