//! Anthropic Messages API (`POST {base_url}/v1/messages`).
//!
//! System messages become the top-level `system`; messages become content blocks (`text`,
//! `tool_use`, `tool_result`), consecutive same-role turns merged. Structured output is done
//! by forcing a tool whose input schema is the requested schema; its input is returned as the
//! response text. Usage is normalized: `input_tokens` = input + cache read + cache creation.
//! Streamed answers follow its SSE events: `message_start` carries the input usage,
//! `message_delta` the output usage (cumulative: the last report is the truth).

use std::fmt;

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::LlmError;
use super::estimate;
use super::http::{self, HttpConfig};
use super::stream::Received;
use super::types::{ChatRequest, ChatResponse, FinishReason, Message, ToolCall, Usage};
use super::ChatModel;

/// The `anthropic-version` this client speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Settings of the Anthropic provider.
#[derive(Clone)]
pub struct AnthropicConfig {
    /// Base URL without the version, e.g. `https://api.anthropic.com`.
    pub base_url: String,
    /// Sent as `x-api-key`.
    pub api_key: String,
    /// Sent as `anthropic-version`.
    pub version: String,
    /// Timeouts and limits.
    pub http: HttpConfig,
}

impl fmt::Debug for AnthropicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("version", &self.version)
            .field("http", &self.http)
            .finish()
    }
}

impl AnthropicConfig {
    /// Anthropic's API with `api_key`.
    pub fn new(api_key: impl Into<String>) -> Self {
        AnthropicConfig {
            base_url: "https://api.anthropic.com".into(),
            api_key: api_key.into(),
            version: ANTHROPIC_VERSION.into(),
            http: HttpConfig::default(),
        }
    }
}

/// The Anthropic Messages provider.
pub struct Anthropic {
    client: reqwest::Client,
    url: String,
    key: HeaderValue,
    version: HeaderValue,
    config: AnthropicConfig,
}

impl fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anthropic")
            .field("config", &self.config)
            .finish()
    }
}

impl Anthropic {
    /// A provider with these settings.
    pub fn new(config: AnthropicConfig) -> Result<Self, LlmError> {
        crate::redact::register(&config.api_key);
        crate::redact::register_url(&config.base_url);
        Ok(Anthropic {
            client: http::build_client(&config.http)?,
            url: format!("{}/v1/messages", config.base_url.trim_end_matches('/')),
            key: http::secret_header(&config.api_key)?,
            version: HeaderValue::from_str(&config.version).map_err(|_| {
                LlmError::Config(format!(
                    "anthropic version {:?} is not a valid header",
                    config.version
                ))
            })?,
            config,
        })
    }

    /// Anthropic with the key in `ANTHROPIC_API_KEY` and, if set, the base URL in
    /// `ANTHROPIC_BASE_URL` (as Anthropic's own SDKs read them).
    pub fn from_env() -> Result<Self, LlmError> {
        let key = std::env::var("ANTHROPIC_API_KEY").map_err(|_| {
            LlmError::Config("ANTHROPIC_API_KEY is not set; export your Anthropic API key".into())
        })?;
        let mut config = AnthropicConfig::new(key);
        if let Ok(base) = std::env::var("ANTHROPIC_BASE_URL") {
            config.base_url = base;
        }
        Self::new(config)
    }
}

impl ChatModel for Anthropic {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let answer = self.send(request).await;
            // A provider may echo the key in an error body: it must not reach logs or spans.
            answer.map_err(LlmError::redacted)
        })
    }

    fn chat_stream<'a>(
        &'a self,
        request: &'a ChatRequest,
        received: &'a Received,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let answer = self.send_stream(request, received).await;
            answer.map_err(LlmError::redacted)
        })
    }
}

