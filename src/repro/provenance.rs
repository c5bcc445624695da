//! The provenance every build records: an in-toto Statement v1 whose
//! predicate is SLSA Provenance v1 (<https://slsa.dev/spec/v1.0/provenance>).
//!
//! It is derived from the build's records (artifacts, the `source/resolved`,
//! `driver/created` and `object/placed` events, start and end times) once
//! the build is over, plus what only the runner knows (the manifest files it
//! read and the `--arg`s). It is stored as a blob and attached to the build
//! as the hidden artifact [`PROVENANCE_ARTIFACT`], so it lives and dies with
//! the build's artifacts under curation and travels in their closures.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use kiln_store::{B3Digest, BuildId, Node, ObjectKind, ObjectRef, Store};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::ReproError;
use crate::events::{Envelope, Event, JobStatus};

/// The artifact name the statement is kept under. Manifest artifact names
/// are workspace-relative, so none can start with `/`.
pub const PROVENANCE_ARTIFACT: &str = "/provenance.intoto.json";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";

/// Whether an artifact is kiln's provenance rather than a build output.
pub fn is_provenance(name: &str) -> bool {
    name == PROVENANCE_ARTIFACT
}

/// What `externalParameters` and `internalParameters` mean: documented in
/// docs/reproducibility.md under "Build type: run-v1".
pub const BUILD_TYPE: &str = concat!(
    env!("CARGO_PKG_REPOSITORY"),
    "/blob/main/docs/reproducibility.md#build-type-run-v1"
);

/// The builder, a local `kiln run`: documented in docs/reproducibility.md
/// under "Builder: local".
pub const BUILDER_ID: &str = concat!(
    env!("CARGO_PKG_REPOSITORY"),
    "/blob/main/docs/reproducibility.md#builder-local"
);

/// A manifest file as read by the run (the manifest and its imports).
#[derive(Clone, Debug)]
pub struct ManifestFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// What the runner knows that the build records do not.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    /// The manifest, absolute.
    pub manifest: PathBuf,
    pub files: Vec<ManifestFile>,
    pub args: BTreeMap<String, String>,
    pub no_cache: bool,
    pub check: bool,
}

/// An in-toto ResourceDescriptor.
#[derive(Clone, Debug, Default, Serialize)]
struct Resource {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    digest: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'static str, String>,
}

/// The statement for `build`, built from its records.
pub fn statement(
    store: &Store,
    build: BuildId,
    invocation: &Invocation,
) -> Result<Value, ReproError> {
    let record = store.build(build)?;
    let mut subjects = Vec::new();
    for artifact in store.artifacts(build)? {
        if is_provenance(&artifact.name) {
            continue;
        }
        subjects.extend(subjects_of(store, &artifact.name, artifact.object)?);
    }
    // Jobs finish in any order; the statement lists subjects by name.
    subjects.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));

    let mut dependencies: Vec<Resource> = invocation
        .files
        .iter()
        .map(|file| Resource {
            name: Some(if file.path == invocation.manifest {
                "manifest".to_owned()
            } else {
                format!("manifest import {}", file.path.display())
            }),
            uri: Some(format!("file://{}", file.path.display())),
            digest: BTreeMap::from([
                ("blake3", B3Digest::of(&file.bytes).to_hex()),
                ("sha256", sha256_hex(&file.bytes)),
            ]),
            annotations: BTreeMap::new(),
        })
        .collect();
    let mut byproducts = Vec::new();
    let mut layers: Vec<(String, B3Digest)> = Vec::new();
    let manifest_dir = invocation.manifest.parent().map(|d| d.to_path_buf());
    for stored in store.build_events(build)? {
        let Ok(envelope) = serde_json::from_str::<Envelope>(&stored.body) else {
            continue;
        };
        match envelope.event {
            Event::SourceResolved {
                name,
                url,
                revision,
                tree,
            } => {
                let mut digest = BTreeMap::from([("blake3", tree.to_hex())]);
                if let Some(commit) = &revision {
                    digest.insert("gitCommit", commit.clone());
                }
                let uri = if url.contains("://") {
                    url.clone()
                } else {
                    let path = manifest_dir
                        .as_ref()
                        .map_or_else(|| PathBuf::from(&url), |dir| dir.join(&url));
                    format!("file://{}", normalise(&path))
                };
                let uri = match &revision {
                    Some(commit) => format!("git+{uri}@{commit}"),
                    None => uri,
                };
                dependencies.push(Resource {
                    name: Some(format!("source {name}")),
                    uri: Some(uri),
                    digest,
                    annotations: BTreeMap::from([("kiln_object", "tree".to_owned())]),
                });
            }
            Event::DriverCreated {
                driver,
                kind,
                image: Some(image),
                ..
            } => dependencies.push(Resource {
                name: Some(format!("image of {driver}")),
                uri: Some(format!("kiln-image:{driver}")),
                digest: BTreeMap::from([("blake3", image.to_hex())]),
                annotations: BTreeMap::from([("driver_kind", kind)]),
            }),
            Event::ObjectPlaced { name, object } => dependencies.push(Resource {
                name: Some(format!("object {name}")),
                uri: None,
                digest: BTreeMap::from([("blake3", object.digest.to_hex())]),
                annotations: BTreeMap::from([("kiln_object", object.kind.name().to_owned())]),
            }),
            Event::JobEnd {
                job,
                status,
                log,
                output_layer,
                ..
            } => {
                if let Some(log) = log {
                    byproducts.push(log_resource(&job, log));
                }
                if let (JobStatus::Passed, Some(layer)) = (status, output_layer) {
                    layers.push((job, layer));
                }
            }
            Event::JobCached {
                job,
                log,
                output_layer,
                ..
            } => {
                if let Some(log) = log {
                    byproducts.push(log_resource(&job, log));
                }
                layers.push((job, output_layer));
            }
            _ => {}
        }
    }
    // A statement needs a subject: a build without artifacts attests the
    // output layers of its jobs instead (tree digests, no sha256).
    if subjects.is_empty() {
        layers.sort();
        subjects = layers
            .into_iter()
            .map(|(job, layer)| {
                json!({
                    "name": format!("output layer of job {job}"),
                    "digest": { "blake3": layer.to_hex() },
                    "annotations": { "kiln_object": "tree" },
                })
            })
            .collect();
    }

    byproducts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut metadata = json!({
        "invocationId": build.0.to_string(),
        "startedOn": rfc3339(record.started),
    });
    if let Some(finished) = record.finished {
        metadata["finishedOn"] = Value::String(rfc3339(finished));
    }
    Ok(json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "manifest": invocation.manifest.display().to_string(),
                    "args": invocation.args,
                },
                "internalParameters": {
                    "owner": record.owner,
                    "noCache": invocation.no_cache,
                    "check": invocation.check,
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": { "kiln": env!("CARGO_PKG_VERSION") },
                },
                "metadata": metadata,
                "byproducts": byproducts,
            },
        },
    }))
}

