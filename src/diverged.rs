//! What a branch no longer shares with its parent, relation by relation:
//! `pgbranch.diverged()`.
//!
//! A branch starts as a copy-on-write clone of its parent, so each of its
//! relation files first references exactly the extents of the parent's
//! same file. Whatever either side writes afterwards goes to new extents.
//! So the bytes of a branch's file whose physical ranges (FIEMAP) are not
//! among those of the parent's file are the bytes that diverged, by a
//! write in the branch or in the parent: extents alone cannot say which
//! side wrote. This reads extent maps and the two databases' `pg_class`,
//! never relation data, so its cost grows with the number of files and
//! extents, not with the size of the data.
//!
//! Relations are matched by OID: a branch's relations keep their parent's
//! OIDs, and the OID counter is cluster-wide, so a relation created later
//! on one side never takes the OID of one created on the other. A relation
//! rewritten on one side (VACUUM FULL, TRUNCATE, ALTER TABLE … TYPE) gets
//! a new file, all of which then differs.
//!
//! Locks: AccessShareLock on both database objects while it reads, so
//! DROP DATABASE, RENAME, SET TABLESPACE and conversion wait and the two
//! directories stay put; nothing else waits. Released before it returns. Both databases' dirty shared
//! buffers are written out first (FlushDatabaseBuffers, as a checkpoint
//! would), so changes not yet checkpointed count; that writes pages that
//! are already WAL-logged, and changes no data. The catalogs are read as
//! doctor() reads them, from private copies of their pages, each as of one
//! snapshot (catalog_pages.rs): DDL that commits meanwhile is not seen.

use crate::catalog;
use crate::catalog_pages::{self, Class, Visibility};
use crate::error::{self, Report};
use crate::ffi;
use crate::registry;
use pg_branch_storage::{errno_text, relation_file_name, Extents};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::path::PathBuf;

/// One row of `diverged()`.
pub struct Row {
    pub relation: String,
    pub kind: &'static str,
    /// `main`, `fsm`, `vm`, `init`; `None` for a relation without storage.
    pub fork: Option<&'static str>,
    pub status: &'static str,
    pub branch_bytes: Option<i64>,
    pub parent_bytes: Option<i64>,
    pub diverged_bytes: i64,
}

/// A database, as far as diverged() looks at it.
struct Side {
    oid: Oid,
    tablespace: Oid,
    classes: HashMap<Oid, Class>,
    namespaces: HashMap<Oid, String>,
    /// The files of each (tablespace, filenode), by fork.
    files: HashMap<(Oid, Oid), BTreeMap<&'static str, Vec<PathBuf>>>,
}

