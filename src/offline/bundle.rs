//! Air-gapped bundles: everything needed to rerun a build on another store.
//!
//! ```text
//! "KILNAIRB" u32:format version u32:n  n bytes of header JSON  [32]blake3 of the header
//! a store bundle (kiln-store's export: chunks, blobs, trees, roots, end record)
//! ```
//! The header names the bundle's tree, whose closure carries the rest:
//! `bundle.json` (the [`BundleIndex`]), `project/` (the manifest's directory
//! as the build saw it: its path sources and manifest files) and
//! `results/<n>/…` (each job result's output layer, log and artifacts).
//! Fetched sources and images travel as their named roots. Import checks
//! the header, then lets the store verify every digest before it writes
//! anything (all or nothing), then records the job results and writes the
//! project out.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use kiln_grammar::manifest::{Manifest, Source};
use kiln_store::{
    B3Digest, BuildId, JobArtifact, Node, ObjectKind, ObjectRef, RestoreOptions, RootKind,
    RootSelector, Store,
};

use super::OfflineError;
use super::check::image_names;
use super::fetch::{self, root_name};
use super::lock::{LOCK_FILE, Lock};
use crate::image::HOST_IMAGE;
use crate::layers::DirBuilder;

const MAGIC: &[u8; 8] = b"KILNAIRB";
/// Bumped when the layout changes; a newer bundle is refused. Version 2
/// declares the bytes its project expands to (version 1 bundles are still
/// read; only the import's cap bounds them).
pub const BUNDLE_VERSION: u32 = 2;
/// What `kiln bundle import` writes out at most, unless `--max-size` says
/// otherwise.
pub const DEFAULT_MAX_EXPANDED_BYTES: u64 = 16 << 30;
const MAX_HEADER_BYTES: u32 = 1 << 20;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Header {
    format: u32,
    kiln_version: String,
    name: String,
    tree: B3Digest,
    /// The bytes of files its project expands to (from version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expanded_size: Option<u64>,
}

/// What [`read_header`] finds.
pub struct HeaderInfo {
    pub name: String,
    pub tree: B3Digest,
    pub expanded_size: Option<u64>,
}

/// What `bundle.json` inside the bundle says.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BundleIndex {
    pub format: u32,
    /// A name for the directory the project is written to.
    pub name: String,
    /// The manifest's path inside `project/`.
    pub manifest: String,
    /// The build it was made from, in the exporting store.
    pub build: Option<i64>,
    pub lock: Option<Lock>,
    /// The `--arg NAME=VALUE`s the manifest was loaded with; a rerun needs
    /// the same ones to get the same keys.
    #[serde(default)]
    pub args: Vec<String>,
    pub job_results: Vec<BundledResult>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BundledResult {
    pub job: String,
    pub key: B3Digest,
    pub output_layer: B3Digest,
    pub log: Option<B3Digest>,
    pub artifacts: Vec<JobArtifact>,
    /// By the exporting store's key (`bundle create --sign`): without a
    /// signature by a key the importing store trusts, the result is kept
    /// as untrusted and never served as a cache hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::trust::ResultSignature>,
}

impl BundledResult {
    fn signed_fields(&self) -> crate::trust::SignedFields<'_> {
        crate::trust::SignedFields {
            key: &self.key,
            output_layer: &self.output_layer,
            log: self.log.as_ref(),
            artifacts: &self.artifacts,
        }
    }
}

/// What a bundle is made of.
pub struct BundleSpec<'a> {
    pub manifest_path: &'a Path,
    pub manifest: &'a Manifest,
    /// The manifest and its imports as read.
    pub files: &'a [(PathBuf, String)],
    /// The build whose job results travel with it.
    pub build: Option<BuildId>,
    /// The `--arg`s the manifest was loaded with.
    pub args: &'a [String],
    /// Signs every job result (`bundle create --sign NAME`).
    pub sign: Option<&'a crate::trust::SecretKey>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CreateReport {
    pub name: String,
    pub tree: Option<B3Digest>,
    pub sources: usize,
    pub images: usize,
    pub job_results: usize,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

