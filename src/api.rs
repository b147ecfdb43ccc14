//! The SQL API of `CREATE EXTENSION pg_branch` (schema `pgbranch`).

use crate::branch;
use crate::catalog;
use crate::cleanup;
use crate::convert;
use crate::diverged;
use crate::doctor;
use crate::error;
use crate::ffi;
use crate::registry;
use crate::stats;
use crate::wal;
use pg_branch_storage::{errno_text, fs_name, is_subvolume, referenced_bytes, usage};
use pgrx::prelude::*;

/// One row per database directory: where it lives, on which filesystem,
/// whether it is a btrfs subvolume, and how a branch of it would be made
/// (`snapshot`, `reflink`, or NULL with the reason in `detail`).
/// PARALLEL RESTRICTED: it reads the catalogs through SPI and probes
/// filesystems, which only the leader should do.
#[pg_extern(volatile, parallel_restricted)]
#[allow(clippy::type_complexity)]
fn database_storage() -> TableIterator<
    'static,
    (
        name!(datname, String),
        name!(tablespace, String),
        name!(path, String),
        name!(filesystem, String),
        name!(is_subvolume, bool),
        name!(branch_method, Option<String>),
        name!(detail, Option<String>),
    ),
> {
    let mut out = Vec::new();
    for catalog::Database {
        oid: db,
        name,
        tablespace: default_ts,
        ..
    } in catalog::databases()
    {
        let plan = branch::plan(db, default_ts, default_ts);
        for ts in catalog::tablespaces() {
            let path = ffi::database_path(db, ts);
            if !path.is_dir() {
                continue;
            }
            let (method, detail) = match &plan {
                branch::Plan::Clone(steps) => (
                    steps
                        .iter()
                        .find(|s| s.src_tablespace == ts)
                        .map(|s| s.method.name().to_string()),
                    None,
                ),
                branch::Plan::Core(why) => (None, Some(why.reason.clone())),
                branch::Plan::Failed(e) => (None, Some(e.to_string())),
            };
            out.push((
                name.clone(),
                catalog::tablespace_name(ts),
                path.display().to_string(),
                fs_name(&path).unwrap_or("unknown").to_string(),
                is_subvolume(&path).unwrap_or(false),
                method,
                detail,
            ));
        }
    }
    TableIterator::new(out)
}

/// The last branch this session made: what it took, and for how long the
/// template's writers were paused. No row before the first branch.
/// PARALLEL RESTRICTED: it reads this backend's memory, which a parallel
/// worker does not have.
#[pg_extern(volatile, parallel_restricted)]
#[allow(clippy::type_complexity)]
fn last_branch() -> TableIterator<
    'static,
    (
        name!(datname, String),
        name!(template, String),
        name!(method, String),
        name!(relations, i64),
        name!(sync_ms, f64),
        name!(fence_wait_ms, f64),
        name!(fence_ms, f64),
        name!(fence_up_at, Option<TimestampWithTimeZone>),
        name!(fence_down_at, Option<TimestampWithTimeZone>),
        name!(clone_ms, f64),
        name!(record_ms, f64),
        name!(wal_logged_pages, i64),
        name!(wal_log_ms, f64),
        name!(checkpoint_ms, f64),
        name!(total_ms, f64),
    ),
> {
    TableIterator::new(stats::last_branch().map(|s| {
        (
            s.database,
            s.template,
            s.method,
            s.relations,
            s.sync_ms,
            s.fence_wait_ms,
            s.fence_ms,
            TimestampWithTimeZone::try_from(s.fence_up_at).ok(),
            TimestampWithTimeZone::try_from(s.fence_down_at).ok(),
            s.clone_ms,
            s.record_ms,
            s.wal_logged_pages,
            s.wal_log_ms,
            s.checkpoint_ms,
            s.total_ms,
        )
    }))
}

