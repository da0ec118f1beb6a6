//! A replica of a cluster: `serve` with `journal.url` (docs/ARCHITECTURE.md, "Cluster").
//!
//! A run submitted to any replica is journaled and put in PostgreSQL's run queue. Every replica
//! claims runs while it drives fewer than `cluster.max_runs_per_replica` (the rest wait in the
//! database), and drives each from its journal under the claim's lease. A loop heartbeats the
//! leases every third of `cluster.lease_secs`, stops (here only) the runs whose lease is lost
//! or overdue, claims, and exports the queue's depth and oldest age. A run's end marks it done
//! in the queue; on SIGTERM, after the runs were halted gracefully, [`Cluster::hand_back`]
//! puts them back in the queue at once for another replica to resume. The streamed text of the
//! runs driven here is published to the other replicas ([`PgDeltas`]), and theirs arrives for
//! the streams following their runs here ([`Cluster::deltas`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use impresario::agents::{ResumeError, RunRequest, RunState, RunUpdate};
use impresario::runtime::halt::{Halt, HaltMode, HaltReason, HaltScope};
use impresario::runtime::journal::{JournalEntry, RunEvent as Journaled};
use impresario::runtime::RunId;
use impresario_pg::deltas::{Delta, PgDeltas};
use impresario_pg::ledger::{PgLedger, PgLedgerConfig};
use impresario_pg::queue::{Lease, Queue, QueueConfig, QueueError};
use impresario_pg::{Database, Fences, Follower};
use tokio::sync::{broadcast, Notify};

use super::errors::ApiError;
use super::runs::{is_terminal, Tracked};
use super::State;

/// The longest a replica waits between two claims when nothing wakes it: how soon it sees runs
/// submitted to other replicas.
const CLAIM_EVERY: Duration = Duration::from_millis(500);

/// The detail of the halt that stops a run whose lease this replica lost.
const LEASE_LOST: &str = "this replica lost the run's lease (it expired, or another replica claimed the run); the run goes on where its lease is";

/// What can go wrong talking to the run queue.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The queue refused or failed the operation.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The database's I/O thread is gone (the service is stopping).
    #[error("the database's I/O thread stopped; restart the service")]
    Stopped,
}

/// This replica's hold on the run queue, and the runs it drives.
pub struct Cluster {
    db: Database,
    queue: Arc<Queue>,
    /// The epochs the journal and the ledger fence the writes of the runs driven here with.
    fences: Fences,
    /// Wakes the loop to claim now (a run was queued here, or one ended here).
    wake: Notify,
    /// The runs this replica drives, by id, with their lease.
    driving: Mutex<HashMap<String, Lease>>,
    /// Releases the holds a run's earlier leases left when it is claimed here.
    ledger: PgLedger,
    /// The streamed text of the runs driven here goes out through it, and that of the runs
    /// other replicas drive comes in.
    deltas: PgDeltas,
    /// Follows the deltas' channel while the replica lives.
    _following: Follower,
}

impl Cluster {
    /// The replica `config` names, on the run queue of `db`, setting each claimed run's epoch
    /// in `fences` (those of the journal and the ledger) while it drives the run.
    pub fn new(
        db: Database,
        fences: Fences,
        config: QueueConfig,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let queue = Queue::new(db.pool().clone(), config)?;
        let ledger = PgLedger::new(db.clone(), PgLedgerConfig::default()).fenced_by(fences.clone());
        let deltas = PgDeltas::new(db.clone());
        let following = deltas.follow_here();
        Ok(Arc::new(Cluster {
            db,
            queue: Arc::new(queue),
            ledger,
            deltas,
            _following: following,
            fences,
            wake: Notify::new(),
            driving: Mutex::default(),
        }))
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.queue.config().replica
    }

    /// Runs `op` on the queue, on the database's I/O thread (where its pool lives).
    async fn on_queue<T, Fut>(&self, op: impl FnOnce(Arc<Queue>) -> Fut) -> Result<T, ClusterError>
    where
        Fut: Future<Output = Result<T, QueueError>> + Send + 'static,
        T: Send + 'static,
    {
        match self.db.spawn(op(self.queue.clone())).await {
            Ok(done) => Ok(done?),
            Err(_) => Err(ClusterError::Stopped),
        }
    }

