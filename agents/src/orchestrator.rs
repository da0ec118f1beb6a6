//! Runs end to end: `Orchestrator::submit` validates a request, opens the run's ledger account
//! and halt token, starts its supervision subtree (a run supervisor owning its planner,
//! executors and custom agents, under the tenant's supervisor, under the root), and drives it:
//! plan, review, execute step by step (with approvals), replan on failure, until an answer, a
//! failure, a halt or a ceiling.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use impresario_runtime::halt::{HaltMode, HaltReason, HaltScope, Halts};
use impresario_runtime::journal::{
    Journal, JournalError, MemoryJournal, RunEvent as JournalEvent, RunFilter, RunStatus,
    RunSummary,
};
use impresario_runtime::ledger::{AccountId, Ledger, LedgerError, Limits};
use impresario_runtime::llm::Client;
use impresario_runtime::telemetry;
use impresario_runtime::{AgentId, AgentRef, Placement, RunId, RuntimeHandle, TenantId};
use impresario_supervisor::{
    ChildSpec, OnCeiling, RestartType, StartChild, Strategy, Supervisor, SupervisorError,
    SupervisorRef, SupervisorSpec,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch, Mutex};
use tracing::Instrument;

use crate::driver::{team_tools, Driver};
use crate::executor::Executor;
use crate::journaling::{Divergence, ModelGateway, RunLog};
use crate::memory::{LongTermMemory, MemoryAgent};
use crate::planner::Planner;
use crate::run::{FailReason, RunHandle, RunRequest, RunState};
use crate::team::Team;
use crate::tool::ToolRegistry;

/// Events a run's subscriber may fall behind by before it loses the oldest.
pub const RUN_EVENT_CAPACITY: usize = 64;

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
    /// What runs learn across runs: each run recalls from it when it starts and remembers its
    /// outcome, and why, when it ends.
    pub long_term: Arc<LongTermMemory>,
    /// How many memories of earlier runs a run recalls into its context.
    pub recall: usize,
    /// Where every run is journaled (in memory by default; `SqliteJournal` to survive restarts).
    pub journal: Arc<dyn Journal>,
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
            .field("long_term", &self.long_term)
            .field("recall", &self.recall)
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
            long_term: Arc::default(),
            recall: 3,
            journal: Arc::new(MemoryJournal::new()),
            name: "runs".into(),
        }
    }
}

/// Why a run was not accepted. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request is invalid.
    #[error("invalid run request: {field}: {problem}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The ledger refused to open the run's account.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The run's agents could not be started.
    #[error("could not start the run's agents: {0}")]
    Supervisor(#[from] SupervisorError),
    /// The journal refused the run (it is not durable, so it was not started).
    #[error("the journal refused the run: {0}")]
    Journal(String),
}

impl From<JournalError> for SubmitError {
    fn from(e: JournalError) -> Self {
        SubmitError::Journal(e.to_string())
    }
}

/// Why a run could not be resumed or replayed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The journal has no such run.
    #[error("the journal has no run {0}")]
    Unknown(RunId),
    /// It is running in this process.
    #[error("run {0} is running; halt it before resuming or replaying it")]
    Running(RunId),
    /// Its tenant (or everything) is halted.
    #[error("cannot resume: {0}")]
    TenantHalted(String),
    /// Its journal cannot be used.
    #[error("the run's journal cannot be used: {0}")]
    BadJournal(String),
    /// Reading the journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Starting it again failed.
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The run.
    pub run: RunId,
    /// Journaled events after its submission.
    pub events: usize,
    /// The first place the run now behaves differently, if any.
    pub divergence: Option<Divergence>,
    /// Whether the replay reached the end the journal recorded (false for a run that was cut off
    /// or halted: it replays up to there).
    pub complete: bool,
    /// The state the replay ended in.
    pub state: RunState,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> SubmitError {
    SubmitError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// Submits and drives runs. Cheap to clone.
#[derive(Clone)]
pub struct Orchestrator {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) runtime: RuntimeHandle,
    pub(crate) client: Client,
    pub(crate) tools: ToolRegistry,
    pub(crate) ledger: Ledger,
    pub(crate) halts: Halts,
    pub(crate) root: SupervisorRef,
    pub(crate) tenants: Mutex<HashMap<String, AgentRef<Supervisor>>>,
    /// Runs of this process that have not ended.
    pub(crate) live: DashMap<RunId, RunHandle>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) config: OrchestratorConfig,
}