/// Database directories that no database owns: left by a server crash
/// between a branch's clone and its commit (or by core's own CREATE
/// DATABASE in the same window). A database being created or dropped right
/// now is never listed.
#[pg_extern(volatile)]
fn orphans() -> TableIterator<
    'static,
    (
        name!(tablespace, String),
        name!(path, String),
        name!(bytes, i64),
        name!(modified, Option<TimestampWithTimeZone>),
    ),
> {
    TableIterator::new(
        cleanup::orphans(cleanup::Purpose::List)
            .into_iter()
            .map(|o| {
                (
                    catalog::tablespace_name(o.tablespace),
                    o.path.display().to_string(),
                    dir_bytes(&o.path),
                    modified(&o.path),
                )
            }),
    )
}

/// Remove every orphan directory (see `orphans()`), WAL-logged so that
/// standbys remove theirs. Returns what was removed. Superuser only.
#[pg_extern(volatile)]
fn remove_orphans() -> TableIterator<
    'static,
    (
        name!(tablespace, String),
        name!(path, String),
        name!(bytes, i64),
    ),
> {
    ffi::prevent_unless_writable_top_level("pgbranch.remove_orphans()");
    require_superuser("remove orphaned database directories");
    // The lock orphans() takes on pg_database stays until we commit: no
    // database can be created (with an OID we are removing), altered or
    // dropped meanwhile (cleanup.rs).
    let mut removed = Vec::new();
    for o in cleanup::orphans(cleanup::Purpose::Remove) {
        let bytes = dir_bytes(&o.path);
        if let Err(e) = cleanup::remove_orphan(&o) {
            error::error(
                PgSqlErrorCode::ERRCODE_IO_ERROR,
                format!(
                    "could not remove directory \"{}\": {}",
                    o.path.display(),
                    errno_text(&e)
                ),
            );
        }
        removed.push((
            catalog::tablespace_name(o.tablespace),
            o.path.display().to_string(),
            bytes,
        ));
    }
    if !removed.is_empty() {
        // As DROP DATABASE does before anyone can reuse the OID: put our
        // DROP records behind the redo pointer, so that crash recovery never
        // replays one of them over a database created later with the same
        // OID (which can only happen after we commit and release the lock).
        ffi::request_checkpoint(
            ffi::CHECKPOINT_IMMEDIATE | ffi::CHECKPOINT_FORCE | ffi::CHECKPOINT_WAIT,
        );
    }
    TableIterator::new(removed)
}

/// Convert the directories of database `database` into btrfs subvolumes,
/// online, so that its branches are O(1) snapshots (convert.rs). Nobody
/// else may be connected to it; new connections wait until it is done.
/// One row per directory of the database. Superuser only.
#[pg_extern(volatile)]
fn convert_to_subvolume(
    database: &str,
) -> TableIterator<
    'static,
    (
        name!(tablespace, String),
        name!(path, String),
        name!(result, String),
    ),
> {
    ffi::prevent_unless_writable_top_level("pgbranch.convert_to_subvolume()");
    require_superuser("convert database directories");
    let name = std::ffi::CString::new(database).unwrap_or_default();
    let dirs = convert::database(&name).unwrap_or_else(|skipped| skipped.raise());
    TableIterator::new(
        dirs.into_iter()
            .map(|d| (catalog::tablespace_name(d.tablespace), d.path, d.result)),
    )
}

/// `convert_to_subvolume()` for every database but the current one. A
/// database that cannot be converted now (someone is connected) is
/// reported, not raised, and the others are still converted. One row per
/// directory, or per database skipped. Superuser only.
#[pg_extern(volatile)]
fn convert_all_to_subvolumes() -> TableIterator<
    'static,
    (
        name!(datname, String),
        name!(tablespace, Option<String>),
        name!(path, Option<String>),
        name!(result, String),
    ),
