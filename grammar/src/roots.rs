//! What a manifest may read: files under its project root (the nearest
//! ancestor of the manifest's directory holding `.git`, else that
//! directory) and under the directories given with `--allow-path`.
//!
//! Computed once per load ([`crate::load::load`]) and carried by
//! [`crate::eval::EvalOptions`] (imports, path literals, `hashFile`) and by
//! the typed [`crate::manifest::Manifest`] (path sources and objects, read
//! by the build). Every check resolves symlinks first, so a link inside the
//! project that points out of it is refused too.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::eval::paths::absolute;

/// The directories a manifest may read from, canonical.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedRoots {
    roots: Vec<PathBuf>,
}

/// A path outside every allowed root.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Outside {
    /// As given (absolute).
    pub path: PathBuf,
    /// With symlinks resolved.
    pub resolved: PathBuf,
    pub roots: Vec<PathBuf>,
}

impl fmt::Display for Outside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ", self.path.display())?;
        if self.resolved != self.path {
            write!(f, "(resolved to `{}`) ", self.resolved.display())?;
        }
        let roots: Vec<String> = self
            .roots
            .iter()
            .map(|root| format!("`{}`", root.display()))
            .collect();
        write!(
            f,
            "is outside the project root {}; a manifest may only read files under it \
             (widen with `--allow-path DIR`)",
            roots.join(", ")
        )
    }
}

/// An `--allow-path` that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("--allow-path {}: {source}", path.display())]
pub struct BadAllowPath {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl AllowedRoots {
    /// The project root of the manifest at `manifest`, plus each of `extra`
    /// (which must exist).
    pub fn for_manifest(manifest: &Path, extra: &[PathBuf]) -> Result<AllowedRoots, BadAllowPath> {
        let file = resolve(&absolute(manifest));
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let project = dir
            .ancestors()
            .find(|ancestor| ancestor.join(".git").exists())
            .unwrap_or(&dir)
            .to_path_buf();
        let mut roots = vec![project];
        for path in extra {
            let canonical = std::fs::canonicalize(path).map_err(|source| BadAllowPath {
                path: path.clone(),
                source,
            })?;
            roots.push(canonical);
        }
        Ok(AllowedRoots { roots })
    }

    /// Exactly these directories (canonicalised where they exist).
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> AllowedRoots {
        AllowedRoots {
            roots: roots
                .into_iter()
                .map(|root| resolve(&absolute(&root)))
                .collect(),
        }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// `path` with symlinks resolved, if it lies under an allowed root.
    /// A path that does not exist is resolved as far as it does.
    pub fn check(&self, path: &Path) -> Result<PathBuf, Outside> {
        let path = absolute(path);
        let resolved = resolve(&path);
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            Ok(resolved)
        } else {
            Err(Outside {
                path,
                resolved,
                roots: self.roots.clone(),
            })
        }
    }
}

/// `path` (absolute, normalised) with symlinks resolved: its longest
/// existing ancestor canonicalised, the rest appended.
fn resolve(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut current = path;
    loop {
        if let Ok(canonical) = std::fs::canonicalize(current) {
            let mut out = canonical;
            out.extend(rest.iter().rev());
            return out;
        }
        match (current.parent(), current.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                current = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_root_is_the_git_root_else_the_manifest_dir() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(base.join("repo/.git")).unwrap();
        std::fs::create_dir_all(base.join("repo/sub")).unwrap();
        std::fs::create_dir_all(base.join("plain")).unwrap();
        let in_repo = AllowedRoots::for_manifest(&base.join("repo/sub/build.kiln"), &[]).unwrap();
        assert_eq!(in_repo.roots(), [base.join("repo")]);
        let plain = AllowedRoots::for_manifest(&base.join("plain/build.kiln"), &[]).unwrap();
        assert_eq!(plain.roots(), [base.join("plain")]);
        assert!(plain.check(&base.join("plain/x/../y")).is_ok());
        let outside = plain.check(&base.join("plain/../repo")).unwrap_err();
        assert_eq!(outside.resolved, base.join("repo"));
        assert!(outside.to_string().contains("--allow-path"), "{outside}");
    }

    #[test]
    fn symlinks_are_resolved_before_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(base.join("project")).unwrap();
        std::fs::create_dir_all(base.join("secret")).unwrap();
        std::os::unix::fs::symlink(base.join("secret"), base.join("project/link")).unwrap();
        let roots = AllowedRoots::for_manifest(&base.join("project/build.kiln"), &[]).unwrap();
        let error = roots.check(&base.join("project/link/file")).unwrap_err();
        assert_eq!(error.resolved, base.join("secret/file"));
        let widened =
            AllowedRoots::for_manifest(&base.join("project/build.kiln"), &[base.join("secret")])
                .unwrap();
        assert!(widened.check(&base.join("project/link/file")).is_ok());
        assert!(AllowedRoots::for_manifest(&base.join("b.kiln"), &[base.join("nope")]).is_err());
    }
}
