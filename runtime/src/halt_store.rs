//! The seam to halts recorded outside this process (PostgreSQL: `impresario_pg::halts::
//! PgHalts`): a run asks it before each step whether a halt stands on it, its tenant or
//! everything, so a halt recorded by another process stops the run even when its notification
//! never reached this one.

use std::fmt;

use crate::envelope::{RunId, TenantId};
use crate::halt::Halt;
use crate::ledger_store::{StoreError, StoreFuture};

/// Halts shared by the processes that drive runs (see the module docs).
pub trait HaltStore: fmt::Debug + Send + Sync + 'static {
    /// The oldest halt standing on `run`, its `tenant`, or everything; `None` if none does.
    fn standing<'a>(
        &'a self,
        tenant: &'a TenantId,
        run: &'a RunId,
    ) -> StoreFuture<'a, Result<Option<Halt>, StoreError>>;
}