> {
    ffi::prevent_unless_writable_top_level("pgbranch.convert_all_to_subvolumes()");
    require_superuser("convert database directories");
    let names = catalog::databases()
        .into_iter()
        .filter(|d| !d.invalid)
        .map(|d| d.name);
    let mut out = Vec::new();
    for name in names {
        let cname = std::ffi::CString::new(name.clone()).unwrap_or_default();
        match convert::database(&cname) {
            Ok(dirs) => out.extend(dirs.into_iter().map(|d| {
                (
                    name.clone(),
                    Some(catalog::tablespace_name(d.tablespace)),
                    Some(d.path),
                    d.result,
                )
            })),
            Err(skipped) => {
                let mut why = format!("skipped: {}", skipped.message);
                if let Some(d) = skipped.detail.or(skipped.hint) {
                    why = format!("{why} ({d})");
                }
                out.push((name, None, None, why));
            }
        }
    }
    TableIterator::new(out)
}

/// What the files of database `database` hold on disk, per tablespace:
/// `exclusive_bytes`, data no other file references, and `shared_bytes`, data it shares with its
/// template, other branches or snapshots (see the README for what sharing
/// among branches means for totals). From FIEMAP's shared flag, so it
/// reads each file's extent map, not its data. Superuser, or members of
/// pg_read_server_files, by default.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn branch_size(
    database: &str,
) -> TableIterator<
    'static,
    (
        name!(tablespace, String),
        name!(path, String),
        name!(files, i64),
        name!(exclusive_bytes, i64),
        name!(shared_bytes, i64),
    ),
> {
    let name = std::ffi::CString::new(database).unwrap_or_default();
    // Held to the end of the transaction: DROP DATABASE, SET TABLESPACE and
    // conversion (AccessExclusiveLock) wait, so the directories stay put.
    let db = catalog::lock_database(&name, pg_sys::AccessShareLock as _).unwrap_or_else(|| {
        error::error(
            PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        )
    });
    let mut out = Vec::new();
    for ts in catalog::tablespaces() {
        let path = ffi::database_path(db.oid, ts);
        if !path.is_dir() {
            continue;
        }
        let u = usage(&path).unwrap_or_else(|e| error::extents_error(&path, e));
        out.push((
            catalog::tablespace_name(ts),
            path.display().to_string(),
            u.files as i64,
            u.exclusive_bytes as i64,
            u.shared_bytes as i64,
        ));
    }
    TableIterator::new(out)
}

/// What all the databases take on disk together: `database_bytes`, the
/// sum of each one's `branch_size()` (as if each were a copy), and
/// `disk_bytes`, the data they reference together, each shared extent
/// counted once. Superuser, or members of pg_read_server_files, by default.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn cluster_size() -> TableIterator<
    'static,
    (
        name!(databases, i64),
        name!(files, i64),
        name!(database_bytes, i64),
        name!(disk_bytes, i64),
    ),
> {
    // A listing, not a lock: a database dropped meanwhile counts as empty.
    let dbs = catalog::databases();
    let dirs: Vec<_> = dbs
        .iter()
        .flat_map(|d| {
            catalog::tablespaces()
                .into_iter()
                .map(|ts| ffi::database_path(d.oid, ts))
        })
        .filter(|p| p.is_dir())
        .collect();
    let (mut files, mut database_bytes) = (0u64, 0u64);
    for dir in &dirs {
        let u = usage(dir).unwrap_or_else(|e| error::extents_error(dir, e));
        files += u.files;
        database_bytes += u.exclusive_bytes + u.shared_bytes;
    }
    let disk_bytes = referenced_bytes(&dirs)
        .unwrap_or_else(|e| error::extents_error(std::path::Path::new("base"), e));
    TableIterator::new(std::iter::once((
        dbs.len() as i64,
        files as i64,
        database_bytes as i64,
        disk_bytes as i64,
    )))
}

