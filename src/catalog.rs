//! `pg_database` and `pg_tablespace`: reading the template's row, choosing
//! the new database's OID, and writing its row. This is the only module
//! that knows the columns of `pg_database` (they change between major
//! versions; see the cfg-gated lines).

use crate::compat;
use crate::ffi;
use pgrx::pg_sys;
use pgrx::pg_sys::Oid;
use std::ffi::{CStr, CString};
use std::path::PathBuf;

/// The template's `pg_database` row, as `get_db_info()` returns it.
#[derive(Debug, Clone)]
pub struct DatabaseRow {
    pub oid: Oid,
    pub encoding: i32,
    pub is_template: bool,
    pub frozen_xid: pg_sys::TransactionId,
    pub min_mxid: pg_sys::MultiXactId,
    pub tablespace: Oid,
    pub collate: CString,
    pub ctype: CString,
    /// The provider's locale (`daticulocale` in 15 and 16, `datlocale` in 17+).
    pub locale: Option<CString>,
    pub locale_provider: i8,
    pub collation_version: Option<CString>,
    /// `daticurules` (16+).
    pub icu_rules: Option<CString>,
    /// `dathasloginevt` (17+): copied, as core copies it.
    #[cfg_attr(any(feature = "pg15", feature = "pg16"), allow(dead_code))]
    pub has_login_event: bool,
}

/// Look up database `name` and take `lockmode` on it (NoLock: just look).
///
/// As core's `get_db_info()`: look up by name, lock the OID, then re-read
/// the row by OID; if the database was renamed or dropped in between,
/// unlock and try again, so the row returned is the locked database's.
pub fn lock_database(name: &CStr, lockmode: pg_sys::LOCKMODE) -> Option<DatabaseRow> {
    // SAFETY: catalog access inside a transaction, as core does it; every
    // scan and syscache entry is closed/released before returning, and
    // errors unwind through pgrx's guards.
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as _);
        let mut found = None;
        loop {
            let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
            pg_sys::ScanKeyInit(
                &mut key,
                pg_sys::Anum_pg_database_datname as _,
                pg_sys::BTEqualStrategyNumber as _,
                pg_sys::F_NAMEEQ.into(),
                pg_sys::Datum::from(name.as_ptr()),
            );
            let scan = pg_sys::systable_beginscan(
                rel,
                Oid::from(pg_sys::DatabaseNameIndexId),
                true,
                std::ptr::null_mut(),
                1,
                &mut key,
            );
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                pg_sys::systable_endscan(scan);
                break;
            }
            let oid = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple)).oid;
            pg_sys::systable_endscan(scan);

            if lockmode != pg_sys::NoLock as pg_sys::LOCKMODE {
                pg_sys::LockSharedObject(pg_sys::DatabaseRelationId, oid, 0, lockmode);
            }
            if let Some(row) = database_row(oid).filter(|r| r.0.as_c_str() == name) {
                found = Some(row.1);
                break;
            }
            // Renamed or dropped before we could lock it: try again.
            if lockmode != pg_sys::NoLock as pg_sys::LOCKMODE {
                pg_sys::UnlockSharedObject(pg_sys::DatabaseRelationId, oid, 0, lockmode);
            }
        }
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
        found
    }
}

