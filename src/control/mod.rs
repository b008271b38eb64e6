//! The control plane: builds and publishes snapshots (reload, zone transfers) and serves the
//! admin HTTP endpoints. Nothing on the packet path waits for it.

pub mod admin;
pub mod build;
pub mod own_key;
pub mod own_key_loop;
pub mod pdns_api;
pub mod reload;
pub mod xfr;
pub mod zone_facts;
pub mod zones;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::state::Shared;
use crate::steer::probes::ProbePool;

/// Control-plane facts for `/status`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ControlStatus {
    pub config_file: String,
    pub config_hash: String,
    pub last_reload_unix: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_unix: Option<u64>,
    /// Settings changed in the file that only take effect after a restart.
    pub restart_required: Vec<String>,
    pub geoip_build_epoch: Option<u64>,
}

/// The control plane's own state, beside the data-plane handles it publishes to.
pub struct Control {
    pub data: Arc<Shared>,
    pub probes: Arc<ProbePool>,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Reloads never overlap.
    pub reload_lock: tokio::sync::Mutex<()>,
    pub status: Mutex<ControlStatus>,
    pub started_unix: u64,
    /// Bound DNS addresses, for `/status`.
    pub listen_addrs: Mutex<Vec<std::net::SocketAddr>>,
    /// `[zones].transfer` data.
    pub transfers: Arc<zones::Transfers>,
    /// `[dnssec.own_key]` state per zone.
    pub own_keys: own_key::OwnKeys,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Logs the end of each block (the limiter learns of it lazily, so the control plane watches
/// the blocked set once a second; it covers the most recent 1024 blocks started).
pub async fn log_block_ends(shared: Arc<Shared>) {
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
