//! `AgentRef<A>`: the stable, typed handle users call agents through.
//!
//! Every message travels inside a [`Call`], a closure the agent runs on its own thread. The
//! closure calls the user's ordinary actix `Handler<M>` under `catch_unwind`, inside the
//! sender's span and run, and answers on a oneshot channel of ours; so a panic becomes an
//! [`AgentError::Panicked`] answer instead of a silently closed mailbox.

use std::any::type_name;
use std::future::{Future, IntoFuture};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use actix::dev::MessageResponse;
use actix::{Actor, Addr, Context, Handler, Message};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::agent_id::AgentId;
use crate::envelope::Envelope;
use crate::error::AgentError;
use crate::slot::{request_stop, Admitted, ErasedSlot, Slot, StopRequest};
use crate::Agent;

/// A message as the runtime delivers it: a job the agent runs on its own thread.
///
/// Users never build one; an agent handles it through the impl that [`agent!`](crate::agent)
/// writes.
pub struct Call<A: Actor<Context = Context<A>>>(Box<Job<A>>);

/// The work a [`Call`] carries.
type Job<A> = dyn FnOnce(&mut A, &mut Context<A>) + Send;

impl<A: Actor<Context = Context<A>>> Message for Call<A> {
    type Result = ();
}

impl<A: Actor<Context = Context<A>>> Call<A> {
    /// Runs the job against the agent. Called by the `Handler<Call<Self>>` impl of `agent!`.
    pub fn run(self, agent: &mut A, ctx: &mut Context<A>) {
        (self.0)(agent, ctx)
    }
}

/// A typed, cloneable, `Send + Sync` handle to an agent.
///
/// It stays valid when a supervisor restarts the agent (the address behind it is swapped), and
/// it applies admission control: past the agent's in-flight limit a call fails at once with
/// [`AgentError::Overloaded`], so nothing queues without bound.
pub struct AgentRef<A: Agent> {
    slot: Arc<Slot<A>>,
}

impl<A: Agent> Clone for AgentRef<A> {
    fn clone(&self) -> Self {
        AgentRef {
            slot: self.slot.clone(),
        }
    }
}

impl<A: Agent> std::fmt::Debug for AgentRef<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRef")
            .field("id", &self.slot.core.id)
            .field("in_flight", &self.slot.core.in_flight())
            .finish()
    }
}

impl<A: Agent> AgentRef<A> {
    pub(crate) fn from_slot(slot: Arc<Slot<A>>) -> Self {
        AgentRef { slot }
    }

    /// The agent's id.
    pub fn id(&self) -> &AgentId {
        &self.slot.core.id
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.slot.core.in_flight()
    }

    /// The most requests this agent accepts at once.
    pub fn in_flight_limit(&self) -> usize {
        self.slot.core.limit()
    }

    /// Whether the agent accepts messages now.
    pub fn is_running(&self) -> bool {
        self.slot.core.is_running()
    }

    /// The index of the arbiter (thread) the agent runs on; use it as a placement hint to put
    /// chatty agents together.
    pub fn arbiter_index(&self) -> usize {
        self.slot.core.arbiter
    }

    /// The raw actix address of the current incarnation. Messages sent through it bypass
    /// admission control and panic capture, and it is closed for good after a restart: prefer
    /// [`ask`](Self::ask) and [`tell`](Self::tell).
    pub fn addr(&self) -> Addr<A> {
        self.slot.live.load().addr.clone()
    }

    /// Sends `msg` and awaits the answer. Await it directly, or set options first:
    /// `agent.ask(msg).timeout(Duration::from_secs(1)).await`.
    pub fn ask<M>(&self, msg: M) -> Ask<'_, A, M>
    where
        A: Handler<M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        Ask {
            agent: self,
            msg,
            timeout: None,
            envelope: None,
        }
    }

    /// Sends `msg` without waiting for an answer. Fails at once if the agent is overloaded,
    /// restarting, halted or stopped; a panic while handling it stops the agent like any other.
    pub fn tell<M>(&self, msg: M) -> Result<(), AgentError>
    where
        A: Handler<M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.dispatch(msg, Envelope::current(), None)
    }

    /// Stops the agent for good (its `stopping` hook may delay it) and waits until it has stopped.
    pub async fn stop(&self) {
        request_stop(&*self.slot as &dyn ErasedSlot, StopRequest::Graceful)
            .wait_done()
            .await;
    }

    fn dispatch<M>(
        &self,
        msg: M,
        envelope: Envelope,
        reply: Option<oneshot::Sender<Result<M::Result, AgentError>>>,
    ) -> Result<(), AgentError>
    where
        A: Handler<M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let admitted = self.slot.admit(reply)?;
        let call = Call(Box::new(move |agent: &mut A, ctx: &mut Context<A>| {
            handle(agent, ctx, msg, envelope, admitted)
        }));
        // `do_send` ignores actix's mailbox capacity; the in-flight limit above is the bound.
        self.slot.live.load().addr.do_send(call);
        Ok(())
    }
}

