//! A run as its submitter sees it: the request, the states it goes through, its events, and the
//! handle to watch, approve, halt and await it.

use std::sync::Arc;
use std::time::Duration;

use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope, Halts};
use impresario_runtime::ledger::{CeilingReached, Charge};
use impresario_runtime::RunId;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};

use crate::models::ModelMap;
use crate::plan::{Plan, Step};
use crate::tool::ToolError;
use crate::updates::RunUpdates;

/// How much a run may do without a person approving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Autonomy {
    /// Every tool call that changes something (side effect or high impact) waits for approval.
    Manual,
    /// Only high-impact tool calls wait for approval.
    #[default]
    Conditional,
    /// Nothing waits.
    Full,
}

impl Autonomy {
    /// Whether a call of this impact waits for approval.
    pub fn needs_approval(self, impact: crate::tool::Impact) -> bool {
        use crate::tool::Impact;
        match self {
            Autonomy::Manual => impact != Impact::ReadOnly,
            Autonomy::Conditional => impact == Impact::HighImpact,
            Autonomy::Full => false,
        }
    }
}

/// What a run may spend. `None` is no limit (the tenant's and global limits still apply).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Money, in micro-USD.
    pub micro_usd: Option<u64>,
    /// Tokens, input and output together.
    pub tokens: Option<u64>,
    /// Model calls.
    pub model_calls: Option<u64>,
    /// Wall-clock time from submission.
    pub deadline: Option<Duration>,
}

impl Budget {
    /// A budget of `usd` US dollars (converted to micro-USD, rounded down).
    pub fn usd(usd: f64) -> Self {
        Budget {
            micro_usd: Some((usd.max(0.0) * 1e6) as u64),
            ..Budget::default()
        }
    }
}

/// A goal to pursue, under a budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// What to achieve.
    pub goal: String,
    /// Whose run it is (its spend counts against the tenant's account).
    pub tenant: String,
    /// What it may spend.
    pub budget: Budget,
    /// What it may do without approval.
    pub autonomy: Autonomy,
    /// Which models it uses: the model (and fallbacks) of each tier, and each role's tier.
    #[serde(deserialize_with = "crate::models::read_journaled")]
    pub models: ModelMap,
    /// The tools it may use (least privilege): names from the orchestrator's registry.
    pub tools: Vec<String>,
    /// The most steps it may execute.
    pub max_steps: u32,
    /// How often the planner may be asked to repair invalid output, per plan.
    pub max_repairs: u32,
    /// The most bytes of one tool output that enter the model's context (the rest is cut, with
    /// a marker).
    pub output_limit: usize,
    /// The most tokens the run's context may take before its oldest steps are summarized by
    /// the summarizer model (a budgeted call); `None`: never summarize.
    pub context_budget: Option<usize>,
    /// Whether its model calls stream: their text reaches [`RunHandle::events`] as
    /// [`RunUpdate::Delta`]s while it arrives (the journal keeps only whole answers).
    #[serde(default)]
    pub stream: bool,
}

impl RunRequest {
    /// A request with the defaults: tenant `default`, no budget limits, conditional autonomy,
    /// no tools, 20 steps, 2 repairs, 4 KiB of tool output.
    pub fn new(goal: impl Into<String>, models: ModelMap) -> Self {
        RunRequest {
            goal: goal.into(),
            tenant: "default".into(),
            budget: Budget::default(),
            autonomy: Autonomy::default(),
            models,
            tools: Vec::new(),
            max_steps: 20,
            max_repairs: 2,
            output_limit: 4096,
            context_budget: None,
            stream: false,
        }
    }

    /// For this tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// With this budget.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// With this autonomy.
    pub fn autonomy(mut self, autonomy: Autonomy) -> Self {
        self.autonomy = autonomy;
        self
    }

    /// Allowed to use these tools.
    pub fn tools<S: Into<String>>(mut self, tools: impl IntoIterator<Item = S>) -> Self {
        self.tools = tools.into_iter().map(Into::into).collect();
        self
    }

    /// At most this many steps.
    pub fn max_steps(mut self, max_steps: u32) -> Self {
        self.max_steps = max_steps;
        self
    }

    /// Summarize the oldest steps when the context would exceed `tokens`.
    pub fn context_budget(mut self, tokens: usize) -> Self {
        self.context_budget = Some(tokens);
        self
    }

    /// Streams its model calls' text as [`RunUpdate::Delta`]s (`true`) or not (the default).
    pub fn stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }
}

/// Why a run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// It repeated a step, or alternated between two, without progress.
    LoopDetected,
    /// It used all its steps without an answer.
    MaxSteps,
    /// The planner's output stayed invalid after every allowed repair.
    InvalidPlan,
    /// A model call failed in a way no retry or fallback could fix.
    ModelError,
    /// One of its agents kept failing (panics past what retries allow).
    AgentError,
    /// Resumed or replayed, it did not do what its journal recorded (the detail says where).
    Diverged,
    /// Its journal could not be written: it stopped rather than go on unrecorded.
    JournalError,
    /// Its driver crashed (panicked) more often than its restart policy allows; the detail
    /// has the last panic's message. Everything the run held was released.
    Internal,
}

impl std::fmt::Display for FailReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&name)
    }
}

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    /// Submitted, not started.
    Queued,
    /// The planner is working on the next plan.
    Planning,
    /// Executing a step.
    Running {
        /// The step (1-based).
        step: u32,
    },
    /// A step waits for an operator's approval.
    AwaitingApproval {
        /// The step.
        step: u32,
        /// The tool it would call.
        tool: String,
    },
    /// Finished with an answer.
    Succeeded {
        /// The answer.
        answer: String,
    },
    /// Finished without an answer.
    Failed {
        /// Why.
        reason: FailReason,
        /// Details for a person.
        detail: String,
    },
    /// Stopped by a halt.
    Halted {
        /// The halt's reason.
        reason: HaltReason,
        /// Its detail, if any.
        detail: Option<String>,
    },
    /// Stopped because its next paid call did not fit a ceiling (nothing was sent).
    CeilingReached {
        /// The ceiling.
        ceiling: CeilingReached,
    },
}

