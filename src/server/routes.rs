//! The JSON API under `/api/` (docs/server.md, `docs/openapi.json`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use futures_util::Stream;
use kiln_store::{BuildId, BuildRecord, BuildStatus, ObjectKind, Role, Store};
use serde_json::{Value, json};

use super::auth::Caller;
use super::runner::submission_dir;
use super::{AppState, ServerError};

/// The API's OpenAPI description, checked against the routes by a test.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

pub fn router(state: Arc<AppState>) -> axum::Router {
    let max_upload = usize::try_from(state.config.max_upload).unwrap_or(usize::MAX);
    axum::Router::new()
        .route("/", get(super::web::index))
        .route(
            "/login",
            get(super::web::login_page).post(super::web::login),
        )
        .route("/logout", post(super::web::logout))
        .route("/assets/app.js", get(super::web::app_js))
        .route("/assets/app.css", get(super::web::app_css))
        .route("/api/me", get(super::web::me))
        .route("/api/events", get(super::web::changes))
        .route("/api/health", get(health))
        .route("/api/openapi.json", get(openapi))
        .route(
            "/api/builds",
            get(list_builds)
                .post(submit)
                .layer(DefaultBodyLimit::max(max_upload)),
        )
        .route("/api/builds/{build}", get(show_build))
        .route("/api/builds/{build}/events", get(build_events))
        .route("/api/builds/{build}/log", get(build_log))
        .route("/api/builds/{build}/log/{job}", get(job_log))
        .route("/api/builds/{build}/artifacts", get(list_artifacts))
        .route(
            "/api/builds/{build}/artifacts/{*name}",
            get(download_artifact),
        )
        .route("/api/builds/{build}/kill", post(kill))
        .route("/api/builds/{build}/pin", post(pin))
        .route("/api/builds/{build}/unpin", post(unpin))
        .route("/api/store", get(store_stats))
        .route("/api/store/curate", post(curate))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            super::auth::authenticate,
        ))
        .with_state(state)
}

/// A JSON error body: `{"error": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = match &self {
            ServerError::NotFound(_) => StatusCode::NOT_FOUND,
            ServerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServerError::Conflict(_) => StatusCode::CONFLICT,
            ServerError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServerError::Store(kiln_store::StoreError::UnknownBuild(_)) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, &self.to_string())
    }
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `last` or a number.
fn parse_build(text: &str, store: &Store) -> Result<BuildId, ServerError> {
    if text == "last" {
        return store
            .last_build()?
            .ok_or_else(|| ServerError::NotFound("there is no build yet".into()));
    }
    text.parse::<i64>()
        .map(BuildId)
        .map_err(|_| ServerError::BadRequest(format!("{text:?} is not a build number or `last`")))
}

pub fn build_json(record: &BuildRecord) -> Value {
    json!({
        "build": record.id.0,
        "status": record.status,
        "owner": record.owner,
        "manifest": record.manifest,
        "started": record.started,
        "finished": record.finished,
        "duration_ms": record.finished.map(|end| (end - record.started).max(0)),
        "pinned": record.pinned,
    })
}

