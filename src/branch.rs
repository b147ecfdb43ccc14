//! The branch protocol: PostgreSQL's `createdb()`, step by step, with the
//! copy replaced by a copy-on-write clone. Read it side by side with
//! `src/backend/commands/dbcommands.c`; where it differs, the comment says
//! so and why. The step numbers in the comments below are these:
//!
//!  1. Decide the statement is ours (decide.rs, asked by hook.rs): a
//!     branch is wanted and possible. Everything else goes to core.
//!  2. Validate as core does, in core's order: options, owner, privileges,
//!     template, locale, tablespace, name.
//!  3. Pin the template: AccessShareLock on its database object, held to
//!     commit. Core takes ShareLock and requires that nobody is connected;
//!     we let sessions connect and work, and conflict only with DROP
//!     DATABASE, RENAME and SET TABLESPACE (AccessExclusiveLock).
//!  4. Insert the pg_database row (pg_database RowExclusiveLock to
//!     commit); invisible to others until we commit.
//!  5. Raise the writer fence: ExclusiveLock on the template's pg_class,
//!     then on every relation it lists (fence.rs). Readers go on; writers
//!     and row lockers wait.
//!  6. Flush the template's buffers: the files now hold every committed
//!     change and nothing uncommitted.
//!  7. Clone each directory (snapshot or reflink).
//!  8. WAL-log each clone (wal.rs), so redo rebuilds it.
//!  9. Lower the fence: the template's writers resume; record the branch
//!     in the registry (registry.rs: a pg_shseclabel row, RowExclusiveLock
//!     to commit, which commits or aborts with the pg_database row).
//! 10. Wait until a checkpoint has started after the records (or for a
//!     whole checkpoint: core's record, or a reused OID), so that the
//!     branch's first changes carry full-page images.
//! 11. Commit synchronously, as core does.
//!
//! What a failure leaves: before step 7, nothing on disk. From step 7 to
//! the commit, an ERROR or FATAL removes what was cloned (cleanup.rs) and
//! the row goes with the aborted transaction; a crash leaves a directory
//! that no row owns (crash recovery makes it again if our record reached
//! disk), which `pgbranch.orphans()` lists and `pgbranch.remove_orphans()`
//! removes. After the commit the branch is a database like any other.
//!
//! All of it runs in a backend, inside the CREATE DATABASE transaction
//! (lib.rs); [`createdb`] stays `unsafe` only for the parse tree
//! pointers it is given.

use crate::backup;
use crate::catalog::{self, DatabaseRow, NewDatabase};
use crate::cleanup;
use crate::compat;
use crate::error::{error, file_error_code, Report};
use crate::fence::Fence;
use crate::ffi;
use crate::gucs;
use crate::locale;
use crate::options::CreatedbOptions;
use crate::registry;
use crate::stats::{self, ms, BranchStats};
use crate::wal;
use pg_branch_storage::{clone_dir, errno_text, presync, probe, Method, Unsupported};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::path::PathBuf;
use std::time::Instant;

/// One directory of the template to clone: the template's directory in
/// tablespace `src_tablespace`, into `dst_tablespace`.
#[derive(Debug, Clone)]
pub struct CloneStep {
    pub src_tablespace: Oid,
    pub dst_tablespace: Oid,
    pub src: PathBuf,
    pub method: Method,
}

/// How a branch of a database would be made, as its directories and the
/// server's settings tell: the answer of [`plan`].
#[derive(Debug)]
pub enum Plan {
    /// A branch: how each directory is cloned.
    Clone(Vec<CloneStep>),
    /// No branch: core's copy, for this reason.
    Core(Unsupported),
    /// A filesystem error stopped us from finding out: the statement
    /// fails, as core's copy would.
    Failed(pg_branch_storage::Error),
}

/// Decide how each directory of database `src_db` (default tablespace
/// `src_default`) is cloned when the new database's default tablespace is
/// `dst_default`.
///
/// Like core's FILE_COPY, only tablespaces where the template has a
/// non-empty directory are copied, and the template's default tablespace
/// maps to the new database's default tablespace.
pub fn plan(src_db: Oid, src_default: Oid, dst_default: Oid) -> Plan {
    plan_reusing(src_db, src_default, dst_default, &[])
}

