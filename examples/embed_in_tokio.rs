//! Embedding the runtime in a tokio multi-thread program (an axum, hyper or tonic service looks
//! the same): many tokio tasks call agents concurrently, then the runtime shuts down cleanly.
//!
//! Run: `cargo run --example embed_in_tokio`

use std::time::{Duration, Instant};

use impresario::prelude::*;

/// Count words in a text.
#[derive(Message)]
#[rtype(result = "usize")]
struct CountWords(String);

/// How many texts this agent has seen.
#[derive(Message)]
#[rtype(result = "u64")]
struct Seen;

#[derive(Default)]
struct WordCounter {
    seen: u64,
}

impl Actor for WordCounter {
    type Context = Context<Self>;
}
agent!(WordCounter);

impl Handler<CountWords> for WordCounter {
    type Result = usize;
    fn handle(&mut self, msg: CountWords, _: &mut Context<Self>) -> usize {
        self.seen += 1;
        msg.0.split_whitespace().count()
    }
}

impl Handler<Seen> for WordCounter {
    type Result = u64;
    fn handle(&mut self, _: Seen, _: &mut Context<Self>) -> u64 {
        self.seen
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The runtime runs its actix threads beside tokio's; its handle is Send + Sync.
    let runtime = Runtime::builder().start()?;
    let counters: Vec<AgentRef<WordCounter>> = (0..4)
        .map(|i| {
            runtime.spawn(
                AgentId::new("word-counter", i.to_string()),
                WordCounter::default,
            )
        })
        .collect::<Result<_, _>>()?;

    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|task| {
            let counters = counters.clone();
            tokio::spawn(async move {
                let mut words = 0;
                for i in 0..50 {
                    let agent = &counters[(task + i) % counters.len()];
                    let text = format!("request {i} from task {task}");
                    words += agent.ask(CountWords(text)).await?;
                }
                Ok::<usize, AgentError>(words)
            })
        })
        .collect();
    let mut total_words = 0;
    for task in tasks {
        total_words += task.await??;
    }
    println!(
        "200 tokio tasks made 10000 asks in {:?}: {total_words} words counted",
        started.elapsed()
    );
    for counter in &counters {
        println!("{} saw {} texts", counter.id(), counter.ask(Seen).await?);
    }

    let report = runtime.shutdown(Duration::from_secs(5)).await;
    println!(
        "shut down: {} agent(s) stopped, {} killed",
        report.stopped, report.killed
    );
    Ok(())
}
