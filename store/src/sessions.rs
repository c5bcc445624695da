//! Temporary roots: objects a process is still working with (a build in
//! progress, an add that has not been named yet) are not swept.

use rusqlite::{Connection, params};

use crate::error::Result;
use crate::object::{ObjectRef, now_millis};
use crate::store::Store;

/// Holds temporary roots until dropped. Owns its own index connection, so it
/// can outlive borrows of the `Store` (a build keeps it for its whole run).
/// A process killed while holding one leaves rows behind; they stop
/// protecting anything once the process is gone (see `session_is_alive`).
pub struct TempRoots {
    conn: Connection,
    session: i64,
}

impl TempRoots {
    pub(crate) fn new(store: &Store) -> Result<Self> {
        store.ensure_writable()?;
        let conn = store.reader()?;
        let pid = std::process::id();
        conn.execute(
            "INSERT INTO sessions(pid, process_start, created) VALUES (?1, ?2, ?3)",
            params![pid, process_start(pid).unwrap_or(0) as i64, now_millis()],
        )?;
        let session = conn.last_insert_rowid();
        Ok(Self { conn, session })
    }

    pub fn session_id(&self) -> i64 {
        self.session
    }

    /// Protects `object` (and so everything it references) until drop.
    pub fn hold(&self, object: ObjectRef) -> Result<()> {
        hold(&self.conn, self.session, object)
    }
}

pub(crate) fn hold(conn: &Connection, session: i64, object: ObjectRef) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO temp_roots(session, object_kind, digest) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![session, object.kind.code(), object.digest])?;
    Ok(())
}

impl Drop for TempRoots {
    fn drop(&mut self) {
        let _ = self
            .conn
            .execute("DELETE FROM temp_roots WHERE session = ?1", [self.session]);
        let _ = self
            .conn
            .execute("DELETE FROM sessions WHERE id = ?1", [self.session]);
    }
}

impl std::fmt::Debug for TempRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempRoots")
            .field("session", &self.session)
            .finish()
    }
}

/// The start time of a process (clock ticks since boot), which tells a live
/// session from a dead one whose pid was reused.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub(crate) fn session_is_alive(pid: i64, start: i64) -> bool {
    u32::try_from(pid)
        .ok()
        .and_then(process_start)
        .is_some_and(|actual| start == 0 || actual as i64 == start)
}

/// Deletes the sessions of processes that are gone; returns how many.
pub(crate) fn remove_dead_sessions(conn: &Connection) -> Result<usize> {
    let sessions: Vec<(i64, i64, i64)> = conn
        .prepare("SELECT id, pid, process_start FROM sessions")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut removed = 0;
    for (id, pid, start) in sessions {
        if !session_is_alive(pid, start) {
            conn.execute("DELETE FROM temp_roots WHERE session = ?1", [id])?;
            conn.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
            removed += 1;
        }
    }
    // Temp roots whose session row is gone protect nothing.
    conn.execute(
        "DELETE FROM temp_roots WHERE session NOT IN (SELECT id FROM sessions)",
        [],
    )?;
    Ok(removed)
}