impl Anthropic {
    /// The HTTP request for `request`, streamed or not.
    fn post(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, LlmError> {
        let mut body = Body::from(request);
        body.stream = stream;
        let body = serde_json::to_vec(&body)
            .map_err(|e| LlmError::Config(format!("cannot encode the request: {e}")))?;
        Ok(self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header("x-api-key", self.key.clone())
            .header("anthropic-version", self.version.clone())
            .body(body))
    }

    async fn send(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let answer = http::send(self.post(request, false)?, &self.config.http).await?;
        let reply: Reply = http::parse_json(&answer.body)?;
        Ok(http::with_headers(
            reply.into_response(request)?,
            &answer.headers,
            &HEADERS,
        ))
    }

    async fn send_stream(
        &self,
        request: &ChatRequest,
        received: &Received,
    ) -> Result<ChatResponse, LlmError> {
        let mut events = http::open_stream(self.post(request, true)?, &self.config.http).await?;
        let schema_tool = request.output_schema.as_ref().map(|s| s.name.as_str());
        let mut streamed = Streamed::default();
        while let Some(event) = events.next().await? {
            if streamed.apply(http::parse_event(&event)?, schema_tool, received)? {
                break;
            }
        }
        let reply = streamed.into_reply()?;
        Ok(http::with_headers(
            reply.into_response(request)?,
            &events.headers,
            &HEADERS,
        ))
    }
}

/// Where this provider names its request id and remaining rate limits.
const HEADERS: http::HeaderNames = http::HeaderNames {
    request_id: "request-id",
    remaining_requests: "anthropic-ratelimit-requests-remaining",
    remaining_tokens: "anthropic-ratelimit-tokens-remaining",
};

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    system: String,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
    },
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    description: &'a str,
    input_schema: &'a Value,
}

#[derive(Serialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
}

const SCHEMA_TOOL_DESCRIPTION: &str =
    "Give your answer by calling this tool with input matching its schema.";

impl<'a> From<&'a ChatRequest> for Body<'a> {
    fn from(req: &'a ChatRequest) -> Self {
        let (system, messages) = conversation(&req.messages);
        let mut tools: Vec<WireTool<'a>> = req
            .tools
            .iter()
            .map(|t| WireTool {
                name: &t.name,
                description: &t.description,
                input_schema: &t.parameters,
            })
            .collect();
        let tool_choice = req.output_schema.as_ref().map(|s| {
            tools.push(WireTool {
                name: &s.name,
                description: SCHEMA_TOOL_DESCRIPTION,
                input_schema: &s.schema,
            });
            ToolChoice {
                kind: "tool",
                name: &s.name,
            }
        });
        Body {
            model: &req.model,
            max_tokens: req.max_tokens,
            system,
            messages,
            tools,
            tool_choice,
            temperature: req.temperature,
            stop_sequences: &req.stop,
            stream: false,
        }
    }
}

/// The system text (all system messages joined) and the other messages as turns, consecutive
/// same-role turns merged.
fn conversation(all: &[Message]) -> (String, Vec<WireMessage<'_>>) {
    let mut system = String::new();
    let mut messages: Vec<WireMessage<'_>> = Vec::with_capacity(all.len());
    for m in all {
        let Some((role, blocks)) = turn(m) else {
            if !system.is_empty() {
                system.push_str("\n\n");
            }
            system.push_str(m.content());
            continue;
        };
        match messages.last_mut() {
            // Anthropic rejects empty content: a turn with nothing to say is left out.
            _ if blocks.is_empty() => {}
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(WireMessage {
                role,
                content: blocks,
            }),
        }
    }
    (system, messages)
}

/// A message's role and content blocks; `None` for a system message.
fn turn(m: &Message) -> Option<(&'static str, Vec<Block<'_>>)> {
    Some(match m {
        Message::System { .. } => return None,
        Message::User { content } => ("user", text_block(content)),
        Message::Assistant {
            content,
            tool_calls,
        } => {
            let mut blocks = text_block(content);
            blocks.extend(tool_calls.iter().map(|c| Block::ToolUse {
                id: &c.id,
                name: &c.name,
                input: &c.arguments,
            }));
            ("assistant", blocks)
        }
        Message::Tool {
            tool_call_id,
            content,
        } => (
            "user",
            vec![Block::ToolResult {
                tool_use_id: tool_call_id,
                content,
            }],
        ),
    })
}

/// Anthropic rejects empty text blocks.
fn text_block(text: &str) -> Vec<Block<'_>> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![Block::Text { text }]
    }
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    id: Option<String>,
    content: Vec<ReplyBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<ReplyUsage>,
}

#[derive(Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ReplyBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// Thinking and other blocks carry nothing we return.
    #[serde(other)]
    Other,
}

