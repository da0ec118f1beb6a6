//! The runs this process has submitted, with every event each one emitted, so a client that
//! connects late still gets a run's whole story, in order.
//!
//! The list lives in memory: it starts empty at each start of the service, and keeps the
//! most recent finished runs up to a count (`server.keep_finished_runs`): each one holds its
//! goal, its events and its result, so the count bounds the service's memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use impresario::agents::{RunHandle, RunResult, RunState, RunUpdate};
use impresario::runtime::RunId;
use tokio::sync::{broadcast, watch};

/// A submitted run and what it emitted so far.
pub struct Tracked {
    /// Its handle.
    pub handle: RunHandle,
    /// Its tenant.
    pub tenant: String,
    /// Its goal.
    pub goal: String,
    /// When it was submitted.
    pub submitted_at: SystemTime,
    events: watch::Sender<Vec<RunUpdate>>,
    result: OnceLock<Arc<RunResult>>,
}

impl Tracked {
    /// Its result, once it ended.
    pub fn result(&self) -> Option<&Arc<RunResult>> {
        self.result.get()
    }

    /// Its events so far; the receiver sees every later one.
    pub fn events(&self) -> watch::Receiver<Vec<RunUpdate>> {
        self.events.subscribe()
    }

    /// Its state: the final one once it ended.
    pub fn state(&self) -> RunState {
        match self.result() {
            Some(result) => result.state.clone(),
            None => self.handle.status(),
        }
    }

    /// Resolves once its terminal event is recorded (its result is known by then).
    pub async fn ended(&self) {
        let mut events = self.events();
        let _ = events.wait_for(|e| e.last().is_some_and(is_terminal)).await;
    }

    fn push(&self, event: RunUpdate) {
        self.events.send_modify(|events| events.push(event));
    }
}

/// Whether `event` is the last one of a run.
pub fn is_terminal(event: &RunUpdate) -> bool {
    matches!(event, RunUpdate::State(state) if state.is_terminal())
}

/// The state's name (`running`, `halted`, ...), for messages.
pub fn state_name(state: &RunState) -> String {
    let value = serde_json::to_value(state).unwrap_or_default();
    value["state"].as_str().unwrap_or("unknown").to_owned()
}

/// The runs, by id (ids sort by submission time).
pub struct TrackedRuns {
    runs: Mutex<BTreeMap<RunId, Arc<Tracked>>>,
    /// How many finished runs are kept (the oldest go first); running runs are always kept.
    keep_finished: usize,
}

impl TrackedRuns {
    /// No runs yet; keeps `keep_finished` finished ones.
    pub fn new(keep_finished: usize) -> Self {
        TrackedRuns {
            runs: Mutex::default(),
            keep_finished,
        }
    }

    /// Starts tracking a run that was just submitted. Returns it and the future that records
    /// its events until it ends; spawn that future at once.
    pub fn track(
        &self,
        handle: RunHandle,
        tenant: String,
        goal: String,
    ) -> (
        Arc<Tracked>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        // The first receiver of a run has every event from its start.
        let receiver = handle.events();
        let tracked = Arc::new(Tracked {
            handle,
            tenant,
            goal,
            submitted_at: SystemTime::now(),
            events: watch::Sender::new(Vec::new()),
            result: OnceLock::new(),
        });
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.insert(tracked.handle.id().clone(), tracked.clone());
        evict(&mut runs, self.keep_finished);
        (tracked.clone(), record(tracked, receiver))
    }

    /// The run `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Tracked>> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.get(&RunId::new(id)).cloned()
    }

    /// Every run, oldest first.
    pub fn all(&self) -> Vec<Arc<Tracked>> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.values().cloned().collect()
    }
}

/// Drops the oldest finished runs past the `keep` most recent.
fn evict(runs: &mut BTreeMap<RunId, Arc<Tracked>>, keep: usize) {
    let finished: Vec<RunId> = runs
        .iter()
        .filter(|(_, t)| t.result().is_some())
        .map(|(id, _)| id.clone())
        .collect();
    for id in finished.iter().take(finished.len().saturating_sub(keep)) {
        runs.remove(id);
    }
}

/// Records the run's events until it ends; the terminal event is recorded last, after the
/// result, so whoever sees it can read the result.
async fn record(tracked: Arc<Tracked>, mut receiver: broadcast::Receiver<RunUpdate>) {
    loop {
        match receiver.recv().await {
            Ok(event) if is_terminal(&event) => break,
            Ok(event) => tracked.push(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(run = %tracked.handle.id(), missed, "run events lost: the recorder fell behind");
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    let result = tracked.handle.wait().await;
    let state = result.state.clone();
    let _ = tracked.result.set(result);
    tracked.push(RunUpdate::State(state));
}
