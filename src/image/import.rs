//! `kiln image import NAME SRC`: a directory, a rootfs tarball or an OCI
//! image archive (plain, gzip, zstd; all recognised by content, never by
//! name) stored as one tree under the root `image/NAME`.
//!
//! A tarball is unpacked (see [`super::unpack`]) into a private scratch
//! directory first and added from there: the store's parallel directory
//! ingest is far faster than one transaction per entry, and an archive that
//! turns out to be unsafe or damaged is refused before the store sees any
//! of it. The root is only set once everything is in, so a failure leaves
//! no image behind (and nothing the next collection would not sweep).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_store::{
    AddOptions, B3Digest, EntryName, Node, ObjectRef, Progress, RootKind, Store, TempRoots, Tree,
    TreeEntry,
};

use super::config::{ImageConfig, write_config};
use super::error::{ImageError, IoContext};
use super::name::validate_name;
use super::oci::{OciFormat, is_layout_dir, looks_like_image, unpack_image};
use super::unpack::Unpacker;

/// The object root (`object/image-source/NAME`) recording how an image was
/// imported, for `kiln image ls`.
pub(crate) const SOURCE_ROOT_PREFIX: &str = "image-source/";

/// How an image source is packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Directory,
    Archive(ArchiveFormat),
    /// An OCI image archive: the outer archive's compression (`None`: an
    /// OCI layout directory) and which kind of image archive it is.
    Oci {
        compression: Option<ArchiveFormat>,
        format: OciFormat,
    },
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceKind::Directory => f.write_str("directory"),
            SourceKind::Archive(format) => write!(f, "{format}"),
            SourceKind::Oci {
                format: OciFormat::OciLayout,
                ..
            } => f.write_str("OCI"),
            SourceKind::Oci {
                format: OciFormat::DockerSave,
                ..
            } => f.write_str("OCI (docker save)"),
        }
    }
}

/// A rootfs tarball's compression, recognised by magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveFormat {
    Tar,
    TarGzip,
    TarZstd,
}

impl std::fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarGzip => "tar.gz",
            ArchiveFormat::TarZstd => "tar.zst",
        })
    }
}

#[derive(Default, Clone, Copy)]
pub struct ImportOptions<'a> {
    /// Told about the archive's bytes while unpacking, then about the files
    /// while they are added to the store.
    pub progress: Option<&'a dyn Progress>,
    /// Where a tarball is unpacked before it is added [default: the system
    /// temporary directory].
    pub scratch_dir: Option<&'a Path>,
}

/// An entry of the source that is not part of the image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// Its path in the source.
    pub path: String,
    /// What it is (`character device`, `fifo`, ...).
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    pub name: String,
    pub digest: B3Digest,
    pub source: SourceKind,
    /// Logical bytes of the image's files.
    pub size: u64,
    pub files: u64,
    /// Device nodes, fifos and sockets left out (the sandbox makes its own
    /// `/dev`).
    pub skipped: Vec<Skipped>,
    /// What `image/NAME` named before, if it was replaced by something else.
    pub replaced: Option<B3Digest>,
    /// An OCI image's config (stored in the image at
    /// [`IMAGE_CONFIG_PATH`](super::IMAGE_CONFIG_PATH)).
    pub config: Option<ImageConfig>,
}

