//! Per-worker cache of RRSIG RDATA: an RRset is signed once per worker per validity window and
//! key, not once per answer, in fixed memory.

use std::hash::{BuildHasher as _, Hasher as _};

use foldhash::quality::FixedState;

use super::keys::SigningKey;
use super::sign::{RrsetToSign, SignError, SignedData, ValidityWindow};

const WAYS: usize = 4;

/// RRSIG RDATA bytes stored inline per entry. With the 64-byte signatures of both supported
/// algorithms, 18 + signer + 64 ≤ 139 fits signer names up to 57 wire bytes (e.g. a 50-character
/// zone name); an RRSIG for a longer signer is made every time and counted as `uncacheable`.
const INLINE: usize = 139;

/// One way of a set: 8 + 8 + 4 + 1 + 139 = 160 bytes.
#[derive(Clone, Copy)]
struct Way {
    tag: u64,
    check: u64,
    /// Cache clock at last use; the set's least recently used way is the one with the largest
    /// age (`clock - stamp`, wrapping).
    stamp: u32,
    /// 0: empty (an RRSIG RDATA is never empty).
    len: u8,
    rdata: [u8; INLINE],
}

// The per-entry memory stated in the docs.
const _: () = assert!(size_of::<Way>() == 160);

impl Way {
    const EMPTY: Way = Way {
        tag: 0,
        check: 0,
        stamp: 0,
        len: 0,
        rdata: [0; INLINE],
    };
}

/// Whether [`SignatureCache::get_or_sign`] found the signature or made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
}

/// Counts since the cache was made, for the caller to export as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheStats {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    /// Entries replaced while still holding a signature (their set was full).
    pub(crate) evictions: u64,
    /// Signatures made (one per miss).
    pub(crate) signatures: u64,
    /// Misses whose RRSIG was too large to keep (signer name over 57 bytes).
    pub(crate) uncacheable: u64,
}

/// RRSIG RDATA cache owned by one worker thread (`&mut self`: no locks, no atomics).
///
/// Memory is fixed at construction: `capacity` entries rounded up to a power of two (at least
/// 4), 160 bytes each, in 4-way sets with least-recently-used replacement within a set. The
/// `[dnssec].signature_cache_entries` setting (default 131072, about 20 MiB) is the total for
/// the process: the caller divides it by the worker count and gives each worker its share.
///
/// The key is exactly what the signature covers (RRSIG fields: type, algorithm, labels, TTL,
/// window, key tag, signer; then the lower-cased owner, class and the sorted, de-duplicated
/// canonical RDATAs) plus the key's public half, so a new window, TTL, record or key misses,
/// and record order or owner case does not. Two 64-bit hashes of it with independent seeds are
/// stored instead of the bytes (which can be kilobytes). Accepted risk: two different RRsets
/// with equal 128-bit hashes would share a signature, and resolvers would reject the second
/// RRset until its entry is evicted or the window turns. The inputs are the operator's records,
/// not chosen by clients, so this is chance alone, about 2^-128 per pair; fixed seeds keep
/// results reproducible. If query-chosen data ever reaches the signed RRsets, seed randomly.
pub struct SignatureCache {
    ways: Box<[Way]>,
    set_mask: usize,
    clock: u32,
    occupied: usize,
    /// Reused between calls so a hit allocates nothing.
    data: SignedData,
    /// Holds the RRSIG of an uncacheable miss for the caller to read.
    uncached: Vec<u8>,
    stats: CacheStats,
}

impl SignatureCache {
    pub fn new(capacity: usize) -> Self {
        let entries = capacity.max(WAYS).next_power_of_two();
        Self {
            ways: vec![Way::EMPTY; entries].into_boxed_slice(),
            set_mask: entries / WAYS - 1,
            clock: 0,
            occupied: 0,
            data: SignedData::default(),
            uncached: Vec::new(),
            stats: CacheStats::default(),
        }
    }

