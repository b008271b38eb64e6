//! Builds a complete snapshot from a validated config: compile the records, open GeoIP, probe
//! new targets, learn zone facts, link. Used at start, on reload and after a zone transfer.

use std::sync::Arc;

use std::collections::HashMap;

use crate::config::{Config, ConfigError, DnssecConfig, RecordSpec};
use crate::dns::cookie::{CookieSecrets, SecretError, parse_secret};
use crate::dnssec::{KeyError, Published, SigningKey};
use crate::forward::upstream::UpstreamSet;
use crate::state::Snapshot;
use crate::steer::geo::{GeoDb, GeoError};
use crate::steer::probes::ProbePool;
use crate::steer::records::{self, RecordTable};
use crate::steer::wildcard::ZoneNames;
use crate::telemetry::dns_metrics::ZoneTable;
use crate::telemetry::querylog;

/// Why a snapshot could not be built (nothing was published).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("geoip: {0}")]
    Geo(#[from] GeoError),
    #[error("dnssec.keys: cannot read {file}: {source}")]
    KeyRead {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dnssec.keys: {file}: {source}")]
    Key {
        file: String,
        #[source]
        source: KeyError,
    },
    #[error("dnssec.keys: {file}: signatures made with this key do not verify")]
    KeySelfCheck { file: String },
    #[error("{key}: cannot read {file}: {source}")]
    CookieSecretRead {
        key: &'static str,
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {file}: {source}")]
    CookieSecret {
        key: &'static str,
        file: String,
        #[source]
        source: SecretError,
    },
}

impl BuildError {
    pub fn kind(&self) -> &'static str {
        match self {
            BuildError::Config(_) => "config",
            BuildError::Geo(_) => "geoip",
            BuildError::Key { .. }
            | BuildError::KeyRead { .. }
            | BuildError::KeySelfCheck { .. } => "dnssec_key",
            BuildError::CookieSecretRead { .. } | BuildError::CookieSecret { .. } => {
                "cookie_secret"
            }
        }
    }
}

/// Loads the GeoIP database of `config`, reusing `previous` when the path and file are unchanged.
pub(crate) fn load_geo(
    config: &Config,
    previous: Option<&Snapshot>,
) -> Result<Option<Arc<GeoDb>>, GeoError> {
    let Some(g) = &config.geoip else {
        return Ok(None);
    };
    if let Some(prev) = previous
        && let (Some(pg), Some(pdb)) = (&prev.config.geoip, &prev.geo)
        && pg.database == g.database
        && pg.asn_database == g.asn_database
    {
        // Same path: keep it. A replaced file is noticed by the reload loop, which forces a
        // reopen (`force_geo_reload`).
        return Ok(Some(pdb.clone()));
    }
    open_geo(config)
}

/// Builds a complete snapshot: compile, open GeoIP, probe new targets once, learn zone SOAs,
/// link. Nothing shared changes if this fails, except that the probe pool now holds the new
/// targets (their state is kept for the next attempt).
pub(crate) async fn build_snapshot(
    config: Config,
    probes: &ProbePool,
    previous: Option<&Snapshot>,
    force_geo_reload: bool,
    transferred: &Transferred,
) -> Result<Snapshot, BuildError> {
    let (compiled, rejected) = compile(&config, &transferred.specs)?;
    let geo = if force_geo_reload {
        open_geo(&config)?
    } else {
        load_geo(&config, previous)?
    };
    // New probe targets are probed once before the records that use them go live.
    let health = probes.sync(&compiled.probe_specs()).await;
    let previous_zones = previous.map(|p| p.zones.clone()).unwrap_or_default();
    let record_names = compiled.names();
    let keys = signing_keys(&config.dnssec)?;
    let cookies = cookie_secrets(&config)?;
    let mut zones = super::zone_facts::learn_all(
        &config.upstream.servers,
        config.upstream.proxies_own_queries(),
        &record_names,
        config.upstream.timeout,
        &previous_zones,
    )
    .await;
    let (dnskey_first_seen, now) = link_keys(&config, previous, &mut zones, &keys);
    let signer_review_unix = signer_review(&zones, &keys, &dnskey_first_seen, now);
    let locate = geo.clone().map(|g| g as Arc<dyn records::Locate>);
    let mut records =
        RecordTable::link(&compiled, &health, locate, &zones).with_zone_names(&transferred.names);
    if let Some(prev) = previous {
        records.adopt_stats(&prev.records);
    }
    let upstream = upstream_pool(&config, previous);
    let dns_zones = metric_zones(&config, &zones, previous);
    Ok(Snapshot {
        sample_threshold: querylog::threshold(config.logging.query_sample_rate),
        dnstap_threshold: querylog::threshold(config.dnstap_sample_rate),
        config: Arc::new(config),
        records,
        geo,
        zones,
        upstream,
        rejected,
        record_names,
        dnskey_first_seen,
        signer_review_unix,
        dns_zones,
        cookies,
    })
}

/// `check-config`'s part for `[cookies]`: the secret files read and parse as at load (the
/// secrets are never shown). Ok(false): cookies are off.
pub fn check_cookie_secrets(config: &Config) -> Result<bool, BuildError> {
    cookie_secrets(config).map(|s| s.is_some())
}

/// Reads the `[cookies]` secret files (None: cookies off). Read on every build, so a rotated
/// secret is picked up by the next reload (the reload loop notices a changed file).
pub(crate) fn cookie_secrets(config: &Config) -> Result<Option<CookieSecrets>, BuildError> {
    let Some(c) = &config.cookies else {
        return Ok(None);
    };
    let read = |key: &'static str, file: &std::path::Path| {
        let text =
            std::fs::read_to_string(file).map_err(|source| BuildError::CookieSecretRead {
                key,
                file: file.display().to_string(),
                source,
            })?;
        parse_secret(&text).map_err(|source| BuildError::CookieSecret {
            key,
            file: file.display().to_string(),
            source,
        })
    };
    let current = read("cookies.secret_file", &c.secret_file)?;
    let previous = match &c.previous_secret_file {
        Some(f) => Some(read("cookies.previous_secret_file", f)?),
        None => None,
    };
    Ok(Some(CookieSecrets::new(current, previous)))
}

