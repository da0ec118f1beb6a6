//! The console's actions (POST forms): signing in and out, halting and resuming a run,
//! approving or rejecting a step, halting or lifting a tenant. Each one (sign-in aside) needs
//! the session cookie and the session's CSRF token in the form; a request whose `Origin` is
//! another site is refused. Each answers with a redirect to the page to look at next.

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use impresario::runtime::halt::{Halt, HaltMode, HaltReason, HaltScope};
use serde::Deserialize;

use super::handlers::{journal, not_found, signed_in};
use super::session::{clear_cookie, set_cookie, Session};
use super::{html, pages, ConsoleError};
use crate::journaled;
use crate::service::routes::{self, Decision, GRACEFUL_DEADLINE};
use crate::service::runs::Tracked;
use crate::service::{auth, State};

type Data = web::Data<State>;

/// The sign-in form.
#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

/// Which page an action returns to.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Back {
    /// The run's page.
    #[default]
    Run,
    /// The approvals inbox.
    Approvals,
}

/// How hard a halt is.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Abort what is in flight now.
    #[default]
    Immediate,
    /// Let the current step finish (at most the default graceful deadline).
    Graceful,
}

/// Every action form: the CSRF token and what the action needs.
#[derive(Deserialize)]
pub struct Action {
    csrf: String,
    #[serde(default)]
    mode: Mode,
    decision: Option<Decision>,
    reason: Option<String>,
    tenant: Option<String>,
    #[serde(default)]
    back: Back,
}

/// `GET /ui/signin`.
pub async fn sign_in_page() -> HttpResponse {
    html(pages::sign_in(None))
}

/// `POST /ui/signin`: the bearer token -> a session cookie, then the runs.
pub async fn sign_in(
    state: Data,
    request: HttpRequest,
    form: web::Form<SignIn>,
) -> Result<HttpResponse, ConsoleError> {
    same_origin(&request)?;
    let Some(identity) = auth::identity(&state, form.token.trim()) else {
        return Ok(HttpResponse::Unauthorized()
            .content_type("text/html; charset=utf-8")
            .body(
                pages::sign_in(Some(
                    "That token is not valid on this service. Use server.token from its configuration.",
                ))
                .into_string(),
            ));
    };
    let session = state.console.sessions.open(identity).map_err(|e| {
        ConsoleError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot make a session id (the system's random source failed: {e})"),
        )
    })?;
    Ok(redirect("/ui/runs")
        .insert_header((header::SET_COOKIE, set_cookie(&session)))
        .finish())
}

/// `POST /ui/signout`: ends the session and clears its cookie.
pub async fn sign_out(
    state: Data,
    request: HttpRequest,
    form: web::Form<Action>,
) -> Result<HttpResponse, ConsoleError> {
    let session = authorized(&state, &request, &form)?;
    state.console.sessions.close(&session.id);
    Ok(redirect("/ui/signin")
        .insert_header((header::SET_COOKIE, clear_cookie()))
        .finish())
}

/// `POST /ui/runs/{id}/halt` (`mode`: `immediate` or `graceful`).
pub async fn halt(
    state: Data,
    request: HttpRequest,
    id: web::Path<String>,
    form: web::Form<Action>,
) -> Result<HttpResponse, ConsoleError> {
    let (session, run) = steerable(&state, &request, &form, &id)?;
    let mode = match form.mode {
        Mode::Immediate => HaltMode::Immediate,
        Mode::Graceful => HaltMode::Graceful {
            deadline: GRACEFUL_DEADLINE,
        },
    };
    let halt = Halt::new(
        HaltScope::Run(id.as_str().into()),
        mode,
        HaltReason::Operator,
    )
    .with_detail(format!(
        "halted from the console ({})",
        session.identity.label()
    ));
    routes::halt_tracked(&state, &run, halt).await?;
    Ok(redirect(&format!("/ui/runs/{id}")).finish())
}

/// `POST /ui/runs/{id}/resume`.
pub async fn resume(
    state: Data,
    request: HttpRequest,
    id: web::Path<String>,
    form: web::Form<Action>,
) -> Result<HttpResponse, ConsoleError> {
    let session = authorized(&state, &request, &form)?;
    let entries = journal(&state, &id)?;
    let tenant = journaled::shown(&entries).and_then(|r| r["tenant"].as_str().map(str::to_owned));
    if !tenant.is_some_and(|t| session.identity.sees(&t)) {
        return Err(not_found(&id));
    }
    routes::resume_run(&state, &session.identity, &id).await?;
    Ok(redirect(&format!("/ui/runs/{id}")).finish())
}

