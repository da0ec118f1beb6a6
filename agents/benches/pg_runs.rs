//! CPU per run step with the run journal on PostgreSQL, against the SQLite and in-memory
//! journals in the same run (issue 13): 5-step runs (one plan of four no-op tool calls and a
//! final answer, a zero-latency scripted model), 1 run at a time and 100 in flight. CPU is
//! counted twice: this process's (user + system, every thread: the runs, the journal's
//! writer, the pool's I/O thread) and the PostgreSQL server's (the postmaster and its
//! backends, from /proc), since a journal on a server moves work out of the process. The
//! `postgres+ledger` rows also hold every model call in `PgLedger`, its hold settled by the
//! append that journals the answer.
//!
//! Run: `cargo bench -p impresario-agents --bench pg_runs` (needs PostgreSQL's server
//! binaries, as the tests do).

// A benchmark's setup and measurement loop is a script, longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

// The run shape and helpers `benches/runs.rs` uses too.
#[path = "../../benches/common/runs.rs"]
mod runs_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_agents::{
    Autonomy, ModelMap, Orchestrator, OrchestratorConfig, RunRequest, RunState,
};
use impresario_pg::ledger::{PgLedger, PgLedgerConfig};
use impresario_pg::{test_cluster, Database, PgJournal};
use impresario_runtime::journal::{Journal, MemoryJournal, SqliteJournal};
use impresario_runtime::ledger::Ledger;
use impresario_runtime::ledger_store::LedgerStore;
use impresario_runtime::Runtime;
use runs_common::{client, cpu_time, median_of, tokio_runtime, tools, STEPS};

/// Where a measurement journals (and holds its model calls).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Memory,
    Sqlite,
    Postgres,
    PostgresLedger,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::Memory,
        Kind::Sqlite,
        Kind::Postgres,
        Kind::PostgresLedger,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
            Kind::PostgresLedger => "postgres+ledger",
        }
    }
}

/// A fresh journal of `kind` (and, with the ledger, its store), in `dir` or a new database.
fn open(
    kind: Kind,
    dir: &std::path::Path,
    n: usize,
) -> (Arc<dyn Journal>, Option<Arc<dyn LedgerStore>>) {
    let database = || {
        let url = test_cluster::shared().create_database(&format!("bench_{n}"));
        Database::connect(&url).unwrap()
    };
    match kind {
        Kind::Memory => (Arc::new(MemoryJournal::new()), None),
        Kind::Sqlite => {
            let path = dir.join(format!("journal-{n}.db"));
            (Arc::new(SqliteJournal::open(path).unwrap()), None)
        }
        Kind::Postgres => (Arc::new(PgJournal::open(database())), None),
        Kind::PostgresLedger => {
            let db = database();
            let ledger = PgLedger::new(db.clone(), PgLedgerConfig::default());
            (Arc::new(PgJournal::open(db)), Some(Arc::new(ledger)))
        }
    }
}

/// The PostgreSQL server's CPU time so far: the postmaster's, its live children's, and what
/// its exited children had used (`cutime` + `cstime`), from /proc. `None` until the server
/// is known.
fn server_cpu(postmaster: Option<u32>) -> Duration {
    let Some(postmaster) = postmaster else {
        return Duration::ZERO;
    };
    let ticks_per_s = 100.0; // `getconf CLK_TCK` on Linux
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        // After the command's closing parenthesis: state(0) ppid(1) ... utime(11) stime(12)
        // cutime(13) cstime(14).
        let number = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if pid == postmaster {
            ticks += number(11) + number(12) + number(13) + number(14);
        } else if number(1) == u64::from(postmaster) {
            ticks += number(11) + number(12);
        }
    }
    Duration::from_secs_f64(ticks as f64 / ticks_per_s)
}

/// The fields of /proc/PID/stat after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The postmaster's pid: the parent of a backend of the shared server.
fn postmaster() -> u32 {
    let url = test_cluster::shared().create_database("bench_pid");
    let backend = test_cluster::shared()
        .psql(&url, "SELECT pg_backend_pid()")
        .unwrap();
    let fields = stat_fields(backend.trim().parse().unwrap()).unwrap();
    fields[1].parse().unwrap()
}

/// What `runs` runs cost, `concurrent` in flight.
struct Cost {
    wall: Duration,
    cpu: Duration,
    server: Duration,
    commits: u64,
}