/// `?status=failed&limit=50&before=123`: newest first.
async fn list_builds(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ServerError> {
    let mut status = None;
    let mut limit = 50u32;
    let mut before = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "status" => {
                status =
                    Some(value.parse::<BuildStatus>().map_err(|_| {
                        ServerError::BadRequest(format!("unknown status {value:?}"))
                    })?)
            }
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| ServerError::BadRequest("limit is 1 to 1000".into()))?
            }
            "before" => {
                before = Some(BuildId(value.parse().map_err(|_| {
                    ServerError::BadRequest(format!("before={value:?} is not a build number"))
                })?))
            }
            other => {
                return Err(ServerError::BadRequest(format!(
                    "unknown parameter {other:?}"
                )));
            }
        }
    }
    let builds = state
        .pool
        .with(move |store| Ok(store.list_builds_page(status, before, limit)?))
        .await?;
    let next = (builds.len() == limit as usize)
        .then(|| builds.last().map(|b| b.id.0))
        .flatten();
    Ok(Json(json!({
        "builds": builds.iter().map(build_json).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

/// One build: its record, submission, jobs (status, duration, cached or
/// ran and why) and artifacts.
async fn show_build(
    State(state): State<Arc<AppState>>,
    UrlPath(build): UrlPath<String>,
) -> Result<Json<Value>, ServerError> {
    let running = Arc::clone(&state.runner);
    state
        .pool
        .with(move |store| {
            let id = parse_build(&build, store)?;
            let record = store.build(id)?;
            let mut value = build_json(&record);
            if let Some(submission) = store.submission(id)? {
                value["submitter"] = json!(submission.submitter);
                value["args"] = json!(submission.args);
                value["queued"] = json!(submission.queued);
            }
            value["running_here"] = json!(running.feed(id).is_some());
            // The graph's edges, from the recorded `job/queued` events.
            let mut needs = std::collections::HashMap::new();
            for event in store.build_events(id)? {
                if event.kind == "job/queued"
                    && let Ok(envelope) =
                        serde_json::from_str::<crate::events::Envelope>(&event.body)
                    && let crate::events::Event::JobQueued { job, needs: of, .. } = envelope.event
                {
                    needs.insert(job, of);
                }
            }
            value["jobs"] = store
                .build_jobs(id)?
                .iter()
                .map(|job| {
                    json!({
                        "job": job.name,
                        "stage": job.stage,
                        "needs": needs.get(&job.name).cloned().unwrap_or_default(),
                        "status": job.status,
                        "cached": job.cached,
                        "duration_ms": job.duration_ms,
                        "key": job.key,
                        "key_inputs": job.key_inputs,
                        "log": job.log,
                        "exit_code": job.exit_code,
                        "message": job.message,
                        "started": job.started,
                        "finished": job.finished,
                    })
                })
                .collect();
            value["artifacts"] = artifacts_json(store, id)?;
            Ok(Json(value))
        })
        .await
}

fn artifacts_json(store: &Store, id: BuildId) -> Result<Value, ServerError> {
    Ok(store
        .artifacts(id)?
        .iter()
        .filter(|a| !crate::repro::provenance::is_provenance(&a.name))
        .map(|a| json!({"name": a.name, "kind": a.object.kind, "digest": a.object.digest, "size": a.size}))
        .collect())
}

async fn list_artifacts(
    State(state): State<Arc<AppState>>,
    UrlPath(build): UrlPath<String>,
) -> Result<Json<Value>, ServerError> {
    state
        .pool
        .with(move |store| {
            let id = parse_build(&build, store)?;
            store.build(id)?;
            Ok(Json(artifacts_json(store, id)?))
        })
        .await
}

/// Server-sent events of a build: live from its controller's feed while it
/// runs here (resumable with `Last-Event-ID`), else its recorded events.
async fn build_events(
    State(state): State<Arc<AppState>>,
    UrlPath(build): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    let after = last_event_id(&headers);
    let id = {
        let build = build.clone();
        state.pool.with(move |store| {
            let id = parse_build(&build, store)?;
            store.build(id)?;
            Ok(id)
        })
    }
    .await?;
    if let Some(feed) = state.runner.feed(id) {
        let stream = crate::controller::server::feed_stream(feed, after);
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response());
    }
    let events = state
        .pool
        .with(move |store| Ok(store.build_events(id)?))
        .await?;
    let items: Vec<Result<SseEvent, Infallible>> = events
        .into_iter()
        .filter(|event| event.seq > after)
        // A recorded event's body is its whole envelope.
        .map(|event| {
            Ok(SseEvent::default()
                .id(event.seq.to_string())
                .data(event.body))
        })
        .collect();
    Ok(Sse::new(futures_util::stream::iter(items)).into_response())
}

fn last_event_id(headers: &HeaderMap) -> u64 {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Every job's recorded log, each under a `==> JOB (STATUS) <==` header.
async fn build_log(
    State(state): State<Arc<AppState>>,
    UrlPath(build): UrlPath<String>,
) -> Result<Response, ServerError> {
    let text = state
        .pool
        .with(move |store| {
            let id = parse_build(&build, store)?;
            store.build(id)?;
            let mut out = Vec::new();
            for job in store.build_jobs(id)? {
                out.extend(
                    format!("==> {} ({}) <==\n", job.name, job.status.replace('_', " ")).bytes(),
                );
                match job.log {
                    Some(log) => {
                        store.read_blob(&log, &mut out)?;
                    }
                    None => out.extend(b"(no log)\n"),
                }
            }
            Ok(out)
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// A job's log: whole (`text/plain`), or with `?follow=true` its lines as
/// server-sent events as they come while the build runs here, ending with
/// the job (one event per line; a finished job's whole log the same way).
async fn job_log(
    State(state): State<Arc<AppState>>,
    UrlPath((build, job)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ServerError> {
    let follow = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .any(|(name, value)| name == "follow" && (value == "true" || value == "1"));
    let wanted = job.clone();
    let (id, recorded) = state
        .pool
        .with(move |store| {
            let id = parse_build(&build, store)?;
            store.build(id)?;
            let found = store.build_job(id, &wanted)?;
            let log = match found.as_ref().and_then(|job| job.log) {
                Some(log) => {
                    let mut bytes = Vec::new();
                    store.read_blob(&log, &mut bytes)?;
                    Some(bytes)
                }
                None => None,
            };
            Ok((id, found.map(|job| (job.status, log))))
        })
        .await?;
    if follow && let Some(feed) = state.runner.feed(id) {
        let lines = job_lines(crate::controller::server::feed_items(feed, 0), job);
        return Ok(Sse::new(lines)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response());
    }
    let Some((status, log)) = recorded else {
        return Err(ServerError::NotFound(format!(
            "build {id} has no job {job:?}"
        )));
    };
    let Some(log) = log else {
        return Err(ServerError::NotFound(format!(
            "job {job} of build {id} has no recorded log (it is {status}){}",
            if status == "running" {
                "; add ?follow=true"
            } else {
                ""
            }
        )));
    };
    if follow {
        let text = String::from_utf8_lossy(&log).into_owned();
        let items: Vec<Result<SseEvent, Infallible>> = text
            .lines()
            .map(|line| Ok(SseEvent::default().data(line)))
            .chain([Ok(SseEvent::default().event("end").data(""))])
            .collect();
        return Ok(Sse::new(futures_util::stream::iter(items)).into_response());
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response())
}

/// The `job/output` lines of `job` from a build's envelopes, one event per
/// line, until the job (or the build) ends.
fn job_lines(
    items: impl Stream<Item = crate::controller::server::FeedItem>,
    job: String,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    use crate::controller::server::FeedItem;
    use crate::events::{Envelope, Event};
    use futures_util::StreamExt;
    let items = Box::pin(items);
    // Always ends with an `end` event (also when the flow ends first), so a
    // browser's EventSource closes instead of reconnecting.
    futures_util::stream::unfold((items, job, false), |(mut items, job, done)| async move {
        if done {
            return None;
        }
        loop {
            let Some(item) = items.next().await else {
                return Some((
                    Ok(SseEvent::default().event("end").data("")),
                    (items, job, true),
                ));
            };
            let FeedItem::Envelope(_, json) = item else {
                continue;
            };
            let Ok(envelope) = serde_json::from_str::<Envelope>(&json) else {
                continue;
            };
            match envelope.event {
                Event::JobOutput { job: of, line } if of == job => {
                    return Some((Ok(SseEvent::default().data(line)), (items, job, false)));
                }
                Event::JobEnd { job: of, .. }
                | Event::JobCached { job: of, .. }
                | Event::JobSkipped { job: of, .. }
                    if of == job =>
                {
                    return Some((
                        Ok(SseEvent::default().event("end").data("")),
                        (items, job, true),
                    ));
                }
                Event::BuildEnd { .. } => {
                    return Some((
                        Ok(SseEvent::default().event("end").data("")),
                        (items, job, true),
                    ));
                }
                _ => {}
            }
        }
    })
}

/// An artifact's bytes: a file as it is (with `Range: bytes=A-B`), a
/// directory as a tar stream.
async fn download_artifact(
    State(state): State<Arc<AppState>>,
    UrlPath((build, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    let wanted = name.clone();
    let artifact = state
        .pool
        .with(move |store| {
            let id = parse_build(&build, store)?;
            store.build(id)?;
            // A name recorded twice (a rerun job) means its latest version.
            store
                .artifacts(id)?
                .into_iter()
                .rev()
                .find(|a| a.name == wanted)
                .ok_or_else(|| {
                    ServerError::NotFound(format!("build {id} has no artifact {wanted:?}"))
                })
        })
        .await?;
    let file_name = name.rsplit('/').next().unwrap_or(&name).replace('"', "");
    match artifact.object.kind {
        ObjectKind::Blob => {
            let size = artifact.size;
            let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
                None => None,
                Some(text) => match parse_range(text, size) {
                    Some(range) => Some(range),
                    None => {
                        let mut response = error(
                            StatusCode::RANGE_NOT_SATISFIABLE,
                            &format!("cannot serve {text:?} of {size} bytes"),
                        );
                        response.headers_mut().insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                        );
                        return Ok(response);
                    }
                },
            };
            let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
            let length = if size == 0 { 0 } else { end - start + 1 };
            let digest = artifact.object.digest;
            let body = stream_blocking(Arc::clone(&state.pool), move |store, out| {
                let mut window = Window {
                    out,
                    skip: start,
                    left: length,
                };
                match store.read_blob(&digest, &mut window) {
                    Ok(_) => Ok(()),
                    // The window is full: stopping early is the point.
                    Err(_) if window.left == 0 => Ok(()),
                    Err(error) => Err(error.into()),
                }
            });
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            if let Ok(value) =
                HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\""))
            {
                headers.insert(header::CONTENT_DISPOSITION, value);
            }
            if range.is_some() {
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                response.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")).expect("ascii"),
                );
            }
            Ok(response)
        }
        ObjectKind::Tree => {
            let digest = artifact.object.digest;
            let store_dir = state.pool.dir().to_path_buf();
            let body = stream_blocking(Arc::clone(&state.pool), move |store, out| {
                let scratch = store_dir.join(crate::scheduler::builddir::SCRATCH_DIR);
                std::fs::create_dir_all(&scratch)
                    .map_err(|e| ServerError::Internal(e.to_string()))?;
                let temp = tempfile::tempdir_in(&scratch)
                    .map_err(|e| ServerError::Internal(e.to_string()))?;
                let root = temp.path().join("tree");
                store.restore(
                    &digest,
                    &root,
                    &kiln_store::RestoreOptions {
                        layer: false,
                        progress: None,
                    },
                )?;
                let mut builder = tar::Builder::new(out);
                builder.follow_symlinks(false);
                builder
                    .append_dir_all(".", &root)
                    .and_then(|()| builder.finish())
                    .map_err(|e| ServerError::Internal(e.to_string()))
            });
            let mut response = Response::new(body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-tar"),
            );
            if let Ok(value) =
                HeaderValue::from_str(&format!("attachment; filename=\"{file_name}.tar\""))
            {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
            Ok(response)
        }
    }
}

/// `bytes=A-B`, `bytes=A-`, `bytes=-N` of a `size`-byte file, inclusive.
fn parse_range(text: &str, size: u64) -> Option<(u64, u64)> {
    let spec = text.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (size.saturating_sub(n), size - 1)
        }
        (start, "") => (start.parse().ok()?, size - 1),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

/// Passes on bytes `skip..skip+left` of what is written to it.
struct Window<W> {
    out: W,
    skip: u64,
    left: u64,
}

impl<W: std::io::Write> std::io::Write for Window<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut data = buf;
        let skipped = self.skip.min(data.len() as u64) as usize;
        self.skip -= skipped as u64;
        data = &data[skipped..];
        if self.left == 0 && !data.is_empty() {
            return Err(std::io::Error::other("range complete"));
        }
        let take = self.left.min(data.len() as u64) as usize;
        self.out.write_all(&data[..take])?;
        self.left -= take as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A response body written by `work` on the blocking pool, streamed in
/// pieces as it is written (bounded: a slow client slows the writer).
fn stream_blocking<F>(pool: Arc<super::pool::StorePool>, work: F) -> Body
where
    F: FnOnce(&mut Store, &mut ChannelWriter) -> Result<(), ServerError> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let errors = sender.clone();
    tokio::spawn(async move {
        let result = pool
            .with(move |store| {
                let mut writer = ChannelWriter {
                    sender,
                    buffer: Vec::with_capacity(64 << 10),
                };
                work(store, &mut writer)?;
                std::io::Write::flush(&mut writer).map_err(|e| ServerError::Internal(e.to_string()))
            })
            .await;
        if let Err(error) = result {
            let _ = errors
                .send(Err(std::io::Error::other(error.to_string())))
                .await;
        }
    });
    Body::from_stream(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    ))
}

pub struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= 64 << 10 {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

async fn kill(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    UrlPath(build): UrlPath<String>,
) -> Result<Response, ServerError> {
    caller.require(Role::Submit)?;
    let runner = Arc::clone(&state.runner);
    let outcome = state
        .pool
        .with(move |store| {
            let id = parse_build(&build, store)?;
            let record = store.build(id)?;
            if runner.kill(id) {
                return Ok((id, "stopping"));
            }
            if record.status == BuildStatus::Queued
                && store.cancel_queued(id, BuildStatus::Killed)?
            {
                return Ok((id, "killed"));
            }
            Err(ServerError::Conflict(format!(
                "build {id} is not running (it is {})",
                record.status.as_str()
            )))
        })
        .await?;
    state.runner.changed(outcome.0);
    state.runner.wake();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"build": outcome.0.0, "status": outcome.1})),
    )
        .into_response())
}

async fn pin(
    state: State<Arc<AppState>>,
    caller: Extension<Caller>,
    build: UrlPath<String>,
) -> Result<Response, ServerError> {
    set_pinned(state, caller, build, true).await
}

async fn unpin(
    state: State<Arc<AppState>>,
    caller: Extension<Caller>,
    build: UrlPath<String>,
) -> Result<Response, ServerError> {
    set_pinned(state, caller, build, false).await
}

async fn set_pinned(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    UrlPath(build): UrlPath<String>,
    pinned: bool,
) -> Result<Response, ServerError> {
    caller.require(Role::Admin)?;
    let id = state
        .pool
        .with(move |store| {
            let id = parse_build(&build, store)?;
            store.set_pinned(id, pinned)?;
            Ok(id)
        })
        .await?;
    Ok(Json(json!({"build": id.0, "pinned": pinned})).into_response())
}

async fn store_stats(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ServerError> {
    state
        .pool
        .with(|store| {
            let stats = store.stats()?;
            let pinned = store
                .list_builds()?
                .into_iter()
                .filter(|b| b.pinned)
                .map(|b| b.id.0)
                .collect::<Vec<_>>();
            Ok(Json(json!({
                "stats": serde_json::to_value(&stats).unwrap_or_default(),
                "pinned_builds": pinned,
            })))
        })
        .await
}

async fn curate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ServerError> {
    caller.require(Role::Admin)?;
    let policy = state.config.curation;
    let report = state
        .pool
        .with(move |store| Ok(store.curate(&policy)?))
        .await?;
    Ok(Json(serde_json::to_value(&report).unwrap_or_default()).into_response())
}

/// Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ServerError> {
    let running = state.runner.running_count();
    let (by_status, jobs, stats) = state
        .pool
        .with(|store| {
            Ok((
                store.count_builds_by_status()?,
                store.job_totals()?,
                store.stats()?,
            ))
        })
        .await?;
    let mut out = String::new();
    out.push_str("# HELP kiln_builds Builds recorded, by status.\n# TYPE kiln_builds gauge\n");
    let mut queued = 0;
    for (status, count) in &by_status {
        if *status == BuildStatus::Queued {
            queued = *count;
        }
        out.push_str(&format!(
            "kiln_builds{{status=\"{}\"}} {count}\n",
            status.as_str()
        ));
    }
    out.push_str(&format!(
        "# HELP kiln_queue_depth Builds waiting to start.\n# TYPE kiln_queue_depth gauge\nkiln_queue_depth {queued}\n"
    ));
    out.push_str(&format!(
        "# HELP kiln_builds_running Builds this server runs now.\n# TYPE kiln_builds_running gauge\nkiln_builds_running {running}\n"
    ));
    out.push_str("# HELP kiln_jobs Jobs recorded, by status.\n# TYPE kiln_jobs gauge\n");
    let (mut total, mut cached) = (0u64, 0u64);
    for (status, count, _, from_cache) in &jobs {
        total += count;
        cached += from_cache;
        out.push_str(&format!("kiln_jobs{{status=\"{status}\"}} {count}\n"));
    }
    out.push_str("# HELP kiln_job_duration_seconds Time jobs took, by status.\n# TYPE kiln_job_duration_seconds summary\n");
    for (status, count, duration_ms, _) in &jobs {
        out.push_str(&format!(
            "kiln_job_duration_seconds_sum{{status=\"{status}\"}} {:.3}\nkiln_job_duration_seconds_count{{status=\"{status}\"}} {count}\n",
            *duration_ms as f64 / 1000.0
        ));
    }
    let ratio = if total == 0 {
        0.0
    } else {
        cached as f64 / total as f64
    };
    out.push_str(&format!(
        "# HELP kiln_cache_hit_ratio Jobs served from the cache, of all jobs recorded.\n# TYPE kiln_cache_hit_ratio gauge\nkiln_cache_hit_ratio {ratio:.4}\n"
    ));
    out.push_str(&format!(
        "# HELP kiln_store_bytes Bytes the store holds on disk.\n# TYPE kiln_store_bytes gauge\nkiln_store_bytes {}\n",
        stats.stored_bytes
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// `POST /api/builds?manifest=build.kiln&arg=NAME=VALUE&project=NAME`, the
/// body a tar (or tar.gz, tar.zst) of the project. 400 for a bad archive
/// (nothing stored), 422 with the diagnostics for a bad manifest, 201 with
/// the build's number once queued.
async fn submit(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ServerError> {
    caller.require(Role::Submit)?;
    let mut manifest = "build.kiln".to_owned();
    let mut args = Vec::new();
    let mut project = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "manifest" => manifest = value.into_owned(),
            "arg" => args.push(value.into_owned()),
            "project" => project = Some(value.into_owned()),
            other => {
                return Err(ServerError::BadRequest(format!(
                    "unknown parameter {other:?}"
                )));
            }
        }
    }
    let parsed_args = crate::cli::manifest::parse_args(&args)
        .map_err(|error| ServerError::BadRequest(error.to_string()))?;
    let store_dir = state.pool.dir().to_path_buf();
    let max_expanded = state.config.max_expanded;
    let owner = format!(
        "{}/{}",
        caller.name,
        project.unwrap_or_else(|| "project".to_owned())
    );
    let submitter = caller.name.clone();
    let result = state
        .pool
        .with(move |store| {
            // Unpacked under a temporary name, renamed once queued: a
            // refused upload leaves nothing, a queued build has its sources.
            let staging = store_dir.join(super::runner::SUBMISSIONS_DIR).join(format!(
                "incoming-{}",
                crate::controller::token::Token::generate()
                    .map_err(|e| ServerError::Internal(e.to_string()))?
                    .secret()
            ));
            if let Err(refused) = super::upload::unpack(&body, &staging, &manifest, max_expanded) {
                return Ok(Err(error(StatusCode::BAD_REQUEST, &refused.to_string())));
            }
            let loaded = kiln_grammar::load::load(
                &staging.join(&manifest),
                &kiln_grammar::load::LoadOptions {
                    args: parsed_args,
                    allow_paths: Vec::new(),
                },
            );
            let diagnostics = loaded.render_diagnostics();
            if loaded.result.is_err() {
                let _ = crate::scheduler::builddir::remove_tree(&staging);
                let shown = diagnostics.replace(&format!("{}/", staging.display()), "");
                return Ok(Err((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({"error": "the manifest is invalid", "diagnostics": shown})),
                )
                    .into_response()));
            }
            let id = match store.queue_build(&owner, &manifest, &args, &submitter) {
                Ok(id) => id,
                Err(failed) => {
                    let _ = crate::scheduler::builddir::remove_tree(&staging);
                    return Err(failed.into());
                }
            };
            let dir = submission_dir(&store_dir, id);
            if let Err(failed) = std::fs::rename(&staging, &dir) {
                let _ = crate::scheduler::builddir::remove_tree(&staging);
                let _ = store.cancel_queued(id, BuildStatus::Failed);
                return Err(ServerError::Internal(format!(
                    "storing the submission: {failed}"
                )));
            }
            Ok(Ok(id))
        })
        .await?;
    match result {
        Ok(id) => {
            state.runner.changed(id);
            state.runner.wake();
            Ok((
                StatusCode::CREATED,
                Json(json!({"build": id.0, "status": "queued"})),
            )
                .into_response())
        }
        Err(response) => Ok(response),
    }
}
