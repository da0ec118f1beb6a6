//! The LLM layer: chat models over plain reqwest, with cost control and reliability.
//!
//! - [`ChatModel`] is what a provider implements: [`OpenAi`] (OpenAI and compatible servers:
//!   vLLM, Ollama, llama.cpp), [`Anthropic`], and the offline [`Scripted`]. (A run is replayed
//!   from its journal, which keeps every model request and answer; see `impresario-agents`.)
//! - [`Client`] is what agents call: it reserves the worst-case cost on the run's ledger path
//!   before sending anything, settles the real usage, races every call against the run's halt
//!   token, retries transient failures, trips a circuit breaker per model, falls back along a
//!   chain of models, and can cache deterministic answers (scoped by tenant).
//!
//! Money is integer micro-USD everywhere; see [`price`] for how prices are read and rounded.
//!
//! Streaming: a call whose [`CallOptions`] carry a [`DeltaSink`] streams (both HTTP providers
//! speak their SSE formats; others deliver their whole answer as one delta). Its text reaches
//! the sink as it arrives; usage is the provider's (the last report, never a sum). A stream is
//! retried only before its first delta; cut short after it (halted, dropped, stalled, a bad
//! chunk) it is an [`LlmError::StreamInterrupted`] charged the input plus the output received
//! (counted with the tokenizer when the provider had not reported it).
//!
//! Not implemented: images and other non-text content, Anthropic prompt-caching markers (`cache_control`), the
//! HTTP-date form of `retry-after`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use impresario_runtime::ledger::{AccountId, Ledger, Limits};
//! use impresario_runtime::llm::{CallOptions, ChatRequest, Client, OpenAi};
//! use tokio_util::sync::CancellationToken;
//!
//! let client = Client::builder().provider("openai", OpenAi::from_env()?).build()?;
//! let ledger = Ledger::new();
//! let run = AccountId::Run("r1".into());
//! ledger.open(run.clone(), None, Limits { micro_usd: Some(50_000), ..Limits::default() })?;
//! let options = CallOptions::new(ledger.path(&run)?, CancellationToken::new());
//! let answer = client
//!     .chat(ChatRequest::new("gpt-4o-mini").user("Say hi").max_tokens(20), &options)
//!     .await?;
//! println!("{} ({} micro-USD)", answer.content, answer.cost_micro_usd.unwrap_or(0));
//! # Ok(()) }
//! ```

use futures_util::future::BoxFuture;

mod anthropic;
mod breaker;
mod cache;
mod client;
mod error;
pub mod estimate;
mod http;
mod openai;
pub mod price;
mod retry;
mod router;
mod scripted;
mod shared_json;
mod stream;
mod trace;
mod types;

pub use anthropic::{Anthropic, AnthropicConfig, ANTHROPIC_VERSION};
pub use breaker::{BreakerConfig, BreakerState};
pub use cache::{CacheKey, ResponseCache};
pub use client::{CallOptions, Client, ClientBuilder};
pub use error::{InvalidToolCall, LlmError};
pub use http::HttpConfig;
pub use openai::{MaxTokensField, OpenAi, OpenAiConfig};
pub use price::{ModelPrice, PriceError, PriceTable, Rates};
pub use retry::RetryPolicy;
pub use router::Tier;
pub use scripted::{Scripted, ScriptedCall, ScriptedReply};
pub use shared_json::{JsonBlob, JsonDigest, JsonType, SharedJson, SharedText};
pub use stream::{DeltaSink, Interrupted, Interruption, Received};
pub use types::{
    ChatRequest, ChatResponse, FinishReason, Message, OutputSchema, RateLimitInfo, ToolCall,
    ToolDef, Usage, DEFAULT_MAX_TOKENS,
};

/// A chat model: one request in, one complete answer out, optionally streamed.
///
/// Implementations do one attempt; timeouts of that attempt are theirs, everything else
/// (budget, retries, breaker, fallback, cancellation) is [`Client`]'s. The future must be
/// cancel-safe in the sense that dropping it aborts the request: the client drops it when the
/// run's halt token fires.
pub trait ChatModel: Send + Sync {
    /// Sends `request` (to `request.model`) and returns the answer.
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>>;

    /// Sends `request` asking for a streamed answer: pushes each piece into `received` as it
    /// arrives (text, tool-call text, usage reports) and returns the assembled answer. The
    /// default calls [`chat`](ChatModel::chat) and delivers the whole text as one delta.
    fn chat_stream<'a>(
        &'a self,
        request: &'a ChatRequest,
        received: &'a Received,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let response = self.chat(request).await?;
            received.text(&response.content);
            Ok(response)
        })
    }
}

/// A shared provider is a provider: one `Arc` can serve several clients (and a test can keep a
/// handle to inspect it).
impl<M: ChatModel + ?Sized> ChatModel for std::sync::Arc<M> {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        (**self).chat(request)
    }

    fn chat_stream<'a>(
        &'a self,
        request: &'a ChatRequest,
        received: &'a Received,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        (**self).chat_stream(request, received)
    }
}
