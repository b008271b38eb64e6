//! Metrics: per-worker single-writer counters on the hot path, summed into Prometheus families
//! only when `/metrics` is scraped.
//!
//! A worker increments its own `WorkerMetrics` with a relaxed load+store (no contended atomic,
//! no lock); the scrape sums every worker's copy. Label values come from the static tables
//! here or from config, never from query content, so label sets stay bounded.

use std::sync::{Arc, Mutex};

use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};

use crate::telemetry::dns_metrics::{self, DnsCounters, ZoneTable};
pub(crate) use crate::telemetry::prom::{
    Cnt, family, histogram_family, label_pairs, labelled, scalar,
};
pub use crate::telemetry::prom::{Transport, encode};

/// What happened to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Answered in-process from a rule's first choice.
    Rule = 0,
    /// Answered in-process by a backup selector (nothing was up).
    Backup = 1,
    /// Answered in-process with NODATA (empty result, or a type we do not hold at our name).
    Empty = 2,
    /// Sent to PowerDNS.
    Forwarded = 3,
    /// Over its source's rate: the configured action was applied.
    Limited = 4,
    /// Not answered (runt, response, or our own resource limits).
    Dropped = 5,
    /// Answered in-process with an error (FORMERR, NOTIMP, BADVERS, REFUSED, SERVFAIL).
    Error = 6,
    /// A NOTIFY for a transferred zone from an allowed source, acknowledged (a refused one is
    /// an `Error`).
    Notify = 7,
    /// Answered from the packet cache (fresh or stale) instead of being forwarded.
    Cache = 8,
}

impl Decision {
    pub(crate) const ALL: [Decision; 9] = [
        Decision::Rule,
        Decision::Backup,
        Decision::Empty,
        Decision::Forwarded,
        Decision::Limited,
        Decision::Dropped,
        Decision::Error,
        Decision::Notify,
        Decision::Cache,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Decision::Rule => "rule",
            Decision::Backup => "backup",
            Decision::Empty => "empty",
            Decision::Forwarded => "forwarded",
            Decision::Limited => "limited",
            Decision::Dropped => "dropped",
            Decision::Error => "error",
            Decision::Notify => "notify",
            Decision::Cache => "cache",
        }
    }
}

/// Why a packet or query was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    TooShort = 0,
    IsResponse = 1,
    RateLimited = 2,
    PendingFull = 3,
    UpstreamUnavailable = 4,
    SendFailed = 5,
    TcpFrame = 6,
    TcpConnectionCap = 7,
    Draining = 8,
}

impl DropReason {
    pub(crate) const ALL: [DropReason; 9] = [
        DropReason::TooShort,
        DropReason::IsResponse,
        DropReason::RateLimited,
        DropReason::PendingFull,
        DropReason::UpstreamUnavailable,
        DropReason::SendFailed,
        DropReason::TcpFrame,
        DropReason::TcpConnectionCap,
        DropReason::Draining,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::IsResponse => "is_response",
            DropReason::RateLimited => "rate_limited",
            DropReason::PendingFull => "pending_full",
            DropReason::UpstreamUnavailable => "upstream_unavailable",
            DropReason::SendFailed => "send_failed",
            DropReason::TcpFrame => "tcp_bad_frame",
            DropReason::TcpConnectionCap => "tcp_connection_cap",
            DropReason::Draining => "draining",
        }
    }
}

/// Malformed-input outcomes answered by us (each also counts as `Decision::Error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    FormErr = 0,
    NotImp = 1,
    BadVers = 2,
    BadUpstreamResponse = 3,
    MismatchedUpstreamResponse = 4,
}

impl Malformed {
    pub(crate) const ALL: [Malformed; 5] = [
        Malformed::FormErr,
        Malformed::NotImp,
        Malformed::BadVers,
        Malformed::BadUpstreamResponse,
        Malformed::MismatchedUpstreamResponse,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Malformed::FormErr => "formerr",
            Malformed::NotImp => "notimp",
            Malformed::BadVers => "badvers",
            Malformed::BadUpstreamResponse => "bad_upstream_response",
            Malformed::MismatchedUpstreamResponse => "mismatched_upstream_response",
        }
    }
}

pub(crate) const RCODE_LABELS: [&str; 16] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15",
];

