//! The expiry worker, `pg_branch expiry`: drops the branches whose
//! registry record (registry.rs) says they have expired, as `DROP DATABASE
//! ... WITH (FORCE)` would, and logs each drop.
//!
//! - It is registered at server start (pg_branch is always preloaded) and
//!   starts once recovery has finished: never on a standby, and on a
//!   standby promoted to primary from then on.
//! - It does nothing while `pg_branch.expiry_interval` is 0 (the default);
//!   otherwise it looks every `expiry_interval` seconds. Both that setting
//!   and `pg_branch.expire_parents` take effect on reload.
//! - A branch that still has branches of its own is skipped, with a log
//!   line, unless `pg_branch.expire_parents` is on (its children then
//!   survive it, as after any DROP DATABASE of a parent). A template
//!   (`datistemplate`) is skipped too: DROP DATABASE refuses one.
//! - It is connected to no database, so it never holds a database open
//!   (core's CREATE DATABASE refuses a template anyone is connected to, and
//!   DROP DATABASE one anyone uses). DROP DATABASE needs a database to run
//!   in, though (it deletes rows of shared catalogs that only a backend of
//!   some database can open), so each look is a short-lived worker of its
//!   own, `pg_branch expiry pass`, connected to `pg_branch.expiry_database`
//!   (default `postgres`) as the bootstrap superuser, which exits when it
//!   is done. A core CREATE DATABASE or DROP DATABASE of that database
//!   meanwhile waits for it, as it waits up to 5 s for any session to go.
//! - A drop that fails (a prepared transaction on the branch, say) is
//!   logged and tried again at the next look. If the worker dies or is
//!   terminated it is restarted after 5 s.
//! - A skipped branch is logged by the first look after it expired, and by
//!   the first look after the worker starts or is turned on.
//!
//! Races: each drop first takes AccessExclusiveLock on the database (as
//! DROP DATABASE does), then reads the record again, so a set_expiry() or
//! clear_expiry() that committed in between (it takes
//! ShareUpdateExclusiveLock) is seen, and a database renamed or dropped in
//! between is not dropped by its old name.

use crate::catalog;
use crate::gucs;
use crate::registry;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use serde_json::Value;
use std::ffi::CString;
use std::time::Duration;

/// What `pg_stat_activity.backend_type` shows for the worker, and for
/// one look.
pub const WORKER_TYPE: &str = "pg_branch expiry";
const PASS_TYPE: &str = "pg_branch expiry pass";

