//! # impresario-supervisor
//!
//! Supervision for Impresario agents: restart policies (OTP strategies, intensity, backoff),
//! halts and cost ceilings. DESIGN.md contracts 1-3 are its specification.
//!
//! Not implemented yet: this crate only re-exports the lifecycle vocabulary it builds on.

pub use impresario_runtime::{Exit, LifecycleEvent};
