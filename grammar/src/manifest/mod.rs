//! The typed build description (`manifest.md` §2): what both front ends
//! produce and what the graph compiler consumes.
//!
//! Everything here is already validated and has every default filled in:
//! each job knows its resolved `needs`, its merged `env`, its driver and its
//! timeout, so consumers never re-derive a default. Serialising a
//! [`Manifest`] gives the canonical JSON `kiln eval` prints: keys in a fixed
//! order and paths relative to the manifest's directory, so two equivalent
//! manifests print the same bytes wherever the checkout lives.
//!
//! Architecture invariant: a `Manifest` can only be built by [`from_node`],
//! so holding one means every validation of the schema has passed.

mod convert;
mod duration;
mod fields;
mod graph;
mod paths;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::source::Span;

pub use convert::{Converted, from_node};
pub use duration::{DurationError, format_duration, parse_duration};
pub use paths::{LocalPath, normalize_job_name};

/// Which front end a manifest came through; it decides Djinn's semantics
/// (sequential jobs, unknown keys are warnings, scalar coercion).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Kiln,
    Djinn,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub format: Format,
    /// Djinn's `namespace`, recorded as given.
    pub namespace: Option<String>,
    /// The build's default driver; every job also carries its own, filled in.
    pub driver: Option<Driver>,
    pub env: BTreeMap<String, String>,
    pub sources: Vec<Source>,
    pub objects: Vec<Object>,
    pub stages: Vec<String>,
    pub allow_failures: Vec<String>,
    /// Whole-build timeout.
    #[serde(serialize_with = "duration::serialize_option")]
    pub timeout: Option<Duration>,
    /// In execution order for Djinn manifests (stage order, then manifest
    /// order); in declaration order otherwise.
    pub jobs: Vec<Job>,
    /// Jobs run one at a time in `jobs` order, each seeing the previous
    /// one's workspace (Djinn's meaning). `needs` then chains the jobs.
    pub sequential: bool,
    /// Absolute directory of the manifest file: relative git URLs and named
    /// objects that turn out to be files resolve against it.
    #[serde(skip)]
    pub dir: PathBuf,
    /// What the build may read for path sources and objects: the roots the
    /// manifest was loaded with (`crate::load::load` sets them).
    #[serde(skip)]
    pub roots: crate::roots::AllowedRoots,
}

impl Manifest {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|job| job.name == name)
    }

    /// Whether a failure of `stage` only makes the build Passed With Failures.
    pub fn allows_failure(&self, stage: &str) -> bool {
        self.allow_failures.iter().any(|allowed| allowed == stage)
    }

    /// The canonical JSON `kiln eval` prints (pretty, with a final newline).
    pub fn to_canonical_json(&self) -> String {
        // Serialising plain structs, strings and BTreeMaps cannot fail.
        let mut json = serde_json::to_string_pretty(self).unwrap_or_default();
        json.push('\n');
        json
    }
}

/// The closed set of drivers; `docker` and `os` (Djinn) arrive here as
/// `container` and `host` with the alias recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Driver {
    Container(ContainerDriver),
    Qemu(QemuDriver),
    Host(HostDriver),
}

impl Driver {
    /// The directory jobs run in inside the environment (`None` for the
    /// host driver, which uses a scratch directory).
    pub fn workspace(&self) -> Option<&str> {
        match self {
            Driver::Container(container) => Some(&container.workspace),
            Driver::Qemu(qemu) => Some(&qemu.workspace),
            Driver::Host(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerDriver {
    /// An image name, a `blake3:` digest, or `"host"`.
    pub image: String,
    pub workspace: String,
    /// Memory limit in MiB.
    pub memory: Option<u64>,
    pub cpus: Option<u64>,
    pub pids: Option<u64>,
    /// `"docker"` when written with Djinn's name.
    pub alias: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QemuDriver {
    pub image: String,
    pub kernel: Kernel,
    /// Guest memory in MiB.
    pub memory: u64,
    pub cpus: u64,
    pub accel: Accel,
    pub workspace: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostDriver {
    /// `"os"` when written with Djinn's name.
    pub alias: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The host's `/boot/vmlinuz-*` with a generated initramfs.
    Default,
    Path(LocalPath),
}

impl Serialize for Kernel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Kernel::Default => serializer.serialize_str("default"),
            Kernel::Path(path) => path.serialize(serializer),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Source {
    /// A local file or directory; its content is an input.
    Path {
        path: LocalPath,
        /// Where it lands, relative to the workspace (`"."` is the root).
        dir: String,
    },
    Git {
        /// As written: remote (`https://`, `git@`), `file://` or a path
        /// relative to the manifest's directory.
        url: String,
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// A pinned commit; resolving to another one is an error.
        rev: Option<String>,
        dir: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Object {
    pub src: ObjectSource,
    /// Absolute, or relative to the workspace.
    pub dst: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectSource {
    /// A path literal (kiln language).
    Path(LocalPath),
    /// A string: a named object in the store or, failing that, a file
    /// relative to the manifest's directory (as Djinn's objects are).
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Unique, `[a-z0-9._-]+`.
    pub name: String,
    pub stage: String,
    pub commands: Vec<String>,
    pub artifacts: Vec<Artifact>,
    /// Resolved dependencies (names of other jobs), defaults filled in.
    pub needs: Vec<String>,
    /// Paths or `*` globs of the base workspace the job may see; `None`
    /// means everything.
    pub inputs: Option<Vec<String>>,
    /// The build env with the job's env merged over it.
    pub env: BTreeMap<String, String>,
    pub driver: Driver,
    /// The job's own timeout, else the build's.
    #[serde(serialize_with = "duration::serialize_option")]
    pub timeout: Option<Duration>,
    pub caches: Vec<Cache>,
    pub network: bool,
    /// Where the job was written.
    #[serde(skip)]
    pub span: Span,
}

impl Job {
    /// The exact script the job runs (`manifest.md` §2, as in Djinn).
    pub fn script(&self) -> String {
        let mut script = String::from("#!/bin/sh\nexec 2>&1\nset -ex\n");
        for command in &self.commands {
            script.push_str(command);
            script.push('\n');
        }
        script
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// Relative to the workspace; may name a directory or be a `*` glob.
    pub src: String,
    /// The name it is saved under (default: the base name of `src`). For a
    /// glob, a directory under which each match keeps its path relative to
    /// the workspace (default `.`).
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cache {
    pub key: String,
    pub paths: Vec<String>,
}

/// Directory a manifest's relative paths are shown against.
pub(crate) fn manifest_dir(file: &Path) -> PathBuf {
    let absolute = paths::absolute(file);
    absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}
