//! `kiln.lock`: what a manifest resolved to, written beside it.
//!
//! Pretty JSON with a format version, every list sorted, one value per
//! line, so a change shows as a small diff. It pins the manifest (each file
//! read: the manifest and its imports), every git source (commit and tree)
//! and every image (its digest; for `host`, the host's fingerprint). Path
//! sources are the project itself and are not locked: a lock beside the
//! manifest would otherwise have to contain its own digest.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_grammar::manifest::{Manifest, Source};
use kiln_store::{B3Digest, Store, TempRoots};

use super::OfflineError;
use super::check::image_names;
use super::fetch::DEFAULT_REF;

/// The lock file's name, beside the manifest.
pub const LOCK_FILE: &str = "kiln.lock";
/// Bumped when the format changes; a newer lock is refused.
pub const LOCK_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lock {
    pub version: u32,
    pub manifest: ManifestLock,
    pub sources: Vec<SourceLock>,
    pub images: Vec<ImageLock>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestLock {
    /// blake3 over the sorted `path digest` lines of `files`.
    pub digest: B3Digest,
    /// Each file read, relative to the manifest's directory → its blake3.
    pub files: BTreeMap<String, B3Digest>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceLock {
    pub url: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub dir: String,
    pub commit: String,
    pub tree: B3Digest,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageLock {
    pub name: String,
    pub digest: B3Digest,
}

impl Lock {
    /// Resolves `manifest` against the store (never the network): remote
    /// sources must have been fetched. `files` are the manifest and its
    /// imports with their text, as the loader read them.
    pub fn compute(
        store: &mut Store,
        roots: &TempRoots,
        manifest: &Manifest,
        files: &[(std::path::PathBuf, String)],
    ) -> Result<Lock, OfflineError> {
        let mut file_digests = BTreeMap::new();
        for (path, text) in files {
            let name = relative_name(&manifest.dir, path);
            file_digests.insert(name, B3Digest::of(text.as_bytes()));
        }
        let listing: String = file_digests
            .iter()
            .map(|(name, digest)| format!("{name} {digest}\n"))
            .collect();
        let mut sources = Vec::new();
        for source in &manifest.sources {
            let Source::Git {
                url,
                reference,
                dir,
                ..
            } = source
            else {
                continue;
            };
            let resolved = crate::resolve::resolve_source(store, roots, manifest, source)?;
            sources.push(SourceLock {
                url: url.clone(),
                reference: reference.clone().unwrap_or_else(|| DEFAULT_REF.into()),
                dir: dir.clone(),
                commit: resolved.commit.unwrap_or_default(),
                tree: resolved.object.digest,
            });
        }
        sources.sort_by(|a, b| (&a.dir, &a.url).cmp(&(&b.dir, &b.url)));
        let mut images = Vec::new();
        for name in image_names(manifest) {
            let image = crate::image::resolve(store, &name)?;
            images.push(ImageLock {
                name,
                digest: image.digest(),
            });
        }
        Ok(Lock {
            version: LOCK_VERSION,
            manifest: ManifestLock {
                digest: B3Digest::of(listing.as_bytes()),
                files: file_digests,
            },
            sources,
            images,
        })
    }

    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    pub fn parse(path: &Path, text: &str) -> Result<Lock, OfflineError> {
        #[derive(serde::Deserialize)]
        struct Versioned {
            version: u32,
        }
        let versioned: Versioned = serde_json::from_str(text)
            .map_err(|error| OfflineError::file(path, format!("not a kiln lock file: {error}")))?;
        if versioned.version > LOCK_VERSION {
            return Err(OfflineError::file(
                path,
                format!(
                    "lock format version {} is newer than this kiln reads ({LOCK_VERSION}); upgrade kiln",
                    versioned.version
                ),
            ));
        }
        serde_json::from_str(text)
            .map_err(|error| OfflineError::file(path, format!("malformed lock file: {error}")))
    }

    pub fn read(path: &Path) -> Result<Lock, OfflineError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            OfflineError::file(
                path,
                format!("cannot read the lock file ({error}); write it with `kiln lock`"),
            )
        })?;
        Lock::parse(path, &text)
    }

    /// What resolves differently in `now` than in this lock, one line each
    /// (`what: locked → now`); empty when nothing drifted.
    pub fn drift(&self, now: &Lock) -> Vec<String> {
        let mut changes = Vec::new();
        if self.manifest.digest != now.manifest.digest {
            diff_maps(
                "manifest file",
                &self.manifest.files,
                &now.manifest.files,
                &mut changes,
            );
            if changes.is_empty() {
                changes.push(format!(
                    "manifest: {} → {}",
                    self.manifest.digest, now.manifest.digest
                ));
            }
        }
        let key = |s: &SourceLock| format!("source {} (ref {}, dir {})", s.url, s.reference, s.dir);
        let locked: BTreeMap<String, &SourceLock> =
            self.sources.iter().map(|s| (key(s), s)).collect();
        let current: BTreeMap<String, &SourceLock> =
            now.sources.iter().map(|s| (key(s), s)).collect();
        for (name, old) in &locked {
            match current.get(name) {
                None => changes.push(format!("{name}: locked, no longer in the manifest")),
                Some(new) => {
                    if old.commit != new.commit {
                        changes.push(format!("{name}: commit {} → {}", old.commit, new.commit));
                    }
                    if old.tree != new.tree {
                        changes.push(format!("{name}: tree {} → {}", old.tree, new.tree));
                    }
                }
            }
        }
        for name in current.keys().filter(|name| !locked.contains_key(*name)) {
            changes.push(format!("{name}: not in the lock"));
        }
        let images_locked: BTreeMap<String, B3Digest> = self
            .images
            .iter()
            .map(|i| (i.name.clone(), i.digest))
            .collect();
        let images_now: BTreeMap<String, B3Digest> = now
            .images
            .iter()
            .map(|i| (i.name.clone(), i.digest))
            .collect();
        diff_maps("image", &images_locked, &images_now, &mut changes);
        changes
    }
}

