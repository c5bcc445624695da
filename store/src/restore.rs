//! Reading objects back: `cat` a blob, `restore` a tree into a directory.
//!
//! Restoring only ever creates entries inside directories it created itself,
//! and names can hold no `/` or `..` (checked when a tree is decoded), so
//! nothing is written outside the target, and no symlink is followed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rusqlite::Connection;

use crate::chunks::ChunkStore;
use crate::digest::B3Digest;
use crate::error::{IoContext, Result, StoreError};
use crate::ingest::Progress;
use crate::layer;
use crate::object::{ObjectKind, ObjectRef, blob_chunks, load_tree, object_size};
use crate::store::Store;
use crate::tree::{Node, Tree};

#[derive(Default, Clone, Copy)]
pub struct RestoreOptions<'a> {
    /// Recreate whiteouts (needs root) and opaque markers; otherwise
    /// whiteouts are skipped and no device is ever created.
    pub layer: bool,
    pub progress: Option<&'a dyn Progress>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    pub files: u64,
    pub bytes: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub whiteouts: u64,
}

struct FileJob {
    path: PathBuf,
    digest: B3Digest,
    executable: bool,
}

impl Store {
    /// Whether `digest` is a tree or a blob (a tree if it is both).
    pub fn object_kind(&self, digest: &B3Digest) -> Result<ObjectKind> {
        if object_size(&self.conn, ObjectRef::tree(*digest))?.is_some() {
            Ok(ObjectKind::Tree)
        } else if object_size(&self.conn, ObjectRef::blob(*digest))?.is_some() {
            Ok(ObjectKind::Blob)
        } else {
            Err(StoreError::UnknownObject { digest: *digest })
        }
    }

    /// The logical size of an object.
    pub fn object_size(&self, object: ObjectRef) -> Result<u64> {
        crate::object::require(&self.conn, object)
    }

    pub fn tree(&self, digest: &B3Digest) -> Result<Tree> {
        match load_tree(&self.conn, digest)? {
            Some(tree) => Ok(tree),
            None if self.object_kind(digest).is_ok() => Err(StoreError::WrongKind {
                digest: *digest,
                expected: "tree",
                actual: "blob",
            }),
            None => Err(StoreError::UnknownObject { digest: *digest }),
        }
    }

    /// Writes a blob's bytes to `out`, verifying each chunk; returns the size.
    pub fn read_blob(&self, digest: &B3Digest, out: &mut dyn Write) -> Result<u64> {
        let _lock = self.shared_lock()?;
        write_blob(&self.conn, &*self.chunks, digest, out)
    }

