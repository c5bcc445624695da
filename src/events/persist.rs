//! Persists a build's events, jobs, artifacts and status into the store.

use std::path::Path;

use kiln_store::{BuildId, Store};

use super::{Envelope, Event, EventError, Interceptor};

/// Writes into the store's sqlite, one transaction per flush.
pub struct Persist {
    store: Store,
    build: BuildId,
    pending: Vec<Envelope>,
}

impl Persist {
    /// Opens its own handle on the store at `dir` (a store handle is per
    /// thread) for `build`.
    pub fn open(dir: &Path, build: BuildId) -> Result<Self, EventError> {
        let store = Store::open(dir).map_err(|source| EventError::OpenStore {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            store,
            build,
            pending: Vec::new(),
        })
    }
}

impl Interceptor for Persist {
    fn name(&self) -> &'static str {
        "persist"
    }

    fn intercept(&mut self, envelope: &Envelope) -> Result<(), EventError> {
        self.pending.push(envelope.clone());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EventError> {
        for envelope in std::mem::take(&mut self.pending) {
            match &envelope.event {
                Event::BuildStatusChanged { status } => {
                    self.store.set_build_status(self.build, *status)?
                }
                Event::ArtifactSaved { name, object, .. } => {
                    self.store.add_artifact(self.build, name, *object)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
