//! `kiln serve` (issue 12): the real binary on loopback, a real store, real
//! builds. Each refusal next to a control that succeeds.

#[path = "server_support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use kiln::controller::{ControllerClient, Endpoint};
use serde_json::Value;
use support::{HELLO, KILN, Server, copy_dir, project, statuses, tar_of, wait_until};

/// `kiln submit` of the example: it follows the build and exits 0, the
/// artifacts are those `kiln run` makes, and a second submit is all cached.
#[test]
fn submit_runs_the_example_like_kiln_run_and_the_second_is_cached() {
    let server = Server::start(&[]);
    let checkout = tempfile::tempdir().unwrap();
    copy_dir(Path::new(HELLO), checkout.path());
    let submit = server
        .kiln()
        .current_dir(checkout.path())
        .args(["submit", "--arg", "version=1.2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&submit.stderr).into_owned();
    assert!(submit.status.success(), "{stderr}");
    assert!(
        stderr.contains("job tarball: passed"),
        "followed live: {stderr}"
    );
    let first = server.get("/api/builds/1");
    assert_eq!(first["status"], "passed");
    assert_eq!(first["submitter"], "admin");

    // The same build with `kiln run` in a store of its own: same artifacts.
    let elsewhere = tempfile::tempdir().unwrap();
    let local_store = elsewhere.path().join("local-store");
    let run = Command::new(KILN)
        .arg("--store")
        .arg(&local_store)
        .args(["run", "--arg", "version=1.2"])
        .current_dir(checkout.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let listed = Command::new(KILN)
        .arg("--store")
        .arg(&local_store)
        .args(["artifacts", "last", "--json"])
        .output()
        .unwrap();
    let local: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let digests = |artifacts: &Value| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = artifacts
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().to_owned(),
                    a["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    };
    assert!(!digests(&local).is_empty());
    assert_eq!(digests(&first["artifacts"]), digests(&local));

    // The artifact's bytes, whole and by range.
    let name = first["artifacts"][0]["name"].as_str().unwrap().to_owned();
    let path = format!("/api/builds/1/artifacts/{name}");
    let (status, whole) = server.request(Some(&server.admin), Method::GET, &path, Vec::new());
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        whole.len() as u64,
        first["artifacts"][0]["size"].as_u64().unwrap()
    );
    let got = Command::new(KILN)
        .arg("--store")
        .arg(&local_store)
        .args(["artifacts", "get", "last", &name, "-o"])
        .arg(elsewhere.path().join("got"))
        .output()
        .unwrap();
    assert!(got.status.success(), "{got:?}");
    assert_eq!(
        std::fs::read(elsewhere.path().join("got")).unwrap(),
        whole.to_vec()
    );

    let second = server
        .kiln()
        .current_dir(checkout.path())
        .args(["submit", "--arg", "version=1.2", "--detach"])
        .output()
        .unwrap();
    assert!(second.status.success(), "{second:?}");
    let build: i64 = String::from_utf8_lossy(&second.stdout)
        .trim()
        .parse()
        .unwrap();
    let record = server.wait_finished(build);
    assert!(
        statuses(&record)
            .iter()
            .all(|(_, status)| status == "cached"),
        "{:#}",
        record["jobs"]
    );
}

/// Ranges: a slice, a suffix, and an unsatisfiable one (416).
#[test]
fn artifacts_download_by_range() {
    let server = Server::start(&[]);
    let dir = project(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = { make = { stage = "one"; commands = [ "printf 0123456789 > out.txt" ]; artifacts = [ "out.txt" ]; }; };
}"#,
    );
    let (status, answer) = server.submit(tar_of(dir.path()), "");
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let record = server.wait_finished(answer["build"].as_i64().unwrap());
    assert_eq!(record["status"], "passed", "{record:#}");
    let name = record["artifacts"][0]["name"].as_str().unwrap().to_owned();
    let ranged = |range: &str| {
        let client =
            ControllerClient::new(Endpoint::parse(&server.url).unwrap(), server.admin.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut connection = client.connect().await.unwrap();
            connection
                .request_with(
                    Method::GET,
                    &format!("/api/builds/1/artifacts/{name}"),
                    &[("Range", range)],
                    Bytes::new(),
                )
                .await
                .unwrap()
        })
    };
    let (status, body) = ranged("bytes=2-5");
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&body[..], b"2345");
    let (status, body) = ranged("bytes=-3");
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&body[..], b"789");
    let (status, _) = ranged("bytes=20-30");
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
}

