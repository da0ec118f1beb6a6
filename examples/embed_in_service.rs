//! A long-running actix-web service that embeds the runtime, as an operator runs it: it serves
//! `POST /runs`, and `/metrics`, `/healthz` and `/readyz` for Prometheus and the orchestrator.
//!
//! Run: `cargo run --example embed_in_service` (listens on 127.0.0.1:8080, or `ADDR`), then
//!
//! ```sh
//! curl -X POST 127.0.0.1:8080/runs -d 'Plan a trip to Lisbon'   # an offline run
//! curl 127.0.0.1:8080/metrics                                    # Prometheus exposition
//! curl -i 127.0.0.1:8080/healthz ; curl -i 127.0.0.1:8080/readyz
//! ```
//!
//! Everything is offline: the model is a `Scripted` provider with its own price, so every run
//! costs a few micro-USD of pretend money. A run, for now, is one agent answering the goal with
//! one model call, under a run budget and a run halt token, inside an `invoke_workflow` span,
//! counted by the run metrics. When `impresario-agents` lands, `POST /runs` submits a real run
//! (planner, executor, tools) in its place; the endpoints and the metrics stay as they are.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use impresario::prelude::*;
use impresario::runtime::halt::Halts;
use impresario::runtime::health::{Health, ModelsAvailable, SemanticCheck};
use impresario::runtime::ledger::{AccountId, AccountPath, Ledger, Limits};
use impresario::runtime::llm::{
    CallOptions, ChatRequest, ChatResponse, Client, LlmError, ModelPrice, PriceTable, Rates,
    Scripted, ScriptedReply,
};
use impresario::runtime::telemetry::{self, Metrics, MetricsHandle, Prometheus, RunOutcome};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The offline model, and the provider name it is registered under.
pub const MODEL: &str = "offline-small";
const PROVIDER: &str = "scripted";
/// Every run is charged to this tenant (tenants arrive with the control plane).
const TENANT: &str = "default";
/// The most one run may spend, in micro-USD.
const RUN_BUDGET: u64 = 50_000;
/// The scripted model answers this many runs and this many health checks.
const SCRIPTED_ANSWERS: usize = 10_000;
/// The semantic health check: a question with a known answer.
const HEALTH_QUESTION: &str = "What is 2 + 2? Answer with the number only.";

/// How the service is started.
pub struct Config {
    /// Where to listen (port 0: any free port).
    pub addr: SocketAddr,
    /// How often the semantic health check asks the model its question.
    pub semantic_check_every: Duration,
}

/// The running service.
pub struct Service {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Stops the HTTP server.
    pub server: actix_web::dev::ServerHandle,
    /// Resolves when the HTTP server has stopped.
    pub stopped: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The embedded runtime.
    pub runtime: RuntimeHandle,
}

/// What the handlers share.
struct State {
    assistant: AgentRef<Assistant>,
    ledger: Ledger,
    halts: Halts,
    metrics: Metrics,
    exposition: MetricsHandle,
    health: Health,
}

/// Answers a goal with one model call, standing in for a run's agents.
struct Assistant {
    id: AgentId,
    client: Client,
}

impl Actor for Assistant {
    type Context = Context<Self>;
}
agent!(Assistant);

/// Answer this goal, charging `account` and stopped by `halt`.
#[derive(Message)]
#[rtype(result = "Result<ChatResponse, LlmError>")]
struct Answer {
    goal: String,
    account: AccountPath,
    halt: CancellationToken,
}

impl Handler<Answer> for Assistant {
    type Result = ResponseFuture<Result<ChatResponse, LlmError>>;

    fn handle(&mut self, msg: Answer, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        // Created here, inside the sender's span, so the model call is its child.
        let span = telemetry::invoke_agent(&self.id);
        Box::pin(
            async move {
                let request = ChatRequest::new(MODEL).user(msg.goal).max_tokens(200);
                let options = CallOptions::new(msg.account, msg.halt);
                client.chat(request, &options).await
            }
            .instrument(span),
        )
    }
}

/// The offline model: a script of answers, priced like a small hosted model.
fn offline_client() -> Result<Client, LlmError> {
    let health = ScriptedReply::text("4").when("2 + 2");
    let answer = ScriptedReply::text(
        "Offline answer: this service runs a scripted model. Register OpenAi::from_env() \
         to ask a real one.",
    );
    let script = std::iter::repeat_n(health, SCRIPTED_ANSWERS)
        .chain(std::iter::repeat_n(answer, SCRIPTED_ANSWERS));
    let mut prices = PriceTable::bundled();
    let rates = Rates {
        input: 150_000,  // $0.15 per million input tokens
        output: 600_000, // $0.60 per million output tokens
        ..Rates::default()
    };
    prices.insert(MODEL, ModelPrice::new(PROVIDER, rates));
    Client::builder()
        .prices(prices)
        .provider(PROVIDER, Scripted::new(script))
        .build()
}

