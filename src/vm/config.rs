//! The description of one VM job: what the caller asks for, strictly typed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where a guest really boots under it (probed once per machine and
    /// kernel, remembered), TCG otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The guest kernel: the host's newest `/boot/vmlinuz-*`, or a given file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelChoice {
    #[default]
    Default,
    Path(PathBuf),
}

/// Time limits of one VM job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmTimeouts {
    /// Launch until the job's first command (driver creation): QEMU start,
    /// kernel boot, module loading, mounts.
    #[serde(with = "humantime_secs")]
    pub boot: Duration,
    /// The job script itself, from its first command to power-off.
    #[serde(with = "humantime_secs")]
    pub job: Duration,
}

impl Default for VmTimeouts {
    fn default() -> Self {
        VmTimeouts {
            boot: Duration::from_secs(300),
            job: Duration::from_secs(3600),
        }
    }
}

/// One job to run in a fresh microVM.
///
/// Layers are host directories in overlayfs format (whiteouts are character
/// devices 0/0); the caller restores them from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmJob {
    #[serde(default)]
    pub kernel: KernelChoice,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default)]
    pub accel: Accel,
    /// `false`: the VM has no network device at all.
    #[serde(default)]
    pub network: bool,
    /// The image's files on the host; becomes the guest's read-only root.
    pub image_root: PathBuf,
    /// Identifies `image_root`'s content (the image tree digest): the ext4
    /// disk built from it is cached under this key.
    pub image_digest: String,
    /// Workspace layers, base layer first, then dependency output layers in
    /// topological order.
    #[serde(default)]
    pub lower_dirs: Vec<PathBuf>,
    /// The job's whole environment: nothing else reaches the script.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Run as `/bin/sh SCRIPT` in the workspace.
    pub script: String,
    /// Where the merged workspace is mounted in the guest.
    #[serde(default = "default_workspace")]
    pub workspace: PathBuf,
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default)]
    pub timeouts: VmTimeouts,
    /// Upper bound of the job's writes and of its captured output layer
    /// (two sparse disks, MiB).
    #[serde(default = "default_output_limit_mib")]
    pub output_limit_mib: u32,
}

fn default_memory_mib() -> u32 {
    512
}
fn default_cpus() -> u32 {
    1
}
fn default_workspace() -> PathBuf {
    PathBuf::from("/work")
}
fn default_hostname() -> String {
    "kiln".to_owned()
}
fn default_output_limit_mib() -> u32 {
    4096
}

impl VmJob {
    /// A job with every optional field at its default.
    pub fn new(image_root: PathBuf, image_digest: String, script: String) -> VmJob {
        VmJob {
            kernel: KernelChoice::Default,
            memory_mib: default_memory_mib(),
            cpus: default_cpus(),
            accel: Accel::Auto,
            network: false,
            image_root,
            image_digest,
            lower_dirs: Vec::new(),
            env: BTreeMap::new(),
            script,
            workspace: default_workspace(),
            hostname: default_hostname(),
            timeouts: VmTimeouts::default(),
            output_limit_mib: default_output_limit_mib(),
        }
    }
}

/// Durations as whole seconds in serialized configs.
mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let text =
            r#"{"image_root": "/i", "image_digest": "d", "script": "true", "netwrok": true}"#;
        let error = serde_json::from_str::<VmJob>(text).unwrap_err();
        assert!(error.to_string().contains("netwrok"), "{error}");
    }

    #[test]
    fn defaults_fill_the_rest() {
        let text = r#"{"image_root": "/i", "image_digest": "d", "script": "true", "accel": "tcg"}"#;
        let job: VmJob = serde_json::from_str(text).unwrap();
        assert_eq!(job.memory_mib, 512);
        assert_eq!(job.cpus, 1);
        assert_eq!(job.accel, Accel::Tcg);
        assert!(!job.network);
        assert_eq!(job.workspace, PathBuf::from("/work"));
        assert_eq!(job.kernel, KernelChoice::Default);
    }
}
