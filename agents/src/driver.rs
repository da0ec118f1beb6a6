//! The driver of one run: plan, review, approve, execute, replan, until the run ends; every
//! event journaled, durable before the next external effect (the commit points of
//! `journaling`), and served from the journal when it is resumed or replayed. The run's agents
//! are stateless: the driver owns the history.

use std::future::IntoFuture;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_runtime::halt::HaltReason;
use impresario_runtime::journal::{RunEvent as JournalEvent, ToolOutcome};
use impresario_runtime::ledger::CeilingReached;
use impresario_runtime::llm::{CallOptions, LlmError};
use impresario_runtime::telemetry;
use impresario_runtime::{AgentError, AgentId, AgentRef, TenantId};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::ending::journal_end;
use crate::executor::{idempotency_key, ExecuteStep, Executor};
use crate::fault::DriverPhase;
use crate::journaling::{AtJournalEnd, LogError, ModelGateway, Recorded, RunLog};
use crate::memory::{
    compact_via, ContextBudget, ContextEntry, EntryKind, MemoryAgent, MemoryError, MemoryRecord,
    Outcome, Recall, Remember,
};
use crate::models::Role;
use crate::plan::{LoopDetector, Plan, Step};
use crate::planner::{MakePlan, Planned, Planner, PlannerError};
use crate::run::{Decision, FailReason, RunState, RunUpdate, StepFailure, StepRecord};
use crate::run_setup::RunSetup;
use crate::services::{executor_id, memory_id, planner_id};
use crate::team::{Review, ReviewPlan, Verdict};
use crate::tool::{RegisteredTool, ToolError};

/// Drives one run; owns its history (the agents are stateless and may restart at any time).
pub(crate) struct Driver {
    /// What every driver of the run shares.
    setup: Arc<RunSetup>,
    /// The run's journal, walked first when resumed.
    log: Arc<Mutex<RunLog>>,
    gateway: ModelGateway,
    /// Whether an earlier driver of the run crashed (this one walks what it did first).
    incarnation: Incarnation,
    /// What happened so far, as the planner and model calls see it (compacted by budget).
    history: Vec<ContextEntry>,
    last_ceiling: Option<CeilingReached>,
    next_executor: usize,
    /// The run's agents, looked up once its team has started (their handles survive restarts).
    agents: Option<RunAgents>,
}

/// Which driver of its run a driver is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incarnation {
    /// The run's first driver (of this launch: a resume starts a first driver too).
    First,
    /// Started again after the run's driver crashed: what it walks of the journal, the run's
    /// subscribers were told already.
    Restarted,
}

/// The agents of one run's team that the driver calls.
pub(crate) struct RunAgents {
    planner: AgentRef<Planner>,
    executors: Vec<AgentRef<Executor>>,
    memory: AgentRef<MemoryAgent>,
}

/// The run stopped without an answer (failed, halted, or stopped by a ceiling), in this state:
/// the error side of every part of the driver, so `?` ends the run. An answer is not an error:
/// [`Driver::pursue`] returns it.
struct Stopped(RunState);

/// Where an operator's decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    /// Asked and answered now.
    Now,
    /// Served from the journal of a resumed run.
    Journaled,
}

/// Whether a step may run again when its outcome is unknown (its executor crashed, or a crash
/// cut the run off during it): model calls and idempotent tools may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Running it twice does no harm.
    Safe,
    /// It may have had an effect that must not happen twice.
    Unsafe,
}

/// Where a run's planning stands: what the next plan should know, how many plans and reviews
/// it took, and the steps executed so far.
#[derive(Default)]
struct Pass {
    feedback: Option<String>,
    revision: u32,
    reviews: u32,
    number: u32,
}

/// What executing a plan came to.
enum Progress {
    /// Its final answer.
    Answered(String),
    /// Plan again, knowing this (a failed step), if anything.
    Replan(Option<String>),
}

