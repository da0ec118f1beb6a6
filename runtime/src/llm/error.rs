//! The one error type of the LLM layer: what happened, whether a retry could help, and what
//! the provider may have billed for it.

use std::time::Duration;

use super::stream::{Interrupted, Interruption};
use super::types::Usage;
use crate::fencing::Fenced;
use crate::ledger::{CeilingReached, MicroUsd};
use crate::ledger_store::{ReserveError, StoreError};

/// Everything that can go wrong with a model call. Each message says what to do about it;
/// [`LlmError::is_retryable`] says whether trying again could help.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider answered with a transient failure (408, 409, 5xx, Anthropic 529).
    #[error(
        "provider returned HTTP {status}: {message}; this is transient, retrying later may succeed"
    )]
    Transient {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
        /// How long the provider asked us to wait, if it did.
        retry_after: Option<Duration>,
    },
    /// The connection failed or broke before a response arrived.
    #[error("network error talking to the provider: {message}; check the base URL and connectivity, retrying may succeed")]
    Network {
        /// What failed.
        message: String,
        /// `false` when the connection was never made (nothing can have been billed).
        request_sent: bool,
    },
    /// No complete response within the request timeout.
    #[error("no complete response within {after:?}; raise the request timeout or lower max_tokens, retrying may succeed")]
    Timeout {
        /// The timeout that fired.
        after: Duration,
    },
    /// HTTP 429: too many requests or tokens per minute.
    #[error("rate limited by the provider{}: {message}; slow down or raise the provider rate limit", wait_hint(*.retry_after))]
    RateLimited {
        /// The provider's message.
        message: String,
        /// How long the provider asked us to wait, if it did.
        retry_after: Option<Duration>,
    },
    /// Out of credit, quota or over a spend limit at the provider.
    #[error("provider quota or spend limit exhausted: {message}; add credit or raise the limit in the provider's console, retrying will not help")]
    QuotaExhausted {
        /// The provider's message.
        message: String,
    },
    /// The request is wrong (rejected by us before sending when `status` is `None`).
    #[error("invalid request{}: {message}; fix the request, retrying will not help", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    InvalidRequest {
        /// HTTP status, `None` when we rejected it before sending.
        status: Option<u16>,
        /// What is wrong.
        message: String,
    },
    /// The API key is missing, wrong, or lacks permission.
    #[error("authentication failed (HTTP {status}): {message}; check the API key (OPENAI_API_KEY / ANTHROPIC_API_KEY) and its permissions")]
    Auth {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The prompt does not fit the model's context window.
    #[error("the prompt is longer than the model's context window: {message}; shorten the conversation or use a model with a larger context")]
    ContextTooLong {
        /// The provider's message.
        message: String,
    },
    /// The provider's safety system blocked the request or the answer.
    #[error("blocked by the provider's content filter: {message}; rephrase the request")]
    ContentFiltered {
        /// The provider's message or the model's refusal.
        message: String,
        /// Usage, when the provider answered (and billed) before filtering.
        usage: Option<Usage>,
    },
    /// The provider answered 2xx with a body we cannot use (bad JSON, truncated, missing fields).
    #[error("malformed response from the provider: {message}; the call may have been billed, report this if it persists")]
    MalformedResponse {
        /// What was wrong.
        message: String,
        /// Usage, when it could still be read.
        usage: Option<Usage>,
    },
    /// The model called a tool with arguments that are not valid JSON.
    #[error("the model called tool `{}` (call id `{}`) with arguments that are not valid JSON ({}): {:?}; ask the model to repeat the call with valid JSON arguments", .0.tool, .0.call_id, .0.reason, .0.raw)]
    InvalidToolArguments(Box<InvalidToolCall>),
    /// The provider reported usage costing more than the call reserved (its input was
    /// under-estimated, or it answered past its own limits). It was charged what it reported:
    /// that money is spent. The caller must stop spending (the run halts with reason
    /// `overshoot`): the reservation no longer bounds what its calls cost.
    #[error("model `{model}` reported usage costing {charged_micro_usd} micro-USD, above the {reserved_micro_usd} reserved for the call{}; it was charged, stop and check the provider and the token estimate", impossible.as_ref().map(|p| format!(" (the response is malformed: {p})")).unwrap_or_default())]
    Overshoot {
        /// The model.
        model: String,
        /// What the call reserved (its upper bound).
        reserved_micro_usd: u64,
        /// What it was charged.
        charged_micro_usd: u64,
        /// Why the reported usage is impossible, when it is (beyond the context window or
        /// `max_tokens`).
        impossible: Option<String>,
    },
    /// The run's halt token fired; the HTTP request was aborted.
    #[error("the call was cancelled by the run's halt token")]
    Cancelled,
    /// A streamed answer ended after its first delta: halted, or broken by the provider. It is
    /// never retried (its output was already delivered); what was received was charged.
    #[error("{}", interrupted_message(.0))]
    StreamInterrupted(Box<Interrupted>),
    /// The worst-case cost did not fit under a ceiling; nothing was sent.
    #[error("cost ceiling reached, nothing was sent: {0}; raise the budget, lower max_tokens or use a cheaper model")]
    CeilingReached(#[from] CeilingReached),
    /// The ledger store (PostgreSQL) holding the run's reservations failed; nothing was sent.
    #[error("nothing was sent: {0}")]
    LedgerUnavailable(#[from] StoreError),
    /// The run is driven under a lease this process no longer holds (another process may drive
    /// it now); nothing was reserved or sent. Stop driving the run here.
    #[error("nothing was sent: {0}")]
    Fenced(#[from] Fenced),
    /// The circuit breaker for this model is open after repeated failures; nothing was sent.
    #[error("circuit breaker for model `{model}` is open after repeated failures, nothing was sent; it lets a probe through in {retry_in:?}")]
    CircuitOpen {
        /// The model.
        model: String,
        /// Time until the breaker half-opens.
        retry_in: Duration,
    },
    /// A replayed run's journal has no recorded answer for this request.
    #[error("request not found in the journal: first difference at `{field}` ({detail}); replay a run whose journal is complete, or resume it instead")]
    NotRecorded {
        /// Path of the first differing field, e.g. `messages[2].content`.
        field: String,
        /// Recorded versus actual value.
        detail: String,
    },
    /// The layer is set up wrong (unknown model, missing price or provider, unreadable file).
    #[error("{0}")]
    Config(String),
}

/// Details of [`LlmError::InvalidToolArguments`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidToolCall {
    /// Tool name.
    pub tool: String,
    /// Call id (answer it with a tool result explaining the error to let the model repair).
    pub call_id: String,
    /// The JSON parse error.
    pub reason: String,
    /// The arguments as the model wrote them.
    pub raw: String,
    /// Usage of the call (it was billed).
    pub usage: Usage,
}

fn interrupted_message(i: &Interrupted) -> String {
    let cause = match &i.cause {
        Interruption::Halted => "was halted".to_owned(),
        Interruption::Broken(why) => format!("broke ({why})"),
    };
    format!(
        "the streamed answer {cause} after {} characters; the part received was charged ({} input + {} output tokens, {} micro-USD); it is not retried because its output was already delivered: run the step again for a whole answer",
        i.content.chars().count(),
        i.usage.input_tokens,
        i.usage.output_tokens,
        i.cost_micro_usd
    )
}

fn wait_hint(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!(" (asked to wait {d:?})"))
        .unwrap_or_default()
}

/// What the provider may bill for a failed attempt; decides how the reservation is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Billing {
    /// Nothing was processed: release.
    Nothing,
    /// The request reached the provider and was abandoned: charge the input estimate.
    InputEstimate,
    /// The provider answered 2xx but we cannot read the usage: charge the whole reservation.
    WorstCase,
    /// The provider answered with this usage: charge it.
    Usage(Usage),
}

