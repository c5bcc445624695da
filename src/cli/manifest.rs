//! `kiln check` and `kiln eval`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_grammar::load::{self, LoadError, LoadOptions};

use crate::cli::{EXIT_FAILURE, EXIT_MANIFEST, UsageError};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Manifest files (.kiln, or Djinn .yml/.yaml)
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub inputs: crate::cli::manifest::ManifestInputs,
    /// Print one JSON object per file (valid or not, counts, every warning
    /// and error with its location) as a JSON array on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The manifest file (.kiln, or Djinn .yml/.yaml)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub inputs: crate::cli::manifest::ManifestInputs,
}

/// What every command that loads a manifest takes besides the file:
/// `--arg` and `--allow-path`, turned into [`LoadOptions`] here only.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ManifestInputs {
    /// Argument for a manifest that is a function (repeatable); NAME is an
    /// identifier, VALUE a string
    #[arg(long = "arg", value_name = "NAME=VALUE", value_parser = parse_arg_pair)]
    pub args: Vec<String>,
    /// Let the manifest also read files under DIR (repeatable); without it a
    /// manifest reads only under its project root (its git repository, else
    /// its directory)
    #[arg(long = "allow-path", value_name = "DIR")]
    pub allow_paths: Vec<PathBuf>,
}

impl ManifestInputs {
    pub fn load_options(&self) -> anyhow::Result<LoadOptions> {
        Ok(LoadOptions {
            args: parse_args(&self.args)?,
            allow_paths: self.allow_paths.clone(),
        })
    }
}

/// `--arg NAME=VALUE` pairs; a malformed or repeated one is a usage error
/// (exit 2).
pub fn parse_args(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut args = BTreeMap::new();
    for pair in raw {
        let (name, value) = split_arg(pair).map_err(UsageError)?;
        if args.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(UsageError(format!("--arg {name} is given twice")).into());
        }
    }
    Ok(args)
}

/// Checks one `--arg` as clap reads it, so a malformed one is a usage error
/// naming the option (exit 2).
pub fn parse_arg_pair(pair: &str) -> Result<String, String> {
    split_arg(pair).map(|_| pair.to_owned())
}

/// `NAME=VALUE` split at the first `=`, `NAME` an identifier.
fn split_arg(pair: &str) -> Result<(&str, &str), String> {
    let Some((name, value)) = pair.split_once('=') else {
        return Err(format!("malformed --arg \"{pair}\": expected NAME=VALUE"));
    };
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '\'' | '-'));
    if !valid_name {
        return Err(format!(
            "malformed --arg \"{pair}\": \"{name}\" is not an identifier ([A-Za-z_][A-Za-z0-9_'-]*)"
        ));
    }
    Ok((name, value))
}

/// Exit code for a failed load: 2 when the manifest itself is wrong.
fn failure_code(error: &LoadError) -> u8 {
    match error {
        LoadError::Io(_) => EXIT_FAILURE,
        LoadError::Invalid(_) => EXIT_MANIFEST,
    }
}

/// One diagnostic as `kiln check --json` prints it.
fn diagnostic_json(
    diagnostic: &kiln_grammar::diagnostic::Diagnostic,
    sources: &kiln_grammar::source::SourceMap,
) -> serde_json::Value {
    serde_json::json!({
        "message": diagnostic.message,
        "location": diagnostic.span.map(|span| sources.location(span)),
        "label": diagnostic.label,
        "help": diagnostic.help,
    })
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let options = args.inputs.load_options()?;
    let mut worst = 0u8;
    let mut stdout = std::io::stdout().lock();
    let mut reports = Vec::new();
    for file in &args.files {
        let loaded = load::load(file, &options);
        eprint!("{}", loaded.render_diagnostics());
        if args.json {
            let diagnostics =
                |list: &[kiln_grammar::diagnostic::Diagnostic]| -> Vec<serde_json::Value> {
                    list.iter()
                        .map(|d| diagnostic_json(d, &loaded.sources))
                        .collect()
                };
            let (stages, jobs) = match &loaded.result {
                Ok(manifest) => (Some(manifest.stages.len()), Some(manifest.jobs.len())),
                Err(_) => (None, None),
            };
            reports.push(serde_json::json!({
                "file": file.display().to_string(),
                "valid": loaded.result.is_ok(),
                "stages": stages,
                "jobs": jobs,
                "warnings": diagnostics(&loaded.warnings),
                "errors": loaded.result.as_ref().err().map(|e| diagnostics(e.diagnostics())).unwrap_or_default(),
            }));
        }
        match &loaded.result {
            Ok(manifest) => {
                let mut summary = vec![
                    count(manifest.stages.len(), "stage"),
                    count(manifest.jobs.len(), "job"),
                ];
                if !loaded.warnings.is_empty() {
                    summary.push(count(loaded.warnings.len(), "warning"));
                }
                if !args.json {
                    writeln!(stdout, "{}: ok ({})", file.display(), summary.join(", "))
                        .context("writing to stdout")?;
                }
            }
            Err(error) => {
                // A broken manifest outranks an unreadable one.
                worst = match (worst, failure_code(error)) {
                    (EXIT_MANIFEST, _) | (_, EXIT_MANIFEST) => EXIT_MANIFEST,
                    (_, code) => code,
                };
            }
        }
    }
    if args.json {
        crate::cli::print_json(&reports)?;
    }
    Ok(ExitCode::from(worst))
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let options = args.inputs.load_options()?;
    let loaded = load::load(&args.file, &options);
    eprint!("{}", loaded.render_diagnostics());
    match &loaded.result {
        Ok(manifest) => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(manifest.to_canonical_json().as_bytes())
                .context("writing to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Ok(ExitCode::from(failure_code(error))),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_args;

    #[test]
    fn args() {
        let ok = parse_args(&["version=1.2".into(), "x=a=b".into(), "e=".into()]).unwrap();
        assert_eq!(ok["version"], "1.2");
        assert_eq!(ok["x"], "a=b");
        assert_eq!(ok["e"], "");
        for bad in ["version", "=1", "1x=2", "a b=c"] {
            assert!(parse_args(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_args(&["a=1".into(), "a=2".into()]).is_err());
    }
}
