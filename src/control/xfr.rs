//! Zone transfer client (control plane): reads the LUA records of PowerDNS zones by AXFR, asks a
//! zone's SOA serial, and parses/acknowledges NOTIFY messages, all on the DNS wire format.
//!
//! # What PowerDNS needs
//!
//! For each zone listed in `zones.transfer`, the PowerDNS primary must:
//!
//! - **allow the transfer**: `allow-axfr-ips` must include the addresses dnsteer connects from
//!   (default `127.0.0.0/8,::1`; in Kubernetes, the pod network of dnsteer). A refused transfer
//!   (REFUSED or NOTAUTH) is reported as [`XfrError::Refused`] and dnsteer keeps the records it
//!   had; PowerDNS keeps answering every LUA record itself in the meantime.
//! - **tell dnsteer about changes**: `primary=yes` (`master=yes` before 4.5), the zone of kind
//!   primary (bind backend `type master;`, or `pdnsutil set-kind <zone> primary`; NATIVE zones
//!   send no NOTIFY), and `also-notify=<dnsteer address>[:<port>]` (or the zone metadata
//!   `ALSO-NOTIFY`); if `only-notify` is set it must include that address too. An edit then
//!   reaches dnsteer at once instead of at the next `zones.refresh` SOA check. NOTIFY is only a
//!   hint: dnsteer always checks the serial and transfers from its configured servers.
//! - **see the real client subnet**: `edns-subnet-processing=yes`, so that the queries dnsteer
//!   forwards with an ECS option are answered (and logged) for the client, not for dnsteer.
//! - keep `enable-lua-records=yes` (or the per-zone metadata): PowerDNS answers the LUA records
//!   that dnsteer does not take (other inner types, code it cannot compile).
//!
//! The SOA serial check goes through PowerDNS's packet cache, so after an edit it can lag by up to
//! `cache-ttl` (default 20 s); the transfer itself is never cached.
//!
//! # How LUA records arrive
//!
//! PowerDNS 4.7 sends LUA records verbatim as type 65402: a 2-byte inner type followed by
//! character-strings of code, re-chunked at 255 bytes. [`lua_code`] joins the chunks exactly as
//! PowerDNS joins them before running them (see `spec/lua-records.md` §1 and §9), including the
//! spaces it inserts between chunks. A quoted string longer than 255 bytes in the zone file is
//! the one case where PowerDNS instances disagree: the primary runs it unbroken, the AXFR form
//! (and every 4.7 secondary) runs it with spaces at each 255-byte joint. When such a joint falls
//! inside a Lua string or token ([`rechunk_hazard`]) the record is listed as unsupported and left
//! to PowerDNS; writing the code as quoted strings under 255 bytes, split between tokens, avoids it.
//!
//! Messages are read by a small RR walker (owner name with compression, type, class, TTL, RDATA)
//! rather than a full decoder, so that a record type no library knows cannot fail the transfer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::{RecordBody, RecordOrigin, RecordSpec, RecordType};
use crate::dns::message::{Cursor, Header, Rr, WireError};
use crate::dns::name::push_decimal_escape;
use crate::dns::{
    CLASS_IN, ExchangeError, MAX_FRAME, OPCODE_QUERY, TYPE_AXFR, TYPE_SOA, build_query,
    exchange_udp_with, name_from_text, name_text, rcode, read_frame, write_frame,
};
use crate::steer::wildcard::ZoneNames;

/// Type code of PowerDNS LUA records.
pub const TYPE_LUA: u16 = 65402;

/// Most bytes one transfer may carry (all messages, framing included) before it is abandoned:
/// far above any zone of LUA records, low enough that a runaway server cannot exhaust memory.
pub(crate) const MAX_TRANSFER_BYTES: usize = 64 << 20;
/// Most records one transfer may carry.
pub(crate) const MAX_TRANSFER_RECORDS: usize = 1_000_000;

/// The LUA records of one zone, as of one serial.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneData {
    /// Lower-case, absolute.
    pub zone: String,
    pub serial: u32,
    /// LUA records of inner type A, AAAA, CNAME, TXT and PTR, and LUA (code for `include()`),
    /// in transfer order.
    pub records: Vec<RecordSpec>,
    /// LUA records left to PowerDNS, for `/status` and logs.
    pub unsupported: Vec<Unsupported>,
    /// Every name of the zone: decides where its wildcards apply.
    pub names: std::sync::Arc<ZoneNames>,
}

/// A LUA record dnsteer does not answer (PowerDNS still does).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unsupported {
    /// Lower-case, absolute.
    pub name: String,
    /// Inner type mnemonic (`MX`, `LUA`, `TYPE99`…), or `?` when the RDATA is malformed.
    pub rtype: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum XfrError {
    #[error("no server to ask")]
    NoServers,
    #[error("zone name {0:?} is not a valid DNS name")]
    BadZone(String),
    #[error("{server}: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "{server}: refused with rcode {rcode} (is dnsteer's address in PowerDNS allow-axfr-ips, and is the zone served there?)"
    )]
    Refused { server: SocketAddr, rcode: u8 },
    #[error("{server}: answered with rcode {rcode}")]
    Rcode { server: SocketAddr, rcode: u8 },
    #[error("{server}: connection closed before the closing SOA")]
    Cut { server: SocketAddr },
    #[error("{server}: no complete answer within {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("{server}: transfer exceeds {limit}")]
    TooLarge {
        server: SocketAddr,
        limit: &'static str,
    },
    #[error("{server}: malformed message: {what}")]
    Malformed {
        server: SocketAddr,
        what: &'static str,
    },
    #[error("{server}: the answer does not start with the SOA of the zone")]
    NoSoa { server: SocketAddr },
    #[error("{server}: answer is not authoritative for the zone")]
    NotAuthoritative { server: SocketAddr },
    #[error("malformed LUA RDATA: {0}")]
    BadRdata(&'static str),
}

impl XfrError {
    /// Static label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            XfrError::NoServers => "no_servers",
            XfrError::BadZone(_) => "bad_zone",
            XfrError::Io { .. } => "io",
            XfrError::Refused { .. } => "refused",
            XfrError::Rcode { .. } => "rcode",
            XfrError::Cut { .. } => "cut",
            XfrError::Timeout { .. } => "timeout",
            XfrError::TooLarge { .. } => "too_large",
            XfrError::Malformed { .. } => "malformed",
            XfrError::NoSoa { .. } => "no_soa",
            XfrError::NotAuthoritative { .. } => "not_authoritative",
            XfrError::BadRdata(_) => "bad_rdata",
        }
    }
}

