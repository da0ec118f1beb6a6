//! Crash recovery: a child process drives 20 runs on a SQLite journal and is killed with
//! SIGKILL at 20+ different points, then started again each time. Every run must reach a
//! terminal state, no side-effecting tool may have executed twice (a counting tool writes each
//! execution to a file), and each run's spend must equal the sum of its journaled costs.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use impresario_agents::{
    Autonomy, Impact, ModelMap, Orchestrator, OrchestratorConfig, RunRequest, RunState, Tool,
    ToolContext, ToolRegistry,
};
use impresario_runtime::journal::{Journal, RunEvent, RunFilter, RunStatus, SqliteJournal};
use impresario_runtime::ledger::Ledger;
use impresario_runtime::llm::{
    ChatModel, ChatRequest, ChatResponse, Client, FinishReason, LlmError, Message, ModelPrice,
    PriceTable, Rates, Usage,
};
use impresario_runtime::Runtime;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

const RUNS: usize = 20;
const CHILD: &str = "IMPRESARIO_CRASH_DIR";

/// Plans from what happened so far, the same way in every process: record the task, look it
/// up, answer. 50 input and 10 output tokens a call: 70 micro-USD at 1 and 2 USD per million.
struct Deterministic;
impl ChatModel for Deterministic {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        let prompt = request
            .messages
            .iter()
            .rev()
            .find_map(|m| match m {
                Message::User { content } => Some(content.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let steps = if !prompt.contains("called record") {
            json!([{ "type": "tool_call", "tool": "record", "arguments": {} }])
        } else if !prompt.contains("called lookup") {
            json!([{ "type": "tool_call", "tool": "lookup", "arguments": {} }])
        } else {
            json!([{ "type": "final_answer", "answer": "recorded and checked" }])
        };
        let response = ChatResponse {
            model: request.model.clone(),
            content: json!({ "steps": steps }).to_string(),
            finish_reason: FinishReason::Stop,
            tool_calls: Vec::new(),
            usage: Usage {
                input_tokens: 50,
                output_tokens: 10,
                ..Usage::default()
            },
            request_id: None,
            rate_limit: None,
            cost_micro_usd: None,
            cache_hit: false,
        };
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok(response)
        })
    }
}

#[derive(Deserialize, JsonSchema)]
struct NoArgs {}

/// A side effect that must happen at most once per step: it appends its idempotency key to a
/// file (synced) and counts nothing else.
struct Record(PathBuf);
impl Tool for Record {
    type Args = NoArgs;
    fn name(&self) -> &str {
        "record"
    }
    fn description(&self) -> &str {
        "Records the task, once."
    }
    fn impact(&self) -> Impact {
        Impact::SideEffect
    }
    async fn call(&self, _: NoArgs, ctx: ToolContext) -> Result<Value, String> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .map_err(|e| e.to_string())?;
        file.write_all(format!("{}\n", ctx.idempotency_key).as_bytes())
            .map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(json!("recorded"))
    }
}

/// Read-only: safe to repeat.
struct Lookup;
impl Tool for Lookup {
    type Args = NoArgs;
    fn name(&self) -> &str {
        "lookup"
    }
    fn description(&self) -> &str {
        "Looks the task up."
    }
    async fn call(&self, _: NoArgs, _: ToolContext) -> Result<Value, String> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(json!("found"))
    }
}