impl Driver {
    /// A driver of `setup`'s run, walking `log` first.
    pub(crate) fn new(
        setup: Arc<RunSetup>,
        log: Arc<Mutex<RunLog>>,
        incarnation: Incarnation,
    ) -> Self {
        setup.restart_steps();
        let mut gateway = ModelGateway::new(
            setup.services.client.clone(),
            log.clone(),
            setup.token.clone(),
        );
        if setup.request.stream {
            gateway = gateway.streaming_to(setup.events.clone());
        }
        Driver {
            gateway,
            setup,
            log,
            incarnation,
            history: Vec::new(),
            last_ceiling: None,
            next_executor: 0,
            agents: None,
        }
    }

    /// Drives the run to its end, journals the end, and hands what it held to be released.
    pub(crate) async fn drive(mut self) {
        let ended = match self.find_team() {
            Ok(()) => self.pursue().await,
            Err(stopped) => Err(stopped),
        };
        let state = match ended {
            Ok(answer) => RunState::Succeeded { answer },
            Err(Stopped(state)) => state,
        };
        self.finish(state).await;
    }

    fn set(&self, state: RunState) {
        self.setup.events.send(RunUpdate::State(state.clone()));
        let _ = self.setup.state.send(state);
    }

    fn options(&self) -> CallOptions {
        self.setup.options()
    }

    /// The loop: a reviewed plan, then its steps, replanning after a failed step, until the
    /// final answer or the run stops.
    async fn pursue(&mut self) -> Result<String, Stopped> {
        let mut detector = LoopDetector::new(self.setup.services.config.loop_repeats);
        let mut pass = Pass::default();
        self.recall().await?;
        loop {
            let plan = self.reviewed_plan(&mut pass).await?;
            match self.run_plan(plan, &mut detector, &mut pass.number).await? {
                Progress::Answered(answer) => return Ok(answer),
                Progress::Replan(feedback) => pass.feedback = feedback,
            }
        }
    }

    /// Plans until a plan passes review (or the run's reviews are used up); every plan is
    /// journaled and announced.
    async fn reviewed_plan(&mut self, pass: &mut Pass) -> Result<Plan, Stopped> {
        loop {
            self.check_halt().await?;
            self.set(RunState::Planning);
            self.setup.checkpoint(DriverPhase::Planning);
            self.compact().await?;
            let plan = self.plan(pass.feedback.take(), pass.number).await?;
            pass.revision += 1;
            let revision = pass.revision;
            let journaled = serde_json::to_value(&plan).unwrap_or_default();
            self.record(JournalEvent::PlanMade {
                revision,
                plan: journaled,
            })
            .await?;
            let planned = RunUpdate::Planned {
                revision,
                plan: plan.clone(),
            };
            self.announce(planned).await;
            if pass.reviews >= self.setup.services.config.max_reviews {
                return Ok(plan);
            }
            let Some(feedback) = self.review(&plan, pass.number).await? else {
                return Ok(plan);
            };
            pass.reviews += 1;
            pass.feedback = Some(format!("a reviewer sent the plan back: {feedback}"));
            self.announce(RunUpdate::Revised { revision, feedback })
                .await;
        }
    }

    /// Executes a plan's steps in order, up to its final answer or its first failed step.
    async fn run_plan(
        &mut self,
        plan: Plan,
        detector: &mut LoopDetector,
        number: &mut u32,
    ) -> Result<Progress, Stopped> {
        for step in plan.steps {
            self.check_halt().await?;
            if let Step::FinalAnswer { answer } = step {
                return Ok(Progress::Answered(answer));
            }
            *number += 1;
            self.admit(&step, *number, detector)?;
            if let Err(failure) = self.step(*number, &step).await? {
                let label = step.label();
                let feedback = format!("step {number} ({label}) failed: {failure}");
                return Ok(Progress::Replan(Some(feedback)));
            }
        }
        Ok(Progress::Replan(None))
    }

    /// Stops the run if step `number` is one too many, or repeats what it did without progress.
    fn admit(&self, step: &Step, number: u32, detector: &mut LoopDetector) -> Result<(), Stopped> {
        let max_steps = self.setup.request.max_steps;
        if number > max_steps {
            let detail = format!("no answer within {max_steps} steps");
            return Err(failed(FailReason::MaxSteps, detail));
        }
        if let Some(kind) = detector.observe(step) {
            let detail = format!("{kind:?} at step {number}: {}", step.signature());
            return Err(failed(FailReason::LoopDetected, detail));
        }
        Ok(())
    }

