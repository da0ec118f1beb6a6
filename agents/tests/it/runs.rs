//! Runs end to end, offline (a Scripted model through the real LLM client and ledger): success,
//! repair, invalid arguments, approvals, halts, ceilings, restarts, loops, allowlist, reviewers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use impresario_agents::{
    Autonomy, Budget, FailReason, Impact, ModelMap, Orchestrator, ReviewPlan, RunRequest, RunState,
    RunUpdate, StepFailure, Team, Tool, ToolContext, ToolError, ToolRegistry, Verdict,
};
use impresario_runtime::halt::{HaltMode, HaltReason};
use impresario_runtime::llm::{
    Client, ModelPrice, PriceTable, Rates, Scripted, ScriptedReply, Usage,
};
use impresario_runtime::{agent, Runtime, RuntimeHandle};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

/// `toy` costs 1 USD per million input tokens and 2 per million output tokens.
fn client(replies: Vec<ScriptedReply>) -> Client {
    Client::builder()
        .provider("script", Scripted::new(replies))
        .prices(priced(&[("toy", "script")]))
        .build()
        .unwrap()
}

/// A plan reply costing 100 input and 20 output tokens: 140 micro-USD.
fn plan(steps: Value) -> ScriptedReply {
    ScriptedReply::text(json!({ "steps": steps }).to_string()).usage(Usage {
        input_tokens: 100,
        output_tokens: 20,
        ..Usage::default()
    })
}

fn answer(text: &str) -> ScriptedReply {
    plan(json!([{ "type": "final_answer", "answer": text }]))
}

fn call(tool: &str, arguments: Value) -> Value {
    json!({ "type": "tool_call", "tool": tool, "arguments": arguments, "why": "test" })
}

#[derive(Deserialize, JsonSchema)]
struct Query {
    /// What to look for.
    q: String,
}

/// Read-only search over a fixed note.
struct Search(Arc<AtomicUsize>);
impl Tool for Search {
    type Args = Query;
    fn name(&self) -> &str {
        "search"
    }
    fn description(&self) -> &str {
        "Searches the notes."
    }
    async fn call(&self, args: Query, _: ToolContext) -> Result<Value, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(json!(format!(
            "notes about {}: Rust was first released in 2015",
            args.q
        )))
    }
}

/// What [`Pay`] pays.
#[derive(Deserialize, JsonSchema)]
pub(crate) struct Payment {
    amount_cents: u64,
}

/// A high-impact tool (it waits for approval) that counts how often it really ran.
pub(crate) struct Pay(pub(crate) Arc<AtomicUsize>);
impl Tool for Pay {
    type Args = Payment;
    fn name(&self) -> &str {
        "pay"
    }
    fn description(&self) -> &str {
        "Pays an amount."
    }
    fn impact(&self) -> Impact {
        Impact::HighImpact
    }
    async fn call(&self, args: Payment, ctx: ToolContext) -> Result<Value, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(json!({ "paid": args.amount_cents, "key": ctx.idempotency_key }))
    }
}

/// Sleeps `ms`, honouring the halt.
struct Slow;
#[derive(Deserialize, JsonSchema)]
struct Sleep {
    ms: u64,
}
impl Tool for Slow {
    type Args = Sleep;
    fn name(&self) -> &str {
        "slow"
    }
    fn description(&self) -> &str {
        "Waits."
    }
    async fn call(&self, args: Sleep, _: ToolContext) -> Result<Value, String> {
        tokio::time::sleep(Duration::from_millis(args.ms)).await;
        Ok(json!("done"))
    }
}

/// Panics on its first call (inside the executor), works after.
struct Flaky(Arc<AtomicUsize>);
impl Tool for Flaky {
    type Args = Query;
    fn name(&self) -> &str {
        "flaky"
    }
    fn description(&self) -> &str {
        "Sometimes crashes."
    }
    async fn call(&self, _: Query, _: ToolContext) -> Result<Value, String> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("flaky tool crashed");
        }
        Ok(json!("flaky worked"))
    }
}

struct Counts {
    search: Arc<AtomicUsize>,
    pay: Arc<AtomicUsize>,
    flaky: Arc<AtomicUsize>,
}

