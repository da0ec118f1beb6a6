//! Bearer-token authentication of every `/v1` route: `Authorization: Bearer <token>`, compared
//! in constant time; anything else is a 401.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web;

use subtle::ConstantTimeEq;

use super::console::session::Identity;
use super::errors::ApiError;
use super::State;

/// The middleware (`from_fn(require_token)`).
pub async fn require_token(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = request
        .app_data::<web::Data<State>>()
        .expect("the app has its state");
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if same(token.as_bytes(), state.token.as_bytes()) => next.call(request).await,
        Some(_) => Err(ApiError::unauthorized("the bearer token is wrong").into()),
        None => Err(ApiError::unauthorized(
            "send the service's token as `Authorization: Bearer <token>` (server.token in its config)",
        )
        .into()),
    }
}

/// Who `token` identifies, if anyone: the service's token is the admin. Used by the console's
/// sign-in.
pub fn identity(state: &State, token: &str) -> Option<Identity> {
    same(token.as_bytes(), state.token.as_bytes()).then_some(Identity::Admin)
}

/// Compares in constant time, so the time taken does not say how much of a guess was right.
/// (The length may show: it is not the secret.)
fn same(given: &[u8], token: &[u8]) -> bool {
    given.ct_eq(token).into()
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn only_the_same_bytes_are_the_same() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdeF", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!same(b"", b"0123456789abcdef"));
    }
}
