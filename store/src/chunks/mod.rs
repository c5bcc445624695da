//! Chunk storage: compressed chunk bytes addressed by the digest of their
//! raw bytes. The index decides what exists; a backend only holds bytes.

mod fs;

pub use fs::FsChunkStore;

use crate::digest::B3Digest;
use crate::error::Result;

/// zstd level for chunks: fast, as the peer `zstd -1`.
pub const ZSTD_LEVEL: i32 = 1;

/// Where chunk bytes live.
///
/// `put` may be followed by a crash at any point; a chunk only counts as
/// stored once `sync` returned and an index row names it. Writing the same
/// digest twice, from any number of processes, is harmless.
pub trait ChunkStore: Send + Sync {
    /// Compresses and writes `raw`; returns the bytes it takes.
    fn put(&self, digest: &B3Digest, raw: &[u8]) -> Result<u64>;
    /// Writes an already compressed chunk (from a bundle); returns its size.
    fn put_encoded(&self, digest: &B3Digest, encoded: &[u8]) -> Result<u64>;
    /// The raw bytes, verified against the digest.
    fn get(&self, digest: &B3Digest) -> Result<Vec<u8>>;
    /// The compressed bytes as stored.
    fn get_encoded(&self, digest: &B3Digest) -> Result<Vec<u8>>;
    /// Removes a chunk; a chunk that is already gone is not an error.
    fn remove(&self, digest: &B3Digest) -> Result<()>;
    /// Makes every earlier `put` durable (data and names).
    fn sync(&self) -> Result<()>;
    /// Every chunk present, and every file that is not a chunk (stray).
    fn scan(&self) -> Result<ChunkScan>;
    /// Leftovers of interrupted writes.
    fn temp_files(&self) -> Result<Vec<std::path::PathBuf>>;
}

#[derive(Debug, Default)]
pub struct ChunkScan {
    pub chunks: Vec<B3Digest>,
    pub strays: Vec<std::path::PathBuf>,
    /// Chunk files whose write was interrupted.
    pub temps: Vec<std::path::PathBuf>,
}

thread_local! {
    // One zstd context per thread: creating one per chunk costs more than
    // compressing a small chunk.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Compresses a chunk for storage.
pub fn encode_chunk(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
        }
        match slot.as_mut() {
            Some(compressor) => compressor.compress(raw),
            None => zstd::bulk::compress(raw, ZSTD_LEVEL),
        }
    })
}

fn decompress(encoded: &[u8]) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(decompressor) => decompressor.decompress(encoded, MAX_CHUNK_BYTES),
            None => zstd::bulk::decompress(encoded, MAX_CHUNK_BYTES),
        }
    })
}

/// Decompresses and checks a stored chunk.
pub fn decode_chunk(digest: &B3Digest, encoded: &[u8]) -> Result<Vec<u8>> {
    let raw = decompress(encoded).map_err(|e| {
        crate::StoreError::corrupt(*digest, format!("cannot decompress chunk: {e}"))
    })?;
    let actual = B3Digest::of(&raw);
    if actual != *digest {
        return Err(crate::StoreError::corrupt(
            *digest,
            format!("chunk content hashes to {actual}"),
        ));
    }
    Ok(raw)
}

/// An upper bound for one chunk's raw size (fastcdc's maximum maximum).
pub const MAX_CHUNK_BYTES: usize = 16 * 1024 * 1024;
