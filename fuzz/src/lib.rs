//! Shared pieces of kiln's fuzz targets: the escape check (a jail directory
//! whose contents outside the scratch area must not change), and generators
//! that turn arbitrary input into well-formed tar streams, OCI archives and
//! store bundles with correct digests, so the fuzzer gets past the checksums
//! and reaches the code behind them.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use libfuzzer_sys::arbitrary::{self, Arbitrary};

/// A fixed directory per target (`/dev/shm/kiln-fuzz/<target>`) with a scratch
/// area deep inside it and canary files around it. Fixed, so the seeds and
/// the dictionary can name it in absolute symlinks and paths: an escape
/// aimed at it is detected by [`Jail::check`]. Run one process per target.
pub struct Jail {
    pub base: PathBuf,
    /// Where the code under test may write (`base/deep/a/b/scratch`).
    pub scratch: PathBuf,
    /// A store the target may reuse (`base/store`), excluded from the check.
    pub store: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

impl Jail {
    pub fn new(target: &str) -> Jail {
        let base = PathBuf::from("/dev/shm/kiln-fuzz").join(target);
        if base.exists() {
            make_writable(&base);
            fs::remove_dir_all(&base).expect("clear the jail");
        }
        let scratch = base.join("deep/a/b/scratch");
        fs::create_dir_all(&scratch).expect("create the jail");
        for canary in ["canary", "deep/canary", "deep/a/canary", "deep/a/b/canary"] {
            fs::write(base.join(canary), "canary\n").expect("write a canary");
        }
        fs::create_dir_all(base.join("deep/a/b/empty")).expect("create the jail");
        let store = base.join("store");
        let mut jail = Jail {
            base,
            scratch,
            store,
            before: BTreeMap::new(),
        };
        jail.before = jail.snapshot();
        jail
    }

    /// Everything under `base` except the scratch area and the store: path →
    /// kind, size, mode and content digest.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.base.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                out.insert(dir, "unreadable".into());
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path == self.scratch || path == self.store {
                    continue;
                }
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                let what = if meta.is_dir() {
                    stack.push(path.clone());
                    format!("dir {:o}", meta.mode())
                } else if meta.file_type().is_symlink() {
                    format!("symlink {:?}", fs::read_link(&path).ok())
                } else {
                    let bytes = fs::read(&path).unwrap_or_default();
                    format!("file {:o} {}", meta.mode(), blake3::hash(&bytes).to_hex())
                };
                out.insert(path, what);
            }
        }
        out
    }

    /// Panics (a finding) if anything outside the scratch area and the store
    /// changed since [`Jail::new`].
    pub fn check(&self, what: &str) {
        let after = self.snapshot();
        if after != self.before {
            let mut changes = Vec::new();
            for (path, kind) in &after {
                if self.before.get(path) != Some(kind) {
                    changes.push(format!("+ {} {kind}", path.display()));
                }
            }
            for (path, kind) in &self.before {
                if after.get(path) != Some(kind) {
                    changes.push(format!("- {} {kind}", path.display()));
                }
            }
            panic!(
                "{what} wrote outside its scratch root:\n{}",
                changes.join("\n")
            );
        }
    }

    /// Empties the scratch area (between inputs).
    pub fn clear_scratch(&self) {
        make_writable(&self.scratch);
        for entry in fs::read_dir(&self.scratch).expect("scratch").flatten() {
            let path = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&path).expect("clear scratch");
            } else {
                fs::remove_file(&path).expect("clear scratch");
            }
        }
    }

    /// What is left in the scratch area.
    pub fn scratch_entries(&self) -> Vec<PathBuf> {
        fs::read_dir(&self.scratch)
            .expect("scratch")
            .flatten()
            .map(|e| e.path())
            .collect()
    }
}