/// Upper bounds (seconds) of the latency histogram buckets.
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.5, 1.0,
];

/// `LATENCY_BUCKETS` in nanoseconds, for the packet path (no float per observation).
const LATENCY_BUCKETS_NS: [u64; 14] = {
    let mut ns = [0u64; 14];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (LATENCY_BUCKETS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    ns
};

/// A histogram with fixed buckets, written by one thread.
#[derive(Default)]
pub(crate) struct Hist {
    buckets: [Cnt; LATENCY_BUCKETS.len() + 1],
    sum_ns: Cnt,
}

impl Hist {
    #[inline]
    pub(crate) fn observe_ns(&self, ns: u64) {
        self.observe_many_ns(ns, 1);
    }

    /// `n` observations of the same latency (a batch answered together).
    #[inline]
    pub(crate) fn observe_many_ns(&self, ns: u64, n: u64) {
        let i = LATENCY_BUCKETS_NS
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(LATENCY_BUCKETS_NS.len());
        self.buckets[i].add(n);
        self.sum_ns.add(ns.wrapping_mul(n));
    }

    pub(crate) fn add_into(&self, counts: &mut [u64], sum_ns: &mut u64) {
        for (c, b) in counts.iter_mut().zip(&self.buckets) {
            *c += b.get();
        }
        *sum_ns += self.sum_ns.get();
    }
}

/// Latency kinds of the end-to-end histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    InProcess = 0,
    Forwarded = 1,
}

/// One worker's counters. Aligned so two workers never share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerMetrics {
    pub(crate) queries: [[Cnt; Decision::ALL.len()]; 2],
    pub(crate) responses: [[Cnt; 16]; 2],
    pub(crate) drops: [Cnt; 9],
    pub(crate) malformed: [Cnt; 5],
    pub(crate) limited_by_action: [Cnt; 3],
    pub(crate) would_limit: Cnt,
    /// rrl mode: limited responses by kind (`RrlKind` order) and outcome (0 slipped, 1 dropped).
    pub(crate) rrl_limited: [[Cnt; 2]; 5],
    /// rrl mode: limited by the prefix's byte budget.
    pub(crate) rrl_by_bytes: Cnt,
    /// rrl mode: UDP queries limited before forwarding (PowerDNS not asked).
    pub(crate) rrl_not_forwarded: Cnt,
    pub(crate) latency: [Hist; 2],
    pub(crate) tcp_accepted: Cnt,
    pub(crate) tcp_closed_idle: Cnt,
    pub(crate) tcp_closed_query_cap: Cnt,
    pub(crate) dnssec_forwarded: [Cnt; DnssecForward::ALL.len()],
    pub(crate) dnssec_signed: Cnt,
    pub(crate) dnssec_sig_hits: Cnt,
    pub(crate) dnssec_sig_misses: Cnt,
    pub(crate) dnssec_sig_evictions: Cnt,
    pub(crate) dnssec_sign_errors: Cnt,
    pub(crate) truncated: Cnt,
    pub(crate) cache_hits: Cnt,
    pub(crate) cache_misses: Cnt,
    pub(crate) cache_stale: Cnt,
    pub(crate) cache_skipped: [Cnt; CacheSkip::ALL.len()],
    /// Queries by what their COOKIE option proved (`[cookies]` on).
    pub(crate) cookies: [Cnt; CookieSeen::ALL.len()],
    /// BADCOOKIE answers sent to rate-limited UDP queries.
    pub(crate) badcookie: Cnt,
    /// The `dnsteer_dns_*` families (CoreDNS's shape).
    pub(crate) dns: DnsCounters,
    /// Sketches the flood rules read (`control::flood`).
    pub(crate) flood: crate::telemetry::flood_counts::FloodCounts,
}

/// Why an answer from PowerDNS was not put in the packet cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheSkip {
    ServFail = 0,
    Truncated = 1,
    Malformed = 2,
    /// An rcode other than NOERROR and NXDOMAIN.
    Rcode = 3,
    /// A negative answer without a SOA in its authority section.
    NoSoa = 4,
    /// Lifetime 0 or under `min_ttl`.
    Ttl = 5,
    TooBig = 6,
    /// Its shard was locked by another thread at that instant.
    Busy = 7,
}

