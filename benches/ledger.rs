//! Ledger and halt benchmarks: reservation throughput (against a plain-atomics baseline), the
//! same on PostgreSQL (against a one-row update transaction; needs PostgreSQL's server
//! binaries, as the tests do), and halt latency across 10k waiting tasks. Run with
//! `cargo bench --bench ledger`.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{median, per_iter, quantile, row, sample};
use futures_util::FutureExt;
use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope, HaltToken};
use impresario_runtime::ledger::{AccountId, AccountPath, BudgetPeriod, Charge, Ledger, Limits};
use impresario_runtime::ledger_store;
use tokio_util::sync::CancellationToken;

const SAMPLES: usize = 9;
const ITERS: u32 = 1_000_000;
const HALT_TASKS: usize = 10_000;
const HALT_SAMPLES: usize = 7;

/// What one reserve+settle pair costs in the benchmarks: a typical small chat call.
const WORST: Charge = Charge {
    micro_usd: 1_500,
    tokens: 1_200,
    model_calls: 1,
};
const ACTUAL: Charge = Charge {
    micro_usd: 900,
    tokens: 700,
    model_calls: 1,
};

/// Limits far above what the benchmark spends, so every dimension is checked but never refuses.
fn roomy() -> Limits {
    Limits {
        micro_usd: Some(u64::MAX / 2),
        tokens: Some(u64::MAX / 2),
        model_calls: Some(u64::MAX / 2),
        ..Limits::default()
    }
}

/// Global > tenant:t > run:r0..runs, all limited, the tenant and global ones per `period`;
/// returns the run paths.
fn tree(runs: usize, period: BudgetPeriod) -> Vec<AccountPath> {
    let ledger = Ledger::new();
    ledger.set_period(period);
    ledger
        .account(&AccountId::Global)
        .unwrap()
        .set_limits(roomy());
    let tenant = AccountId::Tenant("t".into());
    ledger.open(tenant.clone(), None, roomy()).unwrap();
    (0..runs)
        .map(|i| {
            let run = AccountId::Run(format!("r{i}").into());
            ledger.open(run.clone(), Some(&tenant), roomy()).unwrap();
            ledger.path(&run).unwrap()
        })
        .collect()
}

fn reserve_settle(path: &AccountPath) {
    let r = path
        .reserve(black_box(WORST))
        .expect("roomy limits never refuse");
    black_box(r.settle(black_box(ACTUAL)));
}

/// The same through the seam the LLM client awaits, without a store: it never suspends, so
/// one poll completes it.
fn reserve_settle_via_seam(path: &AccountPath) {
    let held = ledger_store::reserve(path, None, black_box(WORST))
        .now_or_never()
        .expect("no store: ready at once")
        .expect("roomy limits never refuse");
    black_box(held.settle(black_box(ACTUAL)).now_or_never());
}

/// The seam's row: one thread, against the atomics baseline `base`.
fn seam(path: &AccountPath, base: Duration) {
    let seam = median(&sample(SAMPLES, || {
        per_iter(ITERS, || reserve_settle_via_seam(path))
    }));
    row(
        &format!(
            "ledger via ledger_store::reserve, no store, 1 thread ({})",
            throughput(seam)
        ),
        seam,
        Some(base),
    );
}

/// The baseline: the least any reserve+settle could do, one atomic add for each.
fn fetch_add_pair(reserved: &AtomicU64, spent: &AtomicU64) {
    reserved.fetch_add(black_box(WORST.micro_usd), Ordering::Relaxed);
    spent.fetch_add(black_box(ACTUAL.micro_usd), Ordering::Relaxed);
}

/// Runs `op(thread)` `iters` times on each of 2 threads started together; returns the wall
/// time per operation (total operations / elapsed).
fn two_threads(iters: u32, op: impl Fn(usize) + Sync) -> Duration {
    let barrier = Barrier::new(3);
    // `scope` joins both threads before it returns, so the elapsed time covers all their work.
    let start = std::thread::scope(|s| {
        for t in 0..2 {
            let (op, barrier) = (&op, &barrier);
            s.spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    op(t);
                }
            });
        }
        barrier.wait();
        Instant::now()
    });
    start.elapsed() / (2 * iters)
}

fn throughput(per_op: Duration) -> String {
    format!("{:.2} M/s", 1.0 / per_op.as_secs_f64() / 1e6)
}

