//! The writer fence (step 5 of the protocol in branch.rs): while it is
//! up, nobody writes to the template, and nobody holds a row lock in it, so
//! a clone taken then is a transactionally consistent copy that names no
//! transaction in progress.
//!
//! The fence is an `ExclusiveLock` on every relation of the template: first
//! its `pg_class`, so no relation can be created or changed while we list
//! them, then every relation that `pg_class` lists. ExclusiveLock conflicts
//! with every lock but AccessShareLock: with the writers' (RowExclusiveLock
//! for INSERT/UPDATE/DELETE and `nextval`, ShareUpdateExclusiveLock for
//! VACUUM, ANALYZE and CREATE INDEX CONCURRENTLY, ShareLock for CREATE
//! INDEX, and everything stronger) and with the row lockers' (RowShareLock:
//! `SELECT … FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE`, and every
//! foreign-key check). Plain readers (AccessShareLock) and new connections
//! never wait. Relation locks are held to the end of the transaction that
//! took them, so once the fence is complete every transaction that wrote
//! to the template or locked one of its rows has committed or aborted, and
//! no new one can until we lower it.
//!
//! Why row lockers too: a row lock writes the locker's XID (or a multixact
//! naming it) into the tuple's xmax, and clears the page's all-frozen bit
//! in the visibility map, a different buffer. With row lockers let through
//! (the first version fenced with ShareLock), a branch could hold a
//! lock-only xmax of a transaction still running in another database, and
//! a heap page and its VM page could reach the clone at different moments:
//! an all-frozen bit over an unfrozen xmax, which aggressive VACUUM in the
//! branch then trusts.
//!
//! Deadlock freedom: we never wait for a lock while holding another fence
//! lock. Locks are taken without waiting; when one is busy, every fence lock
//! is released, we wait for that relation's holders alone, and start again
//! holding just that one. A writer that takes its tables in a different
//! order than we do can therefore never deadlock with us, only make us
//! retry. While we wait, we stay out of the relation's lock queue as long
//! as we can (see `Fence::wait_alone`), so a long write transaction holds
//! up the branch, not every other writer of the template.
//!
//! Readers keep running while the fence is up. They may still change pages
//! of the template without a conflicting lock (hint bits, HOT pruning), and
//! a buffer they dirty may be written while we clone. Each such write is one
//! 8 kB `pwrite` that both btrfs (page-locked buffered writes against the
//! snapshot's flush) and XFS (the inode lock FICLONE takes) apply
//! atomically with respect to the clone, and both versions of such a page
//! hold the same committed data, so either is correct in the branch.
//!
//! Reading the template's `pg_class` from another database works as in
//! core's `ScanSourceDatabasePgClass()`: through its relation map and the
//! buffer manager, never the relcache. Unlike core, other sessions may be
//! connected to the template, so the lock on its `pg_class` is what
//! guarantees no in-progress pg_class writer; the snapshot is taken after it.

use crate::catalog_pages::{self, Visibility};
use crate::error::Report;
use crate::ffi;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::ffi::CStr;
use std::time::{Duration, Instant};

/// One relation of the template, as its `pg_class` row describes it.
#[derive(Debug, Clone)]
struct Relation {
    oid: Oid,
    name: String,
    kind: u8,
}

/// The lock mode of the fence (module comment).
const FENCE_LOCK: pg_sys::LOCKMODE = pg_sys::ExclusiveLock as _;

/// A raised fence: the relations of `db` we hold [`FENCE_LOCK`] on.
pub struct Fence {
    db: Oid,
    held: Vec<Oid>,
    /// When the fence became complete (also as a server timestamp, to
    /// compare with commit timestamps).
    pub up_since: Instant,
    pub up_at: pg_sys::TimestampTz,
    /// How long raising it took (waiting for writers to finish).
    pub waited: Duration,
    /// How many relations it covers.
    pub relations: usize,
}

