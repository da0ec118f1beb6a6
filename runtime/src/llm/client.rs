//! `Client`: what agents call. It composes the providers with everything a production call
//! needs: validation, a fallback chain, the response cache, the circuit
//! breaker, the ledger reservation, cancellation by the run's halt token, and retries.
//!
//! One call, for each model of its chain in turn:
//!
//! 1. cache hit (temperature 0, cache enabled): return it, cost 0, nothing reserved or sent;
//! 2. breaker open: [`LlmError::CircuitOpen`], nothing reserved or sent;
//! 3. reserve the worst case (input estimate + `max_tokens` output, 1 model call) on the
//!    caller's account path, and in its ledger store when the options hold one
//!    ([`crate::ledger_store`]); refused: [`LlmError::CeilingReached`] (a store that fails:
//!    [`LlmError::LedgerUnavailable`]), nothing sent;
//! 4. send, racing the halt token (a halt drops the request, which closes its connection);
//!    streamed when the options carry a [`DeltaSink`];
//! 5. close the reservation (a charged store hold left to the run's journal when the options
//!    say so, [`CallOptions::holds_left_to`]): settle the real usage on success; on failure charge what the
//!    provider may bill (see `LlmError::billing`): nothing, the input estimate (timeout,
//!    broken connection, cancellation), the usage it reported, or the whole reservation (a
//!    2xx body we could not read). A stream that fails after its first delta (halted,
//!    dropped, stalled, a bad chunk) becomes [`LlmError::StreamInterrupted`], charged the
//!    input plus the output received. Reported usage above the reservation is charged and
//!    returned as [`LlmError::Overshoot`] (the caller must stop spending: the reservation no
//!    longer bounds its calls); usage the request makes impossible (above the context window
//!    or `max_tokens`) is a [`LlmError::MalformedResponse`], charged too;
//! 6. retry transient failures per [`RetryPolicy`] (each attempt reserves again), waiting on
//!    the halt token too; when retries are exhausted and the error is one another model could
//!    avoid, fall back to the next model. An interrupted stream is neither retried nor sent
//!    to another model: its output was already delivered.
//!
//! So a refused reservation sends nothing, and every reservation is closed on every path:
//! after any mix of outcomes the reserved amount returns to zero. Dropping the call future
//! while a request is in flight counts as a cancellation (the input estimate is charged, or
//! what a stream had delivered).
//!
//! Each model of a call runs in a `chat {model}` span and is measured (duration when a request
//! was sent, reported tokens, money charged, retries, breaker state): see
//! [`telemetry`](crate::telemetry).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::breaker::{BreakerConfig, BreakerState, Breakers, Outcome, Permit};
use super::cache::{CacheKey, ResponseCache};
use super::error::{Billing, LlmError};
use super::estimate::estimate_input;
use super::price::{ModelPrice, PriceTable};
use super::retry::RetryPolicy;
use super::stream::{DeltaSink, Interruption, Received};
use super::trace;
use super::types::{ChatRequest, ChatResponse, Usage};
use super::ChatModel;
use crate::ledger::{AccountPath, Charge, Settlement};
use crate::ledger_store::{self, HeldReservation, LedgerStore, PendingHolds};
use crate::redact::redact_serialized;
use crate::telemetry::{Metrics, ModelMetrics};

/// Who pays for a call and what stops it. Both are required: there is no unbudgeted,
/// unstoppable call. With a [`DeltaSink`] the call streams.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// The accounts the call is reserved on (run -> tenant -> global).
    pub account: AccountPath,
    /// Where the reservation is also held, shared with other processes (PostgreSQL); `None`:
    /// this process's ledger alone.
    pub store: Option<Arc<dyn LedgerStore>>,
    /// The run's halt token; cancelling it aborts the call.
    pub halt: CancellationToken,
    /// Whose cached answers the call may be served and may add to (a run's tenant): an answer
    /// cached under one scope never serves another. `None` is one shared, unscoped cache.
    pub cache_scope: Option<Arc<str>>,
    /// Where the answer's text goes as it arrives; `None`: the call does not stream.
    pub deltas: Option<DeltaSink>,
    /// Where the store's charged holds go instead of being settled by the call: the run's
    /// journal settles them with the call's journaled outcome
    /// ([`HeldReservation::leave_to`]). `None`: the call settles them.
    pub pending_holds: Option<PendingHolds>,
}

