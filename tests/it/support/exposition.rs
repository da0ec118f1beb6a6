//! A strict parser of the Prometheus text exposition format (0.0.4), for tests: it rejects
//! anything a Prometheus server would reject or silently misread, and checks what must hold
//! between lines (one TYPE per family before its samples, contiguous families, well-formed and
//! cumulative histograms, no duplicate series).
#![allow(dead_code)] // the `it` binary and embed_in_service each use a part
#![allow(clippy::too_many_lines)] // the parser is one pass over the lines, kept whole

use std::collections::{BTreeMap, BTreeSet};

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A metric family: its TYPE, HELP and samples.
#[derive(Debug, Clone)]
pub struct Family {
    pub kind: Kind,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

/// A histogram series: count, sum and `(le, cumulative count)` buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub count: f64,
    pub sum: f64,
    pub buckets: Vec<(f64, f64)>,
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|_| format!("bad value {text:?}")),
    }
}

/// `name{a="b",c="d"}` followed by a value and nothing else.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value in sample line {line:?}"))?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(after) => parse_labels(after).map_err(|e| format!("{e} in {line:?}"))?,
        None => (BTreeMap::new(), &line[name_end..]),
    };
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no space before the value in {line:?}"))?;
    let mut parts = rest.split(' ');
    let value = parse_value(parts.next().unwrap_or(""))?;
    if let Some(extra) = parts.next() {
        // A timestamp is allowed by the format; the exporter never writes one.
        return Err(format!("unexpected {extra:?} after the value in {line:?}"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The labels after a `{`, and what follows their closing `}`.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.char_indices();
    loop {
        let mut key = String::new();
        loop {
            match chars.next() {
                Some((_, '=')) => break,
                Some((i, '}')) if key.is_empty() => return Ok((labels, &text[i + 1..])),
                Some((_, c)) => key.push(c),
                None => return Err("unterminated labels".into()),
            }
        }
        if !valid_label_name(&key) {
            return Err(format!("bad label name {key:?}"));
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("value of {key:?} not quoted"));
        }
        let mut value = String::new();
        loop {
            match chars.next().ok_or("unterminated label value")?.1 {
                '"' => break,
                '\\' => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                c => value.push(c),
            }
        }
        if labels.insert(key.clone(), value).is_some() {
            return Err(format!("label {key:?} twice"));
        }
        match chars.next() {
            Some((_, ',')) => continue,
            Some((i, '}')) => return Ok((labels, &text[i + 1..])),
            _ => return Err("expected ',' or '}' after a label".into()),
        }
    }
}

/// The family a sample name belongs to, given the families declared so far.
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, Family>) -> &'a str {
    if families.contains_key(name) {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if families
                .get(base)
                .is_some_and(|f| matches!(f.kind, Kind::Histogram | Kind::Summary))
            {
                return base;
            }
        }
    }
    name
}

