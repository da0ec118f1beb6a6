//! The ledger on a real PostgreSQL server: exact ceilings under 16 concurrent tasks on two
//! pools (two processes' worth of connections), holds that expire, settlements that are
//! idempotent, a server restart in the middle of reservations, and the runtime's seam.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use impresario_pg::ledger::{PgLedger, PgLedgerConfig};
use impresario_pg::test_cluster::{shared, TestCluster};
use impresario_runtime::ledger::{AccountId, Charge, Dimension, Ledger, Limits};
use impresario_runtime::ledger_store::{self, LedgerStore, ReserveError};

/// A pool of up to `size` connections to `url`, as a process would have.
pub fn pool(url: &str, size: usize) -> Pool {
    let config: tokio_postgres::Config = url.parse().expect("a postgres:// URL");
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager).max_size(size).build().unwrap()
}

async fn ledger_on(url: &str, config: PgLedgerConfig) -> PgLedger {
    let ledger = PgLedger::new(pool(url, 8), config);
    ledger.install().await.unwrap();
    ledger
}

fn tenant() -> AccountId {
    AccountId::Tenant("t".into())
}

fn path(run: usize) -> Vec<AccountId> {
    vec![
        AccountId::Run(format!("r{run}").into()),
        tenant(),
        AccountId::Global,
    ]
}

fn money(micro_usd: u64) -> Limits {
    Limits {
        micro_usd: Some(micro_usd),
        ..Limits::default()
    }
}

