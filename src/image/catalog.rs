//! The imported images: `image/NAME` roots in the store.

use kiln_store::{B3Digest, ObjectKind, RootKind, Store};

use super::error::ImageError;
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
        images.push(ImageInfo {
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
    Ok(root.object.digest)
}
