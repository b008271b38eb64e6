//! Cost of answering one query per rule kind: table lookup plus evaluation into a reused buffer.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use dnsteer::config::Config;
use dnsteer::steer::geo::Location;
use dnsteer::steer::records::{self, AnswerSink, Client, Locate, Lookup, RecordTable, Zones};

/// Writes RDATA into one buffer that is cleared per query, as the packet encoder would.
struct BufSink(Vec<u8>);

impl AnswerSink for BufSink {
    fn push(&mut self, rtype: u16, rdata: &[u8]) {
        self.0.extend_from_slice(&rtype.to_be_bytes());
        self.0.extend_from_slice(rdata);
    }
}

/// Fixed location table standing in for the GeoIP database.
struct FakeGeo;

impl Locate for FakeGeo {
    fn locate(&self, ip: IpAddr) -> Option<Location> {
        let IpAddr::V4(v4) = ip else { return None };
        let (lat, lon) = match v4.octets()[0] {
            193 => (52.37, 4.90),
            8 => (37.75, -97.82),
            210 => (35.69, 139.69),
            1 => (-33.49, 143.21),
            80 => (40.41, -3.70),
            _ => return None,
        };
        Some(Location {
            lat,
            lon,
            prefix_len: 16,
        })
    }
}

const CONFIG: &str = r#"
[geoip]
database = "city.mmdb"

[[records]]
name = "static.bench.test"
type = "A"
content = ["192.0.2.10", "192.0.2.11"]

[[records]]
name = "all.bench.test"
type = "A"
lua = "all({'192.0.2.1','192.0.2.2','192.0.2.3'})"

[[records]]
name = "hashed.bench.test"
type = "A"
lua = "pickhashed({'192.0.2.1','192.0.2.2','192.0.2.3'})"

[[records]]
name = "whashed.bench.test"
type = "A"
lua = "pickwhashed({{5,'192.0.2.1'},{1,'192.0.2.2'},{7,'192.0.2.3'},{2,'192.0.2.4'},{3,'192.0.2.5'}})"

[[records]]
name = "first.bench.test"
type = "A"
lua = "ifurlup('http://hc.bench.test/ok', {'192.0.2.1','192.0.2.2','192.0.2.3'}, {selector='pickfirst'})"

[[records]]
name = "hcall.bench.test"
type = "A"
lua = "ifurlup('http://hc.bench.test/ok', {{'192.0.2.1','192.0.2.2'},{'192.0.2.3'}}, {selector='all'})"

[[records]]
name = "closest.bench.test"
type = "A"
lua = "pickclosest({'193.0.6.139','8.8.8.8','210.140.92.1','1.1.1.1'})"

[[records]]
name = "view.bench.test"
type = "A"
lua = "view({{{'10.0.0.0/8'},{'192.0.2.10'}},{{'172.16.0.0/12','192.168.0.0/16'},{'192.0.2.20'}},{{'0.0.0.0/0'},{'192.0.2.99'}}})"
"#;

fn wire(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn bench(c: &mut Criterion) {
    let config = Config::parse(CONFIG, Path::new("bench.toml")).expect("bench config parses");
    let compiled = records::compile(&config).expect("bench records compile");
    let geo: Arc<dyn Locate> = Arc::new(FakeGeo);
    let table = RecordTable::link(&compiled, &HashMap::new(), Some(geo), &Zones::new());
    let client = Client {
        bestwho: "80.81.82.0".parse().expect("address"),
        ecs_source_prefix: Some(24),
    };
    let mut sink = BufSink(Vec::with_capacity(512));

    let mut group = c.benchmark_group("evaluate");
    for kind in [
        "static", "all", "hashed", "whashed", "first", "hcall", "closest", "view",
    ] {
        let qname = wire(&format!("{kind}.bench.test."));
        group.bench_function(kind, |b| {
            b.iter(|| {
                sink.0.clear();
                let Lookup::Hit(set, _) = table.lookup(black_box(&qname), 1) else {
                    panic!("{kind} is in the table");
                };
                black_box(set.evaluate(black_box(&client), &mut sink).ok());
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
