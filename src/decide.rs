//! Step 1 of the protocol (branch.rs): whether a `CREATE DATABASE` becomes
//! a branch or goes to core, decided once, before anything is locked or
//! written. The hook (hook.rs) asks; `branch::createdb` makes the branch
//! with the clone steps found here.

use crate::branch::{self, CloneStep, Plan};
use crate::catalog;
use crate::error::Report;
use crate::gucs;
use crate::options::{self, Strategy};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Who makes the database.
#[derive(Debug)]
pub enum Decision {
    /// pg_branch, with the clone steps found. Empty when `branch::createdb`
    /// is to raise, at core's point in the validation, core's error (a role
    /// that may not copy the template) or a filesystem error.
    Branch(Vec<CloneStep>),
    /// Core's `createdb()`, after the NOTICE that says why, if a branch
    /// was wanted but cannot be made.
    Core,
}

/// Whether pg_branch makes this CREATE DATABASE. Runs the checks that
/// `standard_ProcessUtility()` makes before `createdb()` (read-only
/// transaction, parallel mode, recovery, transaction block) so that they
/// come first either way, then asks whether a branch is wanted and possible.
///
/// A statement that names a template or tablespace that does not exist is
/// left to core, which reports it with its own words.
///
/// # Safety
/// `stmt` must point to a valid `CreatedbStmt`.
pub unsafe fn decide(stmt: *mut pg_sys::CreatedbStmt, top_level: bool) -> Decision {
    // SAFETY: `stmt` is valid (the caller's promise).
    let strategy = unsafe { options::requested_strategy(stmt) };
    if strategy == Strategy::Core {
        return Decision::Core;
    }
    if !gucs::ENABLED.get() {
        if strategy == Strategy::Snapshot {
            Report::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot create a database with STRATEGY SNAPSHOT while pg_branch.enabled is off",
            )
            .hint("SET pg_branch.enabled = on, or choose STRATEGY WAL_LOG or FILE_COPY.")
            .error();
        }
        return Decision::Core;
    }

    // The order of standard_ProcessUtility() for a CREATE DATABASE.
    // SAFETY: reads of this backend's transaction state; each Prevent*
    // raises core's ERROR or returns, and the static name outlives it.
    unsafe {
        if pg_sys::XactReadOnly || pg_sys::IsInParallelMode() {
            pg_sys::PreventCommandIfReadOnly(c"CREATE DATABASE".as_ptr());
            pg_sys::PreventCommandIfParallelMode(c"CREATE DATABASE".as_ptr());
            pg_sys::PreventCommandDuringRecovery(c"CREATE DATABASE".as_ptr());
        }
        pg_sys::PreventInTransactionBlock(top_level, c"CREATE DATABASE".as_ptr());
    }

    // SAFETY: `stmt` is valid (the caller's promise).
    let template_name =
        unsafe { options::peek(stmt, "template") }.unwrap_or_else(|| c"template1".to_owned());
    // A template that does not exist: core says so, in its words.
    let template = match catalog::lock_database(&template_name, pg_sys::NoLock as _) {
        Some(t) => t,
        None => return Decision::Core,
    };
    // A role that may not make this database gets core's error from
    // branch::createdb, in core's order, before pg_branch looks at any
    // filesystem (whose probe would create a file in the target
    // tablespace, and whose NOTICE would show paths).
    if !branch::may_copy(&template) {
        return Decision::Branch(Vec::new());
    }
    // SAFETY: `stmt` is valid (the caller's promise).
    let dst_tablespace = match unsafe { options::peek(stmt, "tablespace") } {
        None => template.tablespace,
        // SAFETY: a NUL-terminated name; missing_ok, so no ERROR if absent.
        Some(name) => match unsafe { pg_sys::get_tablespace_oid(name.as_ptr(), true) } {
            // Core reports a missing tablespace, and refuses pg_global.
            oid if oid == pg_sys::InvalidOid || oid == pg_sys::GLOBALTABLESPACE_OID => {
                return Decision::Core
            }
            oid => oid,
        },
    };
    match branch::plan(template.oid, template.tablespace, dst_tablespace) {
        Plan::Clone(steps) => Decision::Branch(steps),
        // A filesystem error: ours to report, after core's validation of
        // the statement (branch::createdb plans again at core's point).
        Plan::Failed(_) => Decision::Branch(Vec::new()),
        Plan::Core(why) if strategy == Strategy::Snapshot => Report::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "cannot create database with STRATEGY SNAPSHOT from template \"{}\"",
                template_name.to_string_lossy()
            ),
        )
        .detail(why.reason)
        .hint("Use STRATEGY WAL_LOG or FILE_COPY, or move the data directory to btrfs or XFS with reflink.")
        .error(),
        Plan::Core(why) => {
            Report::new(
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!(
                    "template \"{}\" cannot be branched, copying it instead",
                    template_name.to_string_lossy()
                ),
            )
            .detail(why.reason)
            .notice();
            Decision::Core
        }
    }
}
