//! A run's journal as its driver writes it (docs/ARCHITECTURE.md, contract 4): what the run did
//! is durable before anything outside the run depends on it. A resumed or replayed run is
//! driven by the same code from the start: its [`RunLog`] walks the events already journaled,
//! checks that the run does the same again, and serves what they recorded (model answers, tool
//! results, decisions) instead of repeating them; past the journal's end a resumed run goes on
//! live, a replay stops.
//!
//! **Commit points.** Past the journal's end, [`RunLog::record`] only buffers: the events
//! between two external effects go to the journal in one transaction
//! ([`Journal::append_batch`]) at the next commit point, [`RunLog::commit`], which the driver
//! calls before each external effect: a model request is sent ([`ModelGateway::chat`]); a tool
//! that is not idempotent runs (and once it returned: a known outcome must not become unknown);
//! an approval is awaited; and the run's end is journaled with the
//! events before it (`ending::journal_end`) before it is reported. A crash between two commit
//! points loses only events no external effect depended on, and the resumed run does them
//! again. An idempotent tool is not a commit point: a resumed run calls it again whether or
//! not its intent was journaled.

use std::collections::VecDeque;
use std::sync::Arc;

use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope, HaltToken};
use impresario_runtime::journal::{Journal, JournalError, RunEvent as Event, Seq};
use impresario_runtime::ledger::{AccountPath, Charge};
use impresario_runtime::ledger_store::PendingHolds;
use impresario_runtime::llm::{
    CallOptions, ChatRequest, ChatResponse, Client, DeltaSink, Interruption, LlmError,
};
use impresario_runtime::redact::{redact_serialized, StreamRedactor};
use impresario_runtime::RunId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::run::RunUpdate;
use crate::updates::RunUpdates;

/// Where a run's behaviour first differs from its journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("the run diverged from its journal at event {seq}: expected {expected}, found {found}")]
pub struct Divergence {
    /// The journaled event's sequence number.
    pub seq: Seq,
    /// What the journal recorded (kind, and the first differing field and value).
    pub expected: String,
    /// What the run did instead.
    pub found: String,
}

/// Why a run could not record an event.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LogError {
    #[error(transparent)]
    Diverged(#[from] Divergence),
    /// A replay reached the end of the journal while the run wanted to go on.
    #[error("the journal ends at event {last}, but the run goes on with {found}")]
    Exhausted { last: Seq, found: String },
    #[error("the journal failed: {0}")]
    Journal(String),
}

impl From<JournalError> for LogError {
    fn from(e: JournalError) -> Self {
        LogError::Journal(e.to_string())
    }
}

/// Whether an event was found in the journal or newly appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    Replayed,
    /// New: buffered, durable at the run's next commit point ([`RunLog::commit`]).
    Appended,
}

/// What a run does when its walk reaches the end of its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtJournalEnd {
    /// Goes on live, appending (a new or resumed run).
    GoOnLive,
    /// Stops: a replay must not do anything the journal did not record.
    Stop,
}

/// Whether model answers served from the journal are charged on the ledger again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServedAnswers {
    /// Charged: a process that starts over rebuilds its ledger this way.
    Charged,
    /// Free: the ledger already holds what they cost (or a replay leaves it as it was).
    Free,
}

/// One run's journal, as its driver walks and extends it.
pub(crate) struct RunLog {
    journal: Arc<dyn Journal>,
    run: RunId,
    /// Journaled events not yet walked, with their sequence numbers.
    pending: VecDeque<(Seq, Event)>,
    last_seq: Seq,
    /// A replay never appends: running past the journal is reported.
    at_end: AtJournalEnd,
    next_call: u32,
    /// Whether answers served from the journal are charged on the ledger again.
    served: ServedAnswers,
    /// The first failure of the walk, kept for the driver (a model call only reports an error).
    failure: Option<LogError>,
    /// Events recorded past the journal's end, not yet committed.
    unflushed: Vec<Event>,
    /// Whether the last event recorded or served was one the journal had already.
    replayed_last: bool,
}