    /// The RRSIG RDATA for `rrset` signed by `key` (published with `key_tag`) for the zone
    /// `signer_wire` over `window`: from the cache if this worker made it before, else signed
    /// now and kept.
    pub fn get_or_sign(
        &mut self,
        key: &SigningKey,
        key_tag: u16,
        signer_wire: &[u8],
        rrset: &RrsetToSign<'_>,
        window: ValidityWindow,
    ) -> Result<(&[u8], Outcome), SignError> {
        self.data
            .build(key.algorithm(), key_tag, signer_wire, rrset, window)?;
        let (tag, check) = fingerprint(key.public_key(), self.data.as_bytes());
        self.clock = self.clock.wrapping_add(1);
        let base = (tag as usize & self.set_mask) * WAYS;
        let set = base..base + WAYS;

        let found = self.ways[set.clone()]
            .iter()
            .position(|w| w.len != 0 && w.tag == tag && w.check == check);
        if let Some(i) = found {
            self.stats.hits += 1;
            let way = &mut self.ways[base + i];
            way.stamp = self.clock;
            return Ok((&way.rdata[..usize::from(way.len)], Outcome::Hit));
        }

        self.stats.misses += 1;
        let signature = key.sign(self.data.as_bytes())?;
        self.stats.signatures += 1;
        let prefix = self.data.rrsig_prefix();
        let len = prefix.len() + signature.len();
        if len > INLINE {
            self.stats.uncacheable += 1;
            self.uncached.clear();
            self.uncached.extend_from_slice(prefix);
            self.uncached.extend_from_slice(&signature);
            return Ok((&self.uncached, Outcome::Miss));
        }

        let clock = self.clock;
        let victim = self.ways[set]
            .iter()
            .enumerate()
            .max_by_key(|(_, w)| {
                if w.len == 0 {
                    u64::MAX
                } else {
                    u64::from(clock.wrapping_sub(w.stamp))
                }
            })
            .map_or(0, |(i, _)| i);
        let way = &mut self.ways[base + victim];
        if way.len == 0 {
            self.occupied += 1;
        } else {
            self.stats.evictions += 1;
        }
        way.tag = tag;
        way.check = check;
        way.stamp = clock;
        way.len = len as u8;
        way.rdata[..prefix.len()].copy_from_slice(prefix);
        way.rdata[prefix.len()..len].copy_from_slice(&signature);
        Ok((&way.rdata[..len], Outcome::Miss))
    }

    pub(crate) fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Entries holding a signature.
    pub fn len(&self) -> usize {
        self.occupied
    }

    pub fn is_empty(&self) -> bool {
        self.occupied == 0
    }

    /// Entries the cache can hold (the requested capacity rounded up).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.ways.len()
    }
}

/// Two 64-bit hashes of the key and signed data with unrelated seeds: the first picks the set
/// and both must match for a hit.
fn fingerprint(public_key: &[u8], signed: &[u8]) -> (u64, u64) {
    let hash = |seed: u64| {
        let mut hasher = FixedState::with_seed(seed).build_hasher();
        hasher.write_usize(public_key.len());
        hasher.write(public_key);
        hasher.write(signed);
        hasher.finish()
    };
    (hash(0x243f_6a88_85a3_08d3), hash(0x1319_8a2e_0370_7344))
}

#[cfg(test)]
mod tests {
    use super::super::keys::{Algorithm, FLAGS_ZSK};
    use super::super::sign::tests::wire;
    use super::*;

    struct Fixture {
        key: SigningKey,
        tag: u16,
        signer: Vec<u8>,
        owner: Vec<u8>,
        window: ValidityWindow,
    }

    impl Fixture {
        fn new() -> Self {
            let key = SigningKey::generate(Algorithm::EcdsaP256Sha256).unwrap();
            Self {
                tag: key.key_tag(FLAGS_ZSK),
                key,
                signer: wire("example.net"),
                owner: wire("www.example.net"),
                window: ValidityWindow::at(1_796_374_800),
            }
        }

