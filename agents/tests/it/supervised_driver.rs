//! The run driver under supervision: a driver that panics while planning, executing, waiting
//! for an approval or finishing is started again from the run's journal (once, by default);
//! past that the run ends `failed(internal)`. Every ending releases what the run held: nothing
//! reserved on any account, no agent of the run in the directory, the halt token and the live
//! entry gone, the runs-active gauge back to 0 and the run counted by its outcome. A scripted
//! model through the real client, ledger, supervisors, journal and Prometheus recorder.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impresario_agents::{
    Autonomy, DriverPhase, FailReason, ModelMap, Orchestrator, OrchestratorConfig, PanicInjection,
    RunHandle, RunRequest, RunState, RunUpdate, ToolRegistry,
};
use impresario_runtime::halt::{HaltMode, HaltReason, HaltScope};
use impresario_runtime::journal::{Journal, RunFilter, RunStatus, SqliteJournal};
use impresario_runtime::ledger::{AccountId, Ledger};
use impresario_runtime::llm::{Client, ModelPrice, PriceTable, Rates, Scripted, ScriptedReply};
use impresario_runtime::telemetry::{MetricsHandle, Prometheus};
use impresario_runtime::{Runtime, RuntimeHandle};

use crate::runs::Pay;
use serde_json::json;

/// A run under test, with what is needed to check that it let go of everything.
struct Fixture {
    rt: RuntimeHandle,
    orchestrator: Orchestrator,
    metrics: MetricsHandle,
    paid: Arc<AtomicUsize>,
}

/// An orchestrator whose drivers panic at `phase`, `times` times in all; the model pays 5
/// cents (a high-impact call, approved under conditional autonomy) and answers "paid".
async fn fixture(phase: DriverPhase, times: u32) -> Fixture {
    let plan = json!({ "steps": [
        { "type": "tool_call", "tool": "pay", "arguments": { "amount_cents": 5 }, "why": "test" },
        { "type": "final_answer", "answer": "paid" }
    ]});
    let mut prices = PriceTable::default();
    prices.insert("toy", ModelPrice::new("script", Rates::default()));
    let client = Client::builder()
        .provider(
            "script",
            Scripted::new([ScriptedReply::text(plan.to_string())]),
        )
        .prices(prices)
        .build()
        .unwrap();
    let paid = Arc::new(AtomicUsize::new(0));
    let mut tools = ToolRegistry::new();
    tools.register(Pay(paid.clone())).unwrap();
    let (recorder, metrics) = Prometheus::new().build();
    let rt = Runtime::builder()
        .arbiters(2)
        .metrics(recorder)
        .start()
        .unwrap();
    let config = OrchestratorConfig {
        inject_panic: Some(PanicInjection::new(phase, times)),
        ..OrchestratorConfig::default()
    };
    let orchestrator = Orchestrator::with(&rt, client, tools, Ledger::new(), config)
        .await
        .unwrap();
    Fixture {
        rt,
        orchestrator,
        metrics,
        paid,
    }
}

async fn submit(fixture: &Fixture) -> RunHandle {
    submit_to(&fixture.orchestrator).await
}

/// Submits the run that pays 5 cents (after an approval) for tenant `acme`.
async fn submit_to(orchestrator: &Orchestrator) -> RunHandle {
    let request = RunRequest::new("Pay 5 cents", ModelMap::all("toy"))
        .tenant("acme")
        .tools(["pay"])
        .autonomy(Autonomy::Conditional);
    orchestrator.submit(request).await.unwrap()
}

