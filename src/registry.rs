//! The branch registry: what pg_branch knows of each branch it made (its
//! parent, when, by whom, how, where in WAL, when it expires).
//!
//! Each record is the branch's *security label* of provider `pg_branch`,
//! a row of the shared catalog `pg_shseclabel` that PostgreSQL keys by the
//! database's OID. That one choice gives every property a registry needs,
//! from core's own machinery rather than ours:
//!
//! - readable from every database (a shared catalog, readable wherever
//!   `pg_database` is; the `pgbranch.branches` view joins the two);
//! - written in the CREATE DATABASE transaction, beside the `pg_database`
//!   row: both commit or neither does, whatever ends the transaction (an
//!   ERROR, a FATAL, `kill -9`: an uncommitted row is invisible);
//! - WAL-logged as any catalog change, so replayed by standbys and by PITR,
//!   copied by `pg_basebackup`, kept across restart and promotion;
//! - deleted by core's `DROP DATABASE` (dropdb() deletes every shared
//!   label of the database), in every form and with or without pg_branch
//!   loaded; a child's record names its parent by OID and name only, so
//!   children outlive their parent.
//!
//! A database core copied has no label (createdb() copies none), and so
//! has no parent, like every database older than pg_branch.
//!
//! Only pg_branch writes these labels: hook.c skips, with a NOTICE, a
//! `SECURITY LABEL FOR pg_branch` statement (which a restored pg_dumpall
//! contains: a logical copy is not a branch).
//!
//! The label is a JSON object (keys below). Unknown keys are kept when a
//! record is rewritten, so an older pg_branch does not drop what a newer
//! one wrote.
//!
//! One exception to "the label is the record": a reset (reset.rs) swaps
//! the branch's directory before its transaction commits, and that swap
//! cannot be rolled back. So the reset's facts (parent, reset count and
//! time, LSN) also travel with the new contents, as an extended attribute
//! of the directory that the swap moves with it and that the reset's redo
//! writes too ([`reset_facts`]). A label older than the facts on its
//! branch's directory (a crash between the swap and the commit) is read
//! with the facts laid over it, and the next write of the record stores
//! them.

use crate::catalog;
use crate::error::{error, Report};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use serde_json::{json, Map, Value};
use std::ffi::{CStr, CString};

/// The provider name of every record.
pub const PROVIDER: &CStr = c"pg_branch";

/// `pg_shseclabel` (SharedSecLabelRelationId of catalog/pg_shseclabel.h,
/// which pgrx does not bind; the same OID in every version).
const SHARED_SECLABEL_RELATION_ID: Oid = Oid::from_u32(3592);

/// What a new branch's record says.
pub struct NewBranch<'a> {
    pub db: Oid,
    pub parent: Oid,
    pub parent_name: &'a CStr,
    pub method: &'a str,
    /// Where the branch's first WAL record begins.
    pub lsn: pg_sys::XLogRecPtr,
    /// How long after its creation it expires (`pg_branch.default_expiry`,
    /// in seconds), if it does.
    pub expires_after: Option<i64>,
}

/// Write the record of a branch being created, in the current transaction.
/// Called once its WAL records exist and before commit (branch.rs).
pub fn record_branch(b: &NewBranch) {
    // SAFETY: reads this backend's current user and transaction start.
    let (user, now) = unsafe {
        (
            pg_sys::GetUserId(),
            pg_sys::GetCurrentTransactionStartTimestamp(),
        )
    };
    let record = json!({
        "format": 1,
        "parent_oid": b.parent.to_u32(),
        "parent_name": b.parent_name.to_string_lossy(),
        "created_at": timestamp_text(now),
        "created_by": role_name(user),
        "method": b.method,
        "lsn": lsn_text(b.lsn),
        "expires_at": b.expires_after.map(|s| timestamp_text(now + s * 1_000_000)),
        "reset_count": 0,
        "reset_at": null,
    });
    write(b.db, &record);
}

