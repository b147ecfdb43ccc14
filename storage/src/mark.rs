//! Record marks: the extended attribute that says which WAL record a
//! replayed branch directory was built for.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The extended attribute that names the WAL record a replayed branch
/// directory was built for (see [`set_record_mark`]).
const RECORD_MARK: &CStr = c"user.pg_branch.record";

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
    setxattr(dir, RECORD_MARK, mark.as_bytes())
}

/// The mark [`set_record_mark`] left on `dir`, if any (None also where the
/// filesystem has no extended attributes).
pub fn record_mark(dir: &Path) -> io::Result<Option<String>> {
    let mut buf = [0u8; 128];
    match getxattr(dir, RECORD_MARK, &mut buf) {
        Ok(n) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) | Some(libc::ERANGE) => Ok(None),
            _ => Err(e),
        },
    }
}

/// The extended attribute that carries, with a reset branch's contents,
/// what the registry says of the reset that put them there (see
/// [`set_reset_facts`]).
const RESET_FACTS: &CStr = c"user.pg_branch.reset";

/// Record on directory `dir` the registry's facts of the reset that made
/// its contents (the server writes a JSON object), before the directory is
/// swapped into place; the caller fsyncs it. The facts travel with the
/// contents, atomically, where the registry's own record (a catalog row)
/// waits for the commit: after a crash between the swap and the commit the
/// facts are the newer, and the server reads them instead.
pub fn set_reset_facts(dir: &Path, facts: &str) -> io::Result<()> {
    setxattr(dir, RESET_FACTS, facts.as_bytes())
}

/// The facts [`set_reset_facts`] left on `dir`, if any.
pub fn reset_facts(dir: &Path) -> io::Result<Option<String>> {
    let mut buf = [0u8; 2048];
    match getxattr(dir, RESET_FACTS, &mut buf) {
        Ok(n) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) | Some(libc::ERANGE) | Some(libc::ENOENT) => {
                Ok(None)
            }
            _ => Err(e),
        },
    }
}

// nix has no extended-attribute calls: these two are libc's, behind safe
// signatures.

/// `setxattr(2)`: set the attribute `name` of `path` to `value`, creating or
/// replacing it.
fn setxattr(path: &Path, name: &CStr, value: &[u8]) -> io::Result<()> {
    let path = cpath(path)?;
    // SAFETY: `path` and `name` are NUL-terminated strings and `value` is
    // readable for `value.len()` bytes, all valid for the call; the kernel
    // only reads them.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getxattr(2)`: read the attribute `name` of `path` into `buf`; returns its
/// length (`ERANGE` if it is longer than `buf`).
fn getxattr(path: &Path, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let path = cpath(path)?;
    // SAFETY: `path` and `name` are NUL-terminated strings valid for the
    // call, and `buf` is writable for `buf.len()` bytes, of which the kernel
    // writes at most that many.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}
