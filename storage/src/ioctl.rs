//! ioctl request numbers, computed as Linux's `_IOR` / `_IOW` macros do on
//! the architecture we are built for.
//!
//! The encoding is not the same everywhere: most architectures use the
//! asm-generic layout (2 direction bits, 14 size bits, write = 1, read = 2),
//! but PowerPC, MIPS, SPARC and Alpha have 3 direction bits and 13 size
//! bits, with write = 4 and read = 2. A number hard-coded for x86_64 is a
//! different request there: the kernel answers ENOTTY, and a probe would
//! take it for a filesystem that cannot clone.

/// Whether this architecture has the 3-direction-bit layout.
const THREE_DIRECTION_BITS: bool = cfg!(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips32r6",
    target_arch = "mips64",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64",
));

mod layout {
    use super::THREE_DIRECTION_BITS;
    pub const SIZE_BITS: u64 = if THREE_DIRECTION_BITS { 13 } else { 14 };
    pub const WRITE: u64 = if THREE_DIRECTION_BITS { 4 } else { 1 };
    pub const READ: u64 = 2;
}

const fn ioc(dir: u64, ty: u8, nr: u8, size: usize) -> u64 {
    assert!(
        (size as u64) < (1 << layout::SIZE_BITS),
        "argument too large for an ioctl number"
    );
    (dir << (16 + layout::SIZE_BITS)) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

/// `_IOW(ty, nr, T)` with `size == size_of::<T>()`.
pub const fn iow(ty: u8, nr: u8, size: usize) -> u64 {
    ioc(layout::WRITE, ty, nr, size)
}

/// `_IOR(ty, nr, T)` with `size == size_of::<T>()`.
pub const fn ior(ty: u8, nr: u8, size: usize) -> u64 {
    ioc(layout::READ, ty, nr, size)
}

#[cfg(test)]
mod tests {
    /// The numbers `<linux/fs.h>` and `<linux/btrfs.h>` give on x86_64 and
    /// aarch64 (asm-generic); the computation is the same code elsewhere.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn asm_generic_numbers_match_the_kernel_headers() {
        assert_eq!(crate::reflink::FICLONE, 0x4004_9409);
        assert_eq!(crate::reflink::FS_IOC_GETFLAGS, 0x8008_6601);
        assert_eq!(crate::btrfs::BTRFS_IOC_SUBVOL_CREATE, 0x5000_940e);
        assert_eq!(crate::btrfs::BTRFS_IOC_SNAP_CREATE_V2, 0x5000_9417);
        assert_eq!(crate::btrfs::BTRFS_IOC_FS_INFO, 0x8400_941f);
    }

    /// PowerPC's layout, computed by hand from its `<asm/ioctl.h>`.
    #[test]
    fn the_three_direction_bit_layout() {
        let ppc_iow = |ty: u64, nr: u64, size: u64| (4u64 << 29) | (size << 16) | (ty << 8) | nr;
        assert_eq!(ppc_iow(0x94, 9, 4), 0x8004_9409, "FICLONE on ppc64le");
        // Here, on an asm-generic machine, the same request is spelt
        // differently: the two layouts really differ.
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        assert_ne!(super::iow(0x94, 9, 4), ppc_iow(0x94, 9, 4));
    }
}
