//! Server functions that pgrx's bindings lack, each behind a small safe
//! function. The server exports them; `#[pg_guard]` turns an ERROR raised
//! inside them into a Rust unwind, so no longjmp ever crosses Rust frames.

use pgrx::pg_sys;
use std::ffi::{c_char, c_int, CStr, CString};

// `#[pg_guard]` on an extern block expands to `crate::ffi::pg_guard_ffi_boundary`.
pub use pgrx::pg_sys::ffi::pg_guard_ffi_boundary;

#[allow(non_snake_case)]
mod raw {
    use super::*;

    #[pgrx::pg_guard]
    unsafe extern "C-unwind" {
        // postmaster/bgwriter.h
        pub fn RequestCheckpoint(flags: c_int);
        // storage/md.h
        pub fn ForgetDatabaseSyncRequests(dbid: pg_sys::Oid);
        // utils/pg_locale.h
        pub fn check_locale(
            category: c_int,
            locale: *const c_char,
            canonname: *mut *mut c_char,
        ) -> bool;
        #[cfg(feature = "pg15")]
        pub fn check_icu_locale(icu_locale: *const c_char);
        #[cfg(not(feature = "pg15"))]
        pub fn icu_validate_locale(loc_str: *const c_char);
        #[cfg(not(feature = "pg15"))]
        pub fn icu_language_tag(loc_str: *const c_char, elevel: c_int) -> *mut c_char;
        #[cfg(not(any(feature = "pg15", feature = "pg16")))]
        pub fn builtin_validate_locale(encoding: c_int, locale: *const c_char) -> *const c_char;
        pub fn get_collation_actual_version(
            collprovider: c_char,
            collcollate: *const c_char,
        ) -> *mut c_char;
        // catalog/storage.h
        pub fn log_smgrcreate(
            rlocator: *const crate::compat::FileLocator,
            forkNum: pg_sys::ForkNumber::Type,
        );
        // storage/copydir.h
        pub fn copydir(fromdir: *mut c_char, todir: *mut c_char, recurse: bool);
        // utils/relmapper.h (renamed in 16: file nodes became file numbers)
        #[cfg(feature = "pg15")]
        pub fn RelationMapOidToFilenodeForDatabase(
            dbpath: *mut c_char,
            relationId: pg_sys::Oid,
        ) -> pg_sys::Oid;
        #[cfg(not(feature = "pg15"))]
        pub fn RelationMapOidToFilenumberForDatabase(
            dbpath: *mut c_char,
            relationId: pg_sys::Oid,
        ) -> pg_sys::Oid;
    }
}

/// access/xlog.h checkpoint request flags (PostgreSQL 15).
pub const CHECKPOINT_IMMEDIATE: c_int = 0x0004;
pub const CHECKPOINT_FORCE: c_int = 0x0008;
pub const CHECKPOINT_WAIT: c_int = 0x0020;
pub const CHECKPOINT_FLUSH_ALL: c_int = 0x0010;

/// `log_smgrcreate()`: an XLOG_SMGR_CREATE record, whose replay creates
/// the fork's file.
pub fn log_smgrcreate(locator: &crate::compat::FileLocator, fork: pg_sys::ForkNumber::Type) {
    // SAFETY: `locator` is a valid reference for the call; the function
    // only copies it into the record.
    unsafe { raw::log_smgrcreate(locator, fork) }
}

/// Ask the checkpointer for a checkpoint with `flags`.
pub fn request_checkpoint(flags: c_int) {
    // SAFETY: plain int argument; errors become Rust unwinds (pg_guard).
    unsafe { raw::RequestCheckpoint(flags) }
}

/// `check_locale()`: Some(canonical spelling) if `locale` is valid for
/// `category` (libc's LC_COLLATE / LC_CTYPE).
pub fn check_locale(category: c_int, locale: &CStr) -> Option<CString> {
    let mut canon: *mut c_char = std::ptr::null_mut();
    // SAFETY: `locale` is NUL-terminated; `canon` receives a palloc'd
    // string (or stays NULL) that we copy before returning.
    let ok = unsafe { raw::check_locale(category, locale.as_ptr(), &mut canon) };
    if !ok {
        return None;
    }
    if canon.is_null() {
        return Some(locale.to_owned());
    }
    // SAFETY: non-NULL result of check_locale is a valid C string.
    Some(unsafe { CStr::from_ptr(canon) }.to_owned())
}

/// `check_icu_locale()`: raises core's ERROR if the ICU locale is invalid.
#[cfg(feature = "pg15")]
pub fn check_icu_locale(locale: &CStr) {
    // SAFETY: NUL-terminated argument; errors unwind.
    unsafe { raw::check_icu_locale(locale.as_ptr()) }
}

