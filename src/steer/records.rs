//! In-process records: the compiled `[[records]]` table and its per-query evaluation.
//!
//! Three stages, so the packet path only reads: `compile` turns record specs into typed rules
//! (config load, errors name the record); `RecordTable::link` binds the rules to probe health
//! flags, GeoIP coordinates and zone SOA facts (control plane, on every swap); `lookup` and
//! `RecordSet::evaluate` answer one query without allocating or locking.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::proto::{MetricFamily, MetricType};

use crate::config::{
    Config, ConfigError, ProbeDefaults, RecordBody, RecordOrigin, RecordSpec, RecordType,
};
use crate::dns;
use crate::steer::geo::{self, GeoCodes, GeoDb, Location};
use crate::steer::lua::{self, Cond, GeoField, Piece, Rdata, Rule, Selector};
use crate::steer::probes::{Health, HealthRef, HealthState, ProbeSpec};
use crate::steer::wildcard::{Wildcards, ZoneNames};
use crate::steer::{generate, hash};
use crate::telemetry::metrics::family;

/// SOA and signing facts about the zone holding a record, learned from the upstream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ZoneInfo {
    /// Zone apex, lower-case wire format.
    pub(crate) apex_wire: Vec<u8>,
    /// SOA RDATA in wire format, uncompressed.
    pub soa_rdata: Vec<u8>,
    /// TTL to give the SOA in a NODATA answer: min(SOA TTL, SOA minimum).
    pub(crate) negative_ttl: u32,
    /// The zone has a DNSKEY at its apex: DO=1 queries must go to PowerDNS.
    pub signed: bool,
    /// TTL of the SOA record itself (refresh period of these facts).
    pub(crate) soa_ttl: u32,
    /// DNSKEY RDATAs at the apex, as PowerDNS serves them (empty when unsigned).
    pub(crate) dnskeys: Vec<Vec<u8>>,
    pub(crate) dnskey_ttl: u32,
    /// Key tags of the RRSIGs on the apex SOA: the keys PowerDNS signs answers with.
    pub signing_tags: Vec<u16>,
    /// Whether DO=1 answers are signed here, and with what (set when the snapshot is linked).
    pub(crate) signer: crate::dnssec::SignerState,
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

/// Where `pickclosest` finds coordinates: the GeoIP database, or a fake in tests and benches.
pub trait Locate: Send + Sync {
    fn locate(&self, ip: IpAddr) -> Option<Location>;

    /// Country, continent and region codes, and the prefix length of the network that gave
    /// them (0: not in the database).
    fn codes(&self, _ip: IpAddr) -> (GeoCodes, u8) {
        (GeoCodes::default(), 0)
    }

    /// Autonomous system number, for `asnum()`.
    fn asn(&self, _ip: IpAddr) -> Option<u32> {
        None
    }
}

impl Locate for GeoDb {
    fn locate(&self, ip: IpAddr) -> Option<Location> {
        GeoDb::locate(self, ip)
    }

    fn codes(&self, ip: IpAddr) -> (GeoCodes, u8) {
        GeoDb::codes(self, ip)
    }

    fn asn(&self, ip: IpAddr) -> Option<u32> {
        GeoDb::asn(self, ip)
    }
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

/// The answer is SERVFAIL, as PowerDNS gives for the same record and client. Records already
/// pushed to the sink must be discarded.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("result is not a valid {0} value")]
    BadResult(&'static str),
    #[error("failOnIncompleteCheck: no candidate has completed a health check yet")]
    IncompleteCheck,
    #[error("the zone apex of the record is not known yet (createForward needs it)")]
    ZoneUnknown,
    #[error("pickselfweighted: every candidate is down")]
    AllDown,
}

impl EvalError {
    pub fn kind(&self) -> &'static str {
        match self {
            EvalError::BadResult(_) => "bad_result",
            EvalError::IncompleteCheck => "incomplete_check",
            EvalError::ZoneUnknown => "zone_unknown",
            EvalError::AllDown => "all_down",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compile
// ---------------------------------------------------------------------------------------------

/// Compiled but not yet linked to probe health or GeoIP.
#[derive(Debug, Default)]
pub struct Compiled {
    sets: Vec<CompiledSet>,
    /// Every probe, deduplicated, in first-use order.
    probes: Vec<ProbeSpec>,
}

#[derive(Debug)]
struct CompiledSet {
    /// Lower-case presentation, trailing dot.
    name: String,
    rtype: RecordType,
    /// One per record spec at this name and type, in spec order; answered together.
    parts: Vec<(u32, Rule)>,
}

impl Compiled {
    /// Every probe the records need (deduplicated by identity: address, check and options;
    /// selectors are not part of it).
    pub(crate) fn probe_specs(&self) -> Vec<ProbeSpec> {
        self.probes.clone()
    }

    /// Distinct record owner names (lower-case, trailing dot), sorted: the SOA learner finds
    /// the zone apex of each by asking the upstream.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sets.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Number of name+type sets.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

/// A record spec from a zone transfer that dnsteer leaves to PowerDNS, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rejected {
    pub spec: RecordSpec,
    pub reason: String,
}

impl Rejected {
    /// The transferred zone the record came from; empty for a record of the config file.
    pub(crate) fn zone(&self) -> &str {
        match &self.spec.origin {
            RecordOrigin::Zone { zone } => zone,
            RecordOrigin::Config { .. } => "",
        }
    }
}

/// Compiles every record of `config` (errors name the record, line and construct).
pub fn compile(config: &Config) -> Result<Compiled, ConfigError> {
    compile_with(config, &[]).map(|(compiled, _)| compiled)
}

/// Compiles `config`'s records plus specs read by zone transfer into one table. A bad config
/// record fails the whole load; a bad transferred spec is left out and listed with its reason
/// (the query is then forwarded to PowerDNS, which runs it itself).
pub(crate) fn compile_with(
    config: &Config,
    transferred: &[RecordSpec],
) -> Result<(Compiled, Vec<Rejected>), ConfigError> {
    let mut b = Builder::new(&config.probes, config.geoip.is_some());
    b.asn = config
        .geoip
        .as_ref()
        .is_some_and(|g| g.asn_database.is_some());
    b.index_lua(&config.records);
    b.index_lua(transferred);
    for spec in &config.records {
        wildcard_needs_transfer(spec, &config.zones.transfer)
            .and_then(|()| b.add(spec))
            .map_err(|m| config.record_error(spec, m))?;
    }
    let rejected = b.add_all(transferred);
    Ok((b.finish(), rejected))
}

/// A wildcard of the config file answers only inside a transferred zone, where dnsteer knows
/// every name below it (see `steer::wildcard`).
fn wildcard_needs_transfer(spec: &RecordSpec, transferred: &[String]) -> Result<(), String> {
    let Some(parent) = spec.name.strip_prefix("*.") else {
        return Ok(());
    };
    let covered = transferred
        .iter()
        .any(|z| z == "." || parent == z || parent.ends_with(&format!(".{z}")));
    if covered {
        return Ok(());
    }
    Err(format!(
        "wildcard name {} needs its zone listed in zones.transfer, so that names PowerDNS holds below it are never shadowed",
        spec.name
    ))
}

/// Compiles record specs from elsewhere (zone transfer): the ones that compile, and the rest
/// with their reasons. `geoip`: whether a GeoIP database is configured (else `pickclosest`
/// records are rejected).
#[cfg(test)]
pub(crate) fn compile_specs(
    specs: &[RecordSpec],
    defaults: &ProbeDefaults,
    geoip: bool,
) -> (Compiled, Vec<Rejected>) {
    let mut b = Builder::new(defaults, geoip);
    b.index_lua(specs);
    let rejected = b.add_all(specs);
    (b.finish(), rejected)
}

struct Builder<'a> {
    defaults: &'a ProbeDefaults,
    geoip: bool,
    /// An ASN database is configured (`asnum()`).
    asn: bool,
    /// Code of the records of type LUA (run by `include()`), by origin (zone, or "" for the
    /// config file) and owner name.
    lua_code: HashMap<(String, String), Vec<String>>,
    sets: Vec<CompiledSet>,
    /// Name → indexes into `sets`.
    by_name: HashMap<String, Vec<usize>>,
}

impl<'a> Builder<'a> {
    fn new(defaults: &'a ProbeDefaults, geoip: bool) -> Self {
        Builder {
            defaults,
            geoip,
            asn: false,
            lua_code: HashMap::new(),
            sets: Vec::new(),
            by_name: HashMap::new(),
        }
    }

    /// Remembers the code of every LUA-type record in `specs`, for `include()`.
    fn index_lua(&mut self, specs: &[RecordSpec]) {
        for spec in specs {
            if let (RecordType::Lua, RecordBody::Lua(code)) = (spec.rtype, &spec.body) {
                self.lua_code
                    .entry((origin_zone(spec).to_string(), spec.name.clone()))
                    .or_default()
                    .push(code.clone());
            }
        }
    }

    /// The code `include(label)` runs for `spec`. Transferred records: the LUA records at
    /// `label.<zone>`. Config records have no declared zone: the nearest `label.<name>` among
    /// the record's own name and its parents.
    fn included(&self, spec: &RecordSpec, label: &str) -> Option<Vec<String>> {
        let label = label.trim_end_matches('.').to_ascii_lowercase();
        let origin = origin_zone(spec).to_string();
        let get = |suffix: &str| {
            let name = if suffix == "." {
                format!("{label}.")
            } else {
                format!("{label}.{suffix}")
            };
            self.lua_code.get(&(origin.clone(), name)).cloned()
        };
        if !origin.is_empty() {
            return get(&origin);
        }
        let mut suffix = spec.name.as_str();
        loop {
            if let Some(code) = get(suffix) {
                return Some(code);
            }
            suffix = match suffix.split_once('.') {
                Some((_, "")) | None => return get("."),
                Some((_, rest)) => rest,
            };
        }
    }

    fn add_all(&mut self, specs: &[RecordSpec]) -> Vec<Rejected> {
        specs
            .iter()
            .filter_map(|spec| {
                self.add(spec).err().map(|reason| Rejected {
                    spec: spec.clone(),
                    reason,
                })
            })
            .collect()
    }

    fn add(&mut self, spec: &RecordSpec) -> Result<(), String> {
        // RFC 4592: only a leftmost `*` label makes a wildcard; elsewhere it would be a literal
        // label that nobody means.
        if spec.name.split('.').skip(1).any(|l| l == "*") {
            return Err(format!(
                "name {} has a '*' label that is not the leftmost one; only '*.<name>' is a wildcard",
                spec.name
            ));
        }
        // Type LUA holds code for include(): never answered here (PowerDNS answers NODATA).
        if spec.rtype == RecordType::Lua {
            return Ok(());
        }
        let rule = match &spec.body {
            RecordBody::Lua(body) => {
                let include = |label: &str| self.included(spec, label);
                lua::compile_with_includes(body, spec.rtype, self.defaults, &include)
                    .map_err(|e| e.to_string())?
            }
            RecordBody::Content(values) => Rule::Static(
                values
                    .iter()
                    .map(|v| lua::encode_content(spec.rtype, v))
                    .collect::<Result<_, _>>()?,
            ),
        };
        if !self.geoip && uses_pickclosest(&rule) {
            return Err(
                "pickclosest and closestMagic need a GeoIP database: set [geoip] database".into(),
            );
        }
        if !self.geoip && needs_geo(&rule) {
            return Err(
                "country/continent/region and their codes, latlon, latlonloc and latlonMagic need a GeoIP database: set [geoip] database"
                    .into(),
            );
        }
        if !self.asn && rule.any_cond(&|c| matches!(c, Cond::Asn(_))) {
            return Err("asnum needs an ASN database: set [geoip] asn_database".into());
        }
        let existing = self.by_name.get(&spec.name).map_or(&[][..], Vec::as_slice);
        let is_cname = spec.rtype == RecordType::Cname;
        if let Some(&other) = existing
            .iter()
            .find(|&&i| (self.sets[i].rtype == RecordType::Cname) != is_cname)
        {
            return Err(format!(
                "{} has both CNAME and {} records: a CNAME cannot share its name with other types",
                spec.name,
                if is_cname {
                    self.sets[other].rtype.name()
                } else {
                    spec.rtype.name()
                }
            ));
        }
        match existing.iter().find(|&&i| self.sets[i].rtype == spec.rtype) {
            Some(&i) => self.sets[i].parts.push((spec.ttl, rule)),
            None => {
                self.by_name
                    .entry(spec.name.clone())
                    .or_default()
                    .push(self.sets.len());
                self.sets.push(CompiledSet {
                    name: spec.name.clone(),
                    rtype: spec.rtype,
                    parts: vec![(spec.ttl, rule)],
                });
            }
        }
        Ok(())
    }

