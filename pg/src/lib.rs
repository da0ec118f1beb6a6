//! Impresario's PostgreSQL backend (docs/ARCHITECTURE.md, "PostgreSQL"): the store a service
//! uses when `journal.url` is a `postgres://` URL.
//!
//! With the `test-cluster` feature, [`test_cluster`] starts a real, throwaway PostgreSQL server
//! for tests: no mocks.

pub mod queue;

#[cfg(feature = "test-cluster")]
pub mod test_cluster;
