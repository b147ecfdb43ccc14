//! Errors with core's SQLSTATEs and wording.
//!
//! pgrx's `error!` and panics report SQLSTATE XX000; pg_branch must fail
//! the way `createdb()` fails, so every user-facing error goes through
//! [`Report`].

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// An error or message under construction: code, message, optional detail
/// and hint, as `ereport()` takes them.
pub struct Report(ErrorReport);

impl Report {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Report(ErrorReport::new(code, message.into(), "pg_branch"))
    }

    pub fn detail(self, detail: impl Into<String>) -> Self {
        Report(self.0.set_detail(detail))
    }

    pub fn hint(self, hint: impl Into<String>) -> Self {
        Report(self.0.set_hint(hint))
    }

    /// Raise as ERROR: unwinds to the hook's guard, running Rust cleanup on
    /// the way, and becomes a Postgres ERROR there.
    pub fn error(self) -> ! {
        self.0.report(PgLogLevel::ERROR);
        unreachable!("ERROR returned")
    }

    pub fn warning(self) {
        self.0.report(PgLogLevel::WARNING);
    }

    pub fn debug1(self) {
        self.0.report(PgLogLevel::DEBUG1);
    }

    pub fn notice(self) {
        self.0.report(PgLogLevel::NOTICE);
    }
}

/// Shorthand for the common case of code + message.
pub fn error(code: PgSqlErrorCode, message: impl Into<String>) -> ! {
    Report::new(code, message).error()
}
