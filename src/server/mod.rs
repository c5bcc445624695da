//! `kiln serve` (docs/server.md): a build server. Builds are submitted as
//! archives over a JSON API, kept in a persistent queue in the store's
//! index, and run at most `--max-builds` at a time, each as a controller
//! and a build process exactly like `kiln run` (docs/controller.md), with
//! the server's route: persist and a live feed for subscribers. Tokens with
//! roles guard every endpoint but the health check; curation runs on a
//! schedule and never touches pinned builds.
//!
//! Architecture invariant: a server build is a `kiln run` build with
//! another route: the server never runs a job or derives an event itself;
//! `runner.rs` starts controllers (`controller::run_build_process`), the
//! routes read the store.

pub mod auth;
pub mod pool;
pub mod routes;
pub mod runner;
pub mod upload;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_store::CurationPolicy;

use crate::controller::BuildPlace;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    #[error(transparent)]
    Events(#[from] crate::events::EventError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("listening on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a server runs (resolved from `kiln serve`'s flags).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub store_dir: PathBuf,
    /// Builds running at once.
    pub max_builds: usize,
    /// Bytes of one upload.
    pub max_upload: u64,
    /// Bytes an upload may expand to.
    pub max_expanded: u64,
    pub place: BuildPlace,
    /// Curation's thresholds, and how often it runs (`None`: only on
    /// request, `POST /api/store/curate`).
    pub curation: CurationPolicy,
    pub curate_every: Option<Duration>,
    /// The kiln binary the build processes run.
    pub exe: PathBuf,
}

/// What request handlers share.
pub struct AppState {
    pub config: ServerConfig,
    pub pool: Arc<pool::StorePool>,
    pub runner: Arc<runner::Runner>,
    pub tokens: auth::TokenCache,
    /// Browsers logged in through the web page.
    pub sessions: web::Sessions,
}

/// Binds `config.listen`; returns the bound address and the server's
/// future (which runs until `shutdown` resolves).
pub async fn bind(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), ServerError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            address: config.listen,
            source,
        })?;
    let address = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            address: config.listen,
            source,
        })?;
    // Builds that were running when a server died are failed now (their
    // lease is free) and what they left is swept; queued ones stay queued.
    let store_dir = config.store_dir.clone();
    let dead =
        tokio::task::spawn_blocking(move || -> Result<Vec<kiln_store::BuildId>, ServerError> {
            let mut store = kiln_store::Store::open(&store_dir)?;
            let dead = store.fail_dead_builds()?;
            crate::scheduler::builddir::sweep_stale(&store_dir);
            crate::sandbox::Cgroup::sweep_stale();
            Ok(dead)
        })
        .await
        .map_err(|error| ServerError::Internal(error.to_string()))??;
    for build in dead {
        eprintln!(
            "kiln serve: build {build} marked failed: {}",
            kiln_store::DEAD_BUILD_REASON
        );
    }
    let runner = runner::Runner::new(
        &config.store_dir,
        config.exe.clone(),
        config.max_builds,
        config.place,
    );
    let state = Arc::new(AppState {
        pool: Arc::new(pool::StorePool::new(&config.store_dir)),
        runner: Arc::clone(&runner),
        tokens: auth::TokenCache::default(),
        sessions: web::Sessions::default(),
        config,
    });
    let curation = curation_task(Arc::clone(&state));
    let app = routes::router(Arc::clone(&state));
    let serve = async move {
        let runner_task = tokio::spawn(Arc::clone(&runner).run());
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        runner_task.abort();
        if let Some(curation) = curation {
            curation.abort();
        }
    };
    Ok((address, serve))
}

/// Djinn's curator: every `curate_every`, artifacts past the threshold,
/// oldest first, pinned builds never.
fn curation_task(state: Arc<AppState>) -> Option<tokio::task::JoinHandle<()>> {
    let every = state.config.curate_every?;
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let policy = state.config.curation;
            match state
                .pool
                .with(move |store| Ok(store.curate(&policy)?))
                .await
            {
                Ok(report) => eprintln!(
                    "kiln serve: curation removed {} artifact(s), {} bytes",
                    report.artifacts_removed, report.artifact_bytes_removed
                ),
                Err(error) => eprintln!("kiln serve: curation failed: {error}"),
            }
        }
    }))
}
