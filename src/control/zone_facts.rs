//! Zone facts learned from PowerDNS: the SOA and signing state of the zones that hold
//! in-process records (for NODATA answers and to know which zones are signed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::dns::message::{Message, Rr, Soa, WireError};
use crate::dns::{TYPE_DNSKEY, TYPE_SOA, build_query, exchange_udp, name_from_text, name_text};
use crate::steer::records::{ZoneInfo, Zones};

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("{0:?} is not a name that can be asked")]
    BadName(String),
    #[error("no upstream answered: {0}")]
    NoAnswer(String),
    #[error("no SOA found for {0}")]
    NoSoa(String),
}

impl ZoneError {
    pub fn kind(&self) -> &'static str {
        match self {
            ZoneError::BadName(_) => "bad_name",
            ZoneError::NoAnswer(_) => "no_answer",
            ZoneError::NoSoa(_) => "no_soa",
        }
    }
}

/// Asks `servers` in turn for `name_wire`/`qtype` until one gives an answer that `read`
/// accepts; an answer `read` cannot make sense of counts as no answer from that server.
async fn ask<T>(
    servers: &[SocketAddr],
    name_wire: &[u8],
    qtype: u16,
    timeout: Duration,
    read: impl Fn(&Message<'_>) -> Result<T, WireError>,
) -> Result<T, ZoneError> {
    let mut last = String::from("no servers");
    for &server in servers {
        let query = build_query(fastrand::u16(..), name_wire, qtype, None);
        match exchange_udp(server, &query, timeout).await {
            Ok(answer) => match Message::parse(&answer).and_then(|m| read(&m)) {
                Ok(t) => return Ok(t),
                Err(e) => last = format!("{server}: {e}"),
            },
            Err(e) => last = format!("{server}: {e}"),
        }
    }
    Err(ZoneError::NoAnswer(last))
}

/// The first SOA record of the answer, then authority, section: owner, TTL and RDATA.
fn first_soa(m: &Message<'_>) -> Result<Option<(Vec<u8>, u32, Soa)>, WireError> {
    let is_soa = |r: &&Rr<'_>| r.rtype == TYPE_SOA;
    match m.answers.iter().chain(&m.authorities).find(is_soa) {
        Some(rr) => Ok(Some((rr.name.clone(), rr.ttl, m.soa(rr)?))),
        None => Ok(None),
    }
}

/// Finds the zone holding `name` (presentation, absolute) and its SOA and signing status.
/// A zone is signed when PowerDNS answers its DNSKEY query with a DNSKEY record.
pub async fn learn(
    servers: &[SocketAddr],
    name: &str,
    timeout: Duration,
) -> Result<(String, ZoneInfo), ZoneError> {
    let wire = name_from_text(name).map_err(|_| ZoneError::BadName(name.to_string()))?;
    let (mut apex_wire, ttl, soa) = ask(servers, &wire, TYPE_SOA, timeout, first_soa)
        .await?
        .ok_or_else(|| ZoneError::NoSoa(name.to_string()))?;
    apex_wire.make_ascii_lowercase();
    let has_dnskey = |m: &Message<'_>| Ok(m.answers.iter().any(|r| r.rtype == TYPE_DNSKEY));
    let signed = ask(servers, &apex_wire, TYPE_DNSKEY, timeout, has_dnskey)
        .await
        .unwrap_or(false);
    Ok((
        name_text(&apex_wire),
        ZoneInfo {
            apex_wire,
            soa_rdata: soa.to_rdata(),
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
                tracing::warn!(target: "dnsteer::control::zones", name, error = %e, "cannot learn the zone SOA; NODATA answers go without SOA until it is learned");
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
}