/// `POST /ui/runs/{id}/approvals/{step}` (`decision`: `approve` or `reject`; `reason`, kept
/// with a rejection: the runtime records none for an approval).
pub async fn decide(
    state: Data,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Action>,
) -> Result<HttpResponse, ConsoleError> {
    let (id, step) = path.into_inner();
    let (session, _) = steerable(&state, &request, &form, &id)?;
    let step: u32 = step.parse().map_err(|_| {
        ConsoleError::new(
            StatusCode::NOT_FOUND,
            format!("{step:?} is not a step number"),
        )
    })?;
    let Some(decision) = form.decision else {
        return Err(ConsoleError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "decision: say approve or reject",
        ));
    };
    let reason = form.reason.clone().filter(|r| !r.trim().is_empty());
    routes::decide_step(&state, &session.identity, &id, step, decision, reason).await?;
    Ok(match form.back {
        Back::Run => redirect(&format!("/ui/runs/{id}")).finish(),
        Back::Approvals => redirect("/ui/approvals").finish(),
    })
}

/// `POST /ui/tenants/halt` (admins): the tenant's runs halt now, and its new runs end halted
/// until it is lifted.
pub async fn halt_tenant(
    state: Data,
    request: HttpRequest,
    form: web::Form<Action>,
) -> Result<HttpResponse, ConsoleError> {
    let (session, tenant) = admin_on_tenant(&state, &request, &form)?;
    let halt = Halt::new(
        HaltScope::Tenant(tenant.into()),
        HaltMode::Immediate,
        HaltReason::Operator,
    )
    .with_detail(format!(
        "halted from the console ({})",
        session.identity.label()
    ));
    state.engine.orchestrator.halts().halt_with(halt.clone());
    state
        .engine
        .record_halt(&halt)
        .await
        .map_err(|e| ConsoleError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(redirect("/ui/tenants").finish())
}

/// `POST /ui/tenants/lift` (admins): the tenant's new runs start again; its halted runs stay
/// halted until each is resumed.
pub async fn lift_tenant(
    state: Data,
    request: HttpRequest,
    form: web::Form<Action>,
) -> Result<HttpResponse, ConsoleError> {
    let (_, tenant) = admin_on_tenant(&state, &request, &form)?;
    routes::lift_standing(&state, &HaltScope::Tenant(tenant.into())).await?;
    Ok(redirect("/ui/tenants").finish())
}

/// The session and run `id` of an action on a run: the run must run in this process and be
/// of a tenant the session sees.
fn steerable(
    state: &State,
    request: &HttpRequest,
    form: &Action,
    id: &str,
) -> Result<(Session, Arc<Tracked>), ConsoleError> {
    let session = authorized(state, request, form)?;
    let run = routes::find(state, &session.identity, id)?;
    if !session.identity.sees(&run.tenant) {
        return Err(not_found(id));
    }
    Ok((session, run))
}

fn admin_on_tenant(
    state: &State,
    request: &HttpRequest,
    form: &Action,
) -> Result<(Session, String), ConsoleError> {
    let session = authorized(state, request, form)?;
    if !session.identity.is_admin() {
        return Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            "only an admin (server.token) halts or lifts a tenant",
        ));
    }
    let tenant = form
        .tenant
        .clone()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ConsoleError::new(StatusCode::UNPROCESSABLE_ENTITY, "tenant: name one"))?;
    Ok((session, tenant))
}

/// The session of a state-changing request: same origin, signed in, with its CSRF token.
fn authorized(
    state: &State,
    request: &HttpRequest,
    form: &Action,
) -> Result<Session, ConsoleError> {
    same_origin(request)?;
    let session = signed_in(state, request)?;
    if !session.csrf_matches(&form.csrf) {
        return Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is wrong or stale; reload the page and try again",
        ));
    }
    Ok(session)
}

/// Refuses a request whose `Origin` is not this service (a form posted from another site).
fn same_origin(request: &HttpRequest) -> Result<(), ConsoleError> {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let host = request.connection_info().host().to_owned();
    let origin = origin.to_str().unwrap_or_default();
    let ours = ["http://", "https://"]
        .iter()
        .any(|scheme| origin.strip_prefix(scheme) == Some(host.as_str()));
    if ours {
        Ok(())
    } else {
        Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            format!("a form from another origin ({origin}) cannot act on this console"),
        ))
    }
}

fn redirect(to: &str) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::SeeOther();
    response.insert_header((header::LOCATION, to.to_owned()));
    response
}