    fn finish(self) -> Compiled {
        let mut seen = std::collections::HashSet::new();
        let mut probes = Vec::new();
        for set in &self.sets {
            for (_, rule) in &set.parts {
                for p in rule.probes() {
                    if seen.insert(p) {
                        probes.push(p.clone());
                    }
                }
            }
        }
        Compiled {
            probes,
            sets: self.sets,
        }
    }
}

fn uses_pickclosest(rule: &Rule) -> bool {
    let mut found = false;
    rule.visit(&mut |r| {
        found |= match r {
            Rule::Closest(_) | Rule::ClosestMagic => true,
            Rule::IfUp(u) => {
                u.selector == Selector::PickClosest || u.backup == Selector::PickClosest
            }
            _ => false,
        }
    });
    found
}

/// Whether the rule reads the client's City record (codes or coordinates) besides pickclosest.
fn needs_geo(rule: &Rule) -> bool {
    let mut found = rule.any_cond(&|c| matches!(c, Cond::Geo(..)));
    rule.visit(&mut |r| {
        found |= matches!(r, Rule::LatLonMagic)
            || matches!(r, Rule::Text(pieces) if pieces.iter().any(|p| !matches!(p, Piece::Lit(_))));
    });
    found
}

/// The zone a spec came from; "" for the config file.
fn origin_zone(spec: &RecordSpec) -> &str {
    match &spec.origin {
        RecordOrigin::Zone { zone } => zone,
        RecordOrigin::Config { .. } => "",
    }
}

// ---------------------------------------------------------------------------------------------
// Link
// ---------------------------------------------------------------------------------------------

/// What an in-process answer was, for per-record metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerKind {
    Primary = 0,
    Backup = 1,
    Empty = 2,
    Error = 3,
}

impl AnswerKind {
    pub(crate) const ALL: [AnswerKind; 4] = [
        AnswerKind::Primary,
        AnswerKind::Backup,
        AnswerKind::Empty,
        AnswerKind::Error,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            AnswerKind::Primary => "primary",
            AnswerKind::Backup => "backup",
            AnswerKind::Empty => "empty",
            AnswerKind::Error => "error",
        }
    }
}

#[repr(align(64))]
#[derive(Default)]
struct StatShard([AtomicU64; 4]);

/// Answers of one record set by kind. Sharded by worker so two workers answering the same
/// record do not bounce one cache line; kept across table rebuilds (`adopt_stats`).
#[derive(Default)]
pub(crate) struct AnswerStats {
    shards: [StatShard; 8],
}

impl AnswerStats {
    #[inline]
    pub(crate) fn count(&self, worker: usize, kind: AnswerKind) {
        self.shards[worker & 7].0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn totals(&self) -> [u64; 4] {
        let mut t = [0u64; 4];
        for s in &self.shards {
            for (i, c) in s.0.iter().enumerate() {
                t[i] += c.load(Ordering::Relaxed);
            }
        }
        t
    }
}

/// All records at one name and type, and how to answer them.
pub struct RecordSet {
    /// Owner name, presentation form (lower case, absolute): metrics label and /status.
    pub name: String,
    pub(crate) stats: Arc<AnswerStats>,
    /// The smallest TTL of the records (an RRset has one TTL).
    pub ttl: u32,
    pub rtype: u16,
    /// Type name, for metric labels.
    pub(crate) type_name: &'static str,
    /// The owner is a wildcard (`*.…`): answers are synthesized for other names.
    pub wildcard: bool,
    /// Owner name, lower-case wire: the query name of a non-wildcard answer.
    owner_wire: Box<[u8]>,
    /// Apex of the record's zone, lower-case wire, when known (`createForward` needs it).
    zone_apex: Option<Box<[u8]>>,
    parts: Vec<Linked>,
    /// Only set when a part needs the client's location.
    geo: Option<Arc<dyn Locate>>,
}

/// A rule with its health flags and coordinates resolved.
enum Linked {
    /// Rules that need neither (never `Rule::Closest`, `Rule::IfUp` nor `Rule::Branch`).
    Plain(Rule),
    Closest(Vec<Place>),
    IfUp(LinkedIfUp),
    /// A statement block's decision: condition, then, else.
    Branch(Box<(Cond, Linked, Linked)>),
    /// `pickselfweighted`: candidates with the health (and weight) of their probes.
    SelfWeighted(Vec<LinkedCandidate>),
}

struct Place {
    rdata: Rdata,
    /// Position as a unit vector (see [`unit`]); None when GeoIP does not know the address.
    coords: Option<[f64; 3]>,
}

struct LinkedIfUp {
    candidates: Vec<LinkedCandidate>,
    group_starts: Vec<usize>,
    selector: Selector,
    backup: Selector,
    fail_on_incomplete: bool,
}

struct LinkedCandidate {
    place: Place,
    health: HealthRef,
}

struct NameEntry {
    sets: Vec<RecordSet>,
    zone: Option<usize>,
}

/// The table the packet path reads.
#[derive(Default)]
pub struct RecordTable {
    /// Lower-case wire-format owner name → its sets.
    names: HashMap<Box<[u8]>, NameEntry, foldhash::fast::RandomState>,
    zones: Vec<ZoneInfo>,
    /// Wildcard owners among `names`, and the transferred zones' names that decide them.
    wildcards: Wildcards,
}

fn coords(geo: Option<&dyn Locate>, ip: IpAddr) -> Option<[f64; 3]> {
    geo?.locate(ip).map(|l| unit(l.lat, l.lon))
}

fn addr_rdata(ip: IpAddr) -> Rdata {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec().into(),
        IpAddr::V6(a) => a.octets().to_vec().into(),
    }
}

impl RecordTable {
    /// Binds compiled rules to their probes' health flags (a probe missing from `health` starts
    /// as a fresh flag: Unknown, which counts as UP), looks up candidate coordinates once, and
    /// attaches each name's zone (the longest apex in `zones` that is a suffix of the name).
    /// `geo` is kept to locate clients per query: relink when it changes.
    pub fn link(
        compiled: &Compiled,
        health: &HashMap<ProbeSpec, HealthRef>,
        geo: Option<Arc<dyn Locate>>,
        zones: &Zones,
    ) -> RecordTable {
        let mut table = RecordTable::default();
        let mut zone_index: HashMap<&str, usize> = HashMap::new();
        for set in &compiled.sets {
            let mut wants_geo = false;
            let parts: Vec<Linked> = set
                .parts
                .iter()
                .map(|(_, rule)| {
                    wants_geo |= uses_pickclosest(rule)
                        || needs_geo(rule)
                        || rule.any_cond(&|c| matches!(c, Cond::Asn(_)));
                    link_rule(rule, health, geo.as_deref())
                })
                .collect();
            let record_set = RecordSet {
                name: set.name.clone(),
                stats: Arc::default(),
                ttl: set.parts.iter().map(|p| p.0).min().unwrap_or(0),
                rtype: set.rtype.code(),
                type_name: set.rtype.name(),
                wildcard: set.name.starts_with("*."),
                owner_wire: dns::name_from_text(&set.name).unwrap_or_default().into(),
                zone_apex: zone_of(&set.name, zones)
                    .and_then(|(apex, _)| dns::name_from_text(apex).ok())
                    .map(Into::into),
                parts,
                geo: if wants_geo { geo.clone() } else { None },
            };
            let Ok(key) = dns::name_from_text(&set.name) else {
                continue; // names were validated by config; cannot happen
            };
            let entry = table.names.entry(key.into()).or_insert_with(|| {
                let zone = zone_of(&set.name, zones).map(|(apex, info)| {
                    *zone_index.entry(apex).or_insert_with(|| {
                        table.zones.push(info.clone());
                        table.zones.len() - 1
                    })
                });
                NameEntry {
                    sets: Vec::new(),
                    zone,
                }
            });
            entry.sets.push(record_set);
        }
        table.wildcards = Wildcards::new(table.names.keys().map(|k| &**k), &[]);
        table
    }

    /// Lets wildcard owners answer inside these transferred zones (every name of each).
    pub fn with_zone_names(mut self, zones: &[Arc<ZoneNames>]) -> RecordTable {
        self.wildcards = Wildcards::new(self.names.keys().map(|k| &**k), zones);
        self
    }

    /// Every record set (for metrics and /status).
    pub(crate) fn sets(&self) -> impl Iterator<Item = &RecordSet> {
        self.names.values().flat_map(|e| e.sets.iter())
    }

    /// In-process answers per record set, by outcome.
    pub(crate) fn families(&self) -> Vec<MetricFamily> {
        let mut answers: Vec<_> = self
            .sets()
            .flat_map(|set| {
                let totals = set.stats.totals();
                AnswerKind::ALL.iter().map(move |k| {
                    (
                        vec![
                            ("name", set.name.clone()),
                            ("type", set.type_name.to_string()),
                            ("outcome", k.label().to_string()),
                        ],
                        totals[*k as usize] as f64,
                    )
                })
            })
            .collect();
        answers.sort_by(|a, b| a.0.cmp(&b.0));
        vec![family(
            "dnsteer_record_answers_total",
            "In-process answers per record (name and type from the config or a transferred zone), by outcome; kept across reloads.",
            MetricType::COUNTER,
            answers,
        )]
    }

    /// Takes over the answer counters of `previous` for sets with the same name and type, so
    /// a reload does not reset them.
    pub(crate) fn adopt_stats(&mut self, previous: &RecordTable) {
        for (key, entry) in self.names.iter_mut() {
            let Some(prev) = previous.names.get(key) else {
                continue;
            };
            for set in entry.sets.iter_mut() {
                if let Some(p) = prev.sets.iter().find(|p| p.rtype == set.rtype) {
                    set.stats = p.stats.clone();
                }
            }
        }
    }

