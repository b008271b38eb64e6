//! Sampled query log and always-logged events, off the packet path.
//!
//! Workers decide with a per-worker RNG whether a query is sampled, fill a small fixed-size
//! entry and `try_send` it to a bounded queue; a logger thread formats it through `tracing`.
//! A full queue drops the line and counts it: a slow log collector never stalls a worker.
//! Events that are always logged (blocks, FORMERR, SERVFAIL, upstream timeouts) take the same
//! queue under a global lines-per-second cap.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus::proto::{MetricFamily, MetricType};

use crate::dns::WireName;
use crate::telemetry::metrics::{Decision, Transport, scalar};

/// Lines buffered between workers and the logger thread.
const QUEUE_LEN: usize = 65_536;

/// One sampled query, complete when its answer was sent.
#[derive(Clone, Copy)]
pub(crate) struct QueryEntry {
    pub(crate) transport: Transport,
    /// Client address masked to the ECS prefix lengths (privacy: a prefix, not a host).
    pub client: IpAddr,
    pub(crate) client_prefix: u8,
    pub ecs: Option<(IpAddr, u8)>,
    pub qname: WireName,
    pub qtype: u16,
    pub(crate) decision: Decision,
    pub rcode: u8,
    pub answers: u16,
    pub(crate) latency_ns: u64,
    pub upstream: Option<SocketAddr>,
}

/// Always-logged events.
#[derive(Clone, Copy)]
pub(crate) enum Event {
    BlockStarted {
        source: IpAddr,
        prefix: u8,
        dry_run: bool,
    },
    /// rrl mode: a key's responses started being limited (one event per run).
    RrlStarted {
        source: IpAddr,
        prefix: u8,
        kind: &'static str,
        dry_run: bool,
    },
    FormErr {
        client: IpAddr,
        reason: &'static str,
    },
    ServFail {
        client: IpAddr,
        qname: WireName,
        qtype: u16,
        reason: &'static str,
    },
    UpstreamTimeout {
        server: SocketAddr,
        qname: WireName,
        qtype: u16,
    },
}

enum Line {
    Query(Box<QueryEntry>),
    Event(Box<Event>),
}

/// The producer side, shared by all workers.
pub struct QueryLog {
    tx: SyncSender<Line>,
    dropped: AtomicU64,
    suppressed: AtomicU64,
    /// Event rate cap: (second since start << 32) | events in that second.
    window: AtomicU64,
    event_limit: AtomicU64,
    start: Instant,
}

impl QueryLog {
    /// Creates the log and starts its logger thread.
    pub fn start(event_limit: u32) -> std::sync::Arc<QueryLog> {
        let (tx, rx) = sync_channel(QUEUE_LEN);
        std::thread::Builder::new()
            .name("dnsteer-log".into())
            .spawn(move || writer(rx))
            .expect("spawning the log thread at start-up");
        std::sync::Arc::new(QueryLog {
            tx,
            dropped: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            window: AtomicU64::new(0),
            event_limit: AtomicU64::new(u64::from(event_limit)),
            start: Instant::now(),
        })
    }

    pub(crate) fn set_event_limit(&self, limit: u32) {
        self.event_limit.store(u64::from(limit), Ordering::Relaxed);
    }

    pub(crate) fn query(&self, e: QueryEntry) {
        self.send(Line::Query(Box::new(e)));
    }

    pub(crate) fn event(&self, e: Event) {
        if self.event_allowed() {
            self.send(Line::Event(Box::new(e)));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send(&self, line: Line) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn event_allowed(&self) -> bool {
        let sec = self.start.elapsed().as_secs();
        let limit = self.event_limit.load(Ordering::Relaxed);
        let mut cur = self.window.load(Ordering::Relaxed);
        loop {
            let (w, n) = (cur >> 32, cur & 0xffff_ffff);
            let next = if w != sec {
                (sec << 32) | 1
            } else if n < limit {
                cur + 1
            } else {
                return false;
            };
            match self
                .window
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(x) => cur = x,
            }
        }
    }

    /// Lines dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events not logged because of the per-second cap.
    pub(crate) fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Log lines lost: dropped on a full queue, or events over the per-second cap.
    pub(crate) fn families(&self) -> Vec<MetricFamily> {
        vec![
            scalar(
                "dnsteer_log_lines_dropped_total",
                "Log lines dropped because the log queue was full.",
                MetricType::COUNTER,
                self.dropped() as f64,
            ),
            scalar(
                "dnsteer_log_events_suppressed_total",
                "Always-logged events not logged because of the per-second cap.",
                MetricType::COUNTER,
                self.suppressed() as f64,
            ),
        ]
    }
}

/// Per-worker sampling decision: a cheap RNG compared against a threshold.
pub struct Sampler {
    rng: fastrand::Rng,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            rng: fastrand::Rng::new(),
        }
    }
}