impl CallOptions {
    /// Options charging `account` and stopped by `halt`, in the unscoped cache, not streaming.
    pub fn new(account: AccountPath, halt: CancellationToken) -> Self {
        CallOptions {
            account,
            store: None,
            halt,
            cache_scope: None,
            deltas: None,
            pending_holds: None,
        }
    }

    /// With cached answers scoped to `scope` (a tenant): never served to another scope.
    pub fn cache_scope(mut self, scope: Arc<str>) -> Self {
        self.cache_scope = Some(scope);
        self
    }

    /// The same options, also holding every reservation in `store` (see
    /// [`ledger_store`](crate::ledger_store)).
    pub fn held_in(mut self, store: Arc<dyn LedgerStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The same options, leaving the store's charged holds to `pending` for the run's journal
    /// to settle (see [`ledger_store`](crate::ledger_store)).
    pub fn holds_left_to(mut self, pending: PendingHolds) -> Self {
        self.pending_holds = Some(pending);
        self
    }

    /// The same options, streaming the answer's text into `sink`.
    pub fn stream_to(mut self, sink: DeltaSink) -> Self {
        self.deltas = Some(sink);
        self
    }
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    providers: HashMap<String, Arc<dyn ChatModel>>,
    prices: PriceTable,
    fallbacks: HashMap<String, Vec<String>>,
    retry: RetryPolicy,
    breaker: BreakerConfig,
    cache_capacity: Option<usize>,
    metrics: Metrics,
    record_content: bool,
}

impl ClientBuilder {
    /// Registers a provider under `name`; a model is served by the provider named by its
    /// price entry's `litellm_provider` (`openai`, `anthropic`, or any name you choose).
    pub fn provider(mut self, name: impl Into<String>, provider: impl ChatModel + 'static) -> Self {
        self.providers.insert(name.into(), Arc::new(provider));
        self
    }

    /// Replaces the price table (the default is [`PriceTable::bundled`]).
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    /// Models to try, in order, when a call to `model` fails in a way another model could
    /// avoid (see [`LlmError::should_fall_back`]).
    pub fn fallback<S: Into<String>>(
        mut self,
        model: impl Into<String>,
        fallbacks: impl IntoIterator<Item = S>,
    ) -> Self {
        self.fallbacks.insert(
            model.into(),
            fallbacks.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// Sets the retry policy (the default retries twice with 0.5 s, 1 s backoff).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the circuit breaker settings.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Enables the response cache for deterministic requests, holding `capacity` answers.
    pub fn cache(mut self, capacity: usize) -> Self {
        self.cache_capacity = Some(capacity);
        self
    }

    /// Where the client's metrics go (default [`Metrics::global`]).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Records prompts and completions on the `chat` spans (`gen_ai.input.messages`,
    /// `gen_ai.output.messages`). Off by default: they may hold personal or secret data.
    pub fn record_content(mut self, record: bool) -> Self {
        self.record_content = record;
        self
    }

    /// Checks that every model named by the fallbacks has a price and a
    /// registered provider, and builds the client.
    pub fn build(self) -> Result<Client, LlmError> {
        let inner = Inner {
            providers: self.providers,
            prices: self.prices,
            fallbacks: self.fallbacks,
            retry: self.retry,
            breakers: Breakers::new(self.breaker),
            cache: self.cache_capacity.map(ResponseCache::new),
            metrics: self.metrics,
            record_content: self.record_content,
            model_metrics: DashMap::new(),
        };
        let named = inner
            .fallbacks
            .iter()
            .flat_map(|(m, f)| std::iter::once(m.as_str()).chain(f.iter().map(String::as_str)));
        for model in named {
            inner.route(model)?;
        }
        Ok(Client {
            inner: Arc::new(inner),
        })
    }
}

/// The LLM client agents use. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    providers: HashMap<String, Arc<dyn ChatModel>>,
    prices: PriceTable,
    fallbacks: HashMap<String, Vec<String>>,
    retry: RetryPolicy,
    breakers: Breakers,
    cache: Option<ResponseCache>,
    metrics: Metrics,
    record_content: bool,
    /// Metric handles by model, resolved on its first call.
    model_metrics: DashMap<String, Arc<ModelMetrics>>,
}

impl Client {
    /// A builder with the bundled prices, no providers, default retry and breaker, no cache.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            providers: HashMap::new(),
            prices: PriceTable::bundled(),
            fallbacks: HashMap::new(),
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            cache_capacity: None,
            metrics: Metrics::global(),
            record_content: false,
        }
    }

