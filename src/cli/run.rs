//! `kiln run`, `kiln kill`, `kiln cache ls|rm` (`plan` and `explain` live in
//! plan.rs).
//!
//! Exit codes of `kiln run` (docs/cli.md): 0 Passed or Passed With
//! Failures, 2 invalid manifest, 3 Failed, 4 Killed, 5 Timed Out, 1 any
//! other error (the build could not be started).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use kiln_grammar::load::{self, LoadError};
use kiln_grammar::manifest::Manifest;
use kiln_store::{BuildStatus, RootKind, Store};
use tokio::sync::watch;

use crate::cli::manifest::{ManifestInputs, parse_args};
use crate::cli::{EXIT_FAILURE, EXIT_MANIFEST};
use crate::driver::Stop;
use crate::events::{LocalBus, LocalOptions};
use crate::graph::BuildGraph;
use crate::repro::provenance::{Invocation, ManifestFile};
use crate::repro::{CheckOutcome, EXIT_NOT_REPRODUCIBLE};
use crate::scheduler::{RunOptions, run_build};

pub const EXIT_BUILD_FAILED: u8 = 3;
pub const EXIT_BUILD_KILLED: u8 = 4;
pub const EXIT_BUILD_TIMED_OUT: u8 = 5;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The manifest [default: build.kiln, else .kiln/*.kiln, else .djinn.yml]
    #[arg(value_name = "MANIFEST")]
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub inputs: crate::cli::manifest::ManifestInputs,
    /// Jobs running at once [default: the number of cores]
    #[arg(long, short = 'j', value_name = "N", value_parser = parse_job_count)]
    pub jobs: Option<usize>,
    /// Run every job, even those with a cached result
    #[arg(long)]
    pub no_cache: bool,
    /// Print every event as a JSON line on stdout
    #[arg(long)]
    pub json: bool,
    /// Never touch the network: fail before any job if a remote source is
    /// not fetched or an image not imported (lists all of them)
    #[arg(long)]
    pub offline: bool,
    /// Refuse to run if anything resolves differently than kiln.lock says
    #[arg(long)]
    pub locked: bool,

    /// Rerun every job even when cached and compare its output layer and
    /// artifacts with the recorded result (exit 6 when one differs)
    #[arg(long)]
    pub check: bool,
    /// Bytes of each job's output its log keeps; past it the log ends with a
    /// marker line and the rest is discarded (the job keeps running)
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::cli::parse_byte_size)]
    pub log_limit: u64,
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// A build number, or `last`
    pub build: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// List the build caches (`caches = [ { key; paths; } ]`)
    Ls {
        /// Print the caches as JSON: key, digest, size, last use
        #[arg(long)]
        json: bool,
    },
    /// Remove the cache saved under KEY
    Rm {
        /// The cache's key (`kiln cache ls` lists them)
        key: String,
    },
}

/// `--jobs N`: at least 1 (0 would run nothing and wait forever).
fn parse_job_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (how many jobs run at once)".into()),
        Ok(count) => Ok(count),
        Err(error) => Err(format!("{error} (a whole number of jobs, at least 1)")),
    }
}

/// The manifest given, else `build.kiln`, else the only `.kiln/*.kiln`,
/// else `.djinn.yml`, in the current directory.
pub fn find_manifest(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    if Path::new("build.kiln").is_file() {
        return Ok(PathBuf::from("build.kiln"));
    }
    if let Ok(entries) = std::fs::read_dir(".kiln") {
        let mut found: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "kiln"))
            .collect();
        found.sort();
        match found.len() {
            0 => {}
            1 => return Ok(found.remove(0)),
            _ => bail!(
                "several manifests in .kiln/ ({}): name the one to use",
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    if Path::new(".djinn.yml").is_file() {
        return Ok(PathBuf::from(".djinn.yml"));
    }
    bail!("no manifest here: expected build.kiln, .kiln/*.kiln or .djinn.yml (or name one)")
}

/// Loads and compiles; `Err(code)` when the manifest is invalid (its
/// diagnostics are printed).
pub(crate) fn load_manifest(
    path: &Path,
    inputs: &ManifestInputs,
) -> anyhow::Result<Result<(Manifest, BuildGraph), ExitCode>> {
    Ok(load_manifest_files(path, inputs)?.map(|(manifest, graph, _)| (manifest, graph)))
}

/// A loaded manifest, its graph, and the files it was read from.
type LoadedManifest = (Manifest, BuildGraph, Vec<ManifestFile>);

/// [`load_manifest`], also returning the files read (the manifest and its
/// imports, as read) for the build's provenance.
fn load_manifest_files(
    path: &Path,
    inputs: &ManifestInputs,
) -> anyhow::Result<Result<LoadedManifest, ExitCode>> {
    let options = inputs.load_options()?;
    let loaded = load::load(path, &options);
    eprint!("{}", loaded.render_diagnostics());
    let manifest = match loaded.result {
        Ok(manifest) => manifest,
        Err(LoadError::Io(_)) => return Ok(Err(ExitCode::from(EXIT_FAILURE))),
        Err(LoadError::Invalid(_)) => return Ok(Err(ExitCode::from(EXIT_MANIFEST))),
    };
    let graph = BuildGraph::compile(&manifest).context("compiling the build graph")?;
    let files = loaded
        .sources
        .files()
        .map(|(_, file)| ManifestFile {
            path: manifest_key(&file.path),
            bytes: file.text.as_bytes().to_vec(),
        })
        .collect();
    Ok(Ok((manifest, graph, files)))
}

fn owner_of(manifest: &Manifest) -> String {
    manifest.dir.display().to_string()
}

/// How builds name their manifest (the key of `kiln explain`'s history):
/// its absolute path.
pub(crate) fn manifest_key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

pub fn run(store_dir: &Path, args: RunArgs) -> anyhow::Result<ExitCode> {
    let path = find_manifest(args.manifest.as_deref())?;
    let (manifest, graph, files) = match load_manifest_files(&path, &args.inputs)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    if args.offline {
        crate::cli::offline::check_offline(store_dir, &manifest)?;
    }
    if args.locked {
        crate::cli::offline::check_locked(store_dir, &path, &args.inputs)?;
    }

    let invocation = Invocation {
        manifest: manifest_key(&path),
        files,
        args: parse_args(&args.inputs.args)?.into_iter().collect(),
        no_cache: args.no_cache,
        check: args.check,
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let options = RunOptions {
        jobs: args.jobs.unwrap_or(cores).max(1),
        no_cache: args.no_cache,
        check: args.check,
        store_dir: store_dir.to_path_buf(),
        helper: std::env::current_exe().context("locating the kiln binary")?,
        owner: owner_of(&manifest),
        log_limit: args.log_limit,
    };
    // Open (and create) the store before the runtime: errors are plain.
    drop(
        Store::open(store_dir)
            .with_context(|| format!("opening the store {}", store_dir.display()))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(2))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let json = args.json;
    let outcome = runtime.block_on(async move {
        let bus = LocalBus::start(
            store_dir,
            &options.owner,
            &manifest_key(&path),
            &LocalOptions {
                json,
                ..LocalOptions::default()
            },
        )?;
        let (stop_sender, _) = watch::channel(None);
        let signals = watch_signals(stop_sender.clone())?;
        let build = kiln_store::BuildId(bus.build());
        let outcome = run_build(&manifest, graph, options, bus.emitter(), stop_sender).await;
        signals.abort();
        let finished = bus.finish().await;
        let outcome = outcome?;
        if let Err(error) = finished {
            eprintln!("warning: recording the build: {error}");
        }
        anyhow::Ok((build, outcome))
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    let (build, outcome) = outcome;
    if let Err(error) = Store::open(store_dir)
        .map_err(crate::repro::ReproError::from)
        .and_then(|mut store| crate::repro::provenance::record(&mut store, build, &invocation))
    {
        eprintln!("warning: recording the provenance of build {build}: {error}");
    }
    let status = outcome.status;
    if args.check {
        let count = |wanted: CheckOutcome| {
            outcome
                .checks
                .iter()
                .filter(|(_, outcome)| *outcome == wanted)
                .count()
        };
        let differs: Vec<&str> = outcome
            .checks
            .iter()
            .filter(|(_, outcome)| *outcome == CheckOutcome::Differs)
            .map(|(job, _)| job.as_str())
            .collect();
        eprintln!(
            "check: {} job(s) reproducible, {} NOT reproducible{}, {} unchecked",
            count(CheckOutcome::Reproducible),
            differs.len(),
            if differs.is_empty() {
                String::new()
            } else {
                format!(" ({})", differs.join(", "))
            },
            count(CheckOutcome::Unchecked)
        );
        if !differs.is_empty()
            && matches!(
                status,
                BuildStatus::Passed | BuildStatus::PassedWithFailures | BuildStatus::Failed
            )
        {
            return Ok(ExitCode::from(EXIT_NOT_REPRODUCIBLE));
        }
    }
    Ok(ExitCode::from(match status {
        BuildStatus::Passed | BuildStatus::PassedWithFailures => 0,
        BuildStatus::Killed => EXIT_BUILD_KILLED,
        BuildStatus::TimedOut => EXIT_BUILD_TIMED_OUT,
        _ => EXIT_BUILD_FAILED,
    }))
}

/// SIGINT and SIGTERM stop the build as Killed.
fn watch_signals(stop: watch::Sender<Option<Stop>>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        stop.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(Stop::Killed);
                true
            } else {
                false
            }
        });
    }))
}

pub fn kill(store_dir: &Path, args: KillArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(store_dir)?;
    let build = if args.build == "last" {
        store.last_build()?.context("there is no build")?
    } else {
        kiln_store::BuildId(
            args.build
                .parse()
                .with_context(|| format!("{:?} is not a build number or `last`", args.build))?,
        )
    };
    let record = store.build(build)?;
    if record.status.is_finished() {
        bail!(
            "build {build} is not running (it is {})",
            record.status.as_str()
        );
    }
    let pid = record
        .pid
        .with_context(|| format!("build {build} has no recorded process"))?;
    if record
        .host
        .as_deref()
        .is_some_and(|host| host != crate::events::local::hostname())
    {
        bail!(
            "build {build} runs on another host ({})",
            record.host.unwrap_or_default()
        );
    }
    let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("kiln"));
    if !alive {
        bail!("build {build} is not running (its process {pid} is gone)");
    }
    let pid = i32::try_from(pid).context("a process id out of range")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .with_context(|| format!("signalling process {pid}"))?;
    crate::cli::outln!("build {build}: sent SIGTERM to kiln process {pid}")?;
    Ok(ExitCode::SUCCESS)
}

pub fn cache(store_dir: &Path, command: CacheCommand) -> anyhow::Result<ExitCode> {
    let mut store = Store::open(store_dir)?;
    match command {
        CacheCommand::Ls { json: true } => {
            let caches: Vec<serde_json::Value> = store
                .list_roots(Some(RootKind::Cache))?
                .into_iter()
                .map(|root| {
                    serde_json::json!({
                        "key": root.name,
                        "digest": root.object.digest,
                        "size": store.object_size(root.object).unwrap_or(0),
                        "last_used": root.last_used,
                    })
                })
                .collect();
            crate::cli::print_json(&caches)?;
        }
        CacheCommand::Ls { json: false } => {
            let mut out = std::io::stdout().lock();
            for root in store.list_roots(Some(RootKind::Cache))? {
                let size = store.object_size(root.object).unwrap_or(0);
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    root.name,
                    root.object.digest,
                    bytesize::ByteSize(size),
                    root.last_used
                )?;
            }
        }
        CacheCommand::Rm { key } => {
            if !store.remove_root(RootKind::Cache, &key)? {
                bail!("no cache with key {key:?}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
