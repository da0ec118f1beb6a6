//! What can go wrong with the run queue, each error saying what to do.

use tokio_postgres::error::SqlState;

use crate::error::describe_error;

/// The SQLSTATE `impresario_fence` raises when a write's lease epoch is stale.
pub const FENCED: &str = "IMP01";

/// An operation on the run queue failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The lease is gone: it expired, was handed back, or another replica claimed the run under a
    /// higher epoch. Nothing was written; the holder must stop driving the run.
    #[error(
        "run {run}: lease epoch {epoch} is stale (the lease expired, was handed back, or another \
         replica claimed the run): nothing was written; stop driving the run"
    )]
    Fenced {
        /// The run the write was for.
        run: String,
        /// The stale epoch the write carried.
        epoch: i64,
    },
    /// `enqueue` of a run that is already waiting or being driven.
    #[error("run {run} is already queued or being driven; enqueue it again once it is done")]
    AlreadyQueued {
        /// The run.
        run: String,
    },
    /// A configuration value is out of range.
    #[error("{field}: {problem}")]
    Config {
        /// The configuration key, e.g. `cluster.max_runs_per_replica`.
        field: &'static str,
        /// What is wrong and what to use instead.
        problem: String,
    },
    /// The database refused or failed a statement (the server is down, the schema is missing...).
    #[error("the run queue's database: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool (the server is down or unreachable).
    #[error("the run queue's connection pool: {0}; check that PostgreSQL is up and reachable")]
    Pool(#[from] deadpool_postgres::PoolError),
}

impl QueueError {
    /// `error` as [`QueueError::Fenced`] when it is `impresario_fence`'s refusal, else as
    /// [`QueueError::Database`].
    pub(crate) fn fenced_or_database(error: tokio_postgres::Error, run: &str, epoch: i64) -> Self {
        if error.code() == Some(&SqlState::from_code(FENCED)) {
            QueueError::Fenced {
                run: run.to_owned(),
                epoch,
            }
        } else {
            QueueError::Database(error)
        }
    }
}

/// The server's message or the driver's ([`describe_error`]), and for a connection-level error
/// what to check. Neither ever holds the connection's password.
fn describe(error: &tokio_postgres::Error) -> String {
    let text = describe_error(error);
    if error.as_db_error().is_some() {
        text
    } else {
        format!("{text}; check that PostgreSQL is up and reachable")
    }
}
