//! dnstap on the wire: the protobuf `Dnstap` message (dnstap.pb `dnstap.proto`), hand-encoded
//! because dnsteer fills only a handful of its fields, and Frame Streams framing (data frames
//! and the control frames of the bidirectional handshake).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The Frame Streams content type of dnstap data frames.
pub(crate) const CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";

/// Longest control frame accepted from the collector (fstrm's own bound).
pub(crate) const MAX_CONTROL_LEN: usize = 512;

/// `Message.Type` values dnsteer writes: it is the authoritative server its clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageType {
    AuthQuery = 1,
    AuthResponse = 2,
}

/// One dnstap `Message`, borrowed from a queued exchange.
pub(crate) struct Message<'a> {
    pub(crate) kind: MessageType,
    pub(crate) tcp: bool,
    pub(crate) client: SocketAddr,
    /// When the query was received, since the Unix epoch.
    pub(crate) query_time: Duration,
    /// The client's query, verbatim (AUTH_QUERY).
    pub(crate) query: Option<&'a [u8]>,
    /// When the answer was sent, and the answer, verbatim (AUTH_RESPONSE).
    pub(crate) response: Option<(Duration, &'a [u8])>,
}

// Protobuf wire types.
const VARINT: u8 = 0;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u8, wire: u8) {
    // Every field dnsteer writes is below 16: its key is one byte.
    out.push((field << 3) | wire);
}

fn uint(out: &mut Vec<u8>, field: u8, v: u64) {
    key(out, field, VARINT);
    varint(out, v);
}

fn bytes(out: &mut Vec<u8>, field: u8, b: &[u8]) {
    key(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn fixed32(out: &mut Vec<u8>, field: u8, v: u32) {
    key(out, field, FIXED32);
    out.extend_from_slice(&v.to_le_bytes());
}

fn address(out: &mut Vec<u8>, field: u8, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(a) => bytes(out, field, &a.octets()),
        IpAddr::V6(a) => bytes(out, field, &a.octets()),
    }
}

/// Encodes `Message` into `out` (cleared first).
fn encode_message(m: &Message<'_>, out: &mut Vec<u8>) {
    out.clear();
    uint(out, 1, m.kind as u64);
    let family = if m.client.ip().to_canonical().is_ipv4() {
        1
    } else {
        2
    };
    uint(out, 2, family);
    uint(out, 3, if m.tcp { 2 } else { 1 });
    address(out, 4, m.client.ip());
    uint(out, 6, u64::from(m.client.port()));
    uint(out, 8, m.query_time.as_secs());
    fixed32(out, 9, m.query_time.subsec_nanos());
    if let Some(q) = m.query {
        bytes(out, 10, q);
    }
    if let Some((t, r)) = m.response {
        uint(out, 12, t.as_secs());
        fixed32(out, 13, t.subsec_nanos());
        bytes(out, 14, r);
    }
}

/// Appends one data frame carrying `Dnstap { identity, version, message: m, type: MESSAGE }`
/// to `out`; `scratch` holds the inner message meanwhile.
pub(crate) fn data_frame(
    identity: &[u8],
    version: &[u8],
    m: &Message<'_>,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    encode_message(m, scratch);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    bytes(out, 1, identity);
    bytes(out, 2, version);
    bytes(out, 14, scratch);
    uint(out, 15, 1);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Frame Streams control frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Accept = 1,
    Start = 2,
    Stop = 3,
    Ready = 4,
    Finish = 5,
}

/// The control field that names a content type.
const FIELD_CONTENT_TYPE: u32 = 1;

/// Appends a control frame (escape, length, type, and the dnstap content type for READY and
/// START) to `out`.
pub(crate) fn control_frame(kind: Control, out: &mut Vec<u8>) {
    let with_type = matches!(kind, Control::Ready | Control::Start | Control::Accept);
    let len = 4 + if with_type { 8 + CONTENT_TYPE.len() } else { 0 };
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&(kind as u32).to_be_bytes());
    if with_type {
        out.extend_from_slice(&FIELD_CONTENT_TYPE.to_be_bytes());
        out.extend_from_slice(&(CONTENT_TYPE.len() as u32).to_be_bytes());
        out.extend_from_slice(CONTENT_TYPE);
    }
}

