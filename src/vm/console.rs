//! The serial console: QEMU writes it to a file; kiln follows it, keeps the
//! boot part for diagnosis and passes the job's part to the job log.

use std::collections::VecDeque;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::VmError;

/// Bytes of the console file read at a time.
const CONSOLE_BLOCK: usize = 64 << 10;

/// Boot console lines kept for the log when the boot fails.
const CONSOLE_TAIL: usize = 60;

/// Follows the serial console QEMU writes to a file: the boot part is kept
/// for diagnosis, the part between the job markers goes to the log.
pub(super) struct Console {
    path: PathBuf,
    file: Option<std::fs::File>,
    partial: Vec<u8>,
    state: ConsoleState,
    start_marker: String,
    end_marker: String,
    setup_failed_marker: String,
    output_failed_marker: String,
    tail: VecDeque<String>,
    /// The last job line, held back: the guest ends the job's output with a
    /// newline of its own, dropped when the job's output already ended in one.
    held: Option<String>,
    pub(super) job_started_at: Option<Instant>,
    pub(super) job_ended_at: Option<Instant>,
    pub(super) guest_uptime_at_start: Option<Duration>,
    pub(super) setup_failure: Option<String>,
    pub(super) output_failed: bool,
    pub(super) panic_seen: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsoleState {
    Boot,
    Job,
    Done,
}

impl Console {
    pub(super) fn new(path: PathBuf, nonce: &str) -> Console {
        Console {
            path,
            file: None,
            partial: Vec::new(),
            state: ConsoleState::Boot,
            start_marker: format!("@@kiln-job-start-{nonce}@@"),
            end_marker: format!("@@kiln-job-end-{nonce}@@"),
            setup_failed_marker: format!("@@kiln-setup-failed-{nonce}@@"),
            output_failed_marker: format!("@@kiln-output-failed-{nonce}@@"),
            tail: VecDeque::new(),
            held: None,
            job_started_at: None,
            job_ended_at: None,
            guest_uptime_at_start: None,
            setup_failure: None,
            output_failed: false,
            panic_seen: false,
        }
    }

    pub(super) async fn poll<W: AsyncWrite + Unpin>(&mut self, log: &mut W) -> Result<(), VmError> {
        if self.file.is_none() {
            self.file = std::fs::File::open(&self.path).ok();
        }
        if self.file.is_none() {
            return Ok(());
        }
        // Read in bounded blocks, and a line longer than MAX_CHUNK is
        // passed on in pieces: a guest printing gigabytes without a newline
        // costs kiln no more memory than one block.
        let mut block = vec![0u8; CONSOLE_BLOCK];
        loop {
            let Some(file) = self.file.as_mut() else {
                return Ok(());
            };
            let read = file.read(&mut block).map_err(|source| VmError::Io {
                context: format!("reading the console {}", self.path.display()),
                source,
            })?;
            if read == 0 {
                return Ok(());
            }
            self.partial.extend_from_slice(&block[..read]);
            loop {
                let newline = self.partial.iter().position(|&b| b == b'\n');
                match newline {
                    Some(end) if end <= crate::driver::MAX_CHUNK => {
                        let line: Vec<u8> = self.partial.drain(..=end).collect();
                        let line = String::from_utf8_lossy(&line[..end]);
                        let line = line.strip_suffix('\r').unwrap_or(&line).to_owned();
                        self.line(line, log).await?;
                    }
                    _ if self.partial.len() >= crate::driver::MAX_CHUNK => {
                        let piece: Vec<u8> =
                            self.partial.drain(..crate::driver::MAX_CHUNK).collect();
                        self.line(String::from_utf8_lossy(&piece).into_owned(), log)
                            .await?;
                    }
                    _ => break,
                }
            }
        }
    }

