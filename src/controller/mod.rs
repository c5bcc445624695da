//! The build controller (design §8, after MonkeyCI's local runner).
//!
//! `kiln run` is two processes. The controller, in the `kiln run` process,
//! loads and validates the manifest, records the build, owns its event
//! route (persist, console, `--json`, subscribers) and serves a small HTTP
//! API on a mode-0600 unix socket in its private directory
//! (`<store>/scratch/ctl-<build>/socket`). The build process, `kiln __build`,
//! started as its child (or inside a container), finds the controller
//! through its environment, fetches the build's parameters, runs the
//! scheduler and drivers against the store, and sends its events back in
//! batches. A server build (`kiln serve`) is the same two halves with the
//! server's route. docs/controller.md is the API.
//!
//! Architecture invariant: the build process never persists or prints an
//! event; everything a build records or shows comes through the
//! controller's router, so a build looks the same wherever it ran.
//!
//! Architecture invariant: the token never crosses an argv, a log or a
//! job's environment: the build process takes it from its environment and
//! removes it before any thread starts.

pub mod api;
pub mod client;
pub mod feed;
pub mod forward;
pub mod server;
pub mod session;
pub mod token;

pub use api::{BuildOptions, BuildParams, GraphView};
pub use client::{ControllerClient, Endpoint};
pub use feed::{Feed, Outcome, OutcomeCollector};
pub use session::{
    BuildPlace, Controller, EXIT_COULD_NOT_RUN, Launch, ProcessEnd, Supervised, run_build_process,
};

/// What can go wrong between a controller and its build process.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{0} is not set: `kiln __build` is started by `kiln run` or `kiln serve`")]
    MissingEnv(&'static str),
    #[error("{0:?} is not a controller address (unix:/path or http://host:port)")]
    BadUrl(String),
    #[error("cannot reach the controller at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the controller")]
    Http(#[source] hyper::Error),
    #[error("building a request: {0}")]
    Request(String),
    #[error("the controller answered {path} with {status}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("the controller sent build parameters kiln cannot read")]
    Params(#[source] serde_json::Error),
    #[error("generating the build's token")]
    Token(#[source] getrandom::Error),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Run(#[from] crate::scheduler::RunError),
    #[error("preparing the build container")]
    Sandbox(#[from] crate::sandbox::SandboxError),
}