impl CacheSkip {
    pub(crate) const ALL: [CacheSkip; 8] = [
        CacheSkip::ServFail,
        CacheSkip::Truncated,
        CacheSkip::Malformed,
        CacheSkip::Rcode,
        CacheSkip::NoSoa,
        CacheSkip::Ttl,
        CacheSkip::TooBig,
        CacheSkip::Busy,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            CacheSkip::ServFail => "servfail",
            CacheSkip::Truncated => "truncated",
            CacheSkip::Malformed => "malformed",
            CacheSkip::Rcode => "rcode",
            CacheSkip::NoSoa => "no_soa",
            CacheSkip::Ttl => "ttl",
            CacheSkip::TooBig => "too_big",
            CacheSkip::Busy => "busy",
        }
    }
}

/// What a query's COOKIE option (RFC 7873) proved, for `dnsteer_cookie_queries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CookieSeen {
    None = 0,
    ClientOnly = 1,
    Valid = 2,
    Invalid = 3,
    /// Answered FORMERR.
    Malformed = 4,
}

impl CookieSeen {
    pub(crate) const ALL: [CookieSeen; 5] = [
        CookieSeen::None,
        CookieSeen::ClientOnly,
        CookieSeen::Valid,
        CookieSeen::Invalid,
        CookieSeen::Malformed,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            CookieSeen::None => "none",
            CookieSeen::ClientOnly => "client_only",
            CookieSeen::Valid => "valid",
            CookieSeen::Invalid => "invalid",
            CookieSeen::Malformed => "malformed",
        }
    }
}

/// Why a DO=1 query was sent to PowerDNS instead of being answered and signed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DnssecForward {
    /// The name (or type) is not answered in-process at all.
    NotInProcess = 0,
    /// A signed zone with no `[[dnssec.keys]]` entry.
    NoKey = 1,
    /// The zone's keys are not in its DNSKEY RRset.
    KeyNotPublished = 2,
    /// The key is published but its DNSKEY RRset has not been served for its TTL yet.
    WaitingForDnskeyTtl = 3,
    /// The rule gave no address: the denial needs PowerDNS's NSEC/NSEC3 proof.
    Empty = 4,
    /// The name is in-process but not with this type: PowerDNS proves the NODATA.
    NoData = 5,
    /// A LUA CNAME whose target lies in a zone PowerDNS serves: the chased answer holds RRsets
    /// of other owners, which PowerDNS signs.
    CnameChase = 6,
}

impl DnssecForward {
    pub(crate) const ALL: [DnssecForward; 7] = [
        DnssecForward::NotInProcess,
        DnssecForward::NoKey,
        DnssecForward::KeyNotPublished,
        DnssecForward::WaitingForDnskeyTtl,
        DnssecForward::Empty,
        DnssecForward::NoData,
        DnssecForward::CnameChase,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            DnssecForward::NotInProcess => "not_in_process",
            DnssecForward::NoKey => "no_key",
            DnssecForward::KeyNotPublished => "key_not_published",
            DnssecForward::WaitingForDnskeyTtl => "waiting_for_dnskey_ttl",
            DnssecForward::Empty => "empty",
            DnssecForward::NoData => "nodata",
            DnssecForward::CnameChase => "cname_chase",
        }
    }
}

impl WorkerMetrics {
    #[inline]
    pub(crate) fn query(&self, t: Transport, d: Decision) {
        self.queries[t as usize][d as usize].inc();
    }

    #[inline]
    pub(crate) fn response(&self, t: Transport, rcode: u8) {
        self.responses[t as usize][(rcode & 0xf) as usize].inc();
    }

    #[inline]
    pub(crate) fn dropped(&self, r: DropReason) {
        self.drops[r as usize].inc();
    }

    #[inline]
    pub(crate) fn malformed(&self, m: Malformed) {
        self.malformed[m as usize].inc();
    }
}

/// Every worker's counters, for the scraper.
#[derive(Default)]
pub struct Metrics {
    workers: Mutex<Vec<Arc<WorkerMetrics>>>,
}

impl Metrics {
    /// Registers a new worker's counters (at start only: never on the packet path).
    pub fn register_worker(&self) -> Arc<WorkerMetrics> {
        let w = Arc::new(WorkerMetrics::default());
        self.workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(w.clone());
        w
    }

