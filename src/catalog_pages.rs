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
//!   from the hint bits and the commit log, changing nothing: such a scan
//!   never dirties a buffer of another database (doctor.rs says why that
//!   matters), and concurrent DDL can make it slightly stale.

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
    /// Committed and not deleted as of now, judged on a copy of the page.
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
    let filenode = if class.filenode == pg_sys::InvalidOid {
        mapped_filenode(db, tablespace, class.oid)
    } else {
        class.filenode
    };
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

/// The file of mapped catalog `rel` of database `db`, from the database's
/// `pg_filenode.map`.
pub fn mapped_filenode(db: Oid, tablespace: Oid, rel: Oid) -> Oid {
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
        // Taken after the caller's lock: every change to the catalog is
        // committed or aborted in it.
        let snapshot = (visibility == Visibility::Locked)
            .then(|| pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot()));
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
            let page = match snapshot {
                Some(_) => pg_sys::BufferGetPage(buf),
                None => {
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
                    let live = match snapshot {
                        Some(s) => pg_sys::HeapTupleSatisfiesVisibility(&mut tuple, s, buf),
                        None => live_now(tuple.t_data),
                    };
                    if live {
                        visit(&mut tuple);
                    }
                }
            }
            if snapshot.is_some() {
                pg_sys::UnlockReleaseBuffer(buf);
            }
        }
        if let Some(s) = snapshot {
            pg_sys::UnregisterSnapshot(s);
        }
        pg_sys::FreeAccessStrategy(strategy);
    }
}

fn name_text(name: &pg_sys::NameData) -> String {
    // SAFETY: a NameData holds a NUL-terminated string.
    unsafe { CStr::from_ptr(name.data.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Whether the tuple is inserted by a committed transaction and not
/// deleted by one, as a snapshot taken now would see it; decided from its
/// hint bits and the commit log, changing nothing.
///
/// # Safety
/// `tup` must point to a heap tuple header of another database's catalog
/// (so no transaction of ours wrote it), in memory we own.
unsafe fn live_now(tup: pg_sys::HeapTupleHeader) -> bool {
    // SAFETY: `tup` is a valid heap tuple header (the caller's promise).
    let infomask = unsafe { (*tup).t_infomask } as u32;
    let committed = |xid: pg_sys::TransactionId| {
        // As HeapTupleSatisfiesMVCC: the proc array first, since a
        // transaction is marked committed in clog before it leaves it.
        // SAFETY: lookups of a plain XID in the proc array and the commit
        // log, which change nothing.
        unsafe { !pg_sys::TransactionIdIsInProgress(xid) && pg_sys::TransactionIdDidCommit(xid) }
    };
    let xmin_frozen = pg_sys::HEAP_XMIN_COMMITTED | pg_sys::HEAP_XMIN_INVALID;
    if infomask & xmin_frozen == xmin_frozen || infomask & pg_sys::HEAP_XMIN_COMMITTED != 0 {
        // committed (or frozen)
    } else if infomask & pg_sys::HEAP_XMIN_INVALID != 0
        // SAFETY: as above; a heap tuple's header holds its xmin.
        || !committed(unsafe { (*tup).t_choice.t_heap.t_xmin })
    {
        return false;
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
    if infomask & pg_sys::HEAP_XMAX_COMMITTED != 0 {
        return false;
    }
    let xmax = if infomask & pg_sys::HEAP_XMAX_IS_MULTI != 0 {
        // SAFETY: a valid header whose xmax is a MultiXactId, which this
        // looks up without changing anything.
        unsafe { pg_sys::HeapTupleGetUpdateXid(tup as _) }
    } else {
        // SAFETY: as above; a heap tuple's header holds its xmax.
        unsafe { (*tup).t_choice.t_heap.t_xmax }
    };
    !committed(xmax)
}
