//! Progress for people, on stderr. Plain prefixed lines when stderr is not
//! a terminal; on a terminal a live view (one line per running job with its
//! elapsed time) and a summary table at the end.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{BuildStatus, Envelope, Event, EventError, Interceptor, JobStatus, build_status_label};
use crate::color::{Tone, paint};

/// The colour of a job status.
fn job_tone(status: JobStatus) -> Tone {
    match status {
        JobStatus::Passed => Tone::Good,
        JobStatus::Failed => Tone::Bad,
        JobStatus::TimedOut | JobStatus::Killed => Tone::Warn,
        JobStatus::Cached | JobStatus::Skipped | JobStatus::Queued | JobStatus::Running => {
            Tone::Quiet
        }
    }
}

/// The colour of a build status.
fn build_tone(status: BuildStatus) -> Tone {
    match status {
        BuildStatus::Passed => Tone::Good,
        BuildStatus::Failed => Tone::Bad,
        BuildStatus::PassedWithFailures | BuildStatus::Killed | BuildStatus::TimedOut => Tone::Warn,
        BuildStatus::Queued | BuildStatus::Running => Tone::Quiet,
    }
}

fn output_error(source: std::io::Error) -> EventError {
    EventError::Output {
        what: "progress",
        source,
    }
}

/// Plain lines: `[build 3] job compile: passed (1.2s)`.
pub struct PlainConsole<W: Write + Send> {
    out: W,
    /// Hide `job/output` lines.
    quiet: bool,
    tails: OutputTails,
    /// For the summary that ends the lines, as the live view's does.
    table: JobTable,
    build: i64,
}

impl<W: Write + Send> PlainConsole<W> {
    pub fn new(out: W, quiet: bool) -> Self {
        Self {
            out,
            quiet,
            tails: OutputTails::default(),
            table: JobTable::default(),
            build: 0,
        }
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
        self.build = envelope.build;
        self.table.record(envelope);
        let tail = self.tails.record(envelope);
        let Some(line) = plain_line(&envelope.event, self.quiet) else {
            return Ok(());
        };
        writeln!(self.out, "[build {}] {line}", envelope.build).map_err(output_error)?;
        if let Some(tail) = tail {
            self.out.write_all(tail.as_bytes()).map_err(output_error)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EventError> {
        self.out.flush().map_err(output_error)
    }

    fn finish(&mut self) -> Result<(), EventError> {
        if !self.table.rows().is_empty() || self.table.final_status.is_some() {
            let summary = self.table.render(self.build, SUMMARY_LIMIT);
            self.out
                .write_all(summary.as_bytes())
                .map_err(output_error)?;
        }
        self.flush()
    }
}

/// The plain-mode line for an event, if it gets one.
pub fn plain_line(event: &Event, quiet: bool) -> Option<String> {
    Some(match event {
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
        } => failure_line(job, *status, *duration_ms, message.as_deref()),
        Event::JobSkipped { job, reason, .. } => format!("job {job}: skipped ({reason})"),
        Event::StageEnd { stage, status } if *status != BuildStatus::Passed => {
            format!("stage {stage}: {}", build_status_label(*status))
        }
        Event::Warning {
            job: Some(job),
            message,
        } => format!("{} job {job}: {message}", paint("warning:", Tone::Warn)),
        Event::Warning { job: None, message } => {
            format!("{} {message}", paint("warning:", Tone::Warn))
        }
        Event::BuildStatusChanged { status } if status.is_finished() => {
            format!(
                "build {}",
                paint(build_status_label(*status), build_tone(*status))
            )
        }
        Event::JobCheck {
            job,
            outcome,
            output,
            artifacts,
            reason,
            ..
        } => check_lines(job, *outcome, output, artifacts, reason.as_deref()),
        _ => return None,
    })
}

/// `job compile: failed (1.2s): the job script exited with 1`.
fn failure_line(job: &str, status: JobStatus, duration_ms: u64, message: Option<&str>) -> String {
    let mut line = format!(
        "job {job}: {} ({})",
        paint(status.label(), job_tone(status)),
        duration(duration_ms)
    );
    if let Some(message) = message {
        line.push_str(": ");
        line.push_str(message);
    }
    line
}

/// `job stamp: NOT reproducible: 1 path differs`, then one indented line
/// per difference (output layer first, then artifacts).
fn check_lines(
    job: &str,
    outcome: crate::repro::CheckOutcome,
    output: &crate::repro::Comparison,
    artifacts: &crate::repro::Comparison,
    reason: Option<&str>,
) -> String {
    let mut text = format!("job {job}: {}", outcome.label());
    if let Some(reason) = reason {
        text.push_str(&format!(" ({reason})"));
    }
    for (what, comparison) in [("output layer", output), ("artifacts", artifacts)] {
        if comparison.is_identical() {
            continue;
        }
        text.push_str(&format!(
            "\n    {what}: {} difference(s)",
            comparison.count()
        ));
        for difference in &comparison.differences {
            text.push_str(&format!("\n      {difference}"));
        }
        if comparison.omitted > 0 {
            text.push_str(&format!("\n      ... and {} more", comparison.omitted));
        }
    }
    text
}

/// How many of a failed job's last output lines the console repeats.
pub const TAIL_LINES: usize = 20;
/// A kept line is cut to this many bytes: the tail of a job that prints
/// megabyte lines still costs little.
const TAIL_LINE_BYTES: usize = 1024;

/// The last [`TAIL_LINES`] output lines of each running job, so that a
/// failure can show what the job printed last (as cargo and `nix build`
/// do) without the console holding whole logs.
#[derive(Debug, Default)]
pub struct OutputTails {
    running: HashMap<String, Tail>,
}

#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    total: u64,
}