    /// One counter summed over every worker.
    pub(crate) fn sum(&self, f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
        self.workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|w| f(w))
            .sum()
    }

    /// The `dnsteer_dns_*` families, with zone names from `zones`' registry.
    pub(crate) fn dns_families(&self, zones: &ZoneTable) -> Vec<MetricFamily> {
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let threads: Vec<&DnsCounters> = workers.iter().map(|w| &w.dns).collect();
        dns_metrics::families(&threads, zones)
    }

    /// Runs `f` on every worker's counters (the control plane's reads of the flood sketches).
    pub(crate) fn each(&self, mut f: impl FnMut(&WorkerMetrics)) {
        for w in self
            .workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            f(w);
        }
    }

    /// Total queries seen (all transports and decisions); used by tests and `/status`.
    pub(crate) fn total_queries(&self) -> u64 {
        self.sum(|w| w.queries.iter().flatten().map(Cnt::get).sum())
    }

    /// The query path's families (queries, responses, drops, malformed input, truncation, TCP
    /// connections, latency), summed across workers. The rate limiter's, DNSSEC signing's and
    /// the packet cache's counters live here too but are exported by `RateLimiter::families`,
    /// `server::signing::families` and `forward::cache::families`.
    pub(crate) fn families(&self) -> Vec<MetricFamily> {
        let mut out = Vec::from(self.queries_and_responses());
        out.push(labelled(
            "dnsteer_dropped_total",
            "Packets or queries not answered, by reason.",
            MetricType::COUNTER,
            "reason",
            DropReason::ALL
                .iter()
                .map(|&r| (r.label(), self.sum(|w| w.drops[r as usize].get()) as f64)),
        ));
        out.push(labelled(
            "dnsteer_malformed_total",
            "Malformed or unsupported input, by kind (queries answered FORMERR/NOTIMP/BADVERS, bad upstream responses).",
            MetricType::COUNTER,
            "kind",
            Malformed::ALL
                .iter()
                .map(|&m| (m.label(), self.sum(|w| w.malformed[m as usize].get()) as f64)),
        ));
        out.push(labelled(
            "dnsteer_cookie_queries_total",
            "Queries by what their DNS COOKIE option proved (counted only with [cookies] enabled).",
            MetricType::COUNTER,
            "outcome",
            CookieSeen::ALL
                .iter()
                .map(|&c| (c.label(), self.sum(|w| w.cookies[c as usize].get()) as f64)),
        ));
        out.push(scalar(
            "dnsteer_cookie_badcookie_total",
            "BADCOOKIE answers sent to rate-limited UDP queries without a valid server cookie.",
            MetricType::COUNTER,
            self.sum(|w| w.badcookie.get()) as f64,
        ));
        out.push(scalar(
            "dnsteer_truncated_total",
            "UDP responses sent with TC=1 because they exceeded the client's limit.",
            MetricType::COUNTER,
            self.sum(|w| w.truncated.get()) as f64,
        ));
        out.push(labelled(
            "dnsteer_tcp_connections_total",
            "TCP client connections accepted and closed by dnsteer, by event.",
            MetricType::COUNTER,
            "event",
            [
                ("accepted", self.sum(|w| w.tcp_accepted.get())),
                ("closed_idle", self.sum(|w| w.tcp_closed_idle.get())),
                (
                    "closed_query_cap",
                    self.sum(|w| w.tcp_closed_query_cap.get()),
                ),
            ]
            .map(|(e, n)| (e, n as f64)),
        ));
        out.push(self.duration());
        out
    }

    /// Queries by transport and decision; responses by transport and rcode.
    fn queries_and_responses(&self) -> [MetricFamily; 2] {
        let mut queries = Vec::new();
        let mut responses = Vec::new();
        for t in Transport::ALL {
            for d in Decision::ALL {
                let v = self.sum(|w| w.queries[t as usize][d as usize].get());
                queries.push((
                    vec![
                        ("transport", t.label().to_string()),
                        ("decision", d.label().to_string()),
                    ],
                    v as f64,
                ));
            }
            for (rc, name) in RCODE_LABELS.iter().enumerate() {
                let v = self.sum(|w| w.responses[t as usize][rc].get());
                if v > 0 || rc <= 5 {
                    responses.push((
                        vec![
                            ("transport", t.label().to_string()),
                            ("rcode", name.to_string()),
                        ],
                        v as f64,
                    ));
                }
            }
        }
        [
            family(
                "dnsteer_queries_total",
                "Queries received, by transport and what was done with them.",
                MetricType::COUNTER,
                queries,
            ),
            family(
                "dnsteer_responses_total",
                "Responses sent to clients, by transport and rcode.",
                MetricType::COUNTER,
                responses,
            ),
        ]
    }

    /// One path's latency histogram merged over every worker: bucket counts (the last one is
    /// over the largest bound) and the sum in nanoseconds.
    pub(crate) fn latency_totals(&self, p: Path) -> (Vec<u64>, u64) {
        let mut counts = vec![0u64; LATENCY_BUCKETS.len() + 1];
        let mut sum_ns = 0u64;
        for w in self
            .workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            w.latency[p as usize].add_into(&mut counts, &mut sum_ns);
        }
        (counts, sum_ns)
    }

    /// Queries by decision label (both transports), every decision listed.
    pub(crate) fn queries_by_decision(&self) -> Vec<(&'static str, u64)> {
        Decision::ALL
            .iter()
            .map(|d| {
                let i = *d as usize;
                (
                    d.label(),
                    self.sum(|w| w.queries.iter().map(|t| t[i].get()).sum()),
                )
            })
            .collect()
    }

    /// Query latency by path (in-process, forwarded), all workers' histograms merged.
    fn duration(&self) -> MetricFamily {
        let mut hists = Vec::new();
        for (p, label) in [
            (Path::InProcess, "in_process"),
            (Path::Forwarded, "forwarded"),
        ] {
            let (counts, sum_ns) = self.latency_totals(p);
            hists.push(histogram_metric(
                vec![("path", label.to_string())],
                &counts,
                sum_ns as f64 * 1e-9,
            ));
        }
        histogram_family(
            "dnsteer_query_duration_seconds",
            "Time from receiving a query to sending its answer, in-process or forwarded.",
            hists,
        )
    }
}

