//! OpenAI-compatible chat completions (`POST {base_url}/chat/completions`): OpenAI itself and,
//! by base URL, vLLM, Ollama (`http://localhost:11434/v1`), llama.cpp's server, LiteLLM proxy.
//!
//! Usage and rate-limit headers are optional: servers that report no usage get an estimate
//! marked `usage.estimated = true`. Streamed answers ask for `stream_options.include_usage`
//! and also accept usage on every chunk (vLLM's `continuous_usage_stats`): the last report is
//! the usage, never the sum.

use std::fmt;

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{InvalidToolCall, LlmError};
use super::estimate;
use super::http::{self, HttpConfig};
use super::shared_json::SharedJson;
use super::stream::Received;
use super::types::{ChatRequest, ChatResponse, FinishReason, Message, ToolCall, Usage};
use super::ChatModel;

/// Which request field carries `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTokensField {
    /// `max_completion_tokens`: OpenAI's current field, required by its reasoning models.
    MaxCompletionTokens,
    /// `max_tokens`: the field older and self-hosted servers understand.
    MaxTokens,
}

/// Settings of an OpenAI-compatible provider.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Base URL including the version, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    /// Which field carries `max_tokens`.
    pub max_tokens_field: MaxTokensField,
    /// Timeouts and limits.
    pub http: HttpConfig,
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_tokens_field", &self.max_tokens_field)
            .field("http", &self.http)
            .finish()
    }
}

impl OpenAiConfig {
    /// OpenAI's API with `api_key`.
    pub fn openai(api_key: impl Into<String>) -> Self {
        OpenAiConfig {
            base_url: "https://api.openai.com/v1".into(),
            api_key: Some(api_key.into()),
            max_tokens_field: MaxTokensField::MaxCompletionTokens,
            http: HttpConfig::default(),
        }
    }

    /// A self-hosted compatible server (vLLM, Ollama, llama.cpp): no key, `max_tokens`.
    pub fn compatible(base_url: impl Into<String>) -> Self {
        OpenAiConfig {
            base_url: base_url.into(),
            api_key: None,
            max_tokens_field: MaxTokensField::MaxTokens,
            http: HttpConfig::default(),
        }
    }
}

/// An OpenAI-compatible chat completions provider.
pub struct OpenAi {
    client: reqwest::Client,
    url: String,
    auth: Option<HeaderValue>,
    config: OpenAiConfig,
}

impl fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAi")
            .field("config", &self.config)
            .finish()
    }
}

impl OpenAi {
    /// A provider with these settings.
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        if let Some(key) = &config.api_key {
            crate::redact::register(key);
        }
        crate::redact::register_url(&config.base_url);
        let auth = match &config.api_key {
            Some(key) => Some(http::secret_header(&format!("Bearer {key}"))?),
            None => None,
        };
        Ok(OpenAi {
            client: http::build_client(&config.http)?,
            url: format!("{}/chat/completions", config.base_url.trim_end_matches('/')),
            auth,
            config,
        })
    }

    /// OpenAI with the key in `OPENAI_API_KEY` and, if set, the base URL in `OPENAI_BASE_URL`
    /// (as OpenAI's own SDKs read them).
    pub fn from_env() -> Result<Self, LlmError> {
        let key = std::env::var("OPENAI_API_KEY").map_err(|_| {
            LlmError::Config("OPENAI_API_KEY is not set; export your OpenAI API key".into())
        })?;
        let mut config = OpenAiConfig::openai(key);
        if let Ok(base) = std::env::var("OPENAI_BASE_URL") {
            config.base_url = base;
        }
        Self::new(config)
    }

    fn body<'a>(&self, req: &'a ChatRequest, stream: bool) -> Body<'a> {
        let (max_tokens, max_completion_tokens) = match self.config.max_tokens_field {
            MaxTokensField::MaxTokens => (Some(req.max_tokens), None),
            MaxTokensField::MaxCompletionTokens => (None, Some(req.max_tokens)),
        };
        Body {
            model: &req.model,
            messages: req.messages.iter().map(WireMessage::from).collect(),
            tools: req
                .tools
                .iter()
                .map(|t| WireTool {
                    kind: "function",
                    function: WireFunction {
                        name: &t.name,
                        description: &t.description,
                        parameters: &t.parameters,
                    },
                })
                .collect(),
            response_format: req.output_schema.as_ref().map(|s| ResponseFormat {
                kind: "json_schema",
                json_schema: JsonSchema {
                    name: &s.name,
                    schema: &s.schema,
                    strict: s.strict,
                },
            }),
            max_tokens,
            max_completion_tokens,
            temperature: req.temperature,
            stop: &req.stop,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        }
    }

    /// The HTTP request for `request`, streamed or not.
    fn post(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, LlmError> {
        let body = serde_json::to_vec(&self.body(request, stream))
            .map_err(|e| LlmError::Config(format!("cannot encode the request: {e}")))?;
        let mut http_request = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(auth) = &self.auth {
            http_request = http_request.header(AUTHORIZATION, auth.clone());
        }
        Ok(http_request)
    }
}

