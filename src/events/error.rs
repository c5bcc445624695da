use std::path::PathBuf;

/// What can go wrong in the event flow.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    #[error("unknown job status {0:?}")]
    UnknownStatus(String),
    #[error("the event bus must be started inside a tokio runtime")]
    NoRuntime,
    #[error("the event bus task failed: {0}")]
    BusTask(String),
    #[error("interceptor {interceptor}: {message}")]
    Interceptor {
        interceptor: &'static str,
        message: String,
    },
    #[error("{} interceptor error(s); the first: {}", .0.len(), .0.first().map(|e| e.to_string()).unwrap_or_default())]
    Interceptors(Vec<EventError>),
    #[error("writing {what}: {source}")]
    Output {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the store at {dir}: {source}")]
    OpenStore {
        dir: PathBuf,
        #[source]
        source: kiln_store::StoreError,
    },
}