impl RunLog {
    /// A log for a new run (nothing journaled beyond `RunSubmitted`).
    pub(crate) fn new(journal: Arc<dyn Journal>, run: RunId) -> Self {
        Self::resumed(
            journal,
            run,
            Vec::new(),
            AtJournalEnd::GoOnLive,
            ServedAnswers::Free,
        )
    }

    /// A log that first walks `recorded` (the run's events after `RunSubmitted`).
    pub(crate) fn resumed(
        journal: Arc<dyn Journal>,
        run: RunId,
        recorded: Vec<(Seq, Event)>,
        at_end: AtJournalEnd,
        served: ServedAnswers,
    ) -> Self {
        RunLog {
            journal,
            run,
            last_seq: recorded.last().map_or(1, |(seq, _)| *seq),
            pending: recorded.into(),
            at_end,
            next_call: 0,
            served,
            failure: None,
            unflushed: Vec::new(),
            replayed_last: false,
        }
    }

    /// The failure that stopped the walk, if one did.
    pub(crate) fn take_failure(&mut self) -> Option<LogError> {
        self.failure.take()
    }

    /// Records that the run did `event`: on a resumed run, checks it against the next journaled
    /// event; past the journal, buffers it until the next commit point ([`RunLog::commit`]).
    pub(crate) async fn record(&mut self, event: Event) -> Result<Recorded, LogError> {
        let recorded = self.walk(event).await;
        if let Err(e) = &recorded {
            self.failure.get_or_insert_with(|| e.clone());
        }
        self.replayed_last = matches!(recorded, Ok(Recorded::Replayed));
        recorded
    }

    async fn walk(&mut self, event: Event) -> Result<Recorded, LogError> {
        // A halt is not the run's doing: a resumed run passes the halts it had.
        while matches!(self.pending.front(), Some((_, Event::Halted { .. })))
            && !matches!(event, Event::Halted { .. })
        {
            self.pending.pop_front();
        }
        match self.pending.pop_front() {
            Some((seq, expected)) => match difference(&expected, &event) {
                None => Ok(Recorded::Replayed),
                Some((expected, found)) => Err(Divergence {
                    seq,
                    expected,
                    found,
                }
                .into()),
            },
            None if self.at_end == AtJournalEnd::Stop => Err(LogError::Exhausted {
                last: self.last_seq,
                found: event.kind().to_owned(),
            }),
            None => {
                self.unflushed.push(redact_serialized(event));
                Ok(Recorded::Appended)
            }
        }
    }

    /// A commit point: makes every event recorded since the last one durable, in one
    /// transaction. Call it before each external effect. Nothing to commit: nothing is written.
    /// On failure the batch is dropped (none of it was written) and the failure kept.
    pub(crate) async fn commit(&mut self) -> Result<(), LogError> {
        if self.unflushed.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.unflushed);
        let committed = self.journal.append_batch(&self.run, events).await;
        committed.map(|_| ()).map_err(|e| {
            let e = LogError::from(e);
            self.failure.get_or_insert_with(|| e.clone());
            e
        })
    }

    /// The events recorded since the last commit point, taken to be committed with the run's
    /// end (`ending::journal_end`).
    pub(crate) fn take_unflushed(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.unflushed)
    }

    /// Takes the next journaled event if `wanted` says it is the one the run needs (a model
    /// answer, a tool result, a decision, a recall), so it is served instead of repeated.
    pub(crate) fn serve(&mut self, wanted: impl Fn(&Event) -> bool) -> Option<Event> {
        while matches!(self.pending.front(), Some((_, Event::Halted { .. }))) {
            self.pending.pop_front();
        }
        if self.pending.front().is_some_and(|(_, e)| wanted(e)) {
            self.replayed_last = true;
            return self.pending.pop_front().map(|(_, e)| e);
        }
        None
    }

    /// Whether the last event recorded or served was one the journal had already (the run is
    /// walking what it did before), not a new one.
    pub(crate) fn replayed_last(&self) -> bool {
        self.replayed_last
    }

    /// Whether this is a replay, which must not do anything the journal did not record.
    pub(crate) fn replay_only(&self) -> bool {
        self.at_end == AtJournalEnd::Stop
    }

    /// What this log does at the journal's end, and whether it charges served answers: a
    /// driver started again after a crash walks the journal the same way, without charging.
    pub(crate) fn at_end(&self) -> AtJournalEnd {
        self.at_end
    }

    fn next_call(&mut self) -> u32 {
        self.next_call += 1;
        self.next_call
    }
}

