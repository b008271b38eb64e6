//! What the packet path reports: per-worker counters and histograms, and the sampled query log
//! (both written without locks or blocking, read by the control plane).

pub mod dns_metrics;
pub mod metrics;
pub(crate) mod prom;
pub mod querylog;
