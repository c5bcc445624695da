//! The typed event flow of a build (design §8, after MonkeyCI).
//!
//! Everything that happens in a build is an [`Event`]. The scheduler only
//! emits events through an [`Emitter`]; the [`EventBus`] stamps each one into
//! an [`Envelope`] (sequence number, time, build number) and hands it to a
//! [`Router`], whose handlers derive further events (pure: event in, events
//! out) and whose interceptors do the effects: persist into the store, print
//! progress, print JSON lines. The envelope is the unit of transport: a build
//! running in a child process can later send the same serialised envelopes to
//! a controller over HTTP, and the controller feeds them to its own router.
//! See docs/events.md.

use serde::{Deserialize, Serialize};

pub use kiln_store::{B3Digest, BuildStatus, ObjectRef};

mod bus;
pub mod console;
mod error;
pub mod handlers;
pub mod json;
pub mod local;
pub mod persist;
mod router;

pub use bus::{BusReport, Emitter, EventBus};
pub use error::EventError;
pub use local::{ConsoleMode, LocalBus, LocalOptions};
pub use router::{Handler, Interceptor, Route, Router};

/// One thing that happened in a build. Serialised with a `type` tag equal to
/// [`Event::kind`], e.g. `{"type":"job/end","job":"compile",...}`.
///
/// Lifecycle of a job: `job/queued`, then either `job/cached` (served from
/// the store: terminal, no `job/start`/`job/end` follow), or `job/start` …
/// `job/output`* … `job/end`, or `job/skipped` (terminal). Durations are
/// milliseconds. Driver creation and source resolution are themselves jobs
/// (design §5) and may also be reported with `job/*` events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// A build was accepted for `manifest`, owned by `owner` (a project).
    #[serde(rename = "build/queued")]
    BuildQueued { owner: String, manifest: String },
    /// The process running the build; `kiln kill` signals `pid` on `host`.
    #[serde(rename = "build/initializing")]
    BuildInitializing { pid: u32, host: String },
    /// The graph is compiled: `stages` in order and the number of jobs.
    #[serde(rename = "build/start")]
    BuildStart { stages: Vec<String>, jobs: u32 },
    /// A driver (container or host) is ready; `image` is its image digest.
    #[serde(rename = "driver/created")]
    DriverCreated {
        driver: String,
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<B3Digest>,
        duration_ms: u64,
    },
    /// A source was resolved and imported as `tree`.
    #[serde(rename = "source/resolved")]
    SourceResolved {
        name: String,
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revision: Option<String>,
        tree: B3Digest,
    },
    /// An object was placed in the workspace base layer.
    #[serde(rename = "object/placed")]
    ObjectPlaced { name: String, object: ObjectRef },
    #[serde(rename = "stage/start")]
    StageStart { stage: String },
    #[serde(rename = "job/queued")]
    JobQueued {
        job: String,
        stage: String,
        /// The jobs it needs directly (the edges of the build's graph).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        needs: Vec<String>,
    },
    /// The job runs. `key_inputs` is the serialised key components (design
    /// §3) that `kiln explain` diffs; a never-cached job may have no key.
    #[serde(rename = "job/start")]
    JobStart {
        job: String,
        stage: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<B3Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_inputs: Option<serde_json::Value>,
    },
    /// The job's key has a successful result: it is not run. Terminal.
    #[serde(rename = "job/cached")]
    JobCached {
        job: String,
        stage: String,
        key: B3Digest,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_inputs: Option<serde_json::Value>,
        output_layer: B3Digest,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log: Option<B3Digest>,
    },
    /// One line of a running job's output (without its newline).
    #[serde(rename = "job/output")]
    JobOutput { job: String, line: String },
    /// A job that started has ended. `message` says why a job could not
    /// start or was stopped; `log` is the blob of its whole output.
    #[serde(rename = "job/end")]
    JobEnd {
        job: String,
        stage: String,
        status: JobStatus,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log: Option<B3Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_layer: Option<B3Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Not run because something before it failed. Terminal.
    #[serde(rename = "job/skipped")]
    JobSkipped {
        job: String,
        stage: String,
        reason: String,
    },
    /// `job` produced the artifact `name` (a blob or a tree) for this build.
    #[serde(rename = "artifact/saved")]
    ArtifactSaved {
        job: String,
        name: String,
        object: ObjectRef,
        size: u64,
    },
    /// A cache (`caches = [{ key; paths; }]`) was restored into `job`.
    #[serde(rename = "cache/restored")]
    CacheRestored {
        job: String,
        key: String,
        tree: B3Digest,
    },
    #[serde(rename = "cache/saved")]
    CacheSaved {
        job: String,
        key: String,
        tree: B3Digest,
        size: u64,
    },
    /// A stage is over: `passed`, `passed_with_failures` (failed but listed
    /// in `allow_failures`), `failed`, `killed` or `timed_out`.
    #[serde(rename = "stage/end")]
    StageEnd { stage: String, status: BuildStatus },
    /// The build is over, with the status its runner determined. The
    /// [`handlers::BuildStatusHandler`] folds it with the stage outcomes into
    /// the recorded status (`build/status`).
    #[serde(rename = "build/end")]
    BuildEnd {
        status: BuildStatus,
        duration_ms: u64,
    },
    #[serde(rename = "driver/destroyed")]
    DriverDestroyed { driver: String },
    /// `kiln run --check`: a rerun job compared with its recorded result
    /// (same key). `output` lists differing paths of the output layer
    /// (workspace paths), `artifacts` those of its artifacts (`NAME/path`).
    #[serde(rename = "job/check")]
    JobCheck {
        job: String,
        stage: String,
        outcome: crate::repro::CheckOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<B3Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recorded_output_layer: Option<B3Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_output_layer: Option<B3Digest>,
        #[serde(
            default,
            skip_serializing_if = "crate::repro::Comparison::is_identical"
        )]
        output: crate::repro::Comparison,
        #[serde(
            default,
            skip_serializing_if = "crate::repro::Comparison::is_identical"
        )]
        artifacts: crate::repro::Comparison,
        /// Why a job is unchecked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Derived by a handler: the build's recorded status changed.
    #[serde(rename = "build/status")]
    BuildStatusChanged { status: BuildStatus },
    /// Something worth telling that does not fail the build (e.g. a missing
    /// object, design §5.2). Always shown.
    #[serde(rename = "warning")]
    Warning {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<String>,
        message: String,
    },
}

