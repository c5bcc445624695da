//! A hostile job cannot get out of the container sandbox (issue 9, design
//! §10): each escape found on the old sandbox, tried as a real job in the
//! real sandbox for a root caller and for a non-root caller (`nobody`, which
//! gets a user namespace), next to a control that runs the same probe
//! outside the sandbox (on the host, or in a plain `unshare` namespace) and
//! succeeds there, so a probe that is broken cannot pass for a blocked
//! escape. Needs root (to switch to `nobody`); the tests run one at a time.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use kiln::sandbox::{RootFs, SandboxOutcome, SandboxRun, SandboxSpec, WorkspaceSpec};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const HELPER: &str = env!("CARGO_BIN_EXE_kiln");
const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
const NOBODY: u32 = 65534;

/// Defines `r NAME CMD...`: runs CMD quietly and prints `NAME EXIT-CODE`.
const PRELUDE: &str = "r() { n=$1; shift; \"$@\" >/dev/null 2>&1; echo \"$n $?\"; }\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Root,
    Nobody,
}

const CALLERS: [Caller; 2] = [Caller::Root, Caller::Nobody];

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the escape tests run the sandbox as root and as `nobody`: run them as root"
    );
}

/// A directory below a path the host view shows (`/var/lib`), readable by
/// `nobody`, removed at the end: the host-side target of the probes.
fn shown_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kiln-escape-")
        .tempdir_in("/var/lib")
        .unwrap();
    chmod(dir.path(), 0o755);
    dir
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_tree(dir: &Path) {
    let nobody = Some(nix::unistd::Uid::from_raw(NOBODY));
    let nogroup = Some(nix::unistd::Gid::from_raw(NOBODY));
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        nix::unistd::chown(&path, nobody, nogroup).unwrap();
        if path.is_dir() && !path.is_symlink() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
}

struct Job {
    dir: tempfile::TempDir,
    spec: SandboxSpec,
}

