//! Bounded memory: the resident set size (VmRSS, from /proc/self/status) of a process driving
//! many runs with 20 KB goals through the library as the service does (a SQLite journal with
//! retention, long-term memory, recall of earlier runs), sampled every 500 runs. The baseline
//! is the RSS after warm-up (1,000 runs) in the same run; the result is the largest deviation
//! from it afterwards, and the final ratio.
//!
//! Run: `cargo bench --bench rss` (long-term memory in a SQLite file, as the fix keeps it) and
//! `cargo bench --bench rss -- --in-process` (the in-process store, for contrast).
//! `RSS_RUNS` sets the number of runs (default 10,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_agents::memory::{MemoryDb, Retention};
use impresario_agents::{ModelMap, Orchestrator, OrchestratorConfig, RunRequest, ToolRegistry};
use impresario_runtime::journal::{Journal, RetentionPolicy, SqliteJournal};
use impresario_runtime::ledger::Ledger;
use impresario_runtime::llm::{Client, ModelPrice, PriceTable, Rates, Scripted, ScriptedReply};
use impresario_runtime::Runtime;
use serde_json::json;

const BATCH: usize = 16;
const SAMPLE_EVERY: usize = 500;
const WARM_UP: usize = 1_000;

/// This process's resident set size, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn client(runs: usize) -> Client {
    let mut prices = PriceTable::default();
    prices.insert("zero", ModelPrice::new("script", Rates::default()));
    let plan = json!({ "steps": [{ "type": "final_answer", "answer": "done" }] }).to_string();
    let script = Scripted::new((0..runs).map(|_| ScriptedReply::text(plan.clone())));
    Client::builder()
        .provider("script", script)
        .prices(prices)
        .build()
        .unwrap()
}

/// A goal of about 20 KB, different for each run.
fn goal(n: usize) -> String {
    let mut goal = format!("Task {n}: summarize what changed. ");
    while goal.len() < 20_000 {
        goal.push_str(&format!(
            "Detail {} of task {n} about the release notes. ",
            goal.len()
        ));
    }
    goal
}

fn main() {
    let in_process = std::env::args().any(|a| a == "--in-process");
    let runs: usize = std::env::var("RSS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("impresario-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let journal: Arc<dyn Journal> = Arc::new(SqliteJournal::open(dir.join("journal.db")).unwrap());
    let memory_db =
        (!in_process).then(|| MemoryDb::open(dir.join("memory.db"), Retention::default()).unwrap());
    let runtime = Runtime::builder().start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let samples = rt.block_on(drive(&runtime, journal, memory_db, runs));
    report(in_process, runs, &samples);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn drive(
    runtime: &impresario_runtime::RuntimeHandle,
    journal: Arc<dyn Journal>,
    memory_db: Option<MemoryDb>,
    runs: usize,
) -> Vec<(usize, u64)> {
    let config = OrchestratorConfig {
        journal: journal.clone(),
        memory_db,
        ..OrchestratorConfig::default()
    };
    let team = Orchestrator::with(
        runtime,
        client(runs),
        ToolRegistry::new(),
        Ledger::new(),
        config,
    )
    .await
    .unwrap();
    let retention = RetentionPolicy {
        max_age: None,
        max_finished_runs: Some(1_000),
        include_halted: false,
    };
    let mut samples = vec![(0, rss_kib())];
    let started = Instant::now();
    for first in (0..runs).step_by(BATCH) {
        let mut handles = Vec::new();
        for n in first..(first + BATCH).min(runs) {
            let request =
                RunRequest::new(goal(n), ModelMap::all("zero")).tools(Vec::<String>::new());
            handles.push(team.submit(request).await.unwrap());
        }
        for h in handles {
            h.wait().await;
        }
        let done = (first + BATCH).min(runs);
        if done % SAMPLE_EVERY < BATCH || done == runs {
            journal.apply_retention(&retention).await.unwrap();
            samples.push((done, rss_kib()));
            eprintln!(
                "{done} runs, RSS {} MiB, {:?}",
                rss_kib() / 1024,
                started.elapsed()
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    samples
}

fn report(in_process: bool, runs: usize, samples: &[(usize, u64)]) {
    let store = if in_process {
        "in-process long-term memory"
    } else {
        "long-term memory in SQLite"
    };
    println!("rss: {runs} runs with 20 KB goals, {store}");
    println!("| runs | RSS (MiB) |");
    println!("|---:|---:|");
    for (n, kib) in samples {
        println!("| {n} | {:.1} |", *kib as f64 / 1024.0);
    }
    let Some(&(_, base)) = samples.iter().find(|(n, _)| *n >= WARM_UP) else {
        return;
    };
    let after: Vec<u64> = samples
        .iter()
        .filter(|(n, _)| *n >= WARM_UP)
        .map(|s| s.1)
        .collect();
    let worst = after
        .iter()
        .map(|&k| (k as f64 - base as f64).abs() / base as f64)
        .fold(0.0, f64::max);
    let last = *after.last().unwrap_or(&base);
    println!(
        "after warm-up ({WARM_UP} runs, {:.1} MiB): largest deviation {:.1} %, final / warm-up = {:.2}",
        base as f64 / 1024.0,
        worst * 100.0,
        last as f64 / base as f64
    );
}
