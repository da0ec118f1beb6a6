//! Console sessions: signing in with the bearer token creates an opaque random session id,
//! sent as an `HttpOnly; SameSite=Strict; Path=/ui` cookie and mapped here to who signed in,
//! with an expiry. The token itself never leaves the sign-in request. Each session has its own
//! CSRF token, which every console form and fetch carries and which is checked in constant
//! time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::HttpRequest;
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "impresario_session";

/// How long a session lasts after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);

/// The most sessions kept at once; past it the ones closest to expiry go first.
const MAX_SESSIONS: usize = 10_000;

pub use crate::identity::Identity;

/// A signed-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Its id (the cookie's value).
    pub id: String,
    /// Who signed in.
    pub identity: Identity,
    /// The token every form and fetch of this session carries.
    pub csrf: String,
    expires: Instant,
}

impl Session {
    /// Whether `given` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, given: &str) -> bool {
        self.csrf.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

/// The sessions of this process (they end when it stops).
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session for `identity`.
    pub fn open(&self, identity: Identity) -> Result<Session, getrandom::Error> {
        let session = Session {
            id: random_hex()?,
            identity,
            csrf: random_hex()?,
            expires: Instant::now() + LIFETIME,
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        open.retain(|_, s| s.expires > now);
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open
                .values()
                .min_by_key(|s| s.expires)
                .map(|s| s.id.clone())
            {
                open.remove(&oldest);
            }
        }
        open.insert(session.id.clone(), session.clone());
        Ok(session)
    }

    /// The live session the request's cookie names, if any.
    pub fn of(&self, request: &HttpRequest) -> Option<Session> {
        let id = cookie(request)?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.get(&id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                open.remove(&id);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(id);
    }
}

/// The `Set-Cookie` value that carries `session`.
pub fn set_cookie(session: &Session) -> String {
    format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}",
        session.id,
        LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0")
}

/// The session id in the request's `Cookie` header.
fn cookie(request: &HttpRequest) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// 32 random bytes from the operating system, as 64 hex digits.
fn random_hex() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_session_is_found_by_its_cookie_and_not_after_it_is_closed() {
        let sessions = Sessions::default();
        let session = sessions.open(Identity::Admin).unwrap();
        assert_eq!(session.id.len(), 64);
        assert_ne!(session.id, session.csrf);
        let request = TestRequest::default()
            .insert_header((header::COOKIE, format!("a=b; {COOKIE}={}", session.id)))
            .to_http_request();
        assert_eq!(sessions.of(&request).unwrap().identity, Identity::Admin);
        let forged = TestRequest::default()
            .insert_header((header::COOKIE, format!("{COOKIE}={}", session.csrf)))
            .to_http_request();
        assert!(sessions.of(&forged).is_none());
        sessions.close(&session.id);
        assert!(sessions.of(&request).is_none());
    }

    #[test]
    fn only_the_sessions_own_csrf_token_matches() {
        let sessions = Sessions::default();
        let (a, b) = (
            sessions.open(Identity::Admin).unwrap(),
            sessions.open(Identity::Admin).unwrap(),
        );
        assert!(a.csrf_matches(&a.csrf));
        assert!(!a.csrf_matches(&b.csrf));
        assert!(!a.csrf_matches(""));
        assert!(!a.csrf_matches(&a.csrf[..63]));
    }
}