impl OutputTails {
    /// Keeps `job/output` lines; on a failed or timed out `job/end`, the
    /// block to print under the failure line (its last lines and how to
    /// see all of them).
    pub fn record(&mut self, envelope: &Envelope) -> Option<String> {
        match &envelope.event {
            Event::JobOutput { job, line } => {
                let tail = self.running.entry(job.clone()).or_default();
                if tail.lines.len() == TAIL_LINES {
                    tail.lines.pop_front();
                }
                tail.lines.push_back(cut_line(line));
                tail.total += 1;
                None
            }
            Event::JobEnd {
                job, status, log, ..
            } => {
                let tail = self.running.remove(job).unwrap_or_default();
                matches!(status, JobStatus::Failed | JobStatus::TimedOut)
                    .then(|| tail.render(envelope.build, job, log.is_some()))
                    .flatten()
            }
            Event::JobSkipped { job, .. } | Event::JobCached { job, .. } => {
                self.running.remove(job);
                None
            }
            _ => None,
        }
    }
}

impl Tail {
    fn render(&self, build: i64, job: &str, has_log: bool) -> Option<String> {
        if self.lines.is_empty() && !has_log {
            return None;
        }
        let mut text = String::new();
        if !self.lines.is_empty() {
            let shown = self.lines.len();
            if self.total > shown as u64 {
                text.push_str(&format!(
                    "  last {shown} of {} lines of {job}'s output:\n",
                    self.total
                ));
            } else {
                text.push_str(&format!("  output of {job}:\n"));
            }
            for line in &self.lines {
                text.push_str(&format!("  | {line}\n"));
            }
        }
        text.push_str(&format!("  see all of it: kiln log {build} {job}\n"));
        Some(text)
    }
}

fn cut_line(line: &str) -> String {
    if line.len() <= TAIL_LINE_BYTES {
        return line.to_owned();
    }
    let mut end = TAIL_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// `850ms`, `1.2s`, `2m03s`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// One row of the summary table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    pub job: String,
    pub stage: String,
    pub status: JobStatus,
    pub duration_ms: Option<u64>,
}

/// Folds job events into summary rows, in the order jobs first appear.
#[derive(Debug, Default)]
pub struct JobTable {
    rows: Vec<JobRow>,
    index: HashMap<String, usize>,
    final_status: Option<BuildStatus>,
    started_ms: Option<i64>,
    ended_ms: Option<i64>,
}

