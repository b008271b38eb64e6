//! The two rewrites forwarding needs: ID (and ECS) out to PowerDNS, ID back and the added ECS
//! stripped (and truncation for UDP) on the way back; and the check that an answer matches.

use std::net::IpAddr;

use super::cookie;
use super::ecs::encode_ecs;
use super::query::{ParseError, Query};
use super::wire::{be16, push_rr_fixed, read_rr, set_flag, set16, skip_name};
use super::{
    EDNS_DO, FLAG_QR, FLAG_TC, HEADER_LEN, OFF_ANCOUNT, OFF_ARCOUNT, OFF_FLAGS, OFF_NSCOUNT,
    OFF_QDCOUNT, OPT_ECS, TYPE_OPT,
};

/// What `rewrite_for_upstream` added, so `restore_response` can take it out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Nothing,
    /// An ECS option inside the client's own OPT record.
    EcsOption,
    /// A whole OPT record (client sent none): advertised payload 512.
    OptRecord,
}

/// Copies `pkt` into `out` with the ID replaced by `new_id`, its COOKIE option removed, and,
/// when `ecs` is given and the query has no ECS and is not TSIG-signed, an ECS option for `ecs`
/// (address masked to prefix).
///
/// `q` must be `pkt` parsed. The option goes into the client's OPT wherever it sits in the
/// additional section; without one, an OPT (payload 512, DO=0) is appended after the counted
/// records (trailing garbage is dropped then). A prefix longer than the family allows is
/// clamped to 32/128.
pub fn rewrite_for_upstream(
    pkt: &[u8],
    q: &Query,
    new_id: u16,
    ecs: Option<(IpAddr, u8)>,
    out: &mut Vec<u8>,
) -> Added {
    out.clear();
    out.extend_from_slice(pkt);
    set16(out, 0, new_id);
    // Cookies are between the client and dnsteer (RFC 7873 §5.2 answers are ours): PowerDNS
    // never sees one. A TSIG-signed query is left whole: its MAC covers the OPT.
    if !q.signed
        && q.edns.is_some_and(|e| e.cookie.is_some())
        && let Ok(Layout { opt: Some(opt), .. }) = scan_records(out, q.question_end)
    {
        let _ = cookie::strip_options(out, opt.rdata, opt.rdlen);
    }
    let Some((addr, prefix)) = ecs else {
        return Added::Nothing;
    };
    if q.signed || q.edns.is_some_and(|e| e.ecs.is_some() || e.version != 0) {
        return Added::Nothing;
    }
    let Ok(layout) = scan_records(out, q.question_end) else {
        return Added::Nothing;
    };
    let (option, option_len) = encode_ecs(addr, prefix, 0);
    let option = &option[..option_len];
    match layout.opt {
        Some(opt) => {
            let Ok(rdlen) = u16::try_from(opt.rdlen + option_len) else {
                return Added::Nothing;
            };
            out.extend_from_slice(option);
            out[opt.end..].rotate_right(option_len);
            set16(out, opt.rdata - 2, rdlen);
            Added::EcsOption
        }
        None => {
            let Some(arcount) = be16(out, OFF_ARCOUNT).and_then(|n| n.checked_add(1)) else {
                return Added::Nothing;
            };
            if q.edns.is_some() {
                // `q` does not describe `pkt`; do not guess.
                return Added::Nothing;
            }
            out.truncate(layout.records_end);
            out.push(0);
            push_rr_fixed(out, TYPE_OPT, 512, 0, option_len as u16);
            out.extend_from_slice(option);
            set16(out, OFF_ARCOUNT, arcount);
            Added::OptRecord
        }
    }
}

/// Cheap check that `resp` answers our forwarded query: QR=1, ID, and the same question
/// (name compared case-insensitively, type, class).
pub fn response_matches(resp: &[u8], id: u16, q: &Query) -> bool {
    let name = q.qname.as_bytes();
    let flags = be16(resp, OFF_FLAGS).unwrap_or(0);
    // A byte-wise ASCII case fold is exact here: `name` is lower-case, and its length bytes
    // (≤ 63) are only equal to themselves after folding, so label boundaries must match too.
    resp.len() >= HEADER_LEN
        && flags & FLAG_QR != 0
        && be16(resp, 0) == Some(id)
        && be16(resp, OFF_QDCOUNT) == Some(1)
        && resp
            .get(HEADER_LEN..HEADER_LEN + name.len())
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
        && be16(resp, HEADER_LEN + name.len()) == Some(q.qtype)
        && be16(resp, HEADER_LEN + name.len() + 2) == Some(q.qclass)
}