impl Event {
    /// Every event type, as serialised in the `type` tag.
    pub const KINDS: &'static [&'static str] = &[
        "build/queued",
        "build/initializing",
        "build/start",
        "driver/created",
        "source/resolved",
        "object/placed",
        "stage/start",
        "job/queued",
        "job/start",
        "job/cached",
        "job/output",
        "job/end",
        "job/skipped",
        "artifact/saved",
        "cache/restored",
        "cache/saved",
        "stage/end",
        "build/end",
        "driver/destroyed",
        "job/check",
        "build/status",
        "warning",
    ];

    /// The event type, as serialised in the `type` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::BuildQueued { .. } => "build/queued",
            Event::BuildInitializing { .. } => "build/initializing",
            Event::BuildStart { .. } => "build/start",
            Event::DriverCreated { .. } => "driver/created",
            Event::SourceResolved { .. } => "source/resolved",
            Event::ObjectPlaced { .. } => "object/placed",
            Event::StageStart { .. } => "stage/start",
            Event::JobQueued { .. } => "job/queued",
            Event::JobStart { .. } => "job/start",
            Event::JobCached { .. } => "job/cached",
            Event::JobOutput { .. } => "job/output",
            Event::JobEnd { .. } => "job/end",
            Event::JobSkipped { .. } => "job/skipped",
            Event::ArtifactSaved { .. } => "artifact/saved",
            Event::CacheRestored { .. } => "cache/restored",
            Event::CacheSaved { .. } => "cache/saved",
            Event::StageEnd { .. } => "stage/end",
            Event::BuildEnd { .. } => "build/end",
            Event::DriverDestroyed { .. } => "driver/destroyed",
            Event::JobCheck { .. } => "job/check",
            Event::BuildStatusChanged { .. } => "build/status",
            Event::Warning { .. } => "warning",
        }
    }

    /// The job this event is about, if any.
    pub fn job(&self) -> Option<&str> {
        match self {
            Event::JobQueued { job, .. }
            | Event::JobStart { job, .. }
            | Event::JobCached { job, .. }
            | Event::JobOutput { job, .. }
            | Event::JobEnd { job, .. }
            | Event::JobSkipped { job, .. }
            | Event::ArtifactSaved { job, .. }
            | Event::CacheRestored { job, .. }
            | Event::CacheSaved { job, .. }
            | Event::JobCheck { job, .. } => Some(job),
            Event::Warning { job, .. } => job.as_deref(),
            _ => None,
        }
    }
}

