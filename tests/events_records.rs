//! A real event bus persisting a realistic build into a real store, then
//! the real `kiln` binary reading it back: builds, show, log, artifacts,
//! pin, unpin.

use std::fs;
use std::path::Path;

use assert_cmd::Command;
use expect_test::expect;
use kiln::events::{
    B3Digest, BuildStatus, ConsoleMode, Emitter, Event, JobStatus, LocalBus, LocalOptions,
    ObjectRef,
};
use kiln_store::{AddOptions, BuildId, Store};

#[derive(Clone, Copy)]
struct Objects {
    compile_log: ObjectRef,
    test_log: ObjectRef,
    lint_log: ObjectRef,
    app: ObjectRef,
    docs: ObjectRef,
}

/// What the scheduler would have stored before emitting: logs, artifacts.
fn store_objects(dir: &Path, scratch: &Path) -> (Objects, kiln_store::TempRoots) {
    let mut store = Store::open(dir).unwrap();
    let roots = store.temp_roots().unwrap();
    let mut bytes = |data: &[u8]| store.add_bytes(data, &roots).unwrap().object;
    let compile_log = bytes(b"cc -o app main.c\n");
    let test_log = bytes(b"running 2 tests\ntest_two: FAILED\n");
    let lint_log = bytes(b"lint ok\n");
    let app = bytes(b"\x7fELF app binary");
    let docs_dir = scratch.join("docs");
    fs::create_dir_all(docs_dir.join("api")).unwrap();
    fs::write(docs_dir.join("index.html"), "<h1>app</h1>\n").unwrap();
    fs::write(docs_dir.join("api/main.html"), "<p>main</p>\n").unwrap();
    let docs = store
        .add_path(&docs_dir, &AddOptions::default(), &roots)
        .unwrap()
        .object;
    // The scheduler holds its objects in temporary roots until the build
    // records reference them.
    let objects = Objects {
        compile_log,
        test_log,
        lint_log,
        app,
        docs,
    };
    (objects, roots)
}

fn key_inputs(job: &str, script: &str) -> serde_json::Value {
    serde_json::json!({"version": 1, "job": job, "script": script, "image": "host"})
}

/// The events of a build as the scheduler emits them: stage `build` passes
/// (compile runs, lint is cached), stage `test` fails, `package` is skipped.
fn emit_build(emitter: &Emitter, objects: &Objects) {
    let stage = |name: &str| name.to_owned();
    emitter.emit(Event::BuildStart {
        stages: vec![stage("build"), stage("test"), stage("package")],
        jobs: 4,
    });
    emitter.emit(Event::DriverCreated {
        driver: "container".into(),
        kind: "container".into(),
        image: Some(B3Digest::of(b"host image")),
        duration_ms: 3,
    });
    for (job, stage) in [
        ("compile", "build"),
        ("lint", "build"),
        ("test", "test"),
        ("package", "package"),
    ] {
        emitter.emit(Event::JobQueued {
            job: job.into(),
            stage: stage.into(),
            needs: Vec::new(),
        });
    }
    emitter.emit(Event::StageStart {
        stage: "build".into(),
    });
    emitter.emit(Event::JobCached {
        job: "lint".into(),
        stage: "build".into(),
        key: B3Digest::of(b"lint key"),
        key_inputs: Some(key_inputs("lint", "lint")),
        output_layer: B3Digest::of(b"lint layer"),
        log: Some(objects.lint_log.digest),
    });
    emitter.emit(Event::JobStart {
        job: "compile".into(),
        stage: "build".into(),
        key: Some(B3Digest::of(b"compile key")),
        key_inputs: Some(key_inputs("compile", "cc -o app main.c")),
    });
    emitter.emit(Event::JobOutput {
        job: "compile".into(),
        line: "cc -o app main.c".into(),
    });
    emitter.emit(Event::ArtifactSaved {
        job: "compile".into(),
        name: "app".into(),
        object: objects.app,
        size: 15,
    });
    emitter.emit(Event::ArtifactSaved {
        job: "compile".into(),
        name: "docs".into(),
        object: objects.docs,
        size: 25,
    });
    emitter.emit(Event::JobEnd {
        job: "compile".into(),
        stage: "build".into(),
        status: JobStatus::Passed,
        duration_ms: 1234,
        exit_code: Some(0),
        log: Some(objects.compile_log.digest),
        output_layer: Some(B3Digest::of(b"compile layer")),
        message: None,
    });
    emitter.emit(Event::StageEnd {
        stage: "build".into(),
        status: BuildStatus::Passed,
    });
    emitter.emit(Event::StageStart {
        stage: "test".into(),
    });
    emitter.emit(Event::JobStart {
        job: "test".into(),
        stage: "test".into(),
        key: Some(B3Digest::of(b"test key")),
        key_inputs: Some(key_inputs("test", "./run-tests")),
    });
    emitter.emit(Event::Warning {
        job: None,
        message: "object ./vendor.tar is missing".into(),
    });
    emitter.emit(Event::JobEnd {
        job: "test".into(),
        stage: "test".into(),
        status: JobStatus::Failed,
        duration_ms: 80,
        exit_code: Some(1),
        log: Some(objects.test_log.digest),
        output_layer: None,
        message: Some("exit code 1".into()),
    });
    emitter.emit(Event::StageEnd {
        stage: "test".into(),
        status: BuildStatus::Failed,
    });
    emitter.emit(Event::JobSkipped {
        job: "package".into(),
        stage: "package".into(),
        reason: "stage test failed".into(),
    });
    emitter.emit(Event::DriverDestroyed {
        driver: "container".into(),
    });
    // The runner says passed; the failed stage must still win.
    emitter.emit(Event::BuildEnd {
        status: BuildStatus::Passed,
        duration_ms: 1400,
    });
}

