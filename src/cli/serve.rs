//! `kiln serve` (the build server), `kiln serve token ...`, and the client
//! `kiln submit` (docs/server.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::BodyExt;
use hyper::Method;
use kiln_store::{CurationPolicy, Role, Store};

use crate::cli::manifest::ManifestInputs;
use crate::controller::{BuildPlace, ControllerClient, Endpoint};
use crate::events::{BuildStatus, Envelope, Interceptor};
use crate::server::{ServerConfig, auth};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    #[command(subcommand)]
    pub command: Option<ServeCommand>,
    /// Address to listen on (put a reverse proxy in front for TLS)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8377")]
    pub listen: SocketAddr,
    /// Builds running at once; the rest wait in the queue
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_builds: u64,
    /// Largest upload accepted (a submitted project archive)
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = crate::cli::parse_byte_size)]
    pub max_upload: u64,
    /// Largest size an upload may expand to
    #[arg(long, value_name = "SIZE", default_value = "8GiB", value_parser = crate::cli::parse_byte_size)]
    pub max_expanded: u64,
    /// Artifacts kept per project before curation removes the oldest
    /// (pinned builds never); 0 keeps everything
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = crate::cli::parse_byte_size)]
    pub artifact_threshold: u64,
    /// How often curation runs (e.g. `1h`, `30m`); `0` only on request
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub curate_every: Duration,
    /// Where build processes run: child processes, or kiln containers (root)
    #[arg(long = "in", value_name = "PLACE", value_enum, default_value_t = BuildPlace::Child)]
    pub place: BuildPlace,
}

#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// API tokens of the server in this store
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; prints it alone on stdout (it is stored hashed: keep it)
    Create {
        /// A name for who uses it (shown as a build's submitter)
        name: String,
        /// What it may do: read; submit (and kill); admin (and pin, curate)
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List the tokens: name, role, created
    Ls,
    /// Remove a token (a running server refuses it within 10 seconds)
    Rm {
        /// The token's name (as `kiln serve token ls` lists it)
        name: String,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a role: read, submit or admin"))
}

pub fn serve(store_dir: &Path, args: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(ServeCommand::Token(command)) = args.command {
        return token(store_dir, command);
    }
    drop(
        Store::open(store_dir)
            .with_context(|| format!("opening the store {}", store_dir.display()))?,
    );
    let config = ServerConfig {
        listen: args.listen,
        store_dir: store_dir.to_path_buf(),
        max_builds: usize::try_from(args.max_builds).unwrap_or(usize::MAX),
        max_upload: args.max_upload,
        max_expanded: args.max_expanded,
        place: args.place,
        curation: CurationPolicy {
            artifact_threshold: args.artifact_threshold,
            ..CurationPolicy::default()
        },
        curate_every: (!args.curate_every.is_zero()).then_some(args.curate_every),
        exe: std::env::current_exe().context("locating the kiln binary")?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut interrupt), Ok(mut terminate)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        };
        let (address, server) = crate::server::bind(config, shutdown).await?;
        eprintln!("kiln serve: listening on http://{address}");
        server.await;
        eprintln!("kiln serve: stopped (queued builds stay queued)");
        anyhow::Ok(())
    })?;
    // Running builds stop with the server: their build processes get their
    // parent-death signal; the next start records them as failed.
    runtime.shutdown_timeout(Duration::from_secs(10));
    Ok(ExitCode::SUCCESS)
}

