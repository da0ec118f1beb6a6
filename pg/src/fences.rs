//! Which runs this process drives under a cluster lease, with the lease's epoch ([`Fences`]):
//! one registry shared by the journal (`PgJournal`) and the ledger
//! (`PgLedger`), so that every write transaction for such a run starts with the
//! fencing check ([`crate::queue::fence`]) and is refused once the lease is gone.
//!
//! The cluster code sets a run's epoch when it claims the run ([`Fences::set`]) and removes it
//! when it lets the run go ([`Fences::remove`]). A run without an epoch (a single process, no
//! cluster) is written without a check, as before.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use deadpool_postgres::Transaction;
use impresario_runtime::fencing::Fenced;
use impresario_runtime::RunId;

use crate::queue::{fence, Lease, QueueError};

/// The epochs of the runs this process drives under a lease. Cheap to clone; clones share
/// the registry.
#[derive(Clone, Debug, Default)]
pub struct Fences {
    epochs: Arc<RwLock<HashMap<String, i64>>>,
}

impl Fences {
    /// An empty registry: no run is fenced.
    pub fn new() -> Self {
        Fences::default()
    }

    /// From now on, every write for `lease`'s run carries `lease.epoch` (replacing an older
    /// epoch of the run).
    pub fn set(&self, lease: &Lease) {
        let mut epochs = self.epochs.write().unwrap_or_else(PoisonError::into_inner);
        epochs.insert(lease.run.clone(), lease.epoch);
    }

    /// The run is no longer driven here under a lease: its writes are no longer checked.
    pub fn remove(&self, run: &str) {
        let mut epochs = self.epochs.write().unwrap_or_else(PoisonError::into_inner);
        epochs.remove(run);
    }

    /// The epoch `run`'s writes carry, if it has one.
    pub fn epoch(&self, run: &str) -> Option<i64> {
        let epochs = self.epochs.read().unwrap_or_else(PoisonError::into_inner);
        epochs.get(run).copied()
    }

    /// The fencing check for a write for `run` inside `tx`, when the run has an epoch. Outer
    /// error: storage failed. Inner: [`Fenced`], and `tx` is left as it was (the check runs in
    /// a savepoint, rolled back: the other writes of `tx` may still commit). `Ok(Ok(None))`
    /// without an epoch; `Ok(Ok(Some(epoch)))` when the epoch is current: the run's queue row
    /// then stays locked against claims until `tx` ends.
    pub(crate) async fn check(
        &self,
        tx: &mut Transaction<'_>,
        run: &str,
    ) -> Result<Result<Option<i64>, Fenced>, tokio_postgres::Error> {
        let Some(epoch) = self.epoch(run) else {
            return Ok(Ok(None));
        };
        let lease = Lease {
            run: run.to_owned(),
            tenant: String::new(),
            epoch,
        };
        let savepoint = tx.savepoint("impresario_fence").await?;
        match fence(&savepoint, &lease).await {
            Ok(()) => savepoint.commit().await.map(|()| Ok(Some(epoch))),
            Err(QueueError::Database(e)) => Err(e),
            // `fence` fails only as `Database` or `Fenced`.
            Err(_) => {
                savepoint.rollback().await?;
                Ok(Err(Fenced {
                    run: RunId::new(run),
                    epoch,
                }))
            }
        }
    }
}
