//! dnsteer's own ZSK per zone (`[dnssec.own_key]`): key files in `key_dir`, generated when a
//! zone has none, published in PowerDNS through its API (inactive: PowerDNS never signs with
//! it), rolled over by dropping a newer key file in, and retired from PowerDNS once the newer
//! key has signed for long enough. Runs on the control plane only; the signer choice itself is
//! [`crate::dnssec::choose`], fed by the snapshot build.
//!
//! Also keeps the first-seen times of DNSKEYs on disk (`state_dir`), so a restart does not
//! restart the wait of a key published long before.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use prometheus::proto::{MetricFamily, MetricType};
use zeroize::Zeroizing;

use super::pdns_api::{ApiError, PdnsApi};
use super::unix_now;
use crate::config::OwnKeyConfig;
use crate::dnssec::{Algorithm, FLAGS_ZSK, KeyError, SigningKey};
use crate::telemetry::metrics::family;

/// The first-seen state file in `state_dir`.
pub(crate) const STATE_FILE: &str = "dnsteer-dnskey-first-seen.json";
/// First retry after a failed round; doubles up to `check_interval`.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Why a zone's own key could not be kept or published.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OwnKeyError {
    #[error("cannot read key_dir {dir}: {source}")]
    ReadDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("own key file {file}: {source}")]
    BadKey {
        file: String,
        #[source]
        source: KeyError,
    },
    #[error("own key file {file}: signatures made with this key do not verify")]
    SelfCheck { file: String },
    #[error(
        "cannot write a new key to {file}: {source} (a read-only key_dir needs a key made with `dnsteer generate-key`)"
    )]
    Write {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a key: {0}")]
    Generate(#[source] KeyError),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl OwnKeyError {
    /// Every kind, own and API: the metric shows them all from the start.
    pub(crate) const KINDS: [&'static str; 11] = [
        "read_dir",
        "bad_key",
        "write",
        "generate",
        "api_key_file",
        "connect",
        "timeout",
        "http",
        "unauthorized",
        "status",
        "bad_response",
    ];

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            OwnKeyError::ReadDir { .. } => "read_dir",
            OwnKeyError::BadKey { .. } | OwnKeyError::SelfCheck { .. } => "bad_key",
            OwnKeyError::Write { .. } => "write",
            OwnKeyError::Generate(_) => "generate",
            OwnKeyError::Api(e) => e.kind(),
        }
    }
}

/// One key file of `key_dir`.
pub(crate) struct OwnKeyFile {
    pub(crate) path: PathBuf,
    pub(crate) key: Arc<SigningKey>,
    /// `Created:` stamp (`YYYYMMDDHHMMSS`, UTC; empty when the file has none): newest signs.
    pub(crate) created: String,
    pub(crate) tag: u16,
}

/// `ZONE-<tag>.private`, ZONE without its trailing dot.
pub fn file_name(zone: &str, tag: u16) -> String {
    format!("{}-{tag}.private", zone.trim_end_matches('.'))
}

/// The zone's key files in `dir`, newest first (by `Created:`, then tag). A missing directory
/// holds no keys; an unreadable or broken key file fails the whole zone (nothing half-read
/// signs).
pub(crate) fn read_zone_keys(dir: &Path, zone: &str) -> Result<Vec<OwnKeyFile>, OwnKeyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(OwnKeyError::ReadDir {
                dir: dir.display().to_string(),
                source,
            });
        }
    };
    let prefix = zone.trim_end_matches('.');
    let mut keys = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((z, tag)) = name
            .strip_suffix(".private")
            .and_then(|stem| stem.rsplit_once('-'))
        else {
            continue;
        };
        if !z.eq_ignore_ascii_case(prefix) || tag.parse::<u16>().is_err() {
            continue;
        }
        let path = entry.path();
        let file = path.display().to_string();
        let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|source| {
            OwnKeyError::ReadDir {
                dir: file.clone(),
                source,
            }
        })?);
        let key =
            SigningKey::from_private_key_file(&text).map_err(|source| OwnKeyError::BadKey {
                file: file.clone(),
                source,
            })?;
        if !crate::dnssec::self_check(&key) {
            return Err(OwnKeyError::SelfCheck { file });
        }
        let created = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Created:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        keys.push(OwnKeyFile {
            path,
            tag: key.key_tag(FLAGS_ZSK),
            key: Arc::new(key),
            created,
        });
    }
    keys.sort_by(|a, b| (&b.created, b.tag).cmp(&(&a.created, a.tag)));
    Ok(keys)
}

/// A new ECDSAP256SHA256 key written to `dir` as [`file_name`] (mode 0600, atomically).
pub(crate) fn generate(dir: &Path, zone: &str) -> Result<OwnKeyFile, OwnKeyError> {
    let key = SigningKey::generate(Algorithm::EcdsaP256Sha256).map_err(OwnKeyError::Generate)?;
    let tag = key.key_tag(FLAGS_ZSK);
    let path = dir.join(file_name(zone, tag));
    let created = created_stamp(unix_now());
    write_key_file(&path, &key, &created).map_err(|source| OwnKeyError::Write {
        file: path.display().to_string(),
        source,
    })?;
    Ok(OwnKeyFile {
        path,
        key: Arc::new(key),
        created,
        tag,
    })
}

