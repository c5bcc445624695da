//! Opening a store: layout, locking, index version checks.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use rusqlite_migration::SchemaVersion;

use crate::chunker::{CHUNKER_NAME, ChunkerParams};
use crate::chunks::{ChunkStore, FsChunkStore};
use crate::error::{IoContext, Result, StoreError};
use crate::schema::{self, SCHEMA_VERSION};

const INDEX_FILE: &str = "index.sqlite";
const LOCK_FILE: &str = "lock";
const FORMAT: &str = "kiln-store";
/// How long a writer waits for another writer's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(120);

/// Settings used only when a store is created; an existing store keeps its own.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    pub chunker: ChunkerParams,
}

/// An open store. One handle per thread; open more handles for more threads
/// or processes (sqlite and file locks keep them consistent).
pub struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) index_path: PathBuf,
    pub(crate) conn: Connection,
    pub(crate) chunks: Arc<dyn ChunkStore>,
    pub(crate) params: ChunkerParams,
    lock: Option<Arc<File>>,
    read_only: bool,
}

/// Held while objects may be created (shared) or deleted (exclusive):
/// deleting never races with a writer that relies on an object existing.
pub(crate) struct LockGuard(Option<Arc<File>>);

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(file) = &self.0 {
            let _ = file.unlock();
        }
    }
}

impl Store {
    /// Opens the store in `dir`, creating it if it does not exist.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, &StoreOptions::default())
    }

    pub fn open_with(dir: impl AsRef<Path>, options: &StoreOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let index_path = dir.join(INDEX_FILE);
        if !index_path.exists() {
            Self::create(&dir, &index_path, options)?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let (lock, read_only) = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
        {
            Ok(file) => (Some(Arc::new(file)), false),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) => {
                (File::open(&lock_path).ok().map(Arc::new), true)
            }
            Err(e) => return Err(StoreError::io(&lock_path, e)),
        };
        if read_only {
            let wal = dir.join(format!("{INDEX_FILE}-wal"));
            if fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                return Err(StoreError::UnfinishedLog { dir: dir.clone() });
            }
        }
        // A creator holds the lock exclusively until the index is complete.
        if let Some(file) = &lock {
            file.lock_shared().at(&lock_path)?;
        }
        let opened = (|| {
            let mut conn = open_connection(&index_path, read_only)?;
            check_format(&dir, &conn)?;
            check_schema(&dir, &mut conn, read_only)?;
            let params = read_params(&dir, &conn)?;
            Ok::<_, StoreError>((conn, params))
        })();
        if let Some(file) = &lock {
            let _ = file.unlock();
        }
        let (conn, params) = opened?;
        let chunks = Arc::new(FsChunkStore::open(&dir, false)?);
        Ok(Self {
            dir,
            index_path,
            conn,
            chunks,
            params,
            lock,
            read_only,
        })
    }

    fn create(dir: &Path, index_path: &Path, options: &StoreOptions) -> Result<()> {
        options.chunker.validate()?;
        fs::create_dir_all(dir).at(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .at(&lock_path)?;
        // Two processes may create the same store at once: serialise on the lock.
        lock.lock().at(&lock_path)?;
        if index_path.exists() {
            return Ok(());
        }
        FsChunkStore::open(dir, true)?;
        // Build the index under a temporary name: a crash never leaves a
        // half-made index where a store is expected.
        let building = dir.join(format!("{INDEX_FILE}.creating"));
        let _ = fs::remove_file(&building);
        let mut conn = open_connection(&building, false)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        schema::migrations()
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Migration {
                dir: dir.to_path_buf(),
                reason: e.to_string(),
            })?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let params_json = serde_json::to_string(&options.chunker).unwrap_or_default();
        for (key, value) in [
            ("format", FORMAT),
            ("chunker", CHUNKER_NAME),
            ("chunker_params", params_json.as_str()),
        ] {
            tx.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES (?1, ?2)",
                params![key, value],
            )?;
        }
        tx.commit()?;
        // Fold the WAL back so that the renamed file is complete by itself.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .ok();
        drop(conn);
        File::open(&building)
            .and_then(|f| f.sync_all())
            .at(&building)?;
        fs::rename(&building, index_path).at(index_path)?;
        let _ = lock.unlock();
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chunker parameters this store was created with.
    pub fn chunker_params(&self) -> ChunkerParams {
        self.params
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(crate) fn ensure_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn shared_lock(&self) -> Result<LockGuard> {
        if let Some(file) = &self.lock {
            file.lock_shared().at(self.dir.join(LOCK_FILE))?;
        }
        Ok(LockGuard(self.lock.clone()))
    }

    pub(crate) fn exclusive_lock(&self) -> Result<LockGuard> {
        self.ensure_writable()?;
        if let Some(file) = &self.lock {
            file.lock().at(self.dir.join(LOCK_FILE))?;
        }
        Ok(LockGuard(self.lock.clone()))
    }

    /// A second connection to the index (for worker threads and guards).
    pub(crate) fn reader(&self) -> Result<Connection> {
        open_connection(&self.index_path, self.read_only)
    }

    /// A connection inside one long read transaction: a consistent view
    /// without a lock round-trip per query. Only for callers holding the
    /// store lock (shared or exclusive), so nothing it sees can be deleted.
    pub(crate) fn snapshot_reader(&self) -> Result<Connection> {
        let conn = self.reader()?;
        conn.execute_batch("BEGIN")?;
        Ok(conn)
    }

    pub(crate) fn write_tx(&mut self) -> Result<rusqlite::Transaction<'_>> {
        self.ensure_writable()?;
        Ok(self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?)
    }
}