/// What went wrong in one server's answer, before the server address is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Refused(u8),
    Rcode(u8),
    TooLarge(&'static str),
    Malformed(&'static str),
    NoSoa,
    NotAuthoritative,
}

impl Fault {
    fn at(self, server: SocketAddr) -> XfrError {
        match self {
            Fault::Refused(rcode) => XfrError::Refused { server, rcode },
            Fault::Rcode(rcode) => XfrError::Rcode { server, rcode },
            Fault::TooLarge(limit) => XfrError::TooLarge { server, limit },
            Fault::Malformed(what) => XfrError::Malformed { server, what },
            Fault::NoSoa => XfrError::NoSoa { server },
            Fault::NotAuthoritative => XfrError::NotAuthoritative { server },
        }
    }
}

impl From<WireError> for Fault {
    fn from(e: WireError) -> Self {
        Fault::Malformed(e.0)
    }
}

// ---------------------------------------------------------------------------------------------
// LUA RDATA
// ---------------------------------------------------------------------------------------------

/// Splits LUA RDATA into its inner type and the code PowerDNS 4.7 executes.
///
/// PowerDNS renders the character-strings as `"c1" "c2"` (escaping `"` and `\`, bytes outside
/// 32..=126 as `\DDD`), splits that text on every `"`, drops empty pieces and appends each piece
/// followed by one space. Done literally here, so a chunk boundary becomes three spaces and a
/// quote inside the code breaks it the same way it breaks in PowerDNS.
pub(crate) fn lua_code(rdata: &[u8]) -> Result<(u16, String), XfrError> {
    let [hi, lo, rest @ ..] = rdata else {
        return Err(XfrError::BadRdata("shorter than the inner type"));
    };
    let inner = u16::from_be_bytes([*hi, *lo]);
    let mut rendered = String::with_capacity(rest.len() + 8);
    let mut chunks = rest;
    while let [len, tail @ ..] = chunks {
        let len = usize::from(*len);
        let Some((chunk, tail)) = tail.split_at_checked(len) else {
            return Err(XfrError::BadRdata("character-string runs past the RDATA"));
        };
        if !rendered.is_empty() {
            rendered.push(' ');
        }
        rendered.push('"');
        for &b in chunk {
            match b {
                b'"' | b'\\' => {
                    rendered.push('\\');
                    rendered.push(char::from(b));
                }
                32..=126 => rendered.push(char::from(b)),
                _ => push_decimal_escape(&mut rendered, b),
            }
        }
        rendered.push('"');
        chunks = tail;
    }
    let mut code = String::with_capacity(rendered.len() + 4);
    for piece in rendered.split('"').filter(|p| !p.is_empty()) {
        code.push_str(piece);
        code.push(' ');
    }
    Ok((inner, code))
}

/// True if the RDATA holds a chunk of exactly 255 bytes followed by another chunk at a joint
/// where the spaces [`lua_code`] inserts could change the meaning of the code.
///
/// Such a record is ambiguous: PowerDNS re-chunks a long quoted string at 255 bytes on the
/// wire, so a primary loading the zone file runs the string unbroken, while the AXFR form (and
/// every 4.7 secondary) runs it with three spaces at byte 255. The two agree when the joint is
/// outside string literals and between tokens that spaces cannot split (verified against
/// PowerDNS 4.7.3: a 300-byte `all({...})` answers all addresses from the primary, although the
/// joined form breaks an address literal). Chunks shorter than 255 bytes are the operator's own
/// split and join the same way on both.
pub(crate) fn rechunk_hazard(rdata: &[u8]) -> bool {
    let Some((glued, joints)) = glue_chunks(rdata) else {
        return false;
    };
    if joints.is_empty() {
        return false;
    }
    let lua = LuaText(&glued);
    let mut state = LexState::Code;
    let mut i = 0;
    let mut next_joint = joints.iter().copied().peekable();
    while i <= glued.len() {
        while let Some(&j) = next_joint.peek()
            && j <= i
        {
            next_joint.next();
            // A joint stepped over lies inside a multi-byte token or an escape.
            if !(j == i && lua.harmless_joint(i, state)) {
                return true;
            }
        }
        let Some(&c) = glued.get(i) else { break };
        let (next, step) = lua.step(state, i, c);
        state = next;
        i += step;
    }
    next_joint.peek().is_some()
}

/// The RDATA's character-strings glued into one text, and the offsets in it where a full
/// (255-byte) string met the next one. `None` if the RDATA is not a list of strings.
fn glue_chunks(rdata: &[u8]) -> Option<(Vec<u8>, Vec<usize>)> {
    let mut glued = Vec::with_capacity(rdata.len());
    let mut joints = Vec::new();
    let mut chunks = rdata.get(2..).unwrap_or_default();
    while let [len, tail @ ..] = chunks {
        let (chunk, tail) = tail.split_at_checked(usize::from(*len))?;
        glued.extend_from_slice(chunk);
        if chunk.len() == 255 && !tail.is_empty() {
            joints.push(glued.len());
        }
        chunks = tail;
    }
    Some((glued, joints))
}

/// Where a minimal Lua lexer is: in code, a quoted string, a long bracket (of a level) or a
/// line comment.
#[derive(Clone, Copy, PartialEq)]
enum LexState {
    Code,
    Quoted(u8),
    Long(usize),
    LineComment,
}

/// Lua source, for finding where strings, long brackets and comments start and end.
struct LuaText<'a>(&'a [u8]);

