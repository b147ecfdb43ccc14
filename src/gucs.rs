//! Every `pg_branch.*` setting.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

/// `pg_branch.enabled` (default on): whether `CREATE DATABASE` without an
/// explicit STRATEGY makes a copy-on-write branch. Off, every statement
/// goes to PostgreSQL unchanged, as if the library were not loaded; that is
/// the escape hatch if a branch ever misbehaves, so any user may set it for
/// their own session (it grants nothing: core's copy is always allowed).
pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `pg_branch.wal_record` (default `pg_branch`): which WAL record describes
/// a branch. `pg_branch`: our resource manager, whose redo re-clones with
/// the replaying host's best method, and a branch waits only until a
/// checkpoint has *started* after it. `core`: core's FILE_COPY record, which
/// standbys without pg_branch replay as a plain copy; a branch then waits
/// for a whole immediate checkpoint, as core's FILE_COPY does (see wal.rs
/// for why). Superuser-only, as it decides what standbys must run.
pub static WAL_RECORD: GucSetting<WalRecord> = GucSetting::<WalRecord>::new(WalRecord::PgBranch);

/// `pg_branch.default_expiry` (default 0: never): how long after its
/// creation a new branch expires (registry.rs; the expiry worker drops it).
/// Any user may set it: a branch's expiry is its owner's to set anyway.
pub static DEFAULT_EXPIRY: GucSetting<i32> = GucSetting::<i32>::new(0);

/// `pg_branch.expiry_interval` (default 0: off): how often, in seconds,
/// the expiry worker (expiry.rs) looks for expired branches to drop.
pub static EXPIRY_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(0);

/// `pg_branch.expiry_database` (default `postgres`): the database each
/// look of the expiry worker connects to, for as long as it takes.
pub static EXPIRY_DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// `pg_branch.expire_parents` (default off): whether the expiry worker
/// drops an expired branch that has branches of its own.
pub static EXPIRE_PARENTS: GucSetting<bool> = GucSetting::<bool>::new(false);

/// The default expiry of a new branch, in seconds, if there is one.
pub fn default_expiry() -> Option<i64> {
    match DEFAULT_EXPIRY.get() {
        0 => None,
        s => Some(s as i64),
    }
}

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum WalRecord {
    #[name = c"pg_branch"]
    PgBranch,
    #[name = c"core"]
    Core,
}

pub fn init() {
    GucRegistry::define_enum_guc(
        c"pg_branch.wal_record",
        c"WAL record that describes a branch: pg_branch (standbys must preload pg_branch) or core.",
        c"core writes PostgreSQL's FILE_COPY record, replayed as a plain copy by any standby, and waits for a full checkpoint per branch.",
        &WAL_RECORD,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_branch.enabled",
        c"Make CREATE DATABASE ... TEMPLATE a copy-on-write branch.",
        c"When off, CREATE DATABASE behaves exactly as in core PostgreSQL.",
        &ENABLED,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_branch.default_expiry",
        c"How long after its creation a new branch expires (0: never).",
        c"pgbranch.set_expiry() and clear_expiry() change it for one branch.",
        &DEFAULT_EXPIRY,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_branch.expiry_interval",
        c"How often the expiry worker drops expired branches (0: never).",
        c"The worker runs on a primary only; it waits while this is 0.",
        &EXPIRY_INTERVAL,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"pg_branch.expiry_database",
        c"Database that each look of the expiry worker connects to.",
        c"Connected only while it drops expired branches.",
        &EXPIRY_DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_branch.expire_parents",
        c"Let the expiry worker drop an expired branch that has branches of its own.",
        c"Off, such a branch is kept (and logged once); its branches would survive it.",
        &EXPIRE_PARENTS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: called once from _PG_init, in the postmaster, with a static
    // NUL-terminated prefix.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"pg_branch".as_ptr()) };
}
