//! The packet cache's wire work: what an answer from PowerDNS is worth (rcode, TC, lifetime,
//! the ECS scope it was given for), the form it is stored in, and a stored answer turned back
//! into one client's answer (ID, question case, RD, TTLs, ECS echo, UDP truncation).

use super::cookie;
use super::ecs::encode_ecs;
use super::query::{ParseError, Query};
use super::rewrite::{
    Added, response_matches, restore_response, scan_records, skip_questions, truncate_udp,
};
use super::wire::{be16, be32, read_rr, set16};
use super::{
    FLAG_TC, HEADER_LEN, OFF_ANCOUNT, OFF_ARCOUNT, OFF_FLAGS, OFF_NSCOUNT, OPT_ECS, TYPE_OPT,
    TYPE_SOA, rcode,
};

/// The facts of an upstream answer the cache decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AnswerFacts {
    pub(crate) rcode: u8,
    pub(crate) truncated: bool,
    /// Scope prefix of the ECS option the server echoed (None: it echoed none).
    pub(crate) ecs_scope: Option<u8>,
    /// NXDOMAIN, or NOERROR without answers.
    pub(crate) negative: bool,
    /// Seconds the answer may be reused: the smallest answer TTL; for a negative answer
    /// min(SOA TTL, SOA minimum) of the authority SOA (None: no SOA, not cacheable).
    pub(crate) ttl: Option<u32>,
}

/// An answer in the form the cache keeps: ID 0, every ECS and COOKIE option removed (the echo
/// and the cookie are made for each client), OPT kept only if the client sent one.
#[derive(Debug, Default)]
pub(crate) struct StoredAnswer {
    pub(crate) packet: Box<[u8]>,
    /// Offsets of the TTL fields of every record but the OPT.
    pub(crate) ttl_offsets: Box<[u16]>,
}

impl StoredAnswer {
    /// Bytes held (for the cache's byte bound).
    pub(crate) fn size(&self) -> usize {
        self.packet.len() + self.ttl_offsets.len() * 2
    }
}

/// What to do with the TTLs of a stored answer when it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ttls {
    /// As PowerDNS gave them.
    Keep,
    /// Minus this many seconds (never below 0).
    Age(u32),
    /// Every TTL set to this (serve-stale: RFC 8767 §4 recommends 30 s).
    Fixed(u32),
}

/// Reads the facts of `resp` (an upstream answer to a query rewritten with `added`) and, when
/// it parses, its stored form.
pub(crate) fn prepare(
    resp: &[u8],
    added: Added,
) -> Result<(AnswerFacts, StoredAnswer), ParseError> {
    let flags = be16(resp, OFF_FLAGS).ok_or(ParseError::TooShort)?;
    let rc = (flags & 0x000f) as u8;
    let question_end = skip_questions(resp)?;
    let layout = scan_records(resp, question_end)?;
    let ecs_scope = match layout.opt {
        Some(opt) => echoed_scope(&resp[opt.rdata..opt.rdata + opt.rdlen])?,
        None => None,
    };
    // Our own OPT goes; else every ECS option goes (the client's echo is rebuilt per client).
    let mode = if added == Added::OptRecord {
        Added::OptRecord
    } else {
        Added::EcsOption
    };
    let mut packet = Vec::with_capacity(resp.len());
    restore_response(resp, 0, mode, None, &mut packet)?;
    // A COOKIE is one client's: each answer served gets its requester's own.
    if let Some(opt) = scan_records(&packet, question_end)?.opt {
        cookie::strip_options(&mut packet, opt.rdata, opt.rdlen)?;
    }

    let an = be16(&packet, OFF_ANCOUNT).unwrap_or(0) as usize;
    let ns = be16(&packet, OFF_NSCOUNT).unwrap_or(0) as usize;
    let ar = be16(&packet, OFF_ARCOUNT).unwrap_or(0) as usize;
    let negative = rc == rcode::NXDOMAIN || (rc == rcode::NOERROR && an == 0);
    let mut ttl: Option<u32> = None;
    let mut offsets = Vec::with_capacity(an + ns + ar);
    let mut off = question_end;
    for i in 0..an + ns + ar {
        let rr = read_rr(&packet, off)?;
        off = rr.end;
        if rr.rtype == TYPE_OPT && i >= an + ns {
            continue;
        }
        let ttl_at = u16::try_from(rr.rdata - 6)
            .map_err(|_| ParseError::FormErr("answer too long to cache"))?;
        offsets.push(ttl_at);
        let own = if !negative && i < an {
            Some(rr.ttl)
        } else if negative && i >= an && i < an + ns && rr.rtype == TYPE_SOA {
            // The SOA MINIMUM is the last field of its RDATA (RFC 2308 §5).
            be32(&packet, rr.end - 4).map(|min| min.min(rr.ttl))
        } else {
            None
        };
        if let Some(t) = own {
            ttl = Some(ttl.map_or(t, |x| x.min(t)));
        }
    }
    Ok((
        AnswerFacts {
            rcode: rc,
            truncated: flags & FLAG_TC != 0,
            ecs_scope,
            negative,
            ttl,
        },
        StoredAnswer {
            packet: packet.into_boxed_slice(),
            ttl_offsets: offsets.into_boxed_slice(),
        },
    ))
}