/// Turns an upstream response into the client's response in `out`: original ID restored, the
/// ECS option or OPT record we added removed, and, for UDP (`max_udp` = Some), truncated to the
/// client's limit with TC=1 if it does not fit. Returns Err if the response is malformed.
///
/// Truncation keeps the header, the question and the OPT if one is left (the client sent EDNS).
/// Removing bytes from the OPT is safe with compression because nothing points into an OPT
/// (its owner is the root) and pointers in practice point backwards.
pub fn restore_response(
    resp: &[u8],
    orig_id: u16,
    added: Added,
    max_udp: Option<usize>,
    out: &mut Vec<u8>,
) -> Result<(), ParseError> {
    out.clear();
    if resp.len() < HEADER_LEN {
        return Err(ParseError::FormErr("response shorter than a header"));
    }
    let question_end = skip_questions(resp)?;
    let layout = scan_records(resp, question_end)?;
    out.extend_from_slice(resp);
    set16(out, 0, orig_id);

    match (added, layout.opt) {
        (Added::EcsOption, Some(opt)) => {
            let options_end = opt.rdata + opt.rdlen;
            let mut read = opt.rdata;
            let mut write = opt.rdata;
            while read < options_end {
                let (Some(code), Some(len)) = (be16(out, read), be16(out, read + 2)) else {
                    return Err(ParseError::FormErr("truncated EDNS option"));
                };
                let next = read + 4 + len as usize;
                if read + 4 > options_end || next > options_end {
                    return Err(ParseError::FormErr("EDNS option overruns OPT"));
                }
                if code != OPT_ECS {
                    out.copy_within(read..next, write);
                    write += next - read;
                }
                read = next;
            }
            let removed = options_end - write;
            if removed > 0 {
                out.drain(write..options_end);
                set16(out, opt.rdata - 2, (opt.rdlen - removed) as u16);
            }
        }
        (Added::OptRecord, Some(opt)) => {
            out.drain(opt.start..opt.end);
            let arcount = be16(out, OFF_ARCOUNT).unwrap_or(1).saturating_sub(1);
            set16(out, OFF_ARCOUNT, arcount);
        }
        _ => {}
    }

    if let Some(limit) = max_udp
        && out.len() > limit
    {
        truncate_udp(out, question_end)?;
    }
    Ok(())
}

/// Puts our COOKIE option into the answer `out` (made by PowerDNS, the packet cache or as a
/// header-only error): any COOKIE option already there is removed first (PowerDNS's must never
/// reach a client); without an OPT, one is appended (`udp_size`, DO as given). Then, for UDP
/// (`max_udp`), the answer is truncated with TC=1 if the option made it too big.
pub(crate) fn put_cookie_in_answer(
    out: &mut Vec<u8>,
    reply: &[u8; cookie::REPLY_LEN],
    (udp_size, dnssec_ok): (u16, bool),
    max_udp: Option<usize>,
) -> Result<(), ParseError> {
    let question_end = skip_questions(out)?;
    let layout = scan_records(out, question_end)?;
    match layout.opt {
        Some(opt) => {
            let kept = cookie::strip_in_place(out, opt.rdata, opt.rdlen)?;
            let rdlen = u16::try_from(kept + cookie::OPTION_LEN)
                .map_err(|_| ParseError::FormErr("OPT too long"))?;
            let at = opt.rdata + kept;
            let mut option = Vec::with_capacity(cookie::OPTION_LEN);
            cookie::push_option(&mut option, reply);
            out.splice(at..at, option);
            set16(out, opt.rdata - 2, rdlen);
        }
        None => {
            let arcount = be16(out, OFF_ARCOUNT)
                .and_then(|n| n.checked_add(1))
                .ok_or(ParseError::FormErr("ARCOUNT overflow"))?;
            out.truncate(layout.records_end);
            out.push(0);
            let ttl = if dnssec_ok { EDNS_DO } else { 0 };
            push_rr_fixed(out, TYPE_OPT, udp_size, ttl, cookie::OPTION_LEN as u16);
            cookie::push_option(out, reply);
            set16(out, OFF_ARCOUNT, arcount);
        }
    }
    if let Some(limit) = max_udp
        && out.len() > limit
    {
        truncate_udp(out, question_end)?;
    }
    Ok(())
}

/// Cuts a response down to its header, question and OPT (if any) and sets TC=1: the client
/// asks again over TCP.
pub(super) fn truncate_udp(out: &mut Vec<u8>, question_end: usize) -> Result<(), ParseError> {
    let opt = scan_records(out, question_end)?.opt;
    let mut end = question_end;
    let mut arcount = 0;
    if let Some(opt) = opt {
        out.copy_within(opt.start..opt.end, question_end);
        end += opt.end - opt.start;
        arcount = 1;
    }
    out.truncate(end);
    set16(out, OFF_ANCOUNT, 0);
    set16(out, OFF_NSCOUNT, 0);
    set16(out, OFF_ARCOUNT, arcount);
    set_flag(out, FLAG_TC);
    Ok(())
}

