//! Collection never sweeps what a build uses, and crashes leave nothing
//! behind (issue 9, "Collection and crashes"): the real `kiln` binary, a
//! store in a temp dir, real namespaces, tmpfs, cgroups and processes (run
//! as root; tests needing more say so in their `ignore`).

#[path = "run_support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{Background, Project, descendants_of, events_of, wait_until};

fn kiln_store(project: &Project, args: &[&str]) -> std::process::Output {
    project.kiln().arg("store").args(args).output().unwrap()
}

fn status_of(events: &[Value], job: &str) -> String {
    events
        .iter()
        .filter(|e| e["job"] == job)
        .filter_map(|e| match e["type"].as_str() {
            Some("job/end") => e["status"].as_str().map(str::to_owned),
            Some("job/cached") => Some("cached".to_owned()),
            _ => None,
        })
        .next_back()
        .unwrap_or_else(|| "none".to_owned())
}

fn object_exists(project: &Project, digest: &str) -> bool {
    kiln_store(project, &["ls", digest]).status.success()
}

/// A cached upstream output layer is held from the lookup on: `kiln store
/// curate` with thresholds that evict everything, run while the build is in
/// a long job, does not sweep it, and the job that restores it later passes.
/// Control: the same curation after the build (no lease) sweeps the layer.
#[test]
fn curate_during_a_build_keeps_the_cached_upstream_layer_it_will_restore() {
    let project = Project::new(
        r#"{ nonce ? "0" }: {
  driver = { type = "container"; image = "host"; };
  stages = [ "one" "two" ];
  jobs = {
    up = { stage = "one"; commands = [ "echo upstream-layer > up.txt" ]; };
    slow = { stage = "one"; env = { N = nonce; }; commands = [ "sleep 4" ]; };
    down = { stage = "two"; needs = [ "up" ]; env = { N = nonce; }; commands = [ "grep -q upstream-layer up.txt" ]; };
  };
}"#,
    );
    let first = project.run(&["--arg", "nonce=1"]);
    assert_eq!(first.code, 0, "{}", first.describe());

    let mut build = Background::start(&project, &["--arg", "nonce=2"]);
    let cached = build.wait_for("job/cached", "up");
    let layer = cached["output_layer"].as_str().unwrap().to_owned();
    build.wait_for("job/start", "slow");
    let curate = kiln_store(
        &project,
        &["curate", "--threshold", "1", "--cache-threshold", "1"],
    );
    assert!(curate.status.success(), "{curate:?}");
    assert!(
        object_exists(&project, &layer),
        "curation during the build swept the cached layer {layer}"
    );
    let gc = kiln_store(&project, &["gc"]);
    assert!(gc.status.success(), "{gc:?}");
    let (code, lines, stderr) = build.finish();
    let events = events_of(&lines);
    assert_eq!(code, 0, "{events:#?}\n{stderr}");
    assert_eq!(status_of(&events, "up"), "cached");
    assert_eq!(status_of(&events, "down"), "passed", "{events:#?}");

    // Control: once the build is over nothing holds the layer, and the same
    // curation sweeps it.
    let curate = kiln_store(
        &project,
        &["curate", "--threshold", "1", "--cache-threshold", "1"],
    );
    assert!(curate.status.success(), "{curate:?}");
    assert!(
        !object_exists(&project, &layer),
        "the control curation should have swept {layer}"
    );
    project.assert_clean();
}

/// `kiln store gc` from another PID namespace, where the build's pid does
/// not exist, keeps the running build's source tree: liveness is the lease
/// lock, not the pid. Control: in that namespace the build's pid is absent,
/// so a pid-based liveness test would call the session dead.
#[test]
fn gc_from_another_pid_namespace_keeps_a_running_builds_objects() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  sources = [ ./. ];
  stages = [ "one" "two" ];
  jobs = {
    slow = { stage = "one"; commands = [ "sleep 4" ]; };
    after = { stage = "two"; inputs = [ "data" ]; commands = [ "grep -q payload data/file.txt" ]; };
  };
}"#,
    );
    project.write("data/file.txt", "payload\n");
    let mut build = Background::start(&project, &[]);
    build.wait_for("job/start", "slow");
    let tree = events_of(&build.seen)
        .into_iter()
        .find(|e| e["type"] == "source/resolved")
        .and_then(|e| e["tree"].as_str().map(str::to_owned))
        .expect("a source/resolved event with its tree");
    let pid = build.child.id();

    // Control: the build's pid is invisible in a fresh PID namespace.
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c"])
        .arg(format!("test -e /proc/{pid}"))
        .status()
        .unwrap();
    assert!(
        !probe.success(),
        "pid {pid} is visible in the new PID namespace: the control proves nothing"
    );
    let here = Command::new("sh")
        .arg("-c")
        .arg(format!("test -e /proc/{pid}"))
        .status()
        .unwrap();
    assert!(here.success(), "the build process {pid} should be alive");

    let gc = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .arg("--store")
        .arg(&project.store)
        .args(["store", "gc", "--json"])
        .output()
        .unwrap();
    assert!(gc.status.success(), "{gc:?}");
    let report: Value = serde_json::from_slice(&gc.stdout).unwrap_or(Value::Null);
    assert!(
        object_exists(&project, &tree),
        "gc from another PID namespace swept the running build's source tree {tree}: {report}"
    );
    let (code, lines, stderr) = build.finish();
    let events = events_of(&lines);
    assert_eq!(code, 0, "{events:#?}\n{stderr}");
    assert_eq!(status_of(&events, "after"), "passed", "{events:#?}");
    project.assert_clean();
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", path.display());
        Tmpfs(path.to_path_buf())
    }

    fn available(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.0).unwrap();
        stat.blocks_available() as u64 * stat.fragment_size() as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn chunk_files(store: &Path) -> usize {
    let mut count = 0;
    for fan in std::fs::read_dir(store.join("chunks")).unwrap() {
        count += std::fs::read_dir(fan.unwrap().path()).unwrap().count();
    }
    count
}

