//! The console's pages (GET): they read, never change anything. Each one needs a session;
//! without one it redirects to the sign-in page. A session bound to a tenant sees only that
//! tenant's runs, approvals and account; another tenant's run is "not found" to it.

use std::collections::BTreeMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use impresario::agents::{RunState, RunUpdate as AgentEvent};
use impresario::runtime::halt::HaltScope;
use impresario::runtime::journal::{JournalEntry, RunEvent, RunFilter};
use impresario::runtime::RunId;
use serde_json::Value;

use super::pages::{layout, Nav};
use super::session::Session;
use super::views::{self, RunRow, RunView, RunsFilter, TenantRow, Waiting};
use super::{html, timeline, tree, ConsoleError};
use crate::journaled;
use crate::service::runs::Tracked;
use crate::service::{routes, sse, State};

type Data = web::Data<State>;

/// The request's session, or [`ConsoleError::SignIn`].
pub(super) fn signed_in(state: &State, request: &HttpRequest) -> Result<Session, ConsoleError> {
    state
        .console
        .sessions
        .of(request)
        .ok_or(ConsoleError::SignIn)
}

/// What a session gets for a run it may not see: the same as for a run that does not exist.
pub(super) fn not_found(id: &str) -> ConsoleError {
    ConsoleError::new(
        StatusCode::NOT_FOUND,
        format!("no run {id:?} that you can see"),
    )
}

/// `/ui`: the runs, or the sign-in page.
pub async fn home(state: Data, request: HttpRequest) -> HttpResponse {
    let to = match state.console.sessions.of(&request) {
        Some(_) => "/ui/runs",
        None => "/ui/signin",
    };
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}

/// `/ui/runs[?state=&tenant=&q=]`: newest first.
pub async fn runs(state: Data, request: HttpRequest) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&state, &request)?;
    let filter = web::Query::<RunsFilter>::from_query(request.query_string())
        .map_err(|e| ConsoleError::new(StatusCode::BAD_REQUEST, format!("the filter: {e}")))?
        .into_inner();
    let tenant = match session.identity.tenant() {
        Some(own) => Some(own.to_owned()),
        None => Some(filter.tenant.trim().to_owned()).filter(|t| !t.is_empty()),
    };
    let mut journal_filter = RunFilter::all();
    if let Some(tenant) = tenant {
        journal_filter = journal_filter.tenant(tenant);
    }
    let q = filter.q.trim().to_lowercase();
    let rows: Vec<RunRow> = listed(&state, &journal_filter)?
        .iter()
        .rev()
        .filter(|run| {
            filter.state.is_empty()
                || state_name(run) == filter.state
                || run["status"] == filter.state.as_str()
        })
        .filter(|run| {
            q.is_empty()
                || run["goal"]
                    .as_str()
                    .is_some_and(|g| g.to_lowercase().contains(&q))
        })
        .map(row)
        .collect();
    let body = views::runs(&session, &filter, &rows);
    Ok(html(layout("Runs", Some(&session), Some(Nav::Runs), body)))
}

/// The journaled runs `filter` selects, oldest first, as `GET /v1/runs` lists them.
fn listed(state: &State, filter: &RunFilter) -> Result<Vec<Value>, ConsoleError> {
    let summaries = state.engine.orchestrator.runs(filter).map_err(|e| {
        ConsoleError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the journal: {e}"),
        )
    })?;
    Ok(summaries
        .iter()
        .map(|summary| routes::listed_run(state, summary))
        .collect())
}

/// A run's state name (`running`, ...), or its journal status when it has no state.
fn state_name(run: &Value) -> String {
    run["state"]["state"]
        .as_str()
        .or(run["status"].as_str())
        .unwrap_or("unknown")
        .to_owned()
}

fn row(run: &Value) -> RunRow {
    RunRow {
        id: run["id"].as_str().unwrap_or_default().to_owned(),
        tenant: run["tenant"].as_str().unwrap_or_default().to_owned(),
        goal: run["goal"].as_str().map(str::to_owned),
        state: state_name(run),
        micro_usd: run["usage"]["micro_usd"].as_u64(),
        tokens: run["usage"]["tokens"].as_u64(),
        submitted_ms: run["submitted_at_ms"].as_u64().unwrap_or_default(),
    }
}

/// The journal's entries of run `id`.
pub(super) fn journal(state: &State, id: &str) -> Result<Vec<JournalEntry>, ConsoleError> {
    state
        .engine
        .orchestrator
        .journal()
        .read(&RunId::new(id))
        .map_err(|e| {
            ConsoleError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the journal: {e}"),
            )
        })
}