/// The relations of branch `branch` that differ from its parent's.
pub fn diverged(branch: &str) -> Vec<Row> {
    let lockmode = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    let cname = CString::new(branch).unwrap_or_default();
    let db = catalog::lock_database(&cname, lockmode).unwrap_or_else(|| {
        error::error(
            PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
            format!("database \"{branch}\" does not exist"),
        )
    });
    // SAFETY: a syscache lookup by OID, released before it returns.
    if unsafe { pg_sys::database_is_invalid_oid(db.oid) } {
        Report::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot compare invalid database \"{branch}\""),
        )
        .hint("Use DROP DATABASE to drop invalid databases.")
        .error();
    }
    let Some(record) = registry::read(db.oid) else {
        Report::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("database \"{branch}\" is not a branch"),
        )
        .detail("It has no parent to compare with: pg_branch did not make it by CREATE DATABASE.")
        .error()
    };
    let parent_oid = record
        .get("parent_oid")
        .and_then(|v| v.as_u64())
        .map_or(pg_sys::InvalidOid, |o| Oid::from(o as u32));
    let parent_name = record
        .get("parent_name")
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_owned();
    // A parent that a DROP DATABASE interrupted half-way (invalid) has lost
    // some of its files: as good as dropped.
    // SAFETY: a syscache lookup by OID, released before it returns.
    let parent = catalog::lock_database_oid(parent_oid, lockmode)
        .map(|(_, row)| row)
        .filter(|p| !unsafe { pg_sys::database_is_invalid_oid(p.oid) });
    let Some(parent) = parent else {
        Report::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the parent of branch \"{branch}\" has been dropped"),
        )
        .detail(format!(
            "Branch \"{branch}\" was made from database \"{parent_name}\" (OID {}), which no \
             longer exists: there is nothing to compare it with.",
            parent_oid.to_u32()
        ))
        .hint(format!(
            "pgbranch.branch_size('{}') shows what the branch holds on its own.",
            branch.replace('\'', "''")
        ))
        .error()
    };
    // SAFETY: writes out the dirty shared buffers of two databases whose
    // objects we hold locked; any process may (a checkpoint does).
    unsafe {
        pg_sys::FlushDatabaseBuffers(db.oid);
        pg_sys::FlushDatabaseBuffers(parent.oid);
    }
    let b = Side::read(db.oid, db.tablespace);
    let p = Side::read(parent.oid, parent.tablespace);
    let mut rows = Vec::new();
    for (oid, class) in &b.classes {
        check_for_interrupts!();
        match p.classes.get(oid) {
            Some(pclass) => compare(&b, class, &p, pclass, &mut rows),
            None => one_side(&b, class, "only in branch", &mut rows),
        }
    }
    for (oid, class) in &p.classes {
        check_for_interrupts!();
        if !b.classes.contains_key(oid) {
            one_side(&p, class, "only in parent", &mut rows);
        }
    }
    let fork_rank = |f: Option<&str>| {
        ["main", "fsm", "vm", "init"]
            .iter()
            .position(|x| Some(*x) == f)
    };
    rows.sort_by(|x, y| {
        (&x.relation, fork_rank(x.fork), x.status).cmp(&(&y.relation, fork_rank(y.fork), y.status))
    });
    // Everything is read: DROP, RENAME and conversion of either database
    // need not wait for the rest of the caller's transaction.
    catalog::unlock_database(db.oid, lockmode);
    catalog::unlock_database(parent.oid, lockmode);
    rows
}

/// Rows for a relation on both sides: each fork whose extents differ.
fn compare(b: &Side, class: &Class, p: &Side, pclass: &Class, rows: &mut Vec<Row>) {
    let bf = b.forks(class);
    let pf = p.forks(pclass);
    let empty = Vec::new();
    let forks: std::collections::BTreeSet<&'static str> =
        bf.keys().chain(pf.keys()).copied().collect();
    for fork in forks {
        let be = extents(bf.get(fork).unwrap_or(&empty));
        let pe = extents(pf.get(fork).unwrap_or(&empty));
        let diverged = be.bytes_not_in(&pe);
        // Also a fork that only the parent extended or rewrote: what the
        // branch holds may all still be shared, yet the two differ.
        if diverged == 0 && pe.bytes_not_in(&be) == 0 {
            continue;
        }
        rows.push(Row {
            relation: b.qualified_name(class),
            kind: kind_name(class.kind),
            fork: Some(fork),
            status: "changed",
            branch_bytes: bf.contains_key(fork).then_some(be.bytes as i64),
            parent_bytes: pf.contains_key(fork).then_some(pe.bytes as i64),
            diverged_bytes: diverged as i64,
        });
    }
}

/// Rows for a relation that only `side` has: one per fork, or one without
/// a fork if it has no storage (a view, a partitioned table).
fn one_side(side: &Side, class: &Class, status: &'static str, rows: &mut Vec<Row>) {
    let in_branch = status == "only in branch";
    let forks = side.forks(class);
    let mut push = |fork, bytes: i64| {
        rows.push(Row {
            relation: side.qualified_name(class),
            kind: kind_name(class.kind),
            fork,
            status,
            branch_bytes: in_branch.then_some(bytes),
            parent_bytes: (!in_branch).then_some(bytes),
            diverged_bytes: if in_branch { bytes } else { 0 },
        })
    };
    if forks.is_empty() {
        push(None, 0);
    }
    for (fork, paths) in forks {
        push(Some(*fork), extents(paths).bytes as i64);
    }
}

