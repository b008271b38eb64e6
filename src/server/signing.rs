//! Online signing on the packet path: each packet thread owns a [`SignState`] (its share of the
//! signature cache and scratch space), so signing takes no lock and a miss delays only the
//! query that needs it.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::proto::{MetricFamily, MetricType};

use crate::dnssec::{
    Outcome, RrsetToSign, SignError, SignatureCache, ValidityWindow, ZoneSigner, rrset_spread_hash,
    rrsig_rdata,
};
use crate::state::Shared;
use crate::telemetry::metrics::{DnssecForward, Metrics, WorkerMetrics, labelled, scalar};

/// RRSIG, RFC 4034.
pub(crate) const TYPE_RRSIG: u16 = 46;
/// Each RRset moves to the next week's validity window at a point spread over this last part
/// of the week (the next window is already valid: its inception is this week's start).
const WINDOW_SPREAD_SECS: u32 = 86_400;
/// RRs of one RRset kept on the stack while signing; larger sets spill to the heap.
const INLINE_RRS: usize = 16;

/// One packet thread's signing state.
pub struct SignState {
    /// Made on first use, so a proxy that never signs holds no cache.
    cache: Option<SignatureCache>,
    /// Entries for this thread's cache.
    share: usize,
    /// RDATAs of the answer being built (`spans` index into it), kept for signing.
    bytes: Vec<u8>,
    spans: Vec<(u16, usize, usize)>,
}

impl SignState {
    /// The state for one of the packet threads sharing `shared`'s settings: its part of
    /// `[dnssec].signature_cache_entries` (read at start) among the UDP front-end threads (one
    /// per worker and listen address) and the workers' TCP runtimes.
    pub(crate) fn for_thread(shared: &Shared) -> Self {
        let total = shared.snapshot.load().config.dnssec.signature_cache_entries;
        let threads = shared.restart.workers.max(1) * (shared.restart.listen.len() + 1);
        Self::new(total / threads)
    }

    /// `share`: this thread's part of `[dnssec].signature_cache_entries`.
    pub fn new(share: usize) -> Self {
        Self {
            cache: None,
            share,
            bytes: Vec::new(),
            spans: Vec::new(),
        }
    }