/// `runs` 5-step runs on a fresh journal of `kind` and a fresh runtime, `concurrent` in
/// flight, after 20 warm-up runs.
async fn measure(
    kind: Kind,
    journal: (Arc<dyn Journal>, Option<Arc<dyn LedgerStore>>),
    runs: usize,
    concurrent: usize,
    postmaster: Option<u32>,
) -> Cost {
    use futures_util::StreamExt;
    let runtime = Runtime::builder().start().unwrap();
    let (journal, ledger_store) = journal;
    let config = OrchestratorConfig {
        journal: journal.clone(),
        ledger_store,
        ..OrchestratorConfig::default()
    };
    let client = client(runs + 20, "noop");
    let orchestrator = Orchestrator::with(&runtime, client, tools(), Ledger::new(), config)
        .await
        .unwrap();
    let run = |_| async {
        let request = RunRequest::new("bench", ModelMap::all("zero"))
            .tools(["noop"])
            .autonomy(Autonomy::Full);
        let result = orchestrator.submit(request).await.unwrap().wait().await;
        assert!(
            matches!(result.state, RunState::Succeeded { .. }),
            "{}: {:?}",
            kind.name(),
            result.state
        );
    };
    futures_util::stream::iter(0..20)
        .map(run)
        .buffer_unordered(1)
        .collect::<Vec<()>>()
        .await;
    // The server's CPU first: its /proc scan is not this process's runs.
    let server = server_cpu(postmaster);
    let (wall, cpu, commits) = (Instant::now(), cpu_time(), journal.commits());
    futures_util::stream::iter(0..runs)
        .map(run)
        .buffer_unordered(concurrent)
        .collect::<Vec<()>>()
        .await;
    let cost = Cost {
        wall: wall.elapsed(),
        cpu: cpu_time().saturating_sub(cpu),
        server: server_cpu(postmaster).saturating_sub(server),
        commits: journal.commits() - commits,
    };
    drop(orchestrator);
    runtime.shutdown(Duration::from_secs(30)).await;
    cost
}

fn main() {
    const ROUNDS: usize = 3;
    const MODES: [(usize, usize); 2] = [(200, 1), (1_000, 100)];
    let rt = tokio_runtime();
    let dir = std::env::temp_dir().join(format!("impresario-bench-pg-runs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let postmaster = postmaster();
    // [kind][mode] -> per-round (process CPU us/step, server CPU us/step, runs/s, commits/run)
    let mut samples = vec![vec![[(); 4].map(|()| Vec::new()); MODES.len()]; Kind::ALL.len()];
    let mut n = 0;
    for _ in 0..ROUNDS {
        for (k, kind) in Kind::ALL.into_iter().enumerate() {
            for (m, (runs, concurrent)) in MODES.into_iter().enumerate() {
                n += 1;
                let journal = open(kind, &dir, n);
                let cost = rt.block_on(measure(kind, journal, runs, concurrent, Some(postmaster)));
                let steps = (runs as u32 * STEPS) as f64;
                let column = &mut samples[k][m];
                column[0].push(cost.cpu.as_secs_f64() * 1e6 / steps);
                column[1].push(cost.server.as_secs_f64() * 1e6 / steps);
                column[2].push(runs as f64 / cost.wall.as_secs_f64());
                column[3].push(cost.commits as f64 / runs as f64);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("# 5-step runs (plan of 4 no-op tool calls + final answer), scripted model, {ROUNDS} rounds, medians");
    println!(
        "{:<16} {:>9} {:>17} {:>17} {:>16} {:>9} {:>12}",
        "journal",
        "in flight",
        "CPU us/step",
        "server us/step",
        "total us/step",
        "runs/s",
        "commits/run"
    );
    let mut totals = vec![[0.0; MODES.len()]; Kind::ALL.len()];
    for (k, kind) in Kind::ALL.into_iter().enumerate() {
        for (m, (_, concurrent)) in MODES.into_iter().enumerate() {
            let [cpu, server, rate, commits] = samples[k][m].clone().map(median_of);
            totals[k][m] = cpu + server;
            println!(
                "{:<16} {:>9} {:>17.1} {:>17.1} {:>16.1} {:>9.0} {:>12.2}",
                kind.name(),
                concurrent,
                cpu,
                server,
                cpu + server,
                rate,
                commits
            );
        }
    }
    for (k, kind) in Kind::ALL.into_iter().enumerate().skip(2) {
        for (m, (_, concurrent)) in MODES.into_iter().enumerate() {
            println!(
                "{} / sqlite, {concurrent} in flight: total CPU per step {:.2}x",
                kind.name(),
                totals[k][m] / totals[1][m]
            );
        }
    }
}
