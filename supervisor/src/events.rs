//! What supervisors report: a stream every supervisor of one tree publishes to.
//!
//! The events of one supervisor arrive in the order it acted. Events of different supervisors
//! (a parent and a nested one) run on different threads and may interleave in any order.

use std::time::Duration;

use impresario_runtime::halt::{HaltReason, HaltScope};
use impresario_runtime::ledger::{AccountId, CeilingReached, Charge, Dimension};
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
    /// A halt was delivered: to agents of the tree, or to a run's halt token.
    Halted {
        /// What the halt named.
        scope: HaltScope,
        /// Why.
        reason: HaltReason,
        /// How many agents of the tree it reached (0 for a run halted through its token).
        agents: usize,
    },
    /// An account's spending crossed a warning fraction of one of its limits.
    CeilingWarning {
        /// The account.
        account: AccountId,
        /// Which limit.
        dimension: Dimension,
        /// The fraction crossed, in percent.
        fraction_percent: u8,
        /// Spent in that dimension.
        spent: u64,
        /// The limit.
        limit: u64,
    },
    /// A reservation was refused because it did not fit a ceiling; nothing was sent.
    CeilingReached(CeilingReached),
    /// A call cost more than it had reserved (charged in full; the estimate was too low).
    Overshoot {
        /// The account charged.
        account: AccountId,
        /// By how much.
        by: Charge,
    },
    /// The root supervisor gave up: its children are stopped and it answers `Stopped`.
    Fatal {
        /// The supervisor.
        supervisor: AgentId,
        /// Why.
        reason: String,
    },
}
