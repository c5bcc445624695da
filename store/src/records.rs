//! Named roots, builds, artifacts and job results: what keeps objects alive.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::digest::B3Digest;
use crate::error::{Result, StoreError};
use crate::object::{ObjectKind, ObjectRef, add_refs, now_millis, require};
use crate::sessions::TempRoots;
use crate::store::Store;

/// What a named root is for; cache roots are evicted least recently used.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RootKind {
    Image,
    Source,
    JobResult,
    Cache,
    Object,
}

impl RootKind {
    pub const ALL: [RootKind; 5] = [
        RootKind::Image,
        RootKind::Source,
        RootKind::JobResult,
        RootKind::Cache,
        RootKind::Object,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RootKind::Image => "image",
            RootKind::Source => "source",
            RootKind::JobResult => "job_result",
            RootKind::Cache => "cache",
            RootKind::Object => "object",
        }
    }
}

impl std::str::FromStr for RootKind {
    type Err = StoreError;
    fn from_str(text: &str) -> Result<Self> {
        RootKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| StoreError::UnknownRootKind(text.to_owned()))
    }
}

impl std::fmt::Display for RootKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NamedRoot {
    pub kind: RootKind,
    pub name: String,
    pub object: ObjectRef,
    /// Unix milliseconds.
    pub created: i64,
    pub last_used: i64,
    /// Set by `fsck --repair` when the data it names is gone.
    pub broken: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct BuildId(pub i64);

impl std::fmt::Display for BuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Build statuses, worst last (design §5).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    Queued,
    Running,
    Passed,
    PassedWithFailures,
    Failed,
    Killed,
    TimedOut,
}

impl BuildStatus {
    const ALL: [BuildStatus; 7] = [
        BuildStatus::Queued,
        BuildStatus::Running,
        BuildStatus::Passed,
        BuildStatus::PassedWithFailures,
        BuildStatus::Failed,
        BuildStatus::Killed,
        BuildStatus::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Queued => "queued",
            BuildStatus::Running => "running",
            BuildStatus::Passed => "passed",
            BuildStatus::PassedWithFailures => "passed_with_failures",
            BuildStatus::Failed => "failed",
            BuildStatus::Killed => "killed",
            BuildStatus::TimedOut => "timed_out",
        }
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, BuildStatus::Queued | BuildStatus::Running)
    }

    /// Worst wins (design §5): the later in Queued < Running < Passed <
    /// PassedWithFailures < Failed < Killed < TimedOut.
    pub fn worst(self, other: BuildStatus) -> BuildStatus {
        self.max(other)
    }
}

