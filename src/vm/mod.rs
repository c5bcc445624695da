//! The qemu driver's runner: one job script in one QEMU microVM.
//!
//! [`run_job`] resolves the kernel, builds (or reuses) the initramfs and the
//! image disk, stages the workspace layers on a disk, launches
//! `qemu-system-x86_64 -M microvm -S` with a private QMP socket, starts the
//! guest, streams the job's part of the serial console into the log, and
//! reads the job's upper layer and exit status back from the output disk.
//! Whatever happens, QEMU, its socket and its disks are gone when it returns.

mod accel;
mod config;
mod console;
mod disks;
mod initramfs;
mod kernel;
mod launch;
mod qmp;
mod runner;

pub use accel::{ACCEL_ENV, AccelChoice, resolve_accel};
pub use config::{Accel, KernelChoice, VmJob, VmTimeouts};
pub use disks::{JobOutput, cached_image_disk, extract_output, is_opaque, make_ext4, mark_opaque};
pub use initramfs::{InitramfsContents, Module, cached_initramfs};
pub use kernel::{Kernel, bootable_kernel, newest_boot_kernel};
pub use qmp::{QmpClient, QmpEvent, QmpMessage, Shutdown, VmAction, parse_line};
pub use runner::{Phase, VmOutcome, VmRun, VmTimings, run_job};

/// Why a VM job could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("invalid VM job: {reason}")]
    InvalidJob { reason: String },
    #[error("qemu-system-x86_64 not found in PATH (on Debian: apt-get install qemu-system-x86)")]
    QemuNotFound,
    #[error("no kernel: {reason}")]
    KernelNotFound { reason: String },
    #[error("cannot build the initramfs: {reason}")]
    Initramfs { reason: String },
    #[error("cannot build a disk image: {reason}")]
    Disk { reason: String },
    #[error("cannot read the job's output: {reason}")]
    Output { reason: String },
    #[error("QMP: {reason}")]
    Qmp { reason: String },
    #[error("cannot launch QEMU: {reason}")]
    Launch { reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
