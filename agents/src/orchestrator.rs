//! Runs end to end: `Orchestrator::submit` validates a request, opens the run's ledger account
//! and halt token, and starts its supervision subtree (a run supervisor owning its planner,
//! executors, memory agent, custom agents and, last, its driver, under the tenant's supervisor,
//! under the root). The driver ([`crate::driver_agent`]) plans, reviews, executes step by step
//! (with approvals) and replans on failure, until an answer, a failure, a halt or a ceiling;
//! resume and replay start the same subtree with a journal to walk first.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use dashmap::DashMap;
use impresario_runtime::halt::{HaltMode, HaltReason, HaltScope, HaltToken, Halts};
use impresario_runtime::journal::{
    Journal, JournalError, RunEvent as JournalEvent, RunFilter, RunStatus, RunSummary,
};
use impresario_runtime::ledger::{
    AccountId, AccountPath, BudgetPeriod, Charge, Ledger, LedgerError, Limits,
};
use impresario_runtime::llm::Client;
use impresario_runtime::redact::redact_serialized;
use impresario_runtime::telemetry;
use impresario_runtime::{AgentId, Placement, RunId, RuntimeHandle, TenantId};
use impresario_supervisor::{
    ChildSpec, RestartType, StartChild, Strategy, Supervisor, SupervisorError, SupervisorRef,
    SupervisorSpec,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Mutex};

use crate::config::OrchestratorConfig;
use crate::driver_agent::driver_spec;
use crate::ending::RunLease;
use crate::executor::Executor;
use crate::journaling::{AtJournalEnd, Divergence, RunLog, ServedAnswers};
use crate::memory::{LongTermMemory, MemoryAgent};
use crate::planner::{Planner, PlannerPrompts};
use crate::run::{FailReason, RunHandle, RunRequest, RunState};
use crate::run_setup::RunSetup;
use crate::services::{executor_id, memory_id, planner_id, run_supervisor_id, Services};
use crate::team::Team;
use crate::tool::ToolRegistry;
use crate::updates::RunUpdates;

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
    /// It is running in this process (or another resume of it is starting it).
    #[error("run {0} is running; halt it before resuming or replaying it")]
    Running(RunId),
    /// It finished (whatever its outcome, `journal_error` included): a finished run is never
    /// run again, so nothing it did is paid or done twice. Submit a new run instead.
    #[error("run {0} finished; only a halted or interrupted run can be resumed (submit a new run instead)")]
    Finished(RunId),
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
    pub(crate) inner: Arc<Services>,
}

/// What a standing halt of a run's tenant (or of everything) does to a resume.
#[derive(Clone, Copy)]
enum StandingHalt {
    /// The resume is refused ([`ResumeError::TenantHalted`]).
    Refuses,
    /// The run starts halted and ends at once, journaled as halted (as a new run does).
    HaltsTheRun,
}

