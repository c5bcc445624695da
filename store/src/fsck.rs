//! Integrity checking: re-hash everything, check every reference, and
//! optionally repair what can be repaired without losing committed data.

use std::collections::{HashMap, HashSet};
use std::fs;

use rusqlite::params;

use crate::chunks::decode_chunk;
use crate::curate::{count_drift, recount};
use crate::digest::B3Digest;
use crate::error::Result;
use crate::ingest::Progress;
use crate::object::{ObjectKind, ObjectRef, tree_children};
use crate::records::{job_result_objects, parse_job_result};
use crate::sessions::remove_dead_sessions;
use crate::store::Store;
use crate::tree::{Node, Tree};

/// One thing wrong, naming the object (digest, root or path).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub object: String,
    pub problem: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.problem)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FsckReport {
    pub chunks_checked: u64,
    pub blobs_checked: u64,
    pub trees_checked: u64,
    pub roots_checked: u64,
    pub problems: Vec<Problem>,
    /// What `--repair` did.
    pub repairs: Vec<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Default, Clone, Copy)]
pub struct FsckOptions<'a> {
    pub repair: bool,
    pub progress: Option<&'a dyn Progress>,
}

impl Store {
    pub fn fsck(&mut self, options: &FsckOptions<'_>) -> Result<FsckReport> {
        // Exclusive: an add in progress would look like orphans.
        let _lock = if options.repair || !self.is_read_only() {
            Some(self.exclusive_lock()?)
        } else {
            None
        };
        let mut report = FsckReport::default();
        let mut problem =
            |object: String, what: String| report_problem(&mut report.problems, object, what);

        // Chunks: every row has a file that decompresses and hashes right.
        let chunk_rows: Vec<(B3Digest, i64, bool)> = self
            .conn
            .prepare("SELECT digest, size, EXISTS (SELECT 1 FROM chunk_data d WHERE d.digest = chunks.digest) FROM chunks")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if let Some(progress) = options.progress {
            progress.start(
                chunk_rows.len() as u64,
                chunk_rows.iter().map(|c| c.1 as u64).sum(),
            );
        }
        let mut bad_chunks = HashSet::new();
        for (digest, size, _) in &chunk_rows {
            let result = crate::object::read_chunk_encoded(&self.conn, &*self.chunks, digest)
                .and_then(|encoded| decode_chunk(digest, &encoded));
            match result {
                Ok(raw) if raw.len() as i64 == *size => {}
                Ok(raw) => {
                    problem(
                        format!("chunk {digest}"),
                        format!("{} bytes, the index says {size}", raw.len()),
                    );
                    bad_chunks.insert(*digest);
                }
                Err(error) => {
                    problem(
                        format!("chunk {digest}"),
                        strip_prefix(&error.to_string(), digest),
                    );
                    bad_chunks.insert(*digest);
                }
            }
            if let Some(progress) = options.progress {
                progress.advance(*size as u64);
            }
        }
        report.chunks_checked = chunk_rows.len() as u64;
        let known_chunks: HashSet<B3Digest> = chunk_rows.iter().map(|c| c.0).collect();
        // Inline chunks have no file: a file with their name is an orphan.
        let file_chunks: HashSet<B3Digest> =
            chunk_rows.iter().filter(|c| !c.2).map(|c| c.0).collect();

        // Chunk files nobody indexes, and leftovers of interrupted writes.
        let scan = self.chunks.scan()?;
        let orphans: Vec<B3Digest> = scan
            .chunks
            .into_iter()
            .filter(|d| !file_chunks.contains(d))
            .collect();
        for digest in &orphans {
            problem(
                format!("chunk {digest}"),
                "file not referenced by the index (orphan)".into(),
            );
        }
        for stray in &scan.strays {
            problem(
                stray.display().to_string(),
                "stray file in the chunk directory".into(),
            );
        }
        let mut temps = self.chunks.temp_files()?;
        temps.extend(scan.temps.iter().cloned());
        for temp in &temps {
            problem(temp.display().to_string(), "leftover temporary file".into());
        }

        // Blobs: chunks present and good; the bytes hash to the digest.
        let blob_rows: Vec<(B3Digest, i64)> = self
            .conn
            .prepare("SELECT digest, size FROM blobs")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut bad_objects: HashSet<ObjectRef> = HashSet::new();
        for (digest, size) in &blob_rows {
            if let Some(what) = self.check_blob(digest, *size as u64, &known_chunks, &bad_chunks)? {
                problem(format!("blob {digest}"), what);
                bad_objects.insert(ObjectRef::blob(*digest));
            }
        }
        report.blobs_checked = blob_rows.len() as u64;
        let blobs: HashMap<B3Digest, u64> =
            blob_rows.iter().map(|(d, s)| (*d, *s as u64)).collect();

        // Trees: encoding hashes right and decodes; children exist with the
        // right kind and size; the reference rows match the encoding.
        let tree_rows: Vec<(B3Digest, i64, Vec<u8>)> = self
            .conn
            .prepare("SELECT digest, size, encoding FROM trees")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let tree_sizes: HashMap<B3Digest, u64> =
            tree_rows.iter().map(|(d, s, _)| (*d, *s as u64)).collect();
        for (digest, size, encoding) in &tree_rows {
            let what = check_tree(
                &self.conn,
                digest,
                *size as u64,
                encoding,
                &blobs,
                &tree_sizes,
            )?;
            if let Some(what) = what {
                problem(format!("tree {digest}"), what);
                bad_objects.insert(ObjectRef::tree(*digest));
            }
        }
        report.trees_checked = tree_rows.len() as u64;
        // A tree above a bad object is bad too (its data cannot be restored).
        let bad_objects = propagate_damage(&self.conn, bad_objects)?;
        let present = |object: &ObjectRef| match object.kind {
            ObjectKind::Blob => blobs.contains_key(&object.digest),
            ObjectKind::Tree => tree_sizes.contains_key(&object.digest),
        };
        let intact = |object: &ObjectRef| present(object) && !bad_objects.contains(object);

        // Roots, artifacts and job results name intact objects.
        let mut broken_roots = Vec::new();
        let mut healed_roots = Vec::new();
        for root in self.list_roots(None)? {
            report.roots_checked += 1;
            if root.broken && intact(&root.object) {
                healed_roots.push((root.kind, root.name.clone()));
            } else if !intact(&root.object) {
                if !root.broken {
                    problem(
                        format!("root {}/{}", root.kind, root.name),
                        format!("its {} is missing or damaged", root.object),
                    );
                }
                broken_roots.push((root.kind, root.name.clone(), root.broken));
            }
        }
        let artifacts: Vec<(i64, i64, i64, B3Digest)> = self
            .conn
            .prepare("SELECT id, build, object_kind, digest FROM artifacts")?
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut broken_artifacts = Vec::new();
        for (id, build, kind, digest) in artifacts {
            let object = ObjectRef {
                kind: ObjectKind::from_code(kind)?,
                digest,
            };
            if !intact(&object) {
                problem(
                    format!("artifact {id} of build {build}"),
                    format!("its {object} is missing or damaged"),
                );
                broken_artifacts.push(id);
            }
        }
        let jobs: Vec<_> = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM job_results",
                crate::records::JOB_COLUMNS
            ))?
            .query_map([], crate::records::job_result_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        let mut broken_jobs = Vec::new();
        for raw in jobs {
            let result = parse_job_result(raw)?;
            if let Some(missing) = job_result_objects(&result).into_iter().find(|o| !intact(o)) {
                if !result.broken {
                    problem(
                        format!("job result {}", result.key),
                        format!("its {missing} is missing or damaged"),
                    );
                }
                broken_jobs.push(result.key);
            }
        }

        // Build job logs name intact blobs.
        let job_logs: Vec<(i64, String, B3Digest)> = self
            .conn
            .prepare("SELECT build, name, log FROM build_jobs WHERE log IS NOT NULL")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut lost_logs = Vec::new();
        for (build, name, log) in job_logs {
            if !intact(&ObjectRef::blob(log)) {
                problem(
                    format!("log of job {name} of build {build}"),
                    format!("its blob {log} is missing or damaged"),
                );
                lost_logs.push((build, name));
            }
        }

        let drift = count_drift(&self.conn)?;
        for (kind, digest, recorded, expected) in &drift {
            problem(
                format!("{kind} {digest}"),
                format!("reference count {recorded}, expected {expected}"),
            );
        }

        if options.repair {
            let repairs = &mut report.repairs;
            // Space first: files no index row names (orphan chunks, temp
            // and stray files) go before anything is written to the index,
            // so a repair works on a full disk.
            for digest in &orphans {
                self.chunks.remove(digest)?;
            }
            if !orphans.is_empty() {
                repairs.push(format!("removed {} orphan chunk files", orphans.len()));
            }
            for path in temps.iter().chain(&scan.strays) {
                let removed = if path.is_dir() {
                    fs::remove_dir_all(path)
                } else {
                    fs::remove_file(path)
                };
                removed.map_err(|e| crate::StoreError::io(path, e))?;
                repairs.push(format!("removed {}", path.display()));
            }
            let dir = self.dir.clone();
            let tx = self.write_tx()?;
            let dead = remove_dead_sessions(&tx, &dir)?;
            if dead > 0 {
                repairs.push(format!(
                    "removed {dead} temporary-root sessions of dead processes"
                ));
            }
            // Damaged objects are removed from the index: their roots are
            // marked broken, and adding the same content again heals them.
            for object in &bad_objects {
                let table = object.kind.table();
                tx.execute(
                    &format!("DELETE FROM {table} WHERE digest = ?1"),
                    [object.digest],
                )?;
                match object.kind {
                    ObjectKind::Tree => {
                        tx.execute("DELETE FROM tree_children WHERE tree = ?1", [object.digest])?
                    }
                    ObjectKind::Blob => {
                        tx.execute("DELETE FROM blob_chunks WHERE blob = ?1", [object.digest])?
                    }
                };
                repairs.push(format!("removed damaged {object} from the index"));
            }
            for digest in &bad_chunks {
                tx.execute("DELETE FROM chunks WHERE digest = ?1", [digest])?;
                repairs.push(format!("removed damaged chunk {digest}"));
            }
            for (kind, name, already) in &broken_roots {
                if !already {
                    tx.execute(
                        "UPDATE roots SET broken = 1 WHERE kind = ?1 AND name = ?2",
                        params![kind.as_str(), name],
                    )?;
                    repairs.push(format!("marked root {kind}/{name} broken"));
                }
            }
            for (kind, name) in &healed_roots {
                tx.execute(
                    "UPDATE roots SET broken = 0 WHERE kind = ?1 AND name = ?2",
                    params![kind.as_str(), name],
                )?;
                repairs.push(format!("root {kind}/{name} has its data again"));
            }
            for key in &broken_jobs {
                tx.execute("UPDATE job_results SET broken = 1 WHERE key = ?1", [key])?;
            }
            for (build, name) in &lost_logs {
                tx.execute(
                    "UPDATE build_jobs SET log = NULL WHERE build = ?1 AND name = ?2",
                    params![build, name],
                )?;
                repairs.push(format!(
                    "forgot the lost log of job {name} of build {build}"
                ));
            }
            for id in &broken_artifacts {
                tx.execute("DELETE FROM artifacts WHERE id = ?1", [id])?;
                repairs.push(format!("removed artifact {id}, whose data is gone"));
            }
            let fixed = recount(&tx)?;
            if fixed > 0 {
                repairs.push(format!("corrected {fixed} reference counts"));
            }
            tx.commit()?;
            // Damaged chunks: the row went first, now the file.
            for digest in &bad_chunks {
                self.chunks.remove(digest)?;
            }
        }
        Ok(report)
    }

    fn check_blob(
        &self,
        digest: &B3Digest,
        size: u64,
        known: &HashSet<B3Digest>,
        bad: &HashSet<B3Digest>,
    ) -> Result<Option<String>> {
        let chunks: Vec<B3Digest> = self
            .conn
            .prepare_cached("SELECT chunk FROM blob_chunks WHERE blob = ?1 ORDER BY seq")?
            .query_map([digest], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if chunks.is_empty() && size > 0 {
            return Ok(Some("has no chunks".into()));
        }
        let mut hasher = blake3::Hasher::new();
        let mut total = 0u64;
        for chunk in &chunks {
            if !known.contains(chunk) {
                return Ok(Some(format!("chunk {chunk} is not in the index")));
            }
            if bad.contains(chunk) {
                return Ok(Some(format!("chunk {chunk} is damaged")));
            }
            let raw = crate::object::read_chunk(&self.conn, &*self.chunks, chunk)?;
            total += raw.len() as u64;
            hasher.update(&raw);
        }
        let actual = B3Digest::from(hasher.finalize());
        if total != size {
            return Ok(Some(format!(
                "content is {total} bytes, the index says {size}"
            )));
        }
        if actual != *digest {
            return Ok(Some(format!("content hashes to {actual}")));
        }
        Ok(None)
    }
}

