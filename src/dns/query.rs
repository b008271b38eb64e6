//! The packet path's zero-copy query parser: header checks, the question, every counted
//! record by RDLENGTH, the OPT record and its ECS and COOKIE options.

use super::ecs::{Ecs, parse_ecs};
use super::name::{WireName, read_qname};
use super::wire::{Rr, be16, read_rr};
use super::{
    EDNS_DO, FLAG_CD, FLAG_QR, FLAG_RD, HEADER_LEN, OFF_ANCOUNT, OFF_ARCOUNT, OFF_FLAGS,
    OFF_NSCOUNT, OFF_QDCOUNT, OPT_COOKIE, OPT_ECS, TYPE_OPT, TYPE_TSIG,
};

/// Why a packet was not a usable query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than a header: drop silently.
    #[error("shorter than a DNS header")]
    TooShort,
    /// QR=1: a response sent to us: drop (never answer, no reflection).
    #[error("response received as a query")]
    IsResponse,
    /// Opcode other than QUERY (0) or NOTIFY (4): answer NOTIMP.
    #[error("opcode {0} not implemented")]
    NotImplemented(u8),
    /// Malformed question, OPT, ECS or COOKIE: answer FORMERR.
    #[error("malformed: {0}")]
    FormErr(&'static str),
    /// EDNS version > 0: answer BADVERS.
    #[error("EDNS version {0} not supported")]
    BadVersion(u8),
}

impl ParseError {
    /// Static label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::TooShort => "too_short",
            ParseError::IsResponse => "is_response",
            ParseError::NotImplemented(_) => "notimp",
            ParseError::FormErr(_) => "formerr",
            ParseError::BadVersion(_) => "badvers",
        }
    }
}

/// FORMERR reasons (RFC 7873 §5.2.2), also how malformed cookies are told apart in metrics.
pub(crate) const BAD_COOKIE_LENGTH: &str = "COOKIE option length is not 8 or 16 to 40";
pub(crate) const DUPLICATE_COOKIE: &str = "more than one COOKIE option";

/// A well-formed COOKIE option in a query: where its data starts in the packet, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieAt {
    data: u16,
    len: u8,
}

impl CookieAt {
    /// Checks the option's length (8: client cookie only; 16 to 40: with a server cookie)
    /// and remembers where its `data_at` starts.
    pub(super) fn new(data_at: usize, data: &[u8]) -> Result<CookieAt, ParseError> {
        match (u16::try_from(data_at), data.len()) {
            (Ok(at), len @ (8 | 16..=40)) => Ok(CookieAt {
                data: at,
                len: len as u8,
            }),
            _ => Err(ParseError::FormErr(BAD_COOKIE_LENGTH)),
        }
    }

    /// The option's data in `pkt` (the packet it was parsed from).
    pub(super) fn data(self, pkt: &[u8]) -> Option<&[u8]> {
        let at = usize::from(self.data);
        pkt.get(at..at + usize::from(self.len))
    }
}

/// The query's OPT record, as far as we use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub dnssec_ok: bool,
    pub version: u8,
    pub ecs: Option<Ecs>,
    /// A well-formed COOKIE option (RFC 7873), by position in the packet.
    pub cookie: Option<CookieAt>,
}

/// A parsed query: a view of the packet plus the facts the pipeline needs.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub id: u16,
    pub(crate) opcode: u8,
    pub rd: bool,
    pub(crate) cd: bool,
    pub qname: WireName,
    pub qtype: u16,
    pub qclass: u16,
    /// Offset just past the question section in the packet.
    pub question_end: usize,
    pub edns: Option<Edns>,
    /// The last additional record is a TSIG: never touch the bytes.
    pub signed: bool,
}

impl Query {
    /// Largest UDP response the client accepts: its EDNS size (at least 512) or 512,
    /// capped by `max_udp_payload`.
    pub(crate) fn max_udp_response(&self, max_udp_payload: u16) -> usize {
        let size = self.edns.map_or(512, |e| e.udp_size.max(512));
        size.min(max_udp_payload.max(512)) as usize
    }
}

