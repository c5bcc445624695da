//! What happened in builds: their jobs, events, process, and the key inputs
//! of each job's last run. Written in batches, one transaction each.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::digest::B3Digest;
use crate::error::{Result, StoreError};
use crate::object::{ObjectRef, add_refs, now_millis, object_size};
use crate::records::{BuildId, BuildStatus};
use crate::store::Store;

/// A job of a build as recorded. `status` is the job status's snake_case
/// name (`passed`, `cached`, `timed_out`, ...): the store does not interpret it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BuildJob {
    pub build: BuildId,
    pub name: String,
    pub stage: String,
    /// Order in which the build first mentioned the job.
    pub position: i64,
    pub status: String,
    pub key: Option<B3Digest>,
    pub key_inputs: Option<serde_json::Value>,
    /// Unix milliseconds.
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub duration_ms: Option<u64>,
    pub cached: bool,
    /// A blob: the job's whole output.
    pub log: Option<B3Digest>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
}

/// A change to a build's job: `None` fields keep what is recorded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobUpdate {
    pub name: String,
    pub stage: String,
    /// Used when the job is first recorded.
    pub position: i64,
    pub status: String,
    pub key: Option<B3Digest>,
    pub key_inputs: Option<serde_json::Value>,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub duration_ms: Option<u64>,
    pub cached: Option<bool>,
    pub log: Option<B3Digest>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
}

/// A recorded event: its JSON envelope and where it sits in its build.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredEvent {
    pub build: BuildId,
    pub seq: u64,
    pub time: i64,
    pub kind: String,
    pub body: String,
}

/// The key inputs recorded for a job of a manifest by its last run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KeyHistory {
    pub manifest: String,
    pub job: String,
    pub build: BuildId,
    pub key: Option<B3Digest>,
    pub inputs: serde_json::Value,
    pub recorded: i64,
}

/// Writes for one build, committed together by [`Store::record_build_batch`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BuildBatch {
    pub manifest: Option<String>,
    /// The process running the build (for `kiln kill`): pid and host.
    pub process: Option<(u32, String)>,
    pub status: Option<BuildStatus>,
    pub jobs: Vec<JobUpdate>,
    /// `(name, object)`: artifacts of the build.
    pub artifacts: Vec<(String, ObjectRef)>,
    pub events: Vec<StoredEvent>,
}

impl BuildBatch {
    pub fn is_empty(&self) -> bool {
        self == &BuildBatch::default()
    }
}

/// What a batch could not record without failing the rest (the batch is
/// still committed): e.g. an artifact whose object is not in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub skipped: Vec<String>,
}

const BUILD_JOB_COLUMNS: &str = "build, name, stage, position, status, key, key_inputs, \
     started, finished, duration_ms, cached, log, exit_code, message";

type RawJob = (
    i64,
    String,
    String,
    i64,
    String,
    Option<B3Digest>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    bool,
    Option<B3Digest>,
    Option<i32>,
    Option<String>,
);

fn raw_job(row: &Row<'_>) -> rusqlite::Result<RawJob> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
        row.get(11)?,
        row.get(12)?,
        row.get(13)?,
    ))
}

fn parse_job(raw: RawJob) -> Result<BuildJob> {
    let (
        build,
        name,
        stage,
        position,
        status,
        key,
        key_inputs,
        started,
        finished,
        duration_ms,
        cached,
        log,
        exit_code,
        message,
    ) = raw;
    let key_inputs = key_inputs
        .map(|text| {
            serde_json::from_str(&text).map_err(|e| StoreError::CorruptRecord {
                what: format!("job {name} of build {build}"),
                reason: format!("key inputs unreadable: {e}"),
            })
        })
        .transpose()?;
    Ok(BuildJob {
        build: BuildId(build),
        name,
        stage,
        position,
        status,
        key,
        key_inputs,
        started,
        finished,
        duration_ms: duration_ms.map(|ms| ms.max(0) as u64),
        cached,
        log,
        exit_code,
        message,
    })
}

fn build_exists(conn: &Connection, build: BuildId) -> Result<()> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM builds WHERE id = ?1")?
        .exists([build.0])?;
    if exists {
        Ok(())
    } else {
        Err(StoreError::UnknownBuild(build.0))
    }
}

