//! The SQL API of `CREATE EXTENSION pg_branch` (schema `pg_branch`).

use crate::branch;
use crate::catalog;
use crate::ffi;
use pg_branch_storage::{fs_name, is_subvolume};
use pgrx::prelude::*;

/// One row per database directory: where it lives, on which filesystem,
/// whether it is a btrfs subvolume, and how a branch of it would be made
/// (`snapshot`, `reflink`, or NULL with the reason in `detail`).
#[pg_extern(volatile, parallel_safe)]
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
    let dbs: Vec<(pg_sys::Oid, String, pg_sys::Oid)> = Spi::connect(|c| {
        c.select(
            "SELECT oid, datname::text, dattablespace FROM pg_database ORDER BY datname",
            None,
            &[],
        )
        .map(|rows| {
            rows.map(|r| {
                (
                    r.get::<pg_sys::Oid>(1)
                        .ok()
                        .flatten()
                        .unwrap_or(pg_sys::InvalidOid),
                    r.get::<String>(2).ok().flatten().unwrap_or_default(),
                    r.get::<pg_sys::Oid>(3)
                        .ok()
                        .flatten()
                        .unwrap_or(pg_sys::InvalidOid),
                )
            })
            .collect()
        })
        .unwrap_or_default()
    });
    let spcname = |ts: pg_sys::Oid| {
        // SAFETY: returns a palloc'd name or NULL for a dropped tablespace.
        unsafe { ffi::cstring(pg_sys::get_tablespace_name(ts)) }
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|| ts.to_u32().to_string())
    };
    let mut out = Vec::new();
    for (db, name, default_ts) in dbs {
        let plan = branch::plan(db, default_ts, default_ts);
        for ts in catalog::tablespaces() {
            let path = ffi::database_path(db, ts);
            if !path.is_dir() {
                continue;
            }
            let (method, detail) = match &plan {
                Ok(steps) => (
                    steps
                        .iter()
                        .find(|s| s.src_tablespace == ts)
                        .map(|s| s.method.name().to_string()),
                    None,
                ),
                Err(why) => (None, Some(why.reason.clone())),
            };
            out.push((
                name.clone(),
                spcname(ts),
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
#[pg_extern(volatile, parallel_safe)]
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
        name!(checkpoint_ms, f64),
        name!(total_ms, f64),
    ),
> {
    TableIterator::new(branch::last_branch().map(|s| {
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
            s.checkpoint_ms,
            s.total_ms,
        )
    }))
}

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION database_storage() FROM PUBLIC;
COMMENT ON FUNCTION database_storage() IS
  'Where each database directory lives and how pg_branch would branch it';
"#,
    name = "revoke_database_storage",
    requires = [database_storage]
);