impl std::fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BuildStatus {
    type Err = StoreError;
    fn from_str(text: &str) -> Result<Self> {
        BuildStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| StoreError::UnknownStatus(text.to_owned()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BuildRecord {
    pub id: BuildId,
    /// Curation keeps a threshold's worth of artifacts per owner (a project).
    pub owner: String,
    pub status: BuildStatus,
    pub started: i64,
    pub finished: Option<i64>,
    pub pinned: bool,
    /// The manifest the build ran, as its runner named it.
    pub manifest: Option<String>,
    /// The process running the build, while it runs (for `kiln kill`).
    pub pid: Option<u32>,
    pub host: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Artifact {
    pub id: i64,
    pub build: BuildId,
    pub name: String,
    pub object: ObjectRef,
    pub size: u64,
    pub created: i64,
}

/// An artifact as recorded in a job result.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobArtifact {
    pub name: String,
    pub object: ObjectRef,
    pub size: u64,
}

/// `JobResult::status` of a result this store ran, or a bundle's result
/// signed by a key it trusts: the only status served as a cache hit.
pub const JOB_PASSED: &str = "passed";
/// `JobResult::status` of a bundle's result without a trusted signature:
/// kept (so `run --check` can compare with it), never served; the store's
/// own run of the job replaces it.
pub const JOB_UNTRUSTED: &str = "untrusted";

/// What a job produced, keyed by its job key (design §3).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct JobResult {
    pub key: B3Digest,
    /// A tree: the job's upper layer, whiteouts and opaque dirs included.
    pub output_layer: B3Digest,
    /// A blob.
    pub log: Option<B3Digest>,
    pub status: String,
    pub artifacts: Vec<JobArtifact>,
    pub created: i64,
    pub last_used: i64,
    pub broken: bool,
}

fn root_from_row(
    row: &Row<'_>,
) -> rusqlite::Result<(String, String, i64, B3Digest, i64, i64, bool)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

pub(crate) fn parse_root(
    raw: (String, String, i64, B3Digest, i64, i64, bool),
) -> Result<NamedRoot> {
    let (kind, name, object_kind, digest, created, last_used, broken) = raw;
    Ok(NamedRoot {
        kind: kind.parse()?,
        name,
        object: ObjectRef {
            kind: ObjectKind::from_code(object_kind)?,
            digest,
        },
        created,
        last_used,
        broken,
    })
}

const ROOT_COLUMNS: &str = "kind, name, object_kind, digest, created, last_used, broken";

/// Points `kind/name` at `object` in an open transaction, adjusting counts.
pub(crate) fn set_root_in(
    conn: &Connection,
    kind: RootKind,
    name: &str,
    object: ObjectRef,
) -> Result<()> {
    require(conn, object)?;
    let now = now_millis();
    if let Some(old) = get_root_in(conn, kind, name)?
        && !old.broken
    {
        add_refs(conn, old.object, -1).or_else(ignore_missing)?;
    }
    conn.execute(
        "INSERT INTO roots(kind, name, object_kind, digest, created, last_used, broken) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, 0) \
         ON CONFLICT(kind, name) DO UPDATE SET object_kind = ?3, digest = ?4, last_used = ?5, broken = 0",
        params![kind.as_str(), name, object.kind.code(), object.digest, now],
    )?;
    add_refs(conn, object, 1)
}

/// A broken root's object may be gone: decrementing it is then moot.
fn ignore_missing(error: StoreError) -> Result<()> {
    match error {
        StoreError::UnknownObject { .. } => Ok(()),
        other => Err(other),
    }
}

pub(crate) fn get_root_in(
    conn: &Connection,
    kind: RootKind,
    name: &str,
) -> Result<Option<NamedRoot>> {
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {ROOT_COLUMNS} FROM roots WHERE kind = ?1 AND name = ?2"
        ))?
        .query_row(params![kind.as_str(), name], root_from_row)
        .optional()?;
    raw.map(parse_root).transpose()
}

pub(crate) fn list_roots_in(conn: &Connection, kind: Option<RootKind>) -> Result<Vec<NamedRoot>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {ROOT_COLUMNS} FROM roots WHERE ?1 IS NULL OR kind = ?1 ORDER BY kind, name"
    ))?;
    let rows = stmt.query_map([kind.map(|k| k.as_str())], root_from_row)?;
    rows.map(|row| parse_root(row?)).collect()
}

pub(crate) fn remove_root_in(conn: &Connection, kind: RootKind, name: &str) -> Result<bool> {
    let Some(old) = get_root_in(conn, kind, name)? else {
        return Ok(false);
    };
    conn.execute(
        "DELETE FROM roots WHERE kind = ?1 AND name = ?2",
        params![kind.as_str(), name],
    )?;
    add_refs(conn, old.object, -1).or_else(ignore_missing)?;
    Ok(true)
}

pub(crate) fn job_result_objects(result: &JobResult) -> Vec<ObjectRef> {
    let mut objects = vec![ObjectRef::tree(result.output_layer)];
    objects.extend(result.log.map(ObjectRef::blob));
    objects.extend(result.artifacts.iter().map(|a| a.object));
    objects
}

#[allow(clippy::type_complexity)]
pub(crate) fn job_result_from_row(
    row: &Row<'_>,
) -> rusqlite::Result<(
    B3Digest,
    B3Digest,
    Option<B3Digest>,
    String,
    String,
    i64,
    i64,
    bool,
)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
    ))
}

pub(crate) const JOB_COLUMNS: &str =
    "key, output_layer, log, status, artifacts, created, last_used, broken";

#[allow(clippy::type_complexity)]
pub(crate) fn parse_job_result(
    raw: (
        B3Digest,
        B3Digest,
        Option<B3Digest>,
        String,
        String,
        i64,
        i64,
        bool,
    ),
) -> Result<JobResult> {
    let (key, output_layer, log, status, artifacts, created, last_used, broken) = raw;
    let artifacts = serde_json::from_str(&artifacts)
        .map_err(|e| StoreError::corrupt(key, format!("job result artifacts unreadable: {e}")))?;
    Ok(JobResult {
        key,
        output_layer,
        log,
        status,
        artifacts,
        created,
        last_used,
        broken,
    })
}

