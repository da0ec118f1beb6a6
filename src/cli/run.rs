//! `impresario run "goal"`: on an embedded runtime (the default), or on a service
//! (`--server URL`); either way with live progress.

use std::time::Duration;

use clap::Args;
use impresario::agents::{Budget, RunUpdate, RunUsage};
use impresario::runtime::halt::HaltMode;
use serde_json::{json, Value};

use super::progress::Progress;
use super::remote::{Error, Service};
use crate::config::Config;
use crate::engine::Engine;

/// The arguments of `run`.
#[derive(Args)]
pub struct RunArgs {
    /// What to achieve.
    goal: String,
    /// The most the run may spend, in US dollars (default: runs.budget_usd).
    #[arg(long)]
    budget_usd: Option<f64>,
    /// The tools it may use, comma-separated (default: runs.tools).
    #[arg(long, value_delimiter = ',')]
    tools: Option<Vec<String>>,
    /// The tenant it runs for.
    #[arg(long)]
    tenant: Option<String>,
    /// The most steps it may take (default: runs.max_steps).
    #[arg(long)]
    max_steps: Option<u32>,
    /// Run it on the service at this URL instead of an embedded runtime.
    #[arg(long, env = "IMPRESARIO_URL")]
    server: Option<String>,
    /// The service's bearer token (with --server).
    #[arg(long, env = "IMPRESARIO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print each model answer whole when it is complete, instead of as it arrives.
    #[arg(long)]
    no_stream: bool,
}

/// Runs the goal; true if it succeeded.
pub async fn run(config: &Config, args: RunArgs) -> Result<bool, Error> {
    if let Some(usd) = args.budget_usd {
        if !usd.is_finite() || usd < 0.0 {
            return Err(format!("--budget-usd {usd}: use 0 or more dollars").into());
        }
    }
    match args.server.clone() {
        Some(url) => on_service(&Service::new(&url, args.token.clone()), args).await,
        None => embedded(config, args).await,
    }
}

async fn embedded(config: &Config, args: RunArgs) -> Result<bool, Error> {
    let engine = Engine::start(config).await?;
    let mut request = engine.request(args.goal);
    if let Some(usd) = args.budget_usd {
        request = request.budget(Budget::usd(usd));
    }
    if let Some(tools) = args.tools {
        request = request.tools(tools);
    }
    if let Some(tenant) = args.tenant {
        request = request.tenant(tenant);
    }
    if let Some(max_steps) = args.max_steps {
        request = request.max_steps(max_steps);
    }
    let run = engine
        .orchestrator
        .submit(request.stream(!args.no_stream))
        .await?;
    // The first receiver of a run has every event from its start.
    let mut events = run.events();
    println!("run {} (models: {})", run.id(), engine.models_description);
    let mut progress = Progress::start();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut halting = false;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    progress.event(&event);
                    progress.usage(engine.usage(run.id()));
                    if matches!(&event, RunUpdate::State(s) if s.is_terminal()) {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            // Only if events were lost (a receiver far behind): the end is known anyway.
            _ = run.wait() => break,
            _ = &mut ctrl_c, if !halting => {
                halting = true;
                progress.line("halting the run (Ctrl-C)");
                run.halt(HaltMode::Immediate);
            }
        }
    }
    let result = run.wait().await;
    let succeeded = progress.finish(&result.state, result.usage);
    engine.runtime.shutdown(Duration::from_secs(5)).await;
    Ok(succeeded)
}

async fn on_service(service: &Service, args: RunArgs) -> Result<bool, Error> {
    let mut body = json!({ "goal": args.goal, "stream": !args.no_stream });
    if let Some(usd) = args.budget_usd {
        body["budget_usd"] = json!(usd);
    }
    if let Some(tools) = args.tools {
        body["tools"] = json!(tools);
    }
    if let Some(tenant) = args.tenant {
        body["tenant"] = json!(tenant);
    }
    if let Some(max_steps) = args.max_steps {
        body["max_steps"] = json!(max_steps);
    }
    let submitted = service.post("/runs", body).await?;
    let id = submitted["id"]
        .as_str()
        .ok_or("the service answered without a run id")?
        .to_owned();
    println!("run {id} (on {})", args.server.unwrap_or_default());
    let mut progress = Progress::start();
    let mut events = service.events(&id).await?;
    while let Some(event) = events.next().await? {
        progress.event(&event);
        // Spending changes with calls and steps, not with every piece of text.
        if !matches!(event, RunUpdate::Delta { .. }) {
            progress.usage(usage(&service.get(&format!("/runs/{id}")).await?)?);
        }
    }
    let shown = service.get(&format!("/runs/{id}")).await?;
    let state = serde_json::from_value(shown["state"].clone())
        .map_err(|e| format!("the service sent a state this CLI cannot read: {e}"))?;
    Ok(progress.finish(&state, usage(&shown)?))
}

fn usage(run: &Value) -> Result<RunUsage, Error> {
    serde_json::from_value(run["usage"].clone())
        .map_err(|e| format!("the service sent a usage this CLI cannot read: {e}").into())
}
