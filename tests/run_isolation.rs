//! `kiln run` end to end: kill, parallelism, isolation, the Djinn example.

#[path = "run_support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{Project, parse};

#[test]
fn sigint_kills_the_build_and_leaves_nothing_behind() {
    let marker = format!("kiln-sigint-test-{}", std::process::id());
    let project = Project::new(&format!(
        r#"{{
  driver = {{ type = "container"; image = "host"; }};
  stages = [ "s" "t" ];
  jobs = {{
    slow = {{ stage = "s"; commands = [ "sleep 300 # {marker}" ]; }};
    later = {{ stage = "t"; commands = [ "true" ]; }};
  }};
}}"#
    ));
    let mut child = project
        .kiln()
        .args(["run", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let started = line.contains("\"job/start\"");
        seen.push(line);
        if started {
            break;
        }
    }
    // Give the sandbox a moment to exec the script.
    std::thread::sleep(Duration::from_millis(500));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    seen.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    let run = parse(std::process::Output {
        status,
        stdout: seen.join("\n").into_bytes(),
        stderr: stderr.into_bytes(),
    });
    assert_eq!(run.code, 4, "{}", run.describe());
    assert_eq!(run.build_status(), "killed");
    assert_eq!(run.status("slow"), "killed");
    assert_eq!(run.status("later"), "skipped");
    project.assert_clean();
    // No process of the job is left.
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker) && !c.contains("cargo"))
        .collect();
    assert!(leftovers.is_empty(), "processes left: {leftovers:?}");
    // A later run works and the store is consistent.
    project.write("build.kiln", r#"{ driver = { type = "container"; image = "host"; }; stages = [ "s" ]; jobs = { ok = { stage = "s"; commands = [ "true" ]; }; }; }"#);
    let again = project.run(&[]);
    assert_eq!(again.code, 0, "{}", again.describe());
    let fsck = project.kiln().args(["store", "fsck"]).output().unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn independent_jobs_really_run_in_parallel() {
    // Host-driver jobs share the host's filesystem: each writes its marker
    // and waits for the other's, so they pass only when both run at once.
    let project = Project::new("");
    let meeting = project.dir.path().join("meeting");
    std::fs::create_dir_all(&meeting).unwrap();
    let job = |me: &str, other: &str| {
        format!(
            r#"{me} = {{ stage = "s"; commands = [ "touch {dir}/{me}" "i=0; while [ ! -e {dir}/{other} ]; do i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done" ]; }};"#,
            dir = meeting.display()
        )
    };
    project.write(
        "build.kiln",
        &format!(
            r#"{{ driver = {{ type = "host"; }}; stages = [ "s" ]; jobs = {{ {} {} }}; }}"#,
            job("left", "right"),
            job("right", "left")
        ),
    );
    let run = project.run(&["--jobs", "2"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("left"), "passed");
    assert_eq!(run.status("right"), "passed");

    // Containers too: two jobs sleeping 2 s each take well under 4 s.
    let sleepy = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "s" ];
  jobs = { a = { stage = "s"; commands = [ "sleep 2" ]; }; b = { stage = "s"; commands = [ "sleep 2" ]; }; };
}"#,
    );
    let started = Instant::now();
    let run = sleepy.run(&["--jobs", "2"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert!(
        started.elapsed() < Duration::from_millis(3800),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_job_sees_no_host_files_processes_loopback_or_environment() {
    let project = Project::new("");
    let secret_dir = project.dir.path().join("secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("key"), "top secret").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("123.456")
        .spawn()
        .unwrap();
    project.write(
        "build.kiln",
        &format!(
            r#"{{
  driver = {{ type = "container"; image = "host"; }};
  stages = [ "s" ];
  jobs = {{
    probe = {{
      stage = "s";
      commands = [
        "test ! -e {secret}/key"
        "if cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -q '123[.]456'; then exit 1; fi"
        "if timeout 3 bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}'; then exit 1; fi"
        "test -z \"$KILN_TEST_SECRET\""
        "test \"$(hostname)\" = kiln"
        "test \"$LANG\" = C.UTF-8 && test \"$TZ\" = UTC && test \"$SOURCE_DATE_EPOCH\" = 0"
      ];
    }};
  }};
}}"#,
            secret = secret_dir.display()
        ),
    );
    // Outside a sandbox the same probes succeed, so they can fail.
    let outside = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -q '123[.]456' && echo hi > /dev/tcp/127.0.0.1/{port}"
        ))
        .status()
        .unwrap();
    assert!(outside.success());
    let output = project
        .kiln()
        .env("KILN_TEST_SECRET", "leaked")
        .args(["run", "--json"])
        .output()
        .unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let run = parse(output);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("probe"), "passed");
    // The one connection the outside probe made is there; the job's is not.
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_ok());
    assert!(
        listener.accept().is_err(),
        "the job reached the host's loopback"
    );
}

