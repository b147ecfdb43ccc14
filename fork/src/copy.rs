//! What of a data directory a fork copies, and how: the same choices as
//! pg_basebackup's (src/backend/backup/basebackup.c: `excludeDirContents`,
//! `excludeFiles`, temporary files and relations), made with
//! copy-on-write clones instead of reads and writes.
//!
//! - A database directory (`base/<oid>`, and `<oid>` in a tablespace's
//!   version directory) is cloned whole by pg_branch's own branch code
//!   ([`clone_dir_unsynced`]): one snapshot when it is a btrfs subvolume, else a
//!   reflink per file into a new subvolume (on btrfs) — so the fork's
//!   databases are subvolumes, and branches inside the fork are O(1).
//! - Every other file is reflinked; directories are made with the
//!   source's permissions.
//! - `global/pg_control` is cloned last, after every other file: for a
//!   fork of a standby its `minRecoveryPoint` is where the copy becomes
//!   consistent, and it must not be older than any file copied
//!   (pg_basebackup sends it last for the same reason).
//!
//! Nothing is fsynced file by file (on btrfs each fsync of a clone is a
//! log commit, and a cluster has thousands of files): the fork syncs each
//! filesystem it wrote once, before it removes its marker (fork.rs, step 6).
//!
//! These run between `pg_backup_start` and `pg_backup_stop`, while the
//! source writes: torn or stale pages in the copy are what recovery from
//! the backup label repairs, with the full-page images written meanwhile.

use crate::failure::Failure;
use pg_branch_storage::{clone_dir_unsynced, clone_file, database_dir_name, probe};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Directories whose contents a fork leaves out: runtime state the new
/// server rebuilds (basebackup.c's `excludeDirContents`, plus pg_wal, whose
/// segments are cloned after the backup stops, see wal.rs).
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Files a fork leaves out (basebackup.c's `excludeFiles`; the signal
/// files are the fork's own choice, see settings.rs).
const SKIPPED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "postgresql.auto.conf.tmp",
    "current_logfiles",
    "current_logfiles.tmp",
    "standby.signal",
    "recovery.signal",
    crate::target::MARKER,
];

/// What was cloned, for the summary line.
#[derive(Default)]
pub struct Copied {
    pub databases: usize,
    pub snapshots: usize,
    pub files: usize,
}

/// The data directory `src` into the (made, empty) directory `dst`, with
/// the tablespace links of `dst/pg_tblspc` pointing to `links` (by OID).
/// `pg_control` is left for [`clone_control_file`].
pub fn clone_data_dir(
    src: &Path,
    dst: &Path,
    links: &[(u32, PathBuf)],
    copied: &mut Copied,
) -> Result<(), Failure> {
    let mode = fs::metadata(src)
        .map_err(Failure::io("stat", src))?
        .permissions()
        .mode()
        & 0o777;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))
        .map_err(Failure::io("change the permissions of", dst))?;
    for entry in read_dir(src)? {
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let (from, to) = (src.join(&name), dst.join(&name));
        let meta = fs::symlink_metadata(&from).map_err(Failure::io("stat", &from))?;
        if EMPTY_DIRS.contains(&name_str.as_ref())
            && fs::metadata(&from).map(|m| m.is_dir()).unwrap_or(false)
        {
            // pg_wal may be a symlink elsewhere: the fork's is a directory.
            make_dir_like(&from, &to)?;
            if name_str == "pg_wal" {
                make_dir_like(&from.join("archive_status"), &to.join("archive_status"))?;
            }
        } else if name_str == "base" && meta.is_dir() {
            make_dir_like(&from, &to)?;
            clone_databases(&from, &to, copied)?;
        } else if name_str == "pg_tblspc" && meta.is_dir() {
            make_dir_like(&from, &to)?;
            for (oid, target) in links {
                let link = to.join(oid.to_string());
                std::os::unix::fs::symlink(target, &link)
                    .map_err(Failure::io("create symbolic link", &link))?;
            }
        } else if name_str == "global" && meta.is_dir() {
            make_dir_like(&from, &to)?;
            clone_plain(&from, &to, &["pg_control"], copied)?;
        } else {
            clone_entry(&from, &to, &meta, copied)?;
        }
    }
    Ok(())
}

