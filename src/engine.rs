//! The embedded runtime as the binary runs it, for `serve`, `run` and `replay` alike: the
//! models the configuration picks, the default tools and those of the `[[tools.mcp]]` servers,
//! the journal, an orchestrator, and run requests with the configured defaults.

use std::sync::Arc;
use std::time::Duration;

use impresario::agents::memory::MemoryDb;
use impresario::agents::{
    Budget, ModelMap, Orchestrator, OrchestratorConfig, RunRequest, RunUsage,
};
use impresario::mcp::McpServer;
use impresario::offline::OfflineModel;
use impresario::prelude::*;
use impresario::runtime::journal::{Journal, MemoryJournal, SqliteJournal};
use impresario::runtime::ledger::{AccountId, Ledger};
use impresario::runtime::llm::Client;
use impresario_pg::{Database, PgJournal};

use crate::ceilings::CeilingOverrides;
use crate::config::{self, Config};
use crate::models;
use crate::writer_lock::WriterLock;

/// A started runtime with its orchestrator.
pub struct Engine {
    /// The runtime (attached to the binary's actix system).
    pub runtime: RuntimeHandle,
    /// Submits and drives runs.
    pub orchestrator: Orchestrator,
    /// Tenant ceilings set over the API, kept beside the journal.
    pub ceilings: CeilingOverrides,
    /// The client runs call models through.
    pub client: Client,
    /// What the models are, for a person (`offline`, `openai: light gpt-4o-mini, ...`).
    pub models_description: String,
    /// True when the offline stand-in answers (it does not reason).
    pub offline: bool,
    /// The models runs use.
    pub models: ModelMap,
    /// The PostgreSQL database the journal is in (`journal.url`), which a cluster's run
    /// queue shares.
    pub database: Option<Database>,
    defaults: crate::config::RunDefaults,
    /// Held for as long as the engine lives: no other process writes its journal file.
    _writer: Option<WriterLock>,
}

impl Engine {
    /// Starts the runtime on the current actix system, with the models, tools and journal
    /// `config` selects. Fails with [`LockError::Held`](crate::writer_lock::LockError) before
    /// opening the journal file if another process writes it.
    pub async fn start(config: &Config) -> Result<Engine, Box<dyn std::error::Error>> {
        // One process writes a journal file; on PostgreSQL, runs are leased one by one (`serve`).
        let writer = match (config.journal.postgres_url(), config.journal.file()) {
            (None, Some(file)) => Some(WriterLock::acquire(file)?),
            _ => None,
        };
        let (journal, database) = open_store(&config.journal).await?;
        let offline =
            OfflineModel::new().latency(Duration::from_millis(config.models.offline_latency_ms));
        let models::Chosen {
            setup: chosen,
            offline,
        } = models::choose(config, offline, config.models.cache_entries)?;
        let runtime = Runtime::builder().attach()?;
        let client = chosen.client;
        let mut tools = impresario::tools::registry()?;
        for server in config.mcp_servers()? {
            // Connected and listed now: a server that does not start stops the start, named.
            tools.provide(McpServer::start(server).await?)?;
        }
        let ledger = Ledger::new();
        ledger.set_ceilings(config.budget.ceilings());
        let orchestrator = Orchestrator::with(
            &runtime,
            client.clone(),
            tools,
            ledger,
            OrchestratorConfig {
                journal,
                memory_db: memory_db(config)?,
                ..OrchestratorConfig::default()
            },
        )
        .await?;
        let ceilings =
            CeilingOverrides::load(config.journal.file(), orchestrator.ledger().clone())?;
        Ok(Engine {
            runtime,
            orchestrator,
            ceilings,
            client,
            models_description: chosen.description,
            offline,
            models: chosen.models,
            database,
            defaults: config.runs.clone(),
            _writer: writer,
        })
    }

    /// A request for `goal` with the configured defaults (budget, steps, tools).
    pub fn request(&self, goal: impl Into<String>) -> RunRequest {
        let tokens = self.defaults.budget_tokens;
        RunRequest::new(goal, self.models.clone())
            .budget(Budget {
                tokens: (tokens > 0).then_some(tokens),
                ..Budget::usd(self.defaults.budget_usd)
            })
            .max_steps(self.defaults.max_steps as u32)
            .tools(self.defaults.tools.iter().cloned())
    }

    /// What a run has spent so far (zero once it ended: its result has the final figures).
    pub fn usage(&self, run: &RunId) -> RunUsage {
        let account = AccountId::Run(run.clone());
        self.orchestrator
            .ledger()
            .account(&account)
            .map(|a| RunUsage::from(a.snapshot().spent))
            .unwrap_or_default()
    }
}

/// The journal `[journal]` selects: PostgreSQL at `url`, else the SQLite file `path`, else
/// memory. Opening a file or a database that is not a journal, or of a newer version, fails
/// without changing it; a database that cannot be reached fails naming its host and database.
pub async fn open_journal(config: &config::Journal) -> Result<Arc<dyn Journal>, String> {
    Ok(open_store(config).await?.0)
}

/// [`open_journal`], and the PostgreSQL database it is in (if `url` puts it there).
async fn open_store(
    config: &config::Journal,
) -> Result<(Arc<dyn Journal>, Option<Database>), String> {
    let failed = |e: String| format!("cannot open the journal ({}): {e}", config.describe());
    let opened: Arc<dyn Journal> = match (config.postgres_url(), config.file()) {
        (Some(url), _) => {
            let url = url.to_owned();
            // Connecting blocks (it waits for the server and migrates the schema).
            let connected = tokio::task::spawn_blocking(move || PgJournal::connect(&url))
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(|e| failed(e.to_string()))?;
            let database = connected.database().clone();
            return Ok((Arc::new(connected), Some(database)));
        }
        (None, Some(file)) => {
            Arc::new(SqliteJournal::open(file).map_err(|e| failed(e.to_string()))?)
        }
        (None, None) => Arc::new(MemoryJournal::new()),
    };
    Ok((opened, None))
}

/// The long-term memory file `[memory]` names, opened with its retention; `None` when memory
/// is kept in this process only.
fn memory_db(config: &Config) -> Result<Option<MemoryDb>, String> {
    let Some(file) = config.memory.file(&config.journal) else {
        return Ok(None);
    };
    MemoryDb::open(&file, config.memory.retention())
        .map(Some)
        .map_err(|e| format!("cannot open the long-term memory (memory.path {file:?}): {e}"))
}
