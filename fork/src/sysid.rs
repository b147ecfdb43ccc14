//! A new system identifier for a fork (`--new-system-identifier`), so that
//! tools that tell clusters apart by it (pg_rewind, WAL archives,
//! replication) never take the fork for its source.
//!
//! The identifier is stored in `global/pg_control` (its first field,
//! protected by the file's CRC-32C) and in the long header at the start of
//! every WAL segment (`xlp_sysid`), which recovery checks against
//! pg_control. Both are rewritten in the fork's copies before it first
//! starts; the source's files are not touched (the clones diverge by one
//! block each).

use crate::failure::Failure;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// A fresh identifier made as initdb makes one: seconds in the high 32
/// bits, microseconds and the process ID in the low.
pub fn new_identifier() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() << 32)
        | (u64::from(now.subsec_micros()) << 12)
        | u64::from(std::process::id() & 0xfff)
}

/// CRC-32C (Castagnoli), as PostgreSQL's `COMP_CRC32C` computes it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Where the CRC of a pg_control image is: `ControlFileData`'s last field,
/// whose offset differs between versions; it is the one 4-aligned offset
/// at which the stored value is the CRC of all bytes before it.
fn crc_offset(control: &[u8]) -> Option<usize> {
    (8..512.min(control.len() - 4)).step_by(4).find(|&off| {
        let stored = u32::from_ne_bytes(control[off..off + 4].try_into().unwrap());
        stored == crc32c(&control[..off])
    })
}

/// Give the fork at `data` the identifier `new` in pg_control and in every
/// WAL segment of its pg_wal.
pub fn set_system_identifier(data: &Path, old: u64, new: u64) -> Result<(), Failure> {
    let control = data.join("global/pg_control");
    let mut image = fs::read(&control).map_err(Failure::io("read file", &control))?;
    let Some(off) = crc_offset(&image) else {
        return Err(Failure::new(format!(
            "\"{}\" has no valid CRC",
            control.display()
        )));
    };
    if u64::from_ne_bytes(image[0..8].try_into().unwrap()) != old {
        return Err(Failure::new(format!(
            "\"{}\" is not the source's pg_control",
            control.display()
        )));
    }
    image[0..8].copy_from_slice(&new.to_ne_bytes());
    let crc = crc32c(&image[..off]);
    image[off..off + 4].copy_from_slice(&crc.to_ne_bytes());
    write_at(&control, 0, &image)?;

    // XLogLongPageHeaderData: magic (2), info (2), tli (4), pageaddr (8),
    // rem_len (4) and padding (4), then xlp_sysid at 24.
    const XLP_LONG_HEADER: u16 = 0x0002;
    let wal = data.join("pg_wal");
    for entry in fs::read_dir(&wal).map_err(Failure::io("read directory", &wal))? {
        let path = entry.map_err(Failure::io("read directory", &wal))?.path();
        if path.file_name().is_some_and(|n| n.len() == 24) {
            let mut header = [0u8; 32];
            let mut f = fs::File::open(&path).map_err(Failure::io("open file", &path))?;
            if f.read_exact(&mut header).is_err() {
                continue;
            }
            let info = u16::from_ne_bytes([header[2], header[3]]);
            let sysid = u64::from_ne_bytes(header[24..32].try_into().unwrap());
            if info & XLP_LONG_HEADER != 0 && sysid == old {
                write_at(&path, 24, &new.to_ne_bytes())?;
            }
        }
    }
    Ok(())
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) -> Result<(), Failure> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(Failure::io("open file", path))?;
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.write_all(bytes))
        .and_then(|_| f.sync_all())
        .map_err(Failure::io("write file", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn finds_the_crc_and_nothing_else() {
        let mut image = vec![0u8; 8192];
        for (i, b) in image.iter_mut().enumerate().take(296) {
            *b = (i * 7 + 3) as u8;
        }
        let crc = crc32c(&image[..296]);
        image[296..300].copy_from_slice(&crc.to_ne_bytes());
        assert_eq!(crc_offset(&image), Some(296));
    }
}
