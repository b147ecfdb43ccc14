//! Converting an existing database directory into a btrfs subvolume, so
//! that its branches are O(1) snapshots instead of per-file reflinks.
//!
//! Databases made before pg_branch was installed (template0, template1,
//! postgres, anything restored with pg_restore) live in plain directories.
//! Branching one works, by reflinking each file into a new subvolume, but
//! costs time in proportion to its number of files. Converting it once
//! makes every later branch a snapshot.
//!
//! The procedure is ALTER DATABASE … SET TABLESPACE's (`movedb()`), with
//! the copy replaced by reflinks into a subvolume built next to the
//! directory and an atomic swap (storage crate, `convert_to_subvolume`):
//! the database is locked against new connections, nobody else may be
//! connected, a checkpoint writes every dirty buffer and processes pending
//! unlinks, the database's buffers are dropped, and after the swap every
//! process closes the file descriptors it had for the old files. The
//! swap is WAL-logged so that standbys convert their copy too (the redo
//! is in wal.rs); crash recovery finds the subvolume already in place and
//! does nothing.
//!
//! The directory's name and contents are the same before and after, so
//! nothing in the catalog changes. The conversion is not transactional:
//! it stays done if the calling transaction rolls back, which is harmless
//! since no data differs.

use crate::catalog;
use crate::error::file_error_code;
use crate::error::Report;
use crate::ffi;
use crate::wal;
use pg_branch_storage::{convert_to_subvolume, fs_name, remove_convert_leftover, Converted};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::ffi::CStr;

/// The outcome for one directory of a database.
pub struct DirResult {
    pub tablespace: Oid,
    pub path: String,
    pub result: String,
}