/// Records the statement of a finished build: stored as a blob and attached
/// as [`PROVENANCE_ARTIFACT`]. Returns the blob's digest, or `None` for a
/// build that produced nothing to attest (no artifact, no job output).
pub fn record(
    store: &mut Store,
    build: BuildId,
    invocation: &Invocation,
) -> Result<Option<B3Digest>, ReproError> {
    let statement = statement(store, build, invocation)?;
    if statement["subject"].as_array().is_none_or(Vec::is_empty) {
        return Ok(None);
    }
    let mut bytes = serde_json::to_vec_pretty(&statement)?;
    bytes.push(b'\n');
    let roots = store.temp_roots()?;
    let digest = store.add_bytes(&bytes, &roots)?.object.digest;
    store.add_artifact(build, PROVENANCE_ARTIFACT, ObjectRef::blob(digest))?;
    Ok(Some(digest))
}

/// The recorded statement of `build`, as stored (pretty JSON).
pub fn load(store: &Store, build: BuildId) -> Result<Option<Vec<u8>>, ReproError> {
    let found = store
        .artifacts(build)?
        .into_iter()
        .rev()
        .find(|artifact| is_provenance(&artifact.name));
    match found {
        Some(artifact) => Ok(Some(store.blob_bytes(&artifact.object.digest)?)),
        None => Ok(None),
    }
}

/// One subject per file: a blob artifact is one, a tree artifact gives one
/// per file below it (`NAME/path`), so each can be checked with `sha256sum`.
fn subjects_of(store: &Store, name: &str, object: ObjectRef) -> Result<Vec<Value>, ReproError> {
    let mut files: Vec<(String, B3Digest)> = Vec::new();
    match object.kind {
        ObjectKind::Blob => files.push((name.to_owned(), object.digest)),
        ObjectKind::Tree => {
            let mut pending = vec![(name.to_owned(), object.digest)];
            while let Some((path, digest)) = pending.pop() {
                for entry in store.tree(&digest)?.entries() {
                    let child =
                        format!("{path}/{}", String::from_utf8_lossy(entry.name.as_bytes()));
                    match &entry.node {
                        Node::File { digest, .. } => files.push((child, *digest)),
                        Node::Directory { digest, .. } => pending.push((child, *digest)),
                        Node::Symlink { .. } | Node::Whiteout => {}
                    }
                }
            }
            files.sort();
        }
    }
    files
        .into_iter()
        .map(|(path, digest)| {
            let mut hasher = HashWriter(Sha256::new());
            store.read_blob(&digest, &mut hasher)?;
            Ok(json!({
                "name": path,
                "digest": {
                    "blake3": digest.to_hex(),
                    "sha256": hex(&hasher.0.finalize()),
                },
            }))
        })
        .collect()
}

fn log_resource(job: &str, log: B3Digest) -> Resource {
    Resource {
        name: Some(format!("log of job {job}")),
        uri: None,
        digest: BTreeMap::from([("blake3", log.to_hex())]),
        annotations: BTreeMap::new(),
    }
}

struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rfc3339(unix_ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalise(path: &std::path::Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::RootDir => parts.clear(),
            other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn paths_normalise_without_the_file_system() {
        assert_eq!(normalise(std::path::Path::new("/a/./b/../c")), "/a/c");
    }
}
