//! The embedded runtime as the binary runs it, for `serve`, `run` and `replay` alike: the
//! models the configuration picks, the default tools and those of the `[[tools.mcp]]` servers,
//! the journal, an orchestrator, and run requests with the configured defaults.

use std::sync::Arc;
use std::time::Duration;

use impresario::agents::memory::{LongTermStore, MemoryDb};
use impresario::agents::{
    Budget, ModelMap, Orchestrator, OrchestratorConfig, RunRequest, RunUsage, ToolRegistry,
};
use impresario::mcp::McpServer;
use impresario::offline::OfflineModel;
use impresario::prelude::*;
use impresario::runtime::halt::{Halt, HaltScope};
use impresario::runtime::halt_store::HaltStore;
use impresario::runtime::journal::{Journal, MemoryJournal, SqliteJournal};
use impresario::runtime::ledger::{AccountId, Ceilings, Ledger};
use impresario::runtime::ledger_store::LedgerStore;
use impresario::runtime::llm::Client;
use impresario_pg::approvals::PgApprovals;
use impresario_pg::ceilings::PgCeilings;
use impresario_pg::halts::{HaltFollower, PgHalts};
use impresario_pg::journal::{HoldSettlement, PgJournalOptions};
use impresario_pg::ledger::{PgLedger, PgLedgerConfig};
use impresario_pg::memory::PgMemory;
use impresario_pg::{Database, Fences, PgJournal};

use crate::ceilings::TenantCeilings;
use crate::config::{self, Config};
use crate::models;
use crate::writer_lock::WriterLock;

/// A started runtime with its orchestrator.
pub struct Engine {
    /// The runtime (attached to the binary's actix system).
    pub runtime: RuntimeHandle,
    /// Submits and drives runs.
    pub orchestrator: Orchestrator,
    /// Tenant ceilings set over the API, in a file beside the journal or in PostgreSQL.
    pub ceilings: TenantCeilings,
    /// The client runs call models through.
    pub client: Client,
    /// What the models are, for a person (`offline`, `openai: light gpt-4o-mini, ...`).
    pub models_description: String,
    /// True when the offline stand-in answers (it does not reason).
    pub offline: bool,
    /// The models runs use.
    pub models: ModelMap,
    /// The PostgreSQL database of `journal.url`, which a cluster's run queue shares, and the
    /// lease epochs its journal and ledger fence each run's writes with.
    pub database: Option<(Database, Fences)>,
    defaults: crate::config::RunDefaults,
    /// Halts recorded in PostgreSQL for every process (`journal.url`), and the follower that
    /// applies theirs here.
    shared_halts: Option<(PgHalts, HaltFollower)>,
    /// Decisions about steps waiting for approval, recorded in PostgreSQL (`journal.url`).
    approvals: Option<PgApprovals>,
    /// Held for as long as the engine lives: no other process writes its journal file.
    _writer: Option<WriterLock>,
}

/// The PostgreSQL stores of `journal.url`, before the orchestrator starts.
struct Postgres {
    db: Database,
    /// The runs this process drives under a cluster lease: the journal and the ledger fence
    /// their writes with the lease's epoch.
    fences: Fences,
    halts: PgHalts,
    ceilings: PgCeilings,
    approvals: PgApprovals,
}