/// Starts the runtime and the HTTP server on the current actix system. Installs the global
/// metrics recorder first (once per process), so every agent and model records into it.
pub async fn start(config: Config) -> Result<Service, Box<dyn std::error::Error>> {
    let exposition = Prometheus::new().install()?;
    let runtime = Runtime::builder().attach()?;
    let client = offline_client()?;
    let (ledger, halts) = (Ledger::new(), Halts::new());
    let id = AgentId::new("assistant", "main");
    let assistant = runtime.spawn(id.clone(), {
        let client = client.clone();
        move || Assistant { id, client }
    })?;
    // The journal will add its "journal writable" check here.
    let health = Health::new(runtime.clone()).check(ModelsAvailable::new(client.clone()));
    let check = SemanticCheck::new(
        client,
        ChatRequest::new(MODEL).user(HEALTH_QUESTION).max_tokens(5),
        "4",
        CallOptions::new(
            ledger.path(&AccountId::Global)?,
            halts.global().cancellation(),
        ),
    );
    check.spawn(config.semantic_check_every);

    let state = web::Data::new(State {
        assistant,
        ledger,
        halts,
        metrics: runtime.metrics().clone(),
        exposition,
        health,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/runs", web::post().to(submit_run))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .workers(2)
    // Signals are ours (see `main`): actix-server's own handling would stop the whole actix
    // system, and the runtime's agents with it, before they could finish their work.
    .disable_signals()
    .bind(config.addr)?;
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    Ok(Service {
        addr,
        server: handle,
        stopped: actix_web::rt::spawn(server),
        runtime,
    })
}

/// `POST /runs` with the goal as the body: runs it and answers with the result and its cost.
async fn submit_run(state: web::Data<State>, goal: String) -> HttpResponse {
    let run = RunId::generate();
    let span = telemetry::invoke_workflow("answer", &run);
    let started = Instant::now();
    state.metrics.run_started();
    let result = run_once(&state, &run, goal).instrument(span).await;
    let outcome = match &result {
        Ok(_) => RunOutcome::Succeeded,
        Err((outcome, _)) => *outcome,
    };
    state.metrics.run_finished(outcome, started.elapsed());
    state.halts.remove_run(run.as_str());
    state.ledger.close(&AccountId::Run(run.to_string()));
    match result {
        Ok(answer) => HttpResponse::Ok().json(serde_json::json!({
            "run": run.as_str(),
            "answer": answer.content,
            "input_tokens": answer.usage.input_tokens,
            "output_tokens": answer.usage.output_tokens,
            "cost_micro_usd": answer.cost_micro_usd,
        })),
        Err((_, error)) => HttpResponse::BadGateway().json(serde_json::json!({
            "run": run.as_str(),
            "error": error,
        })),
    }
}

/// One run: its budget and halt token, and the assistant's answer; or how it ended and why.
async fn run_once(
    state: &State,
    run: &RunId,
    goal: String,
) -> Result<ChatResponse, (RunOutcome, String)> {
    let account = AccountId::Run(run.to_string());
    let limits = Limits {
        micro_usd: Some(RUN_BUDGET),
        ..Limits::default()
    };
    let failed = |e: &dyn std::fmt::Display| (RunOutcome::Failed, e.to_string());
    state
        .ledger
        .open(account.clone(), None, limits)
        .map_err(|e| failed(&e))?;
    let path = state.ledger.path(&account).map_err(|e| failed(&e))?;
    let halt = state.halts.run(TENANT, run.as_str()).cancellation();
    let envelope = Envelope::current().with_run(run.clone());
    let answer = state.assistant.ask(Answer {
        goal,
        account: path,
        halt,
    });
    match answer.envelope(envelope).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e @ LlmError::Cancelled)) => Err((RunOutcome::Halted, e.to_string())),
        Err(e @ AgentError::Halted { .. }) => Err((RunOutcome::Halted, e.to_string())),
        Ok(Err(e)) => Err(failed(&e)),
        Err(e) => Err(failed(&e)),
    }
}

/// `GET /metrics`: the Prometheus exposition.
async fn metrics(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(telemetry::CONTENT_TYPE)
        .body(state.exposition.render())
}

/// `GET /healthz`: 200 while the runtime's threads answer.
async fn healthz(state: web::Data<State>) -> HttpResponse {
    if state.health.liveness().await {
        HttpResponse::Ok().body("ok\n")
    } else {
        HttpResponse::ServiceUnavailable().body("the runtime does not answer\n")
    }
}

/// `GET /readyz`: 200 when every readiness check passes; each check's result as JSON.
async fn readyz(state: web::Data<State>) -> HttpResponse {
    let readiness = state.health.readiness().await;
    if readiness.ready {
        HttpResponse::Ok().json(readiness)
    } else {
        HttpResponse::ServiceUnavailable().json(readiness)
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let service = start(Config {
        addr: addr.parse()?,
        semantic_check_every: Duration::from_secs(60),
    })
    .await?;
    println!("listening on http://{} (Ctrl-C stops)", service.addr);
    stop_requested().await;
    // Take no new requests and finish those in flight, then stop the agents newest first.
    service.server.stop(true).await;
    service.stopped.await??;
    let report = service.runtime.shutdown(Duration::from_secs(5)).await;
    println!("stopped: {report:?}");
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what an orchestrator sends).
async fn stop_requested() {
    #[cfg(unix)]
    {
        use actix_web::rt::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM can be handled");
        tokio::select! {
            _ = actix_web::rt::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = actix_web::rt::signal::ctrl_c().await;
}