impl ChatModel for OpenAi {
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

impl OpenAi {
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
        let mut streamed = Streamed::default();
        while let Some(event) = events.next().await? {
            if event.data.trim() == "[DONE]" {
                streamed.done = true;
                break;
            }
            streamed.apply(http::parse_event(&event)?, received)?;
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
    request_id: "x-request-id",
    remaining_requests: "x-ratelimit-remaining-requests",
    remaining_tokens: "x-ratelimit-remaining-tokens",
};

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

impl<'a> From<&'a Message> for WireMessage<'a> {
    fn from(m: &'a Message) -> Self {
        let plain = |role, content: &'a str| WireMessage {
            role,
            content: Some(content),
            tool_calls: Vec::new(),
            tool_call_id: None,
        };
        match m {
            Message::System { content } => plain("system", content),
            Message::User { content } => plain("user", content),
            Message::Assistant {
                content,
                tool_calls,
            } => WireMessage {
                role: "assistant",
                content: (!content.is_empty() || tool_calls.is_empty()).then_some(content.as_str()),
                tool_calls: tool_calls
                    .iter()
                    .map(|c| WireCall {
                        id: &c.id,
                        kind: "function",
                        function: WireCallFunction {
                            name: &c.name,
                            arguments: c.arguments.to_string(),
                        },
                    })
                    .collect(),
                tool_call_id: None,
            },
            Message::Tool {
                tool_call_id,
                content,
            } => WireMessage {
                tool_call_id: Some(tool_call_id),
                ..plain("tool", content)
            },
        }
    }
}

#[derive(Serialize)]
struct WireCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireCallFunction<'a>,
}

#[derive(Serialize)]
struct WireCallFunction<'a> {
    name: &'a str,
    arguments: String,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Serialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    json_schema: JsonSchema<'a>,
}

#[derive(Serialize)]
struct JsonSchema<'a> {
    name: &'a str,
    schema: &'a SharedJson,
    strict: bool,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    id: Option<String>,
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ReplyUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ReplyMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ReplyMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ReplyCall>>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct ReplyCall {
    id: String,
    function: ReplyFunction,
}

#[derive(Deserialize)]
struct ReplyFunction {
    name: String,
    /// A JSON string per the spec; some servers send an object.
    arguments: Value,
}

#[derive(Clone, Deserialize)]
struct ReplyUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Clone, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Clone, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl Reply {
    fn into_response(self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let Some(choice) = self.choices.into_iter().next() else {
            return Err(LlmError::MalformedResponse {
                message: "response has no choices".into(),
                usage: self.usage.map(ReplyUsage::into_usage),
            });
        };
        let content = choice.message.content.unwrap_or_default();
        let raw_calls = choice.message.tool_calls.unwrap_or_default();
        let usage = match self.usage {
            Some(u) => u.into_usage(),
            None => {
                let calls: Vec<(&str, &Value)> = raw_calls
                    .iter()
                    .map(|c| (c.function.name.as_str(), &c.function.arguments))
                    .collect();
                estimate::estimate_usage(request, &content, &calls)
            }
        };
        if let Some(refusal) = choice.message.refusal.filter(|r| !r.is_empty()) {
            return Err(LlmError::ContentFiltered {
                message: format!("the model refused: {refusal}"),
                usage: Some(usage),
            });
        }
        Ok(ChatResponse {
            model: request.model.clone(),
            content,
            finish_reason: finish_reason(choice.finish_reason.as_deref(), usage)?,
            tool_calls: tool_calls(raw_calls, usage)?,
            usage,
            request_id: self.id,
            rate_limit: None,
            cost_micro_usd: None,
            cache_hit: false,
        })
    }
}

