//! What the packet path reports: per-worker counters and histograms, the sampled query log and
//! dnstap output (all written without locks or blocking, read by the control plane).

pub mod dns_metrics;
pub mod dnstap;
pub mod metrics;
pub(crate) mod prom;
pub mod querylog;
