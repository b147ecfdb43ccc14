//! Reading the catalogs of a database we are not connected to, page by
//! page through the shared buffer manager, as core's
//! ScanSourceDatabasePgClass() does for CREATE DATABASE … WAL_LOG. The
//! relcache and syscaches only know the database a backend is connected
//! to; these scans know any, by its directory.
//!
//! Two ways to judge which tuples are live ([`Visibility`]):
//! - under the caller's lock on the catalog (the fence's lock on the
//!   template's `pg_class`), with a snapshot taken after the lock, which
//!   may set hint bits on the shared pages as any scan does;
//! - without a lock (doctor(), diverged()), on a private copy of each page,
//!   against a snapshot taken when the scan starts, from the hint bits and
//!   the commit log, changing nothing: such a scan never dirties a buffer
//!   of another database (doctor.rs says why that matters). It sees the
//!   catalog as of its start, as any MVCC scan would; DDL committed since
//!   is not seen.

use crate::compat;
use crate::ffi;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::ffi::CStr;

/// How a scan decides which tuples are live (module comment).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// A snapshot taken now; the caller holds a lock on the catalog that
    /// keeps every change out, so none is in progress.
    Locked,
    /// Committed and not deleted as of a snapshot taken when the scan
    /// starts, judged on a copy of the page without setting hint bits.
    ReadOnly,
}

/// One row of another database's `pg_class`.
#[derive(Debug, Clone)]
pub struct Class {
    pub oid: Oid,
    pub name: String,
    pub namespace: Oid,
    pub kind: u8,
    pub persistence: u8,
    /// The relation's file, or 0 for a mapped catalog (its file is in the
    /// database's `pg_filenode.map`).
    pub filenode: Oid,
    /// 0 for the database's default tablespace.
    pub tablespace: Oid,
    pub shared: bool,
}

/// Every live row of the `pg_class` of database `db`, whose default
/// tablespace is `tablespace`. The caller holds a lock on the database
/// that keeps DROP DATABASE and SET TABLESPACE out, and for
/// [`Visibility::Locked`] a lock on its `pg_class` too.
pub fn classes(db: Oid, tablespace: Oid, visibility: Visibility) -> Vec<Class> {
    let mut out = Vec::new();
    let filenode = mapped_filenode(db, tablespace, pg_sys::RelationRelationId);
    let table = pg_sys::RelationRelationId;
    scan(db, tablespace, table, filenode, visibility, |tuple| {
        // SAFETY: a live tuple of pg_class, so its data is a pg_class row.
        let form = unsafe { &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple) };
        out.push(Class {
            oid: form.oid,
            name: name_text(&form.relname),
            namespace: form.relnamespace,
            kind: form.relkind as u8,
            persistence: form.relpersistence as u8,
            filenode: form.relfilenode,
            tablespace: form.reltablespace,
            shared: form.relisshared,
        });
    });
    out
}

/// The names of the schemas of database `db` (live rows of its
/// `pg_namespace`, found through `classes`), by OID.
pub fn namespaces(db: Oid, tablespace: Oid, classes: &[Class]) -> Vec<(Oid, String)> {
    let Some(class) = classes
        .iter()
        .find(|c| c.oid == pg_sys::NamespaceRelationId)
    else {
        return Vec::new();
    };
    let filenode = file_of(class, db, tablespace);
    let mut out = Vec::new();
    let table = pg_sys::NamespaceRelationId;
    scan(
        db,
        tablespace,
        table,
        filenode,
        Visibility::ReadOnly,
        |tuple| {
            // SAFETY: a live tuple of pg_namespace.
            let form =
                unsafe { &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_namespace>(tuple) };
            out.push((form.oid, name_text(&form.nspname)));
        },
    );
    out
}

/// The file of relation `class` (which has storage) of database `db`: its
/// `relfilenode`, or for a mapped catalog (0 there) the one its
/// database's `pg_filenode.map` names.
pub fn file_of(class: &Class, db: Oid, tablespace: Oid) -> Oid {
    if class.filenode == pg_sys::InvalidOid {
        mapped_filenode(db, tablespace, class.oid)
    } else {
        class.filenode
    }
}

/// The file of mapped catalog `rel` of database `db`, from the database's
/// `pg_filenode.map`.
fn mapped_filenode(db: Oid, tablespace: Oid, rel: Oid) -> Oid {
    // SAFETY: GetDatabasePath returns a palloc'd path of the directory,
    // whose map file relation_map_filenode reads (ERROR if it cannot).
    unsafe { ffi::relation_map_filenode(pg_sys::GetDatabasePath(db, tablespace), rel) }
}