/// No token: 401 everywhere but the health check; a read token cannot
/// submit, kill or pin (403); a submit token cannot pin or curate.
#[test]
fn roles_are_checked_on_every_endpoint() {
    let server = Server::start(&[]);
    let read = server.token("watcher", "read");
    let submit = server.token("ci", "submit");
    let (status, _) = server.request(None, Method::GET, "/api/health", Vec::new());
    assert_eq!(status, StatusCode::OK);
    for (method, path) in [
        (Method::GET, "/api/builds"),
        (Method::GET, "/api/builds/1"),
        (Method::GET, "/metrics"),
        (Method::POST, "/api/builds"),
        (Method::GET, "/api/store"),
    ] {
        let (status, _) = server.request(None, method.clone(), path, Vec::new());
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let (status, _) =
            server.request(Some("kiln_not-a-token"), method.clone(), path, Vec::new());
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a wrong token"
        );
    }
    let dir = project(
        r#"{ stages = [ "one" ]; jobs = { a = { stage = "one"; driver = { type = "container"; image = "host"; }; commands = [ "true" ]; }; }; }"#,
    );
    let (status, _) = server.request(Some(&read), Method::POST, "/api/builds", tar_of(dir.path()));
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Control: a submit token submits.
    let (status, body) = server.request(
        Some(&submit),
        Method::POST,
        "/api/builds",
        tar_of(dir.path()),
    );
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    server.wait_finished(1);
    let (status, _) = server.request(Some(&read), Method::GET, "/api/builds/1", Vec::new());
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.request(Some(&read), Method::GET, "/metrics", Vec::new());
    assert_eq!(status, StatusCode::OK);
    for path in ["/api/builds/1/pin", "/api/store/curate"] {
        let (status, _) = server.request(Some(&submit), Method::POST, path, Vec::new());
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let (status, _) = server.request(Some(&read), Method::POST, "/api/builds/1/kill", Vec::new());
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server.request(
        Some(&server.admin),
        Method::POST,
        "/api/builds/1/pin",
        Vec::new(),
    );
    assert_eq!(status, StatusCode::OK);
    // Metrics in Prometheus's text format.
    let (_, metrics) = server.request(Some(&read), Method::GET, "/metrics", Vec::new());
    let metrics = String::from_utf8_lossy(&metrics);
    for name in [
        "kiln_builds{status=\"passed\"} 1",
        "kiln_queue_depth 0",
        "kiln_cache_hit_ratio",
        "kiln_store_bytes",
        "kiln_job_duration_seconds_sum",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }
}

/// Bad uploads are refused (400, 413) and a bad manifest gets 422 with the
/// diagnostic `kiln check` gives; none of them stores anything.
#[test]
fn bad_uploads_and_manifests_are_refused_and_store_nothing() {
    let server = Server::start(&["--max-upload", "64KiB"]);
    let (status, answer) = server.submit(b"this is not a tar archive at all".to_vec(), "");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    let escaping = {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "build.kiln", &b"{}"[..])
            .unwrap();
        let mut link = tar::Header::new_ustar();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "src", "../../../etc")
            .unwrap();
        builder.into_inner().unwrap()
    };
    let (status, answer) = server.submit(escaping, "");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("points out"),
        "{answer}"
    );

    let dir = project(
        r#"{ driver = { type = "container"; image = "host"; }; stages = [ "one" ]; jobs = { a = { stage = "one"; commands = [ "true" ]; }; }; }"#,
    );
    let full = tar_of(dir.path());
    let (status, _) = server.submit(full[..full.len() / 2].to_vec(), "");
    assert_eq!(status, StatusCode::BAD_REQUEST, "a truncated archive");

    let big = tempfile::tempdir().unwrap();
    std::fs::write(big.path().join("build.kiln"), "{}").unwrap();
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(big.path().join("blob"), noise).unwrap();
    let (status, _) = server.submit(tar_of(big.path()), "");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let invalid = project(
        "{\n  stages = [ \"one\" ];\n  jobs = { a = { stage = \"two\"; commands = [ ]; }; };\n}\n",
    );
    let (status, answer) = server.submit(tar_of(invalid.path()), "");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let diagnostics = answer["diagnostics"].as_str().unwrap();
    assert!(
        diagnostics.contains("build.kiln:3:"),
        "file:line:col in {diagnostics}"
    );

    let listed = server.get("/api/builds");
    assert_eq!(listed["builds"].as_array().unwrap().len(), 0, "{listed}");
    let submissions: Vec<_> = std::fs::read_dir(server.store.join("submissions"))
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(submissions.is_empty(), "{submissions:?}");
    // Control: a good upload is accepted.
    let (status, answer) = server.submit(tar_of(dir.path()), "");
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

