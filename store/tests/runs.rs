//! Build job records, events and key history on a real store.

use kiln_store::{
    B3Digest, BuildBatch, BuildId, BuildStatus, FsckOptions, JobUpdate, ObjectRef, Store,
    StoreError, StoredEvent,
};

fn job(name: &str, position: i64, status: &str) -> JobUpdate {
    JobUpdate {
        name: name.into(),
        stage: "build".into(),
        position,
        status: status.into(),
        ..JobUpdate::default()
    }
}

#[test]
fn a_batch_records_jobs_events_artifacts_process_and_status_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let roots = store.temp_roots().unwrap();
    let log = store.add_bytes(b"compiling\nok\n", &roots).unwrap().object;
    let artifact = store.add_bytes(b"\x7fELF", &roots).unwrap().object;
    let build = store.create_build("project").unwrap();

    let mut start = job("compile", 1, "running");
    start.key = Some(B3Digest::of(b"key"));
    start.key_inputs = Some(serde_json::json!({"script": "cc"}));
    start.started = Some(10);
    let first = BuildBatch {
        manifest: Some("/p/build.kiln".into()),
        process: Some((4242, "box".into())),
        jobs: vec![start, job("test", 2, "queued")],
        events: vec![StoredEvent {
            build,
            seq: 1,
            time: 10,
            kind: "job/start".into(),
            body: "{}".into(),
        }],
        ..BuildBatch::default()
    };
    assert!(
        store
            .record_build_batch(build, &first)
            .unwrap()
            .skipped
            .is_empty()
    );
    let record = store.build(build).unwrap();
    assert_eq!(record.pid, Some(4242));
    assert_eq!(record.host.as_deref(), Some("box"));
    assert_eq!(record.manifest.as_deref(), Some("/p/build.kiln"));

    let mut end = job("compile", 1, "passed");
    end.finished = Some(1210);
    end.duration_ms = Some(1200);
    end.exit_code = Some(0);
    end.log = Some(log.digest);
    let second = BuildBatch {
        status: Some(BuildStatus::Passed),
        jobs: vec![end],
        artifacts: vec![("app".into(), artifact)],
        ..BuildBatch::default()
    };
    store.record_build_batch(build, &second).unwrap();

    let jobs = store.build_jobs(build).unwrap();
    assert_eq!(jobs.len(), 2);
    let compile = &jobs[0];
    assert_eq!(compile.name, "compile");
    assert_eq!(compile.status, "passed");
    // Fields not in the second update keep their first values.
    assert_eq!(compile.key, Some(B3Digest::of(b"key")));
    assert_eq!(compile.started, Some(10));
    assert_eq!(compile.duration_ms, Some(1200));
    assert_eq!(compile.log, Some(log.digest));
    assert_eq!(jobs[1].name, "test");
    assert_eq!(store.build(build).unwrap().status, BuildStatus::Passed);
    assert!(store.build(build).unwrap().finished.is_some());
    assert_eq!(store.artifacts(build).unwrap()[0].name, "app");
    assert_eq!(store.build_events(build).unwrap().len(), 1);

    let history = store
        .last_key_inputs("/p/build.kiln", "compile")
        .unwrap()
        .unwrap();
    assert_eq!(history.inputs["script"], "cc");
    assert_eq!(history.build, build);
    assert!(
        store
            .last_key_inputs("/p/build.kiln", "test")
            .unwrap()
            .is_none()
    );
    assert_eq!(store.last_build().unwrap(), Some(build));

    // The log and the artifact outlive the temporary roots that made them.
    drop(roots);
    store.sweep().unwrap();
    assert_eq!(store.blob_bytes(&log.digest).unwrap(), b"compiling\nok\n");
    assert!(store.fsck(&FsckOptions::default()).unwrap().is_clean());
}

