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