/// Imports `source` as the image `name` (replacing an image of that name).
pub fn import(
    store: &mut Store,
    name: &str,
    source: &Path,
    options: &ImportOptions<'_>,
) -> Result<ImportReport, ImageError> {
    validate_name(name)?;
    // A symlink to a directory or an archive means what it points at.
    let source = &fs::canonicalize(source).at(source)?;
    let meta = fs::metadata(source).at(source)?;
    let roots = store.temp_roots()?;
    let (kind, imported) = if meta.is_dir() && is_layout_dir(source) {
        let (format, imported) = add_oci(store, name, source, None, options, &roots)?;
        (
            SourceKind::Oci {
                compression: None,
                format,
            },
            imported,
        )
    } else if meta.is_dir() {
        (
            SourceKind::Directory,
            add_directory(store, source, options, &roots)?,
        )
    } else if meta.is_file() {
        let format = detect(source)?;
        if looks_like_image(open_archive(source, format, None)?) {
            let (oci, imported) = add_oci(store, name, source, Some(format), options, &roots)?;
            (
                SourceKind::Oci {
                    compression: Some(format),
                    format: oci,
                },
                imported,
            )
        } else {
            (
                SourceKind::Archive(format),
                add_archive(store, source, format, options, &roots)?,
            )
        }
    } else {
        return Err(ImageError::UnsupportedSource {
            path: source.to_path_buf(),
            reason: "it is neither a directory nor a file".into(),
        });
    };
    let previous = store.get_root(RootKind::Image, name)?;
    store.set_root(RootKind::Image, name, ObjectRef::tree(imported.digest))?;
    record_source(store, name, kind, &roots)?;
    Ok(ImportReport {
        name: name.to_owned(),
        digest: imported.digest,
        source: kind,
        size: imported.size,
        files: imported.files,
        skipped: imported.skipped,
        replaced: previous
            .map(|root| root.object.digest)
            .filter(|old| *old != imported.digest),
        config: imported.config,
    })
}

/// Records how `name` was imported, for `kiln image ls` (display only: the
/// image itself, config included, is the tree).
fn record_source(
    store: &mut Store,
    name: &str,
    kind: SourceKind,
    roots: &TempRoots,
) -> Result<(), ImageError> {
    let json = serde_json::to_vec(&kind).map_err(|e| ImageError::io(name, e.into()))?;
    let blob = store.add_bytes(&json, roots)?;
    store.set_root(
        RootKind::Object,
        &format!("{SOURCE_ROOT_PREFIX}{name}"),
        blob.object,
    )?;
    Ok(())
}

struct Imported {
    digest: B3Digest,
    size: u64,
    files: u64,
    skipped: Vec<Skipped>,
    config: Option<ImageConfig>,
}

/// The decompressed tar stream of `archive`.
fn open_archive<'a>(
    archive: &Path,
    format: ArchiveFormat,
    progress: Option<&'a dyn Progress>,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    let file = File::open(archive).at(archive)?;
    if let Some(progress) = progress {
        progress.start(1, file.metadata().map(|m| m.len()).unwrap_or(0));
    }
    let reader = BufReader::with_capacity(
        1 << 20,
        Counted {
            inner: file,
            progress,
        },
    );
    Ok(match format {
        ArchiveFormat::Tar => Box::new(reader),
        ArchiveFormat::TarGzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        ArchiveFormat::TarZstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader).map_err(|e| ImageError::Archive {
                archive: archive.to_path_buf(),
                reason: e.to_string(),
            })?,
        ),
    })
}

fn scratch_dir(options: &ImportOptions<'_>) -> Result<tempfile::TempDir, ImageError> {
    let parent = options
        .scratch_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("kiln-image-import-")
        .tempdir_in(&parent)
        .at(&parent)
}

/// Flattens an OCI image archive's layers into one tree, with its config
/// inside (see [`super::config`]).
fn add_oci(
    store: &mut Store,
    name: &str,
    archive: &Path,
    format: Option<ArchiveFormat>,
    options: &ImportOptions<'_>,
    roots: &TempRoots,
) -> Result<(OciFormat, Imported), ImageError> {
    let scratch = scratch_dir(options)?;
    let rootfs_dir = scratch.path().join("rootfs");
    fs::create_dir(&rootfs_dir).at(&rootfs_dir)?;
    let mut rootfs = Unpacker::new(&rootfs_dir);
    let outer = match format {
        Some(format) => Some(open_archive(archive, format, options.progress)?),
        None => None,
    };
    let (oci, stored) = unpack_image(archive, outer, name, scratch.path(), &mut rootfs)?;
    let mut skipped = rootfs.skipped;
    if write_config(&rootfs_dir, &stored)? {
        skipped.push(Skipped {
            path: "/.kiln".into(),
            kind: "directory reserved by kiln".into(),
        });
    }
    // The unpacked archive itself is not part of the image (and the
    // scratch directory goes on drop anyway): free its space before adding.
    let layout = scratch.path().join("layout");
    if format.is_some() {
        fs::remove_dir_all(&layout).at(&layout)?;
    }
    let add_options = AddOptions {
        layer: false,
        progress: options.progress,
    };
    let report = store.add_path(&rootfs_dir, &add_options, roots)?;
    Ok((
        oci,
        Imported {
            digest: report.object.digest,
            size: report.size,
            files: report.files,
            skipped,
            config: Some(stored.config),
        },
    ))
}

