//! Object kinds and the index operations every module shares.

use rusqlite::{Connection, OptionalExtension, params};

use crate::digest::B3Digest;
use crate::error::{Result, StoreError};

/// The objects a root, an artifact or a tree entry can name. Chunks are an
/// implementation detail of blobs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Blob,
    Tree,
}

impl ObjectKind {
    pub(crate) fn code(self) -> i64 {
        match self {
            ObjectKind::Blob => 1,
            ObjectKind::Tree => 2,
        }
    }

    pub(crate) fn from_code(code: i64) -> Result<Self> {
        match code {
            1 => Ok(ObjectKind::Blob),
            2 => Ok(ObjectKind::Tree),
            other => Err(StoreError::BadTree {
                reason: format!("unknown object kind code {other} in the index"),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blob",
            ObjectKind::Tree => "tree",
        }
    }

    pub(crate) fn table(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blobs",
            ObjectKind::Tree => "trees",
        }
    }
}

/// A digest together with what it names.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub digest: B3Digest,
}

impl ObjectRef {
    pub fn blob(digest: B3Digest) -> Self {
        Self {
            kind: ObjectKind::Blob,
            digest,
        }
    }
    pub fn tree(digest: B3Digest) -> Self {
        Self {
            kind: ObjectKind::Tree,
            digest,
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.digest)
    }
}

pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Adds `delta` to an object's reference count; the object must exist.
pub(crate) fn add_refs(conn: &Connection, object: ObjectRef, delta: i64) -> Result<()> {
    let sql = match object.kind {
        ObjectKind::Blob => "UPDATE blobs SET refs = refs + ?1 WHERE digest = ?2",
        ObjectKind::Tree => "UPDATE trees SET refs = refs + ?1 WHERE digest = ?2",
    };
    let changed = conn
        .prepare_cached(sql)?
        .execute(params![delta, object.digest])?;
    if changed == 0 {
        return Err(StoreError::UnknownObject {
            digest: object.digest,
        });
    }
    Ok(())
}

pub(crate) fn add_chunk_refs(conn: &Connection, chunk: &B3Digest, delta: i64) -> Result<()> {
    let changed = conn
        .prepare_cached("UPDATE chunks SET refs = refs + ?1 WHERE digest = ?2")?
        .execute(params![delta, chunk])?;
    if changed == 0 {
        return Err(StoreError::UnknownObject { digest: *chunk });
    }
    Ok(())
}

/// The logical size of an object, or `None` if it is not in the index.
pub(crate) fn object_size(conn: &Connection, object: ObjectRef) -> Result<Option<u64>> {
    let sql = match object.kind {
        ObjectKind::Blob => "SELECT size FROM blobs WHERE digest = ?1",
        ObjectKind::Tree => "SELECT size FROM trees WHERE digest = ?1",
    };
    Ok(conn
        .prepare_cached(sql)?
        .query_row([object.digest], |row| row.get::<_, i64>(0))
        .optional()?
        .map(|size| size as u64))
}

pub(crate) fn require(conn: &Connection, object: ObjectRef) -> Result<u64> {
    object_size(conn, object)?.ok_or(StoreError::UnknownObject {
        digest: object.digest,
    })
}

pub(crate) fn has_blob(conn: &Connection, digest: &B3Digest) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM blobs WHERE digest = ?1")?
        .exists([digest])?)
}

pub(crate) fn has_chunk(conn: &Connection, digest: &B3Digest) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM chunks WHERE digest = ?1")?
        .exists([digest])?)
}

