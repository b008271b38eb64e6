//! Answers built in place from a query: header-only errors, the response builder (answers,
//! authority SOA, OPT with ECS echo, truncation to the client's size) and BADVERS.

/// Pointer to the question name, which always starts right after the header.
use super::cookie;
use super::ecs::{ECS_OPTION_MAX, Ecs, encode_ecs};
use super::name::{WireName, read_qname};
use super::query::{Query, parse_query_any_version};
use super::wire::{be16, push_rr_fixed, set_flag, set16};
use super::{
    CLASS_IN, EDNS_DO, FLAG_AA, FLAG_CD, FLAG_QR, FLAG_RD, FLAG_TC, HEADER_LEN, OFF_ANCOUNT,
    OFF_ARCOUNT, OFF_FLAGS, OFF_NSCOUNT, OFF_QDCOUNT, TYPE_OPT, TYPE_SOA, rcode,
};

pub(super) const QNAME_POINTER: [u8; 2] = [0xC0, 0x0C];

/// Writes a header-only error response (FORMERR/NOTIMP/REFUSED/SERVFAIL...) for `pkt` into
/// `out`, echoing the ID, opcode, RD and the question when it parses. Returns false if `pkt` is
/// not answerable at all (too short or QR=1).
///
/// CD is echoed too; AA, TC and RA are 0 and only the low 4 bits of `rcode` fit. The output is a
/// prefix of the query's size at most (header + its own question bytes), so it never amplifies.
/// No OPT is written: for BADVERS see [`parse_query`].
pub fn write_error(pkt: &[u8], rcode: u8, out: &mut Vec<u8>) -> bool {
    out.clear();
    let Some(flags) = be16(pkt, OFF_FLAGS) else {
        return false;
    };
    if pkt.len() < HEADER_LEN || flags & FLAG_QR != 0 {
        return false;
    }
    let flags = FLAG_QR | (flags & (0x7800 | FLAG_RD | FLAG_CD)) | u16::from(rcode & 0xF);
    out.extend_from_slice(&pkt[..2]);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    if be16(pkt, OFF_QDCOUNT) == Some(1) {
        let mut scratch = WireName::EMPTY;
        if let Ok(name_end) = read_qname(pkt, HEADER_LEN, &mut scratch)
            && let Some(question) = pkt.get(HEADER_LEN..name_end + 4)
        {
            out.extend_from_slice(question);
            set16(out, OFF_QDCOUNT, 1);
        }
    }
    true
}

/// How an answer's OPT record should look.
#[derive(Debug, Clone, Copy)]
pub struct EdnsReply {
    pub udp_size: u16,
    pub dnssec_ok: bool,
    /// Echo this ECS with the given scope.
    pub ecs: Option<(Ecs, u8)>,
    /// Extended rcode upper bits (BADVERS, BADCOOKIE).
    pub ext_rcode: u8,
    /// COOKIE option data: the client's cookie and our server cookie.
    pub cookie: Option<[u8; cookie::REPLY_LEN]>,
}

/// Builds a response in `out` from a query: header + question copied, answers appended with a
/// compression pointer to the question name.
pub struct ResponseBuilder<'b> {
    out: &'b mut Vec<u8>,
    question_end: usize,
    /// Where the authority section starts (= end of the answers).
    answers_end: usize,
    ancount: u16,
    nscount: u16,
    /// RDATA length of the last answer record (it ends at `answers_end`).
    last_rdlen: u16,
}

