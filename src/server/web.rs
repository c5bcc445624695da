//! The web page of `kiln serve` (docs/server.md, "The web page"): a login
//! form that turns a token into a session cookie, one page of plain
//! JavaScript that reads the JSON API, and a server-wide stream of build
//! changes. The assets are compiled into the binary: nothing is built at run
//! time. Every untrusted string (job names, log lines, artifact names) is
//! put on the page with `textContent`, never as markup.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use super::AppState;
use super::auth::Caller;

const INDEX: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The session cookie's name.
pub const COOKIE: &str = "kiln_session";
/// A session lasts this long after it was made.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Logged-in browsers: a random session id (the cookie) to its caller.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, (Caller, Instant)>>);

impl Sessions {
    pub fn caller(&self, id: &str) -> Option<Caller> {
        let mut sessions = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(id) {
            Some((caller, made)) if made.elapsed() < SESSION_LIFETIME => Some(caller.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    fn open(&self, caller: Caller) -> Option<String> {
        let id = crate::controller::token::Token::generate()
            .ok()?
            .secret()
            .to_owned();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (caller, Instant::now()));
        Some(id)
    }

    fn close(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// The session id in a request's cookies.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // No inline script, no framing, no sniffing.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response()
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(to).expect("a plain path"),
    );
    response
}

/// `/`: the page, for a logged-in browser; others go to the login form.
pub async fn index(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match session_id(&headers).and_then(|id| state.sessions.caller(&id)) {
        Some(_) => page(INDEX),
        None => redirect("/login"),
    }
}

pub async fn login_page() -> Response {
    page(LOGIN)
}

/// `POST /login` with `token=...` (a form): a session cookie (HttpOnly,
/// SameSite=Strict) and back to `/`; a wrong token back to the form.
pub async fn login(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let token = form_urlencoded::parse(&body)
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    let hashed = super::auth::hash(&token);
    let found = state
        .pool
        .with(move |store| Ok(store.token_by_hash(&hashed)?))
        .await;
    let Ok(Some(record)) = found else {
        return redirect("/login?failed=1");
    };
    let Some(id) = state.sessions.open(Caller {
        name: record.name,
        role: record.role,
    }) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut response = redirect("/");
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("hex"),
    );
    response
}

pub async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        state.sessions.close(&id);
    }
    let mut response = redirect("/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("kiln_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

pub async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

pub async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

/// `GET /api/me`: who is logged in (the page shows the name and hides
/// buttons the role may not use).
pub async fn me(axum::Extension(caller): axum::Extension<Caller>) -> Response {
    axum::Json(serde_json::json!({"name": caller.name, "role": caller.role.as_str()}))
        .into_response()
}

/// `GET /api/events`: a server-sent event `{"build": N}` each time a build
/// is queued, starts, ends or is killed, for live lists.
pub async fn changes(
    State(state): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let receiver = state.runner.subscribe();
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(build) => SseEvent::default().data(format!("{{\"build\":{build}}}")),
            // Missed some: the page reloads its list.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                SseEvent::default().event("resync").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