fn diff_maps(
    what: &str,
    locked: &BTreeMap<String, B3Digest>,
    now: &BTreeMap<String, B3Digest>,
    changes: &mut Vec<String>,
) {
    for (name, old) in locked {
        match now.get(name) {
            None => changes.push(format!("{what} {name}: locked as {old}, now absent")),
            Some(new) if new != old => changes.push(format!("{what} {name}: {old} → {new}")),
            Some(_) => {}
        }
    }
    for (name, new) in now {
        if !locked.contains_key(name) {
            changes.push(format!("{what} {name}: not in the lock (now {new})"));
        }
    }
}

/// `path` relative to `dir` when inside it, else as it is.
pub fn relative_name(dir: &Path, path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match absolute.strip_prefix(dir) {
        Ok(relative) => relative.display().to_string(),
        Err(_) => absolute.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> B3Digest {
        B3Digest::from_array([byte; 32])
    }

    fn lock(commit: &str, image: u8, file: u8) -> Lock {
        let files = BTreeMap::from([("build.kiln".to_owned(), digest(file))]);
        Lock {
            version: LOCK_VERSION,
            manifest: ManifestLock {
                digest: digest(file),
                files,
            },
            sources: vec![SourceLock {
                url: "git://h/lib.git".into(),
                reference: "main".into(),
                dir: "lib".into(),
                commit: commit.into(),
                tree: digest(commit.len() as u8),
            }],
            images: vec![ImageLock {
                name: "host".into(),
                digest: digest(image),
            }],
        }
    }

    #[test]
    fn the_text_round_trips_and_is_stable() {
        let original = lock("aaaa", 1, 2);
        let text = original.to_text();
        assert!(text.ends_with("}\n"));
        assert!(text.contains("\"ref\": \"main\""));
        let parsed = Lock::parse(Path::new("kiln.lock"), &text).unwrap();
        assert_eq!(parsed, original);
        assert_eq!(parsed.to_text(), text);
        assert!(original.drift(&parsed).is_empty());
    }

    #[test]
    fn drift_names_each_change_old_and_new() {
        let old = lock("aaaa", 1, 2);
        let new = lock("bbbbb", 3, 4);
        let drift = old.drift(&new);
        let all = drift.join("\n");
        assert!(all.contains("manifest file build.kiln: "), "{all}");
        assert!(
            all.contains("source git://h/lib.git (ref main, dir lib): commit aaaa → bbbbb"),
            "{all}"
        );
        assert!(
            all.contains(&format!("image host: {} → {}", digest(1), digest(3))),
            "{all}"
        );
        let mut gone = old.clone();
        gone.sources.clear();
        assert!(old.drift(&gone)[0].contains("no longer in the manifest"));
        assert!(gone.drift(&old)[0].contains("not in the lock"));
    }

    #[test]
    fn a_newer_or_malformed_lock_is_refused() {
        let newer = Lock::parse(Path::new("kiln.lock"), r#"{ "version": 9 }"#).unwrap_err();
        assert!(
            newer.to_string().contains("newer than this kiln"),
            "{newer}"
        );
        let malformed = Lock::parse(Path::new("kiln.lock"), "[1, 2").unwrap_err();
        assert!(
            malformed
                .to_string()
                .contains("kiln.lock: not a kiln lock file")
        );
    }
}