impl JobTable {
    pub fn record(&mut self, envelope: &Envelope) {
        let (job, stage, status, duration_ms) = match &envelope.event {
            Event::JobQueued { job, stage, .. } => (job, stage, JobStatus::Queued, None),
            Event::JobStart { job, stage, .. } => (job, stage, JobStatus::Running, None),
            Event::JobCached { job, stage, .. } => (job, stage, JobStatus::Cached, Some(0)),
            Event::JobSkipped { job, stage, .. } => (job, stage, JobStatus::Skipped, None),
            Event::JobEnd {
                job,
                stage,
                status,
                duration_ms,
                ..
            } => (job, stage, *status, Some(*duration_ms)),
            Event::BuildQueued { .. } => {
                self.started_ms.get_or_insert(envelope.time_ms);
                return;
            }
            Event::BuildStatusChanged { status } if status.is_finished() => {
                self.final_status = Some(*status);
                self.ended_ms = Some(envelope.time_ms);
                return;
            }
            _ => return,
        };
        let row = JobRow {
            job: job.clone(),
            stage: stage.clone(),
            status,
            duration_ms,
        };
        match self.index.get(job) {
            Some(&at) => self.rows[at] = row,
            None => {
                self.index.insert(job.clone(), self.rows.len());
                self.rows.push(row);
            }
        }
    }

    pub fn rows(&self) -> &[JobRow] {
        &self.rows
    }

    /// The table; past `limit` rows, passed and cached jobs are counted
    /// rather than listed (a no-op run of 1,000 cached jobs stays short).
    pub fn render(&self, build: i64, limit: usize) -> String {
        let shown: Vec<&JobRow> = if self.rows.len() <= limit {
            self.rows.iter().collect()
        } else {
            self.rows
                .iter()
                .filter(|row| !row.status.is_success())
                .collect()
        };
        let hidden = self.rows.len() - shown.len();
        let width = |f: fn(&JobRow) -> usize, title: &str| {
            shown
                .iter()
                .map(|row| f(row))
                .max()
                .unwrap_or(0)
                .max(title.len())
        };
        let job_w = width(|r| r.job.chars().count(), "JOB");
        let stage_w = width(|r| r.stage.chars().count(), "STAGE");
        let status_w = width(|r| r.status.label().len(), "STATUS");
        let mut out = String::new();
        if !shown.is_empty() {
            out.push_str(&format!(
                "{:job_w$}  {:stage_w$}  {:status_w$}  {:>8}  CACHED\n",
                "JOB", "STAGE", "STATUS", "DURATION"
            ));
            for row in &shown {
                let took = row.duration_ms.map(duration).unwrap_or_else(|| "-".into());
                let cached = if row.status == JobStatus::Cached {
                    "yes"
                } else {
                    "no"
                };
                // Padded first: escape codes have no width.
                let status = paint(
                    &format!("{:status_w$}", row.status.label()),
                    job_tone(row.status),
                );
                out.push_str(&format!(
                    "{:job_w$}  {:stage_w$}  {status}  {took:>8}  {cached}\n",
                    row.job, row.stage,
                ));
            }
        }
        if hidden > 0 {
            out.push_str(&format!("… and {hidden} more passed or cached job(s)\n"));
        }
        let count = |status: JobStatus| self.rows.iter().filter(|r| r.status == status).count();
        let mut line = format!("build {build}");
        if let Some(status) = self.final_status {
            line.push(' ');
            line.push_str(&paint(build_status_label(status), build_tone(status)));
        }
        if let (Some(start), Some(end)) = (self.started_ms, self.ended_ms) {
            line.push_str(&format!(" in {}", duration((end - start).max(0) as u64)));
        }
        line.push_str(&format!(
            ": {} passed, {} cached, {} failed, {} skipped",
            count(JobStatus::Passed),
            count(JobStatus::Cached),
            count(JobStatus::Failed),
            count(JobStatus::Skipped)
        ));
        // Stopped jobs did not fail: they are counted apart, when there are any.
        for status in [JobStatus::TimedOut, JobStatus::Killed] {
            if count(status) > 0 {
                line.push_str(&format!(", {} {}", count(status), status.label()));
            }
        }
        out.push_str(&line);
        out.push('\n');
        out
    }
}

/// Summary tables longer than this list only jobs that did not pass.
pub const SUMMARY_LIMIT: usize = 40;