/// Call `visit` with each live tuple (by `visibility`) of catalog `table`,
/// whose file is `filenode` in the default tablespace of database `db`.
fn scan(
    db: Oid,
    tablespace: Oid,
    table: Oid,
    filenode: Oid,
    visibility: Visibility,
    mut visit: impl FnMut(&mut pg_sys::HeapTupleData),
) {
    // A BLCKSZ buffer with the alignment of a page.
    let mut copy = vec![0u64; pg_sys::BLCKSZ as usize / 8];
    // SAFETY: as core's ScanSourceDatabasePgClass: each buffer is pinned
    // and share-locked while its tuples are read (Locked) or copied
    // (ReadOnly), and everything taken here is released here.
    unsafe {
        let rnode = compat::file_locator(tablespace, db, filenode);
        let smgr = compat::smgropen_shared(rnode);
        let nblocks = pg_sys::smgrnblocks(smgr, pg_sys::ForkNumber::MAIN_FORKNUM);
        pg_sys::smgrclose(smgr);
        let strategy = pg_sys::GetAccessStrategy(pg_sys::BufferAccessStrategyType::BAS_BULKREAD);
        // Locked: taken after the caller's lock, so every change to the
        // catalog is committed or aborted in it. ReadOnly: one moment for
        // the whole scan, so that a row updated by a transaction that
        // commits meanwhile is seen once (old or new version), never
        // twice or not at all.
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        for blkno in 0..nblocks {
            check_for_interrupts!();
            let buf = pg_sys::ReadBufferWithoutRelcache(
                rnode,
                pg_sys::ForkNumber::MAIN_FORKNUM,
                blkno,
                pg_sys::ReadBufferMode::RBM_NORMAL,
                strategy,
                true,
            );
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_SHARE as _);
            let page = match visibility {
                Visibility::Locked => pg_sys::BufferGetPage(buf),
                Visibility::ReadOnly => {
                    std::ptr::copy_nonoverlapping(
                        pg_sys::BufferGetPage(buf) as *const u8,
                        copy.as_mut_ptr().cast::<u8>(),
                        pg_sys::BLCKSZ as usize,
                    );
                    pg_sys::UnlockReleaseBuffer(buf);
                    copy.as_mut_ptr() as pg_sys::Page
                }
            };
            if !pg_sys::PageIsNew(page) && !pg_sys::PageIsEmpty(page) {
                for off in 1..=pg_sys::PageGetMaxOffsetNumber(page) {
                    let item = pg_sys::PageGetItemId(page, off);
                    if (*item).lp_flags() != pg_sys::LP_NORMAL {
                        continue;
                    }
                    let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
                    tuple.t_data = pg_sys::PageGetItem(page, item) as pg_sys::HeapTupleHeader;
                    tuple.t_len = (*item).lp_len();
                    tuple.t_tableOid = table;
                    tuple.t_self.ip_blkid.bi_hi = (blkno >> 16) as u16;
                    tuple.t_self.ip_blkid.bi_lo = (blkno & 0xffff) as u16;
                    tuple.t_self.ip_posid = off;
                    let live = match visibility {
                        Visibility::Locked => {
                            pg_sys::HeapTupleSatisfiesVisibility(&mut tuple, snapshot, buf)
                        }
                        Visibility::ReadOnly => visible_in(tuple.t_data, snapshot),
                    };
                    if live {
                        visit(&mut tuple);
                    }
                }
            }
            if visibility == Visibility::Locked {
                pg_sys::UnlockReleaseBuffer(buf);
            }
        }
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::FreeAccessStrategy(strategy);
    }
}

fn name_text(name: &pg_sys::NameData) -> String {
    // SAFETY: a NameData holds a NUL-terminated string.
    unsafe { CStr::from_ptr(name.data.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Whether the tuple is visible to MVCC snapshot `snapshot`: inserted by
/// a transaction that committed before it, and not deleted by one; as
/// HeapTupleSatisfiesMVCC decides, from the hint bits where set and from
/// the commit log otherwise, without setting any.
///
/// # Safety
/// `tup` must point to a heap tuple header of another database's catalog
/// (so no transaction of ours wrote it), in memory we own; `snapshot` must
/// be a registered MVCC snapshot.
unsafe fn visible_in(tup: pg_sys::HeapTupleHeader, snapshot: pg_sys::Snapshot) -> bool {
    // SAFETY: `tup` is a valid heap tuple header (the caller's promise).
    let infomask = unsafe { (*tup).t_infomask } as u32;
    // As HeapTupleSatisfiesMVCC: a transaction the snapshot sees as running
    // has not committed for it; otherwise the commit log says.
    // SAFETY: lookups of a plain XID in a registered snapshot and the
    // commit log, which change nothing.
    let committed_before = |xid| unsafe {
        !pg_sys::XidInMVCCSnapshot(xid, snapshot) && pg_sys::TransactionIdDidCommit(xid)
    };
    let xmin_frozen = pg_sys::HEAP_XMIN_COMMITTED | pg_sys::HEAP_XMIN_INVALID;
    if infomask & xmin_frozen == xmin_frozen {
        // frozen: visible to every snapshot
    } else if infomask & pg_sys::HEAP_XMIN_INVALID != 0 {
        return false;
    } else {
        // SAFETY: as above; a heap tuple's header holds its xmin.
        let xmin = unsafe { (*tup).t_choice.t_heap.t_xmin };
        let hinted = infomask & pg_sys::HEAP_XMIN_COMMITTED != 0;
        // SAFETY: as above.
        let in_snapshot = unsafe { pg_sys::XidInMVCCSnapshot(xmin, snapshot) };
        if in_snapshot || !(hinted || committed_before(xmin)) {
            return false;
        }
    }
    if infomask & pg_sys::HEAP_XMAX_INVALID != 0 {
        return true;
    }
    let lock_only = infomask & pg_sys::HEAP_XMAX_LOCK_ONLY != 0
        || infomask & (pg_sys::HEAP_XMAX_IS_MULTI | pg_sys::HEAP_LOCK_MASK)
            == pg_sys::HEAP_XMAX_EXCL_LOCK;
    if lock_only {
        return true;
    }
    let xmax = if infomask & pg_sys::HEAP_XMAX_IS_MULTI != 0 {
        // SAFETY: a valid header whose xmax is a MultiXactId, which this
        // looks up without changing anything.
        unsafe { pg_sys::HeapTupleGetUpdateXid(tup as _) }
    } else {
        // SAFETY: as above; a heap tuple's header holds its xmax.
        unsafe { (*tup).t_choice.t_heap.t_xmax }
    };
    if infomask & pg_sys::HEAP_XMAX_COMMITTED != 0 {
        // Deleted, unless the snapshot still sees the deleter running.
        // SAFETY: as above.
        return unsafe { pg_sys::XidInMVCCSnapshot(xmax, snapshot) };
    }
    !committed_before(xmax)
}
