//! RRSIG construction (RFC 4034 §3 and §6): the canonical form of an RRset, the data a signature
//! covers, and the weekly validity windows PowerDNS uses, so dnsteer's signatures look like the
//! ones PowerDNS would have made for the same zone.

use std::hash::{BuildHasher as _, Hasher as _};

use super::keys::{Algorithm, SignFailed, SigningKey};

const DAY: u32 = 86_400;
const WEEK: u32 = 7 * DAY;

/// Longest wire name (RFC 1035 §2.3.4).
const MAX_NAME: usize = 255;

/// Why an RRset could not be signed. Inputs come from dnsteer's own record tables, so any of
/// these is a bug upstream of signing, not a client's doing.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("owner name is not an uncompressed wire name")]
    MalformedOwner,
    #[error("signer name is not an uncompressed wire name")]
    MalformedSigner,
    #[error("RDATA of type {rtype} does not hold the domain names its type requires")]
    MalformedRdata { rtype: u16 },
    #[error("RDATA longer than 65535 bytes")]
    RdataTooLong,
    #[error("an RRset to sign needs at least one record")]
    EmptyRrset,
    #[error(transparent)]
    Sign(#[from] SignFailed),
}

impl SignError {
    pub fn kind(&self) -> &'static str {
        match self {
            SignError::MalformedOwner => "malformed_owner",
            SignError::MalformedSigner => "malformed_signer",
            SignError::MalformedRdata { .. } => "malformed_rdata",
            SignError::RdataTooLong => "rdata_too_long",
            SignError::EmptyRrset => "empty_rrset",
            SignError::Sign(_) => "sign_failed",
        }
    }
}

/// RRSIG inception and expiration, Unix seconds. RRSIG fields are u32 compared with serial
/// arithmetic (RFC 4034 §3.1.5), so plain u32 seconds work until 2106 and wrap correctly after.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ValidityWindow {
    pub inception: u32,
    pub expiration: u32,
}

impl ValidityWindow {
    /// PowerDNS's window (`getStartOfWeek` in pdns/dnssecinfra.cc): weeks aligned to the Unix
    /// epoch (Thursdays 00:00 UTC); valid from a week before this week's start to two weeks
    /// after it. Everyone signing the same week produces the same window, so signatures stay
    /// cacheable for the week and PowerDNS and dnsteer agree.
    pub fn at(now: u32) -> Self {
        let start_of_week = now - now % WEEK;
        Self {
            inception: start_of_week.wrapping_sub(WEEK),
            expiration: start_of_week.wrapping_add(2 * WEEK),
        }
    }

    /// The window to sign one RRset with at `now`: the window of `now + rrset_hash % spread`.
    ///
    /// Why this is safe and why spread at all: next week's window has inception = this week's
    /// start of week ≤ `now`, so a signature made with it is already valid, and it expires more
    /// than a week from `now`. Moving each RRset to the next window at its own point within the
    /// last `spread_secs` before Thursday 00:00 UTC means cached signatures (ours and resolvers')
    /// do not all turn over at the same instant, which would be a signing storm for us at the
    /// "Thursday cliff". `spread_secs` is capped at a week, beyond which the window would skip
    /// a week ahead. `rrset_hash` should be stable per RRset ([`rrset_spread_hash`]) so an RRset
    /// switches once, not back and forth.
    pub(crate) fn for_rrset(now: u32, spread_secs: u32, rrset_hash: u64) -> Self {
        let spread = u64::from(spread_secs.min(WEEK));
        let offset = if spread == 0 {
            0
        } else {
            (rrset_hash % spread) as u32
        };
        Self::at(now.wrapping_add(offset))
    }

    /// Whether a signature with this window verifies at `now` (RFC 4034 §3.1.5, serial
    /// arithmetic).
    #[cfg(test)]
    pub(crate) fn is_valid_at(&self, now: u32) -> bool {
        now.wrapping_sub(self.inception) as i32 >= 0 && self.expiration.wrapping_sub(now) as i32 > 0
    }
}

