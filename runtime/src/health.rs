//! Health: liveness (the runtime's threads answer), readiness (named checks of whether the
//! process can accept work: [`JournalWritable`], not draining, ...), the [`Detail`] operators
//! read next to liveness (model breakers, standing halts), and the semantic health check (a
//! configured question with a known answer, asked of a model now and then, reported as the
//! `impresario_health_semantic_up` gauge).
//!
//! Readiness means "send me work": an open breaker or a halt is not in it. A provider outage
//! opens the breaker on every replica at once, and taking every replica out of a load balancer
//! would also stop listing, halting and resuming runs; a halt is an operator's decision about
//! some runs, not a fault of the process. Both show in [`Health::detail`] and in metrics.
//!
//! ```no_run
//! # async fn demo(runtime: impresario_runtime::RuntimeHandle, client: impresario_runtime::llm::Client,
//! #               journal: std::sync::Arc<dyn impresario_runtime::journal::Journal>) {
//! use impresario_runtime::health::{Health, JournalWritable};
//!
//! let health = Health::new(runtime).models(client).check(JournalWritable::new(journal));
//! let detail = health.detail().await;       // GET /healthz: 200 if detail.live, else 503
//! let ready = health.readiness().await;     // GET /readyz: 200 if ready.ready, else 503
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use serde::Serialize;

use crate::halt::{Halt, Halts};
#[cfg(feature = "journal")]
use crate::journal::Journal;
use crate::llm::{BreakerState, CallOptions, ChatRequest, Client, LlmError};
use crate::runtime::RuntimeHandle;

/// How long a readiness check, or the liveness probe, may take before it counts as failed.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One named readiness check.
pub trait ReadinessCheck: Send + Sync {
    /// Its name, as reported (`models_available`, `journal_writable`, ...).
    fn name(&self) -> &str;
    /// `Ok` when ready, else what is wrong (shown to operators; not a metric label).
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// A readiness check from a name and an async closure.
pub struct CheckFn<F> {
    name: String,
    check: F,
}

impl<F, Fut> CheckFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    /// A check named `name` that runs `check`.
    pub fn new(name: impl Into<String>, check: F) -> Self {
        CheckFn {
            name: name.into(),
            check,
        }
    }
}

impl<F, Fut> ReadinessCheck for CheckFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin((self.check)())
    }
}

#[cfg(feature = "journal")]
/// Ready when the journal takes a durable write ([`Journal::probe_write`], queued behind the
/// appends in flight): false when its disk is full or its file cannot be written.
pub struct JournalWritable {
    journal: Arc<dyn Journal>,
}

#[cfg(feature = "journal")]
impl JournalWritable {
    /// The check of `journal`.
    pub fn new(journal: Arc<dyn Journal>) -> Self {
        JournalWritable { journal }
    }
}

#[cfg(feature = "journal")]
impl ReadinessCheck for JournalWritable {
    fn name(&self) -> &str {
        "journal_writable"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        let probe = self.journal.probe_write();
        Box::pin(async move { probe.await.map_err(|e| e.to_string()) })
    }
}

/// A model's circuit breaker, as [`Detail`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelState {
    /// The model.
    pub model: String,
    /// `closed`, `half_open` or `open`.
    pub breaker: &'static str,
}

/// What operators read on `/healthz`: liveness, and what limits work without making the process
/// unready.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    /// The runtime's threads answer.
    pub live: bool,
    /// Every model called so far, with its breaker.
    pub models: Vec<ModelState>,
    /// The standing halts (everyone's, tenants'): their new runs end halted until lifted.
    pub halts: Vec<Halt>,
}

/// The result of one readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What is wrong, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The results of every readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// True when every check passed.
    pub ready: bool,
    /// Each check, in the order they were added.
    pub checks: Vec<CheckResult>,
}

/// Liveness and readiness of one runtime. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    runtime: RuntimeHandle,
    checks: Vec<Arc<dyn ReadinessCheck>>,
    timeout: Duration,
    client: Option<Client>,
    halts: Option<Halts>,
}

impl Health {
    /// Health of `runtime`, with no readiness checks yet.
    pub fn new(runtime: RuntimeHandle) -> Self {
        Health {
            runtime,
            checks: Vec::new(),
            timeout: DEFAULT_CHECK_TIMEOUT,
            client: None,
            halts: None,
        }
    }