async fn setup(replies: Vec<ScriptedReply>) -> (RuntimeHandle, Orchestrator, Counts) {
    let counts = Counts {
        search: Arc::default(),
        pay: Arc::default(),
        flaky: Arc::default(),
    };
    let mut tools = ToolRegistry::new();
    tools
        .register(Search(counts.search.clone()))
        .unwrap()
        .register(Pay(counts.pay.clone()))
        .unwrap()
        .register(Slow)
        .unwrap()
        .register(Flaky(counts.flaky.clone()))
        .unwrap();
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let orchestrator = Orchestrator::start(&rt, client(replies), tools)
        .await
        .unwrap();
    (rt, orchestrator, counts)
}

fn request(tools: &[&str]) -> RunRequest {
    RunRequest::new("When was Rust first released?", ModelMap::all("toy"))
        .tools(tools.iter().copied())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_offline_run_succeeds_with_exact_usage() {
    let (rt, orchestrator, counts) = setup(vec![
        plan(json!([call("search", json!({ "q": "rust release" }))])),
        answer("2015"),
    ])
    .await;
    let run = orchestrator.submit(request(&["search"])).await.unwrap();
    let result = run.wait().await;
    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "2015".into()
        }
    );
    assert_eq!(result.steps.len(), 1);
    let output = result.steps[0].outcome.as_ref().unwrap();
    assert!(
        output.starts_with("<tool_output tool=\"search\" step=\"1\">"),
        "{output}"
    );
    assert!(output.contains("2015"));
    assert_eq!(counts.search.load(Ordering::SeqCst), 1);
    // Two planner calls of 100 + 20 tokens at 1 and 2 USD per million.
    assert_eq!(result.usage.model_calls, 2);
    assert_eq!(result.usage.tokens, 240);
    assert_eq!(result.usage.micro_usd, 280);
    assert_eq!(run.status(), result.state);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_events_receiver_has_every_event_even_when_taken_after_the_run_ended() {
    let (rt, orchestrator, _) = setup(vec![
        plan(json!([call("search", json!({ "q": "rust release" }))])),
        answer("2015"),
    ])
    .await;
    let run = orchestrator.submit(request(&["search"])).await.unwrap();
    run.wait().await;
    let mut events = run.events();
    assert!(
        run.clone().events().try_recv().is_err(),
        "later receivers start now"
    );
    let mut kinds = Vec::new();
    while let Ok(event) = events.try_recv() {
        let value = serde_json::to_value(&event).unwrap();
        let kind = match &event {
            RunUpdate::State(_) => format!("state:{}", value["state"].as_str().unwrap()),
            _ => value["event"].as_str().unwrap().to_owned(),
        };
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "recalled",
            "state:planning",
            "planned",
            "state:running",
            "step_finished",
            "state:planning",
            "planned",
            "state:succeeded"
        ]
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_plan_output_is_repaired_and_each_attempt_is_paid_for() {
    let (rt, orchestrator, _) = setup(vec![
        ScriptedReply::text("Sure! Here is my plan: search, then answer.").usage(Usage {
            input_tokens: 50,
            output_tokens: 10,
            ..Usage::default()
        }),
        answer("2015"),
    ])
    .await;
    let result = orchestrator
        .submit(request(&[]))
        .await
        .unwrap()
        .wait()
        .await;
    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "2015".into()
        }
    );
    assert_eq!(
        result.usage.model_calls, 2,
        "the repair was a second, budgeted call"
    );
    assert_eq!(result.usage.micro_usd, 70 + 140);
    rt.shutdown(Duration::from_secs(5)).await;

    let bad = || ScriptedReply::text(r#"{"steps": []}"#);
    let (rt, orchestrator, _) = setup(vec![bad(), bad(), bad()]).await;
    let result = orchestrator
        .submit(request(&[]))
        .await
        .unwrap()
        .wait()
        .await;
    assert!(
        matches!(&result.state, RunState::Failed { reason: FailReason::InvalidPlan, detail } if detail.contains("3 attempts")),
        "{:?}",
        result.state
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tool_arguments_are_rejected_before_the_tool_runs_and_the_planner_replans() {
    let (rt, orchestrator, counts) = setup(vec![
        plan(json!([call("search", json!({ "q": 5 }))])),
        answer("unknown"),
    ])
    .await;
    let result = orchestrator
        .submit(request(&["search"]))
        .await
        .unwrap()
        .wait()
        .await;
    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "unknown".into()
        }
    );
    let Err(StepFailure::Tool(ToolError::InvalidArguments { tool, problems })) =
        &result.steps[0].outcome
    else {
        panic!("{:?}", result.steps[0].outcome)
    };
    assert_eq!(tool, "search");
    assert!(problems[0].starts_with("at /q:"), "{problems:?}");
    assert_eq!(counts.search.load(Ordering::SeqCst), 0, "nothing ran");
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_outside_the_allowlist_is_refused() {
    let (rt, orchestrator, counts) = setup(vec![
        plan(json!([call("pay", json!({ "amount_cents": 100 }))])),
        answer("could not pay"),
    ])
    .await;
    let result = orchestrator
        .submit(request(&["search"]).autonomy(Autonomy::Full))
        .await
        .unwrap()
        .wait()
        .await;
    assert_eq!(
        result.steps[0].outcome,
        Err(StepFailure::Tool(ToolError::NotAllowed {
            tool: "pay".into()
        }))
    );
    assert_eq!(counts.pay.load(Ordering::SeqCst), 0);
    assert!(matches!(result.state, RunState::Succeeded { .. }));
    rt.shutdown(Duration::from_secs(5)).await;
}

async fn until_state(run: &impresario_agents::RunHandle, pred: impl Fn(&RunState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pred(&run.status()) {
        assert!(
            Instant::now() < deadline,
            "state never came; now {:?}",
            run.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_impact_tool_waits_until_approved() {
    let (rt, orchestrator, counts) = setup(vec![
        plan(json!([call("pay", json!({ "amount_cents": 250 }))])),
        answer("paid"),
    ])
    .await;
    let run = orchestrator
        .submit(request(&["pay"]).autonomy(Autonomy::Conditional))
        .await
        .unwrap();
    until_state(
        &run,
        |s| matches!(s, RunState::AwaitingApproval { step: 1, tool } if tool == "pay"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        counts.pay.load(Ordering::SeqCst),
        0,
        "nothing ran before the approval"
    );
    run.approve(2); // another step: ignored
    run.approve(1);
    let result = run.wait().await;
    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "paid".into()
        }
    );
    assert_eq!(counts.pay.load(Ordering::SeqCst), 1);
    let output = result.steps[0].outcome.as_ref().unwrap();
    assert!(
        output.contains(&format!("{}/step-1", run.id())),
        "the idempotency key: {output}"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_step_is_reported_to_the_planner_and_never_runs() {
    let (rt, orchestrator, counts) = setup(vec![
        plan(json!([call("pay", json!({ "amount_cents": 250 }))])),
        answer("not paid"),
    ])
    .await;
    let run = orchestrator
        .submit(request(&["pay"]).autonomy(Autonomy::Manual))
        .await
        .unwrap();
    until_state(&run, |s| matches!(s, RunState::AwaitingApproval { .. })).await;
    run.reject(1, "too expensive");
    let result = run.wait().await;
    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "not paid".into()
        }
    );
    assert_eq!(
        result.steps[0].outcome,
        Err(StepFailure::Tool(ToolError::Rejected {
            tool: "pay".into(),
            reason: "too expensive".into()
        }))
    );
    assert_eq!(counts.pay.load(Ordering::SeqCst), 0);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_halt_during_a_step_ends_the_run_halted_with_the_reason() {
    let (rt, orchestrator, _) =
        setup(vec![plan(json!([call("slow", json!({ "ms": 30_000 }))]))]).await;
    let run = orchestrator.submit(request(&["slow"])).await.unwrap();
    until_state(&run, |s| matches!(s, RunState::Running { step: 1 })).await;
    let halted_at = Instant::now();
    assert!(run.halt(HaltMode::Immediate));
    let result = run.wait().await;
    assert!(
        halted_at.elapsed() < Duration::from_secs(2),
        "the 30 s step was aborted"
    );
    assert_eq!(
        result.state,
        RunState::Halted {
            reason: HaltReason::Operator,
            detail: None
        }
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_halt_lets_the_step_finish_and_starts_nothing_new() {
    let (rt, orchestrator, counts) = setup(vec![
        plan(json!([
            call("slow", json!({ "ms": 300 })),
            call("search", json!({ "q": "x" }))
        ])),
        answer("never"),
    ])
    .await;
    let run = orchestrator
        .submit(request(&["slow", "search"]))
        .await
        .unwrap();
    until_state(&run, |s| matches!(s, RunState::Running { step: 1 })).await;
    run.halt(HaltMode::Graceful {
        deadline: Duration::from_secs(10),
    });
    let result = run.wait().await;
    assert_eq!(
        result.state,
        RunState::Halted {
            reason: HaltReason::Operator,
            detail: None
        }
    );
    assert_eq!(result.steps.len(), 1);
    assert!(
        result.steps[0].outcome.as_ref().unwrap().contains("done"),
        "the current step finished"
    );
    assert_eq!(
        counts.search.load(Ordering::SeqCst),
        0,
        "the next step never started"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ceiling_reached_mid_run_ends_it_with_spent_within_the_ceiling() {
    // The first plan costs 100 + 1000 x 2 = 2,100 micro-USD. A planner call's worst case (the
    // prompt's input estimate, one token per byte, + 1,024 output tokens: about 6,000) fits
    // 8,000 once, not twice.
    let expensive = plan(json!([call("search", json!({ "q": "a" }))])).usage(Usage {
        input_tokens: 100,
        output_tokens: 1_000,
        ..Usage::default()
    });
    let (rt, orchestrator, _) = setup(vec![expensive, answer("unreachable")]).await;
    let run = orchestrator
        .submit(request(&["search"]).budget(Budget {
            micro_usd: Some(8_000),
            ..Budget::default()
        }))
        .await
        .unwrap();
    let result = run.wait().await;
    let RunState::CeilingReached { ceiling } = &result.state else {
        panic!("{:?}", result.state)
    };
    assert_eq!((ceiling.limit, ceiling.spent), (8_000, 2_100));
    assert!(ceiling.spent + ceiling.requested > ceiling.limit);
    assert_eq!(
        result.usage.micro_usd, 2_100,
        "spent <= ceiling: the refused call sent nothing"
    );
    assert_eq!(result.steps.len(), 1);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_panic_mid_run_is_restarted_and_the_run_completes() {
    let (rt, orchestrator, counts) = setup(vec![
        plan(json!([call("flaky", json!({ "q": "x" }))])),
        answer("recovered"),
    ])
    .await;
    let mut events = orchestrator.supervisor().events();
    let result = orchestrator
        .submit(request(&["flaky"]))
        .await
        .unwrap()
        .wait()
        .await;
    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "recovered".into()
        }
    );
    assert_eq!(
        result.steps[0].outcome.as_deref(),
        Ok("<tool_output tool=\"flaky\" step=\"1\">\nflaky worked\n</tool_output>")
    );
    assert_eq!(
        counts.flaky.load(Ordering::SeqCst),
        2,
        "retried once: the tool is idempotent"
    );
    let mut restarted = false;
    while let Ok(event) = events.try_recv() {
        restarted |= matches!(event, impresario_agents::supervisor::SupervisorEvent::ChildRestarted { ref child, .. } if &*child.kind == "executor");
    }
    assert!(
        restarted,
        "the executor was restarted by the run's supervisor"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_is_detected() {
    let same = || plan(json!([call("search", json!({ "q": "same" }))]));
    let (rt, orchestrator, counts) = setup(vec![same(), same(), same(), same()]).await;
    let result = orchestrator
        .submit(request(&["search"]))
        .await
        .unwrap()
        .wait()
        .await;
    assert!(
        matches!(
            &result.state,
            RunState::Failed {
                reason: FailReason::LoopDetected,
                ..
            }
        ),
        "{:?}",
        result.state
    );
    assert_eq!(
        counts.search.load(Ordering::SeqCst),
        2,
        "the third repeat was not executed"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_steps_is_honoured_and_bad_requests_are_refused_by_field() {
    let (rt, orchestrator, _) = setup(vec![plan(json!([
        call("search", json!({ "q": "a" })),
        call("search", json!({ "q": "b" }))
    ]))])
    .await;
    let result = orchestrator
        .submit(request(&["search"]).max_steps(1))
        .await
        .unwrap()
        .wait()
        .await;
    assert!(
        matches!(
            result.state,
            RunState::Failed {
                reason: FailReason::MaxSteps,
                ..
            }
        ),
        "{:?}",
        result.state
    );

    let err = orchestrator.submit(request(&["nope"])).await.err().unwrap();
    assert!(
        err.to_string().contains("tools: no tool named \"nope\""),
        "{err}"
    );
    let err = orchestrator
        .submit(RunRequest::new("goal", ModelMap::all("unpriced")))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("models: light.model: model \"unpriced\" has no price"),
        "{err}"
    );
    let err = orchestrator
        .submit(RunRequest::new("  ", ModelMap::all("toy")))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("goal"), "{err}");
    rt.shutdown(Duration::from_secs(5)).await;
}

/// A critic that sends the first plan back and approves the next.
#[derive(Default)]
struct Critic {
    seen: u32,
}
impl Actor for Critic {
    type Context = Context<Self>;
}
agent!(Critic);
impl Handler<ReviewPlan> for Critic {
    type Result = MessageResult<ReviewPlan>;
    fn handle(&mut self, _: ReviewPlan, _: &mut Context<Self>) -> Self::Result {
        self.seen += 1;
        MessageResult(if self.seen == 1 {
            Verdict::Revise {
                feedback: "check a source first".into(),
            }
        } else {
            Verdict::Approve
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_critic_joins_the_run_and_sends_a_plan_back() {
    let (rt, orchestrator, _) = setup(vec![answer("a guess"), answer("2015")]).await;
    let run = orchestrator
        .submit_with(
            request(&[]),
            Team::new().reviewer("critic", Critic::default),
        )
        .await
        .unwrap();
    let mut events = run.events();
    let result = run.wait().await;
    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "2015".into()
        }
    );
    let mut revised = None;
    while let Ok(event) = events.try_recv() {
        if let RunUpdate::Revised { feedback, .. } = event {
            revised = Some(feedback);
        }
    }
    assert_eq!(revised.as_deref(), Some("check a source first"));
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summarization_triggers_at_the_context_budget_and_is_paid_for() {
    let summary = ScriptedReply::text("searched a, b and c: nothing new").usage(Usage {
        input_tokens: 30,
        output_tokens: 10,
        ..Usage::default()
    });
    let (rt, orchestrator, _) = setup(vec![
        plan(json!([
            call("search", json!({ "q": "a" })),
            call("search", json!({ "q": "b" })),
            call("search", json!({ "q": "c" }))
        ])),
        summary,
        answer("done"),
    ])
    .await;
    let run = orchestrator
        .submit(request(&["search"]).context_budget(60))
        .await
        .unwrap();
    let mut events = run.events();
    let result = run.wait().await;
    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "done".into()
        }
    );
    let mut compacted = None;
    while let Ok(event) = events.try_recv() {
        if let RunUpdate::Compacted(c) = event {
            compacted = Some(c);
        }
    }
    let compacted = compacted.expect("the context was summarized");
    // Six entries (3 steps, 3 results), the last 4 kept: the first 2 became one summary.
    assert_eq!(compacted.replaced, 2);
    assert!(compacted.tokens_after < compacted.tokens_before);
    assert_eq!(compacted.cost_micro_usd, 30 + 20);
    assert_eq!(
        result.usage.model_calls, 3,
        "the summary was a budgeted model call"
    );
    assert_eq!(result.usage.micro_usd, 140 + 50 + 140);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_remembers_its_outcome_and_a_later_run_recalls_it() {
    let (rt, orchestrator, _) = setup(vec![
        answer("2015"),
        // Chosen only if the planner's prompt carries the memory of the first run.
        answer("2015, as remembered").when("Memory of an earlier run"),
        answer("no memory"),
    ])
    .await;
    let first = orchestrator
        .submit(request(&[]))
        .await
        .unwrap()
        .wait()
        .await;
    assert_eq!(
        first.state,
        RunState::Succeeded {
            answer: "2015".into()
        }
    );
    let run = orchestrator.submit(request(&[])).await.unwrap();
    let second = run.wait().await;
    assert_eq!(
        second.state,
        RunState::Succeeded {
            answer: "2015, as remembered".into()
        }
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_record_their_metrics() {
    use impresario_runtime::telemetry::Prometheus;
    let (metrics, handle) = Prometheus::new().build();
    let rt = Runtime::builder()
        .arbiters(2)
        .metrics(metrics)
        .start()
        .unwrap();
    let mut tools = ToolRegistry::new();
    tools.register(Pay(Arc::default())).unwrap();
    let replies = vec![
        plan(json!([call("pay", json!({ "amount_cents": 1 }))])),
        answer("paid"),
        answer("second"),
    ];
    let orchestrator = Orchestrator::start(&rt, client(replies), tools)
        .await
        .unwrap();
    let run = orchestrator.submit(request(&["pay"])).await.unwrap();
    until_state(&run, |s| matches!(s, RunState::AwaitingApproval { .. })).await;
    let text = handle.render();
    assert!(text.contains("impresario_approvals_pending 1"), "{text}");
    assert!(text.contains("impresario_runs_active 1"), "{text}");
    run.approve(1);
    run.wait().await;
    orchestrator
        .submit(request(&[]))
        .await
        .unwrap()
        .wait()
        .await;
    let text = handle.render();
    assert!(text.contains("impresario_runs_started_total 2"), "{text}");
    assert!(
        text.contains("impresario_runs_finished_total{outcome=\"succeeded\"} 2"),
        "{text}"
    );
    assert!(text.contains("impresario_runs_active 0"), "{text}");
    assert!(text.contains("impresario_approvals_pending 0"), "{text}");
    assert!(
        text.contains("impresario_run_duration_seconds_count{outcome=\"succeeded\"} 2"),
        "{text}"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

/// A provider that is down: every call fails as one another model could avoid.
struct Down;
impl impresario_runtime::llm::ChatModel for Down {
    fn chat<'a>(
        &'a self,
        _: &'a impresario_runtime::llm::ChatRequest,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<impresario_runtime::llm::ChatResponse, impresario_runtime::llm::LlmError>,
    > {
        Box::pin(std::future::ready(Err(
            impresario_runtime::llm::LlmError::Transient {
                status: 503,
                message: "down".into(),
                retry_after: None,
            },
        )))
    }
}

/// Prices for made-up models: 1 USD per million input tokens, 2 per million output tokens.
fn priced(models: &[(&str, &str)]) -> PriceTable {
    let mut prices = PriceTable::default();
    for (model, provider) in models {
        let rates = Rates {
            input: 1_000_000,
            output: 2_000_000,
            cache_read: 0,
            cache_creation: 0,
            reasoning: 2_000_000,
        };
        prices.insert(*model, ModelPrice::new(*provider, rates));
    }
    prices
}

/// The models that answered a run, in order, from its journal.
fn answered_by(orchestrator: &Orchestrator, run: &impresario_runtime::RunId) -> Vec<String> {
    orchestrator
        .journal()
        .read(run)
        .unwrap()
        .into_iter()
        .filter_map(|entry| match entry.event {
            impresario_runtime::journal::RunEvent::LlmResponse { response, .. } => {
                Some(response.model)
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_its_tiers_model_and_falls_back_along_its_chain() {
    use impresario_agents::{ModelChoice, Role};
    use impresario_runtime::llm::{RetryPolicy, Tier};
    let client = Client::builder()
        .provider("down", Down)
        .provider(
            "planning",
            Scripted::new([plan(json!([
                { "type": "model_call", "prompt": "Which year?" },
                { "type": "final_answer", "answer": "2015" }
            ]))]),
        )
        .provider("answering", Scripted::new([ScriptedReply::text("2015")]))
        .prices(priced(&[
            ("flaky-big", "down"),
            ("big", "planning"),
            ("small", "answering"),
        ]))
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let orchestrator = Orchestrator::start(&rt, client, ToolRegistry::new())
        .await
        .unwrap();
    let models = ModelMap::all("small")
        .tier(
            Tier::Heavy,
            ModelChoice::new("flaky-big").fallbacks(["big"]),
        )
        .role(Role::Executor, Tier::Light);
    let run = orchestrator
        .submit(RunRequest::new("When was Rust first released?", models))
        .await
        .unwrap();
    let result = run.wait().await;
    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "2015".into()
        }
    );
    // The planner (heavy) fell back from the model that is down; the model call (light) went
    // to the light tier's model.
    assert_eq!(answered_by(&orchestrator, run.id()), ["big", "small"]);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_serve_runs_of_their_own_tenant_only() {
    // Two plans scripted: a third call (a cache miss too many) would fail the run.
    let client = Client::builder()
        .provider("script", Scripted::new([answer("2015"), answer("2015")]))
        .prices(priced(&[("toy", "script")]))
        .cache(16)
        .build()
        .unwrap();
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let config = impresario_agents::OrchestratorConfig {
        recall: 0, // the same prompt every time: no memories of the earlier runs
        ..Default::default()
    };
    let orchestrator = Orchestrator::with(
        &rt,
        client,
        ToolRegistry::new(),
        impresario_runtime::ledger::Ledger::new(),
        config,
    )
    .await
    .unwrap();
    let mut spent = Vec::new();
    for tenant in ["acme", "acme", "globex"] {
        let run = orchestrator
            .submit(request(&[]).tenant(tenant))
            .await
            .unwrap();
        let result = run.wait().await;
        assert!(
            matches!(result.state, RunState::Succeeded { .. }),
            "{tenant}: {:?}",
            result.state
        );
        spent.push((tenant, result.usage.micro_usd, result.usage.model_calls));
    }
    assert_eq!(
        spent,
        [("acme", 140, 1), ("acme", 0, 0), ("globex", 140, 1)],
        "acme's second run is served from the cache; globex is not served acme's answer"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}
