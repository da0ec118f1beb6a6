//! `GET /metrics` (Prometheus), `GET /healthz` (liveness), `GET /readyz` (readiness): for
//! scrapers and orchestrators, so outside `/v1` and without the token. Keep the listen address
//! private, or filter these paths at the proxy, if that matters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use impresario::runtime::health::{CheckFn, Health, ModelsAvailable};
use impresario::runtime::journal::{Journal, RunFilter};
use impresario::runtime::telemetry::CONTENT_TYPE;

use super::State;
use crate::engine::Engine;

/// Adds the three routes.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// The readiness checks: a model is not circuit-open, the journal answers a query, and the
/// service is not draining for shutdown.
pub fn health(engine: &Engine, draining: Arc<AtomicBool>) -> Health {
    let journal: Arc<dyn Journal> = engine.orchestrator.journal().clone();
    Health::new(engine.runtime.clone())
        .check(ModelsAvailable::new(engine.client.clone()))
        .check(CheckFn::new("journal_readable", move || {
            let answer = journal.runs(&RunFilter::all().limit(1));
            async move { answer.map(drop).map_err(|e| e.to_string()) }
        }))
        .check(CheckFn::new("accepting_runs", move || {
            let draining = draining.load(Ordering::Acquire);
            async move {
                if draining {
                    Err("draining for shutdown".to_owned())
                } else {
                    Ok(())
                }
            }
        }))
}

/// `GET /metrics`: the Prometheus text exposition.
async fn metrics(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(state.exposition.render())
}

/// `GET /healthz`: 200 while the runtime's threads answer, else 503.
async fn healthz(state: web::Data<State>) -> HttpResponse {
    if state.health.liveness().await {
        HttpResponse::Ok().body("ok\n")
    } else {
        HttpResponse::ServiceUnavailable().body("the runtime does not answer\n")
    }
}

/// `GET /readyz`: 200 when every check passes, else 503; each check's result as JSON.
async fn readyz(state: web::Data<State>) -> HttpResponse {
    let readiness = state.health.readiness().await;
    if readiness.ready {
        HttpResponse::Ok().json(readiness)
    } else {
        HttpResponse::ServiceUnavailable().json(readiness)
    }
}
