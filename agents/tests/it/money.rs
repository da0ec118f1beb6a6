//! Money that cannot leak or overspend, through whole runs against an OpenAI-compatible
//! provider on loopback and a SQLite journal: an answer that costs more than its reservation
//! halts the run (reason `overshoot`) and is charged; the cost of an aborted call and a
//! tenant's spend survive a restart (rebuilt from the journal), and the ceilings still hold;
//! retention keeps the spend of the runs it deletes, on SQLite and on PostgreSQL; with a
//! budget period, a restart counts the current period's spend only.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use impresario_agents::{
    Budget, ModelMap, Orchestrator, OrchestratorConfig, RunRequest, RunResult, RunState,
    SubmitError, ToolRegistry,
};
use impresario_pg::PgJournal;
use impresario_runtime::halt::{HaltMode, HaltReason};
use impresario_runtime::journal::{Journal, RetentionPolicy, RunEvent, SqliteJournal};
use impresario_runtime::ledger::{
    utc_text, AccountId, BudgetPeriod, Ceilings, Charge, Clock, Ledger,
};
use impresario_runtime::{RunId, Runtime, RuntimeHandle};
use serde_json::json;

use crate::loopback::{fake_openai_with, http_client, Answer};

/// A journal file of its own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "impresario-money-{name}-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn journal(&self) -> Arc<dyn Journal> {
        Arc::new(SqliteJournal::open(self.0.join("journal.db")).unwrap())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn answer(text: &str) -> Answer {
    Answer::new(json!({ "steps": [{ "type": "final_answer", "answer": text }] }).to_string())
}

/// An orchestrator over `journal` calling the provider at `url`, its ledger with `ceilings`.
async fn team(
    rt: &RuntimeHandle,
    url: &str,
    journal: Arc<dyn Journal>,
    ceilings: Ceilings,
) -> Orchestrator {
    let ledger = Ledger::new();
    ledger.set_ceilings(ceilings);
    team_on(rt, url, journal, ledger).await
}

/// An orchestrator over `journal` calling the provider at `url`, reserving on `ledger`.
async fn team_on(
    rt: &RuntimeHandle,
    url: &str,
    journal: Arc<dyn Journal>,
    ledger: Ledger,
) -> Orchestrator {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let config = OrchestratorConfig {
        journal,
        name: format!("money-{}", NEXT.fetch_add(1, Ordering::SeqCst)),
        ..OrchestratorConfig::default()
    };
    Orchestrator::with(rt, http_client(url), ToolRegistry::new(), ledger, config)
        .await
        .unwrap()
}

fn request(tenant: &str) -> RunRequest {
    RunRequest::new("What is the answer?", ModelMap::all("local"))
        .tenant(tenant)
        .budget(Budget::usd(0.5))
}

/// What the journal says run `run` was charged.
fn journaled_spend(journal: &dyn Journal, run: &RunId) -> Charge {
    journal
        .read(run)
        .unwrap()
        .iter()
        .fold(Charge::ZERO, |sum, e| sum + e.event.charge())
}