#[test]
fn missing_objects_are_reported_and_the_rest_of_the_batch_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let build = store.create_build("project").unwrap();
    let ghost = B3Digest::of(b"never stored");
    let mut end = job("compile", 1, "failed");
    end.log = Some(ghost);
    let batch = BuildBatch {
        jobs: vec![end],
        artifacts: vec![("ghost".into(), ObjectRef::blob(ghost))],
        ..BuildBatch::default()
    };
    let report = store.record_build_batch(build, &batch).unwrap();
    assert_eq!(report.skipped.len(), 2, "{report:?}");
    let compile = store.build_job(build, "compile").unwrap().unwrap();
    assert_eq!(compile.status, "failed");
    assert_eq!(compile.log, None);
    assert!(store.artifacts(build).unwrap().is_empty());
    assert!(store.fsck(&FsckOptions::default()).unwrap().is_clean());
}

#[test]
fn an_unknown_build_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let batch = BuildBatch {
        status: Some(BuildStatus::Failed),
        ..BuildBatch::default()
    };
    match store.record_build_batch(BuildId(99), &batch) {
        Err(StoreError::UnknownBuild(99)) => {}
        other => panic!("expected UnknownBuild(99), got {other:?}"),
    }
    assert_eq!(store.last_build().unwrap(), None);
}

#[test]
fn a_replaced_log_moves_its_reference_and_full_gc_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let roots = store.temp_roots().unwrap();
    let first = store.add_bytes(b"first log", &roots).unwrap().object;
    let second = store.add_bytes(b"second log", &roots).unwrap().object;
    let build = store.create_build("project").unwrap();
    for log in [first, second] {
        let mut update = job("compile", 1, "passed");
        update.log = Some(log.digest);
        let batch = BuildBatch {
            jobs: vec![update],
            ..BuildBatch::default()
        };
        store.record_build_batch(build, &batch).unwrap();
    }
    drop(roots);
    let gc = store.gc_full().unwrap();
    assert_eq!(gc.refcounts_repaired, 0, "{gc:?}");
    assert!(store.blob_bytes(&second.digest).is_ok());
    assert!(
        store.blob_bytes(&first.digest).is_err(),
        "the replaced log was swept"
    );
}

#[test]
fn a_version_1_store_is_migrated_and_keeps_its_builds() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(dir.path()).unwrap();
        let build = store.create_build("old").unwrap();
        store.set_build_status(build, BuildStatus::Passed).unwrap();
    }
    // Turn the index back into what a version-1 kiln wrote: undo version 3
    // (inline chunk bytes back in `chunks`), then version 2 (build records).
    {
        let conn = rusqlite::Connection::open(dir.path().join("index.sqlite")).unwrap();
        conn.execute_batch(
            "DROP TRIGGER chunks_delete_data;
             CREATE TABLE chunks_v1(
                 digest BLOB PRIMARY KEY, size INTEGER NOT NULL,
                 stored INTEGER NOT NULL, refs INTEGER NOT NULL DEFAULT 0, data BLOB
             ) WITHOUT ROWID;
             INSERT INTO chunks_v1 SELECT c.digest, c.size, c.stored, c.refs, d.data
                 FROM chunks c LEFT JOIN chunk_data d ON d.digest = c.digest;
             DROP TABLE chunks; DROP TABLE chunk_data;
             ALTER TABLE chunks_v1 RENAME TO chunks;
             CREATE INDEX chunks_unreferenced ON chunks(digest) WHERE refs <= 0;
             DROP TABLE build_jobs; DROP TABLE events; DROP TABLE key_history;
             DROP TABLE submissions; DROP TABLE tokens; DROP INDEX builds_by_status;
             ALTER TABLE builds DROP COLUMN manifest;
             ALTER TABLE builds DROP COLUMN pid;
             ALTER TABLE builds DROP COLUMN host;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let mut store = Store::open(dir.path()).unwrap();
    let old = store.build(BuildId(1)).unwrap();
    assert_eq!(old.status, BuildStatus::Passed);
    assert_eq!(old.pid, None);
    assert!(store.build_jobs(BuildId(1)).unwrap().is_empty());
    let batch = BuildBatch {
        jobs: vec![job("compile", 1, "passed")],
        ..BuildBatch::default()
    };
    store.record_build_batch(BuildId(1), &batch).unwrap();
    assert_eq!(store.build_jobs(BuildId(1)).unwrap().len(), 1);
    assert!(store.fsck(&FsckOptions::default()).unwrap().is_clean());
}
