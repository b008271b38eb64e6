//! GeoIP: a MaxMind City-format database read fully into memory, for `pickclosest` and the
//! LUA geo functions (country/continent/region codes, `latlon`), plus an optional
//! GeoLite2-ASN database for `asnum()`.
//!
//! The file is read once (no mmap: an in-place rewrite of a mapped file is SIGBUS) and held
//! read-only; the control plane builds a new [`GeoDb`] on reload and swaps it in. Lookups
//! decode only `location.latitude`/`location.longitude`, or only the three codes (borrowed, no
//! allocation), and a small lock-free cache keyed by the record's data-section offset skips
//! even that for the records seen most (many networks share one record). ASN lookups decode
//! one integer and are not cached.
//!
//! Deliberate differences from the PowerDNS GeoIP backend:
//! - PowerDNS also requires `location.accuracy_radius` and treats a record without it as
//!   unknown; we accept latitude + longitude alone (custom databases often omit the radius).
//! - Coordinates are kept to 6 decimals (micro-degrees), as PowerDNS's `%f` round trip does.
//! - An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports) is
//!   looked up as the IPv4 address, so its `prefix_len` is an IPv4 prefix length.
//! - Codes longer than 4 bytes (custom databases) count as unknown.
//! - `asnum()` reads only `asn_database`; PowerDNS tries every file of `geoip-database-files`
//!   in order, so a City-type file carrying `autonomous_system_number` would answer there.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

/// Label used in errors for databases given as bytes rather than a path.
#[cfg(test)]
const IN_MEMORY: &str = "(in-memory database)";

/// Databases whose type does not say City are still accepted when one of this many of their
/// first records carries a location (a custom or third-party city-level database).
const LOCATION_SAMPLE: usize = 1000;

/// Decoded-location cache slots (16 bytes each): small enough to stay in cache, large enough
/// for the distinct records a busy resolver population hits.
const CACHE_SLOTS: usize = 4096;

/// Marker for "record has no usable location" in the cache.
const NO_LOCATION: i32 = i32::MIN;

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file could not be read.
    #[error("{path}: {message}")]
    Open { path: String, message: String },
    /// Not a MaxMind DB, or a damaged one (truncated, bad metadata, bad search tree).
    #[error("{path}: not a usable MaxMind DB file: {message}")]
    Invalid { path: String, message: String },
    /// A valid MaxMind DB without coordinates (e.g. GeoLite2-Country or -ASN).
    #[error(
        "{path}: database type \"{database_type}\" carries no location.latitude/longitude; \
         pickclosest needs a City-format database (GeoLite2-City, GeoIP2-City)"
    )]
    NotCity { path: String, database_type: String },
    /// `asn_database` is a valid MaxMind DB without autonomous system numbers.
    #[error(
        "{path}: database type \"{database_type}\" carries no autonomous_system_number; \
         asn_database needs a GeoLite2-ASN format database"
    )]
    NotAsn { path: String, database_type: String },
}

impl GeoError {
    pub fn kind(&self) -> &'static str {
        match self {
            GeoError::Open { .. } => "open",
            GeoError::Invalid { .. } => "invalid",
            GeoError::NotCity { .. } => "not_city",
            GeoError::NotAsn { .. } => "not_asn",
        }
    }
}

/// A lower-case geo code (country, continent, subdivision) of up to 4 bytes, zero-padded.
pub(crate) type Code = [u8; 4];

/// The code of an address the database does not know (PowerDNS's "unknown").
pub(crate) const UNKNOWN: Code = [0; 4];

/// `text` as a code: lower-cased; None when empty or longer than 4 bytes.
pub(crate) fn code(text: &[u8]) -> Option<Code> {
    if text.is_empty() || text.len() > 4 {
        return None;
    }
    let mut c = UNKNOWN;
    for (d, s) in c.iter_mut().zip(text) {
        *d = s.to_ascii_lowercase();
    }
    Some(c)
}

/// The printable part of a code (`b"nl"`), empty for [`UNKNOWN`].
pub(crate) fn code_text(c: &Code) -> &[u8] {
    let len = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    &c[..len]
}

/// The client's codes as PowerDNS's GeoIP functions read them: `country.iso_code`,
/// `continent.code`, `subdivisions[0].iso_code`, lower-cased; [`UNKNOWN`] when missing,
/// empty, `--`, or longer than 4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeoCodes {
    pub(crate) country: Code,
    pub(crate) continent: Code,
    pub(crate) region: Code,
}

