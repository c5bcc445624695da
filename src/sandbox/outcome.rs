//! How a sandboxed job ended, as the caller sees it.

use serde::{Deserialize, Serialize};

use super::helper::EXIT_SETUP_FAILED;

/// The end of one sandboxed job. The helper writes it to its status file;
/// [`super::SandboxRun::outcome`] reads it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SandboxOutcome {
    /// The job script exited with this code.
    Exited { code: i32 },
    /// The job script was killed by this signal.
    Signaled { signal: i32 },
    /// The sandbox could not be set up or `/bin/sh` could not be executed:
    /// the job never ran. The reason names the step and the object.
    SetupFailed { reason: String },
    /// The helper ended without writing an outcome: it was killed (by the
    /// caller, on a kill or timeout) or crashed.
    Aborted {
        signal: Option<i32>,
        code: Option<i32>,
    },
}

impl SandboxOutcome {
    /// True only for a job that ran and exited 0.
    pub fn success(&self) -> bool {
        matches!(self, SandboxOutcome::Exited { code: 0 })
    }

    /// The helper's own exit code: the job's, `128 + signal`, or 125 when
    /// setup failed (the status file is what tells them apart).
    pub fn helper_exit_code(&self) -> i32 {
        match self {
            SandboxOutcome::Exited { code } => *code,
            SandboxOutcome::Signaled { signal } => 128 + signal,
            SandboxOutcome::SetupFailed { .. } | SandboxOutcome::Aborted { .. } => {
                EXIT_SETUP_FAILED
            }
        }
    }
}

impl std::fmt::Display for SandboxOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SandboxOutcome::Exited { code } => write!(f, "exited with {code}"),
            SandboxOutcome::Signaled { signal } => write!(f, "killed by signal {signal}"),
            SandboxOutcome::SetupFailed { reason } => write!(f, "sandbox setup failed: {reason}"),
            SandboxOutcome::Aborted {
                signal: Some(signal),
                ..
            } => {
                write!(f, "sandbox aborted by signal {signal}")
            }
            SandboxOutcome::Aborted { code, .. } => {
                write!(
                    f,
                    "sandbox helper ended without an outcome (exit code {code:?})"
                )
            }
        }
    }
}
