//! Build caches (`caches = [ { key; paths; } ]`, MonkeyCI's restore/save by
//! content): restored before a job, saved after it passes, as one tree per
//! evaluated key under the root `cache/<key>` (entry `i` holds `paths[i]`).
//! Not part of any job key; evicted least recently used by curation.
//!
//! In a container each path is a writable bind of a directory restored into
//! the job's temp dir (an absolute path, or relative to the workspace), so a
//! cache never ends up in the job's output layer.

use std::path::{Path, PathBuf};

use kiln_grammar::manifest::Cache;
use kiln_store::{AddOptions, B3Digest, ObjectKind, ObjectRef, RootKind};

use super::RunError;
use super::prepare::StoreCtx;
use crate::driver::Driver;

/// One cache of a job, laid out for the run.
#[derive(Clone, Debug)]
pub struct PreparedCache {
    pub key: String,
    /// The directory holding one subdirectory per path.
    pub dir: PathBuf,
    /// The tree it was restored from, if the key had one.
    pub restored: Option<B3Digest>,
    /// (host directory, path inside the environment).
    pub mounts: Vec<(PathBuf, PathBuf)>,
}

pub fn restore(
    ctx: &mut StoreCtx,
    driver: &Driver,
    job_dir: &Path,
    caches: &[Cache],
) -> Result<Vec<PreparedCache>, RunError> {
    if caches.is_empty() {
        return Ok(Vec::new());
    }
    let (Driver::Container(_), Some(workspace)) = (driver, driver.workspace_path()) else {
        return Err(RunError::Unsupported(
            "build caches are supported in containers only for now".into(),
        ));
    };
    let mut prepared = Vec::with_capacity(caches.len());
    for (index, cache) in caches.iter().enumerate() {
        let dir = job_dir.join("caches").join(index.to_string());
        let io = |source| RunError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir.parent().unwrap_or(job_dir)).map_err(io)?;
        let root = ctx
            .store
            .get_root(RootKind::Cache, &cache.key)?
            .filter(|root| !root.broken && root.object.kind == ObjectKind::Tree);
        let restored = match root {
            Some(root) => {
                ctx.roots.hold(root.object)?;
                ctx.store
                    .restore(&root.object.digest, &dir, &Default::default())?;
                let _ = ctx.store.touch_root(RootKind::Cache, &cache.key);
                Some(root.object.digest)
            }
            None => {
                std::fs::create_dir(&dir).map_err(io)?;
                None
            }
        };
        // Bound writable into the sandbox, so named without symlinks.
        let dir = std::fs::canonicalize(&dir).map_err(io)?;
        let mut mounts = Vec::with_capacity(cache.paths.len());
        for (position, path) in cache.paths.iter().enumerate() {
            let source = dir.join(position.to_string());
            real_directory(&source)?;
            let target = if path.starts_with('/') {
                PathBuf::from(path)
            } else {
                Path::new(workspace).join(path)
            };
            mounts.push((source, target));
        }
        prepared.push(PreparedCache {
            key: cache.key.clone(),
            dir,
            restored,
            mounts,
        });
    }
    Ok(prepared)
}

/// Makes `path` a real directory. A cache's content is not trusted: a
/// symlink (or a file) where a cache path's directory belongs is removed,
/// never followed, so a cache cannot bind a host directory of its choice.
fn real_directory(path: &Path) -> Result<(), RunError> {
    let io = |source| RunError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        // `is_dir` of lstat: a symlink to a directory is not one.
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => std::fs::remove_file(path).map_err(io)?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io(err)),
    }
    std::fs::create_dir(path).map_err(io)
}

/// Saves each cache; returns (key, tree, size) of those saved.
pub fn save(
    ctx: &mut StoreCtx,
    caches: &[PreparedCache],
) -> Result<Vec<(String, B3Digest, u64)>, RunError> {
    let mut saved = Vec::with_capacity(caches.len());
    for cache in caches {
        let report = ctx
            .store
            .add_path(&cache.dir, &AddOptions::default(), &ctx.roots)?;
        if Some(report.object.digest) != cache.restored {
            ctx.store.set_root(
                RootKind::Cache,
                &cache.key,
                ObjectRef::tree(report.object.digest),
            )?;
        }
        saved.push((cache.key.clone(), report.object.digest, report.size));
    }
    Ok(saved)
}
