//! Copy-on-write clones of a PostgreSQL database directory.
//!
//! pg_branch makes a new database by cloning the template's directory
//! (`base/<oid>` or `pg_tblspc/<ts>/<version>/<oid>`) with the cheapest
//! method the filesystem offers:
//!
//! 1. [`Method::Snapshot`]: the template's directory is a btrfs subvolume,
//!    so one `BTRFS_IOC_SNAP_CREATE_V2` ioctl makes the whole copy, atomically
//!    and in constant time whatever the size.
//! 2. [`Method::Reflink`]: each file is cloned with `FICLONE` (btrfs, XFS
//!    formatted with reflink, OpenZFS >= 2.2, bcachefs). Time grows with the
//!    number of files, not with their size. On btrfs the new directory is
//!    created as a subvolume, so that its own branches are snapshots.
//!
//! When neither works, [`probe`] says why and the caller leaves the statement
//! to PostgreSQL's own copy.
//!
//! This crate knows nothing about PostgreSQL's server: it is plain Rust over
//! `libc`, so its tests run on real loop-mounted filesystems without a
//! server (see `tests/`).

mod btrfs;
mod ioctl;
mod reflink;

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How a directory is cloned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// btrfs subvolume snapshot of the whole directory: O(1).
    Snapshot,
    /// One `FICLONE` per file into a new directory (a new subvolume on btrfs).
    Reflink,
}

impl Method {
    /// The name users see in NOTICEs, WAL descriptions and the SQL API.
    pub fn name(self) -> &'static str {
        match self {
            Method::Snapshot => "snapshot",
            Method::Reflink => "reflink",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a directory cannot be cloned copy-on-write; shown to the user in the
/// NOTICE that says the statement went to core instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub reason: String,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Decide how `src` (an existing database directory) can be cloned into a
/// new directory created inside `dst_parent`.
///
/// A btrfs subvolume is snapshotted when `dst_parent` is on the same btrfs
/// filesystem (same filesystem UUID). Otherwise the test is the real
/// operation on a throw-away target: one file of `src` is reflinked into an
/// unnamed `O_TMPFILE` in `dst_parent`, which vanishes when closed, so
/// probing leaves nothing behind. A successful reflink proves both that the
/// filesystem can share extents and that `src` and `dst_parent` are on the
/// same filesystem (FICLONE refuses with `EXDEV` otherwise). Files with
/// btrfs's No_COW attribute cannot be reflinked, so any such file makes the
/// reflink path unsupported, with a reason that names it.
pub fn probe(src: &Path, dst_parent: &Path) -> Result<Result<Method, Unsupported>, Error> {
    // A subvolume snapshots whole, whatever its files' attributes, into any
    // directory of the same btrfs filesystem.
    let stat_src = Error::at("stat", src);
    let stat_dst = Error::at("stat", dst_parent);
    if btrfs::is_subvolume(src).map_err(stat_src)?
        && btrfs::is_btrfs(dst_parent).map_err(stat_dst)?
        && btrfs::fsid(src).map_err(Error::at("stat", src))?
            == btrfs::fsid(dst_parent).map_err(Error::at("stat", dst_parent))?
    {
        return Ok(Ok(Method::Snapshot));
    }
    let Some(sample) = sample_file(src)? else {
        let reason = format!("\"{}\" has no file to clone", src.display());
        return Ok(Err(Unsupported { reason }));
    };
    let fs = fs_name(dst_parent).unwrap_or("unknown");
    let cannot_clone = || Unsupported {
        reason: format!(
            "the {fs} filesystem of \"{}\" cannot clone files",
            dst_parent.display()
        ),
    };
    let from = File::open(&sample).map_err(Error::at("open file", &sample))?;
    let to = match reflink::tmpfile(dst_parent) {
        Ok(f) => f,
        // No O_TMPFILE (older NFS, some FUSE filesystems): no reflinks either.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)
            ) =>
        {
            return Ok(Err(cannot_clone()))
        }
        Err(e) => return Err(Error::at("create a file in", dst_parent)(e)),
    };
    if let Err(e) = reflink::ficlone(&from, &to) {
        let reason = match e.raw_os_error() {
            Some(libc::EXDEV) => format!(
                "\"{}\" and \"{}\" are on different filesystems",
                src.display(),
                dst_parent.display()
            ),
            Some(libc::EINVAL) if reflink::is_nocow(&sample).unwrap_or(false) => {
                nocow_reason(&sample)
            }
            Some(libc::EOPNOTSUPP)
            | Some(libc::ENOTTY)
            | Some(libc::EINVAL)
            | Some(libc::ENOSYS) => cannot_clone().reason,
            _ => return Err(Error::at("reflink file", &sample)(e)),
        };
        return Ok(Err(Unsupported { reason }));
    }
    // The sample reflinked; a No_COW file elsewhere in the directory would
    // still fail halfway through the clone, so look for one now.
    for entry in read_dir(src)? {
        let entry = entry.map_err(Error::at("read directory", src))?;
        let path = entry.path();
        let is_file = entry
            .file_type()
            .map_err(Error::at("stat", &path))?
            .is_file();
        if is_file && reflink::is_nocow(&path).unwrap_or(false) {
            return Ok(Err(Unsupported {
                reason: nocow_reason(&path),
            }));
        }
    }
    Ok(Ok(Method::Reflink))
}

fn nocow_reason(file: &Path) -> String {
    format!(
        "\"{}\" has the No_COW attribute (chattr +C), and btrfs cannot reflink such files; \
         a database directory that is a btrfs subvolume can still be snapshotted",
        file.display()
    )
}

/// A failed filesystem operation, with the path it failed on: what users
/// need to see ("could not reflink file \"…/16384\": No space left on
/// device"), and the errno the server maps to a SQLSTATE.
#[derive(Debug)]
pub struct Error {
    /// What was being done, as a verb phrase: "reflink file", "create directory".
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl Error {
    fn at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error { op, path, source }
    }

    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not {} \"{}\": {}",
            self.op,
            self.path.display(),
            errno_text(&self.source)
        )
    }
}

