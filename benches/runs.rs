//! Orchestration overhead: 5-step runs (one plan of four tool calls and a final answer) with a
//! zero-latency scripted model and a no-op tool, 1 run at a time and 1,000 at once; CPU time per
//! step (process user+system time, all threads) against a bare loop doing the same unavoidable
//! work (one budgeted model call, plan parsing and validation, four tool calls) without agents;
//! and the memory of a run idling (waiting for an approval).
//!
//! Run: `cargo bench --bench runs`

// A benchmark's setup and measurement loop is a script, longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_agents::{
    plan::parse_plan, Autonomy, Impact, ModelMap, Orchestrator, RunRequest, RunState, Tool,
    ToolContext, ToolRegistry,
};
use impresario_runtime::halt::HaltMode;
use impresario_runtime::ledger::{AccountId, Ledger, Limits};
use impresario_runtime::llm::{
    CallOptions, ChatRequest, Client, ModelPrice, PriceTable, Rates, Scripted, ScriptedReply,
};
use impresario_runtime::Runtime;
use nix::time::{clock_gettime, ClockId};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[derive(Deserialize, JsonSchema)]
struct NoArgs {
    /// Which call of the plan (so four calls are four different steps, not a loop).
    #[allow(dead_code)]
    n: u32,
}

struct Noop(Impact);
impl Tool for Noop {
    type Args = NoArgs;
    fn name(&self) -> &str {
        if self.0 == Impact::ReadOnly {
            "noop"
        } else {
            "guarded"
        }
    }
    fn description(&self) -> &str {
        "Does nothing."
    }
    fn impact(&self) -> Impact {
        self.0
    }
    async fn call(&self, _: NoArgs, _: ToolContext) -> Result<Value, String> {
        Ok(json!(1))
    }
}

fn five_step_plan(tool: &str) -> String {
    let call = |n: u32| json!({ "type": "tool_call", "tool": tool, "arguments": { "n": n } });
    json!({ "steps": [call(1), call(2), call(3), call(4), { "type": "final_answer", "answer": "done" }] })
        .to_string()
}

fn client(replies: usize, tool: &str) -> Client {
    let mut prices = PriceTable::default();
    prices.insert("zero", ModelPrice::new("script", Rates::default()));
    let plan = five_step_plan(tool);
    let script = Scripted::new((0..replies).map(|_| ScriptedReply::text(plan.clone())));
    Client::builder()
        .provider("script", script)
        .prices(prices)
        .build()
        .unwrap()
}

fn tools() -> ToolRegistry {
    let mut tools = ToolRegistry::new();
    tools
        .register(Noop(Impact::ReadOnly))
        .unwrap()
        .register(Noop(Impact::HighImpact))
        .unwrap();
    tools
}

/// CPU time (user + system, every thread) of this process so far, to the nanosecond.
fn cpu_time() -> Duration {
    let ts = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .expect("CLOCK_PROCESS_CPUTIME_ID is available on Linux");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

const STEPS: u32 = 5;

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

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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

    // Memory of idle runs: each waits for the approval of its first (high-impact) step.
    let idle = 1_000;
    let (rss, per_run) = rt.block_on(async {
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
        (grown, grown / idle as u64)
    });
    println!(
        "\n# {idle} idle runs (each waiting for an approval): RSS grew {} KiB, {} KiB per run",
        rss / 1024,
        per_run / 1024
    );
}
