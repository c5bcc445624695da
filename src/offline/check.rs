//! What `kiln run --offline` needs before any job starts: every remote
//! source fetched, every image imported, no job asking for the network.
//! Everything missing is listed at once.

use std::collections::BTreeSet;

use kiln_grammar::manifest::{Driver as DriverSpec, Manifest, Source};
use kiln_store::{ObjectKind, RootKind, Store, TempRoots};

use super::OfflineError;
use super::fetch::{self, DEFAULT_REF};
use crate::image::HOST_IMAGE;

/// One thing the build needs that the store lacks, with how to get it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Missing {
    pub what: String,
    pub remedy: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.remedy)
    }
}

/// The distinct image names the manifest's jobs run on.
pub fn image_names(manifest: &Manifest) -> BTreeSet<String> {
    manifest
        .jobs
        .iter()
        .filter_map(|job| match &job.driver {
            DriverSpec::Container(container) => Some(container.image.clone()),
            DriverSpec::Qemu(qemu) => Some(qemu.image.clone()),
            DriverSpec::Host(_) => None,
        })
        .collect()
}

/// Everything an offline run of `manifest` would miss. Reads the store only.
pub fn missing(store: &Store, manifest: &Manifest) -> Result<Vec<Missing>, OfflineError> {
    let roots = store.temp_roots()?;
    let mut missing = Vec::new();
    for source in &manifest.sources {
        match source {
            Source::Git {
                url,
                reference,
                rev,
                ..
            } if fetch::is_remote(url) => {
                missing.extend(missing_source(
                    store,
                    &roots,
                    url,
                    reference.as_deref(),
                    rev.as_deref(),
                )?);
            }
            Source::Path { path, .. } if std::fs::symlink_metadata(&path.absolute).is_err() => {
                missing.push(Missing {
                    what: format!("source {}", path.relative),
                    remedy: format!("{} does not exist", path.absolute.display()),
                });
            }
            _ => {}
        }
    }
    for image in image_names(manifest) {
        if image == HOST_IMAGE {
            continue;
        }
        let present = if image.starts_with(kiln_store::DIGEST_PREFIX) {
            match image.parse() {
                Ok(digest) => matches!(store.object_kind(&digest), Ok(ObjectKind::Tree)),
                Err(_) => false,
            }
        } else {
            store
                .get_root(RootKind::Image, &image)?
                .is_some_and(|root| !root.broken)
        };
        if !present {
            missing.push(Missing {
                what: format!("image {image}"),
                remedy: format!(
                    "import it with `kiln image import {image} ARCHIVE` (or `kiln bundle import`)"
                ),
            });
        }
    }
    for job in &manifest.jobs {
        if job.network {
            missing.push(Missing {
                what: format!("job {}", job.name),
                remedy: "asks for the network (`network = true`), which --offline forbids".into(),
            });
        }
    }
    Ok(missing)
}

fn missing_source(
    store: &Store,
    roots: &TempRoots,
    url: &str,
    reference: Option<&str>,
    rev: Option<&str>,
) -> Result<Option<Missing>, OfflineError> {
    let what = format!("source {url} (ref {})", reference.unwrap_or(DEFAULT_REF));
    Ok(match fetch::stored_source(store, roots, url, reference)? {
        None => Some(Missing {
            what,
            remedy: "not fetched: run `kiln fetch` where the network is reachable".into(),
        }),
        Some(stored) => match rev {
            Some(rev) if !fetch::rev_matches(&stored.commit, rev) => Some(Missing {
                what,
                remedy: format!(
                    "the fetched commit {} is not what `rev` pins ({rev}): run `kiln fetch` again",
                    stored.commit
                ),
            }),
            _ => None,
        },
    })
}
