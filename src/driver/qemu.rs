//! The qemu driver: each job in a fresh QEMU microVM, run by `src/vm/`.
//!
//! The scheduler lays out the workspace exactly as for a container (lower
//! layers restored to directories, an empty upper directory); the VM reads
//! the lower layers from a disk and writes the job's upper layer back into
//! the upper directory in overlayfs format (whiteouts as 0/0 character
//! devices, opaque directories marked), so the scheduler captures it the
//! same way and artifacts, caching and early cutoff are unchanged.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_grammar::manifest::{Accel as AccelSpec, Kernel as KernelSpec, QemuDriver as QemuSpec};
use kiln_store::{B3Digest, Store};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::container::{IMAGE_CACHE, append_log};
use super::{
    CreateContext, DRIVER_CREATE_TIMEOUT, DriverError, JobEnd, JobRun, RunOutcome, Stop, Workspace,
};
use crate::graph::DriverKey;
use crate::image;
use crate::sandbox::RootFs;
use crate::vm::{self, Accel, KernelChoice, VmJob, VmOutcome, VmTimeouts};

/// Where the VM runner keeps its caches (initramfs, image disks, the
/// unpacked kernel, the accelerator verdict), inside the store directory.
pub const VM_CACHE: &str = "vm-cache";

/// A job without `timeout` still needs a deadline for the VM runner; this
/// one is never reached in practice.
const NO_JOB_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Smallest guest memory the runner accepts (kernel, initramfs, `/tmp`).
const MIN_MEMORY_MIB: u64 = 128;
const MAX_CPUS: u64 = 64;

#[derive(Clone, Debug)]
pub struct QemuDriver {
    spec: QemuSpec,
    image_root: PathBuf,
    image_digest: B3Digest,
    kernel: PathBuf,
    kernel_digest: B3Digest,
    cache_dir: PathBuf,
}

impl QemuDriver {
    /// Resolves the image (an imported name or a `blake3:` digest; never
    /// `"host"`) and restores it once into `<store>/image-cache/<digest>`,
    /// resolves the kernel (the host's newest `/boot/vmlinuz-*` or the given
    /// file) and digests it for the job key. Boots nothing.
    pub fn create(spec: &QemuSpec, context: &CreateContext) -> Result<Self, DriverError> {
        let image_error = |reason: String| DriverError::Image {
            image: spec.image.clone(),
            reason,
        };
        let invalid = |reason: String| Err(DriverError::Invalid { reason });
        if spec.memory < MIN_MEMORY_MIB || u32::try_from(spec.memory).is_err() {
            return invalid(format!(
                "qemu driver: memory = {} MiB, a VM needs at least {MIN_MEMORY_MIB}",
                spec.memory
            ));
        }
        if spec.cpus == 0 || spec.cpus > MAX_CPUS {
            return invalid(format!(
                "qemu driver: cpus = {}, expected 1 to {MAX_CPUS}",
                spec.cpus
            ));
        }
        let mut store = Store::open(&context.store_dir).map_err(|e| image_error(e.to_string()))?;
        let image =
            image::resolve(&mut store, &spec.image).map_err(|e| image_error(e.to_string()))?;
        if image.is_host() {
            return Err(image_error(
                "the qemu driver cannot use the \"host\" view: a VM needs an image of its own; \
                 import a root filesystem first, for example a busybox one: \
                 `examples/vm/make-image.sh /tmp/busybox-root && kiln image import busybox /tmp/busybox-root`, \
                 then write image = \"busybox\""
                    .to_owned(),
            ));
        }
        let root = image::materialise(&store, &image, &context.store_dir.join(IMAGE_CACHE))
            .map_err(|e| image_error(e.to_string()))?;
        let RootFs::Image { layers } = root else {
            return Err(image_error(
                "the image has no directory of its own".to_owned(),
            ));
        };
        let Some(image_root) = layers.into_iter().next() else {
            return Err(image_error(
                "the image has no directory of its own".to_owned(),
            ));
        };
        let choice = match &spec.kernel {
            KernelSpec::Default => KernelChoice::Default,
            KernelSpec::Path(path) => KernelChoice::Path(path.absolute.clone()),
        };
        let kernel = vm::Kernel::resolve(&choice)?.path;
        let kernel_digest = digest_file(&kernel)?;
        Ok(QemuDriver {
            spec: spec.clone(),
            image_root,
            image_digest: image.digest(),
            kernel,
            kernel_digest,
            cache_dir: context.store_dir.join(VM_CACHE),
        })
    }

