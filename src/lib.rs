//! # Impresario
//!
//! A runtime for LLM agents built as supervised actors. Agents are actix actors that exchange
//! typed messages; the runtime gives them handles that survive restarts, admission control,
//! panics turned into answers, and a directory by name. Supervisors restart what fails, halt what
//! is told to stop and stop what would spend past its ceiling.
//!
//! Start with [`prelude`] and `examples/research_team.rs`; the `impresario` binary (`serve`,
//! `run`) is built on [`setup`], [`tools`] and the stand-in [`offline`] model.

pub use impresario_agents as agents;
/// Tools from MCP servers (feature `mcp`, on by default through `cli`).
#[cfg(feature = "mcp")]
pub use impresario_mcp as mcp;
pub use impresario_runtime as runtime;
pub use impresario_supervisor as supervisor;

pub use impresario_runtime::agent;

pub mod offline;
pub mod setup;
pub mod tools;

/// Everything a typical program needs: the runtime, agent handles, actix's actor vocabulary.
pub mod prelude {
    pub use actix::prelude::{
        Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message,
        MessageResult, ResponseActFuture, ResponseFuture, Running, WrapFuture,
    };
    pub use impresario_runtime::{
        agent, Agent, AgentError, AgentId, AgentRef, Envelope, Exit, LifecycleEvent, Placement,
        RunId, Runtime, RuntimeHandle, ShutdownReport, SpawnOptions,
    };
}
