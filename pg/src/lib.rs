//! Impresario's PostgreSQL backend (docs/ARCHITECTURE.md, "PostgreSQL"): the store a service
//! uses when `journal.url` is a `postgres://` URL.
//!
//! - [`ledger`]: reservations as holds with an expiry, exact across processes
//!   ([`ledger::PgLedger`], a `LedgerStore`).
//! - [`halts`]: halts as durable rows, followed by every process through `LISTEN/NOTIFY`
//!   ([`halts::PgHalts`]).
//!
//! With the `test-cluster` feature, [`test_cluster`] starts a real, throwaway PostgreSQL server
//! for tests: no mocks.

pub mod halts;
pub mod ledger;
mod ledger_retry;
pub mod queue;

#[cfg(feature = "test-cluster")]
pub mod test_cluster;