impl Engine {
    /// Starts the runtime on the current actix system, with the models, tools and journal
    /// `config` selects. Fails with [`LockError::Held`](crate::writer_lock::LockError) before
    /// opening the journal file if another process writes it. With `journal.url`, runs also
    /// reserve in PostgreSQL's ledger against ceilings every process shares, and follow the
    /// halts every process records there.
    pub async fn start(config: &Config) -> Result<Engine, Box<dyn std::error::Error>> {
        // One process writes a journal file; on PostgreSQL, `serve` leases runs one by one.
        let writer = match (config.journal.postgres_url(), config.journal.file()) {
            (None, Some(file)) => Some(WriterLock::acquire(file)?),
            _ => None,
        };
        let postgres = match config.journal.postgres_url() {
            Some(url) => Some(Postgres::connect(&config.journal, url, config).await?),
            None => None,
        };
        let journal: Arc<dyn Journal> = match &postgres {
            Some(pg) => Arc::new(pg.journal()),
            None => open_journal(&config.journal).await?,
        };
        let offline =
            OfflineModel::new().latency(Duration::from_millis(config.models.offline_latency_ms));
        let models::Chosen {
            setup: chosen,
            offline,
        } = models::choose(config, offline, config.models.cache_entries)?;
        let runtime = Runtime::builder().attach()?;
        let client = chosen.client;
        let tools = tools(config).await?;
        let orchestrator =
            start_orchestrator(&runtime, &client, tools, config, journal, &postgres).await?;
        let approvals = postgres.as_ref().map(|pg| pg.approvals.clone());
        let database = postgres
            .as_ref()
            .map(|pg| (pg.db.clone(), pg.fences.clone()));
        let (ceilings, shared_halts) = match postgres {
            Some(pg) => (
                TenantCeilings::in_database(pg.ceilings),
                Some((
                    pg.halts.clone(),
                    pg.halts.follow_here(orchestrator.halts().clone()),
                )),
            ),
            None => {
                let ledger = orchestrator.ledger().clone();
                (
                    TenantCeilings::in_file(config.journal.file(), ledger)?,
                    None,
                )
            }
        };
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
            shared_halts,
            approvals,
            _writer: writer,
        })
    }

    /// Records an operator's `halt` (a run's, a tenant's, everyone's) in PostgreSQL, so that
    /// every process on the database applies it, and a run resumed later sees it. Without
    /// `journal.url`: nothing to do (the caller halts this process's token).
    pub async fn record_halt(&self, halt: &Halt) -> Result<(), String> {
        match &self.shared_halts {
            Some((store, _)) => store.halt(halt).await.map(drop).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// Lifts the halts of `scope` recorded in PostgreSQL for every process; how many stood
    /// (0 without `journal.url`).
    pub async fn lift_recorded(&self, scope: &HaltScope) -> Result<u64, String> {
        match &self.shared_halts {
            Some((store, _)) => store.lift(scope).await.map_err(|e| e.to_string()),
            None => Ok(0),
        }
    }

    /// Where decisions about steps waiting for approval are recorded for every process
    /// (`journal.url`); `None`: they go to the run's driver in memory.
    pub fn approval_store(&self) -> Option<PgApprovals> {
        self.approvals.clone()
    }

    /// Whether halts are shared with other processes (`journal.url`).
    pub fn shares_halts(&self) -> bool {
        self.shared_halts.is_some()
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

/// The orchestrator, with the journal and, on PostgreSQL, the ledger and halt stores every
/// process shares.
async fn start_orchestrator(
    runtime: &RuntimeHandle,
    client: &Client,
    tools: ToolRegistry,
    config: &Config,
    journal: Arc<dyn Journal>,
    postgres: &Option<Postgres>,
) -> Result<Orchestrator, Box<dyn std::error::Error>> {
    let ledger = Ledger::new();
    let mut ceilings = config.budget.ceilings();
    if postgres.is_some() {
        // The database holds the tenant and global ceilings and counts every process's spend
        // against them; this process's ledger keeps the run budgets (and the largest one).
        ceilings = Ceilings {
            max_run: ceilings.max_run,
            ..Ceilings::default()
        };
    }
    ledger.set_ceilings(ceilings);
    // Before the orchestrator rebuilds the spend from the journal: only the period's counts.
    ledger.set_period(config.budget.period()?);
    let orchestrator = Orchestrator::with(
        runtime,
        client.clone(),
        tools,
        ledger,
        OrchestratorConfig {
            journal,
            long_term_store: long_term_store(config, postgres)?,
            ledger_store: postgres
                .as_ref()
                .map(|pg| Arc::new(pg.ceilings.clone()) as Arc<dyn LedgerStore>),
            halt_store: postgres
                .as_ref()
                .map(|pg| Arc::new(pg.halts.clone()) as Arc<dyn HaltStore>),
            ..OrchestratorConfig::default()
        },
    )
    .await?;
    Ok(orchestrator)
}

impl Postgres {
    /// The journal in the database, fencing the writes of the runs driven under a lease, and
    /// settling the model calls' holds (in `PgLedger`, on the same database) in the appends
    /// that journal their answers.
    fn journal(&self) -> PgJournal {
        let options = PgJournalOptions {
            fences: self.fences.clone(),
            holds: HoldSettlement::InTheAppend,
        };
        PgJournal::open_with(self.db.clone(), options)
    }

    /// Connects to `url` (migrating its schema) and opens the ledger, the ceilings and the
    /// halts in it.
    async fn connect(
        journal: &config::Journal,
        url: &str,
        config: &Config,
    ) -> Result<Postgres, String> {
        let db = connect_database(journal, url).await?;
        let fences = Fences::new();
        let ledger = PgLedger::new(db.clone(), PgLedgerConfig::default()).fenced_by(fences.clone());
        Ok(Postgres {
            fences,
            halts: PgHalts::new(db.clone()),
            approvals: PgApprovals::new(db.clone()),
            ceilings: PgCeilings::new(db.clone(), ledger, config.budget.ceilings()),
            db,
        })
    }
}

/// Connects to the PostgreSQL database at `url` and migrates its schema; a database that
/// cannot be reached fails naming its host and database.
async fn connect_database(journal: &config::Journal, url: &str) -> Result<Database, String> {
    let failed = |e: String| format!("cannot open the journal ({}): {e}", journal.describe());
    let url = url.to_owned();
    // Connecting blocks (it waits for the server and migrates the schema).
    let connected = tokio::task::spawn_blocking(move || Database::connect(&url))
        .await
        .map_err(|e| failed(e.to_string()))?;
    connected.map_err(|e| failed(e.to_string()))
}

/// The journal `[journal]` selects: PostgreSQL at `url`, else the SQLite file `path`, else
/// memory. Opening a file or a database that is not a journal, or of a newer version, fails
/// without changing it; a database that cannot be reached fails naming its host and database.
pub async fn open_journal(config: &config::Journal) -> Result<Arc<dyn Journal>, String> {
    let failed = |e: String| format!("cannot open the journal ({}): {e}", config.describe());
    let opened: Arc<dyn Journal> = match (config.postgres_url(), config.file()) {
        (Some(url), _) => Arc::new(PgJournal::open(connect_database(config, url).await?)),
        (None, Some(file)) => {
            let durability = config.durability().map_err(|e| failed(e.to_string()))?;
            let opened = SqliteJournal::open_with(file, durability);
            Arc::new(opened.map_err(|e| failed(e.to_string()))?)
        }
        (None, None) => Arc::new(MemoryJournal::new()),
    };
    Ok(opened)
}

/// The built-in tools and those of the `[[tools.mcp]]` servers, each server connected and
/// listed now: a server that does not start stops the start, named.
async fn tools(config: &Config) -> Result<ToolRegistry, Box<dyn std::error::Error>> {
    let mut tools = impresario::tools::registry()?;
    for server in config.mcp_servers()? {
        tools.provide(McpServer::start(server).await?)?;
    }
    Ok(tools)
}

/// Where long-term memory is kept: in PostgreSQL with `journal.url` (`memory.path` is then
/// ignored), else in the SQLite file `[memory]` names; `None` when it is kept in this process
/// only. Both with `[memory]`'s retention.
fn long_term_store(
    config: &Config,
    postgres: &Option<Postgres>,
) -> Result<Option<Arc<dyn LongTermStore>>, String> {
    let retention = config.memory.retention();
    if let Some(pg) = postgres {
        return Ok(Some(Arc::new(PgMemory::new(pg.db.clone(), retention))));
    }
    let Some(file) = config.memory.file(&config.journal) else {
        return Ok(None);
    };
    let db = MemoryDb::open(&file, retention)
        .map_err(|e| format!("cannot open the long-term memory (memory.path {file:?}): {e}"))?;
    Ok(Some(Arc::new(db)))
}
