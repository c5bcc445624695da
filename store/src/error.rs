//! `StoreError`: everything that can go wrong in the store, naming the object
//! or path concerned.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::{B3Digest, DigestParseError};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("{}: no space left on the device", path.display())]
    NoSpace { path: PathBuf },

    #[error("the store at {} is read-only", dir.display())]
    ReadOnly { dir: PathBuf },

    #[error(
        "the store at {} is read-only but its write-ahead log holds unfinished commits; \
         open it read-write once to fold them in",
        dir.display()
    )]
    UnfinishedLog { dir: PathBuf },

    #[error("store index: {0}")]
    Sqlite(#[from] rusqlite::Error),

    #[error(
        "the store at {} has schema version {found}, but this kiln knows versions up to {supported}: \
         it was written by a newer kiln; use that kiln or a fresh store",
        dir.display()
    )]
    SchemaTooNew {
        dir: PathBuf,
        found: usize,
        supported: usize,
    },

    #[error("the store at {}: cannot migrate the index: {reason}", dir.display())]
    Migration { dir: PathBuf, reason: String },

    #[error("the store at {} is not a kiln store: {reason}", dir.display())]
    NotAStore { dir: PathBuf, reason: String },

    #[error(transparent)]
    MalformedDigest(#[from] DigestParseError),

    #[error("no object {digest} in the store")]
    UnknownObject { digest: B3Digest },

    #[error("object {digest} is a {actual}, not a {expected}")]
    WrongKind {
        digest: B3Digest,
        expected: &'static str,
        actual: &'static str,
    },

    #[error("object {digest} is corrupt: {problem}")]
    Corrupt { digest: B3Digest, problem: String },

    #[error("{}: cannot store a {kind}", path.display())]
    UnsupportedFile { path: PathBuf, kind: &'static str },

    #[error("{}: changed while it was being added", path.display())]
    ChangedWhileAdding { path: PathBuf },

    #[error("invalid entry name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("invalid tree encoding: {reason}")]
    BadTree { reason: String },

    #[error("cannot restore into {}: {reason}", path.display())]
    RestoreTarget { path: PathBuf, reason: String },

    #[error("{}: creating an overlay whiteout needs root (mknod)", path.display())]
    NeedsPrivilege { path: PathBuf },

    #[error("invalid chunker parameters: {reason}")]
    ChunkerParams { reason: String },

    #[error("bundle rejected, nothing imported: {reason}")]
    Bundle { reason: String },

    #[error("unknown root kind {0:?} (expected image, source, job_result, cache or object)")]
    UnknownRootKind(String),

    #[error("no root {kind}/{name}")]
    UnknownRoot { kind: String, name: String },

    #[error("no build {0}")]
    UnknownBuild(i64),

    #[error("build {0} is running: stop it first (`kiln kill {0}`)")]
    BuildRunning(i64),

    #[error("build {0} is pinned: unpin it first (`kiln unpin {0}`)")]
    BuildPinned(i64),

    #[error("unknown build status {0:?}")]
    UnknownStatus(String),

    #[error("{what}: unreadable record: {reason}")]
    CorruptRecord { what: String, reason: String },

    /// A server record (token, submission) that cannot be written as asked.
    #[error("{what}: {reason}")]
    Record { what: &'static str, reason: String },
}

impl StoreError {
    /// Wraps an IO error with the path it concerns, singling out a full disk
    /// and a read-only file system, which the user fixes differently.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace { path },
            Some(libc::EROFS) => StoreError::ReadOnly { dir: path },
            _ => StoreError::Io { path, source },
        }
    }

    pub fn corrupt(digest: B3Digest, problem: impl Into<String>) -> Self {
        StoreError::Corrupt {
            digest,
            problem: problem.into(),
        }
    }

    pub fn bundle(reason: impl Into<String>) -> Self {
        StoreError::Bundle {
            reason: reason.into(),
        }
    }
}

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| StoreError::io(path, e))
    }
}