/// (name, row) of database `oid` from the syscache, or `None` if there is
/// no such database.
pub fn database_row(oid: Oid) -> Option<(CString, DatabaseRow)> {
    let cache = pg_sys::SysCacheIdentifier::DATABASEOID as i32;
    // SAFETY: a syscache lookup by OID; the entry is released below.
    let tuple = unsafe { pg_sys::SearchSysCache1(cache, pg_sys::Datum::from(oid)) };
    if tuple.is_null() {
        return None;
    }
    // SAFETY: a non-NULL pg_database tuple from the syscache, pinned until
    // it is released at the end (after the last use of `form`).
    let form = unsafe { &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple) };
    let text = |attnum: u32| -> Option<CString> {
        let mut isnull = false;
        // SAFETY: `tuple` is the pinned entry of this cache; `attnum` one
        // of its text columns, whose non-NULL value text_to_cstring()
        // turns into a palloc'd NUL-terminated copy, copied at once.
        unsafe {
            let d = pg_sys::SysCacheGetAttr(cache, tuple, attnum as _, &mut isnull);
            (!isnull).then(|| CStr::from_ptr(pg_sys::text_to_cstring(d.cast_mut_ptr())).to_owned())
        }
    };
    let row = DatabaseRow {
        oid,
        encoding: form.encoding,
        is_template: form.datistemplate,
        frozen_xid: form.datfrozenxid,
        min_mxid: form.datminmxid,
        tablespace: form.dattablespace,
        collate: text(pg_sys::Anum_pg_database_datcollate).expect("datcollate is NOT NULL"),
        ctype: text(pg_sys::Anum_pg_database_datctype).expect("datctype is NOT NULL"),
        locale: text(compat::anum::LOCALE),
        locale_provider: form.datlocprovider as i8,
        collation_version: text(pg_sys::Anum_pg_database_datcollversion),
        #[cfg(feature = "pg15")]
        icu_rules: None,
        #[cfg(not(feature = "pg15"))]
        icu_rules: text(compat::anum::ICU_RULES),
        #[cfg(any(feature = "pg15", feature = "pg16"))]
        has_login_event: false,
        #[cfg(not(any(feature = "pg15", feature = "pg16")))]
        has_login_event: form.dathasloginevt,
    };
    // SAFETY: `datname` is a NUL-terminated NameData of the pinned tuple.
    let name = unsafe { CStr::from_ptr(form.datname.data.as_ptr()) }.to_owned();
    // SAFETY: releases the entry found above; `form` is not used after.
    unsafe { pg_sys::ReleaseSysCache(tuple) };
    Some((name, row))
}

/// Take `lockmode` on database `oid` and return its (name, row), read once
/// the lock is held; `None`, holding no lock, if there is no such database
/// (any more). Taking the lock processes invalidations, so the row read
/// after it reflects every DROP and RENAME committed before we hold it, and
/// none that conflicts with `lockmode` can commit while we do. The caller
/// that cares about the name (it may have been renamed since the OID was
/// read) compares it.
pub fn lock_database_oid(oid: Oid, lockmode: pg_sys::LOCKMODE) -> Option<(CString, DatabaseRow)> {
    if oid == pg_sys::InvalidOid {
        return None;
    }
    // SAFETY: locks a shared object by OID, released at commit or by
    // unlock_database(); then drops this transaction's catalog snapshot, so
    // that catalog scans after this one (a registry read) see every change
    // committed before we held the lock.
    unsafe {
        pg_sys::LockSharedObject(pg_sys::DatabaseRelationId, oid, 0, lockmode);
        pg_sys::InvalidateCatalogSnapshot();
    }
    let row = database_row(oid);
    if row.is_none() {
        unlock_database(oid, lockmode);
    }
    row
}

/// Release the lock [`lock_database`] took on database `db`.
pub fn unlock_database(db: Oid, lockmode: pg_sys::LOCKMODE) {
    // SAFETY: releases a lock this backend holds on the database object.
    unsafe { pg_sys::UnlockSharedObject(pg_sys::DatabaseRelationId, db, 0, lockmode) }
}

/// The name of database `db`, if there is one.
pub fn database_name(db: Oid) -> Option<String> {
    // SAFETY: a syscache lookup by OID: NULL if there is no such database,
    // else a palloc'd NUL-terminated name.
    let name = unsafe { pg_sys::get_database_name(db) };
    // SAFETY: non-NULL, so a NUL-terminated string.
    (!name.is_null()).then(|| {
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    })
}

/// One database, as the SQL API and doctor() list them.
pub struct Database {
    pub oid: Oid,
    pub name: String,
    pub tablespace: Oid,
    /// Marked invalid (`datconnlimit` = -2) by an interrupted DROP DATABASE.
    pub invalid: bool,
}

