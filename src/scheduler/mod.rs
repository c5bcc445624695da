//! The scheduler (design §5): runs a [`BuildGraph`] on tokio. Jobs start as
//! soon as their dependencies are done, at most `jobs` at once; a job whose
//! key has a passed result in the store is not run (Cached). Everything is
//! reported as events; nothing is printed or recorded here except the
//! store's job results (key → output layer, log, artifacts).
//!
//! Architecture invariant: whatever ends a build (success, failure, kill,
//! timeout), `run_build` returns only after every job's processes are gone,
//! every driver is destroyed and the build's temp dir is removed.

pub mod builddir;
mod caches;
mod job;
pub mod prepare;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_grammar::manifest::Manifest;
use kiln_store::{B3Digest, BuildStatus, StoreError};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::driver::{CreateContext, Driver, DriverError, Stop};
use crate::events::{Emitter, Event, JobStatus};
use crate::graph::BuildGraph;
use crate::layers::LayerError;
use crate::resolve::ResolveError;
use prepare::{DriverSet, StoreCtx, driver_name};

pub use crate::driver::DRIVER_CREATE_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// A manifest feature the job's driver does not offer (yet).
    #[error("{0}")]
    Unsupported(String),
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Jobs running at once.
    pub jobs: usize,
    /// Run every job, even those with a cached result.
    pub no_cache: bool,
    /// `--check`: rerun every cacheable job that has a recorded result and
    /// compare (`job/check`); the recorded result is kept.
    pub check: bool,
    pub store_dir: PathBuf,
    /// The kiln binary (the sandbox helper).
    pub helper: PathBuf,
    /// Whose build this is (curation, `explain` records): the manifest's
    /// directory.
    pub owner: String,
    /// Bytes of each job's output its log keeps (`--log-limit`).
    pub log_limit: u64,
}

/// What the build came to.
#[derive(Clone, Debug)]
pub struct BuildOutcome {
    pub status: BuildStatus,
    /// Per job, graph order.
    pub jobs: Vec<(String, JobStatus)>,
    /// With `check`: each compared job's outcome, in the order they ended.
    pub checks: Vec<(String, crate::repro::CheckOutcome)>,
}

/// Shared by the job tasks of one build.
pub(crate) struct Shared {
    pub graph: BuildGraph,
    pub drivers: Vec<Driver>,
    pub of_job: Vec<usize>,
    pub base: B3Digest,
    pub ctx: Mutex<StoreCtx>,
    pub emitter: Emitter,
    pub options: RunOptions,
    pub temp: PathBuf,
    pub slots: Semaphore,
    pub stop: watch::Receiver<Option<Stop>>,
    /// Set once the build stops taking up new jobs (a failed stage).
    pub halted: std::sync::atomic::AtomicBool,
    /// What `--check` found, per job.
    pub checks: Arc<Mutex<Vec<(String, crate::repro::CheckOutcome)>>>,
}

impl Shared {
    /// Runs `f` on the store on the blocking pool.
    pub async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, RunError>
    where
        T: Send + 'static,
        F: FnOnce(&mut StoreCtx, &Shared) -> Result<T, RunError> + Send + 'static,
    {
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut ctx = shared
                .ctx
                .lock()
                .map_err(|_| RunError::Internal("the store lock is poisoned".into()))?;
            f(&mut ctx, &shared)
        })
        .await
        .map_err(|error| RunError::Internal(format!("a store task failed: {error}")))?
    }
}

/// Where one job ended up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JobDone {
    pub status: JobStatus,
    /// Its output layer (also for a failed job, whose dependents still run
    /// when its stage is in `allow_failures`).
    pub output: Option<B3Digest>,
}

