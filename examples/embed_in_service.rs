//! A long-running actix-web service that embeds the runtime, as an operator runs it: it serves
//! `POST /runs`, and `/metrics`, `/healthz` and `/readyz` for Prometheus and the orchestrator.
//!
//! Run: `cargo run --example embed_in_service` (listens on 127.0.0.1:8080, or `ADDR`), then
//!
//! ```sh
//! curl -X POST 127.0.0.1:8080/runs -d 'What is the default restart intensity of a supervisor?'
//! curl 127.0.0.1:8080/metrics                                    # Prometheus exposition
//! curl -i 127.0.0.1:8080/healthz ; curl -i 127.0.0.1:8080/readyz
//! ```
//!
//! `POST /runs` submits a real run (planner, executors and the default tools under a run
//! supervisor, a budget, a halt token, a journal) and answers with its outcome and usage.
//! Everything is offline: the runs' model is the offline stand-in (`impresario::offline`), priced
//! like a small hosted model so every run costs a few micro-USD of pretend money, and a scripted
//! model answers the semantic health check. `impresario serve` is the full control plane; this
//! is how to embed the runtime in a service of your own.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use impresario::agents::{Autonomy, Budget, ModelMap, Orchestrator, RunRequest, RunState};
use impresario::offline::OfflineModel;
use impresario::prelude::*;
use impresario::runtime::health::{Health, JournalWritable, SemanticCheck};
use impresario::runtime::ledger::AccountId;
use impresario::runtime::llm::{
    CallOptions, ChatRequest, Client, LlmError, ModelPrice, PriceTable, Rates, Scripted,
    ScriptedReply,
};
use impresario::runtime::telemetry::{self, MetricsHandle, Prometheus};

/// The runs' model (the offline stand-in), and the provider name it is registered under.
pub const MODEL: &str = "offline-small";
/// The provider serving [`MODEL`].
pub const PROVIDER: &str = "offline";
/// The model that answers the semantic health check.
pub const HEALTH_MODEL: &str = "offline-health";
/// The most one run may spend.
const RUN_BUDGET_USD: f64 = 0.05;
/// The scripted health model answers this many checks.
const HEALTH_ANSWERS: usize = 10_000;
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
    orchestrator: Orchestrator,
    exposition: MetricsHandle,
    health: Health,
}

/// The offline models, priced like small hosted ones.
fn offline_client() -> Result<Client, LlmError> {
    let mut prices = PriceTable::bundled();
    let rates = Rates {
        input: 150_000,  // $0.15 per million input tokens
        output: 600_000, // $0.60 per million output tokens
        ..Rates::default()
    };
    prices.insert(MODEL, ModelPrice::new(PROVIDER, rates));
    prices.insert(HEALTH_MODEL, ModelPrice::new("scripted", rates));
    let health = std::iter::repeat_n(ScriptedReply::text("4"), HEALTH_ANSWERS);
    Client::builder()
        .prices(prices)
        .provider(PROVIDER, OfflineModel::new())
        .provider("scripted", Scripted::new(health))
        .build()
}

/// Starts the runtime and the HTTP server on the current actix system. Installs the global
/// metrics recorder first (once per process), so every agent and model records into it.
pub async fn start(config: Config) -> Result<Service, Box<dyn std::error::Error>> {
    let exposition = Prometheus::new().install()?;
    let runtime = Runtime::builder().attach()?;
    let client = offline_client()?;
    let orchestrator =
        Orchestrator::start(&runtime, client.clone(), impresario::tools::registry()?).await?;
    let health = Health::new(runtime.clone())
        .models(client.clone())
        .halts(orchestrator.halts().clone())
        .check(JournalWritable::new(orchestrator.journal().clone()));
    let check = SemanticCheck::new(
        client,
        ChatRequest::new(HEALTH_MODEL)
            .user(HEALTH_QUESTION)
            .max_tokens(5),
        "4",
        CallOptions::new(
            orchestrator.ledger().path(&AccountId::Global)?,
            orchestrator.halts().global().cancellation(),
        ),
    );
    check.spawn(config.semantic_check_every);

    let state = web::Data::new(State {
        orchestrator,
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

/// `POST /runs` with the goal as the body: runs it and answers with its outcome and usage.
async fn submit_run(state: web::Data<State>, goal: String) -> HttpResponse {
    let request = RunRequest::new(goal, ModelMap::all(MODEL))
        .tools(impresario::tools::NAMES.iter().copied())
        .budget(Budget::usd(RUN_BUDGET_USD))
        .autonomy(Autonomy::Full);
    let run = match state.orchestrator.submit(request).await {
        Ok(run) => run,
        Err(e) => {
            return HttpResponse::UnprocessableEntity()
                .json(serde_json::json!({ "error": e.to_string() }))
        }
    };
    let result = run.wait().await;
    let body = serde_json::json!({
        "run": result.run.as_str(),
        "state": result.state,
        "steps": result.steps.len(),
        "tokens": result.usage.tokens,
        "model_calls": result.usage.model_calls,
        "cost_micro_usd": result.usage.micro_usd,
    });
    match result.state {
        RunState::Succeeded { .. } => HttpResponse::Ok().json(body),
        _ => HttpResponse::BadGateway().json(body),
    }
}

/// `GET /metrics`: the Prometheus exposition.
async fn metrics(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(telemetry::CONTENT_TYPE)
        .body(state.exposition.render())
}

/// `GET /healthz`: 200 while the runtime answers, else 503; breakers and standing halts as JSON.
async fn healthz(state: web::Data<State>) -> HttpResponse {
    let detail = state.health.detail().await;
    if detail.live {
        HttpResponse::Ok().json(detail)
    } else {
        HttpResponse::ServiceUnavailable().json(detail)
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
