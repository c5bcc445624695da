//! The bus: a channel from any number of emitters to one router, drained
//! on tokio's blocking pool so that interceptors may do synchronous IO
//! (sqlite, terminals) without stalling the runtime's workers.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{Envelope, Event, EventError, Router, now_ms};

/// Interceptors flush at most this long after the first unflushed event:
/// a burst of events becomes one batch (one sqlite transaction).
const FLUSH_INTERVAL: Duration = Duration::from_millis(25);

enum Message {
    Event {
        time_ms: i64,
        event: Event,
    },
    /// An envelope made elsewhere (a build in a child process).
    Envelope(Envelope),
    Finish,
}

/// Emits events into a build's bus. Cheap to clone; `emit` never blocks
/// (the channel is unbounded), from async or sync code alike.
#[derive(Clone)]
pub struct Emitter {
    sender: mpsc::Sender<Message>,
    build: i64,
}

impl Emitter {
    /// Sends `event`, stamped with the current time. After the bus has
    /// finished the event goes nowhere: finish the bus last.
    pub fn emit(&self, event: Event) {
        let _ = self.sender.send(Message::Event {
            time_ms: now_ms(),
            event,
        });
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
        let task = runtime.spawn_blocking(move || drain(build, router, receiver));
        Ok(EventBus {
            emitter: Emitter { sender, build },
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
