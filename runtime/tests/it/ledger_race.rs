//! Many reservations racing on one ceiling: the ceiling holds exactly, and nothing stays
//! reserved afterwards.

use std::sync::{Arc, Barrier};

use impresario_runtime::ledger::{AccountId, Charge, Ledger, Limits};

const ATTEMPTS: u64 = 1_000;
const COST: u64 = 37;
const CEILING: u64 = 10_000;

fn usd_limit(micro_usd: u64) -> Limits {
    Limits {
        micro_usd: Some(micro_usd),
        ..Limits::default()
    }
}

/// Asserts the quiescent invariants on every account, and returns the ceiling account's spend.
fn check_quiescent(ledger: &Ledger, ids: &[AccountId], ceiling: &AccountId) -> u64 {
    for id in ids {
        let s = ledger.account(id).unwrap().snapshot();
        assert_eq!(s.reserved, Charge::ZERO, "{id} leaked a reservation");
        if let Some(limit) = s.limits.micro_usd {
            assert!(
                s.spent.micro_usd <= limit,
                "{id} overspent: {} > {limit}",
                s.spent.micro_usd
            );
        }
    }
    ledger.account(ceiling).unwrap().snapshot().spent.micro_usd
}

#[test]
fn threads_racing_on_a_tenant_ceiling() {
    let ledger = Ledger::new();
    let tenant = AccountId::Tenant("t".into());
    ledger
        .open(tenant.clone(), None, usd_limit(CEILING))
        .unwrap();
    let runs: Vec<AccountId> = (0..4)
        .map(|i| AccountId::Run(format!("r{i}").into()))
        .collect();
    for run in &runs {
        ledger
            .open(run.clone(), Some(&tenant), Limits::default())
            .unwrap();
    }

    const THREADS: u64 = 8;
    let start = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let path = ledger.path(&runs[t as usize % runs.len()]).unwrap();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut won = 0;
                for _ in 0..ATTEMPTS / THREADS {
                    if let Ok(r) = path.reserve(Charge::usd(COST)) {
                        // Hold it a moment so other threads see it reserved, not yet spent.
                        std::thread::yield_now();
                        let _ = r.settle(Charge::usd(COST));
                        won += 1;
                    }
                }
                won
            })
        })
        .collect();
    let wins: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();

    let mut ids = runs.clone();
    ids.extend([tenant.clone(), AccountId::Global]);
    let spent = check_quiescent(&ledger, &ids, &tenant);
    assert_eq!(wins, CEILING / COST);
    assert_eq!(spent, wins * COST);
}

#[test]
fn tokio_tasks_racing_on_a_run_ceiling() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let ledger = Ledger::new();
    let tenant = AccountId::Tenant("t".into());
    let run = AccountId::Run("r".into());
    ledger
        .open(tenant.clone(), None, usd_limit(CEILING * 2))
        .unwrap();
    ledger
        .open(run.clone(), Some(&tenant), usd_limit(CEILING))
        .unwrap();
    let path = ledger.path(&run).unwrap();

    let wins: u64 = rt.block_on(async {
        let tasks: Vec<_> = (0..ATTEMPTS)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move {
                    let Ok(r) = path.reserve(Charge::usd(COST)) else {
                        return 0;
                    };
                    // Held across an await, like a real call in flight.
                    tokio::task::yield_now().await;
                    let _ = r.settle(Charge::usd(COST));
                    1
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            wins += t.await.unwrap();
        }
        wins
    });

    let spent = check_quiescent(&ledger, &[run.clone(), tenant, AccountId::Global], &run);
    assert_eq!(wins, CEILING / COST);
    assert_eq!(spent, wins * COST);
}
