//! The supervisor actor: starts its children in order, restarts them by policy when they fail,
//! stops them newest first, and gives up (escalates) past its restart intensity.
//!
//! It handles one failure at a time: while it stops siblings and waits out a backoff, its own
//! mailbox waits too, so decisions never interleave.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use impresario_runtime::backoff::unit_random;
use impresario_runtime::halt::{Halt, HaltMode, HaltScope, Halts};
use impresario_runtime::ledger::Ledger;
use impresario_runtime::supervision::{Child, ChildExit, ChildFuture, ExitSink};
use impresario_runtime::telemetry::RestartReason;
use impresario_runtime::{
    agent, fail, AgentError, AgentId, AgentRef, RuntimeHandle, SpawnError, SpawnOptions,
};
use tokio::sync::broadcast;

use crate::ceiling::{spawn_watch, OnCeiling};
use crate::events::SupervisorEvent;
use crate::policy::{RestartType, RestartWindow, Strategy};
use crate::spec::{ChildSpec, SupervisorSpec, Tree};

/// Why a request to a supervisor failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    /// The supervisor gave up (past its restart intensity) and supervises nothing any more.
    #[error("supervisor {0} has given up after too many restarts; start a new one")]
    GaveUp(AgentId),
    /// The child could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// No child with this id.
    #[error("supervisor has no child named {0}")]
    NoSuchChild(AgentId),
    /// The supervisor itself did not answer.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// A supervisor. Start a root one with [`Supervisor::start_root`]; nest one with
/// [`ChildSpec::supervisor`].
pub struct Supervisor {
    id: AgentId,
    spec: SupervisorSpec,
    tree: Tree,
    has_parent: bool,
    children: Vec<Entry>,
    window: RestartWindow,
    gave_up: bool,
    sink: Option<ExitSink>,
}

struct Entry {
    spec: ChildSpec,
    child: Arc<dyn Child>,
    /// Restarts since the last backoff reset.
    attempt: u32,
}

impl ChildSpec {
    /// A nested supervisor with its own children and policy. Past its intensity it stops its
    /// children and fails, which its parent handles like any child failure.
    pub fn supervisor(id: AgentId, spec: SupervisorSpec) -> Self {
        let spawn_id = id.clone();
        let start = move |tree: &Tree, options: &SpawnOptions, sink: ExitSink| {
            let (spec, tree2, me) = (spec.clone(), tree.clone(), spawn_id.clone());
            tree.runtime
                .spawn_supervised(
                    spawn_id.clone(),
                    options.clone(),
                    move || Supervisor::new(me.clone(), spec.clone(), tree2.clone(), true),
                    sink,
                )
                .map(|(_, child)| child)
        };
        ChildSpec::started_by(id, true, Arc::new(start))
    }
}

impl Supervisor {
    pub(crate) fn new(id: AgentId, spec: SupervisorSpec, tree: Tree, has_parent: bool) -> Self {
        Supervisor {
            id,
            spec,
            tree,
            has_parent,
            children: Vec::new(),
            window: RestartWindow::default(),
            gave_up: false,
            sink: None,
        }
    }

    /// Starts a root supervisor (one with no parent) and its children. Past its intensity a root
    /// stops its children, emits [`SupervisorEvent::Fatal`] and answers
    /// [`SupervisorError::GaveUp`]; it never stops the process.
    pub fn start_root(
        runtime: &RuntimeHandle,
        id: AgentId,
        spec: SupervisorSpec,
    ) -> Result<SupervisorRef, SpawnError> {
        let (events, _) = broadcast::channel(1024);
        let tree = Tree {
            runtime: runtime.clone(),
            events,
            agents: Arc::default(),
        };
        let (me, root_tree) = (id.clone(), tree.clone());
        let agent = runtime.spawn(id, move || Supervisor::new(me, spec, root_tree, false))?;
        Ok(SupervisorRef { agent, tree })
    }

    fn emit(&self, event: SupervisorEvent) {
        let _ = self.tree.events.send(event);
    }

    /// Every child gone for good, newest first.
    fn remove_all(&mut self) {
        for entry in self.children.drain(..).rev() {
            self.tree.remove(&entry.child);
        }
    }

    fn position(&self, id: &AgentId) -> Option<usize> {
        self.children.iter().position(|e| &e.spec.id == id)
    }

