//! DNS cookies (RFC 7873) with the interoperable server cookie of RFC 9018: what a received
//! server cookie proves, the cookie an answer carries, and the option written and removed
//! (where it sits in a query is the parser's; putting it into a finished answer, the rewrite's).
//!
//! Server cookie (16 bytes): version 1 | reserved (3) | timestamp (4, Unix seconds) |
//! SipHash-2-4 over client cookie | version | reserved | timestamp | client address (4 or 16
//! bytes), keyed with a 16-byte secret that every replica shares, so a cookie one replica gave
//! is valid at all of them.

use std::net::IpAddr;

use siphasher::sip::SipHasher24;

use super::OPT_COOKIE;
use super::query::ParseError;
pub(crate) use super::query::{BAD_COOKIE_LENGTH, CookieAt, DUPLICATE_COOKIE};
use super::wire::{be16, be32, set16};

/// Client cookie length (RFC 7873 §4.1).
pub(super) const CLIENT_LEN: usize = 8;
/// Our server cookies' length (RFC 9018 §4).
const SERVER_LEN: usize = 16;
/// The COOKIE option data of our answers: the client's cookie, then our server cookie.
pub(crate) const REPLY_LEN: usize = CLIENT_LEN + SERVER_LEN;
/// Server cookie version of RFC 9018.
const VERSION: u8 = 1;
/// A cookie stamped longer ago than this is expired (RFC 9018 §4.3: one hour).
const MAX_AGE: i64 = 3600;
/// A cookie stamped this far in the future is still fine (clock skew between replicas).
const MAX_AHEAD: i64 = 300;
/// A valid cookie older than this is replaced by a fresh one in the answer (§4.3).
const REISSUE_AFTER: i64 = 1800;

/// True for the FORMERR reasons of a malformed COOKIE option.
pub(crate) fn is_malformed(reason: &str) -> bool {
    reason == BAD_COOKIE_LENGTH || reason == DUPLICATE_COOKIE
}

/// What a query's COOKIE option proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A client cookie alone: the client does not know us yet.
    ClientOnly,
    /// A server cookie we made for this client cookie and address, within its lifetime.
    Valid,
    /// A server cookie that is not ours, not for this address, or expired.
    Invalid,
}

/// The verdict on a query's cookie and the option data its answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    pub(crate) outcome: Outcome,
    pub(crate) reply: [u8; REPLY_LEN],
}

/// The secret server cookies are made with, and the one before it (still accepted, never
/// used for new cookies) while a rotation reaches every replica.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct CookieSecrets {
    current: [u8; 16],
    previous: Option<[u8; 16]>,
}

impl std::fmt::Debug for CookieSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSecrets(..)")
    }
}

/// Why a secret file's text is not a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("must hold 32 hex digits (a 16-byte secret), optionally followed by a newline")]
    NotHex,
    #[error("is all zeros: generate one, e.g. `openssl rand -hex 16`")]
    Zero,
}

impl SecretError {
    /// Static label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SecretError::NotHex => "not_hex",
            SecretError::Zero => "zero",
        }
    }
}

/// Parses a secret file's text: 32 hex digits, surrounding whitespace ignored.
pub(crate) fn parse_secret(text: &str) -> Result<[u8; 16], SecretError> {
    let hex = text.trim().as_bytes();
    if hex.len() != 32 {
        return Err(SecretError::NotHex);
    }
    let mut key = [0u8; 16];
    for (k, pair) in key.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16).ok_or(SecretError::NotHex);
        *k = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
    }
    if key == [0; 16] {
        return Err(SecretError::Zero);
    }
    Ok(key)
}

impl CookieSecrets {
    pub(crate) fn new(current: [u8; 16], previous: Option<[u8; 16]>) -> CookieSecrets {
        CookieSecrets { current, previous }
    }

    /// Judges the COOKIE option `at` of the query `pkt` from `client` at `now` (Unix seconds,
    /// modulo 2^32 as RFC 9018 stamps them) and makes its answer's option: the server cookie
    /// echoed when it is valid, recent and made with the current secret; a fresh one otherwise.
    pub(crate) fn check(&self, pkt: &[u8], at: CookieAt, client: IpAddr, now: u32) -> Checked {
        let mut reply = [0u8; REPLY_LEN];
        let Some(data) = at.data(pkt) else {
            // `at` came from another packet; answer as to a client cookie we cannot read.
            return Checked {
                outcome: Outcome::Invalid,
                reply: self.fresh(&[0; CLIENT_LEN], client, now),
            };
        };
        let (cc, sc) = data.split_at(CLIENT_LEN);
        let outcome = match self.judge(cc, sc, client, now) {
            Judged::Echo => {
                reply[..CLIENT_LEN].copy_from_slice(cc);
                reply[CLIENT_LEN..].copy_from_slice(sc);
                return Checked {
                    outcome: Outcome::Valid,
                    reply,
                };
            }
            Judged::Renew => Outcome::Valid,
            Judged::Absent => Outcome::ClientOnly,
            Judged::Invalid => Outcome::Invalid,
        };
        Checked {
            outcome,
            reply: self.fresh(cc, client, now),
        }
    }

