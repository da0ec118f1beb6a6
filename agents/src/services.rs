//! What every run of an orchestrator shares (runtime, client, tools, ledger, halts, the
//! supervision tree, the live runs, the journal, the configuration), and the names of a run's
//! agents. The orchestrator submits runs with it; each run's driver drives and releases with it.

use std::collections::HashMap;

use dashmap::DashMap;
use impresario_runtime::halt::Halts;
use impresario_runtime::journal::Journal;
use impresario_runtime::ledger::Ledger;
use impresario_runtime::llm::Client;
use impresario_runtime::{AgentId, AgentRef, RunId, RuntimeHandle};
use impresario_supervisor::{
    ChildSpec, StopChild, Strategy, Supervisor, SupervisorError, SupervisorRef, SupervisorSpec,
};
use std::sync::Arc;
use tokio::sync::Mutex;

use crate::config::OrchestratorConfig;
use crate::memory::LongTermMemory;
use crate::planner::PlannerPrompts;
use crate::run::RunHandle;
use crate::tool::ToolRegistry;

/// What every run of one orchestrator shares.
pub(crate) struct Services {
    pub(crate) runtime: RuntimeHandle,
    pub(crate) client: Client,
    pub(crate) tools: ToolRegistry,
    pub(crate) ledger: Ledger,
    pub(crate) halts: Halts,
    pub(crate) root: SupervisorRef,
    pub(crate) tenants: Mutex<HashMap<String, AgentRef<Supervisor>>>,
    /// Runs of this process that have not ended.
    pub(crate) live: DashMap<RunId, RunHandle>,
    /// Runs being resumed or replayed right now: one claim per run, so that of concurrent
    /// resumes exactly one starts it.
    pub(crate) claimed: DashMap<RunId, ()>,
    /// What runs learn across runs, one store per tenant: each run recalls from its tenant's
    /// when it starts and remembers its outcome, and why, there when it ends.
    pub(crate) long_term: DashMap<String, Arc<LongTermMemory>>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) config: OrchestratorConfig,
    /// The planner's instructions, per set of tools runs may use.
    pub(crate) planner_prompts: PlannerPrompts,
}

impl Services {
    /// The supervisor of `tenant`'s runs, started under the root on first use.
    pub(crate) async fn tenant_supervisor(
        &self,
        tenant: &str,
    ) -> Result<AgentRef<Supervisor>, SupervisorError> {
        let mut tenants = self.tenants.lock().await;
        if let Some(found) = tenants.get(tenant).filter(|s| s.is_running()) {
            return Ok(found.clone());
        }
        let id = AgentId::new("tenant", format!("{}:{tenant}", self.config.name));
        if self.runtime.directory().lookup::<Supervisor>(&id).is_none() {
            self.root
                .start_child(ChildSpec::supervisor(
                    id.clone(),
                    SupervisorSpec::new(Strategy::OneForOne),
                ))
                .await?;
        }
        let supervisor = self
            .runtime
            .directory()
            .lookup::<Supervisor>(&id)
            .ok_or(SupervisorError::NoSuchChild(id))?;
        tenants.insert(tenant.to_owned(), supervisor.clone());
        Ok(supervisor)
    }

    /// Stops run `run` of `tenant`: its supervisor and every agent under it.
    pub(crate) async fn stop_subtree(&self, tenant: &str, run: &RunId) {
        let supervisor = self.tenants.lock().await.get(tenant).cloned();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.ask(StopChild(run_supervisor_id(run))).await;
        }
    }
}

/// The supervisor of run `run`'s agents.
pub(crate) fn run_supervisor_id(run: &RunId) -> AgentId {
    AgentId::new("run", run.to_string())
}

/// Run `run`'s driver.
pub(crate) fn driver_id(run: &RunId) -> AgentId {
    AgentId::new("driver", run.to_string())
}

/// Run `run`'s planner.
pub(crate) fn planner_id(run: &RunId) -> AgentId {
    AgentId::new("planner", run.to_string())
}

/// Run `run`'s memory agent.
pub(crate) fn memory_id(run: &RunId) -> AgentId {
    AgentId::new("memory", run.to_string())
}

/// Run `run`'s executor number `index`.
pub(crate) fn executor_id(run: &RunId, index: usize) -> AgentId {
    AgentId::new("executor", format!("{run}#{index}"))
}
