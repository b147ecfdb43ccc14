//! WAL records for a branch: pg_branch's own resource manager, or core's
//! FILE_COPY record (`pg_branch.wal_record`).
//!
//! This module owns pg_branch's resource manager: writing its records
//! (`BRANCH_CREATE`, `BRANCH_CONVERT`, `BRANCH_RESET`) and replaying them. The conversion
//! itself is convert.rs's; its redo is here, with the other.
//!
//! One record per tablespace directory of the branch, written while the
//! writer fence is up, after the clone is complete and durable:
//!
//! - `pg_branch` (default): a custom resource manager (see
//!   <https://wiki.postgresql.org/wiki/CustomWALResourceManagers>). Its redo
//!   clones again with the best method of the host that replays it
//!   (snapshot, reflink, or core's plain `copydir()` as the last resort), so
//!   a standby on btrfs gets a copy-on-write branch too. Standbys and any
//!   server that replays this WAL must preload pg_branch.
//! - `core`: core's `XLOG_DBASE_CREATE_FILE_COPY`, which any PostgreSQL
//!   replays as a plain copy of the template directory.
//!
//! Crash recovery. The branch's directory is durable before its record is
//! written, and nobody can change the branch before its transaction
//! commits, which happens only after a checkpoint has started after the
//! record (the full-page-image rule, see `branch.rs`). So when crash
//! recovery (not archive recovery) replays our record and finds the
//! directory, that directory *is* the branch as it was made: redo keeps it,
//! and the branch's later WAL (full-page images first) brings it up to
//! date. Re-cloning instead would copy the template as it is on disk after
//! the crash, which may already hold changes made after the branch. Core's
//! record has no such rule in its redo, which is why the `core` setting
//! still waits for a whole checkpoint before commit, as core's FILE_COPY
//! does. In archive recovery (PITR, standbys) a plain directory, if a base
//! backup holds one, may be a partial copy, so redo removes it and clones
//! the template as replay has rebuilt it, as core does. A directory that
//! an earlier replay of this very record built (a standby that restarts
//! replays from its last restartpoint, before the record) is kept, on
//! every filesystem, because the template on disk may by then be newer
//! than the record: redo marks the directory it builds once the server is
//! consistent (before that, the template it clones may be fuzzy) with the
//! record's timeline and start LSN (an extended attribute,
//! `storage::set_record_mark`) before renaming it into place, and keeps a
//! directory with that mark. Nothing else carries the mark (not
//! pg_basebackup, pg_rewind or rsync), so a copy made any other way is
//! rebuilt. Branches made while a base backup ran are followed by their
//! pages, in core's records (backup.rs).

use crate::ffi;
use crate::gucs;
use pg_branch_storage::{
    clone_dir, convert_to_subvolume, errno_text, probe, record_mark, remove_convert_leftover,
    remove_dir, set_record_mark, set_reset_facts, Converted, Method, REDO_SUFFIX, RESET_SUFFIX,
};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::ffi::{c_char, CString};
use std::time::Duration;

/// While developing, the ID reserved for experiments; a released version
/// must reserve its own on the wiki page above (two extensions using 128
/// in one cluster cannot both load).
pub const RMGR_ID: pg_sys::RmgrId = 128;
const XLOG_BRANCH_CREATE: u8 = 0x00;
const XLOG_BRANCH_CONVERT: u8 = 0x10;
const XLOG_BRANCH_RESET: u8 = 0x20;

/// commands/dbcommands_xlog.h
const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
const XLOG_DBASE_DROP: u8 = 0x20;

/// Our record: the branch directory `<tablespace_id>/<db_id>` is a clone of
/// `<src_tablespace_id>/<src_db_id>`, made by `method` on the primary.
/// Same first four fields as core's `xl_dbase_create_file_copy_rec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct BranchRecord {
    db_id: Oid,
    tablespace_id: Oid,
    src_db_id: Oid,
    src_tablespace_id: Oid,
    method: u8,
    /// Named and zeroed: every byte of the struct goes into WAL, and
    /// implicit padding would carry whatever the stack held.
    pad: [u8; 3],
}

// The record's layout is on disk in WAL and read back by every version:
// checked when the crate compiles, so it cannot drift unnoticed.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<BranchRecord>() == 20);
    assert!(offset_of!(BranchRecord, db_id) == 0);
    assert!(offset_of!(BranchRecord, tablespace_id) == 4);
    assert!(offset_of!(BranchRecord, src_db_id) == 8);
    assert!(offset_of!(BranchRecord, src_tablespace_id) == 12);
    assert!(offset_of!(BranchRecord, method) == 16);
    assert!(offset_of!(BranchRecord, pad) == 17);
    assert!(size_of::<ConvertRecord>() == 8);
};

impl BranchRecord {
    fn method(&self) -> &'static str {
        match self.method {
            0 => "snapshot",
            _ => "reflink",
        }
    }
}

/// The directory `<tablespace_id>/<db_id>` was converted in place into a
/// btrfs subvolume (convert.rs); its contents did not change.
#[repr(C)]
#[derive(Clone, Copy)]
struct ConvertRecord {
    db_id: Oid,
    tablespace_id: Oid,
}

