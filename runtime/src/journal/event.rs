//! The events of a run, their stored form, and the checks every journal applies to them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{in_batch, JournalEntry, JournalError, RunStatus, RunSummary, Seq};
use crate::halt::Halt;
use crate::ledger::{Charge, MicroUsd};
use crate::llm::{ChatRequest, ChatResponse, JsonBlob, Usage};
use crate::outcome::RunOutcome;
use crate::RunId;

/// The event encoding this build writes, and the newest it reads.
///
/// Every stored event carries the version it was written with. A change that an older build
/// could not read (a new variant, a new required field, a changed meaning) bumps it; the reader
/// then upgrades older events while decoding. An event with a newer version is refused with
/// [`JournalError::NewerEvent`], never guessed at.
///
/// Version 2 added [`RunEvent::LlmInterrupted`] and [`RunEvent::LlmAborted`]; version 1 events
/// read unchanged. Version 3 added [`RunEvent::Recalled`] and [`RunEvent::Reviewed`]; versions 1
/// and 2 journaled them as `step_started` events of kind `recall` (step 0) and `review`, which
/// are read as the new variants. Version 4 added `holds` to [`RunEvent::LlmResponse`],
/// [`RunEvent::LlmInterrupted`] and [`RunEvent::LlmAborted`] (absent: none); older events read
/// unchanged.
pub const EVENT_VERSION: u32 = 4;

