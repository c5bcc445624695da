//! OCI image archives: an OCI image layout packed as a tar (`oci-layout`,
//! `index.json`, `blobs/sha256/...`) or a `docker save` tarball
//! (`manifest.json`, a config and layer tars), flattened into one root
//! filesystem.
//!
//! The outer archive is unpacked first, by the same safe [`Unpacker`], into
//! a private `layout` directory; everything in it is then reached only by
//! [`Layout::open`], which resolves symlinks inside the layout and never
//! outside it. Every blob is checked against its descriptor (size and
//! sha256) before it is used, and every layer's uncompressed stream against
//! the config's `diff_ids` while it is applied; only then does the caller
//! hand the flattened tree to the store.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::config::{
    ImageConfig, OciOrigin, STORED_CONFIG_VERSION, StoredConfig, parse_env, resolve_user,
};
use super::error::{ImageError, IoContext};
use super::unpack::{Unpacker, normalise};

/// Which kind of image archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OciFormat {
    /// An OCI image layout (also what `docker save` writes since Docker 25).
    OciLayout,
    /// The older `docker save` format: `manifest.json` and layer tars.
    DockerSave,
}

impl std::fmt::Display for OciFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OciFormat::OciLayout => "OCI layout",
            OciFormat::DockerSave => "docker save",
        })
    }
}

/// JSON documents larger than this are refused (real ones are kilobytes).
const MAX_JSON_BYTES: u64 = 8 << 20;
/// How deep image indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;
/// How many symlinks a path inside the layout may go through.
const MAX_SYMLINK_HOPS: usize = 16;

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Whether the tar stream `reader` is an image archive rather than a root
/// filesystem: it has `oci-layout`, `index.json` or `manifest.json` at its
/// root. Reading stops at the first root entry no image archive has (`bin`,
/// `etc`, ...), so a rootfs tarball costs a few headers; a damaged stream
/// says "not an image" and is left to the rootfs path to report.
pub(crate) fn looks_like_image(reader: impl Read) -> bool {
    let mut tar = tar::Archive::new(reader);
    let Ok(entries) = tar.entries() else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            return false;
        };
        let Ok(relative) = normalise(&entry.path_bytes()) else {
            return false;
        };
        let Some(top) = relative.components().next() else {
            continue;
        };
        let top = top.as_os_str().as_bytes();
        let single = relative.components().count() == 1;
        if single && matches!(top, b"oci-layout" | b"index.json" | b"manifest.json") {
            return true;
        }
        let is_hex = |name: &[u8]| name.len() == 64 && name.iter().all(u8::is_ascii_hexdigit);
        let image_like = top == b"blobs"
            || top == b"repositories"
            || is_hex(top)
            || top.strip_suffix(b".json").is_some_and(is_hex);
        if !image_like {
            return false;
        }
    }
    false
}

/// Whether the directory `dir` is an OCI image layout (`oci-layout` and
/// `index.json` files at its root) rather than a root filesystem.
pub(crate) fn is_layout_dir(dir: &Path) -> bool {
    ["oci-layout", "index.json"]
        .iter()
        .all(|name| fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_file()))
}

/// The unpacked outer archive.
struct Layout<'a> {
    root: PathBuf,
    archive: &'a Path,
}

