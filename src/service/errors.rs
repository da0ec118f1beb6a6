//! The service's errors: every one answers with a status and a JSON body
//! `{"error": "<what is wrong and what to do>", "field": "<the request field>" | null}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use impresario::agents::SubmitError;
use impresario::runtime::redact::redact;
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// 400: the body is not JSON, or not a JSON object.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 422: `field` is missing, unknown or has a bad value.
    pub fn invalid(field: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        let field = field.into();
        ApiError {
            message: format!("{field}: {problem}"),
            field: Some(field),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "")
        }
    }

    /// 404: no run with this id.
    pub fn unknown_run(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("no run {id:?} on this service; GET /v1/runs lists the runs"),
        )
    }

    /// 404: no such route.
    pub fn unknown_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "no such route; the API is under /v1 (see the README)",
        )
    }

    /// 409: the run is not in a state that allows this.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 401: no bearer token, or the wrong one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: the token may not do this (an admin's operation with a tenant's token).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404: no tenant this token can see by that name.
    pub fn unknown_tenant(tenant: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!(
                "no tenant {tenant:?} for this token; a tenant's token sees its own tenant only"
            ),
        )
    }

    /// 413: the body is larger than the configured limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes (server.body_limit_bytes)"),
        )
    }

    /// 408: the body did not arrive within the configured time; the connection is closed.
    pub fn body_timeout(after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s (server.body_timeout_secs); send it in one go and retry",
                after.as_secs()
            ),
        )
    }

    /// 500: the service failed (its journal, mostly); the message says what.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 503: something the service depends on (the database) failed; the message says what and
    /// what to do.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 503: the service is draining for shutdown.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down; submit the run to another instance or retry after the restart",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: this connection cannot carry another request.
            response.insert_header((header::CONNECTION, "close"));
        }
        response.json(json!({ "error": redact(&self.message), "field": self.field }))
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid { field, problem } => ApiError::invalid(field, problem),
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the run could not be started: {other}; retry later"),
            ),
        }
    }
}
