//! WAL records for a branch.
//!
//! Version 0.1 logs a branch exactly as core's FILE_COPY strategy logs a
//! copy: one `XLOG_DBASE_CREATE_FILE_COPY` record per tablespace directory,
//! which every standby and every crash recovery replays with core's own
//! `dbase_redo()` (a plain copy of the source directory), and an immediate
//! checkpoint before commit so ordinary crash recovery never needs to
//! replay it (see `branch.rs`). A custom resource manager that re-clones on
//! replay is the next step (DESIGN.md step 8).

use pgrx::pg_sys;
use pgrx::pg_sys::Oid;

/// commands/dbcommands_xlog.h
const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
const XLOG_DBASE_DROP: u8 = 0x20;

/// `xl_dbase_create_file_copy_rec`
#[repr(C)]
struct CreateFileCopyRecord {
    db_id: Oid,
    tablespace_id: Oid,
    src_db_id: Oid,
    src_tablespace_id: Oid,
}

/// Log that directory `<dst_ts>/<dst_db>` is a copy of `<src_ts>/<src_db>`.
pub fn log_create(dst_db: Oid, dst_ts: Oid, src_db: Oid, src_ts: Oid) {
    let mut rec = CreateFileCopyRecord {
        db_id: dst_db,
        tablespace_id: dst_ts,
        src_db_id: src_db,
        src_tablespace_id: src_ts,
    };
    // SAFETY: `rec` outlives XLogInsert, which copies the registered data.
    // XLR_SPECIAL_REL_UPDATE: the record changes relation files that no
    // block reference names (tools such as pg_rewind look for this flag).
    unsafe {
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData(
            (&mut rec as *mut CreateFileCopyRecord).cast(),
            std::mem::size_of::<CreateFileCopyRecord>() as _,
        );
        pg_sys::XLogInsert(
            pg_sys::RmgrIds::RM_DBASE_ID as _,
            XLOG_DBASE_CREATE_FILE_COPY | pg_sys::XLR_SPECIAL_REL_UPDATE as u8,
        );
    }
}

/// Log the removal of `<ts>/<db>` for each of `tablespaces`, so a standby
/// that replayed [`log_create`] for a branch that then failed removes its
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
