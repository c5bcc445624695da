//! Byte-level comparison of store objects: what `kiln run --check` and
//! `kiln diff` report. Trees are walked side by side (iteratively, so a deep
//! tree cannot overflow the stack); identical subtrees are skipped by digest,
//! so only what differs is ever read.

use std::collections::BTreeMap;

use kiln_store::{B3Digest, JobArtifact, Node, ObjectKind, ObjectRef, Store, Tree};
use serde::{Deserialize, Serialize};

use super::ReproError;

/// At most this many differences are listed per comparison; the rest are
/// counted in [`Comparison::omitted`].
pub const MAX_LISTED: usize = 200;

/// What changed at one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only the new side has it.
    Added,
    /// Only the recorded side has it.
    Removed,
    /// A file became a directory, a symlink, a whiteout, ... (or back).
    Kind,
    /// Both are files with different bytes.
    Content,
    /// Same bytes, different executable bit.
    Executable,
    /// Both are symlinks pointing elsewhere.
    SymlinkTarget,
    /// Both are directories; one hides the lower layers (overlay opaque).
    Opaque,
}

impl Change {
    pub fn label(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Kind => "type changed",
            Change::Content => "content differs",
            Change::Executable => "executable bit differs",
            Change::SymlinkTarget => "symlink target differs",
            Change::Opaque => "opaque flag differs",
        }
    }
}

/// One differing path: `recorded_*` describe the first (recorded, or
/// `BUILD_A`) side, `new_*` the second.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub path: String,
    pub change: Change,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_size: Option<u64>,
    /// For [`Change::Content`]: the offset of the first byte that differs
    /// (the shorter file's length when one is a prefix of the other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_differing_offset: Option<u64>,
    /// Symlink targets or executable bits, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe("recorded", "now"))
    }
}

impl Difference {
    /// One line for people; `old` and `new` name the two sides
    /// (`recorded`/`now`, `in build 3`/`in build 4`).
    pub fn describe(&self, old: &str, new: &str) -> String {
        let mut text = format!("{}: {}", self.path, self.change.label());
        let kind = |k: &Option<String>| k.clone().unwrap_or_else(|| "?".into());
        let mut parts: Vec<String> = Vec::new();
        match self.change {
            Change::Added => parts.push(kind(&self.new_kind)),
            Change::Removed => parts.push(kind(&self.recorded_kind)),
            Change::Kind => parts.push(format!(
                "{} {old}, {} {new}",
                kind(&self.recorded_kind),
                kind(&self.new_kind)
            )),
            _ => {}
        }
        match (self.recorded_size, self.new_size) {
            (Some(a), Some(b)) => parts.push(format!("{a} bytes {old}, {b} bytes {new}")),
            (Some(size), None) | (None, Some(size)) => parts.push(format!("{size} bytes")),
            (None, None) => {}
        }
        if let Some(offset) = self.first_differing_offset {
            parts.push(format!("first difference at byte {offset}"));
        }
        if let Some(detail) = &self.detail {
            parts.push(detail.clone());
        }
        if !parts.is_empty() {
            text.push_str(&format!(" ({})", parts.join(", ")));
        }
        text
    }
}

/// The differences found between two sides, at most [`MAX_LISTED`] of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    pub differences: Vec<Difference>,
    /// Differences found beyond [`MAX_LISTED`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Comparison {
    pub fn is_identical(&self) -> bool {
        self.differences.is_empty() && self.omitted == 0
    }

    pub fn count(&self) -> u64 {
        self.differences.len() as u64 + self.omitted
    }

    fn push(&mut self, difference: Difference) {
        if self.differences.len() < MAX_LISTED {
            self.differences.push(difference);
        } else {
            self.omitted += 1;
        }
    }
}

/// One side of a comparison at some path.
#[derive(Clone, Debug)]
enum Side {
    File {
        digest: B3Digest,
        size: u64,
        executable: bool,
    },
    Dir {
        digest: B3Digest,
        size: u64,
    },
    Symlink(Vec<u8>),
    Whiteout,
}

impl Side {
    fn of(node: &Node) -> Side {
        match node {
            Node::File {
                digest,
                size,
                executable,
            } => Side::File {
                digest: *digest,
                size: *size,
                executable: *executable,
            },
            Node::Directory { digest, size } => Side::Dir {
                digest: *digest,
                size: *size,
            },
            Node::Symlink { target } => Side::Symlink(target.clone()),
            Node::Whiteout => Side::Whiteout,
        }
    }

