//! The last ten minutes of query rate and latency, one sample a second, for the status page's
//! charts (`history` in `/status`). A control-plane task reads the same per-worker counters and
//! latency histograms `/metrics` exports and keeps their differences in a fixed-size ring; it
//! also keeps each PowerDNS server's recent response time. Never on the packet path.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use super::{Control, unix_now};
use crate::forward::upstream::UpstreamServer;
use crate::telemetry::metrics::{LATENCY_BUCKETS, Metrics, Path};

/// Seconds between samples.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: ten minutes at one a second (a few kilobytes, allocated once).
pub(crate) const CAPACITY: usize = 600;

/// One interval: when it ended, queries per second, and the latency of the queries answered in
/// it (mean, and the upper bound of the histogram bucket holding the 99th percentile); no
/// latency when nothing was answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub(crate) unix: u64,
    pub(crate) qps: f64,
    pub(crate) mean_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

/// Cumulative totals read at one instant: queries (every decision) and the query latency
/// histogram (both paths merged).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Totals {
    pub(crate) queries: u64,
    pub(crate) counts: Vec<u64>,
    pub(crate) sum_ns: u64,
}

impl Totals {
    fn read(metrics: &Metrics) -> Totals {
        let (mut counts, mut sum_ns) = metrics.latency_totals(Path::InProcess);
        let (fwd, fwd_ns) = metrics.latency_totals(Path::Forwarded);
        for (c, f) in counts.iter_mut().zip(fwd) {
            *c += f;
        }
        sum_ns += fwd_ns;
        Totals {
            queries: metrics.total_queries(),
            counts,
            sum_ns,
        }
    }
}

/// The sample for the interval between `prev` and `now` (`elapsed` long, ending at `unix`).
pub(crate) fn sample(prev: &Totals, now: &Totals, unix: u64, elapsed: Duration) -> Sample {
    let secs = elapsed.as_secs_f64().max(0.001);
    let deltas: Vec<u64> = now
        .counts
        .iter()
        .zip(prev.counts.iter().chain(std::iter::repeat(&0)))
        .map(|(n, p)| n.saturating_sub(*p))
        .collect();
    let answered: u64 = deltas.iter().sum();
    let mean_ms = (answered > 0)
        .then(|| now.sum_ns.saturating_sub(prev.sum_ns) as f64 / answered as f64 / 1e6);
    Sample {
        unix,
        qps: round3(now.queries.saturating_sub(prev.queries) as f64 / secs),
        mean_ms: mean_ms.map(round3),
        p99_ms: percentile_bound(&deltas, 0.99).map(|s| round3(s * 1000.0)),
    }
}

