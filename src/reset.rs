//! `pgbranch.reset()`: replace a branch's contents with a fresh branch of
//! its parent (or of another database), in place. Its OID, name, owner,
//! ACL, settings, comment, connection limit and registry record stay.
//!
//! Read it beside core's `dropdb()` (the branch's old contents go as a
//! dropped database's do) and `createdb()` (the new contents come as a
//! branch's do, branch.rs). The steps:
//!
//!  1. Check as DROP DATABASE checks the branch and CREATE DATABASE the
//!     source. AccessExclusiveLock on the branch's database object, held
//!     to commit, keeps new sessions out (InitPostgres waits for it);
//!     nobody else may be connected (or, with `force`, they are
//!     terminated first, as `DROP DATABASE ... WITH (FORCE)` does).
//!  2. Make the old contents durable, then forget them: flush the branch's
//!     buffers, syncfs, drop its buffers, cancel the checkpointer's
//!     pending fsyncs *and unlinks* for it, and wait for a checkpoint so
//!     that the cancel has been absorbed. Without that wait the
//!     checkpointer could unlink, after the swap, the truncated first
//!     segment of a relation the branch dropped, which is then a file of
//!     the source with the same relfilenode (dbcommands.c's dropdb() says
//!     as much). A failure from here to step 6 leaves the old contents,
//!     durable.
//!  3. Pin and fence the source as branch.rs does, and clone it next to
//!     the branch's directory (`<dir>.pg_branch_reset`). A cancel that
//!     came during the clone is served right after it. Until step 6 an
//!     ERROR leaves the old contents and removes the clone; a FATAL or a
//!     crash leaves the clone, which the next reset removes.
//!  4. Lower the branch's datfrozenxid / datminmxid to the source's, in
//!     place (not transactionally): from the swap on the files are the
//!     source's, whatever becomes of this transaction; an older horizon is
//!     always safe.
//!  5. Update the registry record (transactional), once now, so that its
//!     locks and row version are ours, and again with the record's LSN.
//!     The same facts go into the WAL record, and onto the clone before
//!     the swap: if the transaction never commits (a crash after the
//!     swap), the registry reads them from there (registry.rs).
//!  6. Hold interrupts until the commit (ffi::hold_interrupts_until_commit):
//!     from the swap on a rollback could not undo the reset, so a cancel
//!     or terminate request must not cause one. Then, in a critical
//!     section with DELAY_CHKPT_START: WAL-log the reset, flush it, mark
//!     the clone with the record and swap it with the branch's directory
//!     in one `renameat2(RENAME_EXCHANGE)`. Any failure in here is a
//!     PANIC, and crash recovery replays the record, which finishes the
//!     swap (wal.rs). DELAY_CHKPT_START keeps a checkpoint whose redo
//!     pointer is past the record from completing before the swap
//!     (catalog/storage.c's RelationTruncate() for the same reason).
//!  7. Lower the fence, remove the old contents (now under the scratch
//!     name), and wait for a checkpoint to start after the record: the
//!     branch's first changes must carry full-page images (branch.rs
//!     step 10).
//!
//! Only a branch and a source that each keep all their files in their
//! default tablespace can be reset: the swap is then one rename, and its
//! record one directory.

use crate::branch::{self, Plan};
use crate::catalog::{self, DatabaseRow};
use crate::error::{error, file_error_code, Report};
use crate::fence::Fence;
use crate::ffi;
use crate::registry;
use crate::wal;
use pg_branch_storage::{clone_dir, errno_text, presync, remove_dir, RESET_SUFFIX};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use serde_json::Value;
use std::ffi::CString;

