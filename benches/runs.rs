//! Orchestration overhead: 5-step runs (one plan of four tool calls and a final answer) with a
//! zero-latency scripted model and a no-op tool, 1 run at a time and 1,000 at once; CPU time per
//! step (process user+system time, all threads) against a bare loop doing the same unavoidable
//! work (one budgeted model call, plan parsing and validation, four tool calls) without agents;
//! the memory of a run idling (waiting for an approval); and issue 18's shape (2 model calls and
//! 1 tool call) on the in-memory journal against the SQLite one (`synchronous = FULL`, the
//! default, and `NORMAL`, `journal.sync = "normal"`): CPU per run, runs/s one at a time and 100
//! at once, commits per run, memory per finished run after 10,000 runs, and SQLite's ratios to
//! the in-memory journal again as medians of ratios of short back-to-back pairs (both journals
//! under the same load). Memory is measured in a
//! child process of its own each time, so memory freed by earlier measurements cannot hide
//! growth.
//!
//! Run: `cargo bench --bench runs` (`IMPRESARIO_BENCH_RUNS_ONLY=steps` or `=shape`: one part,
//! `=shape-table` the shape's table without its memory figures;
//! `IMPRESARIO_BENCH_SHAPE_JOURNALS=memory,sqlite-normal`: only those journals in the shape part).

// A benchmark's setup and measurement loop is a script, longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

mod common;

use common::runs::{client, cpu_time, median_of, tokio_runtime, tools, Noop, STEPS};

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::BoxFuture;
use impresario_agents::{
    plan::parse_plan, Autonomy, Impact, ModelMap, Orchestrator, OrchestratorConfig, RunRequest,
    RunState, Tool, ToolContext,
};
use impresario_runtime::halt::HaltMode;
use impresario_runtime::journal::{Durability, Journal, MemoryJournal, SqliteJournal};
use impresario_runtime::ledger::{AccountId, Ledger, Limits};
use impresario_runtime::llm::{
    CallOptions, ChatModel, ChatRequest, ChatResponse, Client, FinishReason, LlmError, Message,
    ModelPrice, PriceTable, Rates, Usage,
};
use impresario_runtime::{Runtime, RuntimeHandle};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// Runs `runs` five-step runs, `concurrent` at a time; returns (wall time, CPU time).
async fn orchestrated(runs: usize, concurrent: usize) -> (Duration, Duration) {
    let runtime = Runtime::builder().start().unwrap();
    let orchestrator = Orchestrator::start(&runtime, client(runs, "noop"), tools())
        .await
        .unwrap();
    let (wall, cpu) = (Instant::now(), cpu_time());
    let mut done = 0;
    while done < runs {
        let batch = concurrent.min(runs - done);
        let mut handles = Vec::with_capacity(batch);
        for _ in 0..batch {
            let request = RunRequest::new("bench", ModelMap::all("zero"))
                .tools(["noop"])
                .autonomy(Autonomy::Full);
            handles.push(orchestrator.submit(request).await.unwrap());
        }
        for handle in handles {
            let result = handle.wait().await;
            assert!(
                matches!(result.state, RunState::Succeeded { .. }),
                "{:?}",
                result.state
            );
        }
        done += batch;
    }
    let measured = (wall.elapsed(), cpu_time().saturating_sub(cpu));
    runtime.shutdown(Duration::from_secs(30)).await;
    measured
}

