//! Per-file clones with `FICLONE`, the filesystem-neutral reflink ioctl
//! (btrfs, XFS with reflink=1, OpenZFS >= 2.2, bcachefs).

use nix::errno::Errno;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The two requests as functions, typed by nix, with libc's numbers.
mod ioctl {
    nix::ioctl_write_int_bad!(
        /// Make the file open as `fd` share all the extents of the file
        /// open as `data` (its contents become `data`'s).
        ///
        /// # Safety
        ///
        /// `fd` and `data` must be open descriptors for the call. FICLONE
        /// takes the source descriptor by value and touches no user memory.
        ficlone,
        libc::FICLONE
    );
    nix::ioctl_read_bad!(
        /// Write the inode flags of the file open as `fd` into `*data`.
        ///
        /// # Safety
        ///
        /// `fd` must be open, and `data` must point to a writable `c_int`
        /// valid for the call. (The request number says `long`, but every
        /// filesystem writes an `int`: linux/fs.h and the kernel's
        /// `put_user(flags, (int __user *)arg)`.)
        get_flags,
        libc::FS_IOC_GETFLAGS,
        libc::c_int
    );
}

pub fn ficlone(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: both descriptors are open for the duration of the call;
    // FICLONE takes the source descriptor by value and writes nothing to
    // user memory.
    unsafe { ioctl::ficlone(dst.as_raw_fd(), src.as_raw_fd()) }?;
    Ok(())
}

/// The attribute `chattr +C` sets (linux/fs.h), read with `FS_IOC_GETFLAGS`.
const FS_NOCOW_FL: libc::c_int = 0x0080_0000;

/// Whether `file` has btrfs's No_COW attribute (`chattr +C`, common advice
/// for database files on btrfs). btrfs refuses to reflink such files.
pub fn is_nocow(file: &Path) -> io::Result<bool> {
    let f = File::open(file)?;
    let mut flags: libc::c_int = 0;
    // SAFETY: `f` is open; the ioctl writes one int into `flags`.
    match unsafe { ioctl::get_flags(f.as_raw_fd(), &mut flags) } {
        Ok(_) => Ok(flags & FS_NOCOW_FL != 0),
        // Filesystems without inode flags have no NOCOW files either.
        Err(Errno::ENOTTY | Errno::EOPNOTSUPP | Errno::EINVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Clone `src` into a new file `dst` (which must not exist), with the
/// permission bits of `src` (PostgreSQL's: 0600, or 0640 in a cluster made
/// with initdb -g). The new file is returned open and not yet durable: the
/// caller fsyncs it, or syncs its whole filesystem once after many clones
/// (one `syncfs` costs about what one per-file fsync does on btrfs).
pub fn clone_file(src: &Path, dst: &Path) -> io::Result<File> {
    let from = File::open(src)?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(from.metadata()?.permissions().mode() & 0o777)
        .open(dst)?;
    ficlone(&from, &to)?;
    Ok(to)
}

/// An anonymous `O_TMPFILE` in `dir`, to probe reflinks with: it has no
/// name and disappears on close, so probing leaves nothing behind.
pub fn tmpfile(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
}
