//! Runs end to end: `Orchestrator::submit` validates a request, opens the run's ledger account
//! and halt token, starts its supervision subtree (a run supervisor owning its planner,
//! executors and custom agents, under the tenant's supervisor, under the root), and drives it:
//! plan, review, execute step by step (with approvals), replan on failure, until an answer, a
//! failure, a halt or a ceiling.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope, HaltToken, Halts};
use impresario_runtime::journal::{
    Journal, JournalError, MemoryJournal, RunEvent as JournalEvent, RunFilter, RunOutcome,
    RunStatus, RunSummary, ToolOutcome,
};
use impresario_runtime::ledger::{
    AccountId, AccountPath, CeilingReached, Ledger, LedgerError, Limits,
};
use impresario_runtime::llm::{CallOptions, Client, LlmError};
use impresario_runtime::telemetry::{self, RunOutcome as TelemetryOutcome};
use impresario_runtime::{AgentError, AgentId, AgentRef, Placement, RunId, RuntimeHandle};
use impresario_supervisor::{
    ChildSpec, OnCeiling, RestartType, StartChild, StopChild, Strategy, Supervisor,
    SupervisorError, SupervisorRef, SupervisorSpec, WhichChildren,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch, Mutex};
use tracing::Instrument;

use crate::executor::{idempotency_key, ExecuteStep, Executor};
use crate::journaling::{Divergence, LogError, ModelGateway, Recorded, RunLog};
use crate::memory::{
    compact_via, ContextBudget, ContextEntry, EntryKind, LongTermMemory, MemoryAgent, MemoryError,
    MemoryRecord, Outcome, Recall, Remember,
};
use crate::plan::{LoopDetector, Plan, Step};
use crate::planner::{MakePlan, Planned, Planner, PlannerError};
use crate::run::{
    Decision, FailReason, RunEvent, RunHandle, RunRequest, RunResult, RunState, RunUsage,
    StepFailure, StepRecord,
};
use crate::team::{Review, ReviewPlan, Team, Verdict};
use crate::tool::{ToolError, ToolRegistry};

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
    inner: Arc<Inner>,
}

