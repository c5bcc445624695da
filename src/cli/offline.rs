//! `kiln fetch`, `kiln lock`, `kiln bundle create|import`, and the checks
//! `kiln run --offline` / `--locked` make before a build starts.
//!
//! Exit codes (docs/cli.md): 0 success, 2 invalid manifest, 1 anything
//! else (unreachable remote, unknown ref, `rev` mismatch, drift, a rejected
//! bundle, something missing for an offline run).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use kiln_grammar::load::{self, LoadError};
use kiln_grammar::manifest::{Manifest, Source};
use kiln_store::{BuildId, Store};

use crate::cli::manifest::ManifestInputs;
use crate::cli::records::BuildSelector;
use crate::cli::run::find_manifest;
use crate::cli::{EXIT_FAILURE, EXIT_MANIFEST};
use crate::offline::bundle::{self, BundleSpec};
use crate::offline::check;
use crate::offline::fetch::{self, DEFAULT_REF};
use crate::offline::lock::{LOCK_FILE, Lock};

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The manifest [default: build.kiln, else .kiln/*.kiln, else .djinn.yml]
    #[arg(value_name = "MANIFEST")]
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub inputs: crate::cli::manifest::ManifestInputs,
}

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// The manifest [default: build.kiln, else .kiln/*.kiln, else .djinn.yml]
    #[arg(value_name = "MANIFEST")]
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub inputs: crate::cli::manifest::ManifestInputs,
}

#[derive(Debug, clap::Subcommand)]
pub enum BundleCommand {
    /// Write everything needed to rerun a build elsewhere into one file
    Create {
        /// A build number, `last`, or a manifest (its last build, if any)
        target: String,
        /// The bundle file to write
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Sign the job results with this store's key NAME (`kiln key
        /// generate NAME`): a store that trusts its public key serves them as
        /// cache hits; unsigned results are only kept
        #[arg(long, value_name = "NAME")]
        sign: Option<String>,
        #[command(flatten)]
        inputs: crate::cli::manifest::ManifestInputs,
    },
    /// Verify a bundle, add it to this store and write its project out
    Import {
        /// The bundle file (`kiln bundle create` wrote it)
        file: PathBuf,
        /// Where the project goes [default: ./<bundle name>]
        #[arg(short = 'C', value_name = "DIR")]
        directory: Option<PathBuf>,
        /// Let the bundle's roots replace existing roots naming other objects
        #[arg(long)]
        force: bool,
        /// Refuse a bundle whose project expands to more than SIZE of files
        /// (a small bundle can name one chunk many times)
        #[arg(long, value_name = "SIZE", default_value = "16GiB", value_parser = crate::cli::parse_byte_size)]
        max_size: u64,
    },
}

/// A loaded manifest and the files it was read from (manifest, imports).
pub struct LoadedManifest {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub files: Vec<(PathBuf, String)>,
}

/// Loads a manifest; `Err(code)` when it is invalid (diagnostics printed).
pub fn load_with_files(
    path: &Path,
    inputs: &ManifestInputs,
) -> anyhow::Result<Result<LoadedManifest, ExitCode>> {
    load_quietly(path, inputs, false)
}

fn load_quietly(
    path: &Path,
    inputs: &ManifestInputs,
    quiet: bool,
) -> anyhow::Result<Result<LoadedManifest, ExitCode>> {
    let options = inputs.load_options()?;
    let loaded = load::load(path, &options);
    if !quiet {
        eprint!("{}", loaded.render_diagnostics());
    }
    let files = loaded
        .sources
        .files()
        .map(|(_, file)| {
            let absolute = std::path::absolute(&file.path).unwrap_or_else(|_| file.path.clone());
            (absolute, file.text.to_string())
        })
        .collect();
    match loaded.result {
        Ok(manifest) => Ok(Ok(LoadedManifest {
            path: path.to_path_buf(),
            manifest,
            files,
        })),
        Err(LoadError::Io(_)) => Ok(Err(ExitCode::from(EXIT_FAILURE))),
        Err(LoadError::Invalid(_)) => Ok(Err(ExitCode::from(EXIT_MANIFEST))),
    }
}

/// `target` itself, or for a directory the manifest `kiln run` would use there.
fn manifest_in(target: &Path) -> anyhow::Result<PathBuf> {
    if !target.is_dir() {
        return find_manifest(Some(target));
    }
    for candidate in ["build.kiln", ".djinn.yml"] {
        let path = target.join(candidate);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "no manifest in {}: expected build.kiln or .djinn.yml (or name the file)",
        target.display()
    )
}

pub fn fetch(store_dir: &Path, args: FetchArgs) -> anyhow::Result<ExitCode> {
    let path = find_manifest(args.manifest.as_deref())?;
    let loaded = match load_with_files(&path, &args.inputs)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let mut store = Store::open(store_dir)
        .with_context(|| format!("opening the store {}", store_dir.display()))?;
    let roots = store.temp_roots()?;
    let mut failed = 0usize;
    let mut fetched = 0usize;
    let mut seen = std::collections::HashSet::new();
    for source in &loaded.manifest.sources {
        let Source::Git {
            url,
            reference,
            rev,
            ..
        } = source
        else {
            continue;
        };
        if !fetch::is_remote(url) || !seen.insert(fetch::root_name(url, reference.as_deref())) {
            continue;
        }
        let reference_text = reference.as_deref().unwrap_or(DEFAULT_REF);
        eprintln!("fetching {url} ({reference_text})");
        match fetch::fetch_source(
            &mut store,
            &roots,
            url,
            reference.as_deref(),
            rev.as_deref(),
        ) {
            Ok(stored) => {
                fetched += 1;
                crate::cli::outln!(
                    "fetched {} {} commit {} tree {}",
                    stored.url,
                    stored.reference,
                    stored.commit,
                    stored.tree
                )?;
            }
            Err(error) => {
                failed += 1;
                eprintln!("error: {error}");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} source(s) could not be fetched; nothing was recorded for them");
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    if fetched == 0 {
        eprintln!(
            "no remote git source in {}: nothing to fetch",
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn lock(store_dir: &Path, args: LockArgs) -> anyhow::Result<ExitCode> {
    let path = find_manifest(args.manifest.as_deref())?;
    let loaded = match load_with_files(&path, &args.inputs)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let mut store = Store::open(store_dir)?;
    let roots = store.temp_roots()?;
    let lock = Lock::compute(&mut store, &roots, &loaded.manifest, &loaded.files)?;
    let target = loaded.manifest.dir.join(LOCK_FILE);
    let previous = std::fs::read_to_string(&target).ok();
    let text = lock.to_text();
    if previous.as_deref() == Some(text.as_str()) {
        eprintln!("{} is up to date", target.display());
        return Ok(ExitCode::SUCCESS);
    }
    let temporary = target.with_extension("lock.tmp");
    std::fs::write(&temporary, &text)
        .and_then(|()| std::fs::rename(&temporary, &target))
        .with_context(|| format!("writing {}", target.display()))?;
    eprintln!(
        "wrote {}: manifest {}, {} source(s), {} image(s)",
        target.display(),
        lock.manifest.digest,
        lock.sources.len(),
        lock.images.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `kiln run --offline`: everything the build needs is in the store, else
/// the whole list of what is missing (and the build does not start).
pub fn check_offline(store_dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let store = Store::open(store_dir)?;
    let missing = check::missing(&store, manifest)?;
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(|m| format!("  - {m}")).collect();
    bail!(
        "--offline: {} thing(s) missing from the store, nothing was run:\n{}",
        missing.len(),
        list.join("\n")
    )
}

/// `kiln run --locked`: what the manifest resolves to now must be what
/// `kiln.lock` says, else the list of what drifted.
pub fn check_locked(store_dir: &Path, path: &Path, inputs: &ManifestInputs) -> anyhow::Result<()> {
    // `kiln run` has loaded it already and shown its warnings.
    let loaded = match load_quietly(path, inputs, true)? {
        Ok(loaded) => loaded,
        Err(_) => bail!("--locked: {} is not a valid manifest", path.display()),
    };
    let lock_path = loaded.manifest.dir.join(LOCK_FILE);
    let locked = Lock::read(&lock_path)?;
    let mut store = Store::open(store_dir)?;
    let roots = store.temp_roots()?;
    let now = Lock::compute(&mut store, &roots, &loaded.manifest, &loaded.files)?;
    let drift = locked.drift(&now);
    if drift.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = drift.iter().map(|d| format!("  - {d}")).collect();
    bail!(
        "--locked: {} resolves differently than {} (locked → now), nothing was run:\n{}\nrun `kiln lock` to accept the change",
        path.display(),
        lock_path.display(),
        list.join("\n")
    )
}

pub fn bundle(store_dir: &Path, command: BundleCommand) -> anyhow::Result<ExitCode> {
    match command {
        BundleCommand::Create {
            target,
            output,
            sign,
            inputs,
        } => create(store_dir, &target, &output, sign.as_deref(), &inputs),
        BundleCommand::Import {
            file,
            directory,
            force,
            max_size,
        } => {
            let mut store = Store::open(store_dir)?;
            let trusted = crate::trust::Keyring::new(store_dir).trusted()?;
            let policy = bundle::ImportPolicy {
                roots: kiln_store::ImportOptions {
                    replace_roots: force,
                },
                trusted: &trusted,
                max_size,
            };
            let report = bundle::import(&mut store, &file, directory.as_deref(), &policy)?;
            for replaced in &report.replaced {
                eprintln!(
                    "replaced root {}/{}: {} -> {}",
                    replaced.kind, replaced.name, replaced.old, replaced.new
                );
            }
            eprintln!(
                "imported {}: {} object(s) ({} already here), {} job result(s)",
                file.display(),
                report.objects,
                report.already_present,
                report.job_results
            );
            if report.trusted_results > 0 {
                eprintln!(
                    "  {} job result(s) signed by trusted key(s) {}: served as cache hits",
                    report.trusted_results,
                    report.signed_by.join(", ")
                );
            }
            if report.untrusted_results > 0 {
                eprintln!(
                    "  {} job result(s) without a trusted signature: kept as untrusted, \
                     `kiln run` rebuilds them (`kiln trust add PUBKEY` trusts a signer)",
                    report.untrusted_results
                );
            }
            crate::cli::outln!("{}", report.manifest.display())?;
            let args: String = report
                .args
                .iter()
                .map(|arg| format!(" --arg '{arg}'"))
                .collect();
            eprintln!(
                "to rebuild offline: cd {} && kiln run --offline{args}",
                report.directory.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn create(
    store_dir: &Path,
    target: &str,
    output: &Path,
    sign: Option<&str>,
    inputs: &ManifestInputs,
) -> anyhow::Result<ExitCode> {
    let secret = sign
        .map(|name| crate::trust::Keyring::new(store_dir).secret(name))
        .transpose()?;
    let mut store = Store::open(store_dir)?;
    let is_build = !Path::new(target).exists() && target.parse::<BuildSelector>().is_ok();
    let (manifest_path, build) = if is_build {
        let build = match target.parse::<BuildSelector>() {
            Ok(BuildSelector::Number(number)) => BuildId(number),
            _ => store.last_build()?.context("there is no build")?,
        };
        let record = store
            .build(build)
            .with_context(|| format!("no build {build} (`kiln builds` lists them)"))?;
        let manifest = record
            .manifest
            .with_context(|| format!("build {build} did not record its manifest"))?;
        (PathBuf::from(manifest), Some(build))
    } else {
        let path = manifest_in(Path::new(target))?;
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let key = key.display().to_string();
        let last = store
            .list_builds()?
            .into_iter()
            .filter(|b| b.manifest.as_deref() == Some(key.as_str()))
            .max_by_key(|b| b.id.0)
            .map(|b| b.id);
        (path, last)
    };
    let loaded = match load_with_files(&manifest_path, inputs)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let spec = BundleSpec {
        manifest_path: &loaded.path,
        manifest: &loaded.manifest,
        files: &loaded.files,
        build,
        args: &inputs.args,
        sign: secret.as_ref(),
    };
    let temporary = output.with_extension("partial");
    let file = std::fs::File::create(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let result = bundle::create(&mut store, &spec, &mut writer);
    let report = match result.and_then(|report| {
        use std::io::Write;
        writer
            .flush()
            .map_err(|error| crate::offline::OfflineError::file(&temporary, error))?;
        Ok(report)
    }) {
        Ok(report) => report,
        Err(error) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(error.into());
        }
    };
    std::fs::rename(&temporary, output).with_context(|| format!("writing {}", output.display()))?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    eprintln!(
        "wrote {} ({}): {} source(s), {} image(s), {} job result(s){}",
        output.display(),
        bytesize::ByteSize(report.bytes),
        report.sources,
        report.images,
        report.job_results,
        match build {
            Some(build) => format!(" of build {build}"),
            None => " (no build of this manifest yet: sources and images only)".into(),
        }
    );
    Ok(ExitCode::SUCCESS)
}