/// A store on a small file system and a job whose output does not fit: the
/// build fails naming the full disk, the job's log is kept, the failed
/// capture leaves no chunk files, fsck is clean, and gc, curate and
/// `fsck --repair` work.
#[test]
fn a_full_disk_fails_the_build_clearly_and_leaves_nothing_behind() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = {
    big = { stage = "one"; commands = [ "echo writing" "head -c 40M /dev/urandom > big.bin" ]; };
  };
}"#,
    );
    let disk = Tmpfs::mount(&project.store, "64M");
    let before = disk.available();
    let run = project.run(&[]);
    assert_ne!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("big"), "failed", "{}", run.describe());
    let end = run
        .of_type("job/end")
        .into_iter()
        .find(|e| e["job"] == "big")
        .cloned()
        .unwrap();
    let message = end["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no space left"),
        "the failure should name the full disk: {end:#}"
    );
    let log = end["log"]
        .as_str()
        .expect("the job/end event carries the log");
    let out = kiln_store(&project, &["cat", log]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("writing"));
    // The failed capture gave its space back (40 MiB of incompressible data
    // were written as chunks before the disk filled up).
    let after = disk.available();
    assert!(
        after + 8 * 1024 * 1024 > before,
        "space not given back: {before} bytes free before, {after} after"
    );
    let fsck = kiln_store(&project, &["fsck"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    assert!(
        chunk_files(&project.store) < 16,
        "chunk files left behind: {}",
        chunk_files(&project.store)
    );
    for args in [
        &["gc"][..],
        &["gc", "--full"],
        &["curate", "--threshold", "1"],
        &["fsck", "--repair"],
    ] {
        let out = kiln_store(&project, args);
        assert!(out.status.success(), "kiln store {args:?}: {out:?}");
    }
    // Control: the disk really is too small for the job's output twice over
    // (upper dir and chunks), so the capture had to fail.
    assert!(before < 2 * 40 * 1024 * 1024, "{before}");
    drop(disk);
}

/// Build directories live under the store, never under `TMPDIR`: with a
/// `TMPDIR` the host view shows, a job cannot find another job's upper dir
/// there. Control: that `TMPDIR` is visible inside the job.
#[test]
fn a_host_visible_tmpdir_holds_no_upper_layer() {
    let visible = PathBuf::from(format!("/srv/kiln-tmp-test-{}", std::process::id()));
    std::fs::create_dir_all(&visible).unwrap();
    let project = Project::new(&format!(
        r#"{{
  driver = {{ type = "container"; image = "host"; }};
  stages = [ "one" ];
  jobs = {{
    writer = {{ stage = "one"; commands = [ "echo secret > secret-marker-{pid}" "sleep 3" ]; }};
    reader = {{ stage = "one"; commands = [
      "test -d {dir}"
      "sleep 1"
      "! find {dir} -name 'secret-marker-*' | grep ."
    ]; }};
  }};
}}"#,
        pid = std::process::id(),
        dir = visible.display()
    ));
    let output = project
        .kiln()
        .env("TMPDIR", &visible)
        .args(["run", "--json"])
        .output()
        .unwrap();
    let run = support::parse(output);
    let _ = std::fs::remove_dir_all(&visible);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("reader"), "passed", "{}", run.describe());
    project.assert_clean();
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// SIGKILL of kiln during a container job with limits: the next run sweeps
/// the build directory and the cgroups left behind, and the killed build is
/// then recorded as failed with the reason. Control: right after the kill
/// the build directory is still there.
#[test]
fn sigkill_during_a_limited_container_job_leaves_nothing_after_the_next_run() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; memory = 256; pids = 64; };
  stages = [ "one" ];
  jobs = { slow = { stage = "one"; commands = [ "sleep 30" ]; }; };
}"#,
    );
    let mut build = Background::start(&project, &[]);
    build.wait_for("job/start", "slow");
    let kiln = build.child.id();
    let helpers: Vec<u32> = descendants_of(kiln);
    assert!(!helpers.is_empty(), "no sandbox helper under kiln {kiln}");
    build.child.kill().unwrap();
    let _ = build.child.wait();
    let scratch = project.store.join("scratch");
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().collect();
    assert!(
        !left.is_empty(),
        "control: the killed build left its directory"
    );
    // Whatever the helpers do after kiln died, they end (their job is
    // bounded), and the next run cleans up.
    wait_until(
        "the sandbox helpers to end",
        Duration::from_secs(40),
        || {
            helpers
                .iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        },
    );
    let builds = project.kiln().args(["builds"]).output().unwrap();
    let listing = String::from_utf8_lossy(&builds.stdout).into_owned();
    assert!(
        !listing.contains("running"),
        "the killed build should be failed now:\n{listing}"
    );
    let show = project.kiln().args(["show", "1"]).output().unwrap();
    let shown = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(
        shown.contains("the kiln process running it died"),
        "the reason is recorded:\n{shown}"
    );
    project.write(
        "build.kiln",
        r#"{
  driver = { type = "container"; image = "host"; memory = 256; pids = 64; };
  stages = [ "one" ];
  jobs = { quick = { stage = "one"; commands = [ "true" ]; }; };
}"#,
    );
    let next = project.run(&[]);
    assert_eq!(next.code, 0, "{}", next.describe());
    for helper in helpers {
        for dir in cgroup_dirs(helper) {
            assert!(!dir.exists(), "cgroup {} left behind", dir.display());
        }
    }
    project.assert_clean();
}

