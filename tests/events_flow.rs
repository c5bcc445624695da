//! The event flow end to end: a real bus with the real interceptors.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use expect_test::expect;
use kiln::events::console::{LiveConsole, PlainConsole};
use kiln::events::handlers::BuildStatusHandler;
use kiln::events::json::JsonLines;
use kiln::events::persist::Persist;
use kiln::events::{
    B3Digest, BuildStatus, Emitter, Envelope, Event, EventBus, JobStatus, Route, Router,
};
use kiln_store::Store;

/// A writer the test can read back after the interceptor is gone.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A small build: two stages, a cached job, output lines, a timeout.
fn emit_small_build(emitter: &Emitter) {
    emitter.emit(Event::BuildStart {
        stages: vec!["build".into(), "test".into()],
        jobs: 3,
    });
    emitter.emit(Event::JobCached {
        job: "deps".into(),
        stage: "build".into(),
        key: B3Digest::of(b"deps"),
        key_inputs: None,
        output_layer: B3Digest::of(b"layer"),
        log: None,
    });
    emitter.emit(Event::JobStart {
        job: "compile".into(),
        stage: "build".into(),
        key: Some(B3Digest::of(b"compile")),
        key_inputs: None,
    });
    for line in ["cc -c main.c", "cc -o app main.o"] {
        emitter.emit(Event::JobOutput {
            job: "compile".into(),
            line: line.into(),
        });
    }
    emitter.emit(Event::JobEnd {
        job: "compile".into(),
        stage: "build".into(),
        status: JobStatus::Passed,
        duration_ms: 1234,
        exit_code: Some(0),
        log: None,
        output_layer: None,
        message: None,
    });
    emitter.emit(Event::StageEnd {
        stage: "build".into(),
        status: BuildStatus::Passed,
    });
    emitter.emit(Event::Warning {
        job: Some("soak".into()),
        message: "object ./data.bin is missing".into(),
    });
    emitter.emit(Event::JobStart {
        job: "soak".into(),
        stage: "test".into(),
        key: None,
        key_inputs: None,
    });
    emitter.emit(Event::JobEnd {
        job: "soak".into(),
        stage: "test".into(),
        status: JobStatus::TimedOut,
        duration_ms: 61_000,
        exit_code: None,
        log: None,
        output_layer: None,
        message: Some("job timeout of 1m reached".into()),
    });
    emitter.emit(Event::StageEnd {
        stage: "test".into(),
        status: BuildStatus::TimedOut,
    });
    emitter.emit(Event::BuildEnd {
        status: BuildStatus::Passed,
        duration_ms: 62_300,
    });
}

fn run_small_build(router: Router) {
    runtime().block_on(async {
        let bus = EventBus::start(3, router).unwrap();
        emit_small_build(&bus.emitter());
        bus.finish().await.unwrap();
    });
}

