//! The one DNS wire layer. The packet path's zero-copy parts — query parsing ([`query`]),
//! in-place answers ([`response`]), the forwarding rewrites ([`rewrite`], [`ecs`]) — and the
//! control plane's: the message walker and NOTIFY ([`message`]), one-shot queries to a server
//! ([`ask`]) and TCP length framing ([`framing`]). Names in every form live in [`name`].
//!
//! Everything here works on raw bytes with bounds-checked reads: no input makes these functions
//! panic, and the packet-path ones allocate nothing beyond growing the caller's output buffer.

pub mod ask;
pub mod cached;
pub mod ecs;
pub mod framing;
pub mod message;
pub mod name;
pub mod proxy;
pub mod query;
pub mod response;
pub mod rewrite;
#[cfg(test)]
mod test_packets;
mod wire;

pub use ask::{ExchangeError, QueryEdns, build_query, exchange_udp, exchange_udp_with};
pub use ecs::Ecs;
pub use framing::{MAX_FRAME, read_frame, write_frame};
pub use name::{NameError, WireName, name_from_text, name_from_text_keep_case, name_text};
pub use query::{Edns, ParseError, Query, parse_query, parse_query_any_version};
pub use response::{EdnsReply, ResponseBuilder, write_badvers, write_error};
pub use rewrite::{Added, response_matches, restore_response, rewrite_for_upstream};

pub const HEADER_LEN: usize = 12;

// Record types.
pub const TYPE_SOA: u16 = 6;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_DNSKEY: u16 = 48;
pub const TYPE_TSIG: u16 = 250;
pub const TYPE_AXFR: u16 = 252;

pub const CLASS_IN: u16 = 1;

pub const OPCODE_QUERY: u8 = 0;
pub const OPCODE_NOTIFY: u8 = 4;

pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const NOTAUTH: u8 = 9;
    /// Extended (needs OPT): 16 = BADVERS.
    pub const BADVERS: u16 = 16;
}

// Header flag bits.
pub const FLAG_QR: u16 = 0x8000;
pub const FLAG_AA: u16 = 0x0400;
pub const FLAG_TC: u16 = 0x0200;
pub const FLAG_RD: u16 = 0x0100;
pub const FLAG_CD: u16 = 0x0010;

/// EDNS option code of Client Subnet (RFC 7871).
pub const OPT_ECS: u16 = 8;
/// The DO bit in the OPT record's TTL field.
pub const EDNS_DO: u32 = 0x8000;

// Header field offsets.
const OFF_FLAGS: usize = 2;
const OFF_QDCOUNT: usize = 4;
const OFF_ANCOUNT: usize = 6;
const OFF_NSCOUNT: usize = 8;
const OFF_ARCOUNT: usize = 10;