impl Layout<'_> {
    fn error(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Oci {
            archive: self.archive.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The host path of the regular file `member`, following symlinks only
    /// within the layout (Docker 25 links `<id>/layer.tar` to its blob).
    fn open(&self, member: &str) -> Result<Option<PathBuf>, ImageError> {
        let relative = normalise(member.as_bytes())
            .map_err(|r| self.error(format!("it names the file {member:?}, which {r}")))?;
        let mut todo: VecDeque<Vec<u8>> = relative
            .components()
            .map(|c| c.as_os_str().as_bytes().to_vec())
            .collect();
        // The part already known to be plain directories of the layout.
        let mut resolved = PathBuf::new();
        let mut hops = 0;
        while let Some(part) = todo.pop_front() {
            match part.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if !resolved.pop() {
                        return Err(self.error(format!(
                            "{member:?} goes through a symlink that leaves the archive"
                        )));
                    }
                    continue;
                }
                _ => {}
            }
            let candidate = resolved.join(OsStr::from_bytes(&part));
            let path = self.root.join(&candidate);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(ImageError::io(&path, e)),
            };
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(self.error(format!("{member:?} goes through too many symlinks")));
                }
                let target = fs::read_link(&path).at(&path)?;
                let raw = target.as_os_str().as_bytes();
                if raw.first() == Some(&b'/') {
                    return Err(self.error(format!(
                        "{member:?} goes through an absolute symlink, which leaves the archive"
                    )));
                }
                for piece in raw.split(|&b| b == b'/').rev() {
                    todo.push_front(piece.to_vec());
                }
                continue;
            }
            if todo.is_empty() {
                return Ok(meta.is_file().then_some(path));
            }
            if !meta.is_dir() {
                return Ok(None);
            }
            resolved = candidate;
        }
        Ok(None)
    }

    fn require(&self, member: &str) -> Result<PathBuf, ImageError> {
        self.open(member)?
            .ok_or_else(|| self.error(format!("it has no file {member:?}")))
    }

    /// The path of the blob `descriptor` names, checked against its digest
    /// and size.
    fn blob(&self, descriptor: &Descriptor) -> Result<PathBuf, ImageError> {
        let hex = sha256_hex(&descriptor.digest).ok_or_else(|| {
            self.error(format!(
                "the digest {:?} is not a sha256 digest (kiln reads sha256 blobs)",
                descriptor.digest
            ))
        })?;
        let path = self.open(&format!("blobs/sha256/{hex}"))?.ok_or_else(|| {
            self.error(format!(
                "the blob {} is missing from blobs/sha256",
                descriptor.digest
            ))
        })?;
        self.verify(&path, &descriptor.digest, Some(descriptor.size))?;
        Ok(path)
    }

    /// Checks the file at `path` against `digest` (and `size` if known).
    fn verify(&self, path: &Path, digest: &str, size: Option<u64>) -> Result<(), ImageError> {
        let mismatch = |reason: String| ImageError::BlobMismatch {
            archive: self.archive.to_path_buf(),
            blob: digest.to_owned(),
            reason,
        };
        let actual_size = fs::metadata(path).at(path)?.len();
        if let Some(size) = size
            && size != actual_size
        {
            return Err(mismatch(format!(
                "is {actual_size} bytes but its descriptor says {size}"
            )));
        }
        let mut hasher = Sha256::new();
        io::copy(&mut File::open(path).at(path)?, &mut hasher).at(path)?;
        let actual = format!("sha256:{:x}", hasher.finalize());
        if actual != digest {
            return Err(mismatch(format!("has digest {actual}")));
        }
        Ok(())
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        what: &str,
    ) -> Result<T, ImageError> {
        let size = fs::metadata(path).at(path)?.len();
        if size > MAX_JSON_BYTES {
            return Err(self.error(format!("its {what} is {size} bytes long")));
        }
        let bytes = fs::read(path).at(path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.error(format!("its {what} is not valid: {e}")))
    }
}

