//! A user-written agent with two typed messages, one answered synchronously and one
//! asynchronously, started from a plain `fn main`.
//!
//! Run: `cargo run --example custom_agent`

use std::collections::BTreeMap;
use std::time::Duration;

use impresario::prelude::*;
use serde::{Deserialize, Serialize};

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

    let report = runtime.shutdown_blocking(Duration::from_secs(5));
    println!(
        "shut down: {} agent(s) stopped, {} killed",
        report.stopped, report.killed
    );
    Ok(())
}
