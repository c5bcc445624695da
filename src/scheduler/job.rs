//! One job: key, cache lookup, workspace, run, capture (design §3–§5).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use kiln_store::{B3Digest, JobArtifact, JobResult};

use super::prepare::CacheLookup;
use super::{JobDone, RunError, Shared, caches};
use crate::driver::{Driver, JobEnd, JobRun, LineSink, Workspace};
use crate::events::{Event, JobStatus};
use crate::graph::KeyInputs;
use crate::layers::{self};
use crate::repro::{CheckOutcome, Comparison};

use kiln_store::JOB_PASSED as PASSED;

/// One job, as five typed phases: [`key`] → [`lookup`] → [`run`] →
/// [`capture`] → [`report`]. Each takes what the one before produced; only
/// `report` and the cache-hit path emit the job's terminal event.
pub(crate) async fn run_job(
    shared: &Arc<Shared>,
    index: usize,
    outputs: Vec<Option<B3Digest>>,
) -> Result<JobDone, RunError> {
    let driver = shared.drivers[shared.of_job[index]].clone();
    let keyed = key(shared, index, &driver, outputs).await?;
    let recorded = match lookup(shared, index, &driver, &keyed).await? {
        Lookup::Cached(result) => return Ok(report_cached(shared, index, &keyed, result)),
        Lookup::Run { recorded } => recorded,
    };
    let ran = match run(shared, index, &driver, &keyed).await {
        Some(ran) => ran,
        None => return Ok(report_skipped(shared, index)),
    };
    let started = ran.started;
    let exit_code = ran.exit_code;
    let captured = capture(shared, index, &keyed, ran, recorded.clone()).await;
    Ok(report(
        shared, index, &keyed, started, exit_code, captured, recorded,
    ))
}

/// Phase 1: the job's key, with every upstream output known.
struct Keyed {
    inputs: KeyInputs,
    key: B3Digest,
    /// The key inputs as recorded in `job/start` and `job/cached`.
    inputs_json: Option<serde_json::Value>,
    /// Upstream outputs, an empty layer for an upstream without one.
    outputs: Vec<Option<B3Digest>>,
    cacheable: bool,
}

/// An upstream without an output (it failed before producing one, in a
/// stage allowed to fail) counts as an empty layer.
async fn key(
    shared: &Arc<Shared>,
    index: usize,
    driver: &Driver,
    outputs: Vec<Option<B3Digest>>,
) -> Result<Keyed, RunError> {
    let node = &shared.graph.jobs[index];
    let upstream = node.upstream.clone();
    let key_driver = driver.clone();
    let (inputs, outputs) = shared
        .blocking(move |ctx, shared| {
            let mut outputs = outputs;
            for &up in &upstream {
                if outputs[up].is_none() {
                    outputs[up] = Some(layers::empty_tree(&mut ctx.store, &ctx.roots)?);
                }
            }
            let inputs = ctx
                .key_inputs(&shared.graph, index, &key_driver, &shared.base, &outputs)?
                .ok_or_else(|| RunError::Internal("an upstream output is missing".into()))?;
            Ok((inputs, outputs))
        })
        .await?;
    Ok(Keyed {
        key: inputs.key(),
        inputs_json: serde_json::to_value(&inputs).ok(),
        cacheable: super::prepare::cacheable(driver, &node.job),
        inputs,
        outputs,
    })
}

/// Phase 2's answer.
enum Lookup {
    /// Served from the store: the job does not run.
    Cached(JobResult),
    /// The job runs; under `--check`, with the result to compare against.
    Run { recorded: Option<JobResult> },
}

/// The one "is it cached?" rule (`StoreCtx::lookup_cached`), and what
/// `--check` compares with (a trusted hit, or an untrusted bundle result).
async fn lookup(
    shared: &Arc<Shared>,
    index: usize,
    driver: &Driver,
    keyed: &Keyed,
) -> Result<Lookup, RunError> {
    let checking = shared.options.check;
    if !keyed.cacheable || (!checking && shared.options.no_cache) {
        return Ok(Lookup::Run { recorded: None });
    }
    let (lookup_driver, key) = (driver.clone(), keyed.key);
    let found = shared
        .blocking(move |ctx, shared| {
            ctx.lookup_cached(&shared.graph.jobs[index].job, &lookup_driver, &key)
        })
        .await?;
    Ok(match found {
        CacheLookup::Hit(result) if checking => Lookup::Run {
            recorded: Some(result),
        },
        CacheLookup::Hit(result) => Lookup::Cached(result),
        CacheLookup::Miss { recorded } if checking => Lookup::Run {
            recorded: recorded.filter(|result| result.status == kiln_store::JOB_UNTRUSTED),
        },
        CacheLookup::Miss { .. } | CacheLookup::Uncacheable => Lookup::Run { recorded: None },
    })
}

