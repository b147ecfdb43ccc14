//! Small filesystem helpers the other modules share: reading a directory,
//! fsyncing by path, syncing a whole filesystem ahead of a clone, and
//! removing a directory durably.

use crate::error::Error;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The permission bits of directory `dir`.
pub(crate) fn dir_mode(dir: &Path) -> Result<u32, Error> {
    Ok(fs::metadata(dir)
        .map_err(Error::at("stat", dir))?
        .permissions()
        .mode()
        & 0o777)
}

pub(crate) fn read_dir(dir: &Path) -> Result<fs::ReadDir, Error> {
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
    Ok(nix::unistd::syncfs(&d)?)
}

/// Remove a directory made by [`clone_dir`](crate::clone_dir) (a subvolume or a plain
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

pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsync a file or directory by path.
pub(crate) fn fsync_path(path: &Path) -> Result<(), Error> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::at("fsync", path))
}

/// Atomically swap the directory entries `a` and `b` (same filesystem) in
/// one `renameat2(RENAME_EXCHANGE)`: each name names a complete directory
/// at every instant. The caller makes the parent durable.
pub fn exchange_dirs(a: &Path, b: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    Ok(renameat2(
        AT_FDCWD,
        a,
        AT_FDCWD,
        b,
        RenameFlags::RENAME_EXCHANGE,
    )?)
}