/// Why the server's settings make a branch unsafe, if they do.
///
/// With `full_page_writes = off` and WAL kept for anyone to replay
/// (`wal_level` above minimal: standbys, archives, PITR), a replayed branch
/// could differ physically from ours: readers may prune a template page
/// after the fence flushed it and before we clone the file, so our clone
/// has the page before the prune and the replaying server's clone (of its
/// template, which replayed the prune) the page after it. Later records of
/// the branch that carry no full-page image would then be applied to a
/// different page layout. Core's copy waits for a checkpoint with nobody
/// connected to the template, so nothing can prune. Crash recovery alone
/// (`wal_level = minimal`) keeps our directory, so it is safe there.
fn settings_forbid_branching() -> Option<Unsupported> {
    if ffi::setting("full_page_writes") == "off" && ffi::setting("wal_level") != "minimal" {
        return Some(Unsupported {
            reason: format!(
                "full_page_writes is off and wal_level is {}: a server replaying this WAL (a standby, a PITR restore) could build a branch that differs from this one page by page, which only full-page images would repair",
                ffi::setting("wal_level")
            ),
        });
    }
    None
}

/// [`plan`], taking the method of a directory that `known` already lists
/// (the same source directory into the same tablespace) from there instead
/// of probing its filesystem again.
fn plan_reusing(src_db: Oid, src_default: Oid, dst_default: Oid, known: &[CloneStep]) -> Plan {
    if let Some(why) = settings_forbid_branching() {
        return Plan::Core(why);
    }
    let mut steps = Vec::new();
    for ts in catalog::tablespaces() {
        let src = ffi::database_path(src_db, ts);
        if !has_entries(&src) {
            continue;
        }
        let dst_tablespace = if ts == src_default { dst_default } else { ts };
        if let Some(step) = known
            .iter()
            .find(|s| s.src_tablespace == ts && s.src == src && s.dst_tablespace == dst_tablespace)
        {
            steps.push(step.clone());
            continue;
        }
        let dst_parent = catalog::tablespace_dir(dst_tablespace);
        let method = match probe(&src, &dst_parent) {
            Ok(Ok(m)) => m,
            Ok(Err(why)) => return Plan::Core(why),
            Err(e) => return Plan::Failed(e),
        };
        steps.push(CloneStep {
            src_tablespace: ts,
            dst_tablespace,
            src,
            method,
        });
    }
    Plan::Clone(steps)
}