fn report_cached(shared: &Arc<Shared>, index: usize, keyed: &Keyed, result: JobResult) -> JobDone {
    let node = &shared.graph.jobs[index];
    let emitter = &shared.emitter;
    emitter.emit(Event::JobCached {
        job: node.job.name.clone(),
        stage: node.job.stage.clone(),
        key: keyed.key,
        key_inputs: keyed.inputs_json.clone(),
        output_layer: result.output_layer,
        log: result.log,
    });
    for artifact in result.artifacts {
        emitter.emit(Event::ArtifactSaved {
            job: node.job.name.clone(),
            name: artifact.name,
            object: artifact.object,
            size: artifact.size,
        });
    }
    JobDone {
        status: JobStatus::Cached,
        output: Some(result.output_layer),
    }
}

fn report_skipped(shared: &Arc<Shared>, index: usize) -> JobDone {
    let node = &shared.graph.jobs[index];
    shared.emitter.emit(Event::JobSkipped {
        job: node.job.name.clone(),
        stage: node.job.stage.clone(),
        reason: "the build stopped before it could start".into(),
    });
    JobDone {
        status: JobStatus::Skipped,
        output: None,
    }
}

/// Phase 3's result: how the job's script ended and where its traces are.
struct Ran {
    started: Instant,
    end: JobEnd,
    exit_code: Option<i32>,
    job_dir: PathBuf,
    log_path: PathBuf,
    workspace: Option<Workspace>,
    /// The host driver's view before the job (its output is the diff).
    merged: Option<B3Digest>,
    /// Upstream output layers, bottom first.
    layer_stack: Vec<B3Digest>,
    caches: Vec<caches::PreparedCache>,
}

/// Waits for a slot (`None` when the build stops first), lays out the
/// workspace and caches, and runs the job on its driver.
async fn run(shared: &Arc<Shared>, index: usize, driver: &Driver, keyed: &Keyed) -> Option<Ran> {
    let node = &shared.graph.jobs[index];
    let name = node.job.name.clone();
    let emitter = &shared.emitter;
    let mut stop = shared.stop.clone();
    let permit = tokio::select! {
        permit = shared.slots.acquire() => permit.ok(),
        _ = crate::driver::stopped(&mut stop) => None,
    };
    if permit.is_none() || shared.halted.load(Ordering::SeqCst) {
        return None;
    }
    emitter.emit(Event::JobStart {
        job: name.clone(),
        stage: node.job.stage.clone(),
        key: keyed.cacheable.then_some(keyed.key),
        key_inputs: keyed.inputs_json.clone(),
    });
    let started = Instant::now();
    let job_dir = shared.temp.join(format!("{index}-{name}"));
    let base_layer = keyed.inputs.base_layer;
    let layer_stack: Vec<B3Digest> = node
        .upstream
        .iter()
        .filter_map(|&u| keyed.outputs[u])
        .collect();
    let prepared = {
        let (job_dir, layer_stack, driver) = (job_dir.clone(), layer_stack.clone(), driver.clone());
        shared
            .blocking(move |ctx, _| {
                prepare_workspace(ctx, &driver, &job_dir, &base_layer, &layer_stack)
            })
            .await
    };
    let caches = match &prepared {
        Ok(_) => {
            let (job_dir, specs, driver) =
                (job_dir.clone(), node.job.caches.clone(), driver.clone());
            shared
                .blocking(move |ctx, _| caches::restore(ctx, &driver, &job_dir, &specs))
                .await
        }
        Err(_) => Ok(Vec::new()),
    };
    let caches = match caches {
        Ok(caches) => caches,
        Err(error) => {
            emitter.emit(Event::Warning {
                job: Some(name.clone()),
                message: format!("build caches not restored: {error}"),
            });
            Vec::new()
        }
    };
    for (cache, tree) in caches
        .iter()
        .filter_map(|c| c.restored.map(|tree| (c, tree)))
    {
        emitter.emit(Event::CacheRestored {
            job: name.clone(),
            key: cache.key.clone(),
            tree,
        });
    }
    let ran = match prepared {
        Ok((workspace, merged)) => {
            let job = JobRun {
                name: name.clone(),
                script: node.job.script(),
                env: keyed.inputs.env.clone(),
                manifest_env: node
                    .job
                    .env
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
                dir: job_dir.clone(),
                workspace: workspace.clone(),
                timeout: node.job.timeout,
                network: node.job.network,
                caches: caches
                    .iter()
                    .flat_map(|cache| cache.mounts.iter().cloned())
                    .collect(),
                output: Some(output_sink(emitter.clone(), name.clone())),
                log_limit: shared.options.log_limit,
            };
            let outcome = driver.run(job, shared.stop.clone()).await;
            Ran {
                started,
                end: outcome.end,
                exit_code: outcome.exit_code,
                job_dir,
                log_path: outcome.log,
                workspace: Some(workspace),
                merged,
                layer_stack,
                caches,
            }
        }
        Err(error) => {
            let _ = std::fs::create_dir_all(&job_dir);
            let log_path = job_dir.join("log");
            let _ = std::fs::write(
                &log_path,
                format!("kiln: cannot prepare the workspace: {error}\n"),
            );
            emitter.emit(Event::Warning {
                job: Some(name.clone()),
                message: format!("cannot prepare the workspace: {error}"),
            });
            Ran {
                started,
                end: JobEnd::Failed("the workspace could not be prepared".into()),
                exit_code: None,
                job_dir,
                log_path,
                workspace: None,
                merged: None,
                layer_stack,
                caches,
            }
        }
    };
    drop(permit);
    Some(ran)
}