impl LuaText<'_> {
    /// The level of a long bracket opening at `at` (`[[`, `[=[`, …).
    fn long_open(&self, at: usize) -> Option<usize> {
        let rest = self.0.get(at..)?;
        let eqs = rest.iter().skip(1).take_while(|&&c| c == b'=').count();
        (rest.first() == Some(&b'[') && rest.get(1 + eqs) == Some(&b'[')).then_some(eqs)
    }

    /// Whether a long bracket of `level` closes at `at`.
    fn long_close(&self, at: usize, level: usize) -> bool {
        let rest = self.0.get(at..).unwrap_or_default();
        rest.first() == Some(&b']')
            && rest.iter().skip(1).take(level).all(|&c| c == b'=')
            && rest.get(1 + level) == Some(&b']')
    }

    /// Whether a joint right before `i` (a token boundary in `state`) cannot change the
    /// meaning: text ends there, a comment, or code whose neighbours do not join into one
    /// token.
    fn harmless_joint(&self, i: usize, state: LexState) -> bool {
        let joinable = |c: u8| c.is_ascii_alphanumeric() || b"_.=~<>:-[]".contains(&c);
        match (state, self.0.get(i - 1), self.0.get(i)) {
            (_, _, None) | (LexState::LineComment, _, _) => true,
            (LexState::Code, Some(&l), Some(&r)) => !(joinable(l) && joinable(r)),
            _ => false,
        }
    }

    /// The state after the token starting with `c` at `i`, and its length.
    fn step(&self, state: LexState, i: usize, c: u8) -> (LexState, usize) {
        let mut step = 1;
        let next = match state {
            LexState::Code => match c {
                b'\'' | b'"' => LexState::Quoted(c),
                b'-' if self.0.get(i + 1) == Some(&b'-') => {
                    step = 2;
                    match self.long_open(i + 2) {
                        Some(level) => {
                            step += level + 2;
                            LexState::Long(level)
                        }
                        None => LexState::LineComment,
                    }
                }
                b'[' => match self.long_open(i) {
                    Some(level) => {
                        step = level + 2;
                        LexState::Long(level)
                    }
                    None => LexState::Code,
                },
                _ => LexState::Code,
            },
            LexState::Quoted(q) => match c {
                b'\\' => {
                    step = 2;
                    state
                }
                _ if c == q => LexState::Code,
                _ => state,
            },
            LexState::Long(level) if c == b']' && self.long_close(i, level) => {
                step = level + 2;
                LexState::Code
            }
            LexState::Long(_) => state,
            LexState::LineComment if c == b'\n' => LexState::Code,
            LexState::LineComment => state,
        };
        (next, step)
    }
}

/// Mnemonic of a record type, RFC 3597 `TYPEnn` for the ones without a common name.
fn type_name(code: u16) -> String {
    let known = match code {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        13 => "HINFO",
        15 => "MX",
        16 => "TXT",
        17 => "RP",
        28 => "AAAA",
        29 => "LOC",
        33 => "SRV",
        35 => "NAPTR",
        39 => "DNAME",
        43 => "DS",
        44 => "SSHFP",
        52 => "TLSA",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        257 => "CAA",
        TYPE_LUA => "LUA",
        _ => return format!("TYPE{code}"),
    };
    known.to_string()
}

fn lower(mut wire: Vec<u8>) -> Vec<u8> {
    // Length bytes are at most 63, below b'A', so lower-casing the whole buffer is safe.
    wire.make_ascii_lowercase();
    wire
}

/// True if `name` equals `zone` or lies below it (both lower-case uncompressed wire names).
fn in_zone(name: &[u8], zone: &[u8]) -> bool {
    let mut pos = 0;
    while pos < name.len() {
        if name[pos..] == *zone {
            return true;
        }
        pos += 1 + usize::from(name[pos]);
    }
    false
}

// ---------------------------------------------------------------------------------------------
// AXFR
// ---------------------------------------------------------------------------------------------

fn zone_wire(zone: &str) -> Result<Vec<u8>, XfrError> {
    name_from_text(zone).map_err(|_| XfrError::BadZone(zone.to_string()))
}

/// The transfer as it is read, one message at a time; no I/O, so tests feed it directly.
struct Axfr {
    id: u16,
    zone_wire: Vec<u8>,
    data: ZoneData,
    /// Serial of the opening SOA, once seen.
    opened: Option<u32>,
    records_seen: usize,
    /// (owner, is NS) of every record, for `ZoneData::names`.
    owners: Vec<(Vec<u8>, bool)>,
}

impl Axfr {
    fn new(id: u16, zone_wire: Vec<u8>) -> Axfr {
        let zone = name_text(&zone_wire);
        Axfr {
            id,
            zone_wire,
            data: ZoneData {
                zone,
                serial: 0,
                records: Vec::new(),
                unsupported: Vec::new(),
                names: Default::default(),
            },
            opened: None,
            records_seen: 0,
            owners: Vec::new(),
        }
    }

    /// Takes one message; true once the closing SOA was read.
    fn message(&mut self, msg: &[u8]) -> Result<bool, Fault> {
        let (mut cur, h) = Cursor::new(msg)?;
        if h.id != self.id {
            return Err(Fault::Malformed("answer ID does not match the query"));
        }
        if !h.is_response() || h.opcode() != OPCODE_QUERY {
            return Err(Fault::Malformed("not a response to a query"));
        }
        match h.rcode() {
            0 => {}
            rcode::REFUSED | rcode::NOTAUTH => return Err(Fault::Refused(h.rcode())),
            rcode => return Err(Fault::Rcode(rcode)),
        }
        cur.skip_questions(h.qdcount)?;
        if self.opened.is_none() && h.ancount == 0 {
            return Err(Fault::NoSoa);
        }
        for _ in 0..h.ancount {
            let rr = cur.record()?;
            self.records_seen += 1;
            if self.records_seen > MAX_TRANSFER_RECORDS {
                return Err(Fault::TooLarge("1M records"));
            }
            let is_apex_soa = rr.rtype == TYPE_SOA
                && rr.class == CLASS_IN
                && lower(rr.name.clone()) == self.zone_wire;
            match self.opened {
                None if is_apex_soa => {
                    let serial = cur.soa_serial(&rr)?;
                    self.opened = Some(serial);
                    self.data.serial = serial;
                }
                None => return Err(Fault::NoSoa),
                Some(serial) if is_apex_soa => {
                    if cur.soa_serial(&rr)? != serial {
                        return Err(Fault::Malformed(
                            "closing SOA serial differs from the opening one",
                        ));
                    }
                    // RFC 5936 §2.2: the closing SOA ends the transfer; nothing may follow.
                    let owners = std::mem::take(&mut self.owners);
                    self.data.names = ZoneNames::new(&self.zone_wire, owners).into();
                    return Ok(true);
                }
                Some(_) => self.record(rr),
            }
        }
        Ok(false)
    }

