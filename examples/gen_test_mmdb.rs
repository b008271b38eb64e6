//! Builds `geoip/test-city.mmdb`, the small synthetic City database the tests use, and
//! `geoip/test-asn.mmdb`, a GeoLite2-ASN-format companion for `asnum()`.
//!
//! Run through `geoip/generate.sh`
//! (`cargo run --example gen_test_mmdb -- geoip/test-city.mmdb geoip/test-asn.mmdb`).
//! The output is byte-for-byte reproducible: the build epoch is pinned and the writer emits
//! records in insertion order. Keep `geoip/README.md` in step with the tables below.

use std::collections::BTreeMap;
use std::error::Error;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use mmdb_writer::Writer;
use serde::Serialize;

/// 2026-01-01T00:00:00Z, pinned so regenerating gives the same bytes.
const BUILD_EPOCH: u64 = 1_767_225_600;

struct Continent {
    code: &'static str,
    geoname_id: u32,
    name: &'static str,
}

const EUROPE: Continent = Continent {
    code: "EU",
    geoname_id: 6_255_148,
    name: "Europe",
};
const NORTH_AMERICA: Continent = Continent {
    code: "NA",
    geoname_id: 6_255_149,
    name: "North America",
};
const SOUTH_AMERICA: Continent = Continent {
    code: "SA",
    geoname_id: 6_255_150,
    name: "South America",
};
const ASIA: Continent = Continent {
    code: "AS",
    geoname_id: 6_255_147,
    name: "Asia",
};
const OCEANIA: Continent = Continent {
    code: "OC",
    geoname_id: 6_255_151,
    name: "Oceania",
};
const AFRICA: Continent = Continent {
    code: "AF",
    geoname_id: 6_255_146,
    name: "Africa",
};

struct City {
    name: &'static str,
    geoname_id: u32,
    country: (&'static str, u32, &'static str),
    eu: bool,
    continent: Continent,
    subdivision: Option<(&'static str, &'static str)>,
    latitude: f64,
    longitude: f64,
    accuracy_radius: u16,
    time_zone: &'static str,
    /// Inserted in order; a later, more specific network overrides an earlier one.
    networks: &'static [&'static str],
}

