//! Starting, using and stopping a runtime: an actix `System` with one `Arbiter` (thread) per
//! core, owned on a dedicated thread or attached to a `System` an actix-web app already runs.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use actix::{Arbiter, ArbiterHandle, System};
use dashmap::DashMap;
use tokio::sync::{broadcast, oneshot};

use crate::agent_id::AgentId;
use crate::agent_ref::AgentRef;
use crate::directory::Directory;
use crate::error::{RuntimeError, SpawnError};
use crate::events::LifecycleEvent;
use crate::slot::{new_slot, request_stop, start_incarnation, Host, Slot, StopRequest};
use crate::supervision::{Child, ExitSink, SupervisedAgent};
use crate::telemetry::{AgentMetrics, Metrics};
use crate::Agent;

/// The default most requests one agent accepts at once.
pub const DEFAULT_IN_FLIGHT_LIMIT: usize = 1024;

/// How often each agent kind's in-flight gauge is set from its agents' counts.
const IN_FLIGHT_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Entry point: `Runtime::builder()`.
pub struct Runtime;

impl Runtime {
    /// A builder with the defaults: one arbiter per core, an in-flight limit of
    /// [`DEFAULT_IN_FLIGHT_LIMIT`] per agent.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            arbiters: None,
            in_flight_limit: DEFAULT_IN_FLIGHT_LIMIT,
            name: "impresario".to_owned(),
            metrics: Metrics::global(),
        }
    }
}

/// Configures and starts a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    arbiters: Option<usize>,
    in_flight_limit: usize,
    name: String,
    metrics: Metrics,
}

impl RuntimeBuilder {
    /// How many arbiters (threads that run agents). Default: the number of cores.
    pub fn arbiters(mut self, count: usize) -> Self {
        self.arbiters = Some(count);
        self
    }

    /// The default in-flight limit of each agent (a spawn may set its own). Minimum 1.
    pub fn in_flight_limit(mut self, limit: usize) -> Self {
        self.in_flight_limit = limit.max(1);
        self
    }

    /// The name of the runtime's system thread (`<name>-system`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Where the agents' metrics go (default [`Metrics::global`]). Each agent kind resolves its
    /// metric handles when its first agent is spawned.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    fn arbiter_count(&self) -> Result<usize, RuntimeError> {
        let count = self.arbiters.unwrap_or_else(|| {
            thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        if count == 0 {
            return Err(RuntimeError::ZeroArbiters);
        }
        Ok(count)
    }

    /// Starts a runtime that owns its actix `System` on a dedicated thread.
    ///
    /// Call it from a plain `fn main`, or from inside a tokio runtime (an axum, hyper or tonic
    /// service): the handle's futures are `Send` and can be awaited from any task.
    pub fn start(self) -> Result<RuntimeHandle, RuntimeError> {
        crate::panic_capture::install_hook();
        let count = self.arbiter_count()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (exited_tx, exited_rx) = oneshot::channel();
        let thread = thread::Builder::new()
            .name(format!("{}-system", self.name))
            .spawn(move || {
                let runner = System::new();
                let arbiters: Vec<Arbiter> = (0..count).map(|_| Arbiter::new()).collect();
                let handles = arbiters.iter().map(Arbiter::handle).collect::<Vec<_>>();
                let _ = ready_tx.send((System::current(), handles));
                let _ = runner.run();
                for arbiter in arbiters {
                    arbiter.stop();
                    let _ = arbiter.join();
                }
                let _ = exited_tx.send(());
            })?;
        let system_thread = thread.thread().id();
        let (system, arbiters) = ready_rx.recv().map_err(|_| RuntimeError::StartFailed)?;
        let control = system.arbiter().clone();
        Ok(RuntimeHandle::new(
            &self,
            arbiters,
            control,
            Mode::Owned {
                system,
                thread: Mutex::new(Some(thread)),
                exited: Mutex::new(Some(exited_rx)),
            },
            Some(system_thread),
        ))
    }

    /// Starts a runtime inside the actix `System` running on this thread (e.g. in an actix-web
    /// `main`). It adds its own arbiters to that system; `shutdown` stops them and leaves the
    /// system itself to its owner.
    pub fn attach(self) -> Result<RuntimeHandle, RuntimeError> {
        crate::panic_capture::install_hook();
        let count = self.arbiter_count()?;
        let system = System::try_current().ok_or(RuntimeError::NoActixSystem)?;
        let arbiters: Vec<Arbiter> = (0..count).map(|_| Arbiter::new()).collect();
        let handles = arbiters.iter().map(Arbiter::handle).collect();
        Ok(RuntimeHandle::new(
            &self,
            handles,
            system.arbiter().clone(),
            Mode::Attached {
                arbiters: Mutex::new(arbiters),
            },
            None,
        ))
    }
}

/// State shared by the handle and the agents' incarnations.
pub(crate) struct Shared {
    pub(crate) directory: Directory,
    events: broadcast::Sender<LifecycleEvent>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    next_seq: AtomicU64,
    default_limit: usize,
    shutting_down: AtomicBool,
    metrics: Metrics,
    /// Metric handles by agent kind, resolved once per kind.
    agent_metrics: DashMap<Arc<str>, Arc<AgentMetrics>>,
}

impl Shared {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// The arbiter index a placement names.
    fn pick(&self, placement: Placement) -> Result<usize, SpawnError> {
        let count = self.arbiters.len();
        match placement {
            Placement::RoundRobin => Ok(self.next_arbiter.fetch_add(1, Ordering::Relaxed) % count),
            Placement::Arbiter(index) if index < count => Ok(index),
            Placement::Arbiter(index) => Err(SpawnError::NoSuchArbiter { index, count }),
        }
    }

