//! Forwarding to the PowerDNS replicas: server pool and health, the UDP front threads' pending
//! tables, TCP pool, packet cache.

pub mod cache;
pub mod udp;
pub mod upstream;
