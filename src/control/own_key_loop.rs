//! The control-plane loop behind `[dnssec.own_key]`: keeps each zone's own keys published in
//! PowerDNS (through its API), rebuilds the snapshot when that changes what may sign, and
//! retires older keys once the newest has signed for long enough. The key files and the
//! first-seen state it works on are `own_key`'s.

use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::own_key::{FIRST_BACKOFF, OwnKeyError, OwnKeyFile, generate, read_zone_keys};
use super::pdns_api::PdnsApi;
use super::zone_facts::is_subdomain;
use super::{Control, unix_now};
use crate::config::OwnKeyConfig;
use crate::dnssec::{FLAGS_ZSK, SignerState};

/// Keeps each `[dnssec.own_key]` zone's keys in key_dir and PowerDNS in line: every
/// `check_interval`, or with backoff (1 s doubling up to `check_interval`) after a failure.
/// DO=1 queries are forwarded meanwhile, as the signer choice decides.
pub(crate) async fn run(ctl: Arc<Control>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let config = ctl.data.snapshot.load().config.dnssec.own_key.clone();
        let Some(cfg) = config else {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        };
        let mut rebuild = false;
        let mut failed = false;
        for zone in &cfg.zones {
            // A key made or dropped in counts even when the API then fails: the zone's state
            // should say "key not published", not "no key".
            match reconcile(&ctl, &cfg, zone, &mut rebuild).await {
                Ok(()) => {
                    ctl.own_keys.update(zone, |s| {
                        s.last_ok_unix = Some(unix_now());
                        s.last_error = None;
                        s.last_error_kind = None;
                    });
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(target: "dnsteer::dnssec", zone = %zone, kind = e.kind(), error = %e, "own key: cannot keep the key published; DO=1 queries keep going to PowerDNS until it is");
                    ctl.own_keys.failed(zone, &e);
                }
            }
        }
        if rebuild && let Err(e) = super::reload::rebuild(&ctl).await {
            tracing::error!(target: "dnsteer::dnssec", error = %e, "cannot rebuild after an own-key change");
        }
        let wait = if failed {
            let w = backoff;
            backoff = (backoff * 2).min(cfg.check_interval.max(FIRST_BACKOFF));
            w
        } else {
            backoff = FIRST_BACKOFF;
            cfg.check_interval
        };
        tokio::time::sleep(wait).await;
    }
}

/// One zone: make a key if there is none, publish the newest, retire older ones once the
/// newest has signed long enough. Sets `changed` when the snapshot should be rebuilt.
async fn reconcile(
    ctl: &Control,
    cfg: &OwnKeyConfig,
    zone: &str,
    changed: &mut bool,
) -> Result<(), OwnKeyError> {
    let mut keys = read_zone_keys(&cfg.key_dir, zone)?;
    if keys.is_empty() {
        let key = generate(&cfg.key_dir, zone)?;
        tracing::info!(target: "dnsteer::dnssec", zone, key_tag = key.tag, file = %key.path.display(), "own key generated");
        keys.push(key);
    }
    let tags: Vec<u16> = keys.iter().map(|k| k.tag).collect();
    ctl.own_keys.update(zone, |s| {
        if s.key_tags != tags {
            // A key appeared or went: the snapshot must read key_dir again.
            *changed = true;
            s.key_tags = tags.clone();
        }
    });
    let api = PdnsApi::new(&cfg.api, &cfg.server_id, &cfg.api_key_file)?;
    let listed = api.list_keys(zone).await?;
    let newest = &keys[0];
    let newest_rdata = newest.key.dnskey_rdata(FLAGS_ZSK);
    if !listed.iter().any(|k| k.dnskey_rdata == newest_rdata) {
        let text = Zeroizing::new(newest.key.to_private_key_file());
        api.add_published_inactive_zsk(zone, &text).await?;
        tracing::info!(target: "dnsteer::dnssec", zone, key_tag = newest.tag, "own key published in PowerDNS (inactive: PowerDNS does not sign with it)");
        *changed = true;
    }
    ctl.own_keys.update(zone, |s| s.published = true);
    *changed |= retire_older(ctl, cfg, zone, &keys, &api, &listed).await?;
    Ok(())
}