/// Core's `stat() && S_ISDIR && !directory_is_empty()`: a directory that
/// exists and holds something.
pub fn has_entries(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// Create the database of `stmt` as a branch of its template. The hook has
/// already decided the statement is ours (step 1); `probed` is how it found
/// the template's directories can be cloned (empty if it did not get that
/// far), reused where they have not changed since.
///
/// # Safety
/// `pstate` and `stmt` must be valid for the whole call; must run as a
/// top-level statement outside a transaction block (the hook checked it).
pub unsafe fn createdb(
    pstate: *mut pg_sys::ParseState,
    stmt: *const pg_sys::CreatedbStmt,
    probed: &[CloneStep],
) -> Oid {
    let started = Instant::now();
    // SAFETY: `stmt` is valid (the caller's promise); the grammar always
    // sets `dbname`, a NUL-terminated string that outlives the statement.
    let dbname = unsafe { CStr::from_ptr((*stmt).dbname) };

    // 2. Validate like core, in core's order: options, owner, privileges,
    // template, locale, tablespace, name. Core's last check, that nobody
    // else is connected to the template, is deliberately absent: the
    // template may be in use (steps 3 and 5).
    // SAFETY: `pstate` and `stmt` are valid for the whole call (the
    // caller's promise).
    let o = unsafe { CreatedbOptions::parse(pstate, stmt) };

    let owner = match &o.owner {
        // SAFETY: a NUL-terminated role name; raises core's ERROR if there
        // is no such role.
        Some(role) => unsafe { pg_sys::get_role_oid(role.as_ptr(), false) },
        // SAFETY: reads this backend's current user.
        None => unsafe { pg_sys::GetUserId() },
    };

    // To create a database, must have CREATEDB and must be able to become
    // the owner (guards against "giveaway" attacks), as in core.
    if !have_createdb_privilege() {
        error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to create database",
        );
    }
    // SAFETY: reads this backend's current user.
    compat::check_can_set_role(unsafe { pg_sys::GetUserId() }, owner);

    // 3. Pin the template. We deliberately differ from core here: core
    // takes ShareLock, which also blocks new connections to the template,
    // and insists that no one else is connected. We take AccessShareLock,
    // which conflicts only with AccessExclusiveLock: DROP DATABASE, ALTER
    // DATABASE RENAME and SET TABLESPACE wait for us, while sessions keep
    // connecting and working. Consistency comes from the writer fence
    // (step 5) instead of from an empty template.
    let template_name = o
        .template
        .clone()
        .unwrap_or_else(|| c"template1".to_owned());
    let template = catalog::lock_database(&template_name, pg_sys::AccessShareLock as _)
        .unwrap_or_else(|| {
            error(
                PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
                format!(
                    "template database \"{}\" does not exist",
                    template_name.to_string_lossy()
                ),
            )
        });

    // Hold back the template's frozen-XID horizon until we commit: core
    // gets this from the template being unused (catalog::hold_frozen_ids).
    catalog::hold_frozen_ids(template.oid);

    // A template interrupted in the middle of DROP DATABASE is not one.
    // SAFETY: a syscache lookup by OID, released before it returns.
    if unsafe { pg_sys::database_is_invalid_oid(template.oid) } {
        Report::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "cannot use invalid database \"{}\" as template",
                template_name.to_string_lossy()
            ),
        )
        .hint("Use DROP DATABASE to drop invalid databases.")
        .error();
    }

    // To copy a database not marked datistemplate, you must own it (or be
    // superuser).
    // SAFETY: reads this backend's current user.
    if !template.is_template
        && !compat::database_ownercheck(template.oid, unsafe { pg_sys::GetUserId() })
    {
        error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to copy database \"{}\"",
                template_name.to_string_lossy()
            ),
        );
    }

    // Core validates STRATEGY here. WAL_LOG and FILE_COPY never reach us
    // (the hook hands them to core), so anything but SNAPSHOT is invalid;
    // the hint names every strategy the server now understands.
    if let Some(s) = &o.strategy {
        if !["snapshot", "wal_log", "file_copy"].contains(&s.to_lowercase().as_str()) {
            Report::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid create database strategy \"{s}\""),
            )
            .hint("Valid strategies are \"wal_log\", \"file_copy\" and \"snapshot\".")
            .error();
        }
    }

    let locale = locale::resolve(&o, &template, &template_name);
    let collation_version = locale::collation_version(&o, &template, &template_name, &locale);
    let dst_tablespace = resolve_tablespace(&o, &template, &template_name);

    // A friendlier message than the unique-index violation; the race with
    // a concurrent CREATE of the same name is accepted, as in core.
    // SAFETY: a NUL-terminated name; missing_ok, so no ERROR if absent.
    if unsafe { pg_sys::get_database_oid(dbname.as_ptr(), true) } != pg_sys::InvalidOid {
        error(
            PgSqlErrorCode::ERRCODE_DUPLICATE_DATABASE,
            format!("database \"{}\" already exists", dbname.to_string_lossy()),
        );
    }

    // How to clone each directory, decided now that the template is
    // locked, so that a statement that cannot be a branch fails before
    // anything is written. The hook probed the same before handing us the
    // statement: only a directory it did not see (the template moved in
    // between) is probed now, and this fails only then. The template's
    // writers may still add directories: the plan is made again under the
    // fence (step 5), probing only what is new.
    let steps = steps_or_error(
        plan_reusing(template.oid, template.tablespace, dst_tablespace, probed),
        &template_name,
    );

    // 4. Catalog row first, as core does. pg_database stays locked
    // RowExclusive until commit. The row is invisible to others until then,
    // and a concurrent CREATE of the same name blocks on the unique index
    // and fails once we commit.
    // SAFETY: opens a catalog by its fixed OID; closed in step 11 (or by
    // the transaction's abort).
    let rel =
        unsafe { pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::RowExclusiveLock as _) };
    // SAFETY: `rel` is pg_database, open with RowExclusiveLock.
    let dboid = unsafe { choose_oid(rel, o.oid) };
    // SAFETY: as above.
    unsafe {
        catalog::insert_database_row(
            rel,
            &NewDatabase {
                oid: dboid,
                name: dbname,
                owner,
                encoding: locale.encoding,
                locale_provider: locale.provider,
                is_template: o.is_template,
                allow_connections: o.allow_connections,
                connection_limit: o.connection_limit,
                tablespace: dst_tablespace,
                collate: &locale.collate,
                ctype: &locale.ctype,
                locale: locale.locale.as_deref(),
                icu_rules: locale.icu_rules.as_deref(),
                collation_version: collation_version.as_deref(),
            },
            &template,
        )
    };
    // The template's shared dependencies are copied under the fence.
    catalog::record_owner(dboid, owner);

    // 5.-11. From the first clone on, any failure must remove what was
    // cloned (cleanup.rs); the catalog row goes with the aborted
    // transaction.
    let mut stats = BranchStats {
        database: dbname.to_string_lossy().into_owned(),
        template: template_name.to_string_lossy().into_owned(),
        ..Default::default()
    };
    cleanup::guarded(dboid, || {
        // Before the fence: write the template's dirty buffers to the
        // kernel and the kernel's dirty pages to disk, so that behind the
        // fence the flush and the clone only handle what changed since.
        let sync_started = Instant::now();
        // SAFETY: writes out the shared buffers of a database by OID; the
        // template is locked against DROP (step 3).
        unsafe { pg_sys::FlushDatabaseBuffers(template.oid) };
        for step in &steps {
            if let Err(e) = presync(&step.src) {
                error(
                    file_error_code(e.raw_os_error()),
                    format!(
                        "could not sync \"{}\" before branching it: {}",
                        step.src.display(),
                        errno_text(&e)
                    ),
                );
            }
        }

        stats.sync_ms = ms(sync_started.elapsed());

        // 5. Fence the template's writers (fence.rs). Everything before
        // this point (validation, catalog row, the pre-flush) and everything
        // after step 9 (the checkpoint) runs while writers carry on; only
        // the flush, the clone and the WAL record run behind the fence.
        let fence = Fence::raise(template.oid, template.tablespace, &template_name);
        stats.fence_wait_ms = ms(fence.waited);
        stats.fence_up_at = fence.up_at;
        stats.relations = fence.relations as i64;

        // Everything that depends on the template's contents is read now
        // that they cannot change: which directories to clone (a writer we
        // waited for may have made a table in a tablespace where the
        // template had no files), the tablespace rules that depend on
        // them, and the shared dependencies. Catalog rows read before the
        // fence are only those whose changes the template's database lock
        // excludes (dattablespace, dathasloginevt: ALTER DATABASE SET
        // TABLESPACE and CREATE EVENT TRIGGER ... ON login take
        // AccessExclusiveLock on it) or whose staleness is on the safe side
        // (datfrozenxid, datminmxid: catalog::hold_frozen_ids).
        // SAFETY: drops this transaction's catalog snapshot; the next
        // catalog scan takes a new one, after the fence.
        unsafe { pg_sys::InvalidateCatalogSnapshot() };
        if let Some(name) = &o.tablespace {
            check_new_default_tablespace(&template, &template_name, dst_tablespace, name);
        }
        let steps = steps_or_error(
            plan_reusing(template.oid, template.tablespace, dst_tablespace, &steps),
            &template_name,
        );
        catalog::copy_shared_dependencies(template.oid, dboid);

        // 6. Flush. Every page that committed transactions changed goes to
        // the kernel, so the clone sees it; no transaction that could still
        // commit or abort has written to the template. Unlike core's
        // FILE_COPY we do not checkpoint first: a file whose unlink the
        // checkpointer has deferred is either skipped (it vanished) or
        // cloned as the empty tombstone it is, used by no relation.
        // SAFETY: as before the fence.
        unsafe { pg_sys::FlushDatabaseBuffers(template.oid) };

        // 7. Clone each directory, and 8. log each one as core's FILE_COPY
        // does, so crash recovery and standbys can rebuild it.
        let clone_started = Instant::now();
        let backups = backup::Watch::start();
        let mut last_lsn = 0;
        let mut logged = Vec::new();
        for step in &steps {
            let dst = ffi::database_path(dboid, step.dst_tablespace);
            cleanup::created(step.dst_tablespace, dst.clone());
            if let Err(e) = clone_dir(&step.src, &dst, step.method) {
                clone_error(&step.src, &dst, step.method, e);
            }
            let record = wal::log_create(
                dboid,
                step.dst_tablespace,
                template.oid,
                step.src_tablespace,
                step.method,
            );
            last_lsn = record.end;
            cleanup::logged(step.dst_tablespace);
            logged.push((dst, record));
        }
        stats.clone_ms = ms(clone_started.elapsed());
        let during_backup = backups.saw_backup();
        let all_snapshots = steps.iter().all(|s| s.method == Method::Snapshot);
        stats.method = if all_snapshots {
            Method::Snapshot
        } else {
            Method::Reflink
        }
        .name()
        .into();

        // 9. Lower the fence: the copy and its WAL record exist.
        let (up, down_at) = fence.lower();
        stats.fence_ms = ms(up);
        stats.fence_down_at = down_at;

        // Mark each directory with its record, as redo marks what it
        // builds, so that archive recovery of this data directory (after
        // pg_rewind, which replays the records since the last common
        // checkpoint here) keeps it rather than clone the template again
        // (wal.rs). Crash recovery keeps it anyway, so this is done after
        // the fence, and not fsynced.
        for (dst, record) in &logged {
            wal::mark_built(dst, record);
        }

        // Record the branch in the registry (registry.rs): a row of the
        // shared catalog pg_shseclabel, written in this transaction, so it
        // commits with the pg_database row or not at all.
        let record_started = Instant::now();
        registry::record_branch(&registry::NewBranch {
            db: dboid,
            parent: template.oid,
            parent_name: &template_name,
            method: &stats.method,
            lsn: logged.first().map_or(last_lsn, |(_, r)| r.start),
            expires_after: gucs::default_expiry(),
        });
        stats.record_ms = ms(record_started.elapsed());

        // A base backup that ran while we logged may hold the template as
        // it was at another moment than the branch's, and its replay would
        // clone that (backup.rs). Write the branch into WAL page by page,
        // as core's WAL_LOG strategy does, so replay rebuilds it exactly.
        // Its files are still nobody else's: it is invisible until we
        // commit, so the template's writers need not wait for this.
        if during_backup {
            let logging_started = Instant::now();
            let dirs: Vec<_> = steps
                .iter()
                .map(|s| {
                    (
                        s.dst_tablespace,
                        ffi::database_path(dboid, s.dst_tablespace),
                    )
                })
                .collect();
            stats.wal_logged_pages = backup::log_contents(dboid, &dirs);
            stats.wal_log_ms = ms(logging_started.elapsed());
        }

        // 10. Full-page-image rule: before the branch can be used (that
        // is, before we commit), a checkpoint must have started after its
        // records, so that the first change to each of its pages carries a
        // full-page image. With our own record it is enough to wait for
        // the checkpoint to start (wal.rs explains why crash recovery is
        // then safe). With core's record, redo would re-copy the template
        // as it is after a crash, so we wait for the whole checkpoint, as
        // core's FILE_COPY does: crash recovery then never replays it.
        //
        // We also wait for the whole checkpoint when the new OID may have
        // belonged to a database dropped since the last completed
        // checkpoint: DROP DATABASE checkpoints before it logs the drop, so
        // crash recovery would replay that drop, removing our directory
        // (the same path), and then our record would clone the template as
        // it is on disk after the crash (wal::oid_may_be_reused).
        let checkpoint_started = Instant::now();
        if wal::core_record() || wal::oid_may_be_reused(dboid) {
            ffi::request_checkpoint(
                ffi::CHECKPOINT_IMMEDIATE | ffi::CHECKPOINT_FORCE | ffi::CHECKPOINT_WAIT,
            );
        } else {
            wal::wait_for_checkpoint_start(last_lsn);
        }
        stats.checkpoint_ms = ms(checkpoint_started.elapsed());

        // SAFETY: `rel` is the pg_database relation opened in step 4, not
        // closed since; its lock is kept to commit (NoLock).
        unsafe { pg_sys::table_close(rel, pg_sys::NoLock as _) };

        // As core: commit synchronously, to shorten the window in which a
        // crash leaves a directory that no pg_database row owns.
        // SAFETY: sets a flag of this backend's transaction state.
        unsafe { pg_sys::ForceSyncCommit() };
    });

    stats.total_ms = ms(started.elapsed());
    stats::publish(stats);
    dboid
}