static mut RMGR: pg_sys::RmgrData = pg_sys::RmgrData {
    rm_name: c"pg_branch".as_ptr(),
    rm_redo: Some(redo),
    rm_desc: Some(desc),
    rm_identify: Some(identify),
    rm_startup: None,
    rm_cleanup: None,
    rm_mask: None,
    rm_decode: None,
};

/// Register the resource manager. Only possible while the postmaster loads
/// preload libraries, which `_PG_init` has checked.
pub fn register() {
    // SAFETY: called once from _PG_init in the postmaster; RMGR is a static
    // that the server keeps a copy of.
    unsafe { pg_sys::RegisterCustomRmgr(RMGR_ID, std::ptr::addr_of_mut!(RMGR)) };
}

/// Ask for the shared memory of [`LAST_RECORD`]; from _PG_init in the
/// postmaster. (The macro also tests features pg13/pg14, which this crate
/// does not have.)
#[allow(unexpected_cfgs)]
pub fn install_record_tracking() {
    pgrx::pg_shmem_init!(LAST_RECORD);
}

/// The end of the newest record of our resource manager that this server
/// wrote or replayed since it started (0: none). Only a server that
/// preloads pg_branch can replay WAL from before that point; see
/// [`last_record`].
static LAST_RECORD: pgrx::PgAtomic<std::sync::atomic::AtomicU64> =
    // SAFETY: a name of our own for the shared memory segment.
    unsafe { pgrx::PgAtomic::new(c"pg_branch_last_record") };

fn note_record(end: pg_sys::XLogRecPtr) {
    LAST_RECORD
        .get()
        .fetch_max(end, std::sync::atomic::Ordering::SeqCst);
}

/// The end of the newest record only pg_branch can replay, written or
/// replayed since this server started. Records from before its start lie
/// before the checkpoint it started from: a clean start's shutdown
/// checkpoint, or the end of its crash recovery, which replayed (and so
/// noted) every record after the last checkpoint.
pub fn last_record() -> Option<pg_sys::XLogRecPtr> {
    match LAST_RECORD.get().load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        end => Some(end),
    }
}

/// Which record `log_create` writes.
pub fn core_record() -> bool {
    gucs::WAL_RECORD.get() == gucs::WalRecord::Core
}

/// A branch record just written.
pub struct Logged {
    /// Where it begins: the branch's place in WAL, which the registry
    /// keeps (registry.rs).
    pub start: pg_sys::XLogRecPtr,
    /// Its end, to wait and flush for.
    pub end: pg_sys::XLogRecPtr,
    /// What redo would mark the directory with (`None`: core's record,
    /// which core's redo replays).
    mark: Option<String>,
}

/// How a directory built for a record is marked: the record's timeline and
/// start LSN, which no other record on any timeline has.
fn record_mark_text(tli: pg_sys::TimeLineID, start: pg_sys::XLogRecPtr) -> String {
    format!("{tli}/{start:X}")
}

/// Mark `dir` as the directory built for `record` (see redo). A failure,
/// or a mark lost in a crash (it is not fsynced: crash recovery keeps the
/// directory anyway), costs only a rebuild if archive recovery replays the
/// record here.
pub fn mark_built(dir: &std::path::Path, record: &Logged) {
    let Some(mark) = &record.mark else { return };
    if let Err(e) = set_record_mark(dir, mark) {
        pgrx::ereport!(
            LOG,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!(
                "pg_branch: could not mark \"{}\" as built for its record: {}",
                dir.display(),
                errno_text(&e)
            )
        );
    }
}

/// Log that `<dst_ts>/<dst_db>` was cloned from `<src_ts>/<src_db>` by
/// `method`.
pub fn log_create(dst_db: Oid, dst_ts: Oid, src_db: Oid, src_ts: Oid, method: Method) -> Logged {
    let mut rec = BranchRecord {
        db_id: dst_db,
        tablespace_id: dst_ts,
        src_db_id: src_db,
        src_tablespace_id: src_ts,
        method: (method == Method::Reflink) as u8,
        pad: [0; 3],
    };
    let (rmid, info, len) = if core_record() {
        // Only the four OIDs: exactly xl_dbase_create_file_copy_rec.
        (
            pg_sys::RmgrIds::RM_DBASE_ID as pg_sys::RmgrId,
            XLOG_DBASE_CREATE_FILE_COPY,
            16,
        )
    } else {
        (
            RMGR_ID,
            XLOG_BRANCH_CREATE,
            std::mem::size_of::<BranchRecord>(),
        )
    };
    // XLR_SPECIAL_REL_UPDATE says that a record changes relation files
    // that no block reference names. Core's record carries it, as core's
    // CREATE DATABASE writes it, and pg_rewind knows it. Ours must not:
    // pg_rewind stops at any record with the flag whose resource manager
    // it does not know ("WAL record modifies a relation, but record type
    // is not recognized"), and it needs nothing from ours, for the reason
    // it ignores core's (parsexlog.c): a branch only on the server being
    // rewound is not on the source and is removed; one on the source is
    // copied whole; and replay of the source's record rebuilds a directory
    // of the same OID, which bears no mark of that record (redo above).
    let flags = if rmid == RMGR_ID {
        0
    } else {
        pg_sys::XLR_SPECIAL_REL_UPDATE as u8
    };
    // SAFETY: `rec` outlives XLogInsert, which copies the registered data.
    let end = unsafe {
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData((&mut rec as *mut BranchRecord).cast(), len as _);
        pg_sys::XLogInsert(rmid, info | flags)
    };
    // SAFETY: reads where this backend's last record began, and the
    // timeline it was inserted on.
    let (start, tli) = unsafe { (pg_sys::ProcLastRecPtr, pg_sys::GetWALInsertionTimeLine()) };
    if rmid != RMGR_ID {
        return Logged {
            start,
            end,
            mark: None,
        };
    }
    note_record(end);
    Logged {
        start,
        end,
        mark: Some(record_mark_text(tli, start)),
    }
}

