//! DNS wire codec for the hot path: zero-allocation query parsing, in-place response building,
//! and the two rewrites forwarding needs (ID + ECS out, ID + ECS strip back).
//!
//! Everything here works on raw bytes with bounds-checked reads: no input makes these functions
//! panic, and none of them allocates beyond growing the caller's output buffer.

pub mod message;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 12;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_TSIG: u16 = 250;
pub const OPT_ECS: u16 = 8;

pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
    /// Extended (needs OPT): 16 = BADVERS.
    pub const BADVERS: u16 = 16;
}

pub const CLASS_IN: u16 = 1;
pub const OPCODE_NOTIFY: u8 = 4;
/// Pointer to the question name, which always starts right after the header.
const QNAME_POINTER: [u8; 2] = [0xC0, 0x0C];

// Header field offsets and flag bits.
const OFF_FLAGS: usize = 2;
const OFF_QDCOUNT: usize = 4;
const OFF_ANCOUNT: usize = 6;
const OFF_NSCOUNT: usize = 8;
const OFF_ARCOUNT: usize = 10;
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_CD: u16 = 0x0010;
const EDNS_DO: u32 = 0x8000;

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
    /// Malformed question, OPT or ECS: answer FORMERR.
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

/// A validated EDNS Client Subnet option (RFC 7871).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecs {
    /// Address masked to `source_prefix` (always, so it can be used as `bestwho` directly).
    pub addr: IpAddr,
    pub source_prefix: u8,
    pub scope_prefix: u8,
}

/// The query's OPT record, as far as we use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub dnssec_ok: bool,
    pub version: u8,
    pub ecs: Option<Ecs>,
}

/// Lower-cased, uncompressed wire-format name held inline (no allocation).
#[derive(Clone, Copy)]
pub struct WireName {
    buf: [u8; 255],
    len: u8,
}

impl WireName {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// Validates an uncompressed wire name (labels ≤ 63, ≤ 255 bytes with the terminator,
    /// nothing after the root label) and lower-cases it. For names built outside a packet,
    /// e.g. from config, so they compare byte-for-byte with `Query::qname`.
    pub fn from_wire(wire: &[u8]) -> Option<WireName> {
        let mut name = WireName::EMPTY;
        match read_qname(wire, 0, &mut name) {
            Ok(end) if end == wire.len() => Some(name),
            _ => None,
        }
    }

    const EMPTY: WireName = WireName {
        buf: [0; 255],
        len: 0,
    };
}

impl PartialEq for WireName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for WireName {}

impl fmt::Debug for WireName {
    /// Presentation format (`www.example.com.`), non-printable bytes as `\DDD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.as_bytes();
        if bytes.len() <= 1 {
            return f.write_str(".");
        }
        let mut off = 0;
        while let Some(&len) = bytes.get(off) {
            if len == 0 {
                break;
            }
            let label = bytes.get(off + 1..off + 1 + len as usize).unwrap_or(&[]);
            for &b in label {
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    write!(f, "{}", b as char)?;
                } else {
                    write!(f, "\\{b:03}")?;
                }
            }
            f.write_str(".")?;
            off += 1 + len as usize;
        }
        Ok(())
    }
}

