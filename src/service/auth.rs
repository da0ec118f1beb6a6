//! Bearer-token authentication of every `/v1` route: `Authorization: Bearer <token>`, compared
//! in constant time with every configured token; anything else is a 401. The token says who
//! the request is ([`Identity`]): the handlers take it as `web::ReqData<Identity>` and scope
//! what they read and do by it. The console's sign-in uses the same tokens ([`identity`]).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use subtle::ConstantTimeEq;

use super::errors::ApiError;
use super::State;
use crate::identity::Identity;

/// The configured tokens, each with who it is.
pub struct Tokens(Vec<(Identity, String)>);

impl Tokens {
    /// The tokens of the configuration ([`crate::config::Server::bearer_tokens`]).
    pub fn new(tokens: Vec<(Identity, String)>) -> Self {
        Tokens(tokens)
    }

    /// Who `given` is, if it is one of the tokens. Every token is compared, each in constant
    /// time, so the time taken does not say which one came close. (The length may show: it is
    /// not the secret.)
    fn identity(&self, given: &[u8]) -> Option<Identity> {
        let mut found = None;
        for (identity, token) in &self.0 {
            if bool::from(given.ct_eq(token.as_bytes())) {
                found = Some(identity.clone());
            }
        }
        found
    }
}

/// The middleware (`from_fn(require_token)`): 401 without a known token, else the request
/// goes on with its [`Identity`] in its extensions.
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
    let Some(given) = given else {
        return Err(ApiError::unauthorized(
            "send a token of the service as `Authorization: Bearer <token>` (server.token or [[server.tokens]] in its config)",
        )
        .into());
    };
    match state.tokens.identity(given.as_bytes()) {
        Some(identity) => {
            request.extensions_mut().insert(identity);
            next.call(request).await
        }
        None => Err(ApiError::unauthorized("the bearer token is wrong").into()),
    }
}

/// Who `token` identifies, if anyone. Used by the console's sign-in.
pub fn identity(state: &State, token: &str) -> Option<Identity> {
    state.tokens.identity(token.as_bytes())
}

/// `Ok` for an admin; 403 naming `what` for a tenant's token.
pub fn require_admin(identity: &Identity, what: &str) -> Result<(), ApiError> {
    match identity.is_admin() {
        true => Ok(()),
        false => Err(ApiError::forbidden(format!(
            "{what} needs an admin token; this token is bound to one tenant"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_known_only_byte_for_byte_and_says_who_it_is() {
        let tokens = Tokens::new(vec![
            (Identity::Admin, "0123456789abcdef".into()),
            (Identity::Tenant("acme".into()), "acme-0123456789ab".into()),
        ]);
        assert_eq!(tokens.identity(b"0123456789abcdef"), Some(Identity::Admin));
        assert_eq!(
            tokens.identity(b"acme-0123456789ab"),
            Some(Identity::Tenant("acme".into()))
        );
        assert_eq!(tokens.identity(b"0123456789abcdeF"), None);
        assert_eq!(tokens.identity(b"0123456789abcde"), None);
        assert_eq!(tokens.identity(b""), None);
    }
}
