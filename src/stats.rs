//! What one branch took, step by step: `BranchStats`, filled in by
//! `branch::createdb` and kept for the session, where
//! `pgbranch.last_branch()` and the benchmarks read it.

use crate::error::Report;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::time::Duration;

/// Timings of one branch, for `pgbranch.last_branch()` and the benchmarks.
#[derive(Debug, Clone, Default)]
pub struct BranchStats {
    pub database: String,
    pub template: String,
    pub method: String,
    /// Relations of the template under the fence.
    pub relations: i64,
    /// Writing the template's dirty data out before the fence.
    pub sync_ms: f64,
    /// Waiting for the template's writers to finish (raising the fence).
    pub fence_wait_ms: f64,
    /// Writers of the template paused: fence complete to fence lowered.
    pub fence_ms: f64,
    /// Server time when the fence was complete, and just before it was
    /// lowered: every write committed before the first is in the branch,
    /// none committed after the second is, and none commits in between.
    pub fence_up_at: pg_sys::TimestampTz,
    pub fence_down_at: pg_sys::TimestampTz,
    pub clone_ms: f64,
    /// Writing the branch's registry record (registry.rs).
    pub record_ms: f64,
    /// Pages written into WAL because a base backup ran (backup.rs), and
    /// the time that took.
    pub wal_logged_pages: i64,
    pub wal_log_ms: f64,
    pub checkpoint_ms: f64,
    pub total_ms: f64,
}

thread_local! {
    /// The last branch this session made.
    static LAST: RefCell<Option<BranchStats>> = const { RefCell::new(None) };
}

/// The last branch this session made, if any.
pub fn last_branch() -> Option<BranchStats> {
    LAST.with(|l| l.borrow().clone())
}

/// A duration in milliseconds, as `last_branch()` shows them.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The branch is made: say so at DEBUG1 and keep its figures for the
/// session (until its next branch).
pub fn publish(stats: BranchStats) {
    Report::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        format!(
            "branched database \"{}\" from \"{}\" by {} in {:.1} ms (writers paused {:.1} ms, waited {:.1} ms for them)",
            stats.database, stats.template, stats.method, stats.total_ms, stats.fence_ms, stats.fence_wait_ms
        ),
    )
    .debug1();
    LAST.with(|l| *l.borrow_mut() = Some(stats));
}
