//! Routes: which handlers and interceptors see which event types.

use std::collections::VecDeque;

use super::{Envelope, Event, EventError};

/// Which event types a handler or interceptor receives.
#[derive(Clone, Copy, Debug)]
pub enum Route {
    All,
    Kinds(&'static [&'static str]),
}

impl Route {
    fn accepts(self, kind: &str) -> bool {
        match self {
            Route::All => true,
            Route::Kinds(kinds) => kinds.contains(&kind),
        }
    }
}

/// Pure: an event in, derived events out. A handler may fold what it has
/// seen (e.g. stage outcomes) but does no IO.
pub trait Handler: Send {
    fn name(&self) -> &'static str;
    fn handle(&mut self, envelope: &Envelope) -> Vec<Event>;
}

/// An effect: persist, print, forward. `intercept` should be cheap (buffer);
/// `flush` does the batched work and is called when the bus is idle for a
/// moment, at most every few tens of milliseconds; `finish` once at the end.
pub trait Interceptor: Send {
    fn name(&self) -> &'static str;
    fn intercept(&mut self, envelope: &Envelope) -> Result<(), EventError>;
    fn flush(&mut self) -> Result<(), EventError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), EventError> {
        self.flush()
    }
}

/// The handlers and interceptors of one flow (local run, server, child).
#[derive(Default)]
pub struct Router {
    handlers: Vec<(Route, Box<dyn Handler>)>,
    interceptors: Vec<(Route, Box<dyn Interceptor>)>,
    errors: Vec<EventError>,
    /// Errors beyond the first per interceptor are counted, not printed.
    reported: Vec<&'static str>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn handler(mut self, route: Route, handler: impl Handler + 'static) -> Self {
        self.handlers.push((route, Box::new(handler)));
        self
    }

    pub fn interceptor(mut self, route: Route, interceptor: impl Interceptor + 'static) -> Self {
        self.interceptors.push((route, Box::new(interceptor)));
        self
    }

    /// Dispatches one envelope: interceptors see it, then handlers derive
    /// events, which are stamped by `stamp` and dispatched the same way
    /// (breadth first, so derived events follow their cause).
    pub fn dispatch(&mut self, envelope: Envelope, stamp: &mut dyn FnMut(Event) -> Envelope) {
        let mut queue = VecDeque::from([envelope]);
        while let Some(envelope) = queue.pop_front() {
            let kind = envelope.event.kind();
            for (route, interceptor) in &mut self.interceptors {
                if route.accepts(kind)
                    && let Err(error) = interceptor.intercept(&envelope)
                {
                    let name = interceptor.name();
                    record(&mut self.errors, &mut self.reported, name, error);
                }
            }
            for (route, handler) in &mut self.handlers {
                if route.accepts(kind) {
                    queue.extend(handler.handle(&envelope).into_iter().map(&mut *stamp));
                }
            }
        }
    }

    /// Lets every interceptor do its batched work.
    pub fn flush(&mut self) {
        for (_, interceptor) in &mut self.interceptors {
            if let Err(error) = interceptor.flush() {
                let name = interceptor.name();
                record(&mut self.errors, &mut self.reported, name, error);
            }
        }
    }

    /// Flushes for the last time; returns every error interceptors reported.
    pub fn finish(&mut self) -> Vec<EventError> {
        for (_, interceptor) in &mut self.interceptors {
            if let Err(error) = interceptor.finish() {
                let name = interceptor.name();
                record(&mut self.errors, &mut self.reported, name, error);
            }
        }
        std::mem::take(&mut self.errors)
    }
}

/// Interceptor errors are never lost: the first of each interceptor is
/// printed when it happens, all are returned by [`Router::finish`].
fn record(
    errors: &mut Vec<EventError>,
    reported: &mut Vec<&'static str>,
    interceptor: &'static str,
    error: EventError,
) {
    if !reported.contains(&interceptor) {
        reported.push(interceptor);
        eprintln!("kiln: events: {interceptor}: {error}");
    }
    errors.push(match error {
        already @ EventError::Interceptor { .. } => already,
        other => EventError::Interceptor {
            interceptor,
            message: other.to_string(),
        },
    });
}
