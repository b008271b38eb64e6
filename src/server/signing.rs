//! Online signing on the packet path: each packet thread owns a [`SignState`] (its share of the
//! signature cache and scratch space), so signing takes no lock and a miss delays only the
//! query that needs it.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::dnssec::{
    Outcome, RrsetToSign, SignatureCache, ValidityWindow, ZoneSigner, rrset_spread_hash,
};
use crate::state::Shared;
use crate::telemetry::metrics::WorkerMetrics;

/// RRSIG, RFC 4034.
pub const TYPE_RRSIG: u16 = 46;
/// Each RRset moves to the next week's validity window at a point spread over this last part
/// of the week (the next window is already valid: its inception is this week's start).
const WINDOW_SPREAD_SECS: u32 = 86_400;

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
    pub fn for_thread(shared: &Shared) -> Self {
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
    pub fn keep(&mut self, rtype: u16, rdata: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(rdata);
        self.spans.push((rtype, start, self.bytes.len()));
    }

    /// Appends to `push` one RRSIG per RRset kept since [`start`](Self::start), each covering
    /// the RRs of one type at `owner_wire` with `ttl`. Returns false (and pushes nothing more)
    /// if signing failed, which the caller answers as SERVFAIL.
    pub fn sign(
        &mut self,
        signer: &ZoneSigner,
        owner_wire: &[u8],
        ttl: u32,
        metrics: &WorkerMetrics,
        mut push: impl FnMut(&[u8]),
    ) -> bool {
        let share = self.share;
        let cache = self.cache.get_or_insert_with(|| SignatureCache::new(share));
        let now = unix_now();
        for i in 0..self.spans.len() {
            let rtype = self.spans[i].0;
            // One RRSIG per type: skip a type an earlier RR already covered.
            if self.spans[..i].iter().any(|s| s.0 == rtype) {
                continue;
            }
            let rdatas: Vec<&[u8]> = self.spans[i..]
                .iter()
                .filter(|s| s.0 == rtype)
                .map(|&(_, a, b)| &self.bytes[a..b])
                .collect();
            let rrset = RrsetToSign {
                owner_wire,
                rtype,
                class: 1,
                ttl,
                rdatas: &rdatas,
            };
            let window = ValidityWindow::for_rrset(
                now,
                WINDOW_SPREAD_SECS,
                rrset_spread_hash(owner_wire, rtype),
            );
            let evictions = cache.stats().evictions;
            match cache.get_or_sign(
                &signer.key,
                signer.key_tag,
                &signer.signer_wire,
                &rrset,
                window,
            ) {
                Ok((rrsig, outcome)) => {
                    match outcome {
                        Outcome::Hit => metrics.dnssec_sig_hits.inc(),
                        Outcome::Miss => metrics.dnssec_sig_misses.inc(),
                    }
                    push(rrsig);
                }
                Err(e) => {
                    tracing::error!(target: "dnsteer::dnssec", error = %e, kind = e.kind(), "signing failed");
                    metrics.dnssec_sign_errors.inc();
                    return false;
                }
            }
            let evicted = cache.stats().evictions - evictions;
            if evicted > 0 {
                metrics.dnssec_sig_evictions.add(evicted);
            }
        }
        true
    }
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}
