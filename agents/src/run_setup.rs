//! What every driver of one run shares: the request and what was opened for it (account path,
//! halt token, channels), the journal walk the first driver starts with, the panics of earlier
//! drivers, and the run's lease, which the first ending takes.

use std::sync::{Arc, Mutex as StdMutex};

use impresario_runtime::halt::HaltToken;
use impresario_runtime::ledger::AccountPath;
use impresario_runtime::llm::{CallOptions, SharedText};
use impresario_runtime::{AgentId, RunId};
use tokio::sync::{mpsc, watch, Mutex};

use crate::ending::{journal_end, RunLease};
use crate::fault::DriverPhase;
use crate::journaling::{AtJournalEnd, RunLog};
use crate::run::{Decision, FailReason, RunRequest, RunState, RunUpdate, StepRecord};
use crate::services::Services;
use crate::team::Review;
use crate::updates::RunUpdates;

/// What every driver of one run shares (a driver started again after a crash gets the same).
pub(crate) struct RunSetup {
    pub(crate) services: Arc<Services>,
    pub(crate) run: RunId,
    pub(crate) request: RunRequest,
    pub(crate) reviewers: Vec<(AgentId, Arc<Review>)>,
    /// The tools the run may use.
    pub(crate) allowed: Arc<[String]>,
    /// The planner's instructions for this run (schema and tools), built once.
    pub(crate) planner_prompt: SharedText,
    /// The run's tenant, whose cached model answers it may be served.
    pub(crate) cache_scope: Arc<str>,
    pub(crate) path: AccountPath,
    pub(crate) token: HaltToken,
    pub(crate) state: watch::Sender<RunState>,
    pub(crate) events: RunUpdates<RunUpdate>,
    pub(crate) decisions: Mutex<mpsc::UnboundedReceiver<Decision>>,
    /// The run's span: every driver's work, and its agents' spans, are children of it.
    pub(crate) span: tracing::Span,
    /// What the run does at its journal's end (every driver of a replay stops there).
    pub(crate) at_end: AtJournalEnd,
    /// The journal walk of the first driver; a driver started again reads the journal anew.
    pub(crate) first_log: StdMutex<Option<RunLog>>,
    /// The message of each panic of the run's drivers so far.
    pub(crate) crashes: StdMutex<Vec<String>>,
    /// The steps the run's current driver has executed (or been served from the journal): the
    /// run's result has them however it ends, a crash of its last driver included.
    pub(crate) steps: StdMutex<Vec<StepRecord>>,
    /// Taken by the run's first ending.
    pub(crate) lease: StdMutex<Option<RunLease>>,
}

impl RunSetup {
    /// The options of a model call of this run: its account path (and the ledger store, if
    /// any), halt and cache scope.
    pub(crate) fn options(&self) -> CallOptions {
        let options = CallOptions::new(self.path.clone(), self.token.cancellation())
            .cache_scope(self.cache_scope.clone());
        match &self.services.config.ledger_store {
            Some(store) => options.held_in(store.clone()),
            None => options,
        }
    }

    /// Panics here if a test asked for it (see [`PanicInjection`](crate::fault::PanicInjection)).
    pub(crate) fn checkpoint(&self, phase: DriverPhase) {
        if let Some(injection) = &self.services.config.inject_panic {
            injection.at(phase);
        }
    }

    /// Records a panic of one of the run's drivers.
    pub(crate) fn crashed(&self, message: String) {
        tracing::error!(run = %self.run, panic = %message, "the run's driver panicked");
        lock(&self.crashes).push(message);
    }

    /// The panics of the run's drivers so far.
    pub(crate) fn crashes(&self) -> Vec<String> {
        lock(&self.crashes).clone()
    }

    /// A driver starts (again): it executes, or is served, the run's steps from the first.
    pub(crate) fn restart_steps(&self) {
        lock(&self.steps).clear();
    }

    /// The current driver executed step `record` (or was served it).
    pub(crate) fn step_done(&self, record: StepRecord) {
        lock(&self.steps).push(record);
    }

    /// How many steps the current driver has executed.
    pub(crate) fn steps_done(&self) -> usize {
        lock(&self.steps).len()
    }

    /// What each step executed so far was (`tool_call search`, ...).
    pub(crate) fn step_labels(&self) -> Vec<String> {
        lock(&self.steps).iter().map(|s| s.step.label()).collect()
    }

    /// The steps executed so far, for the run's result.
    pub(crate) fn take_steps(&self) -> Vec<StepRecord> {
        std::mem::take(&mut *lock(&self.steps))
    }

    /// The run's lease, if no ending has taken it yet.
    pub(crate) fn take_lease(&self) -> Option<RunLease> {
        lock(&self.lease).take()
    }
}

impl Drop for RunSetup {
    /// The last holder of the setup is gone (the run's supervisor stopped, with its driver)
    /// and the run never ended: it ends `failed(internal)`, and what it held is released.
    fn drop(&mut self) {
        let Some(lease) = self.lease.get_mut().ok().and_then(Option::take) else {
            return;
        };
        let steps = self.take_steps();
        let state = RunState::Failed {
            reason: FailReason::Internal,
            detail: "the run's supervisor stopped its driver before the run ended".into(),
        };
        let (journal, run) = (self.services.journal.clone(), self.run.clone());
        let (runtime, placement, at_end) =
            (self.services.runtime.clone(), lease.placement, self.at_end);
        runtime.spawn_task(placement, async move {
            if at_end == AtJournalEnd::GoOnLive {
                journal_end(&*journal, &run, &state, None, Vec::new()).await;
            }
            lease.release_in_background(state, steps, at_end);
        });
    }
}

/// Locks `mutex`; a panic while it was held leaves a list or an option still whole.
fn lock<T>(mutex: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