/// The same work without agents, supervisors or a driver: one budgeted model call, the plan
/// parsed and validated, four tool calls through the registry's validation.
async fn bare(runs: usize) -> (Duration, Duration) {
    let client = client(runs, "noop");
    let tools = tools();
    let ledger = Ledger::new();
    ledger
        .open(AccountId::Run("bare".into()), None, Limits::default())
        .unwrap();
    let options = CallOptions::new(
        ledger.path(&AccountId::Run("bare".into())).unwrap(),
        CancellationToken::new(),
    );
    let halts = impresario_runtime::halt::Halts::new();
    let tool = tools.get("noop").unwrap().clone();
    let (wall, cpu) = (Instant::now(), cpu_time());
    for _ in 0..runs {
        let response = client
            .chat(ChatRequest::new("zero").user("bench"), &options)
            .await
            .unwrap();
        let plan = parse_plan(&response.content).unwrap();
        for step in &plan.steps[..plan.steps.len() - 1] {
            let impresario_agents::Step::ToolCall { arguments, .. } = step else {
                unreachable!()
            };
            let args = Value::Object(arguments.clone());
            tool.validate(&args).unwrap();
            let ctx = ToolContext {
                run: impresario_runtime::RunId::new("bare"),
                tenant: "default".into(),
                step: 1,
                idempotency_key: String::new(),
                halt: halts.global(),
            };
            std::hint::black_box(
                Noop(Impact::ReadOnly)
                    .call(serde_json::from_value(args).unwrap(), ctx)
                    .await
                    .unwrap(),
            );
        }
    }
    (wall.elapsed(), cpu_time().saturating_sub(cpu))
}

/// In a process of its own: RSS grown per run while `idle` runs each wait for the approval of
/// their first (high-impact) step.
fn idle_bytes_per_run(idle: usize) -> u64 {
    let rt = tokio_runtime();
    rt.block_on(async {
        let runtime = Runtime::builder().start().unwrap();
        let orchestrator = Arc::new(
            Orchestrator::start(&runtime, client(idle, "guarded"), tools())
                .await
                .unwrap(),
        );
        let before = rss_bytes();
        let mut handles = Vec::new();
        for _ in 0..idle {
            let request = RunRequest::new("bench", ModelMap::all("zero"))
                .tools(["guarded"])
                .autonomy(Autonomy::Conditional);
            handles.push(orchestrator.submit(request).await.unwrap());
        }
        for handle in &handles {
            while !matches!(handle.status(), RunState::AwaitingApproval { .. }) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let grown = rss_bytes().saturating_sub(before);
        for handle in &handles {
            handle.halt(HaltMode::Immediate);
        }
        for handle in &handles {
            handle.wait().await;
        }
        runtime.shutdown(Duration::from_secs(30)).await;
        grown / idle as u64
    })
}

// ---- Issue 18: 2 model calls + 1 tool call, in-memory against SQLite journal ----------------

/// The issue-18 shape's model: plans one no-op tool call, then, once the run's history shows
/// the call, the final answer. Instant and deterministic whatever order concurrent runs call
/// it in; fixed usage, so no token estimate is computed.
struct TwoCalls;

impl ChatModel for TwoCalls {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        let called = request
            .messages
            .iter()
            .any(|m| matches!(m, Message::User { content } if content.contains("called noop")));
        let steps = if called {
            json!([{ "type": "final_answer", "answer": "done" }])
        } else {
            json!([{ "type": "tool_call", "tool": "noop", "arguments": { "n": 1 } }])
        };
        let response = ChatResponse {
            model: request.model.clone(),
            content: json!({ "steps": steps }).to_string(),
            finish_reason: FinishReason::Stop,
            tool_calls: Vec::new(),
            usage: Usage {
                input_tokens: 100,
                output_tokens: 20,
                ..Usage::default()
            },
            request_id: None,
            rate_limit: None,
            cost_micro_usd: None,
            cache_hit: false,
        };
        Box::pin(std::future::ready(Ok(response)))
    }
}

/// Which journal a shape run uses.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Memory,
    /// SQLite, `synchronous = FULL` (the default).
    Sqlite,
    /// SQLite, `synchronous = NORMAL` (`journal.sync = "normal"`).
    SqliteNormal,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Memory, Kind::Sqlite, Kind::SqliteNormal];

    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Sqlite => "sqlite",
            Kind::SqliteNormal => "sqlite-normal",
        }
    }

    /// A fresh journal (a new file in the system temp dir for SQLite, removed by `Scratch`).
    fn open(self, scratch: &Scratch) -> Arc<dyn Journal> {
        let file = scratch.0.join("journal.db");
        match self {
            Kind::Memory => Arc::new(MemoryJournal::new()),
            Kind::Sqlite => Arc::new(SqliteJournal::open(file).unwrap()),
            Kind::SqliteNormal => {
                Arc::new(SqliteJournal::open_with(file, Durability::Normal).unwrap())
            }
        }
    }
}

