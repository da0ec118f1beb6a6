//! Tools from an MCP server: the reference server-everything (node) is spawned over stdio, its
//! tools join a `ToolRegistry` as `everything.<tool>`, and a run calls one of them.
//!
//! Offline by default (a scripted model plans: call `everything.get-sum`, then answer). With
//! `OPENAI_API_KEY`, `ANTHROPIC_API_KEY` or an OpenAI-compatible `OPENAI_BASE_URL` set, a real
//! model plans instead. Needs node and the server installed once, as `.ci/run` does (see
//! `impresario::mcp::reference_server`).
//!
//! Run: `cargo run --example mcp_tools`

use std::time::Duration;

use impresario::agents::{Budget, Orchestrator, RunRequest, RunState, ToolRegistry};
use impresario::mcp::{McpServer, ServerConfig};
use impresario::prelude::*;
use impresario::runtime::llm::{Scripted, ScriptedReply};
use impresario::setup;
use serde_json::json;

/// What the offline model answers: call the MCP tool, then answer with what it returned.
fn offline_script() -> Scripted {
    let plan =
        |steps: serde_json::Value| ScriptedReply::text(json!({ "steps": steps }).to_string());
    Scripted::new([
        plan(json!([{ "type": "final_answer", "answer": "19 plus 23 is 42 (computed by the MCP server)." }]))
            .when("called everything.get-sum"),
        plan(json!([{ "type": "tool_call", "tool": "everything.get-sum",
                      "arguments": { "a": 19, "b": 23 }, "why": "the MCP server adds" }])),
    ])
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = impresario::mcp::reference_server()?;
    let models = setup::from_env_or(offline_script())?;
    println!("models: {}", models.description);

    // The MCP server, in a few lines: spawned, supervised, its tools in the registry.
    let everything = ServerConfig::stdio(
        "everything",
        "node",
        [server.to_string_lossy().as_ref(), "stdio"],
    )
    .allow(["echo", "get-sum"])
    .timeout(Duration::from_secs(10));
    let mut tools = ToolRegistry::new();
    tools.provide(McpServer::start(everything).await?)?;
    for tool in tools.list() {
        println!(
            "tool {} ({}, {:?}, idempotent: {})",
            tool.name(),
            tool.source(),
            tool.impact(),
            tool.idempotent()
        );
    }

    let runtime = Runtime::builder().start()?;
    let team = Orchestrator::start(&runtime, models.client, tools).await?;
    let request = RunRequest::new("What is 19 plus 23?", models.models)
        .tools(["everything.get-sum"])
        .budget(Budget::usd(0.05));
    let result = team.submit(request).await?.wait().await;
    for step in &result.steps {
        let output = match &step.outcome {
            Ok(output) => output.split_whitespace().collect::<Vec<_>>().join(" "),
            Err(failure) => format!("failed: {failure}"),
        };
        println!("  step {} {}: {output}", step.number, step.step.label());
    }
    match &result.state {
        RunState::Succeeded { answer } => println!("answer: {answer}"),
        other => return Err(format!("the run did not succeed: {other:?}").into()),
    }
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