/// `icu_validate_locale()` (16+): raises core's ERROR or WARNING (per
/// `icu_validation_level`) if the ICU locale is not known.
#[cfg(not(feature = "pg15"))]
pub fn icu_validate_locale(locale: &CStr) {
    // SAFETY: NUL-terminated argument; errors unwind.
    unsafe { raw::icu_validate_locale(locale.as_ptr()) }
}

/// `icu_language_tag(locale, icu_validation_level)` (16+): the BCP 47
/// spelling of an ICU locale, if ICU can compute one.
#[cfg(not(feature = "pg15"))]
pub fn icu_language_tag(locale: &CStr) -> Option<CString> {
    extern "C" {
        static icu_validation_level: c_int;
    }
    // SAFETY: NUL-terminated argument; reads an int GUC; the result is NULL
    // or a palloc'd string that we copy.
    unsafe {
        let tag = raw::icu_language_tag(locale.as_ptr(), icu_validation_level);
        (!tag.is_null()).then(|| CStr::from_ptr(tag).to_owned())
    }
}

/// `builtin_validate_locale()` (17+): the canonical name of a builtin
/// provider locale, or core's ERROR.
#[cfg(not(any(feature = "pg15", feature = "pg16")))]
pub fn builtin_validate_locale(encoding: c_int, locale: &CStr) -> CString {
    // SAFETY: NUL-terminated argument; the result is a static or palloc'd
    // string that we copy.
    unsafe { CStr::from_ptr(raw::builtin_validate_locale(encoding, locale.as_ptr())).to_owned() }
}

/// `get_collation_actual_version()`: the provider's version string, if any.
pub fn collation_actual_version(provider: c_char, locale: &CStr) -> Option<CString> {
    // SAFETY: NUL-terminated argument; the result is NULL or a palloc'd
    // C string that we copy.
    unsafe {
        let v = raw::get_collation_actual_version(provider, locale.as_ptr());
        (!v.is_null()).then(|| CStr::from_ptr(v).to_owned())
    }
}

/// The relfilenode of mapped relation `rel` in the database directory
/// `dbpath` (read from its `pg_filenode.map`).
///
/// # Safety
/// `dbpath` must be a NUL-terminated path of an existing database directory.
pub unsafe fn relation_map_filenode(dbpath: *mut c_char, rel: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: `dbpath` is as the caller promises; the function reads the
    // map file and raises ERROR if it cannot.
    #[cfg(feature = "pg15")]
    return unsafe { raw::RelationMapOidToFilenodeForDatabase(dbpath, rel) };
    // SAFETY: as above.
    #[cfg(not(feature = "pg15"))]
    return unsafe { raw::RelationMapOidToFilenumberForDatabase(dbpath, rel) };
}

/// Core's `copydir(src, dst, false)`: a plain copy of a database
/// directory, as FILE_COPY makes and replays it.
pub fn copydir(src: &std::path::Path, dst: &std::path::Path) {
    let c = |p: &std::path::Path| {
        CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL")
    };
    let (s, d) = (c(src), c(dst));
    // SAFETY: NUL-terminated paths that outlive the call; copydir raises
    // ERROR on failure, which unwinds (pg_guard).
    unsafe { raw::copydir(s.as_ptr() as *mut c_char, d.as_ptr() as *mut c_char, false) }
}

mod recovery {
    // access/xlogrecovery.c: set in the startup process for the whole of
    // archive recovery (PITR, standby), false in crash recovery. Exported
    // by the server, though no header declares it.
    unsafe extern "C" {
        pub static InArchiveRecovery: bool;
    }
}

/// Core's refusals for a command that changes the cluster and cannot be
/// rolled back, as `standard_ProcessUtility` makes them for ALTER DATABASE
/// ... SET TABLESPACE: not in a read-only transaction, not during recovery
/// (a standby; its transactions are read-only, so it hears the first), not
/// inside a transaction block or subtransaction. `what` names the command
/// in the message (`cannot execute <what> in a read-only transaction`).
pub fn prevent_unless_writable_top_level(what: &str) {
    let what = CString::new(what).expect("no NUL");
    // SAFETY: each raises ERROR (longjmp, caught by pgrx's guard) or
    // returns; `what` outlives the calls.
    unsafe {
        pg_sys::PreventCommandIfReadOnly(what.as_ptr());
        pg_sys::PreventCommandDuringRecovery(what.as_ptr());
        pg_sys::PreventInTransactionBlock(true, what.as_ptr());
    }
}