impl From<ReserveError> for LlmError {
    fn from(err: ReserveError) -> Self {
        match err {
            ReserveError::Ceiling(ceiling) => LlmError::CeilingReached(ceiling),
            ReserveError::Store(store) => LlmError::LedgerUnavailable(store),
            ReserveError::Fenced(fenced) => LlmError::Fenced(fenced),
        }
    }
}

impl LlmError {
    /// A stable snake_case name of the error's class, for the `error.type` span attribute and
    /// metric label (a bounded set: never the message).
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Transient { .. } => "transient",
            LlmError::Network { .. } => "network",
            LlmError::Timeout { .. } => "timeout",
            LlmError::RateLimited { .. } => "rate_limited",
            LlmError::QuotaExhausted { .. } => "quota_exhausted",
            LlmError::InvalidRequest { .. } => "invalid_request",
            LlmError::Auth { .. } => "auth",
            LlmError::ContextTooLong { .. } => "context_too_long",
            LlmError::ContentFiltered { .. } => "content_filtered",
            LlmError::MalformedResponse { .. } => "malformed_response",
            LlmError::InvalidToolArguments(_) => "invalid_tool_arguments",
            LlmError::Overshoot { .. } => "overshoot",
            LlmError::Cancelled => "cancelled",
            LlmError::StreamInterrupted(i) => match i.cause {
                Interruption::Halted => "stream_halted",
                Interruption::Broken(_) => "stream_broken",
            },
            LlmError::CeilingReached(_) => "ceiling_reached",
            LlmError::LedgerUnavailable(_) => "ledger_unavailable",
            LlmError::Fenced(_) => "fenced",
            LlmError::CircuitOpen { .. } => "circuit_open",
            LlmError::NotRecorded { .. } => "not_recorded",
            LlmError::Config(_) => "config",
        }
    }

    /// The class of a retryable failure, for the retries metric: `429`, `4xx` (408, 409),
    /// `5xx`, `network` or `timeout`; `other` for errors that are never retried.
    pub(crate) fn status_class(&self) -> &'static str {
        match self {
            LlmError::RateLimited { .. } => "429",
            LlmError::Transient { status, .. } if *status >= 500 => "5xx",
            LlmError::Transient { .. } => "4xx",
            LlmError::Network { .. } => "network",
            LlmError::Timeout { .. } => "timeout",
            _ => "other",
        }
    }

    /// The same error with every credential in its messages redacted ([`crate::redact`]), so a
    /// provider that echoes a key, a bearer token, Basic auth or a URL's password in an error
    /// body cannot leak it into logs, spans, the journal or an API response.
    pub(crate) fn redacted(mut self) -> Self {
        let message = match &mut self {
            LlmError::Transient { message, .. }
            | LlmError::Network { message, .. }
            | LlmError::RateLimited { message, .. }
            | LlmError::QuotaExhausted { message }
            | LlmError::InvalidRequest { message, .. }
            | LlmError::Auth { message, .. }
            | LlmError::ContextTooLong { message }
            | LlmError::ContentFiltered { message, .. }
            | LlmError::MalformedResponse { message, .. }
            | LlmError::Config(message) => message,
            LlmError::StreamInterrupted(i) => {
                crate::redact::redact_in_place(&mut i.content);
                match &mut i.cause {
                    Interruption::Broken(message) => message,
                    Interruption::Halted => return self,
                }
            }
            LlmError::InvalidToolArguments(call) => &mut call.raw,
            _ => return self,
        };
        crate::redact::redact_in_place(message);
        self
    }

    /// Whether trying the same request again could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LlmError::Transient { .. }
                | LlmError::Network { .. }
                | LlmError::Timeout { .. }
                | LlmError::RateLimited { .. }
        )
    }

    /// How long the provider asked us to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Transient { retry_after, .. } | LlmError::RateLimited { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Whether another model could succeed where this one failed (used by the fallback chain).
    /// `false` for cancellation, ceilings, bad requests, filtered or billed-but-unusable answers.
    pub fn should_fall_back(&self) -> bool {
        matches!(
            self,
            LlmError::Transient { .. }
                | LlmError::Network { .. }
                | LlmError::Timeout { .. }
                | LlmError::RateLimited { .. }
                | LlmError::QuotaExhausted { .. }
                | LlmError::Auth { .. }
                | LlmError::ContextTooLong { .. }
                | LlmError::CircuitOpen { .. }
        )
    }

    /// Whether this failure says the provider is unhealthy (counts toward opening the breaker).
    pub(crate) fn is_provider_failure(&self) -> bool {
        match self {
            LlmError::Transient { .. } | LlmError::Network { .. } | LlmError::Timeout { .. } => {
                true
            }
            LlmError::StreamInterrupted(i) => matches!(i.cause, Interruption::Broken(_)),
            _ => false,
        }
    }

    /// This failure of a stream that had already delivered output, as a
    /// [`LlmError::StreamInterrupted`] charged `usage` (`cost` micro-USD). Failures about a
    /// complete answer (a refusal, bad tool arguments) stay as they are.
    pub(crate) fn after_first_delta(self, content: String, usage: Usage, cost: MicroUsd) -> Self {
        let cause = match self {
            LlmError::Cancelled => Interruption::Halted,
            LlmError::Network { message, .. } | LlmError::MalformedResponse { message, .. } => {
                Interruption::Broken(message)
            }
            LlmError::Timeout { after } => {
                Interruption::Broken(format!("nothing arrived for {after:?}"))
            }
            LlmError::Transient {
                status, message, ..
            } => Interruption::Broken(format!("error event ({status}): {message}")),
            LlmError::RateLimited { message, .. } => {
                Interruption::Broken(format!("rate limited: {message}"))
            }
            other => return other,
        };
        LlmError::StreamInterrupted(Box::new(Interrupted {
            cause,
            content,
            usage,
            cost_micro_usd: cost,
        }))
    }

    /// What the provider may bill for this failure.
    ///
    /// A timeout or broken connection after sending is treated like a cancellation (the input
    /// estimate). A 2xx answer we cannot read was billed an unknown amount: we charge the
    /// reservation in full rather than guess low.
    pub(crate) fn billing(&self) -> Billing {
        match self {
            LlmError::Timeout { .. } | LlmError::Cancelled => Billing::InputEstimate,
            LlmError::Network { request_sent, .. } => {
                if *request_sent {
                    Billing::InputEstimate
                } else {
                    Billing::Nothing
                }
            }
            LlmError::InvalidToolArguments(call) => Billing::Usage(call.usage),
            LlmError::StreamInterrupted(i) => Billing::Usage(i.usage),
            LlmError::ContentFiltered { usage, .. } => {
                usage.map_or(Billing::Nothing, Billing::Usage)
            }
            LlmError::MalformedResponse { usage, .. } => {
                usage.map_or(Billing::WorstCase, Billing::Usage)
            }
            _ => Billing::Nothing,
        }
    }

    /// Classifies a non-2xx answer from its status, error body and retry-after.
    ///
    /// Both OpenAI (`{"error":{"message","type","code"}}`) and Anthropic
    /// (`{"type":"error","error":{"type","message"}}`) bodies are understood; anything else is
    /// quoted (cut to 300 bytes) as the message.
    pub(crate) fn from_status(status: u16, body: &[u8], retry_after: Option<Duration>) -> LlmError {
        let (kind, message) = error_body(body);
        let lower = message.to_ascii_lowercase();
        let says = |words: &[&str]| words.iter().any(|w| kind == *w || lower.contains(w));
        match status {
            429 if says(&[
                "insufficient_quota",
                "exceeded your current quota",
                "spend limit",
                "usage limits",
                "credit balance",
            ]) =>
            {
                LlmError::QuotaExhausted { message }
            }
            429 => LlmError::RateLimited {
                message,
                retry_after,
            },
            402 => LlmError::QuotaExhausted { message },
            401 | 403 => LlmError::Auth { status, message },
            408 | 409 | 500..=599 => LlmError::Transient {
                status,
                message,
                retry_after,
            },
            _ if says(&["credit balance is too low", "insufficient_quota"]) => {
                LlmError::QuotaExhausted { message }
            }
            _ if says(&[
                "context_length_exceeded",
                "maximum context length",
                "prompt is too long",
                "context window",
            ]) =>
            {
                LlmError::ContextTooLong { message }
            }
            _ if says(&["content_filter", "content_policy_violation"]) => {
                LlmError::ContentFiltered {
                    message,
                    usage: None,
                }
            }
            _ => LlmError::InvalidRequest {
                status: Some(status),
                message,
            },
        }
    }
}

