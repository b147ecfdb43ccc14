//! Cloning a database directory by the method [`probe`](fn@crate::probe)
//! chose: [`clone_dir`], and the per-file reflinks it and the conversion
//! share.

use crate::error::Error;
use crate::fsutil::{dir_mode, fsync_path, parent_of, read_dir};
use crate::names::looks_like_temp_rel_name;
use crate::probe::nocow_reason;
use crate::{btrfs, reflink, Method};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
/// [`remove_dir`](crate::remove_dir) (pg_branch's error cleanup does).
pub fn clone_dir(src: &Path, dst: &Path, method: Method) -> Result<Cloned, Error> {
    let cloned = clone_into(src, dst, method, Sync::EachFile)?;
    fsync_path(dst)?;
    fsync_path(&parent_of(dst))?;
    Ok(cloned)
}

/// [`clone_dir`] without making anything durable: for a caller that clones
/// many directories of one filesystem (`pg_branch fork`) and syncs the
/// filesystem once at the end, instead of paying a log commit per file.
pub fn clone_dir_unsynced(src: &Path, dst: &Path, method: Method) -> Result<Cloned, Error> {
    clone_into(src, dst, method, Sync::Filesystem)
}

/// Whether [`reflink_files`] fsyncs each clone, or leaves that to one
/// `syncfs` of the filesystem by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    EachFile,
    Filesystem,
}

fn clone_into(src: &Path, dst: &Path, method: Method, sync: Sync) -> Result<Cloned, Error> {
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
            files = reflink_files(src, dst, &mut skipped_temp_files, sync)?;
        }
    }
    Ok(Cloned {
        method,
        skipped_temp_files,
        files,
    })
}

/// Reflink every regular file of `src` but temporary relations into the
/// existing directory `dst`; returns how many were cloned.
pub(crate) fn reflink_files(
    src: &Path,
    dst: &Path,
    skipped_temp_files: &mut usize,
    sync: Sync,
) -> Result<usize, Error> {
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
        let cloned = reflink::clone_file(&from, &dst.join(&name)).and_then(|f| match sync {
            Sync::EachFile => f.sync_all(),
            Sync::Filesystem => Ok(()),
        });
        match cloned {
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
