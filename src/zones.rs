//! Zones, from PowerDNS (control plane): the SOA and signing facts of the zones that hold
//! in-process records, and the LUA records of `[zones].transfer` zones, kept current by SOA
//! serial polling and NOTIFY and answered in-process (see `xfr` for the wire side).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use crate::records::{ZoneInfo, Zones};
use crate::upstream::build_query;

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("no upstream answered: {0}")]
    NoAnswer(String),
    #[error("no SOA found for {0}")]
    NoSoa(String),
}

impl ZoneError {
    pub fn kind(&self) -> &'static str {
        match self {
            ZoneError::NoAnswer(_) => "no_answer",
            ZoneError::NoSoa(_) => "no_soa",
        }
    }
}

/// Uncompressed, lower-case wire form of a name.
pub fn name_wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

async fn ask(
    servers: &[SocketAddr],
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> Result<Message, ZoneError> {
    let mut last = String::from("no servers");
    for &server in servers {
        let id = fastrand::u16(..);
        let query = build_query(id, name, qtype);
        let bind = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let attempt = async {
            let sock = UdpSocket::bind(bind).await?;
            sock.connect(server).await?;
            sock.send(&query).await?;
            let mut buf = vec![0u8; 65_535];
            loop {
                let n = sock.recv(&mut buf).await?;
                if n >= 2 && buf[..2] == id.to_be_bytes() {
                    return Message::from_vec(&buf[..n])
                        .map_err(|e| std::io::Error::other(e.to_string()));
                }
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(m)) => return Ok(m),
            Ok(Err(e)) => last = format!("{server}: {e}"),
            Err(_) => last = format!("{server}: timed out"),
        }
    }
    Err(ZoneError::NoAnswer(last))
}

/// Finds the zone holding `name` (presentation, absolute) and its SOA and signing status.
pub async fn learn(
    servers: &[SocketAddr],
    name: &str,
    timeout: Duration,
) -> Result<(String, ZoneInfo), ZoneError> {
    let m = ask(servers, name, 6, timeout).await?;
    let soa = m
        .answers
        .iter()
        .chain(m.authorities.iter())
        .find_map(|r| match &r.data {
            RData::SOA(soa) if r.record_type() == RecordType::SOA => {
                Some((r.name.clone(), r.ttl, soa.clone()))
            }
            _ => None,
        })
        .ok_or_else(|| ZoneError::NoSoa(name.to_string()))?;
    let (apex, ttl, soa) = soa;
    let mut rdata = name_wire(&soa.mname);
    rdata.extend_from_slice(&name_wire(&soa.rname));
    for v in [
        soa.serial,
        soa.refresh as u32,
        soa.retry as u32,
        soa.expire as u32,
        soa.minimum,
    ] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    let apex_str = apex.to_lowercase().to_ascii();
    let apex_str = if apex_str.ends_with('.') {
        apex_str
    } else {
        format!("{apex_str}.")
    };
    let signed = match ask(servers, &apex_str, 48, timeout).await {
        Ok(k) => k
            .answers
            .iter()
            .any(|r| r.record_type() == RecordType::DNSKEY),
        Err(_) => false,
    };
    Ok((
        apex_str,
        ZoneInfo {
            apex_wire: name_wire(&apex),
            soa_rdata: rdata,
            negative_ttl: ttl.min(soa.minimum),
            signed,
            soa_ttl: ttl,
        },
    ))
}

/// Learns the zones of every name; names whose zone cannot be learned keep `previous` facts.
pub async fn learn_all(
    servers: &[SocketAddr],
    names: &[String],
    timeout: Duration,
    previous: &Zones,
) -> Zones {
    let mut zones: Zones = HashMap::new();
    for name in names {
        if zones.keys().any(|apex| is_subdomain(name, apex)) {
            continue;
        }
        match learn(servers, name, timeout).await {
            Ok((apex, info)) => {
                zones.insert(apex, info);
            }
            Err(e) => {
                tracing::warn!(target: "dnsteer::zones", name, error = %e, "cannot learn the zone SOA; NODATA answers go without SOA until it is learned");
                if let Some((apex, info)) =
                    previous.iter().find(|(apex, _)| is_subdomain(name, apex))
                {
                    zones.insert(apex.clone(), info.clone());
                }
            }
        }
    }
    zones
}

/// True if `name` is `apex` or below it (both lower-case, absolute).
pub fn is_subdomain(name: &str, apex: &str) -> bool {
    apex == "." || name == apex || name.ends_with(&format!(".{apex}"))
}

// ---------------------------------------------------------------------------------------------
// Transferred zones
// ---------------------------------------------------------------------------------------------

/// What dnsteer knows of one `[zones].transfer` zone.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TransferStatus {
    pub zone: String,
    /// Serial of the data in use (None: no transfer succeeded yet).
    pub serial: Option<u32>,
    pub records: usize,
    /// LUA records left to PowerDNS (not A/AAAA/CNAME/TXT, or cut by re-chunking).
    pub unsupported: Vec<crate::xfr::Unsupported>,
    pub last_transfer_unix: Option<u64>,
    pub last_error: Option<String>,
    pub transfers_ok: u64,
    pub transfers_failed: u64,
}

