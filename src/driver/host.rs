//! The host driver (Djinn `os`): the script runs on the host in a scratch
//! copy of the workspace, with the hermetic environment but no isolation.
//! For trusted glue jobs; never cached.

use std::os::unix::process::ExitStatusExt;

use tokio::sync::watch;

use super::container::append_log;
use super::{JobEnd, JobRun, RunOutcome, Stop, Workspace};

#[derive(Clone, Copy, Debug)]
pub struct HostDriver;

impl HostDriver {
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
        let Workspace::Scratch(scratch) = &job.workspace else {
            return failed("the host driver needs a scratch workspace".into());
        };
        let script = job.dir.join("job.sh");
        if let Err(error) = std::fs::write(&script, &job.script) {
            return failed(format!("cannot write {}: {error}", script.display()));
        }
        let (stdout, stderr, output) =
            match super::output::start(&log, job.log_limit, job.output.clone()) {
                Ok(pipes) => pipes,
                Err(error) => return failed(format!("cannot create {}: {error}", log.display())),
            };
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg(&script)
            .current_dir(scratch)
            .env_clear()
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so a kill reaches everything it started.
            .process_group(0)
            .kill_on_drop(true);
        let spawned = command.spawn();
        // The command holds the pipe's write ends: only the job may keep them.
        drop(command);
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => return failed(format!("cannot start /bin/sh: {error}")),
        };
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
        let stopped = tokio::select! {
            status = child.wait() => {
                output.finish().await;
                let exit_code = status.as_ref().ok().and_then(|status| status.code());
                let end = match status {
                    Ok(status) if status.success() => JobEnd::Passed,
                    Ok(status) => match (status.code(), status.signal()) {
                        (Some(code), _) => JobEnd::Failed(format!("the job script exited with {code}")),
                        (_, Some(signal)) => JobEnd::Failed(format!("the job script was killed by signal {signal}")),
                        _ => JobEnd::Failed("the job script failed".into()),
                    },
                    Err(error) => JobEnd::Failed(format!("waiting for the job: {error}")),
                };
                kill_group(pid);
                return RunOutcome { end, exit_code, log };
            }
            () = super::timeout_elapsed(job.timeout) => Stop::TimedOut,
            reason = super::stopped(&mut stop) => reason,
        };
        kill_group(pid);
        let _ = child.start_kill();
        let _ = child.wait().await;
        output.finish().await;
        let end = stopped.end_job(&log);
        RunOutcome {
            end,
            exit_code: None,
            log,
        }
    }
}

/// Kills what is left of the job's process group (background processes).
fn kill_group(pid: Option<i32>) {
    if let Some(pid) = pid {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
