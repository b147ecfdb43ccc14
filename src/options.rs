//! The options of `CREATE DATABASE`, parsed the way `createdb()` parses
//! them in the PostgreSQL version we are built for: same checks, same
//! order, same messages.
//!
//! Core's version is a DefElem if/else ladder filling seventeen locals; here
//! the ladder fills one struct.
//!
//! The functions here read the statement's parse tree through raw
//! pointers, so they stay `unsafe`: the caller vouches for the pointers.
//! Running inside a transaction, in a backend, goes without saying (lib.rs).

use crate::compat;
use crate::error::{error, Report};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;
use std::ffi::{CStr, CString};

/// How the statement asked for the copy to be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// No STRATEGY option: branch if the filesystem allows, else core.
    Default,
    /// `STRATEGY = SNAPSHOT`: branch, or fail saying why not.
    Snapshot,
    /// `STRATEGY = WAL_LOG` or `FILE_COPY`: core's own copy.
    Core,
}

/// The value of option `name` as core would read it with `defGetString`,
/// without validating anything else: the hook needs STRATEGY, TEMPLATE and
/// TABLESPACE to decide whether the statement is ours. Repeated or
/// malformed options are left for [`CreatedbOptions::parse`] (or core) to
/// report.
///
/// # Safety
/// `stmt` must point to a valid `CreatedbStmt`.
pub unsafe fn peek(stmt: *const pg_sys::CreatedbStmt, name: &str) -> Option<CString> {
    // SAFETY: `stmt` is valid (the caller's promise), so its `options` is
    // NIL or a List of DefElem, as the grammar builds it.
    let options = unsafe { PgList::<pg_sys::DefElem>::from_pg((*stmt).options) };
    let value = options
        .iter_ptr()
        .find(|d| {
            // SAFETY: each element is a valid DefElem of the statement,
            // whose `defname` is a NUL-terminated string.
            unsafe {
                CStr::from_ptr((**d).defname).to_bytes() == name.as_bytes() && !(**d).arg.is_null()
            }
        })
        // SAFETY: a DefElem with an argument; defGetString() returns a
        // NUL-terminated string (or raises core's ERROR), copied at once.
        .map(|d| unsafe { CStr::from_ptr(pg_sys::defGetString(d)) }.to_owned());
    value
}

/// What the STRATEGY option asks for.
///
/// # Safety
/// As [`peek`].
pub unsafe fn requested_strategy(stmt: *const pg_sys::CreatedbStmt) -> Strategy {
    // SAFETY: `stmt` is valid, as the caller promises.
    match unsafe { peek(stmt, "strategy") }
        .map(|s| s.to_string_lossy().to_lowercase())
        .as_deref()
    {
        None => Strategy::Default,
        Some("wal_log") | Some("file_copy") => Strategy::Core,
        Some("snapshot") => Strategy::Snapshot,
        // Unknown: ours to reject, with a hint that names "snapshot".
        Some(_) => Strategy::Default,
    }
}

/// Everything a `CREATE DATABASE` statement said, validated as far as
/// core validates options before looking at the template.
#[derive(Debug, Default)]
pub struct CreatedbOptions {
    pub owner: Option<CString>,
    pub template: Option<CString>,
    /// -1: not given.
    pub encoding: i32,
    pub collate: Option<CString>,
    pub ctype: Option<CString>,
    /// LOCALE, which also names the provider's locale (ICU in 16, any in 17+).
    pub locale: Option<CString>,
    pub icu_locale: Option<CString>,
    /// ICU_LOCALE / BUILTIN_LOCALE appeared at all (even as DEFAULT), which
    /// 17+ rejects for another provider.
    pub icu_locale_given: bool,
    pub builtin_locale: Option<CString>,
    pub builtin_locale_given: bool,
    /// ICU_RULES (16+).
    pub icu_rules: Option<CString>,
    /// 0: not given; else `COLLPROVIDER_*`.
    pub locale_provider: i8,
    pub is_template: bool,
    pub allow_connections: bool,
    pub connection_limit: i32,
    /// Given explicitly (pg_upgrade uses this to reproduce a database).
    pub collation_version: Option<CString>,
    pub tablespace: Option<CString>,
    /// InvalidOid: not given.
    pub oid: pg_sys::Oid,
    /// The STRATEGY value, if given (validated later, where core does).
    pub strategy: Option<String>,
}