/// Transferred zone data shared by the transfer loop, reloads and `/status`.
#[derive(Default)]
pub struct Transfers {
    zones: std::sync::Mutex<HashMap<String, (TransferStatus, Vec<crate::config::RecordSpec>)>>,
}

/// Whole-transfer time limit per server.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// Per attempt of the serial poll (a small UDP exchange; resent up to `xfr::SOA_ATTEMPTS`
/// times): a lost packet costs a second, not the whole transfer timeout.
const SOA_TIMEOUT: Duration = Duration::from_secs(1);
/// NOTIFYs queued for the transfer loop; more are dropped (a refresh is pending anyway).
pub const NOTIFY_QUEUE: usize = 64;

impl Transfers {
    /// Every transferred record spec, for compiling (zones in name order).
    pub fn specs(&self) -> Vec<crate::config::RecordSpec> {
        let zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = zones.keys().collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|z| zones[z].1.iter().cloned())
            .collect()
    }

    pub fn status(&self) -> Vec<TransferStatus> {
        let zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<TransferStatus> = zones.values().map(|(s, _)| s.clone()).collect();
        v.sort_by(|a, b| a.zone.cmp(&b.zone));
        v
    }

    fn serial(&self, zone: &str) -> Option<u32> {
        self.zones
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(zone)
            .and_then(|(s, _)| s.serial)
    }

    /// Forgets zones no longer configured.
    fn retain(&self, wanted: &[String]) -> bool {
        let mut zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        let before = zones.len();
        zones.retain(|z, _| wanted.contains(z));
        zones.len() != before
    }

    /// Transfers `zone` if its serial changed (or always with `force`). Ok(true) when new data
    /// was stored; a failed transfer keeps the previous data.
    pub async fn refresh(
        &self,
        servers: &[SocketAddr],
        zone: &str,
        force: bool,
    ) -> Result<bool, String> {
        let known = self.serial(zone);
        if !force && let Some(known) = known {
            let serial = crate::xfr::soa_serial(servers, zone, SOA_TIMEOUT)
                .await
                .map_err(|e| e.to_string());
            match serial {
                Ok(s) if s == known => return Ok(false),
                Ok(_) => {}
                Err(e) => return Err(self.failed(zone, e)),
            }
        }
        match crate::xfr::transfer(servers, zone, TRANSFER_TIMEOUT).await {
            Ok(data) => {
                for u in &data.unsupported {
                    tracing::info!(target: "dnsteer::zones", zone, name = %u.name, rtype = %u.rtype, reason = %u.reason, "LUA record left to PowerDNS");
                }
                tracing::info!(target: "dnsteer::zones", zone, serial = data.serial, records = data.records.len(), "zone transferred");
                let mut zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
                let entry = zones.entry(zone.to_string()).or_default();
                entry.0.zone = zone.to_string();
                entry.0.serial = Some(data.serial);
                entry.0.records = data.records.len();
                entry.0.unsupported = data.unsupported;
                entry.0.last_transfer_unix = Some(crate::app::unix_now());
                entry.0.last_error = None;
                entry.0.transfers_ok += 1;
                entry.1 = data.records;
                Ok(true)
            }
            Err(e) => Err(self.failed(zone, e.to_string())),
        }
    }

    fn failed(&self, zone: &str, error: String) -> String {
        tracing::warn!(target: "dnsteer::zones", zone, error = %error, "zone transfer failed; the previous records keep serving");
        let mut zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        let entry = zones.entry(zone.to_string()).or_default();
        entry.0.zone = zone.to_string();
        entry.0.last_error = Some(error.clone());
        entry.0.transfers_failed += 1;
        error
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

/// Who may send NOTIFY: `[zones].notify_from`, or the upstream servers' addresses.
pub fn notify_allowed(config: &crate::config::Config, src: std::net::IpAddr) -> bool {
    match &config.zones.notify_from {
        Some(list) => list.contains(&src),
        None => config
            .upstream
            .servers
            .iter()
            .any(|s| s.ip().to_canonical() == src),
    }
}

/// Keeps the transferred zones current: polls SOA serials every `refresh`, transfers on a
/// change or a NOTIFY, retries failures with backoff, and rebuilds the record table when a
/// zone's records changed.
pub async fn run(
    shared: std::sync::Arc<crate::app::Shared>,
    mut notify: tokio::sync::mpsc::Receiver<String>,
) {
    let mut backoff: HashMap<String, (Duration, tokio::time::Instant)> = HashMap::new();
    // Zones named by a NOTIFY: transferred without trusting the serial (PowerDNS's packet
    // cache may still serve the old SOA for up to its cache-ttl).
    let mut forced: std::collections::HashSet<String> = std::collections::HashSet::new();
    let first = shared.snapshot.load_full();
    let mut facts_due =
        tokio::time::Instant::now() + facts_interval(&first.zones, &first.record_names);
    drop(first);
    loop {
        let config = shared.snapshot.load().config.clone();
        let refresh = config.zones.refresh;
        let mut changed = shared.transfers.retain(&config.zones.transfer);
        let now = tokio::time::Instant::now();
        for zone in &config.zones.transfer {
            if backoff.get(zone).is_some_and(|(_, until)| *until > now) {
                continue;
            }
            let force = forced.remove(zone);
            match shared
                .transfers
                .refresh(&config.upstream.servers, zone, force)
                .await
            {
                Ok(c) => {
                    changed |= c;
                    backoff.remove(zone);
                }
                Err(_) => {
                    let next = backoff.get(zone).map_or(Duration::from_secs(1), |(d, _)| {
                        (*d * 2).min(refresh.max(Duration::from_secs(1)))
                    });
                    backoff.insert(zone.clone(), (next, now + next));
                }
            }
        }
        if !changed && tokio::time::Instant::now() >= facts_due {
            // SOA/DNSKEY facts of the zones holding in-process records, on the SOA TTL.
            let snap = shared.snapshot.load_full();
            let fresh = learn_all(
                &config.upstream.servers,
                &snap.record_names,
                config.upstream.timeout,
                &snap.zones,
            )
            .await;
            changed = fresh != snap.zones;
            facts_due = tokio::time::Instant::now() + facts_interval(&fresh, &snap.record_names);
        }
        if changed && let Err(e) = crate::reload::rebuild(&shared).await {
            tracing::error!(target: "dnsteer::zones", error = %e, "cannot rebuild the record table after a zone change");
        }
        let poll = if config.zones.transfer.is_empty() {
            Duration::from_secs(5)
        } else {
            refresh
        };
        let wait = tokio::time::sleep(
            poll.min(facts_due.saturating_duration_since(tokio::time::Instant::now())),
        );
        tokio::pin!(wait);
        tokio::select! {
            _ = &mut wait => {}
            Some(zone) = notify.recv() => {
                tracing::info!(target: "dnsteer::zones", zone = %zone, "NOTIFY received: transferring the zone now");
                backoff.remove(&zone);
                forced.insert(zone);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        assert!(is_subdomain("a.example.test.", "example.test."));
        assert!(is_subdomain("example.test.", "example.test."));
        assert!(!is_subdomain("aexample.test.", "example.test."));
        assert!(is_subdomain("x.", "."));
    }

    #[test]
    fn wire_names() {
        let n = Name::from_ascii("Example.TEST.").unwrap();
        assert_eq!(name_wire(&n), b"\x07example\x04test\x00");
        assert_eq!(name_wire(&Name::root()), b"\x00");
    }
}
