//! The build controller (issue 11): `kiln run` is a controller and a build
//! process talking HTTP over a unix socket. The real binary, real sockets,
//! real namespaces; each refusal next to a control that succeeds.

#[path = "run_support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use kiln::controller::{ControllerClient, Endpoint};
use serde_json::Value;
use support::{Background, Project, alive, children_of, wait_until};

fn controller_dir(project: &Project, build: u32) -> PathBuf {
    project.store.join("scratch").join(format!("ctl-{build}"))
}

fn client(project: &Project, token: &str) -> ControllerClient {
    ControllerClient::new(
        Endpoint::Unix(controller_dir(project, 1).join("socket")),
        token.to_owned(),
    )
}

fn token(project: &Project) -> String {
    std::fs::read_to_string(controller_dir(project, 1).join("token")).unwrap()
}

/// One request on a fresh connection.
fn request(
    client: &ControllerClient,
    method: Method,
    path: &str,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut connection = client.connect().await.unwrap();
        connection.request(method, path, body).await.unwrap()
    })
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

/// The build process of the `kiln run` with pid `kiln`.
fn build_process(kiln: u32) -> u32 {
    let mut found = None;
    wait_until("the build process", Duration::from_secs(10), || {
        found = children_of(kiln)
            .into_iter()
            .find(|pid| cmdline(*pid).contains("__build"));
        found.is_some()
    });
    found.unwrap()
}

fn fsck_clean(project: &Project) {
    let fsck = project.kiln().args(["store", "fsck"]).output().unwrap();
    assert!(
        fsck.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

const SLOW: &str = r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = {
    slow = { stage = "one"; commands = [ "echo started" "sleep 30" ]; };
  };
}"#;

/// A subscriber of `GET /events` receives exactly the envelopes `--json`
/// prints, in order, with their sequence numbers as SSE ids; resuming with
/// `Last-Event-ID` gives the rest.
#[test]
fn an_sse_subscriber_sees_the_same_events_as_json() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" "two" ];
  jobs = {
    a = { stage = "one"; commands = [ "sleep 1" "echo from a" ]; };
    b = { stage = "two"; commands = [ "echo from b" ]; };
  };
}"#,
    );
    let mut build = Background::start(&project, &[]);
    build.wait_for("job/start", "a");
    let client = client(&project, &token(&project));
    let subscriber =
        std::thread::spawn(move || request(&client, Method::GET, "/events", Bytes::new()));
    let resumed_client = self::client(&project, &token(&project));
    let resumer = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut connection = resumed_client.connect().await.unwrap();
            connection
                .request_with(
                    Method::GET,
                    "/events",
                    &[("Last-Event-ID", "3")],
                    Bytes::new(),
                )
                .await
                .unwrap()
        })
    });
    let (code, lines, stderr) = build.finish();
    assert_eq!(code, 0, "{stderr}");
    let (status, body) = subscriber.join().unwrap();
    assert_eq!(status, StatusCode::OK);
    let parse = |body: &Bytes| -> Vec<(u64, Value)> {
        let text = String::from_utf8_lossy(body).into_owned();
        let mut out = Vec::new();
        let mut id = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("id:") {
                id = Some(rest.trim().parse::<u64>().unwrap());
            } else if let Some(rest) = line.strip_prefix("data:") {
                out.push((
                    id.take().unwrap(),
                    serde_json::from_str(rest.trim()).unwrap(),
                ));
            }
        }
        out
    };
    let streamed = parse(&body);
    let json: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        json.len() > 10,
        "control: --json printed the build: {json:#?}"
    );
    assert_eq!(
        streamed.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        json,
        "the SSE stream and --json differ"
    );
    for (id, envelope) in &streamed {
        assert_eq!(envelope["seq"].as_u64(), Some(*id));
    }
    let (_, resumed) = resumer.join().unwrap();
    let resumed = parse(&resumed);
    assert_eq!(resumed.first().map(|(id, _)| *id), Some(4));
    assert_eq!(resumed.len(), json.len() - 3);
    project.assert_clean();
}

