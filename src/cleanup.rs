//! Removing a half-made branch: pg_branch's `PG_ENSURE_ERROR_CLEANUP`.
//!
//! Once the first directory is cloned, any ERROR must remove every
//! directory this statement created before the error reaches the user,
//! and so must a FATAL (a terminated backend, a lost client) on its way
//! out. [`Guard`] registers a `before_shmem_exit` callback for the FATAL
//! path and runs the body under `PgTryBuilder` for the ERROR path, exactly
//! as core's macro pairs `before_shmem_exit` with `PG_TRY`.
//!
//! As core admits for `createdb()`, this is not a 100% solution: a crash
//! of the whole server between the clone and the commit leaves a directory
//! that no `pg_database` row owns. [`orphans`] finds those, and
//! [`remove_orphan`] removes one.

use crate::catalog;
use crate::error::Report;
use crate::wal;
use pg_branch_storage::{errno_text, remove_dir};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::cell::RefCell;
use std::path::PathBuf;

/// A directory this statement created, and whether its creation was
/// WAL-logged (then its removal must be logged too).
struct Created {
    tablespace: Oid,
    path: PathBuf,
    logged: bool,
}

thread_local! {
    /// What the running CREATE DATABASE has made so far. A backend runs one
    /// statement at a time, and CREATE DATABASE cannot nest (it refuses to
    /// run inside a transaction block or a function).
    static CREATED: RefCell<(Oid, Vec<Created>)> = const { RefCell::new((pg_sys::InvalidOid, Vec::new())) };
}

/// Remember that `path` (in `tablespace`) now exists and belongs to the
/// statement under way.
pub fn created(tablespace: Oid, path: PathBuf) {
    CREATED.with(|c| {
        c.borrow_mut().1.push(Created {
            tablespace,
            path,
            logged: false,
        })
    });
}

/// Remember that the directory of `tablespace` was WAL-logged.
pub fn logged(tablespace: Oid) {
    CREATED.with(|c| {
        for d in c
            .borrow_mut()
            .1
            .iter_mut()
            .filter(|d| d.tablespace == tablespace)
        {
            d.logged = true;
        }
    });
}

/// Run `body` for new database `db`; if it fails, remove what it created.
pub fn guarded<T>(db: Oid, body: impl FnOnce() -> T) -> T {
    CREATED.with(|c| *c.borrow_mut() = (db, Vec::new()));
    let arg = pg_sys::Datum::from(db);
    // SAFETY: registers a static callback; cancelled below on both paths.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), arg) };
    let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(body))
        .catch_others(|e| {
            // SAFETY: as above.
            unsafe { pg_sys::cancel_before_shmem_exit(Some(on_exit), arg) };
            remove_created();
            e.rethrow()
        })
        .execute();
    // SAFETY: as above.
    unsafe { pg_sys::cancel_before_shmem_exit(Some(on_exit), arg) };
    CREATED.with(|c| c.borrow_mut().1.clear());
    result
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    remove_created();
}

/// Remove every directory the statement created, newest first, and log
/// the removal of those whose creation was logged. A directory that cannot
/// be removed is reported, not raised: we are already failing, and the
/// original error is the one the user needs.
fn remove_created() {
    let (db, dirs) = CREATED.with(|c| {
        let mut c = c.borrow_mut();
        (c.0, std::mem::take(&mut c.1))
    });
    let mut logged = Vec::new();
    for d in dirs.iter().rev() {
        if let Err(e) = remove_dir(&d.path) {
            Report::new(
                PgSqlErrorCode::ERRCODE_IO_ERROR,
                format!(
                    "could not remove directory \"{}\": {}",
                    d.path.display(),
                    errno_text(&e)
                ),
            )
            .hint("List and remove orphaned branch directories once the cause is fixed.")
            .warning();
        }
        if d.logged {
            logged.push(d.tablespace);
        }
    }
    if !logged.is_empty() {
        wal::log_drop(db, &logged);
    }
}

/// A database directory that no database owns.
pub struct Orphan {
    pub tablespace: Oid,
    pub oid: Oid,
    pub path: PathBuf,
}

/// How long [`orphans`] keeps its lock on `pg_database`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Release it once the list is made: the list is for reading, and is
    /// stale the moment it is returned.
    ForTheListing,
    /// Keep it until the transaction ends, so that no database can be
    /// created, altered or dropped until the orphans found are removed.
    UntilCommit,
}

/// Every `<tablespace>/<oid>` directory whose OID belongs to no database.
///
/// Locking, as core's database commands do it: every CREATE, ALTER (OWNER,
/// RENAME, CONNECTION LIMIT, IS_TEMPLATE, SET TABLESPACE), GRANT ... ON
/// DATABASE and DROP DATABASE holds RowExclusiveLock on `pg_database`
/// until it commits, and creates or removes its directories while it holds
/// it. ShareLock conflicts with it: once we have it, none of them is in
/// progress, and none can start until we release it. So the directories
/// listed and the catalog read after the lock describe the same moment, and
/// an MVCC snapshot taken then sees every database there is: a row version
/// that an ALTER replaces during the scan stays visible to it wherever the
/// new version lands (a dirty or non-MVCC scan, which re-reads the page
/// between tuples, could miss both versions).
pub fn orphans(hold: Hold) -> Vec<Orphan> {
    // SAFETY: a catalog scan inside a transaction, with a registered
    // snapshot that outlives it; everything is closed before returning and
    // errors unwind through pgrx's guards (the lock then goes with the
    // transaction).
    unsafe {
        let lockmode = pg_sys::ShareLock as pg_sys::LOCKMODE;
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, lockmode);
        // 1. Under the lock: the directories.
        let found = database_dirs();
        // 2. Under the lock: every database, as of a snapshot taken after
        //    it was granted, so no change to pg_database is in progress.
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::InvalidOid,
            false,
            snapshot,
            0,
            std::ptr::null_mut(),
        );
        let mut in_use = Vec::new();
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                break;
            }
            in_use
                .push((*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple)).oid);
        }
        pg_sys::systable_endscan(scan);
        pg_sys::UnregisterSnapshot(snapshot);
        let release = match hold {
            Hold::ForTheListing => lockmode,
            Hold::UntilCommit => pg_sys::NoLock as pg_sys::LOCKMODE,
        };
        pg_sys::table_close(rel, release);
        found
            .into_iter()
            .filter(|o| !in_use.contains(&o.oid))
            .collect()
    }
}

/// Every `<tablespace>/<oid>` directory there is.
fn database_dirs() -> Vec<Orphan> {
    let mut found = Vec::new();
    for tablespace in catalog::tablespaces() {
        let dir = catalog::tablespace_dir(tablespace);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(oid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                found.push(Orphan {
                    tablespace,
                    oid: Oid::from(oid),
                    path: entry.path(),
                });
            }
        }
    }
    found
}

/// Remove an orphan directory found by `orphans(Hold::UntilCommit)`, whose
/// lock is still held, so nobody can create a database with its OID before
/// we commit.
///
/// The removal is logged first, and the record flushed, so that standbys
/// that replayed its creation drop their copy too. A crash between the
/// record and the removal leaves the directory (still an orphan, listed
/// again) on the primary; the other order could leave it on standbys.
pub fn remove_orphan(o: &Orphan) -> std::io::Result<()> {
    wal::log_drop(o.oid, &[o.tablespace]);
    // SAFETY: flushes WAL up to the record we just wrote.
    unsafe { pg_sys::XLogFlush(pg_sys::XactLastRecEnd) };
    remove_dir(&o.path)
}
