//! Retrying a unit of work on a pooled connection while PostgreSQL is unreachable or
//! restarting, shared by the ledger and the halts.
//!
//! A step is retried from the start (a fresh transaction on a fresh connection) when the
//! failure says nothing was decided: the connection closed or could not be opened, the server
//! is shutting down or starting, or the transaction was chosen as a serialization or deadlock
//! victim. Any other error is returned at once. Steps must be idempotent across attempts: a
//! commit whose answer was lost may have been applied.

use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool, PoolError};
use impresario_runtime::ledger_store::StoreError;
use impresario_runtime::redact::redact;
use tokio_postgres::error::SqlState;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One unit of work: one transaction, retried as a whole.
pub(crate) trait Step {
    /// What the step returns.
    type Out;

    /// What the step does, for error messages (`reserve on run:r1`).
    fn what(&self) -> String;

    /// Runs the step once on `client`; `attempt` is 0 the first time.
    async fn once(
        &self,
        client: &mut Object,
        attempt: u32,
    ) -> Result<Self::Out, tokio_postgres::Error>;
}

/// Why an attempt failed.
enum Failure {
    Pool(PoolError),
    Db(tokio_postgres::Error),
}

impl Failure {
    /// True when trying again could succeed and nothing was decided.
    fn transient(&self) -> bool {
        match self {
            // No connection could be had: the server is down, restarting or unreachable.
            Failure::Pool(_) => true,
            Failure::Db(err) => transient_db(err),
        }
    }
}

fn transient_db(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        // No server answer at all: an I/O error on the socket.
        None => err.as_db_error().is_none() && std::error::Error::source(err).is_some(),
        Some(code) => {
            [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(code)
                || code.code().starts_with("08")
        }
    }
}

/// Runs `step` on a connection from `pool`, retrying transient failures with a growing pause
/// for up to `retry_for`. The error names the step and the cause, never a password.
pub(crate) async fn retrying<S: Step>(
    pool: &Pool,
    retry_for: Duration,
    step: &S,
) -> Result<S::Out, StoreError> {
    let deadline = Instant::now() + retry_for;
    let mut attempt = 0;
    loop {
        let result = match pool.get().await {
            Ok(mut client) => step.once(&mut client, attempt).await.map_err(Failure::Db),
            Err(err) => Err(Failure::Pool(err)),
        };
        let failure = match result {
            Ok(out) => return Ok(out),
            Err(failure) => failure,
        };
        let pause = backoff(attempt);
        if !failure.transient() || Instant::now() + pause > deadline {
            return Err(store_error(&step.what(), &failure, attempt));
        }
        tracing::debug!(step = %step.what(), attempt, "PostgreSQL unavailable; retrying");
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// 50 ms, doubling, at most [`MAX_BACKOFF`].
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(1 << attempt.min(5))
        .min(MAX_BACKOFF)
}

fn store_error(what: &str, failure: &Failure, attempt: u32) -> StoreError {
    let cause = match failure {
        Failure::Pool(err) => format!("no connection to PostgreSQL ({err})"),
        Failure::Db(err) => match err.as_db_error() {
            Some(db) => format!(
                "PostgreSQL refused it: {} ({})",
                db.message(),
                db.code().code()
            ),
            None => format!("the connection to PostgreSQL failed ({err})"),
        },
    };
    StoreError {
        message: redact(&format!("{what}: {cause}, after {} attempts", attempt + 1)).into_owned(),
    }
}
