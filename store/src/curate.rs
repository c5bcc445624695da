//! Curation (which artifacts and cache roots to drop) and collection
//! (sweeping objects nobody references).

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, params};

use crate::digest::B3Digest;
use crate::error::Result;
use crate::object::{ObjectKind, ObjectRef, add_chunk_refs, add_refs};
use crate::records::{
    BuildStatus, RootKind, job_result_objects, parse_job_result, remove_job_result_in,
    remove_root_in,
};
use crate::sessions::remove_dead_sessions;
use crate::store::Store;

/// 1 GiB, Djinn's default.
pub const DEFAULT_THRESHOLD: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurationPolicy {
    /// Bytes of artifacts kept per owner, newest first; 0 disables.
    pub artifact_threshold: u64,
    /// Bytes of cache roots and job results kept, most recently used
    /// first; 0 disables.
    pub cache_threshold: u64,
}

impl Default for CurationPolicy {
    fn default() -> Self {
        Self {
            artifact_threshold: DEFAULT_THRESHOLD,
            cache_threshold: DEFAULT_THRESHOLD,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    pub chunks: u64,
    pub blobs: u64,
    pub trees: u64,
    /// Stored (compressed) bytes freed.
    pub bytes_freed: u64,
    pub dead_sessions: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CurationReport {
    pub artifacts_removed: u64,
    pub artifact_bytes_removed: u64,
    pub cache_entries_evicted: u64,
    pub sweep: SweepReport,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub sweep: SweepReport,
    /// Objects whose reference count was wrong and has been corrected.
    pub refcounts_repaired: u64,
}

impl Store {
    /// Drops old artifacts and cold cache entries, then sweeps.
    pub fn curate(&mut self, policy: &CurationPolicy) -> Result<CurationReport> {
        let _lock = self.exclusive_lock()?;
        let mut report = CurationReport::default();
        let tx = self.write_tx()?;
        if policy.artifact_threshold > 0 {
            let (count, bytes) = curate_artifacts(&tx, policy.artifact_threshold)?;
            report.artifacts_removed = count;
            report.artifact_bytes_removed = bytes;
        }
        if policy.cache_threshold > 0 {
            report.cache_entries_evicted = evict_cache(&tx, policy.cache_threshold)?;
        }
        tx.commit()?;
        report.sweep = self.sweep_locked()?;
        Ok(report)
    }

    /// Deletes every object whose reference count is zero and that no live
    /// temporary root holds, cascading down to chunks.
    pub fn sweep(&mut self) -> Result<SweepReport> {
        let _lock = self.exclusive_lock()?;
        self.sweep_locked()
    }

    /// Mark and sweep from every root; corrects reference counts that drifted.
    pub fn gc_full(&mut self) -> Result<GcReport> {
        let _lock = self.exclusive_lock()?;
        let dir = self.dir.clone();
        let tx = self.write_tx()?;
        let dead_sessions = remove_dead_sessions(&tx, &dir)? as u64;
        let live = mark(&tx)?;
        // Delete everything unreachable, whatever its count says.
        let mut sweep = SweepReport {
            dead_sessions,
            ..Default::default()
        };
        let mut doomed_chunks = Vec::new();
        for (kind, table) in [(ObjectKind::Tree, "trees"), (ObjectKind::Blob, "blobs")] {
            let all: Vec<B3Digest> = tx
                .prepare(&format!("SELECT digest FROM {table}"))?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for digest in all {
                if !live.objects.contains(&ObjectRef { kind, digest }) {
                    delete_object_row(&tx, ObjectRef { kind, digest }, false)?;
                    match kind {
                        ObjectKind::Tree => sweep.trees += 1,
                        ObjectKind::Blob => sweep.blobs += 1,
                    }
                }
            }
        }
        let chunks: Vec<(B3Digest, i64, bool)> = tx
            .prepare("SELECT digest, stored, EXISTS (SELECT 1 FROM chunk_data d WHERE d.digest = chunks.digest) FROM chunks")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (digest, stored, inline) in chunks {
            if !live.chunks.contains(&digest) {
                tx.execute("DELETE FROM chunks WHERE digest = ?1", [digest])?;
                if !inline {
                    doomed_chunks.push(digest);
                }
                sweep.chunks += 1;
                sweep.bytes_freed += stored as u64;
            }
        }
        let refcounts_repaired = recount(&tx)?;
        tx.commit()?;
        remove_chunk_files(&*self.chunks, &doomed_chunks)?;
        Ok(GcReport {
            sweep,
            refcounts_repaired,
        })
    }

    pub(crate) fn sweep_locked(&mut self) -> Result<SweepReport> {
        let dir = self.dir.clone();
        let tx = self.write_tx()?;
        let mut report = SweepReport {
            dead_sessions: remove_dead_sessions(&tx, &dir)? as u64,
            ..Default::default()
        };
        let held: HashSet<B3Digest> = tx
            .prepare("SELECT digest FROM temp_roots")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        // Trees first: deleting one may free blobs and trees below it.
        loop {
            let mut progressed = false;
            for kind in [ObjectKind::Tree, ObjectKind::Blob] {
                let table = kind.table();
                let unreferenced: Vec<B3Digest> = tx
                    .prepare_cached(&format!("SELECT digest FROM {table} WHERE refs <= 0"))?
                    .query_map([], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for digest in unreferenced.into_iter().filter(|d| !held.contains(d)) {
                    delete_object_row(&tx, ObjectRef { kind, digest }, true)?;
                    progressed = true;
                    match kind {
                        ObjectKind::Tree => report.trees += 1,
                        ObjectKind::Blob => report.blobs += 1,
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        let doomed: Vec<(B3Digest, i64, bool)> = tx
            .prepare("SELECT digest, stored, EXISTS (SELECT 1 FROM chunk_data d WHERE d.digest = chunks.digest) FROM chunks WHERE refs <= 0")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        tx.execute("DELETE FROM chunks WHERE refs <= 0", [])?;
        tx.commit()?;
        // Files go only after their rows are gone for good: a crash here
        // leaves orphan files (fsck removes them), never a dangling row.
        report.chunks = doomed.len() as u64;
        report.bytes_freed = doomed.iter().map(|(_, stored, _)| *stored as u64).sum();
        let digests: Vec<B3Digest> = doomed
            .into_iter()
            .filter(|(_, _, inline)| !inline)
            .map(|(digest, _, _)| digest)
            .collect();
        remove_chunk_files(&*self.chunks, &digests)?;
        Ok(report)
    }
}

/// Unlinks chunk files from several threads: each unlink mostly waits on
/// the file system journal, so they overlap well.
fn remove_chunk_files(chunks: &dyn crate::chunks::ChunkStore, digests: &[B3Digest]) -> Result<()> {
    let workers = crate::store::worker_count(digests.len() / 64);
    let per_worker = digests.len().div_ceil(workers.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = digests
            .chunks(per_worker)
            .map(|part| {
                scope.spawn(move || part.iter().try_for_each(|digest| chunks.remove(digest)))
            })
            .collect();
        handles.into_iter().try_for_each(|handle| {
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

/// Removes an object's row and its outgoing references; with `cascade`,
/// decrements what it referenced.
fn delete_object_row(conn: &Connection, object: ObjectRef, cascade: bool) -> Result<()> {
    match object.kind {
        ObjectKind::Tree => {
            if cascade {
                let children: Vec<(i64, B3Digest, i64)> = conn
                    .prepare_cached(
                        "SELECT object_kind, child, n FROM tree_children WHERE tree = ?1",
                    )?
                    .query_map([object.digest], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                for (kind, child, n) in children {
                    let child = ObjectRef {
                        kind: ObjectKind::from_code(kind)?,
                        digest: child,
                    };
                    // A child already gone (a repaired store) needs no decrement.
                    let _ = add_refs(conn, child, -n);
                }
            }
            conn.prepare_cached("DELETE FROM tree_children WHERE tree = ?1")?
                .execute([object.digest])?;
            conn.prepare_cached("DELETE FROM trees WHERE digest = ?1")?
                .execute([object.digest])?;
        }
        ObjectKind::Blob => {
            if cascade {
                let chunks: Vec<B3Digest> = conn
                    .prepare_cached("SELECT chunk FROM blob_chunks WHERE blob = ?1")?
                    .query_map([object.digest], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for chunk in chunks {
                    let _ = add_chunk_refs(conn, &chunk, -1);
                }
            }
            conn.prepare_cached("DELETE FROM blob_chunks WHERE blob = ?1")?
                .execute([object.digest])?;
            conn.prepare_cached("DELETE FROM blobs WHERE digest = ?1")?
                .execute([object.digest])?;
        }
    }
    Ok(())
}

/// Walks artifacts newest first per owner; past the threshold, unpinned
/// artifacts of finished builds are deleted.
fn curate_artifacts(conn: &Connection, threshold: u64) -> Result<(u64, u64)> {
    let rows: Vec<(i64, String, bool, String, i64, B3Digest, i64)> = conn
        .prepare(
            "SELECT a.id, b.owner, b.pinned, b.status, a.object_kind, a.digest, a.size \
             FROM artifacts a JOIN builds b ON b.id = a.build \
             ORDER BY b.owner, a.created DESC, a.id DESC",
        )?
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut totals: HashMap<String, u64> = HashMap::new();
    let (mut removed, mut bytes) = (0, 0);
    for (id, owner, pinned, status, kind, digest, size) in rows {
        let total = totals.entry(owner).or_default();
        *total += size as u64;
        let in_progress = !status
            .parse::<BuildStatus>()
            .map(BuildStatus::is_finished)
            .unwrap_or(true);
        if *total > threshold && !pinned && !in_progress {
            conn.execute("DELETE FROM artifacts WHERE id = ?1", [id])?;
            let _ = add_refs(
                conn,
                ObjectRef {
                    kind: ObjectKind::from_code(kind)?,
                    digest,
                },
                -1,
            );
            removed += 1;
            bytes += size as u64;
        }
    }
    Ok((removed, bytes))
}

/// Keeps the most recently used cache roots and job results up to the
/// threshold; evicts the rest.
fn evict_cache(conn: &Connection, threshold: u64) -> Result<u64> {
    enum Entry {
        Root(String),
        Job(B3Digest),
    }
    let mut entries: Vec<(i64, u64, Entry)> = Vec::new();
    let roots: Vec<(String, i64, B3Digest, i64)> = conn
        .prepare("SELECT name, object_kind, digest, last_used FROM roots WHERE kind = ?1")?
        .query_map([RootKind::Cache.as_str()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (name, kind, digest, last_used) in roots {
        let object = ObjectRef {
            kind: ObjectKind::from_code(kind)?,
            digest,
        };
        let size = crate::object::object_size(conn, object)?.unwrap_or(0);
        entries.push((last_used, size, Entry::Root(name)));
    }
    let jobs: Vec<_> = conn
        .prepare(&format!(
            "SELECT {} FROM job_results",
            crate::records::JOB_COLUMNS
        ))?
        .query_map([], crate::records::job_result_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    for raw in jobs {
        let result = parse_job_result(raw)?;
        let size = job_result_objects(&result)
            .into_iter()
            .map(|o| crate::object::object_size(conn, o).map(|s| s.unwrap_or(0)))
            .sum::<Result<u64>>()?;
        entries.push((result.last_used, size, Entry::Job(result.key)));
    }
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let mut total = 0u64;
    let mut evicted = 0;
    for (_, size, entry) in entries {
        total += size;
        if total > threshold {
            match entry {
                Entry::Root(name) => remove_root_in(conn, RootKind::Cache, &name)?,
                Entry::Job(key) => remove_job_result_in(conn, &key)?,
            };
            evicted += 1;
        }
    }
    Ok(evicted)
}

pub(crate) struct Marked {
    pub objects: HashSet<ObjectRef>,
    pub chunks: HashSet<B3Digest>,
}

/// Every object reachable from roots, artifacts, job results and live
/// temporary roots (objects missing from the index are skipped).
pub(crate) fn mark(conn: &Connection) -> Result<Marked> {
    let mut stack: Vec<ObjectRef> = direct_references(conn)?.into_keys().collect();
    stack.extend(
        conn.prepare("SELECT object_kind, digest FROM temp_roots")?
            .query_map([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, B3Digest>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .filter_map(|(kind, digest)| {
                ObjectKind::from_code(kind)
                    .ok()
                    .map(|kind| ObjectRef { kind, digest })
            }),
    );
    let mut marked = Marked {
        objects: HashSet::new(),
        chunks: HashSet::new(),
    };
    let mut children =
        conn.prepare("SELECT object_kind, child FROM tree_children WHERE tree = ?1")?;
    let mut chunks = conn.prepare("SELECT chunk FROM blob_chunks WHERE blob = ?1")?;
    while let Some(object) = stack.pop() {
        if !marked.objects.insert(object) {
            continue;
        }
        match object.kind {
            ObjectKind::Tree => {
                let rows = children.query_map([object.digest], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get(1)?))
                })?;
                for row in rows {
                    let (kind, digest) = row?;
                    stack.push(ObjectRef {
                        kind: ObjectKind::from_code(kind)?,
                        digest,
                    });
                }
            }
            ObjectKind::Blob => {
                for chunk in chunks.query_map([object.digest], |row| row.get(0))? {
                    marked.chunks.insert(chunk?);
                }
            }
        }
    }
    Ok(marked)
}

/// References from outside the object graph: roots, artifacts, build job
/// logs, job results.
pub(crate) fn direct_references(conn: &Connection) -> Result<HashMap<ObjectRef, i64>> {
    let mut counts: HashMap<ObjectRef, i64> = HashMap::new();
    for sql in [
        "SELECT object_kind, digest FROM roots",
        "SELECT object_kind, digest FROM artifacts",
        crate::runs::JOB_LOG_REFERENCES,
    ] {
        let rows: Vec<(i64, B3Digest)> = conn
            .prepare(sql)?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (kind, digest) in rows {
            *counts
                .entry(ObjectRef {
                    kind: ObjectKind::from_code(kind)?,
                    digest,
                })
                .or_default() += 1;
        }
    }
    let jobs: Vec<_> = conn
        .prepare(&format!(
            "SELECT {} FROM job_results",
            crate::records::JOB_COLUMNS
        ))?
        .query_map([], crate::records::job_result_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    for raw in jobs {
        for object in job_result_objects(&parse_job_result(raw)?) {
            *counts.entry(object).or_default() += 1;
        }
    }
    Ok(counts)
}

/// What each object's count should be, from the rows that reference it.
pub(crate) fn expected_counts(
    conn: &Connection,
) -> Result<(HashMap<ObjectRef, i64>, HashMap<B3Digest, i64>)> {
    let mut objects = direct_references(conn)?;
    let rows: Vec<(i64, B3Digest, i64)> = conn
        .prepare("SELECT object_kind, child, n FROM tree_children")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (kind, digest, n) in rows {
        *objects
            .entry(ObjectRef {
                kind: ObjectKind::from_code(kind)?,
                digest,
            })
            .or_default() += n;
    }
    let mut chunks: HashMap<B3Digest, i64> = HashMap::new();
    let rows: Vec<B3Digest> = conn
        .prepare("SELECT chunk FROM blob_chunks")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for chunk in rows {
        *chunks.entry(chunk).or_default() += 1;
    }
    Ok((objects, chunks))
}

/// Count drift: `(description, object, recorded, expected)`.
pub(crate) fn count_drift(conn: &Connection) -> Result<Vec<(String, B3Digest, i64, i64)>> {
    let (objects, chunks) = expected_counts(conn)?;
    let mut drift = Vec::new();
    for kind in [ObjectKind::Blob, ObjectKind::Tree] {
        let rows: Vec<(B3Digest, i64)> = conn
            .prepare(&format!("SELECT digest, refs FROM {}", kind.table()))?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (digest, refs) in rows {
            let expected = objects
                .get(&ObjectRef { kind, digest })
                .copied()
                .unwrap_or(0);
            if refs != expected {
                drift.push((kind.name().to_owned(), digest, refs, expected));
            }
        }
    }
    let rows: Vec<(B3Digest, i64)> = conn
        .prepare("SELECT digest, refs FROM chunks")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (digest, refs) in rows {
        let expected = chunks.get(&digest).copied().unwrap_or(0);
        if refs != expected {
            drift.push(("chunk".to_owned(), digest, refs, expected));
        }
    }
    Ok(drift)
}

/// Sets every count to what the references say; returns how many changed.
pub(crate) fn recount(conn: &Connection) -> Result<u64> {
    let drift = count_drift(conn)?;
    for (kind, digest, _, expected) in &drift {
        let table = match kind.as_str() {
            "blob" => "blobs",
            "tree" => "trees",
            _ => "chunks",
        };
        conn.execute(
            &format!("UPDATE {table} SET refs = ?1 WHERE digest = ?2"),
            params![expected, digest],
        )?;
    }
    Ok(drift.len() as u64)
}