#[derive(Clone, Deserialize)]
struct ReplyUsage {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl Reply {
    fn into_response(self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let schema_tool = request.output_schema.as_ref().map(|s| s.name.as_str());
        let mut content = String::new();
        let mut tool_calls = Vec::new();
        let mut structured = false;
        for block in self.content {
            match block {
                ReplyBlock::Text { text } => content.push_str(&text),
                ReplyBlock::ToolUse { name, input, .. } if Some(name.as_str()) == schema_tool => {
                    content = input.to_string();
                    structured = true;
                }
                ReplyBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                    id,
                    name,
                    arguments: input,
                }),
                ReplyBlock::Other => {}
            }
        }
        let usage = match self.usage {
            Some(u) => u.normalized(),
            None => {
                let calls: Vec<(&str, &Value)> = tool_calls
                    .iter()
                    .map(|c| (c.name.as_str(), &c.arguments))
                    .collect();
                estimate::estimate_usage(request, &content, &calls)
            }
        };
        Ok(ChatResponse {
            model: request.model.clone(),
            content,
            tool_calls,
            finish_reason: finish_reason(self.stop_reason.as_deref(), structured, usage)?,
            usage,
            request_id: self.id,
            rate_limit: None,
            cost_micro_usd: None,
            cache_hit: false,
        })
    }
}

fn finish_reason(
    reason: Option<&str>,
    structured: bool,
    usage: Usage,
) -> Result<FinishReason, LlmError> {
    Ok(match reason {
        _ if structured => FinishReason::Stop,
        Some("end_turn" | "stop_sequence") | None => FinishReason::Stop,
        Some("max_tokens") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => {
            return Err(LlmError::ContentFiltered {
                message: "stop_reason is refusal".into(),
                usage: Some(usage),
            })
        }
        Some(other) => FinishReason::Other(other.to_owned()),
    })
}

impl ReplyUsage {
    /// Our usage: `input_tokens` counts the cached prompt too.
    fn normalized(&self) -> Usage {
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let cache_creation = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: self.input_tokens + cache_read + cache_creation,
            output_tokens: self.output_tokens,
            cache_read_tokens: cache_read,
            cache_creation_tokens: cache_creation,
            reasoning_tokens: 0,
            estimated: false,
        }
    }

    /// A `message_delta`'s usage applied: its counts are cumulative and replace ours.
    fn update(&mut self, delta: &DeltaUsage) {
        self.output_tokens = delta.output_tokens.unwrap_or(self.output_tokens);
        self.input_tokens = delta.input_tokens.unwrap_or(self.input_tokens);
        if delta.cache_read_input_tokens.is_some() {
            self.cache_read_input_tokens = delta.cache_read_input_tokens;
        }
        if delta.cache_creation_input_tokens.is_some() {
            self.cache_creation_input_tokens = delta.cache_creation_input_tokens;
        }
    }
}

/// One event of a streamed answer (its `data`, tagged by `type`).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: ReplyBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<DeltaUsage>,
    },
    MessageStop {},
    Error {
        error: Value,
    },
    /// `ping`, `content_block_stop` and events added later.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    usage: Option<ReplyUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    /// Thinking and signature deltas carry nothing we return.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaUsage {
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

/// An `error` event, classified like an error answer with the status its type implies
/// (`overloaded_error` is a transient 529).
fn stream_error(error: Value) -> LlmError {
    let status = match error.get("type").and_then(Value::as_str) {
        Some("overloaded_error") => 529,
        Some("rate_limit_error") => 429,
        Some("api_error") => 500,
        _ => 400,
    };
    let body = serde_json::json!({"type": "error", "error": error}).to_string();
    LlmError::from_status(status, body.as_bytes(), None)
}

/// A streamed answer assembled from its events.
#[derive(Default)]
struct Streamed {
    id: Option<String>,
    /// Content blocks by index, with the JSON text of a tool's input as received.
    blocks: Vec<(ReplyBlock, String)>,
    stop_reason: Option<String>,
    usage: Option<ReplyUsage>,
    done: bool,
}

impl Streamed {
    /// Applies one event; `true` at `message_stop`. An `error` event is classified like an
    /// error answer (`overloaded_error` is transient).
    fn apply(
        &mut self,
        event: StreamEvent,
        schema_tool: Option<&str>,
        received: &Received,
    ) -> Result<bool, LlmError> {
        match event {
            StreamEvent::MessageStart { message } => {
                self.id = message.id;
                self.usage = message.usage;
                self.report_usage(received);
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                if self.blocks.len() <= index {
                    self.blocks
                        .resize_with(index + 1, || (ReplyBlock::Other, String::new()));
                }
                self.blocks[index].0 = content_block;
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                self.apply_delta(index, delta, schema_tool, received)?
            }
            StreamEvent::MessageDelta { delta, usage } => {
                self.stop_reason = delta.stop_reason.or(self.stop_reason.take());
                if let (Some(current), Some(delta)) = (&mut self.usage, usage) {
                    current.update(&delta);
                }
                self.report_usage(received);
            }
            StreamEvent::MessageStop {} => self.done = true,
            StreamEvent::Error { error } => return Err(stream_error(error)),
            StreamEvent::Other => {}
        }
        Ok(self.done)
    }

