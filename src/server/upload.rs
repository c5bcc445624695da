//! A submitted archive (docs/server.md, "Submitting"): a tar, tar.gz or
//! tar.zst of the project, unpacked into the build's submission directory.
//! Everything is checked before it counts: entries that climb out (`..`),
//! absolute paths, links that lead out of the root, a truncated or corrupt
//! stream, more bytes than allowed. On any refusal the directory is removed.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::image::unpack::Unpacker;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload is empty")]
    Empty,
    #[error("the upload is not a tar, tar.gz or tar.zst archive")]
    NotAnArchive,
    #[error("the archive expands past {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Refused(String),
    #[error("the symlink {link} points out of the project ({target})")]
    LinkOut { link: String, target: String },
    #[error("the archive holds no {0}")]
    NoManifest(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Stops a decompressed stream once it passed `limit` bytes.
struct Capped<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "the archive expands past {} bytes",
                self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Unpacks `bytes` into `dir` (created here, must not exist) and checks
/// that `manifest` (relative) is a file in it. On error `dir` is gone.
pub fn unpack(
    bytes: &[u8],
    dir: &Path,
    manifest: &str,
    max_expanded: u64,
) -> Result<(), UploadError> {
    let result = unpack_into(bytes, dir, manifest, max_expanded);
    if result.is_err() {
        let _ = crate::scheduler::builddir::remove_tree(dir);
    }
    result
}

fn unpack_into(
    bytes: &[u8],
    dir: &Path,
    manifest: &str,
    max_expanded: u64,
) -> Result<(), UploadError> {
    if bytes.is_empty() {
        return Err(UploadError::Empty);
    }
    let stream: Box<dyn Read + '_> = match bytes {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(
            zstd::stream::read::Decoder::new(bytes).map_err(|_| UploadError::NotAnArchive)?,
        ),
        _ if bytes.len() >= 512 && &bytes[257..262] == b"ustar" => Box::new(bytes),
        _ => return Err(UploadError::NotAnArchive),
    };
    let capped = Capped {
        inner: stream,
        left: max_expanded,
        limit: max_expanded,
    };
    std::fs::create_dir_all(dir).map_err(|source| UploadError::Io {
        what: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut unpacker = Unpacker::new(dir);
    unpacker
        .apply(Path::new("upload"), capped)
        .map_err(|error| {
            let text = error.to_string();
            if text.contains("expands past") {
                UploadError::TooLarge {
                    limit: max_expanded,
                }
            } else {
                UploadError::Refused(text)
            }
        })?;
    check_links(dir, dir)?;
    let relative = Path::new(manifest);
    let plain = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !plain || !dir.join(relative).is_file() {
        return Err(UploadError::NoManifest(manifest.to_owned()));
    }
    Ok(())
}

/// Every symlink below `dir` must lead, read lexically from where it is,
/// to a place inside `root`.
fn check_links(root: &Path, dir: &Path) -> Result<(), UploadError> {
    let io = |source| UploadError::Io {
        what: "reading",
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let kind = entry.file_type().map_err(io)?;
        let path = entry.path();
        if kind.is_dir() {
            check_links(root, &path)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io)?;
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let mut depth: i64 = relative.components().count() as i64 - 1;
            let mut escapes = target.is_absolute();
            for component in target.components() {
                match component {
                    Component::ParentDir => depth -= 1,
                    Component::Normal(_) => depth += 1,
                    _ => {}
                }
                escapes |= depth < 0;
            }
            if escapes {
                return Err(UploadError::LinkOut {
                    link: relative.display().to_string(),
                    target: target.display().to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar(entries: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, link, data) in entries {
            let mut header = tar::Header::new_ustar();
            match link {
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    header.set_mode(0o777);
                    builder.append_link(&mut header, path, target).unwrap();
                }
                None => {
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    builder.append_data(&mut header, path, *data).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_project_unpacks_and_escapes_are_refused_leaving_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let ok = tar(&[
            ("build.kiln", None, b"{}"),
            ("src/a.c", None, b"int main;"),
            ("src/link", Some("../build.kiln"), b""),
        ]);
        let dir = temp.path().join("ok");
        unpack(&ok, &dir, "build.kiln", 1 << 20).unwrap();
        assert!(dir.join("src/a.c").is_file());

        let out = tar(&[
            ("build.kiln", None, b"{}"),
            ("src/link", Some("../../etc/passwd"), b""),
        ]);
        let dir = temp.path().join("out");
        let error = unpack(&out, &dir, "build.kiln", 1 << 20).unwrap_err();
        assert!(matches!(error, UploadError::LinkOut { .. }), "{error}");
        assert!(!dir.exists());

        let absolute = tar(&[("build.kiln", None, b"{}"), ("l", Some("/etc"), b"")]);
        let dir = temp.path().join("absolute");
        assert!(unpack(&absolute, &dir, "build.kiln", 1 << 20).is_err());
        assert!(!dir.exists());

        let big = tar(&[("build.kiln", None, &[b' '; 4096])]);
        let dir = temp.path().join("big");
        let error = unpack(&big, &dir, "build.kiln", 1024).unwrap_err();
        assert!(matches!(error, UploadError::TooLarge { .. }), "{error}");

        let truncated = &ok[..ok.len() / 2 + 7];
        let dir = temp.path().join("truncated");
        assert!(unpack(truncated, &dir, "build.kiln", 1 << 20).is_err());
        assert!(!dir.exists());

        assert!(matches!(
            unpack(b"hello", &temp.path().join("x"), "build.kiln", 1 << 20),
            Err(UploadError::NotAnArchive)
        ));
        assert!(matches!(
            unpack(&ok, &temp.path().join("y"), "nope.kiln", 1 << 20),
            Err(UploadError::NoManifest(_))
        ));
    }
}
