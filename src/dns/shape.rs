//! What a response is, in the terms response rate limiting accounts it: its class and the
//! name it is about (the delegation or the zone whose SOA came with it). Reads the header and
//! walks to the authority section's first record; allocates nothing.

use super::wire::{be16, read_rr, skip_name};
use super::{FLAG_AA, FLAG_TC, HEADER_LEN, OFF_ANCOUNT, OFF_FLAGS, OFF_NSCOUNT, OFF_QDCOUNT};
use super::{TYPE_SOA, rcode};

const TYPE_NS: u16 = 2;

/// A response's class, as BIND's RRL tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    /// NOERROR with answers, or a truncated answer (its answers are what the client asked).
    Positive,
    /// NOERROR, no answer, a SOA (or nothing) in the authority section.
    NoData,
    NxDomain,
    /// NOERROR, no answer, not authoritative, NS records in the authority section.
    Referral,
    /// Any other rcode (SERVFAIL, REFUSED, FORMERR, NOTIMP, ...).
    Error,
}

/// A response's class and where the owner name of its first authority record starts (for
/// negative answers and referrals: the zone or the delegation), when it has one.
pub fn classify_response(resp: &[u8]) -> (ResponseClass, Option<usize>) {
    let flags = be16(resp, OFF_FLAGS).unwrap_or(0);
    let rc = resp.get(3).map_or(rcode::SERVFAIL, |b| b & 0x0f);
    let answers = be16(resp, OFF_ANCOUNT).unwrap_or(0);
    match rc {
        rcode::NOERROR if answers > 0 || flags & FLAG_TC != 0 => {
            return (ResponseClass::Positive, None);
        }
        rcode::NOERROR | rcode::NXDOMAIN => {}
        _ => return (ResponseClass::Error, None),
    }
    let owner = authority_owner(resp, answers);
    let class = match owner {
        _ if rc == rcode::NXDOMAIN => ResponseClass::NxDomain,
        Some((_, TYPE_NS)) if flags & FLAG_AA == 0 => ResponseClass::Referral,
        _ => ResponseClass::NoData,
    };
    (class, owner.map(|(at, _)| at))
}

/// Offset and type of the first authority record (SOA or NS only).
fn authority_owner(resp: &[u8], answers: u16) -> Option<(usize, u16)> {
    if be16(resp, OFF_NSCOUNT).unwrap_or(0) == 0 {
        return None;
    }
    let mut off = HEADER_LEN;
    for _ in 0..be16(resp, OFF_QDCOUNT)? {
        off = skip_name(resp, off).ok()? + 4;
    }
    for _ in 0..answers {
        off = read_rr(resp, off).ok()?.end;
    }
    let rr = read_rr(resp, off).ok()?;
    matches!(rr.rtype, TYPE_SOA | TYPE_NS).then_some((off, rr.rtype))
}