/// A stable hash of an RRset's identity (owner, any case, and type) for
/// [`ValidityWindow::for_rrset`]. Fixed seed: every worker and every restart must pick the same
/// switch time for the same RRset.
pub(crate) fn rrset_spread_hash(owner_wire: &[u8], rtype: u16) -> u64 {
    let mut hasher = foldhash::quality::FixedState::with_seed(0x5eed_d15c_0000_0001).build_hasher();
    for &byte in owner_wire {
        hasher.write_u8(byte.to_ascii_lowercase());
    }
    hasher.write_u16(rtype);
    hasher.finish()
}

/// `YYYYMMDDHHMMSS` (UTC), the presentation form of RRSIG times (RFC 4034 §3.2). For logs and
/// tests, not the packet path.
pub(crate) fn format_dnssec_time(unix: u32) -> String {
    let days = i64::from(unix / DAY);
    let secs = unix % DAY;
    // Howard Hinnant's civil_from_days (days since 1970-01-01 to a proleptic Gregorian date).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// One RRset as the signer sees it.
#[derive(Clone, Copy, Debug)]
pub struct RrsetToSign<'a> {
    /// Uncompressed wire name, any case (lower-cased for signing).
    pub owner_wire: &'a [u8],
    pub rtype: u16,
    /// 1 (IN) in practice.
    pub class: u16,
    /// The TTL served and signed (RRSIG Original TTL).
    pub ttl: u32,
    /// Each record's RDATA, uncompressed, any order; exact duplicates count once.
    pub rdatas: &'a [&'a [u8]],
}

/// Length of the uncompressed wire name at the start of `wire`, or `None` if there is none
/// (compression pointer, label over 63, name over 255, or truncated).
fn name_len(wire: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let len = usize::from(*wire.get(at)?);
        if len > 63 {
            return None;
        }
        at += 1 + len;
        if at > MAX_NAME || at > wire.len() {
            return None;
        }
        if len == 0 {
            return Some(at);
        }
    }
}

/// Lower-cases (ASCII only, RFC 4034 §6.1) the name at the start of `wire` in place, label
/// bytes only; returns its length.
fn lowercase_name_in_place(wire: &mut [u8]) -> Option<usize> {
    let len = name_len(wire)?;
    let mut at = 0;
    while wire[at] != 0 {
        let label = usize::from(wire[at]);
        wire[at + 1..at + 1 + label].make_ascii_lowercase();
        at += 1 + label;
    }
    Some(len)
}

/// The canonical (lower-case) form of an uncompressed wire name; `None` unless `name` is
/// exactly one well-formed name.
#[cfg(test)]
pub(crate) fn lowercase_name_wire(name: &[u8]) -> Option<Vec<u8>> {
    let mut out = name.to_vec();
    (lowercase_name_in_place(&mut out)? == name.len()).then_some(out)
}

/// The RRSIG Labels field of an owner name: labels not counting the root nor a leading `*`
/// (RFC 4034 §3.1.3); `None` unless `name` is exactly one well-formed name.
pub(crate) fn label_count(name: &[u8]) -> Option<u8> {
    if name_len(name)? != name.len() {
        return None;
    }
    let mut count = 0u8;
    let mut at = 0;
    while name[at] != 0 {
        count += 1;
        at += 1 + usize::from(name[at]);
    }
    if name.starts_with(b"\x01*") {
        count -= 1;
    }
    Some(count)
}