/// One thing that happened in a run, as journaled.
///
/// Stored as JSON tagged by `type` (`{"type": "tool_result", ...}`); unknown types and unknown
/// fields are refused when read back. The planner's and executor's own types live in
/// `impresario-agents`, which this crate cannot name, so plans, step details and step outcomes
/// are JSON values here: the agents crate serializes its types into them and validates them when
/// it reads them back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunEvent {
    /// The run was accepted. Always the first event of a run, and only there.
    RunSubmitted {
        /// The tenant the run belongs to.
        tenant: String,
        /// The goal, as submitted.
        goal: String,
        /// The whole submission (budget, autonomy level, options), as the caller sent it.
        request: Value,
    },
    /// The planner produced (or revised) the plan.
    PlanMade {
        /// 0 for the first plan, then one more at every replan.
        revision: u32,
        /// The plan (the agents crate's type, as JSON).
        plan: Value,
    },
    /// A step began.
    StepStarted {
        /// The step number.
        step: u32,
        /// What kind of step (`tool`, `llm`, ...), for people and filters.
        kind: String,
        /// The step as planned (as JSON).
        detail: Value,
    },
    /// Memories of earlier runs were put into the run's context (a resumed run is served them:
    /// memory may have changed since).
    Recalled {
        /// The memories, as the run's context has them.
        memories: Vec<String>,
    },
    /// A reviewer judged a plan (a resumed run is served the verdict: a reviewer may judge
    /// differently now).
    Reviewed {
        /// The run's step count when the plan was made.
        step: u32,
        /// The reviewer's agent id (`kind/key`).
        reviewer: String,
        /// Its verdict (the agents crate's type, as JSON), or `null` if it failed to give one.
        verdict: Value,
    },
    /// A model call is about to be sent. Replay answers it from the matching [`RunEvent::LlmResponse`].
    LlmRequest {
        /// The step it belongs to.
        step: u32,
        /// The call's number within the step.
        call: u32,
        /// The request.
        request: ChatRequest,
    },
    /// A model answered.
    LlmResponse {
        /// The step it belongs to.
        step: u32,
        /// The call's number within the step (as in its [`RunEvent::LlmRequest`]).
        call: u32,
        /// The answer, with its usage.
        response: ChatResponse,
        /// What the call cost, settled on the ledger.
        cost_micro_usd: MicroUsd,
        /// The ledger store's holds of the call, left for the journal to settle in the
        /// transaction that appends this event ([`Journal::settles_holds`](super::Journal::settles_holds));
        /// empty when the call settled them itself (SQLite, memory, no store).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        holds: Vec<String>,
    },
    /// A streamed answer was cut short after its first delta (halted, or broken by the
    /// provider). Its partial text was delivered and charged; a resumed run asks again.
    LlmInterrupted {
        /// The step it belongs to.
        step: u32,
        /// The call's number within the step (as in its [`RunEvent::LlmRequest`]).
        call: u32,
        /// The text delivered before it ended.
        content: String,
        /// The tokens charged: input plus the output received.
        usage: Usage,
        /// What was charged for them, settled on the ledger.
        cost_micro_usd: MicroUsd,
        /// `halted`, or what broke the stream.
        cause: String,
        /// The ledger store's holds of the call, left for the journal to settle in the
        /// transaction that appends this event ([`Journal::settles_holds`](super::Journal::settles_holds));
        /// empty when the call settled them itself (SQLite, memory, no store).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        holds: Vec<String>,
    },
    /// A model call ended without an answer (halted, timed out, refused as malformed, or
    /// over its reservation) but cost money: what the ledger charged for it, so that the run's
    /// usage and its tenant's spend survive a restart. A resumed run charges it again when it
    /// rebuilds its ledger and then makes the call anew.
    LlmAborted {
        /// The step it belongs to.
        step: u32,
        /// The call's number within the step (as in its [`RunEvent::LlmRequest`]).
        call: u32,
        /// What the call was charged, in micro-USD.
        cost_micro_usd: MicroUsd,
        /// Tokens charged.
        tokens: u64,
        /// Why it ended (the error's kind, e.g. `cancelled`, `overshoot`).
        error: String,
        /// The ledger store's holds of the call, left for the journal to settle in the
        /// transaction that appends this event ([`Journal::settles_holds`](super::Journal::settles_holds));
        /// empty when the call settled them itself (SQLite, memory, no store).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        holds: Vec<String>,
    },
    /// A tool is about to be called. Journaled before the call, so that a resumed run knows a
    /// call may have happened and passes the same key to the tool.
    ToolCallIntent {
        /// The step it belongs to.
        step: u32,
        /// The tool's name.
        tool: String,
        /// Unique within the run; the tool uses it to do the work at most once.
        idempotency_key: String,
        /// The arguments, already validated against the tool's schema.
        arguments: Value,
    },
    /// A tool call completed. At most one per idempotency key, after that key's intent.
    ToolResult {
        /// The step it belongs to.
        step: u32,
        /// The key of the [`RunEvent::ToolCallIntent`] it answers.
        idempotency_key: String,
        /// What the tool returned.
        outcome: ToolOutcome,
    },
    /// A step waits for a person's approval (a high-impact tool).
    ApprovalRequested {
        /// The step waiting.
        step: u32,
        /// What would run: the tool's name.
        tool: String,
        /// Why approval is needed.
        reason: String,
    },
    /// A person approved or refused a step.
    ApprovalDecided {
        /// The step.
        step: u32,
        /// `true` to let it run.
        approved: bool,
        /// Who decided.
        by: String,
        /// Why, when given.
        reason: Option<String>,
    },
    /// The run was halted. It can be resumed, which appends further events.
    Halted {
        /// The halt, as requested.
        halt: Halt,
    },
    /// A step ended.
    StepFinished {
        /// The step number.
        step: u32,
        /// Its result or structured error (as JSON).
        outcome: Value,
    },
    /// The run ended for good. Nothing can be appended after it.
    RunFinished {
        /// How it ended.
        outcome: RunOutcome,
        /// The answer, or `null`.
        result: Value,
        /// Why it ended, for people.
        reason: Option<String>,
    },
}

/// What a tool call returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ToolOutcome {
    /// The tool's result.
    Ok(Value),
    /// The tool's error, as text for the planner.
    Error(String),
}

impl From<Result<Value, String>> for ToolOutcome {
    fn from(result: Result<Value, String>) -> Self {
        match result {
            Ok(v) => ToolOutcome::Ok(v),
            Err(e) => ToolOutcome::Error(e),
        }
    }
}

