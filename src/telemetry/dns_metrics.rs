//! DNS traffic metrics in CoreDNS's shape (`coredns_dns_*` → `dnsteer_dns_*`): requests by
//! proto, family, zone and type; responses by zone, rcode and the path that wrote them; request
//! and response sizes; DO=1 requests.
//!
//! The packet path only indexes fixed arrays with small integers (zone slot, qtype index,
//! rcode, path) and bumps single-writer counters: no lock, allocation or formatting. Names are
//! attached at scrape time. Zone slots come from a registry that only grows and never reuses a
//! slot, shared by every snapshot generation: a slot taken before a reload still names the same
//! zone after it, so a forwarded query's answer is counted under the zone it was asked for and
//! counters never move between zones. Zones beyond [`MAX_ZONES`] (over the process lifetime)
//! count as `"other"`. The counting types are `pub` for `benches/dns_metrics.rs` only.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};

use crate::telemetry::prom::{Cnt, Transport, family, histogram_family, label_pairs, labelled};

/// Named zones a process can count separately; later ones count as `"other"`.
pub(crate) const MAX_ZONES: usize = 62;
/// Zone slots: `other`, `dropped`, then the named zones.
const ZONE_SLOTS: usize = MAX_ZONES + 2;

/// Index of a zone in the counter arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneSlot(u8);

impl ZoneSlot {
    /// A name under none of the zones.
    pub const OTHER: ZoneSlot = ZoneSlot(0);
    /// A packet not parsed (rate-limited before parsing, malformed): CoreDNS's `dropped`.
    pub const DROPPED: ZoneSlot = ZoneSlot(1);

    /// Index into per-zone arrays (`< MAX_ZONES + 2`).
    #[inline]
    pub(crate) fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The zone's index when the name is under a known zone (rate limiting keys on it).
    pub(crate) fn known(self) -> Option<u8> {
        (self != ZoneSlot::OTHER && self != ZoneSlot::DROPPED).then_some(self.0)
    }
}

/// Query types with their own `type` label (CoreDNS's set plus NAPTR, SVCB, HTTPS, CAA);
/// the rest is `"other"`.
const QTYPES: [(u16, &str); 21] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (35, "NAPTR"),
    (43, "DS"),
    (46, "RRSIG"),
    (47, "NSEC"),
    (48, "DNSKEY"),
    (50, "NSEC3"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (251, "IXFR"),
    (252, "AXFR"),
    (255, "ANY"),
    (257, "CAA"),
];
const TYPE_SLOTS: usize = QTYPES.len() + 1;

/// `QTYPES` index of `qtype`, or the `"other"` slot.
#[inline]
fn type_slot(qtype: u16) -> usize {
    // A match compiles to a jump table: cheaper than searching QTYPES per packet.
    match qtype {
        1 => 0,
        2 => 1,
        5 => 2,
        6 => 3,
        12 => 4,
        15 => 5,
        16 => 6,
        28 => 7,
        33 => 8,
        35 => 9,
        43 => 10,
        46 => 11,
        47 => 12,
        48 => 13,
        50 => 14,
        64 => 15,
        65 => 16,
        251 => 17,
        252 => 18,
        255 => 19,
        257 => 20,
        _ => QTYPES.len(),
    }
}

/// Header rcodes with their own label; 11..=15 are `"other"` (extended rcodes live in the OPT
/// record and are not looked at).
const RCODES: [&str; 12] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "other",
];

#[inline]
fn rcode_slot(rcode: u8) -> usize {
    usize::from(rcode & 0x0f).min(RCODES.len() - 1)
}

