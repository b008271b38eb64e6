//! Configuration: the TOML contract (`shared/spec/config.md`) parsed once into validated types.
//!
//! Raw serde structs (`Raw*`, `deny_unknown_fields`) mirror the file; `Config::parse` turns them
//! into typed settings and reports the first problem with file, line, column and key. Settings
//! that need a restart (`Config::restart`) are kept apart from the ones a reload swaps in.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

/// Default fraction of queries the query log and dnstap take.
const DEFAULT_SAMPLE_RATE: f64 = 0.01;

/// A config problem, located in the file where possible.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {key}: {message}")]
    Invalid {
        path: String,
        line: usize,
        col: usize,
        key: String,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Unlocated {
        path: String,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// Static label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Invalid { .. } | ConfigError::Unlocated { .. } => "invalid",
        }
    }
}

/// Turns byte spans into `line:col` for error messages.
pub(crate) struct SourceMap<'a> {
    pub path: &'a str,
    pub text: &'a str,
}

impl SourceMap<'_> {
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    pub(crate) fn error(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, col) = self.line_col(span.start);
        ConfigError::Invalid {
            path: self.path.to_string(),
            line,
            col,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validated types
// ---------------------------------------------------------------------------------------------

/// The whole validated configuration. Cheap to clone behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Absolute or as-given path of the file, and the directory relative paths resolve against.
    pub path: PathBuf,
    /// SHA-256 of the file content (hex), shown in `/status` and used to skip no-op reloads.
    pub(crate) hash: String,
    pub restart: RestartSettings,
    pub logging: LoggingConfig,
    /// `[dnstap].sample_rate`: fraction of queries sent to the dnstap collector (hot-reloaded;
    /// the output itself is in `restart.dnstap`).
    pub(crate) dnstap_sample_rate: f64,
    pub ratelimit: RateLimitConfig,
    pub upstream: UpstreamConfig,
    pub geoip: Option<GeoIpConfig>,
    pub probes: ProbeDefaults,
    pub(crate) zones: ZonesConfig,
    pub dnssec: DnssecConfig,
    /// `[cookies]` (None: off). The secrets themselves are read when a snapshot is built.
    pub(crate) cookies: Option<CookiesConfig>,
    pub records: Vec<RecordSpec>,
    /// `[flood]`: flood rules and the blocks they make (hot-reloaded).
    pub flood: FloodConfig,
    /// `[metrics].admin_token_file` and `blocks_read_open`: who may use the block endpoints.
    pub(crate) admin: AdminAccess,
    /// `[reload].poll_interval`: how often the config file (and the GeoIP file) is re-read in
    /// case a change event was missed.
    pub(crate) reload_poll: Duration,
    /// The file text, kept so record compile errors can be located (line/col) after parsing.
    pub text: String,
}

/// `[cookies]`: DNS cookies (RFC 7873) with RFC 9018 server cookies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CookiesConfig {
    /// The 16-byte secret (32 hex digits) new server cookies are made with.
    pub(crate) secret_file: PathBuf,
    /// The secret before it, still accepted while a rotation reaches every replica.
    pub(crate) previous_secret_file: Option<PathBuf>,
}

/// Settings fixed for the life of the process: a reload that changes them is reported, not applied.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartSettings {
    pub listen: Vec<SocketAddr>,
    /// Resolved worker count (never 0).
    pub workers: usize,
    pub(crate) metrics_listen: SocketAddr,
    pub(crate) tcp: TcpLimits,
    pub max_udp_payload: u16,
    /// SO_RCVBUF/SO_SNDBUF asked for on each UDP socket (the kernel caps it at rmem_max).
    pub(crate) socket_buffer: usize,
    /// `[server].udp_steering`.
    pub udp_steering: UdpSteering,
    pub shutdown_drain: Duration,
    pub shutdown_grace: Duration,
    /// `[cache]`: the packet cache is sized once, at start.
    pub(crate) cache: CacheConfig,
    /// `[dnstap]`: the collector connection is made once, at start (None: off).
    pub(crate) dnstap: Option<DnstapOutput>,
}

/// `[dnstap]` without its sample rate: where frames go and what they say about the sender.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DnstapOutput {
    /// Unix stream socket a Frame Streams collector listens on (dnsteer connects, as sender).
    pub(crate) socket: PathBuf,
    /// Query/answer pairs buffered between the packet path and the writer thread.
    pub(crate) queue: usize,
    /// The `identity` field of every frame; None: the host name, read at start.
    pub(crate) identity: Option<String>,
    /// The `version` field of every frame.
    pub(crate) version: String,
}

/// `[cache]`: the packet cache for answers from PowerDNS (see `forward::cache`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CacheConfig {
    pub(crate) enabled: bool,
    /// Entries kept at most (answers and per-name scope markers), across all shards.
    pub(crate) max_entries: usize,
    /// Bytes kept at most: stored answers plus a fixed overhead per entry.
    pub(crate) max_bytes: usize,
    /// Longest time a positive answer is kept (its smallest answer TTL is used when shorter).
    pub(crate) max_ttl: Duration,
    /// Answers whose lifetime would be shorter than this are not cached.
    pub(crate) min_ttl: Duration,
    /// Longest time a negative answer (NXDOMAIN / NODATA) is kept; its own lifetime is
    /// min(SOA TTL, SOA minimum) from the authority section.
    pub(crate) negative_ttl_cap: Duration,
    /// Serve TTLs decremented by the time spent in the cache (a resolver cache's way) instead
    /// of as PowerDNS gave them (an authoritative server's way, dnsdist `dontAge`).
    pub(crate) age_ttls: bool,
    /// How long past its expiry an entry may still answer (TTL 30) when PowerDNS cannot
    /// (RFC 8767 serve-stale); 0 turns it off.
    pub(crate) stale_ttl: Duration,
}

/// `[server].udp_steering`: how the kernel picks a worker's UDP socket for a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpSteering {
    /// The kernel's SO_REUSEPORT hash of the addresses (even over many client flows).
    Hash,
    /// The CPU that received the datagram, mod the workers (follows RSS/RPS; even over few
    /// flows when receive work is spread across CPUs).
    Cpu,
}

/// `[upstream].client_address`: how PowerDNS learns who the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAddress {
    /// An ECS option with the client's subnet is added to queries that carry none.
    Ecs,
    /// A PROXY protocol v2 header with the client's address and port precedes each datagram
    /// (and each client's own upstream TCP connection).
    Proxy,
    /// Nothing: PowerDNS sees dnsteer.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TcpLimits {
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_client: usize,
    /// 0 = unlimited.
    pub(crate) max_queries_per_connection: u64,
    /// Queries of one connection being answered at once (RFC 7766 pipelining bound).
    pub(crate) max_in_flight_per_connection: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoggingConfig {
    pub level: String,
    pub format: LogFormat,
    pub query_sample_rate: f64,
    /// Always-logged events (blocks, FORMERR, SERVFAIL, upstream timeouts) per second at most.
    pub(crate) event_rate_limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAction {
    Drop,
    Refused,
    Truncate,
}

impl LimitAction {
    pub fn label(self) -> &'static str {
        match self {
            LimitAction::Drop => "drop",
            LimitAction::Refused => "refused",
            LimitAction::Truncate => "truncate",
        }
    }
}

/// What the per-source limiter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitMode {
    /// Queries per source prefix, with a block (dnsdist `MaxQPSIPRule`).
    Qps,
    /// UDP responses per (source prefix, response kind, name), BIND/NSD/Knot RRL.
    Rrl,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub mode: RateLimitMode,
    pub qps: u32,
    pub burst: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub block_for: Duration,
    pub action: LimitAction,
    pub max_tracked_sources: usize,
    pub exempt: Vec<IpNet>,
    pub dry_run: bool,
    /// rrl: identical responses per second per key (one second of them is the burst).
    pub responses_per_second: u32,
    /// rrl: seconds of debt a limited key may run up (BIND's `window`).
    pub window: u32,
    /// rrl: response bytes per second per source prefix; 0 = no byte budget.
    pub bytes_per_second: u64,
    /// rrl: every `slip`-th limited response goes out as TC=1; 0 = drop them all.
    pub slip: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamPolicy {
    LeastOutstanding,
    RoundRobin,
    FirstAvailable,
}