/// `sha256:<64 lowercase hex>` → the hex.
fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: Option<RuntimeConfig>,
    rootfs: Option<RootFsSection>,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFsSection {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// One layer to apply: where its bytes are and what its uncompressed stream
/// must hash to.
struct Layer {
    path: PathBuf,
    digest: String,
    diff_id: String,
}

/// Unpacks the image archive `archive` (its decompressed tar stream is
/// `outer`; `None` when `archive` is an OCI layout directory) into `scratch/rootfs` through `rootfs`, choosing the image for
/// `name` (see [`choose_manifest`]). Returns what the caller records.
pub(crate) fn unpack_image(
    archive: &Path,
    outer: Option<impl Read>,
    name: &str,
    scratch: &Path,
    rootfs: &mut Unpacker,
) -> Result<(OciFormat, StoredConfig), ImageError> {
    let layout_dir = match outer {
        Some(outer) => {
            let layout_dir = scratch.join("layout");
            fs::create_dir(&layout_dir).at(&layout_dir)?;
            Unpacker::new(&layout_dir).apply(archive, outer)?;
            layout_dir
        }
        // An OCI layout directory is read where it is (only through
        // `Layout::open`, which never leaves it).
        None => archive.to_path_buf(),
    };
    let layout = Layout {
        root: layout_dir,
        archive,
    };
    let (format, manifest_digest, config_digest, config, layers) = if let Some(index_path) =
        layout.open("index.json")?
    {
        if let Some(marker) = layout.open("oci-layout")? {
            #[derive(Deserialize)]
            struct Marker {
                #[serde(rename = "imageLayoutVersion")]
                version: String,
            }
            let marker: Marker = layout.json(&marker, "oci-layout")?;
            if !marker.version.starts_with("1.") {
                return Err(layout.error(format!(
                    "its oci-layout has version {:?}; kiln reads 1.x",
                    marker.version
                )));
            }
        }
        let index: Index = layout.json(&index_path, "index.json")?;
        let chosen = choose_manifest(&layout, index, name, 0)?;
        let manifest_path = layout.blob(&chosen)?;
        let manifest: Manifest = layout.json(&manifest_path, "manifest")?;
        let config_path = layout.blob(&manifest.config)?;
        let config: ConfigFile = layout.json(&config_path, "config")?;
        let diff_ids = diff_ids(&layout, &config, manifest.layers.len())?;
        let mut layers = Vec::new();
        for (descriptor, diff_id) in manifest.layers.iter().zip(diff_ids) {
            check_layer_type(&layout, descriptor)?;
            layers.push(Layer {
                path: layout.blob(descriptor)?,
                digest: descriptor.digest.clone(),
                diff_id,
            });
        }
        (
            OciFormat::OciLayout,
            Some(chosen.digest),
            manifest.config.digest,
            config,
            layers,
        )
    } else if let Some(manifest_path) = layout.open("manifest.json")? {
        let entries: Vec<DockerSaveEntry> = layout.json(&manifest_path, "manifest.json")?;
        let entry = choose_saved(&layout, entries, name)?;
        let config_path = layout.require(&entry.config)?;
        let config_digest = format!("sha256:{}", file_sha256(&config_path)?);
        // The config's file name is its digest (`<hex>.json` or
        // `blobs/sha256/<hex>`): the one digest a docker save records.
        let stem = Path::new(&entry.config)
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".json").to_owned())
            .unwrap_or_default();
        if sha256_hex(&format!("sha256:{stem}")).is_some() {
            layout.verify(&config_path, &format!("sha256:{stem}"), None)?;
        }
        let config: ConfigFile = layout.json(&config_path, "config")?;
        let diff_ids = diff_ids(&layout, &config, entry.layers.len())?;
        let mut layers = Vec::new();
        for (member, diff_id) in entry.layers.iter().zip(diff_ids) {
            let path = layout.require(member)?;
            let digest = match member.strip_prefix("blobs/sha256/") {
                Some(hex) => {
                    let digest = format!("sha256:{hex}");
                    layout.verify(&path, &digest, None)?;
                    digest
                }
                None => member.clone(),
            };
            layers.push(Layer {
                path,
                digest,
                diff_id,
            });
        }
        (OciFormat::DockerSave, None, config_digest, config, layers)
    } else {
        return Err(layout
            .error("it has neither an index.json (OCI layout) nor a manifest.json (docker save)"));
    };
    for (number, layer) in layers.iter().enumerate() {
        apply_layer(&layout, rootfs, number + 1, layer)?;
    }
    let runtime = config.config.unwrap_or_default();
    let env = parse_env(runtime.env.as_deref().unwrap_or_default())
        .map_err(|reason| layout.error(format!("the config {config_digest}: {reason}")))?;
    let user = runtime.user.filter(|u| !u.is_empty());
    let (uid, gid) = match &user {
        Some(user) => resolve_user(&scratch.join("rootfs"), user),
        None => (None, None),
    };
    let mut platform = format!("{}/{}", config.os, config.architecture);
    if let Some(variant) = config.variant.filter(|v| !v.is_empty()) {
        platform = format!("{platform}/{variant}");
    }
    Ok((
        format,
        StoredConfig {
            version: STORED_CONFIG_VERSION,
            origin: OciOrigin {
                format: match format {
                    OciFormat::OciLayout => "oci_layout",
                    OciFormat::DockerSave => "docker_save",
                }
                .to_owned(),
                manifest: manifest_digest,
                config: config_digest,
                platform,
            },
            config: ImageConfig {
                env,
                working_dir: runtime.working_dir.filter(|w| !w.is_empty()),
                user,
                uid,
                gid,
            },
        },
    ))
}

