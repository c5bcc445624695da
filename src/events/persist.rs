//! Persists a build's events, jobs, artifacts, process and status into the
//! store's sqlite: buffered per envelope, one transaction per flush.

use std::path::Path;

use kiln_store::{BuildBatch, BuildId, JobUpdate, Store, StoredEvent};

use super::{Envelope, Event, EventError, Interceptor, JobStatus};

pub struct Persist {
    store: Store,
    build: BuildId,
    batch: BuildBatch,
    /// Whether a finished build status was recorded.
    ended: bool,
    /// The build's lease (`Store::create_build_leased`): released when the
    /// interceptor is dropped, after the last batch (the final status) is
    /// recorded.
    lease: Option<kiln_store::Lease>,
}

impl Persist {
    /// Opens its own handle on the store at `dir` (a store handle belongs
    /// to one thread) to record `build`.
    pub fn open(dir: &Path, build: BuildId) -> Result<Self, EventError> {
        let store = Store::open(dir).map_err(|source| EventError::OpenStore {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(Self::new(store, build))
    }

    pub fn new(store: Store, build: BuildId) -> Self {
        Self {
            store,
            build,
            batch: BuildBatch::default(),
            ended: false,
            lease: None,
        }
    }

    /// Keeps `lease` (the build's) until this interceptor is dropped.
    pub fn with_lease(mut self, lease: kiln_store::Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    fn job(
        &mut self,
        envelope: &Envelope,
        job: &str,
        stage: &str,
        status: JobStatus,
    ) -> &mut JobUpdate {
        self.batch.jobs.push(JobUpdate {
            name: job.to_owned(),
            stage: stage.to_owned(),
            position: envelope.seq as i64,
            status: status.as_str().to_owned(),
            ..JobUpdate::default()
        });
        let last = self.batch.jobs.len() - 1;
        &mut self.batch.jobs[last]
    }
}

impl Interceptor for Persist {
    fn name(&self) -> &'static str {
        "persist"
    }

    fn intercept(&mut self, envelope: &Envelope) -> Result<(), EventError> {
        let time = envelope.time_ms;
        match &envelope.event {
            Event::BuildQueued { manifest, .. } => self.batch.manifest = Some(manifest.clone()),
            Event::BuildInitializing { pid, host } => {
                self.batch.process = Some((*pid, host.clone()))
            }
            Event::BuildStatusChanged { status } => {
                self.ended |= status.is_finished();
                self.batch.status = Some(*status);
            }
            Event::JobQueued { job, stage, .. } => {
                self.job(envelope, job, stage, JobStatus::Queued);
            }
            Event::JobStart {
                job,
                stage,
                key,
                key_inputs,
            } => {
                let update = self.job(envelope, job, stage, JobStatus::Running);
                update.key = *key;
                update.key_inputs = key_inputs.clone();
                update.started = Some(time);
            }
            Event::JobCached {
                job,
                stage,
                key,
                key_inputs,
                log,
                ..
            } => {
                let update = self.job(envelope, job, stage, JobStatus::Cached);
                update.key = Some(*key);
                update.key_inputs = key_inputs.clone();
                update.log = *log;
                update.cached = Some(true);
                update.started = Some(time);
                update.finished = Some(time);
                update.duration_ms = Some(0);
            }
            Event::JobEnd {
                job,
                stage,
                status,
                duration_ms,
                exit_code,
                log,
                message,
                ..
            } => {
                let update = self.job(envelope, job, stage, *status);
                update.finished = Some(time);
                update.duration_ms = Some(*duration_ms);
                update.exit_code = *exit_code;
                update.log = *log;
                update.message = message.clone();
            }
            Event::JobSkipped { job, stage, reason } => {
                let update = self.job(envelope, job, stage, JobStatus::Skipped);
                update.message = Some(reason.clone());
            }
            Event::ArtifactSaved { name, object, .. } => {
                self.batch.artifacts.push((name.clone(), *object));
            }
            _ => {}
        }
        // Output lines are in the job's log blob already.
        if !matches!(envelope.event, Event::JobOutput { .. }) {
            let body = serde_json::to_string(envelope).map_err(|e| EventError::Interceptor {
                interceptor: "persist",
                message: format!("cannot serialise event {}: {e}", envelope.seq),
            })?;
            self.batch.events.push(StoredEvent {
                build: self.build,
                seq: envelope.seq,
                time,
                kind: envelope.event.kind().to_owned(),
                body,
            });
        }
        Ok(())
    }

    /// A flow that ends without a finished status (its runner failed before
    /// `build/end`) is recorded as failed rather than running forever.
    fn finish(&mut self) -> Result<(), EventError> {
        if !self.ended {
            self.batch.status = Some(kiln_store::BuildStatus::Failed);
            self.ended = true;
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<(), EventError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // A failed batch is reported, not retried: retrying a batch the
        // index rejected would fail again and hold back later ones.
        let batch = std::mem::take(&mut self.batch);
        let report = self.store.record_build_batch(self.build, &batch)?;
        if report.skipped.is_empty() {
            Ok(())
        } else {
            Err(EventError::Interceptor {
                interceptor: "persist",
                message: format!("not recorded: {}", report.skipped.join("; ")),
            })
        }
    }
}
