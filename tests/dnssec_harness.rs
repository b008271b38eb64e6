//! The DNSSEC harness itself (`support::signed`), and the template for the online-signing tests:
//! a PowerDNS 4.7 signing `signed.test.` (KSK + ZSK, ECDSAP256SHA256), a real validating
//! Unbound whose only trust anchor is that zone's DS and whose stub points at PowerDNS, and an
//! independent dnspython check of PowerDNS's own signatures. A wrong anchor must give SERVFAIL
//! (so these tests can fail), and a ZSK rollover through the harness keeps every name secure.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::QueryOpts;
use support::signed::{
    CheckedSig, SignedPdns, Unbound, dns_query_wire, rrsigs, validate_with_dnspython,
};

const ZONE: &str = "signed.test.";
const ZONE_TEXT: &str = r#"$ORIGIN signed.test.
@       300 IN SOA ns1 hostmaster 1 3600 600 86400 60
@       300 IN NS  ns1
ns1     300 IN A   192.0.2.53
www     300 IN A   192.0.2.80
txt     300 IN TXT "hello signed world"
alias   300 IN CNAME www
lua      60 IN LUA A "pickwhashed({{1,'192.0.2.1'},{1,'192.0.2.2'}})"
"#;

/// (name, type, expected rcode, answer expected non-empty)
const CASES: &[(&str, RecordType, ResponseCode, bool)] = &[
    (
        "www.signed.test.",
        RecordType::A,
        ResponseCode::NoError,
        true,
    ),
    (
        "txt.signed.test.",
        RecordType::TXT,
        ResponseCode::NoError,
        true,
    ),
    (
        "alias.signed.test.",
        RecordType::A,
        ResponseCode::NoError,
        true,
    ),
    (
        "lua.signed.test.",
        RecordType::A,
        ResponseCode::NoError,
        true,
    ),
    // NXDOMAIN and NODATA: secure denial (NSEC) must validate too.
    (
        "nope.signed.test.",
        RecordType::A,
        ResponseCode::NXDomain,
        false,
    ),
    (
        "www.signed.test.",
        RecordType::TXT,
        ResponseCode::NoError,
        false,
    ),
];

fn start() -> SignedPdns {
    SignedPdns::start(&[(ZONE, ZONE_TEXT)], &[])
}

fn unbound_for(pdns: &SignedPdns, anchors: &[String]) -> Unbound {
    Unbound::start(anchors, &[(ZONE, pdns.addr())])
}

/// Every case answers through Unbound with the expected rcode and AD=1.
fn assert_all_secure(unbound: &Unbound, pdns: &SignedPdns, when: &str) {
    for &(name, qtype, rcode, has_answer) in CASES {
        assert_secure(unbound, pdns, name, qtype, rcode, has_answer, when);
    }
}

fn assert_secure(
    unbound: &Unbound,
    pdns: &SignedPdns,
    name: &str,
    qtype: RecordType,
    rcode: ResponseCode,
    has_answer: bool,
    when: &str,
) -> Message {
    let m = unbound.ask(name, qtype, true);
    let ctx = || {
        format!(
            "{when}: {name} {qtype} via unbound: {m:?}\n--- unbound log ---\n{}\n--- keys ---\n{:?}",
            unbound.log(),
            pdns.keys(ZONE)
        )
    };
    assert_eq!(m.metadata.response_code, rcode, "{}", ctx());
    assert!(m.metadata.authentic_data, "AD=0: {}", ctx());
    assert_eq!(!m.answers.is_empty(), has_answer, "{}", ctx());
    m
}