/// Runs `<A as Handler<M>>::handle` for one message and routes its answer, or its panic.
fn handle<A, M>(
    agent: &mut A,
    ctx: &mut Context<A>,
    msg: M,
    envelope: Envelope,
    admitted: Admitted<A, M::Result>,
) where
    A: Agent + Handler<M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    // Halted while it waited in the mailbox: it never starts.
    if admitted.slot.core.is_halted() {
        let refused = admitted.slot.core.state_error();
        return admitted.answer(Err(refused));
    }
    let span = handler_span::<M>(&envelope.span, &admitted.slot.core.id);
    let _entered = span.enter();
    let _scope = envelope.enter_scope();
    let (answer_tx, mut answer_rx) = oneshot::channel::<M::Result>();
    let deadline = admitted.slot.core.handler_deadline;
    // The clock is read only when someone uses the time: the watchdog or a metrics recorder.
    let began = (deadline.is_some() || admitted.slot.core.metrics.timed).then(Instant::now);
    let handled = catch_unwind(AssertUnwindSafe(|| {
        let response = <A as Handler<M>>::handle(agent, msg, ctx);
        response.handle(ctx, Some(answer_tx));
    }));
    if let Err(payload) = handled {
        return panicked(admitted, ctx, &*payload, began);
    }
    if let Ok(answer) = answer_rx.try_recv() {
        let took = began.map(|b| b.elapsed());
        admitted.slot.core.metrics.handled(took);
        // A sync handler cannot be interrupted; one that overran fails its agent afterwards.
        if let (Some(deadline), Some(took)) = (deadline, took) {
            if took > deadline {
                admitted.slot.current_control().overran(deadline);
            }
        }
        return admitted.answer(Ok(answer));
    }
    await_answer(admitted, answer_rx, deadline, began);
}

/// A handler panicked: the agent stops, and the caller is answered `Panicked`.
fn panicked<A: Agent, R: Send + 'static>(
    admitted: Admitted<A, R>,
    ctx: &mut Context<A>,
    payload: &(dyn std::any::Any + Send),
    began: Option<Instant>,
) {
    admitted
        .slot
        .core
        .metrics
        .handled(began.map(|b| b.elapsed()));
    let message = crate::panic_capture::payload_message(payload);
    admitted
        .slot
        .current_control()
        .record_panic(message.clone());
    actix::ActorContext::terminate(ctx);
    let agent = admitted.slot.core.id.clone();
    admitted.answer(Err(AgentError::Panicked { agent, message }));
}

/// An async answer (a future on the actor or on a task of its own): waits for it on the
/// arbiter, so a panic in that future is noticed even when nobody awaits the reply, and the
/// watchdog can cancel it.
fn await_answer<A: Agent, R: Send + 'static>(
    admitted: Admitted<A, R>,
    answer_rx: oneshot::Receiver<R>,
    deadline: Option<Duration>,
    began: Option<Instant>,
) {
    let control = admitted.slot.current_control();
    actix::spawn(async move {
        let answer = match deadline {
            None => answer_rx
                .await
                .map_err(|_| admitted.slot.lost_answer(&control)),
            Some(deadline) => match tokio::time::timeout(deadline, answer_rx).await {
                Ok(answer) => answer.map_err(|_| admitted.slot.lost_answer(&control)),
                Err(_) => {
                    control.overran(deadline);
                    Err(AgentError::Timeout {
                        agent: admitted.slot.core.id.clone(),
                        after: deadline,
                    })
                }
            },
        };
        admitted
            .slot
            .core
            .metrics
            .handled(began.map(|b| b.elapsed()));
        admitted.answer(answer);
    });
}

