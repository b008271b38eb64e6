//! DNSSEC online signing: zone keys from BIND private-key files, RRSIGs made the way PowerDNS
//! makes them, and a per-worker signature cache.
//!
//! Self-contained on purpose: nothing here imports from the rest of the crate, so the packet
//! path can call in without the signing core depending on how that path is laid out.

mod cache;
mod keys;
mod sign;
mod zone;

pub use cache::{Outcome, SignatureCache};
pub(crate) use keys::key_tag;
pub use keys::{Algorithm, FLAGS_ZSK, KeyError, SignFailed, SigningKey};
pub use sign::{RrsetToSign, SignError, ValidityWindow, rrsig_rdata};
pub(crate) use sign::{format_dnssec_time, rrset_spread_hash};
pub(crate) use zone::{Published, SignerState, ZoneSigner, choose, next_change, self_check};