fn apply_job(
    conn: &Connection,
    build: BuildId,
    manifest: Option<&str>,
    job: &JobUpdate,
    report: &mut BatchReport,
) -> Result<()> {
    let old_log: Option<Option<B3Digest>> = conn
        .prepare_cached("SELECT log FROM build_jobs WHERE build = ?1 AND name = ?2")?
        .query_row(params![build.0, job.name], |row| row.get(0))
        .optional()?;
    let mut log = job.log;
    if let Some(digest) = log
        && object_size(conn, ObjectRef::blob(digest))?.is_none()
    {
        report.skipped.push(format!(
            "log of job {} of build {}: blob {digest} is not in the store",
            job.name, build
        ));
        log = None;
    }
    let key_inputs = job
        .key_inputs
        .as_ref()
        .map(|value| serde_json::to_string(value).unwrap_or_else(|_| "null".into()));
    conn.prepare_cached(
        "INSERT INTO build_jobs(build, name, stage, position, status, key, key_inputs, started, \
             finished, duration_ms, cached, log, exit_code, message) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, COALESCE(?11, 0), ?12, ?13, ?14) \
         ON CONFLICT(build, name) DO UPDATE SET \
             stage = ?3, status = ?5, key = COALESCE(?6, key), \
             key_inputs = COALESCE(?7, key_inputs), started = COALESCE(?8, started), \
             finished = COALESCE(?9, finished), duration_ms = COALESCE(?10, duration_ms), \
             cached = COALESCE(?11, cached), log = COALESCE(?12, log), \
             exit_code = COALESCE(?13, exit_code), message = COALESCE(?14, message)",
    )?
    .execute(params![
        build.0,
        job.name,
        job.stage,
        job.position,
        job.status,
        job.key,
        key_inputs,
        job.started,
        job.finished,
        job.duration_ms.map(|ms| ms.min(i64::MAX as u64) as i64),
        job.cached,
        log,
        job.exit_code,
        job.message,
    ])?;
    if let Some(new) = log {
        let old = old_log.flatten();
        if old != Some(new) {
            add_refs(conn, ObjectRef::blob(new), 1)?;
            if let Some(old) = old {
                add_refs(conn, ObjectRef::blob(old), -1)?;
            }
        }
    }
    if let (Some(manifest), Some(inputs)) = (manifest, key_inputs) {
        conn.prepare_cached(
            "INSERT INTO key_history(manifest, job, build, key, inputs, recorded) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT(manifest, job) DO UPDATE SET build = ?3, key = ?4, inputs = ?5, recorded = ?6",
        )?
        .execute(params![manifest, job.name, build.0, job.key, inputs, now_millis()])?;
    }
    Ok(())
}