impl Sampler {
    /// `threshold` = rate × 2^32 (see `threshold`).
    #[inline]
    pub fn sample(&mut self, threshold: u64) -> bool {
        threshold != 0 && u64::from(self.rng.u32(..)) < threshold
    }
}

/// Converts a sample rate in 0.0–1.0 to the sampler's threshold.
pub(crate) fn threshold(rate: f64) -> u64 {
    (rate.clamp(0.0, 1.0) * (f64::from(u32::MAX) + 1.0)) as u64
}

/// Presentation form of a lower-case wire name, for logs.
pub(crate) fn name_to_string(wire: &[u8]) -> String {
    let mut out = String::with_capacity(wire.len() + 1);
    let _ = crate::dns::name::write_name(wire, &mut out);
    out
}

/// How long the logger sleeps when the queue is empty.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Polls instead of blocking in `recv`: a receiver parked in `recv` makes every send wake it
/// with a futex call on the packet path; a sleeping poller costs the senders nothing and
/// delays a line by at most `POLL`.
fn writer(rx: Receiver<Line>) {
    loop {
        match rx.try_recv() {
            Ok(Line::Query(e)) => log_query(&e),
            Ok(Line::Event(e)) => log_event(&e),
            Err(std::sync::mpsc::TryRecvError::Empty) => std::thread::sleep(POLL),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
        }
    }
}

fn log_query(e: &QueryEntry) {
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let ecs = e.ecs.map(|(a, p)| format!("{a}/{p}"));
    tracing::info!(
        target: "dnsteer::query",
        time_ms,
        transport = e.transport.label(),
        client = %format_args!("{}/{}", e.client, e.client_prefix),
        ecs = ecs.as_deref().unwrap_or(""),
        qname = %name_to_string(e.qname.as_bytes()),
        qtype = e.qtype,
        decision = e.decision.label(),
        rcode = crate::telemetry::metrics::RCODE_LABELS[(e.rcode & 0xf) as usize],
        answers = e.answers,
        latency_us = e.latency_ns / 1000,
        upstream = %e.upstream.map(|u| u.to_string()).unwrap_or_default(),
        "query"
    );
}

fn log_event(e: &Event) {
    match e {
        Event::BlockStarted {
            source,
            prefix,
            dry_run,
        } => tracing::warn!(
            target: "dnsteer::ratelimit",
            source = %format_args!("{source}/{prefix}"),
            dry_run,
            "source over its rate: blocked"
        ),
        Event::RrlStarted {
            source,
            prefix,
            kind,
            dry_run,
        } => tracing::warn!(
            target: "dnsteer::ratelimit",
            source = %format_args!("{source}/{prefix}"),
            kind,
            dry_run,
            "responses over their rate: limiting (rrl)"
        ),
        Event::FormErr { client, reason } => {
            tracing::info!(target: "dnsteer::query", client = %client, reason, "malformed query answered FORMERR");
        }
        Event::ServFail {
            client,
            qname,
            qtype,
            reason,
        } => tracing::warn!(
            target: "dnsteer::query",
            client = %client,
            qname = %name_to_string(qname.as_bytes()),
            qtype,
            reason,
            "answered SERVFAIL"
        ),
        Event::UpstreamTimeout {
            server,
            qname,
            qtype,
        } => tracing::warn!(
            target: "dnsteer::forward::upstream",
            server = %server,
            qname = %name_to_string(qname.as_bytes()),
            qtype,
            "upstream did not answer in time"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_rate_is_about_right() {
        let mut s = Sampler::default();
        let t = threshold(0.01);
        let n = (0..100_000).filter(|_| s.sample(t)).count();
        // Binomial(100000, 0.01): mean 1000, sd ~31.5; ±5 sd.
        assert!((843..=1157).contains(&n), "{n}");
        assert!(!s.sample(threshold(0.0)));
        assert!(s.sample(threshold(1.0)));
    }

    #[test]
    fn event_cap_per_second() {
        let log = QueryLog::start(3);
        let allowed = (0..10).filter(|_| log.event_allowed()).count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn names_print() {
        assert_eq!(
            name_to_string(b"\x03www\x07example\x04test\x00"),
            "www.example.test."
        );
        assert_eq!(name_to_string(b"\x00"), ".");
        assert_eq!(name_to_string(b"\x02a.\x00"), "a\\046.");
    }
}
