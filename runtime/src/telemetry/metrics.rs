//! Recording: where metrics go ([`Metrics`]) and the typed functions that record them.
//!
//! Hot paths resolve their handles once: per agent kind when an agent is spawned
//! ([`AgentMetrics`], kept in the agent's slot), per model on its first call ([`ModelMetrics`]).
//! Recording through a handle is an atomic operation, or a branch on a no-op handle when no
//! recorder is installed. Rare events (restarts, halts, ceilings, runs) look their metric up
//! each time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};

use super::names::{self, label, MetricDef, MetricKind, Values};

const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Where metrics go. Cheap to clone.
///
/// - [`Metrics::global`] (the default everywhere): the recorder the `metrics` crate sees when a
///   metric is first used, i.e. the global one (install it with
///   [`Prometheus::install`](super::Prometheus::install) *before* starting the runtime: agents
///   and models resolve their handles once, and a handle resolved with no recorder stays a
///   no-op), or a thread-local one if that thread set one.
/// - [`Metrics::to`]: a recorder of your own, e.g. from
///   [`Prometheus::build`](super::Prometheus::build). It is used from every thread, so tests
///   can count exactly without a global recorder, and several runtimes in one process can
///   export separately.
///
/// Pass it to `RuntimeBuilder::metrics`, `llm::ClientBuilder::metrics` and
/// `halt::Halts::with_metrics`.
#[derive(Clone, Default)]
pub struct Metrics {
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.recorder {
            None => "Metrics::global",
            Some(_) => "Metrics::to(<recorder>)",
        })
    }
}

/// A value that is a metric label: one of a small, fixed set of snake_case names (the catalog's
/// [`Values::Known`] of its label). The types of the rest of the crate implement it where they
/// are defined (a run's outcome, a halt's reason and scope kind, an account's kind, a
/// dimension), so this module depends on none of them.
pub trait LabelValue {
    /// The label value, e.g. `ceiling_reached`.
    fn label_value(&self) -> &'static str;
}

/// Why a supervisor restarted an agent, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// It panicked.
    Panicked,
    /// It failed (`fail`, the watchdog, an escalating child supervisor).
    Failed,
    /// It was killed.
    Killed,
    /// It stopped normally, and its restart type restarts it anyway.
    Exited,
    /// A sibling failed and the strategy restarts it too.
    Sibling,
}

impl RestartReason {
    fn as_str(self) -> &'static str {
        match self {
            RestartReason::Panicked => "panicked",
            RestartReason::Failed => "failed",
            RestartReason::Killed => "killed",
            RestartReason::Exited => "exited",
            RestartReason::Sibling => "sibling",
        }
    }
}

impl Metrics {
    /// The recorder of the `metrics` crate (see the type's documentation). The default.
    pub fn global() -> Self {
        Metrics::default()
    }

    /// `recorder`, from every thread. Describes every metric of the catalog to it, and creates
    /// the series of every known label combination at 0 ([`Metrics::register_known`]).
    pub fn to(recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        names::describe(&*recorder);
        let metrics = Metrics {
            recorder: Some(recorder),
        };
        metrics.register_known();
        metrics
    }

    /// Creates, at 0, the series of every metric of the catalog whose label values are all
    /// known ahead ([`Values::Known`]): a counter then exists before its first increment, so
    /// `rate()` and `increase()` see that increment. Series with an agent kind or a model are
    /// created when the kind is spawned or the model resolved.
    pub fn register_known(&self) {
        for def in names::ALL {
            self.register_series(def, &[]);
        }
    }