/// The config's `rootfs.diff_ids`, one per layer.
fn diff_ids(
    layout: &Layout<'_>,
    config: &ConfigFile,
    layers: usize,
) -> Result<Vec<String>, ImageError> {
    let diff_ids = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.clone())
        .ok_or_else(|| layout.error("its config has no rootfs.diff_ids"))?;
    if diff_ids.len() != layers {
        return Err(layout.error(format!(
            "its config lists {} diff_ids for {layers} layers",
            diff_ids.len()
        )));
    }
    Ok(diff_ids)
}

fn check_layer_type(layout: &Layout<'_>, descriptor: &Descriptor) -> Result<(), ImageError> {
    let media = descriptor.media_type.as_str();
    let known = media.is_empty()
        || media.starts_with("application/vnd.oci.image.layer.")
        || media.starts_with("application/vnd.docker.image.rootfs.");
    let supported = !media.ends_with("+encrypted") && !media.contains("foreign");
    if known && supported {
        Ok(())
    } else {
        Err(layout.error(format!(
            "layer {} has media type {media:?}; kiln applies tar, tar+gzip and tar+zstd layers",
            descriptor.digest
        )))
    }
}

/// Picks the image from an index: the only manifest, or the one for
/// linux/amd64 (nested indexes are followed). Several candidates left are
/// narrowed by their `org.opencontainers.image.ref.name` (or containerd's
/// `io.containerd.image.name`) matching `name` or its tag.
fn choose_manifest(
    layout: &Layout<'_>,
    index: Index,
    name: &str,
    depth: usize,
) -> Result<Descriptor, ImageError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(layout.error("its image indexes nest too deep"));
    }
    let mut candidates = Vec::new();
    for descriptor in index.manifests {
        if INDEX_TYPES.contains(&descriptor.media_type.as_str()) {
            let nested_path = layout.blob(&descriptor)?;
            let nested: Index = layout.json(&nested_path, "image index")?;
            match choose_manifest(layout, nested, name, depth + 1) {
                Ok(found) => candidates.push(found),
                Err(ImageError::Oci { reason, .. }) if reason.starts_with(NO_IMAGE) => {}
                Err(e) => return Err(e),
            }
        } else if MANIFEST_TYPES.contains(&descriptor.media_type.as_str())
            || descriptor.media_type.is_empty()
        {
            candidates.push(descriptor);
        }
    }
    if candidates.len() > 1 {
        candidates.retain(|d| {
            d.platform
                .as_ref()
                .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
        });
    }
    if candidates.len() > 1 {
        let tag = name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
        let named: Vec<usize> = candidates
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                [
                    "org.opencontainers.image.ref.name",
                    "io.containerd.image.name",
                ]
                .iter()
                .filter_map(|key| d.annotations.get(*key))
                .any(|n| n == name || n == tag || n.ends_with(&format!("/{name}")))
            })
            .map(|(i, _)| i)
            .collect();
        if let [only] = named[..] {
            return Ok(candidates.swap_remove(only));
        }
        let listed: Vec<String> = candidates.iter().map(|d| d.digest.clone()).collect();
        return Err(layout.error(format!(
            "its index lists several linux/amd64 images ({}) and none is named {name:?} \
             by an org.opencontainers.image.ref.name annotation",
            listed.join(", ")
        )));
    }
    candidates.pop().ok_or_else(|| {
        layout.error(format!(
            "{NO_IMAGE} (kiln takes the only image, or the one for linux/amd64)"
        ))
    })
}

