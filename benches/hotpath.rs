//! Micro-benchmarks of the per-packet wire work: parsing, building an answer, and the two
//! forwarding rewrites. Small samples: the VM is shared and noisy, use these for ratios only.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dnsteer::dns::{
    Added, EdnsReply, ResponseBuilder, parse_query, restore_response, rewrite_for_upstream,
};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, Record, RecordType};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0));

fn query(edns: bool, ecs: bool) -> Vec<u8> {
    let mut m = Message::new(0x2a2a, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii("www.Example.com.").unwrap(),
        RecordType::A,
    ));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        if ecs {
            e.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::new(CLIENT, 24, 0)));
        }
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// What PowerDNS sends back for a forwarded query carrying our ECS: two A records and the OPT
/// echoing ECS with scope 24.
fn upstream_response(id: u16) -> Vec<u8> {
    let name = Name::from_ascii("www.example.com.").unwrap();
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.add_query(Query::query(name.clone(), RecordType::A));
    for last in [1, 2] {
        let a = RData::A(A::from(Ipv4Addr::new(192, 0, 2, last)));
        m.add_answer(Record::from_rdata(name.clone(), 60, a));
    }
    let mut e = Edns::new();
    e.set_max_payload(1232);
    e.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(CLIENT, 24, 24)));
    m.set_edns(e);
    m.to_vec().unwrap()
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_query");
    for (label, pkt) in [
        ("plain", query(false, false)),
        ("edns", query(true, false)),
        ("edns_ecs", query(true, true)),
    ] {
        g.bench_function(label, |b| b.iter(|| parse_query(black_box(&pkt)).is_ok()));
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let pkt = query(true, true);
    let q = parse_query(&pkt).unwrap();
    let ecs = q.edns.and_then(|e| e.ecs).unwrap();
    let reply = EdnsReply {
        udp_size: 1232,
        dnssec_ok: false,
        ecs: Some((ecs, 24)),
        ext_rcode: 0,
        cookie: None,
    };
    let mut out = Vec::with_capacity(1500);
    c.bench_function("response_builder/a_opt_ecs", |b| {
        b.iter(|| {
            let mut rb = ResponseBuilder::new(&mut out, black_box(&pkt), &q, 0, true);
            rb.answer(1, 60, &[192, 0, 2, 1]);
            rb.finish(Some(reply), 1232)
        });
    });
}

fn forward(c: &mut Criterion) {
    let pkt = query(true, false);
    let q = parse_query(&pkt).unwrap();
    let mut out = Vec::with_capacity(1500);
    c.bench_function("rewrite_for_upstream/add_ecs", |b| {
        b.iter(|| rewrite_for_upstream(black_box(&pkt), &q, 0x1111, Some((CLIENT, 24)), &mut out));
    });

    let resp = upstream_response(0x1111);
    // Sanity: the sample really carries the ECS that restore strips.
    let m = Message::from_vec(&resp).unwrap();
    assert!(m.edns.unwrap().option(EdnsCode::Subnet).is_some());
    c.bench_function("restore_response/strip_ecs", |b| {
        b.iter(|| {
            restore_response(
                black_box(&resp),
                0x2a2a,
                Added::EcsOption,
                Some(1232),
                &mut out,
            )
        });
    });
}

criterion_group! {
    name = hotpath;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = parse, build, forward
}
criterion_main!(hotpath);
