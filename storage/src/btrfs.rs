//! The two btrfs ioctls pg_branch needs, declared from `linux/btrfs.h`
//! (libbtrfsutil would add a C library dependency for two calls).

use std::fs::File;
use std::io;
use std::mem;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

pub const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// Inode number of the root directory of every btrfs subvolume.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

/// `struct btrfs_ioctl_vol_args`: 4096 bytes.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2`: 4096 bytes.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

const _: () = assert!(mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(mem::size_of::<VolArgsV2>() == 4096);

// The request numbers libc lacks, built by libc's `_IOW` / `_IOR`, which
// encode them as the kernel's macros do on the architecture we are built for:
// the layout is not the same everywhere (PowerPC, MIPS and SPARC have 3
// direction bits and 13 size bits), and a number hard-coded for x86_64 would
// be a different request there, which the kernel answers with ENOTTY.
const BTRFS_IOCTL_MAGIC: u32 = 0x94;
/// `_IOW(BTRFS_IOCTL_MAGIC, 14, struct btrfs_ioctl_vol_args)`.
pub(crate) const BTRFS_IOC_SUBVOL_CREATE: libc::c_ulong =
    libc::_IOW::<VolArgs>(BTRFS_IOCTL_MAGIC, 14) as _;
/// `_IOW(BTRFS_IOCTL_MAGIC, 23, struct btrfs_ioctl_vol_args_v2)`.
pub(crate) const BTRFS_IOC_SNAP_CREATE_V2: libc::c_ulong =
    libc::_IOW::<VolArgsV2>(BTRFS_IOCTL_MAGIC, 23) as _;

/// `struct btrfs_ioctl_fs_info_args`: 1024 bytes; we read `fsid` only.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 992],
}
const _: () = assert!(mem::size_of::<FsInfoArgs>() == 1024);
/// `_IOR(BTRFS_IOCTL_MAGIC, 31, struct btrfs_ioctl_fs_info_args)`.
pub(crate) const BTRFS_IOC_FS_INFO: libc::c_ulong =
    libc::_IOR::<FsInfoArgs>(BTRFS_IOCTL_MAGIC, 31) as _;

/// The three requests as functions, typed by nix: each takes the descriptor
/// it acts on and a pointer to the argument struct its number was built
/// for, and returns the errno on failure.
mod ioctl {
    use super::{FsInfoArgs, VolArgs, VolArgsV2};
    use super::{BTRFS_IOC_FS_INFO, BTRFS_IOC_SNAP_CREATE_V2, BTRFS_IOC_SUBVOL_CREATE};

    nix::ioctl_write_ptr_bad!(
        /// Create the empty subvolume named `(*data).name` in directory `fd`.
        ///
        /// # Safety
        ///
        /// `fd` must be an open directory, and `data` must point to an
        /// initialised `VolArgs`, its name NUL-terminated, valid for the call.
        subvol_create,
        BTRFS_IOC_SUBVOL_CREATE,
        VolArgs
    );
    nix::ioctl_write_ptr_bad!(
        /// Snapshot the subvolume open as `(*data).fd` into directory `fd`
        /// under `(*data).name`.
        ///
        /// # Safety
        ///
        /// `fd` must be an open directory, and `data` must point to an
        /// initialised `VolArgsV2`, valid for the call, whose `fd` is an open
        /// subvolume, whose name is NUL-terminated and whose `flags` are 0 (with
        /// `BTRFS_SUBVOL_CREATE_ASYNC`, old kernels write `transid` back).
        snap_create_v2,
        BTRFS_IOC_SNAP_CREATE_V2,
        VolArgsV2
    );
    nix::ioctl_read_bad!(
        /// Fill `*data` with the facts of the btrfs filesystem holding `fd`.
        ///
        /// # Safety
        ///
        /// `fd` must be open, and `data` must point to a writable
        /// `FsInfoArgs` (all 1024 bytes: the kernel writes it whole) valid
        /// for the call.
        fs_info,
        BTRFS_IOC_FS_INFO,
        FsInfoArgs
    );
}

