//! # impresario-supervisor
//!
//! Supervision for Impresario agents, with OTP's semantics: strategies (`OneForOne`,
//! `OneForAll`, `RestForOne`), restart types (`Permanent`, `Transient`, `Temporary`), an
//! intensity past which a supervisor stops its children and escalates to its parent, shutdown
//! `Brutal | Timeout(d)` newest first, and Akka's backoff between restarts. Every restart builds
//! a fresh actor from the child's factory, and `AgentRef`s stay valid across it; a call that
//! arrives while a child is restarting gets `AgentError::Restarting` at once (retry it).
//!
//! ```no_run
//! use impresario_runtime::{AgentId, Runtime};
//! use impresario_supervisor::{ChildSpec, Strategy, Supervisor, SupervisorSpec};
//! # #[derive(Default)] struct Worker;
//! # impl actix::Actor for Worker { type Context = actix::Context<Self>; }
//! # impresario_runtime::agent!(Worker);
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder().start()?;
//! let spec = SupervisorSpec::new(Strategy::OneForOne)
//!     .child(ChildSpec::agent(AgentId::new("worker", "1"), Worker::default));
//! let root = Supervisor::start_root(&runtime, AgentId::new("supervisor", "root"), spec)?;
//! # Ok(()) }
//! ```

mod ceiling;
mod events;
mod policy;
mod spec;
mod supervisor;

pub use ceiling::OnCeiling;
pub use events::SupervisorEvent;
pub use impresario_runtime::supervision::Shutdown;
pub use impresario_runtime::{Exit, LifecycleEvent};
pub use policy::{Backoff, Intensity, RestartType, Strategy};
pub use spec::{ChildSpec, SupervisorSpec};
pub use supervisor::{
    ChildInfo, StartChild, StopChild, Supervisor, SupervisorError, SupervisorRef, WhichChildren,
};