    fn judge(&self, cc: &[u8], sc: &[u8], client: IpAddr, now: u32) -> Judged {
        if sc.is_empty() {
            return Judged::Absent;
        }
        if sc.len() != SERVER_LEN || sc[0] != VERSION {
            return Judged::Invalid;
        }
        let stamp = be32(sc, 4).unwrap_or(0);
        // Serial arithmetic (RFC 1982): the 32-bit stamp wraps in 2106.
        let age = i64::from(now.wrapping_sub(stamp) as i32);
        if !(-MAX_AHEAD..=MAX_AGE).contains(&age) {
            return Judged::Invalid;
        }
        // Compared as one integer: no early exit tells a forger how many bytes were right.
        let mac = be64(&sc[8..]);
        if be64(&hash(&self.current, cc, &sc[..8], client)) == mac {
            return if age > REISSUE_AFTER {
                Judged::Renew
            } else {
                Judged::Echo
            };
        }
        match &self.previous {
            Some(prev) if be64(&hash(prev, cc, &sc[..8], client)) == mac => Judged::Renew,
            _ => Judged::Invalid,
        }
    }

    /// The option data of a new server cookie for client cookie `cc`, stamped `now`.
    fn fresh(&self, cc: &[u8], client: IpAddr, now: u32) -> [u8; REPLY_LEN] {
        let mut reply = [0u8; REPLY_LEN];
        reply[..CLIENT_LEN].copy_from_slice(cc);
        let head = &mut reply[CLIENT_LEN..CLIENT_LEN + 8];
        head[0] = VERSION;
        head[4..].copy_from_slice(&now.to_be_bytes());
        let mac = hash(
            &self.current,
            cc,
            &reply[CLIENT_LEN..CLIENT_LEN + 8],
            client,
        );
        reply[CLIENT_LEN + 8..].copy_from_slice(&mac);
        reply
    }
}

enum Judged {
    Absent,
    Invalid,
    /// Valid; the same cookie goes back.
    Echo,
    /// Valid but old or made with the previous secret: a fresh one goes back.
    Renew,
}

/// SipHash-2-4 of RFC 9018 §4.4 over client cookie | version, reserved and timestamp (`head`,
/// as received: reserved bytes a client changed are hashed as they are) | client address.
fn hash(key: &[u8; 16], cc: &[u8], head: &[u8], client: IpAddr) -> [u8; 8] {
    use std::hash::Hasher;
    let mut h = SipHasher24::new_with_key(key);
    h.write(cc);
    h.write(head);
    match client.to_canonical() {
        IpAddr::V4(a) => h.write(&a.octets()),
        IpAddr::V6(a) => h.write(&a.octets()),
    }
    // The reference SipHash output is the 64-bit result in little-endian order.
    h.finish().to_le_bytes()
}

fn be64(b: &[u8]) -> u64 {
    b.try_into().map_or(0, u64::from_be_bytes)
}

/// Bytes a COOKIE option adds to an OPT's RDATA.
pub(crate) const OPTION_LEN: usize = 4 + REPLY_LEN;

/// Appends a COOKIE option carrying `reply` to an OPT's RDATA being written in `out`.
pub(crate) fn push_option(out: &mut Vec<u8>, reply: &[u8; REPLY_LEN]) {
    out.extend_from_slice(&OPT_COOKIE.to_be_bytes());
    out.extend_from_slice(&(REPLY_LEN as u16).to_be_bytes());
    out.extend_from_slice(reply);
}

/// Removes every COOKIE option from the OPT whose RDATA is `out[rdata..rdata + rdlen]`, and
/// sets the OPT's RDLENGTH. For what PowerDNS must not see and what the cache must not keep.
pub(crate) fn strip_options(
    out: &mut Vec<u8>,
    rdata: usize,
    rdlen: usize,
) -> Result<(), ParseError> {
    let kept = strip_in_place(out, rdata, rdlen)?;
    if kept != rdlen {
        set16(out, rdata - 2, kept as u16);
    }
    Ok(())
}

