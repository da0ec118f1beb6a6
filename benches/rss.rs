//! Bounded memory: the resident set size (VmRSS, from /proc/self/status) of a process driving
//! many runs with 20 KB goals through the library as the service does (a SQLite journal with
//! retention, long-term memory, recall of earlier runs), sampled every 500 runs. The baseline
//! is the RSS after warm-up (1,000 runs) in the same run; the result is the largest deviation
//! from it afterwards, and the final ratio.
//!
//! Run: `cargo bench --bench rss` (long-term memory in a SQLite file, as the fix keeps it) and
//! `cargo bench --bench rss -- --in-process` (the in-process store, for contrast).
//! `cargo bench --bench rss -- --service` measures the service itself instead: this build's
//! `impresario serve` (offline model, its defaults: long-term memory beside the journal, the
//! registry of the last 1,000 finished runs; journal retention keeping 1,000 ended runs),
//! driven over HTTP, its process's RSS sampled.
//! `RSS_RUNS` sets the number of runs (default 10,000); `RSS_BINARY`, with `--service`, the
//! `impresario` binary to measure instead of this build's (another build, such as one without
//! the `jemalloc` feature, measured the same way).

use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_agents::memory::{LongTermStore, MemoryDb, Retention};
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
    rss_kib_of("/proc/self/status")
}

/// The resident set size in a `/proc/<pid>/status` file, in KiB.
fn rss_kib_of(status: &str) -> u64 {
    let status = std::fs::read_to_string(status).unwrap_or_default();
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
    let service = std::env::args().any(|a| a == "--service");
    let runs: usize = std::env::var("RSS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("impresario-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    if service {
        let samples = drive_service(runs, &dir);
        report(
            "the service (impresario serve, offline model)",
            runs,
            &samples,
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let journal: Arc<dyn Journal> = Arc::new(SqliteJournal::open(dir.join("journal.db")).unwrap());
    let long_term_store = (!in_process).then(|| {
        let db = MemoryDb::open(dir.join("memory.db"), Retention::default()).unwrap();
        Arc::new(db) as Arc<dyn LongTermStore>
    });
    let runtime = Runtime::builder().start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let samples = rt.block_on(drive(&runtime, journal, long_term_store, runs));
    let store = if in_process {
        "the library, in-process long-term memory"
    } else {
        "the library, long-term memory in SQLite"
    };
    report(store, runs, &samples);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn drive(
    runtime: &impresario_runtime::RuntimeHandle,
    journal: Arc<dyn Journal>,
    long_term_store: Option<Arc<dyn LongTermStore>>,
    runs: usize,
) -> Vec<(usize, u64)> {
    let config = OrchestratorConfig {
        journal: journal.clone(),
        long_term_store,
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

fn report(driven: &str, runs: usize, samples: &[(usize, u64)]) {
    println!("rss: {runs} runs with 20 KB goals, {driven}");
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

/// The bearer token of the service under measurement.
const TOKEN: &str = "rss-bench-token-0123456789abcdef";

/// `impresario serve` (this build's binary) in `dir`, with the offline model and journal
/// retention keeping 1,000 ended runs (applied every 5 s), driven over HTTP like a client
/// would: `runs` runs with 20 KB goals, 16 at a time. Samples the service process's RSS.
fn drive_service(runs: usize, dir: &std::path::Path) -> Vec<(usize, u64)> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let config = dir.join("impresario.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             [models]\nprovider = \"offline\"\n\
             [journal]\nretain_finished_runs = 1000\nretention_interval_secs = 5\n"
        ),
    )
    .unwrap();
    let binary =
        std::env::var("RSS_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_impresario").into());
    let mut child = Service(
        Command::new(binary)
            .current_dir(dir)
            .args(["--config", config.to_str().unwrap(), "serve"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pid = child.0.id();
    let samples = rt.block_on(submit_all(&url, runs, || {
        rss_kib_of(&format!("/proc/{pid}/status"))
    }));
    drop(child);
    samples
}

/// The service's process, killed when dropped (also when the benchmark panics).
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Submits `runs` runs to the service at `url`, 16 at a time, each awaited to its end;
/// `rss` every 500 runs.
async fn submit_all(url: &str, runs: usize, rss: impl Fn() -> u64) -> Vec<(usize, u64)> {
    let http = reqwest::Client::new();
    let mut samples = vec![(0, rss())];
    let started = Instant::now();
    for first in (0..runs).step_by(BATCH) {
        let mut ids = Vec::new();
        for n in first..(first + BATCH).min(runs) {
            let body = json!({ "goal": goal(n), "tools": [] });
            let created = call(http.post(format!("{url}/v1/runs")).json(&body)).await;
            ids.push(created["id"].as_str().unwrap().to_owned());
        }
        for id in ids {
            until_ended(&http, url, &id).await;
        }
        let done = (first + BATCH).min(runs);
        if done % SAMPLE_EVERY < BATCH || done == runs {
            samples.push((done, rss()));
            eprintln!(
                "{done} runs, RSS {} MiB, {:?}, load average {}",
                rss() / 1024,
                started.elapsed(),
                load_average()
            );
        }
    }
    samples
}

/// The machine's load average over the last minute (`/proc/loadavg`), as written there.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_owned()
}

/// Sends `request` with the token; its JSON answer.
async fn call(request: reqwest::RequestBuilder) -> serde_json::Value {
    let response = request.bearer_auth(TOKEN).send().await.unwrap();
    response.json().await.unwrap()
}

/// Polls run `id` until it ended (60 s at most).
async fn until_ended(http: &reqwest::Client, url: &str, id: &str) {
    let ongoing = ["queued", "planning", "running", "awaiting_approval"];
    for _ in 0..12_000 {
        let shown = call(http.get(format!("{url}/v1/runs/{id}"))).await;
        match shown["state"]["state"].as_str() {
            Some(state) if !ongoing.contains(&state) => return,
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    panic!("run {id} did not end within 60 s");
}