/// Why a whole database was not converted (`convert_all` reports it and
/// goes on; converting one database raises it as an error).
pub struct Skipped {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Skipped {
    pub fn raise(self) -> ! {
        let mut r = Report::new(self.code, self.message);
        if let Some(d) = self.detail {
            r = r.detail(d);
        }
        if let Some(h) = self.hint {
            r = r.hint(h);
        }
        r.error()
    }
}

/// Convert every directory of database `name` that is a plain directory on
/// btrfs. The caller has checked that the user is a superuser.
pub fn database(name: &CStr) -> Result<Vec<DirResult>, Skipped> {
    // As movedb(): AccessExclusiveLock on the database keeps new sessions
    // out (they take a conflicting lock while connecting) and serialises us
    // against CREATE DATABASE from it (ours and core's), DROP DATABASE,
    // RENAME and SET TABLESPACE. It is released before we return, since
    // convert_all() goes on to other databases in the same transaction.
    let lockmode = pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE;
    // A database that convert_all() listed may be dropped or renamed by the
    // time we lock it: that is a skip there, core's error here.
    let Some(db) = catalog::lock_database(name, lockmode) else {
        return Err(Skipped {
            code: PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
            message: format!("database \"{}\" does not exist", name.to_string_lossy()),
            detail: None,
            hint: None,
        });
    };
    let result = convert_locked(db.oid, name);
    catalog::unlock_database(db.oid, lockmode);
    result
}

fn convert_locked(db: Oid, name: &CStr) -> Result<Vec<DirResult>, Skipped> {
    let name = name.to_string_lossy();
    // SAFETY: reads this backend's database OID.
    if db == unsafe { pg_sys::MyDatabaseId } {
        return Err(Skipped {
            code: PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            message: format!("cannot convert the currently open database \"{name}\""),
            detail: None,
            hint: Some("Connect to another database and call the function there.".into()),
        });
    }
    // After the lock, as movedb() does: nobody can connect from now on.
    let (mut others, mut prepared) = (0, 0);
    // SAFETY: two out-parameters on our stack.
    if unsafe { pg_sys::CountOtherDBBackends(db, &mut others, &mut prepared) } {
        return Err(Skipped {
            code: PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            message: format!("database \"{name}\" is being accessed by other users"),
            detail: Some(busy_detail(others, prepared)),
            hint: None,
        });
    }

    let mut out = Vec::new();
    let mut todo = Vec::new();
    for ts in catalog::tablespaces() {
        let path = ffi::database_path(db, ts);
        if !path.is_dir() {
            continue;
        }
        // What an interrupted conversion left next to the directory goes
        // first (the directory itself is complete whether the crash came
        // before or after its swap); our lock keeps other conversions out.
        let leftover = match remove_convert_leftover(&path) {
            Ok(removed) => removed,
            Err(e) => Report::new(file_error_code(e.raw_os_error()), e.to_string())
                .detail(format!(
                    "Removing what an interrupted conversion left next to \"{}\".",
                    path.display()
                ))
                .error(),
        };
        let fs = fs_name(&path).unwrap_or("unknown");
        let result = if pg_branch_storage::is_subvolume(&path).unwrap_or(false) {
            if leftover {
                "already a subvolume; removed what an interrupted conversion left".to_string()
            } else {
                "already a subvolume".to_string()
            }
        } else if fs != "btrfs" {
            format!("left as is: {fs} has no subvolumes (branches of it are reflinks)")
        } else {
            todo.push((ts, path));
            continue;
        };
        out.push(DirResult {
            tablespace: ts,
            path: path.display().to_string(),
            result,
        });
    }
    if todo.is_empty() {
        return Ok(out);
    }

    // As movedb(): a checkpoint writes out every dirty buffer, unlogged
    // tables' too, and performs the unlinks it had deferred, so the files
    // on disk are the database. Then its buffers go: nobody can dirty them
    // again while we hold the lock, and none must outlive the old files.
    ffi::request_checkpoint(
        ffi::CHECKPOINT_IMMEDIATE
            | ffi::CHECKPOINT_FORCE
            | ffi::CHECKPOINT_WAIT
            | ffi::CHECKPOINT_FLUSH_ALL,
    );
    // SAFETY: plain OID arguments; the lock keeps the database quiet.
    unsafe { pg_sys::DropDatabaseBuffers(db) };

    let mut last = 0;
    for (ts, path) in todo {
        match convert_to_subvolume(&path) {
            Ok(Converted::Converted { files, left_behind }) => {
                last = wal::log_convert(db, ts);
                if let Some(e) = left_behind {
                    Report::new(file_error_code(e.raw_os_error()), e.to_string())
                        .hint("Converting the database again removes it.")
                        .warning();
                }
                out.push(DirResult {
                    tablespace: ts,
                    path: path.display().to_string(),
                    result: format!("converted ({files} files reflinked)"),
                });
            }
            Ok(Converted::AlreadySubvolume) => out.push(DirResult {
                tablespace: ts,
                path: path.display().to_string(),
                result: "already a subvolume".into(),
            }),
            Err(e) => {
                ffi::release_file_handles();
                Report::new(file_error_code(e.raw_os_error()), e.to_string())
                    .detail(format!(
                        "Converting database \"{name}\" to a subvolume; \"{}\" is unchanged.",
                        path.display()
                    ))
                    .error()
            }
        }
    }
    ffi::release_file_handles();
    // Make the record durable now: the swap on disk already is.
    // SAFETY: flushes WAL up to a position we wrote.
    unsafe { pg_sys::XLogFlush(last) };
    Ok(out)
}

/// Core's `errdetail_busy_db()`.
pub fn busy_detail(others: i32, prepared: i32) -> String {
    match (others, prepared) {
        (o, p) if o > 0 && p > 0 => format!(
            "There are {o} other session(s) and {p} prepared transaction(s) using the database."
        ),
        (1, _) => "There is 1 other session using the database.".into(),
        (o, _) if o > 0 => format!("There are {o} other sessions using the database."),
        (_, 1) => "There is 1 prepared transaction using the database.".into(),
        (_, p) => format!("There are {p} prepared transactions using the database."),
    }
}
