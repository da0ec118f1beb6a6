//! Bearer-token authentication of every `/v1` route: `Authorization: Bearer <token>`, compared
//! in constant time with every configured token; anything else is a 401. The token says whose
//! the request is ([`Access`]): the handlers take it as `web::ReqData<Access>` and scope what
//! they read and do by it ([`Caller`]).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use subtle::ConstantTimeEq;

use super::errors::ApiError;
use super::State;
use crate::config::Access;

/// The configured tokens, each with whose it is.
pub struct Tokens(Vec<(Access, String)>);

impl Tokens {
    /// The tokens of the configuration ([`crate::config::Server::bearer_tokens`]).
    pub fn new(tokens: Vec<(Access, String)>) -> Self {
        Tokens(tokens)
    }

    /// Whose `given` is, if it is one of the tokens. Every token is compared, each in
    /// constant time, so the time taken does not say which one came close.
    fn access(&self, given: &[u8]) -> Option<Access> {
        let mut found = None;
        for (access, token) in &self.0 {
            if bool::from(given.ct_eq(token.as_bytes())) {
                found = Some(access.clone());
            }
        }
        found
    }
}

/// The middleware (`from_fn(require_token)`): 401 without a known token, else the request
/// goes on with its [`Access`] in its extensions.
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
    match state.tokens.access(given.as_bytes()) {
        Some(access) => {
            request.extensions_mut().insert(access);
            next.call(request).await
        }
        None => Err(ApiError::unauthorized("the bearer token is wrong").into()),
    }
}

/// What a request's token lets it see and do.
pub trait Caller {
    /// Whether it may see and act on `tenant`'s runs.
    fn sees(&self, tenant: &str) -> bool;
    /// The tenant it is bound to (`None`: an admin).
    fn tenant(&self) -> Option<&str>;
    /// `Ok` for an admin; 403 naming `what` for a tenant's token.
    fn admin(&self, what: &str) -> Result<(), ApiError>;
}

impl Caller for Access {
    fn sees(&self, tenant: &str) -> bool {
        match self {
            Access::Admin => true,
            Access::Tenant(own) => own == tenant,
        }
    }

    fn tenant(&self) -> Option<&str> {
        match self {
            Access::Admin => None,
            Access::Tenant(own) => Some(own),
        }
    }

    fn admin(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Access::Admin => Ok(()),
            Access::Tenant(_) => Err(ApiError::forbidden(format!(
                "{what} needs an admin token; this token is bound to one tenant"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_known_only_byte_for_byte_and_says_whose_it_is() {
        let tokens = Tokens::new(vec![
            (Access::Admin, "0123456789abcdef".into()),
            (Access::Tenant("acme".into()), "acme-0123456789ab".into()),
        ]);
        assert_eq!(tokens.access(b"0123456789abcdef"), Some(Access::Admin));
        assert_eq!(
            tokens.access(b"acme-0123456789ab"),
            Some(Access::Tenant("acme".into()))
        );
        assert_eq!(tokens.access(b"0123456789abcdeF"), None);
        assert_eq!(tokens.access(b"0123456789abcde"), None);
        assert_eq!(tokens.access(b""), None);
    }
}
