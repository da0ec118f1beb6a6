//! Whole runs whose model calls are also held in PostgreSQL (`OrchestratorConfig::
//! ledger_store` with a `PgLedger`), against an OpenAI-compatible provider on loopback: two
//! orchestrators (two processes' worth: their own ledgers and pools) spend against one tenant
//! ceiling kept in the database, which refuses the call that would pass it, and every call a
//! run made is charged there once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use impresario_agents::{
    Budget, ModelMap, Orchestrator, OrchestratorConfig, RunRequest, RunState, ToolRegistry,
};
use impresario_pg::ledger::{PgLedger, PgLedgerConfig};
use impresario_runtime::ledger::{AccountId, Charge, Dimension, Ledger, Limits};
use impresario_runtime::{Runtime, RuntimeHandle};
use serde_json::json;

use crate::loopback::{fake_openai_with, http_client, Answer};

fn pool(url: &str) -> Pool {
    let manager = Manager::from_config(
        url.parse().unwrap(),
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager).max_size(4).build().unwrap()
}

/// An orchestrator of its own (its own in-memory ledger, no ceiling there) holding every call
/// in the database at `db`.
async fn process(rt: &RuntimeHandle, provider: &str, db: &str) -> (Orchestrator, PgLedger) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let store = PgLedger::new(pool(db), PgLedgerConfig::default());
    let config = OrchestratorConfig {
        ledger_store: Some(Arc::new(store.clone())),
        name: format!("held-in-pg-{}", NEXT.fetch_add(1, Ordering::SeqCst)),
        ..OrchestratorConfig::default()
    };
    let team = Orchestrator::with(
        rt,
        http_client(provider),
        ToolRegistry::new(),
        Ledger::new(),
        config,
    )
    .await
    .unwrap();
    (team, store)
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
    store_a.install().await.unwrap();

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