    /// Creates the series of `def` for every combination of its known label values, with the
    /// `fixed` labels as given; does nothing if a label is open and not fixed.
    fn register_series(&self, def: &'static MetricDef, fixed: &[Label]) {
        let mut combinations: Vec<Vec<Label>> = vec![Vec::new()];
        for key in def.labels {
            let values: Vec<Label> =
                match (fixed.iter().find(|l| l.key() == *key), def.values_of(key)) {
                    (Some(given), _) => vec![given.clone()],
                    (None, Values::Known(values)) => {
                        values.iter().map(|v| Label::new(*key, *v)).collect()
                    }
                    (None, Values::Optional) => continue,
                    (None, Values::Open) => return,
                };
            combinations = combinations
                .into_iter()
                .flat_map(|labels| {
                    values.iter().map(move |value| {
                        let mut labels = labels.clone();
                        labels.push(value.clone());
                        labels
                    })
                })
                .collect();
        }
        for labels in combinations {
            match def.kind {
                MetricKind::Counter => drop(self.counter(def, labels)),
                MetricKind::Gauge => drop(self.gauge(def, labels)),
                MetricKind::Histogram => drop(self.histogram(def, labels)),
            }
        }
    }

    /// Whether a recorder receives what is recorded here. With no recorder installed, `metrics`
    /// falls back to its no-op recorder, the only zero-sized one (a recorder that stores
    /// anything has a size): then the runtime skips reading the clock for handler durations.
    pub(crate) fn receives(&self) -> bool {
        self.recorder.is_some() || metrics::with_recorder(|r| std::mem::size_of_val(r) != 0)
    }

    fn with<T>(&self, f: impl FnOnce(&dyn Recorder) -> T) -> T {
        match &self.recorder {
            Some(recorder) => f(&**recorder),
            None => metrics::with_recorder(f),
        }
    }

    fn counter(&self, def: &'static MetricDef, labels: Vec<Label>) -> Counter {
        self.with(|r| r.register_counter(&Key::from_parts(def.name, labels), &METADATA))
    }

    fn gauge(&self, def: &'static MetricDef, labels: Vec<Label>) -> Gauge {
        self.with(|r| r.register_gauge(&Key::from_parts(def.name, labels), &METADATA))
    }

    fn histogram(&self, def: &'static MetricDef, labels: Vec<Label>) -> Histogram {
        self.with(|r| r.register_histogram(&Key::from_parts(def.name, labels), &METADATA))
    }

    /// A run started: counts it and adds it to the active runs.
    pub fn run_started(&self) {
        self.counter(&names::RUNS_STARTED, vec![]).increment(1);
        self.gauge(&names::RUNS_ACTIVE, vec![]).increment(1.0);
    }

    /// A run ended after `duration`: counts it by outcome, records its duration, and removes it
    /// from the active runs.
    pub fn run_finished(&self, outcome: impl LabelValue, duration: Duration) {
        let outcome = || vec![Label::new(label::OUTCOME, outcome.label_value())];
        self.counter(&names::RUNS_FINISHED, outcome()).increment(1);
        self.histogram(&names::RUN_DURATION, outcome())
            .record(duration);
        self.gauge(&names::RUNS_ACTIVE, vec![]).decrement(1.0);
    }

    /// A tool call now waits for a person's approval.
    pub fn approval_requested(&self) {
        self.gauge(&names::APPROVALS_PENDING, vec![]).increment(1.0);
    }

    /// A pending approval was granted, refused or abandoned.
    pub fn approval_resolved(&self) {
        self.gauge(&names::APPROVALS_PENDING, vec![]).decrement(1.0);
    }

    /// A supervisor restarted an agent of kind `agent_kind`.
    pub fn restart(&self, agent_kind: &str, reason: RestartReason) {
        let labels = vec![
            Label::new(label::AGENT_KIND, agent_kind.to_owned()),
            Label::new(label::REASON, reason.as_str()),
        ];
        self.counter(&names::SUPERVISOR_RESTARTS, labels)
            .increment(1);
    }

    /// A supervisor gave up past its intensity; `root` when it has no parent (fatal).
    pub fn escalation(&self, root: bool) {
        let labels = vec![Label::new(label::ROOT, if root { "true" } else { "false" })];
        self.counter(&names::SUPERVISOR_ESCALATIONS, labels)
            .increment(1);
    }

    /// A halt was applied to the halt-token tree; `scope` labels as its kind (`all`, `tenant`,
    /// `run` or `agent`), never its id.
    pub fn halt(&self, scope: &impl LabelValue, reason: impl LabelValue) {
        let labels = vec![
            Label::new(label::SCOPE, scope.label_value()),
            Label::new(label::REASON, reason.label_value()),
        ];
        self.counter(&names::HALTS, labels).increment(1);
    }

