//! Runs as a journal has them, in the JSON the service answers with and the CLI prints. Shared
//! by the service (for runs it is not running: earlier ones, other processes') and the CLI
//! (reading a journal file without a service).
//!
//! A listed run: `{"id", "tenant", "status", "last_event", "submitted_at_ms", "updated_at_ms"}`.
//! A shown run: `{"id", "tenant", "goal", "status", "state", "usage", "submitted_at_ms",
//! "steps"}`, where `status` is the journal's (`active`, `halted`, `finished`), `state` the
//! run's end as a `RunState`, or while it has none what its journal shows it doing as of its
//! last commit point (`queued`: nothing yet; `planning`; `running` a step; `awaiting_approval`),
//! whoever drives it (another replica of a cluster, or no one: a run cut off by a crash), and
//! `steps` the finished steps as `{"number", "step", "outcome"}`.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use impresario::agents::{RunState, RunUsage};
use impresario::runtime::journal::{JournalEntry, RunEvent, RunOutcome, RunStatus, RunSummary};
use impresario::runtime::ledger::Charge;
use serde_json::{json, Value};

/// Milliseconds since the Unix epoch.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The journal's status of a run in `state` (for a run this process is running).
pub fn status_of(state: &RunState) -> &'static str {
    match state {
        RunState::Halted { .. } => RunStatus::Halted.as_str(),
        s if s.is_terminal() => RunStatus::Finished.as_str(),
        _ => RunStatus::Active.as_str(),
    }
}

/// A run as listed.
pub fn listed(summary: &RunSummary) -> Value {
    json!({
        "id": summary.run,
        "tenant": summary.tenant,
        "status": summary.status.as_str(),
        "last_event": summary.last_event,
        "submitted_at_ms": unix_ms(summary.started_at),
        "updated_at_ms": unix_ms(summary.updated_at),
    })
}

/// A run as shown, from its journaled events; `None` if they do not start with its submission.
pub fn shown(entries: &[JournalEntry]) -> Option<Value> {
    let first = entries.first()?;
    let RunEvent::RunSubmitted { tenant, goal, .. } = &first.event else {
        return None;
    };
    let mut shown = Shown::default();
    for entry in entries {
        shown.add(&entry.event);
    }
    Some(json!({
        "id": first.run,
        "tenant": tenant,
        "goal": goal,
        "status": shown.status.as_str(),
        "state": if shown.state.is_null() { shown.progress } else { shown.state },
        "usage": RunUsage::from(shown.spent),
        "submitted_at_ms": unix_ms(first.at),
        "steps": shown.steps,
    }))
}

/// A run as its events so far show it.
struct Shown {
    /// What its model calls were charged.
    spent: Charge,
    /// Each started step's detail, by number.
    planned: HashMap<u32, Value>,
    steps: Vec<Value>,
    status: RunStatus,
    /// How it ended (`null` while it has not).
    state: Value,
    /// What it was doing at its last journaled event, as a `RunState`.
    progress: Value,
}

impl Default for Shown {
    fn default() -> Self {
        Shown {
            spent: Charge::ZERO,
            planned: HashMap::new(),
            steps: Vec::new(),
            status: RunStatus::Active,
            state: Value::Null,
            progress: json!({ "state": "queued" }),
        }
    }
}

impl Shown {
    fn add(&mut self, event: &RunEvent) {
        self.follow(event);
        match event {
            RunEvent::LlmResponse { .. }
            | RunEvent::LlmInterrupted { .. }
            | RunEvent::LlmAborted { .. } => {
                self.spent = self.spent + event.charge();
            }
            RunEvent::StepStarted { step, detail, .. } => {
                self.planned.insert(*step, detail.clone());
            }
            RunEvent::StepFinished { step, outcome } => self.steps.push(json!({
                "number": step,
                "step": self.planned.get(step).cloned().unwrap_or(Value::Null),
                "outcome": outcome,
            })),
            RunEvent::Halted { halt } => {
                self.status = RunStatus::Halted;
                self.state =
                    json!({ "state": "halted", "reason": halt.reason, "detail": halt.detail });
            }
            RunEvent::RunFinished {
                outcome,
                result,
                reason,
            } => {
                self.status = RunStatus::Finished;
                self.state = ended(*outcome, result, reason.as_deref());
            }
            // A resumed run goes on after its halt.
            _ if self.status == RunStatus::Halted => {
                (self.status, self.state) = (RunStatus::Active, Value::Null);
            }
            _ => {}
        }
    }
}

impl Shown {
    /// Moves `progress` on with `event`.
    fn follow(&mut self, event: &RunEvent) {
        self.progress = match event {
            RunEvent::RunSubmitted { .. } => return,
            RunEvent::StepStarted { step, .. } | RunEvent::ApprovalDecided { step, .. } => {
                json!({ "state": "running", "step": step })
            }
            RunEvent::ApprovalRequested { step, tool, .. } => {
                json!({ "state": "awaiting_approval", "step": step, "tool": tool })
            }
            RunEvent::StepFinished { .. } | RunEvent::PlanMade { .. } => {
                json!({ "state": "planning" })
            }
            // Calls and tools inside a step leave it running; before any step, it plans.
            _ if self.progress["state"] == "queued" => json!({ "state": "planning" }),
            _ => return,
        };
    }
}

/// A finished run's end as a `RunState`.
fn ended(outcome: RunOutcome, result: &Value, reason: Option<&str>) -> Value {
    match outcome {
        RunOutcome::Succeeded => json!({ "state": "succeeded", "answer": result["answer"] }),
        // A failed run journals its whole final state.
        _ if result.get("state").is_some() => result.clone(),
        _ => json!({ "state": "failed", "reason": reason, "detail": result }),
    }
}
