//! The controller's HTTP API (docs/controller.md), served by axum on the
//! controller's unix socket. Every route wants the build's bearer token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use tokio::sync::watch;

use super::api::{MAX_REQUEST_BYTES, StopMessage, StopReason};
use super::feed::{Feed, FeedRead};
use super::token::Token;
use crate::driver::Stop;
use crate::events::{Emitter, Envelope};

/// What every handler shares.
#[derive(Clone)]
pub struct ControllerState {
    pub token: Arc<Token>,
    /// `GET /build`, serialised once.
    pub params: Bytes,
    pub emitter: Emitter,
    pub feed: Arc<Feed>,
    /// Set once when the build is asked to stop (`POST /kill`, a signal).
    pub stop: watch::Sender<Option<Stop>>,
    /// Set when a `build/end` from the build process was relayed: the
    /// build process finished its build (whatever happens to it next).
    pub ended: Arc<std::sync::atomic::AtomicBool>,
}

/// The routes of one build's controller.
pub fn router(state: ControllerState) -> axum::Router {
    axum::Router::new()
        .route("/build", get(build_params))
        .route("/events", post(post_events).get(subscribe))
        .route("/stop", get(wait_stop))
        .route("/kill", post(kill))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// 401 with an empty body for a missing or wrong token: the caller learns
/// nothing, not even which routes exist.
async fn authorize(State(state): State<ControllerState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(presented) if state.token.matches(presented) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
        )
            .into_response(),
    }
}

async fn build_params(State(state): State<ControllerState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.params.clone(),
    )
        .into_response()
}

/// A batch of envelopes from the build process: a JSON array. All or
/// nothing: a malformed batch is refused whole (400) and routes nothing.
async fn post_events(State(state): State<ControllerState>, body: Bytes) -> Response {
    let envelopes: Vec<Envelope> = match serde_json::from_slice(&body) {
        Ok(envelopes) => envelopes,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a JSON array of event envelopes: {error}"),
            )
                .into_response();
        }
    };
    let mut dropped = 0u64;
    for envelope in envelopes {
        if matches!(envelope.event, crate::events::Event::BuildEnd { .. }) {
            state
                .ended
                .store(true, std::sync::atomic::Ordering::Release);
        }
        if !state.emitter.relay(envelope.time_ms, envelope.event) {
            dropped += 1;
        }
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"dropped_output_lines\":{dropped}}}"),
    )
        .into_response()
}

/// Server-sent events: every envelope as `data:` with its sequence number
/// as `id:`, from after `Last-Event-ID` (or the start); the stream ends
/// when the build's flow does.
async fn subscribe(
    State(state): State<ControllerState>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let after = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Sse::new(feed_stream(Arc::clone(&state.feed), after))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// One item of a feed as it is read.
#[derive(Clone, Debug)]
pub enum FeedItem {
    /// An envelope: its sequence number and JSON.
    Envelope(u64, Arc<str>),
    /// Some envelopes before the next were dropped from the feed.
    Missed,
}

/// The envelopes of `feed` after `after`, then each batch as it comes,
/// until the flow finishes.
pub fn feed_items(feed: Arc<Feed>, after: u64) -> impl Stream<Item = FeedItem> {
    struct Cursor {
        feed: Arc<Feed>,
        after: u64,
        wake: watch::Receiver<u64>,
        ready: std::collections::VecDeque<FeedItem>,
    }
    let wake = feed.subscribe();
    let cursor = Cursor {
        feed,
        after,
        wake,
        ready: Default::default(),
    };
    futures_util::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(item) = cursor.ready.pop_front() {
                return Some((item, cursor));
            }
            // Mark the current value seen before reading, so a batch
            // published in between still wakes us.
            cursor.wake.borrow_and_update();
            match cursor.feed.read_after(cursor.after, 1024) {
                FeedRead::Entries { entries, missed } => {
                    if missed {
                        cursor.ready.push_back(FeedItem::Missed);
                    }
                    for (seq, json) in entries {
                        cursor.after = seq;
                        cursor.ready.push_back(FeedItem::Envelope(seq, json));
                    }
                }
                FeedRead::Finished => return None,
                FeedRead::Pending => {
                    if cursor.wake.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    })
}

/// [`feed_items`] as server-sent events: `id:` the sequence number,
/// `data:` the envelope.
pub fn feed_stream(
    feed: Arc<Feed>,
    after: u64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    use futures_util::StreamExt;
    feed_items(feed, after).map(|item| {
        Ok(match item {
            FeedItem::Envelope(seq, json) => SseEvent::default().id(seq.to_string()).data(&*json),
            FeedItem::Missed => SseEvent::default().comment("some earlier events were dropped"),
        })
    })
}

/// Answers once the build is asked to stop; the build process keeps this
/// request open for the whole build (and stops if the connection drops).
async fn wait_stop(State(state): State<ControllerState>) -> Response {
    let mut stop = state.stop.subscribe();
    let reason = match stop.wait_for(Option::is_some).await {
        Ok(value) => (*value).map(StopReason::from),
        Err(_) => Some(StopReason::Killed),
    };
    let reason = reason.unwrap_or(StopReason::Killed);
    axum::Json(StopMessage { stop: reason }).into_response()
}

async fn kill(State(state): State<ControllerState>) -> Response {
    request_stop(&state.stop, Stop::Killed);
    (StatusCode::ACCEPTED, "stopping\n").into_response()
}

/// Sets the stop reason unless one is set already.
pub fn request_stop(stop: &watch::Sender<Option<Stop>>, reason: Stop) {
    stop.send_if_modified(|state| {
        if state.is_none() {
            *state = Some(reason);
            true
        } else {
            false
        }
    });
}
