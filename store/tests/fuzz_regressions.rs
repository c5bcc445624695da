//! Inputs the fuzz targets (fuzz/, docs/fuzzing.md) once crashed on, replayed
//! through the same calls as the target: `tests/fuzz/TARGET/*`. A new finding
//! is added by copying its input into the target's directory.

use std::path::{Path, PathBuf};

use kiln_store::Tree;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let bytes = std::fs::read(&path).expect("a regression input");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    inputs
}

/// fuzz/fuzz_targets/tree_decode.rs: a decoded tree re-encodes to the same
/// bytes, and its size and digest never panic (size-overflow: two entries
/// whose sizes add up past `u64::MAX` made `Tree::size` overflow).
#[test]
fn tree_decode_regressions() {
    for (path, bytes) in inputs("tree_decode") {
        if let Ok(tree) = Tree::decode(&bytes) {
            assert_eq!(tree.encode(), bytes, "{}", path.display());
            let _ = tree.digest();
            let _ = tree.size();
        }
    }
}

#[test]
fn a_tree_size_saturates_instead_of_overflowing() {
    let (_, bytes) = inputs("tree_decode")
        .into_iter()
        .find(|(path, _)| path.ends_with("size-overflow"))
        .expect("the size-overflow input");
    let tree = Tree::decode(&bytes).expect("the encoding is valid");
    assert_eq!(tree.size(), u64::MAX);
}
