//! The bus: a channel from any number of emitters to one router, drained
//! on tokio's blocking pool so that interceptors may do synchronous IO
//! (sqlite, terminals) without stalling the runtime's workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{Envelope, Event, EventError, Router, now_ms};

/// Interceptors flush at most this long after the first unflushed event:
/// a burst of events becomes one batch (one sqlite transaction).
const FLUSH_INTERVAL: Duration = Duration::from_millis(25);

/// Bytes of `job/output` events queued for the router at most: beyond it
/// [`Emitter::emit_output`] drops lines (the job's log keeps them), so a
/// job printing faster than the console or `--json` reader can take keeps
/// kiln's memory bounded.
pub const MAX_QUEUED_OUTPUT: usize = 16 << 20;

/// What one queued output line is counted as: its text and the event around it.
fn output_cost(job: &str, line: &str) -> usize {
    job.len() + line.len() + 128
}

enum Message {
    Event {
        time_ms: i64,
        event: Event,
    },
    /// An envelope made elsewhere (a build in a child process).
    Envelope(Envelope),
    Finish,
}

/// Emits events into a build's bus. Cheap to clone; `emit` never blocks,
/// from async or sync code alike. The channel is unbounded for the few
/// events of a build's life cycle; job output, whose volume a job decides,
/// goes through [`Emitter::emit_output`], which is bounded.
#[derive(Clone)]
pub struct Emitter {
    sender: mpsc::Sender<Message>,
    build: i64,
    /// Bytes of `job/output` events sent and not yet dispatched.
    queued_output: Arc<AtomicUsize>,
}

impl Emitter {
    /// Sends `event`, stamped with the current time. After the bus has
    /// finished the event goes nowhere: finish the bus last.
    pub fn emit(&self, event: Event) {
        if let Event::JobOutput { job, line } = &event {
            self.queued_output
                .fetch_add(output_cost(job, line), Ordering::AcqRel);
        }
        let _ = self.sender.send(Message::Event {
            time_ms: now_ms(),
            event,
        });
    }

    /// Sends a `job/output` line unless [`MAX_QUEUED_OUTPUT`] bytes of
    /// output are already waiting for the router; `false` when it was
    /// dropped (never blocks).
    pub fn emit_output(&self, job: &str, line: &str) -> bool {
        let cost = output_cost(job, line);
        if self.queued_output.load(Ordering::Acquire) + cost > MAX_QUEUED_OUTPUT {
            return false;
        }
        self.emit(Event::JobOutput {
            job: job.to_owned(),
            line: line.to_owned(),
        });
        true
    }

    /// Feeds an event that a build process elsewhere emitted at `time_ms`
    /// (its envelope's time); this bus gives it its own sequence number.
    /// Output lines are bounded by [`MAX_QUEUED_OUTPUT`] as with
    /// [`Emitter::emit_output`]: `false` when one was dropped.
    pub fn relay(&self, time_ms: i64, event: Event) -> bool {
        if let Event::JobOutput { job, line } = &event {
            let cost = output_cost(job, line);
            if self.queued_output.load(Ordering::Acquire) + cost > MAX_QUEUED_OUTPUT {
                return false;
            }
            self.queued_output.fetch_add(cost, Ordering::AcqRel);
        }
        let _ = self.sender.send(Message::Event { time_ms, event });
        true
    }

    /// Feeds an envelope made by another bus (e.g. received from a child
    /// process) through this bus's router unchanged.
    pub fn forward(&self, envelope: Envelope) {
        let _ = self.sender.send(Message::Envelope(envelope));
    }

    /// The build number envelopes are stamped with.
    pub fn build(&self) -> i64 {
        self.build
    }
}

/// What the bus did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusReport {
    /// Envelopes dispatched, derived ones included.
    pub events: u64,
    /// Batches flushed.
    pub flushes: u64,
}

/// A running event bus for one build.
pub struct EventBus {
    emitter: Emitter,
    task: tokio::task::JoinHandle<(BusReport, Vec<EventError>)>,
}

