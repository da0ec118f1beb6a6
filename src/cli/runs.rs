//! `impresario runs list|show` (from the journal file, or a service) and `impresario halt` (a
//! service's runs).

use clap::{Args, Subcommand};
use std::sync::Arc;

use impresario::runtime::journal::{Journal, RunFilter};
use impresario::runtime::RunId;
use serde_json::{json, Value};

use super::remote::{Error, Service};
use crate::config;
use crate::engine::open_journal;
use crate::journaled;

/// Where runs are read from.
pub enum Source {
    /// A running service.
    Service(Service),
    /// The journal file of the configuration.
    Journal(config::Journal),
}

impl Source {
    async fn list(&self, tenant: Option<String>) -> Result<Value, Error> {
        match self {
            Source::Service(service) => {
                // Page by page, each continuing at the cursor the last one gave.
                let base = match tenant {
                    Some(tenant) => format!("/runs?limit=1000&tenant={}", encode(&tenant)),
                    None => "/runs?limit=1000".into(),
                };
                let mut runs = Vec::new();
                let mut page = service.get(&base).await?;
                loop {
                    runs.extend(page["runs"].as_array().cloned().unwrap_or_default());
                    let Some(next) = page["next"].as_str() else {
                        return Ok(json!({ "runs": runs }));
                    };
                    page = service
                        .get(&format!("{base}&after={}", encode(next)))
                        .await?;
                }
            }
            Source::Journal(journal) => {
                let Some(journal) = open(journal).await? else {
                    return Ok(json!({ "runs": [] }));
                };
                let mut filter = RunFilter::all();
                if let Some(tenant) = tenant {
                    filter = filter.tenant(tenant);
                }
                // Local reads are cheap: each run is read whole, for its goal, state and usage.
                let mut runs = Vec::new();
                for summary in journal.runs(&filter)? {
                    let mut listed = journaled::listed(&summary);
                    if let Some(shown) = journaled::shown(&journal.read(&summary.run)?) {
                        for key in ["goal", "state", "usage"] {
                            listed[key] = shown[key].clone();
                        }
                    }
                    runs.push(listed);
                }
                Ok(json!({ "runs": runs }))
            }
        }
    }

    async fn show(&self, id: &str) -> Result<Value, Error> {
        match self {
            Source::Service(service) => service.get(&format!("/runs/{}", encode(id))).await,
            Source::Journal(config) => {
                let entries = match open(config).await? {
                    Some(journal) => journal.read(&RunId::new(id))?,
                    None => Vec::new(),
                };
                journaled::shown(&entries).ok_or_else(|| {
                    format!("the journal ({}) has no run {id:?}", config.describe()).into()
                })
            }
        }
    }
}

/// The journal of the configuration, if there is one (reading must not create a file).
async fn open(config: &config::Journal) -> Result<Option<Arc<dyn Journal>>, Error> {
    if config.postgres_url().is_none() {
        let Some(file) = config.file() else {
            return Err("the journal is in memory (journal.path = \":memory:\"), so no run outlives its process; pass --server to ask a service".into());
        };
        if !file.exists() {
            return Ok(None);
        }
    }
    Ok(Some(open_journal(config).await?))
}

/// `runs` subcommands.
#[derive(Subcommand)]
pub enum RunsCommand {
    /// One line per run: id, tenant, state, cost, goal.
    List {
        /// Only this tenant's runs.
        #[arg(long)]
        tenant: Option<String>,
        /// Print the service's JSON.
        #[arg(long)]
        json: bool,
    },
    /// A run: its state, usage and steps.
    Show {
        /// The run's id.
        id: String,
        /// Print the service's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What `halt` halts, and how.
#[derive(Args)]
pub struct HaltArgs {
    /// The run to halt.
    #[arg(required_unless_present_any = ["tenant", "all"], conflicts_with_all = ["tenant", "all"])]
    run: Option<String>,
    /// Halt every run of this tenant (its new runs too, until the service restarts).
    #[arg(long, conflicts_with = "all")]
    tenant: Option<String>,
    /// Halt every run (new runs too, until the service restarts).
    #[arg(long)]
    all: bool,
    /// Let the current step finish (for up to 30 s) instead of aborting it.
    #[arg(long)]
    graceful: bool,
    /// Why, for the record.
    #[arg(long)]
    detail: Option<String>,
}

/// Runs a `runs` subcommand.
pub async fn runs(source: &Source, command: RunsCommand) -> Result<bool, Error> {
    match command {
        RunsCommand::List { tenant, json } => {
            let listed = source.list(tenant).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
                return Ok(true);
            }
            let runs = listed["runs"].as_array().cloned().unwrap_or_default();
            if runs.is_empty() {
                println!("no runs");
            }
            for run in runs {
                // The run's state where the service knows it, else the journal's status.
                let state = run["state"]["state"].as_str().or(run["status"].as_str());
                let cost = run["usage"]["micro_usd"]
                    .as_u64()
                    .map_or("-".into(), |m| format!("${:.6}", m as f64 / 1e6));
                println!(
                    "{}  {}  {}  {cost}  {}",
                    text(&run["id"]),
                    text(&run["tenant"]),
                    state.unwrap_or("-"),
                    text(&run["goal"]),
                );
            }
        }
        RunsCommand::Show { id, json } => {
            let run = source.show(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
                return Ok(true);
            }
            println!("run:    {}", text(&run["id"]));
            println!("tenant: {}", text(&run["tenant"]));
            println!("goal:   {}", text(&run["goal"]));
            println!("status: {}", text(&run["status"]));
            println!("state:  {}", run["state"]);
            println!(
                "usage:  {} model calls, {} tokens, ${:.6}",
                run["usage"]["model_calls"],
                run["usage"]["tokens"],
                run["usage"]["micro_usd"].as_u64().unwrap_or(0) as f64 / 1e6
            );
            for step in run["steps"].as_array().cloned().unwrap_or_default() {
                let outcome = match (&step["outcome"]["Ok"], &step["outcome"]["Err"]) {
                    (Value::String(ok), _) => ok.split_whitespace().collect::<Vec<_>>().join(" "),
                    (_, failure) => format!("failed: {failure}"),
                };
                let label = match step["step"]["type"].as_str() {
                    Some("tool_call") => format!("tool:{}", text(&step["step"]["tool"])),
                    other => other.unwrap_or("-").to_owned(),
                };
                println!("  step {} {label}: {outcome}", step["number"]);
            }
        }
    }
    Ok(true)
}

/// Runs `halt`.
pub async fn halt(service: &Service, args: HaltArgs) -> Result<bool, Error> {
    let mut body = json!({});
    if args.graceful {
        body["mode"] = json!("graceful");
    }
    if let Some(detail) = args.detail {
        body["detail"] = json!(detail);
    }
    let answer = match (args.run, args.tenant) {
        (Some(run), _) => {
            service
                .post(&format!("/runs/{}/halt", encode(&run)), body)
                .await?
        }
        (None, Some(tenant)) => {
            body["tenant"] = json!(tenant);
            service.post("/halt", body).await?
        }
        (None, None) => {
            body["all"] = json!(true);
            service.post("/halt", body).await?
        }
    };
    println!("halted: {answer}");
    Ok(true)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

/// Percent-encodes what is not unreserved in a URL path segment or query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