/// Whether the current role passes core's two privilege checks for
/// copying `t`: CREATEDB, and the right to copy it (it is a template, or
/// the role owns it).
pub fn may_copy(t: &DatabaseRow) -> bool {
    // SAFETY: reads this backend's current user.
    have_createdb_privilege()
        && (t.is_template || compat::database_ownercheck(t.oid, unsafe { pg_sys::GetUserId() }))
}

/// Core's `have_createdb_privilege()`.
fn have_createdb_privilege() -> bool {
    // SAFETY: syscache lookup of the current role, released before return.
    unsafe {
        if pg_sys::superuser() {
            return true;
        }
        let cache = pg_sys::SysCacheIdentifier::AUTHOID as i32;
        let tuple = pg_sys::SearchSysCache1(cache, pg_sys::GetUserId().into());
        if tuple.is_null() {
            return false;
        }
        let ok = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_authid>(tuple)).rolcreatedb;
        pg_sys::ReleaseSysCache(tuple);
        ok
    }
}

/// The new database's default tablespace, checked as core checks it.
fn resolve_tablespace(o: &CreatedbOptions, t: &DatabaseRow, template_name: &CStr) -> Oid {
    let Some(name) = &o.tablespace else {
        // No permission check on this path, as in core.
        return t.tablespace;
    };
    // SAFETY: a NUL-terminated name; raises core's ERROR if there is no
    // such tablespace.
    let ts = unsafe { pg_sys::get_tablespace_oid(name.as_ptr(), false) };
    // SAFETY: reads this backend's current user.
    let acl =
        compat::tablespace_aclcheck(ts, unsafe { pg_sys::GetUserId() }, pg_sys::ACL_CREATE as _);
    if acl != pg_sys::AclResult::ACLCHECK_OK {
        // SAFETY: a NUL-terminated name; raises core's ERROR.
        unsafe {
            pg_sys::aclcheck_error(acl, pg_sys::ObjectType::OBJECT_TABLESPACE, name.as_ptr())
        };
    }
    if ts == pg_sys::GLOBALTABLESPACE_OID {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "pg_global cannot be used as default tablespace",
        );
    }
    check_new_default_tablespace(t, template_name, ts, name);
    ts
}

