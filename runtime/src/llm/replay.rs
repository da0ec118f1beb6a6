//! Record and replay: `Recorder` wraps a provider and keeps every request/response pair;
//! `Replay` serves them back with no network. A recording is a JSON file a user can commit:
//!
//! ```json
//! { "version": 1, "entries": [ { "request": { "model": "...", ... }, "response": { ... } } ] }
//! ```
//!
//! `Replay` answers a request with the first unused entry whose request is equal to it (a
//! request repeated more often than recorded gets its last recorded answer again). A request
//! that matches nothing is [`LlmError::NotRecorded`], naming the first field where it differs
//! from the next unused entry, e.g. `messages[2].content`. Recorded usage is replayed as is, so
//! a [`Client`](super::Client) charges a replayed run what the recorded run cost.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::LlmError;
use super::stream::Received;
use super::types::{ChatRequest, ChatResponse};
use super::ChatModel;

/// The recording format version this code reads and writes.
pub const RECORDING_VERSION: u32 = 1;

/// A list of request/response pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    /// Always [`RECORDING_VERSION`].
    pub version: u32,
    /// The pairs, in the order they happened.
    pub entries: Vec<Exchange>,
}

impl Default for Recording {
    fn default() -> Self {
        Recording {
            version: RECORDING_VERSION,
            entries: Vec::new(),
        }
    }
}

/// One request and the response it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// What was asked.
    pub request: ChatRequest,
    /// What came back.
    pub response: ChatResponse,
}

impl Recording {
    /// Parses a recording, checking its version.
    pub fn from_json(text: &str) -> Result<Self, LlmError> {
        let r: Recording = serde_json::from_str(text)
            .map_err(|e| LlmError::Config(format!("not a valid recording: {e}")))?;
        if r.version != RECORDING_VERSION {
            return Err(LlmError::Config(format!(
                "recording version {} is not supported (expected {RECORDING_VERSION}); re-record it",
                r.version
            )));
        }
        Ok(r)
    }

    /// Reads a recording file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LlmError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            LlmError::Config(format!("cannot read recording {}: {e}", path.display()))
        })?;
        Self::from_json(&text).map_err(|e| LlmError::Config(format!("{}: {e}", path.display())))
    }

    /// Writes the recording as pretty JSON.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), LlmError> {
        let path = path.as_ref();
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| LlmError::Config(format!("cannot encode the recording: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|e| {
            LlmError::Config(format!("cannot write recording {}: {e}", path.display()))
        })
    }
}

/// Wraps a provider and records each successful exchange. Clones share the recording.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<dyn ChatModel>,
    recording: Arc<Mutex<Recording>>,
}

impl Recorder {
    /// Records what `inner` answers.
    pub fn new(inner: impl ChatModel + 'static) -> Self {
        Recorder {
            inner: Arc::new(inner),
            recording: Arc::default(),
        }
    }

    /// What has been recorded so far.
    pub fn recording(&self) -> Recording {
        self.recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ChatModel for Recorder {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let response = self.inner.chat(request).await?;
            Ok(self.keep(request, response))
        })
    }

    fn chat_stream<'a>(
        &'a self,
        request: &'a ChatRequest,
        received: &'a Received,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let response = self.inner.chat_stream(request, received).await?;
            Ok(self.keep(request, response))
        })
    }
}

impl Recorder {
    /// Records an exchange, and returns its answer.
    fn keep(&self, request: &ChatRequest, response: ChatResponse) -> ChatResponse {
        self.recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .push(Exchange {
                request: request.clone(),
                response: response.clone(),
            });
        response
    }
}

/// Serves a recording. See the module docs for matching rules.
#[derive(Debug)]
pub struct Replay {
    entries: Vec<Exchange>,
    used: Mutex<Vec<bool>>,
}

impl Replay {
    /// Serves `recording`.
    pub fn new(recording: Recording) -> Self {
        let used = Mutex::new(vec![false; recording.entries.len()]);
        Replay {
            entries: recording.entries,
            used,
        }
    }

