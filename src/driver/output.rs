//! A job's output: one pipe for stdout and stderr, copied by a thread into
//! the log file and, line by line, to a sink (the `job/output` events).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

/// Longest line passed to the sink (the log keeps everything).
const MAX_LINE: usize = 4096;
/// After the job's processes are gone the pipe ends at once; this only
/// bounds a wait on a writer that escaped (never expected).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Receives each output line of a job, without its newline.
#[derive(Clone)]
pub struct LineSink(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for LineSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineSink")
    }
}

/// The copying thread of one job.
pub(crate) struct Output {
    done: oneshot::Receiver<()>,
}

/// Creates the log file and the pipe; returns the job's stdout and stderr.
pub(crate) fn start(log: &Path, sink: Option<LineSink>) -> std::io::Result<(Stdio, Stdio, Output)> {
    let mut file = File::create(log)?;
    let (reader, writer) = std::io::pipe()?;
    let stderr = writer.try_clone()?;
    let (sender, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("kiln-job-output".into())
        .spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = file.write_all(&line);
                        if let Some(sink) = &sink {
                            let text = line.strip_suffix(b"\n").unwrap_or(&line);
                            let text = &text[..text.len().min(MAX_LINE)];
                            (sink.0)(&String::from_utf8_lossy(text));
                        }
                    }
                }
            }
            let _ = sender.send(());
        })?;
    Ok((Stdio::from(writer), Stdio::from(stderr), Output { done }))
}

impl Output {
    /// Waits until everything the job wrote is in the log.
    pub(crate) async fn finish(self) {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.done).await;
    }
}
