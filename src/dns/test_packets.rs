//! Packet builders for the unit tests of the wire layer.

use super::ecs::Ecs;
use super::query::{ParseError, parse_query};
use super::wire::{be16, push_rr_fixed};
use super::{EDNS_DO, FLAG_RD, TYPE_OPT};

/// Wire name from dotted labels (no escapes needed in tests).
pub(super) fn name(dotted: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in dotted.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

pub(super) fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

pub(super) fn rr(owner: &[u8], rtype: u16, class: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut r = owner.to_vec();
    push_rr_fixed(&mut r, rtype, class, ttl, rdata.len() as u16);
    r.extend_from_slice(rdata);
    r
}

pub(super) fn opt(udp: u16, version: u8, dnssec_ok: bool, options: &[u8]) -> Vec<u8> {
    let ttl = (u32::from(version) << 16) | if dnssec_ok { EDNS_DO } else { 0 };
    rr(&[0], TYPE_OPT, udp, ttl, options)
}

pub(super) fn option(code: u16, data: &[u8]) -> Vec<u8> {
    let mut o = code.to_be_bytes().to_vec();
    o.extend_from_slice(&(data.len() as u16).to_be_bytes());
    o.extend_from_slice(data);
    o
}

pub(super) fn ecs_data(family: u16, source: u8, scope: u8, addr: &[u8]) -> Vec<u8> {
    let mut d = family.to_be_bytes().to_vec();
    d.push(source);
    d.push(scope);
    d.extend_from_slice(addr);
    d
}

/// A query for `qname`/A with RD and the given additional records.
pub(super) fn query(qname: &str, additional: &[Vec<u8>]) -> Vec<u8> {
    let mut p = header(0x1234, FLAG_RD, [1, 0, 0, additional.len() as u16]);
    p.extend_from_slice(&name(qname));
    p.extend_from_slice(&[0, 1, 0, 1]);
    for r in additional {
        p.extend_from_slice(r);
    }
    p
}

pub(super) fn formerr(pkt: &[u8]) -> &'static str {
    match parse_query(pkt) {
        Err(ParseError::FormErr(why)) => why,
        other => panic!("expected FORMERR, got {other:?}"),
    }
}

pub(super) fn count(p: &[u8], off: usize) -> u16 {
    be16(p, off).unwrap()
}

/// A name of exactly `total` wire bytes (terminator included).
pub(super) fn name_of_len(total: usize) -> Vec<u8> {
    let mut n = Vec::new();
    let mut left = total - 1;
    while left > 0 {
        let label = (left - 1).min(63);
        n.push(label as u8);
        n.extend(std::iter::repeat_n(b'X', label));
        left -= label + 1;
    }
    n.push(0);
    assert_eq!(n.len(), total);
    n
}

pub(super) fn ecs_of(addr: &str, source: u8) -> Ecs {
    Ecs {
        addr: addr.parse().unwrap(),
        source_prefix: source,
        scope_prefix: 0,
    }
}