/// Most `[upstream].servers` accepted: a forwarded query remembers the servers it tried in a
/// 64-bit mask.
pub(crate) const MAX_UPSTREAM_SERVERS: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub servers: Vec<SocketAddr>,
    pub(crate) policy: UpstreamPolicy,
    pub timeout: Duration,
    /// Servers tried per query (each gets `timeout`) before SERVFAIL.
    pub(crate) attempts: usize,
    pub(crate) health_check_interval: Duration,
    pub(crate) health_check_name: String,
    pub(crate) health_check_must_resolve: bool,
    /// Consecutive failed checks before a server is taken out.
    pub(crate) health_check_fall: u32,
    /// Consecutive good checks before it comes back.
    pub(crate) health_check_rise: u32,
    pub(crate) client_address: ClientAddress,
    pub(crate) ecs_ipv4_prefix: u8,
    pub(crate) ecs_ipv6_prefix: u8,
    /// Pooled TCP connections per worker per server for TCP clients.
    pub(crate) tcp_pool_size: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GeoIpConfig {
    pub database: PathBuf,
    /// `asn_database`: GeoLite2-ASN format, for `asnum()`.
    pub asn_database: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeDefaults {
    pub interval: Duration,
    pub timeout: Duration,
    pub minimum_failures: u32,
    pub rise: u32,
    pub max_concurrent: usize,
    pub jitter: f64,
    /// Verify TLS certificates of `https` probes (PowerDNS does not).
    pub tls_verify: bool,
    pub max_redirects: u32,
    /// Bytes of body read at most for `stringmatch`.
    pub body_limit: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ZonesConfig {
    /// Lower-case, absolute (trailing dot) zone names.
    pub transfer: Vec<String>,
    pub refresh: Duration,
    /// None: the upstream servers' addresses.
    pub(crate) notify_from: Option<Vec<IpAddr>>,
}

/// Online signing of in-process answers for signed zones (`[dnssec]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DnssecConfig {
    /// Private keys to sign with, one per entry (`[[dnssec.keys]]`).
    pub(crate) keys: Vec<DnssecKeyFile>,
    /// Signatures cached in all (each packet thread holds its share); 0 = no cache.
    pub(crate) signature_cache_entries: usize,
    /// A ZSK of dnsteer's own, published through the PowerDNS API (`[dnssec.own_key]`).
    pub(crate) own_key: Option<OwnKeyConfig>,
}

/// `[dnssec.own_key]`: dnsteer keeps its own ZSK per zone in `key_dir` and has PowerDNS
/// publish it (inactive: PowerDNS never signs with it), so PowerDNS's private keys never leave
/// PowerDNS.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OwnKeyConfig {
    /// Lower-case, absolute zone apexes.
    pub(crate) zones: Vec<String>,
    /// Key files `ZONE-<tag>.private` (ZONE without its trailing dot); may be read-only.
    pub(crate) key_dir: PathBuf,
    /// Where first-seen times are kept across restarts; `key_dir` when not set.
    pub(crate) state_dir: PathBuf,
    pub(crate) api: ApiEndpoint,
    /// File holding the PowerDNS API key (read on every use, so a rotated Secret is picked up).
    pub(crate) api_key_file: PathBuf,
    pub(crate) server_id: String,
    /// How often the keys are checked against PowerDNS when all is well.
    pub(crate) check_interval: Duration,
    /// Lower bound of how long a replaced key stays published after its successor signs.
    pub(crate) retire_after: Duration,
}

/// `http://HOST[:PORT]` of the PowerDNS webserver (plain HTTP only).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiEndpoint {
    /// `HOST:PORT`, resolved at each connection.
    pub(crate) authority: String,
    /// The URL as configured, for logs and `/status`.
    pub(crate) url: String,
}

/// One key file: the BIND `Private-key-format: v1.2` text `pdnsutil export-zone-key` prints.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DnssecKeyFile {
    /// Lower-case, absolute zone apex the key signs for.
    pub zone: String,
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    A,
    Aaaa,
    Cname,
    Txt,
    /// Code for `include()` (PowerDNS `LUA LUA`): compiled into the records that include it,
    /// never answered itself.
    Lua,
    /// For `createReverse`/`createReverse6` in `in-addr.arpa`/`ip6.arpa` zones.
    Ptr,
}

impl RecordType {
    pub fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Aaaa => 28,
            RecordType::Cname => 5,
            RecordType::Txt => 16,
            RecordType::Lua => 65402,
            RecordType::Ptr => 12,
        }
    }

    pub(crate) fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => RecordType::A,
            28 => RecordType::Aaaa,
            5 => RecordType::Cname,
            16 => RecordType::Txt,
            65402 => RecordType::Lua,
            12 => RecordType::Ptr,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Cname => "CNAME",
            RecordType::Txt => "TXT",
            RecordType::Lua => "LUA",
            RecordType::Ptr => "PTR",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "A" => RecordType::A,
            "AAAA" => RecordType::Aaaa,
            "CNAME" => RecordType::Cname,
            "LUA" => RecordType::Lua,
            "TXT" => RecordType::Txt,
            "PTR" => RecordType::Ptr,
            _ => return None,
        })
    }
}

/// Where a record's body came from: used in error messages and `/status`.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOrigin {
    /// `[[records]]` entry number (0-based) and the byte span of its `lua`/`content` value.
    Config { index: usize, span: Range<usize> },
    /// Read from a zone by transfer.
    Zone { zone: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecordBody {
    /// PowerDNS LUA record body, verbatim.
    Lua(String),
    /// Plain record set in presentation format.
    Content(Vec<String>),
}

/// One `[[records]]` entry, validated except for the body, which `records` compiles.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSpec {
    /// Lower-case, absolute (trailing dot).
    pub name: String,
    pub rtype: RecordType,
    pub ttl: u32,
    pub body: RecordBody,
    pub origin: RecordOrigin,
}

