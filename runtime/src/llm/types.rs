//! Provider-neutral request and response types.
//!
//! They serialize to plain JSON (recordings, journals), and a request is validated before
//! anything is reserved or sent (contract 5: bad input is rejected with the field named).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::LlmError;
use super::shared_json::{JsonBlob, SharedJson, SharedText};
use crate::ledger::MicroUsd;

/// `max_tokens` of a request built with [`ChatRequest::new`] until changed.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Instructions. Anthropic receives all system messages joined as its top-level `system`.
    System {
        /// The text, shared: a prompt that goes into many requests (a planner's) is one
        /// allocation, serialized once ([`SharedText`]).
        content: SharedText,
    },
    /// What the user says.
    User {
        /// The text.
        content: String,
    },
    /// What the model said earlier: text, tool calls, or both.
    Assistant {
        /// The text (may be empty when the turn is only tool calls).
        #[serde(default)]
        content: String,
        /// Tools the model asked to call.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of a tool call, answering the assistant's call with the same id.
    Tool {
        /// The id of the [`ToolCall`] this answers.
        tool_call_id: String,
        /// The result, usually JSON text.
        content: String,
    },
}

impl Message {
    /// A system message (pass a [`SharedText`] to share the text and its serialization
    /// between requests).
    pub fn system(content: impl Into<SharedText>) -> Self {
        Message::System {
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::User {
            content: content.into(),
        }
    }

    /// An assistant message with text only.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::Assistant {
            content: content.into(),
            tool_calls: Vec::new(),
        }
    }

    /// A tool result answering the call `tool_call_id`.
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Message::Tool {
            tool_call_id: tool_call_id.into(),
            content: content.into(),
        }
    }

    /// The message's text.
    pub fn content(&self) -> &str {
        match self {
            Message::System { content } => content,
            Message::User { content }
            | Message::Assistant { content, .. }
            | Message::Tool { content, .. } => content,
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    /// Name the model uses to call it (`^[a-zA-Z0-9_-]{1,64}$` for both providers).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its arguments (an object schema).
    pub parameters: Value,
}

/// A call to a tool, as produced by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// Provider-assigned id; the tool result must quote it.
    pub id: String,
    /// Which tool.
    pub name: String,
    /// Arguments, already parsed: invalid JSON from the model is an
    /// [`LlmError::InvalidToolArguments`], never a `ToolCall`.
    pub arguments: Value,
}

/// Ask for a JSON answer matching a schema (structured output).
///
/// OpenAI-compatible providers send it as `response_format: json_schema`; Anthropic forces a
/// tool whose input schema is this schema and returns the tool input as the response text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSchema {
    /// Name of the schema (`^[a-zA-Z0-9_-]{1,64}$`).
    pub name: String,
    /// The JSON Schema, shared by the requests that carry it and serialized once.
    pub schema: SharedJson,
    /// OpenAI strict mode (the schema must then list every property as required and set
    /// `additionalProperties: false`).
    #[serde(default)]
    pub strict: bool,
}

/// A chat request to one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// Model name as in the price table (e.g. `gpt-4o-mini`, `claude-sonnet-4-5`).
    pub model: String,
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDef>,
    /// Structured output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<OutputSchema>,
    /// Upper bound on output tokens (reasoning included); also what the worst-case
    /// reservation assumes.
    pub max_tokens: u32,
    /// Sampling temperature; `Some(0.0)` makes the request cacheable. `None` = provider default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

impl ChatRequest {
    /// An empty request to `model` with [`DEFAULT_MAX_TOKENS`].
    pub fn new(model: impl Into<String>) -> Self {
        ChatRequest {
            model: model.into(),
            messages: Vec::new(),
            tools: Vec::new(),
            output_schema: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: None,
            stop: Vec::new(),
        }
    }

    /// Appends a system message (a [`SharedText`] is shared, not copied).
    pub fn system(self, content: impl Into<SharedText>) -> Self {
        self.message(Message::system(content))
    }

    /// Appends a user message.
    pub fn user(self, content: impl Into<String>) -> Self {
        self.message(Message::user(content))
    }

    /// Appends any message.
    pub fn message(mut self, message: Message) -> Self {
        self.messages.push(message);
        self
    }

    /// Offers a tool.
    pub fn tool(mut self, tool: ToolDef) -> Self {
        self.tools.push(tool);
        self
    }

    /// Asks for JSON output matching `schema` (shared: a request's clones do not copy it, and
    /// pass a [`SharedJson`] to share it and its serialization between requests).
    pub fn output_schema(
        mut self,
        name: impl Into<String>,
        schema: impl Into<SharedJson>,
        strict: bool,
    ) -> Self {
        self.output_schema = Some(OutputSchema {
            name: name.into(),
            schema: schema.into(),
            strict,
        });
        self
    }

    /// Sets `max_tokens`.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// Sets the temperature.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Adds a stop sequence.
    pub fn stop(mut self, stop: impl Into<String>) -> Self {
        self.stop.push(stop.into());
        self
    }