/// Every database, in the order of `ORDER BY datname` (the collation of
/// the current database, as psql lists them). Read through SPI with the
/// statement's snapshot: a listing, not a lock; callers that act on a
/// database lock it and read its row again.
pub fn databases() -> Vec<Database> {
    pgrx::Spi::connect(|c| {
        c.select(
            "SELECT oid, datname::text, dattablespace, datconnlimit = -2
               FROM pg_catalog.pg_database ORDER BY datname",
            None,
            &[],
        )
        .map(|rows| {
            rows.map(|r| Database {
                oid: r.get::<Oid>(1).ok().flatten().unwrap_or(pg_sys::InvalidOid),
                name: r.get::<String>(2).ok().flatten().unwrap_or_default(),
                tablespace: r.get::<Oid>(3).ok().flatten().unwrap_or(pg_sys::InvalidOid),
                invalid: r.get::<bool>(4).ok().flatten().unwrap_or(false),
            })
            .collect()
        })
        .unwrap_or_default()
    })
}

/// OIDs of every tablespace but pg_global, which holds no database
/// directories.
pub fn tablespaces() -> Vec<Oid> {
    let mut out = Vec::new();
    // SAFETY: a catalog heap scan, opened and closed here.
    unsafe {
        let rel = pg_sys::table_open(pg_sys::TableSpaceRelationId, pg_sys::AccessShareLock as _);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let oid = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_tablespace>(tuple)).oid;
            if oid != pg_sys::GLOBALTABLESPACE_OID {
                out.push(oid);
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
    }
    out
}

/// The directory that holds database directories in `tablespace`
/// (`base`, or `pg_tblspc/<oid>/PG_<major>_<catversion>`).
pub fn tablespace_dir(tablespace: Oid) -> PathBuf {
    let p = ffi::database_path(pg_sys::InvalidOid, tablespace);
    p.parent().map(PathBuf::from).unwrap_or(p)
}

/// Whether anything named `db` exists in any tablespace: core's
/// `check_db_file_conflict()`. Cleanup removes `<tablespace>/<db>`
/// directories, so an OID whose name is taken must never be chosen.
pub fn file_conflict(db: Oid) -> bool {
    tablespaces()
        .into_iter()
        .any(|ts| std::fs::symlink_metadata(ffi::database_path(db, ts)).is_ok())
}

/// A new OID for `pg_database`, unused in the catalog and on disk.
///
/// # Safety
/// `rel` must be `pg_database`, open with RowExclusiveLock.
pub unsafe fn new_database_oid(rel: pg_sys::Relation) -> Oid {
    loop {
        // SAFETY: `rel` is pg_database, open (the caller's promise), and
        // the index and column are its OID index and column.
        let oid = unsafe {
            pg_sys::GetNewOidWithIndex(
                rel,
                Oid::from(pg_sys::DatabaseOidIndexId),
                pg_sys::Anum_pg_database_oid as _,
            )
        };
        if !file_conflict(oid) {
            return oid;
        }
    }
}

/// The columns of a new `pg_database` row that do not come from the
/// template unchanged.
pub struct NewDatabase<'a> {
    pub oid: Oid,
    pub name: &'a CStr,
    pub owner: Oid,
    pub encoding: i32,
    pub locale_provider: i8,
    pub is_template: bool,
    pub allow_connections: bool,
    pub connection_limit: i32,
    pub tablespace: Oid,
    pub collate: &'a CStr,
    pub ctype: &'a CStr,
    pub locale: Option<&'a CStr>,
    #[cfg_attr(feature = "pg15", allow(dead_code))]
    pub icu_rules: Option<&'a CStr>,
    pub collation_version: Option<&'a CStr>,
}