/// `--max-builds 1`: builds start in submission order, one at a time; a
/// queued build killed never runs; a running build killed ends killed.
#[test]
fn the_queue_runs_in_order_and_kill_works_queued_or_running() {
    let server = Server::start(&["--max-builds", "1"]);
    let dir = project(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = { wait = { stage = "one"; commands = [ "sleep 1" ]; }; };
}"#,
    );
    let archive = tar_of(dir.path());
    let mut builds = Vec::new();
    for n in 0..4 {
        let (status, answer) = server.submit(archive.clone(), &format!("project=p{n}"));
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        builds.push(answer["build"].as_i64().unwrap());
    }
    let (status, answer) = server.post(&format!("/api/builds/{}/kill", builds[3]));
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    wait_until("build 1 to run", Duration::from_secs(60), || {
        server.get(&format!("/api/builds/{}", builds[0]))["status"] == "running"
    });
    let (status, _) = server.post(&format!("/api/builds/{}/kill", builds[0]));
    assert_eq!(status, StatusCode::ACCEPTED);
    let first = server.wait_finished(builds[0]);
    assert_eq!(first["status"], "killed", "{first:#}");
    let second = server.wait_finished(builds[1]);
    let third = server.wait_finished(builds[2]);
    assert_eq!(second["status"], "passed");
    assert_eq!(third["status"], "passed");
    assert!(
        second["started"].as_i64() >= first["finished"].as_i64(),
        "one at a time"
    );
    assert!(
        third["started"].as_i64() >= second["finished"].as_i64(),
        "in order"
    );
    let never = server.get(&format!("/api/builds/{}", builds[3]));
    assert_eq!(never["status"], "killed");
    assert!(
        never["jobs"].as_array().unwrap().is_empty(),
        "it never ran: {never:#}"
    );
    let (status, _) = server.post(&format!("/api/builds/{}/kill", builds[2]));
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a finished build cannot be killed"
    );
    let page = server.get("/api/builds?limit=2");
    assert_eq!(page["builds"].as_array().unwrap().len(), 2);
    assert_eq!(page["builds"][0]["build"], builds[3]);
    let rest = server.get(&format!(
        "/api/builds?limit=10&before={}",
        page["next_before"]
    ));
    assert_eq!(rest["builds"].as_array().unwrap().len(), 2);
    let killed = server.get("/api/builds?status=killed");
    assert_eq!(killed["builds"].as_array().unwrap().len(), 2);
}