/// What makes two events the same event for a resumed run: their kind and what the run decided
/// (plans, steps, requests, tool arguments), not outcomes it is served. The first difference as
/// (expected, found), if any.
fn difference(expected: &Event, found: &Event) -> Option<(String, String)> {
    if expected.kind() != found.kind() {
        return Some((expected.kind().to_owned(), found.kind().to_owned()));
    }
    let decided = |event: &Event| -> Value {
        match event {
            Event::PlanMade { plan, .. } => plan.clone(),
            Event::StepStarted { step, kind, detail } => {
                serde_json::json!({ "step": step, "kind": kind, "detail": detail })
            }
            Event::LlmRequest { request, .. } => serde_json::to_value(request).unwrap_or_default(),
            Event::ToolCallIntent {
                tool,
                idempotency_key,
                arguments,
                ..
            } => {
                serde_json::json!({ "tool": tool, "key": idempotency_key, "arguments": arguments })
            }
            Event::Reviewed { step, reviewer, .. } => {
                serde_json::json!({ "step": step, "reviewer": reviewer })
            }
            Event::ApprovalRequested { step, tool, .. } => {
                serde_json::json!({ "step": step, "tool": tool })
            }
            Event::StepFinished { step, .. } => serde_json::json!({ "step": step }),
            _ => Value::Null,
        }
    };
    first_difference(&decided(expected), &decided(found), String::new()).map(|(path, a, b)| {
        let kind = expected.kind();
        (
            format!("{kind} {path} = {a}"),
            format!("{kind} {path} = {b}"),
        )
    })
}

/// The first place two JSON values differ, as (JSON pointer, expected, found).
pub fn first_difference(
    expected: &Value,
    found: &Value,
    at: String,
) -> Option<(String, String, String)> {
    match (expected, found) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                first_difference(x, y, format!("{at}/{k}"))
            })
        }
        (Value::Array(a), Value::Array(b)) => (0..a.len().max(b.len())).find_map(|i| {
            let (x, y) = (
                a.get(i).unwrap_or(&Value::Null),
                b.get(i).unwrap_or(&Value::Null),
            );
            first_difference(x, y, format!("{at}/{i}"))
        }),
        (a, b) if a == b => None,
        (Value::String(a), Value::String(b)) => {
            // Long texts (prompts) differ somewhere inside: show both around that place.
            let offset = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
            let path = if at.is_empty() { "/".into() } else { at };
            Some((
                format!("{path} (from char {offset})"),
                around(a, offset),
                around(b, offset),
            ))
        }
        (a, b) => Some((
            if at.is_empty() { "/".into() } else { at },
            cut(&a.to_string()),
            cut(&b.to_string()),
        )),
    }
}