    /// Executes step `number`, journaled before and after, and adds it to the run's history.
    async fn step(
        &mut self,
        number: u32,
        step: &Step,
    ) -> Result<Result<String, StepFailure>, Stopped> {
        self.set(RunState::Running { step: number });
        self.record(JournalEvent::StepStarted {
            step: number,
            kind: step.label(),
            detail: serde_json::to_value(step).unwrap_or_default(),
        })
        .await?;
        self.setup.checkpoint(DriverPhase::Executing);
        let outcome = self.execute(number, step).await?;
        self.record(JournalEvent::StepFinished {
            step: number,
            outcome: serde_json::to_value(&outcome).unwrap_or_default(),
        })
        .await?;
        let observed = match &outcome {
            Ok(output) => output.clone(),
            Err(failure) => format!("failed: {failure}"),
        };
        self.history.push(ContextEntry::new(
            EntryKind::Step,
            Some(number),
            describe(step),
        ));
        self.history.push(ContextEntry::new(
            EntryKind::Observation,
            Some(number),
            observed,
        ));
        let record = StepRecord {
            number,
            step: step.clone(),
            outcome: outcome.clone(),
        };
        self.announce(RunUpdate::StepFinished(record.clone())).await;
        self.setup.step_done(record);
        Ok(outcome)
    }

    /// Tells the run's subscribers `update`, unless this driver was started again after a
    /// crash and `update` comes of what it walked in the journal: its crashed predecessor
    /// told them already (it sends an update right after recording what it is about).
    async fn announce(&self, update: RunUpdate) {
        let walking = self.log.lock().await.replayed_last();
        if !(walking && self.incarnation == Incarnation::Restarted) {
            self.setup.events.send(update);
        }
    }

    /// Records what the run did in its journal (durable at the next commit point), or checks it
    /// against the journal of a resumed run.
    async fn record(&self, event: JournalEvent) -> Result<Recorded, Stopped> {
        let recorded = self.log.lock().await.record(event).await;
        recorded.map_err(log_failure)
    }

    /// A commit point: what the run recorded so far is durable before an external effect.
    async fn commit(&self) -> Result<(), Stopped> {
        let committed = self.log.lock().await.commit().await;
        committed.map_err(log_failure)
    }

    /// The next journaled event, if it is the one `wanted` describes (served, not repeated).
    async fn serve(&self, wanted: impl Fn(&JournalEvent) -> bool) -> Option<JournalEvent> {
        self.log.lock().await.serve(wanted)
    }

