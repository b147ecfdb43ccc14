//! Branches made while a base backup runs on this primary.
//!
//! A base backup copies the data directory while the server runs, so the
//! copy of each page is from some moment between the backup's start
//! checkpoint and its end; replay of the WAL from that checkpoint repairs
//! every page that changed since (the first change after a checkpoint
//! carries a full-page image). A branch record replayed in that window,
//! before the restored server is consistent, clones the template as the
//! backup holds it: a page that the template changed after the branch, and
//! that the backup copied after that change, carries the later change into
//! the branch, and nothing in the WAL repairs it, because the branch never
//! changed that page. Heap, index and TOAST can then disagree.
//!
//! So while a backup runs, a branch is also written into WAL page by page
//! with core's records, exactly as core's `WAL_LOG` strategy writes a new
//! database (`log_contents`): a DROP of the fuzzy clone, then the
//! directory, its relation map, every fork and every page. Replay of those
//! records rebuilds the branch as it was made, from any backup, on any
//! server, with or without pg_branch. The primary's own branch stays a
//! copy-on-write clone; a server that replays these records gets a plain
//! copy.
//!
//! Core keeps the number of running backups in `XLogCtl`, shared memory
//! that xlog.c does not export: `Watch` reads it at its documented place
//! (`xlog.c`'s `XLogCtlInsert`, the same in 15 to 18) and checks that it
//! reads the right bytes; if it cannot tell, it says a backup may run, and
//! the branch is written into WAL.

use pgrx::pg_sys;
use std::sync::atomic::{fence, Ordering};

/// Offsets in `XLogCtlInsert`, the first member of `XLogCtlData`, on a
/// 64-bit server: `slock_t insertpos_lck; uint64 CurrBytePos, PrevBytePos;
/// char pad[PG_CACHE_LINE_SIZE (128)]; XLogRecPtr RedoRecPtr;` then (15)
/// `bool forcePageWrites, fullPageWrites;` or (16+) `bool fullPageWrites;`,
/// then `int runningBackups; XLogRecPtr lastBackupStart;`.
const REDO_REC_PTR: usize = 152;
const RUNNING_BACKUPS: usize = 164;
const LAST_BACKUP_START: usize = 168;
const _: () = assert!(
    std::mem::size_of::<usize>() == 8,
    "offsets are for 64-bit servers"
);

/// What `XLogCtlInsert` says about backups.
struct Backups {
    running: i32,
    last_start: pg_sys::XLogRecPtr,
}

/// Read the backup counters from `XLogCtl`, or `None` if the bytes there do
/// not look like `XLogCtlInsert` (another layout than the one above).
fn read_backups() -> Option<Backups> {
    // SAFETY: ShmemInitStruct finds the existing "XLOG Ctl" entry (the
    // postmaster made it; the size is the one it was made with) under
    // ShmemIndexLock and returns its address. The reads are of plain
    // integers that other processes change under WAL insertion locks; a
    // torn or stale read is caught by the checks below or is on the safe
    // side (see `Watch`). GetRedoRecPtr and GetXLogInsertRecPtr read
    // shared memory under their spinlocks.
    unsafe {
        let mut found = false;
        let ctl = pg_sys::ShmemInitStruct(c"XLOG Ctl".as_ptr(), pg_sys::XLOGShmemSize(), &mut found)
            as *const u8;
        if !found || ctl.is_null() {
            return None;
        }
        fence(Ordering::SeqCst);
        let shared_redo = pg_sys::GetRedoRecPtr();
        let redo = std::ptr::read_volatile(ctl.add(REDO_REC_PTR) as *const u64);
        let running = std::ptr::read_volatile(ctl.add(RUNNING_BACKUPS) as *const i32);
        let last_start = std::ptr::read_volatile(ctl.add(LAST_BACKUP_START) as *const u64);
        let insert = pg_sys::GetXLogInsertRecPtr();
        // Insert.RedoRecPtr is where XLogCtl->RedoRecPtr (which
        // GetRedoRecPtr returns) is copied from, and no insertion is past
        // the insert position.
        let plausible = redo >= shared_redo
            && redo <= insert
            && (0..=pg_sys::MaxBackends).contains(&running)
            && last_start <= insert;
        plausible.then_some(Backups {
            running,
            last_start,
        })
    }
}