/// Parses a query packet. Allocates nothing.
///
/// Checks, in order: length (`TooShort`), QR (`IsResponse`), opcode (`NotImplemented`),
/// QDCOUNT = 1 and the question (`FormErr`), then every counted record by RDLENGTH, the OPT
/// record and its ECS option (`FormErr`). Bytes after the counted records are ignored.
///
/// `BadVersion` is only returned once everything else parsed, so the packet is answerable: get
/// the `Query` with [`parse_query_any_version`] and answer with [`ResponseBuilder`] and an
/// `EdnsReply { ext_rcode: 1, .. }` (BADVERS = 16: upper bits 1 in OPT, lower bits 0 in the
/// header). [`write_error`] cannot express it (no OPT).
#[inline]
pub fn parse_query(pkt: &[u8]) -> Result<Query, ParseError> {
    // Checked in place: moving the ~300-byte Query out of one Result into another is a
    // measurable share of an in-process answer.
    let r = parse_query_any_version(pkt);
    if let Ok(Query { edns: Some(e), .. }) = &r
        && e.version > 0
    {
        return Err(ParseError::BadVersion(e.version));
    }
    r
}

/// Like [`parse_query`] but accepts any EDNS version (`edns.version` says which), for building
/// the BADVERS answer. The options of a version > 0 OPT are not interpreted (their format is
/// that version's business), so `edns.ecs` and `edns.cookie` are then `None`.
pub fn parse_query_any_version(pkt: &[u8]) -> Result<Query, ParseError> {
    if pkt.len() < HEADER_LEN {
        return Err(ParseError::TooShort);
    }
    let flags = be16(pkt, OFF_FLAGS).unwrap_or(0);
    if flags & FLAG_QR != 0 {
        return Err(ParseError::IsResponse);
    }
    let opcode = ((flags >> 11) & 0xF) as u8;
    if opcode != 0 && opcode != 4 {
        return Err(ParseError::NotImplemented(opcode));
    }
    if be16(pkt, OFF_QDCOUNT) != Some(1) {
        return Err(ParseError::FormErr("QDCOUNT is not 1"));
    }
    let mut qname = WireName::EMPTY;
    let name_end = read_qname(pkt, HEADER_LEN, &mut qname)?;
    let (Some(qtype), Some(qclass)) = (be16(pkt, name_end), be16(pkt, name_end + 2)) else {
        return Err(ParseError::FormErr("truncated question"));
    };
    let question_end = name_end + 4;

    let an = be16(pkt, OFF_ANCOUNT).unwrap_or(0);
    let ns = be16(pkt, OFF_NSCOUNT).unwrap_or(0);
    let ar = be16(pkt, OFF_ARCOUNT).unwrap_or(0);
    let mut off = question_end;
    for _ in 0..u32::from(an) + u32::from(ns) {
        let rr = read_rr(pkt, off)?;
        if rr.rtype == TYPE_OPT {
            return Err(ParseError::FormErr("OPT outside the additional section"));
        }
        off = rr.end;
    }
    let mut edns = None;
    let mut last_type = 0;
    for _ in 0..ar {
        let rr = read_rr(pkt, off)?;
        if rr.rtype == TYPE_OPT {
            if edns.is_some() {
                return Err(ParseError::FormErr("more than one OPT record"));
            }
            if pkt.get(rr.start) != Some(&0) {
                return Err(ParseError::FormErr("OPT owner is not the root"));
            }
            edns = Some(parse_opt(pkt, &rr)?);
        }
        last_type = rr.rtype;
        off = rr.end;
    }

    Ok(Query {
        id: be16(pkt, 0).unwrap_or(0),
        opcode,
        rd: flags & FLAG_RD != 0,
        cd: flags & FLAG_CD != 0,
        qname,
        qtype,
        qclass,
        question_end,
        edns,
        signed: ar > 0 && last_type == TYPE_TSIG,
    })
}