impl Fence {
    /// Raise the fence around database `db` (default tablespace
    /// `tablespace`, named `name` in messages). Waits for every transaction
    /// that wrote to it, honouring `lock_timeout`, `statement_timeout` and
    /// cancellation; the deadlock detector also cancels an autovacuum
    /// worker that keeps us waiting.
    pub fn raise(db: Oid, tablespace: Oid, name: &CStr) -> Fence {
        let started = Instant::now();
        let mut fence = Fence {
            db,
            held: Vec::new(),
            up_since: started,
            up_at: 0,
            waited: Duration::ZERO,
            relations: 0,
        };
        let mut rounds = 0;
        'attempt: loop {
            check_for_interrupts!();
            // After ORDERED_AFTER rounds, queue for each busy relation in
            // turn, keeping the others, within one short budget
            // (`Fence::queue_for`).
            let budget = (rounds >= ORDERED_AFTER).then(OrderedRound::start);
            if !fence.held.contains(&pg_sys::RelationRelationId)
                && !fence.try_take(pg_sys::RelationRelationId)
                && !budget.as_ref().is_some_and(|b| {
                    fence.queue_for(pg_sys::RelationRelationId, b, "pg_class", name)
                })
            {
                fence.wait_alone(pg_sys::RelationRelationId, "pg_class", name);
                rounds += 1;
                continue 'attempt;
            }
            // pg_class is ours: the list cannot change until we let go.
            let relations = template_relations(db, tablespace);
            // Before taking one more: a fence the lock table cannot hold
            // would fill it for every session of the cluster.
            LockTable::now().refuse_unless_room_for(relations.len() + 1, name);
            for rel in &relations {
                if !fence.held.contains(&rel.oid)
                    && !fence.try_take(rel.oid)
                    && !budget
                        .as_ref()
                        .is_some_and(|b| fence.queue_for(rel.oid, b, &rel.name, name))
                {
                    fence.wait_alone(rel.oid, &rel.name, name);
                    rounds += 1;
                    continue 'attempt;
                }
            }
            fence.relations = relations.len();
            break;
        }
        fence.up_since = Instant::now();
        // SAFETY: reads the clock.
        fence.up_at = unsafe { pg_sys::GetCurrentTimestamp() };
        fence.waited = fence.up_since - started;
        fence
    }

    /// Lower the fence: writers of the template resume. Returns how long
    /// it was up, and the server time just before the first writer could
    /// resume.
    pub fn lower(mut self) -> (Duration, pg_sys::TimestampTz) {
        // SAFETY: reads the clock.
        let down_at = unsafe { pg_sys::GetCurrentTimestamp() };
        self.release_all();
        (self.up_since.elapsed(), down_at)
    }

    fn try_take(&mut self, rel: Oid) -> bool {
        if !try_lock(&relation_tag(self.db, rel)) {
            return false;
        }
        self.held.push(rel);
        true
    }

    fn release_all(&mut self) {
        for rel in self.held.drain(..) {
            let tag = relation_tag(self.db, rel);
            // SAFETY: we took exactly this lock once per entry of `held`.
            unsafe { pg_sys::LockRelease(&tag, FENCE_LOCK, false) };
        }
    }

    /// In an ordered round: queue for `rel` while keeping what we hold, until
    /// it is ours (true) or the round's budget is spent (false: the caller
    /// lets go of everything and waits for `rel` alone).
    ///
    /// Why this bounds the fence. Releasing everything and waiting for one
    /// relation at a time starves when several relations are written
    /// independently (each attempt needs every one of them free at once;
    /// five tables with three pgbench clients each kept a branch waiting
    /// for minutes). Queueing keeps what we took: writers of a relation we
    /// hold queue behind us, the current holders of the next one finish,
    /// and new writers of it queue behind us too, so a round ends once the
    /// transactions that held the template's relations when it began have
    /// ended, as long as that takes less than its budget.
    ///
    /// Why no writer pays for it. Waiting while holding locks can close a
    /// cycle with a writer that waits for a relation we hold while holding
    /// the one we wait for. The deadlock detector then cancels whichever
    /// waiter's deadlock_timeout expires first; so the whole round, from
    /// its first lock on, lasts at most deadlock_timeout / 2 (a lock
    /// timeout of what is left of it on each wait): every writer that
    /// waits for us started after the round did, and we let go before its
    /// deadlock_timeout expires, and before ours.
    fn queue_for(
        &mut self,
        rel: Oid,
        round: &OrderedRound,
        rel_name: &str,
        db_name: &CStr,
    ) -> bool {
        let Some(left) = round.left_ms() else {
            return false;
        };
        // SAFETY: LockTimeout is the lock_timeout setting of this backend,
        // read by the lock wait we are about to start, and put back below
        // whatever happens.
        let user_timeout = unsafe { pg_sys::LockTimeout };
        let ours = if user_timeout > 0 && user_timeout <= left {
            user_timeout
        } else {
            left
        };
        let tag = relation_tag(self.db, rel);
        // SAFETY: as above.
        unsafe { pg_sys::LockTimeout = ours };
        let taken = PgTryBuilder::new(|| {
            // SAFETY: a blocking LockAcquire; a lock timeout unwinds to the
            // catch below, with the lock manager's wait already undone
            // (ProcessInterrupts calls LockErrorCleanup before it raises).
            unsafe { pg_sys::LockAcquire(&tag, FENCE_LOCK, false, false) };
            true
        })
        .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, |e| {
            // SAFETY: as above.
            unsafe { pg_sys::LockTimeout = user_timeout };
            if ours == user_timeout {
                // Who holds it, read only for the error (a round may call
                // this many times): they still hold it now.
                let holders = holders(self.db, rel);
                lock_timeout_error(
                    &e,
                    &holders,
                    &describe(&holders),
                    rel_name,
                    &db_name.to_string_lossy(),
                );
            }
            false
        })
        .finally(|| {
            // SAFETY: as above.
            unsafe { pg_sys::LockTimeout = user_timeout };
        })
        .execute();
        if taken {
            self.held.push(rel);
        }
        taken
    }

    /// Let go of everything, then wait for `rel` alone and keep it.
    ///
    /// Standing in the relation's lock queue would make every new writer
    /// of it queue behind us for as long as the current holders take: one
    /// session idle in a write transaction would stall all writers of that
    /// table. So we first wait for the transactions that hold conflicting
    /// locks *now*, outside the queue (as CREATE INDEX CONCURRENTLY waits
    /// for lockers), then try again without waiting; writers go on
    /// meanwhile. Under a steady stream of short write transactions some
    /// transaction nearly always holds the lock, so after [`QUEUE_AFTER`]
    /// rounds we join the queue, for at most deadlock_timeout / 2 at a time
    /// (`queue_for`): the holders of that moment finish within
    /// milliseconds, and new writers wait behind us only that long.
    fn wait_alone(&mut self, rel: Oid, rel_name: &str, db_name: &CStr) {
        self.release_all();
        let tag = relation_tag(self.db, rel);
        let holders = holders(self.db, rel);
        if let Some(Who::Prepared { xid, gid }) = holders
            .iter()
            .map(|h| &h.who)
            .find(|w| matches!(w, Who::Prepared { .. }))
        {
            Report::new(
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!(
                    "waiting for prepared transaction \"{gid}\" (xid {xid}), which wrote to relation \"{rel_name}\" of template database \"{}\"",
                    db_name.to_string_lossy()
                ),
            )
            .hint("Finish it with COMMIT PREPARED or ROLLBACK PREPARED; SELECT * FROM pg_prepared_xacts shows it.")
            .notice();
        }
        // A holder of ExclusiveLock or stronger (another branch's fence, or
        // a LOCK TABLE) already makes every new writer queue behind it, so
        // joining the queue at once costs the writers nothing, and we then
        // wait only until that lock is released, not for its transaction
        // to end (a branch's ends after its checkpoint).
        let rounds = if holders.iter().any(|h| h.blocks_writers) {
            0
        } else {
            QUEUE_AFTER
        };
        let described = describe(&holders);
        let db_display = db_name.to_string_lossy().into_owned();
        let rel_display = rel_name.to_string();
        // Wait for the holders of this moment, outside the queue, `rounds`
        // times, and try once more; true once the lock is ours.
        let wait_outside = |rounds: usize| {
            PgTryBuilder::new(|| {
                for _ in 0..rounds {
                    if try_lock(&tag) {
                        return true;
                    }
                    wait_for_holders(&tag);
                    check_for_interrupts!();
                }
                try_lock(&tag)
            })
            .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, |e| {
                lock_timeout_error(&e, &holders, &described, &rel_display, &db_display)
            })
            .execute()
        };
        if wait_outside(rounds) {
            self.held.push(rel);
            return;
        }
        // In the queue, new writers wait behind us; never stay there longer
        // than deadlock_timeout / 2 at a time (`queue_for`), or a client
        // that holds this relation while it waits for one of those writers
        // (one thread driving two sessions) would wait for us forever, and
        // we for it. Out of the queue, that writer gets its lock, and the
        // holder can finish.
        while !self.queue_for(rel, &OrderedRound::start(), rel_name, db_name) {
            if wait_outside(1) {
                self.held.push(rel);
                return;
            }
        }
    }
}

