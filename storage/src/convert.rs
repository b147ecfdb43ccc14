//! Turning a plain directory on btrfs into a subvolume in place
//! ([`convert_to_subvolume`]), and removing what an interrupted conversion
//! left behind.

use crate::btrfs;
use crate::clone::{reflink_files, Sync};
use crate::error::Error;
use crate::fsutil::{dir_mode, exchange_dirs, fsync_path, parent_of, remove_dir};
use crate::names::CONVERT_SUFFIX;
use std::fs;
use std::io;
use std::path::Path;

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
    let swapped = reflink_files(dir, &tmp, &mut 0, Sync::EachFile).and_then(|files| {
        fsync_path(&tmp)?;
        exchange_dirs(dir, &tmp)
            .map_err(|e| Error::at("swap in the subvolume built for", dir)(e))?;
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
