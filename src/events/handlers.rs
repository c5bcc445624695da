//! Handlers: pure derivations from events to events.

use super::{BuildStatus, Envelope, Event, Handler, Route};

/// Derives the build's recorded status (`build/status`): Running once the
/// build starts; at `build/end`, the worst of what the runner reported and
/// every stage outcome, so a failed stage can never be recorded as passed.
#[derive(Debug, Default)]
pub struct BuildStatusHandler {
    worst_stage: Option<BuildStatus>,
    finished: bool,
}

impl BuildStatusHandler {
    pub const ROUTE: Route = Route::Kinds(&["build/start", "stage/end", "build/end"]);
}

impl Handler for BuildStatusHandler {
    fn name(&self) -> &'static str {
        "build-status"
    }

    fn handle(&mut self, envelope: &Envelope) -> Vec<Event> {
        if self.finished {
            return Vec::new();
        }
        match &envelope.event {
            Event::BuildStart { .. } => vec![Event::BuildStatusChanged {
                status: BuildStatus::Running,
            }],
            Event::StageEnd { status, .. } => {
                self.worst_stage = Some(self.worst_stage.map_or(*status, |w| w.worst(*status)));
                Vec::new()
            }
            Event::BuildEnd { status, .. } => {
                self.finished = true;
                let status = self.worst_stage.map_or(*status, |w| w.worst(*status));
                // Queued/Running at the end means the runner stopped early.
                let status = status.worst(BuildStatus::Passed);
                vec![Event::BuildStatusChanged { status }]
            }
            _ => Vec::new(),
        }
    }
}