#[inline(always)]
fn parse_opt(pkt: &[u8], rr: &Rr) -> Result<Edns, ParseError> {
    let version = (rr.ttl >> 16) as u8;
    let mut ecs = None;
    let mut cookie = None;
    if version == 0 {
        let options = pkt.get(rr.rdata..rr.end).unwrap_or(&[]);
        let mut off = 0;
        while off < options.len() {
            let (Some(code), Some(len)) = (be16(options, off), be16(options, off + 2)) else {
                return Err(ParseError::FormErr("truncated EDNS option"));
            };
            let Some(data) = options.get(off + 4..off + 4 + len as usize) else {
                return Err(ParseError::FormErr("EDNS option overruns OPT"));
            };
            if code == OPT_ECS {
                if ecs.is_some() {
                    return Err(ParseError::FormErr("more than one ECS option"));
                }
                ecs = Some(parse_ecs(data)?);
            } else if code == OPT_COOKIE {
                if cookie.is_some() {
                    return Err(ParseError::FormErr(DUPLICATE_COOKIE));
                }
                cookie = Some(CookieAt::new(rr.rdata + off + 4, data)?);
            }
            off += 4 + len as usize;
        }
    }
    Ok(Edns {
        udp_size: rr.class,
        dnssec_ok: rr.ttl & EDNS_DO != 0,
        version,
        ecs,
        cookie,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    use crate::dns::response::{EdnsReply, ResponseBuilder};
    use crate::dns::test_packets::{
        ecs_data, formerr, header, name, name_of_len, opt, option, query, rr,
    };
    use crate::dns::wire::{be32, set16};
    use crate::dns::{TYPE_SOA, rcode};

    #[test]
    fn parses_plain_query_and_lowercases_name() {
        let pkt = query("WwW.ExAmple.COM", &[]);
        let q = parse_query(&pkt).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.opcode, 0);
        assert!(q.rd && !q.cd && !q.signed);
        assert_eq!(q.qname.as_bytes(), name("www.example.com").as_slice());
        assert_eq!((q.qtype, q.qclass), (1, 1));
        assert_eq!(q.question_end, pkt.len());
        assert!(q.edns.is_none());
        assert_eq!(format!("{:?}", q.qname), "www.example.com.");
    }

    #[test]
    fn parses_edns_and_ecs() {
        let ecs = option(OPT_ECS, &ecs_data(1, 23, 0, &[10, 1, 2]));
        let pkt = query("a.example", &[opt(1232, 0, true, &ecs)]);
        let e = parse_query(&pkt).unwrap().edns.unwrap();
        assert_eq!(e.udp_size, 1232);
        assert!(e.dnssec_ok);
        assert_eq!(e.version, 0);
        let ecs = e.ecs.unwrap();
        assert_eq!(ecs.addr, "10.1.2.0".parse::<IpAddr>().unwrap());
        assert_eq!((ecs.source_prefix, ecs.scope_prefix), (23, 0));

        let v6 = option(
            OPT_ECS,
            &ecs_data(2, 56, 0, &[0x20, 1, 0xd, 0xb8, 0, 0, 0x42]),
        );
        let pkt = query("a.example", &[opt(4096, 0, false, &v6)]);
        let ecs = parse_query(&pkt).unwrap().edns.unwrap().ecs.unwrap();
        assert_eq!(ecs.addr, "2001:db8:0:4200::".parse::<IpAddr>().unwrap());
        // Source prefix 0: no address bytes at all.
        let zero = option(OPT_ECS, &ecs_data(1, 0, 0, &[]));
        let pkt = query("a.example", &[opt(512, 0, false, &zero)]);
        let ecs = parse_query(&pkt).unwrap().edns.unwrap().ecs.unwrap();
        assert_eq!(ecs.addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn header_errors() {
        assert_eq!(parse_query(&[0; 11]).err(), Some(ParseError::TooShort));
        let mut pkt = query("example", &[]);
        pkt[2] |= 0x80;
        assert!(matches!(parse_query(&pkt), Err(ParseError::IsResponse)));
        for (op, ok) in [
            (0u8, true),
            (1, false),
            (2, false),
            (4, true),
            (5, false),
            (15, false),
        ] {
            let mut pkt = query("example", &[]);
            pkt[2] = (pkt[2] & 0x87) | (op << 3);
            match parse_query(&pkt) {
                Ok(q) => assert!(ok && q.opcode == op),
                Err(e) => assert!(!ok && e == ParseError::NotImplemented(op), "{op}: {e:?}"),
            }
        }
        for qd in [0u16, 2] {
            let mut pkt = query("example", &[]);
            set16(&mut pkt, OFF_QDCOUNT, qd);
            assert_eq!(formerr(&pkt), "QDCOUNT is not 1");
        }
    }

    #[test]
    fn question_errors() {
        let mut pkt = header(1, 0, [1, 0, 0, 0]);
        pkt.extend_from_slice(&[3, b'w', b'w', b'w', 0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(formerr(&pkt), "compression pointer in the question");

        let mut pkt = header(1, 0, [1, 0, 0, 0]);
        pkt.extend_from_slice(&[64]);
        pkt.extend_from_slice(&[b'a'; 64]);
        pkt.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(formerr(&pkt), "label longer than 63 bytes");
        // 0x40 / 0x80 label types are not labels either.
        let mut pkt = header(1, 0, [1, 0, 0, 0]);
        pkt.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
        assert_eq!(formerr(&pkt), "label longer than 63 bytes");

        let full = query("example.com", &[]);
        for cut in HEADER_LEN..full.len() {
            let why = formerr(&full[..cut]);
            assert!(why.starts_with("truncated"), "{cut}: {why}");
        }
    }

    #[test]
    fn name_limit_is_255_bytes_with_terminator() {
        for (total, ok) in [(255usize, true), (256, false)] {
            let mut pkt = header(1, 0, [1, 0, 0, 0]);
            let n = name_of_len(total);
            pkt.extend_from_slice(&n);
            pkt.extend_from_slice(&[0, 1, 0, 1]);
            match parse_query(&pkt) {
                Ok(q) => {
                    assert!(ok);
                    assert_eq!(q.qname.as_bytes(), n.to_ascii_lowercase().as_slice());
                }
                Err(e) => {
                    assert!(!ok);
                    assert_eq!(e, ParseError::FormErr("name longer than 255 bytes"));
                }
            }
        }
        let root = query(".", &[]);
        assert_eq!(parse_query(&root).unwrap().qname.as_bytes(), &[0]);
    }

    #[test]
    fn opt_errors() {
        let two = query(
            "example",
            &[opt(1232, 0, false, &[]), opt(1232, 0, false, &[])],
        );
        assert_eq!(formerr(&two), "more than one OPT record");

        let mut owned = name("example");
        owned.extend_from_slice(&opt(1232, 0, false, &[])[1..]);
        assert_eq!(
            formerr(&query("example", &[owned])),
            "OPT owner is not the root"
        );

        let mut in_answer = query("example", &[opt(1232, 0, false, &[])]);
        set16(&mut in_answer, OFF_ANCOUNT, 1);
        set16(&mut in_answer, OFF_ARCOUNT, 0);
        assert_eq!(formerr(&in_answer), "OPT outside the additional section");

        // An option running past RDATA, and an option header cut short.
        let mut overrun = option(10, &[1, 2, 3, 4]);
        overrun.truncate(6);
        assert_eq!(
            formerr(&query("example", &[opt(1232, 0, false, &overrun)])),
            "EDNS option overruns OPT"
        );
        assert_eq!(
            formerr(&query("example", &[opt(1232, 0, false, &[0, 8, 0])])),
            "truncated EDNS option"
        );
    }

    #[test]
    fn rdlength_past_end_is_formerr() {
        let mut pkt = query("example", &[opt(1232, 0, false, &[])]);
        let len = pkt.len();
        set16(&mut pkt, len - 2, 1);
        assert_eq!(formerr(&pkt), "record data past the end");
        let mut pkt = query("example", &[]);
        set16(&mut pkt, OFF_ARCOUNT, 1);
        assert_eq!(formerr(&pkt), "truncated name");
    }

    #[test]
    fn compressed_owners_outside_the_question_are_fine() {
        let mut pkt = header(7, 4 << 11, [1, 1, 0, 1]);
        pkt.extend_from_slice(&name("example"));
        pkt.extend_from_slice(&[0, TYPE_SOA as u8, 0, 1]);
        pkt.extend_from_slice(&rr(&[0xC0, 12], TYPE_SOA, 1, 60, &[0; 22]));
        pkt.extend_from_slice(&opt(1232, 0, false, &[]));
        let q = parse_query(&pkt).unwrap();
        assert_eq!(q.opcode, 4);
        assert_eq!(q.edns.unwrap().udp_size, 1232);
    }

    #[test]
    fn badvers_after_full_parse() {
        let pkt = query("example", &[opt(1232, 1, true, &option(OPT_ECS, &[0, 9]))]);
        assert_eq!(parse_query(&pkt).err(), Some(ParseError::BadVersion(1)));
        let q = parse_query_any_version(&pkt).unwrap();
        assert_eq!(q.edns.unwrap().version, 1);
        assert!(q.edns.unwrap().ecs.is_none());
        // Structural problems still win over the version.
        let mut bad = pkt.clone();
        bad.extend_from_slice(&opt(1232, 0, false, &[]));
        set16(&mut bad, OFF_ARCOUNT, 2);
        assert_eq!(formerr(&bad), "more than one OPT record");

        // The BADVERS answer: rcode 0 in the header, 1 in the OPT's upper bits.
        let mut out = Vec::new();
        let mut b = ResponseBuilder::new(&mut out, &pkt, &q, 0, false);
        b.answer(1, 60, &[1, 2, 3, 4]);
        let reply = EdnsReply {
            udp_size: 1232,
            dnssec_ok: false,
            ecs: None,
            ext_rcode: (rcode::BADVERS >> 4) as u8,
            cookie: None,
        };
        b.finish(Some(reply), 512);
        assert_eq!(out[3] & 0xF, 0);
        let opt_ttl = be32(&out, out.len() - 6).unwrap();
        assert_eq!(opt_ttl >> 24, 1);
    }

    #[test]
    fn ecs_malformations() {
        let cases: [(&[u8], &str); 9] = [
            (&[0, 1, 24], "ECS option too short"),
            (&[0, 3, 0, 0], "ECS family is not IPv4 or IPv6"),
            (&[0, 0, 0, 0], "ECS family is not IPv4 or IPv6"),
            (&[0, 1, 33, 0, 1, 2, 3, 4, 5], "ECS source prefix too long"),
            (&[0, 2, 129, 0], "ECS source prefix too long"),
            (&[0, 1, 24, 16, 10, 0, 0], "ECS scope prefix set in a query"),
            (
                &[0, 1, 24, 0, 10, 0, 0, 0],
                "ECS address length does not match prefix",
            ),
            (
                &[0, 1, 24, 0, 10, 0],
                "ECS address length does not match prefix",
            ),
            (
                &[0, 1, 23, 0, 10, 0, 1],
                "ECS address bits set past the prefix",
            ),
        ];
        for (data, why) in cases {
            let pkt = query("example", &[opt(1232, 0, false, &option(OPT_ECS, data))]);
            assert_eq!(formerr(&pkt), why, "{data:?}");
        }
        let mut two = option(OPT_ECS, &ecs_data(1, 8, 0, &[10]));
        two.extend_from_slice(&option(OPT_ECS, &ecs_data(1, 8, 0, &[10])));
        let pkt = query("example", &[opt(1232, 0, false, &two)]);
        assert_eq!(formerr(&pkt), "more than one ECS option");
    }

    #[test]
    fn trailing_garbage_is_ignored() {
        let mut pkt = query("example", &[opt(1232, 0, false, &[])]);
        pkt.extend_from_slice(&[0xFF; 7]);
        assert_eq!(parse_query(&pkt).unwrap().edns.unwrap().udp_size, 1232);
    }

    #[test]
    fn tsig_detection() {
        let tsig = rr(&name("key"), TYPE_TSIG, 255, 0, &[0; 16]);
        let signed = query("example", &[opt(1232, 0, false, &[]), tsig.clone()]);
        assert!(parse_query(&signed).unwrap().signed);
        let not_last = query("example", &[tsig, opt(1232, 0, false, &[])]);
        assert!(!parse_query(&not_last).unwrap().signed);
        assert!(!parse_query(&query("example", &[])).unwrap().signed);
    }

    #[test]
    fn max_udp_response() {
        let q = parse_query(&query("example", &[opt(100, 0, false, &[])])).unwrap();
        assert_eq!(q.max_udp_response(1232), 512);
        let q = parse_query(&query("example", &[opt(4096, 0, false, &[])])).unwrap();
        assert_eq!(q.max_udp_response(1232), 1232);
    }
}
