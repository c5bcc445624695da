//! Adding files and directories: walk, hash and chunk in parallel, write
//! chunks, then commit index rows in batches (chunks durable first).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::chunker::ChunkerParams;
use crate::chunks::ChunkStore;
use crate::digest::B3Digest;
use crate::error::{IoContext, Result, StoreError};
use crate::layer;
use crate::object::{
    INLINE_CHUNK_MAX, ObjectRef, has_blob, has_chunk, insert_blob, insert_chunk, insert_tree,
};
use crate::sessions::{TempRoots, hold};
use crate::store::Store;
use crate::tree::{EntryName, Node, Tree, TreeEntry};

/// Receives progress of long operations (a CLI draws a bar with it).
pub trait Progress: Sync {
    fn start(&self, files: u64, bytes: u64);
    fn advance(&self, bytes: u64);
}

#[derive(Default, Clone, Copy)]
pub struct AddOptions<'a> {
    /// Record overlayfs whiteouts (char device 0:0) and opaque directories
    /// (`trusted.overlay.opaque` / `user.overlay.opaque` = "y").
    pub layer: bool,
    pub progress: Option<&'a dyn Progress>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AddReport {
    pub object: ObjectRef,
    /// Logical bytes of the files added.
    pub size: u64,
    pub files: u64,
    /// Chunks written by this add (not already in the store).
    pub new_chunks: u64,
    /// Compressed bytes those chunks take.
    pub new_bytes: u64,
}

/// Commit a batch after this many files, new bytes, or this much time.
const BATCH_FILES: usize = 4096;
const BATCH_BYTES: u64 = 256 * 1024 * 1024;
const BATCH_TIME: Duration = Duration::from_secs(2);
/// Files bigger than this are chunked from a stream, not from memory.
const IN_MEMORY_MAX: u64 = 512 * 1024 * 1024;

enum Pending {
    File { index: usize, executable: bool },
    Dir(PendingDir),
    Symlink(Vec<u8>),
    Whiteout,
}

struct PendingDir {
    opaque: bool,
    entries: Vec<(EntryName, Pending)>,
}

struct FileJob {
    path: PathBuf,
    size: u64,
}

struct ChunkInfo {
    digest: B3Digest,
    size: u64,
    /// `Some(stored bytes)` when this add wrote (or may rely on) a chunk
    /// that the index does not have yet.
    written: Option<u64>,
    /// This very call wrote the file (for counting).
    fresh: bool,
    /// Small chunks travel to the index instead of a file.
    inline: Option<Vec<u8>>,
}

struct FileOutcome {
    index: usize,
    digest: B3Digest,
    size: u64,
    /// `None` when the blob is already indexed.
    chunks: Option<Vec<ChunkInfo>>,
}

impl Store {
    /// Adds a file (→ blob) or a directory (→ tree). The result is held by
    /// `roots` until the caller names it (a root, an artifact, a job result).
    pub fn add_path(
        &mut self,
        path: &Path,
        options: &AddOptions<'_>,
        roots: &TempRoots,
    ) -> Result<AddReport> {
        self.ensure_writable()?;
        let meta = fs::symlink_metadata(path).at(path)?;
        let mut jobs = Vec::new();
        let top = if meta.is_dir() {
            // A store never adds itself: a store kept inside a project
            // (a path source `./.`) would otherwise be read into the
            // source, differ on every run, and hold sockets.
            let own = fs::metadata(&self.dir).ok().map(|m| (m.dev(), m.ino()));
            Some(walk(path, options.layer, own, &mut jobs)?)
        } else if meta.is_file() {
            jobs.push(FileJob {
                path: path.to_path_buf(),
                size: meta.len(),
            });
            None
        } else {
            return Err(StoreError::UnsupportedFile {
                path: path.to_path_buf(),
                kind: file_kind(&meta.file_type()),
            });
        };
        if let Some(progress) = options.progress {
            progress.start(jobs.len() as u64, jobs.iter().map(|j| j.size).sum());
        }

        let lock = self.shared_lock()?;
        let written: Mutex<HashMap<B3Digest, u64>> = Mutex::new(HashMap::new());
        let committed = (|| {
            let (digests, new_chunks, new_bytes) =
                self.ingest_files(&jobs, options.progress, &written)?;
            let tx = self.write_tx()?;
            let (object, size) = match top {
                Some(dir) => {
                    let (digest, size) = commit_dir(&tx, dir, &jobs, &digests)?;
                    (ObjectRef::tree(digest), size)
                }
                None => (ObjectRef::blob(digests[0]), jobs[0].size),
            };
            hold(&tx, roots.session_id(), object)?;
            tx.commit()?;
            Ok::<_, StoreError>((object, size, new_chunks, new_bytes))
        })();
        drop(lock);
        let (object, size, new_chunks, new_bytes) = match committed {
            Ok(done) => done,
            Err(error) => {
                self.discard_unindexed(&written);
                return Err(error);
            }
        };
        Ok(AddReport {
            object,
            size,
            files: jobs.len() as u64,
            new_chunks,
            new_bytes,
        })
    }

