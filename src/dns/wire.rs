//! Bounds-checked big-endian reads and writes, and the record framing (owner, fixed part,
//! RDATA) shared by the query parser, the response builder and the forwarding rewrites.

use super::{OFF_FLAGS, ParseError};

pub(super) fn be16(p: &[u8], off: usize) -> Option<u16> {
    match p.get(off..off.checked_add(2)?) {
        Some(&[a, b]) => Some(u16::from_be_bytes([a, b])),
        _ => None,
    }
}

pub(super) fn be32(p: &[u8], off: usize) -> Option<u32> {
    match p.get(off..off.checked_add(4)?) {
        Some(&[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
        _ => None,
    }
}

/// Writes a big-endian u16 if the bytes exist (callers only write where they read before).
pub(super) fn set16(p: &mut [u8], off: usize, v: u16) {
    if let Some(dst) = p.get_mut(off..off + 2) {
        dst.copy_from_slice(&v.to_be_bytes());
    }
}

pub(super) fn set_flag(p: &mut [u8], flag: u16) {
    let flags = be16(p, OFF_FLAGS).unwrap_or(0) | flag;
    set16(p, OFF_FLAGS, flags);
}

/// TYPE, CLASS, TTL, RDLENGTH: the part of a record between owner and RDATA.
pub(super) fn push_rr_fixed(out: &mut Vec<u8>, rtype: u16, class: u16, ttl: u32, rdlen: u16) {
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&rdlen.to_be_bytes());
}

/// Skips a possibly compressed name in a record. Returns the offset after it.
pub(super) fn skip_name(pkt: &[u8], mut off: usize) -> Result<usize, ParseError> {
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
pub(super) struct Rr {
    pub(super) start: usize,
    pub(super) rtype: u16,
    pub(super) class: u16,
    pub(super) ttl: u32,
    pub(super) rdata: usize,
    pub(super) rdlen: usize,
    pub(super) end: usize,
}

pub(super) fn read_rr(pkt: &[u8], start: usize) -> Result<Rr, ParseError> {
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
