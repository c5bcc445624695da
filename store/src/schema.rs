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

/// Version 3: inline chunk bytes move out of `chunks` into `chunk_data`.
/// `chunks` is a WITHOUT ROWID table, so its rows are its b-tree keys: with
/// up to 16 KiB of data in a row, every lookup on the way down read each
/// compared key's overflow pages, and every reference count update rewrote
/// them. `chunk_data` is a rowid table (its digest index holds only
/// digests), and rows that never change.
const V3: &str = r#"
CREATE TABLE chunk_data(
    digest BLOB PRIMARY KEY,
    data BLOB NOT NULL
);
INSERT INTO chunk_data(digest, data) SELECT digest, data FROM chunks WHERE data IS NOT NULL;

CREATE TABLE chunks_v2(
    digest BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    refs INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO chunks_v2(digest, size, stored, refs) SELECT digest, size, stored, refs FROM chunks;
DROP TABLE chunks;
ALTER TABLE chunks_v2 RENAME TO chunks;
CREATE INDEX chunks_unreferenced ON chunks(digest) WHERE refs <= 0;

-- Whoever deletes a chunk row (gc, curate, fsck) deletes its bytes with it.
CREATE TRIGGER chunks_delete_data AFTER DELETE ON chunks
BEGIN
    DELETE FROM chunk_data WHERE digest = old.digest;
END;
"#;

/// Version 4: `kiln serve`'s queue (what each queued build will run) and
/// its API tokens (hashed), and an index for listing builds by status.
const V4: &str = r#"
CREATE TABLE submissions(
    build INTEGER PRIMARY KEY REFERENCES builds(id),
    manifest TEXT NOT NULL,
    args TEXT NOT NULL,
    submitter TEXT NOT NULL,
    queued INTEGER NOT NULL
);
CREATE TABLE tokens(
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    created INTEGER NOT NULL
);
CREATE INDEX builds_by_status ON builds(status, id);
"#;

pub const MIGRATIONS: &[M<'static>] = &[M::up(V1), M::up(V2), M::up(V3), M::up(V4)];

pub fn migrations() -> Migrations<'static> {
    Migrations::from_slice(MIGRATIONS)
}

/// The index version this kiln writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use rusqlite_migration::Migrations;

    #[test]
    fn migrations_are_valid() {
        super::migrations().validate().unwrap();
    }

    /// A version 1 index keeps its inline chunks, and deleting a chunk
    /// afterwards deletes its bytes.
    #[test]
    fn version_1_inline_chunks_move_to_chunk_data() {
        let mut conn = Connection::open_in_memory().unwrap();
        Migrations::from_slice(&super::MIGRATIONS[..1])
            .to_latest(&mut conn)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO chunks(digest, size, stored, refs, data) VALUES (x'01', 5, 3, 1, x'aabbcc');
             INSERT INTO chunks(digest, size, stored, refs, data) VALUES (x'02', 9, 7, 0, NULL);",
        )
        .unwrap();
        super::migrations().to_latest(&mut conn).unwrap();
        type Row = (Vec<u8>, i64, i64, i64, Option<Vec<u8>>);
        let rows: Vec<Row> = conn
            .prepare(
                "SELECT c.digest, c.size, c.stored, c.refs, d.data FROM chunks c \
                 LEFT JOIN chunk_data d ON d.digest = c.digest ORDER BY c.digest",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (vec![1], 5, 3, 1, Some(vec![0xaa, 0xbb, 0xcc])),
                (vec![2], 9, 7, 0, None),
            ]
        );
        conn.execute("DELETE FROM chunks WHERE digest = x'01'", [])
            .unwrap();
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM chunk_data", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }
}