/// Every zone dnsteer knows of (learned for in-process records, transferred, signed here): the
/// `zone` label values of the DNS metrics.
fn metric_zones(config: &Config, zones: &records::Zones, previous: Option<&Snapshot>) -> ZoneTable {
    let dnssec = &config.dnssec;
    let apexes = zones
        .keys()
        .chain(&config.zones.transfer)
        .chain(dnssec.keys.iter().map(|k| &k.zone))
        .chain(dnssec.own_key.iter().flat_map(|o| &o.zones));
    ZoneTable::build(previous.map(|p| &p.dns_zones), apexes.map(String::as_str))
}

/// What the transfers hold, for building a snapshot.
#[derive(Debug, Default)]
pub(crate) struct Transferred {
    /// Every transferred LUA record spec (zones in name order).
    pub(crate) specs: Vec<RecordSpec>,
    /// Every name of each transferred zone.
    pub(crate) names: Vec<Arc<ZoneNames>>,
}

/// Compiles the records of the config and of the transferred zones. A name/type defined in
/// both is the config's; transferred LUA records that do not compile are left to PowerDNS
/// (returned, and logged).
fn compile(
    config: &Config,
    transferred: &[RecordSpec],
) -> Result<(records::Compiled, Vec<records::Rejected>), ConfigError> {
    let transferred: Vec<_> = transferred
        .iter()
        .filter(|t| {
            let overridden = config.records.iter().any(|c| c.name == t.name && c.rtype == t.rtype);
            if overridden {
                tracing::warn!(name = %t.name, rtype = t.rtype.name(), "record defined in the config and in a transferred zone: the config wins");
            }
            !overridden
        })
        .cloned()
        .collect();
    let (compiled, rejected) = records::compile_with(config, &transferred)?;
    for r in &rejected {
        tracing::info!(name = %r.spec.name, rtype = r.spec.rtype.name(), reason = %r.reason, "transferred LUA record left to PowerDNS");
    }
    Ok((compiled, rejected))
}

/// Opens the GeoIP database of `config` anew (the reload loop saw the file replaced).
fn open_geo(config: &Config) -> Result<Option<Arc<GeoDb>>, GeoError> {
    match &config.geoip {
        Some(g) => {
            let mut db = GeoDb::open(&g.database)?;
            if let Some(asn) = &g.asn_database {
                db = db.with_asn(asn)?;
            }
            Ok(Some(Arc::new(db)))
        }
        None => Ok(None),
    }
}

/// Decides each zone's signer (`link_signers`) and returns when each DNSKEY was first seen,
/// with the time it took as now. First-seen times: this process's own (in memory), else those
/// persisted by an earlier one (so a restart does not restart a key's wait), else now; they
/// are persisted again when they changed.
fn link_keys(
    config: &Config,
    previous: Option<&Snapshot>,
    zones: &mut records::Zones,
    keys: &HashMap<String, Vec<Arc<SigningKey>>>,
) -> (HashMap<(String, Vec<u8>), u64>, u64) {
    let state_dir = config.dnssec.own_key.as_ref().map(|o| o.state_dir.clone());
    let persisted = state_dir
        .as_deref()
        .map(super::own_key::read_first_seen)
        .unwrap_or_default();
    let mut known = persisted.clone();
    if let Some(p) = previous {
        known.extend(p.dnskey_first_seen.iter().map(|(k, v)| (k.clone(), *v)));
    }
    let now = super::unix_now();
    let first_seen = link_signers(zones, keys, Some(&known), now);
    if let Some(dir) = &state_dir
        && first_seen != persisted
    {
        super::own_key::write_first_seen(dir, &first_seen);
    }
    (first_seen, now)
}