fn reservations() {
    println!("# Reservation throughput (reserve + settle), median of {SAMPLES} samples");
    let reserved = AtomicU64::new(0);
    let spent = AtomicU64::new(0);
    let base1 = median(&sample(SAMPLES, || {
        per_iter(ITERS, || fetch_add_pair(&reserved, &spent))
    }));
    row(
        &format!(
            "baseline: AtomicU64::fetch_add pair, 1 thread ({})",
            throughput(base1)
        ),
        base1,
        None,
    );

    let path = tree(1, BudgetPeriod::None).remove(0);
    let one = median(&sample(SAMPLES, || {
        per_iter(ITERS, || reserve_settle(&path))
    }));
    row(
        &format!("ledger, 1 thread, 3-account path ({})", throughput(one)),
        one,
        Some(base1),
    );
    period_cost(one);

    seam(&path, base1);

    let base2 = median(&sample(SAMPLES, || {
        two_threads(ITERS / 2, |_| fetch_add_pair(&reserved, &spent))
    }));
    row(
        &format!(
            "baseline: fetch_add pair, 2 threads, same atomics ({})",
            throughput(base2)
        ),
        base2,
        None,
    );

    let same = median(&sample(SAMPLES, || {
        two_threads(ITERS / 2, |_| reserve_settle(&path))
    }));
    row(
        &format!("ledger, 2 threads, same run account ({})", throughput(same)),
        same,
        Some(base2),
    );

    let paths = tree(2, BudgetPeriod::None);
    let apart = median(&sample(SAMPLES, || {
        two_threads(ITERS / 2, |t| reserve_settle(&paths[t]))
    }));
    row(
        &format!(
            "ledger, 2 threads, 2 runs under one tenant ({})",
            throughput(apart)
        ),
        apart,
        Some(base2),
    );
}

/// The same path with a monthly budget period, against `no_period` (measured in this run): a
/// period reads the clock and computes the period's key on each reservation and settlement.
fn period_cost(no_period: Duration) {
    let monthly = tree(1, BudgetPeriod::Month).remove(0);
    let periodic = median(&sample(SAMPLES, || {
        per_iter(ITERS, || reserve_settle(&monthly))
    }));
    row(
        &format!(
            "ledger, 1 thread, 3-account path, monthly period ({}); baseline: no period",
            throughput(periodic)
        ),
        periodic,
        Some(no_period),
    );
}

/// Waiting tasks count themselves in the same poll that registers their wait, so a full count
/// means all of them wait; the last one to observe the halt wakes the measuring task (which
/// does not poll the tasks while they run, so it does not slow them down).
struct Gate {
    parked: AtomicUsize,
    observed: AtomicUsize,
    all_observed: tokio::sync::Notify,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Gate {
            parked: AtomicUsize::new(0),
            observed: AtomicUsize::new(0),
            all_observed: tokio::sync::Notify::new(),
        })
    }

    fn observe(&self) -> Instant {
        let at = Instant::now();
        if self.observed.fetch_add(1, Ordering::Relaxed) + 1 == HALT_TASKS {
            self.all_observed.notify_one();
        }
        at
    }

    /// Waits for all tasks to park, runs `halt`, waits for all to observe it, and returns each
    /// task's delay from the start of `halt` to its observation, sorted.
    async fn measure(
        &self,
        tasks: Vec<tokio::task::JoinHandle<Instant>>,
        halt: impl FnOnce(),
    ) -> Vec<Duration> {
        while self.parked.load(Ordering::Relaxed) < HALT_TASKS {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let observed = self.all_observed.notified();
        let start = Instant::now();
        halt();
        observed.await;
        let mut delays = Vec::with_capacity(HALT_TASKS);
        for t in tasks {
            delays.push(t.await.unwrap() - start);
        }
        delays.sort();
        delays
    }
}

/// `HALT_TASKS` tasks in `call.run(pending)` on child tokens of a run (global > tenant > run >
/// call); the tenant is halted.
async fn halt_sample() -> Vec<Duration> {
    let tenant = HaltToken::new().child();
    let run = tenant.child();
    let gate = Gate::new();
    let tasks = (0..HALT_TASKS)
        .map(|_| {
            let (call, gate) = (run.child(), gate.clone());
            tokio::spawn(async move {
                gate.parked.fetch_add(1, Ordering::Relaxed);
                let halted = call.run(std::future::pending::<()>()).await;
                assert!(halted.is_err());
                gate.observe()
            })
        })
        .collect();
    gate.measure(tasks, || {
        tenant.halt(Halt::new(
            HaltScope::Tenant("t".into()),
            HaltMode::Immediate,
            HaltReason::Operator,
        ));
    })
    .await
}

/// The same with bare tokio-util tokens: the floor our halt tree is built on.
async fn raw_sample() -> Vec<Duration> {
    let tenant = CancellationToken::new().child_token();
    let run = tenant.child_token();
    let gate = Gate::new();
    let tasks = (0..HALT_TASKS)
        .map(|_| {
            let (call, gate) = (run.child_token(), gate.clone());
            tokio::spawn(async move {
                gate.parked.fetch_add(1, Ordering::Relaxed);
                call.run_until_cancelled(std::future::pending::<()>()).await;
                gate.observe()
            })
        })
        .collect();
    gate.measure(tasks, || tenant.cancel()).await
}