/// An event as it travels: stamped with its place in the build's sequence,
/// the unix time in milliseconds it was emitted, and the build number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub seq: u64,
    pub time_ms: i64,
    pub build: i64,
    pub event: Event,
}

/// A job's status (design §5): the build statuses a job can have, plus
/// Cached (served from the store) and Skipped (something before it failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Passed,
    Failed,
    Killed,
    TimedOut,
    Cached,
    Skipped,
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Passed,
        JobStatus::Failed,
        JobStatus::Killed,
        JobStatus::TimedOut,
        JobStatus::Cached,
        JobStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Passed => "passed",
            JobStatus::Failed => "failed",
            JobStatus::Killed => "killed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Cached => "cached",
            JobStatus::Skipped => "skipped",
        }
    }

    /// Words for people: `timed out` rather than `timed_out`.
    pub fn label(self) -> &'static str {
        match self {
            JobStatus::TimedOut => "timed out",
            other => other.as_str(),
        }
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// Whether the job's outputs are good (ran and passed, or cached).
    pub fn is_success(self) -> bool {
        matches!(self, JobStatus::Passed | JobStatus::Cached)
    }

    /// What this job's outcome makes of its build, before `allow_failures`:
    /// a cached or skipped job does not worsen it.
    pub fn build_status(self) -> BuildStatus {
        match self {
            JobStatus::Queued => BuildStatus::Queued,
            JobStatus::Running => BuildStatus::Running,
            JobStatus::Passed | JobStatus::Cached | JobStatus::Skipped => BuildStatus::Passed,
            JobStatus::Failed => BuildStatus::Failed,
            JobStatus::Killed => BuildStatus::Killed,
            JobStatus::TimedOut => BuildStatus::TimedOut,
        }
    }
}