/// Where the counted records end and where the (first) OPT record sits.
pub(super) struct Layout {
    pub(super) records_end: usize,
    pub(super) opt: Option<OptPos>,
}

#[derive(Clone, Copy)]
pub(super) struct OptPos {
    pub(super) start: usize,
    pub(super) rdata: usize,
    pub(super) rdlen: usize,
    pub(super) end: usize,
}

/// Walks AN, NS and AR (counts from the header) starting at `off`.
pub(super) fn scan_records(pkt: &[u8], mut off: usize) -> Result<Layout, ParseError> {
    let an = be16(pkt, OFF_ANCOUNT).unwrap_or(0);
    let ns = be16(pkt, OFF_NSCOUNT).unwrap_or(0);
    let ar = be16(pkt, OFF_ARCOUNT).unwrap_or(0);
    let mut opt = None;
    for i in 0..u32::from(an) + u32::from(ns) + u32::from(ar) {
        let rr = read_rr(pkt, off)?;
        if rr.rtype == TYPE_OPT && opt.is_none() && i >= u32::from(an) + u32::from(ns) {
            opt = Some(OptPos {
                start: rr.start,
                rdata: rr.rdata,
                rdlen: rr.rdlen,
                end: rr.end,
            });
        }
        off = rr.end;
    }
    Ok(Layout {
        records_end: off,
        opt,
    })
}