    /// Calls `request.model`, then its configured fallbacks.
    pub async fn chat(
        &self,
        request: ChatRequest,
        options: &CallOptions,
    ) -> Result<ChatResponse, LlmError> {
        let fallbacks = self.inner.fallbacks.get(&request.model).cloned();
        let chain = std::iter::once(request.model.clone()).chain(fallbacks.into_iter().flatten());
        self.inner.call_chain(chain, request, options).await
    }

    /// Calls `request.model`, then each of `fallbacks` in order when a model fails in a way
    /// another model could avoid (a run's model choice: the fallbacks configured on this
    /// client for `request.model` are not added).
    pub async fn chat_with_fallbacks(
        &self,
        request: ChatRequest,
        fallbacks: &[String],
        options: &CallOptions,
    ) -> Result<ChatResponse, LlmError> {
        let chain = std::iter::once(request.model.clone()).chain(fallbacks.iter().cloned());
        self.inner.call_chain(chain, request, options).await
    }

    /// The circuit breaker state of `model`.
    pub fn breaker_state(&self, model: &str) -> BreakerState {
        self.inner.breakers.state(model)
    }

    /// The breaker state of every model this client knows: those named by the fallbacks, and
    /// those called so far; by name.
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        let inner = &self.inner;
        let mut models = BTreeSet::new();
        for (model, fallbacks) in &inner.fallbacks {
            models.insert(model.clone());
            models.extend(fallbacks.iter().cloned());
        }
        models.extend(inner.breakers.models());
        models
            .into_iter()
            .map(|model| {
                let state = inner.breakers.state(&model);
                (model, state)
            })
            .collect()
    }

    /// Where the client's metrics go.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The price table in use.
    pub fn prices(&self) -> &PriceTable {
        &self.inner.prices
    }
}

fn charge(micro_usd: u64, tokens: u64) -> Charge {
    Charge {
        micro_usd,
        tokens,
        model_calls: 1,
    }
}

/// What one attempt may cost, computed once per model.
struct Bill<'a> {
    price: &'a ModelPrice,
    worst_case: Charge,
    input_only: Charge,
    metrics: &'a ModelMetrics,
}

impl<'a> Bill<'a> {
    fn new(price: &'a ModelPrice, request: &ChatRequest, metrics: &'a ModelMetrics) -> Self {
        let input = estimate_input(request).tokens;
        let max_output = u64::from(request.max_tokens);
        Bill {
            price,
            worst_case: charge(price.worst_case(input, max_output), input + max_output),
            input_only: charge(price.input_cost(input), input),
            metrics,
        }
    }

    /// Closes the reservation as `billing` says (awaiting the store's hold), and records the
    /// usage the provider reported and the money charged. `None` when nothing was charged.
    async fn close(&self, reservation: HeldReservation, billing: Billing) -> Option<Settlement> {
        let Some(charged) = self.charged(billing) else {
            reservation.release().await;
            return None;
        };
        let settlement = reservation.settle(charged).await;
        self.metrics.cost(settlement.charged.micro_usd);
        Some(settlement)
    }

    /// Like [`Bill::close`], for a call future being dropped: the store's hold is settled by
    /// a detached task.
    fn close_detached(&self, reservation: HeldReservation, billing: Billing) {
        let charged = self.charged(billing).unwrap_or(Charge::ZERO);
        let settlement = reservation.finish_detached(charged);
        self.metrics.cost(settlement.charged.micro_usd);
    }