impl CreatedbOptions {
    /// # Safety
    /// `pstate` and `stmt` must be valid.
    pub unsafe fn parse(
        pstate: *mut pg_sys::ParseState,
        stmt: *const pg_sys::CreatedbStmt,
    ) -> Self {
        // First pass, as core's loop: find each option, rejecting repeats
        // and unknown names; OID and LOCATION are handled on the spot.
        let mut given: Vec<(&'static str, *mut pg_sys::DefElem)> = Vec::new();
        let mut oid = pg_sys::InvalidOid;
        // SAFETY: `stmt` is valid (the caller's promise), so its `options`
        // is NIL or a List of DefElem, as the grammar builds it.
        let options = unsafe { PgList::<pg_sys::DefElem>::from_pg((*stmt).options) };
        for defel in options.iter_ptr() {
            // SAFETY: a valid DefElem of the statement; `defname` is a
            // NUL-terminated string.
            let name = unsafe { CStr::from_ptr((*defel).defname) }.to_string_lossy();
            if let Some(known) = OPTIONS.iter().find(|k| **k == name) {
                if given.iter().any(|(k, _)| k == known) {
                    // SAFETY: valid DefElem and ParseState; raises ERROR.
                    unsafe { pg_sys::errorConflictingDefElem(defel, pstate) };
                }
                given.push((known, defel));
            } else if name == "location" {
                let report = Report::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "LOCATION is not supported anymore",
                )
                .hint("Consider using tablespaces instead.");
                // SAFETY: `pstate` is valid and outlives the report, raised
                // at once; `defel` is a valid DefElem.
                unsafe { report.position(pstate, (*defel).location) }.warning();
            } else if name == "oid" {
                // SAFETY: a valid DefElem; raises core's ERROR if its
                // argument is no OID.
                oid = unsafe { pg_sys::defGetObjectId(defel) };
                // As core: system-range OIDs are only for initdb and
                // pg_upgrade, so that no future initdb can collide.
                // SAFETY: reads of two bool globals of this backend (a GUC
                // and a flag set at startup).
                if oid.to_u32() < pg_sys::FirstNormalObjectId
                    && unsafe { !pg_sys::allowSystemTableMods && !pg_sys::IsBinaryUpgrade }
                {
                    error(
                        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                        format!(
                            "OIDs less than {} are reserved for system objects",
                            pg_sys::FirstNormalObjectId
                        ),
                    );
                }
            } else {
                let report = Report::new(
                    PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
                    format!("option \"{name}\" not recognized"),
                );
                // SAFETY: as for LOCATION above.
                unsafe { report.position(pstate, (*defel).location) }.error();
            }
        }

        // Second pass, in core's order. An option given as DEFAULT has no
        // argument and counts as not given.
        let get = |k: &str| given.iter().find(|(n, _)| *n == k).map(|(_, d)| *d);
        // SAFETY: every pointer in `given` is a valid DefElem of the statement.
        let with_arg = |k: &str| get(k).filter(|d| unsafe { !(**d).arg.is_null() });
        // SAFETY: a valid DefElem; defGetString() returns a NUL-terminated
        // string (or raises core's ERROR), copied at once.
        let string =
            |d: *mut pg_sys::DefElem| unsafe { CStr::from_ptr(pg_sys::defGetString(d)) }.to_owned();

        let mut o = CreatedbOptions {
            encoding: -1,
            allow_connections: true,
            connection_limit: pg_sys::DATCONNLIMIT_UNLIMITED,
            oid,
            ..Default::default()
        };
        o.owner = with_arg("owner").map(string);
        o.template = with_arg("template").map(string);
        if let Some(d) = with_arg("encoding") {
            // SAFETY: `pstate` is valid (the caller's promise), `d` a valid
            // DefElem of the statement.
            o.encoding = unsafe { parse_encoding(pstate, d) };
        }
        if let Some(d) = with_arg("locale") {
            o.collate = Some(string(d));
            o.ctype = Some(string(d));
            o.locale = Some(string(d));
        }
        o.builtin_locale = with_arg("builtin_locale").map(string);
        o.builtin_locale_given = get("builtin_locale").is_some();
        if let Some(d) = with_arg("lc_collate") {
            o.collate = Some(string(d));
        }
        if let Some(d) = with_arg("lc_ctype") {
            o.ctype = Some(string(d));
        }
        o.icu_locale = with_arg("icu_locale").map(string);
        o.icu_locale_given = get("icu_locale").is_some();
        o.icu_rules = with_arg("icu_rules").map(string);
        if let Some(d) = with_arg("locale_provider") {
            let p = string(d);
            o.locale_provider = match p.to_string_lossy().to_lowercase().as_str() {
                #[cfg(not(any(feature = "pg15", feature = "pg16")))]
                "builtin" => pg_sys::COLLPROVIDER_BUILTIN as i8,
                "icu" => pg_sys::COLLPROVIDER_ICU as i8,
                "libc" => pg_sys::COLLPROVIDER_LIBC as i8,
                _ => error(
                    PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
                    format!("unrecognized locale provider: {}", p.to_string_lossy()),
                ),
            };
        }
        if let Some(d) = with_arg("is_template") {
            // SAFETY: a valid DefElem; raises core's ERROR if no boolean.
            o.is_template = unsafe { pg_sys::defGetBoolean(d) };
        }
        if let Some(d) = with_arg("allow_connections") {
            // SAFETY: as above.
            o.allow_connections = unsafe { pg_sys::defGetBoolean(d) };
        }
        if let Some(d) = with_arg("connection_limit") {
            // SAFETY: a valid DefElem; raises core's ERROR if no integer.
            o.connection_limit = unsafe { pg_sys::defGetInt32(d) };
            if o.connection_limit < pg_sys::DATCONNLIMIT_UNLIMITED {
                error(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("invalid connection limit: {}", o.connection_limit),
                );
            }
        }
        // Core reads COLLATION_VERSION even when given as DEFAULT (and then
        // fails in defGetString, as here).
        o.collation_version = get("collation_version").map(string);
        o.tablespace = with_arg("tablespace").map(string);
        o.strategy = with_arg("strategy").map(|d| string(d).to_string_lossy().into_owned());
        o
    }
}