    pub(crate) fn arbiter(&self, index: usize) -> ArbiterHandle {
        self.arbiters[index].clone()
    }

    pub(crate) fn emit(&self, event: LifecycleEvent) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    /// The metric handles of agents of `kind`.
    fn agent_metrics(&self, kind: &Arc<str>) -> Arc<AgentMetrics> {
        if let Some(found) = self.agent_metrics.get(kind) {
            return found.clone();
        }
        self.agent_metrics
            .entry(kind.clone())
            .or_insert_with(|| Arc::new(self.metrics.agent(kind)))
            .clone()
    }
}

impl Host for Shared {
    fn is_shutting_down(&self) -> bool {
        Shared::is_shutting_down(self)
    }

    fn emit(&self, event: LifecycleEvent) {
        Shared::emit(self, event)
    }

    fn unlist(&self, id: &AgentId, seq: u64) {
        self.directory.remove_slot(id, seq)
    }

    fn arbiter(&self, index: usize) -> ArbiterHandle {
        Shared::arbiter(self, index)
    }
}

enum Mode {
    Owned {
        system: System,
        thread: Mutex<Option<JoinHandle<()>>>,
        exited: Mutex<Option<oneshot::Receiver<()>>>,
    },
    Attached {
        arbiters: Mutex<Vec<Arbiter>>,
    },
}

struct HandleInner {
    shared: Arc<Shared>,
    /// Where shutdown runs: the system arbiter, which hosts no agents.
    control: ArbiterHandle,
    mode: Mode,
    /// Threads of this runtime, which must never join themselves.
    own_threads: Vec<ThreadId>,
    stopped: AtomicBool,
}

/// A handle to a running runtime. `Clone + Send + Sync + 'static`: keep it in application state.
///
/// Dropping the last handle without [`shutdown`](Self::shutdown) stops the runtime's threads
/// (agents are killed, not stopped gracefully) and joins them, unless it is dropped on one of
/// them.
#[derive(Clone)]
pub struct RuntimeHandle {
    inner: Arc<HandleInner>,
}

/// What [`RuntimeHandle::shutdown`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Agents that stopped gracefully, newest first.
    pub stopped: usize,
    /// Agents killed because the timeout ran out.
    pub killed: usize,
    /// Whether the timeout ran out.
    pub timed_out: bool,
}

