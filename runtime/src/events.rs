//! Lifecycle events: what a supervisor, a metrics exporter or a test subscribes to.

use std::sync::Arc;
use std::time::Duration;

use crate::agent_id::AgentId;
use crate::telemetry::RestartReason;

/// How one incarnation of an agent ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It stopped on its own or was asked to stop.
    Normal,
    /// A handler, an actor future or a lifecycle hook panicked.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// It was killed without a graceful stop (brutal shutdown or a stop that timed out).
    Killed,
    /// It stopped itself as a failure ([`fail`](crate::fail)), e.g. a supervisor escalating.
    Failed {
        /// Why.
        reason: String,
    },
}

impl RestartReason {
    /// The reason for restarting the agent whose incarnation ended with `exit`.
    pub fn of(exit: &Exit) -> Self {
        match exit {
            Exit::Normal => RestartReason::Exited,
            Exit::Panicked { .. } => RestartReason::Panicked,
            Exit::Killed => RestartReason::Killed,
            Exit::Failed { .. } => RestartReason::Failed,
        }
    }
}

impl Exit {
    /// Whether this exit is a failure (anything but `Normal`).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Exit::Normal)
    }
}

/// Something that happened to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// An incarnation started (the first start, or a restart).
    Started {
        /// The agent.
        agent: AgentId,
        /// How many times it has been started before (0 for the first start).
        incarnation: u64,
    },
    /// An incarnation ended.
    Exited {
        /// The agent.
        agent: AgentId,
        /// How it ended.
        exit: Exit,
        /// Whether the agent is gone for good (unlisted), or waits for its supervisor.
        final_exit: bool,
    },
}

/// How an incarnation of a supervised agent ended, as its supervisor is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildExit {
    /// The agent.
    pub agent: AgentId,
    /// How it ended.
    pub exit: Exit,
    /// How long that incarnation ran (for backoff reset).
    pub ran_for: Duration,
}

/// Where a supervised agent's exits are reported. Called on the agent's thread: it should only
/// forward (e.g. `do_send` to the supervisor actor).
pub type ExitSink = Arc<dyn Fn(ChildExit) + Send + Sync>;
