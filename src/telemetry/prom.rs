//! Prometheus building blocks shared by every metrics file: the single-writer counter, the
//! transport label, and the builders of families and of the text output.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

/// A counter written by exactly one thread and read by the scraper.
#[derive(Default)]
pub(crate) struct Cnt(AtomicU64);

impl Cnt {
    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        // Single writer: load+store is enough and avoids a locked read-modify-write.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp = 0,
    Tcp = 1,
}

impl Transport {
    pub(crate) const ALL: [Transport; 2] = [Transport::Udp, Transport::Tcp];

    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Builds a labelled family of counters or gauges.
pub(crate) fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    rows: Vec<(Vec<(&str, String)>, f64)>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(
        rows.into_iter()
            .map(|(labels, v)| {
                let mut m = Metric::from_label(label_pairs(labels));
                match kind {
                    MetricType::COUNTER => {
                        let mut c = Counter::default();
                        c.set_value(v);
                        m.set_counter(c);
                    }
                    _ => {
                        let mut g = Gauge::default();
                        g.set_value(v);
                        m.set_gauge(g);
                    }
                }
                m
            })
            .collect(),
    );
    f
}

/// Builds a family with one label, `key`, from (label value, sample) rows (e.g. one row per
/// variant of a reason enum).
pub(crate) fn labelled<'v>(
    name: &str,
    help: &str,
    kind: MetricType,
    key: &str,
    rows: impl IntoIterator<Item = (&'v str, f64)>,
) -> MetricFamily {
    let rows = rows
        .into_iter()
        .map(|(value, v)| (vec![(key, value.to_string())], v))
        .collect();
    family(name, help, kind, rows)
}

/// Builds an unlabelled counter or gauge.
pub(crate) fn scalar(name: &str, help: &str, kind: MetricType, v: f64) -> MetricFamily {
    family(name, help, kind, vec![(Vec::new(), v)])
}

pub(crate) fn label_pairs(labels: Vec<(&str, String)>) -> Vec<LabelPair> {
    labels.into_iter().map(|(k, v)| label(k, v)).collect()
}

fn label(k: &str, v: String) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(k.into());
    l.set_value(v);
    l
}

/// Builds a histogram family from its series (see `metrics::histogram_metric`).
pub(crate) fn histogram_family(name: &str, help: &str, series: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(series);
    f
}

/// Encodes families in the Prometheus text format.
///
/// A family with no series yet (no probe targets, no failed probe) is still declared with its
/// HELP and TYPE lines: the prometheus encoder rejects it, and would stop the whole output
/// there, hiding every family after it.
pub fn encode(families: &[MetricFamily]) -> String {
    let encoder = prometheus::TextEncoder::new();
    let mut out = String::new();
    for f in families {
        if f.get_metric().is_empty() {
            let kind = format!("{:?}", f.get_field_type()).to_lowercase();
            let help = f.help().replace('\\', "\\\\").replace('\n', "\\n");
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n",
                name = f.name()
            ));
        } else {
            // Fails only for an unnamed family, before writing anything; ours all have names.
            let _ = encoder.encode_utf8(std::slice::from_ref(f), &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_families_are_declared_and_do_not_cut_the_output() {
        let fams = vec![
            family("a_total", "A.", MetricType::COUNTER, Vec::new()),
            scalar("b_total", "B.", MetricType::COUNTER, 3.0),
        ];
        let text = encode(&fams);
        assert_eq!(
            text,
            "# HELP a_total A.\n# TYPE a_total counter\n\
             # HELP b_total B.\n# TYPE b_total counter\nb_total 3\n"
        );
    }
}
