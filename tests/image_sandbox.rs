//! An imported image really works as a job's root filesystem: a busybox
//! rootfs, packed by the real `tar`, imported, materialised and run in the
//! real sandbox.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use kiln::image::{self, ImportOptions, materialise, resolve};
use kiln::sandbox::{RootFs, SandboxOutcome, SandboxRun, SandboxSpec, WorkspaceSpec};
use kiln_store::Store;

const HELPER: &str = env!("CARGO_BIN_EXE_kiln");

/// A static busybox from Debian's busybox-static (scripts/test.sh installs it).
fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox-static is installed (scripts/test.sh)")
}

/// A rootfs with /bin/busybox and its applets as symlinks, packed as a
/// tar.zst by the `tar` CLI.
fn busybox_tarball(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::copy(busybox(), root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "ls", "cat", "echo", "test", "id", "wc", "uname", "touch",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(root.join("etc/os-release"), "ID=kiln-busybox-test\n").unwrap();
    let tarball = dir.join("busybox.tar.zst");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("--zstd")
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    tarball
}

fn run_job(dir: &Path, root: RootFs, script: &str) -> (SandboxOutcome, Output) {
    for sub in ["base", "upper", "work", "run"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::write(dir.join("base/input.txt"), "from the workspace\n").unwrap();
    fs::write(dir.join("job.sh"), script).unwrap();
    let mut spec = SandboxSpec::new(
        root,
        WorkspaceSpec {
            path: "/work".into(),
            lower: vec![dir.join("base")],
            upper: dir.join("upper"),
            work: dir.join("work"),
        },
        dir.join("job.sh"),
    );
    spec.env = vec![
        ("PATH".into(), "/bin".into()),
        ("HOME".into(), "/work".into()),
    ];
    let run = SandboxRun::prepare(&spec, &dir.join("run")).unwrap();
    let output = run.command(Path::new(HELPER)).output().unwrap();
    (run.outcome(output.status), output)
}

#[test]
fn an_imported_busybox_image_runs_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let tarball = busybox_tarball(dir.path());
    let mut store = Store::open(dir.path().join("store")).unwrap();
    image::import(&mut store, "busybox", &tarball, &ImportOptions::default()).unwrap();
    let image = resolve(&mut store, "busybox").unwrap();
    let cache = dir.path().join("images");
    let root = materialise(&store, &image, &cache).unwrap();
    assert!(matches!(&root, RootFs::Image { layers } if layers.len() == 1));

    let (outcome, output) = run_job(
        &dir.path().join("job"),
        root,
        "cat /etc/os-release\n\
         ls /bin | wc -l\n\
         test ! -e /usr/bin/dpkg && echo no-host-files\n\
         cat /work/input.txt\n\
         echo made > /work/output.txt\n\
         touch /bin/new 2>/dev/null || echo image-read-only\n",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        outcome,
        SandboxOutcome::Exited { code: 0 },
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout,
        "ID=kiln-busybox-test\n10\nno-host-files\nfrom the workspace\nimage-read-only\n"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("job/upper/output.txt")).unwrap(),
        "made\n"
    );
    // The cached image is untouched by the job.
    let cached = cache.join(image.digest().to_hex());
    assert!(!cached.join("bin/new").exists());
    assert!(
        !cached.join("work").exists() || fs::read_dir(cached.join("work")).unwrap().count() == 0
    );
    // The cache inside the store directory does not bother the store.
    drop(store);
    let fsck = std::process::Command::new(HELPER)
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["store", "fsck", "--repair"])
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{fsck:?}");
    assert!(
        String::from_utf8_lossy(&fsck.stdout).contains("clean"),
        "{fsck:?}"
    );
    assert!(cached.join("bin/busybox").exists());
}

#[test]
fn the_host_image_hides_secrets_and_the_store() {
    // A store below a directory the host view shows (not /tmp, which is
    // hidden anyway), so that hiding it is really the exclusion's doing.
    let store_parent = tempfile::tempdir_in("/var/lib")
        .expect("this test needs a writable /var/lib (run the suite as root, as CI does)");
    let store_dir = store_parent.path().join("store");
    let mut store = Store::open(&store_dir).unwrap();
    let image = resolve(&mut store, "host").unwrap();
    let root = materialise(&store, &image, &image::default_cache_dir(&store)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "test -s /etc/os-release && echo sees-the-host\n\
         test -e /etc/shadow && ! test -s /etc/shadow && echo shadow-empty\n\
         ls -A {store} | wc -l\n\
         ls -A /root /home | wc -l\n",
        store = store_dir.display()
    );
    let (outcome, output) = run_job(dir.path(), root, &script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        outcome,
        SandboxOutcome::Exited { code: 0 },
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // `ls -A /root /home` prints the two headers and a blank line.
    assert_eq!(stdout, "sees-the-host\nshadow-empty\n0\n3\n");
    // Outside the sandbox the store is not empty.
    assert!(fs::read_dir(&store_dir).unwrap().count() > 0);
}
