//! Per-source rate limiting (dnsdist `MaxQPSIPRule` + dynamic block) in fixed memory.
//!
//! STUB: the API below is the contract; the implementation is being written.

use std::net::IpAddr;

use crate::config::RateLimitConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within its rate (or limiting disabled).
    Allow,
    /// Never counted nor limited.
    Exempt,
    /// Over its rate or blocked: apply the configured action (unless dry run).
    /// `block_started` is true for the query that started the block (log it once).
    Limited { block_started: bool },
    /// Dry run: would have been limited.
    WouldLimit { block_started: bool },
}

pub struct RateLimiter {
    _private: (),
}

impl RateLimiter {
    pub fn new(_cfg: &RateLimitConfig) -> Self {
        RateLimiter { _private: () }
    }

    pub fn check(&self, _src: IpAddr) -> Verdict {
        Verdict::Allow
    }
    pub fn reconfigure(&self, _cfg: &RateLimitConfig) {}
    pub fn checks(&self) -> u64 {
        0
    }
    pub fn blocks_started(&self) -> u64 {
        0
    }
    pub fn blocked_now(&self) -> usize {
        0
    }
    pub fn tracked(&self) -> usize {
        0
    }
    pub fn evictions(&self) -> u64 {
        0
    }
    pub fn top_blocked(&self, _n: usize) -> Vec<String> {
        Vec::new()
    }
}