struct Inner {
    runtime: RuntimeHandle,
    client: Client,
    tools: ToolRegistry,
    ledger: Ledger,
    halts: Halts,
    root: SupervisorRef,
    tenants: Mutex<HashMap<String, AgentRef<Supervisor>>>,
    /// Runs of this process that have not ended.
    live: DashMap<RunId, RunHandle>,
    journal: Arc<dyn Journal>,
    config: OrchestratorConfig,
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
            .resume_run(&request.tenant, id.as_str())
            .map_err(|e| ResumeError::TenantHalted(e.to_string()))?;
        drop(token);
        // A ledger that still has the run's account (halted in this process) keeps what it
        // spent; a new one (after a restart) is rebuilt from the journaled costs.
        let rebuild = self
            .inner
            .ledger
            .account(&AccountId::Run(id.to_string()))
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
        let tenant_account = AccountId::Tenant(request.tenant.clone());
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
        let run_account = AccountId::Run(run.to_string());
        match inner
            .ledger
            .open(run_account.clone(), Some(&tenant_account), limits)
        {
            Ok(_) | Err(LedgerError::AlreadyOpen(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let path = inner.ledger.path(&run_account)?;
        let token = inner.halts.run(&request.tenant, run.as_str());

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
            let (halts, id) = (inner.halts.clone(), run.to_string());
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
            planner_prompt: crate::planner::system_prompt(&team_tools(&inner.tools, &allowed))
                .into(),
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
        for (field, model) in [
            ("models.planner", &request.models.planner),
            ("models.executor", &request.models.executor),
            ("models.summarizer", &request.models.summarizer),
        ] {
            if prices.get(model).is_none() {
                return Err(invalid(
                    field,
                    format!("model {model:?} has no price; add it to the price table"),
                ));
            }
        }
        Ok(())
    }

    /// The supervision subtree of one run: planner, executors, custom agents.
    fn run_subtree(&self, run: &RunId, team: &Team, placement: Placement) -> ChildSpec {
        let inner = &self.inner;
        let mut spec = SupervisorSpec::new(Strategy::OneForOne).child(
            ChildSpec::agent(AgentId::new("planner", run.to_string()), Planner::default)
                .placement(placement),
        );
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

fn run_supervisor_id(run: &RunId) -> AgentId {
    AgentId::new("run", run.to_string())
}

fn memory_id(run: &RunId) -> AgentId {
    AgentId::new("memory", run.to_string())
}

fn executor_id(run: &RunId, index: usize) -> AgentId {
    AgentId::new("executor", format!("{run}#{index}"))
}

/// Drives one run; owns its history (the agents are stateless and may restart at any time).
struct Driver {
    orchestrator: Orchestrator,
    /// When it was (re)started, for the run-duration metric.
    started: Instant,
    /// The run's journal, walked first when resumed.
    log: Arc<Mutex<RunLog>>,
    gateway: ModelGateway,
    reviewers: Vec<(AgentId, Arc<Review>)>,
    allowed: Arc<[String]>,
    run: RunId,
    request: RunRequest,
    path: AccountPath,
    token: HaltToken,
    state: watch::Sender<RunState>,
    events: broadcast::Sender<RunEvent>,
    decisions: mpsc::UnboundedReceiver<Decision>,
    steps: Vec<StepRecord>,
    /// What happened so far, as the planner and model calls see it (compacted by budget).
    history: Vec<ContextEntry>,
    last_ceiling: Option<CeilingReached>,
    next_executor: usize,
    /// The planner's instructions for this run (schema and tools), built once.
    planner_prompt: Arc<str>,
}

/// The run is over, in this state.
struct End(RunState);

/// Where an operator's decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    /// Asked and answered now.
    Now,
    /// Served from the journal of a resumed run.
    Journaled,
}

impl Driver {
    async fn drive(mut self) -> RunResult {
        let state = match self.await_team().await {
            Ok(()) => self.pursue().await,
            Err(end) => Err(end),
        };
        let state = match state {
            Ok(never) => match never {},
            Err(End(state)) => state,
        };
        self.set(state.clone());
        self.finish(state).await
    }

    fn set(&self, state: RunState) {
        let _ = self.events.send(RunEvent::State(state.clone()));
        let _ = self.state.send(state);
    }

    fn options(&self) -> CallOptions {
        CallOptions::new(self.path.clone(), self.token.cancellation())
    }

    /// The loop: plan, review, execute, until it ends. Only returns by `Err(End)`.
    async fn pursue(&mut self) -> Result<std::convert::Infallible, End> {
        let config = self.orchestrator.inner.config.clone();
        let mut detector = LoopDetector::new(config.loop_repeats);
        let (mut feedback, mut revision, mut reviews, mut number) = (None, 0u32, 0u32, 0u32);
        self.recall().await?;
        loop {
            self.check_halt()?;
            self.set(RunState::Planning);
            self.compact().await?;
            let plan = self.plan(feedback.take(), number).await?;
            revision += 1;
            self.record(JournalEvent::PlanMade {
                revision,
                plan: serde_json::to_value(&plan).unwrap_or_default(),
            })
            .await?;
            let _ = self.events.send(RunEvent::Planned {
                revision,
                plan: plan.clone(),
            });
            if reviews < config.max_reviews {
                if let Some(revise) = self.review(&plan, number).await? {
                    reviews += 1;
                    let _ = self.events.send(RunEvent::Revised {
                        revision,
                        feedback: revise.clone(),
                    });
                    feedback = Some(format!("a reviewer sent the plan back: {revise}"));
                    continue;
                }
            }
            for step in plan.steps {
                self.check_halt()?;
                if let Step::FinalAnswer { answer } = step {
                    return Err(End(RunState::Succeeded { answer }));
                }
                number += 1;
                if number > self.request.max_steps {
                    return Err(End(RunState::Failed {
                        reason: FailReason::MaxSteps,
                        detail: format!("no answer within {} steps", self.request.max_steps),
                    }));
                }
                if let Some(kind) = detector.observe(&step) {
                    return Err(End(RunState::Failed {
                        reason: FailReason::LoopDetected,
                        detail: format!("{kind:?} at step {number}: {}", step.signature()),
                    }));
                }
                self.set(RunState::Running { step: number });
                self.record(JournalEvent::StepStarted {
                    step: number,
                    kind: step.label(),
                    detail: serde_json::to_value(&step).unwrap_or_default(),
                })
                .await?;
                let outcome = self.execute(number, &step).await?;
                self.record(JournalEvent::StepFinished {
                    step: number,
                    outcome: serde_json::to_value(&outcome).unwrap_or_default(),
                })
                .await?;
                self.history.push(ContextEntry::new(
                    EntryKind::Step,
                    Some(number),
                    describe(&step),
                ));
                self.history.push(ContextEntry::new(
                    EntryKind::Observation,
                    Some(number),
                    match &outcome {
                        Ok(output) => output.clone(),
                        Err(failure) => format!("failed: {failure}"),
                    },
                ));
                let record = StepRecord {
                    number,
                    step: step.clone(),
                    outcome: outcome.clone(),
                };
                let _ = self.events.send(RunEvent::StepFinished(record.clone()));
                self.steps.push(record);
                if let Err(failure) = outcome {
                    feedback = Some(format!(
                        "step {number} ({}) failed: {failure}",
                        step.label()
                    ));
                    break;
                }
            }
        }
    }

    /// Records what the run did in its journal (write-ahead), or checks it against the journal
    /// of a resumed run.
    async fn record(&self, event: JournalEvent) -> Result<Recorded, End> {
        let recorded = self.log.lock().await.record(event).await;
        recorded.map_err(log_failure)
    }

    /// The next journaled event, if it is the one `wanted` describes (served, not repeated).
    async fn serve(&self, wanted: impl Fn(&JournalEvent) -> bool) -> Option<JournalEvent> {
        self.log.lock().await.serve(wanted)
    }

    /// Awaits an agent's answer unless the run is halted first. A ceiling halt comes from the
    /// refusal of a call in flight, whose answer is about to arrive: it gets a moment, so the run
    /// reports the ceiling itself.
    async fn call<F: IntoFuture>(&self, answer: F) -> Result<F::Output, End> {
        let mut answer = pin!(answer.into_future());
        tokio::select! {
            biased;
            out = &mut answer => return Ok(out),
            () = self.token.halted() => {}
        }
        if self
            .token
            .halt_info()
            .is_some_and(|h| h.reason == HaltReason::CostCeiling)
        {
            if let Ok(out) = tokio::time::timeout(Duration::from_secs(1), answer).await {
                return Ok(out);
            }
        }
        Err(self.halted())
    }

    /// The run's state if its token says to stop (a graceful halt stops between steps).
    fn check_halt(&self) -> Result<(), End> {
        if self.token.stop_requested() {
            return Err(self.halted());
        }
        Ok(())
    }

    fn halted(&self) -> End {
        let halt = self.token.halt_info();
        if let (Some(ceiling), Some(HaltReason::CostCeiling)) =
            (&self.last_ceiling, halt.as_ref().map(|h| h.reason))
        {
            return End(RunState::CeilingReached {
                ceiling: ceiling.clone(),
            });
        }
        End(match halt {
            Some(halt) => RunState::Halted {
                reason: halt.reason,
                detail: halt.detail,
            },
            None => RunState::Halted {
                reason: HaltReason::Operator,
                detail: None,
            },
        })
    }

    fn ceiling(&mut self, ceiling: CeilingReached) -> End {
        self.last_ceiling = Some(ceiling.clone());
        End(RunState::CeilingReached { ceiling })
    }

    /// Puts what earlier runs learned about this goal into the context, through the run's memory
    /// agent. A memory that cannot be recalled does not stop the run.
    async fn recall(&mut self) -> Result<(), End> {
        let k = self.orchestrator.inner.config.recall;
        if k == 0 {
            return Ok(());
        }
        // What a resumed run recalled the first time is served: memory may have changed since.
        let served = self
            .serve(|e| matches!(e, JournalEvent::StepStarted { kind, .. } if kind == "recall"))
            .await;
        let memories: Vec<String> = match served {
            Some(JournalEvent::StepStarted { detail, .. }) => {
                serde_json::from_value(detail).unwrap_or_default()
            }
            _ => {
                let memory = self.agent::<MemoryAgent>(memory_id(&self.run))?;
                let query = Recall {
                    query: self.request.goal.clone(),
                    k,
                };
                let recalled = match self.call(memory.ask(query)).await? {
                    Ok(Ok(recalled)) => recalled,
                    Ok(Err(e)) => {
                        tracing::warn!(run = %self.run, error = %e, "could not recall memories");
                        Vec::new()
                    }
                    Err(e) => {
                        tracing::warn!(run = %self.run, error = %e, "memory agent failed");
                        Vec::new()
                    }
                };
                let memories: Vec<String> = recalled
                    .iter()
                    .map(|found| {
                        let r = &found.record;
                        format!(
                            "Memory of an earlier run (goal: {}; outcome: {}; why: {}): {}",
                            r.goal,
                            r.outcome.as_str(),
                            r.why,
                            r.text
                        )
                    })
                    .collect();
                self.record(JournalEvent::StepStarted {
                    step: 0,
                    kind: "recall".into(),
                    detail: serde_json::to_value(&memories).unwrap_or_default(),
                })
                .await?;
                memories
            }
        };
        let _ = self.events.send(RunEvent::Recalled {
            memories: memories.len(),
        });
        for memory in memories {
            self.history
                .push(ContextEntry::new(EntryKind::Observation, None, memory));
        }
        Ok(())
    }

    /// Summarizes the oldest steps when the context would exceed the run's budget.
    async fn compact(&mut self) -> Result<(), End> {
        let Some(max_tokens) = self.request.context_budget else {
            return Ok(());
        };
        let budget = ContextBudget {
            max_tokens,
            keep_recent: 4,
            model: self.request.models.planner.clone(),
        };
        let summarizer = self.request.models.summarizer.clone();
        let options = self.options();
        let (gateway, step) = (self.gateway.clone(), self.steps.len() as u32);
        let mut history = std::mem::take(&mut self.history);
        let done = compact_via(&mut history, &budget, &summarizer, |request| async move {
            gateway.chat(step, request, &options).await
        })
        .await;
        self.history = history;
        match done {
            Ok(Some(compaction)) => {
                let _ = self.events.send(RunEvent::Compacted(compaction));
            }
            Ok(None) => {}
            Err(MemoryError::Llm(e))
                if matches!(e, LlmError::CeilingReached(_)) || self.token.is_halted() =>
            {
                return Err(self.model_failure(e))
            }
            Err(MemoryError::Llm(_)) if self.log.lock().await.replay_only() => {
                if let Some(failure) = self.log.lock().await.take_failure() {
                    return Err(log_failure(failure));
                }
            }
            // The context stays as it was (compact loses nothing): the run goes on, larger.
            Err(e) => tracing::warn!(run = %self.run, error = %e, "context compaction failed"),
        }
        Ok(())
    }

    /// Asks the planner (retrying if it crashed: planning reads only), mapping failures to ends.
    async fn plan(&mut self, feedback: Option<String>, step: u32) -> Result<Plan, End> {
        let inner = self.orchestrator.inner.clone();
        let planner = self.agent::<Planner>(AgentId::new("planner", self.run.to_string()))?;
        let system = self.planner_prompt.clone();
        let mut attempt = 0;
        loop {
            let request = MakePlan {
                model: self.request.models.planner.clone(),
                goal: self.request.goal.clone(),
                system: system.clone(),
                history: render(&self.history),
                feedback: feedback.clone(),
                max_repairs: self.request.max_repairs,
                options: self.options(),
                gateway: self.gateway.clone(),
                step,
            };
            let answer = self
                .call(planner.ask(request))
                .instrument(telemetry::invoke_agent(planner.id()))
                .await?;
            match answer {
                Ok(Ok(Planned { plan, .. })) => return Ok(plan),
                Ok(Err(PlannerError::Invalid { attempts, last })) => {
                    return Err(End(RunState::Failed {
                        reason: FailReason::InvalidPlan,
                        detail: format!("{attempts} attempts; last: {last}"),
                    }))
                }
                Ok(Err(PlannerError::Model(e))) => {
                    if let Some(failure) = self.log.lock().await.take_failure() {
                        return Err(log_failure(failure));
                    }
                    return Err(self.model_failure(e));
                }
                Err(e) if retryable(&e) && attempt < inner.config.step_retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                Err(e) => {
                    return Err(End(RunState::Failed {
                        reason: FailReason::AgentError,
                        detail: format!("planner: {e}"),
                    }))
                }
            }
        }
    }

    fn model_failure(&mut self, error: LlmError) -> End {
        match error {
            LlmError::CeilingReached(ceiling) => self.ceiling(ceiling),
            // A cancelled call, or any failure of a halted run, is the halt's doing.
            _ if self.token.is_halted() => self.halted(),
            other => End(RunState::Failed {
                reason: FailReason::ModelError,
                detail: other.to_string(),
            }),
        }
    }

    /// Asks every reviewer about the plan; the first to send it back wins.
    async fn review(&mut self, plan: &Plan, step: u32) -> Result<Option<String>, End> {
        for (id, review) in self.reviewers.clone() {
            let reviewer = id.to_string();
            // A resumed run is served the verdicts it was given: a reviewer may judge differently now.
            let served = self
                .serve(|e| matches!(e, JournalEvent::StepStarted { kind, detail, .. } if kind == "review" && detail["reviewer"] == reviewer.as_str()))
                .await;
            let verdict = match served {
                Some(JournalEvent::StepStarted { detail, .. }) => {
                    serde_json::from_value::<Verdict>(detail["verdict"].clone()).ok()
                }
                _ => {
                    let request = ReviewPlan {
                        goal: self.request.goal.clone(),
                        plan: plan.clone(),
                    };
                    let asked = self
                        .token
                        .run(review(&self.orchestrator.inner.runtime, &id, request))
                        .await
                        .map_err(|_| self.halted())?;
                    let verdict = match asked {
                        Ok(verdict) => Some(verdict),
                        // A reviewer that fails does not block the run; its supervisor restarts it.
                        Err(e) => {
                            tracing::warn!(run = %self.run, reviewer = %id, error = %e, "reviewer failed; plan not reviewed");
                            None
                        }
                    };
                    self.record(JournalEvent::StepStarted {
                        step,
                        kind: "review".into(),
                        detail: serde_json::json!({ "reviewer": reviewer, "verdict": verdict }),
                    })
                    .await?;
                    verdict
                }
            };
            if let Some(Verdict::Revise { feedback }) = verdict {
                return Ok(Some(feedback));
            }
        }
        Ok(None)
    }

    /// Runs one step: approval if its impact needs it; a tool call's intent journaled before it
    /// runs and its result after; on a resumed run a journaled result is served instead.
    async fn execute(
        &mut self,
        number: u32,
        step: &Step,
    ) -> Result<Result<String, StepFailure>, End> {
        let inner = self.orchestrator.inner.clone();
        let tool = match step {
            Step::ToolCall { tool, .. } => inner.tools.get(tool).cloned(),
            _ => None,
        };
        let repeatable = match (step, &tool) {
            (Step::ToolCall { .. }, Some(tool)) => tool.idempotent(),
            (Step::ToolCall { .. }, None) => false,
            _ => true,
        };
        // A tool outside the allowlist is refused by the executor; it needs no approval.
        let allowed = tool_name(step).is_some_and(|name| self.allowed.iter().any(|a| a == name));
        if let Some(tool) = tool.as_ref().filter(|_| allowed) {
            if self.request.autonomy.needs_approval(tool.impact()) {
                if let (Err(reason), _) = self.decide(number, tool.name(), "approval").await? {
                    return Ok(Err(ToolError::Rejected {
                        tool: tool.name().to_owned(),
                        reason,
                    }
                    .into()));
                }
                self.set(RunState::Running { step: number });
            }
        }
        let Step::ToolCall {
            tool: name,
            arguments,
            ..
        } = step
        else {
            return self.run_step(number, step, repeatable).await;
        };
        let key = idempotency_key(&self.run, number);
        let intent = self
            .record(JournalEvent::ToolCallIntent {
                step: number,
                tool: name.clone(),
                idempotency_key: key.clone(),
                arguments: serde_json::Value::Object(arguments.clone()),
            })
            .await?;
        // On a resumed run the journal may know how the call ended; if it does not, the call may
        // or may not have happened.
        if intent == Recorded::Replayed {
            loop {
                let served = self
                    .serve(|e| matches!(e, JournalEvent::ToolResult { idempotency_key, .. } if *idempotency_key == key))
                    .await;
                if let Some(JournalEvent::ToolResult { outcome, .. }) = served {
                    return Ok(decode_outcome(outcome));
                }
                if self.log.lock().await.replay_only() {
                    return Err(End(RunState::Failed {
                        reason: FailReason::Diverged,
                        detail: format!("the journal ends inside tool call {key}"),
                    }));
                }
                if repeatable {
                    break;
                }
                match self.decide(number, name, "unknown_outcome").await? {
                    (Err(reason), _) => {
                        let failure: StepFailure = ToolError::Rejected {
                            tool: name.clone(),
                            reason,
                        }
                        .into();
                        let outcome = Err(failure);
                        self.record(JournalEvent::ToolResult {
                            step: number,
                            idempotency_key: key,
                            outcome: encode_outcome(&outcome),
                        })
                        .await?;
                        return Ok(outcome);
                    }
                    // A decision taken now: call it again.
                    (Ok(()), Decided::Now) => {
                        self.set(RunState::Running { step: number });
                        break;
                    }
                    // A decision from the journal was for an attempt that may itself have run
                    // before the next crash: look for its result, or ask again.
                    (Ok(()), Decided::Journaled) => continue,
                }
            }
        }
        let outcome = self.run_step(number, step, repeatable).await?;
        self.record(JournalEvent::ToolResult {
            step: number,
            idempotency_key: key,
            outcome: encode_outcome(&outcome),
        })
        .await?;
        Ok(outcome)
    }

    /// Asks an executor to run the step, retrying a crashed executor only when the step is safe
    /// to repeat.
    async fn run_step(
        &mut self,
        number: u32,
        step: &Step,
        repeatable: bool,
    ) -> Result<Result<String, StepFailure>, End> {
        let inner = self.orchestrator.inner.clone();
        let mut attempt = 0;
        loop {
            let index = self.next_executor % inner.config.executors_per_run.max(1);
            self.next_executor += 1;
            let executor = self.agent::<Executor>(executor_id(&self.run, index))?;
            let request = ExecuteStep {
                run: self.run.clone(),
                number,
                step: step.clone(),
                allowed: self.allowed.clone(),
                model: self.request.models.executor.clone(),
                // Only a model call reads the history; a tool call does not need a copy.
                history: match step {
                    Step::ModelCall { .. } => render(&self.history),
                    _ => Vec::new(),
                },
                output_limit: self.request.output_limit,
                halt: self.token.clone(),
                options: self.options(),
                gateway: self.gateway.clone(),
            };
            let answer = self
                .call(executor.ask(request))
                .instrument(telemetry::invoke_agent(executor.id()))
                .await?;
            match answer {
                Ok(Ok(output)) => return Ok(Ok(output)),
                Ok(Err(StepFailure::Tool(ToolError::Halted { .. }))) => return Err(self.halted()),
                Ok(Err(StepFailure::Model { .. })) if self.token.is_halted() => {
                    return Err(self.halted())
                }
                Ok(Err(StepFailure::Model { message })) => {
                    if let Some(failure) = self.log.lock().await.take_failure() {
                        return Err(log_failure(failure));
                    }
                    return Ok(Err(StepFailure::Model { message }));
                }
                Ok(Err(failure)) => return Ok(Err(failure)),
                Err(e) if retryable(&e) && repeatable && attempt < inner.config.step_retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                Err(e) => {
                    let message = if repeatable {
                        e.to_string()
                    } else {
                        format!("{e}; the tool is not idempotent, so it was not retried (its outcome is unknown)")
                    };
                    return Ok(Err(StepFailure::Agent { message }));
                }
            }
        }
    }

    /// An operator's decision on step `number` (`approval` of a high-impact call, or what to do
    /// about a call whose outcome is `unknown_outcome`), journaled; served on a resumed run.
    async fn decide(
        &mut self,
        number: u32,
        tool: &str,
        reason: &str,
    ) -> Result<(Result<(), String>, Decided), End> {
        self.record(JournalEvent::ApprovalRequested {
            step: number,
            tool: tool.to_owned(),
            reason: reason.to_owned(),
        })
        .await?;
        let served = self
            .serve(|e| matches!(e, JournalEvent::ApprovalDecided { step, .. } if *step == number))
            .await;
        if let Some(JournalEvent::ApprovalDecided {
            approved, reason, ..
        }) = served
        {
            let decision = if approved {
                Ok(())
            } else {
                Err(reason.unwrap_or_default())
            };
            return Ok((decision, Decided::Journaled));
        }
        if self.log.lock().await.replay_only() {
            return Err(End(RunState::Failed {
                reason: FailReason::Diverged,
                detail: format!("the journal ends waiting for a decision on step {number}"),
            }));
        }
        let metrics = self.orchestrator.inner.runtime.metrics().clone();
        metrics.approval_requested();
        let decision = self.await_approval(number, tool).await;
        metrics.approval_resolved();
        let decision = decision?;
        self.record(JournalEvent::ApprovalDecided {
            step: number,
            approved: decision.is_ok(),
            by: "operator".into(),
            reason: decision.clone().err(),
        })
        .await?;
        Ok((decision, Decided::Now))
    }

    async fn await_approval(&mut self, number: u32, tool: &str) -> Result<Result<(), String>, End> {
        self.set(RunState::AwaitingApproval {
            step: number,
            tool: tool.to_owned(),
        });
        loop {
            let decision = tokio::select! {
                decision = self.decisions.recv() => decision,
                () = self.token.until_stop_requested() => return Err(self.halted()),
            };
            match decision {
                Some(Decision::Approve { step }) if step == number => return Ok(Ok(())),
                Some(Decision::Reject { step, reason }) if step == number => {
                    return Ok(Err(reason))
                }
                Some(_) => continue, // about another step: stale
                None => return Err(self.halted()),
            }
        }
    }

    /// Waits until the run supervisor has started every agent of the team, so no plan goes
    /// unreviewed for want of a reviewer. A supervisor starts its children one after the other
    /// before it handles any message, so its answer to `WhichChildren` marks the moment.
    async fn await_team(&self) -> Result<(), End> {
        let directory = self.orchestrator.inner.runtime.directory();
        let started = match directory.lookup::<Supervisor>(&run_supervisor_id(&self.run)) {
            Some(supervisor) => self
                .call(supervisor.ask(WhichChildren))
                .await?
                .map_err(SupervisorError::from)
                .and_then(|children| children),
            None => Err(SupervisorError::NoSuchChild(run_supervisor_id(&self.run))),
        };
        started.map(drop).map_err(|e| {
            End(RunState::Failed {
                reason: FailReason::AgentError,
                detail: format!("the run's agents did not start: {e}"),
            })
        })
    }

    /// The agent `id` of this run (started: see `await_team`).
    fn agent<A: impresario_runtime::Agent>(&self, id: AgentId) -> Result<AgentRef<A>, End> {
        self.orchestrator
            .inner
            .runtime
            .directory()
            .lookup::<A>(&id)
            .ok_or_else(|| {
                End(RunState::Failed {
                    reason: FailReason::AgentError,
                    detail: format!("agent {id} is gone"),
                })
            })
    }

    /// Journals how the run ended: finished (no more events), or halted (resumable).
    async fn journal_end(&self, state: &RunState) {
        let event = match state {
            RunState::Succeeded { answer } => JournalEvent::RunFinished {
                outcome: RunOutcome::Succeeded,
                result: serde_json::json!({ "answer": answer }),
                reason: None,
            },
            // Nothing more goes into a journal the run could not follow or write.
            RunState::Failed {
                reason: FailReason::Diverged | FailReason::JournalError,
                ..
            } => return,
            RunState::Failed { reason, .. } => JournalEvent::RunFinished {
                outcome: RunOutcome::Failed,
                result: serde_json::to_value(state).unwrap_or_default(),
                reason: Some(reason.to_string()),
            },
            RunState::CeilingReached { .. } => JournalEvent::RunFinished {
                outcome: RunOutcome::Failed,
                result: serde_json::to_value(state).unwrap_or_default(),
                reason: Some("cost_ceiling".into()),
            },
            RunState::Halted { .. } => JournalEvent::Halted {
                halt: self.token.halt_info().unwrap_or_else(|| {
                    Halt::new(
                        HaltScope::Run(self.run.to_string()),
                        HaltMode::Immediate,
                        HaltReason::Operator,
                    )
                }),
            },
            _ => return,
        };
        if let Err(e) = self.log.lock().await.append_final(event).await {
            tracing::warn!(run = %self.run, error = %e, "could not journal how the run ended");
        }
    }

    /// Remembers how the run ended, and why, for later runs (through its memory agent).
    async fn remember(&self, state: &RunState) {
        let (outcome, why) = match state {
            RunState::Succeeded { answer } => (Outcome::Succeeded, format!("answered: {answer}")),
            RunState::Failed { reason, detail } => (Outcome::Failed, format!("{reason}: {detail}")),
            RunState::Halted { reason, detail } => (
                Outcome::Halted,
                format!(
                    "{reason}{}",
                    detail
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
            ),
            RunState::CeilingReached { ceiling } => (Outcome::Halted, ceiling.to_string()),
            _ => return,
        };
        let steps: Vec<String> = self.steps.iter().map(|s| s.step.label()).collect();
        let record = MemoryRecord {
            run: self.run.clone(),
            goal: self.request.goal.clone(),
            text: format!(
                "steps: {}",
                if steps.is_empty() {
                    "none".into()
                } else {
                    steps.join(", ")
                }
            ),
            outcome,
            why,
            tags: self.allowed.to_vec(),
            at: std::time::SystemTime::now(),
        };
        let Some(memory) = self
            .orchestrator
            .inner
            .runtime
            .directory()
            .lookup::<MemoryAgent>(&memory_id(&self.run))
        else {
            return;
        };
        if let Err(e) = memory
            .ask(Remember { record })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::warn!(run = %self.run, error = %e, "could not remember the run");
        }
    }

    /// Records the end: usage from the ledger, the subtree stopped, the account and token closed.
    async fn finish(self, state: RunState) -> RunResult {
        let inner = &self.orchestrator.inner;
        let account = AccountId::Run(self.run.to_string());
        let usage = inner
            .ledger
            .account(&account)
            .map(|a| {
                let spent = a.snapshot().spent;
                RunUsage {
                    micro_usd: spent.micro_usd,
                    tokens: spent.tokens,
                    model_calls: spent.model_calls,
                }
            })
            .unwrap_or_default();
        let replay = self.log.lock().await.replay_only();
        if !replay {
            self.journal_end(&state).await;
            self.remember(&state).await;
        }
        let tenant = inner
            .tenants
            .lock()
            .await
            .get(&self.request.tenant)
            .cloned();
        if let Some(tenant) = tenant {
            let _ = tenant.ask(StopChild(run_supervisor_id(&self.run))).await;
        }
        // A halted run keeps its account, so resuming it in this process does not pay again for
        // what it already spent; a replay leaves the ledger as it found it.
        if !matches!(state, RunState::Halted { .. }) && !replay {
            inner.ledger.close(&account);
            inner.halts.remove_run(self.run.as_str());
        }
        inner.live.remove(&self.run);
        let outcome = match &state {
            RunState::Succeeded { .. } => TelemetryOutcome::Succeeded,
            RunState::Halted { .. } => TelemetryOutcome::Halted,
            _ => TelemetryOutcome::Failed,
        };
        inner
            .runtime
            .metrics()
            .run_finished(outcome, self.started.elapsed());
        RunResult {
            run: self.run,
            state,
            steps: self.steps,
            usage,
        }
    }
}

/// A step's outcome as the journal keeps a tool result.
fn encode_outcome(outcome: &Result<String, StepFailure>) -> ToolOutcome {
    match outcome {
        Ok(output) => ToolOutcome::Ok(serde_json::Value::String(output.clone())),
        Err(failure) => ToolOutcome::Error(serde_json::to_string(failure).unwrap_or_default()),
    }
}

/// A journaled tool result as the step's outcome.
fn decode_outcome(outcome: ToolOutcome) -> Result<String, StepFailure> {
    match outcome {
        ToolOutcome::Ok(serde_json::Value::String(output)) => Ok(output),
        ToolOutcome::Ok(other) => Ok(other.to_string()),
        ToolOutcome::Error(text) => {
            Err(serde_json::from_str(&text).unwrap_or(StepFailure::Agent { message: text }))
        }
    }
}

/// A journal that could not be walked or written ends the run: it never goes on unrecorded.
fn log_failure(error: LogError) -> End {
    End(match error {
        LogError::Diverged(divergence) => RunState::Failed {
            reason: FailReason::Diverged,
            detail: serde_json::to_string(&divergence).unwrap_or_else(|_| divergence.to_string()),
        },
        LogError::Exhausted { .. } => RunState::Failed {
            reason: FailReason::Diverged,
            detail: error.to_string(),
        },
        LogError::Journal(message) => RunState::Failed {
            reason: FailReason::JournalError,
            detail: message,
        },
    })
}

/// The definitions of the allowed tools, as the planner shows them to the model.
fn team_tools(tools: &ToolRegistry, allowed: &[String]) -> Vec<impresario_runtime::llm::ToolDef> {
    allowed
        .iter()
        .filter_map(|name| tools.get(name).map(|t| t.definition()))
        .collect()
}

fn tool_name(step: &Step) -> Option<&str> {
    match step {
        Step::ToolCall { tool, .. } => Some(tool),
        _ => None,
    }
}

/// The context as text lines, oldest first.
fn render(history: &[ContextEntry]) -> Vec<String> {
    history
        .iter()
        .map(|entry| match (entry.kind, entry.step) {
            (EntryKind::Step, Some(n)) => format!("step {n}: {}", entry.text),
            (EntryKind::Observation, Some(n)) => format!("step {n} result: {}", entry.text),
            (EntryKind::Summary, Some(n)) => format!("summary of steps up to {n}: {}", entry.text),
            _ => entry.text.clone(),
        })
        .collect()
}

/// How a step reads in the run's history.
fn describe(step: &Step) -> String {
    match step {
        Step::ToolCall {
            tool, arguments, ..
        } => format!(
            "called {tool} with {}",
            serde_json::Value::Object(arguments.clone())
        ),
        Step::ModelCall { prompt } => format!("asked the model: {prompt}"),
        Step::FinalAnswer { answer } => format!("answered: {answer}"),
    }
}

/// Whether an agent error means "try again": it crashed or restarted without handling it.
fn retryable(error: &AgentError) -> bool {
    matches!(
        error,
        AgentError::Panicked { .. } | AgentError::Restarting { .. } | AgentError::Stopped { .. }
    )
}
