//! Progress for people on stderr: plain prefixed lines when stderr is not
//! a terminal.

use std::io::Write;

use super::{Envelope, Event, EventError, Interceptor, build_status_label};

/// Plain lines: `[build 3] job compile: passed (1.2s)`.
pub struct PlainConsole<W: Write + Send> {
    out: W,
    /// Hide `job/output` lines.
    quiet: bool,
}

impl<W: Write + Send> PlainConsole<W> {
    pub fn new(out: W, quiet: bool) -> Self {
        Self { out, quiet }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send> Interceptor for PlainConsole<W> {
    fn name(&self) -> &'static str {
        "console"
    }

    fn intercept(&mut self, envelope: &Envelope) -> Result<(), EventError> {
        let Some(line) = plain_line(envelope, self.quiet) else {
            return Ok(());
        };
        writeln!(self.out, "[build {}] {line}", envelope.build).map_err(|source| {
            EventError::Output {
                what: "progress",
                source,
            }
        })
    }
}

/// The plain-mode line for an event, if it gets one.
pub fn plain_line(envelope: &Envelope, quiet: bool) -> Option<String> {
    Some(match &envelope.event {
        Event::BuildStart { jobs, stages } => {
            format!("started: {jobs} job(s) in {} stage(s)", stages.len())
        }
        Event::JobStart { job, .. } => format!("job {job}: running"),
        Event::JobCached { job, .. } => format!("job {job}: cached"),
        Event::JobOutput { job, line } if !quiet => format!("{job} | {line}"),
        Event::JobEnd {
            job,
            status,
            duration_ms,
            message,
            ..
        } => {
            let mut line = format!("job {job}: {status} ({})", seconds(*duration_ms));
            if let Some(message) = message {
                line.push_str(": ");
                line.push_str(message);
            }
            line
        }
        Event::JobSkipped { job, reason, .. } => format!("job {job}: skipped ({reason})"),
        Event::Warning {
            job: Some(job),
            message,
        } => format!("warning: job {job}: {message}"),
        Event::Warning { job: None, message } => format!("warning: {message}"),
        Event::BuildStatusChanged { status } if status.is_finished() => {
            format!("build {}", build_status_label(*status))
        }
        _ => return None,
    })
}

/// `1.2s`, `850ms`, `2m03s`.
pub fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}
