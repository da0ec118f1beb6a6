//! Halts on a real PostgreSQL server: one connection records a halt, another process's follower
//! (a connection of its own) fires the run's token; lifts travel the same way; a follower
//! catches up on what was recorded before it listened or while the server restarted.

use std::time::{Duration, Instant};

use impresario_pg::halts::{HaltFollower, PgHalts};
use impresario_pg::test_cluster::{shared, TestCluster};
use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope, HaltToken, Halts};
use impresario_runtime::{RunId, TenantId};

use crate::ledger::database;

/// A safety net for waits on notifications, never a latency assertion.
const WAIT: Duration = Duration::from_secs(20);

async fn halts_on(url: &str) -> PgHalts {
    PgHalts::new(database(url).await)
}

fn ids() -> (TenantId, RunId) {
    ("acme".into(), "run-1".into())
}

/// The process driving a run: its own `Halts`, following the table on a connection of its
/// own (listening once this returns), and the run's token.
async fn driving_process(url: &str) -> (Halts, HaltFollower, HaltToken) {
    let driving = Halts::new();
    let (tenant, run) = ids();
    let token = driving.run(&tenant, &run);
    let mut follower = PgHalts::follow(url.parse().unwrap(), driving.clone());
    tokio::time::timeout(WAIT, follower.listening())
        .await
        .unwrap();
    (driving, follower, token)
}

/// Waits (bounded) until `condition` holds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_recorded_on_one_connection_fires_the_token_another_process_follows() {
    let url = shared().create_database("halts_notify");
    let requester = halts_on(&url).await;
    let (_driving, _follower, token) = driving_process(&url).await;
    let (tenant, run) = ids();
    assert!(!token.is_halted());

    let halt = Halt::new(
        HaltScope::Run(run.clone()),
        HaltMode::Immediate,
        HaltReason::Operator,
    )
    .with_detail("stop from replica A");
    assert!(requester.halt(&halt).await.unwrap());
    tokio::time::timeout(WAIT, token.halted())
        .await
        .expect("the token fired");
    let seen = token.halt_info().unwrap();
    assert_eq!(
        (seen.scope, seen.detail.as_deref()),
        (halt.scope.clone(), Some("stop from replica A"))
    );

    // The row stands for the check before each step, until the run is resumed.
    assert_eq!(
        requester.standing(&tenant, &run).await.unwrap(),
        Some(halt.clone())
    );
    assert_eq!(
        requester.standing(&tenant, &"other".into()).await.unwrap(),
        None
    );
    assert_eq!(
        requester.lift(&HaltScope::Run(run.clone())).await.unwrap(),
        1
    );
    assert_eq!(requester.standing(&tenant, &run).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_halt_and_its_lift_reach_the_follower_and_the_standing_check() {
    let url = shared().create_database("halts_tenant");
    let requester = halts_on(&url).await;
    let (tenant, run) = ids();
    // Recorded before the follower listens: it applies it when it catches up.
    let early = Halt::new(
        HaltScope::Tenant("early".into()),
        HaltMode::Immediate,
        HaltReason::CostCeiling,
    );
    requester.halt(&early).await.unwrap();

    let driving = Halts::new();
    let mut follower = PgHalts::follow(url.parse().unwrap(), driving.clone());
    tokio::time::timeout(WAIT, follower.listening())
        .await
        .unwrap();
    assert!(
        driving.tenant(&"early".into()).is_halted(),
        "caught up on a standing halt"
    );

    let graceful = HaltMode::Graceful {
        deadline: Duration::from_secs(30),
    };
    let halt = Halt::new(
        HaltScope::Tenant(tenant.clone()),
        graceful,
        HaltReason::Operator,
    );
    requester.halt(&halt).await.unwrap();
    eventually("the tenant's stop is requested", || {
        driving.tenant(&tenant).stop_requested()
    })
    .await;
    assert_eq!(requester.standing(&tenant, &run).await.unwrap(), Some(halt));

    assert_eq!(
        requester
            .lift(&HaltScope::Tenant(tenant.clone()))
            .await
            .unwrap(),
        1
    );
    eventually("the tenant's halt is lifted", || {
        !driving.tenant(&tenant).stop_requested()
    })
    .await;
    assert_eq!(requester.standing(&tenant, &run).await.unwrap(), None);
    assert_eq!(
        requester.lift(&HaltScope::Tenant(tenant)).await.unwrap(),
        0,
        "nothing left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_reconnects_after_a_server_restart_and_misses_nothing() {
    let pg = TestCluster::start();
    let url = pg.create_database("halts_restart");
    let requester = halts_on(&url).await;
    let (_driving, _follower, token) = driving_process(&url).await;

    // Kept until the end of the test: dropping the cluster stops its server.
    let _pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    // Recorded while the follower may still be reconnecting: its catch-up or NOTIFY applies it.
    let halt = Halt::new(HaltScope::All, HaltMode::Immediate, HaltReason::Shutdown);
    requester.halt(&halt).await.unwrap();
    tokio::time::timeout(WAIT, token.halted())
        .await
        .expect("the token fired");
    assert_eq!(token.halt_info().unwrap().scope, HaltScope::All);
}
