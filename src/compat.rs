//! What differs between the PostgreSQL major versions pg_branch builds
//! for (15 to 18), each difference behind one small function. Everything
//! else calls these and stays version-free.
//!
//! Every function here is safe to call from backend code inside a
//! transaction, the precondition of all of pg_branch's backend functions
//! (lib.rs); none takes a pointer.

use pgrx::pg_sys::{self, Oid};
use pgrx::PgSqlErrorCode;
use std::ffi::{c_int, CStr};

/// Core's check that the current user may make `role` the owner of
/// something ("must be able to SET ROLE" in 16+, "must be member" in 15).
pub fn check_can_set_role(member: Oid, role: Oid) {
    // SAFETY: plain OID arguments; a catalog lookup that raises ERROR
    // (an unwind, through pgrx's guard) or returns.
    unsafe {
        #[cfg(feature = "pg15")]
        pg_sys::check_is_member_of_role(member, role);
        #[cfg(not(feature = "pg15"))]
        pg_sys::check_can_set_role(member, role);
    }
}

/// Whether `user` owns database `db` (or is superuser).
pub fn database_ownercheck(db: Oid, user: Oid) -> bool {
    // SAFETY: plain OID arguments; a syscache lookup that raises ERROR
    // (an unwind) or returns.
    #[cfg(feature = "pg15")]
    return unsafe { pg_sys::pg_database_ownercheck(db, user) };
    // SAFETY: as above.
    #[cfg(not(feature = "pg15"))]
    return unsafe { pg_sys::object_ownercheck(pg_sys::DatabaseRelationId, db, user) };
}

/// ACL check of `mode` on tablespace `ts` for `user`.
pub fn tablespace_aclcheck(ts: Oid, user: Oid, mode: pg_sys::AclMode) -> pg_sys::AclResult::Type {
    // SAFETY: plain OID and mode arguments; a syscache lookup that raises
    // ERROR (an unwind) or returns.
    #[cfg(feature = "pg15")]
    return unsafe { pg_sys::pg_tablespace_aclcheck(ts, user, mode) };
    // SAFETY: as above.
    #[cfg(not(feature = "pg15"))]
    return unsafe { pg_sys::object_aclcheck(pg_sys::TableSpaceRelationId, ts, user, mode) };
}

// The encoding functions became macros over `*_private` symbols in 17.
#[cfg(any(feature = "pg15", feature = "pg16"))]
use pg_sys::{
    pg_encoding_to_char as encoding_to_char, pg_valid_server_encoding as valid_server_encoding,
    pg_valid_server_encoding_id as valid_server_encoding_id,
};
#[cfg(not(any(feature = "pg15", feature = "pg16")))]
use pg_sys::{
    pg_encoding_to_char_private as encoding_to_char,
    pg_valid_server_encoding_id_private as valid_server_encoding_id,
    pg_valid_server_encoding_private as valid_server_encoding,
};

/// The name of encoding `e` ("" if there is none).
pub fn encoding_name(e: c_int) -> &'static CStr {
    // SAFETY: for any number, the result points to a static NUL-terminated
    // string (the encoding table's name, or "").
    unsafe { CStr::from_ptr(encoding_to_char(e)) }
}

/// Whether `e` is a valid server encoding.
pub fn is_server_encoding(e: c_int) -> bool {
    // SAFETY: a range check of a plain int against the encoding table.
    unsafe { valid_server_encoding_id(e) != 0 }
}

/// The server encoding named `name`, or a negative number.
pub fn server_encoding(name: &CStr) -> c_int {
    // SAFETY: `name` is NUL-terminated and outlives the call, which only
    // reads it.
    unsafe { valid_server_encoding(name.as_ptr()) }
}

/// A relation file of another database (`db` in tablespace `ts`), as the
/// buffer manager names it.
#[cfg(feature = "pg15")]
pub type FileLocator = pg_sys::RelFileNode;
#[cfg(not(feature = "pg15"))]
pub type FileLocator = pg_sys::RelFileLocator;

