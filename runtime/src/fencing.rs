//! A write refused because this process no longer holds the run's lease ([`Fenced`]): what a
//! journal append or a ledger operation of a clustered run returns once another process may
//! drive it (the cluster's fencing tokens, issue 14). The caller stops driving the run and
//! writes nothing more for it.

use crate::envelope::RunId;

/// The write for `run` carried the lease epoch `epoch`, which is no longer the run's current
/// one (the lease expired, was handed back, or another process claimed the run). Nothing was
/// written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "run {run}: this process's lease epoch {epoch} is stale (the lease expired, was handed back, \
     or another process claimed the run); nothing was written: stop driving the run here"
)]
pub struct Fenced {
    /// The run the write was for.
    pub run: RunId,
    /// The stale epoch the write carried.
    pub epoch: i64,
}
