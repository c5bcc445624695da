//! Trees: the canonical, versioned encoding of a directory.
//!
//! Encoding (version 1), all integers little-endian:
//! ```text
//! "kiln-tree" u8:version u8:flags(bit0 = opaque) u32:entry count
//! entry*: u16:name length, name, u8:kind, then per kind
//!   1 file:      u8:flags(bit0 = executable) u64:size [32]:blob digest
//!   2 directory: u64:size [32]:tree digest
//!   3 symlink:   u32:target length, target
//!   4 whiteout:  nothing
//! ```
//! Entries are sorted by name bytes, names are unique. Nothing else (mtime,
//! owner, permission bits other than executable) is recorded, so the same
//! content always has the same digest. Decoding is strict: anything a
//! canonical encoder would not produce is rejected.

use crate::digest::B3Digest;
use crate::error::{Result, StoreError};

const MAGIC: &[u8; 9] = b"kiln-tree";
pub const TREE_FORMAT_VERSION: u8 = 1;
const MAX_NAME_LEN: usize = 255;
const MAX_SYMLINK_LEN: usize = 4096;

/// A file name inside a tree: never empty, `.`, `..`, and never containing
/// `/` or NUL, so that restoring can never step outside its target.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryName(Vec<u8>);

impl EntryName {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self> {
        let bytes = bytes.into();
        let reason = if bytes.is_empty() {
            Some("empty name")
        } else if bytes == b"." || bytes == b".." {
            Some("`.` and `..` are not entries")
        } else if bytes.contains(&b'/') {
            Some("contains `/`")
        } else if bytes.contains(&0) {
            Some("contains NUL")
        } else if bytes.len() > MAX_NAME_LEN {
            Some("longer than 255 bytes")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(StoreError::InvalidName {
                name: String::from_utf8_lossy(&bytes).into_owned(),
                reason,
            }),
            None => Ok(Self(bytes)),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_os_str(&self) -> &std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(&self.0)
    }
}

impl std::fmt::Display for EntryName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Debug for EntryName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// What a tree entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File {
        digest: B3Digest,
        size: u64,
        executable: bool,
    },
    /// `size` is the total size of the files below it.
    Directory {
        digest: B3Digest,
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A deletion recorded in an overlay output layer.
    Whiteout,
}

impl Node {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Node::File { .. } => "file",
            Node::Directory { .. } => "dir",
            Node::Symlink { .. } => "symlink",
            Node::Whiteout => "whiteout",
        }
    }

    /// Logical bytes below this entry (files and directories only).
    pub fn size(&self) -> u64 {
        match self {
            Node::File { size, .. } | Node::Directory { size, .. } => *size,
            Node::Symlink { .. } | Node::Whiteout => 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    pub name: EntryName,
    pub node: Node,
}

/// A directory. `opaque` marks an overlay directory that hides what lower
/// layers have at the same path.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tree {
    opaque: bool,
    entries: Vec<TreeEntry>,
}

impl Tree {
    /// Sorts the entries; two entries with one name are an error.
    pub fn new(opaque: bool, mut entries: Vec<TreeEntry>) -> Result<Self> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = entries.windows(2).find(|pair| pair[0].name == pair[1].name) {
            return Err(StoreError::InvalidName {
                name: pair[0].name.to_string(),
                reason: "appears twice in one directory",
            });
        }
        for entry in &entries {
            if let Node::Symlink { target } = &entry.node {
                check_symlink_target(target)?;
            }
        }
        Ok(Self { opaque, entries })
    }

    pub fn opaque(&self) -> bool {
        self.opaque
    }

    pub fn entries(&self) -> &[TreeEntry] {
        &self.entries
    }

    /// Total bytes of the files below this tree. Saturates: a decoded tree
    /// comes from outside, and sizes it claims may add up past `u64::MAX`.
    pub fn size(&self) -> u64 {
        self.entries
            .iter()
            .fold(0, |total, e| total.saturating_add(e.node.size()))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries.len() * 64);
        out.extend_from_slice(MAGIC);
        out.push(TREE_FORMAT_VERSION);
        out.push(u8::from(self.opaque));
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for entry in &self.entries {
            let name = entry.name.as_bytes();
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            match &entry.node {
                Node::File {
                    digest,
                    size,
                    executable,
                } => {
                    out.push(1);
                    out.push(u8::from(*executable));
                    out.extend_from_slice(&size.to_le_bytes());
                    out.extend_from_slice(digest.as_bytes());
                }
                Node::Directory { digest, size } => {
                    out.push(2);
                    out.extend_from_slice(&size.to_le_bytes());
                    out.extend_from_slice(digest.as_bytes());
                }
                Node::Symlink { target } => {
                    out.push(3);
                    out.extend_from_slice(&(target.len() as u32).to_le_bytes());
                    out.extend_from_slice(target);
                }
                Node::Whiteout => out.push(4),
            }
        }
        out
    }

    pub fn digest(&self) -> B3Digest {
        B3Digest::of(&self.encode())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut reader = Reader { bytes, pos: 0 };
        if reader.take(MAGIC.len())? != MAGIC {
            return Err(bad("not a kiln tree (bad magic)"));
        }
        let version = reader.u8()?;
        if version != TREE_FORMAT_VERSION {
            return Err(bad(format!(
                "tree format version {version}; this kiln reads version {TREE_FORMAT_VERSION}"
            )));
        }
        let opaque = match reader.u8()? {
            0 => false,
            1 => true,
            other => return Err(bad(format!("unknown tree flags {other:#x}"))),
        };
        let count = reader.u32()? as usize;
        // Each entry takes at least 4 bytes: a count beyond that is a lie.
        if count > bytes.len() / 4 {
            return Err(bad("entry count larger than the encoding"));
        }
        let mut entries: Vec<TreeEntry> = Vec::with_capacity(count);
        for _ in 0..count {
            let name_len = reader.u16()? as usize;
            let name = EntryName::new(reader.take(name_len)?.to_vec())?;
            if let Some(previous) = entries.last()
                && previous.name >= name
            {
                return Err(bad(format!("entry {name:?} out of order or repeated")));
            }
            let node = match reader.u8()? {
                1 => {
                    let executable = match reader.u8()? {
                        0 => false,
                        1 => true,
                        other => return Err(bad(format!("unknown file flags {other:#x}"))),
                    };
                    let size = reader.u64()?;
                    Node::File {
                        digest: reader.digest()?,
                        size,
                        executable,
                    }
                }
                2 => {
                    let size = reader.u64()?;
                    Node::Directory {
                        digest: reader.digest()?,
                        size,
                    }
                }
                3 => {
                    let len = reader.u32()? as usize;
                    let target = reader.take(len)?.to_vec();
                    check_symlink_target(&target)?;
                    Node::Symlink { target }
                }
                4 => Node::Whiteout,
                other => return Err(bad(format!("unknown entry kind {other} for {name:?}"))),
            };
            entries.push(TreeEntry { name, node });
        }
        if reader.pos != bytes.len() {
            return Err(bad("trailing bytes after the last entry"));
        }
        Ok(Self { opaque, entries })
    }
}

