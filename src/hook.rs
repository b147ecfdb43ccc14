//! The ProcessUtility hook: decide whether a statement is a branch, and
//! hand everything else on untouched (DESIGN step 1).
//!
//! It nests like any well-behaved hook: the previous hook (another
//! extension's, or none) is saved at load time and receives every
//! statement we do not handle, with exactly the arguments we received.

use crate::branch;
use crate::catalog;
use crate::error::Report;
use crate::gucs;
use crate::options::{self, Strategy};
use pgrx::pg_sys;
use pgrx::prelude::*;

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

pub fn install() {
    // SAFETY: _PG_init runs once per process, single-threaded, before any
    // statement; we chain to whatever hook was installed before us.
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let node = (*pstmt).utilityStmt;
    if pgrx::is_a(node, pg_sys::NodeTag::T_CreatedbStmt) {
        let stmt = node as *mut pg_sys::CreatedbStmt;
        let top_level = context == pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL;
        if ours(stmt, top_level) {
            let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
            (*pstate).p_sourcetext = query_string;
            (*pstate).p_queryEnv = query_env;
            branch::createdb(pstate, stmt);
            pg_sys::free_parsestate(pstate);
            return;
        }
    }
    match PREV_PROCESS_UTILITY {
        Some(prev) => prev(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
        None => pg_sys::standard_ProcessUtility(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
    }
}

/// Whether pg_branch makes this CREATE DATABASE. Runs the checks that
/// `standard_ProcessUtility()` makes before `createdb()` (read-only
/// transaction, parallel mode, recovery, transaction block) so that they
/// come first either way, then asks whether a branch is wanted and possible.
///
/// A statement that names a template or tablespace that does not exist is
/// left to core, which reports it with its own words.
unsafe fn ours(stmt: *mut pg_sys::CreatedbStmt, top_level: bool) -> bool {
    let strategy = options::requested_strategy(stmt);
    if strategy == Strategy::Core {
        return false;
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
        return false;
    }

    // The order of standard_ProcessUtility() for a CREATE DATABASE.
    if pg_sys::XactReadOnly || pg_sys::IsInParallelMode() {
        pg_sys::PreventCommandIfReadOnly(c"CREATE DATABASE".as_ptr());
        pg_sys::PreventCommandIfParallelMode(c"CREATE DATABASE".as_ptr());
        pg_sys::PreventCommandDuringRecovery(c"CREATE DATABASE".as_ptr());
    }
    pg_sys::PreventInTransactionBlock(top_level, c"CREATE DATABASE".as_ptr());

    let template_name = options::peek(stmt, "template").unwrap_or_else(|| c"template1".to_owned());
    let Some(template) = catalog::lock_database(&template_name, pg_sys::NoLock as _) else {
        return false;
    };
    // A role that may not make this database gets core's error from
    // branch::createdb, in core's order, before pg_branch looks at any
    // filesystem (whose probe would create a file in the target
    // tablespace, and whose NOTICE would show paths).
    if !branch::may_copy(&template) {
        return true;
    }
    let dst_tablespace = match options::peek(stmt, "tablespace") {
        None => template.tablespace,
        Some(name) => match pg_sys::get_tablespace_oid(name.as_ptr(), true) {
            // Core reports a missing tablespace, and refuses pg_global.
            oid if oid == pg_sys::InvalidOid || oid == pg_sys::GLOBALTABLESPACE_OID => {
                return false
            }
            oid => oid,
        },
    };
    match branch::plan(template.oid, template.tablespace, dst_tablespace) {
        Ok(Ok(_)) => true,
        // A filesystem error: ours to report, after core's validation of
        // the statement (branch::createdb plans again at core's point).
        Err(_) => true,
        Ok(Err(why)) if strategy == Strategy::Snapshot => Report::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "cannot create database with STRATEGY SNAPSHOT from template \"{}\"",
                template_name.to_string_lossy()
            ),
        )
        .detail(why.reason)
        .hint("Use STRATEGY WAL_LOG or FILE_COPY, or move the data directory to btrfs or XFS with reflink.")
        .error(),
        Ok(Err(why)) => {
            Report::new(
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!(
                    "template \"{}\" cannot be branched, copying it instead",
                    template_name.to_string_lossy()
                ),
            )
            .detail(why.reason)
            .notice();
            false
        }
    }
}
