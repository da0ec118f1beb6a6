//! Halts: stopping work on a tree of cancellation tokens (global > tenant > run > call).
//!
//! A [`HaltToken`] is observed by the code doing the work: every LLM call, tool call and wait
//! selects on it (see [`HaltToken::run`]). Halts never travel through an actor's mailbox, so a
//! busy actor is stopped as fast as an idle one. Halting a token halts its descendants, never
//! its ancestors.
//!
//! Two strengths:
//! - *Immediate*: in-flight work is dropped at once ([`HaltToken::is_halted`]). Each node owns
//!   a [`CancellationToken`] that is a child of its parent's, so tokio-util propagates it.
//! - *Graceful*: the current step finishes, nothing new starts ([`HaltToken::stop_requested`]);
//!   when its deadline passes it escalates to immediate. It is recorded on the node alone;
//!   readers look at the node and its ancestors (a tree is 3 or 4 deep). That keeps a single
//!   tree of linked tokens, so the many short-lived call tokens stay cheap to create, drop
//!   and halt.
//!
//! [`Halts`] is the registry that finds a token by scope, and gives a halted run a fresh token
//! when it is resumed from its journal.

use std::fmt;
use std::future::IntoFuture;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::envelope::{RunId, TenantId};
use crate::telemetry::{LabelValue, Metrics};

/// Why work was halted; the run reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltReason {
    /// A person asked for it.
    Operator,
    /// A cost ceiling was reached.
    CostCeiling,
    /// A model call cost more than its reservation (the provider reported more usage than
    /// the reservation's upper bound allowed): the budget's guarantee no longer holds.
    Overshoot,
    /// A deadline passed.
    Deadline,
    /// Too many errors.
    ErrorBudget,
    /// The process is shutting down.
    Shutdown,
}

impl fmt::Display for HaltReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label_value())
    }
}

/// Its snake_case name, as shown and as the `reason` label.
impl LabelValue for HaltReason {
    fn label_value(&self) -> &'static str {
        match self {
            HaltReason::Operator => "operator",
            HaltReason::CostCeiling => "cost_ceiling",
            HaltReason::Overshoot => "overshoot",
            HaltReason::Deadline => "deadline",
            HaltReason::ErrorBudget => "error_budget",
            HaltReason::Shutdown => "shutdown",
        }
    }
}

/// How hard to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltMode {
    /// Abort in-flight calls now.
    Immediate,
    /// Finish the current step, start nothing new; become immediate after `deadline`.
    Graceful {
        /// How long the current step may take before it is aborted.
        deadline: Duration,
    },
}

/// What a halt applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltScope {
    /// Everything in the process.
    All,
    /// Every run of a tenant.
    Tenant(TenantId),
    /// One run (run ids are unique across tenants).
    Run(RunId),
    /// One agent (agent ids are unique across runs).
    Agent(String),
}

/// The scope's kind as the `scope` label: `all`, `tenant`, `run` or `agent`, never its id.
impl LabelValue for HaltScope {
    fn label_value(&self) -> &'static str {
        match self {
            HaltScope::All => "all",
            HaltScope::Tenant(_) => "tenant",
            HaltScope::Run(_) => "run",
            HaltScope::Agent(_) => "agent",
        }
    }
}

impl fmt::Display for HaltScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaltScope::All => f.write_str("all"),
            HaltScope::Tenant(id) => write!(f, "tenant {id}"),
            HaltScope::Run(id) => write!(f, "run {id}"),
            HaltScope::Agent(id) => write!(f, "agent {id}"),
        }
    }
}

/// A request to stop, as recorded and reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    /// What it applies to.
    pub scope: HaltScope,
    /// How hard.
    pub mode: HaltMode,
    /// Why.
    pub reason: HaltReason,
    /// Free text for people (not for metrics labels).
    pub detail: Option<String>,
    /// When it was requested.
    pub at: SystemTime,
}

impl Halt {
    /// A halt requested now, without detail.
    pub fn new(scope: HaltScope, mode: HaltMode, reason: HaltReason) -> Self {
        Halt {
            scope,
            mode,
            reason,
            detail: None,
            at: SystemTime::now(),
        }
    }

