//! `pgbranch.doctor()`: one row per check of the set-up, with a status
//! (`ok`, `info`, `warning`, `error`), what was found and what to do. A new
//! user runs it first; it changes nothing.

use crate::branch::{self, Plan};
use crate::catalog;
use crate::catalog_pages::{self, Visibility};
use crate::cleanup;
use crate::expiry;
use crate::fence::LockTable;
use crate::ffi;
use crate::gucs;
use crate::registry;
use pg_branch_storage::{
    can_reflink_in, fs_name, is_nocow, mount_options, Method, CONVERT_SUFFIX, RESET_SUFFIX,
};
use pgrx::pg_sys::{self, Oid};
use std::ffi::CString;

pub struct Check {
    pub check: String,
    pub status: &'static str,
    pub detail: String,
    pub hint: Option<String>,
}

fn check(check: impl Into<String>, status: &'static str, detail: impl Into<String>) -> Check {
    Check {
        check: check.into(),
        status,
        detail: detail.into(),
        hint: None,
    }
}

impl Check {
    fn hint(mut self, hint: impl Into<String>) -> Check {
        self.hint = Some(hint.into());
        self
    }
}

/// The first column of the first row of a read-only query, if any.
///
/// Not pgrx's `Spi::get_one()`, which runs its query as an update and so
/// assigns the transaction an XID: on a standby that fails ("cannot assign
/// TransactionIds during recovery"), and on a primary it spends an XID on
/// a check that writes nothing.
fn select_one<T: pgrx::IntoDatum + pgrx::FromDatum>(
    query: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Option<T> {
    pgrx::Spi::connect(|c| {
        c.select(query, Some(1), args)
            .ok()?
            .first()
            .get_one::<T>()
            .ok()
            .flatten()
    })
}

pub fn run() -> Vec<Check> {
    let mut out = vec![preload(), enabled()];
    out.extend(catalog::tablespaces().into_iter().map(tablespace));
    let (checks, largest) = databases();
    out.extend(checks);
    out.push(lock_table(largest));
    out.push(nested_subvolumes());
    out.push(full_page_writes());
    out.push(wal_record());
    out.push(base_backups());
    let orphans = cleanup::orphans(cleanup::Purpose::List);
    out.extend(interrupted_leftovers(&orphans));
    out.push(orphans_check(orphans));
    out.extend(registry_checks());
    out.push(expiry_worker());
    out
}

/// Whether the expiry worker (expiry.rs) runs, and how often it looks.
fn expiry_worker() -> Check {
    let what = "expiry worker";
    // SAFETY: reads a flag of shared memory.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return check(
            what,
            "info",
            "a standby: the worker runs only on a primary (and after promotion)",
        );
    }
    let pid: Option<i32> = select_one(
        "SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = $1",
        &[expiry::WORKER_TYPE.into()],
    );
    let interval = gucs::EXPIRY_INTERVAL.get();
    match (pid, interval) {
        (None, _) => check(what, "warning", "not running").hint(
            "It is restarted 5 s after it stops; the server log says why it stopped.",
        ),
        (Some(pid), 0) => check(
            what,
            "info",
            format!("off (pid {pid} waits): pg_branch.expiry_interval is 0, so expired branches are kept"),
        )
        .hint("ALTER SYSTEM SET pg_branch.expiry_interval = '1min'; SELECT pg_reload_conf();"),
        (Some(pid), s) => check(
            what,
            "ok",
            format!("running (pid {pid}), looking for expired branches every {s} s"),
        ),
    }
}