impl Default for GeoCodes {
    fn default() -> Self {
        GeoCodes {
            country: UNKNOWN,
            continent: UNKNOWN,
            region: UNKNOWN,
        }
    }
}

/// The parts of a City record the code functions read (borrowed, nothing else decoded).
#[derive(Deserialize)]
struct RecordCodes<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    continent: Option<ContinentCode<'a>>,
    #[serde(borrow)]
    subdivisions: Option<FirstIso<'a>>,
}

/// `subdivisions[0].iso_code` without collecting the list (no allocation).
struct FirstIso<'a>(Option<&'a str>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstIso<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = FirstIso<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of subdivisions")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<IsoCode<'a>>()?.and_then(|c| c.iso_code);
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(FirstIso(first))
            }
        }
        d.deserialize_seq(Visit(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct ContinentCode<'a> {
    #[serde(borrow)]
    code: Option<&'a str>,
}

/// GeoLite2-ASN record.
#[derive(Deserialize)]
struct RecordAsn {
    autonomous_system_number: Option<u32>,
}

fn decoded_code(s: Option<&str>) -> Code {
    match s {
        Some("--") | None => UNKNOWN,
        Some(s) => code(s.as_bytes()).unwrap_or(UNKNOWN),
    }
}

/// Where an address is, and the prefix length of the mmdb network that said so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    pub prefix_len: u8,
}

/// The only part of a City record we decode; everything else is skipped without expansion.
#[derive(Deserialize)]
struct RecordLocation {
    location: Option<Coordinates>,
}

#[derive(Deserialize)]
struct Coordinates {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// One cache entry: two words, each `tag << 32 | micro-degrees`, with tag = record offset + 1
/// (0 = empty). A reader accepts the entry only when both words carry its tag; since a given
/// offset always decodes to the same coordinates, a torn pair from two racing writers is
/// either rejected or still correct. No lock, no allocation.
#[derive(Default)]
struct CacheSlot {
    lat: AtomicU64,
    lon: AtomicU64,
    /// Same tagging: country and continent codes (2 bytes each), and the region code (4
    /// bytes). Records with a longer country or continent code are not cached.
    country_continent: AtomicU64,
    region: AtomicU64,
}

pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
    /// `[geoip] asn_database`: GeoLite2-ASN format, for `asnum()`.
    asn: Option<maxminddb::Reader<Vec<u8>>>,
    cache: Box<[CacheSlot]>,
    /// Records that failed to decode (a damaged data section): located as unknown.
    decode_errors: AtomicU64,
}