    fn record(&mut self, rr: Rr<'_>) {
        const TYPE_NS: u16 = 2;
        if rr.class == CLASS_IN {
            self.owners
                .push((lower(rr.name.clone()), rr.rtype == TYPE_NS));
        }
        if rr.rtype != TYPE_LUA || rr.class != CLASS_IN {
            return;
        }
        let owner = lower(rr.name);
        let name = name_text(&owner);
        if !in_zone(&owner, &self.zone_wire) {
            self.data.unsupported.push(Unsupported {
                name,
                rtype: "?".to_string(),
                reason: "owner name lies outside the zone".to_string(),
            });
            return;
        }
        match lua_code(rr.rdata) {
            Ok((inner, _))
                if RecordType::from_code(inner).is_some() && rechunk_hazard(rr.rdata) =>
            {
                self.data.unsupported.push(Unsupported {
                    name,
                    rtype: type_name(inner),
                    reason: "code split at 255 bytes inside a string or token, where PowerDNS \
                             primaries and secondaries run different code; left to PowerDNS \
                             (write it as quoted strings shorter than 255 bytes, split between \
                             tokens, for dnsteer to answer it)"
                        .to_string(),
                });
            }
            Ok((inner, code)) => match RecordType::from_code(inner) {
                Some(rtype) => self.data.records.push(RecordSpec {
                    name,
                    rtype,
                    ttl: rr.ttl,
                    body: RecordBody::Lua(code),
                    origin: RecordOrigin::Zone {
                        zone: self.data.zone.clone(),
                    },
                }),
                None => {
                    let rtype = type_name(inner);
                    let reason = format!(
                        "dnsteer answers LUA A, AAAA, CNAME, TXT and PTR only; LUA {rtype} left to PowerDNS"
                    );
                    self.data.unsupported.push(Unsupported {
                        name,
                        rtype,
                        reason,
                    });
                }
            },
            Err(e) => self.data.unsupported.push(Unsupported {
                name,
                rtype: "?".to_string(),
                reason: format!("{e}; left to PowerDNS"),
            }),
        }
    }
}

/// Transfers `zone` (presentation, absolute) by AXFR over TCP from the first of `servers` that
/// completes it; `timeout` bounds each server's whole transfer. Only a complete transfer (opening
/// and closing SOA) is returned: on error the caller keeps its previous data. The error is the
/// last server's.
pub async fn transfer(
    servers: &[SocketAddr],
    zone: &str,
    timeout: Duration,
) -> Result<ZoneData, XfrError> {
    transfer_with(servers, false, zone, timeout).await
}

/// [`transfer`]; with `proxied`, each connection starts with a PROXY header naming itself.
pub(crate) async fn transfer_with(
    servers: &[SocketAddr],
    proxied: bool,
    zone: &str,
    timeout: Duration,
) -> Result<ZoneData, XfrError> {
    let zone_wire = zone_wire(zone)?;
    let mut last = XfrError::NoServers;
    for &server in servers {
        match tokio::time::timeout(timeout, axfr_from(server, proxied, &zone_wire)).await {
            Ok(Ok(data)) => return Ok(data),
            Ok(Err(e)) => last = e,
            Err(_) => last = XfrError::Timeout { server, timeout },
        }
        tracing::debug!(target: "dnsteer::control::xfr", %server, zone, error = %last, "transfer failed");
    }
    Err(last)
}

async fn axfr_from(
    server: SocketAddr,
    proxied: bool,
    zone_wire: &[u8],
) -> Result<ZoneData, XfrError> {
    let io = |source| XfrError::Io { server, source };
    let mut stream = connect(server, proxied).await.map_err(io)?;
    let id = fastrand::u16(..);
    let mut buf = Vec::with_capacity(MAX_FRAME);
    let query = build_query(id, zone_wire, TYPE_AXFR, None);
    write_frame(&mut stream, &query, &mut buf)
        .await
        .map_err(io)?;
    let mut axfr = Axfr::new(id, zone_wire.to_vec());
    let mut total = 0usize;
    loop {
        read_message(&mut stream, &mut buf, server).await?;
        total += 2 + buf.len();
        if total > MAX_TRANSFER_BYTES {
            return Err(Fault::TooLarge("64 MiB").at(server));
        }
        if axfr.message(&buf).map_err(|f| f.at(server))? {
            return Ok(axfr.data);
        }
    }
}

/// Reads one length-prefixed message into `buf`; EOF at any point is a cut transfer.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    server: SocketAddr,
) -> Result<(), XfrError> {
    read_frame(stream, buf, MAX_FRAME)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::UnexpectedEof => XfrError::Cut { server },
            _ => XfrError::Io { server, source },
        })
}

// ---------------------------------------------------------------------------------------------
// SOA serial
// ---------------------------------------------------------------------------------------------

/// Sends of a SOA query to a server that stays silent: UDP loses packets (a server restarting,
/// a full receive queue), and one loss must not stall a zone's refresh.
pub const SOA_ATTEMPTS: usize = 3;

/// Asks the first of `servers` that answers for the SOA serial of `zone` over UDP (TCP when the
/// answer is truncated); the answer must be authoritative. `timeout` bounds each attempt; a
/// round over all servers is repeated, up to [`SOA_ATTEMPTS`] rounds, while some server timed
/// out (an error answer or a refused port ends it: resending would not change that).
pub async fn soa_serial(
    servers: &[SocketAddr],
    zone: &str,
    timeout: Duration,
) -> Result<u32, XfrError> {
    soa_serial_with(servers, false, zone, timeout).await
}

/// [`soa_serial`]; with `proxied`, each query comes behind a PROXY header naming its socket.
pub(crate) async fn soa_serial_with(
    servers: &[SocketAddr],
    proxied: bool,
    zone: &str,
    timeout: Duration,
) -> Result<u32, XfrError> {
    let zone_wire = zone_wire(zone)?;
    let mut last = XfrError::NoServers;
    for _ in 0..SOA_ATTEMPTS {
        let mut timed_out = false;
        for &server in servers {
            // The UDP exchange inside has the same timeout and may be the one that fires.
            match tokio::time::timeout(timeout, soa_from(server, proxied, &zone_wire, timeout))
                .await
            {
                Ok(Ok(serial)) => return Ok(serial),
                Ok(Err(e)) => last = e,
                Err(_) => last = XfrError::Timeout { server, timeout },
            }
            timed_out |= matches!(last, XfrError::Timeout { .. });
            tracing::debug!(target: "dnsteer::control::xfr", %server, zone, error = %last, "SOA query failed");
        }
        if !timed_out {
            break;
        }
    }
    Err(last)
}