    /// A blob's bytes in memory.
    pub fn blob_bytes(&self, digest: &B3Digest) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_blob(digest, &mut out)?;
        Ok(out)
    }

    /// Restores a tree into `target` (absent or an empty directory), or a
    /// blob into the file `target` (absent).
    pub fn restore(
        &self,
        digest: &B3Digest,
        target: &Path,
        options: &RestoreOptions<'_>,
    ) -> Result<RestoreReport> {
        let _lock = self.shared_lock()?;
        let mut report = RestoreReport::default();
        match self.object_kind(digest)? {
            ObjectKind::Blob => {
                if fs::symlink_metadata(target).is_ok() {
                    return Err(StoreError::RestoreTarget {
                        path: target.to_path_buf(),
                        reason: "it already exists".into(),
                    });
                }
                let size = self.object_size(ObjectRef::blob(*digest))?;
                if let Some(progress) = options.progress {
                    progress.start(1, size);
                }
                let job = FileJob {
                    path: target.to_path_buf(),
                    digest: *digest,
                    executable: false,
                };
                report.bytes = write_file(&self.conn, &*self.chunks, &job)?;
                report.files = 1;
                if let Some(progress) = options.progress {
                    progress.advance(size);
                }
            }
            ObjectKind::Tree => {
                prepare_target(target)?;
                let mut jobs = Vec::new();
                let tree = self.tree(digest)?;
                self.lay_out(&tree, target, options.layer, &mut jobs, &mut report)?;
                if let Some(progress) = options.progress {
                    let bytes = jobs
                        .iter()
                        .filter_map(|j| self.object_size(ObjectRef::blob(j.digest)).ok())
                        .sum();
                    progress.start(jobs.len() as u64, bytes);
                }
                report.bytes = self.write_files(&jobs, options.progress)?;
                report.files = jobs.len() as u64;
            }
        }
        Ok(report)
    }

    /// Creates directories, symlinks and whiteouts; collects the files.
    fn lay_out(
        &self,
        tree: &Tree,
        dir: &Path,
        layer_mode: bool,
        jobs: &mut Vec<FileJob>,
        report: &mut RestoreReport,
    ) -> Result<()> {
        if layer_mode && tree.opaque() {
            layer::set_opaque(dir)?;
        }
        for entry in tree.entries() {
            let path = dir.join(entry.name.as_os_str());
            match &entry.node {
                Node::File {
                    digest, executable, ..
                } => {
                    jobs.push(FileJob {
                        path,
                        digest: *digest,
                        executable: *executable,
                    });
                }
                Node::Directory { digest, .. } => {
                    fs::create_dir(&path).at(&path)?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).at(&path)?;
                    report.directories += 1;
                    let sub = load_tree(&self.conn, digest)?.ok_or_else(|| {
                        StoreError::corrupt(
                            *digest,
                            format!("tree for {} is missing", path.display()),
                        )
                    })?;
                    self.lay_out(&sub, &path, layer_mode, jobs, report)?;
                }
                Node::Symlink { target } => {
                    use std::os::unix::ffi::OsStrExt;
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path)
                        .at(&path)?;
                    report.symlinks += 1;
                }
                Node::Whiteout => {
                    if layer_mode {
                        layer::make_whiteout(&path)?;
                    }
                    report.whiteouts += 1;
                }
            }
        }
        Ok(())
    }

    fn write_files(&self, jobs: &[FileJob], progress: Option<&dyn Progress>) -> Result<u64> {
        let workers = crate::store::worker_count(jobs.len());
        let mut readers = Vec::with_capacity(workers);
        for _ in 0..workers {
            readers.push(self.snapshot_reader()?);
        }
        // Whole directories per worker: threads creating files in one
        // directory would queue on its lock.
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        for (index, job) in jobs.iter().enumerate() {
            match groups.last_mut() {
                Some(group)
                    if jobs[group.start].path.parent() == job.path.parent()
                        && group.len() < 256 =>
                {
                    group.end = index + 1;
                }
                _ => groups.push(index..index + 1),
            }
        }
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let chunks = &*self.chunks;
        let groups = &groups;
        std::thread::scope(|scope| {
            let handles: Vec<_> = readers
                .into_iter()
                .map(|conn| {
                    let (next, failed) = (&next, &failed);
                    scope.spawn(move || -> Result<u64> {
                        let mut bytes = 0;
                        let mut pending = 0..0;
                        loop {
                            let index = match pending.next() {
                                Some(index) => index,
                                None => {
                                    let group = next.fetch_add(1, Ordering::Relaxed);
                                    if group >= groups.len() || failed.load(Ordering::Relaxed) {
                                        return Ok(bytes);
                                    }
                                    pending = groups[group].clone();
                                    continue;
                                }
                            };
                            match write_file(&conn, chunks, &jobs[index]) {
                                Ok(n) => {
                                    bytes += n;
                                    if let Some(progress) = progress {
                                        progress.advance(n);
                                    }
                                }
                                Err(error) => {
                                    failed.store(true, Ordering::Relaxed);
                                    return Err(error);
                                }
                            }
                        }
                    })
                })
                .collect();
            let mut total = 0;
            let mut first_error = None;
            for handle in handles {
                match handle.join() {
                    Ok(Ok(bytes)) => total += bytes,
                    Ok(Err(error)) => {
                        first_error.get_or_insert(error);
                    }
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            first_error.map_or(Ok(total), Err)
        })
    }
}

/// The process umask, read without changing it (`umask(2)` cannot).
fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("Umask:"))?;
                u32::from_str_radix(line.split_whitespace().nth(1)?, 8).ok()
            })
            .unwrap_or(0o777)
    })
}

fn prepare_target(target: &Path) -> Result<()> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(target).at(target)?;
        }
        Err(e) => return Err(StoreError::io(target, e)),
        Ok(meta) if meta.is_dir() => {
            if fs::read_dir(target).at(target)?.next().is_some() {
                return Err(StoreError::RestoreTarget {
                    path: target.to_path_buf(),
                    reason: "the directory is not empty".into(),
                });
            }
        }
        Ok(_) => {
            return Err(StoreError::RestoreTarget {
                path: target.to_path_buf(),
                reason: "it exists and is not a directory".into(),
            });
        }
    }
    fs::set_permissions(target, fs::Permissions::from_mode(0o755)).at(target)
}

fn write_file(conn: &Connection, chunks: &dyn ChunkStore, job: &FileJob) -> Result<u64> {
    let mode = if job.executable { 0o755 } else { 0o644 };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&job.path)
        .at(&job.path)?;
    let size = write_blob(conn, chunks, &job.digest, &mut file).map_err(|e| match e {
        StoreError::Io { source, .. } => StoreError::io(&job.path, source),
        other => other,
    })?;
    // The umask may have cleared bits: then set the mode exactly.
    if mode & !umask() != mode {
        file.set_permissions(fs::Permissions::from_mode(mode))
            .at(&job.path)?;
    }
    Ok(size)
}

fn write_blob(
    conn: &Connection,
    chunks: &dyn ChunkStore,
    digest: &B3Digest,
    out: &mut dyn Write,
) -> Result<u64> {
    let size = object_size(conn, ObjectRef::blob(*digest))?;
    let Some(size) = size else {
        return Err(if load_tree(conn, digest)?.is_some() {
            StoreError::WrongKind {
                digest: *digest,
                expected: "blob",
                actual: "tree",
            }
        } else {
            StoreError::UnknownObject { digest: *digest }
        });
    };
    let mut written = 0;
    for (chunk, _) in blob_chunks(conn, digest)? {
        let bytes = crate::object::read_chunk(conn, chunks, &chunk)?;
        out.write_all(&bytes).map_err(|e| StoreError::Io {
            path: PathBuf::from("<output>"),
            source: e,
        })?;
        written += bytes.len() as u64;
    }
    if written != size {
        return Err(StoreError::corrupt(
            *digest,
            format!("chunks add up to {written} bytes, expected {size}"),
        ));
    }
    Ok(written)
}
