//! The `/v1` routes. Every one needs the bearer token ([`super::auth`]); bodies are JSON
//! objects ([`super::body`]); errors are JSON ([`super::errors`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use impresario::agents::{Autonomy, Budget, ResumeError, RunRequest, RunState, RunUpdate};
use impresario::runtime::halt::{Halt, HaltMode, HaltReason, HaltScope};
use impresario::runtime::journal::{
    JournalEntry, RunEvent as Journaled, RunFilter, RunStatus, RunSummary,
};
use impresario::runtime::RunId;
use impresario_pg::approvals::Decision as StoredDecision;
use serde::Deserialize;
use serde_json::{json, Value};

use super::approvals::waiting_request;
use super::auth;
use super::body::{self, Fields};
use super::errors::ApiError;
use super::runs::{state_name, Tracked};
use super::{cluster, cursor, sse, tenants, State};
use crate::config::checked_micro_usd;
use crate::identity::Identity;
use crate::journaled;

/// How long a graceful halt that names no `deadline_secs` lets the current step run.
pub(super) const GRACEFUL_DEADLINE: Duration = Duration::from_secs(30);

/// Adds the `/v1` scope.
pub fn configure(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("/v1")
            .wrap(from_fn(auth::require_token))
            .service(
                web::resource("/runs")
                    .route(web::post().to(submit))
                    .route(web::get().to(list)),
            )
            .service(web::resource("/runs/{id}").route(web::get().to(show)))
            .service(web::resource("/runs/{id}/events").route(web::get().to(events)))
            .service(web::resource("/runs/{id}/halt").route(web::post().to(halt_run)))
            .service(web::resource("/runs/{id}/resume").route(web::post().to(resume)))
            .service(web::resource("/runs/{id}/approvals/{step}").route(web::post().to(decide)))
            .service(web::resource("/halt").route(web::post().to(halt)))
            .service(web::resource("/halt/lift").route(web::post().to(lift)))
            .service(web::resource("/tools").route(web::get().to(tools)))
            .configure(tenants::configure),
    );
}

type Data = web::Data<State>;
/// Who the request is (its bearer token's [`Identity`]).
type Token = web::ReqData<Identity>;

/// `POST /v1/runs`: `{"goal", "tenant"?, "budget_usd"?, "tools"?, "autonomy"?, "max_steps"?,
/// "stream"?}` -> 201 `{"id", "state"}`. Missing fields take the configured defaults; with
/// `"stream": true` the run's events carry its models' text as `delta` events.
/// A tenant's token submits for its tenant (naming another is a 422).
async fn submit(
    state: Data,
    token: Token,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut body = body::read(payload, state.body_limit).await?;
    if state.draining.load(Ordering::Acquire) {
        return Err(ApiError::shutting_down());
    }
    let goal: String = body.require("goal")?;
    let mut request = state.engine.request(goal.clone());
    match (body.take::<String>("tenant")?, token.tenant()) {
        (Some(named), Some(own)) if named != own => {
            return Err(ApiError::invalid(
                "tenant",
                format!("this token is bound to tenant {own:?}; leave tenant out or name {own:?}"),
            ))
        }
        (_, Some(own)) => request = request.tenant(own),
        (Some(named), None) => request = request.tenant(named),
        (None, None) => {}
    }
    if let Some(usd) = body.take::<f64>("budget_usd")? {
        // Not an amount (negative, 1e300): 422 here; above budget.max_run_usd: 422 on submit.
        checked_micro_usd(usd).map_err(|problem| ApiError::invalid("budget_usd", problem))?;
        // The money is the request's; the token limit stays the configured one.
        let tokens = request.budget.tokens;
        request = request.budget(Budget {
            tokens,
            ..Budget::usd(usd)
        });
    }
    if let Some(tools) = body.take::<Vec<String>>("tools")? {
        request = request.tools(tools);
    }
    if let Some(autonomy) = body.take::<Autonomy>("autonomy")? {
        request = request.autonomy(autonomy);
    }
    if let Some(max_steps) = body.take::<u32>("max_steps")? {
        request = request.max_steps(max_steps);
    }
    if let Some(stream) = body.take::<bool>("stream")? {
        request = request.stream(stream);
    }
    body.done()?;
    let (id, now) = start(&state, request, goal).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/runs/{id}")))
        .json(json!({ "id": id, "state": now })))
}

