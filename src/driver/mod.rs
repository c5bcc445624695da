//! Drivers (design §6): where a job's script runs. A closed set behind one
//! interface: [`Driver::create`] (once per distinct driver, recorded as its
//! own job), [`Driver::run`] (one job: prepared workspace in, outcome and
//! log out) and [`Driver::destroy`].
//!
//! The scheduler prepares the workspace (layers restored to directories)
//! and captures the output; a driver only runs the script and reports how
//! it ended, so every driver is killed and cleaned the same way.
//!
//! Architecture invariant: a driver's `run` returns only after every
//! process it started is gone, whatever ended the job (exit, failure,
//! timeout, kill).

mod container;
mod env;
mod host;
mod output;
mod qemu;

use std::path::PathBuf;
use std::time::Duration;

use kiln_grammar::manifest::Driver as DriverSpec;
use kiln_store::B3Digest;
use tokio::sync::watch;

pub use container::ContainerDriver;
pub use env::{DEFAULT_PATH, HOME, hermetic_env};
pub use host::HostDriver;
pub use output::{DEFAULT_LOG_LIMIT, LineSink, MAX_CHUNK, truncated_marker};
pub use qemu::{QemuDriver, VM_CACHE};

use crate::graph::DriverKey;

/// Creating a driver over this long ends the build as Timed Out (design
/// §5); a VM job's boot (launch to its first command) has the same limit.
pub const DRIVER_CREATE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },
    #[error("{reason}")]
    Invalid { reason: String },
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a build asks its running jobs to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Killed,
    TimedOut,
}

impl Stop {
    /// How a job stopped for this reason ends, said in its log too.
    pub fn end_job(self, log: &std::path::Path) -> JobEnd {
        match self {
            Stop::TimedOut => {
                container::append_log(log, "kiln: the job timed out and was killed\n");
                JobEnd::TimedOut
            }
            Stop::Killed => {
                container::append_log(log, "kiln: the build was killed\n");
                JobEnd::Killed
            }
        }
    }
}

/// How one job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobEnd {
    Passed,
    /// The script failed or could not start; the reason is also in the log.
    Failed(String),
    Killed,
    TimedOut,
}

/// One job, ready to run: its workspace is already laid out.
#[derive(Clone, Debug)]
pub struct JobRun {
    pub name: String,
    pub script: String,
    /// kiln's fixed values with the manifest's env merged over them.
    pub env: Vec<(String, String)>,
    /// The manifest's env alone (merged build + job env), so a driver whose
    /// image brings its own env can put it between the two.
    pub manifest_env: Vec<(String, String)>,
    /// Private to this job: script, log, sandbox files, upper/work dirs.
    pub dir: PathBuf,
    pub workspace: Workspace,
    pub timeout: Option<Duration>,
    pub network: bool,
    /// Build caches: (host directory, path inside the environment).
    pub caches: Vec<(PathBuf, PathBuf)>,
    /// Receives the job's output lines as they come.
    pub output: Option<LineSink>,
    /// The log keeps at most this many bytes of the job's output, then a
    /// marker line; the rest is drained and discarded.
    pub log_limit: u64,
}

/// How the workspace is given to the driver.
#[derive(Clone, Debug)]
pub enum Workspace {
    /// Overlay layers (container): lower directories, base layer first; the
    /// job's writes land in `upper`.
    Layers {
        lower: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// A scratch directory holding the merged workspace (host driver).
    Scratch(PathBuf),
}

#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub end: JobEnd,
    /// The job script's exit code, when it exited (not killed, not failed
    /// to start).
    pub exit_code: Option<i32>,
    /// The job's combined stdout and stderr.
    pub log: PathBuf,
}

/// A created driver.
#[derive(Clone, Debug)]
pub enum Driver {
    Container(Box<ContainerDriver>),
    Qemu(Box<QemuDriver>),
    Host(HostDriver),
}

impl Driver {
    /// Creates the driver a job spec names: for a container, resolves its
    /// image (the `"host"` view is keyed by a host fingerprint); for qemu,
    /// its imported image and its kernel (no VM is booted here).
    pub fn create(spec: &DriverSpec, context: &CreateContext) -> Result<Driver, DriverError> {
        match spec {
            DriverSpec::Container(container) => Ok(Driver::Container(Box::new(
                ContainerDriver::create(container, context)?,
            ))),
            DriverSpec::Host(_) => Ok(Driver::Host(HostDriver)),
            DriverSpec::Qemu(qemu) => {
                Ok(Driver::Qemu(Box::new(QemuDriver::create(qemu, context)?)))
            }
        }
    }

    /// The driver's part of a job key.
    pub fn key(&self) -> DriverKey {
        match self {
            Driver::Container(container) => container.key(),
            Driver::Qemu(qemu) => qemu.key(),
            Driver::Host(_) => DriverKey {
                kind: "host".into(),
                image: None,
                kernel: None,
                memory: None,
                cpus: None,
                pids: None,
                workspace: None,
            },
        }
    }

    /// Host jobs are never served from cache (design §3).
    pub fn cacheable(&self) -> bool {
        !matches!(self, Driver::Host(_))
    }

    pub fn image_digest(&self) -> Option<B3Digest> {
        match self {
            Driver::Container(container) => Some(container.image_digest()),
            Driver::Qemu(qemu) => Some(qemu.image_digest()),
            Driver::Host(_) => None,
        }
    }

    /// The workspace path inside the environment (`None`: a scratch dir).
    pub fn workspace_path(&self) -> Option<&str> {
        match self {
            Driver::Container(container) => Some(container.workspace()),
            Driver::Qemu(qemu) => Some(qemu.workspace()),
            Driver::Host(_) => None,
        }
    }

    pub async fn run(&self, job: JobRun, stop: watch::Receiver<Option<Stop>>) -> RunOutcome {
        match self {
            Driver::Container(container) => container.run(job, stop).await,
            Driver::Qemu(qemu) => qemu.run(job, stop).await,
            Driver::Host(host) => host.run(job, stop).await,
        }
    }

    /// Nothing outlives a job today (sandboxes and VMs die with their job), so
    /// destroying a driver releases nothing; it is still called for every
    /// created driver, whatever ended the build.
    pub fn destroy(&self) {}
}

/// What driver creation needs from the build.
#[derive(Clone, Debug)]
pub struct CreateContext {
    pub store_dir: PathBuf,
    /// Host paths no job may see (the store, the build's temp dir).
    pub hidden: Vec<PathBuf>,
    /// The kiln binary, re-executed as the sandbox helper.
    pub helper: PathBuf,
}

/// Appends a line kiln itself writes to a job's log.
pub fn append_to_log(log: &std::path::Path, text: &str) {
    container::append_log(log, text);
}

/// Waits for `stop` to say something (or forever when the sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    loop {
        if let Some(reason) = *stop.borrow_and_update() {
            return reason;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Sleeps for the job's timeout, or forever without one.
pub(crate) async fn timeout_elapsed(timeout: Option<Duration>) {
    match timeout {
        Some(timeout) => tokio::time::sleep(timeout).await,
        None => std::future::pending().await,
    }
}