#[test]
fn plain_console_lines() {
    for (quiet, expected) in [
        (
            false,
            expect![[r#"
                [build 3] started: 3 job(s) in 2 stage(s)
                [build 3] job deps: cached
                [build 3] job compile: running
                [build 3] compile | cc -c main.c
                [build 3] compile | cc -o app main.o
                [build 3] job compile: passed (1.2s)
                [build 3] warning: job soak: object ./data.bin is missing
                [build 3] job soak: running
                [build 3] job soak: timed out (1m01s): job timeout of 1m reached
                [build 3] stage test: timed out
                [build 3] build timed out
                JOB      STAGE  STATUS     DURATION  CACHED
                deps     build  cached          0ms  yes
                compile  build  passed         1.2s  no
                soak     test   timed out     1m01s  no
                build 3 timed out: 1 passed, 1 cached, 0 failed, 0 skipped, 1 timed out
            "#]],
        ),
        (
            true,
            expect![[r#"
                [build 3] started: 3 job(s) in 2 stage(s)
                [build 3] job deps: cached
                [build 3] job compile: running
                [build 3] job compile: passed (1.2s)
                [build 3] warning: job soak: object ./data.bin is missing
                [build 3] job soak: running
                [build 3] job soak: timed out (1m01s): job timeout of 1m reached
                [build 3] stage test: timed out
                [build 3] build timed out
                JOB      STAGE  STATUS     DURATION  CACHED
                deps     build  cached          0ms  yes
                compile  build  passed         1.2s  no
                soak     test   timed out     1m01s  no
                build 3 timed out: 1 passed, 1 cached, 0 failed, 0 skipped, 1 timed out
            "#]],
        ),
    ] {
        let out = Shared::default();
        let router = Router::new()
            .handler(BuildStatusHandler::ROUTE, BuildStatusHandler::default())
            .interceptor(Route::All, PlainConsole::new(out.clone(), quiet));
        run_small_build(router);
        expected.assert_eq(&out.text());
    }
}

#[test]
fn json_lines_are_the_envelopes() {
    let out = Shared::default();
    let router = Router::new()
        .handler(BuildStatusHandler::ROUTE, BuildStatusHandler::default())
        .interceptor(Route::All, JsonLines::new(out.clone()));
    run_small_build(router);
    let text = out.text();
    let envelopes: Vec<Envelope> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // 12 emitted plus two derived build/status events.
    assert_eq!(envelopes.len(), 14, "{text}");
    assert!(
        envelopes
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1 && e.build == 3)
    );
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"]["type"], "build/start");
    assert_eq!(
        envelopes.last().unwrap().event,
        Event::BuildStatusChanged {
            status: BuildStatus::TimedOut
        }
    );
}

#[test]
fn a_thousand_cached_jobs_persist_in_well_under_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let roots = store.temp_roots().unwrap();
    let logs: Vec<B3Digest> = (0..10)
        .map(|n| {
            store
                .add_bytes(format!("log {n}\n").as_bytes(), &roots)
                .unwrap()
                .object
                .digest
        })
        .collect();
    let build = store.create_build("bench").unwrap();
    drop(store);
    let router = Router::new()
        .handler(BuildStatusHandler::ROUTE, BuildStatusHandler::default())
        .interceptor(Route::All, Persist::open(dir.path(), build).unwrap());
    let elapsed = runtime().block_on(async {
        let started = Instant::now();
        let bus = EventBus::start(build.0, router).unwrap();
        let emitter = bus.emitter();
        emitter.emit(Event::BuildQueued {
            owner: "bench".into(),
            manifest: "/bench/build.kiln".into(),
        });
        emitter.emit(Event::BuildStart {
            stages: vec!["all".into()],
            jobs: 1000,
        });
        for n in 0..1000u32 {
            emitter.emit(Event::JobQueued {
                job: format!("job-{n:04}"),
                stage: "all".into(),
                needs: Vec::new(),
            });
        }
        for n in 0..1000u32 {
            emitter.emit(Event::JobCached {
                job: format!("job-{n:04}"),
                stage: "all".into(),
                key: B3Digest::of(&n.to_le_bytes()),
                key_inputs: Some(serde_json::json!({"version": 1, "script": format!("make {n}")})),
                output_layer: B3Digest::of(b"empty layer"),
                log: Some(logs[n as usize % logs.len()]),
            });
        }
        emitter.emit(Event::StageEnd {
            stage: "all".into(),
            status: BuildStatus::Passed,
        });
        emitter.emit(Event::BuildEnd {
            status: BuildStatus::Passed,
            duration_ms: 1,
        });
        let report = bus.finish().await.unwrap();
        let elapsed = started.elapsed();
        eprintln!(
            "1,000 cached jobs: {} events persisted in {elapsed:?} ({} flushes)",
            report.events, report.flushes
        );
        elapsed
    });
    assert!(elapsed.as_millis() < 1000, "took {elapsed:?}");
    drop(roots);
    let store = Store::open(dir.path()).unwrap();
    let jobs = store.build_jobs(build).unwrap();
    assert_eq!(jobs.len(), 1000);
    assert!(jobs.iter().all(|job| job.cached && job.status == "cached"));
    assert_eq!(jobs[999].name, "job-0999");
    assert_eq!(store.build(build).unwrap().status, BuildStatus::Passed);
    // 2,004 emitted, plus build/status at the start and at the end.
    assert_eq!(store.build_events(build).unwrap().len(), 2006);
    assert!(
        store
            .last_key_inputs("/bench/build.kiln", "job-0500")
            .unwrap()
            .is_some()
    );
}

/// Run by `live_console_under_a_pseudo_terminal` inside `script`: a live
/// console on the real stderr, which is then a terminal.
#[test]
#[ignore = "run inside a pseudo-terminal by live_console_under_a_pseudo_terminal"]
fn live_console_child() {
    assert!(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let router = Router::new()
        .handler(BuildStatusHandler::ROUTE, BuildStatusHandler::default())
        .interceptor(Route::All, LiveConsole::new(false));
    runtime().block_on(async {
        let bus = EventBus::start(3, router).unwrap();
        let emitter = bus.emitter();
        emitter.emit(Event::BuildQueued {
            owner: "o".into(),
            manifest: "m".into(),
        });
        emitter.emit(Event::BuildStart {
            stages: vec!["build".into()],
            jobs: 2,
        });
        emitter.emit(Event::JobStart {
            job: "slowjob".into(),
            stage: "build".into(),
            key: None,
            key_inputs: None,
        });
        // Long enough for the spinner line to be drawn with its elapsed time.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        emit_small_build(&emitter);
        bus.finish().await.unwrap();
    });
}

#[test]
fn live_console_under_a_pseudo_terminal() {
    assert!(
        std::process::Command::new("script")
            .arg("--version")
            .output()
            .is_ok(),
        "this test needs `script` (Debian's bsdutils; scripts/test.sh installs it)"
    );
    let me = std::env::current_exe().unwrap();
    let command = format!(
        "{} --exact live_console_child --ignored --nocapture --test-threads=1",
        me.display()
    );
    let output = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    // While running: the job's line with its spinner prefix and name.
    assert!(text.contains("slowjob (build)"), "{text}");
    // Failures and warnings are printed above the live lines.
    assert!(
        text.contains("warning: job soak: object ./data.bin is missing"),
        "{text}"
    );
    assert!(
        text.contains("job soak: timed out (1m01s): job timeout of 1m reached"),
        "{text}"
    );
    // The final summary table.
    let summary = &text[text.find("JOB ").expect("a summary table")..];
    let summary: Vec<&str> = summary.lines().map(str::trim_end).take(6).collect();
    assert_eq!(
        summary[..5],
        [
            "JOB      STAGE  STATUS     DURATION  CACHED",
            "slowjob  build  running           -  no",
            "deps     build  cached          0ms  yes",
            "compile  build  passed         1.2s  no",
            "soak     test   timed out     1m01s  no",
        ]
    );
    let last = summary[5];
    assert!(
        last.starts_with("build 3 timed out in ")
            && last.ends_with(": 1 passed, 1 cached, 0 failed, 0 skipped, 1 timed out"),
        "{last}"
    );
}

#[test]
fn a_flow_that_ends_without_build_end_is_recorded_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let build = Store::open(dir.path()).unwrap().create_build("o").unwrap();
    let router = Router::new()
        .handler(BuildStatusHandler::ROUTE, BuildStatusHandler::default())
        .interceptor(Route::All, Persist::open(dir.path(), build).unwrap());
    runtime().block_on(async {
        let bus = EventBus::start(build.0, router).unwrap();
        bus.emitter().emit(Event::BuildStart {
            stages: vec!["s".into()],
            jobs: 1,
        });
        bus.finish().await.unwrap();
    });
    let store = Store::open(dir.path()).unwrap();
    let record = store.build(build).unwrap();
    assert_eq!(record.status, BuildStatus::Failed);
    assert!(record.finished.is_some());
}