    /// Type, image, kernel file, memory, cpus and workspace; never the
    /// accelerator (KVM and TCG run the same guest).
    pub fn key(&self) -> DriverKey {
        DriverKey {
            kind: "qemu".into(),
            image: Some(self.image_digest),
            kernel: Some(self.kernel_digest),
            memory: Some(self.spec.memory),
            cpus: Some(self.spec.cpus),
            pids: None,
            workspace: Some(self.spec.workspace.clone()),
        }
    }

    pub fn image_digest(&self) -> B3Digest {
        self.image_digest
    }

    pub fn workspace(&self) -> &str {
        &self.spec.workspace
    }

    pub async fn run(&self, job: JobRun, stop: watch::Receiver<Option<Stop>>) -> RunOutcome {
        let log = job.dir.join("log");
        let failed = |reason: String| {
            append_log(&log, &format!("kiln: {reason}\n"));
            RunOutcome {
                end: JobEnd::Failed(reason),
                exit_code: None,
                log: log.clone(),
            }
        };
        let Workspace::Layers { lower, upper, .. } = &job.workspace else {
            return failed("the qemu driver needs a layered workspace".into());
        };
        let vm_job = self.vm_job(&job, lower);
        let (writer, output) =
            match super::output::start_writer(&log, job.log_limit, job.output.clone()) {
                Ok(pipe) => pipe,
                Err(error) => return failed(format!("cannot create {}: {error}", log.display())),
            };
        let mut console = tokio::fs::File::from_std(std::fs::File::from(OwnedFd::from(writer)));
        let cancel = {
            let mut stop = stop.clone();
            async move {
                super::stopped(&mut stop).await;
            }
        };
        let result = vm::run_job(&vm_job, &self.cache_dir, upper, &mut console, cancel).await;
        let _ = console.flush().await;
        // The pipe's last write end: the copying thread sees its end.
        drop(console);
        output.finish().await;
        let exit_code = match &result {
            Ok(run) => match run.outcome {
                VmOutcome::Exited { exit_code, .. } => Some(exit_code),
                _ => None,
            },
            Err(_) => None,
        };
        let end = match result {
            Ok(run) => match run.outcome {
                VmOutcome::Exited { exit_code: 0, .. } => JobEnd::Passed,
                VmOutcome::Exited { exit_code, .. } => {
                    JobEnd::Failed(format!("the job script exited with {exit_code}"))
                }
                VmOutcome::TimedOut { .. } => JobEnd::TimedOut,
                // The runner only reports Killed when `cancel` resolved: the
                // build was killed, or its own timeout struck.
                VmOutcome::Killed => match *stop.borrow() {
                    Some(Stop::TimedOut) => {
                        append_log(&log, "kiln: the build timed out\n");
                        JobEnd::TimedOut
                    }
                    _ => JobEnd::Killed,
                },
                VmOutcome::Failed { reason } => JobEnd::Failed(format!("VM job failed: {reason}")),
            },
            // The runner has written the error into the log already.
            Err(error) => JobEnd::Failed(error.to_string()),
        };
        RunOutcome {
            end,
            exit_code,
            log,
        }
    }

    fn vm_job(&self, job: &JobRun, lower: &[PathBuf]) -> VmJob {
        let mut vm_job = VmJob::new(
            self.image_root.clone(),
            self.image_digest.to_hex(),
            job.script.clone(),
        );
        // The kernel resolved (and digested) at creation, even if a newer
        // one appeared in /boot since.
        vm_job.kernel = KernelChoice::Path(self.kernel.clone());
        // Both checked at creation.
        vm_job.memory_mib = u32::try_from(self.spec.memory).unwrap_or(u32::MAX);
        vm_job.cpus = u32::try_from(self.spec.cpus).unwrap_or(1);
        vm_job.accel = match self.spec.accel {
            AccelSpec::Auto => Accel::Auto,
            AccelSpec::Kvm => Accel::Kvm,
            AccelSpec::Tcg => Accel::Tcg,
        };
        vm_job.network = job.network;
        vm_job.lower_dirs = lower.to_vec();
        vm_job.env = job.env.iter().cloned().collect();
        vm_job.workspace = PathBuf::from(&self.spec.workspace);
        vm_job.timeouts = VmTimeouts {
            // Booting the VM is this driver's creation of the job's
            // environment: the same limit as creating a driver.
            boot: DRIVER_CREATE_TIMEOUT,
            job: job.timeout.unwrap_or(NO_JOB_TIMEOUT),
        };
        vm_job
    }
}

/// blake3 of a file's bytes: the kernel's part of the job key.
fn digest_file(path: &Path) -> Result<B3Digest, DriverError> {
    let io = |source| DriverError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file.read(&mut buffer).map_err(io)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(B3Digest::from(hasher.finalize()))
}
