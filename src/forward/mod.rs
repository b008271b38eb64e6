//! Forwarding to the PowerDNS replicas: server pool and health, UDP pending tables, TCP pool,
//! packet cache.

pub mod cache;
pub(crate) mod metrics;
pub mod upstream;