/// A server killed mid-build: at the next start the running build is failed
/// with the reason and its leftovers swept, the queued one still runs, and
/// finished results are kept.
#[test]
fn a_restart_keeps_the_queue_and_fails_the_interrupted_build() {
    let mut server = Server::start(&["--max-builds", "1"]);
    let slow = project(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = { wait = { stage = "one"; commands = [ "sleep 30" ]; }; };
}"#,
    );
    let quick = project(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = { quick = { stage = "one"; commands = [ "true" ]; }; };
}"#,
    );
    let (_, done) = server.submit(tar_of(quick.path()), "");
    server.wait_finished(done["build"].as_i64().unwrap());
    let (_, running) = server.submit(tar_of(slow.path()), "");
    let (_, queued) = server.submit(tar_of(quick.path()), "");
    let running = running["build"].as_i64().unwrap();
    let queued = queued["build"].as_i64().unwrap();
    wait_until(
        "the slow build to run its job",
        Duration::from_secs(60),
        || {
            server.get(&format!("/api/builds/{running}"))["jobs"]
                .as_array()
                .is_some_and(|jobs| jobs.iter().any(|job| job["status"] == "running"))
        },
    );
    assert_eq!(
        server.get(&format!("/api/builds/{queued}"))["status"],
        "queued"
    );
    server.restart_after_crash(&["--max-builds", "1"]);
    let interrupted = server.wait_finished(running);
    assert_eq!(interrupted["status"], "failed", "{interrupted:#}");
    let after = server.wait_finished(queued);
    assert_eq!(after["status"], "passed", "{after:#}");
    assert_eq!(server.get("/api/builds/1")["status"], "passed");
    let scratch: Vec<_> = std::fs::read_dir(server.store.join("scratch"))
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "left behind: {scratch:?}");
}

/// Every route the server serves is in docs/openapi.json and every path
/// there is served (not the router's bare 404).
#[test]
fn the_openapi_description_matches_the_routes() {
    let spec: Value = serde_json::from_str(kiln::server::routes::OPENAPI).unwrap();
    let documented: std::collections::BTreeSet<String> =
        spec["paths"].as_object().unwrap().keys().cloned().collect();
    let source = include_str!("../src/server/routes.rs");
    let routed: std::collections::BTreeSet<String> = source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"'))
        .map(|rest| rest.split('"').next().unwrap().replace("{*", "{"))
        .collect();
    assert_eq!(documented, routed);
    let server = Server::start(&[]);
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            if operation["x-kiln-stream"] == true {
                continue;
            }
            let concrete = path
                .replace("{build}", "1")
                .replace("{job}", "nope")
                .replace("{name}", "nope");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) =
                server.request(Some(&server.admin), method.clone(), &concrete, Vec::new());
            assert!(
                !(status == StatusCode::NOT_FOUND && body.is_empty())
                    && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {concrete}: {status}"
            );
        }
    }
}

