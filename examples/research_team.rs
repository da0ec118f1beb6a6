//! A research team: a planner and executors with two tools (a notes search and a calculator,
//! from `impresario::tools`) answer a question under a budget, and the run prints its step
//! trace, tokens and cost.
//!
//! Offline by default (a scripted model plays the planner). With `OPENAI_API_KEY`,
//! `ANTHROPIC_API_KEY` or an OpenAI-compatible `OPENAI_BASE_URL` set, a real model plans.
//!
//! Run: `cargo run --example research_team`

use std::time::Duration;

use impresario::agents::{Budget, Orchestrator, RunRequest, RunState, RunUpdate, ToolRegistry};
use impresario::prelude::*;
use impresario::runtime::llm::{Scripted, ScriptedReply, Usage};
use impresario::setup;
use impresario::tools::{Calculator, Notes, SearchNotes};
use serde_json::{json, Value};

/// What the offline model answers: plan, search, compute, answer.
fn offline_script() -> Scripted {
    let usage = |input, output| Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    };
    let plan = |steps: Value| ScriptedReply::text(json!({ "steps": steps }).to_string());
    Scripted::new([
        plan(json!([{ "type": "tool_call", "tool": "search_notes",
                      "arguments": { "query": "default restarts supervisor" },
                      "why": "find the default restart intensity" }]))
        .usage(usage(812, 46)),
        plan(json!([{ "type": "tool_call", "tool": "calculator",
                      "arguments": { "op": "mul", "a": 3, "b": 12 },
                      "why": "3 restarts per 5 s window, 12 windows a minute" }]))
        .usage(usage(934, 41)),
        plan(json!([{ "type": "final_answer",
                      "answer": "3 restarts within 5 seconds, so at most 36 restarts a minute before it escalates." }]))
        .usage(usage(1003, 28)),
    ])
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let models = setup::from_env_or(offline_script())?;
    println!("models: {}", models.description);

    let runtime = Runtime::builder().start()?;
    let mut tools = ToolRegistry::new();
    tools
        .register(SearchNotes::new(Notes::builtin()))?
        .register(Calculator)?;
    let team = Orchestrator::start(&runtime, models.client, tools).await?;

    let request = RunRequest::new(
        "What is the default restart intensity of an Impresario supervisor, and how many restarts is that per minute at most?",
        models.models,
    )
    .tools(["search_notes", "calculator"])
    .budget(Budget::usd(0.05));
    let run = team.submit(request).await?;
    println!("run {} submitted", run.id());

    let mut events = run.events();
    let trace = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                RunUpdate::Planned { revision, plan } => {
                    let steps: Vec<String> = plan.steps.iter().map(|s| s.label()).collect();
                    println!("  plan {revision}: {}", steps.join(", "));
                }
                RunUpdate::StepFinished(record) => match &record.outcome {
                    Ok(output) => println!(
                        "  step {} {}: {}",
                        record.number,
                        record.step.label(),
                        one_line(output)
                    ),
                    Err(failure) => println!(
                        "  step {} {} failed: {failure}",
                        record.number,
                        record.step.label()
                    ),
                },
                RunUpdate::State(state) if state.is_terminal() => break,
                _ => {}
            }
        }
    });
    let result = run.wait().await;
    let _ = trace.await;

    match &result.state {
        RunState::Succeeded { answer } => println!("answer: {answer}"),
        other => println!("ended: {other:?}"),
    }
    println!(
        "usage: {} model calls, {} tokens, ${:.6} ({} micro-USD)",
        result.usage.model_calls,
        result.usage.tokens,
        result.usage.micro_usd as f64 / 1e6,
        result.usage.micro_usd
    );
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