/// Writes the bundle of `spec` to `out`.
pub fn create(
    store: &mut Store,
    spec: &BundleSpec<'_>,
    out: &mut dyn Write,
) -> Result<CreateReport, OfflineError> {
    let roots = store.temp_roots()?;
    let manifest = spec.manifest;
    let mut report = CreateReport {
        name: bundle_name(spec),
        ..CreateReport::default()
    };
    let mut selectors = Vec::new();
    let mut tree = DirBuilder::new();

    // The project: path sources, then the manifest files over them.
    for source in &manifest.sources {
        match source {
            Source::Path { path, .. } => {
                let relative = inside(&manifest.dir, &path.absolute).ok_or_else(|| {
                    OfflineError::file(
                        &path.absolute,
                        "a path source outside the manifest's directory cannot be bundled",
                    )
                })?;
                let resolved = crate::resolve::resolve_source(store, &roots, manifest, source)?;
                let node = node_of(store, resolved.object)?;
                tree.place(store, &join("project", &relative), node)?;
                report.sources += 1;
            }
            Source::Git {
                url, reference, ..
            } if fetch::is_remote(url) => {
                if fetch::stored_source(store, &roots, url, reference.as_deref())?.is_none() {
                    return Err(crate::resolve::ResolveError::Remote { url: url.clone() }.into());
                }
                selectors.push(RootSelector::Named {
                    kind: RootKind::Source,
                    name: root_name(url, reference.as_deref()),
                });
                report.sources += 1;
            }
            Source::Git { url, .. } => report.warnings.push(format!(
                "source {url} is a local git repository: it is not bundled (the other machine needs it at the same place)"
            )),
        }
    }
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (path, text) in spec.files {
        let relative = inside(&manifest.dir, path).ok_or_else(|| {
            OfflineError::file(
                path,
                "a manifest file outside the manifest's directory cannot be bundled",
            )
        })?;
        files.push((relative, text.clone().into_bytes()));
    }
    let lock_path = manifest.dir.join(LOCK_FILE);
    let lock = match std::fs::read(&lock_path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let lock = Lock::parse(&lock_path, &text)?;
            files.push((LOCK_FILE.to_owned(), bytes));
            Some(lock)
        }
        Err(_) => None,
    };
    for (relative, bytes) in &files {
        let blob = store.add_bytes(bytes, &roots)?.object;
        tree.place(
            store,
            &join("project", relative),
            Node::File {
                digest: blob.digest,
                size: bytes.len() as u64,
                executable: false,
            },
        )?;
    }

    for image in image_names(manifest) {
        if image == HOST_IMAGE {
            report.warnings.push(
                "the host image is this machine's system: it is not bundled, and jobs on it are cached elsewhere only on an identical host".into(),
            );
            continue;
        }
        let resolved = crate::image::resolve(store, &image)?;
        selectors.push(if image.starts_with(kiln_store::DIGEST_PREFIX) {
            RootSelector::Object(resolved.digest())
        } else {
            RootSelector::Named {
                kind: RootKind::Image,
                name: image.clone(),
            }
        });
        report.images += 1;
    }

    // Job results of the build.
    let mut job_results = Vec::new();
    if let Some(build) = spec.build {
        for job in store.build_jobs(build)? {
            let Some(key) = job.key else { continue };
            let Some(result) = store.lookup_job_result(&key)? else {
                continue;
            };
            if result.status != kiln_store::JOB_PASSED {
                continue;
            }
            let base = format!("results/{}", job_results.len());
            let layer = ObjectRef::tree(result.output_layer);
            tree.place(store, &format!("{base}/layer"), node_of(store, layer)?)?;
            if let Some(log) = result.log {
                tree.place(
                    store,
                    &format!("{base}/log"),
                    node_of(store, ObjectRef::blob(log))?,
                )?;
            }
            for (index, artifact) in result.artifacts.iter().enumerate() {
                tree.place(
                    store,
                    &format!("{base}/artifacts/{index}"),
                    node_of(store, artifact.object)?,
                )?;
            }
            let mut bundled = BundledResult {
                job: job.name.clone(),
                key,
                output_layer: result.output_layer,
                log: result.log,
                artifacts: result.artifacts,
                signature: None,
            };
            bundled.signature = spec
                .sign
                .map(|secret| secret.sign_result(&bundled.signed_fields()));
            job_results.push(bundled);
        }
    }
    report.job_results = job_results.len();
    let index = BundleIndex {
        format: BUNDLE_VERSION,
        name: report.name.clone(),
        manifest: inside(&manifest.dir, spec.manifest_path).unwrap_or_else(|| "build.kiln".into()),
        build: spec.build.map(|b| b.0),
        lock,
        args: spec.args.to_vec(),
        job_results,
    };
    let index_bytes = serde_json::to_vec_pretty(&index)
        .map_err(|error| OfflineError::file(spec.manifest_path, error))?;
    let index_blob = store.add_bytes(&index_bytes, &roots)?.object;
    tree.place(
        store,
        "bundle.json",
        Node::File {
            digest: index_blob.digest,
            size: index_bytes.len() as u64,
            executable: false,
        },
    )?;
    let Node::Directory { digest, .. } = tree.write(store, &roots)? else {
        return Err(OfflineError::file(
            spec.manifest_path,
            "internal error: the bundle is not a tree",
        ));
    };
    selectors.insert(0, RootSelector::Object(digest));
    report.tree = Some(digest);

    let expanded_size = match store
        .tree(&digest)?
        .entries()
        .iter()
        .find(|e| e.name.as_bytes() == b"project")
    {
        Some(entry) => entry.node.size(),
        None => 0,
    };
    let header = Header {
        format: BUNDLE_VERSION,
        kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
        name: report.name.clone(),
        tree: digest,
        expanded_size: Some(expanded_size),
    };
    let header_bytes = serde_json::to_vec(&header)
        .map_err(|error| OfflineError::file(spec.manifest_path, error))?;
    let mut prefix = Vec::with_capacity(header_bytes.len() + 48);
    prefix.extend_from_slice(MAGIC);
    prefix.extend_from_slice(&BUNDLE_VERSION.to_le_bytes());
    prefix.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
    prefix.extend_from_slice(&header_bytes);
    prefix.extend_from_slice(B3Digest::of(&header_bytes).as_bytes());
    out.write_all(&prefix)
        .map_err(|error| OfflineError::file(Path::new("<bundle>"), error))?;
    let exported = store.export(&selectors, out)?;
    report.bytes = prefix.len() as u64 + exported.bytes;
    drop(roots);
    Ok(report)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportReport {
    pub name: String,
    pub directory: PathBuf,
    pub manifest: PathBuf,
    pub job_results: usize,
    /// Results signed by a trusted key: served as cache hits.
    pub trusted_results: usize,
    /// The trusted keys that signed them, by name.
    pub signed_by: Vec<String>,
    /// Results without a trusted signature: kept, never served (a run
    /// rebuilds them; `--check` compares with them).
    pub untrusted_results: usize,
    pub args: Vec<String>,
    pub objects: u64,
    pub already_present: u64,
    /// Roots the import replaced (only with `--force`).
    pub replaced: Vec<kiln_store::ReplacedRoot>,
}