/// Reserves 7 and settles 7 until refused; returns how many were granted.
async fn spend_until_refused(ledger: PgLedger, run: usize) -> u64 {
    let path = path(run);
    let mut granted = 0;
    for _ in 0..1_000 {
        match ledger.reserve(&path, Charge::usd(7)).await {
            Ok(hold) => {
                ledger.settle(&hold, Charge::usd(7)).await.unwrap();
                granted += 1;
            }
            Err(ReserveError::Ceiling(refused)) => {
                assert_eq!(refused.account, tenant(), "{refused}");
                return granted;
            }
            Err(other) => panic!("{other}"),
        }
    }
    panic!("run {run} was never refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_on_two_pools_never_pass_the_tenant_ceiling_and_release_everything() {
    let url = shared().create_database("ledger_sixteen");
    let a = ledger_on(&url, PgLedgerConfig::default()).await;
    // A second pool: another process's connections to the same database.
    let b = PgLedger::new(pool(&url, 8), PgLedgerConfig::default());
    a.set_limits(&tenant(), &money(1_000)).await.unwrap();

    let tasks: Vec<_> = (0..16)
        .map(|i| {
            tokio::spawn(spend_until_refused(
                if i % 2 == 0 { a.clone() } else { b.clone() },
                i,
            ))
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        granted += task.await.unwrap();
    }

    let t = a.snapshot(&tenant()).await.unwrap();
    assert_eq!(
        granted,
        1_000 / 7,
        "the ceiling is used up to the last whole call"
    );
    assert_eq!(
        t.spent.micro_usd,
        granted * 7,
        "every granted call charged once"
    );
    assert_eq!(t.reserved, Charge::ZERO);
    let global = b.snapshot(&AccountId::Global).await.unwrap();
    assert_eq!(
        (global.spent.micro_usd, global.reserved),
        (granted * 7, Charge::ZERO)
    );
    // What is left (1000 - 994) still fits exactly; one more micro-USD does not.
    let last = a.reserve(&path(99), Charge::usd(6)).await.unwrap();
    assert!(a.reserve(&path(98), Charge::usd(1)).await.is_err());
    a.settle(&last, Charge::ZERO).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_stops_counting_and_a_settlement_counts_once() {
    let url = shared().create_database("ledger_expiry");
    let config = PgLedgerConfig {
        hold_ttl: Duration::from_millis(800),
        retention: Duration::ZERO,
        ..PgLedgerConfig::default()
    };
    let ledger = ledger_on(&url, config).await;
    ledger.set_limits(&tenant(), &money(100)).await.unwrap();

    // A holder that crashes: its hold is never settled.
    let crashed = ledger.reserve(&path(1), Charge::usd(100)).await.unwrap();
    let Err(ReserveError::Ceiling(refused)) = ledger.reserve(&path(2), Charge::usd(1)).await else {
        panic!("the tenant's budget is held");
    };
    assert_eq!(
        (
            refused.account.clone(),
            refused.dimension,
            refused.limit,
            refused.reserved,
            refused.requested
        ),
        (tenant(), Dimension::MicroUsd, 100, 100, 1)
    );
    assert!(refused.to_string().contains("tenant:t"), "{refused}");

    // Once the hold expires, the budget is free again without anyone releasing it.
    let started = Instant::now();
    let hold = loop {
        match ledger.reserve(&path(2), Charge::usd(100)).await {
            Ok(hold) => break hold,
            Err(ReserveError::Ceiling(_)) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("the expired hold still counts: {other}"),
        }
    };
    assert!(crashed.expires_at <= hold.expires_at);

    ledger.settle(&hold, Charge::usd(60)).await.unwrap();
    ledger.settle(&hold, Charge::usd(60)).await.unwrap();
    let t = ledger.snapshot(&tenant()).await.unwrap();
    assert_eq!(
        (t.spent.micro_usd, t.reserved),
        (60, Charge::ZERO),
        "charged once"
    );
    // Settling deleted its row; retention zero: the crashed holder's expired row is swept.
    assert_eq!(ledger.sweep().await.unwrap(), 1);
    assert_eq!(ledger.sweep().await.unwrap(), 0);
}

/// 30 reserve-and-settle cycles on `run`; returns what was charged. Every call must succeed:
/// the ledger retries while the server restarts.
async fn cycles(ledger: PgLedger, run: usize) -> u64 {
    let path = path(run);
    let mut charged = 0;
    for i in 0..30 {
        let hold = ledger.reserve(&path, Charge::usd(3)).await.unwrap();
        let cost = 1 + i % 3;
        ledger.settle(&hold, Charge::usd(cost)).await.unwrap();
        charged += cost;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    charged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_restart_in_the_middle_of_reservations_loses_nothing() {
    let pg = Arc::new(TestCluster::start());
    let url = pg.create_database("ledger_restart");
    let ledger = ledger_on(&url, PgLedgerConfig::default()).await;
    ledger
        .set_limits(&tenant(), &money(1_000_000))
        .await
        .unwrap();

    let tasks: Vec<_> = (0..8)
        .map(|i| tokio::spawn(cycles(ledger.clone(), i)))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "the restart comes in the middle of every task's reservations"
    );
    let restarting = pg.clone();
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap();
    let mut charged = 0;
    for task in tasks {
        charged += task.await.unwrap();
    }

    let t = ledger.snapshot(&tenant()).await.unwrap();
    assert_eq!(t.spent.micro_usd, charged, "every settlement counted once");
    assert_eq!(t.reserved, Charge::ZERO, "no hold left behind");
    assert_eq!(
        pg.psql(&url, "SELECT count(*) FROM ledger_holds").unwrap(),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_seam_holds_in_the_store_and_a_store_refusal_releases_the_local_reservation() {
    let url = shared().create_database("ledger_seam");
    let pg = ledger_on(&url, PgLedgerConfig::default()).await;
    let store: Arc<dyn LedgerStore> = Arc::new(pg.clone());
    let local = Ledger::new();
    let run = AccountId::Run("r1".into());
    local
        .open(
            run.clone(),
            Some(local.tenant(&"t".into()).id()),
            Limits::default(),
        )
        .unwrap();
    let account = local.path(&run).unwrap();
    pg.set_limits(&tenant(), &money(500)).await.unwrap();

    let held = ledger_store::reserve(&account, Some(&store), Charge::usd(400))
        .await
        .unwrap();
    assert!(held.hold().is_some());
    assert_eq!(
        pg.snapshot(&tenant()).await.unwrap().reserved.micro_usd,
        400
    );
    // The local ledger (no ceiling) accepts; the store, whose tenant is at 400 of 500, refuses.
    let refused = ledger_store::reserve(&account, Some(&store), Charge::usd(101)).await;
    assert!(matches!(refused, Err(ReserveError::Ceiling(ref c)) if c.account == tenant()));
    assert_eq!(
        local.tenant_budget(&"t".into()).reserved,
        400,
        "the refused one is released"
    );

    let settled = held.settle(Charge::usd(300)).await;
    assert_eq!(settled.charged.micro_usd, 300);
    let t = pg.snapshot(&tenant()).await.unwrap();
    assert_eq!((t.spent.micro_usd, t.reserved), (300, Charge::ZERO));
    let budget = local.tenant_budget(&"t".into());
    assert_eq!((budget.spent, budget.reserved), (300, 0));
}