    /// Starts a child; the future resolves once it has started.
    fn start_child(&mut self, spec: ChildSpec) -> Result<ChildFuture, SpawnError> {
        let sink = self
            .sink
            .clone()
            .expect("the sink is set when the supervisor starts");
        let child = spec.start(&self.tree, sink)?;
        let ready = child.ready();
        if !spec.is_supervisor {
            self.tree.agents.insert(spec.id.clone(), child.clone());
        }
        self.emit(SupervisorEvent::ChildStarted {
            supervisor: self.id.clone(),
            child: spec.id.clone(),
        });
        self.children.push(Entry {
            spec,
            child,
            attempt: 0,
        });
        Ok(ready)
    }

    /// Starts `specs` one after the other, each once the previous one has started (OTP's order).
    fn start_in_order(&mut self, ctx: &mut Context<Self>, mut specs: VecDeque<ChildSpec>) {
        let Some(spec) = specs.pop_front() else {
            return;
        };
        let id = spec.id.clone();
        match self.start_child(spec) {
            Ok(ready) => ctx.wait(
                ready
                    .into_actor(self)
                    .map(move |_, this, ctx| this.start_in_order(ctx, specs)),
            ),
            Err(e) => self.give_up(ctx, format!("could not start child {id}: {e}")),
        }
    }

    /// Restarts the children named by `ids`, each once the previous one has started.
    fn restart_in_order(
        &mut self,
        ctx: &mut Context<Self>,
        mut ids: VecDeque<AgentId>,
        failed: Restarted,
    ) {
        let Some(id) = ids.pop_front() else {
            return;
        };
        let Some(i) = self.position(&id) else {
            return self.restart_in_order(ctx, ids, failed);
        };
        let (attempt, backoff, reason) = if id == failed.id {
            (failed.attempt, failed.backoff, failed.reason)
        } else {
            (
                self.children[i].attempt,
                Duration::ZERO,
                RestartReason::Sibling,
            )
        };
        // Reported once the restart is under way, so whoever reacts to it can call the child.
        let ready = self.children[i].child.restart();
        self.tree.runtime.metrics().restart(&id.kind, reason);
        self.emit(SupervisorEvent::ChildRestarted {
            supervisor: self.id.clone(),
            child: id,
            attempt,
            backoff,
        });
        ctx.wait(
            ready
                .into_actor(self)
                .map(move |_, this, ctx| this.restart_in_order(ctx, ids, failed)),
        );
    }

    /// Stop futures for the children at `indices`, newest first, each by its shutdown.
    fn stops(&self, indices: impl DoubleEndedIterator<Item = usize>) -> Vec<ChildFuture> {
        indices
            .rev()
            .map(|i| {
                let entry = &self.children[i];
                entry.child.stop(entry.spec.shutdown)
            })
            .collect()
    }

    /// Past the intensity (or unable to start a child): stop every child newest first, then
    /// escalate to the parent by failing, or, as a root, report `Fatal` and keep answering.
    fn give_up(&mut self, ctx: &mut Context<Self>, reason: String) {
        self.gave_up = true;
        let stops = self.stops(0..self.children.len());
        ctx.wait(
            run_in_order(stops)
                .into_actor(self)
                .map(move |_, this, ctx| {
                    this.remove_all();
                    this.tree.runtime.metrics().escalation(!this.has_parent);
                    if this.has_parent {
                        this.emit(SupervisorEvent::Escalated {
                            supervisor: this.id.clone(),
                            reason: reason.clone(),
                        });
                        fail(ctx, reason);
                    } else {
                        this.emit(SupervisorEvent::Fatal {
                            supervisor: this.id.clone(),
                            reason,
                        });
                    }
                }),
        );
    }

    fn restart_after_failure(&mut self, ctx: &mut Context<Self>, failed: usize, exit: &ChildExit) {
        let backoff = self.spec.backoff;
        let entry = &mut self.children[failed];
        if exit.ran_for >= backoff.reset_after {
            entry.attempt = 0;
        }
        let delay = backoff.delay(entry.attempt, unit_random());
        entry.attempt += 1;
        let attempt = entry.attempt;

        let count = self.children.len();
        let affected = match self.spec.strategy {
            Strategy::OneForOne => failed..failed + 1,
            Strategy::OneForAll => 0..count,
            Strategy::RestForOne => failed..count,
        };
        let stops = self.stops(affected.clone().filter(|&i| i != failed));
        let ids: VecDeque<AgentId> = affected.map(|i| self.children[i].spec.id.clone()).collect();
        let failed = Restarted {
            id: exit.agent.clone(),
            attempt,
            backoff: delay,
            reason: RestartReason::of(&exit.exit),
        };
        ctx.wait(
            async move {
                run_in_order(stops).await;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            .into_actor(self)
            .map(move |_, this, ctx| {
                if !this.gave_up {
                    this.restart_in_order(ctx, ids, failed);
                }
            }),
        );
    }
}

/// The failed child of a restart decision, for its `ChildRestarted` event and metric.
struct Restarted {
    id: AgentId,
    attempt: u32,
    backoff: Duration,
    reason: RestartReason,
}

/// Awaits stop futures one after the other (the order shutdown promises).
async fn run_in_order(stops: Vec<ChildFuture>) {
    for stop in stops {
        stop.await;
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        self.sink = Some(Arc::new(move |exit| addr.do_send(ChildExited(exit))));
        let specs = self.spec.children.iter().cloned().collect();
        self.start_in_order(ctx, specs);
    }

    /// Stops the children newest first, each by its shutdown, before stopping itself.
    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        if self.children.is_empty() {
            return Running::Stop;
        }
        let stops = self.stops(0..self.children.len());
        ctx.wait(run_in_order(stops).into_actor(self).map(|_, this, ctx| {
            this.remove_all();
            ctx.stop();
        }));
        Running::Continue
    }

