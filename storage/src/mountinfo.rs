//! What the filesystem holding a path is, for messages and `doctor()`: its
//! name (from `statfs`) and its mount options (from `/proc/self/mountinfo`).

use crate::btrfs;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The mount point and mount options of the filesystem holding `path`
/// (both the per-mount and the filesystem's own options), from
/// `/proc/self/mountinfo`.
pub fn mount_options(path: &Path) -> io::Result<(PathBuf, String)> {
    let path = fs::canonicalize(path)?;
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mut best: Option<(PathBuf, String)> = None;
    for line in info.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 6 || fields.len() < dash + 4 {
            continue;
        }
        let mountpoint = PathBuf::from(unescape_mountinfo(fields[4]));
        if !path.starts_with(&mountpoint) {
            continue;
        }
        // Later lines are mounted over earlier ones; the longest prefix wins.
        if best
            .as_ref()
            .is_none_or(|(m, _)| mountpoint.as_os_str().len() >= m.as_os_str().len())
        {
            let mut options: Vec<&str> = Vec::new();
            for o in fields[5].split(',').chain(fields[dash + 3].split(',')) {
                if !options.contains(&o) {
                    options.push(o);
                }
            }
            let options = options.join(",");
            best = Some((mountpoint, options));
        }
    }
    best.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in /proc/self/mountinfo"))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Name of the filesystem holding `path`, for messages.
pub fn fs_name(path: &Path) -> io::Result<&'static str> {
    let magic = btrfs::statfs_magic(path)?;
    Ok(match magic {
        btrfs::BTRFS_SUPER_MAGIC => "btrfs",
        0x5846_5342 => "xfs",
        0xEF53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0xCA45_1A4E => "bcachefs",
        0x6969 => "nfs",
        _ => "unknown",
    })
}