    /// The shared values this request holds, in the order it serializes them: its system
    /// messages' texts, then its output schema. What a stored journal may keep once per file.
    pub fn shared_values(&self) -> impl Iterator<Item = JsonBlob> + '_ {
        let system = self.messages.iter().filter_map(|m| match m {
            Message::System { content } => Some(content.blob()),
            _ => None,
        });
        system.chain(self.output_schema.iter().map(|s| s.schema.blob()))
    }

    /// Checks what a provider would reject anyway, naming the field.
    pub fn validate(&self) -> Result<(), LlmError> {
        if self.model.trim().is_empty() {
            return bad("model", "is empty");
        }
        if self.messages.is_empty() {
            return bad("messages", "is empty; add at least one user message");
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", "is 0; it must be at least 1");
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return bad("temperature", "must be between 0 and 2");
            }
        }
        self.validate_tools()?;
        for (i, m) in self.messages.iter().enumerate() {
            if let Message::Tool { tool_call_id, .. } = m {
                if tool_call_id.is_empty() {
                    return bad(format!("messages[{i}].tool_call_id"), "is empty");
                }
            }
        }
        Ok(())
    }

    /// The tools' and the output schema's names and schemas.
    fn validate_tools(&self) -> Result<(), LlmError> {
        const NAME_RULE: &str = "must be 1-64 characters of a-z, A-Z, 0-9, _ or -";
        let name_ok = |n: &str| {
            (1..=64).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        for (i, tool) in self.tools.iter().enumerate() {
            if !name_ok(&tool.name) {
                return bad(format!("tools[{i}].name"), NAME_RULE);
            }
            if !tool.parameters.is_object() {
                return bad(
                    format!("tools[{i}].parameters"),
                    "must be a JSON Schema object",
                );
            }
        }
        match &self.output_schema {
            Some(s) if !name_ok(&s.name) => bad("output_schema.name", NAME_RULE),
            Some(s) if !s.schema.is_object() => {
                bad("output_schema.schema", "must be a JSON Schema object")
            }
            _ => Ok(()),
        }
    }
}

/// A request rejected before sending: `field` and what is wrong with it.
fn bad(field: impl std::fmt::Display, problem: &str) -> Result<(), LlmError> {
    Err(LlmError::InvalidRequest {
        status: None,
        message: format!("`{field}` {problem}"),
    })
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end or a stop sequence.
    Stop,
    /// `max_tokens` reached: the output is cut.
    Length,
    /// The model wants tools called.
    ToolCalls,
    /// Anything else, as the provider said it.
    Other(String),
}

impl FinishReason {
    /// The GenAI name of a finish reason (`stop`, `length`, `tool_calls`, or the provider's
    /// own).
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Other(other) => other,
        }
    }
}

/// Token usage of one call.
///
/// `input_tokens` is the whole prompt, cached parts included (for Anthropic: input + cache
/// read + cache creation); `output_tokens` includes reasoning tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// All prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// All generated tokens, reasoning included.
    pub output_tokens: u64,
    /// Prompt tokens read from the provider's prompt cache.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache.
    pub cache_creation_tokens: u64,
    /// Output tokens spent on hidden reasoning.
    pub reasoning_tokens: u64,
    /// `true` when the provider reported no usage and these numbers are our estimate.
    pub estimated: bool,
}

impl Usage {
    /// Input plus output tokens.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// What the provider said about remaining rate limit, when it sent the headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitInfo {
    /// Requests left in the current window.
    pub remaining_requests: Option<u64>,
    /// Tokens left in the current window.
    pub remaining_tokens: Option<u64>,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatResponse {
    /// The model that answered (after a fallback, the fallback model).
    pub model: String,
    /// Text; for structured output, the JSON document.
    pub content: String,
    /// Tools the model wants called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Tokens used.
    pub usage: Usage,
    /// The provider's request id, for support tickets.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Rate-limit headers, when sent.
    #[serde(default)]
    pub rate_limit: Option<RateLimitInfo>,
    /// What this call cost, set by [`Client`](super::Client) (`Some(0)` for a cache hit);
    /// `None` from a bare provider, which knows no prices.
    #[serde(default)]
    pub cost_micro_usd: Option<MicroUsd>,
    /// `true` when served from the response cache (no request sent, nothing charged).
    #[serde(default)]
    pub cache_hit: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_names_the_field() {
        let req = ChatRequest::new("m").user("hi").tool(ToolDef {
            name: "bad name".into(),
            description: String::new(),
            parameters: json!({}),
        });
        let err = req.validate().unwrap_err().to_string();
        assert!(err.contains("tools[0].name"), "{err}");
        let err = ChatRequest::new("m").validate().unwrap_err().to_string();
        assert!(err.contains("`messages`"), "{err}");
        assert!(ChatRequest::new("m").user("hi").validate().is_ok());
    }

    #[test]
    fn messages_round_trip_as_role_tagged_json() {
        let m = Message::Assistant {
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "f".into(),
                arguments: json!({"x": 1}),
            }],
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["role"], "assistant");
        assert_eq!(serde_json::from_value::<Message>(v).unwrap(), m);
    }
}