    /// Awaits an agent's answer unless the run is halted first. A ceiling halt comes from the
    /// refusal of a call in flight, whose answer is about to arrive: it gets a moment, so the run
    /// reports the ceiling itself.
    async fn call<F: IntoFuture>(&self, answer: F) -> Result<F::Output, Stopped> {
        let mut answer = pin!(answer.into_future());
        tokio::select! {
            biased;
            out = &mut answer => return Ok(out),
            () = self.setup.token.halted() => {}
        }
        if self
            .setup
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

    /// Awaits the answer of `agent` (its kind) and records `gen_ai.invoke_agent.duration`:
    /// `halted` when the run stopped first, `agent_error` when the agent could not answer,
    /// `failed` when it answered with a failure.
    async fn timed<T, E, F>(
        &self,
        agent: &str,
        answer: impl std::future::Future<Output = Result<Result<Result<T, E>, F>, Stopped>>,
    ) -> Result<Result<Result<T, E>, F>, Stopped> {
        let started = Instant::now();
        let answer = answer.await;
        let error = match &answer {
            Err(_) => Some("halted"),
            Ok(Err(_)) => Some("agent_error"),
            Ok(Ok(Err(_))) => Some("failed"),
            Ok(Ok(Ok(_))) => None,
        };
        let metrics = self.setup.services.runtime.metrics();
        metrics.agent_invoked(agent, started.elapsed(), error);
        answer
    }

    /// The run's state if its token says to stop (a graceful halt stops between steps), after
    /// applying to it a halt standing in the shared halt store, if one is configured.
    async fn check_halt(&self) -> Result<(), Stopped> {
        if let Some(store) = &self.setup.services.config.halt_store {
            let tenant = TenantId::from(self.setup.request.tenant.as_str());
            let run = &self.setup.run;
            match store.standing(&tenant, run).await {
                Ok(Some(halt)) => {
                    self.setup.token.halt(halt);
                }
                Ok(None) => {}
                // Notified halts still arrive; the next step asks again.
                Err(err) => tracing::warn!(%run, error = %err, "could not check the shared halts"),
            }
        }
        if self.setup.token.stop_requested() {
            return Err(self.halted());
        }
        Ok(())
    }

    fn halted(&self) -> Stopped {
        let halt = self.setup.token.halt_info();
        if let (Some(ceiling), Some(HaltReason::CostCeiling)) =
            (&self.last_ceiling, halt.as_ref().map(|h| h.reason))
        {
            return Stopped(RunState::CeilingReached {
                ceiling: ceiling.clone(),
            });
        }
        Stopped(match halt {
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

    fn ceiling(&mut self, ceiling: CeilingReached) -> Stopped {
        self.last_ceiling = Some(ceiling.clone());
        Stopped(RunState::CeilingReached { ceiling })
    }

    /// Puts what earlier runs learned about this goal into the context, through the run's memory
    /// agent. A resumed run is served what it recalled the first time (memory may have changed
    /// since).
    async fn recall(&mut self) -> Result<(), Stopped> {
        if self.setup.services.config.recall == 0 {
            return Ok(());
        }
        let served = self
            .serve(|e| matches!(e, JournalEvent::Recalled { .. }))
            .await;
        let memories = match served {
            Some(JournalEvent::Recalled { memories }) => memories,
            _ => {
                let memories = self.recall_now().await?;
                let recalled = JournalEvent::Recalled {
                    memories: memories.clone(),
                };
                self.record(recalled).await?;
                memories
            }
        };
        let count = memories.len();
        self.announce(RunUpdate::Recalled { memories: count }).await;
        for memory in memories {
            self.history
                .push(ContextEntry::new(EntryKind::Observation, None, memory));
        }
        Ok(())
    }

    /// Asks the run's memory agent about the goal. A memory that cannot be recalled does not
    /// stop the run: it recalls nothing.
    async fn recall_now(&self) -> Result<Vec<String>, Stopped> {
        let memory = self.agents()?.memory.clone();
        let query = Recall {
            query: self.setup.request.goal.clone(),
            k: self.setup.services.config.recall,
        };
        let recalled = match self.call(memory.ask(query)).await? {
            Ok(Ok(recalled)) => recalled,
            Ok(Err(e)) => {
                tracing::warn!(run = %self.setup.run, error = %e, "could not recall memories");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(run = %self.setup.run, error = %e, "memory agent failed");
                Vec::new()
            }
        };
        let described = recalled.iter().map(|found| {
            let r = &found.record;
            let (goal, outcome, why) = (&r.goal, r.outcome.as_str(), &r.why);
            format!(
                "Memory of an earlier run (goal: {goal}; outcome: {outcome}; why: {why}): {}",
                r.text
            )
        });
        Ok(described.collect())
    }

    /// Summarizes the oldest steps when the context would exceed the run's budget.
    async fn compact(&mut self) -> Result<(), Stopped> {
        let Some(max_tokens) = self.setup.request.context_budget else {
            return Ok(());
        };
        let budget = ContextBudget {
            max_tokens,
            keep_recent: 4,
            model: self
                .setup
                .request
                .models
                .choice(Role::Planner)
                .model
                .clone(),
        };
        let summarizer = self.setup.request.models.choice(Role::Summarizer).clone();
        let options = self.options();
        let (gateway, step) = (self.gateway.clone(), self.setup.steps_done() as u32);
        let mut history = std::mem::take(&mut self.history);
        let model = summarizer.model.as_str();
        let done = compact_via(&mut history, &budget, model, |request| async move {
            let fallbacks = &summarizer.fallbacks;
            gateway.chat(step, request, fallbacks, &options).await
        })
        .await;
        self.history = history;
        match done {
            Ok(Some(compaction)) => {
                self.announce(RunUpdate::Compacted(compaction)).await;
            }
            Ok(None) => {}
            Err(MemoryError::Llm(e))
                if matches!(e, LlmError::CeilingReached(_)) || self.setup.token.is_halted() =>
            {
                return Err(self.model_failure(e))
            }
            Err(MemoryError::Llm(_)) if self.log.lock().await.replay_only() => {
                if let Some(failure) = self.log.lock().await.take_failure() {
                    return Err(log_failure(failure));
                }
            }
            // The context stays as it was (compact loses nothing): the run goes on, larger.
            Err(e) => {
                tracing::warn!(run = %self.setup.run, error = %e, "context compaction failed")
            }
        }
        Ok(())
    }

    /// Asks the planner (retrying if it crashed: planning reads only), mapping failures to ends.
    async fn plan(&mut self, feedback: Option<String>, step: u32) -> Result<Plan, Stopped> {
        let inner = self.setup.services.clone();
        let planner = self.agents()?.planner.clone();
        let system = self.setup.planner_prompt.clone();
        let mut attempt = 0;
        loop {
            let request = MakePlan {
                model: self.setup.request.models.choice(Role::Planner).clone(),
                goal: self.setup.request.goal.clone(),
                system: system.clone(),
                history: render(&self.history),
                feedback: feedback.clone(),
                max_repairs: self.setup.request.max_repairs,
                options: self.options(),
                gateway: self.gateway.clone(),
                step,
            };
            let asked = self
                .call(planner.ask(request))
                .instrument(telemetry::invoke_agent(&planner.id().kind, planner.id()));
            let answer = self.timed("planner", asked).await?;
            match answer {
                Ok(Ok(Planned { plan, .. })) => return Ok(plan),
                Ok(Err(PlannerError::Invalid { attempts, last })) => {
                    return Err(Stopped(RunState::Failed {
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
                    return Err(Stopped(RunState::Failed {
                        reason: FailReason::AgentError,
                        detail: format!("planner: {e}"),
                    }))
                }
            }
        }
    }

    fn model_failure(&mut self, error: LlmError) -> Stopped {
        match error {
            LlmError::CeilingReached(ceiling) => self.ceiling(ceiling),
            // A cancelled call, or any failure of a halted run, is the halt's doing.
            _ if self.setup.token.is_halted() => self.halted(),
            other => Stopped(RunState::Failed {
                reason: FailReason::ModelError,
                detail: other.to_string(),
            }),
        }
    }

    /// Asks every reviewer about the plan; the first to send it back wins.
    async fn review(&mut self, plan: &Plan, step: u32) -> Result<Option<String>, Stopped> {
        for (id, review) in self.setup.reviewers.clone() {
            let reviewer = id.to_string();
            // A resumed run is served the verdicts it was given: a reviewer may judge differently now.
            let served = self
                .serve(
                    |e| matches!(e, JournalEvent::Reviewed { reviewer: r, .. } if *r == reviewer),
                )
                .await;
            let verdict = match served {
                Some(JournalEvent::Reviewed { verdict, .. }) => {
                    serde_json::from_value::<Verdict>(verdict).ok()
                }
                _ => {
                    let verdict = self.review_now(&id, &*review, plan).await?;
                    self.record(JournalEvent::Reviewed {
                        step,
                        reviewer,
                        verdict: serde_json::to_value(&verdict).unwrap_or_default(),
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

    /// Asks reviewer `id` about the plan. A reviewer that fails does not block the run (its
    /// supervisor restarts it): the plan goes unreviewed by it.
    async fn review_now(
        &self,
        id: &AgentId,
        review: &Review,
        plan: &Plan,
    ) -> Result<Option<Verdict>, Stopped> {
        let request = ReviewPlan {
            goal: self.setup.request.goal.clone(),
            plan: plan.clone(),
        };
        let asked = self
            .setup
            .token
            .run(review(&self.setup.services.runtime, id, request))
            .await
            .map_err(|_| self.halted())?;
        match asked {
            Ok(verdict) => Ok(Some(verdict)),
            Err(e) => {
                tracing::warn!(run = %self.setup.run, reviewer = %id, error = %e, "reviewer failed; plan not reviewed");
                Ok(None)
            }
        }
    }

    /// Runs one step: approval if its impact needs it; a tool call's intent journaled before it
    /// runs and its result after; on a resumed run a journaled result is served instead.
    async fn execute(
        &mut self,
        number: u32,
        step: &Step,
    ) -> Result<Result<String, StepFailure>, Stopped> {
        let tool = match step {
            Step::ToolCall { tool, .. } => self.setup.services.tools.get(tool),
            _ => None,
        };
        let repeat = match (step, &tool) {
            (Step::ToolCall { .. }, Some(tool)) if tool.idempotent() => Repeat::Safe,
            (Step::ToolCall { .. }, _) => Repeat::Unsafe,
            _ => Repeat::Safe,
        };
        if let Some(refused) = self.approve(number, step, tool.as_deref()).await? {
            return Ok(Err(refused));
        }
        let Step::ToolCall {
            tool: name,
            arguments,
            ..
        } = step
        else {
            return self.run_step(number, step, repeat).await;
        };
        let key = idempotency_key(&self.setup.run, number);
        let intent = self
            .record(JournalEvent::ToolCallIntent {
                step: number,
                tool: name.clone(),
                idempotency_key: key.clone(),
                arguments: serde_json::Value::Object(arguments.clone()),
            })
            .await?;
        if intent == Recorded::Replayed {
            if let Some(outcome) = self.journaled_outcome(number, name, &key, repeat).await? {
                return Ok(outcome);
            }
        }
        // Commit points around a call that must not run twice: before it, so a resumed run
        // knows it may have happened; after it, so a known outcome is not lost to a crash (it
        // would become one an operator must decide on). An idempotent tool is called again
        // whether or not it did, so its intent and result wait for the next commit point.
        if repeat == Repeat::Unsafe {
            self.commit().await?;
        }
        let outcome = self.run_step(number, step, repeat).await?;
        self.record_result(number, key, &outcome).await?;
        if repeat == Repeat::Unsafe {
            self.commit().await?;
        }
        Ok(outcome)
    }

    /// Asks an operator about a tool call whose impact needs approval under the run's autonomy:
    /// the refusal, if refused. A tool outside the allowlist is refused by the executor; it
    /// needs no approval.
    async fn approve(
        &mut self,
        number: u32,
        step: &Step,
        tool: Option<&RegisteredTool>,
    ) -> Result<Option<StepFailure>, Stopped> {
        let allowed =
            tool_name(step).is_some_and(|name| self.setup.allowed.iter().any(|a| a == name));
        let autonomy = self.setup.request.autonomy;
        let Some(tool) = tool.filter(|t| allowed && autonomy.needs_approval(t.impact())) else {
            return Ok(None);
        };
        if let (Err(reason), _) = self.decide(number, tool.name(), "approval").await? {
            let tool = tool.name().to_owned();
            return Ok(Some(ToolError::Rejected { tool, reason }.into()));
        }
        self.set(RunState::Running { step: number });
        Ok(None)
    }

    /// On a resumed run, how tool call `key` ended, if the journal knows. If it does not, the
    /// call may or may not have happened: an idempotent tool is called again (`None`); for
    /// another an operator decides (approve: call it again; reject: the step fails, journaled).
    async fn journaled_outcome(
        &mut self,
        number: u32,
        tool: &str,
        key: &str,
        repeat: Repeat,
    ) -> Result<Option<Result<String, StepFailure>>, Stopped> {
        loop {
            let served = self
                .serve(|e| matches!(e, JournalEvent::ToolResult { idempotency_key, .. } if idempotency_key == key))
                .await;
            if let Some(JournalEvent::ToolResult { outcome, .. }) = served {
                return Ok(Some(decode_outcome(outcome)));
            }
            if self.log.lock().await.replay_only() {
                let detail = format!("the journal ends inside tool call {key}");
                return Err(failed(FailReason::Diverged, detail));
            }
            if repeat == Repeat::Safe {
                return Ok(None);
            }
            match self.decide(number, tool, "unknown_outcome").await? {
                (Err(reason), _) => {
                    let tool = tool.to_owned();
                    let outcome = Err(ToolError::Rejected { tool, reason }.into());
                    self.record_result(number, key.to_owned(), &outcome).await?;
                    return Ok(Some(outcome));
                }
                // A decision taken now: call it again.
                (Ok(()), Decided::Now) => {
                    self.set(RunState::Running { step: number });
                    return Ok(None);
                }
                // A decision from the journal was for an attempt that may itself have run
                // before the next crash: look for its result, or ask again.
                (Ok(()), Decided::Journaled) => continue,
            }
        }
    }

    /// Journals how tool call `key` of step `number` ended.
    async fn record_result(
        &self,
        number: u32,
        key: String,
        outcome: &Result<String, StepFailure>,
    ) -> Result<Recorded, Stopped> {
        self.record(JournalEvent::ToolResult {
            step: number,
            idempotency_key: key,
            outcome: encode_outcome(outcome),
        })
        .await
    }

    /// What an executor is asked to run step `number`.
    fn execute_step(&self, number: u32, step: &Step) -> ExecuteStep {
        ExecuteStep {
            run: self.setup.run.clone(),
            tenant: self.setup.request.tenant.clone(),
            number,
            step: step.clone(),
            allowed: self.setup.allowed.clone(),
            model: self.setup.request.models.choice(Role::Executor).clone(),
            // Only a model call reads the history; a tool call does not need a copy.
            history: match step {
                Step::ModelCall { .. } => render(&self.history),
                _ => Vec::new(),
            },
            output_limit: self.setup.request.output_limit,
            halt: self.setup.token.clone(),
            options: self.options(),
            gateway: self.gateway.clone(),
        }
    }

    /// Asks an executor to run the step, retrying a crashed executor only when the step is safe
    /// to repeat.
    async fn run_step(
        &mut self,
        number: u32,
        step: &Step,
        repeat: Repeat,
    ) -> Result<Result<String, StepFailure>, Stopped> {
        let inner = self.setup.services.clone();
        let mut attempt = 0;
        loop {
            let executors = &self.agents()?.executors;
            let executor = executors[self.next_executor % executors.len()].clone();
            self.next_executor += 1;
            let request = self.execute_step(number, step);
            let asked = self
                .call(executor.ask(request))
                .instrument(telemetry::invoke_agent(&executor.id().kind, executor.id()));
            let answer = self.timed("executor", asked).await?;
            match answer {
                Ok(Ok(output)) => return Ok(Ok(output)),
                Ok(Err(StepFailure::Tool(ToolError::Halted { .. }))) => return Err(self.halted()),
                Ok(Err(StepFailure::Model { .. })) if self.setup.token.is_halted() => {
                    return Err(self.halted())
                }
                Ok(Err(StepFailure::Model { message })) => {
                    if let Some(failure) = self.log.lock().await.take_failure() {
                        return Err(log_failure(failure));
                    }
                    return Ok(Err(StepFailure::Model { message }));
                }
                Ok(Err(failure)) => return Ok(Err(failure)),
                Err(e)
                    if retryable(&e)
                        && repeat == Repeat::Safe
                        && attempt < inner.config.step_retries =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                Err(e) => {
                    let message = if repeat == Repeat::Safe {
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
    ) -> Result<(Result<(), String>, Decided), Stopped> {
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
            return Err(Stopped(RunState::Failed {
                reason: FailReason::Diverged,
                detail: format!("the journal ends waiting for a decision on step {number}"),
            }));
        }
        // A commit point: the operator is asked.
        self.commit().await?;
        let pending = PendingApproval::new(self.setup.services.runtime.metrics().clone());
        let decision = self.await_approval(number, tool).await;
        drop(pending);
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

    async fn await_approval(
        &mut self,
        number: u32,
        tool: &str,
    ) -> Result<Result<(), String>, Stopped> {
        self.set(RunState::AwaitingApproval {
            step: number,
            tool: tool.to_owned(),
        });
        let setup = self.setup.clone();
        let mut decisions = setup.decisions.lock().await;
        self.setup.checkpoint(DriverPhase::AwaitingApproval);
        loop {
            let decision = tokio::select! {
                decision = decisions.recv() => decision,
                () = self.setup.token.until_stop_requested() => return Err(self.halted()),
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

    /// Looks the run's agents up: the driver is the last child of the run's supervisor, which
    /// starts its children in order, so the others have started.
    fn find_team(&mut self) -> Result<(), Stopped> {
        let run = &self.setup.run;
        let executors = (0..self.setup.services.config.executors_per_run.max(1))
            .map(|i| self.lookup(executor_id(run, i)))
            .collect::<Result<_, _>>()?;
        self.agents = Some(RunAgents {
            planner: self.lookup(planner_id(run))?,
            executors,
            memory: self.lookup(memory_id(run))?,
        });
        Ok(())
    }

    /// The run's agents (there once `find_team` succeeded, which `drive` makes sure of first).
    fn agents(&self) -> Result<&RunAgents, Stopped> {
        self.agents.as_ref().ok_or_else(|| {
            Stopped(RunState::Failed {
                reason: FailReason::AgentError,
                detail: "the run's agents were never started".into(),
            })
        })
    }

    /// Agent `id` of this run, from the directory.
    fn lookup<A: impresario_runtime::Agent>(&self, id: AgentId) -> Result<AgentRef<A>, Stopped> {
        self.setup
            .services
            .runtime
            .directory()
            .lookup::<A>(&id)
            .ok_or_else(|| {
                Stopped(RunState::Failed {
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
        let steps = self.setup.step_labels();
        let record = MemoryRecord {
            run: self.setup.run.clone(),
            goal: self.setup.request.goal.clone(),
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
            tags: self.setup.allowed.to_vec(),
            at: std::time::SystemTime::now(),
        };
        // A run whose team never started has nothing to remember with.
        let Some(memory) = self.agents.as_ref().map(|a| a.memory.clone()) else {
            return;
        };
        if let Err(e) = memory
            .ask(Remember { record })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::warn!(run = %self.setup.run, error = %e, "could not remember the run");
        }
    }

    /// Journals the run's end and remembers it (not in a replay), then hands the run's lease
    /// over to be released (which stops this driver with the run's agents).
    async fn finish(self, state: RunState) {
        self.setup.checkpoint(DriverPhase::Finishing);
        let (at_end, unflushed) = {
            let mut log = self.log.lock().await;
            (log.at_end(), log.take_unflushed())
        };
        if at_end == AtJournalEnd::GoOnLive {
            let (journal, run) = (&*self.setup.services.journal, &self.setup.run);
            let halt = self.setup.token.halt_info();
            journal_end(journal, run, &state, halt, unflushed).await;
            self.remember(&state).await;
        }
        if let Some(lease) = self.setup.take_lease() {
            lease.release_in_background(state, self.setup.take_steps(), at_end);
        }
    }
}

/// An approval waited for, counted by the pending-approvals gauge until it is dropped (also
/// when the driver panics while waiting).
struct PendingApproval(telemetry::Metrics);

impl PendingApproval {
    fn new(metrics: telemetry::Metrics) -> Self {
        metrics.approval_requested();
        PendingApproval(metrics)
    }
}

impl Drop for PendingApproval {
    fn drop(&mut self) {
        self.0.approval_resolved();
    }
}

/// The run stops as failed, for `reason`.
fn failed(reason: FailReason, detail: impl Into<String>) -> Stopped {
    Stopped(RunState::Failed {
        reason,
        detail: detail.into(),
    })
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
fn log_failure(error: LogError) -> Stopped {
    Stopped(match error {
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
            serde_json::to_string(arguments).unwrap_or_default()
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
