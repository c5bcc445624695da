//! What past builds did: `builds`, `show`, `log`, `artifacts`, `pin`, `unpin`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kiln_store::{BuildId, BuildJob, BuildRecord, ObjectKind, RestoreOptions, Store};

use crate::cli::remote::RemoteArgs;
use crate::events::build_status_label;
use crate::events::console::duration;

/// A build number, or `last` for the newest build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildSelector {
    Number(i64),
    Last,
}

impl std::str::FromStr for BuildSelector {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "last" {
            return Ok(BuildSelector::Last);
        }
        match text.parse::<i64>() {
            Ok(number) if number > 0 => Ok(BuildSelector::Number(number)),
            _ => Err(format!(
                "{text:?} is not a build: give a build number (see `kiln builds`) or `last`"
            )),
        }
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BuildsArgs {
    #[command(subcommand)]
    pub command: Option<BuildsCommand>,
    /// Print the builds as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum BuildsCommand {
    /// Delete builds' records: jobs, events, logs and artifacts (never a
    /// running or pinned build); their data goes at the next gc
    Rm {
        /// Build numbers, or `last`
        #[arg(required = true)]
        builds: Vec<BuildSelector>,
    },
    /// Delete the records of every finished, unpinned build that ended
    /// longer ago than DURATION
    Prune {
        /// How old a build must be: `30d`, `12h`, `2weeks`
        #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_duration)]
        older_than: std::time::Duration,
        /// List what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A build number or `last`
    pub build: BuildSelector,
    /// Print the build, its jobs (with keys, logs, exit codes) and artifacts as JSON
    #[arg(long)]
    pub json: bool,
    /// Print the build's recorded events, one JSON envelope a line
    #[arg(long, conflicts_with = "json")]
    pub events: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// A build number or `last`
    pub build: BuildSelector,
    /// One job; without it, every job's log in order, each under a header
    pub job: Option<String>,
    /// Follow a running build: print output as it comes (from the start)
    /// until the job (or, without JOB, the build) ends
    #[arg(long, short = 'f')]
    pub follow: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Print the log(s) as JSON: build, job, status and the log's text
    /// (`null` for a job without one); an array without JOB
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ArtifactsArgs {
    #[command(subcommand)]
    pub command: Option<ArtifactsCommand>,
    /// A build number or `last`
    #[arg(required = true)]
    pub build: Option<BuildSelector>,
    /// Print the artifacts as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Write an artifact to PATH: a file (blob) or a directory (tree)
    Get {
        /// A build number or `last`
        build: BuildSelector,
        /// The artifact's name (`kiln artifacts BUILD` lists them)
        name: String,
        /// Where it goes: must not exist (a directory may exist if empty)
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// A build number or `last`
    pub build: BuildSelector,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// How a server names a selected build.
pub(crate) fn selector_path(selector: &BuildSelector) -> String {
    match selector {
        BuildSelector::Number(number) => number.to_string(),
        BuildSelector::Last => "last".to_owned(),
    }
}

/// Opens the store only if it exists: reading commands never create one.
pub(crate) fn open_existing(dir: &Path) -> anyhow::Result<Option<Store>> {
    open(dir)
}

/// The record of a selected build, or an error naming it.
pub(crate) fn resolve_build(
    store: Option<&Store>,
    selector: BuildSelector,
) -> anyhow::Result<BuildRecord> {
    resolve(store, selector)
}

/// Opens the store only if it exists: reading commands never create one.
fn open(dir: &Path) -> anyhow::Result<Option<Store>> {
    if !dir.join("index.sqlite").exists() {
        return Ok(None);
    }
    let mut store =
        Store::open(dir).with_context(|| format!("opening the store at {}", dir.display()))?;
    // A build whose process died shows as failed, not running, from now on.
    if let Err(error) = store.fail_dead_builds() {
        eprintln!("warning: checking for builds whose process died: {error}");
    }
    Ok(Some(store))
}

fn resolve(store: Option<&Store>, selector: BuildSelector) -> anyhow::Result<BuildRecord> {
    let id = match (selector, store) {
        (BuildSelector::Number(number), Some(_)) => BuildId(number),
        (BuildSelector::Last, Some(store)) => match store.last_build()? {
            Some(id) => id,
            None => bail!("there is no build yet"),
        },
        (BuildSelector::Number(number), None) => bail!("no build {number} (there is no build yet)"),
        (BuildSelector::Last, None) => bail!("there is no build yet"),
    };
    let store = store.context("there is no build yet")?;
    match store.build(id) {
        Ok(record) => Ok(record),
        Err(kiln_store::StoreError::UnknownBuild(number)) => {
            bail!("no build {number} (`kiln builds` lists them)")
        }
        Err(other) => Err(other.into()),
    }
}

/// A build recorded as running whose process on this host is gone was
/// killed hard or crashed: say so rather than "running".
fn orphaned(record: &BuildRecord) -> Option<u32> {
    if record.status.is_finished() {
        return None;
    }
    let pid = record.pid?;
    let here = record.host.as_deref() == Some(crate::events::local::hostname().as_str());
    (here && !Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

fn status_label(record: &BuildRecord) -> String {
    match orphaned(record) {
        Some(_) => format!("{} (process gone)", build_status_label(record.status)),
        None => build_status_label(record.status).to_owned(),
    }
}

fn time(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn took(record: &BuildRecord) -> String {
    record
        .finished
        .map(|end| duration((end - record.started).max(0) as u64))
        .unwrap_or_else(|| "-".into())
}

fn build_json(record: &BuildRecord) -> serde_json::Value {
    serde_json::json!({
        "build": record.id.0,
        "status": record.status,
        "owner": record.owner,
        "manifest": record.manifest,
        "started": record.started,
        "finished": record.finished,
        "duration_ms": record.finished.map(|end| (end - record.started).max(0)),
        "pinned": record.pinned,
        "pid": record.pid,
        "host": record.host,
        "process_gone": orphaned(record).is_some(),
    })
}

use crate::cli::print_json;

/// Lays out rows under a header, columns two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `kiln builds rm` and `kiln builds prune`.
fn delete_builds(dir: &Path, command: BuildsCommand) -> anyhow::Result<ExitCode> {
    let Some(mut store) = open(dir)? else {
        bail!("there is no build yet");
    };
    let ids: Vec<BuildId> = match command {
        BuildsCommand::Rm { builds } => builds
            .into_iter()
            .map(|selector| resolve(Some(&store), selector).map(|record| record.id))
            .collect::<anyhow::Result<_>>()?,
        BuildsCommand::Prune {
            older_than,
            dry_run,
        } => {
            let cutoff = crate::events::now_ms() - older_than.as_millis() as i64;
            let ids = store.builds_finished_before(cutoff)?;
            if dry_run {
                for id in &ids {
                    crate::cli::outln!("would delete build {id}")?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            ids
        }
    };
    let mut refused = 0;
    for id in &ids {
        match store.delete_build(*id) {
            Ok(()) => crate::cli::outln!("deleted build {id}")?,
            Err(
                error @ (kiln_store::StoreError::BuildRunning(_)
                | kiln_store::StoreError::BuildPinned(_)),
            ) => {
                eprintln!("error: {error}");
                refused += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
    eprintln!(
        "deleted {} build(s); `kiln store gc` frees their logs and artifacts",
        ids.len() - refused
    );
    Ok(if refused > 0 {
        ExitCode::from(crate::cli::EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn builds(dir: &Path, args: BuildsArgs) -> anyhow::Result<ExitCode> {
    if let Some(command) = args.command {
        return delete_builds(dir, command);
    }
    let records = match args.remote.remote()? {
        Some(remote) => remote.builds()?,
        None => match &open(dir)? {
            Some(store) => store.list_builds()?,
            None => Vec::new(),
        },
    };
    if args.json {
        print_json(&serde_json::Value::Array(
            records.iter().map(build_json).collect(),
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() {
        eprintln!("no builds yet");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|record| {
            vec![
                record.id.to_string(),
                status_label(record),
                time(record.started),
                took(record),
                if record.pinned { "pinned" } else { "" }.to_owned(),
            ]
        })
        .collect();
    crate::cli::out!(
        "{}",
        table(&["BUILD", "STATUS", "STARTED", "DURATION", "PINNED"], &rows)
    )?;
    Ok(ExitCode::SUCCESS)
}

fn job_json(job: &BuildJob) -> serde_json::Value {
    serde_json::json!({
        "job": job.name,
        "stage": job.stage,
        "status": job.status,
        "cached": job.cached,
        "duration_ms": job.duration_ms,
        "key": job.key,
        "log": job.log,
        "exit_code": job.exit_code,
        "message": job.message,
        "started": job.started,
        "finished": job.finished,
    })
}

/// `timed_out` → `timed out`.
fn words(status: &str) -> String {
    status.replace('_', " ")
}

pub fn show(dir: &Path, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let (record, jobs, artifacts, checks, events) = match args.remote.remote()? {
        Some(remote) => {
            let (record, jobs, artifacts) = remote.build(&selector_path(&args.build))?;
            let events = if args.events {
                remote.events(record.id)?
            } else {
                Vec::new()
            };
            (record, jobs, artifacts, Vec::new(), events)
        }
        None => {
            let store = open(dir)?;
            let record = resolve(store.as_ref(), args.build)?;
            let store = store.context("there is no build yet")?;
            let events = if args.events {
                store
                    .build_events(record.id)?
                    .into_iter()
                    .map(|event| event.body)
                    .collect()
            } else {
                Vec::new()
            };
            let jobs = store.build_jobs(record.id)?;
            let artifacts = listed_artifacts(&store, record.id)?;
            let checks = crate::cli::repro::recorded_checks(&store, record.id)?;
            (record, jobs, artifacts, checks, events)
        }
    };
    if args.events {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for event in events {
            if writeln!(out, "{event}").is_err() {
                return Ok(ExitCode::SUCCESS);
            }
        }
        let _ = out.flush();
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        let mut value = build_json(&record);
        value["jobs"] = jobs.iter().map(job_json).collect();
        if !checks.is_empty() {
            value["checks"] = checks.iter().map(|(_, json)| json.clone()).collect();
        }
        value["artifacts"] = artifacts
            .iter()
            .map(|a| serde_json::json!({"name": a.name, "kind": a.object.kind, "digest": a.object.digest, "size": a.size}))
            .collect();
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!(
        "build {}: {}, started {}, took {}{}\n",
        record.id,
        status_label(&record),
        time(record.started),
        took(&record),
        if record.pinned { ", pinned" } else { "" }
    );
    if let Some(manifest) = &record.manifest {
        out.push_str(&format!("manifest: {manifest}\n"));
    }
    if let Some(pid) = orphaned(&record) {
        out.push_str(&format!(
            "its kiln process {pid} is gone without finishing the build (killed or crashed)\n"
        ));
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            vec![
                job.name.clone(),
                job.stage.clone(),
                words(&job.status),
                job.duration_ms.map(duration).unwrap_or_else(|| "-".into()),
                if job.cached { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["JOB", "STAGE", "STATUS", "DURATION", "CACHED"],
            &rows,
        ));
    }
    let notes: Vec<&BuildJob> = jobs.iter().filter(|j| j.message.is_some()).collect();
    if !notes.is_empty() {
        out.push('\n');
        for job in notes {
            out.push_str(&format!(
                "{}: {}\n",
                job.name,
                job.message.as_deref().unwrap_or_default()
            ));
        }
    }
    if !checks.is_empty() {
        out.push('\n');
        out.push_str(&crate::cli::repro::checks_summary(&checks));
    }
    if !artifacts.is_empty() {
        out.push_str(&format!(
            "\n{} artifact(s): kiln artifacts {}\n",
            artifacts.len(),
            record.id
        ));
    }
    crate::cli::out!("{out}")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes a blob to stdout; a closed pipe (`| head`) is not an error.
fn write_blob(
    store: &Store,
    digest: &kiln_store::B3Digest,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match store.read_blob(digest, out) {
        Ok(_) => Ok(()),
        Err(kiln_store::StoreError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

pub fn log(dir: &Path, args: LogArgs) -> anyhow::Result<ExitCode> {
    if let Some(remote) = args.remote.remote()? {
        return remote_log(&remote, args);
    }
    let store = open(dir)?;
    let record = resolve(store.as_ref(), args.build)?;
    let store = store.context("there is no build yet")?;
    if args.json {
        return log_json(&store, record.id, args.job.as_deref());
    }
    if args.follow && !record.status.is_finished() {
        if let Some(name) = &args.job
            && store.build_job(record.id, name)?.is_none()
            && !crate::cli::follow::followable(dir, record.id.0)
        {
            bail!("build {} has no job {name:?}", record.id);
        }
        if crate::cli::follow::followable(dir, record.id.0) {
            crate::cli::follow::follow(dir, record.id.0, args.job.as_deref())?;
            return Ok(ExitCode::SUCCESS);
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match &args.job {
        Some(name) => {
            let Some(job) = store.build_job(record.id, name)? else {
                let known: Vec<String> = store
                    .build_jobs(record.id)?
                    .into_iter()
                    .map(|j| j.name)
                    .collect();
                bail!(
                    "build {} has no job {name:?}{}",
                    record.id,
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!(" (its jobs: {})", known.join(", "))
                    }
                );
            };
            let Some(log) = job.log else {
                let hint = if record.status.is_finished() {
                    String::new()
                } else {
                    format!("; follow it with `kiln log -f {} {name}`", record.id)
                };
                bail!(
                    "job {name} of build {} has no recorded log (it is {}){hint}",
                    record.id,
                    words(&job.status)
                );
            };
            write_blob(&store, &log, &mut out)?;
        }
        None => {
            for job in store.build_jobs(record.id)? {
                let header = format!("==> {} ({}) <==\n", job.name, words(&job.status));
                if out.write_all(header.as_bytes()).is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
                match job.log {
                    Some(log) => write_blob(&store, &log, &mut out)?,
                    None => {
                        let _ = out.write_all(b"(no log)\n");
                    }
                }
            }
        }
    }
    match out.flush() {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `kiln log --json`: the job's log as text (lossy UTF-8) with its build,
/// job and status; every job's, as an array, without a job.
fn log_json(store: &Store, build: BuildId, job: Option<&str>) -> anyhow::Result<ExitCode> {
    let jobs = store.build_jobs(build)?;
    let entry = |job: &BuildJob| -> anyhow::Result<serde_json::Value> {
        let text = match job.log {
            Some(log) => {
                let mut bytes = Vec::new();
                write_blob(store, &log, &mut bytes)?;
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            None => None,
        };
        Ok(serde_json::json!({
            "build": build.0,
            "job": job.name,
            "status": job.status,
            "log": text,
        }))
    };
    match job {
        Some(name) => {
            let Some(found) = jobs.iter().find(|job| job.name == name) else {
                let known: Vec<&str> = jobs.iter().map(|job| job.name.as_str()).collect();
                bail!(
                    "build {build} has no job {name:?} (its jobs: {})",
                    known.join(", ")
                );
            };
            print_json(&entry(found)?)?;
        }
        None => print_json(&jobs.iter().map(entry).collect::<anyhow::Result<Vec<_>>>()?)?,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn artifacts(dir: &Path, args: ArtifactsArgs) -> anyhow::Result<ExitCode> {
    if let Some(ArtifactsCommand::Get {
        build,
        name,
        output,
        remote,
    }) = args.command
    {
        if let Some(remote) = remote.remote()? {
            return remote_get_artifact(&remote, build, &name, &output);
        }
        return get_artifact(dir, build, &name, &output);
    }
    let Some(selector) = args.build else {
        bail!("give a build: kiln artifacts BUILD");
    };
    let (record, artifacts) = match args.remote.remote()? {
        Some(remote) => {
            let (record, _, artifacts) = remote.build(&selector_path(&selector))?;
            (record, artifacts)
        }
        None => {
            let store = open(dir)?;
            let record = resolve(store.as_ref(), selector)?;
            let store = store.context("there is no build yet")?;
            let artifacts = listed_artifacts(&store, record.id)?;
            (record, artifacts)
        }
    };
    if args.json {
        print_json(
            &artifacts
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "name": a.name,
                        "kind": a.object.kind,
                        "digest": a.object.digest,
                        "size": a.size,
                    })
                })
                .collect::<Vec<_>>(),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if artifacts.is_empty() {
        eprintln!("build {} has no artifacts", record.id);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = artifacts
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.object.kind.name().to_owned(),
                bytesize::ByteSize(a.size).to_string(),
                a.object.digest.to_string(),
            ]
        })
        .collect();
    crate::cli::out!("{}", table(&["NAME", "KIND", "SIZE", "DIGEST"], &rows))?;
    Ok(ExitCode::SUCCESS)
}

/// A build's artifacts without its provenance (`kiln provenance` shows it).
fn listed_artifacts(store: &Store, build: BuildId) -> anyhow::Result<Vec<kiln_store::Artifact>> {
    Ok(store
        .artifacts(build)?
        .into_iter()
        .filter(|a| !crate::repro::provenance::is_provenance(&a.name))
        .collect())
}

/// `kiln log --server`: the same output from the server's records.
fn remote_log(remote: &crate::cli::remote::Remote, args: LogArgs) -> anyhow::Result<ExitCode> {
    let (record, jobs, _) = remote.build(&selector_path(&args.build))?;
    if let Some(name) = &args.job
        && !jobs.iter().any(|job| &job.name == name)
        && record.status.is_finished()
    {
        let known: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        bail!(
            "build {} has no job {name:?} (its jobs: {})",
            record.id,
            known.join(", ")
        );
    }
    if args.follow && !record.status.is_finished() {
        remote.follow(record.id, args.job.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let wrote = match &args.job {
        Some(name) => out.write_all(&remote.job_log(record.id, name)?),
        None => jobs.iter().try_for_each(|job| {
            out.write_all(format!("==> {} ({}) <==\n", job.name, words(&job.status)).as_bytes())?;
            match job.log {
                Some(_) => {
                    let log = remote
                        .job_log(record.id, &job.name)
                        .map_err(std::io::Error::other)?;
                    out.write_all(&log)
                }
                None => out.write_all(b"(no log)\n"),
            }
        }),
    };
    match wrote.and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn remote_get_artifact(
    remote: &crate::cli::remote::Remote,
    selector: BuildSelector,
    name: &str,
    output: &Path,
) -> anyhow::Result<ExitCode> {
    let (record, _, artifacts) = remote.build(&selector_path(&selector))?;
    let Some(artifact) = artifacts.iter().rev().find(|a| a.name == name) else {
        let known: Vec<&str> = artifacts.iter().map(|a| a.name.as_str()).collect();
        bail!(
            "build {} has no artifact {name:?}{}",
            record.id,
            if known.is_empty() {
                " (it has none)".to_owned()
            } else {
                format!(" (its artifacts: {})", known.join(", "))
            }
        );
    };
    let bytes = remote.get_artifact(record.id, artifact, output)?;
    eprintln!(
        "wrote {name} ({}) to {}",
        bytesize::ByteSize(bytes),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn get_artifact(
    dir: &Path,
    selector: BuildSelector,
    name: &str,
    output: &Path,
) -> anyhow::Result<ExitCode> {
    let store = open(dir)?;
    let record = resolve(store.as_ref(), selector)?;
    let store = store.context("there is no build yet")?;
    let artifacts = store.artifacts(record.id)?;
    // A name recorded twice (a rerun job) means its latest version.
    let Some(artifact) = artifacts.iter().rev().find(|a| a.name == name) else {
        let known: Vec<&str> = artifacts.iter().map(|a| a.name.as_str()).collect();
        bail!(
            "build {} has no artifact {name:?}{}",
            record.id,
            if known.is_empty() {
                " (it has none)".to_owned()
            } else {
                format!(" (its artifacts: {})", known.join(", "))
            }
        );
    };
    let report = store
        .restore(
            &artifact.object.digest,
            output,
            &RestoreOptions {
                layer: false,
                progress: None,
            },
        )
        .with_context(|| format!("writing artifact {name} to {}", output.display()))?;
    match artifact.object.kind {
        ObjectKind::Blob => eprintln!(
            "wrote {name} ({}) to {}",
            bytesize::ByteSize(report.bytes),
            output.display()
        ),
        ObjectKind::Tree => eprintln!(
            "wrote {name}: {} files ({}) into {}",
            report.files,
            bytesize::ByteSize(report.bytes),
            output.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pin(dir: &Path, args: PinArgs, pinned: bool) -> anyhow::Result<ExitCode> {
    let record = if let Some(remote) = args.remote.remote()? {
        let (record, _, _) = remote.build(&selector_path(&args.build))?;
        remote.pin(record.id, pinned)?;
        record
    } else {
        let mut store = open(dir)?;
        let record = resolve(store.as_ref(), args.build)?;
        let store = store.as_mut().context("there is no build yet")?;
        store.set_pinned(record.id, pinned)?;
        record
    };
    if pinned {
        eprintln!("pinned build {}: curation keeps its artifacts", record.id);
    } else {
        eprintln!("unpinned build {}", record.id);
    }
    Ok(ExitCode::SUCCESS)
}
