//! The two btrfs ioctls pg_branch needs, declared from `linux/btrfs.h`
//! (libbtrfsutil would add a C library dependency for two calls).

use crate::ioctl::{ior, iow};
use std::ffi::CString;
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

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `_IOW(BTRFS_IOCTL_MAGIC, 14, struct btrfs_ioctl_vol_args)`.
pub(crate) const BTRFS_IOC_SUBVOL_CREATE: u64 =
    iow(BTRFS_IOCTL_MAGIC, 14, mem::size_of::<VolArgs>());
/// `_IOW(BTRFS_IOCTL_MAGIC, 23, struct btrfs_ioctl_vol_args_v2)`.
pub(crate) const BTRFS_IOC_SNAP_CREATE_V2: u64 =
    iow(BTRFS_IOCTL_MAGIC, 23, mem::size_of::<VolArgsV2>());

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
pub(crate) const BTRFS_IOC_FS_INFO: u64 = ior(BTRFS_IOCTL_MAGIC, 31, mem::size_of::<FsInfoArgs>());

/// The UUID of the btrfs filesystem holding `path`. Unlike `st_dev` and
/// `f_fsid`, which differ between subvolumes, it names the filesystem.
pub fn fsid(path: &Path) -> io::Result<[u8; 16]> {
    let f = File::open(path)?;
    // SAFETY: zeroed plain-data struct of the size the ioctl writes.
    let mut args: FsInfoArgs = unsafe { mem::zeroed() };
    // SAFETY: `f` is open and `args` is a writable 1024-byte struct.
    if unsafe { libc::ioctl(f.as_raw_fd(), BTRFS_IOC_FS_INFO as _, &mut args) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(args.fsid)
}

pub fn statfs_magic(path: &Path) -> io::Result<i64> {
    let c = cstring(path)?;
    // SAFETY: `c` is a valid NUL-terminated path and `buf` a writable statfs.
    let mut buf: libc::statfs = unsafe { mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.f_type as i64)
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
    // initialised btrfs_ioctl_vol_args_v2 that outlives the call.
    let rc = unsafe { libc::ioctl(parent.as_raw_fd(), BTRFS_IOC_SNAP_CREATE_V2 as _, &mut args) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
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
    let rc = unsafe { libc::ioctl(parent.as_raw_fd(), BTRFS_IOC_SUBVOL_CREATE as _, &mut args) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
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

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}
