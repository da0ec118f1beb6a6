//! Helpers shared by the facade's integration tests.
#![allow(dead_code)] // the `it` binary and embed_in_service each use a part

pub mod exposition;

use exposition::{Exposition, Kind};
use impresario::runtime::telemetry::names::{self, MetricKind};

/// Every family rendered is in the catalog, with its type, help text, and only its labels.
pub fn assert_matches_catalog(scraped: &Exposition) {
    for (name, family) in &scraped.families {
        let def = names::ALL
            .iter()
            .find(|d| d.exposition_name() == *name)
            .unwrap_or_else(|| panic!("{name} is not in the catalog"));
        let kind = match def.kind {
            MetricKind::Counter => Kind::Counter,
            MetricKind::Gauge => Kind::Gauge,
            MetricKind::Histogram => Kind::Histogram,
        };
        assert_eq!(family.kind, kind, "{name}");
        assert_eq!(family.help.as_deref(), Some(def.help), "{name}");
        let allowed: Vec<String> = def.labels.iter().map(|l| l.replace('.', "_")).collect();
        for sample in &family.samples {
            for key in sample.labels.keys() {
                assert!(
                    allowed.contains(key) || key == "le",
                    "{name} has label {key}"
                );
            }
        }
        if def.kind == MetricKind::Histogram {
            for labels in scraped.series_labels(name) {
                let pairs: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let h = scraped.histogram(name, &pairs).unwrap();
                let bounds: Vec<f64> = h.buckets.iter().map(|b| b.0).collect();
                let mut expected = def.buckets.to_vec();
                expected.push(f64::INFINITY);
                assert_eq!(bounds, expected, "{name} buckets");
            }
        }
    }
}
