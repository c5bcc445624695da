//! Offline and air-gapped work (design §7, manifest "Sources"): remote git
//! sources fetched into the store ([`fetch`]), the lock file that pins what
//! a manifest resolves to ([`lock`]), what `kiln run --offline` needs before
//! it starts ([`check`]), and bundles that carry a build to another store
//! ([`bundle`]).
//!
//! Architecture invariant: only [`fetch::fetch_source`] (`kiln fetch`) opens
//! network connections; everything else reads remote sources from the store.

pub mod bundle;
pub mod check;
pub mod fetch;
pub mod lock;

use kiln_store::StoreError;

use crate::image::ImageError;
use crate::layers::LayerError;
use crate::resolve::ResolveError;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("git source {url}: cannot reach the remote: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("git source {url}: the remote has no ref {reference:?}")]
    UnknownRef { url: String, reference: String },
    #[error(
        "git source {url}: ref {reference:?} resolved to commit {commit}, but `rev` pins {rev}"
    )]
    RevMismatch {
        url: String,
        reference: String,
        commit: String,
        rev: String,
    },
    #[error("git source {url}: {reason}")]
    Git { url: String, reason: String },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("bundle {path}: {reason}")]
    Bundle { path: String, reason: String },
}

impl OfflineError {
    pub(crate) fn file(path: &std::path::Path, reason: impl std::fmt::Display) -> OfflineError {
        OfflineError::File {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}