/// Insert the row for `db` into `pg_database` (open as `rel`), copying
/// `datfrozenxid` and `datminmxid` from the template as core does: its
/// files are a copy of the template's, so they hold no XID older than the
/// template's horizon. The values were read before the files were
/// cloned, so they can only be older than the files: the safe side.
///
/// # Safety
/// `rel` must be `pg_database`, open with RowExclusiveLock.
pub unsafe fn insert_database_row(rel: pg_sys::Relation, db: &NewDatabase, template: &DatabaseRow) {
    const N: usize = pg_sys::Natts_pg_database as usize;
    let mut values = [pg_sys::Datum::from(0usize); N];
    let mut nulls = [false; N];
    // SAFETY: a NUL-terminated string, copied into a palloc'd text.
    let text = |s: &CStr| pg_sys::Datum::from(unsafe { pg_sys::cstring_to_text(s.as_ptr()) });
    let set = |values: &mut [pg_sys::Datum; N], attnum: u32, d: pg_sys::Datum| {
        values[attnum as usize - 1] = d
    };

    // SAFETY: a zeroed NameData-sized allocation, into which namestrcpy()
    // copies at most NAMEDATALEN - 1 bytes of a NUL-terminated name.
    let name = unsafe {
        let name = pg_sys::palloc0(pg_sys::NAMEDATALEN as usize) as *mut pg_sys::NameData;
        pg_sys::namestrcpy(name, db.name.as_ptr());
        name
    };

    set(&mut values, pg_sys::Anum_pg_database_oid, db.oid.into());
    set(
        &mut values,
        pg_sys::Anum_pg_database_datname,
        pg_sys::Datum::from(name),
    );
    set(
        &mut values,
        pg_sys::Anum_pg_database_datdba,
        db.owner.into(),
    );
    set(
        &mut values,
        pg_sys::Anum_pg_database_encoding,
        pg_sys::Datum::from(db.encoding),
    );
    set(
        &mut values,
        pg_sys::Anum_pg_database_datlocprovider,
        pg_sys::Datum::from(db.locale_provider),
    );
    set(
        &mut values,
        pg_sys::Anum_pg_database_datistemplate,
        pg_sys::Datum::from(db.is_template),
    );
    set(
        &mut values,
        pg_sys::Anum_pg_database_datallowconn,
        pg_sys::Datum::from(db.allow_connections),
    );
    set(
        &mut values,
        pg_sys::Anum_pg_database_datconnlimit,
        pg_sys::Datum::from(db.connection_limit),
    );
    set(
        &mut values,
        pg_sys::Anum_pg_database_datfrozenxid,
        pg_sys::Datum::from(template.frozen_xid),
    );
    set(
        &mut values,
        pg_sys::Anum_pg_database_datminmxid,
        pg_sys::Datum::from(template.min_mxid),
    );
    set(
        &mut values,
        pg_sys::Anum_pg_database_dattablespace,
        db.tablespace.into(),
    );
    set(
        &mut values,
        pg_sys::Anum_pg_database_datcollate,
        text(db.collate),
    );
    set(
        &mut values,
        pg_sys::Anum_pg_database_datctype,
        text(db.ctype),
    );
    match db.locale {
        Some(l) => set(&mut values, compat::anum::LOCALE, text(l)),
        None => nulls[compat::anum::LOCALE as usize - 1] = true,
    }
    #[cfg(not(feature = "pg15"))]
    match db.icu_rules {
        Some(r) => set(&mut values, compat::anum::ICU_RULES, text(r)),
        None => nulls[compat::anum::ICU_RULES as usize - 1] = true,
    }
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    set(
        &mut values,
        compat::anum::HAS_LOGIN_EVENT,
        pg_sys::Datum::from(template.has_login_event),
    );
    match db.collation_version {
        Some(v) => set(
            &mut values,
            pg_sys::Anum_pg_database_datcollversion,
            text(v),
        ),
        None => nulls[pg_sys::Anum_pg_database_datcollversion as usize - 1] = true,
    }
    // As core, deliberately: datacl starts as the default (NULL) rather
    // than the template's, which would be wrong under a different owner.
    nulls[pg_sys::Anum_pg_database_datacl as usize - 1] = true;

    // SAFETY: `rel` is pg_database, open with RowExclusiveLock (the
    // caller's promise); `values` and `nulls` have one entry per column of
    // its tuple descriptor, and every non-NULL value is of its column's type.
    unsafe {
        let tuple = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::CatalogTupleInsert(rel, tuple);
    }
}

