//! Bundles: the closure of some roots in one self-verifying stream.
//!
//! ```text
//! "KILNBNDL" u32:version
//! record*: u8:tag, then
//!   'C' chunk: [32]digest u64:raw size u64:n  n bytes of zstd
//!   'B' blob:  [32]digest u64:size u32:n  n × [32]chunk digest
//!   'T' tree:  [32]digest u32:n  n bytes of tree encoding
//!   'R' root:  u8:kind-len kind u16:name-len name u8:object kind [32]digest
//!   'E' end:   u64:record count [32]blake3 of every byte before 'E'
//! ```
//! Objects come before anything that references them. Import stages the
//! chunks in an unnamed temporary file, checks every digest and reference,
//! and only then writes chunks and commits all rows in one transaction: a
//! truncated or tampered bundle leaves the store as it was.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use crate::chunks::decode_chunk;
use crate::digest::B3Digest;
use crate::error::{IoContext, Result, StoreError};
use crate::object::{
    INLINE_CHUNK_MAX, ObjectKind, ObjectRef, has_chunk, insert_blob, insert_chunk, insert_tree,
    load_tree, object_size,
};
use crate::records::{RootKind, get_root_in, set_root_in};
use crate::store::Store;
use crate::tree::Tree;

const MAGIC: &[u8; 8] = b"KILNBNDL";
const VERSION: u32 = 1;
/// Limits that keep a hostile bundle from exhausting memory.
const MAX_TREE_BYTES: u32 = 64 * 1024 * 1024;
const MAX_BLOB_CHUNKS: u32 = 16 * 1024 * 1024;

/// What to export: a named root, or a bare object (imported as an
/// `object` root named by its digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootSelector {
    Named { kind: RootKind, name: String },
    Object(B3Digest),
}