/// The span a handler runs in: a child of the sender's span. When that span level is disabled,
/// the handler runs in the sender's span itself, so parenting holds at any log level.
fn handler_span<M>(parent: &tracing::Span, agent: &AgentId) -> tracing::Span {
    let span = tracing::debug_span!(
        parent: parent,
        "handle",
        agent.kind = &*agent.kind,
        agent.key = &*agent.key,
        message = type_name::<M>()
    );
    if span.is_disabled() {
        parent.clone()
    } else {
        span
    }
}

/// A request being prepared: set a timeout or an envelope, then `.await` it.
#[must_use = "an ask does nothing until it is awaited"]
pub struct Ask<'a, A: Agent, M> {
    agent: &'a AgentRef<A>,
    msg: M,
    timeout: Option<Duration>,
    envelope: Option<Envelope>,
}

impl<A, M> Ask<'_, A, M>
where
    A: Agent + Handler<M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    /// Gives up waiting after `after` with [`AgentError::Timeout`] (the message may still be
    /// handled). Needs a tokio runtime with the time driver on the awaiting thread.
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }

    /// Sends with this envelope instead of [`Envelope::current`].
    pub fn envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = Some(envelope);
        self
    }

    /// Sends and blocks this thread until the answer (or the timeout): for synchronous code such
    /// as a plain `fn main`. Do not call it on an async runtime's thread; `.await` there.
    pub fn wait(mut self) -> Result<M::Result, AgentError> {
        let deadline = self
            .timeout
            .take()
            .map(|after| (after, Instant::now() + after));
        let mut reply = self.into_future();
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let mut cx = TaskContext::from_waker(&waker);
        loop {
            if let Poll::Ready(answer) = Pin::new(&mut reply).poll(&mut cx) {
                return answer;
            }
            match deadline {
                None => thread::park(),
                Some((after, at)) => {
                    let now = Instant::now();
                    if now >= at {
                        return Err(AgentError::Timeout {
                            agent: reply.slot.core.id.clone(),
                            after,
                        });
                    }
                    thread::park_timeout(at - now);
                }
            }
        }
    }
}

/// Wakes a thread blocked in [`Ask::wait`].
struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

impl<A, M> IntoFuture for Ask<'_, A, M>
where
    A: Agent + Handler<M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    type Output = Result<M::Result, AgentError>;
    type IntoFuture = Reply<A, M::Result>;

    fn into_future(self) -> Self::IntoFuture {
        let envelope = self.envelope.unwrap_or_else(Envelope::current);
        let (tx, rx) = oneshot::channel();
        let sent = self.agent.dispatch(self.msg, envelope, Some(tx));
        Reply {
            slot: self.agent.slot.clone(),
            state: match sent {
                Ok(()) => ReplyState::Waiting(rx),
                Err(e) => ReplyState::Failed(Some(e)),
            },
            timeout: self
                .timeout
                .map(|after| (after, Box::pin(tokio::time::sleep(after)))),
        }
    }
}

enum ReplyState<R> {
    Waiting(oneshot::Receiver<Result<R, AgentError>>),
    Failed(Option<AgentError>),
}

/// The answer to an [`Ask`]: a `Send` future that resolves to the handler's result.
pub struct Reply<A: Agent, R> {
    slot: Arc<Slot<A>>,
    state: ReplyState<R>,
    timeout: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl<A: Agent, R> Future for Reply<A, R> {
    type Output = Result<R, AgentError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let rx = match &mut this.state {
            ReplyState::Failed(e) => {
                return Poll::Ready(Err(e.take().expect("Reply polled after completion")))
            }
            ReplyState::Waiting(rx) => rx,
        };
        if let Poll::Ready(answer) = Pin::new(rx).poll(cx) {
            // A dropped sender means the message was never handled: the slot says why.
            return Poll::Ready(answer.unwrap_or_else(|_| Err(this.slot.core.state_error())));
        }
        if let Some((after, sleep)) = &mut this.timeout {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(AgentError::Timeout {
                    agent: this.slot.core.id.clone(),
                    after: *after,
                }));
            }
        }
        Poll::Pending
    }
}