impl Side {
    fn read(oid: Oid, tablespace: Oid) -> Side {
        let classes: Vec<Class> = catalog_pages::classes(oid, tablespace, Visibility::ReadOnly)
            .into_iter()
            // Shared catalogs live in global/, one copy for every database;
            // other sessions' temporary tables are not part of a branch.
            .filter(|c| !c.shared && c.persistence != pg_sys::RELPERSISTENCE_TEMP)
            .collect();
        let namespaces = catalog_pages::namespaces(oid, tablespace, &classes)
            .into_iter()
            .collect();
        let mut files: HashMap<(Oid, Oid), BTreeMap<&'static str, Vec<PathBuf>>> = HashMap::new();
        for ts in catalog::tablespaces() {
            let dir = ffi::database_path(oid, ts);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                // No files of this database in that tablespace.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => dir_error(&dir, e),
            };
            for entry in entries {
                check_for_interrupts!();
                let entry = entry.unwrap_or_else(|e| dir_error(&dir, e));
                let name = entry.file_name();
                let Some((filenode, fork)) = name.to_str().and_then(relation_file_name) else {
                    continue;
                };
                files
                    .entry((ts, Oid::from(filenode)))
                    .or_default()
                    .entry(fork)
                    .or_default()
                    .push(entry.path());
            }
        }
        Side {
            oid,
            tablespace,
            classes: classes.into_iter().map(|c| (c.oid, c)).collect(),
            namespaces,
            files,
        }
    }

    /// The files of relation `class`, by fork; none if it has no storage.
    fn forks(&self, class: &Class) -> &BTreeMap<&'static str, Vec<PathBuf>> {
        static NONE: BTreeMap<&str, Vec<PathBuf>> = BTreeMap::new();
        if !has_storage(class.kind) {
            return &NONE;
        }
        let ts = if class.tablespace == pg_sys::InvalidOid {
            self.tablespace
        } else {
            class.tablespace
        };
        let file = catalog_pages::file_of(class, self.oid, self.tablespace);
        self.files.get(&(ts, file)).unwrap_or(&NONE)
    }

    fn qualified_name(&self, class: &Class) -> String {
        let schema = self
            .namespaces
            .get(&class.namespace)
            .cloned()
            .unwrap_or_else(|| class.namespace.to_u32().to_string());
        format!(
            "{}.{}",
            quote_identifier(&schema),
            quote_identifier(&class.name)
        )
    }
}

/// The extents of some files; ERROR if FIEMAP fails.
fn extents(paths: &[PathBuf]) -> Extents {
    Extents::of_files(paths).unwrap_or_else(|e| {
        let first = paths
            .first()
            .map_or(std::path::Path::new(""), |p| p.as_path());
        error::extents_error(first, e)
    })
}

/// The ERROR for a database directory that cannot be listed.
fn dir_error(dir: &std::path::Path, e: std::io::Error) -> ! {
    error::error(
        error::file_error_code(e.raw_os_error()),
        format!(
            "could not open directory \"{}\": {}",
            dir.display(),
            errno_text(&e)
        ),
    )
}

fn has_storage(kind: u8) -> bool {
    matches!(
        kind,
        pg_sys::RELKIND_RELATION
            | pg_sys::RELKIND_INDEX
            | pg_sys::RELKIND_SEQUENCE
            | pg_sys::RELKIND_TOASTVALUE
            | pg_sys::RELKIND_MATVIEW
    )
}

/// psql's name for a relation kind (the Type column of `\d`).
fn kind_name(kind: u8) -> &'static str {
    match kind {
        pg_sys::RELKIND_RELATION => "table",
        pg_sys::RELKIND_INDEX => "index",
        pg_sys::RELKIND_SEQUENCE => "sequence",
        pg_sys::RELKIND_TOASTVALUE => "TOAST table",
        pg_sys::RELKIND_VIEW => "view",
        pg_sys::RELKIND_MATVIEW => "materialized view",
        pg_sys::RELKIND_COMPOSITE_TYPE => "composite type",
        pg_sys::RELKIND_FOREIGN_TABLE => "foreign table",
        pg_sys::RELKIND_PARTITIONED_TABLE => "partitioned table",
        pg_sys::RELKIND_PARTITIONED_INDEX => "partitioned index",
        _ => "relation",
    }
}

/// Core's quote_identifier(): `name` as SQL must spell it.
fn quote_identifier(name: &str) -> String {
    let c = CString::new(name).unwrap_or_default();
    // SAFETY: a NUL-terminated string; returns it or a palloc'd quoted copy.
    unsafe { CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}