/// `strerror()` of an OS error, without Rust's " (os error N)" suffix, so
/// messages read like the server's own `%m`.
pub fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        // SAFETY: glibc's strerror returns a NUL-terminated string that
        // stays valid: static for known errnos, thread-local otherwise.
        Some(n) => unsafe { std::ffi::CStr::from_ptr(libc::strerror(n)) }
            .to_string_lossy()
            .into_owned(),
        None => e.to_string(),
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// What [`clone_dir`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloned {
    pub method: Method,
    /// Temporary-relation files (`t<backend>_<relfilenode>…`) found in the
    /// source and left out of the clone.
    pub skipped_temp_files: usize,
    /// Regular files in the clone.
    pub files: usize,
}

/// Clone directory `src` to `dst` (which must not exist) with `method`, and
/// make the result durable: on return `dst`, everything in it, and its entry
/// in the parent directory have reached stable storage.
///
/// Like PostgreSQL's own `copydir(src, dst, false)`, subdirectories are not
/// copied (a database directory has none). Temporary-relation files are left
/// out, as the server would remove them at its next start anyway.
///
/// On error a partly built `dst` may remain; the caller removes it with
/// [`remove_dir`] (pg_branch's error cleanup does).
pub fn clone_dir(src: &Path, dst: &Path, method: Method) -> Result<Cloned, Error> {
    let parent = parent_of(dst);
    let mut skipped_temp_files = 0;
    let mut files = 0;
    match method {
        Method::Snapshot => {
            btrfs::snapshot(src, dst).map_err(Error::at("snapshot into", dst))?;
            // The snapshot is an exact image, temp files included: drop them.
            for entry in read_dir(dst)? {
                let entry = entry.map_err(Error::at("read directory", dst))?;
                let path = entry.path();
                if looks_like_temp_rel_name(&entry.file_name()) {
                    fs::remove_file(&path).map_err(Error::at("remove file", &path))?;
                    skipped_temp_files += 1;
                } else if entry
                    .file_type()
                    .map_err(Error::at("stat", &path))?
                    .is_file()
                {
                    files += 1;
                }
            }
        }
        Method::Reflink => {
            // The new directory and its files get the template's permission
            // bits, as a snapshot keeps them, which PostgreSQL gave them
            // from the data directory's (pg_dir_create_mode and
            // pg_file_create_mode: group access with initdb -g).
            let mode = dir_mode(src)?;
            let on_btrfs = btrfs::is_btrfs(&parent).map_err(Error::at("stat", &parent))?;
            if on_btrfs {
                btrfs::create_subvolume(dst, mode).map_err(Error::at("create subvolume", dst))?;
            } else {
                fs::create_dir(dst).map_err(Error::at("create directory", dst))?;
                fs::set_permissions(dst, fs::Permissions::from_mode(mode))
                    .map_err(Error::at("chmod", dst))?;
            }
            files = reflink_files(src, dst, &mut skipped_temp_files)?;
        }
    }
    fsync_path(dst)?;
    fsync_path(&parent)?;
    Ok(Cloned {
        method,
        skipped_temp_files,
        files,
    })
}

