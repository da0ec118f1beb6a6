//! A run's driver as a supervised agent: the last child of the run's supervisor. It drives the
//! run; if it panics, its supervisor starts it again (restart type transient) and the new driver
//! resumes the run from its journal: journaled model answers, tool results and decisions are
//! served, not repeated (what the panicked driver recorded since its last commit point is
//! committed first). Past `OrchestratorConfig::driver_restarts` panics the run ends
//! `failed(internal)` instead. Every ending releases what the run held ([`RunLease`]).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::FutureExt;
use impresario_runtime::journal::JournalError;
use impresario_runtime::{agent, Placement};
use impresario_supervisor::{ChildSpec, RestartType};
use tracing::Instrument;

use crate::driver::{Driver, Incarnation};
use crate::ending::{journal_end, RunLease};
use crate::journaling::{AtJournalEnd, RunLog, ServedAnswers};
use crate::run::{FailReason, RunState};
use crate::run_setup::RunSetup;
use crate::services::driver_id;

/// Drives one run; started again from the run's journal when it panics.
pub(crate) struct DriverAgent {
    setup: Arc<RunSetup>,
}

impl Actor for DriverAgent {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let setup = self.setup.clone();
        let driving = incarnation(setup.clone()).instrument(setup.span.clone());
        let guarded = AssertUnwindSafe(driving).catch_unwind();
        ctx.spawn(guarded.into_actor(self).map(|outcome, this, ctx| {
            if let Err(panic) = outcome {
                let message = panic_message(&*panic);
                this.setup.crashed(message.clone());
                impresario_runtime::fail(ctx, format!("the run's driver panicked: {message}"));
            }
        }));
    }
}
agent!(DriverAgent);

/// The driver of `setup`'s run, as a child of the run's supervisor.
pub(crate) fn driver_spec(setup: Arc<RunSetup>, placement: Placement) -> ChildSpec {
    let id = driver_id(&setup.run);
    ChildSpec::agent(id, move || DriverAgent {
        setup: setup.clone(),
    })
    .restart(RestartType::Transient)
    .placement(placement)
}

/// One driver's life: drive the run (the first driver from the walk it was given, a driver
/// started again from the journal), or end it if its drivers crashed too often.
async fn incarnation(setup: Arc<RunSetup>) {
    let crashes = setup.crashes();
    let allowed = setup.services.config.driver_restarts as usize;
    if let Some(last) = crashes.last().filter(|_| crashes.len() > allowed) {
        let detail = format!(
            "the run's driver panicked {} times (each restart resumed the run from its journal); last: {last}",
            crashes.len()
        );
        return end_without_driver(&setup, FailReason::Internal, detail).await;
    }
    let first = setup
        .first_log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let (log, incarnation) = match first {
        Some(log) => (log, Incarnation::First),
        None => match resumed_log(&setup) {
            Ok(log) => (log, Incarnation::Restarted),
            Err(e) => {
                let detail = format!("the run's journal cannot be read to resume it: {e}");
                return end_without_driver(&setup, FailReason::JournalError, detail).await;
            }
        },
    };
    let log = Arc::new(tokio::sync::Mutex::new(log));
    let driving = AssertUnwindSafe(Driver::new(setup, log.clone(), incarnation).drive());
    if let Err(panic) = driving.catch_unwind().await {
        salvage(&log).await;
        std::panic::resume_unwind(panic);
    }
}

/// After a panic of the driver: what the run recorded since its last commit point did happen
/// (a panic is not a crash), so it is committed for the next driver to be served, not to redo.
/// A journal that fails here loses only what a crash would have.
async fn salvage(log: &tokio::sync::Mutex<RunLog>) {
    // The guard of a panicking holder was dropped while unwinding: the lock is free.
    if let Ok(mut log) = log.try_lock() {
        if let Err(e) = log.commit().await {
            tracing::warn!(error = %e, "could not journal what the run did before its driver panicked");
        }
    }
}

/// The journal walk of a driver started again: every event after the submission, served;
/// nothing charged again (this process's ledger holds what the run spent).
fn resumed_log(setup: &RunSetup) -> Result<RunLog, JournalError> {
    let journal = setup.services.journal.clone();
    let recorded = journal
        .read(&setup.run)?
        .into_iter()
        .skip(1)
        .map(|entry| (entry.seq, entry.event))
        .collect();
    Ok(RunLog::resumed(
        journal,
        setup.run.clone(),
        recorded,
        setup.at_end,
        ServedAnswers::Free,
    ))
}

/// Ends the run as failed for `reason`, with no driver: journaled, then released with the
/// steps its last driver got to.
async fn end_without_driver(setup: &RunSetup, reason: FailReason, detail: String) {
    let state = RunState::Failed { reason, detail };
    let Some(lease): Option<RunLease> = setup.take_lease() else {
        return;
    };
    if setup.at_end == AtJournalEnd::GoOnLive {
        journal_end(
            &*setup.services.journal,
            &setup.run,
            &state,
            None,
            Vec::new(),
        )
        .await;
    }
    lease.release_in_background(state, setup.take_steps(), setup.at_end);
}

/// The message of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => "a panic with a non-string payload".into(),
    }
}