impl RuntimeHandle {
    fn new(
        builder: &RuntimeBuilder,
        arbiters: Vec<ArbiterHandle>,
        control: ArbiterHandle,
        mode: Mode,
        system_thread: Option<ThreadId>,
    ) -> Self {
        let mut own_threads = thread_ids(&arbiters);
        own_threads.extend(system_thread);
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            directory: Directory::default(),
            events,
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
            default_limit: builder.in_flight_limit,
            shutting_down: AtomicBool::new(false),
            metrics: builder.metrics.clone(),
            agent_metrics: DashMap::new(),
        });
        if shared.metrics.receives() {
            control.spawn(sample_in_flight(shared.clone()));
        }
        RuntimeHandle {
            inner: Arc::new(HandleInner {
                shared,
                control,
                mode,
                own_threads,
                stopped: AtomicBool::new(false),
            }),
        }
    }

    /// Spawns an agent built by `factory` on the next arbiter (round robin).
    pub fn spawn<A, F>(&self, id: AgentId, factory: F) -> Result<AgentRef<A>, SpawnError>
    where
        A: Agent,
        F: FnOnce() -> A + Send + 'static,
    {
        self.spawn_with(id, SpawnOptions::default(), factory)
    }

    /// Spawns an agent with explicit placement and limits. The actor is built by `factory` on
    /// its arbiter's thread, so it need not be `Send`. Messages sent before it is built wait.
    pub fn spawn_with<A, F>(
        &self,
        id: AgentId,
        options: SpawnOptions,
        factory: F,
    ) -> Result<AgentRef<A>, SpawnError>
    where
        A: Agent,
        F: FnOnce() -> A + Send + 'static,
    {
        self.spawn_slot(id, options, None, factory)
            .map(AgentRef::from_slot)
    }

    /// Spawns an agent for a supervisor: `factory` builds a fresh actor for every start and
    /// restart, and `sink` hears of every exit that the supervisor did not cause. Returns the
    /// handle for callers and the [`Child`] for the supervisor.
    pub fn spawn_supervised<A, F>(
        &self,
        id: AgentId,
        options: SpawnOptions,
        factory: F,
        sink: ExitSink,
    ) -> Result<(AgentRef<A>, Arc<dyn Child>), SpawnError>
    where
        A: Agent,
        F: Fn() -> A + Send + Sync + 'static,
    {
        let factory: Arc<dyn Fn() -> A + Send + Sync> = Arc::new(factory);
        let first = factory.clone();
        let slot = self.spawn_slot(id, options, Some(sink), move || first())?;
        let child = SupervisedAgent {
            slot: slot.clone(),
            factory,
            host: self.inner.shared.clone(),
        };
        Ok((AgentRef::from_slot(slot), Arc::new(child)))
    }

    fn spawn_slot<A, F>(
        &self,
        id: AgentId,
        options: SpawnOptions,
        sink: Option<ExitSink>,
        factory: F,
    ) -> Result<Arc<Slot<A>>, SpawnError>
    where
        A: Agent,
        F: FnOnce() -> A + Send + 'static,
    {
        let shared = &self.inner.shared;
        if shared.is_shutting_down() {
            return Err(SpawnError::ShuttingDown);
        }
        let arbiter = shared.pick(options.placement)?;
        let limit = options
            .in_flight_limit
            .unwrap_or(shared.default_limit)
            .max(1);
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let metrics = shared.agent_metrics(&id.kind);
        let (slot, rx) = new_slot::<A>(
            id.clone(),
            seq,
            arbiter,
            limit,
            options.handler_deadline,
            sink,
            metrics,
        );
        shared
            .directory
            .insert(id, slot.clone())
            .map_err(SpawnError::AlreadyExists)?;
        start_incarnation(
            shared.clone(),
            slot.clone(),
            rx,
            &shared.arbiters[arbiter],
            factory,
        );
        Ok(slot)
    }

    /// Runs `future` on one of the runtime's arbiters, from any thread and any executor. The
    /// future has the arbiter's tokio timer and can use `actix::spawn`. Returns false if the
    /// runtime is stopping or the placement names no arbiter.
    pub fn spawn_task<F>(&self, placement: Placement, future: F) -> bool
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let shared = &self.inner.shared;
        if shared.is_shutting_down() {
            return false;
        }
        match shared.pick(placement) {
            Ok(index) => shared.arbiters[index].spawn(future),
            Err(_) => false,
        }
    }

    /// The arbiter the next round-robin placement would use, as a fixed placement: to put a
    /// group of agents and tasks together on one thread.
    pub fn next_placement(&self) -> Placement {
        let shared = &self.inner.shared;
        Placement::Arbiter(
            shared.next_arbiter.fetch_add(1, Ordering::Relaxed) % shared.arbiters.len(),
        )
    }

    /// The agents of this runtime, by id.
    pub fn directory(&self) -> &Directory {
        &self.inner.shared.directory
    }

    /// Lifecycle events of every agent from now on (started, exited). A receiver that falls more
    /// than 1024 events behind loses the oldest (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.inner.shared.events.subscribe()
    }

    /// How many arbiters (agent threads) the runtime has.
    pub fn arbiter_count(&self) -> usize {
        self.inner.shared.arbiters.len()
    }

    /// Where this runtime's metrics go; supervisors and runs record through it.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    /// Whether every arbiter (agent thread) runs a trivial job within `timeout`: a liveness
    /// probe. False once the runtime is shut down, or while a handler blocks an arbiter. Needs a
    /// tokio timer where it is awaited.
    pub async fn responsive(&self, timeout: Duration) -> bool {
        if self.inner.stopped.load(Ordering::Acquire) {
            return false;
        }
        let mut answers = Vec::with_capacity(self.inner.shared.arbiters.len());
        for arbiter in &self.inner.shared.arbiters {
            let (tx, rx) = oneshot::channel();
            let answer = move || {
                let _ = tx.send(());
            };
            if !arbiter.spawn_fn(answer) {
                return false;
            }
            answers.push(rx);
        }
        let all = futures_util::future::join_all(answers);
        match tokio::time::timeout(timeout, all).await {
            Ok(answers) => answers.iter().all(Result::is_ok),
            Err(_) => false,
        }
    }

    /// Stops every agent in reverse start order, each gracefully and one after the other, until
    /// `timeout` runs out; then kills those left, stops the runtime's threads and joins them.
    /// Can be awaited from any executor; later calls return an empty report at once.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let Some(report) = self.begin_shutdown(timeout) else {
            return ShutdownReport::default();
        };
        let report = report.await.unwrap_or_default();
        if let Some(exited) = self.stop_threads() {
            let _ = exited.await;
        }
        self.join_system_thread();
        report
    }

    /// [`shutdown`](Self::shutdown) for synchronous code (a plain `fn main`). Panics if called
    /// from inside an async runtime; await `shutdown` there.
    pub fn shutdown_blocking(&self, timeout: Duration) -> ShutdownReport {
        let Some(report) = self.begin_shutdown(timeout) else {
            return ShutdownReport::default();
        };
        let report = report.blocking_recv().unwrap_or_default();
        if let Some(exited) = self.stop_threads() {
            let _ = exited.blocking_recv();
        }
        self.join_system_thread();
        report
    }

    /// Runs the agent-stopping part of shutdown on the control arbiter, which has a timer.
    fn begin_shutdown(&self, timeout: Duration) -> Option<oneshot::Receiver<ShutdownReport>> {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return None;
        }
        let shared = self.inner.shared.clone();
        shared.shutting_down.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        self.inner.control.spawn(async move {
            let _ = tx.send(stop_agents(&shared, timeout).await);
        });
        Some(rx)
    }

    /// Stops the runtime's threads; the receiver fires once they have exited.
    fn stop_threads(&self) -> Option<oneshot::Receiver<()>> {
        match &self.inner.mode {
            Mode::Owned { system, exited, .. } => {
                system.stop();
                exited.lock().unwrap_or_else(|p| p.into_inner()).take()
            }
            Mode::Attached { arbiters } => {
                let arbiters =
                    std::mem::take(&mut *arbiters.lock().unwrap_or_else(|p| p.into_inner()));
                let (tx, rx) = oneshot::channel();
                // Joining blocks, so it happens on a short-lived thread of its own.
                thread::spawn(move || {
                    join_arbiters(arbiters);
                    let _ = tx.send(());
                });
                Some(rx)
            }
        }
    }

    fn join_system_thread(&self) {
        if let Mode::Owned { thread, .. } = &self.inner.mode {
            let handle = thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(handle) = handle {
                if !self.inner.on_own_thread() {
                    let _ = handle.join();
                }
            }
        }
    }
}

