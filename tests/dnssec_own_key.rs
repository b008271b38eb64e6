//! dnsteer's own ZSK (`[dnssec.own_key]`), end to end: a real PowerDNS 4.7 signs `own.test.`
//! (KSK + ZSK) with its REST API on; the real dnsteer binary generates its own key, has
//! PowerDNS publish it through the API (inactive), and signs its in-process answers with it
//! once the DNSKEY RRset holding it has been served for its TTL; a validating Unbound whose
//! only trust anchor is the zone's DS resolves through dnsteer, and dnspython checks each
//! signature independently.
//!
//! Every assertion is on the RRSIG key tags (who signed), on AD through Unbound, and on who
//! answered (PowerDNS's DO query counter, dnsteer's metrics). The negative controls: a removed
//! first-seen state makes the key wait again; a refused or unreachable API leaves the key
//! unpublished and every DO=1 query with PowerDNS.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::signed::{SignedPdns, Unbound, dns_query_wire, rrsigs, validate_with_dnspython};
use support::{Dnsteer, QueryOpts, free_addr};

const ZONE: &str = "own.test.";
/// SOA minimum = PowerDNS's DNSKEY TTL: how long a newly published key waits.
/// Long enough that the waiting state is still on when a loaded CI machine checks it.
const DNSKEY_TTL: u64 = 8;
/// In-process names (answered and signed by dnsteer), with their TTL.
const NAMES: &[(&str, u32)] = &[("www.own.test.", 5), ("api.own.test.", 5)];
/// A name only PowerDNS answers.
const OTHER: &str = "other.own.test.";
const FORWARDED_METRIC: &str = "dnsteer_dnssec_forwarded_total";
const ERRORS_METRIC: &str = "dnsteer_dnssec_own_key_errors_total";
const WAITING: &str = "waiting_for_dnskey_ttl";
/// The first-seen state file dnsteer keeps in key_dir (no state_dir configured here).
const STATE_FILE: &str = "dnsteer-dnskey-first-seen.json";
const POLL: Duration = Duration::from_millis(50);
const WAIT: Duration = Duration::from_secs(30);

fn zone_text() -> String {
    format!(
        "$ORIGIN own.test.
@     5 IN SOA ns1 hostmaster 1 3600 600 86400 {DNSKEY_TTL}
@   300 IN NS  ns1
ns1 300 IN A   192.0.2.53
www   5 IN A   192.0.2.10
api   5 IN A   192.0.2.20
other 300 IN A 192.0.2.99
"
    )
}

/// key_dir and the API key file, kept across dnsteer restarts.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new(api_key: &str) -> Keys {
        let dir = tempfile::Builder::new()
            .prefix("dnsteer-own-key-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("keys")).expect("key_dir");
        let k = Keys { dir };
        k.set_api_key(api_key);
        k
    }
    fn key_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }
    fn api_key_file(&self) -> PathBuf {
        self.dir.path().join("pdns-api-key")
    }
    fn set_api_key(&self, key: &str) {
        std::fs::write(self.api_key_file(), format!("{key}\n")).expect("api key file");
    }
    /// Tags of the key files in key_dir (`own.test-<tag>.private`).
    fn tags(&self) -> Vec<u16> {
        let mut tags: Vec<u16> = std::fs::read_dir(self.key_dir())
            .expect("read key_dir")
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("own.test-")?
                    .strip_suffix(".private")?
                    .parse()
                    .ok()
            })
            .collect();
        tags.sort_unstable();
        tags
    }
}

