//! Differential tests of the hand-written wire codec (`dnsteer::dns`) against hickory-proto:
//! hickory encodes what we parse and decodes what we write. Plus no-panic checks on arbitrary
//! and mutated packets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dnsteer::dns::{
    self, Added, Ecs, EdnsReply, ParseError, ResponseBuilder, parse_query, parse_query_any_version,
    response_matches, restore_response, rewrite_for_upstream, write_error,
};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::IpNet;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct EdnsSpec {
    udp_size: u16,
    dnssec_ok: bool,
    /// Already masked to its prefix.
    ecs: Option<(IpAddr, u8)>,
}

#[derive(Debug, Clone)]
struct QuerySpec {
    id: u16,
    labels: Vec<Vec<u8>>,
    qtype: u16,
    rd: bool,
    edns: Option<EdnsSpec>,
}

impl QuerySpec {
    fn encode(&self) -> Vec<u8> {
        let mut m = Message::new(self.id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = self.rd;
        let name = Name::from_labels(self.labels.iter().map(Vec::as_slice)).unwrap();
        m.add_query(Query::query(name, RecordType::from(self.qtype)));
        if let Some(e) = &self.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(e.udp_size);
            edns.set_dnssec_ok(e.dnssec_ok);
            if let Some((addr, prefix)) = e.ecs {
                edns.options_mut()
                    .insert(EdnsOption::Subnet(ClientSubnet::new(addr, prefix, 0)));
            }
            m.set_edns(edns);
        }
        m.to_vec().unwrap()
    }

    fn lower_wire_name(&self) -> Vec<u8> {
        wire_name(self.labels.iter().map(|l| l.to_ascii_lowercase()))
    }
}

fn wire_name<L: AsRef<[u8]>>(labels: impl IntoIterator<Item = L>) -> Vec<u8> {
    let mut out = Vec::new();
    for l in labels {
        out.push(l.as_ref().len() as u8);
        out.extend_from_slice(l.as_ref());
    }
    out.push(0);
    out
}

fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    IpNet::new(addr, prefix).unwrap().trunc().addr()
}

fn subnet() -> impl Strategy<Value = (IpAddr, u8)> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| (IpAddr::V4(Ipv4Addr::from(a)), p)),
        (any::<u128>(), 0u8..=128).prop_map(|(a, p)| (IpAddr::V6(Ipv6Addr::from(a)), p)),
    ]
}

fn labels() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let label = prop_oneof![
        4 => "[a-zA-Z0-9_-]{1,20}",
        1 => "[a-zA-Z]{40,63}",
    ]
    .prop_map(String::into_bytes);
    prop::collection::vec(label, 0..8).prop_filter("name fits in 255 bytes", |ls| {
        ls.iter().map(|l| l.len() + 1).sum::<usize>() < 255
    })
}

fn edns_spec() -> impl Strategy<Value = EdnsSpec> {
    (512u16..=u16::MAX, any::<bool>(), prop::option::of(subnet())).prop_map(|(udp, d, ecs)| {
        EdnsSpec {
            udp_size: udp,
            dnssec_ok: d,
            ecs: ecs.map(|(a, p)| (masked(a, p), p)),
        }
    })
}

fn query_spec() -> impl Strategy<Value = QuerySpec> {
    (
        any::<u16>(),
        labels(),
        prop_oneof![
            prop::sample::select(vec![1u16, 28, 15, 16, 6, 33, 255, 65, 2]),
            any::<u16>()
        ],
        any::<bool>(),
        prop::option::of(edns_spec()),
    )
        .prop_map(|(id, labels, qtype, rd, edns)| QuerySpec {
            id,
            labels,
            qtype,
            rd,
            edns,
        })
}

fn subnet_of(edns: &Edns) -> Option<ClientSubnet> {
    match edns.option(EdnsCode::Subnet) {
        Some(EdnsOption::Subnet(s)) => Some(*s),
        _ => None,
    }
}

