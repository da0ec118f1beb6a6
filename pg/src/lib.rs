//! Impresario's PostgreSQL backend (docs/ARCHITECTURE.md, "PostgreSQL"): the store a service
//! uses when `journal.url` is a `postgres://` URL.
//!
//! - [`database`]: the connection ([`Database`]: URL, pool, the I/O thread it runs on,
//!   retries while the server is unreachable), shared by every store of this crate.
//! - [`error`]: [`PgError`], what fails and what to do.
//! - [`schema`]: versioned migrations; a foreign or newer database is refused untouched.
//! - [`journal`]: [`PgJournal`], the run journal.
//! - [`ledger`]: reservations as holds with an expiry, exact across processes
//!   ([`ledger::PgLedger`], a `LedgerStore`).
//! - [`approvals`]: operators' decisions as rows, followed through `LISTEN/NOTIFY`
//!   ([`approvals::PgApprovals`]).
//! - [`fences`]: the lease epochs of the runs this process drives in a cluster ([`Fences`]),
//!   checked first by every journal and ledger write for those runs.
//! - [`ceilings`]: tenant and global ceilings in the ledger's accounts, the same for every
//!   process; the API's overrides kept in the database ([`ceilings::PgCeilings`]).
//! - [`halts`]: halts as durable rows, followed by every process through `LISTEN/NOTIFY`
//!   ([`halts::PgHalts`]).
//! - [`deltas`]: the streamed text of runs, from the replica driving a run to every other
//!   through `LISTEN/NOTIFY` ([`deltas::PgDeltas`]; not stored).
//! - [`queue`]: the run queue of a cluster: claims, leases with epochs, heartbeats.
//! - [`memory`]: long-term memory, each tenant's records apart, full-text searched
//!   ([`memory::PgMemory`], a `LongTermStore` of impresario-agents).
//!
//! With the `test-cluster` feature, [`test_cluster`] starts a real, throwaway PostgreSQL server
//! for tests: no mocks.

pub mod approvals;
pub mod ceilings;
mod counters;
pub mod database;
pub mod deltas;
pub mod error;
pub mod fences;
pub mod halts;
pub mod journal;
pub mod ledger;
mod ledger_retry;
pub mod ledger_warnings;
mod listener;
pub mod memory;
pub mod queue;
pub mod schema;
#[cfg(feature = "test-cluster")]
pub mod test_cluster;

pub use database::Database;
pub use error::PgError;
pub use fences::Fences;
pub use journal::{HoldSettlement, PgJournal, PgJournalOptions};
pub use listener::Follower;
