//! What `kiln serve` keeps in the index (docs/server.md): the queue (what
//! each queued build will run, in submission order) and the API tokens,
//! stored as blake3 hashes only.

use rusqlite::{OptionalExtension, params};

use crate::error::{Result, StoreError};
use crate::object::now_millis;
use crate::records::{BuildId, BuildStatus};
use crate::sessions::{Lease, build_lease_name};
use crate::store::Store;

/// A queued (or started) build's submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub build: BuildId,
    /// The manifest, relative to the submission's directory.
    pub manifest: String,
    /// `NAME=VALUE`, as submitted.
    pub args: Vec<String>,
    /// The name of the token that submitted it.
    pub submitter: String,
    /// When it was queued (unix milliseconds); `builds.started` is when it
    /// started running.
    pub queued: i64,
}

/// What a token may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read builds, logs, artifacts, store statistics and metrics.
    Read,
    /// Also submit and kill builds.
    Submit,
    /// Also pin, unpin and run curation.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = StoreError;
    fn from_str(text: &str) -> Result<Role> {
        match text {
            "read" => Ok(Role::Read),
            "submit" => Ok(Role::Submit),
            "admin" => Ok(Role::Admin),
            other => Err(StoreError::Record {
                what: "token role",
                reason: format!("unknown role {other:?} (read, submit or admin)"),
            }),
        }
    }
}

/// A token as listed: never its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub created: i64,
}

impl Store {
    /// Records a queued build (no process runs it yet, so no lease: a dead
    /// server's queued builds stay queued) with what it will run.
    pub fn queue_build(
        &mut self,
        owner: &str,
        manifest: &str,
        args: &[String],
        submitter: &str,
    ) -> Result<BuildId> {
        let args = serde_json::to_string(args).map_err(|error| StoreError::Record {
            what: "submission",
            reason: error.to_string(),
        })?;
        let now = now_millis();
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO builds(owner, status, started, pinned, manifest) VALUES (?1, ?2, ?3, 0, ?4)",
            params![owner, BuildStatus::Queued.as_str(), now, manifest],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO submissions(build, manifest, args, submitter, queued) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, manifest, args, submitter, now],
        )?;
        tx.commit()?;
        Ok(BuildId(id))
    }

    /// The queued builds, oldest first.
    pub fn queued_builds(&self) -> Result<Vec<Submission>> {
        let mut stmt = self.conn.prepare(
            "SELECT s.build, s.manifest, s.args, s.submitter, s.queued FROM submissions s \
             JOIN builds b ON b.id = s.build WHERE b.status = ?1 ORDER BY s.build",
        )?;
        let rows = stmt.query_map([BuildStatus::Queued.as_str()], submission_from_row)?;
        rows.map(|row| parse_submission(row?)).collect()
    }

    pub fn submission(&self, build: BuildId) -> Result<Option<Submission>> {
        let raw = self
            .conn
            .query_row(
                "SELECT build, manifest, args, submitter, queued FROM submissions WHERE build = ?1",
                [build.0],
                submission_from_row,
            )
            .optional()?;
        raw.map(parse_submission).transpose()
    }

    /// Takes a queued build for this process: its lease first, then the
    /// status `running`. `None` when it is no longer queued (killed).
    pub fn claim_build(&mut self, build: BuildId) -> Result<Option<Lease>> {
        let dir = self.dir.clone();
        let lease = Lease::acquire(&dir, &build_lease_name(build.0))?;
        let tx = self.write_tx()?;
        let changed = tx.execute(
            "UPDATE builds SET status = ?2, started = ?3 WHERE id = ?1 AND status = ?4",
            params![
                build.0,
                BuildStatus::Running.as_str(),
                now_millis(),
                BuildStatus::Queued.as_str()
            ],
        )?;
        tx.commit()?;
        Ok((changed == 1).then_some(lease))
    }

    /// Ends a build that never started (killed while queued).
    pub fn cancel_queued(&mut self, build: BuildId, status: BuildStatus) -> Result<bool> {
        let tx = self.write_tx()?;
        let changed = tx.execute(
            "UPDATE builds SET status = ?2, finished = ?3 WHERE id = ?1 AND status = ?4",
            params![
                build.0,
                status.as_str(),
                now_millis(),
                BuildStatus::Queued.as_str()
            ],
        )?;
        tx.commit()?;
        Ok(changed == 1)
    }

    /// Builds, newest first: at most `limit`, with an id below `before`,
    /// with `status` if given.
    pub fn list_builds_page(
        &self,
        status: Option<BuildStatus>,
        before: Option<BuildId>,
        limit: u32,
    ) -> Result<Vec<crate::records::BuildRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM builds WHERE (?1 IS NULL OR status = ?1) AND id < ?2 \
             ORDER BY id DESC LIMIT ?3",
            crate::records::BUILD_COLUMNS
        ))?;
        let rows = stmt.query_map(
            params![
                status.map(BuildStatus::as_str),
                before.map_or(i64::MAX, |b| b.0),
                limit
            ],
            crate::records::build_from_row,
        )?;
        rows.map(|row| crate::records::parse_build(row?)).collect()
    }

    /// Builds per status.
    pub fn count_builds_by_status(&self) -> Result<Vec<(BuildStatus, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT status, COUNT(*) FROM builds GROUP BY status")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        rows.map(|row| {
            let (status, count) = row?;
            Ok((status.parse()?, u64::try_from(count).unwrap_or(0)))
        })
        .collect()
    }

    /// Every recorded job, summed per status: (status, jobs, total
    /// duration in milliseconds, jobs served from the cache).
    pub fn job_totals(&self) -> Result<Vec<(String, u64, u64, u64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT status, COUNT(*), COALESCE(SUM(duration_ms), 0), SUM(cached)              FROM build_jobs GROUP BY status",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Option<i64>>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (status, count, duration, cached) = row?;
            let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
            Ok((
                status,
                unsigned(count),
                unsigned(duration),
                unsigned(cached.unwrap_or(0)),
            ))
        })
        .collect()
    }

    /// Records a token by the blake3 hash of its value. A name is unique.
    pub fn add_token(&mut self, name: &str, role: Role, hash: &[u8; 32]) -> Result<()> {
        let tx = self.write_tx()?;
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM tokens WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::Record {
                what: "token",
                reason: format!("a token named {name:?} exists (remove it first)"),
            });
        }
        tx.execute(
            "INSERT INTO tokens(name, role, hash, created) VALUES (?1, ?2, ?3, ?4)",
            params![name, role.as_str(), &hash[..], now_millis()],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>> {
        let raw: Option<(String, String, i64)> = self
            .conn
            .prepare_cached("SELECT name, role, created FROM tokens WHERE hash = ?1")?
            .query_row([&hash[..]], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        raw.map(|(name, role, created)| {
            Ok(TokenRecord {
                name,
                role: role.parse()?,
                created,
            })
        })
        .transpose()
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, role, created FROM tokens ORDER BY name")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get(2)?,
            ))
        })?;
        rows.map(|row| {
            let (name, role, created) = row?;
            Ok(TokenRecord {
                name,
                role: role.parse()?,
                created,
            })
        })
        .collect()
    }

    pub fn remove_token(&mut self, name: &str) -> Result<bool> {
        let tx = self.write_tx()?;
        let changed = tx.execute("DELETE FROM tokens WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(changed == 1)
    }
}

