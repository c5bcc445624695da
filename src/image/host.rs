//! The built-in `"host"` image: which host paths it hides, and the
//! fingerprint that keys it (design §3).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_store::B3Digest;

use super::error::ImageError;
use crate::sandbox::HOST_VIEW_HIDDEN;

/// Bumped whenever the fingerprint's inputs or encoding change, so that
/// every job keyed on the host image reruns once.
pub const HOST_FINGERPRINT_VERSION: u32 = 1;

/// What identifies the software installed on a host, relative to its root,
/// sorted: os-release, the package databases of dpkg, rpm and apk, and the
/// dynamic linker cache. Files that do not exist enter as absent.
const FINGERPRINT_INPUTS: &[&str] = &[
    "etc/ld.so.cache",
    "etc/os-release",
    "lib/apk/db/installed",
    "usr/lib/os-release",
    "var/lib/dpkg/status",
    "var/lib/rpm/Packages",
    "var/lib/rpm/Packages.db",
    "var/lib/rpm/rpmdb.sqlite",
];

/// Host paths hidden from the host view on top of the sandbox's own
/// [`HOST_VIEW_HIDDEN`] (`/home`, `/root`, `/tmp`, `/var/tmp`, `/run`):
/// secrets, mail and crontabs, logs, removable and ad-hoc mounts, and the
/// host's unique identity (a build that reads it cannot be reproduced
/// elsewhere). The kiln store and the ssh host keys are added by
/// [`host_excludes`]. Why each is here: docs/images.md.
pub const HOST_EXCLUDED: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/ssl/private",
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/var/backups",
    "/var/lib/sudo",
    "/var/mail",
    "/var/spool/mail",
    "/var/spool/cron",
    "/var/log",
    "/var/lib/docker",
    "/var/lib/containers",
    "/media",
    "/mnt",
    "/lost+found",
];

/// Everything the host view hides on this machine: [`HOST_VIEW_HIDDEN`],
/// [`HOST_EXCLUDED`], the ssh host private keys (`/etc/ssh/*_key`) and the
/// kiln store directory.
pub fn host_excludes(store_dir: &Path) -> Vec<PathBuf> {
    let mut excluded: Vec<PathBuf> = HOST_VIEW_HIDDEN
        .iter()
        .chain(HOST_EXCLUDED)
        .map(PathBuf::from)
        .collect();
    if let Ok(entries) = std::fs::read_dir("/etc/ssh") {
        let mut keys: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().as_encoded_bytes().ends_with(b"_key"))
            .map(|e| e.path())
            .collect();
        keys.sort();
        excluded.extend(keys);
    }
    let store = std::fs::canonicalize(store_dir).unwrap_or_else(|_| absolute(store_dir));
    excluded.push(store);
    excluded
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The fingerprint of the machine kiln runs on, computed once per process.
pub fn host_fingerprint() -> Result<B3Digest, ImageError> {
    static CACHED: OnceLock<B3Digest> = OnceLock::new();
    if let Some(digest) = CACHED.get() {
        return Ok(*digest);
    }
    let digest = fingerprint_root(Path::new("/"))?;
    Ok(*CACHED.get_or_init(|| digest))
}

/// The fingerprint of the system installed under `root`: blake3 over a
/// versioned, length-prefixed encoding of the architecture and each input
/// file (path, then absent or its bytes), in a fixed sorted order.
pub fn fingerprint_root(root: &Path) -> Result<B3Digest, ImageError> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"kiln host fingerprint\0");
    hasher.update(&HOST_FINGERPRINT_VERSION.to_le_bytes());
    put(&mut hasher, std::env::consts::ARCH.as_bytes());
    for relative in FINGERPRINT_INPUTS {
        put(&mut hasher, relative.as_bytes());
        let path = root.join(relative);
        match std::fs::read(&path) {
            Ok(bytes) => {
                hasher.update(&[1]);
                put(&mut hasher, &bytes);
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                hasher.update(&[0]);
            }
            Err(source) => return Err(ImageError::HostRead { path, source }),
        }
    }
    Ok(B3Digest::from(hasher.finalize()))
}

fn put(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}
