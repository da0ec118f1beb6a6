//! Journal append benchmark: appends/s and p50/p99 append latency of `SqliteJournal` with 1 and
//! 16 concurrent appenders (group commit), against raw rusqlite doing one INSERT per transaction
//! with the same pragmas (WAL, synchronous=FULL), in files of the same directory; then
//! `PgJournal` (impresario-pg) on a throwaway local PostgreSQL server (fsync and
//! synchronous_commit on, its defaults; data in the temp dir) against `SqliteJournal` in the
//! same run. Run with `cargo bench --bench journal`; `IMPRESARIO_BENCH_DIR` picks the SQLite
//! directory (default: the system temp dir).

// A benchmark's setup and measurement loop is a script, longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{fmt, median, quantile, step_event as event};
use impresario_pg::test_cluster::TestCluster;
use impresario_pg::PgJournal;
use impresario_runtime::journal::{Journal, RunEvent, SqliteJournal};
use impresario_runtime::RunId;
use serde_json::json;

/// Samples of each configuration, taken in interleaved rounds.
const SAMPLES: usize = 5;
/// Appends per appender in one sample.
const SEQUENTIAL_APPENDS: usize = 400;
const CONCURRENT_APPENDS: usize = 150;
const CONCURRENT: usize = 16;

/// One sample: every append's latency, and the wall time of the whole sample.
struct Sample {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Sample {
    fn per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
}

/// Medians over samples of throughput, p50, p99 and the slowest append.
struct Summary {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn summarize(samples: &mut [Sample]) -> Summary {
    let mut per_sec: Vec<f64> = samples.iter().map(Sample::per_sec).collect();
    per_sec.sort_by(f64::total_cmp);
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut max = Vec::new();
    for s in samples.iter_mut() {
        s.latencies.sort();
        p50.push(quantile(&s.latencies, 0.5));
        p99.push(quantile(&s.latencies, 0.99));
        max.push(quantile(&s.latencies, 1.0));
    }
    p50.sort();
    p99.sort();
    max.sort();
    Summary {
        per_sec: median(&per_sec),
        p50: median(&p50),
        p99: median(&p99),
        max: median(&max),
    }
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// A sample of a fresh SQLite journal at `path` ([`journal_sample`]).
fn sqlite_sample(
    rt: &tokio::runtime::Runtime,
    path: &Path,
    appenders: usize,
    per: usize,
) -> Sample {
    remove_db(path);
    let journal = Arc::new(SqliteJournal::open(path).unwrap());
    let sample = journal_sample(rt, journal, appenders, per);
    remove_db(path);
    sample
}

/// A sample of a PostgreSQL journal in a fresh database of `pg` ([`journal_sample`]).
fn postgres_sample(
    rt: &tokio::runtime::Runtime,
    pg: &TestCluster,
    appenders: usize,
    per: usize,
) -> Sample {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let url = pg.create_database(&format!("bench_{}", N.fetch_add(1, Ordering::Relaxed)));
    let journal = Arc::new(PgJournal::connect(&url).unwrap());
    journal_sample(rt, journal, appenders, per)
}

/// `appenders` tasks, each appending `per` events to a run of its own, all at once; the
/// journal is closed (its queue drained) before this returns.
fn journal_sample(
    rt: &tokio::runtime::Runtime,
    journal: Arc<dyn Journal>,
    appenders: usize,
    per: usize,
) -> Sample {
    let sample = rt.block_on(async {
        let runs: Vec<RunId> = (0..appenders)
            .map(|a| RunId::new(format!("run-{a}")))
            .collect();
        for run in &runs {
            let submitted = RunEvent::RunSubmitted {
                tenant: "bench".into(),
                goal: "benchmark".into(),
                request: json!({}),
            };
            journal.append(run, submitted).await.unwrap();
        }
        let start = Instant::now();
        let tasks: Vec<_> = runs
            .into_iter()
            .map(|run| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per);
                    for i in 0..per {
                        let t = Instant::now();
                        journal.append(&run, event(i)).await.unwrap();
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(appenders * per);
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        Sample {
            latencies,
            wall: start.elapsed(),
        }
    });
    drop(journal);
    sample
}

/// The same pragmas as the journal's writing connection.
fn raw_connection(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .unwrap();
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
        .unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn
}

/// How the raw baseline's threads reach SQLite.
#[derive(Clone, Copy)]
enum Raw {
    /// One connection shared behind a mutex: writes serialized in the process, no lock waits.
    Shared,
    /// A connection per thread: SQLite's file lock serializes them (busy handler sleeps).
    Own,
}

/// `appenders` threads, each inserting `per` rows of its own run, one INSERT per transaction
/// (what a journal without group commit does).
fn raw_sample(path: &Path, mode: Raw, appenders: usize, per: usize) -> Sample {
    remove_db(path);
    let shared = std::sync::Mutex::new(raw_connection(path));
    shared
        .lock()
        .unwrap()
        .execute_batch(
            "CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL,
             at_ms INTEGER NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
             idem_key TEXT, body TEXT NOT NULL, PRIMARY KEY (run_id, seq));",
        )
        .unwrap();
    let insert = |conn: &mut rusqlite::Connection, run: &str, i: usize| {
        let body = serde_json::to_string(&event(i)).unwrap();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        tx.prepare_cached(
            "INSERT INTO events (run_id, seq, at_ms, version, kind, idem_key, body)
             VALUES (?1, ?2, 0, 1, 'step_started', NULL, ?3)",
        )
        .unwrap()
        .execute(rusqlite::params![run, i as i64 + 1, body])
        .unwrap();
        tx.commit().unwrap();
    };
    let barrier = Barrier::new(appenders + 1);
    let (latencies, wall) = std::thread::scope(|s| {
        let threads: Vec<_> = (0..appenders)
            .map(|a| {
                let (barrier, shared, insert) = (&barrier, &shared, &insert);
                s.spawn(move || {
                    let mut own = match mode {
                        Raw::Own => Some(raw_connection(path)),
                        Raw::Shared => None,
                    };
                    let run = format!("run-{a}");
                    let mut latencies = Vec::with_capacity(per);
                    barrier.wait();
                    for i in 0..per {
                        let t = Instant::now();
                        match &mut own {
                            Some(conn) => insert(conn, &run, i),
                            None => insert(&mut shared.lock().unwrap(), &run, i),
                        }
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let latencies: Vec<Duration> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (latencies, start.elapsed())
    });
    drop(shared);
    remove_db(path);
    Sample { latencies, wall }
}

fn report(name: &str, s: &Summary, baseline: Option<&Summary>) {
    let ratio = baseline.map_or(String::new(), |b| {
        format!("  {:.2}x baseline", s.per_sec / b.per_sec)
    });
    println!(
        "{name:<46} {:>6.0} appends/s  p50 {:>9}  p99 {:>9}  max {:>9}{ratio}",
        s.per_sec,
        fmt(s.p50),
        fmt(s.p99),
        fmt(s.max)
    );
}

fn main() {
    let dir: PathBuf = std::env::var_os("IMPRESARIO_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("impresario-journal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();

    let mut journal_1 = Vec::new();
    let mut raw_1 = Vec::new();
    let mut journal_16 = Vec::new();
    let mut shared_16 = Vec::new();
    let mut own_16 = Vec::new();
    let mut pg_1 = Vec::new();
    let mut pg_16 = Vec::new();
    let pg = TestCluster::start();
    for _ in 0..SAMPLES {
        raw_1.push(raw_sample(&path, Raw::Shared, 1, SEQUENTIAL_APPENDS));
        journal_1.push(sqlite_sample(&rt, &path, 1, SEQUENTIAL_APPENDS));
        pg_1.push(postgres_sample(&rt, &pg, 1, SEQUENTIAL_APPENDS));
        shared_16.push(raw_sample(
            &path,
            Raw::Shared,
            CONCURRENT,
            CONCURRENT_APPENDS,
        ));
        own_16.push(raw_sample(&path, Raw::Own, CONCURRENT, CONCURRENT_APPENDS));
        journal_16.push(sqlite_sample(&rt, &path, CONCURRENT, CONCURRENT_APPENDS));
        pg_16.push(postgres_sample(&rt, &pg, CONCURRENT, CONCURRENT_APPENDS));
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "# Journal appends in {} (WAL, synchronous=FULL), median of {SAMPLES} samples",
        dir.display()
    );
    let raw_1 = summarize(&mut raw_1);
    let shared_16 = summarize(&mut shared_16);
    report(
        &format!("baseline: raw rusqlite, 1 thread x {SEQUENTIAL_APPENDS}"),
        &raw_1,
        None,
    );
    let journal_1 = summarize(&mut journal_1);
    report(
        &format!("SqliteJournal, 1 appender x {SEQUENTIAL_APPENDS}"),
        &journal_1,
        Some(&raw_1),
    );
    report(
        &format!("baseline: raw, {CONCURRENT} threads x {CONCURRENT_APPENDS}, 1 shared conn"),
        &shared_16,
        None,
    );
    report(
        &format!("raw, {CONCURRENT} threads, a connection each"),
        &summarize(&mut own_16),
        Some(&shared_16),
    );
    let journal_16 = summarize(&mut journal_16);
    report(
        &format!("SqliteJournal, {CONCURRENT} appenders x {CONCURRENT_APPENDS}"),
        &journal_16,
        Some(&shared_16),
    );
    println!("# PostgreSQL (local server, fsync on), ratios against SqliteJournal above");
    report(
        &format!("PgJournal, 1 appender x {SEQUENTIAL_APPENDS}"),
        &summarize(&mut pg_1),
        Some(&journal_1),
    );
    report(
        &format!("PgJournal, {CONCURRENT} appenders x {CONCURRENT_APPENDS}"),
        &summarize(&mut pg_16),
        Some(&journal_16),
    );
}