/// A control frame body the collector sent: its type, and whether it allows dnstap (true when
/// it names no content type, or names ours among others). None: not a control frame.
pub(crate) fn parse_control(body: &[u8]) -> Option<(u32, bool)> {
    let be = |b: &[u8]| -> Option<u32> { Some(u32::from_be_bytes(b.try_into().ok()?)) };
    let kind = be(body.get(..4)?)?;
    let mut rest = &body[4..];
    let (mut named, mut ours) = (false, false);
    while !rest.is_empty() {
        let field = be(rest.get(..4)?)?;
        let len = be(rest.get(4..8)?)? as usize;
        let value = rest.get(8..8 + len)?;
        if field == FIELD_CONTENT_TYPE {
            named = true;
            ours |= value == CONTENT_TYPE;
        }
        rest = &rest[8 + len..];
    }
    Some((kind, !named || ours))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: &[u8] =
        b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01";

    fn frame(m: &Message<'_>) -> Vec<u8> {
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        data_frame(b"id", b"v1", m, &mut scratch, &mut out);
        out
    }

    #[test]
    fn auth_query_encodes_to_known_bytes() {
        let m = Message {
            kind: MessageType::AuthQuery,
            tcp: false,
            client: "127.0.0.1:5353".parse().unwrap(),
            query_time: Duration::new(1_700_000_000, 5),
            query: Some(QUERY),
            response: None,
        };
        let mut msg = vec![
            0x08,
            0x01, // type AUTH_QUERY
            0x10,
            0x01, // socket_family INET
            0x18,
            0x01, // socket_protocol UDP
            0x22,
            0x04,
            127,
            0,
            0,
            1, // query_address
            0x30,
            0xe9,
            0x29, // query_port 5353
            0x40,
            0x80,
            0xe2,
            0xcf,
            0xaa,
            0x06, // query_time_sec 1700000000
            0x4d,
            0x05,
            0x00,
            0x00,
            0x00, // query_time_nsec 5
            0x52,
            QUERY.len() as u8, // query_message
        ];
        msg.extend_from_slice(QUERY);
        let mut want = vec![
            0x0a,
            0x02,
            b'i',
            b'd',
            0x12,
            0x02,
            b'v',
            b'1',
            0x72,
            msg.len() as u8,
        ];
        want.extend_from_slice(&msg);
        want.extend_from_slice(&[0x78, 0x01]);
        let mut framed = (want.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&want);
        assert_eq!(frame(&m), framed);
    }

    #[test]
    fn auth_response_over_tcp_ipv6() {
        let m = Message {
            kind: MessageType::AuthResponse,
            tcp: true,
            client: "[2001:db8::1]:53".parse().unwrap(),
            query_time: Duration::new(1, 0),
            query: None,
            response: Some((Duration::new(2, 1), QUERY)),
        };
        let f = frame(&m);
        let inner = &f[4 + 8 + 2..];
        assert_eq!(&inner[..6], &[0x08, 0x02, 0x10, 0x02, 0x18, 0x02]);
        assert_eq!(&inner[6..8], &[0x22, 16]);
        assert_eq!(
            &inner[8..24],
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        // response_time_sec 2, response_time_nsec 1, response_message.
        let tail = [
            0x60,
            0x02,
            0x6d,
            0x01,
            0x00,
            0x00,
            0x00,
            0x72,
            QUERY.len() as u8,
        ];
        assert!(f.windows(tail.len()).any(|w| w == tail));
        assert_eq!(&f[f.len() - 2..], &[0x78, 0x01]);
    }

    #[test]
    fn control_frames_round_trip() {
        let mut out = Vec::new();
        control_frame(Control::Ready, &mut out);
        assert_eq!(&out[..4], &[0, 0, 0, 0]);
        let len = u32::from_be_bytes(out[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 8);
        assert_eq!(
            parse_control(&out[8..]),
            Some((Control::Ready as u32, true))
        );
        let mut stop = Vec::new();
        control_frame(Control::Stop, &mut stop);
        assert_eq!(stop, [0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 3]);
        // An ACCEPT naming another content type only.
        let mut other = 1u32.to_be_bytes().to_vec();
        other.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 3]);
        other.extend_from_slice(b"xyz");
        assert_eq!(parse_control(&other), Some((1, false)));
        assert_eq!(parse_control(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9]), None);
    }
}
