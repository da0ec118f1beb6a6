//! Whole runs whose model calls are also held in PostgreSQL (`OrchestratorConfig::
//! ledger_store` with a `PgLedger`), against an OpenAI-compatible provider on loopback: two
//! orchestrators (two processes' worth: their own ledgers and pools) spend against one tenant
//! ceiling kept in the database, which refuses the call that would pass it, and every call a
//! run made is charged there once. A halt recorded in the database by one process stops the
//! run another drives, in flight, through `LISTEN/NOTIFY`; one standing before a run starts
//! stops it at its first check, with no notification.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impresario_agents::{
    Budget, ModelMap, Orchestrator, OrchestratorConfig, RunRequest, RunState, ToolRegistry,
};
use impresario_pg::halts::PgHalts;
use impresario_pg::ledger::{PgLedger, PgLedgerConfig};
use impresario_pg::Database;
use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope};
use impresario_runtime::ledger::{AccountId, Charge, Dimension, Ledger, Limits};
use impresario_runtime::{Runtime, RuntimeHandle};
use serde_json::json;

use crate::loopback::{fake_openai_with, http_client, Answer};

/// The database at `url`, connected and migrated, with a pool and I/O thread of its own.
pub(crate) async fn database(url: &str) -> Database {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || Database::connect(&url))
        .await
        .unwrap()
        .unwrap()
}

/// An orchestrator of its own (its own in-memory ledger, no ceiling there) holding every call
/// in the database at `db`, and checking the halts standing there before each step.
async fn process(rt: &RuntimeHandle, provider: &str, db: &str) -> (Orchestrator, PgLedger) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let db = database(db).await;
    let store = PgLedger::new(db.clone(), PgLedgerConfig::default());
    let halts = PgHalts::new(db);
    let config = OrchestratorConfig {
        ledger_store: Some(Arc::new(store.clone())),
        halt_store: Some(Arc::new(halts)),
        name: format!("held-in-pg-{}", NEXT.fetch_add(1, Ordering::SeqCst)),
        ..OrchestratorConfig::default()
    };
    (orchestrator(rt, provider, config).await, store)
}

/// An orchestrator configured by `config`, its models at `provider`, with no tools and an
/// in-memory ledger of its own without ceilings.
pub(crate) async fn orchestrator(
    rt: &RuntimeHandle,
    provider: &str,
    config: OrchestratorConfig,
) -> Orchestrator {
    Orchestrator::with(
        rt,
        http_client(provider),
        ToolRegistry::new(),
        Ledger::new(),
        config,
    )
    .await
    .unwrap()
}