    fn object(store: &Store, object: ObjectRef) -> Result<Side, ReproError> {
        let size = store.object_size(object)?;
        Ok(match object.kind {
            ObjectKind::Blob => Side::File {
                digest: object.digest,
                size,
                executable: false,
            },
            ObjectKind::Tree => Side::Dir {
                digest: object.digest,
                size,
            },
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Side::File { .. } => "file",
            Side::Dir { .. } => "dir",
            Side::Symlink(_) => "symlink",
            Side::Whiteout => "whiteout",
        }
    }

    fn size(&self) -> Option<u64> {
        match self {
            Side::File { size, .. } | Side::Dir { size, .. } => Some(*size),
            Side::Symlink(_) | Side::Whiteout => None,
        }
    }
}

/// Compares two store objects (blobs or trees); paths are reported under
/// `prefix` (the artifact name, or empty for a whole layer).
pub fn compare_objects(
    store: &Store,
    recorded: ObjectRef,
    new: ObjectRef,
    prefix: &str,
) -> Result<Comparison, ReproError> {
    let mut comparison = Comparison::default();
    let recorded = Side::object(store, recorded)?;
    let new = Side::object(store, new)?;
    compare_sides(store, prefix, recorded, new, &mut comparison)?;
    Ok(comparison)
}

/// Compares two sets of named artifacts (a job's recorded and new ones, or
/// two builds'): by name, then each pair with [`compare_objects`].
pub fn compare_artifacts(
    store: &Store,
    recorded: &[JobArtifact],
    new: &[JobArtifact],
) -> Result<Comparison, ReproError> {
    let by_name = |list: &[JobArtifact]| -> BTreeMap<String, ObjectRef> {
        list.iter().map(|a| (a.name.clone(), a.object)).collect()
    };
    let (recorded, new) = (by_name(recorded), by_name(new));
    let mut comparison = Comparison::default();
    let names: std::collections::BTreeSet<&String> = recorded.keys().chain(new.keys()).collect();
    for name in names {
        let old = recorded
            .get(name)
            .map(|o| Side::object(store, *o))
            .transpose()?;
        let now = new.get(name).map(|o| Side::object(store, *o)).transpose()?;
        match (old, now) {
            (Some(old), Some(now)) => compare_sides(store, name, old, now, &mut comparison)?,
            (Some(old), None) => comparison.push(one_sided(name, Change::Removed, &old)),
            (None, Some(now)) => comparison.push(one_sided(name, Change::Added, &now)),
            (None, None) => {}
        }
    }
    Ok(comparison)
}

/// Compares a rerun job's output layer and artifacts with its recorded
/// result: `(output layer, artifacts)`.
pub fn compare_job_result(
    store: &Store,
    recorded: &kiln_store::JobResult,
    new_output: B3Digest,
    new_artifacts: &[JobArtifact],
) -> Result<(Comparison, Comparison), ReproError> {
    let output = compare_objects(
        store,
        ObjectRef::tree(recorded.output_layer),
        ObjectRef::tree(new_output),
        "",
    )?;
    let artifacts = compare_artifacts(store, &recorded.artifacts, new_artifacts)?;
    Ok((output, artifacts))
}

fn one_sided(path: &str, change: Change, side: &Side) -> Difference {
    let (kind, size) = (Some(side.kind().to_owned()), side.size());
    let removed = change == Change::Removed;
    Difference {
        path: path.to_owned(),
        change,
        recorded_kind: if removed { kind.clone() } else { None },
        new_kind: if removed { None } else { kind },
        recorded_size: if removed { size } else { None },
        new_size: if removed { None } else { size },
        first_differing_offset: None,
        detail: None,
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() || prefix == "." {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Walks two sides at `path` with an explicit stack of directory pairs.
fn compare_sides(
    store: &Store,
    path: &str,
    recorded: Side,
    new: Side,
    comparison: &mut Comparison,
) -> Result<(), ReproError> {
    let mut pending: Vec<Paired> = vec![(path.to_owned(), Some(recorded), Some(new))];
    while let Some((path, recorded, new)) = pending.pop() {
        let display = if path.is_empty() {
            ".".to_owned()
        } else {
            path.clone()
        };
        let (recorded, new) = match (recorded, new) {
            (Some(recorded), Some(new)) => (recorded, new),
            (Some(old), None) => {
                comparison.push(one_sided(&display, Change::Removed, &old));
                continue;
            }
            (None, Some(now)) => {
                comparison.push(one_sided(&display, Change::Added, &now));
                continue;
            }
            (None, None) => continue,
        };
        match (&recorded, &new) {
            (
                Side::File {
                    digest: a,
                    size: size_a,
                    executable: x_a,
                },
                Side::File {
                    digest: b,
                    size: size_b,
                    executable: x_b,
                },
            ) => {
                if a != b {
                    let offset = first_differing_offset(store, a, b)?;
                    comparison.push(Difference {
                        path: display,
                        change: Change::Content,
                        recorded_kind: None,
                        new_kind: None,
                        recorded_size: Some(*size_a),
                        new_size: Some(*size_b),
                        first_differing_offset: Some(offset),
                        detail: None,
                    });
                } else if x_a != x_b {
                    let word = |x: &bool| if *x { "executable" } else { "not executable" };
                    comparison.push(Difference {
                        path: display,
                        change: Change::Executable,
                        recorded_kind: None,
                        new_kind: None,
                        recorded_size: None,
                        new_size: None,
                        first_differing_offset: None,
                        detail: Some(format!("{} → {}", word(x_a), word(x_b))),
                    });
                }
            }
            (Side::Dir { digest: a, .. }, Side::Dir { digest: b, .. }) => {
                if a == b {
                    continue;
                }
                let (tree_a, tree_b) = (store.tree(a)?, store.tree(b)?);
                if tree_a.opaque() != tree_b.opaque() {
                    let word = |o: bool| if o { "opaque" } else { "not opaque" };
                    comparison.push(Difference {
                        path: display.clone(),
                        change: Change::Opaque,
                        recorded_kind: None,
                        new_kind: None,
                        recorded_size: None,
                        new_size: None,
                        first_differing_offset: None,
                        detail: Some(format!(
                            "{} → {}",
                            word(tree_a.opaque()),
                            word(tree_b.opaque())
                        )),
                    });
                }
                // Pushed in reverse so that paths come out in name order.
                let mut children = pair_entries(&tree_a, &tree_b);
                children.reverse();
                for (name, old, now) in children {
                    pending.push((join(&path, &name), old, now));
                }
            }
            (Side::Symlink(a), Side::Symlink(b)) => {
                if a != b {
                    comparison.push(Difference {
                        path: display,
                        change: Change::SymlinkTarget,
                        recorded_kind: None,
                        new_kind: None,
                        recorded_size: None,
                        new_size: None,
                        first_differing_offset: None,
                        detail: Some(format!(
                            "{} → {}",
                            String::from_utf8_lossy(a),
                            String::from_utf8_lossy(b)
                        )),
                    });
                }
            }
            (Side::Whiteout, Side::Whiteout) => {}
            (old, now) => comparison.push(Difference {
                path: display,
                change: Change::Kind,
                recorded_kind: Some(old.kind().to_owned()),
                new_kind: Some(now.kind().to_owned()),
                recorded_size: old.size(),
                new_size: now.size(),
                first_differing_offset: None,
                detail: None,
            }),
        }
    }
    Ok(())
}

type Paired = (String, Option<Side>, Option<Side>);

/// The entries of two directories matched by name, in name order.
fn pair_entries(a: &Tree, b: &Tree) -> Vec<Paired> {
    let mut paired: BTreeMap<Vec<u8>, (Option<Side>, Option<Side>)> = BTreeMap::new();
    for entry in a.entries() {
        paired.entry(entry.name.as_bytes().to_vec()).or_default().0 = Some(Side::of(&entry.node));
    }
    for entry in b.entries() {
        paired.entry(entry.name.as_bytes().to_vec()).or_default().1 = Some(Side::of(&entry.node));
    }
    paired
        .into_iter()
        .map(|(name, (old, now))| (String::from_utf8_lossy(&name).into_owned(), old, now))
        .collect()
}

/// Blobs up to this size are compared in memory; larger ones are spooled
/// to temporary files and compared block by block, so memory stays bounded.
const IN_MEMORY_LIMIT: u64 = 16 * 1024 * 1024;

/// The offset of the first byte where two blobs differ; the shorter one's
/// length when it is a prefix of the other. Runs only on blobs whose digests
/// already differ.
pub fn first_differing_offset(
    store: &Store,
    a: &B3Digest,
    b: &B3Digest,
) -> Result<u64, ReproError> {
    let larger = store
        .object_size(ObjectRef::blob(*a))?
        .max(store.object_size(ObjectRef::blob(*b))?);
    if larger <= IN_MEMORY_LIMIT {
        let (a, b) = (store.blob_bytes(a)?, store.blob_bytes(b)?);
        return Ok(first_difference(&a, &b));
    }
    let spool = |digest: &B3Digest| -> Result<std::fs::File, ReproError> {
        let io = |source| ReproError::Io {
            path: std::env::temp_dir(),
            source,
        };
        let mut file = tempfile::tempfile().map_err(io)?;
        store.read_blob(digest, &mut file)?;
        std::io::Seek::rewind(&mut file).map_err(io)?;
        Ok(file)
    };
    let (file_a, file_b) = (spool(a)?, spool(b)?);
    first_difference_in(file_a, file_b).map_err(|source| ReproError::Io {
        path: std::env::temp_dir(),
        source,
    })
}

/// [`first_difference`] over two readers, a block at a time.
fn first_difference_in(a: impl std::io::Read, b: impl std::io::Read) -> std::io::Result<u64> {
    use std::io::BufRead;
    let mut a = std::io::BufReader::with_capacity(1 << 16, a);
    let mut b = std::io::BufReader::with_capacity(1 << 16, b);
    let mut offset = 0u64;
    loop {
        let (block_a, block_b) = (a.fill_buf()?, b.fill_buf()?);
        let common = block_a.len().min(block_b.len());
        if common == 0 {
            return Ok(offset);
        }
        let at = first_difference(&block_a[..common], &block_b[..common]);
        if at < common as u64 {
            return Ok(offset + at);
        }
        offset += common as u64;
        a.consume(common);
        b.consume(common);
    }
}

/// The offset of the first differing byte of two byte strings (the shorter
/// length when one is a prefix of the other; equal strings give their length).
pub fn first_difference(a: &[u8], b: &[u8]) -> u64 {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len())) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_comparison_agrees_with_the_in_memory_one_across_block_edges() {
        let base: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for at in [0usize, 65_535, 65_536, 65_537, 299_999] {
            let mut other = base.clone();
            other[at] ^= 0xff;
            let streamed = first_difference_in(&base[..], &other[..]).unwrap();
            assert_eq!(streamed, at as u64);
            assert_eq!(streamed, first_difference(&base, &other));
        }
        assert_eq!(first_difference_in(&base[..], &base[..1000]).unwrap(), 1000);
        // A reader that hands out a few bytes at a time.
        let trickle = std::io::Read::chain(&base[..7], &base[7..]);
        assert_eq!(first_difference_in(trickle, &base[..]).unwrap(), 300_000);
    }

    #[test]
    fn large_blobs_are_compared_without_holding_them_in_memory() {
        let temp = tempfile::tempdir().unwrap();
        let mut store = Store::open(temp.path().join("store")).unwrap();
        let roots = store.temp_roots().unwrap();
        let mut bytes = vec![7u8; (IN_MEMORY_LIMIT + 1000) as usize];
        let a = store.add_bytes(&bytes, &roots).unwrap().object.digest;
        let at = IN_MEMORY_LIMIT as usize + 10;
        bytes[at] = 8;
        let b = store.add_bytes(&bytes, &roots).unwrap().object.digest;
        assert_eq!(first_differing_offset(&store, &a, &b).unwrap(), at as u64);
    }

    #[test]
    fn first_difference_finds_the_byte_or_the_shorter_length() {
        assert_eq!(first_difference(b"abcdef", b"abcXef"), 3);
        assert_eq!(first_difference(b"abc", b"abcdef"), 3);
        assert_eq!(first_difference(b"", b"x"), 0);
        assert_eq!(first_difference(b"x", b"y"), 0);
    }

    fn file(store: &mut Store, roots: &kiln_store::TempRoots, bytes: &[u8], x: bool) -> Node {
        let digest = store.add_bytes(bytes, roots).unwrap().object.digest;
        Node::File {
            digest,
            size: bytes.len() as u64,
            executable: x,
        }
    }

    fn dir(
        store: &mut Store,
        roots: &kiln_store::TempRoots,
        entries: Vec<(&str, Node)>,
    ) -> (Node, B3Digest) {
        let entries = entries
            .into_iter()
            .map(|(name, node)| kiln_store::TreeEntry {
                name: kiln_store::EntryName::new(name).unwrap(),
                node,
            })
            .collect();
        let tree = Tree::new(false, entries).unwrap();
        let size = tree.size();
        let digest = store.add_tree(&tree, roots).unwrap();
        (Node::Directory { digest, size }, digest)
    }

    #[test]
    fn trees_compare_path_by_path_in_a_real_store() {
        let temp = tempfile::tempdir().unwrap();
        let mut store = Store::open(temp.path().join("store")).unwrap();
        let roots = store.temp_roots().unwrap();
        let same = file(&mut store, &roots, b"same", false);
        let old_stamp = file(&mut store, &roots, b"1763775223412000000\n", false);
        let new_stamp = file(&mut store, &roots, b"1763775229999000000\n", false);
        let script = file(&mut store, &roots, b"#!/bin/sh\n", false);
        let script_x = file(&mut store, &roots, b"#!/bin/sh\n", true);
        let gone = file(&mut store, &roots, b"gone", false);
        let (sub_old, _) = dir(&mut store, &roots, vec![("deep", old_stamp.clone())]);
        let (sub_new, _) = dir(&mut store, &roots, vec![("deep", new_stamp.clone())]);
        let link_a = Node::Symlink {
            target: b"a".to_vec(),
        };
        let link_b = Node::Symlink {
            target: b"b".to_vec(),
        };
        let (_, old) = dir(
            &mut store,
            &roots,
            vec![
                ("same", same.clone()),
                ("stamp", old_stamp),
                ("run.sh", script),
                ("gone", gone),
                ("sub", sub_old),
                ("link", link_a),
                ("becomes-dir", same.clone()),
            ],
        );
        let (became_dir, _) = dir(&mut store, &roots, vec![("x", same.clone())]);
        let (_, new) = dir(
            &mut store,
            &roots,
            vec![
                ("same", same.clone()),
                ("stamp", new_stamp),
                ("run.sh", script_x),
                ("added", same),
                ("sub", sub_new),
                ("link", link_b),
                ("becomes-dir", became_dir),
            ],
        );
        let found =
            compare_objects(&store, ObjectRef::tree(old), ObjectRef::tree(new), "").unwrap();
        let summary: Vec<(String, Change)> = found
            .differences
            .iter()
            .map(|d| (d.path.clone(), d.change))
            .collect();
        assert_eq!(
            summary,
            [
                ("added".to_owned(), Change::Added),
                ("becomes-dir".to_owned(), Change::Kind),
                ("gone".to_owned(), Change::Removed),
                ("link".to_owned(), Change::SymlinkTarget),
                ("run.sh".to_owned(), Change::Executable),
                ("stamp".to_owned(), Change::Content),
                ("sub/deep".to_owned(), Change::Content),
            ]
        );
        let stamp = &found.differences[5];
        assert_eq!(stamp.first_differing_offset, Some(9));
        assert_eq!((stamp.recorded_size, stamp.new_size), (Some(20), Some(20)));
        assert!(
            compare_objects(&store, ObjectRef::tree(old), ObjectRef::tree(old), "")
                .unwrap()
                .is_identical()
        );
    }

    #[test]
    fn artifacts_compare_by_name() {
        let temp = tempfile::tempdir().unwrap();
        let mut store = Store::open(temp.path().join("store")).unwrap();
        let roots = store.temp_roots().unwrap();
        let blob = |store: &mut Store, bytes: &[u8]| {
            ObjectRef::blob(store.add_bytes(bytes, &roots).unwrap().object.digest)
        };
        let artifact = |name: &str, object: ObjectRef| JobArtifact {
            name: name.into(),
            object,
            size: 0,
        };
        let (a, b, c) = (
            blob(&mut store, b"hello"),
            blob(&mut store, b"help!"),
            blob(&mut store, b"x"),
        );
        let found = compare_artifacts(
            &store,
            &[artifact("bin", a), artifact("old", c)],
            &[artifact("bin", b), artifact("new", c)],
        )
        .unwrap();
        let lines: Vec<String> = found.differences.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            [
                "bin: content differs (5 bytes recorded, 5 bytes now, first difference at byte 3)",
                "new: added (file, 1 bytes)",
                "old: removed (file, 1 bytes)",
            ]
        );
    }

    #[test]
    fn a_difference_reads_as_one_line() {
        let content = Difference {
            path: "out/stamp".into(),
            change: Change::Content,
            recorded_kind: None,
            new_kind: None,
            recorded_size: Some(20),
            new_size: Some(21),
            first_differing_offset: Some(12),
            detail: None,
        };
        assert_eq!(
            content.to_string(),
            "out/stamp: content differs (20 bytes recorded, 21 bytes now, first difference at byte 12)"
        );
        let added = one_sided(
            "new.txt",
            Change::Added,
            &Side::File {
                digest: B3Digest::of(b""),
                size: 3,
                executable: false,
            },
        );
        assert_eq!(added.to_string(), "new.txt: added (file, 3 bytes)");
        let json = serde_json::to_value(&added).unwrap();
        assert_eq!(json["change"], "added");
        assert_eq!(json["new_size"], 3);
        assert!(json.get("recorded_size").is_none());
    }
}
