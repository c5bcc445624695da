//! The runtime configuration an OCI image carries (`Env`, `WorkingDir`,
//! `User`), kept inside the image's own tree at [`IMAGE_CONFIG_PATH`].
//!
//! Keeping it in the tree means the image digest (and so every job key on
//! it) covers the configuration, and whatever handles the tree — export and
//! import bundles, fsck, gc, `kiln image rm` — handles the configuration with
//! it, with no second root to forget.

use std::fs;
use std::path::Path;

use kiln_store::{B3Digest, Node, Store};

use super::ImageRef;
use super::error::{ImageError, IoContext};

/// Where an image's configuration lives, relative to its root. `/.kiln` is
/// reserved by the sandbox (its job script goes there), so no image file is
/// ever shadowed by it.
pub const IMAGE_CONFIG_PATH: &str = ".kiln/image.json";

/// Refuse configurations larger than this (a real one is a few hundred bytes).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What a job on the image inherits from its OCI config.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// The config's `Env`, in order (a later duplicate replaced the earlier
    /// value in place).
    pub env: Vec<(String, String)>,
    /// The config's `WorkingDir`, when set.
    pub working_dir: Option<String>,
    /// The config's `User` as written (`1000`, `1000:100`, `builder`,
    /// `builder:staff`), when set.
    pub user: Option<String>,
    /// `user` resolved at import against the image's `/etc/passwd` and
    /// `/etc/group`; `None` when `user` is unset or could not be resolved.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl ImageConfig {
    /// The job's environment, each layer over the one before: kiln's fixed
    /// `defaults` (`PATH`, `HOME`, `LANG`, ...), then the image's `Env`,
    /// then the manifest's `env`, which wins. A variable keeps the position
    /// it first had.
    pub fn job_env(
        &self,
        defaults: &[(String, String)],
        manifest_env: &[(String, String)],
    ) -> Vec<(String, String)> {
        let mut env = defaults.to_vec();
        for (name, value) in self.env.iter().chain(manifest_env) {
            set_var(&mut env, name, value);
        }
        env
    }

    /// Whether jobs on this image run as root (no `User`, or one that is
    /// uid 0).
    pub fn runs_as_root(&self) -> bool {
        self.user.is_none() || self.uid == Some(0)
    }

    /// Refuses an image whose `User` is not root: kiln's sandbox runs every
    /// job as uid 0 of its own user namespace and cannot switch users yet,
    /// and silently running such an image as root would be wrong.
    pub fn check_runnable(&self, image: &str) -> Result<(), ImageError> {
        if self.runs_as_root() {
            return Ok(());
        }
        let user = self.user.clone().unwrap_or_default();
        Err(match self.uid {
            Some(uid) => ImageError::UserNotSupported {
                image: image.to_owned(),
                user,
                uid,
            },
            None => ImageError::UnknownUser {
                image: image.to_owned(),
                user,
            },
        })
    }
}

fn set_var(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    match env.iter_mut().find(|(known, _)| known == name) {
        Some(slot) => slot.1 = value.to_owned(),
        None => env.push((name.to_owned(), value.to_owned())),
    }
}

/// Where an OCI image came from, recorded beside its config.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OciOrigin {
    /// `oci_layout` or `docker_save`.
    pub format: String,
    /// The manifest's `sha256:` digest (an OCI layout only).
    pub manifest: Option<String>,
    /// The config's `sha256:` digest.
    pub config: String,
    /// `os/architecture[/variant]` from the config.
    pub platform: String,
}

/// The file at [`IMAGE_CONFIG_PATH`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredConfig {
    pub(crate) version: u32,
    pub(crate) origin: OciOrigin,
    pub(crate) config: ImageConfig,
}

pub(crate) const STORED_CONFIG_VERSION: u32 = 1;

/// Parses an OCI config's `Env` (`NAME=VALUE` strings).
pub(crate) fn parse_env(entries: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    for entry in entries {
        let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        if name.is_empty() || name.contains('\0') || value.contains('\0') {
            return Err(format!("its Env entry {entry:?} is not NAME=VALUE"));
        }
        set_var(&mut env, name, value);
    }
    Ok(env)
}

/// Resolves `user` (`uid[:gid]` or `name[:group]`) against the unpacked
/// image at `rootfs`, the way a container runtime does: a numeric uid
/// without a passwd entry gets gid 0.
pub(crate) fn resolve_user(rootfs: &Path, user: &str) -> (Option<u32>, Option<u32>) {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_etc(rootfs, "passwd");
    // name:password:uid:gid:...
    let passwd_entry = |matches: &dyn Fn(&[&str]) -> bool| -> Option<(u32, u32)> {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || !matches(&fields) {
                return None;
            }
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        })
    };
    let (uid, primary_gid) = match user_part.parse::<u32>() {
        Ok(uid) => (
            Some(uid),
            Some(passwd_entry(&|f| f[2] == user_part).map_or(0, |(_, gid)| gid)),
        ),
        Err(_) => match passwd_entry(&|f| f[0] == user_part) {
            Some((uid, gid)) => (Some(uid), Some(gid)),
            None => (None, None),
        },
    };
    let gid = match group_part {
        None => primary_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => Some(gid),
            // name:password:gid:members
            Err(_) => read_etc(rootfs, "group").lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() >= 3 && fields[0] == group)
                    .then(|| fields[2].parse().ok())
                    .flatten()
            }),
        },
    };
    (uid, gid)
}

