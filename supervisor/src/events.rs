//! What supervisors report: a stream every supervisor of one tree publishes to.
//!
//! The events of one supervisor arrive in the order it acted. Events of different supervisors
//! (a parent and a nested one) run on different threads and may interleave in any order.

use std::time::Duration;

use impresario_runtime::halt::{HaltReason, HaltScope};
use impresario_runtime::{AgentId, Exit};

/// Something a supervisor did or saw.
#[derive(Debug, Clone, PartialEq)]
pub enum SupervisorEvent {
    /// A child started for the first time.
    ChildStarted {
        /// The supervisor.
        supervisor: AgentId,
        /// The child.
        child: AgentId,
    },
    /// A child exited without the supervisor asking (a panic, a kill, a failure or a normal exit).
    ChildExited {
        /// The supervisor.
        supervisor: AgentId,
        /// The child.
        child: AgentId,
        /// How it ended.
        exit: Exit,
    },
    /// A child was restarted.
    ChildRestarted {
        /// The supervisor.
        supervisor: AgentId,
        /// The child.
        child: AgentId,
        /// Restart attempt since the last backoff reset (1-based).
        attempt: u32,
        /// The delay waited before restarting.
        backoff: Duration,
    },
    /// Past its restart intensity, the supervisor stopped its children and escalated to its parent.
    Escalated {
        /// The supervisor.
        supervisor: AgentId,
        /// Why.
        reason: String,
    },
    /// Agents of the tree were halted.
    Halted {
        /// What the halt named.
        scope: HaltScope,
        /// Why.
        reason: HaltReason,
        /// How many agents it reached.
        agents: usize,
    },
    /// The root supervisor gave up: its children are stopped and it answers `Stopped`.
    Fatal {
        /// The supervisor.
        supervisor: AgentId,
        /// Why.
        reason: String,
    },
}