fn dnsteer_config(
    dns: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    pdns: &SignedPdns,
    api_url: &str,
    keys: &Keys,
) -> String {
    let mut c = format!(
        "[server]\nlisten = [\"{dns}\"]\nworkers = 2\n\
         [metrics]\nlisten = \"{metrics}\"\n\
         [logging]\nlevel = \"debug\"\n\
         [ratelimit]\nenabled = false\n\
         [upstream]\nservers = [\"{}\"]\ntimeout = \"500ms\"\nhealth_check_interval = \"200ms\"\n\
         [dnssec.own_key]\nzones = [\"{ZONE}\"]\nkey_dir = \"{}\"\napi_url = \"{api_url}\"\n\
         api_key_file = \"{}\"\ncheck_interval = \"1s\"\n",
        pdns.addr(),
        keys.key_dir().display(),
        keys.api_key_file().display()
    );
    for (i, (name, ttl)) in NAMES.iter().enumerate() {
        c.push_str(&format!(
            "[[records]]\nname = \"{name}\"\ntype = \"A\"\nttl = {ttl}\ncontent = [\"192.0.2.{}\"]\n",
            10 * (i + 1)
        ));
    }
    c
}

fn start_pdns() -> SignedPdns {
    SignedPdns::start(&[(ZONE, &zone_text())], &[])
}

fn start_dnsteer(pdns: &SignedPdns, api_url: &str, keys: &Keys) -> Dnsteer {
    Dnsteer::start_on_free_ports(|dns, metrics| dnsteer_config(dns, metrics, pdns, api_url, keys))
}

fn api_url(pdns: &SignedPdns) -> String {
    format!("http://{}", pdns.api_addr())
}

fn udp_do() -> QueryOpts {
    QueryOpts::udp()
        .dnssec_ok()
        .edns(1232)
        .timeout(Duration::from_secs(3))
}

fn ask_do(d: &Dnsteer, name: &str) -> (Vec<u8>, Message) {
    let wire = dns_query_wire(d.dns_addr(), name, RecordType::A, &udp_do())
        .unwrap_or_else(|e| panic!("{name} from dnsteer: {e}\n{}", d.log()));
    (wire.clone(), Message::from_vec(&wire).expect("decode"))
}

fn tags_of(m: &Message) -> Vec<u16> {
    rrsigs(m)
        .iter()
        .filter(|r| r.type_covered == RecordType::A)
        .map(|r| r.key_tag)
        .collect()
}

fn pdns_zsk(pdns: &SignedPdns) -> u16 {
    let keys = pdns.keys(ZONE);
    let zsks: Vec<u16> = keys
        .iter()
        .filter(|k| k.kind == "zsk" && k.active)
        .map(|k| k.tag)
        .collect();
    assert_eq!(zsks.len(), 1, "one active ZSK of PowerDNS's: {keys:?}");
    zsks[0]
}

fn pdns_do_queries(pdns: &SignedPdns) -> u64 {
    let out = pdns.pdns().control(&["show", "udp-do-queries"]);
    out.trim().parse().expect("udp-do-queries")
}

fn dnskey_wire(pdns: &SignedPdns) -> Vec<u8> {
    dns_query_wire(
        pdns.addr(),
        ZONE,
        RecordType::DNSKEY,
        &QueryOpts::tcp().dnssec_ok(),
    )
    .expect("DNSKEY")
}

fn zone_status(d: &Dnsteer) -> serde_json::Value {
    let (_, body) = d.get("/status");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/status JSON");
    v["dnssec"]
        .as_array()
        .and_then(|a| a.iter().find(|z| z["zone"] == ZONE).cloned())
        .unwrap_or_default()
}

/// Polls `f` until it gives Some, or panics with `what` and dnsteer's log.
fn wait_for<T>(d: &Dnsteer, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t.elapsed() < limit,
            "{what} not within {limit:?}\nstatus: {}\n{}",
            zone_status(d),
            d.log()
        );
        thread::sleep(POLL);
    }
}

/// The one own key dnsteer made, once PowerDNS lists it published and inactive.
fn wait_published(d: &Dnsteer, pdns: &SignedPdns, keys: &Keys) -> u16 {
    wait_for(d, "own key generated and published", WAIT, || {
        let tags = keys.tags();
        let &[tag] = tags.as_slice() else {
            return None;
        };
        pdns.keys(ZONE)
            .iter()
            .any(|k| k.tag == tag && k.kind == "zsk" && !k.active && k.published)
            .then_some(tag)
    })
}