/// Log that `<ts>/<db>` is now a subvolume; returns the end of the record.
pub fn log_convert(db: Oid, ts: Oid) -> pg_sys::XLogRecPtr {
    let mut rec = ConvertRecord {
        db_id: db,
        tablespace_id: ts,
    };
    // SAFETY: as in log_create.
    let end = unsafe {
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData(
            (&mut rec as *mut ConvertRecord).cast(),
            std::mem::size_of::<ConvertRecord>() as _,
        );
        // No XLR_SPECIAL_REL_UPDATE, as in log_create: the files keep their
        // contents, so there is nothing for pg_rewind to copy.
        pg_sys::XLogInsert(RMGR_ID, XLOG_BRANCH_CONVERT)
    };
    note_record(end);
    end
}

/// Log that `<ts>/<db>` now holds a clone of `<src_ts>/<src_db>` made by
/// `method` (pgbranch.reset(), reset.rs), and make it so: swap the clone
/// at `<ts>/<db>.pg_branch_reset` with the directory, with the registry's
/// `facts` of the reset on it (registry.rs). From the record to the durable
/// swap this is a critical section (any failure is a PANIC, and crash
/// recovery finishes the swap) with DELAY_CHKPT_START, so that no
/// checkpoint whose redo pointer lies past the record completes before
/// the swap: a crash would otherwise restart past a record whose swap
/// never happened here, while a standby replayed it.
pub fn log_reset_and_swap(
    db: Oid,
    ts: Oid,
    src_db: Oid,
    src_ts: Oid,
    method: Method,
    facts: &str,
) -> Logged {
    let dir = ffi::database_path(db, ts);
    let scratch = dir.with_extension(RESET_SUFFIX);
    let mut rec = BranchRecord {
        db_id: db,
        tablespace_id: ts,
        src_db_id: src_db,
        src_tablespace_id: src_ts,
        method: (method == Method::Reflink) as u8,
        pad: [0; 3],
    };
    // SAFETY: our own PGPROC's flags and this backend's critical-section
    // counter, restored below; `rec` outlives XLogInsert. Unlike
    // BRANCH_CREATE the record carries XLR_SPECIAL_REL_UPDATE: pg_rewind
    // must stop at a reset only the server it rewinds made, rather than
    // keep files it does not know were replaced.
    let end = unsafe {
        (*pg_sys::MyProc).delayChkptFlags |= pg_sys::DELAY_CHKPT_START as i32;
        pg_sys::CritSectionCount += 1;
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData(
            (&mut rec as *mut BranchRecord).cast(),
            std::mem::size_of::<BranchRecord>() as _,
        );
        pg_sys::XLogRegisterData(facts.as_ptr().cast_mut().cast(), facts.len() as _);
        let end = pg_sys::XLogInsert(
            RMGR_ID,
            XLOG_BRANCH_RESET | pg_sys::XLR_SPECIAL_REL_UPDATE as u8,
        );
        pg_sys::XLogFlush(end);
        end
    };
    // SAFETY: as in log_create.
    let (start, tli) = unsafe { (pg_sys::ProcLastRecPtr, pg_sys::GetWALInsertionTimeLine()) };
    note_record(end);
    let mark = record_mark_text(tli, start);
    let facts = crate::registry::stamp_reset_facts(facts, start).unwrap_or_default();
    if let Err(e) = set_reset_facts(&scratch, &facts)
        .and_then(|_| set_record_mark(&scratch, &mark))
        .and_then(|_| std::fs::File::open(&scratch)?.sync_all())
        .and_then(|_| swap_in(&scratch, &dir))
    {
        pgrx::ereport!(
            PANIC,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!(
                "could not swap \"{}\" into \"{}\": {}",
                scratch.display(),
                dir.display(),
                errno_text(&e)
            )
        );
    }
    // SAFETY: undoes what was done above.
    unsafe {
        pg_sys::CritSectionCount -= 1;
        (*pg_sys::MyProc).delayChkptFlags &= !(pg_sys::DELAY_CHKPT_START as i32);
    }
    Logged {
        start,
        end,
        mark: Some(mark),
    }
}

