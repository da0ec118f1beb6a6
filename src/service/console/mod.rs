//! The operator console at `/ui`: server-rendered HTML pages (runs, a run's timeline and
//! supervision tree, approvals, tenants) with a small script that keeps each page's `#live`
//! region current (server-sent events on a run's page, polling elsewhere). The CSS and the
//! script are compiled into the binary (`include_str!`); nothing is built with Node.
//!
//! Security: signing in posts the bearer token once and gets an opaque session cookie
//! ([`session`]: `HttpOnly; SameSite=Strict; Path=/ui`); every state-changing form carries the
//! session's CSRF token (checked in constant time) and a cross-origin `Origin` is refused;
//! every text is escaped by the templates ([`pages`]); every response carries a
//! Content-Security-Policy that allows only this origin's script and style files (no inline
//! script), `frame-ancestors 'none'`, `X-Content-Type-Options: nosniff` and
//! `Referrer-Policy: same-origin` (no-referrer would make browsers send `Origin: null` on
//! the console's own forms). A session bound to a tenant sees only that tenant.

mod actions;
mod handlers;
mod pages;
pub mod session;
mod timeline;
mod tree;
mod views;

use actix_web::http::{header, StatusCode};
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpResponse, ResponseError};

use super::errors::ApiError;
pub use tree::Lives;

/// What the console keeps: the open sessions and the agents' lifecycles.
pub struct Console {
    /// Signed-in sessions.
    pub sessions: session::Sessions,
    /// Starts, restarts and panics of every agent (for the supervision tree); shared with the
    /// task that records them.
    pub lives: std::sync::Arc<Lives>,
}

impl Console {
    /// The console of a service on `runtime`: its supervision tree counts restarts and panics
    /// from now on (a task follows the runtime's lifecycle events).
    pub fn start(runtime: &impresario::runtime::RuntimeHandle) -> Console {
        let console = Console {
            sessions: session::Sessions::default(),
            lives: std::sync::Arc::default(),
        };
        let events = runtime.subscribe();
        let lives = console.lives.clone();
        actix_web::rt::spawn(async move { lives.record(events).await });
        console
    }
}

/// The Content-Security-Policy of every console response.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the `/ui` scope.
pub fn configure(config: &mut web::ServiceConfig) {
    let headers = DefaultHeaders::new()
        .add((header::CONTENT_SECURITY_POLICY, CSP))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::REFERRER_POLICY, "same-origin"))
        .add((header::CACHE_CONTROL, "no-store"));
    config.service(
        web::scope("/ui")
            .wrap(headers)
            .route("", web::get().to(handlers::home))
            .route("/", web::get().to(handlers::home))
            .route("/assets/console.css", web::get().to(css))
            .route("/assets/console.js", web::get().to(js))
            .route("/signin", web::get().to(actions::sign_in_page))
            .route("/signin", web::post().to(actions::sign_in))
            .route("/signout", web::post().to(actions::sign_out))
            .route("/runs", web::get().to(handlers::runs))
            .route("/runs/{id}", web::get().to(handlers::run))
            .route("/runs/{id}/events", web::get().to(handlers::events))
            .route("/runs/{id}/halt", web::post().to(actions::halt))
            .route("/runs/{id}/resume", web::post().to(actions::resume))
            .route(
                "/runs/{id}/approvals/{step}",
                web::post().to(actions::decide),
            )
            .route("/approvals", web::get().to(handlers::approvals))
            .route("/tenants", web::get().to(handlers::tenants))
            .route("/tenants/halt", web::post().to(actions::halt_tenant))
            .route("/tenants/lift", web::post().to(actions::lift_tenant))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ConsoleError::new(
                    StatusCode::NOT_FOUND,
                    "no such console page",
                ))
            })),
    );
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(include_str!("../../../assets/console/console.css"))
}

async fn js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(include_str!("../../../assets/console/console.js"))
}

/// A console error: an HTML page saying what went wrong, or a redirect to sign in.
#[derive(Debug)]
pub enum ConsoleError {
    /// Not signed in (or the session expired): go to the sign-in page.
    SignIn,
    /// Anything else, with its status and message.
    Page {
        /// The status.
        status: StatusCode,
        /// What went wrong and what to do.
        message: String,
    },
}

impl ConsoleError {
    /// An error page.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ConsoleError::Page {
            status,
            message: message.into(),
        }
    }
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        ConsoleError::new(e.status_code(), e.to_string())
    }
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleError::SignIn => f.write_str("sign in first"),
            ConsoleError::Page { message, .. } => f.write_str(message),
        }
    }
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::SignIn => StatusCode::SEE_OTHER,
            ConsoleError::Page { status, .. } => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ConsoleError::SignIn => HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/ui/signin"))
                .finish(),
            ConsoleError::Page { status, message } => HttpResponse::build(*status)
                .content_type("text/html; charset=utf-8")
                .body(pages::problem(None, status.as_u16(), message).into_string()),
        }
    }
}

/// An HTML page answer.
fn html(markup: maud::Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}