/// Curation past the threshold (here 1 KiB per project) removes the older
/// unpinned build's artifacts and never a pinned build's. Control: the
/// unpinned build had its artifact before curation.
#[test]
fn curation_removes_old_artifacts_but_never_a_pinned_builds() {
    let server = Server::start(&["--artifact-threshold", "1KiB", "--curate-every", "0"]);
    let mut builds = Vec::new();
    for n in 0..3 {
        let dir = project(&format!(
            r#"{{
  driver = {{ type = "container"; image = "host"; }};
  stages = [ "one" ];
  jobs = {{ make = {{ stage = "one"; commands = [ "head -c 4096 /dev/urandom > out.bin; echo {n}" ]; artifacts = [ "out.bin" ]; }}; }};
}}"#
        ));
        let (status, answer) = server.submit(tar_of(dir.path()), "project=same");
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let build = answer["build"].as_i64().unwrap();
        assert_eq!(server.wait_finished(build)["status"], "passed");
        builds.push(build);
    }
    let (status, _) = server.post(&format!("/api/builds/{}/pin", builds[0]));
    assert_eq!(status, StatusCode::OK);
    let count = |build: i64| {
        server
            .get(&format!("/api/builds/{build}/artifacts"))
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count(builds[1]), 1, "control: the artifact is there");
    let (status, report) = server.post("/api/store/curate");
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(
        report["artifacts_removed"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(count(builds[0]), 1, "the pinned build keeps its artifact");
    assert_eq!(
        count(builds[1]),
        0,
        "the older unpinned build's artifact is curated"
    );
    let pinned = server.get("/api/store");
    assert_eq!(pinned["pinned_builds"], serde_json::json!([builds[0]]));
}

/// `kiln builds|show|log|artifacts|pin|kill --server URL` print what the
/// same commands print on the server's own store. Control: the local
/// commands on that store show the build.
#[test]
fn record_commands_against_a_server_print_what_they_print_locally() {
    let server = Server::start(&["--max-builds", "1"]);
    let checkout = tempfile::tempdir().unwrap();
    copy_dir(Path::new(HELLO), checkout.path());
    let submit = server
        .kiln()
        .current_dir(checkout.path())
        .args(["submit", "--arg", "version=1.2"])
        .output()
        .unwrap();
    assert!(submit.status.success(), "{submit:?}");
    let local = |args: &[&str]| {
        let output = Command::new(KILN)
            .arg("--store")
            .arg(&server.store)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "local {args:?}: {output:?}");
        output.stdout
    };
    let remote = |args: &[&str]| {
        let output = server
            .kiln()
            .args(args)
            .args(["--server", &server.url])
            .output()
            .unwrap();
        assert!(output.status.success(), "remote {args:?}: {output:?}");
        output.stdout
    };
    for args in [
        &["builds"][..],
        &["show", "1"],
        &["show", "last"],
        &["log", "1", "compile"],
        &["log", "1"],
        &["artifacts", "1"],
    ] {
        let here = local(args);
        assert!(!here.is_empty(), "control: {args:?} prints something");
        assert_eq!(
            String::from_utf8_lossy(&remote(args)),
            String::from_utf8_lossy(&here),
            "{args:?}"
        );
    }
    let out = checkout.path().join("hello.tgz");
    remote(&[
        "artifacts",
        "get",
        "1",
        "release/hello.tgz",
        "-o",
        out.to_str().unwrap(),
    ]);
    let here = checkout.path().join("here.tgz");
    local(&[
        "artifacts",
        "get",
        "1",
        "release/hello.tgz",
        "-o",
        here.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&here).unwrap());
    remote(&["pin", "1"]);
    assert!(String::from_utf8_lossy(&local(&["builds"])).contains("pinned"));
    // Kill through the server: a queued build behind a slow one.
    let slow = project(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = { wait = { stage = "one"; commands = [ "sleep 20" ]; }; };
}"#,
    );
    let (_, running) = server.submit(tar_of(slow.path()), "");
    let (_, queued) = server.submit(tar_of(slow.path()), "");
    for build in [
        queued["build"].as_i64().unwrap(),
        running["build"].as_i64().unwrap(),
    ] {
        remote(&["kill", &build.to_string()]);
        assert_eq!(server.wait_finished(build)["status"], "killed");
    }
    let no_token = Command::new(KILN)
        .args(["builds", "--server", &server.url])
        .env_remove("KILN_TOKEN")
        .output()
        .unwrap();
    assert!(!no_token.status.success());
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("token"));
}

/// A client that goes away mid-upload or mid-stream costs the server
/// nothing: nothing is stored, and it keeps answering.
#[test]
fn the_server_survives_clients_that_disconnect() {
    use std::io::Write;
    let server = Server::start(&[]);
    let address = server.url.trim_start_matches("http://").to_owned();
    // Mid-upload: a body announced at 1 MiB, 1 KiB sent, then gone.
    let mut upload = std::net::TcpStream::connect(&address).unwrap();
    write!(
        upload,
        "POST /api/builds HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1048576\r\n\r\n",
        server.admin
    )
    .unwrap();
    upload.write_all(&[0u8; 1024]).unwrap();
    drop(upload);
    // Mid-stream: a build's event stream, dropped after the headers.
    let dir = project(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = { wait = { stage = "one"; commands = [ "sleep 2" ]; }; };
}"#,
    );
    let (_, answer) = server.submit(tar_of(dir.path()), "");
    let build = answer["build"].as_i64().unwrap();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "GET /api/builds/{build}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        server.admin
    )
    .unwrap();
    let mut first = [0u8; 64];
    let _ = std::io::Read::read(&mut stream, &mut first).unwrap();
    drop(stream);
    assert_eq!(server.wait_finished(build)["status"], "passed");
    let (status, _) = server.request(None, Method::GET, "/api/health", Vec::new());
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server.get("/api/builds")["builds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let submissions: Vec<_> = std::fs::read_dir(server.store.join("submissions"))
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(submissions.is_empty(), "{submissions:?}");
}

