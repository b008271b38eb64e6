//! One-shot queries from dnsteer itself (health checks, SOA and zone-fact learning, zone
//! transfers): the query packet, and one UDP exchange with one server.
//!
//! A DNSKEY query with DO=1, for example:
//! `exchange_udp_with(server, proxied, &build_query(id, &apex, TYPE_DNSKEY, Some(QueryEdns {
//! udp_size: 1232, dnssec_ok: true })), timeout)`, then `message::Message::parse` for its
//! answer records.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::framing::MAX_FRAME;
use super::query::{ParseError, parse_query};
use super::rewrite::response_matches;
use super::{CLASS_IN, EDNS_DO, HEADER_LEN, TYPE_OPT};

/// The OPT record of a query dnsteer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryEdns {
    /// Largest UDP answer we accept.
    pub udp_size: u16,
    /// DO: ask for DNSSEC records (RRSIGs) in the answer.
    pub dnssec_ok: bool,
}

/// A query for `name_wire` (uncompressed wire form, e.g. from [`super::name_from_text`]),
/// `qtype`, class IN. RD=0: PowerDNS is authoritative, recursion is never wanted. With `edns`,
/// an OPT record (version 0, no options) follows in the additional section.
pub fn build_query(id: u16, name_wire: &[u8], qtype: u16, edns: Option<QueryEdns>) -> Vec<u8> {
    let mut q = Vec::with_capacity(HEADER_LEN + name_wire.len() + 4 + 11);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    q.extend_from_slice(&u16::from(edns.is_some()).to_be_bytes());
    q.extend_from_slice(name_wire);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(e) = edns {
        let ttl = if e.dnssec_ok { EDNS_DO } else { 0 };
        q.push(0);
        q.extend_from_slice(&TYPE_OPT.to_be_bytes());
        q.extend_from_slice(&e.udp_size.to_be_bytes());
        q.extend_from_slice(&ttl.to_be_bytes());
        q.extend_from_slice(&[0, 0]);
    }
    q
}

/// Why a one-shot exchange got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out")]
    Timeout(Duration),
    #[error("the query to send does not parse: {0}")]
    BadQuery(ParseError),
}

impl ExchangeError {
    /// Static label for metrics.
    #[cfg(test)]
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ExchangeError::Io(_) => "io",
            ExchangeError::Timeout(_) => "timeout",
            ExchangeError::BadQuery(_) => "bad_query",
        }
    }
}

/// [`exchange_udp_with`] without a PROXY header.
#[cfg(test)]
pub(crate) async fn exchange_udp(
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ExchangeError> {
    exchange_udp_with(server, false, query, timeout).await
}

/// Sends `query` to `server` from a fresh connected UDP socket and returns the first datagram
/// that answers it (QR=1, the query's ID and question); anything else is stale or spoofed and
/// ignored. `timeout` bounds the whole exchange. The answer may be truncated (TC=1): the caller
/// decides whether to retry over TCP. With `proxied`, a PROXY v2 header naming this socket goes
/// in front of the query (for a PowerDNS with `proxy-protocol-from`).
pub(crate) async fn exchange_udp_with(
    server: SocketAddr,
    proxied: bool,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ExchangeError> {
    let q = parse_query(query).map_err(ExchangeError::BadQuery)?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let attempt = async {
        let sock = UdpSocket::bind(bind).await?;
        sock.connect(server).await?;
        if proxied {
            let mut datagram = Vec::with_capacity(super::proxy::MAX_LEN + query.len());
            super::proxy::header(sock.local_addr()?, server, true, &mut datagram);
            datagram.extend_from_slice(query);
            sock.send(&datagram).await?;
        } else {
            sock.send(query).await?;
        }
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let n = sock.recv(&mut buf).await?;
            if response_matches(&buf[..n], q.id, &q) {
                buf.truncate(n);
                return Ok::<_, io::Error>(buf);
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(ExchangeError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::test_packets::name;
    use crate::dns::{FLAG_QR, TYPE_DNSKEY, TYPE_SOA};

    #[test]
    fn queries_are_well_formed() {
        let q = build_query(7, &[0], TYPE_SOA, None);
        assert_eq!(q, [0, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1]);
        let q = build_query(1, &name("example.test"), 1, None);
        assert_eq!(&q[12..26], b"\x07example\x04test\x00");

        let edns = QueryEdns {
            udp_size: 1232,
            dnssec_ok: true,
        };
        let q = build_query(9, &name("example.test"), TYPE_DNSKEY, Some(edns));
        let parsed = parse_query(&q).unwrap();
        assert_eq!(
            (parsed.id, parsed.qtype, parsed.rd),
            (9, TYPE_DNSKEY, false)
        );
        let e = parsed.edns.unwrap();
        assert_eq!((e.udp_size, e.dnssec_ok, e.version), (1232, true, 0));
        assert_eq!(parsed.question_end + 11, q.len());
    }

    #[tokio::test]
    async fn exchange_skips_strays_and_times_out() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let query = build_query(0x4242, &name("example.test"), TYPE_SOA, None);
        let answer = |id: u16, qtype: u16| {
            let mut a = build_query(id, &name("Example.TEST"), qtype, None);
            a[2] |= (FLAG_QR >> 8) as u8;
            a
        };
        let serve = async {
            let mut buf = [0u8; 512];
            let (_, client) = server.recv_from(&mut buf).await.unwrap();
            for stray in [answer(0x4243, TYPE_SOA), answer(0x4242, 1), query.clone()] {
                server.send_to(&stray, client).await.unwrap();
            }
            server
                .send_to(&answer(0x4242, TYPE_SOA), client)
                .await
                .unwrap();
        };
        let (got, ()) = tokio::join!(exchange_udp(addr, &query, Duration::from_secs(5)), serve);
        assert_eq!(got.unwrap(), answer(0x4242, TYPE_SOA));

        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = exchange_udp(
            silent.local_addr().unwrap(),
            &query,
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), "timeout");
        assert_eq!(
            exchange_udp(addr, &[0; 3], Duration::from_millis(50))
                .await
                .unwrap_err()
                .kind(),
            "bad_query"
        );
    }
}