impl Store {
    /// Records a batch of what happened in `build`, in one transaction.
    pub fn record_build_batch(
        &mut self,
        build: BuildId,
        batch: &BuildBatch,
    ) -> Result<BatchReport> {
        let mut report = BatchReport::default();
        if batch.is_empty() {
            return Ok(report);
        }
        let tx = self.write_tx()?;
        build_exists(&tx, build)?;
        if let Some(manifest) = &batch.manifest {
            tx.execute(
                "UPDATE builds SET manifest = ?2 WHERE id = ?1",
                params![build.0, manifest],
            )?;
        }
        if let Some((pid, host)) = &batch.process {
            tx.execute(
                "UPDATE builds SET pid = ?2, host = ?3 WHERE id = ?1",
                params![build.0, pid, host],
            )?;
        }
        let manifest: Option<String> = tx
            .prepare_cached("SELECT manifest FROM builds WHERE id = ?1")?
            .query_row([build.0], |row| row.get(0))?;
        for job in &batch.jobs {
            apply_job(&tx, build, manifest.as_deref(), job, &mut report)?;
        }
        let now = now_millis();
        for (name, object) in &batch.artifacts {
            let Some(size) = object_size(&tx, *object)? else {
                report.skipped.push(format!(
                    "artifact {name} of build {build}: {object} is not in the store"
                ));
                continue;
            };
            tx.prepare_cached(
                "INSERT INTO artifacts(build, name, object_kind, digest, size, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                build.0,
                name,
                object.kind.code(),
                object.digest,
                size as i64,
                now
            ])?;
            add_refs(&tx, *object, 1)?;
        }
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO events(build, seq, time, type, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for event in &batch.events {
                insert.execute(params![
                    build.0,
                    event.seq.min(i64::MAX as u64) as i64,
                    event.time,
                    event.kind,
                    event.body
                ])?;
            }
        }
        if let Some(status) = batch.status {
            let finished = status.is_finished().then_some(now);
            tx.execute(
                "UPDATE builds SET status = ?2, finished = COALESCE(?3, finished) WHERE id = ?1",
                params![build.0, status.as_str(), finished],
            )?;
        }
        tx.commit()?;
        Ok(report)
    }

    /// The jobs of `build`, in the order the build first mentioned them.
    pub fn build_jobs(&self, build: BuildId) -> Result<Vec<BuildJob>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {BUILD_JOB_COLUMNS} FROM build_jobs WHERE build = ?1 ORDER BY position, name"
        ))?;
        let rows = stmt.query_map([build.0], raw_job)?;
        rows.map(|row| parse_job(row?)).collect()
    }

    pub fn build_job(&self, build: BuildId, name: &str) -> Result<Option<BuildJob>> {
        let raw = self
            .conn
            .prepare_cached(&format!(
                "SELECT {BUILD_JOB_COLUMNS} FROM build_jobs WHERE build = ?1 AND name = ?2"
            ))?
            .query_row(params![build.0, name], raw_job)
            .optional()?;
        raw.map(parse_job).transpose()
    }

    /// The newest run of `job` before `build` in a build of the same
    /// manifest that recorded the job's key inputs (it ran or was cached):
    /// what `kiln explain JOB --build N` compares with.
    pub fn previous_job_run(&self, build: BuildId, job: &str) -> Result<Option<BuildJob>> {
        let raw = self
            .conn
            .prepare_cached(&format!(
                "SELECT {BUILD_JOB_COLUMNS} FROM build_jobs \
                 WHERE name = ?2 AND build < ?1 AND key_inputs IS NOT NULL \
                 AND build IN (SELECT id FROM builds \
                     WHERE manifest = (SELECT manifest FROM builds WHERE id = ?1)) \
                 ORDER BY build DESC LIMIT 1"
            ))?
            .query_row(params![build.0, job], raw_job)
            .optional()?;
        raw.map(parse_job).transpose()
    }

    /// Deletes the records of a finished, unpinned build: the build, its
    /// jobs, events and artifacts; the objects they alone kept (logs,
    /// artifacts) go at the next sweep. A running build (its process holds
    /// its lease) and a pinned one are refused. Job results stay: they
    /// belong to the cache, not to the build.
    pub fn delete_build(&mut self, build: BuildId) -> Result<()> {
        let record = self.build(build)?;
        if !record.status.is_finished()
            && crate::sessions::lease_state(&self.dir, &crate::sessions::build_lease_name(build.0))?
                != crate::sessions::LeaseState::Free
        {
            return Err(StoreError::BuildRunning(build.0));
        }
        if record.pinned {
            return Err(StoreError::BuildPinned(build.0));
        }
        let tx = self.write_tx()?;
        let artifacts: Vec<(i64, B3Digest)> = tx
            .prepare("SELECT object_kind, digest FROM artifacts WHERE build = ?1")?
            .query_map([build.0], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (kind, digest) in artifacts {
            add_refs(
                &tx,
                ObjectRef {
                    kind: crate::object::ObjectKind::from_code(kind)?,
                    digest,
                },
                -1,
            )?;
        }
        let logs: Vec<B3Digest> = tx
            .prepare("SELECT log FROM build_jobs WHERE build = ?1 AND log IS NOT NULL")?
            .query_map([build.0], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for log in logs {
            add_refs(&tx, ObjectRef::blob(log), -1)?;
        }
        for table in ["artifacts", "build_jobs", "events"] {
            tx.execute(&format!("DELETE FROM {table} WHERE build = ?1"), [build.0])?;
        }
        tx.execute("DELETE FROM builds WHERE id = ?1", [build.0])?;
        tx.commit()?;
        crate::sessions::remove_free_lease(&self.dir, &crate::sessions::build_lease_name(build.0))?;
        Ok(())
    }

    /// Finished, unpinned builds that ended before `cutoff` (Unix
    /// milliseconds), oldest first: what `kiln builds prune` deletes.
    pub fn builds_finished_before(&self, cutoff: i64) -> Result<Vec<BuildId>> {
        let ids: Vec<i64> = self
            .conn
            .prepare(
                "SELECT id FROM builds WHERE finished IS NOT NULL AND finished < ?1 \
                 AND pinned = 0 ORDER BY id",
            )?
            .query_map([cutoff], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids.into_iter().map(BuildId).collect())
    }

    /// The recorded events of `build`, in sequence.
    pub fn build_events(&self, build: BuildId) -> Result<Vec<StoredEvent>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, time, type, body FROM events WHERE build = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([build.0], |row| {
            Ok(StoredEvent {
                build,
                seq: row.get::<_, i64>(0)?.max(0) as u64,
                time: row.get(1)?,
                kind: row.get(2)?,
                body: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest build, if any.
    pub fn last_build(&self) -> Result<Option<BuildId>> {
        Ok(self
            .conn
            .query_row("SELECT MAX(id) FROM builds", [], |row| {
                row.get::<_, Option<i64>>(0)
            })?
            .map(BuildId))
    }

    /// The key inputs the last recorded run of `job` in `manifest` had.
    pub fn last_key_inputs(&self, manifest: &str, job: &str) -> Result<Option<KeyHistory>> {
        let raw = self
            .conn
            .prepare_cached(
                "SELECT build, key, inputs, recorded FROM key_history WHERE manifest = ?1 AND job = ?2",
            )?
            .query_row(params![manifest, job], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Option<B3Digest>>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .optional()?;
        let Some((build, key, inputs, recorded)) = raw else {
            return Ok(None);
        };
        let inputs = serde_json::from_str(&inputs).map_err(|e| StoreError::CorruptRecord {
            what: format!("key history of job {job} in {manifest}"),
            reason: e.to_string(),
        })?;
        Ok(Some(KeyHistory {
            manifest: manifest.to_owned(),
            job: job.to_owned(),
            build: BuildId(build),
            key,
            inputs,
            recorded,
        }))
    }
}

/// Logs of build jobs hold references (see `curate::direct_references`).
pub(crate) const JOB_LOG_REFERENCES: &str = "SELECT 1, log FROM build_jobs WHERE log IS NOT NULL";