    /// Adds bytes as a blob (a log, a small generated file).
    pub fn add_bytes(&mut self, bytes: &[u8], roots: &TempRoots) -> Result<AddReport> {
        self.ensure_writable()?;
        let lock = self.shared_lock()?;
        let digest = B3Digest::of(bytes);
        let written = Mutex::new(HashMap::new());
        let committed = (|| {
            let chunks = if has_blob(&self.conn, &digest)? {
                None
            } else {
                Some(chunk_bytes(
                    &self.conn,
                    &*self.chunks,
                    &self.params,
                    digest,
                    bytes,
                    &written,
                )?)
            };
            let outcome = FileOutcome {
                index: 0,
                digest,
                size: bytes.len() as u64,
                chunks,
            };
            let (new_chunks, new_bytes) = count_new(&outcome);
            self.chunks.sync()?;
            let tx = self.write_tx()?;
            commit_outcome(&tx, &outcome)?;
            let object = ObjectRef::blob(digest);
            hold(&tx, roots.session_id(), object)?;
            tx.commit()?;
            Ok::<_, StoreError>((object, new_chunks, new_bytes))
        })();
        drop(lock);
        let (object, new_chunks, new_bytes) = match committed {
            Ok(done) => done,
            Err(error) => {
                self.discard_unindexed(&written);
                return Err(error);
            }
        };
        Ok(AddReport {
            object,
            size: bytes.len() as u64,
            files: 1,
            new_chunks,
            new_bytes,
        })
    }

    /// Adds a tree whose children are already in the store.
    pub fn add_tree(&mut self, tree: &Tree, roots: &TempRoots) -> Result<B3Digest> {
        let lock = self.shared_lock()?;
        let tx = self.write_tx()?;
        let (digest, _) = insert_tree(&tx, tree)?;
        hold(&tx, roots.session_id(), ObjectRef::tree(digest))?;
        tx.commit()?;
        drop(lock);
        Ok(digest)
    }

    /// After a failed add: removes the chunk files it wrote that no index
    /// row names, so a failure (a full disk above all) gives back the space
    /// it took. Under the exclusive lock, so no other writer is between
    /// writing the same chunk's file and committing its row. Best effort:
    /// what stays behind is an orphan `fsck --repair` removes.
    fn discard_unindexed(&mut self, written: &Mutex<HashMap<B3Digest, u64>>) {
        let digests: Vec<B3Digest> = written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        if digests.is_empty() {
            return;
        }
        let Ok(_lock) = self.exclusive_lock() else {
            return;
        };
        for digest in digests {
            if matches!(has_chunk(&self.conn, &digest), Ok(false)) {
                let _ = self.chunks.remove(&digest);
            }
        }
    }