/// Sets each agent kind's in-flight gauge to the sum over its agents, every second, until the
/// runtime shuts down. Sampling keeps the gauge off the hot path: updated on every admission
/// and answer, one gauge per kind would be written by every caller's thread and every agent's.
async fn sample_in_flight(shared: Arc<Shared>) {
    while !shared.is_shutting_down() {
        let counts = shared.directory.in_flight_by_kind();
        for kind in shared.agent_metrics.iter() {
            let requests = counts.get(kind.key()).copied().unwrap_or(0);
            kind.value().in_flight(requests);
        }
        tokio::time::sleep(IN_FLIGHT_SAMPLE_INTERVAL).await;
    }
}

/// Stops agents newest first, each awaited before the next, within `timeout`.
async fn stop_agents(shared: &Shared, timeout: Duration) -> ShutdownReport {
    let deadline = tokio::time::Instant::from_std(Instant::now() + timeout);
    let agents = shared.directory.newest_first();
    let mut report = ShutdownReport::default();
    for (index, slot) in agents.iter().enumerate() {
        let control = request_stop(&**slot, StopRequest::Graceful);
        if tokio::time::timeout_at(deadline, control.wait_done())
            .await
            .is_ok()
        {
            report.stopped += 1;
            continue;
        }
        report.timed_out = true;
        for late in &agents[index..] {
            request_stop(&**late, StopRequest::Kill);
        }
        report.killed = agents.len() - index;
        break;
    }
    report
}

