//! `kiln image ...`: import, list and remove images (see docs/images.md).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use crate::image::{self, ImportOptions};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_store::{Progress, Store};

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Import a directory, a rootfs tarball (.tar, .tar.gz, .tar.zst) or an OCI image archive
    /// (an OCI layout tar or a `docker save` tarball) as the image NAME
    Import {
        /// The image name, as manifests use it (`debian/stable`, `golang:1.22`)
        name: String,
        /// A directory or a tarball (compression is recognised by content)
        src: PathBuf,
        /// Where a tarball is unpacked before it is stored [default: $TMPDIR]
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
        /// Print the import report as JSON (digest, format, size, files, what was left out)
        #[arg(long)]
        json: bool,
    },
    /// List imported images: name, digest, size, source, imported, last used (--json adds an
    /// OCI image's env, working dir and user)
    Ls {
        /// Print the images as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove an image; its data goes at the next curation or gc
    Rm {
        /// The image name (`kiln image ls` lists them)
        name: String,
    },
}

pub fn run(store_dir: &Path, command: ImageCommand) -> anyhow::Result<ExitCode> {
    let mut store = Store::open(store_dir)?;
    match command {
        ImageCommand::Import {
            name,
            src,
            scratch,
            json,
        } => {
            let bar = Bar::new();
            let options = ImportOptions {
                progress: bar.as_progress(),
                scratch_dir: scratch.as_deref(),
            };
            let report = image::import(&mut store, &name, &src, &options);
            bar.finish();
            let report = report?;
            for skipped in &report.skipped {
                eprintln!(
                    "warning: {}: left out {} {} (the sandbox provides its own /dev)",
                    src.display(),
                    skipped.kind,
                    skipped.path
                );
            }
            if json {
                crate::cli::outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                let from = report.source.to_string();
                crate::cli::outln!("{}", report.digest)?;
                let plural = if report.files == 1 { "" } else { "s" };
                eprintln!(
                    "imported image {} from {} ({from}): {} file{plural}, {}",
                    report.name,
                    src.display(),
                    report.files,
                    human_bytes(report.size)
                );
                if let Some(old) = report.replaced {
                    eprintln!("it replaces {old}");
                }
            }
        }
        ImageCommand::Ls { json } => {
            let images = image::list(&store)?;
            if json {
                crate::cli::outln!("{}", serde_json::to_string_pretty(&images)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = std::io::stdout().lock();
            let mut lines = vec![format!(
                "{:<30} {:<24} {:>10}  {:<18}  {:<20}  {:<20}",
                "NAME", "DIGEST", "SIZE", "SOURCE", "IMPORTED", "LAST USED"
            )];
            for info in &images {
                let short = format!("blake3:{}…", &info.digest.to_hex()[..16]);
                let broken = if info.broken { "  (broken)" } else { "" };
                let source = info
                    .source
                    .map_or_else(|| "-".to_owned(), |s| s.to_string());
                lines.push(format!(
                    "{:<30} {:<24} {:>10}  {:<18}  {:<20}  {:<20}{broken}",
                    info.name,
                    short,
                    human_bytes(info.size),
                    source,
                    time(info.imported),
                    time(info.last_used)
                ));
            }
            for line in lines {
                if let Err(e) = writeln!(out, "{}", line.trim_end()) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(ExitCode::SUCCESS);
                    }
                    return Err(e.into());
                }
            }
        }
        ImageCommand::Rm { name } => {
            let digest = image::remove(&mut store, &name)?;
            eprintln!("removed image {name} ({digest}); its data goes at the next gc");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

fn time(millis: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A progress bar on stderr when it is a terminal: first the archive's
/// bytes being unpacked, then the files' bytes being stored.
struct Bar {
    bar: Option<ProgressBar>,
    phase: AtomicU8,
}

impl Bar {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::hidden();
            let style = ProgressStyle::with_template(
                "{msg:9} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar
        });
        Bar {
            bar,
            phase: AtomicU8::new(0),
        }
    }

    fn as_progress(&self) -> Option<&dyn Progress> {
        self.bar.as_ref().map(|_| self as &dyn Progress)
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn start(&self, _files: u64, bytes: u64) {
        if let Some(bar) = &self.bar {
            let phase = self.phase.fetch_add(1, Ordering::Relaxed);
            bar.set_message(if phase == 0 { "reading" } else { "storing" });
            bar.reset();
            bar.set_length(bytes);
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }
}
