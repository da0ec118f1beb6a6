//! A user-written agent with two typed messages, one answered synchronously and one
//! asynchronously, started from a plain `fn main`; then a user-written critic joins a run's team
//! and reviews every plan before it is executed.
//!
//! Offline by default; set `OPENAI_API_KEY`, `ANTHROPIC_API_KEY` or `OPENAI_BASE_URL` for a real
//! planner. Run: `cargo run --example custom_agent`

use std::collections::BTreeMap;
use std::time::Duration;

use impresario::agents::{
    Orchestrator, ReviewPlan, RunRequest, Step, Team, Tool, ToolContext, ToolRegistry, Verdict,
};
use impresario::prelude::*;
use impresario::runtime::llm::{Scripted, ScriptedReply};
use impresario::setup;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Remember a fact. Answered at once with how many facts are known.
#[derive(Message, Serialize, Deserialize, Debug)]
#[rtype(result = "usize")]
struct Remember {
    key: String,
    value: String,
}

/// Look a fact up, as if from a slow store: answered asynchronously.
#[derive(Message, Serialize, Deserialize, Debug)]
#[rtype(result = "Option<String>")]
struct Recall {
    key: String,
}

/// A small memory agent: an ordinary actix actor.
#[derive(Default)]
struct Notebook {
    facts: BTreeMap<String, String>,
}

impl Actor for Notebook {
    type Context = Context<Self>;
}
// One line makes it an Impresario agent: panics become answers, handles survive restarts.
agent!(Notebook);

impl Handler<Remember> for Notebook {
    type Result = usize;
    fn handle(&mut self, msg: Remember, _: &mut Context<Self>) -> usize {
        self.facts.insert(msg.key, msg.value);
        self.facts.len()
    }
}

impl Handler<Recall> for Notebook {
    type Result = ResponseFuture<Option<String>>;
    fn handle(&mut self, msg: Recall, _: &mut Context<Self>) -> Self::Result {
        let found = self.facts.get(&msg.key).cloned();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await; // the "slow store"
            found
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::builder().start()?;
    let notebook = runtime.spawn(AgentId::new("notebook", "main"), Notebook::default)?;

    for (key, value) in [("capital:fr", "Paris"), ("capital:jp", "Tokyo")] {
        let known = notebook
            .ask(Remember {
                key: key.into(),
                value: value.into(),
            })
            .wait()?;
        println!("remembered {key} = {value} ({known} facts known)");
    }
    let answer = notebook
        .ask(Recall {
            key: "capital:jp".into(),
        })
        .timeout(Duration::from_secs(1))
        .wait()?;
    println!("recalled capital:jp = {answer:?}");

    // The same agent, found by name.
    let again: AgentRef<Notebook> = runtime
        .directory()
        .lookup(&AgentId::new("notebook", "main"))
        .expect("listed while running");
    let missing = again
        .ask(Recall {
            key: "capital:de".into(),
        })
        .wait()?;
    println!("recalled capital:de = {missing:?}");

    // Part two: a critic of our own joins a run, under the run's supervisor.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    tokio.block_on(run_with_critic(&runtime))?;

    let report = runtime.shutdown_blocking(Duration::from_secs(5));
    println!(
        "shut down: {} agent(s) stopped, {} killed",
        report.stopped, report.killed
    );
    Ok(())
}

/// Sends back any plan that answers before consulting a source.
#[derive(Default)]
struct Critic {
    sent_back: u32,
}

impl Actor for Critic {
    type Context = Context<Self>;
}
agent!(Critic);

impl Handler<ReviewPlan> for Critic {
    type Result = MessageResult<ReviewPlan>;
    fn handle(&mut self, review: ReviewPlan, _: &mut Context<Self>) -> Self::Result {
        let answers_at_once = matches!(review.plan.steps.first(), Some(Step::FinalAnswer { .. }));
        let labels: Vec<String> = review.plan.steps.iter().map(Step::label).collect();
        MessageResult(if answers_at_once && self.sent_back == 0 {
            self.sent_back += 1;
            println!("  critic: sent back {}", labels.join(", "));
            Verdict::Revise {
                feedback: "check the capital in a source before answering".into(),
            }
        } else {
            println!("  critic: approved {}", labels.join(", "));
            Verdict::Approve
        })
    }
}

#[derive(Deserialize, JsonSchema)]
struct LookupArgs {
    /// A country.
    country: String,
}

/// A tiny atlas.
struct Atlas;
impl Tool for Atlas {
    type Args = LookupArgs;
    fn name(&self) -> &str {
        "atlas"
    }
    fn description(&self) -> &str {
        "Looks up the capital of a country."
    }
    async fn call(&self, args: LookupArgs, _: ToolContext) -> Result<serde_json::Value, String> {
        match args.country.to_lowercase().as_str() {
            "japan" => Ok(json!("Tokyo")),
            "france" => Ok(json!("Paris")),
            other => Err(format!("no entry for {other}")),
        }
    }
}

async fn run_with_critic(runtime: &RuntimeHandle) -> Result<(), Box<dyn std::error::Error>> {
    let plan =
        |steps: serde_json::Value| ScriptedReply::text(json!({ "steps": steps }).to_string());
    let script = Scripted::new([
        plan(json!([{ "type": "final_answer", "answer": "Tokyo" }])),
        plan(
            json!([{ "type": "tool_call", "tool": "atlas", "arguments": { "country": "Japan" } }]),
        ),
        plan(json!([{ "type": "final_answer", "answer": "Tokyo, per the atlas" }])),
    ]);
    let models = setup::from_env_or(script)?;
    let mut tools = ToolRegistry::new();
    tools.register(Atlas)?;
    let team = Orchestrator::start(runtime, models.client, tools).await?;
    let request = RunRequest::new("What is the capital of Japan?", models.models).tools(["atlas"]);
    let run = team
        .submit_with(request, Team::new().reviewer("critic", Critic::default))
        .await?;
    let result = run.wait().await;
    println!(
        "run with a critic ended: {:?} after {} step(s)",
        result.state,
        result.steps.len()
    );
    Ok(())
}
