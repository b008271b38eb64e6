//! Which key signs for a zone: decided from what PowerDNS publishes, so dnsteer only ever signs
//! with a key that validating resolvers can already verify.

use std::sync::Arc;

use super::keys::{FLAGS_KSK, FLAGS_ZSK, SigningKey};
use super::sign::{RrsetToSign, ValidityWindow, rrsig_rdata};

/// A live signer for one zone: the key, how it is published, and the zone apex (signer name).
#[derive(Debug)]
pub(crate) struct ZoneSigner {
    pub(crate) key: Arc<SigningKey>,
    /// DNSKEY flags the key is published with (256 ZSK, 257 KSK).
    pub flags: u16,
    pub key_tag: u16,
    /// Zone apex, lower-case uncompressed wire.
    pub(crate) signer_wire: Vec<u8>,
}

impl PartialEq for ZoneSigner {
    fn eq(&self, other: &Self) -> bool {
        self.flags == other.flags
            && self.key_tag == other.key_tag
            && self.signer_wire == other.signer_wire
            && self.key.public_key() == other.key.public_key()
    }
}

/// What PowerDNS publishes for a zone, as learned with DO=1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published<'a> {
    /// DNSKEY RDATAs at the apex.
    pub(crate) dnskeys: &'a [Vec<u8>],
    pub(crate) dnskey_ttl: u32,
    /// Key tags of the RRSIGs PowerDNS puts on the apex SOA: the keys it signs answers with.
    pub signing_tags: &'a [u16],
}

/// Whether a zone is signed in-process, and if not, why (for `/status` and the logs).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum SignerState {
    Live(Arc<ZoneSigner>),
    /// No `[[dnssec.keys]]` entry for the zone.
    #[default]
    NoKey,
    /// None of the zone's keys is in its DNSKEY RRset.
    NotPublished {
        key_tags: Vec<u16>,
    },
    /// A key is published but PowerDNS does not sign with it: usable once the DNSKEY RRset
    /// holding it has been served for its TTL (no resolver still caches a set without it).
    Waiting {
        key_tag: u16,
        usable_at_unix: u64,
    },
}

impl SignerState {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            SignerState::Live(_) => "signing",
            SignerState::NoKey => "no_key",
            SignerState::NotPublished { .. } => "key_not_published",
            SignerState::Waiting { .. } => "waiting_for_dnskey_ttl",
        }
    }

    pub(crate) fn signer(&self) -> Option<&Arc<ZoneSigner>> {
        match self {
            SignerState::Live(s) => Some(s),
            _ => None,
        }
    }
}

/// Picks the signer for a zone among `keys` (those configured for it, most preferred first:
/// dnsteer's own keys newest first, then the key files in config order):
/// 1. a key PowerDNS itself signs with (its tag is on the SOA's RRSIGs): usable at once;
/// 2. else the most preferred published key seen in the DNSKEY RRset since at least its TTL
///    (`first_seen(rdata)` is when the control plane first saw that DNSKEY RDATA), so a newer
///    own key takes over from an older one as soon as resolvers can verify it;
/// 3. else nothing: DO=1 queries for the zone go to PowerDNS.
///
/// A key missing from the DNSKEY RRset is never used, whatever it signed before.
pub(crate) fn choose(
    apex_wire: &[u8],
    keys: &[Arc<SigningKey>],
    published: Published<'_>,
    first_seen: impl Fn(&[u8]) -> Option<u64>,
    now_unix: u64,
) -> SignerState {
    if keys.is_empty() {
        return SignerState::NoKey;
    }
    let mut waiting: Option<(u16, u64)> = None;
    let mut usable_later: Option<(Arc<SigningKey>, u16, u16)> = None;
    for key in keys {
        for flags in [FLAGS_ZSK, FLAGS_KSK] {
            let rdata = key.dnskey_rdata(flags);
            if !published.dnskeys.contains(&rdata) {
                continue;
            }
            let tag = key.key_tag(flags);
            if published.signing_tags.contains(&tag) {
                return live(key, flags, tag, apex_wire);
            }
            let since = first_seen(&rdata).unwrap_or(now_unix);
            let usable_at = since + u64::from(published.dnskey_ttl);
            if usable_at <= now_unix {
                usable_later.get_or_insert((key.clone(), flags, tag));
            } else if waiting.is_none_or(|(_, at)| usable_at < at) {
                waiting = Some((tag, usable_at));
            }
        }
    }
    if let Some((key, flags, tag)) = usable_later {
        return live(&key, flags, tag, apex_wire);
    }
    match waiting {
        Some((key_tag, usable_at_unix)) => SignerState::Waiting {
            key_tag,
            usable_at_unix,
        },
        None => SignerState::NotPublished {
            key_tags: keys.iter().map(|k| k.key_tag(FLAGS_ZSK)).collect(),
        },
    }
}