/// Up to 80 characters of `text` from 20 before `offset`.
fn around(text: &str, offset: usize) -> String {
    let start = offset.saturating_sub(20);
    let part: String = text.chars().skip(start).take(80).collect();
    format!(
        "{}{part:?}{}",
        if start > 0 { "..." } else { "" },
        if text.chars().count() > start + 80 {
            "..."
        } else {
            ""
        }
    )
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// How a run's agents call models: through the LLM client, each request durable (a commit
/// point) before it is sent and its answer journaled with the run's next commit, both served
/// from the journal when the run is resumed or replayed.
/// A streaming run's answers reach its events as [`RunUpdate::Delta`]s while they arrive.
#[derive(Clone)]
pub struct ModelGateway {
    client: Client,
    log: Arc<Mutex<RunLog>>,
    deltas: Option<RunUpdates<RunUpdate>>,
    /// The run's halt token: an overshoot halts the run at once, whichever agent made the call.
    halt: HaltToken,
}

impl ModelGateway {
    /// Where the run's metrics go (its client's).
    pub(crate) fn metrics(&self) -> &impresario_runtime::telemetry::Metrics {
        self.client.metrics()
    }

    /// A gateway journaling into `log`, not streaming, halting the run through `halt`.
    pub(crate) fn new(client: Client, log: Arc<Mutex<RunLog>>, halt: HaltToken) -> Self {
        ModelGateway {
            client,
            log,
            deltas: None,
            halt,
        }
    }

    /// The same gateway, streaming its calls' text into `events` as [`RunUpdate::Delta`]s.
    pub(crate) fn streaming_to(mut self, events: RunUpdates<RunUpdate>) -> Self {
        self.deltas = Some(events);
        self
    }

    /// Calls a model for `step` of the run (then its `fallbacks`). A journaled answer is served
    /// without a network call (charged again only when the ledger is being rebuilt after a
    /// restart). A streamed answer cut short is journaled as `llm_interrupted`, any other call
    /// that ends without an answer but was charged (halted, timed out, an overshoot) as
    /// `llm_aborted`, each with its cost, so the run's usage survives a restart.
    pub async fn chat(
        &self,
        step: u32,
        request: ChatRequest,
        fallbacks: &[String],
        options: &CallOptions,
    ) -> Result<ChatResponse, LlmError> {
        // One call at a time per run (its driver waits for each step), so holding the log across
        // the call keeps the journal in the order things happened, and the run account's spend
        // grows only by this call's charges.
        let mut log = self.log.lock().await;
        let call = log.next_call();
        let recorded = log
            .record(Event::LlmRequest {
                step,
                call,
                request: request.clone(),
            })
            .await
            .map_err(not_recorded)?;
        if recorded == Recorded::Replayed {
            if let Some(served) = log.served_answer(call, &options.account) {
                return served;
            }
        }
        // A commit point: the request leaves the process.
        log.commit().await.map_err(not_recorded)?;
        let (options, streamed) = self.streaming(step, options);
        // When the journal settles the store's holds, the outcome event carries them.
        let pending = log.journal.settles_holds().then(PendingHolds::new);
        let options = match &pending {
            Some(pending) => options.holds_left_to(pending.clone()),
            None => options,
        };
        let before = options.account.leaf().snapshot().spent;
        let answer = self
            .client
            .chat_with_fallbacks(request, fallbacks, &options)
            .await;
        if let Some(streamed) = streamed {
            streamed.finish();
        }
        let spent = options.account.leaf().snapshot().spent;
        let charged = spent.saturating_sub(before);
        if let Err(e @ LlmError::Overshoot { .. }) = &answer {
            let run = HaltScope::Run(log.run.clone());
            let halt = Halt::new(run, HaltMode::Immediate, HaltReason::Overshoot);
            self.halt.halt(halt.with_detail(e.to_string()));
        }
        let holds = pending.map(|p| p.take()).unwrap_or_default();
        if let Some(event) = outcome_event(step, call, &answer, charged, holds) {
            log.record(event).await.map_err(not_recorded)?;
        }
        answer
    }

    /// `options`, streaming into the run's events when the run streams, with the stream whose
    /// held-back text is released when the call ends.
    fn streaming(
        &self,
        step: u32,
        options: &CallOptions,
    ) -> (CallOptions, Option<Arc<DeltaStream>>) {
        let Some(events) = self.deltas.clone() else {
            return (options.clone(), None);
        };
        let stream = Arc::new(DeltaStream {
            step,
            events,
            redactor: std::sync::Mutex::new(StreamRedactor::new()),
        });
        let sink = stream.clone();
        let options = options
            .clone()
            .stream_to(DeltaSink::new(move |text: &str| sink.push(text)));
        (options, Some(stream))
    }
}

/// One call's streamed text on its way to the run's subscribers as [`RunUpdate::Delta`]s,
/// redacted as a whole: a credential cut across two deltas is redacted too (see
/// [`StreamRedactor`]: what could still become one is held back until the next delta or the
/// call's end).
struct DeltaStream {
    step: u32,
    events: RunUpdates<RunUpdate>,
    redactor: std::sync::Mutex<StreamRedactor>,
}

impl DeltaStream {
    fn redactor(&self) -> std::sync::MutexGuard<'_, StreamRedactor> {
        self.redactor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A delta arrived: sends what can be released of it.
    fn push(&self, text: &str) {
        let released = self.redactor().push(text);
        self.send(released);
    }

    /// The call ended: sends the rest.
    fn finish(&self) {
        let rest = self.redactor().finish();
        self.send(rest);
    }

    fn send(&self, text: Option<String>) {
        if let Some(text) = text {
            let step = self.step;
            self.events.send(RunUpdate::Delta { step, text });
        }
    }
}

/// What the journal keeps of a call made live, with what the ledger charged for it (failed
/// attempts before it included) and the store holds its append settles: its answer; a
/// streamed answer cut short; or, for any other call without an answer that cost something,
/// its cost (none if nothing was charged: then no hold was left to the journal either).
fn outcome_event(
    step: u32,
    call: u32,
    answer: &Result<ChatResponse, LlmError>,
    charged: Charge,
    holds: Vec<String>,
) -> Option<Event> {
    match answer {
        Ok(response) => Some(Event::LlmResponse {
            step,
            call,
            response: response.clone(),
            cost_micro_usd: charged.micro_usd,
            holds,
        }),
        Err(LlmError::StreamInterrupted(cut)) => Some(Event::LlmInterrupted {
            step,
            call,
            content: cut.content.clone(),
            usage: cut.usage,
            cost_micro_usd: charged.micro_usd,
            cause: match &cut.cause {
                Interruption::Halted => "halted".into(),
                Interruption::Broken(why) => why.clone(),
            },
            holds,
        }),
        Err(_) if charged.is_zero() => None,
        Err(e) => Some(Event::LlmAborted {
            step,
            call,
            cost_micro_usd: charged.micro_usd,
            tokens: charged.tokens,
            error: e.kind().to_owned(),
            holds,
        }),
    }
}

impl RunLog {
    /// The journaled answer to model call `call` of a resumed run (charged again on `account`
    /// when the ledger is being rebuilt, with the attempts of it journaled as cut short or
    /// aborted); an error when a replay's journal has the request but no answer; `None`: the
    /// model must be called.
    fn served_answer(
        &mut self,
        call: u32,
        account: &AccountPath,
    ) -> Option<Result<ChatResponse, LlmError>> {
        let this_call = |e: &Event| {
            matches!(e, Event::LlmResponse { call: c, .. }
                | Event::LlmInterrupted { call: c, .. }
                | Event::LlmAborted { call: c, .. } if *c == call)
        };
        while let Some(event) = self.serve(this_call) {
            if self.served == ServedAnswers::Charged {
                // The truth is charged even past a ceiling lowered since.
                account.record(event.charge());
            }
            if let Event::LlmResponse { response, .. } = event {
                return Some(Ok(response));
            }
        }
        self.replay_only().then(|| {
            Err(LlmError::NotRecorded {
                field: format!("call {call}"),
                detail: "the journal has the request but no answer (the run was cut off mid-call)"
                    .into(),
            })
        })
    }
}

fn not_recorded(e: LogError) -> LlmError {
    LlmError::NotRecorded {
        field: "journal".into(),
        detail: e.to_string(),
    }
}
