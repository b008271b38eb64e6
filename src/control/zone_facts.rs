//! Zone facts learned from PowerDNS: the SOA and signing state of the zones that hold
//! in-process records (for NODATA answers and to know which zones are signed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::dns::message::{Message, Rr, Soa, WireError};
use crate::dns::{
    QueryEdns, TYPE_DNSKEY, TYPE_SOA, build_query, exchange_udp_with, name_from_text, name_text,
};
use crate::steer::records::{ZoneInfo, Zones};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ZoneError {
    #[error("{0:?} is not a name that can be asked")]
    BadName(String),
    #[error("no upstream answered: {0}")]
    NoAnswer(String),
    #[error("no SOA found for {0}")]
    NoSoa(String),
}

/// Asks `servers` in turn for `name_wire`/`qtype` until one gives an answer that `read`
/// accepts; an answer `read` cannot make sense of counts as no answer from that server.
async fn ask<T>(
    servers: &[SocketAddr],
    proxied: bool,
    name_wire: &[u8],
    qtype: u16,
    timeout: Duration,
    read: impl Fn(&Message<'_>) -> Result<T, WireError>,
) -> Result<T, ZoneError> {
    let mut last = String::from("no servers");
    // DO=1 so a signed zone's answer carries its RRSIGs (whose key tags tell which keys
    // PowerDNS signs with).
    let edns = Some(QueryEdns {
        udp_size: 1232,
        dnssec_ok: true,
    });
    for &server in servers {
        let query = build_query(fastrand::u16(..), name_wire, qtype, edns);
        match exchange_udp_with(server, proxied, &query, timeout).await {
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

/// RRSIG, RFC 4034.
const TYPE_RRSIG: u16 = 46;

/// Key tags of the RRSIGs covering SOA in the answer and authority sections (RFC 4034 §3.1:
/// type covered at offset 0, key tag at offset 16).
fn soa_signing_tags(m: &Message<'_>) -> Vec<u16> {
    m.answers
        .iter()
        .chain(&m.authorities)
        .filter(|r| r.rtype == TYPE_RRSIG && r.rdata.len() > 18)
        .filter(|r| u16::from_be_bytes([r.rdata[0], r.rdata[1]]) == TYPE_SOA)
        .map(|r| u16::from_be_bytes([r.rdata[16], r.rdata[17]]))
        .collect()
}

/// The DNSKEY RDATAs of the answer and their (smallest) TTL.
fn dnskeys(m: &Message<'_>) -> Result<(Vec<Vec<u8>>, u32), WireError> {
    let keys: Vec<&Rr<'_>> = m
        .answers
        .iter()
        .filter(|r| r.rtype == TYPE_DNSKEY)
        .collect();
    let ttl = keys.iter().map(|r| r.ttl).min().unwrap_or(0);
    Ok((keys.iter().map(|r| r.rdata.to_vec()).collect(), ttl))
}

/// Finds the zone holding `name` (presentation, absolute) and its SOA and signing status.
/// A zone is signed when PowerDNS answers its DNSKEY query with a DNSKEY record.
pub(crate) async fn learn(
    servers: &[SocketAddr],
    proxied: bool,
    name: &str,
    timeout: Duration,
) -> Result<(String, ZoneInfo), ZoneError> {
    let wire = name_from_text(name).map_err(|_| ZoneError::BadName(name.to_string()))?;
    let soa_and_tags = |m: &Message<'_>| Ok((first_soa(m)?, soa_signing_tags(m)));
    let (soa, signing_tags) = ask(servers, proxied, &wire, TYPE_SOA, timeout, soa_and_tags).await?;
    let (mut apex_wire, ttl, soa) = soa.ok_or_else(|| ZoneError::NoSoa(name.to_string()))?;
    apex_wire.make_ascii_lowercase();
    let (dnskeys, dnskey_ttl) = ask(servers, proxied, &apex_wire, TYPE_DNSKEY, timeout, dnskeys)
        .await
        .unwrap_or_default();
    let signed = !dnskeys.is_empty();
    Ok((
        name_text(&apex_wire),
        ZoneInfo {
            apex_wire,
            soa_rdata: soa.to_rdata(),
            negative_ttl: ttl.min(soa.minimum),
            signed,
            soa_ttl: ttl,
            dnskeys,
            dnskey_ttl,
            signing_tags,
            ..ZoneInfo::default()
        },
    ))
}

/// Learns the zones of every name; names whose zone cannot be learned keep `previous` facts.
pub(crate) async fn learn_all(
    servers: &[SocketAddr],
    proxied: bool,
    names: &[String],
    timeout: Duration,
    previous: &Zones,
) -> Zones {
    let mut zones: Zones = HashMap::new();
    for name in names {
        if zones.keys().any(|apex| is_subdomain(name, apex)) {
            continue;
        }
        match learn(servers, proxied, name, timeout).await {
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
pub(crate) fn is_subdomain(name: &str, apex: &str) -> bool {
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
