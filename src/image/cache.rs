//! Materialised images: `<store>/image-cache/<hex>` (an image tree restored
//! for containers) and `<store>/vm-cache/images/<hex>.ext4` (its ext4 disk
//! for VMs). Both are caches of store objects, rebuilt on demand, so
//! `kiln store gc` may drop them: those whose image is gone (the tree is no
//! longer in the store and the digest is not this host's fingerprint) and
//! those no build used for longer than a threshold. A use sets the entry's
//! modification time ([`mark_used`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_store::{B3Digest, ObjectKind, Store};

use super::error::{ImageError, IoContext};

/// Where container images are restored, under the store directory.
pub const IMAGE_CACHE: &str = "image-cache";
/// Where VM image disks are kept, under the store directory.
pub const VM_IMAGE_DISKS: &str = "vm-cache/images";

/// Materialised images unused for longer than this are dropped by default.
pub const DEFAULT_UNUSED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a collection removed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CacheReport {
    /// Paths removed, relative to the store directory, each with why.
    pub removed: Vec<RemovedCache>,
    pub bytes_freed: u64,
    /// Materialised images kept.
    pub kept: u64,
    /// Why nothing was collected (a build is running), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RemovedCache {
    pub path: String,
    pub reason: &'static str,
    pub bytes: u64,
}

/// Records a use of a materialised image: its modification time becomes
/// now. Best effort: a cache that cannot be touched only ages sooner.
pub fn mark_used(path: &Path) {
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Drops the materialised images whose image is gone, or unused for longer
/// than `unused_for`. Nothing is dropped while a build runs (it may be
/// using one); interrupted restores (`.partial-*`, `.building-*`) older
/// than a day go too.
pub fn collect(store: &mut Store, unused_for: Duration) -> Result<CacheReport, ImageError> {
    let mut report = CacheReport::default();
    store.fail_dead_builds()?;
    if let Some(running) = store
        .list_builds()?
        .into_iter()
        .find(|build| !build.status.is_finished())
    {
        report.skipped = Some(format!(
            "build {} is running and may be using a materialised image",
            running.id
        ));
        return Ok(report);
    }
    let host = super::host::host_fingerprint().ok();
    let now = SystemTime::now();
    let dir = store.dir().to_path_buf();
    for (cache, suffix) in [(IMAGE_CACHE, ""), (VM_IMAGE_DISKS, ".ext4")] {
        let cache_dir = dir.join(cache);
        let entries = match std::fs::read_dir(&cache_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(ImageError::io(&cache_dir, error)),
        };
        for entry in entries {
            let entry = entry.at(&cache_dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let age = std::fs::symlink_metadata(&path)
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .unwrap_or_default();
            let digest = name.strip_suffix(suffix).and_then(B3Digest::from_hex);
            let reason = match digest {
                None if name.starts_with('.') && age > Duration::from_secs(24 * 3600) => {
                    Some("an interrupted restore")
                }
                None => None,
                Some(digest) => {
                    let in_store = matches!(store.object_kind(&digest), Ok(ObjectKind::Tree));
                    if !in_store && host != Some(digest) {
                        Some("its image is gone")
                    } else if age > unused_for {
                        Some("unused")
                    } else {
                        None
                    }
                }
            };
            let Some(reason) = reason else {
                report.kept += u64::from(digest.is_some());
                continue;
            };
            let bytes = kiln_store::allocated_bytes(&path).unwrap_or(0);
            remove(&path)?;
            report.bytes_freed += bytes;
            report.removed.push(RemovedCache {
                path: format!("{cache}/{name}"),
                reason,
                bytes,
            });
        }
    }
    Ok(report)
}

fn remove(path: &PathBuf) -> Result<(), ImageError> {
    let meta = std::fs::symlink_metadata(path).at(path)?;
    if meta.is_dir() {
        crate::scheduler::builddir::remove_tree(path).at(path)
    } else {
        std::fs::remove_file(path).at(path)
    }
}
