//! The embedded runtime as the binary runs it, for `serve`, `run` and `replay` alike: the
//! models the configuration picks, the default tools, the journal, an orchestrator, and run
//! requests with the configured defaults.

use std::sync::Arc;
use std::time::Duration;

use impresario::agents::{
    Budget, ModelMap, Orchestrator, OrchestratorConfig, RunRequest, RunUsage,
};
use impresario::offline::OfflineModel;
use impresario::prelude::*;
use impresario::runtime::journal::{Journal, MemoryJournal, SqliteJournal};
use impresario::runtime::ledger::{AccountId, Ledger};
use impresario::runtime::llm::Client;
use impresario::setup;

use crate::config::Config;

/// A started runtime with its orchestrator.
pub struct Engine {
    /// The runtime (attached to the binary's actix system).
    pub runtime: RuntimeHandle,
    /// Submits and drives runs.
    pub orchestrator: Orchestrator,
    /// The client runs call models through.
    pub client: Client,
    /// What the models are, for a person (`offline`, `openai gpt-4o-mini`, ...).
    pub models_description: String,
    models: ModelMap,
    defaults: crate::config::RunDefaults,
}

impl Engine {
    /// Starts the runtime on the current actix system, with the models, tools and journal
    /// `config` selects.
    pub async fn start(config: &Config) -> Result<Engine, Box<dyn std::error::Error>> {
        let journal: Arc<dyn Journal> = match config.journal.file() {
            Some(file) => Arc::new(
                SqliteJournal::open(file)
                    .map_err(|e| format!("cannot open the journal (journal.path {file:?}): {e}"))?,
            ),
            None => Arc::new(MemoryJournal::new()),
        };
        let offline =
            OfflineModel::new().latency(Duration::from_millis(config.models.offline_latency_ms));
        let chosen = match config.models.provider.as_str() {
            "offline" => setup::offline(offline)?,
            _ => setup::from_env_or(offline)?,
        };
        let runtime = Runtime::builder().attach()?;
        let client = chosen.client;
        let orchestrator = Orchestrator::with(
            &runtime,
            client.clone(),
            impresario::tools::registry()?,
            Ledger::new(),
            OrchestratorConfig {
                journal,
                ..OrchestratorConfig::default()
            },
        )
        .await?;
        Ok(Engine {
            runtime,
            orchestrator,
            client,
            models_description: chosen.description,
            models: chosen.models,
            defaults: config.runs.clone(),
        })
    }

    /// A request for `goal` with the configured defaults (budget, steps, tools).
    pub fn request(&self, goal: impl Into<String>) -> RunRequest {
        RunRequest::new(goal, self.models.clone())
            .budget(Budget::usd(self.defaults.budget_usd))
            .max_steps(self.defaults.max_steps as u32)
            .tools(self.defaults.tools.iter().cloned())
    }

    /// What a run has spent so far (zero once it ended: its result has the final figures).
    pub fn usage(&self, run: &RunId) -> RunUsage {
        let account = AccountId::Run(run.to_string());
        self.orchestrator
            .ledger()
            .account(&account)
            .map(|a| {
                let spent = a.snapshot().spent;
                RunUsage {
                    micro_usd: spent.micro_usd,
                    tokens: spent.tokens,
                    model_calls: spent.model_calls,
                }
            })
            .unwrap_or_default()
    }
}