/// A parsed query: a view of the packet plus the facts the pipeline needs.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub id: u16,
    pub opcode: u8,
    pub rd: bool,
    pub cd: bool,
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
    pub fn max_udp_response(&self, max_udp_payload: u16) -> usize {
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
/// that version's business), so `edns.ecs` is then `None`.
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
    /// Extended rcode upper bits (BADVERS).
    pub ext_rcode: u8,
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
        }
    }

    /// Appends an answer record owned by the question name.
    ///
    /// May be called after `authority_soa`: the record still lands in the answer section.
    /// RDATA longer than 65535 bytes cannot be encoded and is skipped.
    pub fn answer(&mut self, rtype: u16, ttl: u32, rdata: &[u8]) {
        let Ok(rdlen) = u16::try_from(rdata.len()) else {
            return;
        };
        let Some(ancount) = self.ancount.checked_add(1) else {
            return;
        };
        let start = self.out.len();
        self.out.extend_from_slice(&QNAME_POINTER);
        push_rr_fixed(self.out, rtype, CLASS_IN, ttl, rdlen);
        self.out.extend_from_slice(rdata);
        let len = self.out.len() - start;
        if self.nscount > 0 {
            // Move the record in front of the authority section; rotation needs no allocation.
            self.out[self.answers_end..].rotate_right(len);
        }
        self.answers_end += len;
        self.ancount = ancount;
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
    /// prefix). Header + question + OPT is never cut further, even if `max_size` is smaller.
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
            out.push(0);
            push_rr_fixed(out, TYPE_OPT, e.udp_size, ttl, option_len as u16);
            out.extend_from_slice(&option[..option_len]);
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

/// What `rewrite_for_upstream` added, so `restore_response` can take it out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Nothing,
    /// An ECS option inside the client's own OPT record.
    EcsOption,
    /// A whole OPT record (client sent none): advertised payload 512.
    OptRecord,
}

/// Copies `pkt` into `out` with the ID replaced by `new_id` and, when `ecs` is given and the
/// query has no ECS and is not TSIG-signed, an ECS option for `ecs` (address masked to prefix).
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
    }
    Ok(())
}

// ---- wire helpers -------------------------------------------------------------------------

fn be16(p: &[u8], off: usize) -> Option<u16> {
    match p.get(off..off.checked_add(2)?) {
        Some(&[a, b]) => Some(u16::from_be_bytes([a, b])),
        _ => None,
    }
}

fn be32(p: &[u8], off: usize) -> Option<u32> {
    match p.get(off..off.checked_add(4)?) {
        Some(&[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
        _ => None,
    }
}

/// Writes a big-endian u16 if the bytes exist (callers only write where they read before).
fn set16(p: &mut [u8], off: usize, v: u16) {
    if let Some(dst) = p.get_mut(off..off + 2) {
        dst.copy_from_slice(&v.to_be_bytes());
    }
}

fn set_flag(p: &mut [u8], flag: u16) {
    let flags = be16(p, OFF_FLAGS).unwrap_or(0) | flag;
    set16(p, OFF_FLAGS, flags);
}

/// TYPE, CLASS, TTL, RDLENGTH: the part of a record between owner and RDATA.
fn push_rr_fixed(out: &mut Vec<u8>, rtype: u16, class: u16, ttl: u32, rdlen: u16) {
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&rdlen.to_be_bytes());
}

/// Reads the question name at `off` into `name`, lower-cased. Returns the offset after it.
fn read_qname(pkt: &[u8], mut off: usize, name: &mut WireName) -> Result<usize, ParseError> {
    let mut len = 0usize;
    loop {
        let Some(&label_len) = pkt.get(off) else {
            return Err(ParseError::FormErr("truncated question name"));
        };
        let label_len = label_len as usize;
        if label_len & 0xC0 == 0xC0 {
            return Err(ParseError::FormErr("compression pointer in the question"));
        }
        if label_len > 63 {
            return Err(ParseError::FormErr("label longer than 63 bytes"));
        }
        // Counts the length byte, so the root terminator is counted too (RFC 1035: 255 total).
        if len + 1 + label_len > 255 {
            return Err(ParseError::FormErr("name longer than 255 bytes"));
        }
        let Some(label) = pkt.get(off + 1..off + 1 + label_len) else {
            return Err(ParseError::FormErr("truncated question name"));
        };
        name.buf[len] = label_len as u8;
        for (dst, src) in name.buf[len + 1..len + 1 + label_len].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        len += 1 + label_len;
        off += 1 + label_len;
        if label_len == 0 {
            name.len = len as u8;
            return Ok(off);
        }
    }
}

/// Skips a possibly compressed name in a record. Returns the offset after it.
fn skip_name(pkt: &[u8], mut off: usize) -> Result<usize, ParseError> {
    loop {
        let Some(&label_len) = pkt.get(off) else {
            return Err(ParseError::FormErr("truncated name"));
        };
        match label_len & 0xC0 {
            0xC0 if off + 2 <= pkt.len() => return Ok(off + 2),
            0xC0 => return Err(ParseError::FormErr("truncated name")),
            0x00 if label_len == 0 => return Ok(off + 1),
            0x00 => off += 1 + label_len as usize,
            _ => return Err(ParseError::FormErr("unknown label type")),
        }
    }
}

/// One resource record's position in a packet.
struct Rr {
    start: usize,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: usize,
    rdlen: usize,
    end: usize,
}

fn read_rr(pkt: &[u8], start: usize) -> Result<Rr, ParseError> {
    let fixed = skip_name(pkt, start)?;
    let (Some(rtype), Some(class), Some(ttl), Some(rdlen)) = (
        be16(pkt, fixed),
        be16(pkt, fixed + 2),
        be32(pkt, fixed + 4),
        be16(pkt, fixed + 8),
    ) else {
        return Err(ParseError::FormErr("truncated record"));
    };
    let rdata = fixed + 10;
    let end = rdata + rdlen as usize;
    if end > pkt.len() {
        return Err(ParseError::FormErr("record data past the end"));
    }
    Ok(Rr {
        start,
        rtype,
        class,
        ttl,
        rdata,
        rdlen: rdlen as usize,
        end,
    })
}

#[inline(always)]
fn parse_opt(pkt: &[u8], rr: &Rr) -> Result<Edns, ParseError> {
    let version = (rr.ttl >> 16) as u8;
    let mut ecs = None;
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
            }
            off += 4 + len as usize;
        }
    }
    Ok(Edns {
        udp_size: rr.class,
        dnssec_ok: rr.ttl & EDNS_DO != 0,
        version,
        ecs,
    })
}

