//! A lease: the right to drive one run, for as long as its epoch is current; and the fencing
//! check every write made under it runs first.

use super::error::QueueError;

/// The right to drive run `run` under fencing token `epoch`. Every claim of a run gets a higher
/// epoch than any before it, so a write carrying an older one is refused ([`fence`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The run's id.
    pub run: String,
    /// The run's tenant.
    pub tenant: String,
    /// The fencing token: the run's claim count.
    pub epoch: i64,
}

/// The fencing check, inside the transaction of a write made on behalf of `lease` (a journal
/// append, a ledger operation): `Ok` if `lease` is still the run's current lease, and then no
/// other replica can claim the run until `tx` ends; [`QueueError::Fenced`] otherwise, and the
/// transaction must be rolled back (it is aborted). In SQL: `SELECT impresario_fence(run, epoch)`.
pub async fn fence(tx: &tokio_postgres::Transaction<'_>, lease: &Lease) -> Result<(), QueueError> {
    tx.execute(
        "SELECT impresario_fence($1, $2)",
        &[&lease.run, &lease.epoch],
    )
    .await
    .map(drop)
    .map_err(|e| QueueError::fenced_or_database(e, &lease.run, lease.epoch))
}