/// Phase 4's result: what the job left in the store.
struct Captured {
    end: JobEnd,
    output: Option<B3Digest>,
    log: Option<B3Digest>,
    artifacts: Vec<JobArtifact>,
    /// Caches saved: key, tree, size.
    saved: Vec<(String, B3Digest, u64)>,
    /// `--check`: the comparison with the recorded result.
    compared: Option<Result<(Comparison, Comparison), String>>,
}

/// Stores the output layer, artifacts and log, records the result of a
/// passing cacheable job, saves caches, compares under `--check`, and
/// removes the job's directory. A failure here fails the job, never the
/// build.
async fn capture(
    shared: &Arc<Shared>,
    index: usize,
    keyed: &Keyed,
    ran: Ran,
    recorded: Option<JobResult>,
) -> Captured {
    let node = &shared.graph.jobs[index];
    let artifacts_spec = node.job.artifacts.clone();
    // `--check` keeps the first recorded result.
    let record = keyed.cacheable && recorded.is_none();
    let (key, base_layer) = (keyed.key, keyed.inputs.base_layer);
    let job_dir = ran.job_dir.clone();
    let Ran {
        end,
        log_path,
        workspace,
        merged,
        layer_stack,
        caches,
        job_dir: finish_dir,
        ..
    } = ran;
    let finished = shared
        .blocking(move |ctx, _| {
            let mut end = end;
            let captured = match (&end, &workspace) {
                (JobEnd::Passed | JobEnd::Failed(_), Some(Workspace::Layers { upper, .. })) => {
                    layers::capture(&mut ctx.store, upper, &ctx.roots).map(Some)
                }
                (JobEnd::Passed | JobEnd::Failed(_), Some(Workspace::Scratch(scratch))) => {
                    layers::capture(&mut ctx.store, scratch, &ctx.roots).and_then(|after| {
                        let before = merged.unwrap_or(after);
                        layers::diff(&mut ctx.store, &before, &after, &ctx.roots).map(Some)
                    })
                }
                _ => Ok(None),
            };
            // A failed capture (a full disk) fails the job, but its log is
            // still stored: the job/end event and the record carry it.
            let output = match captured {
                Ok(output) => output,
                Err(error) => {
                    let message = format!("capturing the job's output failed: {error}");
                    crate::driver::append_to_log(&log_path, &format!("kiln: {message}\n"));
                    end = JobEnd::Failed(message);
                    None
                }
            };
            let mut artifacts: Vec<JobArtifact> = Vec::new();
            if let (JobEnd::Passed, Some(output)) = (&end, output) {
                let mut stack = layer_stack;
                stack.push(output);
                let collected =
                    layers::merged_view(&ctx.store, &base_layer, &stack).and_then(|mut view| {
                        layers::collect_artifacts(
                            &mut ctx.store,
                            &mut view,
                            &artifacts_spec,
                            &ctx.roots,
                        )
                    });
                match collected {
                    Ok(found) => artifacts = found,
                    Err(error) => {
                        let message = format!("collecting artifacts failed: {error}");
                        crate::driver::append_to_log(&log_path, &format!("kiln: {message}\n"));
                        end = JobEnd::Failed(message);
                    }
                }
            }
            let log_bytes = std::fs::read(&log_path).unwrap_or_default();
            let log = Some(ctx.store.add_bytes(&log_bytes, &ctx.roots)?.object.digest);
            if let (JobEnd::Passed, Some(output), true) = (&end, output, record) {
                ctx.store
                    .record_job_result(key, output, log, PASSED, artifacts.clone())?;
            }
            let saved = if matches!(end, JobEnd::Passed) {
                caches::save(ctx, &caches)?
            } else {
                Vec::new()
            };
            let compared = match (&end, output, &recorded) {
                (JobEnd::Passed, Some(output), Some(recorded)) => Some(
                    crate::repro::compare::compare_job_result(
                        &ctx.store, recorded, output, &artifacts,
                    )
                    .map_err(|error| error.to_string()),
                ),
                _ => None,
            };
            let _ = std::fs::remove_dir_all(&finish_dir);
            Ok(Captured {
                end,
                output,
                log,
                artifacts,
                saved,
                compared,
            })
        })
        .await;
    match finished {
        Ok(captured) => captured,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&job_dir);
            Captured {
                end: JobEnd::Failed(format!("capturing the job's output failed: {error}")),
                output: None,
                log: None,
                artifacts: Vec::new(),
                saved: Vec::new(),
                compared: None,
            }
        }
    }
}