fn check_symlink_target(target: &[u8]) -> Result<()> {
    if target.is_empty() || target.contains(&0) || target.len() > MAX_SYMLINK_LEN {
        return Err(bad("symlink target empty, too long or containing NUL"));
    }
    Ok(())
}

fn bad(reason: impl Into<String>) -> StoreError {
    StoreError::BadTree {
        reason: reason.into(),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| bad("truncated"))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let slice = self.take(N)?;
        <[u8; N]>::try_from(slice).map_err(|_| bad("truncated"))
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn digest(&mut self) -> Result<B3Digest> {
        Ok(B3Digest::from_array(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(s: &str) -> EntryName {
        EntryName::new(s).unwrap()
    }

    #[test]
    fn order_of_construction_does_not_matter() {
        let file = Node::File {
            digest: B3Digest::of(b"x"),
            size: 1,
            executable: false,
        };
        let a = TreeEntry {
            name: name("a"),
            node: file.clone(),
        };
        let b = TreeEntry {
            name: name("b"),
            node: Node::Whiteout,
        };
        let one = Tree::new(false, vec![a.clone(), b.clone()]).unwrap();
        let two = Tree::new(false, vec![b, a]).unwrap();
        assert_eq!(one.digest(), two.digest());
    }

    #[test]
    fn opaque_changes_the_digest() {
        assert_ne!(
            Tree::new(true, vec![]).unwrap().digest(),
            Tree::default().digest()
        );
    }

    #[test]
    fn rejects_dangerous_names() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert!(EntryName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn decoding_rejects_a_crafted_dotdot_entry() {
        let mut bytes = Tree::new(
            false,
            vec![TreeEntry {
                name: name("xx"),
                node: Node::Whiteout,
            }],
        )
        .unwrap()
        .encode();
        let at = bytes.windows(2).position(|w| w == b"xx").unwrap();
        bytes[at..at + 2].copy_from_slice(b"..");
        let error = Tree::decode(&bytes).unwrap_err().to_string();
        assert!(error.contains("`..`"), "{error}");
    }

    fn arb_name() -> impl Strategy<Value = EntryName> {
        proptest::collection::vec(1u8..=255, 1..20)
            .prop_filter_map("valid name", |bytes| EntryName::new(bytes).ok())
    }

    fn arb_node() -> impl Strategy<Value = Node> {
        prop_oneof![
            (any::<[u8; 32]>(), any::<u64>(), any::<bool>()).prop_map(|(d, size, executable)| {
                Node::File {
                    digest: B3Digest::from_array(d),
                    size,
                    executable,
                }
            }),
            (any::<[u8; 32]>(), any::<u64>()).prop_map(|(d, size)| Node::Directory {
                digest: B3Digest::from_array(d),
                size
            }),
            proptest::collection::vec(1u8..=255, 1..50).prop_map(|target| Node::Symlink { target }),
            Just(Node::Whiteout),
        ]
    }

    proptest! {
        #[test]
        fn encoding_round_trips(
            opaque in any::<bool>(),
            entries in proptest::collection::btree_map(arb_name(), arb_node(), 0..20),
        ) {
            let entries: Vec<_> = entries.into_iter().map(|(name, node)| TreeEntry { name, node }).collect();
            let mut reversed = entries.clone();
            reversed.reverse();
            let tree = Tree::new(opaque, entries).unwrap();
            let encoded = tree.encode();
            prop_assert_eq!(Tree::decode(&encoded).unwrap(), tree.clone());
            prop_assert_eq!(Tree::new(opaque, reversed).unwrap().encode(), encoded);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Tree::decode(&bytes);
        }

        #[test]
        fn truncation_is_always_detected(
            entries in proptest::collection::btree_map(arb_name(), arb_node(), 1..10),
            cut in any::<prop::sample::Index>(),
        ) {
            let entries: Vec<_> = entries.into_iter().map(|(name, node)| TreeEntry { name, node }).collect();
            let encoded = Tree::new(false, entries).unwrap().encode();
            let cut = cut.index(encoded.len());
            prop_assert!(Tree::decode(&encoded[..cut]).is_err());
        }
    }
}
