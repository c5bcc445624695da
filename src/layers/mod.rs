//! Layers (design §4): restoring trees into directories for overlay mounts,
//! capturing a job's upper directory as its output layer, narrowing the base
//! layer to a job's `inputs`, and collecting artifacts from a job's merged
//! view.
//!
//! Artifacts are taken from the merged view computed *in the store* (base
//! layer, then upstream output layers, then the job's own, with whiteouts
//! and opaque directories honoured): an artifact is a digest that already
//! exists, so collecting one copies no file data, and a cached job's
//! artifacts are exactly the ones recorded with its result.
//!
//! Architecture invariant: an output layer is only ever read from the
//! store, never from a directory a job could still write to.

mod builder;
pub mod glob;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_grammar::manifest::Artifact;
use kiln_store::{
    AddOptions, B3Digest, JobArtifact, Node, ObjectRef, RestoreOptions, Store, StoreError,
    TempRoots, Tree,
};

pub use builder::{DirBuilder, Entry, components};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot place {path}: {reason}")]
    Place { path: String, reason: String },
    #[error("artifact {src}: {reason}")]
    Artifact { src: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The empty tree, added once so that a job without inputs still has a
/// base layer digest.
pub fn empty_tree(store: &mut Store, roots: &TempRoots) -> Result<B3Digest, LayerError> {
    Ok(store.add_tree(&Tree::default(), roots)?)
}

/// Restores each layer at most once per build, under the build's temp dir.
#[derive(Debug)]
pub struct LayerCache {
    dir: PathBuf,
    restored: HashMap<B3Digest, PathBuf>,
}

impl LayerCache {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            restored: HashMap::new(),
        }
    }

    /// The directory holding `layer`, restoring it in layer mode (whiteouts
    /// become real overlay whiteouts) the first time.
    pub fn directory(&mut self, store: &Store, layer: &B3Digest) -> Result<PathBuf, LayerError> {
        if let Some(dir) = self.restored.get(layer) {
            return Ok(dir.clone());
        }
        let dir = self.dir.join(layer.to_hex());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| LayerError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        store.restore(
            layer,
            &dir,
            &RestoreOptions {
                layer: true,
                progress: None,
            },
        )?;
        self.restored.insert(*layer, dir.clone());
        Ok(dir)
    }
}

/// Stores a job's upper directory as its output layer (whiteouts and opaque
/// directories kept; metadata normalised by the tree format).
pub fn capture(store: &mut Store, upper: &Path, roots: &TempRoots) -> Result<B3Digest, LayerError> {
    let report = store.add_path(
        upper,
        &AddOptions {
            layer: true,
            progress: None,
        },
        roots,
    )?;
    Ok(report.object.digest)
}

/// The part of `base` the patterns select (a pattern naming a directory
/// selects all of it); everything else is absent.
pub fn narrow(
    store: &mut Store,
    base: &B3Digest,
    patterns: &[String],
    roots: &TempRoots,
) -> Result<B3Digest, LayerError> {
    let mut selected = DirBuilder::new();
    let mut stack = vec![(String::new(), *base)];
    while let Some((prefix, digest)) = stack.pop() {
        let tree = store.tree(&digest)?;
        for entry in tree.entries() {
            let name = String::from_utf8_lossy(entry.name.as_bytes());
            let path = if prefix.is_empty() {
                name.into_owned()
            } else {
                format!("{prefix}/{name}")
            };
            if patterns.iter().any(|pattern| glob::selects(pattern, &path)) {
                selected.place(store, &path, entry.node.clone())?;
            } else if let Node::Directory { digest, .. } = &entry.node {
                stack.push((path, *digest));
            }
        }
    }
    match selected.write(store, roots)? {
        Node::Directory { digest, .. } => Ok(digest),
        _ => Ok(empty_tree(store, roots)?),
    }
}

/// The job's merged workspace view: `base`, then each output layer.
pub fn merged_view(
    store: &Store,
    base: &B3Digest,
    layers: &[B3Digest],
) -> Result<DirBuilder, LayerError> {
    let mut view = DirBuilder::from_tree(store, base)?;
    for layer in layers {
        view.apply_layer(store, layer)?;
    }
    Ok(view)
}

/// The tree of `merged_view(base, layers)`, stored: a plain directory tree
/// with every whiteout applied (the empty tree when nothing is left).
pub fn merged_tree(
    store: &mut Store,
    roots: &TempRoots,
    base: &B3Digest,
    layers: &[B3Digest],
) -> Result<B3Digest, LayerError> {
    let view = merged_view(store, base, layers)?;
    match view.write(store, roots)? {
        Node::Directory { digest, .. } => Ok(digest),
        _ => empty_tree(store, roots),
    }
}

