//! The container sandbox: one job script, run hermetically in Linux
//! namespaces (design §5, §6).
//!
//! The parent (the container driver, on tokio) describes the job in a
//! [`SandboxSpec`], writes it with [`SandboxRun::prepare`], spawns
//! [`SandboxRun::command`] (the kiln binary re-executed as
//! `kiln __sandbox`), and reads the [`SandboxOutcome`]. The helper side
//! ([`helper_main`]) is chosen in `main` before any thread exists.
//!
//! Module map: `spec` (what to run), `plan` (spec resolved against the host),
//! `sys` (the syscall seam), `setup` (the mount/namespace sequence over the
//! seam), `confine` (capabilities, no_new_privs and seccomp of the job),
//! `cgroup` (limits), `helper` (the processes), `run` (parent side).

mod cgroup;
mod confine;
mod error;
mod helper;
mod outcome;
mod plan;
mod run;
mod setup;
mod spec;
mod sys;
#[cfg(test)]
mod tests;

pub use confine::{KEPT_CAPABILITIES, kept_capability_mask};
pub use error::SandboxError;
pub use helper::{EXIT_SETUP_FAILED, HELPER_ARG, helper_main};
pub use outcome::SandboxOutcome;
pub use run::SandboxRun;
pub use spec::{
    Bind, HOST_VIEW_HIDDEN, Limits, Profile, RootFs, SCRIPT_PATH_INSIDE, SandboxSpec, WorkspaceSpec,
};

/// For the scheduler's sweep of cgroups left by dead builds.
pub use cgroup::Cgroup;