/// Threads for per-file work: more than the cores, because much of the time
/// goes to file system calls that block rather than compute.
pub(crate) fn worker_count(jobs: usize) -> usize {
    let threads = std::env::var("KILN_STORE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    threads.unwrap_or(cores * 2).clamp(1, 64).min(jobs.max(1))
}

pub(crate) fn open_connection(path: &Path, read_only: bool) -> Result<Connection> {
    let conn = if read_only {
        // A read-only file system cannot hold the WAL's shared memory; nobody
        // can write there either, so the file is immutable.
        let uri = format!("file:{}?immutable=1", path.display());
        Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )?
    } else {
        Connection::open(path)?
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .or_else(|_| Ok::<_, StoreError>(()))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn check_format(dir: &Path, conn: &Connection) -> Result<()> {
    let has_meta: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |_| Ok(true),
        )
        .optional()
        .map_err(|e| StoreError::NotAStore {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?
        .unwrap_or(false);
    let format: Option<String> = if has_meta {
        conn.query_row("SELECT value FROM meta WHERE key = 'format'", [], |row| {
            row.get(0)
        })
        .optional()?
    } else {
        None
    };
    if format.as_deref() != Some(FORMAT) {
        return Err(StoreError::NotAStore {
            dir: dir.to_path_buf(),
            reason: format!("{INDEX_FILE} does not carry the kiln-store format marker"),
        });
    }
    Ok(())
}

fn check_schema(dir: &Path, conn: &mut Connection, read_only: bool) -> Result<()> {
    let migrations = schema::migrations();
    let version = migrations
        .current_version(conn)
        .map_err(|e| StoreError::Migration {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
    match version {
        SchemaVersion::Outside(found) => Err(StoreError::SchemaTooNew {
            dir: dir.to_path_buf(),
            found: found.get(),
            supported: SCHEMA_VERSION,
        }),
        SchemaVersion::Inside(found) if found.get() == SCHEMA_VERSION => Ok(()),
        _ if read_only => Err(StoreError::Migration {
            dir: dir.to_path_buf(),
            reason: format!(
                "the index is older than version {SCHEMA_VERSION} and the store is read-only"
            ),
        }),
        _ => migrations
            .to_latest(conn)
            .map_err(|e| StoreError::Migration {
                dir: dir.to_path_buf(),
                reason: e.to_string(),
            }),
    }
}

fn read_params(dir: &Path, conn: &Connection) -> Result<ChunkerParams> {
    let chunker: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'chunker'", [], |row| {
            row.get(0)
        })
        .optional()?;
    let params: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'chunker_params'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let not_a_store = |reason: String| StoreError::NotAStore {
        dir: dir.to_path_buf(),
        reason,
    };
    // A store chunked by another chunker version stays fully readable (blobs
    // list their chunks); new writes keep using the recorded parameters.
    let _ = chunker;
    let params: ChunkerParams = serde_json::from_str(params.as_deref().unwrap_or(""))
        .map_err(|e| not_a_store(format!("unreadable chunker parameters: {e}")))?;
    params.validate()?;
    Ok(params)
}