    /// An operator lifted the standing halt of `scope`.
    pub fn halt_lifted(&self, scope: &impl LabelValue) {
        let labels = vec![Label::new(label::SCOPE, scope.label_value())];
        self.counter(&names::HALTS_LIFTED, labels).increment(1);
    }

    /// `count` standing halts of `scope`'s kind (`all` or `tenant`) are in force now.
    pub fn halts_in_force(&self, scope: &impl LabelValue, count: usize) {
        let labels = vec![Label::new(label::SCOPE, scope.label_value())];
        self.gauge(&names::HALTS_IN_FORCE, labels).set(count as f64);
    }

    /// A supervisor halted `count` agents.
    pub fn agents_halted(&self, reason: impl LabelValue, count: usize) {
        let labels = vec![Label::new(label::REASON, reason.label_value())];
        self.counter(&names::AGENTS_HALTED, labels)
            .increment(count as u64);
    }

    /// An account's spending crossed `percent` of its ceiling in `dimension`; `account` labels
    /// as its kind (`global`, `tenant` or `run`), never its id.
    pub fn ceiling_warning(
        &self,
        account: &impl LabelValue,
        dimension: impl LabelValue,
        percent: u8,
    ) {
        let labels = vec![
            Label::new(label::ACCOUNT_KIND, account.label_value()),
            Label::new(label::DIMENSION, dimension.label_value()),
            Label::new(label::PERCENT, percent.to_string()),
        ];
        self.counter(&names::CEILING_WARNINGS, labels).increment(1);
    }

    /// A reservation was refused by an account's ceiling in `dimension`.
    pub fn ceiling_reached(&self, account: &impl LabelValue, dimension: impl LabelValue) {
        let labels = vec![
            Label::new(label::ACCOUNT_KIND, account.label_value()),
            Label::new(label::DIMENSION, dimension.label_value()),
        ];
        self.counter(&names::CEILINGS_REACHED, labels).increment(1);
    }

    /// An agent of a run (`agent`: its kind) answered after `took`; `error` is the class of its
    /// failure, if it did not answer.
    pub fn agent_invoked(&self, agent: &str, took: Duration, error: Option<&'static str>) {
        let mut labels = vec![Label::new(label::GEN_AI_AGENT_NAME, agent.to_owned())];
        labels.extend(error.map(|e| Label::new(label::ERROR_TYPE, e)));
        self.histogram(&names::GEN_AI_INVOKE_AGENT_DURATION, labels)
            .record(took);
    }

    /// Tool `tool` ran for `took`; `error` is the class of its failure, if it failed.
    pub fn tool_executed(&self, tool: &str, took: Duration, error: Option<&'static str>) {
        let mut labels = vec![Label::new(label::GEN_AI_TOOL_NAME, tool.to_owned())];
        labels.extend(error.map(|e| Label::new(label::ERROR_TYPE, e)));
        self.histogram(&names::GEN_AI_EXECUTE_TOOL_DURATION, labels)
            .record(took);
    }

    /// The semantic health check of `model` answered correctly (`ok`) or not.
    pub fn semantic_health(&self, model: &str, ok: bool) {
        let labels = vec![Label::new(label::MODEL, model.to_owned())];
        self.gauge(&names::SEMANTIC_HEALTH, labels)
            .set(if ok { 1.0 } else { 0.0 });
    }

    /// What a cluster replica last read of its run queue: runs waiting, the oldest one's wait,
    /// runs leased by every replica.
    pub fn cluster_queue(&self, depth: u64, oldest_age: Duration, leased: u64) {
        let (depth, leased) = (depth as f64, leased as f64);
        self.gauge(&names::CLUSTER_QUEUE_DEPTH, vec![]).set(depth);
        self.gauge(&names::CLUSTER_QUEUE_OLDEST_AGE, vec![])
            .set(oldest_age.as_secs_f64());
        self.gauge(&names::CLUSTER_RUNS_LEASED, vec![]).set(leased);
    }

