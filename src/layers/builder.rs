//! Composing and merging trees in memory without touching file data: the
//! base layer is sources and objects placed at their paths, a job's merged
//! view is the base layer with upstream output layers applied (whiteouts and
//! opaque directories honoured). Only directories that change are written
//! back as new trees; unchanged subtrees keep their digest.

use std::collections::BTreeMap;

use kiln_store::{B3Digest, EntryName, Node, Store, TempRoots, Tree, TreeEntry};

use super::LayerError;

/// A directory being built: untouched children stay store nodes, children
/// being changed are expanded into builders.
#[derive(Clone, Debug, Default)]
pub struct DirBuilder {
    entries: BTreeMap<Vec<u8>, Entry>,
}

#[derive(Clone, Debug)]
pub enum Entry {
    Node(Node),
    Dir(DirBuilder),
}

impl DirBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The top level of the tree `digest`.
    pub fn from_tree(store: &Store, digest: &B3Digest) -> Result<Self, LayerError> {
        let tree = store.tree(digest)?;
        Ok(Self {
            entries: tree
                .entries()
                .iter()
                .filter(|entry| entry.node != Node::Whiteout)
                .map(|entry| {
                    (
                        entry.name.as_bytes().to_vec(),
                        Entry::Node(entry.node.clone()),
                    )
                })
                .collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Places `node` at the relative `path` (components separated by `/`;
    /// empty or `.` is this directory). A directory placed over a directory
    /// merges into it (later entries win); anything else replaces.
    pub fn place(&mut self, store: &Store, path: &str, node: Node) -> Result<(), LayerError> {
        let components = components(path)?;
        let Some((last, parents)) = components.split_last() else {
            return match node {
                Node::Directory { digest, .. } => self.merge_tree(store, &digest),
                other => Err(LayerError::Place {
                    path: path.to_owned(),
                    reason: format!("a {} cannot become the workspace root", other.kind_name()),
                }),
            };
        };
        let mut dir = self;
        for component in parents {
            dir = dir.child_dir(store, component)?;
        }
        match (node, dir.entries.get(*last)) {
            (Node::Directory { digest, .. }, Some(existing)) if is_dir(existing) => {
                dir.child_dir(store, last)?.merge_tree(store, &digest)
            }
            (node, _) => {
                dir.entries.insert(last.to_vec(), Entry::Node(node));
                Ok(())
            }
        }
    }

    fn merge_tree(&mut self, store: &Store, digest: &B3Digest) -> Result<(), LayerError> {
        let tree = store.tree(digest)?;
        for entry in tree.entries() {
            let name = entry.name.as_bytes();
            match (&entry.node, self.entries.get(name)) {
                (Node::Directory { digest, .. }, Some(existing)) if is_dir(existing) => {
                    self.child_dir(store, name)?.merge_tree(store, digest)?;
                }
                (Node::Whiteout, _) => {}
                (node, _) => {
                    self.entries
                        .insert(name.to_vec(), Entry::Node(node.clone()));
                }
            }
        }
        Ok(())
    }

    /// Applies an overlay output layer: whiteouts delete, opaque
    /// directories replace, other directories merge.
    pub fn apply_layer(&mut self, store: &Store, digest: &B3Digest) -> Result<(), LayerError> {
        let tree = store.tree(digest)?;
        if tree.opaque() {
            self.entries.clear();
        }
        for entry in tree.entries() {
            let name = entry.name.as_bytes();
            match &entry.node {
                Node::Whiteout => {
                    self.entries.remove(name);
                }
                Node::Directory { digest, .. } => {
                    let merge = self.entries.get(name).is_some_and(is_dir);
                    if !merge {
                        self.entries
                            .insert(name.to_vec(), Entry::Dir(DirBuilder::new()));
                    }
                    self.child_dir(store, name)?.apply_layer(store, digest)?;
                }
                node => {
                    self.entries
                        .insert(name.to_vec(), Entry::Node(node.clone()));
                }
            }
        }
        Ok(())
    }

    /// The entry at `path`, expanding directories on the way.
    pub fn get(&mut self, store: &Store, path: &str) -> Result<Option<&mut Entry>, LayerError> {
        let components = components(path)?;
        let Some((last, parents)) = components.split_last() else {
            return Ok(None);
        };
        let mut dir = self;
        for component in parents {
            match dir.entries.get(*component) {
                Some(entry) if is_dir(entry) => dir = dir.child_dir(store, component)?,
                _ => return Ok(None),
            }
        }
        Ok(dir.entries.get_mut(*last))
    }

    /// Every path below this directory (files, symlinks and directories),
    /// relative, in sorted order.
    pub fn walk(
        &mut self,
        store: &Store,
        prefix: &str,
        out: &mut Vec<String>,
    ) -> Result<(), LayerError> {
        let names: Vec<Vec<u8>> = self.entries.keys().cloned().collect();
        for name in names {
            let text = String::from_utf8_lossy(&name).into_owned();
            let path = if prefix.is_empty() {
                text
            } else {
                format!("{prefix}/{text}")
            };
            out.push(path.clone());
            if self.entries.get(&name).is_some_and(is_dir) {
                self.child_dir(store, &name)?.walk(store, &path, out)?;
            }
        }
        Ok(())
    }

    /// Writes changed directories as trees; returns this directory's node.
    pub fn write(self, store: &mut Store, roots: &TempRoots) -> Result<Node, LayerError> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for (name, entry) in self.entries {
            let node = match entry {
                Entry::Node(node) => node,
                Entry::Dir(dir) => dir.write(store, roots)?,
            };
            entries.push(TreeEntry {
                name: EntryName::new(name)?,
                node,
            });
        }
        let tree = Tree::new(false, entries)?;
        let size = tree.size();
        let digest = store.add_tree(&tree, roots)?;
        Ok(Node::Directory { digest, size })
    }

    /// The child directory `name`, expanded (created when absent, replacing
    /// a file in the way).
    fn child_dir(&mut self, store: &Store, name: &[u8]) -> Result<&mut DirBuilder, LayerError> {
        let entry = self
            .entries
            .entry(name.to_vec())
            .or_insert_with(|| Entry::Dir(DirBuilder::new()));
        if let Entry::Node(node) = entry {
            *entry = Entry::Dir(match node {
                Node::Directory { digest, .. } => DirBuilder::from_tree(store, digest)?,
                _ => DirBuilder::new(),
            });
        }
        match entry {
            Entry::Dir(dir) => Ok(dir),
            Entry::Node(_) => unreachable!("replaced just above"),
        }
    }
}

fn is_dir(entry: &Entry) -> bool {
    matches!(entry, Entry::Dir(_) | Entry::Node(Node::Directory { .. }))
}

/// `a/b/c` → components; `.` and empty components are dropped, `..` is an
/// error (nothing may escape the workspace).
pub fn components(path: &str) -> Result<Vec<&[u8]>, LayerError> {
    let mut out = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(LayerError::Place {
                    path: path.to_owned(),
                    reason: "`..` would leave the workspace".into(),
                });
            }
            other => out.push(other.as_bytes()),
        }
    }
    Ok(out)
}