/// Hold back the frozen-ID horizon of database `db` until this transaction
/// ends: take its `DATABASE_FROZEN_IDS` lock in ShareLock, which conflicts
/// with the ExclusiveLock that `vac_update_datfrozenxid()` takes before it
/// advances `datfrozenxid` / `datminmxid` and truncates pg_xact and
/// pg_multixact.
///
/// Why: `vac_truncate_clog()` truncates below the oldest `datfrozenxid` of
/// the rows it can see, and a new database's row is invisible until it
/// commits. Core relies on "the interlock against copying a DB containing
/// an active backend" (vacuum.c) for the template's horizon not to move in
/// that window; a branch's template may be in use, so we lock it instead.
/// With the lock held from before the clone to commit, the template's own
/// row keeps the horizon at or below every XID the clone can hold, and from
/// commit on the branch's row (a copy of the template's, read earlier: the
/// same or older) does. A VACUUM of the template waits at its last step
/// for the branch to commit. A branch that finds a VACUUM in that step
/// waits for it; that step holds no lock a branch takes, so the two cannot
/// deadlock.
pub fn hold_frozen_ids(db: Oid) {
    let tag = pg_sys::LOCKTAG {
        locktag_field1: db.to_u32(),
        locktag_field2: 0,
        locktag_field3: 0,
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_DATABASE_FROZEN_IDS as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    };
    // SAFETY: a transaction-scoped lock on a valid LOCKTAG (core's
    // SET_LOCKTAG_DATABASE_FROZEN_IDS); waiting honours lock_timeout and
    // cancellation, and errors unwind through pgrx's guard.
    unsafe { pg_sys::LockAcquire(&tag, pg_sys::ShareLock as _, false, false) };
}

/// The dependency rows and hooks core creates with a database that do not
/// depend on the template's contents: the owner dependency, and the
/// object-access hook that security modules (sepgsql) rely on.
pub fn record_owner(db: Oid, owner: Oid) {
    // SAFETY: plain catalog calls inside the creating transaction.
    unsafe {
        pg_sys::recordDependencyOnOwner(pg_sys::DatabaseRelationId, db, owner);
        if (*std::ptr::addr_of!(pg_sys::object_access_hook)).is_some() {
            pg_sys::RunObjectPostCreateHook(pg_sys::DatabaseRelationId, db, 0, false);
        }
    }
}

/// Copy the template's shared dependencies (its objects' owners and the
/// roles its ACLs name now also own / are named in the new database), as
/// core's `copyTemplateDependencies()`.
///
/// Must run while the writer fence is up: every change to them (GRANT,
/// ALTER ... OWNER, CREATE, DROP) also writes a catalog of the template,
/// which the fence locks, so they now match the files being cloned. The
/// catalog snapshot is refreshed first, so the scan sees every such change
/// that committed before the fence was complete.
pub fn copy_shared_dependencies(template: Oid, db: Oid) {
    // SAFETY: plain catalog calls inside the creating transaction.
    unsafe {
        pg_sys::InvalidateCatalogSnapshot();
        pg_sys::copyTemplateDependencies(template, db);
    }
}

/// The name of tablespace `ts`, or its OID as text if it was dropped.
pub fn tablespace_name(ts: Oid) -> String {
    // SAFETY: returns a palloc'd name or NULL for a dropped tablespace.
    unsafe { crate::ffi::cstring(pg_sys::get_tablespace_name(ts)) }
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|| ts.to_u32().to_string())
}

/// Lower database `db`'s `datfrozenxid` / `datminmxid` to `xid` / `mxid`
/// where they are newer, in place (not transactionally), as vacuum and
/// dropdb() update pg_database: pgbranch.reset() gives the database files
/// whose horizon is `xid` / `mxid`, and that stays so whatever becomes of
/// its transaction. Lowering is always safe; the next VACUUM of the
/// database advances them again.
pub fn lower_frozen_ids(db: Oid, xid: pg_sys::TransactionId, mxid: pg_sys::MultiXactId) {
    compat::inplace_update_database(db, |form| {
        // SAFETY: plain comparisons of XIDs as core makes them.
        unsafe {
            if pg_sys::TransactionIdPrecedes(xid, form.datfrozenxid) {
                form.datfrozenxid = xid;
            }
            if pg_sys::MultiXactIdPrecedes(mxid, form.datminmxid) {
                form.datminmxid = mxid;
            }
        }
    });
}