    /// The same halt with a human-readable detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    fn is_immediate(&self) -> bool {
        self.mode == HaltMode::Immediate
    }
}

/// Work stopped because it was halted (on purpose: retrying it would defeat the halt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "halted ({reason}, scope {scope}{detail}); this is deliberate, do not retry: \
     resume the run once the cause is dealt with",
    reason = .halt.reason,
    scope = .halt.scope,
    detail = .halt.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
)]
pub struct Halted {
    /// The halt that stopped the work.
    pub halt: Halt,
}

struct Node {
    /// Cancelled by an immediate halt (or an escalated graceful one): drop what is in flight.
    abort: CancellationToken,
    /// The first graceful and the first immediate halt requested on this node itself. Set
    /// once, then read lock-free by every task that observes the halt. Boxed because a small
    /// node is cheaper to allocate and free, which happens for every call.
    graceful: OnceLock<Box<Halt>>,
    immediate: OnceLock<Box<Halt>>,
    /// Wakes `until_stop_requested` waiters when `graceful` is set.
    graceful_set: Notify,
    parent: Option<HaltToken>,
}

/// A node of the halt tree. Cheap to clone; clones are the same node. `Send + Sync`.
#[derive(Clone)]
pub struct HaltToken {
    node: Arc<Node>,
}

impl Default for HaltToken {
    fn default() -> Self {
        HaltToken::new()
    }
}

impl fmt::Debug for HaltToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaltToken")
            .field("stop_requested", &self.stop_requested())
            .field("halted", &self.is_halted())
            .finish()
    }
}

impl HaltToken {
    /// A root token (the global one; [`Halts`] owns one).
    pub fn new() -> Self {
        HaltToken::with(CancellationToken::new(), None)
    }

    /// A token halted whenever this one is (already halted if this one is).
    pub fn child(&self) -> HaltToken {
        HaltToken::with(self.node.abort.child_token(), Some(self.clone()))
    }

    fn with(abort: CancellationToken, parent: Option<HaltToken>) -> Self {
        let node = Node {
            abort,
            graceful: OnceLock::new(),
            immediate: OnceLock::new(),
            graceful_set: Notify::new(),
            parent,
        };
        HaltToken {
            node: Arc::new(node),
        }
    }

    /// Halts this token and its descendants.
    ///
    /// A node reports its first immediate halt if it had one, else its first graceful one.
    /// A graceful halt escalates to immediate after its deadline: on a tokio timer when called
    /// inside a tokio runtime (which must have its time driver enabled and stay alive that
    /// long), else on a short-lived std thread that sleeps until the deadline.
    ///
    /// Returns true when this is the node's first halt of its strength (immediate or
    /// graceful), false when one was already recorded: the halt still cancels, but it reports
    /// nothing new.
    pub fn halt(&self, halt: Halt) -> bool {
        let node = &self.node;
        let mode = halt.mode;
        let record = if halt.is_immediate() {
            &node.immediate
        } else {
            &node.graceful
        };
        // Recorded before cancelling, so whoever wakes up finds the reason. A later halt of
        // the same strength still cancels, but the first one stays the reported reason.
        let first = record.set(Box::new(halt)).is_ok();
        match mode {
            HaltMode::Immediate => node.abort.cancel(),
            HaltMode::Graceful { deadline } => {
                node.graceful_set.notify_waiters();
                if !node.abort.is_cancelled() {
                    escalate_after(node.abort.clone(), deadline);
                }
            }
        }
        first
    }

    /// True once an immediate halt (or an escalated graceful one) reached this token.
    pub fn is_halted(&self) -> bool {
        self.node.abort.is_cancelled()
    }

    /// A token cancelled when this one is halted immediately (or a graceful halt escalates), for
    /// code that selects on a plain `CancellationToken`, such as
    /// [`llm::CallOptions`](crate::llm::CallOptions). Cancelling it directly halts nothing: halts
    /// go through [`halt`](Self::halt), which records why.
    pub fn cancellation(&self) -> tokio_util::sync::CancellationToken {
        self.node.abort.child_token()
    }

    /// True once any halt reached this token: finish the current step, start nothing new.
    pub fn stop_requested(&self) -> bool {
        self.is_halted() || self.lineage().any(|t| t.node.graceful.get().is_some())
    }