/// Rounds of letting go of everything and waiting for one relation before
/// a round queues for each relation in turn (`Fence::queue_for`).
const ORDERED_AFTER: usize = 3;

/// The time budget of an ordered round: deadlock_timeout / 2 from its start.
struct OrderedRound {
    deadline: Instant,
}

impl OrderedRound {
    fn start() -> OrderedRound {
        // SAFETY: reads this backend's deadlock_timeout setting.
        let deadlock_timeout = unsafe { pg_sys::DeadlockTimeout }.max(2);
        OrderedRound {
            deadline: Instant::now() + Duration::from_millis(deadlock_timeout as u64 / 2),
        }
    }

    /// Milliseconds left, if at least one.
    fn left_ms(&self) -> Option<i32> {
        let left = self
            .deadline
            .saturating_duration_since(Instant::now())
            .as_millis();
        (left >= 1).then_some(left.min(i32::MAX as u128) as i32)
    }
}

/// The user's lock_timeout expired while the fence waited for `rel_name`:
/// core's message, with who held the lock.
fn lock_timeout_error(
    e: &pg_sys::panic::CaughtError,
    holders: &[Holder],
    described: &str,
    rel_name: &str,
    db_name: &str,
) -> ! {
    let hint = if holders
        .iter()
        .any(|h| matches!(h.who, Who::Prepared { .. }))
    {
        "Finish the prepared transaction with COMMIT PREPARED or ROLLBACK PREPARED; SELECT * FROM pg_prepared_xacts shows it."
    } else {
        "A branch waits until every transaction that wrote to its template or locked one of its rows has ended; pg_stat_activity shows the sessions."
    };
    let message = match e {
        pg_sys::panic::CaughtError::PostgresError(r)
        | pg_sys::panic::CaughtError::ErrorReport(r)
        | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r.message().to_string(),
    };
    Report::new(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, message)
        .detail(format!(
            "CREATE DATABASE was waiting for ExclusiveLock on relation \"{rel_name}\" of template database \"{db_name}\", held by {described}."
        ))
        .hint(hint)
        .error()
}

