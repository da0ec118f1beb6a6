//! `Scripted`: an offline provider that answers from a script, for examples and tests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::LlmError;
use super::estimate;
use super::types::{ChatRequest, ChatResponse, FinishReason, Message, ToolCall, Usage};
use super::ChatModel;

/// One scripted answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedReply {
    /// Only answers requests whose last user message contains this text; `None` answers any.
    #[serde(default)]
    pub when: Option<String>,
    /// The answer's text.
    #[serde(default)]
    pub content: String,
    /// Tool calls to make (ids are assigned `call_1`, `call_2`, ... in answer order).
    #[serde(default)]
    pub tool_calls: Vec<ScriptedCall>,
    /// Usage to report; when absent it is estimated from the request and the answer, and
    /// marked `estimated`.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// A scripted tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCall {
    /// Tool name.
    pub name: String,
    /// Arguments.
    pub arguments: Value,
}

impl ScriptedReply {
    /// Answers with `content`.
    pub fn text(content: impl Into<String>) -> Self {
        ScriptedReply {
            when: None,
            content: content.into(),
            tool_calls: Vec::new(),
            usage: None,
        }
    }

    /// Answers by calling tool `name` with `arguments`.
    pub fn tool_call(name: impl Into<String>, arguments: Value) -> Self {
        ScriptedReply {
            tool_calls: vec![ScriptedCall {
                name: name.into(),
                arguments,
            }],
            ..Self::text("")
        }
    }

    /// Only answers requests whose last user message contains `text`.
    pub fn when(mut self, text: impl Into<String>) -> Self {
        self.when = Some(text.into());
        self
    }

    /// Reports this usage.
    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }
}

/// Answers each request with the first unused scripted reply that matches it. Each reply is
/// used once; a request no reply matches is a [`LlmError::Config`] error.
#[derive(Debug)]
pub struct Scripted {
    replies: Mutex<VecDeque<ScriptedReply>>,
    next_call_id: AtomicU64,
}

impl Scripted {
    /// A script of these replies, in order.
    pub fn new(replies: impl IntoIterator<Item = ScriptedReply>) -> Self {
        Scripted {
            replies: Mutex::new(replies.into_iter().collect()),
            next_call_id: AtomicU64::new(1),
        }
    }

    /// A script from JSON: an array of replies.
    pub fn from_json(text: &str) -> Result<Self, LlmError> {
        let replies: Vec<ScriptedReply> = serde_json::from_str(text)
            .map_err(|e| LlmError::Config(format!("script is not a JSON array of replies: {e}")))?;
        Ok(Self::new(replies))
    }

    /// Replies not used yet.
    pub fn remaining(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<ScriptedReply>> {
        self.replies.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn answer(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let last_user = request
            .messages
            .iter()
            .rev()
            .find_map(|m| match m {
                Message::User { content } => Some(content.as_str()),
                _ => None,
            })
            .unwrap_or("");
        let reply = {
            let mut replies = self.lock();
            let found = replies
                .iter()
                .position(|r| r.when.as_deref().is_none_or(|w| last_user.contains(w)));
            match found.and_then(|i| replies.remove(i)) {
                Some(reply) => reply,
                None => {
                    return Err(LlmError::Config(format!(
                        "Scripted: no unused reply matches the request (last user message {last_user:?}, {} replies left); add one to the script",
                        replies.len()
                    )))
                }
            }
        };
        let tool_calls: Vec<ToolCall> = reply
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: format!("call_{}", self.next_call_id.fetch_add(1, Ordering::Relaxed)),
                name: c.name,
                arguments: c.arguments,
            })
            .collect();
        let usage = reply.usage.unwrap_or_else(|| {
            let calls: Vec<(&str, &Value)> = tool_calls
                .iter()
                .map(|c| (c.name.as_str(), &c.arguments))
                .collect();
            estimate::estimate_usage(request, &reply.content, &calls)
        });
        Ok(ChatResponse {
            model: request.model.clone(),
            content: reply.content,
            finish_reason: if tool_calls.is_empty() {
                FinishReason::Stop
            } else {
                FinishReason::ToolCalls
            },
            tool_calls,
            usage,
            request_id: None,
            rate_limit: None,
            cost_micro_usd: None,
            cache_hit: false,
        })
    }
}

impl ChatModel for Scripted {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move { self.answer(request) })
    }
}
