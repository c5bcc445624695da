//! The command line: clap structs that only validate, and a dispatcher.
//!
//! Exit codes (documented in docs/cli.md):
//! - 0: success
//! - 1: any other failure (IO, store, internal)
//! - 2: the manifest or an argument is invalid (syntax, evaluation, schema;
//!   a usage error clap or [`UsageError`] reports)

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod build;
pub mod follow;
/// `println!` that returns the write error (a closed pipe) instead of
/// panicking: `outln!("{x}")?`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}
/// `print!` that returns the write error instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}
pub(crate) use {out, outln};

pub mod image;
pub mod manifest;
pub mod meta;
pub mod offline;
pub mod plan;
pub mod records;
pub mod remote;
pub mod repro;
pub mod run;
pub mod serve;
pub mod store;
pub mod trust;

/// Exit code for an invalid manifest.
pub const EXIT_MANIFEST: u8 = 2;
/// Exit code for invalid arguments: clap's own, and [`UsageError`]s.
pub const EXIT_USAGE: u8 = 2;

/// A mistake in the arguments that clap cannot see alone (a malformed or
/// repeated `--arg`): exits 2, as clap's usage errors do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
/// Exit code for every other failure.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "A declarative, hermetic build runner",
    long_about = "kiln compiles a manifest (.kiln or Djinn .yml) into a content-addressed \
                  build graph and runs it hermetically, keeping everything it produces in a \
                  deduplicating store."
)]
pub struct Cli {
    /// The store directory [default: $KILN_HOME, else $XDG_DATA_HOME/kiln, else ~/.local/share/kiln]
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// When to colour what kiln prints on stderr (`auto` honours NO_COLOR)
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value_t = crate::color::ColorChoice::Auto)]
    pub color: crate::color::ColorChoice,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests: parse, evaluate and validate them
    Check(manifest::CheckArgs),
    /// Evaluate a manifest and print the typed build description as canonical JSON
    Eval(manifest::EvalArgs),
    /// Inspect and maintain the content-addressed store
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Run a build: jobs in containers, outputs in the store, unchanged jobs from cache
    Run(run::RunArgs),
    /// Show each job of a build with its key and whether it would run or be cached
    Plan(plan::PlanArgs),
    /// Why a job will run or come from the cache, down to the files that changed (--build N: why it ran then)
    Explain(plan::ExplainArgs),
    /// Stop a running build (Killed)
    Kill(run::KillArgs),
    /// Build caches saved by jobs (`caches = [ { key; paths; } ]`)
    #[command(subcommand)]
    Cache(run::CacheCommand),
    /// Import, list and remove container images
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// List builds: number, status, start, duration; `rm` or `prune` their records
    Builds(records::BuildsArgs),
    /// Show a build's jobs: status, duration, cached or not
    Show(records::ShowArgs),
    /// Print a build's job logs (one job, or all in order)
    Log(records::LogArgs),
    /// List a build's artifacts, or `get` one into a file or directory
    Artifacts(records::ArtifactsArgs),
    /// Keep a build's artifacts from curation
    Pin(records::PinArgs),
    /// Let curation drop a build's artifacts again
    Unpin(records::PinArgs),
    /// Fetch remote git sources into the store (the only command that uses the network)
    Fetch(offline::FetchArgs),
    /// Write kiln.lock: the commits, trees and digests the manifest resolves to
    Lock(offline::LockArgs),
    /// Air-gapped bundles: create one from a build, import one into this store
    #[command(subcommand)]
    Bundle(offline::BundleCommand),
    /// Signing keys: sign the job results of the bundles you create
    #[command(subcommand)]
    Key(trust::KeyCommand),
    /// The public keys whose signed job results this store serves as cache hits
    #[command(subcommand)]
    Trust(trust::TrustCommand),

    /// Compare two builds' artifacts: per file, sizes and first differing byte
    Diff(repro::DiffArgs),
    /// Print a build's provenance: an in-toto statement with a SLSA v1 predicate
    Provenance(repro::ProvenanceArgs),

    /// Run the build server: a queue, a JSON API, tokens, curation (docs/server.md)
    Serve(serve::ServeArgs),
    /// Submit a build to a server and follow it, exiting as `kiln run` would
    Submit(serve::SubmitArgs),
    /// Write a starter build.kiln for a directory (never overwrites a manifest)
    Init(meta::InitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(meta::CompletionsArgs),
    /// Print kiln's man page, or write one per command with --out DIR
    Man(meta::ManArgs),
}

