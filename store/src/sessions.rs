//! Temporary roots: objects a process is still working with (a build in
//! progress, an add that has not been named yet) are not swept.
//!
//! Liveness is a lease, not a pid: every session holds an `flock` on
//! `<store>/leases/session-<id>` for its lifetime. The kernel drops the lock
//! when the process dies, however it dies, so a collector tells a live
//! session from a dead one by trying the lock without blocking. That works
//! from another PID namespace (where the owner's pid means nothing) and
//! cannot be fooled by a reused pid.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::error::{IoContext, Result, StoreError};
use crate::object::{ObjectRef, now_millis};
use crate::records::{BuildId, BuildStatus, JobResult, get_job_result_in};
use crate::store::Store;

/// The directory of lease files, under the store.
pub const LEASES_DIR: &str = "leases";

/// A held lease: an exclusive `flock` on a file under `<store>/leases/`.
/// Dropping it removes the file and releases the lock; a process that dies
/// releases the lock (the file stays until a collector removes it).
pub struct Lease {
    path: PathBuf,
    file: Option<File>,
}

impl Lease {
    /// Creates `<store>/leases/<name>` and locks it. Fails if another live
    /// process holds it.
    pub fn acquire(store_dir: &Path, name: &str) -> Result<Lease> {
        let dir = store_dir.join(LEASES_DIR);
        fs::create_dir_all(&dir).at(&dir)?;
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Io {
                    path,
                    source: std::io::Error::new(
                        ErrorKind::WouldBlock,
                        "the lease is held by another process",
                    ),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
        }
        Ok(Lease {
            path,
            file: Some(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Remove the file while still holding the lock: nobody can take a
        // lease on a name that is being retired.
        let _ = fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("path", &self.path).finish()
    }
}

/// What a lease file says about its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Some process holds the lock.
    Held,
    /// The file exists but nobody holds it: its owner died.
    Free,
    /// No file: the owner finished (or never took it).
    Missing,
}

/// Tests the lease `<store>/leases/<name>` without blocking and without
/// creating it.
pub fn lease_state(store_dir: &Path, name: &str) -> Result<LeaseState> {
    let path = store_dir.join(LEASES_DIR).join(name);
    let file = match OpenOptions::new().read(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(LeaseState::Missing),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    match file.try_lock() {
        // Dropping `file` releases the probe's lock at once.
        Ok(()) => Ok(LeaseState::Free),
        Err(fs::TryLockError::WouldBlock) => Ok(LeaseState::Held),
        Err(fs::TryLockError::Error(e)) => Err(StoreError::io(&path, e)),
    }
}

/// Whether the lease `name` is held by a live process.
pub fn lease_is_held(store_dir: &Path, name: &str) -> Result<bool> {
    Ok(lease_state(store_dir, name)? == LeaseState::Held)
}

/// Removes a lease file whose owner is gone (only if it is still free).
pub(crate) fn remove_free_lease(store_dir: &Path, name: &str) -> Result<bool> {
    let path = store_dir.join(LEASES_DIR).join(name);
    let file = match OpenOptions::new().read(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = fs::remove_file(&path);
            Ok(true)
        }
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(StoreError::io(&path, e)),
    }
}

/// The lease file name of session `id`.
pub fn session_lease_name(id: i64) -> String {
    format!("session-{id}")
}

/// Holds temporary roots until dropped. Owns its own index connection, so it
/// can outlive borrows of the `Store` (a build keeps it for its whole run).
/// A process killed while holding one leaves rows behind; they stop
/// protecting anything once its lease is free (see `remove_dead_sessions`).
pub struct TempRoots {
    conn: Connection,
    session: i64,
    store_dir: PathBuf,
    lease: Option<Lease>,
}

impl TempRoots {
    pub(crate) fn new(store: &Store) -> Result<Self> {
        store.ensure_writable()?;
        let mut conn = store.reader()?;
        let pid = std::process::id();
        // The lease exists and is locked before the session row commits: a
        // collector (which reads sessions in a write transaction) never sees
        // a session without its held lease.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO sessions(pid, process_start, created) VALUES (?1, 0, ?2)",
            params![pid, now_millis()],
        )?;
        let session = tx.last_insert_rowid();
        let lease = Lease::acquire(&store.dir, &session_lease_name(session))?;
        tx.commit()?;
        Ok(Self {
            conn,
            session,
            store_dir: store.dir.clone(),
            lease: Some(lease),
        })
    }

    pub fn session_id(&self) -> i64 {
        self.session
    }

    /// The name of this session's lease under `<store>/leases/`.
    pub fn lease_name(&self) -> String {
        session_lease_name(self.session)
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Protects `object` (and so everything it references) until drop.
    pub fn hold(&self, object: ObjectRef) -> Result<()> {
        hold(&self.conn, self.session, object)
    }
}

pub(crate) fn hold(conn: &Connection, session: i64, object: ObjectRef) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO temp_roots(session, object_kind, digest) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![session, object.kind.code(), object.digest])?;
    Ok(())
}

