//! `impresario replay <run>`: re-executes a journaled run with no network and no tool call
//! (every model answer and tool result comes from the journal) and reports the first place
//! where the code now behaves differently. Exits 1 on a divergence.

use std::time::Duration;

use impresario::runtime::RunId;

use super::remote::Error;
use crate::config::Config;
use crate::engine::Engine;

/// Replays `run` from the configured journal (file or PostgreSQL); true if it did not diverge.
pub async fn replay(config: &Config, run: String) -> Result<bool, Error> {
    if config.journal.postgres_url().is_none() {
        let Some(file) = config.journal.file() else {
            return Err("the journal is in memory (journal.path = \":memory:\"): there is no recorded run to replay; set journal.path".into());
        };
        if !file.exists() {
            return Err(
                format!("no journal at {file:?} (journal.path); run something first").into(),
            );
        }
    }
    let engine = Engine::start(config).await?;
    let report = engine.orchestrator.replay(&RunId::new(run)).await;
    engine.runtime.shutdown(Duration::from_secs(5)).await;
    let report = report?;
    println!(
        "replayed run {}: {} journaled events, no network or tool call",
        report.run, report.events
    );
    let state = serde_json::to_value(&report.state)?;
    println!("ended:  {state}");
    if !report.complete {
        println!(
            "the journal ends before the run did (it was halted or cut off): replayed up to there"
        );
    }
    match report.divergence {
        None => {
            println!("no divergence: the run behaves as recorded");
            Ok(true)
        }
        Some(divergence) => {
            println!(
                "diverged at event {}:\n  recorded: {}\n  now:      {}",
                divergence.seq, divergence.expected, divergence.found
            );
            Ok(false)
        }
    }
}
