//! Chunks as files: `chunks/ab/<64 hex>` (zstd), written under `tmp/` and
//! renamed into place.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ChunkScan, ChunkStore, decode_chunk, encode_chunk};
use crate::digest::B3Digest;
use crate::error::{IoContext, Result, StoreError};

/// Names of chunk files being written (never a digest: hex has no dot).
const TEMP_PREFIX: &str = ".tmp-";

pub struct FsChunkStore {
    chunks_dir: PathBuf,
    tmp_dir: PathBuf,
    counter: AtomicU64,
    pid: u32,
}

impl FsChunkStore {
    /// Opens (and with `create`, lays out) the directories under `root`.
    pub fn open(root: &Path, create: bool) -> Result<Self> {
        let chunks_dir = root.join("chunks");
        let tmp_dir = root.join("tmp");
        if create {
            for dir in [&chunks_dir, &tmp_dir] {
                fs::create_dir_all(dir).at(dir)?;
            }
            // All fan-out directories up front: no check per write.
            for byte in 0..=255u8 {
                let dir = chunks_dir.join(format!("{byte:02x}"));
                match fs::create_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(StoreError::io(&dir, e));
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            chunks_dir,
            tmp_dir,
            counter: AtomicU64::new(0),
            pid: std::process::id(),
        })
    }

    pub fn path_of(&self, digest: &B3Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.chunks_dir.join(&hex[..2]).join(hex)
    }

    fn write_atomically(&self, digest: &B3Digest, bytes: &[u8]) -> Result<()> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // The temp file lives in the target's own directory: a rename within
        // one directory does not take the file system's global rename lock.
        let target = self.path_of(digest);
        let tmp = target.with_file_name(format!("{TEMP_PREFIX}{}-{n}", self.pid));
        let result = (|| {
            let mut file = File::create(&tmp).at(&tmp)?;
            file.write_all(bytes).at(&tmp)?;
            drop(file);
            fs::rename(&tmp, &target).at(&target)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl ChunkStore for FsChunkStore {
    fn put(&self, digest: &B3Digest, raw: &[u8]) -> Result<u64> {
        let encoded = encode_chunk(raw).at(self.path_of(digest))?;
        self.write_atomically(digest, &encoded)?;
        Ok(encoded.len() as u64)
    }

    fn put_encoded(&self, digest: &B3Digest, encoded: &[u8]) -> Result<u64> {
        self.write_atomically(digest, encoded)?;
        Ok(encoded.len() as u64)
    }

    fn get(&self, digest: &B3Digest) -> Result<Vec<u8>> {
        decode_chunk(digest, &self.get_encoded(digest)?)
    }

    fn get_encoded(&self, digest: &B3Digest) -> Result<Vec<u8>> {
        let path = self.path_of(digest);
        fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                StoreError::corrupt(*digest, format!("chunk file {} is missing", path.display()))
            }
            _ => StoreError::io(&path, e),
        })
    }

    fn remove(&self, digest: &B3Digest) -> Result<()> {
        let path = self.path_of(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(&path, e)),
            _ => Ok(()),
        }
    }

    /// One `syncfs` per batch instead of one `fsync` per file: the same
    /// guarantee (data and renames durable before the index row commits) at a
    /// fraction of the cost for many small chunks.
    fn sync(&self) -> Result<()> {
        let dir = File::open(&self.chunks_dir).at(&self.chunks_dir)?;
        // SAFETY: `dir` is an open file descriptor for the whole call.
        let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
        if rc != 0 {
            return Err(StoreError::io(
                &self.chunks_dir,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn scan(&self) -> Result<ChunkScan> {
        let mut scan = ChunkScan::default();
        for fan in fs::read_dir(&self.chunks_dir).at(&self.chunks_dir)? {
            let fan = fan.at(&self.chunks_dir)?;
            let fan_path = fan.path();
            let fan_name = fan.file_name();
            if !fan.file_type().at(&fan_path)?.is_dir() {
                scan.strays.push(fan_path);
                continue;
            }
            for entry in fs::read_dir(&fan_path).at(&fan_path)? {
                let entry = entry.at(&fan_path)?;
                let name = entry.file_name();
                let digest = name
                    .to_str()
                    .and_then(B3Digest::from_hex)
                    .filter(|d| d.to_hex()[..2] == *fan_name.to_string_lossy());
                match digest {
                    Some(digest) => scan.chunks.push(digest),
                    None if name.as_encoded_bytes().starts_with(TEMP_PREFIX.as_bytes()) => {
                        scan.temps.push(entry.path());
                    }
                    None => scan.strays.push(entry.path()),
                }
            }
        }
        Ok(scan)
    }

    fn temp_files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.tmp_dir).at(&self.tmp_dir)? {
            out.push(entry.at(&self.tmp_dir)?.path());
        }
        Ok(out)
    }
}