/// Recognises a tarball by its first bytes.
fn detect(path: &Path) -> Result<ArchiveFormat, ImageError> {
    let mut head = [0u8; 512];
    let mut file = File::open(path).at(path)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::io(path, e)),
        }
    }
    let head = &head[..filled];
    let unsupported = |reason: &str| ImageError::UnsupportedSource {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    Ok(match head {
        [0x1f, 0x8b, ..] => ArchiveFormat::TarGzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => ArchiveFormat::TarZstd,
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
            return Err(unsupported(
                "it is xz-compressed; kiln reads plain, gzip and zstd tarballs (unxz it first)",
            ));
        }
        [b'B', b'Z', b'h', ..] => {
            return Err(unsupported(
                "it is bzip2-compressed; kiln reads plain, gzip and zstd tarballs (bunzip2 it first)",
            ));
        }
        _ if head.len() == 512 && &head[257..262] == b"ustar" => ArchiveFormat::Tar,
        // An old (v7) tar has no magic: trust the name.
        _ if head.len() == 512 && path.extension().is_some_and(|e| e == "tar") => {
            ArchiveFormat::Tar
        }
        _ => {
            return Err(unsupported(
                "it is not a directory nor a tar, tar.gz or tar.zst archive",
            ));
        }
    })
}

fn add_archive(
    store: &mut Store,
    archive: &Path,
    format: ArchiveFormat,
    options: &ImportOptions<'_>,
    roots: &TempRoots,
) -> Result<Imported, ImageError> {
    let scratch = scratch_dir(options)?;
    let mut unpacker = Unpacker::new(scratch.path());
    unpacker.apply(archive, open_archive(archive, format, options.progress)?)?;
    let add_options = AddOptions {
        layer: false,
        progress: options.progress,
    };
    let report = store.add_path(scratch.path(), &add_options, roots)?;
    Ok(Imported {
        digest: report.object.digest,
        size: report.size,
        files: report.files,
        skipped: unpacker.skipped,
        config: None,
    })
}

/// Reports bytes read from the archive file.
struct Counted<'a, R> {
    inner: R,
    progress: Option<&'a dyn Progress>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(progress) = self.progress {
            progress.advance(n as u64);
        }
        Ok(n)
    }
}

/// Adds a directory. Device nodes, fifos and sockets (a debootstrap tree has
/// `/dev/null` and friends) are left out: directories without any are added
/// whole by the store's parallel ingest, and only the directories on the way
/// to a left-out entry are assembled here, entry by entry.
fn add_directory(
    store: &mut Store,
    source: &Path,
    options: &ImportOptions<'_>,
    roots: &TempRoots,
) -> Result<Imported, ImageError> {
    let mut special = Vec::new();
    find_special(source, &mut special)?;
    let mut skipped = Vec::new();
    let mut dirty = BTreeSet::new();
    for (path, kind) in &special {
        let relative = path.strip_prefix(source).unwrap_or(path);
        skipped.push(Skipped {
            path: relative.display().to_string(),
            kind: (*kind).to_owned(),
        });
        let mut ancestor = path.parent();
        while let Some(dir) = ancestor {
            if !dirty.insert(dir.to_path_buf()) || dir == source {
                break;
            }
            ancestor = dir.parent();
        }
    }
    let add_options = AddOptions {
        layer: false,
        progress: options.progress,
    };
    if dirty.is_empty() {
        let report = store.add_path(source, &add_options, roots)?;
        return Ok(Imported {
            digest: report.object.digest,
            size: report.size,
            files: report.files,
            skipped,
            config: None,
        });
    }
    let mut files = 0;
    let (digest, size) = assemble(store, source, &dirty, &add_options, roots, &mut files)?;
    Ok(Imported {
        digest,
        size,
        files,
        skipped,
        config: None,
    })
}