/// Once the newest key signs, older keys stay published for the retire wait (counted from when
/// the newest became usable), then are deleted from PowerDNS and from key_dir.
async fn retire_older(
    ctl: &Control,
    cfg: &OwnKeyConfig,
    zone: &str,
    keys: &[OwnKeyFile],
    api: &PdnsApi,
    listed: &[super::pdns_api::CryptoKey],
) -> Result<bool, OwnKeyError> {
    let (newest, older) = match keys.split_first() {
        Some((n, o)) if !o.is_empty() => (n, o),
        _ => {
            ctl.own_keys.update(zone, |s| s.retiring = None);
            return Ok(false);
        }
    };
    let snap = ctl.data.snapshot.load();
    let Some(facts) = snap.zones.get(zone) else {
        return Ok(false);
    };
    let newest_signs = matches!(&facts.signer, SignerState::Live(s) if s.key_tag == newest.tag && s.key.public_key() == newest.key.public_key());
    if !newest_signs {
        return Ok(false);
    }
    let Some(seen) = snap
        .dnskey_first_seen
        .get(&(zone.to_string(), newest.key.dnskey_rdata(FLAGS_ZSK)))
    else {
        return Ok(false);
    };
    let retire_at = seen + u64::from(facts.dnskey_ttl) + retire_wait(cfg, &snap, zone).as_secs();
    let now = unix_now();
    if now < retire_at {
        let old_tag = older[0].tag;
        ctl.own_keys
            .update(zone, |s| s.retiring = Some((old_tag, retire_at)));
        return Ok(false);
    }
    let mut changed = false;
    for old in older {
        let rdata = old.key.dnskey_rdata(FLAGS_ZSK);
        for k in listed.iter().filter(|k| k.dnskey_rdata == rdata) {
            api.delete_key(zone, k.id).await?;
            tracing::info!(target: "dnsteer::dnssec", zone, key_tag = old.tag, "replaced own key deleted from PowerDNS");
            changed = true;
        }
        match std::fs::remove_file(&old.path) {
            Ok(()) => {
                tracing::info!(target: "dnsteer::dnssec", zone, key_tag = old.tag, file = %old.path.display(), "replaced own key file removed");
                changed = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                // A read-only Secret mount: the operator drops it from the Secret. It is not
                // published any more, so it never signs again.
                let note = format!(
                    "retired key {} stays in {}: {e}; remove it from key_dir",
                    old.tag,
                    cfg.key_dir.display()
                );
                let first = ctl.own_keys.status().get(zone).and_then(|s| s.note.clone())
                    != Some(note.clone());
                if first {
                    tracing::warn!(target: "dnsteer::dnssec", zone, key_tag = old.tag, error = %e, "retired own key file cannot be removed; remove it from key_dir");
                }
                ctl.own_keys.update(zone, |s| s.note = Some(note));
            }
        }
    }
    ctl.own_keys.update(zone, |s| s.retiring = None);
    Ok(changed)
}

/// How long a replaced key stays published after its successor signs: at least `retire_after`,
/// the DNSKEY and SOA TTLs, and the largest TTL of the zone's in-process records (the only
/// RRsets signed with the old key, so no cached signature outlives it).
fn retire_wait(cfg: &OwnKeyConfig, snap: &crate::state::Snapshot, zone: &str) -> Duration {
    let facts = snap.zones.get(zone);
    let record_ttl = snap
        .records
        .sets()
        .filter(|s| is_subdomain(&s.name, zone))
        .map(|s| s.ttl)
        .max()
        .unwrap_or(0);
    let ttl = [
        record_ttl,
        facts.map_or(0, |f| f.dnskey_ttl),
        facts.map_or(0, |f| f.soa_ttl),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    cfg.retire_after.max(Duration::from_secs(u64::from(ttl)))
}