impl RunEvent {
    /// The event's `type` tag, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            RunEvent::RunSubmitted { .. } => "run_submitted",
            RunEvent::PlanMade { .. } => "plan_made",
            RunEvent::StepStarted { .. } => "step_started",
            RunEvent::Recalled { .. } => "recalled",
            RunEvent::Reviewed { .. } => "reviewed",
            RunEvent::LlmRequest { .. } => "llm_request",
            RunEvent::LlmResponse { .. } => "llm_response",
            RunEvent::LlmInterrupted { .. } => "llm_interrupted",
            RunEvent::LlmAborted { .. } => "llm_aborted",
            RunEvent::ToolCallIntent { .. } => "tool_call_intent",
            RunEvent::ToolResult { .. } => "tool_result",
            RunEvent::ApprovalRequested { .. } => "approval_requested",
            RunEvent::ApprovalDecided { .. } => "approval_decided",
            RunEvent::Halted { .. } => "halted",
            RunEvent::StepFinished { .. } => "step_finished",
            RunEvent::RunFinished { .. } => "run_finished",
        }
    }

    /// The idempotency key of a tool call intent or result.
    pub fn idempotency_key(&self) -> Option<&str> {
        match self {
            RunEvent::ToolCallIntent {
                idempotency_key, ..
            }
            | RunEvent::ToolResult {
                idempotency_key, ..
            } => Some(idempotency_key),
            _ => None,
        }
    }

    /// What this event says the ledger charged (model answers and aborted calls); zero for
    /// every other event. Summed over a run's events it is the run's spend.
    pub fn charge(&self) -> Charge {
        match self {
            RunEvent::LlmResponse {
                response,
                cost_micro_usd,
                ..
            } => Charge {
                micro_usd: *cost_micro_usd,
                tokens: response.usage.total_tokens(),
                model_calls: 1,
            },
            RunEvent::LlmInterrupted {
                cost_micro_usd,
                usage,
                ..
            } => Charge {
                micro_usd: *cost_micro_usd,
                tokens: usage.total_tokens(),
                model_calls: 1,
            },
            RunEvent::LlmAborted {
                cost_micro_usd,
                tokens,
                ..
            } => Charge {
                micro_usd: *cost_micro_usd,
                tokens: *tokens,
                model_calls: 1,
            },
            _ => Charge::ZERO,
        }
    }

    /// The ledger store's holds this event's append settles with [`RunEvent::charge`] (model
    /// answers and aborted calls, when the journal settles holds); empty for every other event.
    pub fn holds(&self) -> &[String] {
        match self {
            RunEvent::LlmResponse { holds, .. }
            | RunEvent::LlmInterrupted { holds, .. }
            | RunEvent::LlmAborted { holds, .. } => holds,
            _ => &[],
        }
    }

    /// The shared values this event holds (a model request's system prompts and output
    /// schema), in the order they are serialized: what a stored journal may keep once per file
    /// and refer to by digest. None for every other event.
    pub fn shared_values(&self) -> impl Iterator<Item = JsonBlob> + '_ {
        let request = match self {
            RunEvent::LlmRequest { request, .. } => Some(request),
            _ => None,
        };
        request.into_iter().flat_map(ChatRequest::shared_values)
    }

    /// The run's status once this event is appended.
    pub fn status_after(&self) -> RunStatus {
        match self {
            RunEvent::Halted { .. } => RunStatus::Halted,
            RunEvent::RunFinished { .. } => RunStatus::Finished,
            _ => RunStatus::Active,
        }
    }
}

/// The run as the journal has it when an event is appended: `None` if it has no event yet.
#[derive(Debug, Clone, Copy)]
pub struct RunHead {
    /// Its status.
    pub status: RunStatus,
    /// Its last sequence number.
    pub last_seq: Seq,
}

impl RunHead {
    /// The head of `run` from its stored status and last sequence number; a status this build
    /// does not know is corrupt.
    pub fn parse(run: &RunId, status: &str, last_seq: i64) -> Result<RunHead, JournalError> {
        let last_seq = last_seq as Seq;
        match RunStatus::parse(status) {
            Some(status) => Ok(RunHead { status, last_seq }),
            None => Err(unknown_status(run.clone(), last_seq, status)),
        }
    }
}

/// A run as a stored journal keeps it (its row), before validation.
pub struct StoredRun {
    /// The run's id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its status, as stored ([`RunStatus::as_str`]).
    pub status: String,
    /// Its last sequence number.
    pub last_seq: i64,
    /// The `type` of its last event.
    pub last_event: String,
    /// When its first event was journaled, in milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// When its last event was journaled, in milliseconds since the Unix epoch.
    pub updated_ms: i64,
}

impl StoredRun {
    /// The row as a summary; a status this build does not know is corrupt.
    pub fn summary(self) -> Result<RunSummary, JournalError> {
        let run = RunId::new(self.id);
        let head = RunHead::parse(&run, &self.status, self.last_seq)?;
        Ok(RunSummary {
            run,
            tenant: self.tenant,
            status: head.status,
            last_seq: head.last_seq,
            last_event: self.last_event,
            started_at: from_ms(self.started_ms),
            updated_at: from_ms(self.updated_ms),
        })
    }
}

