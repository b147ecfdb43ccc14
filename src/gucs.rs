//! Every `pg_branch.*` setting.

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
    // SAFETY: called once from _PG_init, in the postmaster, with a static
    // NUL-terminated prefix.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"pg_branch".as_ptr()) };
}
