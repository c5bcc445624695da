//! Launching QEMU: the command line of a kiln microVM, the process that owns
//! it, and the wait for its QMP socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::qmp::QmpClient;
use super::{Accel, VmError, VmJob};

/// How long QEMU may take to exit after power-off or `quit` before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Waits for QEMU's QMP socket and negotiates; fails when QEMU exits first.
pub(super) async fn connect(process: &mut QemuProcess) -> Result<QmpClient, String> {
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
        if let Some(status) = process.try_wait() {
            return Err(match status {
                Some(status) => format!("QEMU exited before opening its QMP socket ({status})"),
                None => "QEMU exited before opening its QMP socket".to_owned(),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) fn describe_exit(status: Option<std::process::ExitStatus>, run_dir: &Path) -> String {
    let stderr = std::fs::read_to_string(run_dir.join("qemu.stderr")).unwrap_or_default();
    let stderr = stderr.trim();
    match (status, stderr.is_empty()) {
        (_, false) => format!("; QEMU said: {stderr}"),
        (Some(status), true) => format!("; QEMU exited with {status}"),
        (None, true) => String::new(),
    }
}

pub(super) struct Launch<'a> {
    pub(super) qemu: &'a Path,
    pub(super) job: &'a VmJob,
    pub(super) accel: Accel,
    pub(super) kernel: &'a Path,
    pub(super) initramfs: &'a Path,
    pub(super) image: &'a Path,
    pub(super) workspace: &'a Path,
    pub(super) scratch: &'a Path,
    pub(super) output: &'a Path,
    pub(super) run_dir: &'a Path,
    pub(super) nonce: &'a str,
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
            // Relative to QEMU's working directory (the run dir): the run
            // dir's absolute path may exceed a socket address's 108 bytes.
            "unix:qmp.sock,server=on,wait=off".to_owned(),
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
            ("kscratch", self.scratch, false),
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

    /// Starts QEMU from a thread of its own that lives exactly as long as
    /// QEMU: the thread forks, arms `PR_SET_PDEATHSIG(SIGKILL)` in the child,
    /// then blocks in `wait` and reports the exit status. The parent-death
    /// signal fires when the *thread* that forked exits; a tokio worker or
    /// blocking-pool thread may exit while the VM still runs (idle blocking
    /// threads do), a dedicated waiter cannot. So QEMU dies with kiln, even
    /// when kiln is SIGKILLed, and is never killed early.
    pub(super) fn spawn(&self) -> Result<QemuProcess, VmError> {
        use std::os::unix::process::CommandExt;
        let stderr = std::fs::File::create(self.run_dir.join("qemu.stderr")).map_err(|source| {
            VmError::Io {
                context: "creating QEMU's stderr file".to_owned(),
                source,
            }
        })?;
        let mut command = std::process::Command::new(self.qemu);
        command
            .args(self.arguments())
            .current_dir(self.run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe calls (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // kiln died between fork and prctl: the signal will never
                // come, so do not start the VM at all.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let (started_tx, started_rx) = std::sync::mpsc::channel::<std::io::Result<u32>>();
        let (exit_tx, exit_rx) = watch::channel(None);
        let qemu = self.qemu.to_path_buf();
        std::thread::Builder::new()
            .name("kiln-qemu".to_owned())
            .spawn(move || match command.spawn() {
                Ok(mut child) => {
                    let _ = started_tx.send(Ok(child.id()));
                    let status = child.wait().ok();
                    let _ = exit_tx.send(Some(status));
                }
                Err(error) => {
                    let _ = started_tx.send(Err(error));
                }
            })
            .map_err(|e| VmError::Launch {
                reason: format!("cannot start QEMU's waiter thread: {e}"),
            })?;
        let pid = started_rx
            .recv()
            .map_err(|_| VmError::Launch {
                reason: "QEMU's waiter thread ended before starting it".to_owned(),
            })?
            .map_err(|e| VmError::Launch {
                reason: format!("{}: {e}", qemu.display()),
            })?;
        // kiln connects through its own descriptor of the run dir, so the
        // address stays short wherever the run dir is.
        let run_dir = std::fs::File::open(self.run_dir).map_err(|source| VmError::Io {
            context: format!("opening {}", self.run_dir.display()),
            source,
        })?;
        let socket = PathBuf::from(format!(
            "/proc/self/fd/{}/qmp.sock",
            std::os::fd::AsRawFd::as_raw_fd(&run_dir)
        ));
        Ok(QemuProcess {
            pid,
            exit: exit_rx,
            socket,
            _run_dir: run_dir,
        })
    }
}

/// The QEMU process, leader of its own process group, reaped by its waiter
/// thread. Dropping it kills the group, so an early return or a panic
/// leaves no VM behind; kiln dying kills it through the parent-death signal.
pub(super) struct QemuProcess {
    pid: u32,
    /// `Some(status)` once QEMU exited (`None` inside: waiting failed).
    exit: watch::Receiver<Option<Option<std::process::ExitStatus>>>,
    pub(super) socket: PathBuf,
    /// Keeps the descriptor `socket` goes through open.
    _run_dir: std::fs::File,
}

impl QemuProcess {
    /// The exit status if QEMU has exited.
    pub(super) fn try_wait(&self) -> Option<Option<std::process::ExitStatus>> {
        *self.exit.borrow()
    }

    async fn wait(&mut self) -> Option<std::process::ExitStatus> {
        match self.exit.wait_for(Option::is_some).await {
            Ok(status) => status.flatten(),
            // The waiter is gone without a word: it panicked; nothing to wait for.
            Err(_) => None,
        }
    }

    /// Waits for QEMU to exit, killing it after a grace period.
    pub(super) async fn finish(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(status) = tokio::time::timeout(EXIT_GRACE, self.wait()).await {
            return status;
        }
        self.kill_group();
        self.wait().await
    }

    fn kill_group(&self) {
        if self.try_wait().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.pid) {
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