/// The UUID of the btrfs filesystem holding `path`. Unlike `st_dev` and
/// `f_fsid`, which differ between subvolumes, it names the filesystem.
pub fn fsid(path: &Path) -> io::Result<[u8; 16]> {
    let f = File::open(path)?;
    let mut args = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 992],
    };
    // SAFETY: `f` is open, and `args` is a writable FsInfoArgs that
    // outlives the call.
    unsafe { ioctl::fs_info(f.as_raw_fd(), &mut args) }?;
    Ok(args.fsid)
}

pub fn statfs_magic(path: &Path) -> io::Result<i64> {
    Ok(nix::sys::statfs::statfs(path)?.filesystem_type().0 as i64)
}

pub fn is_btrfs(path: &Path) -> io::Result<bool> {
    Ok(statfs_magic(path)? == BTRFS_SUPER_MAGIC)
}

/// A directory is a subvolume root iff it is on btrfs and has inode 256.
pub fn is_subvolume(dir: &Path) -> io::Result<bool> {
    let md = std::fs::metadata(dir)?;
    Ok(md.is_dir() && md.ino() == BTRFS_FIRST_FREE_OBJECTID && is_btrfs(dir)?)
}

/// Create a writable snapshot of subvolume `src` at `dst`.
pub fn snapshot(src: &Path, dst: &Path) -> io::Result<()> {
    let (parent, name) = split(dst)?;
    let src_dir = File::open(src)?;
    let mut args = VolArgsV2 {
        fd: src_dir.as_raw_fd() as i64,
        transid: 0,
        flags: 0,
        unused: [0; 4],
        name: [0; 4040],
    };
    copy_name(&mut args.name, name)?;
    // SAFETY: `parent` is an open directory and `args` a properly sized,
    // initialised btrfs_ioctl_vol_args_v2 that outlives the call: `src_dir`
    // is open, `copy_name` left the name NUL-terminated, and flags are 0.
    unsafe { ioctl::snap_create_v2(parent.as_raw_fd(), &args) }?;
    Ok(())
}

/// Create an empty subvolume at `dst` with permission bits `mode`.
pub fn create_subvolume(dst: &Path, mode: u32) -> io::Result<()> {
    let (parent, name) = split(dst)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    copy_name(&mut args.name, name)?;
    // SAFETY: as in `snapshot`, with a btrfs_ioctl_vol_args.
    unsafe { ioctl::subvol_create(parent.as_raw_fd(), &args) }?;
    // A new subvolume root is created 0755 whatever the umask; the caller
    // gives the mode PostgreSQL's directory has (0700, or 0750 in a cluster
    // made with initdb -g).
    std::fs::set_permissions(dst, std::os::unix::fs::PermissionsExt::from_mode(mode))
}

fn split(dst: &Path) -> io::Result<(File, &[u8])> {
    let name = dst
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "target has no file name"))?;
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((File::open(parent)?, name.as_bytes()))
}

fn copy_name(buf: &mut [u8], name: &[u8]) -> io::Result<()> {
    if name.len() >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf[..name.len()].copy_from_slice(name);
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The numbers `<linux/fs.h>` and `<linux/btrfs.h>` give on x86_64 and
    /// aarch64 (asm-generic); libc computes them the same way elsewhere.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn asm_generic_numbers_match_the_kernel_headers() {
        assert_eq!(libc::FICLONE, 0x4004_9409);
        assert_eq!(libc::FS_IOC_GETFLAGS, 0x8008_6601);
        assert_eq!(super::BTRFS_IOC_SUBVOL_CREATE, 0x5000_940e);
        assert_eq!(super::BTRFS_IOC_SNAP_CREATE_V2, 0x5000_9417);
        assert_eq!(super::BTRFS_IOC_FS_INFO, 0x8400_941f);
    }

    /// PowerPC's layout, computed by hand from its `<asm/ioctl.h>`.
    #[test]
    fn the_three_direction_bit_layout() {
        let ppc_iow = |ty: libc::c_ulong, nr: libc::c_ulong, size: libc::c_ulong| {
            (4 << 29) | (size << 16) | (ty << 8) | nr
        };
        assert_eq!(ppc_iow(0x94, 9, 4), 0x8004_9409, "FICLONE on ppc64le");
        // Here, on an asm-generic machine, the same request is spelt
        // differently: the two layouts really differ.
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        assert_ne!(libc::FICLONE, ppc_iow(0x94, 9, 4));
    }
}
