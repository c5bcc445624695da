//! Commands about kiln itself and a new project: `kiln completions`,
//! `kiln man`, `kiln init`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::CommandFactory;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete kiln's commands and options in
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write `kiln.1` and a page per command (`kiln-run.1`, `kiln-store-gc.1`,
    /// ...) into DIR instead of printing `kiln.1` on stdout
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The project directory [default: the current directory]
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The shell completion script, generated from the clap definitions.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut command = crate::cli::Cli::command();
    // Into memory first: clap_complete panics on a write error (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "kiln", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// The man pages, generated from the clap definitions.
pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let command = crate::cli::Cli::command();
    let Some(dir) = args.out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .context("rendering the man page")?;
        let mut out = std::io::stdout().lock();
        out.write_all(&page)
            .and_then(|()| out.flush())
            .context("writing the man page")?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(command, &dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    eprintln!("wrote the man pages into {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// What a starter manifest builds, guessed from the directory's files.
struct Starter {
    what: &'static str,
    build: &'static str,
    test: &'static str,
}

fn guess(dir: &Path) -> Starter {
    let has = |name: &str| dir.join(name).exists();
    let has_c = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|entry| entry.path().extension().is_some_and(|ext| ext == "c"))
    });
    if has("Cargo.toml") {
        Starter {
            what: "a Cargo project",
            build: "cargo build --release --offline",
            test: "cargo test --release --offline",
        }
    } else if has("Makefile") || has("makefile") {
        Starter {
            what: "a Makefile",
            build: "make",
            test: "make check",
        }
    } else if has("package.json") {
        Starter {
            what: "an npm package",
            build: "npm ci --offline && npm run build",
            test: "npm test",
        }
    } else if has_c {
        Starter {
            what: "C sources",
            build: "cc -O2 -o app *.c",
            test: "test -x app",
        }
    } else {
        Starter {
            what: "nothing kiln recognises yet",
            build: "echo replace me with your build command",
            test: "echo replace me with your tests",
        }
    }
}

/// The manifests `kiln run` would pick up in `dir`: init never adds one
/// beside them (a new `build.kiln` would shadow `.djinn.yml`).
fn existing_manifests(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = ["build.kiln", ".djinn.yml"]
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| path.exists())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir.join(".kiln")) {
        found.extend(
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "kiln")),
        );
    }
    found
}

/// Writes a starter `build.kiln` for the directory; never overwrites.
pub fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let existing = existing_manifests(&dir);
    if !existing.is_empty() {
        bail!(
            "{} already has a manifest ({}): kiln init never overwrites or shadows one",
            dir.display(),
            existing
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let starter = guess(&dir);
    let name = std::fs::canonicalize(&dir)
        .ok()
        .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "this project".to_owned());
    let text = format!(
        r#"# build.kiln for {name}, written by `kiln init` ({what} found).
# The language and every attribute: docs/manifest.md. Try:
#   kiln check build.kiln    kiln plan    kiln run
{{
  # Jobs run in containers over this machine's own system (`host`);
  # `kiln image import NAME ARCHIVE` adds others.
  driver = {{ type = "container"; image = "host"; }};
  # The project directory, placed in each job's workspace (/work).
  sources = [ ./. ];
  stages = [ "build" "test" ];
  jobs = {{
    build = {{
      stage = "build";
      commands = [ {build:?} ];
      # artifacts = [ "path/in/workspace" ];
    }};
    test = {{
      stage = "test";
      needs = [ "build" ];
      commands = [ {test:?} ];
    }};
  }};
}}
"#,
        what = starter.what,
        build = starter.build,
        test = starter.test,
    );
    let path = dir.join("build.kiln");
    // `create_new`: a manifest appearing meanwhile is still not overwritten.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} for {}; `kiln plan` shows what it would run",
        path.display(),
        starter.what
    );
    Ok(ExitCode::SUCCESS)
}
