//! # impresario-agents
//!
//! The built-in agents (planner, executor, memory) and run orchestration.
//!
//! Not implemented yet: this crate only re-exports the supervisor crate it builds on.

pub use impresario_supervisor as supervisor;