/// Networks are realistic-looking or documentation ranges; the data is synthetic, not real
/// allocation data. Spec lua-records.md §6's pickclosest examples resolve here as they did
/// against GeoLite2 (8.8.8.0/24 sits in New York for that reason).
const CITIES: &[City] = &[
    City {
        name: "Amsterdam",
        geoname_id: 2_759_794,
        country: ("NL", 2_750_405, "Netherlands"),
        eu: true,
        continent: EUROPE,
        subdivision: Some(("NH", "North Holland")),
        latitude: 52.3676,
        longitude: 4.9041,
        accuracy_radius: 20,
        time_zone: "Europe/Amsterdam",
        networks: &[
            "193.0.6.0/24",
            "127.0.1.0/24",
            "2001:db8:1::/48",
            "2001:67c:2e8::/48",
        ],
    },
    City {
        name: "Frankfurt am Main",
        geoname_id: 2_925_533,
        country: ("DE", 2_921_044, "Germany"),
        eu: true,
        continent: EUROPE,
        subdivision: Some(("HE", "Hesse")),
        latitude: 50.1109,
        longitude: 8.6821,
        accuracy_radius: 20,
        time_zone: "Europe/Berlin",
        // 2001:db8:1:1::/64 is carved out of Amsterdam's /48 (prefix_len tests).
        networks: &["80.81.192.0/24", "2001:db8:2::/48", "2001:db8:1:1::/64"],
    },
    City {
        name: "Madrid",
        geoname_id: 3_117_735,
        country: ("ES", 2_510_769, "Spain"),
        eu: true,
        continent: EUROPE,
        subdivision: Some(("MD", "Madrid")),
        latitude: 40.4168,
        longitude: -3.7038,
        accuracy_radius: 20,
        time_zone: "Europe/Madrid",
        networks: &["80.81.82.0/24", "2001:db8:3::/48"],
    },
    City {
        name: "New York",
        geoname_id: 5_128_581,
        country: ("US", 6_252_001, "United States"),
        eu: false,
        continent: NORTH_AMERICA,
        subdivision: Some(("NY", "New York")),
        latitude: 40.7128,
        longitude: -74.006,
        accuracy_radius: 20,
        time_zone: "America/New_York",
        networks: &["8.8.8.0/24", "127.0.3.0/24", "2001:db8:4::/48"],
    },
    City {
        name: "San Jose",
        geoname_id: 5_392_171,
        country: ("US", 6_252_001, "United States"),
        eu: false,
        continent: NORTH_AMERICA,
        subdivision: Some(("CA", "California")),
        latitude: 37.3382,
        longitude: -121.8863,
        accuracy_radius: 20,
        time_zone: "America/Los_Angeles",
        networks: &["45.33.32.0/24", "2001:db8:5::/48"],
    },
    City {
        name: "São Paulo",
        geoname_id: 3_448_439,
        country: ("BR", 3_469_034, "Brazil"),
        eu: false,
        continent: SOUTH_AMERICA,
        subdivision: Some(("SP", "São Paulo")),
        latitude: -23.5505,
        longitude: -46.6333,
        accuracy_radius: 50,
        time_zone: "America/Sao_Paulo",
        networks: &["200.160.0.0/24", "2001:db8:6::/48"],
    },
    City {
        name: "Tokyo",
        geoname_id: 1_850_147,
        country: ("JP", 1_861_060, "Japan"),
        eu: false,
        continent: ASIA,
        subdivision: Some(("13", "Tokyo")),
        latitude: 35.6762,
        longitude: 139.6503,
        accuracy_radius: 50,
        time_zone: "Asia/Tokyo",
        networks: &["210.140.92.0/24", "127.0.2.0/24", "2001:db8:7::/48"],
    },
    City {
        name: "Sydney",
        geoname_id: 2_147_714,
        country: ("AU", 2_077_456, "Australia"),
        eu: false,
        continent: OCEANIA,
        subdivision: Some(("NSW", "New South Wales")),
        latitude: -33.8688,
        longitude: 151.2093,
        accuracy_radius: 20,
        time_zone: "Australia/Sydney",
        networks: &["1.1.1.0/24", "139.130.4.0/24", "2001:db8:8::/48"],
    },
    City {
        name: "Johannesburg",
        geoname_id: 993_800,
        country: ("ZA", 953_987, "South Africa"),
        eu: false,
        continent: AFRICA,
        subdivision: Some(("GP", "Gauteng")),
        latitude: -26.2041,
        longitude: 28.0473,
        accuracy_radius: 50,
        time_zone: "Africa/Johannesburg",
        networks: &["41.0.0.0/24", "2001:db8:9::/48"],
    },
    City {
        name: "Singapore",
        geoname_id: 1_880_252,
        country: ("SG", 1_880_251, "Singapore"),
        eu: false,
        continent: ASIA,
        subdivision: None,
        latitude: 1.3521,
        longitude: 103.8198,
        accuracy_radius: 10,
        time_zone: "Asia/Singapore",
        // 1.1.1.128/25 is carved out of Sydney's 1.1.1.0/24 (prefix_len tests); Sydney's
        // networks are inserted earlier, so this more specific one wins.
        networks: &["203.116.0.0/24", "1.1.1.128/25", "2001:db8:a::/48"],
    },
    City {
        name: "Beijing",
        geoname_id: 1_816_670,
        country: ("CN", 1_814_991, "China"),
        eu: false,
        continent: ASIA,
        subdivision: Some(("BJ", "Beijing")),
        latitude: 39.9042,
        longitude: 116.4074,
        accuracy_radius: 50,
        time_zone: "Asia/Shanghai",
        networks: &["101.0.0.0/24", "2001:db8:b::/48"],
    },
];

/// Networks whose record has a country but no location (and no city): located as unknown.
const COUNTRY_ONLY: &[&str] = &["198.51.100.0/24", "2001:db8:ffff::/48"];

type Names = BTreeMap<&'static str, &'static str>;

fn names(en: &'static str) -> Names {
    BTreeMap::from([("en", en)])
}

#[derive(Serialize)]
struct Named {
    geoname_id: u32,
    names: Names,
}

#[derive(Serialize)]
struct ContinentRecord {
    code: &'static str,
    geoname_id: u32,
    names: Names,
}

#[derive(Serialize)]
struct CountryRecord {
    geoname_id: u32,
    // GeoLite2 writes this only when true; None is omitted by the writer.
    is_in_european_union: Option<bool>,
    iso_code: &'static str,
    names: Names,
}

#[derive(Serialize)]
struct Subdivision {
    iso_code: &'static str,
    names: Names,
}

#[derive(Serialize)]
struct LocationRecord {
    accuracy_radius: u16,
    latitude: f64,
    longitude: f64,
    time_zone: &'static str,
}

