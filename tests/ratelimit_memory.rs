//! The rate limiter's memory bound, measured on the process: a flood of 1,000,000 distinct
//! sources must not grow RSS beyond the table allocated at start. Alone in its own test binary
//! so no other test allocates in parallel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use dnsteer::config::Config;
use dnsteer::ratelimit::{RateLimiter, Verdict};

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[test]
fn a_million_spoofed_sources_do_not_grow_memory_and_blocked_sources_stay_blocked() {
    let text =
        "[ratelimit]\nqps = 1\nburst = 5\nblock_for = \"60s\"\nmax_tracked_sources = 1000000\n";
    let cfg = Config::parse(text, std::path::Path::new("t.toml")).unwrap();
    let rl = RateLimiter::new(&cfg.ratelimit);
    let t0 = Instant::now();
    // Ten abusers blocked before the flood.
    let abusers: Vec<IpAddr> = (1..=10u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)))
        .collect();
    for &a in &abusers {
        for _ in 0..7 {
            rl.check_at(a, t0);
        }
        assert!(matches!(rl.check_at(a, t0), Verdict::Limited { .. }));
    }
    let table = rl.memory_bytes();
    let before = rss_bytes();
    let mut rng = fastrand::Rng::with_seed(7);
    let span = Duration::from_secs(30);
    for i in 0..1_000_000u32 {
        let now = t0 + span * i / 1_000_000;
        let src = if i % 2 == 0 {
            IpAddr::V4(Ipv4Addr::from(rng.u32(..)))
        } else {
            IpAddr::V6(Ipv6Addr::from(rng.u128(..)))
        };
        rl.check_at(src, now);
    }
    let after = rss_bytes();
    let end = t0 + span;
    eprintln!(
        "table {} MiB, RSS before {} MiB, after {} MiB, tracked {}",
        table >> 20,
        before >> 20,
        after >> 20,
        rl.tracked_at(end)
    );
    assert_eq!(rl.memory_bytes(), table, "the table never grows");
    // The table is allocated up front (16 B per slot); touching its pages during the flood may
    // fault in up to all of it, nothing more. An unbounded map would add tens of MiB.
    assert!(
        after.saturating_sub(before) <= table + (4 << 20),
        "RSS grew by {} bytes",
        after - before
    );
    for &a in &abusers {
        assert!(
            matches!(rl.check_at(a, end), Verdict::Limited { .. }),
            "{a} must still be blocked"
        );
    }
}
