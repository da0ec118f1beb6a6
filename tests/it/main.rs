//! The facade's integration tests, one binary (one link on two cores). Each module is a former
//! test file; `binary` runs the real `impresario` executable, `browser` drives headless
//! Chromium over WebDriver, `support` parses the Prometheus exposition. `embed_in_service` stays a binary of its own: the example it starts installs
//! the global metrics recorder.

// A test here is a script of steps and checks, often longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

mod backends;
mod binary;
mod browser;
mod cli;
mod cluster;
mod console;
mod journal_owner;
mod metrics;
mod models;
mod ops;
#[cfg(feature = "otlp")]
mod otlp;
mod postgres;
mod provider;
mod redaction;
mod service;
mod support;
mod tenants;
mod tools;
