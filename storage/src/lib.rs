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
//! When neither works, [`probe`](fn@probe) says why and the caller leaves the statement
//! to PostgreSQL's own copy.
//!
//! This crate knows nothing about PostgreSQL's server: it is plain Rust over
//! `libc` and `nix`, so its tests run on real loop-mounted filesystems
//! without a server (see `tests/`).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod btrfs;
mod clone;
mod convert;
mod error;
mod fsutil;
mod mark;
mod mountinfo;
mod names;
mod probe;
mod reflink;
mod usage;

pub use clone::{clone_dir, clone_dir_unsynced, Cloned};
pub use convert::{convert_to_subvolume, remove_convert_leftover, Converted};
pub use error::{errno_text, Error};
pub use fsutil::{exchange_dirs, presync, remove_dir};
pub use mark::{record_mark, reset_facts, set_record_mark, set_reset_facts};
pub use mountinfo::{fs_name, mount_options};
pub use names::{
    database_dir_name, looks_like_temp_rel_name, relation_file_name, CONVERT_SUFFIX, REDO_SUFFIX,
    RESET_SUFFIX,
};
pub use probe::{can_reflink_in, is_nocow, is_subvolume, probe, same_filesystem};
pub use reflink::clone_file;
pub use usage::{referenced_bytes, usage, Extents, Usage};

use std::fmt;

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