    /// Hashes and stores every file in parallel; the calling thread commits.
    /// `written` collects the chunk files written (for `discard_unindexed`).
    fn ingest_files(
        &mut self,
        jobs: &[FileJob],
        progress: Option<&dyn Progress>,
        written: &Mutex<HashMap<B3Digest, u64>>,
    ) -> Result<(Vec<B3Digest>, u64, u64)> {
        let workers = crate::store::worker_count(jobs.len());
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let chunks = self.chunks.clone();
        let params = self.params;
        let mut readers = Vec::with_capacity(workers);
        for _ in 0..workers {
            readers.push(self.snapshot_reader()?);
        }
        let mut digests = vec![B3Digest::from_array([0; 32]); jobs.len()];
        let (mut new_chunks, mut new_bytes) = (0, 0);
        let conn = &mut self.conn;
        std::thread::scope(|scope| -> Result<()> {
            let (sender, receiver) = mpsc::sync_channel::<Result<FileOutcome>>(256);
            for reader in readers {
                let sender = sender.clone();
                let (next, failed, chunks) = (&next, &failed, &chunks);
                scope.spawn(move || {
                    // One buffer per worker, reused: fresh allocations per
                    // file cost a page fault per 4 KiB.
                    let mut buffer = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= jobs.len() || failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let job = &jobs[index];
                        let outcome = ingest_file(
                            &reader,
                            &**chunks,
                            &params,
                            job,
                            index,
                            written,
                            &mut buffer,
                        );
                        if let (Some(progress), Ok(_)) = (progress, &outcome) {
                            progress.advance(jobs[index].size);
                        }
                        if outcome.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        if sender.send(outcome).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(sender);
            let mut batch: Vec<FileOutcome> = Vec::new();
            let mut batch_bytes = 0;
            let mut batch_started = Instant::now();
            let mut first_error = None;
            for outcome in receiver {
                let outcome = match outcome {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        first_error.get_or_insert(error);
                        continue;
                    }
                };
                if first_error.is_some() {
                    continue;
                }
                digests[outcome.index] = outcome.digest;
                let (chunks_here, bytes_here) = count_new(&outcome);
                new_chunks += chunks_here;
                new_bytes += bytes_here;
                batch_bytes += bytes_here;
                batch.push(outcome);
                if batch.len() >= BATCH_FILES
                    || batch_bytes >= BATCH_BYTES
                    || batch_started.elapsed() >= BATCH_TIME
                {
                    if let Err(error) = flush(conn, &*chunks, &mut batch) {
                        failed.store(true, Ordering::Relaxed);
                        first_error = Some(error);
                    }
                    batch_bytes = 0;
                    batch_started = Instant::now();
                }
            }
            if let Some(error) = first_error {
                return Err(error);
            }
            flush(conn, &*chunks, &mut batch)
        })?;
        Ok((digests, new_chunks, new_bytes))
    }
}

fn count_new(outcome: &FileOutcome) -> (u64, u64) {
    outcome.chunks.as_ref().map_or((0, 0), |chunks| {
        chunks
            .iter()
            .filter(|c| c.fresh)
            .filter_map(|c| c.written)
            .fold((0, 0), |(n, bytes), stored| (n + 1, bytes + stored))
    })
}

/// Makes the batch's chunk files durable, then commits their rows.
fn flush(
    conn: &mut Connection,
    chunks: &dyn ChunkStore,
    batch: &mut Vec<FileOutcome>,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    if batch.iter().any(|o| {
        o.chunks
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c.written.is_some() && c.inline.is_none()))
    }) {
        chunks.sync()?;
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for outcome in batch.iter() {
        commit_outcome(&tx, outcome)?;
    }
    tx.commit()?;
    batch.clear();
    Ok(())
}

fn commit_outcome(conn: &Connection, outcome: &FileOutcome) -> Result<()> {
    let Some(chunks) = &outcome.chunks else {
        return Ok(());
    };
    for chunk in chunks {
        if let Some(stored) = chunk.written {
            insert_chunk(
                conn,
                &chunk.digest,
                chunk.size,
                stored,
                chunk.inline.as_deref(),
            )?;
        }
    }
    let list: Vec<B3Digest> = chunks.iter().map(|c| c.digest).collect();
    insert_blob(conn, &outcome.digest, outcome.size, &list)?;
    Ok(())
}

fn ingest_file(
    conn: &Connection,
    store: &dyn ChunkStore,
    params: &ChunkerParams,
    job: &FileJob,
    index: usize,
    written: &Mutex<HashMap<B3Digest, u64>>,
    buffer: &mut Vec<u8>,
) -> Result<FileOutcome> {
    if job.size > IN_MEMORY_MAX {
        return ingest_streaming(conn, store, params, job, index, written);
    }
    read_exact_size(&job.path, job.size, buffer)?;
    // Single-threaded hashing: files are already spread over the workers.
    let digest = B3Digest::of(buffer);
    let chunks = if has_blob(conn, &digest)? {
        None
    } else {
        Some(chunk_bytes(conn, store, params, digest, buffer, written)?)
    };
    Ok(FileOutcome {
        index,
        digest,
        size: job.size,
        chunks,
    })
}

/// Opens a file the walk saw as a regular file, never following a symlink
/// that replaced it since (content is not trusted to stay put).
fn open_regular(path: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at(path)
}

fn read_exact_size(path: &Path, size: u64, data: &mut Vec<u8>) -> Result<()> {
    let mut file = open_regular(path)?;
    data.clear();
    data.reserve(size as usize + 1);
    file.by_ref().take(size + 1).read_to_end(data).at(path)?;
    if data.len() as u64 != size {
        return Err(StoreError::ChangedWhileAdding {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// `digest` is the blob's, the hash of all of `data`: a blob of one chunk
/// shares it with its chunk, so small files are hashed once, not twice.
fn chunk_bytes(
    conn: &Connection,
    store: &dyn ChunkStore,
    params: &ChunkerParams,
    digest: B3Digest,
    data: &[u8],
    written: &Mutex<HashMap<B3Digest, u64>>,
) -> Result<Vec<ChunkInfo>> {
    if data.len() as u64 <= params.single_chunk_max {
        return Ok(vec![store_chunk(conn, store, digest, data, written)?]);
    }
    params
        .cut(data)
        .map(|(offset, len)| {
            let bytes = &data[offset..offset + len];
            store_chunk(conn, store, B3Digest::of(bytes), bytes, written)
        })
        .collect()
}

fn store_chunk(
    conn: &Connection,
    store: &dyn ChunkStore,
    digest: B3Digest,
    bytes: &[u8],
    written: &Mutex<HashMap<B3Digest, u64>>,
) -> Result<ChunkInfo> {
    let size = bytes.len() as u64;
    let info = |written, fresh, inline| ChunkInfo {
        digest,
        size,
        written,
        fresh,
        inline,
    };
    let seen = written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&digest)
        .copied();
    if let Some(stored) = seen {
        return Ok(info(Some(stored), false, None));
    }
    if has_chunk(conn, &digest)? {
        return Ok(info(None, false, None));
    }
    let encoded = crate::chunks::encode_chunk(bytes).map_err(|e| StoreError::io("<zstd>", e))?;
    let stored = encoded.len() as u64;
    // The same bytes always compress the same way, so a chunk is either
    // always inline or always a file, whichever worker meets it.
    if encoded.len() <= INLINE_CHUNK_MAX {
        return Ok(info(Some(stored), true, Some(encoded)));
    }
    store.put_encoded(&digest, &encoded)?;
    written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(digest, stored);
    Ok(info(Some(stored), true, None))
}

/// Huge files: hash first (memory-mapped, parallel); chunk a stream only if
/// the blob is new, and check the stream hashes to the same digest.
fn ingest_streaming(
    conn: &Connection,
    store: &dyn ChunkStore,
    params: &ChunkerParams,
    job: &FileJob,
    index: usize,
    written: &Mutex<HashMap<B3Digest, u64>>,
) -> Result<FileOutcome> {
    let path = &job.path;
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path).at(path)?;
    let digest: B3Digest = hasher.finalize().into();
    if has_blob(conn, &digest)? {
        return Ok(FileOutcome {
            index,
            digest,
            size: job.size,
            chunks: None,
        });
    }
    let file = open_regular(path)?;
    let mut check = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut total = 0u64;
    for chunk in params.stream(file) {
        let chunk = chunk.map_err(|e| StoreError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        check.update(&chunk.data);
        total += chunk.length as u64;
        chunks.push(store_chunk(
            conn,
            store,
            B3Digest::of(&chunk.data),
            &chunk.data,
            written,
        )?);
    }
    if B3Digest::from(check.finalize()) != digest || total != job.size {
        return Err(StoreError::ChangedWhileAdding { path: path.clone() });
    }
    Ok(FileOutcome {
        index,
        digest,
        size: job.size,
        chunks: Some(chunks),
    })
}

fn walk(
    dir: &Path,
    layer_mode: bool,
    skip: Option<(u64, u64)>,
    jobs: &mut Vec<FileJob>,
) -> Result<PendingDir> {
    let opaque = layer_mode && layer::is_opaque(dir)?;
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let path = entry.path();
        let name = EntryName::new(entry.file_name().as_bytes()).map_err(|e| match e {
            StoreError::InvalidName { reason, .. } => StoreError::InvalidName {
                name: path.display().to_string(),
                reason,
            },
            other => other,
        })?;
        let meta = fs::symlink_metadata(&path).at(&path)?;
        let file_type = meta.file_type();
        let pending = if file_type.is_file() {
            jobs.push(FileJob {
                path: path.clone(),
                size: meta.len(),
            });
            Pending::File {
                index: jobs.len() - 1,
                executable: meta.permissions().mode() & 0o111 != 0,
            }
        } else if file_type.is_dir() {
            if skip == Some((meta.dev(), meta.ino())) {
                continue;
            }
            Pending::Dir(walk(&path, layer_mode, skip, jobs)?)
        } else if file_type.is_symlink() {
            let target = fs::read_link(&path).at(&path)?;
            Pending::Symlink(target.as_os_str().as_bytes().to_vec())
        } else if layer_mode && file_type.is_char_device() && meta.rdev() == 0 {
            Pending::Whiteout
        } else {
            return Err(StoreError::UnsupportedFile {
                path,
                kind: file_kind(&file_type),
            });
        };
        entries.push((name, pending));
    }
    Ok(PendingDir { opaque, entries })
}

fn file_kind(file_type: &fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "symlink (only symlinks inside a directory are stored)"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_char_device() {
        "character device (whiteouts are stored only in layer mode)"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Inserts the trees bottom-up; returns the top digest and size.
fn commit_dir(
    conn: &Connection,
    dir: PendingDir,
    jobs: &[FileJob],
    digests: &[B3Digest],
) -> Result<(B3Digest, u64)> {
    let mut entries = Vec::with_capacity(dir.entries.len());
    for (name, pending) in dir.entries {
        let node = match pending {
            Pending::File { index, executable } => Node::File {
                digest: digests[index],
                size: jobs[index].size,
                executable,
            },
            Pending::Dir(sub) => {
                let (digest, size) = commit_dir(conn, sub, jobs, digests)?;
                Node::Directory { digest, size }
            }
            Pending::Symlink(target) => Node::Symlink { target },
            Pending::Whiteout => Node::Whiteout,
        };
        entries.push(TreeEntry { name, node });
    }
    let tree = Tree::new(dir.opaque, entries)?;
    let size = tree.size();
    let (digest, _) = insert_tree(conn, &tree)?;
    Ok((digest, size))
}
