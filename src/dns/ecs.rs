//! The EDNS Client Subnet option (RFC 7871): checked when a query carries one, encoded when
//! forwarding adds one or an answer echoes one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::be16;
use super::{OPT_ECS, ParseError};

/// A validated EDNS Client Subnet option (RFC 7871).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecs {
    /// Address masked to `source_prefix` (always, so it can be used as `bestwho` directly).
    pub addr: IpAddr,
    pub source_prefix: u8,
    pub scope_prefix: u8,
}

/// RFC 7871 §6 / §7.1.1 checks for an ECS option in a query.
pub(super) fn parse_ecs(data: &[u8]) -> Result<Ecs, ParseError> {
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
pub(super) const ECS_OPTION_MAX: usize = 4 + 4 + 16;

/// Encodes a complete ECS option (code + length + data), address masked to `source_prefix` and
/// cut to ceil(source/8) bytes. Prefixes are clamped to the family's width.
pub(super) fn encode_ecs(
    addr: IpAddr,
    source_prefix: u8,
    scope_prefix: u8,
) -> ([u8; ECS_OPTION_MAX], usize) {
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