/// `etc/NAME` of the unpacked image when it is a plain file reached without
/// any symlink (a symlink would point into the host, not the image).
fn read_etc(rootfs: &Path, name: &str) -> String {
    let etc = rootfs.join("etc");
    let file = etc.join(name);
    let plain_dir = fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir());
    let plain_file = fs::symlink_metadata(&file).is_ok_and(|m| m.is_file() && m.len() < 1 << 24);
    if plain_dir && plain_file {
        fs::read_to_string(&file).unwrap_or_default()
    } else {
        String::new()
    }
}

/// Writes the config into the unpacked image, replacing whatever the image's
/// layers had at `/.kiln` (reserved). Returns whether something was replaced.
pub(crate) fn write_config(rootfs: &Path, stored: &StoredConfig) -> Result<bool, ImageError> {
    let reserved = rootfs.join(".kiln");
    let replaced = match fs::symlink_metadata(&reserved) {
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(&reserved).at(&reserved)?;
            true
        }
        Ok(_) => {
            fs::remove_file(&reserved).at(&reserved)?;
            true
        }
        Err(_) => false,
    };
    fs::create_dir(&reserved).at(&reserved)?;
    let path = rootfs.join(IMAGE_CONFIG_PATH);
    let json = serde_json::to_vec_pretty(stored).map_err(|e| ImageError::io(&path, e.into()))?;
    fs::write(&path, json).at(&path)?;
    Ok(replaced)
}

/// The configuration recorded with `image`, if it has one (an imported OCI
/// image; the host image and plain rootfs imports have none).
pub fn image_config(store: &Store, image: &ImageRef) -> Result<Option<ImageConfig>, ImageError> {
    match image {
        ImageRef::Host { .. } => Ok(None),
        ImageRef::Tree { name, digest } => {
            Ok(stored_config(store, name, digest)?.map(|s| s.config))
        }
    }
}

/// The whole record at [`IMAGE_CONFIG_PATH`] of the tree `digest`.
pub(crate) fn stored_config(
    store: &Store,
    name: &str,
    digest: &B3Digest,
) -> Result<Option<StoredConfig>, ImageError> {
    let mut dir = *digest;
    let mut parts = IMAGE_CONFIG_PATH.split('/').peekable();
    while let Some(part) = parts.next() {
        let tree = store.tree(&dir)?;
        let Some(entry) = tree
            .entries()
            .iter()
            .find(|e| e.name.as_bytes() == part.as_bytes())
        else {
            return Ok(None);
        };
        match (&entry.node, parts.peek().is_some()) {
            (Node::Directory { digest, .. }, true) => dir = *digest,
            (Node::File { digest, size, .. }, false) => {
                let bad = |reason: String| ImageError::BadConfig {
                    image: name.to_owned(),
                    reason,
                };
                if *size > MAX_CONFIG_BYTES {
                    return Err(bad(format!("it is {size} bytes long")));
                }
                let bytes = store.blob_bytes(digest)?;
                let stored: StoredConfig =
                    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                if stored.version > STORED_CONFIG_VERSION {
                    return Err(bad(format!(
                        "it has version {}, from a newer kiln (this one reads {STORED_CONFIG_VERSION})",
                        stored.version
                    )));
                }
                return Ok(Some(stored));
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_env_wins_over_the_image_env() {
        let config = ImageConfig {
            env: parse_env(&["PATH=/usr/bin".into(), "LANG=C".into(), "A=1".into()]).unwrap(),
            ..ImageConfig::default()
        };
        let defaults = [
            ("HOME".to_string(), "/work".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let env = config.job_env(
            &defaults,
            &[("LANG".into(), "C.UTF-8".into()), ("B".into(), "2".into())],
        );
        let expected: Vec<(String, String)> = [
            ("HOME", "/work"),
            ("PATH", "/usr/bin"),
            ("LANG", "C.UTF-8"),
            ("A", "1"),
            ("B", "2"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
        assert!(parse_env(&["=x".into()]).is_err());
        assert_eq!(
            parse_env(&["X=a=b".into(), "X=c".into(), "EMPTY".into()]).unwrap(),
            vec![("X".into(), "c".into()), ("EMPTY".into(), String::new())]
        );
    }

    #[test]
    fn users_resolve_against_the_image_passwd() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:100::/home/builder:/bin/sh\n",
        )
        .unwrap();
        fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let root = dir.path();
        assert_eq!(resolve_user(root, "root"), (Some(0), Some(0)));
        assert_eq!(resolve_user(root, "builder"), (Some(1000), Some(100)));
        assert_eq!(resolve_user(root, "builder:staff"), (Some(1000), Some(50)));
        assert_eq!(resolve_user(root, "1000"), (Some(1000), Some(100)));
        assert_eq!(resolve_user(root, "4242:7"), (Some(4242), Some(7)));
        assert_eq!(resolve_user(root, "4242"), (Some(4242), Some(0)));
        assert_eq!(resolve_user(root, "nobody-here").0, None);
        let config = |user: &str| {
            let (uid, gid) = resolve_user(root, user);
            ImageConfig {
                user: Some(user.into()),
                uid,
                gid,
                ..ImageConfig::default()
            }
        };
        assert!(config("root").check_runnable("i").is_ok());
        assert!(config("0:0").check_runnable("i").is_ok());
        let err = config("builder")
            .check_runnable("i")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("uid 1000") && err.contains("cannot switch"),
            "{err}"
        );
        let err = config("ghost").check_runnable("i").unwrap_err().to_string();
        assert!(err.contains("/etc/passwd"), "{err}");
    }
}
