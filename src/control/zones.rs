//! The LUA records of `[zones].transfer` zones, kept current by SOA serial polling and NOTIFY
//! and answered in-process (see `xfr` for the wire side); this loop also re-learns the zone
//! facts (`zone_facts`) on their SOA TTL.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::proto::{MetricFamily, MetricType};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Control;
use super::build::Transferred;
use super::zone_facts::{is_subdomain, learn_all};
use crate::config::Config;
use crate::steer::records::{Rejected, Zones};
use crate::steer::wildcard::ZoneNames;
use crate::telemetry::metrics::family;

/// What dnsteer knows of one `[zones].transfer` zone.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct TransferStatus {
    pub zone: String,
    /// Serial of the data in use (None: no transfer succeeded yet).
    pub serial: Option<u32>,
    pub records: usize,
    /// LUA records left to PowerDNS (not A/AAAA/CNAME/TXT, or cut by re-chunking).
    pub unsupported: Vec<crate::control::xfr::Unsupported>,
    pub(crate) last_transfer_unix: Option<u64>,
    pub last_error: Option<String>,
    pub(crate) transfers_ok: u64,
    pub(crate) transfers_failed: u64,
}

/// Transferred zone data ctl by the transfer loop, reloads and `/status`.
#[derive(Default)]
pub(crate) struct Transfers {
    zones: std::sync::Mutex<HashMap<String, (TransferStatus, Vec<crate::config::RecordSpec>)>>,
    /// Every name of each transferred zone (for wildcards), by zone.
    names: std::sync::Mutex<HashMap<String, Arc<ZoneNames>>>,
}

/// Whole-transfer time limit per server.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// Per attempt of the serial poll (a small UDP exchange; resent up to `xfr::SOA_ATTEMPTS`
/// times): a lost packet costs a second, not the whole transfer timeout.
const SOA_TIMEOUT: Duration = Duration::from_secs(1);
/// NOTIFYs queued for the transfer loop; more are dropped (a refresh is pending anyway).
pub(crate) const NOTIFY_QUEUE: usize = 64;

impl Transfers {
    /// Every transferred record spec and zone's names, for compiling (zones in name order).
    pub(crate) fn specs(&self) -> Transferred {
        let zones = self
            .zones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut names: Vec<&String> = zones.keys().collect();
        names.sort();
        let specs = names
            .iter()
            .flat_map(|z| zones[*z].1.iter().cloned())
            .collect();
        let zone_names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let names = names
            .iter()
            .filter_map(|z| zone_names.get(*z).cloned())
            .collect();
        Transferred { specs, names }
    }

    pub(crate) fn status(&self) -> Vec<TransferStatus> {
        let zones = self
            .zones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<TransferStatus> = zones.values().map(|(s, _)| s.clone()).collect();
        v.sort_by(|a, b| a.zone.cmp(&b.zone));
        v
    }

    fn serial(&self, zone: &str) -> Option<u32> {
        self.zones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(zone)
            .and_then(|(s, _)| s.serial)
    }