    /// `qname` is lower-case, uncompressed wire format.
    pub fn lookup(&self, qname: &[u8], qtype: u16) -> Lookup<'_> {
        const CNAME: u16 = 5;
        const LUA: u16 = 65402;
        let Some(entry) = self.names.get(qname) else {
            return self.lookup_wildcard(qname, qtype);
        };
        let zone = entry.zone.map(|i| &self.zones[i]);
        let no_data = || zone.map_or(Lookup::Miss, Lookup::NoData);
        // A query for type LUA never runs or discloses the code (PowerDNS answers NODATA).
        if qtype == LUA {
            return no_data();
        }
        if let Some(set) = entry.sets.iter().find(|s| s.rtype == qtype) {
            return Lookup::Hit(set, zone);
        }
        // PowerDNS runs a LUA CNAME for every query type.
        if let Some(set) = entry.sets.iter().find(|s| s.rtype == CNAME) {
            return Lookup::Hit(set, zone);
        }
        // Another type, ANY included, at a name of ours: NODATA if we know the SOA, else
        // PowerDNS, which holds the whole zone, answers.
        no_data()
    }

    /// RFC 4592 synthesis from a wildcard owner. Types the wildcard has no set for, and type
    /// LUA, go to PowerDNS: it may hold other records at the wildcard.
    #[cold]
    fn lookup_wildcard(&self, qname: &[u8], qtype: u16) -> Lookup<'_> {
        const CNAME: u16 = 5;
        const LUA: u16 = 65402;
        if qtype == LUA {
            return Lookup::Miss;
        }
        let Some(entry) = self
            .wildcards
            .find(qname)
            .and_then(|owner| self.names.get(owner))
        else {
            return Lookup::Miss;
        };
        let zone = entry.zone.map(|i| &self.zones[i]);
        entry
            .sets
            .iter()
            .find(|s| s.rtype == qtype)
            .or_else(|| entry.sets.iter().find(|s| s.rtype == CNAME))
            .map_or(Lookup::Miss, |set| Lookup::Hit(set, zone))
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The longest apex in `zones` that is `name` or one of its parents.
fn zone_of<'z>(name: &str, zones: &'z Zones) -> Option<(&'z str, &'z ZoneInfo)> {
    let mut suffix = name;
    loop {
        if let Some((apex, info)) = zones.get_key_value(suffix) {
            return Some((apex.as_str(), info));
        }
        if suffix == "." {
            return None;
        }
        suffix = match suffix.split_once('.') {
            Some((_, "")) | None => ".",
            Some((_, rest)) => rest,
        };
    }
}

fn link_rule(
    rule: &Rule,
    health: &HashMap<ProbeSpec, HealthRef>,
    geo: Option<&dyn Locate>,
) -> Linked {
    match rule {
        Rule::Closest(addrs) => Linked::Closest(
            addrs
                .iter()
                .map(|&a| Place {
                    rdata: addr_rdata(a),
                    coords: coords(geo, a),
                })
                .collect(),
        ),
        Rule::IfUp(u) => {
            let locate = u.selector == Selector::PickClosest || u.backup == Selector::PickClosest;
            Linked::IfUp(LinkedIfUp {
                candidates: u
                    .candidates
                    .iter()
                    .map(|c| LinkedCandidate {
                        place: Place {
                            rdata: addr_rdata(c.addr),
                            coords: if locate { coords(geo, c.addr) } else { None },
                        },
                        health: health
                            .get(&c.probe)
                            .cloned()
                            .unwrap_or_else(|| Arc::new(Health::default())),
                    })
                    .collect(),
                group_starts: u.group_starts.clone(),
                selector: u.selector,
                backup: u.backup,
                fail_on_incomplete: u.fail_on_incomplete,
            })
        }
        Rule::Branch(b) => Linked::Branch(Box::new((
            b.cond.clone(),
            link_rule(&b.then, health, geo),
            link_rule(&b.other, health, geo),
        ))),
        Rule::SelfWeighted(cands) => Linked::SelfWeighted(
            cands
                .iter()
                .map(|c| LinkedCandidate {
                    place: Place {
                        rdata: addr_rdata(c.addr),
                        coords: None,
                    },
                    health: health
                        .get(&c.probe)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Health::default())),
                })
                .collect(),
        ),
        other => Linked::Plain(other.clone()),
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

// ---------------------------------------------------------------------------------------------
// Evaluate
// ---------------------------------------------------------------------------------------------

/// Per-query facts computed at most once, on first need.
struct Query<'a> {
    client: &'a Client,
    /// The query name (wire, as the client wrote it): differs from the owner for a wildcard.
    qname: &'a [u8],
    geo: Option<&'a dyn Locate>,
    hash: Option<u32>,
    location: Option<Option<Location>>,
    codes: Option<(GeoCodes, u8)>,
    asn: Option<Option<u32>>,
    /// Scope the conditions taken so far imply (the answer depends on what they read).
    cond_scope: u8,
}

impl Query<'_> {
    fn hash(&mut self) -> u32 {
        *self
            .hash
            .get_or_insert_with(|| hash::addr_hash(self.client.bestwho))
    }

    fn location(&mut self) -> Option<Location> {
        let (geo, who) = (self.geo, self.client.bestwho);
        *self.location.get_or_insert_with(|| geo?.locate(who))
    }

    fn codes(&mut self) -> GeoCodes {
        let (geo, who) = (self.geo, self.client.bestwho);
        self.codes
            .get_or_insert_with(|| geo.map_or((GeoCodes::default(), 0), |g| g.codes(who)))
            .0
    }

    /// Scope of an answer chosen from the client's geo codes: the smaller of the source
    /// prefix and the mmdb network that gave them.
    fn codes_scope(&mut self) -> u8 {
        let Some(source) = self.client.ecs_source_prefix else {
            return 0;
        };
        self.codes();
        match self.codes {
            Some((_, len)) if len > 0 => source.min(len),
            _ => source,
        }
    }

    fn code(&mut self, field: GeoField) -> geo::Code {
        let c = self.codes();
        match field {
            GeoField::Country => c.country,
            GeoField::Continent => c.continent,
            GeoField::Region => c.region,
        }
    }

    /// Evaluates a condition, raising `cond_scope` to what it read.
    fn holds(&mut self, cond: &Cond) -> bool {
        match cond {
            Cond::Const(b) => *b,
            Cond::Not(a) => !self.holds(a),
            Cond::And(a, b) => self.holds(a) && self.holds(b),
            Cond::Or(a, b) => self.holds(a) || self.holds(b),
            Cond::Geo(field, codes) => {
                let c = self.code(*field);
                self.cond_scope = self.cond_scope.max(self.codes_scope());
                codes.contains(&c)
            }
            Cond::Asn(list) => {
                let (geo, who) = (self.geo, self.client.bestwho);
                let asn = *self.asn.get_or_insert_with(|| geo?.asn(who));
                self.cond_scope = self.cond_scope.max(self.client_scope());
                asn.is_some_and(|a| list.contains(&a))
            }
            Cond::Netmask(nets) => {
                let who = self.client.bestwho;
                self.cond_scope = self.cond_scope.max(self.client_scope());
                nets.iter().any(|n| n.contains(&who))
            }
        }
    }

    /// Scope of an answer chosen from the client's address.
    fn client_scope(&self) -> u8 {
        self.client.ecs_source_prefix.unwrap_or(0)
    }

    /// Scope of an answer chosen from the client's location: it holds for the whole mmdb
    /// network that located the client, so the smaller of that and the source prefix.
    fn geo_scope(&mut self) -> u8 {
        let Some(source) = self.client.ecs_source_prefix else {
            return 0;
        };
        self.location().map_or(source, |l| source.min(l.prefix_len))
    }
}

/// What one part produced: records pushed, whether from the backup choice, and the scope.
struct PartResult {
    pushed: usize,
    backup: bool,
    scope: u8,
}

impl PartResult {
    fn primary(pushed: usize, scope: u8) -> Self {
        PartResult {
            pushed,
            backup: false,
            scope,
        }
    }
}

impl RecordSet {
    /// Pushes the answer RDATA to `sink`. On error nothing pushed may be used: SERVFAIL.
    pub fn evaluate(
        &self,
        client: &Client,
        sink: &mut dyn AnswerSink,
    ) -> Result<Evaluated, EvalError> {
        self.evaluate_for(client, &self.owner_wire, sink)
    }

    /// [`Self::evaluate`] for `qname` (wire, the case the client sent), the name a wildcard
    /// answers.
    pub fn evaluate_for(
        &self,
        client: &Client,
        qname: &[u8],
        sink: &mut dyn AnswerSink,
    ) -> Result<Evaluated, EvalError> {
        let mut q = Query {
            client,
            qname,
            geo: self.geo.as_deref(),
            hash: None,
            location: None,
            codes: None,
            asn: None,
            cond_scope: 0,
        };
        let (mut pushed, mut backup, mut scope) = (0, false, 0);
        for part in &self.parts {
            let r = self.part(part, &mut q, sink)?;
            pushed += r.pushed;
            backup |= r.backup && r.pushed > 0;
            scope = scope.max(r.scope);
        }
        scope = scope.max(q.cond_scope);
        let outcome = match (pushed, backup) {
            (0, _) => Outcome::Empty,
            (_, true) => Outcome::Backup,
            (_, false) => Outcome::Primary,
        };
        Ok(Evaluated { outcome, scope })
    }

    fn push(&self, sink: &mut dyn AnswerSink, rdata: &[u8]) {
        sink.push(self.rtype, rdata);
    }

    fn push_all(&self, sink: &mut dyn AnswerSink, values: &[Rdata]) -> usize {
        for v in values {
            self.push(sink, v);
        }
        values.len()
    }

