//! One job, one VM: prepare disks, launch QEMU paused, start it over QMP,
//! follow the console, end it, read the output back, clean up.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::accel::{AccelChoice, resolve_accel};
use super::console::{Console, log_error, write_log};
use super::disks::{
    WorkspaceFiles, build_workspace_disk, cached_image_disk, create_output_disk,
    create_scratch_disk, extract_output,
};
use super::initramfs::cached_initramfs;
use super::kernel::{Kernel, bootable_kernel};
use super::launch::{Launch, QemuProcess, connect, describe_exit};
use super::qmp::{QmpEvent, Shutdown, VmAction};
use super::{VmError, VmJob};

/// Where a timeout struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Launch to the job's first command (driver creation).
    Boot,
    /// The job script.
    Job,
}

/// How a VM job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The script ran to its end; its upper layer is in `upper_dir`.
    Exited {
        exit_code: i32,
        upper_dir: PathBuf,
    },
    TimedOut {
        phase: Phase,
    },
    Killed,
    /// The guest never ran the job to its end: boot or setup failure, panic,
    /// QEMU dying. The reason is also in the log.
    Failed {
        reason: String,
    },
}

/// Where the time went (host clock unless noted).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VmTimings {
    /// Initramfs, image disk, accelerator, workspace disk.
    pub prepare: Duration,
    /// QEMU launch to the job's first command, as seen by the host.
    pub boot: Option<Duration>,
    /// Guest uptime when the job started (kernel + init, guest clock).
    pub guest_boot: Option<Duration>,
    /// The job's first command to the guest's power-off.
    pub job: Option<Duration>,
    /// Power-off (or quit) until QEMU is gone and the output is read.
    pub teardown: Duration,
    pub total: Duration,
}

/// The result of [`run_job`].
#[derive(Debug, Clone, PartialEq)]
pub struct VmRun {
    pub outcome: VmOutcome,
    pub accel: AccelChoice,
    pub timings: VmTimings,
}

const CONSOLE_POLL: Duration = Duration::from_millis(20);

/// Runs `job` in a fresh microVM.
///
/// `cache_dir` keeps the initramfs, image disks and the accelerator verdict;
/// `upper_dir` (absent or empty) receives the job's upper layer. `log` gets
/// one header line (accelerator, kernel), then the script's output; on
/// failure, the reason and the tail of the boot console. `cancel` resolving
/// kills the job. QEMU, its socket and its disks are gone on return, on
/// every path.
pub async fn run_job<W, C>(
    job: &VmJob,
    cache_dir: &Path,
    upper_dir: &Path,
    log: &mut W,
    cancel: C,
) -> Result<VmRun, VmError>
where
    W: AsyncWrite + Unpin,
    C: Future<Output = ()>,
{
    let result = run(job, cache_dir, upper_dir, log, cancel).await;
    if let Err(error) = &result {
        let _ = log.write_all(format!("kiln: {error}\n").as_bytes()).await;
        let _ = log.flush().await;
    }
    result
}