/// Phase 5: the job's events (caches saved, artifacts, `job/end`, and under
/// `--check` its `job/check`) and what dependents see.
fn report(
    shared: &Arc<Shared>,
    index: usize,
    keyed: &Keyed,
    started: Instant,
    exit_code: Option<i32>,
    captured: Captured,
    recorded: Option<JobResult>,
) -> JobDone {
    let node = &shared.graph.jobs[index];
    let (name, stage) = (node.job.name.clone(), node.job.stage.clone());
    let emitter = &shared.emitter;
    let Captured {
        end,
        output,
        log,
        artifacts,
        saved,
        compared,
    } = captured;
    let (status, message) = match end {
        JobEnd::Passed => (JobStatus::Passed, None),
        JobEnd::Failed(message) => (JobStatus::Failed, Some(message)),
        JobEnd::Killed => (JobStatus::Killed, Some("killed".to_owned())),
        JobEnd::TimedOut => (
            JobStatus::TimedOut,
            Some(match node.job.timeout {
                Some(timeout) => format!(
                    "timed out after {}",
                    kiln_grammar::manifest::format_duration(timeout)
                ),
                None => "timed out".to_owned(),
            }),
        ),
    };
    for (key, tree, size) in saved {
        emitter.emit(Event::CacheSaved {
            job: name.clone(),
            key,
            tree,
            size,
        });
    }
    if status == JobStatus::Passed {
        for artifact in artifacts {
            emitter.emit(Event::ArtifactSaved {
                job: name.clone(),
                name: artifact.name,
                object: artifact.object,
                size: artifact.size,
            });
        }
    }
    let check = shared.options.check.then(|| {
        check_event(
            keyed.cacheable,
            recorded.as_ref(),
            status,
            message.as_deref(),
            output,
            compared,
        )
    });
    emitter.emit(Event::JobEnd {
        job: name.clone(),
        stage: stage.clone(),
        status,
        duration_ms: started.elapsed().as_millis() as u64,
        exit_code,
        log,
        output_layer: output,
        message,
    });
    let mut output = output;
    if let Some(check) = check {
        if let Ok(mut checks) = shared.checks.lock() {
            checks.push((name.clone(), check.outcome));
        }
        emitter.emit(Event::JobCheck {
            job: name,
            stage,
            outcome: check.outcome,
            key: keyed.cacheable.then_some(keyed.key),
            recorded_output_layer: recorded.as_ref().map(|r| r.output_layer),
            new_output_layer: output,
            output: check.output,
            artifacts: check.artifacts,
            reason: check.reason,
        });
        // Dependents are checked against the inputs their recorded results
        // had: the recorded output, not the rerun's.
        if let (JobStatus::Passed, Some(recorded)) = (status, &recorded) {
            output = Some(recorded.output_layer);
        }
    }
    JobDone { status, output }
}

/// What `--check` says about one job.
struct CheckFinding {
    outcome: CheckOutcome,
    output: Comparison,
    artifacts: Comparison,
    reason: Option<String>,
}