/// A direct DO=1 answer for `www` signed by `tag` that PowerDNS did not see.
fn wait_signing(d: &Dnsteer, pdns: &SignedPdns, tag: u16, limit: Duration) {
    wait_for(d, &format!("signing with own key {tag}"), limit, || {
        let before = pdns_do_queries(pdns);
        let (_, m) = ask_do(d, NAMES[0].0);
        (tags_of(&m) == [tag] && pdns_do_queries(pdns) == before).then_some(())
    });
}

fn assert_secure(unbound: &Unbound, name: &str, d: &Dnsteer) {
    let m = unbound.ask(name, RecordType::A, true);
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "{name}: {m:?}"
    );
    assert!(
        m.metadata.authentic_data,
        "{name} via unbound: AD=0 {m:?}\n{}\n{}",
        unbound.log(),
        d.log()
    );
}

// ---------------------------------------------------------------------------------------------

/// A zone with no own key: dnsteer generates one (0600), PowerDNS publishes it (inactive) and
/// never signs with it; DO=1 answers go to PowerDNS until the DNSKEY TTL has passed, then
/// dnsteer signs with its own key; everything is secure through Unbound throughout.
#[test]
fn own_key_is_generated_published_and_signs_after_the_dnskey_ttl() {
    use std::os::unix::fs::PermissionsExt as _;
    let pdns = start_pdns();
    let zsk = pdns_zsk(&pdns);
    let keys = Keys::new(pdns.api_key());
    let d = start_dnsteer(&pdns, &api_url(&pdns), &keys);
    let unbound = Unbound::start(&pdns.ds(ZONE), &[(ZONE, d.dns_addr())]);

    let tag = wait_published(&d, &pdns, &keys);
    assert_ne!(tag, zsk);
    let file = keys.key_dir().join(format!("own.test-{tag}.private"));
    let mode = std::fs::metadata(&file)
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{}", file.display());

    // Before the DNSKEY TTL: forwarded (waiting), PowerDNS's signature, still secure.
    wait_for(&d, "waiting state", WAIT, || {
        (zone_status(&d)["state"] == WAITING).then_some(())
    });
    let waiting_before = d.metric(FORWARDED_METRIC, &[("reason", WAITING)]);
    let pdns_before = pdns_do_queries(&pdns);
    let (_, m) = ask_do(&d, NAMES[0].0);
    assert_eq!(tags_of(&m), [zsk], "PowerDNS's answer while waiting: {m:?}");
    assert!(pdns_do_queries(&pdns) > pdns_before, "not forwarded");
    assert!(
        d.metric(FORWARDED_METRIC, &[("reason", WAITING)]) > waiting_before,
        "{FORWARDED_METRIC}{{reason=\"{WAITING}\"}} did not grow"
    );
    assert_secure(&unbound, NAMES[0].0, &d);

    // After it: signed in-process by the own key, valid, secure through Unbound.
    let t = Instant::now();
    wait_signing(&d, &pdns, tag, WAIT);
    eprintln!(
        "own key {tag} signs {:?} after the waiting state",
        t.elapsed()
    );
    for &(name, _) in NAMES {
        let (wire, m) = ask_do(&d, name);
        assert_eq!(tags_of(&m), [tag], "{name}: {m:?}");
        let checked = validate_with_dnspython(&wire, &dnskey_wire(&pdns), ZONE)
            .unwrap_or_else(|e| panic!("dnspython rejects {name}: {e}"));
        assert!(checked.iter().all(|c| c.key_tag == tag), "{checked:?}");
        assert_secure(&unbound, name, &d);
    }
    assert_eq!(zone_status(&d)["state"], "signing");
    assert_eq!(zone_status(&d)["key_tag"], tag);

    // PowerDNS never signs with it: its own answers carry its ZSK only.
    for name in [OTHER, NAMES[0].0] {
        assert_eq!(pdns.signing_tags(name, RecordType::A), [zsk], "{name}");
    }
    let (_, m) = ask_do(&d, OTHER);
    assert_eq!(tags_of(&m), [zsk], "{OTHER} through dnsteer: {m:?}");
    assert_secure(&unbound, OTHER, &d);
    let k = pdns.keys(ZONE);
    assert!(
        k.iter().any(|k| k.tag == tag && !k.active && k.published),
        "{k:?}"
    );
}

