//! `impresario`: the command line and the HTTP control plane of the Impresario runtime.
//! `impresario serve` serves runs over HTTP; `impresario run "goal"` pursues one goal with live
//! progress. See `impresario --help` and the README.

mod ceilings;
mod cli;
mod config;
mod engine;
mod identity;
mod journaled;
mod models;
mod service;
mod telemetry;
mod writer_lock;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::filter::LevelFilter;

/// The process's allocator: jemalloc, which returns freed pages to the system, so the service's
/// resident memory stays level over many runs (BENCHMARKS.md, "Bounded memory").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let config = match cli.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("impresario: {e}");
            return ExitCode::from(2);
        }
    };
    // Logs go to stderr: what `serve` does at info, only warnings for the other commands.
    let level = if cli.serves() {
        LevelFilter::INFO
    } else {
        LevelFilter::WARN
    };
    let export = match telemetry::init(level, &config.telemetry) {
        Ok(export) => export,
        Err(e) => {
            eprintln!("impresario: {e}");
            return ExitCode::from(2);
        }
    };
    // One actix system runs the HTTP server (or client) and the embedded runtime's agents.
    let code = actix_web::rt::System::new().block_on(cli.execute(config));
    export.shutdown();
    code
}
