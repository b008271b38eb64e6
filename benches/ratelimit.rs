//! Rate-limiter cost per check: a hot in-rate key, a random-source flood (every check a new
//! source, so a table miss and an eviction), and a blocked source; in rrl mode, an answer's
//! check (classification, name hash, response and byte budgets) for a hot and a new source.
//! Run with `cargo bench --bench ratelimit`; the VM is noisy, compare ratios, not ns.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dnsteer::config::{LimitAction, RateLimitConfig, RateLimitMode};
use dnsteer::ratelimit::{RateLimiter, RrlKey, RrlVerdict, Verdict};

fn config() -> RateLimitConfig {
    RateLimitConfig {
        enabled: true,
        qps: 100,
        burst: 100,
        ipv4_prefix: 32,
        ipv6_prefix: 64,
        block_for: Duration::from_secs(60),
        action: LimitAction::Drop,
        max_tracked_sources: 1_000_000,
        exempt: vec!["10.0.0.0/8".parse().unwrap()],
        dry_run: false,
        mode: RateLimitMode::Qps,
        responses_per_second: 20,
        window: 15,
        bytes_per_second: 0,
        slip: 2,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    g.sample_size(30);

    // A source within its rate: time advances 10 ms (one emission interval) per check.
    let rl = RateLimiter::new(&config());
    let hot = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let t0 = Instant::now();
    let mut tick = 0u32;
    g.bench_function("hot_key", |b| {
        b.iter(|| {
            tick = tick.wrapping_add(1);
            let v = rl.check_at(black_box(hot), t0 + Duration::from_millis(10) * tick);
            debug_assert_eq!(v, Verdict::Allow);
            v
        });
    });

    // Same, reading the clock inside (what `check` costs without a per-batch clock).
    g.bench_function("hot_key_with_clock", |b| {
        b.iter(|| rl.check(black_box(hot)));
    });

    // Spoofed flood: every check is a new random source, IPv4 and IPv6 alternating.
    let rl = RateLimiter::new(&config());
    let mut rng = fastrand::Rng::with_seed(7);
    let now = Instant::now();
    g.bench_function("random_source_flood", |b| {
        b.iter(|| {
            let src = if rng.bool() {
                IpAddr::V4(Ipv4Addr::from(rng.u32(..)))
            } else {
                IpAddr::V6(Ipv6Addr::from(rng.u128(..)))
            };
            rl.check_at(src, now)
        });
    });

    // A blocked source keeps asking: read-only path, no state write.
    let rl = RateLimiter::new(&config());
    let bad = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    while !matches!(rl.check_at(bad, now), Verdict::Limited { .. }) {}
    g.bench_function("blocked_source", |b| {
        b.iter(|| rl.check_at(black_box(bad), now));
    });

    // Exempt source: range lookup only.
    let exempt = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    g.bench_function("exempt_source", |b| {
        b.iter(|| rl.check_at(black_box(exempt), now));
    });

    // rrl mode: a positive answer (header says 1 answer) for a 3-label name.
    let rl = RateLimiter::new(&RateLimitConfig {
        mode: RateLimitMode::Rrl,
        ipv4_prefix: 24,
        ipv6_prefix: 56,
        responses_per_second: 100,
        bytes_per_second: 1_000_000,
        ..config()
    });
    let resp = [0u8, 1, 0x84, 0, 0, 1, 0, 1, 0, 0, 0, 0];
    let name = dnsteer::dns::name_from_text("www.example.com.").unwrap();
    let mut tick = 0u32;
    g.bench_function("rrl_answer_hot_key", |b| {
        b.iter(|| {
            tick = tick.wrapping_add(1);
            let key = RrlKey::of_response(black_box(&resp), &name, 1, None);
            let v = rl.rrl_check_at(hot, key, 200, t0 + Duration::from_millis(10) * tick);
            debug_assert_eq!(v, RrlVerdict::Allow);
            v
        });
    });
    g.bench_function("rrl_answer_random_source", |b| {
        b.iter(|| {
            let src = IpAddr::V4(Ipv4Addr::from(rng.u32(..)));
            let key = RrlKey::of_response(black_box(&resp), &name, 1, None);
            rl.rrl_check_at(src, key, 200, now)
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