/// RFC 7871 §6 / §7.1.1 checks for an ECS option in a query.
fn parse_ecs(data: &[u8]) -> Result<Ecs, ParseError> {
    let (Some(family), Some(&source_prefix), Some(&scope_prefix)) =
        (be16(data, 0), data.get(2), data.get(3))
    else {
        return Err(ParseError::FormErr("ECS option too short"));
    };
    let max_bits = match family {
        1 => 32,
        2 => 128,
        _ => return Err(ParseError::FormErr("ECS family is not IPv4 or IPv6")),
    };
    if source_prefix > max_bits {
        return Err(ParseError::FormErr("ECS source prefix too long"));
    }
    if scope_prefix != 0 {
        return Err(ParseError::FormErr("ECS scope prefix set in a query"));
    }
    let addr = data.get(4..).unwrap_or(&[]);
    if addr.len() != (source_prefix as usize).div_ceil(8) {
        return Err(ParseError::FormErr(
            "ECS address length does not match prefix",
        ));
    }
    let spare_bits = source_prefix % 8;
    if spare_bits != 0 && addr.last().is_some_and(|b| b & (0xFF >> spare_bits) != 0) {
        return Err(ParseError::FormErr("ECS address bits set past the prefix"));
    }
    let mut octets = [0u8; 16];
    octets[..addr.len()].copy_from_slice(addr);
    let addr = if family == 1 {
        IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Ok(Ecs {
        addr,
        source_prefix,
        scope_prefix,
    })
}

/// Option code, length, family, prefixes, and at most 16 address bytes.
const ECS_OPTION_MAX: usize = 4 + 4 + 16;

/// Encodes a complete ECS option (code + length + data), address masked to `source_prefix` and
/// cut to ceil(source/8) bytes. Prefixes are clamped to the family's width.
fn encode_ecs(addr: IpAddr, source_prefix: u8, scope_prefix: u8) -> ([u8; ECS_OPTION_MAX], usize) {
    let (family, max_bits, octets) = match addr {
        IpAddr::V4(a) => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&a.octets());
            (1u16, 32u8, o)
        }
        IpAddr::V6(a) => (2u16, 128u8, a.octets()),
    };
    let source = source_prefix.min(max_bits);
    let scope = scope_prefix.min(max_bits);
    let addr_len = (source as usize).div_ceil(8);
    let mut buf = [0u8; ECS_OPTION_MAX];
    buf[0..2].copy_from_slice(&OPT_ECS.to_be_bytes());
    buf[2..4].copy_from_slice(&(4 + addr_len as u16).to_be_bytes());
    buf[4..6].copy_from_slice(&family.to_be_bytes());
    buf[6] = source;
    buf[7] = scope;
    buf[8..8 + addr_len].copy_from_slice(&octets[..addr_len]);
    if source % 8 != 0 {
        buf[8 + addr_len - 1] &= 0xFF << (8 - source % 8);
    }
    (buf, 8 + addr_len)
}

