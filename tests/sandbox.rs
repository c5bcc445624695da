//! The container sandbox on the real kernel: namespaces, overlayfs,
//! pivot_root. Needs root (or working user namespaces). The tests run one at
//! a time (a global lock): some look at the whole machine's processes and
//! mounts.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln::sandbox::{RootFs, SandboxOutcome, SandboxRun, SandboxSpec, WorkspaceSpec};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const HELPER: &str = env!("CARGO_BIN_EXE_kiln");
const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// One job's directories: layers, upper, work, the run dir, the script.
struct Job {
    dir: tempfile::TempDir,
    spec: SandboxSpec,
}

impl Job {
    fn new(script: &str) -> Job {
        Job::with_layers(script, &[])
    }

    /// `layers`: base first, each a list of (relative path, contents).
    fn with_layers(script: &str, layers: &[&[(&str, &str)]]) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let mut lower = Vec::new();
        for (n, files) in layers.iter().enumerate() {
            let layer = dir.path().join(format!("layer{n}"));
            std::fs::create_dir(&layer).unwrap();
            for (path, contents) in *files {
                let file = layer.join(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, contents).unwrap();
            }
            lower.push(layer);
        }
        for sub in ["upper", "work", "run"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("job.sh"), script).unwrap();
        let mut spec = SandboxSpec::new(
            RootFs::Host { exclude: vec![] },
            WorkspaceSpec {
                path: "/work".into(),
                lower,
                upper: dir.path().join("upper"),
                work: dir.path().join("work"),
            },
            dir.path().join("job.sh"),
        );
        spec.env = vec![
            ("PATH".into(), PATH.into()),
            ("HOME".into(), "/work".into()),
        ];
        Job { dir, spec }
    }

    fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }

    fn prepare(&self) -> SandboxRun {
        SandboxRun::prepare(&self.spec, &self.dir.path().join("run")).unwrap()
    }

    fn run(&self) -> (SandboxOutcome, String, String) {
        let run = self.prepare();
        let mut command = run.command(Path::new(HELPER));
        // A careless parent: the helper must still give the job nothing of it.
        command.env("KILN_HOST_MARKER", "leaked");
        let Output {
            status,
            stdout,
            stderr,
        } = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        (run.outcome(status), stdout, stderr)
    }

    /// Runs and expects a clean exit 0; returns stdout.
    fn run_ok(&self) -> String {
        let (outcome, stdout, stderr) = self.run();
        assert_eq!(
            outcome,
            SandboxOutcome::Exited { code: 0 },
            "stdout:\n{stdout}\nstderr:\n{stderr}"
        );
        stdout
    }
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn the_exit_code_and_signal_come_back() {
    let _serial = serial();
    let (outcome, stdout, _) = Job::new("echo out; echo err >&2; exit 7").run();
    assert_eq!(outcome, SandboxOutcome::Exited { code: 7 });
    assert_eq!(stdout, "out\n");
    let (outcome, _, stderr) = Job::new("echo err >&2; kill -TERM $$").run();
    assert_eq!(outcome, SandboxOutcome::Signaled { signal: 15 });
    assert_eq!(stderr, "err\n");
    assert!(Job::new("true").run_ok().is_empty());
}