/// The record of database `db`, or `None` if it is not a branch.
pub fn read(db: Oid) -> Option<Map<String, Value>> {
    let object = database_object(db);
    // SAFETY: a valid ObjectAddress and provider name; the result is NULL
    // or a palloc'd NUL-terminated string.
    let label = unsafe { pg_sys::GetSecurityLabel(&object, PROVIDER.as_ptr()) };
    if label.is_null() {
        return None;
    }
    // SAFETY: non-NULL, so a NUL-terminated string (above).
    let text = unsafe { CStr::from_ptr(label) }.to_string_lossy();
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Some(with_reset_facts(db, m)),
        _ => Report::new(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "pg_branch's record of database {} is not a JSON object",
                db.to_u32()
            ),
        )
        .detail(format!("The record is: {text}"))
        .error(),
    }
}

/// Stored `label` of database `db` as [`read`] returns it, or `None` if it
/// is not a JSON object.
pub fn as_read(db: Oid, label: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(label) {
        Ok(Value::Object(m)) => Some(with_reset_facts(db, m)),
        _ => None,
    }
}

/// Replace the record of `db` (in the current transaction) with `record`.
pub fn write(db: Oid, record: &Value) {
    let object = database_object(db);
    let text = CString::new(record.to_string()).expect("JSON text has no NUL");
    // SAFETY: a valid ObjectAddress, provider and label. Inserts or updates
    // the row of pg_shseclabel (RowExclusiveLock to commit); the caller holds
    // a lock on the database that keeps DROP DATABASE away.
    unsafe {
        pg_sys::SetSecurityLabel(&object, PROVIDER.as_ptr(), text.as_ptr());
        // Make the new row visible to the rest of the transaction, so that
        // a second write of the same record updates it again.
        pg_sys::CommandCounterIncrement();
    }
}

/// The keys a reset changes, and so the facts it leaves on the contents.
const RESET_KEYS: [&str; 5] = [
    "parent_oid",
    "parent_name",
    "reset_count",
    "reset_at",
    "lsn",
];

/// What a reset of branch `db` from `parent` (named `parent_name`), its
/// `count`-th, at `at`, says of itself: the record's keys that change,
/// less the LSN, which its WAL record gets ([`stamp_reset_facts`]).
pub fn reset_facts(
    db: Oid,
    parent: Oid,
    parent_name: &str,
    count: i64,
    at: pg_sys::TimestampTz,
) -> Map<String, Value> {
    let facts = json!({
        "db": db.to_u32(),
        "parent_oid": parent.to_u32(),
        "parent_name": parent_name,
        "reset_count": count,
        "reset_at": timestamp_text(at),
    });
    match facts {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object"),
    }
}

/// `facts` as the reset's WAL record carries them, with the LSN where that
/// record starts: the text both the primary and redo put on the contents.
/// `None` if `facts` is not the object [`reset_facts`] makes.
pub fn stamp_reset_facts(facts: &str, lsn: pg_sys::XLogRecPtr) -> Option<String> {
    let Ok(Value::Object(mut m)) = serde_json::from_str(facts) else {
        return None;
    };
    m.insert("lsn".into(), Value::from(lsn_text(lsn)));
    Some(Value::Object(m).to_string())
}

/// `record` of branch `db`, with the facts of a newer reset than it knows
/// of laid over it, if the branch's directory carries some (module
/// comment). Facts that a snapshot copied from another branch's directory
/// name that branch, and are ignored.
fn with_reset_facts(db: Oid, mut record: Map<String, Value>) -> Map<String, Value> {
    let Some((_, row)) = catalog::database_row(db) else {
        return record;
    };
    let dir = crate::ffi::database_path(db, row.tablespace);
    let Ok(Some(text)) = pg_branch_storage::reset_facts(&dir) else {
        return record;
    };
    let Ok(Value::Object(facts)) = serde_json::from_str::<Value>(&text) else {
        return record;
    };
    let lsn = |m: &Map<String, Value>| m.get("lsn").and_then(Value::as_str).and_then(parse_lsn);
    let newer = facts.get("db").and_then(Value::as_u64) == Some(u64::from(db.to_u32()))
        && lsn(&facts) > lsn(&record);
    if newer {
        for key in RESET_KEYS {
            if let Some(v) = facts.get(key) {
                record.insert(key.into(), v.clone());
            }
        }
    }
    record
}