/// Starts and tracks the run `request` asks for (a cluster's replica queues it instead).
/// Returns its id and its state now.
async fn start(
    state: &State,
    request: RunRequest,
    goal: String,
) -> Result<(RunId, RunState), ApiError> {
    if let Some(cluster) = &state.cluster {
        let id = cluster::submit(state, cluster, &request).await?;
        return Ok((id, RunState::Queued));
    }
    let tenant = request.tenant.clone();
    let handle = state.engine.orchestrator.submit(request).await?;
    let run = state.track(handle, tenant, goal);
    Ok((run.handle.id().clone(), run.state()))
}

/// The query of `GET /v1/runs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    tenant: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// A page of `GET /v1/runs` has this many runs unless `limit` says otherwise.
const PAGE: usize = 100;
/// The largest `limit`.
const MAX_PAGE: usize = 1000;

/// `GET /v1/runs[?tenant=...][&limit=N][&after=CURSOR]` -> `{"runs": [...], "next": CURSOR |
/// null}`: a page of the journaled runs (of this process and earlier ones,
/// [`journaled::listed`]), oldest first, with `goal`, `state` and `usage` live for the runs this
/// process started or resumed. `next` continues after the page's last run (the order is stable:
/// runs started later come later), `null` on the last page.
/// A tenant's token lists its tenant's runs only.
async fn list(state: Data, token: Token, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<ListQuery>::from_query(request.query_string())
        .map_err(|e| ApiError::invalid("query", e))?;
    let limit = query.limit.unwrap_or(PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("{limit} is out of range; use 1 to {MAX_PAGE}"),
        ));
    }
    let mut filter = RunFilter::all().limit(limit + 1);
    match (query.tenant.as_deref(), token.tenant()) {
        // Another tenant's runs are none of this token's.
        (Some(named), Some(own)) if named != own => {
            return Ok(HttpResponse::Ok().json(json!({ "runs": [], "next": null })))
        }
        (_, Some(tenant)) | (Some(tenant), None) => filter = filter.tenant(tenant.to_owned()),
        (None, None) => {}
    }
    if let Some(after) = &query.after {
        filter.after = Some(cursor::parse(after)?);
    }
    let mut journaled = state
        .engine
        .orchestrator
        .runs(&filter)
        .map_err(|e| ApiError::internal(format!("cannot read the journal: {e}")))?;
    let next = (journaled.len() > limit).then(|| {
        journaled.truncate(limit);
        journaled.last().map(cursor::of)
    });
    let runs: Vec<Value> = journaled
        .iter()
        .map(|summary| listed_run(&state, summary))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "runs": runs, "next": next.flatten() })))
}

/// A journaled run as `GET /v1/runs` lists it ([`journaled::listed`]), with `goal`, `state`
/// and `usage` live when this process started or resumed it.
pub(super) fn listed_run(state: &State, summary: &RunSummary) -> Value {
    let mut listed = journaled::listed(summary);
    if let Some(run) = state.runs.get(summary.run.as_str()) {
        let ours = tracked(state, &run);
        for key in ["goal", "status", "state", "usage"] {
            listed[key] = ours[key].clone();
        }
    }
    listed
}

/// The query of `GET /v1/tools`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolsQuery {
    tenant: Option<String>,
}

