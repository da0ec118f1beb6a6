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
//! `Envelope`, and the handler runs inside it, so a span created in a handler
//! is a child of the sender's span. An async handler must capture the span before its future
//! runs: `async move { .. }.instrument(telemetry::invoke_agent(&id.kind, &id))`.
//!
//! Prompts and completions are recorded (as `gen_ai.input.messages` and
//! `gen_ai.output.messages`) only when the client is built with
//! `llm::ClientBuilder::record_content(true)`. Nothing here ever
//! records a header, a configuration or a key.

use std::fmt;

use tracing::field::Empty;
use tracing::Span;

/// The span of a run: `invoke_workflow {name}`, with the run id as `impresario.run.id` (a span
/// attribute, never a metric label). `invoke_workflow` is not among the GenAI conventions'
/// operation names yet; it names a whole run the way `invoke_agent` names one agent's work.
pub fn invoke_workflow(name: &str, run: &str) -> Span {
    tracing::info_span!(
        "invoke_workflow",
        otel.name = %format_args!("invoke_workflow {name}"),
        gen_ai.operation.name = "invoke_workflow",
        impresario.workflow.name = name,
        impresario.run.id = run,
        "error.type" = Empty,
    )
}

/// The span of an agent's work on a request: `invoke_agent {kind}`, with the agent's full id
/// (`kind/key`) as `gen_ai.agent.id`.
pub fn invoke_agent(kind: &str, id: &dyn fmt::Display) -> Span {
    tracing::info_span!(
        "invoke_agent",
        otel.name = %format_args!("invoke_agent {kind}"),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = kind,
        gen_ai.agent.id = %id,
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

/// What the `chat` span records of a request.
#[cfg(feature = "llm")]
pub(crate) struct ChatStart<'a> {
    /// The provider the model is registered under.
    pub(crate) provider: &'a str,
    /// The model named in the request.
    pub(crate) model: &'a str,
    /// The request's output limit.
    pub(crate) max_tokens: u32,
    /// The request's temperature, if it set one.
    pub(crate) temperature: Option<f32>,
}

/// The span of one model of a chat call (its attempts and retries): `chat {model}`.
#[cfg(feature = "llm")]
pub(crate) fn chat(start: &ChatStart<'_>) -> Span {
    let span = tracing::info_span!(
        "chat",
        otel.name = %format_args!("chat {}", start.model),
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = start.provider,
        gen_ai.request.model = start.model,
        gen_ai.request.max_tokens = start.max_tokens,
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
    if let Some(t) = start.temperature {
        span.record("gen_ai.request.temperature", f64::from(t));
    }
    span
}

/// Which messages of a chat call [`record_messages`] records.
#[cfg(feature = "llm")]
#[derive(Clone, Copy)]
pub(crate) enum Messages {
    /// The prompt (`gen_ai.input.messages`).
    Input,
    /// The answer (`gen_ai.output.messages`).
    Output,
}

/// Records a chat call's messages, serialized as JSON, on its span. Call it only when the
/// client records content, and the span is enabled ([`Span::is_disabled`]).
#[cfg(feature = "llm")]
pub(crate) fn record_messages(span: &Span, which: Messages, json: &str) {
    match which {
        Messages::Input => span.record("gen_ai.input.messages", json),
        Messages::Output => span.record("gen_ai.output.messages", json),
    };
}

/// What the `chat` span records of an answer.
#[cfg(feature = "llm")]
pub(crate) struct ChatEnd<'a> {
    /// The model that answered, as the provider named it.
    pub(crate) model: &'a str,
    /// The provider's id of the response.
    pub(crate) response_id: Option<&'a str>,
    /// The GenAI name of why the model stopped (`stop`, `length`, `tool_calls`, ...).
    pub(crate) finish_reason: &'a str,
    /// Input tokens reported.
    pub(crate) input_tokens: u64,
    /// Output tokens reported.
    pub(crate) output_tokens: u64,
    /// Whether the response cache answered.
    pub(crate) cache_hit: bool,
    /// What the call cost, when priced.
    pub(crate) cost_micro_usd: Option<u64>,
}

/// Records how a chat call ended on its span, after `attempts` requests: its answer, or the
/// class of its error.
#[cfg(feature = "llm")]
pub(crate) fn record_chat(span: &Span, attempts: u32, end: Result<ChatEnd<'_>, &str>) {
    span.record("impresario.attempts", attempts);
    let end = match end {
        Ok(end) => end,
        Err(error_type) => {
            span.record("error.type", error_type);
            return;
        }
    };
    span.record("gen_ai.response.model", end.model);
    if let Some(id) = end.response_id {
        span.record("gen_ai.response.id", id);
    }
    span.record("gen_ai.response.finish_reasons", end.finish_reason);
    span.record("gen_ai.usage.input_tokens", end.input_tokens);
    span.record("gen_ai.usage.output_tokens", end.output_tokens);
    span.record("impresario.cache_hit", end.cache_hit);
    if let Some(cost) = end.cost_micro_usd {
        span.record("impresario.cost_micro_usd", cost);
    }
}
