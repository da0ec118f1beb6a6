//! impresario-supervisor's integration tests, one binary (one link on two cores). Each module
//! is a former test file; `common` holds what they share.

// A test here is a script of steps and checks, often longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

mod ceilings;
mod common;
mod halts_and_watchdog;
mod restarts;