    /// Forgets zones no longer configured.
    fn retain(&self, wanted: &[String]) -> bool {
        let mut zones = self
            .zones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = zones.len();
        zones.retain(|z, _| wanted.contains(z));
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|z, _| wanted.contains(z));
        zones.len() != before
    }

    /// Transfers `zone` if its serial changed (or always with `force`). Ok(true) when new data
    /// was stored; a failed transfer keeps the previous data.
    pub(crate) async fn refresh(
        &self,
        servers: &[SocketAddr],
        proxied: bool,
        zone: &str,
        force: bool,
    ) -> Result<bool, String> {
        let known = self.serial(zone);
        if !force && let Some(known) = known {
            let serial = crate::control::xfr::soa_serial_with(servers, proxied, zone, SOA_TIMEOUT)
                .await
                .map_err(|e| e.to_string());
            match serial {
                Ok(s) if s == known => return Ok(false),
                Ok(_) => {}
                Err(e) => return Err(self.failed(zone, e)),
            }
        }
        match crate::control::xfr::transfer_with(servers, proxied, zone, TRANSFER_TIMEOUT).await {
            Ok(data) => {
                for u in &data.unsupported {
                    tracing::info!(target: "dnsteer::control::zones", zone, name = %u.name, rtype = %u.rtype, reason = %u.reason, "LUA record left to PowerDNS");
                }
                tracing::info!(target: "dnsteer::control::zones", zone, serial = data.serial, records = data.records.len(), "zone transferred");
                self.names
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(zone.to_string(), data.names.clone());
                self.update(zone, |(status, records)| {
                    status.serial = Some(data.serial);
                    status.records = data.records.len();
                    status.unsupported = data.unsupported;
                    status.last_transfer_unix = Some(super::unix_now());
                    status.last_error = None;
                    status.transfers_ok += 1;
                    *records = data.records;
                });
                Ok(true)
            }
            Err(e) => Err(self.failed(zone, e.to_string())),
        }
    }

    fn failed(&self, zone: &str, error: String) -> String {
        tracing::warn!(target: "dnsteer::control::zones", zone, error = %error, "zone transfer failed; the previous records keep serving");
        self.update(zone, |(status, _)| {
            status.last_error = Some(error.clone());
            status.transfers_failed += 1;
        });
        error
    }

    /// Changes `zone`'s status and records under the lock (its entry made on first use).
    fn update(
        &self,
        zone: &str,
        f: impl FnOnce(&mut (TransferStatus, Vec<crate::config::RecordSpec>)),
    ) {
        let mut zones = self
            .zones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = zones.entry(zone.to_string()).or_default();
        entry.0.zone = zone.to_string();
        f(entry);
    }

    /// Per transferred zone: serial, transfers by result, records answered here vs by PowerDNS.
    pub(crate) fn families(&self, rejected: &[Rejected]) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        let status = self.status();
        out.push(family(
            "dnsteer_zone_serial",
            "SOA serial of the transferred zone data in use.",
            MetricType::GAUGE,
            status
                .iter()
                .map(|z| {
                    (
                        vec![("zone", z.zone.clone())],
                        f64::from(z.serial.unwrap_or(0)),
                    )
                })
                .collect(),
        ));
        out.push(family(
            "dnsteer_zone_transfers_total",
            "Zone transfers from PowerDNS, by result.",
            MetricType::COUNTER,
            status
                .iter()
                .flat_map(|z| {
                    [
                        (
                            vec![("zone", z.zone.clone()), ("result", "ok".into())],
                            z.transfers_ok as f64,
                        ),
                        (
                            vec![("zone", z.zone.clone()), ("result", "failed".into())],
                            z.transfers_failed as f64,
                        ),
                    ]
                })
                .collect(),
        ));
        out.push(family(
            "dnsteer_zone_lua_records",
            "LUA records of transferred zones, by who answers them (dnsteer, or PowerDNS because dnsteer cannot compile them).",
            MetricType::GAUGE,
            status
                .iter()
                .flat_map(|z| {
                    let not_compiled = rejected.iter().filter(|r| r.zone() == z.zone).count();
                    let left = not_compiled + z.unsupported.len();
                    [
                        (vec![("zone", z.zone.clone()), ("answered_by", "dnsteer".into())], z.records.saturating_sub(not_compiled) as f64),
                        (vec![("zone", z.zone.clone()), ("answered_by", "powerdns".into())], left as f64),
                    ]
                })
                .collect(),
        ));
        out
    }
}

/// When to re-learn zone facts: the smallest SOA TTL (5 s – 1 h), or 5 s while a record's
/// zone is still unknown (upstream was down when it was first asked).
fn facts_interval(zones: &Zones, names: &[String]) -> Duration {
    let all_known = names
        .iter()
        .all(|n| zones.keys().any(|apex| is_subdomain(n, apex)));
    if !all_known {
        return Duration::from_secs(5);
    }
    let ttl = zones.values().map(|z| z.soa_ttl).min().unwrap_or(3600);
    Duration::from_secs(u64::from(ttl).clamp(5, 3600))
}

/// Keeps the transferred zones current: polls SOA serials every `refresh`, transfers on a
/// change or a NOTIFY, retries failures with backoff, and rebuilds the record table when a
/// zone's records changed.
pub(crate) async fn run(ctl: Arc<Control>, mut notify: mpsc::Receiver<String>) {
    let mut schedule = Schedule::new(&ctl);
    loop {
        let config = ctl.data.snapshot.load().config.clone();
        let mut changed = ctl.transfers.retain(&config.zones.transfer);
        changed |= schedule.refresh_zones(&ctl, &config).await;
        if !changed && Instant::now() >= schedule.facts_due {
            changed = schedule.relearn_facts(&ctl, &config).await;
        }
        changed |= signer_change_due(&ctl);
        if changed && let Err(e) = crate::control::reload::rebuild(&ctl).await {
            tracing::error!(target: "dnsteer::control::zones", error = %e, "cannot rebuild the record table after a zone change");
        }
        let wait = tokio::time::sleep(schedule.next_wait(&ctl, &config));
        tokio::pin!(wait);
        tokio::select! {
            _ = &mut wait => {}
            Some(zone) = notify.recv() => schedule.notified(zone),
        }
    }
}

/// When the transfer loop next looks at each zone and at the zone facts.
struct Schedule {
    /// Zones whose last refresh failed: the current backoff, and when to try again.
    backoff: HashMap<String, (Duration, Instant)>,
    /// Zones named by a NOTIFY: transferred without trusting the serial (PowerDNS's packet
    /// cache may still serve the old SOA for up to its cache-ttl).
    forced: HashSet<String>,
    facts_due: Instant,
}

