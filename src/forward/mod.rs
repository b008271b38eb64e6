//! Forwarding to the PowerDNS replicas: server pool and health, the UDP front threads' pending
//! tables, TCP pool, packet cache.

pub mod cache;
pub(crate) mod metrics;
pub(crate) mod udp;
pub(crate) mod upstream;
