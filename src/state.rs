//! What the packet path reads: the immutable [`Snapshot`] (swapped whole by the control plane)
//! and the data-plane handles every worker shares ([`Shared`]). Nothing here is control-plane
//! bookkeeping: that lives in the control plane.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;

use crate::config::{Config, RestartSettings};
use crate::dns::cookie::CookieSecrets;
use crate::forward::cache::PacketCache;
use crate::forward::upstream::UpstreamSet;
use crate::ratelimit::RateLimiter;
use crate::steer::geo::GeoDb;
use crate::steer::records::{self, RecordTable, Zones};
use crate::telemetry::dns_metrics::ZoneTable;
use crate::telemetry::dnstap::Dnstap;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::querylog::QueryLog;

/// What the packet path reads for one query: swapped whole by reloads.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub(crate) records: RecordTable,
    pub geo: Option<Arc<GeoDb>>,
    /// Zone facts the records were linked with (reused when a refresh fails).
    pub(crate) zones: Zones,
    pub(crate) upstream: Arc<UpstreamSet>,
    pub(crate) sample_threshold: u64,
    /// `[dnstap].sample_rate` as a sampler threshold.
    pub(crate) dnstap_threshold: u64,
    /// Transferred LUA records left to PowerDNS because they do not compile here, and why.
    pub(crate) rejected: Vec<records::Rejected>,
    /// Owner names of the in-process records (their zones' facts are refreshed on SOA TTL).
    pub(crate) record_names: Vec<String>,
    /// When each (zone, DNSKEY RDATA) was first seen in the zone's DNSKEY RRset (Unix seconds):
    /// a key PowerDNS publishes but does not sign with is used once its RRset outlived its TTL.
    pub(crate) dnskey_first_seen: std::collections::HashMap<(String, Vec<u8>), u64>,
    /// When the signer choice of some zone may next change by itself (a published key, preferred
    /// over the one signing, outlives its DNSKEY TTL): the zone loop rebuilds then.
    pub(crate) signer_review_unix: Option<u64>,
    /// The zones DNS metrics are labelled with (slots shared with earlier snapshots).
    pub(crate) dns_zones: ZoneTable,
    /// `[cookies]` secrets, read from their files when this snapshot was built (None: off).
    pub(crate) cookies: Option<CookieSecrets>,
}

/// The handles workers share: read per packet, written without locks.
pub struct Shared {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub limiter: RateLimiter,
    pub metrics: Metrics,
    pub log: Arc<QueryLog>,
    /// Settings fixed at start (listen addresses, workers, caps).
    pub(crate) restart: RestartSettings,
    pub(crate) tcp_counts: TcpCounts,
    /// NOTIFYs from the packet path to the transfer loop (bounded; full = dropped).
    pub notify_tx: tokio::sync::mpsc::Sender<String>,
    /// The packet cache for answers from PowerDNS (`[cache].enabled`).
    pub(crate) cache: Option<PacketCache>,
    /// dnstap output (`[dnstap]`; None: off).
    pub(crate) dnstap: Option<Dnstap>,
    /// Active flood blocks (`[flood]` rules and operators), published by `control::flood`.
    pub(crate) blocks: Arc<ArcSwap<crate::flood::BlockTable>>,
}

/// Connection counts shared by all workers (touched on accept and close only).
#[derive(Default)]
pub(crate) struct TcpCounts {
    pub total: AtomicUsize,
    pub(crate) per_client: dashmap::DashMap<std::net::IpAddr, usize>,
}