fn run_spend(team: &Orchestrator, run: &RunId) -> Charge {
    let account = team.ledger().account(&AccountId::Run(run.clone()));
    account.expect("the run's account is open").snapshot().spent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_input_than_estimated_halts_the_run_with_overshoot_and_is_charged() {
    // 1,000,000 prompt tokens for a prompt of a few hundred bytes: $1, twice the run's budget.
    let (url, requests) = fake_openai_with(vec![answer("42").usage(1_000_000, 20)]).await;
    let dir = TempDir::new("overshoot");
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let team = team(&rt, &url, dir.journal(), Ceilings::default()).await;

    let result = team.submit(request("acme")).await.unwrap().wait().await;

    match &result.state {
        RunState::Halted { reason, detail } => {
            assert_eq!(*reason, HaltReason::Overshoot);
            assert!(
                detail.as_deref().is_some_and(|d| d.contains("above the")),
                "{detail:?}"
            );
        }
        other => panic!("expected a halt for overshoot, got {other:?}"),
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "halted at once: no second call"
    );
    assert_eq!(
        result.usage.micro_usd,
        1_000_000 + 40,
        "charged what was reported"
    );
    let events = team.journal().read(&result.run).unwrap();
    let aborted = events.iter().find(|e| e.event.kind() == "llm_aborted");
    assert!(
        matches!(&aborted.unwrap().event, RunEvent::LlmAborted { cost_micro_usd: 1_000_040, error, .. } if error == "overshoot"),
        "{aborted:?}"
    );
    assert!(events.iter().any(
        |e| matches!(&e.event, RunEvent::Halted { halt } if halt.reason == HaltReason::Overshoot)
    ));
    assert_eq!(team.ledger().tenant_budget(&"acme".into()).spent, 1_000_040);
    rt.shutdown(Duration::from_secs(5)).await;
}

/// Submits a run whose first model call hangs, waits until that call is journaled, halts it.
async fn halted_mid_call(team: &Orchestrator) -> Arc<RunResult> {
    let run = team.submit(request("acme")).await.unwrap();
    let journal = team.journal().clone();
    for _ in 0..400 {
        let entries = journal.read(run.id()).unwrap();
        if entries.iter().any(|e| e.event.kind() == "llm_request") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The request is journaled before it is sent; give it a moment to reach the server.
    tokio::time::sleep(Duration::from_millis(200)).await;
    run.halt(HaltMode::Immediate);
    run.wait().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_of_an_aborted_call_survives_a_restart() {
    let hang = answer("late").after(Duration::from_secs(60));
    let (url, _) = fake_openai_with(vec![hang, answer("42")]).await;
    let dir = TempDir::new("aborted");

    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let first = team(&rt, &url, dir.journal(), Ceilings::default()).await;
    let halted = halted_mid_call(&first).await;
    assert!(
        matches!(
            halted.state,
            RunState::Halted {
                reason: HaltReason::Operator,
                ..
            }
        ),
        "{:?}",
        halted.state
    );
    let aborted = halted.usage.micro_usd;
    assert!(aborted > 0, "an aborted call is charged its input estimate");
    assert_eq!(
        journaled_spend(first.journal().as_ref(), &halted.run).micro_usd,
        aborted
    );
    drop(first);
    rt.shutdown(Duration::from_secs(5)).await;

    // A new process: a fresh ledger, rebuilt from the journal.
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let second = team(&rt, &url, dir.journal(), Ceilings::default()).await;
    assert_eq!(run_spend(&second, &halted.run).micro_usd, aborted);
    assert_eq!(second.ledger().tenant_budget(&"acme".into()).spent, aborted);
    let resumed = second.resume(&halted.run).await.unwrap().wait().await;
    assert_eq!(
        resumed.state,
        RunState::Succeeded {
            answer: "42".into()
        }
    );
    assert_eq!(
        resumed.usage.micro_usd,
        aborted + 100 + 40,
        "the aborted call, then one answer"
    );
    assert_eq!(
        journaled_spend(second.journal().as_ref(), &halted.run).micro_usd,
        resumed.usage.micro_usd
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_spend_and_ceiling_survive_a_restart() {
    let (url, requests) = fake_openai_with(vec![answer("42")]).await;
    let dir = TempDir::new("tenant");
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let first = team(&rt, &url, dir.journal(), Ceilings::default()).await;
    let done = first.submit(request("acme")).await.unwrap().wait().await;
    assert_eq!(
        done.state,
        RunState::Succeeded {
            answer: "42".into()
        }
    );
    let spent = done.usage.micro_usd;
    assert_eq!(spent, 140);
    drop(first);
    rt.shutdown(Duration::from_secs(5)).await;

    // Restarted with a ceiling that leaves acme less than one call's worst case.
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let ceilings = Ceilings {
        tenants: [("acme".into(), spent + 1)].into(),
        ..Ceilings::default()
    };
    let second = team(&rt, &url, dir.journal(), ceilings).await;
    let budget = second.ledger().tenant_budget(&"acme".into());
    assert_eq!((budget.spent, budget.ceiling), (spent, Some(spent + 1)));
    assert_eq!(
        second.ledger().tenant_budget(&"other".into()).spent,
        0,
        "tenants apart"
    );
    let refused = second.submit(request("acme")).await.unwrap().wait().await;
    match &refused.state {
        RunState::CeilingReached { ceiling } => {
            assert_eq!(ceiling.account, AccountId::Tenant("acme".into()));
            assert_eq!(ceiling.spent, spent);
        }
        other => panic!("expected the tenant's ceiling, got {other:?}"),
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "nothing sent past the ceiling"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_budget_above_the_largest_is_refused_naming_the_field() {
    let (url, requests) = fake_openai_with(vec![answer("42")]).await;
    let dir = TempDir::new("max-run");
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let ceilings = Ceilings {
        max_run: Some(10_000_000),
        ..Ceilings::default()
    };
    let team = team(&rt, &url, dir.journal(), ceilings).await;
    let huge = request("acme").budget(Budget::usd(1e300));
    match team.submit(huge).await {
        Err(SubmitError::Invalid { field, problem }) => {
            assert_eq!(field, "budget_usd");
            assert!(problem.contains("at most 10 USD"), "{problem}");
        }
        other => panic!(
            "expected a refusal, got {:?}",
            other.map(|r| r.id().clone())
        ),
    }
    assert!(
        team.runs(&impresario_runtime::journal::RunFilter::all())
            .unwrap()
            .is_empty(),
        "nothing journaled"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 0);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spend_of_runs_deleted_by_retention_survives_a_restart() {
    let dir = TempDir::new("carried");
    spend_of_deleted_runs_survives_a_restart(|| async { dir.journal() }).await;
}

/// The same on PostgreSQL: retention carries the deleted runs' spend in its transaction
/// (`journal_spend_carried`), and a new connection (a new process) rebuilds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spend_of_runs_deleted_by_retention_survives_a_reconnect_on_postgres() {
    let url = impresario_pg::test_cluster::shared().create_database("money_carried");
    spend_of_deleted_runs_survives_a_restart(|| async {
        let journal = PgJournal::open(crate::held_in_pg::database(&url).await);
        Arc::new(journal) as Arc<dyn Journal>
    })
    .await;
}

/// Three runs (two of `acme`, one of `beta`) on a journal from `open`; retention deletes
/// acme's two; a second process on a journal from `open` again has each tenant's spend, and
/// the global one, exact.
async fn spend_of_deleted_runs_survives_a_restart<F, J>(open: F)
where
    F: Fn() -> J,
    J: std::future::Future<Output = Arc<dyn Journal>>,
{
    let answers = vec![answer("1"), answer("2"), answer("3")];
    let (url, _) = fake_openai_with(answers).await;
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let first = team(&rt, &url, open().await, Ceilings::default()).await;
    let mut spent = 0;
    for tenant in ["acme", "acme", "beta"] {
        let done = first.submit(request(tenant)).await.unwrap().wait().await;
        assert!(matches!(done.state, RunState::Succeeded { .. }), "{done:?}");
        spent += done.usage.micro_usd;
    }
    assert_eq!(spent, 3 * 140);
    // Retention keeps the last ended run only: acme's two are deleted, with their events.
    let keep_one = RetentionPolicy {
        max_age: None,
        max_finished_runs: Some(1),
        include_halted: false,
    };
    let report = first.journal().apply_retention(&keep_one).await.unwrap();
    assert_eq!(report.runs_deleted, 2);
    drop(first);
    rt.shutdown(Duration::from_secs(5)).await;

    // A new process rebuilds each tenant's spend: acme's from what retention carried over.
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let second = team(&rt, &url, open().await, Ceilings::default()).await;
    let ledger = second.ledger();
    assert_eq!(
        ledger.tenant_budget(&"acme".into()).spent,
        2 * 140,
        "carried over"
    );
    assert_eq!(
        ledger.tenant_budget(&"beta".into()).spent,
        140,
        "still journaled"
    );
    let global = ledger.account(&AccountId::Global).unwrap().snapshot().spent;
    assert_eq!(global.micro_usd, 3 * 140);
    assert_eq!(global.model_calls, 3);
    rt.shutdown(Duration::from_secs(5)).await;
}

/// A ledger with monthly periods, acme's ceiling `acme`, reading the time `ahead` of now.
fn monthly_ledger(acme: u64, ahead: Duration) -> Ledger {
    let clock: Clock = Arc::new(move || SystemTime::now() + ahead);
    let ledger = Ledger::with_clock(clock);
    ledger.set_period(BudgetPeriod::Month);
    ledger.set_ceilings(Ceilings {
        tenants: [("acme".into(), acme)].into(),
        ..Ceilings::default()
    });
    ledger
}

/// With a monthly period, a process restarted in the same month rebuilds the month's spend
/// from the journal (acme's ceiling then refuses a run), and one whose clock is in a later
/// month counts none of it: a ceiling of one call's worst case lets acme's run through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_counts_the_spend_of_the_current_period_only() {
    let answers = vec![answer("1"), answer("2"), answer("3"), answer("4")];
    let (url, requests) = fake_openai_with(answers).await;
    let dir = TempDir::new("period");
    let (now, later) = (Duration::ZERO, Duration::from_secs(40 * 86_400));
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let first = team_on(&rt, &url, dir.journal(), monthly_ledger(u64::MAX, now)).await;
    for tenant in ["acme", "acme", "beta"] {
        let done = first.submit(request(tenant)).await.unwrap().wait().await;
        assert_eq!(done.usage.micro_usd, 140, "{done:?}");
    }
    drop(first);
    rt.shutdown(Duration::from_secs(5)).await;

    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let same_month = team_on(&rt, &url, dir.journal(), monthly_ledger(281, now)).await;
    let budget = same_month.ledger().tenant_budget(&"acme".into());
    assert_eq!((budget.spent, budget.period), (280, BudgetPeriod::Month));
    let global = same_month.ledger().account(&AccountId::Global).unwrap();
    assert_eq!(global.snapshot().spent.micro_usd, 420);
    let refused = same_month
        .submit(request("acme"))
        .await
        .unwrap()
        .wait()
        .await;
    // A call's worst case: a ceiling of exactly that fits one call once nothing is spent.
    let worst_case = match &refused.state {
        RunState::CeilingReached { ceiling } => (ceiling.spent, ceiling.requested),
        other => panic!("expected acme's ceiling, got {other:?}"),
    };
    let (spent, worst_case) = worst_case;
    assert_eq!(spent, 280);
    drop(same_month);
    rt.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "nothing sent past the ceiling"
    );

    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let next_month = team_on(&rt, &url, dir.journal(), monthly_ledger(worst_case, later)).await;
    let budget = next_month.ledger().tenant_budget(&"acme".into());
    assert_eq!(budget.spent, 0, "last month's spend does not count");
    let start = BudgetPeriod::Month
        .start(SystemTime::now() + later)
        .map(utc_text);
    assert_eq!(budget.period_start.map(utc_text), start);
    let done = next_month
        .submit(request("acme"))
        .await
        .unwrap()
        .wait()
        .await;
    assert_eq!(done.usage.micro_usd, 140, "{done:?}");
    assert_eq!(next_month.ledger().tenant_budget(&"acme".into()).spent, 140);
    rt.shutdown(Duration::from_secs(5)).await;
}