fn request() -> RunRequest {
    RunRequest::new("What is the answer?", ModelMap::all("local"))
        .tenant("acme")
        .budget(Budget::usd(0.5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_spend_against_one_tenant_ceiling_in_postgres() {
    let answer = json!({ "steps": [{ "type": "final_answer", "answer": "42" }] }).to_string();
    let answers = (0..4)
        .map(|_| Answer::new(answer.clone()).usage(1_000, 20))
        .collect();
    let (provider, requests) = fake_openai_with(answers).await;
    let db = impresario_pg::test_cluster::shared().create_database("held_in_pg");
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let (a, store_a) = process(&rt, &provider, &db).await;
    let (b, store_b) = process(&rt, &provider, &db).await;

    // Room for the first run's worst case, not for a second one on top of what it spent.
    let first = a.submit(request()).await.unwrap().wait().await;
    assert!(
        matches!(first.state, RunState::Succeeded { .. }),
        "{:?}",
        first.state
    );
    let tenant = AccountId::Tenant("acme".into());
    let spent = store_b.snapshot(&tenant).await.unwrap();
    assert_eq!(
        spent.spent.micro_usd, first.usage.micro_usd,
        "charged once, in full"
    );
    assert_eq!((spent.spent.model_calls, spent.reserved), (1, Charge::ZERO));

    let ceiling = first.usage.micro_usd + 1;
    let limits = Limits {
        micro_usd: Some(ceiling),
        ..Limits::default()
    };
    store_b.set_limits(&tenant, &limits).await.unwrap();
    let second = b.submit(request()).await.unwrap().wait().await;
    match &second.state {
        RunState::CeilingReached { ceiling: c } => {
            assert_eq!(
                (c.account.clone(), c.dimension, c.limit),
                (tenant.clone(), Dimension::MicroUsd, ceiling)
            );
        }
        other => panic!("the database's tenant ceiling refuses the second process: {other:?}"),
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "the refused call was not sent"
    );
    let after = store_a.snapshot(&tenant).await.unwrap();
    assert_eq!(
        (after.spent.micro_usd, after.reserved),
        (first.usage.micro_usd, Charge::ZERO)
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_recorded_by_another_process_stops_the_run_in_flight() {
    let answer = json!({ "steps": [{ "type": "final_answer", "answer": "late" }] }).to_string();
    let hang = Answer::new(answer).after(Duration::from_secs(60));
    let (provider, _) = fake_openai_with(vec![hang]).await;
    let db = impresario_pg::test_cluster::shared().create_database("halted_from_pg");
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let (driving, store) = process(&rt, &provider, &db).await;
    let requester = PgHalts::new(database(&db).await);
    let mut follower = PgHalts::follow(db.parse().unwrap(), driving.halts().clone());
    tokio::time::timeout(Duration::from_secs(20), follower.listening())
        .await
        .unwrap();

    let run = driving.submit(request()).await.unwrap();
    let tenant = AccountId::Tenant("acme".into());
    for _ in 0..400 {
        if store.snapshot(&tenant).await.unwrap().reserved.model_calls == 1 {
            break; // the call is held in the database, so it is about to be sent
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let halt = Halt::new(
        HaltScope::Run(run.id().clone()),
        HaltMode::Immediate,
        HaltReason::Operator,
    )
    .with_detail("from the other replica");
    requester.halt(&halt).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), run.wait())
        .await
        .expect("the run stopped long before its model answered");
    match &result.state {
        RunState::Halted { reason, detail } => {
            assert_eq!(
                (*reason, detail.as_deref()),
                (HaltReason::Operator, Some("from the other replica"))
            );
        }
        other => panic!("expected the notified halt, got {other:?}"),
    }
    // The aborted call is charged what it may be billed, in the database too, and holds nothing.
    let mut after = store.snapshot(&tenant).await.unwrap();
    for _ in 0..200 {
        if after.reserved == Charge::ZERO {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        after = store.snapshot(&tenant).await.unwrap();
    }
    assert_eq!(
        (after.spent.micro_usd, after.reserved),
        (result.usage.micro_usd, Charge::ZERO)
    );
    assert!(after.spent.micro_usd > 0, "the input estimate is charged");
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_tenant_halt_stops_a_run_at_its_first_check_without_a_notification() {
    let (provider, requests) = fake_openai_with(Vec::new()).await;
    let db = impresario_pg::test_cluster::shared().create_database("standing_halt");
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    // No follower: only the check before each step can see the halt.
    let (driving, _) = process(&rt, &provider, &db).await;
    let elsewhere = PgHalts::new(database(&db).await);
    let halt = Halt::new(
        HaltScope::Tenant("acme".into()),
        HaltMode::Immediate,
        HaltReason::CostCeiling,
    )
    .with_detail("tenant halted by another replica");
    elsewhere.halt(&halt).await.unwrap();

    let result = driving.submit(request()).await.unwrap().wait().await;
    match &result.state {
        RunState::Halted { reason, detail } => assert_eq!(
            (*reason, detail.as_deref()),
            (
                HaltReason::CostCeiling,
                Some("tenant halted by another replica")
            )
        ),
        other => panic!("expected the standing halt, got {other:?}"),
    }
    assert_eq!(requests.load(Ordering::SeqCst), 0, "no model call was made");
    rt.shutdown(Duration::from_secs(5)).await;
}
