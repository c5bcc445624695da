//! The container driver: each job in a fresh sandbox (`src/sandbox/`),
//! spawned with tokio::process from the job's task (a runtime worker thread
//! lives as long as the runtime, which matters for the helper's
//! parent-death signal; `spawn_blocking` threads do not).

use std::path::{Path, PathBuf};

use kiln_grammar::manifest::ContainerDriver as ContainerSpec;
use kiln_store::{B3Digest, Store};
use tokio::sync::watch;

use super::{CreateContext, DriverError, JobEnd, JobRun, RunOutcome, Stop, Workspace};
use crate::graph::DriverKey;
use crate::image;
use crate::sandbox::{
    Bind, Limits, RootFs, SandboxOutcome, SandboxRun, SandboxSpec, WorkspaceSpec,
};

/// Where imported images are restored for the sandbox, inside the store.
pub const IMAGE_CACHE: &str = crate::image::cache::IMAGE_CACHE;

#[derive(Clone, Debug)]
pub struct ContainerDriver {
    spec: ContainerSpec,
    root: RootFs,
    image_digest: B3Digest,
    /// The image's own configuration (OCI `Env`), if it has one.
    image_config: Option<image::ImageConfig>,
    helper: PathBuf,
}

impl ContainerDriver {
    /// Resolves the image (`"host"`, a `blake3:` digest or an imported
    /// name) and lays it out for the sandbox (an imported image is restored
    /// once into `<store>/image-cache/<digest>`).
    pub fn create(spec: &ContainerSpec, context: &CreateContext) -> Result<Self, DriverError> {
        let image_error = |reason: String| DriverError::Image {
            image: spec.image.clone(),
            reason,
        };
        let mut store = Store::open(&context.store_dir).map_err(|e| image_error(e.to_string()))?;
        let image =
            image::resolve(&mut store, &spec.image).map_err(|e| image_error(e.to_string()))?;
        let mut root = image::materialise(&store, &image, &context.store_dir.join(IMAGE_CACHE))
            .map_err(|e| image_error(e.to_string()))?;
        let image_config =
            image::image_config(&store, &image).map_err(|e| image_error(e.to_string()))?;
        if let RootFs::Host { exclude } = &mut root {
            exclude.extend(context.hidden.iter().cloned());
        }
        Ok(ContainerDriver {
            spec: spec.clone(),
            root,
            image_digest: image.digest(),
            image_config,
            helper: context.helper.clone(),
        })
    }

    pub fn key(&self) -> DriverKey {
        DriverKey {
            kind: "container".into(),
            image: Some(self.image_digest),
            kernel: None,
            memory: self.spec.memory,
            cpus: self.spec.cpus,
            pids: self.spec.pids,
            workspace: Some(self.spec.workspace.clone()),
        }
    }

    pub fn image_digest(&self) -> B3Digest {
        self.image_digest
    }

    pub fn workspace(&self) -> &str {
        &self.spec.workspace
    }

    pub async fn run(&self, job: JobRun, mut stop: watch::Receiver<Option<Stop>>) -> RunOutcome {
        let log = job.dir.join("log");
        let failed = |reason: String| {
            append_log(&log, &format!("kiln: {reason}\n"));
            RunOutcome {
                end: JobEnd::Failed(reason),
                exit_code: None,
                log: log.clone(),
            }
        };
        let Workspace::Layers { lower, upper, work } = &job.workspace else {
            return failed("the container driver needs a layered workspace".into());
        };
        let script = job.dir.join("job.sh");
        if let Err(error) = std::fs::write(&script, &job.script) {
            return failed(format!("cannot write {}: {error}", script.display()));
        }
        let mut spec = SandboxSpec::new(
            self.root.clone(),
            WorkspaceSpec {
                path: PathBuf::from(&self.spec.workspace),
                lower: lower.clone(),
                upper: upper.clone(),
                work: work.clone(),
            },
            script,
        );
        // The image's env (digested into the image, so into the key) sits
        // between kiln's fixed values and the manifest's, which wins.
        spec.env = match &self.image_config {
            Some(config) => config.job_env(
                &super::hermetic_env(&Default::default(), super::HOME),
                &job.manifest_env,
            ),
            None => job.env.clone(),
        };
        spec.network = job.network;
        spec.binds = job
            .caches
            .iter()
            .map(|(source, target)| Bind {
                source: source.clone(),
                target: target.clone(),
                read_only: false,
            })
            .collect();
        spec.limits = Limits {
            memory_bytes: self.spec.memory.map(|mib| mib * 1024 * 1024),
            pids: self.spec.pids,
        };
        let run = match SandboxRun::prepare(&spec, &job.dir) {
            Ok(run) => run,
            Err(error) => return failed(format!("cannot prepare the sandbox: {error}")),
        };
        let (stdout, stderr, output) =
            match super::output::start(&log, job.log_limit, job.output.clone()) {
                Ok(pipes) => pipes,
                Err(error) => return failed(format!("cannot create {}: {error}", log.display())),
            };
        let mut command = tokio::process::Command::from(run.command(&self.helper));
        // Its own process group: a terminal's Ctrl-C reaches kiln, which stops
        // the job itself (Killed), not the helper directly.
        command
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        let spawned = command.spawn();
        // The command holds the pipe's write ends: only the job may keep them.
        drop(command);
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => return failed(format!("cannot start the sandbox helper: {error}")),
        };
        let pid = child.id().unwrap_or(0);
        let stopped = tokio::select! {
            status = child.wait() => {
                output.finish().await;
                let (end, exit_code) = match status {
                    Ok(status) => {
                        let outcome = run.outcome(status);
                        let exit_code = match outcome {
                            SandboxOutcome::Exited { code } => Some(code),
                            _ => None,
                        };
                        (end_of(outcome, &log), exit_code)
                    }
                    Err(error) => (JobEnd::Failed(format!("waiting for the sandbox: {error}")), None),
                };
                return RunOutcome { end, exit_code, log };
            }
            () = super::timeout_elapsed(job.timeout) => Stop::TimedOut,
            reason = super::stopped(&mut stop) => reason,
        };
        // Killing the helper kills the sandbox's PID 1 (parent-death
        // signal) and with it the whole pid namespace.
        let _ = child.start_kill();
        let _ = child.wait().await;
        output.finish().await;
        run.clean_up_after_kill(pid);
        let end = stopped.end_job(&log);
        RunOutcome {
            end,
            exit_code: None,
            log,
        }
    }
}

fn end_of(outcome: SandboxOutcome, log: &Path) -> JobEnd {
    match outcome {
        SandboxOutcome::Exited { code: 0 } => JobEnd::Passed,
        SandboxOutcome::SetupFailed { reason } => {
            let message = format!("kiln sandbox: setup failed: {reason}");
            append_log(log, &format!("{message}\n"));
            JobEnd::Failed(message)
        }
        other => JobEnd::Failed(format!("the job script {other}")),
    }
}

pub(super) fn append_log(log: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = file.write_all(text.as_bytes());
    }
}