    /// The halt this token reports, its own or inherited from a halted ancestor: an immediate
    /// halt wins over a graceful one, then the earliest. `None` if nothing halted it.
    pub fn halt_info(&self) -> Option<Halt> {
        let mut best: Option<Halt> = None;
        for token in self.lineage() {
            let node = &token.node;
            if let Some(h) = node.immediate.get().or(node.graceful.get()) {
                let wins = best.as_ref().is_none_or(|b| {
                    (h.is_immediate(), std::cmp::Reverse(h.at))
                        > (b.is_immediate(), std::cmp::Reverse(b.at))
                });
                if wins {
                    best = Some(Halt::clone(h));
                }
            }
        }
        best
    }

    /// The halt requested on this token itself (not inherited): its immediate one if any, else
    /// its graceful one.
    pub fn own_halt(&self) -> Option<Halt> {
        let node = &self.node;
        node.immediate
            .get()
            .or(node.graceful.get())
            .map(|h| Halt::clone(h))
    }

    /// Resolves when this token is halted immediately.
    pub async fn halted(&self) {
        self.node.abort.cancelled().await;
    }

    /// Resolves when any halt (graceful or immediate) reaches this token.
    pub async fn until_stop_requested(&self) {
        let graceful: Vec<_> = self
            .lineage()
            // A `Notified` sees every `notify_waiters` after its creation, so creating them
            // before the check below means a halt in between still wakes us.
            .map(|t| Box::pin(t.node.graceful_set.notified()))
            .collect();
        if self.stop_requested() {
            return;
        }
        tokio::select! {
            _ = futures_util::future::select_all(graceful) => {}
            () = self.halted() => {}
        }
    }

    /// Runs `fut` unless an immediate halt arrives first, in which case `fut` is dropped on the
    /// spot (for an HTTP call, that closes its connection) and the halt is returned.
    pub async fn run<F: IntoFuture>(&self, fut: F) -> Result<F::Output, Halted> {
        let fut = fut.into_future();
        tokio::select! {
            // A halt that already happened wins over a future that happens to be ready.
            biased;
            () = self.node.abort.cancelled() => Err(self.halted_error()),
            out = fut => Ok(out),
        }
    }

    /// This token and its ancestors, nearest first.
    fn lineage(&self) -> impl Iterator<Item = &HaltToken> {
        std::iter::successors(Some(self), |t| t.node.parent.as_ref())
    }

    fn halted_error(&self) -> Halted {
        // Every cancellation goes through `halt`, which records the halt first.
        let halt = self
            .halt_info()
            .expect("a halted token always has a recorded halt");
        Halted { halt }
    }
}

fn escalate_after(abort: CancellationToken, deadline: Duration) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(deadline) => abort.cancel(),
                    () = abort.cancelled() => {}
                }
            });
        }
        Err(_) => {
            let spawned = std::thread::Builder::new()
                .name("halt-escalation".into())
                .spawn({
                    let abort = abort.clone();
                    move || {
                        std::thread::sleep(deadline);
                        abort.cancel();
                    }
                });
            // Without a thread there is no timer: stopping early beats never stopping.
            if spawned.is_err() {
                abort.cancel();
            }
        }
    }
}

/// A run cannot be resumed while its tenant (or everything) is halted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{scope} is still halted ({reason}); lift that halt first, then try again",
    scope = .halt.scope,
    reason = .halt.reason
)]
pub struct AncestorHalted {
    /// The halt still in force on an ancestor.
    pub halt: Halt,
}

/// A standing halt could not be lifted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiftError {
    /// Only a tenant's or everyone's halt stands; a run's halt ends with the run (resume it).
    #[error(
        "only a tenant's or everyone's halt can be lifted, not {0}'s; resume a halted run instead"
    )]
    NotStanding(HaltScope),
    /// Nothing halted that scope.
    #[error("{0} is not halted; there is nothing to lift")]
    NotHalted(HaltScope),
    /// A tenant cannot be lifted while everything is halted.
    #[error(transparent)]
    AncestorHalted(#[from] AncestorHalted),
}

/// The halt tokens of one process, by scope. Cheap to clone; clones share the tokens.
#[derive(Clone, Default)]
pub struct Halts {
    inner: Arc<Registry>,
}