async fn soa_from(
    server: SocketAddr,
    proxied: bool,
    zone_wire: &[u8],
    timeout: Duration,
) -> Result<u32, XfrError> {
    let io = |source| XfrError::Io { server, source };
    let id = fastrand::u16(..);
    let q = build_query(id, zone_wire, TYPE_SOA, None);
    let answer = exchange_udp_with(server, proxied, &q, timeout)
        .await
        .map_err(|e| match e {
            ExchangeError::Io(source) => io(source),
            ExchangeError::Timeout(_) => XfrError::Timeout { server, timeout },
            ExchangeError::BadQuery(_) => XfrError::BadZone(name_text(zone_wire)),
        })?;
    let h = Header::parse(&answer).map_err(|e| Fault::from(e).at(server))?;
    if !h.truncated() {
        return soa_answer(&answer, id, zone_wire).map_err(|f| f.at(server));
    }
    let mut stream = connect(server, proxied).await.map_err(io)?;
    let mut buf = Vec::with_capacity(MAX_FRAME);
    write_frame(&mut stream, &q, &mut buf).await.map_err(io)?;
    read_message(&mut stream, &mut buf, server).await?;
    soa_answer(&buf, id, zone_wire).map_err(|f| f.at(server))
}

/// A TCP connection to `server`, opened with a PROXY header naming itself when `proxied`.
async fn connect(server: SocketAddr, proxied: bool) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(server).await?;
    if proxied {
        let mut header = Vec::with_capacity(crate::dns::proxy::MAX_LEN);
        crate::dns::proxy::header(stream.local_addr()?, server, false, &mut header);
        tokio::io::AsyncWriteExt::write_all(&mut stream, &header).await?;
    }
    Ok(stream)
}