impl std::str::FromStr for RootSelector {
    type Err = StoreError;
    /// `blake3:<hex>` or `KIND/NAME` (e.g. `image/debian`).
    fn from_str(text: &str) -> Result<Self> {
        if text.starts_with(crate::digest::DIGEST_PREFIX) {
            return Ok(RootSelector::Object(text.parse()?));
        }
        match text.split_once('/') {
            Some((kind, name)) if !name.is_empty() => Ok(RootSelector::Named {
                kind: kind.parse()?,
                name: name.to_owned(),
            }),
            _ => Err(StoreError::UnknownRoot {
                kind: text.to_owned(),
                name: "(expected KIND/NAME or blake3:<hex>)".into(),
            }),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BundleReport {
    pub roots: u64,
    pub chunks: u64,
    pub blobs: u64,
    pub trees: u64,
    /// Objects the target store already had (import only).
    pub already_present: u64,
    pub bytes: u64,
    /// Roots the import replaced (only with [`ImportOptions::replace_roots`]).
    pub replaced: Vec<ReplacedRoot>,
}

/// A root an import pointed at a different object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReplacedRoot {
    pub kind: RootKind,
    pub name: String,
    pub old: ObjectRef,
    pub new: ObjectRef,
}

/// How an import treats what the store already has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Let the bundle's roots replace existing roots of the same kind and
    /// name that name other objects. Without it such an import is refused
    /// and nothing is imported.
    pub replace_roots: bool,
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Store {
    /// Writes the closure of `roots` to `out`.
    pub fn export(&self, roots: &[RootSelector], out: &mut dyn Write) -> Result<BundleReport> {
        let _lock = self.shared_lock()?;
        let mut resolved = Vec::new();
        for selector in roots {
            resolved.push(match selector {
                RootSelector::Named { kind, name } => {
                    let root = get_root_in(&self.conn, *kind, name)?.ok_or_else(|| {
                        StoreError::UnknownRoot {
                            kind: kind.to_string(),
                            name: name.clone(),
                        }
                    })?;
                    (*kind, name.clone(), root.object)
                }
                RootSelector::Object(digest) => {
                    let kind = self.object_kind(digest)?;
                    (
                        RootKind::Object,
                        digest.to_string(),
                        ObjectRef {
                            kind,
                            digest: *digest,
                        },
                    )
                }
            });
        }
        let path = std::path::PathBuf::from("<bundle>");
        let mut out = HashingWriter {
            inner: BufWriter::new(out),
            hasher: blake3::Hasher::new(),
            written: 0,
        };
        let mut report = BundleReport::default();
        out.write_all(MAGIC).at(&path)?;
        out.write_all(&VERSION.to_le_bytes()).at(&path)?;
        let mut seen_objects = HashSet::new();
        let mut seen_chunks = HashSet::new();
        let mut records = 0u64;
        for (_, _, object) in &resolved {
            self.export_object(
                *object,
                &mut out,
                &mut seen_objects,
                &mut seen_chunks,
                &mut records,
                &mut report,
            )?;
        }
        for (kind, name, object) in &resolved {
            let mut record = vec![b'R', kind.as_str().len() as u8];
            record.extend_from_slice(kind.as_str().as_bytes());
            record.extend_from_slice(&(name.len() as u16).to_le_bytes());
            record.extend_from_slice(name.as_bytes());
            record.push(object.kind.code() as u8);
            record.extend_from_slice(object.digest.as_bytes());
            out.write_all(&record).at(&path)?;
            records += 1;
            report.roots += 1;
        }
        let digest = out.hasher.finalize();
        let mut end = vec![b'E'];
        end.extend_from_slice(&records.to_le_bytes());
        end.extend_from_slice(digest.as_bytes());
        out.inner.write_all(&end).at(&path)?;
        out.inner.flush().at(&path)?;
        report.bytes = out.written + end.len() as u64;
        Ok(report)
    }

    fn export_object(
        &self,
        object: ObjectRef,
        out: &mut dyn Write,
        seen: &mut HashSet<ObjectRef>,
        seen_chunks: &mut HashSet<B3Digest>,
        records: &mut u64,
        report: &mut BundleReport,
    ) -> Result<()> {
        if !seen.insert(object) {
            return Ok(());
        }
        let path = std::path::PathBuf::from("<bundle>");
        match object.kind {
            ObjectKind::Tree => {
                let tree =
                    load_tree(&self.conn, &object.digest)?.ok_or(StoreError::UnknownObject {
                        digest: object.digest,
                    })?;
                for child in crate::object::tree_children(&tree) {
                    self.export_object(child, out, seen, seen_chunks, records, report)?;
                }
                let encoding = tree.encode();
                out.write_all(b"T").at(&path)?;
                out.write_all(object.digest.as_bytes()).at(&path)?;
                out.write_all(&(encoding.len() as u32).to_le_bytes())
                    .at(&path)?;
                out.write_all(&encoding).at(&path)?;
                report.trees += 1;
            }
            ObjectKind::Blob => {
                let size = object_size(&self.conn, object)?.ok_or(StoreError::UnknownObject {
                    digest: object.digest,
                })?;
                let chunks = crate::object::blob_chunks(&self.conn, &object.digest)?;
                for (chunk, raw_size) in &chunks {
                    if seen_chunks.insert(*chunk) {
                        let encoded =
                            crate::object::read_chunk_encoded(&self.conn, &*self.chunks, chunk)?;
                        out.write_all(b"C").at(&path)?;
                        out.write_all(chunk.as_bytes()).at(&path)?;
                        out.write_all(&raw_size.to_le_bytes()).at(&path)?;
                        out.write_all(&(encoded.len() as u64).to_le_bytes())
                            .at(&path)?;
                        out.write_all(&encoded).at(&path)?;
                        *records += 1;
                        report.chunks += 1;
                    }
                }
                out.write_all(b"B").at(&path)?;
                out.write_all(object.digest.as_bytes()).at(&path)?;
                out.write_all(&size.to_le_bytes()).at(&path)?;
                out.write_all(&(chunks.len() as u32).to_le_bytes())
                    .at(&path)?;
                for (chunk, _) in &chunks {
                    out.write_all(chunk.as_bytes()).at(&path)?;
                }
                report.blobs += 1;
            }
        }
        *records += 1;
        Ok(())
    }

    /// Reads a bundle; adds what is missing and its roots, or nothing.
    /// Refuses (nothing imported) a bundle whose roots would replace existing
    /// roots naming other objects; see [`Store::import_with`].
    pub fn import(&mut self, input: &mut dyn Read) -> Result<BundleReport> {
        self.import_with(input, ImportOptions::default())
    }

    /// [`Store::import`] with options.
    pub fn import_with(
        &mut self,
        input: &mut dyn Read,
        options: ImportOptions,
    ) -> Result<BundleReport> {
        self.ensure_writable()?;
        let lock = self.shared_lock()?;
        let staged = self.stage(input)?;
        let mut report = staged.report.clone();

        // An existing root is never replaced silently.
        for (kind, name, object) in &staged.roots {
            let Some(old) = get_root_in(&self.conn, *kind, name)? else {
                continue;
            };
            if old.object == *object {
                continue;
            }
            if !options.replace_roots {
                return Err(StoreError::bundle(format!(
                    "it would replace the root {kind}/{name} ({}) with {object}; \
                     nothing imported (use --force to replace it)",
                    old.object
                )));
            }
            report.replaced.push(ReplacedRoot {
                kind: *kind,
                name: name.clone(),
                old: old.object,
                new: *object,
            });
        }

        // Write the chunks the store lacks (durably), then every row at once.
        let mut spool = staged.spool;
        let mut new_chunks = Vec::new();
        for (digest, (raw_size, offset, len)) in &staged.chunks {
            if has_chunk(&self.conn, digest)? {
                report.already_present += 1;
                continue;
            }
            let mut encoded = vec![0; *len as usize];
            spool.seek(SeekFrom::Start(*offset)).at("<spool>")?;
            spool.read_exact(&mut encoded).at("<spool>")?;
            let stored = encoded.len() as u64;
            let inline = if encoded.len() <= INLINE_CHUNK_MAX {
                Some(encoded)
            } else {
                self.chunks.put_encoded(digest, &encoded)?;
                None
            };
            new_chunks.push((*digest, *raw_size, stored, inline));
        }
        self.chunks.sync()?;
        let tx = self.write_tx()?;
        for (digest, raw_size, stored, inline) in &new_chunks {
            insert_chunk(&tx, digest, *raw_size, *stored, inline.as_deref())?;
        }
        for (digest, size, chunks) in &staged.blobs {
            if !insert_blob(&tx, digest, *size, chunks)? {
                report.already_present += 1;
            }
        }
        for tree in &staged.trees {
            if !insert_tree(&tx, tree)?.1 {
                report.already_present += 1;
            }
        }
        for (kind, name, object) in &staged.roots {
            set_root_in(&tx, *kind, name, *object)?;
        }
        tx.commit()?;
        drop(lock);
        Ok(report)
    }

    /// Reads and verifies the whole bundle without touching the store.
    fn stage(&self, input: &mut dyn Read) -> Result<Staged> {
        let mut reader = BundleReader {
            inner: BufReader::with_capacity(1 << 20, input),
            hasher: blake3::Hasher::new(),
        };
        if reader.take(8)? != MAGIC {
            return Err(StoreError::bundle("not a kiln bundle (bad magic)"));
        }
        let version = reader.u32()?;
        if version != VERSION {
            return Err(StoreError::bundle(format!(
                "bundle version {version}; this kiln reads version {VERSION}"
            )));
        }
        let tmp = self.dir.join("tmp");
        let mut spool = tempfile::tempfile_in(&tmp).at(&tmp)?;
        let mut staged = Staged {
            spool: tempfile::tempfile_in(&tmp).at(&tmp)?,
            chunks: HashMap::new(),
            blobs: Vec::new(),
            trees: Vec::new(),
            roots: Vec::new(),
            report: BundleReport::default(),
        };
        let mut blob_sizes: HashMap<B3Digest, u64> = HashMap::new();
        let mut tree_sizes: HashMap<B3Digest, u64> = HashMap::new();
        let mut records = 0u64;
        let mut spooled = 0u64;
        loop {
            let before_tag = reader.hasher.clone();
            let tag = reader.u8()?;
            match tag {
                b'C' => {
                    let digest = reader.digest()?;
                    let raw_size = reader.u64()?;
                    let len = reader.u64()?;
                    if len > 2 * crate::chunks::MAX_CHUNK_BYTES as u64 {
                        return Err(StoreError::bundle(format!(
                            "chunk {digest} claims {len} bytes"
                        )));
                    }
                    let encoded = reader.take(len as usize)?;
                    let raw = decode_chunk(&digest, &encoded)
                        .map_err(|e| StoreError::bundle(e.to_string()))?;
                    if raw.len() as u64 != raw_size {
                        return Err(StoreError::bundle(format!(
                            "chunk {digest}: {} bytes, header says {raw_size}",
                            raw.len()
                        )));
                    }
                    spool.write_all(&encoded).at("<spool>")?;
                    staged.chunks.insert(digest, (raw_size, spooled, len));
                    spooled += len;
                    staged.report.chunks += 1;
                }
                b'B' => {
                    let digest = reader.digest()?;
                    let size = reader.u64()?;
                    let count = reader.u32()?;
                    if count > MAX_BLOB_CHUNKS {
                        return Err(StoreError::bundle(format!(
                            "blob {digest} claims {count} chunks"
                        )));
                    }
                    let mut chunks = Vec::with_capacity(count.min(1024) as usize);
                    for _ in 0..count {
                        chunks.push(reader.digest()?);
                    }
                    let actual = self.hash_staged_blob(&digest, &chunks, &staged, &mut spool)?;
                    if actual.1 != size || actual.0 != digest {
                        return Err(StoreError::bundle(format!(
                            "blob {digest}: its chunks hash to {} ({} bytes, header says {size})",
                            actual.0, actual.1
                        )));
                    }
                    blob_sizes.insert(digest, size);
                    staged.blobs.push((digest, size, chunks));
                    staged.report.blobs += 1;
                }
                b'T' => {
                    let digest = reader.digest()?;
                    let len = reader.u32()?;
                    if len > MAX_TREE_BYTES {
                        return Err(StoreError::bundle(format!(
                            "tree {digest} claims {len} bytes"
                        )));
                    }
                    let encoding = reader.take(len as usize)?;
                    if B3Digest::of(&encoding) != digest {
                        return Err(StoreError::bundle(format!(
                            "tree {digest}: encoding hashes to {}",
                            B3Digest::of(&encoding)
                        )));
                    }
                    let tree = Tree::decode(&encoding)
                        .map_err(|e| StoreError::bundle(format!("tree {digest}: {e}")))?;
                    for entry in tree.entries() {
                        let (object, size) = match &entry.node {
                            crate::Node::File { digest, size, .. } => {
                                (ObjectRef::blob(*digest), size)
                            }
                            crate::Node::Directory { digest, size } => {
                                (ObjectRef::tree(*digest), size)
                            }
                            _ => continue,
                        };
                        let known = match object.kind {
                            ObjectKind::Blob => blob_sizes.get(&object.digest).copied(),
                            ObjectKind::Tree => tree_sizes.get(&object.digest).copied(),
                        };
                        let known = match known {
                            Some(size) => Some(size),
                            None => object_size(&self.conn, object)?,
                        };
                        if known != Some(*size) {
                            return Err(StoreError::bundle(format!(
                                "tree {digest}: entry {:?} names {object}, which is neither in the bundle nor the store",
                                entry.name
                            )));
                        }
                    }
                    tree_sizes.insert(digest, tree.size());
                    staged.trees.push(tree);
                    staged.report.trees += 1;
                }
                b'R' => {
                    let kind_len = reader.u8()?;
                    let kind = String::from_utf8(reader.take(kind_len as usize)?)
                        .map_err(|_| StoreError::bundle("root kind is not UTF-8"))?;
                    let kind: RootKind = kind
                        .parse()
                        .map_err(|e: StoreError| StoreError::bundle(e.to_string()))?;
                    let name_len = reader.u16()?;
                    let name = String::from_utf8(reader.take(name_len as usize)?)
                        .map_err(|_| StoreError::bundle("root name is not UTF-8"))?;
                    let object_kind = ObjectKind::from_code(i64::from(reader.u8()?))
                        .map_err(|e| StoreError::bundle(e.to_string()))?;
                    let object = ObjectRef {
                        kind: object_kind,
                        digest: reader.digest()?,
                    };
                    let in_bundle = match object_kind {
                        ObjectKind::Blob => blob_sizes.contains_key(&object.digest),
                        ObjectKind::Tree => tree_sizes.contains_key(&object.digest),
                    };
                    if !in_bundle && object_size(&self.conn, object)?.is_none() {
                        return Err(StoreError::bundle(format!(
                            "root {kind}/{name} names {object}, which is missing"
                        )));
                    }
                    staged.roots.push((kind, name, object));
                    staged.report.roots += 1;
                }
                b'E' => {
                    let count = reader.u64()?;
                    let expected = before_tag.finalize();
                    let recorded = reader.take(32)?;
                    if count != records || recorded != expected.as_bytes() {
                        return Err(StoreError::bundle(
                            "the end record does not match the content (tampered?)",
                        ));
                    }
                    let mut rest = [0u8; 1];
                    if reader.inner.read(&mut rest).at("<bundle>")? != 0 {
                        return Err(StoreError::bundle("data after the end record"));
                    }
                    break;
                }
                other => {
                    return Err(StoreError::bundle(format!(
                        "unknown record tag {other:#x} (corrupt bundle)"
                    )));
                }
            }
            records += 1;
        }
        staged.spool = spool;
        Ok(staged)
    }

    fn hash_staged_blob(
        &self,
        digest: &B3Digest,
        chunks: &[B3Digest],
        staged: &Staged,
        spool: &mut std::fs::File,
    ) -> Result<(B3Digest, u64)> {
        let mut hasher = blake3::Hasher::new();
        let mut total = 0u64;
        for chunk in chunks {
            let raw = if let Some((_, offset, len)) = staged.chunks.get(chunk) {
                let mut encoded = vec![0; *len as usize];
                spool.seek(SeekFrom::Start(*offset)).at("<spool>")?;
                spool.read_exact(&mut encoded).at("<spool>")?;
                spool.seek(SeekFrom::End(0)).at("<spool>")?;
                decode_chunk(chunk, &encoded).map_err(|e| StoreError::bundle(e.to_string()))?
            } else if has_chunk(&self.conn, chunk)? {
                crate::object::read_chunk(&self.conn, &*self.chunks, chunk)?
            } else {
                return Err(StoreError::bundle(format!(
                    "blob {digest} needs chunk {chunk}, which is missing"
                )));
            };
            total += raw.len() as u64;
            hasher.update(&raw);
        }
        Ok((hasher.finalize().into(), total))
    }
}

struct Staged {
    spool: std::fs::File,
    /// digest → (raw size, offset in spool, encoded length)
    chunks: HashMap<B3Digest, (u64, u64, u64)>,
    blobs: Vec<(B3Digest, u64, Vec<B3Digest>)>,
    trees: Vec<Tree>,
    roots: Vec<(RootKind, String, ObjectRef)>,
    report: BundleReport,
}

struct BundleReader<R: Read> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> BundleReader<R> {
    fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let read = (&mut self.inner)
            .take(n as u64)
            .read_to_end(&mut buf)
            .at("<bundle>")?;
        if read != n {
            return Err(StoreError::bundle("truncated"));
        }
        self.hasher.update(&buf);
        Ok(buf)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| StoreError::bundle("truncated"))
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
