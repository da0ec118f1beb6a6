//! The driver of one run: plan, review, approve, execute, replan, until the run ends; every
//! event journaled before the run goes on, and served from the journal when it is resumed or
//! replayed. The run's agents are stateless: the driver owns the history.

use std::future::IntoFuture;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope, HaltToken};
use impresario_runtime::journal::{RunEvent as JournalEvent, RunOutcome, ToolOutcome};
use impresario_runtime::ledger::{AccountId, AccountPath, CeilingReached};
use impresario_runtime::llm::{CallOptions, LlmError};
use impresario_runtime::telemetry::{self, RunOutcome as TelemetryOutcome};
use impresario_runtime::{AgentError, AgentId, AgentRef, RunId};
use impresario_supervisor::{StopChild, Supervisor, SupervisorError, WhichChildren};
use tokio::sync::{broadcast, mpsc, watch, Mutex};
use tracing::Instrument;

use crate::executor::{idempotency_key, ExecuteStep, Executor};
use crate::journaling::{LogError, ModelGateway, Recorded, RunLog};
use crate::memory::{
    compact_via, ContextBudget, ContextEntry, EntryKind, MemoryAgent, MemoryError, MemoryRecord,
    Outcome, Recall, Remember,
};
use crate::models::Role;
use crate::plan::{LoopDetector, Plan, Step};
use crate::planner::{MakePlan, Planned, Planner, PlannerError};
use crate::run::{
    Decision, FailReason, RunEvent, RunRequest, RunResult, RunState, RunUsage, StepFailure,
    StepRecord,
};
use crate::team::{Review, ReviewPlan, Verdict};
use crate::tool::{ToolError, ToolRegistry};

use crate::orchestrator::{executor_id, memory_id, planner_id, run_supervisor_id, Orchestrator};

/// Drives one run; owns its history (the agents are stateless and may restart at any time).
pub(crate) struct Driver {
    pub(crate) orchestrator: Orchestrator,
    /// When it was (re)started, for the run-duration metric.
    pub(crate) started: Instant,
    /// The run's journal, walked first when resumed.
    pub(crate) log: Arc<Mutex<RunLog>>,
    pub(crate) gateway: ModelGateway,
    pub(crate) reviewers: Vec<(AgentId, Arc<Review>)>,
    pub(crate) allowed: Arc<[String]>,
    pub(crate) run: RunId,
    pub(crate) request: RunRequest,
    pub(crate) path: AccountPath,
    pub(crate) token: HaltToken,
    pub(crate) state: watch::Sender<RunState>,
    pub(crate) events: broadcast::Sender<RunEvent>,
    pub(crate) decisions: mpsc::UnboundedReceiver<Decision>,
    pub(crate) steps: Vec<StepRecord>,
    /// What happened so far, as the planner and model calls see it (compacted by budget).
    pub(crate) history: Vec<ContextEntry>,
    pub(crate) last_ceiling: Option<CeilingReached>,
    pub(crate) next_executor: usize,
    /// The run's agents, looked up once its team has started (their handles survive restarts).
    pub(crate) agents: Option<RunAgents>,
    /// The planner's instructions for this run (schema and tools), built once.
    pub(crate) planner_prompt: Arc<str>,
    /// The run's tenant, whose cached model answers it may be served.
    pub(crate) cache_scope: Arc<str>,
}

/// The agents of one run's team that the driver calls.
pub(crate) struct RunAgents {
    planner: AgentRef<Planner>,
    executors: Vec<AgentRef<Executor>>,
    memory: AgentRef<MemoryAgent>,
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
    pub(crate) async fn drive(mut self) -> RunResult {
        let state = match self.await_team().await {
            Ok(()) => self.pursue().await,
            Err(end) => Err(end),
        };
        let state = match state {
            Ok(never) => match never {},
            Err(End(state)) => state,
        };
        self.finish(state).await
    }