#[test]
fn layers_merge_in_order_and_writes_land_in_the_upper_dir() {
    let _serial = serial();
    let job = Job::with_layers(
        "cat base.txt shared.txt; echo written > new.txt; echo changed >> shared.txt",
        &[
            &[("base.txt", "from base\n"), ("shared.txt", "base\n")],
            &[("shared.txt", "dependency\n")],
        ],
    );
    assert_eq!(job.run_ok(), "from base\ndependency\n");
    let upper = job.upper();
    assert_eq!(
        std::fs::read_to_string(upper.join("new.txt")).unwrap(),
        "written\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("shared.txt")).unwrap(),
        "dependency\nchanged\n"
    );
    assert!(
        !upper.join("base.txt").exists(),
        "an unchanged lower file is not copied up"
    );
    // The layers themselves are untouched.
    assert_eq!(
        std::fs::read_to_string(job.spec.workspace.lower[1].join("shared.txt")).unwrap(),
        "dependency\n"
    );
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let len = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[test]
fn deletions_are_whiteouts_and_replaced_dirs_are_opaque() {
    let _serial = serial();
    let job = Job::with_layers(
        "rm gone.txt && rm -r dir && mkdir dir && echo fresh > dir/new && ls dir",
        &[&[("gone.txt", "x"), ("dir/old", "old"), ("kept.txt", "k")]],
    );
    assert_eq!(job.run_ok(), "new\n");
    let whiteout = std::fs::symlink_metadata(job.upper().join("gone.txt")).unwrap();
    assert!(
        whiteout.file_type().is_char_device(),
        "a deletion is a whiteout"
    );
    assert_eq!(whiteout.rdev(), 0, "a whiteout is the char device 0:0");
    assert_eq!(
        xattr(&job.upper().join("dir"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!job.upper().join("dir/old").exists());
    assert!(!job.upper().join("kept.txt").exists());
}

#[test]
fn the_job_sees_only_its_own_processes() {
    let _serial = serial();
    let out =
        Job::new("for p in /proc/[0-9]*; do echo \"${p#/proc/} $(cat $p/comm)\"; done").run_ok();
    let pids: Vec<(u32, String)> = out
        .lines()
        .map(|l| {
            let (pid, comm) = l.split_once(' ').unwrap();
            (pid.parse().unwrap(), comm.to_owned())
        })
        .collect();
    assert_eq!(
        pids.first(),
        Some(&(1, "kiln".to_owned())),
        "PID 1 is the sandbox init:\n{out}"
    );
    assert!(
        pids.len() <= 4,
        "only init, the shell and its subshells:\n{out}"
    );
    assert!(pids.iter().all(|(pid, _)| *pid < 10), "{out}");
}

#[test]
fn the_job_cannot_read_home_root_or_the_hosts_tmp() {
    let _serial = serial();
    assert!(
        nix::unistd::geteuid().is_root(),
        "planting markers in /root and /home needs root: run the suite as root, as CI does"
    );
    let markers = [
        PathBuf::from(format!("/root/.kiln-sandbox-test-{}", std::process::id())),
        PathBuf::from(format!("/home/.kiln-sandbox-test-{}", std::process::id())),
    ];
    for marker in &markers {
        std::fs::write(marker, "secret").unwrap();
    }
    let host_tmp = tempfile::NamedTempFile::new().unwrap();
    let store = tempfile::tempdir_in("/var/lib").unwrap();
    std::fs::write(store.path().join("blob"), "secret").unwrap();

    let mut job = Job::new("");
    let script: String = markers
        .iter()
        .chain([&host_tmp.path().to_owned(), &store.path().join("blob")])
        .map(|m| {
            format!(
                "if cat {} 2>/dev/null; then echo VISIBLE {}; fi\n",
                m.display(),
                m.display()
            )
        })
        .collect::<String>()
        + "ls -A /home /root; ls -A /tmp | wc -l\n";
    std::fs::write(job.dir.path().join("job.sh"), script).unwrap();
    job.spec.root = RootFs::Host {
        exclude: vec![store.path().to_owned()],
    };
    let out = job.run_ok();
    for marker in &markers {
        std::fs::remove_file(marker).unwrap();
    }
    assert!(!out.contains("VISIBLE"), "{out}");
    assert_eq!(out, "/home:\n\n/root:\n0\n");
}

#[test]
fn no_host_environment_fixed_hostname_fresh_tmp_read_only_host() {
    let _serial = serial();
    let mut job = Job::new(
        "env | sort; hostname; cat /proc/sys/kernel/hostname
         echo scratch > /tmp/f && cat /tmp/f
         for p in /etc/kiln-probe /usr/kiln-probe /var/kiln-probe /kiln-probe; do
           touch $p 2>/dev/null && echo WROTE $p
         done
         test -c /dev/null && test -c /dev/urandom && head -c 4 /dev/zero | wc -c
         echo ok",
    );
    job.spec.env.push(("LANG".into(), "C.UTF-8".into()));
    let out = job.run_ok();
    assert_eq!(
        out,
        "HOME=/work\nLANG=C.UTF-8\nPATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin\nPWD=/work\nkiln\nkiln\nscratch\n4\nok\n"
    );
}

/// A TCP server on the host's loopback; returns whether a job connected.
fn loopback_probe(network: bool) -> (SandboxOutcome, bool) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let mut job = Job::new(&format!(
        "bash -c 'echo hello > /dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo connected"
    ));
    job.spec.network = network;
    let (outcome, stdout, _) = job.run();
    let mut connected = false;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok((mut stream, _)) = listener.accept() {
            stream.set_nonblocking(false).unwrap();
            let mut got = String::new();
            stream.read_to_string(&mut got).unwrap();
            connected = got == "hello\n";
            break;
        }
        if !network {
            break; // the job has ended: nothing can still be connecting
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(connected, stdout == "connected\n", "{stdout}");
    (outcome, connected)
}

#[test]
fn the_job_cannot_reach_the_hosts_loopback() {
    let _serial = serial();
    let (outcome, connected) = loopback_probe(false);
    assert_eq!(outcome, SandboxOutcome::Exited { code: 1 });
    assert!(!connected);
    // Its own loopback is up.
    let out =
        Job::new("cat /sys/class/net/lo/operstate 2>/dev/null; grep -c . /proc/net/dev").run_ok();
    assert_eq!(out, "3\n", "only the two header lines and lo: {out}");
}

#[test]
fn with_network_the_job_reaches_the_hosts_loopback() {
    let _serial = serial();
    let (outcome, connected) = loopback_probe(true);
    assert_eq!(outcome, SandboxOutcome::Exited { code: 0 });
    assert!(connected);
}

fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

#[test]
fn a_killed_sandbox_leaves_no_process_and_no_mount() {
    let _serial = serial();
    let before = mountinfo();
    let job = Job::new("sleep 987651 & sleep 987652 & touch started; sleep 987653");
    let run = job.prepare();
    let mut child = run
        .command(Path::new(HELPER))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !job.upper().join("started").exists() {
        assert!(Instant::now() < deadline, "the job did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    while processes_with("98765").len() < 3 {
        assert!(Instant::now() < deadline, "the three sleeps did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        mountinfo(),
        before,
        "no sandbox mount is visible on the host, even during the run"
    );
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        run.outcome(status),
        SandboxOutcome::Aborted {
            signal: Some(9),
            code: None
        }
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with("98765").is_empty() {
        assert!(
            Instant::now() < deadline,
            "job processes survived: {:?}",
            processes_with("98765")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(mountinfo(), before);
    // Nothing holds the overlay's directories any more.
    std::fs::remove_dir_all(job.upper()).unwrap();
}

#[test]
fn a_terminated_sandbox_takes_its_jobs_down() {
    let _serial = serial();
    let job = Job::new("touch started; sleep 987661");
    let run = job.prepare();
    let mut child = run.command(Path::new(HELPER)).spawn().unwrap();
    while !job.upper().join("started").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        run.outcome(status),
        SandboxOutcome::Aborted {
            signal: Some(15),
            code: None
        }
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with("987661").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the job survived SIGTERM of its sandbox"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn setup_failure(outcome: &SandboxOutcome) -> &str {
    match outcome {
        SandboxOutcome::SetupFailed { reason } => reason,
        other => panic!("expected a setup failure, got {other:?}"),
    }
}

#[test]
fn setup_failures_come_back_as_such() {
    let _serial = serial();
    // A missing image directory.
    let mut job = Job::new("true");
    let missing = job.dir.path().join("no-such-image");
    job.spec.root = RootFs::Image {
        layers: vec![missing.clone()],
    };
    let (outcome, _, stderr) = job.run();
    let reason = setup_failure(&outcome);
    assert!(
        reason.starts_with(&format!("image layer {} does not exist", missing.display())),
        "{reason}"
    );
    assert!(
        stderr.contains("kiln sandbox: setup failed: image layer"),
        "{stderr}"
    );

    // A missing workspace layer.
    let mut job = Job::new("true");
    job.spec
        .workspace
        .lower
        .push(job.dir.path().join("no-such-layer"));
    let reason = setup_failure(&job.run().0).to_owned();
    assert!(reason.starts_with("workspace layer "), "{reason}");

    // A missing script.
    let job = Job::new("true");
    std::fs::remove_file(job.dir.path().join("job.sh")).unwrap();
    let reason = setup_failure(&job.run().0).to_owned();
    assert!(
        reason.starts_with("cannot read the job script "),
        "{reason}"
    );

    // A bad workspace path: refused by `prepare`, and by the helper when a
    // spec gets to it anyway.
    let mut job = Job::new("true");
    job.spec.workspace.path = "relative/work".into();
    let err = SandboxRun::prepare(&job.spec, &job.dir.path().join("run")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad workspace path relative/work: must be absolute"
    );
    let mut good = job.spec.clone();
    good.workspace.path = "/work".into();
    let run = SandboxRun::prepare(&good, &job.dir.path().join("run")).unwrap();
    std::fs::write(run.spec_path(), serde_json::to_vec(&job.spec).unwrap()).unwrap();
    let status = run
        .command(Path::new(HELPER))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        run.outcome(status),
        SandboxOutcome::SetupFailed {
            reason: "bad workspace path relative/work: must be absolute".into()
        }
    );
    assert_eq!(status.code(), Some(kiln::sandbox::EXIT_SETUP_FAILED));

    // An image without /bin/sh: the script cannot be executed.
    let mut job = Job::new("true");
    let image = job.dir.path().join("empty-image");
    std::fs::create_dir(&image).unwrap();
    job.spec.root = RootFs::Image {
        layers: vec![image],
    };
    let reason = setup_failure(&job.run().0).to_owned();
    assert_eq!(
        reason,
        "cannot exec /bin/sh in the sandbox: ENOENT: No such file or directory"
    );

    // A job that exits 125 or 127 itself is not a setup failure.
    assert_eq!(
        Job::new("exit 125").run().0,
        SandboxOutcome::Exited { code: 125 }
    );
    assert_eq!(
        Job::new("no-such-command").run().0,
        SandboxOutcome::Exited { code: 127 }
    );
}

/// A minimal image: the host's `/bin/sh` and the libraries `ldd` lists.
fn shell_image(dir: &Path) {
    let copy = |from: &Path| {
        let to = dir.join(from.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    let shell = std::fs::canonicalize("/bin/sh").unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(&shell, dir.join("bin/sh")).unwrap();
    let ldd = std::process::Command::new("ldd")
        .arg(&shell)
        .output()
        .unwrap();
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') {
            copy(Path::new(word));
        }
    }
}

#[test]
fn an_image_root_is_its_layers_read_only() {
    let _serial = serial();
    let mut job = Job::new(
        "read -r line < /etc/kiln-image; echo \"$line\"
         read -r line < /etc/base-only; echo \"$line\"
         echo 2>/dev/null >/etc/x || echo read-only
         set -- /tmp/* /home/*; echo \"$1 $2\"
         echo w > /tmp/t && read -r t < /tmp/t && echo tmp-$t",
    );
    let base = job.dir.path().join("image-base");
    shell_image(&base);
    std::fs::create_dir_all(base.join("etc")).unwrap();
    std::fs::write(base.join("etc/kiln-image"), "base layer\n").unwrap();
    std::fs::write(base.join("etc/base-only"), "from base\n").unwrap();
    let top = job.dir.path().join("image-top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("etc/kiln-image"), "top layer\n").unwrap();
    job.spec.root = RootFs::Image {
        layers: vec![top, base],
    };
    job.spec.workspace.path = "/home/build".into();
    assert_eq!(
        job.run_ok(),
        "top layer\nfrom base\nread-only\n/tmp/* /home/build\ntmp-w\n"
    );
}

fn machine_has_cgroup_controllers() -> bool {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers");
    match v2 {
        Ok(controllers) => ["memory", "pids"]
            .iter()
            .all(|c| controllers.split_whitespace().any(|x| x == *c)),
        Err(_) => ["memory", "pids"].iter().all(|c| {
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join("cgroup.procs")
                .exists()
        }),
    }
}

#[test]
fn memory_and_pids_limits_apply_or_fail_clearly() {
    let _serial = serial();
    let mut job = Job::new(
        "grep -E ':(pids|memory):' /proc/self/cgroup
         for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait; echo unreachable",
    );
    job.spec.limits.pids = Some(4);
    job.spec.limits.memory_bytes = Some(64 << 20);
    let (outcome, stdout, stderr) = job.run();
    if !machine_has_cgroup_controllers() || !nix::unistd::geteuid().is_root() {
        let reason = setup_failure(&outcome);
        assert!(reason.starts_with("cgroup limit"), "{reason}");
        return;
    }
    // dash gives up when fork fails: the pids limit bites.
    assert_eq!(
        outcome,
        SandboxOutcome::Exited { code: 2 },
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("Cannot fork"), "{stderr}");
    assert!(!stdout.contains("unreachable"));
    // A cgroup namespace rooted at the job's own cgroup: it sees `/` only.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines.iter().all(|line| line.ends_with(":/")), "{stdout}");
}

#[test]
fn an_unprivileged_caller_gets_a_user_namespace() {
    use std::os::unix::process::CommandExt;
    let _serial = serial();
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches to `nobody`, which needs root: run the suite as root, as CI does"
    );
    let job = Job::with_layers(
        "id -u; id -g; cat a; rm a; echo new > b; hostname",
        &[&[("a", "lower\n")]],
    );
    let nobody = nix::unistd::Uid::from_raw(65534);
    let nogroup = nix::unistd::Gid::from_raw(65534);
    for entry in walk(job.dir.path()) {
        nix::unistd::chown(&entry, Some(nobody), Some(nogroup)).unwrap();
    }
    let run = job.prepare();
    nix::unistd::chown(run.spec_path(), Some(nobody), Some(nogroup)).unwrap();
    let output = run
        .command(Path::new(HELPER))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        run.outcome(output.status),
        SandboxOutcome::Exited { code: 0 },
        "{stdout}\n{stderr}"
    );
    assert_eq!(stdout, "0\n0\nlower\nkiln\n", "mapped to root inside");
    let whiteout = std::fs::symlink_metadata(job.upper().join("a")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert_eq!(
        whiteout.uid(),
        65534,
        "outside, the job's files belong to the caller"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_owned()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(walk(&path));
        } else {
            all.push(path);
        }
    }
    all
}

#[test]
fn a_killed_sandbox_with_limits_leaves_no_cgroup() {
    let _serial = serial();
    assert!(
        machine_has_cgroup_controllers() && nix::unistd::geteuid().is_root(),
        "needs root and the memory and pids cgroup controllers (CI has both)"
    );
    let mut job = Job::new("touch started; sleep 987671");
    job.spec.limits.pids = Some(16);
    let run = job.prepare();
    let mut child = run.command(Path::new(HELPER)).spawn().unwrap();
    let helper_pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !job.upper().join("started").exists() {
        assert!(Instant::now() < deadline, "the job did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let cgroup_dirs = || -> Vec<PathBuf> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let mut candidates = vec![PathBuf::from(format!("/sys/fs/cgroup/kiln/{helper_pid}"))];
        for line in own.lines() {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (
                fields.next().unwrap(),
                fields.next().unwrap(),
                fields.next().unwrap(),
            );
            if controllers == "pids" {
                candidates.push(PathBuf::from(format!(
                    "/sys/fs/cgroup/pids{}/kiln/{helper_pid}",
                    path.trim_end_matches('/')
                )));
            }
        }
        candidates.into_iter().filter(|d| d.is_dir()).collect()
    };
    assert_eq!(cgroup_dirs().len(), 1, "the job runs in its cgroup");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with("987671").is_empty() {
        assert!(Instant::now() < deadline, "the job survived");
        std::thread::sleep(Duration::from_millis(5));
    }
    run.clean_up_after_kill(helper_pid);
    assert_eq!(cgroup_dirs(), Vec::<PathBuf>::new());
}