/// Register the worker; from _PG_init, in the postmaster.
pub fn register() {
    BackgroundWorkerBuilder::new("pg_branch expiry worker")
        .set_type(WORKER_TYPE)
        .set_library("pg_branch")
        .set_function("pg_branch_expiry_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// The worker's main function: every `expiry_interval` seconds, start a
/// look and wait for it to end.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_branch_expiry_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database (module comment).
    BackgroundWorker::connect_worker_to_spi(None, None);
    let mut was_on = false;
    loop {
        let interval = gucs::EXPIRY_INTERVAL.get();
        // 0: wait for a reload that turns it on (no timeout).
        let timeout = (interval > 0).then(|| Duration::from_secs(interval as u64));
        if interval > 0 {
            start_look(!was_on, interval);
        }
        was_on = interval > 0;
        if !BackgroundWorker::wait_latch(timeout) {
            // Terminated (or the postmaster died): exit 1, so that a
            // pg_terminate_backend() of the worker restarts it (a shutdown
            // does not).
            // SAFETY: ends this process, as any bgworker's exit does.
            unsafe { pg_sys::proc_exit(1) };
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: reloads the configuration files in this process, as
            // every process does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
}

/// Start one look (`pg_branch_expiry_pass`) and wait for it to end.
/// `first`: the first look since the worker started or was turned on.
fn start_look(first: bool, interval: i32) {
    // The look's argument: whether to log every skip, and how far back a
    // new expiry is (module comment).
    let arg = if first { -1 } else { interval as i64 };
    let look = BackgroundWorkerBuilder::new(PASS_TYPE)
        .set_type(PASS_TYPE)
        .set_library("pg_branch")
        .set_function("pg_branch_expiry_pass")
        .enable_spi_access()
        .set_restart_time(None)
        .set_argument(Some(pg_sys::Datum::from(arg)))
        // SAFETY: reads this process's PID.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    match look {
        Ok(worker) => {
            let _ = worker.wait_for_shutdown();
        }
        Err(_) => log(format!(
            "pg_branch: could not start a look for expired branches (max_worker_processes is {}); trying again in {interval} s",
            crate::ffi::setting("max_worker_processes")
        )),
    }
}

/// One look, in a worker of its own connected to `expiry_database`.
/// `arg`: -1 to log every skip, else log the skips of branches that
/// expired in the last `arg` seconds.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_branch_expiry_pass(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let database = gucs::EXPIRY_DATABASE
        .get()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".into());
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    let recent = match arg.value() as i64 {
        -1 => None,
        s => Some(s),
    };
    look(recent);
}

/// A branch past its expiry, as one look found it.
struct Expired {
    db: Oid,
    name: String,
    expires_at: String,
    children: Vec<String>,
    is_template: bool,
}

/// One look: drop what has expired. A skip is logged if `recent` is
/// `None`, or if the branch expired in the last `recent` seconds.
fn look(recent: Option<i64>) {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let tell = |e: &Expired| match recent {
        None => true,
        Some(s) => e.expires_at > registry::timestamp_text(now - (s + 1) * 1_000_000),
    };
    for e in BackgroundWorker::transaction(expired) {
        if e.is_template {
            if tell(&e) {
                log(format!(
                    "pg_branch: not dropping expired branch \"{}\": it is a template (ALTER DATABASE ... IS_TEMPLATE false)",
                    e.name
                ));
            }
            continue;
        }
        if !e.children.is_empty() && !gucs::EXPIRE_PARENTS.get() {
            if tell(&e) {
                log(format!(
                    "pg_branch: not dropping expired branch \"{}\": it has branches of its own ({}); set pg_branch.expire_parents to drop it anyway",
                    e.name,
                    e.children.join(", ")
                ));
            }
            continue;
        }
        let outcome =
            PgTryBuilder::new(|| Ok(BackgroundWorker::transaction(|| drop_if_still_expired(&e))))
                .catch_others(|caught| {
                    // SAFETY: ends the failed transaction (releases its locks
                    // and memory), as PostgresMain does after an ERROR.
                    unsafe { pg_sys::AbortCurrentTransaction() };
                    Err(match caught {
                        pg_sys::panic::CaughtError::PostgresError(r)
                        | pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_string(),
                        pg_sys::panic::CaughtError::RustPanic { ereport, .. } => {
                            ereport.message().to_string()
                        }
                    })
                })
                .execute();
        match outcome {
            Ok(true) => {
                log(format!(
                    "pg_branch: dropped expired branch \"{}\" (expired at {})",
                    e.name, e.expires_at
                ));
            }
            Ok(false) => {}
            Err(message) => log(format!(
                "pg_branch: could not drop expired branch \"{}\": {message}",
                e.name
            )),
        }
    }
}

/// Every branch whose record's expiry is at or before now.
fn expired() -> Vec<Expired> {
    // SAFETY: reads the transaction's start time.
    let now = registry::timestamp_text(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() });
    let records = registry::scan();
    let parents: Vec<Oid> = records
        .iter()
        .filter_map(|(_, r)| r.get("parent_oid")?.as_u64())
        .map(|o| Oid::from(o as u32))
        .collect();
    let mut out = Vec::new();
    for (db, record) in &records {
        let Some(at) = record.get("expires_at").and_then(Value::as_str) else {
            continue;
        };
        if at > now.as_str() {
            continue;
        }
        let Some((name, row)) = catalog::database_row(*db) else {
            continue;
        };
        let children = records
            .iter()
            .zip(&parents)
            .filter(|(_, p)| **p == *db)
            .filter_map(|((child, _), _)| catalog::database_row(*child))
            .map(|(n, _)| n.to_string_lossy().into_owned())
            .collect();
        out.push(Expired {
            db: *db,
            name: name.to_string_lossy().into_owned(),
            expires_at: at.to_string(),
            children,
            is_template: row.is_template,
        });
    }
    out
}

/// Drop `e` if it is still the database of that name and still expired,
/// under AccessExclusiveLock (module comment). Whether it was dropped.
fn drop_if_still_expired(e: &Expired) -> bool {
    // Held until the end of the transaction, as dropdb() itself takes it
    // next.
    let locked = catalog::lock_database_oid(e.db, pg_sys::AccessExclusiveLock as _);
    if locked.map(|(n, _)| n.to_string_lossy().into_owned()) != Some(e.name.clone()) {
        return false;
    }
    // SAFETY: reads the transaction's start time.
    let now = registry::timestamp_text(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() });
    let still = registry::read(e.db)
        .and_then(|r| r.get("expires_at")?.as_str().map(|at| at <= now.as_str()))
        .unwrap_or(false);
    if !still {
        return false;
    }
    let name = CString::new(e.name.as_str()).expect("a database name has no NUL");
    // SAFETY: core's DROP DATABASE ... WITH (FORCE), by name, in this
    // transaction (which the caller commits); it terminates the branch's
    // sessions first, as the statement does.
    unsafe { pg_sys::dropdb(name.as_ptr(), true, true) };
    true
}

fn log(message: String) {
    pgrx::ereport!(LOG, PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION, message);
}