/// Put the directory at `scratch` in place of `dir` (which then sits at
/// `scratch`, if it existed), durably.
fn swap_in(scratch: &std::path::Path, dir: &std::path::Path) -> std::io::Result<()> {
    if dir.exists() {
        pg_branch_storage::exchange_dirs(scratch, dir)?;
    } else {
        std::fs::rename(scratch, dir)?;
    }
    std::fs::File::open(dir.parent().unwrap_or(dir))?.sync_all()
}

/// The full-page-image rule without a whole checkpoint: ask for an
/// immediate checkpoint and wait only until it has *started* after `lsn`,
/// that is, until the redo pointer has passed it. From then on the first
/// change to any page of the branch is logged with a full-page image, which
/// protects the branch against torn pages and lets a standby whose clone
/// differs physically from ours (hint bits) converge; and crash recovery
/// keeps the branch's directory instead of re-cloning it (module comment).
/// A checkpoint already in progress is hurried by the immediate request.
///
/// Tried and measured (`bench/run.sh latency`): asking for a spread
/// checkpoint first and hurrying it only after 50 ms made no difference
/// idle and was worse under load (p50 98 ms, p99 1.6 s, against 77 / 790).
pub fn wait_for_checkpoint_start(lsn: pg_sys::XLogRecPtr) {
    ffi::request_checkpoint(ffi::CHECKPOINT_IMMEDIATE | ffi::CHECKPOINT_FORCE);
    // SAFETY: GetRedoRecPtr reads shared memory under its spinlock; the
    // latch calls are the standard wait loop of a backend.
    unsafe {
        while pg_sys::GetRedoRecPtr() < lsn {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as _,
                Duration::from_millis(2).as_millis() as _,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
            check_for_interrupts!();
        }
    }
}

/// Whether a branch with OID `db` must wait for a whole checkpoint before
/// it commits, because a database with the same OID may have been dropped
/// after the last completed checkpoint: crash recovery would replay that
/// drop (removing the branch's directory, the same path) and then our
/// record, cloning the template as it is on disk after the crash. The OID
/// may be one given with `OID = N`, or one the OID counter gives again;
/// src/drops.c keeps the drops that matter, and answers.
pub fn oid_may_be_reused(db: Oid) -> bool {
    // SAFETY: reads the shared table under its spinlock; raises nothing.
    unsafe { drops::pg_branch_oid_may_be_reused(db) }
}

/// Start tracking dropped databases (src/drops.c): shared memory, an
/// object-access hook and a transaction callback. From `_PG_init`, while
/// the postmaster loads preload libraries.
pub fn install_drop_tracking() {
    // SAFETY: called once from _PG_init in the postmaster; the C side
    // chains every hook it installs.
    unsafe { drops::pg_branch_install_drop_tracking() }
}

mod drops {
    use pgrx::pg_sys::Oid;
    // src/drops.c
    unsafe extern "C" {
        pub fn pg_branch_oid_may_be_reused(db: Oid) -> bool;
        pub fn pg_branch_install_drop_tracking();
    }
}

/// Log the removal of `<ts>/<db>` for each of `tablespaces` with core's
/// DROP record, so a standby that replayed a branch's creation removes its
/// copy too (as core's `remove_dbtablespaces()` does).
pub fn log_drop(db: Oid, tablespaces: &[Oid]) {
    // xl_dbase_drop_rec: Oid db_id; int ntablespaces; Oid tablespace_ids[].
    let mut rec: Vec<u32> = Vec::with_capacity(2 + tablespaces.len());
    rec.push(db.to_u32());
    rec.push(tablespaces.len() as u32);
    rec.extend(tablespaces.iter().map(|t| t.to_u32()));
    // SAFETY: as in log_create; `rec` is a contiguous array of 4-byte
    // fields laid out as the C struct.
    unsafe {
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData(rec.as_mut_ptr().cast(), (rec.len() * 4) as _);
        pg_sys::XLogInsert(
            pg_sys::RmgrIds::RM_DBASE_ID as _,
            XLOG_DBASE_DROP | pg_sys::XLR_SPECIAL_REL_UPDATE as u8,
        );
    }
}

/// A record's info bits and its payload read as `T`, if it is long enough.
///
/// # Safety
/// `record` must be the reader state the server passes to rm_* callbacks.
unsafe fn decode<T: Copy>(record: *mut pg_sys::XLogReaderState) -> (u8, Option<T>) {
    // SAFETY: the server's reader state (the caller's promise) holds the
    // record it decoded, whose main data is `main_data_len` bytes.
    unsafe {
        let decoded = (*record).record;
        let info = (*decoded).header.xl_info & !(pg_sys::XLR_INFO_MASK as u8);
        let data = (*decoded).main_data;
        let rec = ((*decoded).main_data_len as usize >= std::mem::size_of::<T>())
            .then(|| std::ptr::read_unaligned(data as *const T));
        (info, rec)
    }
}