    /// Killed, or crashed: its children go with it.
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.remove_all();
    }
}
agent!(Supervisor);

/// A child's exit, as the runtime reports it to the supervisor.
#[derive(Message)]
#[rtype(result = "()")]
struct ChildExited(ChildExit);

impl Handler<ChildExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, ChildExited(exit): ChildExited, ctx: &mut Context<Self>) {
        let Some(index) = self.position(&exit.agent) else {
            return;
        };
        self.emit(SupervisorEvent::ChildExited {
            supervisor: self.id.clone(),
            child: exit.agent.clone(),
            exit: exit.exit.clone(),
        });
        if self.gave_up {
            return;
        }
        let restart = match self.children[index].spec.restart {
            RestartType::Permanent => true,
            RestartType::Transient => exit.exit.is_failure(),
            RestartType::Temporary => false,
        };
        if !restart {
            let entry = self.children.remove(index);
            self.tree.remove(&entry.child);
            return;
        }
        let intensity = self.spec.intensity;
        if !self.window.admit(&intensity, Instant::now()) {
            let reason = format!(
                "restart intensity exceeded: more than {} restarts within {:?} (last failure: {} {:?})",
                intensity.max_restarts, intensity.period, exit.agent, exit.exit
            );
            self.give_up(ctx, reason);
            return;
        }
        self.restart_after_failure(ctx, index, &exit);
    }
}

/// Starts another child, after the existing ones.
#[derive(Message)]
#[rtype(result = "Result<(), SupervisorError>")]
pub struct StartChild(pub ChildSpec);

impl Handler<StartChild> for Supervisor {
    type Result = Result<(), SupervisorError>;
    fn handle(&mut self, StartChild(spec): StartChild, _: &mut Context<Self>) -> Self::Result {
        if self.gave_up {
            return Err(SupervisorError::GaveUp(self.id.clone()));
        }
        // The caller may use the child at once; messages wait in its mailbox until it has started.
        let _started_later = self.start_child(spec)?;
        Ok(())
    }
}

/// Stops a child for good (by its shutdown) and forgets it.
#[derive(Message)]
#[rtype(result = "Result<(), SupervisorError>")]
pub struct StopChild(pub AgentId);

impl Handler<StopChild> for Supervisor {
    type Result = ResponseActFuture<Self, Result<(), SupervisorError>>;
    fn handle(&mut self, StopChild(id): StopChild, _: &mut Context<Self>) -> Self::Result {
        if self.gave_up {
            return Box::pin(actix::fut::ready(Err(SupervisorError::GaveUp(
                self.id.clone(),
            ))));
        }
        let Some(index) = self.position(&id) else {
            return Box::pin(actix::fut::ready(Err(SupervisorError::NoSuchChild(id))));
        };
        let entry = self.children.remove(index);
        let stop = entry.child.stop(entry.spec.shutdown);
        Box::pin(stop.into_actor(self).map(move |_, this, _| {
            this.tree.remove(&entry.child);
            Ok(())
        }))
    }
}

/// Starts forwarding a ledger's events (see [`SupervisorRef::enforce_ceilings`]).
#[derive(Message)]
#[rtype(result = "()")]
struct WatchLedger {
    ledger: Ledger,
    halts: Halts,
    policy: OnCeiling,
}

impl Handler<WatchLedger> for Supervisor {
    type Result = ();
    fn handle(&mut self, watch: WatchLedger, _: &mut Context<Self>) {
        spawn_watch(
            &watch.ledger,
            watch.halts,
            watch.policy,
            self.tree.events.clone(),
            self.tree.runtime.metrics().clone(),
        );
    }
}

