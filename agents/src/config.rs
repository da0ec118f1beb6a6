//! How an orchestrator runs every run.

use std::sync::Arc;

use impresario_runtime::halt_store::HaltStore;
use impresario_runtime::journal::{Journal, MemoryJournal};
use impresario_runtime::ledger_store::LedgerStore;
use impresario_supervisor::OnCeiling;

use crate::fault::PanicInjection;
use crate::memory::LongTermStore;

/// How the orchestrator runs every run.
#[derive(Clone)]
pub struct OrchestratorConfig {
    /// Executor agents per run.
    pub executors_per_run: usize,
    /// What a run's own ceiling does: halt the run, or fail only the step.
    pub on_ceiling: OnCeiling,
    /// How often a reviewer may send plans back, per run, before plans run unreviewed.
    pub max_reviews: u32,
    /// How often a step is retried after its executor failed (idempotent steps only).
    pub step_retries: u32,
    /// How many identical steps in a row are a loop.
    pub loop_repeats: usize,
    /// Where each tenant's long-term memory is kept across restarts: a store with every
    /// tenant's records apart (`MemoryDb`, a SQLite file; `PgMemory`, PostgreSQL), or, with
    /// `None`, in this process (one memory per tenant).
    pub long_term_store: Option<Arc<dyn LongTermStore>>,
    /// How many memories of earlier runs a run recalls into its context.
    pub recall: usize,
    /// Where every run is journaled (in memory by default; `SqliteJournal` to survive restarts).
    pub journal: Arc<dyn Journal>,
    /// Where every model call's reservation is also held, shared with the other processes
    /// spending against the same ceilings (`impresario_pg::ledger::PgLedger`); `None` (the
    /// default): this process's ledger alone.
    pub ledger_store: Option<Arc<dyn LedgerStore>>,
    /// Where halts recorded by other processes are kept (`impresario_pg::halts::PgHalts`): a
    /// run asks before each step whether one stands on it. `None` (the default): this
    /// process's halts alone.
    pub halt_store: Option<Arc<dyn HaltStore>>,
    /// How often a run's driver is started again after it panicked, each time resuming the run
    /// from its journal, before the run ends `failed` (reason `internal`). Default 1.
    pub driver_restarts: u32,
    /// Test hook: panics a run's driver at a phase (see [`PanicInjection`]). Not for production.
    #[doc(hidden)]
    pub inject_panic: Option<Arc<PanicInjection>>,
    /// Names this orchestrator's supervisors (`supervisor/<name>`, `tenant/<name>:<tenant>`), so
    /// several can share a runtime. Default `runs`.
    pub name: String,
}

impl std::fmt::Debug for OrchestratorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorConfig")
            .field("executors_per_run", &self.executors_per_run)
            .field("on_ceiling", &self.on_ceiling)
            .field("max_reviews", &self.max_reviews)
            .field("step_retries", &self.step_retries)
            .field("loop_repeats", &self.loop_repeats)
            .field("long_term_store", &self.long_term_store)
            .field("recall", &self.recall)
            .field("ledger_store", &self.ledger_store)
            .field("halt_store", &self.halt_store)
            .field("driver_restarts", &self.driver_restarts)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            executors_per_run: 2,
            on_ceiling: OnCeiling::HaltRun,
            max_reviews: 2,
            step_retries: 2,
            loop_repeats: 3,
            long_term_store: None,
            recall: 3,
            journal: Arc::new(MemoryJournal::new()),
            ledger_store: None,
            halt_store: None,
            driver_restarts: 1,
            inject_panic: None,
            name: "runs".into(),
        }
    }
}
