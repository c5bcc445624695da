//! Reproducibility and provenance (design §3, §7): comparing what a job or
//! a build produced with what was recorded (`kiln run --check`, `kiln diff`),
//! and the in-toto / SLSA provenance statement every build records
//! (`kiln provenance`). See docs/reproducibility.md.

pub mod compare;
pub mod explain;
pub mod provenance;

use serde::{Deserialize, Serialize};

pub use compare::{Change, Comparison, Difference, compare_artifacts, compare_objects};

/// Exit code of `kiln run --check` when a job is not reproducible, and of
/// `kiln diff` when the builds differ (docs/cli.md).
pub const EXIT_NOT_REPRODUCIBLE: u8 = 6;

#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    #[error("build {build}: {reason}")]
    Build { build: i64, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the provenance statement: {0}")]
    Json(#[from] serde_json::Error),
}

/// What `kiln run --check` found for one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckOutcome {
    /// Rerun, and its output layer and artifacts are identical to the
    /// recorded result.
    Reproducible,
    /// Rerun, and something differs from the recorded result.
    Differs,
    /// Not compared: never cached (host driver, `network = true`), no
    /// recorded result yet (it was recorded now), or the rerun failed.
    Unchecked,
}

impl CheckOutcome {
    pub fn label(self) -> &'static str {
        match self {
            CheckOutcome::Reproducible => "reproducible",
            CheckOutcome::Differs => "NOT reproducible",
            CheckOutcome::Unchecked => "unchecked",
        }
    }
}