impl Drop for TempRoots {
    fn drop(&mut self) {
        let _ = self
            .conn
            .execute("DELETE FROM temp_roots WHERE session = ?1", [self.session]);
        let _ = self
            .conn
            .execute("DELETE FROM sessions WHERE id = ?1", [self.session]);
        drop(self.lease.take());
    }
}

impl std::fmt::Debug for TempRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempRoots")
            .field("session", &self.session)
            .finish()
    }
}

impl Store {
    /// The result for `key` (not one fsck found broken), marked used, with
    /// its output layer, log and artifacts held by `roots` in the same
    /// transaction that reads it. Curation evicts results and sweeps in
    /// transactions of their own, so either it evicted the result first (and
    /// this returns `None`) or the hold is committed before its sweep: a
    /// cache hit is never swept between the lookup and the restore.
    pub fn lookup_job_result_held(
        &mut self,
        key: &crate::digest::B3Digest,
        roots: &TempRoots,
    ) -> Result<Option<JobResult>> {
        let tx = self.write_tx()?;
        let Some(mut result) = get_job_result_in(&tx, key)?.filter(|r| !r.broken) else {
            return Ok(None);
        };
        result.last_used = now_millis();
        tx.execute(
            "UPDATE job_results SET last_used = ?2 WHERE key = ?1",
            params![key, result.last_used],
        )?;
        let session = roots.session_id();
        hold(&tx, session, ObjectRef::tree(result.output_layer))?;
        if let Some(log) = result.log {
            hold(&tx, session, ObjectRef::blob(log))?;
        }
        for artifact in &result.artifacts {
            hold(&tx, session, artifact.object)?;
        }
        tx.commit()?;
        Ok(Some(result))
    }
}

/// The lease file name of build `id` (held by the process running it).
pub fn build_lease_name(id: i64) -> String {
    format!("build-{id}")
}

/// Why a build is marked failed when its process is found gone.
pub const DEAD_BUILD_REASON: &str = "the kiln process running it died";

impl Store {
    /// Starts a build (status running) owned by `owner`, with the lease that
    /// says it is alive: `<store>/leases/build-<id>`, locked before the row
    /// commits. Keep the lease until the build's final status is recorded;
    /// a build whose lease is free later was abandoned by a dead process
    /// (see [`Store::fail_dead_builds`]).
    pub fn create_build_leased(&mut self, owner: &str) -> Result<(BuildId, Lease)> {
        let dir = self.dir.clone();
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO builds(owner, status, started, pinned) VALUES (?1, ?2, ?3, 0)",
            params![owner, BuildStatus::Running.as_str(), now_millis()],
        )?;
        let id = tx.last_insert_rowid();
        let lease = Lease::acquire(&dir, &build_lease_name(id))?;
        tx.commit()?;
        Ok((BuildId(id), lease))
    }

    /// Marks every unfinished build whose lease is free (its process died:
    /// SIGKILL, a crash, power loss) as Failed, with the reason on its
    /// unfinished jobs; returns those builds. Builds without a lease file
    /// (made by [`Store::create_build`]) are left alone. Their artifacts are
    /// then curated like any finished build's.
    pub fn fail_dead_builds(&mut self) -> Result<Vec<BuildId>> {
        if self.is_read_only() {
            return Ok(Vec::new());
        }
        let dir = self.dir.clone();
        let tx = self.write_tx()?;
        let open: Vec<(i64, String)> = tx
            .prepare("SELECT id, status FROM builds WHERE finished IS NULL")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut dead = Vec::new();
        let now = now_millis();
        for (id, status) in open {
            let finished = status
                .parse::<BuildStatus>()
                .map(BuildStatus::is_finished)
                .unwrap_or(false);
            if finished || lease_state(&dir, &build_lease_name(id))? != LeaseState::Free {
                continue;
            }
            tx.execute(
                "UPDATE builds SET status = ?2, finished = ?3 WHERE id = ?1",
                params![id, BuildStatus::Failed.as_str(), now],
            )?;
            tx.execute(
                "UPDATE build_jobs SET status = 'failed', finished = COALESCE(finished, ?2), \
                 message = COALESCE(message, ?3) \
                 WHERE build = ?1 AND status IN ('queued', 'running')",
                params![id, now, DEAD_BUILD_REASON],
            )?;
            dead.push(BuildId(id));
        }
        tx.commit()?;
        for build in &dead {
            remove_free_lease(&dir, &build_lease_name(build.0))?;
        }
        Ok(dead)
    }
}

