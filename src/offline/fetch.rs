//! `kiln fetch`: remote git sources into the store.
//!
//! A fetched source is kept under the root `source/remote:<url>#<ref>`
//! naming a small tree `{ commit: blob, tree: dir }`, so the commit and
//! its tree are recorded together in one root write: a fetch either
//! records both or nothing. Fetching goes through the `git` CLI into a
//! throw-away bare repository (`git fetch --depth 1`), then `git archive`.

use std::path::Path;
use std::process::{Command, Stdio};

use kiln_store::{AddOptions, B3Digest, Node, ObjectKind, ObjectRef, RootKind, Store, TempRoots};

use super::OfflineError;
use crate::layers::DirBuilder;

/// The ref fetched when a source names none.
pub const DEFAULT_REF: &str = "HEAD";

/// A remote source as recorded in the store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredSource {
    pub url: String,
    pub reference: String,
    pub commit: String,
    /// The commit's files (no `.git`).
    pub tree: B3Digest,
    /// The record's own root object (what a bundle carries).
    pub record: ObjectRef,
}

/// Whether `url` names a repository only the network can reach. `file://`
/// and plain paths are local and resolved by `kiln run` itself.
pub fn is_remote(url: &str) -> bool {
    if url.starts_with("file://") {
        return false;
    }
    url.contains("://")
        || url.starts_with("git@")
        || (url.contains(':') && !url.starts_with('/') && !url.starts_with('.'))
}

/// The canonical spelling of a remote URL in root names.
pub fn canonical_url(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// The root name a fetched `url` at `reference` is kept under.
pub fn root_name(url: &str, reference: Option<&str>) -> String {
    format!(
        "remote:{}#{}",
        canonical_url(url),
        reference.unwrap_or(DEFAULT_REF)
    )
}

/// Reads a fetched source from the store (never the network); `None` when
/// it was never fetched or its data is gone. Holds its objects in `roots`.
pub fn stored_source(
    store: &Store,
    roots: &TempRoots,
    url: &str,
    reference: Option<&str>,
) -> Result<Option<StoredSource>, OfflineError> {
    let name = root_name(url, reference);
    let Some(root) = store.get_root(RootKind::Source, &name)? else {
        return Ok(None);
    };
    if root.broken || root.object.kind != ObjectKind::Tree {
        return Ok(None);
    }
    let record = store.tree(&root.object.digest)?;
    let mut commit = None;
    let mut tree = None;
    for entry in record.entries() {
        match (entry.name.as_bytes(), &entry.node) {
            (b"commit", Node::File { digest, .. }) => {
                let mut bytes = Vec::new();
                store.read_blob(digest, &mut bytes)?;
                commit = Some(String::from_utf8_lossy(&bytes).trim().to_owned());
            }
            (b"tree", Node::Directory { digest, .. }) => tree = Some(*digest),
            _ => {}
        }
    }
    let (Some(commit), Some(tree)) = (commit, tree) else {
        return Err(OfflineError::Git {
            url: url.to_owned(),
            reason: format!("the store's record source/{name} is malformed; fetch it again"),
        });
    };
    roots.hold(root.object)?;
    Ok(Some(StoredSource {
        url: canonical_url(url).to_owned(),
        reference: reference.unwrap_or(DEFAULT_REF).to_owned(),
        commit,
        tree,
        record: root.object,
    }))
}

/// Whether `commit` is what `rev` pins (a prefix of at least 4 hex digits).
pub fn rev_matches(commit: &str, rev: &str) -> bool {
    rev.len() >= 4 && commit.starts_with(&rev.to_ascii_lowercase())
}

/// Fetches `url` at `reference` over the network, checks `rev`, stores the
/// commit's tree and records it. Nothing is recorded unless all of it worked.
pub fn fetch_source(
    store: &mut Store,
    roots: &TempRoots,
    url: &str,
    reference: Option<&str>,
    rev: Option<&str>,
) -> Result<StoredSource, OfflineError> {
    let reference_text = reference.unwrap_or(DEFAULT_REF);
    let git_failed = |reason: String| OfflineError::Git {
        url: url.to_owned(),
        reason,
    };
    let work = tempfile::tempdir()
        .map_err(|error| git_failed(format!("cannot create a temporary directory: {error}")))?;
    let repo = work.path().join("repo.git");
    run_git(
        url,
        Command::new("git")
            .args(["init", "--quiet", "--bare"])
            .arg(&repo),
    )?;
    let fetched = git_in(&repo)
        .args([
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "--no-tags",
            "--end-of-options",
        ])
        .arg(url)
        .arg(reference_text)
        .output()
        .map_err(|error| git_failed(format!("cannot run git: {error}")))?;
    if !fetched.status.success() {
        let stderr = String::from_utf8_lossy(&fetched.stderr)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if stderr.contains("couldn't find remote ref") || stderr.contains("not our ref") {
            return Err(OfflineError::UnknownRef {
                url: url.to_owned(),
                reference: reference_text.to_owned(),
            });
        }
        return Err(OfflineError::Unreachable {
            url: url.to_owned(),
            reason: stderr,
        });
    }
    let parsed = git_in(&repo)
        .args(["rev-parse", "--verify", "FETCH_HEAD^{commit}"])
        .output()
        .map_err(|error| git_failed(format!("cannot run git: {error}")))?;
    if !parsed.status.success() {
        return Err(git_failed(format!(
            "{reference_text} does not name a commit: {}",
            String::from_utf8_lossy(&parsed.stderr).trim()
        )));
    }
    let commit = String::from_utf8_lossy(&parsed.stdout).trim().to_owned();
    if let Some(rev) = rev
        && !rev_matches(&commit, rev)
    {
        return Err(OfflineError::RevMismatch {
            url: url.to_owned(),
            reference: reference_text.to_owned(),
            commit,
            rev: rev.to_owned(),
        });
    }
    let files = work.path().join("files");
    std::fs::create_dir(&files).map_err(|error| git_failed(error.to_string()))?;
    crate::resolve::export_commit(url, &repo, &commit, &files)?;
    let tree = store
        .add_path(&files, &AddOptions::default(), roots)?
        .object;
    let commit_blob = store.add_bytes(commit.as_bytes(), roots)?;
    let mut record = DirBuilder::new();
    record.place(
        store,
        "commit",
        Node::File {
            digest: commit_blob.object.digest,
            size: commit.len() as u64,
            executable: false,
        },
    )?;
    record.place(
        store,
        "tree",
        Node::Directory {
            digest: tree.digest,
            size: store.object_size(tree)?,
        },
    )?;
    let Node::Directory { digest, .. } = record.write(store, roots)? else {
        return Err(git_failed(
            "internal error: the record is not a tree".into(),
        ));
    };
    let record = ObjectRef::tree(digest);
    store.set_root(RootKind::Source, &root_name(url, reference), record)?;
    Ok(StoredSource {
        url: canonical_url(url).to_owned(),
        reference: reference_text.to_owned(),
        commit,
        tree: tree.digest,
        record,
    })
}

fn git_in(repo: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .arg("--git-dir")
        .arg(repo)
        // A stalled HTTP transfer fails instead of hanging the fetch.
        .args(["-c", "http.lowSpeedLimit=1", "-c", "http.lowSpeedTime=60"])
        .env("GIT_TERMINAL_PROMPT", "0")
        // Never ask for a password or host key: fail instead.
        .env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o ConnectTimeout=30",
        )
        .stdin(Stdio::null());
    command
}