/// A directory removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "impresario-bench-runs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `runs` runs of the shape cost, `concurrent` at a time.
struct ShapeCost {
    wall: Duration,
    cpu: Duration,
    commits: u64,
    /// What the SQLite file holds once the runs (warm-up included) are done; `None` in memory.
    stored: Option<StoredBytes>,
}

/// What a SQLite journal file holds for its runs, in bytes: the rows of events (their kinds,
/// JSON and references to shared values), the shared values stored once, and what the rows
/// would hold with every shared value in each event that has it (as before schema 4).
#[derive(Clone, Copy)]
struct StoredBytes {
    runs: u64,
    rows: u64,
    shared: u64,
    inline: u64,
}

impl StoredBytes {
    fn of(file: &std::path::Path) -> Self {
        let conn = rusqlite::Connection::open(file).unwrap();
        let number = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, f64>(0)).unwrap() as u64;
        let runs = number("SELECT count(*) FROM runs");
        let rows = number(
            "SELECT total(length(CAST(kinds AS BLOB)) + length(CAST(bodies AS BLOB)) + coalesce(length(refs), 0)) FROM batches",
        );
        let shared = number("SELECT total(length(CAST(json AS BLOB))) FROM blobs");
        let sizes: std::collections::HashMap<String, u64> = conn
            .prepare("SELECT digest, length(CAST(json AS BLOB)) FROM blobs")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut inline = rows;
        let refs = conn
            .prepare("SELECT refs FROM batches WHERE refs IS NOT NULL")
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>();
        for row in &refs {
            // Each value instead of its `null`, and no `refs` column.
            for line in row.lines() {
                let digest = line.rsplit(' ').next().unwrap();
                inline = inline + sizes[digest] - 4;
            }
            inline -= row.len() as u64;
        }
        StoredBytes {
            runs,
            rows,
            shared,
            inline,
        }
    }
}

/// Runs `runs` runs of the shape, keeping `concurrent` of them in flight (submitted
/// concurrently, as concurrent clients would: their submissions share commits too).
async fn shape_runs(orchestrator: &Orchestrator, runs: usize, concurrent: usize) -> ShapeCost {
    use futures_util::StreamExt;
    let journal = orchestrator.journal().clone();
    let (wall, cpu, commits) = (Instant::now(), cpu_time(), journal.commits());
    let one = |_| async {
        let request = RunRequest::new("bench", ModelMap::all("instant")).tools(["noop"]);
        let result = orchestrator.submit(request).await.unwrap().wait().await;
        assert!(
            matches!(result.state, RunState::Succeeded { .. }),
            "{:?}",
            result.state
        );
        assert_eq!(result.steps.len(), 1, "one tool call");
    };
    futures_util::stream::iter(0..runs)
        .map(one)
        .buffer_unordered(concurrent)
        .collect::<Vec<()>>()
        .await;
    ShapeCost {
        wall: wall.elapsed(),
        cpu: cpu_time().saturating_sub(cpu),
        commits: journal.commits() - commits,
        stored: None,
    }
}

async fn shape_orchestrator(runtime: &RuntimeHandle, journal: Arc<dyn Journal>) -> Orchestrator {
    let mut prices = PriceTable::default();
    prices.insert("instant", ModelPrice::new("two-calls", Rates::default()));
    let client = Client::builder()
        .provider("two-calls", TwoCalls)
        .prices(prices)
        .build()
        .unwrap();
    let config = OrchestratorConfig {
        journal,
        ..OrchestratorConfig::default()
    };
    Orchestrator::with(runtime, client, tools(), Ledger::new(), config)
        .await
        .unwrap()
}

