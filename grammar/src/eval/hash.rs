//! `hashFile`: BLAKE3 of a path's content.
//!
//! A regular file hashes to the BLAKE3 of its bytes (what `b3sum` prints).
//! A directory hashes to the BLAKE3 of this listing, one line per entry in
//! byte order of the names:
//!
//! ```text
//! kiln-dir-v1\n
//! <kind> <hash> <name length>:<name>\n     (for each entry)
//! ```
//!
//! where `kind` is `f` (file), `x` (file with any execute bit), `l`
//! (symlink; `hash` is the BLAKE3 of the link target, which is not
//! followed) or `d` (directory; `hash` is this encoding, recursively), and
//! `hash` is lowercase hex. Names are raw bytes, so the encoding is
//! unambiguous. Other file types (sockets, devices) are an error.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn hash_path(path: &Path) -> io::Result<String> {
    let metadata = std::fs::symlink_metadata(path)?;
    Ok(hash_entry(path, &metadata)?.1.to_hex().to_string())
}

fn hash_entry(path: &Path, metadata: &std::fs::Metadata) -> io::Result<(char, blake3::Hash)> {
    let file_type = metadata.file_type();
    if file_type.is_symlink() {
        let target = std::fs::read_link(path)?;
        return Ok(('l', blake3::hash(target.as_os_str().as_bytes())));
    }
    if file_type.is_file() {
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap(path)?;
        let kind = if metadata.permissions().mode() & 0o111 != 0 {
            'x'
        } else {
            'f'
        };
        return Ok((kind, hasher.finalize()));
    }
    if file_type.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<io::Result<_>>()?;
        entries.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
        let mut listing = blake3::Hasher::new();
        listing.update(b"kiln-dir-v1\n");
        for entry in entries {
            let name = entry.file_name();
            let entry_path = entry.path();
            let metadata = std::fs::symlink_metadata(&entry_path)?;
            let (kind, hash) = hash_entry(&entry_path, &metadata)?;
            listing
                .update(format!("{kind} {} {}:", hash.to_hex(), name.as_bytes().len()).as_bytes());
            listing.update(name.as_bytes());
            listing.update(b"\n");
        }
        return Ok(('d', listing.finalize()));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "`{}` is neither a file, a directory nor a symlink",
            path.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hash_is_plain_blake3() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        std::fs::write(&file, b"hello").unwrap();
        assert_eq!(
            hash_path(&file).unwrap(),
            blake3::hash(b"hello").to_hex().to_string()
        );
    }

    #[test]
    fn directory_hash_depends_on_names_and_content_only() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        for dir in [one.path(), two.path()] {
            std::fs::create_dir(dir.join("sub")).unwrap();
            std::fs::write(dir.join("sub/b"), b"B").unwrap();
            std::fs::write(dir.join("a"), b"A").unwrap();
        }
        let first = hash_path(one.path()).unwrap();
        assert_eq!(first, hash_path(two.path()).unwrap());
        std::fs::write(two.path().join("sub/b"), b"changed").unwrap();
        assert_ne!(first, hash_path(two.path()).unwrap());
    }
}