/// A Djinn manifest naming a `docker` image, run in that image once imported.
const DJINN_WITH_IMAGE: &str = r#"
driver:
  type: docker
  image: busybox
  workspace: /work
env:
- GREETING=hello from djinn
stages:
- build
- test
jobs:
- stage: build
  commands:
  - echo "$GREETING" > greeting.txt
  artifacts:
  - greeting.txt
- stage: test
  commands:
  - grep -q "hello from djinn" greeting.txt
  - test ! -e /usr/bin/apt-get
"#;

#[test]
fn a_djinn_manifest_runs_in_its_imported_docker_image() {
    let project = Project::new("");
    std::fs::write(project.root().join(".djinn.yml"), DJINN_WITH_IMAGE).unwrap();
    std::fs::remove_file(project.root().join("build.kiln")).unwrap();
    let missing = project.run(&[]);
    assert_eq!(missing.code, 3, "{}", missing.describe());
    assert!(
        missing.describe().contains("kiln image import busybox"),
        "{}",
        missing.describe()
    );
    // A minimal image: a static busybox as /bin/sh and its applets.
    let rootfs = project.dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "grep", "test"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let import = project
        .kiln()
        .args(["image", "import", "busybox"])
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let run = project.run(&[]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("build.1"), "passed", "{}", run.describe());
    assert_eq!(run.status("test.1"), "passed");
    let names: Vec<String> = run.artifacts().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["greeting.txt"]);
    let again = project.run(&[]);
    assert_eq!(again.status("build.1"), "cached", "{}", again.describe());
}

#[test]
fn the_djinn_example_runs_sequentially_in_the_host_image() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let project = Project::new("");
    let output = project
        .kiln()
        .current_dir(repo)
        .args(["run", "--json", "examples/djinn/.djinn.yml"])
        .output()
        .unwrap();
    let run = parse(output);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("compile"), "passed", "{}", run.describe());
    let names: Vec<String> = run.artifacts().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["hello", "release/hello.tgz"]);
    // One job at a time: no job starts before the previous one ended.
    let order: Vec<&str> = run
        .events
        .iter()
        .filter_map(|e| match e["type"].as_str() {
            Some("job/start") => Some("start"),
            Some("job/end") => Some("end"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["start", "end", "start", "end", "start", "end"]);
    project.assert_clean();
}

#[test]
fn kiln_kill_stops_a_running_build() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "s" ];
  jobs = { slow = { stage = "s"; commands = [ "sleep 300" ]; }; };
}"#,
    );
    let mut child = project
        .kiln()
        .args(["run", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let started = line.contains("\"job/start\"");
        seen.push(line);
        if started {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let kill = project.kiln().args(["kill", "last"]).output().unwrap();
    assert!(
        kill.status.success(),
        "{}",
        String::from_utf8_lossy(&kill.stderr)
    );
    seen.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    let run = parse(std::process::Output {
        status,
        stdout: seen.join("\n").into_bytes(),
        stderr: Vec::new(),
    });
    assert_eq!(run.code, 4, "{}", run.describe());
    assert_eq!(run.status("slow"), "killed");
    project.assert_clean();
    // The build is over: killing it again is an error.
    let again = project.kiln().args(["kill", "last"]).output().unwrap();
    assert!(!again.status.success());
}

#[test]
fn explain_names_the_key_component_that_changed() {
    let manifest = |greeting: &str| {
        format!(
            r#"{{ driver = {{ type = "container"; image = "host"; }}; env = {{ GREETING = "{greeting}"; }}; stages = [ "s" ]; jobs = {{ say = {{ stage = "s"; commands = [ "echo $GREETING > out" ]; }}; }}; }}"#
        )
    };
    let project = Project::new(&manifest("hello"));
    let first = project.run(&[]);
    assert_eq!(first.code, 0, "{}", first.describe());
    let same = project.kiln().args(["explain", "say"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&same.stdout).contains("nothing changed"),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
    project.write("build.kiln", &manifest("goodbye"));
    let changed = project.kiln().args(["explain", "say"]).output().unwrap();
    let text = String::from_utf8_lossy(&changed.stdout);
    assert!(
        text.contains("env GREETING: \"hello\" → \"goodbye\""),
        "{text}"
    );
    let plan = project.kiln().args(["plan", "--json"]).output().unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan[0]["status"], "run");
}
