//! `GET /metrics` (Prometheus), `GET /healthz` (liveness, with the models' breakers and the
//! standing halts as JSON detail), `GET /readyz` (readiness: can this process accept work):
//! for scrapers and orchestrators, so outside `/v1` and without the token; each answers `HEAD`
//! too. Keep the listen address private, or filter these paths at the proxy, if that matters.
//!
//! Readiness is the journal taking a durable write and the service not draining. An open
//! breaker and a halt are not in it (see [`impresario::runtime::health`] for why).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use impresario::runtime::health::{CheckFn, Health, JournalWritable};
use impresario::runtime::telemetry::CONTENT_TYPE;

use super::State;
use crate::engine::Engine;

/// Adds the three routes, for `GET` and `HEAD`.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/metrics")
                .route(web::get().to(metrics))
                .route(web::head().to(metrics)),
        )
        .service(
            web::resource("/healthz")
                .route(web::get().to(healthz))
                .route(web::head().to(healthz)),
        )
        .service(
            web::resource("/readyz")
                .route(web::get().to(readyz))
                .route(web::head().to(readyz)),
        );
}

/// The readiness checks (the journal takes a durable write, the service is not draining for
/// shutdown), and the detail of `/healthz` (breakers, standing halts).
pub fn health(engine: &Engine, draining: Arc<AtomicBool>) -> Health {
    Health::new(engine.runtime.clone())
        .models(engine.client.clone())
        .halts(engine.orchestrator.halts().clone())
        .check(JournalWritable::new(engine.orchestrator.journal().clone()))
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

/// `GET /healthz`: 200 while the runtime's threads answer, else 503; the body is the JSON
/// [`Detail`](impresario::runtime::health::Detail) (`live`, `models` with their breakers,
/// standing `halts`).
async fn healthz(state: web::Data<State>) -> HttpResponse {
    let detail = state.health.detail().await;
    if detail.live {
        HttpResponse::Ok().json(detail)
    } else {
        HttpResponse::ServiceUnavailable().json(detail)
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
