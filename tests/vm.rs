//! Real QEMU microVMs under whatever accelerator this machine really runs
//! (TCG where KVM guests hang). Boots are expensive: the checks are grouped
//! into few VM runs, and the tests take turns (one VM at a time).

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln::vm::{Accel, KernelChoice, Phase, VmJob, VmOutcome, VmRun, run_job};

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `test` on its own runtime while no other VM test runs.
fn one_vm_at_a_time<F: std::future::Future<Output = ()>>(test: F) {
    let _turn = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Runtime::new().unwrap().block_on(test);
}

/// TCG on a loaded two-core machine: boots take seconds to tens of seconds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

const APPLETS: &[&str] = &[
    "cat", "echo", "env", "hostname", "ls", "mkdir", "rm", "sleep", "sort", "test", "tr", "wc",
    "cut", "sh", "ln", "chmod",
];

/// A tiny image: static busybox and its applets.
fn busybox_image(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    std::fs::create_dir_all(root.join("root")).unwrap();
}

fn job(image: &Path, script: &str) -> VmJob {
    let mut job = VmJob::new(
        image.to_path_buf(),
        "test-busybox-image-1".to_owned(),
        script.to_owned(),
    );
    job.timeouts.boot = BOOT_TIMEOUT;
    job.timeouts.job = Duration::from_secs(120);
    job.env.insert("PATH".into(), "/bin".into());
    job.env.insert("HOME".into(), "/root".into());
    job.env
        .insert("GREETING".into(), "it's a 'quoted' $value".into());
    job
}

async fn run(job: &VmJob, cache: &Path, upper: &Path) -> (VmRun, String) {
    let mut log = Vec::new();
    let result = run_job(job, cache, upper, &mut log, std::future::pending()).await;
    let log = String::from_utf8_lossy(&log).into_owned();
    match result {
        Ok(run) => (run, log),
        Err(error) => panic!("run_job failed: {error}\nlog:\n{log}"),
    }
}

fn kiln_vm_dirs() -> BTreeSet<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("kiln-vm-"))
        .map(|entry| entry.path())
        .collect()
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        if !entry
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

fn assert_no_vm_left(before: &BTreeSet<PathBuf>) {
    let leaked: Vec<_> = kiln_vm_dirs().difference(before).cloned().collect();
    assert!(
        leaked.is_empty(),
        "private VM directories left behind: {leaked:?}"
    );
    for dir in kiln_vm_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(processes_mentioning(&name).is_empty());
    }
    let ours: Vec<String> = processes_mentioning("qmp.sock")
        .into_iter()
        .filter(|cmdline| cmdline.contains("kiln-vm-"))
        .collect();
    assert!(ours.is_empty(), "QEMU still running: {ours:?}");
}

/// The `trusted.overlay.opaque` attribute of `dir`, if any.
fn opaque_marker(dir: &Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut value = [0u8; 16];
    // SAFETY: NUL-terminated strings and a buffer whose length is passed.
    let length = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    (length >= 0).then(|| value[..length as usize].to_vec())
}