impl GeoDb {
    /// Reads the whole file into memory and checks that it is a City-format database.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let label = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| GeoError::Open {
            path: label.clone(),
            message: e.to_string(),
        })?;
        GeoDb::build(bytes, label)
    }

    /// As [`GeoDb::open`], from bytes already in memory.
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<GeoDb, GeoError> {
        GeoDb::build(bytes, IN_MEMORY.to_owned())
    }

    fn build(bytes: Vec<u8>, path: String) -> Result<GeoDb, GeoError> {
        let reader = maxminddb::Reader::from_source(bytes).map_err(|e| GeoError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let db = GeoDb {
            reader,
            asn: None,
            cache: (0..CACHE_SLOTS).map(|_| CacheSlot::default()).collect(),
            decode_errors: AtomicU64::new(0),
        };
        if !db.is_city_like() {
            return Err(GeoError::NotCity {
                path,
                database_type: db.database_type().to_owned(),
            });
        }
        Ok(db)
    }

    /// Accepts any type naming City (GeoLite2-City, GeoIP2-City, DBIP-City-Lite, …) or
    /// Enterprise (a City superset). Anything else must prove it has coordinates: one of its
    /// first records must carry a location. That rejects Country/ASN/ISP files up front with a
    /// clear error instead of answering every pickclosest as "unknown".
    fn is_city_like(&self) -> bool {
        let db_type = self.database_type();
        if db_type.contains("City") || db_type.contains("Enterprise") {
            return true;
        }
        let Ok(networks) = self.reader.networks(Default::default()) else {
            return false;
        };
        networks
            .take(LOCATION_SAMPLE)
            .filter_map(Result::ok)
            .any(|found| matches!(found.decode::<RecordLocation>(), Ok(Some(r)) if coordinates(&r).is_some()))
    }

    /// Adds the ASN database at `path` (GeoLite2-ASN format) for `asnum()`.
    pub fn with_asn(mut self, path: &Path) -> Result<GeoDb, GeoError> {
        let label = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| GeoError::Open {
            path: label.clone(),
            message: e.to_string(),
        })?;
        self.asn = Some(asn_reader(bytes, label)?);
        Ok(self)
    }

    /// The `build_epoch` from the file's metadata (seconds since 1970): for /status and logs.
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// The `database_type` from the file's metadata, e.g. "GeoLite2-City".
    pub(crate) fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// Records that failed to decode so far (each located as unknown). Nonzero means a
    /// damaged file.
    #[cfg(test)]
    pub(crate) fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }

    /// None when the address is not in the database or its record has no location.
    pub(crate) fn locate(&self, ip: IpAddr) -> Option<Location> {
        let ip = ip.to_canonical();
        let found = self.reader.lookup(ip).ok()?;
        let offset = found.offset()?;
        let network = found.network().ok()?;
        // An IPv4 address in an IPv6 tree without an IPv4 subtree matched above ::/96: report
        // the part of that prefix that covers IPv4 space.
        let prefix_len = match (ip, network.ip()) {
            (IpAddr::V4(_), IpAddr::V6(_)) => network.prefix().saturating_sub(96),
            _ => network.prefix(),
        };
        let (lat, lon) = self.coordinates_at(offset, &found)?;
        Some(Location {
            lat: f64::from(lat) / 1e6,
            lon: f64::from(lon) / 1e6,
            prefix_len,
        })
    }

    /// Micro-degree coordinates of the record at `offset`, from the cache or decoded (and
    /// then cached, including a negative answer).
    fn coordinates_at(
        &self,
        offset: usize,
        found: &maxminddb::LookupResult<'_, Vec<u8>>,
    ) -> Option<(i32, i32)> {
        // Offsets beyond u32 cannot be tagged; such a file (> 4 GiB) is just not cached.
        let tag = u32::try_from(offset).ok()?.checked_add(1);
        let slot = tag.map(|t| &self.cache[slot_index(t)]);
        if let (Some(tag), Some(slot)) = (tag, slot) {
            let (a, b) = (
                slot.lat.load(Ordering::Relaxed),
                slot.lon.load(Ordering::Relaxed),
            );
            if (a >> 32) as u32 == tag && (b >> 32) as u32 == tag {
                let (lat, lon) = (a as u32 as i32, b as u32 as i32);
                return (lat != NO_LOCATION).then_some((lat, lon));
            }
        }
        let decoded = match found.decode::<RecordLocation>() {
            Ok(Some(record)) => coordinates(&record),
            Ok(None) => None,
            Err(_) => {
                self.decode_errors.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        if let (Some(tag), Some(slot)) = (tag, slot) {
            let (lat, lon) = decoded.unwrap_or((NO_LOCATION, 0));
            let tag = u64::from(tag) << 32;
            slot.lat
                .store(tag | u64::from(lat as u32), Ordering::Relaxed);
            slot.lon
                .store(tag | u64::from(lon as u32), Ordering::Relaxed);
        }
        decoded
    }
}

impl GeoDb {
    /// The client's codes, and the prefix length of the network that gave them (0 when the
    /// address is not in the database).
    pub(crate) fn codes(&self, ip: IpAddr) -> (GeoCodes, u8) {
        let ip = ip.to_canonical();
        let Ok(found) = self.reader.lookup(ip) else {
            return (GeoCodes::default(), 0);
        };
        let (Some(offset), Ok(network)) = (found.offset(), found.network()) else {
            return (GeoCodes::default(), 0);
        };
        let prefix_len = match (ip, network.ip()) {
            (IpAddr::V4(_), IpAddr::V6(_)) => network.prefix().saturating_sub(96),
            _ => network.prefix(),
        };
        (self.codes_at(offset, &found), prefix_len)
    }

    fn codes_at(&self, offset: usize, found: &maxminddb::LookupResult<'_, Vec<u8>>) -> GeoCodes {
        let tag = u32::try_from(offset).ok().and_then(|t| t.checked_add(1));
        let slot = tag.map(|t| &self.cache[slot_index(t)]);
        if let (Some(tag), Some(slot)) = (tag, slot) {
            let (a, b) = (
                slot.country_continent.load(Ordering::Relaxed),
                slot.region.load(Ordering::Relaxed),
            );
            if (a >> 32) as u32 == tag && (b >> 32) as u32 == tag {
                let cc = (a as u32).to_be_bytes();
                return GeoCodes {
                    country: [cc[0], cc[1], 0, 0],
                    continent: [cc[2], cc[3], 0, 0],
                    region: (b as u32).to_be_bytes(),
                };
            }
        }
        let codes = match found.decode::<RecordCodes<'_>>() {
            Ok(Some(r)) => GeoCodes {
                country: decoded_code(r.country.and_then(|c| c.iso_code)),
                continent: decoded_code(r.continent.and_then(|c| c.code)),
                region: decoded_code(r.subdivisions.and_then(|s| s.0)),
            },
            Ok(None) => GeoCodes::default(),
            Err(_) => {
                self.decode_errors.fetch_add(1, Ordering::Relaxed);
                return GeoCodes::default();
            }
        };
        // Country and continent codes are cached in 2 bytes; a longer one (custom database)
        // is decoded on every lookup instead.
        let fits = |c: &Code| c[2] == 0;
        if let (Some(tag), Some(slot)) = (tag, slot)
            && fits(&codes.country)
            && fits(&codes.continent)
        {
            let cc = u32::from_be_bytes([
                codes.country[0],
                codes.country[1],
                codes.continent[0],
                codes.continent[1],
            ]);
            let tag = u64::from(tag) << 32;
            slot.country_continent
                .store(tag | u64::from(cc), Ordering::Relaxed);
            slot.region.store(
                tag | u64::from(u32::from_be_bytes(codes.region)),
                Ordering::Relaxed,
            );
        }
        codes
    }

    /// The client's autonomous system number from the ASN database; None when unknown or no
    /// ASN database is configured. Decodes one integer field (no allocation).
    pub(crate) fn asn(&self, ip: IpAddr) -> Option<u32> {
        let found = self.asn.as_ref()?.lookup(ip.to_canonical()).ok()?;
        match found.decode::<RecordAsn>() {
            Ok(Some(r)) => r.autonomous_system_number,
            Ok(None) => None,
            Err(_) => {
                self.decode_errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// An ASN database: any MaxMind DB whose type names ASN, or whose first records carry
/// `autonomous_system_number`.
fn asn_reader(bytes: Vec<u8>, path: String) -> Result<maxminddb::Reader<Vec<u8>>, GeoError> {
    let reader = maxminddb::Reader::from_source(bytes).map_err(|e| GeoError::Invalid {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let db_type = reader.metadata().database_type.clone();
    let ok = db_type.contains("ASN")
        || reader.networks(Default::default()).is_ok_and(|n| {
            n.take(LOCATION_SAMPLE).filter_map(Result::ok).any(|f| {
                matches!(f.decode::<RecordAsn>(), Ok(Some(r)) if r.autonomous_system_number.is_some())
            })
        });
    if !ok {
        return Err(GeoError::NotAsn {
            path,
            database_type: db_type,
        });
    }
    Ok(reader)
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("database_type", &self.database_type())
            .field("build_epoch", &self.build_epoch())
            .finish_non_exhaustive()
    }
}

/// Valid coordinates in micro-degrees (6 decimals, like PowerDNS's `%f`), or None when the
/// record has no location or an out-of-range one.
fn coordinates(record: &RecordLocation) -> Option<(i32, i32)> {
    let loc = record.location.as_ref()?;
    let (lat, lon) = (loc.latitude?, loc.longitude?);
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return None;
    }
    // In range, so the products fit i32 (±180e6 < 2^31) and never equal NO_LOCATION.
    Some(((lat * 1e6).round() as i32, (lon * 1e6).round() as i32))
}

fn slot_index(tag: u32) -> usize {
    // Fibonacci hashing: record offsets are clustered; spread them over the slots.
    (tag.wrapping_mul(0x9E37_79B9) >> (32 - CACHE_SLOTS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_db() -> GeoDb {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/test-city.mmdb");
        GeoDb::open(&path).expect("committed geoip/test-city.mmdb opens")
    }

    fn at(db: &GeoDb, ip: &str) -> Option<Location> {
        db.locate(ip.parse().unwrap())
    }

    #[track_caller]
    fn assert_at(db: &GeoDb, ip: &str, lat: f64, lon: f64, prefix_len: u8) {
        let got = at(db, ip).unwrap_or_else(|| panic!("{ip} not located"));
        assert!(
            (got.lat - lat).abs() < 1e-9 && (got.lon - lon).abs() < 1e-9,
            "{ip}: {got:?}, want {lat} {lon}"
        );
        assert_eq!(got.prefix_len, prefix_len, "{ip}: prefix_len");
    }

    // Coordinates as written by examples/gen_test_mmdb.rs (geoip/README.md).
    const AMSTERDAM: (f64, f64) = (52.3676, 4.9041);
    const FRANKFURT: (f64, f64) = (50.1109, 8.6821);
    const MADRID: (f64, f64) = (40.4168, -3.7038);
    const NEW_YORK: (f64, f64) = (40.7128, -74.006);
    const SAN_JOSE: (f64, f64) = (37.3382, -121.8863);
    const SAO_PAULO: (f64, f64) = (-23.5505, -46.6333);
    const TOKYO: (f64, f64) = (35.6762, 139.6503);
    const SYDNEY: (f64, f64) = (-33.8688, 151.2093);
    const JOHANNESBURG: (f64, f64) = (-26.2041, 28.0473);
    const SINGAPORE: (f64, f64) = (1.3521, 103.8198);
    const BEIJING: (f64, f64) = (39.9042, 116.4074);

    fn codes_of(db: &GeoDb, ip: &str) -> (String, String, String, u8) {
        let (c, len) = db.codes(ip.parse().unwrap());
        let t = |c: &Code| String::from_utf8_lossy(code_text(c)).into_owned();
        (t(&c.country), t(&c.continent), t(&c.region), len)
    }

    #[test]
    fn codes_are_lower_case_and_cached() {
        let db = test_db();
        let s = |a: &str, b: &str, c: &str, l: u8| (a.into(), b.into(), c.into(), l);
        for _ in 0..2 {
            // Second round: from the cache.
            assert_eq!(codes_of(&db, "193.0.6.139"), s("nl", "eu", "nh", 24));
            assert_eq!(codes_of(&db, "139.130.4.5"), s("au", "oc", "nsw", 24));
            assert_eq!(codes_of(&db, "210.140.92.1"), s("jp", "as", "13", 24));
            // No subdivision: unknown region.
            assert_eq!(codes_of(&db, "203.116.0.1"), s("sg", "as", "", 24));
            // Country but no location.
            assert_eq!(codes_of(&db, "198.51.100.7"), s("nl", "eu", "", 24));
            assert_eq!(codes_of(&db, "2001:db8:6::1"), s("br", "sa", "sp", 48));
            assert_eq!(codes_of(&db, "::ffff:8.8.8.8"), s("us", "na", "ny", 24));
            assert_eq!(codes_of(&db, "203.0.113.1"), s("", "", "", 0));
            assert_eq!(codes_of(&db, "::1"), s("", "", "", 0));
        }
        assert_eq!(db.decode_errors(), 0);
    }

    #[test]
    fn asn_database() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip");
        let db = test_db()
            .with_asn(&dir.join("test-asn.mmdb"))
            .expect("committed geoip/test-asn.mmdb opens");
        let asn = |ip: &str| db.asn(ip.parse().unwrap());
        assert_eq!(asn("193.0.6.1"), Some(64_500));
        assert_eq!(asn("2001:db8:7::53"), Some(64_503));
        assert_eq!(asn("41.0.0.9"), Some(4_200_000_000));
        assert_eq!(asn("203.0.113.1"), Some(64_510));
        assert_eq!(asn("1.1.1.1"), None);
        // Without an ASN database nothing has one.
        assert_eq!(test_db().asn("193.0.6.1".parse().unwrap()), None);
        // A City file is not an ASN database.
        let e = test_db().with_asn(&dir.join("test-city.mmdb")).unwrap_err();
        assert_eq!(e.kind(), "not_asn");
        assert!(e.to_string().contains("GeoLite2-ASN"), "{e}");
    }

    #[test]
    fn shared_across_worker_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<GeoDb>();
    }

    #[test]
    fn metadata_of_committed_database() {
        let db = test_db();
        assert_eq!(db.database_type(), "GeoIP2-City");
        assert_eq!(db.build_epoch(), 1_767_225_600);
    }

    #[test]
    fn locates_every_city_over_ipv4() {
        let db = test_db();
        let cases = [
            ("193.0.6.139", AMSTERDAM),
            ("127.0.1.1", AMSTERDAM),
            ("80.81.192.10", FRANKFURT),
            ("80.81.82.7", MADRID),
            ("8.8.8.8", NEW_YORK),
            ("127.0.3.200", NEW_YORK),
            ("45.33.32.156", SAN_JOSE),
            ("200.160.0.8", SAO_PAULO),
            ("210.140.92.1", TOKYO),
            ("127.0.2.9", TOKYO),
            ("139.130.4.5", SYDNEY),
            ("41.0.0.1", JOHANNESBURG),
            ("203.116.0.1", SINGAPORE),
            ("101.0.0.1", BEIJING),
        ];
        for (ip, (lat, lon)) in cases {
            assert_at(&db, ip, lat, lon, 24);
        }
    }

    #[test]
    fn locates_every_city_over_ipv6() {
        let db = test_db();
        let cases = [
            ("2001:67c:2e8::2", AMSTERDAM),
            ("2001:db8:2::1", FRANKFURT),
            ("2001:db8:3::1", MADRID),
            ("2001:db8:4::1", NEW_YORK),
            ("2001:db8:5::1", SAN_JOSE),
            ("2001:db8:6::1", SAO_PAULO),
            ("2001:db8:7::1", TOKYO),
            ("2001:db8:8::1", SYDNEY),
            ("2001:db8:9::1", JOHANNESBURG),
            ("2001:db8:a::1", SINGAPORE),
            ("2001:db8:b::1", BEIJING),
        ];
        for (ip, (lat, lon)) in cases {
            assert_at(&db, ip, lat, lon, 48);
        }
    }

    #[test]
    fn prefix_len_is_that_of_the_matching_network() {
        let db = test_db();
        // A /64 carved out of Amsterdam's /48 for Frankfurt. The rest of the /48 is then
        // stored as the tree's sibling networks, so it reports their (longer) prefixes.
        assert_at(&db, "2001:db8:1:1::5", FRANKFURT.0, FRANKFURT.1, 64);
        assert_at(&db, "2001:db8:1::1", AMSTERDAM.0, AMSTERDAM.1, 64);
        assert_at(&db, "2001:db8:1:2::5", AMSTERDAM.0, AMSTERDAM.1, 63);
        assert_at(&db, "2001:db8:1:8000::1", AMSTERDAM.0, AMSTERDAM.1, 49);
        // A /25 carved out of Sydney's 1.1.1.0/24 for Singapore: both halves are /25s.
        assert_at(&db, "1.1.1.200", SINGAPORE.0, SINGAPORE.1, 25);
        assert_at(&db, "1.1.1.1", SYDNEY.0, SYDNEY.1, 25);
        // IPv4-mapped IPv6 is looked up as IPv4 and reports an IPv4 prefix length.
        assert_at(&db, "::ffff:193.0.6.139", AMSTERDAM.0, AMSTERDAM.1, 24);
        // The writer's 6to4 alias (2002:c100:068b:: = 193.0.6.139) matches at 16 + 24 bits.
        assert_at(&db, "2002:c100:68b::1", AMSTERDAM.0, AMSTERDAM.1, 40);
    }

    #[test]
    fn record_without_location_is_unknown() {
        let db = test_db();
        assert_eq!(at(&db, "198.51.100.7"), None);
        assert_eq!(at(&db, "2001:db8:ffff::7"), None);
        // Second lookup is answered from the negative cache entry: still None.
        assert_eq!(at(&db, "198.51.100.8"), None);
    }

    #[test]
    fn address_not_in_database_is_unknown() {
        let db = test_db();
        for ip in [
            "203.0.113.1",
            "127.0.0.1",
            "10.1.2.3",
            "::1",
            "2001:db8:c::1",
            "2a00::1",
        ] {
            assert_eq!(at(&db, ip), None, "{ip}");
        }
    }

    #[test]
    fn cached_answers_match_decoded_ones() {
        let db = test_db();
        let first = at(&db, "193.0.6.1");
        // Same record (offset) reached through other networks, now from the cache.
        assert_eq!(at(&db, "193.0.6.2"), first);
        let v6 = at(&db, "2001:67c:2e8::9").unwrap();
        assert_eq!((v6.lat, v6.lon), (first.unwrap().lat, first.unwrap().lon));
        assert_eq!(v6.prefix_len, 48);
        assert_eq!(db.decode_errors(), 0);
    }

    #[test]
    fn one_cache_entry_per_record_including_negative_ones() {
        let db = test_db();
        let used = |db: &GeoDb| {
            db.cache
                .iter()
                .filter(|s| s.lat.load(Ordering::Relaxed) != 0)
                .count()
        };
        assert_eq!(used(&db), 0);
        at(&db, "127.0.2.1");
        at(&db, "210.140.92.77");
        at(&db, "2001:db8:7::5");
        assert_eq!(used(&db), 1, "three Tokyo networks share one record");
        assert_eq!(at(&db, "198.51.100.1"), None);
        assert_eq!(used(&db), 2, "no-location record cached too");
        assert_eq!(at(&db, "203.0.113.1"), None);
        assert_eq!(
            used(&db),
            2,
            "addresses without a record leave the cache alone"
        );
    }

    #[test]
    fn garbage_and_empty_files_are_errors() {
        for bytes in [
            Vec::new(),
            b"not a maxmind db".repeat(100),
            vec![0xab; 4096],
        ] {
            let err = GeoDb::from_bytes(bytes).unwrap_err();
            assert_eq!(err.kind(), "invalid", "{err}");
        }
    }

    #[test]
    fn truncated_files_are_errors_not_panics() {
        let bytes =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/test-city.mmdb"))
                .unwrap();
        // Every cut point in the metadata tail and a spread of cuts through tree and data.
        let cuts = (0..bytes.len())
            .step_by(97)
            .chain(bytes.len().saturating_sub(300)..bytes.len());
        for cut in cuts {
            match GeoDb::from_bytes(bytes[..cut].to_vec()) {
                Err(e) => assert_eq!(e.kind(), "invalid", "cut at {cut}: {e}"),
                Ok(db) => panic!("cut at {cut}/{} accepted: {db:?}", bytes.len()),
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_panic_on_lookup() {
        let clean =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/test-city.mmdb"))
                .unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let mut bytes = clean.clone();
            for _ in 0..8 {
                let i = rng.usize(..bytes.len());
                bytes[i] = rng.u8(..);
            }
            if let Ok(db) = GeoDb::from_bytes(bytes) {
                for ip in ["193.0.6.139", "8.8.8.8", "2001:db8:7::1", "1.1.1.200"] {
                    let _ = db.locate(ip.parse().unwrap());
                }
            }
        }
    }

    #[test]
    fn missing_file_is_an_open_error() {
        let err = GeoDb::open(Path::new("/nonexistent/dnsteer/city.mmdb")).unwrap_err();
        assert_eq!(err.kind(), "open");
        assert!(
            err.to_string()
                .starts_with("/nonexistent/dnsteer/city.mmdb: "),
            "{err}"
        );
    }

    fn build(database_type: &str, with_location: bool) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Country {
            iso_code: &'static str,
        }
        #[derive(serde::Serialize)]
        struct Loc {
            latitude: f64,
            longitude: f64,
        }
        #[derive(serde::Serialize)]
        struct Rec {
            country: Country,
            location: Option<Loc>,
        }
        let mut w = mmdb_writer::Writer::new(database_type);
        let rec = Rec {
            country: Country { iso_code: "NL" },
            location: with_location.then_some(Loc {
                latitude: 52.0,
                longitude: 5.0,
            }),
        };
        w.insert("192.0.2.0/24".parse::<ipnet::IpNet>().unwrap(), &rec)
            .unwrap();
        w.to_bytes().unwrap()
    }

    #[test]
    fn country_database_is_rejected_with_a_clear_error() {
        let err = GeoDb::from_bytes(build("GeoLite2-Country", false)).unwrap_err();
        assert_eq!(err.kind(), "not_city");
        assert!(err.to_string().contains("\"GeoLite2-Country\""), "{err}");
        assert!(err.to_string().contains("City-format"), "{err}");
    }

    #[test]
    fn custom_type_with_locations_is_accepted_without_accuracy_radius() {
        let db = GeoDb::from_bytes(build("Acme-Geo", true)).unwrap();
        assert_eq!(db.database_type(), "Acme-Geo");
        let got = db.locate("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!((got.lat, got.lon, got.prefix_len), (52.0, 5.0, 24));
        // A City-named database is accepted on its name even when empty of locations.
        assert!(GeoDb::from_bytes(build("GeoLite2-City", false)).is_ok());
    }
}
