//! The control plane: builds and publishes snapshots (reload, zone transfers) and serves the
//! admin HTTP endpoints. Nothing on the packet path waits for it.

pub(crate) mod admin;
pub mod build;
pub(crate) mod flood;
pub(crate) mod flood_api;
pub(crate) mod history;
pub mod own_key;
pub(crate) mod own_key_loop;
pub(crate) mod pdns_api;
pub(crate) mod reload;
pub(crate) mod status_page;
pub mod xfr;
pub(crate) mod zone_facts;
pub(crate) mod zones;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::state::Shared;
use crate::steer::probes::ProbePool;

/// Control-plane facts for `/status`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct ControlStatus {
    pub(crate) config_file: String,
    pub(crate) config_hash: String,
    pub(crate) last_reload_unix: Option<u64>,
    pub last_error: Option<String>,
    pub(crate) last_error_unix: Option<u64>,
    /// Settings changed in the file that only take effect after a restart.
    pub(crate) restart_required: Vec<String>,
    pub(crate) geoip_build_epoch: Option<u64>,
}

/// The control plane's own state, beside the data-plane handles it publishes to.
pub(crate) struct Control {
    pub data: Arc<Shared>,
    pub probes: Arc<ProbePool>,
    pub(crate) ready: AtomicBool,
    pub(crate) draining: AtomicBool,
    pub(crate) reloads_ok: AtomicU64,
    pub(crate) reloads_failed: AtomicU64,
    /// Reloads never overlap.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    pub status: Mutex<ControlStatus>,
    pub(crate) started_unix: u64,
    /// Bound DNS addresses, for `/status`.
    pub(crate) listen_addrs: Mutex<Vec<std::net::SocketAddr>>,
    /// `[zones].transfer` data.
    pub(crate) transfers: Arc<zones::Transfers>,
    /// `[dnssec.own_key]` state per zone.
    pub(crate) own_keys: own_key::OwnKeys,
    /// Recent query rate and latency, for the status page.
    pub(crate) history: history::History,
    /// Flood rules' state and the block list (`[flood]`, `/blocks`).
    pub(crate) flood: flood::Flood,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Logs the end of each block (the limiter learns of it lazily, so the control plane watches
/// the blocked set once a second; it covers the most recent 1024 blocks started).
pub(crate) async fn log_block_ends(shared: Arc<Shared>) {
    let mut active: std::collections::HashSet<ipnet::IpNet> = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now: std::collections::HashSet<ipnet::IpNet> = shared
            .limiter
            .top_blocked(1024)
            .into_iter()
            .map(|b| b.prefix)
            .collect();
        let dry_run = shared.snapshot.load().config.ratelimit.dry_run;
        for ended in active.difference(&now) {
            tracing::info!(target: "dnsteer::ratelimit", source = %ended, dry_run, "block ended");
        }
        active = now;
    }
}