/// What an import accepts from a bundle.
#[derive(Clone, Copy, Debug)]
pub struct ImportPolicy<'a> {
    /// Whether its roots may replace existing ones (`--force`).
    pub roots: kiln_store::ImportOptions,
    /// The keys whose signed job results become cache hits.
    pub trusted: &'a [crate::trust::PublicKey],
    /// The most bytes of files its project may expand to (`--max-size`).
    pub max_size: u64,
}

impl Default for ImportPolicy<'_> {
    fn default() -> Self {
        ImportPolicy {
            roots: kiln_store::ImportOptions::default(),
            trusted: &[],
            max_size: DEFAULT_MAX_EXPANDED_BYTES,
        }
    }
}

/// Reads the bundle's header: its format version and the name it suggests.
pub fn read_header(path: &Path, input: &mut dyn Read) -> Result<HeaderInfo, OfflineError> {
    let bad = |reason: String| OfflineError::Bundle {
        path: path.display().to_string(),
        reason,
    };
    let mut fixed = [0u8; 16];
    input
        .read_exact(&mut fixed)
        .map_err(|_| bad("truncated: shorter than a bundle header".into()))?;
    if &fixed[..8] != MAGIC {
        return Err(bad(
            "not a kiln bundle (made by `kiln bundle create`)".into()
        ));
    }
    let version = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    if version > BUNDLE_VERSION {
        return Err(bad(format!(
            "made by a newer kiln (bundle format {version}; this kiln reads up to {BUNDLE_VERSION}): upgrade kiln to import it"
        )));
    }
    if version == 0 {
        return Err(bad("bundle format 0 does not exist (corrupt?)".into()));
    }
    let length = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
    if length > MAX_HEADER_BYTES {
        return Err(bad(format!("header claims {length} bytes (corrupt?)")));
    }
    let mut header_bytes = vec![0u8; length as usize];
    input
        .read_exact(&mut header_bytes)
        .map_err(|_| bad("truncated in its header".into()))?;
    let mut checksum = [0u8; 32];
    input
        .read_exact(&mut checksum)
        .map_err(|_| bad("truncated in its header".into()))?;
    if B3Digest::of(&header_bytes).as_bytes() != &checksum {
        return Err(bad(
            "its header does not match its checksum (corrupt)".into()
        ));
    }
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|error| bad(format!("malformed header: {error}")))?;
    if header.format != version {
        return Err(bad(
            "its header disagrees with its format version (corrupt)".into(),
        ));
    }
    Ok(HeaderInfo {
        name: header.name,
        tree: header.tree,
        expanded_size: header.expanded_size,
    })
}