/// dnspython's verdict on PowerDNS's own answer (DO=1, TCP) for one case.
fn dnspython_check(pdns: &SignedPdns, name: &str, qtype: RecordType) -> Vec<CheckedSig> {
    let opts = QueryOpts::tcp().dnssec_ok().timeout(Duration::from_secs(5));
    let answer = dns_query_wire(pdns.addr(), name, qtype, &opts).expect("answer from PowerDNS");
    let dnskey = dns_query_wire(pdns.addr(), ZONE, RecordType::DNSKEY, &opts).expect("DNSKEY");
    validate_with_dnspython(&answer, &dnskey, ZONE)
        .unwrap_or_else(|e| panic!("dnspython rejects {name} {qtype}: {e}"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[test]
fn signed_zone_validates_through_unbound_and_dnspython() {
    let pdns = start();
    let ds = pdns.ds(ZONE);
    assert!(
        ds.iter()
            .any(|l| l.starts_with("signed.test. IN DS ") && l.contains(" 13 2 ")),
        "expected a SHA-256 DS for algorithm 13: {ds:?}"
    );
    let keys = pdns.keys(ZONE);
    assert_eq!(keys.len(), 2, "{keys:?}");
    for kind in ["ksk", "zsk"] {
        let k = keys
            .iter()
            .find(|k| k.kind == kind)
            .expect("key of each kind");
        assert!(k.active && k.published, "{k:?}");
        assert_eq!(k.algorithm, "ECDSAP256SHA256");
        let private = pdns.export_zone_key(ZONE, k.id);
        assert!(
            private.starts_with("Private-key-format: v1.2\nAlgorithm: 13 (ECDSAP256SHA256)\n")
                && private.contains("PrivateKey: "),
            "{private}"
        );
    }
    let api_keys = pdns.api_cryptokeys(ZONE);
    assert_eq!(api_keys.as_array().map(Vec::len), Some(2), "{api_keys}");

    let unbound = unbound_for(&pdns, &ds);
    assert_all_secure(&unbound, &pdns, "initial");

    // The independent check on PowerDNS's direct answers.
    let now = unix_now();
    const WEEK: u64 = 7 * 86400;
    // PowerDNS: weeks start on Thursday 00:00 UTC (epoch-aligned); inception one week before
    // that, expiration two weeks after. (Checked against "now" and "now - 60" in case the
    // week turned over during the test.)
    let window = |t: u64| {
        let start = t - t % WEEK;
        (start - WEEK, start + 2 * WEEK)
    };
    let accepted = [window(now), window(now - 60)];
    for &(name, qtype, _, has_answer) in CASES {
        let sigs = dnspython_check(&pdns, name, qtype);
        let types: Vec<&str> = sigs.iter().map(|s| s.rtype.as_str()).collect();
        if has_answer {
            assert!(
                types.contains(&qtype.to_string().as_str()),
                "{name}: {sigs:?}"
            );
        } else {
            assert!(
                types.contains(&"SOA") && types.contains(&"NSEC"),
                "{name} {qtype}: {sigs:?}"
            );
        }
        for s in &sigs {
            assert!(
                accepted.contains(&(s.inception, s.expiration)),
                "{name} {qtype}: RRSIG window {}..{} not the expected {accepted:?}",
                s.inception,
                s.expiration
            );
            assert!(s.ttl <= s.original_ttl, "{s:?}");
            assert_eq!((s.algorithm, s.signer.as_str()), (13, ZONE));
        }
        if name.starts_with("alias.") {
            assert!(types.contains(&"CNAME"), "{sigs:?}");
        }
        if name.starts_with("lua.") {
            // LUA answers are signed with the LUA record's TTL as original TTL.
            let a = sigs.iter().find(|s| s.rtype == "A").expect("A sig");
            assert_eq!((a.ttl, a.original_ttl), (60, 60), "{a:?}");
        }
    }
    let (inc, exp) = window(now);
    eprintln!(
        "PowerDNS RRSIG window: inception {inc} (now - {} d), expiration {exp} (now + {} d)",
        (now - inc) as f64 / 86400.0,
        (exp - now) as f64 / 86400.0
    );

    // The dnspython check is not vacuous: one changed rdata byte is rejected.
    let opts = QueryOpts::tcp().dnssec_ok();
    let mut www =
        dns_query_wire(pdns.addr(), "www.signed.test.", RecordType::A, &opts).expect("www A");
    let dnskey = dns_query_wire(pdns.addr(), ZONE, RecordType::DNSKEY, &opts).expect("DNSKEY");
    validate_with_dnspython(&www, &dnskey, ZONE).expect("untouched answer validates");
    let at = www
        .windows(4)
        .position(|w| w == [192, 0, 2, 80])
        .expect("A rdata in the wire");
    www[at + 3] = 81;
    let err = validate_with_dnspython(&www, &dnskey, ZONE)
        .expect_err("a changed A record must not validate");
    assert!(err.contains("www.signed.test."), "{err}");

    // The same check through the harness's own RRSIG decoding (hickory lacks DNSSEC types).
    let lua = dns_query_wire(
        pdns.addr(),
        "lua.signed.test.",
        RecordType::A,
        &QueryOpts::tcp().dnssec_ok(),
    )
    .expect("lua A");
    let lua = Message::from_vec(&lua).expect("decode");
    let sigs = rrsigs(&lua);
    assert_eq!(sigs.len(), 1, "{sigs:?}");
    assert_eq!(sigs[0].type_covered, RecordType::A);
    assert_eq!(sigs[0].original_ttl, 60);
}

#[test]
fn wrong_trust_anchor_gives_servfail() {
    let pdns = start();
    let ds = pdns.ds(ZONE);
    // Change the last digest nibble of every DS.
    let wrong: Vec<String> = ds
        .iter()
        .map(|l| {
            let mut s = l.clone();
            let last = s.pop().expect("non-empty DS line");
            s.push(if last == '0' { '1' } else { '0' });
            s
        })
        .collect();
    assert_ne!(wrong, ds);
    let unbound = unbound_for(&pdns, &wrong);
    for &(name, qtype, _, _) in CASES {
        let m = unbound.ask(name, qtype, true);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::ServFail,
            "{name} {qtype} with a wrong anchor: {m:?}\n{}",
            unbound.log()
        );
        assert!(!m.metadata.authentic_data);
    }
    let log = unbound.log();
    assert!(
        log.contains("validation failure") || log.contains("bogus"),
        "unbound should say why:\n{log}"
    );
    // The right anchor on the same PowerDNS is fine: the failure is the anchor's.
    let good = unbound_for(&pdns, &ds);
    assert_all_secure(&good, &pdns, "right anchor");

    // Every process is gone once its handle is dropped.
    let pids: Vec<u32> = [pdns.pdns().pid(), unbound.pid(), good.pid()]
        .into_iter()
        .map(|p| p.expect("running"))
        .collect();
    drop((pdns, unbound, good));
    for pid in pids {
        assert!(
            !support::pid_alive(pid),
            "process {pid} survived its handle"
        );
    }
}

/// Pre-publish ZSK rollover, step by step through the harness, with Unbound validating at
/// each step; plus the API import of an inactive-but-published key.
#[test]
fn zsk_rollover_keeps_names_secure() {
    let pdns = start();
    let unbound = unbound_for(&pdns, &pdns.ds(ZONE));
    let ksk = pdns
        .keys(ZONE)
        .into_iter()
        .find(|k| k.kind == "ksk")
        .expect("KSK");
    let old = pdns
        .keys(ZONE)
        .into_iter()
        .find(|k| k.kind == "zsk")
        .expect("ZSK");
    assert_eq!(
        pdns.signing_tags("www.signed.test.", RecordType::A),
        [old.tag]
    );
    assert_all_secure(&unbound, &pdns, "before rollover");

    // 1. Pre-publish: the new ZSK is in the DNSKEY RRset but signs nothing.
    let new_id = pdns.add_zsk(ZONE, false, true);
    let new = pdns.key(ZONE, new_id);
    assert!(!new.active && new.published, "{new:?}");
    assert_eq!(
        pdns.signing_tags("www.signed.test.", RecordType::A),
        [old.tag]
    );
    assert_eq!(pdns.signing_tags(ZONE, RecordType::DNSKEY), [ksk.tag]);
    unbound.flush_zone(ZONE);
    assert_all_secure(&unbound, &pdns, "new ZSK published");
    // Unbound now holds the DNSKEY RRset with both ZSKs.

    // 2. Swap signers. Seen by the running server at once (dnssec-key-cache-ttl=0).
    pdns.activate(ZONE, new_id);
    pdns.deactivate(ZONE, old.id);
    let t = Instant::now();
    assert_eq!(
        pdns.signing_tags("www.signed.test.", RecordType::A),
        [new.tag],
        "first answer after the swap must be signed by the new ZSK only"
    );
    eprintln!("signer swap visible after {:?}", t.elapsed());
    // A name Unbound has not cached yet validates with its cached DNSKEY RRset: the real
    // rollover property (no flush).
    assert_secure(
        &unbound,
        &pdns,
        "ns1.signed.test.",
        RecordType::A,
        ResponseCode::NoError,
        true,
        "after swap, cached DNSKEY",
    );
    unbound.flush_zone(ZONE);
    assert_all_secure(&unbound, &pdns, "new ZSK signing, old still published");

    // 3. Withdraw the old ZSK, then delete it.
    pdns.unpublish(ZONE, old.id);
    let old_now = pdns.key(ZONE, old.id);
    assert!(!old_now.active && !old_now.published, "{old_now:?}");
    unbound.flush_zone(ZONE);
    assert_all_secure(&unbound, &pdns, "old ZSK unpublished");
    pdns.remove(ZONE, old.id);
    let ids: Vec<u32> = pdns.keys(ZONE).iter().map(|k| k.id).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&ksk.id) && ids.contains(&new_id));
    unbound.flush_zone(ZONE);
    assert_all_secure(&unbound, &pdns, "old ZSK removed");
    for &(name, qtype, _, _) in CASES {
        let sigs = dnspython_check(&pdns, name, qtype);
        assert!(sigs.iter().all(|s| s.key_tag == new.tag), "{sigs:?}");
    }

    // 4. A key imported through the API as inactive but published: listed in DNSKEY (signed
    //    by the KSK only), never used to sign, and the zone stays secure.
    let private = pdns.generate_private_key();
    let (status, json) = pdns.api_import_zsk(ZONE, &private, false, true);
    eprintln!("API import answered {status}: {json}");
    assert_eq!(status, 201, "{json}");
    assert_eq!(json["active"], false, "{json}");
    assert_eq!(json["published"], true, "{json}");
    assert_eq!(json["keytype"], "zsk", "{json}");
    let imported = pdns.key(ZONE, json["id"].as_u64().expect("id") as u32);
    assert!(!imported.active && imported.published, "{imported:?}");
    let dnskey = Message::from_vec(
        &dns_query_wire(
            pdns.addr(),
            ZONE,
            RecordType::DNSKEY,
            &QueryOpts::tcp().dnssec_ok(),
        )
        .expect("DNSKEY"),
    )
    .expect("decode");
    let n_keys = dnskey
        .answers
        .iter()
        .filter(|r| r.record_type() == RecordType::DNSKEY)
        .count();
    assert_eq!(n_keys, 3, "KSK + active ZSK + imported ZSK: {dnskey:?}");
    assert_eq!(pdns.signing_tags(ZONE, RecordType::DNSKEY), [ksk.tag]);
    for &(name, qtype, _, _) in CASES {
        let sigs = dnspython_check(&pdns, name, qtype);
        assert!(
            sigs.iter().all(|s| s.key_tag == new.tag),
            "imported key must not sign: {sigs:?}"
        );
    }
    unbound.flush_zone(ZONE);
    assert_all_secure(&unbound, &pdns, "imported inactive ZSK published");
}