    /// What `billing` charges (`None`: nothing, the reservation is released), recording the
    /// usage the provider reported.
    fn charged(&self, billing: Billing) -> Option<Charge> {
        match billing {
            Billing::Nothing => None,
            Billing::InputEstimate => Some(self.input_only),
            Billing::WorstCase => Some(self.worst_case),
            Billing::Usage(u) => {
                self.metrics.usage(u.input_tokens, u.output_tokens);
                Some(charge(self.price.cost(&u), u.total_tokens()))
            }
        }
    }

    /// The error that stops the caller when `settlement` went past the reservation: counted,
    /// logged, and naming why the usage is impossible when it is.
    fn overshoot(
        &self,
        settlement: Option<Settlement>,
        impossible: Option<String>,
        model: &str,
    ) -> Option<LlmError> {
        let settlement = settlement.filter(|s| !s.overshoot.is_zero())?;
        self.metrics.overshoot();
        tracing::warn!(
            model,
            overshoot_micro_usd = settlement.overshoot.micro_usd,
            overshoot_tokens = settlement.overshoot.tokens,
            "call cost more than its reservation; charged, the caller must stop"
        );
        Some(LlmError::Overshoot {
            model: model.to_owned(),
            reserved_micro_usd: self.worst_case.micro_usd,
            charged_micro_usd: settlement.charged.micro_usd,
            impossible,
        })
    }

    /// An answer's outcome once its reservation is settled: usage above the reservation is an
    /// [`LlmError::Overshoot`], usage the request makes impossible a malformed response (both
    /// were charged); otherwise the answer with what it cost.
    fn answered(
        &self,
        response: ChatResponse,
        settlement: Option<Settlement>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, LlmError> {
        let usage = response.usage;
        let impossible = impossible_usage(&usage, request, self.price);
        if let Some(over) = self.overshoot(settlement, impossible.clone(), &request.model) {
            return Err(over);
        }
        if let Some(problem) = impossible {
            return Err(LlmError::MalformedResponse {
                message: format!("the reported usage is impossible: {problem}"),
                usage: Some(usage),
            });
        }
        Ok(ChatResponse {
            cost_micro_usd: Some(settlement.map_or(0, |s| s.charged.micro_usd)),
            cache_hit: false,
            ..response
        })
    }
}

/// Why `usage` cannot be true for `request`: more input than the model's context window, or
/// more output than the `max_tokens` it was sent.
fn impossible_usage(usage: &Usage, request: &ChatRequest, price: &ModelPrice) -> Option<String> {
    if let Some(window) = price.max_input_tokens.filter(|w| usage.input_tokens > *w) {
        return Some(format!(
            "{} input tokens reported, above the model's context window of {window}",
            usage.input_tokens
        ));
    }
    let max_tokens = u64::from(request.max_tokens);
    (usage.output_tokens > max_tokens).then(|| {
        format!(
            "{} output tokens reported, above the max_tokens of {max_tokens} sent",
            usage.output_tokens
        )
    })
}

/// A reservation whose request is in flight. If the call future is dropped while it is (the
/// caller stopped awaiting it, e.g. under its own timeout or `HaltToken::run`), the request
/// was aborted just as by a halt, so dropping charges like a cancellation: the input estimate,
/// or what a stream had delivered.
struct InFlight<'a> {
    reservation: Option<HeldReservation>,
    bill: &'a Bill<'a>,
    request: &'a ChatRequest,
    received: Received,
}

impl InFlight<'_> {
    async fn close(mut self, billing: Billing) -> Option<Settlement> {
        let r = self.reservation.take()?;
        self.bill.close(r, billing).await
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            let billing = if self.received.started() {
                Billing::Usage(self.received.partial_usage(self.request))
            } else {
                Billing::InputEstimate
            };
            self.bill.close_detached(r, billing);
        }
    }
}