fn soa_answer(msg: &[u8], id: u16, zone_wire: &[u8]) -> Result<u32, Fault> {
    let (mut cur, h) = Cursor::new(msg)?;
    if h.id != id || !h.is_response() {
        return Err(Fault::Malformed("answer ID does not match the query"));
    }
    match h.rcode() {
        0 => {}
        rcode::REFUSED | rcode::NOTAUTH => return Err(Fault::Refused(h.rcode())),
        rcode => return Err(Fault::Rcode(rcode)),
    }
    if !h.authoritative() {
        return Err(Fault::NotAuthoritative);
    }
    cur.skip_questions(h.qdcount)?;
    for _ in 0..h.ancount {
        let rr = cur.record()?;
        if rr.rtype == TYPE_SOA && rr.class == CLASS_IN && lower(rr.name.clone()) == zone_wire {
            return Ok(cur.soa_serial(&rr)?);
        }
    }
    Err(Fault::NoSoa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::message::{notify_ack, parse_notify};
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::{NULL, SOA, TXT};
    use hickory_proto::rr::{Name, RData, Record, RecordType as HType};
    use proptest::prelude::*;

    fn wire(name: &str) -> Vec<u8> {
        name_from_text(name).unwrap()
    }

    fn lua_rdata(inner: u16, chunks: &[&[u8]]) -> Vec<u8> {
        let mut r = inner.to_be_bytes().to_vec();
        for c in chunks {
            r.push(c.len() as u8);
            r.extend_from_slice(c);
        }
        r
    }

    fn soa_rdata(serial: u32) -> Vec<u8> {
        let mut r = wire("ns1.xfr.test.");
        r.extend(wire("hostmaster.xfr.test."));
        for v in [serial, 3600, 600, 86400, 60] {
            r.extend(v.to_be_bytes());
        }
        r
    }

    fn rr(name: &str, rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut r = wire(name);
        r.extend(rtype.to_be_bytes());
        r.extend(CLASS_IN.to_be_bytes());
        r.extend(ttl.to_be_bytes());
        r.extend((rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
        r
    }

    /// A response with the AXFR question of xfr.test. (if `question`) and `answers`.
    fn response(id: u16, rcode: u8, question: bool, answers: &[Vec<u8>]) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend((0x8400u16 | u16::from(rcode)).to_be_bytes());
        m.extend(u16::from(question).to_be_bytes());
        m.extend((answers.len() as u16).to_be_bytes());
        m.extend([0, 0, 0, 0]);
        if question {
            m.extend(wire("xfr.test."));
            m.extend(TYPE_AXFR.to_be_bytes());
            m.extend(CLASS_IN.to_be_bytes());
        }
        for a in answers {
            m.extend_from_slice(a);
        }
        m
    }

    fn code(rdata: &[u8]) -> String {
        lua_code(rdata).unwrap().1
    }

    #[test]
    fn lua_code_one_chunk() {
        let r = lua_rdata(1, &[b"pickrandom({'192.0.2.1','192.0.2.2'})"]);
        assert_eq!(
            lua_code(&r).unwrap(),
            (1, "pickrandom({'192.0.2.1','192.0.2.2'}) ".to_string())
        );
    }

    #[test]
    fn lua_code_several_chunks_gain_three_spaces_each() {
        // `"a" "b"` splits into `a`, ` `, `b`: each piece is followed by one space.
        let r = lua_rdata(16, &[b"'x'..", b"'y'", b"..'z'"]);
        assert_eq!(
            lua_code(&r).unwrap(),
            (16, "'x'..   'y'   ..'z' ".to_string())
        );
    }

    #[test]
    fn lua_code_boundary_inside_a_token_breaks_it_like_powerdns() {
        let r = lua_rdata(1, &[b"pickran", b"dom({'192.0.2.1'})"]);
        assert_eq!(code(&r), "pickran   dom({'192.0.2.1'}) ");
    }

    #[test]
    fn lua_code_quote_inside_splits_there() {
        // `"a\"b"` → pieces `a\`, `b`: the backslash stays, the quote becomes a split point.
        let r = lua_rdata(16, &[b"'a\"b'"]);
        assert_eq!(code(&r), "'a\\ b' ");
        let r = lua_rdata(16, &[b"\"quoted\""]);
        assert_eq!(code(&r), "\\ quoted\\ ");
    }

    #[test]
    fn lua_code_escapes_backslash_and_unprintable_bytes() {
        let r = lua_rdata(16, &[b"a\\b\tc\x7f\xff"]);
        assert_eq!(code(&r), "a\\\\b\\009c\\127\\255 ");
    }

    #[test]
    fn lua_code_empty_chunks_and_no_chunks() {
        assert_eq!(lua_code(&[0, 1]).unwrap(), (1, String::new()));
        // `"" "x"` → pieces ` ` and `x`.
        assert_eq!(code(&lua_rdata(1, &[b"", b"x"])), "  x ");
        assert_eq!(code(&lua_rdata(1, &[b""])), "");
    }

    #[test]
    fn lua_code_rejects_truncated_rdata() {
        assert_eq!(lua_code(&[]).unwrap_err().kind(), "bad_rdata");
        assert_eq!(lua_code(&[0]).unwrap_err().kind(), "bad_rdata");
        assert_eq!(lua_code(&[0, 1, 5, b'a']).unwrap_err().kind(), "bad_rdata");
    }

    /// LUA A RDATA of `left` padded to 255 bytes, then `right` as the next chunk.
    fn rechunked(left: &str, right: &str) -> Vec<u8> {
        let first = format!("{left:<255}");
        let first = if left.len() == 255 {
            left.to_string()
        } else {
            first
        };
        lua_rdata(1, &[first.as_bytes(), right.as_bytes()])
    }

    /// `code` re-chunked at 255 bytes the way PowerDNS sends it.
    fn wire_chunks(code: &str) -> Vec<u8> {
        let chunks: Vec<&[u8]> = code.as_bytes().chunks(255).collect();
        lua_rdata(1, &chunks)
    }

    #[test]
    fn rechunk_hazard_only_for_joints_that_spaces_can_break() {
        let pad = |head: &str, tail: &str| {
            format!("{head}{}{tail}", " ".repeat(255 - head.len() - tail.len()))
        };
        // No 255-byte chunk: the operator's own split, the same on every PowerDNS.
        assert!(!rechunk_hazard(&lua_rdata(
            1,
            &[b"pickran", b"dom({'192.0.2.1'})"]
        )));
        assert!(!rechunk_hazard(&lua_rdata(1, &[b"x"])));
        assert!(!rechunk_hazard(&[0]));
        // Between tokens that spaces cannot merge or split.
        let code = pad("pickrandom({'192.0.2.1',", "") + "'192.0.2.2'})";
        assert!(!rechunk_hazard(&wire_chunks(&code)));
        assert!(!rechunk_hazard(&rechunked(&pad("all({", "'a',"), "'b'})")));
        assert!(!rechunk_hazard(&rechunked(&pad("all({'a'", ""), ",'b'})")));
        // Inside a string, an identifier, a number, an operator, an escape, a long bracket.
        assert!(rechunk_hazard(&rechunked(
            &pad("all({", "'192.0."),
            "2.1'})"
        )));
        assert!(rechunk_hazard(&rechunked(
            &pad("", "pickran"),
            "dom({'a'})"
        )));
        assert!(rechunk_hazard(&rechunked(&pad("", "x=12"), "34")));
        assert!(rechunk_hazard(&rechunked(&pad("", "'a'."), ".'b'")));
        assert!(rechunk_hazard(&rechunked(&pad("", "'a\\"), "n'")));
        assert!(rechunk_hazard(&rechunked(&pad("", "[[a "), " b]]")));
        assert!(rechunk_hazard(&rechunked(&pad("", "[==[a ]] "), " b]==]")));
        // A string closed before the joint, and a comment, are harmless.
        assert!(!rechunk_hazard(&rechunked(&pad("", "[[a]] .. "), "'b'")));
        assert!(!rechunk_hazard(&rechunked(
            &pad(";x=1 -- a comm", ""),
            "ent\nreturn x"
        )));
        // Every joint counts: a harmless first one does not hide a second inside a string.
        let two = pad("all({", "'a',") + &pad("", "'b") + "c'})";
        assert!(rechunk_hazard(&wire_chunks(&two)));
        let two = pad("all({", "'a',") + &pad("'b',", "") + "'c'})";
        assert!(!rechunk_hazard(&wire_chunks(&two)));
        // A 255-byte chunk followed only by an empty one.
        assert!(!rechunk_hazard(&lua_rdata(
            1,
            &[" ".repeat(255).as_bytes(), b""]
        )));
    }

    #[test]
    fn rechunked_records_with_a_hazard_are_left_to_powerdns() {
        let code = format!(
            "pickrandom({{{}}})",
            (1..40)
                .map(|i| format!("'192.0.2.{i}'"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let a = transfer_one_lua(&code);
        assert!(a.data.records.is_empty());
        assert_eq!(a.data.unsupported.len(), 1);
        assert_eq!(a.data.unsupported[0].rtype, "A");
        // The same code split after a comma is harmless and kept.
        let code = code.replacen("pickrandom({", "all({", 1);
        let a = transfer_one_lua(&code);
        assert_eq!(a.data.records.len(), 1);
        assert!(a.data.unsupported.is_empty());
    }

    #[test]
    fn walker_reads_hickory_messages_with_compression() {
        let zone = Name::from_ascii("Xfr.Test.").unwrap();
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(zone.clone(), HType::AXFR));
        let soa = SOA::new(
            Name::from_ascii("ns1.xfr.test.").unwrap(),
            Name::from_ascii("hostmaster.xfr.test.").unwrap(),
            42,
            3600,
            600,
            86400,
            60,
        );
        m.add_answer(Record::from_rdata(zone.clone(), 300, RData::SOA(soa)));
        let lua = lua_rdata(1, &[b"'192.0.2.1'"]);
        m.add_answer(Record::from_rdata(
            Name::from_ascii("www.xfr.test.").unwrap(),
            30,
            RData::Unknown {
                code: HType::Unknown(TYPE_LUA),
                rdata: NULL::with(lua.clone()),
            },
        ));
        m.add_answer(Record::from_rdata(
            Name::from_ascii("www.xfr.test.").unwrap(),
            60,
            RData::TXT(TXT::new(vec!["hi".to_string()])),
        ));
        let bytes = m.to_vec().unwrap();
        // hickory compresses owner names and SOA names against the question.
        assert!(bytes.len() < 12 + 10 + 3 * 30 + 40, "expected compression");

        let (mut cur, h) = Cursor::new(&bytes).unwrap();
        assert_eq!((h.id, h.qdcount, h.ancount), (7, 1, 3));
        let q = cur.question().unwrap();
        assert_eq!(q.name, b"\x03Xfr\x04Test\x00");
        assert_eq!(q.qtype, TYPE_AXFR);
        let r = cur.record().unwrap();
        assert_eq!((r.rtype, r.ttl), (TYPE_SOA, 300));
        assert_eq!(name_text(&r.name), "xfr.test.");
        assert_eq!(cur.soa_serial(&r).unwrap(), 42);
        let r = cur.record().unwrap();
        assert_eq!((r.rtype, r.ttl, r.rdata), (TYPE_LUA, 30, &lua[..]));
        assert_eq!(name_text(&r.name), "www.xfr.test.");
        let r = cur.record().unwrap();
        assert_eq!((r.rtype, r.rdata), (16, &b"\x02hi"[..]));
        assert_eq!(cur.pos, bytes.len());
    }

    #[test]
    fn walker_rejects_bad_pointers_and_truncation() {
        let mut m = response(1, 0, false, &[]);
        m[7] = 1; // ancount 1
        let base = m.clone();
        // Pointer to itself, and forward pointer.
        for ptr in [[0xc0, 12], [0xc0, 40]] {
            let mut m = base.clone();
            m.extend(ptr);
            m.extend([0; 10]);
            let (mut cur, _) = Cursor::new(&m).unwrap();
            assert!(cur.record().is_err());
        }
        // A loop through two pointers: 12 → 14 → 12.
        let mut m = base.clone();
        m.extend([0xc0, 14, 0xc0, 12]);
        let (cur, _) = Cursor::new(&m).unwrap();
        assert!(cur.name_at(14, &mut Vec::new()).is_err());
        // Reserved label types.
        let mut m = base.clone();
        m.extend([0x41, 0]);
        let (mut cur, _) = Cursor::new(&m).unwrap();
        assert!(cur.record().is_err());
        // Every strict prefix of a valid record fails cleanly.
        let full = response(
            1,
            0,
            true,
            &[rr("a.xfr.test.", TYPE_LUA, 5, &lua_rdata(1, &[b"x"]))],
        );
        for cut in 0..full.len() {
            let ok = Cursor::new(&full[..cut]).and_then(|(mut cur, _)| {
                cur.question()?;
                cur.record()
            });
            assert!(ok.is_err(), "prefix of {cut} bytes parsed");
        }
    }

    #[test]
    fn in_zone_respects_label_boundaries() {
        let zone = wire("xfr.test.");
        assert!(in_zone(&wire("xfr.test."), &zone));
        assert!(in_zone(&wire("a.b.xfr.test."), &zone));
        assert!(!in_zone(&wire("axfr.test."), &zone));
        assert!(!in_zone(&wire("test."), &zone));
    }

    fn axfr() -> Axfr {
        Axfr::new(9, wire("xfr.test."))
    }

    /// A whole transfer in one message: SOA, `long.xfr.test.` LUA `code` in 255-byte
    /// chunks, SOA.
    fn transfer_one_lua(code: &str) -> Axfr {
        let mut a = axfr();
        let msg = response(
            9,
            0,
            true,
            &[
                rr("xfr.test.", TYPE_SOA, 300, &soa_rdata(7)),
                rr("long.xfr.test.", TYPE_LUA, 30, &wire_chunks(code)),
                rr("xfr.test.", TYPE_SOA, 300, &soa_rdata(7)),
            ],
        );
        assert_eq!(a.message(&msg), Ok(true));
        a
    }

    #[test]
    fn axfr_over_several_messages() {
        let mut a = axfr();
        let first = response(
            9,
            0,
            true,
            &[
                rr("XFR.test.", TYPE_SOA, 300, &soa_rdata(7)),
                rr("xfr.test.", 2, 300, &wire("ns1.xfr.test.")),
                rr(
                    "WWW.xfr.test.",
                    TYPE_LUA,
                    30,
                    &lua_rdata(1, &[b"'192.0.2.1'"]),
                ),
                rr("mx.xfr.test.", TYPE_LUA, 30, &lua_rdata(15, &[b"'10 a.'"])),
            ],
        );
        assert_eq!(a.message(&first), Ok(false));
        let second = response(
            9,
            0,
            false,
            &[
                rr("*.w.xfr.test.", TYPE_LUA, 40, &lua_rdata(16, &[b"'t'"])),
                rr(
                    "inc.xfr.test.",
                    TYPE_LUA,
                    40,
                    &lua_rdata(TYPE_LUA, &[b"x=1"]),
                ),
                rr("bad.xfr.test.", TYPE_LUA, 40, &[0, 1, 9]),
                rr(
                    "other.test.",
                    TYPE_LUA,
                    40,
                    &lua_rdata(1, &[b"'192.0.2.1'"]),
                ),
            ],
        );
        assert_eq!(a.message(&second), Ok(false));
        let last = response(
            9,
            0,
            false,
            &[rr("xfr.test.", TYPE_SOA, 300, &soa_rdata(7))],
        );
        assert_eq!(a.message(&last), Ok(true));

        let d = a.data;
        assert_eq!((d.zone.as_str(), d.serial), ("xfr.test.", 7));
        let got: Vec<_> = d
            .records
            .iter()
            .map(|r| (r.name.as_str(), r.rtype, r.ttl, r.body.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "www.xfr.test.",
                    RecordType::A,
                    30,
                    RecordBody::Lua("'192.0.2.1' ".into())
                ),
                (
                    "*.w.xfr.test.",
                    RecordType::Txt,
                    40,
                    RecordBody::Lua("'t' ".into())
                ),
                // Code for include(): kept, compiled into the records that include it.
                (
                    "inc.xfr.test.",
                    RecordType::Lua,
                    40,
                    RecordBody::Lua("x=1 ".into())
                ),
            ]
        );
        assert_eq!(
            d.records[0].origin,
            RecordOrigin::Zone {
                zone: "xfr.test.".into()
            }
        );
        let unsupported: Vec<_> = d
            .unsupported
            .iter()
            .map(|u| (u.name.as_str(), u.rtype.as_str()))
            .collect();
        assert_eq!(
            unsupported,
            [
                ("mx.xfr.test.", "MX"),
                ("bad.xfr.test.", "?"),
                ("other.test.", "?"),
            ]
        );
    }

    #[test]
    fn axfr_faults() {
        let soa = rr("xfr.test.", TYPE_SOA, 300, &soa_rdata(7));
        for rcode in [5, 9] {
            assert_eq!(
                axfr().message(&response(9, rcode, true, &[])),
                Err(Fault::Refused(rcode))
            );
        }
        assert_eq!(
            axfr().message(&response(9, 2, true, &[])),
            Err(Fault::Rcode(2))
        );
        assert_eq!(
            axfr().message(&response(9, 0, true, &[])),
            Err(Fault::NoSoa)
        );
        let lua = rr("a.xfr.test.", TYPE_LUA, 1, &lua_rdata(1, &[b"x"]));
        assert_eq!(
            axfr().message(&response(9, 0, true, std::slice::from_ref(&lua))),
            Err(Fault::NoSoa)
        );
        let other_soa = rr("test.", TYPE_SOA, 300, &soa_rdata(7));
        assert_eq!(
            axfr().message(&response(9, 0, true, &[other_soa])),
            Err(Fault::NoSoa)
        );
        assert!(matches!(
            axfr().message(&response(8, 0, true, std::slice::from_ref(&soa))),
            Err(Fault::Malformed(_))
        ));
        let mut a = axfr();
        assert_eq!(
            a.message(&response(9, 0, true, &[soa.clone(), lua])),
            Ok(false)
        );
        let changed = rr("xfr.test.", TYPE_SOA, 300, &soa_rdata(8));
        assert!(matches!(
            a.message(&response(9, 0, false, &[changed])),
            Err(Fault::Malformed(_))
        ));
        // A message cut inside its answer section.
        let full = response(9, 0, true, &[soa.clone(), soa]);
        assert!(matches!(
            axfr().message(&full[..full.len() - 3]),
            Err(Fault::Malformed(_))
        ));
    }

    #[test]
    fn soa_answer_needs_authority_and_the_zone_soa() {
        let soa = rr("xfr.test.", TYPE_SOA, 300, &soa_rdata(77));
        let zone = wire("xfr.test.");
        let ok = response(3, 0, true, std::slice::from_ref(&soa));
        assert_eq!(soa_answer(&ok, 3, &zone), Ok(77));
        let mut not_aa = ok.clone();
        not_aa[2] &= !0x04;
        assert_eq!(soa_answer(&not_aa, 3, &zone), Err(Fault::NotAuthoritative));
        assert_eq!(
            soa_answer(&response(3, 5, true, &[]), 3, &zone),
            Err(Fault::Refused(5))
        );
        assert_eq!(
            soa_answer(&response(3, 3, true, &[]), 3, &zone),
            Err(Fault::Rcode(3))
        );
        assert_eq!(
            soa_answer(&response(3, 0, true, &[]), 3, &zone),
            Err(Fault::NoSoa)
        );
        let mut short_soa = soa_rdata(1);
        short_soa.pop();
        let bad = response(3, 0, true, &[rr("xfr.test.", TYPE_SOA, 300, &short_soa)]);
        assert!(matches!(
            soa_answer(&bad, 3, &zone),
            Err(Fault::Malformed(_))
        ));
    }

    fn hickory_notify(id: u16, zone: &str, qtype: HType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
        m.add_query(Query::query(Name::from_ascii(zone).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    #[test]
    fn notify_is_parsed_and_acknowledged() {
        let pkt = hickory_notify(0x1234, "XFR.Test.", HType::SOA);
        assert_eq!(parse_notify(&pkt), Some((0x1234, "xfr.test.".to_string())));
        let mut out = vec![0xaa; 3];
        assert!(notify_ack(&pkt, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.op_code, OpCode::Notify);
        assert!(m.metadata.authoritative);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].name().to_ascii(), "XFR.Test.");
        assert_eq!(m.queries[0].query_type(), HType::SOA);
        assert!(m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty());
        assert!(m.edns.is_none());
    }

    #[test]
    fn non_notify_packets_are_not_acknowledged() {
        let mut out = vec![1, 2, 3];
        let query = {
            let mut m = Message::new(5, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(
                Name::from_ascii("xfr.test.").unwrap(),
                HType::SOA,
            ));
            m.to_vec().unwrap()
        };
        let response = {
            let mut m = Message::new(5, MessageType::Response, OpCode::Notify);
            m.add_query(Query::query(
                Name::from_ascii("xfr.test.").unwrap(),
                HType::SOA,
            ));
            m.to_vec().unwrap()
        };
        for pkt in [
            query,
            response,
            hickory_notify(5, "xfr.test.", HType::A),
            vec![0; 5],
            hickory_notify(5, "xfr.test.", HType::SOA)[..20].to_vec(),
        ] {
            assert_eq!(parse_notify(&pkt), None);
            assert!(!notify_ack(&pkt, &mut out));
        }
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn type_names() {
        assert_eq!(type_name(15), "MX");
        assert_eq!(type_name(TYPE_LUA), "LUA");
        assert_eq!(type_name(4242), "TYPE4242");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = lua_code(&bytes);
            let _ = rechunk_hazard(&bytes);
            let _ = parse_notify(&bytes);
            let mut out = Vec::new();
            let _ = notify_ack(&bytes, &mut out);
            let mut a = axfr();
            a.id = u16::from_be_bytes([bytes.first().copied().unwrap_or(0), bytes.get(1).copied().unwrap_or(0)]);
            let _ = a.message(&bytes);
            let _ = soa_answer(&bytes, a.id, &wire("xfr.test."));
            if let Ok((mut cur, h)) = Cursor::new(&bytes) {
                for _ in 0..h.qdcount.min(4) {
                    if cur.question().is_err() { break; }
                }
                for _ in 0..h.ancount.min(8) {
                    match cur.record() {
                        Ok(r) => { let _ = cur.soa_serial(&r); let _ = name_text(&r.name); }
                        Err(_) => break,
                    }
                }
            }
        }

        #[test]
        fn arbitrary_records_after_a_valid_prefix_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..300),
            count in 1u16..6,
        ) {
            let mut m = response(9, 0, true, &[rr("xfr.test.", TYPE_SOA, 300, &soa_rdata(1))]);
            m[6..8].copy_from_slice(&(1 + count).to_be_bytes());
            m.extend(tail);
            let _ = axfr().message(&m);
        }

        #[test]
        fn rechunk_hazard_never_panics_on_long_lua_text(code in "[a-z0-9 '\\\\\\[\\]=.,(){}-]{200,800}") {
            let chunks: Vec<&[u8]> = code.as_bytes().chunks(255).collect();
            let _ = rechunk_hazard(&lua_rdata(1, &chunks));
        }

        #[test]
        fn lua_code_round_trips_single_safe_chunks(code in "[a-zA-Z0-9 (){}',.;=_-]{0,255}") {
            let rdata = lua_rdata(1, &[code.as_bytes()]);
            let want = if code.is_empty() { String::new() } else { format!("{code} ") };
            prop_assert_eq!(lua_code(&rdata).unwrap(), (1, want));
        }
    }
}
