//! The WAL a fork needs: the segments from the backup's start to its stop,
//! cloned from the source's pg_wal after `pg_backup_stop` (so the last one
//! holds the stop point), and every timeline history file.
//!
//! Cloned rather than streamed: the segments are on the source's
//! filesystem already, and a clone shares their blocks. On a primary the
//! stop is followed by a segment switch, so the last segment ends there;
//! on a standby it may hold more WAL, which the fork replays as well (its
//! consistency point is then a little later, still before the clone).

use crate::failure::Failure;
use std::fs;
use std::path::Path;

/// A segment file name `TTTTTTTTXXXXXXXXYYYYYYYY`: its timeline and number.
fn parse_segment(name: &str, segment_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((tli, hi * (0x1_0000_0000 / segment_size) + lo))
}

/// The segment in which the backup starts, from the label's
/// `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)` line.
pub fn start_segment(label: &str, segment_size: u64) -> Result<u64, Failure> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|l| l.split("(file ").nth(1))
        .and_then(|f| parse_segment(f.trim_end_matches(')'), segment_size))
        .map(|(_, seg)| seg)
        .ok_or_else(|| Failure::new("the backup label names no start WAL file"))
}

/// Clone segments `first..=segment of stop_lsn` (of any timeline) and the
/// history files from `src` (the source's pg_wal, followed if a symlink)
/// into `dst`. Returns how many segments were cloned.
pub fn clone_wal(
    src: &Path,
    dst: &Path,
    first: u64,
    stop_lsn: u64,
    segment_size: u64,
) -> Result<usize, Failure> {
    // The segment that holds the stop record's last byte.
    let last = (stop_lsn - 1) / segment_size;
    let mut cloned = 0;
    let mut have_first = false;
    let entries = fs::read_dir(src).map_err(Failure::io("read directory", src))?;
    for entry in entries {
        let name = entry
            .map_err(Failure::io("read directory", src))?
            .file_name();
        let name = name.to_string_lossy();
        let wanted = match parse_segment(&name, segment_size) {
            Some((_, seg)) if (first..=last).contains(&seg) => {
                have_first |= seg == first;
                cloned += 1;
                true
            }
            _ => name.ends_with(".history") && name.len() == 16,
        };
        if wanted {
            clone_or_copy(&src.join(&*name), &dst.join(&*name))?;
        }
    }
    if !have_first {
        return Err(Failure::new(
            "the WAL segment in which the backup started is gone from the source's pg_wal",
        )
        .detail(
            "The temporary replication slot should have kept it; was pg_wal cleaned by hand?",
        ));
    }
    Ok(cloned)
}

/// A reflink, or a copy where pg_wal is on another filesystem than the
/// target (a symlinked pg_wal): a few segments, not the data.
fn clone_or_copy(from: &Path, to: &Path) -> Result<(), Failure> {
    match pg_branch_storage::clone_file(from, to) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ) =>
        {
            let _ = fs::remove_file(to);
            fs::copy(from, to)
                .and_then(|_| fs::File::open(to)?.sync_all())
                .map_err(Failure::io("copy file", from))
        }
        Err(e) => Err(Failure::io("clone file", from)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    #[test]
    fn segment_names() {
        assert_eq!(parse_segment("000000010000000000000002", SEG), Some((1, 2)));
        assert_eq!(
            parse_segment("0000000300000001000000FF", SEG),
            Some((3, 256 + 255))
        );
        assert_eq!(parse_segment("00000001.history", SEG), None);
        assert_eq!(parse_segment("00000001000000000000000G", SEG), None);
    }

    #[test]
    fn start_from_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n";
        assert_eq!(start_segment(label, SEG).unwrap(), 2);
        assert!(start_segment("nothing", SEG).is_err());
    }
}
