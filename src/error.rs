//! Errors with core's SQLSTATEs and wording.
//!
//! pgrx's `error!` and panics report SQLSTATE XX000; pg_branch must fail
//! the way `createdb()` fails, so every user-facing error goes through
//! [`Report`]. A report is raised by core's own `ereport()` (hook.c's
//! `pg_branch_report`), so it can carry a cursor position like core's
//! `parser_errposition()`, and an ERROR raised while a CREATE DATABASE runs
//! reaches the client with every field (see hook.c).

use pgrx::pg_sys;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::Location;

#[allow(clippy::too_many_arguments)]
mod raw {
    use super::*;
    // src/hook.c. An ERROR longjmps: pgrx's guard turns it into an unwind.
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" {
        pub fn pg_branch_report(
            elevel: c_int,
            sqlerrcode: c_int,
            message: *const c_char,
            detail: *const c_char,
            hint: *const c_char,
            pstate: *mut pg_sys::ParseState,
            location: c_int,
            filename: *const c_char,
            lineno: c_int,
            funcname: *const c_char,
        );
    }
}

/// An error or message under construction: code, message, optional detail,
/// hint and cursor position, as `ereport()` takes them.
pub struct Report {
    code: PgSqlErrorCode,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
    position: Option<(*mut pg_sys::ParseState, c_int)>,
    location: &'static Location<'static>,
}

impl Report {
    #[track_caller]
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Report {
            code,
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
            location: Location::caller(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The cursor position of byte offset `location` in the statement's
    /// text, as core's `parser_errposition(pstate, location)`.
    ///
    /// # Safety
    /// `pstate` must stay valid until the report is raised.
    pub unsafe fn position(mut self, pstate: *mut pg_sys::ParseState, location: c_int) -> Self {
        self.position = Some((pstate, location));
        self
    }

    /// Raise as ERROR: unwinds (pgrx turns core's longjmp into a Rust
    /// unwind), running Rust cleanup on the way.
    pub fn error(self) -> ! {
        self.emit(PgLogLevel::ERROR as c_int);
        unreachable!("ERROR returned")
    }

    pub fn warning(self) {
        self.emit(PgLogLevel::WARNING as c_int);
    }

    pub fn debug1(self) {
        self.emit(PgLogLevel::DEBUG1 as c_int);
    }

    pub fn notice(self) {
        self.emit(PgLogLevel::NOTICE as c_int);
    }

    fn emit(self, elevel: c_int) {
        let c = |s: &str| CString::new(s.replace('\0', "")).expect("no NUL");
        let message = c(&self.message);
        let detail = self.detail.as_deref().map(c);
        let hint = self.hint.as_deref().map(c);
        let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let (pstate, location) = self.position.unwrap_or((std::ptr::null_mut(), -1));
        // SAFETY: NUL-terminated strings that outlive the call (core copies
        // them); the file name is static (see `static_file`); `pstate` is
        // NULL or valid (the `position` contract).
        unsafe {
            raw::pg_branch_report(
                elevel,
                self.code as c_int,
                message.as_ptr(),
                ptr(&detail),
                ptr(&hint),
                pstate,
                location,
                static_file(self.location.file()).as_ptr(),
                self.location.line() as c_int,
                c"pg_branch".as_ptr(),
            )
        }
    }
}

/// A NUL-terminated copy of a source file name that lives as long as the
/// process: core keeps the pointer it gets for a report's file (it never
/// copies it, expecting `__FILE__`). One per source file of pg_branch.
fn static_file(file: &'static str) -> &'static CStr {
    thread_local! {
        static FILES: RefCell<HashMap<&'static str, &'static CStr>> = RefCell::new(HashMap::new());
    }
    FILES.with(|f| {
        *f.borrow_mut()
            .entry(file)
            .or_insert_with(|| Box::leak(CString::new(file).unwrap_or_default().into_boxed_c_str()))
    })
}

/// Shorthand for the common case of code + message.
#[track_caller]
pub fn error(code: PgSqlErrorCode, message: impl Into<String>) -> ! {
    Report::new(code, message).error()
}

/// The ERROR when FIEMAP cannot map the extents of `path`.
pub fn extents_error(path: &std::path::Path, e: std::io::Error) -> ! {
    error(
        file_error_code(e.raw_os_error()),
        format!(
            "could not read the extents of \"{}\": {}",
            path.display(),
            pg_branch_storage::errno_text(&e)
        ),
    )
}

/// The SQLSTATE of a failed file operation, as core's
/// `errcode_for_file_access()` classifies errno.
pub fn file_error_code(errno: Option<i32>) -> PgSqlErrorCode {
    match errno {
        Some(libc::ENOSPC) => PgSqlErrorCode::ERRCODE_DISK_FULL,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE
        }
        Some(libc::ENOENT) => PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
        Some(libc::EEXIST) => PgSqlErrorCode::ERRCODE_DUPLICATE_FILE,
        Some(libc::EMFILE) | Some(libc::ENFILE) => PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
        _ => PgSqlErrorCode::ERRCODE_IO_ERROR,
    }
}
