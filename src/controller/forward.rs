//! The build process's route: every envelope, batched, to the controller
//! (`POST /events`). No handler runs here: the controller derives and
//! records everything, so a build looks the same wherever it ran.

use bytes::Bytes;
use hyper::Method;
use tokio::runtime::Handle;

use super::client::{Connection, ControllerClient};
use crate::events::{Envelope, EventError, Interceptor};

/// A batch is sent once it holds this many bytes, even between flushes.
const MAX_BATCH_BYTES: usize = 4 << 20;

pub struct Forward {
    client: ControllerClient,
    connection: Option<Connection>,
    runtime: Handle,
    /// A JSON array being built: `[` then envelopes separated by commas.
    batch: Vec<u8>,
    count: usize,
}

impl Forward {
    /// Must be called inside the runtime whose blocking pool drains the bus.
    pub fn new(client: ControllerClient, connection: Connection) -> Self {
        Self {
            client,
            connection: Some(connection),
            runtime: Handle::current(),
            batch: Vec::with_capacity(64 << 10),
            count: 0,
        }
    }

    fn send(&mut self) -> Result<(), EventError> {
        if self.count == 0 {
            return Ok(());
        }
        self.batch.push(b']');
        let body = Bytes::from(std::mem::take(&mut self.batch));
        self.count = 0;
        let client = self.client.clone();
        let mut connection = self.connection.take();
        // The bus drains on tokio's blocking pool, where blocking on a
        // future is allowed; a batch waits for the controller to accept it,
        // which is what bounds the build process's memory.
        let (connection, result) = self.runtime.block_on(async move {
            if connection.is_none() {
                connection = client.connect().await.ok();
            }
            let Some(mut open) = connection else {
                return (None, Err("cannot reach the controller".to_owned()));
            };
            match open.expect_ok(Method::POST, "/events", body).await {
                Ok(_) => (Some(open), Ok(())),
                Err(error) => (None, Err(error.to_string())),
            }
        });
        self.connection = connection;
        result.map_err(|message| EventError::Interceptor {
            interceptor: "forward",
            message,
        })
    }
}

impl Interceptor for Forward {
    fn name(&self) -> &'static str {
        "forward"
    }

    fn intercept(&mut self, envelope: &Envelope) -> Result<(), EventError> {
        self.batch.push(if self.count == 0 { b'[' } else { b',' });
        serde_json::to_writer(&mut self.batch, envelope).map_err(|error| {
            EventError::Interceptor {
                interceptor: "forward",
                message: error.to_string(),
            }
        })?;
        self.count += 1;
        if self.batch.len() >= MAX_BATCH_BYTES {
            self.send()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EventError> {
        self.send()
    }
}