fn check_event(
    cacheable: bool,
    recorded: Option<&JobResult>,
    status: JobStatus,
    message: Option<&str>,
    output: Option<B3Digest>,
    compared: Option<Result<(Comparison, Comparison), String>>,
) -> CheckFinding {
    let unchecked = |reason: String| CheckFinding {
        outcome: CheckOutcome::Unchecked,
        output: Comparison::default(),
        artifacts: Comparison::default(),
        reason: Some(reason),
    };
    if !cacheable {
        return unchecked(
            "never cached (host driver or network = true): nothing recorded to compare".into(),
        );
    }
    let Some(_) = recorded else {
        return unchecked(match status {
            JobStatus::Passed => "no recorded result: this run is now the recorded one".into(),
            other => format!("no recorded result, and the run {}", other.label()),
        });
    };
    match (status, compared) {
        (JobStatus::Passed, Some(Ok((output, artifacts)))) => CheckFinding {
            outcome: if output.is_identical() && artifacts.is_identical() {
                CheckOutcome::Reproducible
            } else {
                CheckOutcome::Differs
            },
            output,
            artifacts,
            reason: None,
        },
        (JobStatus::Passed, Some(Err(error))) => unchecked(format!("comparison failed: {error}")),
        (JobStatus::Passed, None) if output.is_none() => unchecked("no output layer".into()),
        (JobStatus::Passed, None) => unchecked("not compared".into()),
        (JobStatus::Failed, _) => CheckFinding {
            outcome: CheckOutcome::Differs,
            output: Comparison::default(),
            artifacts: Comparison::default(),
            reason: Some(format!(
                "the recorded result passed, the rerun failed{}",
                message.map(|m| format!(": {m}")).unwrap_or_default()
            )),
        },
        (other, _) => unchecked(format!("the rerun was {}", other.label())),
    }
}

/// Emits each output line of `job` as a `job/output` event. Lines the bus
/// has no room for are dropped (the log has them) and counted in a note
/// once there is room again.
fn output_sink(emitter: crate::events::Emitter, job: String) -> LineSink {
    let dropped = std::sync::atomic::AtomicU64::new(0);
    LineSink(Arc::new(move |line: &str| {
        use std::sync::atomic::Ordering;
        let missed = dropped.load(Ordering::Relaxed);
        if missed > 0 {
            let note = format!(
                "kiln: {missed} line(s) of output not shown here (the console fell behind); the job's log has them"
            );
            if !emitter.emit_output(&job, &note) {
                dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            dropped.store(0, Ordering::Relaxed);
        }
        if !emitter.emit_output(&job, line) {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }))
}

/// Lays out the job's workspace: overlay layers for a container, a merged
/// scratch copy for the host driver. Returns the merged tree for the host
/// driver (its output is the difference from it).
fn prepare_workspace(
    ctx: &mut super::StoreCtx,
    driver: &Driver,
    job_dir: &PathBuf,
    base: &B3Digest,
    stack: &[B3Digest],
) -> Result<(Workspace, Option<B3Digest>), RunError> {
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| RunError::Io { path, source }
    };
    std::fs::create_dir_all(job_dir).map_err(io(job_dir))?;
    match driver {
        // A VM gets the same layers on a disk and writes its upper layer
        // back into `upper` (`work` stays unused).
        Driver::Container(_) | Driver::Qemu(_) => {
            // overlayfs refuses one directory twice among its lower layers;
            // keeping only the topmost copy of a repeated layer shows the
            // same files (everything the lower copy has, the upper hides).
            let all: Vec<B3Digest> = std::iter::once(*base)
                .chain(stack.iter().copied())
                .collect();
            let distinct: Vec<B3Digest> = all
                .iter()
                .enumerate()
                .filter(|(position, layer)| !all[position + 1..].contains(layer))
                .map(|(_, layer)| *layer)
                .collect();
            let layers = ctx.squash_deep_stack(&distinct)?;
            let mut lower = Vec::with_capacity(layers.len());
            for layer in &layers {
                lower.push(ctx.layers.directory(&ctx.store, layer)?);
            }
            let upper = job_dir.join("upper");
            let work = job_dir.join("work");
            for dir in [&upper, &work] {
                std::fs::create_dir(dir).map_err(io(dir))?;
            }
            Ok((Workspace::Layers { lower, upper, work }, None))
        }
        Driver::Host(_) => {
            let merged = layers::merged_tree(&mut ctx.store, &ctx.roots, base, stack)?;
            let scratch = job_dir.join("workspace");
            ctx.store.restore(&merged, &scratch, &Default::default())?;
            Ok((Workspace::Scratch(scratch), Some(merged)))
        }
    }
}