/// A restarted dnsteer with the same key_dir signs at once (the key's first-seen time was
/// persisted); with the state file removed it waits one DNSKEY TTL again.
#[test]
fn a_restart_signs_at_once_and_without_the_state_file_waits_again() {
    let pdns = start_pdns();
    let zsk = pdns_zsk(&pdns);
    let keys = Keys::new(pdns.api_key());
    let d = start_dnsteer(&pdns, &api_url(&pdns), &keys);
    let tag = wait_published(&d, &pdns, &keys);
    wait_signing(&d, &pdns, tag, WAIT);
    assert!(keys.key_dir().join(STATE_FILE).exists());
    drop(d);

    let d = start_dnsteer(&pdns, &api_url(&pdns), &keys);
    let (_, m) = ask_do(&d, NAMES[0].0);
    assert_eq!(
        tags_of(&m),
        [tag],
        "first answer after a restart: {m:?}\n{}",
        d.log()
    );
    assert_eq!(d.metric(FORWARDED_METRIC, &[("reason", WAITING)]), 0.0);
    assert_eq!(keys.tags(), [tag], "the restart made no new key");
    drop(d);

    // Negative control: without the persisted time the key waits again.
    std::fs::remove_file(keys.key_dir().join(STATE_FILE)).expect("remove state");
    let d = start_dnsteer(&pdns, &api_url(&pdns), &keys);
    let (_, m) = ask_do(&d, NAMES[0].0);
    assert_eq!(tags_of(&m), [zsk], "without state: PowerDNS's answer {m:?}");
    assert_eq!(zone_status(&d)["state"], WAITING, "{}", zone_status(&d));
    assert!(d.metric(FORWARDED_METRIC, &[("reason", WAITING)]) >= 1.0);
    wait_signing(&d, &pdns, tag, WAIT);
}

