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

/// Every `<tablespace>/<oid>` directory whose OID belongs to no database,
/// committed or being created or dropped right now. The directories are
/// listed before the catalog is read: a CREATE DATABASE inserts its row
/// before it makes its directory, so any directory we list whose creator
/// is still running has a row the catalog read sees.
pub fn orphans() -> Vec<Orphan> {
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
    let in_use = catalog::database_oids_in_use();
    found.retain(|o| !in_use.contains(&o.oid));
    found
}

/// Remove an orphan directory and log its removal, so standbys that
/// replayed its creation drop their copy too.
pub fn remove_orphan(o: &Orphan) -> std::io::Result<()> {
    remove_dir(&o.path)?;
    wal::log_drop(o.oid, &[o.tablespace]);
    Ok(())
}
