//! pg_branch: `CREATE DATABASE … TEMPLATE …` as a copy-on-write branch.
//!
//! The library must be preloaded: its ProcessUtility hook has to be in
//! place in every backend, and (from the durability work on) its WAL
//! resource manager can only be registered at postmaster start.
//! `CREATE EXTENSION pg_branch` adds the SQL API in schema `pgbranch`.
//!
//! Unsafe code: every unsafe operation sits in its own `unsafe {}` block
//! with a `// SAFETY:` comment (the lint below enforces the blocks). The
//! precondition every backend function shares, that it runs in a backend
//! (single-threaded, with its memory contexts and error handling set up)
//! and, for catalog access, inside a transaction, is not repeated: a
//! function whose only precondition it is has a safe signature. Functions
//! stay `unsafe` where the caller must vouch for more, typically the
//! validity of a raw pointer, and say what in a `# Safety` section.

#![deny(unsafe_op_in_unsafe_fn)]

use pgrx::prelude::*;

mod api;
mod backup;
mod branch;
mod catalog;
mod catalog_pages;
mod cleanup;
mod compat;
mod convert;
mod decide;
mod diverged;
mod doctor;
mod error;
mod expiry;
mod fence;
mod ffi;
mod gucs;
mod hook;
mod locale;
mod options;
mod registry;
mod reset;
mod stats;
mod wal;

::pgrx::pg_module_magic!();

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: read-only access to a flag the postmaster sets before it
    // loads preload libraries; backends are single-threaded.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if !preloading {
        error::Report::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_branch must be loaded via shared_preload_libraries",
        )
        .hint("Add 'pg_branch' to shared_preload_libraries in postgresql.conf and restart the server.")
        .error();
    }
    quiet_panics();
    gucs::init();
    wal::register();
    wal::install_record_tracking();
    wal::install_drop_tracking();
    hook::install();
    expiry::register();
}

/// Replace pgrx's panic hook (installed by `Pg_magic_func`, just before
/// `_PG_init`), which captures a `std::backtrace::Backtrace` on every
/// unwind, including the ones that merely carry a Postgres ERROR, and
/// which pgrx then appends to the DETAIL sent to the client whenever
/// RUST_BACKTRACE or RUST_LIB_BACKTRACE is set in the server's
/// environment. Ours captures nothing for the client: an unwind that
/// carries an error (pgrx's `CaughtError` or `ErrorReport`) is silent, and
/// a real panic (a bug) is described, with a backtrace if RUST_BACKTRACE
/// asks for one, on the server's stderr, i.e. in the server log. The
/// client gets XX000 and the panic's message (see hook.rs).
fn quiet_panics() {
    use pgrx::pg_sys::panic::{CaughtError, ErrorReport, ErrorReportWithLevel};
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        if payload.is::<CaughtError>()
            || payload.is::<ErrorReportWithLevel>()
            || payload.is::<ErrorReport>()
        {
            return;
        }
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("Box<Any>");
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        eprintln!("pg_branch: panic at {location}: {message}");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            eprintln!("{backtrace}");
        }
    }));
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test` at the crate root: how the test server is
/// configured (src/pg_tests/).
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    /// The library must be preloaded; see `_PG_init`.
    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_branch'"]
    }
}
