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
mod writer_lock;

use std::process::ExitCode;

use clap::Parser;
use impresario::runtime::redact::RedactingWriter;
use tracing_subscriber::filter::LevelFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Logs go to stderr: what `serve` does at info, only warnings for the other commands.
    let level = if cli.serves() {
        LevelFilter::INFO
    } else {
        LevelFilter::WARN
    };
    tracing_subscriber::fmt()
        // One redaction layer: no credential the process holds reaches a log line.
        .with_writer(|| RedactingWriter(std::io::stderr()))
        .with_max_level(level)
        .init();
    // One actix system runs the HTTP server (or client) and the embedded runtime's agents.
    actix_web::rt::System::new().block_on(cli.execute())
}
