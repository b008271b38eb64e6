//! In-process records: the compiled `[[records]]` table and its per-query evaluation.
//!
//! STUB: the API below is the contract; the implementation is being written.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::{Config, ConfigError, RecordSpec};
use crate::geo::GeoDb;
use crate::probes::{HealthRef, ProbeSpec};

/// SOA and signing facts about the zone holding a record, learned from the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneInfo {
    /// Zone apex, lower-case wire format.
    pub apex_wire: Vec<u8>,
    /// SOA RDATA in wire format, uncompressed.
    pub soa_rdata: Vec<u8>,
    /// TTL to give the SOA in a NODATA answer: min(SOA TTL, SOA minimum).
    pub negative_ttl: u32,
    /// The zone has a DNSKEY at its apex: DO=1 queries must go to PowerDNS.
    pub signed: bool,
    /// TTL of the SOA record itself (refresh period of these facts).
    pub soa_ttl: u32,
}

/// Zone facts by zone apex (lower-case presentation, trailing dot).
pub type Zones = HashMap<String, ZoneInfo>;

/// Who is asking, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// ECS address masked to its source prefix when the query had ECS, else the packet source.
    pub bestwho: IpAddr,
    /// Source prefix of the query's ECS option, when it had one.
    pub ecs_source_prefix: Option<u8>,
}

/// Receives answer RDATA in wire format; the caller owns the owner name, class and TTL.
pub trait AnswerSink {
    fn push(&mut self, rtype: u16, rdata: &[u8]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from the first choice (UP targets, or a rule without health checks).
    Primary,
    /// Nothing was up: answered by `backupSelector`.
    Backup,
    /// Empty result: NODATA.
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluated {
    pub outcome: Outcome,
    /// ECS scope prefix to echo.
    pub scope: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("result is not a valid {0} value")]
    BadResult(&'static str),
}

/// All records at one name and type, and how to answer them.
pub struct RecordSet {
    pub ttl: u32,
    pub rtype: u16,
}

impl RecordSet {
    pub fn evaluate(
        &self,
        _client: &Client,
        _sink: &mut dyn AnswerSink,
    ) -> Result<Evaluated, EvalError> {
        Ok(Evaluated {
            outcome: Outcome::Empty,
            scope: 0,
        })
    }
}

pub enum Lookup<'t> {
    /// Not ours: forward.
    Miss,
    /// Ours and the answer is a record set (possibly a CNAME set for another qtype).
    Hit(&'t RecordSet, Option<&'t ZoneInfo>),
    /// A name we answer, but not this type: NODATA with this SOA.
    NoData(&'t ZoneInfo),
}

/// Compiled but not yet linked to probe health or GeoIP.
pub struct Compiled {
    _private: (),
}

impl Compiled {
    /// Every probe the records need (deduplicated by identity).
    pub fn probe_specs(&self) -> Vec<ProbeSpec> {
        Vec::new()
    }

    /// Zone apexes needed (for SOA learning), derived from record names.
    pub fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Compiles every record of `config` (errors name the record, line and construct).
pub fn compile(_config: &Config) -> Result<Compiled, ConfigError> {
    Ok(Compiled { _private: () })
}

/// Compiles record specs from elsewhere (zone transfer): one result per spec, errors as text.
pub fn compile_specs(
    _specs: &[RecordSpec],
    _defaults: &crate::config::ProbeDefaults,
) -> Vec<Result<(), String>> {
    Vec::new()
}

/// The table the packet path reads.
#[derive(Default)]
pub struct RecordTable {
    _private: (),
}

impl RecordTable {
    pub fn link(
        _compiled: &Compiled,
        _health: &HashMap<ProbeSpec, HealthRef>,
        _geo: Option<&GeoDb>,
        _zones: &Zones,
    ) -> RecordTable {
        RecordTable { _private: () }
    }

    /// `qname` is lower-case, uncompressed wire format.
    pub fn lookup(&self, _qname: &[u8], _qtype: u16) -> Lookup<'_> {
        Lookup::Miss
    }

    pub fn is_empty(&self) -> bool {
        true
    }
}

impl EvalError {
    pub fn kind(&self) -> &'static str {
        "bad_result"
    }
}