/// The registry (registry.rs): a record without its database, or one
/// pg_branch cannot read, should be impossible (core's DROP DATABASE
/// deletes the record, and only pg_branch writes one), so each is an error;
/// a branch past its expiry is a warning until the expiry worker drops it.
fn registry_checks() -> Vec<Check> {
    let stored = registry::stored();
    let mut out = Vec::new();
    let mut branches = 0;
    for s in &stored {
        let Some(name) = &s.name else {
            out.push(
                check(
                    "registry",
                    "error",
                    format!(
                        "a record for database OID {}, which does not exist: {}",
                        s.db.to_u32(),
                        s.label
                    ),
                )
                .hint(
                    "DROP DATABASE deletes a branch's record; something else removed the database. \
                     DELETE FROM pg_shseclabel WHERE provider = 'pg_branch' AND objoid = <OID>.",
                ),
            );
            continue;
        };
        if !registry::is_record(&s.label) {
            out.push(check(
                "registry",
                "error",
                format!(
                    "the record of database \"{name}\" is not pg_branch's: {}",
                    s.label
                ),
            ));
            continue;
        }
        branches += 1;
        if let Some(at) = &s.expired_at {
            out.push(
                check(
                    format!("expiry of {name}"),
                    "warning",
                    format!("branch \"{name}\" expired at {at} and still exists"),
                )
                .hint("DROP DATABASE it, or pgbranch.clear_expiry() to keep it."),
            );
        }
    }
    if out.is_empty() {
        out.push(check(
            "registry",
            "ok",
            format!("{branches} branches recorded, each with its database"),
        ));
    }
    out
}

fn preload() -> Check {
    // The library refuses to load any other way, so this is always ok; the
    // row shows the setting, which the hint of the refusal names.
    check(
        "shared_preload_libraries",
        "ok",
        format!(
            "pg_branch is preloaded ({})",
            ffi::setting("shared_preload_libraries")
        ),
    )
}

fn enabled() -> Check {
    if gucs::ENABLED.get() {
        check(
            "pg_branch.enabled",
            "ok",
            "on: CREATE DATABASE makes branches",
        )
    } else {
        check(
            "pg_branch.enabled",
            "warning",
            "off: every CREATE DATABASE is core's copy",
        )
        .hint("SET pg_branch.enabled = on (or remove the setting that turns it off).")
    }
}

/// Where new databases in a tablespace go, and whether files can be cloned
/// there; the mount options that matter.
fn tablespace(ts: Oid) -> Check {
    let name = catalog::tablespace_name(ts);
    let dir = catalog::tablespace_dir(ts);
    let what = format!("tablespace {name}");
    if !dir.is_dir() {
        return check(
            what,
            "error",
            format!("\"{}\" does not exist", dir.display()),
        );
    }
    let fs = fs_name(&dir).unwrap_or("unknown");
    let options = mount_options(&dir)
        .map(|(m, o)| format!("mounted at {} with {o}", m.display()))
        .unwrap_or_else(|e| format!("mount options unknown: {e}"));
    let detail = format!("\"{}\" on {fs}, {options}", dir.display());
    if fs == "btrfs" && options.split([',', ' ']).any(|o| o == "nodatacow") {
        return check(what, "warning", detail).hint(
            "nodatacow makes every new file No_COW, which btrfs cannot reflink; snapshots of subvolumes \
             still work. Remount without nodatacow.",
        );
    }
    if is_nocow(&dir).unwrap_or(false) {
        return check(
            what,
            "warning",
            format!("{detail}; the directory has the No_COW attribute"),
        )
        .hint(
            "Files created in it inherit No_COW and cannot be reflinked: chattr -C the directory.",
        );
    }
    match can_reflink_in(&dir) {
        Ok(Ok(())) => check(what, "ok", format!("{detail}; files can be cloned here")),
        Ok(Err(why)) => check(what, "warning", format!("{detail}; {why}")).hint(
            "Databases here are copied by core. Put the data directory (or the tablespace) on btrfs, \
             or on XFS formatted with reflink=1.",
        ),
        Err(e) => check(what, "error", format!("{detail}; {e}")),
    }
}

