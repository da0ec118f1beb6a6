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

use impresario_runtime::halt::{HaltMode, HaltReason, HaltScope, HaltToken, Halts};
use impresario_runtime::ledger::{
    AccountId, AccountPath, CeilingReached, Ledger, LedgerError, Limits,
};
use impresario_runtime::llm::{CallOptions, Client, LlmError};
use impresario_runtime::{AgentError, AgentId, AgentRef, Placement, RunId, RuntimeHandle};
use impresario_supervisor::{
    ChildSpec, OnCeiling, RestartType, StartChild, StopChild, Strategy, Supervisor,
    SupervisorError, SupervisorRef, SupervisorSpec, WhichChildren,
};
use tokio::sync::{broadcast, mpsc, watch, Mutex};

use crate::executor::{ExecuteStep, Executor};
use crate::memory::{
    compact, ContextBudget, ContextEntry, EntryKind, LongTermMemory, MemoryAgent, MemoryError,
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
#[derive(Debug, Clone)]
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
            AgentId::new("supervisor", "runs"),
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
        let inner = &self.inner;
        self.validate(&request)?;
        let run = RunId::generate();

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
        inner
            .ledger
            .open(run_account.clone(), Some(&tenant_account), limits)?;
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
        let driver = Driver {
            orchestrator: self.clone(),
            reviewers: team
                .members
                .iter()
                .filter_map(|m| m.review.clone().map(|r| (m.id(&run), r)))
                .collect(),
            allowed: allowed.clone(),
            run: run.clone(),
            request,
            path,
            token,
            state: state_tx,
            events: events.clone(),
            decisions,
            steps: Vec::new(),
            history: Vec::new(),
            last_ceiling: None,
            next_executor: 0,
            planner_prompt: crate::planner::system_prompt(&team_tools(&inner.tools, &allowed))
                .into(),
        };
        inner.runtime.spawn_task(placement, async move {
            let result = driver.drive().await;
            let _ = result_tx.send(Some(Arc::new(result)));
        });
        Ok(RunHandle {
            id: run,
            state,
            events,
            first_events: Arc::new(std::sync::Mutex::new(Some(first_events))),
            decisions: decisions_tx,
            result,
            halts: inner.halts.clone(),
        })
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
        let client = inner.client.clone();
        let mut spec = SupervisorSpec::new(Strategy::OneForOne).child(
            ChildSpec::agent(AgentId::new("planner", run.to_string()), move || {
                Planner::new(client.clone())
            })
            .placement(placement),
        );
        for i in 0..inner.config.executors_per_run.max(1) {
            let (client, tools) = (inner.client.clone(), inner.tools.clone());
            spec = spec.child(ChildSpec::agent(executor_id(run, i), move || {
                Executor::new(client.clone(), tools.clone())
            }));
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
        let id = AgentId::new("tenant", tenant.to_owned());
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
            let plan = self.plan(feedback.take()).await?;
            revision += 1;
            let _ = self.events.send(RunEvent::Planned {
                revision,
                plan: plan.clone(),
            });
            if reviews < config.max_reviews {
                if let Some(revise) = self.review(&plan).await? {
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
                let outcome = self.execute(number, &step).await?;
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
        let memory = self.agent::<MemoryAgent>(memory_id(&self.run))?;
        let query = Recall {
            query: self.request.goal.clone(),
            k,
        };
        match self.call(memory.ask(query)).await? {
            Ok(Ok(recalled)) => {
                for found in &recalled {
                    let r = &found.record;
                    self.history.push(ContextEntry::new(
                        EntryKind::Observation,
                        None,
                        format!(
                            "Memory of an earlier run (goal: {}; outcome: {}; why: {}): {}",
                            r.goal,
                            r.outcome.as_str(),
                            r.why,
                            r.text
                        ),
                    ));
                }
                let _ = self.events.send(RunEvent::Recalled {
                    memories: recalled.len(),
                });
            }
            Ok(Err(e)) => tracing::warn!(run = %self.run, error = %e, "could not recall memories"),
            Err(e) => tracing::warn!(run = %self.run, error = %e, "memory agent failed"),
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
        let client = self.orchestrator.inner.client.clone();
        let summarizer = self.request.models.summarizer.clone();
        let options = self.options();
        let mut history = std::mem::take(&mut self.history);
        let done = compact(&mut history, &budget, &client, &summarizer, &options).await;
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
            // The context stays as it was (compact loses nothing): the run goes on, larger.
            Err(e) => tracing::warn!(run = %self.run, error = %e, "context compaction failed"),
        }
        Ok(())
    }

    /// Asks the planner (retrying if it crashed: planning reads only), mapping failures to ends.
    async fn plan(&mut self, feedback: Option<String>) -> Result<Plan, End> {
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
            };
            let answer = self.call(planner.ask(request)).await?;
            match answer {
                Ok(Ok(Planned { plan, .. })) => return Ok(plan),
                Ok(Err(PlannerError::Invalid { attempts, last })) => {
                    return Err(End(RunState::Failed {
                        reason: FailReason::InvalidPlan,
                        detail: format!("{attempts} attempts; last: {last}"),
                    }))
                }
                Ok(Err(PlannerError::Model(e))) => return Err(self.model_failure(e)),
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
    async fn review(&mut self, plan: &Plan) -> Result<Option<String>, End> {
        for (id, review) in self.reviewers.clone() {
            let request = ReviewPlan {
                goal: self.request.goal.clone(),
                plan: plan.clone(),
            };
            let verdict = self
                .token
                .run(review(&self.orchestrator.inner.runtime, &id, request))
                .await
                .map_err(|_| self.halted())?;
            match verdict {
                Ok(Verdict::Approve) => {}
                Ok(Verdict::Revise { feedback }) => return Ok(Some(feedback)),
                // A reviewer that fails does not block the run; its supervisor restarts it.
                Err(e) => {
                    tracing::warn!(run = %self.run, reviewer = %id, error = %e, "reviewer failed; plan not reviewed")
                }
            }
        }
        Ok(None)
    }

    /// Runs one step: approval if its impact needs it, then an executor, retrying a crashed
    /// executor only when the step is safe to repeat.
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
                if let Err(reason) = self.await_approval(number, tool.name()).await? {
                    return Ok(Err(ToolError::Rejected {
                        tool: tool.name().to_owned(),
                        reason,
                    }
                    .into()));
                }
                self.set(RunState::Running { step: number });
            }
        }
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
            };
            let answer = self.call(executor.ask(request)).await?;
            match answer {
                Ok(Ok(output)) => return Ok(Ok(output)),
                Ok(Err(StepFailure::Tool(ToolError::Halted { .. }))) => return Err(self.halted()),
                Ok(Err(StepFailure::Model { .. })) if self.token.is_halted() => {
                    return Err(self.halted())
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

    /// Waits for an operator's decision on step `number` (or a halt). `Ok(Err(reason))` is a
    /// rejection.
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
        self.remember(&state).await;
        let tenant = inner
            .tenants
            .lock()
            .await
            .get(&self.request.tenant)
            .cloned();
        if let Some(tenant) = tenant {
            let _ = tenant.ask(StopChild(run_supervisor_id(&self.run))).await;
        }
        inner.ledger.close(&account);
        inner.halts.remove_run(self.run.as_str());
        RunResult {
            run: self.run,
            state,
            steps: self.steps,
            usage,
        }
    }
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