/// Writes `key` (BIND v1.2 text plus a `Created:` line) to `path` with mode 0600: a temp file
/// in the same directory, then a rename, so a reader never sees half a key. Refuses to replace
/// an existing file.
pub fn write_key_file(path: &Path, key: &SigningKey, created: &str) -> std::io::Result<()> {
    if path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the file exists",
        ));
    }
    let text = Zeroizing::new(format!("{}Created: {created}\n", key.to_private_key_file()));
    write_atomically(path, text.as_bytes(), 0o600)
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `YYYYMMDDHHMMSS` (UTC), BIND's `Created:` format; sorts as text in time order.
pub fn created_stamp(unix: u64) -> String {
    crate::dnssec::format_dnssec_time(u32::try_from(unix).unwrap_or(u32::MAX))
}

// ---------------------------------------------------------------------------------------------
// First-seen state
// ---------------------------------------------------------------------------------------------

/// (zone, DNSKEY RDATA) → Unix seconds, as in [`crate::state::Snapshot::dnskey_first_seen`].
pub(crate) type FirstSeen = HashMap<(String, Vec<u8>), u64>;

#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    first_seen: Vec<SeenEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SeenEntry {
    zone: String,
    /// DNSKEY RDATA, base64.
    dnskey: String,
    /// For people reading the file.
    key_tag: u16,
    unix: u64,
}

/// The persisted first-seen times; empty when the file is missing or unreadable (a key then
/// waits one DNSKEY TTL again, which is safe).
pub(crate) fn read_first_seen(state_dir: &Path) -> FirstSeen {
    let path = state_dir.join(STATE_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return FirstSeen::new();
    };
    match serde_json::from_str::<StateFile>(&text) {
        Ok(state) => state
            .first_seen
            .into_iter()
            .filter_map(|e| Some(((e.zone, BASE64.decode(e.dnskey).ok()?), e.unix)))
            .collect(),
        Err(e) => {
            tracing::warn!(target: "dnsteer::dnssec", file = %path.display(), error = %e, "unreadable first-seen state; keys wait one DNSKEY TTL again");
            FirstSeen::new()
        }
    }
}

/// Writes the first-seen times (atomically, 0600); a failure is logged, not fatal.
pub(crate) fn write_first_seen(state_dir: &Path, seen: &FirstSeen) {
    let mut first_seen: Vec<SeenEntry> = seen
        .iter()
        .map(|((zone, rdata), unix)| SeenEntry {
            zone: zone.clone(),
            key_tag: crate::dnssec::key_tag(rdata),
            dnskey: BASE64.encode(rdata),
            unix: *unix,
        })
        .collect();
    first_seen.sort_by(|a, b| (&a.zone, a.key_tag).cmp(&(&b.zone, b.key_tag)));
    let text = serde_json::to_string_pretty(&StateFile { first_seen }).unwrap_or_default();
    let path = state_dir.join(STATE_FILE);
    if let Err(e) = write_atomically(&path, text.as_bytes(), 0o600) {
        tracing::warn!(target: "dnsteer::dnssec", file = %path.display(), error = %e, "cannot persist DNSKEY first-seen times; after a restart keys wait one DNSKEY TTL again");
    }
}

// ---------------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------------

/// Per zone, for `/status` (key tags only, never key material).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct ZoneStatus {
    /// Own keys in key_dir, newest first.
    pub(crate) key_tags: Vec<u16>,
    /// Whether the newest key is in PowerDNS (as last seen through the API).
    pub(crate) published: bool,
    /// Older key being kept published until this time, then deleted.
    pub(crate) retiring: Option<(u16, u64)>,
    pub(crate) last_ok_unix: Option<u64>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_kind: Option<&'static str>,
    pub(crate) last_error_unix: Option<u64>,
    pub(crate) failures: u64,
    /// Note for the operator (e.g. a retired key file that could not be removed).
    pub(crate) note: Option<String>,
}

