//! The ProcessUtility hook: a `CREATE DATABASE` that decide.rs makes a
//! branch goes to `branch::createdb`; a `SECURITY LABEL FOR pg_branch` is
//! skipped (hook.c: only pg_branch writes its registry); everything else is
//! handed on untouched.
//!
//! It nests like any well-behaved hook: the previous hook (another
//! extension's, or none) is saved at load time and receives every
//! statement we do not handle, with exactly the arguments we received.
//!
//! The hook itself is C (src/hook.c, which says why): a statement that is
//! not a `CREATE DATABASE` never enters Rust, so no pgrx guard catches and
//! re-raises its errors. This file is the Rust half, called for a
//! `CreatedbStmt` only, which returns the ERROR it ends with instead of
//! raising it.
//!
//! The other callbacks pg_branch gives the server follow the same rule
//! where a client can see their messages: the SQL functions (api.rs) and
//! the `before_shmem_exit` cleanup (cleanup.rs) raise pg_branch's own
//! reports through core's `ereport()` (error.rs), with no backtrace
//! (lib.rs's panic hook); the WAL resource manager's redo, desc and identify
//! (wal.rs) run in the startup process, or in pg_walinspect's functions
//! where they only format text, and call no core function whose error a
//! client would see. pg_branch installs no other hook.

use crate::branch;
use crate::decide::{self, Decision};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

mod shim {
    use super::*;
    // src/hook.c
    unsafe extern "C" {
        pub fn pg_branch_install_hook();
        pub fn pg_branch_captured_error() -> *mut pg_sys::ErrorData;
    }
    // src/hook.c; allocates, so it may raise (out of memory): guarded.
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" {
        pub fn pg_branch_make_error(
            sqlerrcode: i32,
            message: *const c_char,
            detail: *const c_char,
            hint: *const c_char,
            filename: *const c_char,
            lineno: i32,
            funcname: *const c_char,
        ) -> *mut pg_sys::ErrorData;
    }
}

pub fn install() {
    // SAFETY: _PG_init runs once per process, single-threaded, before any
    // statement; the C side saves the previous hook and chains to it.
    unsafe { shim::pg_branch_install_hook() }
}

/// The Rust half of the hook, called by src/hook.c for a `CreatedbStmt`
/// only: whether pg_branch made the database. On an ERROR, `*error`
/// receives the ErrorData to raise and the function returns normally: the
/// C side raises it once no Rust frame is left on the stack (see hook.c).
///
/// # Safety
/// Called by hook.c with the arguments core passed to ProcessUtility, and
/// `error` pointing to a NULL `ErrorData *`.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn pg_branch_createdb(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    context: pg_sys::ProcessUtilityContext::Type,
    query_env: *mut pg_sys::QueryEnvironment,
    error: *mut *mut pg_sys::ErrorData,
) -> bool {
    let run = AssertUnwindSafe(|| {
        // SAFETY: `pstmt` is core's valid PlannedStmt, and hook.c calls us
        // only when its utility statement is a CreatedbStmt.
        let stmt = unsafe { (*pstmt).utilityStmt } as *mut pg_sys::CreatedbStmt;
        let top_level = context == pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL;
        // SAFETY: `stmt` is valid for the whole statement (above).
        let Decision::Branch(probed) = (unsafe { decide::decide(stmt, top_level) }) else {
            return false;
        };
        // SAFETY: allocates a fresh ParseState (no parent) in the current
        // memory context.
        let pstate = unsafe { pg_sys::make_parsestate(std::ptr::null_mut()) };
        // SAFETY: `pstate` was just allocated and is ours; `query_string`
        // and `query_env` are core's arguments, valid for the statement.
        unsafe {
            (*pstate).p_sourcetext = query_string;
            (*pstate).p_queryEnv = query_env;
        }
        // SAFETY: `pstate` and `stmt` are valid until freed below or until
        // the statement ends; decide() checked that this is a top-level
        // statement outside a transaction block.
        unsafe { branch::createdb(pstate, stmt, &probed) };
        // SAFETY: `pstate` is ours and no longer used.
        unsafe { pg_sys::free_parsestate(pstate) };
        true
    });
    match catch_unwind(run) {
        Ok(handled) => handled,
        Err(payload) => {
            // SAFETY: hook.c passes a valid `ErrorData **` (our contract).
            unsafe { *error = error_data(payload) };
            true
        }
    }
}

/// The ErrorData that ends the statement, from what unwound to
/// [`pg_branch_createdb`]: core's own copy (every field) when the error
/// came from core, or from pg_branch's [`Report`] (which core raised for
/// us), else one built from what the unwind carries.
fn error_data(payload: Box<dyn std::any::Any + Send>) -> *mut pg_sys::ErrorData {
    let (code, message, detail, hint, file, line) = match payload.downcast::<CaughtError>() {
        Ok(caught) => match *caught {
            CaughtError::PostgresError(r) => {
                // SAFETY: hook.c's capture is NULL or the latest ERROR it
                // copied (it frees an older copy only when replacing it).
                let copy = unsafe { shim::pg_branch_captured_error() };
                // SAFETY: a non-NULL copy is a valid ErrorData whose
                // non-NULL `message` is a NUL-terminated string.
                if !copy.is_null()
                    && unsafe {
                        (*copy).sqlerrcode == r.sql_error_code() as i32
                            && !(*copy).message.is_null()
                            && CStr::from_ptr((*copy).message).to_string_lossy() == r.message()
                    }
                {
                    return copy;
                }
                report_fields(&r)
            }
            CaughtError::ErrorReport(r) => report_fields(&r),
            CaughtError::RustPanic { ereport, .. } => panic_fields(ereport.message()),
        },
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "Box<Any>".into());
            panic_fields(&message)
        }
    };
    let c = |s: &str| CString::new(s.replace('\0', "")).expect("no NUL");
    let opt = |s: &Option<String>| s.as_deref().map(c);
    let (message, detail, hint, file) = (c(&message), opt(&detail), opt(&hint), c(&file));
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: NUL-terminated strings (or NULL for no detail or hint) that
    // outlive the call, which copies them into hook.c's error context.
    unsafe {
        shim::pg_branch_make_error(
            code,
            message.as_ptr(),
            ptr(&detail),
            ptr(&hint),
            file.as_ptr(),
            line as i32,
            c"pg_branch".as_ptr(),
        )
    }
}

type Fields = (i32, String, Option<String>, Option<String>, String, u32);

fn report_fields(r: &pg_sys::panic::ErrorReportWithLevel) -> Fields {
    (
        r.sql_error_code() as i32,
        r.message().to_string(),
        r.detail().map(str::to_string),
        r.hint().map(str::to_string),
        r.file().to_string(),
        r.line_number(),
    )
}

/// A bug in pg_branch: XX000 and the panic's message; where it happened
/// (and a backtrace, with RUST_BACKTRACE) went to the server log only.
fn panic_fields(message: &str) -> Fields {
    (
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32,
        message.to_string(),
        None,
        Some("This is a bug in pg_branch; the server log says where it happened.".into()),
        "pg_branch".into(),
        0,
    )
}