/// A refused API key and an unreachable API: a clear error in the log and `/status`, the
/// metric counted, DO=1 queries forwarded (still secure), no crash, and the API key nowhere in
/// the log or `/status`. Fixing the key file recovers without a restart.
#[test]
fn api_errors_are_reported_and_do_queries_stay_with_powerdns() {
    let pdns = start_pdns();
    let zsk = pdns_zsk(&pdns);
    let wrong = "wrong-api-key-s3cr3t-0123456789";

    // Wrong API key.
    let keys = Keys::new(wrong);
    let d = start_dnsteer(&pdns, &api_url(&pdns), &keys);
    let unbound = Unbound::start(&pdns.ds(ZONE), &[(ZONE, d.dns_addr())]);
    wait_for(&d, "unauthorized error in /status", WAIT, || {
        let s = zone_status(&d);
        (s["own_key"]["last_error_kind"] == "unauthorized"
            && s["own_key"]["failures"].as_u64()? >= 2)
            .then_some(())
    });
    let status = zone_status(&d);
    let err = status["own_key"]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(err.contains("refused the API key"), "{status}");
    assert!(d.log().contains("refused the API key"), "{}", d.log());
    let labels = [("zone", ZONE), ("kind", "unauthorized")];
    assert!(d.metric(ERRORS_METRIC, &labels) >= 2.0);
    assert_eq!(status["state"], "key_not_published", "{status}");
    let (_, m) = ask_do(&d, NAMES[0].0);
    assert_eq!(tags_of(&m), [zsk], "{m:?}");
    assert_secure(&unbound, NAMES[0].0, &d);
    assert_eq!(pdns.keys(ZONE).len(), 2, "nothing was added to PowerDNS");
    let (_, full_status) = d.get("/status");
    for (what, text) in [("log", d.log()), ("/status", full_status)] {
        assert!(!text.contains(wrong), "the API key is in dnsteer's {what}");
    }
    assert_eq!(d.get("/healthz").0, 200);

    // Fixed key file: published on a following round, no restart.
    keys.set_api_key(pdns.api_key());
    wait_published(&d, &pdns, &keys);
    wait_for(&d, "error cleared", WAIT, || {
        zone_status(&d)["own_key"]["last_error"]
            .is_null()
            .then_some(())
    });
    drop(unbound);
    drop(d);

    // API down: nothing listens there.
    let down = format!("http://{}", free_addr());
    let keys = Keys::new(pdns.api_key());
    let d = start_dnsteer(&pdns, &down, &keys);
    wait_for(&d, "connect error in /status", WAIT, || {
        (zone_status(&d)["own_key"]["last_error_kind"] == "connect").then_some(())
    });
    assert!(
        d.log().contains("cannot connect to the PowerDNS API"),
        "{}",
        d.log()
    );
    assert!(d.metric(ERRORS_METRIC, &[("zone", ZONE), ("kind", "connect")]) >= 1.0);
    let (_, m) = ask_do(&d, NAMES[0].0);
    assert_eq!(tags_of(&m), [zsk], "{m:?}");
    let (_, full_status) = d.get("/status");
    for (what, text) in [("log", d.log()), ("/status", full_status)] {
        assert!(
            !text.contains(pdns.api_key()),
            "the API key is in dnsteer's {what}"
        );
    }
    assert_eq!(d.get("/healthz").0, 200);
}