/// Upper bound (seconds) of the bucket holding quantile `q` of `deltas`; the overflow bucket
/// reports the largest bound.
fn percentile_bound(deltas: &[u64], q: f64) -> Option<f64> {
    let total: u64 = deltas.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    let i = deltas.iter().position(|d| {
        seen += d;
        seen >= rank
    })?;
    LATENCY_BUCKETS
        .get(i)
        .or_else(|| LATENCY_BUCKETS.last())
        .copied()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A PowerDNS server's latency histogram totals at the last sample, and its mean response time
/// over the most recent interval that had answers.
#[derive(Debug, Default)]
struct UpstreamLatency {
    count: u64,
    sum_ns: u64,
    recent_ms: Option<f64>,
}

/// The ring of samples and the per-server recent latencies; bounded by [`CAPACITY`] and by the
/// configured servers (servers gone after a reload are forgotten at the next sample).
pub(crate) struct History {
    ring: Mutex<VecDeque<Sample>>,
    upstreams: Mutex<HashMap<SocketAddr, UpstreamLatency>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            ring: Mutex::new(VecDeque::with_capacity(CAPACITY)),
            upstreams: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl History {
    /// Appends a sample, dropping the oldest when full.
    pub(crate) fn push(&self, s: Sample) {
        let mut ring = lock(&self.ring);
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    /// `history` in `/status`: one array per series, oldest first (compact for a page polling
    /// every second).
    pub(crate) fn status(&self) -> serde_json::Value {
        let ring = lock(&self.ring);
        serde_json::json!({
            "interval_s": INTERVAL.as_secs(),
            "capacity": CAPACITY,
            "unix": ring.iter().map(|s| s.unix).collect::<Vec<_>>(),
            "qps": ring.iter().map(|s| s.qps).collect::<Vec<_>>(),
            "mean_ms": ring.iter().map(|s| s.mean_ms).collect::<Vec<_>>(),
            "p99_ms": ring.iter().map(|s| s.p99_ms).collect::<Vec<_>>(),
        })
    }

    /// Mean response time of `addr` over the most recent interval it answered in.
    pub(crate) fn upstream_recent_ms(&self, addr: SocketAddr) -> Option<f64> {
        lock(&self.upstreams).get(&addr).and_then(|u| u.recent_ms)
    }

    /// Updates each server's recent latency from its histogram; forgets servers not listed.
    fn note_upstreams(&self, servers: &[Arc<UpstreamServer>]) {
        let mut table = lock(&self.upstreams);
        table.retain(|addr, _| servers.iter().any(|s| s.addr == *addr));
        for s in servers {
            let mut counts = vec![0u64; LATENCY_BUCKETS.len() + 1];
            let mut sum_ns = 0;
            s.latency(&mut counts, &mut sum_ns);
            let count: u64 = counts.iter().sum();
            let e = table.entry(s.addr).or_default();
            let n = count.saturating_sub(e.count);
            if n > 0 {
                let ns = sum_ns.saturating_sub(e.sum_ns);
                e.recent_ms = Some(round3(ns as f64 / n as f64 / 1e6));
            }
            e.count = count;
            e.sum_ns = sum_ns;
        }
    }
}

/// Samples once per [`INTERVAL`] until the runtime stops.
pub(crate) async fn run(ctl: Arc<Control>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    let mut prev = Totals::read(&ctl.data.metrics);
    let mut prev_at = Instant::now();
    ctl.history
        .note_upstreams(&ctl.data.snapshot.load().upstream.servers);
    loop {
        tick.tick().await;
        let now = Totals::read(&ctl.data.metrics);
        let at = Instant::now();
        ctl.history
            .push(sample(&prev, &now, unix_now(), at.duration_since(prev_at)));
        ctl.history
            .note_upstreams(&ctl.data.snapshot.load().upstream.servers);
        prev = now;
        prev_at = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(queries: u64, bucket: usize, n: u64, sum_ns: u64) -> Totals {
        let mut counts = vec![0; LATENCY_BUCKETS.len() + 1];
        counts[bucket] = n;
        Totals {
            queries,
            counts,
            sum_ns,
        }
    }

    #[test]
    fn a_sample_is_the_difference_of_two_readings() {
        let prev = totals(100, 5, 50, 50_000_000);
        // 200 more queries in 2 s, all answered in bucket 5 (≤ 1 ms) at 0.5 ms each.
        let now = totals(300, 5, 250, 150_000_000);
        let s = sample(&prev, &now, 42, Duration::from_secs(2));
        assert_eq!(s.unix, 42);
        assert_eq!(s.qps, 100.0);
        assert_eq!(s.mean_ms, Some(0.5));
        assert_eq!(s.p99_ms, Some(1.0));
    }

    #[test]
    fn an_idle_interval_has_no_latency() {
        let t = totals(7, 3, 7, 700);
        let s = sample(&t, &t, 1, Duration::from_secs(1));
        assert_eq!(s.qps, 0.0);
        assert_eq!((s.mean_ms, s.p99_ms), (None, None));
    }

    #[test]
    fn the_99th_percentile_is_a_bucket_bound() {
        let mut d = vec![0u64; LATENCY_BUCKETS.len() + 1];
        d[0] = 98;
        d[8] = 2; // 10 ms
        assert_eq!(percentile_bound(&d, 0.99), Some(0.01));
        d[8] = 0;
        d[LATENCY_BUCKETS.len()] = 2; // over the largest bound
        assert_eq!(percentile_bound(&d, 0.99), Some(1.0));
    }

    #[test]
    fn the_ring_keeps_the_newest_capacity_samples() {
        let h = History::default();
        for i in 0..(CAPACITY as u64 + 5) {
            h.push(Sample {
                unix: i,
                qps: 1.0,
                mean_ms: None,
                p99_ms: None,
            });
        }
        let v = h.status();
        let unix = v["unix"].as_array().expect("array");
        assert_eq!(unix.len(), CAPACITY);
        assert_eq!(unix[0], 5);
        assert_eq!(unix[CAPACITY - 1], CAPACITY as u64 + 4);
    }
}