impl Orchestrator {
    /// Starts an orchestrator on `runtime`: a root supervisor (`supervisor/runs`), a fresh ledger,
    /// the default configuration.
    pub async fn start(
        runtime: &RuntimeHandle,
        client: Client,
        tools: ToolRegistry,
    ) -> Result<Self, SubmitError> {
        Self::with(
            runtime,
            client,
            tools,
            Ledger::new(),
            OrchestratorConfig::default(),
        )
        .await
    }

    /// Starts an orchestrator with an existing ledger (tenant and global limits set by you) and
    /// a configuration.
    pub async fn with(
        runtime: &RuntimeHandle,
        client: Client,
        tools: ToolRegistry,
        ledger: Ledger,
        config: OrchestratorConfig,
    ) -> Result<Self, SubmitError> {
        let root = Supervisor::start_root(
            runtime,
            AgentId::new("supervisor", config.name.clone()),
            SupervisorSpec::new(Strategy::OneForOne),
        )
        .map_err(SupervisorError::from)?;
        let halts = Halts::new();
        root.enforce_ceilings(&ledger, &halts, config.on_ceiling)
            .await?;
        Ok(Orchestrator {
            inner: Arc::new(Inner {
                runtime: runtime.clone(),
                client,
                tools,
                ledger,
                halts,
                root,
                tenants: Mutex::default(),
                live: DashMap::new(),
                journal: config.journal.clone(),
                config,
            }),
        })
    }

    /// The ledger every run reserves on.
    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// The halt tokens of every tenant and run.
    pub fn halts(&self) -> &Halts {
        &self.inner.halts
    }

    /// The root supervisor (its events include every run's restarts, halts and ceilings).
    pub fn supervisor(&self) -> &SupervisorRef {
        &self.inner.root
    }

    /// Submits a run with the built-in agents only.
    pub async fn submit(&self, request: RunRequest) -> Result<RunHandle, SubmitError> {
        self.submit_with(request, Team::new()).await
    }

    /// Submits a run whose team includes custom agents.
    pub async fn submit_with(
        &self,
        request: RunRequest,
        team: Team,
    ) -> Result<RunHandle, SubmitError> {
        self.validate(&request)?;
        let run = RunId::generate();
        // Write-ahead: the run is durable before it is acknowledged.
        let submitted = JournalEvent::RunSubmitted {
            tenant: request.tenant.clone(),
            goal: request.goal.clone(),
            request: serde_json::to_value(&request)
                .map_err(|e| invalid("request", e.to_string()))?,
        };
        self.inner.journal.append(&run, submitted).await?;
        let log = RunLog::new(self.inner.journal.clone(), run.clone());
        self.launch(run, request, team, log).await
    }

    /// A run of this process that has not ended yet.
    pub fn run(&self, id: &RunId) -> Option<RunHandle> {
        self.inner.live.get(id).map(|h| h.clone())
    }

    /// The journaled runs `filter` selects (of this process and earlier ones).
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, JournalError> {
        self.inner.journal.runs(filter)
    }

