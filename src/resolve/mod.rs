//! Sources and objects (design §5 rules 2 and 3) and the base layer they
//! compose: each source at its `dir`, each object at its `dst`, one tree
//! built from trees already in the store (no file data is copied).
//!
//! Path sources are added with the store's `add_path`; local git sources
//! (a relative path or `file://`) are resolved with the `git` CLI to a
//! commit, exported with `git archive` and kept under a `source` root named
//! by repository and commit, so an unchanged commit is never exported
//! twice. Remote URLs are only ever read from the store (`kiln fetch`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_grammar::manifest::{Manifest, Object, ObjectSource, Source};
use kiln_grammar::roots::Outside;
use kiln_store::{
    AddOptions, B3Digest, Node, ObjectKind, ObjectRef, RootKind, Store, StoreError, TempRoots,
};

use crate::layers::{DirBuilder, LayerError};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("source {path}: {reason}")]
    Path { path: PathBuf, reason: String },
    #[error(
        "source {url} is a remote repository that is not in the store; fetch it ahead with `kiln fetch` (kiln run never touches the network)"
    )]
    Remote { url: String },
    #[error("git source {url}: {reason}")]
    Git { url: String, reason: String },
    #[error("object {src}: {reason}")]
    Object { src: String, reason: String },
    #[error("{what} {label}: {source}")]
    Outside {
        what: &'static str,
        label: String,
        #[source]
        source: Outside,
    },
}

/// `path` with symlinks resolved, if the manifest may read it (design
/// §10: a manifest reads only under its project root and `--allow-path`).
fn confined(
    manifest: &Manifest,
    what: &'static str,
    label: &str,
    path: &Path,
) -> Result<PathBuf, ResolveError> {
    manifest
        .roots
        .check(path)
        .map_err(|source| ResolveError::Outside {
            what,
            label: label.to_owned(),
            source,
        })
}

/// A source as it entered the base layer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ResolvedSource {
    /// The path or URL as written.
    pub label: String,
    pub dir: String,
    pub object: ObjectRef,
    /// The commit a git source resolved to.
    pub commit: Option<String>,
}

/// An object placed in the base layer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlacedObject {
    pub label: String,
    /// Relative to the workspace.
    pub dst: String,
    pub object: ObjectRef,
    /// A file object keeps its executable bit.
    pub executable: bool,
}

pub fn resolve_source(
    store: &mut Store,
    roots: &TempRoots,
    manifest: &Manifest,
    source: &Source,
) -> Result<ResolvedSource, ResolveError> {
    let manifest_dir = &manifest.dir;
    match source {
        Source::Path { path, dir } => {
            confined(manifest, "source", &path.relative, &path.absolute)?;
            let absolute = &path.absolute;
            if std::fs::symlink_metadata(absolute).is_err() {
                return Err(ResolveError::Path {
                    path: absolute.clone(),
                    reason: "does not exist".into(),
                });
            }
            let report = store.add_path(absolute, &AddOptions::default(), roots)?;
            Ok(ResolvedSource {
                label: path.relative.clone(),
                dir: dir.clone(),
                object: report.object,
                commit: None,
            })
        }
        Source::Git {
            url,
            reference,
            rev,
            dir,
        } => {
            if crate::offline::fetch::is_remote(url) {
                return resolve_fetched(
                    store,
                    roots,
                    url,
                    reference.as_deref(),
                    rev.as_deref(),
                    dir,
                );
            }
            let repo = local_repository(url, manifest_dir)?;
            confined(manifest, "git source", url, &repo)?;
            let commit = resolve_commit(url, &repo, reference.as_deref())?;
            if let Some(rev) = rev
                && !(commit.starts_with(rev.as_str()) && rev.len() >= 4)
            {
                return Err(ResolveError::Git {
                    url: url.clone(),
                    reason: format!("resolved to commit {commit}, but `rev` pins {rev}"),
                });
            }
            let root_name = format!("git:{}@{commit}", repo.display());
            if let Some(root) = store.get_root(RootKind::Source, &root_name)?
                && !root.broken
            {
                roots.hold(root.object)?;
                let _ = store.touch_root(RootKind::Source, &root_name);
                return Ok(ResolvedSource {
                    label: url.clone(),
                    dir: dir.clone(),
                    object: root.object,
                    commit: Some(commit),
                });
            }
            let export = tempfile::tempdir().map_err(|error| ResolveError::Git {
                url: url.clone(),
                reason: format!("cannot create a temporary directory: {error}"),
            })?;
            export_commit(url, &repo, &commit, export.path())?;
            let report = store.add_path(export.path(), &AddOptions::default(), roots)?;
            store.set_root(RootKind::Source, &root_name, report.object)?;
            Ok(ResolvedSource {
                label: url.clone(),
                dir: dir.clone(),
                object: report.object,
                commit: Some(commit),
            })
        }
    }
}