/// What wrote an answer: the `plugin` label of `dnsteer_dns_responses_total` (CoreDNS names the
/// plugin that wrote the response) and the `path` of `dnsteer_dns_answers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerPath {
    /// An in-process record (or its NODATA), unsigned.
    InProcess = 0,
    /// An in-process record signed here (DO=1 in a zone with a live key).
    Signed = 1,
    /// A fresh packet-cache entry.
    Cached = 2,
    /// An expired packet-cache entry, because PowerDNS could not answer (RFC 8767).
    Stale = 3,
    /// PowerDNS's answer.
    Forwarded = 4,
    /// REFUSED or TC=1 from the rate limiter.
    RateLimited = 5,
    /// An error answer made here: FORMERR, NOTIMP, BADVERS, refused NOTIFY, a record that could
    /// not be evaluated or signed, no PowerDNS answer and nothing stale.
    Error = 6,
    /// A NOTIFY acknowledged.
    Notify = 7,
}

impl AnswerPath {
    pub(crate) const ALL: [AnswerPath; 8] = [
        AnswerPath::InProcess,
        AnswerPath::Signed,
        AnswerPath::Cached,
        AnswerPath::Stale,
        AnswerPath::Forwarded,
        AnswerPath::RateLimited,
        AnswerPath::Error,
        AnswerPath::Notify,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            AnswerPath::InProcess => "in_process",
            AnswerPath::Signed => "signed",
            AnswerPath::Cached => "cached",
            AnswerPath::Stale => "stale",
            AnswerPath::Forwarded => "forwarded",
            AnswerPath::RateLimited => "rate_limited",
            AnswerPath::Error => "error",
            AnswerPath::Notify => "notify",
        }
    }
}
const PATHS: usize = AnswerPath::ALL.len();

/// CoreDNS's size buckets (bytes), upper bounds inclusive.
pub(crate) const SIZE_BUCKETS: [u32; 14] = [
    0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16_000, 32_000, 48_000, 64_000,
];
const SIZE_SLOTS: usize = SIZE_BUCKETS.len() + 1;

/// Where one query or response is counted.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    pub proto: Transport,
    /// The client address is IPv6 (CoreDNS `family="2"`).
    pub v6: bool,
    pub zone: ZoneSlot,
}

/// One thread's DNS counters: flat arrays, allocated once when the thread registers.
pub struct DnsCounters {
    /// `[proto][family][zone][type]`
    requests: Box<[Cnt]>,
    /// `[zone]`
    do_requests: Box<[Cnt]>,
    /// `[zone][rcode][path]`
    responses: Box<[Cnt]>,
    /// `[proto][zone][bucket]`, and byte sums `[proto][zone]`.
    request_size: Box<[Cnt]>,
    request_bytes: Box<[Cnt]>,
    response_size: Box<[Cnt]>,
    response_bytes: Box<[Cnt]>,
}

fn counters(n: usize) -> Box<[Cnt]> {
    (0..n).map(|_| Cnt::default()).collect()
}

impl Default for DnsCounters {
    fn default() -> Self {
        DnsCounters {
            requests: counters(2 * 2 * ZONE_SLOTS * TYPE_SLOTS),
            do_requests: counters(ZONE_SLOTS),
            responses: counters(ZONE_SLOTS * RCODES.len() * PATHS),
            request_size: counters(2 * ZONE_SLOTS * SIZE_SLOTS),
            request_bytes: counters(2 * ZONE_SLOTS),
            response_size: counters(2 * ZONE_SLOTS * SIZE_SLOTS),
            response_bytes: counters(2 * ZONE_SLOTS),
        }
    }
}

#[inline]
fn size_slot(size: usize) -> usize {
    // Most DNS messages are under 100 bytes: the scan usually stops at the second bound.
    SIZE_BUCKETS
        .iter()
        .position(|b| size <= *b as usize)
        .unwrap_or(SIZE_BUCKETS.len())
}