impl Schedule {
    fn new(ctl: &Control) -> Schedule {
        let first = ctl.data.snapshot.load_full();
        Schedule {
            backoff: HashMap::new(),
            forced: HashSet::new(),
            facts_due: Instant::now() + facts_interval(&first.zones, &first.record_names),
        }
    }

    /// Refreshes every zone of `config` that is not backing off; true when the records of
    /// one changed.
    async fn refresh_zones(&mut self, ctl: &Control, config: &Config) -> bool {
        let mut changed = false;
        let now = Instant::now();
        for zone in &config.zones.transfer {
            if self
                .backoff
                .get(zone)
                .is_some_and(|(_, until)| *until > now)
            {
                continue;
            }
            let force = self.forced.remove(zone);
            match ctl
                .transfers
                .refresh(
                    &config.upstream.servers,
                    config.upstream.proxies_own_queries(),
                    zone,
                    force,
                )
                .await
            {
                Ok(c) => {
                    if c && let Some(cache) = &ctl.data.cache {
                        // New data (serial change, or a NOTIFY's forced transfer): answers
                        // cached before it are dropped again, as the NOTIFY already did.
                        cache.invalidate_zone(zone);
                    }
                    changed |= c;
                    self.backoff.remove(zone);
                }
                Err(_) => self.back_off(zone, config.zones.refresh, now),
            }
        }
        changed
    }

    /// After a failed refresh of `zone`: waits 1 s, then twice as long each time, up to
    /// `refresh`.
    fn back_off(&mut self, zone: &str, refresh: Duration, now: Instant) {
        let next = self
            .backoff
            .get(zone)
            .map_or(Duration::from_secs(1), |(d, _)| {
                (*d * 2).min(refresh.max(Duration::from_secs(1)))
            });
        self.backoff.insert(zone.to_owned(), (next, now + next));
    }

    /// Re-learns the SOA/DNSKEY facts of the zones holding in-process records (due on their
    /// SOA TTL); true when they changed.
    async fn relearn_facts(&mut self, ctl: &Control, config: &Config) -> bool {
        let snap = ctl.data.snapshot.load_full();
        let fresh = learn_all(
            &config.upstream.servers,
            config.upstream.proxies_own_queries(),
            &snap.record_names,
            config.upstream.timeout,
            &snap.zones,
        )
        .await;
        let changed = facts_changed(&fresh, &snap.zones);
        self.facts_due = Instant::now() + facts_interval(&fresh, &snap.record_names);
        changed
    }

    /// How long the loop sleeps unless a NOTIFY comes: until the next serial poll, the zone
    /// facts' due time, or a waiting key becoming usable (so signing starts on time).
    fn next_wait(&self, ctl: &Control, config: &Config) -> Duration {
        let poll = if config.zones.transfer.is_empty() {
            Duration::from_secs(5)
        } else {
            config.zones.refresh
        };
        let review = ctl.data.snapshot.load().signer_review_unix.map(|at| {
            Duration::from_secs(at.saturating_sub(super::unix_now()))
                .max(Duration::from_millis(100))
        });
        poll.min(self.facts_due.saturating_duration_since(Instant::now()))
            .min(review.unwrap_or(poll))
    }

    /// A NOTIFY for `zone`: transferred on the next pass, whatever its serial and backoff.
    fn notified(&mut self, zone: String) {
        tracing::info!(target: "dnsteer::control::zones", zone = %zone, "NOTIFY received: transferring the zone now");
        self.backoff.remove(&zone);
        self.forced.insert(zone);
    }
}

/// Whether a rebuild is due for signing: a published key whose DNSKEY TTL has now passed
/// goes live.
fn signer_change_due(ctl: &Control) -> bool {
    let snap = ctl.data.snapshot.load();
    signer_due(&snap.zones, super::unix_now())
        || snap
            .signer_review_unix
            .is_some_and(|at| at <= super::unix_now())
}

/// Whether freshly learned facts differ from the linked ones (whose signer state is derived,
/// not learned, so it does not count).
fn facts_changed(fresh: &Zones, linked: &Zones) -> bool {
    fresh.len() != linked.len()
        || fresh.iter().any(|(apex, f)| {
            linked.get(apex).is_none_or(|l| {
                let mut l = l.clone();
                l.signer = f.signer.clone();
                l != *f
            })
        })
}

/// True when a zone waits for a published key's DNSKEY TTL and that time has come.
fn signer_due(zones: &Zones, now: u64) -> bool {
    zones.values().any(|z| {
        matches!(z.signer, crate::dnssec::SignerState::Waiting { usable_at_unix, .. } if usable_at_unix <= now)
    })
}