/// Where the store lives: `--store`, else `$KILN_HOME`, else
/// `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`.
/// The path is made absolute here, once: the host view excludes the store
/// by path and jobs run in other directories.
pub fn store_dir(flag: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = located_store_dir(flag)?;
    std::path::absolute(&dir).map_err(|err| {
        anyhow::anyhow!(
            "cannot make the store path {} absolute: {err}",
            dir.display()
        )
    })
}

fn located_store_dir(flag: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir.clone());
    }
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(home) = non_empty("KILN_HOME") {
        return Ok(PathBuf::from(home));
    }
    if let Some(data) = non_empty("XDG_DATA_HOME") {
        return Ok(PathBuf::from(data).join("kiln"));
    }
    match non_empty("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/kiln")),
        None => anyhow::bail!("cannot locate the store: set --store, KILN_HOME or HOME"),
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => exit_with_hints(error),
    };
    crate::color::init(cli.color);
    match dispatch(cli) {
        Ok(code) => code,
        Err(error) => report(&error),
    }
}

/// Prints clap's error, adding the command a user most likely meant to an
/// unknown one (`kiln build` → `run`), and exits (2 for usage errors).
fn exit_with_hints(mut error: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() == ErrorKind::InvalidSubcommand
        && let Some(ContextValue::String(word)) = error.get(ContextKind::InvalidSubcommand)
        && let Some(meant) = meant_command(word)
    {
        let mut suggestions = vec![meant.to_owned()];
        if let Some(ContextValue::Strings(similar)) = error.get(ContextKind::SuggestedSubcommand) {
            suggestions.extend(similar.iter().filter(|s| *s != meant).cloned());
        }
        error.insert(
            ContextKind::SuggestedSubcommand,
            ContextValue::Strings(suggestions),
        );
    }
    error.exit()
}

/// The kiln command for a word people type out of habit from other tools.
fn meant_command(word: &str) -> Option<&'static str> {
    Some(match word {
        "build" | "make" | "exec" | "start" | "test" => "run",
        "status" | "inspect" | "info" => "show",
        "ps" | "list" | "ls" | "history" => "builds",
        "logs" | "tail" | "output" => "log",
        "clean" | "prune" | "gc" => "store gc",
        "stop" | "cancel" | "abort" => "kill",
        "validate" | "lint" | "verify" => "check",
        "why" => "explain",
        "dry-run" => "plan",
        "completion" => "completions",
        "manpage" | "manual" => "man",
        "new" | "setup" => "init",
        _ => return None,
    })
}