        fn rrset<'a>(&'a self, ttl: u32, rdatas: &'a [&'a [u8]]) -> RrsetToSign<'a> {
            RrsetToSign {
                owner_wire: &self.owner,
                rtype: 1,
                class: 1,
                ttl,
                rdatas,
            }
        }

        fn get(
            &self,
            cache: &mut SignatureCache,
            rrset: &RrsetToSign<'_>,
            window: ValidityWindow,
        ) -> (Vec<u8>, Outcome) {
            let (rdata, outcome) = cache
                .get_or_sign(&self.key, self.tag, &self.signer, rrset, window)
                .unwrap();
            (rdata.to_vec(), outcome)
        }
    }

    #[test]
    fn hit_after_miss_returns_the_same_valid_signature() {
        let f = Fixture::new();
        let mut cache = SignatureCache::new(64);
        let a: &[&[u8]] = &[&[192, 0, 2, 1], &[192, 0, 2, 2]];
        let (first, outcome) = f.get(&mut cache, &f.rrset(300, a), f.window);
        assert_eq!(outcome, Outcome::Miss);
        let (second, outcome) = f.get(&mut cache, &f.rrset(300, a), f.window);
        assert_eq!(outcome, Outcome::Hit);
        assert_eq!(first, second);
        // Order and owner case are not part of what is signed.
        let swapped: &[&[u8]] = &[&[192, 0, 2, 2], &[192, 0, 2, 1]];
        let upper = wire("WWW.example.NET");
        let rrset = RrsetToSign {
            owner_wire: &upper,
            ..f.rrset(300, swapped)
        };
        assert_eq!(
            f.get(&mut cache, &rrset, f.window),
            (first.clone(), Outcome::Hit)
        );

        let mut data = SignedData::default();
        data.build(
            f.key.algorithm(),
            f.tag,
            &f.signer,
            &f.rrset(300, a),
            f.window,
        )
        .unwrap();
        let (prefix, signature) = first.split_at(first.len() - 64);
        assert_eq!(prefix, data.rrsig_prefix());
        assert!(f.key.verify(data.as_bytes(), signature));
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 2,
                misses: 1,
                evictions: 0,
                signatures: 1,
                uncacheable: 0
            }
        );
    }

    #[test]
    fn anything_signed_that_differs_misses() {
        let f = Fixture::new();
        let mut cache = SignatureCache::new(64);
        let a: &[&[u8]] = &[&[192, 0, 2, 1]];
        let b: &[&[u8]] = &[&[192, 0, 2, 9]];
        assert_eq!(
            f.get(&mut cache, &f.rrset(300, a), f.window).1,
            Outcome::Miss
        );
        // Another TTL, record, window.
        assert_eq!(
            f.get(&mut cache, &f.rrset(60, a), f.window).1,
            Outcome::Miss
        );
        assert_eq!(
            f.get(&mut cache, &f.rrset(300, b), f.window).1,
            Outcome::Miss
        );
        let next = ValidityWindow::at(f.window.expiration);
        assert_eq!(f.get(&mut cache, &f.rrset(300, a), next).1, Outcome::Miss);
        // Another key, even under the same key tag.
        let other = SigningKey::generate(Algorithm::EcdsaP256Sha256).unwrap();
        let (_, outcome) = cache
            .get_or_sign(&other, f.tag, &f.signer, &f.rrset(300, a), f.window)
            .unwrap();
        assert_eq!(outcome, Outcome::Miss);
        // The first is still there.
        assert_eq!(
            f.get(&mut cache, &f.rrset(300, a), f.window).1,
            Outcome::Hit
        );
        assert_eq!(cache.stats().signatures, 5);
        assert_eq!(cache.len(), 5);
    }

    #[test]
    fn memory_is_bounded_and_evictions_counted() {
        let f = Fixture::new();
        let mut cache = SignatureCache::new(100);
        assert_eq!(cache.capacity(), 128);
        let inserts = 10 * cache.capacity();
        for i in 0..inserts {
            let ip = (i as u32).to_be_bytes();
            let rdatas: &[&[u8]] = &[&ip];
            let (_, outcome) = cache
                .get_or_sign(&f.key, f.tag, &f.signer, &f.rrset(300, rdatas), f.window)
                .unwrap();
            assert_eq!(outcome, Outcome::Miss);
            assert!(cache.len() <= cache.capacity());
        }
        let stats = cache.stats();
        assert_eq!(stats.misses, inserts as u64);
        assert_eq!(stats.evictions, inserts as u64 - cache.len() as u64);
        // Sets fill unevenly, but by now nearly all of them are full.
        assert!(cache.len() > cache.capacity() * 9 / 10, "{}", cache.len());
    }

    #[test]
    fn least_recently_used_way_is_replaced() {
        let f = Fixture::new();
        // One set of four ways.
        let mut cache = SignatureCache::new(1);
        assert_eq!(cache.capacity(), 4);
        let ips: Vec<[u8; 4]> = (0..5u8).map(|i| [192, 0, 2, i]).collect();
        let get = |cache: &mut SignatureCache, i: usize| {
            let rdatas: &[&[u8]] = &[&ips[i]];
            f.get(cache, &f.rrset(300, rdatas), f.window).1
        };
        for i in 0..4 {
            assert_eq!(get(&mut cache, i), Outcome::Miss);
        }
        assert_eq!(get(&mut cache, 0), Outcome::Hit);
        // Replaces 1, the least recently used.
        assert_eq!(get(&mut cache, 4), Outcome::Miss);
        assert_eq!(cache.stats().evictions, 1);
        assert_eq!(get(&mut cache, 0), Outcome::Hit);
        assert_eq!(get(&mut cache, 2), Outcome::Hit);
        assert_eq!(get(&mut cache, 1), Outcome::Miss);
    }

    #[test]
    fn long_signer_is_signed_but_not_kept() {
        let f = Fixture::new();
        let mut cache = SignatureCache::new(8);
        let signer = wire(&format!("{}.example.net", "a".repeat(50)));
        let owner = [&b"\x03www"[..], &signer].concat();
        let rdatas: &[&[u8]] = &[&[192, 0, 2, 1]];
        let rrset = RrsetToSign {
            owner_wire: &owner,
            ..f.rrset(300, rdatas)
        };
        for _ in 0..2 {
            let (rdata, outcome) = cache
                .get_or_sign(&f.key, f.tag, &signer, &rrset, f.window)
                .unwrap();
            assert_eq!(outcome, Outcome::Miss);
            assert_eq!(rdata.len(), 18 + signer.len() + 64);
        }
        assert_eq!(cache.stats().uncacheable, 2);
        assert!(cache.is_empty());
    }
}