/// How each database would be branched, and which one has the most
/// relations (name, count) for [`lock_table`].
///
/// Reading another database's files and pages is safe only while it can be
/// neither dropped nor moved: DROP DATABASE and ALTER DATABASE ... SET
/// TABLESPACE drop its buffers and then remove its files, and a buffer read
/// back in between (or dirtied, by setting a hint bit) would be left for a
/// file that no longer exists, failing every later checkpoint. So, as the
/// branch protocol does with its template, each database is locked first
/// (AccessShareLock on the database object, which conflicts only with the
/// AccessExclusiveLock of DROP, RENAME, SET TABLESPACE and conversion, so
/// connections and branches never wait for doctor), its row re-read under
/// the lock, and skipped if it is gone or invalid. Its pages are then only
/// read, never dirtied ([`relation_count`]). The lock is released before
/// the next database.
fn databases() -> (Vec<Check>, Option<(String, usize)>) {
    let mut out = Vec::new();
    let mut largest: Option<(String, usize)> = None;
    let lockmode = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    for catalog::Database { name, invalid, .. } in catalog::databases() {
        let what = format!("database {name}");
        let invalid_check = || {
            check(
                format!("database {name}"),
                "warning",
                "invalid (an interrupted DROP DATABASE)",
            )
            .hint(format!("DROP DATABASE \"{name}\";"))
        };
        if invalid {
            out.push(invalid_check());
            continue;
        }
        let cname = CString::new(name.clone()).expect("no NUL");
        // Dropped or renamed since the listing: nothing to say about it.
        let Some(db) = catalog::lock_database(&cname, lockmode) else {
            continue;
        };
        // Re-checked under the lock: a DROP DATABASE that failed or was
        // interrupted leaves the database invalid, its files partly gone.
        if is_invalid(db.oid) {
            catalog::unlock_database(db.oid, lockmode);
            out.push(invalid_check());
            continue;
        }
        out.push(match branch::plan(db.oid, db.tablespace, db.tablespace) {
            Plan::Clone(steps) if steps.iter().all(|s| s.method == Method::Snapshot) => {
                check(what, "ok", "branches are btrfs snapshots: O(1) at any size")
            }
            Plan::Clone(steps) => {
                let plain_on_btrfs = steps
                    .iter()
                    .any(|s| s.method == Method::Reflink && fs_name(&s.src).ok() == Some("btrfs"));
                let files: usize = steps
                    .iter()
                    .filter(|s| s.method == Method::Reflink)
                    .map(|s| std::fs::read_dir(&s.src).map(|d| d.count()).unwrap_or(0))
                    .sum();
                let c = check(
                    what,
                    if plain_on_btrfs { "info" } else { "ok" },
                    format!("branches reflink each of its {files} files"),
                );
                if plain_on_btrfs {
                    c.hint(format!(
                        "SELECT * FROM pgbranch.convert_to_subvolume('{}'); makes its branches O(1) snapshots.",
                        name.replace('\'', "''")
                    ))
                } else {
                    c
                }
            }
            Plan::Core(why) => check(what, "warning", format!("copied by core: {why}")),
            Plan::Failed(e) => check(what, "error", e.to_string()),
        });
        let n = relation_count(db.oid, db.tablespace);
        if largest.as_ref().is_none_or(|(_, m)| n > *m) {
            largest = Some((name, n));
        }
        catalog::unlock_database(db.oid, lockmode);
    }
    (out, largest)
}

/// Whether database `db` is marked invalid (`datconnlimit` = -2, left by
/// an interrupted DROP DATABASE). Read from the syscache, which taking the
/// database's lock has brought up to date.
fn is_invalid(db: Oid) -> bool {
    // SAFETY: a syscache lookup, released before returning.
    unsafe {
        let cache = pg_sys::SysCacheIdentifier::DATABASEOID as i32;
        let tuple = pg_sys::SearchSysCache1(cache, pg_sys::Datum::from(db));
        if tuple.is_null() {
            return true;
        }
        let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
        let invalid = form.datconnlimit == -2;
        pg_sys::ReleaseSysCache(tuple);
        invalid
    }
}

