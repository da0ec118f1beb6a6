//! The catalog of every metric Impresario records: name, kind, unit, help text, labels and
//! histogram buckets. A rename is one line here.
//!
//! Names from the OpenTelemetry GenAI semantic conventions (still experimental) are used where
//! the spec has them; everything else has the `impresario_` prefix, base units, and `_total` on
//! counters. The Prometheus exporter renders them with `with_recommended_naming`, which turns
//! dots into underscores and appends the unit (`gen_ai.client.operation.duration` is scraped as
//! `gen_ai_client_operation_duration_seconds`); [`MetricDef::exposition_name`] computes that name.
//!
//! Every label is a bounded set: agent kinds, providers and models (from configuration), and
//! the enums of this crate. Run ids, tenant ids, prompts and error text are never labels.

use metrics::{KeyName, Recorder, SharedString, Unit};

/// Label keys, shared by the recording code and the catalog.
pub mod label {
    /// The agent's kind (`AgentId::kind`).
    pub const AGENT_KIND: &str = "agent_kind";
    /// Why something happened (restarts, halts): a small enum.
    pub const REASON: &str = "reason";
    /// What a halt applied to: `all`, `tenant`, `run` or `agent` (never the id).
    pub const SCOPE: &str = "scope";
    /// How a run ended.
    pub const OUTCOME: &str = "outcome";
    /// The provider a model is registered under (`openai`, `anthropic`, ...).
    pub const PROVIDER: &str = "provider";
    /// The model named in the request.
    pub const MODEL: &str = "model";
    /// The class of a retried failure: `429`, `4xx`, `5xx`, `network` or `timeout`.
    pub const STATUS_CLASS: &str = "status_class";
    /// The kind of ledger account: `global`, `tenant` or `run` (never the id).
    pub const ACCOUNT_KIND: &str = "account_kind";
    /// The limited dimension of an account: `micro_usd`, `tokens`, `model_calls`, `deadline`.
    pub const DIMENSION: &str = "dimension";
    /// The warning fraction crossed, in percent of the limit (as configured on the ledger).
    pub const PERCENT: &str = "percent";
    /// `true` when the supervisor that gave up is a root (nothing above it to escalate to).
    pub const ROOT: &str = "root";
    /// GenAI: the operation (`chat`).
    pub const GEN_AI_OPERATION: &str = "gen_ai.operation.name";
    /// GenAI: the provider.
    pub const GEN_AI_PROVIDER: &str = "gen_ai.provider.name";
    /// GenAI: the model named in the request.
    pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
    /// GenAI: `input` or `output`.
    pub const GEN_AI_TOKEN_TYPE: &str = "gen_ai.token.type";
    /// The class of error of a failed operation (absent on success).
    pub const ERROR_TYPE: &str = "error.type";
    /// GenAI: the agent invoked (its kind: `planner`, `executor`, ...).
    pub const GEN_AI_AGENT_NAME: &str = "gen_ai.agent.name";
    /// GenAI: the tool executed.
    pub const GEN_AI_TOOL_NAME: &str = "gen_ai.tool.name";
}

use label::*;

/// The values a label takes, as far as they are known before anything happens: the series of
/// every combination of known values exist at 0 from the moment a recorder is set up
/// ([`Metrics::register_known`](super::Metrics::register_known)), so that `rate()` and
/// `increase()` see the first event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// Exactly these.
    Known(&'static [&'static str]),
    /// Known only at run time (agent kinds, models from configuration): the series are created
    /// at 0 when the agent kind or model is first seen.
    Open,
    /// Absent from most series (`error.type` is only on failures): not created ahead of time.
    Optional,
}

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution, rendered with explicit buckets.
    Histogram,
}

/// One metric of the catalog.
#[derive(Debug, PartialEq)]
pub struct MetricDef {
    /// The name as recorded.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The unit (`Seconds` for durations), rendered as a name suffix.
    pub unit: Option<Unit>,
    /// The help text.
    pub help: &'static str,
    /// Every label key it may carry (optional ones, like `error.type`, included).
    pub labels: &'static [&'static str],
    /// Bucket upper bounds of a histogram; empty for counters and gauges.
    pub buckets: &'static [f64],
    /// The values of each label, in the order of `labels`; a label past the end is
    /// [`Values::Open`].
    pub values: &'static [Values],
}