/// GeoLite2-City record shape (the fields pickclosest and the geo helpers can use).
#[derive(Serialize)]
struct CityRecord {
    city: Option<Named>,
    continent: ContinentRecord,
    country: CountryRecord,
    location: Option<LocationRecord>,
    registered_country: CountryRecord,
    subdivisions: Option<Vec<Subdivision>>,
}

fn country(c: &City) -> CountryRecord {
    CountryRecord {
        geoname_id: c.country.1,
        is_in_european_union: c.eu.then_some(true),
        iso_code: c.country.0,
        names: names(c.country.2),
    }
}

fn continent(c: &Continent) -> ContinentRecord {
    ContinentRecord {
        code: c.code,
        geoname_id: c.geoname_id,
        names: names(c.name),
    }
}

fn record(c: &City) -> CityRecord {
    CityRecord {
        city: Some(Named {
            geoname_id: c.geoname_id,
            names: names(c.name),
        }),
        continent: continent(&c.continent),
        country: country(c),
        location: Some(LocationRecord {
            accuracy_radius: c.accuracy_radius,
            latitude: c.latitude,
            longitude: c.longitude,
            time_zone: c.time_zone,
        }),
        registered_country: country(c),
        subdivisions: c.subdivision.map(|(iso_code, name)| {
            vec![Subdivision {
                iso_code,
                names: names(name),
            }]
        }),
    }
}

/// (network, autonomous system number, organization) of the ASN database; documentation and
/// private-use numbers. 203.0.113.0/24 has an ASN but no City record; 41.0.0.0/24 a 32-bit one.
const ASNS: &[(&str, u32, &str)] = &[
    ("193.0.6.0/24", 64_500, "Example NL One"),
    ("127.0.1.0/24", 64_500, "Example NL One"),
    ("2001:db8:1::/48", 64_500, "Example NL One"),
    ("80.81.192.0/24", 64_501, "Example DE"),
    ("2001:db8:2::/48", 64_501, "Example DE"),
    ("8.8.8.0/24", 64_502, "Example US"),
    ("127.0.3.0/24", 64_502, "Example US"),
    ("2001:db8:4::/48", 64_502, "Example US"),
    ("210.140.92.0/24", 64_503, "Example JP"),
    ("127.0.2.0/24", 64_503, "Example JP"),
    ("2001:db8:7::/48", 64_503, "Example JP"),
    ("41.0.0.0/24", 4_200_000_000, "Example ZA"),
    ("2001:db8:9::/48", 4_200_000_000, "Example ZA"),
    ("203.0.113.0/24", 64_510, "Example unlocated"),
];

/// GeoLite2-ASN record shape.
#[derive(Serialize)]
struct AsnRecord {
    autonomous_system_number: u32,
    autonomous_system_organization: &'static str,
}

fn write_asn(out: &str) -> Result<(), Box<dyn Error>> {
    let mut writer = Writer::builder("GeoLite2-ASN")
        .languages(["en"])
        .description(&[("en", "dnsteer synthetic test ASN database (not real data)")])
        .build_epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(BUILD_EPOCH))
        .build();
    for (net, number, org) in ASNS {
        let rec = AsnRecord {
            autonomous_system_number: *number,
            autonomous_system_organization: org,
        };
        writer.insert(net.parse::<IpNet>()?, &rec)?;
    }
    let bytes = writer.to_bytes()?;
    std::fs::write(out, &bytes)?;
    println!("wrote {out} ({} bytes)", bytes.len());
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    if let Some(asn_out) = std::env::args().nth(2) {
        write_asn(&asn_out)?;
    }
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "geoip/test-city.mmdb".to_owned());
    let mut writer = Writer::builder("GeoIP2-City")
        .languages(["en"])
        .description(&[(
            "en",
            "dnsteer synthetic test database (not real GeoIP data)",
        )])
        .build_epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(BUILD_EPOCH))
        .build();
    for city in CITIES {
        let rec = record(city);
        for net in city.networks {
            writer.insert(net.parse::<IpNet>()?, &rec)?;
        }
    }
    let netherlands = &CITIES[0];
    let country_only = CityRecord {
        city: None,
        location: None,
        subdivisions: None,
        ..record(netherlands)
    };
    for net in COUNTRY_ONLY {
        writer.insert(net.parse::<IpNet>()?, &country_only)?;
    }
    let bytes = writer.to_bytes()?;
    std::fs::write(&out, &bytes)?;
    println!("wrote {out} ({} bytes)", bytes.len());
    Ok(())
}