/// A remote source comes from the store only (`kiln fetch` put it there).
fn resolve_fetched(
    store: &Store,
    roots: &TempRoots,
    url: &str,
    reference: Option<&str>,
    rev: Option<&str>,
    dir: &str,
) -> Result<ResolvedSource, ResolveError> {
    let stored = crate::offline::fetch::stored_source(store, roots, url, reference)
        .map_err(|error| ResolveError::Git {
            url: url.to_owned(),
            reason: error.to_string(),
        })?
        .ok_or_else(|| ResolveError::Remote {
            url: url.to_owned(),
        })?;
    if let Some(rev) = rev
        && !crate::offline::fetch::rev_matches(&stored.commit, rev)
    {
        return Err(ResolveError::Git {
            url: url.to_owned(),
            reason: format!(
                "the fetched commit {} (ref {}) is not what `rev` pins ({rev}); run `kiln fetch` again",
                stored.commit, stored.reference
            ),
        });
    }
    Ok(ResolvedSource {
        label: url.to_owned(),
        dir: dir.to_owned(),
        object: ObjectRef::tree(stored.tree),
        commit: Some(stored.commit),
    })
}

fn local_repository(url: &str, manifest_dir: &Path) -> Result<PathBuf, ResolveError> {
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(PathBuf::from(path));
    }
    if url.contains("://")
        || url.starts_with("git@")
        || url.contains(':') && !url.starts_with('/') && !url.starts_with('.')
    {
        return Err(ResolveError::Remote {
            url: url.to_owned(),
        });
    }
    Ok(manifest_dir.join(url))
}

fn git(repo: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(repo)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    command
}

