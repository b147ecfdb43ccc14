//! Record marks: the extended attribute that says which WAL record a
//! replayed branch directory was built for.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The extended attribute that names the WAL record a replayed branch
/// directory was built for (see [`set_record_mark`]).
const RECORD_MARK: &std::ffi::CStr = c"user.pg_branch.record";

/// Mark directory `dir` as built, completely, for the WAL record `mark`
/// (the server writes its timeline and start LSN), before it is renamed into
/// place; the caller fsyncs it if it must be durable. Replay that meets the same record again (a standby restarting
/// from a restartpoint before it) finds the mark and keeps the directory,
/// instead of cloning the template again as it is on disk *now*, which may
/// hold later changes. A mark is an extended attribute of the directory
/// itself, not a file in it: PostgreSQL's tools (pg_checksums) take every
/// file of a database directory for a relation. Nothing copies it but a
/// snapshot of the directory: not pg_basebackup, not pg_rewind, not cp.
pub fn set_record_mark(dir: &Path, mark: &str) -> io::Result<()> {
    let path = cpath(dir)?;
    // SAFETY: NUL-terminated path and name, and a buffer of `mark.len()`
    // bytes, all valid for the call.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            RECORD_MARK.as_ptr(),
            mark.as_ptr().cast(),
            mark.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The mark [`set_record_mark`] left on `dir`, if any (None also where the
/// filesystem has no extended attributes).
pub fn record_mark(dir: &Path) -> io::Result<Option<String>> {
    let path = cpath(dir)?;
    let mut buf = [0u8; 128];
    // SAFETY: NUL-terminated path and name; `buf` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            RECORD_MARK.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) | Some(libc::ERANGE) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(
        String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
    ))
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}
