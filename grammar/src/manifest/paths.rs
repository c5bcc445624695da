//! Paths in a manifest: local paths (shown relative to the manifest's
//! directory), workspace-relative paths (which may not escape), and job names.

use std::path::{Component, Path, PathBuf};

use serde::{Serialize, Serializer};

/// A local file or directory named by a path literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPath {
    /// Absolute and lexically normalised: what a consumer reads.
    pub absolute: PathBuf,
    /// Relative to the manifest's directory, written like a path literal
    /// (`./.`, `./src/hello.c`, `../lib`): what the canonical JSON shows.
    pub relative: String,
}

impl LocalPath {
    pub fn new(absolute: &Path, manifest_dir: &Path) -> LocalPath {
        let absolute = normalize(absolute);
        let relative = relative_literal(&absolute, &normalize(manifest_dir));
        LocalPath { absolute, relative }
    }

    /// The last component (`None` for `/`).
    pub fn base_name(&self) -> Option<String> {
        self.absolute
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
    }
}

impl Serialize for LocalPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.relative)
    }
}

/// `path` made absolute against the current directory and normalised.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// Lexical normalisation: drops `.`, resolves `..` against the components
/// before it (never above the root).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn relative_literal(path: &Path, base: &Path) -> String {
    let path_parts: Vec<_> = path.components().collect();
    let base_parts: Vec<_> = base.components().collect();
    let common = path_parts
        .iter()
        .zip(&base_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let ups = base_parts.len() - common;
    let rest: Vec<String> = path_parts[common..]
        .iter()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let mut parts: Vec<String> = std::iter::repeat_n("..".to_string(), ups).collect();
    parts.extend(rest);
    match parts.first().map(String::as_str) {
        None => "./.".to_string(),
        Some("..") => parts.join("/"),
        Some(_) => format!("./{}", parts.join("/")),
    }
}

/// Why a workspace path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WorkspacePathError {
    Empty,
    Absolute,
    Escapes,
}

impl WorkspacePathError {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            WorkspacePathError::Empty => "the path is empty",
            WorkspacePathError::Absolute => {
                "the path is absolute, it must be relative to the workspace"
            }
            WorkspacePathError::Escapes => "the path escapes the workspace with `..`",
        }
    }
}

/// A relative path inside the workspace, normalised (`a/./b/` → `a/b`,
/// the root → `.`). `..` may not climb out of the workspace.
pub(crate) fn workspace_relative(path: &str) -> Result<String, WorkspacePathError> {
    if path.is_empty() {
        return Err(WorkspacePathError::Empty);
    }
    if path.starts_with('/') {
        return Err(WorkspacePathError::Absolute);
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(WorkspacePathError::Escapes);
                }
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        Ok(".".to_string())
    } else {
        Ok(parts.join("/"))
    }
}

/// An absolute path inside the environment, normalised; `..` stops at `/`.
pub(crate) fn normalize_absolute(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A job name as kiln keeps it: ASCII lower case, anything outside
/// `[a-z0-9._-]` replaced by `-`.
pub fn normalize_job_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_literals() {
        let base = Path::new("/a/b");
        assert_eq!(LocalPath::new(Path::new("/a/b"), base).relative, "./.");
        assert_eq!(
            LocalPath::new(Path::new("/a/b/c/d"), base).relative,
            "./c/d"
        );
        assert_eq!(LocalPath::new(Path::new("/a/lib"), base).relative, "../lib");
        assert_eq!(LocalPath::new(Path::new("/x"), base).relative, "../../x");
    }

    #[test]
    fn workspace_paths() {
        assert_eq!(workspace_relative("a/./b/").as_deref(), Ok("a/b"));
        assert_eq!(workspace_relative("a/../b").as_deref(), Ok("b"));
        assert_eq!(workspace_relative("./").as_deref(), Ok("."));
        assert_eq!(
            workspace_relative("a/../../b"),
            Err(WorkspacePathError::Escapes)
        );
        assert_eq!(
            workspace_relative("/etc"),
            Err(WorkspacePathError::Absolute)
        );
        assert_eq!(workspace_relative(""), Err(WorkspacePathError::Empty));
        assert_eq!(normalize_absolute("/go/./src/../x/"), "/go/x");
    }

    #[test]
    fn job_names() {
        assert_eq!(normalize_job_name("Build Docs!"), "build-docs-");
        assert_eq!(normalize_job_name("test.1_a-b"), "test.1_a-b");
    }
}
