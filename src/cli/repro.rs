//! `kiln diff BUILD_A BUILD_B` and `kiln provenance BUILD`.
//!
//! Exit codes of `kiln diff` (docs/cli.md): 0 the builds' artifacts are
//! identical, 6 they differ, 1 an unknown build or a store error.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use kiln_store::{JobArtifact, Store};

use crate::cli::records::{BuildSelector, open_existing, resolve_build};
use crate::events::{Envelope, Event};
use crate::repro::provenance::{self, is_provenance};
use crate::repro::{CheckOutcome, EXIT_NOT_REPRODUCIBLE, compare_artifacts};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The first build: a number or `last`
    pub build_a: BuildSelector,
    /// The second build: a number or `last`
    pub build_b: BuildSelector,
    /// Print the differences as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProvenanceArgs {
    /// A build number or `last`
    pub build: BuildSelector,
}

/// A build's artifacts by name (a name recorded twice means its latest
/// version, as `kiln artifacts get` reads it), without the provenance.
fn artifacts_of(store: &Store, build: kiln_store::BuildId) -> anyhow::Result<Vec<JobArtifact>> {
    let mut by_name = std::collections::BTreeMap::new();
    for artifact in store.artifacts(build)? {
        if !is_provenance(&artifact.name) {
            by_name.insert(artifact.name.clone(), artifact);
        }
    }
    Ok(by_name
        .into_values()
        .map(|a| JobArtifact {
            name: a.name,
            object: a.object,
            size: a.size,
        })
        .collect())
}

pub fn diff(dir: &Path, args: DiffArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(dir)?;
    let a = resolve_build(store.as_ref(), args.build_a)?;
    let b = resolve_build(store.as_ref(), args.build_b)?;
    let store = store.context("there is no build yet")?;
    let (artifacts_a, artifacts_b) = (artifacts_of(&store, a.id)?, artifacts_of(&store, b.id)?);
    let comparison = compare_artifacts(&store, &artifacts_a, &artifacts_b)
        .with_context(|| format!("comparing builds {} and {}", a.id, b.id))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = serde_json::json!({
            "build_a": a.id,
            "build_b": b.id,
            "identical": comparison.is_identical(),
            "differences": comparison.differences,
            "omitted": comparison.omitted,
        });
        serde_json::to_writer_pretty(&mut out, &value).context("writing the diff")?;
        writeln!(out)?;
    } else if comparison.is_identical() {
        writeln!(
            out,
            "builds {} and {}: identical artifacts ({} compared)",
            a.id,
            b.id,
            artifacts_a.len()
        )?;
    } else {
        writeln!(
            out,
            "builds {} and {}: {} difference(s)",
            a.id,
            b.id,
            comparison.count()
        )?;
        let (old, new) = (format!("in build {}", a.id), format!("in build {}", b.id));
        for difference in &comparison.differences {
            writeln!(out, "  {}", difference.describe(&old, &new))?;
        }
        if comparison.omitted > 0 {
            writeln!(out, "  ... and {} more", comparison.omitted)?;
        }
    }
    Ok(if comparison.is_identical() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_REPRODUCIBLE)
    })
}

pub fn provenance(dir: &Path, args: ProvenanceArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(dir)?;
    let record = resolve_build(store.as_ref(), args.build)?;
    let store = store.context("there is no build yet")?;
    let Some(bytes) = provenance::load(&store, record.id)? else {
        bail!(
            "build {} has no recorded provenance (it is written when a build ends{})",
            record.id,
            if record.status.is_finished() {
                "; this build produced no artifact and no job output, was recorded by an \
                 older kiln, or its curation dropped it"
            } else {
                "; this build is still running"
            }
        );
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes).context("writing the provenance")?;
    Ok(ExitCode::SUCCESS)
}

/// The `job/check` events a `kiln run --check` build recorded: each job's
/// outcome and the event as JSON.
pub(crate) fn recorded_checks(
    store: &Store,
    build: kiln_store::BuildId,
) -> anyhow::Result<Vec<(CheckSummary, serde_json::Value)>> {
    let mut checks = Vec::new();
    for stored in store.build_events(build)? {
        if stored.kind != "job/check" {
            continue;
        }
        let Ok(envelope) = serde_json::from_str::<Envelope>(&stored.body) else {
            continue;
        };
        let json = serde_json::to_value(&envelope.event)?;
        if let Event::JobCheck {
            job,
            outcome,
            output,
            artifacts,
            reason,
            ..
        } = envelope.event
        {
            checks.push((
                CheckSummary {
                    job,
                    outcome,
                    differences: output.count() + artifacts.count(),
                    reason,
                },
                json,
            ));
        }
    }
    Ok(checks)
}

/// One job of a `--check` build, for `kiln show`.
#[derive(Clone, Debug)]
pub(crate) struct CheckSummary {
    pub job: String,
    pub outcome: CheckOutcome,
    pub differences: u64,
    pub reason: Option<String>,
}

/// `check: 2 reproducible, 1 NOT reproducible, 0 unchecked`, then a line
/// per job that is not reproducible.
pub(crate) fn checks_summary(checks: &[(CheckSummary, serde_json::Value)]) -> String {
    let count = |wanted: CheckOutcome| checks.iter().filter(|(c, _)| c.outcome == wanted).count();
    let mut text = format!(
        "check (kiln run --check): {} reproducible, {} NOT reproducible, {} unchecked\n",
        count(CheckOutcome::Reproducible),
        count(CheckOutcome::Differs),
        count(CheckOutcome::Unchecked)
    );
    for (check, _) in checks {
        if check.outcome == CheckOutcome::Differs {
            text.push_str(&format!(
                "  {}: NOT reproducible ({} difference(s){})\n",
                check.job,
                check.differences,
                check
                    .reason
                    .as_deref()
                    .map(|r| format!("; {r}"))
                    .unwrap_or_default()
            ));
        }
    }
    text
}