/// What a failure says about the provider's health, for its breaker.
fn breaker_outcome(err: &LlmError) -> Outcome {
    if err.is_provider_failure() {
        Outcome::Failure
    } else if matches!(err, LlmError::Cancelled | LlmError::RateLimited { .. })
        || matches!(err, LlmError::StreamInterrupted(i) if i.cause == Interruption::Halted)
    {
        Outcome::Neutral
    } else {
        Outcome::Success
    }
}

/// Refuses a request asking for more output than the model allows.
fn check_max_tokens(price: &ModelPrice, request: &ChatRequest) -> Result<(), LlmError> {
    match price.max_output_tokens {
        Some(max) if u64::from(request.max_tokens) > max => Err(LlmError::InvalidRequest {
            status: None,
            message: format!(
                "`max_tokens` {} exceeds the {max} output tokens `{}` allows",
                request.max_tokens, request.model
            ),
        }),
        _ => Ok(()),
    }
}

impl Inner {
    fn route(&self, model: &str) -> Result<(&ModelPrice, &dyn ChatModel), LlmError> {
        let price = self.prices.get(model).ok_or_else(|| {
            LlmError::Config(format!(
                "model `{model}` has no price; add it to the price table (LiteLLM format) so its cost can be reserved"
            ))
        })?;
        let provider = self.providers.get(&price.provider).ok_or_else(|| {
            LlmError::Config(format!(
                "model `{model}` is served by provider `{}`, which is not registered on the client",
                price.provider
            ))
        })?;
        Ok((price, provider.as_ref()))
    }

    async fn call_chain(
        &self,
        chain: impl IntoIterator<Item = String>,
        mut request: ChatRequest,
        options: &CallOptions,
    ) -> Result<ChatResponse, LlmError> {
        request.validate()?;
        let mut last_error = None;
        for model in chain {
            if let Some(err) = &last_error {
                tracing::warn!(from = %request.model, to = %model, error = %err, "falling back to the next model");
            }
            request.model = model;
            match self.call_model(&request, options).await {
                Err(e) if e.should_fall_back() => last_error = Some(e),
                result => return result,
            }
        }
        Err(last_error.expect("a call chain has at least one model"))
    }

    /// The metric handles of `model`.
    fn model_metrics(&self, provider: &str, model: &str) -> Arc<ModelMetrics> {
        if let Some(found) = self.model_metrics.get(model) {
            return found.clone();
        }
        self.model_metrics
            .entry(model.to_owned())
            .or_insert_with(|| Arc::new(self.metrics.model(provider, model)))
            .clone()
    }

    /// One model of a call, in its `chat {model}` span; records the operation's duration when a
    /// request was sent.
    async fn call_model(
        &self,
        request: &ChatRequest,
        options: &CallOptions,
    ) -> Result<ChatResponse, LlmError> {
        let (price, provider) = self.route(&request.model)?;
        let metrics = self.model_metrics(&price.provider, &request.model);
        let span = trace::open(&price.provider, request, self.record_content);
        let started = Instant::now();
        let mut sent = 0;
        let result = self
            .attempts(request, options, (price, provider), &metrics, &mut sent)
            .instrument(span.clone())
            .await
            // A provider may echo a credential in an answer or an error: none leaves the layer.
            .map(redact_serialized)
            .map_err(LlmError::redacted);
        trace::close(&span, &result, sent, self.record_content);
        if sent > 0 {
            let error = result.as_ref().err().map(LlmError::kind);
            metrics.operation(started.elapsed(), error);
        }
        result
    }