/// A run whose stored status is not one this build knows.
fn unknown_status(run: RunId, seq: Seq, status: &str) -> JournalError {
    JournalError::Corrupt {
        run,
        seq,
        reason: format!("the run's stored status `{status}` is not one this build knows"),
    }
}

/// What the run already holds for an idempotency key.
#[derive(Default)]
pub struct KeyUse {
    /// A `tool_call_intent` with the key is journaled.
    pub intent: bool,
    /// The sequence number of the `tool_result` with the key, if one is journaled.
    pub result: Option<Seq>,
}

/// The rules every journal enforces on an append (contract 5: refused with the reason, and the
/// run is left as it was). `key_use` is asked only for a tool result.
pub fn check_append(
    run: &RunId,
    head: Option<&RunHead>,
    event: &RunEvent,
    key_use: impl FnOnce(&str) -> KeyUse,
) -> Result<(), JournalError> {
    let refuse = |reason: String| {
        Err(JournalError::Rejected {
            run: run.clone(),
            reason,
        })
    };
    match (head, event) {
        (None, RunEvent::RunSubmitted { .. }) => {}
        (None, e) => {
            return refuse(format!(
            "the run has no events and `{}` cannot come first: a run starts with `run_submitted`",
            e.kind()
        ))
        }
        (Some(h), _) if h.status == RunStatus::Finished => {
            return refuse(format!(
                "the run finished at event {}; nothing can be appended after `run_finished`",
                h.last_seq
            ))
        }
        (Some(_), RunEvent::RunSubmitted { .. }) => {
            return refuse("the run was already submitted (event 1)".into())
        }
        (Some(_), _) => {}
    }
    if let Some(key) = event.idempotency_key() {
        if key.is_empty() {
            return refuse(format!("`{}` has an empty idempotency_key", event.kind()));
        }
        if let RunEvent::ToolResult { .. } = event {
            let used = key_use(key);
            if let Some(seq) = used.result {
                return refuse(format!(
                    "a tool result for idempotency key `{key}` is already journaled (event {seq})"
                ));
            }
            if !used.intent {
                return refuse(format!(
                    "tool result for idempotency key `{key}` has no `tool_call_intent` before it"
                ));
            }
        }
    }
    Ok(())
}

/// A stored event, in the columns every stored journal keeps.
pub struct StoredEvent<'a> {
    /// Its sequence number.
    pub seq: i64,
    /// When it was journaled, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The event version it was written with.
    pub version: i64,
    /// Its `type` tag.
    pub kind: &'a str,
    /// The event as JSON.
    pub body: &'a str,
}

/// A shared value cut out of the JSON of an event of an append, to be stored once per journal
/// file (the SQLite journal's, `sqlite/blobs.rs`): `null` stands for it in the event's JSON.
#[derive(Debug, Clone)]
pub struct CutValue {
    /// The event, by its index in the append.
    pub event: usize,
    /// The byte offset, in the event's JSON as stored, of the `null` standing for the value.
    pub offset: usize,
    /// The value, its JSON and its digest.
    pub blob: JsonBlob,
}

/// Validates and decodes one stored event of `run`, expected at `expected` (sequence numbers are
/// gap-free from 1). Every failure names the run, the sequence number and what was wrong.
pub fn decode(
    run: &RunId,
    expected: Seq,
    stored: StoredEvent<'_>,
) -> Result<JournalEntry, JournalError> {
    let corrupt = |seq: Seq, reason: String| JournalError::Corrupt {
        run: run.clone(),
        seq,
        reason,
    };
    let (seq, version) = numbering(run, expected, &stored)?;
    let event: RunEvent = serde_json::from_str(stored.body)
        .map_err(|e| corrupt(seq, format!("the event does not decode: {e}")))?;
    if event.kind() != stored.kind {
        return Err(corrupt(
            seq,
            format!(
                "stored as `{}` but the event is `{}`",
                stored.kind,
                event.kind()
            ),
        ));
    }
    let event = if version < 3 {
        upgrade_v2(event).map_err(|reason| corrupt(seq, reason))?
    } else {
        event
    };
    let at_ms = u64::try_from(stored.at_ms)
        .map_err(|_| corrupt(seq, format!("timestamp {} is negative", stored.at_ms)))?;
    Ok(JournalEntry {
        run: run.clone(),
        seq,
        at: UNIX_EPOCH + Duration::from_millis(at_ms),
        version,
        event,
    })
}