fn resolve_commit(url: &str, repo: &Path, reference: Option<&str>) -> Result<String, ResolveError> {
    let spec = format!("{}^{{commit}}", reference.unwrap_or("HEAD"));
    let output = git(repo)
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ])
        .output()
        .map_err(|error| ResolveError::Git {
            url: url.to_owned(),
            reason: format!("cannot run git: {error}"),
        })?;
    if !output.status.success() {
        let what = reference.map_or_else(|| "HEAD".to_owned(), |r| format!("ref {r:?}"));
        return Err(ResolveError::Git {
            url: url.to_owned(),
            reason: format!(
                "{what} does not resolve to a commit in {} {}",
                repo.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

pub(crate) fn export_commit(
    url: &str,
    repo: &Path,
    commit: &str,
    into: &Path,
) -> Result<(), ResolveError> {
    let failed = |reason: String| ResolveError::Git {
        url: url.to_owned(),
        reason,
    };
    let mut archive = git(repo)
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| failed(format!("cannot run git archive: {error}")))?;
    let stdout = archive
        .stdout
        .take()
        .ok_or_else(|| failed("git archive has no output".into()))?;
    let untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .stdin(stdout)
        .stderr(Stdio::piped())
        .output()
        .map_err(|error| failed(format!("cannot run tar: {error}")))?;
    let archived = archive
        .wait_with_output()
        .map_err(|error| failed(format!("git archive: {error}")))?;
    if !archived.status.success() {
        return Err(failed(format!(
            "git archive {commit} failed: {}",
            String::from_utf8_lossy(&archived.stderr).trim()
        )));
    }
    if !untar.status.success() {
        return Err(failed(format!(
            "unpacking the archive failed: {}",
            String::from_utf8_lossy(&untar.stderr).trim()
        )));
    }
    Ok(())
}

/// Stores an object's source and works out where it lands in the workspace.
pub fn place_object(
    store: &mut Store,
    roots: &TempRoots,
    manifest: &Manifest,
    workspace: Option<&str>,
    object: &Object,
) -> Result<PlacedObject, ResolveError> {
    let (label, stored, executable) = match &object.src {
        ObjectSource::Path(path) => {
            confined(manifest, "object", &path.relative, &path.absolute)?;
            let stored = add_file(store, roots, &path.absolute)?;
            (path.relative.clone(), stored, is_executable(&path.absolute))
        }
        ObjectSource::Named(name) => match store.get_root(RootKind::Object, name)? {
            Some(root) if !root.broken => {
                roots.hold(root.object)?;
                (name.clone(), root.object, false)
            }
            _ => {
                let path = manifest.dir.join(name);
                confined(manifest, "object", name, &path)?;
                let stored = add_file(store, roots, &path)?;
                (name.clone(), stored, is_executable(&path))
            }
        },
    };
    let dst = workspace_destination(&object.dst, workspace).ok_or_else(|| ResolveError::Object {
        src: label.clone(),
        reason: format!(
            "destination {} is outside the workspace ({}); only workspace destinations are supported",
            object.dst,
            workspace.unwrap_or("a scratch directory")
        ),
    })?;
    Ok(PlacedObject {
        label,
        dst,
        object: stored,
        executable,
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn add_file(store: &mut Store, roots: &TempRoots, path: &Path) -> Result<ObjectRef, ResolveError> {
    if std::fs::symlink_metadata(path).is_err() {
        return Err(ResolveError::Object {
            src: path.display().to_string(),
            reason: "no such file or named object".into(),
        });
    }
    Ok(store.add_path(path, &AddOptions::default(), roots)?.object)
}

/// `dst` relative to the workspace, or `None` when it lies outside it.
fn workspace_destination(dst: &str, workspace: Option<&str>) -> Option<String> {
    if !dst.starts_with('/') {
        return Some(dst.to_owned());
    }
    let workspace = workspace?.trim_end_matches('/');
    let rest = dst.strip_prefix(workspace)?;
    if rest.is_empty() {
        return Some(".".into());
    }
    rest.strip_prefix('/').map(str::to_owned)
}

/// The base layer: each source at its `dir`, then each object at its `dst`
/// (later entries win where they overlap).
pub fn compose_base(
    store: &mut Store,
    roots: &TempRoots,
    sources: &[ResolvedSource],
    objects: &[PlacedObject],
) -> Result<B3Digest, ResolveError> {
    let mut base = DirBuilder::new();
    let placements = sources
        .iter()
        .map(|s| (&s.dir, s.object, false))
        .chain(objects.iter().map(|o| (&o.dst, o.object, o.executable)));
    for (path, object, executable) in placements {
        let node = node_of(store, object, executable)?;
        base.place(store, path, node)?;
    }
    match base.write(store, roots)? {
        Node::Directory { digest, .. } => Ok(digest),
        _ => Ok(crate::layers::empty_tree(store, roots)?),
    }
}

fn node_of(store: &Store, object: ObjectRef, executable: bool) -> Result<Node, ResolveError> {
    let size = store.object_size(object)?;
    Ok(match object.kind {
        ObjectKind::Tree => Node::Directory {
            digest: object.digest,
            size,
        },
        ObjectKind::Blob => Node::File {
            digest: object.digest,
            size,
            executable,
        },
    })
}