fn halts() {
    println!(
        "# Halt latency: {HALT_TASKS} tasks waiting on child tokens, tokio 2 workers, \
         {HALT_SAMPLES} samples (p50/p99/max within a sample, then the median across samples)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut raw = Vec::new();
    let mut ours = Vec::new();
    // Interleaved, so both see the same background noise.
    for _ in 0..HALT_SAMPLES {
        raw.push(rt.block_on(raw_sample()));
        ours.push(rt.block_on(halt_sample()));
    }
    for (name, samples) in [
        ("baseline: bare CancellationToken", &raw),
        ("HaltToken::run", &ours),
    ] {
        for (label, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            let mut per_sample: Vec<Duration> = samples.iter().map(|d| quantile(d, q)).collect();
            per_sample.sort();
            row(
                &format!("{name}: halt -> observed, {label}"),
                median(&per_sample),
                None,
            );
        }
    }
}

/// PostgreSQL: reserve + settle on a real, throwaway local server (`impresario_pg::
/// test_cluster`), against the least a durable write of a shared counter costs there: a
/// transaction updating one row.
mod pg {
    use std::time::{Duration, Instant};

    use impresario_pg::ledger::{PgLedger, PgLedgerConfig};
    use impresario_pg::test_cluster::TestCluster;
    use impresario_pg::Database;
    use impresario_runtime::ledger::AccountId;
    use impresario_runtime::ledger_store::LedgerStore;

    use super::{median, roomy, row, sample, ACTUAL, WORST};

    const PG_SAMPLES: usize = 5;
    const TASKS: u32 = 16;
    /// Operations per task and sample: uncontended (1 task), and each of the 16 tasks.
    const ONE_TASK_OPS: u32 = 400;
    const PER_TASK_OPS: u32 = 50;

    /// What a sample measures.
    #[derive(Clone, Copy)]
    enum Op {
        /// The baseline: a transaction updating the tenant's row.
        UpdateOneRow,
        /// `PgLedger` reserve, then settle, on the task's run under tenant `t`.
        ReserveSettle,
    }

    fn path(run: u32) -> Vec<AccountId> {
        let run = AccountId::Run(format!("r{run}").into());
        vec![run, AccountId::Tenant("t".into()), AccountId::Global]
    }

    async fn once(op: Op, ledger: &PgLedger, db: &Database, path: &[AccountId]) {
        match op {
            Op::ReserveSettle => {
                let hold = ledger.reserve(path, WORST).await.expect("roomy limits");
                ledger.settle(&hold, ACTUAL).await.expect("settled");
            }
            // On the database's I/O thread, as every `PgLedger` operation runs.
            Op::UpdateOneRow => {
                let pool = db.pool().clone();
                let update = async move {
                    let mut client = pool.get().await.unwrap();
                    let tx = client.transaction().await.unwrap();
                    let sql = "UPDATE ledger_accounts SET spent_tokens = spent_tokens + 1 \
                               WHERE account = 'tenant:t'";
                    tx.execute(sql, &[]).await.unwrap();
                    tx.commit().await.unwrap();
                };
                db.spawn(update).await.unwrap();
            }
        }
    }

    /// Wall time per operation of `tasks` tasks doing `ops` operations each, started together.
    async fn concurrent(
        op: Op,
        tasks: u32,
        ops: u32,
        ledger: &PgLedger,
        db: &Database,
    ) -> Duration {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let (ledger, db, path) = (ledger.clone(), db.clone(), path(t));
                tokio::spawn(async move {
                    for _ in 0..ops {
                        once(op, &ledger, &db, &path).await;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        start.elapsed() / (tasks * ops)
    }

    fn per_second(per_op: Duration) -> String {
        format!("{:.0}/s", 1.0 / per_op.as_secs_f64())
    }

    pub fn reservations() {
        println!(
            "# PostgreSQL reservations (reserve + settle, 3-account path), a local server, \
             tokio 2 workers, median of {PG_SAMPLES} samples"
        );
        let server = TestCluster::start();
        let url = server.create_database("bench_ledger");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let db = Database::connect(&url).expect("the test server");
        let ledger = PgLedger::new(db.clone(), PgLedgerConfig::default());
        rt.block_on(async {
            for account in [AccountId::Global, AccountId::Tenant("t".into())] {
                ledger.set_limits(&account, &roomy()).await.unwrap();
            }
            // Opens every run's account row before measuring.
            concurrent(Op::ReserveSettle, TASKS, 1, &ledger, &db).await;
        });
        let cases = [
            (1, ONE_TASK_OPS, "1 task"),
            (TASKS, PER_TASK_OPS, "16 tasks, one tenant"),
        ];
        for (tasks, ops, label) in cases {
            let measure = |op| {
                median(&sample(PG_SAMPLES, || {
                    rt.block_on(concurrent(op, tasks, ops, &ledger, &db))
                }))
            };
            let base = measure(Op::UpdateOneRow);
            let name = format!(
                "baseline: one-row UPDATE transaction, {label} ({})",
                per_second(base)
            );
            row(&name, base, None);
            let ours = measure(Op::ReserveSettle);
            row(
                &format!("PgLedger, {label} ({})", per_second(ours)),
                ours,
                Some(base),
            );
        }
    }
}

/// `cargo bench --bench ledger [-- PART...]`: every part, or only those named
/// (`reservations`, `pg`, `halts`).
fn main() {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |part: &str| named.is_empty() || named.iter().any(|n| n == part);
    if wanted("reservations") {
        reservations();
    }
    if wanted("pg") {
        pg::reservations();
    }
    if wanted("halts") {
        halts();
    }
}
