//! The state behind an [`AgentRef`](crate::AgentRef): a slot that outlives any one actor
//! instance, and the future that runs one instance ("incarnation") of the actor.
//!
//! The slot holds the current actix address, the admission counter and the agent's state. A
//! restart builds a fresh actor and swaps the address in the slot, so handles stay valid.
//! The incarnation future wraps actix's `ContextFut`: it polls it under `catch_unwind`, stops it
//! on request without going through the mailbox, and reports how it ended.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::dev::channel;
use actix::dev::ContextFut;
use actix::{ActorContext, Addr, ArbiterHandle, Context};
use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;
use tokio::sync::{oneshot, Notify};

use crate::agent_id::AgentId;
use crate::error::AgentError;
use crate::events::{ChildExit, Exit, ExitSink, LifecycleEvent};
use crate::panic_capture::payload_message;
use crate::telemetry::AgentMetrics;
use crate::Agent;

/// What an incarnation needs from the runtime that runs it. The runtime's shared state
/// implements it; this module names only the trait, so it does not depend on the runtime.
pub(crate) trait Host: Send + Sync {
    /// Whether the runtime is shutting down (every exit is then final).
    fn is_shutting_down(&self) -> bool;
    /// Publishes a lifecycle event to the runtime's subscribers.
    fn emit(&self, event: LifecycleEvent);
    /// Unlists agent `id` from the directory if it still names the slot numbered `seq`.
    fn unlist(&self, id: &AgentId, seq: u64);
    /// The arbiter numbered `index`.
    fn arbiter(&self, index: usize) -> ArbiterHandle;
}

/// The agent handles messages.
const RUNNING: u8 = 0;
/// An incarnation failed and the supervisor has not yet started the next one.
const RESTARTING: u8 = 1;
/// The agent is gone for good.
const STOPPED: u8 = 2;
/// The agent was halted; it handles nothing until resumed.
const HALTED: u8 = 3;

/// What a stop request asks of an incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum StopRequest {
    None = 0,
    /// `ctx.stop()`: the actor's `stopping` hook may keep it alive.
    Graceful = 1,
    /// `ctx.terminate()`: unconditional; `stopped` still runs.
    Terminate = 2,
    /// Drop the actor now.
    Kill = 3,
}

/// What the end of an incarnation means for its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Disposition {
    /// The agent is gone for good: the slot says `Stopped` and leaves the directory.
    Final = 0,
    /// A supervised agent failed or exited: the slot says `Restarting` and the supervisor is told.
    Report = 1,
    /// Its supervisor stopped it (to restart it, or to halt it) and has set the slot's state.
    Quiet = 2,
}

/// Controls one incarnation: stop requests, how it failed, and whether it has ended.
pub(crate) struct Control {
    request: AtomicU8,
    disposition: AtomicU8,
    waker: AtomicWaker,
    failure: Mutex<Option<Exit>>,
    /// The actor has been polled once: its `started` hook has run.
    ready: AtomicBool,
    done: AtomicBool,
    /// Wakes those waiting for `ready` or `done`.
    done_notify: Notify,
    started: Instant,
}

impl Control {
    fn new(disposition: Disposition) -> Self {
        Control {
            request: AtomicU8::new(StopRequest::None as u8),
            disposition: AtomicU8::new(disposition as u8),
            waker: AtomicWaker::new(),
            failure: Mutex::new(None),
            ready: AtomicBool::new(false),
            done: AtomicBool::new(false),
            done_notify: Notify::new(),
            started: Instant::now(),
        }
    }

    pub(crate) fn set_disposition(&self, disposition: Disposition) {
        self.disposition.store(disposition as u8, Ordering::Release);
    }

    fn disposition(&self) -> Disposition {
        match self.disposition.load(Ordering::Acquire) {
            0 => Disposition::Final,
            1 => Disposition::Report,
            _ => Disposition::Quiet,
        }
    }

    /// Asks the incarnation to stop; a stronger request overrides a weaker one.
    pub(crate) fn request(&self, request: StopRequest) {
        self.request.fetch_max(request as u8, Ordering::AcqRel);
        self.waker.wake();
    }