/// `GET /v1/tools[?tenant=]` -> `{"tools": [...]}`: every tool a run may ask for (those runs
/// of `tenant` may use), with its source (`builtin` or `mcp:<server>`), description, argument
/// schema, impact and idempotency. MCP tools are listed as their servers list them now. A
/// tenant's token lists its tenant's tools (another tenant: 404).
async fn tools(state: Data, token: Token, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let mut query = web::Query::<ToolsQuery>::from_query(request.query_string())
        .map_err(|e| ApiError::invalid("query", e))?;
    match (query.tenant.as_deref(), token.tenant()) {
        (Some(named), Some(own)) if named != own => return Err(ApiError::unknown_tenant(named)),
        (_, Some(own)) => query.tenant = Some(own.to_owned()),
        _ => {}
    }
    let tools: Vec<Value> = state
        .engine
        .orchestrator
        .tools()
        .list()
        .iter()
        .filter(|tool| query.tenant.as_deref().is_none_or(|t| tool.allows(t)))
        .map(|tool| {
            json!({
                "name": tool.name(),
                "source": tool.source(),
                "description": tool.description(),
                "schema": tool.schema(),
                "impact": tool.impact(),
                "idempotent": tool.idempotent(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "tools": tools })))
}

/// `GET /v1/runs/{id}` -> the run ([`journaled::shown`]): as this process runs it, else as
/// the journal has it.
async fn show(state: Data, token: Token, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    if let Some(run) = state.runs.get(&id) {
        if !token.sees(&run.tenant) {
            return Err(ApiError::unknown_run(&id));
        }
        let steps: Vec<Value> = run
            .events()
            .borrow()
            .iter()
            .filter_map(|event| match event {
                RunUpdate::StepFinished(record) => serde_json::to_value(record).ok(),
                _ => None,
            })
            .collect();
        let mut shown = tracked(&state, &run);
        shown["steps"] = Value::Array(steps);
        return Ok(HttpResponse::Ok().json(shown));
    }
    let entries = state
        .engine
        .orchestrator
        .journal()
        .read(&RunId::new(id.as_str()))
        .map_err(|e| ApiError::internal(format!("cannot read the journal: {e}")))?;
    let shown = journaled::shown(&entries)
        .filter(|run| run["tenant"].as_str().is_some_and(|t| token.sees(t)))
        .ok_or_else(|| ApiError::unknown_run(&id))?;
    Ok(HttpResponse::Ok().json(shown))
}

/// `GET /v1/runs/{id}/events`: server-sent events ([`sse`]); on a replica of a cluster, the
/// journal of a run another replica drives, followed live ([`sse::follow`]).
async fn events(
    state: Data,
    token: Token,
    id: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    // A client reconnecting with `Last-Event-ID: n` continues after event n.
    let from = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let response = || {
        let mut response = HttpResponse::Ok();
        response
            .content_type("text/event-stream")
            .insert_header((header::CACHE_CONTROL, "no-cache"));
        response
    };
    match find(&state, &token, &id) {
        Ok(run) => Ok(response().streaming(sse::stream(run, from, state.sse_keepalive))),
        // Journaled and visible to this token, driven elsewhere.
        Err(e) if e.status_code() == StatusCode::CONFLICT => {
            let Some(cluster) = &state.cluster else {
                return Err(e);
            };
            // Subscribed before the journal is first read: no text between the two is missed.
            let deltas = cluster.deltas();
            let journal = state.engine.orchestrator.journal().clone();
            let run = (RunId::new(id.as_str()), from as u64);
            let followed = sse::follow(journal, run, deltas, state.sse_keepalive);
            Ok(response().streaming(followed))
        }
        Err(e) => Err(e),
    }
}

/// `POST /v1/runs/{id}/halt`: `{"mode"?: "immediate" | "graceful", "deadline_secs"?, "detail"?}`
/// -> 202. Immediate by default; 409 if the run already ended. With `journal.url`, a run
/// driven by another process on the database is halted there (the halt is recorded, and that
/// process applies it).
async fn halt_run(
    state: Data,
    token: Token,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let here = match find(&state, &token, &id) {
        Err(unknown) if unknown.status_code() == StatusCode::NOT_FOUND => return Err(unknown),
        here => here,
    };
    let mut body = body::read(payload, state.body_limit).await?;
    let halt = operator_halt(&mut body, HaltScope::Run(id.as_str().into()))?;
    body.done()?;
    match here {
        Ok(run) => halt_tracked(&state, &run, halt).await?,
        Err(not_here) => halt_elsewhere(&state, &id, &halt, not_here).await?,
    }
    Ok(HttpResponse::Accepted().json(json!({ "id": id.as_str(), "halted": true })))
}

/// Halts a run of this process, and records the halt for the other processes on the database
/// (so a resume elsewhere, or this process's recovery after a crash, sees it); 409 if it
/// already ended.
pub(super) async fn halt_tracked(state: &State, run: &Tracked, halt: Halt) -> Result<(), ApiError> {
    if run.state().is_terminal() || !run.handle.halt_with(halt.clone()) {
        return Err(ApiError::conflict(format!(
            "run {} already ended ({}); there is nothing to halt",
            run.handle.id(),
            state_name(&run.state())
        )));
    }
    state
        .engine
        .record_halt(&halt)
        .await
        .map_err(ApiError::internal)
}

/// Halts run `id`, which this process is not running and `identity` may see (`not_here` is
/// [`find`]'s 409): on PostgreSQL, a run the journal shows active is halted by recording the
/// halt, which the process driving it applies; otherwise `not_here`.
async fn halt_elsewhere(
    state: &State,
    id: &str,
    halt: &Halt,
    not_here: ApiError,
) -> Result<(), ApiError> {
    if !state.engine.shares_halts() || journal_status(state, id)? != RunStatus::Active.as_str() {
        return Err(not_here);
    }
    state
        .engine
        .record_halt(halt)
        .await
        .map_err(ApiError::internal)
}

/// The journaled events of run `id` (none for an unknown run).
pub(super) fn journal_entries(state: &State, id: &str) -> Result<Vec<JournalEntry>, ApiError> {
    state
        .engine
        .orchestrator
        .journal()
        .read(&RunId::new(id))
        .map_err(|e| ApiError::internal(format!("cannot read the journal: {e}")))
}

/// The journal's status of run `id` (`active`, `halted`, `finished`).
fn journal_status(state: &State, id: &str) -> Result<String, ApiError> {
    let entries = journal_entries(state, id)?;
    let shown = journaled::shown(&entries).ok_or_else(|| ApiError::unknown_run(id))?;
    Ok(shown["status"].as_str().unwrap_or_default().to_owned())
}

/// `POST /v1/runs/{id}/resume` -> 202 `{"id", "state"}`: a halted run, or one a crash cut
/// off, goes on from its journal (journaled model answers and tool results are served, not
/// repeated). 404 if the journal has no such run; 409 if it is running or finished.
async fn resume(
    state: Data,
    token: Token,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let resumed = resume_run(&state, &token, &id).await?;
    Ok(HttpResponse::Accepted().json(json!({ "id": id.as_str(), "state": resumed })))
}

/// Resumes a halted (or crash-interrupted) run of a tenant `identity` sees from its journal,
/// and tracks it (a cluster's replica queues it instead); another tenant's run is a 404.
/// Returns the run's state now.
pub(super) async fn resume_run(
    state: &State,
    identity: &Identity,
    id: &str,
) -> Result<RunState, ApiError> {
    if state.draining.load(Ordering::Acquire) {
        return Err(ApiError::shutting_down());
    }
    let run = RunId::new(id);
    let entries = journal_entries(state, run.as_str())?;
    let (tenant, goal) = match entries.first().map(|e| &e.event) {
        Some(Journaled::RunSubmitted { tenant, goal, .. }) if identity.sees(tenant) => {
            (tenant.clone(), goal.clone())
        }
        _ => return Err(ApiError::unknown_run(id)),
    };
    if let Some(cluster) = &state.cluster {
        return cluster::resume(state, cluster, &run, &entries).await;
    }
    // A run that just ended is wound down (agents stopped) before its result is recorded;
    // until then the orchestrator still counts it as running.
    if let Some(ours) = state.runs.get(id).filter(|r| r.state().is_terminal()) {
        ours.ended().await;
    }
    // The run's recorded halts are over, or the check before its next step would halt it again.
    if state.runs.get(id).is_none_or(|r| r.state().is_terminal()) {
        state
            .engine
            .lift_recorded(&HaltScope::Run(run.clone()))
            .await
            .map_err(ApiError::internal)?;
    }
    let handle = match state.engine.orchestrator.resume(&run).await {
        Ok(handle) => handle,
        Err(ResumeError::Unknown(_)) => return Err(ApiError::unknown_run(id)),
        Err(
            e @ (ResumeError::Running(_) | ResumeError::Finished(_) | ResumeError::TenantHalted(_)),
        ) => return Err(ApiError::conflict(e.to_string())),
        Err(ResumeError::Submit(e)) => return Err(e.into()),
        Err(e) => return Err(ApiError::internal(e.to_string())),
    };
    Ok(state.track(handle, tenant, goal).state())
}

/// A decision about a step.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum Decision {
    /// Let it run.
    Approve,
    /// Refuse it (the run goes on without it).
    Reject,
}