/// Every place a sandbox helper `pid` may have made its cgroup.
fn cgroup_dirs(pid: u32) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(format!("/sys/fs/cgroup/kiln/{pid}"))];
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for controller in ["memory", "pids"] {
        let path = own
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then_some(path)
            })
            .next()
            .unwrap_or("/");
        dirs.push(
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/'))
                .join("kiln")
                .join(pid.to_string()),
        );
    }
    dirs
}

/// SIGKILL of kiln during a qemu job: QEMU dies with it (the build process
/// gets its parent-death signal and stops the VM: QMP `quit`, at most 2 s,
/// then a kill; a build process killed outright takes QEMU down through
/// QEMU's own parent-death signal), and its private directory goes at the
/// next run. Control: QEMU was running, under kiln (in its build process),
/// before the kill.
#[test]
fn sigkill_during_a_qemu_job_takes_qemu_down_with_kiln() {
    let project = Project::new(
        r#"{
  driver = { type = "qemu"; image = "busybox"; accel = "tcg"; };
  stages = [ "one" ];
  jobs = { slow = { stage = "one"; commands = [ "sleep 60" ]; }; };
}"#,
    );
    let image = project.dir.path().join("busybox-root");
    let made = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/vm/make-image.sh"
    ))
    .arg(&image)
    .status()
    .unwrap();
    assert!(made.success(), "make-image.sh failed");
    let imported = project
        .kiln()
        .args(["image", "import", "busybox"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");
    let mut build = Background::start(&project, &[]);
    build.wait_for("job/start", "slow");
    let kiln = build.child.id();
    let mut qemu = None;
    wait_until("QEMU to start", Duration::from_secs(120), || {
        qemu = descendants_of(kiln)
            .into_iter()
            .find(|pid| comm(*pid).starts_with("qemu-system"));
        qemu.is_some()
    });
    let qemu = qemu.unwrap();
    build.child.kill().unwrap();
    let _ = build.child.wait();
    wait_until("QEMU to die with kiln", Duration::from_secs(20), || {
        !Path::new(&format!("/proc/{qemu}")).exists()
            || std::fs::read_to_string(format!("/proc/{qemu}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    project.write(
        "build.kiln",
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = { quick = { stage = "one"; commands = [ "true" ]; }; };
}"#,
    );
    let next = project.run(&[]);
    assert_eq!(next.code, 0, "{}", next.describe());
    project.assert_clean();
}

/// A build run by a non-root user (user namespaces, overlayfs `work/work`
/// left mode 000 by the kernel) leaves no build directory behind. Control:
/// the job really ran as that user.
#[test]
fn a_non_root_build_leaves_no_build_directory() {
    use std::os::unix::fs::PermissionsExt;
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = { write = { stage = "one"; commands = [ "echo data > out.txt" ]; }; };
}"#,
    );
    std::fs::set_permissions(project.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(project.dir.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .arg("--store")
        .arg(&project.store)
        .args(["run", "--json"])
        .current_dir(project.root())
        .env("TMPDIR", &project.tmp)
        .env("HOME", project.dir.path())
        .output()
        .unwrap();
    let run = support::parse(output);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("write"), "passed", "{}", run.describe());
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(project.store.join("index.sqlite")).unwrap(),
    );
    assert_eq!(owner, 65534, "control: the build ran as nobody");
    project.assert_clean();
}