    /// A cluster replica stopped driving a run whose lease it lost.
    pub fn cluster_lease_lost(&self) {
        self.counter(&names::CLUSTER_LEASES_LOST, vec![])
            .increment(1);
    }

    /// The handles of one agent kind.
    pub(crate) fn agent(&self, kind: &Arc<str>) -> AgentMetrics {
        let labels = || vec![Label::new(label::AGENT_KIND, kind.clone())];
        self.register_series(&names::SUPERVISOR_RESTARTS, &labels());
        AgentMetrics {
            timed: self.receives(),
            handled: self.counter(&names::AGENT_MESSAGES_HANDLED, labels()),
            duration: self.histogram(&names::AGENT_HANDLER_DURATION, labels()),
            in_flight: self.gauge(&names::AGENT_IN_FLIGHT, labels()),
            overloaded: self.counter(&names::AGENT_OVERLOADED, labels()),
            panics: self.counter(&names::AGENT_PANICS, labels()),
        }
    }

    /// The handles of one model.
    #[cfg(feature = "llm")]
    pub(crate) fn model(&self, provider: &str, model: &str) -> ModelMetrics {
        let gen_ai = |token_type: Option<&'static str>| {
            let mut labels = vec![
                Label::new(label::GEN_AI_OPERATION, "chat"),
                Label::new(label::GEN_AI_PROVIDER, provider.to_owned()),
                Label::new(label::GEN_AI_REQUEST_MODEL, model.to_owned()),
            ];
            labels.extend(token_type.map(|t| Label::new(label::GEN_AI_TOKEN_TYPE, t)));
            labels
        };
        let ours = || {
            vec![
                Label::new(label::PROVIDER, provider.to_owned()),
                Label::new(label::MODEL, model.to_owned()),
            ]
        };
        self.register_series(&names::LLM_RETRIES, &ours());
        ModelMetrics {
            metrics: self.clone(),
            provider: provider.to_owned(),
            model: model.to_owned(),
            duration: self.histogram(&names::GEN_AI_OPERATION_DURATION, gen_ai(None)),
            input_tokens: self.histogram(&names::GEN_AI_TOKEN_USAGE, gen_ai(Some("input"))),
            output_tokens: self.histogram(&names::GEN_AI_TOKEN_USAGE, gen_ai(Some("output"))),
            cost: self.counter(&names::LLM_COST, ours()),
            overshoots: self.counter(&names::LLM_OVERSHOOTS, ours()),
            breaker: self.gauge(&names::LLM_BREAKER_STATE, ours()),
        }
    }
}

/// The metrics of one agent kind, resolved when the first agent of the kind is spawned.
pub(crate) struct AgentMetrics {
    /// Whether handler durations are recorded (false with no recorder: no clock is read).
    pub(crate) timed: bool,
    handled: Counter,
    duration: Histogram,
    in_flight: Gauge,
    overloaded: Counter,
    panics: Counter,
}

impl AgentMetrics {
    /// A handler ran and answered (or panicked) after `took` (`None` when not [`timed`](Self::timed)).
    pub(crate) fn handled(&self, took: Option<Duration>) {
        self.handled.increment(1);
        if let Some(took) = took {
            self.duration.record(took);
        }
    }

    /// Agents of the kind have `requests` admitted and not yet answered, in all.
    pub(crate) fn in_flight(&self, requests: usize) {
        self.in_flight.set(requests as f64);
    }

    /// A call was refused with `Overloaded`.
    pub(crate) fn overloaded(&self) {
        self.overloaded.increment(1);
    }

    /// An incarnation ended in a panic.
    pub(crate) fn panicked(&self) {
        self.panics.increment(1);
    }
}

/// The metrics of one model, resolved on its first call.
#[cfg(feature = "llm")]
pub(crate) struct ModelMetrics {
    metrics: Metrics,
    provider: String,
    model: String,
    duration: Histogram,
    input_tokens: Histogram,
    output_tokens: Histogram,
    cost: Counter,
    overshoots: Counter,
    breaker: Gauge,
}

