//! Builds a complete snapshot from a validated config: compile the records, open GeoIP, probe
//! new targets, learn zone facts, link. Used at start, on reload and after a zone transfer.

use std::sync::Arc;

use crate::config::{Config, ConfigError, RecordSpec};
use crate::forward::upstream::UpstreamSet;
use crate::state::Snapshot;
use crate::steer::geo::{GeoDb, GeoError};
use crate::steer::probes::ProbePool;
use crate::steer::records::{self, RecordTable};
use crate::telemetry::querylog;

/// Why a snapshot could not be built (nothing was published).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("geoip: {0}")]
    Geo(#[from] GeoError),
}

impl BuildError {
    pub fn kind(&self) -> &'static str {
        match self {
            BuildError::Config(_) => "config",
            BuildError::Geo(_) => "geoip",
        }
    }
}

/// Loads the GeoIP database of `config`, reusing `previous` when the path and file are unchanged.
pub fn load_geo(
    config: &Config,
    previous: Option<&Snapshot>,
) -> Result<Option<Arc<GeoDb>>, GeoError> {
    let Some(g) = &config.geoip else {
        return Ok(None);
    };
    if let Some(prev) = previous
        && let (Some(pg), Some(pdb)) = (&prev.config.geoip, &prev.geo)
        && pg.database == g.database
    {
        // Same path: keep it. A replaced file is noticed by the reload loop, which forces a
        // reopen (`force_geo_reload`).
        return Ok(Some(pdb.clone()));
    }
    Ok(Some(Arc::new(GeoDb::open(&g.database)?)))
}

/// Builds a complete snapshot: compile, open GeoIP, probe new targets once, learn zone SOAs,
/// link. Nothing shared changes if this fails, except that the probe pool now holds the new
/// targets (their state is kept for the next attempt).
pub async fn build_snapshot(
    config: Config,
    probes: &ProbePool,
    previous: Option<&Snapshot>,
    force_geo_reload: bool,
    transferred: &[RecordSpec],
) -> Result<Snapshot, BuildError> {
    // A name/type defined in the TOML wins over the same name/type from a zone.
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
    let (compiled, rejected) = records::compile_with(&config, &transferred)?;
    for r in &rejected {
        tracing::info!(name = %r.spec.name, rtype = r.spec.rtype.name(), reason = %r.reason, "transferred LUA record left to PowerDNS");
    }
    let geo = if force_geo_reload {
        match &config.geoip {
            Some(g) => Some(Arc::new(GeoDb::open(&g.database)?)),
            None => None,
        }
    } else {
        load_geo(&config, previous)?
    };
    // New probe targets are probed once before the records that use them go live.
    let health = probes.sync(&compiled.probe_specs()).await;
    let previous_zones = previous.map(|p| p.zones.clone()).unwrap_or_default();
    let record_names = compiled.names();
    let zones = super::zone_facts::learn_all(
        &config.upstream.servers,
        &record_names,
        config.upstream.timeout,
        &previous_zones,
    )
    .await;
    let locate = geo.clone().map(|g| g as Arc<dyn records::Locate>);
    let mut records = RecordTable::link(&compiled, &health, locate, &zones);
    if let Some(prev) = previous {
        records.adopt_stats(&prev.records);
    }
    // An unchanged [upstream] keeps its pool, so workers keep their sockets and pending tables.
    let upstream = match previous {
        Some(p) if p.upstream.config == config.upstream => p.upstream.clone(),
        _ => UpstreamSet::new(&config.upstream, previous.map(|p| p.upstream.as_ref())),
    };
    Ok(Snapshot {
        sample_threshold: querylog::threshold(config.logging.query_sample_rate),
        config: Arc::new(config),
        records,
        geo,
        zones,
        upstream,
        rejected,
        record_names,
    })
}