async fn run<W, C>(
    job: &VmJob,
    cache_dir: &Path,
    upper_dir: &Path,
    log: &mut W,
    cancel: C,
) -> Result<VmRun, VmError>
where
    W: AsyncWrite + Unpin,
    C: Future<Output = ()>,
{
    let started = Instant::now();
    validate(job)?;
    check_upper_dir(upper_dir)?;
    let qemu = find_in_path("qemu-system-x86_64").ok_or(VmError::QemuNotFound)?;
    let kernel = Kernel::resolve(&job.kernel)?;
    let initramfs = blocking({
        let (kernel, cache_dir) = (kernel.clone(), cache_dir.to_path_buf());
        move || cached_initramfs(&kernel, &cache_dir)
    })
    .await?;
    let boot_kernel = blocking({
        let (kernel, cache_dir) = (kernel.clone(), cache_dir.to_path_buf());
        move || bootable_kernel(&kernel, &cache_dir)
    })
    .await?;
    let image = blocking({
        let (cache_dir, root, digest) = (
            cache_dir.to_path_buf(),
            job.image_root.clone(),
            job.image_digest.clone(),
        );
        move || cached_image_disk(&cache_dir, &root, &digest)
    })
    .await?;
    let accel = resolve_accel(
        job.accel,
        &qemu,
        &kernel,
        &boot_kernel,
        &initramfs,
        cache_dir,
    )
    .await?;
    write_log(
        log,
        &format!(
            "kiln: qemu microvm, accel={} ({}), kernel={}{}, {} MiB, {} cpu, network {}\n",
            accel.accel.as_str(),
            accel
                .reason
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; "),
            kernel.path.display(),
            if boot_kernel == kernel.path {
                ""
            } else {
                " (booted as PVH vmlinux)"
            },
            job.memory_mib,
            job.cpus,
            if job.network { "on" } else { "off" },
        ),
    )
    .await?;

    // Beside the job's upper dir, inside the build's private directory
    // (never a host-visible TMPDIR): the disks the guest writes live here,
    // and a build that dies leaves it to the next build's sweep.
    let run_parent = upper_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let run_dir = tempfile::Builder::new()
        .prefix("vm-")
        .tempdir_in(&run_parent)
        .map_err(|source| VmError::Io {
            context: "creating the VM's private directory".to_owned(),
            source,
        })?;
    let workspace_disk = blocking({
        let run_dir = run_dir.path().to_path_buf();
        let lower_dirs = job.lower_dirs.clone();
        let script = job.script.clone();
        let run_script = run_script(job);
        let workspace = job.workspace.to_string_lossy().into_owned();
        let hostname = job.hostname.clone();
        move || {
            build_workspace_disk(
                &run_dir,
                &WorkspaceFiles {
                    lower_dirs: &lower_dirs,
                    script: &script,
                    run_script,
                    workspace: &workspace,
                    hostname: &hostname,
                },
            )
        }
    })
    .await?;
    let scratch_disk = create_scratch_disk(run_dir.path(), job.output_limit_mib)?;
    let output_disk = create_output_disk(run_dir.path(), job.output_limit_mib)?;
    let prepare = started.elapsed();

    let nonce = nonce();
    let launch = Launch {
        qemu: &qemu,
        job,
        accel: accel.accel,
        kernel: &boot_kernel,
        initramfs: &initramfs,
        image: &image,
        workspace: &workspace_disk,
        scratch: &scratch_disk,
        output: &output_disk,
        run_dir: run_dir.path(),
        nonce: &nonce,
    };
    let mut process = launch.spawn()?;
    let launched = Instant::now();
    let mut console = Console::new(run_dir.path().join("console.log"), &nonce);

    let ending = drive(&mut process, &mut console, job, launched, log, cancel).await;

    // Teardown, on every path: QEMU ends (asked, then forced), the socket and
    // disks go with the private directory.
    let teardown_started = Instant::now();
    let exit_status = process.finish().await;
    console.poll(log).await?;
    console.finish(log).await?;

    let outcome = match ending {
        Ending::Shutdown(shutdown) if shutdown.is_poweroff() => {
            match blocking({
                let (disk, upper) = (output_disk.clone(), upper_dir.to_path_buf());
                move || extract_output(&disk, &upper)
            })
            .await
            {
                Ok(Some(output)) => VmOutcome::Exited {
                    exit_code: output.exit_code,
                    upper_dir: upper_dir.to_path_buf(),
                },
                Ok(None) => VmOutcome::Failed {
                    reason: match &console.setup_failure {
                        Some(reason) => format!("guest setup failed: {reason}"),
                        None if console.output_failed => {
                            "the guest could not write the job's output".to_owned()
                        }
                        None => "the guest powered off without the job's output".to_owned(),
                    },
                },
                Err(error) => VmOutcome::Failed {
                    reason: error.to_string(),
                },
            }
        }
        Ending::Shutdown(shutdown) => VmOutcome::Failed {
            reason: format!(
                "the guest stopped ({}{}) instead of powering off: kernel panic or reset",
                shutdown.reason,
                if console.panic_seen {
                    ", the console shows a kernel panic"
                } else {
                    ""
                }
            ),
        },
        Ending::TimedOut(phase) => VmOutcome::TimedOut { phase },
        Ending::Killed => VmOutcome::Killed,
        Ending::Failed(reason) => VmOutcome::Failed {
            reason: format!("{reason}{}", describe_exit(exit_status, run_dir.path())),
        },
    };
    let job_ended = console.job_ended_at.unwrap_or(teardown_started);
    drop(run_dir);
    let timings = VmTimings {
        prepare,
        boot: console.job_started_at.map(|at| at - launched),
        guest_boot: console.guest_uptime_at_start,
        job: console
            .job_started_at
            .map(|at| job_ended.saturating_duration_since(at)),
        teardown: teardown_started.elapsed(),
        total: started.elapsed(),
    };

    match &outcome {
        VmOutcome::Exited { .. } | VmOutcome::Killed => {}
        VmOutcome::TimedOut { phase } => {
            let what = match phase {
                Phase::Boot => format!(
                    "the VM did not start the job within {}",
                    seconds(job.timeouts.boot)
                ),
                Phase::Job => format!(
                    "the job did not finish within {}",
                    seconds(job.timeouts.job)
                ),
            };
            write_log(log, &format!("kiln: timed out: {what}\n")).await?;
            if *phase == Phase::Boot {
                console.write_tail(log).await?;
            }
        }
        VmOutcome::Failed { reason } => {
            write_log(log, &format!("kiln: VM job failed: {reason}\n")).await?;
            // Once the job ran, its own part of the console tells the story.
            if console.job_started_at.is_none() {
                console.write_tail(log).await?;
            }
        }
    }
    if outcome == VmOutcome::Killed {
        write_log(log, "kiln: killed\n").await?;
    }
    log.flush().await.map_err(log_error)?;
    Ok(VmRun {
        outcome,
        accel,
        timings,
    })
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

enum Ending {
    Shutdown(Shutdown),
    TimedOut(Phase),
    Killed,
    Failed(String),
}

/// From launch to the guest's end: QMP handshake, `cont`, then events,
/// console and deadlines until one of them ends the run.
async fn drive<W, C>(
    process: &mut QemuProcess,
    console: &mut Console,
    job: &VmJob,
    launched: Instant,
    log: &mut W,
    cancel: C,
) -> Ending
where
    W: AsyncWrite + Unpin,
    C: Future<Output = ()>,
{
    let boot_deadline = tokio::time::Instant::from_std(launched + job.timeouts.boot);
    let mut cancel = std::pin::pin!(cancel);
    let connected = tokio::select! {
        connected = connect(process) => connected,
        () = tokio::time::sleep_until(boot_deadline) => return Ending::TimedOut(Phase::Boot),
        () = &mut cancel => return Ending::Killed,
    };
    let mut qmp = match connected {
        Ok(qmp) => qmp,
        Err(reason) => return Ending::Failed(reason),
    };
    if let Err(error) = qmp.execute(VmAction::Start).await {
        return Ending::Failed(error.to_string());
    }
    let mut ticker = tokio::time::interval(CONSOLE_POLL);
    let mut job_deadline = None;
    let ending = loop {
        let (deadline, phase) = match job_deadline {
            Some(deadline) => (deadline, Phase::Job),
            None => (boot_deadline, Phase::Boot),
        };
        tokio::select! {
            event = qmp.next_event() => match event {
                Ok(Some(QmpEvent::Shutdown(shutdown))) => break Ending::Shutdown(shutdown),
                Ok(Some(QmpEvent::Other { .. })) => {}
                Ok(None) => break Ending::Failed("QEMU closed the QMP socket before the guest powered off".to_owned()),
                Err(error) => break Ending::Failed(error.to_string()),
            },
            _ = ticker.tick() => {
                if let Err(error) = console.poll(log).await {
                    break Ending::Failed(format!("writing the job log: {error}"));
                }
                if job_deadline.is_none() && let Some(at) = console.job_started_at {
                    job_deadline = Some(tokio::time::Instant::from_std(at + job.timeouts.job));
                }
            }
            () = tokio::time::sleep_until(deadline) => break Ending::TimedOut(phase),
            () = &mut cancel => break Ending::Killed,
        }
    };
    if !matches!(ending, Ending::Shutdown(_)) {
        // Best effort: a QEMU that does not answer is killed by `finish`.
        let _ = tokio::time::timeout(Duration::from_secs(2), qmp.quit()).await;
    }
    ending
}

async fn blocking<T, F>(work: F) -> Result<T, VmError>
where
    F: FnOnce() -> Result<T, VmError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| VmError::Io {
            context: "a preparation task".to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// The guest's `run.sh`: the exact environment, the image root, the
/// workspace as working directory, the script on fd 3 (it lives outside the
/// job's root), stdin empty.
fn run_script(job: &VmJob) -> String {
    let mut text =
        String::from("exec 3< /mnt/work/job/script < /dev/null\nexec /bin/busybox env -i");
    for (key, value) in &job.env {
        text.push(' ');
        text.push_str(&sh_quote(&format!("{key}={value}")));
    }
    text.push_str(" /bin/busybox chroot /newroot /bin/sh -c 'cd \"$1\" || exit 125; exec /bin/sh /proc/self/fd/3' kiln-job ");
    text.push_str(&sh_quote(&job.workspace.to_string_lossy()));
    text.push_str(" 2>&1\n");
    text
}

fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn validate(job: &VmJob) -> Result<(), VmError> {
    let invalid = |reason: String| Err(VmError::InvalidJob { reason });
    for (key, value) in &job.env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return invalid(format!("environment variable name {key:?}"));
        }
        if value.contains('\0') {
            return invalid(format!("environment variable {key} holds a NUL byte"));
        }
    }
    let workspace = job.workspace.to_string_lossy();
    if !workspace.starts_with('/')
        || workspace == "/"
        || !workspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
        || job
            .workspace
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return invalid(format!(
            "workspace {workspace:?}: expected an absolute path of [A-Za-z0-9/._-], not /"
        ));
    }
    if job.hostname.is_empty()
        || job.hostname.len() > 64
        || !job
            .hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return invalid(format!("hostname {:?}", job.hostname));
    }
    if job.memory_mib < 128 {
        return invalid(format!("memory_mib = {}: at least 128", job.memory_mib));
    }
    if job.cpus == 0 || job.cpus > 64 {
        return invalid(format!("cpus = {}: 1 to 64", job.cpus));
    }
    if job.script.contains('\0') {
        return invalid("the script holds a NUL byte".to_owned());
    }
    Ok(())
}