pub(crate) fn histogram_metric(labels: Vec<(&str, String)>, counts: &[u64], sum: f64) -> Metric {
    let mut h = Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
    for (i, ub) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += counts[i];
        let mut b = Bucket::default();
        b.set_upper_bound(*ub);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    cumulative += counts[LATENCY_BUCKETS.len()];
    h.set_bucket(buckets);
    h.set_sample_count(cumulative);
    h.set_sample_sum(sum);
    let mut m = Metric::from_label(label_pairs(labels));
    m.set_histogram(h);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_across_workers_and_encodes() {
        let m = Metrics::default();
        let a = m.register_worker();
        let b = m.register_worker();
        a.query(Transport::Udp, Decision::Forwarded);
        b.query(Transport::Udp, Decision::Forwarded);
        b.response(Transport::Tcp, 3);
        a.latency[Path::InProcess as usize].observe_ns(30_000);
        let text = encode(&m.families());
        assert!(
            text.contains("dnsteer_queries_total{transport=\"udp\",decision=\"forwarded\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("dnsteer_responses_total{transport=\"tcp\",rcode=\"NXDOMAIN\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "dnsteer_query_duration_seconds_bucket{path=\"in_process\",le=\"0.00005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("dnsteer_query_duration_seconds_count{path=\"in_process\"} 1"),
            "{text}"
        );
        assert_eq!(m.total_queries(), 2);
    }

    #[test]
    fn bucket_bounds_are_inclusive_in_nanoseconds() {
        assert_eq!(LATENCY_BUCKETS_NS[0], 25_000);
        assert_eq!(LATENCY_BUCKETS_NS[13], 1_000_000_000);
        let h = Hist::default();
        h.observe_ns(25_000); // on the bound: first bucket (le="0.000025")
        h.observe_ns(25_001);
        h.observe_many_ns(2_000_000_000, 3); // past the last bound: +Inf only
        let mut counts = [0u64; LATENCY_BUCKETS.len() + 1];
        let mut sum = 0;
        h.add_into(&mut counts, &mut sum);
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[LATENCY_BUCKETS.len()], 3);
        assert_eq!(sum, 25_000 + 25_001 + 6_000_000_000);
    }
}