/// `global/pg_control`, last of all (see the module comment).
pub fn clone_control_file(src: &Path, dst: &Path) -> Result<(), Failure> {
    let (from, to) = (src.join("global/pg_control"), dst.join("global/pg_control"));
    clone_file(&from, &to)
        .map(drop)
        .map_err(|e| Failure::io("clone file", &from)(e))
}

/// A tablespace's version directory (`PG_<major>_<catversion>`, the only
/// one of this server's in its location; others belong to other clusters
/// that pg_upgrade made) into the (made, empty) directory `dst`.
pub fn clone_tablespace(
    location: &Path,
    major: u32,
    dst: &Path,
    copied: &mut Copied,
) -> Result<(), Failure> {
    let prefix = format!("PG_{major}_");
    for entry in read_dir(location)? {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(&prefix) {
            let (from, to) = (location.join(&name), dst.join(&name));
            make_dir_like(&from, &to)?;
            clone_databases(&from, &to, copied)?;
        }
    }
    Ok(())
}

/// Each database directory of `src` (base/ or a tablespace's version
/// directory), by pg_branch's branch code. Anything else there (the
/// scratch directories of an interrupted branch, pgsql_tmp) stays behind.
fn clone_databases(src: &Path, dst: &Path, copied: &mut Copied) -> Result<(), Failure> {
    for entry in read_dir(src)? {
        let name = entry.file_name();
        if database_dir_name(&name.to_string_lossy()).is_none_or(|(_, leftover)| leftover) {
            continue;
        }
        let (from, to) = (src.join(&name), dst.join(&name));
        if !entry
            .file_type()
            .map_err(Failure::io("stat", &from))?
            .is_dir()
        {
            continue;
        }
        let method = match probe(&from, dst)? {
            Ok(m) => m,
            Err(why) => {
                return Err(Failure::new(format!(
                    "cannot clone \"{}\": {why}",
                    from.display()
                )))
            }
        };
        let cloned = clone_dir_unsynced(&from, &to, method)?;
        copied.databases += 1;
        copied.files += cloned.files;
        if method == pg_branch_storage::Method::Snapshot {
            copied.snapshots += 1;
        }
    }
    Ok(())
}

/// A directory other than those above, recursively, leaving out `skip`
/// (names in it) and temporary files.
fn clone_plain(src: &Path, dst: &Path, skip: &[&str], copied: &mut Copied) -> Result<(), Failure> {
    for entry in read_dir(src)? {
        let name = entry.file_name();
        if skip.contains(&name.to_string_lossy().as_ref()) {
            continue;
        }
        let from = src.join(&name);
        let meta = fs::symlink_metadata(&from).map_err(Failure::io("stat", &from))?;
        clone_entry(&from, &dst.join(&name), &meta, copied)?;
    }
    Ok(())
}

fn clone_entry(
    from: &Path,
    to: &Path,
    meta: &fs::Metadata,
    copied: &mut Copied,
) -> Result<(), Failure> {
    let name = from.file_name().unwrap_or_default().to_string_lossy();
    if SKIPPED_FILES.contains(&name.as_ref())
        || name.starts_with("pgsql_tmp")
        || name.starts_with("pg_internal.init")
    {
        return Ok(());
    }
    let kind = meta.file_type();
    if kind.is_symlink() {
        let points_to = fs::read_link(from).map_err(Failure::io("read symbolic link", from))?;
        std::os::unix::fs::symlink(&points_to, to)
            .map_err(Failure::io("create symbolic link", to))?;
    } else if kind.is_dir() {
        make_dir_like(from, to)?;
        clone_plain(from, to, &[], copied)?;
    } else if kind.is_file() {
        match clone_file(from, to) {
            Ok(_) => copied.files += 1,
            // Removed since it was listed (a temporary file of the server).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Failure::io("clone file", from)(e)),
        }
    }
    // Sockets, FIFOs: nothing of the server's.
    Ok(())
}

fn make_dir_like(src: &Path, dst: &Path) -> Result<(), Failure> {
    let mode = fs::metadata(src)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o700);
    fs::DirBuilder::new()
        .mode(mode)
        .create(dst)
        .map_err(Failure::io("create directory", dst))?;
    // The umask may have taken bits away.
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))
        .map_err(Failure::io("change the permissions of", dst))
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, Failure> {
    fs::read_dir(dir)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(Failure::io("read directory", dir))
}
