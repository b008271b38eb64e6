//! Whole per-query decision (`pipeline::handle`) on a real Snapshot built by `App::start`:
//! limiter → parse → record lookup/evaluate → response bytes, without the socket syscalls.
//! Compares an in-process answer with the limiter off, on (in rate), and a blocked source.
//! (No NODATA case: without `[zones]` the SOA is unknown and such queries are forwarded.)
//! Run with `cargo bench --bench pipeline`; the VM is noisy, compare ratios, not ns.

use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dnsteer::app::App;
use dnsteer::config::{Config, LimitAction, RateLimitConfig, RateLimitMode};
use dnsteer::ratelimit::{RateLimiter, Verdict};
use dnsteer::server::pipeline::{self, Action, Ctx};
use dnsteer::server::signing::SignState;
use dnsteer::state::{Shared, Snapshot};
use dnsteer::telemetry::metrics::{Transport, WorkerMetrics};
use dnsteer::telemetry::querylog::Sampler;
use tokio::time::Instant;

/// A plain query (ID 0x2a2a, RD, EDNS 1232) for `name`/`qtype`.
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut p = vec![0x2a, 0x2a, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    // OPT: root owner, type 41, class = 1232, ttl 0, rdlen 0
    p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    p
}

fn limiter(enabled: bool) -> RateLimiter {
    RateLimiter::new(&RateLimitConfig {
        enabled,
        qps: 100,
        burst: 100,
        ipv4_prefix: 32,
        ipv6_prefix: 64,
        block_for: Duration::from_secs(3600),
        action: LimitAction::Drop,
        max_tracked_sources: 1_000_000,
        exempt: Vec::new(),
        dry_run: false,
        mode: RateLimitMode::Qps,
        responses_per_second: 20,
        window: 15,
        bytes_per_second: 0,
        slip: 2,
    })
}

/// `handle`'s context as the UDP front-end thread builds it (latency observed per batch).
fn ctx_for<'a>(
    snap: &'a Snapshot,
    shared: &'a Shared,
    metrics: &'a WorkerMetrics,
    limiter: &'a RateLimiter,
    sampler: &'a mut Sampler,
    sign: &'a mut SignState,
) -> Ctx<'a> {
    Ctx {
        snap,
        limiter,
        metrics,
        log: &shared.log,
        sampler,
        max_udp_payload: 1232,
        notify: &shared.notify_tx,
        worker: 0,
        latency: pipeline::Latency::Batch { answered: 0 },
        sign,
        cache: None,
        tap: None,
        blocks: None,
    }
}

fn bench(c: &mut Criterion) {
    // Upstream that never answers: only the forward *decision* is measured here. Held open so
    // the health checker's packets land on a socket we own, not on a fixed port.
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let upstream = sink.local_addr().expect("sink addr");
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
workers = 1
[metrics]
listen = "127.0.0.1:0"
[logging]
level = "error"
query_sample_rate = 0.01
[ratelimit]
enabled = false
[upstream]
servers = ["{upstream}"]

[[records]]
name = "static.bench.test."
type = "A"
ttl = 300
content = ["192.0.2.10", "192.0.2.11"]

[[records]]
name = "whashed.bench.test."
type = "A"
ttl = 300
lua = "pickwhashed({{{{10,'192.0.2.1'}},{{20,'192.0.2.2'}},{{30,'192.0.2.3'}}}})"
"#
    );
    let config = Config::parse(&text, Path::new("bench.toml")).expect("bench config parses");
    let app = App::start(config).expect("app starts");
    let shared = app.shared().clone();
    let snap = shared.snapshot.load_full();
    let metrics = shared.metrics.register_worker();
    let mut sampler = Sampler::default();
    let mut sign = SignState::new(1024);
    let mut out = Vec::with_capacity(1500);

    let off = limiter(false);
    let on = limiter(true);
    let client: SocketAddr = "192.0.2.77:40000".parse().expect("addr");
    let blocked: SocketAddr = "198.51.100.7:40000".parse().expect("addr");
    let now = Instant::now();
    while !matches!(
        on.check_at(blocked.ip(), now.into_std()),
        Verdict::Limited { .. }
    ) {}

    let cases: [(&str, Vec<u8>, &RateLimiter, SocketAddr); 5] = [
        (
            "static/limiter_off",
            query("static.bench.test", 1),
            &off,
            client,
        ),
        (
            "static/limiter_on",
            query("static.bench.test", 1),
            &on,
            client,
        ),
        (
            "whashed/limiter_off",
            query("whashed.bench.test", 1),
            &off,
            client,
        ),
        (
            "forward_decision/limiter_off",
            query("www.other.test", 1),
            &off,
            client,
        ),
        (
            "blocked_source_drop",
            query("static.bench.test", 1),
            &on,
            blocked,
        ),
    ];

    let mut g = c.benchmark_group("pipeline");
    for (label, pkt, rl, src) in &cases {
        // Sanity: each case takes the path its label names.
        let mut ctx = ctx_for(&snap, &shared, &metrics, rl, &mut sampler, &mut sign);
        let first = pipeline::handle(&mut ctx, pkt, *src, Transport::Udp, now, &mut out);
        let ok = match (*label, &first) {
            ("blocked_source_drop", Action::Drop) => true,
            ("forward_decision/limiter_off", Action::Forward { .. }) => true,
            (l, Action::Reply) => !l.starts_with("blocked") && !l.starts_with("forward"),
            _ => false,
        };
        assert!(ok, "{label}: unexpected action");

        // The limiter-on hot key must stay in rate: advance time one emission interval (10 ms)
        // per query, as a 100 qps source would.
        let mut tick = 0u32;
        g.bench_function(*label, |b| {
            b.iter(|| {
                tick = tick.wrapping_add(1);
                let t = if *label == "static/limiter_on" {
                    now + Duration::from_millis(10) * tick
                } else {
                    now
                };
                out.clear();
                let mut ctx = ctx_for(&snap, &shared, &metrics, rl, &mut sampler, &mut sign);
                let a =
                    pipeline::handle(&mut ctx, black_box(pkt), *src, Transport::Udp, t, &mut out);
                black_box(matches!(a, Action::Reply))
            });
        });
    }
    g.finish();
    drop(snap);
    app.shutdown(Duration::ZERO);
    drop(sink);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