/// The relations of branch `branch` that differ from its parent's, per
/// fork: `diverged_bytes`, the branch's bytes whose extents are no longer
/// the parent's same file's (written since on either side), and the
/// relations only one side has. From extent maps and the two databases'
/// `pg_class`, never relation data (src/diverged.rs). Superuser, or
/// members of pg_read_server_files, by default.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn diverged(
    branch: &str,
) -> TableIterator<
    'static,
    (
        name!(relation, String),
        name!(kind, String),
        name!(fork, Option<String>),
        name!(status, String),
        name!(branch_bytes, Option<i64>),
        name!(parent_bytes, Option<i64>),
        name!(diverged_bytes, i64),
    ),
> {
    TableIterator::new(diverged::diverged(branch).into_iter().map(|r| {
        (
            r.relation,
            r.kind.to_owned(),
            r.fork.map(str::to_owned),
            r.status.to_owned(),
            r.branch_bytes,
            r.parent_bytes,
            r.diverged_bytes,
        )
    }))
}

/// Check the set-up: one row per check, with its status (`ok`, `info`,
/// `warning`, `error`), what was found, and what to do about it.
#[pg_extern(volatile)]
fn doctor() -> TableIterator<
    'static,
    (
        name!(item, String),
        name!(status, String),
        name!(detail, String),
        name!(hint, Option<String>),
    ),
> {
    TableIterator::new(
        doctor::run()
            .into_iter()
            .map(|c| (c.check, c.status.to_string(), c.detail, c.hint)),
    )
}

/// Who would still need pg_branch to replay this server's WAL: crash
/// recovery from now, each connected standby, and restores of base backups
/// with archived WAL. `needs_pg_branch` is NULL where it cannot be known.
/// The steps to stop needing it are in the README ("Uninstall").
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn wal_needs_pg_branch() -> TableIterator<
    'static,
    (
        name!(replayer, String),
        name!(needs_pg_branch, Option<bool>),
        name!(detail, String),
    ),
> {
    // NULL: no record of ours written or replayed since the server started
    // (any older one lies before the checkpoint it started from).
    let last = match wal::last_record() {
        Some(end) => format!(
            "'{:X}/{:X}'::pg_catalog.pg_lsn",
            end >> 32,
            end & 0xffff_ffff
        ),
        None => "NULL::pg_catalog.pg_lsn".to_string(),
    };
    let query = format!(
        r#"
WITH w AS (SELECT {last} AS last, c.redo_lsn FROM pg_catalog.pg_control_checkpoint() c)
SELECT 'crash recovery', coalesce(w.last > w.redo_lsn, false),
       CASE WHEN w.last IS NULL THEN 'no pg_branch record since the server started'
            ELSE 'the newest pg_branch record ends at ' || w.last || ', the last checkpoint''s redo point is ' || w.redo_lsn END
  FROM w
UNION ALL
SELECT 'standby ' || coalesce(nullif(r.application_name, ''), r.pid::text),
       r.replay_lsn IS NULL OR r.replay_lsn < coalesce(w.last, w.redo_lsn),
       'replayed up to ' || coalesce(r.replay_lsn::text, 'nothing yet')
  FROM pg_catalog.pg_stat_replication r, w
UNION ALL
SELECT 'base backups and archived WAL', CASE WHEN w.last IS NULL THEN NULL ELSE true END,
       CASE WHEN w.last IS NULL THEN 'unknown: restores of base backups taken before this server started may replay older pg_branch records'
            ELSE 'restoring a base backup that started before the first checkpoint after ' || w.last || ' replays pg_branch records' END
  FROM w"#
    );
    let rows: Vec<(String, Option<bool>, String)> = Spi::connect(|c| {
        c.select(&query, None, &[])
            .map(|rows| {
                rows.map(|r| {
                    (
                        r.get::<String>(1).ok().flatten().unwrap_or_default(),
                        r.get::<bool>(2).ok().flatten(),
                        r.get::<String>(3).ok().flatten().unwrap_or_default(),
                    )
                })
                .collect()
            })
            .unwrap_or_default()
    });
    TableIterator::new(rows)
}