/// The live view on a terminal.
pub struct LiveConsole {
    multi: MultiProgress,
    overall: Option<ProgressBar>,
    running: HashMap<String, ProgressBar>,
    table: JobTable,
    tails: OutputTails,
    echo: QuietControlKeys,
    build: i64,
    quiet: bool,
    done: u64,
}

/// While the live view is on screen, the terminal echoes control keys raw
/// instead of as `^C` (`ECHOCTL` off): the view pads every line to the
/// terminal's width, so a two-column `^C` wrapped onto a line of its own
/// that the view did not know about, and a stale progress line stayed on
/// screen after Ctrl-C; and Ctrl-C does not flush pending output
/// (`NOFLSH`). Restored when the view ends (finish or drop).
struct QuietControlKeys {
    saved: Option<libc::termios>,
}

impl QuietControlKeys {
    fn engage() -> Self {
        // SAFETY: an all-zero termios is a valid value for tcgetattr to fill.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr/tcsetattr read and write one termios for fd 2.
        let saved = unsafe {
            if libc::tcgetattr(libc::STDERR_FILENO, &mut saved) != 0 {
                return Self { saved: None };
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHOCTL;
            // Nor may Ctrl-C discard the output the terminal has not
            // shown yet: half a redraw lost leaves the view's idea of
            // the cursor wrong, and a line it prints next overwritten.
            quiet.c_lflag |= libc::NOFLSH;
            if libc::tcsetattr(libc::STDERR_FILENO, libc::TCSANOW, &quiet) != 0 {
                return Self { saved: None };
            }
            saved
        };
        Self { saved: Some(saved) }
    }

    fn restore(&mut self) {
        if let Some(saved) = self.saved.take() {
            // SAFETY: writes back the termios read by `engage`.
            unsafe { libc::tcsetattr(libc::STDERR_FILENO, libc::TCSANOW, &saved) };
        }
    }
}

impl Drop for QuietControlKeys {
    fn drop(&mut self) {
        self.restore();
    }
}

impl LiveConsole {
    pub fn new(quiet: bool) -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            overall: None,
            running: HashMap::new(),
            table: JobTable::default(),
            tails: OutputTails::default(),
            echo: QuietControlKeys::engage(),
            build: 0,
            quiet,
            done: 0,
        }
    }

    fn println(&self, line: &str) -> Result<(), EventError> {
        self.multi.println(line).map_err(output_error)
    }

    fn finish_job(&mut self, job: &str) {
        if let Some(bar) = self.running.remove(job) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        self.done += 1;
        if let Some(overall) = &self.overall {
            overall.set_position(self.done);
        }
    }
}

