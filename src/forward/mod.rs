//! Forwarding to the PowerDNS replicas: server pool and health, UDP pending tables, TCP pool.

pub(crate) mod metrics;
pub mod upstream;