fn effects(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("effects.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The child: recover what a crash cut off, submit the runs not yet submitted, act as the
/// operator for calls whose outcome is unknown, print each run's spend as it finishes.
#[test]
#[ignore = "run by crash_recovery_under_repeated_sigkill as a child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD).map(PathBuf::from) else {
        return;
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async move {
        let journal: Arc<dyn Journal> =
            Arc::new(SqliteJournal::open(dir.join("journal.db")).unwrap());
        let rt = Runtime::builder().arbiters(2).start().unwrap();
        let mut prices = PriceTable::default();
        prices.insert(
            "det",
            ModelPrice::new(
                "det",
                Rates {
                    input: 1_000_000,
                    output: 2_000_000,
                    cache_read: 0,
                    cache_creation: 0,
                    reasoning: 0,
                },
            ),
        );
        let client = Client::builder()
            .provider("det", Deterministic)
            .prices(prices)
            .build()
            .unwrap();
        let mut tools = ToolRegistry::new();
        tools
            .register(Record(dir.join("effects.log")))
            .unwrap()
            .register(Lookup)
            .unwrap();
        let config = OrchestratorConfig {
            journal: journal.clone(),
            recall: 0,
            ..OrchestratorConfig::default()
        };
        let team = Orchestrator::with(&rt, client, tools, Ledger::new(), config)
            .await
            .unwrap();

        let mut open = team.recover().await.unwrap();
        let mut submitted = journal.runs(&RunFilter::all()).unwrap().len();
        // At most 3 runs in flight, so the work is spread over time and kills land mid-run.
        while !open.is_empty() || submitted < RUNS {
            while open.len() < 3 && submitted < RUNS {
                let request = RunRequest::new(format!("task {submitted}"), ModelMap::all("det"))
                    .tools(["record", "lookup"])
                    .autonomy(Autonomy::Full);
                open.push(team.submit(request).await.unwrap());
                submitted += 1;
            }
            let mut still = Vec::new();
            for run in open {
                match run.status() {
                    state if state.is_terminal() => {
                        let result = run.wait().await;
                        println!("finished {} {}", result.run, result.usage.micro_usd);
                        std::io::stdout().flush().unwrap();
                    }
                    // The operator: a call whose outcome the journal does not know. It ran if
                    // its key is in the effects file; only then must it not run again.
                    RunState::AwaitingApproval { step, .. } => {
                        let key = format!("{}/step-{step}", run.id());
                        if effects(&dir).contains(&key) {
                            run.reject(step, "it ran before the crash");
                        } else {
                            run.approve(step);
                        }
                        still.push(run);
                    }
                    _ => still.push(run),
                }
            }
            open = still;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        rt.shutdown(Duration::from_secs(5)).await;
    });
}

#[test]
fn crash_recovery_under_repeated_sigkill() {
    let dir = std::env::temp_dir().join(format!("impresario-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        Command::new(&exe)
            .args([
                "--exact",
                "crash_recovery::crash_child", // its path in the `it` binary
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut reported: HashMap<String, u64> = HashMap::new();
    let mut collect = |child: std::process::Child| {
        let out = BufReader::new(child.stdout.unwrap());
        for line in out.lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("finished ") {
                let (run, spent) = rest.split_once(' ').unwrap();
                reported.insert(run.to_owned(), spent.parse().unwrap());
            }
        }
    };

    // Kill it at 22 different moments: in start-up and recovery, mid-run, between runs.
    let mut kills = 0;
    for i in 0..22u64 {
        let mut child = spawn();
        std::thread::sleep(Duration::from_millis(20 + (i * 37) % 120));
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill(); // SIGKILL on Unix
            kills += 1;
        }
        let _ = child.wait();
        collect(child);
    }
    // Then let it finish.
    let mut child = spawn();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the last life did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());
    collect(child);
    assert!(kills >= 20, "killed {kills} times");

    let journal = SqliteJournal::open(dir.join("journal.db")).unwrap();
    let runs = journal.runs(&RunFilter::all()).unwrap();
    assert_eq!(runs.len(), RUNS);
    for summary in &runs {
        assert_eq!(
            summary.status,
            RunStatus::Finished,
            "{} did not finish",
            summary.run
        );
    }
    let effects = effects(&dir);
    let unique: HashSet<&String> = effects.iter().collect();
    assert_eq!(
        unique.len(),
        effects.len(),
        "a side effect ran twice: {effects:?}"
    );
    assert!(
        effects.len() <= RUNS,
        "{} effects for {RUNS} runs",
        effects.len()
    );

    assert!(!reported.is_empty(), "no life reported a finished run");
    for (run, spent) in &reported {
        let journaled: u64 = journal
            .read(&impresario_runtime::RunId::new(run.as_str()))
            .unwrap()
            .iter()
            .map(|e| match &e.event {
                RunEvent::LlmResponse { cost_micro_usd, .. } => *cost_micro_usd,
                _ => 0,
            })
            .sum();
        assert_eq!(*spent, journaled, "run {run}: spent vs journaled costs");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
