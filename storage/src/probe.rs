//! Deciding how a directory can be cloned ([`probe`]), and the checks
//! `doctor()` runs on a directory: whether it can reflink, whether it is
//! No_COW, whether it is a subvolume.

use crate::error::Error;
use crate::fsutil::read_dir;
use crate::mountinfo::fs_name;
use crate::{btrfs, reflink, Method, Unsupported};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

pub(crate) fn nocow_reason(file: &Path) -> String {
    format!(
        "\"{}\" has the No_COW attribute (chattr +C), and btrfs cannot reflink such files; \
         a database directory that is a btrfs subvolume can still be snapshotted",
        file.display()
    )
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

/// Whether `dir` is the root of a btrfs subvolume (so branches of it are
/// snapshots).
pub fn is_subvolume(dir: &Path) -> io::Result<bool> {
    btrfs::is_subvolume(dir)
}

/// Whether `a` and `b` are on one filesystem, so that blocks can be shared
/// between them: the same btrfs filesystem UUID (each subvolume has a
/// device number of its own), or else the same device.
pub fn same_filesystem(a: &Path, b: &Path) -> io::Result<bool> {
    if btrfs::is_btrfs(a)? && btrfs::is_btrfs(b)? {
        return Ok(btrfs::fsid(a)? == btrfs::fsid(b)?);
    }
    Ok(std::fs::metadata(a)?.dev() == std::fs::metadata(b)?.dev())
}
