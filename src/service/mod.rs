//! `impresario serve`: the HTTP control plane (actix-web) over the embedded runtime.
//!
//! Routes (all under the bearer token, see [`routes`]): `POST /v1/runs`, `GET /v1/runs`,
//! `GET /v1/runs/{id}`, `GET /v1/runs/{id}/events` (server-sent events),
//! `POST /v1/runs/{id}/halt`, `POST /v1/runs/{id}/resume`,
//! `POST /v1/runs/{id}/approvals/{step}`, `POST /v1/halt`, `POST /v1/halt/lift`,
//! `GET /v1/tools`, `GET /v1/tenants`, `GET`/`PUT /v1/tenants/{tenant}` ([`tenants`]); and, without the token, `GET`/`HEAD`
//! `/metrics`, `/healthz`, `/readyz` ([`probes`]). The operator console is served at `/ui`
//! ([`console`]: HTML pages behind a session cookie got by signing in with a token).
//!
//! On SIGTERM (or Ctrl-C) it drains: new runs are refused (503), running runs are halted
//! gracefully with reason `shutdown` (each finishes its current step; past
//! `server.drain_timeout_secs` the halt becomes immediate), their event streams end, the
//! server stops, the journal is closed, and the process exits 0. Halted runs stay in the
//! journal and can be resumed (`POST /v1/runs/{id}/resume`) after the restart; runs a crash
//! cut off are resumed at start.

mod approvals;
mod auth;
mod body;
mod cluster;
mod console;
mod cursor;
mod errors;
mod probes;
mod routes;
mod runs;
mod semantic;
mod sse;
mod tenants;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use impresario::agents::RunHandle;
use impresario::runtime::halt::{Halt, HaltMode, HaltReason, HaltScope};
use impresario::runtime::health::Health;
use impresario::runtime::journal::{JournalError, RunEvent as Journaled, RunFilter, RunStatus};
use impresario::runtime::telemetry::{MetricsHandle, Prometheus};

use crate::config::Config;
use crate::engine::Engine;
use crate::identity::Identity;
use errors::ApiError;
use runs::{state_name, TrackedRuns};

/// What the handlers share.
pub struct State {
    engine: Engine,
    runs: TrackedRuns,
    tokens: auth::Tokens,
    body_limit: body::Limits,
    sse_keepalive: Duration,
    draining: Arc<AtomicBool>,
    exposition: MetricsHandle,
    health: Health,
    console: console::Console,
    /// Decisions recorded in PostgreSQL for every process (`journal.url`).
    approvals: Option<Arc<approvals::SharedApprovals>>,
    /// This replica's hold on the run queue (`journal.url`); `None`: runs start here at once.
    cluster: Option<Arc<cluster::Cluster>>,
}

impl State {
    /// Tracks a run just submitted or resumed, and records its events on the runtime.
    fn track(&self, handle: RunHandle, tenant: String, goal: String) -> Arc<runs::Tracked> {
        let (run, recording) = self.runs.track(handle, tenant, goal);
        let runtime = &self.engine.runtime;
        runtime.spawn_task(runtime.next_placement(), recording);
        if let Some(approvals) = self.approvals.clone() {
            let (watched, journal) = (run.clone(), self.engine.orchestrator.journal().clone());
            let id = run.handle.id().clone();
            let read = move |after| journal.read_after(&id, after).unwrap_or_default();
            let watching = async move { approvals.watch(watched, read).await };
            runtime.spawn_task(runtime.next_placement(), watching);
        }
        run
    }
}

