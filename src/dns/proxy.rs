//! PROXY protocol version 2 headers (haproxy's proxy-protocol.txt §2.2), as PowerDNS
//! Authoritative reads them (`proxy-protocol-from`): in front of each UDP datagram, or once at
//! the start of a TCP connection. No TLVs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The 12-byte signature every v2 header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\x00\r\nQUIT\n";
/// Version 2, command PROXY.
const V2_PROXY: u8 = 0x21;

/// Largest header written here (IPv6).
pub(crate) const MAX_LEN: usize = 16 + 36;

/// Writes a v2 PROXY header for a client at `src` that reached dnsteer at `dst` into `out`
/// (cleared first); `datagram` picks UDP or TCP. `dst` is put in `src`'s family (an IPv4
/// client of a dual-stack socket: its v4-mapped address, else the unspecified address).
pub(crate) fn header(src: SocketAddr, dst: SocketAddr, datagram: bool, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&SIGNATURE);
    out.push(V2_PROXY);
    let proto: u8 = if datagram { 0x2 } else { 0x1 };
    match (src.ip().to_canonical(), dst.ip().to_canonical()) {
        (IpAddr::V4(s), d) => {
            let d = match d {
                IpAddr::V4(d) => d,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            };
            out.push(0x10 | proto);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), d) => {
            let d = match d {
                IpAddr::V6(d) => d,
                IpAddr::V4(d) => d.to_ipv6_mapped(),
            };
            out.push(0x20 | proto);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_ipv6_headers_match_the_spec_layout() {
        let mut out = Vec::new();
        header(
            "203.0.113.9:4444".parse().unwrap(),
            "127.0.0.1:53".parse().unwrap(),
            true,
            &mut out,
        );
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x12, 0, 12, 203, 0, 113, 9, 127, 0, 0, 1]);
        want.extend_from_slice(&[0x11, 0x5c, 0, 53]);
        assert_eq!(out, want);

        header(
            "[2001:db8::1]:1".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            false,
            &mut out,
        );
        assert_eq!(out.len(), MAX_LEN);
        assert_eq!(&out[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(&out[48..], &[0, 1, 0, 53]);
    }
}