    /// Steps 1 to 6 of the module documentation for one model; counts requests sent in `sent`.
    async fn attempts(
        &self,
        request: &ChatRequest,
        options: &CallOptions,
        (price, provider): (&ModelPrice, &dyn ChatModel),
        metrics: &ModelMetrics,
        sent: &mut u32,
    ) -> Result<ChatResponse, LlmError> {
        check_max_tokens(price, request)?;
        let cache_key = self
            .cache
            .as_ref()
            .and_then(|_| CacheKey::of(options.cache_scope.as_deref(), request));
        if let (Some(cache), Some(key)) = (&self.cache, &cache_key) {
            if let Some(mut hit) = cache.get(key) {
                hit.cache_hit = true;
                hit.cost_micro_usd = Some(0);
                Received::new(options.deltas.clone()).text(&hit.content);
                return Ok(hit);
            }
        }
        let bill = Bill::new(price, request, metrics);
        let mut attempt = 0;
        // The class of the failure being retried: counted once the retry is actually sent (an
        // open breaker or a ceiling may refuse it first).
        let mut retrying: Option<&'static str> = None;
        loop {
            let sending = self.attempt(request, options, provider, &bill, sent, retrying.take());
            let err = match sending.await {
                Ok(response) => {
                    if let (Some(cache), Some(key)) = (&self.cache, cache_key) {
                        cache.insert(key, response.clone());
                    }
                    return Ok(response);
                }
                Err(err) => err,
            };
            let Some(delay) = self.retry.delay_before_retry(attempt, &err) else {
                return Err(err);
            };
            retrying = Some(err.status_class());
            tracing::debug!(model = %request.model, attempt, ?delay, error = %err, "retrying");
            tokio::select! {
                biased;
                _ = options.halt.cancelled() => return Err(LlmError::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
        }
    }

    /// The breaker's permit to send to `model`, or why not.
    fn permit<'a>(
        &'a self,
        model: &'a str,
        metrics: &ModelMetrics,
    ) -> Result<Permit<'a>, LlmError> {
        self.breakers.acquire(model).map_err(|retry_in| {
            metrics.breaker(self.breakers.state(model).gauge());
            LlmError::CircuitOpen {
                model: model.to_owned(),
                retry_in,
            }
        })
    }

    /// One attempt: the breaker's permit, the reservation, the request (streamed when the
    /// options ask) racing the halt token, and the reservation closed as the outcome says.
    /// `retrying` is the class of the failure this attempt retries, counted once it is sent.
    async fn attempt(
        &self,
        request: &ChatRequest,
        options: &CallOptions,
        provider: &dyn ChatModel,
        bill: &Bill<'_>,
        sent: &mut u32,
        retrying: Option<&'static str>,
    ) -> Result<ChatResponse, LlmError> {
        if options.halt.is_cancelled() {
            return Err(LlmError::Cancelled);
        }
        let model = request.model.as_str();
        let permit = self.permit(model, bill.metrics)?;
        let received = Received::new(options.deltas.clone());
        let in_flight = InFlight {
            reservation: Some(
                ledger_store::reserve(&options.account, options.store.as_ref(), bill.worst_case)
                    .await?
                    .leave_to(options.pending_holds.clone()),
            ),
            bill,
            request,
            received: received.clone(),
        };
        *sent += 1;
        if let Some(status_class) = retrying {
            bill.metrics.retry(status_class);
        }
        let send = async {
            match options.deltas {
                Some(_) => provider.chat_stream(request, &received).await,
                None => provider.chat(request).await,
            }
        };
        let outcome = tokio::select! {
            biased;
            _ = options.halt.cancelled() => Err(LlmError::Cancelled),
            result = send => result,
        };
        let outcome = outcome.map_err(|err| interrupted(err, &received, request, bill.price));
        let billing = match &outcome {
            Ok(response) => Billing::Usage(response.usage),
            Err(err) => err.billing(),
        };
        let settlement = in_flight.close(billing).await;
        permit.record(
            outcome
                .as_ref()
                .err()
                .map_or(Outcome::Success, breaker_outcome),
        );
        bill.metrics.breaker(self.breakers.state(model).gauge());
        match outcome {
            Ok(response) => bill.answered(response, settlement, request),
            // A failure's billed usage (a filtered or malformed answer) may pass it too.
            Err(err) => Err(bill.overshoot(settlement, None, model).unwrap_or(err)),
        }
    }
}

/// A failure after a stream's first delta: interrupted, charged what was received.
fn interrupted(
    err: LlmError,
    received: &Received,
    request: &ChatRequest,
    price: &ModelPrice,
) -> LlmError {
    if !received.started() {
        return err;
    }
    let usage = received.partial_usage(request);
    err.after_first_delta(received.text_so_far(), usage, price.cost(&usage))
}