fn finish_reason(reason: Option<&str>, usage: Usage) -> Result<FinishReason, LlmError> {
    Ok(match reason {
        Some("stop") | None => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some("content_filter") => {
            return Err(LlmError::ContentFiltered {
                message: "finish_reason is content_filter".into(),
                usage: Some(usage),
            })
        }
        Some(other) => FinishReason::Other(other.to_owned()),
    })
}

/// The calls with their arguments parsed (a JSON string per the spec; some servers send an
/// object); arguments that are not JSON are a billed error naming the call.
fn tool_calls(raw_calls: Vec<ReplyCall>, usage: Usage) -> Result<Vec<ToolCall>, LlmError> {
    raw_calls
        .into_iter()
        .map(|call| {
            let arguments = match call.function.arguments {
                Value::String(raw) => serde_json::from_str(&raw).map_err(|e| {
                    LlmError::InvalidToolArguments(Box::new(InvalidToolCall {
                        tool: call.function.name.clone(),
                        call_id: call.id.clone(),
                        reason: e.to_string(),
                        raw,
                        usage,
                    }))
                })?,
                other => other,
            };
            Ok(ToolCall {
                id: call.id,
                name: call.function.name,
                arguments,
            })
        })
        .collect()
}

/// One chunk of a streamed answer.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<ReplyUsage>,
    /// Some servers report a failure mid-stream as a chunk `{"error": {...}}`.
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ChunkCall>>,
}

#[derive(Deserialize)]
struct ChunkCall {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<ChunkFunction>,
}

#[derive(Deserialize)]
struct ChunkFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// A streamed answer assembled from its chunks.
#[derive(Default)]
struct Streamed {
    id: Option<String>,
    content: String,
    refusal: String,
    /// Tool calls by index: id, name, arguments as received.
    calls: Vec<(String, String, String)>,
    finish_reason: Option<String>,
    usage: Option<ReplyUsage>,
    done: bool,
}

impl Streamed {
    fn apply(&mut self, chunk: Chunk, received: &Received) -> Result<(), LlmError> {
        if let Some(error) = chunk.error {
            let body = serde_json::json!({ "error": error }).to_string();
            return Err(LlmError::from_status(500, body.as_bytes(), None));
        }
        self.id = self.id.take().or(chunk.id);
        if let Some(usage) = chunk.usage {
            received.usage(usage.clone().into_usage());
            self.usage = Some(usage);
        }
        for choice in chunk.choices {
            self.finish_reason = choice.finish_reason.or(self.finish_reason.take());
            let Some(delta) = choice.delta else { continue };
            if let Some(text) = delta.content {
                received.text(&text);
                self.content.push_str(&text);
            }
            self.refusal
                .push_str(delta.refusal.as_deref().unwrap_or(""));
            for call in delta.tool_calls.unwrap_or_default() {
                self.apply_call(call, received);
            }
        }
        Ok(())
    }

    fn apply_call(&mut self, call: ChunkCall, received: &Received) {
        if self.calls.len() <= call.index {
            self.calls.resize(call.index + 1, Default::default());
        }
        let (id, name, arguments) = &mut self.calls[call.index];
        if let Some(new_id) = call.id {
            *id = new_id;
        }
        let function = call.function.unwrap_or(ChunkFunction {
            name: None,
            arguments: None,
        });
        for (part, into) in [(function.name, name), (function.arguments, arguments)] {
            if let Some(part) = part {
                received.tool_text(&part);
                into.push_str(&part);
            }
        }
    }

    /// The answer as a non-streamed reply; a stream cut before its end is an error.
    fn into_reply(self) -> Result<Reply, LlmError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(LlmError::Network {
                message: "the stream ended before its last chunk (no finish_reason, no [DONE])"
                    .into(),
                request_sent: true,
            });
        }
        let tool_calls = self
            .calls
            .into_iter()
            .map(|(id, name, arguments)| ReplyCall {
                id,
                function: ReplyFunction {
                    name,
                    arguments: Value::String(arguments),
                },
            })
            .collect();
        Ok(Reply {
            id: self.id,
            choices: vec![Choice {
                message: ReplyMessage {
                    content: Some(self.content),
                    tool_calls: Some(tool_calls),
                    refusal: Some(self.refusal),
                },
                finish_reason: self.finish_reason,
            }],
            usage: self.usage,
        })
    }
}

impl ReplyUsage {
    fn into_usage(self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cache_read_tokens: self
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_creation_tokens: 0,
            reasoning_tokens: self
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            estimated: false,
        }
    }
}
