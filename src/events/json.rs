//! `--json`: every envelope as one JSON line.

use std::io::Write;

use super::{Envelope, EventError, Interceptor};

pub struct JsonLines<W: Write + Send> {
    out: std::io::BufWriter<W>,
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
        let output = |source| EventError::Output {
            what: "JSON events",
            source,
        };
        serde_json::to_writer(&mut self.out, envelope).map_err(|e| output(e.into()))?;
        self.out.write_all(b"\n").map_err(output)
    }

    fn flush(&mut self) -> Result<(), EventError> {
        self.out.flush().map_err(|source| EventError::Output {
            what: "JSON events",
            source,
        })
    }
}