/// Core's refusals for a command that writes the catalogs, as for a
/// transactional one (COMMENT, SECURITY LABEL): not in a read-only
/// transaction, and so not on a standby.
pub fn prevent_if_read_only(what: &str) {
    let what = CString::new(what).expect("no NUL");
    // SAFETY: raises ERROR (longjmp, caught by pgrx's guard) or returns;
    // `what` outlives the call.
    unsafe { pg_sys::PreventCommandIfReadOnly(what.as_ptr()) };
}

/// The current value of setting `name`, as SHOW prints it ("" if unknown).
pub fn setting(name: &str) -> String {
    let name = CString::new(name).expect("no NUL");
    // SAFETY: returns NULL or a pointer into the GUC's storage, copied at
    // once; missing_ok, so an unknown name is no error.
    unsafe { cstring(pg_sys::GetConfigOption(name.as_ptr(), true, false)) }
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether recovery has reached a consistent state: every page is at least
/// as new as the minimum recovery point (false in crash recovery until the
/// end of WAL, and in archive recovery until the backup's end).
pub fn reached_consistency() -> bool {
    // SAFETY: a plain bool the startup process maintains.
    unsafe { pg_sys::reachedConsistency }
}

/// `allow_in_place_tablespaces` (a developer setting that lets a tablespace
/// be a directory inside pg_tblspc).
pub fn allow_in_place_tablespaces() -> bool {
    // SAFETY: a GUC variable, read in the process that owns it.
    unsafe { pg_sys::allow_in_place_tablespaces }
}

/// Whether this process is replaying WAL in archive recovery (a standby or
/// point-in-time recovery) rather than crash recovery.
pub fn in_archive_recovery() -> bool {
    // SAFETY: a plain bool the startup process sets before replay starts.
    unsafe { recovery::InArchiveRecovery }
}

/// Copy a possibly-NULL C string owned by the server.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
pub unsafe fn cstring(p: *const c_char) -> Option<CString> {
    // SAFETY: a non-NULL `p` is NUL-terminated (the caller's promise).
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_owned())
}

/// `GetDatabasePath(db, tablespace)` relative to the data directory, as
/// the server names it (`base/<db>` or `pg_tblspc/<ts>/PG_…/<db>`).
pub fn database_path(db: pg_sys::Oid, tablespace: pg_sys::Oid) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: GetDatabasePath returns a palloc'd path we copy at once.
    let p = unsafe { CStr::from_ptr(pg_sys::GetDatabasePath(db, tablespace)) };
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(p.to_bytes()))
}

/// Make every process, this one included, close the file descriptors it
/// holds for relation files, as movedb() and DROP DATABASE's redo do. A
/// descriptor opened before the swap names the old, now deleted, file:
/// a write through it would be lost.
pub fn release_file_handles() {
    // SAFETY: the server's own barrier protocol; waiting absorbs our own.
    unsafe {
        pg_sys::WaitForProcSignalBarrier(pg_sys::EmitProcSignalBarrier(
            pg_sys::ProcSignalBarrierType::PROCSIGNAL_BARRIER_SMGRRELEASE,
        ));
    }
}

/// Core's `ForgetDatabaseSyncRequests()`: ask the checkpointer to cancel
/// every pending fsync and unlink of database `db`'s files. The request is
/// queued; a checkpoint requested afterwards has absorbed it.
pub fn forget_database_sync_requests(db: pg_sys::Oid) {
    // SAFETY: queues a request to the checkpointer; a plain OID argument.
    unsafe { raw::ForgetDatabaseSyncRequests(db) }
}

/// Hold interrupts off (core's HOLD_INTERRUPTS) from now until this
/// transaction commits: a cancel or terminate request that comes in the
/// meantime is served after the commit, so it cannot abort the
/// transaction once it has done something that a rollback would not undo.
/// Postmaster death still ends waits (WL_EXIT_ON_PM_DEATH).
///
/// The hold ends in the commit callback, which CommitTransaction() calls
/// after its own HOLD_INTERRUPTS, once the commit record is flushed. An
/// ERROR (raised by the code itself, not by an interrupt) still aborts the
/// transaction: errfinish() then resets the counter, and pgrx drops the
/// callback with the transaction.
pub fn hold_interrupts_until_commit() {
    // SAFETY: this backend's holdoff counter, given back at commit (above).
    unsafe { pg_sys::InterruptHoldoffCount += 1 };
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
        // SAFETY: gives back the count taken above, still held: nothing
        // between the two resets the counter without aborting.
        unsafe { pg_sys::InterruptHoldoffCount -= 1 };
    });
}
