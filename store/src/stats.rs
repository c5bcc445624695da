//! Store-wide numbers: how much is kept, and how much deduplication saves.

use crate::error::Result;
use crate::store::Store;

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
}