/// Where the counted records end and where the (first) OPT record sits.
struct Layout {
    records_end: usize,
    opt: Option<OptPos>,
}

#[derive(Clone, Copy)]
struct OptPos {
    start: usize,
    rdata: usize,
    rdlen: usize,
    end: usize,
}

/// Walks AN, NS and AR (counts from the header) starting at `off`.
fn scan_records(pkt: &[u8], mut off: usize) -> Result<Layout, ParseError> {
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
fn skip_questions(pkt: &[u8]) -> Result<usize, ParseError> {
    let mut off = HEADER_LEN;
    for _ in 0..be16(pkt, OFF_QDCOUNT).unwrap_or(0) {
        off = skip_name(pkt, off)? + 4;
        if off > pkt.len() {
            return Err(ParseError::FormErr("truncated question"));
        }
    }
    Ok(off)
}

/// Writes a BADVERS answer (RFC 6891: rcode 0 in the header, extended rcode 1 in the OPT) to a
/// query whose EDNS version we do not support. Returns false if it is not answerable.
pub fn write_badvers(pkt: &[u8], udp_size: u16, out: &mut Vec<u8>) -> bool {
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
        }),
        512,
    );
    true
}

/// Uncompressed, lower-case wire form of a name.
pub fn name_wire(name: &hickory_proto::rr::Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wire name from dotted labels (no escapes needed in tests).
    fn name(dotted: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in dotted.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        for c in counts {
            h.extend_from_slice(&c.to_be_bytes());
        }
        h
    }

    fn rr(owner: &[u8], rtype: u16, class: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut r = owner.to_vec();
        push_rr_fixed(&mut r, rtype, class, ttl, rdata.len() as u16);
        r.extend_from_slice(rdata);
        r
    }

    fn opt(udp: u16, version: u8, dnssec_ok: bool, options: &[u8]) -> Vec<u8> {
        let ttl = (u32::from(version) << 16) | if dnssec_ok { EDNS_DO } else { 0 };
        rr(&[0], TYPE_OPT, udp, ttl, options)
    }

    fn option(code: u16, data: &[u8]) -> Vec<u8> {
        let mut o = code.to_be_bytes().to_vec();
        o.extend_from_slice(&(data.len() as u16).to_be_bytes());
        o.extend_from_slice(data);
        o
    }

    fn ecs_data(family: u16, source: u8, scope: u8, addr: &[u8]) -> Vec<u8> {
        let mut d = family.to_be_bytes().to_vec();
        d.push(source);
        d.push(scope);
        d.extend_from_slice(addr);
        d
    }

    /// A query for `qname`/A with RD and the given additional records.
    fn query(qname: &str, additional: &[Vec<u8>]) -> Vec<u8> {
        let mut p = header(0x1234, FLAG_RD, [1, 0, 0, additional.len() as u16]);
        p.extend_from_slice(&name(qname));
        p.extend_from_slice(&[0, 1, 0, 1]);
        for r in additional {
            p.extend_from_slice(r);
        }
        p
    }

    fn formerr(pkt: &[u8]) -> &'static str {
        match parse_query(pkt) {
            Err(ParseError::FormErr(why)) => why,
            other => panic!("expected FORMERR, got {other:?}"),
        }
    }

    fn count(p: &[u8], off: usize) -> u16 {
        be16(p, off).unwrap()
    }

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

    /// A name of exactly `total` wire bytes (terminator included).
    fn name_of_len(total: usize) -> Vec<u8> {
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

    fn ecs_of(addr: &str, source: u8) -> Ecs {
        Ecs {
            addr: addr.parse().unwrap(),
            source_prefix: source,
            scope_prefix: 0,
        }
    }

    #[test]
    fn builder_writes_answers_authority_and_opt() {
        let pkt = query("Www.Example", &[opt(1232, 0, true, &[])]);
        let q = parse_query(&pkt).unwrap();
        let mut out = Vec::new();
        let mut b = ResponseBuilder::new(&mut out, &pkt, &q, rcode::NOERROR, true);
        b.authority_soa(&name("example"), 300, &[7; 22]);
        b.answer(1, 60, &[192, 0, 2, 1]);
        b.answer(1, 60, &[192, 0, 2, 2]);
        let reply = EdnsReply {
            udp_size: 1232,
            dnssec_ok: true,
            ecs: Some((ecs_of("10.1.2.0", 23), 20)),
            ext_rcode: 0,
        };
        let len = b.finish(Some(reply), 1232);
        assert_eq!(len, out.len());
        assert_eq!(out[2], 0x80 | 0x04 | 0x01); // QR AA RD
        assert_eq!(out[3], 0);
        assert_eq!([1, 2, 3, 4].map(|i| count(&out, 2 + 2 * i)), [1, 2, 1, 1]);
        let mut off = q.question_end;
        assert_eq!(&out[HEADER_LEN..off], &pkt[HEADER_LEN..off]);
        for last in [1, 2] {
            let r = read_rr(&out, off).unwrap();
            assert_eq!(&out[off..off + 2], &QNAME_POINTER);
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

    #[test]
    fn rewrite_adds_ecs_to_existing_opt_that_is_not_last() {
        let cookie = option(10, &[1; 8]);
        let tail = rr(&name("x"), 1, 1, 0, &[1, 2, 3, 4]);
        let pkt = query("example", &[opt(1232, 0, true, &cookie), tail.clone()]);
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

        // Upstream echoes the option with a scope; restoring removes it and keeps the cookie.
        let mut resp = out.clone();
        resp[2] |= 0x80;
        let mut client = Vec::new();
        restore_response(&resp, q.id, added, None, &mut client).unwrap();
        let mut expected = pkt.clone();
        expected[2] |= 0x80;
        assert_eq!(client, expected);
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
    fn wire_name_from_wire() {
        let n = WireName::from_wire(&name("A.Example")).unwrap();
        assert_eq!(n.as_bytes(), name("a.example").as_slice());
        assert!(WireName::from_wire(&[1, b'a']).is_none());
        assert!(WireName::from_wire(&[1, b'a', 0, 0]).is_none());
        assert!(WireName::from_wire(&name_of_len(256)).is_none());
    }

    #[test]
    fn max_udp_response() {
        let q = parse_query(&query("example", &[opt(100, 0, false, &[])])).unwrap();
        assert_eq!(q.max_udp_response(1232), 512);
        let q = parse_query(&query("example", &[opt(4096, 0, false, &[])])).unwrap();
        assert_eq!(q.max_udp_response(1232), 1232);
    }
}
