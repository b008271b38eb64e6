//! The per-packet cost of the `dnsteer_dns_*` counting step: the zone match of the query name
//! (longest apex among the configured zones) plus one request and one response count, as
//! `pipeline::handle` does for an answer made in-process.
//! Run with `cargo bench --bench dns_metrics`; the VM is noisy, compare ratios, not ns.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dnsteer::dns::name_from_text;
use dnsteer::telemetry::dns_metrics::{AnswerPath, DnsCounters, Site, ZoneSlot, ZoneTable};
use dnsteer::telemetry::metrics::Transport;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("dns_metrics");
    g.sample_size(30);
    let zones: Vec<String> = (0..8).map(|i| format!("zone{i}.example.")).collect();
    let table = ZoneTable::build(None, zones.iter().map(String::as_str));
    let counters = DnsCounters::default();
    for (label, name) in [
        ("in_zone", "www.zone5.example."),
        ("other", "www.example.com."),
    ] {
        let qname = name_from_text(name).unwrap();
        g.bench_function(format!("count/{label}"), |b| {
            b.iter(|| {
                let at = Site {
                    proto: Transport::Udp,
                    v6: false,
                    zone: table.slot_of(black_box(&qname)),
                };
                counters.request(at, Some(black_box(1)), black_box(true), black_box(45));
                counters.response(at, black_box(0), AnswerPath::InProcess, black_box(61));
            });
        });
    }
    // The counting alone, for a query whose zone is already known (a forwarded answer).
    let at = Site {
        proto: Transport::Udp,
        v6: false,
        zone: ZoneSlot::OTHER,
    };
    g.bench_function("count/response_only", |b| {
        b.iter(|| counters.response(at, black_box(3), AnswerPath::Forwarded, black_box(120)));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