    fn requested(&self) -> StopRequest {
        match self.request.load(Ordering::Acquire) {
            0 => StopRequest::None,
            1 => StopRequest::Graceful,
            2 => StopRequest::Terminate,
            _ => StopRequest::Kill,
        }
    }

    /// The watchdog saw a handler run past `deadline`: the incarnation fails and is killed.
    pub(crate) fn overran(&self, deadline: Duration) {
        self.record_failure(Exit::Failed {
            reason: format!("watchdog: a handler ran past its {deadline:?} deadline"),
        });
        self.request(StopRequest::Kill);
    }

    /// Records the panic that ends this incarnation (the first failure recorded wins).
    pub(crate) fn record_panic(&self, message: String) {
        self.record_failure(Exit::Panicked { message });
    }

    /// Records how this incarnation failed (the first failure recorded wins).
    pub(crate) fn record_failure(&self, exit: Exit) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(exit);
    }

    fn failure(&self) -> Option<Exit> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn panic_message(&self) -> Option<String> {
        match self.failure() {
            Some(Exit::Panicked { message }) => Some(message),
            _ => None,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn mark_done(&self) {
        self.done.store(true, Ordering::Release);
        self.done_notify.notify_waiters();
    }

    fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.done_notify.notify_waiters();
        }
    }

    /// Resolves once the actor has started (its `started` hook has run) or has ended.
    pub(crate) async fn wait_ready(&self) {
        loop {
            let notified = self.done_notify.notified();
            if self.ready.load(Ordering::Acquire) || self.is_done() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once the incarnation has ended.
    pub(crate) async fn wait_done(&self) {
        loop {
            let notified = self.done_notify.notified();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }
}

/// The part of a slot that does not depend on the actor type.
pub(crate) struct SlotCore {
    pub(crate) id: AgentId,
    /// Start order across the runtime; shutdown stops the highest first.
    pub(crate) seq: u64,
    pub(crate) arbiter: usize,
    limit: usize,
    /// The watchdog's deadline for one handler, if any.
    pub(crate) handler_deadline: Option<Duration>,
    in_flight: AtomicUsize,
    /// A graceful halt waits for the in-flight count to reach zero; only then is `idle` notified.
    draining: AtomicBool,
    idle: Notify,
    state: AtomicU8,
    halt_reason: Mutex<String>,
    incarnations: AtomicU64,
    /// The supervisor's inbox, for supervised agents.
    sink: Option<ExitSink>,
    /// The metric handles of the agent's kind.
    pub(crate) metrics: Arc<AgentMetrics>,
}

impl SlotCore {
    /// Admits one more request, or says why not.
    fn admit(&self) -> Result<(), AgentError> {
        let state = self.state.load(Ordering::Acquire);
        if state != RUNNING {
            // The state seen here, not a second read: it may change in between.
            return Err(self.error_for(state));
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.metrics.overloaded();
            return Err(AgentError::Overloaded {
                agent: self.id.clone(),
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// The error for a message that the agent, in its present state, did not handle.
    pub(crate) fn state_error(&self) -> AgentError {
        self.error_for(self.state.load(Ordering::Acquire))
    }

    /// The error for an unhandled message when the slot is in `state`. A slot running again
    /// means a supervisor restarted the agent after the message was lost: retrying is safe.
    fn error_for(&self, state: u8) -> AgentError {
        let agent = self.id.clone();
        match state {
            RESTARTING | RUNNING => AgentError::Restarting { agent },
            HALTED => AgentError::Halted {
                agent,
                reason: self
                    .halt_reason
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            },
            _ => AgentError::Stopped { agent },
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    pub(crate) fn is_running(&self) -> bool {
        self.state.load(Ordering::Acquire) == RUNNING
    }

    pub(crate) fn set_restarting(&self) {
        self.state.store(RESTARTING, Ordering::Release);
    }

    pub(crate) fn set_stopped(&self) {
        self.state.store(STOPPED, Ordering::Release);
    }

    pub(crate) fn set_running(&self) {
        self.draining.store(false, Ordering::Release);
        self.state.store(RUNNING, Ordering::Release);
    }

    /// Resolves once no admitted request is left (they finish, or are refused when their turn
    /// comes because the agent is halted).
    pub(crate) async fn drained(&self) {
        self.draining.store(true, Ordering::Release);
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn is_halted(&self) -> bool {
        self.state.load(Ordering::Acquire) == HALTED
    }

    pub(crate) fn set_halted(&self, reason: &str) {
        *self.halt_reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.to_owned();
        self.state.store(HALTED, Ordering::Release);
    }

    /// The disposition a new incarnation of this agent starts with.
    fn default_disposition(&self) -> Disposition {
        if self.sink.is_some() {
            Disposition::Report
        } else {
            Disposition::Final
        }
    }
}

/// The current incarnation: where to send, and how to stop it.
pub(crate) struct Live<A: Agent> {
    pub(crate) addr: Addr<A>,
    pub(crate) control: Arc<Control>,
}

/// Everything behind an `AgentRef<A>`.
pub(crate) struct Slot<A: Agent> {
    pub(crate) core: SlotCore,
    /// Swapped on restart; read on every message without taking a lock.
    pub(crate) live: ArcSwap<Live<A>>,
}

impl<A: Agent> Slot<A> {
    /// The control of the incarnation running now.
    pub(crate) fn current_control(&self) -> Arc<Control> {
        self.live.load().control.clone()
    }

    /// Counts one request in, or says why not. The returned guard answers the caller once.
    pub(crate) fn admit<R>(
        self: &Arc<Self>,
        reply: Option<oneshot::Sender<Result<R, AgentError>>>,
    ) -> Result<Admitted<A, R>, AgentError> {
        self.core.admit()?;
        Ok(Admitted {
            slot: self.clone(),
            reply,
        })
    }

    /// The error for an answer that was lost: the handler panicked (its future on a task of its
    /// own, or the whole actor), or the agent stopped before answering.
    pub(crate) fn lost_answer(&self, control: &Control) -> AgentError {
        if let Some(message) = control.panic_message() {
            return AgentError::Panicked {
                agent: self.core.id.clone(),
                message,
            };
        }
        if control.is_done() || control.requested() != StopRequest::None {
            return self.core.state_error();
        }
        // The actor is alive but the answer is gone: only an async handler's future, which actix
        // polls on a separate task, can lose it that way, by panicking.
        let message = crate::panic_capture::take_last_panic()
            .unwrap_or_else(|| "an async handler panicked (message unavailable)".to_owned());
        control.record_panic(message.clone());
        control.request(StopRequest::Terminate);
        AgentError::Panicked {
            agent: self.core.id.clone(),
            message,
        }
    }
}

/// One admitted request. It frees its place under the in-flight limit and answers the caller
/// exactly once: with [`answer`](Self::answer), or, if dropped unanswered (its message was
/// dropped with a dead mailbox), with the error the agent's state gives.
pub(crate) struct Admitted<A: Agent, R> {
    pub(crate) slot: Arc<Slot<A>>,
    reply: Option<oneshot::Sender<Result<R, AgentError>>>,
}

impl<A: Agent, R> Admitted<A, R> {
    /// Frees the place first, so a caller woken by the answer finds it free.
    pub(crate) fn answer(mut self, answer: Result<R, AgentError>) {
        let reply = self.reply.take();
        drop(self);
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }
}

impl<A: Agent, R> Drop for Admitted<A, R> {
    fn drop(&mut self) {
        let core = &self.slot.core;
        if core.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
            && core.draining.load(Ordering::Acquire)
        {
            core.idle.notify_waiters();
        }
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(core.state_error()));
        }
    }
}

/// A slot without its actor type: what the directory and shutdown work with.
pub(crate) trait ErasedSlot: Send + Sync + 'static {
    fn seq(&self) -> u64;
    fn in_flight(&self) -> usize;
    fn control(&self) -> Arc<Control>;
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<A: Agent> ErasedSlot for Slot<A> {
    fn seq(&self) -> u64 {
        self.core.seq
    }
    fn in_flight(&self) -> usize {
        self.core.in_flight()
    }
    fn control(&self) -> Arc<Control> {
        self.current_control()
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// Asks the running incarnation of an agent to stop for good and returns its control, to await
/// the end.
pub(crate) fn request_stop(slot: &dyn ErasedSlot, request: StopRequest) -> Arc<Control> {
    let control = slot.control();
    control.set_disposition(Disposition::Final);
    control.request(request);
    control
}

/// Creates a slot whose first incarnation starts on `arbiter`.
pub(crate) fn new_slot<A: Agent>(
    id: AgentId,
    seq: u64,
    arbiter: usize,
    limit: usize,
    handler_deadline: Option<Duration>,
    sink: Option<ExitSink>,
    metrics: Arc<AgentMetrics>,
) -> (Arc<Slot<A>>, channel::AddressReceiver<A>) {
    let disposition = if sink.is_some() {
        Disposition::Report
    } else {
        Disposition::Final
    };
    let (tx, rx) = channel::channel::<A>(limit.min(1024));
    let slot = Arc::new(Slot {
        core: SlotCore {
            id,
            seq,
            arbiter,
            limit,
            handler_deadline,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
            state: AtomicU8::new(RUNNING),
            halt_reason: Mutex::new(String::new()),
            incarnations: AtomicU64::new(0),
            sink,
            metrics,
        },
        live: ArcSwap::from_pointee(Live {
            addr: Addr::new(tx),
            control: Arc::new(Control::new(disposition)),
        }),
    });
    (slot, rx)
}

impl<A: Agent> Slot<A> {
    /// Gives the slot a fresh mailbox and control for a new incarnation, and returns the mailbox.
    pub(crate) fn renew(&self) -> channel::AddressReceiver<A> {
        let (tx, rx) = channel::channel::<A>(self.core.limit.min(1024));
        let previous = self.live.swap(Arc::new(Live {
            addr: Addr::new(tx),
            control: Arc::new(Control::new(self.core.default_disposition())),
        }));
        // Never two incarnations at once: one still running is killed quietly.
        if !previous.control.is_done() {
            previous.control.set_disposition(Disposition::Quiet);
            previous.control.request(StopRequest::Kill);
        }
        rx
    }
}

/// Starts the incarnation whose mailbox is `rx` on `arbiter`: the actor is built there by
/// `factory` (actors need not be `Send`).
pub(crate) fn start_incarnation<A, F>(
    host: Arc<dyn Host>,
    slot: Arc<Slot<A>>,
    rx: channel::AddressReceiver<A>,
    arbiter: &ArbiterHandle,
    factory: F,
) where
    A: Agent,
    F: FnOnce() -> A + Send + 'static,
{
    let control = slot.current_control();
    arbiter.spawn_fn(move || {
        let incarnation = slot.core.incarnations.fetch_add(1, Ordering::AcqRel);
        let mut run = Incarnation {
            fut: None,
            control,
            slot,
            host,
            graceful_sent: false,
        };
        match catch_unwind(AssertUnwindSafe(factory)) {
            Ok(actor) => {
                run.fut = Some(Context::with_receiver(rx).into_future(actor));
                run.host.emit(LifecycleEvent::Started {
                    agent: run.slot.core.id.clone(),
                    incarnation,
                });
                actix::spawn(run);
            }
            Err(payload) => {
                let message = payload_message(&*payload);
                run.control.record_panic(message.clone());
                run.finish(Exit::Panicked { message });
            }
        }
    });
}

/// Runs one incarnation of an actor on its arbiter.
struct Incarnation<A: Agent> {
    fut: Option<ContextFut<A, Context<A>>>,
    control: Arc<Control>,
    slot: Arc<Slot<A>>,
    host: Arc<dyn Host>,
    graceful_sent: bool,
}

impl<A: Agent> Incarnation<A> {
    /// Records how the incarnation ended. The slot's state is set before the mailbox is dropped,
    /// so a caller whose message was still queued learns the right reason.
    fn finish(&mut self, exit: Exit) {
        let core = &self.slot.core;
        if let Exit::Panicked { .. } = exit {
            core.metrics.panicked();
        }
        let disposition = if self.host.is_shutting_down() {
            Disposition::Final
        } else {
            self.control.disposition()
        };
        match disposition {
            Disposition::Final => {
                core.set_stopped();
                self.host.unlist(&core.id, core.seq);
            }
            Disposition::Report => {
                let _ = core.state.compare_exchange(
                    RUNNING,
                    RESTARTING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            Disposition::Quiet => {}
        }
        if let Some(fut) = self.fut.take() {
            // Dropping the context runs the actor's stop hooks; a panic there changes nothing.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(fut)));
        }
        self.control.mark_done();
        self.host.emit(LifecycleEvent::Exited {
            agent: core.id.clone(),
            exit: exit.clone(),
            final_exit: disposition == Disposition::Final,
        });
        if let (Disposition::Report, Some(sink)) = (disposition, &core.sink) {
            sink(ChildExit {
                agent: core.id.clone(),
                exit,
                ran_for: self.control.started.elapsed(),
            });
        }
    }

    /// How the incarnation ended when actix reports that it stopped.
    fn recorded_exit(&self) -> Exit {
        if let Some(failure) = self.control.failure() {
            failure
        } else if self.control.requested() == StopRequest::Kill {
            Exit::Killed
        } else {
            Exit::Normal
        }
    }
}

impl<A: Agent> Future for Incarnation<A> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.control.waker.register(cx.waker());
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(());
        };
        match this.control.requested() {
            StopRequest::Kill => {
                // A failure recorded before the kill (the watchdog's) is how it ended.
                let exit = this.control.failure().unwrap_or(Exit::Killed);
                this.finish(exit);
                return Poll::Ready(());
            }
            StopRequest::Terminate => fut.ctx().terminate(),
            StopRequest::Graceful if !this.graceful_sent => {
                this.graceful_sent = true;
                fut.ctx().stop();
            }
            _ => {}
        }
        let _current = CurrentControl::enter(&this.control);
        let polled = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *fut).poll(cx)));
        this.control.mark_ready();
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                let exit = this.recorded_exit();
                this.finish(exit);
                Poll::Ready(())
            }
            Err(payload) => {
                let message = payload_message(&*payload);
                this.control.record_panic(message.clone());
                this.finish(Exit::Panicked { message });
                Poll::Ready(())
            }
        }
    }
}

impl<A: Agent> Drop for Incarnation<A> {
    /// The arbiter is stopping with the actor still alive (the runtime was dropped or shut down
    /// past its timeout): the actor is killed.
    fn drop(&mut self) {
        if self.fut.is_some() {
            self.finish(Exit::Killed);
        }
    }
}

thread_local! {
    /// The control of the incarnation being polled on this thread, for [`fail`].
    static CURRENT: std::cell::RefCell<Option<Arc<Control>>> = const { std::cell::RefCell::new(None) };
}

/// Marks an incarnation as the one running on this thread while its actor is polled.
struct CurrentControl(Option<Arc<Control>>);

impl CurrentControl {
    fn enter(control: &Arc<Control>) -> Self {
        CurrentControl(CURRENT.with(|c| c.replace(Some(control.clone()))))
    }
}

impl Drop for CurrentControl {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// Stops the agent whose handler (or hook) is running, as a failure: it exits with
/// [`Exit::Failed`], which its supervisor treats like a crash. A supervisor escalates this way.
pub fn fail<A: Agent>(ctx: &mut Context<A>, reason: impl Into<String>) {
    let reason = reason.into();
    CURRENT.with(|c| {
        if let Some(control) = &*c.borrow() {
            control.record_failure(Exit::Failed { reason });
        }
    });
    ctx.terminate();
}
