//! DNS wire codec for the hot path: zero-allocation query parsing, in-place response building,
//! and the two rewrites forwarding needs (ID + ECS out, ID + ECS strip back).
//!
//! STUB: the API below is the contract; the implementation is being written.

use std::net::IpAddr;

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
}

/// A parsed query: a view of the packet plus the facts the pipeline needs.
#[derive(Clone, Copy)]
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
pub fn parse_query(_pkt: &[u8]) -> Result<Query, ParseError> {
    Err(ParseError::TooShort)
}

/// Writes a header-only error response (FORMERR/NOTIMP/REFUSED/SERVFAIL...) for `pkt` into
/// `out`, echoing the ID, opcode, RD and the question when it parses. Returns false if `pkt` is
/// not answerable at all (too short or QR=1).
pub fn write_error(_pkt: &[u8], _rcode: u8, _out: &mut Vec<u8>) -> bool {
    false
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
}

impl<'b> ResponseBuilder<'b> {
    /// Starts a response: copies the header and question of `pkt`, sets QR, AA as given, keeps
    /// RD and CD, RA=0, the given rcode, and zero counts.
    pub fn new(out: &'b mut Vec<u8>, _pkt: &[u8], _q: &Query, _rcode: u8, _aa: bool) -> Self {
        out.clear();
        ResponseBuilder { out }
    }

    /// Appends an answer record owned by the question name.
    pub fn answer(&mut self, _rtype: u16, _ttl: u32, _rdata: &[u8]) {}

    /// Appends an SOA record to the authority section.
    pub fn authority_soa(&mut self, _owner_wire: &[u8], _ttl: u32, _rdata: &[u8]) {}

    /// Appends OPT (if `edns`), then enforces `max_size`: if larger, drops every record but OPT
    /// and sets TC=1. Returns the final length.
    pub fn finish(self, _edns: Option<EdnsReply>, _max_size: usize) -> usize {
        self.out.len()
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
pub fn rewrite_for_upstream(
    pkt: &[u8],
    _q: &Query,
    _new_id: u16,
    _ecs: Option<(IpAddr, u8)>,
    out: &mut Vec<u8>,
) -> Added {
    out.clear();
    out.extend_from_slice(pkt);
    Added::Nothing
}

/// Cheap check that `resp` answers our forwarded query: QR=1, ID, and the same question
/// (name compared case-insensitively, type, class).
pub fn response_matches(_resp: &[u8], _id: u16, _q: &Query) -> bool {
    false
}

/// Turns an upstream response into the client's response in `out`: original ID restored, the
/// ECS option or OPT record we added removed, and, for UDP (`max_udp` = Some), truncated to the
/// client's limit with TC=1 if it does not fit. Returns Err if the response is malformed.
pub fn restore_response(
    _resp: &[u8],
    _orig_id: u16,
    _added: Added,
    _max_udp: Option<usize>,
    _out: &mut Vec<u8>,
) -> Result<(), ParseError> {
    Err(ParseError::FormErr("stub"))
}

/// Writes a BADVERS answer (OPT with extended rcode 1) to a query with an EDNS version we do
/// not support. Returns false if the packet is not answerable.
pub fn write_badvers(pkt: &[u8], udp_size: u16, out: &mut Vec<u8>) -> bool {
    if !write_error(pkt, 0, out) {
        return false;
    }
    let ar = u16::from_be_bytes([out[10], out[11]]) + 1;
    out[10..12].copy_from_slice(&ar.to_be_bytes());
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&udp_size.to_be_bytes());
    // TTL: extended rcode 1 (BADVERS = 16 >> 4), version 0, flags 0; RDLENGTH 0.
    out.extend_from_slice(&[1, 0, 0, 0, 0, 0]);
    true
}
