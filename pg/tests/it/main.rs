//! The PostgreSQL backend's integration tests, one binary: each runs against a real server
//! this process starts (`impresario_pg::test_cluster`).

mod halts;
mod ledger;
mod queue;
mod test_cluster;