/// Imports the bundle at `path` into `store` and writes its project into
/// `directory` (default: `./<bundle name>`), which must be absent or empty.
pub fn import(
    store: &mut Store,
    path: &Path,
    directory: Option<&Path>,
    policy: &ImportPolicy<'_>,
) -> Result<ImportReport, OfflineError> {
    let max_size = policy.max_size;
    let bad = |reason: String| OfflineError::Bundle {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|error| bad(format!("cannot open: {error}")))?;
    let mut input = std::io::BufReader::new(file);
    let HeaderInfo {
        name,
        tree,
        expanded_size,
    } = read_header(path, &mut input)?;
    // An amplifying bundle (one chunk named by many files) is refused before
    // anything is imported when it says so, and after the check below when
    // it lies.
    if let Some(declared) = expanded_size.filter(|size| *size > max_size) {
        return Err(bad(format!(
            "it expands to {} of files, over the limit of {} (--max-size): nothing imported",
            bytesize::ByteSize(declared),
            bytesize::ByteSize(max_size)
        )));
    }
    let directory = match directory {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from(directory_name(&name)),
    };
    let directory =
        std::path::absolute(&directory).map_err(|error| OfflineError::file(&directory, error))?;
    let usable = match std::fs::read_dir(&directory) {
        Ok(mut entries) => entries.next().is_none(),
        Err(error) => error.kind() == std::io::ErrorKind::NotFound,
    };
    if !usable {
        return Err(OfflineError::file(
            &directory,
            "exists and is not empty: choose another directory with -C",
        ));
    }
    let imported = store
        .import_with(&mut input, policy.roots)
        .map_err(|error| {
            let message = error.to_string();
            if message.contains("nothing imported") {
                bad(message)
            } else {
                bad(format!("rejected, nothing imported: {message}"))
            }
        })?;
    // The store verified the closure; now it must hold what the header names.
    let roots = store.temp_roots()?;
    if store.object_kind(&tree).ok() != Some(ObjectKind::Tree) {
        return Err(bad(format!(
            "its content does not hold the tree {tree} its header names"
        )));
    }
    roots.hold(ObjectRef::tree(tree))?;
    let top = store.tree(&tree)?;
    let entry = |name: &str| {
        top.entries()
            .iter()
            .find(|e| e.name.as_bytes() == name.as_bytes())
            .map(|e| e.node.clone())
    };
    let Some(Node::File {
        digest: index_digest,
        ..
    }) = entry("bundle.json")
    else {
        return Err(bad("it has no bundle.json".into()));
    };
    let project = entry("project");
    let real_size = project.as_ref().map_or(0, Node::size);
    if real_size > max_size || expanded_size.is_some_and(|declared| real_size > declared) {
        return Err(bad(format!(
            "its project expands to {}, more than it declares ({}) or the limit ({}, --max-size): \
             no job result recorded, no file written",
            bytesize::ByteSize(real_size),
            expanded_size.map_or("nothing".to_owned(), |size| bytesize::ByteSize(size)
                .to_string()),
            bytesize::ByteSize(max_size)
        )));
    }
    let mut index_bytes = Vec::new();
    store.read_blob(&index_digest, &mut index_bytes)?;
    let index: BundleIndex = serde_json::from_slice(&index_bytes)
        .map_err(|error| bad(format!("malformed bundle.json: {error}")))?;
    let (mut trusted_results, mut untrusted_results) = (0, 0);
    let mut signed_by: Vec<String> = Vec::new();
    for result in &index.job_results {
        let signer = result.signature.as_ref().and_then(|signature| {
            crate::trust::Keyring::verify(policy.trusted, &result.signed_fields(), signature)
        });
        let status = match signer {
            Some(key) => {
                if !signed_by.contains(&key.name) {
                    signed_by.push(key.name);
                }
                trusted_results += 1;
                kiln_store::JOB_PASSED
            }
            None => {
                untrusted_results += 1;
                // Never in place of a result this store trusts.
                if store
                    .lookup_job_result(&result.key)?
                    .is_some_and(|existing| existing.status == kiln_store::JOB_PASSED)
                {
                    continue;
                }
                kiln_store::JOB_UNTRUSTED
            }
        };
        store.record_job_result(
            result.key,
            result.output_layer,
            result.log,
            status,
            result.artifacts.clone(),
        )?;
    }
    match project {
        Some(Node::Directory { digest, .. }) => {
            store.restore(&digest, &directory, &RestoreOptions::default())?;
        }
        _ => std::fs::create_dir_all(&directory)
            .map_err(|error| OfflineError::file(&directory, error))?,
    }
    Ok(ImportReport {
        name: index.name,
        manifest: directory.join(&index.manifest),
        directory,
        job_results: index.job_results.len(),
        trusted_results,
        signed_by,
        untrusted_results,
        args: index.args,
        objects: imported.chunks + imported.blobs + imported.trees,
        already_present: imported.already_present,
        replaced: imported.replaced,
    })
}