/// An LSN in [`lsn_text`]'s form, read back.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Set (or, with `None`, clear) when branch `db`, named `name`, expires.
/// The caller has locked the database and checked ownership.
pub fn set_expiry(db: Oid, name: &str, at: Option<pg_sys::TimestampTz>) {
    let Some(mut record) = read(db) else {
        Report::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("database \"{name}\" is not a branch"),
        )
        .detail("Only a database that pg_branch made by CREATE DATABASE can expire.")
        .error()
    };
    record.insert(
        "expires_at".into(),
        at.map_or(Value::Null, |t| Value::String(timestamp_text(t))),
    );
    write(db, &Value::Object(record));
}

/// Every readable record: [`labels`] that are JSON objects (doctor()
/// reports the others).
pub fn scan() -> Vec<(Oid, Map<String, Value>)> {
    labels()
        .into_iter()
        .filter_map(|(db, label)| match serde_json::from_str(&label) {
            Ok(Value::Object(record)) => Some((db, with_reset_facts(db, record))),
            _ => None,
        })
        .collect()
}

/// Every label of provider pg_branch on a database, by OID, as stored: a
/// scan of pg_shseclabel with the catalog snapshot, no SPI, so that the
/// expiry worker, which has no database, can read it (pg_shseclabel is a
/// shared catalog).
fn labels() -> Vec<(Oid, String)> {
    let mut out = Vec::new();
    // SAFETY: opens a shared catalog by its fixed OID and scans it whole
    // with the catalog snapshot; each tuple is deformed with the
    // relation's own descriptor while the scan holds it; the scan and the
    // relation are closed before return.
    unsafe {
        let rel = pg_sys::table_open(SHARED_SECLABEL_RELATION_ID, pg_sys::AccessShareLock as _);
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::InvalidOid,
            false,
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        );
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                break;
            }
            let mut values = [pg_sys::Datum::from(0); 4];
            let mut nulls = [true; 4];
            pg_sys::heap_deform_tuple(
                tuple,
                (*rel).rd_att,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
            if nulls.iter().any(|n| *n) {
                continue;
            }
            // objoid, classoid, provider, label (catalog/pg_shseclabel.h)
            let classoid = Oid::from(values[1].value() as u32);
            let provider = CStr::from_ptr(pg_sys::text_to_cstring(values[2].cast_mut_ptr()));
            if classoid != pg_sys::DatabaseRelationId || provider != PROVIDER {
                continue;
            }
            let label = CStr::from_ptr(pg_sys::text_to_cstring(values[3].cast_mut_ptr()));
            out.push((
                Oid::from(values[0].value() as u32),
                label.to_string_lossy().into_owned(),
            ));
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
    }
    out.sort_by_key(|(db, _)| db.to_u32());
    out
}

/// One row of the registry as stored, for doctor(): the database's OID,
/// its name if that database exists, the label, and when it expired if it
/// has.
pub struct Stored {
    pub db: Oid,
    pub name: Option<String>,
    pub label: String,
    pub expired_at: Option<String>,
}

/// Every label as stored ([`labels`]), by OID, with its database's name.
/// A label whose database is not found is read again with a new catalog
/// snapshot before it is reported without one: a DROP DATABASE that
/// commits between the scan and the name lookup deletes both.
pub fn stored() -> Vec<Stored> {
    // SAFETY: reads the current transaction's start (now()).
    let now = timestamp_text(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() });
    let mut out: Vec<Stored> = labels()
        .into_iter()
        .map(|(db, label)| Stored {
            db,
            name: crate::catalog::database_name(db),
            expired_at: expired_at(&label, &now),
            label,
        })
        .collect();
    if out.iter().any(|s| s.name.is_none()) {
        // SAFETY: drops this transaction's catalog snapshot; the next
        // catalog scan takes a new one.
        unsafe { pg_sys::InvalidateCatalogSnapshot() };
        let again = labels();
        out.retain(|s| {
            s.name.is_some()
                || (again.iter().any(|(db, _)| *db == s.db)
                    && crate::catalog::database_name(s.db).is_none())
        });
    }
    out
}

/// When a record says its branch expires, if that is at or before `now`
/// (both as [`timestamp_text`] writes them, which sort as they compare).
fn expired_at(label: &str, now: &str) -> Option<String> {
    let Ok(Value::Object(r)) = serde_json::from_str(label) else {
        return None;
    };
    let at = r.get("expires_at")?.as_str()?;
    (at <= now).then(|| at.to_string())
}