/// `POST /v1/runs/{id}/approvals/{step}`: `{"decision": "approve" | "reject", "reason"?}` ->
/// 202; 409 unless that step is the one waiting for approval. With `journal.url`, any process
/// on the database takes the decision for any run ([`super::approvals`]).
async fn decide(
    state: Data,
    token: Token,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (id, step) = path.into_inner();
    // In memory the decision goes to the run's driver, which must run here (404, or 409 if it
    // runs elsewhere). With `journal.url` it is recorded: `decide_step` reads the journal once
    // and answers 404 for a run the token does not see.
    if state.approvals.is_none() {
        find(&state, &token, &id)?;
    }
    let step: u32 = step
        .parse()
        .map_err(|_| ApiError::invalid("step", format!("{step:?} is not a step number")))?;
    let mut body = body::read(payload, state.body_limit).await?;
    let decision: Decision = body.require("decision")?;
    let reason: Option<String> = body.take("reason")?;
    body.done()?;
    decide_step(&state, &token, &id, step, decision, reason).await?;
    Ok(HttpResponse::Accepted().json(json!({ "id": id, "step": step })))
}

/// Approves or rejects `step` of run `id`, which `identity` sees; 409 unless that step is the
/// one waiting. In memory: to the run's driver, which must run here. With `journal.url`:
/// recorded for the process driving the run (which may be down: the run gets it when resumed).
pub(super) async fn decide_step(
    state: &State,
    identity: &Identity,
    id: &str,
    step: u32,
    decision: Decision,
    reason: Option<String>,
) -> Result<(), ApiError> {
    let reason = reason.unwrap_or_else(|| "rejected by an operator".into());
    let Some(shared) = &state.approvals else {
        let run = find(state, identity, id)?;
        return decide_here(&run, step, decision, reason);
    };
    let entries = journal_entries(state, id)?;
    let status = journaled::shown(&entries)
        .filter(|run| run["tenant"].as_str().is_some_and(|t| identity.sees(t)))
        .ok_or_else(|| ApiError::unknown_run(id))?["status"]
        .clone();
    let requested = waiting_request(&entries, step)
        .filter(|_| status != RunStatus::Finished.as_str())
        .ok_or_else(|| not_waiting(id, step, status.as_str().unwrap_or("unknown")))?;
    let approved = matches!(decision, Decision::Approve);
    let recorded = shared
        .decide(&StoredDecision {
            run: RunId::new(id),
            requested_seq: requested,
            step,
            approved,
            reason: (!approved).then_some(reason),
        })
        .await
        .map_err(ApiError::internal)?;
    match recorded {
        true => Ok(()),
        false => Err(ApiError::conflict(format!(
            "step {step} of run {id} was already decided otherwise; the first decision counts"
        ))),
    }
}