/// Approves step 1 whenever the run waits for it, until the run ends (bounded: 10 s).
async fn approve_until_done(run: &RunHandle) {
    for _ in 0..1_000 {
        match run.status() {
            RunState::AwaitingApproval { step, .. } => run.approve(step),
            state if state.is_terminal() => return,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the Prometheus sample `series` (name and labels, as exposed), 0 if absent.
fn sample(metrics: &MetricsHandle, series: &str) -> f64 {
    let text = metrics.render();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Everything run `run` held is released, and the metrics say it ended with `outcome`.
fn assert_released(fixture: &Fixture, run: &RunHandle, outcome: &str) {
    let (id, orchestrator) = (run.id(), &fixture.orchestrator);
    let ledger = orchestrator.ledger();
    for account in [
        AccountId::Run(id.clone()),
        AccountId::Tenant("acme".into()),
        AccountId::Global,
    ] {
        if let Some(account) = ledger.account(&account) {
            let snapshot = account.snapshot();
            assert_eq!(snapshot.reserved, Default::default(), "{:?}", snapshot.id);
        }
    }
    assert!(ledger.account(&AccountId::Run(id.clone())).is_none());
    let directory = fixture.rt.directory();
    for kind in ["run", "driver", "planner", "executor", "memory"] {
        let left: Vec<_> = directory
            .list_kind(kind)
            .into_iter()
            .filter(|agent| agent.to_string().contains(id.as_str()))
            .collect();
        assert!(left.is_empty(), "agents of the run left: {left:?}");
    }
    let halt = orchestrator.halts().halt(
        HaltScope::Run(id.clone()),
        HaltMode::Immediate,
        HaltReason::Operator,
    );
    assert!(!halt, "the run's halt token is still there");
    assert!(orchestrator.run(id).is_none(), "still a live run");
    let metrics = &fixture.metrics;
    assert_eq!(sample(metrics, "impresario_runs_active"), 0.0);
    assert_eq!(sample(metrics, "impresario_approvals_pending"), 0.0);
    let finished = format!("impresario_runs_finished_total{{outcome=\"{outcome}\"}}");
    assert_eq!(sample(metrics, &finished), 1.0, "{}", metrics.render());
}

/// A driver that panics every time at `phase`: the run ends failed (internal) after the one
/// restart the default policy allows, and releases everything.
async fn always_panicking_at(phase: DriverPhase) {
    let fixture = fixture(phase, u32::MAX).await;
    let run = submit(&fixture).await;
    approve_until_done(&run).await;
    let result = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .expect("the run ends");
    match &result.state {
        RunState::Failed {
            reason: FailReason::Internal,
            detail,
        } => {
            assert!(detail.contains("panicked 2 times"), "{detail}");
            assert!(
                detail.contains(&format!("injected panic while {phase:?}")),
                "{detail}"
            );
        }
        other => panic!("{phase:?}: {other:?}"),
    }
    // Only a driver that panics while finishing got through the step: the result has it.
    let executed = usize::from(phase == DriverPhase::Finishing);
    assert_eq!(
        result.steps.len(),
        executed,
        "{phase:?}: {:?}",
        result.steps
    );
    assert_released(&fixture, &run, "failed");
    let journaled = fixture.orchestrator.runs(&RunFilter::all()).unwrap();
    assert_eq!(journaled[0].status, RunStatus::Finished, "{phase:?}");
    fixture.rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_panicking_while_planning_fails_the_run_and_releases_it() {
    always_panicking_at(DriverPhase::Planning).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_panicking_while_executing_fails_the_run_and_releases_it() {
    always_panicking_at(DriverPhase::Executing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_panicking_while_awaiting_approval_fails_the_run_and_releases_it() {
    always_panicking_at(DriverPhase::AwaitingApproval).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_panicking_while_finishing_fails_the_run_and_releases_it() {
    always_panicking_at(DriverPhase::Finishing).await;
}

/// A driver that panics once at `phase` is started again and resumes the run from its journal:
/// the run succeeds, the payment is made once, the model is asked once (the second driver is
/// served the journaled plan), and everything is released.
async fn resumed_after_one_panic_at(phase: DriverPhase) {
    let fixture = fixture(phase, 1).await;
    let run = submit(&fixture).await;
    let mut updates = run.events();
    approve_until_done(&run).await;
    let result = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .expect("the run ends");
    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "paid".into()
        },
        "{phase:?}"
    );
    assert_eq!(fixture.paid.load(Ordering::SeqCst), 1, "{phase:?}");
    assert_eq!(result.steps.len(), 1, "{phase:?}");
    // The restarted driver walks what the crashed one did: its subscribers were told already.
    let mut told = Vec::new();
    while let Ok(update) = updates.try_recv() {
        told.push(update);
    }
    let count = |kind: fn(&RunUpdate) -> bool| told.iter().filter(|u| kind(u)).count();
    assert_eq!(
        count(|u| matches!(u, RunUpdate::Planned { .. })),
        1,
        "{phase:?}: {told:?}"
    );
    assert_eq!(
        count(|u| matches!(u, RunUpdate::StepFinished(_))),
        1,
        "{phase:?}: {told:?}"
    );
    assert_eq!(
        count(|u| matches!(u, RunUpdate::Recalled { .. })),
        1,
        "{phase:?}: {told:?}"
    );
    assert_released(&fixture, &run, "succeeded");
    fixture.rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_restarted_after_a_panic_resumes_the_run_from_its_journal() {
    for phase in [
        DriverPhase::Planning,
        DriverPhase::Executing,
        DriverPhase::AwaitingApproval,
        DriverPhase::Finishing,
    ] {
        resumed_after_one_panic_at(phase).await;
    }
}

/// An orchestrator on `journal` whose model prices its tokens, its drivers panicking at
/// `panic` (once), if any.
async fn priced(
    rt: &RuntimeHandle,
    journal: Arc<dyn Journal>,
    panic: Option<DriverPhase>,
    paid: Arc<AtomicUsize>,
) -> Orchestrator {
    let plan = json!({ "steps": [
        { "type": "tool_call", "tool": "pay", "arguments": { "amount_cents": 5 }, "why": "test" },
        { "type": "final_answer", "answer": "paid" }
    ]});
    let mut prices = PriceTable::default();
    let rates = Rates {
        input: 1_000_000,
        output: 2_000_000,
        ..Rates::default()
    };
    prices.insert("toy", ModelPrice::new("script", rates));
    let script = Scripted::new([ScriptedReply::text(plan.to_string())]);
    let client = Client::builder()
        .provider("script", script)
        .prices(prices)
        .build()
        .unwrap();
    let mut tools = ToolRegistry::new();
    tools.register(Pay(paid)).unwrap();
    let config = OrchestratorConfig {
        journal,
        inject_panic: panic.map(|phase| PanicInjection::new(phase, 1)),
        ..OrchestratorConfig::default()
    };
    Orchestrator::with(rt, client, tools, Ledger::new(), config)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_restarted_in_a_new_process_charges_the_journaled_answers_exactly_once() {
    let dir = std::env::temp_dir().join(format!("impresario-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let journal: Arc<dyn Journal> = Arc::new(SqliteJournal::open(dir.join("j.db")).unwrap());
    let paid = Arc::new(AtomicUsize::new(0));
    // The first process: the plan is paid for, the run waits for its approval, and halts.
    let first = Runtime::builder().arbiters(2).start().unwrap();
    let before = priced(&first, journal.clone(), None, paid.clone()).await;
    let run = submit_to(&before).await;
    for _ in 0..500 {
        if matches!(run.status(), RunState::AwaitingApproval { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(run.halt(HaltMode::Immediate));
    run.wait().await;
    first.shutdown(Duration::from_secs(5)).await;
    let spent = journal
        .read(run.id())
        .unwrap()
        .iter()
        .fold(0, |sum, e| sum + e.event.charge().micro_usd);
    assert!(spent > 0, "the plan cost something");

    // A new process (a fresh ledger, rebuilt from the journal) resumes it; its driver panics
    // before it is served the journaled plan, and the driver started again walks the journal
    // from the start: the plan's cost must be on the ledger once, whoever reaches it.
    let second = Runtime::builder().arbiters(2).start().unwrap();
    let after = priced(
        &second,
        journal.clone(),
        Some(DriverPhase::Planning),
        paid.clone(),
    )
    .await;
    let resumed = after.resume(run.id()).await.unwrap();
    approve_until_done(&resumed).await;
    let result = tokio::time::timeout(Duration::from_secs(10), resumed.wait())
        .await
        .expect("the run ends");
    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "paid".into()
        }
    );
    assert_eq!(paid.load(Ordering::SeqCst), 1, "paid once");
    assert_eq!(
        result.usage.micro_usd, spent,
        "the journaled plan, charged once"
    );
    let tenant = after.ledger().tenant_budget(&"acme".into());
    assert_eq!(
        tenant.spent, spent,
        "the tenant's spend, neither lost nor doubled"
    );
    second.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