pub(crate) fn get_job_result_in(conn: &Connection, key: &B3Digest) -> Result<Option<JobResult>> {
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM job_results WHERE key = ?1"
        ))?
        .query_row([key], job_result_from_row)
        .optional()?;
    raw.map(parse_job_result).transpose()
}

pub(crate) fn remove_job_result_in(conn: &Connection, key: &B3Digest) -> Result<bool> {
    let Some(old) = get_job_result_in(conn, key)? else {
        return Ok(false);
    };
    conn.execute("DELETE FROM job_results WHERE key = ?1", [key])?;
    if old.broken {
        return Ok(true);
    }
    for object in job_result_objects(&old) {
        add_refs(conn, object, -1).or_else(ignore_missing)?;
    }
    Ok(true)
}

pub(crate) fn put_job_result_in(conn: &Connection, result: &JobResult) -> Result<()> {
    for object in job_result_objects(result) {
        require(conn, object)?;
    }
    remove_job_result_in(conn, &result.key)?;
    let artifacts = serde_json::to_string(&result.artifacts).unwrap_or_else(|_| "[]".into());
    conn.execute(
        &format!("INSERT INTO job_results({JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)"),
        params![
            result.key,
            result.output_layer,
            result.log,
            result.status,
            artifacts,
            result.created,
            result.last_used
        ],
    )?;
    for object in job_result_objects(result) {
        add_refs(conn, object, 1)?;
    }
    Ok(())
}

pub(crate) type RawBuild = (
    i64,
    String,
    String,
    i64,
    Option<i64>,
    bool,
    Option<String>,
    Option<u32>,
    Option<String>,
);

pub(crate) const BUILD_COLUMNS: &str =
    "id, owner, status, started, finished, pinned, manifest, pid, host";

pub(crate) fn build_from_row(row: &Row<'_>) -> rusqlite::Result<RawBuild> {
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
    ))
}

pub(crate) fn parse_build(raw: RawBuild) -> Result<BuildRecord> {
    let (id, owner, status, started, finished, pinned, manifest, pid, host) = raw;
    Ok(BuildRecord {
        id: BuildId(id),
        owner,
        status: status.parse()?,
        started,
        finished,
        pinned,
        manifest,
        pid,
        host,
    })
}

fn artifact_from_row(
    row: &Row<'_>,
) -> rusqlite::Result<(i64, i64, String, i64, B3Digest, i64, i64)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

/// The library API for roots, builds, artifacts and job results.
impl Store {
    /// A guard whose held objects are never swept while it lives.
    pub fn temp_roots(&self) -> Result<TempRoots> {
        TempRoots::new(self)
    }

    /// Points the root `kind/name` at `object` (replacing what it named).
    pub fn set_root(&mut self, kind: RootKind, name: &str, object: ObjectRef) -> Result<()> {
        let tx = self.write_tx()?;
        set_root_in(&tx, kind, name, object)?;
        tx.commit()?;
        Ok(())
    }

    pub fn get_root(&self, kind: RootKind, name: &str) -> Result<Option<NamedRoot>> {
        get_root_in(&self.conn, kind, name)
    }

