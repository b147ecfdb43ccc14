//! pg_branch: `CREATE DATABASE … TEMPLATE …` as a copy-on-write branch.
//!
//! The library must be preloaded: its ProcessUtility hook has to be in
//! place in every backend, and (from the durability work on) its WAL
//! resource manager can only be registered at postmaster start.
//! `CREATE EXTENSION pg_branch` adds the SQL API in schema `pg_branch`.

use pgrx::prelude::*;

mod api;
mod branch;
mod catalog;
mod cleanup;
mod compat;
mod convert;
mod doctor;
mod error;
mod fence;
mod ffi;
mod gucs;
mod hook;
mod locale;
mod options;
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
    gucs::init();
    wal::register();
    hook::install();
}