impl DnsCounters {
    /// A query received: `qtype` None when it was not parsed (type `"other"`).
    #[inline]
    pub fn request(&self, at: Site, qtype: Option<u16>, dnssec_ok: bool, size: usize) {
        let (p, z) = (at.proto as usize, usize::from(at.zone.0));
        let t = qtype.map_or(QTYPES.len(), type_slot);
        let f = usize::from(at.v6);
        self.requests[((p * 2 + f) * ZONE_SLOTS + z) * TYPE_SLOTS + t].inc();
        if dnssec_ok {
            self.do_requests[z].inc();
        }
        self.request_size[(p * ZONE_SLOTS + z) * SIZE_SLOTS + size_slot(size)].inc();
        self.request_bytes[p * ZONE_SLOTS + z].add(size as u64);
    }

    /// A response sent (its header's rcode, `size` bytes on the wire without TCP framing).
    #[inline]
    pub fn response(&self, at: Site, rcode: u8, path: AnswerPath, size: usize) {
        let (p, z) = (at.proto as usize, usize::from(at.zone.0));
        self.responses[(z * RCODES.len() + rcode_slot(rcode)) * PATHS + path as usize].inc();
        self.response_size[(p * ZONE_SLOTS + z) * SIZE_SLOTS + size_slot(size)].inc();
        self.response_bytes[p * ZONE_SLOTS + z].add(size as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// Zones
// ---------------------------------------------------------------------------------------------

/// Zone names by slot (slot `i + 2` is `names[i]`). Grows on the control plane only.
#[derive(Default)]
pub(crate) struct ZoneRegistry {
    names: Mutex<Vec<String>>,
}

impl ZoneRegistry {
    fn slot(&self, apex: &str) -> Option<ZoneSlot> {
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let i = match names.iter().position(|n| n == apex) {
            Some(i) => i,
            None if names.len() < MAX_ZONES => {
                names.push(apex.to_string());
                names.len() - 1
            }
            None => {
                tracing::warn!(
                    zone = apex,
                    max = MAX_ZONES,
                    "too many zones for per-zone DNS metrics: counted as \"other\""
                );
                return None;
            }
        };
        u8::try_from(i + 2).ok().map(ZoneSlot)
    }

    /// Label value of every slot in use, by slot index.
    fn labels(&self) -> Vec<String> {
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = vec!["other".to_string(), "dropped".to_string()];
        out.extend(names.iter().cloned());
        out
    }
}

/// The zones of one snapshot, for matching query names to zone slots on the packet path.
#[derive(Default)]
pub struct ZoneTable {
    /// Lower-case wire-format apex and its slot.
    zones: Vec<(Box<[u8]>, ZoneSlot)>,
    /// Bit n set: some apex is n bytes long in wire format (names are at most 255), so most
    /// suffixes of a query name are skipped without comparing bytes.
    lengths: [u64; 4],
    registry: Arc<ZoneRegistry>,
}

impl ZoneTable {
    /// The table for `apexes` (lower-case, trailing dot; duplicates and unparsable names
    /// ignored), taking slots from `previous`'s registry so counters keep their zone.
    pub fn build<'a>(
        previous: Option<&ZoneTable>,
        apexes: impl IntoIterator<Item = &'a str>,
    ) -> ZoneTable {
        let registry = previous.map(|p| p.registry.clone()).unwrap_or_default();
        let mut apexes: Vec<&str> = apexes.into_iter().collect();
        apexes.sort_unstable();
        apexes.dedup();
        let zones: Vec<(Box<[u8]>, ZoneSlot)> = apexes
            .into_iter()
            .filter_map(|apex| {
                let wire = crate::dns::name_from_text(apex).ok()?;
                Some((wire.into_boxed_slice(), registry.slot(apex)?))
            })
            .collect();
        let mut lengths = [0u64; 4];
        for (apex, _) in &zones {
            let n = apex.len().min(255);
            lengths[n / 64] |= 1 << (n % 64);
        }
        ZoneTable {
            zones,
            lengths,
            registry,
        }
    }

    /// The zone name of every slot in use, by slot index (`other`, `dropped`, then apexes).
    pub(crate) fn slot_names(&self) -> Vec<String> {
        self.registry.labels()
    }

    /// The slot of the longest apex that is `qname` (lower-case wire format) or one of its
    /// parents; [`ZoneSlot::OTHER`] when none is.
    #[inline]
    pub fn slot_of(&self, qname: &[u8]) -> ZoneSlot {
        if self.zones.is_empty() {
            return ZoneSlot::OTHER;
        }
        // Suffixes from the longest: the first match is the longest apex.
        let mut off = 0;
        while let Some(&len) = qname.get(off) {
            let suffix = &qname[off..];
            let n = suffix.len().min(255);
            if self.lengths[n / 64] & (1 << (n % 64)) != 0 {
                for (apex, slot) in &self.zones {
                    if apex.len() == suffix.len() && **apex == *suffix {
                        return *slot;
                    }
                }
            }
            if len == 0 {
                break;
            }
            off += 1 + usize::from(len);
        }
        ZoneSlot::OTHER
    }
}

// ---------------------------------------------------------------------------------------------
// Scrape
// ---------------------------------------------------------------------------------------------

/// The `dnsteer_dns_*` families, summed over `threads`. Zero series are left out (as CoreDNS
/// does), except that each family keeps at least its HELP and TYPE lines.
pub(crate) fn families(threads: &[&DnsCounters], zones: &ZoneTable) -> Vec<MetricFamily> {
    let labels = zones.registry.labels();
    let sum = |f: &dyn Fn(&DnsCounters) -> &[Cnt], i: usize| -> u64 {
        threads.iter().map(|c| f(c)[i].get()).sum()
    };
    let mut out = Vec::from(requests(&sum, &labels));
    out.extend(responses(&sum, &labels));
    out.push(sizes(
        "dnsteer_dns_request_size_bytes",
        "Size of the request in bytes, per zone and protocol (CoreDNS's buckets).",
        &|c| &c.request_size,
        &|c| &c.request_bytes,
        &sum,
        &labels,
    ));
    out.push(sizes(
        "dnsteer_dns_response_size_bytes",
        "Size of the response in bytes, per zone and protocol (CoreDNS's buckets).",
        &|c| &c.response_size,
        &|c| &c.response_bytes,
        &sum,
        &labels,
    ));
    out
}

type Sum<'a> = dyn Fn(&dyn Fn(&DnsCounters) -> &[Cnt], usize) -> u64 + 'a;

/// Requests by proto, family, zone and type; DO=1 requests by zone.
fn requests(sum: &Sum<'_>, zones: &[String]) -> [MetricFamily; 2] {
    let mut rows = Vec::new();
    let mut do_rows = Vec::new();
    for (z, zone) in zones.iter().enumerate() {
        for proto in Transport::ALL {
            for (f, fam) in ["1", "2"].into_iter().enumerate() {
                for t in 0..TYPE_SLOTS {
                    let i = ((proto as usize * 2 + f) * ZONE_SLOTS + z) * TYPE_SLOTS + t;
                    let v = sum(&|c| &c.requests, i);
                    if v > 0 {
                        let ty = QTYPES.get(t).map_or("other", |q| q.1);
                        rows.push((
                            vec![
                                ("proto", proto.label().to_string()),
                                ("family", fam.to_string()),
                                ("zone", zone.clone()),
                                ("type", ty.to_string()),
                            ],
                            v as f64,
                        ));
                    }
                }
            }
        }
        let v = sum(&|c| &c.do_requests, z);
        if v > 0 {
            do_rows.push((vec![("zone", zone.clone())], v as f64));
        }
    }
    [
        family(
            "dnsteer_dns_requests_total",
            "DNS requests, per protocol, address family (1: IPv4, 2: IPv6), zone and query type.",
            MetricType::COUNTER,
            rows,
        ),
        family(
            "dnsteer_dns_do_requests_total",
            "DNS requests with the DO bit set, per zone.",
            MetricType::COUNTER,
            do_rows,
        ),
    ]
}

/// Responses by zone, rcode and path, and their sum by path.
fn responses(sum: &Sum<'_>, zones: &[String]) -> Vec<MetricFamily> {
    let mut rows = Vec::new();
    let mut by_path = [0u64; PATHS];
    for (z, zone) in zones.iter().enumerate() {
        for (r, rcode) in RCODES.iter().enumerate() {
            for path in AnswerPath::ALL {
                let v = sum(
                    &|c| &c.responses,
                    (z * RCODES.len() + r) * PATHS + path as usize,
                );
                by_path[path as usize] += v;
                if v > 0 {
                    rows.push((
                        vec![
                            ("zone", zone.clone()),
                            ("rcode", rcode.to_string()),
                            ("plugin", path.label().to_string()),
                        ],
                        v as f64,
                    ));
                }
            }
        }
    }
    vec![
        family(
            "dnsteer_dns_responses_total",
            "DNS responses, per zone, rcode and what wrote them (plugin: in_process, signed, cached, stale, forwarded, rate_limited, error, notify).",
            MetricType::COUNTER,
            rows,
        ),
        labelled(
            "dnsteer_dns_answers_total",
            "DNS responses by the path that made them (dnsteer_dns_responses_total summed by plugin).",
            MetricType::COUNTER,
            "path",
            AnswerPath::ALL
                .iter()
                .map(|&p| (p.label(), by_path[p as usize] as f64)),
        ),
    ]
}

type Pick<'a> = dyn Fn(&DnsCounters) -> &[Cnt] + 'a;

fn sizes(
    name: &str,
    help: &str,
    buckets: &Pick<'_>,
    bytes: &Pick<'_>,
    sum: &Sum<'_>,
    zones: &[String],
) -> MetricFamily {
    let mut series = Vec::new();
    for (z, zone) in zones.iter().enumerate() {
        for proto in Transport::ALL {
            let base = (proto as usize * ZONE_SLOTS + z) * SIZE_SLOTS;
            let counts: Vec<u64> = (0..SIZE_SLOTS).map(|b| sum(buckets, base + b)).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let labels = vec![("proto", proto.label().to_string()), ("zone", zone.clone())];
            let bytes = sum(bytes, proto as usize * ZONE_SLOTS + z);
            series.push(size_histogram(labels, &counts, bytes as f64));
        }
    }
    histogram_family(name, help, series)
}

fn size_histogram(labels: Vec<(&str, String)>, counts: &[u64], sum: f64) -> Metric {
    let mut cumulative = 0;
    let buckets = SIZE_BUCKETS
        .iter()
        .zip(counts)
        .map(|(ub, n)| {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(f64::from(*ub));
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut h = Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(counts.iter().sum());
    h.set_sample_sum(sum);
    let mut m = Metric::from_label(label_pairs(labels));
    m.set_histogram(h);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::prom::encode;

    fn wire(name: &str) -> Vec<u8> {
        crate::dns::name_from_text(name).unwrap()
    }

    #[test]
    fn longest_apex_wins_and_unknown_names_are_other() {
        let t = ZoneTable::build(None, ["example.test.", "sub.example.test.", "b.test."]);
        let sub = t.slot_of(&wire("sub.example.test."));
        let ex = t.slot_of(&wire("www.example.test."));
        assert_ne!(sub, ex);
        assert_eq!(t.slot_of(&wire("a.sub.example.test.")), sub);
        assert_eq!(t.slot_of(&wire("example.test.")), ex);
        // A label boundary is needed: "xexample.test." is not under "example.test.".
        assert_eq!(t.slot_of(&wire("xexample.test.")), ZoneSlot::OTHER);
        assert_eq!(t.slot_of(&wire("other.zone.")), ZoneSlot::OTHER);
        assert_eq!(t.slot_of(&wire(".")), ZoneSlot::OTHER);
    }

    #[test]
    fn a_zone_keeps_its_slot_across_snapshots_and_slots_are_bounded() {
        let first = ZoneTable::build(None, ["a.test.", "b.test."]);
        let b = first.slot_of(&wire("x.b.test."));
        // A reload drops a.test. and adds c.test.: b.test. keeps its slot, c.test. takes a new one.
        let second = ZoneTable::build(Some(&first), ["c.test.", "b.test."]);
        assert_eq!(second.slot_of(&wire("x.b.test.")), b);
        assert_eq!(second.slot_of(&wire("x.a.test.")), ZoneSlot::OTHER);
        let c = second.slot_of(&wire("c.test."));
        assert_ne!(c, first.slot_of(&wire("a.test.")));
        let many: Vec<String> = (0..MAX_ZONES + 5).map(|i| format!("z{i}.test.")).collect();
        let third = ZoneTable::build(Some(&second), many.iter().map(String::as_str));
        assert_eq!(third.registry.labels().len(), ZONE_SLOTS);
        assert!(third.zones.len() < many.len());
    }

    #[test]
    fn counts_are_labelled_at_scrape_time() {
        let t = ZoneTable::build(None, ["example.test."]);
        let c = DnsCounters::default();
        let at = Site {
            proto: Transport::Udp,
            v6: false,
            zone: t.slot_of(&wire("www.example.test.")),
        };
        for _ in 0..3 {
            c.request(at, Some(1), true, 40);
            c.response(at, 0, AnswerPath::InProcess, 120);
        }
        let other = Site {
            proto: Transport::Tcp,
            v6: true,
            zone: ZoneSlot::OTHER,
        };
        c.request(other, Some(99), false, 600);
        c.response(other, 3, AnswerPath::Forwarded, 70_000);
        let text = encode(&families(&[&c], &t));
        for want in [
            r#"dnsteer_dns_requests_total{proto="udp",family="1",zone="example.test.",type="A"} 3"#,
            r#"dnsteer_dns_requests_total{proto="tcp",family="2",zone="other",type="other"} 1"#,
            r#"dnsteer_dns_do_requests_total{zone="example.test."} 3"#,
            r#"dnsteer_dns_responses_total{zone="example.test.",rcode="NOERROR",plugin="in_process"} 3"#,
            r#"dnsteer_dns_responses_total{zone="other",rcode="NXDOMAIN",plugin="forwarded"} 1"#,
            r#"dnsteer_dns_answers_total{path="in_process"} 3"#,
            r#"dnsteer_dns_answers_total{path="signed"} 0"#,
            r#"dnsteer_dns_request_size_bytes_bucket{proto="udp",zone="example.test.",le="0"} 0"#,
            r#"dnsteer_dns_request_size_bytes_bucket{proto="udp",zone="example.test.",le="100"} 3"#,
            r#"dnsteer_dns_request_size_bytes_sum{proto="udp",zone="example.test."} 120"#,
            r#"dnsteer_dns_response_size_bytes_bucket{proto="udp",zone="example.test.",le="200"} 3"#,
            r#"dnsteer_dns_response_size_bytes_bucket{proto="tcp",zone="other",le="64000"} 0"#,
            r#"dnsteer_dns_response_size_bytes_count{proto="tcp",zone="other"} 1"#,
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }

    #[test]
    fn type_and_rcode_slots_match_their_labels() {
        for (i, (code, _)) in QTYPES.iter().enumerate() {
            assert_eq!(type_slot(*code), i);
        }
        assert_eq!(type_slot(99), QTYPES.len());
        assert_eq!(RCODES[rcode_slot(3)], "NXDOMAIN");
        assert_eq!(RCODES[rcode_slot(12)], "other");
        assert_eq!(size_slot(0), 0);
        assert_eq!(size_slot(511), 5);
        assert_eq!(size_slot(70_000), SIZE_BUCKETS.len());
    }
}