/// One measurement of the shape on a fresh journal of `kind` and a fresh runtime.
async fn shape(kind: Kind, runs: usize, concurrent: usize) -> ShapeCost {
    let scratch = Scratch::new();
    let runtime = Runtime::builder().start().unwrap();
    let orchestrator = shape_orchestrator(&runtime, kind.open(&scratch)).await;
    shape_runs(&orchestrator, 20, 1).await; // warm-up
    let mut cost = shape_runs(&orchestrator, runs, concurrent).await;
    drop(orchestrator);
    runtime.shutdown(Duration::from_secs(30)).await;
    // The file of the runs one at a time is the one reported.
    if kind != Kind::Memory && concurrent == 1 {
        cost.stored = Some(StoredBytes::of(&scratch.0.join("journal.db")));
    }
    cost
}

/// Runs of the shape in one measurement: one at a time, and with 100 in flight.
const ONE: usize = 300;
const MANY: usize = 2_000;

/// The shape's table: `rounds` interleaved rounds of each journal, medians, SQLite's ratio.
fn shape_report(rt: &tokio::runtime::Runtime, rounds: usize) {
    println!("\n# issue 18 shape: 2 model calls + 1 tool call (instant model, no-op tool), {rounds} rounds, medians");
    println!(
        "{:<14} {:>12} {:>12} {:>16} {:>14} {:>13} {:>17}",
        "journal",
        "CPU us/run",
        "runs/s (1)",
        "CPU us/run (100)",
        "runs/s (100)",
        "commits/run",
        "commits/run (100)"
    );
    let mut table = Vec::new();
    for kind in shape_kinds() {
        table.push((kind, [(); 6].map(|()| Vec::new())));
    }
    let mut stored = Vec::new();
    for _ in 0..rounds {
        for (kind, columns) in &mut table {
            let one = rt.block_on(shape(*kind, ONE, 1));
            stored.extend(one.stored.map(|bytes| (kind.name(), bytes)));
            let many = rt.block_on(shape(*kind, MANY, 100));
            columns[0].push(one.cpu.as_secs_f64() * 1e6 / ONE as f64);
            columns[1].push(ONE as f64 / one.wall.as_secs_f64());
            columns[2].push(many.cpu.as_secs_f64() * 1e6 / MANY as f64);
            columns[3].push(MANY as f64 / many.wall.as_secs_f64());
            columns[4].push(one.commits as f64 / ONE as f64);
            columns[5].push(many.commits as f64 / MANY as f64);
        }
    }
    let medians: Vec<(Kind, Vec<f64>)> = table
        .into_iter()
        .map(|(kind, columns)| (kind, columns.into_iter().map(median_of).collect()))
        .collect();
    for (kind, m) in &medians {
        println!(
            "{:<14} {:>12.1} {:>12.0} {:>16.1} {:>14.0} {:>13.2} {:>17.2}",
            kind.name(),
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5]
        );
    }
    // The same runs store the same bytes every round: the last round's.
    let files = medians.iter().filter(|(k, _)| *k != Kind::Memory).count();
    for (name, b) in &stored[stored.len().saturating_sub(files)..] {
        let per_run = |bytes: u64| bytes as f64 / b.runs as f64;
        println!(
            "{name}: stored per run {:.0} bytes of event rows + {} bytes of shared values for the whole file ({:.0} bytes per run with the shared values in every event)",
            per_run(b.rows),
            b.shared,
            per_run(b.inline)
        );
    }
    let Some((Kind::Memory, memory)) = medians.first() else {
        return; // no in-memory baseline in this run: no ratios
    };
    for (kind, sqlite) in &medians[1..] {
        println!(
            "{} / memory: CPU per run (1 at a time) {:.2}x (target <= 1.5x); runs/s with 100 concurrent {:.0}% (target >= 80%)",
            kind.name(),
            sqlite[0] / memory[0],
            sqlite[3] / memory[3] * 100.0
        );
    }
}