fn join_arbiters(arbiters: Vec<Arbiter>) {
    for arbiter in arbiters {
        arbiter.stop();
        let _ = arbiter.join();
    }
}

/// Asks each arbiter for its thread id.
fn thread_ids(arbiters: &[ArbiterHandle]) -> Vec<ThreadId> {
    let (tx, rx) = std::sync::mpsc::channel();
    for arbiter in arbiters {
        let tx = tx.clone();
        arbiter.spawn_fn(move || {
            let _ = tx.send(thread::current().id());
        });
    }
    drop(tx);
    rx.iter().collect()
}

impl HandleInner {
    fn on_own_thread(&self) -> bool {
        self.own_threads.contains(&thread::current().id())
    }
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.shutting_down.store(true, Ordering::Release);
        let on_own_thread = self.on_own_thread();
        match &self.mode {
            Mode::Owned { system, thread, .. } => {
                system.stop();
                let handle = thread.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let (Some(handle), false) = (handle, on_own_thread) {
                    let _ = handle.join();
                }
            }
            Mode::Attached { arbiters } => {
                let arbiters =
                    std::mem::take(&mut *arbiters.lock().unwrap_or_else(|p| p.into_inner()));
                if on_own_thread {
                    for arbiter in &arbiters {
                        arbiter.stop();
                    }
                } else {
                    join_arbiters(arbiters);
                }
            }
        }
    }
}

/// Where and how to run a spawned agent.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// Which arbiter runs it.
    pub placement: Placement,
    /// Its in-flight limit; `None` uses the runtime's default.
    pub in_flight_limit: Option<usize>,
    /// Watchdog: a handler still running after this long counts as a failure. An async handler
    /// is cancelled (the agent is killed; its caller gets `Timeout`); a sync handler cannot be
    /// interrupted, so the agent fails once it returns. `None`: no watchdog.
    pub handler_deadline: Option<Duration>,
}

/// Which arbiter an agent runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Placement {
    /// The next arbiter in turn.
    #[default]
    RoundRobin,
    /// This arbiter (0-based), e.g. another agent's [`AgentRef::arbiter_index`] to keep two
    /// chatty agents on one thread.
    Arbiter(usize),
}
