//! Every `pg_branch.*` setting.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `pg_branch.enabled` (default on): whether `CREATE DATABASE` without an
/// explicit STRATEGY makes a copy-on-write branch. Off, every statement
/// goes to PostgreSQL unchanged, as if the library were not loaded; that is
/// the escape hatch if a branch ever misbehaves, so any user may set it for
/// their own session (it grants nothing: core's copy is always allowed).
pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);

pub fn init() {
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