/// Pairs of back-to-back measurements in [`paired_report`] (each as large as a table's).
const PAIRS: usize = 15;

/// SQLite's ratios to the in-memory journal under the same load: [`PAIRS`] pairs of
/// measurements, the in-memory journal and `kind` back to back (first one, then the other, in
/// turn), and the median of the per-pair ratios with their range. The table's ratios divide
/// medians of measurements made a minute apart, under a load that may have changed meanwhile.
fn paired_report(rt: &tokio::runtime::Runtime) {
    let kinds = shape_kinds();
    if !matches!(kinds.first(), Some(Kind::Memory)) {
        return; // no in-memory baseline in this run: no ratios
    }
    println!(
        "\n# issue 18 shape, paired: {PAIRS} pairs, each the in-memory journal and one SQLite journal back to back ({ONE} runs one at a time, {MANY} with 100 in flight); median of the per-pair ratios [min-max]"
    );
    for &kind in &kinds[1..] {
        let (mut cpu, mut share) = (Vec::new(), Vec::new());
        for pair in 0..PAIRS {
            let (memory, sqlite) = back_to_back(rt, kind, pair, ONE, 1);
            cpu.push(sqlite.cpu.as_secs_f64() / memory.cpu.as_secs_f64());
            let (memory, sqlite) = back_to_back(rt, kind, pair, MANY, 100);
            // Same number of runs: the runs/s share is the inverse ratio of the wall times.
            share.push(memory.wall.as_secs_f64() / sqlite.wall.as_secs_f64() * 100.0);
        }
        let (cpu, share) = (spread(cpu), spread(share));
        println!(
            "{} / memory, paired: CPU per run (1 at a time) {:.2}x [{:.2}-{:.2}] (target <= 1.5x); runs/s with 100 concurrent {:.0}% [{:.0}-{:.0}] (target >= 80%)",
            kind.name(),
            cpu[0],
            cpu[1],
            cpu[2],
            share[0],
            share[1],
            share[2]
        );
    }
}

/// One measurement of the in-memory journal and one of `kind`, back to back, the in-memory
/// journal first in even pairs and second in odd ones (so a load that rises or falls through
/// the pair favours neither); returned as (memory, `kind`).
fn back_to_back(
    rt: &tokio::runtime::Runtime,
    kind: Kind,
    pair: usize,
    runs: usize,
    concurrent: usize,
) -> (ShapeCost, ShapeCost) {
    let measure = |k: Kind| rt.block_on(shape(k, runs, concurrent));
    if pair.is_multiple_of(2) {
        let memory = measure(Kind::Memory);
        (memory, measure(kind))
    } else {
        let sqlite = measure(kind);
        (measure(Kind::Memory), sqlite)
    }
}

/// The median, minimum and maximum of `values`.
fn spread(values: Vec<f64>) -> [f64; 3] {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [median_of(values), min, max]
}

/// The journals `IMPRESARIO_BENCH_SHAPE_JOURNALS` names (comma-separated, e.g.
/// `memory,sqlite-normal`, for profiling one of them), all of them by default.
fn shape_kinds() -> Vec<Kind> {
    match std::env::var("IMPRESARIO_BENCH_SHAPE_JOURNALS") {
        Ok(names) => Kind::ALL
            .into_iter()
            .filter(|k| names.split(',').any(|n| n.trim() == k.name()))
            .collect(),
        Err(_) => Kind::ALL.to_vec(),
    }
}

/// In a process of its own (so memory freed by earlier measurements cannot hide growth): RSS
/// grown per finished run over `runs` runs of the shape, 100 at a time, after 200 warm-up runs.
fn rss_per_finished_run(kind: Kind, runs: usize) -> u64 {
    let rt = tokio_runtime();
    rt.block_on(async {
        let scratch = Scratch::new();
        let runtime = Runtime::builder().start().unwrap();
        let orchestrator = shape_orchestrator(&runtime, kind.open(&scratch)).await;
        shape_runs(&orchestrator, 200, 100).await;
        let before = rss_bytes();
        shape_runs(&orchestrator, runs, 100).await;
        let grown = rss_bytes().saturating_sub(before);
        runtime.shutdown(Duration::from_secs(30)).await;
        grown / runs as u64
    })
}

