//! impresario-runtime's integration tests, one binary (one link on two cores). Each module is
//! a former test file. Tests that need a process of their own stay beside this directory:
//! `drop_without_shutdown` counts the process's threads, `prometheus_listener` installs the
//! global metrics recorder, `span_parenting` and `telemetry_traces` install a global tracing
//! subscriber (handlers run on the runtime's threads, so a scoped one would miss them).

// A test here is a script of steps and checks, often longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

mod budget_contract;
mod halt_http;
mod journal;
mod journal_blobs;
mod journal_suite;
mod ledger_model;
mod ledger_race;
mod llm_http;
mod llm_offline;
mod llm_stream;
mod llm_support;
mod start_modes;
mod substrate;
