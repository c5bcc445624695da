//! The build's private directory: `<store>/scratch/build-*`, mode 0700.
//!
//! Everything a job can write on the host side (upper and work dirs, restored
//! layers, caches, VM disks) lives here, under the store, which the host view
//! always hides: a `TMPDIR` the host view shows cannot expose one build's
//! upper layer to another build. The directory is tied to a lease
//! (`<store>/leases/scratch-<name>`), taken before the directory exists and
//! held for the build's lifetime; a directory whose lease is not held
//! belongs to a dead build and is swept by the next build.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_store::{Lease, LeaseState, lease_state};

use super::RunError;

/// Under the store directory.
pub const SCRATCH_DIR: &str = "scratch";

/// Controller directories: `ctl-<build number>`.
const CONTROLLER_PREFIX: &str = "ctl-";

/// Where the controller of build `build` keeps its socket and token.
pub fn controller_dir(store_dir: &Path, build: i64) -> PathBuf {
    store_dir.join(SCRATCH_DIR).join(controller_dir_name(build))
}

fn controller_dir_name(build: i64) -> String {
    format!("{CONTROLLER_PREFIX}{build}")
}

fn lease_name(dir_name: &str) -> String {
    format!("scratch-{dir_name}")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A live build directory; dropping it removes the directory, then the lease.
#[derive(Debug)]
pub struct BuildDir {
    path: PathBuf,
    lease: Option<Lease>,
}

impl BuildDir {
    /// Takes a lease and creates a fresh `<store>/scratch/build-*` (0700).
    pub fn create(store_dir: &Path) -> Result<BuildDir, RunError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "build-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_named(store_dir, &name)
    }

    /// The controller's private directory of build `build`:
    /// `<store>/scratch/ctl-<build>` (0700), holding its socket and token.
    pub fn create_controller(store_dir: &Path, build: i64) -> Result<BuildDir, RunError> {
        let name = controller_dir_name(build);
        // A directory of that name is a dead controller's (build numbers are
        // never reused): its lease is free, so the sweep takes it first.
        sweep_stale(store_dir);
        Self::create_named(store_dir, &name)
    }

    fn create_named(store_dir: &Path, name: &str) -> Result<BuildDir, RunError> {
        let parent = store_dir.join(SCRATCH_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(io(&parent))?;
        // The lease first: a sweeper never sees this directory without it.
        let lease = Lease::acquire(store_dir, &lease_name(name))?;
        let path = parent.join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io(&path))?;
        Ok(BuildDir {
            path,
            lease: Some(lease),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory (also what a non-root overlay left unreadable)
    /// and releases the lease.
    pub fn close(mut self) -> Result<(), RunError> {
        let result = remove_tree(&self.path);
        drop(self.lease.take());
        result.map_err(io(&self.path))
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if self.lease.is_some() {
            let _ = remove_tree(&self.path);
            drop(self.lease.take());
        }
    }
}

/// Removes the build directories of builds that are gone (their lease is not
/// held); returns the directories removed.
pub fn sweep_stale(store_dir: &Path) -> Vec<PathBuf> {
    let parent = store_dir.join(SCRATCH_DIR);
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("build-") && !name.starts_with(CONTROLLER_PREFIX) {
            continue;
        }
        let lease = lease_name(&name);
        match lease_state(store_dir, &lease) {
            Ok(LeaseState::Held) | Err(_) => continue,
            Ok(LeaseState::Free | LeaseState::Missing) => {}
        }
        // Take the lease ourselves while removing, so that two sweepers do
        // not trip over each other; dropping it removes the lease file.
        let Ok(guard) = Lease::acquire(store_dir, &lease) else {
            continue;
        };
        if remove_tree(&entry.path()).is_ok() {
            removed.push(entry.path());
        }
        drop(guard);
    }
    removed
}

/// `remove_dir_all` that also works on what overlayfs leaves to a non-root
/// user: `work/work` is mode 000, so directories are made accessible to
/// their owner first.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        if meta.permissions().mode() & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_builds_dir_is_swept_and_a_live_one_is_not() {
        let store = tempfile::tempdir().unwrap();
        let live = BuildDir::create(store.path()).unwrap();
        // A dead build: its directory is there, its lease file is free.
        let dead = store.path().join(SCRATCH_DIR).join("build-1-2-3");
        std::fs::create_dir_all(dead.join("job/work/work")).unwrap();
        std::fs::set_permissions(
            dead.join("job/work/work"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        std::fs::write(
            store
                .path()
                .join(kiln_store::LEASES_DIR)
                .join("scratch-build-1-2-3"),
            b"",
        )
        .unwrap();
        let removed = sweep_stale(store.path());
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.path().is_dir(), "a live build's directory is kept");
        let path = live.path().to_path_buf();
        live.close().unwrap();
        assert!(!path.exists());
        let leases: Vec<_> = std::fs::read_dir(store.path().join(kiln_store::LEASES_DIR))
            .unwrap()
            .collect();
        assert!(leases.is_empty(), "leases left: {leases:?}");
    }
}
