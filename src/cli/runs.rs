//! `impresario runs list|show` and `impresario halt`: a service's runs.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::remote::{Error, Service};

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
pub async fn runs(service: &Service, command: RunsCommand) -> Result<bool, Error> {
    match command {
        RunsCommand::List { tenant, json } => {
            let path = match tenant {
                Some(tenant) => format!("/runs?tenant={}", encode(&tenant)),
                None => "/runs".into(),
            };
            let listed = service.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
                return Ok(true);
            }
            let runs = listed["runs"].as_array().cloned().unwrap_or_default();
            if runs.is_empty() {
                println!("no runs");
            }
            for run in runs {
                println!(
                    "{}  {}  {}  ${:.6}  {}",
                    text(&run["id"]),
                    text(&run["tenant"]),
                    text(&run["state"]["state"]),
                    run["usage"]["micro_usd"].as_u64().unwrap_or(0) as f64 / 1e6,
                    text(&run["goal"]),
                );
            }
        }
        RunsCommand::Show { id, json } => {
            let run = service.get(&format!("/runs/{}", encode(&id))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
                return Ok(true);
            }
            println!("run:    {}", text(&run["id"]));
            println!("tenant: {}", text(&run["tenant"]));
            println!("goal:   {}", text(&run["goal"]));
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
                println!(
                    "  step {} {}: {outcome}",
                    step["number"], step["step"]["type"]
                );
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