type RawSubmission = (i64, String, String, String, i64);

fn submission_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawSubmission> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn parse_submission(raw: RawSubmission) -> Result<Submission> {
    let (build, manifest, args, submitter, queued) = raw;
    Ok(Submission {
        build: BuildId(build),
        manifest,
        args: serde_json::from_str(&args).map_err(|error| StoreError::Record {
            what: "submission",
            reason: error.to_string(),
        })?,
        submitter,
        queued,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_keeps_order_and_a_claim_or_cancel_happens_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let args = vec!["version=1".to_owned()];
        let first = store.queue_build("p", "build.kiln", &args, "ci").unwrap();
        let second = store.queue_build("p", "build.kiln", &[], "ci").unwrap();
        let queued = store.queued_builds().unwrap();
        assert_eq!(
            queued.iter().map(|s| s.build).collect::<Vec<_>>(),
            [first, second]
        );
        assert_eq!(queued[0].args, args);
        assert_eq!(store.build(first).unwrap().status, BuildStatus::Queued);
        let lease = store.claim_build(first).unwrap();
        assert!(lease.is_some());
        assert_eq!(store.build(first).unwrap().status, BuildStatus::Running);
        assert!(store.cancel_queued(second, BuildStatus::Killed).unwrap());
        assert!(!store.cancel_queued(second, BuildStatus::Killed).unwrap());
        assert!(store.claim_build(second).unwrap().is_none());
        assert!(store.queued_builds().unwrap().is_empty());
        // A queued build has no lease file: it is never taken for dead.
        let third = store.queue_build("p", "build.kiln", &[], "ci").unwrap();
        assert!(store.fail_dead_builds().unwrap().is_empty());
        assert_eq!(store.build(third).unwrap().status, BuildStatus::Queued);
    }

    #[test]
    fn tokens_are_found_by_hash_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let hash = [7u8; 32];
        store.add_token("ci", Role::Submit, &hash).unwrap();
        assert!(store.add_token("ci", Role::Read, &[8u8; 32]).is_err());
        let found = store.token_by_hash(&hash).unwrap().unwrap();
        assert_eq!((found.name.as_str(), found.role), ("ci", Role::Submit));
        assert!(store.token_by_hash(&[9u8; 32]).unwrap().is_none());
        assert!(Role::Admin > Role::Submit && Role::Submit > Role::Read);
        assert!(store.remove_token("ci").unwrap());
        assert!(store.token_by_hash(&hash).unwrap().is_none());
    }
}
