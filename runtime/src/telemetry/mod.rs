//! Telemetry: metrics (the `metrics` facade, exported for Prometheus) and `tracing` spans, with
//! OpenTelemetry GenAI names where the conventions have them.
//!
//! This module imports nothing else from the crate: it records plain values (labels as
//! [`LabelValue`]s or `&str`, numbers) and small types of its own, and the modules that own
//! what is measured (runs, halts, the ledger, the LLM layer) convert.
//!
//! - [`names`]: the catalog of every metric (name, kind, unit, help, labels, buckets).
//! - [`Metrics`]: where metrics go, and the recording functions for what happens outside the
//!   runtime's own hot paths (runs, approvals, halts, ceilings, restarts).
//! - [`Prometheus`]: the exporter; one call installs it and returns a [`MetricsHandle`].
//! - the span constructors of a run: [`invoke_workflow`], [`invoke_agent`], [`execute_tool`]
//!   (the LLM client makes the `chat` spans).
//!
//! ```no_run
//! use impresario_runtime::telemetry::Prometheus;
//! use impresario_runtime::Runtime;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = Prometheus::new().install()?; // before the runtime: handles resolve at spawn
//! let runtime = Runtime::builder().start()?;
//! // serve `metrics.render()` on GET /metrics
//! # Ok(()) }
//! ```

mod metrics;
pub mod names;
mod prometheus;
mod spans;

pub(crate) use self::metrics::AgentMetrics;
#[cfg(feature = "llm")]
pub(crate) use self::metrics::ModelMetrics;
pub use self::metrics::{LabelValue, Metrics, RestartReason};
pub use prometheus::{ExporterError, MetricsHandle, Prometheus, CONTENT_TYPE};
#[cfg(feature = "llm")]
pub(crate) use spans::{
    chat as chat_span, record_chat, record_messages, ChatEnd, ChatStart, Messages,
};
pub use spans::{execute_tool, invoke_agent, invoke_workflow, record_error_type};