/// The error's type or code and its message, from either provider's error body.
fn error_body(body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(default)]
        message: String,
        #[serde(default, rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        code: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope { error }) => {
            let code = match error.code {
                Some(serde_json::Value::String(s)) => Some(s),
                _ => None,
            };
            // OpenAI's `code` is the precise one (`insufficient_quota`), `type` the family.
            (code.or(error.kind).unwrap_or_default(), error.message)
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let mut cut = text.len().min(300);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            (String::new(), text[..cut].trim().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, body: &str) -> LlmError {
        LlmError::from_status(status, body.as_bytes(), None)
    }

    #[test]
    fn classifies_provider_errors() {
        let quota = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert!(matches!(
            classify(429, quota),
            LlmError::QuotaExhausted { .. }
        ));
        let rl = r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        assert!(matches!(classify(429, rl), LlmError::RateLimited { .. }));
        let ctx = r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        assert!(matches!(
            classify(400, ctx),
            LlmError::ContextTooLong { .. }
        ));
        let ctx = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        assert!(matches!(
            classify(400, ctx),
            LlmError::ContextTooLong { .. }
        ));
        let credit = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#;
        assert!(matches!(
            classify(400, credit),
            LlmError::QuotaExhausted { .. }
        ));
        assert!(matches!(
            classify(529, "overloaded"),
            LlmError::Transient { status: 529, .. }
        ));
        assert!(matches!(classify(401, ""), LlmError::Auth { .. }));
        assert!(matches!(
            classify(404, "<html>nope</html>"),
            LlmError::InvalidRequest { .. }
        ));
        assert!(!classify(400, "{}").is_retryable());
        assert!(classify(503, "").is_retryable());
    }

    #[test]
    fn billing_follows_what_reached_the_provider() {
        let refused = LlmError::Network {
            message: "refused".into(),
            request_sent: false,
        };
        assert_eq!(refused.billing(), Billing::Nothing);
        let reset = LlmError::Network {
            message: "reset".into(),
            request_sent: true,
        };
        assert_eq!(reset.billing(), Billing::InputEstimate);
        let bad = LlmError::MalformedResponse {
            message: "x".into(),
            usage: None,
        };
        assert_eq!(bad.billing(), Billing::WorstCase);
        assert_eq!(classify(500, "").billing(), Billing::Nothing);
    }
}