#[test]
fn layers_env_hostname_whiteouts_and_exit_codes() {
    one_vm_at_a_time(async {
        let dir = tempfile::tempdir().unwrap();
        let (image, cache, base) = (
            dir.path().join("image"),
            dir.path().join("cache"),
            dir.path().join("base"),
        );
        busybox_image(&image);
        std::fs::create_dir_all(base.join("sub")).unwrap();
        std::fs::write(base.join("keep.txt"), "kept from the base layer\n").unwrap();
        std::fs::write(base.join("gone.txt"), "deleted by the first job\n").unwrap();
        std::fs::write(base.join("sub/deep.txt"), "deep\n").unwrap();
        std::fs::create_dir_all(base.join("old/inner")).unwrap();
        std::fs::write(base.join("old/inner/file"), "old\n").unwrap();
        std::fs::create_dir_all(base.join("rebuilt")).unwrap();
        std::fs::write(base.join("rebuilt/stale.txt"), "stale\n").unwrap();
        std::fs::create_dir_all(base.join("read-only")).unwrap();
        std::fs::write(base.join("read-only/file"), "from a read-only dir\n").unwrap();
        std::fs::set_permissions(
            base.join("read-only"),
            std::fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        let before = kiln_vm_dirs();
        let accel_from_env = std::env::var_os("KILN_QEMU_ACCEL").is_some();

        // First job: writes, deletes, reports its environment and hostname.
        let mut first = job(
            &image,
            "echo made-in-vm > made.txt\nln made.txt hard-link.txt\nln -s made.txt soft-link\n\
             echo '#!/bin/sh' > tool.sh\nchmod 750 tool.sh\nrm gone.txt\nrm -r old\nrm -r rebuilt\nmkdir rebuilt\necho fresh > rebuilt/new.txt\nenv | sort > env.txt\nhostname > host.txt\n\
             ls -A /tmp | wc -l > tmp-count.txt\npwd > pwd.txt\ncat keep.txt\necho to-stderr >&2\n",
        );
        first.lower_dirs = vec![base.clone()];
        first.hostname = "kiln-test".into();
        let first_upper = dir.path().join("first-upper");
        let (run1, log1) = run(&first, &cache, &first_upper).await;
        assert_eq!(
            run1.outcome,
            VmOutcome::Exited {
                exit_code: 0,
                upper_dir: first_upper.clone()
            },
            "log:\n{log1}"
        );
        assert!(log1.lines().next().unwrap().contains("accel="), "{log1}");
        assert!(log1.contains("kept from the base layer\n"), "{log1}");
        assert!(log1.contains("to-stderr\n"), "{log1}");
        assert!(
            !log1.contains("Linux version"),
            "kernel noise in the job log:\n{log1}"
        );

        let read = |name: &str| std::fs::read_to_string(first_upper.join(name)).unwrap();
        assert_eq!(read("made.txt"), "made-in-vm\n");
        assert_eq!(read("hard-link.txt"), "made-in-vm\n");
        assert_eq!(
            std::fs::read_link(first_upper.join("soft-link")).unwrap(),
            PathBuf::from("made.txt")
        );
        let tool = std::fs::metadata(first_upper.join("tool.sh")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o777, 0o750);
        assert_eq!(read("host.txt"), "kiln-test\n");
        assert_eq!(read("tmp-count.txt"), "0\n");
        assert_eq!(read("pwd.txt"), "/work\n");
        let env = read("env.txt");
        for expected in ["PATH=/bin", "HOME=/root", "GREETING=it's a 'quoted' $value"] {
            assert!(
                env.lines().any(|line| line == expected),
                "{expected} missing from:\n{env}"
            );
        }
        // Only the job's variables and those the shell itself sets.
        for line in env.lines() {
            let name = line.split('=').next().unwrap();
            assert!(
                ["PATH", "HOME", "GREETING", "PWD", "SHLVL", "OLDPWD", "_"].contains(&name),
                "unexpected variable {line}"
            );
        }
        let whiteout = std::fs::symlink_metadata(first_upper.join("gone.txt")).unwrap();
        assert!(
            whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
            "gone.txt is no whiteout"
        );
        let whiteout = std::fs::symlink_metadata(first_upper.join("old")).unwrap();
        assert!(
            whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
            "a deleted directory is a whiteout too"
        );
        assert_eq!(
            opaque_marker(&first_upper.join("rebuilt")),
            Some(b"y".to_vec())
        );
        assert_eq!(opaque_marker(&first_upper.join("sub")), None);
        assert!(
            !first_upper.join("keep.txt").exists(),
            "an untouched lower file is no part of the upper layer"
        );

        if !accel_from_env {
            assert_eq!(run1.accel.accel, Accel::Tcg, "{:?}", run1.accel);
        }
        let timings = run1.timings;
        eprintln!("first job: {timings:?}");

        // Second job: sees the first job's layer above the base, deletion included.
        let mut second = job(
            &image,
            "cat made.txt\ntest ! -e gone.txt && echo gone-is-gone\ncat sub/deep.txt\ntest ! -e old && echo old-is-gone\ncat read-only/file\nls -1 rebuilt\necho bye > bye.txt\nexit 7\n",
        );
        second.lower_dirs = vec![base.clone(), first_upper.clone()];
        let second_upper = dir.path().join("second-upper");
        let (run2, log2) = run(&second, &cache, &second_upper).await;
        assert_eq!(
            run2.outcome,
            VmOutcome::Exited {
                exit_code: 7,
                upper_dir: second_upper.clone()
            },
            "{log2}"
        );
        assert!(
            log2.contains(
                "made-in-vm\ngone-is-gone\ndeep\nold-is-gone\nfrom a read-only dir\nnew.txt\n"
            ),
            "{log2}"
        );
        assert_eq!(
            std::fs::read_to_string(second_upper.join("bye.txt")).unwrap(),
            "bye\n"
        );
        if !accel_from_env && Path::new("/dev/kvm").exists() {
            assert!(
                run2.accel.reason.starts_with("remembered"),
                "{:?}",
                run2.accel
            );
            assert_eq!(std::fs::read_dir(cache.join("accel")).unwrap().count(), 1);
        }
        // One initramfs and one image disk, built once for both jobs.
        let count = |dir: &str, suffix: &str| {
            std::fs::read_dir(cache.join(dir))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(suffix)
                })
                .count()
        };
        assert_eq!(count("initramfs", ".cpio.gz"), 1);
        assert_eq!(count("images", ".ext4"), 1);
        assert_no_vm_left(&before);
    });
}