/// The forwarding pool. An unchanged `[upstream]` keeps its pool, so workers keep their
/// sockets and pending tables.
fn upstream_pool(config: &Config, previous: Option<&Snapshot>) -> Arc<UpstreamSet> {
    match previous {
        Some(p) if p.upstream.config == config.upstream => p.upstream.clone(),
        _ => UpstreamSet::new(&config.upstream, previous.map(|p| p.upstream.as_ref())),
    }
}

/// Every key a zone may sign with, most preferred first: dnsteer's own keys (newest first),
/// then the `[[dnssec.keys]]` files in config order.
fn signing_keys(cfg: &DnssecConfig) -> Result<HashMap<String, Vec<Arc<SigningKey>>>, BuildError> {
    let mut keys = super::own_key::load_for_build(cfg.own_key.as_ref());
    for (zone, files) in load_keys(cfg)? {
        keys.entry(zone).or_default().extend(files);
    }
    Ok(keys)
}

/// The earliest time any zone's signer choice changes by itself (see
/// [`crate::dnssec::next_change`]).
fn signer_review(
    zones: &records::Zones,
    keys: &HashMap<String, Vec<Arc<SigningKey>>>,
    seen: &HashMap<(String, Vec<u8>), u64>,
    now: u64,
) -> Option<u64> {
    zones
        .iter()
        .filter_map(|(apex, z)| {
            let published = Published {
                dnskeys: &z.dnskeys,
                dnskey_ttl: z.dnskey_ttl,
                signing_tags: &z.signing_tags,
            };
            crate::dnssec::next_change(
                keys.get(apex).map_or(&[][..], Vec::as_slice),
                published,
                |rdata| seen.get(&(apex.clone(), rdata.to_vec())).copied(),
                now,
            )
        })
        .min()
}

/// Reads and checks every `[[dnssec.keys]]` file, by zone. A key that does not load or whose
/// signatures do not verify fails the whole build (the running config stays).
pub fn load_keys(cfg: &DnssecConfig) -> Result<HashMap<String, Vec<Arc<SigningKey>>>, BuildError> {
    let mut keys: HashMap<String, Vec<Arc<SigningKey>>> = HashMap::new();
    for k in &cfg.keys {
        let file = k.file.display().to_string();
        let text = std::fs::read_to_string(&k.file).map_err(|source| BuildError::KeyRead {
            file: file.clone(),
            source,
        })?;
        let key = SigningKey::from_private_key_file(&text).map_err(|source| BuildError::Key {
            file: file.clone(),
            source,
        })?;
        if !crate::dnssec::self_check(&key) {
            return Err(BuildError::KeySelfCheck { file });
        }
        keys.entry(k.zone.clone()).or_default().push(Arc::new(key));
    }
    Ok(keys)
}

/// Decides each zone's signer from its published DNSKEYs (see [`crate::dnssec::choose`]) and
/// returns when each (zone, DNSKEY RDATA) was first seen, carried from snapshot to snapshot so
/// a published key's wait is counted from when it appeared, not from the last rebuild.
pub(crate) fn link_signers(
    zones: &mut records::Zones,
    keys: &HashMap<String, Vec<Arc<SigningKey>>>,
    previous: Option<&HashMap<(String, Vec<u8>), u64>>,
    now: u64,
) -> HashMap<(String, Vec<u8>), u64> {
    let mut seen = HashMap::new();
    for (apex, z) in zones.iter_mut() {
        for rdata in &z.dnskeys {
            let k = (apex.clone(), rdata.clone());
            let at = previous.and_then(|p| p.get(&k)).copied().unwrap_or(now);
            seen.insert(k, at);
        }
        let zone_keys = keys.get(apex).map_or(&[][..], Vec::as_slice);
        let published = Published {
            dnskeys: &z.dnskeys,
            dnskey_ttl: z.dnskey_ttl,
            signing_tags: &z.signing_tags,
        };
        let state = crate::dnssec::choose(
            &z.apex_wire,
            zone_keys,
            published,
            |rdata| seen.get(&(apex.clone(), rdata.to_vec())).copied(),
            now,
        );
        if z.signed && state != z.signer {
            tracing::info!(target: "dnsteer::dnssec", zone = %apex, state = state.label(), "zone signing state");
        }
        z.signer = state;
    }
    seen
}