/// The main data of a record past its leading `T`, as text (a reset's
/// registry facts).
///
/// # Safety
/// As [`decode`].
unsafe fn trailing_text<T>(record: *mut pg_sys::XLogReaderState) -> String {
    // SAFETY: the main data is `main_data_len` bytes (as in decode()).
    unsafe {
        let decoded = (*record).record;
        let len = (*decoded).main_data_len as usize;
        let skip = std::mem::size_of::<T>();
        if len <= skip {
            return String::new();
        }
        let bytes =
            std::slice::from_raw_parts((*decoded).main_data.cast::<u8>().add(skip), len - skip);
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Replay a record: core's `dbase_redo()` for `XLOG_DBASE_CREATE_FILE_COPY`,
/// step by step (flush the source's buffers, replace the target, create a
/// missing tablespace parent as `recovery_create_dbdir()` does, release
/// every process's file handles before removing anything, copy), with three
/// differences, each explained where it happens: an existing target that
/// is known to be the whole branch is kept instead of copied again; the
/// copy is a clone by the best method this host has, built under a
/// temporary name and renamed into place; and the rename is made durable.
///
/// # Safety
/// Called by the server as `rm_redo`, with the reader state of a record
/// of ours.
#[pg_guard]
unsafe extern "C-unwind" fn redo(record: *mut pg_sys::XLogReaderState) {
    // SAFETY: `record` is the server's valid reader state (our contract);
    // so for every `(*record)` read and `decode()` below.
    note_record(unsafe { (*record).EndRecPtr });
    // SAFETY: as above.
    let info = unsafe { decode::<u8>(record) }.0;
    if info == XLOG_BRANCH_CONVERT {
        // SAFETY: as above.
        if let (_, Some(rec)) = unsafe { decode::<ConvertRecord>(record) } {
            redo_convert(rec.db_id, rec.tablespace_id);
            return;
        }
    }
    // SAFETY: as above.
    let (info, rec) = unsafe { decode::<BranchRecord>(record) };
    if let (XLOG_BRANCH_RESET, Some(rec)) = (info, rec) {
        // SAFETY: as above.
        let (tli, start) = unsafe { ((*record).latestPageTLI, (*record).ReadRecPtr) };
        // SAFETY: as above.
        let facts = unsafe { trailing_text::<BranchRecord>(record) };
        let facts = crate::registry::stamp_reset_facts(&facts, start);
        redo_reset(&rec, record_mark_text(tli, start), facts);
        return;
    }
    let Some(rec) = rec.filter(|_| info == XLOG_BRANCH_CREATE) else {
        pgrx::ereport!(
            PANIC,
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("pg_branch redo: unknown op code {info}")
        );
    };
    // Whatever the template's buffers hold up to this point must be on
    // disk before we clone its files, as in core's dbase_redo().
    // SAFETY: writes out the shared buffers of a database by OID, as
    // dbase_redo() does.
    unsafe { pg_sys::FlushDatabaseBuffers(rec.src_db_id) };

    let src = ffi::database_path(rec.src_db_id, rec.src_tablespace_id);
    let dst = ffi::database_path(rec.db_id, rec.tablespace_id);
    // This record, as no other on any timeline: the timeline of the page it
    // was read from, and where it starts.
    // SAFETY: `record` is the server's valid reader state (our contract).
    let (tli, start) = unsafe { ((*record).latestPageTLI, (*record).ReadRecPtr) };
    let mark = record_mark_text(tli, start);
    if dst.exists() {
        // Keep a directory that is known to be the whole branch as of this
        // record: in crash recovery, the one made before the crash (module
        // comment); in archive recovery, one an earlier replay of this
        // record built and marked. Anything else in archive recovery (a
        // base backup's partial copy, a rewound server's own branch with
        // the same OID) is rebuilt.
        // An empty directory is never a database (core writes PG_VERSION
        // and pg_filenode.map first): it is what a snapshot of the data
        // directory's subvolume holds in place of a nested subvolume (a
        // branch), and it is rebuilt, in crash recovery too.
        let empty = std::fs::read_dir(&dst)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        let why = if empty {
            None
        } else if !ffi::in_archive_recovery() {
            Some("the branch made before the crash")
        } else if record_mark(&dst).ok().flatten().as_deref() == Some(mark.as_str()) {
            Some("made by an earlier replay of this record")
        } else {
            None
        };
        if let Some(why) = why {
            log(format!("pg_branch redo: kept \"{}\", {why}", dst.display()));
            return;
        }
        if empty && !ffi::in_archive_recovery() {
            pgrx::ereport!(
                WARNING,
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!(
                    "pg_branch redo: \"{}\" is empty, as in a snapshot of the data directory that does not hold nested subvolumes; rebuilding it from its template as it is on disk now, which may hold changes made after the branch",
                    dst.display()
                )
            );
        }
        // As dbase_redo() before it replaces a directory: every process
        // (hot-standby readers) closes the file descriptors it holds, so
        // none keeps writing to, or reading, a file we remove.
        ffi::release_file_handles();
        remove_or_fail(&dst);
    }
    let parent = dst.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    create_missing_dir(&parent, true);
    create_missing_dir(&src, false);
    // SAFETY: `record` is the server's valid reader state (our contract).
    warn_if_restoring_a_standby_backup(&dst, unsafe { (*record).ReadRecPtr });
    // Build under a temporary name and rename into place, so that a crash
    // of this replay never leaves a partial directory under the real name.
    let tmp = dst.with_extension(REDO_SUFFIX);
    remove_or_fail(&tmp);
    let how = clone_for_redo(&src, &tmp, &parent);
    // Without a mark (a filesystem with no extended attributes) the
    // directory is rebuilt if this record is replayed again, as before.
    // Before consistency (a base backup's replay, a rewound server's) the
    // template on disk may hold pages from after this record, so what we
    // built is not known to be the branch: it gets no mark, and if a base
    // backup ran when the branch was made, the records that follow rebuild
    // it page by page (backup.rs).
    let marked = if ffi::reached_consistency() {
        set_record_mark(&tmp, &mark).and_then(|_| std::fs::File::open(&tmp)?.sync_all())
    } else {
        Ok(())
    };
    if let Err(e) = marked {
        pgrx::ereport!(
            WARNING,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!(
                "pg_branch redo: could not mark \"{}\" as built for this record: {}",
                tmp.display(),
                errno_text(&e)
            )
        );
    }
    if let Err(e) =
        std::fs::rename(&tmp, &dst).and_then(|_| std::fs::File::open(&parent)?.sync_all())
    {
        pgrx::ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!(
                "could not rename \"{}\" to \"{}\": {}",
                tmp.display(),
                dst.display(),
                errno_text(&e)
            )
        );
    }
    log(format!(
        "pg_branch redo: created \"{}\" from \"{}\" by {how} (primary used {})",
        dst.display(),
        src.display(),
        rec.method()
    ));
}

/// Clone `src` into `dst` (in `parent`) with the best method this host
/// has, or core's plain copy as the last resort; says how.
fn clone_for_redo(
    src: &std::path::Path,
    dst: &std::path::Path,
    parent: &std::path::Path,
) -> String {
    match probe(src, parent) {
        Ok(Ok(method)) => match clone_dir(src, dst, method) {
            Ok(_) => method.name().to_string(),
            Err(e) => {
                pgrx::ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_IO_ERROR,
                    format!(
                        "could not {method} \"{}\" to \"{}\": {e}",
                        src.display(),
                        dst.display()
                    )
                );
            }
        },
        Ok(Err(why)) => {
            ffi::copydir(src, dst);
            format!("plain copy ({why})")
        }
        Err(e) => {
            ffi::copydir(src, dst);
            format!("plain copy (probe failed: {e})")
        }
    }
}