/// Rollover of dnsteer's own key while a client keeps resolving through Unbound (cache flushed
/// every round): a new key dropped into key_dir (`dnsteer generate-key`) is published, signs
/// once its DNSKEY TTL has passed, and the old key is deleted from PowerDNS and key_dir after
/// the retire wait. Not one SERVFAIL or AD=0 answer.
#[test]
fn own_key_rollover_under_load_has_no_bogus_answers() {
    let pdns = start_pdns();
    let keys = Keys::new(pdns.api_key());
    let d = start_dnsteer(&pdns, &api_url(&pdns), &keys);
    let unbound = Unbound::start(&pdns.ds(ZONE), &[(ZONE, d.dns_addr())]);
    let old = wait_published(&d, &pdns, &keys);
    wait_signing(&d, &pdns, old, WAIT);

    let stop = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    let answers = AtomicU64::new(0);
    let bogus: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let tags_seen: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let wait_rounds = |n: u64| {
        let target = rounds.load(Ordering::SeqCst) + n;
        wait_for(&d, "query rounds", WAIT, || {
            (rounds.load(Ordering::SeqCst) >= target).then_some(())
        });
    };
    let mut new = 0;
    thread::scope(|scope| {
        let load = scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                unbound.flush_zone(ZONE);
                for &(name, _) in NAMES.iter().chain([(OTHER, 0)].iter()) {
                    let m = unbound.ask(name, RecordType::A, true);
                    answers.fetch_add(1, Ordering::SeqCst);
                    if m.metadata.response_code != ResponseCode::NoError
                        || !m.metadata.authentic_data
                        || m.answers.is_empty()
                    {
                        bogus.lock().unwrap().push(format!(
                            "{name}: rcode {:?} AD={} {:?}",
                            m.metadata.response_code, m.metadata.authentic_data, m.answers
                        ));
                    }
                }
                let (_, m) = ask_do(&d, NAMES[1].0);
                let mut seen = tags_seen.lock().unwrap();
                for t in tags_of(&m) {
                    if seen.last() != Some(&t) {
                        seen.push(t);
                    }
                }
                drop(seen);
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_rounds(2);
            new = generate_key(&keys.key_dir());
            let t = Instant::now();
            wait_for(&d, "new key signing", WAIT, || {
                (tags_seen.lock().unwrap().last() == Some(&new)).then_some(())
            });
            eprintln!(
                "new own key {new} signs {:?} after it was made",
                t.elapsed()
            );
            wait_for(
                &d,
                "old key deleted from PowerDNS and key_dir",
                WAIT,
                || {
                    let gone = !pdns.keys(ZONE).iter().any(|k| k.tag == old);
                    (gone && keys.tags() == [new]).then_some(())
                },
            );
            eprintln!(
                "old own key {old} deleted {:?} after the new one was made",
                t.elapsed()
            );
            wait_rounds(2);
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
        "own-key rollover: {} rounds, {answers} answers through Unbound, {} bogus",
        rounds.load(Ordering::SeqCst),
        bogus.len()
    );
    assert!(answers >= 8 * 3, "only {answers} answers");
    assert!(
        bogus.is_empty(),
        "{} of {answers} bogus:\n{}\n{}",
        bogus.len(),
        bogus.join("\n"),
        d.log()
    );
    assert_eq!(*tags_seen.lock().unwrap(), [old, new]);
    let k = pdns.keys(ZONE);
    assert!(
        k.iter().any(|k| k.tag == new && !k.active && k.published),
        "{k:?}"
    );
    assert!(!k.iter().any(|k| k.tag == old), "{k:?}");
}

/// `dnsteer generate-key --zone ZONE --out DIR`; returns the new key's tag.
fn generate_key(dir: &Path) -> u16 {
    let out = Command::new(env!("CARGO_BIN_EXE_dnsteer"))
        .args(["generate-key", "--zone", ZONE, "--out"])
        .arg(dir)
        .output()
        .expect("run dnsteer generate-key");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("PrivateKey"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("key tag "))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no key tag in {text}"))
}

/// `dnsteer check-config` reads what `[dnssec.own_key]` will need: the API key file and every
/// key already in key_dir (a broken one is named), so a bad Secret fails before a rollout.
#[test]
fn check_config_reads_the_own_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().join("keys");
    std::fs::create_dir(&key_dir).unwrap();
    let api_key = dir.path().join("api-key");
    let cfg = dir.path().join("dnsteer.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream]\nservers = [\"127.0.0.1:5353\"]\n\
             [dnssec.own_key]\nzones = [\"{ZONE}\"]\nkey_dir = \"{}\"\n\
             api_url = \"http://127.0.0.1:8081\"\napi_key_file = \"{}\"\n",
            key_dir.display(),
            api_key.display()
        ),
    )
    .unwrap();
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

    let (ok, text) = check();
    assert!(!ok && text.contains("api_key_file"), "{text}");

    std::fs::write(&api_key, "secret\n").unwrap();
    let (ok, text) = check();
    assert!(ok && text.contains("no own key yet"), "{text}");

    let tag = generate_key(&key_dir);
    let (ok, text) = check();
    assert!(ok && text.contains(&format!("own keys {tag}")), "{text}");

    let broken = key_dir.join(format!("{}-1.private", ZONE.trim_end_matches('.')));
    std::fs::write(
        &broken,
        "Private-key-format: v1.2\nAlgorithm: 13 (ECDSAP256SHA256)\n",
    )
    .unwrap();
    let (ok, text) = check();
    assert!(!ok && text.contains("-1.private"), "{text}");
    std::fs::remove_file(&broken).unwrap();

    std::fs::remove_file(key_dir.join(format!("{}-{tag}.private", ZONE.trim_end_matches('.'))))
        .unwrap();
    std::fs::remove_dir(&key_dir).unwrap();
    let (ok, text) = check();
    assert!(!ok && text.contains("not a directory"), "{text}");
}
