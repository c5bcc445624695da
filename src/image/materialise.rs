//! Turning an image into the sandbox's root filesystem: the host view as it
//! is, or a tree restored once into a cache directory named by its digest.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use kiln_store::{RestoreOptions, Store};

use super::ImageRef;
use super::config::image_config;
use super::error::{ImageError, IoContext};
use super::host::host_excludes;
use crate::sandbox::RootFs;

/// Prefix of directories being restored; never a digest.
const PARTIAL_PREFIX: &str = ".partial-";

/// The root filesystem for `image`. The host view hides [`host_excludes`]
/// (among them the store directory). A tree is restored into
/// `cache_dir/<hex digest>` unless it already is there: it is restored into
/// a private temporary directory, flushed, then renamed into place, so a
/// concurrent caller or a crash never sees a half-restored image. The cached
/// directory is a read-only lower layer: nothing may write into it.
///
/// An image whose config asks for a non-root user is refused
/// ([`ImageConfig::check_runnable`](super::ImageConfig::check_runnable)):
/// the sandbox cannot switch users yet, and running it as root instead would
/// be silently wrong.
pub fn materialise(
    store: &Store,
    image: &ImageRef,
    cache_dir: &Path,
) -> Result<RootFs, ImageError> {
    match image {
        ImageRef::Host { .. } => Ok(RootFs::Host {
            exclude: host_excludes(store.dir()),
        }),
        ImageRef::Tree { digest, .. } => {
            if let Some(config) = image_config(store, image)? {
                config.check_runnable(image.name())?;
            }
            let target = cache_dir.join(digest.to_hex());
            if is_dir(&target)? {
                super::cache::mark_used(&target);
            } else {
                fs::create_dir_all(cache_dir).at(cache_dir)?;
                remove_dead_partials(cache_dir);
                restore_atomically(store, digest, cache_dir, &target)?;
            }
            Ok(RootFs::Image {
                layers: vec![target],
            })
        }
    }
}

fn is_dir(path: &Path) -> Result<bool, ImageError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(meta.is_dir()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ImageError::io(path, e)),
    }
}

fn restore_atomically(
    store: &Store,
    digest: &kiln_store::B3Digest,
    cache_dir: &Path,
    target: &Path,
) -> Result<(), ImageError> {
    let partial = tempfile::Builder::new()
        .prefix(&format!(
            "{PARTIAL_PREFIX}{}-{}-",
            std::process::id(),
            &digest.to_hex()[..16]
        ))
        .tempdir_in(cache_dir)
        .at(cache_dir)?;
    let staging = partial.path().join("root");
    store.restore(digest, &staging, &RestoreOptions::default())?;
    sync_filesystem(&staging)?;
    match fs::rename(&staging, target) {
        Ok(()) => {}
        // Another process or thread finished first: its copy is complete.
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST))
                && is_dir(target)? => {}
        Err(e) => return Err(ImageError::io(target, e)),
    }
    // `partial` (with our copy if we lost the race) is removed on drop.
    drop(partial);
    if let Ok(dir) = fs::File::open(cache_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Makes the restored files durable before the rename publishes them.
fn sync_filesystem(path: &Path) -> Result<(), ImageError> {
    let dir = fs::File::open(path).at(path)?;
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(ImageError::io(path, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Removes restores left behind by processes that died mid-way (best effort).
fn remove_dead_partials(cache_dir: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PARTIAL_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