/// Set in a child process of this bench: the memory measurement it makes and prints.
const PART: &str = "IMPRESARIO_BENCH_RUNS_PART";
const IDLE_RUNS: usize = 1_000;
const FINISHED_RUNS: usize = 10_000;

/// Runs memory measurement `part` in a child process of this bench: bytes per run.
fn in_child(part: &str) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(PART, part)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{part}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{part}: {text}"))
}

fn main() {
    if let Ok(part) = std::env::var(PART) {
        let bytes = match part.as_str() {
            "idle" => idle_bytes_per_run(IDLE_RUNS),
            "finished-memory" => rss_per_finished_run(Kind::Memory, FINISHED_RUNS),
            "finished-sqlite" => rss_per_finished_run(Kind::Sqlite, FINISHED_RUNS),
            "finished-sqlite-normal" => rss_per_finished_run(Kind::SqliteNormal, FINISHED_RUNS),
            other => panic!("unknown {PART} {other}"),
        };
        println!("{bytes}");
        return;
    }
    // `IMPRESARIO_BENCH_RUNS_ONLY=steps` (or `shape`) runs one part only (profiling).
    let only = std::env::var("IMPRESARIO_BENCH_RUNS_ONLY").unwrap_or_default();
    let rt = tokio_runtime();
    if !only.starts_with("shape") {
        step_report(&rt);
    }
    if only != "steps" {
        shape_part(&rt);
    }
}

/// The 5-step runs' table: 3 rounds of the bare loop and the orchestrated runs, then the
/// memory of idle runs.
fn step_report(rt: &tokio::runtime::Runtime) {
    println!(
        "# 5-step runs (plan of 4 no-op tool calls + final answer), zero-latency scripted model"
    );
    println!(
        "{:<44} {:>10} {:>14} {:>16}",
        "", "runs/s", "CPU us/step", "wall us/step"
    );
    let report = |name: &str, runs: usize, (wall, cpu): (Duration, Duration)| {
        let steps = (runs as u32 * STEPS) as f64;
        println!(
            "{name:<44} {:>10.0} {:>14.1} {:>16.1}",
            runs as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / steps,
            wall.as_secs_f64() * 1e6 / steps
        );
    };
    for _ in 0..3 {
        report(
            "bare loop: call + parse + 4 validated calls",
            2_000,
            rt.block_on(bare(2_000)),
        );
        report(
            "orchestrated, 1 run at a time",
            500,
            rt.block_on(orchestrated(500, 1)),
        );
        report(
            "orchestrated, 1,000 runs at once",
            2_000,
            rt.block_on(orchestrated(2_000, 1_000)),
        );
    }

    let per_run = in_child("idle");
    println!(
        "\n# {IDLE_RUNS} idle runs (each waiting for an approval), in a process of their own: {:.1} KiB per run",
        per_run as f64 / 1024.0
    );
}

/// Issue 18's shape: the table of the journals, the paired ratios, then the memory per
/// finished run.
fn shape_part(rt: &tokio::runtime::Runtime) {
    shape_report(rt, 3);
    paired_report(rt);
    if std::env::var("IMPRESARIO_BENCH_RUNS_ONLY").is_ok_and(|only| only == "shape-table") {
        return;
    }
    for kind in shape_kinds() {
        let per_run = in_child(&format!("finished-{}", kind.name()));
        println!(
            "{} journal: RSS grown over {FINISHED_RUNS} finished runs (100 at a time, own process): {:.2} KiB per run",
            kind.name(),
            per_run as f64 / 1024.0
        );
    }
}