    /// Forgets the previous answer's RDATAs.
    pub fn start(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    /// Keeps one answer RR's RDATA for signing.
    pub(crate) fn keep(&mut self, rtype: u16, rdata: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(rdata);
        self.spans.push((rtype, start, self.bytes.len()));
    }

    /// Appends to `push` one RRSIG per RRset kept since [`start`](Self::start), each covering
    /// the RRs of one type at `owner_wire` with `ttl`. Returns false (and pushes nothing more)
    /// if signing failed, which the caller answers as SERVFAIL.
    pub(crate) fn sign(
        &mut self,
        signer: &ZoneSigner,
        owner_wire: &[u8],
        ttl: u32,
        metrics: &WorkerMetrics,
        mut push: impl FnMut(&[u8]),
    ) -> bool {
        let share = self.share;
        // A share of 0 means no cache: every answer is signed (`signature_cache_entries = 0`).
        let mut cache =
            (share > 0).then(|| self.cache.get_or_insert_with(|| SignatureCache::new(share)));
        let now = unix_now();
        for i in 0..self.spans.len() {
            let rtype = self.spans[i].0;
            // One RRSIG per type: skip a type an earlier RR already covered.
            if self.spans[..i].iter().any(|s| s.0 == rtype) {
                continue;
            }
            // The RRset's RDATAs, on the stack for the usual few records (no allocation).
            let mut inline: [&[u8]; INLINE_RRS] = [&[]; INLINE_RRS];
            let mut spilled: Vec<&[u8]> = Vec::new();
            let mut n = 0;
            for &(_, a, b) in self.spans[i..].iter().filter(|s| s.0 == rtype) {
                if n < INLINE_RRS {
                    inline[n] = &self.bytes[a..b];
                } else {
                    if spilled.is_empty() {
                        spilled.extend_from_slice(&inline);
                    }
                    spilled.push(&self.bytes[a..b]);
                }
                n += 1;
            }
            let rdatas = if n <= INLINE_RRS {
                &inline[..n]
            } else {
                &spilled[..]
            };
            let rrset = RrsetToSign {
                owner_wire,
                rtype,
                class: 1,
                ttl,
                rdatas,
            };
            let window = ValidityWindow::for_rrset(
                now,
                WINDOW_SPREAD_SECS,
                rrset_spread_hash(owner_wire, rtype),
            );
            if !sign_rrset(
                cache.as_deref_mut(),
                signer,
                &rrset,
                window,
                metrics,
                &mut push,
            ) {
                return false;
            }
        }
        true
    }
}

/// One RRSIG for `rrset` to `push`, from the thread's cache when it has one (counting hits,
/// misses and evictions); false if signing failed.
#[inline]
fn sign_rrset(
    cache: Option<&mut SignatureCache>,
    signer: &ZoneSigner,
    rrset: &RrsetToSign<'_>,
    window: ValidityWindow,
    metrics: &WorkerMetrics,
    push: &mut impl FnMut(&[u8]),
) -> bool {
    let Some(cache) = cache else {
        match rrsig_rdata(
            &signer.key,
            signer.key_tag,
            &signer.signer_wire,
            rrset,
            window,
        ) {
            Ok(rrsig) => {
                metrics.dnssec_sig_misses.inc();
                push(&rrsig);
                return true;
            }
            Err(e) => return sign_failed(&e, metrics),
        }
    };
    let evictions = cache.stats().evictions;
    match cache.get_or_sign(
        &signer.key,
        signer.key_tag,
        &signer.signer_wire,
        rrset,
        window,
    ) {
        Ok((rrsig, outcome)) => {
            match outcome {
                Outcome::Hit => metrics.dnssec_sig_hits.inc(),
                Outcome::Miss => metrics.dnssec_sig_misses.inc(),
            }
            push(rrsig);
        }
        Err(e) => return sign_failed(&e, metrics),
    }
    let evicted = cache.stats().evictions - evictions;
    if evicted > 0 {
        metrics.dnssec_sig_evictions.add(evicted);
    }
    true
}

fn sign_failed(e: &SignError, metrics: &WorkerMetrics) -> bool {
    tracing::error!(target: "dnsteer::dnssec", error = %e, kind = e.kind(), "signing failed");
    metrics.dnssec_sign_errors.inc();
    false
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// The workers' DNSSEC families: DO=1 queries left to PowerDNS, answers signed here, and the
/// signature caches' work.
pub(crate) fn families(workers: &Metrics) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    out.push(labelled(
        "dnsteer_dnssec_forwarded_total",
        "DO=1 queries sent to PowerDNS instead of answered and signed here, by reason.",
        MetricType::COUNTER,
        "reason",
        DnssecForward::ALL.iter().map(|&r| {
            let n = workers.sum(|w| w.dnssec_forwarded[r as usize].get());
            (r.label(), n as f64)
        }),
    ));
    for (name, help, get) in [
        (
            "dnsteer_dnssec_signed_answers_total",
            "DO=1 answers of in-process records signed here.",
            (|w: &WorkerMetrics| w.dnssec_signed.get()) as fn(&WorkerMetrics) -> u64,
        ),
        (
            "dnsteer_dnssec_signature_cache_hits_total",
            "RRSIGs served from a packet thread's signature cache.",
            |w| w.dnssec_sig_hits.get(),
        ),
        (
            "dnsteer_dnssec_signatures_made_total",
            "RRSIGs made (signature cache misses).",
            |w| w.dnssec_sig_misses.get(),
        ),
        (
            "dnsteer_dnssec_signature_cache_evictions_total",
            "Cached RRSIGs replaced to make room.",
            |w| w.dnssec_sig_evictions.get(),
        ),
        (
            "dnsteer_dnssec_sign_errors_total",
            "Signing failures (answered SERVFAIL).",
            |w| w.dnssec_sign_errors.get(),
        ),
    ] {
        out.push(scalar(
            name,
            help,
            MetricType::COUNTER,
            workers.sum(get) as f64,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dnssec::{Algorithm, FLAGS_ZSK, SigningKey};

    fn signer() -> ZoneSigner {
        let key = Arc::new(SigningKey::generate(Algorithm::EcdsaP256Sha256).unwrap());
        ZoneSigner {
            key_tag: key.key_tag(FLAGS_ZSK),
            key,
            flags: FLAGS_ZSK,
            signer_wire: b"\x04test\x00".to_vec(),
        }
    }

    fn answer(state: &mut SignState, signer: &ZoneSigner, m: &WorkerMetrics) -> usize {
        state.start();
        state.keep(1, &[192, 0, 2, 1]);
        state.keep(1, &[192, 0, 2, 2]);
        let mut rrsigs = 0;
        assert!(state.sign(signer, b"\x01a\x04test\x00", 60, m, |_| rrsigs += 1));
        rrsigs
    }

    #[test]
    fn one_rrsig_per_rrset_and_repeats_come_from_the_cache() {
        let (s, m) = (signer(), WorkerMetrics::default());
        let mut state = SignState::new(64);
        assert_eq!(answer(&mut state, &s, &m), 1, "two A records, one RRset");
        assert_eq!(answer(&mut state, &s, &m), 1);
        assert_eq!((m.dnssec_sig_misses.get(), m.dnssec_sig_hits.get()), (1, 1));
    }

    #[test]
    fn large_rrsets_spill_to_the_heap_and_sign_the_same() {
        let (s, m) = (signer(), WorkerMetrics::default());
        let mut state = SignState::new(64);
        state.start();
        for i in 0..40u8 {
            state.keep(1, &[192, 0, 2, i]);
        }
        let mut made = Vec::new();
        assert!(state.sign(&s, b"\x01a\x04test\x00", 60, &m, |r| made.push(r.to_vec())));
        assert_eq!(made.len(), 1);
        // The same 40 RRs in another order hit the cache: the signed RRset was the same.
        state.start();
        for i in (0..40u8).rev() {
            state.keep(1, &[192, 0, 2, i]);
        }
        assert!(state.sign(&s, b"\x01a\x04test\x00", 60, &m, |_| {}));
        assert_eq!(m.dnssec_sig_hits.get(), 1);
    }

    #[test]
    fn a_share_of_zero_signs_every_answer() {
        let (s, m) = (signer(), WorkerMetrics::default());
        let mut state = SignState::new(0);
        for _ in 0..3 {
            assert_eq!(answer(&mut state, &s, &m), 1);
        }
        assert_eq!((m.dnssec_sig_misses.get(), m.dnssec_sig_hits.get()), (3, 0));
        assert!(state.cache.is_none(), "no cache is made");
    }
}
