//! `kiln log -f`: follow a running build's output through its controller's
//! `GET /events` stream (docs/controller.md), from another terminal.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use http_body_util::BodyExt;

use crate::controller::{ControllerClient, Endpoint};
use crate::events::{Envelope, Event};
use crate::scheduler::builddir::controller_dir;

/// Whether build `build` has a live controller to follow.
pub fn followable(store_dir: &Path, build: i64) -> bool {
    controller_dir(store_dir, build).join("socket").exists()
}

/// Prints the output of `job` (or of every job, each line after its job's
/// name) of the running build `build` as it comes, from its first line;
/// returns when the job (or the build) ends.
pub fn follow(store_dir: &Path, build: i64, job: Option<&str>) -> anyhow::Result<()> {
    let dir = controller_dir(store_dir, build);
    let token = std::fs::read_to_string(dir.join("token"))
        .with_context(|| format!("reading the token of build {build}'s controller"))?;
    let client = ControllerClient::new(Endpoint::Unix(dir.join("socket")), token);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let mut connection = client.connect().await?;
        if let Some(job) = job {
            let body = connection
                .expect_ok(hyper::Method::GET, "/build", bytes::Bytes::new())
                .await?;
            let params: crate::controller::BuildParams = serde_json::from_slice(&body)
                .map_err(crate::controller::ControllerError::Params)?;
            if !params.graph.jobs.iter().any(|known| known.name == job) {
                let known: Vec<&str> = params.graph.jobs.iter().map(|j| j.name.as_str()).collect();
                bail!(
                    "build {build} has no job {job:?} (its jobs: {})",
                    known.join(", ")
                );
            }
        }
        print_stream(&mut connection, "/events", build, job).await
    })
}

/// Prints what `job` (or every job) writes, read from the server-sent
/// events at `path` on `connection`, until it ends.
pub(crate) async fn print_stream(
    connection: &mut crate::controller::client::Connection,
    path: &str,
    build: i64,
    job: Option<&str>,
) -> anyhow::Result<()> {
    let (status, mut body) = connection.open_stream(path, &[]).await?;
    if !status.is_success() {
        bail!("following build {build}: the answer was {status}");
    }
    let stdout = std::io::stdout();
    let mut printer = Printer {
        job,
        out: stdout.lock(),
        pending: Vec::new(),
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the event stream")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        printer.pending.extend_from_slice(&data);
        if printer.drain()? {
            return Ok(());
        }
    }
    Ok(())
}

struct Printer<'a, W: Write> {
    job: Option<&'a str>,
    out: W,
    pending: Vec<u8>,
}

impl<W: Write> Printer<'_, W> {
    /// Prints every complete event in `pending`; `true` once what is
    /// followed has ended.
    fn drain(&mut self) -> anyhow::Result<bool> {
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let Ok(envelope) = serde_json::from_str::<Envelope>(data.trim_start()) else {
                    continue;
                };
                if self.print(&envelope.event)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn print(&mut self, event: &Event) -> anyhow::Result<bool> {
        let written = match (event, self.job) {
            (Event::JobOutput { job, line }, Some(wanted)) if job == wanted => {
                writeln!(self.out, "{line}")
            }
            (Event::JobOutput { job, line }, None) => writeln!(self.out, "{job} | {line}"),
            (
                Event::JobEnd { job, .. }
                | Event::JobCached { job, .. }
                | Event::JobSkipped { job, .. },
                Some(wanted),
            ) if job == wanted => return Ok(true),
            (Event::BuildEnd { .. }, _) => return Ok(true),
            _ => Ok(()),
        };
        match written.and_then(|()| self.out.flush()) {
            // `kiln log -f | head`: the reader is gone, so are we.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
            other => other.map(|()| false).map_err(Into::into),
        }
    }
}
