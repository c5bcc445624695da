//! `kiln run` with the qemu driver, end to end: real QEMU microVMs (TCG where
//! KVM guests hang), the `examples/vm` manifest and its busybox image. VM
//! boots are expensive on a small machine, so everything is one test, in
//! one store, with six boots in all.

#[path = "run_support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Instant;

use support::{Project, Run, restore};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vm");

const REPORT: &[u8] = b"HELLO FROM A MICROVM\nwritten on kiln\n";

/// QEMU processes whose command line mentions `dir` (their disks and QMP
/// socket live in the build's temp dir below it).
fn qemu_processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let name = entry.file_name();
        if !name.to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("qemu-system") && cmdline.contains(&needle) {
            found.push(cmdline);
        }
    }
    found
}

fn assert_nothing_left(project: &Project) {
    let running = qemu_processes_under(project.dir.path());
    assert!(running.is_empty(), "QEMU still running: {running:?}");
    project.assert_clean();
}

fn output_lines<'a>(run: &'a Run, job: &str) -> Vec<&'a str> {
    run.of_type("job/output")
        .into_iter()
        .filter(|e| e["job"] == job)
        .filter_map(|e| e["line"].as_str())
        .collect()
}

fn job_end_message(run: &Run, job: &str) -> String {
    run.of_type("job/end")
        .into_iter()
        .find(|e| e["job"] == job)
        .and_then(|e| e["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// What the qemu driver's `kernel = "default"` boots.
fn newest_boot_kernel() -> std::path::PathBuf {
    kiln::vm::newest_boot_kernel(Path::new("/boot")).unwrap()
}

/// Runs `manifest`, sends kiln SIGTERM once a line of its JSON events
/// contains `marker`, and collects the whole run.
fn run_and_kill_when(project: &Project, manifest: &str, marker: &str) -> Run {
    use std::io::{BufRead, BufReader};
    let mut child = project
        .kiln()
        .args(["run", "--json", manifest])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut signalled = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if !signalled && line.contains(marker) {
            let pid = i32::try_from(child.id()).unwrap();
            // SAFETY: a plain signal to our own child process.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            signalled = true;
        }
        lines.push(line);
    }
    let status = child.wait().unwrap();
    assert!(signalled, "never saw {marker}:\n{}", lines.join("\n"));
    support::parse(std::process::Output {
        status,
        stdout: lines.join("\n").into_bytes(),
        stderr: Vec::new(),
    })
}

/// The example's files, and its busybox image built by its script and
/// imported into the project's store.
fn example_project() -> Project {
    let project = Project::new("");
    for file in ["build.kiln", "greeting.txt", "make-image.sh"] {
        std::fs::copy(Path::new(EXAMPLE).join(file), project.root().join(file)).unwrap();
    }
    let image = project.dir.path().join("busybox-root");
    let made = std::process::Command::new(Path::new(EXAMPLE).join("make-image.sh"))
        .arg(&image)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let imported = project
        .kiln()
        .args(["image", "import", "busybox"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");
    project
}

#[test]
fn vm_jobs_share_layers_cache_fail_time_out_and_match_containers() {
    let project = example_project();

    // 1. The example: two jobs, two VMs (boots 1 and 2). `read` sees the
    // base layer with `write`'s output layer on top, whose deletion of
    // greeting.txt (a whiteout) holds.
    let first = project.run(&["build.kiln"]);
    assert_eq!(first.code, 0, "{}", first.describe());
    assert_eq!(first.status("write"), "passed", "{}", first.describe());
    assert_eq!(first.status("read"), "passed", "{}", first.describe());
    let read_lines = output_lines(&first, "read");
    assert!(
        read_lines.contains(&"HELLO FROM A MICROVM"),
        "{read_lines:?}"
    );
    // The log says which accelerator ran the job.
    assert!(
        read_lines
            .first()
            .is_some_and(|line| line.starts_with("kiln: qemu microvm, accel=")),
        "{read_lines:?}"
    );
    let artifacts = first.artifacts();
    let names: Vec<&str> = artifacts.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["report.txt", "files"]);
    let out = project.dir.path().join("artifacts");
    std::fs::create_dir(&out).unwrap();
    restore(&project.store, &artifacts[0].1, &out.join("report.txt"));
    assert_eq!(std::fs::read(out.join("report.txt")).unwrap(), REPORT);
    restore(&project.store, &artifacts[1].1, &out.join("files"));
    assert_eq!(
        std::fs::read(out.join("files/shout.txt")).unwrap(),
        b"HELLO FROM A MICROVM\n"
    );
    assert_eq!(
        std::fs::read(out.join("files/where.txt")).unwrap(),
        b"written on kiln\n"
    );
    assert_nothing_left(&project);

    // The driver's part of the key: the image tree and the kernel file's
    // own digest (the host's newest /boot/vmlinuz-*), never the accelerator.
    let start = first
        .of_type("job/start")
        .into_iter()
        .find(|e| e["job"] == "write")
        .cloned()
        .unwrap();
    let driver = &start["key_inputs"]["driver"];
    assert_eq!(driver["kind"], "qemu", "{start:#}");
    assert_eq!(driver["memory"], 512, "{start:#}");
    assert_eq!(driver["cpus"], 1, "{start:#}");
    assert_eq!(driver["workspace"], "/work", "{start:#}");
    let kernel = newest_boot_kernel();
    let kernel_digest = blake3::hash(&std::fs::read(&kernel).unwrap()).to_hex();
    assert_eq!(
        driver["kernel"].as_str(),
        Some(format!("blake3:{kernel_digest}").as_str()),
        "{kernel:?}: {start:#}"
    );
    assert!(driver.get("accel").is_none(), "{start:#}");
    let example = std::fs::read_to_string(project.root().join("build.kiln")).unwrap();
    let under_tcg = example.replace(r#"accel = "auto";"#, r#"accel = "tcg";"#);
    assert_ne!(under_tcg, example);
    let plan_dir = project.dir.path().join("plan");
    std::fs::create_dir(&plan_dir).unwrap();
    std::fs::write(plan_dir.join("build.kiln"), &under_tcg).unwrap();
    std::fs::copy(
        project.root().join("greeting.txt"),
        plan_dir.join("greeting.txt"),
    )
    .unwrap();
    let plan = project
        .kiln()
        .current_dir(&plan_dir)
        .args(["plan", "--json"])
        .output()
        .unwrap();
    assert!(plan.status.success(), "{plan:?}");
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan[0]["job"], "write", "{plan:#}");
    assert_eq!(plan[0]["status"], "cached", "{plan:#}");
    assert_eq!(plan[0]["key"], start["key"], "{plan:#}");

    // 2. Again: every job Cached, no VM booted (no job started, no console).
    let started = Instant::now();
    let second = project.run(&["build.kiln"]);
    let elapsed = started.elapsed();
    assert_eq!(second.code, 0, "{}", second.describe());
    assert_eq!(second.status("write"), "cached", "{}", second.describe());
    assert_eq!(second.status("read"), "cached", "{}", second.describe());
    assert!(
        second.of_type("job/start").is_empty(),
        "{}",
        second.describe()
    );
    assert!(
        second.of_type("job/output").is_empty(),
        "{}",
        second.describe()
    );
    assert_eq!(second.artifacts(), artifacts);
    eprintln!("cached rerun of the VM example: {elapsed:?}");

    // 3. A failing command (boot 3) and a job timeout (boot 4).
    project.write(
        "faults.kiln",
        r#"{
  driver = { type = "qemu"; image = "busybox"; accel = "auto"; };
  stages = [ "one" "two" ];
  allow_failures = [ "one" ];
  jobs = {
    fails = { stage = "one"; commands = [ "echo about to fail" "exit 7" ]; };
    sleeps = { stage = "two"; timeout = "3s"; commands = [ "echo sleeping" "sleep 600" ]; };
  };
}"#,
    );
    let faults = project.run(&["faults.kiln", "--jobs", "1"]);
    assert_eq!(faults.status("fails"), "failed", "{}", faults.describe());
    assert!(
        job_end_message(&faults, "fails").contains("exited with 7"),
        "{}",
        faults.describe()
    );
    assert!(output_lines(&faults, "fails").contains(&"about to fail"));
    assert_eq!(
        faults.status("sleeps"),
        "timed_out",
        "{}",
        faults.describe()
    );
    assert!(output_lines(&faults, "sleeps").contains(&"sleeping"));
    assert_eq!(faults.build_status(), "timed_out");
    assert_eq!(faults.code, 5, "{}", faults.describe());
    assert_nothing_left(&project);

    // 4. A kill (SIGTERM to kiln, as Ctrl-C or `kiln kill` send) while the
    // VM runs its job (boot 5): Killed, and the VM is gone.
    project.write(
        "kill.kiln",
        r#"{
  driver = { type = "qemu"; image = "busybox"; };
  stages = [ "s" ];
  jobs = { sleeps = { stage = "s"; commands = [ "echo sleeping" "sleep 600" ]; }; };
}"#,
    );
    let killed = run_and_kill_when(&project, "kill.kiln", "\"line\":\"sleeping\"");
    assert_eq!(killed.status("sleeps"), "killed", "{}", killed.describe());
    assert_eq!(killed.build_status(), "killed");
    assert_eq!(killed.code, 4, "{}", killed.describe());
    assert_nothing_left(&project);

    // 5. The "host" view is no VM image: a clear error before any boot.
    project.write(
        "host.kiln",
        r#"{ driver = { type = "qemu"; image = "host"; }; stages = [ "s" ]; jobs = { a = { stage = "s"; commands = [ "true" ]; }; }; }"#,
    );
    let host = project.run(&["host.kiln"]);
    assert_eq!(host.status("a"), "skipped", "{}", host.describe());
    let refused = job_end_message(&host, "driver:qemu:host");
    assert!(
        refused.contains("kiln image import") && refused.contains("make-image.sh"),
        "{}",
        host.describe()
    );

    // 6. A Djinn qemu driver names an imported image; its workspace is
    // /root (boot 6).
    project.write(
        "djinn/.djinn.yml",
        r#"driver:
  type: qemu
  image: busybox
  arch: x86_64
stages:
- build
jobs:
- stage: build
  commands:
  - pwd > where.txt
  artifacts:
  - where.txt
"#,
    );
    let djinn = project.run(&["djinn/.djinn.yml"]);
    assert_eq!(djinn.code, 0, "{}", djinn.describe());
    let djinn_artifacts = djinn.artifacts();
    assert_eq!(djinn_artifacts.len(), 1, "{}", djinn.describe());
    restore(
        &project.store,
        &djinn_artifacts[0].1,
        &out.join("where.txt"),
    );
    assert_eq!(std::fs::read(out.join("where.txt")).unwrap(), b"/root\n");
    assert_nothing_left(&project);

    // 7. The same manifest in containers on the same image: the same bytes.
    let in_containers = example.replace(
        "driver = vm;",
        r#"driver = { type = "container"; image = "busybox"; };"#,
    );
    assert_ne!(in_containers, example);
    project.write("containers.kiln", &in_containers);
    let containers = project.run(&["containers.kiln"]);
    assert_eq!(containers.code, 0, "{}", containers.describe());
    assert_eq!(
        containers.status("read"),
        "passed",
        "{}",
        containers.describe()
    );
    assert_eq!(containers.artifacts(), artifacts);
    assert_nothing_left(&project);
}