    /// The journal runs are written to.
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.journal
    }

    /// Resumes a run from its journal: a halted one, or one a crash cut off. The run is driven
    /// again from the start: journaled model answers, tool results and decisions are served
    /// (not repeated, and not paid again unless this process is rebuilding its ledger), then it
    /// goes on live. A tool call whose outcome the journal does not know is repeated only if
    /// the tool is idempotent; otherwise the run waits for an operator's decision (approve:
    /// call it again; reject: the step fails).
    pub async fn resume(&self, id: &RunId) -> Result<RunHandle, ResumeError> {
        self.resume_with(id, Team::new()).await
    }

    /// [`resume`](Self::resume) with the run's custom agents.
    pub async fn resume_with(&self, id: &RunId, team: Team) -> Result<RunHandle, ResumeError> {
        if self.inner.live.contains_key(id) {
            return Err(ResumeError::Running(id.clone()));
        }
        let (request, recorded) = self.journaled(id)?;
        let token = self
            .inner
            .halts
            .resume_run(&TenantId::new(request.tenant.as_str()), id)
            .map_err(|e| ResumeError::TenantHalted(e.to_string()))?;
        drop(token);
        // A ledger that still has the run's account (halted in this process) keeps what it
        // spent; a new one (after a restart) is rebuilt from the journaled costs.
        let rebuild = self
            .inner
            .ledger
            .account(&AccountId::Run(id.clone()))
            .is_none();
        let log = RunLog::resumed(
            self.inner.journal.clone(),
            id.clone(),
            recorded,
            false,
            rebuild,
        );
        Ok(self.launch(id.clone(), request, team, log).await?)
    }

    /// Resumes every run the journal says was cut off (not halted, not finished): call it when
    /// the service starts.
    pub async fn recover(&self) -> Result<Vec<RunHandle>, ResumeError> {
        let mut resumed = Vec::new();
        for summary in self.runs(&RunFilter::all().status(RunStatus::Active))? {
            if !self.inner.live.contains_key(&summary.run) {
                resumed.push(self.resume(&summary.run).await?);
            }
        }
        Ok(resumed)
    }

    /// Re-executes a run from its journal with no network and no tool call: everything it needs
    /// must be served by the journal. Reports the first place where the code now behaves
    /// differently, if any: build regression ("golden") tests from recorded runs with it.
    pub async fn replay(&self, id: &RunId) -> Result<ReplayReport, ResumeError> {
        self.replay_with(id, Team::new()).await
    }

    /// [`replay`](Self::replay) with the run's custom agents.
    pub async fn replay_with(&self, id: &RunId, team: Team) -> Result<ReplayReport, ResumeError> {
        if self.inner.live.contains_key(id) {
            return Err(ResumeError::Running(id.clone()));
        }
        let (request, recorded) = self.journaled(id)?;
        let events = recorded.len();
        let finished = recorded
            .iter()
            .any(|(_, e)| matches!(e, JournalEvent::RunFinished { .. }));
        let log = RunLog::resumed(
            self.inner.journal.clone(),
            id.clone(),
            recorded,
            true,
            false,
        );
        let handle = self.launch(id.clone(), request, team, log).await?;
        let result = handle.wait().await;
        let (divergence, complete) = match &result.state {
            RunState::Failed {
                reason: FailReason::Diverged,
                detail,
            } => match serde_json::from_str::<Divergence>(detail) {
                Ok(divergence) => (Some(divergence), false),
                // The journal ended first: a run that was cut off or halted replays up to there.
                Err(_) => (None, !finished),
            },
            _ => (None, true),
        };
        Ok(ReplayReport {
            run: id.clone(),
            events,
            divergence,
            complete,
            state: result.state.clone(),
        })
    }

    /// The request and the events after `RunSubmitted` of a journaled, unfinished run.
    fn journaled(&self, id: &RunId) -> Result<(RunRequest, Vec<(u64, JournalEvent)>), ResumeError> {
        let entries = self.inner.journal.read(id)?;
        let mut events = entries.into_iter().map(|e| (e.seq, e.event));
        let request = match events.next() {
            Some((_, JournalEvent::RunSubmitted { request, .. })) => serde_json::from_value::<
                RunRequest,
            >(request)
            .map_err(|e| {
                ResumeError::BadJournal(format!("the submitted request does not read back: {e}"))
            })?,
            Some(_) => {
                return Err(ResumeError::BadJournal(
                    "the first event is not run_submitted".into(),
                ))
            }
            None => return Err(ResumeError::Unknown(id.clone())),
        };
        Ok((request, events.collect()))
    }

    /// Opens the run's account and halt token, starts its subtree and its driver.
    async fn launch(
        &self,
        run: RunId,
        request: RunRequest,
        team: Team,
        log: RunLog,
    ) -> Result<RunHandle, SubmitError> {
        let inner = &self.inner;
        let tenant = TenantId::new(request.tenant.as_str());
        let tenant_account = AccountId::Tenant(tenant.clone());
        if inner.ledger.account(&tenant_account).is_none() {
            match inner
                .ledger
                .open(tenant_account.clone(), None, Limits::default())
            {
                Ok(_) | Err(LedgerError::AlreadyOpen(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let budget = &request.budget;
        let limits = Limits {
            micro_usd: budget.micro_usd,
            tokens: budget.tokens,
            model_calls: budget.model_calls,
            steps: None,
            deadline: budget.deadline.map(|d| Instant::now() + d),
        };
        let run_account = AccountId::Run(run.clone());
        match inner
            .ledger
            .open(run_account.clone(), Some(&tenant_account), limits)
        {
            Ok(_) | Err(LedgerError::AlreadyOpen(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let path = inner.ledger.path(&run_account)?;
        let token = inner.halts.run(&tenant, &run);

        // The run's agents and its driver share one arbiter: their calls cost no thread wake-up.
        // Runs spread over the arbiters instead.
        let placement = inner.runtime.next_placement();
        let subtree = self.run_subtree(&run, &team, placement);
        let tenant = self.tenant_supervisor(&request.tenant).await?;
        if let Err(e) = tenant
            .ask(StartChild(subtree))
            .await
            .map_err(SupervisorError::from)
            .and_then(|r| r)
        {
            inner.ledger.close(&run_account);
            return Err(e.into());
        }

        let (state_tx, state) = watch::channel(RunState::Queued);
        // A run emits a few events per step; a subscriber that lags further loses the oldest.
        let (events, first_events) = broadcast::channel(RUN_EVENT_CAPACITY);
        let (decisions_tx, decisions) = mpsc::unbounded_channel();
        let (result_tx, result) = watch::channel(None);
        if let Some(deadline) = budget.deadline {
            let (halts, id) = (inner.halts.clone(), run.clone());
            inner.runtime.spawn_task(placement, async move {
                tokio::time::sleep(deadline).await;
                halts.halt(
                    HaltScope::Run(id),
                    HaltMode::Immediate,
                    HaltReason::Deadline,
                );
            });
        }
        let allowed: Arc<[String]> = request.tools.clone().into();
        let log = Arc::new(Mutex::new(log));
        let handle = RunHandle {
            id: run.clone(),
            state,
            events: events.clone(),
            first_events: Arc::new(std::sync::Mutex::new(Some(first_events))),
            decisions: decisions_tx,
            result,
            halts: inner.halts.clone(),
        };
        inner.live.insert(run.clone(), handle.clone());
        inner.runtime.metrics().run_started();
        let span = telemetry::invoke_workflow("run", &run);
        let cache_scope = request.tenant.as_str().into();
        let driver = Driver {
            started: Instant::now(),
            orchestrator: self.clone(),
            reviewers: team
                .members
                .iter()
                .filter_map(|m| m.review.clone().map(|r| (m.id(&run), r)))
                .collect(),
            allowed: allowed.clone(),
            gateway: ModelGateway::new(inner.client.clone(), log.clone()),
            log,
            run,
            request,
            path,
            token,
            state: state_tx,
            events,
            decisions,
            steps: Vec::new(),
            history: Vec::new(),
            last_ceiling: None,
            next_executor: 0,
            agents: None,
            planner_prompt: crate::planner::system_prompt(&team_tools(&inner.tools, &allowed))
                .into(),
            cache_scope,
        };
        inner.runtime.spawn_task(
            placement,
            async move {
                let result = driver.drive().await;
                let _ = result_tx.send(Some(Arc::new(result)));
            }
            // The run's span: its agents' spans are children of it, across their threads.
            .instrument(span),
        );
        Ok(handle)
    }

    /// Checks a request at the boundary: every problem named by its field.
    fn validate(&self, request: &RunRequest) -> Result<(), SubmitError> {
        if request.goal.trim().is_empty() {
            return Err(invalid("goal", "is empty; say what the run should achieve"));
        }
        if request.tenant.trim().is_empty() {
            return Err(invalid("tenant", "is empty"));
        }
        if request.max_steps == 0 {
            return Err(invalid("max_steps", "is 0; a run needs at least one step"));
        }
        for tool in &request.tools {
            if self.inner.tools.get(tool).is_none() {
                return Err(invalid(
                    "tools",
                    format!(
                        "no tool named {tool:?} is registered (registered: {:?})",
                        self.inner.tools.names()
                    ),
                ));
            }
        }
        let prices = self.inner.client.prices();
        for (field, model) in request.models.named() {
            if prices.get(model).is_none() {
                return Err(invalid(
                    "models",
                    format!("{field}: model {model:?} has no price; add it to the price table"),
                ));
            }
        }
        Ok(())
    }

    /// The supervision subtree of one run: planner, executors, custom agents.
    fn run_subtree(&self, run: &RunId, team: &Team, placement: Placement) -> ChildSpec {
        let inner = &self.inner;
        let mut spec = SupervisorSpec::new(Strategy::OneForOne)
            .child(ChildSpec::agent(planner_id(run), Planner::default).placement(placement));
        for i in 0..inner.config.executors_per_run.max(1) {
            let tools = inner.tools.clone();
            spec = spec.child(
                ChildSpec::agent(executor_id(run, i), move || Executor::new(tools.clone()))
                    .placement(placement),
            );
        }
        let (memory_run, long_term) = (run.clone(), inner.config.long_term.clone());
        spec = spec.child(
            ChildSpec::agent(memory_id(run), move || {
                MemoryAgent::new(memory_run.clone(), long_term.clone())
            })
            .placement(placement),
        );
        for member in &team.members {
            spec = spec.child(member.child_spec(run).placement(placement));
        }
        ChildSpec::supervisor(run_supervisor_id(run), spec)
            .restart(RestartType::Temporary)
            .placement(placement)
    }

    async fn tenant_supervisor(
        &self,
        tenant: &str,
    ) -> Result<AgentRef<Supervisor>, SupervisorError> {
        let mut tenants = self.inner.tenants.lock().await;
        if let Some(found) = tenants.get(tenant).filter(|s| s.is_running()) {
            return Ok(found.clone());
        }
        let id = AgentId::new("tenant", format!("{}:{tenant}", self.inner.config.name));
        if self
            .inner
            .runtime
            .directory()
            .lookup::<Supervisor>(&id)
            .is_none()
        {
            self.inner
                .root
                .start_child(ChildSpec::supervisor(
                    id.clone(),
                    SupervisorSpec::new(Strategy::OneForOne),
                ))
                .await?;
        }
        let supervisor = self
            .inner
            .runtime
            .directory()
            .lookup::<Supervisor>(&id)
            .ok_or(SupervisorError::NoSuchChild(id))?;
        tenants.insert(tenant.to_owned(), supervisor.clone());
        Ok(supervisor)
    }
}

pub(crate) fn run_supervisor_id(run: &RunId) -> AgentId {
    AgentId::new("run", run.to_string())
}

pub(crate) fn planner_id(run: &RunId) -> AgentId {
    AgentId::new("planner", run.to_string())
}

pub(crate) fn memory_id(run: &RunId) -> AgentId {
    AgentId::new("memory", run.to_string())
}

pub(crate) fn executor_id(run: &RunId, index: usize) -> AgentId {
    AgentId::new("executor", format!("{run}#{index}"))
}