/// Reset branch `name` to a fresh branch of `source` (default: its parent);
/// with `force`, terminate the sessions connected to it first.
pub fn reset(name: &str, source: Option<&str>, force: bool) {
    ffi::prevent_unless_writable_top_level("pgbranch.reset()");
    let cname = name_or_error(name);

    // 1. The branch, as dropdb() locks and checks it.
    let lockmode = pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE;
    let target = catalog::lock_database(&cname, lockmode).unwrap_or_else(|| {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
            format!("database \"{name}\" does not exist"),
        )
    });
    registry::check_owner(target.oid, name);
    // SAFETY: reads this backend's database OID.
    if target.oid == unsafe { pg_sys::MyDatabaseId } {
        error(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            "cannot reset the currently open database",
        );
    }
    if target.is_template {
        error(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            "cannot reset a template database",
        );
    }
    let Some(mut record) = registry::read(target.oid) else {
        Report::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("database \"{name}\" is not a branch"),
        )
        .detail("Only a database that pg_branch made by CREATE DATABASE can be reset.")
        .error()
    };

    // The source, as createdb() checks a template.
    let source_name = match source {
        Some(s) => s.to_owned(),
        None => parent_name(&record, name),
    };
    let csource = name_or_error(&source_name);
    let src = catalog::lock_database(&csource, pg_sys::AccessShareLock as _).unwrap_or_else(|| {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
            format!("database \"{source_name}\" does not exist"),
        )
    });
    if src.oid == target.oid {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("cannot reset database \"{name}\" from itself"),
        );
    }
    // SAFETY: a syscache lookup by OID, released before it returns.
    if unsafe { pg_sys::database_is_invalid_oid(src.oid) } {
        Report::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot use invalid database \"{source_name}\" as template"),
        )
        .hint("Use DROP DATABASE to drop invalid databases.")
        .error();
    }
    if !branch::may_copy(&src) {
        error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to copy database \"{source_name}\""),
        );
    }
    check_same_locale(&target, &src, name, &source_name);

    // Nobody else may be connected, as for DROP DATABASE; with force, as
    // for DROP DATABASE ... WITH (FORCE), they are terminated first.
    check_not_in_use(target.oid, name, force);

    // Which directories: one each, in the default tablespaces.
    let dir = ffi::database_path(target.oid, target.tablespace);
    let step = single_step(&target, &src, name, &source_name);

    // 2. The old contents: durable, then forgotten (module comment).
    // SAFETY: plain OID arguments; our lock keeps the database quiet.
    unsafe { pg_sys::FlushDatabaseBuffers(target.oid) };
    if let Err(e) = presync(&dir) {
        error(
            file_error_code(e.raw_os_error()),
            format!("could not sync \"{}\": {}", dir.display(), errno_text(&e)),
        );
    }
    // SAFETY: as above.
    unsafe {
        pg_sys::DropDatabaseBuffers(target.oid);
        ffi::forget_database_sync_requests(target.oid);
    }
    ffi::request_checkpoint(
        ffi::CHECKPOINT_IMMEDIATE | ffi::CHECKPOINT_FORCE | ffi::CHECKPOINT_WAIT,
    );
    ffi::release_file_handles();

    // 3. The source: pinned, its horizon held, fenced, cloned.
    catalog::hold_frozen_ids(src.oid);
    let scratch = dir.with_extension(RESET_SUFFIX);
    remove_or_error(&scratch);
    let _ = presync(&step.src);
    let fence = Fence::raise(src.oid, src.tablespace, &csource);
    // SAFETY: writes out the shared buffers of the fenced source: every
    // page its committed transactions changed goes to the kernel, so the
    // clone sees it (branch.rs step 6).
    unsafe { pg_sys::FlushDatabaseBuffers(src.oid) };
    // Until the record, an ERROR (a cancel served below included) or a
    // FATAL leaves the old contents; an ERROR also removes the clone. The
    // clone a FATAL leaves is removed by the next reset of this branch.
    let (mut record, facts) = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        clone_source(&step, &scratch);
        // A cancel that came during the clone (which can take a while on
        // a filesystem without snapshots) is served here.
        check_for_interrupts!();

        // 4. The horizon, in place.
        catalog::lower_frozen_ids(target.oid, src.frozen_xid, src.min_mxid);

        // 5. The registry record: transactional, committed with the reset.
        // Written now as well as after the record, so that its locks and
        // its row version are ours before there is no way back.
        // SAFETY: reads the transaction's start time.
        let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
        let count = record
            .get("reset_count")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let facts = registry::reset_facts(target.oid, src.oid, &source_name, count + 1, now);
        for (key, value) in &facts {
            if key != "db" {
                record.insert(key.clone(), value.clone());
            }
        }
        registry::write(target.oid, &Value::Object(record.clone()));
        (record, Value::Object(facts).to_string())
    }))
    .catch_others(|e| {
        remove_dir(&scratch).ok();
        e.rethrow()
    })
    .execute();

    // 6. Log and swap: no way back from the record on. From here to the
    // commit no cancel or terminate request may abort the transaction,
    // which would report a failure of a reset that happened: they wait
    // for the commit.
    ffi::hold_interrupts_until_commit();
    let logged = wal::log_reset_and_swap(
        target.oid,
        target.tablespace,
        src.oid,
        step.src_tablespace,
        step.method,
        &facts,
    );
    record.insert("lsn".into(), Value::from(registry::lsn_text(logged.start)));
    registry::write(target.oid, &Value::Object(record));

    // 7. The source's writers resume; the old contents go.
    fence.lower();
    if let Err(e) = remove_dir(&scratch) {
        Report::new(
            file_error_code(e.raw_os_error()),
            format!(
                "could not remove the old contents of \"{name}\" at \"{}\": {}",
                scratch.display(),
                errno_text(&e)
            ),
        )
        .hint("The next reset of this branch removes it.")
        .warning();
    }
    wal::wait_for_checkpoint_start(logged.end);
    // SAFETY: sets a flag of this backend's transaction state.
    unsafe { pg_sys::ForceSyncCommit() };
}