/// Calls `label` with each label of the (possibly compressed) name at `off`, lowercased, root
/// excluded. False if the name is malformed (then some labels may have been passed).
pub fn for_each_label(pkt: &[u8], mut off: usize, mut label: impl FnMut(&[u8])) -> bool {
    let mut buf = [0u8; 63];
    // At most 128 labels and pointers: a pointer loop ends here, not in a hang.
    for _ in 0..256 {
        let Some(&len) = pkt.get(off) else {
            return false;
        };
        match len & 0xC0 {
            0xC0 => {
                let Some(&lo) = pkt.get(off + 1) else {
                    return false;
                };
                off = usize::from(len & 0x3F) << 8 | usize::from(lo);
            }
            0x00 if len == 0 => return true,
            0x00 => {
                let n = usize::from(len);
                let Some(bytes) = pkt.get(off + 1..off + 1 + n) else {
                    return false;
                };
                for (d, s) in buf.iter_mut().zip(bytes) {
                    *d = s.to_ascii_lowercase();
                }
                label(&buf[..n]);
                off += 1 + n;
            }
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Vec<u8> {
        crate::dns::name_from_text(text).unwrap()
    }

    /// Header + question for `demo.test. A`, then the given records (owner: pointer to the
    /// question name or to the given bytes).
    fn response(flags: u16, an: &[(u16, Vec<u8>)], ns: &[(Vec<u8>, u16)]) -> Vec<u8> {
        let mut p = vec![0, 1];
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p.extend_from_slice(&(an.len() as u16).to_be_bytes());
        p.extend_from_slice(&(ns.len() as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&name("www.Demo.test."));
        p.extend_from_slice(&[0, 1, 0, 1]);
        for (t, rdata) in an {
            p.extend_from_slice(&[0xC0, 12]);
            p.extend_from_slice(&t.to_be_bytes());
            p.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            p.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            p.extend_from_slice(rdata);
        }
        for (owner, t) in ns {
            p.extend_from_slice(owner);
            p.extend_from_slice(&t.to_be_bytes());
            p.extend_from_slice(&[0, 1, 0, 0, 0, 60, 0, 1, 0]);
        }
        p
    }

    fn labels(pkt: &[u8], off: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        assert!(for_each_label(pkt, off, |l| out.push(l.to_vec())));
        out
    }

    #[test]
    fn classes_and_owners() {
        let qr_aa = 0x8400;
        let pos = response(qr_aa, &[(1, vec![192, 0, 2, 1])], &[]);
        assert_eq!(classify_response(&pos), (ResponseClass::Positive, None));

        // NXDOMAIN with the SOA owned by "demo.test" (a pointer into the question name).
        let nx = response(qr_aa | 3, &[], &[(vec![0xC0, 16], TYPE_SOA)]);
        let (class, owner) = classify_response(&nx);
        assert_eq!(class, ResponseClass::NxDomain);
        assert_eq!(
            labels(&nx, owner.unwrap()),
            [b"demo".to_vec(), b"test".to_vec()]
        );

        // NXDOMAIN after a CNAME: the answer is skipped to reach the SOA.
        let cname = response(
            qr_aa | 3,
            &[(5, name("x.demo.test."))],
            &[(name("DEMO.test."), 6)],
        );
        let (class, owner) = classify_response(&cname);
        assert_eq!(class, ResponseClass::NxDomain);
        assert_eq!(labels(&cname, owner.unwrap())[0], b"demo");

        let nodata = response(qr_aa, &[], &[(vec![0xC0, 16], TYPE_SOA)]);
        assert_eq!(classify_response(&nodata).0, ResponseClass::NoData);
        assert_eq!(
            classify_response(&response(qr_aa, &[], &[])),
            (ResponseClass::NoData, None)
        );

        let referral = response(0x8000, &[], &[(name("sub.demo.test."), TYPE_NS)]);
        let (class, owner) = classify_response(&referral);
        assert_eq!(class, ResponseClass::Referral);
        assert_eq!(labels(&referral, owner.unwrap())[0], b"sub");

        let tc = response(0x8200, &[], &[]);
        assert_eq!(classify_response(&tc).0, ResponseClass::Positive);
        for rc in [1, 2, 4, 5, 9] {
            assert_eq!(
                classify_response(&response(0x8000 | rc, &[], &[])).0,
                ResponseClass::Error
            );
        }
        assert_eq!(classify_response(&[]).0, ResponseClass::Error);
        // A truncated authority section: still classified, no owner.
        let mut cut = nx.clone();
        cut.truncate(cut.len() - 4);
        assert_eq!(classify_response(&cut), (ResponseClass::NxDomain, None));
    }

    #[test]
    fn labels_survive_pointer_loops_and_bad_bytes() {
        assert!(!for_each_label(&[0xC0, 0], 0, |_| {}));
        assert!(!for_each_label(&[5, b'a'], 0, |_| {}));
        assert!(!for_each_label(&[0x40], 0, |_| {}));
        assert!(for_each_label(&[0], 0, |_| panic!("root has no label")));
    }
}