/// 409: `step` of run `id` is not waiting for approval.
fn not_waiting(id: &str, step: u32, now: &str) -> ApiError {
    ApiError::conflict(format!(
        "step {step} of run {id} is not waiting for approval; the run is {now}"
    ))
}

/// Approves or rejects `step` of `run`, which runs here; 409 unless that step is the one
/// waiting.
fn decide_here(
    run: &Tracked,
    step: u32,
    decision: Decision,
    reason: String,
) -> Result<(), ApiError> {
    match run.state() {
        RunState::AwaitingApproval { step: waiting, .. } if waiting == step => {}
        other => {
            return Err(not_waiting(
                run.handle.id().as_str(),
                step,
                &state_name(&other),
            ))
        }
    }
    match decision {
        Decision::Approve => run.handle.approve(step),
        Decision::Reject => run.handle.reject(step, reason),
    }
    Ok(())
}

/// `POST /v1/halt`: `{"tenant": "..."}` or `{"all": true}`, with the options of a run's halt
/// -> 202 `{"scope", "runs"}` (how many of this service's runs were running in the scope).
/// The halt stays: the tenant's (or everyone's) new runs end halted at once until it is lifted
/// (`POST /v1/halt/lift`) or the service restarts. A tenant's token halts its own tenant only;
/// `all` needs an admin token.
async fn halt(state: Data, token: Token, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let mut body = body::read(payload, state.body_limit).await?;
    let scope = standing_scope(&mut body, "halt")?;
    allowed_scope(&token, &scope)?;
    let halt = operator_halt(&mut body, scope.clone())?;
    body.done()?;
    let running = state
        .runs
        .all()
        .iter()
        .filter(|run| !run.state().is_terminal())
        .filter(|run| match &scope {
            HaltScope::Tenant(tenant) => run.tenant == tenant.as_str(),
            _ => true,
        })
        .count();
    state.engine.orchestrator.halts().halt_with(halt.clone());
    state
        .engine
        .record_halt(&halt)
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Accepted().json(json!({ "scope": scope.to_string(), "runs": running })))
}