/// How many base backups run on this server now, if core's count can be
/// read (doctor.rs).
pub fn running() -> Option<i32> {
    read_backups().map(|b| b.running)
}

/// Whether any base backup overlapped the records written between
/// `Watch::start` and `Watch::saw_backup`.
///
/// A backup endangers a branch record R if its start checkpoint's redo
/// point is before R and it copies files after R. Core raises the count of
/// running backups before it asks for that checkpoint, lowers it only after
/// the copy, and sets `lastBackupStart` to the redo point once the
/// checkpoint is done, all under the WAL insertion locks. So such a backup
/// either ran when `start` looked (the count was above zero), still runs
/// when `saw_backup` looks, or started and finished in between, in which
/// case its redo point, at or after the insert position `start` noted, is
/// in `lastBackupStart`.
pub struct Watch {
    running: bool,
    insert_at: pg_sys::XLogRecPtr,
}

impl Watch {
    pub fn start() -> Watch {
        // SAFETY: reads the insert position under its spinlock.
        let insert_at = unsafe { pg_sys::GetXLogInsertRecPtr() };
        let running = read_backups().is_none_or(|b| b.running > 0);
        Watch { running, insert_at }
    }

    pub fn saw_backup(&self) -> bool {
        self.running
            || read_backups().is_none_or(|b| b.running > 0 || b.last_start >= self.insert_at)
    }
}

/// commands/dbcommands_xlog.h and utils/relmapper.h
const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
const XLOG_RELMAP_UPDATE: u8 = 0x00;
/// storage/relfilelocator.h: the fork a file's name suffix names.
const FORKS: [(&str, pg_sys::ForkNumber::Type); 4] = [
    ("", pg_sys::ForkNumber::MAIN_FORKNUM),
    ("_fsm", pg_sys::ForkNumber::FSM_FORKNUM),
    ("_vm", pg_sys::ForkNumber::VISIBILITYMAP_FORKNUM),
    ("_init", pg_sys::ForkNumber::INIT_FORKNUM),
];
const BLOCK: usize = pg_sys::BLCKSZ as usize;

/// One file of a relation fork: `<relfilenumber>[_fork][.segment]`.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct RelationFile {
    number: u32,
    fork: pg_sys::ForkNumber::Type,
    segment: u32,
    name: std::ffi::OsString,
}

/// The relation file `name` names, if it names one. Temporary relations
/// (`t<backend>_<number>`), which core does not log either, and the other
/// files (PG_VERSION, pg_filenode.map, pg_internal.init) are not.
fn relation_file(name: &std::ffi::OsStr) -> Option<RelationFile> {
    let text = name.to_str()?;
    let (base, segment) = match text.split_once('.') {
        Some((b, s)) => (b, s.parse().ok().filter(|&s: &u32| s > 0)?),
        None => (text, 0),
    };
    let digits = base
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(base.len());
    let (number, suffix) = base.split_at(digits);
    let fork = FORKS.iter().find(|(s, _)| *s == suffix)?.1;
    let number = number.parse().ok().filter(|&n: &u32| n != 0)?;
    Some(RelationFile {
        number,
        fork,
        segment,
        name: name.to_owned(),
    })
}

/// Write the branch `db`, whose directories are `dirs` (tablespace and
/// path), into WAL with core's records: a DROP of the directories that
/// replay of the branch records built, then for each directory core's
/// `WAL_LOG` sequence (`CreateDatabaseUsingWalLog`): the directory and
/// PG_VERSION, the relation map, each fork's creation and each page as a
/// full-page image. Returns the number of pages written.
///
/// Runs before the branch commits, so no one else reads or writes its
/// files: they are the template as it was behind the fence. An error
/// aborts the branch (cleanup.rs removes it and logs its drop).
pub fn log_contents(db: pg_sys::Oid, dirs: &[(pg_sys::Oid, std::path::PathBuf)]) -> i64 {
    let tablespaces: Vec<pg_sys::Oid> = dirs.iter().map(|(ts, _)| *ts).collect();
    crate::wal::log_drop(db, &tablespaces);
    let mut pages = 0;
    for (ts, dir) in dirs {
        log_database_dir(db, *ts);
        match std::fs::read(dir.join("pg_filenode.map")) {
            Ok(map) => log_relation_map(db, *ts, map),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => file_error(&dir.join("pg_filenode.map"), &e),
        }
        let mut files: Vec<RelationFile> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| relation_file(&e.file_name()))
                .collect(),
            Err(e) => file_error(dir, &e),
        };
        files.sort();
        for file in &files {
            let mut locator = crate::compat::file_locator(*ts, db, pg_sys::Oid::from(file.number));
            if file.segment == 0 {
                crate::ffi::log_smgrcreate(&locator, file.fork);
            }
            pages += log_pages(&mut locator, file, &dir.join(&file.name));
        }
    }
    pages
}