/// Deletes the sessions whose lease is not held (their process is gone),
/// and lease files nobody holds; returns how many sessions were removed.
pub(crate) fn remove_dead_sessions(conn: &Connection, store_dir: &Path) -> Result<usize> {
    let sessions: Vec<i64> = conn
        .prepare("SELECT id FROM sessions")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut removed = 0;
    let mut retired = Vec::new();
    for id in &sessions {
        let name = session_lease_name(*id);
        if lease_state(store_dir, &name)? != LeaseState::Held {
            conn.execute("DELETE FROM temp_roots WHERE session = ?1", [id])?;
            conn.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
            retired.push(name);
            removed += 1;
        }
    }
    // Temp roots whose session row is gone protect nothing.
    conn.execute(
        "DELETE FROM temp_roots WHERE session NOT IN (SELECT id FROM sessions)",
        [],
    )?;
    for name in retired {
        remove_free_lease(store_dir, &name)?;
    }
    // Lease files of sessions that never committed (a crash in between).
    let dir = store_dir.join(LEASES_DIR);
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix("session-")
                .and_then(|id| id.parse::<i64>().ok())
            else {
                continue;
            };
            if !sessions.contains(&id) {
                remove_free_lease(store_dir, &name)?;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_while_alive_and_gone_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Lease::acquire(dir.path(), "x").unwrap();
        assert_eq!(lease_state(dir.path(), "x").unwrap(), LeaseState::Held);
        assert!(Lease::acquire(dir.path(), "x").is_err());
        drop(lease);
        assert_eq!(lease_state(dir.path(), "x").unwrap(), LeaseState::Missing);
    }

    /// What a process killed with SIGKILL leaves: the lease file, unlocked.
    fn die(mut lease: Lease) {
        drop(lease.file.take());
        std::mem::forget(lease);
    }

    #[test]
    fn sessions_are_judged_by_their_lease_not_their_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let live = store.temp_roots().unwrap();
        let blob = store.add_bytes(b"held by a dead session", &live).unwrap();
        let dead = store.temp_roots().unwrap();
        dead.hold(blob.object).unwrap();
        drop(live);
        // The dead session: same pid as ours (a pid test would call it
        // alive), but its lease is free.
        let mut dead = std::mem::ManuallyDrop::new(dead);
        die(dead.lease.take().unwrap());
        let alive = store.temp_roots().unwrap();
        let report = store.sweep().unwrap();
        assert_eq!(report.dead_sessions, 1);
        assert_eq!(report.blobs, 1, "the dead session's blob is swept");
        let left: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1, "the live session stays");
        assert_eq!(
            lease_state(dir.path(), &alive.lease_name()).unwrap(),
            LeaseState::Held
        );
        assert_eq!(
            lease_state(dir.path(), &session_lease_name(dead.session_id())).unwrap(),
            LeaseState::Missing,
            "the dead session's lease file is removed"
        );
    }

    #[test]
    fn a_build_whose_lease_is_free_is_failed_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let (running, lease) = store.create_build_leased("o").unwrap();
        let (dead, dead_lease) = store.create_build_leased("o").unwrap();
        let unleased = store.create_build("o").unwrap();
        store
            .conn
            .execute(
                "INSERT INTO build_jobs(build, name, stage, position, status) VALUES (?1, 'j', 's', 0, 'running')",
                [dead.0],
            )
            .unwrap();
        die(dead_lease);
        assert_eq!(store.fail_dead_builds().unwrap(), vec![dead]);
        assert_eq!(store.build(dead).unwrap().status, BuildStatus::Failed);
        assert!(store.build(dead).unwrap().finished.is_some());
        let job = store.build_job(dead, "j").unwrap().unwrap();
        assert_eq!(job.status, "failed");
        assert_eq!(job.message.as_deref(), Some(DEAD_BUILD_REASON));
        assert_eq!(store.build(running).unwrap().status, BuildStatus::Running);
        assert_eq!(store.build(unleased).unwrap().status, BuildStatus::Running);
        drop(lease);
        assert_eq!(store.fail_dead_builds().unwrap(), vec![]);
    }

    #[test]
    fn a_lease_file_nobody_locks_is_free() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(LEASES_DIR)).unwrap();
        fs::write(dir.path().join(LEASES_DIR).join("y"), b"").unwrap();
        assert_eq!(lease_state(dir.path(), "y").unwrap(), LeaseState::Free);
        assert!(remove_free_lease(dir.path(), "y").unwrap());
        assert_eq!(lease_state(dir.path(), "y").unwrap(), LeaseState::Missing);
    }
}