/// The upper layer lands in a fresh directory: absent, or empty.
fn check_upper_dir(upper_dir: &Path) -> Result<(), VmError> {
    let occupied = std::fs::read_dir(upper_dir).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        return Err(VmError::InvalidJob {
            reason: format!("the upper directory {} is not empty", upper_dir.display()),
        });
    }
    Ok(())
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Marks this run's console lines; not secret, only unlikely to be printed
/// by accident.
fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(&format!("{:?}", std::time::SystemTime::now()).into_bytes());
    hasher.finalize().to_hex()[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_quoted_exactly() {
        let mut job = VmJob::new("/i".into(), "d".into(), "true".into());
        job.env.insert("A".into(), "it's $HOME".into());
        let script = run_script(&job);
        assert!(script.contains(r#"'A=it'\''s $HOME'"#), "{script}");
        assert!(script.contains("'/work' 2>&1"), "{script}");
    }

    #[test]
    fn bad_jobs_are_refused() {
        let mut job = VmJob::new("/i".into(), "d".into(), "true".into());
        job.env.insert("A=B".into(), "x".into());
        assert!(matches!(validate(&job), Err(VmError::InvalidJob { .. })));
        let mut job = VmJob::new("/i".into(), "d".into(), "true".into());
        job.workspace = "work".into();
        assert!(matches!(validate(&job), Err(VmError::InvalidJob { .. })));
        let mut job = VmJob::new("/i".into(), "d".into(), "true".into());
        job.hostname = "a b".into();
        assert!(matches!(validate(&job), Err(VmError::InvalidJob { .. })));
    }
}