/// Builds the tree of `dir`, a directory holding (somewhere below) entries
/// the store cannot take.
fn assemble(
    store: &mut Store,
    dir: &Path,
    dirty: &BTreeSet<PathBuf>,
    options: &AddOptions<'_>,
    roots: &TempRoots,
    files: &mut u64,
) -> Result<(B3Digest, u64), ImageError> {
    let mut entries = Vec::new();
    let mut listing: Vec<_> = fs::read_dir(dir)
        .at(dir)?
        .collect::<Result<_, _>>()
        .at(dir)?;
    listing.sort_by_key(|e| e.file_name());
    for entry in listing {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).at(&path)?;
        let file_type = meta.file_type();
        let node = if file_type.is_dir() && dirty.contains(&path) {
            let (digest, size) = assemble(store, &path, dirty, options, roots, files)?;
            Node::Directory { digest, size }
        } else if file_type.is_dir() {
            let report = store.add_path(&path, options, roots)?;
            *files += report.files;
            Node::Directory {
                digest: report.object.digest,
                size: report.size,
            }
        } else if file_type.is_file() {
            let report = store.add_path(&path, options, roots)?;
            *files += 1;
            Node::File {
                digest: report.object.digest,
                size: report.size,
                executable: meta.permissions().mode() & 0o111 != 0,
            }
        } else if file_type.is_symlink() {
            use std::os::unix::ffi::OsStrExt;
            let target = fs::read_link(&path).at(&path)?;
            Node::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }
        } else {
            continue; // left out, reported by the caller
        };
        use std::os::unix::ffi::OsStrExt;
        let name = EntryName::new(entry.file_name().as_bytes().to_vec())?;
        entries.push(TreeEntry { name, node });
    }
    let tree = Tree::new(false, entries)?;
    let size = tree.size();
    Ok((store.add_tree(&tree, roots)?, size))
}

/// Collects the device nodes, fifos and sockets below `dir`.
fn find_special(dir: &Path, found: &mut Vec<(PathBuf, &'static str)>) -> Result<(), ImageError> {
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let file_type = entry.file_type().at(entry.path())?;
        let kind = if file_type.is_dir() {
            find_special(&entry.path(), found)?;
            continue;
        } else if file_type.is_char_device() {
            "character device"
        } else if file_type.is_block_device() {
            "block device"
        } else if file_type.is_fifo() {
            "fifo"
        } else if file_type.is_socket() {
            "socket"
        } else {
            continue;
        };
        found.push((entry.path(), kind));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detected(name: &str, bytes: &[u8]) -> Result<ArchiveFormat, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        detect(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn archives_are_recognised_by_content_not_name() {
        let mut ustar = vec![0u8; 1024];
        ustar[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(detected("image.bin", &ustar), Ok(ArchiveFormat::Tar));
        assert_eq!(
            detected("x.tar.zst", &[0x1f, 0x8b, 8, 0]),
            Ok(ArchiveFormat::TarGzip)
        );
        assert_eq!(
            detected("x.tgz", &[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Ok(ArchiveFormat::TarZstd)
        );
        // A v7 tar has no magic: only then does the name count.
        assert_eq!(detected("old.tar", &[1u8; 512]), Ok(ArchiveFormat::Tar));
        assert!(
            detected("old.bin", &[1u8; 512])
                .unwrap_err()
                .contains("not a directory nor")
        );
        assert!(
            detected("x.tar.xz", b"\xfd7zXZ\0rest")
                .unwrap_err()
                .contains("xz-compressed")
        );
        assert!(
            detected("x.tar.bz2", b"BZh91AY")
                .unwrap_err()
                .contains("bzip2")
        );
        assert!(
            detected("empty.tar", b"")
                .unwrap_err()
                .contains("not a directory nor")
        );
    }
}