/// Restored trees may hold read-only directories: make them removable.
fn make_writable(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = fs::symlink_metadata(&dir)
            && meta.is_dir()
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(entry.path());
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- tar

/// One tar entry, with raw path and link bytes (no validation: the archive
/// is hostile).
#[derive(Arbitrary, Debug, Clone)]
pub struct TarEntry {
    pub kind: TarKind,
    pub path: PathBytes,
    pub link: PathBytes,
    pub mode: u16,
    pub data: Vec<u8>,
    /// Lie about the size in the header.
    pub size_lie: Option<u16>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum TarKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Fifo,
    Char,
    Other(u8),
}

/// Paths drawn mostly from interesting pieces, so entries meet each other.
#[derive(Arbitrary, Debug, Clone)]
pub struct PathBytes(pub Vec<Piece>);

#[derive(Arbitrary, Debug, Clone)]
pub enum Piece {
    Name(u8),
    Dot,
    DotDot,
    Slash,
    Whiteout,
    Opaque,
    Jail,
    Raw(Vec<u8>),
}

impl PathBytes {
    pub fn bytes(&self) -> Vec<u8> {
        const NAMES: &[&str] = &[
            "a",
            "b",
            "etc",
            "bin",
            "lnk",
            "x",
            "usr",
            "dev",
            "project",
            "bundle.json",
        ];
        let mut out = Vec::new();
        for piece in &self.0 {
            match piece {
                Piece::Name(n) => {
                    out.extend_from_slice(NAMES[*n as usize % NAMES.len()].as_bytes())
                }
                Piece::Dot => out.push(b'.'),
                Piece::DotDot => out.extend_from_slice(b".."),
                Piece::Slash => out.push(b'/'),
                Piece::Whiteout => out.extend_from_slice(b".wh."),
                Piece::Opaque => out.extend_from_slice(b".wh..wh..opq"),
                Piece::Jail => out.extend_from_slice(b"/dev/shm/kiln-fuzz/"),
                Piece::Raw(bytes) => out.extend_from_slice(bytes),
            }
        }
        out
    }
}

/// A tar stream of `entries`, headers written byte by byte (GNU long names
/// for paths over 100 bytes).
pub fn build_tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries.iter().take(64) {
        let path = entry.path.bytes();
        let link = entry.link.bytes();
        if path.len() > 100 {
            long_name(&mut out, b'L', &path);
        }
        if link.len() > 100 {
            long_name(&mut out, b'K', &link);
        }
        let kind = match entry.kind {
            TarKind::File => b'0',
            TarKind::Dir => b'5',
            TarKind::Symlink => b'2',
            TarKind::Hardlink => b'1',
            TarKind::Fifo => b'6',
            TarKind::Char => b'3',
            TarKind::Other(k) => k,
        };
        let data: &[u8] = if matches!(entry.kind, TarKind::File | TarKind::Other(_)) {
            &entry.data
        } else {
            &[]
        };
        let size = entry.size_lie.map_or(data.len() as u64, u64::from);
        header(&mut out, &path, &link, kind, u32::from(entry.mode), size);
        out.extend_from_slice(data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn long_name(out: &mut Vec<u8>, kind: u8, name: &[u8]) {
    header(
        out,
        b"././@LongLink",
        b"",
        kind,
        0o644,
        name.len() as u64 + 1,
    );
    out.extend_from_slice(name);
    out.push(0);
    pad(out);
}

fn header(out: &mut Vec<u8>, path: &[u8], link: &[u8], kind: u8, mode: u32, size: u64) {
    let mut h = tar::Header::new_gnu();
    {
        let raw = h.as_old_mut();
        let n = path.len().min(100);
        raw.name[..n].copy_from_slice(&path[..n]);
        let n = link.len().min(100);
        raw.linkname[..n].copy_from_slice(&link[..n]);
    }
    h.set_mode(mode & 0o7777);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

// ---------------------------------------------------------------- OCI

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OCI image as `docker save` writes it, or as an OCI layout tar.
#[derive(Arbitrary, Debug)]
pub struct OciSpec {
    pub layers: Vec<Vec<TarEntry>>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub layout: bool,
    /// Entries of the outer archive added after the image's own.
    pub extra: Vec<TarEntry>,
    /// Replace the config with these bytes (digests still right).
    pub raw_config: Option<Vec<u8>>,
    /// Replace the manifest / index with these bytes.
    pub raw_manifest: Option<Vec<u8>>,
}

fn plain_file(path: &str, data: &[u8]) -> TarEntry {
    TarEntry {
        kind: TarKind::File,
        path: PathBytes(vec![Piece::Raw(path.as_bytes().to_vec())]),
        link: PathBytes(Vec::new()),
        mode: 0o644,
        data: data.to_vec(),
        size_lie: None,
    }
}

pub fn build_oci(spec: &OciSpec) -> Vec<u8> {
    let layers: Vec<Vec<u8>> = spec.layers.iter().take(4).map(|l| build_tar(l)).collect();
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    let config = spec.raw_config.clone().unwrap_or_else(|| {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Env": spec.env, "WorkingDir": spec.working_dir, "User": spec.user },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .expect("json")
    });
    let mut entries = Vec::new();
    if spec.layout {
        let blob = |bytes: &[u8]| format!("blobs/sha256/{}", sha256_hex(bytes));
        let manifest = spec.raw_manifest.clone().unwrap_or_else(|| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": format!("sha256:{}", sha256_hex(&config)),
                    "size": config.len(),
                },
                "layers": layers.iter().map(|l| serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{}", sha256_hex(l)),
                    "size": l.len(),
                })).collect::<Vec<_>>(),
            }))
            .expect("json")
        });
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", sha256_hex(&manifest)),
                "size": manifest.len(),
                "platform": { "architecture": "amd64", "os": "linux" },
            }],
        }))
        .expect("json");
        entries.push(plain_file(
            "oci-layout",
            b"{\"imageLayoutVersion\":\"1.0.0\"}",
        ));
        entries.push(plain_file("index.json", &index));
        entries.push(plain_file(&blob(&manifest), &manifest));
        entries.push(plain_file(&blob(&config), &config));
        for layer in &layers {
            entries.push(plain_file(&blob(layer), layer));
        }
    } else {
        let config_name = format!("{}.json", sha256_hex(&config));
        let names: Vec<String> = layers
            .iter()
            .map(|l| format!("{}/layer.tar", sha256_hex(l)))
            .collect();
        let manifest = spec.raw_manifest.clone().unwrap_or_else(|| {
            serde_json::to_vec(&serde_json::json!([{
                "Config": config_name,
                "RepoTags": ["fuzz:1"],
                "Layers": names,
            }]))
            .expect("json")
        });
        for (name, layer) in names.iter().zip(&layers) {
            entries.push(plain_file(name, layer));
        }
        entries.push(plain_file(&config_name, &config));
        entries.push(plain_file("manifest.json", &manifest));
    }
    entries.extend(spec.extra.iter().take(8).cloned());
    build_tar(&entries)
}

