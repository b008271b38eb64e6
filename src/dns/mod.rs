//! The one DNS wire layer. The packet path's zero-copy parts — query parsing ([`query`]),
//! in-place answers ([`response`]), the forwarding rewrites ([`rewrite`], [`ecs`]) — and the
//! control plane's: the message walker and NOTIFY ([`message`]), one-shot queries to a server
//! ([`ask`]) and TCP length framing ([`framing`]). Names in every form live in [`name`].
//!
//! Everything here works on raw bytes with bounds-checked reads: no input makes these functions
//! panic, and the packet-path ones allocate nothing beyond growing the caller's output buffer.

pub(crate) mod ask;
pub(crate) mod cached;
pub(crate) mod cookie;
pub(crate) mod ecs;
pub(crate) mod framing;
pub(crate) mod message;
pub(crate) mod name;
pub(crate) mod proxy;
pub(crate) mod query;
pub(crate) mod response;
pub(crate) mod rewrite;
pub(crate) mod shape;
#[cfg(test)]
mod test_packets;
mod wire;

pub(crate) use ask::{ExchangeError, exchange_udp_with};
pub use ask::{QueryEdns, build_query};
pub use ecs::Ecs;
pub(crate) use framing::{MAX_FRAME, read_frame, write_frame};
pub use name::{NameError, WireName, name_from_text};
pub(crate) use name::{name_from_text_keep_case, name_text};
pub use query::{Edns, ParseError, Query, parse_query, parse_query_any_version};
pub(crate) use response::write_badvers;
pub use response::{EdnsReply, ResponseBuilder, write_error};
pub use rewrite::{Added, response_matches, restore_response, rewrite_for_upstream};
pub use shape::{ResponseClass, classify_response, for_each_label};

pub(crate) const HEADER_LEN: usize = 12;

// Record types.
pub(crate) const TYPE_SOA: u16 = 6;
pub(crate) const TYPE_OPT: u16 = 41;
pub(crate) const TYPE_DNSKEY: u16 = 48;
pub(crate) const TYPE_TSIG: u16 = 250;
pub(crate) const TYPE_AXFR: u16 = 252;

pub(crate) const CLASS_IN: u16 = 1;

pub(crate) const OPCODE_QUERY: u8 = 0;
pub(crate) const OPCODE_NOTIFY: u8 = 4;

pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub(crate) const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub(crate) const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub(crate) const NOTAUTH: u8 = 9;
    /// Extended (needs OPT): 16 = BADVERS.
    pub const BADVERS: u16 = 16;
    /// Extended (needs OPT): 23 = BADCOOKIE (RFC 7873 §8).
    pub const BADCOOKIE: u16 = 23;
}

// Header flag bits.
pub(crate) const FLAG_QR: u16 = 0x8000;
pub(crate) const FLAG_AA: u16 = 0x0400;
pub(crate) const FLAG_TC: u16 = 0x0200;
pub(crate) const FLAG_RD: u16 = 0x0100;
pub(crate) const FLAG_CD: u16 = 0x0010;

/// EDNS option code of Client Subnet (RFC 7871).
pub(crate) const OPT_ECS: u16 = 8;
/// EDNS option code of COOKIE (RFC 7873).
pub(crate) const OPT_COOKIE: u16 = 10;
/// The DO bit in the OPT record's TTL field.
pub(crate) const EDNS_DO: u32 = 0x8000;

// Header field offsets.
const OFF_FLAGS: usize = 2;
const OFF_QDCOUNT: usize = 4;
const OFF_ANCOUNT: usize = 6;
const OFF_NSCOUNT: usize = 8;
const OFF_ARCOUNT: usize = 10;