/// `POST /v1/halt/lift`: `{"tenant": "..."}` or `{"all": true}` -> 200 `{"scope", "lifted"}`
/// (the halt that stood). New runs of the scope start again; the runs the halt stopped stay
/// halted until each is resumed. Lifting everything keeps each tenant's own halt. 409 if the
/// scope is not halted, or (for a tenant) while everything is.
async fn lift(state: Data, token: Token, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    auth::require_admin(&token, "lifting a halt")?;
    let mut body = body::read(payload, state.body_limit).await?;
    let scope = standing_scope(&mut body, "lift")?;
    body.done()?;
    let lifted = lift_standing(&state, &scope).await?;
    Ok(HttpResponse::Ok().json(json!({ "scope": scope.to_string(), "lifted": lifted })))
}

/// Lifts the standing halt of `scope` (here and, with `journal.url`, for every process on the
/// database) and logs it; 409 if none stands. The halt lifted here, or `None` when only the
/// database had it (this process had not applied it yet).
pub(super) async fn lift_standing(
    state: &State,
    scope: &HaltScope,
) -> Result<Option<Halt>, ApiError> {
    let here = state.engine.orchestrator.halts().lift(scope);
    let recorded = match &here {
        // Everything is still halted: the tenant's recorded halt stays too.
        Err(_) if matches!(scope, HaltScope::Tenant(_)) && global_halted(state) => 0,
        _ => state
            .engine
            .lift_recorded(scope)
            .await
            .map_err(ApiError::internal)?,
    };
    let lifted = match here {
        Ok(halt) => Some(halt),
        Err(_) if recorded > 0 => None,
        Err(e) => return Err(ApiError::conflict(e.to_string())),
    };
    tracing::info!(scope = %scope, recorded, "halt lifted by an operator");
    Ok(lifted)
}

/// Whether everything is halted here.
fn global_halted(state: &State) -> bool {
    let halts = state.engine.orchestrator.halts();
    halts.standing().iter().any(|h| h.scope == HaltScope::All)
}