// ---------------------------------------------------------------- bundles

/// A store bundle described record by record; digests, sizes and the end
/// record are computed unless a field says to lie.
#[derive(Arbitrary, Debug)]
pub struct BundleSpec {
    pub records: Vec<Record>,
    /// Cut the stream this many bytes before its end.
    pub truncate: Option<u8>,
    pub bad_end: bool,
    pub trailing: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
pub enum Record {
    Chunk {
        data: Vec<u8>,
        size_lie: Option<u64>,
    },
    /// A blob of earlier chunks (by index).
    Blob {
        chunks: Vec<u8>,
        size_lie: Option<u64>,
    },
    /// A tree of earlier blobs, trees and symlinks.
    Tree {
        opaque: bool,
        entries: Vec<TreeEntrySpec>,
    },
    /// Arbitrary tree bytes (with their right digest).
    RawTree(Vec<u8>),
    Root {
        kind: u8,
        name: Vec<u8>,
        /// Index into earlier trees (even) or blobs (odd).
        object: u8,
    },
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
pub struct TreeEntrySpec {
    pub name: PathBytes,
    pub node: NodeSpec,
}

#[derive(Arbitrary, Debug)]
pub enum NodeSpec {
    File {
        blob: u8,
        executable: bool,
        size_lie: Option<u64>,
    },
    Dir {
        tree: u8,
        size_lie: Option<u64>,
    },
    Symlink(PathBytes),
    Whiteout,
}

const ROOT_KINDS: &[&str] = &["image", "object", "source", "pin", "job", "x"];

/// The bundle bytes, and the digest of the last tree it holds (the tree an
/// offline bundle's header may name).
pub fn build_bundle(spec: &BundleSpec) -> (Vec<u8>, Option<[u8; 32]>) {
    use kiln_store::{EntryName, Node, Tree, TreeEntry};
    let mut out = Vec::new();
    out.extend_from_slice(b"KILNBNDL");
    out.extend_from_slice(&1u32.to_le_bytes());
    let mut chunks: Vec<([u8; 32], Vec<u8>)> = Vec::new();
    let mut blobs: Vec<([u8; 32], u64)> = Vec::new();
    let mut trees: Vec<([u8; 32], u64)> = Vec::new();
    let mut count = 0u64;
    for record in spec.records.iter().take(64) {
        match record {
            Record::Chunk { data, size_lie } => {
                let digest = *blake3::hash(data).as_bytes();
                let encoded = kiln_store::chunks::encode_chunk(data).expect("zstd");
                out.push(b'C');
                out.extend_from_slice(&digest);
                out.extend_from_slice(&size_lie.unwrap_or(data.len() as u64).to_le_bytes());
                out.extend_from_slice(&(encoded.len() as u64).to_le_bytes());
                out.extend_from_slice(&encoded);
                chunks.push((digest, data.clone()));
            }
            Record::Blob {
                chunks: picks,
                size_lie,
            } => {
                let mut hasher = blake3::Hasher::new();
                let mut size = 0u64;
                let mut digests = Vec::new();
                for pick in picks {
                    if chunks.is_empty() {
                        break;
                    }
                    let (digest, data) = &chunks[*pick as usize % chunks.len()];
                    hasher.update(data);
                    size += data.len() as u64;
                    digests.push(*digest);
                }
                let digest = *hasher.finalize().as_bytes();
                out.push(b'B');
                out.extend_from_slice(&digest);
                out.extend_from_slice(&size_lie.unwrap_or(size).to_le_bytes());
                out.extend_from_slice(&(digests.len() as u32).to_le_bytes());
                for d in &digests {
                    out.extend_from_slice(d);
                }
                blobs.push((digest, size));
            }
            Record::Tree { opaque, entries } => {
                let mut built = Vec::new();
                for entry in entries {
                    let Ok(name) = EntryName::new(entry.name.bytes()) else {
                        continue;
                    };
                    let node = match &entry.node {
                        NodeSpec::File {
                            blob,
                            executable,
                            size_lie,
                        } => {
                            let Some((digest, size)) = pick(&blobs, *blob) else {
                                continue;
                            };
                            Node::File {
                                digest: kiln_store::B3Digest::from_array(digest),
                                size: size_lie.unwrap_or(size),
                                executable: *executable,
                            }
                        }
                        NodeSpec::Dir { tree, size_lie } => {
                            let Some((digest, size)) = pick(&trees, *tree) else {
                                continue;
                            };
                            Node::Directory {
                                digest: kiln_store::B3Digest::from_array(digest),
                                size: size_lie.unwrap_or(size),
                            }
                        }
                        NodeSpec::Symlink(target) => Node::Symlink {
                            target: target.bytes(),
                        },
                        NodeSpec::Whiteout => Node::Whiteout,
                    };
                    built.push(TreeEntry { name, node });
                }
                built.sort_by(|a, b| a.name.cmp(&b.name));
                built.dedup_by(|a, b| a.name == b.name);
                let Ok(tree) = Tree::new(*opaque, built) else {
                    continue;
                };
                let encoding = tree.encode();
                let digest = *blake3::hash(&encoding).as_bytes();
                out.push(b'T');
                out.extend_from_slice(&digest);
                out.extend_from_slice(&(encoding.len() as u32).to_le_bytes());
                out.extend_from_slice(&encoding);
                let size = tree
                    .entries()
                    .iter()
                    .fold(0u64, |sum, e| sum.wrapping_add(e.node.size()));
                trees.push((digest, size));
            }
            Record::RawTree(bytes) => {
                let digest = *blake3::hash(bytes).as_bytes();
                out.push(b'T');
                out.extend_from_slice(&digest);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
                trees.push((digest, 0));
            }
            Record::Root { kind, name, object } => {
                let kind = ROOT_KINDS[*kind as usize % ROOT_KINDS.len()];
                let (code, target) = if object % 2 == 0 {
                    (2u8, pick(&trees, object / 2))
                } else {
                    (1u8, pick(&blobs, object / 2))
                };
                out.push(b'R');
                out.push(kind.len() as u8);
                out.extend_from_slice(kind.as_bytes());
                let name = &name[..name.len().min(200)];
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(name);
                out.push(code);
                out.extend_from_slice(&target.map_or([7; 32], |(d, _)| d));
            }
            Record::Garbage(bytes) => out.extend_from_slice(bytes),
        }
        count += 1;
    }
    let hash = *blake3::hash(&out).as_bytes();
    out.push(b'E');
    out.extend_from_slice(&count.to_le_bytes());
    if spec.bad_end {
        out.extend_from_slice(&[0; 32]);
    } else {
        out.extend_from_slice(&hash);
    }
    out.extend_from_slice(&spec.trailing);
    if let Some(cut) = spec.truncate {
        out.truncate(out.len().saturating_sub(cut as usize));
    }
    (out, trees.last().map(|(d, _)| *d))
}

fn pick(list: &[([u8; 32], u64)], index: u8) -> Option<([u8; 32], u64)> {
    if list.is_empty() {
        None
    } else {
        Some(list[index as usize % list.len()])
    }
}