#[derive(Default)]
struct Registry {
    /// Replaced when the global halt is lifted; tenants are created under a read lock of it.
    global: RwLock<HaltToken>,
    tenants: DashMap<TenantId, HaltToken>,
    runs: DashMap<RunId, HaltToken>,
    metrics: Metrics,
}

impl Halts {
    /// An empty registry with an un-halted global token.
    pub fn new() -> Self {
        Halts::default()
    }

    /// An empty registry that counts the halts it applies in `metrics` (the default counts
    /// them in [`Metrics::global`]).
    pub fn with_metrics(metrics: Metrics) -> Self {
        Halts {
            inner: Arc::new(Registry {
                metrics,
                ..Registry::default()
            }),
        }
    }

    /// The root token: halting it halts everything.
    pub fn global(&self) -> HaltToken {
        self.root().clone()
    }

    fn root(&self) -> RwLockReadGuard<'_, HaltToken> {
        self.inner.global.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The tenant's token, created under the global one if needed.
    pub fn tenant(&self, tenant: &TenantId) -> HaltToken {
        if let Some(t) = self.inner.tenants.get(tenant) {
            return t.clone();
        }
        let global = self.root();
        self.inner
            .tenants
            .entry(tenant.clone())
            .or_insert_with(|| global.child())
            .clone()
    }

    /// The run's token, created under its tenant's if needed.
    pub fn run(&self, tenant: &TenantId, run_id: &RunId) -> HaltToken {
        if let Some(t) = self.inner.runs.get(run_id) {
            return t.clone();
        }
        let parent = self.tenant(tenant);
        self.inner
            .runs
            .entry(run_id.clone())
            .or_insert_with(|| parent.child())
            .clone()
    }

    /// Halts `scope` now. See [`Halts::halt_with`].
    pub fn halt(&self, scope: HaltScope, mode: HaltMode, reason: HaltReason) -> bool {
        self.halt_with(Halt::new(scope, mode, reason))
    }

    /// Halts the token of `halt.scope`. Returns false when the scope names a run or agent
    /// that has no token (nothing of it is running). A tenant's token is created if needed,
    /// so the tenant's future runs start halted until [`Halts::resume_tenant`].
    pub fn halt_with(&self, halt: Halt) -> bool {
        let token = match &halt.scope {
            HaltScope::All => Some(self.global()),
            HaltScope::Tenant(id) => Some(self.tenant(id)),
            HaltScope::Run(id) => self.inner.runs.get(id).map(|t| t.clone()),
            // Agents are halted through their supervisor (`SupervisorRef::halt`): no token.
            HaltScope::Agent(_) => None,
        };
        // The map guards are dropped above: cancelling wakes tasks that may look up tokens.
        match token {
            Some(token) => {
                let (scope, reason) = (halt.scope.clone(), halt.reason);
                // Counted once per halt that reached the token: the same halt applied again
                // (a process's own halt coming back from PostgreSQL's NOTIFY) is not a new one.
                if token.halt(halt) {
                    self.inner.metrics.halt(&scope, reason);
                }
                self.count_standing(&scope);
                true
            }
            None => false,
        }
    }

    /// A token for resuming a run: its current token if no halt reached it, else a fresh
    /// un-halted child of its tenant's token that replaces it. Anyone still holding the old token
    /// keeps seeing it halted: that attempt is over, the resumed one continues from the
    /// journal. Fails while the tenant or the global token is halted.
    pub fn resume_run(
        &self,
        tenant: &TenantId,
        run_id: &RunId,
    ) -> Result<HaltToken, AncestorHalted> {
        let parent = self.tenant(tenant);
        if let Some(halt) = parent.halt_info() {
            return Err(AncestorHalted { halt });
        }
        if let Some(t) = self.inner.runs.get(run_id) {
            if !t.stop_requested() {
                return Ok(t.clone());
            }
        }
        let fresh = parent.child();
        self.inner.runs.insert(run_id.clone(), fresh.clone());
        Ok(fresh)
    }