impl EventBus {
    /// Starts draining events for `build` into `router`. Must be called
    /// inside a tokio runtime.
    pub fn start(build: i64, router: Router) -> Result<EventBus, EventError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| EventError::NoRuntime)?;
        let (sender, receiver) = mpsc::channel();
        let queued_output = Arc::new(AtomicUsize::new(0));
        let queued = Arc::clone(&queued_output);
        let task = runtime.spawn_blocking(move || drain(build, router, receiver, &queued));
        Ok(EventBus {
            emitter: Emitter {
                sender,
                build,
                queued_output,
            },
            task,
        })
    }

    pub fn emitter(&self) -> Emitter {
        self.emitter.clone()
    }

    pub fn build(&self) -> i64 {
        self.emitter.build
    }

    /// Dispatches everything emitted so far, flushes and finishes every
    /// interceptor. Any interceptor error makes this an error (each was
    /// also printed when it happened).
    pub async fn finish(self) -> Result<BusReport, EventError> {
        let _ = self.emitter.sender.send(Message::Finish);
        let (report, errors) = self
            .task
            .await
            .map_err(|e| EventError::BusTask(e.to_string()))?;
        if errors.is_empty() {
            Ok(report)
        } else {
            Err(EventError::Interceptors(errors))
        }
    }
}