/// A valid SOA RDATA (uncompressed names).
fn soa_rdata() -> Vec<u8> {
    let mut r = wire_name(["ns", "example"]);
    r.extend(wire_name(["hostmaster", "example"]));
    for v in [2024u32, 3600, 600, 86400, 300] {
        r.extend_from_slice(&v.to_be_bytes());
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_agrees_with_hickory(spec in query_spec()) {
        let pkt = spec.encode();
        let q = parse_query(&pkt).unwrap();
        let oracle = Message::from_vec(&pkt).unwrap();

        prop_assert_eq!(q.id, spec.id);
        prop_assert_eq!(q.rd, spec.rd);
        let expected = spec.lower_wire_name();
        prop_assert_eq!(q.qname.as_bytes(), expected.as_slice());
        let oracle_name = wire_name(oracle.queries[0].name.iter().map(<[u8]>::to_ascii_lowercase));
        prop_assert_eq!(q.qname.as_bytes(), oracle_name.as_slice());
        prop_assert_eq!(q.qtype, u16::from(oracle.queries[0].query_type));
        prop_assert_eq!(q.qclass, u16::from(oracle.queries[0].query_class));
        prop_assert!(!q.signed);

        match (&q.edns, &oracle.edns) {
            (None, None) => prop_assert!(spec.edns.is_none()),
            (Some(ours), Some(theirs)) => {
                prop_assert_eq!(ours.udp_size.max(512), theirs.max_payload());
                prop_assert_eq!(ours.dnssec_ok, theirs.flags().dnssec_ok);
                prop_assert_eq!(ours.version, theirs.version());
                let theirs = subnet_of(theirs).map(|s| (s.addr(), s.source_prefix()));
                let ours = ours.ecs.map(|e| {
                    assert_eq!(e.scope_prefix, 0);
                    (e.addr, e.source_prefix)
                });
                prop_assert_eq!(ours, theirs);
                prop_assert_eq!(ours, spec.edns.as_ref().unwrap().ecs);
            }
            (ours, theirs) => prop_assert!(false, "EDNS disagrees: {:?} vs {:?}", ours, theirs),
        }
    }

    #[test]
    fn built_responses_decode(
        spec in query_spec(),
        answers in prop::collection::vec(any::<[u8; 4]>(), 0..80),
        with_soa in any::<bool>(),
        scope in 0u8..=128,
        max_size in 512usize..=4096,
        aa in any::<bool>(),
    ) {
        let pkt = spec.encode();
        let q = parse_query(&pkt).unwrap();
        let mut out = Vec::new();
        let mut b = ResponseBuilder::new(&mut out, &pkt, &q, dns::rcode::NOERROR, aa);
        if with_soa {
            b.authority_soa(&wire_name(["example"]), 300, &soa_rdata());
        }
        for a in &answers {
            b.answer(1, 60, a);
        }
        let reply = q.edns.map(|e| EdnsReply {
            udp_size: 1232,
            dnssec_ok: e.dnssec_ok,
            ecs: e.ecs.map(|ecs| (ecs, scope)),
            ext_rcode: 0,
            cookie: None,
        });
        let len = b.finish(reply, max_size);
        prop_assert_eq!(len, out.len());
        prop_assert!(len <= max_size);

        let m = Message::from_vec(&out).unwrap();
        prop_assert_eq!(m.metadata.id, spec.id);
        prop_assert_eq!(m.metadata.message_type, MessageType::Response);
        prop_assert_eq!(m.metadata.authoritative, aa);
        prop_assert_eq!(m.metadata.recursion_desired, spec.rd);
        prop_assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        prop_assert_eq!(&m.queries, &Message::from_vec(&pkt).unwrap().queries);
        let full = untruncated_len(&q, answers.len(), with_soa, reply.is_some());
        let truncated = full > max_size;
        prop_assert_eq!(m.metadata.truncation, truncated);
        if truncated {
            prop_assert!(m.answers.is_empty() && m.authorities.is_empty());
        } else {
            prop_assert_eq!(m.answers.len(), answers.len());
            for (rec, a) in m.answers.iter().zip(&answers) {
                prop_assert_eq!(&rec.name, &m.queries[0].name);
                prop_assert_eq!(rec.ttl, 60);
                prop_assert_eq!(rec.dns_class, DNSClass::IN);
                prop_assert_eq!(&rec.data, &RData::A(A::from(Ipv4Addr::from(*a))));
            }
            prop_assert_eq!(m.authorities.len(), usize::from(with_soa));
            if with_soa {
                prop_assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
            }
        }
        match (q.edns, &m.edns) {
            (None, None) => {}
            (Some(e), Some(reply)) => {
                prop_assert_eq!(reply.max_payload(), 1232);
                prop_assert_eq!(reply.flags().dnssec_ok, e.dnssec_ok);
                let echoed = subnet_of(reply);
                match e.ecs {
                    None => prop_assert!(echoed.is_none()),
                    Some(ecs) => {
                        let echoed = echoed.unwrap();
                        prop_assert_eq!(echoed.addr(), ecs.addr);
                        prop_assert_eq!(echoed.source_prefix(), ecs.source_prefix);
                        let max_bits = if ecs.addr.is_ipv4() { 32 } else { 128 };
                        prop_assert_eq!(echoed.scope_prefix(), scope.min(max_bits));
                    }
                }
            }
            (ours, theirs) => prop_assert!(false, "EDNS disagrees: {:?} vs {:?}", ours, theirs),
        }
    }

    #[test]
    fn rewrite_and_restore_round_trip(
        spec in query_spec(),
        client in subnet(),
        new_id in any::<u16>(),
        answers in prop::collection::vec(any::<[u8; 4]>(), 0..60),
        max_udp in prop::option::of(512usize..=1500),
        upper_case_reply in any::<bool>(),
    ) {
        let pkt = spec.encode();
        let q = parse_query(&pkt).unwrap();
        let (addr, prefix) = client;
        let mut fwd = Vec::new();
        let added = rewrite_for_upstream(&pkt, &q, new_id, Some((addr, prefix)), &mut fwd);

        let seen = Message::from_vec(&fwd).unwrap();
        prop_assert_eq!(seen.metadata.id, new_id);
        let client_ecs = q.edns.and_then(|e| e.ecs);
        match (q.edns, client_ecs) {
            (_, Some(ecs)) => {
                prop_assert_eq!(added, Added::Nothing);
                prop_assert_eq!(&fwd[2..], &pkt[2..]);
                let s = subnet_of(seen.edns.as_ref().unwrap()).unwrap();
                prop_assert_eq!((s.addr(), s.source_prefix()), (ecs.addr, ecs.source_prefix));
            }
            (edns, None) => {
                prop_assert_eq!(added, if edns.is_some() { Added::EcsOption } else { Added::OptRecord });
                let e = seen.edns.as_ref().unwrap();
                if edns.is_none() {
                    prop_assert_eq!(e.max_payload(), 512);
                    prop_assert!(!e.flags().dnssec_ok);
                }
                let s = subnet_of(e).unwrap();
                prop_assert_eq!(s.addr(), masked(addr, prefix));
                prop_assert_eq!(s.source_prefix(), prefix);
                prop_assert_eq!(s.scope_prefix(), 0);
                // Our own parser accepts what we forward (RFC 7871 checks included).
                let again = parse_query(&fwd).unwrap();
                prop_assert_eq!(again.edns.unwrap().ecs.unwrap().addr, masked(addr, prefix));
            }
        }

        // The upstream answers like PowerDNS would: same question, records, OPT echoing ECS
        // with a scope. hickory compresses the answer owners against the question.
        let mut resp = Message::new(new_id, MessageType::Response, OpCode::Query);
        let mut question = seen.queries[0].clone();
        if upper_case_reply {
            let upper: Vec<Vec<u8>> = question.name.iter().map(<[u8]>::to_ascii_uppercase).collect();
            question.name = Name::from_labels(upper).unwrap();
        }
        let owner = question.name.clone();
        resp.add_query(question);
        for a in &answers {
            resp.add_answer(Record::from_rdata(owner.clone(), 60, RData::A(A::from(Ipv4Addr::from(*a)))));
        }
        if let Some(e) = &seen.edns {
            let mut echo = e.clone();
            if let Some(s) = subnet_of(e) {
                echo.options_mut().remove(EdnsCode::Subnet);
                echo.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                    s.addr(), s.source_prefix(), s.source_prefix(),
                )));
            }
            resp.set_edns(echo);
        }
        let resp = resp.to_vec().unwrap();
        prop_assert!(response_matches(&resp, new_id, &q));
        prop_assert!(!response_matches(&resp, new_id.wrapping_add(1), &q));

        let mut out = Vec::new();
        restore_response(&resp, spec.id, added, max_udp, &mut out).unwrap();
        let m = Message::from_vec(&out).unwrap();
        prop_assert_eq!(m.metadata.id, spec.id);
        match added {
            Added::OptRecord => prop_assert!(m.edns.is_none()),
            Added::EcsOption => prop_assert!(subnet_of(m.edns.as_ref().unwrap()).is_none()),
            Added::Nothing => prop_assert!(subnet_of(m.edns.as_ref().unwrap()).is_some()),
        }
        prop_assert_eq!(m.edns.is_some(), spec.edns.is_some());
        // Without truncation the restored bytes are the response minus what we added.
        let removed = match added {
            Added::Nothing => 0,
            Added::EcsOption => 4 + 4 + (prefix.min(if addr.is_ipv4() { 32 } else { 128 }) as usize).div_ceil(8),
            Added::OptRecord => fwd.len() - pkt.len(),
        };
        let untruncated = resp.len() - removed;
        let truncated = max_udp.is_some_and(|n| untruncated > n);
        prop_assert_eq!(m.metadata.truncation, truncated);
        if truncated {
            prop_assert!(m.answers.is_empty());
            prop_assert!(out.len() <= max_udp.unwrap());
        } else {
            prop_assert_eq!(out.len(), untruncated);
            prop_assert_eq!(m.answers.len(), answers.len());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(pkt in prop::collection::vec(any::<u8>(), 0..600)) {
        exercise(&pkt);
    }

    #[test]
    fn mutated_queries_never_panic(
        spec in query_spec(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut pkt = spec.encode();
        for (at, byte) in flips {
            let i = at.index(pkt.len());
            pkt[i] = byte;
        }
        if do_cut {
            pkt.truncate(cut.index(pkt.len() + 1));
        }
        exercise(&pkt);
    }
}

/// Total size the builder produced before any truncation (what `finish` compared to max_size).
fn untruncated_len(q: &dns::Query, answers: usize, soa: bool, opt: bool) -> usize {
    let soa_len = if soa {
        wire_name(["example"]).len() + 10 + soa_rdata().len()
    } else {
        0
    };
    let opt_len = match q.edns {
        Some(e) if opt => {
            11 + e
                .ecs
                .map_or(0, |ecs| 8 + (ecs.source_prefix as usize).div_ceil(8))
        }
        _ => 0,
    };
    q.question_end + answers * 16 + soa_len + opt_len
}

/// Runs every entry point on `pkt` and checks the invariants that hold for any input.
fn exercise(pkt: &[u8]) {
    let mut out = Vec::new();
    let parsed = parse_query(pkt);
    let any_version = parse_query_any_version(pkt);
    match (&parsed, &any_version) {
        (Err(ParseError::BadVersion(v)), Ok(q)) => assert_eq!(q.edns.unwrap().version, *v),
        (Ok(a), Ok(b)) => assert_eq!(a.qname, b.qname),
        (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind()),
        (a, b) => panic!("parsers disagree: {a:?} / {b:?}"),
    }

    if write_error(pkt, dns::rcode::FORMERR, &mut out) {
        assert!(out.len() <= pkt.len(), "error response amplifies");
        let m = Message::from_vec(&out).expect("error response decodes");
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.queries.len() <= 1);
    } else {
        assert!(pkt.len() < 12 || pkt[2] & 0x80 != 0);
    }

    // A query parsed from some other packet: the functions must cope with a mismatch.
    let other = QuerySpec {
        id: 1,
        labels: vec![b"example".to_vec()],
        qtype: 1,
        rd: true,
        edns: None,
    };
    let other_q = parse_query(&other.encode()).unwrap();
    for q in parsed.iter().chain(std::iter::once(&other_q)) {
        let ecs = Some((IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77)), 24));
        let added = rewrite_for_upstream(pkt, q, 0x5555, ecs, &mut out);
        if let Ok(orig) = &parsed
            && std::ptr::eq(q, orig)
            && added != Added::Nothing
        {
            let again = parse_query(&out).expect("rewritten query parses");
            assert_eq!(again.qname, orig.qname);
            assert_eq!(again.edns.unwrap().ecs.unwrap().source_prefix, 24);
        }
        let _ = response_matches(pkt, 0x5555, q);
        let mut b = ResponseBuilder::new(&mut out, pkt, q, dns::rcode::NXDOMAIN, true);
        b.answer(1, 1, &[1, 2, 3, 4]);
        b.authority_soa(&[0], 1, &soa_rdata());
        let reply = EdnsReply {
            udp_size: 512,
            dnssec_ok: true,
            ecs: Some((
                Ecs {
                    addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    source_prefix: 200,
                    scope_prefix: 0,
                },
                255,
            )),
            ext_rcode: 1,
            cookie: None,
        };
        b.finish(Some(reply), 100);
    }

    for added in [Added::Nothing, Added::EcsOption, Added::OptRecord] {
        for max_udp in [None, Some(0), Some(12), Some(512)] {
            if restore_response(pkt, 9, added, max_udp, &mut out).is_ok() {
                assert_eq!(&out[..2], &[0, 9]);
                if let Some(n) = max_udp
                    && out.len() > n
                {
                    // Only header + question (+ OPT) may exceed a tiny limit.
                    assert_ne!(out[2] & 0x02, 0);
                }
            }
        }
    }
}

#[test]
fn badvers_answer_decodes_as_badvers() {
    let mut m = Message::new(77, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("Example.com.").unwrap(),
        RecordType::A,
    ));
    let mut edns = Edns::new();
    edns.set_version(1);
    m.set_edns(edns);
    let pkt = m.to_vec().unwrap();
    assert_eq!(parse_query(&pkt).err(), Some(ParseError::BadVersion(1)));
    let q = parse_query_any_version(&pkt).unwrap();
    let mut out = Vec::new();
    let b = ResponseBuilder::new(&mut out, &pkt, &q, 0, false);
    b.finish(
        Some(EdnsReply {
            udp_size: 1232,
            dnssec_ok: false,
            ecs: None,
            ext_rcode: (dns::rcode::BADVERS >> 4) as u8,
            cookie: None,
        }),
        512,
    );
    let m = Message::from_vec(&out).unwrap();
    // hickory decodes 16 as BADSIG (the two share the value); compare the number.
    assert_eq!(u16::from(m.metadata.response_code), dns::rcode::BADVERS);
    assert_eq!(m.queries[0].name.to_ascii(), "Example.com.");
}