/// As core: moving the default tablespace (to `ts`, named `name`) is
/// refused if the template already has files in the new one, or the copy's
/// pg_class would name that tablespace both explicitly and as "default".
/// Checked before anything is written, and again under the fence.
fn check_new_default_tablespace(t: &DatabaseRow, template_name: &CStr, ts: Oid, name: &CStr) {
    if ts != t.tablespace && has_entries(&ffi::database_path(t.oid, ts)) {
        Report::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "cannot assign new default tablespace \"{}\"",
                name.to_string_lossy()
            ),
        )
        .detail(format!(
            "There is a conflict because database \"{}\" already has some tables in this tablespace.",
            template_name.to_string_lossy()
        ))
        .error();
    }
}

/// The steps of a plan, or the error that says why there are none: the
/// template cannot be branched after all (it moved since the hook looked),
/// or the filesystem failed us (where and why, as core's copy would say).
fn steps_or_error(plan: Plan, template_name: &CStr) -> Vec<CloneStep> {
    match plan {
        Plan::Clone(steps) => steps,
        Plan::Core(why) => Report::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "cannot branch database \"{}\"",
                template_name.to_string_lossy()
            ),
        )
        .detail(why.reason)
        .error(),
        Plan::Failed(e) => error(file_error_code(e.raw_os_error()), e.to_string()),
    }
}