/// The permission bits of directory `dir`.
fn dir_mode(dir: &Path) -> Result<u32, Error> {
    Ok(fs::metadata(dir)
        .map_err(Error::at("stat", dir))?
        .permissions()
        .mode()
        & 0o777)
}

/// Reflink every regular file of `src` but temporary relations into the
/// existing directory `dst`; returns how many were cloned.
fn reflink_files(src: &Path, dst: &Path, skipped_temp_files: &mut usize) -> Result<usize, Error> {
    let mut files = 0;
    for entry in read_dir(src)? {
        let entry = entry.map_err(Error::at("read directory", src))?;
        let name = entry.file_name();
        let from = entry.path();
        if looks_like_temp_rel_name(&name) {
            *skipped_temp_files += 1;
            continue;
        }
        if !entry
            .file_type()
            .map_err(Error::at("stat", &from))?
            .is_file()
        {
            continue;
        }
        match reflink::clone_file(&from, &dst.join(&name)) {
            Ok(()) => files += 1,
            // A file that vanished between readdir and open was a
            // dropped relation whose unlink the checkpointer had
            // deferred: it is not part of the database.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    && reflink::is_nocow(&from).unwrap_or(false) =>
            {
                return Err(Error {
                    op: "reflink file",
                    path: from.clone(),
                    source: io::Error::new(io::ErrorKind::Unsupported, nocow_reason(&from)),
                })
            }
            Err(e) => return Err(Error::at("reflink file", &from)(e)),
        }
    }
    Ok(files)
}

/// What [`convert_to_subvolume`] found or did.
#[derive(Debug)]
pub enum Converted {
    /// The directory was a subvolume already; nothing was done.
    AlreadySubvolume,
    /// The directory is now a subvolume holding reflinks of its `files`
    /// files. `left_behind` says why the old directory, now named
    /// `<dir>.pg_branch_convert`, was not removed, if it was not (it could
    /// not be, or the swap could not be made durable and the old directory
    /// must stay complete until it is).
    Converted {
        files: usize,
        left_behind: Option<Error>,
    },
}

/// Suffix of the subvolume [`convert_to_subvolume`] builds next to the
/// directory it converts; a crash can leave one behind, and the next
/// conversion removes it.
pub const CONVERT_SUFFIX: &str = "pg_branch_convert";

/// Suffix of the directory a replayed branch is built under before it is
/// renamed into place (the server's redo, `wal.rs`).
pub const REDO_SUFFIX: &str = "pg_branch_redo";

/// What a name in a tablespace's database directory stands for: `<oid>`,
/// a database's directory, or `<oid>.pg_branch_convert` /
/// `<oid>.pg_branch_redo`, a scratch directory a crash left behind (then
/// the second field is true). The OID must be spelt as PostgreSQL writes
/// it (`%u`): decimal digits, no sign, no leading zero. `u32::from_str`
/// alone also takes `+16384` and `016384`, and such a directory would then
/// stand for database 16384.
pub fn database_dir_name(name: &str) -> Option<(u32, bool)> {
    let (digits, leftover) = match name.split_once('.') {
        Some((d, suffix)) if suffix == CONVERT_SUFFIX || suffix == REDO_SUFFIX => (d, true),
        Some(_) => return None,
        None => (name, false),
    };
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, leftover))
}

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
    let path = cpath(dir).map_err(|e| e.source)?;
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
    let path = cpath(dir).map_err(|e| e.source)?;
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

