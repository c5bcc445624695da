//! Choosing the accelerator. KVM only where a guest really boots under it:
//! on nested machines `/dev/kvm` may exist while guests hang in early boot,
//! so `auto` boots a tiny guest once with a short deadline and remembers the
//! verdict per machine and kernel in the cache directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::kernel::Kernel;
use super::{Accel, VmError};

/// `kvm` or `tcg`: overrides `auto` (not an explicit `accel` in the job).
pub const ACCEL_ENV: &str = "KILN_QEMU_ACCEL";

/// A working KVM boots the probe guest to user space in well under a second.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// The accelerator a job runs with, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Resolves `requested` to KVM or TCG, probing at most once per machine and
/// kernel (the verdict is kept in `cache_dir/accel/`).
pub async fn resolve_accel(
    requested: Accel,
    qemu: &Path,
    kernel: &Kernel,
    boot_kernel: &Path,
    initramfs: &Path,
    cache_dir: &Path,
) -> Result<AccelChoice, VmError> {
    match requested {
        Accel::Kvm => return Ok(choice(Accel::Kvm, "requested by the job")),
        Accel::Tcg => return Ok(choice(Accel::Tcg, "requested by the job")),
        Accel::Auto => {}
    }
    match std::env::var(ACCEL_ENV).as_deref() {
        Ok("kvm") => return Ok(choice(Accel::Kvm, &format!("{ACCEL_ENV}=kvm"))),
        Ok("tcg") => return Ok(choice(Accel::Tcg, &format!("{ACCEL_ENV}=tcg"))),
        Ok("auto") | Ok("") | Err(_) => {}
        Ok(other) => {
            return Err(VmError::InvalidJob {
                reason: format!("{ACCEL_ENV}={other:?}: expected kvm, tcg or auto"),
            });
        }
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(choice(Accel::Tcg, "/dev/kvm is not usable"));
    }
    let verdict_path = verdict_path(cache_dir, kernel);
    if let Ok(text) = std::fs::read_to_string(&verdict_path)
        && let Ok(remembered) = serde_json::from_str::<AccelChoice>(&text)
    {
        return Ok(AccelChoice {
            accel: remembered.accel,
            reason: format!("remembered: {}", remembered.reason),
        });
    }
    let verdict = probe_kvm(qemu, boot_kernel, initramfs).await;
    if let Some(parent) = verdict_path.parent() {
        let saved = std::fs::create_dir_all(parent).and_then(|()| {
            let text = serde_json::to_string(&verdict).map_err(std::io::Error::other)?;
            let temporary = tempfile::NamedTempFile::new_in(parent)?;
            std::fs::write(temporary.path(), text)?;
            temporary.persist(&verdict_path).map_err(|e| e.error)?;
            Ok(())
        });
        saved.map_err(|source| VmError::Io {
            context: format!("remembering the accelerator in {}", verdict_path.display()),
            source,
        })?;
    }
    Ok(verdict)
}

fn choice(accel: Accel, reason: &str) -> AccelChoice {
    AccelChoice {
        accel,
        reason: reason.to_owned(),
    }
}

/// One verdict per host and kernel: a new kernel or another machine behind
/// the same cache directory probes again.
pub fn verdict_path(cache_dir: &Path, kernel: &Kernel) -> PathBuf {
    let mut hasher = blake3::Hasher::new();
    let metadata = std::fs::metadata(&kernel.path).ok();
    for part in [
        kernel.path.to_string_lossy().into_owned(),
        metadata
            .as_ref()
            .map(|m| m.len().to_string())
            .unwrap_or_default(),
        metadata
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_default(),
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
        cpu_model(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    cache_dir
        .join("accel")
        .join(format!("{}.json", &hasher.finalize().to_hex()[..32]))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("model name"))
        .unwrap_or_default()
        .to_owned()
}

/// Boots the probe guest (init powers off at once) under KVM.
async fn probe_kvm(qemu: &Path, kernel: &Path, initramfs: &Path) -> AccelChoice {
    let started = Instant::now();
    let mut command = Command::new(qemu);
    command
        .args([
            "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 reboot=t panic=-1 edd=off quiet kiln.probe=1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return choice(Accel::Tcg, &format!("cannot start the KVM probe: {e}")),
    };
    let stdout = read_pipe(child.stdout.take());
    let stderr = read_pipe(child.stderr.take());
    let status = match tokio::time::timeout(PROBE_DEADLINE, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return choice(Accel::Tcg, &format!("the KVM probe failed: {e}")),
        Err(_) => {
            // A hung guest: end it before giving the verdict, no process left.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return choice(
                Accel::Tcg,
                &format!(
                    "a KVM guest did not boot within {} s",
                    PROBE_DEADLINE.as_secs()
                ),
            );
        }
    };
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    // A panicking guest also ends QEMU cleanly (-no-reboot): only the marker
    // printed by the guest's init proves a boot.
    if status.success() && contains(&stdout, b"@@kiln-probe-ok@@") {
        return choice(
            Accel::Kvm,
            &format!(
                "a KVM guest powered off after {:.2} s",
                started.elapsed().as_secs_f64()
            ),
        );
    }
    choice(
        Accel::Tcg,
        &format!(
            "the KVM probe failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        ),
    )
}

fn read_pipe<R>(pipe: Option<R>) -> tokio::task::JoinHandle<Vec<u8>>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut bytes).await;
        }
        bytes
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