/// Collects the declared artifacts from a merged view. A file or directory
/// is saved under its name; each match of a glob is saved under
/// `NAME/<its path in the workspace>`. A missing non-glob artifact, or a
/// glob with no match, is an error (the job fails).
pub fn collect_artifacts(
    store: &mut Store,
    view: &mut DirBuilder,
    artifacts: &[Artifact],
    roots: &TempRoots,
) -> Result<Vec<JobArtifact>, LayerError> {
    let mut out = Vec::new();
    for artifact in artifacts {
        if glob::is_glob(&artifact.src) {
            let mut paths = Vec::new();
            view.walk(store, "", &mut paths)?;
            // A match inside a directory that matched too is already saved
            // with it (`**` matches both).
            let mut matched: Vec<String> = Vec::new();
            for path in paths {
                let inside_match = matched.iter().any(|dir| {
                    path.starts_with(dir.as_str()) && path.as_bytes().get(dir.len()) == Some(&b'/')
                });
                if !inside_match && glob::matches(&artifact.src, &path) {
                    matched.push(path);
                }
            }
            if matched.is_empty() {
                return Err(LayerError::Artifact {
                    src: artifact.src.clone(),
                    reason: "the pattern matches nothing in the workspace".into(),
                });
            }
            for path in matched {
                let name = join_name(&artifact.name, &path);
                if let Some(saved) = save(store, view, &path, &name, roots)? {
                    out.push(saved);
                }
            }
        } else {
            match save(store, view, &artifact.src, &artifact.name, roots)? {
                Some(saved) => out.push(saved),
                None => {
                    return Err(LayerError::Artifact {
                        src: artifact.src.clone(),
                        reason: "not found in the workspace".into(),
                    });
                }
            }
        }
    }
    Ok(out)
}

fn join_name(dir: &str, path: &str) -> String {
    let dir = dir.trim_matches('/');
    if dir.is_empty() || dir == "." {
        path.to_owned()
    } else {
        format!("{dir}/{path}")
    }
}

fn save(
    store: &mut Store,
    view: &mut DirBuilder,
    path: &str,
    name: &str,
    roots: &TempRoots,
) -> Result<Option<JobArtifact>, LayerError> {
    let Some(entry) = view.get(store, path)? else {
        return Ok(None);
    };
    let object = match entry.clone() {
        Entry::Node(Node::File { digest, .. }) => ObjectRef::blob(digest),
        Entry::Node(Node::Directory { digest, .. }) => ObjectRef::tree(digest),
        Entry::Dir(dir) => match dir.write(store, roots)? {
            Node::Directory { digest, .. } => ObjectRef::tree(digest),
            _ => return Ok(None),
        },
        // A symlink or whiteout is no artifact: the glob walk skips them.
        Entry::Node(_) => return Ok(None),
    };
    roots.hold(object)?;
    let size = store.object_size(object)?;
    Ok(Some(JobArtifact {
        name: name.to_owned(),
        object,
        size,
    }))
}

/// The output layer that turns `before` into `after`: changed and new
/// entries in full (directories recursively), deletions as whiteouts.
pub fn diff(
    store: &mut Store,
    before: &B3Digest,
    after: &B3Digest,
    roots: &TempRoots,
) -> Result<B3Digest, LayerError> {
    let tree = diff_trees(store, Some(before), after, roots)?;
    Ok(store.add_tree(&tree, roots)?)
}

fn diff_trees(
    store: &mut Store,
    before: Option<&B3Digest>,
    after: &B3Digest,
    roots: &TempRoots,
) -> Result<Tree, LayerError> {
    use kiln_store::TreeEntry;
    let new = store.tree(after)?;
    let old = match before {
        Some(digest) => store.tree(digest)?,
        None => Tree::default(),
    };
    let old_entries: HashMap<&[u8], &Node> = old
        .entries()
        .iter()
        .map(|entry| (entry.name.as_bytes(), &entry.node))
        .collect();
    let mut entries = Vec::new();
    for entry in new.entries() {
        match (old_entries.get(entry.name.as_bytes()), &entry.node) {
            (Some(old), new) if *old == new => {}
            (
                Some(Node::Directory {
                    digest: old_dir, ..
                }),
                Node::Directory { digest, .. },
            ) => {
                let sub = diff_trees(store, Some(old_dir), digest, roots)?;
                let size = sub.size();
                let digest = store.add_tree(&sub, roots)?;
                entries.push(TreeEntry {
                    name: entry.name.clone(),
                    node: Node::Directory { digest, size },
                });
            }
            _ => entries.push(entry.clone()),
        }
    }
    let new_names: std::collections::HashSet<&[u8]> = new
        .entries()
        .iter()
        .map(|entry| entry.name.as_bytes())
        .collect();
    for entry in old.entries() {
        if !new_names.contains(entry.name.as_bytes()) {
            entries.push(TreeEntry {
                name: entry.name.clone(),
                node: Node::Whiteout,
            });
        }
    }
    Ok(Tree::new(false, entries)?)
}

