//! How a run ends: its end journaled, then everything it held released, exactly once, by
//! whichever ending comes first (its driver, its driver's last crash, or its supervisor stopping
//! with it unfinished).

use std::sync::Arc;
use std::time::Instant;

use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope};
use impresario_runtime::journal::{Journal, JournalError, RunEvent as JournalEvent, RunOutcome};
use impresario_runtime::ledger::{AccountId, Ledger};
use impresario_runtime::redact::redact_serialized;
use impresario_runtime::{Placement, RunId};
use tokio::sync::watch;

use crate::journaling::AtJournalEnd;
use crate::run::{FailReason, RunResult, RunState, RunUpdate, RunUsage, StepRecord};
use crate::services::Services;
use crate::updates::RunUpdates;

/// What a run holds until it ends: its agents, ledger account, halt token, live entry and
/// active-run metric, and the channels its end is reported on. Released once, by value.
pub(crate) struct RunLease {
    pub(crate) services: Arc<Services>,
    pub(crate) run: RunId,
    pub(crate) tenant: String,
    pub(crate) placement: Placement,
    pub(crate) started: Instant,
    pub(crate) state: watch::Sender<RunState>,
    pub(crate) events: RunUpdates<RunUpdate>,
    pub(crate) result: watch::Sender<Option<Arc<RunResult>>>,
}

impl RunLease {
    /// Releases what the run held and reports `state`, from a task of its own (stopping the
    /// run's agents stops its driver too).
    pub(crate) fn release_in_background(
        self,
        state: RunState,
        steps: Vec<StepRecord>,
        at_end: AtJournalEnd,
    ) {
        let runtime = self.services.runtime.clone();
        let placement = self.placement;
        runtime.spawn_task(placement, self.release(state, steps, at_end));
    }

    /// Stops the run's agents; closes its account and drops its halt token (both kept when it
    /// is halted, so it can resume without paying again; a replay leaves them as they were);
    /// removes it from the live runs; counts it; then reports its end.
    async fn release(self, state: RunState, steps: Vec<StepRecord>, at_end: AtJournalEnd) {
        let services = &self.services;
        let account = AccountId::Run(self.run.clone());
        let usage = usage(&services.ledger, &account);
        services.stop_subtree(&self.tenant, &self.run).await;
        let resumable = matches!(state, RunState::Halted { .. });
        if !resumable && at_end == AtJournalEnd::GoOnLive {
            services.ledger.close(&account);
            services.halts.remove_run(&self.run);
        }
        services.live.remove(&self.run);
        let outcome = match &state {
            RunState::Succeeded { .. } => RunOutcome::Succeeded,
            RunState::Halted { .. } => RunOutcome::Halted,
            RunState::CeilingReached { .. } => RunOutcome::CeilingReached,
            _ => RunOutcome::Failed,
        };
        let metrics = services.runtime.metrics();
        metrics.run_finished(outcome, self.started.elapsed());
        // Published last: whoever sees the run's end sees it journaled, released and counted.
        self.events.send(RunUpdate::State(state.clone()));
        let _ = self.state.send(state.clone());
        let result = RunResult {
            run: self.run,
            state,
            steps,
            usage,
        };
        let _ = self.result.send(Some(Arc::new(result)));
    }
}

/// What run account `account` spent (zero if it is gone).
fn usage(ledger: &Ledger, account: &AccountId) -> RunUsage {
    ledger
        .account(account)
        .map(|a| RunUsage::from(a.snapshot().spent))
        .unwrap_or_default()
}

/// The journal event of a run's end: finished (no more events), or halted (resumable); none
/// for a journal the run could not follow or write.
fn end_event(run: &RunId, state: &RunState, halt: Option<Halt>) -> Option<JournalEvent> {
    let failed = |reason: String| JournalEvent::RunFinished {
        outcome: RunOutcome::Failed,
        result: serde_json::to_value(state).unwrap_or_default(),
        reason: Some(reason),
    };
    Some(match state {
        RunState::Succeeded { answer } => JournalEvent::RunFinished {
            outcome: RunOutcome::Succeeded,
            result: serde_json::json!({ "answer": answer }),
            reason: None,
        },
        // Nothing more goes into a journal the run could not follow.
        RunState::Failed {
            reason: FailReason::Diverged,
            ..
        } => return None,
        // A journal that failed a write may take the next one (a lock released, space freed):
        // the run is recorded as finished, so a restart does not run it again and a client
        // that resubmitted it does not pay twice.
        RunState::Failed { reason, .. } => failed(reason.to_string()),
        RunState::CeilingReached { .. } => failed("cost_ceiling".into()),
        RunState::Halted { .. } => JournalEvent::Halted {
            halt: halt.unwrap_or_else(|| {
                let scope = HaltScope::Run(run.clone());
                Halt::new(scope, HaltMode::Immediate, HaltReason::Operator)
            }),
        },
        _ => return None,
    })
}