    /// Lifts a tenant halt: the tenant gets a fresh token, so its new runs start un-halted.
    /// Its halted runs stay halted until each is resumed with [`Halts::resume_run`].
    /// Fails while the global token is halted.
    pub fn resume_tenant(&self, tenant: &TenantId) -> Result<HaltToken, AncestorHalted> {
        let global = self.root();
        if let Some(halt) = global.halt_info() {
            return Err(AncestorHalted { halt });
        }
        let fresh = global.child();
        self.inner.tenants.insert(tenant.clone(), fresh.clone());
        drop(global);
        self.count_standing(&HaltScope::Tenant(tenant.clone()));
        Ok(fresh)
    }

    /// Lifts the standing halt of `scope` (a tenant, or everything): new runs of the scope start
    /// un-halted again; runs it halted stay halted until each is resumed. Lifting everything
    /// keeps the tenants' own halts. Returns the halt that was lifted, counted in
    /// `impresario_halts_lifted_total`.
    pub fn lift(&self, scope: &HaltScope) -> Result<Halt, LiftError> {
        let lifted = match scope {
            HaltScope::All => self.lift_all()?,
            HaltScope::Tenant(tenant) => {
                let halt = self
                    .inner
                    .tenants
                    .get(tenant)
                    .and_then(|t| t.own_halt())
                    .ok_or_else(|| LiftError::NotHalted(scope.clone()))?;
                self.resume_tenant(tenant)?;
                halt
            }
            HaltScope::Run(_) | HaltScope::Agent(_) => {
                return Err(LiftError::NotStanding(scope.clone()))
            }
        };
        self.inner.metrics.halt_lifted(scope);
        self.count_standing(scope);
        Ok(lifted)
    }

    /// A fresh global token; every tenant gets a fresh child of it that keeps its own halt.
    fn lift_all(&self) -> Result<Halt, LiftError> {
        let mut global = self.inner.global.write().unwrap_or_else(|p| p.into_inner());
        let halt = global
            .own_halt()
            .ok_or(LiftError::NotHalted(HaltScope::All))?;
        *global = HaltToken::new();
        for mut tenant in self.inner.tenants.iter_mut() {
            let fresh = global.child();
            if let Some(own) = tenant.own_halt() {
                fresh.halt(own);
            }
            *tenant = fresh;
        }
        Ok(halt)
    }

    /// The standing halts in force: everyone's, then each tenant's (not inherited ones).
    pub fn standing(&self) -> Vec<Halt> {
        let mut halts: Vec<Halt> = self.root().own_halt().into_iter().collect();
        halts.extend(self.inner.tenants.iter().filter_map(|t| t.own_halt()));
        halts
    }

    /// Sets `impresario_halts_in_force` for the kind of `scope`, if it is a standing one.
    fn count_standing(&self, scope: &HaltScope) {
        let count = match scope {
            HaltScope::All => usize::from(self.root().own_halt().is_some()),
            HaltScope::Tenant(_) => self
                .inner
                .tenants
                .iter()
                .filter(|t| t.own_halt().is_some())
                .count(),
            HaltScope::Run(_) | HaltScope::Agent(_) => return,
        };
        self.inner.metrics.halts_in_force(scope, count);
    }

