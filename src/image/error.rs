//! `ImageError`: everything that can go wrong resolving, importing or
//! materialising an image, naming the image, archive or path concerned.

use std::io;
use std::path::PathBuf;

use kiln_store::{B3Digest, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(
        "no image named {name:?} in the store: import it first with `kiln image import {name} SRC`"
    )]
    NotFound { name: String },

    #[error("no image named {name:?} in the store (`kiln image ls` lists the imported images)")]
    NotImported { name: String },

    #[error(
        "image {name:?} is broken (its data was lost; `kiln store fsck` found it damaged): \
         import it again with `kiln image import {name} SRC`"
    )]
    Broken { name: String },

    #[error(
        "no tree {digest} in the store: it is not an image (import one with `kiln image import NAME SRC`)"
    )]
    UnknownDigest { digest: B3Digest },

    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("cannot read the host's {}: {source}", path.display())]
    HostRead { path: PathBuf, source: io::Error },

    #[error("{}: cannot import: {reason}", path.display())]
    UnsupportedSource { path: PathBuf, reason: String },

    #[error("{}: not a valid archive: {reason}; nothing was imported", archive.display())]
    Archive { archive: PathBuf, reason: String },

    #[error("{}: not a valid OCI image: {reason}; nothing was imported", archive.display())]
    Oci { archive: PathBuf, reason: String },

    #[error(
        "{}: blob {blob} {reason}: the archive is damaged or was tampered with; nothing was imported",
        archive.display()
    )]
    BlobMismatch {
        archive: PathBuf,
        blob: String,
        reason: String,
    },

    #[error("image {image:?} has an unreadable configuration ({reason}): import it again")]
    BadConfig { image: String, reason: String },

    #[error(
        "image {image:?} asks to run as user {user:?} (uid {uid}), but kiln's sandbox runs every \
         job as root (uid 0) in its own user namespace and cannot switch users yet: use an image \
         without a non-root `User` in its config (kiln refuses rather than silently run it as root)"
    )]
    UserNotSupported {
        image: String,
        user: String,
        uid: u32,
    },

    #[error(
        "image {image:?} asks to run as user {user:?}, which is not in the image's /etc/passwd"
    )]
    UnknownUser { image: String, user: String },

    #[error("{}: entry {entry:?} {reason}; nothing was imported", archive.display())]
    UnsafeEntry {
        archive: PathBuf,
        entry: String,
        reason: String,
    },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        ImageError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(path, e))
    }
}