impl Interceptor for LiveConsole {
    fn name(&self) -> &'static str {
        "console"
    }

    fn intercept(&mut self, envelope: &Envelope) -> Result<(), EventError> {
        self.build = envelope.build;
        self.table.record(envelope);
        let tail = self.tails.record(envelope);
        match &envelope.event {
            Event::BuildStart { jobs, .. } if self.overall.is_some() => {
                if let Some(overall) = &self.overall {
                    overall.set_length(u64::from(*jobs));
                }
            }
            Event::BuildStart { jobs, .. } => {
                let style = ProgressStyle::with_template(
                    "build {prefix}: {pos}/{len} jobs done  {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                let bar = self.multi.add(
                    ProgressBar::new(u64::from(*jobs))
                        .with_style(style)
                        .with_prefix(envelope.build.to_string()),
                );
                bar.enable_steady_tick(Duration::from_millis(200));
                self.overall = Some(bar);
            }
            Event::JobStart { job, stage, .. } => {
                let style =
                    ProgressStyle::with_template("{spinner} {prefix} {elapsed:>4} {wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let bar = self.multi.add(
                    ProgressBar::new_spinner()
                        .with_style(style)
                        .with_prefix(format!("{job} ({stage})")),
                );
                bar.enable_steady_tick(Duration::from_millis(100));
                self.running.insert(job.clone(), bar);
            }
            Event::JobOutput { job, line } if !self.quiet => {
                if let Some(bar) = self.running.get(job) {
                    bar.set_message(line.clone());
                }
            }
            Event::JobCached { job, .. } => self.finish_job(job),
            Event::JobSkipped { job, .. } => self.finish_job(job),
            Event::JobEnd {
                job,
                status,
                duration_ms,
                message,
                ..
            } => {
                self.finish_job(job);
                if !status.is_success() {
                    let mut line = failure_line(job, *status, *duration_ms, message.as_deref());
                    if let Some(tail) = tail {
                        line.push('\n');
                        line.push_str(tail.trim_end());
                    }
                    self.println(&line)?;
                }
            }
            Event::Warning { .. } | Event::JobCheck { .. } => {
                if let Some(line) = plain_line(&envelope.event, false) {
                    self.println(&line)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), EventError> {
        for (_, bar) in self.running.drain() {
            bar.finish_and_clear();
        }
        if let Some(bar) = self.overall.take() {
            bar.finish_and_clear();
        }
        self.multi.clear().map_err(output_error)?;
        self.echo.restore();
        let summary = self.table.render(self.build, SUMMARY_LIMIT);
        let mut stderr = std::io::stderr().lock();
        stderr.write_all(summary.as_bytes()).map_err(output_error)?;
        stderr.flush().map_err(output_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::B3Digest;

    fn envelope(seq: u64, event: Event) -> Envelope {
        Envelope {
            seq,
            time_ms: seq as i64 * 10,
            build: 5,
            event,
        }
    }

    #[test]
    fn a_failure_repeats_only_the_last_lines_each_cut_short() {
        let mut tails = OutputTails::default();
        for n in 0..100 {
            let line = if n == 99 {
                "é".repeat(2000)
            } else {
                format!("line {n}")
            };
            let output = Event::JobOutput {
                job: "cc".into(),
                line,
            };
            assert_eq!(tails.record(&envelope(n, output)), None);
        }
        assert_eq!(tails.running["cc"].lines.len(), TAIL_LINES);
        let end = Event::JobEnd {
            job: "cc".into(),
            stage: "build".into(),
            status: JobStatus::Failed,
            duration_ms: 1,
            exit_code: Some(1),
            log: None,
            output_layer: None,
            message: None,
        };
        let text = tails.record(&envelope(100, end)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "  last 20 of 100 lines of cc's output:");
        assert_eq!(lines[1], "  | line 80");
        assert!(lines[20].len() <= TAIL_LINE_BYTES + "  | …".len());
        assert_eq!(lines[21], "  see all of it: kiln log 5 cc");
        assert!(tails.running.is_empty());
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(999), "999ms");
        assert_eq!(duration(1234), "1.2s");
        assert_eq!(duration(61_000), "1m01s");
        assert_eq!(duration(3_600_000), "60m00s");
    }

    #[test]
    fn a_long_summary_lists_only_the_jobs_that_did_not_pass() {
        let mut table = JobTable::default();
        table.record(&envelope(
            1,
            Event::BuildQueued {
                owner: "o".into(),
                manifest: "m".into(),
            },
        ));
        for n in 0..50u64 {
            table.record(&envelope(
                2 + n,
                Event::JobCached {
                    job: format!("lib{n:02}"),
                    stage: "build".into(),
                    key: B3Digest::of(&n.to_le_bytes()),
                    key_inputs: None,
                    output_layer: B3Digest::of(b"l"),
                    log: None,
                },
            ));
        }
        table.record(&envelope(
            60,
            Event::JobEnd {
                job: "link".into(),
                stage: "build".into(),
                status: JobStatus::Failed,
                duration_ms: 2500,
                exit_code: Some(1),
                log: None,
                output_layer: None,
                message: None,
            },
        ));
        table.record(&envelope(
            61,
            Event::BuildStatusChanged {
                status: BuildStatus::Failed,
            },
        ));
        assert_eq!(
            table.render(5, SUMMARY_LIMIT),
            "JOB   STAGE  STATUS  DURATION  CACHED\n\
             link  build  failed      2.5s  no\n\
             … and 50 more passed or cached job(s)\n\
             build 5 failed in 600ms: 0 passed, 50 cached, 1 failed, 0 skipped\n"
        );
        assert_eq!(table.render(5, 100).lines().count(), 53);
    }
}
