//! kiln's content-addressed store.
//!
//! Blobs (file bytes, split into zstd-compressed chunks by FastCDC) and
//! trees (canonical directory encodings) are identified by blake3 digests.
//! A sqlite index records them, their references and reference counts, and
//! what keeps them alive: named roots, builds and their artifacts, job
//! results, and temporary roots of work in progress. See docs/store.md.

mod bundle;
mod chunker;
pub mod chunks;
mod curate;
mod digest;
mod error;
mod fsck;
mod ingest;
mod layer;
mod object;
mod records;
mod restore;
mod runs;
mod schema;
mod server;
mod sessions;
mod stats;
mod store;
mod tree;

pub use bundle::{BundleReport, ImportOptions, ReplacedRoot, RootSelector};
pub use chunker::{CHUNKER_NAME, ChunkerParams};
pub use curate::{CurationPolicy, CurationReport, DEFAULT_THRESHOLD, GcReport, SweepReport};
pub use digest::{B3Digest, DIGEST_PREFIX, DigestParseError};
pub use error::{Result, StoreError};
pub use fsck::{FsckOptions, FsckReport, Problem};
pub use ingest::{AddOptions, AddReport, Progress};
pub use object::{ObjectKind, ObjectRef};
pub use records::{
    Artifact, BuildId, BuildRecord, BuildStatus, JOB_PASSED, JOB_UNTRUSTED, JobArtifact, JobResult,
    NamedRoot, RootKind,
};
pub use restore::{RestoreOptions, RestoreReport};
pub use runs::{BatchReport, BuildBatch, BuildJob, JobUpdate, KeyHistory, StoredEvent};
pub use schema::SCHEMA_VERSION;
pub use server::{Role, Submission, TokenRecord};
pub use sessions::{
    DEAD_BUILD_REASON, LEASES_DIR, Lease, LeaseState, TempRoots, build_lease_name, lease_is_held,
    lease_state, session_lease_name,
};
pub use stats::{DiskUsage, StoreStats, allocated_bytes};
pub use store::{Store, StoreOptions};
pub use tree::{EntryName, Node, TREE_FORMAT_VERSION, Tree, TreeEntry};
