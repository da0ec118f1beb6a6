//! # impresario-agents
//!
//! The built-in agents (planner, executor, memory) and run orchestration.
//!
//! Not implemented yet: this crate only re-exports the supervisor crate it builds on.

/// Working memory, long-term memory with retrieval, the context budget, and the memory agent.
pub mod memory;

pub use impresario_supervisor as supervisor;