impl<'b> ResponseBuilder<'b> {
    /// Starts a response: copies the header and question of `pkt`, sets QR, AA as given, keeps
    /// RD and CD, RA=0, the given rcode, and zero counts.
    ///
    /// The question bytes are copied as the client sent them (its 0x20 case survives); if `pkt`
    /// does not match `q`, the question is written from `q` instead.
    pub fn new(out: &'b mut Vec<u8>, pkt: &[u8], q: &Query, rcode: u8, aa: bool) -> Self {
        out.clear();
        let mut flags = FLAG_QR | (u16::from(q.opcode & 0xF) << 11) | u16::from(rcode & 0xF);
        if aa {
            flags |= FLAG_AA;
        }
        if q.rd {
            flags |= FLAG_RD;
        }
        if q.cd {
            flags |= FLAG_CD;
        }
        out.extend_from_slice(&q.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        let name_len = q.qname.as_bytes().len();
        match pkt.get(HEADER_LEN..q.question_end) {
            Some(question) if question.len() == name_len + 4 => out.extend_from_slice(question),
            _ => {
                out.extend_from_slice(q.qname.as_bytes());
                out.extend_from_slice(&q.qtype.to_be_bytes());
                out.extend_from_slice(&q.qclass.to_be_bytes());
            }
        }
        let question_end = out.len();
        ResponseBuilder {
            out,
            question_end,
            answers_end: question_end,
            ancount: 0,
            nscount: 0,
            last_rdlen: 0,
        }
    }

    /// Appends an answer record owned by the question name.
    ///
    /// May be called after `authority_soa`: the record still lands in the answer section.
    /// RDATA longer than 65535 bytes cannot be encoded and is skipped.
    pub fn answer(&mut self, rtype: u16, ttl: u32, rdata: &[u8]) {
        self.answer_owned(&QNAME_POINTER, rtype, ttl, rdata);
    }

    /// Appends an answer record owned by `owner_wire` (uncompressed wire format, or a
    /// compression pointer), e.g. the target of a CNAME chased here. Same rules as
    /// [`ResponseBuilder::answer`].
    #[inline]
    pub fn answer_owned(&mut self, owner_wire: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
        let Ok(rdlen) = u16::try_from(rdata.len()) else {
            return;
        };
        let Some(ancount) = self.ancount.checked_add(1) else {
            return;
        };
        let start = self.out.len();
        self.out.extend_from_slice(owner_wire);
        push_rr_fixed(self.out, rtype, CLASS_IN, ttl, rdlen);
        self.out.extend_from_slice(rdata);
        let len = self.out.len() - start;
        if self.nscount > 0 {
            // Move the record in front of the authority section; rotation needs no allocation.
            self.out[self.answers_end..].rotate_right(len);
        }
        self.answers_end += len;
        self.ancount = ancount;
        self.last_rdlen = rdlen;
    }

    /// The RDATA of the last answer record appended (empty before the first).
    pub fn last_answer_rdata(&self) -> &[u8] {
        &self.out[self.answers_end - usize::from(self.last_rdlen)..self.answers_end]
    }

    /// Appends an SOA record to the authority section.
    ///
    /// `owner_wire` is written as given (uncompressed wire format).
    pub fn authority_soa(&mut self, owner_wire: &[u8], ttl: u32, rdata: &[u8]) {
        let Ok(rdlen) = u16::try_from(rdata.len()) else {
            return;
        };
        let Some(nscount) = self.nscount.checked_add(1) else {
            return;
        };
        self.out.extend_from_slice(owner_wire);
        push_rr_fixed(self.out, TYPE_SOA, CLASS_IN, ttl, rdlen);
        self.out.extend_from_slice(rdata);
        self.nscount = nscount;
    }

    /// Appends OPT (if `edns`), then enforces `max_size`: if larger, drops every record but OPT
    /// and sets TC=1. Returns the final length.
    ///
    /// The OPT echoes ECS (family, source prefix, the given scope, address cut to the source
    /// prefix) and carries the COOKIE option if given. Header + question + OPT is never cut further, even if `max_size` is smaller.
    pub fn finish(self, edns: Option<EdnsReply>, max_size: usize) -> usize {
        let out = self.out;
        set16(out, OFF_ANCOUNT, self.ancount);
        set16(out, OFF_NSCOUNT, self.nscount);
        let opt_start = out.len();
        if let Some(e) = edns {
            let mut ttl = u32::from(e.ext_rcode) << 24;
            if e.dnssec_ok {
                ttl |= EDNS_DO;
            }
            let (option, option_len) = match e.ecs {
                Some((ecs, scope)) => encode_ecs(ecs.addr, ecs.source_prefix, scope),
                None => ([0; ECS_OPTION_MAX], 0),
            };
            let cookie_len = e.cookie.map_or(0, |_| cookie::OPTION_LEN);
            out.push(0);
            push_rr_fixed(
                out,
                TYPE_OPT,
                e.udp_size,
                ttl,
                (option_len + cookie_len) as u16,
            );
            out.extend_from_slice(&option[..option_len]);
            if let Some(c) = &e.cookie {
                cookie::push_option(out, c);
            }
            set16(out, OFF_ARCOUNT, 1);
        }
        if out.len() > max_size {
            let opt_len = out.len() - opt_start;
            out.copy_within(opt_start.., self.question_end);
            out.truncate(self.question_end + opt_len);
            set16(out, OFF_ANCOUNT, 0);
            set16(out, OFF_NSCOUNT, 0);
            set_flag(out, FLAG_TC);
        }
        out.len()
    }
}

/// Writes a BADVERS answer (RFC 6891: rcode 0 in the header, extended rcode 1 in the OPT) to a
/// query whose EDNS version we do not support. Returns false if it is not answerable.
pub(crate) fn write_badvers(pkt: &[u8], udp_size: u16, out: &mut Vec<u8>) -> bool {
    let Ok(q) = parse_query_any_version(pkt) else {
        return false;
    };
    let b = ResponseBuilder::new(out, pkt, &q, rcode::NOERROR, false);
    b.finish(
        Some(EdnsReply {
            udp_size,
            dnssec_ok: q.edns.is_some_and(|e| e.dnssec_ok),
            ecs: None,
            ext_rcode: 1,
            cookie: None,
        }),
        512,
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::OPT_ECS;
    use crate::dns::query::parse_query;
    use crate::dns::test_packets::{count, ecs_data, ecs_of, header, name, opt, option, query};
    use crate::dns::wire::read_rr;

    #[test]
    fn write_error_rules() {
        let mut out = vec![9; 3];
        assert!(!write_error(&[0; 11], rcode::FORMERR, &mut out));
        assert!(out.is_empty());
        let mut resp = query("example", &[]);
        resp[2] |= 0x80;
        assert!(!write_error(&resp, rcode::FORMERR, &mut out));

        let mut pkt = query(
            "ExAmple",
            &[opt(1232, 0, false, &[]), opt(1232, 0, false, &[])],
        );
        pkt[2] |= 4 << 3; // NOTIFY
        pkt[3] |= FLAG_CD as u8 | 0x80; // CD and RA (RA must not be echoed)
        assert!(write_error(&pkt, rcode::FORMERR, &mut out));
        let qlen = name("example").len() + 4;
        assert_eq!(out.len(), HEADER_LEN + qlen);
        assert!(out.len() <= pkt.len());
        assert_eq!(&out[..2], &pkt[..2]);
        assert_eq!(out[2], 0x80 | (4 << 3) | 1); // QR, NOTIFY, RD
        assert_eq!(out[3], FLAG_CD as u8 | rcode::FORMERR);
        assert_eq!([0, 1, 2, 3].map(|i| count(&out, 4 + 2 * i)), [1, 0, 0, 0]);
        assert_eq!(&out[HEADER_LEN..], &pkt[HEADER_LEN..HEADER_LEN + qlen]);

        // A question that does not parse is not echoed; a bad opcode keeps its value.
        let mut bad = header(5, 9 << 11, [1, 0, 0, 0]);
        bad.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert!(write_error(&bad, rcode::NOTIMP, &mut out));
        assert_eq!(out.len(), HEADER_LEN);
        assert_eq!(out[2], 0x80 | (9 << 3));
        assert_eq!(out[3], rcode::NOTIMP);
        assert_eq!(count(&out, OFF_QDCOUNT), 0);
        let short = header(5, 0, [1, 0, 0, 0]);
        assert!(write_error(&short, rcode::FORMERR, &mut out));
        assert_eq!(out.len(), HEADER_LEN);
    }

    #[test]
    fn builder_writes_answers_authority_and_opt() {
        let pkt = query("Www.Example", &[opt(1232, 0, true, &[])]);
        let q = parse_query(&pkt).unwrap();
        let mut out = Vec::new();
        let mut b = ResponseBuilder::new(&mut out, &pkt, &q, rcode::NOERROR, true);
        assert_eq!(b.last_answer_rdata(), &[] as &[u8]);
        b.authority_soa(&name("example"), 300, &[7; 22]);
        b.answer(1, 60, &[192, 0, 2, 1]);
        // Moved in front of the authority section, and still found.
        assert_eq!(b.last_answer_rdata(), &[192, 0, 2, 1]);
        b.answer_owned(&name("other.example"), 1, 60, &[192, 0, 2, 2]);
        assert_eq!(b.last_answer_rdata(), &[192, 0, 2, 2]);
        let reply = EdnsReply {
            udp_size: 1232,
            dnssec_ok: true,
            ecs: Some((ecs_of("10.1.2.0", 23), 20)),
            ext_rcode: 0,
            cookie: None,
        };
        let len = b.finish(Some(reply), 1232);
        assert_eq!(len, out.len());
        assert_eq!(out[2], 0x80 | 0x04 | 0x01); // QR AA RD
        assert_eq!(out[3], 0);
        assert_eq!([1, 2, 3, 4].map(|i| count(&out, 2 + 2 * i)), [1, 2, 1, 1]);
        let mut off = q.question_end;
        assert_eq!(&out[HEADER_LEN..off], &pkt[HEADER_LEN..off]);
        for (last, owner) in [(1, QNAME_POINTER.to_vec()), (2, name("other.example"))] {
            let r = read_rr(&out, off).unwrap();
            assert_eq!(&out[off..off + owner.len()], owner.as_slice());
            assert_eq!((r.rtype, r.class, r.ttl), (1, 1, 60));
            assert_eq!(&out[r.rdata..r.end], &[192, 0, 2, last]);
            off = r.end;
        }
        let soa = read_rr(&out, off).unwrap();
        assert_eq!(&out[off..soa.rdata - 10], name("example").as_slice());
        assert_eq!((soa.rtype, soa.ttl, soa.rdlen), (TYPE_SOA, 300, 22));
        let o = read_rr(&out, soa.end).unwrap();
        assert_eq!((o.rtype, o.class, o.ttl), (TYPE_OPT, 1232, EDNS_DO));
        assert_eq!(
            &out[o.rdata..o.end],
            option(OPT_ECS, &ecs_data(1, 23, 20, &[10, 1, 2])).as_slice()
        );
        assert_eq!(o.end, out.len());
    }

    #[test]
    fn builder_truncates_to_opt_only() {
        let pkt = query("example", &[opt(1232, 0, false, &[])]);
        let q = parse_query(&pkt).unwrap();
        let mut out = Vec::new();
        let mut b = ResponseBuilder::new(&mut out, &pkt, &q, rcode::NOERROR, true);
        for i in 0..40u8 {
            b.answer(28, 60, &[i; 16]);
        }
        let reply = EdnsReply {
            udp_size: 1232,
            dnssec_ok: false,
            ecs: None,
            ext_rcode: 0,
            cookie: None,
        };
        let len = b.finish(Some(reply), 512);
        assert_eq!(len, q.question_end + 11);
        assert_ne!(out[2] & 0x02, 0);
        assert_eq!([1, 2, 3, 4].map(|i| count(&out, 2 + 2 * i)), [1, 0, 0, 1]);
        assert_eq!(read_rr(&out, q.question_end).unwrap().rtype, TYPE_OPT);

        // Without EDNS: header + question only.
        let pkt = query("example", &[]);
        let q = parse_query(&pkt).unwrap();
        let mut b = ResponseBuilder::new(&mut out, &pkt, &q, rcode::NOERROR, true);
        b.answer(16, 60, &[b'x'; 600]);
        assert_eq!(b.finish(None, 512), pkt.len());
        assert_eq!([1, 2, 3, 4].map(|i| count(&out, 2 + 2 * i)), [1, 0, 0, 0]);
        assert_ne!(out[2] & 0x02, 0);
    }
}