    /// Puts run `run` of `tenant` in the queue (again, if it was done) and wakes the loop.
    pub async fn enqueue(&self, run: &RunId, tenant: &str) -> Result<(), ClusterError> {
        let (run, tenant) = (run.to_string(), tenant.to_owned());
        self.on_queue(move |q| async move { q.enqueue(&run, &tenant).await })
            .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Hands every run this replica still holds back to the queue (SIGTERM, after the runs
    /// were halted gracefully): another replica resumes them at once. Returns how many.
    pub async fn hand_back(&self) -> usize {
        match self.on_queue(|q| async move { q.drain().await }).await {
            Ok(leases) => leases.len(),
            Err(e) => {
                tracing::warn!(error = %e, "could not hand the runs back to the queue; other replicas take them over when their leases expire");
                0
            }
        }
    }

    /// The streamed text of every run driven elsewhere that arrives from now on (a followed
    /// stream keeps its run's).
    pub fn deltas(&self) -> broadcast::Receiver<Arc<Delta>> {
        self.deltas.subscribe()
    }

    fn driving(&self) -> MutexGuard<'_, HashMap<String, Lease>> {
        self.driving.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The run of `lease` is not written for here any more: its writes go unfenced again
    /// (unless a newer claim of it set another epoch).
    fn unfence(&self, lease: &Lease) {
        if self.fences.epoch(&lease.run) == Some(lease.epoch) {
            self.fences.remove(&lease.run);
        }
    }

    /// `lease`, just claimed, is not driven here after all. If the run still goes on here
    /// under an earlier lease (driven, or halted as lost and not ended yet), what that lease
    /// had is put back: above all its epoch, which the database refuses now, so the instance
    /// that lost the run writes nothing more. Its writes must never go unfenced.
    fn not_driven(&self, lease: &Lease, earlier: Earlier) {
        match earlier.driving {
            Some(driving) => {
                self.driving().insert(driving.run.clone(), driving);
            }
            None => {
                self.stop_driving(lease);
            }
        }
        match earlier.epoch {
            Some(epoch) => self.fences.set(&Lease {
                epoch,
                ..lease.clone()
            }),
            None => self.unfence(lease),
        }
    }

    /// Stops counting `lease`'s run as driven here; `false` if it was not (any more).
    fn stop_driving(&self, lease: &Lease) -> bool {
        let mut driving = self.driving();
        if driving.get(&lease.run) == Some(lease) {
            driving.remove(&lease.run);
            return true;
        }
        false
    }
}

/// `POST /v1/runs` on a replica: validates and journals the run, then queues it for whichever
/// replica claims it. A run journaled but not queued (the database failed in between) is named
/// in the error: `POST /v1/runs/{id}/resume` queues it.
pub async fn submit(
    state: &State,
    cluster: &Cluster,
    request: &RunRequest,
) -> Result<RunId, ApiError> {
    let run = state.engine.orchestrator.accept(request).await?;
    cluster.enqueue(&run, &request.tenant).await.map_err(|e| {
        ApiError::unavailable(format!(
            "run {run} is journaled but could not be queued: {e}; POST /v1/runs/{run}/resume queues it"
        ))
    })?;
    Ok(run)
}

/// `POST /v1/runs/{id}/resume` on a replica: queues the halted (or cut off) run again; the
/// replica that claims it resumes it from its journal. 409 if it is queued or driven already.
pub async fn resume(
    state: &State,
    cluster: &Cluster,
    run: &RunId,
    entries: &[JournalEntry],
) -> Result<RunState, ApiError> {
    if entries
        .iter()
        .any(|e| matches!(e.event, Journaled::RunFinished { .. }))
    {
        return Err(ApiError::conflict(format!(
            "run {run} finished; only a halted or interrupted run can be resumed (submit a new run instead)"
        )));
    }
    let tenant = match entries.first().map(|e| &e.event) {
        Some(Journaled::RunSubmitted { tenant, .. }) => tenant.clone(),
        _ => return Err(ApiError::unknown_run(run.as_str())),
    };
    // The run's recorded halts are over, or the check before its next step would halt it again.
    if matches!(
        entries.last().map(|e| &e.event),
        Some(Journaled::Halted { .. })
    ) {
        let scope = HaltScope::Run(run.clone());
        let lifted = state.engine.lift_recorded(&scope).await;
        lifted.map_err(ApiError::internal)?;
    }
    match cluster.enqueue(run, &tenant).await {
        Ok(()) => Ok(RunState::Queued),
        Err(ClusterError::Queue(e @ QueueError::AlreadyQueued { .. })) => {
            Err(ApiError::conflict(e.to_string()))
        }
        Err(e) => Err(ApiError::unavailable(format!(
            "run {run} could not be queued: {e}; retry"
        ))),
    }
}

/// Starts the replica's two loops: one heartbeats every `heartbeat_every` and stops the runs
/// whose lease is lost or overdue; the other exports the queue's figures, claims while below
/// the limit and drives what it claimed (apart, so that slow claims never delay a heartbeat). Both
/// end when the service drains.
pub fn spawn(state: &Arc<State>, cluster: Arc<Cluster>) {
    // Weak: the service's state must go when the service stops, whatever these loops do.
    let weak = Arc::downgrade(state);
    let beat_every = cluster.queue.config().heartbeat_every();
    let (heart, claims) = (cluster.clone(), weak.clone());
    actix_web::rt::spawn(async move {
        while let Some(live) = weak
            .upgrade()
            .filter(|s| !s.draining.load(Ordering::Acquire))
        {
            beat(&live, &heart).await;
            drop(live);
            tokio::time::sleep(beat_every).await;
        }
    });
    actix_web::rt::spawn(async move {
        while let Some(live) = claims
            .upgrade()
            .filter(|s| !s.draining.load(Ordering::Acquire))
        {
            claim(&live, &cluster).await;
            drop(live);
            tokio::select! {
                () = cluster.wake.notified() => {}
                () = tokio::time::sleep(CLAIM_EVERY.min(beat_every)) => {}
            }
        }
    });
}

/// Heartbeats, and stops the runs whose lease is lost or overdue.
async fn beat(state: &State, cluster: &Cluster) {
    let mut lost = match cluster
        .on_queue(|q| async move { q.heartbeat().await })
        .await
    {
        Ok(gone) => gone,
        Err(e) => {
            tracing::warn!(error = %e, "heartbeat failed; runs whose leases go overdue stop here");
            Vec::new()
        }
    };
    lost.extend(cluster.queue.overdue());
    stop_lost(state, cluster, &lost);
}

/// Exports the queue's figures, claims runs while below the limit, and drives each.
async fn claim(state: &Arc<State>, cluster: &Arc<Cluster>) {
    export_stats(state, cluster).await;
    match cluster.on_queue(|q| async move { q.claim().await }).await {
        Ok(claimed) => {
            for lease in claimed {
                drive(state, cluster, lease).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not claim runs from the queue"),
    }
}

/// Sets the queue's gauges from one read of the queue.
async fn export_stats(state: &State, cluster: &Cluster) {
    match cluster.on_queue(|q| async move { q.stats().await }).await {
        Ok(stats) => state.engine.runtime.metrics().cluster_queue(
            stats.depth,
            stats.oldest_age.unwrap_or_default(),
            stats.leased,
        ),
        Err(e) => tracing::warn!(error = %e, "could not read the run queue's figures"),
    }
}

/// Stops, here, the runs of `lost` leases: each is halted at once; its writes (the halt's
/// included) are refused by the fence, whose stale epoch stays set until the run ended here,
/// and the replica that claimed it goes on from its journal.
fn stop_lost(state: &State, cluster: &Cluster, lost: &[Lease]) {
    for lease in lost {
        if !cluster.stop_driving(lease) {
            continue;
        }
        state.engine.runtime.metrics().cluster_lease_lost();
        tracing::warn!(run = %lease.run, epoch = lease.epoch, "lease lost; the run stops here");
        if let Some(run) = state.runs.get(&lease.run) {
            let scope = HaltScope::Run(RunId::new(lease.run.as_str()));
            let halt =
                Halt::new(scope, HaltMode::Immediate, HaltReason::Shutdown).with_detail(LEASE_LOST);
            run.handle.halt_with(halt);
        }
    }
}

/// What this replica had for a run when it claimed the run again: the lease it was driving
/// the run under, and the epoch its writes carried (still set after a lost lease, until the
/// run ends here).
struct Earlier {
    driving: Option<Lease>,
    epoch: Option<i64>,
}

/// What a claimed run's journal says to do with it.
enum Claimed {
    /// Go on with it: it waits to start, was cut off, or was halted and queued again (a
    /// resume, or a draining replica handing it back). A run whose halt was journaled but whose
    /// replica died before marking it done is driven too: a halt recorded in the database (an
    /// operator's) stops it again before its next step.
    Drive { tenant: String, goal: String },
    /// Mark it done: it finished.
    Done(&'static str),
}

/// Reads what to do with a run just claimed (off the runtime's threads: reading blocks).
async fn claimed(state: &State, run: &RunId) -> Result<Claimed, String> {
    let (journal, id) = (state.engine.orchestrator.journal().clone(), run.clone());
    let entries = tokio::task::spawn_blocking(move || journal.read(&id))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let Some(Journaled::RunSubmitted { tenant, goal, .. }) = entries.first().map(|e| &e.event)
    else {
        return Ok(Claimed::Done("the journal has no such run"));
    };
    Ok(match entries.last().map(|e| &e.event) {
        Some(Journaled::RunFinished { .. }) => Claimed::Done("it finished"),
        _ => Claimed::Drive {
            tenant: tenant.clone(),
            goal: goal.clone(),
        },
    })
}

/// Drives the run of `lease`, just claimed, from its journal; marks it done if there is nothing
/// to drive; hands it back if it cannot start here now.
async fn drive(state: &Arc<State>, cluster: &Arc<Cluster>, lease: Lease) {
    let run = RunId::new(lease.run.as_str());
    let (tenant, goal) = match claimed(state, &run).await {
        Ok(Claimed::Drive { tenant, goal }) => (tenant, goal),
        Ok(Claimed::Done(why)) => {
            tracing::info!(run = %run, why, "claimed a run with nothing to drive; marked done");
            return complete(cluster, lease).await;
        }
        Err(e) => {
            tracing::warn!(run = %run, error = %e, "cannot read a claimed run's journal; handed back");
            return release(cluster, lease).await;
        }
    };
    // A run still going here under an earlier lease (its lease expired before a heartbeat
    // renewed it, and this replica claimed it again) is not started twice: see `not_driven`.
    let earlier = Earlier {
        driving: cluster.driving().insert(lease.run.clone(), lease.clone()),
        epoch: cluster.fences.epoch(&lease.run),
    };
    // Every write for the run from now on carries the lease's epoch.
    cluster.fences.set(&lease);
    // A replica that died or lost the run with calls in flight left their holds: their answers
    // were never journaled, so they are asked again here. Released now, not at their expiry.
    match cluster.ledger.release_run(&run).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(run = %run, holds = n, "released the holds of the run's earlier lease")
        }
        Err(e) => {
            tracing::warn!(run = %run, error = %e, "cannot release the run's earlier holds; they expire")
        }
    }
    match state.engine.orchestrator.take_over(&run).await {
        Ok(handle) => {
            let tracked = state.track(handle, tenant, goal);
            let updates = tracked.handle.events();
            actix_web::rt::spawn(publish(cluster.deltas.clone(), lease.run.clone(), updates));
            let (cluster, draining) = (cluster.clone(), state.draining.clone());
            actix_web::rt::spawn(finish(cluster, tracked, lease, draining));
        }
        Err(e @ (ResumeError::Running(_) | ResumeError::Journal(_))) => {
            cluster.not_driven(&lease, earlier);
            tracing::info!(run = %run, error = %e, "cannot drive a claimed run here now; handed back");
            release(cluster, lease).await;
        }
        Err(e) => {
            cluster.not_driven(&lease, earlier);
            tracing::error!(run = %run, error = %e, "cannot drive a claimed run; marked done in the queue");
            complete(cluster, lease).await;
        }
    }
}

/// Waits for the end of a run driven here, then marks it done in the queue, unless this
/// replica lost it meanwhile, or halted it to drain (the drain hands it back).
async fn finish(cluster: Arc<Cluster>, run: Arc<Tracked>, lease: Lease, draining: Arc<AtomicBool>) {
    run.ended().await;
    // Its end is journaled (or was refused by the fence): nothing more is written for it here.
    cluster.unfence(&lease);
    if !cluster.stop_driving(&lease) {
        return;
    }
    let drained = matches!(
        run.state(),
        RunState::Halted {
            reason: HaltReason::Shutdown,
            ..
        }
    ) && draining.load(Ordering::Acquire);
    if !drained {
        complete(&cluster, lease).await;
    }
}

/// Marks the run of `lease` done (fenced: refused if the lease is gone), and wakes the loop.
async fn complete(cluster: &Cluster, lease: Lease) {
    let run = lease.run.clone();
    if let Err(e) = cluster
        .on_queue(move |q| async move { q.complete(&lease).await })
        .await
    {
        tracing::warn!(run, error = %e, "could not mark the run done in the queue");
    }
    cluster.wake.notify_one();
}

/// Hands the run of `lease` back to the queue.
async fn release(cluster: &Cluster, lease: Lease) {
    let run = lease.run.clone();
    if let Err(e) = cluster
        .on_queue(move |q| async move { q.release(&lease).await })
        .await
    {
        tracing::warn!(run, error = %e, "could not hand the run back; it is taken over when its lease expires");
    }
}

/// Publishes the streamed text of run `run`, driven here, to the other replicas until it ends.
/// What arrives while a notification is sent goes out with the next one, merged by step, so a
/// run sends at most one at a time.
async fn publish(deltas: PgDeltas, run: String, mut updates: broadcast::Receiver<RunUpdate>) {
    let mut ended = false;
    while !ended {
        let mut batch: Vec<Delta> = Vec::new();
        let mut take = |update: RunUpdate, ended: &mut bool| match update {
            RunUpdate::Delta { step, text } => match batch.last_mut() {
                Some(last) if last.step == step => last.text.push_str(&text),
                _ => batch.push(Delta {
                    run: run.clone(),
                    step,
                    text,
                }),
            },
            update => *ended = is_terminal(&update),
        };
        match updates.recv().await {
            Ok(update) => take(update, &mut ended),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
        while let Ok(update) = updates.try_recv() {
            take(update, &mut ended);
        }
        for delta in &batch {
            if let Err(e) = deltas.publish(delta).await {
                tracing::warn!(run, error = %e, "could not send streamed text to the other replicas");
            }
        }
    }
}