/// Redo of a reset: the directory gets a clone of the source in place of
/// its contents, as the primary swapped it in (reset.rs).
///
/// - Marked with this record: the swap is done (crash recovery after it,
///   or a standby replaying again from an earlier restartpoint); only what
///   it left under the scratch name goes.
/// - Crash recovery, scratch present: the primary's clone, durable before
///   the record (a swapped directory would be marked): swap it in.
/// - Otherwise clone the source as replay has rebuilt it, as BRANCH_CREATE
///   does, and swap that in.
///
/// The old contents go as a dropped database's do in core's dbase_redo():
/// sessions on a hot standby are cancelled and kept out meanwhile, its
/// buffers dropped, its pending fsyncs forgotten, every process's file
/// descriptors closed.
fn redo_reset(rec: &BranchRecord, mark: String, facts: Option<String>) {
    let dir = ffi::database_path(rec.db_id, rec.tablespace_id);
    let scratch = dir.with_extension(RESET_SUFFIX);
    let src = ffi::database_path(rec.src_db_id, rec.src_tablespace_id);
    let marked =
        |p: &std::path::Path| record_mark(p).ok().flatten().as_deref() == Some(mark.as_str());
    if marked(&dir) {
        remove_or_fail(&scratch);
        log(format!(
            "pg_branch redo: kept \"{}\", already reset by this record",
            dir.display()
        ));
        return;
    }
    // SAFETY: reads the startup process's standby state.
    let hot = unsafe { pg_sys::standbyState } >= pg_sys::HotStandbyState::STANDBY_SNAPSHOT_PENDING;
    let lock = pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE;
    // SAFETY: as dbase_redo(): a session lock on the database object keeps
    // new sessions out while those connected are cancelled; the buffer,
    // sync-request and relcache calls take plain OIDs.
    unsafe {
        if hot {
            pg_sys::LockSharedObjectForSession(pg_sys::DatabaseRelationId, rec.db_id, 0, lock);
            pg_sys::ResolveRecoveryConflictWithDatabase(rec.db_id);
        }
        pg_sys::FlushDatabaseBuffers(rec.src_db_id);
        pg_sys::DropDatabaseBuffers(rec.db_id);
        ffi::forget_database_sync_requests(rec.db_id);
        pg_sys::XLogDropDatabase(rec.db_id);
    }
    ffi::release_file_handles();
    let how = if !ffi::in_archive_recovery() && scratch.exists() {
        "the clone made before the crash".to_string()
    } else {
        remove_or_fail(&scratch);
        create_missing_dir(&src, false);
        let parent = dir.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        clone_for_redo(&src, &scratch, &parent)
    };
    // The registry's facts go with the contents whatever the state of
    // replay: they are the record's (registry.rs).
    if let Some(facts) = &facts {
        if let Err(e) = set_reset_facts(&scratch, facts) {
            pgrx::ereport!(
                WARNING,
                PgSqlErrorCode::ERRCODE_IO_ERROR,
                format!(
                    "pg_branch redo: could not record the reset on \"{}\": {}",
                    scratch.display(),
                    errno_text(&e)
                )
            );
        }
    }
    // As in redo(): only once consistent is the clone known to be the
    // source as of this record.
    if ffi::reached_consistency() || !ffi::in_archive_recovery() {
        if let Err(e) = set_record_mark(&scratch, &mark) {
            pgrx::ereport!(
                WARNING,
                PgSqlErrorCode::ERRCODE_IO_ERROR,
                format!(
                    "pg_branch redo: could not mark \"{}\": {}",
                    scratch.display(),
                    errno_text(&e)
                )
            );
        }
    }
    if let Err(e) = std::fs::File::open(&scratch)
        .and_then(|f| f.sync_all())
        .and_then(|_| swap_in(&scratch, &dir))
    {
        pgrx::ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!(
                "could not swap \"{}\" into \"{}\": {}",
                scratch.display(),
                dir.display(),
                errno_text(&e)
            )
        );
    }
    remove_or_fail(&scratch);
    // A standby restarted later replays from its last restartpoint. Were
    // that before this record, it would replay the branch's old records
    // onto the new contents (the same paths) and then keep them, marked.
    // The primary completed a checkpoint after the branch's last old record
    // and before this one (reset.rs, step 2), so a restartpoint now, at the
    // newest checkpoint record replayed, starts every later replay after
    // all of them.
    if ffi::in_archive_recovery() {
        ffi::request_checkpoint(ffi::CHECKPOINT_IMMEDIATE | ffi::CHECKPOINT_WAIT);
    }
    if hot {
        // SAFETY: releases the session lock taken above.
        unsafe {
            pg_sys::UnlockSharedObjectForSession(pg_sys::DatabaseRelationId, rec.db_id, 0, lock)
        };
    }
    log(format!(
        "pg_branch redo: reset \"{}\" from \"{}\" by {how} (primary used {})",
        dir.display(),
        src.display(),
        rec.method()
    ));
}