/// The chunks of a blob in order, with their raw sizes.
pub(crate) fn blob_chunks(conn: &Connection, blob: &B3Digest) -> Result<Vec<(B3Digest, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT bc.chunk, c.size FROM blob_chunks bc LEFT JOIN chunks c ON c.digest = bc.chunk \
         WHERE bc.blob = ?1 ORDER BY bc.seq",
    )?;
    let rows = stmt.query_map([blob], |row| {
        Ok((row.get::<_, B3Digest>(0)?, row.get::<_, Option<i64>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (chunk, size) = row?;
        let size = size.ok_or_else(|| {
            StoreError::corrupt(*blob, format!("its chunk {chunk} is not in the index"))
        })?;
        out.push((chunk, size as u64));
    }
    Ok(out)
}

/// Inserts a blob row with its chunk list (chunks already indexed); counts
/// the references only when the blob is new. Returns whether it was new.
pub(crate) fn insert_blob(
    conn: &Connection,
    digest: &B3Digest,
    size: u64,
    chunks: &[B3Digest],
) -> Result<bool> {
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO blobs(digest, size, refs, created) VALUES (?1, ?2, 0, ?3)",
        )?
        .execute(params![digest, size as i64, now_millis()])?;
    if inserted == 0 {
        return Ok(false);
    }
    let mut insert =
        conn.prepare_cached("INSERT INTO blob_chunks(blob, seq, chunk) VALUES (?1, ?2, ?3)")?;
    for (seq, chunk) in chunks.iter().enumerate() {
        insert.execute(params![digest, seq as i64, chunk])?;
        add_chunk_refs(conn, chunk, 1)?;
    }
    Ok(true)
}

/// Compressed chunks up to this size are kept in the index, not in files:
/// for small files a row is much cheaper than a file (create, rename,
/// sync, unlink), and it commits atomically with the rows that use it.
pub const INLINE_CHUNK_MAX: usize = 16 * 1024;

/// A chunk's compressed bytes, from the index or from its file.
pub(crate) fn read_chunk_encoded(
    conn: &Connection,
    store: &dyn crate::chunks::ChunkStore,
    digest: &B3Digest,
) -> Result<Vec<u8>> {
    let data: Option<Vec<u8>> = conn
        .prepare_cached("SELECT data FROM chunk_data WHERE digest = ?1")?
        .query_row([digest], |row| row.get(0))
        .optional()?;
    match data {
        Some(inline) => Ok(inline),
        None => store.get_encoded(digest),
    }
}

/// A chunk's raw bytes, verified against its digest.
pub(crate) fn read_chunk(
    conn: &Connection,
    store: &dyn crate::chunks::ChunkStore,
    digest: &B3Digest,
) -> Result<Vec<u8>> {
    crate::chunks::decode_chunk(digest, &read_chunk_encoded(conn, store, digest)?)
}

pub(crate) fn insert_chunk(
    conn: &Connection,
    digest: &B3Digest,
    size: u64,
    stored: u64,
    inline: Option<&[u8]>,
) -> Result<()> {
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO chunks(digest, size, stored, refs) VALUES (?1, ?2, ?3, 0)",
        )?
        .execute(params![digest, size as i64, stored as i64])?;
    if let (1, Some(data)) = (inserted, inline) {
        conn.prepare_cached("INSERT OR IGNORE INTO chunk_data(digest, data) VALUES (?1, ?2)")?
            .execute(params![digest, data])?;
    }
    Ok(())
}

/// Inserts a tree whose children are indexed; counts references only when
/// the tree is new. Returns whether it was new.
pub(crate) fn insert_tree(conn: &Connection, tree: &crate::Tree) -> Result<(B3Digest, bool)> {
    let encoding = tree.encode();
    let digest = B3Digest::of(&encoding);
    let inserted = conn
        .prepare_cached("INSERT OR IGNORE INTO trees(digest, size, encoding, refs, created) VALUES (?1, ?2, ?3, 0, ?4)")?
        .execute(params![digest, tree.size() as i64, encoding, now_millis()])?;
    if inserted == 0 {
        return Ok((digest, false));
    }
    let mut counts: std::collections::BTreeMap<ObjectRef, i64> = Default::default();
    for child in tree_children(tree) {
        *counts.entry(child).or_default() += 1;
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO tree_children(tree, object_kind, child, n) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (child, n) in counts {
        insert.execute(params![digest, child.kind.code(), child.digest, n])?;
        add_refs(conn, child, n)?;
    }
    Ok((digest, true))
}

pub(crate) fn tree_children(tree: &crate::Tree) -> impl Iterator<Item = ObjectRef> + '_ {
    tree.entries().iter().filter_map(|entry| match &entry.node {
        crate::Node::File { digest, .. } => Some(ObjectRef::blob(*digest)),
        crate::Node::Directory { digest, .. } => Some(ObjectRef::tree(*digest)),
        _ => None,
    })
}

pub(crate) fn load_tree(conn: &Connection, digest: &B3Digest) -> Result<Option<crate::Tree>> {
    let encoding: Option<Vec<u8>> = conn
        .prepare_cached("SELECT encoding FROM trees WHERE digest = ?1")?
        .query_row([digest], |row| row.get(0))
        .optional()?;
    match encoding {
        None => Ok(None),
        Some(encoding) => {
            if B3Digest::of(&encoding) != *digest {
                return Err(StoreError::corrupt(
                    *digest,
                    "tree encoding does not hash to its digest",
                ));
            }
            crate::Tree::decode(&encoding)
                .map(Some)
                .map_err(|e| StoreError::corrupt(*digest, e.to_string()))
        }
    }
}