/// A run claimed by one resume or replay; dropping it lets the next one try.
struct Claim<'a> {
    claimed: &'a DashMap<RunId, ()>,
    run: RunId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.claimed.remove(&self.run);
    }
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
        let orchestrator = Orchestrator {
            inner: Arc::new(Services {
                runtime: runtime.clone(),
                client,
                tools,
                ledger,
                halts,
                root,
                tenants: Mutex::default(),
                live: DashMap::new(),
                claimed: DashMap::new(),
                long_term: DashMap::new(),
                journal: config.journal.clone(),
                config,
                planner_prompts: PlannerPrompts::default(),
            }),
        };
        orchestrator.rebuild_spend()?;
        Ok(orchestrator)
    }

    /// Charges what the journal says was spent, so that tenant and global ceilings hold across
    /// restarts: a finished run's spend on its tenant's account; an unfinished run's on its own
    /// account (opened here, so resuming it does not charge its journaled answers twice).
    /// Each event's charge is recorded at its journaled time, so with a budget period a charge
    /// of an earlier period counts on its run only ([`AccountPath::record_made_at`]).
    /// What runs deleted by retention had spent is kept by the journal per tenant
    /// ([`Journal::carried_spend`]) and charged on the tenant too, without a period only: it
    /// has no time (the configuration allows a period only with a retention that deletes no
    /// run of the current period).
    fn rebuild_spend(&self) -> Result<(), SubmitError> {
        let (ledger, journal) = (&self.inner.ledger, &self.inner.journal);
        if ledger.period() == BudgetPeriod::None {
            for (tenant, spent) in journal.carried_spend()? {
                let tenant = ledger.tenant(&TenantId::new(tenant.as_str()));
                ledger.path(tenant.id())?.record(spent);
            }
        }
        for summary in journal.runs(&RunFilter::all())? {
            let charges: Vec<(SystemTime, Charge)> = journal
                .read(&summary.run)?
                .into_iter()
                .map(|entry| (entry.at, entry.event.charge()))
                .filter(|(_, charge)| !charge.is_zero())
                .collect();
            if charges.is_empty() {
                continue;
            }
            let path = self.rebuilt_path(&summary)?;
            for (at, charge) in charges {
                path.record_made_at(charge, at);
            }
        }
        Ok(())
    }

    /// Where a journaled run's spend is recorded at start: its tenant's account for a finished
    /// run, else its own account (opened under its tenant's).
    fn rebuilt_path(&self, summary: &RunSummary) -> Result<AccountPath, SubmitError> {
        let ledger = &self.inner.ledger;
        let tenant = ledger.tenant(&TenantId::new(summary.tenant.as_str()));
        let leaf = if summary.status == RunStatus::Finished {
            tenant.id().clone()
        } else {
            let run = AccountId::Run(summary.run.clone());
            match ledger.open(run.clone(), Some(tenant.id()), Limits::default()) {
                Ok(_) | Err(LedgerError::AlreadyOpen(_)) => {}
                Err(e) => return Err(e.into()),
            }
            run
        };
        Ok(ledger.path(&leaf)?)
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
        let run = self.accept(&request).await?;
        let log = RunLog::new(self.inner.journal.clone(), run.clone());
        self.launch(run, request, team, log).await
    }

    /// Validates `request` and journals it as submitted, without starting it: the run waits,
    /// journaled as active, until [`resume`](Self::resume) starts it (in this process or in
    /// another one on the same journal). A cluster's replica accepts runs this way and puts
    /// them in its run queue, for whichever replica claims them.
    pub async fn accept(&self, request: &RunRequest) -> Result<RunId, SubmitError> {
        self.validate(request)?;
        let run = RunId::generate();
        // Write-ahead: the run is durable before it is acknowledged.
        let submitted = JournalEvent::RunSubmitted {
            tenant: request.tenant.clone(),
            goal: request.goal.clone(),
            request: serde_json::to_value(request)
                .map_err(|e| invalid("request", e.to_string()))?,
        };
        self.inner
            .journal
            .append(&run, redact_serialized(submitted))
            .await?;
        Ok(run)
    }

    /// A run of this process that has not ended yet.
    pub fn run(&self, id: &RunId) -> Option<RunHandle> {
        self.inner.live.get(id).map(|h| h.clone())
    }

    /// The journaled runs `filter` selects (of this process and earlier ones).
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, JournalError> {
        self.inner.journal.runs(filter)
    }

    /// The long-term memory of `tenant`'s runs (in `OrchestratorConfig::long_term_store`, else
    /// in this process); no other tenant's run reads it.
    pub fn long_term(&self, tenant: &str) -> Arc<LongTermMemory> {
        let store = &self.inner.config.long_term_store;
        self.inner
            .long_term
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                Arc::new(match store {
                    Some(store) => LongTermMemory::stored(store.clone(), tenant),
                    None => LongTermMemory::new(),
                })
            })
            .clone()
    }

    /// Claims `id` for a resume or a replay until the claim is dropped (once the run is live):
    /// [`ResumeError::Running`] if it is live or claimed already.
    fn claim(&self, id: &RunId) -> Result<Claim<'_>, ResumeError> {
        let (live, claimed) = (&self.inner.live, &self.inner.claimed);
        if live.contains_key(id) || claimed.insert(id.clone(), ()).is_some() {
            return Err(ResumeError::Running(id.clone()));
        }
        // Launched by a claim dropped just before this one was taken, and still live.
        if live.contains_key(id) {
            claimed.remove(id);
            return Err(ResumeError::Running(id.clone()));
        }
        Ok(Claim {
            claimed,
            run: id.clone(),
        })
    }

    /// The tools runs may ask for.
    pub fn tools(&self) -> &ToolRegistry {
        &self.inner.tools
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

    /// [`resume`](Self::resume) with the run's custom agents. Of concurrent resumes of one
    /// run, exactly one starts it; the others get [`ResumeError::Running`] and change nothing.
    pub async fn resume_with(&self, id: &RunId, team: Team) -> Result<RunHandle, ResumeError> {
        self.go_on(id, team, StandingHalt::Refuses).await
    }

    /// Drives a run [`accept`](Self::accept)ed or cut off, for the cluster replica that claimed
    /// it: [`resume`](Self::resume), except that a standing halt of its tenant (or of
    /// everything) ends it halted at once, as it does a new run, instead of refusing.
    pub async fn take_over(&self, id: &RunId) -> Result<RunHandle, ResumeError> {
        self.go_on(id, Team::new(), StandingHalt::HaltsTheRun).await
    }

    /// Resumes run `id` from its journal; `standing` says what a standing halt above it does.
    async fn go_on(
        &self,
        id: &RunId,
        team: Team,
        standing: StandingHalt,
    ) -> Result<RunHandle, ResumeError> {
        let _claim = self.claim(id)?;
        let (request, recorded) = self.journaled(id)?;
        if recorded
            .iter()
            .any(|(_, e)| matches!(e, JournalEvent::RunFinished { .. }))
        {
            return Err(ResumeError::Finished(id.clone()));
        }
        let tenant = TenantId::new(request.tenant.as_str());
        match (self.inner.halts.resume_run(&tenant, id), standing) {
            (Ok(_), _) | (Err(_), StandingHalt::HaltsTheRun) => {}
            (Err(e), StandingHalt::Refuses) => {
                return Err(ResumeError::TenantHalted(e.to_string()))
            }
        }
        // A ledger that still has the run's account (halted in this process) keeps what it
        // spent; a new one (after a restart) is rebuilt from the journaled costs.
        let rebuild = self
            .inner
            .ledger
            .account(&AccountId::Run(id.clone()))
            .is_none();
        let served = if rebuild {
            ServedAnswers::Charged
        } else {
            ServedAnswers::Free
        };
        let journal = self.inner.journal.clone();
        let log = RunLog::resumed(
            journal,
            id.clone(),
            recorded,
            AtJournalEnd::GoOnLive,
            served,
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
        let claim = self.claim(id)?;
        let (request, recorded) = self.journaled(id)?;
        let events = recorded.len();
        let finished = recorded
            .iter()
            .any(|(_, e)| matches!(e, JournalEvent::RunFinished { .. }));
        let journal = self.inner.journal.clone();
        let log = RunLog::resumed(
            journal,
            id.clone(),
            recorded,
            AtJournalEnd::Stop,
            ServedAnswers::Free,
        );
        let handle = self.launch(id.clone(), request, team, log).await?;
        drop(claim);
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

    /// Opens the run's account and halt token, and starts its subtree, driver included.
    async fn launch(
        &self,
        run: RunId,
        request: RunRequest,
        team: Team,
        log: RunLog,
    ) -> Result<RunHandle, SubmitError> {
        let inner = &self.inner;
        let (path, token) = self.open_account(&run, &request)?;
        // The run's agents and its driver share one arbiter: their calls cost no thread wake-up.
        // Runs spread over the arbiters instead.
        let placement = inner.runtime.next_placement();
        let tenant = match self.inner.tenant_supervisor(&request.tenant).await {
            Ok(tenant) => tenant,
            Err(e) => {
                inner.ledger.close(&AccountId::Run(run.clone()));
                return Err(e.into());
            }
        };
        if let Some(deadline) = request.budget.deadline {
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
        let (setup, handle) = self.setup(run, request, &team, log, (path, token), placement);
        inner.live.insert(handle.id.clone(), handle.clone());
        inner.runtime.metrics().run_started();
        let subtree = self.run_subtree(&setup, &team, placement);
        let started = tenant.ask(StartChild(subtree)).await;
        if let Err(e) = started.map_err(SupervisorError::from).and_then(|r| r) {
            // No driver runs: the run ends here, and what it held is released.
            if let Some(lease) = setup.take_lease() {
                let state = RunState::Failed {
                    reason: FailReason::AgentError,
                    detail: format!("the run's agents did not start: {e}"),
                };
                lease.release_in_background(state, Vec::new(), setup.at_end);
            }
            return Err(e.into());
        }
        Ok(handle)
    }

    /// Opens run `run`'s ledger account under its tenant's (opened with the tenant's ceiling),
    /// or, when it is open already (a run resumed in this process, or rebuilt from the
    /// journal), gives it the budget again (a deadline counts from now); and its halt token.
    fn open_account(
        &self,
        run: &RunId,
        request: &RunRequest,
    ) -> Result<(AccountPath, HaltToken), SubmitError> {
        let ledger = &self.inner.ledger;
        let tenant_id = TenantId::new(request.tenant.as_str());
        let tenant = ledger.tenant(&tenant_id);
        let budget = &request.budget;
        let limits = Limits {
            micro_usd: budget.micro_usd,
            tokens: budget.tokens,
            model_calls: budget.model_calls,
            deadline: budget.deadline.map(|d| Instant::now() + d),
        };
        let run_account = AccountId::Run(run.clone());
        match ledger.open(run_account.clone(), Some(tenant.id()), limits.clone()) {
            Ok(_) => {}
            Err(LedgerError::AlreadyOpen(_)) => {
                if let Some(account) = ledger.account(&run_account) {
                    account.set_limits(limits);
                }
            }
            Err(e) => return Err(e.into()),
        }
        let path = ledger.path(&run_account)?;
        Ok((path, self.inner.halts.run(&tenant_id, run)))
    }

    /// What every driver of the run shares, and the submitter's handle on the run.
    fn setup(
        &self,
        run: RunId,
        request: RunRequest,
        team: &Team,
        log: RunLog,
        (path, token): (AccountPath, HaltToken),
        placement: Placement,
    ) -> (Arc<RunSetup>, RunHandle) {
        let (state_tx, state) = watch::channel(RunState::Queued);
        // Held for the first subscriber; a channel only once someone subscribes.
        let events = RunUpdates::new();
        let (decisions_tx, decisions) = mpsc::unbounded_channel();
        let (result_tx, result) = watch::channel(None);
        let handle = RunHandle {
            id: run.clone(),
            state,
            events: events.clone(),
            decisions: decisions_tx,
            result,
            halts: self.inner.halts.clone(),
        };
        let lease = RunLease {
            services: self.inner.clone(),
            run: run.clone(),
            tenant: request.tenant.clone(),
            placement,
            started: Instant::now(),
            state: state_tx.clone(),
            events: events.clone(),
            result: result_tx,
        };
        let allowed: Arc<[String]> = request.tools.clone().into();
        let setup = RunSetup {
            services: self.inner.clone(),
            reviewers: team
                .members
                .iter()
                .filter_map(|m| m.review.clone().map(|r| (m.id(&run), r)))
                .collect(),
            planner_prompt: (self.inner.planner_prompts).for_tools(&self.inner.tools, &allowed),
            allowed,
            cache_scope: request.tenant.as_str().into(),
            span: telemetry::invoke_workflow("run", run.as_str()),
            at_end: log.at_end(),
            first_log: std::sync::Mutex::new(Some(log)),
            run,
            request,
            path,
            token,
            state: state_tx,
            events,
            decisions: Mutex::new(decisions),
            crashes: std::sync::Mutex::default(),
            steps: std::sync::Mutex::default(),
            lease: std::sync::Mutex::new(Some(lease)),
        };
        (Arc::new(setup), handle)
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
        let ceilings = self.inner.ledger.ceilings();
        if let Err(e) = ceilings.check_run(request.budget.micro_usd) {
            return Err(invalid("budget_usd", e.to_string()));
        }
        for tool in &request.tools {
            let Some(found) = self.inner.tools.get(tool) else {
                return Err(invalid(
                    "tools",
                    format!(
                        "no tool named {tool:?} is registered (registered: {:?})",
                        self.inner.tools.names()
                    ),
                ));
            };
            if !found.allows(&request.tenant) {
                return Err(invalid(
                    "tools",
                    format!(
                        "tenant {:?} may not use tool {tool:?}; ask for a tool its tenant list allows",
                        request.tenant
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

    /// The supervision subtree of one run: planner, executors, memory, custom agents, and
    /// last its driver (so the others have started when it starts).
    fn run_subtree(&self, setup: &Arc<RunSetup>, team: &Team, placement: Placement) -> ChildSpec {
        let (inner, run) = (&self.inner, &setup.run);
        let mut spec = SupervisorSpec::new(Strategy::OneForOne)
            .child(ChildSpec::agent(planner_id(run), Planner::default).placement(placement));
        for i in 0..inner.config.executors_per_run.max(1) {
            let tools = inner.tools.clone();
            spec = spec.child(
                ChildSpec::agent(executor_id(run, i), move || Executor::new(tools.clone()))
                    .placement(placement),
            );
        }
        let (memory_run, long_term) = (run.clone(), self.long_term(&setup.request.tenant));
        spec = spec.child(
            ChildSpec::agent(memory_id(run), move || {
                MemoryAgent::new(memory_run.clone(), long_term.clone())
            })
            .placement(placement),
        );
        for member in &team.members {
            spec = spec.child(member.child_spec(run).placement(placement));
        }
        spec = spec.child(driver_spec(setup.clone(), placement));
        ChildSpec::supervisor(run_supervisor_id(run), spec)
            .restart(RestartType::Temporary)
            .placement(placement)
    }
}