/// Runs a whole build. `stop` carries Ctrl-C / `kiln kill` (Killed); the
/// build timeout is handled here.
pub async fn run_build(
    manifest: &Manifest,
    graph: BuildGraph,
    options: RunOptions,
    emitter: Emitter,
    stop_sender: watch::Sender<Option<Stop>>,
) -> Result<BuildOutcome, RunError> {
    let started = Instant::now();
    emitter.emit(Event::BuildStart {
        stages: graph.stages.clone(),
        jobs: graph.jobs.len() as u32,
    });
    // Directories of builds that died (SIGKILL, power loss) go first.
    for stale in builddir::sweep_stale(&options.store_dir) {
        emitter.emit(Event::Warning {
            job: None,
            message: format!("removed {} left by a dead build", stale.display()),
        });
    }
    for stale in crate::sandbox::Cgroup::sweep_stale() {
        emitter.emit(Event::Warning {
            job: None,
            message: format!("removed cgroup {} left by a dead build", stale.display()),
        });
    }
    let temp = builddir::BuildDir::create(&options.store_dir)?;
    let stop_sender = Arc::new(stop_sender);
    if let Some(timeout) = manifest.timeout {
        let sender = Arc::clone(&stop_sender);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            sender.send_if_modified(|stop| {
                if stop.is_none() {
                    *stop = Some(Stop::TimedOut);
                    true
                } else {
                    false
                }
            });
        });
    }
    let stop = stop_sender.subscribe();
    let checks = Arc::new(Mutex::new(Vec::new()));
    let result = run_in(
        manifest,
        graph,
        &options,
        &emitter,
        stop,
        temp.path().to_path_buf(),
        Arc::clone(&checks),
    )
    .await;
    let (status, jobs, drivers) = match result {
        Ok(done) => done,
        Err(error) => {
            emitter.emit(Event::Warning {
                job: None,
                message: format!("the build could not run: {error}"),
            });
            (BuildStatus::Failed, Vec::new(), Vec::new())
        }
    };
    for name in drivers {
        emitter.emit(Event::DriverDestroyed { driver: name });
    }
    emitter.emit(Event::BuildEnd {
        status,
        duration_ms: started.elapsed().as_millis() as u64,
    });
    if let Err(error) = temp.close() {
        emitter.emit(Event::Warning {
            job: None,
            message: format!("cannot remove the build directory: {error}"),
        });
    }
    let checks = checks
        .lock()
        .map(|mut checks| std::mem::take(&mut *checks))
        .unwrap_or_default();
    Ok(BuildOutcome {
        status,
        jobs,
        checks,
    })
}

type Finished = (BuildStatus, Vec<(String, JobStatus)>, Vec<String>);

