//! What travels with every message besides its payload: the run it belongs to, the step, and
//! the `tracing` span of the sender, so a handler's span is a child of the caller's span even
//! across actors and threads.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Identifies one run (a goal submitted with a budget). Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(Arc<str>);

impl RunId {
    /// Wraps an existing id (for example one read back from a journal).
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        RunId(id.into())
    }

    /// A new id, unique within this process and ordered by creation time across processes
    /// (`run-<unix millis, hex>-<counter, hex>`).
    pub fn generate() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        RunId(format!("run-{millis:011x}-{n:04x}").into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for RunId {
    fn from(id: &str) -> Self {
        RunId::new(id)
    }
}

impl From<String> for RunId {
    fn from(id: String) -> Self {
        RunId::new(id)
    }
}

/// Identifies a tenant: a customer or team whose runs, budgets and halts are kept apart from
/// every other tenant's. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Wraps a tenant's name.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        TenantId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TenantId {
    fn from(id: &str) -> Self {
        TenantId::new(id)
    }
}

impl From<String> for TenantId {
    fn from(id: String) -> Self {
        TenantId::new(id)
    }
}

/// The context a message carries: run, step and the sender's span.
///
/// [`AgentRef::ask`](crate::AgentRef::ask) fills it from [`Envelope::current`] unless the caller
/// sets one; inside a handler, `Envelope::current()` returns the envelope of the message being
/// handled (with the handler's span), so a handler that asks another agent passes its run on
/// without doing anything. An async handler should capture `Envelope::current()` before its
/// `async` block: the block runs later, outside the handler.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The run this message belongs to, if any.
    pub run: Option<RunId>,
    /// The step of the run, if any.
    pub step: Option<u32>,
    /// The sender's span; the handler's span is created as its child.
    pub span: tracing::Span,
}

impl Default for Envelope {
    fn default() -> Self {
        Envelope {
            run: None,
            step: None,
            span: tracing::Span::none(),
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<(Option<RunId>, Option<u32>)>> = const { RefCell::new(None) };
}

impl Envelope {
    /// The envelope a message sent from here should carry: the run and step of the message being
    /// handled on this thread (if any) and the current span.
    pub fn current() -> Envelope {
        let (run, step) = CURRENT.with(|c| c.borrow().clone()).unwrap_or((None, None));
        Envelope {
            run,
            step,
            span: tracing::Span::current(),
        }
    }

    /// The same envelope, for another run.
    pub fn with_run(mut self, run: RunId) -> Self {
        self.run = Some(run);
        self
    }

    /// The same envelope, for another step.
    pub fn with_step(mut self, step: u32) -> Self {
        self.step = Some(step);
        self
    }

    /// Makes this envelope's run and step current on this thread until the guard drops.
    pub(crate) fn enter_scope(&self) -> ScopeGuard {
        let previous = CURRENT.with(|c| c.replace(Some((self.run.clone(), self.step))));
        ScopeGuard { previous }
    }
}

/// Restores the previous run/step scope when a handler returns.
pub(crate) struct ScopeGuard {
    previous: Option<(Option<RunId>, Option<u32>)>,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}