#[test]
fn a_job_timeout_leaves_no_process_and_no_temp_dir() {
    one_vm_at_a_time(async {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        busybox_image(&image);
        let before = kiln_vm_dirs();
        let mut job = job(&image, "echo started\nsleep 600\n");
        job.timeouts.job = Duration::from_secs(2);
        job.accel = Accel::Tcg;
        let (run, log) = run(&job, &dir.path().join("cache"), &dir.path().join("upper")).await;
        assert_eq!(
            run.outcome,
            VmOutcome::TimedOut { phase: Phase::Job },
            "{log}"
        );
        assert!(log.contains("started\n"), "{log}");
        assert!(log.contains("timed out"), "{log}");
        assert!(!dir.path().join("upper").exists());
        assert_no_vm_left(&before);
    });
}

#[test]
fn an_unbootable_kernel_fails_cleanly_within_the_boot_timeout() {
    one_vm_at_a_time(async {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        busybox_image(&image);
        let kernel = dir.path().join("vmlinuz-garbage");
        std::fs::write(&kernel, vec![0x5a; 64 * 1024]).unwrap();
        let before = kiln_vm_dirs();
        let mut job = job(&image, "echo never\n");
        job.kernel = KernelChoice::Path(kernel);
        job.accel = Accel::Tcg;
        job.timeouts.boot = Duration::from_secs(20);
        let started = Instant::now();
        let (run, log) = run(&job, &dir.path().join("cache"), &dir.path().join("upper")).await;
        eprintln!("{log}");
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                &run.outcome,
                VmOutcome::Failed { .. } | VmOutcome::TimedOut { phase: Phase::Boot }
            ),
            "{:?}\n{log}",
            run.outcome
        );
        assert!(!log.contains("never"), "{log}");
        assert!(log.contains("kiln: "), "{log}");
        assert_no_vm_left(&before);
    });
}

#[test]
fn a_kill_ends_the_vm() {
    one_vm_at_a_time(async {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        busybox_image(&image);
        let before = kiln_vm_dirs();
        let mut job = job(&image, "echo never\n");
        job.accel = Accel::Tcg;
        let mut log = Vec::new();
        let cancel = tokio::time::sleep(Duration::from_millis(500));
        let run = run_job(
            &job,
            &dir.path().join("cache"),
            &dir.path().join("upper"),
            &mut log,
            cancel,
        )
        .await
        .unwrap();
        let log = String::from_utf8_lossy(&log);
        assert_eq!(run.outcome, VmOutcome::Killed, "{log}");
        assert!(log.contains("kiln: killed"), "{log}");
        assert_no_vm_left(&before);
    });
}

async fn setup_error(job: &VmJob, dir: &Path) -> (String, String) {
    let mut log = Vec::new();
    let result = run_job(
        job,
        &dir.join("cache"),
        &dir.join("upper"),
        &mut log,
        std::future::pending(),
    )
    .await;
    let error = result.expect_err("the job cannot be set up").to_string();
    (error, String::from_utf8_lossy(&log).into_owned())
}

