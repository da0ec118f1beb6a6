//! Metrics through the public API, each test with a recorder of its own (`Prometheus::build`,
//! handed to the runtime, clients and halts), so tests count exactly, in parallel, and no test
//! installs a global recorder. Every scrape is parsed strictly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::support::assert_matches_catalog;
use crate::support::exposition::{self, Exposition};
use futures_util::future::BoxFuture;
use impresario::prelude::*;
use impresario::runtime::halt::{Halt, HaltMode, HaltReason, HaltScope, Halts};
use impresario::runtime::ledger::{AccountId, Charge, Ledger, Limits};
use impresario::runtime::llm::{
    BreakerConfig, BreakerState, CallOptions, ChatModel, ChatRequest, ChatResponse, Client,
    FinishReason, LlmError, ModelPrice, PriceTable, Rates, RetryPolicy, Usage,
};
use impresario::runtime::telemetry::names;
use impresario::runtime::telemetry::{Metrics, MetricsHandle, Prometheus};
use impresario::runtime::RunOutcome;
use impresario::supervisor::{
    ChildSpec, Intensity, Strategy, Supervisor, SupervisorEvent, SupervisorSpec,
};
use tokio::sync::broadcast;

fn local() -> (Metrics, MetricsHandle) {
    Prometheus::new().build()
}

fn scrape(handle: &MetricsHandle) -> Exposition {
    let text = handle.render();
    exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Waits (up to 3 s) until the sample `name{labels}` is `wanted`.
async fn wait_for(handle: &MetricsHandle, name: &str, labels: &[(&str, &str)], wanted: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let now = scrape(handle).value(name, labels);
        if now == Some(wanted) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {now:?}, not {wanted}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Message)]
#[rtype(result = "u64")]
struct Work(u64);

#[derive(Message)]
#[rtype(result = "()")]
struct Slow(Duration);

#[derive(Message)]
#[rtype(result = "()")]
struct Crash;

#[derive(Default)]
struct Worker;
impl Actor for Worker {
    type Context = Context<Self>;
}
agent!(Worker);

impl Handler<Work> for Worker {
    type Result = u64;
    fn handle(&mut self, Work(n): Work, _: &mut Context<Self>) -> u64 {
        n + 1
    }
}

impl Handler<Slow> for Worker {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, Slow(d): Slow, _: &mut Context<Self>) -> Self::Result {
        Box::pin(tokio::time::sleep(d))
    }
}