/// Remove what an interrupted conversion of `dir` left next to it
/// (`<dir>.pg_branch_convert`: the partial subvolume before the swap, the
/// old directory after it; `dir` is complete either way). Returns whether
/// there was one. The caller keeps everyone else from converting `dir`.
pub fn remove_convert_leftover(dir: &Path) -> io::Result<bool> {
    let tmp = dir.with_extension(CONVERT_SUFFIX);
    if fs::symlink_metadata(&tmp).is_err() {
        return Ok(false);
    }
    remove_dir(&tmp)?;
    Ok(true)
}

/// Turn the plain directory `dir`, on btrfs, into a subvolume with the same
/// name and the same files, so that it can be snapshotted in O(1).
///
/// The new subvolume is built next to `dir` under `<dir>.pg_branch_convert`
/// by reflinks (no data is copied), made durable, then swapped with `dir`
/// in one `renameat2(RENAME_EXCHANGE)`, so `dir` names a complete directory
/// at every instant, whatever crashes. The old directory, now under the
/// temporary name, is then removed.
///
/// The caller must keep every writer out of `dir` for the duration: files
/// written to the old directory after their reflink would be lost.
pub fn convert_to_subvolume(dir: &Path) -> Result<Converted, Error> {
    // A conversion interrupted by a crash may have left the temporary
    // subvolume, or (after the swap) the old directory, under this name.
    let tmp = dir.with_extension(CONVERT_SUFFIX);
    remove_convert_leftover(dir).map_err(Error::at("remove", &tmp))?;
    if btrfs::is_subvolume(dir).map_err(Error::at("stat", dir))? {
        return Ok(Converted::AlreadySubvolume);
    }
    if !btrfs::is_btrfs(dir).map_err(Error::at("stat", dir))? {
        return Err(Error {
            op: "convert",
            path: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::Unsupported, "only btrfs has subvolumes"),
        });
    }
    let mode = dir_mode(dir)?;
    btrfs::create_subvolume(&tmp, mode).map_err(Error::at("create subvolume", &tmp))?;
    let swapped = reflink_files(dir, &tmp, &mut 0).and_then(|files| {
        fsync_path(&tmp)?;
        exchange(dir, &tmp)?;
        Ok(files)
    });
    let files = match swapped {
        Ok(files) => files,
        Err(e) => {
            // Not swapped: `dir` is untouched; drop the partial subvolume.
            let _ = remove_dir(&tmp);
            return Err(e);
        }
    };
    // Swapped: `dir` is the subvolume and `tmp` the old plain directory,
    // whatever fails from here on, so every outcome is "converted".
    let left_behind = match fsync_path(&parent_of(dir)) {
        // The swap may not be durable: after a crash `dir` could be the old
        // directory again, so it must stay complete. Leave it; the next
        // conversion (or the replay of its record) removes the leftover.
        Err(e) => Some(e),
        Ok(()) => remove_dir(&tmp).map_err(Error::at("remove", &tmp)).err(),
    };
    Ok(Converted::Converted { files, left_behind })
}