/// Replace branch `branch`'s contents with a fresh branch of `source`
/// (default: its parent), keeping its OID, name, owner, privileges,
/// settings, comment and registry record (src/reset.rs). Like DROP
/// DATABASE it refuses while others are connected, unless `force`
/// terminates them. Needs ownership of the branch and the right to copy
/// the source.
#[pg_extern(volatile)]
fn reset(branch: &str, source: default!(Option<&str>, "NULL"), force: default!(bool, false)) {
    crate::reset::reset(branch, source, force);
}

/// Make branch `branch` expire `expires_in` from now: the expiry worker
/// drops it then. Returns the moment. Needs ownership of the branch, as
/// dropping it would. Transactional: a rollback keeps the old expiry.
#[pg_extern(volatile, strict)]
fn set_expiry(branch: &str, expires_in: Interval) -> TimestampWithTimeZone {
    ffi::prevent_if_read_only("set_expiry()");
    let db = registry::lock_for_update(branch);
    registry::check_owner(db, branch);
    // SAFETY: core's `timestamptz + interval` on the transaction's start,
    // which is now(); both arguments are valid datums of their types.
    let at: TimestampWithTimeZone = unsafe {
        pgrx::direct_function_call(
            pg_sys::timestamptz_pl_interval,
            &[
                // SAFETY: reads this transaction's start time.
                TimestampWithTimeZone::try_from(pg_sys::GetCurrentTransactionStartTimestamp())
                    .ok()
                    .into_datum(),
                expires_in.into_datum(),
            ],
        )
    }
    .expect("timestamptz + interval is never NULL");
    registry::set_expiry(db, branch, Some(at.into_inner()));
    at
}

/// Make branch `branch` never expire. Needs ownership of the branch.
#[pg_extern(volatile, strict)]
fn clear_expiry(branch: &str) {
    ffi::prevent_if_read_only("clear_expiry()");
    let db = registry::lock_for_update(branch);
    registry::check_owner(db, branch);
    registry::set_expiry(db, branch, None);
}

fn require_superuser(what: &str) {
    // SAFETY: reads the current user's superuser flag.
    if !unsafe { pg_sys::superuser() } {
        error::error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be superuser to {what}"),
        );
    }
}

fn dir_bytes(dir: &std::path::Path) -> i64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len() as i64)
                .sum()
        })
        .unwrap_or(0)
}

fn modified(path: &std::path::Path) -> Option<TimestampWithTimeZone> {
    let since_unix = std::fs::metadata(path)
        .ok()?
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    // PostgreSQL counts microseconds from 2000-01-01.
    let pg_epoch = 946_684_800_i64 * 1_000_000;
    TimestampWithTimeZone::try_from(since_unix.as_micros() as i64 - pg_epoch).ok()
}

extension_sql_file!(
    "../sql/api.sql",
    name = "api",
    requires = [
        database_storage,
        branch_size,
        cluster_size,
        diverged,
        last_branch,
        orphans,
        remove_orphans,
        convert_to_subvolume,
        convert_all_to_subvolumes,
        doctor,
        wal_needs_pg_branch,
        set_expiry,
        clear_expiry
    ]
);

/// Branch `db`'s registry record as the `branches` view shows it: its
/// stored `label`, with the facts of a newer reset laid over it, which a
/// crash between a reset's swap and its commit leaves only on the
/// branch's directory (src/registry.rs). NULL if the label is not a JSON
/// object (doctor() reports it).
#[pg_extern(volatile, parallel_restricted)]
fn branch_record(db: pg_sys::Oid, label: &str) -> Option<pgrx::JsonB> {
    registry::as_read(db, label).map(|r| pgrx::JsonB(serde_json::Value::Object(r)))
}

extension_sql_file!(
    "../sql/branches.sql",
    name = "branches",
    requires = [branch_record]
);