/// Redo of a conversion: convert the replaying server's own copy, if it is
/// a plain directory on btrfs; otherwise keep it, since its contents are
/// right either way.
fn redo_convert(db: Oid, tablespace: Oid) {
    let path = ffi::database_path(db, tablespace);
    let log = |m: String| pgrx::ereport!(LOG, PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION, m);
    if !path.is_dir() {
        return;
    }
    // A replay of this record that a crash interrupted after its swap
    // finds the subvolume in place, and the old directory next to it.
    if let Err(e) = remove_convert_leftover(&path) {
        pgrx::ereport!(
            WARNING,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("pg_branch redo: {e}")
        );
    }
    if pg_branch_storage::is_subvolume(&path).unwrap_or(false) {
        return;
    }
    // Replay's changes to this database reach the old files before their
    // reflinks are taken. Hot-standby readers may keep reading meanwhile:
    // old and new files hold the same bytes.
    // SAFETY: plain OID argument.
    unsafe { pg_sys::FlushDatabaseBuffers(db) };
    let outcome = convert_to_subvolume(&path);
    // Whatever happened, descriptors for the old files must go (a failure
    // may come after the swap).
    ffi::release_file_handles();
    match outcome {
        Ok(Converted::Converted { files, left_behind }) => {
            log(format!(
                "pg_branch redo: converted \"{}\" to a subvolume ({files} files){}",
                path.display(),
                left_behind.map(|e| format!("; {e}")).unwrap_or_default()
            ));
        }
        Ok(Converted::AlreadySubvolume) => {}
        Err(e) => pgrx::ereport!(
            WARNING,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!(
                "pg_branch redo: kept \"{}\" as a plain directory: {e}",
                path.display()
            )
        ),
    }
}

/// Say so when this replay restores a backup taken on a standby and
/// rebuilds a branch made while that backup ran: the primary could not see
/// the backup, so it did not write the branch into WAL page by page
/// (backup.rs), and the template the clone is taken from may hold pages
/// the backup copied after the branch.
///
/// Such a replay runs before consistency, in archive recovery, and the
/// backup's label (renamed backup_label.old once read) says `BACKUP FROM:
/// standby` and starts at or before `record`. If the primary wrote the
/// branch page by page after all, its records rebuild it anyway.
fn warn_if_restoring_a_standby_backup(dst: &std::path::Path, record: pg_sys::XLogRecPtr) {
    if !ffi::in_archive_recovery() || ffi::reached_consistency() {
        return;
    }
    let Ok(label) = std::fs::read_to_string("backup_label.old") else {
        return;
    };
    let from_standby = label.lines().any(|l| l.trim() == "BACKUP FROM: standby");
    let start = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|lsn| lsn.split_once('/'))
        .and_then(|(hi, lo)| {
            Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
        });
    if from_standby && start.is_some_and(|s| s <= record) {
        crate::error::Report::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "pg_branch redo: \"{}\" was branched while this backup of a standby ran, and is rebuilt from its template as the backup holds it, which may include changes made after the branch",
                dst.display()
            ),
        )
        .detail("A primary writes a branch made during its own backups into WAL page by page; it cannot see a standby's.")
        .hint("Drop this database and branch it again, or take backups from the primary.")
        .warning();
    }
}