impl MetricDef {
    /// The same metric with the values of its labels (in the order of `labels`).
    pub const fn values(self, values: &'static [Values]) -> MetricDef {
        MetricDef { values, ..self }
    }

    /// The values of `label` (a key of `labels`).
    pub fn values_of(&self, label: &str) -> Values {
        self.labels
            .iter()
            .position(|l| *l == label)
            .and_then(|i| self.values.get(i).copied())
            .unwrap_or(Values::Open)
    }

    /// The family name in the Prometheus exposition as `with_recommended_naming` renders it:
    /// invalid characters become `_`, then the unit suffix and, on counters, `_total` are
    /// appended unless already there. Histogram samples add `_bucket`, `_sum` and `_count`.
    pub fn exposition_name(&self) -> String {
        let mut name: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Some(Unit::Seconds) = self.unit {
            if !name.ends_with("_seconds") {
                name.push_str("_seconds");
            }
        }
        if self.kind == MetricKind::Counter && !name.ends_with("_total") {
            name.push_str("_total");
        }
        name
    }
}

/// How a run ended (`impresario_runs_finished_total{outcome}`).
pub const OUTCOMES: Values = Values::Known(&["succeeded", "failed", "halted", "ceiling_reached"]);
/// Why a supervisor restarted an agent.
pub const RESTART_REASONS: Values =
    Values::Known(&["panicked", "failed", "killed", "exited", "sibling"]);
/// What a halt applied to.
pub const HALT_SCOPES: Values = Values::Known(&["all", "tenant", "run", "agent"]);
/// What a lifted (or standing) halt applied to: only these scopes stay in force.
pub const STANDING_SCOPES: Values = Values::Known(&["all", "tenant"]);
/// Why work was halted.
pub const HALT_REASONS: Values = Values::Known(&[
    "operator",
    "cost_ceiling",
    "overshoot",
    "deadline",
    "error_budget",
    "shutdown",
]);
/// Whether the supervisor that gave up is a root.
pub const ROOTS: Values = Values::Known(&["true", "false"]);
/// Kinds of ledger accounts.
pub const ACCOUNT_KINDS: Values = Values::Known(&["global", "tenant", "run"]);
/// Limited dimensions of an account.
pub const DIMENSIONS: Values = Values::Known(&["micro_usd", "tokens", "model_calls", "deadline"]);
/// The ledger's default warning fractions, in percent.
pub const PERCENTS: Values = Values::Known(&["50", "80", "100"]);
/// Classes of retried failures.
pub const STATUS_CLASSES: Values = Values::Known(&["429", "4xx", "5xx", "network", "timeout"]);
/// GenAI operations this crate performs.
pub const OPERATIONS: Values = Values::Known(&["chat"]);
/// GenAI token types.
pub const TOKEN_TYPES: Values = Values::Known(&["input", "output"]);

/// `gen_ai.client.operation.duration` buckets, as the GenAI conventions advise (seconds).
pub const GEN_AI_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// `gen_ai.client.token.usage` buckets, as the GenAI conventions advise (tokens).
pub const GEN_AI_TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// `gen_ai.invoke_agent.duration` buckets, as the GenAI conventions advise (seconds).
pub const GEN_AI_AGENT_BUCKETS: &[f64] = &[
    0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 204.8, 409.6,
];

/// Handler durations: from a 10 us in-memory handler to a minute-long model call.
pub const HANDLER_DURATION_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
    60.0,
];

/// Run durations: from a one-step answer to a two-hour job.
pub const RUN_DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

const fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Counter,
        unit: None,
        help,
        labels,
        buckets: &[],
        values: &[],
    }
}

const fn gauge(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Gauge,
        unit: None,
        help,
        labels,
        buckets: &[],
        values: &[],
    }
}

const fn histogram(
    name: &'static str,
    unit: Unit,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Histogram,
        unit: Some(unit),
        help,
        labels,
        buckets,
        values: &[],
    }
}

/// GenAI: duration of a model call (every attempt and retry of one model), when a request was sent.
pub const GEN_AI_OPERATION_DURATION: MetricDef = histogram(
    "gen_ai.client.operation.duration",
    Unit::Seconds,
    "Duration of GenAI client operations (one model of a call, retries included), when a request was sent.",
    &[GEN_AI_OPERATION, GEN_AI_PROVIDER, GEN_AI_REQUEST_MODEL, ERROR_TYPE],
    GEN_AI_DURATION_BUCKETS,
)
.values(&[OPERATIONS, Values::Open, Values::Open, Values::Optional]);

