//! dnsteer: a DNS front proxy for PowerDNS that rate-limits per source, forwards to the
//! PowerDNS replicas, and answers PowerDNS LUA records in-process from probe state and GeoIP.
//!
//! Data flow (one file per step):
//! `listener` (sockets, workers; UDP via `udp_front` + `udp_batch`) → `pipeline` (per query) → `ratelimit` → `dns` (parse)
//! → `querylog` (sample) → `records` (+ `lua`, `probes`, `geo`) | `upstream` (PowerDNS pool)
//! → `dns` (encode) → `listener`.
//! Control plane: `config`, `reload`, `probes`, `geo`, `metrics`, `admin`, `app`.

pub mod admin;
pub mod app;
pub mod config;
pub mod dns;
pub mod dnssec;
pub mod geo;
pub mod hash;
pub mod listener;
pub mod lua;
pub mod metrics;
pub mod pipeline;
pub mod probes;
pub mod querylog;
pub mod ratelimit;
pub mod records;
pub mod reload;
pub mod udp_batch;
pub mod udp_front;
pub mod upstream;
pub mod xfr;
pub mod zones;
