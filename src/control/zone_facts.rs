//! Zone facts learned from PowerDNS: the SOA and signing state of the zones that hold
//! in-process records (for NODATA answers and to know which zones are signed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};
use tokio::net::UdpSocket;

use crate::dns::name_wire;
use crate::forward::upstream::build_query;
use crate::steer::records::{ZoneInfo, Zones};

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

async fn ask(
    servers: &[SocketAddr],
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> Result<Message, ZoneError> {
    let mut last = String::from("no servers");
    for &server in servers {
        let id = fastrand::u16(..);
        let mut query = build_query(id, name, qtype);
        with_do_bit(&mut query);
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

/// Adds an OPT record with DO=1 (and a 4096-byte buffer) to a query built without EDNS, so
/// PowerDNS includes its RRSIGs.
fn with_do_bit(query: &mut Vec<u8>) {
    query[11] = 1; // ARCOUNT = 1
    query.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0x80, 0, 0, 0]);
}

/// The key tag of `r` if it is an RRSIG covering `covered` (RFC 4034 §3.1: type covered at
/// offset 0, key tag at offset 16).
fn rrsig_over(r: &hickory_proto::rr::Record, covered: RecordType) -> Option<u16> {
    if r.record_type() != RecordType::RRSIG {
        return None;
    }
    let RData::Unknown { rdata, .. } = &r.data else {
        return None;
    };
    let b = &rdata.anything;
    (b.len() > 18 && u16::from_be_bytes([b[0], b[1]]) == u16::from(covered))
        .then(|| u16::from_be_bytes([b[16], b[17]]))
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
    // Signed zones: which keys PowerDNS signs answers with (the SOA's RRSIGs), and the DNSKEY
    // RRset (what resolvers can verify signatures with).
    let signing_tags: Vec<u16> = m
        .answers
        .iter()
        .chain(m.authorities.iter())
        .filter_map(|r| rrsig_over(r, RecordType::SOA))
        .collect();
    let (dnskeys, dnskey_ttl) = match ask(servers, &apex_str, 48, timeout).await {
        Ok(k) => {
            let keys: Vec<(Vec<u8>, u32)> = k
                .answers
                .iter()
                .filter(|r| r.record_type() == RecordType::DNSKEY)
                .filter_map(|r| match &r.data {
                    RData::Unknown { rdata, .. } => Some((rdata.anything.clone(), r.ttl)),
                    _ => None,
                })
                .collect();
            let ttl = keys.iter().map(|k| k.1).min().unwrap_or(0);
            (keys.into_iter().map(|k| k.0).collect::<Vec<_>>(), ttl)
        }
        Err(_) => (Vec::new(), 0),
    };
    let signed = !dnskeys.is_empty();
    Ok((
        apex_str,
        ZoneInfo {
            apex_wire: name_wire(&apex),
            soa_rdata: rdata,
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

    #[test]
    fn wire_names() {
        let n = hickory_proto::rr::Name::from_ascii("Example.TEST.").unwrap();
        assert_eq!(name_wire(&n), b"\x07example\x04test\x00");
        assert_eq!(name_wire(&hickory_proto::rr::Name::root()), b"\x00");
    }
}
