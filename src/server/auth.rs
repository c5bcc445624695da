//! API tokens (docs/server.md): a random secret shown once, stored as its
//! blake3 hash with a name and a role; every request but the health check
//! presents one as a bearer token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kiln_store::Role;

use super::AppState;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// Forbidden (403) unless this caller's role includes `needed`.
    pub fn require(&self, needed: Role) -> Result<(), super::ServerError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(super::ServerError::Forbidden(format!(
                "token {:?} has the role {}; this needs {}",
                self.name,
                self.role.as_str(),
                needed.as_str()
            )))
        }
    }
}

pub fn hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// A new token's value: `kiln_` and 64 hex digits (256 random bits).
pub fn generate() -> Result<String, getrandom::Error> {
    let token = crate::controller::token::Token::generate()?;
    Ok(format!("kiln_{}", token.secret()))
}

/// Known tokens by hash, each trusted for [`TOKEN_CACHE_TTL`]; a miss asks
/// the store (a token made, or removed, by `kiln serve token` while the
/// server runs counts within that time).
#[derive(Default)]
pub struct TokenCache(Mutex<HashMap<[u8; 32], (Caller, std::time::Instant)>>);

const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Paths anyone may read: the health check, the login form and the page's
/// assets (no data in them); `/` redirects to the form by itself.
const PUBLIC: &[&str] = &[
    "/",
    "/api/health",
    "/login",
    "/assets/app.js",
    "/assets/app.css",
];

/// Authenticates every request (but [`PUBLIC`]) and hands the [`Caller`]
/// to the handler. 401 for a missing or unknown token.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    if PUBLIC.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(presented) = presented else {
        // A browser of the web page: its session cookie.
        if let Some(caller) =
            super::web::session_id(request.headers()).and_then(|id| state.sessions.caller(&id))
        {
            request.extensions_mut().insert(caller);
            return next.run(request).await;
        }
        return unauthorized("no token: send `Authorization: Bearer <token>`");
    };
    let hashed = hash(&presented);
    let cached = state
        .tokens
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&hashed)
        .filter(|(_, at)| at.elapsed() < TOKEN_CACHE_TTL)
        .map(|(caller, _)| caller.clone());
    let caller = match cached {
        Some(caller) => Some(caller),
        None => {
            let found = state
                .pool
                .with(move |store| Ok(store.token_by_hash(&hashed)?))
                .await;
            match found {
                Ok(Some(record)) => {
                    let caller = Caller {
                        name: record.name,
                        role: record.role,
                    };
                    state
                        .tokens
                        .0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(hashed, (caller.clone(), std::time::Instant::now()));
                    Some(caller)
                }
                Ok(None) => {
                    state
                        .tokens
                        .0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&hashed);
                    None
                }
                Err(error) => return error.into_response(),
            }
        }
    };
    match caller {
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => unauthorized("unknown token"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = super::routes::error(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer".parse().expect("a valid header"),
    );
    response
}