impl Job {
    /// `layer`: files of the workspace's one lower layer, (name, bytes, mode).
    fn new(script: &str, layer: &[(&str, &[u8], u32)]) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("layer");
        for sub in ["layer", "upper", "work", "run"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        for (name, bytes, mode) in layer {
            std::fs::write(lower.join(name), bytes).unwrap();
            chmod(&lower.join(name), *mode);
        }
        std::fs::write(dir.path().join("job.sh"), format!("{PRELUDE}{script}")).unwrap();
        let mut spec = SandboxSpec::new(
            RootFs::Host { exclude: vec![] },
            WorkspaceSpec {
                path: "/work".into(),
                lower: vec![lower],
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

    fn run(&self, caller: Caller) -> (SandboxOutcome, String, String) {
        let run = SandboxRun::prepare(&self.spec, &self.dir.path().join("run")).unwrap();
        let mut command = run.command(Path::new(HELPER));
        if caller == Caller::Nobody {
            chown_tree(self.dir.path());
            command.uid(NOBODY).gid(NOBODY);
        }
        let output = command.output().unwrap();
        (
            run.outcome(output.status),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs the job, which must exit 0; returns its stdout.
    fn run_ok(&self, caller: Caller) -> String {
        let (outcome, stdout, stderr) = self.run(caller);
        assert_eq!(
            outcome,
            SandboxOutcome::Exited { code: 0 },
            "{caller:?}: stdout:\n{stdout}\nstderr:\n{stderr}"
        );
        stdout
    }
}

/// Runs `script` (after the prelude) in the sandbox as `caller`.
fn in_sandbox(caller: Caller, script: &str) -> BTreeMap<String, String> {
    results(&Job::new(script, &[]).run_ok(caller))
}

/// Runs `script` (after the prelude) on the host as `caller`: the control.
fn on_host(caller: Caller, script: &str) -> BTreeMap<String, String> {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(format!("{PRELUDE}{script}"))
        .current_dir("/")
        .env_clear()
        .env("PATH", PATH);
    if caller == Caller::Nobody {
        command.uid(NOBODY).gid(NOBODY);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "control as {caller:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    results(&stdout)
}

/// `NAME VALUE` lines.
fn results(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
        .collect()
}

#[track_caller]
fn expect(results: &BTreeMap<String, String>, name: &str, value: &str, context: &str) {
    assert_eq!(
        results.get(name).map(String::as_str),
        Some(value),
        "{context}: `{name}` in {results:#?}"
    );
}

#[track_caller]
fn expect_failed(results: &BTreeMap<String, String>, name: &str, context: &str) {
    let value = results
        .get(name)
        .unwrap_or_else(|| panic!("{context}: no `{name}` in {results:#?}"));
    assert_ne!(value, "0", "{context}: `{name}` succeeded: {results:#?}");
}

const STATUS_PROBE: &str =
    "for f in CapInh CapPrm CapEff CapBnd CapAmb NoNewPrivs Seccomp Seccomp_filters; do
    grep \"^$f:\" /proc/self/status | tr -d ':\\t' | sed \"s/^$f/$f /\"
done";

#[test]
fn the_job_has_a_bounded_capability_set_no_new_privs_and_seccomp() {
    require_root();
    let _serial = serial();
    let kept = format!("{:016x}", kiln::sandbox::kept_capability_mask());
    assert_eq!(kept, "00000000000404fb");
    for caller in CALLERS {
        let status = in_sandbox(caller, STATUS_PROBE);
        let context = format!("sandbox as {caller:?}");
        for field in ["CapPrm", "CapEff", "CapBnd"] {
            expect(&status, field, &kept, &context);
        }
        expect(&status, "CapInh", "0000000000000000", &context);
        expect(&status, "CapAmb", "0000000000000000", &context);
        expect(&status, "NoNewPrivs", "1", &context);
        expect(&status, "Seccomp", "2", &context);
        expect(&status, "Seccomp_filters", "3", &context);

        // Control: the same probe, in a user namespace made outside the
        // sandbox, sees a full capability set, no no_new_privs, no filter.
        let control = on_host(caller, &format!("unshare -r sh -c '{STATUS_PROBE}'"));
        let context = format!("control as {caller:?}");
        expect(&control, "CapEff", "000001ffffffffff", &context);
        expect(&control, "NoNewPrivs", "0", &context);
        expect(&control, "Seccomp", "0", &context);
    }
}

#[test]
fn masks_cannot_be_unmounted() {
    require_root();
    let _serial = serial();
    let shown = shown_dir();
    let secret = shown.path().join("secret");
    std::fs::write(&secret, "top secret\n").unwrap();
    chmod(&secret, 0o644);
    let secret = secret.display();
    let probe = format!(
        "r masked_empty test ! -s {secret}
         r umount umount {secret}
         r umount_lazy umount -l {secret}
         r read_secret grep -q 'top secret' {secret}"
    );
    for caller in CALLERS {
        let mut job = Job::new(&probe, &[]);
        job.spec.root = RootFs::Host {
            exclude: vec![PathBuf::from(secret.to_string())],
        };
        let results = results(&job.run_ok(caller));
        let context = format!("sandbox as {caller:?}");
        expect(&results, "masked_empty", "0", &context);
        expect_failed(&results, "umount", &context);
        expect_failed(&results, "umount_lazy", &context);
        expect_failed(&results, "read_secret", &context);

        // Control: a mask made the same way in a namespace of the caller's
        // own comes off with the same command, and the secret shows.
        let unshare = if caller == Caller::Root {
            "unshare -m"
        } else {
            "unshare -rm"
        };
        let control = on_host(
            caller,
            &format!(
                "{unshare} sh -c 'r() {{ n=$1; shift; \"$@\" >/dev/null 2>&1; echo \"$n $?\"; }}
                 mount --bind /dev/null {secret}
                 r masked_empty test ! -s {secret}
                 r umount umount {secret}
                 r read_secret grep -q \"top secret\" {secret}'"
            ),
        );
        let context = format!("control as {caller:?}");
        expect(&control, "masked_empty", "0", &context);
        expect(&control, "umount", "0", &context);
        expect(&control, "read_secret", "0", &context);
    }
}

#[test]
fn the_read_only_host_view_cannot_be_made_writable() {
    require_root();
    let _serial = serial();
    let shown = shown_dir();
    let dir = shown.path().display();
    let probe = format!(
        "r remount_bind mount -o remount,rw,bind {dir}
         r remount_root mount -o remount,rw /
         r remount_usr mount -o remount,rw,bind /usr
         r write touch {dir}/escaped"
    );
    for caller in CALLERS {
        let results = in_sandbox(caller, &probe);
        let context = format!("sandbox as {caller:?}");
        for name in ["remount_bind", "remount_root", "remount_usr", "write"] {
            expect_failed(&results, name, &context);
        }
        assert!(!shown.path().join("escaped").exists(), "{context}");

        // Control: a read-only bind made in a namespace of the caller's own
        // is made writable by the same command, and the write lands.
        let unshare = if caller == Caller::Root {
            "unshare -m"
        } else {
            "unshare -rm"
        };
        let target = shown.path().join(format!("control-{caller:?}"));
        std::fs::create_dir(&target).unwrap();
        if caller == Caller::Nobody {
            chown_tree(&target);
        }
        let target = target.display();
        let control = on_host(
            caller,
            &format!(
                "{unshare} sh -c 'r() {{ n=$1; shift; \"$@\" >/dev/null 2>&1; echo \"$n $?\"; }}
                 mount --bind {target} {target}
                 mount -o remount,ro,bind {target}
                 r read_only_first touch {target}/x
                 r remount_bind mount -o remount,rw,bind {target}
                 r write touch {target}/x'"
            ),
        );
        let context = format!("control as {caller:?}");
        expect_failed(&control, "read_only_first", &context);
        expect(&control, "remount_bind", "0", &context);
        expect(&control, "write", "0", &context);
    }
}

#[test]
fn no_new_mounts_not_even_in_a_new_user_namespace() {
    require_root();
    let _serial = serial();
    let probe = "mkdir -p /tmp/m
        r tmpfs mount -t tmpfs none /tmp/m
        r proc mount -t proc none /tmp/m
        r sysfs mount -t sysfs none /tmp/m
        r cgroup mount -t cgroup -o pids none /tmp/m
        r cgroup2 mount -t cgroup2 none /tmp/m
        r bind_host mount --bind /usr /tmp/m
        r userns_mount unshare -Urm mount -t tmpfs none /tmp/m
        r userns unshare -Ur true";
    for caller in CALLERS {
        let results = in_sandbox(caller, probe);
        let context = format!("sandbox as {caller:?}");
        for name in [
            "tmpfs",
            "proc",
            "sysfs",
            "cgroup",
            "cgroup2",
            "bind_host",
            "userns_mount",
            "userns",
        ] {
            expect_failed(&results, name, &context);
        }
    }
    // Controls: the same mounts in namespaces of the caller's own.
    let target = tempfile::tempdir().unwrap();
    chmod(target.path(), 0o777);
    let m = target.path().display();
    let root = on_host(
        Caller::Root,
        &format!(
            "unshare -m sh -c 'r() {{ n=$1; shift; \"$@\" >/dev/null 2>&1; echo \"$n $?\"; }}
             r tmpfs mount -t tmpfs none {m}; umount {m}
             r sysfs mount -t sysfs none {m}; umount {m}
             r cgroup mount -t cgroup -o pids none {m}; umount {m}
             r bind_host mount --bind /usr {m}; umount {m}'"
        ),
    );
    for name in ["tmpfs", "sysfs", "cgroup", "bind_host"] {
        expect(&root, name, "0", "control as root");
    }
    for caller in CALLERS {
        let control = on_host(
            caller,
            &format!(
                "r userns_mount unshare -Urm mount -t tmpfs none {m}
                 r userns unshare -Ur true"
            ),
        );
        expect(
            &control,
            "userns_mount",
            "0",
            &format!("control as {caller:?}"),
        );
        expect(&control, "userns", "0", &format!("control as {caller:?}"));
    }
}

#[test]
fn kernel_settings_are_read_only_and_kernel_files_masked() {
    require_root();
    let _serial = serial();
    let probe = "r domainname sh -c 'echo probe > /proc/sys/kernel/domainname'
        r core_pattern sh -c 'cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern'
        r sysrq sh -c 'echo > /proc/sysrq-trigger'
        r proc_sys_ro sh -c 'grep -q \" /proc/sys ro,\" /proc/self/mountinfo'
        for f in kcore kmsg keys timer_list sched_debug; do
            if [ -e /proc/$f ]; then echo \"size_$f $(head -c 1 /proc/$f 2>/dev/null | wc -c)\"; fi
        done";
    for caller in CALLERS {
        let results = in_sandbox(caller, probe);
        let context = format!("sandbox as {caller:?}");
        expect_failed(&results, "domainname", &context);
        expect_failed(&results, "core_pattern", &context);
        expect_failed(&results, "sysrq", &context);
        expect(&results, "proc_sys_ro", "0", &context);
        // Masked where this kernel has them (no /proc/kcore without
        // CONFIG_PROC_KCORE).
        for file in ["kcore", "kmsg", "keys", "timer_list", "sched_debug"] {
            if Path::new("/proc").join(file).exists() {
                expect(&results, &format!("size_{file}"), "0", &context);
            }
        }
    }
    // Control: in a UTS namespace of its own (harmless to the host) root
    // writes a kernel setting through the same /proc/sys file; and the host's
    // timer_list has something to hide.
    let control = on_host(
        Caller::Root,
        "r domainname unshare -u sh -c 'echo probe > /proc/sys/kernel/domainname'
         echo \"size_timer_list $(head -c 1 /proc/timer_list | wc -c)\"",
    );
    expect(&control, "domainname", "0", "control as root");
    expect(&control, "size_timer_list", "1", "control as root");
}

#[test]
fn the_kernel_log_cannot_be_read() {
    require_root();
    let _serial = serial();
    let probe = "r dmesg dmesg
        r kmsg sh -c 'timeout 2 head -c 1 /proc/kmsg | grep -q .'";
    for caller in CALLERS {
        let results = in_sandbox(caller, probe);
        let context = format!("sandbox as {caller:?}");
        expect_failed(&results, "dmesg", &context);
        expect_failed(&results, "kmsg", &context);
    }
    // Control: root reads the host's kernel log with the same tool. (Not
    // /proc/kmsg: reading it on the host would take messages from syslog.)
    let control = on_host(Caller::Root, "r dmesg sh -c 'dmesg | grep -q .'");
    expect(&control, "dmesg", "0", "control as root");
}

fn own_pids_cgroup() -> PathBuf {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::"))
        && Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        return Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    }
    let path = own
        .lines()
        .find_map(|l| {
            let mut fields = l.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers.split(',').any(|c| c == "pids").then_some(path)
        })
        .expect("a pids cgroup");
    Path::new("/sys/fs/cgroup/pids").join(path.trim_start_matches('/'))
}

#[test]
fn the_job_cannot_leave_its_cgroup() {
    require_root();
    let _serial = serial();
    let parent = own_pids_cgroup();
    let procs = parent.join("cgroup.procs");
    let probe = format!(
        "r sys_empty test -z \"$(ls -A /sys)\"
         r move_to_parent sh -c 'echo $$ > {procs}'
         r move_v1 sh -c 'echo $$ > /sys/fs/cgroup/pids/cgroup.procs'
         r move_v2 sh -c 'echo $$ > /sys/fs/cgroup/cgroup.procs'
         r mount_cgroup sh -c 'mkdir -p /tmp/c && mount -t cgroup -o pids none /tmp/c'
         r sys_write touch /sys/probe
         r own_cgroup_only sh -c '! grep -v \":/$\" /proc/self/cgroup'",
        procs = procs.display()
    );
    for caller in CALLERS {
        let mut job = Job::new(&probe, &[]);
        if caller == Caller::Root {
            // Limits need root; the job must stay in its limited cgroup.
            job.spec.limits.pids = Some(64);
            job.spec.limits.memory_bytes = Some(256 << 20);
        }
        let results = results(&job.run_ok(caller));
        let context = format!("sandbox as {caller:?}");
        expect(&results, "sys_empty", "0", &context);
        expect(&results, "own_cgroup_only", "0", &context);
        for name in [
            "move_to_parent",
            "move_v1",
            "move_v2",
            "mount_cgroup",
            "sys_write",
        ] {
            expect_failed(&results, name, &context);
        }
    }
    // Control: on the host, root moves a shell into the test's own pids
    // cgroup (where it already is: harmless) by the same write.
    let control = on_host(
        Caller::Root,
        &format!("r move_to_parent sh -c 'echo $$ > {}'", procs.display()),
    );
    expect(&control, "move_to_parent", "0", "control as root");
}

/// Compiles tests/escape_support/probe.c with the host's `cc`.
fn probe_binary(dir: &Path) -> Vec<u8> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/escape_support/probe.c");
    let binary = dir.join("probe");
    let status = Command::new("cc")
        .arg("-O")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("cc (gcc) must be installed for the escape probes");
    assert!(status.success(), "cc {} failed", source.display());
    std::fs::read(binary).unwrap()
}

#[test]
fn refused_system_calls_fail_with_eperm() {
    require_root();
    let _serial = serial();
    let build = tempfile::tempdir().unwrap();
    let probe = probe_binary(build.path());
    const EPERM: &str = "1";
    const ENOSYS: &str = "38";
    for caller in CALLERS {
        let job = Job::new("/work/probe init", &[("probe", &probe, 0o755)]);
        let results = results(&job.run_ok(caller));
        let context = format!("sandbox as {caller:?}");
        for name in [
            "init_module",
            "kexec_load",
            "syslog",
            "bpf",
            "setns",
            "unshare_user_mount",
            "ptrace_child",
            "ptrace_init",
        ] {
            expect(&results, name, EPERM, &context);
        }
        // glibc falls back to clone, whose flags the filter can read.
        expect(&results, "clone3", ENOSYS, &context);
    }

    // Control: the same program on the host reaches the kernel past where
    // the filter stops it (root: module and kexec calls get ENOSYS/EINVAL
    // on bad arguments, not EPERM; everyone: its own child can be traced,
    // a user namespace made, clone3 answered).
    let host_probe = build.path().join("probe");
    chmod(build.path(), 0o755);
    for caller in CALLERS {
        let control = on_host(caller, &host_probe.display().to_string());
        let context = format!("control as {caller:?}");
        expect(&control, "ptrace_child", "0", &context);
        expect(&control, "unshare_user_mount", "0", &context);
        expect(&control, "setns", "9", &context); // EBADF: past any filter
        assert_ne!(control["clone3"], ENOSYS, "{context}");
        if caller == Caller::Root {
            expect(&control, "syslog", "0", &context);
            for name in ["init_module", "kexec_load", "bpf"] {
                assert_ne!(control[name], EPERM, "{context}: {name}");
            }
        }
    }
}

#[test]
fn builds_still_build() {
    require_root();
    let _serial = serial();
    // What ordinary build steps do as root in a job: own files, modes,
    // compile, archive, symlinks, fifos, threads, a child process tree.
    let script = "set -e
        mkdir -p out && cd out
        printf 'int main(void){return 0;}\\n' > m.c
        cc -o m m.c && ./m
        touch f && chmod 4755 f && chown 0:0 f
        ln -s f link && mkfifo pipe && rm pipe
        tar cf ../out.tar . && tar tf ../out.tar >/dev/null
        (sleep 0.1 & wait)
        echo built";
    for caller in CALLERS {
        let job = Job::new(script, &[]);
        let stdout = job.run_ok(caller);
        assert!(stdout.ends_with("built\n"), "{caller:?}: {stdout}");
    }
}

#[test]
fn pid_1_is_out_of_reach() {
    require_root();
    let _serial = serial();
    // PID 1 is kiln's init, with capabilities the job lacks: its root,
    // environment and descriptors (the report pipe) stay closed, and it
    // ignores signals from inside its namespace.
    let probe = "r root ls /proc/1/root/
        r environ cat /proc/1/environ
        r fd readlink /proc/1/fd/0
        kill -9 1; r alive kill -0 1";
    for caller in CALLERS {
        let results = in_sandbox(caller, probe);
        let context = format!("sandbox as {caller:?}");
        for name in ["root", "environ", "fd"] {
            expect_failed(&results, name, &context);
        }
        expect(&results, "alive", "0", &context);
    }
    // Control: in a pid namespace of the caller's own, made without kiln,
    // the same reads of PID 1 succeed.
    for caller in CALLERS {
        let unshare = if caller == Caller::Root {
            "unshare -pf --mount-proc"
        } else {
            "unshare -rpf --mount-proc"
        };
        let control = on_host(
            caller,
            &format!(
                "{unshare} sh -c 'r() {{ n=$1; shift; \"$@\" >/dev/null 2>&1; echo \"$n $?\"; }}
                 r root ls /proc/1/root/
                 r environ cat /proc/1/environ
                 r fd readlink /proc/1/fd/0'"
            ),
        );
        for name in ["root", "environ", "fd"] {
            expect(&control, name, "0", &format!("control as {caller:?}"));
        }
    }
}
