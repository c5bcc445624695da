//! Every way setting up a sandbox can fail, one variant per step, so the
//! job log says exactly which step broke and on what.

use std::path::PathBuf;

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    #[error("bad workspace path {}: {reason}", path.display())]
    WorkspacePath { path: PathBuf, reason: String },
    #[error("cannot read sandbox spec {}: {source}", path.display())]
    ReadSpec {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse sandbox spec {}: {source}", path.display())]
    ParseSpec {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    WriteRunFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} does not exist or is unreachable: {source}", path.display())]
    MissingPath {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} must be a directory", path.display())]
    NotADirectory { what: &'static str, path: PathBuf },
    #[error("cannot read the job script {}: {source}", path.display())]
    ReadScript {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} contains `,`, `:` or `\\`, which overlayfs options cannot carry", path.display())]
    OverlayPathSyntax { what: &'static str, path: PathBuf },
    #[error("unshare({namespaces}) failed: {source}")]
    Unshare { namespaces: String, source: Errno },
    #[error("cannot write {}: {source}", path.display())]
    WriteProcFile { path: PathBuf, source: Errno },
    #[error("cannot create a pipe: {0}")]
    Pipe(Errno),
    #[error("fork failed: {0}")]
    Fork(Errno),
    #[error("cannot set the parent-death signal: {0}")]
    ParentDeathSignal(Errno),
    #[error("the sandbox helper went away before the sandbox was set up")]
    ParentGone,
    #[error("cannot make all mounts private: {0}")]
    MakeMountsPrivate(Errno),
    #[error("cannot mount a tmpfs on {}: {source}", target.display())]
    MountTmpfs { target: PathBuf, source: Errno },
    #[error("cannot bind-mount {} on {}: {source}", source_path.display(), target.display())]
    MountBind {
        source_path: PathBuf,
        target: PathBuf,
        source: Errno,
    },
    #[error("cannot take the bind source {} for a bind mount: {source}", source_path.display())]
    CloneBindSource { source_path: PathBuf, source: Errno },
    #[error("cannot bind-mount a cache on {} in the sandbox: {source}", target.display())]
    AttachBind { target: PathBuf, source: Errno },
    #[error("{what} {} crosses a symlink (to {}): refused, it could lead outside its root", path.display(), resolved.display())]
    SymlinkedPath {
        what: &'static str,
        path: PathBuf,
        resolved: PathBuf,
    },
    #[error("cannot mount the overlay on {} ({options}): {source}", target.display())]
    MountOverlay {
        target: PathBuf,
        options: String,
        source: Errno,
    },
    #[error("cannot mount {fstype} on {}: {source}", target.display())]
    MountKernelFs {
        fstype: &'static str,
        target: PathBuf,
        source: Errno,
    },
    #[error("cannot make {} read-only: {source}", target.display())]
    MakeReadOnly { target: PathBuf, source: Errno },
    #[error("pivot_root to {} failed: {source}", new_root.display())]
    PivotRoot { new_root: PathBuf, source: Errno },
    #[error("cannot detach the old root: {0}")]
    DetachOldRoot(Errno),
    #[error("chdir to {} failed: {source}", path.display())]
    Chdir { path: PathBuf, source: Errno },
    #[error("cannot create directory {}: {source}", path.display())]
    Mkdir { path: PathBuf, source: Errno },
    #[error("cannot create file {}: {source}", path.display())]
    CreateFile { path: PathBuf, source: Errno },
    #[error("cannot create symlink {}: {source}", link.display())]
    Symlink { link: PathBuf, source: Errno },
    #[error("cannot read {}: {source}", path.display())]
    ReadHostDir { path: PathBuf, source: Errno },
    #[error("cannot set the hostname: {0}")]
    Hostname(Errno),
    #[error("cannot bring up the loopback interface: {0}")]
    Loopback(Errno),
    #[error("cgroup limit {limit} cannot be applied: {reason}")]
    Cgroup { limit: &'static str, reason: String },
    #[error("cannot mask {} in the job's /proc: {source}", path.display())]
    MaskProc { path: PathBuf, source: Errno },
    #[error("cannot make {} read-only in the job's /proc: {source}", path.display())]
    ReadOnlyProc { path: PathBuf, source: Errno },
    #[error("cannot compile the seccomp filter `{filter}`: {reason}")]
    CompileSeccomp {
        filter: &'static str,
        reason: String,
    },
    #[error("cannot drop capabilities from the bounding set: {0}")]
    BoundingSet(Errno),
    #[error("cannot set the job's capabilities (capset): {0}")]
    SetCapabilities(Errno),
    #[error("cannot clear the ambient capabilities: {0}")]
    AmbientCapabilities(Errno),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(Errno),
    #[error("cannot install the seccomp filter `{filter}`: {source}")]
    InstallSeccomp { filter: &'static str, source: Errno },
    #[error("cannot exec {program} in the sandbox: {source}")]
    Exec { program: String, source: Errno },
    #[error("the sandbox init process failed: {0}")]
    Init(String),
}