    /// Marks a root as just used (for least-recently-used eviction).
    pub fn touch_root(&mut self, kind: RootKind, name: &str) -> Result<()> {
        let changed = self.conn.execute(
            "UPDATE roots SET last_used = ?3 WHERE kind = ?1 AND name = ?2",
            params![kind.as_str(), name, now_millis()],
        )?;
        if changed == 0 {
            return Err(StoreError::UnknownRoot {
                kind: kind.to_string(),
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Removes a root; its objects are swept by the next `sweep` unless
    /// something else references them. Returns whether it existed.
    pub fn remove_root(&mut self, kind: RootKind, name: &str) -> Result<bool> {
        let tx = self.write_tx()?;
        let removed = remove_root_in(&tx, kind, name)?;
        tx.commit()?;
        Ok(removed)
    }

    pub fn list_roots(&self, kind: Option<RootKind>) -> Result<Vec<NamedRoot>> {
        list_roots_in(&self.conn, kind)
    }

    /// Starts a build (status running) owned by `owner`.
    pub fn create_build(&mut self, owner: &str) -> Result<BuildId> {
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO builds(owner, status, started, pinned) VALUES (?1, ?2, ?3, 0)",
            params![owner, BuildStatus::Running.as_str(), now_millis()],
        )?;
        let id = BuildId(tx.last_insert_rowid());
        tx.commit()?;
        Ok(id)
    }

    /// Sets a build's status; a finished status also records the end time.
    pub fn set_build_status(&mut self, build: BuildId, status: BuildStatus) -> Result<()> {
        let finished = status.is_finished().then(now_millis);
        let changed = self.conn.execute(
            "UPDATE builds SET status = ?2, finished = COALESCE(?3, finished) WHERE id = ?1",
            params![build.0, status.as_str(), finished],
        )?;
        if changed == 0 {
            return Err(StoreError::UnknownBuild(build.0));
        }
        Ok(())
    }

    /// Pinned builds never lose their artifacts to curation.
    pub fn set_pinned(&mut self, build: BuildId, pinned: bool) -> Result<()> {
        self.ensure_writable()?;
        let changed = self.conn.execute(
            "UPDATE builds SET pinned = ?2 WHERE id = ?1",
            params![build.0, pinned],
        )?;
        if changed == 0 {
            return Err(StoreError::UnknownBuild(build.0));
        }
        Ok(())
    }

    pub fn build(&self, build: BuildId) -> Result<BuildRecord> {
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = ?1"),
                [build.0],
                build_from_row,
            )
            .optional()?;
        parse_build(raw.ok_or(StoreError::UnknownBuild(build.0))?)
    }

    pub fn list_builds(&self) -> Result<Vec<BuildRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {BUILD_COLUMNS} FROM builds ORDER BY id"))?;
        let rows = stmt.query_map([], build_from_row)?;
        rows.map(|row| parse_build(row?)).collect()
    }

    /// Records that `build` produced `object` under `name`.
    pub fn add_artifact(&mut self, build: BuildId, name: &str, object: ObjectRef) -> Result<i64> {
        let tx = self.write_tx()?;
        let size = require(&tx, object)?;
        let exists = tx
            .prepare_cached("SELECT 1 FROM builds WHERE id = ?1")?
            .exists([build.0])?;
        if !exists {
            return Err(StoreError::UnknownBuild(build.0));
        }
        tx.execute(
            "INSERT INTO artifacts(build, name, object_kind, digest, size, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![build.0, name, object.kind.code(), object.digest, size as i64, now_millis()],
        )?;
        let id = tx.last_insert_rowid();
        add_refs(&tx, object, 1)?;
        tx.commit()?;
        Ok(id)
    }

    pub fn artifacts(&self, build: BuildId) -> Result<Vec<Artifact>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, build, name, object_kind, digest, size, created FROM artifacts WHERE build = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([build.0], artifact_from_row)?;
        rows.map(|row| {
            let (id, build, name, kind, digest, size, created) = row?;
            Ok(Artifact {
                id,
                build: BuildId(build),
                name,
                object: ObjectRef {
                    kind: ObjectKind::from_code(kind)?,
                    digest,
                },
                size: size as u64,
                created,
            })
        })
        .collect()
    }

    /// Stores (or replaces) the result of the job with key `key`.
    pub fn record_job_result(
        &mut self,
        key: B3Digest,
        output_layer: B3Digest,
        log: Option<B3Digest>,
        status: &str,
        artifacts: Vec<JobArtifact>,
    ) -> Result<()> {
        let now = now_millis();
        let result = JobResult {
            key,
            output_layer,
            log,
            status: status.to_owned(),
            artifacts,
            created: now,
            last_used: now,
            broken: false,
        };
        let tx = self.write_tx()?;
        put_job_result_in(&tx, &result)?;
        tx.commit()?;
        Ok(())
    }

    /// The result for `key`, marking it used. A result whose data fsck found
    /// gone is not returned.
    pub fn lookup_job_result(&mut self, key: &B3Digest) -> Result<Option<JobResult>> {
        let Some(mut result) = get_job_result_in(&self.conn, key)? else {
            return Ok(None);
        };
        if result.broken {
            return Ok(None);
        }
        if !self.is_read_only() {
            result.last_used = now_millis();
            self.conn.execute(
                "UPDATE job_results SET last_used = ?2 WHERE key = ?1",
                params![key, result.last_used],
            )?;
        }
        Ok(Some(result))
    }

    pub fn remove_job_result(&mut self, key: &B3Digest) -> Result<bool> {
        let tx = self.write_tx()?;
        let removed = remove_job_result_in(&tx, key)?;
        tx.commit()?;
        Ok(removed)
    }
}
