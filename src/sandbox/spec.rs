//! What the parent asks the sandbox helper to run: a strict, serialisable
//! description written to a file and read back by `kiln __sandbox`.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::SandboxError;

/// Top-level host directories the `"host"` view never shows (design §3),
/// in addition to the kernel filesystems the sandbox mounts itself.
pub const HOST_VIEW_HIDDEN: &[&str] = &["/home", "/root", "/tmp", "/var/tmp", "/run"];

/// Everything the helper needs to run one job. Paths outside the sandbox are
/// host paths; `workspace` is a path inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// The root filesystem the job sees.
    pub root: RootFs,
    /// The workspace overlay and where it is mounted.
    pub workspace: WorkspaceSpec,
    /// The job script (host path); it is copied into the sandbox and run as
    /// `/bin/sh /.kiln/job.sh` with `cwd` = the workspace.
    pub script: PathBuf,
    /// The exact environment of the job, in order; nothing comes from the host.
    pub env: Vec<(String, String)>,
    /// The hostname inside the sandbox.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// `false`: a fresh network namespace with only loopback, up.
    /// `true`: the host's network.
    #[serde(default)]
    pub network: bool,
    /// Optional cgroup limits.
    #[serde(default)]
    pub limits: Limits,
    /// Host directories bound into the sandbox (build caches; for the build
    /// process, the store and the project).
    #[serde(default)]
    pub binds: Vec<Bind>,
    /// Who runs inside: a job (every confinement) or kiln's build process.
    #[serde(default)]
    pub profile: Profile,
}

/// Who a sandbox is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// A job: its own PID, network, UTS, IPC, mount and cgroup namespaces,
    /// and the confinement of docs/drivers.md (capabilities, seccomp,
    /// `no_new_privs`).
    #[default]
    Job,
    /// `kiln run --in container`: kiln's build process, which itself starts
    /// job sandboxes. It has its own mount, UTS and IPC namespaces and the
    /// read-only host view, but keeps its capabilities and system calls, and
    /// shares the host's PID and network namespaces and `/sys` (so the
    /// cgroups and process checks of the sandboxes it starts mean what they
    /// mean on the host). Root only.
    BuildProcess,
}

/// A host directory mounted read-write at `target` inside the sandbox,
/// after everything else (so it may lie in the workspace or `/tmp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    /// An existing host directory.
    pub source: PathBuf,
    /// Absolute, inside the sandbox.
    pub target: PathBuf,
    /// Mounted read-only (with everything below it).
    #[serde(default)]
    pub read_only: bool,
}

/// The root filesystem of the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RootFs {
    /// A read-only view of the host's root without [`HOST_VIEW_HIDDEN`] and
    /// the extra `exclude`d paths (the kiln store, secrets).
    Host {
        #[serde(default)]
        exclude: Vec<PathBuf>,
    },
    /// An image: read-only directories overlaid, the first one on top.
    Image { layers: Vec<PathBuf> },
}

/// The workspace: `lower` layers (base layer first, then dependency output
/// layers in order: a later layer wins), plus an empty `upper` directory that
/// receives the job's writes and the overlay `work` directory (same
/// filesystem as `upper`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    /// Mount point inside the sandbox.
    #[serde(default = "default_workspace_path")]
    pub path: PathBuf,
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// cgroup limits; `None` means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.pids.is_none()
    }
}

fn default_hostname() -> String {
    "kiln".to_owned()
}

fn default_workspace_path() -> PathBuf {
    PathBuf::from("/work")
}

/// Where the job script appears inside the sandbox.
pub const SCRIPT_PATH_INSIDE: &str = "/.kiln/job.sh";
/// The top-level directory the sandbox reserves for itself.
pub const RESERVED_TOP: &str = ".kiln";

/// Sandbox paths the workspace may not be mounted on or under, because the
/// sandbox mounts its own filesystems there.
const RESERVED_INSIDE: &[&str] = &["/proc", "/dev", "/tmp", "/sys", "/.kiln"];

impl SandboxSpec {
    /// A spec with the defaults for everything but the essentials.
    pub fn new(root: RootFs, workspace: WorkspaceSpec, script: PathBuf) -> Self {
        SandboxSpec {
            root,
            workspace,
            script,
            env: Vec::new(),
            hostname: default_hostname(),
            network: false,
            limits: Limits::default(),
            binds: Vec::new(),
            profile: Profile::Job,
        }
    }

    /// Checks what can be checked without touching the filesystem.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let ws = &self.workspace.path;
        let bad = |reason: &str| SandboxError::WorkspacePath {
            path: ws.clone(),
            reason: reason.to_owned(),
        };
        if !ws.is_absolute() {
            return Err(bad("must be absolute"));
        }
        if ws
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        {
            return Err(bad("must not contain `.` or `..`"));
        }
        if ws == Path::new("/") {
            return Err(bad("cannot be the root"));
        }
        if let Some(reserved) = RESERVED_INSIDE.iter().find(|r| ws.starts_with(r)) {
            return Err(bad(&format!("{reserved} is reserved by the sandbox")));
        }
        if self.hostname.is_empty() || self.hostname.len() > 64 {
            return Err(SandboxError::InvalidSpec(format!(
                "hostname {:?} must be 1 to 64 bytes",
                self.hostname
            )));
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0')
            {
                return Err(SandboxError::InvalidSpec(format!(
                    "environment variable {name:?} is not a valid NAME=VALUE pair"
                )));
            }
        }
        for bind in &self.binds {
            let target = &bind.target;
            let plain = target.is_absolute()
                && target != Path::new("/")
                && target
                    .components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
            if !plain {
                return Err(SandboxError::InvalidSpec(format!(
                    "bind target {} must be an absolute path without `.` or `..`",
                    target.display()
                )));
            }
            // The build process sees the host's /sys (its sandboxes' cgroups).
            let sys_for_build_process =
                self.profile == Profile::BuildProcess && target == Path::new("/sys");
            if let Some(reserved) = RESERVED_INSIDE
                .iter()
                .filter(|r| **r != "/tmp")
                .find(|r| target.starts_with(r) && !sys_for_build_process)
            {
                return Err(SandboxError::InvalidSpec(format!(
                    "bind target {} is under {reserved}, which the sandbox reserves",
                    target.display()
                )));
            }
        }
        if let RootFs::Image { layers } = &self.root
            && layers.is_empty()
        {
            return Err(SandboxError::InvalidSpec(
                "an image root needs at least one layer".into(),
            ));
        }
        for excluded in self.excluded_paths() {
            if !excluded.is_absolute() {
                return Err(SandboxError::InvalidSpec(format!(
                    "excluded path {} must be absolute",
                    excluded.display()
                )));
            }
        }
        Ok(())
    }

    /// The extra paths hidden from a host view (empty for an image).
    pub fn excluded_paths(&self) -> &[PathBuf] {
        match &self.root {
            RootFs::Host { exclude } => exclude,
            RootFs::Image { .. } => &[],
        }
    }
}