/// Prints a failed command's error and picks its exit code. Output into a
/// closed pipe (`kiln builds | head -1`) is no error: exit quietly.
fn report(error: &anyhow::Error) -> ExitCode {
    let broken_pipe = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "{} {}",
        crate::color::paint("error:", crate::color::Tone::Bad),
        error_text(error)
    );
    if error.chain().any(|cause| cause.is::<UsageError>()) {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text
/// is already there (an error that prints its source and also returns it
/// would otherwise say `No such file or directory (os error 2)` twice).
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => manifest::check(args),
        Command::Eval(args) => manifest::eval(args),
        Command::Store(command) => {
            store_dir(cli.store.as_ref()).and_then(|dir| store::run(&dir, command))
        }
        Command::Run(args) => store_dir(cli.store.as_ref()).and_then(|dir| run::run(&dir, args)),
        Command::Plan(args) => store_dir(cli.store.as_ref()).and_then(|dir| plan::plan(&dir, args)),
        Command::Explain(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| plan::explain(&dir, args))
        }
        Command::Kill(args) => store_dir(cli.store.as_ref()).and_then(|dir| run::kill(&dir, args)),
        Command::Cache(command) => {
            store_dir(cli.store.as_ref()).and_then(|dir| run::cache(&dir, command))
        }
        Command::Image(command) => {
            store_dir(cli.store.as_ref()).and_then(|dir| image::run(&dir, command))
        }
        Command::Builds(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| records::builds(&dir, args))
        }
        Command::Show(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| records::show(&dir, args))
        }
        Command::Log(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| records::log(&dir, args))
        }
        Command::Artifacts(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| records::artifacts(&dir, args))
        }
        Command::Pin(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| records::pin(&dir, args, true))
        }
        Command::Unpin(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| records::pin(&dir, args, false))
        }
        Command::Fetch(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| offline::fetch(&dir, args))
        }
        Command::Lock(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| offline::lock(&dir, args))
        }
        Command::Bundle(command) => {
            store_dir(cli.store.as_ref()).and_then(|dir| offline::bundle(&dir, command))
        }
        Command::Key(command) => {
            store_dir(cli.store.as_ref()).and_then(|dir| trust::key(&dir, command))
        }
        Command::Trust(command) => {
            store_dir(cli.store.as_ref()).and_then(|dir| trust::trust(&dir, command))
        }
        Command::Diff(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| repro::diff(&dir, args))
        }
        Command::Provenance(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| repro::provenance(&dir, args))
        }
        Command::Serve(args) => {
            store_dir(cli.store.as_ref()).and_then(|dir| serve::serve(&dir, args))
        }
        Command::Submit(args) => {
            let store = store_dir(cli.store.as_ref()).ok();
            serve::submit(store.as_deref(), args)
        }
        Command::Init(args) => meta::init(args),
        Command::Completions(args) => meta::completions(args),
        Command::Man(args) => meta::man(args),
    }
}

/// Pretty JSON and a newline on stdout (every `--json` listing).
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A duration such as `30d`, `12h`, `2weeks` or `0s` (a clap value parser).
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (examples: 30d, 12h, 2weeks, 0s)"))
}

/// A size such as `0`, `500MiB` or `2GiB`, in bytes (a clap value parser).
pub(crate) fn parse_byte_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("invalid size {text:?}: {e} (examples: 0, 500MiB, 2GiB)"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command, argument and option of every subcommand, with a
    /// name: `--help` must say something about each.
    #[test]
    fn every_help_entry_has_text() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if arg.is_hide_set() || arg.get_help().is_some() {
                    continue;
                }
                missing.push(format!("{path} {}", arg.get_id()));
            }
            for sub in command.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        let mut command = super::Cli::command();
        command.build();
        walk(&command, "kiln", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    /// Every command that lists or reports something has `--json`.
    #[test]
    fn every_listing_has_json() {
        let command = super::Cli::command();
        let find = |path: &[&str]| {
            let mut at = &command;
            for name in path {
                at = at
                    .find_subcommand(name)
                    .unwrap_or_else(|| panic!("no command {path:?}"));
            }
            at.get_arguments().any(|arg| arg.get_id() == "json")
        };
        let listings: &[&[&str]] = &[
            &["check"],
            &["plan"],
            &["builds"],
            &["show"],
            &["log"],
            &["artifacts"],
            &["store", "ls"],
            &["store", "stats"],
            &["store", "roots"],
            &["image", "ls"],
            &["cache", "ls"],
            &["trust", "ls"],
        ];
        let without: Vec<_> = listings.iter().filter(|path| !find(path)).collect();
        assert!(without.is_empty(), "no --json: {without:?}");
    }
}
