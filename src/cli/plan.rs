//! `kiln plan` and `kiln explain`: what a build would do, and why a job
//! runs, without running anything.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use kiln_grammar::manifest::Manifest;
use kiln_store::{B3Digest, Store};

use crate::cli::run::{find_manifest, load_manifest, manifest_key};
use crate::driver::{CreateContext, Driver};
use crate::graph::{BuildGraph, KeyChange, KeyInputs};
use crate::scheduler::prepare::{self, CacheLookup, DriverSet, StoreCtx};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The manifest [default: build.kiln, else .kiln/*.kiln, else .djinn.yml]
    #[arg(value_name = "MANIFEST")]
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub inputs: crate::cli::manifest::ManifestInputs,
    /// Print the plan as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The job to explain
    pub job: String,
    /// The manifest [default: build.kiln, else .kiln/*.kiln, else .djinn.yml]
    #[arg(value_name = "MANIFEST", conflicts_with = "build")]
    pub manifest: Option<PathBuf>,
    /// Explain why the job ran (or was cached) in this past build (a number
    /// or `last`), compared with its previous run; reads only the records
    #[arg(long, value_name = "BUILD")]
    pub build: Option<crate::cli::records::BuildSelector>,
    #[command(flatten)]
    pub inputs: crate::cli::manifest::ManifestInputs,
}

/// One job of a plan.
#[derive(Debug, serde::Serialize)]
struct PlannedJob {
    job: String,
    stage: String,
    needs: Vec<String>,
    /// `None` while an upstream job will run (its output decides the key).
    key: Option<B3Digest>,
    /// `cached`, `run` (no result for the key), `run-uncacheable` (host
    /// driver or network), `run-after-upstream` (key unknown yet), or
    /// `missing` (it cannot run: see `missing`).
    status: &'static str,
    /// What the job lacks (its image, a source, a job it needs), each with
    /// the command that would provide it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing: Vec<String>,
    #[serde(skip)]
    inputs: Option<KeyInputs>,
    /// The key inputs with [`UNKNOWN_OUTPUT`] for upstream jobs that will run.
    #[serde(skip)]
    partial: Option<KeyInputs>,
}

/// The status of a job that cannot run until something is provided.
const MISSING: &str = "missing";

/// Stands for the output of an upstream job that has not run yet.
const UNKNOWN_OUTPUT: B3Digest = B3Digest::from_array([0; 32]);

/// Resolves the manifest against the store like `run` does (without running
/// anything) and works out each job's key where it can be known. A missing
/// image or source does not stop the plan: the jobs it concerns are
/// `missing`, naming what would provide it (as `run --offline` lists).
fn plan_jobs(
    store_dir: &Path,
    manifest: &Manifest,
    graph: &BuildGraph,
) -> anyhow::Result<Vec<PlannedJob>> {
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let mut ctx = StoreCtx::open(store_dir, temp.path())?;
    let absent = crate::offline::check::missing(&ctx.store, manifest)?;
    let set = DriverSet::of(graph);
    let context = CreateContext {
        store_dir: store_dir.to_path_buf(),
        hidden: vec![store_dir.to_path_buf()],
        helper: std::env::current_exe().context("locating the kiln binary")?,
    };
    // A driver that cannot be created (its image is not imported) leaves
    // why, as the remedy `run --offline` would print when it has one.
    let drivers: Vec<Result<Driver, String>> = set
        .specs
        .iter()
        .map(|spec| {
            Driver::create(spec, &context).map_err(|error| {
                let image = match spec {
                    kiln_grammar::manifest::Driver::Container(c) => Some(&c.image),
                    kiln_grammar::manifest::Driver::Qemu(q) => Some(&q.image),
                    kiln_grammar::manifest::Driver::Host(_) => None,
                };
                image
                    .and_then(|image| {
                        let what = format!("image {image}");
                        absent.iter().find(|missing| missing.what == what)
                    })
                    .map_or_else(|| error.to_string(), ToString::to_string)
            })
        })
        .collect();
    let workspace = set
        .specs
        .first()
        .and_then(|spec| spec.workspace().map(str::to_owned));
    let mut objects = Vec::new();
    for (object, placed) in manifest
        .objects
        .iter()
        .zip(ctx.place_objects(manifest, workspace.as_deref()))
    {
        match placed {
            Ok(placed) => objects.push(placed),
            Err(error) => eprintln!("warning: object {} not placed: {error}", object.dst),
        }
    }
    let mut sources = Vec::new();
    let mut unresolved = Vec::new();
    for resolved in ctx.resolve_sources(manifest) {
        match resolved {
            Ok(source) => sources.push(source),
            Err(error) => unresolved.push(error.to_string()),
        }
    }
    let base = match unresolved.is_empty() {
        true => Some(ctx.compose_base(&sources, &objects)?),
        false => None,
    };
    let mut outputs: Vec<Option<B3Digest>> = vec![None; graph.jobs.len()];
    let mut planned: Vec<PlannedJob> = Vec::with_capacity(graph.jobs.len());
    for (index, node) in graph.jobs.iter().enumerate() {
        let needs: Vec<String> = node
            .needs
            .iter()
            .map(|&n| graph.jobs[n].job.name.clone())
            .collect();
        let mut missing = Vec::new();
        let driver = drivers[set.of_job[index]]
            .as_ref()
            .map_err(|why| missing.push(why.clone()))
            .ok();
        missing.extend(unresolved.iter().cloned());
        for &need in &node.needs {
            if planned[need].status == MISSING {
                missing.push(format!("job {} cannot run", planned[need].job));
            }
        }
        let (Some(driver), Some(base)) = (driver, base.as_ref()) else {
            planned.push(PlannedJob {
                job: node.job.name.clone(),
                stage: node.job.stage.clone(),
                needs,
                key: None,
                status: MISSING,
                missing,
                inputs: None,
                partial: None,
            });
            continue;
        };
        let inputs = ctx.key_inputs(graph, index, driver, base, &outputs)?;
        // With an upstream still to run, everything but that upstream's
        // output is known: `explain` compares that much.
        let partial = match &inputs {
            Some(_) => None,
            None => {
                let filled: Vec<Option<B3Digest>> = outputs
                    .iter()
                    .map(|output| Some(output.unwrap_or(UNKNOWN_OUTPUT)))
                    .collect();
                ctx.key_inputs(graph, index, driver, base, &filled)?
            }
        };
        let cacheable = prepare::cacheable(driver, &node.job);
        let key = inputs.as_ref().map(KeyInputs::key);
        let status = match key {
            _ if !missing.is_empty() => MISSING,
            None => "run-after-upstream",
            Some(key) => match ctx.lookup_cached(&node.job, driver, &key)? {
                CacheLookup::Uncacheable => "run-uncacheable",
                CacheLookup::Hit(result) => {
                    outputs[index] = Some(result.output_layer);
                    "cached"
                }
                CacheLookup::Miss { .. } => "run",
            },
        };
        planned.push(PlannedJob {
            job: node.job.name.clone(),
            stage: node.job.stage.clone(),
            needs,
            key: key.filter(|_| cacheable),
            status,
            missing,
            inputs,
            partial,
        });
    }
    Ok(planned)
}

pub fn plan(store_dir: &Path, args: PlanArgs) -> anyhow::Result<ExitCode> {
    let path = find_manifest(args.manifest.as_deref())?;
    let (manifest, graph) = match load_manifest(&path, &args.inputs)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let planned = plan_jobs(store_dir, &manifest, &graph)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &planned).context("writing the plan")?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = planned
        .iter()
        .map(|p| p.job.len())
        .max()
        .unwrap_or(3)
        .max(3);
    let stage_width = planned
        .iter()
        .map(|p| p.stage.len())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(
        out,
        "{:width$}  {:stage_width$}  {:18}  {:16}  NEEDS",
        "JOB", "STAGE", "STATUS", "KEY"
    )?;
    for job in &planned {
        let key = job
            .key
            .map(|k| k.to_string().chars().take(16).collect::<String>())
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:width$}  {:stage_width$}  {:18}  {:16}  {}",
            job.job,
            job.stage,
            job.status,
            key,
            job.needs.join(" ")
        )?;
    }
    let mut missing: Vec<&str> = planned
        .iter()
        .flat_map(|job| job.missing.iter().map(String::as_str))
        .filter(|what| !what.starts_with("job "))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        writeln!(
            out,
            "\nmissing (`kiln run` would fail until it is provided):"
        )?;
        for what in missing {
            writeln!(out, "  {what}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a plan status means, in words: `compile will run`.
fn will(status: &str) -> &'static str {
    match status {
        "cached" => "will be taken from the cache",
        "run-uncacheable" => "will run (it is never cached: host driver or `network = true`)",
        "run-after-upstream" => "will run after the upstream jobs it needs",
        _ => "will run",
    }
}

/// The changes between two key inputs, in lines for `explain` (`  - ...`,
/// after `about` when given, with the paths of a changed tree under it);
/// `keep` filters them.
fn change_lines(
    store: &Store,
    now: &KeyInputs,
    before: &KeyInputs,
    about: &str,
    keep: impl Fn(&KeyChange) -> bool,
) -> Vec<String> {
    let mut lines = Vec::new();
    for change in now.changes(before).iter().filter(|change| keep(change)) {
        for (n, line) in crate::repro::explain::describe(store, change)
            .into_iter()
            .enumerate()
        {
            lines.push(if n == 0 {
                format!("  - {about}{line}")
            } else {
                format!("  {line}")
            });
        }
    }
    lines
}

pub fn explain(store_dir: &Path, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    if let Some(build) = args.build {
        return explain_build(store_dir, &args.job, build);
    }
    let path = find_manifest(args.manifest.as_deref())?;
    let (manifest, graph) = match load_manifest(&path, &args.inputs)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let Some(index) = graph.index_of(&args.job) else {
        bail!("no job {:?} in {}", args.job, path.display());
    };
    let planned = plan_jobs(store_dir, &manifest, &graph)?;
    let store = Store::open(store_dir)?;
    let manifest_name = manifest_key(&path).display().to_string();
    let mut previous: BTreeMap<String, (i64, KeyInputs)> = BTreeMap::new();
    for node in &graph.jobs {
        let recorded = store.last_key_inputs(&manifest_name, &node.job.name)?;
        if let Some((build, inputs)) = recorded.and_then(|r| {
            serde_json::from_value(r.inputs)
                .ok()
                .map(|inputs| (r.build.0, inputs))
        }) {
            previous.insert(node.job.name.clone(), (build, inputs));
        }
    }
    let job = &planned[index];
    let name = &args.job;
    let mut out = std::io::stdout().lock();
    if job.status == MISSING {
        writeln!(out, "{name}: cannot run until this is provided:")?;
        for what in &job.missing {
            writeln!(out, "  - {what}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some((last_build, last)) = previous.get(name) else {
        writeln!(
            out,
            "{name} {}: it has not run before (no build of this manifest ran it)",
            will(job.status)
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    let since = format!("its last run (build {last_build})");
    match &job.inputs {
        Some(inputs) => {
            let lines = change_lines(&store, inputs, last, "", |_| true);
            match (lines.is_empty(), job.status) {
                (true, "cached") => writeln!(
                    out,
                    "{name} will be taken from the cache: nothing changed since {since}"
                )?,
                (true, "run") => writeln!(
                    out,
                    "{name} will run although nothing changed since {since}: no passed result \
                     is in the cache for its key {} (that run failed or was not recorded, or \
                     curation dropped its result)",
                    inputs.key()
                )?,
                (true, status) => writeln!(
                    out,
                    "{name} {}: nothing changed since {since}",
                    will(status)
                )?,
                (false, status) => {
                    writeln!(out, "{name} {}. Changed since {since}:", will(status))?;
                    for line in lines {
                        writeln!(out, "{line}")?;
                    }
                }
            }
        }
        None => {
            let pending: Vec<&str> = graph.jobs[index]
                .upstream
                .iter()
                .filter(|&&u| planned[u].status != "cached")
                .map(|&u| planned[u].job.as_str())
                .collect();
            writeln!(
                out,
                "{name} will run: its key depends on the output of upstream jobs that run first \
                 ({}). Changed since {since}:",
                pending.join(", ")
            )?;
            let known = |change: &KeyChange| !matches!(change, KeyChange::UpstreamOutput { now, .. } if *now == UNKNOWN_OUTPUT);
            if let Some(partial) = &job.partial {
                for line in change_lines(&store, partial, last, "", known) {
                    writeln!(out, "{line}")?;
                }
            }
            for &upstream in &graph.jobs[index].upstream {
                let now = planned[upstream]
                    .inputs
                    .as_ref()
                    .or(planned[upstream].partial.as_ref());
                if let (Some(now), Some((_, before))) = (now, previous.get(&planned[upstream].job))
                {
                    let about = format!("upstream job {}: ", planned[upstream].job);
                    for line in change_lines(&store, now, before, &about, known) {
                        writeln!(out, "{line}")?;
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln explain JOB --build N`: why `JOB` ran (or was cached) in build
/// `N`, from the records alone: its key inputs there against those of its
/// previous run in an earlier build of the same manifest.
fn explain_build(
    store_dir: &Path,
    name: &str,
    selector: crate::cli::records::BuildSelector,
) -> anyhow::Result<ExitCode> {
    let store = Store::open(store_dir)?;
    let build = crate::cli::records::resolve_build(Some(&store), selector)?.id;
    let Some(job) = store.build_job(build, name)? else {
        let jobs: Vec<String> = store
            .build_jobs(build)?
            .into_iter()
            .map(|job| job.name)
            .collect();
        bail!(
            "build {build} has no job {name:?} (its jobs: {})",
            jobs.join(", ")
        );
    };
    let mut out = std::io::stdout().lock();
    let parse = |value: serde_json::Value, which: i64| -> anyhow::Result<KeyInputs> {
        serde_json::from_value(value)
            .with_context(|| format!("the recorded key inputs of {name} in build {which}"))
    };
    let Some(inputs) = job.key_inputs.clone() else {
        let why = job.message.map(|m| format!(": {m}")).unwrap_or_default();
        writeln!(
            out,
            "{name} did not run in build {build}: it was {}{why}",
            job.status.replace('_', " ")
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    let inputs = parse(inputs, build.0)?;
    let did = if job.cached {
        format!("was taken from the cache in build {build}")
    } else {
        format!("ran in build {build} ({})", job.status.replace('_', " "))
    };
    let Some(previous) = store.previous_job_run(build, name)? else {
        writeln!(
            out,
            "{name} {did}: no earlier build of this manifest ran it"
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    let since = format!("its previous run (build {})", previous.build);
    let before = parse(
        previous.key_inputs.clone().unwrap_or_default(),
        previous.build.0,
    )?;
    let lines = change_lines(&store, &inputs, &before, "", |_| true);
    if !lines.is_empty() {
        writeln!(out, "{name} {did}. Changed since {since}:")?;
        for line in lines {
            writeln!(out, "{line}")?;
        }
    } else if job.cached {
        writeln!(out, "{name} {did}: nothing changed since {since}")?;
    } else if !matches!(previous.status.as_str(), "passed" | "cached") {
        writeln!(
            out,
            "{name} {did} although nothing changed since {since}: that run {}, and only \
             passed results are cached",
            previous.status.replace('_', " ")
        )?;
    } else {
        writeln!(
            out,
            "{name} {did} although nothing changed since {since}: the result was not served \
             from the cache (`--no-cache` or `--check`, a job that is never cached, or \
             curation had dropped it)"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