/// Whether a stored label is a record pg_branch can read.
pub fn is_record(label: &str) -> bool {
    matches!(serde_json::from_str(label), Ok(Value::Object(_)))
}

fn database_object(db: Oid) -> pg_sys::ObjectAddress {
    pg_sys::ObjectAddress {
        classId: pg_sys::DatabaseRelationId,
        objectId: db,
        objectSubId: 0,
    }
}

fn role_name(role: Oid) -> String {
    // SAFETY: a syscache lookup of an existing role (the current user);
    // the result is a palloc'd NUL-terminated name.
    unsafe { CStr::from_ptr(pg_sys::GetUserNameFromId(role, false)) }
        .to_string_lossy()
        .into_owned()
}

/// An LSN as PostgreSQL prints it (`pg_lsn`'s text form, `%X/%X`).
pub fn lsn_text(lsn: pg_sys::XLogRecPtr) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// A timestamptz as ISO 8601 in UTC, which `timestamptz` reads back
/// whatever the session's DateStyle and TimeZone.
pub fn timestamp_text(ts: pg_sys::TimestampTz) -> String {
    // PostgreSQL counts microseconds from 2000-01-01 00:00 UTC.
    let micros = ts.rem_euclid(1_000_000);
    let secs = ts.div_euclid(1_000_000);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days + 10_957); // 1970-01-01 -> 2000-01-01
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}+00",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

/// Year, month, day of the `days`-th day since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    (y, m, d)
}

/// Stop unless the current role owns database `db` (named `name`), with
/// core's error (42501, "must be owner of database ...").
pub fn check_owner(db: Oid, name: &str) {
    // SAFETY: reads this backend's current user.
    if !crate::compat::database_ownercheck(db, unsafe { pg_sys::GetUserId() }) {
        let c = CString::new(name).expect("a database name has no NUL");
        // SAFETY: raises core's error for a non-owner; does not return.
        unsafe {
            pg_sys::aclcheck_error(
                pg_sys::AclResult::ACLCHECK_NOT_OWNER,
                pg_sys::ObjectType::OBJECT_DATABASE,
                c.as_ptr(),
            )
        };
        unreachable!("aclcheck_error raises");
    }
}

/// Lock database `name` against DROP, RENAME and a concurrent change of its
/// record (ShareUpdateExclusiveLock on the database object, held to
/// commit; it does not conflict with branching, which takes
/// AccessShareLock), and return its OID; core's 3D000 if there is none.
pub fn lock_for_update(name: &str) -> Oid {
    let c = CString::new(name).unwrap_or_else(|_| {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "database name contains a NUL byte",
        )
    });
    // As core's get_object_address(): the name may go, or move to another
    // database, while we wait for the lock; lock_database() looks again.
    catalog::lock_database(&c, pg_sys::ShareUpdateExclusiveLock as _)
        .map(|row| row.oid)
        .unwrap_or_else(|| {
            error(
                PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
                format!("database \"{name}\" does not exist"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::{lsn_text, parse_lsn, timestamp_text};

    #[test]
    fn lsns_read_back() {
        for lsn in [0u64, 1, 0x1_0000_0000, 0x2A_0156_48C8, u64::MAX] {
            assert_eq!(parse_lsn(&lsn_text(lsn)), Some(lsn));
        }
        assert_eq!(parse_lsn("0/0x1"), None);
        assert!(parse_lsn("0/FF") < parse_lsn("1/0"));
    }

    #[test]
    fn timestamps_are_iso_utc() {
        assert_eq!(timestamp_text(0), "2000-01-01 00:00:00.000000+00");
        assert_eq!(timestamp_text(-1), "1999-12-31 23:59:59.999999+00");
        // 2026-12-03 10:09:03.5 UTC
        let unix = 1_796_292_543_i64;
        let ts = (unix - 946_684_800) * 1_000_000 + 500_000;
        assert_eq!(timestamp_text(ts), "2026-12-03 10:09:03.500000+00");
        // A leap day.
        let ts = (951_782_400_i64 - 946_684_800) * 1_000_000;
        assert_eq!(timestamp_text(ts), "2000-02-29 00:00:00.000000+00");
    }
}
