//! What a supervisor supervises: child specs, and the supervisor's own policy.

use std::sync::Arc;

use dashmap::DashMap;
use impresario_runtime::supervision::{Child, ExitSink, Shutdown};
use impresario_runtime::{Agent, AgentId, Placement, RuntimeHandle, SpawnError, SpawnOptions};
use tokio::sync::broadcast;

use crate::events::SupervisorEvent;
use crate::policy::{Backoff, Intensity, RestartType, Strategy};

/// Starts one child: spawns it under the given exit sink and returns the supervisor's handle.
pub(crate) type Starter = dyn Fn(&Tree, &SpawnOptions, ExitSink) -> Result<Arc<dyn Child>, SpawnError>
    + Send
    + Sync
    + 'static;

/// What a supervisor tree shares: the runtime, the event stream, and every supervised agent
/// of the tree that is not itself a supervisor, by id (so a halt reaches them without waiting
/// on any supervisor's mailbox).
#[derive(Clone)]
pub(crate) struct Tree {
    pub(crate) runtime: RuntimeHandle,
    pub(crate) events: broadcast::Sender<SupervisorEvent>,
    pub(crate) agents: Arc<DashMap<AgentId, Arc<dyn Child>>>,
}

impl Tree {
    /// A child gone for good: out of the tree's registry, and out of the runtime.
    pub(crate) fn remove(&self, child: &Arc<dyn Child>) {
        self.agents
            .remove_if(child.id(), |_, listed| Arc::ptr_eq(listed, child));
        child.remove();
    }
}

/// One child of a supervisor: its id, how it is (re)started, when it restarts, how it stops.
#[derive(Clone)]
pub struct ChildSpec {
    /// The child's id (its name in the runtime's directory).
    pub id: AgentId,
    /// When it is restarted.
    pub restart: RestartType,
    /// How it is stopped.
    pub shutdown: Shutdown,
    /// Where it runs and its in-flight limit and watchdog.
    pub options: SpawnOptions,
    /// Whether it is a supervisor (halts pass over supervisors and reach their agents).
    pub(crate) is_supervisor: bool,
    start: Arc<Starter>,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

impl ChildSpec {
    /// An agent built by `factory`, which is called for the first start and for every restart,
    /// so each incarnation starts from fresh state. Permanent; 5 s graceful shutdown.
    pub fn agent<A, F>(id: AgentId, factory: F) -> Self
    where
        A: Agent,
        F: Fn() -> A + Send + Sync + 'static,
    {
        Self::agent_with(id, SpawnOptions::default(), factory)
    }

    /// [`agent`](Self::agent) with placement and in-flight limit.
    pub fn agent_with<A, F>(id: AgentId, options: SpawnOptions, factory: F) -> Self
    where
        A: Agent,
        F: Fn() -> A + Send + Sync + 'static,
    {
        let factory = Arc::new(factory);
        let spawn_id = id.clone();
        let start = move |tree: &Tree, options: &SpawnOptions, sink: ExitSink| {
            let factory = factory.clone();
            tree.runtime
                .spawn_supervised(spawn_id.clone(), options.clone(), move || factory(), sink)
                .map(|(_, child)| child)
        };
        ChildSpec {
            options,
            ..ChildSpec::started_by(id, false, Arc::new(start))
        }
    }

    /// A child started by `start` (under the exit sink it is given); `is_supervisor` says
    /// whether halts pass over it to its agents. 5 s graceful shutdown for an agent, 30 s for a
    /// supervisor; permanent.
    pub(crate) fn started_by(id: AgentId, is_supervisor: bool, start: Arc<Starter>) -> Self {
        let grace = if is_supervisor { 30 } else { 5 };
        ChildSpec {
            id,
            restart: RestartType::Permanent,
            shutdown: Shutdown::Timeout(std::time::Duration::from_secs(grace)),
            options: SpawnOptions::default(),
            is_supervisor,
            start,
        }
    }

    /// With this restart type.
    pub fn restart(mut self, restart: RestartType) -> Self {
        self.restart = restart;
        self
    }

    /// With this shutdown.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// On this arbiter (e.g. beside the agents it talks to most: a call that stays on one
    /// thread costs no thread wake-up).
    pub fn placement(mut self, placement: Placement) -> Self {
        self.options.placement = placement;
        self
    }

    pub(crate) fn start(&self, tree: &Tree, sink: ExitSink) -> Result<Arc<dyn Child>, SpawnError> {
        (self.start)(tree, &self.options, sink)
    }
}

/// A supervisor's policy and its initial children (started in order).
#[derive(Clone, Debug, Default)]
pub struct SupervisorSpec {
    /// Which children restart when one fails.
    pub strategy: Strategy,
    /// How many restarts before giving up.
    pub intensity: Intensity,
    /// How long to wait before a restart.
    pub backoff: Backoff,
    /// The children, in start order.
    pub children: Vec<ChildSpec>,
}

impl SupervisorSpec {
    /// A spec with this strategy and the defaults (3 restarts in 5 s, no backoff, no children).
    pub fn new(strategy: Strategy) -> Self {
        SupervisorSpec {
            strategy,
            ..Self::default()
        }
    }

    /// With this intensity.
    pub fn intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = intensity;
        self
    }

    /// With this backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// With one more child, started after the others.
    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }
}
