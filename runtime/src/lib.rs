//! # impresario-runtime
//!
//! The actor substrate of Impresario and the vocabulary every other crate shares.
//!
//! Agents are ordinary actix actors. The runtime adds what a supervisor needs and actix lacks:
//! handles that survive restarts ([`AgentRef`]), admission control, panics turned into answers
//! ([`AgentError::Panicked`]), lifecycle events, a directory of agents by name, and envelopes
//! that carry the run and the `tracing` span across actors.
//!
//! ```no_run
//! use actix::prelude::*;
//! use impresario_runtime::{agent, AgentId, Runtime};
//!
//! #[derive(Message)]
//! #[rtype(result = "u64")]
//! struct Add(u64);
//!
//! #[derive(Default)]
//! struct Counter(u64);
//! impl Actor for Counter {
//!     type Context = Context<Self>;
//! }
//! impl Handler<Add> for Counter {
//!     type Result = u64;
//!     fn handle(&mut self, msg: Add, _: &mut Context<Self>) -> u64 {
//!         self.0 += msg.0;
//!         self.0
//!     }
//! }
//! agent!(Counter);
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder().start()?;
//! let counter = runtime.spawn(AgentId::new("counter", "main"), Counter::default)?;
//! assert_eq!(counter.ask(Add(2)).await?, 2);
//! runtime.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

mod agent_id;
mod agent_ref;
mod directory;
mod envelope;
mod error;
mod events;
mod outcome;
mod panic_capture;
mod runtime;
mod slot;
pub mod supervision;

/// Exponential backoff and jitter, shared by restarts and retries.
pub mod backoff;
/// A write refused because this process no longer holds the run's lease.
pub mod fencing;
/// Halt tokens: immediate and graceful stops on a tree of cancellation tokens.
pub mod halt;
/// The seam to halts recorded outside this process: what a run checks before each step.
pub mod halt_store;
/// Liveness, readiness (named checks) and the semantic health check.
#[cfg(feature = "llm")]
pub mod health;
/// The run journal: events durable before they are acknowledged, in SQLite or in memory.
#[cfg(feature = "journal")]
pub mod journal;
/// Cost ledger: reserve, settle and cap spending on a tree of accounts.
pub mod ledger;
/// The seam to a durable ledger store shared by processes: holds with an expiry.
pub mod ledger_store;
/// The LLM layer: providers over reqwest, with cost reservation, retries, breaker, cache.
#[cfg(feature = "llm")]
pub mod llm;
/// One redaction layer for every credential the process holds: logs, journal, errors, responses.
pub mod redact;
pub mod telemetry;

pub use agent_id::AgentId;
pub use agent_ref::{AgentRef, Ask, Call, Reply};
pub use directory::Directory;
pub use envelope::{Envelope, RunId, TenantId};
pub use error::{AgentError, RuntimeError, SpawnError};
pub use events::{Exit, LifecycleEvent};
pub use outcome::RunOutcome;
pub use runtime::{
    Placement, Runtime, RuntimeBuilder, RuntimeHandle, ShutdownReport, SpawnOptions,
    DEFAULT_IN_FLIGHT_LIMIT,
};
pub use slot::fail;

use actix::{Actor, Context, Handler};

/// An actix actor the runtime can run: it uses `actix::Context` and handles [`Call`] (which
/// [`agent!`] implements in one line).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an Impresario agent",
    note = "add `impresario::agent!({Self});` next to its `impl Actor` (it needs `type Context = actix::Context<Self>`)"
)]
pub trait Agent: Actor<Context = Context<Self>> + Handler<Call<Self>> {}

impl<A> Agent for A where A: Actor<Context = Context<A>> + Handler<Call<A>> {}

/// Makes an actix actor an Impresario agent: `agent!(MyAgent);` after its `impl Actor`.
///
/// It writes the `Handler<Call<MyAgent>>` impl through which the runtime delivers every message
/// (your own `Handler<M>` impls stay as they are). For a generic actor, write that impl by hand:
/// `fn handle(&mut self, call: Call<Self>, ctx: &mut Context<Self>) { call.run(self, ctx) }`.
#[macro_export]
macro_rules! agent {
    ($agent:ty) => {
        impl $crate::__private::actix::Handler<$crate::Call<$agent>> for $agent {
            type Result = ();
            fn handle(
                &mut self,
                call: $crate::Call<$agent>,
                ctx: &mut $crate::__private::actix::Context<$agent>,
            ) {
                call.run(self, ctx)
            }
        }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use actix;
}