/// Atomically swap the directory entries `a` and `b` (same parent).
fn exchange(a: &Path, b: &Path) -> Result<(), Error> {
    let ca = cpath(a)?;
    let cb = cpath(b)?;
    // SAFETY: both are NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(Error::at("swap in the subvolume built for", a)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn cpath(p: &Path) -> Result<std::ffi::CString, Error> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| Error {
        op: "use path",
        path: p.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

fn read_dir(dir: &Path) -> Result<fs::ReadDir, Error> {
    fs::read_dir(dir).map_err(Error::at("read directory", dir))
}

/// Write the dirty data of the filesystem holding `dir` to disk
/// (`syncfs(2)`), and wait for it.
///
/// A snapshot must first write out the source's dirty pages and commit a
/// btrfs transaction, and a reflink must write out the file it clones;
/// whoever waits for the clone waits for that too. Doing it first, while
/// nobody waits, leaves the clone only what was written since: under a
/// pgbench load this cut the time writers were paused from about 90 ms to
/// about 15 ms per branch (`bench/run.sh live-template`), where syncing
/// only the template's files (`fdatasync` each) left it at about 75 ms,
/// because the transaction commit was the larger part.
pub fn presync(dir: &Path) -> io::Result<()> {
    let d = File::open(dir)?;
    // SAFETY: `d` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(std::os::unix::io::AsRawFd::as_raw_fd(&d)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Remove a directory made by [`clone_dir`] (a subvolume or a plain
/// directory), and make the removal durable. A missing directory is not an
/// error: cleanup must be idempotent.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        // Since Linux 4.18, rmdir(2) removes an empty subvolume too, so the
        // same call serves both kinds of directory.
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    File::open(parent_of(dir))?.sync_all()
}

/// Whether `dir` is the root of a btrfs subvolume (so branches of it are
/// snapshots).
pub fn is_subvolume(dir: &Path) -> io::Result<bool> {
    btrfs::is_subvolume(dir)
}

/// Whether files can be reflinked within the directory `dir`: a 4 kB
/// anonymous file is written there and cloned into another one. Nothing is
/// left behind. For diagnosis (pg_branch's `doctor()`); branches use
/// [`probe`], which tests the real source and target. (In a No_COW
/// directory both test files are No_COW, which btrfs does clone: callers
/// check [`is_nocow`] on the directory themselves.)
pub fn can_reflink_in(dir: &Path) -> Result<Result<(), Unsupported>, Error> {
    use std::io::Write;
    let mut from = match reflink::tmpfile(dir) {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)
            ) =>
        {
            return Ok(Err(Unsupported {
                reason: format!("\"{}\" does not support O_TMPFILE", dir.display()),
            }))
        }
        Err(e) => return Err(Error::at("create a file in", dir)(e)),
    };
    from.write_all(&[0x5a; 4096])
        .and_then(|_| from.sync_all())
        .map_err(Error::at("write a file in", dir))?;
    let to = reflink::tmpfile(dir).map_err(Error::at("create a file in", dir))?;
    match reflink::ficlone(&from, &to) {
        Ok(()) => Ok(Ok(())),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && reflink::is_nocow(dir).unwrap_or(false) => {
            Ok(Err(Unsupported {
                reason: format!(
                    "\"{}\" has the No_COW attribute (chattr +C): files created in it cannot be reflinked",
                    dir.display()
                ),
            }))
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::ENOSYS)
            ) =>
        {
            Ok(Err(Unsupported {
                reason: format!(
                    "the {} filesystem of \"{}\" cannot clone files",
                    fs_name(dir).unwrap_or("unknown"),
                    dir.display()
                ),
            }))
        }
        Err(e) => Err(Error::at("reflink a file in", dir)(e)),
    }
}

/// Whether `path` (a file or directory) has btrfs's No_COW attribute.
pub fn is_nocow(path: &Path) -> io::Result<bool> {
    reflink::is_nocow(path)
}

/// The mount point and mount options of the filesystem holding `path`
/// (both the per-mount and the filesystem's own options), from
/// `/proc/self/mountinfo`.
pub fn mount_options(path: &Path) -> io::Result<(PathBuf, String)> {
    let path = fs::canonicalize(path)?;
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mut best: Option<(PathBuf, String)> = None;
    for line in info.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 6 || fields.len() < dash + 4 {
            continue;
        }
        let mountpoint = PathBuf::from(unescape_mountinfo(fields[4]));
        if !path.starts_with(&mountpoint) {
            continue;
        }
        // Later lines are mounted over earlier ones; the longest prefix wins.
        if best
            .as_ref()
            .is_none_or(|(m, _)| mountpoint.as_os_str().len() >= m.as_os_str().len())
        {
            let mut options: Vec<&str> = Vec::new();
            for o in fields[5].split(',').chain(fields[dash + 3].split(',')) {
                if !options.contains(&o) {
                    options.push(o);
                }
            }
            let options = options.join(",");
            best = Some((mountpoint, options));
        }
    }
    best.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in /proc/self/mountinfo"))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Name of the filesystem holding `path`, for messages.
