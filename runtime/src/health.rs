//! Health: liveness (the runtime's threads answer), readiness (a set of named checks, e.g. "at
//! least one model is not circuit-open"; the journal will add "journal writable"), and the
//! semantic health check (a configured question with a known answer, asked of a model now and
//! then, reported as the `impresario_health_semantic_up` gauge).
//!
//! ```no_run
//! # async fn demo(runtime: impresario_runtime::RuntimeHandle, client: impresario_runtime::llm::Client) {
//! use impresario_runtime::health::{Health, ModelsAvailable};
//!
//! let health = Health::new(runtime).check(ModelsAvailable::new(client));
//! let live = health.liveness().await;       // GET /healthz: 200 if true, else 503
//! let ready = health.readiness().await;     // GET /readyz: 200 if ready.ready, else 503
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use serde::Serialize;

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

/// Ready when at least one model the client knows is not circuit-open (or it knows none yet).
pub struct ModelsAvailable {
    client: Client,
}

impl ModelsAvailable {
    /// The check for `client`'s models.
    pub fn new(client: Client) -> Self {
        ModelsAvailable { client }
    }
}

impl ReadinessCheck for ModelsAvailable {
    fn name(&self) -> &str {
        "models_available"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        let states = self.client.breaker_states();
        let result = if states.iter().any(|(_, s)| *s != BreakerState::Open) || states.is_empty() {
            Ok(())
        } else {
            let models: Vec<&str> = states.iter().map(|(m, _)| m.as_str()).collect();
            Err(format!(
                "every model is circuit-open: {}",
                models.join(", ")
            ))
        };
        Box::pin(std::future::ready(result))
    }
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
}

impl Health {
    /// Health of `runtime`, with no readiness checks yet.
    pub fn new(runtime: RuntimeHandle) -> Self {
        Health {
            runtime,
            checks: Vec::new(),
            timeout: DEFAULT_CHECK_TIMEOUT,
        }
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
    async fn ready_until_every_known_model_is_circuit_open_and_dead_when_stopped() {
        let mut prices = PriceTable::default();
        for model in ["m1", "m2"] {
            prices.insert(model, ModelPrice::new("down", Rates::default()));
        }
        let client = Client::builder()
            .prices(prices)
            .provider("down", Down)
            .fallback("m1", ["m2"])
            .retry(RetryPolicy::none())
            .breaker(BreakerConfig {
                failure_threshold: 1,
                cool_down: Duration::from_secs(60),
            })
            .build()
            .unwrap();
        let runtime = crate::Runtime::builder().arbiters(1).start().unwrap();
        let health = Health::new(runtime.clone())
            .check(ModelsAvailable::new(client.clone()))
            .check(CheckFn::new("journal_writable", || async { Ok(()) }));
        assert!(health.liveness().await);
        assert!(health.readiness().await.ready, "no breaker is open yet");

        let options = CallOptions::new(
            Ledger::new().path(&AccountId::Global).unwrap(),
            CancellationToken::new(),
        );
        for model in ["m1", "m2"] {
            let _ = client
                .chat(ChatRequest::new(model).user("hi"), &options)
                .await;
            let readiness = health.readiness().await;
            assert_eq!(
                readiness.ready,
                model == "m1",
                "after {model}: {readiness:?}"
            );
        }
        let readiness = health.readiness().await;
        assert_eq!(
            readiness.checks,
            vec![
                CheckResult {
                    name: "models_available".into(),
                    ok: false,
                    detail: Some("every model is circuit-open: m1, m2".into()),
                },
                CheckResult {
                    name: "journal_writable".into(),
                    ok: true,
                    detail: None,
                },
            ]
        );
        runtime.shutdown(Duration::from_secs(5)).await;
        assert!(!health.liveness().await);
    }
}