/// GenAI: tokens a provider reported per call, by `gen_ai.token.type`.
pub const GEN_AI_TOKEN_USAGE: MetricDef = histogram(
    "gen_ai.client.token.usage",
    Unit::Count,
    "Tokens used per GenAI operation as the provider reported them, by token type (input, output).",
    &[
        GEN_AI_OPERATION,
        GEN_AI_PROVIDER,
        GEN_AI_REQUEST_MODEL,
        GEN_AI_TOKEN_TYPE,
    ],
    GEN_AI_TOKEN_BUCKETS,
)
.values(&[OPERATIONS, Values::Open, Values::Open, TOKEN_TYPES]);

/// GenAI: one invocation of an agent of a run (the planner planning, the executor executing a
/// step), from the request to its answer.
pub const GEN_AI_INVOKE_AGENT_DURATION: MetricDef = histogram(
    "gen_ai.invoke_agent.duration",
    Unit::Seconds,
    "Duration of GenAI agent invocations (a plan, a step), by agent; error.type when it did not answer.",
    &[GEN_AI_AGENT_NAME, ERROR_TYPE],
    GEN_AI_AGENT_BUCKETS,
)
.values(&[Values::Open, Values::Optional]);

/// GenAI: one tool execution.
pub const GEN_AI_EXECUTE_TOOL_DURATION: MetricDef = histogram(
    "gen_ai.execute_tool.duration",
    Unit::Seconds,
    "Duration of tool executions, by tool; error.type when the tool failed.",
    &[GEN_AI_TOOL_NAME, ERROR_TYPE],
    GEN_AI_DURATION_BUCKETS,
)
.values(&[Values::Open, Values::Optional]);

/// Messages whose handler ran (to an answer, an error or a panic).
pub const AGENT_MESSAGES_HANDLED: MetricDef = counter(
    "impresario_agent_messages_handled_total",
    "Messages whose handler ran (to an answer or a panic), by agent kind.",
    &[AGENT_KIND],
);

/// How long handlers took, until their answer (async handlers included).
pub const AGENT_HANDLER_DURATION: MetricDef = histogram(
    "impresario_agent_handler_duration_seconds",
    Unit::Seconds,
    "Time from the start of a handler to its answer (async handlers included), by agent kind.",
    &[AGENT_KIND],
    HANDLER_DURATION_BUCKETS,
);

/// Requests admitted and not yet answered, sampled every second.
pub const AGENT_IN_FLIGHT: MetricDef = gauge(
    "impresario_agent_in_flight",
    "Requests admitted and not yet answered (queued or being handled), by agent kind, sampled every second.",
    &[AGENT_KIND],
);

/// Calls refused at once because the agent was at its in-flight limit.
pub const AGENT_OVERLOADED: MetricDef = counter(
    "impresario_agent_overloaded_total",
    "Calls refused with Overloaded because the agent was at its in-flight limit, by agent kind.",
    &[AGENT_KIND],
);

/// Agent incarnations that ended in a panic.
pub const AGENT_PANICS: MetricDef = counter(
    "impresario_agent_panics_total",
    "Agent incarnations ended by a panic (handler, actor future, hook or factory), by agent kind.",
    &[AGENT_KIND],
);

/// Restarts of supervised agents.
pub const SUPERVISOR_RESTARTS: MetricDef = counter(
    "impresario_supervisor_restarts_total",
    "Agents restarted by their supervisor, by agent kind and reason (panicked, failed, killed, exited, sibling).",
    &[AGENT_KIND, REASON],
)
.values(&[Values::Open, RESTART_REASONS]);

/// Supervisors that gave up past their restart intensity.
pub const SUPERVISOR_ESCALATIONS: MetricDef = counter(
    "impresario_supervisor_escalations_total",
    "Supervisors that gave up past their restart intensity: escalated to their parent, or fatal at a root (root=\"true\").",
    &[ROOT],
)
.values(&[ROOTS]);

/// Halts applied to the halt-token tree.
pub const HALTS: MetricDef = counter(
    "impresario_halts_total",
    "Halts applied to the halt-token tree (runs, tenants, everything), by scope and reason.",
    &[SCOPE, REASON],
)
.values(&[HALT_SCOPES, HALT_REASONS]);