/// How many relations a branch of database `db` would lock: the rows of its
/// `pg_class` that are committed and not deleted now, but shared catalogs
/// and temporary tables, as the fence counts them. The caller holds a lock
/// on the database that keeps DROP and SET TABLESPACE out.
///
/// Nothing here may dirty a buffer of another database, so the scan is
/// catalog_pages' read-only one. Without the fence's lock on that
/// `pg_class`, concurrent DDL may make the count slightly off, which a
/// diagnosis can afford.
fn relation_count(db: Oid, tablespace: Oid) -> usize {
    catalog_pages::classes(db, tablespace, Visibility::ReadOnly)
        .iter()
        .filter(|c| !c.shared && c.persistence != pg_sys::RELPERSISTENCE_TEMP)
        .count()
}

/// The writer fence takes a lock on every relation of the template, all in
/// the shared lock table ([`LockTable`]); a branch whose fence cannot fit
/// is refused. `largest` is the database with the most relations (see
/// [`databases`]).
fn lock_table(largest: Option<(String, usize)>) -> Check {
    let table = LockTable::now();
    let Some((name, n)) = largest else {
        return check("max_locks_per_transaction", "ok", "no databases");
    };
    let capacity = table.capacity();
    let detail = format!(
        "branching locks every relation of the template; the largest, \"{name}\", has {n}; \
         the lock table holds {capacity} (max_locks_per_transaction {} × {} processes)",
        table.per_xact, table.processes
    );
    let hint = format!(
        "Set max_locks_per_transaction to at least {} and restart.",
        table.advised_for(n)
    );
    if n as i64 >= capacity {
        check(
            "max_locks_per_transaction",
            "error",
            format!("{detail}: branching it fails with \"out of shared memory\""),
        )
        .hint(hint)
    } else if 2 * n as i64 > capacity {
        check(
            "max_locks_per_transaction",
            "warning",
            format!("{detail}: other sessions' locks may not fit while it branches"),
        )
        .hint(hint)
    } else {
        check("max_locks_per_transaction", "ok", detail)
    }
}

/// Database directories that are btrfs subvolumes (branches, converted
/// databases) are nested inside the data directory's subvolume. A snapshot
/// of that subvolume (`btrfs subvolume snapshot`, `btrfs send`, snapper)
/// holds each of them as an empty directory: a backup taken that way has
/// lost every branch, silently.
fn nested_subvolumes() -> Check {
    let what = "filesystem snapshots";
    let mut nested = 0;
    for ts in catalog::tablespaces() {
        let Ok(entries) = std::fs::read_dir(catalog::tablespace_dir(ts)) else {
            continue;
        };
        for e in entries.flatten() {
            let is_db = e
                .file_name()
                .to_str()
                .and_then(pg_branch_storage::database_dir_name)
                .is_some_and(|(_, leftover)| !leftover);
            if is_db && pg_branch_storage::is_subvolume(&e.path()).unwrap_or(false) {
                nested += 1;
            }
        }
    }
    if nested == 0 {
        return check(what, "ok", "no database directory is a btrfs subvolume");
    }
    check(
        what,
        "warning",
        format!(
            "{nested} database directories are btrfs subvolumes (branches, converted databases): \
             a snapshot of the data directory's subvolume, or btrfs send of it, holds them as empty directories"
        ),
    )
    .hint("Back this cluster up with pg_basebackup or pgBackRest, which copy files, not with a filesystem snapshot.")
}

/// full_page_writes = off with WAL that others replay makes branching
/// unsafe, so CREATE DATABASE copies as core does (branch.rs).
fn full_page_writes() -> Check {
    let what = "full_page_writes";
    let wal_level = ffi::setting("wal_level");
    match (ffi::setting("full_page_writes").as_str(), wal_level.as_str()) {
        ("off", "minimal") => check(
            what,
            "ok",
            "off, with wal_level minimal: only crash recovery replays this WAL, and it keeps each branch",
        ),
        ("off", _) => check(
            what,
            "warning",
            format!(
                "off, with wal_level {wal_level}: CREATE DATABASE copies templates as core does, \
                 since a standby or restore replaying this WAL could build a branch that differs page by page"
            ),
        )
        .hint("Set full_page_writes = on, or wal_level = minimal if no standby or archive needs this WAL."),
        _ => check(what, "ok", "on"),
    }
}

