//! One job, one VM: prepare disks, launch QEMU paused, start it over QMP,
//! follow the console, end it, read the output back, clean up.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::accel::{AccelChoice, resolve_accel};
use super::disks::{
    WorkspaceFiles, build_workspace_disk, cached_image_disk, create_output_disk, extract_output,
};
use super::initramfs::cached_initramfs;
use super::kernel::{Kernel, bootable_kernel};
use super::qmp::{QmpClient, QmpEvent, Shutdown, VmAction};
use super::{Accel, VmError, VmJob};

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

/// How long QEMU may take to exit after power-off or `quit` before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
const CONSOLE_POLL: Duration = Duration::from_millis(20);
/// Boot console lines kept for the log when the boot fails.
const CONSOLE_TAIL: usize = 60;

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

    let run_dir = tempfile::Builder::new()
        .prefix("kiln-vm-")
        .tempdir()
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
                    "the VM did not start the job within {} s",
                    job.timeouts.boot.as_secs()
                ),
                Phase::Job => format!(
                    "the job did not finish within {} s",
                    job.timeouts.job.as_secs()
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

/// Waits for QEMU's QMP socket and negotiates; fails when QEMU exits first.
async fn connect(process: &mut QemuProcess) -> Result<QmpClient, String> {
    use std::io::ErrorKind;
    loop {
        // QEMU creates the socket file a moment before it listens on it.
        match tokio::net::UnixStream::connect(&process.socket).await {
            Ok(stream) => {
                return QmpClient::handshake(stream)
                    .await
                    .map_err(|e| e.to_string());
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {}
            Err(e) => return Err(format!("cannot connect to QMP: {e}")),
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(format!(
                "QEMU exited before opening its QMP socket ({status})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn describe_exit(status: Option<std::process::ExitStatus>, run_dir: &Path) -> String {
    let stderr = std::fs::read_to_string(run_dir.join("qemu.stderr")).unwrap_or_default();
    let stderr = stderr.trim();
    match (status, stderr.is_empty()) {
        (_, false) => format!("; QEMU said: {stderr}"),
        (Some(status), true) => format!("; QEMU exited with {status}"),
        (None, true) => String::new(),
    }
}

struct Launch<'a> {
    qemu: &'a Path,
    job: &'a VmJob,
    accel: Accel,
    kernel: &'a Path,
    initramfs: &'a Path,
    image: &'a Path,
    workspace: &'a Path,
    output: &'a Path,
    run_dir: &'a Path,
    nonce: &'a str,
}

impl Launch<'_> {
    fn arguments(&self) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut append = format!(
            "console=ttyS0 reboot=t panic=-1 edd=off rdinit=/init kiln.nonce={}",
            self.nonce
        );
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            _ => {
                // TCG cannot calibrate the TSC against the microvm's PIT; tell
                // the guest the host's rate, which TCG's TSC runs at.
                if let Some(khz) = host_tsc_khz() {
                    append.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
                }
                ("tcg", "max")
            }
        };
        if self.job.network {
            append.push_str(" kiln.net=1");
        }
        let mut args: Vec<String> = [
            "-M",
            "microvm",
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-S",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend([
            "-m".to_owned(),
            self.job.memory_mib.to_string(),
            "-smp".to_owned(),
            self.job.cpus.to_string(),
        ]);
        args.extend([
            "-qmp".to_owned(),
            format!(
                "unix:{},server=on,wait=off",
                path(&self.run_dir.join("qmp.sock"))
            ),
        ]);
        args.extend([
            "-kernel".to_owned(),
            path(self.kernel),
            "-initrd".to_owned(),
            path(self.initramfs),
        ]);
        args.extend(["-append".to_owned(), append]);
        args.extend([
            "-chardev".to_owned(),
            format!(
                "file,id=console,path={}",
                path(&self.run_dir.join("console.log"))
            ),
            "-serial".to_owned(),
            "chardev:console".to_owned(),
        ]);
        for (id, file, readonly) in [
            ("kimage", self.image, true),
            ("kwork", self.workspace, true),
            ("kout", self.output, false),
        ] {
            args.extend([
                "-drive".to_owned(),
                format!(
                    "id={id},file={},format=raw,if=none,readonly={}",
                    path(file).replace(',', ",,"),
                    if readonly { "on" } else { "off" }
                ),
                "-device".to_owned(),
                format!("virtio-blk-device,drive={id},serial={id}"),
            ]);
        }
        if self.job.network {
            args.extend(
                [
                    "-netdev",
                    "user,id=net",
                    "-device",
                    "virtio-net-device,netdev=net",
                ]
                .map(str::to_owned),
            );
        }
        args
    }

    fn spawn(&self) -> Result<QemuProcess, VmError> {
        let stderr = std::fs::File::create(self.run_dir.join("qemu.stderr")).map_err(|source| {
            VmError::Io {
                context: "creating QEMU's stderr file".to_owned(),
                source,
            }
        })?;
        let child = Command::new(self.qemu)
            .args(self.arguments())
            .current_dir(self.run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|e| VmError::Launch {
                reason: format!("{}: {e}", self.qemu.display()),
            })?;
        Ok(QemuProcess {
            child,
            socket: self.run_dir.join("qmp.sock"),
        })
    }
}

/// The QEMU process, leader of its own process group. Dropping it kills the
/// group, so an early return or a panic leaves no VM behind.
struct QemuProcess {
    child: Child,
    socket: PathBuf,
}

impl QemuProcess {
    /// Waits for QEMU to exit, killing it after a grace period.
    async fn finish(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Ok(status)) = tokio::time::timeout(EXIT_GRACE, self.child.wait()).await {
            return Some(status);
        }
        self.kill_group();
        self.child.wait().await.ok()
    }

    fn kill_group(&self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // The group may be gone already; nothing else to do then.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Follows the serial console QEMU writes to a file: the boot part is kept
/// for diagnosis, the part between the job markers goes to the log.
struct Console {
    path: PathBuf,
    file: Option<std::fs::File>,
    partial: Vec<u8>,
    state: ConsoleState,
    start_marker: String,
    end_marker: String,
    setup_failed_marker: String,
    output_failed_marker: String,
    tail: VecDeque<String>,
    /// The last job line, held back: the guest ends the job's output with a
    /// newline of its own, dropped when the job's output already ended in one.
    held: Option<String>,
    job_started_at: Option<Instant>,
    job_ended_at: Option<Instant>,
    guest_uptime_at_start: Option<Duration>,
    setup_failure: Option<String>,
    output_failed: bool,
    panic_seen: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsoleState {
    Boot,
    Job,
    Done,
}

impl Console {
    fn new(path: PathBuf, nonce: &str) -> Console {
        Console {
            path,
            file: None,
            partial: Vec::new(),
            state: ConsoleState::Boot,
            start_marker: format!("@@kiln-job-start-{nonce}@@"),
            end_marker: format!("@@kiln-job-end-{nonce}@@"),
            setup_failed_marker: format!("@@kiln-setup-failed-{nonce}@@"),
            output_failed_marker: format!("@@kiln-output-failed-{nonce}@@"),
            tail: VecDeque::new(),
            held: None,
            job_started_at: None,
            job_ended_at: None,
            guest_uptime_at_start: None,
            setup_failure: None,
            output_failed: false,
            panic_seen: false,
        }
    }

    async fn poll<W: AsyncWrite + Unpin>(&mut self, log: &mut W) -> Result<(), VmError> {
        if self.file.is_none() {
            self.file = std::fs::File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh).map_err(|source| VmError::Io {
            context: format!("reading the console {}", self.path.display()),
            source,
        })?;
        self.partial.extend_from_slice(&fresh);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            let line = line.strip_suffix('\r').unwrap_or(&line).to_owned();
            self.line(line, log).await?;
        }
        Ok(())
    }

    async fn line<W: AsyncWrite + Unpin>(
        &mut self,
        line: String,
        log: &mut W,
    ) -> Result<(), VmError> {
        if line.contains("Kernel panic") {
            self.panic_seen = true;
        }
        match self.state {
            ConsoleState::Boot => {
                if let Some(rest) = line.strip_prefix(&self.start_marker) {
                    self.state = ConsoleState::Job;
                    self.job_started_at = Some(Instant::now());
                    self.guest_uptime_at_start = rest
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .and_then(|s| Duration::try_from_secs_f64(s).ok());
                } else if let Some(rest) = line.strip_prefix(&self.setup_failed_marker) {
                    self.setup_failure = Some(rest.trim().to_owned());
                    self.keep(line);
                } else {
                    self.keep(line);
                }
            }
            ConsoleState::Job => {
                if line.starts_with(&self.end_marker) {
                    self.state = ConsoleState::Done;
                    self.job_ended_at = Some(Instant::now());
                    if let Some(held) = self.held.take().filter(|held| !held.is_empty()) {
                        write_log(log, &format!("{held}\n")).await?;
                    }
                } else if let Some(held) = self.held.replace(line) {
                    write_log(log, &format!("{held}\n")).await?;
                }
            }
            ConsoleState::Done => {
                if line.starts_with(&self.output_failed_marker) {
                    self.output_failed = true;
                }
                self.keep(line);
            }
        }
        Ok(())
    }

    fn keep(&mut self, line: String) {
        if self.tail.len() == CONSOLE_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// Flushes a job's output cut short (timeout, kill, panic).
    async fn finish<W: AsyncWrite + Unpin>(&mut self, log: &mut W) -> Result<(), VmError> {
        if self.state == ConsoleState::Job {
            if let Some(held) = self.held.take() {
                write_log(log, &format!("{held}\n")).await?;
            }
            if !self.partial.is_empty() {
                let rest = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                write_log(log, &format!("{rest}\n")).await?;
            }
        }
        Ok(())
    }

    async fn write_tail<W: AsyncWrite + Unpin>(&self, log: &mut W) -> Result<(), VmError> {
        if self.tail.is_empty() {
            return write_log(log, "kiln: the guest console is empty\n").await;
        }
        write_log(log, "kiln: last lines of the guest console:\n").await?;
        for line in &self.tail {
            write_log(log, &format!("  | {line}\n")).await?;
        }
        Ok(())
    }
}

async fn write_log<W: AsyncWrite + Unpin>(log: &mut W, text: &str) -> Result<(), VmError> {
    log.write_all(text.as_bytes()).await.map_err(log_error)
}

fn log_error(source: std::io::Error) -> VmError {
    VmError::Io {
        context: "writing the job log".to_owned(),
        source,
    }
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

/// The host's TSC rate, which TCG's guest TSC follows.
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0).round() as u64).filter(|&khz| khz > 0)
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

    #[tokio::test]
    async fn the_console_splits_boot_noise_from_the_job_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(
            &path,
            "[    0.1] Linux version 6.1\r\n@@kiln-job-start-n1@@ 1.25\r\nhello\r\nworld\r\n\r\n@@kiln-job-end-n1@@ 3\r\n[    2.0] reboot: Power down\r\n",
        )
        .unwrap();
        let mut console = Console::new(path, "n1");
        let mut log = Vec::new();
        console.poll(&mut log).await.unwrap();
        console.finish(&mut log).await.unwrap();
        assert_eq!(String::from_utf8(log).unwrap(), "hello\nworld\n");
        assert_eq!(
            console.guest_uptime_at_start,
            Some(Duration::from_millis(1250))
        );
        assert!(
            console
                .tail
                .iter()
                .any(|line| line.contains("Linux version"))
        );
    }
}