async fn run_in(
    manifest: &Manifest,
    graph: BuildGraph,
    options: &RunOptions,
    emitter: &Emitter,
    mut stop: watch::Receiver<Option<Stop>>,
    temp: PathBuf,
    checks: Arc<Mutex<Vec<(String, crate::repro::CheckOutcome)>>>,
) -> Result<Finished, RunError> {
    let layers_dir = temp.join("layers");
    let jobs_dir = temp.join("jobs");
    for dir in [&layers_dir, &jobs_dir] {
        std::fs::create_dir_all(dir).map_err(|source| RunError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let store_dir = options.store_dir.clone();
    let ctx = tokio::task::spawn_blocking(move || StoreCtx::open(&store_dir, &layers_dir))
        .await
        .map_err(|e| RunError::Internal(e.to_string()))??;

    // 1. Drivers, each recorded as its own job.
    let set = DriverSet::of(&graph);
    let context = CreateContext {
        store_dir: options.store_dir.clone(),
        hidden: vec![options.store_dir.clone(), temp.clone()],
        helper: options.helper.clone(),
    };
    let mut drivers = Vec::with_capacity(set.specs.len());
    let mut created = Vec::new();
    for spec in &set.specs {
        let name = driver_name(spec);
        let begun = Instant::now();
        let (spec_copy, context_copy) = (spec.clone(), context.clone());
        let creation =
            tokio::task::spawn_blocking(move || prepare::create_driver(&spec_copy, &context_copy));
        let failure = match tokio::time::timeout(DRIVER_CREATE_TIMEOUT, creation).await {
            Ok(Ok(Ok(driver))) => {
                emitter.emit(Event::DriverCreated {
                    driver: name.clone(),
                    kind: driver.key().kind,
                    image: driver.image_digest(),
                    duration_ms: begun.elapsed().as_millis() as u64,
                });
                created.push(name);
                drivers.push(driver);
                continue;
            }
            Ok(Ok(Err(error))) => (JobStatus::Failed, error.to_string()),
            Ok(Err(error)) => (JobStatus::Failed, error.to_string()),
            Err(_) => (
                JobStatus::TimedOut,
                format!(
                    "creating the driver took over {}s",
                    DRIVER_CREATE_TIMEOUT.as_secs()
                ),
            ),
        };
        emitter.emit(Event::JobEnd {
            job: format!("driver:{name}"),
            stage: "driver".into(),
            status: failure.0,
            duration_ms: begun.elapsed().as_millis() as u64,
            exit_code: None,
            log: None,
            output_layer: None,
            message: Some(failure.1),
        });
        let status = failure.0.build_status();
        return Ok((
            status,
            skip_all(&graph, emitter, "the driver could not be created"),
            created,
        ));
    }

    // 2. Objects (a failure is a warning) and 3. sources (a failure fails).
    let workspace = set
        .specs
        .first()
        .and_then(|spec| spec.workspace().map(str::to_owned));
    let ctx = Mutex::new(ctx);
    // Hashing sources is blocking work: keep it off the runtime's workers.
    let (objects, sources) = tokio::task::block_in_place(|| {
        let mut guard = ctx
            .lock()
            .map_err(|_| RunError::Internal("poisoned".into()))?;
        let placed = guard.place_objects(manifest, workspace.as_deref());
        let resolved = guard.resolve_sources(manifest);
        Ok::<_, RunError>((placed, resolved))
    })?;
    let mut placed = Vec::new();
    for (object, result) in manifest.objects.iter().zip(objects) {
        match result {
            Ok(object) => {
                emitter.emit(Event::ObjectPlaced {
                    name: object.dst.clone(),
                    object: object.object,
                });
                placed.push(object);
            }
            Err(error) => emitter.emit(Event::Warning {
                job: None,
                message: format!("object {} not placed: {error}", object.dst),
            }),
        }
    }
    let mut resolved = Vec::new();
    for (source, result) in manifest.sources.iter().zip(sources) {
        match result {
            Ok(source) => {
                emitter.emit(Event::SourceResolved {
                    name: source.dir.clone(),
                    url: source.label.clone(),
                    revision: source.commit.clone(),
                    tree: source.object.digest,
                });
                resolved.push(source);
            }
            Err(error) => {
                // Resolving a source is a job of its own (design §5),
                // named after the source as written, like `driver:NAME`.
                let label = match source {
                    kiln_grammar::manifest::Source::Path { path, .. } => &path.relative,
                    kiln_grammar::manifest::Source::Git { url, .. } => url,
                };
                emitter.emit(Event::JobEnd {
                    job: format!("source:{label}"),
                    stage: "sources".into(),
                    status: JobStatus::Failed,
                    duration_ms: 0,
                    exit_code: None,
                    log: None,
                    output_layer: None,
                    message: Some(error.to_string()),
                });
                return Ok((
                    BuildStatus::Failed,
                    skip_all(&graph, emitter, "a source could not be resolved"),
                    created,
                ));
            }
        }
    }
    let base = tokio::task::block_in_place(|| {
        let mut guard = ctx
            .lock()
            .map_err(|_| RunError::Internal("poisoned".into()))?;
        guard.compose_base(&resolved, &placed)
    })?;

    // 4. Jobs.
    for node in &graph.jobs {
        emitter.emit(Event::JobQueued {
            job: node.job.name.clone(),
            stage: node.job.stage.clone(),
            needs: node
                .needs
                .iter()
                .map(|&need| graph.jobs[need].job.name.clone())
                .collect(),
        });
    }
    let parallel = if graph.sequential {
        1
    } else {
        options.jobs.max(1)
    };
    let shared = Arc::new(Shared {
        drivers,
        of_job: set.of_job,
        base,
        ctx,
        emitter: emitter.clone(),
        options: options.clone(),
        temp: jobs_dir,
        slots: Semaphore::new(parallel),
        stop: stop.clone(),
        halted: std::sync::atomic::AtomicBool::new(false),
        checks,
        graph,
    });
    let count = shared.graph.jobs.len();
    let mut done: Vec<Option<JobDone>> = vec![None; count];
    let mut launched = vec![false; count];
    let mut stages = StageTracker::new(&shared.graph);
    let mut status = BuildStatus::Passed;
    let mut halted: Option<String> = None;
    let mut tasks = JoinSet::new();
    loop {
        // Launch (or skip) every job whose dependencies are all done.
        let mut progress = true;
        while progress {
            progress = false;
            for index in 0..count {
                if launched[index] {
                    continue;
                }
                let node = &shared.graph.jobs[index];
                let needs_done = node.needs.iter().all(|&need| done[need].is_some());
                if !needs_done {
                    continue;
                }
                launched[index] = true;
                progress = true;
                let blocked = node.needs.iter().find(|&&need| {
                    done[need].is_some_and(|d| !usable(&shared.graph, need, d.status))
                });
                let reason = match (&halted, blocked) {
                    (Some(reason), _) => Some(reason.clone()),
                    (None, Some(&need)) => {
                        Some(format!("{} did not pass", shared.graph.jobs[need].job.name))
                    }
                    (None, None) => None,
                };
                stages.start(emitter, &node.job.stage);
                if let Some(reason) = reason {
                    emitter.emit(Event::JobSkipped {
                        job: node.job.name.clone(),
                        stage: node.job.stage.clone(),
                        reason,
                    });
                    done[index] = Some(JobDone {
                        status: JobStatus::Skipped,
                        output: None,
                    });
                    stages.finish(emitter, &shared.graph, index, JobStatus::Skipped);
                    continue;
                }
                let outputs: Vec<Option<B3Digest>> =
                    done.iter().map(|d| d.and_then(|d| d.output)).collect();
                let shared = Arc::clone(&shared);
                tasks.spawn(async move {
                    let result = job::run_job(&shared, index, outputs).await;
                    (index, result)
                });
            }
        }
        if tasks.is_empty() {
            break;
        }
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { continue };
                let (index, result) = joined.map_err(|e| RunError::Internal(format!("a job task failed: {e}")))?;
                let node = &shared.graph.jobs[index];
                let finished = match result {
                    Ok(finished) => finished,
                    Err(error) => {
                        emitter.emit(Event::JobEnd {
                            job: node.job.name.clone(),
                            stage: node.job.stage.clone(),
                            status: JobStatus::Failed,
                            duration_ms: 0,
                            exit_code: None,
                            log: None,
                            output_layer: None,
                            message: Some(error.to_string()),
                        });
                        JobDone { status: JobStatus::Failed, output: None }
                    }
                };
                done[index] = Some(finished);
                stages.finish(emitter, &shared.graph, index, finished.status);
                let allowed = shared.graph_allows(index);
                let job_status = match finished.status {
                    JobStatus::Failed if allowed => BuildStatus::PassedWithFailures,
                    other => other.build_status(),
                };
                status = status.max(job_status);
                if job_status >= BuildStatus::Failed && halted.is_none() {
                    halted = Some(format!("{} did not pass", node.job.name));
                    shared.halted.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            reason = crate::driver::stopped(&mut stop), if halted.as_deref() != Some("stopped") => {
                status = status.max(match reason {
                    Stop::Killed => BuildStatus::Killed,
                    Stop::TimedOut => BuildStatus::TimedOut,
                });
                halted = Some("stopped".into());
                shared.halted.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    if let Some(reason) = *stop.borrow() {
        status = status.max(match reason {
            Stop::Killed => BuildStatus::Killed,
            Stop::TimedOut => BuildStatus::TimedOut,
        });
    }
    for driver in &shared.drivers {
        driver.destroy();
    }
    let jobs = shared
        .graph
        .jobs
        .iter()
        .zip(&done)
        .map(|(node, d)| {
            (
                node.job.name.clone(),
                d.map_or(JobStatus::Skipped, |d| d.status),
            )
        })
        .collect();
    Ok((status, jobs, created))
}

impl Shared {
    fn graph_allows(&self, index: usize) -> bool {
        let stage = &self.graph.jobs[index].job.stage;
        self.graph
            .allow_failures
            .iter()
            .any(|allowed| allowed == stage)
    }
}

/// Whether a finished job's output may feed its dependents: passed,
/// cached, or failed in a stage listed in `allow_failures`.
fn usable(graph: &BuildGraph, index: usize, status: JobStatus) -> bool {
    match status {
        JobStatus::Passed | JobStatus::Cached => true,
        JobStatus::Failed => {
            let stage = &graph.jobs[index].job.stage;
            graph.allow_failures.iter().any(|allowed| allowed == stage)
        }
        _ => false,
    }
}

fn skip_all(graph: &BuildGraph, emitter: &Emitter, reason: &str) -> Vec<(String, JobStatus)> {
    graph
        .jobs
        .iter()
        .map(|node| {
            emitter.emit(Event::JobSkipped {
                job: node.job.name.clone(),
                stage: node.job.stage.clone(),
                reason: reason.to_owned(),
            });
            (node.job.name.clone(), JobStatus::Skipped)
        })
        .collect()
}

/// Emits `stage/start` when a stage's first job is taken up and
/// `stage/end` once all of its jobs are finished.
struct StageTracker {
    remaining: BTreeMap<String, usize>,
    started: std::collections::BTreeSet<String>,
    worst: BTreeMap<String, BuildStatus>,
}

impl StageTracker {
    fn new(graph: &BuildGraph) -> Self {
        let mut remaining = BTreeMap::new();
        for node in &graph.jobs {
            *remaining.entry(node.job.stage.clone()).or_insert(0) += 1;
        }
        Self {
            remaining,
            started: Default::default(),
            worst: BTreeMap::new(),
        }
    }

    fn start(&mut self, emitter: &Emitter, stage: &str) {
        if self.started.insert(stage.to_owned()) {
            emitter.emit(Event::StageStart {
                stage: stage.to_owned(),
            });
        }
    }

    fn finish(&mut self, emitter: &Emitter, graph: &BuildGraph, index: usize, status: JobStatus) {
        let stage = &graph.jobs[index].job.stage;
        let allowed = graph.allow_failures.iter().any(|a| a == stage);
        let outcome = match status {
            JobStatus::Failed if allowed => BuildStatus::PassedWithFailures,
            other => other.build_status(),
        };
        let worst = self
            .worst
            .entry(stage.clone())
            .or_insert(BuildStatus::Passed);
        *worst = (*worst).max(outcome);
        if let Some(remaining) = self.remaining.get_mut(stage) {
            *remaining -= 1;
            if *remaining == 0 {
                emitter.emit(Event::StageEnd {
                    stage: stage.clone(),
                    status: *worst,
                });
            }
        }
    }
}
