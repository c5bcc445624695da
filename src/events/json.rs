//! `--json`: every envelope as one JSON line.

use std::io::Write;

use super::{Envelope, EventError, Interceptor};

pub struct JsonLines<W: Write + Send> {
    out: std::io::BufWriter<W>,
    /// The reader went away (`kiln run --json | head`): not an error, and
    /// nothing more is written.
    closed: bool,
}

impl JsonLines<std::io::Stdout> {
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: std::io::BufWriter::new(out),
            closed: false,
        }
    }

    pub fn into_inner(self) -> W {
        match self.out.into_inner() {
            Ok(out) => out,
            Err(error) => error.into_inner().into_parts().0,
        }
    }
}

impl<W: Write + Send> Interceptor for JsonLines<W> {
    fn name(&self) -> &'static str {
        "json"
    }

    fn intercept(&mut self, envelope: &Envelope) -> Result<(), EventError> {
        if self.closed {
            return Ok(());
        }
        let written = serde_json::to_writer(&mut self.out, envelope)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        self.settle(written)
    }

    fn flush(&mut self) -> Result<(), EventError> {
        if self.closed {
            return Ok(());
        }
        let flushed = self.out.flush();
        self.settle(flushed)
    }
}

impl<W: Write + Send> JsonLines<W> {
    /// A closed pipe ends the output quietly; any other error is reported.
    fn settle(&mut self, result: std::io::Result<()>) -> Result<(), EventError> {
        match result {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other.map_err(|source| EventError::Output {
                what: "JSON events",
                source,
            }),
        }
    }
}