/// When the choice of [`choose`] (same arguments) may next change on its own: the earliest
/// future time a published key preferred over the current choice outlives its DNSKEY TTL. A
/// key waiting behind a live, less preferred one is not visible in the [`SignerState`], so the
/// control plane asks this to know when to decide again.
pub(crate) fn next_change(
    keys: &[Arc<SigningKey>],
    published: Published<'_>,
    first_seen: impl Fn(&[u8]) -> Option<u64>,
    now_unix: u64,
) -> Option<u64> {
    let mut next: Option<u64> = None;
    for key in keys {
        for flags in [FLAGS_ZSK, FLAGS_KSK] {
            let rdata = key.dnskey_rdata(flags);
            if !published.dnskeys.contains(&rdata) {
                continue;
            }
            if published.signing_tags.contains(&key.key_tag(flags)) {
                // Live at once, and preferred over everything after it.
                return next;
            }
            let usable_at =
                first_seen(&rdata).unwrap_or(now_unix) + u64::from(published.dnskey_ttl);
            if usable_at <= now_unix {
                // The choice, or as good as it: nothing after it can displace it.
                return next;
            }
            next = Some(next.map_or(usable_at, |n| n.min(usable_at)));
        }
    }
    next
}

fn live(key: &Arc<SigningKey>, flags: u16, key_tag: u16, apex_wire: &[u8]) -> SignerState {
    SignerState::Live(Arc::new(ZoneSigner {
        key: key.clone(),
        flags,
        key_tag,
        signer_wire: apex_wire.to_ascii_lowercase(),
    }))
}