fn base_backups() -> Check {
    let what = "base backups";
    match crate::backup::running() {
        Some(0) => check(
            what,
            "ok",
            "none running; a branch made while one runs is also written into WAL page by page, so that its replay rebuilds it exactly",
        ),
        Some(n) => check(
            what,
            "info",
            format!("{n} running: until they end, each branch is also written into WAL page by page (as much WAL as its template's size)"),
        ),
        None => check(
            what,
            "warning",
            "cannot read core's count of running backups on this server version: every branch is also written into WAL page by page",
        )
        .hint("Report the server version to pg_branch's maintainers; src/backup.rs names the offsets it expects."),
    }
}

fn wal_record() -> Check {
    let what = "pg_branch.wal_record";
    let record = if crate::wal::core_record() {
        "core"
    } else {
        "pg_branch"
    };
    if ffi::setting("wal_level") == "minimal" {
        return check(
            what,
            "ok",
            format!("{record}; wal_level is minimal: no standbys"),
        );
    }
    let standbys: i64 =
        select_one("SELECT count(*) FROM pg_catalog.pg_stat_replication", &[]).unwrap_or(0);
    let senders = ffi::setting("max_wal_senders");
    match record {
        "pg_branch" => check(
            what,
            "info",
            format!(
                "pg_branch: every server that replays this WAL (standbys, PITR) must preload pg_branch; \
                 {standbys} standby(s) connected now, max_wal_senders = {senders}"
            ),
        )
        .hint(
            "For standbys without pg_branch, SET pg_branch.wal_record = core: they then replay each \
             branch as a plain copy, and each branch waits for a full checkpoint.",
        ),
        _ => check(
            what,
            "ok",
            format!(
                "core: any standby replays branches as plain copies; {standbys} standby(s) connected now"
            ),
        ),
    }
}

fn orphans_check(found: Vec<cleanup::Orphan>) -> Check {
    if found.is_empty() {
        return check("orphaned directories", "ok", "none");
    }
    let list: Vec<String> = found.iter().map(|o| o.path.display().to_string()).collect();
    check(
        "orphaned directories",
        "warning",
        format!(
            "{} directories belong to no database: {}",
            found.len(),
            list.join(", ")
        ),
    )
    .hint("SELECT * FROM pgbranch.remove_orphans();")
}

/// Leftovers of a conversion or a reset that a crash (or, for a reset, a
/// FATAL before its record) interrupted, of databases that still exist
/// (those of dropped ones are among the `orphans`). A reset under way has
/// its clone there too, for as long as it runs: the listing is a hint, as
/// every doctor() row is.
fn interrupted_leftovers(orphans: &[cleanup::Orphan]) -> Vec<Check> {
    let mut out = Vec::new();
    for ts in catalog::tablespaces() {
        let Ok(entries) = std::fs::read_dir(catalog::tablespace_dir(ts)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if orphans.iter().any(|o| o.path == path) {
                continue;
            }
            let (item, what, hint) = match path.extension().and_then(|x| x.to_str()) {
                Some(CONVERT_SUFFIX) => (
                    "interrupted conversion",
                    "a conversion that did not finish",
                    "Converting the database again removes it.",
                ),
                Some(RESET_SUFFIX) => (
                    "interrupted reset",
                    "a reset that did not finish, or one under way",
                    "Resetting the branch again removes it.",
                ),
                _ => continue,
            };
            out.push(
                check(
                    item,
                    "warning",
                    format!("\"{}\" was left by {what}", path.display()),
                )
                .hint(hint),
            );
        }
    }
    out
}