/// The stored event's sequence number (it must be `expected`) and event version (one this build
/// reads).
fn numbering(
    run: &RunId,
    expected: Seq,
    stored: &StoredEvent<'_>,
) -> Result<(Seq, u32), JournalError> {
    let corrupt = |seq: Seq, reason: String| JournalError::Corrupt {
        run: run.clone(),
        seq,
        reason,
    };
    let seq = Seq::try_from(stored.seq).map_err(|_| {
        corrupt(
            expected,
            format!("stored sequence number {} is negative", stored.seq),
        )
    })?;
    if seq != expected {
        return Err(corrupt(
            expected,
            format!("event {expected} is missing (the next stored event is {seq})"),
        ));
    }
    let version = version_of(run, seq, stored.version)?;
    Ok((seq, version))
}

/// The version of stored event `seq` of `run`, if this build reads it.
fn version_of(run: &RunId, seq: Seq, stored: i64) -> Result<u32, JournalError> {
    let Some(version) = u32::try_from(stored).ok().filter(|v| *v >= 1) else {
        return Err(JournalError::Corrupt {
            run: run.clone(),
            seq,
            reason: format!("event version {stored} is not valid"),
        });
    };
    if version > EVENT_VERSION {
        return Err(JournalError::NewerEvent {
            run: run.clone(),
            seq,
            found: version,
            supported: EVENT_VERSION,
        });
    }
    Ok(version)
}

/// A version 1 or 2 event as version 3 has it: recalls and reviews were `step_started`
/// pseudo-steps.
fn upgrade_v2(event: RunEvent) -> Result<RunEvent, String> {
    match event {
        RunEvent::StepStarted { kind, detail, .. } if kind == "recall" => {
            let memories = serde_json::from_value(detail)
                .map_err(|e| format!("a version 1 or 2 recall's memories do not decode: {e}"))?;
            Ok(RunEvent::Recalled { memories })
        }
        RunEvent::StepStarted { step, kind, detail } if kind == "review" => {
            let reviewer = detail["reviewer"].as_str().ok_or_else(|| {
                "a version 1 or 2 review has no `reviewer` string in its detail".to_owned()
            })?;
            Ok(RunEvent::Reviewed {
                step,
                reviewer: reviewer.to_owned(),
                verdict: detail["verdict"].clone(),
            })
        }
        other => Ok(other),
    }
}

/// The events of a batch for `run`, each with the JSON every stored journal keeps; an event
/// that does not serialize refuses the batch, naming it (contract 5).
pub fn serialize_batch(
    run: &RunId,
    events: Vec<RunEvent>,
) -> Result<Vec<(RunEvent, String)>, JournalError> {
    let len = events.len();
    let mut bodies = Vec::with_capacity(len);
    for (i, event) in events.into_iter().enumerate() {
        match serde_json::to_string(&event) {
            Ok(body) => bodies.push((event, body)),
            Err(e) => {
                let reason = format!("`{}` does not serialize: {e}", event.kind());
                let run = run.clone();
                return Err(in_batch(JournalError::Rejected { run, reason }, i, len));
            }
        }
    }
    Ok(bodies)
}

