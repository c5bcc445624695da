//! The queue's runner: starts queued builds, oldest first, at most
//! `max_builds` at a time, each as a controller and a build process
//! (docs/controller.md) with the server's route.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_grammar::load;
use kiln_store::{BuildId, BuildStatus, Submission};
use tokio::sync::{Notify, watch};

use crate::controller::api::manifest_digest;
use crate::controller::{
    BuildOptions, BuildParams, BuildPlace, Feed, GraphView, Launch, run_build_process,
};
use crate::driver::Stop;
use crate::events::{Event, EventBus, Route};
use crate::graph::BuildGraph;

/// Under the store: one directory per submitted build, its unpacked upload.
pub const SUBMISSIONS_DIR: &str = "submissions";

pub fn submission_dir(store_dir: &Path, build: BuildId) -> PathBuf {
    store_dir.join(SUBMISSIONS_DIR).join(build.0.to_string())
}

/// A build this server runs now.
struct Running {
    stop: watch::Sender<Option<Stop>>,
    feed: Arc<Feed>,
}

pub struct Runner {
    store_dir: PathBuf,
    exe: PathBuf,
    max_builds: usize,
    place: BuildPlace,
    running: Mutex<HashMap<i64, Running>>,
    wake: Notify,
    /// Builds that were queued, started, ended or killed (the web page's
    /// live list).
    changes: tokio::sync::broadcast::Sender<i64>,
}

impl Runner {
    pub fn new(
        store_dir: &Path,
        exe: PathBuf,
        max_builds: usize,
        place: BuildPlace,
    ) -> Arc<Runner> {
        Arc::new(Runner {
            store_dir: store_dir.to_path_buf(),
            exe,
            max_builds: max_builds.max(1),
            place,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            changes: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// Something was queued or finished: look at the queue again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Says that `build` changed (queued, started, ended, killed).
    pub fn changed(&self, build: BuildId) {
        let _ = self.changes.send(build.0);
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<i64> {
        self.changes.subscribe()
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The live feed of a running build.
    pub fn feed(&self, build: BuildId) -> Option<Arc<Feed>> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&build.0)
            .map(|running| Arc::clone(&running.feed))
    }

    /// Asks a running build to stop; `false` when it is not running here.
    pub fn kill(&self, build: BuildId) -> bool {
        match self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&build.0)
        {
            Some(running) => {
                crate::controller::server::request_stop(&running.stop, Stop::Killed);
                true
            }
            None => false,
        }
    }

    /// Runs forever: starts what the queue holds whenever there is room.
    pub async fn run(self: Arc<Self>) {
        loop {
            let room = self.max_builds.saturating_sub(self.running_count());
            if room > 0 {
                let store_dir = self.store_dir.clone();
                let queued = tokio::task::spawn_blocking(move || {
                    kiln_store::Store::open(&store_dir).and_then(|store| store.queued_builds())
                })
                .await;
                match queued {
                    Ok(Ok(queued)) => {
                        for submission in queued.into_iter().take(room) {
                            self.start(submission);
                        }
                    }
                    Ok(Err(error)) => eprintln!("kiln serve: reading the queue: {error}"),
                    Err(error) => eprintln!("kiln serve: reading the queue: {error}"),
                }
            }
            // Also look again now and then: a build queued by another
            // process of this store (a second server) is seen too.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), self.wake.notified()).await;
        }
    }

    fn start(self: &Arc<Self>, submission: Submission) {
        let (stop, _) = watch::channel(None);
        let feed = Feed::new();
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if running.contains_key(&submission.build.0) {
                return;
            }
            running.insert(
                submission.build.0,
                Running {
                    stop: stop.clone(),
                    feed: Arc::clone(&feed),
                },
            );
        }
        let runner = Arc::clone(self);
        tokio::spawn(async move {
            let build = submission.build;
            if let Err(error) = runner.run_one(submission, stop, feed).await {
                eprintln!("kiln serve: build {build}: {error}");
            }
            runner
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&build.0);
            runner.changed(build);
            let _ =
                crate::scheduler::builddir::remove_tree(&submission_dir(&runner.store_dir, build));
            runner.wake();
        });
    }

    async fn run_one(
        &self,
        submission: Submission,
        stop: watch::Sender<Option<Stop>>,
        feed: Arc<Feed>,
    ) -> Result<(), super::ServerError> {
        let store_dir = self.store_dir.clone();
        let build = submission.build;
        let claimed = tokio::task::spawn_blocking(move || {
            kiln_store::Store::open(&store_dir).and_then(|mut store| store.claim_build(build))
        })
        .await
        .map_err(|error| super::ServerError::Internal(error.to_string()))??;
        // Killed while queued.
        let Some(lease) = claimed else { return Ok(()) };
        self.changed(build);
        let dir = submission_dir(&self.store_dir, build);
        let manifest_path = dir.join(&submission.manifest);
        let router = crate::events::local::recording_router(&self.store_dir, build, lease)?
            .interceptor(Route::All, feed.interceptor());
        let bus = EventBus::start(build.0, router)?;
        let emitter = bus.emitter();
        emitter.emit(Event::BuildQueued {
            owner: dir.display().to_string(),
            manifest: manifest_path.display().to_string(),
        });
        emitter.emit(Event::BuildInitializing {
            pid: std::process::id(),
            host: crate::events::local::hostname(),
        });
        let params = match prepare(&self.store_dir, build, &dir, &manifest_path, &submission) {
            Ok(params) => Some(params),
            Err(message) => {
                emitter.emit(Event::Warning { job: None, message });
                emitter.emit(Event::BuildEnd {
                    status: BuildStatus::Failed,
                    duration_ms: 0,
                });
                None
            }
        };
        if let Some((params, roots)) = params {
            let launch = Launch {
                exe: self.exe.clone(),
                place: self.place,
                roots,
            };
            let _ =
                run_build_process(&self.store_dir, &params, &launch, &emitter, feed, stop).await;
        }
        bus.finish().await?;
        Ok(())
    }
}

/// Loads the submission's manifest again (it was validated when it was
/// submitted) and makes the build's parameters.
fn prepare(
    store_dir: &Path,
    build: BuildId,
    dir: &Path,
    manifest_path: &Path,
    submission: &Submission,
) -> Result<(BuildParams, Vec<PathBuf>), String> {
    let args = crate::cli::manifest::parse_args(&submission.args).map_err(|e| e.to_string())?;
    let loaded = load::load(
        manifest_path,
        &load::LoadOptions {
            args,
            allow_paths: Vec::new(),
        },
    );
    let diagnostics = loaded.render_diagnostics();
    let manifest = loaded
        .result
        .map_err(|_| format!("the manifest does not load:\n{diagnostics}"))?;
    let graph = BuildGraph::compile(&manifest).map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let params = BuildParams {
        build: build.0,
        manifest: manifest_path.to_path_buf(),
        args: submission.args.clone(),
        allow_paths: Vec::new(),
        manifest_digest: manifest_digest(&manifest),
        options: BuildOptions {
            jobs: cores,
            no_cache: false,
            check: false,
            log_limit: 64 << 20,
            store_dir: store_dir.to_path_buf(),
            owner: dir.display().to_string(),
        },
        graph: GraphView::of(&graph),
    };
    Ok((params, manifest.roots.roots().to_vec()))
}