/// [`strip_options`] without the RDLENGTH update: the length of the options kept.
pub(super) fn strip_in_place(
    out: &mut Vec<u8>,
    rdata: usize,
    rdlen: usize,
) -> Result<usize, ParseError> {
    let end = rdata + rdlen;
    let (mut read, mut write) = (rdata, rdata);
    while read < end {
        let (Some(code), Some(len)) = (be16(out, read), be16(out, read + 2)) else {
            return Err(ParseError::FormErr("truncated EDNS option"));
        };
        let next = read + 4 + usize::from(len);
        if next > end {
            return Err(ParseError::FormErr("EDNS option overruns OPT"));
        }
        if code != OPT_COOKIE {
            out.copy_within(read..next, write);
            write += next - read;
        }
        read = next;
    }
    out.drain(write..end);
    Ok(write - rdata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::query::parse_query;
    use crate::dns::test_packets::{formerr, opt, option, query};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key(s: &str) -> [u8; 16] {
        parse_secret(s).unwrap()
    }

    /// A query carrying `data` as its COOKIE option, and where it sits.
    fn asked(data: &[u8]) -> (Vec<u8>, CookieAt) {
        let pkt = query("example", &[opt(1232, 0, false, &option(OPT_COOKIE, data))]);
        let at = parse_query(&pkt).unwrap().edns.unwrap().cookie.unwrap();
        (pkt, at)
    }

    fn check(secrets: &CookieSecrets, data: &str, ip: &str, now: u32) -> (Outcome, String) {
        let (pkt, at) = asked(&hex(data));
        let c = secrets.check(&pkt, at, ip.parse().unwrap(), now);
        let reply: String = c.reply.iter().map(|b| format!("{b:02x}")).collect();
        (c.outcome, reply)
    }

    // RFC 9018 Appendix A, every example.
    #[test]
    fn rfc9018_test_vectors() {
        let s = CookieSecrets::new(key("e5e973e5a6b2a43f48e7dc849e37bfcf"), None);
        // A.1: a client cookie alone gets a new server cookie.
        assert_eq!(
            check(&s, "2464c4abcf10c957", "198.51.100.100", 1559731985),
            (
                Outcome::ClientOnly,
                "2464c4abcf10c957010000005cf79f111f8130c3eee29480".into()
            )
        );
        // A.2: 40 minutes later the cookie is valid but renewed.
        assert_eq!(
            check(
                &s,
                "2464c4abcf10c957010000005cf79f111f8130c3eee29480",
                "198.51.100.100",
                1559734385
            ),
            (
                Outcome::Valid,
                "2464c4abcf10c957010000005cf7a871d4a564a1442aca77".into()
            )
        );
        // A.3: reserved bytes set by the client are hashed as sent; the example's cookie is
        // valid within its hour, expired at the example's reply time, which gets the RFC's
        // fresh cookie.
        let a3 = "fc93fc62807ddb8601abcdef5cf78f71a314227b6679ebf5";
        assert_eq!(
            check(&s, a3, "203.0.113.203", 0x5cf78f71 + 60).0,
            Outcome::Valid
        );
        assert_eq!(
            check(&s, a3, "203.0.113.204", 0x5cf78f71 + 60).0,
            Outcome::Invalid
        );
        assert_eq!(
            check(&s, a3, "203.0.113.203", 1559734700),
            (
                Outcome::Invalid,
                "fc93fc62807ddb86010000005cf7a9acf73a7810aca2381e".into()
            )
        );
        // A.4: IPv6, made with the previous secret: still valid, renewed with the new one.
        let old = key("dd3bdf9344b678b185a6f5cb60fca715");
        let new = key("445536bcd2513298075a5d379663c962");
        let a4 = "22681ab97d52c298010000005cf7c57926556bd0934c72f8";
        let ip6 = "2001:db8:220:1:59de:d0f4:8769:82b8";
        let want = "22681ab97d52c298010000005cf7c609a6bb79d16625507a";
        let rotated = CookieSecrets::new(new, Some(old));
        assert_eq!(
            check(&rotated, a4, ip6, 1559741961),
            (Outcome::Valid, want.into())
        );
        // Once the old secret is gone, it is invalid (and gets the same fresh cookie).
        let only_new = CookieSecrets::new(new, None);
        assert_eq!(
            check(&only_new, a4, ip6, 1559741961),
            (Outcome::Invalid, want.into())
        );
        // Under the old secret alone, recent: echoed unchanged.
        let only_old = CookieSecrets::new(old, None);
        assert_eq!(
            check(&only_old, a4, ip6, 0x5cf7c579 + 10),
            (Outcome::Valid, a4.into())
        );
    }

    #[test]
    fn lifetime_window_and_reissue() {
        let s = CookieSecrets::new(key("e5e973e5a6b2a43f48e7dc849e37bfcf"), None);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for issued in [1_000_000u32, 5] {
            let cc = [7u8; 8];
            let cookie = s.fresh(&cc, ip, issued);
            let at = |age: i64| issued.wrapping_add(age as u32);
            for (age, outcome, echoed) in [
                (0, Outcome::Valid, true),
                (1800, Outcome::Valid, true),
                (1801, Outcome::Valid, false),
                (3600, Outcome::Valid, false),
                (3601, Outcome::Invalid, false),
                (-300, Outcome::Valid, true),
                (-301, Outcome::Invalid, false),
            ] {
                let (pkt, a) = asked(&cookie);
                let c = s.check(&pkt, a, ip, at(age));
                assert_eq!(c.outcome, outcome, "issued {issued}, age {age}");
                assert_eq!(c.reply == cookie, echoed, "issued {issued}, age {age}");
                // Whatever comes back is valid and fresh at that moment.
                let (pkt, a) = asked(&c.reply);
                let again = s.check(&pkt, a, ip, at(age));
                assert_eq!(again.outcome, Outcome::Valid);
                assert_eq!(again.reply, c.reply);
            }
        }
    }

    #[test]
    fn other_server_cookies_are_invalid() {
        let s = CookieSecrets::new([9; 16], None);
        let ip: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let good = s.fresh(&[1; 8], ip, 100);
        // The mapped and the plain IPv4 address are one client.
        let (pkt, at) = asked(&good);
        assert_eq!(
            s.check(&pkt, at, "192.0.2.1".parse().unwrap(), 100).outcome,
            Outcome::Valid
        );
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // Another version, another length, a changed byte anywhere.
        let mut v2 = good;
        v2[8] = 2;
        cases.push(v2.to_vec());
        cases.push(good[..16].to_vec());
        let mut long = good.to_vec();
        long.extend_from_slice(&[0; 8]);
        cases.push(long);
        for i in 0..REPLY_LEN {
            let mut c = good;
            c[i] ^= 1;
            cases.push(c.to_vec());
        }
        for c in cases {
            let (pkt, at) = asked(&c);
            let r = s.check(&pkt, at, ip, 100);
            assert_eq!(r.outcome, Outcome::Invalid, "{c:?}");
            assert_eq!(r.reply[..8], c[..8]);
        }
    }

    #[test]
    fn option_lengths() {
        for len in 0..=44usize {
            let pkt = query(
                "example",
                &[opt(1232, 0, false, &option(10, &vec![1; len]))],
            );
            let ok = len == 8 || (16..=40).contains(&len);
            match parse_query(&pkt) {
                Ok(q) => assert!(ok && q.edns.unwrap().cookie.is_some(), "{len}"),
                Err(e) => assert!(!ok && e == ParseError::FormErr(BAD_COOKIE_LENGTH), "{len}"),
            }
        }
        let mut two = option(10, &[1; 8]);
        two.extend_from_slice(&option(10, &[1; 8]));
        assert_eq!(
            formerr(&query("example", &[opt(1232, 0, false, &two)])),
            DUPLICATE_COOKIE
        );
        assert!(is_malformed(BAD_COOKIE_LENGTH) && is_malformed(DUPLICATE_COOKIE));
        assert!(!is_malformed("EDNS option overruns OPT"));
        // Version 1 OPTs are not read: no cookie, no error.
        let v1 = query("example", &[opt(1232, 1, false, &option(10, &[1; 3]))]);
        let q = crate::dns::parse_query_any_version(&v1).unwrap();
        assert!(q.edns.unwrap().cookie.is_none());
    }

    #[test]
    fn secrets_parse() {
        assert_eq!(
            parse_secret(" E5E973E5a6b2a43f48e7dc849e37bfcf\n"),
            Ok(key("e5e973e5a6b2a43f48e7dc849e37bfcf"))
        );
        for bad in [
            "",
            "e5e973e5",
            "e5e973e5a6b2a43f48e7dc849e37bfcg",
            "é5e973e5a6b2a43f48e7dc849e37bfc",
        ] {
            assert_eq!(parse_secret(bad), Err(SecretError::NotHex), "{bad}");
        }
        assert_eq!(parse_secret(&"0".repeat(32)), Err(SecretError::Zero));
        assert_eq!(
            format!("{:?}", CookieSecrets::new([1; 16], None)),
            "CookieSecrets(..)"
        );
    }
}
