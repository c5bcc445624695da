//! The imported images: `image/NAME` roots in the store.

use kiln_store::{B3Digest, ObjectKind, RootKind, Store};

use super::config::{ImageConfig, stored_config};
use super::error::ImageError;
use super::import::{SOURCE_ROOT_PREFIX, SourceKind};
use super::name::validate_name;

/// One imported image, as `kiln image ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImageInfo {
    pub name: String,
    pub digest: B3Digest,
    /// Logical bytes of its files.
    pub size: u64,
    /// Unix milliseconds.
    pub imported: i64,
    pub last_used: i64,
    /// Its data is gone (`kiln store fsck --repair` found it damaged).
    pub broken: bool,
    /// How it was imported: `directory`, `{"archive": "tar_gzip"}`,
    /// `{"oci": {"compression": "tar", "format": "oci_layout"}}`; `None` if
    /// not recorded (an image
    /// that came in a bundle).
    pub source: Option<SourceKind>,
    /// An OCI image's config (env, working dir, user).
    pub config: Option<ImageConfig>,
}

/// Every imported image, sorted by name.
pub fn list(store: &Store) -> Result<Vec<ImageInfo>, ImageError> {
    let mut images = Vec::new();
    for root in store.list_roots(Some(RootKind::Image))? {
        if root.object.kind != ObjectKind::Tree {
            continue;
        }
        let size = if root.broken {
            0
        } else {
            store.object_size(root.object).unwrap_or(0)
        };
        let source = store
            .get_root(
                RootKind::Object,
                &format!("{SOURCE_ROOT_PREFIX}{}", root.name),
            )?
            .filter(|r| !r.broken)
            .and_then(|r| store.blob_bytes(&r.object.digest).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let config = if root.broken {
            None
        } else {
            // A damaged config shows as none here; using the image says why.
            stored_config(store, &root.name, &root.object.digest)
                .ok()
                .flatten()
                .map(|stored| stored.config)
        };
        images.push(ImageInfo {
            source,
            config,
            name: root.name,
            digest: root.object.digest,
            size,
            imported: root.created,
            last_used: root.last_used,
            broken: root.broken,
        });
    }
    images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(images)
}

/// Removes the image `name`; its data is freed by the next curation or gc
/// unless something else uses it. Returns the digest it named.
pub fn remove(store: &mut Store, name: &str) -> Result<B3Digest, ImageError> {
    validate_name(name)?;
    let not_found = || ImageError::NotImported {
        name: name.to_owned(),
    };
    let root = store
        .get_root(RootKind::Image, name)?
        .ok_or_else(not_found)?;
    if !store.remove_root(RootKind::Image, name)? {
        return Err(not_found());
    }
    store.remove_root(RootKind::Object, &format!("{SOURCE_ROOT_PREFIX}{name}"))?;
    Ok(root.object.digest)
}