/// Skips the question section of a response (names may be compressed there).
pub(super) fn skip_questions(pkt: &[u8]) -> Result<usize, ParseError> {
    let mut off = HEADER_LEN;
    for _ in 0..be16(pkt, OFF_QDCOUNT).unwrap_or(0) {
        off = skip_name(pkt, off)? + 4;
        if off > pkt.len() {
            return Err(ParseError::FormErr("truncated question"));
        }
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::query::parse_query;
    use crate::dns::response::QNAME_POINTER;
    use crate::dns::test_packets::{count, ecs_data, ecs_of, header, name, opt, option, query, rr};
    use crate::dns::{FLAG_RD, TYPE_TSIG};

    #[test]
    fn rewrite_adds_ecs_to_existing_opt_that_is_not_last() {
        // An option PowerDNS may see (NSID request), kept through both rewrites.
        let nsid = option(3, &[]);
        let tail = rr(&name("x"), 1, 1, 0, &[1, 2, 3, 4]);
        let pkt = query("example", &[opt(1232, 0, true, &nsid), tail.clone()]);
        let q = parse_query(&pkt).unwrap();
        let mut out = Vec::new();
        let ip = "192.0.2.255".parse().unwrap();
        let added = rewrite_for_upstream(&pkt, &q, 0xBEEF, Some((ip, 23)), &mut out);
        assert_eq!(added, Added::EcsOption);
        assert_eq!(count(&out, 0), 0xBEEF);
        assert_eq!(count(&out, OFF_ARCOUNT), 2);
        assert!(out.ends_with(&tail));
        let fwd = parse_query(&out).unwrap();
        let ecs = fwd.edns.unwrap().ecs.unwrap();
        assert_eq!(ecs, ecs_of("192.0.2.0", 23));
        assert!(fwd.edns.unwrap().dnssec_ok);

        // Upstream echoes the option with a scope; restoring removes it and keeps the other.
        let mut resp = out.clone();
        resp[2] |= 0x80;
        let mut client = Vec::new();
        restore_response(&resp, q.id, added, None, &mut client).unwrap();
        let mut expected = pkt.clone();
        expected[2] |= 0x80;
        assert_eq!(client, expected);
    }

    #[test]
    fn rewrite_strips_the_cookie_except_from_signed_queries() {
        let mut options = option(3, &[]);
        options.extend_from_slice(&option(10, &[7; 24]));
        options.extend_from_slice(&option(12, &[0; 4]));
        let tail = rr(&name("x"), 1, 1, 0, &[1, 2, 3, 4]);
        let pkt = query("example", &[opt(1232, 0, true, &options), tail.clone()]);
        let q = parse_query(&pkt).unwrap();
        assert!(q.edns.unwrap().cookie.is_some());
        let ip = "192.0.2.1".parse().unwrap();
        let mut out = Vec::new();
        for ecs in [None, Some((ip, 24))] {
            let added = rewrite_for_upstream(&pkt, &q, 9, ecs, &mut out);
            let fwd = parse_query(&out).unwrap();
            let e = fwd.edns.unwrap();
            assert!(e.cookie.is_none(), "{ecs:?}");
            assert_eq!(e.ecs.is_some(), ecs.is_some());
            assert!(out.ends_with(&tail));
            // NSID and padding are still there, in order.
            let mut kept = option(3, &[]);
            kept.extend_from_slice(&option(12, &[0; 4]));
            assert!(out.windows(kept.len()).any(|w| w == kept.as_slice()));
            let want = pkt.len() - 28 + if ecs.is_some() { 4 + 7 } else { 0 };
            assert_eq!(out.len(), want, "{added:?}");
        }
        // TSIG covers the OPT: a signed query goes as it came.
        let tsig = rr(&name("key"), TYPE_TSIG, 255, 0, &[0; 16]);
        let signed = query("example", &[opt(1232, 0, true, &options), tsig]);
        let q = parse_query(&signed).unwrap();
        assert!(q.signed);
        rewrite_for_upstream(&signed, &q, 9, None, &mut out);
        assert_eq!(&out[2..], &signed[2..]);
    }

    #[test]
    fn rewrite_appends_opt_and_restore_removes_it() {
        let mut pkt = query("example", &[]);
        pkt.extend_from_slice(&[0xAA; 3]); // trailing garbage
        let q = parse_query(&pkt).unwrap();
        let mut out = Vec::new();
        let ip = "2001:db8::1".parse().unwrap();
        let added = rewrite_for_upstream(&pkt, &q, 7, Some((ip, 48)), &mut out);
        assert_eq!(added, Added::OptRecord);
        assert_eq!(count(&out, OFF_ARCOUNT), 1);
        let e = parse_query(&out).unwrap().edns.unwrap();
        assert_eq!((e.udp_size, e.dnssec_ok), (512, false));
        assert_eq!(e.ecs.unwrap(), ecs_of("2001:db8::", 48));
        assert_eq!(out.len(), q.question_end + 11 + 4 + 4 + 6);

        let mut resp = out.clone();
        resp[2] |= 0x80;
        let mut client = Vec::new();
        restore_response(&resp, q.id, added, None, &mut client).unwrap();
        assert_eq!(client.len(), q.question_end);
        assert_eq!(count(&client, 0), q.id);
        assert_eq!(count(&client, OFF_ARCOUNT), 0);
    }

    #[test]
    fn rewrite_leaves_alone_signed_and_ecs_queries() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let tsig = rr(&name("key"), TYPE_TSIG, 255, 0, &[0; 16]);
        let signed = query("example", &[tsig]);
        let with_ecs = query(
            "example",
            &[opt(
                1232,
                0,
                false,
                &option(OPT_ECS, &ecs_data(1, 8, 0, &[10])),
            )],
        );
        let plain = query("example", &[]);
        let mut out = Vec::new();
        for (pkt, ecs) in [
            (&signed, Some((ip, 24))),
            (&with_ecs, Some((ip, 24))),
            (&plain, None),
        ] {
            let q = parse_query(pkt).unwrap();
            assert_eq!(
                rewrite_for_upstream(pkt, &q, 0x4242, ecs, &mut out),
                Added::Nothing
            );
            assert_eq!(&out[2..], &pkt[2..]);
            assert_eq!(count(&out, 0), 0x4242);
        }
    }

    #[test]
    fn response_matching() {
        let pkt = query("www.example", &[]);
        let q = parse_query(&pkt).unwrap();
        let mut resp = query("WWW.eXample", &[]);
        set16(&mut resp, 0, 99);
        resp[2] |= 0x80;
        assert!(response_matches(&resp, 99, &q));
        assert!(!response_matches(&resp, 98, &q));
        let mut not_qr = resp.clone();
        not_qr[2] &= 0x7F;
        assert!(!response_matches(&not_qr, 99, &q));
        let mut other_type = resp.clone();
        let end = other_type.len();
        other_type[end - 3] = 28;
        assert!(!response_matches(&other_type, 99, &q));
        let mut qd0 = resp.clone();
        set16(&mut qd0, OFF_QDCOUNT, 0);
        assert!(!response_matches(&qd0, 99, &q));
        // Same letters, different label split.
        let mut split = query("www.exam.ple", &[]);
        set16(&mut split, 0, 99);
        split[2] |= 0x80;
        assert!(!response_matches(&split, 99, &q));
        assert!(!response_matches(&resp[..resp.len() - 1], 99, &q));
    }

    #[test]
    fn restore_truncates_for_udp() {
        let pkt = query("example", &[opt(1232, 0, false, &[])]);
        let q = parse_query(&pkt).unwrap();
        let mut upstream = Vec::new();
        let ip = "192.0.2.1".parse().unwrap();
        let added = rewrite_for_upstream(&pkt, &q, 3, Some((ip, 24)), &mut upstream);
        // A big response: 30 AAAA answers, then the OPT echoing ECS with a scope.
        let mut resp = header(3, 0x8000 | FLAG_RD, [1, 30, 0, 1]);
        resp.extend_from_slice(&pkt[HEADER_LEN..q.question_end]);
        for i in 0..30u8 {
            resp.extend_from_slice(&rr(&QNAME_POINTER, 28, 1, 60, &[i; 16]));
        }
        let echo = option(OPT_ECS, &ecs_data(1, 24, 24, &[192, 0, 2]));
        resp.extend_from_slice(&opt(1232, 0, false, &echo));
        let mut out = Vec::new();
        restore_response(&resp, q.id, added, Some(1232), &mut out).unwrap();
        assert_eq!(out.len(), resp.len() - echo.len());
        assert_eq!(out[2] & 0x02, 0);
        restore_response(&resp, q.id, added, Some(512), &mut out).unwrap();
        assert_eq!(out.len(), q.question_end + 11);
        assert_ne!(out[2] & 0x02, 0);
        assert_eq!([1, 2, 3, 4].map(|i| count(&out, 2 + 2 * i)), [1, 0, 0, 1]);
        assert_eq!(count(&out, 0), q.id);
    }

    #[test]
    fn restore_rejects_malformed() {
        let mut out = Vec::new();
        assert!(restore_response(&[0; 5], 1, Added::Nothing, None, &mut out).is_err());
        let mut resp = query(
            "example",
            &[opt(1232, 0, false, &option(OPT_ECS, &[0, 1, 0, 0]))],
        );
        resp[2] |= 0x80;
        for cut in HEADER_LEN + 1..resp.len() {
            assert!(
                restore_response(&resp[..cut], 1, Added::Nothing, None, &mut out).is_err(),
                "{cut}"
            );
        }
        // An option that overruns the OPT RDATA while the record itself is framed fine.
        let mut bad_opt = resp.clone();
        let len = bad_opt.len();
        set16(&mut bad_opt, len - 6, 9);
        assert!(restore_response(&bad_opt, 1, Added::EcsOption, None, &mut out).is_err());
        assert!(restore_response(&bad_opt, 1, Added::Nothing, None, &mut out).is_ok());
    }

    #[test]
    fn put_in_answer_replaces_appends_and_truncates() {
        let ours = [5u8; cookie::REPLY_LEN];
        let mut theirs = option(crate::dns::OPT_COOKIE, &[6; 24]);
        theirs.extend_from_slice(&option(3, b"pdns"));
        // PowerDNS's cookie goes, its other options stay, ours is added.
        let mut resp = query("example", &[opt(1232, 0, true, &theirs)]);
        resp[2] |= 0x80;
        put_cookie_in_answer(&mut resp, &ours, (1232, true), None).unwrap();
        let mut want = option(3, b"pdns");
        want.extend_from_slice(&option(crate::dns::OPT_COOKIE, &ours));
        assert!(resp.ends_with(&want));
        assert_eq!(
            be16(&resp, resp.len() - want.len() - 2),
            Some(want.len() as u16)
        );
        // A header-only error gets an OPT.
        let mut servfail = Vec::new();
        assert!(crate::dns::write_error(
            &query("example", &[]),
            2,
            &mut servfail
        ));
        let before = servfail.len();
        put_cookie_in_answer(&mut servfail, &ours, (1232, true), Some(512)).unwrap();
        assert_eq!(servfail.len(), before + 11 + cookie::OPTION_LEN);
        assert_eq!(be16(&servfail, OFF_ARCOUNT), Some(1));
        assert!(servfail.ends_with(&option(crate::dns::OPT_COOKIE, &ours)));
        // Too big for the client once the option is in: truncated, OPT kept.
        let mut big = query("example", &[opt(1232, 0, false, &option(3, &[0; 480]))]);
        big[2] |= 0x80;
        put_cookie_in_answer(&mut big, &ours, (1232, false), Some(512)).unwrap();
        assert!(big.len() <= 512 + 11 + cookie::OPTION_LEN && big[2] & 0x02 != 0);
        // Garbage is refused, not panicked on.
        let mut junk = vec![0xFF; 5];
        assert!(put_cookie_in_answer(&mut junk, &ours, (1232, false), None).is_err());
    }
}
