//! A job's output: one pipe for stdout and stderr, copied by a thread into
//! the log file and, line by line, to a sink (the `job/output` events).
//!
//! Architecture invariant: a job's output costs kiln bounded memory
//! whatever the job prints. The pipe is read in fixed-size blocks; a line
//! longer than [`MAX_CHUNK`] reaches the sink in chunks of at most that
//! size; the log stops growing at its cap ([`DEFAULT_LOG_LIMIT`], or
//! `kiln run --log-limit`) with [`truncated_marker`] as its last line, and
//! the pipe is still drained so the job keeps running.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

/// Longest piece of a line passed to the sink: longer lines arrive in
/// several pieces (the log keeps them whole, up to its cap).
pub const MAX_CHUNK: usize = 64 << 10;
/// A job's log stops growing after this many bytes of output by default.
pub const DEFAULT_LOG_LIMIT: u64 = 64 << 20;
/// Bytes read from the pipe at a time.
const READ_BLOCK: usize = 64 << 10;
/// After the job's processes are gone the pipe ends at once; this only
/// bounds a wait on a writer that escaped (never expected).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Receives each output line of a job, without its newline (a line longer
/// than [`MAX_CHUNK`] bytes in several pieces).
#[derive(Clone)]
pub struct LineSink(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for LineSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineSink")
    }
}

/// The line kiln ends a log with once the job's output reached `limit`.
pub fn truncated_marker(limit: u64) -> String {
    format!("kiln: log truncated after {limit} bytes; the job's further output was discarded")
}

/// The copying thread of one job.
pub(crate) struct Output {
    done: oneshot::Receiver<()>,
}

/// Creates the log file and the pipe; returns the job's stdout and stderr.
pub(crate) fn start(
    log: &Path,
    limit: u64,
    sink: Option<LineSink>,
) -> std::io::Result<(Stdio, Stdio, Output)> {
    let (writer, output) = start_writer(log, limit, sink)?;
    let stderr = writer.try_clone()?;
    Ok((Stdio::from(writer), Stdio::from(stderr), output))
}

/// Like [`start`], for output kiln itself writes (the VM's console): the
/// pipe's write end, to be dropped once everything is written.
pub(crate) fn start_writer(
    log: &Path,
    limit: u64,
    sink: Option<LineSink>,
) -> std::io::Result<(std::io::PipeWriter, Output)> {
    let file = File::create(log)?;
    let (reader, writer) = std::io::pipe()?;
    let (sender, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("kiln-job-output".into())
        .spawn(move || {
            copy(reader, Copier::new(file, limit, sink));
            let _ = sender.send(());
        })?;
    Ok((writer, Output { done }))
}

fn copy(mut reader: impl Read, mut copier: Copier) {
    let mut block = vec![0u8; READ_BLOCK];
    loop {
        match reader.read(&mut block) {
            Ok(0) => break,
            Ok(read) => copier.take(&block[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    copier.end();
}

/// Splits the output into the log (capped) and sink lines (chunked).
struct Copier {
    file: File,
    limit: u64,
    written: u64,
    truncated: bool,
    sink: Option<LineSink>,
    /// The current line's bytes not yet given to the sink (< MAX_CHUNK).
    line: Vec<u8>,
}

impl Copier {
    fn new(file: File, limit: u64, sink: Option<LineSink>) -> Copier {
        Copier {
            file,
            limit,
            written: 0,
            truncated: false,
            sink,
            line: Vec::with_capacity(1024),
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.truncated {
            // Drained and discarded: the job keeps running.
            return;
        }
        let room = usize::try_from(self.limit - self.written).unwrap_or(usize::MAX);
        let kept = &bytes[..bytes.len().min(room)];
        let _ = self.file.write_all(kept);
        self.written += kept.len() as u64;
        self.lines(kept);
        if kept.len() < bytes.len() {
            self.truncate();
        }
    }

    fn lines(&mut self, mut bytes: &[u8]) {
        if self.sink.is_none() {
            return;
        }
        while !bytes.is_empty() {
            let room = MAX_CHUNK - self.line.len();
            let window = &bytes[..bytes.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.line.extend_from_slice(&window[..end]);
                    self.emit();
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.line.extend_from_slice(window);
                    bytes = &bytes[window.len()..];
                    if self.line.len() == MAX_CHUNK {
                        self.emit();
                    }
                }
            }
        }
    }

    fn emit(&mut self) {
        if let Some(sink) = &self.sink {
            (sink.0)(&String::from_utf8_lossy(&self.line));
        }
        self.line.clear();
    }

    fn truncate(&mut self) {
        self.truncated = true;
        if !self.line.is_empty() {
            self.emit();
        }
        let marker = truncated_marker(self.limit);
        let newline = if self.written > 0 { "\n" } else { "" };
        let _ = self
            .file
            .write_all(format!("{newline}{marker}\n").as_bytes());
        if let Some(sink) = &self.sink {
            (sink.0)(&marker);
        }
        // The block kept in memory for the sink's current line is freed.
        self.line = Vec::new();
    }

    fn end(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

impl Output {
    /// Waits until everything the job wrote is in the log.
    pub(crate) async fn finish(self) {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.done).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn run(input: &[&[u8]], limit: u64) -> (Vec<u8>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&lines);
        let sink = LineSink(Arc::new(move |line: &str| {
            seen.lock().unwrap().push(line.to_owned())
        }));
        let mut copier = Copier::new(File::create(&log).unwrap(), limit, Some(sink));
        for block in input {
            copier.take(block);
        }
        copier.end();
        drop(copier);
        let lines = lines.lock().unwrap().clone();
        (std::fs::read(&log).unwrap(), lines)
    }

    #[test]
    fn lines_across_blocks_arrive_whole() {
        let (log, lines) = run(&[b"he", b"llo\nwor", b"ld\n\nlast"], 1 << 20);
        assert_eq!(log, b"hello\nworld\n\nlast");
        assert_eq!(lines, ["hello", "world", "", "last"]);
    }

    #[test]
    fn a_long_line_arrives_in_chunks_and_the_log_keeps_it_whole() {
        let long = vec![b'x'; MAX_CHUNK * 2 + 10];
        let (log, lines) = run(&[&long, b"\nshort\n"], 1 << 20);
        assert_eq!(log.len(), long.len() + 7);
        let sizes: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(sizes, [MAX_CHUNK, MAX_CHUNK, 10, 5]);
    }

    #[test]
    fn the_log_stops_at_its_cap_with_a_marker_and_the_rest_is_discarded() {
        let (log, lines) = run(&[b"0123456789\nabc", b"defghij\n", b"more\n"], 16);
        let marker = truncated_marker(16);
        assert_eq!(
            String::from_utf8(log).unwrap(),
            format!("0123456789\nabcde\n{marker}\n")
        );
        assert_eq!(lines, ["0123456789", "abcde", marker.as_str()]);
    }
}