#[cfg(test)]
mod tests {
    use kiln_store::{EntryName, TreeEntry};

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        roots: TempRoots,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let roots = store.temp_roots().unwrap();
        Fixture {
            _dir: dir,
            store,
            roots,
        }
    }

    impl Fixture {
        fn file(&mut self, text: &str) -> Node {
            let report = self.store.add_bytes(text.as_bytes(), &self.roots).unwrap();
            Node::File {
                digest: report.object.digest,
                size: text.len() as u64,
                executable: false,
            }
        }

        fn tree(&mut self, opaque: bool, entries: Vec<(&str, Node)>) -> B3Digest {
            let entries = entries
                .into_iter()
                .map(|(name, node)| TreeEntry {
                    name: EntryName::new(name.as_bytes().to_vec()).unwrap(),
                    node,
                })
                .collect();
            let tree = Tree::new(opaque, entries).unwrap();
            self.store.add_tree(&tree, &self.roots).unwrap()
        }

        fn dir(&mut self, opaque: bool, entries: Vec<(&str, Node)>) -> Node {
            let digest = self.tree(opaque, entries);
            Node::Directory {
                digest,
                size: self.store.tree(&digest).unwrap().size(),
            }
        }

        fn paths(&self, view: &mut DirBuilder) -> Vec<String> {
            let mut out = Vec::new();
            view.walk(&self.store, "", &mut out).unwrap();
            out
        }
    }

    #[test]
    fn merged_view_honours_whiteouts_and_opaque_directories() {
        let mut f = fixture();
        let (a, b, c) = (f.file("a"), f.file("b"), f.file("c"));
        let src = f.dir(false, vec![("a.c", a.clone()), ("b.c", b.clone())]);
        let old = f.dir(false, vec![("x", c.clone())]);
        let base = f.tree(false, vec![("src", src), ("old", old), ("keep", a.clone())]);
        // The job deleted src/b.c, replaced old/ wholesale, added new.txt.
        let src_layer = f.dir(false, vec![("b.c", Node::Whiteout)]);
        let old_layer = f.dir(true, vec![("y", b.clone())]);
        let layer = f.tree(
            false,
            vec![
                ("src", src_layer),
                ("old", old_layer),
                ("new.txt", c.clone()),
            ],
        );
        let mut view = merged_view(&f.store, &base, &[layer]).unwrap();
        assert_eq!(
            f.paths(&mut view),
            ["keep", "new.txt", "old", "old/y", "src", "src/a.c"]
        );
    }

    #[test]
    fn diff_records_changes_and_deletions_and_narrow_selects_inputs() {
        let mut f = fixture();
        let (a, b, c) = (f.file("a"), f.file("b"), f.file("c"));
        let sub = f.dir(false, vec![("one", a.clone()), ("two", b.clone())]);
        let before = f.tree(
            false,
            vec![("sub", sub), ("gone", c.clone()), ("same", a.clone())],
        );
        let sub_after = f.dir(false, vec![("one", a.clone()), ("two", c.clone())]);
        let after = f.tree(
            false,
            vec![
                ("sub", sub_after),
                ("same", a.clone()),
                ("added", b.clone()),
            ],
        );
        let layer = diff(&mut f.store, &before, &after, &f.roots).unwrap();
        let tree = f.store.tree(&layer).unwrap();
        let top: Vec<(String, &str)> = tree
            .entries()
            .iter()
            .map(|e| (e.name.to_string(), e.node.kind_name()))
            .collect();
        assert_eq!(
            top,
            [
                ("added".to_owned(), "file"),
                ("gone".to_owned(), "whiteout"),
                ("sub".to_owned(), "dir"),
            ]
        );
        // Applying the diff to `before` gives `after`.
        let mut view = merged_view(&f.store, &before, &[layer]).unwrap();
        assert_eq!(
            f.paths(&mut view),
            ["added", "same", "sub", "sub/one", "sub/two"]
        );

        let narrowed = narrow(
            &mut f.store,
            &before,
            &["sub/t*".to_owned(), "same".to_owned()],
            &f.roots,
        )
        .unwrap();
        let mut view = DirBuilder::from_tree(&f.store, &narrowed).unwrap();
        assert_eq!(f.paths(&mut view), ["same", "sub", "sub/two"]);
    }
}
