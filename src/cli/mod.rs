//! The command line: `serve`, `run`, `runs list|show`, `halt`, `replay`.

mod progress;
mod remote;
mod replay;
mod run;
mod runs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::writer_lock::LockError;

/// Impresario runs LLM agents as supervised actors. `serve` starts the HTTP control plane;
/// `run` pursues one goal and shows its progress. Offline by default: without a provider key
/// in the environment, a stand-in model answers.
#[derive(Parser)]
#[command(name = "impresario", version)]
pub struct Cli {
    /// Configuration file (TOML; see impresario.example.toml). Every key can also be set as
    /// IMPRESARIO_<SECTION>__<KEY>, e.g. IMPRESARIO_SERVER__LISTEN.
    #[arg(long, global = true, env = "IMPRESARIO_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP control plane until SIGTERM or Ctrl-C, then drain the running runs.
    Serve,
    /// Pursue a goal and show its steps, tokens and cost: on an embedded runtime, or on a
    /// service with --server.
    Run(run::RunArgs),
    /// List or show runs: those of the journal file (journal.path), or of a service with
    /// --server.
    Runs {
        #[command(subcommand)]
        command: runs::RunsCommand,
        /// Ask the service at this URL instead of reading the journal file.
        #[arg(long, global = true, env = "IMPRESARIO_URL")]
        server: Option<String>,
        /// The service's bearer token (its server.token).
        #[arg(long, global = true, env = "IMPRESARIO_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Halt a run, a tenant's runs, or every run of a service.
    Halt {
        #[command(flatten)]
        halt: runs::HaltArgs,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Re-execute a journaled run with no network and no tool call, and report the first
    /// place where it now behaves differently, if any.
    Replay {
        /// The run's id.
        run: String,
    },
}

/// Where the service is.
#[derive(Args)]
struct ServiceArgs {
    /// The service's URL.
    #[arg(
        long,
        global = true,
        env = "IMPRESARIO_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// The service's bearer token (its server.token).
    #[arg(long, global = true, env = "IMPRESARIO_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServiceArgs {
    fn service(&self) -> remote::Service {
        remote::Service::new(&self.server, self.token.clone())
    }
}

impl Cli {
    /// Whether this is `serve` (which logs more).
    pub fn serves(&self) -> bool {
        matches!(self.command, Command::Serve)
    }

    /// The configuration: `--config` and the `IMPRESARIO_*__*` variables.
    pub fn config(&self) -> Result<Config, crate::config::ConfigError> {
        Config::load(self.config.as_deref(), std::env::vars())
    }

    /// Runs the command with `config` on the current actix system.
    pub async fn execute(self, config: Config) -> ExitCode {
        let outcome = match self.command {
            Command::Serve => crate::service::serve(config).await.map(|()| true),
            Command::Run(args) => run::run(&config, args).await,
            Command::Runs {
                command,
                server,
                token,
            } => {
                let source = match server {
                    Some(url) => runs::Source::Service(remote::Service::new(&url, token)),
                    None => runs::Source::Journal(config.journal.clone()),
                };
                runs::runs(&source, command).await
            }
            Command::Halt { halt, service } => runs::halt(&service.service(), halt).await,
            Command::Replay { run } => replay::replay(&config, run).await,
        };
        match outcome {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("impresario: {e}");
                // Like a bad configuration: this process must not start at all.
                if e.downcast_ref::<LockError>().is_some() {
                    ExitCode::from(2)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
    }
}