    /// Reports the breakers of `client`'s models in [`Health::detail`].
    pub fn models(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Reports the standing halts of `halts` in [`Health::detail`].
    pub fn halts(mut self, halts: Halts) -> Self {
        self.halts = Some(halts);
        self
    }

    /// Adds a readiness check.
    pub fn check(mut self, check: impl ReadinessCheck + 'static) -> Self {
        self.checks.push(Arc::new(check));
        self
    }

    /// How long each check may take (default [`DEFAULT_CHECK_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Alive when every thread of the runtime runs a trivial job within the timeout: false if
    /// a handler blocks an arbiter, or the runtime stopped. Needs a tokio timer.
    pub async fn liveness(&self) -> bool {
        self.runtime.responsive(self.timeout).await
    }

    /// Liveness, with the models' breakers and the standing halts.
    pub async fn detail(&self) -> Detail {
        let mut models: Vec<ModelState> = self
            .client
            .iter()
            .flat_map(Client::breaker_states)
            .map(|(model, state)| ModelState {
                model,
                breaker: match state {
                    BreakerState::Closed => "closed",
                    BreakerState::HalfOpen => "half_open",
                    BreakerState::Open => "open",
                },
            })
            .collect();
        models.sort_by(|a, b| a.model.cmp(&b.model));
        Detail {
            live: self.liveness().await,
            models,
            halts: self.halts.iter().flat_map(Halts::standing).collect(),
        }
    }

    /// Runs every readiness check at once; a check that times out fails.
    pub async fn readiness(&self) -> Readiness {
        let checks = join_all(self.checks.iter().map(|check| async move {
            let outcome = tokio::time::timeout(self.timeout, check.check())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
            CheckResult {
                name: check.name().to_owned(),
                ok: outcome.is_ok(),
                detail: outcome.err(),
            }
        }))
        .await;
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

/// Asks a model a question whose answer is known, and reports whether it answered correctly
/// as `impresario_health_semantic_up{model}` (1 or 0) in the client's metrics. Each check is a
/// paid call, charged to the account of its [`CallOptions`].
pub struct SemanticCheck {
    client: Client,
    request: ChatRequest,
    expected: String,
    options: CallOptions,
}

impl SemanticCheck {
    /// Asks `request` (its model and question); the answer passes when it contains `expected`
    /// (case-insensitive).
    pub fn new(
        client: Client,
        request: ChatRequest,
        expected: impl Into<String>,
        options: CallOptions,
    ) -> Self {
        SemanticCheck {
            client,
            request,
            expected: expected.into(),
            options,
        }
    }

    /// Asks once and records the result; `Ok(passed)`, or the call's error (recorded as 0).
    pub async fn run(&self) -> Result<bool, LlmError> {
        let answer = self.client.chat(self.request.clone(), &self.options).await;
        let passed = answer.as_ref().is_ok_and(|a| {
            a.content
                .to_lowercase()
                .contains(&self.expected.to_lowercase())
        });
        self.client
            .metrics()
            .semantic_health(&self.request.model, passed);
        answer.map(|_| passed)
    }

    /// Asks now and then every `every`, on the current tokio runtime, until the task is aborted.
    pub fn spawn(self, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.run().await {
                    tracing::warn!(model = %self.request.model, error = %e, "semantic health check failed");
                }
                tokio::time::sleep(every).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{AccountId, Ledger};
    use crate::llm::{
        BreakerConfig, ChatModel, ChatResponse, ModelPrice, PriceTable, Rates, RetryPolicy,
    };
    use tokio_util::sync::CancellationToken;

    /// A provider whose every call fails as a provider failure.
    struct Down;
    impl ChatModel for Down {
        fn chat<'a>(&'a self, _: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
            Box::pin(std::future::ready(Err(LlmError::Transient {
                status: 503,
                message: "down".into(),
                retry_after: None,
            })))
        }
    }

    #[tokio::test]
    async fn breakers_and_halts_show_in_the_detail_not_in_readiness() {
        let mut prices = PriceTable::default();
        for model in ["m1", "m2"] {
            prices.insert(model, ModelPrice::new("down", Rates::default()));
        }
        let client = Client::builder()
            .prices(prices)
            .provider("down", Down)
            // Both models known to the client, neither a fallback of the other.
            .fallback("m1", Vec::<String>::new())
            .fallback("m2", Vec::<String>::new())
            .retry(RetryPolicy::none())
            .breaker(BreakerConfig {
                failure_threshold: 1,
                cool_down: Duration::from_secs(60),
            })
            .build()
            .unwrap();
        let runtime = crate::Runtime::builder().arbiters(1).start().unwrap();
        let halts = Halts::new();
        let journal: Arc<dyn Journal> = Arc::new(crate::journal::MemoryJournal::new());
        let health = Health::new(runtime.clone())
            .models(client.clone())
            .halts(halts.clone())
            .check(JournalWritable::new(journal));
        let options = CallOptions::new(
            Ledger::new().path(&AccountId::Global).unwrap(),
            CancellationToken::new(),
        );
        for model in ["m1", "m2"] {
            // No fallback: each call trips only its own model's breaker.
            let _ = client
                .chat_with_fallbacks(ChatRequest::new(model).user("hi"), &[], &options)
                .await;
        }
        halts.halt(
            crate::halt::HaltScope::Tenant("acme".into()),
            crate::halt::HaltMode::Immediate,
            crate::halt::HaltReason::Operator,
        );
        let readiness = health.readiness().await;
        assert!(readiness.ready, "{readiness:?}");
        assert_eq!(readiness.checks[0].name, "journal_writable");
        let detail = health.detail().await;
        assert!(detail.live);
        let open = |m: &str| ModelState {
            model: m.into(),
            breaker: "open",
        };
        assert_eq!(detail.models, vec![open("m1"), open("m2")]);
        assert_eq!(detail.halts.len(), 1);
        assert_eq!(detail.halts[0].scope.to_string(), "tenant acme");
        runtime.shutdown(Duration::from_secs(5)).await;
        assert!(!health.detail().await.live);
    }
}
