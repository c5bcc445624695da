//! `kiln store ...`: thin wrappers over the `kiln-store` library.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_store::{
    AddOptions, B3Digest, CurationPolicy, DEFAULT_THRESHOLD, FsckOptions, Node, ObjectKind,
    Progress, RestoreOptions, RootKind, RootSelector, Store,
};

/// Writes to stdout; a closed pipe (`| head`) ends the command quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        write_stdout(format_args!($($arg)*))?
    };
}
macro_rules! outln {
    () => { out!("\n") };
    ($($arg:tt)*) => { out!("{}\n", format_args!($($arg)*)) };
}

fn write_stdout(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_fmt(args) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Add a file or directory; prints its digest and keeps it under a root
    Add {
        /// The file or directory to add
        path: PathBuf,
        /// Root name to keep it under [default: its digest]
        #[arg(long)]
        name: Option<String>,
        /// Root kind: image, source, job_result, cache or object
        #[arg(long, default_value = "object")]
        kind: String,
        /// Record overlayfs whiteouts and opaque directories (an output layer)
        #[arg(long)]
        layer: bool,
        /// Print the digest, kind, size and root as JSON
        #[arg(long)]
        json: bool,
    },
    /// Write a blob's bytes to stdout
    Cat {
        /// The blob's digest (`blake3:<hex>`)
        digest: String,
    },
    /// Restore a tree into DIR (absent or empty), or a blob into the file DIR
    Restore {
        /// The tree's or blob's digest (`blake3:<hex>`)
        digest: String,
        /// Where it goes: a directory (absent or empty) for a tree, a new file for a blob
        dir: PathBuf,
        /// Recreate whiteouts (needs root) and opaque directories
        #[arg(long)]
        layer: bool,
    },
    /// List a tree's entries
    Ls {
        /// The tree's digest (`blake3:<hex>`)
        digest: String,
        /// Print the entries as JSON
        #[arg(long)]
        json: bool,
    },
    /// Show object counts, logical and stored bytes, and the dedup ratio
    Stats {
        /// Print the statistics as JSON
        #[arg(long)]
        json: bool,
    },
    /// List named roots
    Roots {
        /// Only roots of this kind
        #[arg(long)]
        kind: Option<String>,
        /// Print the roots as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove a named root (KIND/NAME); its data goes at the next gc
    Unroot {
        /// The root as KIND/NAME (`kiln store roots` lists them)
        root: String,
    },
    /// Drop old artifacts (newest kept per owner, pinned builds never) and
    /// least recently used cache entries, then sweep
    Curate {
        /// Artifact bytes kept per owner, e.g. 500MiB; 0 disables [default: 1GiB]
        #[arg(long, value_name = "SIZE")]
        threshold: Option<String>,
        /// Cache bytes kept (job results, cache roots); 0 disables [default: 1GiB]
        #[arg(long, value_name = "SIZE")]
        cache_threshold: Option<String>,
        /// Print what was dropped and swept as JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete unreferenced objects, then materialised images (image-cache/,
    /// vm-cache/images/) whose image is gone or that were unused too long
    Gc {
        /// Mark and sweep from all roots, repairing reference counts
        #[arg(long)]
        full: bool,
        /// Drop materialised images no build used for this long (`30d`,
        /// `12h`; `0s` drops them all: they are rebuilt when needed)
        #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = crate::cli::parse_duration)]
        unused_for: std::time::Duration,
        /// Print what was swept as JSON
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every object and check every reference
    Fsck {
        /// Remove orphans and temp files, mark roots whose data is gone
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Write the closure of roots (KIND/NAME or blake3:<hex>) to a bundle
    Export {
        /// Roots as KIND/NAME, or object digests (`blake3:<hex>`)
        #[arg(required = true)]
        roots: Vec<String>,
        /// The bundle file to write
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Add what a bundle holds that the store lacks, with its roots
    Import {
        /// The bundle file (`kiln store export` wrote it)
        file: PathBuf,
        /// Let the bundle's roots replace existing roots naming other objects
        #[arg(long)]
        force: bool,
    },
}

pub fn run(dir: &Path, command: StoreCommand) -> anyhow::Result<ExitCode> {
    let mut store =
        Store::open(dir).with_context(|| format!("opening the store at {}", dir.display()))?;
    match command {
        StoreCommand::Add {
            path,
            name,
            kind,
            layer,
            json,
        } => {
            let kind: RootKind = kind.parse()?;
            let bar = Bar::new("adding");
            let roots = store.temp_roots()?;
            let report = store.add_path(
                &path,
                &AddOptions {
                    layer,
                    progress: bar.as_progress(),
                },
                &roots,
            )?;
            bar.finish();
            let name = name.unwrap_or_else(|| report.object.digest.to_string());
            store.set_root(kind, &name, report.object)?;
            if json {
                print_json(&report)?;
            } else {
                outln!("{}", report.object.digest);
                eprintln!(
                    "{} {}: {} files, {}; {} new chunks, {} written; root {kind}/{name}",
                    report.object.kind.name(),
                    path.display(),
                    report.files,
                    bytes(report.size),
                    report.new_chunks,
                    bytes(report.new_bytes),
                );
            }
        }
        StoreCommand::Cat { digest } => {
            let digest: B3Digest = digest.parse()?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            match store.read_blob(&digest, &mut out).and_then(|_| {
                out.flush()
                    .map_err(|e| kiln_store::StoreError::io("<stdout>", e))
            }) {
                Ok(()) => {}
                Err(kiln_store::StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(error) => return Err(error.into()),
            }
        }
        StoreCommand::Restore { digest, dir, layer } => {
            let digest: B3Digest = digest.parse()?;
            let bar = Bar::new("restoring");
            let report = store.restore(
                &digest,
                &dir,
                &RestoreOptions {
                    layer,
                    progress: bar.as_progress(),
                },
            )?;
            bar.finish();
            eprintln!(
                "restored {} files ({}), {} directories, {} symlinks into {}",
                report.files,
                bytes(report.bytes),
                report.directories,
                report.symlinks,
                dir.display()
            );
        }
        StoreCommand::Ls { digest, json } => {
            let digest: B3Digest = digest.parse()?;
            list(&store, &digest, json)?;
        }
        StoreCommand::Stats { json } => {
            let stats = store.stats()?;
            let disk = store.disk_usage()?;
            if json {
                let mut value = serde_json::to_value(&stats)?;
                if let Some(map) = value.as_object_mut() {
                    map.insert("disk".into(), serde_json::to_value(&disk)?);
                }
                print_json(&value)?;
            } else {
                outln!("chunks        {}", stats.chunks);
                outln!("blobs         {}", stats.blobs);
                outln!("trees         {}", stats.trees);
                outln!("roots         {}", stats.roots);
                outln!(
                    "builds        {} ({} artifacts)",
                    stats.builds,
                    stats.artifacts
                );
                outln!("job results   {}", stats.job_results);
                outln!(
                    "logical bytes {} ({})",
                    stats.logical_bytes,
                    bytes(stats.logical_bytes)
                );
                outln!(
                    "unique bytes  {} ({})",
                    stats.unique_bytes,
                    bytes(stats.unique_bytes)
                );
                outln!(
                    "stored bytes  {} ({})",
                    stats.stored_bytes,
                    bytes(stats.stored_bytes)
                );
                outln!("dedup ratio   {:.2}", stats.dedup_ratio);
                outln!(
                    "on disk       {} ({}), everything under {}:",
                    disk.total,
                    bytes(disk.total),
                    dir.display()
                );
                for (part, size) in &disk.parts {
                    outln!("  {:<14}{}", part, bytes(*size));
                }
            }
        }
        StoreCommand::Roots { kind, json } => {
            let kind = kind.map(|k| k.parse::<RootKind>()).transpose()?;
            let roots = store.list_roots(kind)?;
            if json {
                print_json(&roots)?;
            } else {
                for root in roots {
                    let broken = if root.broken {
                        "  (broken: data gone)"
                    } else {
                        ""
                    };
                    outln!(
                        "{}/{}\t{}\t{}{broken}",
                        root.kind,
                        root.name,
                        root.object.kind.name(),
                        root.object.digest
                    );
                }
            }
        }
        StoreCommand::Unroot { root } => {
            let Ok(RootSelector::Named { kind, name }) = root.parse::<RootSelector>() else {
                anyhow::bail!("expected KIND/NAME, got {root:?}");
            };
            if !store.remove_root(kind, &name)? {
                anyhow::bail!("no root {kind}/{name}");
            }
        }
        StoreCommand::Curate {
            threshold,
            cache_threshold,
            json,
        } => {
            // Builds whose process died are finished: their artifacts count.
            if let Err(error) = store.fail_dead_builds() {
                eprintln!("warning: checking for builds whose process died: {error}");
            }
            let policy = CurationPolicy {
                artifact_threshold: parse_size(threshold.as_deref())?,
                cache_threshold: parse_size(cache_threshold.as_deref())?,
            };
            let report = store.curate(&policy)?;
            if json {
                print_json(&report)?;
            } else {
                outln!(
                    "removed {} artifacts ({}), evicted {} cache entries; swept {} trees, {} blobs, {} chunks, freed {}",
                    report.artifacts_removed,
                    bytes(report.artifact_bytes_removed),
                    report.cache_entries_evicted,
                    report.sweep.trees,
                    report.sweep.blobs,
                    report.sweep.chunks,
                    bytes(report.sweep.bytes_freed)
                );
            }
        }
        StoreCommand::Gc {
            full,
            unused_for,
            json,
        } => {
            let (sweep, repaired) = if full {
                let report = store.gc_full()?;
                (report.sweep, Some(report.refcounts_repaired))
            } else {
                (store.sweep()?, None)
            };
            // After the sweep: an image whose tree was swept is gone.
            let caches = crate::image::cache::collect(&mut store, unused_for)?;
            if json {
                let mut value = serde_json::to_value(&sweep)?;
                if let Some(map) = value.as_object_mut() {
                    if let Some(repaired) = repaired {
                        map.insert("refcounts_repaired".into(), repaired.into());
                    }
                    map.insert("materialised".into(), serde_json::to_value(&caches)?);
                }
                print_json(&value)?;
            } else {
                out!(
                    "swept {} trees, {} blobs, {} chunks, freed {}",
                    sweep.trees,
                    sweep.blobs,
                    sweep.chunks,
                    bytes(sweep.bytes_freed)
                );
                match repaired {
                    Some(n) => outln!("; repaired {n} reference counts"),
                    None => outln!(),
                }
                for removed in &caches.removed {
                    outln!(
                        "removed {} ({}, {})",
                        removed.path,
                        removed.reason,
                        bytes(removed.bytes)
                    );
                }
                match &caches.skipped {
                    Some(why) => outln!("materialised images: not collected ({why})"),
                    None => outln!(
                        "materialised images: removed {}, freed {}; kept {}",
                        caches.removed.len(),
                        bytes(caches.bytes_freed),
                        caches.kept
                    ),
                }
            }
        }
        StoreCommand::Fsck { repair, json } => {
            let bar = Bar::new("checking");
            let report = store.fsck(&FsckOptions {
                repair,
                progress: bar.as_progress(),
            })?;
            bar.finish();
            // After a repair, check again: what remains is what could not be fixed.
            let remaining = if repair {
                store.fsck(&FsckOptions::default())?
            } else {
                report.clone()
            };
            if json {
                print_json(
                    &serde_json::json!({ "report": report, "clean": remaining.is_clean(), "remaining": remaining.problems }),
                )?;
            } else {
                for problem in &report.problems {
                    outln!("problem: {problem}");
                }
                for repair in &report.repairs {
                    outln!("repaired: {repair}");
                }
                outln!(
                    "checked {} chunks, {} blobs, {} trees, {} roots: {}",
                    report.chunks_checked,
                    report.blobs_checked,
                    report.trees_checked,
                    report.roots_checked,
                    if remaining.is_clean() {
                        if report.is_clean() {
                            "clean".to_owned()
                        } else {
                            "repaired, now clean".to_owned()
                        }
                    } else {
                        format!("{} problems", remaining.problems.len())
                    }
                );
            }
            if !remaining.is_clean() {
                return Ok(ExitCode::from(super::EXIT_FAILURE));
            }
        }
        StoreCommand::Export { roots, output } => {
            let selectors = roots
                .iter()
                .map(|r| r.parse::<RootSelector>())
                .collect::<Result<Vec<_>, _>>()?;
            // Write beside the target and rename: a failed export leaves no half file.
            let parent = output
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut temp = tempfile::NamedTempFile::new_in(parent)
                .with_context(|| format!("creating {}", output.display()))?;
            let report = store.export(&selectors, temp.as_file_mut())?;
            temp.as_file().sync_all()?;
            temp.persist(&output)
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "exported {} roots: {} trees, {} blobs, {} chunks, {} to {}",
                report.roots,
                report.trees,
                report.blobs,
                report.chunks,
                bytes(report.bytes),
                output.display()
            );
        }
        StoreCommand::Import { file, force } => {
            let mut input =
                File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let options = kiln_store::ImportOptions {
                replace_roots: force,
            };
            let report = store
                .import_with(&mut input, options)
                .with_context(|| format!("importing {}", file.display()))?;
            for replaced in &report.replaced {
                eprintln!(
                    "replaced root {}/{}: {} -> {}",
                    replaced.kind, replaced.name, replaced.old, replaced.new
                );
            }
            eprintln!(
                "imported {} roots: {} trees, {} blobs, {} chunks ({} objects were already present)",
                report.roots, report.trees, report.blobs, report.chunks, report.already_present
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(store: &Store, digest: &B3Digest, json: bool) -> anyhow::Result<()> {
    if store.object_kind(digest)? == ObjectKind::Blob {
        anyhow::bail!("{digest} is a blob, not a tree: use `kiln store cat`");
    }
    let tree = store.tree(digest)?;
    if json {
        let entries: Vec<_> = tree
            .entries()
            .iter()
            .map(|entry| {
                let mut value = serde_json::json!({ "name": entry.name.to_string(), "kind": entry.node.kind_name() });
                let map = value.as_object_mut().expect("a json object");
                match &entry.node {
                    Node::File { digest, size, executable } => {
                        map.insert("size".into(), (*size).into());
                        map.insert("executable".into(), (*executable).into());
                        map.insert("digest".into(), digest.to_string().into());
                    }
                    Node::Directory { digest, size } => {
                        map.insert("size".into(), (*size).into());
                        map.insert("digest".into(), digest.to_string().into());
                    }
                    Node::Symlink { target } => {
                        map.insert("target".into(), String::from_utf8_lossy(target).into());
                    }
                    Node::Whiteout => {}
                }
                value
            })
            .collect();
        return print_json(
            &serde_json::json!({ "digest": digest.to_string(), "opaque": tree.opaque(), "entries": entries }),
        );
    }
    for entry in tree.entries() {
        match &entry.node {
            Node::File {
                digest,
                size,
                executable,
            } => {
                let mode = if *executable {
                    "-rwxr-xr-x"
                } else {
                    "-rw-r--r--"
                };
                outln!("{mode} {size:>12} {digest} {}", entry.name);
            }
            Node::Directory { digest, size } => {
                outln!("drwxr-xr-x {size:>12} {digest} {}/", entry.name)
            }
            Node::Symlink { target } => {
                outln!(
                    "lrwxrwxrwx {:>12} {:71} {} -> {}",
                    target.len(),
                    "",
                    entry.name,
                    String::from_utf8_lossy(target)
                );
            }
            Node::Whiteout => outln!("c--------- {:>12} {:71} {} (whiteout)", 0, "", entry.name),
        }
    }
    Ok(())
}

fn parse_size(text: Option<&str>) -> anyhow::Result<u64> {
    match text {
        None => Ok(DEFAULT_THRESHOLD),
        Some(text) => crate::cli::parse_byte_size(text).map_err(|e| anyhow::anyhow!(e)),
    }
}

fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    // Through `out!`: a closed pipe exits quietly here too.
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A progress bar on stderr, only when it is a terminal.
struct Bar(Option<ProgressBar>);

impl Bar {
    fn new(action: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = ProgressBar::hidden();
        let style = ProgressStyle::with_template(&format!(
            "{action} {{bar:30}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        Self(Some(bar))
    }

    fn as_progress(&self) -> Option<&dyn Progress> {
        self.0.as_ref().map(|_| self as &dyn Progress)
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn start(&self, _files: u64, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(bytes);
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }
}
