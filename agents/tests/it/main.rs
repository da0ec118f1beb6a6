//! impresario-agents' integration tests, one binary (one link on two cores). Each module is a
//! former test file. `crash_recovery` re-executes this binary as its child process
//! (`crash_recovery::crash_child`), so the child is its own process without a binary of its own.

// A test here is a script of steps and checks, often longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

mod crash_recovery;
mod held_in_pg;
mod journaled_runs;
mod loopback;
mod memory;
mod memory_db;
// The long-term store suite every backend passes, shared with impresario-pg's tests.
mod memory_suite;
mod money;
mod runs;
mod settled_with_answers;
mod streamed_runs;
mod supervised_driver;