fn kiln(store: &Path) -> Command {
    let mut command = Command::cargo_bin("kiln").unwrap();
    command.arg("--store").arg(store);
    command
}

fn stdout(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn failure(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{command:?}: {output:?}");
    String::from_utf8(output.stderr).unwrap()
}

/// Replaces RFC 3339 timestamps (`2026-11-22T01:33:43Z`) by a placeholder
/// of the same length.
fn mask_times(text: &str) -> String {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:ddZ";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < bytes.len() {
        let matches = bytes.len() - at >= SHAPE.len()
            && SHAPE
                .iter()
                .zip(&bytes[at..])
                .all(|(shape, byte)| match shape {
                    b'd' => byte.is_ascii_digit(),
                    other => other == byte,
                });
        if matches {
            out.push_str("YYYY-MM-DDTHH:MM:SSZ");
            at += SHAPE.len();
        } else {
            let ch = text[at..].chars().next().unwrap();
            out.push(ch);
            at += ch.len_utf8();
        }
    }
    out
}

fn run_build(store_dir: &Path, objects: &Objects) -> i64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let options = LocalOptions {
            json: false,
            console: ConsoleMode::Off,
            quiet: false,
        };
        let bus = LocalBus::start(
            store_dir,
            "demo",
            Path::new("/src/demo/build.kiln"),
            &options,
        )
        .unwrap();
        let build = bus.build();
        let emitter = bus.emitter();
        // From another task, as the scheduler's jobs would.
        let objects_emitter = emitter.clone();
        let objects = *objects;
        let done = tokio::task::spawn_blocking(move || emit_build(&objects_emitter, &objects));
        done.await.unwrap();
        bus.finish().await.unwrap();
        build
    })
}