/// Signs a throwaway RRset with `key` and checks the signature against the key's public half:
/// run once per key before it goes live, so a key that cannot produce valid signatures (a
/// broken file, a crypto failure) never reaches a resolver.
pub(crate) fn self_check(key: &SigningKey) -> bool {
    let owner = b"\x05check\x07dnsteer\x00";
    let rdata: &[u8] = &[192, 0, 2, 1];
    let rrset = RrsetToSign {
        owner_wire: owner,
        rtype: 1,
        class: 1,
        ttl: 60,
        rdatas: &[rdata],
    };
    let window = ValidityWindow::at(1_700_000_000);
    let Ok(rrsig) = rrsig_rdata(
        key,
        key.key_tag(FLAGS_ZSK),
        b"\x07dnsteer\x00",
        &rrset,
        window,
    ) else {
        return false;
    };
    let sig_len = key.algorithm().signature_len();
    let Some(prefix_len) = rrsig.len().checked_sub(sig_len) else {
        return false;
    };
    // The signed data is the RRSIG RDATA without the signature followed by the RR.
    let mut data = rrsig[..prefix_len].to_vec();
    data.extend_from_slice(owner);
    data.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    data.extend_from_slice(rdata);
    key.verify(&data, &rrsig[prefix_len..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dnssec::Algorithm;

    const APEX: &[u8] = b"\x06signed\x04test\x00";

    fn key() -> Arc<SigningKey> {
        Arc::new(SigningKey::generate(Algorithm::EcdsaP256Sha256).unwrap())
    }

    #[test]
    fn a_key_powerdns_signs_with_is_live_at_once() {
        let k = key();
        let dnskeys = vec![k.dnskey_rdata(FLAGS_ZSK)];
        let tags = [k.key_tag(FLAGS_ZSK)];
        let p = Published {
            dnskeys: &dnskeys,
            dnskey_ttl: 3600,
            signing_tags: &tags,
        };
        let s = choose(APEX, std::slice::from_ref(&k), p, |_| Some(1000), 1000);
        let signer = s.signer().expect("live");
        assert_eq!(signer.key_tag, k.key_tag(FLAGS_ZSK));
        assert_eq!(signer.signer_wire, APEX);
    }

    #[test]
    fn a_published_inactive_key_waits_for_the_dnskey_ttl() {
        let k = key();
        let dnskeys = vec![k.dnskey_rdata(FLAGS_ZSK)];
        let p = Published {
            dnskeys: &dnskeys,
            dnskey_ttl: 3600,
            signing_tags: &[],
        };
        match choose(
            APEX,
            std::slice::from_ref(&k),
            p,
            |_| Some(1000),
            1000 + 3599,
        ) {
            SignerState::Waiting { usable_at_unix, .. } => assert_eq!(usable_at_unix, 4600),
            other => panic!("{other:?}"),
        }
        assert!(
            choose(APEX, &[k], p, |_| Some(1000), 4600)
                .signer()
                .is_some()
        );
    }

    #[test]
    fn an_unpublished_key_never_signs() {
        let k = key();
        let other = key();
        let dnskeys = vec![other.dnskey_rdata(FLAGS_ZSK)];
        // Even if its tag were on the SOA's RRSIGs (a stale view), it is not in the DNSKEY set.
        let tags = [k.key_tag(FLAGS_ZSK)];
        let p = Published {
            dnskeys: &dnskeys,
            dnskey_ttl: 60,
            signing_tags: &tags,
        };
        assert!(matches!(
            choose(APEX, &[k], p, |_| Some(0), 10_000),
            SignerState::NotPublished { .. }
        ));
        assert!(matches!(
            choose(APEX, &[], p, |_| Some(0), 10_000),
            SignerState::NoKey
        ));
    }

    #[test]
    fn the_active_key_wins_over_an_older_published_one() {
        let old = key();
        let new = key();
        let dnskeys = vec![old.dnskey_rdata(FLAGS_ZSK), new.dnskey_rdata(FLAGS_ZSK)];
        let tags = [new.key_tag(FLAGS_ZSK)];
        let p = Published {
            dnskeys: &dnskeys,
            dnskey_ttl: 60,
            signing_tags: &tags,
        };
        let s = choose(APEX, &[old, new.clone()], p, |_| Some(0), 10_000);
        assert_eq!(s.signer().unwrap().key_tag, new.key_tag(FLAGS_ZSK));
    }

    #[test]
    fn the_preferred_usable_key_wins_over_an_older_usable_one() {
        let old = key();
        let new = key();
        let dnskeys = vec![old.dnskey_rdata(FLAGS_ZSK), new.dnskey_rdata(FLAGS_ZSK)];
        let p = Published {
            dnskeys: &dnskeys,
            dnskey_ttl: 60,
            signing_tags: &[],
        };
        let s = choose(APEX, &[new.clone(), old.clone()], p, |_| Some(0), 10_000);
        assert_eq!(s.signer().unwrap().key_tag, new.key_tag(FLAGS_ZSK));
        let s = choose(APEX, &[old.clone(), new], p, |_| Some(0), 10_000);
        assert_eq!(s.signer().unwrap().key_tag, old.key_tag(FLAGS_ZSK));
    }

    #[test]
    fn the_older_key_signs_until_the_preferred_one_outlived_its_ttl() {
        let old = key();
        let new = key();
        let old_rdata = old.dnskey_rdata(FLAGS_ZSK);
        let dnskeys = vec![old_rdata.clone(), new.dnskey_rdata(FLAGS_ZSK)];
        let p = Published {
            dnskeys: &dnskeys,
            dnskey_ttl: 60,
            signing_tags: &[],
        };
        // Old seen at 0, new at 1000: until 1060 the old one signs.
        let seen = |r: &[u8]| Some(if r == old_rdata.as_slice() { 0 } else { 1000 });
        let keys = [new.clone(), old.clone()];
        let s = choose(APEX, &keys, p, seen, 1059);
        assert_eq!(s.signer().unwrap().key_tag, old.key_tag(FLAGS_ZSK));
        assert_eq!(next_change(&keys, p, seen, 1059), Some(1060));
        let s = choose(APEX, &keys, p, seen, 1060);
        assert_eq!(s.signer().unwrap().key_tag, new.key_tag(FLAGS_ZSK));
        assert_eq!(next_change(&keys, p, seen, 1060), None);
    }

    #[test]
    fn next_change_ignores_keys_less_preferred_than_the_choice() {
        let old = key();
        let new = key();
        let new_rdata = new.dnskey_rdata(FLAGS_ZSK);
        let dnskeys = vec![old.dnskey_rdata(FLAGS_ZSK), new_rdata.clone()];
        let p = Published {
            dnskeys: &dnskeys,
            dnskey_ttl: 60,
            signing_tags: &[],
        };
        // The preferred key is usable; the other one still waits: nothing will change.
        let seen = |r: &[u8]| Some(if r == new_rdata.as_slice() { 0 } else { 1000 });
        assert_eq!(next_change(&[new, old], p, seen, 1010), None);
        // Unpublished keys never count.
        let lone = key();
        assert_eq!(next_change(&[lone], p, |_| Some(0), 0), None);
    }

    #[test]
    fn self_check_passes_for_good_keys() {
        assert!(self_check(&key()));
    }
}
