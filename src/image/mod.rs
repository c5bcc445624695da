//! Images: the root filesystem a container job runs on (design §3, §6).
//!
//! An image is either the built-in `"host"` view (the host's root, read-only,
//! without per-user and secret places, keyed by a fingerprint of the host's
//! installed software) or a tree in the store, imported under a name with
//! `kiln image import NAME SRC` and kept alive by an `image/NAME` root.
//! [`resolve`] turns what a manifest names into an [`ImageRef`], whose
//! [`ImageRef::digest`] enters job keys; [`materialise`] turns it into the
//! sandbox's [`RootFs`](crate::sandbox::RootFs). See docs/images.md.

pub mod cache;
mod catalog;
mod config;
mod error;
mod host;
mod import;
mod materialise;
mod name;
mod oci;
pub(crate) mod unpack;

use std::fmt;

use kiln_store::{B3Digest, DIGEST_PREFIX, ObjectKind, RootKind, Store, StoreError};

pub use catalog::{ImageInfo, list, remove};
pub use config::{IMAGE_CONFIG_PATH, ImageConfig, OciOrigin, image_config};
pub use error::ImageError;
pub use host::{
    HOST_EXCLUDED, HOST_FINGERPRINT_VERSION, fingerprint_root, host_excludes, host_fingerprint,
};
pub use import::{ArchiveFormat, ImportOptions, ImportReport, Skipped, SourceKind, import};
pub use materialise::materialise;
pub use name::validate_name;
pub use oci::OciFormat;

/// The name of the built-in host image.
pub const HOST_IMAGE: &str = "host";

/// Where [`materialise`] keeps restored images unless told otherwise:
/// `<store>/image-cache`, inside the store directory so that the host view,
/// which hides the store, hides them too.
pub fn default_cache_dir(store: &Store) -> std::path::PathBuf {
    store.dir().join(cache::IMAGE_CACHE)
}

/// A resolved image: what a job key and a driver need.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageRef {
    /// The built-in read-only view of the host's root.
    Host { fingerprint: B3Digest },
    /// A tree in the store. `name` is the imported name, or the
    /// `blake3:<hex>` text when the manifest named the digest itself.
    Tree { name: String, digest: B3Digest },
}

impl ImageRef {
    /// The digest that enters the job key: the host fingerprint or the tree.
    pub fn digest(&self) -> B3Digest {
        match self {
            ImageRef::Host { fingerprint } => *fingerprint,
            ImageRef::Tree { digest, .. } => *digest,
        }
    }

    /// The name as the manifest wrote it (`host`, `debian/stable`, ...).
    pub fn name(&self) -> &str {
        match self {
            ImageRef::Host { .. } => HOST_IMAGE,
            ImageRef::Tree { name, .. } => name,
        }
    }

    pub fn is_host(&self) -> bool {
        matches!(self, ImageRef::Host { .. })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Host { fingerprint } => write!(f, "host ({fingerprint})"),
            ImageRef::Tree { name, digest } if name.starts_with(DIGEST_PREFIX) => {
                write!(f, "{digest}")
            }
            ImageRef::Tree { name, digest } => write!(f, "{name} ({digest})"),
        }
    }
}

/// Resolves what a manifest names as its image: `"host"`, a `blake3:<hex>`
/// tree digest, or an imported image name (whose last-used time is touched;
/// a read-only store is left as it is). A Djinn `docker` image name
/// (`golang`, `debian/stable`, `alpine:3.20`) is an imported name like any
/// other.
pub fn resolve(store: &mut Store, name: &str) -> Result<ImageRef, ImageError> {
    if name == HOST_IMAGE {
        return Ok(ImageRef::Host {
            fingerprint: host_fingerprint()?,
        });
    }
    if name.starts_with(DIGEST_PREFIX) {
        let digest: B3Digest = name.parse().map_err(StoreError::from)?;
        return match store.object_kind(&digest) {
            Ok(ObjectKind::Tree) => Ok(ImageRef::Tree {
                name: name.to_owned(),
                digest,
            }),
            Ok(ObjectKind::Blob) | Err(StoreError::UnknownObject { .. }) => {
                Err(ImageError::UnknownDigest { digest })
            }
            Err(other) => Err(other.into()),
        };
    }
    validate_name(name)?;
    let root = match store.get_root(RootKind::Image, name)? {
        Some(root) if root.broken => {
            return Err(ImageError::Broken {
                name: name.to_owned(),
            });
        }
        Some(root) if root.object.kind == ObjectKind::Tree => root,
        _ => {
            return Err(ImageError::NotFound {
                name: name.to_owned(),
            });
        }
    };
    if !store.is_read_only() {
        store.touch_root(RootKind::Image, name)?;
    }
    Ok(ImageRef::Tree {
        name: name.to_owned(),
        digest: root.object.digest,
    })
}