/// Milliseconds since the Unix epoch, the precision journals store.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// `at` as milliseconds since the Unix epoch (0 before it).
pub fn to_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch as a time.
pub fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored<'a>(seq: i64, version: i64, kind: &'a str, body: &'a str) -> StoredEvent<'a> {
        StoredEvent {
            seq,
            at_ms: 0,
            version,
            kind,
            body,
        }
    }

    #[test]
    fn kind_is_the_serde_tag() {
        let e = RunEvent::ToolResult {
            step: 1,
            idempotency_key: "k".into(),
            outcome: ToolOutcome::Error("no".into()),
        };
        assert_eq!(serde_json::to_value(&e).unwrap()["type"], e.kind());
    }

    #[test]
    fn decoding_refuses_unknown_types_fields_and_newer_versions() {
        let run = RunId::new("r");
        let ok = json!({"type": "step_finished", "step": 1, "outcome": null}).to_string();
        assert!(decode(&run, 3, stored(3, 1, "step_finished", &ok)).is_ok());

        let err = decode(&run, 3, stored(3, 1, "teleport", r#"{"type":"teleport"}"#)).unwrap_err();
        assert!(
            matches!(&err, JournalError::Corrupt { seq: 3, reason, .. } if reason.contains("unknown variant `teleport`")),
            "{err}"
        );
        let extra =
            json!({"type": "step_finished", "step": 1, "outcome": null, "x": 1}).to_string();
        let err = decode(&run, 3, stored(3, 1, "step_finished", &extra)).unwrap_err();
        assert!(err.to_string().contains("unknown field `x`"), "{err}");

        let newer = i64::from(EVENT_VERSION) + 1;
        let err = decode(&run, 3, stored(3, newer, "step_finished", &ok)).unwrap_err();
        assert!(
            matches!(
                err,
                JournalError::NewerEvent {
                    seq: 3,
                    found,
                    supported: EVENT_VERSION,
                    ..
                } if i64::from(found) == newer
            ),
            "{err}"
        );
        let err = decode(&run, 3, stored(4, 1, "step_finished", &ok)).unwrap_err();
        assert!(err.to_string().contains("event 3 is missing"), "{err}");
        let err = decode(&run, 3, stored(3, 1, "halted", &ok)).unwrap_err();
        assert!(err.to_string().contains("stored as `halted`"), "{err}");
    }

    #[test]
    fn older_recall_and_review_pseudo_steps_read_as_their_own_events() {
        let run = RunId::new("r");
        let recall = json!({"type": "step_started", "step": 0, "kind": "recall", "detail": ["m1"]});
        let read = decode(&run, 2, stored(2, 1, "step_started", &recall.to_string())).unwrap();
        assert_eq!(
            read.event,
            RunEvent::Recalled {
                memories: vec!["m1".into()]
            }
        );
        let verdict = json!({"verdict": "approve"});
        let review = json!({"type": "step_started", "step": 3, "kind": "review",
            "detail": {"reviewer": "critic/r", "verdict": verdict}});
        let read = decode(&run, 2, stored(2, 1, "step_started", &review.to_string())).unwrap();
        let wanted = RunEvent::Reviewed {
            step: 3,
            reviewer: "critic/r".into(),
            verdict,
        };
        assert_eq!(read.event, wanted);
        // A version 3 `step_started` is a step, whatever its kind; a bad version 1 review is named.
        let read = decode(&run, 2, stored(2, 3, "step_started", &recall.to_string())).unwrap();
        assert_eq!(read.event.kind(), "step_started");
        let bad = json!({"type": "step_started", "step": 3, "kind": "review", "detail": {}});
        let err = decode(&run, 2, stored(2, 1, "step_started", &bad.to_string())).unwrap_err();
        assert!(err.to_string().contains("no `reviewer`"), "{err}");
    }

    #[test]
    fn a_shared_schema_is_stored_as_the_plain_json_of_its_value() {
        let value = json!({"type": "object", "required": ["steps"], "title": "é\"\n", "n": 1.5});
        let schema = crate::llm::SharedJson::new(value.clone());
        let event = |call: u32| RunEvent::LlmRequest {
            step: 1,
            call,
            request: ChatRequest::new("m")
                .user("hi")
                .output_schema("plan", schema.clone(), false),
        };
        let run = RunId::new("r");
        let events = vec![event(0), event(1), event(0)];
        let bodies = serialize_batch(&run, events.clone()).unwrap();
        let plain = serde_json::to_string(&value).unwrap();
        for (i, (event, body)) in bodies.iter().enumerate() {
            let call = i % 2;
            let expected = format!(
                r#"{{"type":"llm_request","step":1,"call":{call},"request":{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"output_schema":{{"name":"plan","schema":{plain},"strict":false}},"max_tokens":1024}}}}"#
            );
            assert_eq!(body, &expected, "event {i}");
            assert_eq!(event, &events[i]);
            let seq = i as u64 + 1;
            let stored = stored(seq as i64, EVENT_VERSION.into(), "llm_request", body);
            assert_eq!(decode(&run, seq, stored).unwrap().event, events[i]);
        }
    }
}