/// The new database's OID: the one given with OID (checked as core checks
/// it) or a new one whose directory name is free in every tablespace.
///
/// # Safety
/// `rel` must be `pg_database`, open with RowExclusiveLock.
unsafe fn choose_oid(rel: pg_sys::Relation, requested: Oid) -> Oid {
    if requested == pg_sys::InvalidOid {
        // SAFETY: `rel` is as `new_database_oid` needs (our own contract).
        return unsafe { catalog::new_database_oid(rel) };
    }
    // SAFETY: a syscache lookup by OID; the result is NULL or a palloc'd
    // NUL-terminated name.
    let existing = unsafe { pg_sys::get_database_name(requested) };
    if !existing.is_null() {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "database OID {} is already in use by database \"{}\"",
                requested.to_u32(),
                // SAFETY: non-NULL, so a NUL-terminated name (above).
                unsafe { CStr::from_ptr(existing) }.to_string_lossy()
            ),
        );
    }
    if catalog::file_conflict(requested) {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "data directory with the specified OID {} already exists",
                requested.to_u32()
            ),
        );
    }
    requested
}

/// Report a failed clone.
fn clone_error(
    src: &std::path::Path,
    dst: &std::path::Path,
    method: Method,
    e: pg_branch_storage::Error,
) -> ! {
    Report::new(file_error_code(e.raw_os_error()), e.to_string())
        .detail(format!(
            "Branching \"{}\" to \"{}\" by {method}.",
            src.display(),
            dst.display()
        ))
        .error()
}
