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
mod reflink;

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
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
pub fn probe(src: &Path, dst_parent: &Path) -> io::Result<Result<Method, Unsupported>> {
    // A subvolume snapshots whole, whatever its files' attributes, into any
    // directory of the same btrfs filesystem.
    if btrfs::is_subvolume(src)?
        && btrfs::is_btrfs(dst_parent)?
        && btrfs::fsid(src)? == btrfs::fsid(dst_parent)?
    {
        return Ok(Ok(Method::Snapshot));
    }
    let Some(sample) = sample_file(src)? else {
        let reason = format!("\"{}\" has no file to clone", src.display());
        return Ok(Err(Unsupported { reason }));
    };
    if let Err(e) = reflink::probe(&sample, dst_parent) {
        let fs = fs_name(dst_parent).unwrap_or("unknown");
        let reason = match e.raw_os_error() {
            Some(libc::EXDEV) => format!(
                "\"{}\" and \"{}\" are on different filesystems",
                src.display(),
                dst_parent.display()
            ),
            Some(libc::EINVAL) if reflink::is_nocow(&sample)? => nocow_reason(&sample),
            Some(libc::EOPNOTSUPP)
            | Some(libc::ENOTTY)
            | Some(libc::EINVAL)
            | Some(libc::ENOSYS) => {
                format!(
                    "the {fs} filesystem of \"{}\" cannot clone files",
                    dst_parent.display()
                )
            }
            _ => return Err(e),
        };
        return Ok(Err(Unsupported { reason }));
    }
    // The sample reflinked; a No_COW file elsewhere in the directory would
    // still fail halfway through the clone, so look for one now.
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        if entry.file_type()?.is_file() && reflink::is_nocow(&entry.path()).unwrap_or(false) {
            return Ok(Err(Unsupported {
                reason: nocow_reason(&entry.path()),
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
pub fn clone_dir(src: &Path, dst: &Path, method: Method) -> io::Result<Cloned> {
    let parent = parent_of(dst)?;
    let mut skipped_temp_files = 0;
    let mut files = 0;
    match method {
        Method::Snapshot => {
            btrfs::snapshot(src, dst)?;
            // The snapshot is an exact image, temp files included: drop them.
            for entry in fs::read_dir(dst)? {
                let entry = entry?;
                if looks_like_temp_rel_name(&entry.file_name()) {
                    fs::remove_file(entry.path())?;
                    skipped_temp_files += 1;
                } else if entry.file_type()?.is_file() {
                    files += 1;
                }
            }
        }
        Method::Reflink => {
            if btrfs::is_btrfs(&parent)? {
                btrfs::create_subvolume(dst)?;
            } else {
                fs::create_dir(dst)?;
            }
            for entry in fs::read_dir(src)? {
                let entry = entry?;
                let name = entry.file_name();
                if looks_like_temp_rel_name(&name) {
                    skipped_temp_files += 1;
                    continue;
                }
                if !entry.file_type()?.is_file() {
                    continue;
                }
                match reflink::clone_file(&entry.path(), &dst.join(&name)) {
                    Ok(()) => files += 1,
                    // A file that vanished between readdir and open was a
                    // dropped relation whose unlink the checkpointer had
                    // deferred: it is not part of the database.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
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
    fsync_path(&parent_of(dir)?)
}

/// Whether `dir` is the root of a btrfs subvolume (so branches of it are
/// snapshots).
pub fn is_subvolume(dir: &Path) -> io::Result<bool> {
    btrfs::is_subvolume(dir)
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
fn sample_file(dir: &Path) -> io::Result<Option<PathBuf>> {
    let pg_version = dir.join("PG_VERSION");
    if pg_version.is_file() {
        return Ok(Some(pg_version));
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() && entry.metadata()?.size() > 0 {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

fn parent_of(path: &Path) -> io::Result<PathBuf> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p.to_path_buf()),
        _ => Ok(PathBuf::from(".")),
    }
}

/// fsync a file or directory by path.
fn fsync_path(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
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
