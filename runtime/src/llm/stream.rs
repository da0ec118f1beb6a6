//! What a streamed call has delivered so far, and where its text goes as it arrives.
//!
//! A provider that streams pushes every piece of the answer into a [`Received`]: text deltas
//! (forwarded at once to the call's [`DeltaSink`]), tool-call text, and the usage the provider
//! reports along the way. The [`Client`](super::Client) reads it when the stream ends in any
//! way but success: whether a delta was delivered (after one, a call is never retried) and
//! what the partial answer costs ([`Received::partial_usage`]).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::estimate::{count_output, estimate_input};
use super::types::{ChatRequest, Usage};
use crate::ledger::MicroUsd;

/// Where a streamed call's text goes as it arrives: called once per delta, in order, on the
/// task that reads the stream (keep it short: send to a channel).
#[derive(Clone)]
pub struct DeltaSink(Arc<dyn Fn(&str) + Send + Sync>);

impl DeltaSink {
    /// A sink calling `deliver` with each piece of text.
    pub fn new(deliver: impl Fn(&str) + Send + Sync + 'static) -> Self {
        DeltaSink(Arc::new(deliver))
    }
}

impl fmt::Debug for DeltaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeltaSink")
    }
}

/// What a stream has delivered so far. Cheap to clone (clones share it).
#[derive(Clone, Default)]
pub struct Received {
    shared: Arc<Mutex<Progress>>,
    sink: Option<DeltaSink>,
}

#[derive(Default)]
struct Progress {
    text: String,
    tool_text: String,
    deltas: u64,
    usage: Option<Usage>,
    /// Whether `usage` was reported after the last delta (so it counts every token received).
    usage_is_current: bool,
}

impl Received {
    /// An empty record forwarding text deltas to `sink`, if any.
    pub fn new(sink: Option<DeltaSink>) -> Self {
        Received {
            shared: Arc::default(),
            sink,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A piece of the answer's text: recorded and delivered to the sink. Empty text is ignored.
    pub fn text(&self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        {
            let mut progress = self.lock();
            progress.text.push_str(delta);
            progress.deltas += 1;
            progress.usage_is_current = false;
        }
        if let Some(sink) = &self.sink {
            (sink.0)(delta);
        }
    }

    /// A piece of a tool call (its name or arguments): recorded, counted as output, not
    /// delivered.
    pub fn tool_text(&self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        let mut progress = self.lock();
        progress.tool_text.push_str(delta);
        progress.deltas += 1;
        progress.usage_is_current = false;
    }

    /// The usage the provider reported so far, replacing any earlier report (providers send
    /// cumulative counts: the last one is the truth, never the sum).
    pub fn usage(&self, usage: Usage) {
        let mut progress = self.lock();
        progress.usage = Some(usage);
        progress.usage_is_current = true;
    }

    /// The usage reported so far, if any.
    pub fn reported_usage(&self) -> Option<Usage> {
        self.lock().usage
    }

    /// Whether any delta (text or tool call) arrived.
    pub fn started(&self) -> bool {
        self.lock().deltas > 0
    }

    /// The text received so far.
    pub fn text_so_far(&self) -> String {
        self.lock().text.clone()
    }

    /// What the answer received so far costs in tokens: the provider's own count when it is
    /// current; otherwise its input count (or our estimate of the input) plus the output
    /// tokens received, counted with the model's tokenizer (then marked `estimated`).
    pub fn partial_usage(&self, request: &ChatRequest) -> Usage {
        let progress = self.lock();
        if let (Some(usage), true) = (progress.usage, progress.usage_is_current) {
            return usage;
        }
        let counted = count_output(&request.model, &progress.text)
            + count_output(&request.model, &progress.tool_text);
        let mut usage = progress.usage.unwrap_or(Usage {
            input_tokens: estimate_input(request).tokens,
            ..Usage::default()
        });
        usage.output_tokens = usage.output_tokens.max(counted);
        usage.estimated = true;
        usage
    }
}

/// How a stream that had delivered output ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interruption {
    /// The run's halt token fired: the connection was closed.
    Halted,
    /// The provider's side broke it: the connection dropped, it stalled past the idle timeout,
    /// or it sent a chunk that is not what its API defines.
    Broken(String),
}

/// A streamed answer cut short after its first delta, and what it was charged.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    /// How it ended.
    pub cause: Interruption,
    /// The text delivered before it ended.
    pub content: String,
    /// The tokens charged: input plus the output received (see [`Received::partial_usage`]).
    pub usage: Usage,
    /// The money charged for them.
    pub cost_micro_usd: MicroUsd,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        }
    }

    #[test]
    fn a_report_after_the_last_delta_is_the_usage() {
        let request = ChatRequest::new("gpt-4o-mini").user("hi");
        let received = Received::new(None);
        received.text("Hello");
        received.usage(usage(7, 1));
        received.text(" world");
        received.usage(usage(7, 2));
        assert_eq!(received.partial_usage(&request), usage(7, 2));
    }

    #[test]
    fn deltas_after_the_last_report_are_counted_on_top_of_its_input() {
        let request = ChatRequest::new("gpt-4o-mini").user("hi");
        let received = Received::new(None);
        received.usage(usage(7, 1));
        received.text("Hello");
        received.text(" world");
        received.tool_text("{\"q\": 1}");
        let partial = received.partial_usage(&request);
        assert_eq!(partial.input_tokens, 7, "the provider's input count");
        let counted =
            count_output("gpt-4o-mini", "Hello world") + count_output("gpt-4o-mini", "{\"q\": 1}");
        assert_eq!(partial.output_tokens, counted);
        assert!(partial.estimated);
    }

    #[test]
    fn text_reaches_the_sink_in_order_and_empty_text_is_not_a_delta() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        let received = Received::new(Some(DeltaSink::new(move |d: &str| {
            keep.lock().unwrap().push(d.to_owned())
        })));
        received.text("");
        assert!(!received.started());
        received.text("a");
        received.tool_text("b");
        received.text("c");
        assert_eq!(*seen.lock().unwrap(), ["a", "c"]);
        assert_eq!(received.text_so_far(), "ac");
        assert!(received.started());
    }
}
