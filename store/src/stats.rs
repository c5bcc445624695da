//! Store-wide numbers: how much is kept, and how much deduplication saves.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::store::Store;

/// Every byte the store directory holds on disk, by top-level entry
/// (`chunks`, `index.sqlite`, and what kiln keeps beside the objects:
/// `image-cache`, `vm-cache`, `scratch`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskUsage {
    /// Allocated bytes under the store directory (hard links counted once).
    pub total: u64,
    /// `(entry name, allocated bytes)`, largest first.
    pub parts: Vec<(String, u64)>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StoreStats {
    pub chunks: u64,
    pub blobs: u64,
    pub trees: u64,
    pub roots: u64,
    pub builds: u64,
    pub artifacts: u64,
    pub job_results: u64,
    /// Bytes named by roots, artifacts and job results, counting every
    /// file of every tree (what you would have without a store).
    pub logical_bytes: u64,
    /// Raw bytes of the distinct chunks.
    pub unique_bytes: u64,
    /// Bytes on disk: compressed chunks plus tree encodings.
    pub stored_bytes: u64,
    /// logical / stored.
    pub dedup_ratio: f64,
}

impl Store {
    pub fn stats(&self) -> Result<StoreStats> {
        let count = |sql: &str| -> Result<u64> {
            Ok(self.conn.query_row(sql, [], |row| row.get::<_, i64>(0))? as u64)
        };
        let logical = count(
            "SELECT COALESCE(SUM(CASE WHEN r.object_kind = 1 THEN b.size ELSE t.size END), 0) FROM \
             (SELECT object_kind, digest FROM roots UNION ALL SELECT object_kind, digest FROM artifacts \
              UNION ALL SELECT 2, output_layer FROM job_results UNION ALL SELECT 1, log FROM job_results WHERE log IS NOT NULL) r \
             LEFT JOIN blobs b ON r.object_kind = 1 AND b.digest = r.digest \
             LEFT JOIN trees t ON r.object_kind = 2 AND t.digest = r.digest",
        )?;
        let stored = count("SELECT COALESCE(SUM(stored), 0) FROM chunks")?
            + count("SELECT COALESCE(SUM(LENGTH(encoding)), 0) FROM trees")?;
        Ok(StoreStats {
            chunks: count("SELECT COUNT(*) FROM chunks")?,
            blobs: count("SELECT COUNT(*) FROM blobs")?,
            trees: count("SELECT COUNT(*) FROM trees")?,
            roots: count("SELECT COUNT(*) FROM roots")?,
            builds: count("SELECT COUNT(*) FROM builds")?,
            artifacts: count("SELECT COUNT(*) FROM artifacts")?,
            job_results: count("SELECT COUNT(*) FROM job_results")?,
            logical_bytes: logical,
            unique_bytes: count("SELECT COALESCE(SUM(size), 0) FROM chunks")?,
            stored_bytes: stored,
            dedup_ratio: if stored == 0 {
                1.0
            } else {
                logical as f64 / stored as f64
            },
        })
    }

    /// What the store directory takes on disk, walked without following
    /// symlinks: blocks allocated (as `du` counts), each inode once.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let mut seen = HashSet::new();
        let mut usage = DiskUsage::default();
        // The directory's own blocks, as `du` counts them.
        let own = std::fs::symlink_metadata(&self.dir).at(&self.dir)?;
        seen.insert((own.dev(), own.ino()));
        usage.total = own.blocks() * 512;
        for entry in std::fs::read_dir(&self.dir).at(&self.dir)? {
            let entry = entry.at(&self.dir)?;
            let bytes = allocated_in(&entry.path(), &mut seen)?;
            usage.total += bytes;
            usage
                .parts
                .push((entry.file_name().to_string_lossy().into_owned(), bytes));
        }
        usage
            .parts
            .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(usage)
    }
}

/// Allocated bytes of `path` and everything under it, each inode once.
pub fn allocated_bytes(path: &Path) -> Result<u64> {
    allocated_in(path, &mut HashSet::new())
}

/// Allocated bytes of `path` and everything under it (an explicit stack:
/// no recursion on the tree's depth), skipping inodes in `seen`. An entry
/// that vanishes meanwhile (a build removing its scratch directory) counts
/// as nothing.
fn allocated_in(path: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(crate::error::StoreError::io(&path, error)),
        };
        if seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
        if meta.is_dir() {
            match std::fs::read_dir(&path) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        stack.push(entry.path());
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(crate::error::StoreError::io(&path, error)),
            }
        }
    }
    Ok(total)
}