impl Handler<Crash> for Worker {
    type Result = ();
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("crash on purpose");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_count_messages_in_flight_overloads_and_panics() {
    let (metrics, handle) = local();
    let rt = Runtime::builder()
        .arbiters(2)
        .metrics(metrics)
        .start()
        .unwrap();
    let options = SpawnOptions {
        in_flight_limit: Some(1),
        ..SpawnOptions::default()
    };
    let worker: AgentRef<Worker> = rt
        .spawn_with(AgentId::new("worker", "1"), options, Worker::default)
        .unwrap();
    let kind = [("agent_kind", "worker")];
    for n in 0..3 {
        assert_eq!(worker.ask(Work(n)).await.unwrap(), n + 1);
    }

    // One slow call fills the agent; the next is refused; in flight is 1 meanwhile.
    let slow = tokio::spawn({
        let worker = worker.clone();
        async move { worker.ask(Slow(Duration::from_millis(1_500))).await }
    });
    while worker.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(matches!(
        worker.ask(Work(0)).await,
        Err(AgentError::Overloaded { .. })
    ));
    let during = scrape(&handle);
    assert_eq!(
        during.value("impresario_agent_overloaded_total", &kind),
        Some(1.0)
    );
    // In flight is sampled every second.
    wait_for(&handle, "impresario_agent_in_flight", &kind, 1.0).await;
    slow.await.unwrap().unwrap();
    wait_for(&handle, "impresario_agent_in_flight", &kind, 0.0).await;

    let mut lifecycle = rt.subscribe();
    assert!(matches!(
        worker.ask(Crash).await,
        Err(AgentError::Panicked { .. })
    ));
    loop {
        if let LifecycleEvent::Exited { .. } = lifecycle.recv().await.unwrap() {
            break;
        }
    }

    let after = scrape(&handle);
    assert_matches_catalog(&after);
    // 3 Work + 1 Slow + 1 Crash ran; the refused call did not.
    assert_eq!(
        after.value("impresario_agent_messages_handled_total", &kind),
        Some(5.0)
    );
    let durations = after
        .histogram("impresario_agent_handler_duration_seconds", &kind)
        .unwrap();
    assert_eq!(durations.count, 5.0);
    assert!(
        durations.sum >= 0.3,
        "the slow handler took 300 ms: {durations:?}"
    );
    assert_eq!(after.value("impresario_agent_in_flight", &kind), Some(0.0));
    assert_eq!(
        after.value("impresario_agent_panics_total", &kind),
        Some(1.0)
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

/// Waits for the next supervisor event matching `pred`.
async fn until(
    events: &mut broadcast::Receiver<SupervisorEvent>,
    pred: impl Fn(&SupervisorEvent) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) if pred(&event) => return,
            Ok(Ok(_)) => {}
            other => panic!("expected event did not come: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisors_count_restarts_escalations_halts_and_ceilings() {
    let (metrics, handle) = local();
    let rt = Runtime::builder()
        .arbiters(2)
        .metrics(metrics.clone())
        .start()
        .unwrap();
    let spec = SupervisorSpec::new(Strategy::OneForAll)
        .intensity(Intensity {
            max_restarts: 1,
            period: Duration::from_secs(60),
        })
        .child(ChildSpec::agent(
            AgentId::new("crasher", "a"),
            Worker::default,
        ))
        .child(ChildSpec::agent(
            AgentId::new("bystander", "b"),
            Worker::default,
        ));
    let root = Supervisor::start_root(&rt, AgentId::new("supervisor", "root"), spec).unwrap();
    let mut events = root.events();
    let crasher = loop {
        if let Some(a) = rt
            .directory()
            .lookup::<Worker>(&AgentId::new("crasher", "a"))
        {
            if a.is_running() && root.children().await.unwrap().len() == 2 {
                break a;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    // First crash: both restarted (one for all). Second: past the intensity, fatal at the root.
    let _ = crasher.ask(Crash).await;
    until(&mut events, |e| {
        matches!(e, SupervisorEvent::ChildRestarted { child, .. } if &*child.kind == "bystander")
    })
    .await;
    while !crasher.is_running() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = crasher.ask(Crash).await;
    until(&mut events, |e| matches!(e, SupervisorEvent::Fatal { .. })).await;

    // Halts: one through the supervisor (no agents are left to reach), one on a run's token.
    let reached = root.halt(&Halt::new(
        HaltScope::All,
        HaltMode::Immediate,
        HaltReason::Operator,
    ));
    assert_eq!(reached, 0);
    let halts = Halts::with_metrics(metrics.clone());
    let _token = halts.run(&"acme".into(), &"run-1".into());
    // Applied twice, as a process's own halt comes back to it from PostgreSQL's NOTIFY:
    // counted once.
    for _ in 0..2 {
        assert!(halts.halt(
            HaltScope::Run("run-1".into()),
            HaltMode::Immediate,
            HaltReason::Deadline
        ));
    }
    assert!(!halts.halt(
        HaltScope::Run("no-such-run".into()),
        HaltMode::Immediate,
        HaltReason::Deadline
    ));

    // Ceilings: a run spends past 50 % of its limit, then asks for more than is left.
    let ledger = Ledger::new();
    let run = AccountId::Run("run-2".into());
    let limits = Limits {
        micro_usd: Some(1_000),
        ..Limits::default()
    };
    ledger.open(run.clone(), None, limits).unwrap();
    let _run_token = halts.run(&"acme".into(), &"run-2".into());
    root.enforce_ceilings(&ledger, &halts, impresario::supervisor::OnCeiling::HaltRun)
        .await
        .unwrap();
    let path = ledger.path(&run).unwrap();
    path.reserve(Charge::usd(600))
        .unwrap()
        .settle(Charge::usd(600));
    assert!(path.reserve(Charge::usd(600)).is_err());
    until(&mut events, |e| {
        matches!(
            e,
            SupervisorEvent::Halted {
                scope: HaltScope::Run(_),
                ..
            }
        )
    })
    .await;

    let s = scrape(&handle);
    assert_matches_catalog(&s);
    let restarts = "impresario_supervisor_restarts_total";
    assert_eq!(
        s.value(
            restarts,
            &[("agent_kind", "crasher"), ("reason", "panicked")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.value(
            restarts,
            &[("agent_kind", "bystander"), ("reason", "sibling")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.value(
            "impresario_supervisor_escalations_total",
            &[("root", "true")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.value(
            "impresario_agent_panics_total",
            &[("agent_kind", "crasher")]
        ),
        Some(2.0)
    );
    assert_eq!(
        s.value("impresario_agents_halted_total", &[("reason", "operator")]),
        Some(0.0)
    );
    assert_eq!(
        s.value(
            "impresario_halts_total",
            &[("scope", "run"), ("reason", "deadline")]
        ),
        Some(1.0),
        "a halt that reached no token, or the same token again, is not counted"
    );
    assert_eq!(
        s.value(
            "impresario_halts_total",
            &[("scope", "run"), ("reason", "cost_ceiling")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.value(
            "impresario_ceiling_warnings_total",
            &[
                ("account_kind", "run"),
                ("dimension", "micro_usd"),
                ("percent", "50")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.value(
            "impresario_ceilings_reached_total",
            &[("account_kind", "run"), ("dimension", "micro_usd")]
        ),
        Some(1.0)
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

/// A provider that fails with each error of its queue in turn, then answers with `usage`.
struct Flaky {
    errors: Mutex<VecDeque<LlmError>>,
    usage: Usage,
    calls: AtomicUsize,
}

impl ChatModel for Flaky {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let next = self.errors.lock().unwrap().pop_front();
        let answer = match next {
            Some(err) => Err(err),
            None => Ok(ChatResponse {
                model: request.model.clone(),
                content: "fine".into(),
                tool_calls: Vec::new(),
                finish_reason: FinishReason::Stop,
                usage: self.usage,
                request_id: None,
                rate_limit: None,
                cost_micro_usd: None,
                cache_hit: false,
            }),
        };
        Box::pin(std::future::ready(answer))
    }
}

fn transient(status: u16) -> LlmError {
    LlmError::Transient {
        status,
        message: "try again".into(),
        retry_after: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_client_counts_tokens_cost_retries_and_breaker_state() {
    let (metrics, handle) = local();
    let mut prices = PriceTable::default();
    let rates = Rates {
        input: 2_000_000,  // $2 per million input tokens
        output: 8_000_000, // $8 per million output tokens
        ..Rates::default()
    };
    prices.insert("steady-1", ModelPrice::new("flaky", rates));
    prices.insert("broken-1", ModelPrice::new("dead", rates));
    let usage = Usage {
        input_tokens: 1_234,
        output_tokens: 567,
        ..Usage::default()
    };
    let flaky = Flaky {
        errors: Mutex::new(
            [
                transient(503),
                LlmError::RateLimited {
                    message: "slow down".into(),
                    retry_after: None,
                },
            ]
            .into(),
        ),
        usage,
        calls: AtomicUsize::new(0),
    };
    let dead = Flaky {
        errors: Mutex::new([transient(500), transient(500)].into()),
        usage,
        calls: AtomicUsize::new(0),
    };
    let client = Client::builder()
        .prices(prices)
        .provider("flaky", flaky)
        .provider("dead", dead)
        .retry(RetryPolicy {
            max_retries: 2,
            base_delay: Duration::ZERO,
            jitter: 0.0,
            ..RetryPolicy::default()
        })
        .breaker(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_secs(60),
        })
        .metrics(metrics)
        .build()
        .unwrap();
    let ledger = Ledger::new();
    let options = CallOptions::new(
        ledger.path(&AccountId::Global).unwrap(),
        tokio_util::sync::CancellationToken::new(),
    );

    // A 503, then a 429, then an answer: two retries, one operation, one usage. The prompt is
    // long enough for the 1,234 input tokens reported (more would be an overshoot).
    let prompt = format!("hi{}", " there".repeat(220));
    let answer = client
        .chat(
            ChatRequest::new("steady-1").user(prompt).max_tokens(600),
            &options,
        )
        .await
        .unwrap();
    let cost = answer.cost_micro_usd.unwrap();
    assert_eq!(cost, 1_234 * 2 + 567 * 8, "micro-USD: tokens x rate");
    // Two 500s open the breaker (threshold 2): the last retry is refused, nothing is sent.
    let refused = client
        .chat(
            ChatRequest::new("broken-1").user("hi").max_tokens(600),
            &options,
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, LlmError::CircuitOpen { .. }), "{refused}");
    assert_eq!(client.breaker_state("broken-1"), BreakerState::Open);

    let s = scrape(&handle);
    assert_matches_catalog(&s);
    let steady = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "flaky"),
        ("gen_ai_request_model", "steady-1"),
    ];
    let tokens = |token_type| {
        let mut labels = steady.to_vec();
        labels.push(("gen_ai_token_type", token_type));
        s.histogram("gen_ai_client_token_usage", &labels).unwrap()
    };
    assert_eq!((tokens("input").count, tokens("input").sum), (1.0, 1_234.0));
    assert_eq!((tokens("output").count, tokens("output").sum), (1.0, 567.0));
    let ours = [("provider", "flaky"), ("model", "steady-1")];
    assert_eq!(
        s.value("impresario_llm_cost_micro_usd_total", &ours),
        Some(cost as f64)
    );
    assert_eq!(
        ledger
            .account(&AccountId::Global)
            .unwrap()
            .snapshot()
            .spent
            .micro_usd,
        cost,
        "the metric equals what the ledger charged"
    );
    let retries = |class| {
        let mut labels = ours.to_vec();
        labels.push(("status_class", class));
        s.value("impresario_llm_retries_total", &labels)
    };
    assert_eq!((retries("5xx"), retries("429")), (Some(1.0), Some(1.0)));
    assert_eq!(
        s.histogram("gen_ai_client_operation_duration_seconds", &steady)
            .unwrap()
            .count,
        1.0
    );
    let broken = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "dead"),
        ("gen_ai_request_model", "broken-1"),
        ("error_type", "circuit_open"),
    ];
    assert_eq!(
        s.histogram("gen_ai_client_operation_duration_seconds", &broken)
            .unwrap()
            .count,
        1.0,
        "the failed call sent one request, so it is an operation, classed by its final error"
    );
    assert_eq!(
        s.value(
            "impresario_llm_breaker_state",
            &[("provider", "dead"), ("model", "broken-1")]
        ),
        Some(2.0)
    );
    assert_eq!(s.value("impresario_llm_breaker_state", &ours), Some(0.0));
    assert_eq!(
        client.breaker_states(),
        vec![
            ("broken-1".to_owned(), BreakerState::Open),
            ("steady-1".to_owned(), BreakerState::Closed)
        ]
    );
}

#[test]
fn run_and_approval_metrics_are_counted_as_recorded() {
    let (metrics, handle) = local();
    metrics.run_started();
    metrics.run_started();
    metrics.approval_requested();
    let s = scrape(&handle);
    assert_eq!(s.value("impresario_runs_active", &[]), Some(2.0));
    assert_eq!(s.value("impresario_approvals_pending", &[]), Some(1.0));
    metrics.approval_resolved();
    metrics.run_finished(RunOutcome::Succeeded, Duration::from_secs(42));
    metrics.run_finished(RunOutcome::Halted, Duration::from_millis(1_500));
    let s = scrape(&handle);
    assert_matches_catalog(&s);
    assert_eq!(s.value("impresario_runs_started_total", &[]), Some(2.0));
    assert_eq!(s.value("impresario_runs_active", &[]), Some(0.0));
    assert_eq!(s.value("impresario_approvals_pending", &[]), Some(0.0));
    for (outcome, seconds, le) in [("succeeded", 42.0, 60.0), ("halted", 1.5, 5.0)] {
        let labels = [("outcome", outcome)];
        assert_eq!(
            s.value("impresario_runs_finished_total", &labels),
            Some(1.0)
        );
        let h = s
            .histogram("impresario_run_duration_seconds", &labels)
            .unwrap();
        assert_eq!((h.count, h.sum), (1.0, seconds));
        let first = h.buckets.iter().find(|b| b.1 == 1.0).unwrap();
        assert_eq!(first.0, le, "{outcome} lands in the bucket up to {le} s");
    }
    assert_eq!(
        s.value("impresario_runs_finished_total", &[("outcome", "failed")]),
        Some(0.0),
        "every outcome exists from the start, at 0 until it happens"
    );
}

#[test]
fn every_catalog_metric_renders_under_its_exposition_name() {
    let (metrics, handle) = local();
    metrics.run_started();
    metrics.run_finished(RunOutcome::Failed, Duration::from_secs(1));
    metrics.approval_requested();
    metrics.semantic_health("m", true);
    metrics.restart("k", impresario::runtime::telemetry::RestartReason::Killed);
    metrics.escalation(false);
    metrics.halt(&HaltScope::All, HaltReason::Shutdown);
    metrics.agents_halted(HaltReason::Operator, 2);
    metrics.ceiling_warning(
        &AccountId::Global,
        impresario::runtime::ledger::Dimension::Tokens,
        80,
    );
    metrics.ceiling_reached(
        &AccountId::Tenant("t".into()),
        impresario::runtime::ledger::Dimension::ModelCalls,
    );
    let s = scrape(&handle);
    assert_matches_catalog(&s);
    for def in names::ALL {
        // The agent and model metrics are covered by the tests above.
        let hot = def.name.starts_with("impresario_agent_")
            || def.name.starts_with("impresario_llm_")
            || def.name.starts_with("gen_ai.");
        assert!(
            hot || s.families.contains_key(&def.exposition_name()),
            "{} did not render as {}",
            def.name,
            def.exposition_name()
        );
    }
}

#[test]
fn the_exposition_parser_is_strict() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
    let e = exposition::parse(good).unwrap();
    assert_eq!(e.value("a_total", &[("x", "1")]), Some(3.0));
    assert_eq!(e.histogram("h", &[]).unwrap().count, 2.0);
    for bad in [
        "a{x=1} 1\n",
        "a{x=\"1\"} 1 2 3\n",
        "# TYPE a counter\n# TYPE a counter\na 1\n",
        "a 1\nb 1\na 2\n",
        "a{x=\"1\"} 1\na{x=\"1\"} 2\n",
        "# TYPE a counter\na -1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "1a 1\n",
        "a{x=\"\\q\"} 1\n",
        "a{x.y=\"1\"} 1\n",
    ] {
        assert!(exposition::parse(bad).is_err(), "accepted {bad:?}");
    }
}

/// The catalog metric a PromQL identifier names (`_bucket`, `_sum` and `_count` of a histogram
/// name its family), with whether `le` is a label of it.
fn catalog_metric(identifier: &str) -> Option<(&'static names::MetricDef, bool)> {
    for def in names::ALL {
        let family = def.exposition_name();
        if identifier == family {
            return Some((def, false));
        }
        if def.kind == names::MetricKind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                if identifier == format!("{family}{suffix}") {
                    return Some((def, suffix == "_bucket"));
                }
            }
        }
    }
    None
}

fn sanitized_labels(def: &names::MetricDef) -> Vec<String> {
    def.labels.iter().map(|l| l.replace('.', "_")).collect()
}

/// Checks that `expr` names only catalog metrics, and only their labels in its selectors and
/// `by (...)` lists.
fn check_promql(expr: &str) -> Result<(), String> {
    let chars: Vec<char> = expr.chars().collect();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let all_labels: Vec<String> = names::ALL
        .iter()
        .flat_map(|d| sanitized_labels(d))
        .collect();
    let mut metrics = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !(chars[i].is_ascii_alphabetic() || chars[i] == '_') || (i > 0 && is_ident(chars[i - 1]))
        {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        if let Some((def, bucket)) = catalog_metric(&word) {
            metrics.push(def);
            if chars.get(i) == Some(&'{') {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or("unclosed {")?
                    + i;
                let selector: String = chars[i + 1..end].iter().collect();
                for matcher in selector.split(',').filter(|m| !m.trim().is_empty()) {
                    let label = matcher.split(['=', '!', '~']).next().unwrap().trim();
                    // `job` and `instance` are the labels Prometheus adds to every target.
                    if !(sanitized_labels(def).iter().any(|l| l == label)
                        || (bucket && label == "le")
                        || label == "job"
                        || label == "instance")
                    {
                        return Err(format!("{word} has no label {label:?}"));
                    }
                }
                i = end;
            }
        } else if (word.starts_with("impresario_") || word.starts_with("gen_ai_"))
            && !all_labels.contains(&word)
        {
            return Err(format!(
                "{word} is neither a metric nor a label of the catalog"
            ));
        }
    }
    if metrics.is_empty() {
        return Err("names no metric".into());
    }
    for keyword in ["by (", "without ("] {
        for (at, _) in expr.match_indices(keyword) {
            let list = &expr[at + keyword.len()..];
            let list = &list[..list.find(')').ok_or("unclosed by (")?];
            for label in list.split(',').map(str::trim) {
                let known = label == "le"
                    || metrics
                        .iter()
                        .any(|d| sanitized_labels(d).iter().any(|l| l == label));
                if !known {
                    return Err(format!("no metric of the expression has label {label:?}"));
                }
            }
        }
    }
    Ok(())
}

/// Every `expr` string of a JSON document.
fn json_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => json_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboards_and_alerts_reference_only_metrics_and_labels_that_exist() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard = std::fs::read_to_string(format!("{root}/dashboards/impresario.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs = Vec::new();
    json_exprs(&dashboard, &mut exprs);
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(exprs.len() >= panels.len(), "every panel has a query");

    let alerts = std::fs::read_to_string(format!("{root}/dashboards/alerts.yml")).unwrap();
    let mut alert_names = Vec::new();
    for line in alerts.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alert_names.push(name.to_owned());
        } else if let Some(expr) = line.strip_prefix("expr: ") {
            exprs.push(expr.to_owned());
        }
    }
    assert_eq!(
        alerts.matches("expr: ").count(),
        alert_names.len(),
        "one expression per alert"
    );
    for wanted in [
        "ImpresarioSpendNearCeiling",
        "ImpresarioBreakerOpen",
        "ImpresarioRestartStorm",
        "ImpresarioRunsFailing",
    ] {
        assert!(alert_names.iter().any(|n| n == wanted), "no {wanted} alert");
    }

    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        check_promql(expr).unwrap_or_else(|e| panic!("{e}: {expr}"));
        used.extend(
            names::ALL
                .iter()
                .filter(|d| expr.contains(&d.exposition_name()))
                .map(|d| d.name),
        );
    }
    let unused: Vec<&str> = names::ALL
        .iter()
        .map(|d| d.name)
        .filter(|n| !used.contains(n))
        .collect();
    assert!(unused.is_empty(), "metrics shown nowhere: {unused:?}");
    // The checker itself rejects what it should.
    assert!(check_promql("rate(impresario_runs_finished_totl[5m])").is_err());
    assert!(check_promql("sum by (tenant) (impresario_runs_active)").is_err());
    assert!(check_promql("impresario_llm_retries_total{modle=\"x\"}").is_err());
}
