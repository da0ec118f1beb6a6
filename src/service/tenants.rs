//! `GET /v1/tenants` (every tenant an admin's token sees; a tenant's token: its own),
//! `GET /v1/tenants/{tenant}` (the tenant's own token, or an admin's) and
//! `PUT /v1/tenants/{tenant}` (an admin's): a tenant's ceiling, what it spent and has reserved
//! (this process's ledger, spend rebuilt from the journal at start; with `journal.url`, the
//! database's, counting every process), and its journaled runs by status.

use actix_web::{web, HttpResponse};
use impresario::runtime::journal::{RunFilter, RunStatus};
use impresario::runtime::ledger::utc_text;
use serde_json::{json, Value};

use super::auth;
use super::body;
use super::errors::ApiError;
use super::State;
use crate::config::checked_micro_usd;
use crate::identity::Identity;

/// Adds the routes (inside the authenticated `/v1` scope).
pub fn configure(config: &mut web::ServiceConfig) {
    config.service(web::resource("/tenants").route(web::get().to(list)));
    config.service(
        web::resource("/tenants/{tenant}")
            .route(web::get().to(show))
            .route(web::put().to(set)),
    );
}

/// `GET /v1/tenants/{tenant}` -> `{"tenant", "ceiling_micro_usd", "spent_micro_usd",
/// "reserved_micro_usd", "period", "period_start", "runs": {"active", "halted", "finished"}}`
/// (`spent_micro_usd`: in the current `period`, `none`, `day` or `month`, which started at
/// `period_start`, RFC 3339 in UTC, `null` without a period); 404 for another tenant's token.
async fn show(
    state: web::Data<State>,
    token: web::ReqData<Identity>,
    tenant: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !token.sees(&tenant) {
        return Err(ApiError::unknown_tenant(&tenant));
    }
    Ok(HttpResponse::Ok().json(describe(&state, &tenant).await?))
}

/// `GET /v1/tenants` -> `{"tenants": [...]}`, each as `GET /v1/tenants/{tenant}` shows it, by
/// name: every tenant with an account or a ceiling of its own (a tenant's token: its own).
async fn list(
    state: web::Data<State>,
    token: web::ReqData<Identity>,
) -> Result<HttpResponse, ApiError> {
    let names: Vec<String> = match token.tenant() {
        Some(own) => vec![own.to_owned()],
        None => state
            .engine
            .ceilings
            .tenants()
            .await
            .map_err(ApiError::internal)?
            .into_iter()
            .map(|t| t.as_str().to_owned())
            .collect(),
    };
    let mut tenants = Vec::with_capacity(names.len());
    for name in &names {
        tenants.push(describe(&state, name).await?);
    }
    Ok(HttpResponse::Ok().json(json!({ "tenants": tenants })))
}

/// `PUT /v1/tenants/{tenant}`: `{"ceiling_usd": 25.0}` (or `null`: back to the configured
/// ceiling) -> 200 and the tenant as `GET` shows it. Admin only (403). The ceiling applies at once, to the next
/// reservation of every run of the tenant, and survives a restart.
async fn set(
    state: web::Data<State>,
    token: web::ReqData<Identity>,
    tenant: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    auth::require_admin(&token, "setting a tenant's ceiling")?;
    let mut body = body::read(payload, state.body_limit).await?;
    if !body.has("ceiling_usd") {
        return Err(ApiError::invalid(
            "ceiling_usd",
            "is required: an amount of dollars, or null for the configured ceiling",
        ));
    }
    let ceiling = match body.take::<f64>("ceiling_usd")? {
        Some(usd) => Some(
            checked_micro_usd(usd).map_err(|problem| ApiError::invalid("ceiling_usd", problem))?,
        ),
        None => None,
    };
    body.done()?;
    state
        .engine
        .ceilings
        .set(&tenant, ceiling)
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(describe(&state, &tenant).await?))
}

/// The tenant as the routes show it.
async fn describe(state: &State, tenant: &str) -> Result<Value, ApiError> {
    let budget = state
        .engine
        .ceilings
        .budget(tenant)
        .await
        .map_err(ApiError::internal)?;
    let runs = state
        .engine
        .orchestrator
        .runs(&RunFilter::all().tenant(tenant.to_owned()))
        .map_err(|e| ApiError::internal(format!("cannot read the journal: {e}")))?;
    let count = |status: RunStatus| runs.iter().filter(|r| r.status == status).count();
    Ok(json!({
        "tenant": tenant,
        "ceiling_micro_usd": budget.ceiling,
        "spent_micro_usd": budget.spent,
        "reserved_micro_usd": budget.reserved,
        "period": budget.period.name(),
        "period_start": budget.period_start.map(utc_text),
        "runs": {
            "active": count(RunStatus::Active),
            "halted": count(RunStatus::Halted),
            "finished": count(RunStatus::Finished),
        },
    }))
}