impl std::str::FromStr for JobStatus {
    type Err = EventError;
    fn from_str(text: &str) -> Result<Self, EventError> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| EventError::UnknownStatus(text.to_owned()))
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Words for people for a build status: `passed with failures`.
pub fn build_status_label(status: BuildStatus) -> &'static str {
    match status {
        BuildStatus::Queued => "queued",
        BuildStatus::Running => "running",
        BuildStatus::Passed => "passed",
        BuildStatus::PassedWithFailures => "passed with failures",
        BuildStatus::Failed => "failed",
        BuildStatus::Killed => "killed",
        BuildStatus::TimedOut => "timed out",
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_their_type_tag_and_round_trip() {
        let key = B3Digest::of(b"key");
        let envelope = Envelope {
            seq: 7,
            time_ms: 1_700_000_000_000,
            build: 3,
            event: Event::JobEnd {
                job: "compile".into(),
                stage: "build".into(),
                status: JobStatus::TimedOut,
                duration_ms: 1200,
                exit_code: None,
                log: Some(key),
                output_layer: None,
                message: Some("timeout of 1s".into()),
            },
        };
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(json["event"]["type"], "job/end");
        assert_eq!(json["event"]["status"], "timed_out");
        assert_eq!(json["event"]["log"], key.to_string());
        assert!(json["event"].get("exit_code").is_none());
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, envelope);
    }

    #[test]
    fn kind_matches_the_serialised_tag_for_every_variant() {
        let digest = B3Digest::of(b"x");
        let samples = [
            Event::BuildQueued {
                owner: "o".into(),
                manifest: "m".into(),
            },
            Event::BuildInitializing {
                pid: 1,
                host: "h".into(),
            },
            Event::BuildStart {
                stages: vec![],
                jobs: 0,
            },
            Event::DriverCreated {
                driver: "d".into(),
                kind: "container".into(),
                image: None,
                duration_ms: 0,
            },
            Event::SourceResolved {
                name: "s".into(),
                url: "u".into(),
                revision: None,
                tree: digest,
            },
            Event::ObjectPlaced {
                name: "o".into(),
                object: ObjectRef::blob(digest),
            },
            Event::StageStart { stage: "s".into() },
            Event::JobQueued {
                job: "j".into(),
                stage: "s".into(),
                needs: vec!["k".into()],
            },
            Event::JobStart {
                job: "j".into(),
                stage: "s".into(),
                key: None,
                key_inputs: None,
            },
            Event::JobCached {
                job: "j".into(),
                stage: "s".into(),
                key: digest,
                key_inputs: None,
                output_layer: digest,
                log: None,
            },
            Event::JobOutput {
                job: "j".into(),
                line: "l".into(),
            },
            Event::JobEnd {
                job: "j".into(),
                stage: "s".into(),
                status: JobStatus::Passed,
                duration_ms: 0,
                exit_code: Some(0),
                log: None,
                output_layer: None,
                message: None,
            },
            Event::JobSkipped {
                job: "j".into(),
                stage: "s".into(),
                reason: "r".into(),
            },
            Event::ArtifactSaved {
                job: "j".into(),
                name: "a".into(),
                object: ObjectRef::tree(digest),
                size: 1,
            },
            Event::CacheRestored {
                job: "j".into(),
                key: "k".into(),
                tree: digest,
            },
            Event::CacheSaved {
                job: "j".into(),
                key: "k".into(),
                tree: digest,
                size: 1,
            },
            Event::StageEnd {
                stage: "s".into(),
                status: BuildStatus::Passed,
            },
            Event::BuildEnd {
                status: BuildStatus::Passed,
                duration_ms: 0,
            },
            Event::DriverDestroyed { driver: "d".into() },
            Event::JobCheck {
                job: "j".into(),
                stage: "s".into(),
                outcome: crate::repro::CheckOutcome::Differs,
                key: Some(digest),
                recorded_output_layer: Some(digest),
                new_output_layer: Some(digest),
                output: crate::repro::Comparison {
                    differences: vec![crate::repro::Difference {
                        path: "stamp".into(),
                        change: crate::repro::Change::Content,
                        recorded_kind: None,
                        new_kind: None,
                        recorded_size: Some(20),
                        new_size: Some(20),
                        first_differing_offset: Some(12),
                        detail: None,
                    }],
                    omitted: 0,
                },
                artifacts: Default::default(),
                reason: None,
            },
            Event::BuildStatusChanged {
                status: BuildStatus::Failed,
            },
            Event::Warning {
                job: None,
                message: "m".into(),
            },
        ];
        assert_eq!(samples.len(), Event::KINDS.len());
        for (event, kind) in samples.iter().zip(Event::KINDS) {
            let json = serde_json::to_value(event).unwrap();
            assert_eq!(json["type"], *kind);
            assert_eq!(event.kind(), *kind);
            let back: Event = serde_json::from_value(json).unwrap();
            assert_eq!(&back, event);
        }
    }

    #[test]
    fn job_statuses_parse_back_and_map_to_build_statuses() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>().unwrap(), status);
        }
        assert!("nope".parse::<JobStatus>().is_err());
        assert_eq!(JobStatus::Cached.build_status(), BuildStatus::Passed);
        assert_eq!(JobStatus::TimedOut.build_status(), BuildStatus::TimedOut);
        assert_eq!(
            BuildStatus::Failed.worst(BuildStatus::Killed),
            BuildStatus::Killed
        );
        assert_eq!(
            BuildStatus::PassedWithFailures.worst(BuildStatus::Passed),
            BuildStatus::PassedWithFailures
        );
    }
}