#[cfg(feature = "llm")]
impl ModelMetrics {
    /// A model call that sent at least one request took `took`; `error` is the class of its
    /// failure (`LlmError::kind`).
    pub(crate) fn operation(&self, took: Duration, error: Option<&'static str>) {
        match error {
            None => self.duration.record(took),
            Some(error) => {
                let labels = vec![
                    Label::new(label::GEN_AI_OPERATION, "chat"),
                    Label::new(label::GEN_AI_PROVIDER, self.provider.clone()),
                    Label::new(label::GEN_AI_REQUEST_MODEL, self.model.clone()),
                    Label::new(label::ERROR_TYPE, error),
                ];
                self.metrics
                    .histogram(&names::GEN_AI_OPERATION_DURATION, labels)
                    .record(took);
            }
        }
    }

    /// The provider reported `input` and `output` tokens for an attempt.
    pub(crate) fn usage(&self, input: u64, output: u64) {
        self.input_tokens.record(input as f64);
        self.output_tokens.record(output as f64);
    }

    /// The ledger charged `micro_usd` for an attempt.
    pub(crate) fn cost(&self, micro_usd: u64) {
        self.cost.increment(micro_usd);
    }

    /// An attempt's reported usage cost more than its reservation.
    pub(crate) fn overshoot(&self) {
        self.overshoots.increment(1);
    }

    /// A retry of a failed attempt of class `status_class` was sent.
    pub(crate) fn retry(&self, status_class: &'static str) {
        let labels = vec![
            Label::new(label::PROVIDER, self.provider.clone()),
            Label::new(label::MODEL, self.model.clone()),
            Label::new(label::STATUS_CLASS, status_class),
        ];
        self.metrics
            .counter(&names::LLM_RETRIES, labels)
            .increment(1);
    }

    /// The model's breaker is now in `state`: 0 closed, 1 half-open, 2 open (the gauge's
    /// documented values).
    pub(crate) fn breaker(&self, state: u8) {
        self.breaker.set(f64::from(state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_series_exists_at_zero_before_anything_happens() {
        let (metrics, exposition) = super::super::Prometheus::new().build();
        let text = exposition.render();
        let has = |line: &str| text.lines().any(|l| l == line);
        for line in [
            "impresario_runs_started_total 0",
            "impresario_runs_finished_total{outcome=\"ceiling_reached\"} 0",
            "impresario_halts_total{scope=\"tenant\",reason=\"cost_ceiling\"} 0",
            "impresario_supervisor_escalations_total{root=\"true\"} 0",
            "impresario_ceilings_reached_total{account_kind=\"run\",dimension=\"micro_usd\"} 0",
            "impresario_run_duration_seconds_count{outcome=\"failed\"} 0",
            "impresario_runs_active 0",
        ] {
            assert!(has(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("agent_kind="), "open labels wait until seen");
        assert!(
            !text.contains("impresario_health_semantic_up"),
            "no check ran yet"
        );
        // An agent kind and a model bring their own series at 0.
        let _agent = metrics.agent(&Arc::from("planner"));
        let _model = metrics.model("openai", "gpt-4o-mini");
        let text = exposition.render();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has("impresario_supervisor_restarts_total{agent_kind=\"planner\",reason=\"panicked\"} 0"), "{text}");
        assert!(has("impresario_llm_retries_total{provider=\"openai\",model=\"gpt-4o-mini\",status_class=\"429\"} 0"), "{text}");
        struct Outcome;
        impl LabelValue for Outcome {
            fn label_value(&self) -> &'static str {
                "ceiling_reached"
            }
        }
        metrics.run_finished(Outcome, Duration::from_secs(1));
        let text = exposition.render();
        assert!(text.contains("impresario_runs_finished_total{outcome=\"ceiling_reached\"} 1"));
    }

    #[test]
    fn handlers_are_timed_only_when_a_recorder_receives_the_time() {
        // No unit test of this crate installs a global recorder.
        let kind: Arc<str> = "k".into();
        assert!(!Metrics::global().agent(&kind).timed);
        let (metrics, _) = super::super::Prometheus::new().build();
        assert!(metrics.agent(&kind).timed);
        let local = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&local, || assert!(Metrics::global().agent(&kind).timed));
    }
}
