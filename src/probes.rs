//! Probe pool: health checks behind `ifurlup` / `ifportup` / `ifurlextup`, shared between records.
//!
//! STUB: the API below is the contract; the implementation is being written.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// What is checked. Part of a probe's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Check {
    /// `ifurlup`: HTTP(S) GET of `url`, connection pinned to the candidate address
    /// (Host header and SNI from the URL).
    Http { url: String },
    /// `ifurlextup`: HTTP(S) GET of `url` resolved normally (not pinned); `addr` is only answered.
    HttpExternal { url: String },
    /// `ifportup`: TCP connect to candidate:port.
    Tcp { port: u16 },
}

/// Options that change how a target is probed. Part of a probe's identity (selectors are not).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckOptions {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures before DOWN (`minimumFailures`).
    pub fall: u32,
    /// Consecutive successes before UP again.
    pub rise: u32,
    pub stringmatch: Option<String>,
    pub useragent: String,
    /// 0 = no limit beyond `[probes].body_limit`.
    pub byteslimit: u64,
    /// Final status that means UP.
    pub httpcode: u16,
    pub headers: Vec<(String, String)>,
    /// Local address to probe from.
    pub source: Option<IpAddr>,
}

/// One probe: a candidate address and how it is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    pub addr: IpAddr,
    pub check: Check,
    pub options: CheckOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HealthState {
    /// Not probed to completion yet: counts as UP (documented).
    Unknown = 0,
    Up = 1,
    Down = 2,
}

/// Lock-free health flag read by the packet path and written by the probe task.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

impl Health {
    pub fn state(&self) -> HealthState {
        match self.0.load(Ordering::Relaxed) {
            1 => HealthState::Up,
            2 => HealthState::Down,
            _ => HealthState::Unknown,
        }
    }

    /// Unknown counts as UP: dnsteer never answers from an unknown state on purpose, see README.
    pub fn is_up(&self) -> bool {
        self.state() != HealthState::Down
    }

    pub fn set(&self, s: HealthState) {
        self.0.store(s as u8, Ordering::Relaxed);
    }
}

pub type HealthRef = Arc<Health>;

// ---- TEMPORARY stand-in until the probe pool lands -----------------------------------------
use std::collections::HashMap;

pub struct ProbePool;

impl ProbePool {
    pub fn new(_d: &crate::config::ProbeDefaults) -> Arc<ProbePool> {
        Arc::new(ProbePool)
    }
    pub async fn sync(&self, specs: &[ProbeSpec]) -> HashMap<ProbeSpec, HealthRef> {
        specs
            .iter()
            .map(|s| (s.clone(), Arc::new(Health::default())))
            .collect()
    }
    pub fn set_defaults(&self, _d: &crate::config::ProbeDefaults) {}
    pub fn status(&self) -> Vec<String> {
        Vec::new()
    }
    pub fn shutdown(&self) {}
}