/// How often the end of a run is tried on the journal.
const END_WRITE_ATTEMPTS: u32 = 3;
/// The pause between those attempts.
const END_WRITE_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Journals how the run ended (`halt`: the halt that stopped it, if one did) after `unflushed`
/// (what the run recorded since its last commit point), in one transaction: the run's last
/// commit point, before its end is reported. Tries [`END_WRITE_ATTEMPTS`] times,
/// [`END_WRITE_PAUSE`] apart: a run that failed on its journal is ended by the write after the
/// one that failed. If every attempt fails the journal still shows the run as interrupted, and
/// a restart would resume it: the log says so. A fenced append (this process lost the run's
/// lease) is not tried again: the run is another process's now. A run that could not follow its journal writes
/// nothing more to it.
pub(crate) async fn journal_end(
    journal: &dyn Journal,
    run: &RunId,
    state: &RunState,
    halt: Option<Halt>,
    mut unflushed: Vec<JournalEvent>,
) {
    let Some(event) = end_event(run, state, halt).map(redact_serialized) else {
        return;
    };
    // A journal that may take a batch it failed is sent a copy, to send it again; one that
    // only refuses events is sent the batch itself, and at most the end alone again.
    let keep_copy = journal.fails_transiently();
    let end = event.clone();
    unflushed.push(event);
    let mut batch = unflushed;
    for attempt in 1..=END_WRITE_ATTEMPTS {
        let sent = if keep_copy {
            batch.clone()
        } else {
            std::mem::replace(&mut batch, vec![end.clone()])
        };
        let len = sent.len();
        match journal.append_batch(run, sent).await {
            Ok(_) => return,
            // Another process holds the run's lease now: it writes the run, this one stops.
            Err(e @ JournalError::Fenced(_)) => {
                tracing::warn!(run = %run, error = %e, "the run's lease is gone; its end is left to the process that drives it now");
                return;
            }
            Err(e) if attempt == END_WRITE_ATTEMPTS => {
                tracing::error!(run = %run, error = %e, "could not journal how the run ended; a restart would resume it")
            }
            // An event before the end was refused (the whole batch with it): the end goes alone.
            Err(e @ JournalError::Rejected { .. }) if len > 1 => {
                tracing::error!(run = %run, error = %e, "the run's last events were refused; journaling its end alone");
                batch = vec![end.clone()];
            }
            Err(_) => tokio::time::sleep(END_WRITE_PAUSE).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use impresario_runtime::journal::{MemoryJournal, ToolOutcome};

    use super::*;

    #[tokio::test]
    async fn refused_last_events_leave_the_end_journaled_alone_on_the_memory_journal() {
        let journal = MemoryJournal::new();
        assert!(!journal.fails_transiently());
        let run = RunId::new("run-end-alone");
        let submitted = JournalEvent::RunSubmitted {
            tenant: "t".into(),
            goal: "g".into(),
            request: serde_json::json!({}),
        };
        journal.append(&run, submitted).await.unwrap();
        // A tool result with no intent before it: refused, and its batch with it.
        let orphan = JournalEvent::ToolResult {
            step: 1,
            idempotency_key: "run-end-alone/step-1".into(),
            outcome: ToolOutcome::Ok(serde_json::json!(1)),
        };
        let state = RunState::Succeeded {
            answer: "42".into(),
        };
        journal_end(&journal, &run, &state, None, vec![orphan]).await;
        let kinds: Vec<&str> = journal
            .read(&run)
            .unwrap()
            .iter()
            .map(|entry| entry.event.kind())
            .collect();
        assert_eq!(kinds, ["run_submitted", "run_finished"]);
    }
}