    /// Serves the recording in `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LlmError> {
        Ok(Self::new(Recording::load(path)?))
    }

    fn answer(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let matching = |e: &Exchange| e.request == *request;
        let unused = (0..self.entries.len()).find(|&i| !used[i] && matching(&self.entries[i]));
        let found = unused.or_else(|| self.entries.iter().rposition(matching));
        if let Some(i) = found {
            used[i] = true;
            let mut response = self.entries[i].response.clone();
            response.cost_micro_usd = None;
            response.cache_hit = false;
            return Ok(response);
        }
        let Some(next) = (0..self.entries.len())
            .find(|&i| !used[i])
            .or(self.entries.len().checked_sub(1))
        else {
            return Err(LlmError::NotRecorded {
                field: "(recording)".into(),
                detail: "the recording is empty".into(),
            });
        };
        let (field, detail) = first_difference(&self.entries[next].request, request);
        Err(LlmError::NotRecorded { field, detail })
    }
}

impl ChatModel for Replay {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move { self.answer(request) })
    }
}

/// Top-level fields in declaration order (JSON objects may be sorted by key).
const REQUEST_FIELDS: [&str; 7] = [
    "model",
    "messages",
    "tools",
    "output_schema",
    "max_tokens",
    "temperature",
    "stop",
];

/// The path of the first field where `actual` differs from `recorded`, and both values.
fn first_difference(recorded: &ChatRequest, actual: &ChatRequest) -> (String, String) {
    let (Ok(Value::Object(r)), Ok(Value::Object(a))) =
        (serde_json::to_value(recorded), serde_json::to_value(actual))
    else {
        return ("(request)".into(), "the request cannot be encoded".into());
    };
    for field in REQUEST_FIELDS {
        let mut path = field.to_string();
        if let Some(detail) = diff(&mut path, r.get(field), a.get(field)) {
            return (path, detail);
        }
    }
    ("(request)".into(), "no field differs".into())
}

fn diff(path: &mut String, recorded: Option<&Value>, actual: Option<&Value>) -> Option<String> {
    match (recorded, actual) {
        (Some(Value::Object(r)), Some(Value::Object(a))) => {
            let keys = r.keys().chain(a.keys().filter(|k| !r.contains_key(*k)));
            for key in keys {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                if let Some(d) = diff(path, r.get(key), a.get(key)) {
                    return Some(d);
                }
                path.truncate(len);
            }
            None
        }
        (Some(Value::Array(r)), Some(Value::Array(a))) => {
            for i in 0..r.len().max(a.len()) {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if let Some(d) = diff(path, r.get(i), a.get(i)) {
                    return Some(d);
                }
                path.truncate(len);
            }
            None
        }
        (r, a) if r == a => None,
        (r, a) => Some(format!("recorded {}, got {}", show(r), show(a))),
    }
}

fn show(v: Option<&Value>) -> String {
    let Some(v) = v else {
        return "nothing".into();
    };
    let text = v.to_string();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::types::Message;

    #[test]
    fn names_the_first_differing_field() {
        let recorded = ChatRequest::new("m")
            .system("s")
            .user("a")
            .message(Message::assistant("b"))
            .user("c");
        let mut actual = recorded.clone();
        actual.messages[2] = Message::assistant("B");
        let (field, detail) = first_difference(&recorded, &actual);
        assert_eq!(field, "messages[2].content");
        assert_eq!(detail, r#"recorded "b", got "B""#);
        let shorter = recorded.clone().max_tokens(5);
        let (field, _) = first_difference(
            &recorded,
            &ChatRequest {
                messages: vec![],
                ..shorter
            },
        );
        assert_eq!(field, "messages[0]");
        let (field, detail) = first_difference(&recorded, &recorded.clone().temperature(0.0));
        assert_eq!(
            (field.as_str(), detail.as_str()),
            ("temperature", "recorded nothing, got 0.0")
        );
    }
}