    fn set(&self, state: RunState) {
        let _ = self.events.send(RunEvent::State(state.clone()));
        let _ = self.state.send(state);
    }

    fn options(&self) -> CallOptions {
        CallOptions::new(self.path.clone(), self.token.cancellation())
            .cache_scope(self.cache_scope.clone())
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
                let memory = self.agents()?.memory.clone();
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
            model: self.request.models.choice(Role::Planner).model.clone(),
        };
        let summarizer = self.request.models.choice(Role::Summarizer).clone();
        let options = self.options();
        let (gateway, step) = (self.gateway.clone(), self.steps.len() as u32);
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
        let planner = self.agents()?.planner.clone();
        let system = self.planner_prompt.clone();
        let mut attempt = 0;
        loop {
            let request = MakePlan {
                model: self.request.models.choice(Role::Planner).clone(),
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
            let executors = &self.agents()?.executors;
            let executor = executors[self.next_executor % executors.len()].clone();
            self.next_executor += 1;
            let request = ExecuteStep {
                run: self.run.clone(),
                number,
                step: step.clone(),
                allowed: self.allowed.clone(),
                model: self.request.models.choice(Role::Executor).clone(),
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
    async fn await_team(&mut self) -> Result<(), End> {
        let directory = self.orchestrator.inner.runtime.directory();
        let started = match directory.lookup::<Supervisor>(&run_supervisor_id(&self.run)) {
            Some(supervisor) => self
                .call(supervisor.ask(WhichChildren))
                .await?
                .map_err(SupervisorError::from)
                .and_then(|children| children),
            None => Err(SupervisorError::NoSuchChild(run_supervisor_id(&self.run))),
        };
        started.map_err(|e| {
            End(RunState::Failed {
                reason: FailReason::AgentError,
                detail: format!("the run's agents did not start: {e}"),
            })
        })?;
        let executors = (0..self.orchestrator.inner.config.executors_per_run.max(1))
            .map(|i| self.lookup(executor_id(&self.run, i)))
            .collect::<Result<_, _>>()?;
        self.agents = Some(RunAgents {
            planner: self.lookup(planner_id(&self.run))?,
            executors,
            memory: self.lookup(memory_id(&self.run))?,
        });
        Ok(())
    }

    /// The run's agents (there once `await_team` succeeded, which `drive` makes sure of first).
    fn agents(&self) -> Result<&RunAgents, End> {
        self.agents.as_ref().ok_or_else(|| {
            End(RunState::Failed {
                reason: FailReason::AgentError,
                detail: "the run's agents were never started".into(),
            })
        })
    }

    /// Agent `id` of this run, from the directory.
    fn lookup<A: impresario_runtime::Agent>(&self, id: AgentId) -> Result<AgentRef<A>, End> {
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
                        HaltScope::Run(self.run.clone()),
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
            tracing::warn!(run = %self.run, error = %e, "could not remember the run");
        }
    }

    /// Records the end: usage from the ledger, the subtree stopped, the account and token closed.
    async fn finish(self, state: RunState) -> RunResult {
        let inner = &self.orchestrator.inner;
        let account = AccountId::Run(self.run.clone());
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
            inner.halts.remove_run(&self.run);
        }
        inner.live.remove(&self.run);
        let outcome = match &state {
            RunState::Succeeded { .. } => TelemetryOutcome::Succeeded,
            RunState::Halted { .. } => TelemetryOutcome::Halted,
            RunState::CeilingReached { .. } => TelemetryOutcome::CeilingReached,
            _ => TelemetryOutcome::Failed,
        };
        inner
            .runtime
            .metrics()
            .run_finished(outcome, self.started.elapsed());
        // Published last: whoever sees the run's end sees it journaled, released and counted.
        self.set(state.clone());
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
pub(crate) fn team_tools(
    tools: &ToolRegistry,
    allowed: &[String],
) -> Vec<impresario_runtime::llm::ToolDef> {
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
