//! What the run benchmarks share (`benches/runs.rs`, `benches/pg_runs.rs`): 5-step runs (one
//! plan of four no-op tool calls and a final answer) from a zero-latency scripted model, the
//! no-op tools, process CPU time and the bench's tokio runtime.

use std::time::Duration;

use impresario_agents::{Impact, Tool, ToolContext, ToolRegistry};
use impresario_runtime::llm::{Client, ModelPrice, PriceTable, Rates, Scripted, ScriptedReply};
use nix::time::{clock_gettime, ClockId};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

/// Steps of a run of the five-step plan.
pub const STEPS: u32 = 5;

#[derive(Deserialize, JsonSchema)]
pub struct NoArgs {
    /// Which call of the plan (so four calls are four different steps, not a loop).
    #[allow(dead_code)]
    n: u32,
}

/// A tool doing nothing: `noop` (read-only) or `guarded` (high impact).
pub struct Noop(pub Impact);

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

/// A plan of four calls of `tool` and a final answer.
pub fn five_step_plan(tool: &str) -> String {
    let call = |n: u32| json!({ "type": "tool_call", "tool": tool, "arguments": { "n": n } });
    json!({ "steps": [call(1), call(2), call(3), call(4), { "type": "final_answer", "answer": "done" }] })
        .to_string()
}

/// A client whose model `zero` (free) answers `replies` times with [`five_step_plan`].
pub fn client(replies: usize, tool: &str) -> Client {
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

/// `noop` and `guarded`.
pub fn tools() -> ToolRegistry {
    let mut tools = ToolRegistry::new();
    tools
        .register(Noop(Impact::ReadOnly))
        .unwrap()
        .register(Noop(Impact::HighImpact))
        .unwrap();
    tools
}

/// CPU time (user + system, every thread) of this process so far, to the nanosecond.
pub fn cpu_time() -> Duration {
    let ts = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .expect("CLOCK_PROCESS_CPUTIME_ID is available on Linux");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

/// The bench's tokio runtime: 2 workers, as on the 2-core machine it runs on.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The median of `values` (of an even count, the upper middle one).
pub fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
