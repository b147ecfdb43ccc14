//! `pgbranch.doctor()`: one row per check of the set-up, with a status
//! (`ok`, `info`, `warning`, `error`), what was found and what to do. A new
//! user runs it first; it changes nothing.

use crate::branch;
use crate::catalog;
use crate::cleanup;
use crate::fence;
use crate::ffi;
use crate::gucs;
use pg_branch_storage::{can_reflink_in, fs_name, is_nocow, mount_options, Method, CONVERT_SUFFIX};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
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

pub fn run() -> Vec<Check> {
    let mut out = vec![preload(), enabled()];
    out.extend(catalog::tablespaces().into_iter().map(tablespace));
    out.extend(databases());
    out.push(lock_table());
    out.push(wal_record());
    out.push(orphans());
    out.extend(interrupted_conversions());
    out
}

fn setting(name: &str) -> String {
    let name = CString::new(name).expect("no NUL");
    // SAFETY: returns a pointer into the GUC's storage, copied at once.
    unsafe { ffi::cstring(pg_sys::GetConfigOption(name.as_ptr(), true, false)) }
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn preload() -> Check {
    // The library refuses to load any other way, so this is always ok; the
    // row shows the setting, which the hint of the refusal names.
    check(
        "shared_preload_libraries",
        "ok",
        format!(
            "pg_branch is preloaded ({})",
            setting("shared_preload_libraries")
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
    let name = crate::api::spcname(ts);
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

/// How each database would be branched.
fn databases() -> Vec<Check> {
    let dbs: Vec<(String, bool)> = Spi::connect(|c| {
        c.select(
            "SELECT datname::text, datconnlimit = -2 FROM pg_database ORDER BY datname",
            None,
            &[],
        )
        .map(|rows| {
            rows.map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<bool>(2).ok().flatten().unwrap_or(false),
                )
            })
            .collect()
        })
        .unwrap_or_default()
    });
    let mut out = Vec::new();
    for (name, invalid) in dbs {
        let what = format!("database {name}");
        if invalid {
            out.push(
                check(what, "warning", "invalid (an interrupted DROP DATABASE)")
                    .hint(format!("DROP DATABASE \"{name}\";")),
            );
            continue;
        }
        let cname = CString::new(name.clone()).expect("no NUL");
        let Some(db) = catalog::lock_database(&cname, pg_sys::NoLock as _) else {
            continue;
        };
        out.push(match branch::plan(db.oid, db.tablespace, db.tablespace) {
            Ok(Ok(steps)) if steps.iter().all(|s| s.method == Method::Snapshot) => {
                check(what, "ok", "branches are btrfs snapshots: O(1) at any size")
            }
            Ok(Ok(steps)) => {
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
            Ok(Err(why)) => check(what, "warning", format!("copied by core: {why}")),
            Err(e) => check(what, "error", e.to_string()),
        });
    }
    out
}

/// The writer fence takes a lock on every relation of the template, all in
/// the shared lock table, whose size is max_locks_per_transaction ×
/// (max backends + max_prepared_transactions).
fn lock_table() -> Check {
    // SAFETY: reads two integers the postmaster set at start.
    let (per_xact, backends) = unsafe { (pg_sys::max_locks_per_xact, pg_sys::MaxBackends) };
    let prepared: i32 = setting("max_prepared_transactions").parse().unwrap_or(0);
    let capacity = per_xact as i64 * (backends as i64 + prepared as i64);
    let mut largest: Option<(String, usize)> = None;
    for (name, oid, ts) in connectable_databases() {
        let n = fence::relation_count(oid, ts);
        if largest.as_ref().is_none_or(|(_, m)| n > *m) {
            largest = Some((name, n));
        }
    }
    let Some((name, n)) = largest else {
        return check("max_locks_per_transaction", "ok", "no databases");
    };
    let detail = format!(
        "branching locks every relation of the template; the largest, \"{name}\", has {n}; \
         the lock table holds {capacity} (max_locks_per_transaction {per_xact} × {} processes)",
        backends + prepared
    );
    let processes = backends as i64 + prepared as i64;
    let needed = (2 * n as i64 + processes - 1) / processes;
    let hint = format!("Set max_locks_per_transaction to at least {needed} and restart.");
    if n as i64 > capacity {
        check("max_locks_per_transaction", "error", detail).hint(hint)
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

/// Every database whose relations a branch would lock, with its default
/// tablespace. template0 and other unconnectable ones too: they can be
/// templates.
fn connectable_databases() -> Vec<(String, Oid, Oid)> {
    Spi::connect(|c| {
        c.select(
            "SELECT datname::text, oid, dattablespace FROM pg_database WHERE datconnlimit <> -2",
            None,
            &[],
        )
        .map(|rows| {
            rows.filter_map(|r| {
                Some((
                    r.get::<String>(1).ok()??,
                    r.get::<Oid>(2).ok()??,
                    r.get::<Oid>(3).ok()??,
                ))
            })
            .collect()
        })
        .unwrap_or_default()
    })
}

fn wal_record() -> Check {
    let what = "pg_branch.wal_record";
    let record = if crate::wal::core_record() {
        "core"
    } else {
        "pg_branch"
    };
    if setting("wal_level") == "minimal" {
        return check(
            what,
            "ok",
            format!("{record}; wal_level is minimal: no standbys"),
        );
    }
    let standbys: i64 = Spi::get_one("SELECT count(*) FROM pg_stat_replication")
        .ok()
        .flatten()
        .unwrap_or(0);
    let senders = setting("max_wal_senders");
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

fn orphans() -> Check {
    let found = cleanup::orphans();
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

/// Leftovers of a conversion that a crash interrupted.
fn interrupted_conversions() -> Vec<Check> {
    let mut out = Vec::new();
    for ts in catalog::tablespaces() {
        let Ok(entries) = std::fs::read_dir(catalog::tablespace_dir(ts)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) == Some(CONVERT_SUFFIX) {
                out.push(
                    check(
                        "interrupted conversion",
                        "warning",
                        format!(
                            "\"{}\" was left by a conversion that did not finish",
                            path.display()
                        ),
                    )
                    .hint("Converting the database again removes it."),
                );
            }
        }
    }
    out
}