/// Without the token, or with a wrong one, every route answers 401 with an
/// empty body and changes nothing; the token is in no process's argv, no
/// job's environment and no log. Control: the right token is answered.
#[test]
fn requests_without_the_right_token_get_401_and_the_token_stays_secret() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = {
    slow = { stage = "one"; commands = [ "env" "sleep 3" ]; };
  };
}"#,
    );
    let mut build = Background::start(&project, &[]);
    build.wait_for("job/start", "slow");
    let secret = token(&project);
    assert_eq!(secret.len(), 64);
    let wrong = client(&project, &"0".repeat(64));
    for (method, path) in [
        (Method::GET, "/build"),
        (Method::GET, "/events"),
        (Method::POST, "/events"),
        (Method::POST, "/kill"),
        (Method::GET, "/stop"),
        (Method::GET, "/no-such-route"),
    ] {
        let (status, body) = request(&wrong, method.clone(), path, Bytes::from_static(b"[]"));
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(body.is_empty(), "{method} {path} said {body:?}");
    }
    let empty = client(&project, "");
    assert_eq!(
        request(&empty, Method::GET, "/build", Bytes::new()).0,
        StatusCode::UNAUTHORIZED
    );
    // Control: the right token is answered.
    let right = client(&project, &secret);
    let (status, body) = request(&right, Method::GET, "/build", Bytes::new());
    assert_eq!(status, StatusCode::OK);
    let params: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(params["build"], 1);
    assert_eq!(params["graph"]["jobs"][0]["name"], "slow");
    // No process shows the token in its argv.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        {
            assert!(
                !cmdline(pid).contains(&secret),
                "process {pid} shows the token"
            );
        }
    }
    let kiln = build.child.id();
    let (code, lines, stderr) = build.finish();
    assert_eq!(code, 0, "the wrong-token kill changed nothing: {stderr}");
    let _ = kiln;
    let all = lines.join("\n");
    assert!(
        all.contains("KILN_") || all.contains("PATH="),
        "control: the job printed its environment"
    );
    assert!(
        !all.contains("KILN_CONTROLLER"),
        "the job sees the controller's variables"
    );
    assert!(!all.contains(&secret), "the token is in the events");
    let log = project.kiln().args(["log", "1", "slow"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&log.stdout).contains(&secret));
    project.assert_clean();
}

