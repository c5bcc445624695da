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

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(event: Event) -> Envelope {
        Envelope {
            seq: 1,
            time_ms: 0,
            build: 1,
            event,
        }
    }

    fn run(events: Vec<Event>) -> Vec<Event> {
        let mut handler = BuildStatusHandler::default();
        events
            .into_iter()
            .flat_map(|event| handler.handle(&envelope(event)))
            .collect()
    }

    fn stage(status: BuildStatus) -> Event {
        Event::StageEnd {
            stage: "s".into(),
            status,
        }
    }

    fn end(status: BuildStatus) -> Event {
        Event::BuildEnd {
            status,
            duration_ms: 1,
        }
    }

    fn changed(status: BuildStatus) -> Event {
        Event::BuildStatusChanged { status }
    }

    #[test]
    fn the_worst_of_stages_and_the_reported_end_is_recorded() {
        use BuildStatus::*;
        let start = Event::BuildStart {
            stages: vec![],
            jobs: 0,
        };
        assert_eq!(
            run(vec![start, stage(Passed), end(Passed)]),
            vec![changed(Running), changed(Passed)]
        );
        assert_eq!(
            run(vec![stage(PassedWithFailures), stage(Passed), end(Passed)]),
            vec![changed(PassedWithFailures)]
        );
        // A runner that misreports cannot hide a failed stage...
        assert_eq!(run(vec![stage(Failed), end(Passed)]), vec![changed(Failed)]);
        // ...and a kill or timeout outranks the failure it interrupted.
        assert_eq!(run(vec![stage(Failed), end(Killed)]), vec![changed(Killed)]);
        assert_eq!(
            run(vec![stage(TimedOut), end(Killed)]),
            vec![changed(TimedOut)]
        );
        // An end that claims to be unfinished still finishes the build.
        assert_eq!(run(vec![end(Running)]), vec![changed(Passed)]);
    }

    #[test]
    fn nothing_is_derived_after_the_build_ended() {
        use BuildStatus::*;
        assert_eq!(
            run(vec![end(Passed), stage(Failed), end(Failed)]),
            vec![changed(Passed)]
        );
    }
}