/// One child as [`WhichChildren`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// Its id.
    pub id: AgentId,
    /// Whether it accepts calls now (false while restarting or halted).
    pub running: bool,
}

/// The supervisor's children, in start order.
#[derive(Message)]
#[rtype(result = "Result<Vec<ChildInfo>, SupervisorError>")]
pub struct WhichChildren;

impl Handler<WhichChildren> for Supervisor {
    type Result = Result<Vec<ChildInfo>, SupervisorError>;
    fn handle(&mut self, _: WhichChildren, _: &mut Context<Self>) -> Self::Result {
        if self.gave_up {
            return Err(SupervisorError::GaveUp(self.id.clone()));
        }
        Ok(self
            .children
            .iter()
            .map(|e| ChildInfo {
                id: e.spec.id.clone(),
                running: e.child.is_running(),
            })
            .collect())
    }
}

/// A handle to a root supervisor and its tree's event stream.
#[derive(Clone)]
pub struct SupervisorRef {
    agent: AgentRef<Supervisor>,
    tree: Tree,
}

impl SupervisorRef {
    /// The supervisor as an agent.
    pub fn agent(&self) -> &AgentRef<Supervisor> {
        &self.agent
    }

    /// Events of every supervisor in this tree from now on.
    pub fn events(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.tree.events.subscribe()
    }

    /// Starts another child under the root.
    pub async fn start_child(&self, spec: ChildSpec) -> Result<(), SupervisorError> {
        self.agent.ask(StartChild(spec)).await?
    }

    /// Stops a child of the root for good.
    pub async fn stop_child(&self, id: AgentId) -> Result<(), SupervisorError> {
        self.agent.ask(StopChild(id)).await?
    }

    /// The root's children, in start order.
    pub async fn children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
        self.agent.ask(WhichChildren).await?
    }

    /// Halts agents of this tree now, through no mailbox (neither the agents' nor any
    /// supervisor's): [`HaltScope::All`] halts every agent of the tree (supervisors keep running,
    /// and restart nothing that is halted),
    /// [`HaltScope::Agent`] the one whose id reads `kind/key`. Tenant and run scopes match no
    /// agent here: they halt runs, through their [`HaltToken`](impresario_runtime::halt::HaltToken)s.
    /// Halted agents answer `AgentError::Halted` with the reason (and detail) and are not
    /// restarted until [`resume`](Self::resume)d. Returns how many agents were halted.
    pub fn halt(&self, halt: &Halt) -> usize {
        let grace = match halt.mode {
            HaltMode::Immediate => None,
            HaltMode::Graceful { deadline } => Some(deadline),
        };
        let reason = match &halt.detail {
            Some(detail) => format!("{}: {detail}", halt.reason),
            None => halt.reason.to_string(),
        };
        let targets: Vec<Arc<dyn Child>> = self
            .tree
            .agents
            .iter()
            .filter(|entry| match &halt.scope {
                HaltScope::All => true,
                HaltScope::Agent(name) => entry.key().to_string() == *name,
                HaltScope::Tenant(_) | HaltScope::Run(_) => false,
            })
            .map(|entry| entry.value().clone())
            .collect();
        for child in &targets {
            child.halt(&reason, grace);
        }
        self.tree
            .runtime
            .metrics()
            .agents_halted(halt.reason, targets.len());
        let _ = self.tree.events.send(SupervisorEvent::Halted {
            scope: halt.scope.clone(),
            reason: halt.reason,
            agents: targets.len(),
        });
        targets.len()
    }

    /// Enforces `ledger`'s ceilings for this tree: its warnings, refusals and overshoots appear
    /// on [`events`](Self::events), and with [`OnCeiling::HaltRun`] a run whose own account
    /// refuses a reservation is halted through `halts` (reason `cost_ceiling`). A tenant or
    /// global ceiling refuses each call that would pass it and is reported, but halts nothing.
    pub async fn enforce_ceilings(
        &self,
        ledger: &Ledger,
        halts: &Halts,
        policy: OnCeiling,
    ) -> Result<(), SupervisorError> {
        let watch = WatchLedger {
            ledger: ledger.clone(),
            halts: halts.clone(),
            policy,
        };
        Ok(self.agent.ask(watch).await?)
    }

    /// Restarts a halted agent of this tree with a fresh actor. False if there is no such agent.
    pub fn resume(&self, id: &AgentId) -> bool {
        let Some(child) = self.tree.agents.get(id).map(|c| c.value().clone()) else {
            return false;
        };
        child.resume();
        true
    }
}
