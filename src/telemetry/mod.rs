//! What the packet path reports: per-worker counters and histograms, the sampled query log and
//! dnstap output (all written without locks or blocking, read by the control plane).

pub mod dns_metrics;
pub mod dnstap;
pub mod flood_counts;
pub mod metrics;
pub(crate) mod prom;
pub mod querylog;

/// What a query's answer is reported to, decided when the query arrives and carried with a
/// forwarded query until its answer (or SERVFAIL) goes out.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The query log gets it.
    pub sampled: bool,
    /// dnstap gets the query and its answer.
    pub tapped: bool,
    /// Where the DNS metrics count its answer.
    pub zone: dns_metrics::ZoneSlot,
}
