//! # impresario-agents
//!
//! Runs end to end: submit a goal with a budget, and a supervised team (planner, executors,
//! your own agents) plans, acts and answers, under halts, approvals and cost ceilings.
//!
//! - [`Orchestrator`] submits runs and returns a [`RunHandle`] (status, events, halt,
//!   approve/reject, wait).
//! - The [`planner`] turns goal and history into a [`Plan`] of typed steps validated against a
//!   JSON schema derived from [`Step`]; the [`executor`] runs tool and model calls.
//! - [`Tool`]s declare their argument type (the schema), impact, timeout and idempotency.
//! - [`Team`] adds custom agents, such as a reviewer (critic) that sees every plan first.

mod config;
mod driver;
mod driver_agent;
mod ending;
pub mod executor;
mod fault;
mod journaling;
mod models;
mod orchestrator;
pub mod plan;
pub mod planner;
mod run;
mod run_setup;
mod services;
mod team;
mod tool;
mod updates;

/// Working memory, long-term memory with retrieval, the context budget, and the memory agent.
pub mod memory;

pub use config::OrchestratorConfig;
#[doc(hidden)]
pub use fault::{DriverPhase, PanicInjection};
pub use impresario_supervisor as supervisor;
pub use journaling::{first_difference, Divergence, ModelGateway};
pub use models::{ModelChoice, ModelMap, Role, RoleTiers};
pub use orchestrator::{Orchestrator, ReplayReport, ResumeError, SubmitError};
pub use plan::{LoopDetector, LoopKind, Plan, PlanError, Step};
pub use run::{
    Autonomy, Budget, FailReason, RunHandle, RunRequest, RunResult, RunState, RunUpdate, RunUsage,
    StepFailure, StepRecord,
};
pub use team::{ReviewPlan, Team, Verdict};
pub use tool::{
    ErasedCall, Impact, RegisteredTool, RegistryError, Tool, ToolContext, ToolError, ToolProvider,
    ToolRegistry, ToolSpec, BUILTIN,
};
pub use updates::RUN_UPDATE_CAPACITY;
