//! dnsteer: a DNS front proxy for PowerDNS that rate-limits per source, forwards to the
//! PowerDNS replicas, and answers PowerDNS LUA records in-process from probe state and GeoIP.
//!
//! The folders follow a query (imports run one way, top to bottom; `tests/module_graph.rs`
//! checks it):
//! - `server/`: sockets, worker threads, the UDP front end and batched syscalls, TCP, and the
//!   per-query `pipeline` (limit → parse → decide → answer or forward);
//! - `state`: the immutable snapshot the packet path reads, and the handles it shares;
//! - `ratelimit`: per-source limiter; `flood`: the block table flood rules publish;
//!   `steer/`: compiled LUA records, probes, GeoIP, hashes; `forward/`: the PowerDNS pool;
//! - `telemetry/`: per-worker metrics and the sampled query log;
//! - `dns/`: the wire layer; `dnssec/`: keys, RRSIGs and the signature cache (online signing);
//!   `config`: the validated configuration;
//! - `control/`: reload, zone transfer, admin HTTP, snapshot building; `app`: start and stop.

#![warn(unreachable_pub, unused_crate_dependencies)]

// Dependencies of other targets that the library itself does not use (the lint above cannot
// tell): the binary's error type, and dev-dependencies of benches and integration tests.
use anyhow as _;
#[cfg(test)]
use {criterion as _, tempfile as _};

pub mod app;
pub mod config;
pub mod control;
pub mod dns;
pub mod dnssec;
pub mod flood;
pub mod forward;
pub mod ratelimit;
pub mod server;
pub mod state;
pub mod steer;
pub mod telemetry;
