//! The PostgreSQL backend's integration tests, one binary: each runs against a real server
//! this process starts (`impresario_pg::test_cluster`).

// A test here is a script of steps and checks, often longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

mod fences;
mod halts;
mod journal;
// The journal suite every backend passes, shared with impresario-runtime's tests.
#[path = "../../../runtime/tests/it/journal_suite.rs"]
mod journal_suite;
mod ledger;
mod logs;
mod memory;
// The long-term store suite every backend passes, shared with impresario-agents' tests.
#[path = "../../../agents/tests/it/memory_suite.rs"]
mod memory_suite;
mod queue;
mod test_cluster;