/// The scope of a standing halt: `{"tenant": "..."}` or `{"all": true}`; `verb` says what the
/// request does, for the error.
fn standing_scope(body: &mut Fields, verb: &str) -> Result<HaltScope, ApiError> {
    let tenant: Option<String> = body.take("tenant")?;
    let all = body.take::<bool>("all")?.unwrap_or(false);
    match (tenant, all) {
        (Some(tenant), false) => Ok(HaltScope::Tenant(tenant.into())),
        (None, true) => Ok(HaltScope::All),
        _ => Err(ApiError::invalid(
            "tenant",
            format!("say what to {verb}: {{\"tenant\": \"<name>\"}} or {{\"all\": true}}"),
        )),
    }
}

/// 404 unless `token` sees the tenant of `scope`; 403 for `all` unless it is an admin's.
fn allowed_scope(token: &Identity, scope: &HaltScope) -> Result<(), ApiError> {
    match scope {
        HaltScope::Tenant(tenant) if !token.sees(tenant.as_str()) => {
            Err(ApiError::unknown_tenant(tenant.as_str()))
        }
        HaltScope::Tenant(_) => Ok(()),
        _ => auth::require_admin(token, "halting every tenant"),
    }
}

/// The halt an operator's body asks for (reason `operator`).
fn operator_halt(body: &mut Fields, scope: HaltScope) -> Result<Halt, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Immediate,
        Graceful,
    }
    let mode = body.take::<Mode>("mode")?.unwrap_or(Mode::Immediate);
    let deadline = body.take::<u64>("deadline_secs")?;
    let mode = match (mode, deadline) {
        (Mode::Immediate, Some(_)) => {
            return Err(ApiError::invalid(
                "deadline_secs",
                "only applies to \"mode\": \"graceful\"",
            ))
        }
        (Mode::Immediate, None) => HaltMode::Immediate,
        (Mode::Graceful, secs) => HaltMode::Graceful {
            deadline: secs.map_or(GRACEFUL_DEADLINE, Duration::from_secs),
        },
    };
    let mut halt = Halt::new(scope, mode, HaltReason::Operator);
    if let Some(detail) = body.take::<String>("detail")? {
        halt = halt.with_detail(detail);
    }
    Ok(halt)
}

/// A run this process started or resumed. 404 if the journal does not know it either, or if
/// it is another tenant's (its existence is not confirmed); 409 if it ran in another process
/// (it can be shown, and resumed, but not watched or steered).
pub(super) fn find(state: &State, identity: &Identity, id: &str) -> Result<Arc<Tracked>, ApiError> {
    if let Some(run) = state.runs.get(id) {
        return match identity.sees(&run.tenant) {
            true => Ok(run),
            false => Err(ApiError::unknown_run(id)),
        };
    }
    let journaled = journal_entries(state, id)?;
    match journaled::shown(&journaled)
        .filter(|run| run["tenant"].as_str().is_some_and(|t| identity.sees(t)))
    {
        Some(run) => Err(ApiError::conflict(format!(
            "run {id} is not running in this process (journal status: {}); GET /v1/runs/{id} shows it, POST /v1/runs/{id}/resume resumes a halted one",
            run["status"].as_str().unwrap_or("unknown")
        ))),
        None => Err(ApiError::unknown_run(id)),
    }
}

/// A run this process started or resumed, in the shape of [`journaled::shown`] (without its
/// steps): its state and usage are live.
pub(super) fn tracked(state: &State, run: &Tracked) -> Value {
    let usage = match run.result() {
        Some(result) => result.usage,
        None => state.engine.usage(run.handle.id()),
    };
    let now = run.state();
    json!({
        "id": run.handle.id(),
        "tenant": run.tenant,
        "goal": run.goal,
        "status": journaled::status_of(&now),
        "state": now,
        "usage": usage,
        "submitted_at_ms": journaled::unix_ms(run.submitted_at),
    })
}
