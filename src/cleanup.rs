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
use pg_branch_storage::{database_dir_name, errno_text, remove_dir};
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

/// The `before_shmem_exit` callback: a FATAL (or exit) while a branch is
/// being made removes what it cloned.
///
/// # Safety
/// Registered by [`guarded`] and called by the server at backend exit; it
/// reads neither argument, so there is nothing more to uphold.
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
    /// `<oid>.pg_branch_convert` or `<oid>.pg_branch_redo`: the scratch
    /// directory of a conversion or of a branch's replay that a crash
    /// interrupted, rather than `<oid>` itself.
    pub leftover: bool,
}

/// What [`orphans`] is asked for, which decides how it locks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A list to read (`orphans()`, `doctor()`): it never waits, and is
    /// stale the moment it is returned.
    List,
    /// A list to remove (`remove_orphans()`): exact, and kept exact until
    /// the transaction ends.
    Remove,
}

/// Every `<tablespace>/<oid>` directory (or leftover `<oid>.<suffix>`,
/// see [`Orphan::leftover`]) whose OID belongs to no database.
///
/// Every CREATE, ALTER (OWNER, RENAME, CONNECTION LIMIT, IS_TEMPLATE, SET
/// TABLESPACE), GRANT ... ON DATABASE and DROP DATABASE holds
/// RowExclusiveLock on `pg_database` until it commits, and makes or
/// removes its directories while it holds it. The directories are listed
/// first, the catalog read after: a CREATE inserts its row before it makes
/// its directory, so a directory we list has its row by the time we look.
///
/// The catalog is read with an MVCC snapshot taken after the listing. A
/// row version that an ALTER replaces during the scan stays visible to it
/// wherever the new version lands; a dirty (non-MVCC) scan, which re-reads
/// the page between tuples, could miss both versions and take a live
/// database for an orphan.
///
/// - [`Purpose::Remove`] takes ShareLock on `pg_database`, which conflicts
///   with RowExclusiveLock: it waits for every database command in progress
///   (a branch waiting for its checkpoint included; `lock_timeout`
///   applies), and none can start until we commit. The snapshot then sees
///   every database there is, and nobody can create one with an OID we are
///   about to remove.
/// - [`Purpose::List`] waits for nothing (AccessShareLock): a read-only
///   listing must not queue behind a CREATE DATABASE, nor make the next one
///   queue behind it. A database being created right now is not in the
///   MVCC snapshot, so a second, dirty scan adds rows whose insertion is in
///   progress. It can still miss one whose CREATE commits and which is
///   then altered while the scan runs (the new version landing behind it):
///   the listing would show that directory, and `remove_orphans()`, which
///   looks again under its lock, keeps it.
pub fn orphans(purpose: Purpose) -> Vec<Orphan> {
    let lockmode = match purpose {
        Purpose::List => pg_sys::AccessShareLock,
        Purpose::Remove => pg_sys::ShareLock,
    } as pg_sys::LOCKMODE;
    // SAFETY: catalog scans inside a transaction, with snapshots that
    // outlive them; everything is closed before returning and errors unwind
    // through pgrx's guards (the lock then goes with the transaction).
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, lockmode);
        // 1. The directories.
        let found = database_dirs();
        // 2. Every database, as of a snapshot taken after the listing.
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let mut in_use = database_oids(rel, snapshot);
        pg_sys::UnregisterSnapshot(snapshot);
        // 3. Listing only: those being created right now.
        if purpose == Purpose::List {
            let mut dirty: pg_sys::SnapshotData = std::mem::zeroed();
            dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
            in_use.extend(database_oids(rel, &mut dirty));
        }
        // Removal keeps the lock until commit (remove_orphan relies on it).
        let release = match purpose {
            Purpose::List => lockmode,
            Purpose::Remove => pg_sys::NoLock as pg_sys::LOCKMODE,
        };
        pg_sys::table_close(rel, release);
        found
            .into_iter()
            .filter(|o| !in_use.contains(&o.oid))
            .collect()
    }
}

/// The OID of every `pg_database` row that `snapshot` sees.
///
/// # Safety
/// `rel` is `pg_database`, open and locked; `snapshot` is valid for the
/// whole scan.
unsafe fn database_oids(rel: pg_sys::Relation, snapshot: pg_sys::Snapshot) -> Vec<Oid> {
    let mut out = Vec::new();
    // SAFETY: as the caller promises; the scan is ended before returning.
    unsafe {
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::InvalidOid,
            false,
            snapshot,
            0,
            std::ptr::null_mut(),
        );
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                break;
            }
            out.push((*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple)).oid);
        }
        pg_sys::systable_endscan(scan);
    }
    out
}

/// Every `<tablespace>/<oid>` directory there is, and every leftover
/// `<tablespace>/<oid>.<suffix>`.
fn database_dirs() -> Vec<Orphan> {
    let mut found = Vec::new();
    for tablespace in catalog::tablespaces() {
        let dir = catalog::tablespace_dir(tablespace);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some((oid, leftover)) = entry.file_name().to_str().and_then(database_dir_name)
            else {
                continue;
            };
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                found.push(Orphan {
                    tablespace,
                    oid: Oid::from(oid),
                    path: entry.path(),
                    leftover,
                });
            }
        }
    }
    found
}

/// Remove an orphan directory found by `orphans(Purpose::Remove)`, whose
/// lock is still held, so nobody can create a database with its OID before
/// we commit.
///
/// The removal is logged first, and the record flushed, so that standbys
/// that replayed its creation drop their copy too. A crash between the
/// record and the removal leaves the directory (still an orphan, listed
/// again) on the primary; the other order could leave it on standbys.
///
/// A leftover is removed without a record: it was made by this server's
/// own conversion or replay, never by a logged action, so no standby has
/// it because of us (a standby's own leftovers go when it replays the
/// record again, or as its orphans once promoted).
pub fn remove_orphan(o: &Orphan) -> std::io::Result<()> {
    if o.leftover {
        return remove_dir(&o.path);
    }
    wal::log_drop(o.oid, &[o.tablespace]);
    // SAFETY: flushes WAL up to the record we just wrote.
    unsafe { pg_sys::XLogFlush(pg_sys::XactLastRecEnd) };
    remove_dir(&o.path)
}