/// Clone the source to `scratch` and mark the clone as not yet logged: a
/// filesystem that cannot mark it fails here, before anything is logged.
fn clone_source(step: &branch::CloneStep, scratch: &std::path::Path) {
    if let Err(e) = clone_dir(&step.src, scratch, step.method) {
        Report::new(file_error_code(e.raw_os_error()), e.to_string())
            .detail(format!(
                "Branching \"{}\" to \"{}\" by {}.",
                step.src.display(),
                scratch.display(),
                step.method
            ))
            .error();
    }
    if let Err(e) = pg_branch_storage::set_record_mark(scratch, "pending") {
        error(
            file_error_code(e.raw_os_error()),
            format!(
                "could not mark \"{}\": {}",
                scratch.display(),
                errno_text(&e)
            ),
        );
    }
}

fn name_or_error(name: &str) -> CString {
    CString::new(name).unwrap_or_else(|_| {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "database name contains a NUL byte",
        )
    })
}

/// The registry's parent of branch `name`, by its current name.
fn parent_name(record: &serde_json::Map<String, Value>, name: &str) -> String {
    let oid = record
        .get("parent_oid")
        .and_then(Value::as_u64)
        .map(|o| Oid::from(o as u32));
    match oid.and_then(catalog::database_name) {
        Some(n) => n,
        None => Report::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the parent of branch \"{name}\" has been dropped"),
        )
        .hint(format!(
            "Name another database to reset it from: pgbranch.reset('{}', 'other').",
            name.replace('\'', "''")
        ))
        .error(),
    }
}

/// The contents may only come from a database with the branch's encoding
/// and locale: its indexes and its catalog's `pg_database` row must agree.
fn check_same_locale(t: &DatabaseRow, s: &DatabaseRow, name: &str, source: &str) {
    if t.encoding != s.encoding
        || t.collate != s.collate
        || t.ctype != s.ctype
        || t.locale_provider != s.locale_provider
        || t.locale != s.locale
    {
        Report::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("cannot reset database \"{name}\" from database \"{source}\""),
        )
        .detail("The two databases differ in encoding or locale.")
        .error();
    }
}

fn check_not_in_use(db: Oid, name: &str, force: bool) {
    if force {
        // SAFETY: core's WITH (FORCE): checks permissions, signals the
        // database's sessions and waits for them (raises on failure).
        unsafe { pg_sys::TerminateOtherDBBackends(db) };
    }
    let (mut others, mut prepared) = (0, 0);
    // SAFETY: two out-parameters on our stack.
    if unsafe { pg_sys::CountOtherDBBackends(db, &mut others, &mut prepared) } {
        Report::new(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("database \"{name}\" is being accessed by other users"),
        )
        .detail(crate::convert::busy_detail(others, prepared))
        .error();
    }
}

/// The one directory to clone, or 0A000 if either side uses more than its
/// default tablespace.
fn single_step(t: &DatabaseRow, s: &DatabaseRow, name: &str, source: &str) -> branch::CloneStep {
    let others = |db: &DatabaseRow| {
        catalog::tablespaces()
            .into_iter()
            .filter(|ts| *ts != db.tablespace)
            .any(|ts| branch::has_entries(&ffi::database_path(db.oid, ts)))
    };
    if others(t) || others(s) {
        Report::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot reset database \"{name}\" from database \"{source}\""),
        )
        .detail("One of them has relations outside its default tablespace.")
        .error();
    }
    match branch::plan(s.oid, s.tablespace, t.tablespace) {
        Plan::Clone(mut steps) if steps.len() == 1 => steps.remove(0),
        Plan::Clone(_) => error(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot reset database \"{name}\": its source has no files"),
        ),
        Plan::Core(why) => Report::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot branch database \"{source}\""),
        )
        .detail(why.reason)
        .error(),
        Plan::Failed(e) => error(file_error_code(e.raw_os_error()), e.to_string()),
    }
}

fn remove_or_error(path: &std::path::Path) {
    if let Err(e) = remove_dir(path) {
        error(
            file_error_code(e.raw_os_error()),
            format!(
                "could not remove \"{}\": {}",
                path.display(),
                errno_text(&e)
            ),
        );
    }
}