    fn part(
        &self,
        part: &Linked,
        q: &mut Query<'_>,
        sink: &mut dyn AnswerSink,
    ) -> Result<PartResult, EvalError> {
        let rule = match part {
            Linked::Plain(rule) => rule,
            Linked::Closest(places) => {
                let client = q.location().map(|l| unit(l.lat, l.lon));
                let i = closest(client, places.iter().map(|p| p.coords).enumerate()).unwrap_or(0);
                self.push(sink, &places[i].rdata);
                return Ok(PartResult::primary(1, q.geo_scope()));
            }
            Linked::IfUp(u) => return self.if_up(u, q, sink),
            Linked::Branch(b) => {
                let (cond, then, other) = &**b;
                let chosen = if q.holds(cond) { then } else { other };
                return self.part(chosen, q, sink);
            }
            Linked::SelfWeighted(cands) => {
                let i = self_weighted(cands, q.hash()).ok_or(EvalError::AllDown)?;
                self.push(sink, &cands[i].place.rdata);
                return Ok(PartResult::primary(1, q.client_scope()));
            }
        };
        Ok(match rule {
            Rule::Static(values) | Rule::All(values) => {
                PartResult::primary(self.push_all(sink, values), 0)
            }
            Rule::Random(values) => {
                self.push(sink, &values[fastrand::usize(..values.len())]);
                PartResult::primary(1, 0)
            }
            Rule::RandomSample { n, values } => {
                PartResult::primary(self.sample(*n, values, sink), 0)
            }
            Rule::Hashed(values) => {
                let i = q.hash() as usize % values.len();
                self.push(sink, &values[i]);
                PartResult::primary(1, q.client_scope())
            }
            Rule::WeightedHashed(w) => {
                let r = u64::from(q.hash()) % w.total();
                self.push(sink, weighted_pick(&w.entries, r));
                PartResult::primary(1, q.client_scope())
            }
            Rule::WeightedRandom(w) => {
                let r = fastrand::u64(..w.total());
                self.push(sink, weighted_pick(&w.entries, r));
                PartResult::primary(1, 0)
            }
            Rule::ConsistentHashed(ring) => {
                let h = q.hash();
                let i = ring.points.partition_point(|p| p.0 < h);
                // Past the last point: wrap to the smallest.
                let owner = ring
                    .points
                    .get(i)
                    .or(ring.points.first())
                    .map_or(0, |p| p.1);
                self.push(sink, &ring.values[owner as usize]);
                PartResult::primary(1, q.client_scope())
            }
            Rule::View(rules) => {
                let who = q.client.bestwho;
                match rules
                    .iter()
                    .find(|r| r.nets.iter().any(|n| n.contains(&who)))
                {
                    Some(rule) => {
                        let i = match rule.values.len() {
                            1 => 0,
                            n => fastrand::usize(..n),
                        };
                        self.push(sink, &rule.values[i]);
                    }
                    // No rule matched: PowerDNS returns '', an empty TXT string and an
                    // invalid value for every other type.
                    None if self.rtype == RecordType::Txt.code() => self.push(sink, &[0]),
                    None => {
                        return Err(EvalError::BadResult(
                            RecordType::from_code(self.rtype).map_or("record", RecordType::name),
                        ));
                    }
                }
                PartResult::primary(1, q.client_scope())
            }
            Rule::Text(pieces) => {
                let mut text = [0u8; TEXT_MAX];
                let mut rdata = [0u8; TEXT_MAX + TEXT_MAX / 255 + 1];
                let bad = || {
                    EvalError::BadResult(
                        RecordType::from_code(self.rtype).map_or("record", RecordType::name),
                    )
                };
                let len = build_text(pieces, q, &mut text).ok_or_else(bad)?;
                let rtype = RecordType::from_code(self.rtype).ok_or_else(bad)?;
                let n = lua::encode_text_into(rtype, &text[..len], &mut rdata).ok_or_else(bad)?;
                self.push(sink, &rdata[..n]);
                PartResult::primary(1, q.codes_scope())
            }
            Rule::Fail => {
                return Err(EvalError::BadResult(
                    RecordType::from_code(self.rtype).map_or("record", RecordType::name),
                ));
            }
            Rule::NameHashed(w) => {
                let r = u64::from(crate::steer::generate::name_hash(q.qname)) % w.total();
                self.push(sink, weighted_pick(&w.entries, r));
                PartResult::primary(1, 0)
            }
            Rule::Generate(g) => {
                let zone = match &self.zone_apex {
                    Some(z) => z,
                    None if g.needs_zone() => return Err(EvalError::ZoneUnknown),
                    None => &[][..],
                };
                let rtype = RecordType::from_code(self.rtype).unwrap_or(RecordType::A);
                let mut buf = [0u8; 256];
                let n = g
                    .rdata(rtype, q.qname, zone, &mut buf)
                    .map_err(|_| EvalError::BadResult(rtype.name()))?;
                self.push(sink, &buf[..n]);
                PartResult::primary(1, 0)
            }
            Rule::ClosestMagic => {
                let rtype = RecordType::from_code(self.rtype).unwrap_or(RecordType::A);
                let bad = || EvalError::BadResult(rtype.name());
                let client = q.location().map(|l| unit(l.lat, l.lon));
                let geo = q.geo;
                let candidates = generate::magic_addresses(q.qname).map(|a| coords(geo, a));
                // No address in the name: PowerDNS's pickclosest raises on the empty list.
                let i = closest(client, candidates.enumerate()).ok_or_else(bad)?;
                let ip = generate::magic_addresses(q.qname).nth(i).ok_or_else(bad)?;
                let mut buf = [0u8; 256];
                let n = generate::address_rdata(rtype, ip, &mut buf).map_err(|_| bad())?;
                self.push(sink, &buf[..n]);
                PartResult::primary(1, q.geo_scope())
            }
            Rule::LatLonMagic => {
                let rtype = RecordType::from_code(self.rtype).unwrap_or(RecordType::Txt);
                let mut text = [0u8; 96];
                let n = match generate::latlon_magic_address(q.qname) {
                    None => {
                        text[..7].copy_from_slice(b"unknown");
                        7
                    }
                    // PowerDNS reads an unknown location as 0, 0.
                    Some(addr) => {
                        let (lat, lon) = addr.and_then(|a| q.geo?.locate(a)).map_or((0, 0), |l| {
                            ((l.lat * 1e6).round() as i64, (l.lon * 1e6).round() as i64)
                        });
                        lua::latlon_text(lat, lon, &mut text)
                    }
                };
                let mut rdata = [0u8; 256];
                let n = lua::encode_text_into(rtype, &text[..n], &mut rdata)
                    .ok_or(EvalError::BadResult(rtype.name()))?;
                self.push(sink, &rdata[..n]);
                // Depends on the name only, not on the client.
                PartResult::primary(1, 0)
            }
            // Linked separately above.
            Rule::Closest(_) | Rule::IfUp(_) | Rule::Branch(_) | Rule::SelfWeighted(_) => {
                PartResult::primary(0, 0)
            }
        })
    }

    /// `pickrandomsample`: `min(n, len)` distinct values in random order; `n < 0` all of them.
    fn sample(&self, n: i64, values: &[Rdata], sink: &mut dyn AnswerSink) -> usize {
        const STACK: usize = 256;
        let len = values.len();
        let count = usize::try_from(n).map_or(len, |n| n.min(len));
        if len <= STACK {
            // Partial Fisher–Yates over indexes on the stack.
            let mut idx = [0u8; STACK];
            for (i, slot) in idx.iter_mut().enumerate().take(len) {
                *slot = i as u8;
            }
            for i in 0..count {
                let j = fastrand::usize(i..len);
                idx.swap(i, j);
                self.push(sink, &values[usize::from(idx[i])]);
            }
        } else {
            // Huge lists: a random rotation keeps the values distinct without a buffer (the
            // order is then not uniformly shuffled).
            let start = fastrand::usize(..len);
            for k in 0..count {
                self.push(sink, &values[(start + k) % len]);
            }
        }
        count
    }

    /// `ifurlup`/`ifportup`/`ifurlextup` (lua-records.md §3.2, with `pickfirst` and `empty`).
    fn if_up(
        &self,
        u: &LinkedIfUp,
        q: &mut Query<'_>,
        sink: &mut dyn AnswerSink,
    ) -> Result<PartResult, EvalError> {
        let up = UpSet::read(&u.candidates);
        if u.fail_on_incomplete && up.all_unknown {
            return Err(EvalError::IncompleteCheck);
        }
        let n = u.candidates.len();
        for (g, &start) in u.group_starts.iter().enumerate() {
            let end = u.group_starts.get(g + 1).copied().unwrap_or(n);
            if (start..end).any(|i| up.is_up(&u.candidates, i)) {
                let member = |i: usize| up.is_up(&u.candidates, i);
                let (pushed, scope) = self.select(u, u.selector, start..end, &member, q, sink);
                return Ok(PartResult::primary(pushed, scope));
            }
        }
        // Nothing up: the backup selector over every candidate of every group.
        let (pushed, scope) = self.select(u, u.backup, 0..n, &|_| true, q, sink);
        Ok(PartResult {
            pushed,
            backup: true,
            scope,
        })
    }

    /// Applies a selector to the candidates in `range` for which `member` holds (written
    /// order). Returns (records pushed, scope).
    fn select(
        &self,
        u: &LinkedIfUp,
        selector: Selector,
        range: Range<usize>,
        member: &dyn Fn(usize) -> bool,
        q: &mut Query<'_>,
        sink: &mut dyn AnswerSink,
    ) -> (usize, u8) {
        let members = || range.clone().filter(|&i| member(i));
        let rdata = |i: usize| &u.candidates[i].place.rdata;
        // The k-th member; health beyond the snapshot may flip between passes, hence the
        // fallback to the last member seen.
        let nth = |k: usize| members().nth(k).or_else(|| members().last());
        let chosen = match selector {
            Selector::Empty => return (0, 0),
            Selector::All => {
                let mut pushed = 0;
                for i in members() {
                    self.push(sink, rdata(i));
                    pushed += 1;
                }
                return (pushed, 0);
            }
            Selector::PickFirst => (members().next(), 0),
            Selector::Random => match members().count() {
                0 => (None, 0),
                count => (nth(fastrand::usize(..count)), 0),
            },
            Selector::Hashed => match members().count() {
                0 => (None, 0),
                count => (nth(q.hash() as usize % count), q.client_scope()),
            },
            Selector::PickClosest => {
                let client = q.location().map(|l| unit(l.lat, l.lon));
                let i = closest(client, members().map(|i| (i, u.candidates[i].place.coords)));
                (i, q.geo_scope())
            }
        };
        match chosen {
            (Some(i), scope) => {
                self.push(sink, rdata(i));
                (1, scope)
            }
            (None, _) => (0, 0),
        }
    }
}

/// Longest string a `..` value may build per query (longer: SERVFAIL).
const TEXT_MAX: usize = 1024;

/// Joins `pieces` for this client into `out`; None when longer than `out`.
fn build_text(pieces: &[Piece], q: &mut Query<'_>, out: &mut [u8]) -> Option<usize> {
    let mut len = 0;
    let mut put = |bytes: &[u8], len: &mut usize| -> Option<()> {
        out.get_mut(*len..*len + bytes.len())?
            .copy_from_slice(bytes);
        *len += bytes.len();
        Some(())
    };
    for p in pieces {
        match p {
            Piece::Lit(t) => put(t, &mut len)?,
            Piece::Code(field) => {
                let c = q.code(*field);
                let text = geo::code_text(&c);
                put(if text.is_empty() { b"--" } else { text }, &mut len)?;
            }
            Piece::LatLon | Piece::LatLonLoc => {
                // PowerDNS reads an unknown location as 0, 0.
                let (lat, lon) = q.location().map_or((0, 0), |l| {
                    ((l.lat * 1e6).round() as i64, (l.lon * 1e6).round() as i64)
                });
                let mut buf = [0u8; 96];
                let n = if matches!(p, Piece::LatLon) {
                    lua::latlon_text(lat, lon, &mut buf)
                } else {
                    lua::latlonloc_text(lat, lon, &mut buf)
                };
                put(&buf[..n], &mut len)?;
            }
        }
    }
    Some(len)
}

/// Candidates beyond this many have their health read live instead of from the snapshot.
const SNAPSHOT: usize = 512;

/// Health of one evaluation, read once so every pass over the candidates agrees.
struct UpSet {
    bits: [u64; SNAPSHOT / 64],
    all_unknown: bool,
}

impl UpSet {
    fn read(cands: &[LinkedCandidate]) -> Self {
        let mut s = UpSet {
            bits: [0; SNAPSHOT / 64],
            all_unknown: true,
        };
        for (i, c) in cands.iter().enumerate() {
            let state = c.health.state();
            s.all_unknown &= state == HealthState::Unknown;
            if i < SNAPSHOT && state != HealthState::Down {
                s.bits[i / 64] |= 1 << (i % 64);
            }
        }
        s
    }

    fn is_up(&self, cands: &[LinkedCandidate], i: usize) -> bool {
        if i < SNAPSHOT {
            self.bits[i / 64] & (1 << (i % 64)) != 0
        } else {
            cands[i].health.is_up()
        }
    }
}

/// `pickselfweighted` (PowerDNS 5.0): each candidate weighs its probe's body weight while UP
/// (a non-positive or missing weight counts as 1; not probed yet counts as UP, as everywhere in
/// dnsteer), 0 while DOWN; `hash(bestwho) % sum` walks the written order. `None` when every
/// candidate is DOWN: PowerDNS then raises (its random fallback has a zero sum), SERVFAIL.
fn self_weighted(cands: &[LinkedCandidate], hash: u32) -> Option<usize> {
    let weight = |c: &LinkedCandidate| match c.health.state() {
        HealthState::Down => 0u64,
        _ => u64::from(c.health.weight().max(1)),
    };
    let sum: u64 = cands.iter().map(weight).sum();
    if sum == 0 {
        return None;
    }
    let r = u64::from(hash) % sum;
    let mut running = 0;
    // Health read again while walking may have changed since the sum (accepted race): then
    // the last candidate answers.
    cands
        .iter()
        .position(|c| {
            running += weight(c);
            running > r
        })
        .or(Some(cands.len() - 1))
}

/// The first entry whose running weight sum exceeds `r` (PowerDNS's `upper_bound`).
fn weighted_pick(entries: &[(u64, Rdata)], r: u64) -> &[u8] {
    let i = entries.partition_point(|e| e.0 <= r);
    entries.get(i).or(entries.last()).map_or(&[], |e| &e.1)
}