/// Core's `recovery_create_dbdir(path, only_tblspc)` (dbcommands.c).
///
/// Replay before consistency (a base backup's, a PITR restore's) can meet
/// a directory that a later record dropped and the backup never copied:
/// - the parent of the branch's directory (`only_tblspc`), when its
///   tablespace was dropped later: `base/` always exists, so only
///   `pg_tblspc/…` paths may be created;
/// - the template's directory itself, when the template was dropped
///   later: an empty one is made so that the branch can be built (empty),
///   and replay of the later drops removes both.
///
/// Create it then; after consistency a missing directory is corruption and
/// stops recovery, as in core.
fn create_missing_dir(dir: &std::path::Path, only_tblspc: bool) {
    if dir.exists() {
        return;
    }
    let text = dir.display().to_string();
    if only_tblspc && !text.contains("pg_tblspc/") {
        pgrx::ereport!(
            PANIC,
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("requested to created invalid directory: {text}")
        );
    }
    if ffi::reached_consistency() && !ffi::allow_in_place_tablespaces() {
        pgrx::ereport!(
            PANIC,
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("missing directory \"{text}\"")
        );
    }
    let message = format!("creating missing directory: {text}");
    if ffi::reached_consistency() {
        pgrx::ereport!(WARNING, PgSqlErrorCode::ERRCODE_WARNING, message);
    } else {
        pgrx::ereport!(
            DEBUG1,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            message
        );
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        pgrx::ereport!(
            PANIC,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!(
                "could not create missing directory \"{text}\": {}",
                errno_text(&e)
            )
        );
    }
}

/// Remove `dir` (a directory or subvolume) if it exists, or fail replay.
fn remove_or_fail(dir: &std::path::Path) {
    if let Err(e) = remove_dir(dir) {
        pgrx::ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("could not remove \"{}\": {}", dir.display(), errno_text(&e))
        );
    }
}

fn log(message: String) {
    pgrx::ereport!(LOG, PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION, message);
}

/// `rm_desc`: a record of ours, described for pg_waldump and pg_walinspect.
///
/// # Safety
/// Called by the server as `rm_desc`, with a valid StringInfo and the
/// reader state of a record of ours.
#[pg_guard]
unsafe extern "C-unwind" fn desc(buf: pg_sys::StringInfo, record: *mut pg_sys::XLogReaderState) {
    // SAFETY: `record` is the server's valid reader state (our contract).
    let text = match unsafe { decode::<BranchRecord>(record) } {
        (XLOG_BRANCH_RESET, Some(r)) => format!(
            "reset dir {}/{} from {}/{} by {}",
            r.tablespace_id.to_u32(),
            r.db_id.to_u32(),
            r.src_tablespace_id.to_u32(),
            r.src_db_id.to_u32(),
            r.method()
        ),
        (XLOG_BRANCH_CREATE, Some(r)) => format!(
            "branch dir {}/{} to {}/{} by {}",
            r.src_tablespace_id.to_u32(),
            r.src_db_id.to_u32(),
            r.tablespace_id.to_u32(),
            r.db_id.to_u32(),
            r.method()
        ),
        // SAFETY: as above.
        (XLOG_BRANCH_CONVERT, _) => match unsafe { decode::<ConvertRecord>(record) } {
            (_, Some(r)) => format!(
                "convert dir {}/{} to a subvolume",
                r.tablespace_id.to_u32(),
                r.db_id.to_u32()
            ),
            _ => return,
        },
        _ => return,
    };
    let text = CString::new(text).expect("no NUL");
    // SAFETY: `buf` is the server's valid StringInfo (our contract); the
    // NUL-terminated text is copied into it.
    unsafe { pg_sys::appendStringInfoString(buf, text.as_ptr()) };
}

/// `rm_identify`: the name of a record's operation, or NULL.
///
/// # Safety
/// Called by the server as `rm_identify`; it reads nothing but `info`, so
/// there is nothing more to uphold.
#[pg_guard]
unsafe extern "C-unwind" fn identify(info: u8) -> *const c_char {
    match info & !(pg_sys::XLR_INFO_MASK as u8) {
        XLOG_BRANCH_CREATE => c"BRANCH_CREATE".as_ptr(),
        XLOG_BRANCH_CONVERT => c"BRANCH_CONVERT".as_ptr(),
        XLOG_BRANCH_RESET => c"BRANCH_RESET".as_ptr(),
        _ => std::ptr::null(),
    }
}