/// The size of the shared lock table, which every fence lock (one per
/// relation of the template) goes into: core sizes it for
/// max_locks_per_transaction × (max backends + max_prepared_transactions)
/// locks, and past that it eats the shared memory every other hash table
/// needs, then fails ("out of shared memory") for whoever asks next.
pub struct LockTable {
    pub per_xact: i64,
    pub processes: i64,
}

impl LockTable {
    pub fn now() -> LockTable {
        // SAFETY: reads two integers the postmaster set at start.
        let (per_xact, backends) = unsafe { (pg_sys::max_locks_per_xact, pg_sys::MaxBackends) };
        let prepared: i64 = ffi::setting("max_prepared_transactions")
            .parse()
            .unwrap_or(0);
        LockTable {
            per_xact: per_xact as i64,
            processes: backends as i64 + prepared,
        }
    }

    pub fn capacity(&self) -> i64 {
        self.per_xact * self.processes
    }

    /// The max_locks_per_transaction that holds a fence of `locks` twice
    /// over, leaving room for everyone else's locks while it is up.
    pub fn advised_for(&self, locks: usize) -> i64 {
        (2 * locks as i64 + self.processes - 1) / self.processes
    }

    /// Raise core's "out of shared memory" (53200) if a fence of `locks`
    /// locks on template `name` cannot fit, before it takes them.
    fn refuse_unless_room_for(&self, locks: usize, name: &CStr) {
        if (locks as i64) <= self.capacity() {
            return;
        }
        Report::new(PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY, "out of shared memory")
            .detail(format!(
                "Branching template database \"{}\" locks each of its relations: {locks} locks; the lock table holds {} (max_locks_per_transaction {} × {} processes).",
                name.to_string_lossy(),
                self.capacity(),
                self.per_xact,
                self.processes
            ))
            .hint(format!(
                "You might need to increase max_locks_per_transaction to at least {}.",
                self.advised_for(locks)
            ))
            .error()
    }
}

/// Rounds of waiting outside the lock queue before joining it.
const QUEUE_AFTER: usize = 5;

/// Take the fence lock on `tag` if nobody holds a conflicting lock.
fn try_lock(tag: &pg_sys::LOCKTAG) -> bool {
    // SAFETY: `tag` is a valid LOCKTAG; not waiting, so no error other
    // than out-of-shared-memory can come from here, and that unwinds.
    unsafe {
        pg_sys::LockAcquire(tag, FENCE_LOCK, false, true)
            != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
    }
}