/// Index of the candidate nearest to `client` by great-circle distance. Ties go to the first
/// written; candidates without coordinates rank last; an unlocated client gets the first.
/// Points are unit vectors: the great-circle distance falls as their dot product rises, so no
/// trigonometry runs per candidate.
fn closest(
    client: Option<[f64; 3]>,
    candidates: impl Iterator<Item = (usize, Option<[f64; 3]>)>,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, place) in candidates {
        let nearness = match (client, place) {
            (Some(c), Some(p)) => c[0] * p[0] + c[1] * p[1] + c[2] * p[2],
            _ => f64::NEG_INFINITY,
        };
        if best.is_none_or(|(_, b)| nearness > b) {
            best = Some((i, nearness));
        }
    }
    best.map(|b| b.0)
}

/// A (latitude, longitude) in degrees as a point on the unit sphere.
fn unit(lat: f64, lon: f64) -> [f64; 3] {
    let (lat, lon) = (lat.to_radians(), lon.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[derive(Default)]
    struct VecSink(Vec<(u16, Vec<u8>)>);

    impl AnswerSink for VecSink {
        fn push(&mut self, rtype: u16, rdata: &[u8]) {
            self.0.push((rtype, rdata.to_vec()));
        }
    }

    fn config(records: &str) -> Config {
        Config::parse(records, Path::new("/etc/dnsteer/dnsteer.toml")).unwrap()
    }

    fn rec(name: &str, rtype: &str, lua: &str) -> String {
        format!("[[records]]\nname = \"{name}\"\ntype = \"{rtype}\"\nlua = \"{lua}\"\n")
    }

    fn table_with(
        records: &str,
        health: &HashMap<ProbeSpec, HealthRef>,
        geo: Option<Arc<dyn Locate>>,
    ) -> RecordTable {
        let compiled = compile(&config(records)).unwrap();
        RecordTable::link(&compiled, health, geo, &Zones::new())
    }

    fn table(records: &str) -> RecordTable {
        table_with(records, &HashMap::new(), None)
    }

    fn wire(name: &str) -> Vec<u8> {
        dns::name_from_text_keep_case(name).unwrap()
    }

    fn client(who: &str, prefix: Option<u8>) -> Client {
        Client {
            bestwho: who.parse().unwrap(),
            ecs_source_prefix: prefix,
        }
    }

    fn set<'t>(t: &'t RecordTable, name: &str, qtype: u16) -> &'t RecordSet {
        match t.lookup(&wire(name), qtype) {
            Lookup::Hit(s, _) => s,
            _ => panic!("{name} not found"),
        }
    }

    /// Answers as text (addresses, or TXT/CNAME bytes lossily) plus the evaluation.
    fn answer(s: &RecordSet, c: &Client) -> (Vec<String>, Evaluated) {
        let mut sink = VecSink::default();
        let e = s.evaluate(c, &mut sink).unwrap();
        let texts = sink
            .0
            .iter()
            .map(|(t, r)| match (*t, r.len()) {
                (1, 4) => IpAddr::from(<[u8; 4]>::try_from(&r[..]).unwrap()).to_string(),
                (28, 16) => IpAddr::from(<[u8; 16]>::try_from(&r[..]).unwrap()).to_string(),
                _ => String::from_utf8_lossy(r).into_owned(),
            })
            .collect();
        (texts, e)
    }

    fn one(s: &RecordSet, who: &str, prefix: Option<u8>) -> (String, u8) {
        let (a, e) = answer(s, &client(who, prefix));
        assert_eq!(a.len(), 1, "{a:?}");
        (a[0].clone(), e.scope)
    }

    fn test_geo() -> Arc<dyn Locate> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip");
        Arc::new(
            GeoDb::open(&dir.join("test-city.mmdb"))
                .unwrap()
                .with_asn(&dir.join("test-asn.mmdb"))
                .unwrap(),
        )
    }

    const GEO_CONFIG: &str = "[geoip]\ndatabase = \"city.mmdb\"\nasn_database = \"asn.mmdb\"\n";

    #[test]
    fn blocks_evaluate_per_client_with_the_scope_of_what_they_read() {
        let records = [
            GEO_CONFIG,
            &rec(
                "b.test",
                "A",
                ";if netmask({'192.0.2.0/24'}) then return '192.0.2.1' elseif country('NL') then return '192.0.2.2' elseif asnum(64503) then return '192.0.2.3' end return '192.0.2.4'",
            ),
            &rec("c.test", "CNAME", "continentCode()..'.pool.test.'"),
            &rec("g.test", "A", "continent('eu') and '192.0.2.5' or '192.0.2.6'"),
            &rec("none.test", "A", ";if country('nl') then return '192.0.2.9' end"),
        ]
        .concat();
        let t = table_with(&records, &HashMap::new(), Some(test_geo()));
        let s = set(&t, "b.test.", 1);
        assert_eq!(one(s, "192.0.2.0", Some(24)), ("192.0.2.1".into(), 24));
        // The netmask read first makes the scope the source prefix.
        assert_eq!(one(s, "193.0.6.7", Some(32)), ("192.0.2.2".into(), 32));
        assert_eq!(one(s, "2001:db8:1::", Some(56)), ("192.0.2.2".into(), 56));
        assert_eq!(one(s, "210.140.92.0", Some(24)), ("192.0.2.3".into(), 24));
        assert_eq!(one(s, "203.0.113.0", Some(24)), ("192.0.2.4".into(), 24));
        assert_eq!(one(s, "8.8.8.8", None), ("192.0.2.4".into(), 0));
        // Geo codes alone: the mmdb network bounds the scope.
        let g = set(&t, "g.test.", 1);
        assert_eq!(one(g, "193.0.6.7", Some(32)), ("192.0.2.5".into(), 24));
        assert_eq!(one(g, "2001:db8:2::", Some(56)), ("192.0.2.5".into(), 48));
        assert_eq!(one(g, "10.0.0.0", Some(16)), ("192.0.2.6".into(), 16));
        let c = set(&t, "c.test.", 1);
        assert_eq!(
            answer(c, &client("139.130.4.0", Some(24))).0,
            ["\x02oc\x04pool\x04test\x00"]
        );
        assert_eq!(
            answer(c, &client("10.0.0.0", Some(8))).0,
            ["\x02--\x04pool\x04test\x00"]
        );
        // Falling off the end of the block: SERVFAIL.
        let n = set(&t, "none.test.", 1);
        assert_eq!(one(n, "193.0.6.1", None).0, "192.0.2.9");
        let mut sink = VecSink::default();
        assert!(matches!(
            n.evaluate(&client("8.8.8.8", None), &mut sink),
            Err(EvalError::BadResult("A"))
        ));
    }

    #[test]
    fn include_finds_type_lua_records() {
        // Config records: the nearest `label.<name or parent>`.
        let records = [
            &rec("config.example.test", "LUA", "pool = {'192.0.2.1'}")[..],
            &rec("config.sub.example.test", "LUA", "pool = {'192.0.2.2'}"),
            &rec("www.example.test", "A", ";include('config') return pool"),
            &rec(
                "www.sub.example.test",
                "A",
                ";include('config') return pool",
            ),
            &rec("sub.example.test", "A", ";include('config') return pool"),
        ]
        .concat();
        let t = table(&records);
        let a = |name: &str| one(set(&t, name, 1), "192.0.2.9", None).0;
        assert_eq!(a("www.example.test."), "192.0.2.1");
        assert_eq!(a("www.sub.example.test."), "192.0.2.2");
        assert_eq!(a("sub.example.test."), "192.0.2.2");
        // Type LUA is never answered here (PowerDNS answers NODATA).
        assert!(matches!(
            t.lookup(&wire("config.example.test."), 65402),
            Lookup::Miss
        ));
        assert!(matches!(
            t.lookup(&wire("config.example.test."), 1),
            Lookup::Miss
        ));

        // Transferred records: exactly `label.<zone>`, in the same zone.
        let spec = |zone: &str, name: &str, rtype, body: &str| RecordSpec {
            name: name.into(),
            rtype,
            ttl: 60,
            body: RecordBody::Lua(body.into()),
            origin: crate::config::RecordOrigin::Zone { zone: zone.into() },
        };
        let specs = [
            spec("a.test.", "cfg.a.test.", RecordType::Lua, "x = '192.0.2.7'"),
            spec(
                "a.test.",
                "www.a.test.",
                RecordType::A,
                ";include('cfg') return x",
            ),
            spec(
                "b.test.",
                "www.b.test.",
                RecordType::A,
                ";include('cfg') return x",
            ),
            spec(
                "a.test.",
                "deep.www.a.test.",
                RecordType::A,
                ";include('www') return x",
            ),
        ];
        let cfg = config("");
        let (compiled, rejected) = compile_specs(&specs, &cfg.probes, false);
        assert_eq!(compiled.len(), 1);
        let reasons: Vec<_> = rejected
            .iter()
            .map(|r| (r.spec.name.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].1.contains("include('cfg'): no LUA record"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].1.contains("include('www'): no LUA record"),
            "{reasons:?}"
        );
    }

    #[test]
    fn geo_conditions_need_the_databases() {
        let e = compile(&config(&rec(
            "g.test",
            "A",
            "country('nl') and '192.0.2.1' or '192.0.2.2'",
        )))
        .unwrap_err()
        .to_string();
        assert!(e.contains("[geoip] database"), "{e}");
        let e = compile(&config(
            &[
                "[geoip]\ndatabase = \"city.mmdb\"\n",
                &rec(
                    "g.test",
                    "A",
                    ";if asnum(1) then return '192.0.2.1' end return '192.0.2.2'",
                ),
            ]
            .concat(),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("asn_database"), "{e}");
        // netmask() needs none.
        assert!(
            compile(&config(&rec(
                "n.test",
                "A",
                "netmask({'10.0.0.0/8'}) and '192.0.2.1' or '192.0.2.2'"
            )))
            .is_ok()
        );
    }

    #[test]
    fn pickhashed_matches_powerdns_live_answers() {
        let t = table(&rec(
            "hashed.lua.test",
            "A",
            "pickhashed({'192.0.2.1','192.0.2.2','192.0.2.3'})",
        ));
        let s = set(&t, "hashed.lua.test.", 1);
        // shared/pdns-lua/observed/recipe-4.7.3.txt
        assert_eq!(one(s, "203.0.113.0", Some(24)), ("192.0.2.3".into(), 24));
        assert_eq!(one(s, "203.0.113.77", Some(32)), ("192.0.2.1".into(), 32));
        assert_eq!(one(s, "0.0.0.0", Some(0)), ("192.0.2.2".into(), 0));
        assert_eq!(one(s, "2001:db8::", Some(56)), ("192.0.2.3".into(), 56));
        // Without ECS: the packet source, scope 0 (no ECS to echo).
        assert_eq!(one(s, "127.0.0.1", None), ("192.0.2.1".into(), 0));
    }

    #[test]
    fn pickwhashed_matches_powerdns_live_answers() {
        let w14: Vec<String> = (1..=14).map(|i| format!("{{1,'192.0.2.{i}'}}")).collect();
        let t = table(
            &[
                rec(
                    "whashed2.lua.test",
                    "A",
                    "pickwhashed({{1,'192.0.2.1'},{1,'192.0.2.2'}})",
                ),
                rec(
                    "whashed3.lua.test",
                    "A",
                    "pickwhashed({{10,'192.0.2.1'},{20,'192.0.2.2'},{30,'192.0.2.3'}})",
                ),
                rec(
                    "whashed5.lua.test",
                    "A",
                    "pickwhashed({{5,'192.0.2.1'},{1,'192.0.2.2'},{7,'192.0.2.3'},{2,'192.0.2.4'},{3,'192.0.2.5'}})",
                ),
                rec(
                    "whashed14.lua.test",
                    "A",
                    &format!("pickwhashed({{{}}})", w14.join(",")),
                ),
            ]
            .concat(),
        );
        let q = |name: &str, who: &str| one(set(&t, name, 1), who, Some(24)).0;
        assert_eq!(q("whashed2.lua.test.", "198.51.100.0"), "192.0.2.2");
        // The worked example of §5: r = 58 → .1, r = 11 → .3.
        assert_eq!(q("whashed3.lua.test.", "198.51.100.0"), "192.0.2.1");
        assert_eq!(q("whashed3.lua.test.", "192.0.2.0"), "192.0.2.3");
        assert_eq!(q("whashed5.lua.test.", "10.20.30.0"), "192.0.2.5");
        assert_eq!(q("whashed14.lua.test.", "10.20.30.0"), "192.0.2.5");
        assert_eq!(
            one(set(&t, "whashed3.lua.test.", 1), "192.0.2.0", Some(24)).1,
            24
        );
    }

    #[test]
    fn pickchashed_owns_the_next_ring_point() {
        // Expected answers from an independent model over shared/pdns-lua/pdnshash.py.
        let t = table(
            &[
                rec(
                    "c2.test",
                    "A",
                    "pickchashed({{1,'192.0.2.1'},{1,'192.0.2.2'}})",
                ),
                rec(
                    "c3.test",
                    "A",
                    "pickchashed({{5,'192.0.2.1'},{3,'192.0.2.2'},{1,'192.0.2.3'}})",
                ),
            ]
            .concat(),
        );
        for (who, two, three) in [
            ("0.0.0.0", "192.0.2.1", "192.0.2.2"),
            ("127.0.0.1", "192.0.2.1", "192.0.2.1"),
            ("10.20.30.0", "192.0.2.2", "192.0.2.2"),
            ("192.0.2.0", "192.0.2.2", "192.0.2.2"),
            ("2001:db8::", "192.0.2.1", "192.0.2.2"),
            ("::1", "192.0.2.1", "192.0.2.1"),
        ] {
            assert_eq!(one(set(&t, "c2.test.", 1), who, Some(20)), (two.into(), 20));
            assert_eq!(one(set(&t, "c3.test.", 1), who, None).0, three, "{who}");
        }
    }

    #[test]
    fn static_all_and_union_of_specs() {
        let t = table(
            &[
                "[[records]]\nname = \"static.test\"\ntype = \"A\"\ncontent = [\"192.0.2.10\", \"192.0.2.11\"]\n".to_string(),
                rec("static.test", "A", "all({'192.0.2.1','192.0.2.2'})"),
                rec("static.test", "AAAA", "'2001:db8::71'"),
                rec("txt.test", "TXT", "'hello world'"),
                rec("empty.test", "A", "{}"),
            ]
            .concat(),
        );
        let (a, e) = answer(
            set(&t, "static.test.", 1),
            &client("198.51.100.1", Some(24)),
        );
        assert_eq!(a, ["192.0.2.10", "192.0.2.11", "192.0.2.1", "192.0.2.2"]);
        assert_eq!(
            e,
            Evaluated {
                outcome: Outcome::Primary,
                scope: 0
            }
        );
        assert_eq!(
            one(set(&t, "static.test.", 28), "192.0.2.1", None).0,
            "2001:db8::71"
        );
        assert_eq!(
            one(set(&t, "txt.test.", 16), "192.0.2.1", None).0,
            "\u{b}hello world"
        );
        let (a, e) = answer(set(&t, "empty.test.", 1), &client("192.0.2.1", Some(24)));
        assert!(a.is_empty());
        assert_eq!(e.outcome, Outcome::Empty);
    }

    #[test]
    fn random_functions_cover_their_values_with_scope_zero() {
        let t = table(
            &[
                rec(
                    "r.test",
                    "A",
                    "pickrandom({'192.0.2.1','192.0.2.2','192.0.2.3'})",
                ),
                rec(
                    "w.test",
                    "A",
                    "pickwrandom({{1,'192.0.2.1'},{9,'192.0.2.2'},{0,'192.0.2.3'}})",
                ),
            ]
            .concat(),
        );
        let mut seen = std::collections::HashMap::new();
        for _ in 0..300 {
            let (a, s) = one(set(&t, "r.test.", 1), "198.51.100.0", Some(24));
            assert_eq!(s, 0);
            *seen.entry(a).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        let mut w = std::collections::HashMap::new();
        for _ in 0..500 {
            *w.entry(one(set(&t, "w.test.", 1), "198.51.100.0", None).0)
                .or_insert(0) += 1;
        }
        assert!(!w.contains_key("192.0.2.3"), "weight 0 is never picked");
        assert!(w["192.0.2.2"] > w["192.0.2.1"] * 3, "{w:?}");
    }

    #[test]
    fn pickrandomsample_counts() {
        let t = table(
            &[
                rec(
                    "s0.test",
                    "A",
                    "pickrandomsample(0, {'192.0.2.1','192.0.2.2'})",
                ),
                rec(
                    "s2.test",
                    "A",
                    "pickrandomsample(2, {'192.0.2.1','192.0.2.2','192.0.2.3'})",
                ),
                rec(
                    "s9.test",
                    "A",
                    "pickrandomsample(9, {'192.0.2.1','192.0.2.2'})",
                ),
                rec(
                    "sn.test",
                    "A",
                    "pickrandomsample(-1, {'192.0.2.1','192.0.2.2','192.0.2.3'})",
                ),
            ]
            .concat(),
        );
        let c = client("192.0.2.1", None);
        let (a, e) = answer(set(&t, "s0.test.", 1), &c);
        assert!(a.is_empty());
        assert_eq!(e.outcome, Outcome::Empty);
        let distinct = |mut v: Vec<String>| {
            v.sort();
            v.dedup();
            v.len()
        };
        for _ in 0..50 {
            let (a, _) = answer(set(&t, "s2.test.", 1), &c);
            assert_eq!((a.len(), distinct(a)), (2, 2));
        }
        assert_eq!(distinct(answer(set(&t, "s9.test.", 1), &c).0), 2);
        let mut orders = std::collections::HashSet::new();
        for _ in 0..100 {
            let (a, _) = answer(set(&t, "sn.test.", 1), &c);
            assert_eq!(distinct(a.clone()), 3);
            orders.insert(a);
        }
        assert!(orders.len() > 1, "negative n shuffles");
    }

    #[test]
    fn huge_sample_falls_back_without_a_buffer() {
        let values: Vec<String> = (0..300)
            .map(|i| format!("'10.0.{}.{}'", i / 256, i % 256))
            .collect();
        let t = table(&rec(
            "big.test",
            "A",
            &format!("pickrandomsample(-1, {{{}}})", values.join(",")),
        ));
        let (mut a, _) = answer(set(&t, "big.test.", 1), &client("192.0.2.1", None));
        a.sort();
        a.dedup();
        assert_eq!(a.len(), 300);
    }

    #[test]
    fn view_matches_in_order() {
        let t = table(
            &[
                rec(
                    "view.test",
                    "A",
                    "view({{{'10.0.0.0/8'},{'192.0.2.10'}},{{'0.0.0.0/0'},{'192.0.2.99'}}})",
                ),
                rec(
                    "viewmiss.test",
                    "A",
                    "view({{{'10.0.0.0/8'},{'192.0.2.10'}}})",
                ),
                rec("viewtxt.test", "TXT", "view({{{'10.0.0.0/8'},{'ten'}}})"),
            ]
            .concat(),
        );
        assert_eq!(
            one(set(&t, "view.test.", 1), "10.1.2.0", Some(24)),
            ("192.0.2.10".into(), 24)
        );
        assert_eq!(
            one(set(&t, "view.test.", 1), "203.0.113.0", Some(24)).0,
            "192.0.2.99"
        );
        // An IPv6 client matches no IPv4 rule.
        let miss = set(&t, "viewmiss.test.", 1);
        let err = miss
            .evaluate(&client("2001:db8::", Some(48)), &mut VecSink::default())
            .unwrap_err();
        assert_eq!(err.kind(), "bad_result");
        assert_eq!(one(set(&t, "viewtxt.test.", 16), "192.0.2.1", None).0, "\0");
        assert_eq!(
            one(set(&t, "viewtxt.test.", 16), "10.0.0.1", None).0,
            "\u{3}ten"
        );
    }

    /// Health map with the given state per candidate address for every probe of `records`.
    fn health_for(records: &str, states: &[(&str, HealthState)]) -> HashMap<ProbeSpec, HealthRef> {
        let compiled = compile(&config(records)).unwrap();
        compiled
            .probe_specs()
            .into_iter()
            .map(|p| {
                let h = Arc::new(Health::default());
                if let Some((_, s)) = states
                    .iter()
                    .find(|(a, _)| a.parse::<IpAddr>().unwrap() == p.addr)
                {
                    h.set(*s);
                }
                (p, h)
            })
            .collect()
    }

    fn if_up_table(body: &str, states: &[(&str, HealthState)]) -> RecordTable {
        let records = rec("hc.test", "A", body);
        let health = health_for(&records, states);
        table_with(&records, &health, None)
    }

    use HealthState::{Down, Up};

    const URL: &str = "http://hc.lua.test:18080/ok";

    fn hc(body_tail: &str, states: &[(&str, HealthState)]) -> (Vec<String>, Evaluated) {
        let t = if_up_table(&format!("ifurlup('{URL}', {body_tail})"), states);
        answer(set(&t, "hc.test.", 1), &client("203.0.113.0", Some(24)))
    }

    #[test]
    fn ifurlup_selector_all_within_the_first_group_with_an_up_member() {
        let (a, e) = hc(
            "{'127.0.0.11','127.0.0.12','127.0.0.17'}, {selector='all'}",
            &[("127.0.0.11", Up), ("127.0.0.12", Up), ("127.0.0.17", Down)],
        );
        assert_eq!(a, ["127.0.0.11", "127.0.0.12"]);
        assert_eq!(
            e,
            Evaluated {
                outcome: Outcome::Primary,
                scope: 0
            }
        );
        // hc-groups: first group down, second up, third ignored.
        let (a, _) = hc(
            "{{'127.0.0.17'},{'127.0.0.11','127.0.0.12'},{'127.0.0.13'}}, {selector='all'}",
            &[
                ("127.0.0.17", Down),
                ("127.0.0.11", Up),
                ("127.0.0.12", Up),
                ("127.0.0.13", Up),
            ],
        );
        assert_eq!(a, ["127.0.0.11", "127.0.0.12"]);
    }

    #[test]
    fn unknown_health_counts_as_up() {
        let (a, e) = hc("{'127.0.0.11','127.0.0.12'}, {selector='all'}", &[]);
        assert_eq!(a, ["127.0.0.11", "127.0.0.12"]);
        assert_eq!(e.outcome, Outcome::Primary);
        // A probe missing from the health map is a fresh flag too.
        let t = table(&rec(
            "hc.test",
            "A",
            &format!("ifurlup('{URL}', {{'127.0.0.11'}})"),
        ));
        assert_eq!(
            one(set(&t, "hc.test.", 1), "192.0.2.1", None).0,
            "127.0.0.11"
        );
    }

    #[test]
    fn backup_selectors_when_everything_is_down() {
        let down = [("127.0.0.17", Down), ("127.0.0.18", Down)];
        let (a, e) = hc(
            "{{'127.0.0.17'},{'127.0.0.18'}}, {backupSelector='all'}",
            &down,
        );
        assert_eq!(a, ["127.0.0.17", "127.0.0.18"]);
        assert_eq!(e.outcome, Outcome::Backup);
        let (a, _) = hc(
            "{{'127.0.0.18'},{'127.0.0.17'}}, {backupSelector='pickfirst'}",
            &down,
        );
        assert_eq!(a, ["127.0.0.18"]);
        let (a, e) = hc(
            "{'127.0.0.17','127.0.0.18'}, {backupSelector='empty'}",
            &down,
        );
        assert!(a.is_empty());
        assert_eq!(e.outcome, Outcome::Empty);
        // Default backup: one random of all candidates, dead or not.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let (a, e) = hc("{'127.0.0.17','127.0.0.18'}", &down);
            assert_eq!((a.len(), e.outcome), (1, Outcome::Backup));
            seen.insert(a[0].clone());
        }
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn hashed_selector_matches_powerdns_live_answers() {
        // hc-hashed: all up, 203.0.113.0/24 → .13 (h mod 3 = 2).
        let up = [("127.0.0.11", Up), ("127.0.0.12", Up), ("127.0.0.13", Up)];
        let (a, e) = hc(
            "{'127.0.0.11','127.0.0.12','127.0.0.13'}, {selector='hashed'}",
            &up,
        );
        assert_eq!((a, e.scope), (vec!["127.0.0.13".to_string()], 24));
        // hc-downhash: all down, backupSelector hashed, 172.16.5.0/24 → .18.
        let t = if_up_table(
            &format!(
                "ifurlup('{URL}', {{'127.0.0.17','127.0.0.18','127.0.0.19'}}, {{backupSelector='hashed'}})"
            ),
            &[
                ("127.0.0.17", Down),
                ("127.0.0.18", Down),
                ("127.0.0.19", Down),
            ],
        );
        let (a, e) = answer(set(&t, "hc.test.", 1), &client("172.16.5.0", Some(24)));
        assert_eq!(a, ["127.0.0.18"]);
        assert_eq!((e.outcome, e.scope), (Outcome::Backup, 24));
        // The hashed list is the UP members only: with .13 down, h mod 2 = 0 → .11.
        let (a, _) = hc(
            "{'127.0.0.11','127.0.0.12','127.0.0.13'}, {selector='hashed'}",
            &[("127.0.0.11", Up), ("127.0.0.12", Up), ("127.0.0.13", Down)],
        );
        assert_eq!(a, ["127.0.0.11"]);
    }

    #[test]
    fn pickfirst_is_the_first_up_in_written_order() {
        let tail = "{'127.0.0.11','127.0.0.12','127.0.0.13'}, {selector='pickfirst'}";
        assert_eq!(hc(tail, &[]).0, ["127.0.0.11"]);
        let (a, e) = hc(tail, &[("127.0.0.11", Down), ("127.0.0.12", Up)]);
        assert_eq!((a, e.scope), (vec!["127.0.0.12".to_string()], 0));
        // Random selector picks among UP members only.
        for _ in 0..50 {
            let (a, _) = hc(
                "{'127.0.0.11','127.0.0.12','127.0.0.13'}",
                &[("127.0.0.11", Down), ("127.0.0.12", Down)],
            );
            assert_eq!(a, ["127.0.0.13"]);
        }
    }

    #[test]
    fn fail_on_incomplete_check() {
        let tail = "{'127.0.0.11','127.0.0.12'}, {failOnIncompleteCheck='true'}";
        let t = if_up_table(&format!("ifurlup('{URL}', {tail})"), &[]);
        let e = set(&t, "hc.test.", 1)
            .evaluate(&client("192.0.2.1", None), &mut VecSink::default())
            .unwrap_err();
        assert_eq!(e.kind(), "incomplete_check");
        // One completed check is enough.
        let (a, _) = hc(tail, &[("127.0.0.12", Down)]);
        assert_eq!(a, ["127.0.0.11"]);
    }

    #[test]
    fn probes_are_shared_across_records_and_selectors_but_not_options() {
        let records = [
            rec(
                "a.test",
                "A",
                &format!("ifurlup('{URL}', {{'127.0.0.11','127.0.0.12'}})"),
            ),
            rec(
                "b.test",
                "A",
                &format!("ifurlup('{URL}', {{'127.0.0.12'}}, {{selector='all'}})"),
            ),
            rec(
                "c.test",
                "A",
                &format!("ifurlup('{URL}', {{'127.0.0.12'}}, {{timeout=5}})"),
            ),
            rec("d.test", "A", "ifportup(443, {'127.0.0.12'})"),
        ]
        .concat();
        let compiled = compile(&config(&records)).unwrap();
        let probes = compiled.probe_specs();
        assert_eq!(probes.len(), 4, "{probes:#?}");
        // One health flag drives every record that shares the probe.
        let health = health_for(&records, &[("127.0.0.12", Down)]);
        let t = table_with(&records, &health, None);
        let (a, e) = answer(set(&t, "b.test.", 1), &client("192.0.2.1", None));
        assert_eq!(
            (a, e.outcome),
            (vec!["127.0.0.12".to_string()], Outcome::Backup)
        );
        assert_eq!(
            one(set(&t, "a.test.", 1), "192.0.2.1", None).0,
            "127.0.0.11"
        );
        assert_eq!(
            compiled.names(),
            ["a.test.", "b.test.", "c.test.", "d.test."]
        );
    }

    #[test]
    fn closest_by_great_circle() {
        let at = |lat, lon| Some(unit(lat, lon));
        let ams = at(52.37, 4.90);
        let tokyo = at(35.69, 139.69);
        let us_west = at(37.57, -121.98);
        let sydney = at(-33.87, 151.21);
        let cands = [ams, tokyo, us_west, sydney];
        let pick = |c| closest(c, cands.iter().copied().enumerate());
        // Across the antimeridian (PowerDNS's planar distance gets these wrong).
        assert_eq!(pick(us_west), Some(2));
        assert_eq!(
            closest(us_west, [ams, tokyo].into_iter().enumerate()),
            Some(1)
        );
        assert_eq!(
            closest(tokyo, [ams, us_west].into_iter().enumerate()),
            Some(1)
        );
        assert_eq!(pick(at(48.85, 2.35)), Some(0));
        assert_eq!(pick(at(-37.8, 144.9)), Some(3));
        // Across the pole: from 89°N 0°E, 75°N 180°E (16° away) beats 70°N 0°E (19° away).
        assert_eq!(
            closest(
                at(89.0, 0.0),
                [at(70.0, 0.0), at(75.0, 180.0)].into_iter().enumerate()
            ),
            Some(1)
        );
        // Unknown client: first candidate. Unknown candidates rank last. Ties: written order.
        assert_eq!(pick(None), Some(0));
        assert_eq!(
            closest(at(35.0, 139.0), [None, ams].into_iter().enumerate()),
            Some(1)
        );
        assert_eq!(
            closest(at(0.0, 0.0), [None, None].into_iter().enumerate()),
            Some(0)
        );
        assert_eq!(
            closest(at(0.0, 10.0), [ams, ams].into_iter().enumerate()),
            Some(0)
        );
        assert_eq!(closest(None, std::iter::empty()), None);
    }

    /// GeoIP stand-in: a list of (network, location).
    struct FakeGeo(Vec<(ipnet::IpNet, Location)>);

    impl Locate for FakeGeo {
        fn locate(&self, ip: IpAddr) -> Option<Location> {
            self.0
                .iter()
                .find(|(n, _)| n.contains(&ip))
                .map(|(_, l)| *l)
        }
    }

    fn fake_geo() -> Arc<dyn Locate> {
        let at = |net: &str, lat, lon, prefix_len| {
            (
                net.parse().unwrap(),
                Location {
                    lat,
                    lon,
                    prefix_len,
                },
            )
        };
        Arc::new(FakeGeo(vec![
            at("193.0.0.0/21", 52.37, 4.90, 21),     // NL
            at("8.8.8.0/24", 37.75, -97.82, 24),     // US
            at("210.140.0.0/16", 35.69, 139.69, 16), // JP
            at("1.1.1.0/24", -33.49, 143.21, 24),    // AU
            at("80.81.0.0/16", 40.41, -3.70, 16),    // ES
            at("45.33.0.0/17", 37.55, -121.98, 17),  // US west
            at("101.0.0.0/20", 39.9, 116.4, 20),     // CN
        ]))
    }

    #[test]
    fn pickclosest_function_and_selector_with_a_location_table() {
        let records = [
            rec("closest.test", "A", "pickclosest({'193.0.6.139','8.8.8.8','210.140.92.1','1.1.1.1'})"),
            rec("hc.test", "A", &format!("ifurlup('{URL}', {{'193.0.6.139','8.8.8.8','210.140.92.1'}}, {{selector='pickclosest'}})")),
            "[geoip]\ndatabase = \"city.mmdb\"\n".to_string(),
        ]
        .concat();
        let health = health_for(&records, &[("210.140.92.1", Down)]);
        let t = table_with(&records, &health, Some(fake_geo()));
        let s = set(&t, "closest.test.", 1);
        // The 4.7.3 live answers (GeoLite2-City), and the scope is min(source, mmdb prefix).
        assert_eq!(one(s, "80.81.82.0", Some(24)), ("193.0.6.139".into(), 16));
        assert_eq!(one(s, "45.33.32.0", Some(24)), ("8.8.8.8".into(), 17));
        assert_eq!(one(s, "101.0.0.0", Some(24)), ("210.140.92.1".into(), 20));
        // Unknown client → first candidate, scope = source prefix.
        assert_eq!(one(s, "203.0.113.0", Some(24)), ("193.0.6.139".into(), 24));
        assert_eq!(one(s, "80.81.82.0", None), ("193.0.6.139".into(), 0));
        assert_eq!(one(s, "80.81.82.0", Some(8)).1, 8);
        // Selector: Tokyo is down, so a Chinese client goes to the nearest UP one (Amsterdam
        // is nearer to Beijing than Kansas is), and a Californian one to Kansas.
        let hc = set(&t, "hc.test.", 1);
        assert_eq!(one(hc, "101.0.0.0", Some(24)), ("193.0.6.139".into(), 20));
        assert_eq!(one(hc, "45.33.32.0", Some(24)), ("8.8.8.8".into(), 17));
    }

    #[test]
    fn closest_magic_reads_the_query_name() {
        let records = [
            rec("m.test", "A", "closestMagic()"),
            rec("m.test", "TXT", "closestMagic()"),
            rec("m6.test", "AAAA", "closestMagic()"),
            "[geoip]\ndatabase = \"city.mmdb\"\n".to_string(),
        ]
        .concat();
        let t = table_with(&records, &HashMap::new(), Some(fake_geo()));
        let ask =
            |name: &str, qtype: u16, who: &str, prefix: Option<u8>| {
                let mut sink = VecSink::default();
                let r = set(&t, if qtype == 28 { "m6.test." } else { "m.test." }, qtype)
                    .evaluate_for(&client(who, prefix), &wire(name), &mut sink);
                r.map(|e| {
                    (
                        sink.0.into_iter().map(|(_, d)| d).collect::<Vec<_>>(),
                        e.scope,
                    )
                })
            };
        let nl_us = "193-0-6-139.8-8-8-8.magic.m.test.";
        assert_eq!(
            ask(nl_us, 1, "80.81.82.0", Some(24)).unwrap(),
            (vec![vec![193, 0, 6, 139]], 16)
        );
        assert_eq!(
            ask(nl_us, 1, "45.33.32.0", Some(24)).unwrap(),
            (vec![vec![8, 8, 8, 8]], 17)
        );
        // The address as PowerDNS prints it, for TXT.
        assert_eq!(
            ask(nl_us, 16, "45.33.32.0", None).unwrap().0,
            vec![b"\x078.8.8.8".to_vec()]
        );
        // Parsing stops at the first label that is no address: 1-1-1-1 after `x` is unseen.
        assert_eq!(
            ask("8-8-8-8.x.1-1-1-1.m.test.", 1, "1.1.1.0", None)
                .unwrap()
                .0,
            vec![vec![8, 8, 8, 8]]
        );
        // inet_aton forms: `1-1-257` is 1.1.1.1 (Sydney), a bare number an address too.
        assert_eq!(
            ask("193-0-6-139.1-1-257.m.test.", 1, "1.1.1.0", None)
                .unwrap()
                .0,
            vec![vec![1, 1, 1, 1]]
        );
        assert_eq!(
            ask("16843009.m.test.", 1, "80.81.82.0", None).unwrap().0,
            vec![vec![1, 1, 1, 1]]
        );
        // No address in the name: PowerDNS raises (SERVFAIL).
        assert!(ask("www.m.test.", 1, "80.81.82.0", None).is_err());
        // An IPv4 answer for AAAA is no AAAA: SERVFAIL, as PowerDNS fails to read it.
        assert!(ask("8-8-8-8.m6.test.", 28, "80.81.82.0", None).is_err());
    }

    #[test]
    fn pickclosest_needs_geoip() {
        let e = compile(&config(&rec("c.test", "A", "pickclosest({'192.0.2.1'})")))
            .err()
            .unwrap();
        assert!(e.to_string().contains("[geoip]"), "{e}");
        let e = compile(&config(&rec(
            "c.test",
            "A",
            &format!("ifurlup('{URL}', {{'192.0.2.1'}}, {{backupSelector='pickclosest'}})"),
        )))
        .err()
        .unwrap();
        assert!(e.to_string().contains("[geoip]"), "{e}");
    }

    fn zones() -> Zones {
        let info = |apex: &str| ZoneInfo {
            apex_wire: wire(apex),
            soa_rdata: vec![0],
            negative_ttl: 60,
            signed: false,
            soa_ttl: 300,
            ..ZoneInfo::default()
        };
        [
            ("lua.test.".to_string(), info("lua.test.")),
            ("sub.lua.test.".to_string(), info("sub.lua.test.")),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn lookup_rules() {
        let records = [
            rec("a.lua.test", "A", "'192.0.2.1'"),
            rec("x.sub.lua.test", "A", "'192.0.2.2'"),
            rec("cname.lua.test", "CNAME", "'static.lua.test'"),
            rec("other.test", "A", "'192.0.2.3'"),
        ]
        .concat();
        let compiled = compile(&config(&records)).unwrap();
        let t = RecordTable::link(&compiled, &HashMap::new(), None, &zones());
        assert!(!t.is_empty());
        assert!(RecordTable::default().is_empty());
        let apex = |l: Lookup<'_>| match l {
            Lookup::Hit(_, z) => z.map(|z| z.apex_wire.clone()),
            Lookup::NoData(z) => Some(z.apex_wire.clone()),
            Lookup::Miss => None,
        };
        assert!(
            matches!(t.lookup(&wire("a.lua.test."), 1), Lookup::Hit(s, Some(_)) if s.rtype == 1)
        );
        assert_eq!(
            apex(t.lookup(&wire("a.lua.test."), 1)),
            Some(wire("lua.test."))
        );
        // Longest apex wins.
        assert_eq!(
            apex(t.lookup(&wire("x.sub.lua.test."), 28)),
            Some(wire("sub.lua.test."))
        );
        assert!(matches!(
            t.lookup(&wire("a.lua.test."), 28),
            Lookup::NoData(_)
        ));
        assert!(matches!(
            t.lookup(&wire("a.lua.test."), 255),
            Lookup::NoData(_)
        ));
        assert!(matches!(
            t.lookup(&wire("a.lua.test."), 65402),
            Lookup::NoData(_)
        ));
        // CNAME answers every type, but a query for type LUA never runs code.
        assert!(matches!(t.lookup(&wire("cname.lua.test."), 1), Lookup::Hit(s, _) if s.rtype == 5));
        assert!(
            matches!(t.lookup(&wire("cname.lua.test."), 16), Lookup::Hit(s, _) if s.rtype == 5)
        );
        assert!(matches!(
            t.lookup(&wire("cname.lua.test."), 65402),
            Lookup::NoData(_)
        ));
        // No zone known: other types go to PowerDNS.
        assert!(matches!(
            t.lookup(&wire("other.test."), 1),
            Lookup::Hit(_, None)
        ));
        assert!(matches!(t.lookup(&wire("other.test."), 28), Lookup::Miss));
        assert!(matches!(
            t.lookup(&wire("unknown.lua.test."), 1),
            Lookup::Miss
        ));
        assert!(matches!(t.lookup(&wire("lua.test."), 6), Lookup::Miss));
        let (a, _) = answer(set(&t, "cname.lua.test.", 1), &client("192.0.2.1", None));
        assert_eq!(a, ["\u{6}static\u{3}lua\u{4}test\0"]);
    }

    #[test]
    fn picknamehashed_follows_powerdns_4_9_name_hash() {
        // Expected picks from an independent lookup2 (shared/pdns-lua/pdnshash.py) over the
        // wire name: www.example.test. 2708148499 % 60 = 19, x.example.test. 1604289718 % 60 =
        // 58; libstdc++ walks the entries .3 (30) .2 (20) .1 (10).
        let body = "picknamehashed({{10,'192.0.2.1'},{20,'192.0.2.2'},{30,'192.0.2.3'}})";
        let t = table(
            &[
                rec("www.example.test", "A", body),
                rec("x.example.test", "A", body),
            ]
            .concat(),
        );
        let c = client("198.51.100.1", Some(24));
        let (a, e) = answer(set(&t, "www.example.test.", 1), &c);
        assert_eq!((a, e.scope), (vec!["192.0.2.3".to_string()], 0));
        let (a, _) = answer(set(&t, "x.example.test.", 1), &c);
        assert_eq!(a, ["192.0.2.1"]);
        // The hash ignores case, as DNSName::hash() does.
        let mut sink = VecSink::default();
        set(&t, "x.example.test.", 1)
            .evaluate_for(&c, &wire("X.Example.TEST."), &mut sink)
            .unwrap();
        assert_eq!(sink.0, vec![(1, vec![192, 0, 2, 1])]);
    }

    #[test]
    fn ttl_of_a_union_is_the_smallest() {
        let records = "[[records]]\nname = \"t.test\"\ntype = \"A\"\nttl = 30\ncontent = [\"192.0.2.1\"]\n[[records]]\nname = \"t.test\"\ntype = \"A\"\nttl = 10\nlua = \"'192.0.2.2'\"\n";
        let t = table(records);
        assert_eq!(set(&t, "t.test.", 1).ttl, 10);
    }

    #[test]
    fn wildcard_without_its_zone_transferred_is_refused() {
        let e = compile(&config(&rec("*.wild.test", "A", "'192.0.2.1'")))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("needs its zone listed in zones.transfer"),
            "{e}"
        );
    }

    /// The case of config/rejected/wildcard-without-transfer.toml, accepted once its zone is
    /// transferred.
    fn wildcard_table(zone_owners: &[(&str, bool)]) -> RecordTable {
        let records = format!(
            "[zones]\ntransfer = [\"example.test\"]\n{}{}{}",
            rec(
                "*.example.test",
                "A",
                "pickrandom({'192.0.2.81', '192.0.2.82'})"
            ),
            rec("*.cn.example.test", "CNAME", "'target.example.test.'"),
            rec("mine.example.test", "A", "'192.0.2.7'"),
        );
        let compiled = compile(&config(&records)).unwrap();
        let zone = ZoneNames::new(
            &wire("example.test."),
            zone_owners.iter().map(|(o, ns)| (wire(o), *ns)),
        );
        RecordTable::link(&compiled, &HashMap::new(), None, &Zones::new())
            .with_zone_names(&[Arc::new(zone)])
    }

    #[test]
    fn wildcard_answers_names_that_do_not_exist() {
        let t = wildcard_table(&[
            ("example.test.", true),
            ("pdns-only.example.test.", false),
            ("a.ent.example.test.", false),
            ("deleg.example.test.", true),
        ]);
        let hit = |q: &str, qtype: u16| match t.lookup(&wire(q), qtype) {
            Lookup::Hit(set, _) => Some((set.name.clone(), set.wildcard)),
            _ => None,
        };
        let wild = Some(("*.example.test.".to_string(), true));
        assert_eq!(hit("nothing.example.test.", 1), wild);
        assert_eq!(hit("x.y.example.test.", 1), wild);
        // Exact names win, whoever holds them, empty non-terminals included.
        assert_eq!(
            hit("mine.example.test.", 1),
            Some(("mine.example.test.".into(), false))
        );
        assert_eq!(hit("pdns-only.example.test.", 1), None);
        assert_eq!(hit("ent.example.test.", 1), None);
        // The closest encloser exists and has no wildcard of its own.
        assert_eq!(hit("x.pdns-only.example.test.", 1), None);
        assert_eq!(hit("x.mine.example.test.", 1), None);
        assert_eq!(hit("x.deleg.example.test.", 1), None);
        // Other types, and type LUA, are PowerDNS's; a wildcard CNAME answers every type.
        assert!(matches!(
            t.lookup(&wire("nothing.example.test."), 28),
            Lookup::Miss
        ));
        assert!(matches!(
            t.lookup(&wire("nothing.example.test."), 65402),
            Lookup::Miss
        ));
        assert_eq!(
            hit("z.cn.example.test.", 28),
            Some(("*.cn.example.test.".into(), true))
        );
        // Outside the zone: PowerDNS.
        assert_eq!(hit("x.other.test.", 1), None);
    }

    #[test]
    fn wildcard_waits_for_the_zone_transfer() {
        let records = format!(
            "[zones]\ntransfer = [\"example.test\"]\n{}",
            rec("*.example.test", "A", "'192.0.2.81'")
        );
        let t = table(&records);
        assert!(matches!(
            t.lookup(&wire("x.example.test."), 1),
            Lookup::Miss
        ));
        // The owner itself is an exact name.
        assert!(matches!(
            t.lookup(&wire("*.example.test."), 1),
            Lookup::Hit(..)
        ));
    }

    #[test]
    fn cname_cannot_share_a_name() {
        let records = [
            rec("c.test", "A", "'192.0.2.1'"),
            rec("c.test", "CNAME", "'x.test'"),
        ]
        .concat();
        let e = compile(&config(&records)).err().unwrap().to_string();
        assert!(e.contains("CNAME cannot share"), "{e}");
        assert!(e.contains("records[1]"), "{e}");
    }

    #[test]
    fn compile_errors_name_the_record_and_line() {
        let records = format!("\n\n{}", rec("bad.test", "A", "dblookup('x.test', 1)"));
        let e = compile(&config(&records)).err().unwrap().to_string();
        assert!(e.starts_with("/etc/dnsteer/dnsteer.toml:6:"), "{e}");
        assert!(e.contains("records[0] (bad.test. A)"), "{e}");
        assert!(e.contains("unsupported function 'dblookup'"), "{e}");
    }

    #[test]
    fn transferred_specs_are_compiled_or_rejected_with_reasons() {
        let spec = |name: &str, body: &str| RecordSpec {
            name: name.into(),
            rtype: RecordType::A,
            ttl: 60,
            body: RecordBody::Lua(body.into()),
            origin: crate::config::RecordOrigin::Zone {
                zone: "lua.test.".into(),
            },
        };
        let specs = [
            spec("ok.lua.test.", "all({'192.0.2.1'})"),
            spec("geo.lua.test.", "dblookup('x.test', 1)"),
            spec("near.lua.test.", "pickclosest({'192.0.2.1'})"),
        ];
        let cfg = config("");
        let (compiled, rejected) = compile_specs(&specs, &cfg.probes, false);
        assert_eq!(compiled.len(), 1);
        assert_eq!(rejected.len(), 2);
        assert_eq!(rejected[0].spec.name, "geo.lua.test.");
        assert!(
            rejected[0]
                .reason
                .contains("unsupported function 'dblookup'")
        );
        assert!(rejected[1].reason.contains("GeoIP"));
        // Config records and transferred ones in one table.
        let cfg = config(&rec("static.test", "A", "'192.0.2.9'"));
        let (compiled, rejected) = compile_with(&cfg, &specs).unwrap();
        assert_eq!((compiled.len(), rejected.len()), (2, 2));
    }
}