/// What the own-key loop reports.
#[derive(Default)]
pub(crate) struct OwnKeys {
    zones: Mutex<BTreeMap<String, ZoneStatus>>,
    /// Failed rounds by (zone, error kind), for `/metrics`.
    failures: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl OwnKeys {
    pub(crate) fn status(&self) -> BTreeMap<String, ZoneStatus> {
        self.zones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Failed own-key rounds per `[dnssec.own_key]` zone and error kind (zeros from the start,
    /// so an alert on `increase()` sees the first failure; declared even without own-key zones).
    pub(crate) fn families(&self, cfg: Option<&OwnKeyConfig>) -> Vec<MetricFamily> {
        let zones = cfg.map_or(&[][..], |c| &c.zones[..]);
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut series = Vec::new();
        for zone in zones {
            for kind in OwnKeyError::KINDS {
                let n = failures.get(&(zone.clone(), kind)).copied().unwrap_or(0);
                series.push((
                    vec![("zone", zone.clone()), ("kind", kind.to_string())],
                    n as f64,
                ));
            }
        }
        vec![family(
            "dnsteer_dnssec_own_key_errors_total",
            "Failed rounds keeping dnsteer's own ZSK in key_dir and published in PowerDNS, by zone and error kind.",
            MetricType::COUNTER,
            series,
        )]
    }

    pub(crate) fn update(&self, zone: &str, f: impl FnOnce(&mut ZoneStatus)) {
        let mut zones = self
            .zones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(zones.entry(zone.to_string()).or_default());
    }

    pub(crate) fn failed(&self, zone: &str, e: &OwnKeyError) {
        *self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((zone.to_string(), e.kind()))
            .or_default() += 1;
        self.update(zone, |s| {
            s.last_error = Some(e.to_string());
            s.last_error_kind = Some(e.kind());
            s.last_error_unix = Some(unix_now());
            s.failures += 1;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------------------------

/// Own keys of every `[dnssec.own_key]` zone, newest first, for the snapshot build. A zone
/// whose key_dir cannot be read signs with none of them (its DO=1 queries go to PowerDNS); the
/// own-key loop reports why.
pub(crate) fn load_for_build(cfg: Option<&OwnKeyConfig>) -> HashMap<String, Vec<Arc<SigningKey>>> {
    let mut out = HashMap::new();
    let Some(cfg) = cfg else {
        return out;
    };
    for zone in &cfg.zones {
        match read_zone_keys(&cfg.key_dir, zone) {
            Ok(keys) => {
                out.insert(zone.clone(), keys.into_iter().map(|k| k.key).collect());
            }
            Err(e) => {
                tracing::warn!(target: "dnsteer::dnssec", zone = %zone, error = %e, "own keys not used");
            }
        }
    }
    out
}

/// `check-config`'s part for `[dnssec.own_key]`: every key file already in key_dir loads and
/// verifies, the API key file reads and is not empty, and a zone without a key has a key_dir
/// that exists (at run time its key is generated there). Returns what was found, per zone.
pub fn check(cfg: &crate::config::DnssecConfig) -> Result<Vec<String>, String> {
    let Some(cfg) = cfg.own_key.as_ref() else {
        return Ok(Vec::new());
    };
    PdnsApi::new(&cfg.api, &cfg.server_id, &cfg.api_key_file)
        .map_err(|e| format!("dnssec.own_key.api_key_file: {e}"))?;
    let mut found = Vec::new();
    for zone in &cfg.zones {
        let keys =
            read_zone_keys(&cfg.key_dir, zone).map_err(|e| format!("dnssec.own_key: {e}"))?;
        if keys.is_empty() && !cfg.key_dir.is_dir() {
            return Err(format!(
                "dnssec.own_key.key_dir {} is not a directory and holds no key for {zone}",
                cfg.key_dir.display()
            ));
        }
        let tags: Vec<String> = keys.iter().map(|k| k.tag.to_string()).collect();
        found.push(if tags.is_empty() {
            format!("{zone}: no own key yet (one will be generated)")
        } else {
            format!("{zone}: own keys {}", tags.join(", "))
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_stamps_are_utc_civil_time() {
        assert_eq!(created_stamp(0), "19700101000000");
        assert_eq!(created_stamp(951_782_400), "20000229000000");
        assert_eq!(created_stamp(1_700_000_000), "20231114221320");
    }

    #[test]
    fn key_files_round_trip_newest_first_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let zone = "own.test.";
        let a = SigningKey::generate(Algorithm::EcdsaP256Sha256).unwrap();
        let b = SigningKey::generate(Algorithm::EcdsaP256Sha256).unwrap();
        let path_a = dir.path().join(file_name(zone, a.key_tag(FLAGS_ZSK)));
        let path_b = dir.path().join(file_name(zone, b.key_tag(FLAGS_ZSK)));
        write_key_file(&path_a, &a, "20240101000000").unwrap();
        write_key_file(&path_b, &b, "20250101000000").unwrap();
        assert!(
            write_key_file(&path_b, &b, "20250101000000").is_err(),
            "never overwrites"
        );
        // Another zone's key and stray files are not this zone's.
        write_key_file(&dir.path().join(file_name("x.own.test.", 1)), &a, "2026").unwrap();
        std::fs::write(dir.path().join("README"), "").unwrap();
        let keys = read_zone_keys(dir.path(), zone).unwrap();
        let tags: Vec<u16> = keys.iter().map(|k| k.tag).collect();
        assert_eq!(tags, [b.key_tag(FLAGS_ZSK), a.key_tag(FLAGS_ZSK)]);
        assert_eq!(keys[0].key.public_key(), b.public_key());
        let mode = std::fs::metadata(&path_a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn first_seen_survives_a_write_and_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_first_seen(dir.path()).is_empty());
        let mut seen = FirstSeen::new();
        seen.insert(("own.test.".into(), vec![1, 0, 3, 13, 9, 9]), 1234);
        write_first_seen(dir.path(), &seen);
        assert_eq!(read_first_seen(dir.path()), seen);
        std::fs::write(dir.path().join(STATE_FILE), "not json").unwrap();
        assert!(read_first_seen(dir.path()).is_empty());
    }
}