impl RunState {
    /// Whether the run is over.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RunState::Succeeded { .. }
                | RunState::Failed { .. }
                | RunState::Halted { .. }
                | RunState::CeilingReached { .. }
        )
    }
}

/// Why a step did not produce output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepFailure {
    /// The tool call failed or was refused.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The model call failed.
    #[error("the model call failed: {message}")]
    Model {
        /// The model's error.
        message: String,
    },
    /// The executor agent failed (it is restarted by its supervisor).
    #[error("the executor failed: {message}")]
    Agent {
        /// What happened.
        message: String,
    },
}

/// One executed step and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Its number (1-based).
    pub number: u32,
    /// What it was.
    pub step: Step,
    /// Its output as it entered the model's context, or why it failed.
    pub outcome: Result<String, StepFailure>,
}

/// Something that happened in a run, as its live stream tells its watchers
/// ([`RunHandle::events`]); what the journal keeps is `impresario_runtime::journal::RunEvent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunUpdate {
    /// The state changed.
    State(RunState),
    /// A plan was made (revision counts from 1).
    Planned {
        /// Which plan.
        revision: u32,
        /// The plan.
        plan: Plan,
    },
    /// A reviewer asked for another plan.
    Revised {
        /// The plan it rejected.
        revision: u32,
        /// Its feedback.
        feedback: String,
    },
    /// A step finished.
    StepFinished(StepRecord),
    /// Memories of earlier runs were put into the context.
    Recalled {
        /// How many.
        memories: usize,
    },
    /// The oldest steps were summarized to keep the context within its budget.
    Compacted(crate::memory::Compaction),
    /// A piece of a model's answer as it arrived (a streaming run only). Deltas of one call
    /// come in order; a receiver that falls behind may miss some, never the journal.
    Delta {
        /// The step the call belongs to (the planner's calls: the steps done so far).
        step: u32,
        /// The text.
        text: String,
    },
}

/// What a run spent, read from its ledger account when it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunUsage {
    /// Micro-USD.
    pub micro_usd: u64,
    /// Tokens.
    pub tokens: u64,
    /// Model calls.
    pub model_calls: u64,
}

impl From<Charge> for RunUsage {
    fn from(spent: Charge) -> Self {
        RunUsage {
            micro_usd: spent.micro_usd,
            tokens: spent.tokens,
            model_calls: spent.model_calls,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The run.
    pub run: RunId,
    /// Its final state.
    pub state: RunState,
    /// Every executed step.
    pub steps: Vec<StepRecord>,
    /// What it spent.
    pub usage: RunUsage,
}

/// An operator's decision about a step waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Approve { step: u32 },
    Reject { step: u32, reason: String },
}

/// A submitted run: watch it, approve or reject its steps, halt it, await its result.
#[derive(Clone)]
pub struct RunHandle {
    pub(crate) id: RunId,
    pub(crate) state: watch::Receiver<RunState>,
    /// Held for the first `events()` call until it comes: it gets every update.
    pub(crate) events: RunUpdates<RunUpdate>,
    pub(crate) decisions: mpsc::UnboundedSender<Decision>,
    pub(crate) result: watch::Receiver<Option<Arc<RunResult>>>,
    pub(crate) halts: Halts,
}

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> &RunId {
        &self.id
    }

    /// Its state now.
    pub fn status(&self) -> RunState {
        self.state.borrow().clone()
    }

    /// Its updates. The first call (on any clone of this handle) gets every update since the
    /// run was submitted; later calls get updates from then on. A receiver more than
    /// [`RUN_UPDATE_CAPACITY`](crate::RUN_UPDATE_CAPACITY) updates behind loses the oldest.
    pub fn events(&self) -> broadcast::Receiver<RunUpdate> {
        self.events.subscribe()
    }

    /// Halts it (reason `operator`): `Immediate` aborts its in-flight model and tool calls;
    /// `Graceful` lets the current step finish and starts no other. False if it already ended.
    pub fn halt(&self, mode: HaltMode) -> bool {
        self.halt_with(Halt::new(
            HaltScope::Run(self.id.clone()),
            mode,
            HaltReason::Operator,
        ))
    }

    /// Halts it with a halt of your own (reason, detail).
    pub fn halt_with(&self, halt: Halt) -> bool {
        self.halts.halt_with(halt)
    }

    /// Approves the step waiting for approval.
    pub fn approve(&self, step: u32) {
        let _ = self.decisions.send(Decision::Approve { step });
    }

    /// Rejects the step waiting for approval; the planner is told why and replans.
    pub fn reject(&self, step: u32, reason: impl Into<String>) {
        let _ = self.decisions.send(Decision::Reject {
            step,
            reason: reason.into(),
        });
    }

    /// Waits until it ends.
    pub async fn wait(&self) -> Arc<RunResult> {
        let mut result = self.result.clone();
        loop {
            if let Some(done) = result.borrow_and_update().clone() {
                return done;
            }
            if result.changed().await.is_err() {
                // The driver is gone without a result: the runtime shut down under it.
                return Arc::new(RunResult {
                    run: self.id.clone(),
                    state: RunState::Halted {
                        reason: HaltReason::Shutdown,
                        detail: Some("the runtime stopped before the run ended".into()),
                    },
                    steps: Vec::new(),
                    usage: RunUsage::default(),
                });
            }
        }
    }
}
