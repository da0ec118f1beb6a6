//! What a call's `chat {model}` span records of its request and answer: this layer's types
//! turned into the plain values of [`telemetry`](crate::telemetry)'s span functions.

use tracing::Span;

use super::{ChatRequest, ChatResponse, LlmError};
use crate::telemetry::{chat_span, record_chat, record_messages, ChatEnd, ChatStart, Messages};

/// Opens the span of one model of a call; with `content`, records the prompt on it.
pub(super) fn open(provider: &str, request: &ChatRequest, content: bool) -> Span {
    let span = chat_span(&ChatStart {
        provider,
        model: &request.model,
        max_tokens: request.max_tokens,
        temperature: request.temperature,
    });
    if content && !span.is_disabled() {
        if let Ok(messages) = serde_json::to_string(&request.messages) {
            record_messages(&span, Messages::Input, &messages);
        }
    }
    span
}

/// Records how the call ended after `attempts` requests; with `content`, the answer too.
pub(super) fn close(
    span: &Span,
    result: &Result<ChatResponse, LlmError>,
    attempts: u32,
    content: bool,
) {
    if span.is_disabled() {
        return;
    }
    let response = match result {
        Ok(response) => response,
        Err(e) => return record_chat(span, attempts, Err(e.kind())),
    };
    record_chat(
        span,
        attempts,
        Ok(ChatEnd {
            model: &response.model,
            response_id: response.request_id.as_deref(),
            finish_reason: response.finish_reason.as_str(),
            input_tokens: response.usage.input_tokens,
            output_tokens: response.usage.output_tokens,
            cache_hit: response.cache_hit,
            cost_micro_usd: response.cost_micro_usd,
        }),
    );
    if content {
        let output = serde_json::json!([{
            "role": "assistant",
            "content": response.content,
            "tool_calls": response.tool_calls,
        }]);
        record_messages(span, Messages::Output, &output.to_string());
    }
}