/// The options core checks for repetition, in its order (ICU_RULES came
/// in 16, BUILTIN_LOCALE in 17).
const OPTIONS: &[&str] = &[
    "tablespace",
    "owner",
    "template",
    "encoding",
    "locale",
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    "builtin_locale",
    "lc_collate",
    "lc_ctype",
    "icu_locale",
    #[cfg(not(feature = "pg15"))]
    "icu_rules",
    "locale_provider",
    "is_template",
    "allow_connections",
    "connection_limit",
    "collation_version",
    "strategy",
];

/// ENCODING = 'name' or ENCODING = number, checked as core checks it.
///
/// # Safety
/// `pstate` and `defel` must be valid.
unsafe fn parse_encoding(pstate: *mut pg_sys::ParseState, defel: *mut pg_sys::DefElem) -> i32 {
    // SAFETY: `defel` is a valid DefElem with an argument (the caller's
    // promise), so `arg` points to a Node.
    if unsafe { pgrx::is_a((*defel).arg, pg_sys::NodeTag::T_Integer) } {
        // SAFETY: a valid DefElem whose argument is an Integer.
        let code = unsafe { pg_sys::defGetInt32(defel) };
        let name = compat::encoding_name(code);
        if name.to_bytes().is_empty() || compat::server_encoding(name) < 0 {
            let report = Report::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("{code} is not a valid encoding code"),
            );
            // SAFETY: `pstate` is valid and outlives the report, raised at
            // once; `defel` is valid.
            unsafe { report.position(pstate, (*defel).location) }.error();
        }
        code
    } else {
        // SAFETY: a valid DefElem; defGetString() returns a NUL-terminated
        // string in the statement's memory context (or raises core's
        // ERROR), which outlives this function.
        let name = unsafe { CStr::from_ptr(pg_sys::defGetString(defel)) };
        let code = compat::server_encoding(name);
        if code < 0 {
            let report = Report::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("{} is not a valid encoding name", name.to_string_lossy()),
            );
            // SAFETY: as above.
            unsafe { report.position(pstate, (*defel).location) }.error();
        }
        code
    }
}
