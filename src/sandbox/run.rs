//! The parent side: write a spec, get a `Command` for the helper, turn its
//! exit into a [`SandboxOutcome`]. No tokio here: a `std::process::Command`
//! converts into a `tokio::process::Command` with `From`.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use super::cgroup::Cgroup;
use super::error::SandboxError;
use super::helper::HELPER_ARG;
use super::outcome::SandboxOutcome;
use super::spec::SandboxSpec;
use super::sys::RealSys;

/// One prepared sandbox run: the spec written into `dir`, where the helper
/// will also leave its status.
#[derive(Clone, Debug)]
pub struct SandboxRun {
    spec_path: PathBuf,
    status_path: PathBuf,
}

impl SandboxRun {
    /// Writes `spec` into `dir` (an existing directory private to this run,
    /// outside every path the job can see) after checking it.
    pub fn prepare(spec: &SandboxSpec, dir: &Path) -> Result<SandboxRun, SandboxError> {
        spec.validate()?;
        let run = SandboxRun {
            spec_path: dir.join("sandbox-spec.json"),
            status_path: dir.join("sandbox-status.json"),
        };
        // Fails only on a path that is not UTF-8, which JSON cannot carry.
        let json = serde_json::to_vec_pretty(spec)
            .map_err(|err| SandboxError::InvalidSpec(format!("cannot encode the spec: {err}")))?;
        std::fs::write(&run.spec_path, json).map_err(|source| SandboxError::WriteRunFile {
            path: run.spec_path.clone(),
            source,
        })?;
        // A status from an earlier run in the same directory must not count.
        match std::fs::remove_file(&run.status_path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(SandboxError::WriteRunFile {
                    path: run.status_path.clone(),
                    source: err,
                });
            }
            _ => {}
        }
        Ok(run)
    }

    /// The command that runs the job: `HELPER __sandbox SPEC STATUS`, stdin
    /// from /dev/null, an empty environment. `helper` is the kiln binary
    /// (`std::env::current_exe()` in kiln, `env!("CARGO_BIN_EXE_kiln")` in
    /// tests). The caller chooses stdout/stderr (the job log) and spawns it
    /// from a long-lived thread: the helper dies with the thread that
    /// spawned it (`PR_SET_PDEATHSIG`), so not from `spawn_blocking`.
    pub fn command(&self, helper: &Path) -> Command {
        let mut command = Command::new(helper);
        command
            .arg(HELPER_ARG)
            .arg(&self.spec_path)
            .arg(&self.status_path)
            .env_clear()
            .stdin(Stdio::null());
        command
    }

    /// How the run ended, from the helper's exit status and status file.
    pub fn outcome(&self, status: ExitStatus) -> SandboxOutcome {
        let written = std::fs::read(&self.status_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<SandboxOutcome>(&bytes).ok());
        match written {
            Some(outcome) => outcome,
            None => SandboxOutcome::Aborted {
                signal: status.signal(),
                code: status.code(),
            },
        }
    }

    /// Removes what a helper killed before it could clean up leaves behind:
    /// its (empty) cgroup directories, when the spec had limits. `helper_pid`
    /// is the spawned child's id; call it after the child was reaped.
    pub fn clean_up_after_kill(&self, helper_pid: u32) {
        Cgroup::leftovers(helper_pid).remove(&mut RealSys);
    }

    pub fn spec_path(&self) -> &Path {
        &self.spec_path
    }

    pub fn status_path(&self) -> &Path {
        &self.status_path
    }
}