/// Parses `text`, or says what is wrong with it (with the line number).
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();
    for (number, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let keyword = words.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a plain comment
            }
            let name = words
                .next()
                .ok_or_else(|| at("HELP/TYPE without a name".into()))?;
            if !valid_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            if finished.contains(name) {
                return Err(at(format!("{name} declared again after its samples")));
            }
            let rest = words.next().unwrap_or("");
            if current.as_deref() != Some(name) {
                if let Some(previous) = current.take() {
                    finished.insert(previous);
                }
                current = Some(name.to_owned());
            }
            let family = exposition
                .families
                .entry(name.to_owned())
                .or_insert(Family {
                    kind: Kind::Untyped,
                    help: None,
                    samples: Vec::new(),
                });
            if !family.samples.is_empty() {
                return Err(at(format!("{keyword} of {name} after its samples")));
            }
            if keyword == "HELP" {
                if family.help.replace(rest.to_owned()).is_some() {
                    return Err(at(format!("two HELP lines for {name}")));
                }
            } else {
                if family.kind != Kind::Untyped {
                    return Err(at(format!("two TYPE lines for {name}")));
                }
                family.kind = match rest {
                    "counter" => Kind::Counter,
                    "gauge" => Kind::Gauge,
                    "histogram" => Kind::Histogram,
                    "summary" => Kind::Summary,
                    "untyped" => Kind::Untyped,
                    other => return Err(at(format!("unknown type {other:?}"))),
                };
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let family_name = family_of(&sample.name, &exposition.families).to_owned();
        if current.as_deref() != Some(family_name.as_str()) {
            if finished.contains(&family_name) {
                return Err(at(format!("samples of {family_name} are not contiguous")));
            }
            if let Some(previous) = current.take() {
                finished.insert(previous);
            }
            current = Some(family_name.clone());
        }
        let family = exposition
            .families
            .entry(family_name.clone())
            .or_insert(Family {
                kind: Kind::Untyped,
                help: None,
                samples: Vec::new(),
            });
        match family.kind {
            Kind::Histogram => {
                let is_bucket = sample.name.ends_with("_bucket");
                if is_bucket != sample.labels.contains_key("le") {
                    return Err(at(format!("`le` label misplaced on {}", sample.name)));
                }
                if sample.name == family_name {
                    return Err(at(format!("bare histogram sample {}", sample.name)));
                }
            }
            Kind::Counter if sample.value < 0.0 || sample.value.is_nan() => {
                return Err(at(format!("counter {} is {}", sample.name, sample.value)));
            }
            _ => {}
        }
        let key = (
            sample.name.clone(),
            sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        if !series.insert(key) {
            return Err(at(format!("duplicate series {line:?}")));
        }
        family.samples.push(sample);
    }
    for (name, family) in &exposition.families {
        if family.kind == Kind::Histogram {
            for labels in exposition.series_labels(name) {
                exposition
                    .check_histogram(name, &labels)
                    .map_err(|e| format!("{name}{labels:?}: {e}"))?;
            }
        }
    }
    Ok(exposition)
}

impl Exposition {
    /// The family `name`, which must exist.
    pub fn family(&self, name: &str) -> &Family {
        self.families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in the exposition"))
    }

    /// The label sets of a family's series (for a histogram: without `le`).
    pub fn series_labels(&self, family: &str) -> Vec<BTreeMap<String, String>> {
        let mut sets: Vec<BTreeMap<String, String>> = Vec::new();
        for sample in &self.family(family).samples {
            let mut labels = sample.labels.clone();
            labels.remove("le");
            if !sets.contains(&labels) {
                sets.push(labels);
            }
        }
        sets
    }

    /// The value of the sample `name` whose labels are exactly `labels`, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = self.families.get(family_of(name, &self.families))?;
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        family
            .samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// The value of a counter or gauge, or 0 when the series is absent (not recorded yet).
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// The histogram series of `family` with exactly `labels` (besides `le`), if present.
    pub fn histogram(&self, family: &str, labels: &[(&str, &str)]) -> Option<Histogram> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let f = self.families.get(family)?;
        let mut histogram = Histogram {
            count: f64::NAN,
            sum: f64::NAN,
            buckets: Vec::new(),
        };
        let mut found = false;
        for sample in &f.samples {
            let mut labels = sample.labels.clone();
            let le = labels.remove("le");
            if labels != wanted {
                continue;
            }
            found = true;
            if sample.name.ends_with("_bucket") {
                let le = parse_value(le.as_deref().unwrap_or("")).ok()?;
                histogram.buckets.push((le, sample.value));
            } else if sample.name.ends_with("_sum") {
                histogram.sum = sample.value;
            } else if sample.name.ends_with("_count") {
                histogram.count = sample.value;
            }
        }
        found.then_some(histogram)
    }

    fn check_histogram(
        &self,
        family: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let h = self.histogram(family, &pairs).ok_or("missing")?;
        if h.count.is_nan() || h.sum.is_nan() {
            return Err("no _count or no _sum".into());
        }
        if h.buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
            return Err("no +Inf bucket last".into());
        }
        for pair in h.buckets.windows(2) {
            if pair[0].0 >= pair[1].0 || pair[0].1 > pair[1].1 {
                return Err(format!(
                    "buckets not ascending and cumulative: {:?}",
                    h.buckets
                ));
            }
        }
        if h.buckets.last().map(|b| b.1) != Some(h.count) {
            return Err("+Inf bucket differs from _count".into());
        }
        Ok(())
    }
}