/// Wait until every transaction that holds a lock conflicting with
/// the fence lock on `tag` right now has ended, without queueing for `tag`
/// itself. Honours lock_timeout and cancellation (the waits are lock
/// waits on each transaction's virtual XID).
fn wait_for_holders(tag: &pg_sys::LOCKTAG) {
    // SAFETY: GetLockConflicts returns an array of `count` VXIDs that we
    // copy before waiting; VirtualXactLock waits for one to end (a prepared
    // transaction included).
    unsafe {
        let mut count = 0;
        let vxids = pg_sys::GetLockConflicts(tag, FENCE_LOCK, &mut count);
        let vxids: Vec<_> = (0..count as usize).map(|i| *vxids.add(i)).collect();
        for vxid in vxids {
            pg_sys::VirtualXactLock(vxid, true);
        }
    }
}

/// `SET_LOCKTAG_RELATION(tag, db, rel)`.
fn relation_tag(db: Oid, rel: Oid) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        locktag_field1: db.to_u32(),
        locktag_field2: rel.to_u32(),
        locktag_field3: 0,
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_RELATION as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    }
}

/// A transaction holding a lock that conflicts with the fence.
struct Holder {
    who: Who,
    /// Whether its lock is ExclusiveLock or stronger.
    blocks_writers: bool,
}

enum Who {
    Backend(i32),
    Prepared { xid: i64, gid: String },
}

/// Who holds a lock on relation `rel` of database `db` that conflicts with
/// the fence (any but AccessShareLock), read from `pg_catalog.pg_locks`. A prepared transaction shows there with
/// no PID; its XID and GID come from its own transaction-ID lock and
/// `pg_prepared_xacts`. (The lock manager's own answer, GetLockConflicts,
/// cannot tell a prepared transaction from the session that prepared it
/// in current minor releases.)
fn holders(db: Oid, rel: Oid) -> Vec<Holder> {
    const QUERY: &str = "
        SELECT l.pid, p.transaction::text::bigint, p.gid,
               bool_or(l.mode IN ('ExclusiveLock', 'AccessExclusiveLock'))
          FROM pg_catalog.pg_locks l
          LEFT JOIN pg_catalog.pg_locks x ON l.pid IS NULL AND x.pid IS NULL AND x.locktype = 'transactionid'
                              AND x.virtualtransaction = l.virtualtransaction
          LEFT JOIN pg_catalog.pg_prepared_xacts p ON p.transaction = x.transactionid
         WHERE l.locktype = 'relation' AND l.database = $1 AND l.relation = $2 AND l.granted
           AND l.mode <> 'AccessShareLock'
         GROUP BY 1, 2, 3
         ORDER BY 1, 2";
    Spi::connect(|c| {
        let rows = c.select(QUERY, None, &[db.into(), rel.into()])?;
        let mut out = Vec::new();
        for row in rows {
            let who = match (
                row.get::<i32>(1)?,
                row.get::<i64>(2)?,
                row.get::<String>(3)?,
            ) {
                (Some(pid), _, _) => Who::Backend(pid),
                (None, Some(xid), Some(gid)) => Who::Prepared { xid, gid },
                _ => continue,
            };
            let blocks_writers = row.get::<bool>(4)?.unwrap_or(false);
            out.push(Holder {
                who,
                blocks_writers,
            });
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .unwrap_or_default()
}

fn describe(holders: &[Holder]) -> String {
    let parts: Vec<String> = holders
        .iter()
        .map(|h| match &h.who {
            Who::Backend(pid) => format!("process {pid}"),
            Who::Prepared { xid, gid } => format!("prepared transaction \"{gid}\" (xid {xid})"),
        })
        .collect();
    if parts.is_empty() {
        "a transaction that has since ended".into()
    } else {
        parts.join(", ")
    }
}

/// Every relation of database `db` that a writer could lock: all rows of
/// its `pg_class` visible now, except shared catalogs (not in the
/// template's directory) and other sessions' temporary tables (not copied,
/// and their writers must not hold a branch up). Tables come first, then
/// TOAST tables, then indexes, the order in which writers take them.
fn template_relations(db: Oid, tablespace: Oid) -> Vec<Relation> {
    // Under the fence's lock on the template's pg_class (module comment).
    let mut out: Vec<Relation> = catalog_pages::classes(db, tablespace, Visibility::Locked)
        .into_iter()
        .filter(|c| !c.shared && c.persistence != pg_sys::RELPERSISTENCE_TEMP)
        .map(|c| Relation {
            oid: c.oid,
            name: c.name,
            kind: c.kind,
        })
        .collect();
    let rank = |k: u8| match k {
        pg_sys::RELKIND_TOASTVALUE => 1,
        pg_sys::RELKIND_INDEX | pg_sys::RELKIND_PARTITIONED_INDEX => 2,
        _ => 0,
    };
    out.sort_by_key(|r| (rank(r.kind), r.oid.to_u32()));
    out
}