/// A malformed or oversized batch is refused (400, 413) and routes nothing.
#[test]
fn a_malformed_or_oversized_request_gets_a_4xx_and_changes_nothing() {
    let project = Project::new(SLOW);
    let mut build = Background::start(&project, &[]);
    build.wait_for("job/start", "slow");
    let right = client(&project, &token(&project));
    let (status, _) = request(
        &right,
        Method::POST,
        "/events",
        Bytes::from_static(b"{not json"),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let forged = r#"[{"seq":1,"time_ms":0,"build":1,"event":{"type":"no/such"}}]"#;
    let (status, _) = request(&right, Method::POST, "/events", Bytes::from(forged));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let huge = Bytes::from(vec![b' '; 17 << 20]);
    let (status, _) = request(&right, Method::POST, "/events", huge);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Control: a well-formed batch is accepted and routed.
    let warning = r#"[{"seq":1,"time_ms":0,"build":1,"event":{"type":"warning","message":"posted by the test"}}]"#;
    let (status, _) = request(&right, Method::POST, "/events", Bytes::from(warning));
    assert_eq!(status, StatusCode::OK);
    let (status, _) = request(&right, Method::POST, "/kill", Bytes::new());
    assert_eq!(status, StatusCode::ACCEPTED);
    let (code, lines, stderr) = build.finish();
    assert_eq!(code, 4, "killed through the API: {stderr}");
    let all = lines.join("\n");
    assert!(all.contains("posted by the test"));
    assert!(!all.contains("no/such"));
    project.assert_clean();
    fsck_clean(&project);
}

/// SIGKILL of the build process mid-run: the controller records the build
/// as failed with the reason, its job's sandbox goes, nothing is left, the
/// store is fsck-clean. Control: the job was running in the build process.
#[test]
fn sigkill_of_the_build_process_fails_the_build_and_leaves_nothing() {
    let project = Project::new(SLOW);
    let mut build = Background::start(&project, &[]);
    build.wait_for("job/start", "slow");
    let child = build_process(build.child.id());
    let helpers = children_of(child);
    assert!(
        !helpers.is_empty(),
        "control: a sandbox helper runs under the build process"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (code, lines, stderr) = build.finish();
    assert_eq!(code, 3, "{stderr}");
    let all = lines.join("\n");
    assert!(
        all.contains("the build process was killed by SIGKILL"),
        "the reason is an event: {all}"
    );
    wait_until(
        "the sandbox helpers to end",
        Duration::from_secs(10),
        || helpers.iter().all(|pid| !alive(*pid)),
    );
    let show = project.kiln().args(["show", "1"]).output().unwrap();
    let shown = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(shown.contains("failed"), "{shown}");
    project.assert_clean();
    fsck_clean(&project);
}

/// SIGKILL of the controller mid-run: the build process notices (parent-
/// death signal, lost connection) within seconds, stops its job and leaves
/// no process, mount or build directory; the next run passes and finds the
/// store fsck-clean. Control: both were running before the kill.
#[test]
fn sigkill_of_the_controller_stops_the_build_process_and_leaves_nothing() {
    let project = Project::new(SLOW);
    let mut build = Background::start(&project, &[]);
    build.wait_for("job/start", "slow");
    let kiln = build.child.id();
    let child = build_process(kiln);
    let helpers = children_of(child);
    assert!(
        alive(child) && !helpers.is_empty(),
        "control: the build runs"
    );
    build.child.kill().unwrap();
    let _ = build.finish();
    wait_until("the build process to stop", Duration::from_secs(5), || {
        !alive(child)
    });
    wait_until("its sandbox helpers to end", Duration::from_secs(5), || {
        helpers.iter().all(|pid| !alive(*pid))
    });
    let scratch: Vec<PathBuf> = std::fs::read_dir(project.store.join("scratch"))
        .map(|dir| dir.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(
        scratch.iter().all(|path| path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ctl-")),
        "the build process left its build directory: {scratch:?}"
    );
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
    let show = project.kiln().args(["show", "1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&show.stdout).contains("failed"));
    project.assert_clean();
    fsck_clean(&project);
}

/// A job cannot reach the controller: the store (which holds the socket) is
/// hidden from its view of the host, and its network namespace has no
/// route to the host's loopback. Control: the socket exists outside.
#[test]
fn a_job_cannot_reach_the_controller() {
    let project = Project::new("{}");
    let socket = controller_dir(&project, 1).join("socket");
    project.write(
        "build.kiln",
        &format!(
            r#"{{
  driver = {{ type = "container"; image = "host"; }};
  stages = [ "one" ];
  jobs = {{
    probe = {{ stage = "one"; commands = [
      "if [ -e {socket} ]; then echo SOCKET-VISIBLE; else echo socket-hidden; fi"
      "if [ -e {store} ]; then echo STORE-VISIBLE; else echo store-hidden; fi"
      "sleep 2"
    ]; }};
  }};
}}"#,
            socket = socket.display(),
            store = project.store.display()
        ),
    );
    let mut build = Background::start(&project, &[]);
    build.wait_for("job/start", "probe");
    assert!(
        Path::new(&socket).exists(),
        "control: the socket exists on the host"
    );
    let (code, lines, stderr) = build.finish();
    assert_eq!(code, 0, "{stderr}");
    let all = lines.join("\n");
    assert!(all.contains("socket-hidden"), "{all}");
    assert!(all.contains("store-hidden"), "{all}");
    project.assert_clean();
}

/// `--in container`: the example build runs with its build process inside a
/// kiln container, then the same build in a child process is all cached,
/// with the same artifacts. Control: a `host`-driver job (which runs in the
/// build process's own view) sees the container's hostname only with
/// `--in container`.
#[test]
fn the_example_built_in_a_container_is_cached_in_a_child() {
    let project = Project::new("{}");
    support::copy_dir(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello")),
        &project.root(),
    );
    let args = ["--arg", "version=1.2"];
    let first = project.run(&[&["--in", "container"][..], &args[..]].concat());
    assert_eq!(first.code, 0, "{}", first.describe());
    for job in ["compile", "smoke", "tarball"] {
        assert_eq!(first.status(job), "passed", "{}", first.describe());
    }
    let second = project.run(&args);
    assert_eq!(second.code, 0, "{}", second.describe());
    for job in ["compile", "smoke", "tarball"] {
        assert_eq!(second.status(job), "cached", "{}", second.describe());
    }
    assert_eq!(first.artifacts(), second.artifacts());
    assert!(!first.artifacts().is_empty());

    let probe = Project::new(
        r#"{
  driver = { type = "host"; };
  stages = [ "one" ];
  jobs = { where = { stage = "one"; commands = [ "hostname" ]; }; };
}"#,
    );
    let in_container = probe.run(&["--in", "container", "--no-cache"]);
    assert_eq!(in_container.code, 0, "{}", in_container.describe());
    let in_child = probe.run(&["--no-cache"]);
    assert_eq!(in_child.code, 0, "{}", in_child.describe());
    let printed = |run: &support::Run| -> String {
        run.of_type("job/output")
            .iter()
            .filter_map(|event| event["line"].as_str())
            .filter(|line| !line.starts_with('+'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(printed(&in_container), "kiln-build");
    assert_ne!(printed(&in_child), "kiln-build");
    project.assert_clean();
    probe.assert_clean();
}

/// `job/end` carries the job script's real exit code (container and host
/// drivers), and none when the job was killed.
#[test]
fn job_end_carries_the_real_exit_code() {
    let project = Project::new(
        r#"{
  stages = [ "one" ];
  allow_failures = [ "one" ];
  jobs = {
    boxed = { stage = "one"; driver = { type = "container"; image = "host"; }; commands = [ "exit 7" ]; };
    plain = { stage = "one"; driver = { type = "host"; }; commands = [ "exit 9" ]; };
    fine = { stage = "one"; driver = { type = "container"; image = "host"; }; commands = [ "true" ]; };
  };
}"#,
    );
    let run = project.run(&[]);
    let code_of = |job: &str| {
        run.of_type("job/end")
            .into_iter()
            .find(|event| event["job"] == job)
            .map(|event| event["exit_code"].clone())
            .unwrap_or_else(|| panic!("no job/end for {job}: {}", run.describe()))
    };
    assert_eq!(code_of("boxed"), 7, "{}", run.describe());
    assert_eq!(code_of("plain"), 9);
    assert_eq!(code_of("fine"), 0);
    project.assert_clean();
}

/// `kiln log -f` from another terminal follows a running job's output as
/// it is written, from its first line, and returns when the job ends;
/// without a job it follows the whole build. Control: without `-f` the
/// running job has no log yet and the command says how to follow it.
#[test]
fn log_follow_prints_a_running_jobs_lines_as_they_come() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" "two" ];
  jobs = {
    talk = { stage = "one"; commands = [ "for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done" ]; };
    after = { stage = "two"; commands = [ "echo last" ]; };
  };
}"#,
    );
    let mut build = Background::start(&project, &[]);
    build.wait_for("job/start", "talk");
    let plain = project.kiln().args(["log", "1", "talk"]).output().unwrap();
    assert!(!plain.status.success());
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("kiln log -f 1 talk"),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let whole = project
        .kiln()
        .args(["log", "-f", "last"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let followed = project
        .kiln()
        .args(["log", "-f", "1", "talk"])
        .output()
        .unwrap();
    assert!(followed.status.success(), "{followed:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&followed.stdout)
        .lines()
        .filter(|line| line.starts_with("line"))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines, ["line 1", "line 2", "line 3", "line 4", "line 5"]);
    let unknown = project
        .kiln()
        .args(["log", "-f", "1", "nope"])
        .output()
        .unwrap();
    let build_still_running = alive(build.child.id());
    let (code, _, stderr) = build.finish();
    assert_eq!(code, 0, "{stderr}");
    let whole = whole.wait_with_output().unwrap();
    let whole = String::from_utf8_lossy(&whole.stdout);
    assert!(
        whole.contains("talk | line 5") && whole.contains("after | last"),
        "{whole}"
    );
    if build_still_running {
        assert!(!unknown.status.success());
        assert!(String::from_utf8_lossy(&unknown.stderr).contains("no job \"nope\""));
    }
    project.assert_clean();
}