pub fn fs_name(path: &Path) -> io::Result<&'static str> {
    let magic = btrfs::statfs_magic(path)?;
    Ok(match magic {
        btrfs::BTRFS_SUPER_MAGIC => "btrfs",
        0x5846_5342 => "xfs",
        0xEF53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0xCA45_1A4E => "bcachefs",
        0x6969 => "nfs",
        _ => "unknown",
    })
}

/// PostgreSQL's `looks_like_temp_rel_name()`: `t<digits>_<digits>`,
/// optionally followed by `_<fork>` and/or `.<segment>`.
pub fn looks_like_temp_rel_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let n = digits(rest);
    if n == 0 || !rest[n..].starts_with('_') {
        return false;
    }
    let rest = &rest[n + 1..];
    let n = digits(rest);
    if n == 0 {
        return false;
    }
    let mut rest = &rest[n..];
    if let Some(fork) = rest.strip_prefix('_') {
        let len = ["fsm", "vm", "init"]
            .iter()
            .find(|f| fork.starts_with(*f))
            .map(|f| f.len());
        match len {
            Some(len) => rest = &fork[len..],
            None => return false,
        }
    }
    if let Some(seg) = rest.strip_prefix('.') {
        let n = digits(seg);
        return n > 0 && n == seg.len();
    }
    rest.is_empty()
}

/// Any regular file of `dir` to probe reflinks with; `PG_VERSION` exists
/// in every database directory, so it is tried first.
fn sample_file(dir: &Path) -> Result<Option<PathBuf>, Error> {
    let pg_version = dir.join("PG_VERSION");
    if pg_version.is_file() {
        return Ok(Some(pg_version));
    }
    for entry in read_dir(dir)? {
        let entry = entry.map_err(Error::at("read directory", dir))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(Error::at("stat", &path))?;
        if meta.is_file() && meta.size() > 0 {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsync a file or directory by path.
fn fsync_path(path: &Path) -> Result<(), Error> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::at("fsync", path))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_core_spellings_are_database_directories() {
        use super::database_dir_name;
        assert_eq!(database_dir_name("16384"), Some((16384, false)));
        assert_eq!(database_dir_name("4294967295"), Some((u32::MAX, false)));
        assert_eq!(
            database_dir_name("16384.pg_branch_convert"),
            Some((16384, true))
        );
        assert_eq!(
            database_dir_name("16384.pg_branch_redo"),
            Some((16384, true))
        );
        for name in [
            "+16384",
            "016384",
            "0",
            "",
            "1e4",
            "16384.tmp",
            "-1",
            "4294967296",
            " 1",
            ".pg_branch_redo",
            "+1.pg_branch_redo",
        ] {
            assert_eq!(database_dir_name(name), None, "{name:?}");
        }
    }

    use super::looks_like_temp_rel_name;
    use std::ffi::OsStr;

    #[test]
    fn temp_rel_names_match_postgres() {
        for yes in [
            "t3_16384",
            "t12_1",
            "t3_16384_fsm",
            "t3_16384_vm",
            "t3_16384_init",
            "t3_16384.1",
            "t3_16384_fsm.12",
        ] {
            assert!(looks_like_temp_rel_name(OsStr::new(yes)), "{yes}");
        }
        for no in [
            "16384",
            "t_16384",
            "t3_",
            "t3_x",
            "t3_16384_foo",
            "t3_16384.",
            "t3_16384.1x",
            "PG_VERSION",
            "pg_filenode.map",
            "tx3_1",
        ] {
            assert!(!looks_like_temp_rel_name(OsStr::new(no)), "{no}");
        }
    }
}