fn run_git(url: &str, command: &mut Command) -> Result<(), OfflineError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| OfflineError::Git {
            url: url.to_owned(),
            reason: format!("cannot run git: {error}"),
        })?;
    if !output.status.success() {
        return Err(OfflineError::Git {
            url: url.to_owned(),
            reason: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_are_told_from_local_ones() {
        for remote in [
            "https://example.org/a.git",
            "http://example.org/a",
            "git://127.0.0.1:9418/a.git",
            "ssh://git@example.org/a.git",
            "git@example.org:a/b.git",
            "example.org:a/b.git",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        for local in [
            "file:///srv/a.git",
            "../repo",
            "./repo",
            "/srv/repo",
            "repo",
        ] {
            assert!(!is_remote(local), "{local}");
        }
    }

    #[test]
    fn root_names_are_canonical() {
        assert_eq!(
            root_name("https://example.org/a.git/", None),
            "remote:https://example.org/a.git#HEAD"
        );
        assert_eq!(
            root_name("https://example.org/a.git", Some("v1")),
            "remote:https://example.org/a.git#v1"
        );
    }

    #[test]
    fn rev_is_a_prefix_of_at_least_four_digits() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert!(rev_matches(commit, commit));
        assert!(rev_matches(commit, "0123"));
        assert!(rev_matches(commit, "0123456789ABCDEF"));
        assert!(!rev_matches(commit, "012"));
        assert!(!rev_matches(commit, "1123"));
    }
}