pub fn file_locator(ts: Oid, db: Oid, file: Oid) -> FileLocator {
    #[cfg(feature = "pg15")]
    return pg_sys::RelFileNode {
        spcNode: ts,
        dbNode: db,
        relNode: file,
    };
    #[cfg(not(feature = "pg15"))]
    return pg_sys::RelFileLocator {
        spcOid: ts,
        dbOid: db,
        relNumber: file,
    };
}

/// `smgropen()` of a permanent (not backend-local) relation file.
pub fn smgropen_shared(locator: FileLocator) -> pg_sys::SMgrRelation {
    // SAFETY: the locator is passed by value; smgropen() only looks up or
    // creates this backend's SMgrRelation entry for it (no file is opened
    // yet), and using the pointer it returns is the caller's business.
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    return unsafe { pg_sys::smgropen(locator, pg_sys::InvalidBackendId) };
    // SAFETY: as above.
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    return unsafe { pg_sys::smgropen(locator, pg_sys::INVALID_PROC_NUMBER) };
}

/// `pg_database` attribute numbers that moved between versions.
pub mod anum {
    use pgrx::pg_sys;
    /// The ICU locale (15, 16) or the provider's locale (17+: datlocale).
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    pub const LOCALE: u32 = pg_sys::Anum_pg_database_daticulocale;
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    pub const LOCALE: u32 = pg_sys::Anum_pg_database_datlocale;
    /// ICU tailoring rules (16+).
    #[cfg(not(feature = "pg15"))]
    pub const ICU_RULES: u32 = pg_sys::Anum_pg_database_daticurules;
    /// Whether login event triggers exist (17+).
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    pub const HAS_LOGIN_EVENT: u32 = pg_sys::Anum_pg_database_dathasloginevt;
}

/// Change database `db`'s `pg_database` row in place (not
/// transactionally), as vacuum's `vac_update_datfrozenxid()` does.
/// PostgreSQL 16.2 (the PyPI build) predates `systable_inplace_update_*`
/// and has only `heap_inplace_update()`.
pub fn inplace_update_database(db: Oid, f: impl FnOnce(&mut pg_sys::FormData_pg_database)) {
    // SAFETY: a catalog scan by the OID index of pg_database, opened with
    // RowExclusiveLock and closed here; the tuple handed to `f` is a copy
    // that the in-place update writes back over the row it was read from.
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::RowExclusiveLock as _);
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            pg_sys::Anum_pg_database_oid as _,
            pg_sys::BTEqualStrategyNumber as _,
            pg_sys::F_OIDEQ.into(),
            pg_sys::Datum::from(db),
        );
        #[cfg(not(feature = "pg16"))]
        {
            let mut tuple: pg_sys::HeapTuple = std::ptr::null_mut();
            let mut state: *mut std::ffi::c_void = std::ptr::null_mut();
            pg_sys::systable_inplace_update_begin(
                rel,
                Oid::from(pg_sys::DatabaseOidIndexId),
                true,
                std::ptr::null_mut(),
                1,
                &key,
                &mut tuple,
                &mut state,
            );
            if tuple.is_null() {
                crate::error::error(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("cache lookup failed for database {}", db.to_u32()),
                );
            }
            f(&mut *pg_sys::heap_tuple_get_struct::<
                pg_sys::FormData_pg_database,
            >(tuple));
            pg_sys::systable_inplace_update_finish(state, tuple);
        }
        #[cfg(feature = "pg16")]
        {
            let scan = pg_sys::systable_beginscan(
                rel,
                Oid::from(pg_sys::DatabaseOidIndexId),
                true,
                std::ptr::null_mut(),
                1,
                &mut key,
            );
            let found = pg_sys::systable_getnext(scan);
            if found.is_null() {
                crate::error::error(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("cache lookup failed for database {}", db.to_u32()),
                );
            }
            let tuple = pg_sys::heap_copytuple(found);
            f(&mut *pg_sys::heap_tuple_get_struct::<
                pg_sys::FormData_pg_database,
            >(tuple));
            pg_sys::heap_inplace_update(rel, tuple);
            pg_sys::systable_endscan(scan);
        }
        pg_sys::table_close(rel, pg_sys::RowExclusiveLock as _);
    }
}