/// The scope of the ECS option in an OPT's RDATA, if there is one. Only the scope byte is
/// read: an answer echoes the query's family, source and address.
fn echoed_scope(options: &[u8]) -> Result<Option<u8>, ParseError> {
    let mut off = 0;
    while off < options.len() {
        let (Some(code), Some(len)) = (be16(options, off), be16(options, off + 2)) else {
            return Err(ParseError::FormErr("truncated EDNS option"));
        };
        let data = options
            .get(off + 4..off + 4 + len as usize)
            .ok_or(ParseError::FormErr("EDNS option overruns OPT"))?;
        if code == OPT_ECS {
            return Ok(data.get(3).copied());
        }
        off += 4 + len as usize;
    }
    Ok(None)
}

/// True if `stored` answers `q` (same name, type and class; the ID is 0 in stored answers).
pub(crate) fn answers(stored: &StoredAnswer, q: &Query) -> bool {
    response_matches(&stored.packet, 0, q)
}

/// Writes the answer for the client's query `pkt` (parsed as `q`) from `stored` into `out`:
/// the client's ID, question bytes (its letter case) and RD bit; TTLs per `ttls`; the ECS
/// option echoed with `scope` when the client sent one; truncated with TC=1 over `max_udp`.
pub(crate) fn serve(
    stored: &StoredAnswer,
    pkt: &[u8],
    q: &Query,
    ttls: Ttls,
    scope: u8,
    max_udp: Option<usize>,
    out: &mut Vec<u8>,
) -> Result<(), ParseError> {
    out.clear();
    out.extend_from_slice(&stored.packet);
    if out.len() < q.question_end || pkt.len() < q.question_end {
        return Err(ParseError::FormErr(
            "stored answer shorter than the question",
        ));
    }
    set16(out, 0, q.id);
    out[2] = (out[2] & !0x01) | (pkt[2] & 0x01);
    out[HEADER_LEN..q.question_end].copy_from_slice(&pkt[HEADER_LEN..q.question_end]);
    if ttls != Ttls::Keep {
        for &at in stored.ttl_offsets.iter() {
            let at = at as usize;
            let Some(old) = be32(out, at) else { continue };
            let new = match ttls {
                Ttls::Keep => old,
                Ttls::Age(s) => old.saturating_sub(s),
                Ttls::Fixed(t) => t,
            };
            out[at..at + 4].copy_from_slice(&new.to_be_bytes());
        }
    }
    if let Some(ecs) = q.edns.and_then(|e| e.ecs)
        && let Some(opt) = scan_records(out, q.question_end)?.opt
    {
        let (option, len) = encode_ecs(ecs.addr, ecs.source_prefix, scope);
        let rdlen =
            u16::try_from(opt.rdlen + len).map_err(|_| ParseError::FormErr("OPT too long"))?;
        out.splice(opt.end..opt.end, option[..len].iter().copied());
        set16(out, opt.rdata - 2, rdlen);
    }
    if let Some(limit) = max_udp
        && out.len() > limit
    {
        truncate_udp(out, q.question_end)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::query::parse_query;
    use crate::dns::response::QNAME_POINTER;
    use crate::dns::rewrite::rewrite_for_upstream;
    use crate::dns::test_packets::{count, ecs_data, header, opt, option, query, rr};

    fn soa(ttl: u32, minimum: u32) -> Vec<u8> {
        let mut rdata = vec![0, 0];
        for v in [1u32, 2, 3, 4, minimum] {
            rdata.extend_from_slice(&v.to_be_bytes());
        }
        rr(&QNAME_POINTER, TYPE_SOA, 1, ttl, &rdata)
    }

    /// The query as dnsteer forwards it (ID 9, ECS 192.0.2.1/24 added) and what was added.
    fn as_forwarded(pkt: &[u8], q: &Query) -> (Vec<u8>, Added) {
        let mut up = Vec::new();
        let added =
            rewrite_for_upstream(pkt, q, 9, Some(("192.0.2.1".parse().unwrap(), 24)), &mut up);
        (up, added)
    }

    fn answer_to(pkt: &[u8], flags: u16, an: &[Vec<u8>], ns: &[Vec<u8>], tail: &[u8]) -> Vec<u8> {
        let q = parse_query(pkt).unwrap();
        let ar = u16::from(!tail.is_empty());
        let mut r = header(
            count(pkt, 0),
            0x8000 | flags,
            [1, an.len() as u16, ns.len() as u16, ar],
        );
        r.extend_from_slice(&pkt[HEADER_LEN..q.question_end]);
        for x in an.iter().chain(ns) {
            r.extend_from_slice(x);
        }
        r.extend_from_slice(tail);
        r
    }

    #[test]
    fn positive_answer_ttl_scope_and_the_client_form() {
        let pkt = query("WwW.Example", &[opt(1232, 0, false, &[])]);
        let q = parse_query(&pkt).unwrap();
        let (up, added) = as_forwarded(&pkt, &q);
        let echo = option(OPT_ECS, &ecs_data(1, 24, 24, &[192, 0, 2]));
        let resp = answer_to(
            &up,
            0x0400,
            &[
                rr(&QNAME_POINTER, 1, 1, 300, &[192, 0, 2, 1]),
                rr(&QNAME_POINTER, 1, 1, 60, &[192, 0, 2, 2]),
            ],
            &[],
            &opt(1232, 0, false, &echo),
        );
        let (facts, stored) = prepare(&resp, added).unwrap();
        assert_eq!(facts.ecs_scope, Some(24));
        assert_eq!(facts.ttl, Some(60));
        assert!(!facts.negative && !facts.truncated);
        assert_eq!(stored.ttl_offsets.len(), 2);
        assert!(!stored.packet.ends_with(&echo), "the echo is not stored");

        // Another client, other case, own ECS: its ID, its case, its ECS echoed with the scope.
        let ecs = option(OPT_ECS, &ecs_data(1, 24, 0, &[198, 51, 100]));
        let other = query("www.EXAMPLE", &[opt(1232, 0, false, &ecs)]);
        let oq = parse_query(&other).unwrap();
        assert!(answers(&stored, &oq));
        let mut out = Vec::new();
        serve(&stored, &other, &oq, Ttls::Age(10), 0, None, &mut out).unwrap();
        assert_eq!(count(&out, 0), oq.id);
        assert_eq!(
            &out[HEADER_LEN..oq.question_end],
            &other[HEADER_LEN..oq.question_end]
        );
        assert_eq!(be32(&out, stored.ttl_offsets[0] as usize), Some(290));
        assert_eq!(be32(&out, stored.ttl_offsets[1] as usize), Some(50));
        assert!(out.ends_with(&option(OPT_ECS, &ecs_data(1, 24, 0, &[198, 51, 100]))));

        serve(&stored, &other, &oq, Ttls::Fixed(30), 0, Some(40), &mut out).unwrap();
        assert_ne!(out[2] & 0x02, 0, "over the client's UDP size: TC=1");
        assert_eq!(count(&out, OFF_ANCOUNT), 0);
    }

    #[test]
    fn negative_answer_lives_min_of_soa_ttl_and_minimum() {
        let pkt = query("nope.example", &[]);
        let q = parse_query(&pkt).unwrap();
        let (up, added) = as_forwarded(&pkt, &q);
        assert_eq!(added, Added::OptRecord);
        let resp = answer_to(&up, 0x0403, &[], &[soa(300, 60)], &opt(1232, 0, false, &[]));
        let (facts, stored) = prepare(&resp, added).unwrap();
        assert!(facts.negative);
        assert_eq!(facts.rcode, rcode::NXDOMAIN);
        assert_eq!(facts.ttl, Some(60));
        assert_eq!(
            count(&stored.packet, OFF_ARCOUNT),
            0,
            "our OPT is not stored"
        );
        let resp = answer_to(&up, 0x0403, &[], &[soa(20, 60)], &[]);
        assert_eq!(prepare(&resp, Added::Nothing).unwrap().0.ttl, Some(20));
        let resp = answer_to(&up, 0x0403, &[], &[], &[]);
        assert_eq!(
            prepare(&resp, Added::Nothing).unwrap().0.ttl,
            None,
            "no SOA: no lifetime"
        );
    }

    #[test]
    fn cached_answers_keep_no_cookie() {
        let mut resp = query(
            "example",
            &[opt(
                1232,
                0,
                false,
                &option(crate::dns::OPT_COOKIE, &[6; 24]),
            )],
        );
        resp[2] |= 0x80;
        let (_, stored) = prepare(&resp, Added::Nothing).unwrap();
        assert!(!stored.packet.windows(4).any(|w| w == [0, 10, 0, 24]));
        assert_eq!(stored.packet.len(), resp.len() - 28);
    }
}