/// XLOG_DBASE_CREATE_WAL_LOG: replay creates `<ts>/<db>` and its PG_VERSION.
fn log_database_dir(db: pg_sys::Oid, ts: pg_sys::Oid) {
    // xl_dbase_create_wal_log_rec: Oid db_id; Oid tablespace_id.
    let mut rec = [db.to_u32(), ts.to_u32()];
    // SAFETY: `rec` outlives XLogInsert, which copies it.
    unsafe {
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData(rec.as_mut_ptr().cast(), 8);
        pg_sys::XLogInsert(pg_sys::RmgrIds::RM_DBASE_ID as _, XLOG_DBASE_CREATE_WAL_LOG);
    }
}

/// XLOG_RELMAP_UPDATE: replay writes `map` as the directory's
/// pg_filenode.map, as `RelationMapCopy()` logs it.
fn log_relation_map(db: pg_sys::Oid, ts: pg_sys::Oid, map: Vec<u8>) {
    // xl_relmap_update: Oid dbid; Oid tsid; int32 nbytes; char data[].
    let mut rec = Vec::with_capacity(12 + map.len());
    rec.extend_from_slice(&db.to_u32().to_ne_bytes());
    rec.extend_from_slice(&ts.to_u32().to_ne_bytes());
    rec.extend_from_slice(&(map.len() as i32).to_ne_bytes());
    rec.extend_from_slice(&map);
    // SAFETY: as above.
    unsafe {
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData(rec.as_mut_ptr().cast(), rec.len() as _);
        pg_sys::XLogInsert(pg_sys::RmgrIds::RM_RELMAP_ID as _, XLOG_RELMAP_UPDATE);
    }
}

/// Every whole page of `path` as a full-page image of its block, in
/// batches of as many as one record holds, as `log_newpage_range()` does.
fn log_pages(
    locator: &mut crate::compat::FileLocator,
    file: &RelationFile,
    path: &std::path::Path,
) -> i64 {
    use std::io::Read;
    const BATCH: usize = pg_sys::XLR_MAX_BLOCK_ID as usize;
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| file_error(path, &e));
    // 8-byte aligned, as a page in shared buffers is.
    let mut buf = vec![0u64; BATCH * BLOCK / 8];
    let first = file.segment * pg_sys::RELSEG_SIZE;
    let mut block = first;
    loop {
        // SAFETY: `buf` is BATCH * BLOCK bytes long.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), BATCH * BLOCK) };
        let mut filled = 0;
        while filled < bytes.len() {
            match f.read(&mut bytes[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => file_error(path, &e),
            }
        }
        let n = filled / BLOCK;
        if n == 0 {
            break;
        }
        let mut blocks: Vec<pg_sys::BlockNumber> = (block..block + n as u32).collect();
        let mut pages: Vec<pg_sys::Page> = (0..n)
            .map(|i| bytes[i * BLOCK..].as_mut_ptr().cast())
            .collect();
        // SAFETY: `pages` point at n whole pages of `buf`, `blocks` holds
        // n block numbers; log_newpages sets the LSN of each page it logs
        // in our copy, not in the file.
        unsafe {
            pg_sys::log_newpages(
                locator,
                file.fork,
                n as _,
                blocks.as_mut_ptr(),
                pages.as_mut_ptr(),
                false,
            )
        };
        block += n as u32;
        pgrx::check_for_interrupts!();
        if n < BATCH {
            break;
        }
    }
    (block - first) as i64
}

fn file_error(path: &std::path::Path, e: &std::io::Error) -> ! {
    pgrx::ereport!(
        ERROR,
        crate::error::file_error_code(e.raw_os_error()),
        format!(
            "could not read \"{}\" to write it into WAL: {}",
            path.display(),
            pg_branch_storage::errno_text(e)
        )
    );
}