fn drain(
    build: i64,
    mut router: Router,
    receiver: mpsc::Receiver<Message>,
    queued_output: &AtomicUsize,
) -> (BusReport, Vec<EventError>) {
    let mut report = BusReport::default();
    let mut next_seq: u64 = 1;
    let mut flush_at: Option<Instant> = None;
    loop {
        let message = match flush_at {
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => receiver.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        let envelope = match message {
            Ok(Message::Event { time_ms, event }) => {
                if let Event::JobOutput { job, line } = &event {
                    queued_output.fetch_sub(output_cost(job, line), Ordering::AcqRel);
                }
                let seq = next_seq;
                next_seq += 1;
                Envelope {
                    seq,
                    time_ms,
                    build,
                    event,
                }
            }
            Ok(Message::Envelope(envelope)) => {
                next_seq = next_seq.max(envelope.seq + 1);
                envelope
            }
            Ok(Message::Finish) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                router.flush();
                report.flushes += 1;
                flush_at = None;
                continue;
            }
        };
        let time_ms = envelope.time_ms;
        let mut stamp = |event: Event| {
            let seq = next_seq;
            next_seq += 1;
            report.events += 1;
            Envelope {
                seq,
                time_ms,
                build,
                event,
            }
        };
        router.dispatch(envelope, &mut stamp);
        report.events += 1;
        let due = *flush_at.get_or_insert_with(|| Instant::now() + FLUSH_INTERVAL);
        if Instant::now() >= due {
            router.flush();
            report.flushes += 1;
            flush_at = None;
        }
    }
    // Whatever was still queued behind a Finish from a late emitter is
    // dropped with the receiver; emitters are expected to be done by then.
    let errors = router.finish();
    report.flushes += 1;
    (report, errors)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::events::handlers::BuildStatusHandler;
    use crate::events::{BuildStatus, Interceptor, Route};

    #[derive(Clone, Default)]
    struct Recorder {
        seen: Arc<Mutex<Vec<Envelope>>>,
        flushes: Arc<Mutex<u64>>,
        fail_on: Option<&'static str>,
    }

    impl Interceptor for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn intercept(&mut self, envelope: &Envelope) -> Result<(), EventError> {
            if self.fail_on == Some(envelope.event.kind()) {
                return Err(EventError::Interceptor {
                    interceptor: "recorder",
                    message: format!("refused event {}", envelope.seq),
                });
            }
            self.seen.lock().unwrap().push(envelope.clone());
            Ok(())
        }
        fn flush(&mut self) -> Result<(), EventError> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    fn warning(n: usize) -> Event {
        Event::Warning {
            job: None,
            message: format!("w{n}"),
        }
    }

    #[tokio::test]
    async fn derived_events_follow_their_cause_in_one_sequence() {
        let recorder = Recorder::default();
        let router = Router::new()
            .handler(BuildStatusHandler::ROUTE, BuildStatusHandler::default())
            .interceptor(Route::All, recorder.clone());
        let bus = EventBus::start(9, router).unwrap();
        let emitter = bus.emitter();
        emitter.emit(Event::BuildStart {
            stages: vec!["a".into()],
            jobs: 1,
        });
        emitter.emit(Event::StageEnd {
            stage: "a".into(),
            status: BuildStatus::Failed,
        });
        emitter.emit(Event::BuildEnd {
            status: BuildStatus::Passed,
            duration_ms: 5,
        });
        let report = bus.finish().await.unwrap();
        assert_eq!(report.events, 5);
        let seen = recorder.seen.lock().unwrap();
        let kinds: Vec<(u64, &str)> = seen.iter().map(|e| (e.seq, e.event.kind())).collect();
        assert_eq!(
            kinds,
            [
                (1, "build/start"),
                (2, "build/status"),
                (3, "stage/end"),
                (4, "build/end"),
                (5, "build/status"),
            ]
        );
        assert!(seen.iter().all(|e| e.build == 9));
        assert_eq!(
            seen[4].event,
            Event::BuildStatusChanged {
                status: BuildStatus::Failed
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn emitters_on_tasks_and_threads_all_arrive_and_bursts_are_batched() {
        let recorder = Recorder::default();
        let bus =
            EventBus::start(1, Router::new().interceptor(Route::All, recorder.clone())).unwrap();
        let mut tasks = Vec::new();
        for task in 0..4 {
            let emitter = bus.emitter();
            tasks.push(tokio::spawn(async move {
                for n in 0..500 {
                    emitter.emit(warning(task * 1000 + n));
                }
            }));
        }
        let emitter = bus.emitter();
        let thread = std::thread::spawn(move || {
            for n in 0..500 {
                emitter.emit(warning(9000 + n));
            }
        });
        for task in tasks {
            task.await.unwrap();
        }
        thread.join().unwrap();
        let report = bus.finish().await.unwrap();
        assert_eq!(report.events, 2500);
        let seen = recorder.seen.lock().unwrap();
        assert_eq!(seen.len(), 2500);
        assert!(seen.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        let flushes = *recorder.flushes.lock().unwrap();
        assert!(
            flushes < 100,
            "2,500 events emitted at once should take few flushes, took {flushes}"
        );
    }

    #[tokio::test]
    async fn interceptor_errors_are_returned_and_the_others_keep_going() {
        let failing = Recorder {
            fail_on: Some("warning"),
            ..Recorder::default()
        };
        let healthy = Recorder::default();
        let router = Router::new()
            .interceptor(Route::All, failing.clone())
            .interceptor(Route::Kinds(&["warning"]), healthy.clone());
        let bus = EventBus::start(1, router).unwrap();
        bus.emitter().emit(warning(1));
        bus.emitter().emit(Event::StageStart { stage: "s".into() });
        bus.emitter().emit(warning(2));
        match bus.finish().await {
            Err(EventError::Interceptors(errors)) => {
                assert_eq!(errors.len(), 2);
                assert!(
                    errors[0].to_string().contains("refused event 1"),
                    "{}",
                    errors[0]
                );
            }
            other => panic!("expected interceptor errors, got {other:?}"),
        }
        assert_eq!(failing.seen.lock().unwrap().len(), 1);
        // The route kept the stage event away from the second interceptor.
        assert_eq!(healthy.seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn forwarded_envelopes_keep_their_stamp_and_later_ones_follow() {
        let recorder = Recorder::default();
        let bus =
            EventBus::start(4, Router::new().interceptor(Route::All, recorder.clone())).unwrap();
        let remote = Envelope {
            seq: 41,
            time_ms: 123,
            build: 4,
            event: warning(0),
        };
        // As a controller would after reading a line from a child build.
        let line = serde_json::to_string(&remote).unwrap();
        bus.emitter().forward(serde_json::from_str(&line).unwrap());
        bus.emitter().emit(warning(1));
        bus.finish().await.unwrap();
        let seen = recorder.seen.lock().unwrap();
        assert_eq!(seen[0], remote);
        assert_eq!(seen[1].seq, 42);
    }

    /// Blocks the router on its first event until the gate opens.
    struct Gate(Arc<Mutex<()>>);

    impl Interceptor for Gate {
        fn name(&self) -> &'static str {
            "gate"
        }
        fn intercept(&mut self, _: &Envelope) -> Result<(), EventError> {
            drop(self.0.lock().unwrap());
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_beyond_the_queue_bound_is_dropped_and_other_events_are_not() {
        let gate = Arc::new(Mutex::new(()));
        let closed = gate.lock().unwrap();
        let recorder = Recorder::default();
        let router = Router::new()
            .interceptor(Route::All, Gate(Arc::clone(&gate)))
            .interceptor(Route::All, recorder.clone());
        let bus = EventBus::start(1, router).unwrap();
        let emitter = bus.emitter();
        let line = "x".repeat(1 << 20);
        let sent = (0..64)
            .filter(|_| emitter.emit_output("flood", &line))
            .count();
        // The router is stuck on the first line: about 16 MiB fit.
        assert!((14..=17).contains(&sent), "{sent} lines queued");
        emitter.emit(warning(1));
        drop(closed);
        bus.finish().await.unwrap();
        let seen = recorder.seen.lock().unwrap();
        assert_eq!(seen.len(), sent + 1);
        assert_eq!(seen.last().unwrap().event, warning(1));
    }

    #[test]
    fn starting_outside_a_runtime_is_a_clear_error() {
        assert!(matches!(
            EventBus::start(1, Router::new()),
            Err(EventError::NoRuntime)
        ));
    }
}