/// A raw HTTP/1.1 request (no token): status, headers, body.
fn raw(server: &Server, request: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let address = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The web page: `/` sends a browser without a session to the login form;
/// a wrong token gets no cookie; the right one a session cookie (HttpOnly,
/// SameSite=Strict) with which the page and the API answer; after logout
/// the cookie is refused. Control: the API refuses a cookie-less request.
#[test]
fn the_web_page_logs_in_with_a_session_cookie_and_out() {
    let server = Server::start(&[]);
    let get = |path: &str, cookie: &str| {
        raw(
            &server,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{cookie}\r\n"),
        )
    };
    let post = |path: &str, cookie: &str, body: &str| {
        raw(
            &server,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{cookie}\r\n{body}",
                body.len()
            ),
        )
    };
    let (status, head, _) = get("/", "");
    assert_eq!(status, 303);
    assert!(head.contains("location: /login"), "{head}");
    let (status, _, body) = get("/login", "");
    assert_eq!(status, 200);
    assert!(body.contains("name=\"token\""));
    assert_eq!(get("/api/builds", "").0, 401, "control: no session, no API");
    let (status, head, _) = post("/login", "", "token=kiln_wrong");
    assert_eq!(status, 303);
    assert!(
        head.contains("/login?failed=1") && !head.contains("set-cookie"),
        "{head}"
    );
    let (status, head, _) = post("/login", "", &format!("token={}", server.admin));
    assert_eq!(status, 303);
    let cookie_line = head
        .lines()
        .find(|line| line.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a session cookie");
    assert!(
        cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"),
        "{cookie_line}"
    );
    let session = cookie_line
        .split_once(':')
        .unwrap()
        .1
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        !session.contains(&server.admin),
        "the cookie is not the token"
    );
    let cookie = format!("Cookie: {session}\r\n");
    let (status, head, body) = get("/", &cookie);
    assert_eq!(status, 200);
    assert!(body.contains("/assets/app.js"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert_eq!(get("/api/builds", &cookie).0, 200);
    let (status, _, body) = get("/api/me", &cookie);
    assert_eq!(status, 200);
    assert!(body.contains("\"admin\""));
    assert_eq!(get("/assets/app.js", "").0, 200);
    assert_eq!(post("/logout", &cookie, "").0, 303);
    assert_eq!(get("/api/builds", &cookie).0, 401, "the session is gone");
    assert_eq!(get("/", &cookie).0, 303);
}

/// `kiln submit` from a git repository packs what git would commit: tracked
/// files and untracked ones not ignored, without `.git` or ignored build
/// output. Control: the ignored file is there on disk.
#[test]
fn submit_packs_what_git_would_commit() {
    let server = Server::start(&[]);
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    std::fs::write(
        root.join("build.kiln"),
        r#"{
  driver = { type = "container"; image = "host"; };
  sources = [ ./. ];
  stages = [ "one" ];
  jobs = { look = { stage = "one"; commands = [
    "test -e src/a.c" "test -e extra.txt" "test ! -e target" "test ! -e .git"
  ]; }; };
}"#,
    )
    .unwrap();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/a.c"), "int main;").unwrap();
    std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
    std::fs::create_dir_all(root.join("target")).unwrap();
    std::fs::write(root.join("target/huge.bin"), vec![7u8; 2 << 20]).unwrap();
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "build.kiln", "src/a.c", ".gitignore"]);
    git(&["commit", "-q", "-m", "init"]);
    std::fs::write(root.join("extra.txt"), "untracked, not ignored").unwrap();
    assert!(root.join("target/huge.bin").exists(), "control");
    let submit = server
        .kiln()
        .current_dir(root)
        .args(["submit", "--detach"])
        .output()
        .unwrap();
    assert!(submit.status.success(), "{submit:?}");
    let stderr = String::from_utf8_lossy(&submit.stderr);
    assert!(
        !stderr.contains("MiB"),
        "the 2 MiB of target/ stay home: {stderr}"
    );
    let build: i64 = String::from_utf8_lossy(&submit.stdout)
        .trim()
        .parse()
        .unwrap();
    let record = server.wait_finished(build);
    assert_eq!(record["status"], "passed", "{record:#}");
}