    /// Forgets a finished run's token.
    pub fn remove_run(&self, run_id: &RunId) {
        self.inner.runs.remove(run_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn immediate(reason: HaltReason) -> Halt {
        Halt::new(HaltScope::All, HaltMode::Immediate, reason)
    }

    #[test]
    fn cancellation_follows_immediate_halts_of_the_token_or_its_ancestors_only() {
        let run = HaltToken::new();
        let call = run.cancellation();
        run.halt(Halt::new(
            HaltScope::Run("r".into()),
            HaltMode::Graceful {
                deadline: Duration::from_secs(3600),
            },
            HaltReason::Operator,
        ));
        assert!(
            !call.is_cancelled(),
            "a graceful halt lets the call in flight finish"
        );
        let parent = HaltToken::new();
        let child = parent.child();
        let call = child.cancellation();
        call.cancel();
        assert!(
            !child.is_halted(),
            "cancelling the handed-out token halts nothing"
        );
        let call = child.cancellation();
        parent.halt(Halt::new(
            HaltScope::All,
            HaltMode::Immediate,
            HaltReason::Shutdown,
        ));
        assert!(call.is_cancelled());
    }

    #[test]
    fn parent_halts_child_not_the_reverse() {
        let root = HaltToken::new();
        let tenant = root.child();
        let run = tenant.child();
        let call = run.child();
        run.halt(immediate(HaltReason::Operator));
        assert!(run.is_halted() && call.is_halted() && call.stop_requested());
        assert!(!tenant.is_halted() && !tenant.stop_requested() && !root.is_halted());
        assert_eq!(tenant.halt_info(), None);
        // A child made after the halt is born halted.
        assert!(run.child().is_halted());
    }

    #[test]
    fn halt_info_is_inherited_and_immediate_wins() {
        let tenant = HaltToken::new();
        let run = tenant.child();
        let call = run.child();
        let graceful = Halt::new(
            HaltScope::Run("r".into()),
            HaltMode::Graceful {
                deadline: Duration::from_secs(60),
            },
            HaltReason::Operator,
        );
        run.halt(graceful.clone());
        assert_eq!(call.halt_info(), Some(graceful));
        assert!(call.stop_requested() && !call.is_halted());

        let ceiling = Halt::new(
            HaltScope::Tenant("t".into()),
            HaltMode::Immediate,
            HaltReason::CostCeiling,
        )
        .with_detail("tenant t over 100 USD");
        tenant.halt(ceiling.clone());
        assert!(call.is_halted());
        assert_eq!(call.halt_info(), Some(ceiling));
    }

    #[tokio::test]
    async fn graceful_escalates_after_its_deadline_on_tokio() {
        let token = HaltToken::new().child();
        let start = Instant::now();
        token.halt(Halt::new(
            HaltScope::All,
            HaltMode::Graceful {
                deadline: Duration::from_millis(50),
            },
            HaltReason::Shutdown,
        ));
        assert!(token.stop_requested() && !token.is_halted());
        tokio::time::timeout(Duration::from_secs(5), token.halted())
            .await
            .expect("graceful halt never escalated");
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            token.halt_info().map(|h| h.reason),
            Some(HaltReason::Shutdown)
        );
    }

    #[tokio::test]
    async fn until_stop_requested_wakes_on_either_mode() {
        let wait = Duration::from_secs(5);
        for mode in [
            HaltMode::Immediate,
            HaltMode::Graceful {
                deadline: Duration::from_secs(60),
            },
        ] {
            let parent = HaltToken::new();
            let child = parent.child();
            let waiter = tokio::spawn(async move { child.until_stop_requested().await });
            tokio::task::yield_now().await;
            parent.halt(Halt::new(HaltScope::All, mode, HaltReason::Operator));
            tokio::time::timeout(wait, waiter)
                .await
                .expect("no wake-up")
                .unwrap();
        }
    }

    #[test]
    fn graceful_escalates_after_its_deadline_without_a_runtime() {
        let token = HaltToken::new();
        token.halt(Halt::new(
            HaltScope::All,
            HaltMode::Graceful {
                deadline: Duration::from_millis(20),
            },
            HaltReason::Deadline,
        ));
        assert!(!token.is_halted());
        let give_up = Instant::now() + Duration::from_secs(5);
        while !token.is_halted() {
            assert!(Instant::now() < give_up, "graceful halt never escalated");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn run_returns_halted_without_polling_when_already_halted() {
        let token = HaltToken::new();
        token.halt(immediate(HaltReason::ErrorBudget));
        let err = token
            .run(async { unreachable!("a halted token must not start work") })
            .await
            .unwrap_err();
        assert_eq!(err.halt.reason, HaltReason::ErrorBudget);
        assert!(err.to_string().contains("do not retry"), "{err}");
    }

    #[test]
    fn registry_scopes_and_resume() {
        let halts = Halts::new();
        let (acme, other_tenant) = (TenantId::new("acme"), TenantId::new("other"));
        let r1 = RunId::new("r1");
        let run = halts.run(&acme, &r1);
        let call = run.child();
        let other = halts.run(&other_tenant, &RunId::new("r2"));
        assert!(!halts.halt(
            HaltScope::Run("nope".into()),
            HaltMode::Immediate,
            HaltReason::Operator
        ));

        assert!(halts.halt(
            HaltScope::Run(r1.clone()),
            HaltMode::Immediate,
            HaltReason::Operator
        ));
        assert!(run.is_halted() && call.is_halted() && !other.is_halted());
        assert!(!halts.tenant(&acme).stop_requested());

        let resumed = halts.resume_run(&acme, &r1).unwrap();
        assert!(!resumed.is_halted() && resumed.halt_info().is_none());
        assert!(run.is_halted(), "the old attempt stays halted");
        assert!(
            !halts.run(&acme, &r1).is_halted(),
            "lookups now return the fresh token"
        );
        // A resumed token is a working child of its tenant.
        halts.halt(
            HaltScope::Tenant(acme.clone()),
            HaltMode::Immediate,
            HaltReason::CostCeiling,
        );
        assert!(resumed.is_halted());

        let err = halts.resume_run(&acme, &r1).unwrap_err();
        assert_eq!(err.halt.reason, HaltReason::CostCeiling);
        halts.resume_tenant(&acme).unwrap();
        assert!(!halts.resume_run(&acme, &r1).unwrap().is_halted());

        halts.remove_run(&r1);
        assert!(
            !halts.halt(
                HaltScope::Run(r1.clone()),
                HaltMode::Immediate,
                HaltReason::Operator
            ),
            "a removed run has no token left to halt"
        );
        assert!(
            !halts.halt(
                HaltScope::Agent("r1/planner".into()),
                HaltMode::Immediate,
                HaltReason::Operator
            ),
            "agents are halted through their supervisor, not a token"
        );
        halts.halt(HaltScope::All, HaltMode::Immediate, HaltReason::Shutdown);
        assert!(other.is_halted());
        assert!(halts.resume_tenant(&other_tenant).is_err());
    }

    #[test]
    fn standing_halts_are_lifted_by_scope_and_everything_keeps_tenant_halts() {
        let (metrics, exposition) = crate::telemetry::Prometheus::new().build();
        let halts = Halts::with_metrics(metrics);
        let old_run = halts.run(&"acme".into(), &"r1".into());
        let tenant = |t: &str| HaltScope::Tenant(t.into());
        assert_eq!(
            halts.lift(&tenant("acme")),
            Err(LiftError::NotHalted(tenant("acme")))
        );
        assert!(matches!(
            halts.lift(&HaltScope::Run("r1".into())),
            Err(LiftError::NotStanding(_))
        ));
        halts.halt(tenant("beta"), HaltMode::Immediate, HaltReason::CostCeiling);
        halts.halt(HaltScope::All, HaltMode::Immediate, HaltReason::Operator);
        assert_eq!(halts.standing().len(), 2);
        assert!(
            halts.tenant(&"acme".into()).is_halted()
                && halts.run(&"new".into(), &"r2".into()).is_halted()
        );
        // A tenant cannot be lifted from under a global halt.
        assert!(matches!(
            halts.lift(&tenant("beta")),
            Err(LiftError::AncestorHalted(_))
        ));

        assert_eq!(
            halts.lift(&HaltScope::All).unwrap().reason,
            HaltReason::Operator
        );
        assert!(!halts.global().is_halted() && !halts.tenant(&"acme".into()).is_halted());
        assert!(
            !halts.run(&"acme".into(), &"r3".into()).is_halted(),
            "new runs start un-halted"
        );
        assert!(old_run.is_halted(), "what the halt stopped stays stopped");
        assert!(
            halts.tenant(&"beta".into()).is_halted(),
            "the tenant's own halt stands"
        );
        assert_eq!(
            halts.standing(),
            vec![halts.tenant(&"beta".into()).own_halt().unwrap()]
        );
        halts.lift(&tenant("beta")).unwrap();
        assert!(
            halts.standing().is_empty() && !halts.run(&"beta".into(), &"r4".into()).is_halted()
        );

        let text = exposition.render();
        for line in [
            "impresario_halts_lifted_total{scope=\"all\"} 1",
            "impresario_halts_lifted_total{scope=\"tenant\"} 1",
            "impresario_halts_in_force{scope=\"all\"} 0",
            "impresario_halts_in_force{scope=\"tenant\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn serde_names_are_snake_case() {
        let json =
            serde_json::to_string(&(HaltReason::CostCeiling, HaltReason::ErrorBudget)).unwrap();
        assert_eq!(json, r#"["cost_ceiling","error_budget"]"#);
    }
}
