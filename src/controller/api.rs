//! What crosses the controller's HTTP API (docs/controller.md): the build's
//! parameters, event batches, the stop request. Strict on the way in.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::driver::Stop;
use crate::events::B3Digest;

/// The environment variable that tells `kiln __build` where its controller
/// listens: `unix:/path/to/socket` or `http://127.0.0.1:PORT`.
pub const ENV_URL: &str = "KILN_CONTROLLER_URL";
/// The environment variable holding the build's bearer token. The build
/// process removes both from its environment before anything else, so no
/// job, log or process listing ever shows them.
pub const ENV_TOKEN: &str = "KILN_CONTROLLER_TOKEN";

/// Requests larger than this are refused with 413 (an event batch is cut
/// well below it by the build process).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// What `GET /build` returns: everything the build process needs to run
/// the build the controller validated.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuildParams {
    /// The build number the controller recorded.
    pub build: i64,
    /// The manifest, as an absolute path.
    pub manifest: PathBuf,
    /// `--arg NAME=VALUE`, as given.
    pub args: Vec<String>,
    /// `--allow-path`, absolute.
    pub allow_paths: Vec<PathBuf>,
    /// blake3 of the manifest's canonical JSON as the controller evaluated
    /// it: the build process refuses to run anything else (a file changed
    /// between the two readings).
    pub manifest_digest: B3Digest,
    pub options: BuildOptions,
    /// The compiled graph, for subscribers (the build process compiles its
    /// own from the same manifest and checks it against the digest).
    pub graph: GraphView,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuildOptions {
    pub jobs: usize,
    pub no_cache: bool,
    pub check: bool,
    pub log_limit: u64,
    pub store_dir: PathBuf,
    pub owner: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GraphView {
    pub stages: Vec<String>,
    pub jobs: Vec<GraphJob>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GraphJob {
    pub name: String,
    pub stage: String,
    pub needs: Vec<String>,
}

impl GraphView {
    pub fn of(graph: &crate::graph::BuildGraph) -> GraphView {
        GraphView {
            stages: graph.stages.clone(),
            jobs: graph
                .jobs
                .iter()
                .map(|node| GraphJob {
                    name: node.job.name.clone(),
                    stage: node.job.stage.clone(),
                    needs: node
                        .needs
                        .iter()
                        .map(|&n| graph.jobs[n].job.name.clone())
                        .collect(),
                })
                .collect(),
        }
    }
}

/// What `GET /stop` answers once the build is asked to stop.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Killed,
    TimedOut,
}

impl From<Stop> for StopReason {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::Killed => StopReason::Killed,
            Stop::TimedOut => StopReason::TimedOut,
        }
    }
}

impl From<StopReason> for Stop {
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::Killed => Stop::Killed,
            StopReason::TimedOut => Stop::TimedOut,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StopMessage {
    pub stop: StopReason,
}

/// The digest of a manifest as both sides compare it.
pub fn manifest_digest(manifest: &kiln_grammar::manifest::Manifest) -> B3Digest {
    let json = serde_json::to_vec(manifest).unwrap_or_default();
    B3Digest::of(&json)
}