#[test]
fn setup_failures_are_errors_in_the_log() {
    // Under the VM lock: it changes PATH, which the other tests read.
    one_vm_at_a_time(async {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        busybox_image(&image);

        let mut no_kernel = job(&image, "true\n");
        no_kernel.kernel = KernelChoice::Path(dir.path().join("no-such-kernel"));
        let (error, log) = setup_error(&no_kernel, dir.path()).await;
        assert!(error.contains("no-such-kernel"), "{error}");
        assert!(log.contains("no-such-kernel"), "{log}");

        let no_image = job(&dir.path().join("no-such-image"), "true\n");
        let (error, log) = setup_error(&no_image, dir.path()).await;
        assert!(
            error.contains("cannot build a disk image") && error.contains("no-such-image"),
            "{error}"
        );
        assert!(log.contains("no-such-image"), "{log}");

        let path = std::env::var_os("PATH").unwrap_or_default();
        // SAFETY: no other thread of this test binary reads the environment
        // while the VM lock is held (every other test takes it first).
        unsafe { std::env::set_var("PATH", dir.path()) };
        let (error, log) = setup_error(&job(&image, "true\n"), dir.path()).await;
        // SAFETY: as above.
        unsafe { std::env::set_var("PATH", path) };
        assert!(error.contains("qemu-system-x86_64 not found"), "{error}");
        assert!(log.contains("apt-get install qemu-system-x86"), "{log}");
    });
}

#[test]
fn a_guest_panic_is_a_clear_failure() {
    one_vm_at_a_time(async {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        busybox_image(&image);
        let before = kiln_vm_dirs();
        let mut job = job(
            &image,
            "echo before-the-panic\necho c > /proc/sysrq-trigger\nsleep 600\n",
        );
        job.accel = Accel::Tcg;
        let (run, log) = run(&job, &dir.path().join("cache"), &dir.path().join("upper")).await;
        eprintln!("{log}");
        let VmOutcome::Failed { reason } = &run.outcome else {
            panic!("{:?}\n{log}", run.outcome);
        };
        assert!(reason.contains("panic"), "{reason}");
        assert!(log.contains("before-the-panic\n"), "{log}");
        assert!(
            log.contains("Kernel panic"),
            "the panic is in the job log:\n{log}"
        );
        assert_no_vm_left(&before);
    });
}

#[test]
fn a_boot_timeout_is_timed_out_and_shows_the_console() {
    one_vm_at_a_time(async {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        busybox_image(&image);
        let before = kiln_vm_dirs();
        let mut job = job(&image, "echo never\n");
        job.accel = Accel::Tcg;
        // A TCG boot takes seconds: this deadline strikes mid-boot.
        job.timeouts.boot = Duration::from_millis(700);
        let (run, log) = run(&job, &dir.path().join("cache"), &dir.path().join("upper")).await;
        assert_eq!(
            run.outcome,
            VmOutcome::TimedOut { phase: Phase::Boot },
            "{log}"
        );
        assert!(log.contains("did not start the job within"), "{log}");
        assert!(!log.contains("never"), "{log}");
        assert_no_vm_left(&before);
    });
}

#[test]
fn the_accel_variable_overrides_auto_without_a_probe() {
    // Under the VM lock: it changes the environment, which the other tests read.
    one_vm_at_a_time(async {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kiln::vm::Kernel::resolve(&KernelChoice::Default).unwrap();
        let resolve = |requested| {
            kiln::vm::resolve_accel(
                requested,
                Path::new("qemu-system-x86_64"),
                &kernel,
                &kernel.path,
                Path::new("unused-initramfs"),
                dir.path(),
            )
        };
        let previous = std::env::var_os(kiln::vm::ACCEL_ENV);
        // SAFETY: every other test of this binary waits for the VM lock
        // before it reads the environment.
        unsafe { std::env::set_var(kiln::vm::ACCEL_ENV, "tcg") };
        let chosen = resolve(Accel::Auto).await.unwrap();
        assert_eq!(chosen.accel, Accel::Tcg);
        assert!(chosen.reason.contains("KILN_QEMU_ACCEL=tcg"), "{chosen:?}");
        // An explicit accelerator in the job wins over the variable.
        assert_eq!(resolve(Accel::Kvm).await.unwrap().accel, Accel::Kvm);
        // SAFETY: as above.
        unsafe { std::env::set_var(kiln::vm::ACCEL_ENV, "fast") };
        let error = resolve(Accel::Auto).await.unwrap_err().to_string();
        // SAFETY: as above.
        unsafe {
            match previous {
                Some(value) => std::env::set_var(kiln::vm::ACCEL_ENV, value),
                None => std::env::remove_var(kiln::vm::ACCEL_ENV),
            }
        }
        assert!(error.contains("KILN_QEMU_ACCEL"), "{error}");
        assert!(!dir.path().join("accel").exists(), "no probe, no verdict");
    });
}
