//! The controller's side of the event flow: the envelopes it routed, kept
//! for `GET /events` subscribers (server-sent events, resumable with
//! `Last-Event-ID`), and what the build came to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::events::{BuildStatus, Envelope, Event, EventError, Interceptor, Route};
use crate::repro::CheckOutcome;

/// Envelopes a feed keeps for subscribers that join late or resume: past
/// either bound the oldest are dropped (a subscriber resuming before them
/// is told it missed some).
const FEED_MAX_ENTRIES: usize = 200_000;
const FEED_MAX_BYTES: usize = 64 << 20;

#[derive(Default)]
struct FeedState {
    entries: VecDeque<(u64, Arc<str>)>,
    bytes: usize,
    finished: bool,
}

/// Every envelope of one build as JSON, in sequence order.
pub struct Feed {
    state: Mutex<FeedState>,
    /// The last sequence number flushed; subscribers wait on it.
    latest: watch::Sender<u64>,
}

/// One read of a feed.
pub enum FeedRead {
    /// Envelopes after the one asked for; `missed` when some were dropped
    /// from the feed before this subscriber read them.
    Entries {
        entries: Vec<(u64, Arc<str>)>,
        missed: bool,
    },
    /// Nothing new yet.
    Pending,
    /// Nothing new, and nothing will come.
    Finished,
}

impl Feed {
    pub fn new() -> Arc<Feed> {
        Arc::new(Feed {
            state: Mutex::new(FeedState::default()),
            latest: watch::channel(0).0,
        })
    }

    /// The interceptor that fills this feed.
    pub fn interceptor(self: &Arc<Self>) -> FeedInterceptor {
        FeedInterceptor {
            feed: Arc::clone(self),
            pending: Vec::new(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Entries with a sequence number above `after`, at most `limit`.
    pub fn read_after(&self, after: u64, limit: usize) -> FeedRead {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let first = state.entries.front().map(|(seq, _)| *seq);
        let start = state.entries.partition_point(|(seq, _)| *seq <= after);
        if start == state.entries.len() {
            return if state.finished {
                FeedRead::Finished
            } else {
                FeedRead::Pending
            };
        }
        let entries: Vec<_> = state.entries.range(start..).take(limit).cloned().collect();
        FeedRead::Entries {
            entries,
            missed: first.is_some_and(|first| first > after + 1 && after > 0),
        }
    }

    fn push(&self, batch: &mut Vec<(u64, Arc<str>)>, finished: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let last = batch.last().map(|(seq, _)| *seq);
        for entry in batch.drain(..) {
            state.bytes += entry.1.len();
            state.entries.push_back(entry);
        }
        while state.entries.len() > FEED_MAX_ENTRIES || state.bytes > FEED_MAX_BYTES {
            let Some((_, json)) = state.entries.pop_front() else {
                break;
            };
            state.bytes -= json.len();
        }
        state.finished |= finished;
        drop(state);
        let latest = last.unwrap_or(*self.latest.borrow());
        // Wakes subscribers also when only `finished` changed.
        self.latest.send_modify(|value| *value = latest);
    }
}

/// Buffers envelopes and publishes them at each flush (a wake-up per batch,
/// not per event).
pub struct FeedInterceptor {
    feed: Arc<Feed>,
    pending: Vec<(u64, Arc<str>)>,
}

impl Interceptor for FeedInterceptor {
    fn name(&self) -> &'static str {
        "feed"
    }

    fn intercept(&mut self, envelope: &Envelope) -> Result<(), EventError> {
        let json = serde_json::to_string(envelope).map_err(|error| EventError::Interceptor {
            interceptor: "feed",
            message: error.to_string(),
        })?;
        self.pending.push((envelope.seq, Arc::from(json)));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EventError> {
        self.feed.push(&mut self.pending, false);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), EventError> {
        self.feed.push(&mut self.pending, true);
        Ok(())
    }
}

/// What the build came to, as the controller's router saw it.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The recorded status (`build/status`), the last one seen.
    pub status: Option<BuildStatus>,
    /// Whether `build/end` was routed: the build process finished the build.
    pub ended: bool,
    /// `job/check` outcomes, in the order they came.
    pub checks: Vec<(String, CheckOutcome)>,
}

/// Collects the [`Outcome`].
#[derive(Clone, Default)]
pub struct OutcomeCollector(Arc<Mutex<Outcome>>);

impl OutcomeCollector {
    pub const ROUTE: Route = Route::Kinds(&["build/status", "build/end", "job/check"]);

    pub fn outcome(&self) -> Outcome {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Interceptor for OutcomeCollector {
    fn name(&self) -> &'static str {
        "outcome"
    }

    fn intercept(&mut self, envelope: &Envelope) -> Result<(), EventError> {
        let mut outcome = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &envelope.event {
            Event::BuildStatusChanged { status } => outcome.status = Some(*status),
            Event::BuildEnd { .. } => outcome.ended = true,
            Event::JobCheck {
                job,
                outcome: check,
                ..
            } => outcome.checks.push((job.clone(), *check)),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(seq: u64) -> Envelope {
        Envelope {
            seq,
            time_ms: 0,
            build: 1,
            event: Event::StageStart { stage: "s".into() },
        }
    }

    #[test]
    fn a_subscriber_resumes_after_the_last_id_it_saw() {
        let feed = Feed::new();
        let mut interceptor = feed.interceptor();
        for seq in 1..=5 {
            interceptor.intercept(&envelope(seq)).unwrap();
        }
        assert!(matches!(feed.read_after(0, 10), FeedRead::Pending));
        interceptor.flush().unwrap();
        let FeedRead::Entries { entries, missed } = feed.read_after(3, 10) else {
            panic!("expected entries");
        };
        assert!(!missed);
        assert_eq!(
            entries.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            [4, 5]
        );
        assert!(matches!(feed.read_after(5, 10), FeedRead::Pending));
        interceptor.finish().unwrap();
        assert!(matches!(feed.read_after(5, 10), FeedRead::Finished));
    }
}
