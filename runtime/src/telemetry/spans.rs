//! The spans of a run, named and attributed as the OpenTelemetry GenAI conventions say:
//! `invoke_workflow {name}` (a run) > `invoke_agent {agent}` > `chat {model}` and
//! `execute_tool {tool}`.
//!
//! `tracing` span names are static, so each span is named by its operation (`chat`) and carries
//! the full OpenTelemetry name in `otel.name` (`chat gpt-4o-mini`), which
//! `tracing-opentelemetry` uses as the exported name. Attributes of our own start with
//! `impresario.`. Span field names must be literals in `tracing`, so every span name and
//! attribute key is written in this module and nowhere else.
//!
//! Parenting across actors: a message carries its sender's span in its
//! [`Envelope`](crate::Envelope), and the handler runs inside it, so a span created in a handler
//! is a child of the sender's span. An async handler must capture the span before its future
//! runs: `async move { .. }.instrument(telemetry::invoke_agent(&id))`.
//!
//! Prompts and completions are recorded (as `gen_ai.input.messages` and
//! `gen_ai.output.messages`) only when the client is built with
//! [`record_content(true)`](crate::llm::ClientBuilder::record_content). Nothing here ever
//! records a header, a configuration or a key.

use tracing::field::Empty;
use tracing::Span;

use crate::agent_id::AgentId;
use crate::envelope::RunId;
#[cfg(feature = "llm")]
use crate::llm::{ChatRequest, ChatResponse, FinishReason, LlmError};

/// The span of a run: `invoke_workflow {name}`, with the run id as `impresario.run.id` (a span
/// attribute, never a metric label). `invoke_workflow` is not among the GenAI conventions'
/// operation names yet; it names a whole run the way `invoke_agent` names one agent's work.
pub fn invoke_workflow(name: &str, run: &RunId) -> Span {
    tracing::info_span!(
        "invoke_workflow",
        otel.name = %format_args!("invoke_workflow {name}"),
        gen_ai.operation.name = "invoke_workflow",
        impresario.workflow.name = name,
        impresario.run.id = run.as_str(),
        "error.type" = Empty,
    )
}

/// The span of an agent's work on a request: `invoke_agent {kind}`.
pub fn invoke_agent(agent: &AgentId) -> Span {
    tracing::info_span!(
        "invoke_agent",
        otel.name = %format_args!("invoke_agent {}", agent.kind),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = &*agent.kind,
        gen_ai.agent.id = %agent,
        "error.type" = Empty,
    )
}

/// The span of one tool call: `execute_tool {tool}`. Record a failure with
/// [`record_error_type`].
pub fn execute_tool(tool: &str, call_id: &str) -> Span {
    tracing::info_span!(
        "execute_tool",
        otel.name = %format_args!("execute_tool {tool}"),
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = tool,
        gen_ai.tool.call.id = call_id,
        "gen_ai.tool.type" = "function",
        "error.type" = Empty,
    )
}

/// Marks the work of `span` as failed with `error_type`, a bounded class of error (never the
/// message).
pub fn record_error_type(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
}

/// The span of one model of a chat call (its attempts and retries): `chat {model}`.
#[cfg(feature = "llm")]
pub(crate) fn chat(provider: &str, request: &ChatRequest, content: bool) -> Span {
    let span = tracing::info_span!(
        "chat",
        otel.name = %format_args!("chat {}", request.model),
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = %request.model,
        gen_ai.request.max_tokens = request.max_tokens,
        gen_ai.request.temperature = Empty,
        gen_ai.response.model = Empty,
        gen_ai.response.id = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.input.messages = Empty,
        gen_ai.output.messages = Empty,
        impresario.cost_micro_usd = Empty,
        impresario.cache_hit = Empty,
        impresario.attempts = Empty,
        "error.type" = Empty,
    );
    if let Some(t) = request.temperature {
        span.record("gen_ai.request.temperature", f64::from(t));
    }
    if content && !span.is_disabled() {
        if let Ok(messages) = serde_json::to_string(&request.messages) {
            span.record("gen_ai.input.messages", messages);
        }
    }
    span
}

/// Records how a chat call ended on its span.
#[cfg(feature = "llm")]
pub(crate) fn record_chat(
    span: &Span,
    result: &Result<ChatResponse, LlmError>,
    attempts: u32,
    content: bool,
) {
    if span.is_disabled() {
        return;
    }
    span.record("impresario.attempts", attempts);
    let response = match result {
        Ok(response) => response,
        Err(e) => {
            span.record("error.type", e.kind());
            return;
        }
    };
    span.record("gen_ai.response.model", response.model.as_str());
    if let Some(id) = &response.request_id {
        span.record("gen_ai.response.id", id.as_str());
    }
    span.record(
        "gen_ai.response.finish_reasons",
        finish_reason(&response.finish_reason),
    );
    span.record("gen_ai.usage.input_tokens", response.usage.input_tokens);
    span.record("gen_ai.usage.output_tokens", response.usage.output_tokens);
    span.record("impresario.cache_hit", response.cache_hit);
    if let Some(cost) = response.cost_micro_usd {
        span.record("impresario.cost_micro_usd", cost);
    }
    if content {
        let output = serde_json::json!([{
            "role": "assistant",
            "content": response.content,
            "tool_calls": response.tool_calls,
        }]);
        span.record("gen_ai.output.messages", output.to_string());
    }
}

/// The GenAI name of a finish reason (`stop`, `length`, `tool_calls`, or the provider's own).
#[cfg(feature = "llm")]
fn finish_reason(reason: &FinishReason) -> &str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Other(other) => other,
    }
}
