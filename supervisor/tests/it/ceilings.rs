//! Cost ceilings through the supervisor: the ledger refuses what does not fit before anything is
//! sent, warnings and refusals are reported as supervisor events, and by policy the run whose
//! ceiling was reached is halted with reason `cost_ceiling`.

use std::time::Duration;

use crate::common::until;
use impresario_runtime::halt::{HaltReason, HaltScope, Halts};
use impresario_runtime::ledger::{AccountId, Charge, Dimension, Ledger, Limits};
use impresario_runtime::{AgentId, Runtime};
use impresario_supervisor::{OnCeiling, Strategy, Supervisor, SupervisorEvent, SupervisorSpec};

fn run_with_ceiling(ledger: &Ledger, run: &str, micro_usd: u64) {
    let tenant = AccountId::Tenant("acme".into());
    if ledger.account(&tenant).is_none() {
        ledger
            .open(tenant.clone(), None, Limits::default())
            .unwrap();
    }
    let limits = Limits {
        micro_usd: Some(micro_usd),
        ..Limits::default()
    };
    ledger
        .open(AccountId::Run(run.into()), Some(&tenant), limits)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_reaches_its_ceiling_is_halted_with_reason_cost_ceiling() {
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let root = Supervisor::start_root(
        &rt,
        AgentId::new("supervisor", "root"),
        SupervisorSpec::new(Strategy::OneForOne),
    )
    .unwrap();
    let (ledger, halts) = (Ledger::new(), Halts::new());
    run_with_ceiling(&ledger, "r1", 1_000);
    let token = halts.run(&"acme".into(), &"r1".into());
    let mut events = root.events();
    root.enforce_ceilings(&ledger, &halts, OnCeiling::HaltRun)
        .await
        .unwrap();

    // A call in flight on the run's token, as an LLM call would be.
    let in_flight = tokio::spawn({
        let token = token.clone();
        async move { token.run(std::future::pending::<()>()).await }
    });

    let path = ledger.path(&AccountId::Run("r1".into())).unwrap();
    let first = path.reserve(Charge::usd(600)).unwrap();
    first.settle(Charge::usd(600));
    let warning = until(&mut events, |e| {
        matches!(e, SupervisorEvent::CeilingWarning { .. })
    })
    .await;
    assert_eq!(
        warning,
        SupervisorEvent::CeilingWarning {
            account: AccountId::Run("r1".into()),
            dimension: Dimension::MicroUsd,
            fraction_percent: 50,
            spent: 600,
            limit: 1_000,
        }
    );

    let refused = path.reserve(Charge::usd(600)).unwrap_err();
    assert_eq!(
        (refused.limit, refused.spent, refused.requested),
        (1_000, 600, 600)
    );
    let reached = until(&mut events, |e| {
        matches!(e, SupervisorEvent::CeilingReached(_))
    })
    .await;
    assert_eq!(reached, SupervisorEvent::CeilingReached(refused));
    let halted = until(&mut events, |e| matches!(e, SupervisorEvent::Halted { .. })).await;
    assert_eq!(
        halted,
        SupervisorEvent::Halted {
            scope: HaltScope::Run("r1".into()),
            reason: HaltReason::CostCeiling,
            agents: 0
        }
    );
    assert!(token.is_halted());
    let info = token.halt_info().unwrap();
    assert_eq!(info.reason, HaltReason::CostCeiling);
    assert!(
        info.detail.unwrap().contains("run:r1"),
        "the run reports which ceiling"
    );
    let aborted = tokio::time::timeout(Duration::from_secs(1), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(aborted.is_err(), "the in-flight call was aborted");

    let snapshot = ledger
        .account(&AccountId::Run("r1".into()))
        .unwrap()
        .snapshot();
    assert_eq!(
        (snapshot.spent.micro_usd, snapshot.reserved.micro_usd),
        (600, 0)
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fail_step_only_the_refused_call_fails() {
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let root = Supervisor::start_root(
        &rt,
        AgentId::new("supervisor", "root"),
        SupervisorSpec::new(Strategy::OneForOne),
    )
    .unwrap();
    let (ledger, halts) = (Ledger::new(), Halts::new());
    run_with_ceiling(&ledger, "r2", 1_000);
    let token = halts.run(&"acme".into(), &"r2".into());
    let mut events = root.events();
    root.enforce_ceilings(&ledger, &halts, OnCeiling::FailStep)
        .await
        .unwrap();

    let path = ledger.path(&AccountId::Run("r2".into())).unwrap();
    assert!(path.reserve(Charge::usd(2_000)).is_err());
    until(&mut events, |e| {
        matches!(e, SupervisorEvent::CeilingReached(_))
    })
    .await;
    // Cheaper work still fits, and the run was not halted.
    path.reserve(Charge::usd(400))
        .unwrap()
        .settle(Charge::usd(400));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!token.is_halted());
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, SupervisorEvent::Halted { .. }),
            "{event:?}"
        );
    }
    rt.shutdown(Duration::from_secs(5)).await;
}