// ---------------------------------------------------------------------------------------------
// Raw (file) types
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    logging: RawLogging,
    #[serde(default)]
    ratelimit: RawRateLimit,
    #[serde(default)]
    upstream: RawUpstream,
    geoip: Option<RawGeoIp>,
    #[serde(default)]
    probes: RawProbes,
    #[serde(default)]
    zones: RawZones,
    #[serde(default)]
    dnssec: RawDnssec,
    #[serde(default)]
    records: Vec<RawRecord>,
    #[serde(default)]
    reload: RawReload,
    #[serde(default)]
    cache: RawCache,
    dnstap: Option<Spanned<RawDnstap>>,
    #[serde(default)]
    flood: RawFlood,
    cookies: Option<Spanned<RawCookies>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCookies {
    enabled: Option<bool>,
    secret_file: S<String>,
    previous_secret_file: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnstap {
    socket: S<String>,
    sample_rate: S<f64>,
    queue: S<i64>,
    identity: S<String>,
    version: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    enabled: Option<bool>,
    max_entries: S<i64>,
    max_bytes: S<i64>,
    max_ttl: S<String>,
    min_ttl: S<String>,
    negative_ttl_cap: S<String>,
    age_ttls: Option<bool>,
    stale_ttl: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReload {
    poll_interval: S<String>,
}

type S<T> = Option<Spanned<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: S<Vec<String>>,
    workers: S<i64>,
    tcp_idle_timeout: S<String>,
    tcp_max_connections: S<i64>,
    tcp_max_connections_per_client: S<i64>,
    tcp_max_queries_per_connection: S<i64>,
    tcp_max_in_flight_per_connection: S<i64>,
    max_udp_payload: S<i64>,
    socket_buffer: S<i64>,
    udp_steering: S<String>,
    shutdown_drain: S<String>,
    shutdown_grace: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: S<String>,
    admin_token_file: S<String>,
    blocks_read_open: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    level: S<String>,
    format: S<String>,
    query_sample_rate: S<f64>,
    event_rate_limit: S<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    enabled: Option<bool>,
    mode: S<String>,
    qps: S<i64>,
    burst: S<i64>,
    ipv4_prefix: S<i64>,
    ipv6_prefix: S<i64>,
    block_for: S<String>,
    action: S<String>,
    max_tracked_sources: S<i64>,
    exempt: S<Vec<String>>,
    dry_run: Option<bool>,
    responses_per_second: S<i64>,
    window: S<i64>,
    bytes_per_second: S<i64>,
    slip: S<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    servers: S<Vec<String>>,
    policy: S<String>,
    timeout: S<String>,
    attempts: S<i64>,
    health_check_interval: S<String>,
    health_check_name: S<String>,
    health_check_must_resolve: Option<bool>,
    health_check_fall: S<i64>,
    health_check_rise: S<i64>,
    add_ecs: S<bool>,
    client_address: S<String>,
    ecs_ipv4_prefix: S<i64>,
    ecs_ipv6_prefix: S<i64>,
    tcp_pool_size: S<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoIp {
    database: Spanned<String>,
    asn_database: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbes {
    interval: S<String>,
    timeout: S<String>,
    minimum_failures: S<i64>,
    rise: S<i64>,
    max_concurrent: S<i64>,
    jitter: S<f64>,
    tls_verify: Option<bool>,
    max_redirects: S<i64>,
    body_limit: S<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZones {
    transfer: S<Vec<String>>,
    refresh: S<String>,
    notify_from: S<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnssec {
    #[serde(default)]
    keys: Vec<RawDnssecKey>,
    signature_cache_entries: S<i64>,
    own_key: Option<RawOwnKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwnKey {
    zones: Spanned<Vec<String>>,
    key_dir: Spanned<String>,
    state_dir: Option<Spanned<String>>,
    api_url: Spanned<String>,
    api_key_file: Spanned<String>,
    server_id: S<String>,
    check_interval: S<String>,
    retire_after: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnssecKey {
    zone: Spanned<String>,
    file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    name: Spanned<String>,
    #[serde(rename = "type")]
    rtype: Spanned<String>,
    ttl: S<i64>,
    lua: S<String>,
    content: S<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Parses a duration such as `"500ms"`, `"5s"`, `"2m"`, `"1h"`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("\"{s}\" has no unit (use ms, s, m or h)"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a number with a unit"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit \"{unit}\" in \"{s}\" (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err(format!("\"{s}\" is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Normalises a domain name for matching: lower case, absolute (trailing dot), checked syntax.
pub fn normalize_name(name: &str) -> Result<String, String> {
    let mut n = name.trim().to_ascii_lowercase();
    if n.is_empty() {
        return Err("empty name".into());
    }
    if !n.ends_with('.') {
        n.push('.');
    }
    crate::dns::name_from_text(&n).map_err(|e| e.describe(name))?;
    Ok(n)
}

impl UpstreamConfig {
    /// Whether dnsteer's own queries to PowerDNS (health checks, SOA polls, zone transfers)
    /// need a PROXY header: with "proxy" PowerDNS requires one from dnsteer's addresses. It
    /// names dnsteer's own socket (a LOCAL header would make PowerDNS 4.7 check
    /// `allow-axfr-ips` against 0.0.0.0 and refuse the transfer).
    pub(crate) fn proxies_own_queries(&self) -> bool {
        self.client_address == ClientAddress::Proxy
    }

    /// Whether forwarded queries without ECS get the client's subnet added.
    pub(crate) fn add_ecs(&self) -> bool {
        self.client_address == ClientAddress::Ecs
    }

    /// Who PowerDNS would see as the client of a query without ECS from `source`: with
    /// `add_ecs`, the source masked to the prefix dnsteer adds; else the source itself. The
    /// in-process rules hash this same identity, so a client gets the same choice whether its
    /// query is answered here or forwarded.
    pub(crate) fn client_identity(&self, source: IpAddr) -> IpAddr {
        if !self.add_ecs() {
            return source;
        }
        let prefix = if source.is_ipv4() {
            self.ecs_ipv4_prefix
        } else {
            self.ecs_ipv6_prefix
        };
        ipnet::IpNet::new(source, prefix).map_or(source, |n| n.network())
    }
}

impl Config {
    /// Whether `[metrics].admin_token_file` is set (its token was read and checked at load).
    pub fn has_admin_token(&self) -> bool {
        self.admin.token.is_some()
    }

    /// Who may send NOTIFY: `[zones].notify_from`, or the upstream servers' addresses.
    pub(crate) fn notify_allowed(&self, src: std::net::IpAddr) -> bool {
        match &self.zones.notify_from {
            Some(list) => list.contains(&src),
            None => self
                .upstream
                .servers
                .iter()
                .any(|s| s.ip().to_canonical() == src),
        }
    }

    /// Reads and validates a config file. Record bodies are compiled separately (`records`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` locates errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let path_str = path.display().to_string();
        let map = SourceMap {
            path: &path_str,
            text,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (line, col) = map.line_col(span.start);
            ConfigError::Invalid {
                path: path_str.clone(),
                line,
                col,
                key: key_at(text, span.start),
                message: e.message().trim().to_string(),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let v = Validator { map: &map };
        let mut restart = v.restart(&raw.server, &raw.metrics)?;
        restart.cache = v.cache(&raw.cache)?;
        let (dnstap, dnstap_sample_rate) = match &raw.dnstap {
            Some(d) => v.dnstap(d, base)?,
            None => (None, DEFAULT_SAMPLE_RATE),
        };
        restart.dnstap = dnstap;
        let upstream = v.upstream(&raw.upstream)?;
        let cfg = Config {
            path: path.to_path_buf(),
            hash: hex_sha256(text.as_bytes()),
            restart,
            logging: v.logging(&raw.logging)?,
            dnstap_sample_rate,
            ratelimit: v.ratelimit(&raw.ratelimit)?,
            zones: v.zones(&raw.zones)?,
            dnssec: v.dnssec(&raw.dnssec, base)?,
            cookies: match &raw.cookies {
                Some(c) => v.cookies(c, base)?,
                None => None,
            },
            upstream,
            geoip: raw.geoip.map(|g| GeoIpConfig {
                database: resolve_path(base, g.database.get_ref()),
                asn_database: g.asn_database.map(|a| resolve_path(base, a.get_ref())),
            }),
            probes: v.probes(&raw.probes)?,
            records: v.records(&raw.records)?,
            flood: v.flood(&raw.flood)?,
            admin: v.admin(&raw.metrics, base)?,
            reload_poll: v.dur(
                &raw.reload.poll_interval,
                "reload.poll_interval",
                "5s",
                Duration::from_millis(100),
            )?,
            text: text.to_string(),
        };
        Ok(cfg)
    }

    /// Error at a record's body, for record compilers.
    pub(crate) fn record_error(
        &self,
        spec: &RecordSpec,
        message: impl Into<String>,
    ) -> ConfigError {
        let path = self.path.display().to_string();
        match &spec.origin {
            RecordOrigin::Config { index, span } => SourceMap {
                path: &path,
                text: &self.text,
            }
            .error(
                span.clone(),
                &format!("records[{index}] ({} {})", spec.name, spec.rtype.name()),
                message,
            ),
            RecordOrigin::Zone { zone } => ConfigError::Unlocated {
                path,
                key: format!("zone {zone} record {} {}", spec.name, spec.rtype.name()),
                message: message.into(),
            },
        }
    }
}

/// `http://HOST[:PORT][/]`: the PowerDNS webserver speaks plain HTTP, and the API paths are
/// fixed (`/api/v1/...`), so anything else is a mistake worth naming.
fn parse_api_url(url: &str) -> Result<ApiEndpoint, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("must start with http:// (the PowerDNS webserver serves plain HTTP)")?;
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return Err("must be http://HOST[:PORT] with no path (the API is under /api/v1)".into());
    }
    let has_port = match host.rsplit_once(':') {
        // `[::1]:8081` or `host:8081`; a bare `[::1]` has no port.
        Some((h, p)) if !h.is_empty() && !p.contains(']') => {
            p.parse::<u16>()
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| format!("bad port \"{p}\""))?;
            true
        }
        _ => false,
    };
    let authority = if has_port {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok(ApiEndpoint {
        authority,
        url: url.to_string(),
    })
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Best-effort name of the key on the line of `offset`, for toml syntax errors.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None => line.trim().to_string(),
    }
}

struct Validator<'a> {
    map: &'a SourceMap<'a>,
}

impl Validator<'_> {
    fn err<T>(
        &self,
        span: Range<usize>,
        key: &str,
        msg: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(self.map.error(span, key, msg))
    }

    fn int(
        &self,
        v: &S<i64>,
        key: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => {
                let n = *s.get_ref();
                if n < min || n > max {
                    self.err(
                        s.span(),
                        key,
                        format!("{n} is out of range ({min}..={max})"),
                    )
                } else {
                    Ok(n)
                }
            }
        }
    }

    fn dur(
        &self,
        v: &S<String>,
        key: &str,
        default: &str,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(parse_duration(default).expect("valid default")),
            Some(s) => {
                let d = parse_duration(s.get_ref()).or_else(|m| self.err(s.span(), key, m))?;
                if d < min {
                    return self.err(s.span(), key, format!("must be at least {min:?}"));
                }
                Ok(d)
            }
        }
    }

    fn restart(&self, s: &RawServer, m: &RawMetrics) -> Result<RestartSettings, ConfigError> {
        let listen = self.listen(s)?;
        let workers = self.int(&s.workers, "server.workers", 0, 0, 1024)? as usize;
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            workers
        };
        let metrics_listen = match &m.listen {
            None => "127.0.0.1:9153".parse().unwrap(),
            Some(l) => l.get_ref().parse().or_else(|_| {
                self.err(
                    l.span(),
                    "metrics.listen",
                    format!("\"{}\" is not an ip:port address", l.get_ref()),
                )
            })?,
        };
        let tcp = self.tcp_limits(s)?;
        Ok(RestartSettings {
            listen,
            workers,
            metrics_listen,
            tcp,
            max_udp_payload: self.int(
                &s.max_udp_payload,
                "server.max_udp_payload",
                1232,
                512,
                65535,
            )? as u16,
            socket_buffer: self.int(
                &s.socket_buffer,
                "server.socket_buffer",
                4 << 20,
                0,
                1 << 30,
            )? as usize,
            udp_steering: self.udp_steering(s)?,
            shutdown_drain: self.dur(
                &s.shutdown_drain,
                "server.shutdown_drain",
                "5s",
                Duration::ZERO,
            )?,
            shutdown_grace: self.dur(
                &s.shutdown_grace,
                "server.shutdown_grace",
                "25s",
                Duration::ZERO,
            )?,
            cache: self.cache(&RawCache::default())?,
            dnstap: None,
        })
    }

    /// `server.listen`: distinct ip:port addresses (default: port 5300 on loopback).
    fn listen(&self, s: &RawServer) -> Result<Vec<SocketAddr>, ConfigError> {
        Ok(match &s.listen {
            None => vec![
                "127.0.0.1:5300".parse().unwrap(),
                "[::1]:5300".parse().unwrap(),
            ],
            Some(l) => {
                if l.get_ref().is_empty() {
                    return self.err(l.span(), "server.listen", "needs at least one address");
                }
                let mut out = Vec::new();
                for a in l.get_ref() {
                    let addr: SocketAddr = a.parse().or_else(|_| {
                        self.err(
                            l.span(),
                            "server.listen",
                            format!("\"{a}\" is not an ip:port address"),
                        )
                    })?;
                    if out.contains(&addr) {
                        return self.err(
                            l.span(),
                            "server.listen",
                            format!("\"{a}\" is listed twice"),
                        );
                    }
                    out.push(addr);
                }
                out
            }
        })
    }

    /// The `server.tcp_*` limits.
    fn tcp_limits(&self, s: &RawServer) -> Result<TcpLimits, ConfigError> {
        Ok(TcpLimits {
            idle_timeout: self.dur(
                &s.tcp_idle_timeout,
                "server.tcp_idle_timeout",
                "10s",
                Duration::from_millis(100),
            )?,
            max_connections: self.int(
                &s.tcp_max_connections,
                "server.tcp_max_connections",
                10000,
                1,
                1 << 24,
            )? as usize,
            max_connections_per_client: self.int(
                &s.tcp_max_connections_per_client,
                "server.tcp_max_connections_per_client",
                100,
                1,
                1 << 24,
            )? as usize,
            max_queries_per_connection: self.int(
                &s.tcp_max_queries_per_connection,
                "server.tcp_max_queries_per_connection",
                0,
                0,
                i64::MAX,
            )? as u64,
            max_in_flight_per_connection: self.int(
                &s.tcp_max_in_flight_per_connection,
                "server.tcp_max_in_flight_per_connection",
                64,
                1,
                65535,
            )? as usize,
        })
    }

    fn cache(&self, c: &RawCache) -> Result<CacheConfig, ConfigError> {
        let cfg = CacheConfig {
            enabled: c.enabled.unwrap_or(false),
            max_entries: self.int(&c.max_entries, "cache.max_entries", 100_000, 1, 1 << 28)?
                as usize,
            max_bytes: self.int(&c.max_bytes, "cache.max_bytes", 64 << 20, 1 << 16, 1 << 40)?
                as usize,
            max_ttl: self.dur(&c.max_ttl, "cache.max_ttl", "60s", Duration::from_secs(1))?,
            min_ttl: self.dur(&c.min_ttl, "cache.min_ttl", "0s", Duration::ZERO)?,
            negative_ttl_cap: self.dur(
                &c.negative_ttl_cap,
                "cache.negative_ttl_cap",
                "30s",
                Duration::ZERO,
            )?,
            age_ttls: c.age_ttls.unwrap_or(false),
            stale_ttl: self.dur(&c.stale_ttl, "cache.stale_ttl", "1h", Duration::ZERO)?,
        };
        if cfg.min_ttl > cfg.max_ttl
            && let Some(m) = &c.min_ttl
        {
            return self.err(
                m.span(),
                "cache.min_ttl",
                format!(
                    "{:?} is above cache.max_ttl ({:?}): nothing could be cached",
                    cfg.min_ttl, cfg.max_ttl
                ),
            );
        }
        Ok(cfg)
    }

    fn cookies(
        &self,
        c: &Spanned<RawCookies>,
        base: &Path,
    ) -> Result<Option<CookiesConfig>, ConfigError> {
        let raw = c.get_ref();
        if !raw.enabled.unwrap_or(false) {
            return Ok(None);
        }
        let path = |v: &Spanned<String>, key: &str| {
            if v.get_ref().trim().is_empty() {
                self.err(v.span(), key, "empty path")
            } else {
                Ok(resolve_path(base, v.get_ref()))
            }
        };
        let Some(secret) = &raw.secret_file else {
            return self.err(
                c.span(),
                "cookies.secret_file",
                "required when cookies.enabled = true",
            );
        };
        let secret_file = path(secret, "cookies.secret_file")?;
        let previous_secret_file = match &raw.previous_secret_file {
            Some(p) => {
                let file = path(p, "cookies.previous_secret_file")?;
                if file == secret_file {
                    return self.err(
                        p.span(),
                        "cookies.previous_secret_file",
                        "is the same file as cookies.secret_file",
                    );
                }
                Some(file)
            }
            None => None,
        };
        Ok(Some(CookiesConfig {
            secret_file,
            previous_secret_file,
        }))
    }

    fn udp_steering(&self, s: &RawServer) -> Result<UdpSteering, ConfigError> {
        let Some(v) = &s.udp_steering else {
            return Ok(UdpSteering::Hash);
        };
        match v.get_ref().as_str() {
            "hash" => Ok(UdpSteering::Hash),
            "cpu" => Ok(UdpSteering::Cpu),
            other => self.err(
                v.span(),
                "server.udp_steering",
                format!("\"{other}\" is not \"hash\" or \"cpu\""),
            ),
        }
    }

    fn client_address(&self, u: &RawUpstream) -> Result<ClientAddress, ConfigError> {
        let from_alias = u.add_ecs.as_ref().map(|a| {
            if *a.get_ref() {
                ClientAddress::Ecs
            } else {
                ClientAddress::None
            }
        });
        let Some(c) = &u.client_address else {
            return Ok(from_alias.unwrap_or(ClientAddress::Ecs));
        };
        let mode = match c.get_ref().as_str() {
            "ecs" => ClientAddress::Ecs,
            "proxy" => ClientAddress::Proxy,
            "none" => ClientAddress::None,
            other => {
                return self.err(
                    c.span(),
                    "upstream.client_address",
                    format!("\"{other}\" is not \"ecs\", \"proxy\" or \"none\""),
                );
            }
        };
        match (&u.add_ecs, from_alias) {
            (Some(a), Some(alias)) if alias != mode => self.err(
                a.span(),
                "upstream.add_ecs",
                "contradicts upstream.client_address (add_ecs is its old spelling: drop it)",
            ),
            _ => Ok(mode),
        }
    }

    fn logging(&self, l: &RawLogging) -> Result<LoggingConfig, ConfigError> {
        let format = match &l.format {
            None => LogFormat::Json,
            Some(f) => match f.get_ref().as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                other => {
                    return self.err(
                        f.span(),
                        "logging.format",
                        format!("\"{other}\" is not \"json\" or \"text\""),
                    );
                }
            },
        };
        let rate = self.rate(&l.query_sample_rate, "logging.query_sample_rate")?;
        let level = match &l.level {
            None => "info".to_string(),
            Some(s) => {
                let v = s.get_ref().trim().to_string();
                if v.parse::<tracing_subscriber::filter::Targets>().is_err() {
                    return self.err(
                        s.span(),
                        "logging.level",
                        format!("\"{v}\" is not a level or target filter"),
                    );
                }
                v
            }
        };
        Ok(LoggingConfig {
            level,
            format,
            query_sample_rate: rate,
            event_rate_limit: self.int(
                &l.event_rate_limit,
                "logging.event_rate_limit",
                100,
                1,
                1_000_000,
            )? as u32,
        })
    }

    /// A sample rate in 0.0–1.0 (default: the query log's default).
    fn rate(&self, r: &S<f64>, key: &str) -> Result<f64, ConfigError> {
        let Some(r) = r else {
            return Ok(DEFAULT_SAMPLE_RATE);
        };
        let v = *r.get_ref();
        if !(0.0..=1.0).contains(&v) {
            return self.err(r.span(), key, format!("{v} is not within 0.0–1.0"));
        }
        Ok(v)
    }

    /// `[dnstap]`: present means on, and then `socket` is required.
    fn dnstap(
        &self,
        table: &Spanned<RawDnstap>,
        base: &Path,
    ) -> Result<(Option<DnstapOutput>, f64), ConfigError> {
        let d = table.get_ref();
        let rate = self.rate(&d.sample_rate, "dnstap.sample_rate")?;
        let Some(sock) = &d.socket else {
            return self.err(
                table.span(),
                "dnstap.socket",
                "required when [dnstap] is present (the collector's Unix socket)",
            );
        };
        if sock.get_ref().is_empty() {
            return self.err(sock.span(), "dnstap.socket", "must not be empty");
        }
        let socket = resolve_path(base, sock.get_ref());
        // sun_path holds 108 bytes, the terminating NUL included.
        if socket.as_os_str().len() > 107 {
            return self.err(
                sock.span(),
                "dnstap.socket",
                format!(
                    "\"{}\" is longer than a Unix socket path may be (107 bytes)",
                    socket.display()
                ),
            );
        }
        let text = |v: &S<String>, key: &str| -> Result<Option<String>, ConfigError> {
            match v {
                Some(s) if s.get_ref().is_empty() || s.get_ref().len() > 255 => {
                    self.err(s.span(), key, "must be 1 to 255 bytes")
                }
                Some(s) => Ok(Some(s.get_ref().clone())),
                None => Ok(None),
            }
        };
        let out = DnstapOutput {
            socket,
            queue: self.int(&d.queue, "dnstap.queue", 4096, 1, 1 << 20)? as usize,
            identity: text(&d.identity, "dnstap.identity")?,
            version: text(&d.version, "dnstap.version")?
                .unwrap_or_else(|| format!("dnsteer {}", env!("CARGO_PKG_VERSION"))),
        };
        Ok((Some(out), rate))
    }

    fn nets(&self, v: &Spanned<Vec<String>>, key: &str) -> Result<Vec<IpNet>, ConfigError> {
        v.get_ref()
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .or_else(|_| {
                        self.err(
                            v.span(),
                            key,
                            format!("\"{s}\" is not an address or prefix"),
                        )
                    })
            })
            .collect()
    }

    fn ratelimit(&self, r: &RawRateLimit) -> Result<RateLimitConfig, ConfigError> {
        let action = match &r.action {
            None => LimitAction::Drop,
            Some(a) => match a.get_ref().as_str() {
                "drop" => LimitAction::Drop,
                "refused" => LimitAction::Refused,
                "truncate" => LimitAction::Truncate,
                other => {
                    return self.err(
                        a.span(),
                        "ratelimit.action",
                        format!("\"{other}\" is not \"drop\", \"refused\" or \"truncate\""),
                    );
                }
            },
        };
        let mode = match &r.mode {
            None => RateLimitMode::Qps,
            Some(m) => match m.get_ref().as_str() {
                "qps" => RateLimitMode::Qps,
                "rrl" => RateLimitMode::Rrl,
                other => {
                    return self.err(
                        m.span(),
                        "ratelimit.mode",
                        format!("\"{other}\" is not \"qps\" or \"rrl\""),
                    );
                }
            },
        };
        // RRL aggregates wider by default: it only thins identical responses (a real client
        // still gets every answer, over TCP at worst), and a spoofer varies addresses within
        // a network. qps mode blocks every query of a key, so its default is one address.
        let (v4, v6) = match mode {
            RateLimitMode::Qps => (32, 64),
            RateLimitMode::Rrl => (24, 56),
        };
        let qps = self.int(&r.qps, "ratelimit.qps", 100, 1, 10_000_000)? as u32;
        Ok(RateLimitConfig {
            enabled: r.enabled.unwrap_or(true),
            mode,
            qps,
            burst: self.int(&r.burst, "ratelimit.burst", 100, 1, 10_000_000)? as u32,
            ipv4_prefix: self.int(&r.ipv4_prefix, "ratelimit.ipv4_prefix", v4, 0, 32)? as u8,
            ipv6_prefix: self.int(&r.ipv6_prefix, "ratelimit.ipv6_prefix", v6, 0, 128)? as u8,
            block_for: self.dur(&r.block_for, "ratelimit.block_for", "60s", Duration::ZERO)?,
            action,
            max_tracked_sources: self.int(
                &r.max_tracked_sources,
                "ratelimit.max_tracked_sources",
                1_000_000,
                1024,
                1 << 28,
            )? as usize,
            exempt: match &r.exempt {
                None => Vec::new(),
                Some(e) => self.nets(e, "ratelimit.exempt")?,
            },
            dry_run: r.dry_run.unwrap_or(false),
            responses_per_second: self.int(
                &r.responses_per_second,
                "ratelimit.responses_per_second",
                20,
                1,
                1_000_000,
            )? as u32,
            window: self.int(&r.window, "ratelimit.window", 15, 1, 3600)? as u32,
            bytes_per_second: self.int(
                &r.bytes_per_second,
                "ratelimit.bytes_per_second",
                200_000,
                0,
                1 << 40,
            )? as u64,
            slip: self.int(&r.slip, "ratelimit.slip", 2, 0, 10)? as u8,
        })
    }

    fn upstream(&self, u: &RawUpstream) -> Result<UpstreamConfig, ConfigError> {
        let servers = self.upstream_servers(u)?;
        let policy = self.upstream_policy(u)?;
        let health_check_name = match &u.health_check_name {
            None => ".".to_string(),
            Some(n) => normalize_name(n.get_ref())
                .or_else(|m| self.err(n.span(), "upstream.health_check_name", m))?,
        };
        Ok(UpstreamConfig {
            policy,
            timeout: self.dur(
                &u.timeout,
                "upstream.timeout",
                "1s",
                Duration::from_millis(10),
            )?,
            attempts: self.int(&u.attempts, "upstream.attempts", 2, 1, 16)? as usize,
            health_check_interval: self.dur(
                &u.health_check_interval,
                "upstream.health_check_interval",
                "1s",
                Duration::from_millis(50),
            )?,
            health_check_name,
            health_check_must_resolve: u.health_check_must_resolve.unwrap_or(false),
            health_check_fall: self.int(
                &u.health_check_fall,
                "upstream.health_check_fall",
                3,
                1,
                100,
            )? as u32,
            health_check_rise: self.int(
                &u.health_check_rise,
                "upstream.health_check_rise",
                2,
                1,
                100,
            )? as u32,
            client_address: self.client_address(u)?,
            ecs_ipv4_prefix: self.int(&u.ecs_ipv4_prefix, "upstream.ecs_ipv4_prefix", 24, 0, 32)?
                as u8,
            ecs_ipv6_prefix: self.int(&u.ecs_ipv6_prefix, "upstream.ecs_ipv6_prefix", 56, 0, 128)?
                as u8,
            tcp_pool_size: self.int(&u.tcp_pool_size, "upstream.tcp_pool_size", 4, 1, 256)?
                as usize,
            servers,
        })
    }

    /// `upstream.servers`: distinct addresses, port 5353 when none is given.
    fn upstream_servers(&self, u: &RawUpstream) -> Result<Vec<SocketAddr>, ConfigError> {
        Ok(match &u.servers {
            None => vec!["127.0.0.1:5353".parse().unwrap()],
            Some(s) => {
                if s.get_ref().is_empty() {
                    return self.err(s.span(), "upstream.servers", "needs at least one server");
                }
                if s.get_ref().len() > MAX_UPSTREAM_SERVERS {
                    return self.err(
                        s.span(),
                        "upstream.servers",
                        format!(
                            "{} servers; at most {MAX_UPSTREAM_SERVERS} are supported",
                            s.get_ref().len()
                        ),
                    );
                }
                let mut out = Vec::new();
                for a in s.get_ref() {
                    let addr = a
                        .parse::<SocketAddr>()
                        .or_else(|_| a.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 5353)))
                        .or_else(|_| {
                            self.err(
                                s.span(),
                                "upstream.servers",
                                format!("\"{a}\" is not an ip or ip:port address"),
                            )
                        })?;
                    if out.contains(&addr) {
                        return self.err(
                            s.span(),
                            "upstream.servers",
                            format!("\"{a}\" is listed twice"),
                        );
                    }
                    out.push(addr);
                }
                out
            }
        })
    }

    fn upstream_policy(&self, u: &RawUpstream) -> Result<UpstreamPolicy, ConfigError> {
        Ok(match &u.policy {
            None => UpstreamPolicy::LeastOutstanding,
            Some(p) => {
                match p.get_ref().as_str() {
                    "least-outstanding" => UpstreamPolicy::LeastOutstanding,
                    "round-robin" => UpstreamPolicy::RoundRobin,
                    "first-available" => UpstreamPolicy::FirstAvailable,
                    other => {
                        return self.err(
                        p.span(),
                        "upstream.policy",
                        format!("\"{other}\" is not least-outstanding, round-robin or first-available"),
                    );
                    }
                }
            }
        })
    }

    fn probes(&self, p: &RawProbes) -> Result<ProbeDefaults, ConfigError> {
        let interval = self.dur(
            &p.interval,
            "probes.interval",
            "5s",
            Duration::from_millis(100),
        )?;
        let timeout = self.dur(&p.timeout, "probes.timeout", "2s", Duration::from_millis(1))?;
        let jitter = match &p.jitter {
            None => 0.1,
            Some(j) => {
                let v = *j.get_ref();
                if !(0.0..=0.5).contains(&v) {
                    return self.err(
                        j.span(),
                        "probes.jitter",
                        format!("{v} is not within 0.0–0.5"),
                    );
                }
                v
            }
        };
        Ok(ProbeDefaults {
            interval,
            timeout,
            minimum_failures: self.int(
                &p.minimum_failures,
                "probes.minimum_failures",
                1,
                1,
                1000,
            )? as u32,
            rise: self.int(&p.rise, "probes.rise", 1, 1, 1000)? as u32,
            max_concurrent: self.int(&p.max_concurrent, "probes.max_concurrent", 256, 1, 65536)?
                as usize,
            jitter,
            tls_verify: p.tls_verify.unwrap_or(false),
            max_redirects: self.int(&p.max_redirects, "probes.max_redirects", 5, 0, 50)? as u32,
            body_limit: self.int(&p.body_limit, "probes.body_limit", 65536, 0, 16 << 20)? as usize,
        })
    }

    fn zones(&self, z: &RawZones) -> Result<ZonesConfig, ConfigError> {
        let transfer = match &z.transfer {
            None => Vec::new(),
            Some(t) => t
                .get_ref()
                .iter()
                .map(|n| normalize_name(n).or_else(|m| self.err(t.span(), "zones.transfer", m)))
                .collect::<Result<_, _>>()?,
        };
        let notify_from = match &z.notify_from {
            None => None,
            Some(n) => Some(
                n.get_ref()
                    .iter()
                    .map(|a| {
                        a.parse::<IpAddr>().or_else(|_| {
                            self.err(
                                n.span(),
                                "zones.notify_from",
                                format!("\"{a}\" is not an address"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(ZonesConfig {
            transfer,
            refresh: self.dur(
                &z.refresh,
                "zones.refresh",
                "30s",
                Duration::from_millis(100),
            )?,
            notify_from,
        })
    }

    fn dnssec(&self, d: &RawDnssec, base: &Path) -> Result<DnssecConfig, ConfigError> {
        let mut keys = Vec::with_capacity(d.keys.len());
        for (i, k) in d.keys.iter().enumerate() {
            let zone = normalize_name(k.zone.get_ref())
                .or_else(|m| self.err(k.zone.span(), &format!("dnssec.keys[{i}].zone"), m))?;
            if k.file.get_ref().trim().is_empty() {
                return self.err(
                    k.file.span(),
                    &format!("dnssec.keys[{i}].file"),
                    "empty path",
                );
            }
            let file = resolve_path(base, k.file.get_ref());
            if keys.iter().any(|o: &DnssecKeyFile| o.file == file) {
                return self.err(
                    k.file.span(),
                    &format!("dnssec.keys[{i}].file"),
                    "the same key file is listed twice",
                );
            }
            keys.push(DnssecKeyFile { zone, file });
        }
        let own_key = match &d.own_key {
            None => None,
            Some(o) => Some(self.own_key(o, base)?),
        };
        Ok(DnssecConfig {
            own_key,
            keys,
            signature_cache_entries: self.int(
                &d.signature_cache_entries,
                "dnssec.signature_cache_entries",
                131_072,
                0,
                1 << 24,
            )? as usize,
        })
    }

    fn own_key(&self, o: &RawOwnKey, base: &Path) -> Result<OwnKeyConfig, ConfigError> {
        let mut zones: Vec<String> = Vec::new();
        for z in o.zones.get_ref() {
            let zone = normalize_name(z)
                .or_else(|m| self.err(o.zones.span(), "dnssec.own_key.zones", m))?;
            if zones.contains(&zone) {
                return self.err(
                    o.zones.span(),
                    "dnssec.own_key.zones",
                    format!("{zone} is listed twice"),
                );
            }
            zones.push(zone);
        }
        if zones.is_empty() {
            return self.err(
                o.zones.span(),
                "dnssec.own_key.zones",
                "list at least one zone",
            );
        }
        let path = |v: &Spanned<String>, key: &str| {
            if v.get_ref().trim().is_empty() {
                self.err(v.span(), key, "empty path")
            } else {
                Ok(resolve_path(base, v.get_ref()))
            }
        };
        let key_dir = path(&o.key_dir, "dnssec.own_key.key_dir")?;
        let state_dir = match &o.state_dir {
            Some(s) => path(s, "dnssec.own_key.state_dir")?,
            None => key_dir.clone(),
        };
        let api = parse_api_url(o.api_url.get_ref())
            .or_else(|m| self.err(o.api_url.span(), "dnssec.own_key.api_url", m))?;
        let server_id = match &o.server_id {
            None => "localhost".to_string(),
            Some(s)
                if s.get_ref().is_empty()
                    || !s
                        .get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                return self.err(
                    s.span(),
                    "dnssec.own_key.server_id",
                    "letters, digits, '-', '_' and '.' only",
                );
            }
            Some(s) => s.get_ref().clone(),
        };
        Ok(OwnKeyConfig {
            zones,
            key_dir,
            state_dir,
            api,
            api_key_file: path(&o.api_key_file, "dnssec.own_key.api_key_file")?,
            server_id,
            check_interval: self.dur(
                &o.check_interval,
                "dnssec.own_key.check_interval",
                "60s",
                Duration::from_millis(100),
            )?,
            retire_after: self.dur(
                &o.retire_after,
                "dnssec.own_key.retire_after",
                "0s",
                Duration::ZERO,
            )?,
        })
    }

    fn records(&self, recs: &[RawRecord]) -> Result<Vec<RecordSpec>, ConfigError> {
        let mut out = Vec::with_capacity(recs.len());
        for (index, r) in recs.iter().enumerate() {
            let key = |k: &str| format!("records[{index}].{k}");
            let name = normalize_name(r.name.get_ref())
                .or_else(|m| self.err(r.name.span(), &key("name"), m))?;
            let rtype = RecordType::parse(r.rtype.get_ref()).map_or_else(
                || {
                    self.err(
                        r.rtype.span(),
                        &key("type"),
                        format!(
                            "\"{}\" is not A, AAAA, CNAME, TXT or LUA",
                            r.rtype.get_ref()
                        ),
                    )
                },
                Ok,
            )?;
            let ttl = self.int(&r.ttl, &key("ttl"), 300, 0, i64::from(i32::MAX))? as u32;
            let (body, span) = match (&r.lua, &r.content) {
                (Some(l), None) => (RecordBody::Lua(l.get_ref().clone()), l.span()),
                (None, Some(c)) => {
                    if c.get_ref().is_empty() {
                        return self.err(c.span(), &key("content"), "needs at least one value");
                    }
                    (RecordBody::Content(c.get_ref().clone()), c.span())
                }
                (Some(l), Some(_)) => {
                    return self.err(
                        l.span(),
                        &key("lua"),
                        "give either lua or content, not both",
                    );
                }
                (None, None) => {
                    return self.err(
                        r.name.span(),
                        &format!("records[{index}]"),
                        "needs lua or content",
                    );
                }
            };
            if rtype == RecordType::Lua && matches!(body, RecordBody::Content(_)) {
                return self.err(
                    span,
                    &key("content"),
                    "a record of type LUA holds code for include(): give lua, not content",
                );
            }
            out.push(RecordSpec {
                name,
                rtype,
                ttl,
                body,
                origin: RecordOrigin::Config { index, span },
            });
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// [flood] and admin access (flood rules, runtime blocks)
// ---------------------------------------------------------------------------------------------

/// Most distinct `qtype` values the `qtype` flood rules may watch (each has its own sketch).
pub const MAX_FLOOD_QTYPES: usize = 2;

/// `[flood]`: rules the control plane evaluates every `interval` over per-worker counters.
#[derive(Debug, Clone, PartialEq)]
pub struct FloodConfig {
    /// How often the rules are evaluated (and expired blocks removed).
    pub interval: Duration,
    /// Sources are counted and blocked by prefix: this many leading bits of an IPv4 address.
    pub ipv4_prefix: u8,
    /// And of an IPv6 address (at most 64: a prefix is counted as one 64-bit key).
    pub ipv6_prefix: u8,
    /// Sources never blocked by a rule (operators may still block them).
    pub exclude: Vec<IpNet>,
    pub rules: Vec<FloodRule>,
    /// The qtypes of `qtype` rules, 0 = unused slot (the packet path compares against these).
    pub watched_qtypes: [u16; MAX_FLOOD_QTYPES],
}

impl FloodConfig {
    /// Whether workers count anything at all (no rules: the packet path skips the sketches).
    pub fn counting(&self) -> bool {
        !self.rules.is_empty()
    }
}

/// One `[[flood.rules]]` entry: over `threshold` per second (averaged over `window`) → a block
/// with `action` for `duration`.
#[derive(Debug, Clone, PartialEq)]
pub struct FloodRule {
    /// Shown as the block's origin (`rule:<name>`); defaults to the kind's label.
    pub name: String,
    pub kind: FloodKind,
    pub threshold: f64,
    pub window: Duration,
    pub action: BlockAction,
    pub duration: Duration,
}

/// What a flood rule measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodKind {
    /// NXDOMAIN answers per source prefix.
    Nxdomain,
    /// NXDOMAIN answers from PowerDNS per zone, from all sources (random-subdomain attacks):
    /// the block covers the zone's names that would go to PowerDNS uncached.
    ZoneNxdomain,
    /// Response bytes per source prefix.
    Bytes,
    /// Queries of one type per source prefix (`qtype`; its index in `watched_qtypes`).
    Qtype(u16, usize),
}

impl FloodKind {
    pub fn label(self) -> &'static str {
        match self {
            FloodKind::Nxdomain => "nxdomain",
            FloodKind::ZoneNxdomain => "zone_nxdomain",
            FloodKind::Bytes => "bytes",
            FloodKind::Qtype(..) => "qtype",
        }
    }
}

/// What a block does to a matching query (a source not proven by TCP or a server cookie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockAction {
    Drop,
    Refused,
    /// An empty answer with TC=1: real clients retry over TCP, which is never blocked.
    Truncate,
    /// Answered from the packet cache when it holds the answer, REFUSED otherwise.
    CacheOnly,
}

impl BlockAction {
    pub const ALL: [BlockAction; 4] = [
        BlockAction::Drop,
        BlockAction::Refused,
        BlockAction::Truncate,
        BlockAction::CacheOnly,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BlockAction::Drop => "drop",
            BlockAction::Refused => "refused",
            BlockAction::Truncate => "truncate",
            BlockAction::CacheOnly => "cache_only",
        }
    }

    pub fn parse(s: &str) -> Option<BlockAction> {
        BlockAction::ALL.into_iter().find(|a| a.label() == s)
    }
}

/// A bearer token read from a file; never printed (`Debug` shows its length only).
#[derive(Clone, PartialEq)]
pub(crate) struct Secret(pub(crate) Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Who may use the block endpoints of the admin listener.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct AdminAccess {
    /// `[metrics].admin_token_file`'s content (trimmed); None: the write endpoints do not exist.
    pub(crate) token: Option<Secret>,
    /// `[metrics].admin_token_file` itself, so the reload poll notices a rotated token.
    pub(crate) token_file: Option<PathBuf>,
    /// `[metrics].blocks_read_open`: `GET /blocks` without the token.
    pub(crate) blocks_read_open: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlood {
    interval: S<String>,
    ipv4_prefix: S<i64>,
    ipv6_prefix: S<i64>,
    exclude: S<Vec<String>>,
    #[serde(default)]
    rules: Vec<Spanned<RawFloodRule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFloodRule {
    name: S<String>,
    kind: S<String>,
    qtype: S<String>,
    threshold: S<f64>,
    window: S<String>,
    action: S<String>,
    duration: S<String>,
}

/// Query type code of a flood rule's `qtype` (a mnemonic or `TYPEn`).
fn flood_qtype(s: &str) -> Option<u16> {
    const NAMES: [(&str, u16); 14] = [
        ("A", 1),
        ("NS", 2),
        ("CNAME", 5),
        ("SOA", 6),
        ("PTR", 12),
        ("MX", 15),
        ("TXT", 16),
        ("AAAA", 28),
        ("SRV", 33),
        ("DS", 43),
        ("RRSIG", 46),
        ("DNSKEY", 48),
        ("HTTPS", 65),
        ("ANY", 255),
    ];
    let s = s.to_ascii_uppercase();
    if let Some(n) = s.strip_prefix("TYPE") {
        return n.parse().ok();
    }
    NAMES.iter().find(|(n, _)| *n == s).map(|&(_, c)| c)
}

impl Validator<'_> {
    fn flood(&self, f: &RawFlood) -> Result<FloodConfig, ConfigError> {
        let mut watched = [0u16; MAX_FLOOD_QTYPES];
        let mut rules = Vec::with_capacity(f.rules.len());
        for (i, r) in f.rules.iter().enumerate() {
            rules.push(self.flood_rule(i, r, &mut watched)?);
        }
        Ok(FloodConfig {
            interval: self.dur(
                &f.interval,
                "flood.interval",
                "1s",
                Duration::from_millis(100),
            )?,
            ipv4_prefix: self.int(&f.ipv4_prefix, "flood.ipv4_prefix", 32, 8, 32)? as u8,
            ipv6_prefix: self.int(&f.ipv6_prefix, "flood.ipv6_prefix", 56, 16, 64)? as u8,
            exclude: match &f.exclude {
                None => Vec::new(),
                Some(e) => self.nets(e, "flood.exclude")?,
            },
            rules,
            watched_qtypes: watched,
        })
    }

    fn flood_rule(
        &self,
        i: usize,
        r: &Spanned<RawFloodRule>,
        watched: &mut [u16; MAX_FLOOD_QTYPES],
    ) -> Result<FloodRule, ConfigError> {
        let key = |k: &str| format!("flood.rules[{i}].{k}");
        let raw = r.get_ref();
        let Some(kind) = &raw.kind else {
            return self.err(r.span(), &key("kind"), "is required");
        };
        let kind = match (kind.get_ref().as_str(), &raw.qtype) {
            ("nxdomain", None) => FloodKind::Nxdomain,
            ("zone_nxdomain", None) => FloodKind::ZoneNxdomain,
            ("bytes", None) => FloodKind::Bytes,
            ("qtype", Some(q)) => {
                let code = flood_qtype(q.get_ref()).map_or_else(
                    || {
                        self.err(
                            q.span(),
                            &key("qtype"),
                            format!("\"{}\" is not a query type", q.get_ref()),
                        )
                    },
                    Ok,
                )?;
                let Some(slot) = watched.iter().position(|&w| w == code || w == 0) else {
                    return self.err(
                        q.span(),
                        &key("qtype"),
                        format!("at most {MAX_FLOOD_QTYPES} distinct query types can be watched"),
                    );
                };
                watched[slot] = code;
                FloodKind::Qtype(code, slot)
            }
            ("qtype", None) => {
                return self.err(r.span(), &key("qtype"), "is required for kind \"qtype\"");
            }
            ("nxdomain" | "zone_nxdomain" | "bytes", Some(q)) => {
                return self.err(q.span(), &key("qtype"), "only applies to kind \"qtype\"");
            }
            (other, _) => {
                return self.err(
                    kind.span(),
                    &key("kind"),
                    format!(
                        "\"{other}\" is not \"nxdomain\", \"zone_nxdomain\", \"bytes\" or \"qtype\""
                    ),
                );
            }
        };
        let Some(threshold) = &raw.threshold else {
            return self.err(r.span(), &key("threshold"), "is required");
        };
        let t = *threshold.get_ref();
        if !(t.is_finite() && t > 0.0) {
            return self.err(
                threshold.span(),
                &key("threshold"),
                "must be a positive number (per second)",
            );
        }
        let action = match &raw.action {
            None => BlockAction::Refused,
            Some(a) => BlockAction::parse(a.get_ref()).map_or_else(
                || {
                    self.err(
                        a.span(),
                        &key("action"),
                        format!(
                            "\"{}\" is not \"drop\", \"refused\", \"truncate\" or \"cache_only\"",
                            a.get_ref()
                        ),
                    )
                },
                Ok,
            )?,
        };
        let window = self.dur(&raw.window, &key("window"), "10s", Duration::from_secs(1))?;
        if window > Duration::from_secs(600) {
            return self.err(r.span(), &key("window"), "must be at most 10m");
        }
        Ok(FloodRule {
            name: raw
                .name
                .as_ref()
                .map_or_else(|| kind.label().to_string(), |n| n.get_ref().clone()),
            kind,
            threshold: t,
            window,
            action,
            duration: self.dur(
                &raw.duration,
                &key("duration"),
                "60s",
                Duration::from_secs(1),
            )?,
        })
    }

    fn admin(&self, m: &RawMetrics, base: &Path) -> Result<AdminAccess, ConfigError> {
        let token_file = m
            .admin_token_file
            .as_ref()
            .map(|p| resolve_path(base, p.get_ref()));
        let token = match &m.admin_token_file {
            None => None,
            Some(p) => {
                let path = resolve_path(base, p.get_ref());
                let text = std::fs::read(&path).or_else(|e| {
                    self.err(
                        p.span(),
                        "metrics.admin_token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let token = text.trim_ascii().to_vec();
                if token.len() < 16 {
                    return self.err(
                        p.span(),
                        "metrics.admin_token_file",
                        "the token must be at least 16 bytes",
                    );
                }
                Some(Secret(token))
            }
        };
        Ok(AdminAccess {
            token,
            token_file,
            blocks_read_open: m.blocks_read_open.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/dnsteer/dnsteer.toml"))
    }

    #[test]
    fn empty_file_gives_contract_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.restart.listen.len(), 2);
        assert_eq!(c.restart.max_udp_payload, 1232);
        assert_eq!(c.restart.tcp.max_connections, 10000);
        assert_eq!(c.restart.tcp.max_connections_per_client, 100);
        assert_eq!(c.restart.tcp.idle_timeout, Duration::from_secs(10));
        assert!(c.restart.workers >= 1);
        assert!(c.ratelimit.enabled);
        assert_eq!((c.ratelimit.qps, c.ratelimit.burst), (100, 100));
        assert_eq!((c.ratelimit.ipv4_prefix, c.ratelimit.ipv6_prefix), (32, 64));
        assert_eq!(c.ratelimit.block_for, Duration::from_secs(60));
        assert_eq!(c.ratelimit.action, LimitAction::Drop);
        assert_eq!(c.ratelimit.max_tracked_sources, 1_000_000);
        assert_eq!(c.upstream.servers, vec!["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(c.upstream.policy, UpstreamPolicy::LeastOutstanding);
        assert_eq!(
            (c.upstream.ecs_ipv4_prefix, c.upstream.ecs_ipv6_prefix),
            (24, 56)
        );
        assert_eq!(c.upstream.client_address, ClientAddress::Ecs);
        assert!(!c.restart.cache.enabled);
        assert!(!c.restart.cache.age_ttls);
        assert_eq!(c.logging.query_sample_rate, 0.01);
        assert_eq!(c.logging.format, LogFormat::Json);
        assert_eq!(c.probes.interval, Duration::from_secs(5));
        assert_eq!(c.probes.timeout, Duration::from_secs(2));
        assert_eq!(c.zones.refresh, Duration::from_secs(30));
        assert!(c.geoip.is_none());
        assert!(c.restart.dnstap.is_none());
    }

    #[test]
    fn dnstap_defaults_and_relative_socket() {
        let c = parse("[dnstap]\nsocket = \"run/tap.sock\"\n").unwrap();
        let d = c.restart.dnstap.unwrap();
        assert_eq!(d.socket, PathBuf::from("/etc/dnsteer/run/tap.sock"));
        assert_eq!(d.queue, 4096);
        assert_eq!(d.identity, None);
        assert_eq!(d.version, format!("dnsteer {}", env!("CARGO_PKG_VERSION")));
        assert_eq!(c.dnstap_sample_rate, 0.01);
        let c = parse(
            "[dnstap]\nsocket = \"/t.sock\"\nsample_rate = 1.0\nqueue = 8\nidentity = \"ns1\"\nversion = \"x\"\n",
        )
        .unwrap();
        let d = c.restart.dnstap.unwrap();
        assert_eq!(
            (d.queue, d.identity.as_deref(), d.version.as_str()),
            (8, Some("ns1"), "x")
        );
        assert_eq!(c.dnstap_sample_rate, 1.0);
    }

    #[test]
    fn unknown_key_is_located() {
        let e = parse("[server]\nlisten = [\"127.0.0.1:53\"]\nworkres = 2\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains(":3:"), "{s}");
        assert!(s.contains("workres"), "{s}");
    }

    #[test]
    fn ratelimit_mode_picks_its_prefix_defaults() {
        let c = parse("[ratelimit]\nmode = \"rrl\"\n").unwrap().ratelimit;
        assert_eq!(c.mode, RateLimitMode::Rrl);
        assert_eq!((c.ipv4_prefix, c.ipv6_prefix), (24, 56));
        assert_eq!((c.responses_per_second, c.window, c.slip), (20, 15, 2));
        assert_eq!(c.bytes_per_second, 200_000);
        let c = parse("[ratelimit]\nmode = \"rrl\"\nipv4_prefix = 32\n")
            .unwrap()
            .ratelimit;
        assert_eq!(
            (c.ipv4_prefix, c.ipv6_prefix),
            (32, 56),
            "an explicit prefix wins"
        );
        let c = parse("").unwrap().ratelimit;
        assert_eq!(c.mode, RateLimitMode::Qps);
        let e = parse("[ratelimit]\nmode = \"bind\"\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("ratelimit.mode: \"bind\" is not \"qps\" or \"rrl\"")
        );
    }

    #[test]
    fn bad_value_names_key_line_and_column() {
        let e = parse("[ratelimit]\naction = \"block\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/dnsteer/dnsteer.toml:2:10: ratelimit.action: \"block\" is not \"drop\", \"refused\" or \"truncate\""
        );
    }

    #[test]
    fn client_address_and_its_add_ecs_alias() {
        let mode = |t: &str| parse(&format!("[upstream]\n{t}")).map(|c| c.upstream.client_address);
        assert_eq!(mode("").unwrap(), ClientAddress::Ecs);
        assert_eq!(mode("add_ecs = false\n").unwrap(), ClientAddress::None);
        assert_eq!(mode("add_ecs = true\n").unwrap(), ClientAddress::Ecs);
        assert_eq!(
            mode("client_address = \"proxy\"\n").unwrap(),
            ClientAddress::Proxy
        );
        assert_eq!(
            mode("client_address = \"none\"\nadd_ecs = false\n").unwrap(),
            ClientAddress::None
        );
        let e = mode("client_address = \"proxy\"\nadd_ecs = true\n").unwrap_err();
        assert!(e.to_string().contains("upstream.add_ecs"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(
            normalize_name("API.Example.test").unwrap(),
            "api.example.test."
        );
        assert!(normalize_name("a..b").is_err());
        assert!(normalize_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn records_and_relative_geoip_path() {
        let c = parse(
            "[geoip]\ndatabase = \"geo/city.mmdb\"\n[[records]]\nname = \"Static.Example.Test\"\ntype = \"a\"\nttl = 30\ncontent = [\"192.0.2.1\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.geoip.unwrap().database,
            PathBuf::from("/etc/dnsteer/geo/city.mmdb")
        );
        assert_eq!(c.records[0].name, "static.example.test.");
        assert_eq!(c.records[0].rtype, RecordType::A);
        assert_eq!(c.records[0].ttl, 30);
    }

    #[test]
    fn cookies_off_by_default_and_paths_relative_to_the_file() {
        assert!(parse("").unwrap().cookies.is_none());
        // Off: the rest of the table is not needed.
        assert!(
            parse("[cookies]\nenabled = false\n")
                .unwrap()
                .cookies
                .is_none()
        );
        let c = parse("[cookies]\nenabled = true\nsecret_file = \"cookie/secret\"\n")
            .unwrap()
            .cookies
            .unwrap();
        assert_eq!(c.secret_file, PathBuf::from("/etc/dnsteer/cookie/secret"));
        assert_eq!(c.previous_secret_file, None);
        let c = parse(
            "[cookies]\nenabled = true\nsecret_file = \"/s/new\"\nprevious_secret_file = \"/s/old\"\n",
        )
        .unwrap()
        .cookies
        .unwrap();
        assert_eq!(c.previous_secret_file, Some(PathBuf::from("/s/old")));
        let e = parse("[cookies]\nenabled = true\nsecret_file = \" \"\n").unwrap_err();
        assert!(
            e.to_string().contains("cookies.secret_file: empty path"),
            "{e}"
        );
    }

    #[test]
    fn record_needs_exactly_one_body() {
        assert!(parse("[[records]]\nname = \"a.test\"\ntype = \"A\"\n").is_err());
        assert!(parse("[[records]]\nname = \"a.test\"\ntype = \"A\"\nlua = \"all({'192.0.2.1'})\"\ncontent = [\"192.0.2.1\"]\n").is_err());
    }
}
