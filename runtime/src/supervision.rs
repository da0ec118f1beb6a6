//! What a supervisor needs from the runtime: agents it can restart in place (a fresh actor from
//! a factory, the same [`AgentRef`](crate::AgentRef)), stop without being told of it, halt and
//! resume, and whose failures it hears about.
//!
//! The restart policy itself (strategies, intensity, backoff) lives in `impresario-supervisor`;
//! this module is the mechanism.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::agent_id::AgentId;
use crate::slot::{start_incarnation, Disposition, Host, Slot, StopRequest};
use crate::Agent;

pub use crate::events::{ChildExit, ExitSink};

/// How a supervisor stops a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Kill at once: the actor is dropped (its `stopped` hook still runs).
    Brutal,
    /// Stop gracefully, and kill if it has not stopped within this time.
    Timeout(Duration),
}

/// A future a [`Child`] returns.
pub type ChildFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A supervised agent as its supervisor sees it, whatever its actor type.
pub trait Child: Send + Sync {
    /// The agent's id.
    fn id(&self) -> &AgentId;
    /// Starts a fresh incarnation built by the agent's factory. Calls are accepted again.
    /// The future resolves once the new actor has started (its `started` hook has run).
    fn restart(&self) -> ChildFuture;
    /// Resolves once the running incarnation has started (or ended).
    fn ready(&self) -> ChildFuture;
    /// Stops the running incarnation without reporting it; until the next `restart`, calls get
    /// `Restarting`. Resolves once it has ended. Needs a tokio timer (an actix thread has one).
    fn stop(&self, shutdown: Shutdown) -> ChildFuture;
    /// Gone for good: the incarnation is killed if alive, the agent leaves the directory at
    /// once (its id can be reused) and calls get `Stopped`.
    fn remove(&self);
    /// Halts it without going through its mailbox: from now on calls get `Halted(reason)`, and
    /// messages still queued are answered `Halted`. With no `grace`, the running incarnation is
    /// killed at once, aborting its in-flight actor futures; with a grace period it may finish
    /// what it is doing (a graceful stop) and is killed when the period runs out. `resume`
    /// restarts it with a fresh actor.
    fn halt(&self, reason: &str, grace: Option<Duration>);
    /// Restarts a halted agent with a fresh actor; does nothing if it is not halted.
    fn resume(&self);
    /// Whether it accepts calls now.
    fn is_running(&self) -> bool;
}

/// The [`Child`] behind a supervised `AgentRef<A>`.
pub(crate) struct SupervisedAgent<A: Agent> {
    pub(crate) slot: Arc<Slot<A>>,
    pub(crate) factory: Arc<dyn Fn() -> A + Send + Sync>,
    pub(crate) host: Arc<dyn Host>,
}

impl<A: Agent> Child for SupervisedAgent<A> {
    fn id(&self) -> &AgentId {
        &self.slot.core.id
    }

    fn restart(&self) -> ChildFuture {
        if self.host.is_shutting_down() {
            return Box::pin(std::future::ready(()));
        }
        let rx = self.slot.renew();
        self.slot.core.set_running();
        let factory = self.factory.clone();
        let arbiter = &self.host.arbiter(self.slot.core.arbiter);
        start_incarnation(
            self.host.clone(),
            self.slot.clone(),
            rx,
            arbiter,
            move || factory(),
        );
        self.ready()
    }

    fn ready(&self) -> ChildFuture {
        let control = self.slot.current_control();
        Box::pin(async move { control.wait_ready().await })
    }

    fn stop(&self, shutdown: Shutdown) -> ChildFuture {
        let control = self.slot.current_control();
        control.set_disposition(Disposition::Quiet);
        if !self.slot.core.is_halted() {
            self.slot.core.set_restarting();
        }
        Box::pin(async move {
            match shutdown {
                Shutdown::Brutal => control.request(StopRequest::Kill),
                Shutdown::Timeout(grace) => {
                    control.request(StopRequest::Graceful);
                    if tokio::time::timeout(grace, control.wait_done())
                        .await
                        .is_err()
                    {
                        control.request(StopRequest::Kill);
                    }
                }
            }
            control.wait_done().await;
        })
    }

    fn remove(&self) {
        let control = self.slot.current_control();
        control.set_disposition(Disposition::Final);
        self.slot.core.set_stopped();
        self.host.unlist(&self.slot.core.id, self.slot.core.seq);
        control.request(StopRequest::Kill);
    }

    fn halt(&self, reason: &str, grace: Option<Duration>) {
        let control = self.slot.current_control();
        control.set_disposition(Disposition::Quiet);
        self.slot.core.set_halted(reason);
        match grace {
            None => control.request(StopRequest::Kill),
            Some(grace) => {
                // actix's own graceful stop drops in-flight futures, so the runtime drains
                // instead: queued messages are refused when their turn comes, started ones
                // finish, then the actor goes; at the deadline it goes regardless. This runs on
                // the agent's own arbiter, which has a timer.
                let slot = self.slot.clone();
                self.host.arbiter(self.slot.core.arbiter).spawn(async move {
                    let _ = tokio::time::timeout(grace, slot.core.drained()).await;
                    control.request(StopRequest::Kill);
                });
            }
        }
    }

    fn resume(&self) {
        if self.slot.core.is_halted() {
            drop(self.restart());
        }
    }

    fn is_running(&self) -> bool {
        self.slot.core.is_running()
    }
}