const NO_IMAGE: &str = "its index lists no image kiln can run";

/// Picks the image from a `docker save` manifest.json: the only one, or the
/// one whose `RepoTags` hold `name` (or `name:latest`).
fn choose_saved(
    layout: &Layout<'_>,
    mut entries: Vec<DockerSaveEntry>,
    name: &str,
) -> Result<DockerSaveEntry, ImageError> {
    if entries.len() == 1 {
        return Ok(entries.remove(0));
    }
    let latest = format!("{name}:latest");
    let position = entries.iter().position(|e| {
        e.repo_tags
            .iter()
            .flatten()
            .any(|tag| tag == name || *tag == latest)
    });
    match position {
        Some(i) => Ok(entries.swap_remove(i)),
        None if entries.is_empty() => Err(layout.error("its manifest.json lists no image")),
        None => {
            let tags: Vec<String> = entries
                .iter()
                .flat_map(|e| e.repo_tags.iter().flatten().cloned())
                .collect();
            Err(layout.error(format!(
                "its manifest.json lists {} images and none is tagged {name:?} (tags: {})",
                entries.len(),
                tags.join(", ")
            )))
        }
    }
}

fn file_sha256(path: &Path) -> Result<String, ImageError> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path).at(path)?, &mut hasher).at(path)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Applies one layer, decompressing by its first bytes (media types lie
/// less often than magic numbers), and checks its uncompressed digest.
fn apply_layer(
    layout: &Layout<'_>,
    rootfs: &mut Unpacker,
    number: usize,
    layer: &Layer,
) -> Result<(), ImageError> {
    let shown = PathBuf::from(format!(
        "{}: layer {number} ({})",
        layout.archive.display(),
        layer.digest
    ));
    let mut file = BufReader::with_capacity(1 << 20, File::open(&layer.path).at(&layer.path)?);
    let head = io::BufRead::fill_buf(&mut file).at(&layer.path)?.to_vec();
    let damaged = |e: io::Error| ImageError::Archive {
        archive: shown.clone(),
        reason: e.to_string(),
    };
    let inner: Box<dyn Read> = match head.as_slice() {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(damaged)?)
        }
        _ => Box::new(file),
    };
    let mut reader = ZeroTail {
        inner: Hashing {
            inner,
            hasher: Sha256::new(),
        },
        read: 0,
        tail: None,
    };
    rootfs.apply_layer(&shown, &mut reader)?;
    let actual = format!("sha256:{:x}", reader.inner.hasher.finalize());
    if actual != layer.diff_id {
        return Err(ImageError::BlobMismatch {
            archive: layout.archive.to_path_buf(),
            blob: layer.digest.clone(),
            reason: format!(
                "uncompressed has digest {actual} but the config's diff_id is {}",
                layer.diff_id
            ),
        });
    }
    Ok(())
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Ends a layer's tar stream with its padding and end-of-archive blocks when
/// the stream itself stops short of them (umoci 0.4 writes layers so). The
/// layer's digests were checked, so a short stream is how its author made
/// it, not a cut one; the zeros never enter the diff_id.
struct ZeroTail<R> {
    inner: R,
    read: u64,
    /// Zeros still to give once `inner` is exhausted.
    tail: Option<u64>,
}

impl<R: Read> Read for ZeroTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tail.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.read += n as u64;
                return Ok(n);
            }
            self.tail = Some(self.read.next_multiple_of(512) - self.read + 1024);
        }
        let left = self.tail.unwrap_or(0);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        buf[..n].fill(0);
        self.tail = Some(left - n as u64);
        Ok(n)
    }
}
