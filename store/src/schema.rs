//! The sqlite schema, one migration per index version.

use rusqlite_migration::{M, Migrations};

/// Version 1. Digests are 32-byte BLOBs; times are unix milliseconds;
/// `object_kind` is 1 for a blob and 2 for a tree.
const V1: &str = r#"
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;

CREATE TABLE chunks(
    digest BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    refs INTEGER NOT NULL DEFAULT 0,
    -- Small chunks live here (zstd) instead of in a file of their own.
    data BLOB
) WITHOUT ROWID;
CREATE INDEX chunks_unreferenced ON chunks(digest) WHERE refs <= 0;

CREATE TABLE blobs(
    digest BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    refs INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX blobs_unreferenced ON blobs(digest) WHERE refs <= 0;

CREATE TABLE blob_chunks(
    blob BLOB NOT NULL,
    seq INTEGER NOT NULL,
    chunk BLOB NOT NULL,
    PRIMARY KEY(blob, seq)
) WITHOUT ROWID;

CREATE TABLE trees(
    digest BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    encoding BLOB NOT NULL,
    refs INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX trees_unreferenced ON trees(digest) WHERE refs <= 0;

-- The references of a tree, so that counting and marking need no decoding.
CREATE TABLE tree_children(
    tree BLOB NOT NULL,
    object_kind INTEGER NOT NULL,
    child BLOB NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY(tree, object_kind, child)
) WITHOUT ROWID;

CREATE TABLE builds(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    started INTEGER NOT NULL,
    finished INTEGER,
    pinned INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE artifacts(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    build INTEGER NOT NULL REFERENCES builds(id),
    name TEXT NOT NULL,
    object_kind INTEGER NOT NULL,
    digest BLOB NOT NULL,
    size INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX artifacts_build ON artifacts(build);

CREATE TABLE roots(
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    object_kind INTEGER NOT NULL,
    digest BLOB NOT NULL,
    created INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    broken INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(kind, name)
);

CREATE TABLE job_results(
    key BLOB PRIMARY KEY,
    output_layer BLOB NOT NULL,
    log BLOB,
    status TEXT NOT NULL,
    artifacts TEXT NOT NULL,
    created INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    broken INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Writers in progress and what they protect from sweeping.
CREATE TABLE sessions(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pid INTEGER NOT NULL,
    process_start INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE temp_roots(
    session INTEGER NOT NULL,
    object_kind INTEGER NOT NULL,
    digest BLOB NOT NULL
);
CREATE INDEX temp_roots_session ON temp_roots(session);
CREATE INDEX temp_roots_digest ON temp_roots(digest);
"#;

/// Version 2: what happened in each build (design §8). `build_jobs.log`
/// holds a reference on its blob; `events.body` is the JSON envelope;
/// `key_history` keeps, per manifest and job, the key inputs of the last
/// recorded run, for `kiln explain`.
const V2: &str = r#"
ALTER TABLE builds ADD COLUMN manifest TEXT;
ALTER TABLE builds ADD COLUMN pid INTEGER;
ALTER TABLE builds ADD COLUMN host TEXT;

CREATE TABLE build_jobs(
    build INTEGER NOT NULL REFERENCES builds(id),
    name TEXT NOT NULL,
    stage TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    key BLOB,
    key_inputs TEXT,
    started INTEGER,
    finished INTEGER,
    duration_ms INTEGER,
    cached INTEGER NOT NULL DEFAULT 0,
    log BLOB,
    exit_code INTEGER,
    message TEXT,
    PRIMARY KEY(build, name)
) WITHOUT ROWID;
CREATE INDEX build_jobs_log ON build_jobs(log) WHERE log IS NOT NULL;

CREATE TABLE events(
    build INTEGER NOT NULL REFERENCES builds(id),
    seq INTEGER NOT NULL,
    time INTEGER NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY(build, seq)
) WITHOUT ROWID;

CREATE TABLE key_history(
    manifest TEXT NOT NULL,
    job TEXT NOT NULL,
    build INTEGER NOT NULL,
    key BLOB,
    inputs TEXT NOT NULL,
    recorded INTEGER NOT NULL,
    PRIMARY KEY(manifest, job)
) WITHOUT ROWID;
"#;

pub const MIGRATIONS: &[M<'static>] = &[M::up(V1), M::up(V2)];

pub fn migrations() -> Migrations<'static> {
    Migrations::from_slice(MIGRATIONS)
}

/// The index version this kiln writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        super::migrations().validate().unwrap();
    }
}