fn token(store_dir: &Path, command: TokenCommand) -> anyhow::Result<ExitCode> {
    let mut store = Store::open(store_dir)?;
    match command {
        TokenCommand::Create { name, role } => {
            if name.is_empty() || name.chars().any(|c| c.is_control()) {
                bail!("a token name must be non-empty printable text");
            }
            let value = auth::generate().context("generating a token")?;
            store.add_token(&name, role, &auth::hash(&value))?;
            println!("{value}");
        }
        TokenCommand::Ls => {
            for token in store.list_tokens()? {
                println!("{}\t{}\t{}", token.name, token.role.as_str(), token.created);
            }
        }
        TokenCommand::Rm { name } => {
            if !store.remove_token(&name)? {
                bail!("no token named {name:?}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The manifest [default: build.kiln, else .kiln/*.kiln, else .djinn.yml]
    #[arg(value_name = "MANIFEST")]
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub inputs: ManifestInputs,
    /// The server, e.g. http://127.0.0.1:8377
    #[arg(long, value_name = "URL", env = "KILN_SERVER")]
    pub server: String,
    /// The API token (a `submit` role at least)
    #[arg(long, value_name = "TOKEN", env = "KILN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Print the build's number and return instead of following it
    #[arg(long)]
    pub detach: bool,
}

/// Packs the manifest's project (its git repository, else its directory),
/// uploads it, then follows the build as `kiln run` shows it and exits
/// with the same code.
pub fn submit(store_dir: Option<&Path>, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let path = crate::cli::run::find_manifest(args.manifest.as_deref())?;
    let options = args.inputs.load_options()?;
    let loaded = kiln_grammar::load::load(&path, &options);
    eprint!("{}", loaded.render_diagnostics());
    let manifest = match loaded.result {
        Ok(manifest) => manifest,
        Err(kiln_grammar::load::LoadError::Invalid(_)) => {
            return Ok(ExitCode::from(crate::cli::EXIT_MANIFEST));
        }
        Err(kiln_grammar::load::LoadError::Io(_)) => {
            return Ok(ExitCode::from(crate::cli::EXIT_FAILURE));
        }
    };
    let root = manifest
        .roots
        .roots()
        .first()
        .cloned()
        .context("the manifest has no project root")?;
    let manifest_path = std::fs::canonicalize(&path)?;
    let relative = manifest_path
        .strip_prefix(&root)
        .with_context(|| {
            format!(
                "{} is not inside its project {}",
                path.display(),
                root.display()
            )
        })?
        .to_path_buf();
    let archive = pack(&root, store_dir).with_context(|| format!("packing {}", root.display()))?;
    eprintln!(
        "kiln submit: uploading {} ({}) to {}",
        root.display(),
        bytesize::ByteSize(archive.len() as u64),
        args.server
    );
    let project = root.file_name().map_or_else(
        || "project".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut query: form_urlencoded::Serializer<String> =
        form_urlencoded::Serializer::new(String::new());
    query.append_pair("manifest", &relative.to_string_lossy());
    query.append_pair("project", &project);
    for arg in &args.inputs.args {
        query.append_pair("arg", arg);
    }
    let endpoint = Endpoint::parse(&args.server)?;
    let client = ControllerClient::new(endpoint, args.token.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let mut connection = client.connect().await?;
        let (status, body) = connection
            .request(
                Method::POST,
                &format!("/api/builds?{}", query.finish()),
                Bytes::from(archive),
            )
            .await?;
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if status.as_u16() == 422 {
            eprint!("{}", answer["diagnostics"].as_str().unwrap_or_default());
            return Ok(ExitCode::from(crate::cli::EXIT_MANIFEST));
        }
        if !status.is_success() {
            bail!(
                "the server refused the build ({status}): {}",
                answer["error"]
                    .as_str()
                    .unwrap_or(&String::from_utf8_lossy(&body))
            );
        }
        let build = answer["build"]
            .as_i64()
            .context("the server named no build")?;
        if args.detach {
            println!("{build}");
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("kiln submit: build {build} queued");
        follow_build(&client, build).await
    })
}

/// Prints the build's events as `kiln run` does (plain lines) until it
/// ends; its exit code is `kiln run`'s for the build's status.
async fn follow_build(client: &ControllerClient, build: i64) -> anyhow::Result<ExitCode> {
    let mut console = crate::events::console::PlainConsole::new(std::io::stderr(), false);
    let mut after = 0u64;
    // The events stream ends when the build does, or is the recorded one
    // when it is not running yet: poll until it has begun.
    for _ in 0..u32::MAX {
        let mut connection = client.connect().await?;
        let last = after.to_string();
        let (status, mut body) = connection
            .open_stream(
                &format!("/api/builds/{build}/events"),
                &[("Last-Event-ID", &last)],
            )
            .await?;
        if !status.is_success() {
            bail!("following build {build}: the server answered {status}");
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = pending.drain(..end + 2).collect();
                for line in String::from_utf8_lossy(&block).lines() {
                    if let Some(data) = line.strip_prefix("data:")
                        && let Ok(envelope) = serde_json::from_str::<Envelope>(data.trim_start())
                    {
                        after = after.max(envelope.seq);
                        let _ = console.intercept(&envelope);
                    }
                }
            }
            let _ = console.flush();
        }
        let (status, body) = connection
            .request(Method::GET, &format!("/api/builds/{build}"), Bytes::new())
            .await?;
        if !status.is_success() {
            bail!("reading build {build}: the server answered {status}");
        }
        let record: serde_json::Value = serde_json::from_slice(&body)?;
        let status: BuildStatus = serde_json::from_value(record["status"].clone())
            .context("the server sent an unknown build status")?;
        if status.is_finished() {
            return Ok(ExitCode::from(match status {
                BuildStatus::Passed | BuildStatus::PassedWithFailures => 0,
                BuildStatus::Killed => crate::cli::run::EXIT_BUILD_KILLED,
                BuildStatus::TimedOut => crate::cli::run::EXIT_BUILD_TIMED_OUT,
                _ => crate::cli::run::EXIT_BUILD_FAILED,
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!("the loop returns")
}

/// A tar of `root`, paths relative to it, symlinks as links, without the
/// local store if it lies inside. In a git repository, what git would
/// commit: tracked files and untracked ones it does not ignore (no `.git`,
/// no `target/` or other ignored build output).
fn pack(root: &Path, store_dir: Option<&Path>) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let skip = store_dir
        .and_then(|dir| std::fs::metadata(dir).ok())
        .map(|meta| (meta.dev(), meta.ino()));
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    if let Some(files) = git_files(root) {
        let store = store_dir.and_then(|dir| std::fs::canonicalize(dir).ok());
        for relative in files {
            let path = root.join(&relative);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue; // deleted but still in the index
            };
            if store.as_ref().is_some_and(|store| path.starts_with(store)) || meta.is_dir() {
                continue;
            }
            builder.append_path_with_name(&path, &relative)?;
        }
        return builder.into_inner();
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = root.join(&relative);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let meta = std::fs::symlink_metadata(entry.path())?;
            let name = relative.join(entry.file_name());
            if meta.is_dir() {
                if skip == Some((meta.dev(), meta.ino())) {
                    continue;
                }
                builder.append_dir(&name, entry.path())?;
                stack.push(name);
            } else {
                builder.append_path_with_name(entry.path(), &name)?;
            }
        }
    }
    builder.into_inner()
}

/// The files git would commit under `root`, when `root` is a git work
/// tree and git runs; sorted.
fn git_files(root: &Path) -> Option<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    if !root.join(".git").exists() {
        return None;
    }
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let mut files: Vec<PathBuf> = output
        .stdout
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| PathBuf::from(std::ffi::OsStr::from_bytes(name)))
        .collect();
    files.sort();
    files.dedup();
    Some(files)
}