fn bundle_name(spec: &BundleSpec<'_>) -> String {
    let project = spec
        .manifest
        .dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".into());
    match spec.build {
        Some(build) => format!("{project}-build-{build}"),
        None => project,
    }
}

/// The header's name as a single, harmless path component: it comes from
/// the bundle, so it must not steer the import elsewhere (`..`, `/`).
fn directory_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.is_empty() {
        "bundle".to_owned()
    } else {
        cleaned.to_owned()
    }
}

/// `path` relative to `dir` (`.` for `dir` itself), or `None` outside it.
fn inside(dir: &Path, path: &Path) -> Option<String> {
    let absolute = std::path::absolute(path).ok()?;
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let absolute = std::fs::canonicalize(&absolute).unwrap_or(absolute);
    let relative = absolute.strip_prefix(&dir).ok()?;
    let text = relative.to_str()?.to_owned();
    Some(if text.is_empty() { ".".into() } else { text })
}

fn join(base: &str, relative: &str) -> String {
    if relative == "." {
        base.to_owned()
    } else {
        format!("{base}/{relative}")
    }
}

fn node_of(store: &Store, object: ObjectRef) -> Result<Node, OfflineError> {
    let size = store.object_size(object)?;
    Ok(match object.kind {
        ObjectKind::Tree => Node::Directory {
            digest: object.digest,
            size,
        },
        ObjectKind::Blob => Node::File {
            digest: object.digest,
            size,
            executable: false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_directory_never_leaves_the_current_one() {
        assert_eq!(directory_name("app-build-1"), "app-build-1");
        assert_eq!(directory_name("../../etc"), "_.._etc");
        assert_eq!(directory_name("/abs"), "_abs");
        assert_eq!(directory_name(".."), "bundle");
        assert_eq!(directory_name(""), "bundle");
    }

    #[test]
    fn headers_are_checked_before_anything_else() {
        let path = Path::new("b");
        let error = |bytes: &[u8]| {
            read_header(path, &mut &bytes[..])
                .map(|info| info.name)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert!(error(b"KILN").contains("truncated"));
        assert!(error(b"NOTABUNDLE123456").contains("not a kiln bundle"));
        let mut newer = MAGIC.to_vec();
        newer.extend_from_slice(&7u32.to_le_bytes());
        newer.extend_from_slice(&0u32.to_le_bytes());
        assert!(error(&newer).contains("made by a newer kiln (bundle format 7"));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(error(&huge).contains("corrupt"));
        let header = br#"{"format":1,"kiln_version":"0","name":"n","tree":"blake3:0000000000000000000000000000000000000000000000000000000000000000"}"#;
        let mut good = MAGIC.to_vec();
        good.extend_from_slice(&1u32.to_le_bytes());
        good.extend_from_slice(&(header.len() as u32).to_le_bytes());
        good.extend_from_slice(header);
        good.extend_from_slice(B3Digest::of(header).as_bytes());
        let name = read_header(path, &mut &good[..]).unwrap().name;
        assert_eq!(name, "n");
        let last = good.len() - 1;
        good[last] ^= 1;
        assert!(error(&good).contains("checksum"));
    }
}