/// How long a halted run gets to record its end after its drain deadline.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Serves until SIGTERM or Ctrl-C, then drains. Prints `listening on http://ADDR` once bound.
pub async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let (state, models) = start(&config).await?;
    let app_state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .configure(every_route)
            .default_service(web::to(|| async {
                Err::<String, _>(ApiError::unknown_route())
            }))
    })
    // Signals are ours: the runs drain before the server stops.
    .disable_signals()
    .shutdown_timeout(DRAIN_GRACE.as_secs())
    .bind(config.server.listen)
    .map_err(|e| {
        format!(
            "cannot listen on {} (server.listen): {e}",
            config.server.listen
        )
    })?;
    let address = server.addrs()[0];
    println!("listening on http://{address}");
    std::io::stdout().flush()?;
    tracing::info!(%address, %models, "serving");
    let server = server.run();
    let handle = server.handle();
    let serving = actix_web::rt::spawn(server);

    let signal = shutdown_signal().await;
    tracing::info!(signal, "draining");
    let ended = drain(&state, config.server.drain_timeout()).await;
    handle.stop(true).await;
    serving.await??;
    state.engine.runtime.shutdown(DRAIN_GRACE).await;
    let journal = release_journal(state).await;
    eprintln!(
        "impresario: stopped on {signal}; runs at shutdown ended: {ended:?}; journal {journal}"
    );
    Ok(())
}

/// Starts the engine, on PostgreSQL this replica's share of the run queue, and what runs
/// beside them (retention, the semantic health check); resumes the runs a crash cut off (a
/// replica leaves them to the queue). Returns the handlers' state and the models' description.
async fn start(config: &Config) -> Result<(web::Data<State>, String), Box<dyn std::error::Error>> {
    let tokens = config.server.bearer_tokens()?;
    for (_, token) in &tokens {
        impresario::runtime::redact::register(token);
    }
    // The metrics recorder goes first: the runtime's agents resolve their metrics when spawned.
    let exposition = Prometheus::new().install()?;
    let mut engine = Engine::start(config).await?;
    engine.ceilings.write_configured().await?;
    let ledger = engine.orchestrator.ledger().clone();
    engine.ceilings.report_warnings(ledger);
    let models = engine.models_description.clone();
    let cluster = match &engine.database {
        Some((db, fences)) => Some(cluster::Cluster::new(
            db.clone(),
            fences.clone(),
            config.cluster.queue_config()?,
        )?),
        None => None,
    };
    // A replica resumes no run by itself: runs cut off by a crash are claimed from the queue
    // once their lease expires.
    let recovered = match cluster {
        None => recover(&engine).await?,
        Some(_) => Vec::new(),
    };
    spawn_retention(config, &engine);
    semantic::spawn(config, &engine)?;
    let state = shared_state(config, engine, exposition, tokens, cluster);
    track_recovered(&state, recovered)?;
    if let Some(cluster) = &state.cluster {
        tracing::info!(
            replica = cluster.replica(),
            "a replica of the cluster on journal.url"
        );
        cluster::spawn(&state.clone().into_inner(), cluster.clone());
    }
    Ok((state, models))
}

/// How long the service waits, at exit, for the HTTP workers' threads to let go of its state.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Drops the service's hold on the journal and says whether that closed it: the last holder
/// closes it (what is queued is written, the WAL is folded into the file). An HTTP worker
/// reports itself stopped before its thread drops its copy of the state, so this waits up to
/// [`RELEASE_WAIT`] for those copies to go.
async fn release_journal(state: web::Data<State>) -> &'static str {
    let journal = Arc::downgrade(state.engine.orchestrator.journal());
    drop(state);
    let deadline = Instant::now() + RELEASE_WAIT;
    while journal.strong_count() > 0 && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    if journal.upgrade().is_none() {
        "closed"
    } else {
        "still in use (it closes at exit; every acknowledged event is already durable)"
    }
}

/// Applies journal retention now and then every `journal.retention_interval_secs`, if the
/// configuration limits anything.
fn spawn_retention(config: &Config, engine: &Engine) {
    let Some(policy) = config.journal.retention() else {
        return;
    };
    // Weak: the last holder of the journal closes it at shutdown, and this task must not
    // be that holder.
    let journal = Arc::downgrade(engine.orchestrator.journal());
    let every = config.journal.retention_interval();
    // The journal file must not grow without bound: retention deletes old ended runs and
    // compacts the file, once now and then at every interval.
    actix_web::rt::spawn(async move {
        loop {
            let Some(open) = journal.upgrade() else {
                return;
            };
            let applied = open.apply_retention(&policy).await;
            drop(open);
            match applied {
                Ok(report) if report.runs_deleted > 0 => tracing::info!(
                    runs = report.runs_deleted,
                    bytes_before = report.bytes_before,
                    bytes_after = report.bytes_after,
                    "journal retention"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "journal retention failed"),
            }
            actix_web::rt::time::sleep(every).await;
        }
    });
}