/// Lower-cases the domain names inside `rdata` in place for the RR types RFC 4034 §6.2 lists
/// (less NSEC, RFC 6840 §5.1, and the obsolete or signature types dnsteer never signs).
/// Other types are left as they are, as RFC 3597 §7 requires for types defined later.
fn canonicalize_rdata(rtype: u16, rdata: &mut [u8]) -> Result<(), SignError> {
    let bad = SignError::MalformedRdata { rtype };
    // Name-bearing layouts: bytes before the first name, names in a row, fixed bytes after.
    let (skip, names, tail) = match rtype {
        // NS, MD, MF, CNAME, MB, MG, MR, PTR, DNAME
        2 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 39 => (0, 1, 0),
        // SOA: MNAME, RNAME, then five u32.
        6 => (0, 2, 20),
        // MINFO, RP
        14 | 17 => (0, 2, 0),
        // MX, AFSDB, RT, KX: preference, then the name.
        15 | 18 | 21 | 36 => (2, 1, 0),
        // SRV: priority, weight, port, then the target.
        33 => (6, 1, 0),
        _ => return Ok(()),
    };
    let mut at = skip;
    if rdata.len() < skip {
        return Err(bad);
    }
    for _ in 0..names {
        at +=
            lowercase_name_in_place(&mut rdata[at..]).ok_or(SignError::MalformedRdata { rtype })?;
    }
    if rdata.len() != at + tail {
        return Err(bad);
    }
    Ok(())
}

/// The data an RRSIG signs (RFC 4034 §3.1.8.1), built in buffers kept between calls so a
/// worker builds it without allocating once warmed up.
#[derive(Default)]
pub(crate) struct SignedData {
    /// RRSIG RDATA without the signature, then each RR in canonical form and order.
    bytes: Vec<u8>,
    prefix_len: usize,
    /// Canonical RDATAs back to back, and their ranges, for sorting.
    canon: Vec<u8>,
    ranges: Vec<(usize, usize)>,
}

impl SignedData {
    pub(crate) fn build(
        &mut self,
        algorithm: Algorithm,
        key_tag: u16,
        signer_wire: &[u8],
        rrset: &RrsetToSign<'_>,
        window: ValidityWindow,
    ) -> Result<(), SignError> {
        if rrset.rdatas.is_empty() {
            return Err(SignError::EmptyRrset);
        }
        let labels = label_count(rrset.owner_wire).ok_or(SignError::MalformedOwner)?;
        let mut owner = [0u8; MAX_NAME];
        let owner = &mut owner[..rrset.owner_wire.len()];
        owner.copy_from_slice(rrset.owner_wire);
        lowercase_name_in_place(owner);

        let bytes = &mut self.bytes;
        bytes.clear();
        bytes.extend_from_slice(&rrset.rtype.to_be_bytes());
        bytes.push(algorithm.number());
        bytes.push(labels);
        bytes.extend_from_slice(&rrset.ttl.to_be_bytes());
        bytes.extend_from_slice(&window.expiration.to_be_bytes());
        bytes.extend_from_slice(&window.inception.to_be_bytes());
        bytes.extend_from_slice(&key_tag.to_be_bytes());
        let signer_at = bytes.len();
        bytes.extend_from_slice(signer_wire);
        if lowercase_name_in_place(&mut bytes[signer_at..]) != Some(signer_wire.len()) {
            return Err(SignError::MalformedSigner);
        }
        self.prefix_len = bytes.len();

        self.canon.clear();
        self.ranges.clear();
        for rdata in rrset.rdatas {
            if rdata.len() > usize::from(u16::MAX) {
                return Err(SignError::RdataTooLong);
            }
            let start = self.canon.len();
            self.canon.extend_from_slice(rdata);
            canonicalize_rdata(rrset.rtype, &mut self.canon[start..])?;
            self.ranges.push((start, self.canon.len()));
        }
        // RFC 4034 §6.3: sorted by canonical RDATA as left-justified unsigned octet strings
        // (slice order: a shorter prefix sorts first), duplicates removed.
        let canon = &self.canon;
        self.ranges
            .sort_unstable_by(|a, b| canon[a.0..a.1].cmp(&canon[b.0..b.1]));
        self.ranges
            .dedup_by(|a, b| canon[a.0..a.1] == canon[b.0..b.1]);

        for &(start, end) in &self.ranges {
            bytes.extend_from_slice(owner);
            bytes.extend_from_slice(&rrset.rtype.to_be_bytes());
            bytes.extend_from_slice(&rrset.class.to_be_bytes());
            bytes.extend_from_slice(&rrset.ttl.to_be_bytes());
            // Checked above: fits in u16.
            bytes.extend_from_slice(&((end - start) as u16).to_be_bytes());
            bytes.extend_from_slice(&canon[start..end]);
        }
        Ok(())
    }