    async fn line<W: AsyncWrite + Unpin>(
        &mut self,
        line: String,
        log: &mut W,
    ) -> Result<(), VmError> {
        if line.contains("Kernel panic") {
            self.panic_seen = true;
        }
        match self.state {
            ConsoleState::Boot => {
                if let Some(rest) = line.strip_prefix(&self.start_marker) {
                    self.state = ConsoleState::Job;
                    self.job_started_at = Some(Instant::now());
                    self.guest_uptime_at_start = rest
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .and_then(|s| Duration::try_from_secs_f64(s).ok());
                } else if let Some(rest) = line.strip_prefix(&self.setup_failed_marker) {
                    self.setup_failure = Some(rest.trim().to_owned());
                    self.keep(line);
                } else {
                    self.keep(line);
                }
            }
            ConsoleState::Job => {
                if line.starts_with(&self.end_marker) {
                    self.state = ConsoleState::Done;
                    self.job_ended_at = Some(Instant::now());
                    if let Some(held) = self.held.take().filter(|held| !held.is_empty()) {
                        write_log(log, &format!("{held}\n")).await?;
                    }
                } else if let Some(held) = self.held.replace(line) {
                    write_log(log, &format!("{held}\n")).await?;
                }
            }
            ConsoleState::Done => {
                if line.starts_with(&self.output_failed_marker) {
                    self.output_failed = true;
                }
                self.keep(line);
            }
        }
        Ok(())
    }

    fn keep(&mut self, line: String) {
        if self.tail.len() == CONSOLE_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// Flushes a job's output cut short (timeout, kill, panic).
    pub(super) async fn finish<W: AsyncWrite + Unpin>(
        &mut self,
        log: &mut W,
    ) -> Result<(), VmError> {
        if self.state == ConsoleState::Job {
            if let Some(held) = self.held.take() {
                write_log(log, &format!("{held}\n")).await?;
            }
            if !self.partial.is_empty() {
                let rest = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                write_log(log, &format!("{rest}\n")).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn write_tail<W: AsyncWrite + Unpin>(
        &self,
        log: &mut W,
    ) -> Result<(), VmError> {
        if self.tail.is_empty() {
            return write_log(log, "kiln: the guest console is empty\n").await;
        }
        write_log(log, "kiln: last lines of the guest console:\n").await?;
        for line in &self.tail {
            write_log(log, &format!("  | {line}\n")).await?;
        }
        Ok(())
    }
}

pub(super) async fn write_log<W: AsyncWrite + Unpin>(
    log: &mut W,
    text: &str,
) -> Result<(), VmError> {
    log.write_all(text.as_bytes()).await.map_err(log_error)
}

pub(super) fn log_error(source: std::io::Error) -> VmError {
    VmError::Io {
        context: "writing the job log".to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_console_splits_boot_noise_from_the_job_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(
            &path,
            "[    0.1] Linux version 6.1\r\n@@kiln-job-start-n1@@ 1.25\r\nhello\r\nworld\r\n\r\n@@kiln-job-end-n1@@ 3\r\n[    2.0] reboot: Power down\r\n",
        )
        .unwrap();
        let mut console = Console::new(path, "n1");
        let mut log = Vec::new();
        console.poll(&mut log).await.unwrap();
        console.finish(&mut log).await.unwrap();
        assert_eq!(String::from_utf8(log).unwrap(), "hello\nworld\n");
        assert_eq!(
            console.guest_uptime_at_start,
            Some(Duration::from_millis(1250))
        );
        assert!(
            console
                .tail
                .iter()
                .any(|line| line.contains("Linux version"))
        );
    }

    #[tokio::test]
    async fn a_line_without_newline_is_passed_on_in_bounded_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let chunk = crate::driver::MAX_CHUNK;
        let long = "x".repeat(chunk * 3 + 5);
        std::fs::write(
            &path,
            format!("@@kiln-job-start-n1@@ 1\r\n{long}\r\n@@kiln-job-end-n1@@ 0\r\n"),
        )
        .unwrap();
        let mut console = Console::new(path, "n1");
        let mut log = Vec::new();
        console.poll(&mut log).await.unwrap();
        console.finish(&mut log).await.unwrap();
        // Never more than one block and one piece held.
        assert!(console.partial.capacity() < 4 * chunk);
        let lines: Vec<usize> = String::from_utf8(log)
            .unwrap()
            .lines()
            .map(str::len)
            .collect();
        assert_eq!(lines, [chunk, chunk, chunk, 5]);
    }
}