    /// Tells `received` the usage as reported so far (only when a usage event arrived: the
    /// report then counts every delta before it).
    fn report_usage(&self, received: &Received) {
        if let Some(usage) = &self.usage {
            received.usage(usage.normalized());
        }
    }

    fn apply_delta(
        &mut self,
        index: usize,
        delta: BlockDelta,
        schema_tool: Option<&str>,
        received: &Received,
    ) -> Result<(), LlmError> {
        let Some((block, json)) = self.blocks.get_mut(index) else {
            return Err(http::malformed(format!(
                "content_block_delta for block {index}, which never started"
            )));
        };
        match (block, delta) {
            (ReplyBlock::Text { text }, BlockDelta::TextDelta { text: part }) => {
                received.text(&part);
                text.push_str(&part);
            }
            (ReplyBlock::ToolUse { name, .. }, BlockDelta::InputJsonDelta { partial_json }) => {
                // A structured answer's JSON is the answer's text: it is delivered as such.
                if Some(name.as_str()) == schema_tool {
                    received.text(&partial_json);
                } else {
                    received.tool_text(&partial_json);
                }
                json.push_str(&partial_json);
            }
            _ => {}
        }
        Ok(())
    }

    /// The answer as a non-streamed reply; a stream cut before `message_stop` is an error.
    fn into_reply(self) -> Result<Reply, LlmError> {
        if !self.done {
            return Err(LlmError::Network {
                message: "the stream ended before message_stop".into(),
                request_sent: true,
            });
        }
        let mut content = Vec::with_capacity(self.blocks.len());
        for (block, json) in self.blocks {
            content.push(match block {
                ReplyBlock::ToolUse { id, name, .. } if !json.is_empty() => {
                    let input = serde_json::from_str(&json).map_err(|e| {
                        http::malformed(format!("tool `{name}` input is not JSON ({e}): {json:?}"))
                    })?;
                    ReplyBlock::ToolUse { id, name, input }
                }
                other => other,
            });
        }
        Ok(Reply {
            id: self.id,
            content,
            stop_reason: self.stop_reason,
            usage: self.usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        serde_json::from_value::<Reply>(body)
            .unwrap()
            .into_response(request)
    }

    #[test]
    fn thinking_blocks_are_skipped_and_tool_use_is_returned() {
        let req = ChatRequest::new("claude-sonnet-4-5").user("hi");
        let resp = parse(
            json!({
                "id": "msg_1",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "x"}}
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": null}
            }),
            &req,
        )
        .unwrap();
        assert_eq!(resp.content, "Let me look.");
        assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
        assert_eq!(resp.tool_calls[0].arguments, json!({"q": "x"}));
        assert_eq!(resp.usage.input_tokens, 5);
        assert_eq!(resp.request_id.as_deref(), Some("msg_1"));
    }

    #[test]
    fn refusal_is_content_filtered_with_its_usage() {
        let req = ChatRequest::new("claude-sonnet-4-5").user("hi");
        let err = parse(
            json!({"content": [], "stop_reason": "refusal", "usage": {"input_tokens": 9, "output_tokens": 1}}),
            &req,
        )
        .unwrap_err();
        let LlmError::ContentFiltered { usage: Some(u), .. } = err else {
            panic!("{err:?}");
        };
        assert_eq!((u.input_tokens, u.output_tokens), (9, 1));
    }

    #[test]
    fn consecutive_same_role_turns_are_merged_and_empty_text_dropped() {
        let req = ChatRequest::new("m")
            .system("a")
            .system("b")
            .user("q")
            .message(Message::tool_result("t1", "r1"))
            .message(Message::assistant(""));
        let body = serde_json::to_value(Body::from(&req)).unwrap();
        assert_eq!(body["system"], "a\n\nb");
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "tool_result", "tool_use_id": "t1", "content": "r1"}]}
            ])
        );
    }
}
