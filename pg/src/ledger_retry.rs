//! One unit of work of the ledger or the halts (a transaction) run on the database's I/O
//! thread, and retried as a whole on a new connection while the server is unreachable
//! ([`database::retrying`](crate::database)). Steps must be idempotent across attempts: a
//! commit whose answer was lost may have been applied (`attempt` tells a step it is not the
//! first).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use deadpool_postgres::Object;
use impresario_runtime::ledger_store::StoreError;
use impresario_runtime::redact::redact;

use crate::database::{retrying, Database};

/// One unit of work: one transaction, retried as a whole.
pub(crate) trait Step: Send + Sync + 'static {
    /// What the step returns.
    type Out: Send + 'static;

    /// What the step does, for error messages (`reserve on run:r1`).
    fn what(&self) -> String;

    /// Runs the step once on `client`; `attempt` is 0 the first time.
    fn once(
        &self,
        client: &mut Object,
        attempt: u32,
    ) -> impl Future<Output = Result<Self::Out, tokio_postgres::Error>> + Send;
}

/// Runs `step` on `db`'s I/O thread, retrying while the server is unreachable. The error names
/// the step, the database and the cause, never a password.
pub(crate) async fn run<S: Step>(db: &Database, step: S) -> Result<S::Out, StoreError> {
    let (pool, target) = (db.pool().clone(), db.target().to_owned());
    let what = step.what();
    let stopped = format!("{what} failed: the database's I/O thread stopped");
    let done = db
        .spawn(async move {
            let attempts = AtomicU32::new(0);
            retrying(&target, || async {
                let attempt = attempts.fetch_add(1, Ordering::Relaxed);
                let mut client = pool.get().await?;
                Ok(step.once(&mut client, attempt).await?)
            })
            .await
            .map_err(|failed| format!("{what} on PostgreSQL {target}: {}", failed.cause))
        })
        .await;
    let message = match done {
        Ok(Ok(out)) => return Ok(out),
        Ok(Err(message)) => message,
        Err(_) => stopped,
    };
    Err(StoreError {
        message: redact(&message).into_owned(),
    })
}