    /// Everything the signature covers.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The RRSIG RDATA up to (not including) the signature.
    pub(crate) fn rrsig_prefix(&self) -> &[u8] {
        &self.bytes[..self.prefix_len]
    }
}

/// The RRSIG RDATA for `rrset` signed by `key` (published with key tag `key_tag`) for the
/// zone `signer_wire`: type covered, algorithm, labels, original TTL, expiration, inception,
/// key tag, signer name (lower-cased), signature.
pub fn rrsig_rdata(
    key: &SigningKey,
    key_tag: u16,
    signer_wire: &[u8],
    rrset: &RrsetToSign<'_>,
    window: ValidityWindow,
) -> Result<Vec<u8>, SignError> {
    let mut data = SignedData::default();
    data.build(key.algorithm(), key_tag, signer_wire, rrset, window)?;
    let signature = key.sign(data.as_bytes())?;
    let mut rdata = data.rrsig_prefix().to_vec();
    rdata.extend_from_slice(&signature);
    Ok(rdata)
}

#[cfg(test)]
pub(crate) mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use proptest::prelude::*;

    use super::super::keys::{FLAGS_KSK, FLAGS_ZSK, verify};
    use super::*;

    /// `www.Example.net` → wire form, case kept.
    pub(crate) fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
        {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn rfc6605_key() -> SigningKey {
        SigningKey::from_private_key_file(
            "Private-key-format: v1.2\nAlgorithm: 13 (ECDSAP256SHA256)\n\
             PrivateKey: GU6SnQ/Ou+xC5RumuIUIuJZteXT2z0O/ok1s38Et6mQ=\n",
        )
        .unwrap()
    }

    fn build(
        key: &SigningKey,
        signer: &[u8],
        rrset: &RrsetToSign<'_>,
        window: ValidityWindow,
    ) -> Vec<u8> {
        let mut data = SignedData::default();
        data.build(
            key.algorithm(),
            key.key_tag(FLAGS_ZSK),
            signer,
            rrset,
            window,
        )
        .unwrap();
        data.as_bytes().to_vec()
    }

    #[test]
    fn windows_follow_powerdns_weeks() {
        // 2026-12-04T09:00:00Z, a Friday.
        let window = ValidityWindow::at(1_796_374_800);
        assert_eq!(window.inception, 1_795_651_200);
        assert_eq!(window.expiration, 1_797_465_600);
        assert_eq!(format_dnssec_time(window.inception), "20261126000000");
        assert_eq!(format_dnssec_time(window.expiration), "20261217000000");
        assert_eq!(format_dnssec_time(1_284_026_679), "20100909100439");
        assert_eq!(format_dnssec_time(0), "19700101000000");
        assert_eq!(format_dnssec_time(u32::MAX), "21060207062815");
        // Thursday 00:00 UTC starts a new week.
        let thursday = 1_796_256_000; // 2026-12-03T00:00:00Z
        assert_eq!(ValidityWindow::at(thursday).inception, thursday - WEEK);
        assert_eq!(
            ValidityWindow::at(thursday - 1).inception,
            thursday - 2 * WEEK
        );
    }

    proptest! {
        #[test]
        fn spread_windows_are_valid_now_and_for_another_week(
            now in WEEK..u32::MAX - 3 * WEEK,
            spread in 0u32..2 * WEEK,
            hash: u64,
        ) {
            let window = ValidityWindow::for_rrset(now, spread, hash);
            prop_assert!(window.inception <= now);
            prop_assert!(now < window.expiration - WEEK);
            prop_assert!(window.is_valid_at(now));
            // Never earlier than the plain window, at most one week later.
            let plain = ValidityWindow::at(now);
            prop_assert!(
                window == plain || window.inception == plain.inception + WEEK,
            );
        }
    }

    #[test]
    fn spread_moves_only_the_last_part_of_the_week() {
        let thursday = 1_796_256_000;
        let spread = 6 * 3600;
        // Seven hours before the cliff nothing has moved; three hours before it, half have.
        for hash in 0..spread {
            assert_eq!(
                ValidityWindow::for_rrset(thursday - 7 * 3600, spread, u64::from(hash)),
                ValidityWindow::at(thursday - 7 * 3600)
            );
        }
        let moved = (0..u64::from(spread))
            .filter(|&h| {
                ValidityWindow::for_rrset(thursday - 3 * 3600, spread, h)
                    == ValidityWindow::at(thursday)
            })
            .count();
        assert_eq!(moved, spread as usize / 2);
    }

    #[test]
    fn rfc6605_published_signature_verifies_over_our_signed_data() {
        let key = rfc6605_key();
        let owner = wire("www.example.net");
        let rdatas: &[&[u8]] = &[&[192, 0, 2, 1]];
        let rrset = RrsetToSign {
            owner_wire: &owner,
            rtype: 1,
            class: 1,
            ttl: 3600,
            rdatas,
        };
        // 20100812100439 and 20100909100439.
        let window = ValidityWindow {
            inception: 1_281_607_479,
            expiration: 1_284_026_679,
        };
        let mut data = SignedData::default();
        data.build(
            Algorithm::EcdsaP256Sha256,
            key.key_tag(FLAGS_KSK),
            &wire("example.net"),
            &rrset,
            window,
        )
        .unwrap();
        let prefix = data.rrsig_prefix();
        assert_eq!(&prefix[..4], &[0, 1, 13, 3]);
        assert_eq!(&prefix[16..18], &55648u16.to_be_bytes());

        let published_key = BASE64
            .decode(
                "GojIhhXUN/u4v54ZQqGSnyhWJwaubCvTmeexv7bR6edbkrSqQpF64cYbcB7wNcP+e+MAnLr+Wi9xMWyQLc8NAA==",
            )
            .unwrap();
        let published_signature = BASE64
            .decode(
                "qx6wLYqmh+l9oCKTN6qIc+bw6ya+KJ8oMz0YP107epXAyGmt+3SNruPFKG7tZoLBLlUzGGus7ZwmwWep666VCw==",
            )
            .unwrap();
        assert!(verify(
            Algorithm::EcdsaP256Sha256,
            &published_key,
            data.as_bytes(),
            &published_signature
        ));
        // And a changed byte does not.
        let mut tampered = data.as_bytes().to_vec();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(!key.verify(&tampered, &published_signature));
    }

    #[test]
    fn rfc8080_ed25519_rrsig_is_reproduced_exactly() {
        // Ed25519 is deterministic, so the whole RRSIG must match (RFC 8080 §6.1 as corrected
        // by erratum 4935, the value PowerDNS's test_signers.cc checks).
        let key = SigningKey::from_private_key_file(
            "Private-key-format: v1.2\nAlgorithm: 15 (ED25519)\n\
             PrivateKey: ODIyNjAzODQ2MjgwODAxMjI2NDUxOTAyMDQxNDIyNjI=\n",
        )
        .unwrap();
        let owner = wire("example.com");
        let mx = [&[0, 10][..], &wire("mail.example.com")].concat();
        let rdatas: &[&[u8]] = &[&mx];
        let rrset = RrsetToSign {
            owner_wire: &owner,
            rtype: 15,
            class: 1,
            ttl: 3600,
            rdatas,
        };
        let window = ValidityWindow {
            inception: 1_438_207_200,
            expiration: 1_440_021_600,
        };
        let rdata = rrsig_rdata(&key, key.key_tag(FLAGS_KSK), &owner, &rrset, window).unwrap();
        let (prefix, signature) = rdata.split_at(rdata.len() - 64);
        assert_eq!(&prefix[..4], &[0, 15, 15, 2]);
        assert_eq!(
            BASE64.encode(signature),
            "oL9krJun7xfBOIWcGHi7mag5/hdZrKWw15jPGrHpjQeRAvTdszaPD+QLs3fx8A4M3e23mRZ9VrbpMngwcrqNAg=="
        );
    }

    #[test]
    fn sign_then_verify_round_trip() {
        let key = SigningKey::generate(Algorithm::EcdsaP256Sha256).unwrap();
        let owner = wire("www.example.org");
        let rdatas: &[&[u8]] = &[&[192, 0, 2, 1], &[192, 0, 2, 2]];
        let rrset = RrsetToSign {
            owner_wire: &owner,
            rtype: 1,
            class: 1,
            ttl: 300,
            rdatas,
        };
        let window = ValidityWindow::at(1_796_374_800);
        let tag = key.key_tag(FLAGS_ZSK);
        let signer = wire("example.org");
        let rdata = rrsig_rdata(&key, tag, &signer, &rrset, window).unwrap();
        assert_eq!(rdata.len(), 18 + signer.len() + 64);
        let data = build(&key, &signer, &rrset, window);
        let (prefix, signature) = rdata.split_at(rdata.len() - 64);
        assert!(data.starts_with(prefix));
        assert!(key.verify(&data, signature));
    }

    #[test]
    fn record_order_case_and_duplicates_do_not_change_the_signed_data() {
        let key = rfc6605_key();
        let signer = wire("example.net");
        let window = ValidityWindow::at(1_796_374_800);
        let a: &[u8] = &[192, 0, 2, 1];
        let b: &[u8] = &[192, 0, 2, 2];
        let c: &[u8] = &[10, 0, 0, 1];
        let lower = wire("www.example.net");
        let mixed = wire("WwW.ExAmple.NET");
        let one = |owner: &[u8], rdatas: &[&[u8]]| {
            build(
                &key,
                &signer,
                &RrsetToSign {
                    owner_wire: owner,
                    rtype: 1,
                    class: 1,
                    ttl: 60,
                    rdatas,
                },
                window,
            )
        };
        let sorted = one(&lower, &[c, a, b]);
        assert_eq!(sorted, one(&lower, &[a, b, c]));
        assert_eq!(sorted, one(&lower, &[b, c, a, b, c]));
        assert_eq!(sorted, one(&mixed, &[b, a, c]));
        assert_ne!(sorted, one(&lower, &[a, b]));
        // 10.0.0.1 sorts first; three RRs of 4 + 15 + 10 bytes each after the prefix.
        let prefix_len = 18 + signer.len();
        assert_eq!(sorted.len(), prefix_len + 3 * (lower.len() + 10 + 4));
        assert_eq!(&sorted[sorted.len() - 4..], b);
        assert_eq!(&sorted[prefix_len + lower.len() + 10..][..4], c);
    }

    #[test]
    fn names_inside_rdata_are_lower_cased() {
        let key = rfc6605_key();
        let signer = wire("example.net");
        let window = ValidityWindow::at(1_796_374_800);
        let owner = wire("alias.example.net");
        let sign = |rtype, rdata: &[u8]| {
            build(
                &key,
                &signer,
                &RrsetToSign {
                    owner_wire: &owner,
                    rtype,
                    class: 1,
                    ttl: 60,
                    rdatas: &[rdata],
                },
                window,
            )
        };
        let upper = wire("Target.EXAMPLE.net");
        let lower = wire("target.example.net");
        assert_eq!(sign(5, &upper), sign(5, &lower));
        let mx = |name: &[u8]| [&[0, 10][..], name].concat();
        assert_eq!(sign(15, &mx(&upper)), sign(15, &mx(&lower)));
        let srv = |name: &[u8]| [&[0, 1, 0, 2, 0, 53][..], name].concat();
        assert_eq!(sign(33, &srv(&upper)), sign(33, &srv(&lower)));
        // TXT is text, not a name: case is kept.
        let txt = |s: &[u8]| [&[s.len() as u8][..], s].concat();
        assert_ne!(sign(16, &txt(b"Hello")), sign(16, &txt(b"hello")));
        // A CNAME whose RDATA is not exactly one name is refused.
        let trailing = [&lower[..], &[1]].concat();
        let rdatas: &[&[u8]] = &[&trailing];
        let rrset = RrsetToSign {
            owner_wire: &owner,
            rtype: 5,
            class: 1,
            ttl: 60,
            rdatas,
        };
        let err = SignedData::default()
            .build(key.algorithm(), 1, &signer, &rrset, window)
            .unwrap_err();
        assert_eq!(err.kind(), "malformed_rdata");
    }

    #[test]
    fn labels_and_name_helpers() {
        assert_eq!(label_count(&wire("www.example.net")), Some(3));
        assert_eq!(label_count(&wire("*.example.net")), Some(2));
        assert_eq!(label_count(&wire("a.*.example.net")), Some(4));
        assert_eq!(label_count(&wire(".")), Some(0));
        assert_eq!(label_count(b"\x03www\x07example"), None);
        assert_eq!(label_count(b"\xc0\x0c"), None);
        assert_eq!(label_count(&[&wire("a")[..], &[0]].concat()), None);
        assert_eq!(
            lowercase_name_wire(&wire("WWW.Example.NET")),
            Some(wire("www.example.net"))
        );
        // Only label bytes are touched: a label length of 'A' (65) is not a valid name anyway.
        assert_eq!(lowercase_name_wire(b"\x41"), None);
        let long = [&[63u8][..], &[b'A'; 63]].concat().repeat(4);
        assert_eq!(lowercase_name_wire(&[&long[..], &[0]].concat()), None);
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        let key = rfc6605_key();
        let mut data = SignedData::default();
        let owner = wire("x.example");
        let rrset = |owner_wire, rdatas| RrsetToSign {
            owner_wire,
            rtype: 1,
            class: 1,
            ttl: 1,
            rdatas,
        };
        let window = ValidityWindow::at(0);
        let kind = |r: Result<(), SignError>| r.unwrap_err().kind();
        let a: &[&[u8]] = &[&[1, 2, 3, 4]];
        assert_eq!(
            kind(data.build(key.algorithm(), 1, &owner, &rrset(b"\x01x", a), window)),
            "malformed_owner"
        );
        assert_eq!(
            kind(data.build(
                key.algorithm(),
                1,
                b"\x07example",
                &rrset(&owner, a),
                window
            )),
            "malformed_signer"
        );
        assert_eq!(
            kind(data.build(key.algorithm(), 1, &owner, &rrset(&owner, &[]), window)),
            "empty_rrset"
        );
        let huge = vec![0u8; 70_000];
        assert_eq!(
            kind(data.build(key.algorithm(), 1, &owner, &rrset(&owner, &[&huge]), window)),
            "rdata_too_long"
        );
    }

    #[test]
    fn spread_hash_ignores_owner_case() {
        assert_eq!(
            rrset_spread_hash(&wire("WWW.example.net"), 1),
            rrset_spread_hash(&wire("www.example.net"), 1)
        );
        assert_ne!(
            rrset_spread_hash(&wire("www.example.net"), 1),
            rrset_spread_hash(&wire("www.example.net"), 28)
        );
    }
}