/// `/ui/runs/{id}`: the run's summary, actions, timeline and supervision tree.
pub async fn run(
    state: Data,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&state, &request)?;
    let entries = journal(&state, &id)?;
    let tracked = state.runs.get(&id);
    let now = match &tracked {
        Some(run) => routes::tracked(&state, run),
        None => journaled::shown(&entries).ok_or_else(|| not_found(&id))?,
    };
    let tenant = now["tenant"].as_str().unwrap_or_default().to_owned();
    if !session.identity.sees(&tenant) {
        return Err(not_found(&id));
    }
    let live = tracked.as_ref().map(|run| run.state());
    let (streaming, seen) = match &tracked {
        Some(run) if !run.state().is_terminal() => streaming(run),
        _ => (String::new(), 0),
    };
    let name = state_name(&now);
    let usage = &now["usage"];
    let view = RunView {
        id: id.to_string(),
        goal: now["goal"].as_str().unwrap_or_default().to_owned(),
        outcome: ["answer", "detail", "reason"]
            .iter()
            .find_map(|k| now["state"][k].as_str().map(str::to_owned)),
        usage: (
            usage["micro_usd"].as_u64().unwrap_or(0),
            usage["tokens"].as_u64().unwrap_or(0),
            usage["model_calls"].as_u64().unwrap_or(0),
        ),
        haltable: live.as_ref().is_some_and(|s| !s.is_terminal()),
        awaiting: match &live {
            Some(RunState::AwaitingApproval { step, tool }) => Some((*step, tool.clone())),
            _ => None,
        },
        resumable: now["status"] == "halted" && live.as_ref().is_none_or(RunState::is_terminal),
        timeline: timeline::items(&entries),
        streaming,
        seen,
        tree: tree::of_run(&state.engine.runtime, &state.console.lives, &id, &tenant),
        tenant,
        state: name,
    };
    let body = views::run(&session, &view);
    Ok(html(layout(&id, Some(&session), Some(Nav::Runs), body)))
}

/// The text of the model call streaming now (the deltas after the run's last other event),
/// and how many events the run has emitted so far.
fn streaming(run: &Tracked) -> (String, usize) {
    let events = run.events();
    let events = events.borrow();
    let text = events
        .iter()
        .rev()
        .map_while(|event| match event {
            AgentEvent::Delta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (text, events.len())
}

/// The query of the console's event stream.
#[derive(serde::Deserialize)]
struct EventsQuery {
    /// The number of events the page already shows.
    #[serde(default)]
    from: usize,
}

/// `/ui/runs/{id}/events[?from=N]`: the run's server-sent events after the first `N` (as
/// `GET /v1/runs/{id}/events`), for the page's live updates.
pub async fn events(
    state: Data,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&state, &request)?;
    let query = web::Query::<EventsQuery>::from_query(request.query_string())
        .map_err(|e| ConsoleError::new(StatusCode::BAD_REQUEST, format!("from: {e}")))?;
    let run = routes::find(&state, &session.identity, &id)?;
    if !session.identity.sees(&run.tenant) {
        return Err(not_found(&id));
    }
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(sse::stream(run, query.from, state.sse_keepalive)))
}

/// `/ui/approvals`: every step waiting for a person, across this service's runs.
pub async fn approvals(state: Data, request: HttpRequest) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&state, &request)?;
    let mut waiting = Vec::new();
    for run in state.runs.all() {
        let RunState::AwaitingApproval { step, tool } = run.state() else {
            continue;
        };
        if !session.identity.sees(&run.tenant) {
            continue;
        }
        let id = run.handle.id().to_string();
        let call = journal(&state, &id)?
            .iter()
            .rev()
            .find_map(|e| match &e.event {
                RunEvent::StepStarted {
                    step: s, detail, ..
                } if *s == step => Some(detail.to_string()),
                _ => None,
            })
            .unwrap_or_default();
        waiting.push(Waiting {
            run: id,
            tenant: run.tenant.clone(),
            goal: run.goal.clone(),
            step,
            tool,
            call,
        });
    }
    let body = views::approvals(&session, &waiting);
    Ok(html(layout(
        "Approvals",
        Some(&session),
        Some(Nav::Approvals),
        body,
    )))
}

/// `/ui/tenants`: each tenant's spend against its ceiling, reservations, runs, and halt.
pub async fn tenants(state: Data, request: HttpRequest) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&state, &request)?;
    let mut filter = RunFilter::all();
    if let Some(own) = session.identity.tenant() {
        filter = filter.tenant(own);
    }
    let mut runs: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for run in listed(&state, &filter)? {
        let counts = runs
            .entry(run["tenant"].as_str().unwrap_or_default().to_owned())
            .or_default();
        match run["status"].as_str() {
            Some("halted") => counts.1 += 1,
            Some("finished") => counts.2 += 1,
            _ => counts.0 += 1,
        }
    }
    let standing = state.engine.orchestrator.halts().standing();
    let mut rows = Vec::with_capacity(runs.len());
    for (name, runs) in runs {
        // The ledger's view: this process's, or with `journal.url` every process's.
        let budget = state
            .engine
            .ceilings
            .budget(&name)
            .await
            .map_err(|e| ConsoleError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let halted = standing
            .iter()
            .find(|h| h.scope == HaltScope::Tenant(name.as_str().into()))
            .cloned();
        rows.push(TenantRow {
            spent: budget.spent,
            reserved: budget.reserved,
            ceiling: budget.ceiling,
            runs,
            halted: halted.map(|h| h.detail.unwrap_or_else(|| h.reason.to_string())),
            name,
        });
    }
    let body = views::tenants(&session, &rows);
    Ok(html(layout(
        "Tenants",
        Some(&session),
        Some(Nav::Tenants),
        body,
    )))
}