/// Standing halts lifted by an operator.
pub const HALTS_LIFTED: MetricDef = counter(
    "impresario_halts_lifted_total",
    "Standing halts (a tenant's, or everything) lifted by an operator, by scope.",
    &[SCOPE],
)
.values(&[STANDING_SCOPES]);

/// Standing halts in force now.
pub const HALTS_IN_FORCE: MetricDef = gauge(
    "impresario_halts_in_force",
    "Standing halts in force (new runs of the scope end halted at once until lifted), by scope.",
    &[SCOPE],
)
.values(&[STANDING_SCOPES]);

/// Agents halted by their supervisor.
pub const AGENTS_HALTED: MetricDef = counter(
    "impresario_agents_halted_total",
    "Agents halted through their supervisor, by reason.",
    &[REASON],
)
.values(&[HALT_REASONS]);

/// Spending crossed a warning fraction of a ceiling.
pub const CEILING_WARNINGS: MetricDef = counter(
    "impresario_ceiling_warnings_total",
    "Accounts whose spending crossed a warning fraction of a ceiling, by account kind, dimension and percent.",
    &[ACCOUNT_KIND, DIMENSION, PERCENT],
)
.values(&[ACCOUNT_KINDS, DIMENSIONS, PERCENTS]);

/// Reservations refused by a ceiling.
pub const CEILINGS_REACHED: MetricDef = counter(
    "impresario_ceilings_reached_total",
    "Reservations refused because they did not fit a ceiling (nothing was sent), by account kind and dimension.",
    &[ACCOUNT_KIND, DIMENSION],
)
.values(&[ACCOUNT_KINDS, DIMENSIONS]);

/// Money charged for model calls.
pub const LLM_COST: MetricDef = counter(
    "impresario_llm_cost_micro_usd_total",
    "Money charged to the ledger for model calls, in micro-USD (failed attempts the provider may bill included), by provider and model.",
    &[PROVIDER, MODEL],
);

/// Model calls whose reported usage cost more than their reservation.
pub const LLM_OVERSHOOTS: MetricDef = counter(
    "impresario_llm_overshoots_total",
    "Model calls whose reported usage cost more than was reserved for them (charged anyway; the run halts with reason overshoot), by provider and model.",
    &[PROVIDER, MODEL],
);

/// Retried model call attempts.
pub const LLM_RETRIES: MetricDef = counter(
    "impresario_llm_retries_total",
    "Model call attempts retried, by provider, model and status class (429, 4xx, 5xx, network, timeout).",
    &[PROVIDER, MODEL, STATUS_CLASS],
)
.values(&[Values::Open, Values::Open, STATUS_CLASSES]);

/// Circuit breaker state per model.
pub const LLM_BREAKER_STATE: MetricDef = gauge(
    "impresario_llm_breaker_state",
    "Circuit breaker of a model after its last call: 0 closed, 1 half-open (probing), 2 open.",
    &[PROVIDER, MODEL],
);

/// Runs started.
pub const RUNS_STARTED: MetricDef = counter("impresario_runs_started_total", "Runs started.", &[]);

/// Runs finished.
pub const RUNS_FINISHED: MetricDef = counter(
    "impresario_runs_finished_total",
    "Runs finished, by outcome (succeeded, failed, halted, ceiling_reached).",
    &[OUTCOME],
)
.values(&[OUTCOMES]);

/// How long runs took.
pub const RUN_DURATION: MetricDef = histogram(
    "impresario_run_duration_seconds",
    Unit::Seconds,
    "Time from the start of a run to its end, by outcome.",
    &[OUTCOME],
    RUN_DURATION_BUCKETS,
)
.values(&[OUTCOMES]);

/// Runs in progress.
pub const RUNS_ACTIVE: MetricDef = gauge(
    "impresario_runs_active",
    "Runs started and not yet finished.",
    &[],
);

/// Approvals waiting for a person.
pub const APPROVALS_PENDING: MetricDef = gauge(
    "impresario_approvals_pending",
    "Tool calls waiting for a person's approval.",
    &[],
);

/// Result of the last semantic health check of a model.
pub const SEMANTIC_HEALTH: MetricDef = gauge(
    "impresario_health_semantic_up",
    "1 if the model's last semantic health check answered the configured question correctly, else 0.",
    &[MODEL],
);

