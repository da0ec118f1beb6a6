//! impresario-supervisor's integration tests, one binary (one link on two cores). Each module
//! is a former test file; `common` holds what they share.

mod ceilings;
mod common;
mod halts_and_watchdog;
mod restarts;
