//! Launching QEMU: the command line of a kiln microVM, the process that owns
//! it, and the wait for its QMP socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

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
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(format!(
                "QEMU exited before opening its QMP socket ({status})"
            ));
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

    pub(super) fn spawn(&self) -> Result<QemuProcess, VmError> {
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
pub(super) struct QemuProcess {
    pub(super) child: Child,
    pub(super) socket: PathBuf,
}

impl QemuProcess {
    /// Waits for QEMU to exit, killing it after a grace period.
    pub(super) async fn finish(&mut self) -> Option<std::process::ExitStatus> {
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