/// Runs waiting in a cluster's run queue.
pub const CLUSTER_QUEUE_DEPTH: MetricDef = gauge(
    "impresario_cluster_queue_depth",
    "Runs waiting in the cluster's run queue for a replica (queued, or leased with the lease expired), as this replica last read it.",
    &[],
);

/// How long the oldest run waiting in a cluster's run queue has waited.
pub const CLUSTER_QUEUE_OLDEST_AGE: MetricDef = gauge(
    "impresario_cluster_queue_oldest_age_seconds",
    "How long the oldest run waiting in the cluster's run queue has waited since it was queued, in seconds (0: none waits).",
    &[],
);

/// Runs driven under a live lease by every replica of a cluster.
pub const CLUSTER_RUNS_LEASED: MetricDef = gauge(
    "impresario_cluster_runs_leased",
    "Runs driven under a live lease, by every replica of the cluster, as this replica last read it.",
    &[],
);

/// Runs this replica stopped driving because it lost their lease.
pub const CLUSTER_LEASES_LOST: MetricDef = counter(
    "impresario_cluster_leases_lost_total",
    "Runs this replica stopped driving because their lease expired or another replica claimed them.",
    &[],
);

/// The whole catalog.
pub const ALL: &[&MetricDef] = &[
    &GEN_AI_OPERATION_DURATION,
    &GEN_AI_TOKEN_USAGE,
    &GEN_AI_INVOKE_AGENT_DURATION,
    &GEN_AI_EXECUTE_TOOL_DURATION,
    &AGENT_MESSAGES_HANDLED,
    &AGENT_HANDLER_DURATION,
    &AGENT_IN_FLIGHT,
    &AGENT_OVERLOADED,
    &AGENT_PANICS,
    &SUPERVISOR_RESTARTS,
    &SUPERVISOR_ESCALATIONS,
    &HALTS,
    &HALTS_LIFTED,
    &HALTS_IN_FORCE,
    &AGENTS_HALTED,
    &CEILING_WARNINGS,
    &CEILINGS_REACHED,
    &LLM_COST,
    &LLM_OVERSHOOTS,
    &LLM_RETRIES,
    &LLM_BREAKER_STATE,
    &RUNS_STARTED,
    &RUNS_FINISHED,
    &RUN_DURATION,
    &RUNS_ACTIVE,
    &APPROVALS_PENDING,
    &SEMANTIC_HEALTH,
    &CLUSTER_QUEUE_DEPTH,
    &CLUSTER_QUEUE_OLDEST_AGE,
    &CLUSTER_RUNS_LEASED,
    &CLUSTER_LEASES_LOST,
];

/// Registers the unit and help text of every metric with `recorder` (the Prometheus exporter
/// does it for you; call it for a recorder of your own).
pub fn describe(recorder: &dyn Recorder) {
    for def in ALL {
        let (name, unit, help) = (
            KeyName::from_const_str(def.name),
            def.unit,
            SharedString::const_str(def.help),
        );
        match def.kind {
            MetricKind::Counter => recorder.describe_counter(name, unit, help),
            MetricKind::Gauge => recorder.describe_gauge(name, unit, help),
            MetricKind::Histogram => recorder.describe_histogram(name, unit, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for def in ALL {
            assert!(seen.insert(def.name), "{} listed twice", def.name);
            let gen_ai = def.name.starts_with("gen_ai.");
            assert!(
                gen_ai || def.name.starts_with("impresario_"),
                "{}",
                def.name
            );
            assert_eq!(
                def.kind == MetricKind::Counter,
                def.name.ends_with("_total") && !gen_ai
            );
            assert_eq!(def.kind == MetricKind::Histogram, !def.buckets.is_empty());
            assert!(def.buckets.windows(2).all(|w| w[0] < w[1]), "{}", def.name);
            assert!(!def.help.is_empty());
        }
        assert_eq!(
            GEN_AI_OPERATION_DURATION.exposition_name(),
            "gen_ai_client_operation_duration_seconds"
        );
        assert_eq!(
            GEN_AI_TOKEN_USAGE.exposition_name(),
            "gen_ai_client_token_usage"
        );
        assert_eq!(LLM_COST.exposition_name(), LLM_COST.name);
    }
}