#[test]
fn a_persisted_build_reads_back_through_the_cli() {
    let scratch = tempfile::tempdir().unwrap();
    let store_dir = scratch.path().join("store");
    let (objects, roots) = store_objects(&store_dir, scratch.path());
    let build = run_build(&store_dir, &objects);
    drop(roots);
    Store::open(&store_dir).unwrap().sweep().unwrap();
    assert_eq!(build, 1);

    let builds = mask_times(&stdout(kiln(&store_dir).arg("builds")));
    assert!(
        builds.starts_with("BUILD  STATUS  STARTED               DURATION  PINNED\n"),
        "{builds}"
    );
    assert!(
        builds.contains("\n1      failed  YYYY-MM-DDTHH:MM:SSZ  "),
        "{builds}"
    );

    let show = mask_times(&stdout(kiln(&store_dir).args(["show", "last"])));
    let show = show.replacen(
        &show[show.find("took ").unwrap()..show.find('\n').unwrap()],
        "took T",
        1,
    );
    expect![[r#"
        build 1: failed, started YYYY-MM-DDTHH:MM:SSZ, took T
        manifest: /src/demo/build.kiln

        JOB      STAGE    STATUS   DURATION  CACHED
        compile  build    passed   1.2s      no
        lint     build    cached   0ms       yes
        test     test     failed   80ms      no
        package  package  skipped  -         no

        test: exit code 1
        package: stage test failed

        2 artifact(s): kiln artifacts 1
    "#]]
    .assert_eq(&show);

    let json: serde_json::Value =
        serde_json::from_str(&stdout(kiln(&store_dir).args(["show", "1", "--json"]))).unwrap();
    assert_eq!(json["status"], "failed");
    assert_eq!(json["jobs"][1]["job"], "lint");
    assert_eq!(json["jobs"][1]["cached"], true);
    assert_eq!(
        json["jobs"][0]["log"],
        objects.compile_log.digest.to_string()
    );
    assert_eq!(json["pid"], std::process::id());

    assert_eq!(
        stdout(kiln(&store_dir).args(["log", "1", "test"])),
        "running 2 tests\ntest_two: FAILED\n"
    );
    expect![[r#"
        ==> compile (passed) <==
        cc -o app main.c
        ==> lint (cached) <==
        lint ok
        ==> test (failed) <==
        running 2 tests
        test_two: FAILED
        ==> package (skipped) <==
        (no log)
    "#]]
    .assert_eq(&stdout(kiln(&store_dir).args(["log", "last"])));
    let error = failure(kiln(&store_dir).args(["log", "1", "deploy"]));
    assert!(
        error.contains("build 1 has no job \"deploy\" (its jobs: compile, lint, test, package)"),
        "{error}"
    );
    let error = failure(kiln(&store_dir).args(["log", "1", "package"]));
    assert!(
        error.contains("job package of build 1 has no recorded log"),
        "{error}"
    );

    let artifacts = stdout(kiln(&store_dir).args(["artifacts", "1"]));
    assert!(artifacts.starts_with("NAME  KIND  SIZE"), "{artifacts}");
    assert!(
        artifacts.contains(&format!("app   blob  15 B  {}", objects.app.digest)),
        "{artifacts}"
    );
    assert!(
        artifacts.contains("docs  tree") && artifacts.contains(&objects.docs.digest.to_string()),
        "{artifacts}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(kiln(&store_dir).args(["artifacts", "1", "--json"]))).unwrap();
    assert_eq!(listed[1]["kind"], "tree");

    let out = scratch.path().join("out");
    fs::create_dir(&out).unwrap();
    stdout(
        kiln(&store_dir)
            .args(["artifacts", "get", "1", "app", "-o"])
            .arg(out.join("app")),
    );
    assert_eq!(fs::read(out.join("app")).unwrap(), b"\x7fELF app binary");
    stdout(
        kiln(&store_dir)
            .args(["artifacts", "get", "last", "docs", "-o"])
            .arg(out.join("docs")),
    );
    assert_eq!(
        fs::read_to_string(out.join("docs/api/main.html")).unwrap(),
        "<p>main</p>\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("docs/index.html")).unwrap(),
        "<h1>app</h1>\n"
    );
    let error = failure(
        kiln(&store_dir)
            .args(["artifacts", "get", "1", "sbom", "-o"])
            .arg(out.join("x")),
    );
    assert!(
        error.contains("build 1 has no artifact \"sbom\" (its artifacts: app, docs)"),
        "{error}"
    );
    assert!(!out.join("x").exists());

    stdout(kiln(&store_dir).args(["pin", "1"]));
    assert!(stdout(kiln(&store_dir).arg("builds")).contains("pinned"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(
            kiln(&store_dir).args(["builds", "--json"])
        ))
        .unwrap()[0]["pinned"],
        true
    );
    stdout(kiln(&store_dir).args(["unpin", "last"]));
    assert!(!stdout(kiln(&store_dir).arg("builds")).contains("pinned"));

    for args in [
        ["show", "7"],
        ["pin", "7"],
        ["artifacts", "7"],
        ["log", "7"],
    ] {
        let error = failure(kiln(&store_dir).args(args));
        assert!(error.contains("no build 7"), "{args:?}: {error}");
    }

    // What `kiln explain` diffs against.
    let store = Store::open(&store_dir).unwrap();
    let history = store
        .last_key_inputs("/src/demo/build.kiln", "compile")
        .unwrap()
        .unwrap();
    assert_eq!(history.inputs, key_inputs("compile", "cc -o app main.c"));
    assert_eq!(history.build, BuildId(1));
    // Every event but output lines is recorded, in order, with its JSON.
    let events = store.build_events(BuildId(1)).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"build/queued"));
    assert_eq!(kinds.last(), Some(&"build/status"));
    assert!(!kinds.contains(&"job/output"));
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    // The same envelopes come back out, one JSON line each.
    let lines = stdout(kiln(&store_dir).args(["show", "1", "--events"]));
    let replayed: Vec<kiln::events::Envelope> = lines
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(replayed.len(), events.len());
    assert_eq!(replayed[0].event.kind(), "build/queued");
    drop(store);
    let mut store = Store::open(&store_dir).unwrap();
    assert!(
        store
            .fsck(&kiln_store::FsckOptions::default())
            .unwrap()
            .is_clean()
    );
}

#[test]
fn a_running_build_whose_process_is_gone_says_so() {
    let scratch = tempfile::tempdir().unwrap();
    let store_dir = scratch.path().join("store");
    let mut store = Store::open(&store_dir).unwrap();
    let build = store.create_build("demo").unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let batch = kiln_store::BuildBatch {
        process: Some((dead_pid, kiln::events::local::hostname())),
        ..kiln_store::BuildBatch::default()
    };
    store.record_build_batch(build, &batch).unwrap();
    let builds = stdout(kiln(&store_dir).arg("builds"));
    assert!(builds.contains("running (process gone)"), "{builds}");
    let show = stdout(kiln(&store_dir).args(["show", "1"]));
    assert!(
        show.contains(&format!(
            "its kiln process {dead_pid} is gone without finishing"
        )),
        "{show}"
    );
    // A live process is just running.
    let batch = kiln_store::BuildBatch {
        process: Some((std::process::id(), kiln::events::local::hostname())),
        ..kiln_store::BuildBatch::default()
    };
    store.record_build_batch(build, &batch).unwrap();
    let builds = stdout(kiln(&store_dir).arg("builds"));
    assert!(
        builds.contains("running  ") && !builds.contains("gone"),
        "{builds}"
    );
}