/// What the handlers share, from the configuration and the started engine.
fn shared_state(
    config: &Config,
    engine: Engine,
    exposition: MetricsHandle,
    tokens: Vec<(Identity, String)>,
    cluster: Option<Arc<cluster::Cluster>>,
) -> web::Data<State> {
    let draining = Arc::new(AtomicBool::new(false));
    web::Data::new(State {
        health: probes::health(&engine, draining.clone()),
        runs: TrackedRuns::new(
            usize::try_from(config.server.keep_finished_runs).unwrap_or(usize::MAX),
        ),
        tokens: auth::Tokens::new(tokens),
        body_limit: body::Limits {
            bytes: usize::try_from(config.server.body_limit_bytes).unwrap_or(usize::MAX),
            read_timeout: config.server.body_timeout(),
        },
        sse_keepalive: config.server.sse_keepalive(),
        draining,
        exposition,
        console: console::Console::start(&engine.runtime),
        approvals: engine
            .approval_store()
            .map(|store| Arc::new(approvals::SharedApprovals::start(store))),
        engine,
        cluster,
    })
}

/// Tracks the runs recovery resumed, with their tenant and goal from the journal.
fn track_recovered(state: &State, recovered: Vec<RunHandle>) -> Result<(), JournalError> {
    for handle in recovered {
        let entries = state.engine.orchestrator.journal().read(handle.id())?;
        let (tenant, goal) = match entries.first().map(|e| &e.event) {
            Some(Journaled::RunSubmitted { tenant, goal, .. }) => (tenant.clone(), goal.clone()),
            _ => (String::new(), String::new()),
        };
        tracing::info!(run = %handle.id(), "resumed a run cut off by a crash");
        state.track(handle, tenant, goal);
    }
    Ok(())
}

/// The `/v1` routes, the probes and the console.
fn every_route(config: &mut web::ServiceConfig) {
    routes::configure(config);
    probes::configure(config);
    console::configure(config);
}

/// Resumes the runs a crash cut off (journaled as active); halted ones wait for
/// `POST /v1/runs/{id}/resume`. A run that cannot be resumed is logged and left in the journal.
async fn recover(engine: &Engine) -> Result<Vec<RunHandle>, JournalError> {
    let mut resumed = Vec::new();
    for summary in engine
        .orchestrator
        .runs(&RunFilter::all().status(RunStatus::Active))?
    {
        match engine.orchestrator.resume(&summary.run).await {
            Ok(handle) => resumed.push(handle),
            Err(e) => {
                tracing::error!(run = %summary.run, error = %e, "could not resume a run a crash cut off; it stays in the journal")
            }
        }
    }
    Ok(resumed)
}

/// Refuses new runs, halts the running ones gracefully (reason `shutdown`), and waits until
/// each recorded its end; a replica then hands them back to the run queue. Returns how many ended in each state.
async fn drain(state: &State, timeout: Duration) -> BTreeMap<String, usize> {
    state.draining.store(true, Ordering::Release);
    let running: Vec<_> = state
        .runs
        .all()
        .into_iter()
        .filter(|run| run.result().is_none())
        .collect();
    let halt = Halt::new(
        HaltScope::All,
        HaltMode::Graceful { deadline: timeout },
        HaltReason::Shutdown,
    )
    .with_detail("the service is shutting down");
    state.engine.orchestrator.halts().halt_with(halt);
    let all_ended = futures_util::future::join_all(running.iter().map(|run| run.ended()));
    if tokio::time::timeout(timeout + DRAIN_GRACE, all_ended)
        .await
        .is_err()
    {
        tracing::warn!("some runs did not end within the drain timeout");
    }
    let mut ended = BTreeMap::new();
    for run in &running {
        *ended.entry(state_name(&run.state())).or_insert(0) += 1;
    }
    if let Some(cluster) = &state.cluster {
        let handed = cluster.hand_back().await;
        tracing::info!(runs = handed, "handed the runs back to the queue");
    }
    ended
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT), with the signal's name.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the service");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