fn check_tree(
    conn: &rusqlite::Connection,
    digest: &B3Digest,
    size: u64,
    encoding: &[u8],
    blobs: &HashMap<B3Digest, u64>,
    trees: &HashMap<B3Digest, u64>,
) -> Result<Option<String>> {
    let actual = B3Digest::of(encoding);
    if actual != *digest {
        return Ok(Some(format!("encoding hashes to {actual}")));
    }
    let tree = match Tree::decode(encoding) {
        Ok(tree) => tree,
        Err(error) => return Ok(Some(error.to_string())),
    };
    if tree.size() != size {
        return Ok(Some(format!(
            "size {} but the index says {size}",
            tree.size()
        )));
    }
    for entry in tree.entries() {
        let (known, object_size) = match &entry.node {
            Node::File { digest, size, .. } => (blobs.get(digest), size),
            Node::Directory { digest, size } => (trees.get(digest), size),
            _ => continue,
        };
        match known {
            None => {
                return Ok(Some(format!(
                    "entry {:?}: its {} is not in the store",
                    entry.name,
                    entry.node.kind_name()
                )));
            }
            Some(actual) if actual != object_size => {
                return Ok(Some(format!(
                    "entry {:?}: size {object_size}, the object has {actual}",
                    entry.name
                )));
            }
            _ => {}
        }
    }
    let mut expected: HashMap<ObjectRef, i64> = HashMap::new();
    for child in tree_children(&tree) {
        *expected.entry(child).or_default() += 1;
    }
    let recorded: HashMap<ObjectRef, i64> = conn
        .prepare_cached("SELECT object_kind, child, n FROM tree_children WHERE tree = ?1")?
        .query_map([digest], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, B3Digest>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter_map(|(kind, child, n)| {
            ObjectKind::from_code(kind).ok().map(|kind| {
                (
                    ObjectRef {
                        kind,
                        digest: child,
                    },
                    n,
                )
            })
        })
        .collect();
    if recorded != expected {
        return Ok(Some("its reference rows do not match its entries".into()));
    }
    Ok(None)
}

/// Adds every tree that (transitively) contains a damaged object.
fn propagate_damage(
    conn: &rusqlite::Connection,
    mut bad: HashSet<ObjectRef>,
) -> Result<HashSet<ObjectRef>> {
    let mut frontier: Vec<ObjectRef> = bad.iter().copied().collect();
    let mut parents =
        conn.prepare("SELECT tree FROM tree_children WHERE child = ?1 AND object_kind = ?2")?;
    while let Some(object) = frontier.pop() {
        let rows: Vec<B3Digest> = parents
            .query_map(params![object.digest, object.kind.code()], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for parent in rows {
            if bad.insert(ObjectRef::tree(parent)) {
                frontier.push(ObjectRef::tree(parent));
            }
        }
    }
    Ok(bad)
}

fn report_problem(problems: &mut Vec<Problem>, object: String, problem: String) {
    problems.push(Problem { object, problem });
}

fn strip_prefix(message: &str, digest: &B3Digest) -> String {
    message
        .strip_prefix(&format!("object {digest} is corrupt: "))
        .unwrap_or(message)
        .to_owned()
}
